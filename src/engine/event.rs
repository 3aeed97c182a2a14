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

/// What careroute changed by itself, for the event stream beside the
/// assignment events (a withdrawn offer of a waiting contact is told both
/// ways: WatchAssignments has its own words for the offers it made).
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

/// A command's notices, in the order they happened among its assignment
/// events, and which came of time passing before the command itself acted.
#[derive(Debug, Default, PartialEq)]
pub struct Notices {
    /// Each notice, with how many of the command's assignment events came
    /// before it.
    pub list: Vec<(usize, Notice)>,
    /// The assignment events and notices of time passing, before the
    /// command acted: how many of each.
    pub ahead: (usize, usize),
}

/// One place in the order a command's effects are told in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The command's own change.
    Command,
    /// The `n`th of its notices.
    Notice(usize),
    /// The `n`th of its assignment events.
    Event(usize),
}

impl Notices {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The order the command's effects happened in, given how many
    /// assignment events it set off: what time passing caused, the
    /// command's own change, then the rest, notices and events as they
    /// came.
    pub fn order(&self, events: usize) -> Vec<Place> {
        let mut order = Vec::with_capacity(1 + events + self.list.len());
        let (mut e, mut n) = (0, 0);
        let ahead = (self.ahead.0.min(events), self.ahead.1.min(self.list.len()));
        for (phase, (e_end, n_end)) in [ahead, (events, self.list.len())].into_iter().enumerate() {
            while e < e_end || n < n_end {
                // A notice noted when `k` events had come goes before the
                // event numbered `k`.
                if n < n_end && (e >= e_end || self.list[n].0 <= e) {
                    order.push(Place::Notice(n));
                    n += 1;
                } else {
                    order.push(Place::Event(e));
                    e += 1;
                }
            }
            if phase == 0 {
                order.push(Place::Command);
            }
        }
        order
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What time passing caused comes before the command's own change,
    /// and notices sit among the events where they came.
    #[test]
    fn the_order_is_time_passing_then_the_command_then_the_rest_as_it_came() {
        let withdrawn = |i| Notice::Withdrawn(ReservationId(i));
        let notices = Notices {
            list: vec![(0, withdrawn(1)), (1, withdrawn(2)), (2, withdrawn(3))],
            ahead: (1, 1),
        };
        use Place::{Command, Event, Notice as N};
        assert_eq!(
            notices.order(3),
            [N(0), Event(0), Command, N(1), Event(1), N(2), Event(2)]
        );
        // Nothing ahead: the command first; notices after all events last.
        let late = Notices {
            list: vec![(2, withdrawn(1))],
            ahead: (0, 0),
        };
        assert_eq!(late.order(2), [Command, Event(0), Event(1), N(0)]);
        assert_eq!(Notices::default().order(0), [Command]);
    }
}
