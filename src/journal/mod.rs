//! The engine's log: every command applied, with its time and its
//! sequence number, on a NATS JetStream stream (`nats`, replicated to
//! standbys) or, by default, in a SQLite database (WAL) that an operator can read
//! with `sqlite3` (`SELECT seq, at_us, body FROM commands`; bodies are
//! JSON, contacts opaque references only). One writer thread appends the
//! commands in batches (group commit); an answer leaves only once its
//! command's batch is written, and the events a batch decided are published
//! after it, in order. At start the log is read back, checked (sequence and
//! checksum of every record) and replayed; a torn or corrupt tail is
//! reported with its position and cut. Without a database (`--no-journal`)
//! the same thread only publishes.
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

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use tokio::sync::{oneshot, watch};

use crate::engine::Command;
use crate::model::Time;
pub use nats::{Lease, Nats, NatsSecurity, Tail};
pub use records::{End, Records};
pub use replay::{NoStart, Replay};
pub use shadow::{Every, Snapshots};
pub use snapshots::{Loaded, SNAPSHOT_FILE, SnapshotFile};
pub use store::{LogReader, Recovered, Store};

/// The database file inside the data directory.
pub const FILE: &str = "careroute.db";
/// The write-ahead file is truncated to this after a checkpoint (a large
/// snapshot would otherwise leave it that large).
const WAL_LIMIT: u64 = 64 << 20;
/// Records dropped per step of a compaction, between batches.
const COMPACT_CHUNK: u64 = 4096;
/// How long the writer waits for commands before the next compaction
/// step when one is under way.
const COMPACT_PAUSE: Duration = Duration::from_millis(10);
/// Most commands written in one batch.
const MAX_BATCH: usize = 4096;

