//! What the engine remembers of its decisions: each contact's path (its
//! hops, bounded in number and kept for a window) and the first decision
//! per request id, answered again to retries.

use std::sync::Arc;

use super::{Decision, DecisionId, Engine, Outcome, ReservationId, roster};
use crate::model::{CallbackReason, Contact, Time};
use crate::policy::Text;

/// One hop of a contact through careroute: a decision, or something that
/// happened to it while it waited in line.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hop {
    /// The decision made, or for a hop in line the decision that queued it.
    pub decision: DecisionId,
    /// When.
    pub at: Time,
    /// What happened.
    pub kind: HopKind,
    /// The rule that matched (decisions only).
    pub rule_id: Option<Text>,
    /// The queue that owns the contact after this hop.
    pub queue_id: Option<Text>,
    /// The agent reserved or offered, if any.
    pub agent_id: Option<Text>,
    /// The queue that handed the contact on (a transfer, a move at closing).
    pub from_queue_id: Option<Text>,
    /// The reservation of an offer from the line.
    pub reservation: Option<ReservationId>,
}

/// What a hop records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HopKind {
    /// A decision, with its outcome kind ([`Outcome::kind`]) and, for a
    /// callback, why.
    Decided(
        #[serde(with = "super::snapshot::outcome_kind")] super::snapshot::OutcomeKind,
        Option<CallbackReason>,
    ),
    /// Offered to an agent from the line.
    Assigned,
    /// The offer lapsed: an offer from the line put the contact back in
    /// line; a RouteContact reservation ended, and the contact goes nowhere
    /// until routed again.
    OfferExpired,
    /// The offer was released: back in line, or ended, as for
    /// [`HopKind::OfferExpired`].
    OfferReleased,
    /// Moved to its queue's n-th relaxation step.
    Stepped(u32),
    /// Moved at closing to the on-call queue.
    Moved,
    /// The caller hung up while waiting.
    Cancelled,
    /// Left the line for a callback ticket.
    CalledBack(CallbackReason),
}

impl Engine {
    /// Appends the hop to the contact's path and keeps the reply for retries.
    pub(super) fn record(
        &mut self,
        contact: &Contact,
        decision: &Decision,
        queue_id: Option<Text>,
        reply_key: Option<(Text, Text)>,
        now: Time,
    ) {
        let (agent_id, reservation) = match &decision.outcome {
            Outcome::Agent(offer) => (Some(offer.agent_id.clone()), Some(offer.reservation)),
            _ => (None, None),
        };
        let hop = Hop {
            decision: decision.id,
            at: now,
            kind: HopKind::Decided(
                decision.outcome.kind(),
                match &decision.outcome {
                    Outcome::Callback(callback) => Some(callback.reason),
                    _ => None,
                },
            ),
            rule_id: decision.rule_id.clone(),
            queue_id,
            agent_id,
            from_queue_id: contact
                .transfer_from
                .as_ref()
                .map(|t| roster::text(&t.queue_id)),
            reservation,
        };
        self.push_hop(&contact.contact_id, hop, now);
        if let Some(key) = reply_key {
            self.replies
                .insert(key, (contact.digest(), Arc::new(decision.clone())), now);
        }
    }

    /// Appends a hop to a contact's path; past the cap, it replaces the
    /// newest.
    pub(super) fn push_hop(&mut self, contact_id: &str, hop: Hop, now: Time) {
        let max_hops = self.config.max_hops;
        let hops = match self.paths.get_mut(contact_id) {
            Some(hops) => hops,
            None => self
                .paths
                // Most contacts take one hop: room for exactly one, not
                // the four a first push would reserve.
                .get_or_insert_with(contact_id.to_owned(), now, || Vec::with_capacity(1)),
        };
        if hops.len() >= max_hops {
            hops.pop();
        }
        hops.push(hop);
    }

    /// The hops a contact took, oldest first.
    pub fn path(&self, contact_id: &str) -> Option<&[Hop]> {
        self.paths.get(contact_id).map(Vec::as_slice)
    }
}
