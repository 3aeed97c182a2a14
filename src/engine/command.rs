//! The one door into the engine: every change to routing state is a
//! command, applied with its time through [`Engine::apply`]. Each command is
//! a type with its own answer, so the edge never guesses what came back.
//! The time is clamped there, once per command, so it never goes backwards
//! inside the engine (and each clamp is counted). Views read state; nothing
//! that advances time or fires timers happens outside a command ([`Tick`]
//! is the command for time passing).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::once::Once;
use super::{
    AgentSpec, Decision, Engine, EngineError, Event, Limits, ReservationId, WatchFilter, WatchId,
};
use crate::model::{AgentState, Contact, ReleaseReason, Time};
use crate::policy::{Policy, Text};

/// A change to routing state, with what the engine answers.
pub trait Apply {
    /// What the engine answers.
    type Output;

    /// Whether the command only lets time pass (a [`Tick`]): with nothing
    /// due it changes nothing a log needs to keep.
    const ONLY_TIME: bool = false;

    /// Whether a refusal of the command changes only what a [`Tick`] at
    /// its time would (it is refused before anything but what fell due is
    /// touched): a log may keep a tick in its place, and so never what the
    /// refused request carried. A property test holds each such command to
    /// it.
    const REFUSED_AS_TICK: bool = false;

    /// Applies the command at `now`, already clamped by [`Engine::apply`].
    fn apply_at(self, engine: &mut Engine, now: Time) -> Result<Self::Output, EngineError>;
}

/// Decide where a contact goes (a warm transfer reserves an agent). It
/// borrows the contact: the edge keeps its request, and nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Route<'a>(pub &'a Contact);

/// Register an agent or replace its profile; answers the eligible queues
/// and whether it is new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertAgent(pub AgentSpec);

/// Remove an agent that holds no work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveAgent(pub String);

/// Set an agent's state; answers the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAgentState {
    /// The agent.
    pub agent_id: String,
    /// Its new state.
    pub state: AgentState,
}

/// The transfer connected; answers the agent and contact ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm(pub ReservationId);

/// The offer was released instead of confirmed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release(pub ReservationId, pub ReleaseReason);

/// The agent finished an active contact; answers when wrap-up ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Complete {
    /// The agent.
    pub agent_id: String,
    /// The contact it finished.
    pub contact_id: String,
}

/// A waiting caller hung up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel(pub String);

/// Put a new policy in force. In a log it is its source name and text,
/// parsed again when read.
#[derive(Debug, Clone)]
pub struct ReplacePolicy(pub Arc<Policy>);

/// A policy as a log or a snapshot keeps it: its source name and text.
#[derive(Serialize, Deserialize)]
pub(super) struct PolicyText<'a> {
    pub source: std::borrow::Cow<'a, str>,
    pub text: std::borrow::Cow<'a, str>,
}

impl Serialize for ReplacePolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PolicyText {
            source: (&*self.0.source).into(),
            text: (&*self.0.text).into(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ReplacePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = PolicyText::deserialize(d)?;
        crate::policy::parse_logged(&p.source, &p.text)
            .map(|policy| ReplacePolicy(Arc::new(policy)))
            .map_err(serde::de::Error::custom)
    }
}

/// Put new limits in force (windows and caps of what the engine keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configure(pub Limits);

/// A CTI connected; answers its id and what it missed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch(pub WatchFilter);

/// A CTI disconnected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unwatch(pub WatchId);

/// Time passed: apply what is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick;

impl Apply for Route<'_> {
    type Output = Decision;
    /// Refused by the request id's check or the policy's vocabulary, both
    /// before anything but the timers due: and a refused contact may carry
    /// what the vocabulary keeps out (free text, patient data).
    const REFUSED_AS_TICK: bool = true;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<Decision, EngineError> {
        e.route(self.0, now)
    }
}

impl Apply for UpsertAgent {
    type Output = (Vec<Text>, bool);
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(Vec<Text>, bool), EngineError> {
        e.upsert_agent(self.0, now)
    }
}

impl Apply for RemoveAgent {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.remove_agent(&self.0, now)
    }
}

impl Apply for SetAgentState {
    type Output = AgentState;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<AgentState, EngineError> {
        e.set_state(&self.agent_id, self.state, now)
    }
}

impl Apply for Confirm {
    type Output = (Text, String);
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(Text, String), EngineError> {
        e.confirm(self.0, now)
    }
}

impl Apply for Release {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.release(self.0, self.1, now)
    }
}

impl Apply for Complete {
    type Output = Time;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<Time, EngineError> {
        e.complete(&self.agent_id, &self.contact_id, now)
    }
}

impl Apply for Cancel {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.cancel(&self.0, now)
    }
}

impl Apply for ReplacePolicy {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.replace_policy(self.0, now);
        Ok(())
    }
}

impl Apply for Configure {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.configure(self.0, now);
        Ok(())
    }
}

impl Apply for Watch {
    type Output = (WatchId, Vec<Event>);
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(WatchId, Vec<Event>), EngineError> {
        e.watch(self.0, now)
    }
}

impl Apply for Unwatch {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.unwatch(self.0, now);
        Ok(())
    }
}

impl Apply for Tick {
    type Output = ();
    const ONLY_TIME: bool = true;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        e.advance(now);
        Ok(())
    }
}

