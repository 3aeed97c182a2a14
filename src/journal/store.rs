//! The journal's command log on disk: opened and checked at start (its
//! records are read back by `records`), written in batches by the writer,
//! compacted behind the snapshots.

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rusqlite::{Connection, params};

use super::records::Records;
use super::snapshots::{Loaded, SnapshotFile};
use super::written::{Mark, MarkFile, Marked};
use super::{Entry, FILE, JournalError, WAL_LIMIT};
use crate::config::JournalSync;
use crate::engine::{Command, Engine, IdKey, ROUTING_VERSION};
use crate::model::Time;

/// What the log held at start.
pub struct Recovered {
    /// The newest snapshot that loaded: its sequence number and engine.
    pub snapshot: Option<(u64, Engine)>,
    /// Newer snapshots that did not load, each with why (the log since
    /// an older one is replayed instead).
    pub refused_snapshots: Vec<(u64, String)>,
    /// The commands after the snapshot (or from the start), in order,
    /// with their times, read as they are taken; how the log ends is
    /// known once the last is (see [`Records::finish`]).
    pub records: Records,
    /// The id key of the log's engine, if the log is not new.
    pub id_key: Option<IdKey>,
}

impl Recovered {
    /// Whether the log holds nothing yet: no snapshot and no record.
    pub fn is_new(&self) -> bool {
        self.snapshot.is_none() && self.records.last_present() == 0
    }
}

/// A value from the `meta` table, if set.
fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    match conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get::<_, String>(0)
    }) {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first and last sequence numbers in the log. Two subqueries: SQLite
/// reads one end of the primary key for a lone MIN or MAX, but scans the
/// whole table for both in one (150 ms at 1,000,000 records).
fn span(conn: &Connection) -> Result<(Option<i64>, Option<i64>), rusqlite::Error> {
    conn.query_row(
        "SELECT (SELECT MIN(seq) FROM commands), (SELECT MAX(seq) FROM commands)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Whether the database holds a log's tables (a database whose
/// write-ahead file was lost may hold none).
fn has_log(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'commands')",
        [],
        |r| r.get(0),
    )
}

/// Adds the column that keeps whether each record was refused to a log
/// written before it was kept (its records' refusals are not known, and
/// not checked at replay).
fn add_refused(conn: &Connection) -> Result<(), rusqlite::Error> {
    if !has_refused(conn)? {
        conn.execute_batch("ALTER TABLE commands ADD COLUMN refused INTEGER")?;
    }
    Ok(())
}

/// An id key as the log keeps it: 32 hexadecimal digits.
pub(super) fn parse_key(hex: &str) -> Option<IdKey> {
    hex::decode(hex.trim()).ok()?.try_into().ok().map(IdKey)
}

/// A record's checksum: of its body, of the client that sent it if one
/// is named, and of its result if kept (a record written before results
/// were kept sums as it always did; a kept result cannot be dropped or
/// turned unnoticed).
fn record_crc(body: &str, client: Option<&str>, refused: Option<bool>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(body.as_bytes());
    if let Some(client) = client {
        crc.update(b"\n");
        crc.update(client.as_bytes());
    }
    if let Some(refused) = refused {
        // A NUL: in no body (JSON) and no client name.
        crc.update(&[0, u8::from(refused)]);
    }
    crc.finalize()
}

/// The columns a record is read from, in the order [`read_record`] takes
/// them (a log written before refusals were kept, read without writing
/// to it, has no `refused`: read as not known).
pub(super) fn record_columns(conn: &Connection) -> Result<&'static str, rusqlite::Error> {
    Ok(if has_refused(conn)? {
        "seq, at_us, body, crc, client, refused"
    } else {
        "seq, at_us, body, crc, client, NULL"
    })
}

/// Whether the log keeps each record's refusal.
fn has_refused(conn: &Connection) -> Result<bool, rusqlite::Error> {
    conn.query_row(
        "SELECT count(*) = 1 FROM pragma_table_info('commands') WHERE name = 'refused'",
        [],
        |r| r.get(0),
    )
}

