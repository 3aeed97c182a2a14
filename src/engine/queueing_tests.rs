//! Live queueing tests on the healthcare policy with waiting enabled for
//! billing and scheduling, explicit times throughout.

use chrono::{TimeZone, Utc};

use super::*;
use crate::model::{CallbackReason, Channel, Contact, Identity, Reason, ReleaseReason, Urgency};

fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

/// The example policy with lines on billing (20) and scheduling (2).
pub(crate) fn waiting_policy() -> Policy {
    crate::policy::parse("waiting.toml", &waiting_policy_text()).unwrap()
}

/// The text of [`waiting_policy`], for variants of it.
pub(super) fn waiting_policy_text() -> String {
    crate::policy::DEFAULT_POLICY
        .replacen(
            "transfer_address = \"sip:billing@pbx.careroute.example\"",
            "transfer_address = \"sip:billing@pbx.careroute.example\"\nmax_waiting = 20\nmax_wait = \"2h\"\nsteps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]",
            1,
        )
        .replacen("max_waiting = 10", "max_waiting = 2", 1)
}

fn engine() -> Engine {
    watched(Engine::new(
        Arc::new(waiting_policy()),
        EngineConfig::default(),
    ))
}

/// `e` with a watcher of the whole floor connected, as a CTI would be.
pub(super) fn watched(mut e: Engine) -> Engine {
    e.watch(WatchFilter::default(), Time::UNIX_EPOCH).unwrap();
    e
}

fn agent(e: &mut Engine, id: &str, skill: &str, at: Time) {
    e.upsert_agent(spec(id, (skill, 3), (Channel::Voice, 1)), at)
        .unwrap();
    e.set_state(id, AgentState::Available, at).unwrap();
}

/// An English-speaking agent of team T with one skill on one channel.
fn spec(id: &str, (skill, level): (&str, u8), channel: (Channel, u8)) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        team: "T".into(),
        transfer_address: format!("sip:{id}"),
        skills: vec![(skill.into(), level)],
        languages: vec!["en".into()],
        channels: vec![channel],
    }
}

/// [`call`] on `channel`.
fn call_on(id: &str, intent: &str, channel: Channel) -> Contact {
    let mut c = call(id, intent, Urgency::Routine);
    c.channel = channel;
    c
}

fn call(id: &str, intent: &str, urgency: Urgency) -> Contact {
    let mut c = Contact::new(id, intent);
    c.identity = Identity::Verified;
    c.urgency = urgency;
    c
}

fn queued(d: &Decision) -> &QueuedOffer {
    match &d.outcome {
        Outcome::Queued(q) => q,
        other => panic!("expected queued, got {other:?}"),
    }
}

fn assigned(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Assigned(a) => Some((a.contact_id.clone(), a.offer.agent_id.to_string())),
            _ => None,
        })
        .collect()
}

fn offer_of(e: &Engine, contact: &str) -> ReservationId {
    e.waiting
        .find(contact)
        .and_then(|w| w.offer)
        .expect("an offer is out")
}

#[test]
fn waits_then_is_assigned_when_an_agent_frees_up() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    let first = e
        .route(&call("c1", "billing", Urgency::Routine), t)
        .unwrap();
    let Outcome::Agent(a) = &first.outcome else {
        panic!()
    };
    let d = e
        .route(&call("c2", "billing", Urgency::Routine), t)
        .unwrap();
    let q = queued(&d);
    assert_eq!((q.queue_id.as_ref(), q.position), ("billing", 1));
    assert!(d.reasons.contains(&Reason::Queued));
    assert!(e.take_events().is_empty());
    // b1's first offer is rejected: b1 is free and takes the waiting c2.
    e.release(
        a.reservation,
        ReleaseReason::Rejected,
        t + Duration::seconds(5),
    )
    .unwrap();
    assert_eq!(
        assigned(&e.take_events()),
        [("c2".to_string(), "b1".to_string())]
    );
    // Confirmed within 30 s: answered in time.
    e.confirm(offer_of(&e, "c2"), t + Duration::seconds(6))
        .unwrap();
    let billing = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.stats[billing].answered, 1);
    assert_eq!(e.stats[billing].service_level(), Some(1.0));
    assert_eq!(e.waiting_contacts(), 0);
}

/// Routes `id` to a free agent and confirms it: that agent is busy until
/// the contact completes.
fn busy(e: &mut Engine, id: &str, intent: &str, at: Time) {
    let d = e.route(&call(id, intent, Urgency::Routine), at).unwrap();
    let Outcome::Agent(a) = &d.outcome else {
        panic!("{d:?}")
    };
    e.confirm(a.reservation, at).unwrap();
}

/// Completes `contact` on `agent` and lets its wrap-up pass; returns then.
fn finish(e: &mut Engine, agent: &str, contact: &str, at: Time) -> Time {
    let until = e.complete(agent, contact, at).unwrap();
    e.advance(until);
    until
}

#[test]
fn priority_first_then_age_and_priority_rises_with_wait() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    // Routine A at t, routine B at t+10s, urgent C at t+20s.
    e.route(&call("A", "billing", Urgency::Routine), t).unwrap();
    e.route(
        &call("B", "billing", Urgency::Routine),
        t + Duration::seconds(10),
    )
    .unwrap();
    let c = e
        .route(
            &call("C", "billing", Urgency::Urgent),
            t + Duration::seconds(20),
        )
        .unwrap();
    assert_eq!(queued(&c).position, 1, "urgent goes to the head");
    let mut order = Vec::new();
    let mut now = t + Duration::seconds(30);
    let mut current = "c0".to_string();
    for _ in 0..3 {
        now = finish(&mut e, "b1", &current, now);
        let got = assigned(&e.take_events());
        assert_eq!(got.len(), 1, "{got:?}");
        current = got[0].0.clone();
        e.confirm(offer_of(&e, &current), now).unwrap();
        order.push(current.clone());
    }
    assert_eq!(order, ["C", "A", "B"]);
}

/// The IVR routes a waiting contact again while an agent's offer for it is
/// out: the offer is withdrawn and the contact decided again before that
/// agent goes to anyone else, so it is not passed over for a routine
/// contact behind it (the agent went to the one behind before).
#[test]
fn a_contact_routed_again_with_its_offer_out_keeps_its_agent() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    e.route(&call("urgent", "billing", Urgency::Urgent), t)
        .unwrap();
    e.route(&call("routine", "billing", Urgency::Routine), t)
        .unwrap();
    let now = finish(&mut e, "b1", "c0", t + Duration::minutes(1));
    assert_eq!(
        assigned(&e.take_events()),
        [("urgent".to_string(), "b1".to_string())]
    );
    let again = e
        .route(&call("urgent", "billing", Urgency::Urgent), now)
        .unwrap();
    let Outcome::Agent(offer) = &again.outcome else {
        panic!("{again:?}")
    };
    assert_eq!(offer.agent_id.as_ref(), "b1");
    let events = e.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Withdrawn {
                reason: Withdrawal::Rerouted,
                ..
            }
        )),
        "{events:?}"
    );
    assert!(assigned(&events).is_empty(), "{events:?}");
    // The routine contact still waits, first in line now.
    assert_eq!(e.waiting.find("routine").map(|w| w.offer), Some(None));
}

#[test]
fn a_long_wait_overtakes_a_newer_urgent_contact() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    e.route(&call("old", "billing", Urgency::Routine), t)
        .unwrap();
    // Urgent is worth 5 minutes of waiting (one point a minute): 6 minutes
    // later the old routine contact is still ahead.
    let late = e
        .route(
            &call("urgent", "billing", Urgency::Urgent),
            t + Duration::minutes(6),
        )
        .unwrap();
    assert_eq!(queued(&late).position, 2);
    finish(&mut e, "b1", "c0", t + Duration::minutes(7));
    assert_eq!(assigned(&e.take_events())[0].0, "old");
}

