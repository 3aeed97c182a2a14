//! The journal read by a person (`careroute journal`): a range of the log
//! as JSON lines, read without the service (which may be running), from
//! the local journal or a NATS stream, each record as stored; with
//! outcomes, the log replayed from the snapshot before the range to show
//! what each command decided: the decision (id, rule, reasons, outcome,
//! queue, agent, reservation) or the refusal, and what it set off (offers
//! from the line, callbacks, moves, withdrawals). Contacts appear as the
//! opaque references the log holds.

use std::{io::Write, path::Path, time::Duration};

use chrono::SecondsFormat;
use serde_json::{Value, json};

use crate::engine::{
    Command, Decision, Engine, EngineConfig, Event, IdKey, LoggedOnce, Notice, Outcome, Place,
    Route,
};
use crate::journal::{
    Diverged, Entry, JournalError, LogReader, Mark, Marked, Nats, NatsSecurity, Replay,
    SnapshotFile, Unreplayable, WRITTEN_FILE,
};
use crate::model::Time;

/// How long a NATS stream may take to deliver a record it holds.
const DELIVERY: Duration = Duration::from_secs(30);

/// A record as an export reads it: its sequence number, its body as stored
/// (JSON), and the record checked and decoded, or why it cannot be.
type Each<'a> = &'a mut dyn FnMut(u64, &str, Result<Entry, String>);

/// A log an export reads.
pub trait Source {
    /// The first and last records kept (none: an empty log).
    fn span(&mut self) -> Result<Option<(u64, u64)>, JournalError>;
    /// The routing rules version the log was written under.
    fn routing_version(&mut self) -> Result<u32, JournalError>;
    /// The id key of the log's engine, if kept.
    fn id_key(&mut self) -> Result<Option<IdKey>, JournalError>;
    /// The newest snapshot of the records before `seq` that loads.
    fn snapshot_before(&mut self, seq: u64) -> Result<Option<(u64, Engine)>, JournalError>;
    /// Every record after `after` up to `upto`, in order.
    fn each(&mut self, after: u64, upto: u64, each: Each<'_>) -> Result<(), JournalError>;
    /// Records written that the log no longer holds (the first and the
    /// last), if the log can tell.
    fn lost(&mut self) -> Result<Option<(u64, u64)>, JournalError> {
        Ok(None)
    }
}

/// The local journal in a data directory.
pub struct Local<'a> {
    dir: &'a Path,
    reader: LogReader,
}

impl Local<'_> {
    /// Opens the journal in `dir` read-only.
    pub fn open(dir: &Path) -> Result<Local<'_>, JournalError> {
        Ok(Local {
            dir,
            reader: LogReader::open(dir)?,
        })
    }
}

impl Source for Local<'_> {
    fn span(&mut self) -> Result<Option<(u64, u64)>, JournalError> {
        self.reader.span()
    }
    fn routing_version(&mut self) -> Result<u32, JournalError> {
        self.reader.routing_version()
    }
    fn id_key(&mut self) -> Result<Option<IdKey>, JournalError> {
        self.reader.id_key()
    }
    fn snapshot_before(&mut self, seq: u64) -> Result<Option<(u64, Engine)>, JournalError> {
        match SnapshotFile::open_read_only(self.dir, self.reader.log_id()?)? {
            Some(file) => Ok(file.load_before(seq)?.snapshot),
            None => Ok(None),
        }
    }
    fn each(&mut self, after: u64, upto: u64, each: Each<'_>) -> Result<(), JournalError> {
        self.reader.each(after, upto, each)
    }
    fn lost(&mut self) -> Result<Option<(u64, u64)>, JournalError> {
        // The mark first: the service writes it after each commit, so the
        // log read after it holds at least as much unless records were lost.
        let mark = match Mark::read_in(self.dir) {
            Marked::Mark(mark) => mark,
            Marked::Empty => return Ok(None),
            // As the service refuses to start on it: a loss cannot be told.
            Marked::Unreadable => {
                return Err(JournalError::MarkUnreadable {
                    mark: self.dir.join(WRITTEN_FILE),
                });
            }
        };
        let (log_id, held) = self.reader.held(self.dir)?;
        Ok(mark.lost(log_id, held))
    }
}

/// A log on a NATS JetStream stream (`--journal nats://...`).
pub struct OnNats {
    nats: Nats,
    runtime: tokio::runtime::Runtime,
}

impl OnNats {
    /// Connects to `urls` and opens the log of `cluster_id`, creating
    /// nothing.
    pub fn open(
        urls: &str,
        security: &NatsSecurity,
        cluster_id: &str,
    ) -> Result<OnNats, JournalError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| JournalError::Setup(format!("cannot start a runtime: {e}")))?;
        let nats = runtime.block_on(Nats::open_to_read(urls, security, cluster_id))?;
        Ok(OnNats { nats, runtime })
    }
}

