//! The routing event stream behind WatchEvents: what each command changed,
//! told once per command with its log sequence number, and the ring that
//! keeps the latest events for watchers that resume. Under the engine's
//! lock a command only notes what it changed (domain values); the wire
//! form is built on the journal's writer thread, once the command is in the
//! log.

use std::{collections::VecDeque, sync::Arc};

use tokio::sync::broadcast;
use tonic::Status;

use super::pb;
use crate::engine::{
    Apply, Cancel, Command, Complete, Configure, Confirm, Decision, EngineError, Event, Release,
    RemoveAgent, ReplacePolicy, Route, SetAgentState, Tick, Unwatch, UpsertAgent, Watch,
};
use crate::model::{AgentState, Time};
use crate::policy::Text;

/// What a command changed, in the terms the event stream tells it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A contact was decided.
    Decision(String, Decision),
    /// A reservation's transfer connected: its agent and contact.
    Confirmed(String, Text, String),
    /// A reservation was released, and why.
    Released(String, crate::model::ReleaseReason),
    /// An agent finished a contact: agent, contact.
    Completed(String, String),
    /// A waiting caller hung up.
    Cancelled(String),
    /// An agent was registered or its profile replaced.
    Upserted(String),
    /// An agent was removed.
    Removed(String),
    /// An agent's state was set.
    State(String, AgentState),
    /// A policy was put in force: its version.
    Policy(String),
}

/// What a command changed, if anything a watcher is told (its assignment
/// events are told on their own).
pub trait Describe: Apply {
    /// The change, given the engine's answer; none for a refusal.
    fn describe(&self, out: &Result<Self::Output, EngineError>) -> Option<Change>;
}

impl Describe for Route<'_> {
    fn describe(&self, out: &Result<Decision, EngineError>) -> Option<Change> {
        let decision = out.as_ref().ok()?;
        Some(Change::Decision(
            self.0.contact_id.clone(),
            decision.clone(),
        ))
    }
}

impl Describe for Confirm {
    fn describe(&self, out: &Result<(Text, String), EngineError>) -> Option<Change> {
        let (agent, contact) = out.as_ref().ok()?;
        Some(Change::Confirmed(
            self.0.to_string(),
            agent.clone(),
            contact.clone(),
        ))
    }
}

impl Describe for Release {
    fn describe(&self, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Released(self.0.to_string(), self.1))
    }
}

impl Describe for Complete {
    fn describe(&self, out: &Result<Time, EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Completed(
            self.agent_id.clone(),
            self.contact_id.clone(),
        ))
    }
}

impl Describe for Cancel {
    fn describe(&self, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Cancelled(self.0.clone()))
    }
}

impl Describe for UpsertAgent {
    fn describe(&self, out: &Result<(Vec<Text>, bool), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Upserted(self.0.id.clone()))
    }
}

impl Describe for RemoveAgent {
    fn describe(&self, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Removed(self.0.clone()))
    }
}

impl Describe for SetAgentState {
    fn describe(&self, out: &Result<AgentState, EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::State(self.agent_id.clone(), self.state))
    }
}

impl Describe for ReplacePolicy {
    fn describe(&self, out: &Result<(), EngineError>) -> Option<Change> {
        out.as_ref().ok()?;
        Some(Change::Policy(self.0.version.clone()))
    }
}

/// Commands whose effects watchers see only as assignment events.
macro_rules! untold {
    ($($name:ty),*) => {$(
        impl Describe for $name {
            fn describe(&self, _: &Result<Self::Output, EngineError>) -> Option<Change> {
                None
            }
        }
    )*};
}

untold!(Configure, Watch, Unwatch, Tick, Command);

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
        let change = self.change.clone().map(change_event);
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

