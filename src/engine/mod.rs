//! The pure routing core: the engine's state, its one door
//! ([`Engine::apply`], in `command`), time passing (`advance`) and the
//! views. By concern: `decision` (what an answer is), `route` (deciding
//! one contact), `reservation` (agents held, confirmed, released),
//! `agents` (profiles and states), `history` (paths and retries),
//! `queueing` (waiting lines), `snapshot` (the state as bytes).
//! Synchronous and deterministic; time comes in as an argument. Knows nothing of tonic, tokio, prost or metrics: it returns data
//! (decisions, counters) and the edge records and serves them.
//!
//! Callers hold the engine behind one lock and never across an `.await`:
//! every operation is atomic, so no interleaving of requests can reserve one
//! agent for two contacts.

mod agent_view;
mod agents;
mod command;
mod decision;
mod error;
mod event;
pub mod ewt;
mod expiring;
mod history;
mod ids;
mod once;
mod queueing;
mod reservation;
mod roster;
mod route;
mod snapshot;
mod stats;
pub mod waiting;
mod watchers;

pub use ids::IdKey;
use ids::IdKind;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    sync::Arc,
};

use chrono::Duration;

pub use agent_view::{
    AgentFilter, AgentPage, AgentView, ChannelLoad, HeldContact, HeldOffer, Paused,
};
pub use agents::{AgentSpec, MAX_CHANNEL_CAPACITY, ProfileFault, ProfilePart, ProfileProblem};
pub use command::{
    Apply, Cancel, Command, Complete, Configure, Confirm, LoggedOnce, Release, RemoveAgent,
    ReplacePolicy, Restarted, Route, SetAgentState, Tick, Unwatch, UpsertAgent, Watch,
};
pub use decision::{
    AgentOffer, CallbackOffer, Decision, DecisionId, Guidance, Outcome, ReservationId,
};
pub use error::{EngineError, QueueNamed, Settled};
pub use event::{Assignment, Event, Notice, Notices, Parked, Place, Withdrawal};
pub use expiring::Expiring;
pub use history::{Hop, HopKind};
pub use once::{Answered, Kept, Once, Settle};
pub use queueing::{ContactStatus, QueuedOffer, UNSTAFFED_GRACE};
use reservation::{Fate, Ledger, Reservation, Slot};
pub use roster::{Agent, AgentIdx, Pick, QueuePool, Roster};
pub use snapshot::{STATE_FORMAT, SnapshotError};
pub use stats::{HANDLE_TIMES_TRUSTED, QueueStats};
use waiting::WaitingRoom;
pub use watchers::{MAX_UNDELIVERED, UNDELIVERED_KEPT, WatchFilter, WatchId};
use watchers::{Undelivered, Watchers};

use crate::model::{AgentState, FastMap, Time};
use crate::policy::{Policy, QueueIdx, Text};

/// Limits of what the engine remembers. Each memory is a window of time,
/// as promised to clients, with a cap sized for a stated peak so memory is
/// bounded; an entry forgotten before its window ends is counted
/// ([`Counters::idempotency_evicted_early`], [`Counters::paths_evicted_early`]).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long a request id's decision is replayed to retries.
    pub idempotency_retention: Duration,
    /// Request ids kept at most: the window times the peak rate of new
    /// requests it must hold (see [`EngineConfig::keys_for`]).
    pub max_idempotency_keys: usize,
    /// How long a contact's path is kept after its first hop.
    pub path_retention: Duration,
    /// Contacts' paths kept at most.
    pub max_paths: usize,
    /// Hops kept per contact; later hops replace the newest.
    pub max_hops: usize,
    /// Agents registered at most; a new one beyond it is refused. At most
    /// 16.7 million (the agent slots the idle indexes can name).
    pub max_agents: usize,
    /// The key decision and reservation ids are enciphered under (AES-128
    /// of a counter): 128 bits no client can predict from the ids it saw,
    /// yet the same on every replay. Random for a new log, then kept with
    /// it, so replayed ids are the ids clients were given.
    pub id_key: IdKey,
}

