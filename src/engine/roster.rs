//! Agents and the per-queue indexes of who is free: for every queue and
//! channel, the free eligible agents ordered by how long they have been idle,
//! in all and per language (a language every agent of the queue speaks has
//! no set of its own: its set would be the queue's whole one, kept twice).
//! Picking an agent reads the first entry of one ordered set, so its cost
//! does not grow with the roster; every change to an agent goes through
//! [`Roster::update`], which takes the agent out of the indexes and puts it
//! back as it now is.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::model::{AgentState, Channel, ChannelSet, FastMap, STATES, language_ranges};
use crate::policy::{Blocks, Policy, QueueIdx, Text};

/// Index of an agent in the roster. A removed agent's slot is reused by the
/// next agent added.
pub type AgentIdx = u32;
/// An interned language tag.
pub type LangId = u32;

/// Idle order packed in one word, half the size of a (time, index) pair in
/// every free-agent set (the sets are half of an agent's memory): when the
/// agent became ready, in milliseconds since 2020-01-01 (40 bits, to 2054;
/// earlier clamps to 0, later saturates), then its index (24 bits). Agents
/// ready within the same millisecond go in index order.
type IdleKey = u64;

/// Distinct team and skill names shared across agents.
const MAX_NAMES: usize = 1 << 16;

/// Bits of an [`IdleKey`] that hold the agent's index.
const AGENT_BITS: u32 = 24;
/// Agent slots an [`IdleKey`] can name.
pub const MAX_AGENT_SLOTS: usize = 1 << AGENT_BITS;
/// 2020-01-01T00:00:00Z in milliseconds since the Unix epoch.
const EPOCH_MS: i64 = 1_577_836_800_000;

fn idle_key(ready_micros: i64, a: AgentIdx) -> IdleKey {
    let ms = (ready_micros.div_euclid(1000) - EPOCH_MS).clamp(0, (1 << 40) - 1) as u64;
    (ms << AGENT_BITS) | u64::from(a)
}

fn agent_of(key: IdleKey) -> AgentIdx {
    (key & ((1 << AGENT_BITS) - 1)) as AgentIdx
}

const CHANNELS: usize = Channel::ALL.len();

/// Everything about one agent that routing needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    /// The CTI's id.
    pub id: Text,
    /// Team the agent belongs to.
    pub team: Text,
    /// SIP URI or extension for warm transfers.
    pub transfer_address: Text,
    /// Skills with proficiency 1-5 (names shared across agents).
    pub skills: Vec<(Text, u8)>,
    /// Languages spoken.
    pub languages: Vec<LangId>,
    /// Contacts at once per channel; 0 means the channel is not served.
    pub capacity: [u8; CHANNELS],
    /// Live reservations per channel.
    pub reserved: [u8; CHANNELS],
    /// Confirmed contacts per channel.
    pub active: [u8; CHANNELS],
    /// What the CTI (or wrap-up) says.
    pub state: AgentState,
    /// Bumped at every wrap-up so a stale wrap-up timer does nothing.
    pub wrap_generation: u64,
    /// Per channel, when the agent last became ready for it (microseconds):
    /// the longest idle goes first.
    pub ready_since: [i64; CHANNELS],
    /// Queues whose skill requirements the agent meets.
    pub queues: Vec<QueueIdx>,
    /// Contacts confirmed and not yet completed: (contact id, channel,
    /// queue id, when confirmed).
    pub contacts: Vec<(String, Channel, Text, crate::model::Time)>,
    /// Offers let time out in a row.
    pub missed_offers: u32,
    /// careroute set it not-responding for missing offers (not the CTI).
    pub paused_for_misses: bool,
    /// The slot of a removed agent, waiting to be reused: in no index.
    pub removed: bool,
    /// How the agent is entered in the indexes now. Derived: not kept in
    /// a snapshot, rebuilt at load.
    #[serde(skip)]
    indexed: Option<Indexed>,
}

/// How an agent is entered in the indexes: what [`Roster::update`] diffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Indexed {
    ready: [i64; CHANNELS],
    free: ChannelSet,
    state: AgentState,
    /// The channels it has room on at all, while not offline.
    staffs: ChannelSet,
}

