//! The real binary under real CTI behaviour, on the real clock: an only agent
//! who rejects an offer, a watcher that disconnects for 5 s, two watchers
//! splitting a floor, withdrawn offers, a move at closing, the wait limit,
//! and every hop in the contact's path. The policy is a small one of the
//! tests' own, open round the clock, with short TTLs so waits stay short.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use careroute::grpc::pb::{
    self, assignment_event::Event as E, routing_service_client::RoutingServiceClient,
};
use common::{
    contact,
    floor::{KNOBS, Knobs, agent, busy, client, confirm, policy, queue, set_state, start},
    http_get,
};
use tonic::{Streaming, transport::Channel};

async fn watch(
    c: &mut RoutingServiceClient<Channel>,
    filter: pb::WatchAssignmentsRequest,
) -> Streaming<pb::AssignmentEvent> {
    c.watch_assignments(filter).await.unwrap().into_inner()
}

/// The next event within `within`, or `None`.
async fn next_within(
    s: &mut Streaming<pb::AssignmentEvent>,
    within: Duration,
) -> Option<pb::AssignmentEvent> {
    tokio::time::timeout(within, s.message())
        .await
        .ok()
        .map(|m| m.unwrap().expect("the stream ended"))
}

async fn next(s: &mut Streaming<pb::AssignmentEvent>) -> pb::AssignmentEvent {
    next_within(s, Duration::from_secs(10))
        .await
        .expect("no event within 10 s")
}

fn offer(e: &pb::AssignmentEvent) -> &pb::AgentTarget {
    match &e.event {
        Some(E::Agent(a)) => a,
        other => panic!("expected an offer, got {other:?}"),
    }
}