/// The limits of [`EngineConfig`] that change what the engine decides (a
/// retry answered from memory or decided anew, an agent refused), in the
/// form a log keeps: a log replays under the limits it was written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// [`EngineConfig::idempotency_retention`], in milliseconds.
    pub idempotency_retention_ms: i64,
    /// [`EngineConfig::max_idempotency_keys`].
    pub max_idempotency_keys: usize,
    /// [`EngineConfig::path_retention`], in milliseconds.
    pub path_retention_ms: i64,
    /// [`EngineConfig::max_paths`].
    pub max_paths: usize,
    /// [`EngineConfig::max_hops`].
    pub max_hops: usize,
    /// [`EngineConfig::max_agents`].
    pub max_agents: usize,
}

impl EngineConfig {
    /// The limits, as a log keeps them.
    pub fn limits(&self) -> Limits {
        Limits {
            idempotency_retention_ms: self.idempotency_retention.num_milliseconds(),
            max_idempotency_keys: self.max_idempotency_keys,
            path_retention_ms: self.path_retention.num_milliseconds(),
            max_paths: self.max_paths,
            max_hops: self.max_hops,
            max_agents: self.max_agents.min(roster::MAX_AGENT_SLOTS),
        }
    }
}

/// The version of the rules by which the engine decides. Bump it with any
/// change that makes the same commands decide differently (a guard, a
/// default, a tie-break): a log written under another version is not
/// replayed, since that would rebuild decisions that were never made.
/// 2: the explicit identity gate and REQUEST_ID_REUSED.
/// 3: 128-bit enciphered ids.
/// 4: the estimated wait is the time to free as many agents as are ahead,
/// without Erlang C's steady-state term.
/// 5: a RouteContact reservation that lapses is not the agent's miss.
/// 6: callback deadlines count opening hours in real time across a
/// daylight-saving change; an emergency gets its script without an intent;
/// a signal the policy does not know is refused; the lines are swept when
/// they or their staffing change and at closings and grace ends, not once a
/// second.
/// 7: a contact routed again while an offer for it is out is decided
/// before the agent of that offer goes to anyone else; a watch filter may
/// name a queue the policy lacks.
/// 8: a contact routed again withdraws the offer an earlier answer made
/// it, and a withdrawn offer gives its agent back its place in the idle
/// order.
/// 9: ids carry the epoch each start draws, so a start never gives again
/// an id a lost tail of the log had given; a queue's staffed
/// count is of agents on its channels; an urgent contact goes on call
/// after hours only on a channel the on-call queue takes, and waits under
/// its limit when moved there at a closing; a language is served, and
/// matched by rules, by its shorter forms too.
/// 10: an agent with offers lapsing together is offered nothing until
/// they all have, so every miss counts first; a waiting contact's position
/// and estimate are of its channel's line and agents.
/// 11: a policy with a callback window under a minute or a holiday listed
/// twice is refused; a warm transfer's reservation that ends unconfirmed
/// adds a hop to the contact's path; a callback for a waiting contact whose
/// intent a reload removed counts for its queue; an agent's eligible queues
/// are listed in the policy's order.
pub const ROUTING_VERSION: u32 = 11;

/// The peak rate of new requests with a request id the default window
/// holds in full.
pub const DEFAULT_PEAK_PER_SECOND: u32 = 1_000;

impl EngineConfig {
    /// Request ids a window must hold at `peak_per_second` new ones.
    pub fn keys_for(window: Duration, peak_per_second: u32) -> usize {
        let secs = usize::try_from(window.num_seconds().max(1)).unwrap_or(usize::MAX);
        secs.saturating_mul(peak_per_second as usize)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        let window = Duration::minutes(10);
        EngineConfig {
            idempotency_retention: window,
            max_idempotency_keys: EngineConfig::keys_for(window, DEFAULT_PEAK_PER_SECOND),
            path_retention: Duration::hours(24),
            // A day of a large contact centre: 2 million contacts.
            max_paths: 2_000_000,
            max_hops: 32,
            max_agents: 100_000,
            id_key: IdKey::default(),
        }
    }
}

