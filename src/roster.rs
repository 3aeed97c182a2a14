//! Roster files: agents to register at start (the demo roster of the quick
//! start, or a site's fixed seats), in TOML. CTI platforms normally register
//! agents over gRPC instead.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use crate::engine::AgentSpec;
use crate::file::{self, FileError};
use crate::model::{AgentState, Channel, language_tag};
use crate::shape::{ADDRESS, ID, LANGUAGE, Shape, TEXT, WORD};

/// The demo roster compiled into the binary, matching the embedded policy.
pub const DEMO_ROSTER: &str = include_str!("../examples/demo-roster.toml");

/// Why a roster file was refused: the file, the line and the field.
pub type RosterError = FileError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoster {
    #[serde(default)]
    agents: Vec<toml::Spanned<RawAgent>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    id: String,
    #[serde(default)]
    team: String,
    transfer_address: String,
    #[serde(default)]
    skills: BTreeMap<String, u8>,
    #[serde(default)]
    languages: Vec<String>,
    channels: BTreeMap<String, u8>,
    #[serde(default)]
    state: Option<String>,
}

/// Reads a roster file.
pub fn read(path: &Path) -> Result<Vec<(AgentSpec, AgentState)>, RosterError> {
    let (file, text) = file::read_text(path)?;
    parse(&file, &text)
}

/// Parses roster text; `file` names it in messages. Agents start in their
/// `state` (default available).
///
/// The text is parsed one `[[agents]]` table at a time: a TOML document
/// tree costs kilobytes per agent, so parsing a 100,000-agent file whole
/// would hold most of a gigabyte at once. Each table is valid TOML on its
/// own, and offsets are carried so refusals name the file's own lines.
pub fn parse(file: &str, text: &str) -> Result<Vec<(AgentSpec, AgentState)>, RosterError> {
    let mut agents = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (start, chunk) in tables(text) {
        parse_chunk(file, text, start, chunk, &mut agents, &mut seen)?;
    }
    Ok(agents)
}

/// The text split before every line that opens an `[[agents]]` table, each
/// piece with its byte offset.
fn tables(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut starts = vec![0];
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if offset > 0 && line.trim_start().starts_with("[[agents]]") {
            starts.push(offset);
        }
        offset += line.len();
    }
    starts.push(text.len());
    starts
        .windows(2)
        .map(move |w| (w[0], &text[w[0]..w[1]]))
        .collect::<Vec<_>>()
        .into_iter()
}

/// Parses one piece of the roster (at byte `start` of `text`) into `agents`.
fn parse_chunk(
    file: &str,
    text: &str,
    start: usize,
    chunk: &str,
    agents: &mut Vec<(AgentSpec, AgentState)>,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(), RosterError> {
    let invalid = |offset: usize, field: String, message: String| {
        file::invalid(file, text, start + offset, field, message)
    };
    let raw: RawRoster =
        toml::from_str(chunk).map_err(|e| file::toml_error_at(file, text, start, &e))?;
    for spanned in &raw.agents {
        let at = spanned.span().start;
        let a = spanned.get_ref();
        let field = |name: &str| format!("agents.{}.{name}", a.id);
        // What UpsertAgent would refuse, a file may not register either.
        let shaped = |name: &str, value: &str, shape: Shape| match shape.problem(value) {
            Some(problem) => Err(invalid(at, field(name), problem)),
            None => Ok(()),
        };
        shaped("id", &a.id, ID)?;
        shaped("team", &a.team, TEXT)?;
        shaped("transfer_address", &a.transfer_address, ADDRESS)?;
        for skill in a.skills.keys() {
            shaped("skills", skill, WORD)?;
        }
        for language in &a.languages {
            shaped("languages", language, LANGUAGE)?;
        }
        let mut channels = Vec::new();
        for (name, capacity) in &a.channels {
            let channel = Channel::parse(name).ok_or_else(|| {
                invalid(
                    at,
                    field("channels"),
                    format!("`{name}` is not one of: voice, chat, sms, email, portal"),
                )
            })?;
            channels.push((channel, *capacity));
        }
        let state = match a.state.as_deref() {
            None => AgentState::Available,
            Some(s) => AgentState::ALL
                .into_iter()
                .find(|x| x.as_str() == s)
                .ok_or_else(|| {
                    invalid(
                        at,
                        field("state"),
                        format!("`{s}` is not one of: offline, available, busy, wrap_up, away"),
                    )
                })?,
        };
        let spec = AgentSpec {
            id: a.id.clone(),
            team: a.team.clone(),
            transfer_address: a.transfer_address.clone(),
            skills: a.skills.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            languages: a.languages.iter().map(|l| language_tag(l)).collect(),
            channels,
        };
        spec.validate()
            .map_err(|(f, message)| invalid(at, field(&f), message))?;
        if !seen.insert(a.id.clone()) {
            return Err(invalid(
                at,
                field("id"),
                format!("duplicate agent `{}`", spec.id),
            ));
        }
        agents.push((spec, state));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_roster_is_valid() {
        let agents = parse("demo", DEMO_ROSTER).unwrap();
        assert!(agents.len() >= 10);
    }

    #[test]
    fn refusals_name_the_files_own_line_across_tables() {
        let text = "# seats\n\n[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nchannels = { voice = 1 }\n\n[[agents]]\nid = \"a2\"\ntransfer_address = \"sip:a2\"\nchannels = { voice = 1 }\n[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nchannels = { voice = 1 }\n";
        let err = parse("r.toml", text).unwrap_err().to_string();
        assert_eq!(err, "r.toml:12: agents.a1.id: duplicate agent `a1`");
        let bad = text.replace("id = \"a2\"", "id = \"a2\"\nshift = \"early\"");
        let err = parse("r.toml", &bad).unwrap_err().to_string();
        assert!(
            err.starts_with("r.toml:10: agents: unknown field `shift`"),
            "{err}"
        );
        // The inline-array form is one piece, parsed whole.
        let inline =
            "agents = [{ id = \"a1\", transfer_address = \"sip:a1\", channels = { voice = 1 } }]\n";
        assert_eq!(parse("r.toml", inline).unwrap().len(), 1);
    }

    #[test]
    fn names_upsert_agent_would_refuse_are_refused() {
        let good = "[[agents]]\nid = \"a1\"\nteam = \"Billing\"\ntransfer_address = \"sip:a1@pbx.example\"\nskills = { billing = 2 }\nlanguages = [\"es-MX\"]\nchannels = { voice = 1 }\n";
        assert_eq!(parse("r.toml", good).unwrap().len(), 1);
        for (from, to, field) in [
            ("id = \"a1\"", "id = \"a 1\"", "agents.a 1.id"),
            (
                "team = \"Billing\"",
                "team = \"Bil\\nling\"",
                "agents.a1.team",
            ),
            (
                "sip:a1@pbx.example",
                "sip:a1@pbx.example created=x",
                "agents.a1.transfer_address",
            ),
            ("billing = 2", "Billing = 2", "agents.a1.skills"),
            ("es-MX", "es_MX", "agents.a1.languages"),
        ] {
            let err = parse("r.toml", &good.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("r.toml:1: {field}: only ")),
                "{err}"
            );
        }
    }

    #[test]
    fn bad_capacity_names_file_line_and_field() {
        let text =
            "[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nchannels = { voice = 0 }\n";
        let err = parse("r.toml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("r.toml:1: agents.a1.channels[0].capacity"),
            "{err}"
        );
    }
}