#[test]
fn an_offer_not_confirmed_goes_to_the_next_agent_and_repeated_misses_pause_the_agent() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    let busy = e
        .route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    let Outcome::Agent(a) = &busy.outcome else {
        panic!()
    };
    e.route(&call("w", "billing", Urgency::Routine), t).unwrap();
    e.confirm(a.reservation, t).unwrap();
    agent(&mut e, "b2", "billing", t + Duration::seconds(1));
    assert_eq!(
        assigned(&e.take_events()),
        [("w".to_string(), "b2".to_string())]
    );
    // b2 lets the offer time out: w goes back to the head, and b2 is not
    // offered it again before the cool-down (`reoffer_after`, 30 s).
    let ttl = e.policy().reservation_ttl;
    let cool_down = e.policy().reoffer_after;
    let lapsed = t + Duration::seconds(1) + ttl;
    e.advance(lapsed);
    assert!(
        assigned(&e.take_events()).is_empty(),
        "b2 must not get w again"
    );
    assert_eq!(e.waiting.find("w").map(|w| w.offer), Some(None));
    e.advance(lapsed + cool_down - Duration::milliseconds(1));
    assert!(assigned(&e.take_events()).is_empty(), "cool-down not over");
    // Then b2, the only free agent, is offered it again, and told so.
    e.advance(lapsed + cool_down);
    let events = e.take_events();
    let Some(Event::Assigned(again)) = events.first() else {
        panic!("no re-offer: {events:?}")
    };
    assert_eq!((&*again.offer.agent_id, again.reoffer), ("b2", true));
    // b2 rejects it and steps away; b1 (once free) gets it.
    e.release(
        again.offer.reservation,
        ReleaseReason::Rejected,
        lapsed + cool_down,
    )
    .unwrap();
    e.set_state("b2", AgentState::Away, lapsed + cool_down)
        .unwrap();
    e.complete("b1", "c0", t + Duration::seconds(50)).unwrap();
    e.advance(t + Duration::seconds(50) + Duration::seconds(45));
    let events = e.take_events();
    assert_eq!(assigned(&events), [("w".to_string(), "b1".to_string())]);
    let Some(Event::Assigned(first)) = events.first() else {
        panic!()
    };
    assert!(!first.reoffer, "b1 never passed on w");
    e.confirm(first.offer.reservation, t + Duration::seconds(96))
        .unwrap();
    e.set_state("b2", AgentState::Available, t + Duration::seconds(96))
        .unwrap();

    // Three offers from the line that b2 could see lapse in a row: not
    // responding. (b1 is busy with w; the contacts wait for b2.)
    let limit = e.policy().missed_offers_to_pause;
    let mut now = t + Duration::minutes(5);
    e.set_state("b2", AgentState::Away, now).unwrap();
    for i in 0..limit {
        let c = format!("m{i}");
        let d = e
            .route(&call(&c, "billing", Urgency::Routine), now)
            .unwrap();
        assert!(matches!(d.outcome, Outcome::Queued(_)), "{d:?}");
    }
    e.set_state("b2", AgentState::Available, now).unwrap();
    let b2 = e.roster.find("b2").unwrap();
    for i in 0..limit {
        let events = e.take_events();
        let offered = assigned(&events);
        assert_eq!(offered.len(), 1, "offer {i}: {events:?}");
        assert_eq!(offered[0].1, "b2");
        now += ttl;
        e.advance(now);
    }
    assert_eq!(e.roster.agent(b2).state, AgentState::NotResponding);
}

#[test]
fn cancel_removes_the_contact_and_counts_abandonment() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    e.route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    e.route(&call("w", "billing", Urgency::Routine), t).unwrap();
    e.cancel("w", t + Duration::seconds(9)).unwrap();
    assert_eq!(e.waiting_contacts(), 0);
    assert!(matches!(e.cancel("w", t), Err(EngineError::NotWaiting(_))));
    let billing = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.stats[billing].abandonment(), Some(1.0));
}

#[test]
fn full_line_and_long_wait_get_callbacks() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "s1", "scheduling", t);
    e.route(&call("c0", "scheduling", Urgency::Routine), t)
        .unwrap();
    queued(
        &e.route(&call("w1", "scheduling", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(&call("w2", "scheduling", Urgency::Routine), t)
            .unwrap(),
    );
    let d = e
        .route(&call("w3", "scheduling", Urgency::Routine), t)
        .unwrap();
    let Outcome::Callback(cb) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(cb.reason, CallbackReason::QueueFull);
    assert!(d.reasons.contains(&Reason::QueueFull));
    // Billing allows a 2 h wait; with one agent and 5 min handle time the
    // 25th contact would wait over 2 h.
    let mut e = engine();
    agent(&mut e, "b1", "billing", t);
    e.route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    let mut last = None;
    for i in 0..20 {
        last = Some(
            e.route(&call(&format!("w{i}"), "billing", Urgency::Routine), t)
                .unwrap(),
        );
    }
    let Outcome::Queued(q) = &last.unwrap().outcome else {
        panic!()
    };
    assert!(q.estimated_wait <= Duration::hours(2));
}

#[test]
fn estimated_wait_grows_with_position() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    agent(&mut e, "b2", "billing", t);
    e.route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    e.route(&call("c1", "billing", Urgency::Routine), t)
        .unwrap();
    let mut last = Duration::zero();
    for i in 0..10 {
        let d = e
            .route(
                &call(&format!("w{i}"), "billing", Urgency::Routine),
                t + Duration::seconds(i),
            )
            .unwrap();
        let q = queued(&d);
        assert_eq!(q.position, i as u32 + 1);
        assert!(
            q.estimated_wait > last,
            "position {} waits {:?} after {:?}",
            q.position,
            q.estimated_wait,
            last
        );
        last = q.estimated_wait;
    }
    // The view estimates the next arrival.
    e.apply(Tick, t + Duration::seconds(10)).unwrap();
    let view = e.queues();
    let billing = view.iter().find(|q| &*q.id == "billing").unwrap();
    assert_eq!(billing.waiting, 10);
    assert!(billing.estimated_wait > Some(last));
    assert_eq!(billing.longest_wait, Duration::seconds(10));
}

/// ListQueues' estimate is the wait of a contact arriving now: none when an
/// agent is free and nobody waits, and no figure when it would not wait at
/// all.
#[test]
fn a_queues_estimate_is_for_a_contact_arriving_now() {
    let mut e = engine();
    let t = open();
    // The view as of a tick at `at`.
    let estimate = |e: &mut Engine, id: &str, at: Time| {
        e.apply(Tick, at).unwrap();
        e.queues()
            .into_iter()
            .find(|q| &*q.id == id)
            .map(|q| q.estimated_wait)
            .unwrap()
    };
    // Nobody logged in: an arrival gets a callback, not a wait.
    assert_eq!(estimate(&mut e, "billing", t), None);
    agent(&mut e, "b1", "billing", t);
    assert_eq!(estimate(&mut e, "billing", t), Some(Duration::zero()));
    e.route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    let busy = estimate(&mut e, "billing", t).unwrap();
    assert!(busy > Duration::zero(), "{busy:?}");
    // A queue that keeps no line, with its agent busy: a callback.
    let t2 = t + Duration::seconds(1);
    agent(&mut e, "p1", "pharmacy", t2);
    assert_eq!(estimate(&mut e, "pharmacy", t2), Some(Duration::zero()));
    e.route(&call("c1", "refill", Urgency::Routine), t2)
        .unwrap();
    assert_eq!(estimate(&mut e, "pharmacy", t2), None);
    // Closed: the closed action decides, nobody waits.
    assert_eq!(estimate(&mut e, "billing", t + Duration::hours(12)), None);
}

/// A nurse of the on-call queue, on voice.
fn on_call_nurse(id: &str) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        team: "Nurse Line".into(),
        transfer_address: format!("sip:{id}"),
        skills: vec![("clinical_triage".into(), 4), ("on_call".into(), 1)],
        languages: vec!["en".into()],
        channels: vec![(Channel::Voice, 1)],
    }
}

