//! The engine's log: every command applied, with its time and its
//! sequence number, on a NATS JetStream stream (`nats`, replicated to
//! standbys) or, by default, in a SQLite database (WAL) that an operator can read
//! with `sqlite3` (`SELECT seq, at_us, body FROM commands`; bodies are
//! JSON, contacts opaque references only). One writer thread appends the
//! commands in batches (group commit; on NATS several batches in flight,
//! see `writer`); an answer leaves only once its command's batch, and every
//! batch before it, is in the log, and the events a batch decided are
//! published after it, in order. At start the log is read back, checked
//! (sequence and checksum of every record) and replayed; a torn or corrupt
//! tail is reported with its position and cut; records SQLite dropped with
//! a damaged write-ahead file are found against the mark of how far the log
//! was written (see `written`). Without a database
//! (`--no-journal`) the same thread only publishes.
//!
//! Snapshots (see `snapshots` and `shadow`): the engine's whole state at a
//! sequence number, taken from a copy of the engine kept current off the
//! serving path. A start loads the newest snapshot that reads back whole and
//! replays only the commands after it; each new snapshot compacts the log,
//! keeping the snapshot before it and the commands since, so a damaged
//! newest snapshot falls back to the one before.

mod nats;
mod records;
mod replay;
mod shadow;
mod snapshots;
mod store;
mod writer;
mod written;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use tokio::sync::{oneshot, watch};

use crate::engine::Command;
use crate::model::Time;

pub use nats::{Acks, Lease, Nats, NatsSecurity, Tail};
pub use records::{End, Records};
pub use replay::{Replay, Unreplayable};
pub use shadow::{Every, Snapshots};
pub use snapshots::{Loaded, SNAPSHOT_FILE, SnapshotFile};
pub use store::{LogReader, Recovered, Store};
use writer::{Work, Writer, Written};
pub use written::{Mark, Marked, WRITTEN_FILE};

/// The restart a start logs before it answers, beginning an epoch drawn
/// here (never 0, a new log's): the engine's ids carry it, so a start after
/// a power loss took the log's tail, and perhaps the restart before with
/// it, never gives an id that tail gave.
pub fn restarted() -> crate::engine::Command {
    let epoch = rand::random::<u32>().max(1);
    crate::engine::Command::Restarted(crate::engine::Restarted { epoch })
}

/// The database file inside the data directory.
pub const FILE: &str = "careroute.db";
/// The write-ahead file is truncated to this after a checkpoint (a large
/// snapshot would otherwise leave it that large).
const WAL_LIMIT: u64 = 64 << 20;

/// What to do about a database SQLite finds damaged: its pages, not a
/// record, so no record can be named.
fn corrupt_hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            " (the database file itself is damaged, below its records, so none can be named: restore the data directory from a copy, or move it aside to start anew)"
        }
        _ => "",
    }
}

