//! Live queueing: contacts wait when their queue is open and staffed but no
//! agent is free, and an agent who frees up is offered the best waiting
//! contact across every queue it serves (priority, which rises with wait,
//! then age). Offers of waiting contacts go only to agents some watcher
//! covers. An offer that times out or is rejected puts the contact back at
//! its own place in line, not offered to that agent again before the
//! policy's `reoffer_after`; an agent who lets too many offers it could
//! have seen time out in a row is set not-responding. Nobody waits
//! forever: a contact past its queue's `max_wait_in_line`, or in a line no
//! agent is logged in to serve, leaves with a callback; a queue that closes
//! hands its waiting contacts to its closed action.
//!
//! Assignments, withdrawn offers, moves and callbacks decided here, outside
//! any request, are queued as [`Event`]s for the edge to stream, and each
//! adds a hop to the contact's path.

use chrono::Duration;

use super::event::{Assignment, Event, Notice, Notices, Parked, Withdrawal};
use super::stats::QueueStats;
use super::waiting::{NEVER, Waiter};
use super::{
    AgentIdx, CallbackOffer, DecisionId, Engine, EngineError, Fate, Hop, HopKind, Reservation,
    ReservationId, Slot, Timer, ewt,
};
use crate::model::{AgentState, CallbackReason, Channel, Contact, Time, Urgency};
use crate::policy::{Policy, QueueIdx, Resolved, Text};

/// Priority points of an urgent contact: with the default aging of one point
/// a minute, an urgent contact goes ahead of routine ones that have waited
/// up to five minutes longer.
const URGENT_POINTS: i64 = 5;
/// Passes of one sweep over the lines at most: the second looks at callers
/// the first moved to an on-call line, and a third never has anything to do.
const SWEEP_PASSES: usize = 3;
/// How long a line may have nobody logged in to serve it before its
/// contacts get callbacks: rides out a CTI's offline-then-available reset
/// and a shift change.
pub const UNSTAFFED_GRACE: Duration = Duration::seconds(10);

/// Where a contact stands now.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactStatus {
    /// It waits in line.
    Waiting {
        /// Where the call is parked.
        parked: Parked,
        /// The queue it waits for (the one offering it, after a move).
        queue_id: Text,
        /// 1-based rank in line now, by priority; 1 while an offer is out.
        position: u32,
        /// Estimated wait from now (zero while an offer is out).
        estimated_wait: Duration,
        /// How long it has waited.
        waited: Duration,
        /// The agent offered it and the reservation, while an offer is out.
        offered: Option<(Text, ReservationId)>,
    },
    /// It does not wait: the last hop of its path.
    Done(Hop),
}

/// The answer for a contact that waits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueuedOffer {
    /// Where it waits.
    pub queue_id: Text,
    /// Where the telephony platform parks the call meanwhile.
    pub transfer_address: Text,
    /// 1-based rank in its line now, by priority (which rises with wait),
    /// not by arrival.
    pub position: u32,
    /// Estimated wait.
    pub estimated_wait: Duration,
}

impl Engine {
    /// Events decided since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// What the last command changed by itself beside its events, in the
    /// order they came; each command starts with none. Take them with its
    /// events.
    pub fn take_notices(&mut self) -> Notices {
        Notices {
            list: std::mem::take(&mut self.notices),
            ahead: self.ahead.unwrap_or_default(),
        }
    }

    /// Marks where the command's own change falls among what it set off:
    /// what came before is told ahead of it.
    pub(super) fn acts_from_here(&mut self) {
        self.ahead = Some((
            self.events.len().saturating_sub(self.events_before),
            self.notices.len(),
        ));
    }

    /// Notes what careroute changed by itself, after the events so far.
    pub(super) fn notice(&mut self, notice: Notice) {
        self.notices
            .push((self.events.len().saturating_sub(self.events_before), notice));
    }

    /// Notes that careroute itself set agent `a`'s state.
    pub(super) fn noticed_state(&mut self, a: AgentIdx) {
        let agent = self.roster.agent(a);
        let notice = Notice::State {
            agent_id: agent.id.clone(),
            state: agent.state,
        };
        self.notice(notice);
    }

