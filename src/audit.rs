//! The journal read by a person (`careroute journal`): a range of the log
//! as JSON lines, read without the service (which may be running), each
//! record as stored; with outcomes, the log replayed from the snapshot
//! before the range to show what each command decided: the decision (id,
//! rule, reasons, outcome, queue, agent, reservation) or the refusal, and
//! what it set off (offers from the line, callbacks, moves, withdrawals).
//! Contacts appear as the opaque references the log holds.

use std::{io::Write, path::Path};

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::engine::{Command, Decision, Engine, EngineConfig, Event, LoggedOnce, Outcome, Route};
use crate::journal::{JournalError, LogReader, Replay, SnapshotFile};
use crate::model::Time;

/// Why a range cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The journal cannot be read.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The output cannot be written.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    /// Outcomes need the state before the range, and nothing rebuilds it.
    #[error(
        "outcomes from record {from} need the state before it: no snapshot before it loads and the log before record {first} was compacted (export without --outcomes, or from a later record)"
    )]
    NotReplayable {
        /// The first record asked for.
        from: u64,
        /// The first record kept.
        first: u64,
    },
    /// The log was written by a build that decides differently: its
    /// outcomes can only be replayed by that build.
    #[error(
        "the log was written by a build that routes by rules version {found} (this one: {ours}); replayed here it would show decisions that were never made: use that build's `careroute journal --outcomes`, or export without --outcomes",
        ours = crate::engine::ROUTING_VERSION
    )]
    OtherRouting {
        /// The version it was written under.
        found: u32,
    },
    /// The log does not start with the policy it was written under.
    #[error("the log does not start with its policy; nothing to replay")]
    NoStart,
}

/// What an export found.
#[derive(Debug, Default)]
pub struct Exported {
    /// Records written out.
    pub records: u64,
    /// Records that cannot be read, with why (skipped).
    pub damaged: Vec<(u64, String)>,
    /// The first and last records the log keeps.
    pub span: Option<(u64, u64)>,
}

fn time(at: Time) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes the records `from..=to` of the log in `dir` to `out`, one JSON
/// object per line; with `outcomes`, each with what it decided.
pub fn export(
    dir: &Path,
    from: u64,
    to: u64,
    outcomes: bool,
    out: &mut impl Write,
) -> Result<Exported, AuditError> {
    let reader = LogReader::open(dir)?;
    let mut exported = Exported {
        span: reader.span()?,
        ..Exported::default()
    };
    let from = from.max(1);
    if outcomes {
        let found = reader.routing_version()?;
        if found != crate::engine::ROUTING_VERSION {
            return Err(AuditError::OtherRouting { found });
        }
    }
    let mut replay = if outcomes {
        Some(rebuild_before(dir, &reader, from, exported.span)?)
    } else {
        None
    };
    let mut written: Result<(), std::io::Error> = Ok(());
    reader.each(from - 1, to, |seq, body, client, read| {
        if written.is_err() {
            return;
        }
        let (at, command) = match read {
            Ok(record) => record,
            Err(why) => {
                exported.damaged.push((seq, why));
                return;
            }
        };
        // The body as stored (checked JSON), so the export is the log, not
        // a re-encoding; sequence and time first, for people.
        let result = replay
            .as_mut()
            .map(|replay| format!(",\"result\":{}", apply(replay, at, command)));
        // Who sent it, if a client did (the name in the credentials file).
        let by = client
            .map(|c| format!(",\"by\":{}", json!(c)))
            .unwrap_or_default();
        written = writeln!(
            out,
            "{{\"seq\":{seq},\"at\":\"{}\"{by},\"command\":{body}{}}}",
            time(at),
            result.unwrap_or_default()
        );
        exported.records += 1;
    })?;
    written?;
    Ok(exported)
}

