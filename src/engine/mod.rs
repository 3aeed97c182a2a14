//! The pure routing core: agents, reservations, waiting lines (see
//! `queueing`), contact paths and [`Engine::route`]. Synchronous and deterministic; time comes in as an
//! argument. Knows nothing of tonic, tokio, prost or metrics: it returns data
//! (decisions, counters) and the edge records and serves them.
//!
//! Callers hold the engine behind one lock and never across an `.await`:
//! every operation is atomic, so no interleaving of requests can reserve one
//! agent for two contacts.

mod command;
mod error;
mod event;
pub mod ewt;
mod expiring;
mod queueing;
mod roster;
mod snapshot;
mod stats;
pub mod waiting;
mod watchers;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    fmt,
    str::FromStr,
    sync::Arc,
};

use chrono::Duration;

pub use command::{
    Apply, Cancel, Command, Complete, Configure, Confirm, Release, RemoveAgent, ReplacePolicy,
    Route, SetAgentState, Tick, Unwatch, UpsertAgent, Watch,
};
pub use error::EngineError;
pub use event::{Assignment, Event, Parked, Withdrawal};
pub use expiring::Expiring;
pub use queueing::{ContactStatus, QueuedOffer, UNSTAFFED_GRACE};
pub use roster::{Agent, AgentIdx, Pick, QueuePool, Roster};
pub use snapshot::{STATE_FORMAT, SnapshotError};
pub use stats::{HANDLE_TIMES_TRUSTED, QueueStats};
use waiting::WaitingRoom;
pub use watchers::{MAX_UNDELIVERED, UNDELIVERED_KEPT, WatchFilter, WatchId};
use watchers::{Undelivered, Watchers};

use crate::model::{
    AgentState, CallbackReason, Channel, Contact, FastMap, Reason, ReleaseReason, Time, Urgency,
};
use crate::policy::{CallbackTerms, IntentIdx, Policy, QueueIdx, Resolved, Step, Text, TextList};

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
    /// High 32 bits of every decision and reservation id: random for a new
    /// journal (or without one), then kept with the journal, so replayed
    /// ids are the ids clients were given.
    pub id_prefix: u32,
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
            id_prefix: 0,
        }
    }
}

macro_rules! hex_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
        )]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:016x}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let hex = s.strip_prefix($prefix).ok_or(())?;
                if hex.len() != 16 {
                    return Err(());
                }
                u64::from_str_radix(hex, 16).map($name).map_err(|_| ())
            }
        }
    };
}

hex_id!(
    DecisionId,
    "d-",
    "Identifies one decision in logs, paths and replies."
);
hex_id!(
    ReservationId,
    "r-",
    "Identifies one reservation of an agent."
);

/// A warm transfer to a reserved agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentOffer {
    /// Who.
    pub agent_id: Text,
    /// SIP URI or extension.
    pub transfer_address: Text,
    /// Through which queue.
    pub queue_id: Text,
    /// The reservation to confirm or release.
    pub reservation: ReservationId,
    /// When the reservation lapses unless confirmed.
    pub expires_at: Time,
    /// The agent does not speak the contact's language.
    pub interpreter_needed: bool,
}

/// A callback ticket to open.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallbackOffer {
    /// Owning queue.
    pub queue_id: Text,
    /// Why not a transfer.
    pub reason: CallbackReason,
    /// Ticket type, deadline, priority, intake fields.
    pub terms: CallbackTerms,
}

impl CallbackOffer {
    /// The ticket `policy` gives a contact of `intent` and `urgency` owned
    /// by `queue`, from `now`.
    pub fn new(
        policy: &Policy,
        queue: QueueIdx,
        reason: CallbackReason,
        intent: IntentIdx,
        urgency: Urgency,
        now: Time,
    ) -> CallbackOffer {
        CallbackOffer {
            queue_id: policy.queues[queue].id.clone(),
            reason,
            terms: policy.callback_terms(queue, intent, urgency, now),
        }
    }
}

/// Exactly one outcome per decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Warm transfer to a reserved agent.
    Agent(AgentOffer),
    /// Open a callback ticket.
    Callback(CallbackOffer),
    /// Wait in a queue; an agent is assigned when one frees up.
    Queued(QueuedOffer),
    /// The emergency script.
    Emergency {
        /// Script id.
        script_id: Text,
        /// What the agent does.
        instruction: Text,
    },
    /// Verify the caller first.
    Authenticate {
        /// Script id.
        script_id: Text,
        /// What the agent does.
        instruction: Text,
    },
}