    /// Contacts waiting in all queues, including those with an offer out.
    pub fn waiting_contacts(&self) -> usize {
        self.waiting.len()
    }

    /// Estimated wait for 1-based `position` in `queue`, over every
    /// channel: the time for its staffed agents to free up that many times
    /// ([`ewt`]).
    pub(super) fn estimated_wait(&self, queue: QueueIdx, position: u32) -> Duration {
        self.wait_for(queue, self.roster.pool(queue).staffed, position)
    }

    /// Estimated wait for 1-based `position` in the line on `channel` of
    /// `pool` (a queue, or a relaxation step's wider pool): the agents that
    /// pool reaches on that channel serve it, at its queue's handle time.
    pub(super) fn line_wait(&self, pool: QueueIdx, channel: Channel, position: u32) -> Duration {
        let agents = self.roster.pool(pool).staffed_on(channel);
        self.wait_for(self.policy.root(pool), agents, position)
    }

    /// The time for `agents` of `queue` to free up `position` times.
    fn wait_for(&self, queue: QueueIdx, agents: u32, position: u32) -> Duration {
        let q = &self.policy.queues[queue];
        let handle = self.stats[queue].handle_estimate(q.handle_time);
        let secs = ewt::estimated_wait(position, agents, handle);
        Duration::milliseconds((secs * 1000.0).min(1e12) as i64)
    }

    /// Contacts in line on `channel` in the wider pools of `root` from its
    /// step `from` on: they waited longer, so they are ahead.
    fn ahead_in_wider_pools(&self, root: QueueIdx, from: usize, channel: Channel) -> u32 {
        self.policy.queues[root]
            .steps
            .iter()
            .skip(from)
            .map(|s| self.waiting.line_len(s.pool, channel))
            .sum()
    }

    /// Puts a contact in its queue's line, or says why not (a callback
    /// reason): waiting disabled, the line full, or the wait too long.
    pub(super) fn enqueue(
        &mut self,
        queue: QueueIdx,
        contact: &Contact,
        facts: Resolved,
        decision: DecisionId,
        verify_identity: bool,
        now: Time,
    ) -> Result<QueuedOffer, CallbackReason> {
        let q = &self.policy.queues[queue];
        if q.max_waiting == 0 {
            return Err(CallbackReason::NoAgentAvailable);
        }
        if self.line_count(queue) >= q.max_waiting {
            return Err(CallbackReason::QueueFull);
        }
        let points = if contact.urgency == Urgency::Urgent {
            URGENT_POINTS
        } else {
            0
        } + i64::from(5 - self.policy.intents[facts.intent].callback_priority.min(5));
        let aging = self
            .policy
            .priority_aging
            .num_microseconds()
            .unwrap_or(i64::MAX);
        let seq = self.waiting.next_seq();
        let key = (
            now.timestamp_micros()
                .saturating_sub(points.saturating_mul(aging)),
            seq,
        );
        let position = self.waiting.position_of(queue, contact.channel, key)
            + self.ahead_in_wider_pools(queue, 0, contact.channel);
        let estimated_wait = self.line_wait(queue, contact.channel, position);
        let q = &self.policy.queues[queue];
        if estimated_wait > q.max_wait {
            return Err(CallbackReason::WaitTooLong);
        }
        let exclude = contact
            .transfer_from
            .as_ref()
            .and_then(|t| t.agent_id.as_deref())
            .and_then(|id| self.roster.find(id))
            .map(|a| (a, NEVER))
            .into_iter()
            .collect();
        let offer = QueuedOffer {
            queue_id: q.id.clone(),
            transfer_address: q.transfer_address.clone(),
            position,
            estimated_wait,
        };
        self.stats[queue].observe_arrival();
        let waiter = Waiter {
            seq,
            contact_id: contact.contact_id.clone(),
            queue,
            parked: queue,
            channel: contact.channel,
            language: contact.language.clone(),
            intent: facts.intent,
            urgency: contact.urgency,
            verify_identity,
            arrived: now,
            deadline: now + self.policy.queues[queue].max_wait_in_line,
            key,
            decision,
            exclude,
            offer: None,
        };
        let timers: Vec<_> = step_timers_of(&self.policy, &waiter, now)
            .map(std::cmp::Reverse)
            .collect();
        self.timers.extend(timers);
        self.waiting.enter(waiter);
        Ok(offer)
    }

