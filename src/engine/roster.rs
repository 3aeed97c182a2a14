//! Agents and the per-queue indexes of who is free: for every queue and
//! channel, the free eligible agents ordered by how long they have been idle,
//! in all and per language. Picking an agent reads the first entry of one
//! ordered set, so its cost does not grow with the roster; every change to an
//! agent goes through [`Roster::update`], which takes the agent out of the
//! indexes and puts it back as it now is.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::{AgentState, Channel, ChannelSet};
use crate::policy::{Policy, QueueIdx, Text};

/// Index of an agent in the roster; agents are never removed, only set offline.
pub type AgentIdx = u32;
/// An interned language tag.
pub type LangId = u32;

/// Idle order: when the agent became ready (microseconds), then its index.
type IdleKey = (i64, AgentIdx);

const CHANNELS: usize = Channel::ALL.len();

/// Everything about one agent that routing needs.
#[derive(Debug)]
pub struct Agent {
    /// The CTI's id.
    pub id: Text,
    /// Team the agent belongs to.
    pub team: Text,
    /// SIP URI or extension for warm transfers.
    pub transfer_address: Text,
    /// Skills with proficiency 1-5.
    pub skills: Vec<(String, u8)>,
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
    /// When the agent last became ready: the longest idle goes first.
    pub ready_since: i64,
    /// Queues whose skill requirements the agent meets.
    pub queues: Vec<QueueIdx>,
    /// Contacts confirmed and not yet completed: (contact id, channel, queue id).
    pub contacts: Vec<(String, Channel, Text)>,
    /// How the agent is entered in the indexes now.
    indexed: Option<Indexed>,
}

#[derive(Debug, Clone, Copy)]
struct Indexed {
    key: IdleKey,
    free: ChannelSet,
    state: AgentState,
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
            ready_since: 0,
            queues: Vec::new(),
            contacts: Vec::new(),
            indexed: None,
        }
    }

    /// Channels on which the agent can take one more contact now.
    pub fn free_channels(&self) -> ChannelSet {
        let mut free = ChannelSet::default();
        if self.state == AgentState::Available {
            for c in Channel::ALL {
                let i = c.index();
                if u16::from(self.reserved[i]) + u16::from(self.active[i])
                    < u16::from(self.capacity[i])
                {
                    free.insert(c);
                }
            }
        }
        free
    }

    /// Whether the agent meets every skill requirement of the queue.
    pub fn meets(&self, requirements: &[(String, u8)]) -> bool {
        requirements.iter().all(|(skill, min)| {
            self.skills
                .iter()
                .any(|(s, level)| s == skill && level >= min)
        })
    }
}

/// The free agents of one queue on one channel.
#[derive(Debug, Default)]
struct ChannelPool {
    any: BTreeSet<IdleKey>,
    by_language: HashMap<LangId, BTreeSet<IdleKey>>,
}

/// Counters and free-agent indexes of one queue.
#[derive(Debug, Default)]
pub struct QueuePool {
    free: [ChannelPool; CHANNELS],
    /// The queue's channels: agents are indexed only on these.
    channels: ChannelSet,
    /// Eligible agents not offline.
    pub staffed: u32,
    /// Eligible agents free on at least one of the queue's channels.
    pub available: u32,
    /// Live reservations made for this queue.
    pub reservations: u32,
}

/// All agents, their ids and the per-queue indexes.
#[derive(Debug, Default)]
pub struct Roster {
    agents: Vec<Agent>,
    ids: HashMap<Text, AgentIdx>,
    languages: HashMap<String, LangId>,
    pools: Vec<QueuePool>,
    by_state: [u32; 5],
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
    /// An empty roster for `policy`.
    pub fn new(policy: &Policy) -> Roster {
        Roster {
            pools: pools(policy),
            ..Roster::default()
        }
    }

    /// An agent by id.
    pub fn find(&self, id: &str) -> Option<AgentIdx> {
        self.ids.get(id).copied()
    }

    /// An agent by index.
    pub fn agent(&self, a: AgentIdx) -> &Agent {
        &self.agents[a as usize]
    }

    /// Every agent.
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
    pub fn by_state(&self) -> [u32; 5] {
        self.by_state
    }

    /// A language tag's id, if any agent ever spoke it.
    pub fn language(&self, tag: &str) -> Option<LangId> {
        self.languages.get(tag).copied()
    }

    /// The id of a language tag, interning it.
    pub fn intern_language(&mut self, tag: &str) -> LangId {
        let next = self.languages.len() as LangId;
        *self.languages.entry(tag.to_owned()).or_insert(next)
    }