impl Outcome {
    /// "agent", "callback", "emergency" or "authenticate": a bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Agent(_) => "agent",
            Outcome::Callback(_) => "callback",
            Outcome::Queued(_) => "queued",
            Outcome::Emergency { .. } => "emergency",
            Outcome::Authenticate { .. } => "authenticate",
        }
    }
}

/// Where one contact goes, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Unique id.
    pub id: DecisionId,
    /// The policy rule that matched.
    pub rule_id: Option<Text>,
    /// Why, in the order the reasons applied.
    pub reasons: Vec<Reason>,
    /// Escalation level 1-4 of the owner.
    pub level: u8,
    /// Owning team.
    pub team: Text,
    /// Guidance for the receiving agent: the rule's, then the queue's.
    pub guidance: Guidance,
    /// What happens.
    pub outcome: Outcome,
}

impl Decision {
    /// The queue that owns the contact after this decision, if any.
    pub fn queue_id(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Agent(a) => Some(&a.queue_id),
            Outcome::Callback(c) => Some(&c.queue_id),
            Outcome::Queued(q) => Some(&q.queue_id),
            Outcome::Emergency { .. } | Outcome::Authenticate { .. } => None,
        }
    }
}

/// Guidance from the policy, shared with it rather than copied.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Guidance {
    /// The identity guard's, when an urgent clinical contact goes on
    /// before its identity is verified.
    pub identity: Option<TextList>,
    /// The matched rule's, when the rule decided.
    pub rule: Option<TextList>,
    /// The owning queue's.
    pub queue: Option<TextList>,
}

impl Guidance {
    /// Every line, the rule's first.
    pub fn iter(&self) -> impl Iterator<Item = &Text> {
        self.identity
            .iter()
            .chain(self.rule.iter())
            .chain(self.queue.iter())
            .flat_map(|l| l.iter())
    }
}

/// One hop of a contact through careroute: a decision, or something that
/// happened to it while it waited in line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hop {
    /// The decision made, or for a hop in line the decision that queued it.
    pub decision: DecisionId,
    /// When.
    pub at: Time,
    /// What happened.
    pub kind: HopKind,
    /// The rule that matched (decisions only).
    pub rule_id: Option<Text>,
    /// The queue that owns the contact after this hop.
    pub queue_id: Option<Text>,
    /// The agent reserved or offered, if any.
    pub agent_id: Option<Text>,
    /// The queue that handed the contact on (a transfer, a move at closing).
    pub from_queue_id: Option<Text>,
    /// The reservation of an offer from the line.
    pub reservation: Option<ReservationId>,
}

/// What a hop records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HopKind {
    /// A decision, with its outcome kind ([`Outcome::kind`]).
    Decided(#[serde(with = "snapshot::outcome_kind")] snapshot::OutcomeKind),
    /// Offered to an agent from the line.
    Assigned,
    /// The offer lapsed; the contact went back in line.
    OfferExpired,
    /// The offer was released; the contact went back in line.
    OfferReleased,
    /// Moved to its queue's n-th relaxation step.
    Stepped(u32),
    /// Moved at closing to the on-call queue.
    Moved,
    /// The caller hung up while waiting.
    Cancelled,
    /// Left the line for a callback ticket.
    CalledBack(CallbackReason),
}

/// An agent's registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentSpec {
    /// The CTI's id.
    pub id: String,
    /// Team.
    pub team: String,
    /// SIP URI or extension.
    pub transfer_address: String,
    /// Skills with proficiency 1-5.
    pub skills: Vec<(String, u8)>,
    /// Language tags spoken.
    pub languages: Vec<String>,
    /// Contacts at once per channel.
    pub channels: Vec<(Channel, u8)>,
}

/// Most contacts an agent takes at once on one channel.
pub const MAX_CHANNEL_CAPACITY: u8 = 50;

