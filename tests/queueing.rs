//! End to end over gRPC, live queueing on the example policy's scheduling
//! queue (two demo agents, up to 10 waiting, 15 min wait limit): a contact
//! waits, an agent frees up, the CTI's WatchAssignments stream receives the
//! assignment; offers that time out move on; cancels leave the line; the
//! estimated wait grows with position.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration as StdDuration;

use careroute::grpc::pb::{self, assignment_event::Event as E};
use chrono::Duration;
use common::floor::status;
use common::*;
use tonic::{Code, Streaming};

fn scheduling(id: &str) -> pb::RouteContactRequest {
    contact(id, "scheduling")
}

fn queued(d: &pb::RouteContactResponse) -> &pb::QueuedTarget {
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Queued(q)) => q,
        other => panic!("expected queued, got {other:?} ({:?})", d.reasons),
    }
}

/// The next assignment on the stream; fails after 5 s of real time (the
/// server applies expiries on its own every 250 ms).
async fn next(stream: &mut Streaming<pb::AssignmentEvent>) -> pb::AssignmentEvent {
    tokio::time::timeout(StdDuration::from_secs(5), stream.message())
        .await
        .expect("no assignment within 5 s")
        .unwrap()
        .unwrap()
}

fn agent_of(e: &pb::AssignmentEvent) -> &pb::AgentTarget {
    match &e.event {
        Some(E::Agent(a)) => a,
        other => panic!("expected an assignment, got {other:?}"),
    }
}

#[tokio::test]
async fn a_waiting_contact_is_assigned_when_an_agent_frees_up_and_offers_move_on() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    let mut stream = client
        .watch_assignments(pb::WatchAssignmentsRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Both scheduling agents get a contact; the third waits.
    let first = s.route(scheduling("s1")).await.unwrap();
    let second = s.route(scheduling("s2")).await.unwrap();
    let d = s.route(scheduling("s3")).await.unwrap();
    let q = queued(&d);
    assert_eq!((q.queue_id.as_str(), q.position), ("scheduling", 1));
    assert_eq!(q.transfer_address, "sip:scheduling@pbx.careroute.example");
    assert!(has_reason(&d, pb::Reason::Queued));
    assert_eq!(s.queue("scheduling").await.waiting, 1);

    // The first agent's offer is rejected: that agent takes the waiting s3.
    let r1 = agent(&first).clone();
    client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: r1.reservation_id,
            reason: pb::ReleaseReason::Rejected.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let e = next(&mut stream).await;
    assert_eq!(e.contact_id, "s3");
    assert_eq!(agent_of(&e).agent_id, r1.agent_id);

    // Nobody confirms in time: s3 goes back to the head of the line and is
    // offered to the other agent once it is free, never to the first again.
    let r2 = agent(&second).clone();
    client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: r2.reservation_id,
            reason: pb::ReleaseReason::NoAnswer.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    s.clock.advance(Duration::seconds(15));
    let e = next(&mut stream).await;
    assert_eq!(e.contact_id, "s3");
    let offer = agent_of(&e).clone();
    assert_eq!(
        offer.agent_id, r2.agent_id,
        "the next agent, not the one who missed it"
    );

    // The agent confirms: answered within the 30 s service level.
    client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: offer.reservation_id,
            ..Default::default()
        })
        .await
        .unwrap();
    let view = s.queue("scheduling").await;
    assert_eq!((view.waiting, view.answered), (0, 1));
    assert_eq!(view.service_level, Some(1.0));
    s.stop().await;
}