fn change_event(change: Change) -> pb::routing_event::Event {
    use pb::routing_event::Event as E;
    match change {
        Change::Decision(contact_id, decision) => E::Decision(pb::DecisionEvent {
            contact_id,
            decision: Some(pb::RouteContactResponse::from(decision)),
        }),
        Change::Confirmed(reservation_id, agent_id, contact_id) => {
            E::Reservation(pb::ReservationEvent {
                reservation_id,
                change: Some(pb::reservation_event::Change::Confirmed(
                    pb::ReservationConfirmed {
                        agent_id: agent_id.to_string(),
                        contact_id,
                    },
                )),
            })
        }
        Change::Released(reservation_id, reason) => E::Reservation(pb::ReservationEvent {
            reservation_id,
            change: Some(pb::reservation_event::Change::Released(
                pb::ReleaseReason::from(reason).into(),
            )),
        }),
        Change::Completed(agent_id, contact_id) => E::Contact(pb::ContactEvent {
            contact_id,
            change: Some(pb::contact_event::Change::CompletedByAgentId(agent_id)),
        }),
        Change::Cancelled(contact_id) => E::Contact(pb::ContactEvent {
            contact_id,
            change: Some(pb::contact_event::Change::Cancelled(true)),
        }),
        Change::Upserted(agent_id) => E::Agent(pb::AgentEvent {
            agent_id,
            change: Some(pb::agent_event::Change::Upserted(true)),
        }),
        Change::Removed(agent_id) => E::Agent(pb::AgentEvent {
            agent_id,
            change: Some(pb::agent_event::Change::Removed(true)),
        }),
        Change::State(agent_id, state) => E::Agent(pb::AgentEvent {
            agent_id,
            change: Some(pb::agent_event::Change::State(
                pb::AgentState::from(state).into(),
            )),
        }),
        Change::Policy(version) => E::PolicyVersion(version),
    }
}

/// Events buffered per live WatchEvents watcher before it counts as
/// lagging.
const LIVE_BUFFER: usize = 4096;

/// Retained events to send first, then the live feed after them.
pub type Resumed = (
    Vec<Arc<pb::RoutingEvent>>,
    broadcast::Receiver<Arc<pb::RoutingEvent>>,
);

/// The latest routing events, and the live feed after them.
pub struct EventRing {
    ring: parking_lot::Mutex<Ring>,
    live: broadcast::Sender<Arc<pb::RoutingEvent>>,
}

struct Ring {
    events: VecDeque<Arc<pb::RoutingEvent>>,
    capacity: usize,
    /// Every event of the commands after this one is retained.
    resumable_after: u64,
}

impl EventRing {
    /// A ring of at most `capacity` events, starting after record `after`.
    pub fn new(capacity: usize, after: u64) -> EventRing {
        EventRing {
            ring: parking_lot::Mutex::new(Ring {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                capacity,
                resumable_after: after,
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// Keeps one command's events and sends them live.
    pub fn push(&self, published: &Published) {
        let events = published.routing_events();
        if events.is_empty() {
            return;
        }
        let mut ring = self.ring.lock();
        for event in events {
            let event = Arc::new(event);
            if ring.events.len() == ring.capacity
                && let Some(dropped) = ring.events.pop_front()
            {
                // Part of that command's events may be gone: resuming after
                // the one before it would miss them.
                ring.resumable_after = ring.resumable_after.max(dropped.sequence);
            }
            if ring.capacity > 0 {
                ring.events.push_back(Arc::clone(&event));
            } else {
                ring.resumable_after = ring.resumable_after.max(event.sequence);
            }
            // Nobody listening is fine.
            let _ = self.live.send(event);
        }
    }

    /// Starts over after record `after` (a new term: what this process
    /// kept from an earlier one may have gaps).
    pub fn restart(&self, after: u64) {
        let mut ring = self.ring.lock();
        ring.events.clear();
        ring.resumable_after = after;
    }

    /// The retained events after `after` (none: from now on) and the live
    /// feed after them, taken together so nothing falls between. A
    /// sequence no longer retained is `OUT_OF_RANGE`, naming the oldest
    /// one can resume after.
    pub fn resume(&self, after: Option<u64>) -> Result<Resumed, Status> {
        let ring = self.ring.lock();
        let live = self.live.subscribe();
        let Some(after) = after else {
            return Ok((Vec::new(), live));
        };
        if after < ring.resumable_after {
            return Err(Status::out_of_range(format!(
                "after_sequence: events up to {} are no longer retained here; resume after {} or later, and read the ones before from the journal (careroute journal --outcomes)",
                ring.resumable_after, ring.resumable_after
            )));
        }
        let retained = ring
            .events
            .iter()
            .filter(|e| e.sequence > after)
            .cloned()
            .collect();
        Ok((retained, live))
    }
}