/// Staffing of one queue now.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    /// Queue id.
    pub id: Text,
    /// Escalation level.
    pub level: u8,
    /// Owning team.
    pub team: Text,
    /// Open now.
    pub open: bool,
    /// Eligible agents not offline that serve one of its channels.
    pub staffed: u32,
    /// Eligible agents free on a channel of the queue.
    pub available: u32,
    /// Live reservations.
    pub reservations: u32,
    /// Contacts waiting (not counting those with an offer out).
    pub waiting: u32,
    /// The longest wait among them.
    pub longest_wait: Duration,
    /// Estimated wait for a contact arriving now: zero when an agent is
    /// free and nobody waits; `None` when such a contact would not wait at
    /// all (the queue closed, nobody logged in to serve it in its pool or
    /// the wider pools its steps reach, or no line kept and nobody free).
    /// A full line, or one longer than `max_wait`, keeps its figure.
    pub estimated_wait: Option<Duration>,
    /// The handle time that estimate uses (see
    /// [`QueueStats::handle_estimate`]).
    pub handle_time: Duration,
    /// What the queue has counted since start.
    pub stats: QueueStats,
}

/// Cumulative counts since start, for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Reservations made.
    pub reserved: u64,
    /// Reservations confirmed.
    pub confirmed: u64,
    /// Reservations released by a client, or withdrawn by careroute.
    pub released: u64,
    /// Reservations whose TTL passed.
    pub expired: u64,
    /// Request ids forgotten before their window ended (the cap was too
    /// small for the traffic: a late retry would be decided anew).
    pub idempotency_evicted_early: u64,
    /// Contact paths forgotten before their window ended.
    pub paths_evicted_early: u64,
    /// Callbacks and moves dropped before any watcher of their queue
    /// connected.
    pub undelivered_dropped: u64,
    /// Commands whose time was before the last command's (taken as the
    /// last command's: the engine's clock never goes backwards).
    pub clock_went_back: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
enum Timer {
    Expire(ReservationId),
    WrapUpEnd(AgentIdx, u64),
    /// A waiting contact's relaxation step: move it to a wider pool.
    Step(u64, QueueIdx),
    /// An agent's cool-down after passing on a contact ends: offer it
    /// what it may take again.
    Reoffer(AgentIdx),
}

/// The routing engine: one per process, behind one lock. `Clone` is for
/// what-if copies off the serving path (the simulator's trials); a clone
/// is the same state, so the same commands decide the same.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    #[serde(with = "snapshot::policy_text")]
    policy: Arc<Policy>,
    #[serde(with = "snapshot::config")]
    config: EngineConfig,
    roster: Roster,
    reservations: FastMap<ReservationId, Reservation>,
    /// The live offer RouteContact made each contact itself (not from its
    /// line): routing the contact again withdraws it, so one contact never
    /// holds two agents.
    offers: FastMap<String, ReservationId>,
    ledger: Ledger,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    /// The first decision per (contact id, request id), for retries.
    /// With the request's digest ([`Contact::digest`]): a reused request
    /// id with another request is refused, not answered with this.
    replies: Expiring<(Text, Text), (u32, Arc<Decision>)>,
    /// The answers of settling commands sent with a request id, by (request
    /// id, what they acted on), with the command's digest.
    settle_replies: Expiring<(Text, Text), (u32, Kept)>,
    paths: Expiring<String, Vec<Hop>>,
    next_id: u64,
    /// The epoch the last start drew (0 before any), in every id made: a
    /// start after the log lost its last records (a power loss under
    /// `--journal-sync write`) gives their counters again, never their ids.
    epoch: u32,
    /// The cipher of [`EngineConfig::id_key`], set up once.
    #[serde(skip)]
    ids: ids::IdCipher,
    counters: Counters,
    waiting: WaitingRoom,
    stats: Vec<QueueStats>,
    /// Decided by the command being applied, taken before the next one.
    #[serde(skip)]
    events: Vec<Event>,
    /// What the command being applied changed by itself beside `events`,
    /// each with how many of the command's events came before it; each
    /// command starts with none.
    #[serde(skip)]
    notices: Vec<(usize, Notice)>,
    /// The command's events and notices that came before it acted: how
    /// many, as its first look at the clock left them (or what a new hop
    /// withdrew, for a route); none before it looked.
    #[serde(skip)]
    ahead: Option<(usize, usize)>,
    /// Events not yet taken when the command began (not its own).
    #[serde(skip)]
    events_before: usize,
    /// When the lines are next looked at by themselves: the earliest
    /// closing of a queue anyone waits in, or the end of an unstaffed
    /// line's grace. A change to a line or to who staffs it looks at once,
    /// in the command that made it.
    sweep_due: Option<Time>,
    /// Per queue: since when contacts wait in its line with nobody logged
    /// in to serve them.
    unstaffed_since: Vec<Option<Time>>,
    watchers: Watchers,
    undelivered: Undelivered,
    /// The time of the last command applied.
    now: Option<Time>,
    /// While due timers fire: each agent with offers lapsing among them
    /// not yet fired, and how many. It is offered nothing until the last
    /// has, so every miss counts first ([`Engine::advance`]); empty
    /// otherwise.
    #[serde(skip)]
    lapsing: FastMap<AgentIdx, u32>,
    /// Agents passed over for that, offered once the due timers have fired.
    #[serde(skip)]
    held: Vec<AgentIdx>,
}

