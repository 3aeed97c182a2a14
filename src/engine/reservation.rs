//! Reservations: an agent held for one contact until the CTI confirms or
//! releases it or its TTL passes; the ledger of their fates (so a late
//! confirm is told why); confirm, release and complete.

use std::{cmp::Reverse, collections::VecDeque};

use chrono::Duration;

use super::roster::{AgentIdx, Pick};
use super::{
    AgentOffer, Engine, EngineError, Hop, HopKind, IdKind, Notice, ReservationId, Settled, Timer,
};
use crate::model::{AgentState, Channel, ChannelSet, ReleaseReason, Time};
use crate::policy::{QueueIdx, Text};

/// What a reservation is for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot<'a> {
    pub(super) queue: QueueIdx,
    pub(super) contact_id: &'a str,
    pub(super) channel: Channel,
    pub(super) waiter: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Reservation {
    pub(super) id: ReservationId,
    pub(super) agent: AgentIdx,
    pub(super) contact_id: String,
    pub(super) queue: Option<QueueIdx>,
    pub(super) queue_id: Text,
    pub(super) channel: Channel,
    /// Also held by its expiry timer; kept here for views and the TTL
    /// invariant check.
    pub(super) expires_at: Time,
    /// The waiting contact this offer is for, if it came from a line.
    pub(super) waiter: Option<u64>,
    /// No free agent spoke the contact's language.
    pub(super) interpreter_needed: bool,
    /// Nobody watched the agent at some point while the offer was out: if
    /// it lapses, that is not the agent's miss.
    pub(super) unseen: bool,
    /// Since when the agent was free on the channel before this offer, and
    /// when the offer took it (microseconds): withdrawn, the offer gives
    /// the agent its place in the longest-idle order back, unless other
    /// work came to the channel since.
    pub(super) idle_since: i64,
    pub(super) offered_at: i64,
    /// The agent's channels other work blocked when the offer was made.
    pub(super) blocked_at_offer: ChannelSet,
}

/// What became of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Fate {
    Live,
    Confirmed,
    Released(ReleaseReason),
    Expired,
    /// Void by careroute's doing, not the agent's or a client's: the
    /// contact left its line or was routed again, or a reload removed its
    /// queue. A late confirm is told it was released.
    Withdrawn,
}

impl Fate {
    /// The hop an offer that lapsed or was released leaves in its
    /// contact's path.
    pub(super) fn hop_kind(self) -> HopKind {
        if self == Fate::Expired {
            HopKind::OfferExpired
        } else {
            HopKind::OfferReleased
        }
    }
}

/// The fate of the most recent reservations, one byte each, indexed by
/// their sequence number: answers "expired" or "already confirmed" for a
/// late confirm without a hash lookup, in bounded memory.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct Ledger {
    /// Sequence number of `fates[0]`.
    pub(super) first: u64,
    pub(super) fates: VecDeque<Fate>,
    /// Each epoch since the first (0) with the first sequence number made
    /// in it, oldest first; those wholly before `first` are dropped.
    pub(super) epochs: VecDeque<(u32, u64)>,
}

/// Reservations whose fate is remembered (1 MiB).
pub(super) const LEDGER_LEN: usize = 1 << 20;

impl Ledger {
    pub(super) fn push(&mut self) -> u64 {
        let seq = self.next();
        self.fates.push_back(Fate::Live);
        if self.fates.len() > LEDGER_LEN {
            self.fates.pop_front();
            self.first += 1;
            while self
                .epochs
                .get(1)
                .is_some_and(|&(_, from)| from <= self.first)
            {
                self.epochs.pop_front();
            }
        }
        seq
    }

    /// The sequence number the next reservation gets.
    fn next(&self) -> u64 {
        self.first + self.fates.len() as u64
    }

    /// `epoch` begins: reservations from here on are made in it.
    pub(super) fn begin(&mut self, epoch: u32) {
        let next = self.next();
        if self.epochs.back().is_some_and(|&(_, from)| from == next) {
            self.epochs.pop_back();
        }
        self.epochs.push_back((epoch, next));
    }

