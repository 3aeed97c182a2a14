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
//! Snapshots: the engine's whole state at a sequence number, kept in the
//! same database (`snapshots`). A start loads the newest snapshot that
//! reads back whole and replays only the commands after it; each new
//! snapshot compacts the log, keeping the snapshot before it and the
//! commands since, so a damaged newest snapshot falls back to the one
//! before.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use rusqlite::{Connection, params};
use tokio::sync::watch;

use crate::config::JournalSync;
use crate::engine::{Command, Engine};
use crate::model::Time;

/// The database file inside the data directory.
pub const FILE: &str = "careroute.db";
/// The write-ahead file is truncated to this after a checkpoint (a large
/// snapshot would otherwise leave it that large).
const WAL_LIMIT: u64 = 64 << 20;
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
    /// A command could not be encoded.
    #[error("journal: cannot encode a command: {0}")]
    Encode(String),
    /// The writer stopped after a failed write: nothing more is answered.
    #[error("journal: a write failed ({0}); the service stops")]
    Failed(String),
}

/// What the log held at start.
pub struct Recovered {
    /// The newest snapshot that loaded: its sequence number and engine.
    pub snapshot: Option<(u64, Engine)>,
    /// Newer snapshots that did not load, each with why (the log since
    /// an older one is replayed instead).
    pub refused_snapshots: Vec<(u64, String)>,
    /// The commands after the snapshot (or from the start), in order,
    /// with their times.
    pub records: Vec<(Time, Command)>,
    /// The id prefix the log's engine used, if the log is not new.
    pub id_prefix: Option<u32>,
    /// The last sequence number kept.
    pub last_seq: u64,
    /// Records cut from a torn or corrupt tail: the first sequence number
    /// cut, and why.
    pub cut: Option<(u64, String)>,
}

/// The newest snapshot that reads back whole (checksum, layout, decoding),
/// and the newer ones refused, with why.
#[allow(clippy::type_complexity)]
fn load_snapshot(
    conn: &Connection,
) -> Result<(Option<(u64, Engine)>, Vec<(u64, String)>), rusqlite::Error> {
    let mut refused = Vec::new();
    let mut rows = conn.prepare("SELECT seq, body, crc FROM snapshots ORDER BY seq DESC")?;
    let mut rows = rows.query([])?;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let body: Vec<u8> = row.get(1)?;
        let crc: i64 = row.get(2)?;
        let loaded = if i64::from(crc32fast::hash(&body)) != crc {
            Err("checksum mismatch".to_owned())
        } else {
            Engine::decode_state(&body).map_err(|e| e.to_string())
        };
        match loaded {
            Ok(engine) => return Ok((Some((seq as u64, engine)), refused)),
            Err(why) => refused.push((seq as u64, why)),
        }
    }
    Ok((None, refused))
}

/// One record, checked: its sequence number, its checksum, its body.
fn read_record(row: &rusqlite::Row<'_>, expected: u64) -> Result<(Time, Command), String> {
    let seq: i64 = row.get(0).map_err(|e| e.to_string())?;
    let at: i64 = row.get(1).map_err(|e| e.to_string())?;
    let body: String = row.get(2).map_err(|e| e.to_string())?;
    let crc: i64 = row.get(3).map_err(|e| e.to_string())?;
    if seq as u64 != expected {
        return Err(format!("sequence {seq} where {expected} was due"));
    }
    if i64::from(crc32fast::hash(body.as_bytes())) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let at = Time::from_timestamp_micros(at).ok_or("time out of range")?;
    let command: Command = serde_json::from_str(&body).map_err(|e| format!("undecodable: {e}"))?;
    Ok((at, command))
}

/// An open journal database, before the writer takes it.
pub struct Store {
    conn: Connection,
    file: PathBuf,
    /// Held while the store is open: one process per journal.
    _lock: std::fs::File,
}

