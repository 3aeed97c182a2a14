//! End to end over gRPC: agent and reservation RPCs, views, bad input and its
//! status codes, health, reflection, metrics, and concurrency.

mod common;

use std::collections::HashSet;

use careroute::clock::Clock;
use careroute::grpc::pb;
use chrono::Duration;
use common::*;
use tonic::Code;

fn billing_agent(id: &str) -> pb::UpsertAgentRequest {
    pb::UpsertAgentRequest {
        agent_id: id.into(),
        team: "Billing".into(),
        transfer_address: format!("sip:{id}@pbx"),
        skills: vec![pb::SkillLevel {
            skill: "billing".into(),
            proficiency: 3,
        }],
        languages: vec!["en".into()],
        channels: vec![pb::ChannelCapacity {
            channel: pb::Channel::Voice.into(),
            capacity: 1,
        }],
    }
}

/// An entry of the StreamAgentStates feed.
fn entry(id: &str, s: pb::AgentState) -> pb::StreamAgentStatesRequest {
    pb::StreamAgentStatesRequest {
        agent_id: id.into(),
        state: s.into(),
    }
}

fn state(id: &str, s: pb::AgentState) -> pb::SetAgentStateRequest {
    pb::SetAgentStateRequest {
        agent_id: id.into(),
        state: s.into(),
    }
}

#[tokio::test]
async fn reservation_lifecycle_over_grpc() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    let up = client
        .upsert_agent(billing_agent("b1"))
        .await
        .unwrap()
        .into_inner();
    assert!(up.created);
    assert_eq!(up.eligible_queue_ids, vec!["billing".to_string()]);
    assert!(
        !client
            .upsert_agent(billing_agent("b1"))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    // Offline until the CTI says otherwise: unstaffed.
    let d = s.route(contact("c1", "billing")).await.unwrap();
    assert_eq!(
        callback(&d).reason,
        pb::CallbackReason::NoAgentsStaffed as i32
    );
    let prev = client
        .set_agent_state(state("b1", pb::AgentState::Available))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prev.previous, pb::AgentState::Offline as i32);

    // Route, release, route again, confirm, complete, wrap-up.
    let r1 = agent(&s.route(contact("c2", "billing")).await.unwrap())
        .reservation_id
        .clone();
    client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: r1.clone(),
            reason: pb::ReleaseReason::Rejected.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let r2 = agent(&s.route(contact("c3", "billing")).await.unwrap())
        .reservation_id
        .clone();
    let billing = s.queue("billing").await;
    assert_eq!(
        (
            billing.agents_staffed,
            billing.agents_available,
            billing.reservations
        ),
        (1, 0, 1)
    );
    assert!(billing.open);
    client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: r2,
            ..Default::default()
        })
        .await
        .unwrap();
    let done = client
        .complete_contact(pb::CompleteContactRequest {
            agent_id: "b1".into(),
            contact_id: "c3".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        done.wrap_up_until.unwrap().seconds,
        (monday_10am() + Duration::seconds(45)).timestamp()
    );
    assert!(matches!(
        s.route(contact("c4", "billing")).await.unwrap().outcome,
        Some(pb::route_contact_response::Outcome::Callback(_))
    ));
    s.clock.advance(Duration::seconds(45));
    agent(&s.route(contact("c5", "billing")).await.unwrap());

    // A released reservation cannot be confirmed.
    let err = client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: r1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    s.stop().await;
}

#[tokio::test]
async fn expired_reservation_frees_the_agent_and_refuses_confirm() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    client.upsert_agent(billing_agent("b1")).await.unwrap();
    client
        .set_agent_state(state("b1", pb::AgentState::Available))
        .await
        .unwrap();
    let r = agent(&s.route(contact("c1", "billing")).await.unwrap())
        .reservation_id
        .clone();
    s.clock.advance(Duration::seconds(15));
    let err = client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: r,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"));
    assert_eq!(
        agent(&s.route(contact("c2", "billing")).await.unwrap()).agent_id,
        "b1"
    );
    s.stop().await;
}