#[tokio::test]
async fn cancel_leaves_the_line_and_the_wait_estimate_grows_with_position() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    agent(&s.route(scheduling("busy-1")).await.unwrap());
    agent(&s.route(scheduling("busy-2")).await.unwrap());
    // Two agents, 4 min assumed handle time: about 2 min per place in line,
    // so the 8th place (16 min) is over the 15 min limit.
    let mut last = 0;
    let mut positions = Vec::new();
    for i in 0..8 {
        let d = s.route(scheduling(&format!("w{i}"))).await.unwrap();
        match &d.outcome {
            Some(pb::route_contact_response::Outcome::Queued(q)) => {
                let wait = q.estimated_wait.unwrap().seconds;
                assert!(
                    wait > last,
                    "place {} waits {wait} s after {last} s",
                    q.position
                );
                last = wait;
                positions.push(q.position);
            }
            Some(pb::route_contact_response::Outcome::Callback(c)) => {
                assert_eq!(c.reason, pb::CallbackReason::WaitTooLong as i32);
                assert!(has_reason(&d, pb::Reason::WaitTooLong));
                assert_eq!(positions.len(), 7, "{positions:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(positions, [1, 2, 3, 4, 5, 6, 7]);
    let view = s.queue("scheduling").await;
    assert_eq!(view.waiting, 7);
    assert!(view.estimated_wait.unwrap().seconds > last);

    // The caller of w3 hangs up.
    client
        .cancel_contact(pb::CancelContactRequest {
            contact_id: "w3".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = client
        .cancel_contact(pb::CancelContactRequest {
            contact_id: "w3".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let view = s.queue("scheduling").await;
    assert_eq!(view.waiting, 6);
    assert_eq!(view.abandonment_rate, Some(1.0));
    s.stop().await;
}

#[tokio::test]
async fn relaxation_widens_the_pool_after_its_step_time() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    let mut stream = client
        .watch_assignments(pb::WatchAssignmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // A trainee with scheduling proficiency 1: below the queue's minimum 2.
    client
        .upsert_agent(pb::UpsertAgentRequest {
            agent_id: "trainee".into(),
            team: "Patient Access".into(),
            transfer_address: "sip:1199@pbx".into(),
            skills: vec![pb::SkillLevel {
                skill: "scheduling".into(),
                proficiency: 1,
            }],
            languages: vec!["en".into()],
            channels: vec![pb::ChannelCapacity {
                channel: pb::Channel::Voice.into(),
                capacity: 1,
            }],
        })
        .await
        .unwrap();
    client
        .set_agent_state(pb::SetAgentStateRequest {
            agent_id: "trainee".into(),
            state: pb::AgentState::Available.into(),
        })
        .await
        .unwrap();
    for id in ["busy-1", "busy-2"] {
        let r = agent(&s.route(scheduling(id)).await.unwrap())
            .reservation_id
            .clone();
        client
            .confirm_reservation(pb::ConfirmReservationRequest {
                reservation_id: r,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    queued(&s.route(scheduling("w1")).await.unwrap());
    // The policy's first step is at 2 minutes: then the trainee qualifies.
    s.clock.advance(Duration::minutes(2));
    let e = next(&mut stream).await;
    assert_eq!(e.contact_id, "w1");
    assert_eq!(agent_of(&e).agent_id, "trainee");
    assert_eq!(agent_of(&e).queue_id, "scheduling");
    assert_eq!(e.waited.unwrap().seconds, 120);
    s.stop().await;
}

#[tokio::test]
async fn an_ivr_polls_a_waiting_contacts_position_and_then_its_outcome() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    let mut stream = client
        .watch_assignments(pb::WatchAssignmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Both scheduling agents take a contact; two more wait.
    let first = s.route(scheduling("s1")).await.unwrap();
    s.route(scheduling("s2")).await.unwrap();
    s.route(scheduling("s3")).await.unwrap();
    s.route(scheduling("s4")).await.unwrap();
    // Within the offers' 15 s TTL.
    s.clock.advance(Duration::seconds(10));
    let Some(pb::get_contact_status_response::Status::Waiting(w)) =
        status(&mut client, "s4").await.unwrap().status
    else {
        panic!("s4 should wait")
    };
    assert_eq!((w.queue_id.as_str(), w.position), ("scheduling", 2));
    assert_eq!(w.waited.unwrap().seconds, 10);
    assert!(w.estimated_wait.unwrap().seconds > 0);
    assert_eq!(
        w.parked_transfer_address,
        "sip:scheduling@pbx.careroute.example"
    );
    // The first agent's offer is rejected: s3 is offered to that agent,
    // and s4 moves up.
    client
        .release_reservation(pb::ReleaseReservationRequest {
            reservation_id: agent(&first).reservation_id.clone(),
            reason: pb::ReleaseReason::Rejected.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let offered = next(&mut stream).await;
    assert_eq!(offered.contact_id, "s3");
    let Some(pb::get_contact_status_response::Status::Waiting(w)) =
        status(&mut client, "s4").await.unwrap().status
    else {
        panic!("s4 should wait")
    };
    assert_eq!(w.position, 1);
    let Some(pb::get_contact_status_response::Status::Waiting(w)) =
        status(&mut client, "s3").await.unwrap().status
    else {
        panic!("s3 has an offer out")
    };
    assert_eq!(w.reservation_id, agent_of(&offered).reservation_id);
    client
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: w.reservation_id,
            ..Default::default()
        })
        .await
        .unwrap();
    // Answered: its status is its last hop.
    let Some(pb::get_contact_status_response::Status::Last(hop)) =
        status(&mut client, "s3").await.unwrap().status
    else {
        panic!("s3 no longer waits")
    };
    assert_eq!(hop.outcome, "assigned");
    // A stranger is NOT_FOUND; a malformed id is INVALID_ARGUMENT naming it.
    assert_eq!(
        status(&mut client, "nobody").await.unwrap_err().code(),
        Code::NotFound
    );
    let bad = status(&mut client, "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("contact_id"), "{}", bad.message());
    s.stop().await;
}
