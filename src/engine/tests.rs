//! Engine unit tests on the embedded healthcare policy, with explicit times.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::once::{Kept, Settle};
use super::*;
use crate::model::{CallbackReason, Channel, Contact, Identity, Reason, ReleaseReason, Urgency};

/// Monday 2026-11-23 10:00 in New York: the business schedule is open.
fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

/// Monday 2026-11-23 20:00 in New York: closed.
fn closed() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap()
}

fn engine() -> Engine {
    super::queueing_tests::watched(Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig::default(),
    ))
}

fn billing_agent(id: &str, languages: &[&str], voice: u8, chat: u8) -> AgentSpec {
    let mut channels = vec![(Channel::Voice, voice)];
    if chat > 0 {
        channels.push((Channel::Chat, chat));
    }
    AgentSpec {
        id: id.into(),
        team: "Billing".into(),
        transfer_address: format!("sip:{id}@pbx"),
        skills: vec![("billing".into(), 3)],
        languages: languages.iter().map(|l| l.to_string()).collect(),
        channels,
    }
}

/// The embedded policy with `tables` of `[utilization]` added.
fn with_utilization(tables: &str) -> Arc<Policy> {
    let text = format!("{}\n{tables}", crate::policy::DEFAULT_POLICY);
    Arc::new(crate::policy::parse("utilization.toml", &text).unwrap())
}

fn add(e: &mut Engine, spec: AgentSpec, at: Time) {
    let id = spec.id.clone();
    e.upsert_agent(spec, at).unwrap();
    e.set_state(&id, AgentState::Available, at).unwrap();
}

fn billing(contact: &str) -> Contact {
    let mut c = Contact::new(contact, "billing");
    c.identity = Identity::Verified;
    c
}

fn offer(d: &Decision) -> &AgentOffer {
    match &d.outcome {
        Outcome::Agent(a) => a,
        other => panic!("expected an agent, got {other:?}"),
    }
}

fn callback(d: &Decision) -> &CallbackOffer {
    match &d.outcome {
        Outcome::Callback(c) => c,
        other => panic!("expected a callback, got {other:?}"),
    }
}

#[test]
fn longest_idle_agent_first_and_then_to_the_back() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 2), t);
    add(
        &mut e,
        billing_agent("b2", &["en"], 1, 2),
        t + Duration::seconds(1),
    );
    let now = t + Duration::seconds(2);
    let mut chat = billing("c1");
    chat.channel = Channel::Chat;
    let d = e.route(&chat, now).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b1");
    assert_eq!(d.reasons, vec![Reason::RuleMatched, Reason::LongestIdle]);
    // b1 just got work: b2 is now the longest idle.
    chat.contact_id = "c2".into();
    assert_eq!(&*offer(&e.route(&chat, now).unwrap()).agent_id, "b2");
}

#[test]
fn never_two_contacts_on_a_capacity_one_channel() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let first = e.route(&billing("c1"), t).unwrap();
    assert_eq!(&*offer(&first).agent_id, "b1");
    let second = e.route(&billing("c2"), t).unwrap();
    assert_eq!(callback(&second).reason, CallbackReason::NoAgentAvailable);
    assert!(second.reasons.contains(&Reason::NoAgentAvailable));
}

#[test]
fn nobody_logged_in_is_unstaffed() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    e.set_state("b1", AgentState::Offline, t).unwrap();
    let d = e.route(&billing("c1"), t).unwrap();
    assert_eq!(callback(&d).reason, CallbackReason::NoAgentsStaffed);
    // Away is staffed but not offered contacts.
    e.set_state("b1", AgentState::Away, t).unwrap();
    let d = e.route(&billing("c2"), t).unwrap();
    assert_eq!(callback(&d).reason, CallbackReason::NoAgentAvailable);
}

#[test]
fn chat_capacity_allows_several() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 2), t);
    let mut chat = billing("c1");
    chat.channel = Channel::Chat;
    assert!(matches!(
        e.route(&chat, t).unwrap().outcome,
        Outcome::Agent(_)
    ));
    chat.contact_id = "c2".into();
    assert!(matches!(
        e.route(&chat, t).unwrap().outcome,
        Outcome::Agent(_)
    ));
    chat.contact_id = "c3".into();
    assert!(matches!(
        e.route(&chat, t).unwrap().outcome,
        Outcome::Callback(_)
    ));
    // Voice is a separate channel with its own capacity.
    assert!(matches!(
        e.route(&billing("c4"), t).unwrap().outcome,
        Outcome::Agent(_)
    ));
}

#[test]
fn language_speakers_first_else_interpreter() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("en1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("es1", &["en", "es"], 1, 0),
        t + Duration::seconds(5),
    );
    let mut c = billing("c1");
    c.language = Some("es".into());
    let d = e.route(&c, t + Duration::seconds(6)).unwrap();
    assert_eq!(
        &*offer(&d).agent_id,
        "es1",
        "the speaker, though not idle longest"
    );
    assert!(!offer(&d).interpreter_needed);
    let mut c = billing("c2");
    c.language = Some("vi".into());
    let d = e.route(&c, t + Duration::seconds(6)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "en1");
    assert!(offer(&d).interpreter_needed);
    assert!(d.reasons.contains(&Reason::InterpreterNeeded));
}

#[test]
fn a_speaker_of_a_language_serves_its_regional_forms() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("en1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("es1", &["es"], 1, 0),
        t + Duration::seconds(5),
    );
    add(
        &mut e,
        billing_agent("mx1", &["es-MX"], 1, 0),
        t + Duration::seconds(7),
    );
    // An es-MX caller: both Spanish speakers serve, longest idle first; the
    // English speaker, idle longest of all, is not taken.
    let mut c = billing("c1");
    c.language = Some("es-MX".into());
    let d = e.route(&c, t + Duration::seconds(9)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "es1");
    assert!(!offer(&d).interpreter_needed);
    let mut c = billing("c2");
    c.language = Some("es-MX".into());
    let d = e.route(&c, t + Duration::seconds(9)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "mx1");
    assert!(!offer(&d).interpreter_needed);
    // A plain es caller is not served by an es-MX speaker as such: the
    // shorter form does not reach the longer one.
    let mut e = engine();
    add(&mut e, billing_agent("en1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("mx1", &["es-MX"], 1, 0),
        t + Duration::seconds(5),
    );
    let mut c = billing("c3");
    c.language = Some("es".into());
    let d = e.route(&c, t + Duration::seconds(9)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "en1");
    assert!(offer(&d).interpreter_needed);
}

#[test]
fn a_rules_language_takes_its_regional_forms() {
    let text = crate::policy::DEFAULT_POLICY.replacen(
        "[[rules]]",
        "[[rules]]\nid = \"spanish-billing\"\nwhen = { intent = [\"billing\"], language = [\"es\"] }\nroute_to = \"frontline\"\n\n[[rules]]",
        1,
    );
    let mut e = super::queueing_tests::watched(Engine::new(
        Arc::new(crate::policy::parse("es.toml", &text).unwrap()),
        EngineConfig::default(),
    ));
    let rule = |e: &mut Engine, id: &str, language: &str| {
        let mut c = billing(id);
        c.language = Some(language.into());
        let d = e.route(&c, open()).unwrap();
        d.rule_id.as_deref().map(str::to_owned)
    };
    assert_eq!(rule(&mut e, "c1", "es").as_deref(), Some("spanish-billing"));
    assert_eq!(
        rule(&mut e, "c2", "es-MX").as_deref(),
        Some("spanish-billing")
    );
    assert_ne!(
        rule(&mut e, "c3", "en-US").as_deref(),
        Some("spanish-billing")
    );
}

#[test]
fn a_language_listed_twice_counts_its_speaker_once() {
    // One agent lists English twice and the other speaks only Spanish:
    // English is not the whole queue's, so the Spanish speaker is no
    // English speaker, however the profiles are counted.
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("twice", &["en", "en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("es1", &["es"], 1, 0),
        t + Duration::seconds(1),
    );
    e.set_state("twice", AgentState::Away, t + Duration::seconds(2))
        .unwrap();
    let mut c = billing("c1");
    c.language = Some("en".into());
    let d = e.route(&c, t + Duration::seconds(3)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "es1");
    assert!(offer(&d).interpreter_needed, "{d:?}");
    // Back, the one who lists it twice is the English speaker.
    e.set_state("twice", AgentState::Available, t + Duration::seconds(4))
        .unwrap();
    let d = e.route(&billing("c2"), t + Duration::seconds(5)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "twice");
    assert!(!offer(&d).interpreter_needed, "{d:?}");
}

#[test]
fn preferred_agent_when_eligible_and_free() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("b2", &["en"], 1, 0),
        t + Duration::seconds(1),
    );
    let mut c = billing("c1");
    c.preferred_agent_id = Some("b2".into());
    let d = e.route(&c, t + Duration::seconds(2)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b2");
    assert!(d.reasons.contains(&Reason::PreferredAgent));
    assert!(!d.reasons.contains(&Reason::PreferredAgentUnavailable));
    // Preferred but busy: the longest idle instead, and the answer says so.
    let mut c = billing("c2");
    c.preferred_agent_id = Some("b2".into());
    let d = e.route(&c, t + Duration::seconds(2)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b1");
    assert!(d.reasons.contains(&Reason::PreferredAgentUnavailable));
    assert!(d.reasons.contains(&Reason::LongestIdle));
    // Preferred but not eligible for the queue (no billing skill): ignored.
    let mut nurse = billing_agent("n1", &["en"], 1, 0);
    nurse.skills = vec![("clinical_triage".into(), 4)];
    add(&mut e, nurse, t);
    let mut c = billing("c3");
    c.preferred_agent_id = Some("n1".into());
    let d = e.route(&c, t + Duration::seconds(2)).unwrap();
    assert_eq!(callback(&d).reason, CallbackReason::NoAgentAvailable);
    assert!(d.reasons.contains(&Reason::PreferredAgentUnavailable));
    // Unknown: said too, never silently ignored.
    add(&mut e, billing_agent("b3", &["en"], 1, 0), t);
    let mut c = billing("c4");
    c.preferred_agent_id = Some("nobody".into());
    let d = e.route(&c, t + Duration::seconds(3)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b3");
    assert!(d.reasons.contains(&Reason::PreferredAgentUnavailable));
}

#[test]
fn transferring_agent_is_never_chosen_again() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("b2", &["en"], 1, 0),
        t + Duration::seconds(1),
    );
    let mut c = billing("c1");
    c.transfer_from = Some(crate::model::TransferFrom {
        queue_id: "frontline".into(),
        agent_id: Some("b1".into()),
    });
    let d = e.route(&c, t + Duration::seconds(2)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b2");
}

#[test]
fn reservation_expires_by_itself_and_cannot_be_confirmed_after() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let a = offer(&d).clone();
    assert_eq!(a.expires_at, t + e.policy().reservation_ttl);
    // One microsecond before the TTL the agent is still held.
    let before = a.expires_at - Duration::microseconds(1);
    assert!(matches!(
        e.route(&billing("c2"), before).unwrap().outcome,
        Outcome::Callback(_)
    ));
    // At the TTL it is free again, and the old reservation is gone.
    e.advance(a.expires_at);
    assert_eq!(e.live_reservations(), 0);
    assert_eq!(e.counters().expired, 1);
    assert_eq!(
        e.confirm(a.reservation, a.expires_at),
        Err(EngineError::ReservationExpired(a.reservation.to_string()))
    );
    assert!(matches!(
        e.route(&billing("c3"), a.expires_at).unwrap().outcome,
        Outcome::Agent(_)
    ));
}

