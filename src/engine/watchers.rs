//! Who watches the floor: the CTI connections subscribed to assignment
//! events, each with the agents, teams and queues it covers. An agent is
//! offered waiting contacts only while some watcher covers it, so an offer
//! is never made that nobody could receive.

use super::roster::Agent;
use crate::model::FastMap;

/// What one watcher receives. Empty lists receive everything.
/// Events for an agent (assignments, withdrawn offers) match by agent or
/// team; events without an agent (callbacks, moves at closing) match by the
/// queue the call is parked at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Agent ids.
    pub agents: Vec<String>,
    /// Team names.
    pub teams: Vec<String>,
    /// Queue ids.
    pub queues: Vec<String>,
}

impl WatchFilter {
    /// Whether the filter selects nothing, so everything passes.
    pub fn is_everything(&self) -> bool {
        self.agents.is_empty() && self.teams.is_empty() && self.queues.is_empty()
    }

    /// Whether events for the agent `id` of `team` pass.
    pub fn covers_agent(&self, id: &str, team: &str) -> bool {
        self.is_everything()
            || self.agents.iter().any(|a| a == id)
            || self.teams.iter().any(|t| t == team)
    }

    /// Whether events without an agent for a call parked at `queue` pass.
    pub fn covers_queue(&self, queue: &str) -> bool {
        self.is_everything() || self.queues.iter().any(|q| q == queue)
    }
}

/// Identifies one watcher while it is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WatchId(pub u64);

/// The watchers connected now.
#[derive(Debug, Default)]
pub struct Watchers {
    next: u64,
    /// Watchers with an empty filter: while any is connected, every agent
    /// is covered without looking further.
    everything: u32,
    filters: FastMap<WatchId, WatchFilter>,
}

impl Watchers {
    /// Registers a watcher.
    pub fn add(&mut self, filter: WatchFilter) -> WatchId {
        self.next += 1;
        let id = WatchId(self.next);
        if filter.is_everything() {
            self.everything += 1;
        }
        self.filters.insert(id, filter);
        id
    }

    /// Forgets a watcher; its filter, if it was connected.
    pub fn remove(&mut self, id: WatchId) -> Option<WatchFilter> {
        let filter = self.filters.remove(&id)?;
        if filter.is_everything() {
            self.everything -= 1;
        }
        Some(filter)
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
            || self
                .filters
                .values()
                .any(|f| f.covers_agent(&agent.id, &agent.team))
    }
}
