//! The snapshot database (`snapshots.db`): the engine's whole state at a
//! record of the log, each snapshot with its layout, checksum and the
//! identity of the log it belongs to. Written by the shadow (see
//! `shadow`), always durably (`synchronous = FULL`), since the log is
//! compacted on its strength; kept apart from the log so writing a large
//! snapshot never holds up the command log.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::{JournalError, WAL_LIMIT};
use crate::engine::{Engine, STATE_FORMAT};
use crate::model::Time;

/// The snapshot database inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshots.db";

/// A failure of SQLite on `file`, as reported.
fn sql_error(file: &Path, source: rusqlite::Error) -> JournalError {
    JournalError::Sqlite {
        file: file.to_path_buf(),
        source,
    }
}

/// The snapshot database.
pub struct SnapshotFile {
    conn: Connection,
    file: PathBuf,
    log_id: u64,
}

/// What a search for a snapshot found.
pub struct Loaded {
    /// The newest snapshot that loads: the last record it covers, and its
    /// engine.
    pub snapshot: Option<(u64, Engine)>,
    /// Newer ones that did not load, each with why.
    pub refused: Vec<(u64, String)>,
}

impl SnapshotFile {
    /// Opens (creating if needed) the snapshot database in `dir`, for the
    /// log `log_id`.
    pub fn open(dir: &Path, log_id: u64) -> Result<SnapshotFile, JournalError> {
        let file = dir.join(SNAPSHOT_FILE);
        let sql = |e| sql_error(&file, e);
        let conn = Connection::open(&file).map_err(sql)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             PRAGMA journal_size_limit = {WAL_LIMIT};
             CREATE TABLE IF NOT EXISTS snapshots (
                 seq INTEGER PRIMARY KEY,
                 at_us INTEGER NOT NULL,
                 format INTEGER NOT NULL,
                 log_id TEXT NOT NULL,
                 body BLOB NOT NULL,
                 crc INTEGER NOT NULL
             );"
        ))
        .map_err(sql)?;
        Ok(SnapshotFile { conn, file, log_id })
    }

    /// Opens the snapshot database in `dir` read-only, if there is one,
    /// for the log `log_id`. A file that holds no snapshot table (emptied,
    /// or created and never written) holds no snapshot.
    pub fn open_read_only(dir: &Path, log_id: u64) -> Result<Option<SnapshotFile>, JournalError> {
        let file = dir.join(SNAPSHOT_FILE);
        if !file.exists() {
            return Ok(None);
        }
        let sql = |e| sql_error(&file, e);
        let conn = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'",
                [],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if tables == 0 {
            return Ok(None);
        }
        Ok(Some(SnapshotFile { conn, file, log_id }))
    }

    fn sql(&self, source: rusqlite::Error) -> JournalError {
        sql_error(&self.file, source)
    }

    /// The record of the newest snapshot kept in `dir` (0: none), whether
    /// it loads or not, read only.
    pub fn newest_in(dir: &Path, log_id: u64) -> Result<u64, JournalError> {
        match SnapshotFile::open_read_only(dir, log_id)? {
            Some(snapshots) => Ok(snapshots.newest()?.unwrap_or(0)),
            None => Ok(0),
        }
    }

    /// The record the newest snapshot covers, whether it loads or not.
    pub fn newest(&self) -> Result<Option<u64>, JournalError> {
        self.conn
            .query_row("SELECT MAX(seq) FROM snapshots", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .map(|seq| seq.map(|s| s as u64))
            .map_err(|e| self.sql(e))
    }

    /// The newest snapshot that reads back whole (its log, checksum,
    /// layout, decoding), and the newer ones refused, with why.
    pub fn load(&self) -> Result<Loaded, JournalError> {
        self.load_before(u64::MAX)
    }

    /// [`SnapshotFile::load`] among the snapshots of records before `seq`.
    pub fn load_before(&self, seq: u64) -> Result<Loaded, JournalError> {
        let mut refused = Vec::new();
        let mut rows = self
            .conn
            .prepare(
                "SELECT seq, log_id, body, crc, format FROM snapshots WHERE seq < ?1 ORDER BY seq DESC",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = rows
            .query(params![seq.min(i64::MAX as u64) as i64])
            .map_err(|e| self.sql(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let read = || -> Result<(u64, Engine), (u64, String)> {
                let seq: i64 = row.get(0).map_err(|e| (0, e.to_string()))?;
                let seq = seq as u64;
                let failed = |e: rusqlite::Error| (seq, e.to_string());
                let log_id: String = row.get(1).map_err(failed)?;
                if log_id != self.log_id.to_string() {
                    return Err((seq, "it belongs to another log".to_owned()));
                }
                let body: Vec<u8> = row.get(2).map_err(failed)?;
                let crc: i64 = row.get(3).map_err(failed)?;
                if i64::from(crc32fast::hash(&body)) != crc {
                    return Err((seq, "checksum mismatch".to_owned()));
                }
                let format: u32 = row.get(4).map_err(failed)?;
                if format != STATE_FORMAT {
                    return Err((
                        seq,
                        format!("layout {format}, this build reads layout {STATE_FORMAT}"),
                    ));
                }
                let engine = Engine::decode_state(&body).map_err(|e| (seq, e.to_string()))?;
                Ok((seq, engine))
            };
            match read() {
                Ok(loaded) => {
                    return Ok(Loaded {
                        snapshot: Some(loaded),
                        refused,
                    });
                }
                Err(why) => refused.push(why),
            }
        }
        Ok(Loaded {
            snapshot: None,
            refused,
        })
    }

    /// Keeps `state`, the engine after record `seq` (applied up to `at`),
    /// and `keep`, the snapshot it was built from (its fallback); drops
    /// every other one, refused ones included.
    pub(super) fn save(
        &mut self,
        seq: u64,
        at: Time,
        state: &[u8],
        keep: Option<u64>,
    ) -> Result<(), JournalError> {
        let file = self.file.clone();
        let sql = |source| JournalError::Sqlite {
            file: file.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (seq, at_us, format, log_id, body, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                seq as i64,
                at.timestamp_micros(),
                STATE_FORMAT,
                self.log_id.to_string(),
                state,
                i64::from(crc32fast::hash(state))
            ],
        )
        .map_err(sql)?;
        let keep = keep.map_or(-1, |k| k as i64);
        tx.execute(
            "DELETE FROM snapshots WHERE seq != ?1 AND seq != ?2",
            params![seq as i64, keep],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }
}