#[test]
fn a_contact_moved_at_a_closing_waits_under_the_on_call_queues_limit() {
    // The on-call queue lets a contact wait 3 minutes, scheduling 30.
    let text = waiting_policy_text()
        .replacen(
            "transfer_address = \"sip:nurse-oncall@pbx.careroute.example\"",
            "transfer_address = \"sip:nurse-oncall@pbx.careroute.example\"\nmax_wait_in_line = \"3m\"",
            1,
        )
        .replacen(
            "transfer_address = \"sip:scheduling@pbx.careroute.example\"",
            "transfer_address = \"sip:scheduling@pbx.careroute.example\"\nmax_wait_in_line = \"30m\"",
            1,
        );
    let mut e = watched(Engine::new(
        Arc::new(crate::policy::parse("moved.toml", &text).unwrap()),
        EngineConfig::default(),
    ));
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 21, 59, 0).unwrap(); // 16:59 New York
    agent(&mut e, "s1", "scheduling", t);
    busy(&mut e, "c0", "scheduling", t);
    // A nurse on call, logged in and busy: the on-call line is staffed.
    e.upsert_agent(on_call_nurse("n1"), t).unwrap();
    e.set_state("n1", AgentState::Busy, t).unwrap();
    queued(
        &e.route(&call("urgent", "scheduling", Urgency::Urgent), t)
            .unwrap(),
    );
    // 17:00: moved to the on-call queue; still waiting at 17:01.
    e.advance(t + Duration::minutes(2));
    let events = e.take_events();
    assert!(
        events
            .iter()
            .any(|ev| matches!(ev, Event::Moved { contact_id, .. } if contact_id == "urgent")),
        "{events:?}"
    );
    assert!(e.waiting.find("urgent").is_some());
    // Three minutes after it arrived, the on-call queue's limit: it leaves
    // with a callback, not at scheduling's 30 minutes.
    e.advance(t + Duration::minutes(3));
    let events = e.take_events();
    assert!(
        events.iter().any(
            |ev| matches!(ev, Event::CallbackInstead { contact_id, callback, .. }
            if contact_id == "urgent" && callback.reason == CallbackReason::WaitTooLong)
        ),
        "{events:?}"
    );
    // One that arrived 5 minutes before the closing is past that limit when
    // moved: its callback comes with the move, owned by the on-call queue.
    let t = t + Duration::days(1) - Duration::minutes(4); // 16:55 the next day
    queued(
        &e.route(&call("late", "scheduling", Urgency::Urgent), t)
            .unwrap(),
    );
    e.take_events();
    e.advance(t + Duration::minutes(5));
    let events = e.take_events();
    let moved = events
        .iter()
        .position(|ev| matches!(ev, Event::Moved { contact_id, .. } if contact_id == "late"));
    let called_back = events.iter().position(|ev| {
        matches!(ev, Event::CallbackInstead { contact_id, callback, .. }
            if contact_id == "late" && callback.reason == CallbackReason::WaitTooLong
                && &*callback.queue_id == "nurse_oncall")
    });
    assert!(moved.is_some() && called_back > moved, "{events:?}");
    assert!(e.waiting.find("late").is_none());
}

#[test]
fn a_closing_queue_hands_its_line_to_the_closed_action() {
    let mut e = engine();
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 21, 59, 0).unwrap(); // 16:59 New York
    agent(&mut e, "s1", "scheduling", t);
    e.upsert_agent(on_call_nurse("n1"), t).unwrap();
    e.upsert_agent(on_call_nurse("n2"), t).unwrap();
    busy(&mut e, "c0", "scheduling", t);
    e.set_state("n2", AgentState::Available, t).unwrap();
    queued(
        &e.route(&call("routine", "scheduling", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(&call("urgent", "scheduling", Urgency::Urgent), t)
            .unwrap(),
    );
    // 17:00: scheduling closes.
    e.advance(t + Duration::minutes(1));
    let events = e.take_events();
    assert!(events.iter().any(
        |ev| matches!(ev, Event::CallbackInstead { contact_id, callback, .. }
        if contact_id == "routine" && callback.reason == CallbackReason::Closed)
    ));
    assert_eq!(
        assigned(&events),
        [("urgent".to_string(), "n2".to_string())]
    );
    // The move is announced, and the offer carries both queues: the
    // on-call queue offering it, and the queue where the call is parked.
    assert!(events.iter().any(|ev| matches!(ev, Event::Moved { contact_id, parked, to_queue_id, .. }
        if contact_id == "urgent" && &*parked.queue_id == "scheduling" && &**to_queue_id == "nurse_oncall")), "{events:?}");
    let Some(Event::Assigned(a)) = events.iter().find(|ev| matches!(ev, Event::Assigned(_))) else {
        panic!()
    };
    assert_eq!(&*a.offer.queue_id, "nurse_oncall");
    assert_eq!(&*a.parked.queue_id, "scheduling");
    assert_eq!(
        &*a.parked.transfer_address,
        "sip:scheduling@pbx.careroute.example"
    );
    // Every hop is in the path: queued, moved, assigned; and the routine
    // contact's callback.
    let kinds: Vec<HopKind> = e.path("urgent").unwrap().iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HopKind::Decided("queued", None),
            HopKind::Moved,
            HopKind::Assigned
        ]
    );
    let moved = &e.path("urgent").unwrap()[1];
    assert_eq!(moved.from_queue_id.as_deref(), Some("scheduling"));
    assert_eq!(moved.queue_id.as_deref(), Some("nurse_oncall"));
    let kinds: Vec<HopKind> = e.path("routine").unwrap().iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HopKind::Decided("queued", None),
            HopKind::CalledBack(CallbackReason::Closed)
        ]
    );
}

#[test]
fn relaxation_moves_a_waiting_contact_to_wider_pools_over_time() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    // A trainee (billing 1) and a frontline agent are free but do not
    // qualify for billing (minimum 2) at first.
    e.upsert_agent(spec("trainee", ("billing", 1), (Channel::Voice, 1)), t)
        .unwrap();
    agent(&mut e, "front", "patient_access", t);
    queued(
        &e.route(&call("w1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(
            &call("w2", "billing", Urgency::Routine),
            t + Duration::seconds(1),
        )
        .unwrap(),
    );
    e.set_state("trainee", AgentState::Available, t + Duration::seconds(2))
        .unwrap();
    assert!(e.take_events().is_empty(), "nobody qualifies yet");
    // At 60 s, w1 relaxes to billing 1: the trainee takes it.
    e.advance(t + Duration::seconds(60));
    let events = e.take_events();
    assert_eq!(
        assigned(&events),
        [("w1".to_string(), "trainee".to_string())]
    );
    // The offer names the queue the client knows, not the internal pool.
    let Some(Event::Assigned(Assignment { offer, .. })) = events.first() else {
        panic!()
    };
    assert_eq!(&*offer.queue_id, "billing");
    // Supervisors see the queue clients know too, offer and contact alike.
    let trainee = e.agent_view("trainee").unwrap();
    assert_eq!(&*trainee.reservations[0].queue_id, "billing");
    e.confirm(offer.reservation, t + Duration::seconds(60))
        .unwrap();
    let trainee = e.agent_view("trainee").unwrap();
    assert_eq!(&*trainee.contacts[0].queue_id, "billing");
    // At 61 s w2 relaxes too, but nobody is free; at 121 s it overflows to
    // frontline's agents.
    e.advance(t + Duration::seconds(61));
    assert!(e.take_events().is_empty());
    e.advance(t + Duration::seconds(121));
    assert_eq!(
        assigned(&e.take_events()),
        [("w2".to_string(), "front".to_string())]
    );
    // Both still count as billing's.
    e.apply(Tick, t + Duration::seconds(121)).unwrap();
    let view = e.queues();
    assert!(
        view.iter().all(|q| !q.id.contains('~')),
        "internal pools never show"
    );
}

/// Issue 7's reproduction: a reload between arrivals must not let a later
/// arrival overwrite an earlier waiting contact (arrival numbers went back
/// to 1 at every reload).
#[test]
fn reload_keeps_the_line_and_later_arrivals_queue_behind_it() {
    let mut e = watched(Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig::default(),
    ));
    let t = open();
    agent(&mut e, "s1", "scheduling", t);
    agent(&mut e, "s2", "scheduling", t);
    busy(&mut e, "x1", "scheduling", t);
    busy(&mut e, "x2", "scheduling", t);
    for (i, id) in ["A1", "A2", "A3"].into_iter().enumerate() {
        let d = e
            .route(&call(id, "scheduling", Urgency::Routine), t)
            .unwrap();
        assert_eq!(queued(&d).position, i as u32 + 1);
    }
    let text = crate::policy::DEFAULT_POLICY.replacen("max_waiting = 10", "max_waiting = 12", 1);
    let reloaded = crate::policy::parse("reloaded.toml", &text).unwrap();
    e.replace_policy(Arc::new(reloaded), t);
    let d = e
        .route(&call("B1", "scheduling", Urgency::Routine), t)
        .unwrap();
    assert_eq!(queued(&d).position, 4);
    assert_eq!(e.waiting_contacts(), 4);

    let t1 = t + Duration::seconds(10);
    e.complete("s1", "x1", t1).unwrap();
    let t2 = finish(&mut e, "s2", "x2", t1);
    let got = assigned(&e.take_events());
    assert_eq!(
        got,
        [
            ("A1".to_string(), "s1".to_string()),
            ("A2".to_string(), "s2".to_string())
        ]
    );
    e.confirm(offer_of(&e, "A1"), t2).unwrap();
    e.confirm(offer_of(&e, "A2"), t2).unwrap();
    // A3 and B1 still wait, in that order; nothing phantom holds a place.
    e.cancel("A3", t2).unwrap();
    e.cancel("B1", t2).unwrap();
    assert_eq!(e.waiting_contacts(), 0);
    let scheduling = e.policy().queue_idx("scheduling").unwrap();
    assert_eq!(e.line_count(scheduling), 0);
}