#[test]
fn a_start_after_the_log_lost_its_tail_never_gives_an_id_again() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    // The log keeps what came before this start; a power loss under
    // --journal-sync write loses its restart and the route after it, whose
    // answer had left.
    let kept = e.clone();
    let restart = |epoch| Command::Restarted(Restarted { epoch });
    e.apply(restart(7), t).unwrap();
    let lost = e.route(&billing("c1"), t).unwrap();
    let lost_offer = offer(&lost).reservation;
    // The next start replays the same log, to the same counters, and
    // draws another epoch.
    let mut e = kept;
    e.apply(restart(8), t + Duration::seconds(5)).unwrap();
    let d = e.route(&billing("c2"), t + Duration::seconds(6)).unwrap();
    assert_ne!(d.id, lost.id);
    let r = offer(&d).reservation;
    assert_ne!(r, lost_offer);
    // The new reservation took the lost one's place in the ledger; a late
    // confirm of the lost one is not told the new one's fate.
    e.release(r, ReleaseReason::Rejected, t + Duration::seconds(7))
        .unwrap();
    assert_eq!(
        e.confirm(lost_offer, t + Duration::seconds(8)),
        Err(EngineError::UnknownReservation(lost_offer.to_string()))
    );
    assert!(matches!(
        e.confirm(r, t + Duration::seconds(8)),
        Err(EngineError::ReservationSettled {
            how: Settled::Released,
            ..
        })
    ));
}

#[test]
fn confirm_complete_wrap_up_then_available() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let r = offer(&d).reservation;
    let (agent, contact) = e.confirm(r, t).unwrap();
    assert_eq!((&*agent, contact.as_str()), ("b1", "c1"));
    assert!(matches!(
        e.confirm(r, t),
        Err(EngineError::ReservationSettled {
            how: Settled::Confirmed,
            ..
        })
    ));
    // Busy on voice: no second voice contact; confirm does not expire later.
    e.advance(t + Duration::minutes(5));
    assert_eq!(e.counters().expired, 0);
    assert!(matches!(
        e.route(&billing("c2"), t).unwrap().outcome,
        Outcome::Callback(_)
    ));
    let done = t + Duration::minutes(6);
    assert_eq!(
        e.complete("b1", "c9", done),
        Err(EngineError::NoActiveContact {
            agent: "b1".into(),
            contact: "c9".into()
        })
    );
    let until = e.complete("b1", "c1", done).unwrap();
    assert_eq!(
        until,
        done + Duration::seconds(45),
        "billing wrap-up is 45s"
    );
    assert_eq!(e.roster().agent(0).state, AgentState::WrapUp);
    assert!(matches!(
        e.route(&billing("c3"), until - Duration::seconds(1))
            .unwrap()
            .outcome,
        Outcome::Callback(_)
    ));
    assert!(matches!(
        e.route(&billing("c4"), until).unwrap().outcome,
        Outcome::Agent(_)
    ));
}

#[test]
fn release_frees_the_agent_and_unknown_ids_are_not_found() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let r = offer(&d).reservation;
    e.release(r, ReleaseReason::Rejected, t).unwrap();
    assert!(matches!(
        e.release(r, ReleaseReason::Rejected, t),
        Err(EngineError::ReservationSettled {
            how: Settled::Released,
            ..
        })
    ));
    assert!(matches!(
        e.release(ReservationId(7), ReleaseReason::Rejected, t),
        Err(EngineError::UnknownReservation(_))
    ));
    assert!(matches!(
        e.route(&billing("c2"), t).unwrap().outcome,
        Outcome::Agent(_)
    ));
    assert!(matches!(
        e.set_state("ghost", AgentState::Available, t),
        Err(EngineError::UnknownAgent(_))
    ));
}

#[test]
fn retry_with_the_same_request_id_reserves_nothing_new() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    add(&mut e, billing_agent("b2", &["en"], 1, 0), t);
    let mut c = billing("c1");
    c.request_id = Some("req-1".into());
    let first = e.route(&c, t).unwrap();
    let again = e.route(&c, t + Duration::seconds(1)).unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(offer(&again), offer(&first));
    assert_eq!(again.reasons.last(), Some(&Reason::IdempotentReplay));
    assert_eq!(e.live_reservations(), 1);
    assert_eq!(e.counters().reserved, 1);
    // Another contact with the same request id is another request.
    let mut other = billing("c2");
    other.request_id = Some("req-1".into());
    assert_ne!(e.route(&other, t).unwrap().id, first.id);
    // The same request id with a different request is refused, never
    // answered with the first decision; the first stays for true retries.
    for change in [
        (|c: &mut Contact| c.intent = "scheduling".into()) as fn(&mut Contact),
        |c| c.urgency = Urgency::Urgent,
        |c| c.escalation_requested = true,
        |c| c.attributes = vec![("coverage".into(), "self_pay".into())],
        |c| c.preferred_agent_id = Some("b2".into()),
    ] {
        let mut changed = c.clone();
        change(&mut changed);
        assert_eq!(
            e.route(&changed, t + Duration::seconds(2)),
            Err(EngineError::RequestIdReused)
        );
    }
    assert_eq!(e.route(&c, t + Duration::seconds(3)).unwrap().id, first.id);
    assert_eq!(e.counters().reserved, 2);
}

/// Routed again without a request id (a retry that lost its id, a second
/// IVR leg), a contact still holds one agent: each new hop withdraws the
/// offer the one before reserved, and a late confirm of it is told it was
/// released. Other contacts' offers are untouched.
#[test]
fn a_contact_routed_again_holds_one_agent() {
    let mut e = engine();
    let t = open();
    for i in 0..4 {
        add(&mut e, billing_agent(&format!("b{i}"), &["en"], 1, 0), t);
    }
    let other = offer(&e.route(&billing("c2"), t).unwrap()).clone();
    let c = billing("c1");
    let offers: Vec<AgentOffer> = (0..3)
        .map(|s| offer(&e.route(&c, t + Duration::seconds(s)).unwrap()).clone())
        .collect();
    assert_eq!(e.live_reservations(), 2);
    // The withdrawn agent stood where it stood before the offer, the
    // longest idle: each hop gets it again, under a new reservation. The
    // stream never carried these offers and is told nothing of them.
    assert!(offers.iter().all(|o| o.agent_id == offers[0].agent_id));
    assert_ne!(offers[0].agent_id, other.agent_id);
    assert_ne!(offers[0].reservation, offers[2].reservation);
    assert!(e.take_events().is_empty());
    let later = t + Duration::seconds(5);
    assert!(matches!(
        e.confirm(offers[0].reservation, later),
        Err(EngineError::ReservationSettled {
            how: Settled::Released,
            ..
        })
    ));
    e.confirm(offers[2].reservation, later).unwrap();
    e.confirm(other.reservation, later).unwrap();
    assert_eq!(e.live_reservations(), 0);
    // Two agents took the two contacts; the other two are free again.
    let free = e
        .roster
        .agents()
        .iter()
        .filter(|a| a.free_channels(e.roster.blocks()).contains(Channel::Voice))
        .count();
    assert_eq!(free, 2);
}

/// A withdrawn offer gives its agent back its place on the offer's channel,
/// but a channel other work blocked when the offer was made, and which that
/// work no longer blocks, counts its idle time from the withdrawal, as after
/// any release: email, blocked by a chat, then by a call offered meanwhile,
/// is free from when the call's offer is withdrawn, not from before the
/// chat.
#[test]
fn a_withdrawal_frees_a_channel_other_work_had_blocked_from_then() {
    let policy = with_utilization("[utilization.email]\nblocked_by = { voice = 1, chat = 1 }\n");
    let mut e = Engine::new(policy, EngineConfig::default());
    let t = open();
    let mut spec = billing_agent("a", &["en"], 1, 1);
    spec.channels.push((Channel::Email, 1));
    add(&mut e, spec, t);
    let a = e.roster.find("a").unwrap();
    let email = |e: &Engine| e.roster.agent(a).ready_since[Channel::Email.index()];
    let before_chat = email(&e);
    let mut chat = billing("chat-1");
    chat.channel = Channel::Chat;
    let chat_offer = offer(&e.route(&chat, t).unwrap()).reservation;
    let call = billing("call-1");
    e.route(&call, t + Duration::seconds(1)).unwrap();
    // The chat ends while the call's offer is out: email stays blocked.
    e.release(
        chat_offer,
        ReleaseReason::TransferFailed,
        t + Duration::seconds(2),
    )
    .unwrap();
    assert_eq!(email(&e), before_chat);
    // The call is routed again: its offer is withdrawn, the agent stands
    // where it stood on voice, and email is free from now.
    let again = t + Duration::seconds(3);
    e.route(&call, again).unwrap();
    assert_eq!(email(&e), again.timestamp_micros());
}

/// The window is a time: a retry late in the window still replays, and
/// one after it is decided anew; traffic beyond the sized cap forgets the
/// oldest ids early, and each is counted.
#[test]
fn the_idempotency_window_is_a_time_and_early_evictions_are_counted() {
    let mut e = Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig {
            max_idempotency_keys: 3,
            ..EngineConfig::default()
        },
    );
    let t = open();
    let contact = |i: u32| {
        let mut c = billing(&format!("c{i}"));
        c.request_id = Some(format!("req-{i}"));
        c
    };
    let first = e.route(&contact(1), t).unwrap();
    let late = t + Duration::minutes(10) - Duration::seconds(1);
    let replay = e.route(&contact(1), late).unwrap();
    assert_eq!(replay.id, first.id);
    assert_eq!(replay.reasons.last(), Some(&Reason::IdempotentReplay));
    let after = e.route(&contact(1), t + Duration::minutes(10)).unwrap();
    assert_ne!(after.id, first.id);
    assert_eq!(e.counters().idempotency_evicted_early, 0);

    let t2 = t + Duration::minutes(30);
    for i in 10..15 {
        e.route(&contact(i), t2).unwrap();
    }
    e.advance(t2);
    assert_eq!(e.counters().idempotency_evicted_early, 2);
    let replay = e.route(&contact(14), t2).unwrap();
    assert_eq!(replay.reasons.last(), Some(&Reason::IdempotentReplay));
    let forgotten = e.route(&contact(10), t2).unwrap();
    assert_ne!(forgotten.reasons.last(), Some(&Reason::IdempotentReplay));
}

