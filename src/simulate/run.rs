//! The simulated days: the real engine on a virtual clock, driven by a
//! queue of events (arrivals drawn from Poisson streams, shift starts and
//! ends, confirmations, completions, callers hanging up) and by the
//! engine's own timers (wrap-up ends, relaxation steps, wait limits),
//! every change through the engine's one door. A CTI is taken to confirm
//! every offer at once; an agent whose shift ends mid-call logs out after
//! it. Seeded: the same inputs give the same run.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::Arc,
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Exp, LogNormal, Poisson};

use super::erlang::{self, Prediction};
use super::input::{Demand, HandleTime, SLOTS, Shift};
use crate::engine::{
    AgentSpec, Cancel, Complete, Confirm, Engine, EngineConfig, EngineError, Event, Outcome,
    ReservationId, Route, SetAgentState, Tick, UpsertAgent, Watch, WatchFilter,
};
use crate::model::{AgentState, Contact, Time};
use crate::policy::Policy;

/// How often the queues are looked at for staffing, occupancy and the
/// waiting line.
const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// What one queue saw in one half-hour.
#[derive(Debug, Clone, Default)]
pub struct Slot {
    /// Contacts the queue owned on arrival (answered, waiting, called back
    /// or abandoned).
    pub offered: u32,
    /// Transferred to an agent.
    pub answered: u32,
    /// Of those, within the queue's service level threshold.
    pub answered_in_time: u32,
    /// Seconds waited by the answered, summed.
    pub wait_seconds: f64,
    /// Hung up while waiting.
    pub abandoned: u32,
    /// Callback tickets, by reason.
    pub callbacks: BTreeMap<&'static str, u32>,
    /// Samples of eligible agents logged in, summed.
    staffed: f64,
    /// Seconds of handling the queue's contacts answered in it.
    handled_seconds: f64,
    /// Samples of contacts waiting, summed.
    waiting: f64,
    samples: u32,
}

impl Slot {
    /// The share answered within the threshold, of those answered or
    /// abandoned (callbacks are neither); `None` without any.
    pub fn service_level(&self) -> Option<f64> {
        let base = self.answered + self.abandoned;
        (base > 0).then(|| f64::from(self.answered_in_time) / f64::from(base))
    }

    /// Average speed of answer, in seconds.
    pub fn asa(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.wait_seconds / f64::from(self.answered))
    }

    /// The share of the offered who hung up.
    pub fn abandonment(&self) -> Option<f64> {
        (self.offered > 0).then(|| f64::from(self.abandoned) / f64::from(self.offered))
    }

    /// Eligible agents logged in, on average.
    pub fn staffed(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.staffed / f64::from(self.samples)
        }
    }

    /// The queue's handling time over its eligible agents' logged-in time:
    /// an agent eligible for several queues counts in each (which pulls it
    /// down); chats worked side by side, and agents of other queues
    /// answering after a relaxation step, push it up (past 100%).
    pub fn occupancy(&self) -> Option<f64> {
        let staffed_seconds = self.staffed * SAMPLE_EVERY.as_secs_f64();
        (staffed_seconds > 0.0).then(|| self.handled_seconds / staffed_seconds)
    }

    /// Agent-hours of eligible agents logged in.
    pub fn agent_hours(&self) -> f64 {
        self.staffed * SAMPLE_EVERY.as_secs_f64() / 3600.0
    }

    /// Contacts waiting, on average.
    pub fn waiting(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.waiting / f64::from(self.samples)
        }
    }

    /// Callback tickets of every reason.
    pub fn callback_total(&self) -> u32 {
        self.callbacks.values().sum()
    }
}

/// One queue over the run.
#[derive(Debug, Clone)]
pub struct QueueRun {
    /// Its id.
    pub id: String,
    /// Answered within this counts toward its service level.
    pub threshold: Duration,
    /// The handle time the demand gives it.
    pub handle: HandleTime,
    /// Each half-hour of each day, in order.
    pub slots: Vec<Slot>,
}

