//! Live queueing: contacts wait when their queue is open and staffed but no
//! agent is free, and an agent who frees up is offered the best waiting
//! contact across every queue it serves (priority, which rises with wait,
//! then age). An offer that times out or is rejected puts the contact back
//! at its own place in line, never to be offered to that agent again; an
//! agent who lets too many offers time out in a row is set not-responding.
//! A queue that closes hands its waiting contacts to its closed action.
//!
//! Assignments and callbacks decided here, outside any request, are queued
//! as [`Event`]s for the edge to stream.

use chrono::Duration;

use super::waiting::Waiter;
use super::{
    AgentIdx, AgentOffer, CallbackOffer, DecisionId, Engine, EngineError, Fate, Slot, Timer, ewt,
};
use crate::model::{AgentState, CallbackReason, Channel, Contact, Time, Urgency};
use crate::policy::{Policy, QueueIdx, Resolved, Text};

/// Priority points of an urgent contact: with the default aging of one point
/// a minute, an urgent contact goes ahead of routine ones that have waited
/// up to five minutes longer.
const URGENT_POINTS: i64 = 5;
/// Weight of the newest observation in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;
/// How often closed queues are looked for among those with contacts waiting.
const CLOSE_CHECK_EVERY: Duration = Duration::seconds(1);

/// The answer for a contact that waits.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedOffer {
    /// Where it waits.
    pub queue_id: Text,
    /// Where the telephony platform parks the call meanwhile.
    pub transfer_address: Text,
    /// 1-based place in its line now.
    pub position: u32,
    /// Estimated wait.
    pub estimated_wait: Duration,
}

/// Something decided outside a request, for the edge to stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A waiting contact was matched to an agent: confirm or release it.
    Assigned {
        /// The contact.
        contact_id: String,
        /// The reserved agent.
        offer: AgentOffer,
        /// How long it waited.
        waited: Duration,
    },
    /// A waiting contact's queue closed: open a callback ticket instead.
    CallbackInstead {
        /// The contact.
        contact_id: String,
        /// The ticket.
        callback: CallbackOffer,
    },
}

/// What one queue counted since start.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueStats {
    /// Contacts that entered the line.
    pub queued: u64,
    /// Waiting contacts whose offer was confirmed.
    pub answered: u64,
    /// Of those, answered within the queue's service-level threshold.
    pub answered_in_time: u64,
    /// Waiting contacts cancelled (the caller hung up).
    pub abandoned: u64,
    /// Callback tickets this queue owns.
    pub callbacks: u64,
    /// Average handle time observed (seconds), if any.
    pub handle_time: Option<f64>,
    /// Average gap between arrivals in line (seconds), if two or more.
    pub arrival_gap: Option<f64>,
    last_arrival: Option<Time>,
    /// Erlang C for (agents, load rounded to 1 %), reused while they hold.
    erlang_c: Option<(u32, i64, f64)>,
}

fn ewma(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + EWMA_WEIGHT * (new - o))
}

impl QueueStats {
    /// Share of answered waiting contacts answered within the threshold.
    pub fn service_level(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.answered_in_time as f64 / self.answered as f64)
    }

    /// Share of waiting contacts that hung up before an answer.
    pub fn abandonment(&self) -> Option<f64> {
        let ended = self.answered + self.abandoned;
        (ended > 0).then(|| self.abandoned as f64 / ended as f64)
    }

    /// Records one finished contact's handle time.
    pub fn observe_handle_time(&mut self, d: Duration) {
        let secs = d.num_milliseconds().max(0) as f64 / 1000.0;
        self.handle_time = Some(ewma(self.handle_time, secs));
    }

    fn observe_arrival(&mut self, now: Time) {
        if let Some(last) = self.last_arrival {
            let gap = (now - last).num_milliseconds().max(1) as f64 / 1000.0;
            self.arrival_gap = Some(ewma(self.arrival_gap, gap));
        }
        self.last_arrival = Some(now);
        self.queued += 1;
    }
}

impl Engine {
    /// Events decided since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Contacts waiting in all queues, including those with an offer out.
    pub fn waiting_contacts(&self) -> usize {
        self.waiting.len()
    }