impl Indexed {
    fn of(agent: &Agent, blocks: &Blocks) -> Indexed {
        let staffs = if agent.state == AgentState::Offline {
            ChannelSet::default()
        } else {
            agent.serves()
        };
        Indexed {
            ready: agent.ready_since,
            free: agent.free_channels(blocks),
            state: agent.state,
            staffs,
        }
    }

    /// Whether the entry staffs `channel`.
    fn staffs(entry: Option<Indexed>, channel: Channel) -> bool {
        entry.is_some_and(|e| e.staffs.contains(channel))
    }

    /// The idle key under which the agent sits in `channel`'s sets, if free.
    fn key(entry: Option<Indexed>, channel: Channel, a: AgentIdx) -> Option<IdleKey> {
        entry
            .filter(|e| e.free.contains(channel))
            .map(|e| idle_key(e.ready[channel.index()], a))
    }
}

impl Agent {
    /// A new agent, offline, in no queue until the roster places it.
    pub fn new(id: Text, team: Text, transfer_address: Text) -> Agent {
        Agent {
            id,
            team,
            transfer_address,
            skills: Vec::new(),
            languages: Vec::new(),
            capacity: [0; CHANNELS],
            reserved: [0; CHANNELS],
            active: [0; CHANNELS],
            state: AgentState::Offline,
            wrap_generation: 0,
            ready_since: [0; CHANNELS],
            queues: Vec::new(),
            contacts: Vec::new(),
            missed_offers: 0,
            paused_for_misses: false,
            removed: false,
            indexed: None,
        }
    }

    /// Queues it may be offered contacts of: those it qualifies for (by
    /// skills, or a relaxation step's wider pool) on a channel it serves.
    pub fn offered_queues<'a>(&'a self, policy: &'a Policy) -> impl Iterator<Item = QueueIdx> + 'a {
        let serves = self.serves();
        let takes = move |q: &QueueIdx| policy.queues[*q].channels.intersects(serves);
        self.queues.iter().copied().filter(takes)
    }

    /// The channels it serves: those it has a capacity on.
    pub fn serves(&self) -> ChannelSet {
        let mut serves = ChannelSet::default();
        for c in Channel::ALL {
            if self.capacity[c.index()] > 0 {
                serves.insert(c);
            }
        }
        serves
    }

    /// Channels on which the agent can take one more contact now: room
    /// under its capacity there, and no work elsewhere that `blocks` it.
    pub fn free_channels(&self, blocks: &Blocks) -> ChannelSet {
        let mut free = ChannelSet::default();
        if self.state == AgentState::Available {
            let held: [u16; CHANNELS] =
                std::array::from_fn(|i| u16::from(self.reserved[i]) + u16::from(self.active[i]));
            for c in Channel::ALL {
                let i = c.index();
                if held[i] < u16::from(self.capacity[i]) && !blocks.blocked(c, &held) {
                    free.insert(c);
                }
            }
        }
        free
    }

    /// Channels the agent's work elsewhere blocks now (the policy's
    /// utilization), whatever its state and room.
    pub fn blocked_channels(&self, blocks: &Blocks) -> ChannelSet {
        let held: [u16; CHANNELS] =
            std::array::from_fn(|i| u16::from(self.reserved[i]) + u16::from(self.active[i]));
        let mut blocked = ChannelSet::default();
        for c in Channel::ALL {
            if blocks.blocked(c, &held) {
                blocked.insert(c);
            }
        }
        blocked
    }

    /// Work on `channel` ended at `micros` (released, lapsed, or completed
    /// without wrap-up): the agent is free there from now, and so on every
    /// channel that work was blocking (`blocked_before`): idle time starts
    /// now on those too, not when they were last free before the block.
    pub fn freed(
        &mut self,
        channel: Channel,
        micros: i64,
        blocked_before: ChannelSet,
        blocks: &Blocks,
    ) {
        self.ready_since[channel.index()] = micros;
        let blocked_now = self.blocked_channels(blocks);
        for c in Channel::ALL {
            if blocked_before.contains(c) && !blocked_now.contains(c) {
                self.ready_since[c.index()] = micros;
            }
        }
    }