impl Store {
    /// Opens (creating if needed) the journal in `dir` and reads it back.
    pub fn open(dir: &Path, sync: JournalSync) -> Result<(Store, Recovered), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        // One process per journal: a second one started on the same
        // directory by mistake is refused before it writes anything.
        let lock = std::fs::File::create(dir.join("LOCK")).map_err(|source| JournalError::Dir {
            dir: dir.to_owned(),
            source,
        })?;
        if lock.try_lock().is_err() {
            return Err(JournalError::Locked {
                dir: dir.to_owned(),
            });
        }
        let file = dir.join(FILE);
        let sql = |source| JournalError::Sqlite {
            file: file.clone(),
            source,
        };
        let conn = Connection::open(&file).map_err(sql)?;
        let synchronous = match sync {
            JournalSync::Write => "OFF",
            JournalSync::Fsync => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};
             PRAGMA journal_size_limit = {WAL_LIMIT};
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS commands (
                 seq INTEGER PRIMARY KEY,
                 at_us INTEGER NOT NULL,
                 body TEXT NOT NULL,
                 crc INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS snapshots (
                 seq INTEGER PRIMARY KEY,
                 at_us INTEGER NOT NULL,
                 format INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 crc INTEGER NOT NULL
             );"
        ))
        .map_err(sql)?;
        let id_prefix =
            match conn.query_row("SELECT value FROM meta WHERE key = 'id_prefix'", [], |r| {
                r.get::<_, String>(0)
            }) {
                Ok(v) => v.parse().ok(),
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(sql(e)),
            };
        let (snapshot, refused_snapshots) = load_snapshot(&conn).map_err(sql)?;
        let base = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        let first: Option<i64> = conn
            .query_row("SELECT MIN(seq) FROM commands", [], |r| r.get(0))
            .map_err(sql)?;
        if let Some(first) = first
            && first as u64 > base + 1
        {
            let why = refused_snapshots
                .iter()
                .map(|(seq, why)| format!("snapshot {seq}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(JournalError::NoSnapshot {
                file,
                first: first as u64,
                why: if why.is_empty() {
                    "none kept".into()
                } else {
                    why
                },
            });
        }
        let mut records = Vec::new();
        let mut cut = None;
        {
            let mut rows = conn
                .prepare("SELECT seq, at_us, body, crc FROM commands WHERE seq > ?1 ORDER BY seq")
                .map_err(sql)?;
            let mut rows = rows.query(params![base as i64]).map_err(sql)?;
            let mut expected = base + 1;
            while let Some(row) = rows.next().map_err(sql)? {
                let read = read_record(row, expected);
                expected += 1;
                match read {
                    Ok(record) if cut.is_none() => records.push(record),
                    // A good record after a bad one: the damage is not a
                    // tail, and cutting would lose acknowledged commands.
                    Ok(_) => {
                        let (seq, why) = cut.unwrap_or_default();
                        return Err(JournalError::Corrupt { file, seq, why });
                    }
                    Err(why) if cut.is_none() => cut = Some((expected - 1, why)),
                    Err(_) => {}
                }
            }
        }
        if let Some((seq, why)) = &cut {
            // Nothing to start from: refuse rather than start anew.
            if *seq == 1 && snapshot.is_none() {
                return Err(JournalError::Corrupt {
                    file,
                    seq: 1,
                    why: why.clone(),
                });
            }
            conn.execute("DELETE FROM commands WHERE seq >= ?1", params![*seq as i64])
                .map_err(sql)?;
        }
        let last_seq = base + records.len() as u64;
        Ok((
            Store {
                conn,
                file,
                _lock: lock,
            },
            Recovered {
                snapshot,
                refused_snapshots,
                records,
                id_prefix,
                last_seq,
                cut,
            },
        ))
    }

    /// Records the id prefix of a new log's engine.
    pub fn set_id_prefix(&self, prefix: u32) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('id_prefix', ?1)",
                params![prefix.to_string()],
            )
            .map(drop)
            .map_err(|source| JournalError::Sqlite {
                file: self.file.clone(),
                source,
            })
    }

    /// Writes `records` after `last_seq` at once (the commands of a start);
    /// returns the last sequence number written.
    pub fn append_now(
        &mut self,
        last_seq: u64,
        records: &[(Time, Command)],
    ) -> Result<u64, JournalError> {
        let rows: Vec<(u64, Time, Command)> = records
            .iter()
            .enumerate()
            .map(|(i, (at, c))| (last_seq + 1 + i as u64, *at, c.clone()))
            .collect();
        if !rows.is_empty() {
            self.write(&rows)?;
        }
        Ok(last_seq + rows.len() as u64)
    }

    /// Writes one batch in one transaction.
    fn write(&mut self, batch: &[(u64, Time, Command)]) -> Result<(), JournalError> {
        let sql = |source| JournalError::Sqlite {
            file: self.file.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO commands (seq, at_us, body, crc) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(sql)?;
            for (seq, at, command) in batch {
                let body = serde_json::to_string(command)
                    .map_err(|e| JournalError::Encode(e.to_string()))?;
                let crc = i64::from(crc32fast::hash(body.as_bytes()));
                insert
                    .execute(params![*seq as i64, at.timestamp_micros(), body, crc])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Keeps a snapshot of the state after record `seq`, and compacts: the
    /// snapshot before it stays (a fallback if this one is ever damaged),
    /// with the records after that one; anything older goes.
    fn write_snapshot(&mut self, seq: u64, at: Time, state: &[u8]) -> Result<(), JournalError> {
        let sql = |source| JournalError::Sqlite {
            file: self.file.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, at_us, format, body, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                seq as i64,
                at.timestamp_micros(),
                crate::engine::STATE_FORMAT,
                state,
                i64::from(crc32fast::hash(state))
            ],
        )
        .map_err(sql)?;
        let previous: Option<i64> = tx
            .query_row(
                "SELECT MAX(seq) FROM snapshots WHERE seq < ?1",
                params![seq as i64],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if let Some(previous) = previous {
            tx.execute("DELETE FROM snapshots WHERE seq < ?1", params![previous])
                .map_err(sql)?;
            tx.execute("DELETE FROM commands WHERE seq <= ?1", params![previous])
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }
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

/// What the writer is given, in order. Commands are nearly all of it:
/// boxing them to shrink the rare snapshot's variant would cost an
/// allocation per command.
#[allow(clippy::large_enum_variant)]
enum Work<T> {
    /// A command (none: only events) and the events it decided.
    Command {
        seq: u64,
        at: Time,
        command: Option<Command>,
        events: Vec<T>,
    },
    /// The engine's encoded state after record `seq`.
    Snapshot { seq: u64, at: Time, state: Vec<u8> },
}

/// The writer's queue: commands (with the events they decided) in, written
/// and published in order by one thread.
pub struct Journal<T> {
    tx: mpsc::Sender<Work<T>>,
    written: watch::Receiver<Written>,
    next: AtomicU64,
}

impl<T: Send + 'static> Journal<T> {
    /// Starts the writer on `store` (none: publish only), continuing after
    /// `last_seq`. `publish` receives each command's events once its batch
    /// is written, in order; `failed` is called once if a write fails.
    pub fn start(
        store: Option<Store>,
        last_seq: u64,
        mut publish: impl FnMut(Vec<T>) + Send + 'static,
        failed: impl FnOnce(&JournalError) + Send + 'static,
    ) -> Arc<Journal<T>> {
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
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let mut rows = Vec::new();
                    let mut snapshots = Vec::new();
                    let mut upto = 0;
                    for work in &mut batch {
                        match work {
                            Work::Command {
                                seq, at, command, ..
                            } => {
                                upto = *seq;
                                if let Some(c) = command.take() {
                                    rows.push((*seq, *at, c));
                                }
                            }
                            Work::Snapshot { seq, at, state } => {
                                snapshots.push((*seq, *at, std::mem::take(state)));
                            }
                        }
                    }
                    if let Some(store) = store.as_mut() {
                        // The commands first: a snapshot covers records
                        // already written.
                        let mut written = if rows.is_empty() {
                            Ok(())
                        } else {
                            store.write(&rows)
                        };
                        for (seq, at, state) in &snapshots {
                            written = written.and_then(|()| store.write_snapshot(*seq, *at, state));
                        }
                        if let Err(e) = written {
                            alarm.raise(e);
                            return;
                        }
                    }
                    for work in batch {
                        if let Work::Command { events, .. } = work {
                            publish(events);
                        }
                    }
                    alarm.written.send_modify(|w| w.upto = w.upto.max(upto));
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
        })
    }

    /// Queues a command applied at `at` (none: nothing to log) and the
    /// events it decided, built from its sequence number; returns the
    /// sequence number to wait for. Called under the engine's lock, so
    /// sequence numbers follow the order of application.
    pub fn append(
        &self,
        at: Time,
        command: Option<Command>,
        events: impl FnOnce(u64) -> Vec<T>,
    ) -> u64 {
        let seq = if command.is_some() {
            self.next.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.next.load(Ordering::SeqCst)
        };
        let events = events(seq);
        if command.is_some() || !events.is_empty() {
            // The writer lives as long as the process; if it died, `durable`
            // says so.
            let _ = self.tx.send(Work::Command {
                seq,
                at,
                command,
                events,
            });
        }
        seq
    }

    /// Queues a snapshot: `state`, the engine's state after record `seq`,
    /// applied up to `at`. Written after the commands queued before it.
    pub fn snapshot(&self, seq: u64, at: Time, state: Vec<u8>) {
        // If the writer died, `durable` says so.
        let _ = self.tx.send(Work::Snapshot { seq, at, state });
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
