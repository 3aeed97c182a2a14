//! Who watches the floor: the CTI connections subscribed to assignment
//! events, each with the agents, teams and queues it covers. An agent is
//! offered waiting contacts only while some watcher covers it, so an offer
//! is never made that nobody could receive; a callback or move for a queue
//! nobody watches is kept until a watcher of that queue connects, so no
//! parked caller is left without a ticket.

use std::collections::{BTreeMap, HashSet};

use chrono::Duration;

use super::event::{Assignment, Event};
use super::roster::Agent;
use super::{AgentIdx, AgentOffer, Engine, EngineError, Reservation};
use crate::model::{FastMap, Time};

/// How long a callback or move nobody could receive is kept for the next
/// watcher of its queue.
pub const UNDELIVERED_KEPT: Duration = Duration::hours(1);
/// Most callbacks and moves kept undelivered; past it the oldest is dropped
/// (and counted).
pub const MAX_UNDELIVERED: usize = 100_000;

/// What one watcher receives. Empty sets receive everything.
/// Events for an agent (offers, withdrawn offers) match by agent or team;
/// events without an agent (callbacks, moves at closing) match by the queue
/// the call is parked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatchFilter {
    /// Agent ids.
    pub agents: HashSet<String>,
    /// Team names.
    pub teams: HashSet<String>,
    /// Queue ids.
    pub queues: HashSet<String>,
}

impl WatchFilter {
    /// Whether the filter selects nothing, so everything passes.
    pub fn is_everything(&self) -> bool {
        self.agents.is_empty() && self.teams.is_empty() && self.queues.is_empty()
    }

    /// Whether events for the agent `id` of `team` pass.
    pub fn covers_agent(&self, id: &str, team: &str) -> bool {
        self.is_everything() || self.agents.contains(id) || self.teams.contains(team)
    }

    /// Whether events without an agent for a call parked at `queue` pass.
    pub fn covers_queue(&self, queue: &str) -> bool {
        self.is_everything() || self.queues.contains(queue)
    }
}

/// Identifies one watcher while it is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct WatchId(pub u64);

/// The watchers connected now, with how many cover each agent id, team and
/// queue, so whether anyone covers an agent is one lookup.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Watchers {
    next: u64,
    /// Watchers with an empty filter.
    everything: u32,
    filters: FastMap<WatchId, WatchFilter>,
    agents: FastMap<String, u32>,
    teams: FastMap<String, u32>,
    queues: FastMap<String, u32>,
}

fn count(map: &mut FastMap<String, u32>, keys: &HashSet<String>, up: bool) {
    for k in keys {
        if up {
            *map.entry(k.clone()).or_default() += 1;
        } else if let Some(n) = map.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                map.remove(k);
            }
        }
    }
}

#[cfg(test)]
fn sorted<T: Ord + std::fmt::Debug>(items: impl Iterator<Item = T>) -> String {
    let mut v: Vec<T> = items.collect();
    v.sort();
    format!("{v:?}")
}

impl Watchers {
    /// Everything the registry holds, canonical, for tests that compare
    /// two engines' states.
    #[cfg(test)]
    pub(super) fn fingerprint(&self) -> String {
        let filters = sorted(self.filters.iter().map(|(id, f)| {
            (
                id.0,
                sorted(f.agents.iter()),
                sorted(f.teams.iter()),
                sorted(f.queues.iter()),
            )
        }));
        format!(
            "{} {} {filters} {} {} {}",
            self.next,
            self.everything,
            sorted(self.agents.iter()),
            sorted(self.teams.iter()),
            sorted(self.queues.iter())
        )
    }

    /// Registers a watcher.
    pub fn add(&mut self, filter: WatchFilter) -> WatchId {
        self.next += 1;
        let id = WatchId(self.next);
        self.tally(&filter, true);
        self.filters.insert(id, filter);
        id
    }

    /// Forgets a watcher; its filter, if it was connected.
    pub fn remove(&mut self, id: WatchId) -> Option<WatchFilter> {
        let filter = self.filters.remove(&id)?;
        self.tally(&filter, false);
        Some(filter)
    }