impl QueueRun {
    /// Erlang C for half-hour `i`: the offered rate, the mean handle time,
    /// and the eligible agents logged in (on average, rounded down).
    pub fn erlang(&self, i: usize) -> Prediction {
        let s = &self.slots[i];
        erlang::predict(
            s.staffed().floor() as u32,
            f64::from(s.offered) / 1800.0,
            self.handle.mean.as_secs_f64(),
            self.threshold.as_secs_f64(),
        )
    }

    /// Every half-hour summed.
    pub fn total(&self) -> Slot {
        let mut t = Slot::default();
        for s in &self.slots {
            t.offered += s.offered;
            t.answered += s.answered;
            t.answered_in_time += s.answered_in_time;
            t.wait_seconds += s.wait_seconds;
            t.abandoned += s.abandoned;
            for (r, n) in &s.callbacks {
                *t.callbacks.entry(r).or_default() += n;
            }
            t.staffed += s.staffed;
            t.handled_seconds += s.handled_seconds;
            t.waiting += s.waiting;
            t.samples += s.samples;
        }
        t
    }
}

/// What a run gave.
#[derive(Debug, Clone)]
pub struct Run {
    /// Local midnight of the first day, and the zone.
    pub start: Time,
    /// The zone of the day.
    pub zone: chrono_tz::Tz,
    /// The queues that owned any contact, in policy order.
    pub queues: Vec<QueueRun>,
    /// Contacts that arrived.
    pub contacts: u64,
    /// Answers that were the emergency script or "authenticate first".
    pub scripted: u64,
    /// Contacts still waiting in line when the run ended.
    pub left_waiting: u64,
}

/// Why a simulation stopped short.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The engine refused a command the simulation gave it.
    #[error("the engine refused a step: {0}")]
    Engine(#[from] EngineError),
    /// `--staff-for` over more days than it searches.
    #[error(
        "--staff-for searches at most {max} days (the demand file's `days` is {days}): each trial copies the rest of the run"
    )]
    TooManyDays {
        /// The demand's days.
        days: u32,
        /// The most searched.
        max: u32,
    },
}

/// What happens next, besides the engine's own timers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Next {
    /// A contact arrives: its arrival stream, and whether it asks for a
    /// supervisor.
    Arrive(usize, bool),
    /// A shift starts or ends.
    ShiftStart(usize),
    ShiftEnd(usize),
    /// The agent finishes the contact.
    Done(usize, u64),
    /// A waiting caller's patience runs out.
    GiveUp(u64),
    /// Look at the queues.
    Sample,
}

/// A contact in the run.
#[derive(Debug, Clone)]
struct Tracked {
    queue: usize,
    slot: usize,
    arrived: Time,
    /// Still waiting in line.
    waiting: bool,
}

/// Runs the days of `demand` on `policy` with `shifts`; `progress` is told
/// the share done now and then.
pub fn run(
    policy: Arc<Policy>,
    shifts: &[Shift],
    demand: &Demand,
    mut progress: impl FnMut(f64),
) -> Result<Run, SimulateError> {
    let mut sim = Sim::new(policy, shifts, demand)?;
    sim.run_until(sim.end, &mut progress)?;
    progress(1.0);
    Ok(sim.finish())
}

/// A simulation under way: the engine, what is planned, what each agent
/// and contact is doing, and what each queue saw so far. It can be run up
/// to a time, staffed anew there, and cloned to try something from the
/// same point (the same state, so the same steps give the same result).
#[derive(Clone)]
pub(super) struct Sim<'a> {
    demand: &'a Demand,
    engine: Engine,
    rng: StdRng,
    next: BinaryHeap<Reverse<(Time, u64, Next)>>,
    seq: u64,
    /// The end of the last day.
    pub end: Time,
    queue_runs: Vec<QueueRun>,
    queue_index: HashMap<String, usize>,
    /// Every agent registered, in order.
    agents: Vec<AgentSpec>,
    agent_index: HashMap<String, usize>,
    on_shift: Vec<bool>,
    /// Contacts each agent is handling.
    handling: Vec<u32>,
    tracked: HashMap<u64, Tracked>,
    contacts: u64,
    scripted: u64,
    done_events: u64,
    last_now: Time,
}

