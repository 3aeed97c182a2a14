//! Contacts waiting for an agent. Each (queue, channel) keeps its line in an
//! ordered set whose key is fixed at arrival yet orders by priority that
//! rises with wait: a contact's effective priority at time t is
//! `points + (t - arrival) / aging`, and sorting by
//! `arrival - points x aging` sorts by that for every t at once. The head of
//! a line is therefore its first entry, and nothing is re-sorted as time
//! passes.

use std::collections::BTreeSet;

use super::roster::AgentIdx;
use super::{DecisionId, ReservationId};
use crate::model::Time;
use crate::model::{Channel, FastMap, Urgency};
use crate::policy::{IntentIdx, QueueIdx};

/// Order in a line: the fixed sort value, then arrival sequence.
pub type WaitKey = (i64, u64);

const CHANNELS: usize = Channel::ALL.len();

/// One waiting contact.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Waiter {
    /// Arrival sequence, unique.
    pub seq: u64,
    /// Opaque contact reference.
    pub contact_id: String,
    /// The queue it waits in (a wider pool or an on-call queue, as it
    /// moves).
    pub queue: QueueIdx,
    /// The queue it joined, whose transfer address the call is parked at.
    pub parked: QueueIdx,
    /// The channel it came on.
    pub channel: Channel,
    /// Language tag, if the contact gave one.
    pub language: Option<String>,
    /// Its intent, for callback terms if the queue closes.
    pub intent: IntentIdx,
    /// Its urgency.
    pub urgency: Urgency,
    /// It went on before the caller's identity was verified (an urgent
    /// clinical contact): the agent it is offered to verifies it.
    pub verify_identity: bool,
    /// When it started waiting.
    pub arrived: Time,
    /// When it leaves the line for a callback if still in it (the wait
    /// limit of the queue it joined, or was moved to at a closing).
    pub deadline: Time,
    /// Its place in line.
    pub key: WaitKey,
    /// The decision that queued it.
    pub decision: DecisionId,
    /// Agents not offered this contact before a time: the transferring
    /// agent never ([`NEVER`]); an agent who let its offer time out or
    /// rejected it, not before the policy's cool-down has passed.
    pub exclude: Vec<(AgentIdx, Time)>,
    /// The live offer of this contact, when one is out.
    pub offer: Option<ReservationId>,
}

/// The end of an exclusion that never ends.
pub const NEVER: Time = Time::MAX_UTC;

impl Waiter {
    /// Whether `agent` may not be offered this contact at `now`.
    pub fn excludes(&self, agent: AgentIdx, now: Time) -> bool {
        self.exclude
            .iter()
            .any(|&(a, until)| a == agent && until > now)
    }

    /// Whether `agent` passed on this contact before.
    pub fn passed_by(&self, agent: AgentIdx) -> bool {
        self.exclude.iter().any(|&(a, _)| a == agent)
    }
}

/// Every line, every waiting contact.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct WaitingRoom {
    lines: Vec<[BTreeSet<WaitKey>; CHANNELS]>,
    waiters: FastMap<u64, Waiter>,
    by_contact: FastMap<String, u64>,
    /// Every waiting contact's deadline: a waiting contact holds exactly
    /// one entry, so the index never outgrows the room.
    deadlines: BTreeSet<(Time, u64)>,
    counts: Vec<u32>,
    next: u64,
    /// Whether a line (a queue's, on one channel) went from empty to not, or
    /// a contact moved between lines, since the engine last took it (inside
    /// one command; always false between).
    #[serde(skip)]
    touched: bool,
}

impl WaitingRoom {
    /// An empty room for `queues` queues.
    pub fn new(queues: usize) -> WaitingRoom {
        WaitingRoom {
            lines: (0..queues).map(|_| Default::default()).collect(),
            counts: vec![0; queues],
            ..WaitingRoom::default()
        }
    }

    /// Queues the room keeps lines for.
    pub fn queue_count(&self) -> usize {
        self.lines.len()
    }

    /// The next arrival sequence number.
    pub fn next_seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// The last arrival sequence number handed out.
    pub fn last_seq(&self) -> u64 {
        self.next
    }

    /// Contacts waiting in `queue` (not counting those with an offer out).
    pub fn count(&self, queue: QueueIdx) -> u32 {
        self.counts.get(queue).copied().unwrap_or(0)
    }

