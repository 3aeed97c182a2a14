//! `careroute simulate --staff-for`: the fewest agents per queue and
//! half-hour that meet each queue's service level goal, found by running
//! the simulation, beside Erlang C's answer. Half-hours are settled in
//! order: from the state the day reached at a half-hour's start, trials
//! run it (and on past its end by the longest threshold, so its last
//! arrivals are judged) with one headcount per queue, lowering the
//! queues that meet the goal and raising those that miss it, until each
//! sits at the fewest that meets it; the day then goes on from the chosen
//! trial. Each queue's agents are copies of one profile: the roster agent
//! from `--roster` that qualifies for it and for the fewest other queues,
//! or, without a roster, an agent with exactly the queue's skills taking
//! one contact at a time on each of its channels.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use super::erlang;
use super::input::{Demand, SLOTS, Shift, copy_of};
use super::run::{Run, Sim, SimulateError, Slot, chrono_of};
use crate::engine::AgentSpec;
use crate::model::{CallbackReason, Channel, Time};
use crate::policy::{Policy, QueueIdx};

/// What a half-hour must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// The share answered within the queue's `service_level` threshold.
    pub service_level: f64,
    /// The largest share of callers who may hang up while waiting.
    pub max_abandonment: f64,
}

impl Default for Goal {
    /// 80% within the threshold and under 5% abandonment, as the source
    /// documents ask.
    fn default() -> Goal {
        Goal {
            service_level: 0.8,
            max_abandonment: 0.05,
        }
    }
}

/// What was found for one queue in one half-hour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Need {
    /// Contacts the queue owned on arrival.
    pub offered: u32,
    /// The fewest agents found to meet the goal (or the most tried).
    pub agents: u32,
    /// Erlang C's fewest for the same arrivals, mean handle time and
    /// threshold (agents taking one contact at a time, nobody hanging up).
    pub erlang_c: Option<u32>,
    /// The share answered in time with `agents`, of the contacts that
    /// count (callbacks for closed hours and by policy do not).
    pub service_level: Option<f64>,
    /// The share who hung up with `agents`.
    pub abandonment: Option<f64>,
    /// Whether `agents` met the goal; `false` when even an agent per
    /// contact did not (the queue closed, or its channel not taken).
    pub met: bool,
}

/// One queue's staffing over the run.
#[derive(Debug, Clone)]
pub struct QueueNeed {
    /// Its id.
    pub id: String,
    /// The profile its agents copy: a roster agent's id, or `None` for
    /// one made from the queue's own skills.
    pub profile: Option<String>,
    /// Each half-hour of each day, in order.
    pub slots: Vec<Need>,
}

impl QueueNeed {
    /// The most agents found for half-hour `i` of the day over every day
    /// simulated: a plan that meets every day.
    pub fn of_day(&self, i: usize) -> Need {
        self.slots
            .iter()
            .skip(i)
            .step_by(SLOTS)
            .max_by_key(|n| (n.agents, n.offered))
            .cloned()
            .unwrap_or_default()
    }

    /// Agent-hours found, and Erlang C's.
    pub fn agent_hours(&self) -> (f64, f64) {
        let sim: u32 = self.slots.iter().map(|n| n.agents).sum();
        let erl: u32 = self.slots.iter().filter_map(|n| n.erlang_c).sum();
        (f64::from(sim) / 2.0, f64::from(erl) / 2.0)
    }
}

/// What `--staff-for` found.
#[derive(Debug, Clone)]
pub struct Staffing {
    /// The goal searched for.
    pub goal: Goal,
    /// The queues that owned any contact, in policy order.
    pub queues: Vec<QueueNeed>,
    /// The day as it ran with the staffing found.
    pub run: Run,
}

/// Trials per half-hour at most. Each queue goes down while it meets the
/// goal, then settles one above; a settled queue only goes up again (when
/// another queue's change made it miss), up to its cap; so the search ends
/// well before this, which only guards against a bug. Reached, the last
/// trial's headcounts are kept as they are.
const MAX_TRIALS: u32 = 500;

/// Days `--staff-for` searches at most: each trial copies the rest of the
/// run (its planned arrivals), so the time grows with the square of the
/// days.
pub const MAX_DAYS: u32 = 14;

/// Where a queue's search stands in the current half-hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// The first trial: which way to go is not known yet.
    Probe,
    /// The headcount above met the goal; trying one fewer.
    Lowering,
    /// The headcount below missed it; trying one more.
    Raising,
    /// The fewest that meets it (or the most worth trying).
    Settled,
}