impl<'a> Sim<'a> {
    /// The first day's midnight, with the agents of `shifts` registered
    /// (logged out) and everything known in advance planned: arrivals,
    /// shift starts and ends, samples.
    pub fn new(
        policy: Arc<Policy>,
        shifts: &[Shift],
        demand: &'a Demand,
    ) -> Result<Sim<'a>, SimulateError> {
        let days = demand.days as usize;
        let queue_runs: Vec<QueueRun> = policy
            .queues
            .iter()
            .map(|q| QueueRun {
                id: q.id.to_string(),
                threshold: q.service_level.to_std().unwrap_or_default(),
                handle: demand.handle_time(&q.id),
                slots: vec![Slot::default(); SLOTS * days],
            })
            .collect();
        let queue_index = policy
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.to_string(), i))
            .collect();
        let mut sim = Sim {
            demand,
            engine: Engine::new(policy, EngineConfig::default()),
            rng: StdRng::seed_from_u64(demand.seed),
            next: BinaryHeap::new(),
            seq: 0,
            end: demand.start + chrono::Duration::days(i64::from(demand.days)),
            queue_runs,
            queue_index,
            agents: Vec::new(),
            agent_index: HashMap::new(),
            on_shift: Vec::new(),
            handling: Vec::new(),
            tracked: HashMap::new(),
            contacts: 0,
            scripted: 0,
            done_events: 0,
            last_now: demand.start,
        };
        for day in 0..days {
            for (stream, a) in demand.arrivals.iter().enumerate() {
                for (slot, &expected) in a.per_slot.iter().enumerate() {
                    if expected <= 0.0 {
                        continue;
                    }
                    let n = Poisson::new(expected).map_or(0.0, |p| p.sample(&mut sim.rng)) as u64;
                    for _ in 0..n {
                        let minute = slot as f64 * 30.0 + sim.rng.random::<f64>() * 30.0;
                        let escalation = sim.rng.random::<f64>() < a.escalation_share;
                        sim.plan(sim.at(day, minute), Next::Arrive(stream, escalation));
                    }
                }
            }
            for (i, s) in shifts.iter().enumerate() {
                // A round-the-clock shift runs on across midnight: its
                // agent does not log out and in again between days.
                let all_day = s.start == 0 && s.end == 1440;
                if !all_day || day == 0 {
                    sim.plan(sim.at(day, f64::from(s.start)), Next::ShiftStart(i));
                }
                if !all_day || day + 1 == days {
                    sim.plan(sim.at(day, f64::from(s.end)), Next::ShiftEnd(i));
                }
            }
        }
        let mut t = demand.start;
        while t < sim.end {
            sim.plan(t, Next::Sample);
            t += chrono_of(SAMPLE_EVERY);
        }
        sim.engine
            .apply(Watch(WatchFilter::default()), demand.start)?;
        for s in shifts {
            sim.add_agent(s.agent.clone())?;
        }
        Ok(sim)
    }

    /// `minute` minutes after the local midnight of day `day`.
    fn at(&self, day: usize, minute: f64) -> Time {
        self.demand.start
            + chrono::Duration::days(day as i64)
            + chrono::Duration::milliseconds((minute * 60_000.0) as i64)
    }

    fn plan(&mut self, t: Time, what: Next) {
        self.seq += 1;
        self.next.push(Reverse((t, self.seq, what)));
    }

    /// The half-hour of the run `t` falls in.
    pub fn slot_of(&self, t: Time) -> usize {
        let minutes = (t - self.demand.start).num_minutes().max(0) as usize;
        (minutes / 30).min(self.queue_runs[0].slots.len().saturating_sub(1))
    }

    /// The start of half-hour `slot` of the run.
    pub fn slot_start(&self, slot: usize) -> Time {
        self.demand.start + chrono::Duration::minutes(30 * slot as i64)
    }

    /// Registers an agent, logged out; its number.
    pub fn add_agent(&mut self, agent: AgentSpec) -> Result<usize, SimulateError> {
        let now = self.last_now;
        self.engine.apply(UpsertAgent(agent.clone()), now)?;
        log_out(&mut self.engine, &agent.id, now)?;
        let i = self.agents.len();
        self.agent_index.insert(agent.id.clone(), i);
        self.agents.push(agent);
        self.on_shift.push(false);
        self.handling.push(0);
        Ok(i)
    }

    /// Whether agent `i` is on shift.
    pub fn on_shift(&self, i: usize) -> bool {
        self.on_shift[i]
    }

    /// Puts agent `i` on shift or takes it off at `at` (or the last step's
    /// time, if later: the clock only goes forward), and settles what that
    /// sets off. Run up to `at` first.
    pub fn set_shift(&mut self, i: usize, on: bool, at: Time) -> Result<(), SimulateError> {
        let now = at.max(self.last_now);
        self.last_now = now;
        if on {
            self.shift_start(i, now)?;
        } else {
            self.shift_end(i, now)?;
        }
        self.settle(now, Vec::new())
    }

    fn shift_start(&mut self, i: usize, now: Time) -> Result<(), SimulateError> {
        self.on_shift[i] = true;
        self.engine.apply(
            SetAgentState {
                agent_id: self.agents[i].id.clone(),
                state: AgentState::Available,
            },
            now,
        )?;
        Ok(())
    }

    fn shift_end(&mut self, i: usize, now: Time) -> Result<(), SimulateError> {
        self.on_shift[i] = false;
        // Busy: offered nothing more (away), logged out after the last
        // contact in hand.
        let state = if self.handling[i] == 0 {
            AgentState::Offline
        } else {
            AgentState::Away
        };
        self.engine.apply(
            SetAgentState {
                agent_id: self.agents[i].id.clone(),
                state,
            },
            now,
        )?;
        Ok(())
    }

    /// Whether agent `i` has a contact in hand.
    pub fn busy(&self, i: usize) -> bool {
        self.handling[i] > 0
    }

    /// Contacts waiting in queue `queue`'s line now.
    pub fn waiting_in(&self, queue: usize) -> usize {
        self.tracked
            .values()
            .filter(|c| c.waiting && c.queue == queue)
            .count()
    }

    /// What queue `queue` saw in half-hour `slot` so far.
    pub fn slot(&self, queue: usize, slot: usize) -> &Slot {
        &self.queue_runs[queue].slots[slot]
    }

    /// The queue runs, in policy order.
    pub fn queue_runs(&self) -> &[QueueRun] {
        &self.queue_runs
    }

    fn handle_sample(&mut self, queue: usize) -> Duration {
        let h = self.queue_runs[queue].handle;
        let mean = h.mean.as_secs_f64();
        let secs = match h.cv {
            None => Exp::new(1.0 / mean).map_or(mean, |e| e.sample(&mut self.rng)),
            Some(cv) => {
                let sigma2 = (1.0 + cv * cv).ln();
                LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt())
                    .map_or(mean, |l| l.sample(&mut self.rng))
            }
        };
        Duration::from_secs_f64(secs.max(1.0))
    }

    /// Runs every step before `limit` (planned, and the engine's timers);
    /// `progress` is told the share of the run done now and then.
    pub fn run_until(
        &mut self,
        limit: Time,
        progress: &mut impl FnMut(f64),
    ) -> Result<(), SimulateError> {
        let run_seconds = (self.end - self.demand.start).num_seconds().max(1) as f64;
        loop {
            let event_at = self.next.peek().map(|Reverse((t, _, _))| *t);
            let due = self.engine.next_due().filter(|d| *d < limit);
            let (now, what) = match (event_at, due) {
                (None, None) => break,
                (Some(e), Some(d)) if d < e => (d, None),
                (None, Some(d)) => (d, None),
                (Some(e), _) if e >= limit => break,
                (Some(_), _) => match self.next.pop() {
                    Some(Reverse((t, _, what))) => (t, Some(what)),
                    None => break,
                },
            };
            // The engine may report something due before the last step
            // (its sweep of a line just joined): it is done now, not in
            // the past.
            let now = now.max(self.last_now);
            self.last_now = now;
            let confirmations = match what {
                None => {
                    self.engine.apply(Tick, now)?;
                    Vec::new()
                }
                Some(what) => {
                    let confirmations = self.step(what, now)?;
                    self.done_events += 1;
                    if self.done_events.is_multiple_of(4096) {
                        progress((now - self.demand.start).num_seconds() as f64 / run_seconds);
                    }
                    confirmations
                }
            };
            self.settle(now, confirmations)?;
        }
        Ok(())
    }

    /// One planned step; the offers it made at once, to confirm.
    fn step(&mut self, what: Next, now: Time) -> Result<Vec<Confirmation>, SimulateError> {
        let mut confirmations = Vec::new();
        match what {
            Next::Arrive(stream, escalation) => {
                self.contacts += 1;
                let a = &self.demand.arrivals[stream];
                let contact = Contact {
                    contact_id: format!("c{}", self.contacts),
                    request_id: None,
                    channel: a.channel,
                    intent: a.intent.clone(),
                    urgency: a.urgency,
                    identity: a.identity,
                    language: None,
                    escalation_requested: escalation,
                    signals: Vec::new(),
                    attributes: Vec::new(),
                    transfer_from: None,
                    preferred_agent_id: None,
                };
                let decision = self.engine.apply(Route(&contact), now)?;
                let Some(queue) = decision
                    .queue_id()
                    .and_then(|q| self.queue_index.get(q))
                    .copied()
                else {
                    // Scripted answers own no queue.
                    self.scripted += 1;
                    return Ok(confirmations);
                };
                let slot = self.slot_of(now);
                let s = &mut self.queue_runs[queue].slots[slot];
                s.offered += 1;
                match &decision.outcome {
                    Outcome::Agent(offer) => {
                        s.answered += 1;
                        s.answered_in_time += 1;
                        confirmations.push(Confirmation {
                            contact: self.contacts,
                            agent: offer.agent_id.to_string(),
                            reservation: offer.reservation,
                            queue,
                        });
                    }
                    Outcome::Queued(_) => {
                        self.tracked.insert(
                            self.contacts,
                            Tracked {
                                queue,
                                slot,
                                arrived: now,
                                waiting: true,
                            },
                        );
                        if let Some(mean) = a.patience {
                            let secs = Exp::new(1.0 / mean.as_secs_f64())
                                .map_or(mean.as_secs_f64(), |e| e.sample(&mut self.rng));
                            let gives_up =
                                now + chrono::Duration::milliseconds((secs * 1000.0) as i64);
                            self.plan(gives_up, Next::GiveUp(self.contacts));
                        }
                    }
                    Outcome::Callback(c) => {
                        *s.callbacks.entry(c.reason.as_str()).or_default() += 1;
                    }
                    // Scripted answers own no queue (queue_id is none).
                    Outcome::Emergency { .. } | Outcome::Authenticate { .. } => {}
                }
            }
            Next::ShiftStart(i) => self.shift_start(i, now)?,
            Next::ShiftEnd(i) => self.shift_end(i, now)?,
            Next::Done(i, contact) => {
                self.engine.apply(
                    Complete {
                        agent_id: self.agents[i].id.clone(),
                        contact_id: format!("c{contact}"),
                    },
                    now,
                )?;
                self.handling[i] = self.handling[i].saturating_sub(1);
                if !self.on_shift[i] && self.handling[i] == 0 {
                    log_out(&mut self.engine, &self.agents[i].id, now)?;
                }
            }
            Next::GiveUp(contact) => {
                if let Some(c) = self.tracked.remove(&contact)
                    && c.waiting
                {
                    self.engine.apply(Cancel(format!("c{contact}")), now)?;
                    self.queue_runs[c.queue].slots[c.slot].abandoned += 1;
                }
            }
            Next::Sample => {
                self.engine.apply(Tick, now)?;
                let slot = self.slot_of(now);
                for view in self.engine.queues() {
                    if let Some(&q) = self.queue_index.get(&*view.id) {
                        let s = &mut self.queue_runs[q].slots[slot];
                        s.staffed += f64::from(view.staffed);
                        s.waiting += f64::from(view.waiting);
                        s.samples += 1;
                    }
                }
            }
        }
        Ok(confirmations)
    }

    /// What the engine decided by itself: offers to waiting contacts
    /// (confirmed at once), callbacks instead of waiting; until a round of
    /// confirmations sets off nothing more.
    fn settle(
        &mut self,
        now: Time,
        mut confirmations: Vec<Confirmation>,
    ) -> Result<(), SimulateError> {
        loop {
            for event in self.engine.take_events() {
                self.saw(event, now, &mut confirmations);
            }
            if confirmations.is_empty() {
                return Ok(());
            }
            for c in std::mem::take(&mut confirmations) {
                self.engine.apply(Confirm(c.reservation), now)?;
                if let Some(&i) = self.agent_index.get(&c.agent) {
                    self.handling[i] += 1;
                    let took = self.handle_sample(c.queue);
                    let slot = self.slot_of(now);
                    self.queue_runs[c.queue].slots[slot].handled_seconds += took.as_secs_f64();
                    let done = now + chrono_of(took);
                    self.plan(done, Next::Done(i, c.contact));
                }
                self.tracked.remove(&c.contact);
            }
        }
    }

    /// Counts what an engine event says about a tracked contact.
    fn saw(&mut self, event: Event, now: Time, confirmations: &mut Vec<Confirmation>) {
        match event {
            Event::Assigned(a) => {
                let id = contact_number(&a.contact_id);
                if let Some(c) = self.tracked.get_mut(&id)
                    && c.waiting
                {
                    c.waiting = false;
                    let threshold = self.queue_runs[c.queue].threshold;
                    let s = &mut self.queue_runs[c.queue].slots[c.slot];
                    let waited = (now - c.arrived).to_std().unwrap_or_default();
                    s.answered += 1;
                    s.wait_seconds += waited.as_secs_f64();
                    if waited <= threshold {
                        s.answered_in_time += 1;
                    }
                    confirmations.push(Confirmation {
                        contact: id,
                        agent: a.offer.agent_id.to_string(),
                        reservation: a.offer.reservation,
                        queue: c.queue,
                    });
                }
            }
            Event::CallbackInstead {
                contact_id,
                callback,
                ..
            } => {
                if let Some(c) = self.tracked.remove(&contact_number(&contact_id))
                    && c.waiting
                {
                    *self.queue_runs[c.queue].slots[c.slot]
                        .callbacks
                        .entry(callback.reason.as_str())
                        .or_default() += 1;
                }
            }
            // A closing queue moved the contact to its on-call queue:
            // what follows counts there.
            Event::Moved {
                contact_id,
                to_queue_id,
                ..
            } => {
                if let (Some(c), Some(&q)) = (
                    self.tracked.get_mut(&contact_number(&contact_id)),
                    self.queue_index.get(&*to_queue_id),
                ) {
                    c.queue = q;
                }
            }
            _ => {}
        }
    }

    /// What the run gave: the queues that owned any contact, in policy
    /// order.
    pub fn finish(mut self) -> Run {
        let left_waiting = self.tracked.values().filter(|c| c.waiting).count() as u64;
        self.queue_runs
            .retain(|q| q.slots.iter().any(|s| s.offered > 0));
        Run {
            start: self.demand.start,
            zone: self.demand.zone,
            queues: self.queue_runs,
            contacts: self.contacts,
            scripted: self.scripted,
            left_waiting,
        }
    }
}

/// An offer made, to confirm at once as a CTI would.
struct Confirmation {
    contact: u64,
    agent: String,
    reservation: ReservationId,
    queue: usize,
}

/// A duration on the simulated clock (saturating: no run lasts that long).
pub(super) fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The number of a contact id this run made (`c<n>`).
fn contact_number(id: &str) -> u64 {
    id.trim_start_matches('c').parse().unwrap_or(0)
}

fn log_out(engine: &mut Engine, agent: &str, now: Time) -> Result<(), EngineError> {
    engine
        .apply(
            SetAgentState {
                agent_id: agent.to_owned(),
                state: AgentState::Offline,
            },
            now,
        )
        .map(drop)
}
