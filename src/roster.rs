//! Roster files: agents to register at start (the demo roster of the quick
//! start, or a site's fixed seats), in TOML. CTI platforms normally register
//! agents over gRPC instead.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use toml::Spanned;

use crate::engine::{AgentSpec, ProfilePart};
use crate::file::{self, FileError};
use crate::model::{AgentState, Channel, language_tag};
use crate::shape::{ADDRESS, ID, LANGUAGE, MAX_AGENT_LIST, Shape, TEXT, WORD};

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
    id: Spanned<String>,
    team: Option<Spanned<String>>,
    transfer_address: Spanned<String>,
    skills: Option<Spanned<BTreeMap<String, u8>>>,
    languages: Option<Spanned<Vec<String>>>,
    channels: Spanned<BTreeMap<String, u8>>,
    state: Option<Spanned<String>>,
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
        let a = spanned.get_ref();
        let id = a.id.get_ref();
        // Named by its id, or by its place when the id is what is wrong.
        let agent = if id.is_empty() || ID.problem(id).is_some() {
            format!("agents[{}]", agents.len())
        } else {
            format!("agents.{id}")
        };
        let field = |name: &str| format!("{agent}.{name}");
        // Each refusal at the line of the key it is about.
        let line_of = |name: &str| {
            let span = match name.split(['[', '.']).next().unwrap_or_default() {
                "id" | "agent_id" => Some(a.id.span()),
                "team" => a.team.as_ref().map(Spanned::span),
                "transfer_address" => Some(a.transfer_address.span()),
                "skills" => a.skills.as_ref().map(Spanned::span),
                "languages" => a.languages.as_ref().map(Spanned::span),
                "channels" => Some(a.channels.span()),
                "state" => a.state.as_ref().map(Spanned::span),
                _ => None,
            };
            span.unwrap_or_else(|| spanned.span()).start
        };
        let refuse = |name: &str, message: String| invalid(line_of(name), field(name), message);
        // What UpsertAgent would refuse, a file may not register either.
        let shaped = |name: &str, value: &str, shape: Shape| match shape.problem(value) {
            Some(problem) => Err(refuse(name, problem)),
            None => Ok(()),
        };
        let team = a.team.as_ref().map(|t| t.get_ref().as_str()).unwrap_or("");
        let skills = a
            .skills
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default();
        let languages = a
            .languages
            .as_ref()
            .map(|l| l.get_ref().clone())
            .unwrap_or_default();
        shaped("id", id, ID)?;
        shaped("team", team, TEXT)?;
        shaped("transfer_address", a.transfer_address.get_ref(), ADDRESS)?;
        for (name, len) in [
            ("skills", skills.len()),
            ("languages", languages.len()),
            ("channels", a.channels.get_ref().len()),
        ] {
            if len > MAX_AGENT_LIST {
                return Err(refuse(name, format!("more than {MAX_AGENT_LIST} entries")));
            }
        }
        for skill in skills.keys() {
            shaped("skills", skill, WORD)?;
        }
        for (i, language) in languages.iter().enumerate() {
            shaped(&format!("languages[{i}]"), language, LANGUAGE)?;
        }
        let mut channels = Vec::new();
        let mut channel_keys = Vec::new();
        for (name, capacity) in a.channels.get_ref() {
            let channel = Channel::parse(name).ok_or_else(|| {
                refuse(
                    "channels",
                    format!("`{name}` is not one of: voice, chat, sms, email, portal"),
                )
            })?;
            channels.push((channel, *capacity));
            channel_keys.push(name);
        }
        let state = match &a.state {
            None => AgentState::Available,
            Some(s) => AgentState::ALL
                .into_iter()
                .find(|x| x.as_str() == s.get_ref())
                .ok_or_else(|| {
                    refuse(
                        "state",
                        format!(
                            "`{}` is not one of: offline, available, busy, wrap_up, away",
                            s.get_ref()
                        ),
                    )
                })?,
        };
        let spec = AgentSpec {
            id: id.clone(),
            team: team.to_owned(),
            transfer_address: a.transfer_address.get_ref().clone(),
            skills: skills.into_iter().collect(),
            languages: languages.iter().map(|l| language_tag(l)).collect(),
            channels,
        };
        // A part of the profile as this file writes it: skills and
        // channels are tables keyed by name.
        let named = |part: ProfilePart| match part {
            ProfilePart::Id => "id".to_owned(),
            ProfilePart::TransferAddress => "transfer_address".to_owned(),
            ProfilePart::Skill(i) | ProfilePart::Proficiency(i) => spec.skills.get(i).map_or_else(
                || "skills".to_owned(),
                |(skill, _)| format!("skills.{skill}"),
            ),
            ProfilePart::Language(i) => format!("languages[{i}]"),
            ProfilePart::Channels => "channels".to_owned(),
            ProfilePart::Channel(i) | ProfilePart::Capacity(i) => channel_keys
                .get(i)
                .map_or_else(|| "channels".to_owned(), |key| format!("channels.{key}")),
        };
        spec.validate()
            .map_err(|problem| refuse(&named(problem.part), problem.describe(named)))?;
        if !seen.insert(id.clone()) {
            return Err(refuse("id", format!("duplicate agent `{}`", spec.id)));
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
        assert_eq!(err, "r.toml:13: agents.a1.id: duplicate agent `a1`");
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
        // Each refusal names the line of its key; a bad id, the agent's place.
        for (from, to, at) in [
            ("id = \"a1\"", "id = \"a 1\"", "2: agents[0].id"),
            (
                "team = \"Billing\"",
                "team = \"Bil\\nling\"",
                "3: agents.a1.team",
            ),
            (
                "sip:a1@pbx.example",
                "sip:a1@pbx.example created=x",
                "4: agents.a1.transfer_address",
            ),
            ("billing = 2", "Billing = 2", "5: agents.a1.skills"),
            ("es-MX", "es_MX", "6: agents.a1.languages[0]"),
        ] {
            let err = parse("r.toml", &good.replace(from, to))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(&format!("r.toml:{at}: only ")), "{err}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("s{i} = 1")).collect();
        let err = parse("r.toml", &good.replace("billing = 2", &many.join(", ")))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "r.toml:5: agents.a1.skills: more than 64 entries");
        // One language twice, in another case: refused, as UpsertAgent does.
        let err = parse(
            "r.toml",
            &good.replace("[\"es-MX\"]", "[\"es-MX\", \"ES-mx\"]"),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "r.toml:6: agents.a1.languages[1]: the same language as languages[0]"
        );
    }

    #[test]
    fn bad_capacity_names_file_line_and_field() {
        let text =
            "[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nchannels = { voice = 0 }\n";
        let err = parse("r.toml", text).unwrap_err().to_string();
        assert_eq!(err, "r.toml:4: agents.a1.channels.voice: must be 1-50");
        // Skills and channels are tables here: named by key, as written.
        let text = "[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nskills = { billing = 3, coding = 9 }\nchannels = { voice = 1 }\n";
        let err = parse("r.toml", text).unwrap_err().to_string();
        assert_eq!(err, "r.toml:4: agents.a1.skills.coding: must be 1-5");
        let text = "[[agents]]\nid = \"a1\"\ntransfer_address = \"sip:a1\"\nchannels = {}\n";
        let err = parse("r.toml", text).unwrap_err().to_string();
        assert!(
            err.starts_with("r.toml:4: agents.a1.channels: at least one channel"),
            "{err}"
        );
    }
}