#[test]
fn an_agent_is_removed_only_without_work_and_its_slot_is_reused() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    add(
        &mut e,
        billing_agent("b2", &["en"], 1, 0),
        t + Duration::seconds(1),
    );
    let d = e.route(&billing("c1"), t).unwrap();
    assert_eq!(&*offer(&d).agent_id, "b1");
    assert!(matches!(
        e.remove_agent("b1", t),
        Err(EngineError::AgentBusy {
            what: "a live reservation",
            ..
        })
    ));
    e.confirm(offer(&d).reservation, t).unwrap();
    assert!(matches!(
        e.remove_agent("b1", t),
        Err(EngineError::AgentBusy {
            what: "an active contact",
            ..
        })
    ));
    e.complete("b1", "c1", t).unwrap();
    // Removed in wrap-up: its wrap-up timer must not count the empty slot.
    e.remove_agent("b1", t).unwrap();
    e.advance(t + Duration::minutes(1));
    assert_eq!(e.roster().by_state().iter().sum::<u32>(), 1);
    assert_eq!(
        e.remove_agent("b1", t),
        Err(EngineError::UnknownAgent("b1".into()))
    );
    assert_eq!(e.roster().live(), 1);
    let billing_q = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.roster().pool(billing_q).staffed, 1);
    // b1's wrap-up timer (billing wraps up 45 s) must not touch the agent
    // that takes its slot.
    add(&mut e, billing_agent("b3", &["en"], 1, 0), t);
    e.set_state("b3", AgentState::Away, t).unwrap();
    e.advance(t + Duration::minutes(5));
    let b3 = e.roster().find("b3").unwrap();
    assert_eq!(e.roster().agent(b3).state, AgentState::Away);
    assert_eq!(e.roster().live(), 2);
    assert_eq!(e.roster().len(), 2, "the slot was reused");
}

#[test]
fn no_new_agent_past_max_agents() {
    let mut e = Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig {
            max_agents: 2,
            ..EngineConfig::default()
        },
    );
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    add(&mut e, billing_agent("b2", &["en"], 1, 0), t);
    assert_eq!(
        e.upsert_agent(billing_agent("b3", &["en"], 1, 0), t),
        Err(EngineError::TooManyAgents {
            agent: "b3".into(),
            max: 2
        })
    );
    // A profile change of a known agent is not a new agent.
    e.upsert_agent(billing_agent("b2", &["en", "es"], 1, 0), t)
        .unwrap();
    e.remove_agent("b1", t).unwrap();
    e.upsert_agent(billing_agent("b3", &["en"], 1, 0), t)
        .unwrap();
}

#[test]
fn an_agent_is_eligible_only_for_queues_it_serves_a_channel_of() {
    let mut e = engine();
    let t = open();
    // Billing 4 meets billing (voice, chat, email, portal) and billing
    // escalations (voice, chat); an agent on email only can be offered
    // contacts of the first alone.
    let mut spec = billing_agent("mail", &["en"], 1, 0);
    spec.skills = vec![("billing".into(), 4)];
    spec.channels = vec![(Channel::Email, 5)];
    let (queues, _) = e.upsert_agent(spec.clone(), t).unwrap();
    assert_eq!(queues, [Text::from("billing")]);
    assert_eq!(e.agent_view("mail").unwrap().queues, queues);
    let filter = |queue: &str| AgentFilter {
        queue_id: Some(queue.into()),
        ..AgentFilter::default()
    };
    let listed = |e: &Engine, queue: &str| {
        let page = e.agent_page(&filter(queue), 0, 10).unwrap();
        page.agents.iter().any(|a| &*a.id == "mail")
    };
    assert!(listed(&e, "billing"));
    assert!(!listed(&e, "billing_escalations"));
    // With voice too, both.
    spec.channels.push((Channel::Voice, 1));
    let (queues, created) = e.upsert_agent(spec, t).unwrap();
    assert!(!created);
    assert_eq!(
        queues,
        [Text::from("billing"), Text::from("billing_escalations")]
    );
    assert!(listed(&e, "billing_escalations"));
}

#[test]
fn a_profile_without_channels_is_refused() {
    let mut spec = billing_agent("none", &["en"], 1, 0);
    spec.channels.clear();
    assert_eq!(
        spec.validate().unwrap_err().part,
        ProfilePart::Channels,
        "an agent with no channel is offered nothing"
    );
}

#[test]
fn vocabulary_is_checked_against_the_policy() {
    let mut e = engine();
    let t = open();
    let mut c = billing("c1");
    c.intent = "astrology".into();
    let Err(EngineError::UnknownIntent { allowed }) = e.route(&c, t) else {
        panic!("unknown intent accepted");
    };
    assert!(allowed.contains("billing") && !allowed.contains("astrology"));
    let mut c = billing("c1");
    c.attributes = vec![("patient_name".into(), "x".into())];
    assert_eq!(
        e.route(&c, t),
        Err(EngineError::UnknownAttribute {
            allowed: "coverage, payment_plan".into()
        })
    );
    let mut c = billing("c1");
    c.attributes = vec![("coverage".into(), "platinum".into())];
    assert!(matches!(
        e.route(&c, t),
        Err(EngineError::AttributeValue { .. })
    ));
    let mut c = billing("c1");
    c.transfer_from = Some(crate::model::TransferFrom {
        queue_id: "nowhere".into(),
        agent_id: None,
    });
    assert!(matches!(
        e.route(&c, t),
        Err(EngineError::UnknownQueue { .. })
    ));
    assert_eq!(e.live_reservations(), 0);
}

#[test]
fn an_emergency_gets_its_script_without_an_intent_but_within_the_vocabulary() {
    let mut e = engine();
    let t = open();
    let emergency = |c: &Contact| {
        let mut c = c.clone();
        c.urgency = Urgency::Emergency;
        c
    };
    let mut unknown = billing("c1");
    unknown.intent = "astrology".into();
    let mut unsaid = billing("c2");
    unsaid.intent.clear();
    let mut stray = billing("c3");
    stray.attributes = vec![("patient_name".into(), "x".into())];
    let mut signalled = billing("c4");
    signalled.intent.clear();
    signalled.signals = vec!["chest_pain".into()];
    for c in [emergency(&unsaid), signalled] {
        let d = e.route(&c, t).unwrap();
        assert!(
            matches!(d.outcome, Outcome::Emergency { .. }),
            "{}: {:?}",
            c.contact_id,
            d.outcome
        );
        assert_eq!(d.rule_id.as_deref(), Some("guard:emergency"));
    }
    // What the log must not keep is refused for an emergency too.
    assert!(matches!(
        e.route(&emergency(&unknown), t),
        Err(EngineError::UnknownIntent { .. })
    ));
    assert!(matches!(
        e.route(&emergency(&stray), t),
        Err(EngineError::UnknownAttribute { .. })
    ));
    // Not an emergency: an intent is needed, and nothing changes.
    assert!(matches!(
        e.route(&unknown, t),
        Err(EngineError::UnknownIntent { .. })
    ));
    assert_eq!(e.route(&unsaid, t), Err(EngineError::MissingIntent));
    let mut known = unsaid.clone();
    known.signals = vec!["mild_worry".into()];
    assert_eq!(e.route(&known, t), Err(EngineError::MissingIntent));
    // A signal the policy does not know is refused, emergency or not: the
    // log keeps none but the policy's words.
    let mut stray = emergency(&unsaid);
    stray.signals = vec!["jane_doe_dob_1970".into()];
    let Err(EngineError::UnknownSignal { allowed }) = e.route(&stray, t) else {
        panic!("an unknown signal accepted");
    };
    assert!(allowed.contains("chest_pain") && !allowed.contains("jane_doe"));
    assert_eq!(e.live_reservations(), 0);
}

#[test]
fn path_records_every_hop() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d1 = e.route(&billing("c1"), t).unwrap();
    let mut c = billing("c1");
    c.escalation_requested = true;
    c.transfer_from = Some(crate::model::TransferFrom {
        queue_id: "billing".into(),
        agent_id: Some("b1".into()),
    });
    let d2 = e.route(&c, t + Duration::seconds(30)).unwrap();
    let path = e.path("c1").unwrap();
    assert_eq!(path.len(), 3);
    assert_eq!(path[0].decision, d1.id);
    assert_eq!(path[0].kind, HopKind::Decided("agent", None));
    assert_eq!(path[0].queue_id.as_deref(), Some("billing"));
    // The first answer's reservation lapsed before the transfer came back.
    assert_eq!(
        (path[1].decision, path[1].kind),
        (d1.id, HopKind::OfferExpired)
    );
    assert_eq!(path[2].decision, d2.id);
    assert_eq!(path[2].from_queue_id.as_deref(), Some("billing"));
    assert_eq!(e.path("unknown"), None);
}

/// A warm transfer's reservation that ends unconfirmed, released or lapsed,
/// is the contact's last hop, so its status no longer names that agent; a
/// callback decision's hop says why.
#[test]
fn a_path_shows_a_transfer_that_ended_and_why_a_callback() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let reserved = offer(&d);
    e.release(reserved.reservation, ReleaseReason::TransferFailed, t)
        .unwrap();
    let last = e.path("c1").unwrap().last().unwrap().clone();
    assert_eq!(
        (last.decision, last.kind, last.reservation),
        (d.id, HopKind::OfferReleased, Some(reserved.reservation))
    );
    assert_eq!(last.agent_id.as_deref(), Some("b1"));
    let d = e.route(&billing("c2"), t).unwrap();
    let reserved = offer(&d);
    e.apply(Tick, reserved.expires_at + Duration::seconds(1))
        .unwrap();
    let last = e.path("c2").unwrap().last().unwrap().clone();
    assert_eq!(
        (last.decision, last.kind, last.reservation),
        (d.id, HopKind::OfferExpired, Some(reserved.reservation))
    );
    // Nobody free now (b1 holds c3): the next contact gets a callback.
    e.route(&billing("c3"), reserved.expires_at + Duration::seconds(1))
        .unwrap();
    let d = e
        .route(&billing("c4"), reserved.expires_at + Duration::seconds(1))
        .unwrap();
    let ticket = callback(&d);
    assert_eq!(
        e.path("c4").unwrap()[0].kind,
        HopKind::Decided("callback", Some(ticket.reason))
    );
}

/// Each hop of a contact's path: its decision and what happened.
fn hops(e: &Engine, contact_id: &str) -> Vec<(DecisionId, HopKind)> {
    e.path(contact_id)
        .unwrap()
        .iter()
        .map(|h| (h.decision, h.kind))
        .collect()
}