    /// Estimated wait for 1-based `position` in `queue`.
    /// Erlang C's cost grows with the agents, so its value is kept per
    /// queue while the staffing and the load (to 1 %) stay the same.
    pub(super) fn estimated_wait(&mut self, queue: QueueIdx, position: u32) -> Duration {
        let q = &self.policy.queues[queue];
        let agents = self.roster.pool(queue).staffed.max(1);
        let stats = &mut self.stats[queue];
        let handle = stats
            .handle_time
            .unwrap_or(q.handle_time.num_milliseconds() as f64 / 1000.0);
        let rate = stats.arrival_gap.map_or(0.0, |g| 1.0 / g);
        let erlangs = rate * handle;
        let bucket = if erlangs > 0.0 {
            (erlangs.ln() * 100.0).round() as i64
        } else {
            i64::MIN
        };
        let c = match stats.erlang_c {
            Some((n, b, c)) if n == agents && b == bucket => c,
            _ => {
                let c = ewt::erlang_c(agents, erlangs);
                stats.erlang_c = Some((agents, bucket, c));
                c
            }
        };
        let secs = ewt::estimated_wait_with(position, agents, erlangs, handle, c);
        Duration::milliseconds((secs * 1000.0).min(1e12) as i64)
    }

    /// Puts a contact in its queue's line, or says why not (a callback
    /// reason): waiting disabled, the line full, or the wait too long.
    pub(super) fn enqueue(
        &mut self,
        queue: QueueIdx,
        contact: &Contact,
        facts: Resolved,
        decision: DecisionId,
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
        // Contacts already moved to the queue's wider pools waited longer:
        // they count as ahead.
        let moved_on: u32 = self.policy.queues[queue]
            .steps
            .iter()
            .map(|s| self.waiting.count(s.pool))
            .sum();
        let position = self.waiting.position_of(queue, contact.channel, key) + moved_on;
        let estimated_wait = self.estimated_wait(queue, position);
        let q = &self.policy.queues[queue];
        if estimated_wait > q.max_wait {
            return Err(CallbackReason::WaitTooLong);
        }
        let exclude = contact
            .transfer_from
            .as_ref()
            .and_then(|t| t.agent_id.as_deref())
            .and_then(|id| self.roster.find(id))
            .into_iter()
            .collect();
        let offer = QueuedOffer {
            queue_id: q.id.clone(),
            transfer_address: q.transfer_address.clone(),
            position,
            estimated_wait,
        };
        self.stats[queue].observe_arrival(now);
        for step in &self.policy.queues[queue].steps {
            self.timers.push(std::cmp::Reverse((
                now + step.after,
                Timer::Step(seq, step.pool),
            )));
        }
        self.waiting.enter(Waiter {
            seq,
            contact_id: contact.contact_id.clone(),
            queue,
            channel: contact.channel,
            language: contact.language.clone(),
            intent: facts.intent,
            urgency: contact.urgency,
            arrived: now,
            key,
            decision,
            exclude,
            offer: None,
        });
        Ok(offer)
    }

    /// Contacts waiting for `queue`, in its own line and its wider pools.
    pub(super) fn line_count(&self, queue: QueueIdx) -> u32 {
        self.waiting.count(queue)
            + self.policy.queues[queue]
                .steps
                .iter()
                .map(|s| self.waiting.count(s.pool))
                .sum::<u32>()
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
        self.waiting.move_to(seq, pool);
        self.dispatch_line(pool, channel, now);
    }