    /// Adds an agent (offline, unindexed) and returns its index.
    pub fn add(&mut self, agent: Agent) -> AgentIdx {
        let a = self.agents.len() as AgentIdx;
        self.ids.insert(agent.id.clone(), a);
        self.agents.push(agent);
        self.index(a);
        a
    }

    /// Changes an agent and re-enters it in the indexes as it now is.
    pub fn update<R>(&mut self, a: AgentIdx, change: impl FnOnce(&mut Agent) -> R) -> R {
        self.unindex(a);
        let result = change(&mut self.agents[a as usize]);
        self.index(a);
        result
    }

    /// Recomputes an agent's eligible queues under `policy`.
    pub fn place(agent: &mut Agent, policy: &Policy) {
        agent.queues = policy
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| agent.meets(&q.skills))
            .map(|(i, _)| i)
            .collect();
    }

    /// Rebuilds every index for a new policy. Reservation counts start at zero;
    /// the caller re-adds the live ones.
    pub fn rebuild(&mut self, policy: &Policy) {
        self.pools = pools(policy);
        self.by_state = [0; 5];
        for a in 0..self.agents.len() {
            let agent = &mut self.agents[a];
            agent.indexed = None;
            Roster::place(agent, policy);
            self.index(a as AgentIdx);
        }
    }

    fn index(&mut self, a: AgentIdx) {
        let Roster {
            agents,
            pools,
            by_state,
            ..
        } = self;
        let agent = &mut agents[a as usize];
        let entry = Indexed {
            key: (agent.ready_since, a),
            free: agent.free_channels(),
            state: agent.state,
        };
        by_state[state_slot(entry.state)] += 1;
        for &q in &agent.queues {
            Roster::enter(&mut pools[q], agent, entry, true);
        }
        agent.indexed = Some(entry);
    }

    fn unindex(&mut self, a: AgentIdx) {
        let Roster {
            agents,
            pools,
            by_state,
            ..
        } = self;
        let agent = &mut agents[a as usize];
        let Some(entry) = agent.indexed.take() else {
            return;
        };
        by_state[state_slot(entry.state)] -= 1;
        for &q in &agent.queues {
            Roster::enter(&mut pools[q], agent, entry, false);
        }
    }

    /// Adds (`add`) or removes one agent's entries and counts in one queue.
    fn enter(pool: &mut QueuePool, agent: &Agent, entry: Indexed, add: bool) {
        let step = |n: &mut u32| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if entry.state != AgentState::Offline {
            step(&mut pool.staffed);
        }
        let free = ChannelSet(entry.free.0 & pool.channels.0);
        if free.0 != 0 {
            step(&mut pool.available);
        }
        for c in Channel::ALL {
            if !free.contains(c) {
                continue;
            }
            let cp = &mut pool.free[c.index()];
            if add {
                cp.any.insert(entry.key);
                for l in &agent.languages {
                    cp.by_language.entry(*l).or_default().insert(entry.key);
                }
            } else {
                cp.any.remove(&entry.key);
                for l in &agent.languages {
                    if let Some(set) = cp.by_language.get_mut(l) {
                        set.remove(&entry.key);
                    }
                }
            }
        }
    }

    /// The agent idle longest among those free for `queue` on `channel`,
    /// preferring speakers of `language`; never `exclude`.
    pub fn pick(
        &self,
        queue: QueueIdx,
        channel: Channel,
        language: Option<LangId>,
        exclude: Option<AgentIdx>,
    ) -> Option<Pick> {
        let cp = &self.pools[queue].free[channel.index()];
        let first =
            |set: &BTreeSet<IdleKey>| set.iter().map(|&(_, a)| a).find(|a| Some(*a) != exclude);
        if let Some(agent) = language
            .and_then(|l| cp.by_language.get(&l))
            .and_then(first)
        {
            return Some(Pick {
                agent,
                interpreter_needed: false,
            });
        }
        first(&cp.any).map(|agent| Pick {
            agent,
            interpreter_needed: true,
        })
    }

    /// Whether agent `a` may take a contact of `queue` on `channel` now.
    pub fn is_free_for(&self, a: AgentIdx, queue: QueueIdx, channel: Channel) -> bool {
        let agent = self.agent(a);
        agent.queues.contains(&queue)
            && self.pools[queue].channels.contains(channel)
            && agent.free_channels().contains(channel)
    }

    /// Agents in the roster.
    pub fn len(&self) -> usize {
        self.agents.len()
    }

    /// Whether the roster has no agents.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
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
