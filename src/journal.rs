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
use crate::engine::Command;
use crate::model::Time;

/// The database file inside the data directory.
pub const FILE: &str = "careroute.db";
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
    /// A command could not be encoded.
    #[error("journal: cannot encode a command: {0}")]
    Encode(String),
    /// The writer stopped after a failed write: nothing more is answered.
    #[error("journal: a write failed ({0}); the service stops")]
    Failed(String),
}

/// What the log held at start.
pub struct Recovered {
    /// The commands, in order, with their times.
    pub records: Vec<(Time, Command)>,
    /// The id prefix the log's engine used, if the log is not new.
    pub id_prefix: Option<u32>,
    /// The last sequence number kept.
    pub last_seq: u64,
    /// Records cut from a torn or corrupt tail: the first sequence number
    /// cut, and why.
    pub cut: Option<(u64, String)>,
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
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS commands (
                 seq INTEGER PRIMARY KEY,
                 at_us INTEGER NOT NULL,
                 body TEXT NOT NULL,
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
        let mut records = Vec::new();
        let mut cut = None;
        {
            let mut rows = conn
                .prepare("SELECT seq, at_us, body, crc FROM commands ORDER BY seq")
                .map_err(sql)?;
            let mut rows = rows.query([]).map_err(sql)?;
            let mut expected = 1u64;
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
            if *seq == 1 {
                return Err(JournalError::Corrupt {
                    file,
                    seq: 1,
                    why: why.clone(),
                });
            }
            conn.execute("DELETE FROM commands WHERE seq >= ?1", params![*seq as i64])
                .map_err(sql)?;
        }
        let last_seq = records.len() as u64;
        Ok((
            Store {
                conn,
                file,
                _lock: lock,
            },
            Recovered {
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

struct Entry<T> {
    seq: u64,
    at: Time,
    command: Option<Command>,
    events: Vec<T>,
}

/// The writer's queue: commands (with the events they decided) in, written
/// and published in order by one thread.
pub struct Journal<T> {
    tx: mpsc::Sender<Entry<T>>,
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
        let (tx, rx) = mpsc::channel::<Entry<T>>();
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
                    if let Some(store) = store.as_mut() {
                        let rows: Vec<(u64, Time, Command)> = batch
                            .iter_mut()
                            .filter_map(|e| e.command.take().map(|c| (e.seq, e.at, c)))
                            .collect();
                        if !rows.is_empty()
                            && let Err(e) = store.write(&rows)
                        {
                            alarm.raise(e);
                            return;
                        }
                    }
                    let upto = batch.last().map_or(0, |e| e.seq);
                    for e in batch {
                        publish(e.events);
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
            let _ = self.tx.send(Entry {
                seq,
                at,
                command,
                events,
            });
        }
        seq
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