    /// Whether the agent meets every skill requirement of the queue.
    pub fn meets(&self, requirements: &[(String, u8)]) -> bool {
        requirements.iter().all(|(skill, min)| {
            self.skills
                .iter()
                .any(|(s, level)| **s == **skill && level >= min)
        })
    }
}

/// The free agents of one queue on one channel: all of them, and per
/// language the speakers, for the languages not every agent of the queue
/// speaks (see [`QueuePool::universal`]).
#[derive(Debug, Clone, Default)]
struct ChannelPool {
    any: BTreeSet<IdleKey>,
    by_language: FastMap<LangId, BTreeSet<IdleKey>>,
}

/// Who is eligible for a queue, in counts: how many agents, and how many
/// of them speak each language.
#[derive(Debug, Clone, Default)]
struct Members {
    /// Agents eligible for the queue.
    agents: u32,
    /// Of them, those who speak each language (each agent once per
    /// language, however often its profile lists it).
    speakers: FastMap<LangId, u32>,
}

impl Members {
    /// Whether every agent counted speaks `language`.
    fn universal(&self, language: LangId) -> bool {
        self.agents > 0 && self.speakers.get(&language) == Some(&self.agents)
    }

    /// Counts in an agent speaking `languages`.
    fn add(&mut self, languages: &[LangId]) {
        self.agents += 1;
        for l in distinct(languages) {
            *self.speakers.entry(l).or_default() += 1;
        }
    }

    /// Counts out an agent speaking `languages`.
    fn remove(&mut self, languages: &[LangId]) {
        self.agents = self.agents.saturating_sub(1);
        for l in distinct(languages) {
            if let Some(n) = self.speakers.get_mut(&l) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.speakers.remove(&l);
                }
            }
        }
    }
}

/// Each language of a profile once, in order: a profile may list one twice.
fn distinct(languages: &[LangId]) -> impl Iterator<Item = LangId> + '_ {
    languages
        .iter()
        .enumerate()
        .filter(|&(i, l)| !languages[..i].contains(l))
        .map(|(_, &l)| l)
}

/// Counters and free-agent indexes of one queue.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct QueuePool {
    /// Derived from the agents: not kept in a snapshot, rebuilt at load
    /// ([`Roster::rebuild_free`]), which is faster than reading it.
    #[serde(skip)]
    free: [ChannelPool; CHANNELS],
    /// Derived too: the agents eligible (removed ones aside), which tells
    /// the languages that need no free set of their own.
    #[serde(skip)]
    members: Members,
    /// The queue's channels: agents are indexed only on these.
    channels: ChannelSet,
    /// Eligible agents not offline that serve one of its channels.
    pub staffed: u32,
    /// Derived, as `free`: eligible agents not offline with room on each of
    /// the queue's channels.
    #[serde(skip)]
    staffed_on: [u32; CHANNELS],
    /// Eligible agents free on at least one of the queue's channels.
    pub available: u32,
    /// Live reservations made for this queue.
    pub reservations: u32,
}

impl QueuePool {
    /// Eligible agents not offline with room on `channel` (none on a
    /// channel the queue does not take).
    pub fn staffed_on(&self, channel: Channel) -> u32 {
        self.staffed_on[channel.index()]
    }

    /// Whether every agent eligible for the queue speaks `language`: then
    /// its speakers free on a channel are all the agents free there, and
    /// no set of its own is kept.
    fn universal(&self, language: LangId) -> bool {
        self.members.universal(language)
    }

    /// Counts an agent speaking `languages` in. A language every agent
    /// spoke until now that this one does not gets its own free sets,
    /// copied from the whole ones (before this agent is entered in them).
    fn join(&mut self, languages: &[LangId]) {
        let split: Vec<LangId> = self
            .members
            .speakers
            .keys()
            .copied()
            .filter(|&l| self.members.universal(l) && !languages.contains(&l))
            .collect();
        for l in split {
            for c in Channel::ALL {
                if self.channels.contains(c) {
                    let cp = &mut self.free[c.index()];
                    cp.by_language.insert(l, cp.any.clone());
                }
            }
        }
        self.members.add(languages);
    }

