//! The latest routing events, kept for WatchEvents watchers that resume,
//! and the live feed after them. A resume takes the retained events and a
//! subscription to the live feed under one lock, so nothing falls between
//! and nothing repeats; a watcher that falls behind the live feed catches
//! up from the ring again, skipping what it already sent.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::broadcast;
use tonic::Status;

use super::events::Published;
use super::pb;
use super::status::{Reason, refusal};

/// Events buffered per live watcher before it counts as lagging (then it
/// catches up from the ring).
const LIVE_BUFFER: usize = 4096;

/// The ring, and the live feed.
pub struct EventRing {
    ring: parking_lot::Mutex<Ring>,
    live: broadcast::Sender<Arc<pb::RoutingEvent>>,
}

struct Ring {
    events: VecDeque<Arc<pb::RoutingEvent>>,
    capacity: usize,
    /// Every event of the commands after this one is retained.
    resumable_after: u64,
    /// The last sequence the ring has seen (or started after).
    head: u64,
}

/// What a resume starts from: the retained events to send first, the live
/// feed after them, and the last sequence the ring had seen.
pub struct Resumed {
    /// Retained events after the sequence asked for, in order.
    pub retained: Vec<Arc<pb::RoutingEvent>>,
    /// Every event pushed after them.
    pub live: broadcast::Receiver<Arc<pb::RoutingEvent>>,
    /// The last sequence the ring had seen when this resume was taken.
    pub head: u64,
}

