//! Live queueing tests on the healthcare policy with waiting enabled for
//! billing and scheduling, explicit times throughout.

use chrono::{TimeZone, Utc};

use super::*;
use crate::model::{Identity, Urgency};

fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

/// The example policy with lines on billing (20) and scheduling (2).
pub(super) fn waiting_policy() -> Policy {
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
    e.upsert_agent(
        AgentSpec {
            id: id.into(),
            team: "T".into(),
            transfer_address: format!("sip:{id}"),
            skills: vec![(skill.into(), 3)],
            languages: vec!["en".into()],
            channels: vec![(Channel::Voice, 1)],
        },
        at,
    )
    .unwrap();
    e.set_state(id, AgentState::Available, at).unwrap();
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
    e.release(a.reservation, t + Duration::seconds(5)).unwrap();
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
    e.release(again.offer.reservation, lapsed + cool_down)
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

    // Three missed offers in a row: not responding.
    let limit = e.policy().missed_offers_to_pause;
    let mut now = t + Duration::minutes(5);
    for i in 0..limit {
        let c = format!("m{i}");
        e.route(&call(&c, "billing", Urgency::Routine), now)
            .unwrap();
        now += ttl;
        e.advance(now);
        e.take_events();
    }
    let b2 = e.roster.find("b2").unwrap();
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
    let view = e.queues(t + Duration::seconds(10));
    let billing = view.iter().find(|q| &*q.id == "billing").unwrap();
    assert_eq!(billing.waiting, 10);
    assert!(billing.estimated_wait > last);
    assert_eq!(billing.longest_wait, Duration::seconds(10));
}

#[test]
fn a_closing_queue_hands_its_line_to_the_closed_action() {
    let mut e = engine();
    let t = Utc.with_ymd_and_hms(2026, 11, 23, 21, 59, 0).unwrap(); // 16:59 New York
    agent(&mut e, "s1", "scheduling", t);
    let mut nurse = AgentSpec {
        id: "n1".into(),
        team: "Nurse Line".into(),
        transfer_address: "sip:n1".into(),
        skills: vec![("clinical_triage".into(), 4), ("on_call".into(), 1)],
        languages: vec!["en".into()],
        channels: vec![(Channel::Voice, 1)],
    };
    e.upsert_agent(nurse.clone(), t).unwrap();
    nurse.id = "n2".into();
    e.upsert_agent(nurse, t).unwrap();
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
}

#[test]
fn relaxation_moves_a_waiting_contact_to_wider_pools_over_time() {
    let mut e = engine();
    let t = open();
    agent(&mut e, "b1", "billing", t);
    busy(&mut e, "c0", "billing", t);
    // A trainee (billing 1) and a frontline agent are free but do not
    // qualify for billing (minimum 2) at first.
    e.upsert_agent(
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
    e.confirm(offer.reservation, t + Duration::seconds(60))
        .unwrap();
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
    let view = e.queues(t + Duration::seconds(121));
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