/// A reload that drops a queue's relaxation steps: the old step timers
/// fall due and do nothing (they once indexed past the pool list and
/// panicked); the contact keeps waiting in its queue.
#[test]
fn reload_that_drops_steps_leaves_no_stale_timer() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    e.route(&call("w1", "billing", Urgency::Routine), t)
        .unwrap();
    // After the first step: w1 waits in billing's first wider pool.
    e.advance(t + Duration::seconds(61));
    let text = waiting_policy_text().replace(
        "steps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]",
        "",
    );
    let no_steps = crate::policy::parse("no-steps.toml", &text).unwrap();
    assert!(e.policy().queues.len() > no_steps.queues.len());
    e.replace_policy(Arc::new(no_steps), t + Duration::seconds(62));
    e.advance(t + Duration::minutes(10));
    let billing = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.waiting.find("w1").map(|w| w.queue), Some(billing));
    assert_eq!(e.line_count(billing), 1);
}

/// A reload that removes a waiting contact's intent calls it back under
/// the terms it was promised, and its queue, which stays, counts the ticket.
#[test]
fn a_callback_for_a_removed_intent_is_counted_by_the_queue_that_owns_it() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "s1", "scheduling", t);
    busy(&mut e, "c0", "scheduling", t);
    queued(
        &e.route(&call("w1", "scheduling", Urgency::Routine), t)
            .unwrap(),
    );
    let text = waiting_policy_text()
        .replacen("[intents.scheduling]\ncallback_window = \"2h\"\npriority = 3\n", "", 1)
        .replacen(
            "[[rules]]\nid = \"scheduling\"\nwhen = { intent = [\"scheduling\"] }\nroute_to = \"scheduling\"\n",
            "",
            1,
        );
    let policy = crate::policy::parse("no-scheduling-intent.toml", &text).unwrap();
    assert!(policy.intent_idx("scheduling").is_none());
    e.replace_policy(Arc::new(policy), t + Duration::seconds(5));
    let callbacks: Vec<_> = e
        .take_events()
        .into_iter()
        .filter_map(|event| match event {
            Event::CallbackInstead { callback, .. } => Some(callback),
            _ => None,
        })
        .collect();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(&*callbacks[0].queue_id, "scheduling");
    let scheduling = e.policy().queue_idx("scheduling").unwrap();
    assert_eq!(e.stats[scheduling].callbacks, 1);
}

/// A reload that adds steps applies them to contacts already waiting, from
/// their arrival; one that removes the queue calls its contacts back.
#[test]
fn reload_adds_steps_to_waiting_contacts_and_calls_back_a_removed_queue() {
    let text = waiting_policy_text().replace(
        "steps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]",
        "",
    );
    let mut e = watched(Engine::new(
        Arc::new(crate::policy::parse("no-steps.toml", &text).unwrap()),
        EngineConfig::default(),
    ));
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    e.route(&call("w1", "billing", Urgency::Routine), t)
        .unwrap();
    e.route(&call("w2", "billing", Urgency::Routine), t)
        .unwrap();
    // A frontline agent could take w1 only after billing's overflow step.
    agent(&mut e, "f1", "patient_access", t);
    e.replace_policy(Arc::new(waiting_policy()), t + Duration::seconds(90));
    assert!(assigned(&e.take_events()).is_empty());
    e.advance(t + Duration::seconds(120));
    assert_eq!(
        assigned(&e.take_events()),
        [("w1".to_string(), "f1".to_string())]
    );
    // The queue renamed: w2 (still waiting) gets a callback event.
    let renamed = waiting_policy_text()
        .replacen("id = \"billing\"\nlevel", "id = \"billing_v2\"\nlevel", 1)
        .replacen("route_to = \"billing\"\n", "route_to = \"billing_v2\"\n", 1);
    let renamed = crate::policy::parse("renamed.toml", &renamed).unwrap();
    e.replace_policy(Arc::new(renamed), t + Duration::seconds(121));
    let events = e.take_events();
    assert!(
        events.iter().any(
            |ev| matches!(ev, Event::CallbackInstead { contact_id, callback, .. }
            if contact_id == "w2" && callback.reason == CallbackReason::Policy)
        ),
        "{events:?}"
    );
    assert!(e.waiting.find("w2").is_none());
    // w1's offer, made under the old queue, is withdrawn with it.
    assert!(e.waiting.find("w1").is_none());
}

/// A reload removes a queue while its caller waits and no CTI is
/// connected: the CTI configured with that queue still connects, and is
/// told the caller's callback.
#[test]
fn a_watcher_of_a_queue_a_reload_removed_is_told_its_callbacks() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    e.route(&call("w1", "billing", Urgency::Routine), t)
        .unwrap();
    let renamed = waiting_policy_text()
        .replacen("id = \"billing\"\nlevel", "id = \"billing_v2\"\nlevel", 1)
        .replacen("route_to = \"billing\"\n", "route_to = \"billing_v2\"\n", 1);
    let renamed = crate::policy::parse("renamed.toml", &renamed).unwrap();
    e.replace_policy(Arc::new(renamed), t + Duration::seconds(10));
    // Streamed to nobody.
    e.take_events();
    let (_, missed) = e
        .watch(
            WatchFilter {
                queues: ["billing".into()].into(),
                ..WatchFilter::default()
            },
            t + Duration::seconds(20),
        )
        .unwrap();
    assert!(
        missed.iter().any(
            |ev| matches!(ev, Event::CallbackInstead { contact_id, callback, .. }
            if contact_id == "w1" && callback.reason == CallbackReason::Policy)
        ),
        "{missed:?}"
    );
}