    fn tally(&mut self, f: &WatchFilter, up: bool) {
        if f.is_everything() {
            if up {
                self.everything += 1;
            } else {
                self.everything -= 1;
            }
        }
        count(&mut self.agents, &f.agents, up);
        count(&mut self.teams, &f.teams, up);
        count(&mut self.queues, &f.queues, up);
    }

    /// Watchers connected.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Whether nobody watches.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Whether some watcher receives events for `agent`.
    pub fn cover(&self, agent: &Agent) -> bool {
        self.everything > 0
            || self.agents.contains_key(&*agent.id)
            || self.teams.contains_key(&*agent.team)
    }

    /// Whether some watcher receives callbacks and moves for calls parked
    /// at `queue`.
    pub fn cover_queue(&self, queue: &str) -> bool {
        self.everything > 0 || self.queues.contains_key(queue)
    }
}

/// Callbacks and moves that no watcher could receive when they were
/// decided, the latest per contact, oldest first, each with when.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Undelivered {
    next: u64,
    events: BTreeMap<u64, (Time, Event)>,
    by_contact: FastMap<String, u64>,
    /// Dropped at the cap or after [`UNDELIVERED_KEPT`].
    pub dropped: u64,
}

impl Undelivered {
    /// Everything kept, canonical, for tests that compare two engines'
    /// states.
    #[cfg(test)]
    pub(super) fn fingerprint(&self) -> String {
        format!(
            "{} {:?} {} {}",
            self.next,
            self.events,
            sorted(self.by_contact.iter()),
            self.dropped
        )
    }

    /// Keeps `event`, replacing what was kept for its contact (a callback
    /// after a move is what the contact is left with).
    fn keep(&mut self, at: Time, event: Event) {
        self.next += 1;
        if let Some(old) = self
            .by_contact
            .insert(event.contact_id().to_owned(), self.next)
        {
            self.events.remove(&old);
        }
        self.events.insert(self.next, (at, event));
        while self.events.len() > MAX_UNDELIVERED {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((seq, (_, e))) = self.events.pop_first() {
            if self.by_contact.get(e.contact_id()) == Some(&seq) {
                self.by_contact.remove(e.contact_id());
            }
            self.dropped += 1;
        }
    }

    /// Drops what was kept longer than [`UNDELIVERED_KEPT`].
    pub fn expire(&mut self, now: Time) {
        while self
            .events
            .first_key_value()
            .is_some_and(|(_, (at, _))| now - *at > UNDELIVERED_KEPT)
        {
            self.pop_oldest();
        }
    }

    /// Forgets what was kept for a contact that took a new hop or left.
    pub fn forget(&mut self, contact_id: &str) {
        if let Some(seq) = self.by_contact.remove(contact_id) {
            self.events.remove(&seq);
        }
    }

    /// Takes out the events `filter` passes, oldest first.
    fn take_for(&mut self, filter: &WatchFilter) -> Vec<Event> {
        let seqs: Vec<u64> = self
            .events
            .iter()
            .filter(|(_, (_, e))| e.passes(filter))
            .map(|(seq, _)| *seq)
            .collect();
        let mut taken = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some((_, e)) = self.events.remove(&seq) {
                self.by_contact.remove(e.contact_id());
                taken.push(e);
            }
        }
        taken
    }

