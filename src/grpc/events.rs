//! What each command changed, as the event streams tell it: under the
//! engine's lock a command only notes what it changed (domain values); the
//! wire form is built on the journal's writer thread, once the command is
//! in the log. The ring that keeps them for resuming is `event_ring`.

use super::pb;
use crate::engine::{
    Answered, Apply, Cancel, Complete, Configure, Confirm, Decision, EngineError, Event, Once,
    Release, RemoveAgent, ReplacePolicy, ReservationId, Route, SetAgentState, Settle, Tick,
    Unwatch, UpsertAgent, Watch,
};
use crate::model::{AgentState, ReleaseReason, Time};
use crate::policy::Text;

/// What a command changed, in the terms the event streams tell it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A contact was decided.
    Decision {
        /// The contact.
        contact_id: String,
        /// The decision, as the caller was answered.
        decision: Decision,
    },
    /// A reservation's transfer connected.
    Confirmed {
        /// The reservation.
        reservation: ReservationId,
        /// The agent now handling the contact.
        agent_id: Text,
        /// The contact.
        contact_id: String,
    },
    /// A reservation was released.
    Released {
        /// The reservation.
        reservation: ReservationId,
        /// Why.
        reason: ReleaseReason,
    },
    /// An agent finished a contact.
    Completed {
        /// The agent.
        agent_id: String,
        /// The contact.
        contact_id: String,
    },
    /// A waiting caller hung up.
    Cancelled {
        /// The contact.
        contact_id: String,
    },
    /// An agent was registered or its profile replaced.
    Upserted {
        /// The agent.
        agent_id: String,
    },
    /// An agent was removed.
    Removed {
        /// The agent.
        agent_id: String,
    },
    /// An agent's state was set.
    State {
        /// The agent.
        agent_id: String,
        /// Its new state.
        state: AgentState,
    },
    /// A policy was put in force.
    Policy {
        /// Its version.
        version: String,
    },
}

/// What a command changed, if anything a watcher is told (its assignment
/// events are told on their own). The ids it needs are noted before the
/// command is applied, so the command itself is never copied for it.
pub trait Describe: Apply {
    /// What is noted of the command before it is applied.
    type Note;

    /// Notes what [`Describe::describe`] will need.
    fn note(&self) -> Self::Note;

    /// The change, given the engine's answer; none for a refusal.
    fn describe(note: Self::Note, out: &Result<Self::Output, EngineError>) -> Option<Change>;
}

impl Describe for Route<'_> {
    type Note = String;
    fn note(&self) -> String {
        self.0.contact_id.clone()
    }
    fn describe(contact_id: String, out: &Result<Decision, EngineError>) -> Option<Change> {
        let decision = out.as_ref().ok()?;
        Some(Change::Decision {
            contact_id,
            decision: decision.clone(),
        })
    }
}

impl Describe for Confirm {
    type Note = ReservationId;
    fn note(&self) -> ReservationId {
        self.0
    }
    fn describe(
        reservation: ReservationId,
        out: &Result<(Text, String), EngineError>,
    ) -> Option<Change> {
        let (agent_id, contact_id) = out.as_ref().ok()?;
        Some(Change::Confirmed {
            reservation,
            agent_id: agent_id.clone(),
            contact_id: contact_id.clone(),
        })
    }
}

impl Describe for Release {
    type Note = (ReservationId, ReleaseReason);
    fn note(&self) -> Self::Note {
        (self.0, self.1)
    }
    fn describe(
        (reservation, reason): Self::Note,
        out: &Result<(), EngineError>,
    ) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Released {
            reservation,
            reason,
        })
    }
}

impl Describe for Complete {
    type Note = (String, String);
    fn note(&self) -> Self::Note {
        (self.agent_id.clone(), self.contact_id.clone())
    }
    fn describe(
        (agent_id, contact_id): Self::Note,
        out: &Result<Time, EngineError>,
    ) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Completed {
            agent_id,
            contact_id,
        })
    }
}

impl Describe for Cancel {
    type Note = String;
    fn note(&self) -> String {
        self.0.clone()
    }
    fn describe(contact_id: String, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Cancelled { contact_id })
    }
}

impl<C> Describe for Once<C>
where
    C: Describe + Settle,
    C::Output: Clone,
{
    type Note = C::Note;
    fn note(&self) -> C::Note {
        self.command.note()
    }
    /// A retry answered from the first changed nothing: no event.
    fn describe(note: C::Note, out: &Result<Answered<C::Output>, EngineError>) -> Option<Change> {
        match out {
            Ok(a) if a.replayed => None,
            Ok(a) => C::describe(note, &Ok(a.out.clone())),
            Err(e) => C::describe(note, &Err(e.clone())),
        }
    }
}

impl Describe for UpsertAgent {
    type Note = String;
    fn note(&self) -> String {
        self.0.id.clone()
    }
    fn describe(agent_id: String, out: &Result<(Vec<Text>, bool), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Upserted { agent_id })
    }
}

impl Describe for RemoveAgent {
    type Note = String;
    fn note(&self) -> String {
        self.0.clone()
    }
    fn describe(agent_id: String, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Removed { agent_id })
    }
}

impl Describe for SetAgentState {
    type Note = (String, AgentState);
    fn note(&self) -> Self::Note {
        (self.agent_id.clone(), self.state)
    }
    fn describe(
        (agent_id, state): Self::Note,
        out: &Result<AgentState, EngineError>,
    ) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::State { agent_id, state })
    }
}

impl Describe for ReplacePolicy {
    type Note = String;
    fn note(&self) -> String {
        self.0.version.clone()
    }
    fn describe(version: String, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Policy { version })
    }
}

/// Commands whose effects watchers see only as assignment events.
macro_rules! untold {
    ($($name:ty),*) => {$(
        impl Describe for $name {
            type Note = ();
            fn note(&self) {}
            fn describe((): (), _: &Result<Self::Output, EngineError>) -> Option<Change> {
                None
            }
        }
    )*};
}

untold!(Configure, Watch, Unwatch, Tick);

/// One command's events, as the journal publishes them once it is logged:
/// its sequence number and time, what it changed, and the assignment
/// events it set off (domain and wire form, converted once for every
/// watcher).
#[derive(Debug)]
pub struct Published {
    /// The command's log sequence number.
    pub seq: u64,
    /// When it was applied.
    pub at: Time,
    /// What it changed, if a watcher is told.
    pub change: Option<Change>,
    /// The assignment events it set off.
    pub assignments: Vec<(Event, pb::AssignmentEvent)>,
}

impl Published {
    /// The command's events in wire form, in order.
    pub fn routing_events(&self) -> Vec<pb::RoutingEvent> {
        let at = Some(prost_types::Timestamp {
            seconds: self.at.timestamp(),
            nanos: self.at.timestamp_subsec_nanos() as i32,
        });
        let change = self.change.as_ref().map(pb::routing_event::Event::from);
        let assignments = self
            .assignments
            .iter()
            .map(|(_, wire)| pb::routing_event::Event::Assignment(wire.clone()));
        change
            .into_iter()
            .chain(assignments)
            .enumerate()
            .map(|(index, event)| pb::RoutingEvent {
                sequence: self.seq,
                index: index as u32,
                at,
                event: Some(event),
            })
            .collect()
    }
}