/// A reservation confirmed, or withdrawn by routing its contact again,
/// leaves no hop of its own; nor does one ending when the path is full,
/// which keeps the decision as its newest hop.
#[test]
fn only_a_transfer_that_ends_unconfirmed_adds_a_hop() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let again = e.route(&billing("c1"), t + Duration::seconds(1)).unwrap();
    let reserved = offer(&again);
    e.confirm(reserved.reservation, t + Duration::seconds(2))
        .unwrap();
    let agent = HopKind::Decided("agent", None);
    assert_eq!(hops(&e, "c1"), [(d.id, agent), (again.id, agent)]);

    let mut e = super::queueing_tests::watched(Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig {
            max_hops: 1,
            ..EngineConfig::default()
        },
    ));
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    let reserved = offer(&d);
    e.release(reserved.reservation, ReleaseReason::TransferFailed, t)
        .unwrap();
    assert_eq!(hops(&e, "c1"), [(d.id, agent)]);
}

#[test]
fn after_hours_routine_gets_a_next_business_day_callback() {
    let mut e = engine();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), closed());
    let d = e.route(&billing("c1"), closed()).unwrap();
    let cb = callback(&d);
    assert_eq!(cb.reason, CallbackReason::Closed);
    // Billing's 4h window from the next opening, Tuesday 09:00 New York.
    assert_eq!(
        cb.terms.deadline,
        Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 0).unwrap()
    );
    assert_eq!(e.live_reservations(), 0);
}

#[test]
fn after_hours_an_urgent_contact_goes_on_call_only_on_a_channel_it_takes() {
    let mut e = engine();
    let urgent = |id: &str, channel: Channel| {
        let mut c = Contact::new(id, "clinical");
        c.identity = Identity::Verified;
        c.urgency = Urgency::Urgent;
        c.channel = channel;
        c
    };
    // The nurse line is closed; the on-call nurse takes voice and chat.
    let d = e.route(&urgent("c1", Channel::Chat), closed()).unwrap();
    assert!(d.reasons.contains(&Reason::AfterHoursOnCall), "{d:?}");
    // A portal message is not sent where nobody could take it: the nurse
    // line's own after-hours callback.
    let d = e.route(&urgent("c2", Channel::Portal), closed()).unwrap();
    assert!(!d.reasons.contains(&Reason::AfterHoursOnCall), "{d:?}");
    let cb = callback(&d);
    assert_eq!(cb.reason, CallbackReason::Closed);
    assert_eq!(d.queue_id(), Some("nurse_line"));
}

#[test]
fn policy_reload_keeps_live_reservations() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("c1"), t).unwrap();
    e.replace_policy(Arc::new(Policy::embedded().unwrap()), t);
    let billing_q = e.policy().queue_idx("billing").unwrap();
    assert_eq!(e.roster().pool(billing_q).reservations, 1);
    assert_eq!(e.roster().pool(billing_q).staffed, 1);
    assert_eq!(e.roster().pool(billing_q).available, 0);
    e.confirm(offer(&d).reservation, t).unwrap();
}

// ---------------------------------------------------------------- invariants

/// Checks everything that must hold between any two operations.
fn check_invariants(e: &Engine, now: Time) {
    // The free-agent sets hold exactly who is free, by brute force.
    if let Err(why) = e.roster.check_free_sets() {
        panic!("{why}");
    }
    // Waiting contacts and offers point at each other, and no waiting
    // contact sits in line while an agent who may take it is free.
    for (id, r) in &e.reservations {
        if let Some(seq) = r.waiter {
            let w = e
                .waiting
                .get(seq)
                .expect("an offer outlived its waiting contact");
            assert_eq!(w.offer, Some(*id), "offer and waiter disagree");
        }
    }
    // No contact holds two live reservations (a new hop withdraws what an
    // earlier one reserved), and the index of offers RouteContact made
    // holds exactly those not made from a line.
    let mut holders = std::collections::HashSet::new();
    for r in e.reservations.values() {
        assert!(
            holders.insert(r.contact_id.as_str()),
            "{} holds two live reservations",
            r.contact_id
        );
    }
    let mut offers: Vec<_> = e
        .reservations
        .values()
        .filter(|r| r.waiter.is_none())
        .map(|r| (r.contact_id.as_str(), r.id))
        .collect();
    offers.sort();
    let mut indexed: Vec<_> = e.offers.iter().map(|(c, id)| (c.as_str(), *id)).collect();
    indexed.sort();
    assert_eq!(
        indexed, offers,
        "the offers index disagrees with the reservations"
    );
    // The oracle, by brute force over every agent: nobody waits in line
    // while an agent a watcher covers, eligible for the line and free on
    // its channel, may be offered it (its cool-down over).
    for q in 0..e.policy.queues.len() {
        for seq in e.waiting.in_queue(q) {
            let w = e.waiting.get(seq).unwrap();
            assert_eq!(w.offer, None, "a contact in line has an offer out");
            // Its rank, walked in from both ends, is one plus the contacts
            // ahead of it, counted one by one.
            let ahead = e
                .waiting
                .in_queue(q)
                .into_iter()
                .filter_map(|s| e.waiting.get(s))
                .filter(|o| o.channel == w.channel && o.key < w.key)
                .count() as u32;
            assert_eq!(e.waiting.position_of(q, w.channel, w.key), ahead + 1);
            let free = e.roster.agents().iter().enumerate().find(|(a, agent)| {
                !agent.removed
                    && agent.queues.contains(&q)
                    && agent.free_channels(e.roster.blocks()).contains(w.channel)
                    && e.watchers.cover(agent)
                    && !w.excludes(*a as AgentIdx, now)
            });
            assert!(
                free.is_none(),
                "{} waits in {} on {} while agent {:?} is free for it (excluded {:?})",
                w.contact_id,
                e.policy.queues[q].id,
                w.channel,
                free,
                w.exclude,
            );
        }
    }
    // Nobody waits past its deadline (the wait limit of the queue it
    // joined), unless an offer of it is out (checked again when the offer
    // ends); the deadline index holds no more than one entry per contact.
    for w in e.waiting.iter() {
        let limit = e.policy.queues[e.policy.root(w.parked)].max_wait_in_line;
        assert_eq!(
            w.deadline,
            w.arrived + limit,
            "{}'s deadline drifted",
            w.contact_id
        );
        if w.offer.is_none() {
            assert!(
                now < w.deadline,
                "{} waited past its deadline",
                w.contact_id
            );
        }
    }
    assert!(e.waiting.deadline_count() <= e.waiting.len());
    // Removed agents' slots are counted in no state.
    assert_eq!(
        e.roster.by_state().iter().sum::<u32>() as usize,
        e.roster.live(),
        "agents by state do not add up to the agents registered"
    );
    // Arrival numbers only go forward, and every step timer names a live
    // pool of the waiting contact's own queue.
    for w in e.waiting.iter() {
        assert!(w.seq <= e.waiting.last_seq(), "an arrival number went back");
    }
    for Reverse((_, timer)) in e.timers.iter() {
        if let Timer::Step(seq, pool) = *timer {
            assert!(pool < e.policy.queues.len(), "a step timer names no pool");
            if let Some(w) = e.waiting.get(seq) {
                assert_eq!(
                    e.policy.root(w.queue),
                    e.policy.root(pool),
                    "a step timer names another queue's pool"
                );
            }
        }
    }
    let mut held: HashMap<AgentIdx, [u32; 5]> = HashMap::new();
    for r in e.reservations.values() {
        assert!(r.expires_at > now, "a reservation outlived its TTL");
        held.entry(r.agent).or_default()[r.channel.index()] += 1;
    }
    for (i, agent) in e.roster.agents().iter().enumerate() {
        let held = held.get(&(i as AgentIdx)).copied().unwrap_or_default();
        for c in Channel::ALL {
            let k = c.index();
            assert_eq!(
                u32::from(agent.reserved[k]),
                held[k],
                "reserved count drifted"
            );
        }
        // Voice capacity is 1 and never changes here: one call at a time.
        let voice = Channel::Voice.index();
        assert!(
            agent.reserved[voice] + agent.active[voice] <= 1,
            "agent {} holds two voice contacts",
            agent.id
        );
    }
    for (q, queue) in e.policy.queues.iter().enumerate() {
        let eligible = e.roster.agents().iter().filter(|a| a.queues.contains(&q));
        let staffed = eligible
            .clone()
            .filter(|a| a.state != AgentState::Offline && a.serves().intersects(queue.channels))
            .count() as u32;
        let available = eligible
            .filter(|a| a.free_channels(e.roster.blocks()).0 & queue.channels.0 != 0)
            .count() as u32;
        let pool = e.roster.pool(q);
        assert_eq!(pool.staffed, staffed, "staffed count of {}", queue.id);
        assert_eq!(pool.available, available, "available count of {}", queue.id);
        for c in Channel::ALL {
            let on = e
                .roster
                .agents()
                .iter()
                .filter(|a| a.queues.contains(&q) && a.state != AgentState::Offline)
                .filter(|a| queue.channels.contains(c) && a.capacity[c.index()] > 0)
                .count() as u32;
            assert_eq!(pool.staffed_on(c), on, "staffed on {c:?} of {}", queue.id);
        }
        let live = e
            .reservations
            .values()
            .filter(|r| r.queue == Some(q))
            .count() as u32;
        assert_eq!(pool.reservations, live, "reservation count of {}", queue.id);
    }
}

/// Issue 10: an agent on two chats was handed a voice call, because
/// channels were independent. With the policy's utilization, work on one
/// channel blocks another; without it, nothing changes.
#[test]
fn work_on_one_channel_blocks_another_as_the_policy_says() {
    let policy = with_utilization(
        "[utilization.voice]\nblocked_by = { chat = 2 }\n[utilization.chat]\nblocked_by = { voice = 1 }\n",
    );
    let chat = |id: &str| {
        let mut c = billing(id);
        c.channel = Channel::Chat;
        c
    };
    let t = open();
    for (policy, blocks) in [
        (Arc::new(Policy::embedded().unwrap()), false),
        (policy, true),
    ] {
        let mut e = super::queueing_tests::watched(Engine::new(policy, EngineConfig::default()));
        add(&mut e, billing_agent("a", &["en"], 1, 3), t);
        // Two chats in hand.
        for id in ["chat-1", "chat-2"] {
            let d = e.route(&chat(id), t).unwrap();
            e.confirm(offer(&d).reservation, t).unwrap();
        }
        // A call: the agent has voice capacity, but two chats block it.
        let d = e.route(&billing("call-1"), t).unwrap();
        match (&d.outcome, blocks) {
            (Outcome::Agent(a), false) => assert_eq!(&*a.agent_id, "a"),
            (Outcome::Agent(a), true) => panic!("two chats did not block a call: {a:?}"),
            (_, false) => panic!("channels are independent by default: {d:?}"),
            (_, true) => {}
        }
        if !blocks {
            continue;
        }
        // One chat done: the call may come; once it is in hand, it blocks
        // new chats, though chat capacity is left.
        // (After billing's wrap-up.)
        e.complete("a", "chat-2", t).unwrap();
        let t = t + Duration::seconds(60);
        let d = e.route(&billing("call-2"), t).unwrap();
        e.confirm(offer(&d).reservation, t).unwrap();
        assert!(matches!(
            e.route(&chat("chat-3"), t).unwrap().outcome,
            Outcome::Callback(_) | Outcome::Queued(_)
        ));
        // Supervisors see it: no room on chat while the call lasts.
        let view = e.agent_view("a").unwrap();
        let chat_load = view
            .channels
            .iter()
            .find(|c| c.channel == Channel::Chat)
            .unwrap();
        assert_eq!((chat_load.active, chat_load.free), (1, 0));
    }
}