    /// Counts an agent speaking `languages` out (once it is out of the
    /// free sets). A language every agent left speaks drops its own sets.
    fn leave(&mut self, languages: &[LangId]) {
        self.members.remove(languages);
        let whole: Vec<LangId> = self
            .members
            .speakers
            .keys()
            .copied()
            .filter(|&l| self.universal(l))
            .collect();
        for l in whole {
            for cp in &mut self.free {
                cp.by_language.remove(&l);
            }
        }
    }
}

/// All agents, their ids and the per-queue indexes.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Roster {
    agents: Vec<Agent>,
    ids: FastMap<Text, AgentIdx>,
    languages: FastMap<String, LangId>,
    /// Team and skill names, shared by the agents that carry them.
    names: std::collections::HashSet<Text, ahash::RandomState>,
    pools: Vec<QueuePool>,
    by_state: [u32; STATES],
    /// Slots of removed agents, reused first.
    vacant: Vec<AgentIdx>,
    /// The policy's cross-channel utilization: which work blocks which
    /// channel.
    blocks: Blocks,
    /// Whether an agent started or stopped staffing a channel since the
    /// engine last took it (inside one command; always false between).
    #[serde(skip)]
    staffing_touched: bool,
}

/// The agent chosen for a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Who.
    pub agent: AgentIdx,
    /// Whether they do not speak the contact's language.
    pub interpreter_needed: bool,
}

impl Roster {
    /// Whether an agent started or stopped staffing a channel since the
    /// last call.
    pub fn take_staffing_touched(&mut self) -> bool {
        std::mem::take(&mut self.staffing_touched)
    }