#[tokio::test]
async fn cti_feed_streams_agent_states() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    for id in ["b1", "b2", "b3"] {
        client.upsert_agent(billing_agent(id)).await.unwrap();
    }
    let feed = ["b1", "b2", "b3"].map(|id| entry(id, pb::AgentState::Available));
    let applied = client
        .stream_agent_states(tokio_stream::iter(feed))
        .await
        .unwrap()
        .into_inner()
        .applied;
    assert_eq!(applied, 3);
    let billing = s.queue("billing").await;
    assert_eq!(billing.agents_available, 3);
    // An unknown agent ends the stream with NOT_FOUND naming its entry;
    // entries before it stay applied.
    let feed = vec![
        entry("b1", pb::AgentState::Away),
        entry("ghost", pb::AgentState::Available),
        entry("b2", pb::AgentState::Away),
    ];
    let err = client
        .stream_agent_states(tokio_stream::iter(feed))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().starts_with("entry 1:"), "{}", err.message());
    let billing = s.queue("billing").await;
    assert_eq!(billing.agents_available, 2);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    let mut cases: Vec<(pb::RouteContactRequest, Code, &str)> = Vec::new();
    let mut c = contact("", "billing");
    cases.push((c.clone(), Code::InvalidArgument, "contact_id"));
    c = contact("c1", "billing");
    c.channel = 77;
    cases.push((c, Code::InvalidArgument, "channel"));
    c = contact("c1", "billing");
    c.attributes = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
    cases.push((c, Code::InvalidArgument, "attributes"));
    c = contact("c1", &"x".repeat(65));
    cases.push((c, Code::InvalidArgument, "intent"));
    // Far over the field's limit, still named (not a generic size error).
    c = contact("c1", &"x".repeat(64 * 1024));
    cases.push((c, Code::InvalidArgument, "intent"));
    c = contact("c1", "horoscope");
    cases.push((c, Code::InvalidArgument, "intent"));
    c = contact("c1", "billing");
    c.attributes.insert("patient_name".into(), "Jane".into());
    cases.push((c, Code::InvalidArgument, "attributes"));
    c = contact("c1", "billing");
    c.transfer_from = Some(pb::TransferFrom {
        queue_id: "nowhere".into(),
        agent_id: String::new(),
    });
    cases.push((c, Code::NotFound, "transfer_from.queue_id"));
    for (request, code, field) in cases {
        let err = client.route_contact(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert!(
            err.message().starts_with(field),
            "{} should name {field}",
            err.message()
        );
    }
    // Beyond what careroute decodes at all: RESOURCE_EXHAUSTED, stating
    // the limit.
    let huge = contact("c1", &"x".repeat(600 * 1024));
    let err = client.route_contact(huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("524288"), "{}", err.message());
    let err = client
        .set_agent_state(state("ghost", pb::AgentState::Available))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .set_agent_state(state("b1", pb::AgentState::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "state: required")
    );
    let err = client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: format!("r-{}", "deadbeef".repeat(4)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .complete_contact(pb::CompleteContactRequest {
            agent_id: "agent-billing-1".into(),
            contact_id: "never".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_contact_path(pb::GetContactPathRequest {
            contact_id: "never-routed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // None of it disturbed the service.
    agent(&s.route(contact("ok-1", "billing")).await.unwrap());
    s.stop().await;
}

#[tokio::test]
async fn refusals_carry_a_stable_reason_and_every_field_violation() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    let reason = |e: &tonic::Status| error_reason(e).map(|(r, _)| r);

    // Five fields wrong at once: one refusal names all five.
    let mut c = contact("", "Billing!");
    c.channel = 0;
    c.language = "en US".into();
    c.signals = vec!["ok".into(), "NOT OK".into()];
    let err = client.route_contact(c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        error_reason(&err),
        Some(("INVALID_FIELD".to_owned(), "careroute".to_owned()))
    );
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        ["channel", "contact_id", "intent", "language", "signals[1]"],
        "{err:?}"
    );
    for f in &fields {
        assert!(err.message().contains(f.as_str()), "{}", err.message());
    }
    // A language of the right characters that is no language tag.
    let mut c = contact("c-lang", "billing");
    c.language = "en--US".into();
    let err = client.route_contact(c).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["language"]);
    assert!(
        err.message().contains("well-formed BCP 47"),
        "{}",
        err.message()
    );
    // An agent profile with wrong fields and a wrong profile, likewise,
    // and no value repeated.
    let mut a = billing_agent("");
    a.transfer_address = String::new();
    a.skills[0].proficiency = 9;
    a.channels.push(a.channels[0]);
    a.languages = vec!["es".into(), "ES".into()];
    let err = client.upsert_agent(a).await.unwrap_err();
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "agent_id",
            "channels[1].channel",
            "languages[1]",
            "skills[0].proficiency",
            "transfer_address"
        ],
        "{err:?}"
    );
    assert!(!err.message().contains('9'), "{}", err.message());
    // Two fields of a small request.
    let err = client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: "bogus".into(),
            reason: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["reservation_id", "reason"]);
    // A word the policy does not know: its own reason, the field named.
    let err = client
        .route_contact(contact("c0", "horoscope"))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("UNKNOWN_INTENT"));
    assert_eq!(violated_fields(&err), ["intent"]);
    let err = client
        .set_agent_state(state("ghost", pb::AgentState::Available))
        .await
        .unwrap_err();
    assert_eq!(reason(&err).as_deref(), Some("UNKNOWN_AGENT"));

    // A CTI retrying a lost confirm tells "already done" from "expired".
    client.upsert_agent(billing_agent("b1")).await.unwrap();
    client.upsert_agent(billing_agent("b2")).await.unwrap();
    for id in ["b1", "b2"] {
        client
            .set_agent_state(state(id, pb::AgentState::Available))
            .await
            .unwrap();
    }
    let confirm = |id: &str| pb::ConfirmReservationRequest {
        reservation_id: id.to_owned(),
        ..Default::default()
    };
    let r1 = agent(&s.route(contact("c1", "billing")).await.unwrap())
        .reservation_id
        .clone();
    client.confirm_reservation(confirm(&r1)).await.unwrap();
    let again = client.confirm_reservation(confirm(&r1)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(
        reason(&again).as_deref(),
        Some("RESERVATION_ALREADY_CONFIRMED")
    );
    let release = |id: &str| pb::ReleaseReservationRequest {
        reservation_id: id.to_owned(),
        reason: pb::ReleaseReason::Rejected.into(),
        ..Default::default()
    };
    let r2 = agent(&s.route(contact("c2", "billing")).await.unwrap())
        .reservation_id
        .clone();
    client.release_reservation(release(&r2)).await.unwrap();
    let late = client.confirm_reservation(confirm(&r2)).await.unwrap_err();
    assert_eq!(
        reason(&late).as_deref(),
        Some("RESERVATION_ALREADY_RELEASED")
    );
    let r3 = agent(&s.route(contact("c3", "billing")).await.unwrap())
        .reservation_id
        .clone();
    s.clock.advance(Duration::seconds(60));
    let lapsed = client.confirm_reservation(confirm(&r3)).await.unwrap_err();
    assert_eq!(lapsed.code(), Code::FailedPrecondition);
    assert_eq!(reason(&lapsed).as_deref(), Some("RESERVATION_EXPIRED"));
    let unknown = client
        .confirm_reservation(confirm(&format!("r-{}", "deadbeef".repeat(4))))
        .await
        .unwrap_err();
    assert_eq!(reason(&unknown).as_deref(), Some("UNKNOWN_RESERVATION"));
    let never = client
        .get_contact_status(pb::GetContactStatusRequest {
            contact_id: "never-routed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&never).as_deref(), Some("UNKNOWN_CONTACT"));
    // A refused entry of the state feed: its number in the message, its
    // reason and field kept.
    let feed = tokio_stream::iter(vec![
        entry("b1", pb::AgentState::Away),
        entry("b2", pb::AgentState::Unspecified),
    ]);
    let err = client.stream_agent_states(feed).await.unwrap_err();
    assert!(err.message().starts_with("entry 1: state"), "{err:?}");
    assert_eq!(reason(&err).as_deref(), Some("INVALID_FIELD"));
    assert_eq!(violated_fields(&err), ["state"]);
    s.stop().await;
}

#[tokio::test]
async fn settling_calls_retried_with_their_request_id_are_answered_as_the_first() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    for id in ["b1", "b2"] {
        client.upsert_agent(billing_agent(id)).await.unwrap();
        client
            .set_agent_state(state(id, pb::AgentState::Available))
            .await
            .unwrap();
    }
    let offer = agent(&s.route(contact("c1", "billing")).await.unwrap()).clone();
    let confirm = pb::ConfirmReservationRequest {
        reservation_id: offer.reservation_id.clone(),
        request_id: "cti-7".into(),
    };
    let first = client.confirm_reservation(confirm.clone()).await.unwrap();
    // The answer was lost; the CTI sends the same request again.
    let again = client.confirm_reservation(confirm.clone()).await.unwrap();
    assert_eq!(first.into_inner(), again.into_inner());
    // Without the id (or another CTI's), still refused: only a retry is
    // answered.
    let mut other = confirm.clone();
    other.request_id = "cti-8".into();
    let err = client.confirm_reservation(other).await.unwrap_err();
    assert_eq!(
        error_reason(&err).unwrap().0,
        "RESERVATION_ALREADY_CONFIRMED"
    );
    // The same id for another request on the same reservation: refused.
    let err = client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: offer.reservation_id.clone(),
            reason: pb::ReleaseReason::Rejected.into(),
            request_id: "cti-7".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(error_reason(&err).unwrap().0, "REQUEST_ID_REUSED");
    // A completion retried: the same wrap-up end.
    let complete = pb::CompleteContactRequest {
        agent_id: offer.agent_id.clone(),
        contact_id: "c1".into(),
        request_id: "cti-9".into(),
    };
    let done = client.complete_contact(complete.clone()).await.unwrap();
    let again = client.complete_contact(complete).await.unwrap();
    assert_eq!(done.into_inner(), again.into_inner());
    // A malformed request id is named with the other fields.
    let err = client
        .complete_contact(pb::CompleteContactRequest {
            agent_id: String::new(),
            contact_id: "c1".into(),
            request_id: "not an id".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["agent_id", "request_id"]);
    // One confirm and one completion happened, whatever was retried: the
    // event stream says each once.
    let mut events = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let mut confirmed = 0;
    let mut completed = 0;
    while let Ok(Ok(Some(e))) =
        tokio::time::timeout(std::time::Duration::from_millis(300), events.message()).await
    {
        match e.event {
            Some(pb::routing_event::Event::Reservation(r))
                if matches!(r.change, Some(pb::reservation_event::Change::Confirmed(_))) =>
            {
                confirmed += 1
            }
            Some(pb::routing_event::Event::Contact(c))
                if matches!(
                    c.change,
                    Some(pb::contact_event::Change::CompletedByAgentId(_))
                ) =>
            {
                completed += 1
            }
            _ => {}
        }
    }
    assert_eq!((confirmed, completed), (1, 1));
    s.stop().await;
}

#[tokio::test]
async fn supervisors_see_each_agent_and_page_through_them() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    for id in ["b1", "b2", "b3", "b4"] {
        let mut a = billing_agent(id);
        if id == "b4" {
            a.team = "Night".into();
        }
        client.upsert_agent(a).await.unwrap();
    }
    client
        .set_agent_state(state("b1", pb::AgentState::Available))
        .await
        .unwrap();
    let get = |id: &str| pb::GetAgentRequest {
        agent_id: id.to_owned(),
    };
    // Free: idle since it became available, room for one call.
    let b1 = client.get_agent(get("b1")).await.unwrap().into_inner();
    let b1 = b1.agent.unwrap();
    assert_eq!(b1.state, pb::AgentState::Available as i32);
    assert_eq!(b1.eligible_queue_ids, ["billing"]);
    assert_eq!(b1.languages, ["en"]);
    let voice = &b1.channels[0];
    assert_eq!(
        (voice.capacity, voice.reserved, voice.active, voice.free),
        (1, 0, 0, 1)
    );
    // Idle since it was set available, at the test clock's time.
    let set_at = careroute::grpc::convert::timestamp(s.clock.now());
    assert_eq!(voice.idle_since, Some(set_at));
    // An offer out: the reservation shows, the channel is full.
    let offer = agent(&s.route(contact("c1", "billing")).await.unwrap()).clone();
    assert_eq!(offer.agent_id, "b1");
    let b1 = client
        .get_agent(get("b1"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(b1.reservations.len(), 1);
    assert_eq!(b1.reservations[0].reservation_id, offer.reservation_id);
    assert_eq!(b1.reservations[0].contact_id, "c1");
    assert_eq!(b1.reservations[0].queue_id, "billing");
    assert_eq!(b1.reservations[0].expires_at, offer.reservation_expires_at);
    assert_eq!((b1.channels[0].reserved, b1.channels[0].free), (1, 0));
    assert!(b1.channels[0].idle_since.is_none());
    // Confirmed: a contact in hand.
    client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: offer.reservation_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b1 = client
        .get_agent(get("b1"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert!(b1.reservations.is_empty());
    assert_eq!(b1.contacts.len(), 1);
    assert_eq!(
        (b1.contacts[0].contact_id.as_str(), b1.channels[0].active),
        ("c1", 1)
    );
    // Three offers rejected in a row: careroute pauses the agent, and says
    // why; one the CTI set says so too.
    client
        .set_agent_state(state("b2", pb::AgentState::Available))
        .await
        .unwrap();
    for i in 0..3 {
        let offer = agent(&s.route(contact(&format!("r{i}"), "billing")).await.unwrap()).clone();
        assert_eq!(offer.agent_id, "b2");
        client
            .release_reservation(pb::ReleaseReservationRequest {
                reservation_id: offer.reservation_id,
                reason: pb::ReleaseReason::Rejected.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let b2 = client
        .get_agent(get("b2"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(b2.state, pb::AgentState::NotResponding as i32);
    assert_eq!(b2.paused_reason, pb::PausedReason::MissedOffers as i32);
    assert_eq!(b2.missed_offers, 3);
    client
        .set_agent_state(state("b3", pb::AgentState::NotResponding))
        .await
        .unwrap();
    let b3 = client
        .get_agent(get("b3"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(b3.paused_reason, pb::PausedReason::SetByCti as i32);
    let b1 = client
        .get_agent(get("b1"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(b1.paused_reason, pb::PausedReason::Unspecified as i32);
    // The CTI brings the paused agent back: no longer paused, count reset.
    client
        .set_agent_state(state("b2", pb::AgentState::Available))
        .await
        .unwrap();
    let b2 = client
        .get_agent(get("b2"))
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(
        (b2.paused_reason, b2.missed_offers),
        (pb::PausedReason::Unspecified as i32, 0)
    );

    // Pages of two, in registration order, then filters.
    let list = |r: pb::ListAgentsRequest| {
        let mut client = s.client.clone();
        async move { client.list_agents(r).await }
    };
    let ids = |page: &pb::ListAgentsResponse| -> Vec<String> {
        page.agents.iter().map(|a| a.agent_id.clone()).collect()
    };
    let first = list(pb::ListAgentsRequest {
        page_size: 2,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&first), ["b1", "b2"]);
    assert!(!first.next_page_token.is_empty());
    let second = list(pb::ListAgentsRequest {
        page_size: 2,
        page_token: first.next_page_token.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&second), ["b3", "b4"]);
    assert!(second.next_page_token.is_empty());
    let paused = list(pb::ListAgentsRequest {
        states: vec![pb::AgentState::NotResponding.into()],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&paused), ["b3"]);
    let night = list(pb::ListAgentsRequest {
        team: "Night".into(),
        queue_id: "billing".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ids(&night), ["b4"]);
    let nobody = list(pb::ListAgentsRequest {
        queue_id: "frontline".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(nobody.agents.is_empty() && nobody.next_page_token.is_empty());

    // Bad input: named, with its reason.
    let err = list(pb::ListAgentsRequest {
        queue_id: "nowhere".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(error_reason(&err).unwrap().0, "UNKNOWN_QUEUE");
    let err = list(pb::ListAgentsRequest {
        states: vec![pb::AgentState::Available.into(), 42],
        page_token: "forged".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&err), ["states[1]", "page_token"]);
    let err = client.get_agent(get("ghost")).await.unwrap_err();
    assert_eq!(error_reason(&err).unwrap().0, "UNKNOWN_AGENT");
    s.stop().await;
}

#[tokio::test]
async fn retries_are_idempotent_and_paths_show_every_hop() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = contact("c1", "billing");
    c.request_id = "ivr-req-1".into();
    let first = s.route(c.clone()).await.unwrap();
    let again = s.route(c).await.unwrap();
    assert_eq!(first.decision_id, again.decision_id);
    assert_eq!(agent(&first).reservation_id, agent(&again).reservation_id);
    assert!(has_reason(&again, pb::Reason::IdempotentReplay));
    // The same request id with another request: refused, naming the field.
    let mut reused = contact("c1", "scheduling");
    reused.request_id = "ivr-req-1".into();
    let err = s.route(reused).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("request_id:"),
        "{}",
        err.message()
    );

    let mut escalated = contact("c1", "billing");
    escalated.escalation_requested = true;
    escalated
        .attributes
        .insert("coverage".into(), "self_pay".into());
    escalated.transfer_from = Some(pb::TransferFrom {
        queue_id: "billing".into(),
        agent_id: "agent-billing-1".into(),
    });
    let second = s.route(escalated).await.unwrap();
    let path = s
        .client
        .clone()
        .get_contact_path(pb::GetContactPathRequest {
            contact_id: "c1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(path.hops.len(), 2, "the retry is not a hop");
    assert_eq!(path.hops[0].decision_id, first.decision_id);
    assert_eq!(
        (
            path.hops[0].queue_id.as_str(),
            path.hops[0].outcome.as_str()
        ),
        ("billing", "agent")
    );
    assert_eq!(path.hops[1].decision_id, second.decision_id);
    assert_eq!(path.hops[1].from_queue_id, "billing");
    assert_eq!(path.hops[1].queue_id, "escalations_l1");
    s.stop().await;
}

#[tokio::test]
async fn hundreds_of_concurrent_routes_never_double_book() {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    let agents: Vec<String> = (0..5).map(|i| format!("b{i}")).collect();
    for id in &agents {
        client.upsert_agent(billing_agent(id)).await.unwrap();
        client
            .set_agent_state(state(id, pb::AgentState::Available))
            .await
            .unwrap();
    }
    // Several connections, 400 requests in flight together.
    let channels = s.connections(4).await;
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let mut client =
                pb::routing_service_client::RoutingServiceClient::new(channels[i % 4].clone());
            tokio::spawn(async move {
                client
                    .route_contact(contact(&format!("c{i}"), "billing"))
                    .await
            })
        })
        .collect();
    let mut reserved = Vec::new();
    let mut callbacks = 0;
    for t in tasks {
        let d = t.await.unwrap().unwrap().into_inner();
        match d.outcome {
            Some(pb::route_contact_response::Outcome::Agent(a)) => reserved.push(a.agent_id),
            Some(pb::route_contact_response::Outcome::Callback(_)) => callbacks += 1,
            other => panic!("{other:?}"),
        }
    }
    let distinct: HashSet<_> = reserved.iter().collect();
    assert_eq!(
        reserved.len(),
        agents.len(),
        "every agent reserved once: {reserved:?}"
    );
    assert_eq!(
        distinct.len(),
        reserved.len(),
        "an agent holds two live reservations"
    );
    assert_eq!(callbacks, 400 - agents.len());
    s.stop().await;
}

#[tokio::test]
async fn health_reflection_and_metrics() {
    let s = TestServer::start(monday_10am()).await;
    for service in ["", "careroute.v1.RoutingService"] {
        let status = health_status(s.channel.clone(), service).await;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    // Reflection v1alpha (what grpcurl 1.8 speaks) lists the service.
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(s.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"careroute.v1.RoutingService"), "{names:?}");
    // The error details every refusal carries resolve too, so a reflection
    // client prints them decoded.
    for symbol in ["google.rpc.ErrorInfo", "google.rpc.BadRequest"] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let answer = responses.message().await.unwrap().unwrap().message_response;
        assert!(
            matches!(answer, Some(MessageResponse::FileDescriptorResponse(_))),
            "{symbol}: {answer:?}"
        );
    }

    agent(&s.route(contact("m1", "billing")).await.unwrap());
    let body = s.scrape().await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for name in [
        "careroute_decision_duration_seconds_bucket",
        "careroute_decisions_total{outcome=\"agent\",level=\"1\"}",
        "careroute_decision_reasons_total{reason=\"longest_idle\"}",
        "# HELP careroute_decisions_total",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}");
    }
    // Gauges are read from the engine at scrape time.
    assert!(
        body.contains("careroute_agents{state=\"available\"}"),
        "agents gauge missing"
    );
    assert!(body.contains("careroute_queue_agents_staffed{queue=\"billing\"}"));
    s.stop().await;
}

#[tokio::test]
async fn policy_reload_refuses_an_invalid_file_and_keeps_the_running_policy() {
    use careroute::{
        clock::ManualClock,
        engine::Engine,
        grpc::Routing,
        policy, reload,
        shared::{Fatal, SharedEngine},
    };
    use std::sync::Arc;
    let dir = process::scratch_dir("reload");
    let path = dir.join("policy.toml");
    let good = include_str!("../examples/healthcare.toml");
    std::fs::write(&path, good).unwrap();
    let engine = Arc::new(SharedEngine::new(
        Engine::new(Arc::new(policy::read(&path).unwrap()), Default::default()),
        Fatal::new(),
    ));
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    let routing = Routing::new(
        Arc::clone(&engine),
        Arc::new(ManualClock::new(common::monday_10am())),
        stopping,
        (None, 0),
        None,
        0,
        |_| {},
    );
    // A broken edit: refused, and the old policy still answers.
    std::fs::write(&path, good.replacen("level = 4", "level = 7", 1)).unwrap();
    assert_eq!(
        reload::reload(&path, &routing).await,
        reload::Reloaded::Refused
    );
    assert_eq!(engine.lock().unwrap().policy().visible_queues(), 13);
    // A valid edit: taken.
    std::fs::write(
        &path,
        good.replacen("version = \"2026-11-22\"", "version = \"2026-11-23\"", 1),
    )
    .unwrap();
    assert_eq!(
        reload::reload(&path, &routing).await,
        reload::Reloaded::Applied
    );
    assert_eq!(engine.lock().unwrap().policy().version, "2026-11-23");
}

#[tokio::test]
async fn remove_agent_and_the_roster_cap_over_grpc() {
    let s = TestServer::start_with(monday_10am(), |c| {
        c.no_demo_roster = true;
        c.max_agents = 2;
    })
    .await;
    let mut client = s.client.clone();
    for id in ["b1", "b2"] {
        client.upsert_agent(billing_agent(id)).await.unwrap();
        client
            .set_agent_state(state(id, pb::AgentState::Available))
            .await
            .unwrap();
    }
    let full = client.upsert_agent(billing_agent("b3")).await.unwrap_err();
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(
        full.message().contains("roster is full (2 agents)"),
        "{full:?}"
    );

    let d = s.route(contact("c1", "billing")).await.unwrap();
    let reserved = agent(&d).agent_id.clone();
    let remove = |id: &str| pb::RemoveAgentRequest {
        agent_id: id.into(),
    };
    let busy = client.remove_agent(remove(&reserved)).await.unwrap_err();
    assert_eq!(busy.code(), Code::FailedPrecondition, "{busy:?}");
    let idle = if reserved == "b1" { "b2" } else { "b1" };
    client.remove_agent(remove(idle)).await.unwrap();
    let gone = client.remove_agent(remove(idle)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let empty = client.remove_agent(remove("")).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("agent_id"), "{empty:?}");
    // Room again for a new agent.
    client.upsert_agent(billing_agent("b3")).await.unwrap();
    assert_eq!(s.queue("billing").await.agents_staffed, 1);
    s.stop().await;
}

/// A body that does not decode as the method's message is the client's
/// error: INVALID_ARGUMENT with the decoder's reason, not INTERNAL (which
/// pages through the server-error alert).
#[tokio::test]
async fn a_body_that_does_not_decode_is_invalid_argument() {
    let s = TestServer::start(monday_10am()).await;
    let mut grpc = tonic::client::Grpc::new(s.channel.clone());
    grpc.ready().await.unwrap();
    // Field 1 as a varint where RouteContactRequest has a string.
    let wrong = prost_types::Duration {
        seconds: 5,
        nanos: 0,
    };
    let codec =
        tonic_prost::ProstCodec::<prost_types::Duration, pb::RouteContactResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/careroute.v1.RoutingService/RouteContact");
    let err = grpc
        .unary(tonic::Request::new(wrong), path, codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("invalid wire type"), "{err:?}");
    let scrape = s.scrape().await;
    assert!(
        scrape
            .lines()
            .any(|l| l.starts_with("careroute_rpc_requests_total")
                && l.contains("RouteContact")
                && l.contains("INVALID_ARGUMENT")),
        "{scrape}"
    );
    s.stop().await;
}

/// The next event of a WatchEvents stream, within 10 s.
#[allow(clippy::unwrap_used, clippy::expect_used)]
async fn next_event(s: &mut tonic::Streaming<pb::RoutingEvent>) -> pb::RoutingEvent {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("no event within 10 s")
        .unwrap()
        .expect("the stream ended")
}

/// A server with no roster, a watcher of its events from the start, and
/// the billing agent b1 registered and set available.
#[allow(clippy::expect_used)]
async fn watched_with_b1() -> (TestServer, tonic::Streaming<pb::RoutingEvent>) {
    let s = TestServer::start_with(monday_10am(), |c| c.no_demo_roster = true).await;
    let mut client = s.client.clone();
    let events = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("a watcher from the start")
        .into_inner();
    (client.upsert_agent(billing_agent("b1")).await).expect("b1 registered");
    (client
        .set_agent_state(state("b1", pb::AgentState::Available))
        .await)
        .expect("b1 available");
    (s, events)
}

#[tokio::test]
async fn the_event_stream_tells_every_change_and_resumes_after_a_sequence() {
    let (s, mut events) = watched_with_b1().await;
    let mut client = s.client.clone();
    let d = client
        .route_contact(contact("c-ev-1", "billing"))
        .await
        .unwrap()
        .into_inner();
    let reservation = agent(&d).reservation_id.clone();
    client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: reservation.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    use pb::routing_event::Event as E;
    let upserted = next_event(&mut events).await;
    assert!(
        matches!(&upserted.event, Some(E::Agent(a)) if a.agent_id == "b1"
            && a.change == Some(pb::agent_event::Change::Upserted(true))),
        "{upserted:?}"
    );
    let available = next_event(&mut events).await;
    assert!(
        matches!(&available.event, Some(E::Agent(a))
            if a.change == Some(pb::agent_event::Change::State(pb::AgentState::Available.into()))),
        "{available:?}"
    );
    assert!(available.sequence > upserted.sequence);
    let decided = next_event(&mut events).await;
    let Some(E::Decision(decision)) = &decided.event else {
        panic!("{decided:?}")
    };
    assert_eq!(decision.contact_id, "c-ev-1");
    assert_eq!(
        decision.decision.as_ref().unwrap().decision_id,
        d.decision_id
    );
    let confirmed = next_event(&mut events).await;
    let Some(E::Reservation(r)) = &confirmed.event else {
        panic!("{confirmed:?}")
    };
    assert_eq!(r.reservation_id, reservation);
    assert!(matches!(
        &r.change,
        Some(pb::reservation_event::Change::Confirmed(c)) if c.agent_id == "b1" && c.contact_id == "c-ev-1"
    ));

    // A watcher resuming after the decision gets the confirmation next,
    // then what happens after.
    let mut resumed = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(decided.sequence),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut resumed).await, confirmed);
    client
        .set_agent_state(state("b1", pb::AgentState::Away))
        .await
        .unwrap();
    let away = next_event(&mut resumed).await;
    assert_eq!(next_event(&mut events).await, away);
    assert!(away.sequence > confirmed.sequence);
    s.stop().await;
}

#[tokio::test]
async fn resuming_after_an_event_no_longer_retained_is_out_of_range() {
    let s = TestServer::start_with(monday_10am(), |c| {
        c.no_demo_roster = true;
        c.event_retention = 2;
    })
    .await;
    let mut client = s.client.clone();
    for id in ["b1", "b2", "b3"] {
        client.upsert_agent(billing_agent(id)).await.unwrap();
    }
    let refused = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(0),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().starts_with("after_sequence: "),
        "{refused:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn errors_never_repeat_the_references_a_client_sent() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    // Whatever a client puts in an id, an error does not send it back (nor
    // would it be logged by the refusal).
    let id = "Jane-Doe-1980-02-14";
    let mut refusals = vec![
        client
            .set_agent_state(state(id, pb::AgentState::Available))
            .await
            .unwrap_err(),
        client
            .cancel_contact(pb::CancelContactRequest {
                contact_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .get_contact_status(pb::GetContactStatusRequest {
                contact_id: id.into(),
            })
            .await
            .unwrap_err(),
        client
            .get_contact_path(pb::GetContactPathRequest {
                contact_id: id.into(),
            })
            .await
            .unwrap_err(),
        client
            .confirm_reservation(pb::ConfirmReservationRequest {
                reservation_id: format!("r-{}", "9".repeat(32)),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .complete_contact(pb::CompleteContactRequest {
                agent_id: "agent-billing-1".into(),
                contact_id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
        client
            .remove_agent(pb::RemoveAgentRequest {
                agent_id: id.into(),
            })
            .await
            .unwrap_err(),
    ];
    let mut transfer = contact("c-ok", "billing");
    transfer.transfer_from = Some(pb::TransferFrom {
        queue_id: id.into(),
        agent_id: String::new(),
    });
    refusals.push(client.route_contact(transfer).await.unwrap_err());
    for e in refusals {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(!e.message().contains(id), "{e:?}");
        assert!(!e.message().contains("9999"), "{e:?}");
        let field = e.message().split(':').next().unwrap();
        assert!(field.ends_with("_id"), "the message names no field: {e:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resuming_under_load_gets_exactly_what_followed() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    // The reference: a watcher from the start.
    let mut reference = client
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Load from two clients while a second watcher resumes mid-way.
    let mut load = Vec::new();
    for k in 0..2 {
        let mut c = s.client.clone();
        load.push(tokio::spawn(async move {
            for i in 0..150 {
                c.route_contact(contact(&format!("c{k}-{i}"), "billing"))
                    .await
                    .unwrap();
            }
        }));
    }
    let first = next_event(&mut reference).await;
    let resumed = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(first.sequence),
        })
        .await
        .unwrap()
        .into_inner();
    for l in load {
        l.await.unwrap();
    }
    // A last change marks the end of both streams.
    client.upsert_agent(billing_agent("the-end")).await.unwrap();
    let until_end = |mut stream: tonic::Streaming<pb::RoutingEvent>| async move {
        let mut events = Vec::new();
        loop {
            let e = next_event(&mut stream).await;
            let end = matches!(&e.event, Some(pb::routing_event::Event::Agent(a)) if a.agent_id == "the-end");
            events.push(e);
            if end {
                return events;
            }
        }
    };
    let reference = until_end(reference).await;
    let resumed = until_end(resumed).await;
    let expected: Vec<_> = reference
        .into_iter()
        .filter(|e| e.sequence > first.sequence)
        .collect();
    assert!(expected.len() >= 250, "{}", expected.len());
    assert_eq!(resumed.len(), expected.len());
    assert!(
        resumed == expected,
        "the resumed stream is not what followed"
    );
    // In order, each (sequence, index) once.
    assert!(
        resumed
            .windows(2)
            .all(|w| (w[0].sequence, w[0].index) < (w[1].sequence, w[1].index))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_stream_cut_inside_a_sequence_resumes_from_the_one_before() {
    use pb::routing_event::Event as E;
    let (s, mut reference) = watched_with_b1().await;
    let mut client = s.client.clone();
    client
        .route_contact(contact("c1", "billing"))
        .await
        .unwrap();
    // Routed again: the earlier offer's withdrawal and the new decision
    // are one command's, so one sequence of two events.
    client
        .route_contact(contact("c1", "billing"))
        .await
        .unwrap();
    client.upsert_agent(billing_agent("the-end")).await.unwrap();
    let mut all = Vec::new();
    loop {
        let e = next_event(&mut reference).await;
        let end = matches!(&e.event, Some(E::Agent(a)) if a.agent_id == "the-end");
        all.push(e);
        if end {
            break;
        }
    }
    let cut_at = all
        .iter()
        .position(|e| !e.last_of_sequence)
        .expect("a sequence of more than one event");
    let cut = all[cut_at].sequence;
    assert!(matches!(&all[cut_at].event, Some(E::Reservation(_))));

    // A watcher from the start whose stream is cut after the first event
    // of that sequence...
    let mut first = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    for _ in 0..=cut_at {
        received.push(next_event(&mut first).await);
    }
    drop(first);
    assert_eq!(received, all[..=cut_at]);
    assert!(!received.last().unwrap().last_of_sequence);
    // ... resumes from the sequence before: the whole sequence comes
    // again, and it skips by (sequence, index) what it already has.
    let mut resumed = client
        .watch_events(pb::WatchEventsRequest {
            after_sequence: Some(cut - 1),
        })
        .await
        .unwrap()
        .into_inner();
    let again = next_event(&mut resumed).await;
    assert_eq!((again.sequence, again.index), (cut, 0));
    assert_eq!(again, all[cut_at]);
    let seen: HashSet<(u64, u32)> = received.iter().map(|e| (e.sequence, e.index)).collect();
    let mut next = again;
    loop {
        if !seen.contains(&(next.sequence, next.index)) {
            received.push(next.clone());
        }
        if received.len() == all.len() {
            break;
        }
        next = next_event(&mut resumed).await;
    }
    assert_eq!(received, all, "the resumed watcher has every event once");
    s.stop().await;
}