    /// Contacts in (`queue`, `channel`)'s line with no offer out.
    pub fn line_len(&self, queue: QueueIdx, channel: Channel) -> u32 {
        self.lines[queue][channel.index()].len() as u32
    }

    /// Contacts waiting, all queues.
    pub fn len(&self) -> usize {
        self.by_contact.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.by_contact.is_empty()
    }

    /// Whether a line went from empty to not, or a contact moved between
    /// lines, since the last call.
    pub fn take_touched(&mut self) -> bool {
        std::mem::take(&mut self.touched)
    }

    /// Puts `key` in `queue`'s line on `channel`, counting it; a line that
    /// was empty is news (nobody may be staffed for it).
    fn line_up(&mut self, queue: QueueIdx, channel: Channel, key: WaitKey) {
        let line = &mut self.lines[queue][channel.index()];
        let was_empty = line.is_empty();
        if line.insert(key) {
            self.touched |= was_empty;
            self.counts[queue] += 1;
        }
    }

    /// Puts a contact in its line (unless an offer of it is out).
    pub fn enter(&mut self, waiter: Waiter) {
        if waiter.offer.is_none() {
            self.line_up(waiter.queue, waiter.channel, waiter.key);
        }
        self.by_contact
            .insert(waiter.contact_id.clone(), waiter.seq);
        self.deadlines.insert((waiter.deadline, waiter.seq));
        self.waiters.insert(waiter.seq, waiter);
    }

    /// Everything the room holds, canonical, for tests that compare two
    /// engines' states.
    #[cfg(test)]
    pub fn fingerprint(&self) -> String {
        let mut waiters: Vec<_> = self.waiters.iter().collect();
        waiters.sort_by_key(|(seq, _)| **seq);
        let mut by_contact: Vec<_> = self.by_contact.iter().collect();
        by_contact.sort();
        format!(
            "{:?}\n{waiters:?}\n{by_contact:?}\n{:?} {} {:?}",
            self.lines, self.counts, self.next, self.deadlines
        )
    }

    /// Entries in the deadline index.
    #[cfg(test)]
    pub fn deadline_count(&self) -> usize {
        self.deadlines.len()
    }

    /// The earliest deadline, if anyone waits.
    pub fn next_deadline(&self) -> Option<Time> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Takes the first contact whose deadline has come by `now` off the
    /// deadline index, and returns it.
    pub fn pop_due(&mut self, now: Time) -> Option<u64> {
        match self.deadlines.first() {
            Some(&(t, seq)) if t <= now => {
                self.deadlines.pop_first();
                Some(seq)
            }
            _ => None,
        }
    }

    /// The 1-based position `key` takes (or holds) in a line: contacts
    /// ahead of it, plus one. Walks in from both ends at once and stops at the key, so
    /// the usual arrival at the back (or an urgent one near the front)
    /// costs a step or two, and no arrival walks more than half the line.
    pub fn position_of(&self, queue: QueueIdx, channel: Channel, key: WaitKey) -> u32 {
        let line = &self.lines[queue][channel.index()];
        let mut ahead = line.range(..key);
        let mut behind = line.range(key..).rev();
        let mut steps = 0usize;
        loop {
            match (ahead.next(), behind.next()) {
                (None, _) => return steps as u32 + 1,
                // Everything from the key on (the key itself, if in the
                // line) is behind: the rest is ahead.
                (_, None) => return (line.len() - steps) as u32 + 1,
                _ => steps += 1,
            }
        }
    }

    /// The first entry of a line.
    pub fn line_first(&self, queue: QueueIdx, channel: Channel) -> Option<&WaitKey> {
        self.lines[queue][channel.index()].first()
    }