/// Agents nobody watches are offered nothing from the line; a watcher that
/// connects makes the offers, and only its agents' events pass its filter.
#[test]
fn waiting_contacts_are_offered_only_to_watched_agents() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    agent(&mut e, "b1", "billing", t);
    agent(&mut e, "b2", "billing", t);
    busy(&mut e, "c1", "billing", t);
    busy(&mut e, "c2", "billing", t);
    queued(
        &e.route(&call("w1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(&call("w2", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    e.complete("b1", "c1", t).unwrap();
    e.complete("b2", "c2", t).unwrap();
    e.advance(t + Duration::minutes(1));
    assert!(assigned(&e.take_events()).is_empty(), "nobody watches");
    // A CTI covering b2 only: b2 is offered the head of the line at once.
    let t2 = t + Duration::minutes(1);
    let only_b2 = WatchFilter {
        agents: ["b2".into()].into(),
        ..WatchFilter::default()
    };
    let (id, live) = e.watch(only_b2.clone(), t2).unwrap();
    assert!(live.is_empty());
    let events = e.take_events();
    assert_eq!(assigned(&events), [("w1".to_string(), "b2".to_string())]);
    assert!(events.iter().all(|ev| ev.passes(&only_b2)));
    let teams = WatchFilter {
        teams: ["Other".into()].into(),
        ..WatchFilter::default()
    };
    assert!(!events[0].passes(&teams), "b2 is in team T");
    // A second watcher of the same agent gets the live offer on connect.
    let (_, live) = e.watch(only_b2, t2).unwrap();
    let [Event::Assigned(a)] = live.as_slice() else {
        panic!("{live:?}")
    };
    assert!(&*a.offer.agent_id == "b2" && a.contact_id == "w1");
    e.unwatch(id, t2);
    // A queue the policy lacks (a reload removed it) may be watched: a
    // CTI configured with it still connects, and is told nothing else.
    let removed = WatchFilter {
        queues: ["nope".into()].into(),
        ..WatchFilter::default()
    };
    let (_, missed) = e.watch(removed, t2).unwrap();
    assert!(missed.is_empty(), "{missed:?}");
}

/// A CTI restart: an offer out while nobody watched its agent lapses
/// without counting as the agent's miss or barring the agent; a watcher
/// that reconnects while an offer is live gets it again. An offer its
/// watcher saw lapse counts.
#[test]
fn offers_nobody_could_see_are_not_the_agents_misses() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    let (cti, _) = e.watch(WatchFilter::default(), t).unwrap();
    agent(&mut e, "b1", "billing", t);
    let ttl = e.policy().reservation_ttl;
    busy(&mut e, "c0", "billing", t);
    queued(&e.route(&call("w", "billing", Urgency::Routine), t).unwrap());
    // Completed with billing's 45 s of wrap-up; then w is offered to b1.
    let offered = e.complete("b1", "c0", t).unwrap();
    e.advance(offered);
    let events = e.take_events();
    let [Event::Assigned(first)] = events.as_slice() else {
        panic!("{events:?}")
    };
    // The CTI restarts: gone for 5 s, back with the offer still live.
    e.unwatch(cti, offered + Duration::seconds(1));
    let (cti, live) = e
        .watch(WatchFilter::default(), offered + Duration::seconds(6))
        .unwrap();
    let [Event::Assigned(again)] = live.as_slice() else {
        panic!("{live:?}")
    };
    assert_eq!(again.offer.reservation, first.offer.reservation);
    assert_eq!(again.offer.expires_at, first.offer.expires_at);
    // It lapses: nobody watched b1 for part of its life, so no miss, and
    // b1 is not barred from w; w is offered to b1 again at once.
    e.advance(offered + ttl);
    let b1 = e.roster.find("b1").unwrap();
    assert_eq!(e.roster.agent(b1).missed_offers, 0);
    let events = e.take_events();
    let [Event::Assigned(third)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(!third.reoffer, "b1 never passed on w");
    // This one its watcher saw throughout: its lapse is b1's miss, and w
    // waits out the cool-down.
    e.advance(offered + ttl + ttl);
    assert_eq!(e.roster.agent(b1).missed_offers, 1);
    assert!(e.take_events().is_empty());
    assert!(
        e.waiting
            .find("w")
            .unwrap()
            .excludes(b1, offered + ttl + ttl)
    );
    e.unwatch(cti, offered + ttl + ttl);
}

/// Nobody waits forever: past `max_wait_in_line` a contact in line leaves
/// with a callback event; one with an offer out is checked when the offer
/// fails.
#[test]
fn a_contact_past_its_wait_limit_gets_a_callback() {
    let text = waiting_policy_text().replacen(
        "max_waiting = 20\nmax_wait = \"2h\"",
        "max_waiting = 20\nmax_wait = \"2h\"\nmax_wait_in_line = \"90s\"",
        1,
    );
    assert_ne!(text, waiting_policy_text());
    let policy = crate::policy::parse("limit.toml", &text).unwrap();
    let mut e = watched(Engine::new(Arc::new(policy), EngineConfig::default()));
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(
        &e.route(&call("w1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(
            &call("w2", "billing", Urgency::Routine),
            t + Duration::seconds(50),
        )
        .unwrap(),
    );
    e.take_events();
    e.advance(t + Duration::seconds(90) - Duration::milliseconds(1));
    assert!(e.take_events().is_empty());
    e.advance(t + Duration::seconds(90));
    let events = e.take_events();
    let [
        Event::CallbackInstead {
            contact_id,
            callback,
            waited,
            parked,
        },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(contact_id, "w1");
    assert_eq!(callback.reason, CallbackReason::WaitTooLong);
    assert_eq!(*waited, Duration::seconds(90));
    assert_eq!(&*parked.queue_id, "billing");
    assert!(e.waiting.find("w1").is_none());
    let kinds: Vec<HopKind> = e.path("w1").unwrap().iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds.last(),
        Some(&HopKind::CalledBack(CallbackReason::WaitTooLong))
    );
    // w2 is offered at 130 s (after 45 s of wrap-up); its limit (140 s)
    // passes while the offer is out; when the agent releases it, it
    // leaves with a callback.
    let done = e.complete("b1", "c0", t + Duration::seconds(85)).unwrap();
    e.advance(done);
    let events = e.take_events();
    let [Event::Assigned(a)] = events.as_slice() else {
        panic!("{events:?}")
    };
    e.advance(t + Duration::seconds(142));
    assert!(
        e.waiting.find("w2").is_some(),
        "an offer out is not cut short"
    );
    e.release(
        a.offer.reservation,
        ReleaseReason::Rejected,
        t + Duration::seconds(144),
    )
    .unwrap();
    let events = e.take_events();
    assert!(
        matches!(events.as_slice(), [Event::CallbackInstead { contact_id, callback, .. }]
            if contact_id == "w2" && callback.reason == CallbackReason::WaitTooLong),
        "{events:?}"
    );
}

/// A line nobody is logged in to serve any more: after the grace, its
/// contacts get callbacks (`no_agents_staffed`); an offline-then-available
/// reset within the grace changes nothing.
#[test]
fn a_line_nobody_can_serve_is_called_back_after_the_grace() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "s1", "scheduling", t);
    busy(&mut e, "c0", "scheduling", t);
    queued(
        &e.route(&call("w", "scheduling", Urgency::Routine), t)
            .unwrap(),
    );
    // A CTI reset: offline and back within the grace.
    e.set_state("s1", AgentState::Offline, t + Duration::seconds(1))
        .unwrap();
    e.advance(t + Duration::seconds(2));
    e.set_state("s1", AgentState::Busy, t + Duration::seconds(3))
        .unwrap();
    e.advance(t + Duration::seconds(30));
    assert!(e.waiting.find("w").is_some());
    // Logged out for good.
    let out = t + Duration::seconds(31);
    e.set_state("s1", AgentState::Offline, out).unwrap();
    // The change is looked at once, and the grace's end is due next.
    e.advance(out);
    assert_eq!(e.next_due(), Some(out + UNSTAFFED_GRACE));
    e.advance(out + UNSTAFFED_GRACE - Duration::milliseconds(1));
    assert!(e.take_events().is_empty());
    e.advance(out + UNSTAFFED_GRACE);
    only_unstaffed_callback(&e.take_events(), "w");
}

/// A cancelled contact's offer is withdrawn on the stream, and the path
/// shows the assignment and the cancellation.
#[test]
fn a_cancel_withdraws_the_offer_and_every_hop_is_in_the_path() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    let d = e.route(&call("w", "billing", Urgency::Routine), t).unwrap();
    queued(&d);
    let done = e.complete("b1", "c0", t + Duration::seconds(5)).unwrap();
    e.advance(done);
    let events = e.take_events();
    let [Event::Assigned(a)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(a.waited, done - t, "the actual wait");
    e.cancel("w", done + Duration::seconds(2)).unwrap();
    let events = e.take_events();
    assert!(
        matches!(events.as_slice(), [Event::Withdrawn { contact_id, agent_id, reservation, reason, .. }]
            if contact_id == "w" && &**agent_id == "b1" && *reservation == a.offer.reservation
            && *reason == Withdrawal::Cancelled),
        "{events:?}"
    );
    let path = e.path("w").unwrap();
    let kinds: Vec<HopKind> = path.iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HopKind::Decided("queued", None),
            HopKind::Assigned,
            HopKind::Cancelled
        ]
    );
    assert!(path.iter().all(|h| h.decision == d.id));
    assert_eq!(path[1].reservation, Some(a.offer.reservation));
    assert_eq!(path[1].agent_id.as_deref(), Some("b1"));
}

/// One odd call moves the estimate a twentieth of the way; twenty make it
/// the observed average.
#[test]
fn the_handle_time_estimate_blends_in_observations() {
    let mut stats = QueueStats::default();
    let configured = Duration::minutes(20);
    assert_eq!(stats.handle_estimate(configured), 1200.0);
    stats.observe_handle_time(Duration::milliseconds(500));
    let one = stats.handle_estimate(configured);
    assert!(
        (one - (0.5 / 20.0 + 1200.0 * 19.0 / 20.0)).abs() < 1e-9,
        "{one}"
    );
    for _ in 1..HANDLE_TIMES_TRUSTED {
        stats.observe_handle_time(Duration::seconds(60));
    }
    let observed = stats.handle_time.unwrap();
    assert_eq!(stats.handle_estimate(configured), observed);
    assert_eq!(stats.handle_times_observed, HANDLE_TIMES_TRUSTED);
}

