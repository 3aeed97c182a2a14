//! Agents as the CTI reports them: a profile checked and registered,
//! removal, and state changes, each kept in the roster's indexes.

use std::sync::Arc;

use super::roster::{self, Agent, Roster};
use super::{Engine, EngineError};
use crate::model::{AgentState, Channel, Time};
use crate::policy::Text;

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

pub use crate::model::MAX_CHANNEL_CAPACITY;

impl AgentSpec {
    /// Checks the profile; on refusal names the field and what is wrong
    /// (the first problem; [`AgentSpec::profile_problems`] gives them all).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.id.is_empty() {
            return Err(("agent_id".into(), "required".into()));
        }
        if self.transfer_address.trim().is_empty() {
            return Err((
                "transfer_address".into(),
                "required: the SIP URI or extension of warm transfers".into(),
            ));
        }
        match self.profile_problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem of the skills and channels (empty names, ranges,
    /// duplicates), each with its field; never the value given.
    pub fn profile_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, (skill, level)) in self.skills.iter().enumerate() {
            if skill.is_empty() {
                problems.push((format!("skills[{i}].skill"), "required".into()));
            }
            if !(1..=5).contains(level) {
                problems.push((format!("skills[{i}].proficiency"), "must be 1-5".into()));
            }
            if let Some(j) = self.skills[..i].iter().position(|(s, _)| s == skill) {
                problems.push((
                    format!("skills[{i}].skill"),
                    format!("the same skill as skills[{j}]"),
                ));
            }
        }
        for (i, language) in self.languages.iter().enumerate() {
            if let Some(j) = self.languages[..i].iter().position(|l| l == language) {
                problems.push((
                    format!("languages[{i}]"),
                    format!("the same language as languages[{j}]"),
                ));
            }
        }
        if self.channels.is_empty() {
            problems.push((
                "channels".into(),
                "at least one channel is required: an agent with none is offered nothing".into(),
            ));
        }
        for (i, (channel, capacity)) in self.channels.iter().enumerate() {
            if !(1..=MAX_CHANNEL_CAPACITY).contains(capacity) {
                problems.push((
                    format!("channels[{i}].capacity"),
                    format!("must be 1-{MAX_CHANNEL_CAPACITY}"),
                ));
            }
            if let Some(j) = self.channels[..i].iter().position(|(c, _)| c == channel) {
                problems.push((
                    format!("channels[{i}].channel"),
                    format!("the same channel as channels[{j}]"),
                ));
            }
        }
        problems
    }
}

impl Engine {
    /// Registers an agent or replaces its profile, keeping its state and work.
    /// Returns the eligible queue ids and whether the agent is new; a new
    /// agent beyond [`EngineConfig::max_agents`] is refused.
    pub(super) fn upsert_agent(
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
        // Step pools are internal: clients know their queues.
        let queues = policy.client_queue_ids(self.roster.agent(a).offered_queues(&policy));
        self.dispatch(a, now);
        Ok((queues, created))
    }

    /// Removes an agent from the roster: refused while it holds a live
    /// reservation or an active contact (set it offline first, and remove
    /// it once its work ends). Waiting contacts forget it.
    pub(super) fn remove_agent(&mut self, agent_id: &str, now: Time) -> Result<(), EngineError> {
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
    pub(super) fn set_state(
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
            agent.paused_for_misses = false;
            previous
        });
        self.dispatch(a, now);
        Ok(previous)
    }
}
