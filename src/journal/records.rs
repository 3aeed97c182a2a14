//! The log's records after the snapshot, read back and checked (sequence
//! and checksum of each) on a thread of their own, so that a start applies
//! them as they come rather than after the last is read; how the reading
//! ended (a torn or corrupt tail is cut) is known once the last is taken.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread::JoinHandle,
};

use rusqlite::{Connection, params};

use super::Entry;
use super::JournalError;
use super::store::{Store, read_record, record_columns};

/// Records handed to the start at once.
const BATCH: usize = 1024;
/// Batches read ahead of the start, at most (bounds the memory a slow
/// replay lets the reading take).
const AHEAD: usize = 64;

/// The records after the snapshot (or from the log's start), in order,
/// with their times, as they are read.
pub struct Records {
    base: u64,
    last_present: u64,
    from_snapshot: bool,
    batches: mpsc::Receiver<Vec<Entry>>,
    current: std::vec::IntoIter<Entry>,
    reader: JoinHandle<Result<Read, JournalError>>,
}

/// What the reader found once it read the last record.
struct Read {
    last_seq: u64,
    cut: Option<(u64, String)>,
}

/// How the log ends, once every record was read and taken.
#[derive(Debug)]
pub struct End {
    /// The last sequence number kept.
    pub last_seq: u64,
    /// Records cut from a torn or corrupt tail.
    pub cut: Option<Cut>,
}

/// The records cut from a torn or corrupt tail.
#[derive(Debug)]
pub struct Cut {
    /// The first record cut.
    pub first: u64,
    /// The last (the log's last when opened).
    pub last: u64,
    /// Why the first could not be read.
    pub why: String,
}

impl Records {
    /// Starts reading the records of the log in `file` after `base` (the
    /// snapshot's record, or 0), the last of which is `last_present`.
    pub(super) fn start(
        file: &Path,
        base: u64,
        last_present: u64,
        from_snapshot: bool,
    ) -> Result<Records, JournalError> {
        let sql = |source| JournalError::Sqlite {
            file: file.to_owned(),
            source,
        };
        let conn = Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sql)?;
        let (send, batches) = mpsc::sync_channel(AHEAD);
        let owned = file.to_owned();
        let reader = std::thread::Builder::new()
            .name("journal-read".into())
            .spawn(move || read(&conn, owned, base, &send))
            .map_err(|e| JournalError::Setup(format!("cannot start reading the log: {e}")))?;
        Ok(Records {
            base,
            last_present: last_present.max(base),
            from_snapshot,
            batches,
            current: Vec::new().into_iter(),
            reader,
        })
    }

    /// The sequence number of the first record.
    pub fn first(&self) -> u64 {
        self.base + 1
    }

    /// The last sequence number in the log when it was opened; the last
    /// kept is lower if its tail is cut.
    pub fn last_present(&self) -> u64 {
        self.last_present
    }

    /// How the log ends (records not taken are read and dropped): a torn
    /// or corrupt tail is cut from `store` (and refused when nothing is
    /// left to start from); damage that is not a tail (records missing, or
    /// good records after a bad one) is refused, since cutting would lose
    /// acknowledged commands.
    pub fn finish(mut self, store: &Store) -> Result<End, JournalError> {
        // Records not taken are read to the end all the same: how the log
        // ends is known only then.
        for _ in self.by_ref() {}
        drop(self.batches);
        let Read { last_seq, cut } = self
            .reader
            .join()
            .map_err(|_| JournalError::Setup("reading the log panicked".into()))??;
        if let Some((seq, why)) = &cut {
            // Nothing to start from: refuse rather than start anew.
            if *seq == 1 && !self.from_snapshot {
                return Err(JournalError::Corrupt {
                    file: store.file().to_owned(),
                    seq: 1,
                    why: why.clone(),
                });
            }
            // Records on disk when answered are damaged, not torn: never
            // cut.
            if *seq <= store.fsync_upto() {
                return Err(JournalError::Damaged {
                    file: store.file().to_owned(),
                    seq: *seq,
                    why: why.clone(),
                    fsync_upto: store.fsync_upto(),
                });
            }
        }
        // Records on disk when answered that the log, from the snapshot it
        // loaded, does not reach: lost, as the mark's check refuses (it
        // counts the newest snapshot, which may not have loaded).
        if last_seq < store.fsync_upto() {
            return Err(JournalError::Lost {
                file: store.file().to_owned(),
                mark: store.mark_file().to_owned(),
                written: store.fsync_upto(),
                last: last_seq,
                fsync: true,
            });
        }
        // Nothing refuses the log from here: it is this build's to write.
        store.accept()?;
        if let Some((seq, _)) = &cut {
            // The mark first, and on disk under fsync: a mark below the
            // log is harmless, one above a cut would report it as lost.
            store.mark(last_seq, true)?;
            store.cut(*seq)?;
        }
        store.mark(last_seq, false)?;
        let cut = cut.map(|(first, why)| Cut {
            first,
            last: self.last_present,
            why,
        });
        Ok(End { last_seq, cut })
    }
}

impl Iterator for Records {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        loop {
            if let Some(record) = self.current.next() {
                return Some(record);
            }
            // None once the reader has sent its last batch and ended.
            self.current = self.batches.recv().ok()?.into_iter();
        }
    }
}

/// The reader's thread: every record after `base`, checked, sent in
/// batches until the first bad one; the ones after it are read only to
/// tell a tail from damage in the middle.
fn read(
    conn: &Connection,
    file: PathBuf,
    base: u64,
    send: &mpsc::SyncSender<Vec<Entry>>,
) -> Result<Read, JournalError> {
    let sql = |source| JournalError::Sqlite {
        file: file.clone(),
        source,
    };
    let columns = record_columns(conn).map_err(sql)?;
    let mut rows = conn
        .prepare(&format!(
            "SELECT {columns} FROM commands WHERE seq > ?1 ORDER BY seq"
        ))
        .map_err(sql)?;
    let mut rows = rows.query(params![base as i64]).map_err(sql)?;
    let mut expected = base + 1;
    let mut cut: Option<(u64, String)> = None;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(row) = rows.next().map_err(sql)? {
        // Missing records with later ones present are not a tail: never
        // cut, refuse.
        let seq: i64 = row.get(0).map_err(sql)?;
        if seq as u64 > expected && cut.is_none() {
            return Err(JournalError::Corrupt {
                file,
                seq: expected,
                why: format!("records {expected} to {} are missing", seq - 1),
            });
        }
        let record = read_record(row, expected);
        expected += 1;
        match (record, &cut) {
            (Ok(record), None) => {
                batch.push(record);
                if batch.len() == BATCH
                    && send
                        .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .is_err()
                {
                    // The start gave up: nobody takes the rest.
                    return Err(JournalError::Setup("the start stopped reading".into()));
                }
            }
            // A good record after a bad one: the damage is not a tail.
            (Ok(_), Some((seq, why))) => {
                return Err(JournalError::Corrupt {
                    file,
                    seq: *seq,
                    why: why.clone(),
                });
            }
            (Err(why), None) => cut = Some((expected - 1, why)),
            (Err(_), Some(_)) => {}
        }
    }
    if !batch.is_empty() {
        // Not taken only if the start gave up.
        let _ = send.send(batch);
    }
    let last_seq = cut.as_ref().map_or(expected - 1, |(seq, _)| seq - 1);
    Ok(Read { last_seq, cut })
}