/// Finds the fewest agents per queue and half-hour that meet `goal` for
/// `demand` on `policy`; with `roster`, each queue's agents copy one of
/// its agents. `progress` is told the share done now and then.
pub fn staff_for(
    policy: Arc<Policy>,
    roster: Option<&[Shift]>,
    demand: &Demand,
    goal: Goal,
    mut progress: impl FnMut(f64),
) -> Result<Staffing, SimulateError> {
    let queues: Vec<QueueIdx> = (0..policy.queues.len())
        .filter(|&q| policy.queues[q].parent.is_none())
        .collect();
    let profiles: Vec<(AgentSpec, Option<String>)> = queues
        .iter()
        .map(|&q| profile(&policy, q, roster))
        .collect();
    if demand.days > MAX_DAYS {
        return Err(SimulateError::TooManyDays {
            days: demand.days,
            max: MAX_DAYS,
        });
    }
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); queues.len()];
    let mut sim = Sim::new(Arc::clone(&policy), &[], demand)?;
    let slots = SLOTS * demand.days as usize;
    let mut found: Vec<Vec<Need>> = vec![Vec::with_capacity(slots); queues.len()];
    let mut headcount = vec![0u32; queues.len()];
    for slot in 0..slots {
        progress(slot as f64 / slots as f64);
        let start = sim.slot_start(slot);
        let end = sim.slot_start(slot + 1);
        // A queue with callers still in line is not left without anyone.
        let waiting: Vec<u32> = queues.iter().map(|&q| sim.waiting_in(q) as u32).collect();
        let floor: Vec<u32> = waiting.iter().map(|&w| u32::from(w > 0)).collect();
        let busy: Vec<u32> = pools
            .iter()
            .map(|pool| pool.iter().filter(|&&i| sim.busy(i)).count() as u32)
            .collect();
        let mut search = vec![Search::Probe; queues.len()];
        for (n, f) in headcount.iter_mut().zip(&floor) {
            *n = (*n).max(*f);
        }
        let mut trials = 0;
        let mut judged_now = vec![Need::default(); queues.len()];
        let settled_day = loop {
            trials += 1;
            let mut trial = sim.clone();
            // The agents registered so far are the day's, not an earlier
            // trial's.
            let mut trial_pools = pools.clone();
            for (k, &n) in headcount.iter().enumerate() {
                staff(&mut trial, &mut trial_pools[k], &profiles[k].0, n, start)?;
            }
            trial.run_until(end, &mut |_| {})?;
            let at_end = trial.clone();
            // On past the end by the longest threshold: a contact of this
            // half-hour still waiting then has missed it, wherever it is.
            let longest = queues
                .iter()
                .map(|&q| trial.queue_runs()[q].threshold)
                .max()
                .unwrap_or_default()
                .max(Duration::from_secs(1));
            trial.run_until(end + chrono_of(longest), &mut |_| {})?;
            let mut changed = false;
            for (k, &q) in queues.iter().enumerate() {
                let seen = trial.slot(q, slot);
                let (counted, sl, abandonment) = judged(seen);
                let met = counted == 0
                    || (sl >= goal.service_level && abandonment <= goal.max_abandonment);
                // An agent per contact (arriving, or waiting when the
                // half-hour began) and per agent still busy with one from
                // before answers each at once, if anything can.
                let cap = seen.offered + waiting[k] + busy[k] + 1;
                let erlang_c = erlang_c(&trial, q, counted, goal, cap);
                let before = headcount[k];
                (search[k], headcount[k]) = if counted == 0 {
                    // Nothing an agent could answer: nobody is needed.
                    (Search::Settled, floor[k])
                } else {
                    let jump = erlang_c.filter(|_| trials == 1);
                    next(search[k], before, met, floor[k], cap, jump)
                };
                changed |= headcount[k] != before;
                judged_now[k] = Need {
                    offered: seen.offered,
                    agents: before,
                    erlang_c,
                    service_level: (counted > 0).then_some(sl),
                    abandonment: (counted > 0).then_some(abandonment),
                    met,
                };
            }
            if !changed && search.iter().all(|s| *s == Search::Settled) || trials >= MAX_TRIALS {
                break (at_end, trial_pools);
            }
        };
        (sim, pools) = settled_day;
        for (k, need) in judged_now.into_iter().enumerate() {
            found[k].push(need);
        }
    }
    // The day as it went on with the staffing found: the last half-hour
    // run to the end of the day.
    sim.run_until(sim.end, &mut |_| {})?;
    progress(1.0);
    let run = sim.finish();
    let queues = queues
        .iter()
        .zip(profiles)
        .zip(found)
        .filter(|((_, _), slots)| slots.iter().any(|n| n.offered > 0))
        .map(|((&q, (_, profile)), slots)| QueueNeed {
            id: policy.queues[q].id.to_string(),
            profile,
            slots,
        })
        .collect();
    Ok(Staffing { goal, queues, run })
}