    /// Where a contact stands now, for an IVR's in-queue announcement: if
    /// it waits, its current rank (by priority, as the line orders it), a
    /// refreshed estimate and any offer out; otherwise its last hop. `None`
    /// for a contact careroute does not know (or has forgotten). A view: it
    /// applies nothing (apply a [`super::Tick`] first).
    pub fn contact_status(&self, contact_id: &str) -> Option<ContactStatus> {
        let now = self.now.unwrap_or(Time::UNIX_EPOCH);
        let Some(w) = self.waiting.find(contact_id) else {
            return self
                .path(contact_id)
                .and_then(|hops| hops.last())
                .cloned()
                .map(ContactStatus::Done);
        };
        let (queue, channel, key, arrived, parked, offer) =
            (w.queue, w.channel, w.key, w.arrived, w.parked, w.offer);
        let root = self.policy.root(queue);
        let position = match offer {
            Some(_) => 1,
            None => {
                self.waiting.position_of(queue, channel, key)
                    + self.ahead_in_wider_pools(root, self.policy.step_rank(queue), channel)
            }
        };
        let estimated_wait = match offer {
            Some(_) => Duration::zero(),
            None => self.line_wait(queue, channel, position),
        };
        let offered = offer.and_then(|id| {
            let r = self.reservations.get(&id)?;
            Some((self.roster.agent(r.agent).id.clone(), id))
        });
        Some(ContactStatus::Waiting {
            parked: self.parked(parked),
            queue_id: self.policy.queues[root].id.clone(),
            position,
            estimated_wait,
            waited: (now - arrived).max(Duration::zero()),
            offered,
        })
    }

    /// Contacts waiting for `queue`, in its own line and its wider pools.
    pub(super) fn line_count(&self, queue: QueueIdx) -> u32 {
        self.policy
            .pools_of(queue)
            .map(|p| self.waiting.count(p))
            .sum()
    }

    /// Where a contact that joined `queue` is parked.
    pub(super) fn parked(&self, queue: QueueIdx) -> Parked {
        let q = &self.policy.queues[self.policy.root(queue)];
        Parked {
            queue_id: q.id.clone(),
            transfer_address: q.transfer_address.clone(),
        }
    }

    /// Adds a hop to a waiting contact's path: something that happened to
    /// it in line, under the decision that queued it.
    fn line_hop(&mut self, w: LineHop<'_>, kind: HopKind, now: Time) {
        let root = self.policy.root(w.queue);
        let hop = Hop {
            decision: w.decision,
            at: now,
            kind,
            rule_id: None,
            queue_id: Some(self.policy.queues[root].id.clone()),
            agent_id: w.agent,
            from_queue_id: w.from.map(|f| self.policy.queues[f].id.clone()),
            reservation: w.reservation,
        };
        self.push_hop(w.contact_id, hop, now);
    }

    /// A waiting contact's relaxation step is due: it moves to the wider
    /// pool (unless it was moved elsewhere, to an on-call queue, or left)
    /// and is offered to any agent of that pool who is free.
    pub(super) fn relax(&mut self, seq: u64, pool: QueueIdx, now: Time) {
        let Some(w) = self.waiting.get(seq) else {
            return;
        };
        let (current, channel) = (w.queue, w.channel);
        // Only forward along its own queue's steps: a step it has already
        // passed (timers re-made at a reload) or another queue's does nothing.
        if self.policy.root(current) != self.policy.root(pool)
            || self.policy.step_rank(pool) <= self.policy.step_rank(current)
        {
            return;
        }
        let (contact_id, decision) = (w.contact_id.clone(), w.decision);
        self.waiting.move_to(seq, pool);
        let step = self.policy.step_rank(pool) as u32;
        let hop = LineHop::new(&contact_id, decision, pool);
        self.line_hop(hop, HopKind::Stepped(step), now);
        self.dispatch_line(pool, channel, now);
    }