    /// The fate of the reservation `seq` made in `epoch`, if remembered:
    /// none for a sequence number that another epoch made (a start gave it
    /// again after the log lost the tail that had made it first).
    pub(super) fn fate(&self, epoch: u32, seq: u64) -> Option<Fate> {
        let made_in = self
            .epochs
            .iter()
            .rev()
            .find(|&&(_, from)| from <= seq)
            .map_or(0, |&(e, _)| e);
        if made_in != epoch {
            return None;
        }
        self.fates.get(self.index(seq)?).copied()
    }

    pub(super) fn slot(&mut self, seq: u64) -> Option<&mut Fate> {
        let i = self.index(seq)?;
        self.fates.get_mut(i)
    }

    /// Where `seq`'s fate sits in `fates`, if not forgotten.
    fn index(&self, seq: u64) -> Option<usize> {
        usize::try_from(seq.checked_sub(self.first)?).ok()
    }
}

impl Engine {
    /// Ends a live reservation and frees the agent's slot; a failed offer of
    /// a waiting contact puts it back in line, and the freed agent takes
    /// the best waiting contact it can.
    pub(super) fn settle(
        &mut self,
        id: ReservationId,
        fate: Fate,
        now: Time,
    ) -> Option<Reservation> {
        let r = self.free_slot(id, fate, now)?;
        // Only the agent's own misses count: an offer from the line it
        // could have seen that lapsed, a rejection, no answer. The IVR's
        // and the network's never do; nor does a RouteContact reservation
        // that lapses (the IVR's silence: it may never have transferred;
        // an unanswered transfer is released with NO_ANSWER).
        let agents_miss = match fate {
            Fate::Expired => r.waiter.is_some() && !r.unseen,
            Fate::Released(reason) => reason.agents_miss(),
            _ => false,
        };
        if agents_miss {
            self.missed_offer(r.agent);
        }
        match (r.waiter, fate) {
            (Some(seq), Fate::Confirmed) => self.answered(seq, now),
            (Some(seq), Fate::Released(ReleaseReason::CallerHungUp)) => self.hung_up(seq, &r, now),
            (Some(seq), Fate::Expired | Fate::Released(_)) => self.offer_failed(seq, &r, fate, now),
            (None, Fate::Expired | Fate::Released(_)) => self.transfer_ended(&r, fate, now),
            _ => {}
        }
        if fate != Fate::Confirmed {
            self.dispatch(r.agent, now);
        }
        Some(r)
    }

    /// A RouteContact reservation lapsed or was released: the contact's
    /// path says so after the decision that made it, so its status stops
    /// naming an agent it will not reach (unless its path was forgotten).
    fn transfer_ended(&mut self, r: &Reservation, fate: Fate, now: Time) {
        let Some(hops) = self.path(&r.contact_id) else {
            return;
        };
        // A full path keeps its newest hop, the decision, rather than
        // have it replaced by its own end.
        if hops.len() >= self.config.max_hops {
            return;
        }
        let Some(decided) = hops.iter().rev().find(|h| h.reservation == Some(r.id)) else {
            return;
        };
        let hop = Hop {
            decision: decided.decision,
            at: now,
            kind: fate.hop_kind(),
            rule_id: None,
            queue_id: decided.queue_id.clone(),
            agent_id: decided.agent_id.clone(),
            from_queue_id: None,
            reservation: Some(r.id),
        };
        self.push_hop(&r.contact_id, hop, now);
    }

