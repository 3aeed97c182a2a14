//! Snapshots of the engine's state, taken off the serving path: a copy of
//! the engine (the shadow) is rebuilt at start and kept current on its own
//! thread by applying every command once it is written, exactly as a
//! restart would replay it, and it is the shadow that is encoded and saved. Serving never waits for
//! a snapshot, whatever the state's size. Snapshots live in their own
//! database (`snapshots.db`), so writing a large one never holds up the
//! command log; after each, the log before the previous snapshot is
//! compacted, keeping one fallback.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};

use super::replay::Replay;
use super::store::read_record;
use super::{JournalError, WAL_LIMIT};
use crate::config::JournalSync;
use crate::engine::{Command, Engine, EngineConfig, STATE_FORMAT};
use crate::model::Time;

/// The snapshot database inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshots.db";

/// The snapshot database.
pub struct SnapshotFile {
    conn: Connection,
    file: PathBuf,
}

/// A snapshot loaded at start, or the newer ones refused with why.
pub type Loaded = (Option<(u64, Engine)>, Vec<(u64, String)>);

impl SnapshotFile {
    /// Opens (creating if needed) the snapshot database in `dir`.
    pub fn open(dir: &Path, sync: JournalSync) -> Result<SnapshotFile, JournalError> {
        let file = dir.join(SNAPSHOT_FILE);
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
             CREATE TABLE IF NOT EXISTS snapshots (
                 seq INTEGER PRIMARY KEY,
                 at_us INTEGER NOT NULL,
                 format INTEGER NOT NULL,
                 body BLOB NOT NULL,
                 crc INTEGER NOT NULL
             );"
        ))
        .map_err(sql)?;
        Ok(SnapshotFile { conn, file })
    }

    fn sql(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            file: self.file.clone(),
            source,
        }
    }

    /// Opens the snapshot database in `dir` read-only, if there is one.
    pub fn open_read_only(dir: &Path) -> Result<Option<SnapshotFile>, JournalError> {
        let file = dir.join(SNAPSHOT_FILE);
        if !file.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| JournalError::Sqlite {
            file: file.clone(),
            source,
        })?;
        Ok(Some(SnapshotFile { conn, file }))
    }

    /// The newest snapshot that reads back whole (checksum, layout,
    /// decoding), and the newer ones refused, with why.
    pub fn load(&self) -> Result<Loaded, JournalError> {
        self.load_before(u64::MAX)
    }

    /// [`SnapshotFile::load`] among the snapshots of records before `seq`.
    pub fn load_before(&self, seq: u64) -> Result<Loaded, JournalError> {
        let mut refused = Vec::new();
        let mut rows = self
            .conn
            .prepare("SELECT seq, body, crc FROM snapshots WHERE seq < ?1 ORDER BY seq DESC")
            .map_err(|e| self.sql(e))?;
        let mut rows = rows
            .query(params![seq.min(i64::MAX as u64) as i64])
            .map_err(|e| self.sql(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let read = || -> Result<(u64, Engine), (u64, String)> {
                let seq: i64 = row.get(0).map_err(|e| (0, e.to_string()))?;
                let seq = seq as u64;
                let body: Vec<u8> = row.get(1).map_err(|e| (seq, e.to_string()))?;
                let crc: i64 = row.get(2).map_err(|e| (seq, e.to_string()))?;
                if i64::from(crc32fast::hash(&body)) != crc {
                    return Err((seq, "checksum mismatch".to_owned()));
                }
                let engine = Engine::decode_state(&body).map_err(|e| (seq, e.to_string()))?;
                Ok((seq, engine))
            };
            match read() {
                Ok(loaded) => return Ok((Some(loaded), refused)),
                Err(why) => refused.push(why),
            }
        }
        Ok((None, refused))
    }

    /// Keeps `state`, the engine after record `seq` (applied up to `at`),
    /// and drops the snapshots before the previous one. Returns the
    /// previous one's sequence number: the log up to it is no longer
    /// needed.
    fn save(&mut self, seq: u64, at: Time, state: &[u8]) -> Result<Option<u64>, JournalError> {
        let file = self.file.clone();
        let sql = |source| JournalError::Sqlite {
            file: file.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, at_us, format, body, crc) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                seq as i64,
                at.timestamp_micros(),
                STATE_FORMAT,
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
        }
        tx.commit().map_err(sql)?;
        Ok(previous.map(|p| p as u64))
    }
}

/// The shadow's thread: what feeds it, and what it answers (how far the
/// log may be compacted).
pub struct Snapshots {
    feed: mpsc::Sender<Written>,
    pub(super) compact: mpsc::Receiver<u64>,
}

/// When snapshots are taken.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    /// Once this many commands were applied since the last.
    pub commands: u64,
    /// And at least this often while commands are applied.
    pub interval: Duration,
}