    /// Offers free agent `a` the best waiting contacts it can take, across
    /// every queue it serves, until it has no free capacity or none fits.
    /// Only an agent some watcher covers is offered anything. Reads the
    /// head of one line per (queue, channel): no scan of the waiting
    /// contacts or the roster. An agent with an offer lapsing among the
    /// timers due is only noted, and offered once they have all fired.
    pub(super) fn dispatch(&mut self, a: AgentIdx, now: Time) {
        if self.lapsing.contains_key(&a) {
            if !self.held.contains(&a) {
                self.held.push(a);
            }
            return;
        }
        if self.waiting.is_empty() || !self.watchers.cover(self.roster.agent(a)) {
            return;
        }
        loop {
            let agent = self.roster.agent(a);
            let free = agent.free_channels(self.roster.blocks());
            if free.0 == 0 {
                return;
            }
            let mut best: Option<((i64, u64), QueueIdx, Channel)> = None;
            for &q in &agent.queues {
                let takes = self.policy.queues[q].channels;
                for c in Channel::ALL {
                    if !(free.contains(c) && takes.contains(c)) {
                        continue;
                    }
                    if let Some(key) = self.waiting.head_for(q, c, a, now)
                        && best.is_none_or(|(k, _, _)| key < k)
                    {
                        best = Some((key, q, c));
                    }
                }
            }
            let Some((key, _, _)) = best else { return };
            self.assign(key.1, a, now);
        }
    }

    /// After a contact steps back into (`queue`, `channel`)'s line, offers
    /// free agents of that line the best contacts they may take. Free agents
    /// exist here only if every contact in line excludes them or nobody
    /// watches them, so the walk is short; it stops as soon as the line is
    /// empty.
    pub(super) fn dispatch_line(&mut self, queue: QueueIdx, channel: Channel, now: Time) {
        if self.watchers.is_empty() || self.waiting.line_first(queue, channel).is_none() {
            return;
        }
        for a in self.roster.free_in(queue, channel) {
            if self.waiting.line_first(queue, channel).is_none() {
                return;
            }
            self.dispatch(a, now);
        }
    }

    /// Reserves agent `a` for waiting contact `seq` and queues the event.
    fn assign(&mut self, seq: u64, a: AgentIdx, now: Time) {
        let Some(w) = self.waiting.step_out(seq) else {
            return;
        };
        let (queue, parked, channel, contact_id, arrived, decision) = (
            w.queue,
            w.parked,
            w.channel,
            w.contact_id.clone(),
            w.arrived,
            w.decision,
        );
        let reoffer = w.passed_by(a);
        let verify_identity = w
            .verify_identity
            .then(|| self.policy.authenticate.verify_during_call.clone());
        // A contact without a language speaks the policy's, as a route
        // reads it.
        let language = w
            .language
            .as_deref()
            .unwrap_or(&self.policy.default_language);
        let speaks = self
            .roster
            .speakers_of(language)
            .any(|id| self.roster.agent(a).languages.contains(&id));
        let slot = Slot {
            queue,
            contact_id: &contact_id,
            channel,
            waiter: Some(seq),
        };
        let pick = super::Pick {
            agent: a,
            interpreter_needed: !speaks,
        };
        let offer = self.reserve(pick, slot, now);
        if let Some(w) = self.waiting.get_mut(seq) {
            w.offer = Some(offer.reservation);
        }
        let mut hop = LineHop::new(&contact_id, decision, queue);
        hop.agent = Some(offer.agent_id.clone());
        hop.reservation = Some(offer.reservation);
        self.line_hop(hop, HopKind::Assigned, now);
        let team = self.roster.agent(a).team.clone();
        let parked = self.parked(parked);
        self.events.push(Event::Assigned(Assignment {
            contact_id,
            offer,
            team,
            parked,
            waited: (now - arrived).max(Duration::zero()),
            reoffer,
            verify_identity,
        }));
    }