    /// Everything the roster holds, in a canonical order (hash maps
    /// sorted), for tests that compare two engines' states.
    #[cfg(test)]
    pub(super) fn fingerprint(&self) -> String {
        let mut ids: Vec<_> = self.ids.iter().collect();
        ids.sort();
        let mut languages: Vec<_> = self.languages.iter().collect();
        languages.sort();
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| {
                let free: Vec<String> = p
                    .free
                    .iter()
                    .map(|c| {
                        // An emptied set is no set: both pick nobody.
                        let mut by_language: Vec<_> = c
                            .by_language
                            .iter()
                            .filter(|(_, s)| !s.is_empty())
                            .collect();
                        by_language.sort_by_key(|(l, _)| **l);
                        format!("{:?} {:?}", c.any, by_language)
                    })
                    .collect();
                format!(
                    "{free:?} {:?} {} {} {}",
                    p.channels, p.staffed, p.available, p.reservations
                )
            })
            .collect();
        format!(
            "{:?}\n{ids:?}\n{languages:?}\n{pools:?}\n{:?} {:?}",
            self.agents, self.by_state, self.vacant
        )
    }

    /// The free-agent sets checked against the agents by brute force: each
    /// queue counts its agents and speakers right; on each of its channels
    /// its whole set holds exactly its free agents; a language all of them
    /// speak has no set of its own (or an empty one), any other's holds
    /// exactly its free speakers.
    #[cfg(test)]
    pub(super) fn check_free_sets(&self) -> Result<(), String> {
        for (q, pool) in self.pools.iter().enumerate() {
            let members: Vec<(AgentIdx, &Agent)> = (0..)
                .zip(&self.agents)
                .filter(|(_, agent)| !agent.removed && agent.queues.contains(&q))
                .collect();
            let mut speakers: FastMap<LangId, u32> = FastMap::default();
            for (_, agent) in &members {
                for l in distinct(&agent.languages) {
                    *speakers.entry(l).or_default() += 1;
                }
            }
            if pool.members.agents as usize != members.len() || pool.members.speakers != speakers {
                return Err(format!(
                    "queue {q} counts {:?}, has {} agents and speakers {speakers:?}",
                    pool.members,
                    members.len()
                ));
            }
            for c in Channel::ALL
                .into_iter()
                .filter(|&c| pool.channels.contains(c))
            {
                let cp = &pool.free[c.index()];
                let key = |a: AgentIdx, agent: &Agent| {
                    Indexed::key(Some(Indexed::of(agent, &self.blocks)), c, a)
                };
                let free: BTreeSet<IdleKey> =
                    members.iter().filter_map(|&(a, g)| key(a, g)).collect();
                if cp.any != free {
                    return Err(format!(
                        "queue {q} on {c:?}: free {:?}, should be {free:?}",
                        cp.any
                    ));
                }
                for (&l, set) in &cp.by_language {
                    let speaking: BTreeSet<IdleKey> = members
                        .iter()
                        .filter(|(_, g)| g.languages.contains(&l))
                        .filter_map(|&(a, g)| key(a, g))
                        .collect();
                    let expected = if pool.universal(l) {
                        BTreeSet::new()
                    } else {
                        speaking
                    };
                    if *set != expected {
                        return Err(format!(
                            "queue {q} on {c:?}, language {l}: {set:?}, should be {expected:?}"
                        ));
                    }
                }
                for &l in speakers.keys() {
                    if !pool.universal(l)
                        && !cp.by_language.contains_key(&l)
                        && members
                            .iter()
                            .any(|&(a, g)| g.languages.contains(&l) && key(a, g).is_some())
                    {
                        return Err(format!(
                            "queue {q} on {c:?}, language {l}: free speakers and no set"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// An empty roster for `policy`.
    pub fn new(policy: &Policy) -> Roster {
        Roster {
            pools: pools(policy),
            blocks: policy.blocks,
            ..Roster::default()
        }
    }

    /// The cross-channel utilization in force.
    pub fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// An agent by id.
    pub fn find(&self, id: &str) -> Option<AgentIdx> {
        self.ids.get(id).copied()
    }

    /// An agent by index.
    pub fn agent(&self, a: AgentIdx) -> &Agent {
        &self.agents[a as usize]
    }

    /// Every slot, removed agents' vacant ones included (they are offline
    /// and in no queue).
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// A queue's counters.
    pub fn pool(&self, q: QueueIdx) -> &QueuePool {
        &self.pools[q]
    }

    /// Live reservation count of a queue.
    pub fn reservations_mut(&mut self, q: QueueIdx) -> &mut u32 {
        &mut self.pools[q].reservations
    }

    /// Agents per state, in [`AgentState::ALL`] order.
    pub fn by_state(&self) -> [u32; STATES] {
        self.by_state
    }

    /// A language tag's id, if any agent ever spoke it.
    pub fn language(&self, tag: &str) -> Option<LangId> {
        self.languages.get(tag).copied()
    }

    /// The languages whose speakers serve a contact speaking `tag`: the
    /// tag and its shorter forms ([`language_ranges`]) that some agent
    /// speaks.
    pub fn speakers_of<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = LangId> + Clone + 'a {
        language_ranges(tag).filter_map(|range| self.language(range))
    }

    /// The tag of a language id.
    pub fn language_tag(&self, id: LangId) -> Option<&str> {
        self.languages
            .iter()
            .find(|&(_, &l)| l == id)
            .map(|(tag, _)| tag.as_str())
    }

    /// The id of a language tag, interning it.
    pub fn intern_language(&mut self, tag: &str) -> LangId {
        let next = self.languages.len() as LangId;
        *self.languages.entry(tag.to_owned()).or_insert(next)
    }

    /// A shared copy of a team or skill name. The first [`MAX_NAMES`]
    /// distinct names are shared; past that each caller gets its own copy,
    /// so a feed of ever-new names cannot grow the table without bound.
    pub fn intern(&mut self, name: &str) -> Text {
        if let Some(t) = self.names.get(name) {
            return t.clone();
        }
        let t = text(name);
        if self.names.len() < MAX_NAMES {
            self.names.insert(t.clone());
        }
        t
    }

    /// Queues the roster keeps pools for.
    pub(super) fn queue_count(&self) -> usize {
        self.pools.len()
    }

    /// Rebuilds the free-agent indexes after a load, from the agents:
    /// every set built at once from its sorted keys.
    pub(super) fn rebuild_free(&mut self) {
        let blocks = self.blocks;
        for agent in &mut self.agents {
            agent.indexed = (!agent.removed).then(|| Indexed::of(agent, &blocks));
        }
        let mut any: Vec<[Vec<IdleKey>; CHANNELS]> =
            self.pools.iter().map(|_| Default::default()).collect();
        let mut by_language: Vec<[FastMap<LangId, Vec<IdleKey>>; CHANNELS]> =
            self.pools.iter().map(|_| Default::default()).collect();
        for pool in &mut self.pools {
            pool.members = Members::default();
            pool.staffed_on = [0; CHANNELS];
        }
        for agent in self.agents.iter().filter(|a| !a.removed) {
            for &q in &agent.queues {
                let pool = &mut self.pools[q];
                pool.members.add(&agent.languages);
                for c in Channel::ALL {
                    if pool.channels.contains(c) && Indexed::staffs(agent.indexed, c) {
                        pool.staffed_on[c.index()] += 1;
                    }
                }
            }
        }
        for (a, agent) in self.agents.iter().enumerate() {
            for &q in &agent.queues {
                for c in Channel::ALL {
                    if !self.pools[q].channels.contains(c) {
                        continue;
                    }
                    if let Some(k) = Indexed::key(agent.indexed, c, a as AgentIdx) {
                        any[q][c.index()].push(k);
                        for &l in &agent.languages {
                            if !self.pools[q].universal(l) {
                                by_language[q][c.index()].entry(l).or_default().push(k);
                            }
                        }
                    }
                }
            }
        }
        let set = |mut keys: Vec<IdleKey>| {
            keys.sort_unstable();
            keys.into_iter().collect::<BTreeSet<IdleKey>>()
        };
        for ((pool, any), by_language) in self.pools.iter_mut().zip(any).zip(by_language) {
            for ((free, any), by_language) in pool.free.iter_mut().zip(any).zip(by_language) {
                free.any = set(any);
                free.by_language = by_language
                    .into_iter()
                    .map(|(l, keys)| (l, set(keys)))
                    .collect();
            }
        }
    }

    /// Shares the team and skill names again after a load, which gives
    /// each agent its own copies.
    pub(super) fn share_names(&mut self) {
        let mut agents = std::mem::take(&mut self.agents);
        self.names.clear();
        for agent in &mut agents {
            agent.team = self.intern(&agent.team);
            for (skill, _) in &mut agent.skills {
                *skill = self.intern(skill);
            }
        }
        self.agents = agents;
    }

    /// Adds an agent and returns its index (a removed agent's, if any).
    pub fn add(&mut self, mut agent: Agent) -> AgentIdx {
        let a = match self.vacant.pop() {
            Some(a) => {
                // The slot's wrap-up generation carries on, so a wrap-up
                // timer of the removed agent does nothing to this one.
                agent.wrap_generation = self.agents[a as usize].wrap_generation;
                self.agents[a as usize] = agent;
                a
            }
            None => {
                self.agents.push(agent);
                (self.agents.len() - 1) as AgentIdx
            }
        };
        self.ids.insert(self.agents[a as usize].id.clone(), a);
        self.reindex(a, None);
        a
    }

    /// Removes an agent: out of every index and count, its id forgotten,
    /// its slot kept (empty) for the next agent added.
    pub fn remove(&mut self, a: AgentIdx) {
        self.reindex_out(a);
        let slot = &mut self.agents[a as usize];
        self.ids.remove(&slot.id);
        let generation = slot.wrap_generation + 1;
        *slot = Agent::new(text(""), text(""), text(""));
        slot.wrap_generation = generation;
        slot.removed = true;
        self.vacant.push(a);
    }

    /// Agents registered (not counting removed ones).
    pub fn live(&self) -> usize {
        self.ids.len()
    }

    /// Changes an agent's state, capacity or work, and moves its index
    /// entries where they differ: only the channels whose free status or
    /// idle key changed are touched. `change` must not alter the agent's
    /// queues or languages; [`Roster::reprofile`] does that.
    pub fn update<R>(&mut self, a: AgentIdx, change: impl FnOnce(&mut Agent) -> R) -> R {
        let agent = &mut self.agents[a as usize];
        let before = agent.indexed;
        let (queues, languages) = (agent.queues.len(), agent.languages.len());
        let result = change(agent);
        debug_assert_eq!(
            (queues, languages),
            (agent.queues.len(), agent.languages.len())
        );
        self.reindex(a, before);
        result
    }

    /// Changes an agent's profile (skills, languages, queues): if its
    /// queues or languages changed, takes it out of every index as it was
    /// and enters it again as it is; otherwise only moves its entries, as
    /// [`Roster::update`] does (a roster sent again unchanged moves
    /// nothing, and never splits a language's sets off the whole ones).
    pub fn reprofile<R>(&mut self, a: AgentIdx, change: impl FnOnce(&mut Agent) -> R) -> R {
        let agent = &mut self.agents[a as usize];
        let before = agent.indexed;
        let (queues, languages) = (agent.queues.clone(), agent.languages.clone());
        let result = change(agent);
        if agent.queues == queues && agent.languages == languages {
            self.reindex(a, before);
            return result;
        }
        // Out under the queues and languages it had, in under the new.
        let queues = std::mem::replace(&mut agent.queues, queues);
        let languages = std::mem::replace(&mut agent.languages, languages);
        self.reindex_out(a);
        let agent = &mut self.agents[a as usize];
        agent.queues = queues;
        agent.languages = languages;
        self.reindex(a, None);
        result
    }

    /// Recomputes an agent's eligible queues under `policy`.
    pub fn place(agent: &mut Agent, policy: &Policy) {
        agent.queues = (0..policy.queues.len())
            .filter(|&q| policy.qualifies(q, |skills| agent.meets(skills)))
            .collect();
        agent.queues.shrink_to_fit();
    }

    /// Rebuilds every index for a new policy. Reservation counts start at zero;
    /// the caller re-adds the live ones.
    pub fn rebuild(&mut self, policy: &Policy) {
        self.pools = pools(policy);
        self.blocks = policy.blocks;
        self.by_state = [0; STATES];
        for a in 0..self.agents.len() {
            let agent = &mut self.agents[a];
            if agent.removed {
                continue;
            }
            agent.indexed = None;
            Roster::place(agent, policy);
            self.reindex(a as AgentIdx, None);
        }
    }

    /// Takes an agent out of every index and count.
    fn reindex_out(&mut self, a: AgentIdx) {
        let before = self.agents[a as usize].indexed;
        self.apply(a, before, None);
    }

    /// Moves an agent's index entries from `before` to what it is now.
    /// A removed agent's vacant slot stays out of every index and count,
    /// whatever still reaches it (a wrap-up timer set before the removal).
    fn reindex(&mut self, a: AgentIdx, before: Option<Indexed>) {
        let agent = &self.agents[a as usize];
        let now = (!agent.removed).then(|| Indexed::of(agent, &self.blocks));
        self.apply(a, before, now);
    }

    fn apply(&mut self, a: AgentIdx, before: Option<Indexed>, after: Option<Indexed>) {
        let Roster {
            agents,
            pools,
            by_state,
            staffing_touched,
            ..
        } = self;
        let agent = &mut agents[a as usize];
        agent.indexed = after;
        if before == after {
            return;
        }
        let staffs = |e: Option<Indexed>| e.map_or(ChannelSet::default(), |e| e.staffs);
        if staffs(before) != staffs(after) {
            *staffing_touched = true;
        }
        if let Some(b) = before {
            by_state[state_slot(b.state)] -= 1;
        }
        if let Some(n) = after {
            by_state[state_slot(n.state)] += 1;
        }
        let (joined, left) = (before.is_none(), after.is_none());
        for &q in &agent.queues {
            let pool = &mut pools[q];
            if joined {
                pool.join(&agent.languages);
            }
            // Logged in on one of the queue's channels (`staffs` is empty
            // offline).
            let staffed =
                |e: Option<Indexed>| e.is_some_and(|e| e.staffs.intersects(pool.channels));
            let available = |e: Option<Indexed>| e.is_some_and(|e| e.free.0 & pool.channels.0 != 0);
            pool.staffed = adjust(pool.staffed, staffed(before), staffed(after));
            pool.available = adjust(pool.available, available(before), available(after));
            for c in Channel::ALL {
                if !pool.channels.contains(c) {
                    continue;
                }
                let on = &mut pool.staffed_on[c.index()];
                *on = adjust(*on, Indexed::staffs(before, c), Indexed::staffs(after, c));
                let (old, new) = (Indexed::key(before, c, a), Indexed::key(after, c, a));
                if old == new {
                    continue;
                }
                let QueuePool { free, members, .. } = pool;
                let cp = &mut free[c.index()];
                let universal = |l: LangId| members.universal(l);
                if let Some(k) = old {
                    cp.any.remove(&k);
                    for &l in &agent.languages {
                        if !universal(l)
                            && let Some(set) = cp.by_language.get_mut(&l)
                        {
                            set.remove(&k);
                        }
                    }
                }
                if let Some(k) = new {
                    cp.any.insert(k);
                    for &l in &agent.languages {
                        if !universal(l) {
                            cp.by_language.entry(l).or_default().insert(k);
                        }
                    }
                }
            }
            if left {
                pool.leave(&agent.languages);
            }
        }
    }

    /// The agent idle longest among those free for `queue` on `channel`,
    /// preferring speakers of `language`; never `exclude`.
    pub fn pick(
        &self,
        queue: QueueIdx,
        channel: Channel,
        languages: impl IntoIterator<Item = LangId>,
        exclude: &[AgentIdx],
    ) -> Option<Pick> {
        let pool = &self.pools[queue];
        let cp = &pool.free[channel.index()];
        let first = |set: &BTreeSet<IdleKey>| {
            set.iter()
                .copied()
                .find(|&k| !exclude.contains(&agent_of(k)))
        };
        // The longest idle speaker of any of the languages.
        let speaker = languages
            .into_iter()
            .filter_map(|l| {
                if pool.universal(l) {
                    Some(&cp.any)
                } else {
                    cp.by_language.get(&l)
                }
            })
            .filter_map(first)
            .min();
        if let Some(key) = speaker {
            return Some(Pick {
                agent: agent_of(key),
                interpreter_needed: false,
            });
        }
        first(&cp.any).map(|key| Pick {
            agent: agent_of(key),
            interpreter_needed: true,
        })
    }

    /// The agents free for `queue` on `channel`, longest idle first.
    pub fn free_in(&self, queue: QueueIdx, channel: Channel) -> Vec<AgentIdx> {
        self.pools[queue].free[channel.index()]
            .any
            .iter()
            .map(|&k| agent_of(k))
            .collect()
    }

    /// Whether agent `a` may take a contact of `queue` on `channel` now.
    pub fn is_free_for(&self, a: AgentIdx, queue: QueueIdx, channel: Channel) -> bool {
        let agent = self.agent(a);
        agent.queues.contains(&queue)
            && self.pools[queue].channels.contains(channel)
            && agent.free_channels(&self.blocks).contains(channel)
    }

    /// Slots in the roster, removed agents' vacant ones included; see
    /// [`Roster::live`] for agents registered.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether the roster has no agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// A count after an entry went from counted (`was`) to counted (`is`).
fn adjust(n: u32, was: bool, is: bool) -> u32 {
    match (was, is) {
        (true, false) => n.saturating_sub(1),
        (false, true) => n + 1,
        _ => n,
    }
}

fn state_slot(state: AgentState) -> usize {
    state as usize
}

fn pools(policy: &Policy) -> Vec<QueuePool> {
    policy
        .queues
        .iter()
        .map(|q| QueuePool {
            channels: q.channels,
            ..QueuePool::default()
        })
        .collect()
}

/// Shared text from a string.
pub fn text(s: &str) -> Text {
    Arc::from(s)
}
