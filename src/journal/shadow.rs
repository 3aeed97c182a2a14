//! The snapshot shadow: a copy of the engine on its own thread, rebuilt
//! once the start has replayed, as the restart rebuilt it (the newest
//! snapshot that loads, then the log after it), then kept current by every batch the
//! writer has written, once its answers have left. Snapshots are encoded
//! from the shadow and saved to `snapshots.db`, so serving never waits for
//! one whatever the state's size. After each, the writer may compact the
//! log up to the snapshot the shadow started from (kept as the fallback).

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::replay::Replay;
use super::snapshots::SnapshotFile;
use super::store::LogReader;
use super::{Entry, JournalError};
use crate::engine::EngineConfig;

/// The shadow's thread: what feeds it, and what it answers (how far the
/// log may be compacted).
pub struct Snapshots {
    feed: mpsc::Sender<Batch>,
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

/// Written records, in order, for the shadow.
pub(super) type Batch = Vec<(u64, Entry)>;

impl Snapshots {
    /// Starts the shadow on its own thread. It first rebuilds the engine
    /// from the newest snapshot in `file` that loads and the records of
    /// the log at `log` after it up to `upto`, building a new engine under
    /// `config`; then it applies what is fed, in order, and saves a
    /// snapshot when one is due. A start begins it once its own replay is
    /// done, so the rebuild takes the second core while the service
    /// serves, not while the start replays (copying the started engine
    /// instead would cost the start 0.6 s at 1,000,000 commands of
    /// traffic).
    pub fn start(
        mut file: SnapshotFile,
        log: PathBuf,
        upto: u64,
        config: EngineConfig,
        every: Every,
    ) -> std::io::Result<Snapshots> {
        crate::telemetry::register_snapshots();
        let (feed, fed) = mpsc::channel::<Batch>();
        let (compact, compacted) = mpsc::channel();
        std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || {
                let (mut replay, mut keep) = match rebuild(&file, &log, upto, config) {
                    Ok(rebuilt) => rebuilt,
                    Err(e) => {
                        // The writer finds the feed closed and stops the
                        // service: a log no snapshot is taken of grows
                        // without bound.
                        tracing::error!(error = %e, "journal: the snapshot shadow cannot be rebuilt");
                        return;
                    }
                };
                let mut at_seq = upto;
                // The records replayed since the snapshot count: a process
                // that restarts often still takes snapshots.
                let mut since = upto - keep.unwrap_or(0);
                let mut last_snapshot = Instant::now();
                loop {
                    let due = since >= every.commands
                        || (since > 0 && last_snapshot.elapsed() >= every.interval);
                    if due && let Some(shadow) = replay.engine() {
                        let started = Instant::now();
                        let at = shadow.now().unwrap_or_else(chrono::Utc::now);
                        let saved = shadow
                            .encode_state()
                            .map_err(|e| JournalError::Encode(e.to_string()))
                            .and_then(|state| {
                                file.save(at_seq, at, &state, keep)?;
                                Ok(state.len())
                            });
                        // Whatever came of it, not again before the next
                        // interval or count.
                        since = 0;
                        last_snapshot = Instant::now();
                        match saved {
                            Ok(bytes) => {
                                // The log up to the fallback is no longer
                                // needed; this one is the next fallback.
                                if let Some(fallback) = keep {
                                    let _ = compact.send(fallback);
                                }
                                keep = Some(at_seq);
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
                    let wait = if since == 0 {
                        Duration::from_secs(3600)
                    } else {
                        every.interval.saturating_sub(last_snapshot.elapsed())
                    };
                    let batch = match fed.recv_timeout(wait) {
                        Ok(batch) => batch,
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        // The writer stopped: so does the shadow.
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    for (seq, entry) in batch {
                        // The serving engine's results, replayed: a record
                        // that comes to another is a state no snapshot may
                        // keep.
                        if let Err(e) = replay.apply(seq, entry) {
                            tracing::error!(
                                error = %e.in_log(&log),
                                "journal: the snapshot shadow stops"
                            );
                            return;
                        }
                        at_seq = seq;
                        since += 1;
                    }
                }
            })?;
        Ok(Snapshots {
            feed,
            compact: compacted,
        })
    }

    /// Feeds the shadow records just written; false if it has stopped.
    pub fn feed(&self, rows: Batch) -> bool {
        self.feed.send(rows).is_ok()
    }
}

/// The shadow's engine as a restart would rebuild it: the newest snapshot
/// that loads (returned too: the fallback to keep), then the log after it
/// up to `upto`.
fn rebuild(
    file: &SnapshotFile,
    log: &Path,
    upto: u64,
    config: EngineConfig,
) -> Result<(Replay, Option<u64>), JournalError> {
    let loaded = file.load()?;
    let base = loaded.snapshot.as_ref().map(|(seq, _)| *seq);
    let mut replay = Replay::new(loaded.snapshot.map(|(_, engine)| engine), config);
    let from = base.unwrap_or(0);
    let mut expected = from + 1;
    let mut failed = None;
    LogReader::open_file(log.to_owned())?.each(from, upto, |seq, _, read| {
        if failed.is_some() {
            return;
        }
        let corrupt = |why: String| JournalError::Corrupt {
            file: log.to_owned(),
            seq: expected,
            why,
        };
        let applied = if seq == expected {
            read.map_err(corrupt)
                .and_then(|entry| replay.apply(seq, entry).map_err(|e| e.in_log(log)))
        } else {
            Err(corrupt(format!(
                "record {seq} came where {expected} was due"
            )))
        };
        match applied {
            Ok(()) => expected += 1,
            Err(e) => failed = Some(e),
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok((replay, base)),
    }
}