/// A channel another channel's work blocked becomes free when that work
/// ends: its idle time starts then, so an agent just off a chat is not
/// "longest idle" for a call ahead of one who waited.
#[test]
fn a_channel_freed_from_a_block_counts_its_idle_time_from_then() {
    let text = format!(
        "{}\n[utilization.voice]\nblocked_by = {{ chat = 1 }}\n",
        crate::policy::DEFAULT_POLICY
    );
    let policy = Arc::new(crate::policy::parse("utilization.toml", &text).unwrap());
    let mut e = super::queueing_tests::watched(Engine::new(policy, EngineConfig::default()));
    let t = open();
    // a has been free for a minute longer than b.
    add(
        &mut e,
        billing_agent("a", &["en"], 1, 3),
        t - Duration::seconds(60),
    );
    add(&mut e, billing_agent("b", &["en"], 1, 0), t);
    let mut chat = billing("chat-1");
    chat.channel = Channel::Chat;
    let d = e.route(&chat, t + Duration::seconds(10)).unwrap();
    assert_eq!(&*offer(&d).agent_id, "a");
    // The chat offer fails at 20 s: a is free on chat and voice from then.
    e.release(
        offer(&d).reservation,
        ReleaseReason::TransferFailed,
        t + Duration::seconds(20),
    )
    .unwrap();
    let d = e
        .route(&billing("call-1"), t + Duration::seconds(21))
        .unwrap();
    assert_eq!(&*offer(&d).agent_id, "b", "b has waited longer on voice");
    let view = e.agent_view("a").unwrap();
    let voice = view
        .channels
        .iter()
        .find(|c| c.channel == Channel::Voice)
        .unwrap();
    assert_eq!(voice.idle_since, Some(t + Duration::seconds(20)));
}

/// A settling command sent with a request id, kept for its retries.
#[derive(Debug, Clone)]
enum SentOnce {
    Confirm(Once<Confirm>),
    Release(Once<Release>),
    Complete(Once<Complete>),
    Cancel(Once<Cancel>),
}

#[derive(Debug, Clone)]
enum Op {
    Route {
        contact: u8,
        chat: bool,
        preferred: Option<u8>,
    },
    /// A contact with an offer out routed again (the IVR retried without
    /// its request id, or a second leg), on the offer's channel: the `k`th
    /// offer the model holds, if it is still live.
    Reroute(u8),
    /// A contact the policy refuses (an unknown intent, an undeclared
    /// attribute, a value not allowed): the log keeps a tick in its place.
    Refused(u8),
    Confirm(u8),
    Release(u8, u8),
    Complete(u8),
    State(u8, u8),
    Wait(u16),
    /// Hours pass: queues close (and open), lines are swept at closing.
    Hours(u8),
    Reprofile(u8, u8),
    Cancel(u8),
    /// A settling command sent again with its request id, as a CTI retries
    /// after a lost answer.
    Retry(u8),
    Reload(u8),
    Remove(u8),
    Watch(u8),
    Unwatch(u8),
    Limits(u8),
    Restart,
    Snapshot,
    /// The leader applies a command whose append is fenced (never logged),
    /// then a standby takes over: it rebuilt from its last snapshot and
    /// the log after it, and opens its term with a restart.
    Failover,
}

/// Policies a running engine is switched between: the example policy, and
/// variants of the queueing one that drop, change and add relaxation steps,
/// raise skills, narrow channels, shorten the wait limit, drop the wrap-up,
/// and remove a queue (renaming it).
fn reload_policies() -> &'static [Arc<Policy>] {
    static POLICIES: std::sync::OnceLock<Vec<Arc<Policy>>> = std::sync::OnceLock::new();
    POLICIES.get_or_init(|| {
        let base = super::queueing_tests::waiting_policy_text();
        let steps = "steps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]";
        let variants = [
            base.replace(steps, ""),
            base.replace(steps, "steps = [{ after = \"30s\", overflow_to = \"frontline\" }]")
                .replacen("max_waiting = 20", "max_waiting = 3", 1),
            base.replacen("skills = { billing = 2 }", "skills = { billing = 4 }", 1),
            base.replacen(
                "channels = [\"voice\", \"chat\", \"email\", \"portal\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
                "channels = [\"voice\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
                1,
            ),
            base.replacen("max_wait = \"2h\"", "max_wait = \"2h\"\nmax_wait_in_line = \"90s\"", 1),
            base.replacen("wrap_up = \"45s\"\n", "", 1),
            base.replacen("id = \"billing\"\nlevel", "id = \"billing_v2\"\nlevel", 1)
                .replacen("route_to = \"billing\"\n", "route_to = \"billing_v2\"\n", 1),
            // Cross-channel utilization: a chat blocks calls, a call chats.
            format!(
                "{base}\n[utilization.voice]\nblocked_by = {{ chat = 1 }}\n[utilization.chat]\nblocked_by = {{ voice = 1 }}\n"
            ),
        ];
        let mut policies = vec![
            Arc::new(Policy::embedded().unwrap()),
            Arc::new(super::queueing_tests::waiting_policy()),
        ];
        for (i, text) in variants.iter().enumerate() {
            assert_ne!(text, &base, "variant {i} changed nothing");
            policies.push(Arc::new(crate::policy::parse(&format!("variant-{i}.toml"), text).unwrap()));
        }
        policies
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>(), proptest::option::of(0u8..4))
            .prop_map(|(contact, chat, preferred)| Op::Route { contact, chat, preferred }),
        1 => any::<u8>().prop_map(Op::Reroute),
        1 => any::<u8>().prop_map(Op::Refused),
        2 => any::<u8>().prop_map(Op::Confirm),
        1 => (any::<u8>(), 0u8..5).prop_map(|(k, why)| Op::Release(k, why)),
        1 => any::<u8>().prop_map(Op::Complete),
        1 => (0u8..4, 0u8..5).prop_map(|(a, s)| Op::State(a, s)),
        2 => (0u16..20_000).prop_map(Op::Wait),
        1 => any::<u8>().prop_map(Op::Hours),
        1 => (0u8..4, 0u8..3).prop_map(|(a, chat)| Op::Reprofile(a, chat)),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => any::<u8>().prop_map(Op::Retry),
        1 => any::<u8>().prop_map(Op::Reload),
        1 => (0u8..4).prop_map(Op::Remove),
        1 => (0u8..4).prop_map(Op::Watch),
        1 => any::<u8>().prop_map(Op::Unwatch),
        1 => any::<u8>().prop_map(Op::Limits),
        1 => Just(Op::Restart),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Failover),
    ]
}

/// Runs `ops` on `e`, checking the invariants after each, and that every
/// contact that was queued ends assigned and confirmed, cancelled, called
/// back, re-routed, or still waiting: none is lost.
/// The oracle for "longest idle", by brute force over every agent: no
/// agent eligible for the queue, free on the contact's channel and (unless
/// an interpreter is needed) speaking its language, was idle longer on that
/// channel than the one chosen, counting idle time from when each last
/// became free there (a state change, a completion, a wrap-up's end, a
/// release or a lapse). Ties go to the lower slot, at millisecond grain.
/// An interpreter is needed only if no such agent speaks the language.
fn longest_idle_oracle(
    e: &Engine,
    c: &Contact,
    offer: &AgentOffer,
    ready_before: &[[i64; 5]],
) -> Result<(), TestCaseError> {
    let q = e.policy.queue_idx(&offer.queue_id).unwrap();
    let k = c.channel.index();
    let chosen = e.roster.find(&offer.agent_id).unwrap();
    let key = |a: AgentIdx| (ready_before[a as usize][k].div_euclid(1000), a);
    let language = c.language.as_deref().unwrap_or(&e.policy.default_language);
    for (i, agent) in e.roster.agents().iter().enumerate() {
        let a = i as AgentIdx;
        let speaks = e
            .roster
            .speakers_of(language)
            .any(|l| agent.languages.contains(&l));
        if a == chosen
            || agent.removed
            || !agent.queues.contains(&q)
            || !agent.free_channels(e.roster.blocks()).contains(c.channel)
        {
            continue;
        }
        // An interpreter only when no free agent speaks the language.
        prop_assert!(
            !(offer.interpreter_needed && speaks),
            "{} chosen with an interpreter while {} speaks {}",
            offer.agent_id,
            agent.id,
            language
        );
        if !offer.interpreter_needed && !speaks {
            continue;
        }
        prop_assert!(
            key(a) > key(chosen),
            "{} chosen (free since {}) while {} was free since {}",
            offer.agent_id,
            ready_before[chosen as usize][k],
            agent.id,
            ready_before[i][k]
        );
    }
    Ok(())
}

/// Everything an engine holds, in a canonical order (hash maps sorted),
/// so two engines' states can be compared.
pub(crate) fn fingerprint(e: &Engine) -> String {
    let mut reservations: Vec<_> = e.reservations.iter().collect();
    reservations.sort_by_key(|(id, _)| **id);
    let mut offers: Vec<_> = e.offers.iter().collect();
    offers.sort();
    let mut timers: Vec<_> = e.timers.iter().collect();
    timers.sort();
    format!(
        "{}\n{}\n{reservations:?}\n{offers:?}\n{} {:?} {:?}\n{timers:?}\n{}\n{}\n{}\n{} {} {:?}\n{}\n{:?}\n{:?} {:?} {:?}\n{}\n{}\n{:?}\n{:?} {:?}",
        e.policy.source,
        e.roster.fingerprint(),
        e.ledger.first,
        e.ledger.fates,
        e.ledger.epochs,
        e.replies.fingerprint(),
        e.settle_replies.fingerprint(),
        e.paths.fingerprint(),
        e.next_id,
        e.epoch,
        e.counters,
        e.waiting.fingerprint(),
        e.stats,
        e.events,
        e.sweep_due,
        e.unstaffed_since,
        e.watchers.fingerprint(),
        e.undelivered.fingerprint(),
        e.now,
        e.limits(),
        e.config.id_key,
    )
}