/// The engine says when it is next due, so the edge fires timers on time.
#[test]
fn next_due_is_the_earliest_timer() {
    let mut e = engine();
    let t = open();
    assert_eq!(e.next_due(), None);
    agent(&mut e, "b1", "billing", t);
    let d = e
        .route(&call("c0", "billing", Urgency::Routine), t)
        .unwrap();
    let Outcome::Agent(a) = &d.outcome else {
        panic!()
    };
    assert_eq!(e.next_due(), Some(a.expires_at));
}

/// A contact on a channel its queue does not take would wait in a line no
/// agent could ever serve: it gets a callback instead.
#[test]
fn a_contact_on_a_channel_its_queue_does_not_take_is_not_queued() {
    let text = waiting_policy_text().replacen(
        "channels = [\"voice\", \"chat\", \"email\", \"portal\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
        "channels = [\"voice\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
        1,
    );
    assert_ne!(text, waiting_policy_text());
    let policy = crate::policy::parse("voice-billing.toml", &text).unwrap();
    let mut e = watched(Engine::new(Arc::new(policy), EngineConfig::default()));
    let t = open();
    agent(&mut e, "b1", "billing", t);
    let mut chat = call("c1", "billing", Urgency::Routine);
    chat.channel = Channel::Chat;
    let d = e.route(&chat, t).unwrap();
    let Outcome::Callback(c) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(c.reason, CallbackReason::NoAgentsStaffed);
    assert_eq!(e.waiting_contacts(), 0);
}

/// A callback decided while no watcher covers its queue is kept, and the
/// next watcher of that queue receives it on connect; one for a contact
/// that was routed again since is dropped.
#[test]
fn a_callback_nobody_could_receive_is_kept_for_the_next_watcher() {
    let text = waiting_policy_text().replacen(
        "max_waiting = 20\nmax_wait = \"2h\"",
        "max_waiting = 20\nmax_wait = \"2h\"\nmax_wait_in_line = \"90s\"",
        1,
    );
    let policy = crate::policy::parse("limit.toml", &text).unwrap();
    let mut e = Engine::new(Arc::new(policy), EngineConfig::default());
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(
        &e.route(&call("w1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(&call("w2", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    // Nobody watches when their wait limit passes.
    e.advance(t + Duration::seconds(90));
    assert_eq!(e.take_events().len(), 2, "announced all the same");
    assert_eq!(e.undelivered(), 2);
    // w2 calls again and is routed anew: its old callback is void.
    e.route(
        &call("w2", "billing", Urgency::Routine),
        t + Duration::seconds(91),
    )
    .unwrap();
    // A watcher of another team's agents only gets nothing; one of the
    // billing queue gets w1's callback.
    let others = WatchFilter {
        teams: ["Other".into()].into(),
        ..WatchFilter::default()
    };
    let (_, missed) = e.watch(others, t + Duration::seconds(92)).unwrap();
    assert!(missed.is_empty());
    let billing = WatchFilter {
        queues: ["billing".into()].into(),
        ..WatchFilter::default()
    };
    let (_, missed) = e.watch(billing.clone(), t + Duration::seconds(93)).unwrap();
    let [
        Event::CallbackInstead {
            contact_id,
            callback,
            ..
        },
    ] = missed.as_slice()
    else {
        panic!("{missed:?}")
    };
    assert_eq!(
        (contact_id.as_str(), callback.reason),
        ("w1", CallbackReason::WaitTooLong)
    );
    // Delivered once.
    let (_, missed) = e.watch(billing, t + Duration::seconds(94)).unwrap();
    assert!(missed.is_empty());
    assert_eq!(e.undelivered(), 0);
}

/// An offer announced but not yet streamed when a watcher connects reaches
/// it once, with the stream, not also in what it missed.
#[test]
fn a_watcher_connecting_as_an_offer_is_made_gets_it_once() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    let (first, _) = e.watch(WatchFilter::default(), t).unwrap();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(&e.route(&call("w", "billing", Urgency::Routine), t).unwrap());
    let done = e.complete("b1", "c0", t).unwrap();
    e.take_events();
    // The wrap-up ends exactly as the second watcher connects: the offer is
    // made inside `watch` and queued for the stream.
    let (_, missed) = e.watch(WatchFilter::default(), done).unwrap();
    assert!(missed.is_empty(), "{missed:?}");
    assert_eq!(
        assigned(&e.take_events()),
        [("w".to_string(), "b1".to_string())]
    );
    e.unwatch(first, done);
}

/// The next due time is the earliest of the timers, the next sweep of the
/// lines (while anyone waits: a closing, a grace's end) and the earliest
/// wait limit. The lines are not swept on a clock of their own.
#[test]
fn next_due_is_the_earliest_of_timers_sweep_and_wait_limits() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    let d = e
        .apply(Route(&call("w", "billing", Urgency::Routine)), t)
        .unwrap();
    queued(&d);
    // The line that filled was looked at in the command that filled it.
    let billing = e.policy().queue_idx("billing").unwrap();
    let closing = e.policy().next_close(billing, t).unwrap();
    assert!(closing > t + Duration::hours(1), "{closing} from {t}");
    assert_eq!(e.sweep_due, Some(closing));
    // The confirmed reservation's 15 s expiry would do nothing, so the
    // command dropped it: the 60 s step is next, and the line waits for
    // nothing else.
    assert_eq!(e.next_due(), Some(t + Duration::seconds(60)));
    assert!(e.take_events().is_empty());
    e.cancel("w", t + Duration::seconds(30)).unwrap();
    // Nobody waits: no sweep and no wait limit; the step is next.
    assert_eq!(e.next_due(), Some(t + Duration::seconds(60)));
}

/// An agent who rejects an offer it was resent after a CTI restart passed
/// on it: the cool-down applies as to any rejection.
#[test]
fn rejecting_a_resent_offer_is_a_pass() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    let (cti, _) = e.watch(WatchFilter::default(), t).unwrap();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(&e.route(&call("w", "billing", Urgency::Routine), t).unwrap());
    let offered = e.complete("b1", "c0", t).unwrap();
    e.advance(offered);
    e.take_events();
    e.unwatch(cti, offered);
    let (_, missed) = e.watch(WatchFilter::default(), offered).unwrap();
    let [Event::Assigned(a)] = missed.as_slice() else {
        panic!("{missed:?}")
    };
    e.release(a.offer.reservation, ReleaseReason::Rejected, offered)
        .unwrap();
    assert!(
        assigned(&e.take_events()).is_empty(),
        "offered again at once"
    );
    let b1 = e.roster.find("b1").unwrap();
    assert!(e.waiting.find("w").unwrap().excludes(b1, offered));
}

/// A restart (replaying the log of the process before) drops that
/// process's watchers: their connections died with it. Offers they had out
/// are unseen, so their lapse is nobody's miss.
#[test]
fn a_restart_forgets_the_watchers_of_the_process_before() {
    let mut e = Engine::new(Arc::new(waiting_policy()), EngineConfig::default());
    let t = open();
    e.apply(Watch(WatchFilter::default()), t).unwrap();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(&e.route(&call("w", "billing", Urgency::Routine), t).unwrap());
    let offered = e.complete("b1", "c0", t).unwrap();
    e.apply(Tick, offered).unwrap();
    assert_eq!(assigned(&e.take_events()).len(), 1);
    e.apply(Command::Restarted(Restarted { epoch: 1 }), offered)
        .unwrap();
    assert_eq!(e.watchers(), 0);
    e.apply(Tick, offered + e.policy().reservation_ttl).unwrap();
    let b1 = e.roster.find("b1").unwrap();
    assert_eq!(e.roster.agent(b1).missed_offers, 0);
    assert!(
        e.take_events().is_empty(),
        "nothing offered with nobody watching"
    );
}

