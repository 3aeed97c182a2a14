//! The writer thread, and nothing of the wire or the engine's workings: it
//! takes the commands the serving threads queued, in order, appends them to
//! the log in batches (group commit), and once a batch is in the log
//! publishes its events and lets its answers leave; between batches it
//! steps a compaction along. On NATS a batch is sent before the one before
//! it is acknowledged (up to [`MAX_IN_FLIGHT`]), so the round trip is not
//! paid once per batch; each is answered once it and every batch before it
//! are acknowledged (looked at between batches without waiting, and waited
//! for when there is nothing to send).

use std::{collections::VecDeque, sync::mpsc, time::Duration};

use tokio::sync::{oneshot, watch};

use super::{Entry, JournalError, Log, Sent, Snapshots};

/// Records dropped per step of a compaction, between batches.
const COMPACT_CHUNK: u64 = 4096;
/// How long the writer waits for commands before the next compaction
/// step when one is under way.
const COMPACT_PAUSE: Duration = Duration::from_millis(10);
/// Most commands written in one batch.
const MAX_BATCH: usize = 4096;
/// Most batches sent to NATS and not yet acknowledged.
const MAX_IN_FLIGHT: usize = 5;
/// Most records sent to NATS and not yet acknowledged: under the client's
/// own bound (`max_ack_inflight`, 5,000), past which a publish would wait
/// for a slot that only this thread, by confirming, can free.
const MAX_RECORDS_IN_FLIGHT: usize = MAX_BATCH;

/// Told once if the writer fails.
pub(super) type OnFailure = Box<dyn FnOnce(&JournalError) + Send>;

/// How far the writer has got, in which term.
#[derive(Debug, Clone, Default)]
pub(super) struct Written {
    pub(super) upto: u64,
    pub(super) term: u64,
    pub(super) failed: Option<String>,
}

/// What the writer is given, in order: a command as the log keeps it
/// (none: only events) and the events it decided.
pub(super) struct Work<T> {
    pub(super) term: u64,
    pub(super) seq: u64,
    pub(super) entry: Option<Entry>,
    pub(super) events: Vec<T>,
    /// Told once the batch, and every batch before it, is in the log and
    /// the events are published.
    pub(super) done: oneshot::Sender<()>,
}

/// Raised once if the writer stops for any reason but the service's own
/// stop (a failed write, a panic): the failure is told and recorded, so
/// nobody waits for it and the service stops.
struct Alarm {
    failed: Option<OnFailure>,
    written: watch::Sender<Written>,
}

impl Alarm {
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

/// A batch sent to the log, not yet answered.
struct Flight<T> {
    term: u64,
    /// Its last sequence number.
    upto: u64,
    work: Vec<Work<T>>,
    rows: Vec<(u64, Entry)>,
    sent: Sent,
}

/// The queue closed: the service stopped.
struct Closed;

/// The writer stopped for good (its alarm raised): nothing more is written.
struct Stopped;

/// The writer thread's state.
pub(super) struct Writer<T> {
    queue: mpsc::Receiver<Work<T>>,
    log: Option<Log>,
    snapshots: Option<Snapshots>,
    publish: Box<dyn FnMut(u64, Vec<T>) + Send>,
    alarm: Alarm,
    /// The log is compacted up to here, and is to be up to `compact_to`.
    compacted: u64,
    compact_to: u64,
    in_flight: VecDeque<Flight<T>>,
}

impl<T> Writer<T> {
    /// A writer of what `queue` brings to `log` (none: only publishes),
    /// feeding `snapshots`; `failed` is told once if it stops, and
    /// `written` says how far it got.
    pub(super) fn new(
        queue: mpsc::Receiver<Work<T>>,
        log: Option<Log>,
        snapshots: Option<Snapshots>,
        publish: Box<dyn FnMut(u64, Vec<T>) + Send>,
        failed: OnFailure,
        written: watch::Sender<Written>,
    ) -> Writer<T> {
        // Compaction resumes where the log now starts.
        let first_kept = match &log {
            Some(Log::Local(store)) => store.first_kept(),
            _ => 0,
        };
        Writer {
            queue,
            log,
            snapshots,
            publish,
            alarm: Alarm {
                failed: Some(failed),
                written,
            },
            compacted: first_kept.saturating_sub(1),
            compact_to: 0,
            in_flight: VecDeque::new(),
        }
    }

    /// Writes until the queue closes (the service stopped: what was queued
    /// is written first), a local write fails or the snapshot shadow stops.
    pub(super) fn run(mut self) {
        loop {
            let batch = match self.take() {
                Ok(batch) => batch,
                Err(Closed) => break,
            };
            let idle = batch.is_empty();
            // Room for the batch's records among those in flight first.
            while !self.in_flight.is_empty()
                && self.records_in_flight() + batch.len() > MAX_RECORDS_IN_FLIGHT
            {
                if self.answer_oldest().is_err() {
                    return;
                }
            }
            if !idle && self.send(batch).is_err() {
                return;
            }
            // Every batch at the front that is in the log is answered (at
            // once for a local write; on NATS once its acknowledgements
            // are in, looked at without waiting).
            while self.in_flight.front_mut().is_some_and(|f| f.sent.arrived()) {
                if self.answer_oldest().is_err() {
                    return;
                }
            }
            // The oldest still in flight is waited for once nothing more
            // is queued to send first, or once too many are in flight.
            let wait =
                !self.in_flight.is_empty() && (idle || self.in_flight.len() >= MAX_IN_FLIGHT);
            if wait && self.answer_oldest().is_err() {
                return;
            }
            if self.compact_step().is_err() {
                return;
            }
        }
        while !self.in_flight.is_empty() {
            if self.answer_oldest().is_err() {
                return;
            }
        }
        // Every sender is gone: the service stopped. Not a fault.
        self.alarm.failed = None;
    }