/// A queue's next headcount to try, after a trial at `n` met the goal or
/// not; never below `floor` nor above `cap`. On a half-hour's first trial
/// `jump` is Erlang C's answer: a first result that says to go past it
/// tries it next instead of walking there one by one.
fn next(
    search: Search,
    n: u32,
    met: bool,
    floor: u32,
    cap: u32,
    jump: Option<u32>,
) -> (Search, u32) {
    match (search, met, jump) {
        (Search::Probe, true, Some(e)) if e.max(floor) + 1 < n => (Search::Probe, e.max(floor)),
        (Search::Probe, false, Some(e)) if e > n + 1 && e <= cap => (Search::Probe, e),
        (Search::Probe | Search::Lowering, true, _) if n > floor => (Search::Lowering, n - 1),
        (Search::Probe | Search::Lowering, true, _) => (Search::Settled, n),
        (Search::Lowering, false, _) => (Search::Settled, n + 1),
        (_, false, _) if n < cap => (Search::Raising, n + 1),
        (_, false, _) => (Search::Settled, n),
        (Search::Raising | Search::Settled, true, _) => (Search::Settled, n),
    }
}

/// Of what a queue saw in a half-hour: the contacts that count toward its
/// service level (callbacks for closed hours and by policy do not: no
/// headcount answers them), the share answered in time, the share that
/// hung up.
fn judged(seen: &Slot) -> (u32, f64, f64) {
    let not_for_agents: u32 = [CallbackReason::Closed, CallbackReason::Policy]
        .iter()
        .filter_map(|r| seen.callbacks.get(r.as_str()))
        .sum();
    let counted = seen.offered.saturating_sub(not_for_agents);
    if counted == 0 {
        return (0, 1.0, 0.0);
    }
    let of = |x: u32| f64::from(x) / f64::from(counted);
    (counted, of(seen.answered_in_time), of(seen.abandoned))
}

/// Erlang C's fewest agents for the `offered` contacts queue `q` had to
/// answer in a half-hour (those an agent could answer).
fn erlang_c(sim: &Sim, q: QueueIdx, offered: u32, goal: Goal, cap: u32) -> Option<u32> {
    let run = &sim.queue_runs()[q];
    if offered == 0 {
        return Some(0);
    }
    erlang::agents_for(
        goal.service_level,
        f64::from(offered) / 1800.0,
        run.handle.mean.as_secs_f64(),
        run.threshold.as_secs_f64(),
        cap.max(offered) * 4,
    )
}

/// Puts the first `n` agents of a queue's pool on shift and the rest off,
/// adding copies of `profile` as needed, at `at`.
fn staff(
    sim: &mut Sim,
    pool: &mut Vec<usize>,
    profile: &AgentSpec,
    n: u32,
    at: Time,
) -> Result<(), SimulateError> {
    while pool.len() < n as usize {
        pool.push(sim.add_agent(copy_of(profile, pool.len() as u32 + 1))?);
    }
    for (i, &agent) in pool.iter().enumerate() {
        let on = i < n as usize;
        if sim.on_shift(agent) != on {
            sim.set_shift(agent, on, at)?;
        }
    }
    Ok(())
}