impl AgentSpec {
    /// Checks the profile; on refusal names the field and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: String| Err((field.to_owned(), msg));
        if self.id.is_empty() {
            return bad("agent_id", "required".into());
        }
        if self.transfer_address.trim().is_empty() {
            return bad(
                "transfer_address",
                "required: the SIP URI or extension of warm transfers".into(),
            );
        }
        for (i, (skill, level)) in self.skills.iter().enumerate() {
            if skill.is_empty() {
                return bad(&format!("skills[{i}].skill"), "required".into());
            }
            if !(1..=5).contains(level) {
                return bad(
                    &format!("skills[{i}].proficiency"),
                    format!("{level} is not 1-5"),
                );
            }
            if self.skills[..i].iter().any(|(s, _)| s == skill) {
                return bad(
                    &format!("skills[{i}].skill"),
                    format!("`{skill}` listed twice"),
                );
            }
        }
        for (i, (channel, capacity)) in self.channels.iter().enumerate() {
            if !(1..=MAX_CHANNEL_CAPACITY).contains(capacity) {
                return bad(
                    &format!("channels[{i}].capacity"),
                    format!("{capacity} is not 1-{MAX_CHANNEL_CAPACITY}"),
                );
            }
            if self.channels[..i].iter().any(|(c, _)| c == channel) {
                return bad(
                    &format!("channels[{i}].channel"),
                    format!("`{channel}` listed twice"),
                );
            }
        }
        Ok(())
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
    /// Eligible agents not offline.
    pub staffed: u32,
    /// Eligible agents free on a channel of the queue.
    pub available: u32,
    /// Live reservations.
    pub reservations: u32,
    /// Contacts waiting (not counting those with an offer out).
    pub waiting: u32,
    /// The longest wait among them.
    pub longest_wait: Duration,
    /// Estimated wait for a contact arriving now.
    pub estimated_wait: Duration,
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
    /// Reservations released by a client.
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

/// What a reservation is for.
#[derive(Debug, Clone, Copy)]
struct Slot<'a> {
    queue: QueueIdx,
    contact_id: &'a str,
    channel: Channel,
    waiter: Option<u64>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reservation {
    id: ReservationId,
    agent: AgentIdx,
    contact_id: String,
    queue: Option<QueueIdx>,
    queue_id: Text,
    channel: Channel,
    /// Also held by its expiry timer; kept here for the TTL invariant check.
    #[cfg_attr(not(test), allow(dead_code))]
    expires_at: Time,
    /// The waiting contact this offer is for, if it came from a line.
    waiter: Option<u64>,
    /// No free agent spoke the contact's language.
    interpreter_needed: bool,
    /// Nobody watched the agent at some point while the offer was out: if
    /// it lapses, that is not the agent's miss.
    unseen: bool,
}

/// What became of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Fate {
    Live,
    Confirmed,
    Released(ReleaseReason),
    Expired,
}

/// The fate of the most recent reservations, one byte each, indexed by
/// their sequence number: answers "expired" or "already confirmed" for a
/// late confirm without a hash lookup, in bounded memory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Ledger {
    /// Sequence number of `fates[0]`.
    first: u32,
    fates: VecDeque<Fate>,
}

/// Reservations whose fate is remembered (1 MiB).
const LEDGER_LEN: usize = 1 << 20;

impl Ledger {
    fn push(&mut self) -> u32 {
        let seq = self.first.wrapping_add(self.fates.len() as u32);
        self.fates.push_back(Fate::Live);
        if self.fates.len() > LEDGER_LEN {
            self.fates.pop_front();
            self.first = self.first.wrapping_add(1);
        }
        seq
    }

    fn slot(&mut self, seq: u32) -> Option<&mut Fate> {
        self.fates.get_mut(seq.wrapping_sub(self.first) as usize)
    }
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

/// The routing engine: one per process, behind one lock.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Engine {
    #[serde(with = "snapshot::policy_text")]
    policy: Arc<Policy>,
    #[serde(with = "snapshot::config")]
    config: EngineConfig,
    roster: Roster,
    reservations: FastMap<ReservationId, Reservation>,
    ledger: Ledger,
    timers: BinaryHeap<Reverse<(Time, Timer)>>,
    /// The first decision per (contact id, request id), for retries.
    replies: Expiring<(Text, Text), Arc<Decision>>,
    paths: Expiring<String, Vec<Hop>>,
    next_id: u32,
    counters: Counters,
    waiting: WaitingRoom,
    stats: Vec<QueueStats>,
    /// Decided by the command being applied, taken before the next one.
    #[serde(skip)]
    events: Vec<Event>,
    last_sweep: Option<Time>,
    /// Per queue: since when contacts wait in its line with nobody logged
    /// in to serve them.
    unstaffed_since: Vec<Option<Time>>,
    watchers: Watchers,
    undelivered: Undelivered,
    /// The time of the last command applied.
    now: Option<Time>,
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
            ledger: Ledger {
                first: 0,
                fates: VecDeque::new(),
            },
            timers: BinaryHeap::new(),
            replies: Expiring::new(config.idempotency_retention, config.max_idempotency_keys),
            paths: Expiring::new(config.path_retention, config.max_paths),
            next_id: 0,
            counters: Counters::default(),
            events: Vec::new(),
            last_sweep: None,
            watchers: Watchers::default(),
            undelivered: Undelivered::default(),
            now: None,
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

    /// An id in this process's id space.
    fn id(&self, seq: u32) -> u64 {
        (u64::from(self.config.id_prefix) << 32) | u64::from(seq)
    }