    /// A waiting contact to change.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut Waiter> {
        self.waiters.get_mut(&seq)
    }

    /// Moves a contact in line to another queue's line, keeping its place
    /// by priority and age.
    pub fn move_to(&mut self, seq: u64, queue: QueueIdx) {
        let in_line = self.step_out(seq).map(|w| w.offer.is_none());
        let Some(w) = self.waiters.get_mut(&seq) else {
            return;
        };
        w.queue = queue;
        let (channel, key) = (w.channel, w.key);
        self.touched = true;
        if in_line == Some(true) {
            self.line_up(queue, channel, key);
        }
    }

    /// Sets when a waiting contact leaves the line if still in it.
    pub fn set_deadline(&mut self, seq: u64, deadline: Time) {
        let Some(w) = self.waiters.get_mut(&seq) else {
            return;
        };
        self.deadlines.remove(&(w.deadline, seq));
        w.deadline = deadline;
        self.deadlines.insert((deadline, seq));
    }

    /// Empties the room for a policy of `queues` queues and hands back
    /// every waiting contact in arrival order. Arrival numbers carry on, so
    /// no later arrival can take an earlier one's number.
    pub fn reset(&mut self, queues: usize) -> Vec<Waiter> {
        let next = self.next;
        let old = std::mem::replace(self, WaitingRoom::new(queues));
        self.next = next;
        let mut waiters: Vec<Waiter> = old.waiters.into_values().collect();
        waiters.sort_unstable_by_key(|w| w.seq);
        waiters
    }

    /// Drops a removed agent from every contact's exclusions (its slot is
    /// reused by the next agent added).
    pub fn forget_agent(&mut self, agent: AgentIdx) {
        for w in self.waiters.values_mut() {
            w.exclude.retain(|&(a, _)| a != agent);
        }
    }

    /// Every waiting contact, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Waiter> {
        self.waiters.values()
    }

    /// Takes a contact out of its line, keeping its record (an offer is out).
    pub fn step_out(&mut self, seq: u64) -> Option<&mut Waiter> {
        let w = self.waiters.get_mut(&seq)?;
        if self.lines[w.queue][w.channel.index()].remove(&w.key) {
            self.counts[w.queue] -= 1;
        }
        Some(w)
    }

    /// Puts a contact whose offer failed back at its own place (the head, if
    /// it waited longest), not to be offered to `missed_by` again before
    /// the time given with it.
    pub fn step_back(&mut self, seq: u64, missed_by: Option<(AgentIdx, Time)>) -> Option<&Waiter> {
        let w = self.waiters.get_mut(&seq)?;
        w.offer = None;
        if let Some((a, until)) = missed_by {
            match w.exclude.iter_mut().find(|(x, _)| *x == a) {
                Some(e) => e.1 = e.1.max(until),
                None => w.exclude.push((a, until)),
            }
        }
        let (queue, channel, key) = (w.queue, w.channel, w.key);
        self.line_up(queue, channel, key);
        self.waiters.get(&seq)
    }

    /// Forgets a contact entirely (assigned, cancelled or called back).
    pub fn leave(&mut self, seq: u64) -> Option<Waiter> {
        self.step_out(seq);
        let w = self.waiters.remove(&seq)?;
        self.by_contact.remove(&w.contact_id);
        self.deadlines.remove(&(w.deadline, seq));
        Some(w)
    }

    /// A waiting contact by its contact id.
    pub fn find(&self, contact_id: &str) -> Option<&Waiter> {
        self.by_contact
            .get(contact_id)
            .and_then(|s| self.waiters.get(s))
    }

    /// A waiting contact by sequence.
    pub fn get(&self, seq: u64) -> Option<&Waiter> {
        self.waiters.get(&seq)
    }

    /// The first contact of a line that `agent` may be offered at `now`.
    pub fn head_for(
        &self,
        queue: QueueIdx,
        channel: Channel,
        agent: AgentIdx,
        now: Time,
    ) -> Option<WaitKey> {
        self.lines[queue][channel.index()]
            .iter()
            .find(|k| {
                self.waiters
                    .get(&k.1)
                    .is_some_and(|w| !w.excludes(agent, now))
            })
            .copied()
    }

    /// The sequence numbers in `queue`'s line on `channel`, in line order.
    pub fn in_line(&self, queue: QueueIdx, channel: Channel) -> impl Iterator<Item = u64> + '_ {
        self.lines[queue][channel.index()].iter().map(|k| k.1)
    }

    /// The sequence numbers waiting in `queue`, in no order (for closing a
    /// queue and for views).
    pub fn in_queue(&self, queue: QueueIdx) -> Vec<u64> {
        self.lines[queue]
            .iter()
            .flat_map(|line| line.iter().map(|k| k.1))
            .collect()
    }

    /// The longest wait among contacts in `queue`'s lines.
    pub fn longest_wait(&self, queue: QueueIdx, now: Time) -> chrono::Duration {
        self.lines[queue]
            .iter()
            .flat_map(|line| line.iter())
            .filter_map(|k| self.waiters.get(&k.1))
            .map(|w| now - w.arrived)
            .max()
            .unwrap_or_else(chrono::Duration::zero)
    }
}