/// The process restarted: the watchers of the one before are gone (their
/// connections died with it), so offers out to their agents are unseen. It
/// begins `epoch`, which every id made from then on carries: drawn by the
/// start (never derived from the log, whose tail a power loss can take with
/// the restart before), so ids a lost tail gave are never given again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarted {
    /// The epoch begun.
    pub epoch: u32,
}

/// Any command, owned: what a log of the engine's inputs holds. Applying
/// one answers nothing; the typed commands answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// [`Route`].
    Route(Contact),
    /// [`UpsertAgent`].
    UpsertAgent(UpsertAgent),
    /// [`RemoveAgent`].
    RemoveAgent(RemoveAgent),
    /// [`SetAgentState`].
    SetAgentState(SetAgentState),
    /// [`Confirm`].
    Confirm(Confirm),
    /// [`Release`].
    Release(Release),
    /// [`Complete`].
    Complete(Complete),
    /// [`Cancel`].
    Cancel(Cancel),
    /// [`ReplacePolicy`].
    ReplacePolicy(ReplacePolicy),
    /// [`Configure`].
    Configure(Configure),
    /// [`Watch`].
    Watch(Watch),
    /// [`Unwatch`].
    Unwatch(Unwatch),
    /// [`Tick`].
    Tick,
    /// [`Restarted`].
    Restarted(Restarted),
    /// A settling command with the client's request id ([`Once`]).
    Once {
        /// The client's id for the request.
        request_id: String,
        /// A [`Confirm`], [`Release`], [`Complete`] or [`Cancel`].
        command: Box<Command>,
    },
}

impl From<Route<'_>> for Command {
    fn from(c: Route<'_>) -> Command {
        Command::Route(c.0.clone())
    }
}

macro_rules! into_command {
    ($($name:ident),*) => {$(
        impl From<$name> for Command {
            fn from(c: $name) -> Command {
                Command::$name(c)
            }
        }
    )*};
}

into_command!(
    UpsertAgent,
    RemoveAgent,
    SetAgentState,
    Confirm,
    Release,
    Complete,
    Cancel,
    ReplacePolicy,
    Configure,
    Watch,
    Unwatch
);

impl From<Tick> for Command {
    fn from(_: Tick) -> Command {
        Command::Tick
    }
}

/// A logged settling command with its request id ([`Command::Once`]), as
/// its typed [`Once`]: answers whether it was a retry answered from the
/// first. Only settling commands are sent with a request id; anything else
/// in a log applies as itself (never a retry).
#[derive(Debug, Clone)]
pub struct LoggedOnce {
    /// The client's id for the request.
    pub request_id: String,
    /// A [`Confirm`], [`Release`], [`Complete`] or [`Cancel`].
    pub command: Command,
}

impl Apply for LoggedOnce {
    type Output = bool;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<bool, EngineError> {
        let id = self.request_id;
        match self.command {
            Command::Confirm(c) => Once::new(id, c).apply_at(e, now).map(|a| a.replayed),
            Command::Release(c) => Once::new(id, c).apply_at(e, now).map(|a| a.replayed),
            Command::Complete(c) => Once::new(id, c).apply_at(e, now).map(|a| a.replayed),
            Command::Cancel(c) => Once::new(id, c).apply_at(e, now).map(|a| a.replayed),
            other => other.apply_at(e, now).map(|()| false),
        }
    }
}

impl Apply for Command {
    type Output = ();
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<(), EngineError> {
        match self {
            Command::Route(c) => Route(&c).apply_at(e, now).map(drop),
            Command::UpsertAgent(c) => c.apply_at(e, now).map(drop),
            Command::RemoveAgent(c) => c.apply_at(e, now),
            Command::SetAgentState(c) => c.apply_at(e, now).map(drop),
            Command::Confirm(c) => c.apply_at(e, now).map(drop),
            Command::Release(c) => c.apply_at(e, now),
            Command::Complete(c) => c.apply_at(e, now).map(drop),
            Command::Cancel(c) => c.apply_at(e, now),
            Command::ReplacePolicy(c) => c.apply_at(e, now),
            Command::Configure(c) => c.apply_at(e, now),
            Command::Watch(c) => c.apply_at(e, now).map(drop),
            Command::Unwatch(c) => c.apply_at(e, now),
            Command::Tick => Tick.apply_at(e, now),
            Command::Restarted(Restarted { epoch }) => {
                e.restarted(epoch, now);
                Ok(())
            }
            Command::Once {
                request_id,
                command,
            } => LoggedOnce {
                request_id,
                command: *command,
            }
            .apply_at(e, now)
            .map(drop),
        }
    }
}

impl Engine {
    /// Applies one command at `at`: the only way anything changes the
    /// engine's state. A time before the last command's is taken as the
    /// last command's (the clock never goes backwards inside the engine),
    /// and counted in [`super::Counters::clock_went_back`].
    pub fn apply<C: Apply>(&mut self, command: C, at: Time) -> Result<C::Output, EngineError> {
        let now = match self.now {
            Some(last) if at < last => {
                self.counters.clock_went_back += 1;
                last
            }
            _ => at,
        };
        self.now = Some(now);
        self.notices.clear();
        self.events_before = self.events.len();
        self.ahead = None;
        let out = command.apply_at(self, now);
        // A line that filled or moved, or a change to who staffs the lines,
        // is looked at in the command that made it.
        if self.take_touched() {
            self.sweep_lines(now);
        }
        self.trim_kept(now);
        self.drop_settled_expiries();
        out
    }
}