impl Engine {
    /// An engine with no agents.
    pub fn new(policy: Arc<Policy>, mut config: EngineConfig) -> Engine {
        config.max_agents = config.max_agents.min(roster::MAX_AGENT_SLOTS);
        Engine {
            roster: Roster::new(&policy),
            waiting: WaitingRoom::new(policy.queues.len()),
            stats: vec![QueueStats::default(); policy.queues.len()],
            unstaffed_since: vec![None; policy.queues.len()],
            policy,
            reservations: FastMap::default(),
            offers: FastMap::default(),
            ledger: Ledger {
                first: 0,
                fates: VecDeque::new(),
                epochs: VecDeque::new(),
            },
            timers: BinaryHeap::new(),
            replies: Expiring::new(config.idempotency_retention, config.max_idempotency_keys),
            settle_replies: Expiring::new(
                config.idempotency_retention,
                config.max_idempotency_keys,
            ),
            paths: Expiring::new(config.path_retention, config.max_paths),
            next_id: 0,
            epoch: 0,
            ids: ids::IdCipher::new(&config.id_key),
            counters: Counters::default(),
            events: Vec::new(),
            notices: Vec::new(),
            ahead: None,
            events_before: 0,
            sweep_due: None,
            watchers: Watchers::default(),
            undelivered: Undelivered::default(),
            now: None,
            lapsing: FastMap::default(),
            held: Vec::new(),
            config,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.config.limits()
    }

    /// Puts new limits in force; the next eviction applies them.
    fn configure(&mut self, limits: Limits, now: Time) {
        self.advance(now);
        let c = &mut self.config;
        c.idempotency_retention = Duration::milliseconds(limits.idempotency_retention_ms);
        c.max_idempotency_keys = limits.max_idempotency_keys;
        c.path_retention = Duration::milliseconds(limits.path_retention_ms);
        c.max_paths = limits.max_paths;
        c.max_hops = limits.max_hops;
        c.max_agents = limits.max_agents.min(roster::MAX_AGENT_SLOTS);
        self.replies
            .set_limits(c.idempotency_retention, c.max_idempotency_keys);
        self.settle_replies
            .set_limits(c.idempotency_retention, c.max_idempotency_keys);
        self.paths.set_limits(c.path_retention, c.max_paths);
    }

    /// The time of the last command applied (the engine's clock).
    pub fn now(&self) -> Option<Time> {
        self.now
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The roster, for views and tests.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// Cumulative counters.
    pub fn counters(&self) -> Counters {
        Counters {
            undelivered_dropped: self.undelivered.dropped,
            ..self.counters
        }
    }

    /// Live reservations.
    pub fn live_reservations(&self) -> usize {
        self.reservations.len()
    }

    /// The id of the `seq`th decision or reservation (`kind`): the counter
    /// enciphered, so neighbouring ids share no visible part.
    fn id(&self, kind: IdKind, seq: u64) -> u128 {
        self.ids.encipher(kind, self.epoch, seq)
    }

    /// Applies everything due by `now`: reservation expiries, wrap-up ends,
    /// relaxation steps, wait limits, cool-downs, the sweep of the lines,
    /// and forgetting old replies and paths. Every operation calls it first,
    /// so no reservation is ever seen past its TTL; the edge also calls it
    /// when [`Engine::next_due`] comes. What a timer sets off (a new offer,
    /// a callback) happens at `now`, when it is actually applied, so the
    /// events report real waits and full TTLs.
    fn advance(&mut self, now: Time) {
        // Forgotten first, so nothing due now adds to what is past keeping
        // (a hop to an expired path would go with it): whether a tick with
        // nothing due forgot them earlier then makes no difference.
        self.counters.idempotency_evicted_early += self.replies.evict(now);
        self.counters.idempotency_evicted_early += self.settle_replies.evict(now);
        self.counters.paths_evicted_early += self.paths.evict(now);
        self.undelivered.expire(now);
        loop {
            let due = self.due_timers(now);
            if due.is_empty() {
                break;
            }
            // An agent whose offers lapse together has every miss counted
            // (and is paused, at the limit) before it is offered more.
            for (_, timer) in &due {
                if let Timer::Expire(id) = timer
                    && let Some(r) = self.reservations.get(id)
                {
                    *self.lapsing.entry(r.agent).or_default() += 1;
                }
            }
            for (due, timer) in due {
                self.fire(due, timer, now);
            }
            // A lapse settled otherwise meanwhile (its offer withdrawn) is
            // not waited for.
            self.lapsing.clear();
            for a in std::mem::take(&mut self.held) {
                self.dispatch(a, now);
            }
        }
        self.wait_limits(now);
        if self.sweep_is_due(now) || self.take_touched() {
            self.sweep_lines(now);
        }
        // What came so far came of time passing: it is told before the
        // command's own change.
        if self.ahead.is_none() {
            self.acts_from_here();
        }
    }

    /// Takes every timer due by `now`, in order.
    fn due_timers(&mut self, now: Time) -> Vec<(Time, Timer)> {
        let mut due = Vec::new();
        while self.timers.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if let Some(Reverse(timer)) = self.timers.pop() {
                due.push(timer);
            }
        }
        due
    }

    /// Fires one timer that fell due at `due`: an expiry, a wrap-up end, a
    /// relaxation step or a cool-down's end.
    fn fire(&mut self, due: Time, timer: Timer, now: Time) {
        match timer {
            Timer::Expire(id) => {
                if let Some(a) = self.reservations.get(&id).map(|r| r.agent)
                    && let Some(n) = self.lapsing.get_mut(&a)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.lapsing.remove(&a);
                    }
                }
                if self.settle(id, Fate::Expired, now).is_some() {
                    self.counters.expired += 1;
                }
            }
            Timer::WrapUpEnd(a, generation) => {
                let ended = self.roster.update(a, |agent| {
                    let ended =
                        agent.state == AgentState::WrapUp && agent.wrap_generation == generation;
                    if ended {
                        agent.state = AgentState::Available;
                        agent.ready_since = [due.timestamp_micros(); 5];
                    }
                    ended
                });
                if ended {
                    self.noticed_state(a);
                }
                self.dispatch(a, now);
            }
            Timer::Step(seq, pool) => self.relax(seq, pool, now),
            Timer::Reoffer(a) => self.dispatch(a, now),
        }
    }

    /// Whether the lines are due to be looked at by themselves: the gate of
    /// [`Engine::advance`] and [`Engine::next_due`] agree, so a tick with
    /// nothing due (not logged) changes nothing a replay would miss.
    fn sweep_is_due(&self, now: Time) -> bool {
        !self.waiting.is_empty() && self.sweep_due.is_some_and(|due| due <= now)
    }

    /// Holds what is kept for retries and paths to its caps, at the end of
    /// each command: a tick with nothing due (not logged) then has nothing
    /// over a cap to drop, so early evictions count the same in a replay.
    fn trim_kept(&mut self, now: Time) {
        self.counters.idempotency_evicted_early +=
            self.replies.trim(now) + self.settle_replies.trim(now);
        self.counters.paths_evicted_early += self.paths.trim(now);
    }

    /// Drops the expiry timers of reservations already settled from the
    /// head of the timers, at the end of each command: firing one does
    /// nothing, so [`Engine::next_due`] is then a timer that does something
    /// (or a tick at a confirmed transfer's old expiry would be logged).
    fn drop_settled_expiries(&mut self) {
        while let Some(Reverse((_, Timer::Expire(id)))) = self.timers.peek()
            && !self.reservations.contains_key(id)
        {
            self.timers.pop();
        }
    }

    /// Whether a line or who staffs it changed since the last look; the
    /// flags are cleared.
    fn take_touched(&mut self) -> bool {
        self.waiting.take_touched() | self.roster.take_staffing_touched()
    }

    /// Whether nothing is due by `now`: a tick then changes nothing a
    /// replay would miss (if it tells nothing, it need not be logged).
    pub fn nothing_due(&self, now: Time) -> bool {
        self.next_due().is_none_or(|due| due > now)
    }

    /// When the engine next has something to do by itself (a timer, the
    /// sweep of the lines), if anything: the edge calls [`Engine::advance`]
    /// then, so timers fire on time rather than on a fixed tick.
    pub fn next_due(&self) -> Option<Time> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        let sweep = self.sweep_due.filter(|_| !self.waiting.is_empty());
        [timer, sweep, self.waiting.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Every queue with its staffing as of the last command: a view, which
    /// applies nothing (apply a [`Tick`] first for what is due now).
    pub fn queues(&self) -> Vec<QueueView> {
        let now = self.now.unwrap_or(Time::UNIX_EPOCH);
        let policy = Arc::clone(&self.policy);
        let mut views = Vec::with_capacity(policy.queues.len());
        for (i, q) in policy.queues.iter().enumerate() {
            if q.parent.is_some() {
                continue;
            }
            let waiting = self.line_count(i);
            let pool = self.roster.pool(i);
            let staffed = policy.pools_of(i).any(|p| self.roster.pool(p).staffed > 0);
            let open = policy.is_open(i, now);
            let estimated_wait = if !open || !staffed {
                None
            } else if waiting == 0 && pool.available > 0 {
                Some(Duration::zero())
            } else if q.max_waiting == 0 {
                None
            } else {
                Some(self.estimated_wait(i, waiting + 1))
            };
            let longest_wait = policy
                .pools_of(i)
                .map(|p| self.waiting.longest_wait(p, now))
                .max()
                .unwrap_or_else(Duration::zero);
            views.push(QueueView {
                id: q.id.clone(),
                level: q.level,
                team: q.team.clone(),
                open,
                staffed: pool.staffed,
                available: pool.available,
                reservations: pool.reservations,
                waiting,
                longest_wait,
                estimated_wait,
                handle_time: Duration::milliseconds(
                    (self.stats[i].handle_estimate(q.handle_time) * 1000.0) as i64,
                ),
                stats: self.stats[i],
            });
        }
        views
    }

    /// Replaces the policy, as one state transition that keeps every
    /// waiting contact, offer, reservation and timer valid. What is due is
    /// applied first, under the policy it was scheduled under. Queues are
    /// then matched by id: waiting contacts keep their place (and arrival
    /// numbers carry on), live reservations and active contacts carry over,
    /// agents are placed in the new queues, and relaxation-step timers are
    /// re-made from the new queues' steps. A contact whose queue is gone
    /// gets a callback event.
    fn replace_policy(&mut self, policy: Arc<Policy>, now: Time) {
        self.advance(now);
        let map = self.policy.queue_map(&policy);
        self.rehome_waiting(&policy, &map, now);
        self.roster.rebuild(&policy);
        for r in self.reservations.values_mut() {
            r.queue = r.queue.and_then(|q| map[q]);
            if let Some(q) = r.queue {
                r.queue_id = policy.queues[q].id.clone();
                *self.roster.reservations_mut(q) += 1;
            }
        }
        let mut timers = std::mem::take(&mut self.timers).into_vec();
        timers.retain(|Reverse((_, t))| !matches!(t, Timer::Step(..)));
        timers.extend(self.step_timers(&policy, now).into_iter().map(Reverse));
        self.timers = BinaryHeap::from(timers);
        self.policy = policy;
        for a in 0..self.roster.len() {
            self.dispatch(a as AgentIdx, now);
        }
        // Steps the new policy says are already due apply at once.
        self.advance(now);
    }
}

#[cfg(test)]
pub(crate) mod queueing_tests;
#[cfg(test)]
pub(crate) mod tests;