/// One record, checked: its sequence number, its checksum, its body.
pub(super) fn read_record(row: &rusqlite::Row<'_>, expected: u64) -> Result<Entry, String> {
    let seq: i64 = row.get(0).map_err(|e| e.to_string())?;
    let at: i64 = row.get(1).map_err(|e| e.to_string())?;
    let body: String = row.get(2).map_err(|e| e.to_string())?;
    let crc: i64 = row.get(3).map_err(|e| e.to_string())?;
    let client: Option<String> = row.get(4).map_err(|e| e.to_string())?;
    let refused: Option<bool> = row.get(5).map_err(|e| e.to_string())?;
    if seq as u64 != expected {
        return Err(format!("sequence {seq} where {expected} was due"));
    }
    if i64::from(record_crc(&body, client.as_deref(), refused)) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let at = Time::from_timestamp_micros(at).ok_or("time out of range")?;
    let command: Command = serde_json::from_str(&body).map_err(|e| format!("undecodable: {e}"))?;
    Ok(Entry {
        at,
        command,
        refused,
        client: client.map(Arc::from),
    })
}

/// An open journal database, before the writer takes it.
pub struct Store {
    conn: Connection,
    file: PathBuf,
    /// Where snapshots are kept, until the shadow takes it.
    snapshots: Option<SnapshotFile>,
    /// The first record kept at open (0: none), where compaction resumes.
    first_kept: u64,
    /// The log's identity.
    log_id: u64,
    /// How far the log was written, told after each batch.
    marks: MarkFile,
    /// The last record written under `--journal-sync fsync` (0: none), by
    /// this process or one before it on this log.
    fsync_upto: std::cell::Cell<u64>,
    /// Whether each batch is on disk before it is answered.
    sync: JournalSync,
    /// Held while the store is open: one process per journal.
    _lock: std::fs::File,
}