/// A waiting caller hangs up while its offer rings: released with that
/// reason, the contact leaves the line as abandoned, and the path says so.
#[test]
fn a_caller_who_hung_up_while_the_offer_rang_leaves_the_line() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(&e.route(&call("w", "billing", Urgency::Routine), t).unwrap());
    let done = e.complete("b1", "c0", t).unwrap();
    e.advance(done);
    let events = e.take_events();
    let [Event::Assigned(a)] = events.as_slice() else {
        panic!("{events:?}")
    };
    e.release(a.offer.reservation, ReleaseReason::CallerHungUp, done)
        .unwrap();
    assert!(e.waiting.find("w").is_none());
    let billing = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.stats[billing].abandoned, 1);
    let kinds: Vec<HopKind> = e.path("w").unwrap().iter().map(|h| h.kind).collect();
    assert_eq!(
        kinds,
        [
            HopKind::Decided("queued", None),
            HopKind::Assigned,
            HopKind::Cancelled
        ]
    );
}

/// An IVR's in-queue announcement: a waiting contact's current rank (by
/// priority: an urgent arrival goes ahead), a refreshed estimate, the offer
/// once one is out; afterwards its last hop; nothing for a stranger.
#[test]
fn a_waiting_contacts_status_is_its_current_rank_and_estimate() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(
        &e.route(&call("w1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    queued(
        &e.route(&call("w2", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    let status = |e: &mut Engine, id: &str, at: Time| {
        e.apply(Tick, at).unwrap();
        e.contact_status(id)
    };
    let Some(ContactStatus::Waiting {
        position,
        estimated_wait: before,
        ..
    }) = status(&mut e, "w2", t + Duration::seconds(1))
    else {
        panic!()
    };
    assert_eq!(position, 2);
    // An urgent contact arrives and ranks first: w2 is third now.
    queued(
        &e.route(
            &call("u", "billing", Urgency::Urgent),
            t + Duration::seconds(2),
        )
        .unwrap(),
    );
    let Some(ContactStatus::Waiting {
        position,
        estimated_wait,
        waited,
        offered,
        queue_id,
        ..
    }) = status(&mut e, "w2", t + Duration::seconds(3))
    else {
        panic!()
    };
    assert_eq!((position, &*queue_id, offered), (3, "billing", None));
    assert!(estimated_wait > before, "the estimate follows the rank");
    assert_eq!(waited, Duration::seconds(3));
    // b1 frees up and is offered u; u's status shows the offer.
    let done = e.complete("b1", "c0", t + Duration::seconds(4)).unwrap();
    e.advance(done);
    let events = e.take_events();
    let [Event::Assigned(a)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(a.contact_id, "u");
    let Some(ContactStatus::Waiting {
        position, offered, ..
    }) = status(&mut e, "u", done)
    else {
        panic!()
    };
    assert_eq!(position, 1);
    assert_eq!(offered, Some(("b1".into(), a.offer.reservation)));
    // Confirmed: u no longer waits; its status is its last hop.
    e.confirm(a.offer.reservation, done).unwrap();
    let Some(ContactStatus::Done(last)) = status(&mut e, "u", done) else {
        panic!()
    };
    assert_eq!(last.kind, HopKind::Assigned);
    assert_eq!(status(&mut e, "stranger", done), None);
}

#[test]
fn an_urgent_clinical_caller_queued_unverified_is_offered_with_the_verify_guidance() {
    // The nurse line with a line of its own.
    let text = waiting_policy_text().replacen(
        "transfer_address = \"sip:nurse-line@pbx.careroute.example\"",
        "transfer_address = \"sip:nurse-line@pbx.careroute.example\"\nmax_waiting = 5\nmax_wait = \"2h\"",
        1,
    );
    let policy = crate::policy::parse("nurse-line.toml", &text).unwrap();
    let mut e = watched(Engine::new(Arc::new(policy), EngineConfig::default()));
    let t = open();
    agent(&mut e, "n1", "clinical_triage", t);
    busy(&mut e, "first", "clinical", t);
    // Unverified and urgent: never held for identity, queued for a nurse.
    let mut unverified = call("unverified", "clinical", Urgency::Urgent);
    unverified.identity = Identity::NotAttempted;
    let d = e.route(&unverified, t).unwrap();
    queued(&d);
    assert!(d.reasons.contains(&Reason::IdentityDeferred));
    // Verified and urgent: queued behind it, nothing to verify.
    let d = e
        .route(&call("verified", "clinical", Urgency::Urgent), t)
        .unwrap();
    queued(&d);
    assert!(!d.reasons.contains(&Reason::IdentityDeferred));

    let guidance = e.policy().authenticate.verify_during_call.clone();
    assert!(!guidance.is_empty());
    let mut offered = Vec::new();
    let mut at = t;
    for _ in 0..2 {
        at += Duration::minutes(10);
        let contact = e.agent_view("n1").unwrap().contacts[0].contact_id.clone();
        // Free again after wrap-up: the next in line is offered.
        let free = finish(&mut e, "n1", &contact, at);
        for event in e.take_events() {
            if let Event::Assigned(a) = event {
                offered.push((a.contact_id.clone(), a.verify_identity.clone()));
                e.confirm(a.offer.reservation, free).unwrap();
            }
        }
    }
    assert_eq!(
        offered,
        [
            ("unverified".to_string(), Some(guidance)),
            ("verified".to_string(), None)
        ]
    );
}

#[test]
fn an_agent_reached_by_a_relaxation_step_is_eligible_for_the_queue_clients_know() {
    let mut e = engine();
    let t = open();
    // Billing needs 2; its first step takes billing 1 after 60 s.
    let (queues, created) = e
        .upsert_agent(
            AgentSpec {
                id: "trainee".into(),
                team: "T".into(),
                transfer_address: "sip:trainee".into(),
                skills: vec![("billing".into(), 1)],
                languages: vec!["en".into()],
                channels: vec![(Channel::Voice, 1)],
            },
            t,
        )
        .unwrap();
    assert!(created);
    let ids: Vec<&str> = queues.iter().map(|q| &**q).collect();
    assert_eq!(ids, ["billing"], "step pools are internal");
    let view = e.agent_view("trainee").unwrap();
    assert_eq!(view.queues, queues);
    let filter = AgentFilter {
        queue_id: Some("billing".into()),
        ..AgentFilter::default()
    };
    let page = e.agent_page(&filter, 0, 10).unwrap();
    assert!(page.agents.iter().any(|a| &*a.id == "trainee"));
    // With a later queue's skill too: the policy's order, though billing
    // reaches it through a step pool, which comes after every queue.
    let mut spec = spec("trainee", ("billing", 1), (Channel::Voice, 1));
    spec.skills.push(("pharmacy".into(), 2));
    let (queues, _) = e.upsert_agent(spec, t).unwrap();
    assert_eq!(queues, [Text::from("billing"), Text::from("pharmacy")]);
}

/// Lines are per channel: a contact on a channel nobody logged in has room
/// on (in the queue's pool or a wider one ahead) is called back at once,
/// not held in a line nobody serves, while the queue's other channels
/// queue as usual; and a waiting contact whose channel's last agent logs
/// out is called back after the grace, the others staying in line.
#[test]
fn a_line_is_staffed_per_channel() {
    let mut e = engine();
    let t = open();
    // b1 takes voice only, and is busy.
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    let mut chat = call("chat-1", "billing", Urgency::Routine);
    chat.channel = Channel::Chat;
    let d = e.route(&chat, t).unwrap();
    let Outcome::Callback(c) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(c.reason, CallbackReason::NoAgentsStaffed);
    queued(
        &e.route(&call("voice-1", "billing", Urgency::Routine), t)
            .unwrap(),
    );
    // A chat agent logs in, busy: chat contacts wait for it.
    e.upsert_agent(chat_agent("b2"), t).unwrap();
    e.set_state("b2", AgentState::Busy, t).unwrap();
    let mut chat = call("chat-2", "billing", Urgency::Routine);
    chat.channel = Channel::Chat;
    queued(&e.route(&chat, t).unwrap());
    // It logs out for good: after the grace, the chat contact is called
    // back; the voice contact, whose agent is logged in, stays in line.
    let out = t + Duration::seconds(1);
    e.set_state("b2", AgentState::Offline, out).unwrap();
    let mut now = out;
    while now <= out + UNSTAFFED_GRACE + Duration::seconds(1) {
        e.advance(now);
        now += Duration::seconds(1);
    }
    only_unstaffed_callback(&e.take_events(), "chat-2");
    assert!(e.waiting.find("voice-1").is_some());
}

/// A contact whose offer lapses back into a line nobody is left to serve is
/// called back after the grace, though its queue had callers in line all
/// along (on another channel). Through the engine's one entrance, as the
/// service applies commands.
#[test]
fn an_offer_that_lapses_into_an_unstaffed_line_is_called_back_after_the_grace() {
    let (mut e, t) = voice_caller_waiting();
    e.apply(UpsertAgent(chat_agent("b2")), t).unwrap();
    let state = |state| SetAgentState {
        agent_id: "b2".into(),
        state,
    };
    e.apply(state(AgentState::Busy), t).unwrap();
    let mut chat = call("chat-1", "billing", Urgency::Routine);
    chat.channel = Channel::Chat;
    queued(&e.apply(Route(&chat), t).unwrap());
    // b2 frees up and is offered chat-1 from the line, then logs off with
    // the offer out.
    e.apply(state(AgentState::Available), t).unwrap();
    offer_of(&e, "chat-1");
    e.apply(state(AgentState::Offline), t + Duration::seconds(1))
        .unwrap();
    let lapsed = t + e.policy().reservation_ttl;
    e.apply(Tick, lapsed).unwrap();
    assert!(e.waiting.find("chat-1").is_some_and(|w| w.offer.is_none()));
    e.take_events();
    e.apply(Tick, lapsed + UNSTAFFED_GRACE - Duration::milliseconds(1))
        .unwrap();
    assert!(e.take_events().is_empty());
    e.apply(Tick, lapsed + UNSTAFFED_GRACE).unwrap();
    only_unstaffed_callback(&e.take_events(), "chat-1");
    assert!(e.waiting.find("voice-1").is_some());
}

/// A reload while a line is unstaffed keeps its grace's start: reloads do
/// not put the callers' callbacks off.
#[test]
fn a_reload_does_not_restart_an_unstaffed_lines_grace() {
    let (mut e, t) = voice_caller_waiting();
    // b1 logs off with a caller waiting for it.
    e.apply(
        SetAgentState {
            agent_id: "b1".into(),
            state: AgentState::Offline,
        },
        t,
    )
    .unwrap();
    e.apply(
        ReplacePolicy(Arc::new(waiting_policy())),
        t + Duration::seconds(5),
    )
    .unwrap();
    e.take_events();
    e.apply(Tick, t + UNSTAFFED_GRACE).unwrap();
    only_unstaffed_callback(&e.take_events(), "voice-1");
}

/// A billing floor whose one voice agent is busy, with `voice-1` waiting
/// (queued through the engine's one entrance).
fn voice_caller_waiting() -> (Engine, Time) {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    queued(
        &e.apply(Route(&call("voice-1", "billing", Urgency::Routine)), t)
            .unwrap(),
    );
    (e, t)
}

/// A billing agent who takes chat only.
fn chat_agent(id: &str) -> AgentSpec {
    AgentSpec {
        id: id.into(),
        team: "T".into(),
        transfer_address: format!("sip:{id}"),
        skills: vec![("billing".into(), 3)],
        languages: vec!["en".into()],
        channels: vec![(Channel::Chat, 1)],
    }
}

/// `events` are exactly `contact`'s callback for a line nobody staffs.
fn only_unstaffed_callback(events: &[Event], contact: &str) {
    assert!(
        matches!(events, [Event::CallbackInstead { contact_id, callback, .. }]
            if contact_id == contact && callback.reason == CallbackReason::NoAgentsStaffed),
        "{events:?}"
    );
}

/// An agent whose offers lapse together is offered nothing between them:
/// every miss falling due by now is counted before it is offered more, so
/// the lapse that pauses it does not find a fresh offer out.
#[test]
fn offers_lapsing_together_all_count_before_the_agent_is_offered_more() {
    let mut e = engine();
    let t = open();
    let limit = e.policy().missed_offers_to_pause;
    let slots = u8::try_from(limit).unwrap();
    e.upsert_agent(spec("b", ("billing", 3), (Channel::Chat, slots)), t)
        .unwrap();
    e.set_state("b", AgentState::Away, t).unwrap();
    for i in 0..=limit {
        let c = call_on(&format!("c{i}"), "billing", Channel::Chat);
        queued(&e.route(&c, t).unwrap());
    }
    e.set_state("b", AgentState::Available, t).unwrap();
    assert_eq!(assigned(&e.take_events()).len(), limit as usize);
    let last = format!("c{limit}");
    assert_eq!(e.waiting.find(&last).map(|w| w.offer), Some(None));
    // Every offer lapses in the same instant: the limit is reached, and the
    // contact still in line was not offered to b on the way.
    e.advance(t + e.policy().reservation_ttl);
    let b = e.roster.find("b").unwrap();
    assert_eq!(e.roster.agent(b).state, AgentState::NotResponding);
    assert!(assigned(&e.take_events()).is_empty());
    assert_eq!(e.roster.agent(b).reserved, [0; Channel::ALL.len()]);
    assert_eq!(e.live_reservations(), 0);
}

/// A line's position and estimate are its channel's: contacts waiting on
/// another channel are not ahead, and only the agents taking the channel
/// serve it.
#[test]
fn position_and_estimate_are_of_the_contacts_own_channel() {
    let mut e = engine();
    let t = open();
    for (id, channel) in [
        ("v1", Channel::Voice),
        ("v2", Channel::Voice),
        ("v3", Channel::Voice),
        ("h1", Channel::Chat),
    ] {
        e.upsert_agent(spec(id, ("billing", 3), (channel, 1)), t)
            .unwrap();
        e.set_state(id, AgentState::Away, t).unwrap();
    }
    // Voice callers wait long enough to move to billing's wider pools.
    for i in 0..3 {
        queued(
            &e.route(&call(&format!("v{i}"), "billing", Urgency::Routine), t)
                .unwrap(),
        );
    }
    let later = t + Duration::seconds(150);
    e.advance(later);
    let d = e
        .route(&call_on("c0", "billing", Channel::Chat), later)
        .unwrap();
    let q = queued(&d);
    assert_eq!(q.position, 1, "the voice callers are not ahead of a chat");
    // One agent takes chat: the chat waits a whole handle time, not a
    // third of one as if the voice agents served it.
    let billing = e.policy().queue_idx("billing").unwrap();
    let handle = e.stats[billing].handle_estimate(e.policy().queues[billing].handle_time);
    assert_eq!(
        q.estimated_wait,
        Duration::milliseconds((handle * 1000.0) as i64)
    );
    let ContactStatus::Waiting {
        position,
        estimated_wait,
        ..
    } = e.contact_status("c0").unwrap()
    else {
        panic!()
    };
    assert_eq!((position, estimated_wait), (1, q.estimated_wait));
    let ContactStatus::Waiting { position, .. } = e.contact_status("v2").unwrap() else {
        panic!()
    };
    assert_eq!(position, 3);
}

/// A contact moved on by a relaxation step is estimated over the agents
/// its wider pool reaches on its channel, not only its queue's own.
#[test]
fn a_moved_contacts_estimate_counts_the_agents_its_step_reached() {
    let mut e = engine();
    let t = open();
    for (id, level) in [("b3", 3), ("r1", 1), ("r2", 1)] {
        e.upsert_agent(spec(id, ("billing", level), (Channel::Voice, 1)), t)
            .unwrap();
        e.set_state(id, AgentState::Away, t).unwrap();
    }
    let q = queued(
        &e.route(&call("c0", "billing", Urgency::Routine), t)
            .unwrap(),
    )
    .clone();
    let billing = e.policy().queue_idx("billing").unwrap();
    let handle = e.stats[billing].handle_estimate(e.policy().queues[billing].handle_time);
    let whole = |secs: f64| Duration::milliseconds((secs * 1000.0) as i64);
    // Only b3 has billing 3: one agent, a whole handle time.
    assert_eq!(q.estimated_wait, whole(handle));
    // At 70 s billing 1 will do: three agents serve it now.
    e.advance(t + Duration::seconds(70));
    let ContactStatus::Waiting {
        queue_id,
        position,
        estimated_wait,
        ..
    } = e.contact_status("c0").unwrap()
    else {
        panic!("c0 should still wait")
    };
    assert_eq!(
        (queue_id.as_ref(), position, estimated_wait),
        ("billing", 1, whole(handle / 3.0))
    );
}
