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
use crate::model::MAX_PROFICIENCY;

impl AgentSpec {
    /// Checks the profile; on refusal says which part is wrong and how
    /// (the first problem; [`AgentSpec::profile_problems`] gives them all).
    pub fn validate(&self) -> Result<(), ProfileProblem> {
        let required = |part| ProfileProblem {
            part,
            fault: ProfileFault::Required,
        };
        if self.id.is_empty() {
            return Err(required(ProfilePart::Id));
        }
        if self.transfer_address.trim().is_empty() {
            return Err(required(ProfilePart::TransferAddress));
        }
        match self.profile_problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    /// Every problem of the skills, languages and channels (empty names,
    /// ranges, repeats); never the value given.
    pub fn profile_problems(&self) -> Vec<ProfileProblem> {
        let mut problems = Vec::new();
        let mut add = |part, fault| problems.push(ProfileProblem { part, fault });
        for (i, (skill, level)) in self.skills.iter().enumerate() {
            if skill.is_empty() {
                add(ProfilePart::Skill(i), ProfileFault::Required);
            }
            if !(1..=MAX_PROFICIENCY).contains(level) {
                add(
                    ProfilePart::Proficiency(i),
                    ProfileFault::Range(MAX_PROFICIENCY),
                );
            }
            if let Some(j) = self.skills[..i].iter().position(|(s, _)| s == skill) {
                add(
                    ProfilePart::Skill(i),
                    ProfileFault::Repeats(ProfilePart::Skill(j)),
                );
            }
        }
        for (i, language) in self.languages.iter().enumerate() {
            if let Some(j) = self.languages[..i].iter().position(|l| l == language) {
                add(
                    ProfilePart::Language(i),
                    ProfileFault::Repeats(ProfilePart::Language(j)),
                );
            }
        }
        if self.channels.is_empty() {
            add(ProfilePart::Channels, ProfileFault::Required);
        }
        for (i, (channel, capacity)) in self.channels.iter().enumerate() {
            if !(1..=MAX_CHANNEL_CAPACITY).contains(capacity) {
                add(
                    ProfilePart::Capacity(i),
                    ProfileFault::Range(MAX_CHANNEL_CAPACITY),
                );
            }
            if let Some(j) = self.channels[..i].iter().position(|(c, _)| c == channel) {
                add(
                    ProfilePart::Channel(i),
                    ProfileFault::Repeats(ProfilePart::Channel(j)),
                );
            }
        }
        problems
    }
}

/// A part of an agent's profile, by its place in [`AgentSpec`]; each edge
/// names it as its callers wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfilePart {
    /// The agent's id.
    Id,
    /// Where warm transfers go.
    TransferAddress,
    /// The name of skill `i`.
    Skill(usize),
    /// The proficiency of skill `i`.
    Proficiency(usize),
    /// Language `i`.
    Language(usize),
    /// The channels as a whole.
    Channels,
    /// Which channel entry `i` is.
    Channel(usize),
    /// How many contacts at once channel entry `i` takes.
    Capacity(usize),
}

/// What is wrong with a part of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileFault {
    /// Missing or empty.
    Required,
    /// Outside 1 to this.
    Range(u8),
    /// The same as this earlier part.
    Repeats(ProfilePart),
}

/// One problem of a profile: the part and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileProblem {
    /// The part.
    pub part: ProfilePart,
    /// What is wrong with it.
    pub fault: ProfileFault,
}

impl ProfileProblem {
    /// What is wrong, for a refusal beside the part's name; an earlier part
    /// it repeats is named by `name`, as the edge names its fields.
    pub fn describe(&self, name: impl Fn(ProfilePart) -> String) -> String {
        match (self.fault, self.part) {
            (ProfileFault::Required, ProfilePart::TransferAddress) => {
                "required: the SIP URI or extension of warm transfers".into()
            }
            (ProfileFault::Required, ProfilePart::Channels) => {
                "at least one channel is required: an agent with none is offered nothing".into()
            }
            (ProfileFault::Required, _) => "required".into(),
            (ProfileFault::Range(max), _) => format!("must be 1-{max}"),
            (ProfileFault::Repeats(first), part) => {
                let what = match part {
                    ProfilePart::Skill(_) => "skill",
                    ProfilePart::Language(_) => "language",
                    ProfilePart::Channel(_) => "channel",
                    _ => "value",
                };
                format!("the same {what} as {}", name(first))
            }
        }
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
