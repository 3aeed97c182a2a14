//! What each command changed, as the event streams tell it: under the
//! engine's lock a command only notes what it changed (domain values); the
//! wire form is built on the journal's writer thread, once the command is
//! in the log. A record read back from the log (a restart, a standby) is
//! told the same way, so a watcher resumes across them. The ring that
//! keeps them for resuming is `event_ring`.

use super::pb;
use crate::engine::{
    Answered, Apply, Cancel, Command, Complete, Configure, Confirm, Decision, Engine, EngineError,
    Event, Notice, Notices, Once, Place, Release, RemoveAgent, ReplacePolicy, ReservationId, Route,
    SetAgentState, Settle, Tick, Unwatch, UpsertAgent, Watch,
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
    /// A reservation's TTL passed.
    Expired {
        /// The reservation.
        reservation: ReservationId,
    },
    /// careroute withdrew a reservation.
    Withdrawn {
        /// The reservation.
        reservation: ReservationId,
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
    /// An agent's state was set, by the CTI or by careroute.
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

impl From<Notice> for Change {
    fn from(notice: Notice) -> Change {
        match notice {
            Notice::Expired(reservation) => Change::Expired { reservation },
            Notice::Withdrawn(reservation) => Change::Withdrawn { reservation },
            Notice::State { agent_id, state } => Change::State {
                agent_id: agent_id.to_string(),
                state,
            },
        }
    }
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
    /// A retry answered with the first decision decided nothing: no event,
    /// as for a settling call's retry.
    fn describe(contact_id: String, out: &Result<Decision, EngineError>) -> Option<Change> {
        let decision = out.as_ref().ok().filter(|d| !d.replayed())?;
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

/// Applies a typed command: the engine's answer, and what it changed (the
/// ids it needs are noted before, so the command is never copied for it).
pub fn apply<C: Describe>(
    engine: &mut Engine,
    command: C,
    at: Time,
) -> (Result<C::Output, EngineError>, Option<Change>) {
    let note = command.note();
    let out = engine.apply(command, at);
    let change = C::describe(note, &out);
    (out, change)
}

/// Applies a typed command and says what it changed, or why it was
/// refused.
fn told<C: Describe>(
    engine: &mut Engine,
    command: C,
    at: Time,
) -> Result<Option<Change>, EngineError> {
    let (out, change) = apply(engine, command, at);
    out.map(|_| change)
}

/// Applies a command as the log holds it, through its typed form, and says
/// what it changed, as it was told when the command was first applied (its
/// assignment events are left in the engine, as then), or why it was
/// refused (a refusal replays as a refusal).
pub fn apply_logged(
    engine: &mut Engine,
    at: Time,
    command: Command,
) -> Result<Option<Change>, EngineError> {
    match command {
        Command::Route(contact) => told(engine, Route(&contact), at),
        Command::UpsertAgent(c) => told(engine, c, at),
        Command::RemoveAgent(c) => told(engine, c, at),
        Command::SetAgentState(c) => told(engine, c, at),
        Command::Confirm(c) => told(engine, c, at),
        Command::Release(c) => told(engine, c, at),
        Command::Complete(c) => told(engine, c, at),
        Command::Cancel(c) => told(engine, c, at),
        Command::ReplacePolicy(c) => told(engine, c, at),
        Command::Configure(c) => told(engine, c, at),
        Command::Watch(c) => told(engine, c, at),
        Command::Unwatch(c) => told(engine, c, at),
        Command::Tick => told(engine, Tick, at),
        // Its effects are told as assignment events.
        restarted @ Command::Restarted(_) => engine.apply(restarted, at).map(|()| None),
        Command::Once {
            request_id,
            command,
        } => match *command {
            Command::Confirm(c) => told(engine, Once::new(request_id, c), at),
            Command::Release(c) => told(engine, Once::new(request_id, c), at),
            Command::Complete(c) => told(engine, Once::new(request_id, c), at),
            Command::Cancel(c) => told(engine, Once::new(request_id, c), at),
            // Only settling commands are sent with a request id.
            other => apply_logged(engine, at, other),
        },
    }
}

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
    /// What careroute changed by itself meanwhile (reservations that
    /// lapsed or were withdrawn, agent states it set), in order.
    pub noticed: Vec<Change>,
    /// The assignment events it set off.
    pub assignments: Vec<(Event, pb::AssignmentEvent)>,
    /// The order all of them happened in.
    pub order: Vec<Place>,
}

impl Published {
    /// A command's events, none if it changed nothing a watcher is told;
    /// `assigned` are the assignment events it set off and `notices` what
    /// else careroute changed meanwhile, each in order.
    pub fn new(
        seq: u64,
        at: Time,
        change: Option<Change>,
        assigned: Vec<Event>,
        notices: Notices,
    ) -> Option<Published> {
        if change.is_none() && assigned.is_empty() && notices.is_empty() {
            return None;
        }
        let order = notices
            .order(assigned.len())
            .into_iter()
            .filter(|p| *p != Place::Command || change.is_some())
            .collect();
        let noticed = notices
            .list
            .into_iter()
            .map(|(_, n)| Change::from(n))
            .collect();
        let assignments = assigned
            .into_iter()
            .map(|e| {
                let wire = pb::AssignmentEvent::from(&e);
                (e, wire)
            })
            .collect();
        Some(Published {
            seq,
            at,
            change,
            noticed,
            assignments,
            order,
        })
    }

    /// Applies record `seq` as the log holds it (read back by a restart or
    /// a standby, or an opening record being logged) and tells its events
    /// as they were told when it was first applied, at the time the engine
    /// applied it; and whether it was refused (a refusal may still set
    /// off what fell due).
    pub fn replayed(
        engine: &mut Engine,
        seq: u64,
        at: Time,
        command: Command,
    ) -> (Option<Published>, Result<(), EngineError>) {
        let (change, refused) = match apply_logged(engine, at, command) {
            Ok(change) => (change, Ok(())),
            Err(e) => (None, Err(e)),
        };
        let at = engine.now().unwrap_or(at);
        (
            Published::new(seq, at, change, engine.take_events(), engine.take_notices()),
            refused,
        )
    }

    /// How many events it tells.
    pub fn told(&self) -> usize {
        self.order.len()
    }

    /// The command's events in wire form, in order.
    pub fn routing_events(&self) -> Vec<pb::RoutingEvent> {
        let at = Some(prost_types::Timestamp {
            seconds: self.at.timestamp(),
            nanos: self.at.timestamp_subsec_nanos() as i32,
        });
        let last = self.told().saturating_sub(1);
        self.order
            .iter()
            .filter_map(|place| match *place {
                Place::Command => self.change.as_ref().map(pb::routing_event::Event::from),
                Place::Notice(n) => self.noticed.get(n).map(pb::routing_event::Event::from),
                Place::Event(e) => self
                    .assignments
                    .get(e)
                    .map(|(_, wire)| pb::routing_event::Event::Assignment(wire.clone())),
            })
            .enumerate()
            .map(|(index, event)| pb::RoutingEvent {
                sequence: self.seq,
                index: index as u32,
                at,
                event: Some(event),
                last_of_sequence: index == last,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;
    use crate::engine::tests::fingerprint;
    use crate::engine::{AgentSpec, EngineConfig, Outcome, WatchFilter};
    use crate::model::{Channel, Contact, Identity};
    use crate::policy::Policy;

    /// A log being written as the service writes it: each command applied
    /// live, its events told as `submit` tells them.
    #[derive(Default)]
    struct Live {
        log: Vec<(Time, Command)>,
        told: Vec<pb::RoutingEvent>,
        /// Whether each command was refused.
        refused: Vec<bool>,
    }

    impl Live {
        fn apply<C>(
            &mut self,
            e: &mut Engine,
            command: C,
            at: Time,
        ) -> Result<C::Output, EngineError>
        where
            C: Describe + Clone + Into<Command>,
        {
            self.log.push((at, command.clone().into()));
            let (out, change) = apply(e, command, at);
            let seq = self.log.len() as u64;
            if let Some(p) = Published::new(seq, at, change, e.take_events(), e.take_notices()) {
                self.told.extend(p.routing_events());
            }
            self.refused.push(out.is_err());
            out
        }
    }

    /// The example policy with a waiting line on billing.
    fn engine() -> Engine {
        let policy = crate::engine::queueing_tests::waiting_policy();
        Engine::new(Arc::new(policy), EngineConfig::default())
    }

    fn agent(id: &str) -> UpsertAgent {
        UpsertAgent(AgentSpec {
            id: id.into(),
            team: "Billing".into(),
            transfer_address: format!("sip:{id}@pbx"),
            skills: vec![("billing".into(), 3)],
            languages: vec!["en".into()],
            channels: vec![(Channel::Voice, 1)],
        })
    }

    fn billing(id: &str) -> Contact {
        let mut c = Contact::new(id, "billing");
        c.identity = Identity::Verified;
        c
    }

    fn reservation(d: &Decision) -> ReservationId {
        match &d.outcome {
            Outcome::Agent(a) => a.reservation,
            other => panic!("expected an agent, got {other:?}"),
        }
    }

    #[test]
    fn a_log_read_back_tells_every_event_as_it_was_told_live() {
        // Monday 10:00 in New York: billing is open.
        let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        let (mut e, mut live) = (engine(), Live::default());
        live.apply(&mut e, Watch(WatchFilter::default()), at(0))
            .unwrap();
        for id in ["b1", "b2"] {
            live.apply(&mut e, agent(id), at(1)).unwrap();
            let available = SetAgentState {
                agent_id: id.into(),
                state: AgentState::Available,
            };
            live.apply(&mut e, available, at(1)).unwrap();
        }
        let mut c1 = billing("c1");
        c1.request_id = Some("r1".into());
        let r1 = reservation(&live.apply(&mut e, Route(&c1), at(2)).unwrap());
        // A RouteContact retry, answered with the first decision, tells
        // nothing either.
        let again = live.apply(&mut e, Route(&c1), at(2)).unwrap();
        assert_eq!(reservation(&again), r1);
        let retry = live.log.len() as u64;
        assert!(live.told.iter().all(|t| t.sequence != retry));
        // Routed again without it, c1's first offer is withdrawn before the
        // new decision is told.
        let mut hop = c1.clone();
        hop.request_id = None;
        let r1 = reservation(&live.apply(&mut e, Route(&hop), at(2)).unwrap());
        let seq = live.log.len() as u64;
        let kinds: Vec<_> = live
            .told
            .iter()
            .filter(|t| t.sequence == seq)
            .map(|t| match &t.event {
                Some(pb::routing_event::Event::Reservation(r)) => {
                    format!("{:?}", r.change)
                }
                Some(pb::routing_event::Event::Decision(_)) => "decision".to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["Some(Withdrawn(true))", "decision"]);
        live.apply(&mut e, Once::new("q1", Confirm(r1)), at(3))
            .unwrap();
        // A retry answered from the first tells nothing.
        live.apply(&mut e, Once::new("q1", Confirm(r1)), at(4))
            .unwrap();
        let retry = live.log.len() as u64;
        assert!(live.told.iter().all(|t| t.sequence != retry));
        let c2 = billing("c2");
        let r2 = reservation(&live.apply(&mut e, Route(&c2), at(5)).unwrap());
        let busy = Release(r2, crate::model::ReleaseReason::Rejected);
        live.apply(&mut e, Once::new("q2", busy), at(6)).unwrap();
        // Refused: told nothing, logged all the same.
        assert!(live.apply(&mut e, Confirm(r2), at(7)).is_err());
        // b2 is offered c3; with both agents busy c4 and c5 wait, and c4
        // hangs up.
        let c3 = billing("c3");
        reservation(&live.apply(&mut e, Route(&c3), at(8)).unwrap());
        for id in ["c4", "c5"] {
            let d = live.apply(&mut e, Route(&billing(id)), at(8)).unwrap();
            assert!(matches!(d.outcome, Outcome::Queued(_)), "{d:?}");
        }
        live.apply(&mut e, Once::new("q3", Cancel("c4".into())), at(9))
            .unwrap();
        let done = Complete {
            agent_id: "b1".into(),
            contact_id: "c1".into(),
        };
        live.apply(&mut e, Once::new("q4", done), at(10)).unwrap();
        // Time passes: wrap-up ends, c5 is offered, and what falls due
        // later.
        live.apply(&mut e, Tick, at(600)).unwrap();
        // c5 hangs up with its offer out: the cancel and the withdrawal
        // share a sequence.
        live.apply(&mut e, Cancel("c5".into()), at(601)).unwrap();
        live.apply(&mut e, Tick, at(900)).unwrap();
        let policy = ReplacePolicy(Arc::new(Policy::embedded().unwrap()));
        live.apply(&mut e, policy, at(901)).unwrap();
        // The reload is told before what it set off (nothing fell due).
        let reload = live.log.len() as u64;
        let first = live.told.iter().find(|t| t.sequence == reload);
        assert!(
            matches!(
                first.and_then(|t| t.event.as_ref()),
                Some(pb::routing_event::Event::PolicyVersion(_))
            ),
            "{first:?}"
        );
        live.apply(&mut e, RemoveAgent("b2".into()), at(902))
            .unwrap();
        let restart = Command::Restarted(crate::engine::Restarted { epoch: 1 });
        live.log.push((at(903), restart.clone()));
        let restarted = e.apply(restart, at(903));
        assert!(restarted.is_ok() && e.take_events().is_empty());

        // Each sequence's last event, and only it, says it is the last: a
        // watcher knows when a sequence is fully received.
        let mut by_sequence: std::collections::BTreeMap<u64, Vec<(u32, bool)>> = Default::default();
        for t in &live.told {
            by_sequence
                .entry(t.sequence)
                .or_default()
                .push((t.index, t.last_of_sequence));
        }
        assert!(by_sequence.values().any(|events| events.len() > 1));
        for events in by_sequence.values() {
            let n = events.len() as u32;
            let expected: Vec<(u32, bool)> = (0..n).map(|i| (i, i + 1 == n)).collect();
            assert_eq!(events, &expected);
        }
        // Every kind of event was told.
        use pb::routing_event::Event as E;
        let kinds: std::collections::HashSet<_> = live
            .told
            .iter()
            .map(|t| std::mem::discriminant(t.event.as_ref().unwrap()))
            .collect();
        assert_eq!(kinds.len(), 6, "{:#?}", live.told);
        assert!(
            live.told
                .iter()
                .any(|t| matches!(t.event, Some(E::Assignment(_))))
        );
        // What careroute changed by itself is told too: c3's offer lapsed,
        // c5's was withdrawn when it hung up, and b1 went to wrap-up and
        // back to available.
        use pb::reservation_event::Change as R;
        let ended: Vec<R> = live
            .told
            .iter()
            .filter_map(|t| match &t.event {
                Some(E::Reservation(r)) => r.change.clone(),
                _ => None,
            })
            .collect();
        assert!(ended.contains(&R::Expired(true)), "{ended:?}");
        assert!(ended.contains(&R::Withdrawn(true)), "{ended:?}");
        let b1: Vec<i32> = live
            .told
            .iter()
            .filter_map(|t| match &t.event {
                Some(E::Agent(pb::AgentEvent {
                    agent_id,
                    change: Some(pb::agent_event::Change::State(s)),
                })) if agent_id == "b1" => Some(*s),
                _ => None,
            })
            .collect();
        let (wrap_up, available) = (
            pb::AgentState::WrapUp as i32,
            pb::AgentState::Available as i32,
        );
        assert!(b1.windows(2).any(|w| w == [wrap_up, available]), "{b1:?}");

        let mut replayed = engine();
        let mut again = Vec::new();
        for (seq, (at, command)) in (1..).zip(live.log.clone()) {
            let (told, _) = Published::replayed(&mut replayed, seq, at, command);
            again.extend(told.iter().flat_map(Published::routing_events));
        }
        assert_eq!(again, live.told);
    }

    /// One step of a random log: indexes pick among a few agents,
    /// contacts, reservations handed out and request ids (so retries and
    /// reused ids happen).
    #[derive(Debug, Clone)]
    enum Op {
        Route(u8),
        Confirm(u8, Option<u8>),
        Release(u8, u8, Option<u8>),
        Complete(u8, u8, Option<u8>),
        Cancel(u8, Option<u8>),
        State(u8, u8),
        Tick(u16),
        Upsert(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let id = proptest::option::of(0u8..3);
        prop_oneof![
            4 => (0u8..8).prop_map(Op::Route),
            3 => (any::<u8>(), id.clone()).prop_map(|(r, q)| Op::Confirm(r, q)),
            2 => (any::<u8>(), 0u8..ReleaseReason::ALL.len() as u8, id.clone()).prop_map(|(r, w, q)| Op::Release(r, w, q)),
            2 => (0u8..4, 0u8..8, id.clone()).prop_map(|(a, c, q)| Op::Complete(a, c, q)),
            2 => (0u8..8, id).prop_map(|(c, q)| Op::Cancel(c, q)),
            2 => (0u8..4, 0u8..AgentState::ALL.len() as u8).prop_map(|(a, s)| Op::State(a, s)),
            2 => (1u16..400).prop_map(Op::Tick),
            1 => (0u8..4).prop_map(Op::Upsert),
            1 => (0u8..4).prop_map(Op::Remove),
        ]
    }

    /// The `r`th reservation handed out, counting round.
    fn nth(handed: &[ReservationId], r: u8) -> Option<ReservationId> {
        (!handed.is_empty()).then(|| handed[usize::from(r) % handed.len()])
    }

    /// Applies `command` live, sent once with request id `q` if one is
    /// given.
    fn settle<C>(live: &mut Live, e: &mut Engine, q: Option<u8>, command: C, at: Time)
    where
        C: Describe + Clone + Into<Command>,
        Once<C>: Describe + Clone + Into<Command>,
    {
        let _ = match q {
            Some(q) => live
                .apply(e, Once::new(format!("q{q}"), command), at)
                .map(drop),
            None => live.apply(e, command, at).map(drop),
        };
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the log holds (refusals, retries, request ids reused
        /// for another command, timers, agents removed under their
        /// offers), reading it back tells every event as it was told live
        /// and leaves the same state.
        #[test]
        fn any_log_read_back_tells_what_was_told_live(ops in proptest::collection::vec(op(), 1..80)) {
            let t0 = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
            let (mut e, mut live) = (engine(), Live::default());
            let mut now = t0;
            live.apply(&mut e, Watch(WatchFilter::default()), now).unwrap();
            // Four agents at work: contacts are offered from the start.
            for a in 0..4 {
                let id = format!("b{a}");
                live.apply(&mut e, agent(&id), now).unwrap();
                let available = SetAgentState {
                    agent_id: id,
                    state: AgentState::Available,
                };
                live.apply(&mut e, available, now).unwrap();
            }
            let mut reservations: Vec<ReservationId> = Vec::new();
            for op in ops {
                now += chrono::Duration::milliseconds(250);
                match op {
                    Op::Route(c) => {
                        if let Ok(d) = live.apply(&mut e, Route(&billing(&format!("c{c}"))), now)
                            && let Outcome::Agent(a) = d.outcome
                        {
                            reservations.push(a.reservation);
                        }
                    }
                    Op::Confirm(r, q) => {
                        if let Some(r) = nth(&reservations, r) {
                            settle(&mut live, &mut e, q, Confirm(r), now);
                        }
                    }
                    Op::Release(r, why, q) => {
                        if let Some(r) = nth(&reservations, r) {
                            let release = Release(r, ReleaseReason::ALL[usize::from(why)]);
                            settle(&mut live, &mut e, q, release, now);
                        }
                    }
                    Op::Complete(a, c, q) => {
                        let done = Complete {
                            agent_id: format!("b{a}"),
                            contact_id: format!("c{c}"),
                        };
                        settle(&mut live, &mut e, q, done, now);
                    }
                    Op::Cancel(c, q) => settle(&mut live, &mut e, q, Cancel(format!("c{c}")), now),
                    Op::State(a, s) => {
                        let state = SetAgentState {
                            agent_id: format!("b{a}"),
                            state: AgentState::ALL[usize::from(s)],
                        };
                        let _ = live.apply(&mut e, state, now);
                    }
                    Op::Tick(s) => {
                        now += chrono::Duration::seconds(i64::from(s));
                        live.apply(&mut e, Tick, now).unwrap();
                    }
                    Op::Upsert(a) => {
                        let _ = live.apply(&mut e, agent(&format!("b{a}")), now);
                    }
                    Op::Remove(a) => {
                        let _ = live.apply(&mut e, RemoveAgent(format!("b{a}")), now);
                    }
                }
            }
            let mut replayed = engine();
            let (mut again, mut refused) = (Vec::new(), Vec::new());
            for (seq, (at, command)) in (1..).zip(live.log.clone()) {
                let (told, out) = Published::replayed(&mut replayed, seq, at, command);
                again.extend(told.iter().flat_map(Published::routing_events));
                refused.push(out.is_err());
            }
            prop_assert_eq!(refused, live.refused, "a refusal replayed otherwise");
            prop_assert_eq!(again, live.told);
            // And the same state, idempotency entries included.
            prop_assert_eq!(fingerprint(&replayed), fingerprint(&e), "replay diverged");
        }
    }
}