/// Why the journal cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The data directory, or its lock file, cannot be created.
    #[error("journal: cannot create {dir}: {source}")]
    Dir {
        /// The directory or the file.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("journal {file}: {source}{}", corrupt_hint(source))]
    Sqlite {
        /// The database file.
        file: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The first record is not the policy the log starts from.
    #[error(
        "journal {file}: record 1 is not the starting policy; refusing to start on half a state"
    )]
    NoStart {
        /// The database file.
        file: PathBuf,
    },
    /// A record that cannot be read, with good records after it (or the
    /// first record): not a torn tail, so nothing is cut and the service
    /// does not start.
    #[error(
        "journal {file}: record {seq} cannot be read ({why}) and is not the tail; refusing to start rather than lose the records after it (move the file aside to start anew)"
    )]
    Corrupt {
        /// The database file.
        file: PathBuf,
        /// The record.
        seq: u64,
        /// Why.
        why: String,
    },
    /// A record at the end of the log cannot be read, but it was on disk
    /// when answered: damage, not a torn tail, so it is not cut.
    #[error(
        "journal {file}: record {seq} cannot be read ({why}), but records up to {fsync_upto} were on disk when answered (--journal-sync fsync): damage, not a torn tail. Refusing to start rather than lose them: restore the data directory from a copy"
    )]
    Damaged {
        /// The database file.
        file: PathBuf,
        /// The first record that cannot be read.
        seq: u64,
        /// Why.
        why: String,
        /// The last record written under fsync.
        fsync_upto: u64,
    },
    /// Records the log's mark says were written are not in it: SQLite
    /// dropped them with a damaged or lost write-ahead file.
    #[error(
        "journal {file}: records up to {written} were written{} ({mark} says so) but the log holds them only up to {last}: its write-ahead file (careroute.db-wal) was lost or damaged. Refusing to start on half a state: restore the data directory from a copy, or remove {mark} to start from what is left",
        if *fsync { " under --journal-sync fsync" } else { "" }
    )]
    Lost {
        /// The database file.
        file: PathBuf,
        /// The file that says how far the log was written.
        mark: PathBuf,
        /// The last record written.
        written: u64,
        /// The last record the log holds (0: none).
        last: u64,
        /// They were written under `--journal-sync fsync`.
        fsync: bool,
    },
    /// The mark holds something that is not a mark: how far the log was
    /// written is unknown, so a loss could not be told.
    #[error(
        "journal {mark}: not a mark of how far the log was written (damaged?), so records lost from the log could not be told. Refusing to start on half a state: restore the data directory from a copy, or remove {mark} to start from what the log holds"
    )]
    MarkUnreadable {
        /// The mark's file.
        mark: PathBuf,
    },
    /// The mark (how far the log was written) cannot be read or written.
    #[error("journal {file}, which says how far the log was written: {source}")]
    Mark {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record replays to another result than the one it had: the state
    /// rebuilt is not the one the answers were given from.
    #[error(
        "journal {file}: {diverged}: the log does not rebuild the state its answers were given from, so it is not replayed. This is a bug (please report it, with the log); to serve again, start on a fresh --data-dir (or cluster id) and keep this log for audit"
    )]
    Diverged {
        /// The database file or stream.
        file: PathBuf,
        /// The record and how it differs.
        diverged: Diverged,
    },
    /// The journal is in use by another process.
    #[error("journal {dir}: in use by another careroute process")]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },
    /// No snapshot reads back whole, and the log before the oldest one was
    /// compacted: the state cannot be rebuilt.
    #[error(
        "journal {file}: no snapshot can be loaded ({why}) and the log before record {first} was compacted; refusing to start on half a state"
    )]
    NoSnapshot {
        /// The database file.
        file: PathBuf,
        /// The first record kept.
        first: u64,
        /// Why each snapshot was refused.
        why: String,
    },
    /// The log was written by a build that decides differently: replaying
    /// it would rebuild decisions that were never made.
    #[error(
        "journal {file}: written by a build that routes by rules version {found}; this build routes by version {ours}, and replaying would rebuild decisions that were never made. Start on a fresh --data-dir (keep this one for audit: the older build's `careroute journal` reads it)",
        ours = crate::engine::ROUTING_VERSION
    )]
    OtherRouting {
        /// The database file.
        file: PathBuf,
        /// The version it was written under.
        found: u32,
    },
    /// The journal could not be set up (a thread, the snapshot shadow).
    #[error("journal: {0}")]
    Setup(String),
    /// A command could not be encoded.
    #[error("journal: cannot encode a command: {0}")]
    Encode(String),
    /// The writer stopped after a failed write: nothing more is answered.
    #[error("journal: a write failed ({0}); the service stops")]
    Failed(String),
    /// NATS refused or did not answer.
    #[error("journal on NATS: {0}")]
    Nats(String),
    /// Another leader appended record `seq` first: this process no longer
    /// leads.
    #[error(
        "journal on NATS: record {seq} was appended by another leader; this process steps down"
    )]
    Fenced {
        /// The record.
        seq: u64,
    },
    /// This process no longer leads: what it applied since it last led is
    /// not in the log.
    #[error("journal: leadership was lost before this command was logged")]
    Deposed,
}

/// A command as the log keeps it: its time, the command, whether it was
/// refused when it was first applied, and the client that sent it, if one
/// did. A replay checks that each record comes to what it came to then.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When it was applied.
    pub at: Time,
    /// The command.
    pub command: Command,
    /// Whether it was refused (none: the log was written before this was
    /// kept).
    pub refused: Option<bool>,
    /// The authenticated client that sent it, if one did (none for what
    /// the service did by itself).
    pub client: Option<Arc<str>>,
}

impl Entry {
    /// A command applied at `at` and accepted, that no client sent (what
    /// the service does by itself).
    pub fn accepted(at: Time, command: Command) -> Entry {
        Entry {
            at,
            command,
            refused: Some(false),
            client: None,
        }
    }
}

/// A record that replays to another result than the one it had: the log
/// no longer rebuilds the state its answers were given from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diverged {
    /// The record.
    pub seq: u64,
    /// It was refused when first applied (and is accepted now), or the
    /// other way.
    pub refused_then: bool,
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (then, now) = if self.refused_then {
            ("refused", "accepted")
        } else {
            ("accepted", "refused")
        };
        write!(
            f,
            "record {} was {then} when first applied and is {now} when replayed",
            self.seq
        )
    }
}