fn run(make: impl Fn() -> Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut e = make();
    let mut now = open();
    // Every command applied, with its time and whether it was refused:
    // replayed into a fresh engine at the end, each must come to the same
    // result, and the whole to the same state.
    let mut log: Vec<(Time, Command, bool)> = Vec::new();
    // Every event the commands set off, in order: a replay tells them again
    // (a watcher resumes across a restart or a failover).
    let mut told: Vec<Event> = Vec::new();
    // What each logged command changed by itself, record by record: a
    // replay notes the same.
    let mut noticed: Vec<Notices> = Vec::new();
    macro_rules! apply {
        ($command:expr) => {{
            let command = $command;
            let logged = Command::from(command.clone());
            let out = e.apply(command, now);
            log.push((now, logged, out.is_err()));
            noticed.push(e.take_notices());
            out
        }};
    }
    // As the service does: a tick with nothing due that tells nothing is
    // not logged, since it changes nothing a replay would miss. The
    // replays below check that claim.
    macro_rules! idle_tick {
        () => {{
            let nothing_due = e.nothing_due(now);
            apply!(Tick).unwrap();
            if nothing_due && e.events.is_empty() && noticed.last().is_some_and(Notices::is_empty) {
                log.pop();
                noticed.pop();
            }
        }};
    }
    for i in 0..4u8 {
        let languages: &[&str] = if i % 2 == 0 { &["en", "es"] } else { &["en"] };
        let spec = billing_agent(&format!("b{i}"), languages, 1, i % 3);
        let agent_id = spec.id.clone();
        apply!(UpsertAgent(spec)).unwrap();
        apply!(SetAgentState {
            agent_id,
            state: AgentState::Available
        })
        .unwrap();
    }
    // A CTI watches the whole floor from the start; watchers come and go,
    // that one too.
    let mut watchers: Vec<WatchId> = vec![apply!(Watch(WatchFilter::default())).unwrap().0];
    // A standby's last snapshot: the log's length when it was taken, and
    // the state.
    let mut standby: Option<(usize, Vec<u8>)> = None;
    let mut offered: Vec<ReservationId> = Vec::new();
    // Every decision and RouteContact reservation id given, those of a
    // command a failover lost included: none is ever given again.
    let mut given: std::collections::HashSet<u128> = Default::default();
    let mut active: Vec<(String, String)> = Vec::new();
    let mut waiting: std::collections::HashSet<String> = Default::default();
    // Offers made to waiting contacts.
    let mut assignments: std::collections::HashSet<ReservationId> = Default::default();
    // Settling commands sent with a request id (every other one), with
    // their first answer, for retries.
    let mut settled_once: Vec<(SentOnce, Kept, Time, usize)> = Vec::new();
    // The log's length when the limits last changed: replies sent before
    // it may have been forgotten early (a smaller window or cap).
    let mut limits_changed = 0usize;
    for op in ops {
        // Routed again, a contact with an offer out is routed as any other.
        let op = match op {
            Op::Reroute(k) if !offered.is_empty() => {
                let r = offered[usize::from(k) % offered.len()];
                let again = e.reservations.get(&r).and_then(|r| {
                    let contact = r.contact_id.strip_prefix('c')?.parse().ok()?;
                    let chat = r.channel == Channel::Chat;
                    Some(Op::Route {
                        contact,
                        chat,
                        preferred: None,
                    })
                });
                again.unwrap_or(Op::Reroute(k))
            }
            other => other,
        };
        // What a tick in place of a refused route told.
        let mut tick_told = None;
        match op {
            Op::Refused(k) => {
                // A refused route changes only what a tick would (what fell
                // due): the log keeps a tick in its place, and not what the
                // request carried. The final replay checks that log too.
                let mut c = billing(&format!("c{k}"));
                match k % 6 {
                    0 => c.intent = "astrology".into(),
                    1 => c.attributes = vec![("patient_name".into(), "x".into())],
                    2 => c.attributes = vec![("coverage".into(), "x".into())],
                    3 => c.intent.clear(),
                    4 => {
                        c.urgency = Urgency::Emergency;
                        c.signals = vec!["jane_doe".into()];
                    }
                    _ => {
                        // A request id answered, sent again with another
                        // request.
                        c.request_id = Some(format!("r{}", log.len()));
                        waiting.remove(&c.contact_id);
                        match apply!(Route(&c)).unwrap().outcome {
                            Outcome::Agent(a) => offered.push(a.reservation),
                            Outcome::Queued(_) => {
                                waiting.insert(c.contact_id.clone());
                            }
                            _ => {}
                        }
                        c.escalation_requested = !c.escalation_requested;
                    }
                }
                let mut ticked = e.clone();
                let nothing_due = e.nothing_due(now);
                prop_assert!(e.apply(Route(&c), now).is_err());
                ticked.apply(Tick, now).unwrap();
                prop_assert_eq!(fingerprint(&ticked), fingerprint(&e));
                let told = ticked.take_events();
                let notices = e.take_notices();
                prop_assert_eq!(
                    &ticked.take_notices(),
                    &notices,
                    "a tick noted other changes"
                );
                // Not logged at all if that tick would not have been.
                if !(nothing_due && told.is_empty() && notices.is_empty()) {
                    log.push((now, Command::from(Tick), false));
                    noticed.push(notices);
                }
                tick_told = Some(told);
            }
            Op::Route {
                contact,
                chat,
                preferred,
            } => {
                let mut c = billing(&format!("c{contact}"));
                if chat {
                    c.channel = Channel::Chat;
                }
                c.preferred_agent_id = preferred.map(|p| format!("b{p}"));
                if contact % 3 == 0 {
                    c.language = Some("es".into());
                }
                waiting.remove(&c.contact_id); // a new hop replaces its place
                // ... and withdraws the offer an earlier hop reserved.
                let held: Vec<ReservationId> = e
                    .reservations
                    .values()
                    .filter(|r| r.contact_id == c.contact_id)
                    .map(|r| r.id)
                    .collect();
                let mut ready_before: Vec<[i64; 5]> =
                    e.roster.agents().iter().map(|a| a.ready_since).collect();
                // Where the withdrawal puts the agent of each: back where it
                // stood before the offer when that was its only work on the
                // channel and nothing moved it since, else free from now
                // (on the channel, and on any the offer blocked).
                let withdrawn: Vec<(AgentIdx, [i64; 5])> = held
                    .iter()
                    .filter_map(|r| e.reservations.get(r))
                    .map(|r| {
                        let (agent, k) = (e.roster.agent(r.agent), r.channel.index());
                        let mut ready = agent.ready_since;
                        let blocks = e.roster.blocks();
                        let mut freed = agent.clone();
                        freed.reserved[k] -= 1;
                        let (was, is) = (
                            agent.blocked_channels(blocks),
                            freed.blocked_channels(blocks),
                        );
                        let restored = agent.reserved[k] == 1
                            && agent.active[k] == 0
                            && ready[k] == r.offered_at;
                        if restored {
                            ready[k] = r.idle_since;
                        }
                        for ch in Channel::ALL {
                            // Freed from a block; restored, only one that
                            // other work had set when the offer was made.
                            let unblocked = was.contains(ch)
                                && !is.contains(ch)
                                && (!restored || r.blocked_at_offer.contains(ch));
                            if (ch == r.channel && !restored) || unblocked {
                                ready[ch.index()] = now.timestamp_micros();
                            }
                        }
                        (r.agent, ready)
                    })
                    .collect();
                let d = apply!(Route(&c)).unwrap();
                prop_assert!(given.insert(d.id.0), "a decision id given twice");
                if let Outcome::Agent(a) = &d.outcome {
                    prop_assert!(
                        given.insert(a.reservation.0),
                        "a reservation id given twice"
                    );
                }
                for r in held {
                    prop_assert!(
                        !e.reservations.contains_key(&r),
                        "an earlier hop's offer outlived the new hop"
                    );
                }
                for (agent, ready) in withdrawn {
                    ready_before[agent as usize] = ready;
                }
                if let Outcome::Agent(a) = &d.outcome
                    && d.reasons.contains(&Reason::LongestIdle)
                {
                    longest_idle_oracle(&e, &c, a, &ready_before)?;
                }
                match d.outcome {
                    Outcome::Agent(a) => {
                        // The reservation fits the agent's capacity on that
                        // channel. (A profile change may lower capacity below
                        // work in progress; no new reservation may then come.)
                        let agent = e.roster.agent(e.roster.find(&a.agent_id).unwrap());
                        let k = c.channel.index();
                        prop_assert!(agent.reserved[k] + agent.active[k] <= agent.capacity[k]);
                        offered.push(a.reservation);
                    }
                    Outcome::Queued(_) => {
                        waiting.insert(c.contact_id.clone());
                    }
                    _ => {}
                }
            }
            Op::Confirm(k) if !offered.is_empty() => {
                let r = offered.remove(usize::from(k) % offered.len());
                let confirmed = if k % 2 == 1 {
                    let once = Once {
                        request_id: format!("q{}", log.len()),
                        command: Confirm(r),
                    };
                    let answered = apply!(once.clone());
                    if let Ok(a) = &answered {
                        prop_assert!(!a.replayed);
                        settled_once.push((
                            SentOnce::Confirm(once),
                            Confirm::keep(&a.out),
                            now,
                            log.len(),
                        ));
                    }
                    answered.map(|a| a.out)
                } else {
                    apply!(Confirm(r))
                };
                if let Ok((agent, contact)) = confirmed {
                    if assignments.contains(&r) {
                        waiting.remove(&contact);
                    }
                    active.push((agent.to_string(), contact));
                }
            }
            Op::Release(k, why) if !offered.is_empty() => {
                // Every reason: the agent's own (rejected, no answer), the
                // caller's (hung up: a waiting contact leaves its line) and
                // the network's (transfer failed).
                let r = offered.remove(usize::from(k) % offered.len());
                let reason = [
                    ReleaseReason::Unspecified,
                    ReleaseReason::Rejected,
                    ReleaseReason::NoAnswer,
                    ReleaseReason::CallerHungUp,
                    ReleaseReason::TransferFailed,
                ][usize::from(why) % 5];
                let line = e.reservations.get(&r).and_then(|x| {
                    let w = e.waiting.get(x.waiter?)?;
                    Some(w.contact_id.clone())
                });
                let agent = e.reservations.get(&r).map(|x| x.agent);
                let missed = agent.map(|a| e.roster.agent(a).missed_offers);
                let released = if k % 2 == 1 {
                    let once = Once {
                        request_id: format!("q{}", log.len()),
                        command: Release(r, reason),
                    };
                    let answered = apply!(once.clone());
                    if let Ok(a) = &answered {
                        prop_assert!(!a.replayed);
                        settled_once.push((
                            SentOnce::Release(once),
                            Release::keep(&a.out),
                            now,
                            log.len(),
                        ));
                    }
                    answered.map(|a| a.out)
                } else {
                    apply!(Release(r, reason))
                };
                if released.is_ok() {
                    if let Some(contact) = line.filter(|_| reason == ReleaseReason::CallerHungUp) {
                        prop_assert!(
                            e.waiting.find(&contact).is_none(),
                            "a caller who hung up still waits"
                        );
                        waiting.remove(&contact);
                    }
                    // Only the agent's own misses count toward its pause.
                    if let (Some(a), Some(before)) = (agent, missed) {
                        let after = e.roster.agent(a).missed_offers;
                        if !reason.agents_miss() {
                            prop_assert!(
                                after <= before,
                                "{:?} counted as the agent's miss",
                                reason
                            );
                        }
                    }
                }
            }
            Op::Complete(k) if !active.is_empty() => {
                let (agent, contact) = active.remove(usize::from(k) % active.len());
                let complete = Complete {
                    agent_id: agent,
                    contact_id: contact,
                };
                if k % 2 == 1 {
                    let once = Once {
                        request_id: format!("q{}", log.len()),
                        command: complete,
                    };
                    let a = apply!(once.clone()).unwrap();
                    prop_assert!(!a.replayed);
                    settled_once.push((
                        SentOnce::Complete(once),
                        Complete::keep(&a.out),
                        now,
                        log.len(),
                    ));
                } else {
                    apply!(complete).unwrap();
                }
            }
            Op::Retry(k) if !settled_once.is_empty() => {
                // While its reply is kept the first answer comes back and
                // nothing changes; once it is forgotten (the window passed,
                // or the limits shrank it) the command acts anew: a confirm
                // or release meets its settled reservation, a completion or
                // cancel acts only on work the model says is there.
                let which = usize::from(k) % settled_once.len();
                let (sent, first, sent_at, sent_len) = settled_once[which].clone();
                // Kept for sure: no limit changed since, well inside the
                // window, and fewer requests sent with an id than the cap.
                let window = Duration::milliseconds(e.limits().idempotency_retention_ms);
                let kept_for_sure = limits_changed < sent_len
                    && now - sent_at + Duration::seconds(1) < window
                    && log
                        .iter()
                        .filter(|(_, c, _)| matches!(c, Command::Once { .. }))
                        .count()
                        < e.limits().max_idempotency_keys;
                // What is due now fires first, so the retry alone is seen.
                apply!(Tick).unwrap();
                let before = fingerprint(&e);
                let was_waiting = match &sent {
                    SentOnce::Cancel(once) => e.waiting.find(&once.command.0).is_some(),
                    _ => false,
                };
                let answered = match sent.clone() {
                    SentOnce::Confirm(once) => {
                        apply!(once).map(|a| (Confirm::keep(&a.out), a.replayed))
                    }
                    SentOnce::Release(once) => {
                        apply!(once).map(|a| (Release::keep(&a.out), a.replayed))
                    }
                    SentOnce::Complete(once) => {
                        apply!(once).map(|a| (Complete::keep(&a.out), a.replayed))
                    }
                    SentOnce::Cancel(once) => {
                        apply!(once).map(|a| (Cancel::keep(&a.out), a.replayed))
                    }
                };
                if kept_for_sure {
                    prop_assert!(
                        matches!(answered, Ok((_, true))),
                        "a retry inside the window was not answered from the first: {:?} -> {:?}",
                        sent,
                        answered
                    );
                }
                match (answered, &sent) {
                    (Ok((kept, true)), _) => {
                        prop_assert_eq!(&kept, &first);
                        prop_assert_eq!(fingerprint(&e), before, "a retry changed the state");
                    }
                    // Acting anew, its answer is the one kept from now on.
                    (Ok((kept, false)), SentOnce::Complete(once)) => {
                        let pair = (
                            once.command.agent_id.clone(),
                            once.command.contact_id.clone(),
                        );
                        let held = active.iter().position(|p| *p == pair);
                        prop_assert!(held.is_some(), "completed work the model does not hold");
                        if let Some(i) = held {
                            active.remove(i);
                        }
                        settled_once[which] = (sent.clone(), kept, now, log.len());
                    }
                    (Ok((kept, false)), SentOnce::Cancel(once)) => {
                        prop_assert!(was_waiting, "cancelled a contact not waiting");
                        waiting.remove(&once.command.0);
                        settled_once[which] = (sent.clone(), kept, now, log.len());
                    }
                    (Ok(_), sent) => prop_assert!(false, "{:?} settled twice", sent),
                    // Forgotten, and acting anew: only what each can meet.
                    (Err(err), SentOnce::Confirm(_) | SentOnce::Release(_)) => prop_assert!(
                        matches!(
                            err,
                            EngineError::ReservationSettled { .. }
                                | EngineError::UnknownReservation(_)
                        ),
                        "{:?}",
                        err
                    ),
                    (Err(err), SentOnce::Complete(_)) => prop_assert!(
                        matches!(
                            err,
                            EngineError::NoActiveContact { .. } | EngineError::UnknownAgent(_)
                        ),
                        "{:?}",
                        err
                    ),
                    (Err(err), SentOnce::Cancel(_)) => {
                        prop_assert!(matches!(err, EngineError::NotWaiting(_)), "{:?}", err)
                    }
                }
            }
            Op::Cancel(contact) => {
                let id = format!("c{contact}");
                let was = e.waiting.find(&id).is_some();
                let cancelled = if contact % 2 == 1 {
                    let once = Once {
                        request_id: format!("q{}", log.len()),
                        command: Cancel(id.clone()),
                    };
                    let answered = apply!(once.clone());
                    if let Ok(a) = &answered {
                        prop_assert!(!a.replayed);
                        settled_once.push((
                            SentOnce::Cancel(once),
                            Cancel::keep(&a.out),
                            now,
                            log.len(),
                        ));
                    }
                    answered.map(|a| a.out)
                } else {
                    apply!(Cancel(id.clone()))
                };
                prop_assert_eq!(cancelled.is_ok(), was);
                waiting.remove(&id);
            }
            Op::State(a, s) => {
                let id = format!("b{a}");
                let known = e.roster.find(&id).is_some();
                let set = apply!(SetAgentState {
                    agent_id: id,
                    state: AgentState::ALL[usize::from(s)]
                });
                prop_assert_eq!(set.is_ok(), known);
            }
            Op::Remove(a) => {
                // Refused while the agent holds work; its slot is reused by
                // the next agent added (a Reprofile of a removed agent).
                let id = format!("b{a}");
                let busy = e.roster.find(&id).map(|i| {
                    let agent = e.roster.agent(i);
                    agent.reserved.iter().any(|&n| n > 0) || !agent.contacts.is_empty()
                });
                match (apply!(RemoveAgent(id.clone())), busy) {
                    (Ok(()), Some(false)) => prop_assert!(e.roster.find(&id).is_none()),
                    (Err(EngineError::AgentBusy { .. }), Some(true)) => {}
                    (Err(EngineError::UnknownAgent(_)), None) => {}
                    (got, busy) => {
                        prop_assert!(false, "remove {}: {:?} (busy {:?})", id, got, busy)
                    }
                }
            }
            Op::Reprofile(a, chat) => {
                // New languages and chat capacity, work in progress kept.
                let languages: &[&str] = if chat == 0 { &["es"] } else { &["en", "vi"] };
                apply!(UpsertAgent(billing_agent(
                    &format!("b{a}"),
                    languages,
                    1,
                    chat.max(1)
                )))
                .unwrap();
            }
            Op::Wait(ms) => {
                now += Duration::milliseconds(i64::from(ms));
                idle_tick!();
            }
            Op::Hours(h) => {
                now += Duration::hours(1 + i64::from(h % 6));
                idle_tick!();
            }
            Op::Reload(k) => {
                let policies = reload_policies();
                apply!(ReplacePolicy(Arc::clone(
                    &policies[usize::from(k) % policies.len()]
                )))
                .unwrap();
            }
            Op::Watch(k) => {
                // The whole floor, one agent, the team, or the billing queue
                // only (which covers no agent).
                let filter = match k {
                    0 => WatchFilter::default(),
                    1 => WatchFilter {
                        agents: ["b1".into()].into(),
                        ..WatchFilter::default()
                    },
                    2 => WatchFilter {
                        teams: ["Billing".into()].into(),
                        ..WatchFilter::default()
                    },
                    _ => WatchFilter {
                        queues: ["billing".into()].into(),
                        ..WatchFilter::default()
                    },
                };
                let (id, live) = match apply!(Watch(filter)) {
                    Ok(watched) => watched,
                    Err(other) => {
                        prop_assert!(false, "watch refused: {:?}", other);
                        continue;
                    }
                };
                for event in &live {
                    // Offers still live; callbacks and moves nobody watched,
                    // the latest per contact, for contacts that took no
                    // new hop since.
                    let a = match event {
                        Event::Assigned(a) => a,
                        Event::CallbackInstead { contact_id, .. } => {
                            prop_assert!(
                                !waiting.contains(contact_id),
                                "a stale callback for {}",
                                contact_id
                            );
                            continue;
                        }
                        Event::Moved { contact_id, .. } => {
                            prop_assert!(
                                waiting.contains(contact_id),
                                "a stale move for {}",
                                contact_id
                            );
                            continue;
                        }
                        Event::Withdrawn { .. } => {
                            prop_assert!(false, "a withdrawal is never kept");
                            continue;
                        }
                    };
                    prop_assert!(
                        e.reservations.contains_key(&a.offer.reservation),
                        "resent an offer not live"
                    );
                }
                watchers.push(id);
            }
            Op::Limits(k) => {
                // Short and long windows, small and large caps: retries
                // answered from memory or decided anew, paths forgotten.
                let limits = Limits {
                    idempotency_retention_ms: [1_000, 600_000][usize::from(k) % 2],
                    max_idempotency_keys: [3, 10_000][usize::from(k / 2) % 2],
                    path_retention_ms: [5_000, 86_400_000][usize::from(k / 4) % 2],
                    max_paths: [4, 10_000][usize::from(k / 8) % 2],
                    max_hops: [2, 32][usize::from(k / 16) % 2],
                    max_agents: 100_000,
                };
                apply!(Configure(limits)).unwrap();
                prop_assert_eq!(e.limits(), limits);
                limits_changed = log.len();
            }
            Op::Restart => {
                // The process restarted: every watcher is gone with it.
                apply!(Command::Restarted(Restarted {
                    epoch: log.len() as u32 + 1
                }))
                .unwrap();
                watchers.clear();
                prop_assert_eq!(e.watchers(), 0);
            }
            Op::Snapshot => {
                // A restart from a snapshot: the loaded engine is the same
                // state, and the same commands after it decide the same
                // (the final replay of the whole log checks that).
                let state = e.encode_state().unwrap();
                let loaded = Engine::decode_state(&state).unwrap();
                prop_assert_eq!(fingerprint(&loaded), fingerprint(&e));
                e = loaded;
                standby = Some((log.len(), state));
            }
            Op::Failover => {
                // The old leader's last command never reached the log: a
                // new contact routed (perhaps reserving an agent), its
                // answer never sent. Nothing of it may survive.
                let lost = billing("lost-in-failover");
                if let Ok(d) = e.apply(Route(&lost), now) {
                    given.insert(d.id.0);
                    if let Outcome::Agent(a) = &d.outcome {
                        given.insert(a.reservation.0);
                    }
                }
                e.take_events();
                // The standby: its snapshot (or the log's start) and every
                // record after it, as it tailed them.
                let (from, mut next) = match &standby {
                    Some((at, state)) => (*at, Engine::decode_state(state).unwrap()),
                    None => (0, make()),
                };
                for (i, (at, command, refused)) in log.iter().enumerate().skip(from) {
                    let out = next.apply(command.clone(), *at);
                    prop_assert_eq!(
                        out.is_err(),
                        *refused,
                        "record {} came to another result",
                        i
                    );
                    next.take_events();
                }
                prop_assert!(next.contact_status(&lost.contact_id).is_none());
                e = next;
                apply!(Command::Restarted(Restarted {
                    epoch: log.len() as u32 + 1
                }))
                .unwrap();
                watchers.clear();
            }
            Op::Unwatch(k) if !watchers.is_empty() => {
                let id = watchers.remove(usize::from(k) % watchers.len());
                apply!(Unwatch(id)).unwrap();
            }
            _ => {}
        }
        let events = e.take_events();
        if let Some(ticked) = tick_told {
            prop_assert_eq!(ticked, events.clone(), "a tick told other events");
        }
        told.extend(events.iter().cloned());
        for event in events {
            match event {
                Event::Assigned(a) => {
                    prop_assert!(
                        waiting.contains(&a.contact_id),
                        "assigned a contact not waiting: {}",
                        a.contact_id
                    );
                    assignments.insert(a.offer.reservation);
                    offered.push(a.offer.reservation);
                }
                Event::CallbackInstead { contact_id, .. } => {
                    prop_assert!(
                        waiting.remove(&contact_id),
                        "called back a contact not waiting"
                    );
                }
                Event::Withdrawn { reservation, .. } => {
                    prop_assert!(
                        assignments.contains(&reservation),
                        "withdrew an offer never made"
                    );
                    prop_assert!(
                        !e.reservations.contains_key(&reservation),
                        "a withdrawn offer is live"
                    );
                }
                Event::Moved { contact_id, .. } => {
                    prop_assert!(waiting.contains(&contact_id), "moved a contact not waiting");
                }
            }
        }
        check_invariants(&e, now);
        let mut in_room: Vec<_> = waiting
            .iter()
            .filter(|c| e.waiting.find(c).is_none())
            .collect();
        in_room.sort();
        prop_assert!(in_room.is_empty(), "lost waiting contacts: {:?}", in_room);
        prop_assert_eq!(
            e.waiting_contacts(),
            waiting.len(),
            "the room holds contacts nobody queued"
        );
    }
    // A last record at the live engine's time: the ticks left out of the
    // log (nothing was due) moved its clock and nothing a replay misses.
    apply!(Tick).unwrap();
    told.extend(e.take_events());
    // The engine is a function of its log: the same commands at the same
    // times, applied to a fresh engine, give the same state.
    // Through the log's own form: each command written as JSON and read
    // back (a policy as its text, parsed again).
    let mut twin = make();
    let mut told_again = Vec::new();
    let mut noticed_again = Vec::new();
    for (i, (at, command, refused)) in log.into_iter().enumerate() {
        let json = serde_json::to_string(&command).unwrap();
        let command: Command = serde_json::from_str(&json).unwrap();
        let out = twin.apply(command, at);
        prop_assert_eq!(
            out.is_err(),
            refused,
            "record {} replayed to another result",
            i
        );
        told_again.extend(twin.take_events());
        noticed_again.push(twin.take_notices());
    }
    prop_assert_eq!(fingerprint(&twin), fingerprint(&e), "replay diverged");
    prop_assert_eq!(told_again, told, "the replay told other events");
    prop_assert_eq!(noticed_again, noticed, "the replay noted other changes");

    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random interleavings of route, confirm, release, complete, cancel,
    /// expiry, state and profile changes never reserve an agent beyond its
    /// capacity, never keep a reservation past its TTL, and keep every index
    /// and count equal to a brute-force recount.
    #[test]
    fn no_interleaving_double_books_an_agent(ops in proptest::collection::vec(op(), 1..120)) {
        run(|| Engine::new(Arc::new(Policy::embedded().unwrap()), EngineConfig::default()), ops)?;
    }

    /// The same with live queueing on: additionally, no waiting contact is
    /// lost or assigned twice, offers and waiters agree, and nobody waits
    /// while an agent who may take them is free.
    #[test]
    fn no_interleaving_loses_or_double_assigns_a_waiting_contact(ops in proptest::collection::vec(op(), 1..160)) {
        let policy = Arc::new(super::queueing_tests::waiting_policy());
        run(|| Engine::new(Arc::clone(&policy), EngineConfig::default()), ops)?;
    }
}

