//! What supervisors and wallboards see of agents: one agent as the engine
//! holds it now (state, why it is paused, load and idle time per channel,
//! live reservations, contacts in hand, eligible queues), and pages of
//! agents filtered by queue, team and state. Views only: nothing here
//! changes the engine.

use super::roster::{Agent, AgentIdx};
use super::{Engine, EngineError, QueueNamed, ReservationId};
use crate::model::{AgentState, Channel, FastMap, Time};
use crate::policy::Text;

/// One agent now.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The CTI's id.
    pub id: Text,
    /// Team.
    pub team: Text,
    /// SIP URI or extension.
    pub transfer_address: Text,
    /// State.
    pub state: AgentState,
    /// Why it is offered nothing while `not_responding`.
    pub paused: Option<Paused>,
    /// Offers the agent let lapse or rejected in a row.
    pub missed_offers: u32,
    /// Each channel it serves.
    pub channels: Vec<ChannelLoad>,
    /// Live reservations (offers out), oldest first.
    pub reservations: Vec<HeldOffer>,
    /// Contacts confirmed and not completed, oldest first.
    pub contacts: Vec<HeldContact>,
    /// Queues it may be offered contacts of (its requirements met, or a
    /// relaxation step reaching it), in policy order, as clients know them.
    pub queues: Vec<Text>,
    /// Skills with proficiency.
    pub skills: Vec<(Text, u8)>,
    /// Language tags.
    pub languages: Vec<String>,
}

/// Why an agent in `not_responding` is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paused {
    /// careroute paused it: it missed the policy's `missed_offers_to_pause`
    /// offers in a row (recorded when it did, until the CTI sets a state).
    MissedOffers,
    /// The CTI set the state.
    ByCti,
}

/// One channel of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelLoad {
    /// The channel.
    pub channel: Channel,
    /// Contacts at once.
    pub capacity: u8,
    /// Offers out on it.
    pub reserved: u8,
    /// Contacts in hand on it.
    pub active: u8,
    /// Room for more now: what the capacity leaves, while available.
    pub free: u8,
    /// While it is available with nothing on this channel: since when
    /// (the last time it became free there).
    pub idle_since: Option<Time>,
}

/// A live reservation of an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOffer {
    /// Its id.
    pub reservation: ReservationId,
    /// The contact offered.
    pub contact_id: String,
    /// The queue it is for.
    pub queue_id: Text,
    /// Its channel.
    pub channel: Channel,
    /// When it lapses unless confirmed.
    pub expires_at: Time,
}

/// A contact in an agent's hands.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldContact {
    /// The contact.
    pub contact_id: String,
    /// Its channel.
    pub channel: Channel,
    /// The queue it came through.
    pub queue_id: Text,
    /// When it was confirmed.
    pub since: Time,
}

/// Which agents a page holds; empty parts match everyone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    /// Only agents eligible for this queue.
    pub queue_id: Option<String>,
    /// Only agents of this team.
    pub team: Option<String>,
    /// Only agents in one of these states.
    pub states: Vec<AgentState>,
}

/// A page of agents, in roster order (registration order, except that a
/// removed agent's slot goes to a later new agent), and where the next
/// starts.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPage {
    /// The agents.
    pub agents: Vec<AgentView>,
    /// The cursor of the next page; `None` at the end.
    pub next: Option<u32>,
}

impl Engine {
    /// The agent `agent_id` now: a view, which applies nothing.
    pub fn agent_view(&self, agent_id: &str) -> Result<AgentView, EngineError> {
        let a = self
            .roster
            .find(agent_id)
            .ok_or_else(|| EngineError::UnknownAgent(agent_id.to_owned()))?;
        let offers = self.offers_of(|i| i == a);
        Ok(self.view_of(a, offers.get(&a).cloned().unwrap_or_default()))
    }

    /// Up to `limit` agents matching `filter`, from cursor `from` (0 for
    /// the first page), in roster order.
    pub fn agent_page(
        &self,
        filter: &AgentFilter,
        from: u32,
        limit: usize,
    ) -> Result<AgentPage, EngineError> {
        let queue = match &filter.queue_id {
            Some(id) => Some(
                self.policy
                    .queue_idx(id)
                    .filter(|&q| self.policy.queues[q].parent.is_none())
                    .ok_or_else(|| EngineError::UnknownQueue {
                        named: QueueNamed::Filter,
                        id: id.clone(),
                    })?,
            ),
            None => None,
        };
        let matches = |agent: &Agent| {
            !agent.removed
                && queue.is_none_or(|q| {
                    agent
                        .offered_queues(&self.policy)
                        .any(|a| self.policy.root(a) == q)
                })
                && filter.team.as_deref().is_none_or(|t| *agent.team == *t)
                && (filter.states.is_empty() || filter.states.contains(&agent.state))
        };
        let all = self.roster.agents();
        let mut picked = Vec::with_capacity(limit.min(all.len()));
        let mut next = None;
        for (i, agent) in all.iter().enumerate().skip(from as usize) {
            if !matches(agent) {
                continue;
            }
            if picked.len() == limit {
                next = Some(i as u32);
                break;
            }
            picked.push(i as AgentIdx);
        }
        let mut offers = self.offers_of(|i| picked.binary_search(&i).is_ok());
        let agents = picked
            .iter()
            .map(|&a| self.view_of(a, offers.remove(&a).unwrap_or_default()))
            .collect();
        Ok(AgentPage { agents, next })
    }