    /// A waiting contact's offer was confirmed: it leaves the line answered.
    pub(super) fn answered(&mut self, seq: u64, now: Time) {
        if let Some(w) = self.waiting.leave(seq) {
            if !self.undelivered.is_empty() {
                self.undelivered.forget(&w.contact_id);
            }
            let stats = &mut self.stats[self.policy.root(w.queue)];
            stats.answered += 1;
            if now - w.arrived <= self.policy.queues[w.queue].service_level {
                stats.answered_in_time += 1;
            }
        }
    }

    /// A waiting contact's offer lapsed or was released: it goes back to
    /// its own place in line, and the agent may not have it again before
    /// the cool-down, unless nobody could have seen the offer. A contact
    /// past its wait limit leaves with a callback instead.
    pub(super) fn offer_failed(&mut self, seq: u64, r: &Reservation, fate: Fate, now: Time) {
        // A rejection is the agent's pass even on an offer it was resent; a
        // lapse nobody could see, or a failed transfer, is not.
        let passed = match fate {
            Fate::Released(reason) => reason.passed(),
            _ => !r.unseen,
        }
        .then(|| (r.agent, now + self.policy.reoffer_after));
        let Some(w) = self.waiting.step_back(seq, passed) else {
            return;
        };
        let (queue, deadline, decision) = (w.queue, w.deadline, w.decision);
        let contact_id = w.contact_id.clone();
        let mut hop = LineHop::new(&contact_id, decision, queue);
        hop.agent = Some(self.roster.agent(r.agent).id.clone());
        hop.reservation = Some(r.id);
        self.line_hop(hop, fate.hop_kind(), now);
        if let Some((a, until)) = passed {
            self.timers
                .push(std::cmp::Reverse((until, Timer::Reoffer(a))));
        }
        if now >= deadline {
            self.call_back(seq, CallbackReason::WaitTooLong, now);
            return;
        }
        // Its queue may have moved on (a relaxation step) while the offer
        // was out: re-offer it from where it now waits.
        self.dispatch_line(queue, r.channel, now);
    }

    /// The caller hung up while its offer rang: the contact leaves its
    /// line, counted as abandoned, as if cancelled.
    pub(super) fn hung_up(&mut self, seq: u64, r: &Reservation, now: Time) {
        let Some(w) = self.waiting.leave(seq) else {
            return;
        };
        self.stats[self.policy.root(w.queue)].abandoned += 1;
        let mut hop = LineHop::new(&w.contact_id, w.decision, w.queue);
        hop.agent = Some(self.roster.agent(r.agent).id.clone());
        hop.reservation = Some(r.id);
        self.line_hop(hop, HopKind::Cancelled, now);
        if !self.undelivered.is_empty() {
            self.undelivered.forget(&w.contact_id);
        }
    }

    /// Contacts whose wait limit has come leave their line with a
    /// callback. One with an offer out keeps it, and is checked again if
    /// the offer fails.
    pub(super) fn wait_limits(&mut self, now: Time) {
        while let Some(seq) = self.waiting.pop_due(now) {
            if self.waiting.get(seq).is_some_and(|w| w.offer.is_none()) {
                self.call_back(seq, CallbackReason::WaitTooLong, now);
            }
        }
    }

    /// A contact in line leaves it for a callback ticket owned by the queue
    /// it waits for, announced on the stream.
    fn call_back(&mut self, seq: u64, reason: CallbackReason, now: Time) {
        let Some(w) = self.waiting.leave(seq) else {
            return;
        };
        let root = self.policy.root(w.queue);
        self.stats[root].callbacks += 1;
        let callback = CallbackOffer::new(&self.policy, root, reason, w.intent, w.urgency, now);
        self.called_back(w, callback, now);
    }

    /// Records that `w`, out of its line, got `callback`: a hop in its path
    /// and the event on the stream.
    fn called_back(&mut self, w: Waiter, callback: CallbackOffer, now: Time) {
        self.line_hop(
            LineHop::new(&w.contact_id, w.decision, w.queue),
            HopKind::CalledBack(callback.reason),
            now,
        );
        let parked = self.parked(w.parked);
        let event = Event::CallbackInstead {
            contact_id: w.contact_id,
            parked,
            callback,
            waited: (now - w.arrived).max(Duration::zero()),
        };
        self.announce(event, now);
    }