    /// Offers free agent `a` the best waiting contacts it can take, across
    /// every queue it serves, until it has no free capacity or none fits.
    /// Reads the head of one line per (queue, channel): no scan of the
    /// waiting contacts or the roster.
    pub(super) fn dispatch(&mut self, a: AgentIdx, now: Time) {
        if self.waiting.is_empty() {
            return;
        }
        loop {
            let agent = self.roster.agent(a);
            let free = agent.free_channels();
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
                    if let Some(key) = self.waiting.head_for(q, c, a)
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
    /// exist here only if every contact in line excludes them, so the walk
    /// is short; it stops as soon as the line is empty.
    pub(super) fn dispatch_line(&mut self, queue: QueueIdx, channel: Channel, now: Time) {
        if self.waiting.line_first(queue, channel).is_none() {
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
        let (queue, channel, contact_id, arrived) =
            (w.queue, w.channel, w.contact_id.clone(), w.arrived);
        let speaks = w.language.as_deref().is_none_or(|l| {
            self.roster
                .language(l)
                .is_some_and(|id| self.roster.agent(a).languages.contains(&id))
        });
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
        self.events.push(Event::Assigned {
            contact_id,
            offer,
            waited: now - arrived,
        });
    }

    /// A waiting contact's offer was confirmed: it leaves the line answered.
    pub(super) fn answered(&mut self, seq: u64, now: Time) {
        if let Some(w) = self.waiting.leave(seq) {
            let stats = &mut self.stats[self.policy.root(w.queue)];
            stats.answered += 1;
            if now - w.arrived <= self.policy.queues[w.queue].service_level {
                stats.answered_in_time += 1;
            }
        }
    }

    /// An offer to `a` timed out: after the policy's number in a row the
    /// agent is set not-responding and offered nothing more.
    pub(super) fn missed_offer(&mut self, a: AgentIdx) {
        let limit = self.policy.missed_offers_to_pause;
        self.roster.update(a, |agent| {
            agent.missed_offers += 1;
            if agent.missed_offers >= limit && agent.state == AgentState::Available {
                agent.state = AgentState::NotResponding;
            }
        });
    }

    /// Takes a contact out of any line (and any offer it has out): a new hop
    /// for the same contact replaces its old place.
    pub(super) fn withdraw(&mut self, contact_id: &str, now: Time) -> bool {
        let Some((seq, offer)) = self.waiting.find(contact_id).map(|w| (w.seq, w.offer)) else {
            return false;
        };
        self.waiting.leave(seq);
        if let Some(id) = offer
            && let Some(r) = self.free_slot(id, Fate::Released)
        {
            self.counters.released += 1;
            self.dispatch(r.agent, now);
        }
        true
    }

    /// The caller hung up while waiting: the contact leaves its line (and
    /// any offer out is withdrawn), counted as abandoned.
    pub fn cancel(&mut self, contact_id: &str, now: Time) -> Result<(), EngineError> {
        self.advance(now);
        let queue = self
            .waiting
            .find(contact_id)
            .map(|w| w.queue)
            .ok_or_else(|| EngineError::NotWaiting(contact_id.to_owned()))?;
        self.withdraw(contact_id, now);
        self.stats[self.policy.root(queue)].abandoned += 1;
        Ok(())
    }

    /// Hands the waiting contacts of queues that have closed to the closed
    /// action: urgent ones to the on-call queue if it is open, the rest to a
    /// callback from the next opening. Checked at most once a second.
    pub(super) fn close_lines(&mut self, now: Time) {
        if self.waiting.is_empty()
            || self
                .last_close_check
                .is_some_and(|last| now - last < CLOSE_CHECK_EVERY)
        {
            return;
        }
        self.last_close_check = Some(now);
        for q in 0..self.policy.queues.len() {
            if self.waiting.count(q) == 0 || self.policy.is_open(q, now) {
                continue;
            }
            let on_call = self.policy.queues[q]
                .after_hours_urgent_to
                .filter(|oc| self.policy.is_open(*oc, now));
            for seq in self.waiting.in_queue(q) {
                let Some(w) = self.waiting.get(seq) else {
                    continue;
                };
                match on_call {
                    Some(oc) if w.urgency == Urgency::Urgent => {
                        let channel = w.channel;
                        self.waiting.move_to(seq, oc);
                        self.dispatch_line(oc, channel, now);
                    }
                    _ => {
                        let Some(w) = self.waiting.leave(seq) else {
                            continue;
                        };
                        let root = self.policy.root(q);
                        self.stats[root].callbacks += 1;
                        let callback = CallbackOffer::new(
                            &self.policy,
                            root,
                            CallbackReason::Closed,
                            w.intent,
                            w.urgency,
                            now,
                        );
                        self.events.push(Event::CallbackInstead {
                            contact_id: w.contact_id,
                            callback,
                        });
                    }
                }
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
        for (i, q) in self.policy.queues.iter().enumerate() {
            if let Some(n) = new.queue_idx(&q.id) {
                stats[n] = self.stats[i];
            }
        }
        for mut w in self.waiting.reset(new.queues.len()) {
            let queue = map[w.queue].filter(|&q| new.queues[q].channels.contains(w.channel));
            let intent = new.intent_idx(&self.policy.intents[w.intent].id);
            if let (Some(q), Some(i)) = (queue, intent) {
                w.queue = q;
                w.intent = i;
                self.waiting.enter(w);
                continue;
            }
            if let Some(id) = w.offer
                && self.free_slot(id, Fate::Released).is_some()
            {
                self.counters.released += 1;
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
            self.events.push(Event::CallbackInstead {
                contact_id: w.contact_id,
                callback,
            });
        }
        self.stats = stats;
    }

    /// The relaxation-step timers of every waiting contact under `policy`:
    /// one per step of its queue, due at arrival plus the step's wait (now,
    /// if that has passed). Steps it has already taken do nothing.
    pub(super) fn step_timers(&self, policy: &Policy, now: Time) -> Vec<(Time, Timer)> {
        let mut timers = Vec::new();
        for w in self.waiting.iter() {
            for step in &policy.queues[policy.root(w.queue)].steps {
                let due = (w.arrived + step.after).max(now);
                timers.push((due, Timer::Step(w.seq, step.pool)));
            }
        }
        timers
    }
}