/// The fingerprint tells apart engines that differ by one command, and not
/// engines that differ only in their hash maps' seeds.
#[test]
fn the_fingerprint_sees_one_command_and_ignores_hash_order() {
    let make = || {
        Engine::new(
            Arc::new(Policy::embedded().unwrap()),
            EngineConfig::default(),
        )
    };
    let (mut a, mut b) = (make(), make());
    for e in [&mut a, &mut b] {
        for i in 0..20 {
            add(e, billing_agent(&format!("b{i}"), &["en"], 1, 0), open());
        }
    }
    assert_eq!(fingerprint(&a), fingerprint(&b));
    b.apply(Tick, open() + Duration::seconds(1)).unwrap();
    assert_ne!(fingerprint(&a), fingerprint(&b));
}

/// A command dated before the last one is applied at the last one's time,
/// and counted: the engine's clock never goes backwards.
#[test]
fn the_clock_never_goes_backwards() {
    let mut e = engine();
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.apply(Route(&billing("c1")), t).unwrap();
    let Outcome::Agent(first) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(e.counters().clock_went_back, 0);
    let earlier = t - Duration::seconds(30);
    e.apply(Release(first.reservation, ReleaseReason::Rejected), t)
        .unwrap();
    let d = e.apply(Route(&billing("c2")), earlier).unwrap();
    let Outcome::Agent(second) = &d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(second.expires_at, t + e.policy().reservation_ttl);
    assert_eq!(e.counters().clock_went_back, 1);
}

