//! How far the local log was written, kept in a file of its own beside the
//! database (the mark): a second witness that SQLite cannot lose with its
//! write-ahead file. SQLite reads that file up to its first damaged frame
//! and quietly drops the rest, so a start that finds fewer records than the
//! mark says were written knows some were lost, and which.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::JournalError;

/// The mark's file name in the data directory.
pub const WRITTEN_FILE: &str = "careroute.written";

/// The length of an encoded mark.
const ENCODED: usize = 63;

/// What the mark says: which log, its last record written, and the last
/// record that was on disk when answered (`--journal-sync fsync`), which no
/// later start under `write` lowers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The log's identity (its `log_id` in the database's `meta` table).
    pub log_id: u64,
    /// The last record written.
    pub last: u64,
    /// The last record written under `--journal-sync fsync` (0: none).
    pub fsync_upto: u64,
}

/// What a mark's file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Nothing: a new journal, or one written before the mark was kept.
    Empty,
    /// A whole mark.
    Mark(Mark),
    /// Bytes that are not a mark: how far the log was written is unknown.
    Unreadable,
}

impl Mark {
    /// Fixed width, so each write replaces the whole of the one before
    /// (and written once per batch, so on the stack).
    fn encode(self) -> [u8; ENCODED] {
        let mut bytes = [0u8; ENCODED];
        // 3 x (20 + 1) bytes: a u64 has at most 20 digits.
        let _ = writeln!(
            &mut bytes[..],
            "{:020} {:020} {:020}",
            self.log_id,
            self.last,
            self.fsync_upto
        );
        bytes
    }

    /// The mark in `bytes`, if they hold one whole. A mark of the build
    /// before ends in the mode its last record was written under instead.
    fn decode(bytes: &[u8]) -> Option<Mark> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split_ascii_whitespace();
        let log_id = fields.next()?.parse().ok()?;
        let last = fields.next()?.parse().ok()?;
        let fsync_upto = match fields.next()? {
            "fsync" => last,
            "write" => 0,
            upto => upto.parse().ok().filter(|&upto| upto <= last)?,
        };
        fields.next().is_none().then_some(Mark {
            log_id,
            last,
            fsync_upto,
        })
    }

    /// What the file `bytes` were read from holds.
    fn marked(bytes: &[u8]) -> Marked {
        if bytes.is_empty() {
            return Marked::Empty;
        }
        Mark::decode(bytes).map_or(Marked::Unreadable, Marked::Mark)
    }

    /// What the mark in `dir` says, if it exists and is whole.
    pub fn read(dir: &Path) -> Option<Mark> {
        match Mark::read_in(dir) {
            Marked::Mark(mark) => Some(mark),
            Marked::Empty | Marked::Unreadable => None,
        }
    }

    /// What the mark's file in `dir` holds, read only (the audit export):
    /// no file is nothing.
    pub fn read_in(dir: &Path) -> Marked {
        std::fs::read(dir.join(WRITTEN_FILE)).map_or(Marked::Empty, |bytes| Mark::marked(&bytes))
    }

    /// Whether records from `first` on were on disk when answered.
    pub fn fsynced(&self, first: u64) -> bool {
        first <= self.fsync_upto
    }

    /// The records written that a log holding records up to `held` (its
    /// last record, or its snapshot's if later) has lost, first and last;
    /// `log_id` is the log's (none: the database holds no log at all). A
    /// mark of another log says nothing of this one.
    pub fn lost(&self, log_id: Option<u64>, held: u64) -> Option<(u64, u64)> {
        if log_id.is_some_and(|id| id != self.log_id) || self.last <= held {
            return None;
        }
        Some((held + 1, self.last))
    }
}

/// The mark's file, open for the writer.
pub struct MarkFile {
    file: File,
    path: PathBuf,
}

impl MarkFile {
    /// Opens (creating if needed) the mark's file in `dir`.
    pub fn open(dir: &Path) -> Result<MarkFile, JournalError> {
        let path = dir.join(WRITTEN_FILE);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(|file| MarkFile {
                file,
                path: path.clone(),
            })
            .map_err(|source| JournalError::Mark { file: path, source })
    }

    /// What it holds.
    pub fn read(&self) -> Result<Marked, JournalError> {
        let mut bytes = [0u8; 2 * ENCODED];
        let n = self
            .file
            .read_at(&mut bytes, 0)
            .map_err(|source| self.error(source))?;
        Ok(Mark::marked(&bytes[..n]))
    }

    /// Records `mark`: one write to the operating system, which survives
    /// the process as a batch does; on disk too if `durable`.
    pub fn set(&self, mark: Mark, durable: bool) -> Result<(), JournalError> {
        self.file
            .write_all_at(&mark.encode(), 0)
            .and_then(|()| {
                if durable {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|source| self.error(source))
    }

    /// Forgets what it said, on disk (a new database, whose log the mark
    /// of the one before is not).
    pub fn clear(&self) -> Result<(), JournalError> {
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| self.error(source))
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: std::io::Error) -> JournalError {
        JournalError::Mark {
            file: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_a_torn_one_is_not_read() {
        let dir = std::env::temp_dir().join(format!("careroute-written-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let m = MarkFile::open(&dir).unwrap();
        assert_eq!(m.read().unwrap(), Marked::Empty, "a new file says nothing");
        let long = Mark {
            log_id: u64::MAX,
            last: 123_456_789,
            fsync_upto: 123_456_789,
        };
        m.set(long, false).unwrap();
        let short = Mark {
            log_id: 7,
            last: 9,
            fsync_upto: 4,
        };
        m.set(short, true).unwrap();
        assert_eq!(
            m.read().unwrap(),
            Marked::Mark(short),
            "a shorter number replaces it whole"
        );
        assert_eq!(Mark::read(&dir), Some(short));
        m.clear().unwrap();
        assert_eq!(m.read().unwrap(), Marked::Empty);
        // The build before's marks.
        for (old, fsync_upto) in [
            ("00000000000000000007 00000000000000000009 fsync\n", 9),
            ("00000000000000000007 00000000000000000009 write\n", 0),
        ] {
            std::fs::write(dir.join(WRITTEN_FILE), old).unwrap();
            let read = Mark::read(&dir).unwrap();
            assert_eq!((read.last, read.fsync_upto), (9, fsync_upto));
        }
        for torn in [
            "00000000000000000007 00000000000000000009",
            "7 9 fs",
            "7 9 write 11",
            "7 9 10",
            "\0\0\0\0",
        ] {
            std::fs::write(dir.join(WRITTEN_FILE), torn).unwrap();
            assert_eq!(Mark::read(&dir), None, "{torn}");
            assert_eq!(m.read().unwrap(), Marked::Unreadable, "{torn}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lost_records_are_those_written_after_what_the_log_holds() {
        let mark = Mark {
            log_id: 7,
            last: 9,
            fsync_upto: 0,
        };
        assert_eq!(mark.lost(Some(7), 9), None);
        assert_eq!(mark.lost(Some(7), 12), None, "written since by another");
        assert_eq!(mark.lost(Some(7), 5), Some((6, 9)));
        assert_eq!(mark.lost(None, 0), Some((1, 9)), "no log at all");
        assert_eq!(mark.lost(Some(8), 0), None, "another log's mark");
    }
}