impl Store {
    /// Opens (creating if needed) the journal in `dir`, loads its newest
    /// snapshot that loads, and reads the records after it on a thread of
    /// their own (see [`Records`]).
    pub fn open(dir: &Path, sync: JournalSync) -> Result<(Store, Recovered), JournalError> {
        // A directory it makes is its owner's alone: the log names agents,
        // contact references and clients. One that exists keeps the
        // permissions the operator gave it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| JournalError::Dir {
                dir: dir.to_owned(),
                source,
            })?;
        // One process per journal: a second one started on the same
        // directory by mistake is refused before it writes anything.
        let lock_file = dir.join("LOCK");
        let lock = std::fs::File::create(&lock_file).map_err(|source| JournalError::Dir {
            dir: lock_file,
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
        let marks = MarkFile::open(dir)?;
        let mut marked = None;
        if file.exists() {
            match marks.read()? {
                Marked::Mark(mark) => {
                    check_written(dir, &file, &marks, mark)?;
                    marked = Some(mark);
                }
                Marked::Unreadable => {
                    return Err(JournalError::MarkUnreadable {
                        mark: marks.path().to_owned(),
                    });
                }
                Marked::Empty => {}
            }
        } else {
            // A database moved aside to start anew: the mark of the one
            // before is not this log's.
            marks.clear()?;
        }
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
                 crc INTEGER NOT NULL,
                 client TEXT,
                 refused INTEGER
             );
"
        ))
        .map_err(sql)?;
        let id_key = match meta_get(&conn, "id_key").map_err(sql)? {
            Some(v) => Some(parse_key(&v).ok_or_else(|| JournalError::Corrupt {
                file: file.clone(),
                seq: 0,
                why: "the id key in meta is not 32 hexadecimal digits".into(),
            })?),
            None => None,
        };
        let (first, last) = span(&conn).map_err(sql)?;
        let log_id = meta_get(&conn, "log_id").map_err(sql)?;
        // A log is replayed only by a build that decides as the one that
        // wrote it; a log from before the version was kept is version 1.
        let routing: u32 = meta_get(&conn, "routing_version")
            .map_err(sql)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        if (log_id.is_some() || first.is_some()) && routing != ROUTING_VERSION {
            return Err(JournalError::OtherRouting {
                file,
                found: routing,
            });
        }
        let kept_log = log_id.and_then(|v| v.parse::<u64>().ok());
        let log_id = match kept_log {
            Some(id) => id,
            // A new log: snapshots of any other log are not its own.
            None => {
                let id = rand::random::<u64>();
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('log_id', ?1)",
                    params![id.to_string()],
                )
                .map_err(sql)?;
                id
            }
        };
        let fsync_upto = marked
            .filter(|m| m.log_id == log_id)
            .map_or(0, |m| m.fsync_upto);
        let snapshots = SnapshotFile::open(dir, log_id)?;
        // The records after the newest snapshot are read while it loads;
        // if it is refused, they are read again from the one loaded.
        let newest = snapshots.newest()?;
        let last_present = last.map_or(0, |l| l as u64);
        let mut records =
            Records::start(&file, newest.unwrap_or(0), last_present, newest.is_some())?;
        let Loaded {
            snapshot,
            refused: refused_snapshots,
        } = snapshots.load()?;
        let base = snapshot.as_ref().map_or(0, |(seq, _)| *seq);
        if snapshot.as_ref().map(|(seq, _)| *seq) != newest {
            records = Records::start(&file, base, last_present, snapshot.is_some())?;
        }
        if let Some(last) = last
            && (last as u64) < base
        {
            tracing::warn!(
                file = %file.display(),
                last_record = last,
                snapshot = base,
                "journal: the log ends before the snapshot: records after it were lost from the log (a power loss with --journal-sync write?); the snapshot holds their effect"
            );
        }
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
        Ok((
            Store {
                conn,
                file,
                snapshots: Some(snapshots),
                first_kept: first.map_or(0, |f| f as u64),
                log_id,
                marks,
                fsync_upto: std::cell::Cell::new(fsync_upto),
                sync,
                _lock: lock,
            },
            Recovered {
                snapshot,
                refused_snapshots,
                records,
                id_key,
            },
        ))
    }

    /// Takes the log as this build's to write, once its records are read
    /// and checked (before, a refusal leaves the files as they were): its
    /// layout brought up to date and its routing version set.
    pub fn accept(&self) -> Result<(), JournalError> {
        let sql = |source| JournalError::Sqlite {
            file: self.file.clone(),
            source,
        };
        add_refused(&self.conn).map_err(sql)?;
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('routing_version', ?1)",
                params![ROUTING_VERSION.to_string()],
            )
            .map_err(sql)?;
        Ok(())
    }

    /// Records the id key of a new log's engine.
    pub fn set_id_key(&self, key: &IdKey) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('id_key', ?1)",
                params![hex::encode(key.0)],
            )
            .map(drop)
            .map_err(|source| JournalError::Sqlite {
                file: self.file.clone(),
                source,
            })
    }

    /// Writes `records` after `last_seq` at once (the commands of a start);
    /// returns them numbered.
    pub fn append_now(
        &mut self,
        last_seq: u64,
        records: Vec<Entry>,
    ) -> Result<Vec<(u64, Entry)>, JournalError> {
        let rows: Vec<(u64, Entry)> = (last_seq + 1..).zip(records).collect();
        if !rows.is_empty() {
            self.write(&rows)?;
        }
        Ok(rows)
    }

    /// Marks the log's last record as `last` (after each batch; at start,
    /// where the log was found to end, so a loss reported once is not
    /// reported again), on disk as well if `durable` (before a cut under
    /// fsync, so that a cut is never taken for records lost).
    pub(super) fn mark(&self, last: u64, durable: bool) -> Result<(), JournalError> {
        let fsync_upto = self.fsync_upto.get().min(last);
        self.fsync_upto.set(fsync_upto);
        self.marks.set(
            Mark {
                log_id: self.log_id,
                last,
                fsync_upto,
            },
            durable && self.sync == JournalSync::Fsync,
        )
    }

    /// The last record that was on disk when answered (0: none): never
    /// cut as a torn tail.
    pub(super) fn fsync_upto(&self) -> u64 {
        self.fsync_upto.get()
    }

    /// Cuts the log's records from `from` on (a torn or corrupt tail).
    pub(super) fn cut(&self, from: u64) -> Result<(), JournalError> {
        self.conn
            .execute("DELETE FROM commands WHERE seq >= ?1", params![from as i64])
            .map(drop)
            .map_err(|source| JournalError::Sqlite {
                file: self.file.clone(),
                source,
            })
    }

    /// The first record kept when the store was opened (0: none).
    pub(super) fn first_kept(&self) -> u64 {
        self.first_kept
    }

    /// The mark's file, for messages.
    pub(super) fn mark_file(&self) -> &Path {
        self.marks.path()
    }

    /// The database file of the command log.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The snapshot database, for the shadow (once).
    pub fn take_snapshots(&mut self) -> Option<SnapshotFile> {
        self.snapshots.take()
    }

    /// Drops the records up to `upto`, at most `chunk` of them (a small
    /// transaction between batches, so appends never wait long); returns
    /// how far it got.
    pub(super) fn compact(
        &mut self,
        done: u64,
        upto: u64,
        chunk: u64,
    ) -> Result<u64, JournalError> {
        let to = upto.min(done.saturating_add(chunk));
        self.conn
            .execute(
                "DELETE FROM commands WHERE seq > ?1 AND seq <= ?2",
                params![done as i64, to as i64],
            )
            .map_err(|source| JournalError::Sqlite {
                file: self.file.clone(),
                source,
            })?;
        Ok(to)
    }

    /// Writes one batch in one transaction.
    pub(super) fn write(&mut self, batch: &[(u64, Entry)]) -> Result<(), JournalError> {
        let sql = |source| JournalError::Sqlite {
            file: self.file.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO commands (seq, at_us, body, crc, client, refused) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(sql)?;
            for (seq, entry) in batch {
                let body = serde_json::to_string(&entry.command)
                    .map_err(|e| JournalError::Encode(e.to_string()))?;
                let client = entry.client.as_deref();
                let crc = i64::from(record_crc(&body, client, entry.refused));
                insert
                    .execute(params![
                        *seq as i64,
                        entry.at.timestamp_micros(),
                        body,
                        crc,
                        client,
                        entry.refused
                    ])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        match batch.last() {
            Some((last, _)) => {
                // Committed under `synchronous = FULL`: on disk.
                if self.sync == JournalSync::Fsync {
                    self.fsync_upto.set(*last);
                }
                self.mark(*last, false)
            }
            None => Ok(()),
        }
    }
}

/// Checks the log in `file` against its mark, read only, before anything
/// is written to it, so a refusal leaves the files as they were found, for
/// whoever restores them. Records missing from the log's end were dropped
/// by SQLite with a damaged or lost write-ahead file. If they were on disk
/// when answered (the mark says fsync), that is damage: refused. Under
/// `write` a power loss drops the last batches as well (the promise of
/// that mode), so the loss is reported with its records, as a torn tail
/// is, and the log starts from what is left. A database holding no log at
/// all where the mark says one was written is always refused.
fn check_written(
    dir: &Path,
    file: &Path,
    marks: &MarkFile,
    mark: Mark,
) -> Result<(), JournalError> {
    let (log_id, held) = LogReader::open(dir)?.held(dir)?;
    if log_id.is_some_and(|id| id != mark.log_id) {
        tracing::warn!(
            mark = %marks.path().display(),
            "journal: the mark of how far the log was written names another log; it is written again from now on"
        );
    }
    let Some((first_lost, last_lost)) = mark.lost(log_id, held) else {
        return Ok(());
    };
    let fsync = mark.fsynced(first_lost);
    if fsync || log_id.is_none() {
        return Err(JournalError::Lost {
            file: file.to_owned(),
            mark: marks.path().to_owned(),
            written: if fsync { mark.fsync_upto } else { last_lost },
            last: held,
            fsync,
        });
    }
    tracing::error!(
        file = %file.display(),
        first_record_lost = first_lost,
        last_record_lost = last_lost,
        "journal: records written were lost from the log (a power loss under --journal-sync write, or a damaged careroute.db-wal); starting from the records left"
    );
    Ok(())
}

/// The log read without the service (audit and export): read-only, no
/// lock, so it can be read while the service runs.
pub struct LogReader {
    conn: Connection,
    file: PathBuf,
    /// Whether the database holds a log at all (none: read as empty).
    log: bool,
}

impl LogReader {
    /// Opens the log in `dir` read-only.
    pub fn open(dir: &Path) -> Result<LogReader, JournalError> {
        LogReader::open_file(dir.join(FILE))
    }

    /// Opens the log in the database `file` read-only.
    pub fn open_file(file: PathBuf) -> Result<LogReader, JournalError> {
        let conn = Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| JournalError::Sqlite {
            file: file.clone(),
            source,
        })?;
        let log = has_log(&conn).map_err(|source| JournalError::Sqlite {
            file: file.clone(),
            source,
        })?;
        Ok(LogReader { conn, file, log })
    }

    fn sql(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            file: self.file.clone(),
            source,
        }
    }

    /// A value from the log's `meta` table, if set.
    fn meta(&self, key: &str) -> Result<Option<String>, JournalError> {
        if !self.log {
            return Ok(None);
        }
        meta_get(&self.conn, key).map_err(|e| self.sql(e))
    }

    /// The first and last records kept (none: an empty log).
    pub fn span(&self) -> Result<Option<(u64, u64)>, JournalError> {
        if !self.log {
            return Ok(None);
        }
        let (first, last) = span(&self.conn).map_err(|e| self.sql(e))?;
        Ok(first.zip(last).map(|(f, l)| (f as u64, l as u64)))
    }

    /// The id key of the log's engine, if recorded.
    pub fn id_key(&self) -> Result<Option<IdKey>, JournalError> {
        match self.meta("id_key")? {
            Some(v) => parse_key(&v)
                .map(Some)
                .ok_or_else(|| JournalError::Corrupt {
                    file: self.file.clone(),
                    seq: 0,
                    why: "the id key in meta is not 32 hexadecimal digits".into(),
                }),
            None => Ok(None),
        }
    }

    /// The routing version of the build that wrote the log (1: before the
    /// version was kept).
    pub fn routing_version(&self) -> Result<u32, JournalError> {
        Ok(self
            .meta("routing_version")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(1))
    }

    /// The log's identity (none: the database holds no log at all), and
    /// the last record it holds: its last record, or the newest snapshot's
    /// in `dir` if later. What [`Mark::lost`] is asked about.
    pub fn held(&self, dir: &Path) -> Result<(Option<u64>, u64), JournalError> {
        let log_id = Some(self.log_id()?).filter(|&id| id != 0);
        let last = self.span()?.map_or(0, |(_, last)| last);
        let snapshot = match log_id {
            Some(id) => SnapshotFile::newest_in(dir, id)?,
            None => 0,
        };
        Ok((log_id, last.max(snapshot)))
    }

    /// The log's identity, which its snapshots carry.
    pub fn log_id(&self) -> Result<u64, JournalError> {
        Ok(self
            .meta("log_id")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    /// Calls `each` with every record after `after` up to `upto`, in order:
    /// its sequence number, its body as stored (JSON), and the record
    /// checked and decoded, or why it cannot be.
    pub fn each(
        &self,
        after: u64,
        upto: u64,
        mut each: impl FnMut(u64, &str, Result<Entry, String>),
    ) -> Result<(), JournalError> {
        if !self.log {
            return Ok(());
        }
        let mut rows = self
            .conn
            .prepare(&format!(
                "SELECT {} FROM commands WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
                record_columns(&self.conn).map_err(|e| self.sql(e))?
            ))
            .map_err(|e| self.sql(e))?;
        let mut rows = rows
            .query(params![after as i64, upto.min(i64::MAX as u64) as i64])
            .map_err(|e| self.sql(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let seq: i64 = row.get(0).map_err(|e| self.sql(e))?;
            let body: String = row.get(2).unwrap_or_default();
            each(seq as u64, &body, read_record(row, seq as u64));
        }
        Ok(())
    }
}
