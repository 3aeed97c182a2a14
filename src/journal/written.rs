//! How far the local log was written, kept in a file of its own beside the
//! database: a second witness that SQLite cannot lose with its write-ahead
//! file. SQLite reads that file up to its first damaged frame and quietly
//! drops the rest, so a start that finds fewer records than this file says
//! were written knows some were lost, and which.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::JournalError;

/// The file's name in the data directory.
pub const WRITTEN_FILE: &str = "careroute.written";

/// What the file says: which log, and the last record of it written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The log's identity (its `log_id` in the database's `meta` table).
    pub log_id: u64,
    /// The last record written.
    pub last: u64,
}

impl Mark {
    /// Fixed width, so each write replaces the whole of the one before.
    fn encode(self) -> String {
        format!("{:020} {:020}\n", self.log_id, self.last)
    }

    /// The mark in `bytes`, if they hold one whole.
    fn decode(bytes: &[u8]) -> Option<Mark> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.split_ascii_whitespace();
        let log_id = fields.next()?.parse().ok()?;
        let last = fields.next()?.parse().ok()?;
        fields.next().is_none().then_some(Mark { log_id, last })
    }

    /// What the file in `dir` says, if it exists and is whole (read only,
    /// for the audit export).
    pub fn read(dir: &Path) -> Option<Mark> {
        Mark::decode(&std::fs::read(dir.join(WRITTEN_FILE)).ok()?)
    }
}

/// The file, open for the writer.
pub struct Written {
    file: File,
    path: PathBuf,
}

impl Written {
    /// Opens (creating if needed) the file in `dir`.
    pub fn open(dir: &Path) -> Result<Written, JournalError> {
        let path = dir.join(WRITTEN_FILE);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(|file| Written {
                file,
                path: path.clone(),
            })
            .map_err(|source| JournalError::Written { file: path, source })
    }

    /// What it says, if it is whole (nothing yet on a new journal, or one
    /// written before this file was kept).
    pub fn read(&self) -> Option<Mark> {
        let mut bytes = [0u8; 64];
        let n = self.file.read_at(&mut bytes, 0).ok()?;
        Mark::decode(&bytes[..n])
    }

    /// Records `mark`, after its batch is committed: one write to the
    /// operating system, which survives the process as the batch does.
    pub fn set(&self, mark: Mark) -> Result<(), JournalError> {
        self.file
            .write_all_at(mark.encode().as_bytes(), 0)
            .map_err(|source| JournalError::Written {
                file: self.path.clone(),
                source,
            })
    }

    /// The file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_a_torn_one_is_not_read() {
        let dir = std::env::temp_dir().join(format!("careroute-written-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = Written::open(&dir).unwrap();
        assert_eq!(w.read(), None, "a new file says nothing");
        let long = Mark {
            log_id: u64::MAX,
            last: 123_456_789,
        };
        w.set(long).unwrap();
        let short = Mark { log_id: 7, last: 9 };
        w.set(short).unwrap();
        assert_eq!(w.read(), Some(short), "a shorter number replaces it whole");
        assert_eq!(Mark::read(&dir), Some(short));
        std::fs::write(dir.join(WRITTEN_FILE), "00000000000000000007").unwrap();
        assert_eq!(Mark::read(&dir), None, "half a mark is not read");
        std::fs::write(dir.join(WRITTEN_FILE), "7 9 11").unwrap();
        assert_eq!(Mark::read(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