/// Where the writer appends.
pub enum Log {
    /// The local SQLite journal: a failed write stops the service.
    Local(Box<Store>),
    /// A NATS JetStream stream: a failed append ends this process's term
    /// as leader.
    Nats(Box<NatsLog>),
}

/// The writer's side of a NATS log: the runtime handle that drives the
/// client from the writer's thread, and the chain of the term's appends.
pub struct NatsLog {
    nats: Nats,
    runtime: tokio::runtime::Handle,
    /// Names this process's terms (with the term number).
    process: u64,
    /// The term and the id of its last record appended.
    chain: Option<(u64, String)>,
}

impl Log {
    /// A NATS log written by this process, its client driven by `runtime`.
    pub fn nats(nats: Nats, runtime: tokio::runtime::Handle) -> Log {
        Log::Nats(Box::new(NatsLog {
            nats,
            runtime,
            process: rand::random(),
            chain: None,
        }))
    }

    /// Sends a batch: written when it returns (local), or published with
    /// its acknowledgements to come (NATS).
    fn send(&mut self, rows: &[(u64, Entry)], term: u64) -> Result<Sent, JournalError> {
        match self {
            Log::Local(store) => store.write(rows).map(|()| Sent::Written),
            Log::Nats(log) => {
                // A new term starts a new chain.
                let mut chain = match log.chain.take() {
                    Some((t, id)) if t == term => Some(id),
                    _ => None,
                };
                let name = format!("{:016x}-{term}", log.process);
                let sent = log.runtime.block_on(log.nats.send(rows, &name, &mut chain));
                log.chain = chain.map(|id| (term, id));
                let runtime = log.runtime.clone();
                sent.map(|acks| Sent::Acks(acks, runtime))
            }
        }
    }
}

/// A batch sent to the log.
enum Sent {
    /// In the log already.
    Written,
    /// Published to NATS (whose client the runtime drives); in the log once
    /// every record is acknowledged.
    Acks(Acks, tokio::runtime::Handle),
}

impl Sent {
    /// Whether confirming the batch would not wait: it is in the log, or
    /// every acknowledgement of it is in, or one failed.
    fn arrived(&mut self) -> bool {
        match self {
            Sent::Written => true,
            Sent::Acks(acks, runtime) => acks.arrived(runtime),
        }
    }

    /// Waits until the batch is in the log.
    fn confirm(self) -> Result<(), JournalError> {
        match self {
            Sent::Written => Ok(()),
            Sent::Acks(acks, runtime) => runtime.block_on(acks.confirm()),
        }
    }
}

/// What an answer waits for: its command's sequence number, in the term
/// (of leadership) it was applied in. A ticket of an ended term is never
/// honoured, even if the log later holds that many records.
#[derive(Debug)]
pub struct Ticket {
    /// The sequence number.
    pub seq: u64,
    term: u64,
    /// Told by the writer once the command's batch, and every batch before
    /// it, is in the log and its events are published; dropped untold if it
    /// never will be. Waking only the answers of each batch, not every
    /// waiting one, keeps the cost of a batch independent of how many calls
    /// are in flight.
    done: Option<oneshot::Receiver<()>>,
}

/// The writer's queue: commands (with the events they decided) in, written
/// and published in order by one thread.
pub struct Journal<T> {
    tx: mpsc::Sender<Work<T>>,
    written: watch::Receiver<Written>,
    /// To open a new term.
    terms: watch::Sender<Written>,
    next: AtomicU64,
    term: AtomicU64,
    /// Whether a database keeps the commands.
    keeps: bool,
}