    /// Removes a live reservation and frees the agent's slot.
    pub(super) fn free_slot(
        &mut self,
        id: ReservationId,
        fate: Fate,
        now: Time,
    ) -> Option<Reservation> {
        let r = self.reservations.remove(&id)?;
        // A contact's offer made by RouteContact is the one indexed: a new
        // hop withdraws it before reserving again.
        if r.waiter.is_none() {
            let indexed = self.offers.remove(r.contact_id.as_str());
            debug_assert_eq!(indexed, Some(id), "the offers index lost {id}");
        }
        if let Some(q) = r.queue {
            let n = self.roster.reservations_mut(q);
            *n = n.saturating_sub(1);
        }
        let c = r.channel.index();
        let micros = now.timestamp_micros();
        let blocks = *self.roster.blocks();
        self.roster.update(r.agent, |agent| {
            let blocked_before = agent.blocked_channels(&blocks);
            agent.reserved[c] = agent.reserved[c].saturating_sub(1);
            match fate {
                Fate::Confirmed => {}
                // Withdrawn, with no other work on the channel and nothing
                // since: as if never offered, it stands where it stood.
                Fate::Withdrawn
                    if agent.reserved[c] == 0
                        && agent.active[c] == 0
                        && agent.ready_since[c] == r.offered_at =>
                {
                    agent.ready_since[c] = r.idle_since;
                    // A channel other work blocked when the offer was made,
                    // and the offer alone blocked since that work ended, is
                    // free from now, as after any release.
                    let blocked_now = agent.blocked_channels(&blocks);
                    for d in Channel::ALL {
                        if r.blocked_at_offer.contains(d)
                            && blocked_before.contains(d)
                            && !blocked_now.contains(d)
                        {
                            agent.ready_since[d.index()] = micros;
                        }
                    }
                }
                // Released or lapsed: free on this channel from now.
                _ => agent.freed(r.channel, micros, blocked_before, &blocks),
            }
        });
        if let Some((_, seq)) = self.ids.decipher(IdKind::Reservation, id.0)
            && let Some(slot) = self.ledger.slot(seq)
        {
            *slot = fate;
        }
        match fate {
            Fate::Expired => self.notice(Notice::Expired(id)),
            Fate::Withdrawn => self.notice(Notice::Withdrawn(id)),
            Fate::Live | Fate::Confirmed | Fate::Released(_) => {}
        }
        Some(r)
    }

    pub(super) fn reserve(&mut self, pick: Pick, slot: Slot<'_>, now: Time) -> AgentOffer {
        let Slot {
            queue,
            contact_id,
            channel,
            waiter,
        } = slot;
        let seq = self.ledger.push();
        let id = ReservationId(self.id(IdKind::Reservation, seq));
        let expires_at = now + self.policy.reservation_ttl;
        let c = channel.index();
        let micros = now.timestamp_micros();
        let blocks = *self.roster.blocks();
        let (idle_since, blocked_at_offer) = self.roster.update(pick.agent, |agent| {
            let blocked = agent.blocked_channels(&blocks);
            agent.reserved[c] += 1;
            // Work just arrived on this channel: the agent goes to the back
            // of its idle order.
            (
                std::mem::replace(&mut agent.ready_since[c], micros),
                blocked,
            )
        });
        *self.roster.reservations_mut(queue) += 1;
        let queue_id = self.policy.queues[queue].id.clone();
        // A step's wider pool is internal: clients see the queue it widens.
        let shown_queue = self.policy.queues[self.policy.root(queue)].id.clone();
        self.reservations.insert(
            id,
            Reservation {
                id,
                agent: pick.agent,
                contact_id: contact_id.to_owned(),
                queue: Some(queue),
                queue_id: queue_id.clone(),
                channel,
                expires_at,
                waiter,
                interpreter_needed: pick.interpreter_needed,
                unseen: false,
                idle_since,
                offered_at: micros,
                blocked_at_offer,
            },
        );
        if waiter.is_none() {
            self.offers.insert(contact_id.to_owned(), id);
        }
        self.timers.push(Reverse((expires_at, Timer::Expire(id))));
        self.counters.reserved += 1;
        let agent = self.roster.agent(pick.agent);
        AgentOffer {
            agent_id: agent.id.clone(),
            transfer_address: agent.transfer_address.clone(),
            queue_id: shown_queue,
            reservation: id,
            expires_at,
            interpreter_needed: pick.interpreter_needed,
        }
    }

    /// Withdraws the live offer RouteContact made `contact_id` itself, if
    /// any: the contact routed again no longer needs it. Returns the agent
    /// it held, free again where it stood. WatchAssignments is told
    /// nothing: it never carried the offer, and the new answer may give the
    /// same agent. (The event stream is told, as of every withdrawal.)
    pub(super) fn withdraw_offer(&mut self, contact_id: &str, now: Time) -> Option<AgentIdx> {
        let id = *self.offers.get(contact_id)?;
        let r = self.free_slot(id, Fate::Withdrawn, now)?;
        self.counters.released += 1;
        Some(r.agent)
    }