    /// An offer to `a` timed out: after the policy's number in a row the
    /// agent is set not-responding and offered nothing more.
    pub(super) fn missed_offer(&mut self, a: AgentIdx) {
        let limit = self.policy.missed_offers_to_pause;
        let paused = self.roster.update(a, |agent| {
            agent.missed_offers += 1;
            let pause = agent.missed_offers >= limit && agent.state == AgentState::Available;
            if pause {
                agent.state = AgentState::NotResponding;
                agent.paused_for_misses = true;
            }
            pause
        });
        if paused {
            self.noticed_state(a);
        }
    }

    /// Takes a contact out of any line; an offer it has out is withdrawn
    /// (announced on the stream) and its agent freed.
    pub(super) fn withdraw(&mut self, contact_id: &str, why: Withdrawal, now: Time) {
        if let Some(agent) = self.withdraw_from_line(contact_id, why, now) {
            self.dispatch(agent, now);
        }
    }

    /// [`Engine::withdraw`], leaving the agent its offer freed (if any) to
    /// the caller to dispatch: a contact routed again is decided before the
    /// agent it was offered goes to anyone else.
    pub(super) fn withdraw_from_line(
        &mut self,
        contact_id: &str,
        why: Withdrawal,
        now: Time,
    ) -> Option<AgentIdx> {
        let (seq, offer) = self.waiting.find(contact_id).map(|w| (w.seq, w.offer))?;
        self.waiting.leave(seq);
        let r = self.free_slot(offer?, Fate::Withdrawn, now)?;
        self.counters.released += 1;
        self.withdrawn(&r, why);
        Some(r.agent)
    }

    /// Announces that reservation `r`, an offer on the stream, is void.
    fn withdrawn(&mut self, r: &Reservation, reason: Withdrawal) {
        let agent = self.roster.agent(r.agent);
        self.events.push(Event::Withdrawn {
            contact_id: r.contact_id.clone(),
            agent_id: agent.id.clone(),
            team: agent.team.clone(),
            reservation: r.id,
            reason,
        });
    }

    /// The caller hung up while waiting: the contact leaves its line (and
    /// any offer out is withdrawn), counted as abandoned.
    pub(super) fn cancel(&mut self, contact_id: &str, now: Time) -> Result<(), EngineError> {
        self.advance(now);
        let (queue, decision) = self
            .waiting
            .find(contact_id)
            .map(|w| (w.queue, w.decision))
            .ok_or_else(|| EngineError::NotWaiting(contact_id.to_owned()))?;
        self.withdraw(contact_id, Withdrawal::Cancelled, now);
        self.undelivered.forget(contact_id);
        self.stats[self.policy.root(queue)].abandoned += 1;
        self.line_hop(
            LineHop::new(contact_id, decision, queue),
            HopKind::Cancelled,
            now,
        );
        Ok(())
    }

    /// Sweeps the lines: when one fills or moves, when who staffs them
    /// changes, and when the last sweep said (a closing, a grace ending).
    /// A closed queue hands its waiting contacts to its closed action:
    /// urgent ones to the on-call queue if it is open, the rest to a
    /// callback from the next opening. A line nobody has been logged in to
    /// serve (in it or any wider pool still ahead of it) with room on their
    /// channel for [`UNSTAFFED_GRACE`] hands those contacts to a callback
    /// (`no_agents_staffed`). Contacts with an offer out keep it. Sets when
    /// the next sweep is due.
    pub(super) fn sweep_lines(&mut self, now: Time) {
        // Whatever brought the sweep here, it looks at every line now.
        self.take_touched();
        // Urgent callers a closing moved to an on-call line (perhaps one
        // already passed) are looked at again at once; an on-call queue is
        // open, so a second pass moves nobody.
        for _ in 0..SWEEP_PASSES {
            self.sweep_pass(now);
            if !self.take_touched() {
                return;
            }
        }
        self.sweep_due = Some(now);
    }

