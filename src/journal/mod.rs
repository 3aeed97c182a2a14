//! The engine's log on disk: every command applied, with its time and its
//! sequence number, in a SQLite database (WAL) that an operator can read
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

use tokio::sync::watch;

use crate::engine::Command;
use crate::model::Time;
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

/// How far the writer has got.
#[derive(Debug, Clone, Default)]
struct Written {
    upto: u64,
    failed: Option<String>,
}

/// What the writer is given, in order: a command (none: only events) and
/// the events it decided.
struct Work<T> {
    seq: u64,
    at: Time,
    command: Option<Command>,
    events: Vec<T>,
}

/// The writer's queue: commands (with the events they decided) in, written
/// and published in order by one thread.
pub struct Journal<T> {
    tx: mpsc::Sender<Work<T>>,
    written: watch::Receiver<Written>,
    next: AtomicU64,
    /// Whether a database keeps the commands.
    keeps: bool,
}

impl<T: Send + 'static> Journal<T> {
    /// Starts the writer on `store` (none: publish only), continuing after
    /// `last_seq`, feeding the snapshot shadow if given.
    /// `publish` receives each command's events once its batch is written,
    /// in order; `failed` is called once if a write fails.
    pub fn start(
        store: Option<Store>,
        last_seq: u64,
        snapshots: Option<Snapshots>,
        mut publish: impl FnMut(Vec<T>) + Send + 'static,
        failed: impl FnOnce(&JournalError) + Send + 'static,
    ) -> Arc<Journal<T>> {
        let keeps = store.is_some();
        let (tx, rx) = mpsc::channel::<Work<T>>();
        let (written_tx, written) = watch::channel(Written {
            upto: last_seq,
            failed: None,
        });
        let failed: OnFailure = Box::new(failed);
        let mut alarm = Alarm {
            failed: Some(failed),
            written: written_tx,
        };
        let spawned = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let mut store = store;
                // Compaction resumes where the log now starts.
                let first_kept = store.as_ref().map_or(0, Store::first_kept);
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
                    let mut rows = Vec::new();
                    let mut upto = 0;
                    for work in &mut batch {
                        upto = work.seq;
                        if let Some(c) = work.command.take() {
                            rows.push((work.seq, work.at, c));
                        }
                    }
                    if let Some(store) = store.as_mut()
                        && !rows.is_empty()
                        && let Err(e) = store.write(&rows)
                    {
                        alarm.raise(e);
                        return;
                    }
                    for work in batch {
                        publish(work.events);
                    }
                    alarm.written.send_modify(|w| w.upto = w.upto.max(upto));
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
                    if let Some(store) = store.as_mut()
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
            next: AtomicU64::new(last_seq),
            keeps,
        })
    }

    /// Queues a command applied at `at` (`logged` false: nothing to log)
    /// and the events it decided, built from its sequence number; returns
    /// the sequence number to wait for. `command` is the command itself,
    /// given only if [`Journal::keeps`] commands: without a database
    /// (`--no-journal`) a command is numbered, never copied. Called under
    /// the engine's lock, so sequence numbers follow the order of
    /// application.
    pub fn append(
        &self,
        at: Time,
        logged: bool,
        command: Option<Command>,
        events: impl FnOnce(u64) -> Vec<T>,
    ) -> u64 {
        let seq = if logged {
            self.next.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.next.load(Ordering::SeqCst)
        };
        let command = command.filter(|_| logged && self.keeps);
        let events = events(seq);
        if logged || !events.is_empty() {
            // The writer lives as long as the process; if it died, `durable`
            // says so.
            let _ = self.tx.send(Work {
                seq,
                at,
                command,
                events,
            });
        }
        seq
    }

    /// Whether a database keeps the commands (else they are only
    /// numbered).
    pub fn keeps(&self) -> bool {
        self.keeps
    }

    /// The last sequence number handed out.
    pub fn last(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    /// Waits until everything up to `seq` is written.
    pub async fn durable(&self, seq: u64) -> Result<(), JournalError> {
        let mut written = self.written.clone();
        let w = written
            .wait_for(|w| w.upto >= seq || w.failed.is_some())
            .await
            .map_err(|_| JournalError::Failed("the journal writer stopped".into()))?;
        match &w.failed {
            Some(why) => Err(JournalError::Failed(why.clone())),
            None => Ok(()),
        }
    }
}