impl Source for OnNats {
    fn span(&mut self) -> Result<Option<(u64, u64)>, JournalError> {
        let (first, last) = self.runtime.block_on(self.nats.span())?;
        Ok((first <= last).then_some((first, last)))
    }
    fn routing_version(&mut self) -> Result<u32, JournalError> {
        self.runtime.block_on(self.nats.routing_version())
    }
    fn id_key(&mut self) -> Result<Option<IdKey>, JournalError> {
        self.runtime.block_on(self.nats.kept_id_key())
    }
    fn snapshot_before(&mut self, seq: u64) -> Result<Option<(u64, Engine)>, JournalError> {
        Ok(self
            .runtime
            .block_on(self.nats.load_snapshot_before(seq))?
            .loaded)
    }
    fn each(&mut self, after: u64, upto: u64, each: Each<'_>) -> Result<(), JournalError> {
        let Some((_, last)) = self.span()? else {
            return Ok(());
        };
        // The records there are now: the stream may grow meanwhile.
        let upto = upto.min(last);
        if after >= upto {
            return Ok(());
        }
        let nats = &self.nats;
        self.runtime.block_on(async {
            let mut tail = nats.tail(after).await?;
            loop {
                let record = tokio::time::timeout(DELIVERY, tail.next_record())
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        JournalError::Nats("the stream stopped delivering records".into())
                    })??;
                // Records purged behind a snapshot are not delivered: the
                // first one may already be past the range.
                if record.seq > upto {
                    return Ok(());
                }
                let body = String::from_utf8_lossy(&record.body);
                each(record.seq, &body, record.read);
                if record.seq == upto {
                    return Ok(());
                }
            }
        })
    }
}

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
    /// A record between the snapshot and the range cannot be read, or was
    /// not delivered.
    #[error(
        "outcomes from record {from} need every record before it since the snapshot: record {seq} is damaged, or was purged while the export read (export without --outcomes, run it again, or from a later record)"
    )]
    Unreplayable {
        /// The first record asked for.
        from: u64,
        /// The record that is missing.
        seq: u64,
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
    /// Records of the range asked for that a snapshot compacted away (the
    /// first and the last): the export holds less than was asked.
    pub compacted: Option<(u64, u64)>,
}