    /// One look at every line; sets when the next sweep is due.
    fn sweep_pass(&mut self, now: Time) {
        let mut due: Option<Time> = None;
        let mut due_at = |at: Time| due = Some(due.map_or(at, |d| d.min(at)));
        for q in 0..self.policy.queues.len() {
            if self.waiting.count(q) == 0 {
                self.unstaffed_since[q] = None;
                continue;
            }
            if !self.policy.is_open(q, now) {
                self.close_line(q, now);
                continue;
            }
            if let Some(at) = self.policy.next_close(q, now) {
                due_at(at);
            }
            let unserved = self.unserved(q);
            if unserved.is_empty() {
                self.unstaffed_since[q] = None;
                continue;
            }
            let since = *self.unstaffed_since[q].get_or_insert(now);
            if now - since >= UNSTAFFED_GRACE {
                for seq in unserved {
                    self.call_back(seq, CallbackReason::NoAgentsStaffed, now);
                }
                self.unstaffed_since[q] = None;
            } else {
                due_at(since + UNSTAFFED_GRACE);
            }
        }
        self.sweep_due = due;
    }

    /// Whether nobody eligible is logged in with room on `channel` for
    /// `queue`'s line or any of the wider pools its contacts have still to
    /// move to.
    pub(super) fn unservable(&self, queue: QueueIdx, channel: Channel) -> bool {
        let root = self.policy.root(queue);
        self.roster.pool(queue).staffed_on(channel) == 0
            && self.policy.queues[root]
                .steps
                .iter()
                .skip(self.policy.step_rank(queue))
                .all(|s| self.roster.pool(s.pool).staffed_on(channel) == 0)
    }

    /// The contacts waiting in `queue`'s lines that nobody logged in could
    /// serve (on their channel), in line order.
    fn unserved(&self, queue: QueueIdx) -> Vec<u64> {
        let mut unserved = Vec::new();
        for c in Channel::ALL {
            if self.policy.queues[queue].channels.contains(c) && self.unservable(queue, c) {
                unserved.extend(self.waiting.in_line(queue, c));
            }
        }
        unserved
    }

    /// Hands the contacts in closed `queue`'s line to its closed action.
    fn close_line(&mut self, q: QueueIdx, now: Time) {
        let on_call = self.policy.queues[q]
            .after_hours_urgent_to
            .filter(|oc| self.policy.is_open(*oc, now));
        for seq in self.waiting.in_queue(q) {
            let Some(w) = self.waiting.get(seq) else {
                continue;
            };
            match on_call {
                Some(oc)
                    if w.urgency == Urgency::Urgent
                        && self.policy.queues[oc].channels.contains(w.channel) =>
                {
                    let (channel, parked, arrived) = (w.channel, w.parked, w.arrived);
                    let (contact_id, decision) = (w.contact_id.clone(), w.decision);
                    self.waiting.move_to(seq, oc);
                    // The on-call queue's wait limit, counted from arrival.
                    let limit = self.policy.queues[oc].max_wait_in_line;
                    self.waiting.set_deadline(seq, arrived + limit);
                    let mut hop = LineHop::new(&contact_id, decision, oc);
                    hop.from = Some(self.policy.root(q));
                    self.line_hop(hop, HopKind::Moved, now);
                    let event = Event::Moved {
                        contact_id,
                        parked: self.parked(parked),
                        from_queue_id: self.policy.queues[self.policy.root(q)].id.clone(),
                        to_queue_id: self.policy.queues[oc].id.clone(),
                        waited: (now - arrived).max(Duration::zero()),
                    };
                    self.announce(event, now);
                    self.dispatch_line(oc, channel, now);
                    // Past the on-call limit already and offered nobody:
                    // its callback now, not at the next command.
                    if (self.waiting.get(seq))
                        .is_some_and(|w| w.offer.is_none() && w.deadline <= now)
                    {
                        self.call_back(seq, CallbackReason::WaitTooLong, now);
                    }
                }
                _ => self.call_back(seq, CallbackReason::Closed, now),
            }
        }
    }

