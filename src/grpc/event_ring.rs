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

impl Ring {
    /// Keeps one command's events, dropping the oldest commands whole
    /// beyond capacity; returns them for the live feed. A command with more
    /// events than the ring holds is kept whole, alone: a watcher that fell
    /// behind in it, or resumes just before it, can still be sent all of it
    /// (a policy reload calling back every waiting contact is one command).
    fn keep(&mut self, published: &Published) -> Vec<Arc<pb::RoutingEvent>> {
        self.head = self.head.max(published.seq);
        let events: Vec<_> = published
            .routing_events()
            .into_iter()
            .map(Arc::new)
            .collect();
        if events.is_empty() {
            return events;
        }
        if self.capacity == 0 {
            self.resumable_after = self.resumable_after.max(published.seq);
            return events;
        }
        while let Some(oldest) = self.events.front().map(|e| e.sequence) {
            if self.events.len() + events.len() <= self.capacity {
                break;
            }
            while self.events.front().is_some_and(|e| e.sequence == oldest) {
                self.events.pop_front();
            }
            self.resumable_after = self.resumable_after.max(oldest);
        }
        self.events.extend(events.iter().cloned());
        events
    }
}

/// The events of records read back from the log (a restart's replay, a
/// standby catching up), in domain form: the last commands' whole, as many
/// as the ring keeps, for it to take once the replay is done.
pub struct Replayed {
    kept: VecDeque<Published>,
    /// Events in `kept`.
    events: usize,
    capacity: usize,
    /// Every event of the records after this one is kept.
    after: u64,
    /// The last record read.
    head: u64,
}

impl Replayed {
    /// Keeping at most `capacity` events, of the records after `after`.
    pub fn new(after: u64, capacity: usize) -> Replayed {
        Replayed {
            kept: VecDeque::new(),
            events: 0,
            capacity,
            after,
            head: after,
        }
    }

    /// For reading back the records after `after` up to `last`: only the
    /// last `capacity` of them can have their events kept, so only those
    /// tell ([`Replayed::tells`]); the ones before are applied telling
    /// nothing.
    pub fn reading(after: u64, last: u64, capacity: usize) -> Replayed {
        Replayed::new(last.saturating_sub(capacity as u64).max(after), capacity)
    }

    /// Whether record `seq`, read next, tells its events.
    pub fn tells(&self, seq: u64) -> bool {
        seq > self.after
    }