    /// The live reservations of the agents `wanted` picks, oldest first.
    fn offers_of(&self, wanted: impl Fn(AgentIdx) -> bool) -> FastMap<AgentIdx, Vec<HeldOffer>> {
        let mut by_agent: FastMap<AgentIdx, Vec<HeldOffer>> = FastMap::default();
        for r in self.reservations.values().filter(|r| wanted(r.agent)) {
            by_agent.entry(r.agent).or_default().push(HeldOffer {
                reservation: r.id,
                contact_id: r.contact_id.clone(),
                queue_id: self.shown_queue(&r.queue_id),
                channel: r.channel,
                expires_at: r.expires_at,
            });
        }
        for offers in by_agent.values_mut() {
            offers.sort_by_key(|o| (o.expires_at, o.reservation));
        }
        by_agent
    }

    /// The queue clients know a pool by: a step's wider pool is internal,
    /// shown as the queue it widens.
    fn shown_queue(&self, pool: &Text) -> Text {
        match self.policy.queue_idx(pool) {
            Some(q) => self.policy.queues[self.policy.root(q)].id.clone(),
            None => pool.clone(),
        }
    }

    fn view_of(&self, a: AgentIdx, reservations: Vec<HeldOffer>) -> AgentView {
        let agent = self.roster.agent(a);
        let policy = &self.policy;
        let paused =
            (agent.state == AgentState::NotResponding).then_some(if agent.paused_for_misses {
                Paused::MissedOffers
            } else {
                Paused::ByCti
            });
        // Free: available, room under the capacity, and no work on another
        // channel that blocks this one (the policy's utilization).
        let free = agent.free_channels(self.roster.blocks());
        let channels = Channel::ALL
            .into_iter()
            .filter(|c| agent.capacity[c.index()] > 0)
            .map(|c| {
                let i = c.index();
                let held = agent.reserved[i].saturating_add(agent.active[i]);
                // With work on the channel its ready time is when the last
                // offer came (the routing order), not idle time.
                let idle = free.contains(c) && held == 0;
                ChannelLoad {
                    channel: c,
                    capacity: agent.capacity[i],
                    reserved: agent.reserved[i],
                    active: agent.active[i],
                    free: if free.contains(c) {
                        agent.capacity[i].saturating_sub(held)
                    } else {
                        0
                    },
                    idle_since: idle
                        .then(|| Time::from_timestamp_micros(agent.ready_since[i]))
                        .flatten(),
                }
            })
            .collect();
        AgentView {
            id: agent.id.clone(),
            team: agent.team.clone(),
            transfer_address: agent.transfer_address.clone(),
            state: agent.state,
            paused,
            missed_offers: agent.missed_offers,
            channels,
            reservations,
            contacts: {
                let mut held: Vec<HeldContact> = agent
                    .contacts
                    .iter()
                    .map(|(contact_id, channel, queue_id, since)| HeldContact {
                        contact_id: contact_id.clone(),
                        channel: *channel,
                        queue_id: self.shown_queue(queue_id),
                        since: *since,
                    })
                    .collect();
                held.sort_by(|x, y| (x.since, &x.contact_id).cmp(&(y.since, &y.contact_id)));
                held
            },
            queues: policy.client_queue_ids(agent.offered_queues(policy)),
            skills: agent.skills.clone(),
            languages: agent
                .languages
                .iter()
                .filter_map(|&l| self.roster.language_tag(l).map(str::to_owned))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::engine::{AgentSpec, EngineConfig, RemoveAgent, UpsertAgent};
    use crate::policy::Policy;

    fn spec(id: &str, team: &str) -> AgentSpec {
        AgentSpec {
            id: id.into(),
            team: team.into(),
            transfer_address: format!("sip:{id}"),
            skills: vec![("billing".into(), 3)],
            languages: vec!["en".into()],
            channels: vec![(Channel::Voice, 1)],
        }
    }

    /// Every page walk, whatever the page size, sees each matching agent
    /// exactly once, removed slots skipped and reused ones included.
    #[test]
    fn pages_cover_every_matching_agent_once() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
        let mut e = Engine::new(
            Arc::new(Policy::embedded().unwrap()),
            EngineConfig::default(),
        );
        for i in 0..23 {
            let team = if i % 3 == 0 { "A" } else { "B" };
            e.apply(UpsertAgent(spec(&format!("a{i}"), team)), t)
                .unwrap();
        }
        for i in [4, 9, 10] {
            e.apply(RemoveAgent(format!("a{i}")), t).unwrap();
        }
        e.apply(UpsertAgent(spec("late", "A")), t).unwrap();
        let brute = |team: Option<&str>| -> Vec<String> {
            let mut ids: Vec<String> = e
                .roster()
                .agents()
                .iter()
                .filter(|a| !a.removed && team.is_none_or(|t| *a.team == *t))
                .map(|a| a.id.to_string())
                .collect();
            ids.sort();
            ids
        };
        for team in [None, Some("A"), Some("B")] {
            let filter = AgentFilter {
                team: team.map(str::to_owned),
                ..AgentFilter::default()
            };
            for size in [1, 2, 5, 100] {
                let (mut seen, mut from) = (Vec::new(), 0);
                loop {
                    let page = e.agent_page(&filter, from, size).unwrap();
                    assert!(page.agents.len() <= size);
                    seen.extend(page.agents.iter().map(|a| a.id.to_string()));
                    match page.next {
                        Some(next) => from = next,
                        None => break,
                    }
                }
                seen.sort();
                assert_eq!(seen, brute(team), "team {team:?}, pages of {size}");
            }
        }
        assert!(e.agent_view("a4").is_err());
        assert_eq!(&*e.agent_view("late").unwrap().team, "A");
    }
}