fn time(at: Time) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Writes the records `from..=to` of the log `source` to `out` (from the
/// first record kept unless `from` says), one JSON object per line; with
/// `outcomes`, each with what it decided, up to a record that did not come
/// or cannot be read (the ones after it say so, rather than show outcomes
/// from a state missing it).
pub fn export(
    source: &mut dyn Source,
    from: Option<u64>,
    to: u64,
    outcomes: bool,
    out: &mut impl Write,
) -> Result<Exported, AuditError> {
    let mut exported = Exported {
        span: source.span()?,
        ..Exported::default()
    };
    let kept_from = exported.span.map_or(1, |(first, _)| first);
    // Records before the first kept were compacted away: a range asked
    // for that reaches them says so (the log starts at record 1). Without
    // `from` the range starts at the first kept, unless `to` is before it.
    let reaches = match from {
        Some(from) => from.max(1) < kept_from && from <= to,
        None => to < kept_from,
    };
    if reaches {
        exported.compacted = Some((from.unwrap_or(1).max(1), to.min(kept_from - 1)));
    }
    let from = from.unwrap_or(kept_from).max(1);
    if outcomes {
        let found = source.routing_version()?;
        if found != crate::engine::ROUTING_VERSION {
            return Err(AuditError::OtherRouting { found });
        }
    }
    let mut replay = if outcomes {
        Some(rebuild_before(source, from, exported.span)?)
    } else {
        None
    };
    let mut written: Result<(), std::io::Error> = Ok(());
    // Records the log kept when the export began must all come, in order:
    // any not delivered are reported (purged while it read).
    let (first, last) = exported.span.unwrap_or((1, 0));
    let mut next = from.max(first);
    // The first record of the range that did not come or cannot be read,
    // and which: outcomes after it would come from a state missing it.
    let mut gap: Option<(u64, &str)> = None;
    source.each(from - 1, to, &mut |seq, body, read| {
        if written.is_err() {
            return;
        }
        if let Some(seq) = missing(seq.saturating_sub(1), next, &mut exported.damaged) {
            gap.get_or_insert((
                seq,
                "was not delivered (purged while the export read: run it again)",
            ));
        }
        next = next.max(seq + 1);
        let entry = match read {
            Ok(entry) => entry,
            Err(why) => {
                exported.damaged.push((seq, why));
                gap.get_or_insert((seq, "cannot be read"));
                return;
            }
        };
        // The body as stored (checked JSON), so the export is the log, not
        // a re-encoding; sequence and time first, for people.
        let at = entry.at;
        // Who sent it, if a client did (the name in the credentials file).
        let by = entry
            .client
            .as_ref()
            .map(|c| format!(",\"by\":{}", json!(&**c)))
            .unwrap_or_default();
        // Whether it was refused when first applied, as the log says.
        let refused = match entry.refused {
            Some(true) => ",\"refused\":true",
            _ => "",
        };
        let result = replay.as_mut().map(|replay| {
            let result = match gap {
                None => apply(replay, seq, entry),
                Some((seq, why)) => {
                    json!({ "not_replayed": format!("record {seq} before it {why}") })
                }
            };
            format!(",\"result\":{result}")
        });
        written = writeln!(
            out,
            "{{\"seq\":{seq},\"at\":\"{}\"{by}{refused},\"command\":{body}{}}}",
            time(at),
            result.unwrap_or_default()
        );
        exported.records += 1;
    })?;
    written?;
    missing(to.min(last), next, &mut exported.damaged);
    if let Some((first, last)) = source.lost()? {
        let (first, last) = (first.max(from), last.min(to));
        if first <= last {
            exported.damaged.push((
                first,
                format!(
                    "records {first} to {last} were written but the log no longer holds them: its write-ahead file was lost or damaged"
                ),
            ));
        }
    }
    Ok(exported)
}

/// Notes records `next` to `upto` as not delivered, if any, and answers
/// the first.
fn missing(upto: u64, next: u64, damaged: &mut Vec<(u64, String)>) -> Option<u64> {
    (upto >= next).then(|| {
        damaged.push((
            next,
            format!(
                "records {next} to {upto} were not delivered (purged behind a snapshot while the export read: run it again)"
            ),
        ));
        next
    })
}

/// The engine as it stood just before record `from`: the newest snapshot
/// before it that loads, or the start of the log, then the records up to it.
fn rebuild_before(
    source: &mut dyn Source,
    from: u64,
    span: Option<(u64, u64)>,
) -> Result<Replay, AuditError> {
    let snapshot = source.snapshot_before(from)?;
    let first = span.map_or(1, |(first, _)| first);
    let base = match &snapshot {
        Some((seq, _)) => *seq,
        None if first <= 1 => 0,
        None => return Err(AuditError::NotReplayable { from, first }),
    };
    let config = EngineConfig {
        id_key: source.id_key()?.unwrap_or_default(),
        ..EngineConfig::default()
    };
    let mut replay = Replay::new(snapshot.map(|(_, e)| e), config);
    // Every record from the snapshot to `from`, in order, readable: a state
    // missing one would show outcomes that were never decided.
    let upto = (from - 1).min(span.map_or(0, |(_, last)| last));
    let (mut next, mut unreplayable, mut failed) = (base + 1, None, None);
    source.each(base, from - 1, &mut |seq, _, read| {
        if unreplayable.is_some() || failed.is_some() {
            return;
        }
        match read {
            Ok(entry) if seq == next => {
                failed = replay.apply(seq, entry).err();
                next += 1;
            }
            Ok(_) => unreplayable = Some(next),
            Err(_) => unreplayable = Some(seq),
        }
    })?;
    match failed {
        Some(Unreplayable::NoStart) => return Err(AuditError::NoStart),
        Some(e) => return Err(e.in_log("the log").into()),
        None => {}
    }
    match unreplayable.or((next <= upto).then_some(next)) {
        Some(seq) => Err(AuditError::Unreplayable { from, seq }),
        None => Ok(replay),
    }
}

/// Applies record `seq` and says what it decided, and if it came to
/// another result than the one the log says it had.
fn apply(replay: &mut Replay, seq: u64, entry: Entry) -> Value {
    let then = entry.refused;
    let Some(engine) = replay.engine() else {
        // The log's first record: the policy the engine is built on.
        return match replay.apply(seq, entry) {
            Ok(()) => json!({ "started": true }),
            Err(Unreplayable::NoStart) => {
                json!({ "refused": "the log does not start with its policy" })
            }
            Err(Unreplayable::Diverged(d)) => json!({ "started": true, "diverged": d.to_string() }),
        };
    };
    let Entry { at, command, .. } = entry;
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
    if let Some(then) = then
        && then != result.get("refused").is_some()
    {
        let diverged = Diverged {
            seq,
            refused_then: then,
        };
        result["diverged"] = json!(diverged.to_string());
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

/// What the command set off outside its own answer: what careroute
/// changed by itself and the assignment events, in the order the event
/// stream tells them.
fn events(engine: &mut Engine) -> Vec<Value> {
    let notices = engine.take_notices();
    let noticed: Vec<Value> = notices
        .list
        .iter()
        .map(|(_, n)| match n {
            Notice::Expired(r) => json!({
                "event": "reservation_expired",
                "reservation_id": r.to_string(),
            }),
            Notice::Withdrawn(r) => json!({
                "event": "reservation_withdrawn",
                "reservation_id": r.to_string(),
            }),
            Notice::State { agent_id, state } => json!({
                "event": "agent_state",
                "agent_id": &**agent_id,
                "state": state.as_str(),
            }),
        })
        .collect();
    let events = engine.take_events();
    let assigned: Vec<Value> = events
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
        .collect();
    notices
        .order(events.len())
        .into_iter()
        .filter_map(|place| match place {
            Place::Command => None,
            Place::Notice(n) => noticed.get(n).cloned(),
            Place::Event(e) => assigned.get(e).cloned(),
        })
        .collect()
}