/// The agent queue `q`'s staff copy, and the roster agent it is, if any:
/// of the roster's agents with the queue's own skills and one of its
/// channels, the one that could serve the fewest other queues (their own
/// skills or a relaxation step's wider pool; first in the file on a tie);
/// else one with exactly the queue's skills, one contact at a time on each
/// of its channels.
fn profile(policy: &Policy, q: QueueIdx, roster: Option<&[Shift]>) -> (AgentSpec, Option<String>) {
    let queue = &policy.queues[q];
    let meets = |agent: &AgentSpec, needs: &[(String, u8)]| {
        needs
            .iter()
            .all(|(skill, min)| agent.skills.iter().any(|(s, l)| s == skill && l >= min))
    };
    let takes = |agent: &AgentSpec, queue: &crate::policy::Queue| {
        agent
            .channels
            .iter()
            .any(|(c, n)| *n > 0 && queue.channels.contains(*c))
    };
    let serves = |agent: &AgentSpec, o: QueueIdx| {
        policy.queues[o].parent.is_none()
            && takes(agent, &policy.queues[o])
            && policy.qualifies(o, |needs| meets(agent, needs))
    };
    let mut seen = BTreeSet::new();
    let best = roster
        .unwrap_or_default()
        .iter()
        .map(|s| &s.agent)
        .filter(|a| seen.insert(template_id(&a.id)))
        .filter(|a| meets(a, &queue.skills) && takes(a, queue))
        .min_by_key(|a| (0..policy.queues.len()).filter(|&o| serves(a, o)).count());
    if let Some(agent) = best {
        let mut agent = agent.clone();
        let id = template_id(&agent.id).to_owned();
        agent.id = format!("{}@{}", queue.id, id);
        return (agent, Some(id));
    }
    let channels = Channel::ALL
        .into_iter()
        .filter(|c| queue.channels.contains(*c))
        .map(|c| (c, 1))
        .collect();
    (
        AgentSpec {
            id: format!("{}@staff", queue.id),
            team: queue.team.to_string(),
            transfer_address: format!("sip:{}@staff-for.invalid", queue.id),
            skills: queue.skills.clone(),
            languages: Vec::new(),
            channels,
        },
        None,
    )
}

/// The roster agent a shift's copy was made from (`agent.3` → `agent`).
fn template_id(id: &str) -> &str {
    id.rsplit_once('.').map_or(id, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_lowers_while_met_raises_while_missed_and_settles_once() {
        // Met at 5 (Erlang C says 5 too): try 4; met: try 3; missed:
        // settle on 4.
        assert_eq!(
            next(Search::Probe, 5, true, 0, 50, Some(5)),
            (Search::Lowering, 4)
        );
        assert_eq!(
            next(Search::Lowering, 4, true, 0, 50, None),
            (Search::Lowering, 3)
        );
        assert_eq!(
            next(Search::Lowering, 3, false, 0, 50, None),
            (Search::Settled, 4)
        );
        // Missed at 2 with Erlang C at 9: jump, then go the way it says.
        assert_eq!(
            next(Search::Probe, 2, false, 0, 50, Some(9)),
            (Search::Probe, 9)
        );
        assert_eq!(
            next(Search::Probe, 9, false, 0, 50, None),
            (Search::Raising, 10)
        );
        assert_eq!(
            next(Search::Raising, 10, true, 0, 50, None),
            (Search::Settled, 10)
        );
        // Met at 20 where Erlang C says 6: jump down; met there: lower on.
        assert_eq!(
            next(Search::Probe, 20, true, 0, 50, Some(6)),
            (Search::Probe, 6)
        );
        assert_eq!(
            next(Search::Probe, 6, true, 0, 50, None),
            (Search::Lowering, 5)
        );
        // Never below the floor, never above the cap.
        assert_eq!(
            next(Search::Probe, 1, true, 1, 50, Some(0)),
            (Search::Settled, 1)
        );
        assert_eq!(
            next(Search::Probe, 9, true, 4, 50, Some(0)),
            (Search::Probe, 4)
        );
        assert_eq!(
            next(Search::Raising, 50, false, 0, 50, None),
            (Search::Settled, 50)
        );
        assert_eq!(
            next(Search::Probe, 2, false, 0, 8, Some(9)),
            (Search::Raising, 3)
        );
        // A settled queue that misses once others moved is raised again.
        assert_eq!(
            next(Search::Settled, 4, false, 0, 50, None),
            (Search::Raising, 5)
        );
    }

    #[test]
    fn closed_hours_and_policy_callbacks_do_not_count() {
        let mut s = Slot::default();
        s.offered = 10;
        s.answered_in_time = 6;
        s.abandoned = 1;
        s.callbacks.insert("closed", 1);
        s.callbacks.insert("policy", 1);
        s.callbacks.insert("queue_full", 1);
        let (counted, sl, ab) = judged(&s);
        assert_eq!(counted, 8);
        assert!((sl - 0.75).abs() < 1e-9 && (ab - 0.125).abs() < 1e-9);
        assert_eq!(judged(&Slot::default()).0, 0);
    }
}