impl EventRing {
    /// A ring of at most `capacity` events, starting after record `after`.
    pub fn new(capacity: usize, after: u64) -> EventRing {
        EventRing {
            ring: parking_lot::Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                resumable_after: after,
                head: after,
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Keeps one command's events and sends them live.
    pub fn push(&self, published: &Published) {
        let events = published.routing_events();
        let mut ring = self.ring.lock();
        ring.head = ring.head.max(published.seq);
        for event in events {
            let event = Arc::new(event);
            if ring.events.len() >= ring.capacity {
                // Part of that command's events may be gone: resuming after
                // the one before it would miss them.
                let dropped = ring
                    .events
                    .pop_front()
                    .map_or(event.sequence, |d| d.sequence);
                ring.resumable_after = ring.resumable_after.max(dropped);
            }
            if ring.capacity > 0 {
                ring.events.push_back(Arc::clone(&event));
            }
            // Nobody listening is fine.
            let _ = self.live.send(event);
        }
    }

    /// Notes that record `seq` told nothing: a resume after it is one
    /// this log has reached.
    pub fn passed(&self, seq: u64) {
        let mut ring = self.ring.lock();
        ring.head = ring.head.max(seq);
    }

    /// Starts over after record `after` (the engine rebuilt from the log).
    pub fn restart(&self, after: u64) {
        let mut ring = self.ring.lock();
        ring.events.clear();
        ring.resumable_after = after;
        ring.head = after;
    }

    /// Carries on after record `seq` (a new term): kept as it is if it
    /// has seen every record up to it (a standby that followed the log),
    /// otherwise started over after it.
    pub fn continue_after(&self, seq: u64) {
        if self.ring.lock().head != seq {
            self.restart(seq);
        }
    }

    /// How many events it keeps.
    pub fn capacity(&self) -> usize {
        self.ring.lock().capacity
    }

    /// The retained events after `after` (none: from now on) and the live
    /// feed after them. A sequence no longer retained, or one this log has
    /// not reached, is `OUT_OF_RANGE`, naming the range one can resume in.
    pub fn resume(&self, after: Option<u64>) -> Result<Resumed, Status> {
        let ring = self.ring.lock();
        let live = self.live.subscribe();
        let head = ring.head;
        let Some(after) = after else {
            return Ok(Resumed {
                retained: Vec::new(),
                live,
                head,
            });
        };
        if after < ring.resumable_after || after > head {
            return Err(refusal(
                tonic::Code::OutOfRange,
                format!(
                    "after_sequence: this process can resume after {} to {head}; read the events before from the journal (careroute journal --outcomes)",
                    ring.resumable_after
                ),
                Reason::ResumeOutOfRange,
                Vec::new(),
            ));
        }
        let start = ring.events.partition_point(|e| e.sequence <= after);
        Ok(Resumed {
            retained: ring.events.range(start..).cloned().collect(),
            live,
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::events::Change;

    /// A command at `seq` with one event (a policy reload) or none.
    fn command(seq: u64, events: usize) -> Published {
        Published {
            seq,
            at: chrono::Utc::now(),
            change: (events > 0).then(|| Change::Policy {
                version: format!("v{seq}"),
            }),
            assignments: Vec::new(),
        }
    }

    fn seqs(events: &[Arc<pb::RoutingEvent>]) -> Vec<u64> {
        events.iter().map(|e| e.sequence).collect()
    }

    #[test]
    fn resumes_exactly_after_the_sequence_asked_for() {
        let ring = EventRing::new(100, 0);
        for seq in 1..=5 {
            ring.push(&command(seq, 1));
        }
        assert_eq!(seqs(&ring.resume(Some(2)).unwrap().retained), [3, 4, 5]);
        assert_eq!(
            seqs(&ring.resume(Some(0)).unwrap().retained),
            [1, 2, 3, 4, 5]
        );
        assert!(ring.resume(Some(5)).unwrap().retained.is_empty());
        // Ahead of the log: refused.
        let e = ring.resume(Some(6)).err().unwrap();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("after 0 to 5"), "{}", e.message());
        // From now on: nothing retained, the head named.
        let now = ring.resume(None).unwrap();
        assert!(now.retained.is_empty());
        assert_eq!(now.head, 5);
    }

    #[test]
    fn a_full_ring_names_the_oldest_resume_point_and_live_events_follow() {
        let ring = EventRing::new(3, 0);
        let mut before = ring.resume(None).unwrap().live;
        for seq in 1..=5 {
            ring.push(&command(seq, 1));
        }
        // 1 and 2 were dropped: resuming after 1 would miss 2.
        let e = ring.resume(Some(1)).err().unwrap();
        assert!(e.message().contains("after 2 to 5"), "{}", e.message());
        assert_eq!(seqs(&ring.resume(Some(2)).unwrap().retained), [3, 4, 5]);
        // The live feed carried every one, in order.
        for seq in 1..=5 {
            assert_eq!(before.try_recv().unwrap().sequence, seq);
        }
        // A resume's live feed starts after its retained events.
        let mut resumed = ring.resume(Some(4)).unwrap();
        ring.push(&command(6, 1));
        assert_eq!(seqs(&resumed.retained), [5]);
        assert_eq!(resumed.live.try_recv().unwrap().sequence, 6);
        assert!(resumed.live.try_recv().is_err());
    }

    #[test]
    fn commands_without_events_move_the_head_and_a_restart_starts_over() {
        let ring = EventRing::new(10, 0);
        ring.push(&command(1, 1));
        ring.push(&command(2, 0));
        assert_eq!(ring.resume(None).unwrap().head, 2);
        assert!(ring.resume(Some(2)).unwrap().retained.is_empty());
        ring.restart(10);
        assert!(ring.resume(Some(9)).is_err());
        assert!(ring.resume(Some(10)).unwrap().retained.is_empty());
    }

    #[test]
    fn a_new_term_carries_on_only_from_a_ring_that_saw_every_record() {
        let ring = EventRing::new(10, 0);
        ring.push(&command(1, 1));
        ring.passed(2);
        // Followed up to 2: a term opening after 2 keeps what it has.
        ring.continue_after(2);
        assert_eq!(seqs(&ring.resume(Some(0)).unwrap().retained), [1]);
        // A term opening after records it never saw starts over.
        ring.continue_after(5);
        assert!(ring.resume(Some(0)).is_err());
        assert!(ring.resume(Some(5)).unwrap().retained.is_empty());
    }
}