impl<T: Send + 'static> Journal<T> {
    /// Starts the writer on `log` (none: publish only), continuing after
    /// `last_seq`, feeding the snapshot shadow if given. `publish` receives
    /// each command's sequence number and events (none for most) once its
    /// batch is written, in order; `failed` is called once if a write to a
    /// local journal fails (the writer stops). A failed append to NATS ends the term
    /// instead: nothing of it is answered, and the writer waits for the
    /// next ([`Journal::lead`]).
    pub fn start(
        log: Option<Log>,
        last_seq: u64,
        snapshots: Option<Snapshots>,
        publish: impl FnMut(u64, Vec<T>) + Send + 'static,
        failed: impl FnOnce(&JournalError) + Send + 'static,
    ) -> Arc<Journal<T>> {
        let keeps = log.is_some();
        let (tx, queue) = mpsc::channel::<Work<T>>();
        let (written_tx, written) = watch::channel(Written {
            upto: last_seq,
            term: 0,
            failed: None,
        });
        let terms = written_tx.clone();
        let writer = Writer::new(
            queue,
            log,
            snapshots,
            Box::new(publish),
            Box::new(failed),
            written_tx,
        );
        let spawned = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            // The writer is dropped with the error, and its alarm raised.
            tracing::error!(error = %e, "cannot start the journal writer");
        }
        Arc::new(Journal {
            tx,
            written,
            terms,
            next: AtomicU64::new(last_seq),
            term: AtomicU64::new(0),
            keeps,
        })
    }

    /// Queues a command just applied (`logged` false: nothing to log), and
    /// the events it decided, built from its sequence number; returns the
    /// ticket to wait for. `entry` is the command as the log keeps it,
    /// given only if [`Journal::keeps`] commands: without a database
    /// (`--no-journal`) a command is numbered, never copied. Called under
    /// the engine's lock, so sequence numbers follow the order of
    /// application.
    pub fn append(
        &self,
        logged: bool,
        entry: Option<Entry>,
        events: impl FnOnce(u64) -> Vec<T>,
    ) -> Ticket {
        let term = self.term.load(Ordering::SeqCst);
        let seq = if logged {
            self.next.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.next.load(Ordering::SeqCst)
        };
        let entry = entry.filter(|_| logged && self.keeps);
        let events = events(seq);
        let mut ticket = Ticket {
            seq,
            term,
            done: None,
        };
        if logged || !events.is_empty() {
            let (done, told) = oneshot::channel();
            ticket.done = Some(told);
            // The writer lives as long as the process; if it died, `durable`
            // says so.
            let _ = self.tx.send(Work {
                term,
                seq,
                entry,
                events,
                done,
            });
        }
        ticket
    }

    /// Opens a new term after `last_seq` (the log's last record, all of
    /// it applied): tickets of the term before are refused from now on.
    /// Called under the engine's lock, with no command applied since the
    /// log was read.
    pub fn lead(&self, last_seq: u64) {
        let term = self.term.fetch_add(1, Ordering::SeqCst) + 1;
        self.next.store(last_seq, Ordering::SeqCst);
        self.terms.send_modify(|w| {
            w.term = term;
            w.upto = last_seq;
            w.failed = None;
        });
    }

    /// Ends the current term (this process no longer leads): nothing
    /// applied in it is written or answered.
    pub fn end_term(&self, why: &str) {
        let term = self.term.load(Ordering::SeqCst);
        self.terms.send_modify(|w| {
            if w.term == term && w.failed.is_none() {
                w.failed = Some(why.to_owned());
            }
        });
    }

    /// Resolves once the current term has ended, with why.
    pub async fn term_ended(&self) -> String {
        let term = self.term.load(Ordering::SeqCst);
        let mut written = self.written.clone();
        match written
            .wait_for(|w| w.term != term || w.failed.is_some())
            .await
        {
            Ok(w) => w
                .failed
                .clone()
                .unwrap_or_else(|| "a new term began".into()),
            Err(_) => "the journal writer stopped".into(),
        }
    }

    /// Whether a database keeps the commands (else they are only
    /// numbered).
    pub fn keeps(&self) -> bool {
        self.keeps
    }

    /// The ticket of the last sequence number handed out.
    pub fn last(&self) -> Ticket {
        Ticket {
            seq: self.next.load(Ordering::SeqCst),
            term: self.term.load(Ordering::SeqCst),
            done: None,
        }
    }

    /// Waits until everything up to the ticket's sequence number is
    /// written in its term.
    pub async fn durable(&self, ticket: Ticket) -> Result<(), JournalError> {
        if let Some(done) = ticket.done
            && done.await.is_ok()
        {
            return Ok(());
        }
        // Not told: the watch says why (or, for a ticket of no command of
        // its own, when).
        let mut written = self.written.clone();
        let w = written
            .wait_for(|w| w.term != ticket.term || w.upto >= ticket.seq || w.failed.is_some())
            .await
            .map_err(|_| JournalError::Failed("the journal writer stopped".into()))?;
        match &w.failed {
            _ if w.term != ticket.term => Err(JournalError::Deposed),
            _ if w.upto >= ticket.seq => Ok(()),
            // Term 0 is the local journal's only term: its failure stops
            // the service.
            Some(why) if w.term == 0 => Err(JournalError::Failed(why.clone())),
            _ => Err(JournalError::Deposed),
        }
    }
}