    /// Records sent and not yet answered (a local write is answered as soon
    /// as it is sent, so these are all on NATS).
    fn records_in_flight(&self) -> usize {
        self.in_flight.iter().map(|f| f.rows.len()).sum()
    }

    /// What is queued, up to [`MAX_BATCH`]. Waits for some only when
    /// nothing is in flight, and then at most [`COMPACT_PAUSE`] while a
    /// compaction is under way.
    fn take(&mut self) -> Result<Vec<Work<T>>, Closed> {
        let first = if !self.in_flight.is_empty() {
            match self.queue.try_recv() {
                Ok(w) => Some(w),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return Err(Closed),
            }
        } else if self.compacted < self.compact_to {
            match self.queue.recv_timeout(COMPACT_PAUSE) {
                Ok(w) => Some(w),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(Closed),
            }
        } else {
            Some(self.queue.recv().map_err(|_| Closed)?)
        };
        let mut batch: Vec<Work<T>> = first.into_iter().collect();
        while !batch.is_empty() && batch.len() < MAX_BATCH {
            match self.queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// Sends `batch` to the log. `Err` once the writer has stopped.
    fn send(&mut self, mut batch: Vec<Work<T>>) -> Result<(), Stopped> {
        // Work of an ended term is dropped: its answers never leave, and
        // the next term starts from the log.
        let (term, ended) = {
            let w = self.alarm.written.borrow();
            (w.term, w.failed.is_some())
        };
        batch.retain(|w| w.term == term && !ended);
        let Some(upto) = batch.last().map(|w| w.seq) else {
            return Ok(());
        };
        let rows: Vec<(u64, Entry)> = batch
            .iter_mut()
            .filter_map(|work| Some((work.seq, work.entry.take()?)))
            .collect();
        let sent = match self.log.as_mut() {
            Some(log) if !rows.is_empty() => log.send(&rows, term),
            _ => Ok(Sent::Written),
        };
        match sent {
            Ok(sent) => {
                self.in_flight.push_back(Flight {
                    term,
                    upto,
                    work: batch,
                    rows,
                    sent,
                });
                Ok(())
            }
            Err(e) => self.failed(e, term),
        }
    }

    /// Waits for the oldest batch in flight to be in the log, then
    /// publishes its events and lets its answers leave. `Err` once the
    /// writer has stopped.
    fn answer_oldest(&mut self) -> Result<(), Stopped> {
        let Some(flight) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Flight {
            term,
            upto,
            work,
            rows,
            sent,
        } = flight;
        if let Err(e) = sent.confirm() {
            return self.failed(e, term);
        }
        // Only while its term lasts: a batch of an ended term that landed
        // after all is not this term's to answer.
        let current = {
            let w = self.alarm.written.borrow();
            w.term == term && w.failed.is_none()
        };
        if !current {
            return Ok(());
        }
        let mut answers = Vec::with_capacity(work.len());
        for w in work {
            (self.publish)(w.seq, w.events);
            answers.push(w.done);
        }
        self.alarm.written.send_modify(|w| {
            if w.term == term {
                w.upto = w.upto.max(upto);
            }
        });
        for answer in answers {
            // Its caller may have gone away.
            let _ = answer.send(());
        }
        // Then, off the answers' path, the shadow.
        if let Some(shadow) = &self.snapshots
            && !rows.is_empty()
            && !shadow.feed(rows)
        {
            self.alarm
                .raise(JournalError::Failed("the snapshot shadow stopped".into()));
            return Err(Stopped);
        }
        Ok(())
    }

    /// A write that failed in `term`: a local one stops the writer (`Err`);
    /// on NATS the term ends, with everything of it in flight unanswered.
    fn failed(&mut self, e: JournalError, term: u64) -> Result<(), Stopped> {
        if matches!(self.log, Some(Log::Local(_))) {
            self.alarm.raise(e);
            return Err(Stopped);
        }
        tracing::warn!(error = %e, term, "journal: an append failed; this term ends");
        self.alarm.written.send_modify(|w| {
            if w.term == term {
                w.failed = Some(e.to_string());
            }
        });
        self.in_flight.retain(|f| f.term != term);
        Ok(())
    }

    /// One step of a compaction under way (a small transaction, so appends
    /// never wait long). `Err` once the writer has stopped.
    fn compact_step(&mut self) -> Result<(), Stopped> {
        // How far the newest snapshot lets the log go.
        if let Some(shadow) = &self.snapshots {
            while let Ok(to) = shadow.compact.try_recv() {
                self.compact_to = self.compact_to.max(to);
            }
        }
        if self.compacted >= self.compact_to {
            return Ok(());
        }
        let Some(Log::Local(store)) = self.log.as_mut() else {
            return Ok(());
        };
        match store.compact(self.compacted, self.compact_to, COMPACT_CHUNK) {
            Ok(done) => {
                self.compacted = done;
                Ok(())
            }
            Err(e) => {
                self.alarm.raise(e);
                Err(Stopped)
            }
        }
    }
}