/// Written commands, in order, for the shadow.
pub(super) type Written = Vec<(u64, Time, Command)>;

impl Snapshots {
    /// Starts the shadow on its own thread. It first rebuilds the engine
    /// as a restart does, from the newest snapshot in `file` that loads and
    /// the records of the log at `log` after it up to `upto` (in parallel
    /// with the start's own replay), building a new engine under `config`;
    /// then it applies what is fed, in order, and saves a snapshot when
    /// one is due.
    pub fn start(
        mut file: SnapshotFile,
        log: PathBuf,
        upto: u64,
        config: EngineConfig,
        every: Every,
    ) -> std::io::Result<Snapshots> {
        let (feed, written) = mpsc::channel::<Written>();
        let (compact, compacted) = mpsc::channel();
        std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                let mut replay = match rebuild(&file, &log, upto, config) {
                    Ok(replay) => replay,
                    Err(e) => {
                        // The writer finds the feed closed and stops the
                        // service: a log no snapshot is taken of grows
                        // without bound.
                        tracing::error!(error = %e, "journal: the snapshot shadow cannot be rebuilt");
                        return;
                    }
                };
                let mut at_seq = upto;
                let mut since = 0u64;
                let mut last_snapshot = Instant::now();
                loop {
                    let wait = if since == 0 {
                        Duration::from_secs(3600)
                    } else {
                        every.interval.saturating_sub(last_snapshot.elapsed())
                    };
                    let batch = match written.recv_timeout(wait) {
                        Ok(batch) => Some(batch),
                        Err(mpsc::RecvTimeoutError::Timeout) => None,
                        // The writer stopped: so does the shadow.
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    for (seq, at, command) in batch.into_iter().flatten() {
                        if replay.apply(at, command).is_err() {
                            tracing::error!(seq, "journal: the log fed to the snapshot shadow does not start with its policy");
                            return;
                        }
                        at_seq = seq;
                        since += 1;
                    }
                    let due = since >= every.commands
                        || (since > 0 && last_snapshot.elapsed() >= every.interval);
                    let Some(shadow) = replay.engine().filter(|_| due) else {
                        continue;
                    };
                    let started = Instant::now();
                    let at = shadow.now().unwrap_or_else(chrono::Utc::now);
                    let outcome = shadow
                        .encode_state()
                        .map_err(|e| JournalError::Encode(e.to_string()))
                        .and_then(|state| {
                            let previous = file.save(at_seq, at, &state)?;
                            Ok((state.len(), previous))
                        });
                    // Whatever came of it, not again before the next
                    // interval or count.
                    since = 0;
                    last_snapshot = Instant::now();
                    match outcome {
                        Ok((bytes, previous)) => {
                            if let Some(previous) = previous {
                                let _ = compact.send(previous);
                            }
                            let took = started.elapsed();
                            crate::telemetry::record_snapshot(took, bytes);
                            tracing::info!(
                                seq = at_seq,
                                bytes,
                                took_ms = took.as_millis() as u64,
                                "journal: snapshot saved"
                            );
                        }
                        Err(e) => {
                            crate::telemetry::record_snapshot_failure();
                            tracing::error!(
                                error = %e,
                                "journal: a snapshot cannot be saved; the log is kept whole until one is"
                            );
                        }
                    }
                }
            })?;
        Ok(Snapshots {
            feed,
            compact: compacted,
        })
    }

    /// Feeds the shadow records just written; false if it has stopped.
    pub fn feed(&self, rows: Written) -> bool {
        self.feed.send(rows).is_ok()
    }
}

/// The shadow's engine as a restart would rebuild it: the newest snapshot
/// that loads, then the log after it up to `upto`.
fn rebuild(
    file: &SnapshotFile,
    log: &Path,
    upto: u64,
    config: EngineConfig,
) -> Result<Replay, JournalError> {
    let (snapshot, _) = file.load()?;
    let base = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
    let mut replay = Replay::new(snapshot.map(|(_, engine)| engine), config);
    let sql = |source| JournalError::Sqlite {
        file: log.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql)?;
    let mut rows = conn
        .prepare(
            "SELECT seq, at_us, body, crc FROM commands WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
        )
        .map_err(sql)?;
    let mut rows = rows.query(params![base as i64, upto as i64]).map_err(sql)?;
    let mut expected = base + 1;
    while let Some(row) = rows.next().map_err(sql)? {
        let (at, command) = read_record(row, expected).map_err(|why| JournalError::Corrupt {
            file: log.to_owned(),
            seq: expected,
            why,
        })?;
        replay
            .apply(at, command)
            .map_err(|_| JournalError::NoStart {
                file: log.to_owned(),
            })?;
        expected += 1;
    }
    Ok(replay)
}
