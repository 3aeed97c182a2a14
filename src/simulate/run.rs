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
    Cancel, Complete, Confirm, Engine, EngineConfig, EngineError, Event, Outcome, Route,
    SetAgentState, Tick, UpsertAgent, Watch, WatchFilter,
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
) -> Result<Run, EngineError> {
    let mut rng = StdRng::seed_from_u64(demand.seed);
    let mut engine = Engine::new(Arc::clone(&policy), EngineConfig::default());
    let days = demand.days as usize;
    let end = demand.start + chrono::Duration::days(i64::from(demand.days));
    let mut queue_runs: Vec<QueueRun> = policy
        .queues
        .iter()
        .map(|q| QueueRun {
            id: q.id.to_string(),
            threshold: q.service_level.to_std().unwrap_or_default(),
            handle: demand.handle_time(&q.id),
            slots: vec![Slot::default(); SLOTS * days],
        })
        .collect();
    let queue_index: HashMap<String, usize> = policy
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| (q.id.to_string(), i))
        .collect();
    let slot_of = |t: Time| -> usize {
        let minutes = (t - demand.start).num_minutes().max(0) as usize;
        (minutes / 30).min(SLOTS * days - 1)
    };
    let at = |day: usize, minute: f64| {
        demand.start
            + chrono::Duration::days(day as i64)
            + chrono::Duration::milliseconds((minute * 60_000.0) as i64)
    };

    // Everything known in advance: arrivals, shifts, samples.
    let mut next: BinaryHeap<Reverse<(Time, u64, Next)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |next: &mut BinaryHeap<_>, t: Time, what: Next| {
        seq += 1;
        next.push(Reverse((t, seq, what)));
    };
    for day in 0..days {
        for (stream, a) in demand.arrivals.iter().enumerate() {
            for (slot, &expected) in a.per_slot.iter().enumerate() {
                if expected <= 0.0 {
                    continue;
                }
                let n = Poisson::new(expected).map_or(0.0, |p| p.sample(&mut rng)) as u64;
                for _ in 0..n {
                    let minute = slot as f64 * 30.0 + rng.random::<f64>() * 30.0;
                    let escalation = rng.random::<f64>() < a.escalation_share;
                    push(&mut next, at(day, minute), Next::Arrive(stream, escalation));
                }
            }
        }
        for (i, s) in shifts.iter().enumerate() {
            // A round-the-clock shift runs on across midnight: its agent
            // does not log out and in again between days.
            let all_day = s.start == 0 && s.end == 1440;
            if !all_day || day == 0 {
                push(&mut next, at(day, f64::from(s.start)), Next::ShiftStart(i));
            }
            if !all_day || day + 1 == days {
                push(&mut next, at(day, f64::from(s.end)), Next::ShiftEnd(i));
            }
        }
    }
    let mut t = demand.start;
    while t < end {
        push(&mut next, t, Next::Sample);
        t += chrono::Duration::from_std(SAMPLE_EVERY).unwrap_or(chrono::Duration::MAX);
    }
    let run_seconds = (end - demand.start).num_seconds().max(1) as f64;

    engine.apply(Watch(WatchFilter::default()), demand.start)?;
    for s in shifts {
        engine.apply(UpsertAgent(s.agent.clone()), demand.start)?;
        engine.apply(
            SetAgentState {
                agent_id: s.agent.id.clone(),
                state: AgentState::Offline,
            },
            demand.start,
        )?;
    }
    let agent_index: HashMap<String, usize> = shifts
        .iter()
        .enumerate()
        .map(|(i, s)| (s.agent.id.clone(), i))
        .collect();
    let mut on_shift = vec![false; shifts.len()];
    // Contacts each agent is handling.
    let mut handling: Vec<u32> = vec![0; shifts.len()];
    let mut tracked: HashMap<u64, Tracked> = HashMap::new();
    let mut contacts = 0u64;
    let mut scripted = 0u64;
    let mut done_events = 0u64;
    let mut last_now = demand.start;

    let handle_sample = |h: HandleTime, rng: &mut StdRng| -> Duration {
        let mean = h.mean.as_secs_f64();
        let secs = match h.cv {
            None => Exp::new(1.0 / mean).map_or(mean, |e| e.sample(rng)),
            Some(cv) => {
                let sigma2 = (1.0 + cv * cv).ln();
                LogNormal::new(mean.ln() - sigma2 / 2.0, sigma2.sqrt())
                    .map_or(mean, |l| l.sample(rng))
            }
        };
        Duration::from_secs_f64(secs.max(1.0))
    };

    loop {
        let event_at = next.peek().map(|Reverse((t, _, _))| *t);
        let due = engine.next_due().filter(|d| *d < end);
        let (now, what) = match (event_at, due) {
            (None, None) => break,
            (Some(e), Some(d)) if d < e => (d, None),
            (None, Some(d)) => (d, None),
            (Some(_), _) => match next.pop() {
                Some(Reverse((t, _, what))) => (t, Some(what)),
                None => break,
            },
        };
        if now >= end {
            break;
        }
        // The engine may report something due before the last step (its
        // sweep of a line just joined): it is done now, not in the past.
        let now = now.max(last_now);
        last_now = now;
        let mut confirmations = Vec::new();
        match what {
            None => {
                engine.apply(Tick, now)?;
            }
            Some(Next::Arrive(stream, escalation)) => {
                contacts += 1;
                let a = &demand.arrivals[stream];
                let contact = Contact {
                    contact_id: format!("c{contacts}"),
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
                let decision = engine.apply(Route(&contact), now)?;
                match decision
                    .queue_id()
                    .and_then(|q| queue_index.get(q))
                    .copied()
                {
                    None => scripted += 1,
                    Some(queue) => {
                        let slot = slot_of(now);
                        let s = &mut queue_runs[queue].slots[slot];
                        s.offered += 1;
                        match &decision.outcome {
                            Outcome::Agent(offer) => {
                                s.answered += 1;
                                s.answered_in_time += 1;
                                confirmations.push((
                                    contacts,
                                    offer.agent_id.to_string(),
                                    offer.reservation,
                                    queue,
                                ));
                            }
                            Outcome::Queued(_) => {
                                tracked.insert(
                                    contacts,
                                    Tracked {
                                        queue,
                                        slot,
                                        arrived: now,
                                        waiting: true,
                                    },
                                );
                                if let Some(mean) = a.patience {
                                    let secs = Exp::new(1.0 / mean.as_secs_f64())
                                        .map_or(mean.as_secs_f64(), |e| e.sample(&mut rng));
                                    let gives_up = now
                                        + chrono::Duration::milliseconds((secs * 1000.0) as i64);
                                    push(&mut next, gives_up, Next::GiveUp(contacts));
                                }
                            }
                            Outcome::Callback(c) => {
                                *s.callbacks.entry(c.reason.as_str()).or_default() += 1;
                            }
                            // Scripted answers own no queue (queue_id is none).
                            Outcome::Emergency { .. } | Outcome::Authenticate { .. } => {}
                        }
                    }
                }
            }
            Some(Next::ShiftStart(i)) => {
                on_shift[i] = true;
                engine.apply(
                    SetAgentState {
                        agent_id: shifts[i].agent.id.clone(),
                        state: AgentState::Available,
                    },
                    now,
                )?;
            }
            Some(Next::ShiftEnd(i)) => {
                on_shift[i] = false;
                // Busy: offered nothing more (away), logged out after the
                // last contact in hand.
                let state = if handling[i] == 0 {
                    AgentState::Offline
                } else {
                    AgentState::Away
                };
                engine.apply(
                    SetAgentState {
                        agent_id: shifts[i].agent.id.clone(),
                        state,
                    },
                    now,
                )?;
            }
            Some(Next::Done(i, contact)) => {
                engine.apply(
                    Complete {
                        agent_id: shifts[i].agent.id.clone(),
                        contact_id: format!("c{contact}"),
                    },
                    now,
                )?;
                handling[i] = handling[i].saturating_sub(1);
                if !on_shift[i] && handling[i] == 0 {
                    log_out(&mut engine, &shifts[i].agent.id, now)?;
                }
            }
            Some(Next::GiveUp(contact)) => {
                if let Some(c) = tracked.remove(&contact)
                    && c.waiting
                {
                    engine.apply(Cancel(format!("c{contact}")), now)?;
                    queue_runs[c.queue].slots[c.slot].abandoned += 1;
                }
            }
            Some(Next::Sample) => {
                engine.apply(Tick, now)?;
                let slot = slot_of(now);
                for view in engine.queues() {
                    if let Some(&q) = queue_index.get(&*view.id) {
                        let s = &mut queue_runs[q].slots[slot];
                        s.staffed += f64::from(view.staffed);
                        s.waiting += f64::from(view.waiting);
                        s.samples += 1;
                    }
                }
            }
        }
        if what.is_some() {
            done_events += 1;
            if done_events.is_multiple_of(4096) {
                progress((now - demand.start).num_seconds() as f64 / run_seconds);
            }
        }
        // What the engine decided by itself: offers to waiting contacts
        // (confirmed at once), callbacks instead of waiting; until a round
        // of confirmations sets off nothing more.
        loop {
            for event in engine.take_events() {
                match event {
                    Event::Assigned(a) => {
                        let id = contact_number(&a.contact_id);
                        if let Some(c) = tracked.get_mut(&id)
                            && c.waiting
                        {
                            c.waiting = false;
                            let threshold = queue_runs[c.queue].threshold;
                            let s = &mut queue_runs[c.queue].slots[c.slot];
                            let waited = (now - c.arrived).to_std().unwrap_or_default();
                            s.answered += 1;
                            s.wait_seconds += waited.as_secs_f64();
                            if waited <= threshold {
                                s.answered_in_time += 1;
                            }
                            confirmations.push((
                                id,
                                a.offer.agent_id.to_string(),
                                a.offer.reservation,
                                c.queue,
                            ));
                        }
                    }
                    Event::CallbackInstead {
                        contact_id,
                        callback,
                        ..
                    } => {
                        if let Some(c) = tracked.remove(&contact_number(&contact_id))
                            && c.waiting
                        {
                            *queue_runs[c.queue].slots[c.slot]
                                .callbacks
                                .entry(callback.reason.as_str())
                                .or_default() += 1;
                        }
                    }
                    // A closing queue moved the contact to its on-call
                    // queue: what follows counts there.
                    Event::Moved {
                        contact_id,
                        to_queue_id,
                        ..
                    } => {
                        if let (Some(c), Some(&q)) = (
                            tracked.get_mut(&contact_number(&contact_id)),
                            queue_index.get(&*to_queue_id),
                        ) {
                            c.queue = q;
                        }
                    }
                    _ => {}
                }
            }
            if confirmations.is_empty() {
                break;
            }
            for (contact, agent, reservation, queue) in std::mem::take(&mut confirmations) {
                engine.apply(Confirm(reservation), now)?;
                if let Some(&i) = agent_index.get(&agent) {
                    handling[i] += 1;
                    let took = handle_sample(queue_runs[queue].handle, &mut rng);
                    queue_runs[queue].slots[slot_of(now)].handled_seconds += took.as_secs_f64();
                    let done =
                        now + chrono::Duration::from_std(took).unwrap_or(chrono::Duration::MAX);
                    push(&mut next, done, Next::Done(i, contact));
                }
                tracked.remove(&contact);
            }
        }
    }
    progress(1.0);
    let left_waiting = tracked.values().filter(|c| c.waiting).count() as u64;
    queue_runs.retain(|q| q.slots.iter().any(|s| s.offered > 0));
    Ok(Run {
        start: demand.start,
        zone: demand.zone,
        queues: queue_runs,
        contacts,
        scripted,
        left_waiting,
    })
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