/// The engine as it stood just before record `from`: the newest snapshot
/// before it that loads, or the start of the log, then the records up to it.
fn rebuild_before(
    dir: &Path,
    reader: &LogReader,
    from: u64,
    span: Option<(u64, u64)>,
) -> Result<Replay, AuditError> {
    let snapshot = match SnapshotFile::open_read_only(dir, reader.log_id()?)? {
        Some(file) => file.load_before(from)?.snapshot,
        None => None,
    };
    let first = span.map_or(1, |(first, _)| first);
    let base = match &snapshot {
        Some((seq, _)) => *seq,
        None if first <= 1 => 0,
        None => return Err(AuditError::NotReplayable { from, first }),
    };
    let config = EngineConfig {
        id_key: reader.id_key()?.unwrap_or_default(),
        ..EngineConfig::default()
    };
    let mut replay = Replay::new(snapshot.map(|(_, e)| e), config);
    let mut failed = false;
    reader.each(base, from - 1, |_, _, _, read| {
        if let Ok((at, command)) = read {
            failed |= replay.apply(at, command).is_err();
        }
    })?;
    if failed {
        return Err(AuditError::NoStart);
    }
    Ok(replay)
}

/// Applies one record and says what it decided.
fn apply(replay: &mut Replay, at: Time, command: Command) -> Value {
    let Some(engine) = replay.engine() else {
        // The log's first record: the policy the engine is built on.
        return match replay.apply(at, command) {
            Ok(()) => json!({ "started": true }),
            Err(_) => json!({ "refused": "the log does not start with its policy" }),
        };
    };
    let mut result = match command {
        Command::Route(contact) => match engine.apply(Route(&contact), at) {
            Ok(decision) => decided(&decision),
            Err(e) => json!({ "refused": e.to_string() }),
        },
        Command::Once {
            request_id,
            command,
        } => {
            let replayed = engine.apply(
                LoggedOnce {
                    request_id,
                    command: *command,
                },
                at,
            );
            match replayed {
                Ok(false) => json!({ "accepted": true }),
                // A retry after a lost answer: answered as the first was.
                Ok(true) => json!({ "accepted": true, "retry_of_an_answered_request": true }),
                Err(e) => json!({ "refused": e.to_string() }),
            }
        }
        command => match engine.apply(command, at) {
            Ok(()) => json!({ "accepted": true }),
            Err(e) => json!({ "refused": e.to_string() }),
        },
    };
    let events = events(engine);
    if !events.is_empty() {
        result["events"] = Value::Array(events);
    }
    result
}

/// A decision as an auditor reads it.
fn decided(d: &Decision) -> Value {
    let mut v = json!({
        "decision_id": d.id.to_string(),
        "rule_id": d.rule_id.as_deref(),
        "reasons": d.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "level": d.level,
        "team": &*d.team,
        "outcome": d.outcome.kind(),
        "queue_id": d.queue_id(),
    });
    match &d.outcome {
        Outcome::Agent(a) => {
            v["agent_id"] = json!(&*a.agent_id);
            v["reservation_id"] = json!(a.reservation.to_string());
            v["expires_at"] = json!(time(a.expires_at));
        }
        Outcome::Queued(q) => v["position"] = json!(q.position),
        Outcome::Callback(c) => {
            v["callback_reason"] = json!(c.reason.as_str());
            v["deadline"] = json!(time(c.terms.deadline));
        }
        Outcome::Emergency { script_id, .. } | Outcome::Authenticate { script_id, .. } => {
            v["script_id"] = json!(&**script_id);
        }
    }
    v
}

/// What the command set off outside its own answer.
fn events(engine: &mut Engine) -> Vec<Value> {
    engine
        .take_events()
        .iter()
        .map(|e| match e {
            Event::Assigned(a) => json!({
                "event": "assigned",
                "contact_id": a.contact_id,
                "agent_id": &*a.offer.agent_id,
                "queue_id": &*a.offer.queue_id,
                "reservation_id": a.offer.reservation.to_string(),
            }),
            Event::CallbackInstead {
                contact_id,
                callback,
                ..
            } => json!({
                "event": "callback",
                "contact_id": contact_id,
                "queue_id": &*callback.queue_id,
                "reason": callback.reason.as_str(),
            }),
            Event::Withdrawn {
                contact_id,
                agent_id,
                reservation,
                ..
            } => json!({
                "event": "withdrawn",
                "contact_id": contact_id,
                "agent_id": &**agent_id,
                "reservation_id": reservation.to_string(),
            }),
            Event::Moved {
                contact_id,
                from_queue_id,
                to_queue_id,
                ..
            } => json!({
                "event": "moved",
                "contact_id": contact_id,
                "from_queue_id": &**from_queue_id,
                "to_queue_id": &**to_queue_id,
            }),
        })
        .collect()
}