    /// Events kept now.
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether none is kept.
    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Engine {
    /// Queues an event for the edge to stream. A callback or move that no
    /// connected watcher covers is also kept for the next watcher of its
    /// queue.
    pub(super) fn announce(&mut self, event: Event, now: Time) {
        let unwatched = match &event {
            Event::CallbackInstead { parked, .. } | Event::Moved { parked, .. } => {
                !self.watchers.cover_queue(&parked.queue_id)
            }
            Event::Assigned(_) | Event::Withdrawn { .. } => false,
        };
        if unwatched {
            self.undelivered.keep(now, event.clone());
        }
        self.events.push(event);
    }

    /// Registers a watcher: agents it covers are offered waiting contacts
    /// from now on. Returns its id and what it missed, oldest first: the
    /// offers still live for its agents (made before it connected), then
    /// the callbacks and moves of its queues that nobody could receive.
    /// Events decided by this call itself are not in that list; they are
    /// queued as usual. A queue the filter names need not exist: a reload
    /// may have removed it, and a CTI configured with it must still
    /// connect, to be told the callbacks of the contacts parked there.
    pub(super) fn watch(
        &mut self,
        filter: WatchFilter,
        now: Time,
    ) -> Result<(WatchId, Vec<Event>), EngineError> {
        self.advance(now);
        // Offers announced but not yet streamed reach the new watcher with
        // the stream: not twice.
        let pending: HashSet<_> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Assigned(a) => Some(a.offer.reservation),
                _ => None,
            })
            .collect();
        let mut live: Vec<&Reservation> = self
            .reservations
            .values()
            .filter(|r| r.waiter.is_some() && !pending.contains(&r.id))
            .filter(|r| {
                let agent = self.roster.agent(r.agent);
                filter.covers_agent(&agent.id, &agent.team)
            })
            .collect();
        live.sort_unstable_by_key(|r| r.id);
        let mut missed: Vec<Event> = live
            .into_iter()
            .filter_map(|r| self.live_offer(r, now))
            .collect();
        for e in self.undelivered.take_for(&filter) {
            if !self.events.contains(&e) {
                missed.push(e);
            }
        }
        let id = self.watchers.add(filter.clone());
        if !self.waiting.is_empty() {
            for a in 0..self.roster.len() as AgentIdx {
                let agent = self.roster.agent(a);
                if filter.covers_agent(&agent.id, &agent.team) {
                    self.dispatch(a, now);
                }
            }
        }
        Ok((id, missed))
    }

    /// A live offer of a waiting contact, as sent when it was made (its
    /// wait counted to now).
    fn live_offer(&self, r: &Reservation, now: Time) -> Option<Event> {
        let w = self.waiting.get(r.waiter?)?;
        let agent = self.roster.agent(r.agent);
        let queue = &self.policy.queues[self.policy.root(w.queue)];
        Some(Event::Assigned(Assignment {
            contact_id: r.contact_id.clone(),
            offer: AgentOffer {
                agent_id: agent.id.clone(),
                transfer_address: agent.transfer_address.clone(),
                queue_id: queue.id.clone(),
                reservation: r.id,
                expires_at: r.expires_at,
                interpreter_needed: r.interpreter_needed,
            },
            team: agent.team.clone(),
            parked: self.parked(w.parked),
            waited: (now - w.arrived).max(Duration::zero()),
            reoffer: w.passed_by(r.agent),
            verify_identity: w
                .verify_identity
                .then(|| self.policy.authenticate.verify_during_call.clone()),
        }))
    }

    /// Watchers connected now.
    pub fn watchers(&self) -> usize {
        self.watchers.len()
    }

    /// Callbacks and moves kept for a watcher that has not connected.
    pub fn undelivered(&self) -> usize {
        self.undelivered.len()
    }

    /// The process restarted: every watcher of the one before is gone with
    /// its connection, and offers out to their agents could not be seen.
    pub(super) fn restarted(&mut self, epoch: u32, now: Time) {
        // A new epoch: the log may have lost records whose counters this
        // start gives again (their ids it never will).
        self.epoch = epoch;
        self.ledger.begin(epoch);
        // First: what fell due while the process was down happened with
        // nobody watching (lapses are nobody's miss, callbacks are kept).
        self.watchers = Watchers {
            next: self.watchers.next,
            ..Watchers::default()
        };
        for r in self.reservations.values_mut() {
            if r.waiter.is_some() {
                r.unseen = true;
            }
        }
        self.advance(now);
    }

    /// A watcher disconnected. Offers out to agents nobody covers any more
    /// could not be seen: if one lapses it is not the agent's miss.
    pub(super) fn unwatch(&mut self, id: WatchId, now: Time) {
        self.advance(now);
        if self.watchers.remove(id).is_none() {
            return;
        }
        for r in self.reservations.values_mut() {
            if r.waiter.is_some() && !self.watchers.cover(self.roster.agent(r.agent)) {
                r.unseen = true;
            }
        }
    }
}
