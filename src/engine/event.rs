//! What the engine decides outside a request, for the edge to stream to
//! the CTI's watchers: offers of waiting contacts, withdrawn offers, moves
//! at closing and callbacks, and which watcher filters each one passes;
//! and the notices of what else it changed by itself, for the event stream.

use chrono::Duration;

use super::watchers::WatchFilter;
use super::{AgentOffer, CallbackOffer, ReservationId};
use crate::model::AgentState;
use crate::policy::{Text, TextList};

/// Where a waiting call is parked: the queue it joined and that queue's
/// transfer address. It stays there when the contact moves on (a wider
/// pool, the on-call queue at closing).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    /// The queue the contact joined.
    pub queue_id: Text,
    /// Where the call is parked.
    pub transfer_address: Text,
}

/// A waiting contact offered to an agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// The contact.
    pub contact_id: String,
    /// The reserved agent; its queue is the one offering the contact.
    pub offer: AgentOffer,
    /// The agent's team, for watchers that cover teams.
    pub team: Text,
    /// Where the call is parked.
    pub parked: Parked,
    /// How long the contact had waited when offered (for an offer sent
    /// again to a watcher that connected, until now).
    #[serde(with = "super::snapshot::duration_micros")]
    pub waited: Duration,
    /// The agent passed on this contact before (rejected or let it lapse)
    /// and it comes back after the cool-down.
    pub reoffer: bool,
    /// The policy's guidance to verify the caller's identity during the
    /// call, when it went on unverified (an urgent clinical contact).
    pub verify_identity: Option<TextList>,
}

/// What careroute changed by itself that no assignment event tells: the
/// event stream tells it beside them (WatchAssignments has its own words
/// for the offers it made).
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A reservation's TTL passed before a confirm or release.
    Expired(ReservationId),
    /// careroute withdrew a reservation: its contact was routed again or
    /// hung up while waiting, or a reload removed its queue.
    Withdrawn(ReservationId),
    /// careroute set an agent's state: wrap-up after a completion,
    /// available when wrap-up ends, not responding after missed offers.
    State {
        /// The agent.
        agent_id: Text,
        /// Its new state.
        state: AgentState,
    },
}

/// Why an offer was withdrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Withdrawal {
    /// The caller hung up.
    Cancelled,
    /// The contact was routed again (a new hop).
    Rerouted,
    /// A policy reload removed what the contact waited for.
    PolicyChanged,
}

/// Something decided outside a request, for the edge to stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Event {
    /// A waiting contact was matched to an agent: confirm or release it.
    Assigned(Assignment),
    /// A waiting contact left its line for a callback ticket: its queue
    /// closed, it waited too long, nobody is logged in to serve it, or a
    /// policy reload removed its queue.
    CallbackInstead {
        /// The contact.
        contact_id: String,
        /// Where the call is parked.
        parked: Parked,
        /// The ticket.
        callback: CallbackOffer,
        /// How long it waited.
        waited: Duration,
    },
    /// An offer made on the stream is void: the agent's desktop stops
    /// ringing, and neither confirm nor release is needed.
    Withdrawn {
        /// The contact.
        contact_id: String,
        /// The agent that was offered it.
        agent_id: Text,
        /// The agent's team.
        team: Text,
        /// The reservation, now released.
        reservation: ReservationId,
        /// Why.
        reason: Withdrawal,
    },
    /// A waiting contact's queue closed and it moved to the on-call queue;
    /// the call stays parked where it was.
    Moved {
        /// The contact.
        contact_id: String,
        /// Where the call is parked.
        parked: Parked,
        /// The queue it left (the parked one, unless it moved before).
        from_queue_id: Text,
        /// The queue that now offers it.
        to_queue_id: Text,
        /// How long it has waited.
        waited: Duration,
    },
}

impl Event {
    /// The contact the event is about.
    pub fn contact_id(&self) -> &str {
        match self {
            Event::Assigned(a) => &a.contact_id,
            Event::CallbackInstead { contact_id, .. }
            | Event::Withdrawn { contact_id, .. }
            | Event::Moved { contact_id, .. } => contact_id,
        }
    }

    /// Whether a watcher with `filter` receives the event: events for an
    /// agent by agent or team, the others by the queue the call is parked at.
    pub fn passes(&self, filter: &WatchFilter) -> bool {
        match self {
            Event::Assigned(a) => filter.covers_agent(&a.offer.agent_id, &a.team),
            Event::Withdrawn { agent_id, team, .. } => filter.covers_agent(agent_id, team),
            Event::CallbackInstead { parked, .. } | Event::Moved { parked, .. } => {
                filter.covers_queue(&parked.queue_id)
            }
        }
    }
}