    /// Carries waiting contacts and queue counts over to a new policy, by
    /// queue and intent id (`map` says where each old queue went). A contact
    /// whose queue, intent or channel the new policy no longer has leaves
    /// the line with a callback (its offer, if one is out, is withdrawn):
    /// nobody is dropped without an event.
    pub(super) fn rehome_waiting(&mut self, new: &Policy, map: &[Option<QueueIdx>], now: Time) {
        let mut stats = vec![QueueStats::default(); new.queues.len()];
        // A line left unstaffed keeps its grace's start: a reload does not
        // put its callers' callbacks off.
        let mut unstaffed_since = vec![None; new.queues.len()];
        for (i, q) in self.policy.queues.iter().enumerate() {
            if let Some(n) = new.queue_idx(&q.id) {
                stats[n] = self.stats[i];
                unstaffed_since[n] = self.unstaffed_since[i];
            }
        }
        for mut w in self.waiting.reset(new.queues.len()) {
            let queue = map[w.queue].filter(|&q| new.queues[q].channels.contains(w.channel));
            let intent = new.intent_idx(&self.policy.intents[w.intent].id);
            if let (Some(q), Some(i)) = (queue, intent) {
                w.parked = map[w.parked].map_or(new.root(q), |p| new.root(p));
                // The limit of the queue it waits for (a step's pool is its
                // queue's; a closing may have moved it to another).
                w.deadline = w.arrived + new.queues[new.root(q)].max_wait_in_line;
                w.queue = q;
                w.intent = i;
                self.waiting.enter(w);
                continue;
            }
            if let Some(id) = w.offer
                && let Some(r) = self.free_slot(id, Fate::Withdrawn, now)
            {
                self.counters.released += 1;
                self.withdrawn(&r, Withdrawal::PolicyChanged);
            }
            // The new policy's default queue owns the ticket when it knows
            // the intent; otherwise the terms it was promised under stand.
            let callback = match intent {
                Some(i) => {
                    let q = new.default_queue;
                    stats[q].callbacks += 1;
                    CallbackOffer::new(new, q, CallbackReason::Policy, i, w.urgency, now)
                }
                None => {
                    let root = self.policy.root(w.queue);
                    // Its queue still owns the ticket, and counts it when
                    // the new policy keeps that queue.
                    if let Some(kept) = map[root] {
                        stats[new.root(kept)].callbacks += 1;
                    }
                    CallbackOffer::new(
                        &self.policy,
                        root,
                        CallbackReason::Policy,
                        w.intent,
                        w.urgency,
                        now,
                    )
                }
            };
            self.called_back(w, callback, now);
        }
        self.stats = stats;
        self.unstaffed_since = unstaffed_since;
    }

    /// The relaxation-step timers of every waiting contact under `policy`:
    /// one per step of its queue, due at arrival plus the step's wait (now,
    /// if that has passed). Steps it has already taken do nothing.
    pub(super) fn step_timers(&self, policy: &Policy, now: Time) -> Vec<(Time, Timer)> {
        self.waiting
            .iter()
            .flat_map(|w| step_timers_of(policy, w, now))
            .collect()
    }
}

/// A waiting contact's relaxation-step timers under `policy`.
fn step_timers_of<'a>(
    policy: &'a Policy,
    w: &'a Waiter,
    now: Time,
) -> impl Iterator<Item = (Time, Timer)> + 'a {
    policy.queues[policy.root(w.queue)]
        .steps
        .iter()
        .map(move |step| {
            (
                (w.arrived + step.after).max(now),
                Timer::Step(w.seq, step.pool),
            )
        })
}

/// What a line hop is about.
struct LineHop<'a> {
    contact_id: &'a str,
    decision: DecisionId,
    queue: QueueIdx,
    from: Option<QueueIdx>,
    agent: Option<Text>,
    reservation: Option<ReservationId>,
}

impl<'a> LineHop<'a> {
    fn new(contact_id: &'a str, decision: DecisionId, queue: QueueIdx) -> LineHop<'a> {
        LineHop {
            contact_id,
            decision,
            queue,
            from: None,
            agent: None,
            reservation: None,
        }
    }
}