    /// Applies everything due by `now`: reservation expiries, wrap-up ends,
    /// relaxation steps, wait limits, cool-downs, the sweep of the lines,
    /// and forgetting old replies and paths. Every operation calls it first,
    /// so no reservation is ever seen past its TTL; the edge also calls it
    /// when [`Engine::next_due`] comes. What a timer sets off (a new offer,
    /// a callback) happens at `now`, when it is actually applied, so the
    /// events report real waits and full TTLs.
    fn advance(&mut self, now: Time) {
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, timer))) = self.timers.pop() else {
                break;
            };
            match timer {
                Timer::Expire(id) => {
                    if self.settle(id, Fate::Expired, now).is_some() {
                        self.counters.expired += 1;
                    }
                }
                Timer::WrapUpEnd(a, generation) => {
                    self.roster.update(a, |agent| {
                        if agent.state == AgentState::WrapUp && agent.wrap_generation == generation
                        {
                            agent.state = AgentState::Available;
                            agent.ready_since = [due.timestamp_micros(); 5];
                        }
                    });
                    self.dispatch(a, now);
                }
                Timer::Step(seq, pool) => self.relax(seq, pool, now),
                Timer::Reoffer(a) => self.dispatch(a, now),
            }
        }
        self.wait_limits(now);
        self.sweep_lines(now);
        self.undelivered.expire(now);
        self.counters.idempotency_evicted_early += self.replies.evict(now);
        self.counters.paths_evicted_early += self.paths.evict(now);
    }

    /// Ends a live reservation and frees the agent's slot; a failed offer of
    /// a waiting contact puts it back in line, and the freed agent takes
    /// the best waiting contact it can.
    fn settle(&mut self, id: ReservationId, fate: Fate, now: Time) -> Option<Reservation> {
        let r = self.free_slot(id, fate, now)?;
        // Only the agent's own misses count: a lapse it could have seen, a
        // rejection, no answer. The IVR's and the network's never do.
        let agents_miss = match fate {
            Fate::Expired => !r.unseen,
            Fate::Released(reason) => reason.agents_miss(),
            _ => false,
        };
        if agents_miss {
            self.missed_offer(r.agent);
        }
        match (r.waiter, fate) {
            (Some(seq), Fate::Confirmed) => self.answered(seq, now),
            (Some(seq), Fate::Released(ReleaseReason::CallerHungUp)) => self.hung_up(seq, &r, now),
            (Some(seq), Fate::Expired | Fate::Released(_)) => self.offer_failed(seq, &r, fate, now),
            _ => {}
        }
        if fate != Fate::Confirmed {
            self.dispatch(r.agent, now);
        }
        Some(r)
    }

    /// Removes a live reservation and frees the agent's slot.
    fn free_slot(&mut self, id: ReservationId, fate: Fate, now: Time) -> Option<Reservation> {
        let r = self.reservations.remove(&id)?;
        if let Some(q) = r.queue {
            let n = self.roster.reservations_mut(q);
            *n = n.saturating_sub(1);
        }
        let c = r.channel.index();
        let freed = fate != Fate::Confirmed;
        let micros = now.timestamp_micros();
        self.roster.update(r.agent, |agent| {
            agent.reserved[c] = agent.reserved[c].saturating_sub(1);
            // Released or lapsed: free on this channel from now.
            if freed {
                agent.ready_since[c] = micros;
            }
        });
        if let Some(slot) = self.ledger.slot(id.0 as u32) {
            *slot = fate;
        }
        Some(r)
    }

    /// Decides where one contact goes at `now`, reserving an agent for a warm
    /// transfer when there is one.
    fn route(&mut self, contact: &Contact, now: Time) -> Result<Decision, EngineError> {
        self.advance(now);
        // Built once: looked up now, and kept with the reply if it is new.
        let reply_key = contact
            .request_id
            .as_deref()
            .map(|r| (roster::text(&contact.contact_id), roster::text(r)));
        if let Some(first) = reply_key.as_ref().and_then(|key| self.replies.get(key)) {
            let mut replay = Decision::clone(first);
            replay.reasons.push(Reason::IdempotentReplay);
            return Ok(replay);
        }
        let policy = Arc::clone(&self.policy);
        let facts = self.resolve(&policy, contact)?;
        // A new hop supersedes any place in line the contact held, and any
        // callback kept for a watcher that has not connected.
        self.withdraw(&contact.contact_id, Withdrawal::Rerouted, now);
        if !self.undelivered.is_empty() {
            self.undelivered.forget(&contact.contact_id);
        }
        let plan = policy.plan(contact, facts, now);
        // The rule that decided: none when a guard overrode it.
        let rule = plan
            .rule
            .filter(|_| plan.guard.is_none())
            .map(|r| &policy.rules[r]);
        let mut reasons = plan.reasons;
        self.next_id = self.next_id.wrapping_add(1);
        let id = DecisionId(self.id(self.next_id));

        let (queue, outcome) = match plan.step {
            Step::Emergency => {
                let e = &policy.emergency;
                (
                    None,
                    Outcome::Emergency {
                        script_id: e.script_id.clone(),
                        instruction: e.instruction.clone(),
                    },
                )
            }
            Step::Authenticate { failed, target } => {
                let a = &policy.authenticate;
                let (script_id, instruction) = if failed {
                    (a.failed_script_id.clone(), a.failed_instruction.clone())
                } else {
                    (a.script_id.clone(), a.instruction.clone())
                };
                (
                    target,
                    Outcome::Authenticate {
                        script_id,
                        instruction,
                    },
                )
            }
            Step::Callback { queue, reason } => (
                Some(queue),
                self.callback(queue, reason, facts, contact, now),
            ),
            Step::Route { queue } => {
                let chosen = self.choose(queue, contact);
                if contact.preferred_agent_id.is_some() && !matches!(chosen, Some((_, true))) {
                    reasons.push(Reason::PreferredAgentUnavailable);
                }
                let outcome = match chosen {
                    Some(pick) => {
                        reasons.push(if pick.1 {
                            Reason::PreferredAgent
                        } else {
                            Reason::LongestIdle
                        });
                        if pick.0.interpreter_needed {
                            reasons.push(Reason::InterpreterNeeded);
                        }
                        let slot = Slot {
                            queue,
                            contact_id: &contact.contact_id,
                            channel: contact.channel,
                            waiter: None,
                        };
                        Outcome::Agent(self.reserve(pick.0, slot, now))
                    }
                    // Nobody logged in, or the queue does not take the
                    // contact's channel: no line could ever be served.
                    None if self.roster.pool(queue).staffed == 0
                        || !policy.queues[queue].channels.contains(contact.channel) =>
                    {
                        reasons.push(Reason::NoAgentsStaffed);
                        self.callback(queue, CallbackReason::NoAgentsStaffed, facts, contact, now)
                    }
                    None => match self.enqueue(queue, contact, facts, id, now) {
                        Ok(offer) => {
                            reasons.push(Reason::Queued);
                            Outcome::Queued(offer)
                        }
                        Err(reason) => {
                            reasons.push(match reason {
                                CallbackReason::QueueFull => Reason::QueueFull,
                                CallbackReason::WaitTooLong => Reason::WaitTooLong,
                                _ => Reason::NoAgentAvailable,
                            });
                            self.callback(queue, reason, facts, contact, now)
                        }
                    },
                };
                (Some(queue), outcome)
            }
        };

        let (level, team) = match (&outcome, queue) {
            (Outcome::Emergency { .. }, _) => {
                (policy.emergency.level, policy.emergency.team.clone())
            }
            (_, Some(q)) => (policy.queues[q].level, policy.queues[q].team.clone()),
            (_, None) => {
                let q = &policy.queues[policy.default_queue];
                (q.level, q.team.clone())
            }
        };
        let guidance = Guidance {
            identity: reasons
                .contains(&Reason::IdentityDeferred)
                .then(|| policy.authenticate.verify_during_call.clone()),
            rule: rule.map(|r| r.guidance.clone()),
            queue: match (queue, &outcome) {
                (_, Outcome::Emergency { .. }) | (None, _) => None,
                (Some(q), _) => Some(policy.queues[q].guidance.clone()),
            },
        };
        let decision = Decision {
            id,
            rule_id: match plan.guard {
                Some(guard) => Some(Text::from(guard.id())),
                None => rule.map(|r| r.id.clone()),
            },
            reasons,
            level,
            team,
            guidance,
            outcome,
        };
        self.record(
            contact,
            &decision,
            queue.map(|q| policy.queues[q].id.clone()),
            reply_key,
            now,
        );
        Ok(decision)
    }

    /// Checks the contact against the policy's vocabulary.
    fn resolve(&self, policy: &Policy, contact: &Contact) -> Result<Resolved, EngineError> {
        let intent =
            policy
                .intent_idx(&contact.intent)
                .ok_or_else(|| EngineError::UnknownIntent {
                    allowed: policy.intent_names(),
                })?;
        for (key, value) in &contact.attributes {
            let allowed =
                policy
                    .attributes
                    .get(key)
                    .ok_or_else(|| EngineError::UnknownAttribute {
                        allowed: policy.attribute_names(),
                    })?;
            if !allowed.contains(value) {
                return Err(EngineError::AttributeValue {
                    key: key.clone(),
                    allowed: allowed.join(", "),
                });
            }
        }
        let transfer_from =
            match &contact.transfer_from {
                Some(t) => Some(policy.queue_idx(&t.queue_id).ok_or_else(|| {
                    EngineError::UnknownQueue {
                        field: "transfer_from.queue_id",
                        id: t.queue_id.clone(),
                    }
                })?),
                None => None,
            };
        Ok(Resolved {
            intent,
            transfer_from,
        })
    }

    /// The preferred agent if eligible and free, else the longest idle free
    /// agent (speakers of the contact's language first). Never the agent
    /// handing the contact on. The flag says whether the preferred agent won.
    fn choose(&self, queue: QueueIdx, contact: &Contact) -> Option<(Pick, bool)> {
        let exclude = contact
            .transfer_from
            .as_ref()
            .and_then(|t| t.agent_id.as_deref())
            .and_then(|id| self.roster.find(id));
        let language = contact
            .language
            .as_deref()
            .unwrap_or(&self.policy.default_language);
        let lang = self.roster.language(language);
        if let Some(a) = contact
            .preferred_agent_id
            .as_deref()
            .and_then(|id| self.roster.find(id))
            && Some(a) != exclude
            && self.roster.is_free_for(a, queue, contact.channel)
        {
            let speaks = lang.is_some_and(|l| self.roster.agent(a).languages.contains(&l));
            return Some((
                Pick {
                    agent: a,
                    interpreter_needed: !speaks,
                },
                true,
            ));
        }
        self.roster
            .pick(queue, contact.channel, lang, exclude.as_slice())
            .map(|p| (p, false))
    }

    fn reserve(&mut self, pick: Pick, slot: Slot<'_>, now: Time) -> AgentOffer {
        let Slot {
            queue,
            contact_id,
            channel,
            waiter,
        } = slot;
        let seq = self.ledger.push();
        let id = ReservationId(self.id(seq));
        let expires_at = now + self.policy.reservation_ttl;
        let c = channel.index();
        let micros = now.timestamp_micros();
        self.roster.update(pick.agent, |agent| {
            agent.reserved[c] += 1;
            // Work just arrived on this channel: the agent goes to the back
            // of its idle order.
            agent.ready_since[c] = micros;
        });
        *self.roster.reservations_mut(queue) += 1;
        let queue_id = self.policy.queues[queue].id.clone();
        // A step's wider pool is internal: clients see the queue it widens.
        let shown_queue = self.policy.queues[self.policy.root(queue)].id.clone();
        self.reservations.insert(
            id,
            Reservation {
                id,
                agent: pick.agent,
                contact_id: contact_id.to_owned(),
                queue: Some(queue),
                queue_id: queue_id.clone(),
                channel,
                expires_at,
                waiter,
                interpreter_needed: pick.interpreter_needed,
                unseen: false,
            },
        );
        self.timers.push(Reverse((expires_at, Timer::Expire(id))));
        self.counters.reserved += 1;
        let agent = self.roster.agent(pick.agent);
        AgentOffer {
            agent_id: agent.id.clone(),
            transfer_address: agent.transfer_address.clone(),
            queue_id: shown_queue,
            reservation: id,
            expires_at,
            interpreter_needed: pick.interpreter_needed,
        }
    }

    fn callback(
        &mut self,
        queue: QueueIdx,
        reason: CallbackReason,
        facts: Resolved,
        contact: &Contact,
        now: Time,
    ) -> Outcome {
        self.stats[queue].callbacks += 1;
        Outcome::Callback(CallbackOffer::new(
            &self.policy,
            queue,
            reason,
            facts.intent,
            contact.urgency,
            now,
        ))
    }

    /// Appends the hop to the contact's path and keeps the reply for retries.
    fn record(
        &mut self,
        contact: &Contact,
        decision: &Decision,
        queue_id: Option<Text>,
        reply_key: Option<(Text, Text)>,
        now: Time,
    ) {
        let (agent_id, reservation) = match &decision.outcome {
            Outcome::Agent(offer) => (Some(offer.agent_id.clone()), Some(offer.reservation)),
            _ => (None, None),
        };
        let hop = Hop {
            decision: decision.id,
            at: now,
            kind: HopKind::Decided(decision.outcome.kind()),
            rule_id: decision.rule_id.clone(),
            queue_id,
            agent_id,
            from_queue_id: contact
                .transfer_from
                .as_ref()
                .map(|t| roster::text(&t.queue_id)),
            reservation,
        };
        self.push_hop(&contact.contact_id, hop, now);
        if let Some(key) = reply_key {
            self.replies.insert(key, Arc::new(decision.clone()), now);
        }
    }

    /// Appends a hop to a contact's path; past the cap, it replaces the
    /// newest.
    fn push_hop(&mut self, contact_id: &str, hop: Hop, now: Time) {
        let max_hops = self.config.max_hops;
        let hops = match self.paths.get_mut(contact_id) {
            Some(hops) => hops,
            None => self
                .paths
                // Most contacts take one hop: room for exactly one, not
                // the four a first push would reserve.
                .get_or_insert_with(contact_id.to_owned(), now, || Vec::with_capacity(1)),
        };
        if hops.len() >= max_hops {
            hops.pop();
        }
        hops.push(hop);
    }

    /// When the engine next has something to do by itself (a timer, the
    /// sweep of the lines), if anything: the edge calls [`Engine::advance`]
    /// then, so timers fire on time rather than on a fixed tick.
    pub fn next_due(&self) -> Option<Time> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        let sweep = (!self.waiting.is_empty()).then(|| {
            self.last_sweep
                .map_or(Time::MIN_UTC, |last| last + queueing::SWEEP_EVERY)
        });
        [timer, sweep, self.waiting.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The hops a contact took, oldest first.
    pub fn path(&self, contact_id: &str) -> Option<&[Hop]> {
        self.paths.get(contact_id).map(Vec::as_slice)
    }

    fn reservation_error(&self, id: ReservationId) -> EngineError {
        let ours = id.0 >> 32 == u64::from(self.config.id_prefix);
        let fate = if ours {
            self.ledger
                .fates
                .get((id.0 as u32).wrapping_sub(self.ledger.first) as usize)
        } else {
            None
        };
        let how = match fate {
            Some(Fate::Expired) => return EngineError::ReservationExpired(id.to_string()),
            Some(Fate::Confirmed) => "confirmed",
            Some(Fate::Released(_)) => "released",
            Some(Fate::Live) | None => return EngineError::UnknownReservation(id.to_string()),
        };
        EngineError::ReservationSettled {
            id: id.to_string(),
            how,
        }
    }

    /// The transfer connected: the reservation becomes an active contact.
    /// Returns the agent and contact ids.
    fn confirm(&mut self, id: ReservationId, now: Time) -> Result<(Text, String), EngineError> {
        self.advance(now);
        let r = self
            .settle(id, Fate::Confirmed, now)
            .ok_or_else(|| self.reservation_error(id))?;
        self.counters.confirmed += 1;
        let c = r.channel.index();
        let contact = r.contact_id.clone();
        self.roster.update(r.agent, |agent| {
            agent.active[c] += 1;
            agent.missed_offers = 0;
            agent
                .contacts
                .push((r.contact_id, r.channel, r.queue_id, now));
        });
        Ok((self.roster.agent(r.agent).id.clone(), contact))
    }

    /// The offer was rejected, not answered or cancelled: the agent is free.
    fn release(
        &mut self,
        id: ReservationId,
        reason: ReleaseReason,
        now: Time,
    ) -> Result<(), EngineError> {
        self.advance(now);
        self.settle(id, Fate::Released(reason), now)
            .ok_or_else(|| self.reservation_error(id))?;
        self.counters.released += 1;
        Ok(())
    }

    /// The agent finished an active contact: wrap-up for the queue's wrap-up
    /// time, then available. Returns when wrap-up ends.
    fn complete(
        &mut self,
        agent_id: &str,
        contact_id: &str,
        now: Time,
    ) -> Result<Time, EngineError> {
        self.advance(now);
        let a = self
            .roster
            .find(agent_id)
            .ok_or_else(|| EngineError::UnknownAgent(agent_id.to_owned()))?;
        let Some(pos) = self
            .roster
            .agent(a)
            .contacts
            .iter()
            .position(|(c, _, _, _)| c == contact_id)
        else {
            return Err(EngineError::NoActiveContact {
                agent: agent_id.to_owned(),
                contact: contact_id.to_owned(),
            });
        };
        let (queue, confirmed_at) = {
            let (_, _, queue_id, at) = &self.roster.agent(a).contacts[pos];
            (self.policy.queue_idx(queue_id), *at)
        };
        let wrap_up = queue.map_or(Duration::zero(), |q| self.policy.queues[q].wrap_up);
        if let Some(q) = queue {
            self.stats[q].observe_handle_time(now - confirmed_at);
        }
        let until = now + wrap_up;
        let micros = now.timestamp_micros();
        let generation = self.roster.update(a, |agent| {
            let (_, channel, _, _) = agent.contacts.swap_remove(pos);
            let c = channel.index();
            agent.active[c] = agent.active[c].saturating_sub(1);
            let working = matches!(agent.state, AgentState::Available | AgentState::Busy);
            if wrap_up > Duration::zero() && working {
                agent.state = AgentState::WrapUp;
                agent.wrap_generation += 1;
                Some(agent.wrap_generation)
            } else {
                // Free on this channel from now: its idle time starts now,
                // not when the contact was offered.
                agent.ready_since[c] = micros;
                None
            }
        });
        match generation {
            Some(g) => {
                self.timers.push(Reverse((until, Timer::WrapUpEnd(a, g))));
                Ok(until)
            }
            None => {
                self.dispatch(a, now);
                Ok(now)
            }
        }
    }

    /// Registers an agent or replaces its profile, keeping its state and work.
    /// Returns the eligible queue ids and whether the agent is new; a new
    /// agent beyond [`EngineConfig::max_agents`] is refused.
    fn upsert_agent(
        &mut self,
        spec: AgentSpec,
        now: Time,
    ) -> Result<(Vec<Text>, bool), EngineError> {
        self.advance(now);
        if self.roster.find(&spec.id).is_none() && self.roster.live() >= self.config.max_agents {
            return Err(EngineError::TooManyAgents {
                agent: spec.id,
                max: self.config.max_agents,
            });
        }
        let languages: Vec<_> = spec
            .languages
            .iter()
            .map(|l| self.roster.intern_language(l))
            .collect();
        let mut capacity = [0u8; Channel::ALL.len()];
        for (c, n) in &spec.channels {
            capacity[c.index()] = *n;
        }
        let policy = Arc::clone(&self.policy);
        let team = self.roster.intern(&spec.team);
        let skills: Vec<(Text, u8)> = spec
            .skills
            .iter()
            .map(|(skill, level)| (self.roster.intern(skill), *level))
            .collect();
        let transfer_address = roster::text(&spec.transfer_address);
        let (a, created) = match self.roster.find(&spec.id) {
            Some(a) => (a, false),
            None => {
                let agent = Agent::new(
                    roster::text(&spec.id),
                    team.clone(),
                    transfer_address.clone(),
                );
                (self.roster.add(agent), true)
            }
        };
        self.roster.reprofile(a, |agent| {
            agent.team = team;
            agent.transfer_address = transfer_address;
            agent.skills = skills;
            agent.languages = languages;
            agent.capacity = capacity;
            Roster::place(agent, &policy);
        });
        let queues = self
            .roster
            .agent(a)
            .queues
            .iter()
            .map(|q| policy.queues[*q].id.clone())
            .collect();
        self.dispatch(a, now);
        Ok((queues, created))
    }

    /// Removes an agent from the roster: refused while it holds a live
    /// reservation or an active contact (set it offline first, and remove
    /// it once its work ends). Waiting contacts forget it.
    fn remove_agent(&mut self, agent_id: &str, now: Time) -> Result<(), EngineError> {
        self.advance(now);
        let a = self
            .roster
            .find(agent_id)
            .ok_or_else(|| EngineError::UnknownAgent(agent_id.to_owned()))?;
        let agent = self.roster.agent(a);
        let what = if agent.reserved.iter().any(|&n| n > 0) {
            Some("a live reservation")
        } else if !agent.contacts.is_empty() {
            Some("an active contact")
        } else {
            None
        };
        if let Some(what) = what {
            return Err(EngineError::AgentBusy {
                agent: agent_id.to_owned(),
                what,
            });
        }
        self.roster.remove(a);
        // Its slot will be someone else's: no waiting contact may hold it.
        self.waiting.forget_agent(a);
        Ok(())
    }

    /// Sets an agent's state; returns the previous one. An agent becoming
    /// available starts its idle time now.
    fn set_state(
        &mut self,
        agent_id: &str,
        state: AgentState,
        now: Time,
    ) -> Result<AgentState, EngineError> {
        self.advance(now);
        let a = self
            .roster
            .find(agent_id)
            .ok_or_else(|| EngineError::UnknownAgent(agent_id.to_owned()))?;
        let previous = self.roster.update(a, |agent| {
            let previous = agent.state;
            if state == AgentState::Available && previous != AgentState::Available {
                agent.ready_since = [now.timestamp_micros(); 5];
            }
            agent.state = state;
            agent.missed_offers = 0;
            previous
        });
        self.dispatch(a, now);
        Ok(previous)
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
            let estimated_wait = self.estimated_wait_view(i, waiting + 1);
            let longest_wait = std::iter::once(i)
                .chain(q.steps.iter().map(|s| s.pool))
                .map(|p| self.waiting.longest_wait(p, now))
                .max()
                .unwrap_or_else(Duration::zero);
            let pool = self.roster.pool(i);
            views.push(QueueView {
                id: q.id.clone(),
                level: q.level,
                team: q.team.clone(),
                open: policy.is_open(i, now),
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
mod queueing_tests;
#[cfg(test)]
mod tests;