    /// Keeps record `seq`'s events (none: it told nothing), dropping the
    /// oldest commands' beyond capacity (the last one stays, as in the
    /// ring, however many it told).
    pub fn keep(&mut self, seq: u64, published: Option<Published>) {
        self.head = self.head.max(seq);
        let Some(p) = published else { return };
        self.events += p.told();
        self.kept.push_back(p);
        while self.events > self.capacity && self.kept.len() > 1 {
            let Some(oldest) = self.kept.pop_front() else {
                break;
            };
            self.events -= oldest.told();
            self.after = oldest.seq;
        }
    }
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
        let events = self.ring.lock().keep(published);
        for event in events {
            // Nobody listening is fine.
            let _ = self.live.send(event);
        }
    }

    /// Keeps the events of record `seq` (none: it told nothing, and a
    /// watcher may still resume after it) without telling any watcher: a
    /// record read back from the log as a standby follows the leader (none
    /// is let in before the term opens, and the live feed carries only what
    /// is logged from then on), or one logged that told nothing.
    pub fn keep(&self, seq: u64, published: Option<&Published>) {
        let mut ring = self.ring.lock();
        if let Some(p) = published {
            ring.keep(p);
        }
        ring.head = ring.head.max(seq);
    }

    /// Starts over from what a replay kept (the engine rebuilt from the
    /// log), telling no watcher, as [`EventRing::keep`].
    pub fn restore(&self, replayed: Replayed) {
        let mut ring = self.ring.lock();
        ring.events.clear();
        ring.resumable_after = replayed.after;
        ring.head = replayed.after;
        for p in &replayed.kept {
            ring.keep(p);
        }
        ring.head = ring.head.max(replayed.head);
    }

    /// Starts over after record `after`.
    fn restart(&self, after: u64) {
        self.restore(Replayed::new(after, 0));
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
        let why = if after > head {
            format!("past the log's last record, {head}")
        } else if after < ring.resumable_after {
            format!(
                "the events after {after} are no longer retained here; read them from the journal (careroute journal --outcomes --from {})",
                after + 1
            )
        } else {
            String::new()
        };
        if !why.is_empty() {
            return Err(refusal(
                tonic::Code::OutOfRange,
                format!(
                    "after_sequence: {why}; this process can resume after {} to {head}",
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
            noticed: Vec::new(),
            assignments: Vec::new(),
            order: if events > 0 {
                vec![crate::engine::Place::Command]
            } else {
                Vec::new()
            },
        }
    }

    /// A command at `seq` with `events` events: a policy reload, and
    /// withdrawn offers for the rest.
    fn many(seq: u64, events: usize) -> Published {
        use crate::engine::{Event, ReservationId, Withdrawal};
        let withdrawn = (1..events).map(|i| Event::Withdrawn {
            contact_id: format!("c{i}"),
            agent_id: "a".into(),
            team: "t".into(),
            reservation: ReservationId(i as u128),
            reason: Withdrawal::Cancelled,
        });
        let mut p = command(seq, events);
        p.assignments = withdrawn
            .map(|e| {
                let wire = pb::AssignmentEvent::from(&e);
                (e, wire)
            })
            .collect();
        p.order
            .extend((0..p.assignments.len()).map(crate::engine::Place::Event));
        p
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
    fn a_command_larger_than_the_ring_is_kept_whole() {
        let ring = EventRing::new(3, 0);
        ring.push(&command(1, 1));
        ring.push(&many(2, 5));
        // 2 alone, all five of its events: resumable after 1.
        assert_eq!(seqs(&ring.resume(Some(1)).unwrap().retained), [2; 5]);
        let e = ring.resume(Some(0)).err().unwrap();
        assert!(e.message().contains("after 1 to 2"), "{}", e.message());
        // The next command pushes it out whole.
        ring.push(&command(3, 1));
        assert_eq!(seqs(&ring.resume(Some(2)).unwrap().retained), [3]);
        assert!(ring.resume(Some(1)).is_err());
        // A replay keeps its last command whole too.
        let mut replayed = Replayed::new(0, 3);
        replayed.keep(4, Some(many(4, 2)));
        replayed.keep(5, Some(many(5, 4)));
        ring.restore(replayed);
        assert_eq!(seqs(&ring.resume(Some(4)).unwrap().retained), [5; 4]);
        assert!(ring.resume(Some(3)).is_err());
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
    fn a_replay_keeps_the_last_commands_whole_and_tells_no_live_watcher() {
        let ring = EventRing::new(3, 0);
        let mut live = ring.resume(None).unwrap().live;
        // Commands 1 to 6 with 2, 0, 1, 2, 0, 0 events: at most 3 kept, a
        // command's whole.
        let mut replayed = Replayed::new(0, 3);
        for (seq, events) in (1..).zip([2, 0, 1, 2, 0, 0]) {
            replayed.keep(seq, (events > 0).then(|| many(seq, events)));
        }
        ring.restore(replayed);
        // 3 and 4 are kept (3 events); 1 went whole, with its 2; 2 told
        // nothing.
        assert!(ring.resume(Some(0)).is_err());
        assert_eq!(seqs(&ring.resume(Some(1)).unwrap().retained), [3, 4, 4]);
        assert_eq!(seqs(&ring.resume(Some(3)).unwrap().retained), [4, 4]);
        // Resumable up to the last record read, which told nothing.
        assert!(ring.resume(Some(6)).unwrap().retained.is_empty());
        // A standby keeps what it follows, and nobody is told live.
        ring.keep(7, Some(&command(7, 1)));
        ring.keep(8, None);
        assert_eq!(seqs(&ring.resume(Some(6)).unwrap().retained), [7]);
        assert!(ring.resume(Some(8)).is_ok());
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn a_new_term_carries_on_only_from_a_ring_that_saw_every_record() {
        let ring = EventRing::new(10, 0);
        ring.push(&command(1, 1));
        ring.keep(2, None);
        // Followed up to 2: a term opening after 2 keeps what it has.
        ring.continue_after(2);
        assert_eq!(seqs(&ring.resume(Some(0)).unwrap().retained), [1]);
        // A term opening after records it never saw starts over.
        ring.continue_after(5);
        assert!(ring.resume(Some(0)).is_err());
        assert!(ring.resume(Some(5)).unwrap().retained.is_empty());
    }
}