    pub(super) fn reservation_error(&self, id: ReservationId) -> EngineError {
        let fate = self
            .ids
            .decipher(IdKind::Reservation, id.0)
            .and_then(|(epoch, seq)| self.ledger.fate(epoch, seq));
        let how = match fate {
            Some(Fate::Expired) => return EngineError::ReservationExpired(id.to_string()),
            Some(Fate::Confirmed) => Settled::Confirmed,
            Some(Fate::Released(_) | Fate::Withdrawn) => Settled::Released,
            Some(Fate::Live) | None => return EngineError::UnknownReservation(id.to_string()),
        };
        EngineError::ReservationSettled {
            id: id.to_string(),
            how,
        }
    }

    /// The transfer connected: the reservation becomes an active contact.
    /// Returns the agent and contact ids.
    pub(super) fn confirm(
        &mut self,
        id: ReservationId,
        now: Time,
    ) -> Result<(Text, String), EngineError> {
        self.advance(now);
        let r = self
            .settle(id, Fate::Confirmed, now)
            .ok_or_else(|| self.reservation_error(id))?;
        self.counters.confirmed += 1;
        let c = r.channel.index();
        let contact = r.contact_id.clone();
        self.roster.update(r.agent, |agent| {
            agent.active[c] += 1;
            agent.missed_offers = 0;
            agent
                .contacts
                .push((r.contact_id, r.channel, r.queue_id, now));
        });
        Ok((self.roster.agent(r.agent).id.clone(), contact))
    }

    /// The offer was rejected, not answered or cancelled: the agent is free.
    pub(super) fn release(
        &mut self,
        id: ReservationId,
        reason: ReleaseReason,
        now: Time,
    ) -> Result<(), EngineError> {
        self.advance(now);
        self.settle(id, Fate::Released(reason), now)
            .ok_or_else(|| self.reservation_error(id))?;
        self.counters.released += 1;
        Ok(())
    }

    /// The agent finished an active contact: wrap-up for the queue's wrap-up
    /// time, then available. Returns when wrap-up ends.
    pub(super) fn complete(
        &mut self,
        agent_id: &str,
        contact_id: &str,
        now: Time,
    ) -> Result<Time, EngineError> {
        self.advance(now);
        let a = self
            .roster
            .find(agent_id)
            .ok_or_else(|| EngineError::UnknownAgent(agent_id.to_owned()))?;
        let Some(pos) = self
            .roster
            .agent(a)
            .contacts
            .iter()
            .position(|(c, _, _, _)| c == contact_id)
        else {
            return Err(EngineError::NoActiveContact {
                agent: agent_id.to_owned(),
                contact: contact_id.to_owned(),
            });
        };
        let (queue, confirmed_at) = {
            let (_, _, queue_id, at) = &self.roster.agent(a).contacts[pos];
            (self.policy.queue_idx(queue_id), *at)
        };
        let wrap_up = queue.map_or(Duration::zero(), |q| self.policy.queues[q].wrap_up);
        if let Some(q) = queue {
            self.stats[q].observe_handle_time(now - confirmed_at);
        }
        let until = now + wrap_up;
        let micros = now.timestamp_micros();
        let blocks = *self.roster.blocks();
        let generation = self.roster.update(a, |agent| {
            let blocked_before = agent.blocked_channels(&blocks);
            let (_, channel, _, _) = agent.contacts.swap_remove(pos);
            let c = channel.index();
            agent.active[c] = agent.active[c].saturating_sub(1);
            let working = matches!(agent.state, AgentState::Available | AgentState::Busy);
            if wrap_up > Duration::zero() && working {
                agent.state = AgentState::WrapUp;
                agent.wrap_generation += 1;
                Some(agent.wrap_generation)
            } else {
                // Free on this channel from now (and on any it was
                // blocking): its idle time starts now, not when the contact
                // was offered.
                agent.freed(channel, micros, blocked_before, &blocks);
                None
            }
        });
        match generation {
            Some(g) => {
                self.timers.push(Reverse((until, Timer::WrapUpEnd(a, g))));
                self.noticed_state(a);
                Ok(until)
            }
            None => {
                self.dispatch(a, now);
                Ok(now)
            }
        }
    }
}