/// Issue 10: with no wrap-up, an agent who just finished a long call goes
/// behind agents who have waited longer; the same after a release. Idle time
/// counts from when the agent last became free on the channel.
#[test]
fn idle_time_counts_from_the_end_of_the_last_contact() {
    let text = crate::policy::DEFAULT_POLICY.replacen("wrap_up = \"45s\"\n", "", 1);
    assert_ne!(text, crate::policy::DEFAULT_POLICY);
    let policy = crate::policy::parse("no-wrap-up.toml", &text).unwrap();
    let mut e =
        super::queueing_tests::watched(Engine::new(Arc::new(policy), EngineConfig::default()));
    let t = open();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), t);
    let d = e.route(&billing("long-call"), t).unwrap();
    let a = offer(&d).clone();
    assert_eq!(&*a.agent_id, "b1");
    e.confirm(a.reservation, t).unwrap();
    // b2 logs in five seconds later; b1's call lasts ten minutes.
    add(
        &mut e,
        billing_agent("b2", &["en"], 1, 0),
        t + Duration::seconds(5),
    );
    let done = t + Duration::minutes(10);
    e.complete("b1", "long-call", done).unwrap();
    let next = e
        .route(&billing("next"), done + Duration::seconds(1))
        .unwrap();
    assert_eq!(&*offer(&next).agent_id, "b2", "b2 has waited longer");
    // b2 rejects it: b2 is free again from the release, behind b1.
    e.release(
        offer(&next).reservation,
        ReleaseReason::Rejected,
        done + Duration::seconds(2),
    )
    .unwrap();
    let after = e
        .route(&billing("after"), done + Duration::seconds(3))
        .unwrap();
    assert_eq!(&*offer(&after).agent_id, "b1");
}

/// An engine with one billing agent, b1, available at the open; its index,
/// and the policy's misses before a pause.
fn one_billing_agent() -> (Engine, AgentIdx, u32) {
    let mut e = engine();
    add(&mut e, billing_agent("b1", &["en"], 1, 0), open());
    let limit = e.policy().missed_offers_to_pause;
    let b1 = e.roster.find("b1").unwrap();
    (e, b1, limit)
}

/// A RouteContact reservation that lapses is the IVR's silence, not an
/// offer the agent saw (the IVR may never have transferred): however many
/// lapse, the agent is not paused. An offer from the line that it could
/// see and that lapsed is its miss.
#[test]
fn lapsed_route_contact_reservations_are_not_the_agents_miss() {
    let (mut e, b1, limit) = one_billing_agent();
    let mut now = open();
    for i in 0..2 * limit {
        let d = e.route(&billing(&format!("c{i}")), now).unwrap();
        assert_eq!(&*offer(&d).agent_id, "b1");
        now = offer(&d).expires_at + Duration::seconds(1);
        e.apply(Tick, now).unwrap();
    }
    assert_eq!(e.roster.agent(b1).state, AgentState::Available);
    assert_eq!(e.roster.agent(b1).missed_offers, 0);
}

/// Issue 10: only the agent's own misses pause it. Releases for a caller
/// who hung up, a failed transfer or no reason never do; three rejections
/// in a row do. A waiting caller who hung up while the offer rang leaves
/// the line, counted as abandoned.
#[test]
fn only_the_agents_own_misses_pause_it() {
    let (mut e, b1, limit) = one_billing_agent();
    let mut now = open();
    for (i, reason) in [
        ReleaseReason::CallerHungUp,
        ReleaseReason::TransferFailed,
        ReleaseReason::Unspecified,
    ]
    .into_iter()
    .cycle()
    .take(3 * limit as usize)
    .enumerate()
    {
        let d = e.route(&billing(&format!("c{i}")), now).unwrap();
        e.release(offer(&d).reservation, reason, now).unwrap();
        now += Duration::seconds(1);
    }
    assert_eq!(e.roster.agent(b1).state, AgentState::Available);
    assert_eq!(e.roster.agent(b1).missed_offers, 0);
    for i in 0..limit {
        let d = e.route(&billing(&format!("r{i}")), now).unwrap();
        let reason = if i % 2 == 0 {
            ReleaseReason::Rejected
        } else {
            ReleaseReason::NoAnswer
        };
        e.release(offer(&d).reservation, reason, now).unwrap();
        now += Duration::seconds(1);
    }
    assert_eq!(e.roster.agent(b1).state, AgentState::NotResponding);
}