async fn release(c: &mut RoutingServiceClient<Channel>, reservation: &str) {
    c.release_reservation(pb::ReleaseReservationRequest {
        reservation_id: reservation.into(),
        reason: pb::ReleaseReason::Rejected.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn complete(c: &mut RoutingServiceClient<Channel>, agent: &str, contact: &str) {
    c.complete_contact(pb::CompleteContactRequest {
        agent_id: agent.into(),
        contact_id: contact.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn path(c: &mut RoutingServiceClient<Channel>, contact: &str) -> Vec<pb::ContactHop> {
    c.get_contact_path(pb::GetContactPathRequest {
        contact_id: contact.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .hops
}

fn outcomes(hops: &[pb::ContactHop]) -> Vec<&str> {
    hops.iter().map(|h| h.outcome.as_str()).collect()
}

/// The only free agent rejects the contact: it is offered to that agent
/// again after `reoffer_after` (2 s), marked as a re-offer, instead of
/// waiting beside the agent forever.
#[tokio::test]
async fn an_only_agent_who_rejected_is_offered_the_contact_again_after_the_cool_down() {
    let (p, _) = start("reject", &KNOBS);
    let mut c = client(&p).await;
    let mut events = watch(&mut c, Default::default()).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    busy(&mut c, "c0", "billing").await;
    queue(&mut c, contact("w", "billing")).await;
    complete(&mut c, "b1", "c0").await;
    let first = next(&mut events).await;
    assert_eq!((first.contact_id.as_str(), first.reoffer), ("w", false));
    assert_eq!(first.parked_queue_id, "billing");
    let rejected = Instant::now();
    release(&mut c, &offer(&first).reservation_id).await;
    let again = next(&mut events).await;
    assert!(
        rejected.elapsed() >= Duration::from_secs(2),
        "before the cool-down"
    );
    assert_eq!(offer(&again).agent_id, "b1");
    assert!(again.reoffer, "the answer says it is a re-offer");
    let waited = again.waited.unwrap();
    assert!(waited.seconds >= 2, "the actual wait: {waited:?}");
    confirm(&mut c, &offer(&again).reservation_id).await;
    let hops = path(&mut c, "w").await;
    assert_eq!(
        outcomes(&hops),
        ["queued", "assigned", "offer_released", "assigned"]
    );
    assert_eq!(hops[1].agent_id, "b1");
    assert_eq!(hops[3].reservation_id, offer(&again).reservation_id);
}

/// The CTI restarts: its watcher is gone for 5 s while an offer is out. The
/// lapse is not the agent's miss (one miss would pause it here), the
/// contact is not offered to anybody while nobody watches, and the watcher
/// that comes back gets it. One that reconnects while an offer is live
/// gets that offer again.
#[tokio::test]
async fn a_watcher_gone_for_5_s_pauses_nobody_and_learns_the_live_offers_on_return() {
    let knobs = Knobs {
        missed_offers_to_pause: 1,
        ..KNOBS
    };
    let (p, _) = start("reconnect", &knobs);
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    busy(&mut c, "c0", "billing").await;
    queue(&mut c, contact("w", "billing")).await;
    let mut cti = client(&p).await;
    let mut events = watch(&mut cti, Default::default()).await;
    complete(&mut c, "b1", "c0").await;
    let first = next(&mut events).await;
    // The CTI dies with the offer ringing, and stays away 5 s (the TTL is 2 s).
    drop(events);
    drop(cti);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let b1 = set_state(&mut c, "b1", pb::AgentState::Available).await;
    assert_eq!(b1, pb::AgentState::Available, "b1 was paused");
    let queues = c
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner()
        .queues;
    let billing = queues.iter().find(|q| q.queue_id == "billing").unwrap();
    assert_eq!(
        (billing.waiting, billing.reservations),
        (1, 0),
        "no offer without a watcher"
    );
    // Back: the offer comes at once, to the same agent.
    let mut cti = client(&p).await;
    let mut events = watch(&mut cti, Default::default()).await;
    let second = next(&mut events).await;
    assert_eq!(offer(&second).agent_id, "b1");
    assert_ne!(offer(&second).reservation_id, offer(&first).reservation_id);
    assert!(!second.reoffer && !second.resent);
    // Restarting again at once: the live offer is sent again on connect.
    drop(events);
    let mut events = watch(&mut cti, Default::default()).await;
    let resent = next(&mut events).await;
    assert!(resent.resent);
    assert_eq!(offer(&resent).reservation_id, offer(&second).reservation_id);
    confirm(&mut cti, &offer(&resent).reservation_id).await;
    assert_eq!(
        outcomes(&path(&mut c, "w").await),
        ["queued", "assigned", "offer_expired", "assigned"]
    );
}

/// Two CTI instances split one floor by agent: each receives only its
/// agents' offers; callbacks go to the one naming the queue.
#[tokio::test]
async fn two_filtered_watchers_split_the_floor() {
    let knobs = Knobs {
        max_wait_in_line: "3s",
        ..KNOBS
    };
    let (p, _) = start("split", &knobs);
    let mut c = client(&p).await;
    let mut left = watch(
        &mut c,
        pb::WatchAssignmentsRequest {
            agent_ids: vec!["b1".into()],
            queue_ids: vec!["billing".into()],
            ..Default::default()
        },
    )
    .await;
    let mut right = watch(
        &mut c,
        pb::WatchAssignmentsRequest {
            teams: vec!["Billing Two".into()],
            ..Default::default()
        },
    )
    .await;
    agent(&mut c, "b1", "Billing", "billing").await;
    agent(&mut c, "b2", "Billing Two", "billing").await;
    busy(&mut c, "c1", "billing").await;
    busy(&mut c, "c2", "billing").await;
    queue(&mut c, contact("w1", "billing")).await;
    queue(&mut c, contact("w2", "billing")).await;
    complete(&mut c, "b2", "c2").await;
    let to_right = next(&mut right).await;
    assert_eq!(
        (
            to_right.contact_id.as_str(),
            offer(&to_right).agent_id.as_str()
        ),
        ("w1", "b2")
    );
    complete(&mut c, "b1", "c1").await;
    let to_left = next(&mut left).await;
    assert_eq!(
        (
            to_left.contact_id.as_str(),
            offer(&to_left).agent_id.as_str()
        ),
        ("w2", "b1")
    );
    assert!(
        next_within(&mut right, Duration::from_millis(500))
            .await
            .is_none(),
        "b1's offer reached the other instance"
    );
    // The second instance acting on the first's offer is refused: an offer
    // is settled exactly once.
    confirm(&mut c, &offer(&to_left).reservation_id).await;
    let twice = c
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: offer(&to_left).reservation_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    // A contact past the wait limit (3 s) leaves with a callback, which
    // only the instance naming the queue receives.
    confirm(&mut c, &offer(&to_right).reservation_id).await;
    queue(&mut c, contact("w3", "billing")).await;
    let callback = next(&mut left).await;
    let Some(E::Callback(ticket)) = &callback.event else {
        panic!("{callback:?}")
    };
    assert_eq!(callback.contact_id, "w3");
    assert_eq!(ticket.reason(), pb::CallbackReason::WaitTooLong);
    assert!(callback.waited.unwrap().seconds >= 3);
    assert!(
        next_within(&mut right, Duration::from_millis(500))
            .await
            .is_none()
    );
    // SREs see both watchers and the caller who left the line.
    let metrics = http_get(&p.metrics, "/metrics").await;
    for line in [
        "careroute_assignment_watchers 2",
        "careroute_line_callbacks_total{reason=\"wait_too_long\"} 1",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    // A filter naming a queue the policy does not have (a reload may have
    // removed it) connects: the CTI configured with it is not locked out.
    let removed = c
        .watch_assignments(pb::WatchAssignmentsRequest {
            queue_ids: vec!["nope".into()],
            ..Default::default()
        })
        .await;
    assert!(removed.is_ok(), "{removed:?}");
    drop(removed);
    // A malformed id is INVALID_ARGUMENT naming the entry.
    let bad = c
        .watch_assignments(pb::WatchAssignmentsRequest {
            agent_ids: vec!["b1".into(), "no spaces".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("agent_ids[1]"), "{}", bad.message());
}

/// A cancelled contact's ringing offer is withdrawn on the stream. A queue
/// that closes (here by a policy reload that makes today a holiday) moves
/// its urgent contact to the on-call queue: the move is announced, and the
/// on-call offer carries both the offering queue and the parked one.
#[tokio::test]
async fn withdrawn_offers_and_a_move_at_closing_are_on_the_stream_and_in_the_path() {
    let (p, policy_file) = start("close", &KNOBS);
    let mut c = client(&p).await;
    let mut events = watch(&mut c, Default::default()).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    busy(&mut c, "c0", "billing").await;
    queue(&mut c, contact("w", "billing")).await;
    complete(&mut c, "b1", "c0").await;
    let offered = next(&mut events).await;
    c.cancel_contact(pb::CancelContactRequest {
        contact_id: "w".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let withdrawn = next(&mut events).await;
    let Some(E::Withdrawn(w)) = &withdrawn.event else {
        panic!("{withdrawn:?}")
    };
    assert_eq!(withdrawn.contact_id, "w");
    assert_eq!(w.reservation_id, offer(&offered).reservation_id);
    assert_eq!(w.reason(), pb::WithdrawReason::Cancelled);
    assert_eq!(
        outcomes(&path(&mut c, "w").await),
        ["queued", "assigned", "cancelled"]
    );

    // Scheduling: its only agent is busy; an urgent and a routine contact
    // wait. The on-call nurse is free but not eligible for scheduling.
    agent(&mut c, "s1", "Access", "scheduling").await;
    agent(&mut c, "n1", "Nurse Line", "on_call").await;
    busy(&mut c, "s0", "scheduling").await;
    let mut urgent = contact("u", "scheduling");
    urgent.urgency = pb::Urgency::Urgent.into();
    queue(&mut c, urgent).await;
    queue(&mut c, contact("r", "scheduling")).await;
    std::fs::write(
        &policy_file,
        policy(&Knobs {
            scheduling_closed: true,
            ..KNOBS
        }),
    )
    .unwrap();
    p.signal("HUP");
    let (mut moved, mut to_nurse, mut callback) = (None, None, None);
    while moved.is_none() || to_nurse.is_none() || callback.is_none() {
        let e = next(&mut events).await;
        match &e.event {
            Some(E::Moved(m)) => moved = Some((m.clone(), e)),
            Some(E::Agent(_)) => to_nurse = Some(e),
            Some(E::Callback(t)) => callback = Some((e.contact_id.clone(), t.reason())),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (m, moved) = moved.unwrap();
    assert_eq!(moved.contact_id, "u");
    assert_eq!(
        (m.from_queue_id.as_str(), m.to_queue_id.as_str()),
        ("scheduling", "oncall")
    );
    assert_eq!(moved.parked_transfer_address, "sip:scheduling@pbx");
    assert_eq!(
        callback.unwrap(),
        ("r".to_string(), pb::CallbackReason::Closed)
    );
    // The nurse is offered the urgent contact under on-call; the call is
    // parked at scheduling.
    let to_nurse = to_nurse.unwrap();
    assert_eq!(to_nurse.contact_id, "u");
    assert_eq!(offer(&to_nurse).agent_id, "n1");
    assert_eq!(offer(&to_nurse).queue_id, "oncall");
    assert_eq!(to_nurse.parked_queue_id, "scheduling");
    assert_eq!(to_nurse.parked_transfer_address, "sip:scheduling@pbx");
    let hops = path(&mut c, "u").await;
    assert_eq!(outcomes(&hops), ["queued", "moved", "assigned"]);
    assert_eq!(
        (hops[1].from_queue_id.as_str(), hops[1].queue_id.as_str()),
        ("scheduling", "oncall")
    );
}

/// The CTI is away when a caller's wait limit passes: the callback is kept,
/// and the watcher that connects next receives it first, marked resent.
#[tokio::test]
async fn a_callback_decided_while_nobody_watched_reaches_the_next_watcher() {
    let knobs = Knobs {
        max_wait_in_line: "2s",
        ..KNOBS
    };
    let (p, _) = start("kept", &knobs);
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    busy(&mut c, "c0", "billing").await;
    queue(&mut c, contact("w", "billing")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut events = watch(&mut c, Default::default()).await;
    let kept = next(&mut events).await;
    let Some(E::Callback(ticket)) = &kept.event else {
        panic!("{kept:?}")
    };
    assert!(kept.resent);
    assert_eq!(kept.contact_id, "w");
    assert_eq!(ticket.reason(), pb::CallbackReason::WaitTooLong);
    assert_eq!(kept.parked_queue_id, "billing");
    // Delivered once: a second watcher gets nothing.
    let mut again = watch(&mut c, Default::default()).await;
    assert!(
        next_within(&mut again, Duration::from_millis(500))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_telling_more_events_than_a_watcher_buffers_reaches_it_whole() {
    // 4,500 callers wait at scheduling (a second's handle time each, so
    // none is told the wait is too long); a reload that closes it calls each
    // back in one command: more events than a live watcher's buffer (4,096)
    // and than the ring keeps (--event-retention 1000). The watcher falls
    // behind in it and catches up from the ring, which keeps it whole.
    const CALLERS: usize = 4_500;
    let dir = common::process::scratch_dir("cti-large-reload");
    let policy_file = dir.join("policy.toml");
    let roomy = |k: &Knobs| {
        policy(k).replace(
            "max_waiting = 20",
            "max_waiting = 5000\nhandle_time = \"1s\"",
        )
    };
    std::fs::write(&policy_file, roomy(&KNOBS)).unwrap();
    let p = common::process::Process::start(&[
        "--policy",
        policy_file.to_str().unwrap(),
        "--event-retention",
        "1000",
    ])
    .keeping(dir);
    let mut c = client(&p).await;
    agent(&mut c, "s1", "Access", "scheduling").await;
    busy(&mut c, "s0", "scheduling").await;
    for i in 0..CALLERS {
        queue(&mut c, contact(&format!("w{i}"), "scheduling")).await;
    }
    let mut events = c
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let closed = Knobs {
        scheduling_closed: true,
        ..KNOBS
    };
    std::fs::write(&policy_file, roomy(&closed)).unwrap();
    p.signal("HUP");

    // The reload's command, every event of it once, in order.
    let mut called_back = std::collections::HashSet::new();
    let mut last: Option<pb::RoutingEvent> = None;
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("the reload's events within 20 s")
            .unwrap_or_else(|refused| panic!("the watcher was ended: {refused:?}"))
            .expect("the stream ended");
        if let Some(prev) = &last {
            assert!(common::floor::follows(prev, &e), "{prev:?} then {e:?}");
        }
        if let Some(pb::routing_event::Event::Assignment(a)) = &e.event
            && matches!(a.event, Some(E::Callback(_)))
        {
            assert!(called_back.insert(a.contact_id.clone()), "{e:?} twice");
        }
        let done = e.last_of_sequence && e.index > 0;
        last = Some(e);
        if done {
            break;
        }
    }
    assert_eq!(called_back.len(), CALLERS);
}