/// Why the journal cannot be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The data directory cannot be created.
    #[error("journal: cannot create {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused.
    #[error("journal {file}: {source}")]
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

    fn write(
        &mut self,
        rows: &[(u64, Time, Command)],
        clients: &[Option<Arc<str>>],
        term: u64,
    ) -> Result<(), JournalError> {
        match self {
            Log::Local(store) => store.write(rows, clients),
            Log::Nats(log) => {
                // A new term starts a new chain.
                let mut chain = match log.chain.take() {
                    Some((t, id)) if t == term => Some(id),
                    _ => None,
                };
                let name = format!("{:016x}-{term}", log.process);
                let written = log
                    .runtime
                    .block_on(log.nats.append(rows, clients, &name, &mut chain));
                log.chain = chain.map(|id| (term, id));
                written
            }
        }
    }

    fn store(&mut self) -> Option<&mut Store> {
        match self {
            Log::Local(store) => Some(store),
            Log::Nats(..) => None,
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
    /// Told by the writer once the command's batch is written and its
    /// events published; dropped untold if it never will be. Waking only
    /// the answers of each batch, not every waiting one, keeps the cost of
    /// a batch independent of how many calls are in flight.
    done: Option<oneshot::Receiver<()>>,
}

/// Told once if the writer fails.
type OnFailure = Box<dyn FnOnce(&JournalError) + Send>;

/// Raised once if the writer stops for any reason but the service's own
/// stop (a failed write, a panic): the failure is told and recorded, so
/// nobody waits for it and the service stops.
struct Alarm {
    failed: Option<OnFailure>,
    written: watch::Sender<Written>,
}

impl Alarm {
    fn disarm(&mut self) {
        self.failed = None;
    }

    fn raise(&mut self, e: JournalError) {
        if let Some(f) = self.failed.take() {
            f(&e);
        }
        self.written.send_modify(|w| w.failed = Some(e.to_string()));
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if self.failed.is_some() {
            self.raise(JournalError::Failed("the journal writer stopped".into()));
        }
    }
}

/// How far the writer has got, in which term.
#[derive(Debug, Clone, Default)]
struct Written {
    upto: u64,
    term: u64,
    failed: Option<String>,
}

/// What the writer is given, in order: a command (none: only events) and
/// the events it decided.
struct Work<T> {
    term: u64,
    seq: u64,
    at: Time,
    command: Option<Command>,
    /// The client that sent it, if one did.
    client: Option<Arc<str>>,
    events: Vec<T>,
    /// Told once the batch is written and the events published.
    done: oneshot::Sender<()>,
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
    /// `last_seq`, feeding the snapshot shadow if given.
    /// `publish` receives each command's events once its batch is written,
    /// in order; `failed` is called once if a write to a local journal
    /// fails (the writer stops). A failed append to NATS ends the term
    /// instead: nothing of it is answered, and the writer waits for the
    /// next ([`Journal::lead`]).
    pub fn start(
        log: Option<Log>,
        last_seq: u64,
        snapshots: Option<Snapshots>,
        mut publish: impl FnMut(Vec<T>) + Send + 'static,
        failed: impl FnOnce(&JournalError) + Send + 'static,
    ) -> Arc<Journal<T>> {
        let keeps = log.is_some();
        let (tx, rx) = mpsc::channel::<Work<T>>();
        let (written_tx, written) = watch::channel(Written {
            upto: last_seq,
            term: 0,
            failed: None,
        });
        let terms = written_tx.clone();
        let failed: OnFailure = Box::new(failed);
        let mut alarm = Alarm {
            failed: Some(failed),
            written: written_tx,
        };
        let spawned = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let mut log = log;
                // Compaction resumes where the log now starts.
                let first_kept = match &log {
                    Some(Log::Local(store)) => store.first_kept(),
                    _ => 0,
                };
                let (mut compacted, mut compact_to) = (first_kept.saturating_sub(1), 0u64);
                loop {
                    let first = if compacted < compact_to {
                        match rx.recv_timeout(COMPACT_PAUSE) {
                            Ok(w) => Some(w),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(w) => Some(w),
                            Err(_) => break,
                        }
                    };
                    let mut batch: Vec<Work<T>> = first.into_iter().collect();
                    while !batch.is_empty() && batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    // Work of an ended term is dropped: its answers never
                    // leave, and the next term starts from the log.
                    let (term, ended) = {
                        let w = alarm.written.borrow();
                        (w.term, w.failed.is_some())
                    };
                    batch.retain(|w| w.term == term && !ended);
                    let (mut rows, mut clients) = (Vec::new(), Vec::new());
                    let mut upto = 0;
                    for work in &mut batch {
                        upto = work.seq;
                        if let Some(c) = work.command.take() {
                            rows.push((work.seq, work.at, c));
                            clients.push(work.client.take());
                        }
                    }
                    if let Some(log) = log.as_mut()
                        && !rows.is_empty()
                        && let Err(e) = log.write(&rows, &clients, term)
                    {
                        if matches!(log, Log::Local(_)) {
                            alarm.raise(e);
                            return;
                        }
                        tracing::warn!(error = %e, term, "journal: an append failed; this term ends");
                        alarm.written.send_modify(|w| {
                            if w.term == term {
                                w.failed = Some(e.to_string());
                            }
                        });
                        continue;
                    }
                    // Only while its term lasts: a batch of an ended term
                    // that landed after all is not this term's to answer.
                    let current = {
                        let w = alarm.written.borrow();
                        w.term == term && w.failed.is_none()
                    };
                    if !current {
                        continue;
                    }
                    let mut done = Vec::with_capacity(batch.len());
                    for work in batch {
                        publish(work.events);
                        done.push(work.done);
                    }
                    alarm.written.send_modify(|w| {
                        if w.term == term {
                            w.upto = w.upto.max(upto);
                        }
                    });
                    for answer in done {
                        // Its caller may have gone away.
                        let _ = answer.send(());
                    }
                    // Then, off the answers' path, the shadow.
                    if let Some(shadow) = &snapshots {
                        if !rows.is_empty() && !shadow.feed(rows) {
                            alarm.raise(JournalError::Failed("the snapshot shadow stopped".into()));
                            return;
                        }
                        while let Ok(to) = shadow.compact.try_recv() {
                            compact_to = compact_to.max(to);
                        }
                    }
                    if let Some(store) = log.as_mut().and_then(Log::store)
                        && compacted < compact_to
                    {
                        match store.compact(compacted, compact_to, COMPACT_CHUNK) {
                            Ok(done) => compacted = done,
                            Err(e) => {
                                alarm.raise(e);
                                return;
                            }
                        }
                    }
                }
                // Every sender is gone: the service stopped. Not a fault.
                alarm.disarm();
            });
        if let Err(e) = spawned {
            // The closure is dropped with the error, and its alarm raised.
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

    /// Queues a command applied at `at` (`logged` false: nothing to log),
    /// sent by `client` if a client sent it, and the events it decided,
    /// built from its sequence number; returns the ticket to wait for.
    /// `command` is the command itself,
    /// given only if [`Journal::keeps`] commands: without a database
    /// (`--no-journal`) a command is numbered, never copied. Called under
    /// the engine's lock, so sequence numbers follow the order of
    /// application.
    pub fn append(
        &self,
        at: Time,
        logged: bool,
        command: Option<Command>,
        client: Option<Arc<str>>,
        events: impl FnOnce(u64) -> Vec<T>,
    ) -> Ticket {
        let term = self.term.load(Ordering::SeqCst);
        let seq = if logged {
            self.next.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.next.load(Ordering::SeqCst)
        };
        let command = command.filter(|_| logged && self.keeps);
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
                at,
                command,
                client,
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
