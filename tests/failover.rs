//! Leader and hot standby on a replicated log, with real components: a
//! three-node `nats-server` cluster (or one server) on loopback ports and
//! two careroute processes. The leader is killed with `kill -9` under load,
//! frozen with SIGSTOP and resumed, and the NATS server frozen under it; a
//! ledger of what clients were told is the oracle. Without `nats-server`
//! the tests say so and skip (under `CI=true` they must run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use careroute::grpc::pb::{self, routing_service_client::RoutingServiceClient};
use common::{
    contact,
    floor::{
        self, KNOBS, Knobs, agent, client, decides, next_event, policy, resumable_after,
        watch_after,
    },
    nats::Nats,
    process::{Process, fresh_data_dir},
    sample,
};
use tonic::{Code, transport::Channel};

/// Reservations outlive the failover.
const SLOW: Knobs = Knobs {
    reservation_ttl: "60s",
    ..KNOBS
};

/// A careroute on the replicated log `cluster` of `nats`.
fn careroute(nats: &Nats, cluster: &str, replicas: &str) -> Process {
    careroute_with(nats, cluster, replicas, &[])
}

/// [`careroute`] with more flags.
fn careroute_with(nats: &Nats, cluster: &str, replicas: &str, more: &[&str]) -> Process {
    careroute_on(nats, cluster, replicas, more).0
}

/// [`careroute_with`], and the path of its policy file.
fn careroute_on(
    nats: &Nats,
    cluster: &str,
    replicas: &str,
    more: &[&str],
) -> (Process, std::path::PathBuf) {
    let data = fresh_data_dir();
    let path = data.join("policy.toml");
    std::fs::write(&path, policy(&SLOW)).unwrap();
    let urls = nats.urls();
    let mut args = vec![
        "--policy",
        path.to_str().unwrap(),
        "--journal",
        &urls,
        "--cluster-id",
        cluster,
        "--nats-replicas",
        replicas,
        "--lease-ttl",
        "2s",
    ];
    args.extend_from_slice(more);
    let p = Process::start_in(&data, &args, "info").keeping(data);
    (p, path.clone())
}

/// A unique cluster id per test run.
fn cluster_id(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The log of the test's cluster id `name` on `nats`, opened as a leader's
/// writer opens it.
async fn stream(nats: &Nats, name: &str, replicas: usize) -> careroute::journal::Nats {
    let (log, _) = careroute::journal::Nats::connect(
        &nats.urls(),
        &careroute::journal::NatsSecurity::default(),
        &cluster_id(name),
        replicas,
        Duration::from_secs(5),
        careroute::engine::IdKey([7; 16]),
    )
    .await
    .unwrap();
    log
}

/// Routes `id` with its own id as request id.
async fn route(
    c: &mut RoutingServiceClient<Channel>,
    id: &str,
) -> Result<pb::RouteContactResponse, tonic::Status> {
    let mut r = contact(id, "billing");
    r.request_id = id.into();
    c.route_contact(r).await.map(tonic::Response::into_inner)
}

/// Routes `id` on `c`, a client of `p`, until it is answered; returns the
/// answer and how long it took. Meanwhile `p` may refuse, but never names
/// itself as the leader to send callers to.
async fn route_until_answered(
    c: &mut RoutingServiceClient<Channel>,
    p: &Process,
    id: &str,
    within: Duration,
) -> (pb::RouteContactResponse, Duration) {
    let started = Instant::now();
    loop {
        match route(c, id).await {
            Ok(d) => return (d, started.elapsed()),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                let named = e.metadata().get("careroute-leader");
                assert_ne!(
                    named.and_then(|v| v.to_str().ok()),
                    Some(p.grpc.as_str()),
                    "a refusal sent callers back to the process refusing: {e:?}"
                );
                assert!(
                    started.elapsed() < within,
                    "not answered within {within:?}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits (10 s at most) until `/readyz` answers `code`, and gRPC health
/// says the same for the routing service and for the whole server
/// (service "", what probes ask by default).
async fn wait_for_readyz(p: &Process, code: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let serving = if code == "200" {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    } as i32;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect_lazy();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = common::http_get(&p.metrics, "/readyz").await;
        let health = [
            common::health_status(channel.clone(), "").await,
            common::health_status(channel.clone(), "careroute.v1.RoutingService").await,
        ];
        if got.lines().next().is_some_and(|l| l.contains(code)) && health == [serving; 2] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz and health never said {code}: {got}, health {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_under_load_a_standby_answers_and_nothing_acknowledged_is_lost() {
    let Some(nats) = Nats::start(3) else { return };
    let id = cluster_id("kill");
    let mut a = careroute(&nats, &id, "3");
    a.wait_for_log("this process leads", Duration::from_secs(30));
    // The standby takes a snapshot every 100 records and purges the stream
    // behind the one before.
    let mut b = careroute_with(&nats, &id, "3", &["--snapshot-every", "100"]);
    b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));

    let mut ca = client(&a).await;
    for i in 0..12 {
        agent(&mut ca, &format!("b{i}"), "Billing", "billing").await;
    }
    // The standby refuses, naming the leader.
    let mut cb = client(&b).await;
    let refused = route(&mut cb, "to-standby").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(
        refused.metadata().get("careroute-leader").unwrap(),
        a.grpc.as_str()
    );
    wait_for_readyz(&b, "503").await;
    // The standby's metrics are its replica's, the leader's state: a
    // dashboard takes the max over instances.
    let available = |scrape: &str| sample(scrape, &["careroute_agents{state=\"available\"}"]);
    let on_leader = available(&common::http_get(&a.metrics, "/metrics").await);
    assert!(on_leader >= 12.0, "{on_leader}");
    let waiting = Instant::now();
    loop {
        let on_standby = available(&common::http_get(&b.metrics, "/metrics").await);
        if on_standby == on_leader {
            break;
        }
        assert!(
            waiting.elapsed() < Duration::from_secs(10),
            "the standby's metrics show {on_standby} agents available, the leader's {on_leader}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let no_events = cb
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(no_events.code(), Code::Unavailable, "{no_events:?}");

    // A watcher on the leader, from the start of the log, until the kill.
    let told: Arc<Mutex<Vec<pb::RoutingEvent>>> = Arc::default();
    let watcher = {
        let mut events = watch_after(&mut ca, 0).await.unwrap();
        let told = Arc::clone(&told);
        tokio::spawn(async move {
            while let Ok(Some(e)) = events.message().await {
                told.lock().unwrap().push(e);
            }
        })
    };

    // Load on the leader from four clients, each keeping a ledger of what
    // it was told, until the kill cuts them off.
    let ledger: Arc<Mutex<Vec<(String, pb::RouteContactResponse)>>> = Arc::default();
    let mut load = Vec::new();
    for k in 0..4 {
        let mut c = client(&a).await;
        let ledger = Arc::clone(&ledger);
        load.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("c{k}-{i}");
                match route(&mut c, &id).await {
                    Ok(d) => ledger.lock().unwrap().push((id, d)),
                    Err(_) => return,
                }
            }
        }));
    }
    // Enough records for the standby to have saved three snapshots (every
    // 100; a save that fails is taken again 100 records later), so the
    // stream is purged behind the one before the newest.
    let loading = Instant::now();
    while ledger.lock().unwrap().len() < 400
        || b.logs().matches("replication: snapshot saved").count() < 3
    {
        assert!(
            loading.elapsed() < Duration::from_secs(60),
            "the load stalled, or the standby saved fewer than 3 snapshots; its logs:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.kill9();
    for l in load {
        l.await.unwrap();
    }
    watcher.await.unwrap();
    let told = std::mem::take(&mut *told.lock().unwrap());
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.len() > 12, "too little load: {}", ledger.len());

    let (_, took) = route_until_answered(&mut cb, &b, "after", Duration::from_secs(30)).await;
    eprintln!(
        "failover: the standby answered RouteContact {took:?} after the leader's kill -9 ({} answers acknowledged before it)",
        ledger.len()
    );
    wait_for_readyz(&b, "200").await;

    // The watcher resumes on the new leader from the start of the log and
    // is told what the old leader told it, the same to the byte, then the
    // rest: each event of the log once, in order, up to the first answer
    // of the new term.
    assert!(told.len() > 12, "the watcher was told too little: {told:?}");
    let mut resumed = watch_after(&mut cb, 0).await.unwrap();
    let mut by_b = Vec::new();
    for (i, expected) in told.iter().enumerate() {
        let e = next_event(&mut resumed).await;
        assert_eq!(&e, expected, "event {i}");
        by_b.push(e);
    }
    while !by_b.last().is_some_and(|e| decides(e, "after")) {
        let e = next_event(&mut resumed).await;
        let last = by_b.last().unwrap();
        assert!(floor::follows(last, &e), "{e:?} after {last:?}");
        by_b.push(e);
    }
    eprintln!(
        "failover: a watcher resumed on the new leader; {} events told before the kill, {} up to the new term's first answer",
        told.len(),
        by_b.len()
    );

    // Every acknowledged answer holds on the new leader: a retry gets the
    // same decision, every offer is confirmable (each agent once), every
    // caller told to wait still waits, each in its own place.
    let (mut agents, mut positions) = (HashSet::new(), Vec::new());
    for (contact_id, d) in &ledger {
        match &d.outcome {
            Some(pb::route_contact_response::Outcome::Agent(t)) => {
                let confirmed = cb
                    .confirm_reservation(pb::ConfirmReservationRequest {
                        reservation_id: t.reservation_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:?}", t.reservation_id))
                    .into_inner();
                assert!(
                    agents.insert(confirmed.agent_id.clone()),
                    "{} reserved twice",
                    confirmed.agent_id
                );
                assert_eq!(&confirmed.contact_id, contact_id);
            }
            Some(pb::route_contact_response::Outcome::Queued(_)) => {
                let status = floor::status(&mut cb, contact_id).await.unwrap();
                let Some(pb::get_contact_status_response::Status::Waiting(w)) = status.status
                else {
                    panic!("a caller told to wait no longer waits: {status:?}")
                };
                positions.push((contact_id.clone(), w.position));
            }
            // The line is full: a callback ticket, kept as any decision.
            Some(pb::route_contact_response::Outcome::Callback(_)) => {}
            other => panic!("unexpected answer under load: {other:?}"),
        };
        let again = route(&mut cb, contact_id).await.unwrap();
        assert_eq!(again.decision_id, d.decision_id, "{contact_id}");
    }
    assert_eq!(agents.len(), 12, "every agent was offered once");
    let distinct: HashSet<u32> = positions.iter().map(|(_, p)| *p).collect();
    assert_eq!(distinct.len(), positions.len(), "two callers in one place");

    // The stream was purged behind the snapshots; the newest snapshot is
    // then damaged (its body replaced), so a third process starts from the
    // one before it and the stream after that. Then the second leader is
    // killed too, and the third holds the same floor.
    let first = nats.first_record(&id).await;
    assert!(
        first > 100,
        "the stream was not purged: it starts at {first}"
    );
    let snapshots = nats
        .jetstream()
        .await
        .get_object_store(format!("careroute_{id}_snapshots"))
        .await
        .unwrap();
    // A new snapshot is saved before the oldest is deleted (never fewer
    // than two that load): a listing taken in between shows three. The
    // newest two are what is kept once the standby is done.
    let deadline = Instant::now() + Duration::from_secs(15);
    let names = loop {
        let mut names = Vec::new();
        let mut list = snapshots.list().await.unwrap();
        while let Some(info) = tokio_stream::StreamExt::next(&mut list).await {
            names.push(info.unwrap().name);
        }
        names.sort();
        if names.len() == 2 || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A leader killed between saving a snapshot and dropping the oldest
    // leaves three until the next one is saved: the newest two are what a
    // start reads.
    assert!((2..=3).contains(&names.len()), "{names:?}");
    let (older, newest) = (&names[names.len() - 2], &names[names.len() - 1]);
    snapshots
        .put(newest.as_str(), &mut &b"not a snapshot"[..])
        .await
        .unwrap();
    let c = careroute(&nats, &id, "3");
    c.wait_for_log("a snapshot cannot be loaded", Duration::from_secs(30));
    let rebuilt = c.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    let rebuilt: serde_json::Value = serde_json::from_str(&rebuilt).unwrap();
    let older: u64 = older.trim_start_matches("state-").parse().unwrap();
    assert_eq!(
        rebuilt["fields"]["snapshot"].as_u64(),
        Some(older),
        "{rebuilt}"
    );
    b.kill9();
    let mut cc = client(&c).await;
    route_until_answered(&mut cc, &c, "after-second", Duration::from_secs(30)).await;
    // A watcher resumes on the third leader from that snapshot on (the log
    // before it is gone from the stream): told what the second told.
    let before = watch_after(&mut cc, 0).await.unwrap_err();
    assert_eq!(before.code(), Code::OutOfRange, "{before:?}");
    let mut resumed = watch_after(&mut cc, older).await.unwrap();
    let since: Vec<_> = by_b.iter().filter(|e| e.sequence > older).collect();
    assert!(!since.is_empty(), "nothing told after snapshot {older}");
    for expected in since {
        assert_eq!(&next_event(&mut resumed).await, expected);
    }
    for (contact_id, d) in &ledger {
        let again = route(&mut cc, contact_id).await.unwrap();
        assert_eq!(again.decision_id, d.decision_id, "{contact_id}");
    }
    for (contact_id, position) in &positions {
        let status = floor::status(&mut cc, contact_id).await.unwrap();
        let Some(pb::get_contact_status_response::Status::Waiting(w)) = status.status else {
            panic!("{contact_id} no longer waits: {status:?}")
        };
        assert_eq!(w.position, *position, "{contact_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_rebuilt_from_the_log_retains_only_the_last_events_and_tells_them_as_told() {
    let Some(nats) = Nats::start(1) else { return };
    let id = cluster_id("retain");
    let mut a = careroute(&nats, &id, "1");
    a.wait_for_log("this process leads", Duration::from_secs(30));
    let mut ca = client(&a).await;
    let mut watch = watch_after(&mut ca, 0).await.unwrap();
    for i in 0..20 {
        route(&mut ca, &format!("c{i}")).await.unwrap();
    }
    let mut told = Vec::new();
    while !told.last().is_some_and(|e| decides(e, "c19")) {
        told.push(next_event(&mut watch).await);
    }
    // A standby that starts now rebuilds from the log with a ring of six
    // events: the records before the last ones are applied telling
    // nothing, and those after as the leader told them.
    let b = careroute_with(&nats, &id, "1", &["--event-retention", "6"]);
    b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    a.kill9();
    b.wait_for_log("this process leads", Duration::from_secs(30));
    let mut cb = client(&b).await;
    let refused = watch_after(&mut cb, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let after = resumable_after(&refused);
    let last = told.last().unwrap().sequence;
    assert!(
        after > told[0].sequence && after < last,
        "{after} of {last}"
    );
    let mut resumed = watch_after(&mut cb, after).await.unwrap();
    // Each route told one event (its decision; no agent is registered):
    // the ring holds those of the last six routes, told as the leader told
    // them.
    let retained: Vec<_> = told.iter().filter(|e| e.sequence > after).collect();
    assert_eq!(retained.len(), 6, "{retained:?}");
    for expected in retained {
        assert_eq!(&next_event(&mut resumed).await, expected);
    }
}

/// A leader and a standby on the log `id` of `nats` (three replicas),
/// the agent b1 registered on the leader, and a client of the leader.
async fn leader_and_standby(
    nats: &Nats,
    id: &str,
) -> (Process, Process, RoutingServiceClient<Channel>) {
    let a = careroute(nats, id, "3");
    a.wait_for_log("this process leads", Duration::from_secs(30));
    let b = careroute(nats, id, "3");
    b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    let mut ca = client(&a).await;
    agent(&mut ca, "b1", "Billing", "billing").await;
    (a, b, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_resumed_answers_nothing_and_rejoins_as_a_standby() {
    let Some(nats) = Nats::start(3) else { return };
    let (a, b, mut ca) = leader_and_standby(&nats, &cluster_id("freeze")).await;
    let before = route(&mut ca, "before").await.unwrap();
    // A CTI watching the leader's offers.
    let mut watching = ca
        .watch_assignments(pb::WatchAssignmentsRequest {
            queue_ids: vec!["billing".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = ca
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner();

    a.signal("STOP");
    let mut cb = client(&b).await;
    let (during, took) = route_until_answered(&mut cb, &b, "during", Duration::from_secs(30)).await;
    eprintln!("failover: the standby answered {took:?} after the leader froze");
    a.signal("CONT");

    // The old leader's first call after it resumes is not answered: its
    // append is fenced (or its lease is gone), and it steps down.
    let stale = route(&mut ca, "stale").await.unwrap_err();
    assert_eq!(stale.code(), Code::Unavailable, "{stale:?}");
    a.wait_for_log("steps down", Duration::from_secs(10));
    a.wait_for_nth_log("standby rebuilt from the log", 2, Duration::from_secs(30));
    // A standby now, pointing at the new leader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = route(&mut ca, "to-old-leader").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        if e.metadata()
            .get("careroute-leader")
            .map(|v| v.to_str().unwrap())
            == Some(b.grpc.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old leader never named the new one: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_readyz(&a, "503").await;
    // Its watchers are told to go to the new leader rather than left
    // waiting.
    let ended = [
        ended_with(&mut watching, "WatchAssignments").await,
        ended_with(&mut events, "WatchEvents").await,
    ];
    for ended in ended {
        assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
        let leader = ended.metadata().get("careroute-leader");
        assert_eq!(
            leader.map(|v| v.to_str().unwrap()),
            Some(b.grpc.as_str()),
            "{ended:?}"
        );
    }

    // The new leader holds what was acknowledged, and not what was not.
    assert_eq!(
        route(&mut cb, "before").await.unwrap().decision_id,
        before.decision_id
    );
    assert_eq!(
        route(&mut cb, "during").await.unwrap().decision_id,
        during.decision_id
    );
    let unknown = floor::status(&mut cb, "stale").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

/// The status `stream` (named `what`) ends with, within 10 s; whatever it
/// sent before is read and dropped.
async fn ended_with<T>(stream: &mut tonic::Streaming<T>, what: &str) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{what} ended without a reason"),
                Err(e) => return e,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the old leader's {what} was left open"))
}

/// The NATS server leading the stream killed, one of three: the stream
/// (three replicas) keeps every record, and a careroute answers again by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_server_of_three_killed_loses_nothing_and_a_careroute_answers_again() {
    let Some(nats) = Nats::start(3) else { return };
    let id = cluster_id("lose-one");
    let (a, b, mut ca) = leader_and_standby(&nats, &id).await;
    let before = route(&mut ca, "before").await.unwrap();
    let Some(pb::route_contact_response::Outcome::Agent(offer)) = &before.outcome else {
        panic!("{before:?}")
    };
    // A caller in line behind it.
    let waiting = route(&mut ca, "waiting").await.unwrap();
    assert!(
        matches!(
            waiting.outcome,
            Some(pb::route_contact_response::Outcome::Queued(_))
        ),
        "{waiting:?}"
    );

    // The server that leads the stream: the hardest one to lose.
    let js = nats.jetstream().await;
    let mut stream = js.get_stream(format!("CAREROUTE_{id}")).await.unwrap();
    let info = stream.info().await.unwrap();
    let stream_leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a stream of three replicas has a leader");
    let lost: usize = stream_leader.trim_start_matches('n').parse().unwrap();
    drop(js);
    nats.servers[lost].signal("KILL");
    let killed = Instant::now();
    let mut cb = client(&b).await;
    // Whichever careroute leads once the stream has settled.
    let (mut leader, answer) = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no careroute answered within 60 s of losing one NATS server of three:\n{}\n{}",
            a.logs(),
            b.logs()
        );
        let mut answered = None;
        for c in [&mut ca, &mut cb] {
            match route(c, "before").await {
                Ok(d) => {
                    answered = Some((c.clone(), d));
                    break;
                }
                Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
            }
        }
        if let Some(found) = answered {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "one NATS server of three killed (n{lost}, the stream's leader): a careroute answered again after {:?}",
        killed.elapsed()
    );
    // What was acknowledged before holds: the same decision for the retry,
    // the reservation confirmable, the caller still first in line.
    assert_eq!(answer.decision_id, before.decision_id);
    leader
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: offer.reservation_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let Some(pb::get_contact_status_response::Status::Waiting(w)) =
        floor::status(&mut leader, "waiting").await.unwrap().status
    else {
        panic!("the caller in line was lost")
    };
    assert_eq!(w.position, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_unreachable_the_leader_answers_nothing_and_resumes_by_itself() {
    let Some(nats) = Nats::start(1) else { return };
    let id = cluster_id("unreachable");
    let a = careroute(&nats, &id, "1");
    a.wait_for_log("this process leads", Duration::from_secs(30));
    let mut ca = client(&a).await;
    agent(&mut ca, "b1", "Billing", "billing").await;
    let before = route(&mut ca, "before").await.unwrap();

    nats.servers[0].signal("STOP");
    let refused = tokio::time::timeout(Duration::from_secs(30), route(&mut ca, "cut-off"))
        .await
        .expect("a call waited on the log for more than 30 s")
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    wait_for_readyz(&a, "503").await;

    nats.servers[0].signal("CONT");
    let (_, took) = route_until_answered(&mut ca, &a, "after", Duration::from_secs(60)).await;
    eprintln!("the leader answered again {took:?} after NATS came back");
    assert_eq!(
        route(&mut ca, "before").await.unwrap().decision_id,
        before.decision_id
    );
    // The refused call may have reached the log before NATS froze (its
    // outcome is unknown to the client, as after any timeout): a retry with
    // its request id gets one decision, the same each time.
    let retried = route(&mut ca, "cut-off").await.unwrap();
    assert_eq!(
        route(&mut ca, "cut-off").await.unwrap().decision_id,
        retried.decision_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_batch_is_refused_whole_even_where_its_sequence_would_fit() {
    use careroute::journal::{Entry, JournalError};
    let Some(nats) = Nats::start(1) else { return };
    let log = stream(&nats, "fence", 1).await;
    let at = chrono::Utc::now();
    let record = |seq| (seq, Entry::accepted(at, careroute::journal::restarted()));
    // The old leader appends 1 and 2; a new leader, having read 2, appends 3.
    let mut old = None;
    log.append(&[record(1), record(2)], "old", &mut old)
        .await
        .unwrap();
    let mut new = None;
    log.append(&[record(3)], "new", &mut new).await.unwrap();
    // The old leader's next batch, 3 and 4: 3 is fenced, and 4, which
    // would fit after the new leader's 3, is refused with it.
    let refused = log
        .append(&[record(3), record(4)], "old", &mut old)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, JournalError::Fenced { seq: 3 }),
        "{refused:?}"
    );
    assert_eq!(log.last_seq().await.unwrap(), 3);
    // The new leader carries on.
    log.append(&[record(4)], "new", &mut new).await.unwrap();
    assert_eq!(log.last_seq().await.unwrap(), 4);
}

/// The writer's batches in flight, on one server and on a cluster of three
/// (R3): sent before the one before is acknowledged, they land in order;
/// chained to one that is refused, they are refused with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sent_before_the_one_before_is_acknowledged_land_in_order_or_fall_with_it() {
    for replicas in [1, 3] {
        batches_in_flight(replicas).await;
    }
}

/// Waits (10 s at most) until every acknowledgement of `acks` is in,
/// looking without waiting as the writer does.
async fn arrive(acks: &mut careroute::journal::Acks) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !acks.arrived(&tokio::runtime::Handle::current()) {
        assert!(Instant::now() < deadline, "acknowledgements never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn batches_in_flight(replicas: usize) {
    use careroute::journal::{Entry, JournalError};
    let Some(nats) = Nats::start(replicas) else {
        return;
    };
    let log = stream(&nats, &format!("in-flight-r{replicas}"), replicas).await;
    let at = chrono::Utc::now();
    let record = |seq| (seq, Entry::accepted(at, careroute::journal::restarted()));
    // A leader sends three batches before confirming any: all land, in
    // order.
    let mut old = None;
    let mut acks = Vec::new();
    for batch in [vec![record(1)], vec![record(2), record(3)], vec![record(4)]] {
        acks.push(log.send(&batch, "old", &mut old).await.unwrap());
    }
    // Looked at without waiting, as the writer looks between batches, each
    // is in once its acknowledgements are; confirming it then answers.
    for mut a in acks {
        arrive(&mut a).await;
        a.confirm().await.unwrap();
    }
    assert_eq!(log.last_seq().await.unwrap(), 4, "R{replicas}");
    // A new leader, having read 4, appends 5.
    let mut new = None;
    log.append(&[record(5)], "new", &mut new).await.unwrap();
    // The deposed leader sends two more batches before confirming either:
    // the first is fenced, and the second, whose first record would fit
    // after the new leader's 5, falls with it.
    let mut first = log.send(&[record(5)], "old", &mut old).await.unwrap();
    let mut second = log
        .send(&[record(6), record(7)], "old", &mut old)
        .await
        .unwrap();
    // A refusal, too, is taken without waiting, and kept for the confirm.
    arrive(&mut first).await;
    arrive(&mut second).await;
    let refused = first.confirm().await.unwrap_err();
    assert!(
        matches!(refused, JournalError::Fenced { seq: 5 }),
        "R{replicas}: {refused:?}"
    );
    let refused = second.confirm().await.unwrap_err();
    assert!(
        matches!(refused, JournalError::Fenced { seq: 6 }),
        "R{replicas}: {refused:?}"
    );
    assert_eq!(log.last_seq().await.unwrap(), 5, "R{replicas}");
    // Not in before it is acknowledged: with the server frozen, a batch
    // sent is looked at and found still to come; resumed, it arrives.
    if replicas == 1 {
        nats.servers[0].signal("STOP");
        let mut pending = log.send(&[record(6)], "new", &mut new).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let runtime = tokio::runtime::Handle::current();
        assert!(
            !pending.arrived(&runtime),
            "in before a frozen server acknowledged it"
        );
        nats.servers[0].signal("CONT");
        arrive(&mut pending).await;
        pending.confirm().await.unwrap();
        assert_eq!(log.last_seq().await.unwrap(), 6);
    }
}

/// More records queued at once than the NATS client lets be unacknowledged
/// (5,000): the writer confirms what is in flight before it sends more,
/// rather than wait for a slot that only its own confirming can free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_more_records_than_nats_lets_be_unacknowledged_is_written_whole() {
    use careroute::journal::{Entry, Journal, Log};
    const BURST: u64 = 12_000;
    let Some(nats) = Nats::start(1) else { return };
    let log = stream(&nats, "burst", 1).await;
    let journal = Journal::<()>::start(
        Some(Log::nats(log.clone(), tokio::runtime::Handle::current())),
        0,
        None,
        |_, _| {},
        |_| {},
    );
    let at = chrono::Utc::now();
    let mut last = None;
    for _ in 0..BURST {
        last = Some(journal.append(
            true,
            Some(Entry::accepted(at, careroute::journal::restarted())),
            |_| Vec::new(),
        ));
    }
    let last = last.unwrap();
    assert_eq!(last.seq, BURST);
    let written = tokio::time::timeout(Duration::from_secs(60), journal.durable(last))
        .await
        .expect("the writer hung with a burst in flight");
    written.unwrap();
    assert_eq!(log.last_seq().await.unwrap(), BURST);
}

/// The log on a NATS server that speaks TLS only, verifies its clients'
/// certificates and admits one NKEY user: careroute given the CA, its
/// certificate and the seed leads and answers; without any one of them it
/// does not start, and says which file or what NATS refused (never the
/// seed).
#[tokio::test]
async fn the_log_on_nats_over_mutual_tls_with_an_nkey_user() {
    use common::pki::{self, Ca};
    let dir = fresh_data_dir();
    let ca = Ca::new("nats test CA");
    let (server_cert, server_key) = pki::write(&dir, "nats", &ca.server());
    let (client_cert, client_key) = pki::write(&dir, "careroute", &ca.client("careroute"));
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let user = nkeys::KeyPair::new_user();
    let seed = dir.join("careroute.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().unwrap())).unwrap();
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\nauthorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}\n",
        server_cert.display(),
        server_key.display(),
        ca_file.display(),
        user.public_key()
    );
    let Some(mut nats) = Nats::start_with(1, &conf) else {
        return;
    };
    let id = cluster_id("secured");
    let (ca_arg, seed_arg) = (ca_file.to_str().unwrap(), seed.to_str().unwrap());
    let (cert_arg, key_arg) = (client_cert.to_str().unwrap(), client_key.to_str().unwrap());
    let all = [
        "--nats-ca",
        ca_arg,
        "--nats-nkey-seed",
        seed_arg,
        "--nats-cert",
        cert_arg,
        "--nats-key",
        key_arg,
    ];
    let a = careroute_with(&nats, &id, "1", &all);
    a.wait_for_log("this process leads", Duration::from_secs(30));
    wait_for_readyz(&a, "200").await;
    let mut ca_client = client(&a).await;
    agent(&mut ca_client, "b1", "Billing", "billing").await;
    route(&mut ca_client, "over-tls").await.unwrap();

    // Each missing piece: the start fails, naming what NATS refused.
    let without = |skip: &str| -> Vec<&str> {
        let mut args = Vec::new();
        for pair in all.chunks(2) {
            // A certificate is given only with its key and the CA.
            let skipped = pair[0] == skip
                || (skip != "--nats-nkey-seed" && ["--nats-cert", "--nats-key"].contains(&pair[0]));
            if !skipped {
                args.extend_from_slice(pair);
            }
        }
        args
    };
    let urls = nats.urls();
    let refused = |more: &[&str]| -> String {
        let data = fresh_data_dir();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_careroute"))
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(["--journal", &urls, "--cluster-id", &id, "--data-dir"])
            .arg(&data)
            .args(more)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("started with only {more:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success(), "{more:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        stderr
    };
    for skip in ["--nats-nkey-seed", "--nats-ca", "--nats-cert"] {
        let said = refused(&without(skip));
        assert!(
            said.contains("careroute: journal on NATS: cannot connect to"),
            "{skip}: {said}"
        );
    }
    // A seed file that holds no seed is refused naming the file, and its
    // contents are not repeated.
    let bad = dir.join("bad.nk");
    std::fs::write(&bad, "SUA-not-really-a-seed-secret-part\n").unwrap();
    let mut args = without("--nats-nkey-seed");
    args.extend_from_slice(&["--nats-nkey-seed", bad.to_str().unwrap()]);
    let said = refused(&args);
    assert!(
        said.contains(&format!("{}: not an NKEY user seed", bad.display())),
        "{said}"
    );
    assert!(!said.contains("secret-part"), "{said}");
    // The leader kept on through all of it.
    route(&mut ca_client, "still").await.unwrap();

    // The seed rotated: the seed file holds a new user's, and NATS, started
    // again, knows only that user. The leader reconnects with the seed read
    // again and answers again, without a restart of its own.
    let rotated = nkeys::KeyPair::new_user();
    std::fs::write(&seed, format!("{}\n", rotated.seed().unwrap())).unwrap();
    nats.restart_with(&conf.replace(&user.public_key(), &rotated.public_key()));
    let (_, took) =
        route_until_answered(&mut ca_client, &a, "rotated", Duration::from_secs(30)).await;
    a.wait_for_nth_log("connected successfully", 2, Duration::from_secs(5));
    eprintln!("rotation: the leader answered {took:?} after NATS came back with only the new user");
}

/// `careroute journal` on the log of `cluster` on `nats`, with `args`.
fn journal_on(nats: &Nats, cluster: &str, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let urls = nats.urls();
    let mut all = vec!["--journal", urls.as_str(), "--cluster-id", cluster];
    all.extend_from_slice(args);
    common::process::journal(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careroute_journal_reads_the_log_on_nats_with_what_each_command_decided() {
    let Some(nats) = Nats::start(1) else { return };
    let id = cluster_id("audit");
    let a = careroute(&nats, &id, "1");
    a.wait_for_log("this process leads", Duration::from_secs(30));
    // A standby snapshots every 20 records: the stream is purged behind
    // the one before the newest.
    let mut b = careroute_with(&nats, &id, "1", &["--snapshot-every", "20"]);
    b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    let mut ca = client(&a).await;
    agent(&mut ca, "b1", "Billing", "billing").await;
    let mut answered = Vec::new();
    // Enough records for three snapshots, even if one is skipped while
    // the one before is still being saved.
    for i in 0..120 {
        let contact_id = format!("c{i}");
        answered.push((
            contact_id.clone(),
            route(&mut ca, &contact_id).await.unwrap(),
        ));
    }
    b.wait_for_nth_log("replication: snapshot saved", 3, Duration::from_secs(10));
    // The standby may still be saving and purging behind its newest: an
    // export that reads meanwhile is refused ("run it again"), which is
    // right but not what this test reads. Stopped, it purges no more (the
    // leader's own looks come every 5 minutes).
    b.kill9();

    // Every record the stream keeps, as stored, in order.
    let (ok, lines, stderr) = journal_on(&nats, &id, &[]);
    assert!(ok, "{stderr}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    let (first, last) = (seqs[0], *seqs.last().unwrap());
    assert!(first > 1, "the stream was not purged: {stderr}");
    assert_eq!(seqs, (first..=last).collect::<Vec<_>>());
    assert!(
        stderr.contains(&format!("the log keeps records {first} to {last}")),
        "{stderr}"
    );

    // With outcomes from a record after the oldest kept snapshot: each
    // decision as it was answered. Up to the same last record: the leader
    // logs a tick each second while contacts wait in line.
    let (from, to) = ((last - 10).to_string(), last.to_string());
    let (ok, lines, stderr) = journal_on(&nats, &id, &["--outcomes", "--from", &from, "--to", &to]);
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 11);
    let mut checked = 0;
    for line in &lines {
        let Some(contact_id) = line["command"]["route"]["contact_id"].as_str() else {
            continue;
        };
        let (_, answer) = answered.iter().find(|(c, _)| c == contact_id).unwrap();
        assert_eq!(line["result"]["decision_id"], answer.decision_id.as_str());
        checked += 1;
    }
    assert!(checked >= 5, "{lines:?}");

    // Outcomes from before what the stream keeps cannot be rebuilt.
    let (ok, _, stderr) = journal_on(&nats, &id, &["--outcomes", "--from", "1"]);
    assert!(!ok);
    assert!(stderr.contains("was compacted"), "{stderr}");

    // A cluster id with no log is refused, and none is made for it.
    let (ok, _, stderr) = journal_on(&nats, "nosuch", &[]);
    assert!(!ok);
    assert!(
        stderr.contains("no log for --cluster-id nosuch"),
        "{stderr}"
    );
    let js = nats.jetstream().await;
    assert!(js.get_stream("CAREROUTE_nosuch").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_standby_takes_the_snapshots_and_a_restart_loads_them() {
    let Some(nats) = Nats::start(1) else { return };
    let id = cluster_id("alone");
    let flags = ["--snapshot-every", "20", "--snapshot-interval", "1s"];
    let mut a = careroute_with(&nats, &id, "1", &flags);
    a.wait_for_log("this process leads", Duration::from_secs(30));
    let mut ca = client(&a).await;
    agent(&mut ca, "b1", "Billing", "billing").await;
    let mut answered = Vec::new();
    let mut saved = Vec::new();
    for round in 0..2 {
        for i in 0..50 {
            let contact_id = format!("c{round}-{i}");
            answered.push((
                contact_id.clone(),
                route(&mut ca, &contact_id).await.unwrap(),
            ));
        }
        // No snapshot, and 50 records behind (more than twice 20): the
        // leader's next look (every second) takes one.
        let line = a.wait_for_nth_log(
            "replication: snapshot saved",
            round + 1,
            Duration::from_secs(15),
        );
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        saved.push(line["fields"]["seq"].as_u64().unwrap());
    }
    assert!(
        a.logs()
            .contains("no standby took a snapshot; the leader takes one")
    );
    assert!(saved[1] > saved[0], "{saved:?}");
    // The second purged the stream up to the first, its fallback.
    let first = nats.first_record(&id).await;
    // (One more may have been saved meanwhile: it purges up to the one
    // before it.)
    let all: Vec<u64> = a
        .logs()
        .lines()
        .filter(|l| l.contains("replication: snapshot saved"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"]["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        all.len() >= 2 && all.contains(&(first - 1)),
        "stream starts at {first}, snapshots at {all:?}"
    );

    // Killed and started again: rebuilt from the newest snapshot, every
    // decision still the one answered.
    a.kill9();
    let b = careroute_with(&nats, &id, "1", &flags);
    let rebuilt = b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    let rebuilt: serde_json::Value = serde_json::from_str(&rebuilt).unwrap();
    assert!(
        rebuilt["fields"]["snapshot"].as_u64().unwrap() >= saved[1],
        "{rebuilt}"
    );
    let mut cb = client(&b).await;
    route_until_answered(&mut cb, &b, "after", Duration::from_secs(30)).await;
    for (contact_id, d) in &answered {
        let again = route(&mut cb, contact_id).await.unwrap();
        assert_eq!(again.decision_id, d.decision_id, "{contact_id}");
    }
}

/// An export the stream is purged under (a snapshot saved while it reads):
/// the records it did not get are reported as not delivered, the ones it
/// got come whole and in order, and no outcome after the gap is replayed
/// from a state missing it.
#[test]
fn an_export_the_stream_is_purged_under_reports_what_it_missed() {
    use careroute::{
        audit::{self, Source},
        engine::ReplacePolicy,
        journal::{Entry, Journal, Log, NatsSecurity},
        policy::Policy,
    };
    /// More records than an ordered consumer asks for at once (500), so
    /// most are still on the server when the purge comes.
    const RECORDS: u64 = 5_000;
    /// The purge keeps the records from this one on.
    const KEPT_FROM: u64 = RECORDS - 9;
    let Some(nats) = Nats::start(1) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let log = stream(&nats, "purged", 1).await;
        let journal = Journal::<()>::start(
            Some(Log::nats(log, tokio::runtime::Handle::current())),
            0,
            None,
            |_, _| {},
            |_| {},
        );
        let at = chrono::Utc::now();
        let policy = ReplacePolicy(std::sync::Arc::new(Policy::embedded().unwrap()));
        let mut last = journal.append(true, Some(Entry::accepted(at, policy.into())), |_| {
            Vec::new()
        });
        while last.seq < RECORDS {
            last = journal.append(
                true,
                Some(Entry::accepted(at, careroute::journal::restarted())),
                |_| Vec::new(),
            );
        }
        journal.durable(last).await.unwrap();
    });

    /// The log on NATS, purged behind record `KEPT_FROM` (by another
    /// client, as a standby's snapshot purges it) once the first record
    /// has been read.
    struct PurgedWhileRead<'a> {
        log: audit::OnNats,
        nats: &'a Nats,
    }
    impl Source for PurgedWhileRead<'_> {
        fn span(&mut self) -> Result<Option<(u64, u64)>, careroute::journal::JournalError> {
            self.log.span()
        }
        fn routing_version(&mut self) -> Result<u32, careroute::journal::JournalError> {
            self.log.routing_version()
        }
        fn id_key(
            &mut self,
        ) -> Result<Option<careroute::engine::IdKey>, careroute::journal::JournalError> {
            self.log.id_key()
        }
        fn snapshot_before(
            &mut self,
            seq: u64,
        ) -> Result<Option<(u64, careroute::engine::Engine)>, careroute::journal::JournalError>
        {
            self.log.snapshot_before(seq)
        }
        fn each(
            &mut self,
            after: u64,
            upto: u64,
            each: &mut dyn FnMut(u64, &str, Result<Entry, String>),
        ) -> Result<(), careroute::journal::JournalError> {
            let nats = self.nats;
            let mut purged = false;
            self.log.each(after, upto, &mut |seq, body, read| {
                if !purged {
                    purged = true;
                    // The export's own runtime is busy reading: the purge
                    // runs beside it.
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            tokio::runtime::Runtime::new().unwrap().block_on(async {
                                let js = nats.jetstream().await;
                                let mut stream = js
                                    .get_stream(format!("CAREROUTE_{}", cluster_id("purged")))
                                    .await
                                    .unwrap();
                                stream.purge().sequence(KEPT_FROM).await.unwrap();
                                assert_eq!(
                                    stream.info().await.unwrap().state.first_sequence,
                                    KEPT_FROM
                                );
                            });
                        })
                        .join()
                        .unwrap();
                    });
                }
                each(seq, body, read);
            })
        }
    }

    let mut source = PurgedWhileRead {
        log: audit::OnNats::open(
            &nats.urls(),
            &NatsSecurity::default(),
            &cluster_id("purged"),
        )
        .unwrap(),
        nats: &nats,
    };
    let mut out = Vec::new();
    let exported = audit::export(&mut source, None, u64::MAX, true, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();

    // What came before the gap, then the records kept, nothing twice.
    let gap = seqs.iter().position(|&s| s >= KEPT_FROM).unwrap() as u64;
    assert!(
        (1..KEPT_FROM - 1).contains(&gap),
        "nothing was missed: {gap}"
    );
    let expected: Vec<u64> = (1..=gap).chain(KEPT_FROM..=RECORDS).collect();
    assert_eq!(seqs, expected);
    assert_eq!(exported.records, expected.len() as u64);
    let missed = gap + 1;
    assert_eq!(exported.span, Some((1, RECORDS)));
    assert_eq!(
        exported.damaged,
        [(
            missed,
            format!(
                "records {missed} to {} were not delivered (purged behind a snapshot while the export read: run it again)",
                KEPT_FROM - 1
            )
        )]
    );
    // Outcomes up to the gap; none replayed after it.
    assert_eq!(lines[0]["result"], serde_json::json!({"started": true}));
    for line in &lines[1..gap as usize] {
        assert_eq!(line["result"], serde_json::json!({"accepted": true}));
    }
    for line in &lines[gap as usize..] {
        assert_eq!(
            line["result"],
            serde_json::json!({"not_replayed": format!("record {missed} before it was not delivered (purged while the export read: run it again)")})
        );
    }
}

/// Waits (30 s at most) until `c` is answered by a leader.
async fn until_leading(c: &mut RoutingServiceClient<Channel>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = c.list_queues(pb::ListQueuesRequest::default()).await {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(Instant::now() < deadline, "never led: {e:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The reservation TTL of the policy in force, in seconds (to the nearest
/// five), as an answer shows it: an agent `id` is registered and a contact
/// routed to it.
async fn ttl_in_force(c: &mut RoutingServiceClient<Channel>, id: &str) -> i64 {
    agent(c, id, "Billing", "billing").await;
    let d = route(c, id).await.unwrap();
    let Some(pb::route_contact_response::Outcome::Agent(a)) = d.outcome else {
        panic!("{d:?}")
    };
    let expires = a.reservation_expires_at.unwrap().seconds;
    (expires - chrono::Utc::now().timestamp() + 2) / 5 * 5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_survives_a_failover_and_a_change_seen_while_standing_by_is_applied_on_leading() {
    let Some(nats) = Nats::start(3) else { return };
    let id = cluster_id("reload");
    let thirty = Knobs {
        reservation_ttl: "30s",
        ..KNOBS
    };
    let forty_five = Knobs {
        reservation_ttl: "45s",
        ..KNOBS
    };
    let (mut a, a_policy) = careroute_on(&nats, &id, "3", &[]);
    a.wait_for_log("this process leads", Duration::from_secs(30));
    let b = careroute(&nats, &id, "3");
    b.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    let mut ca = client(&a).await;
    assert_eq!(ttl_in_force(&mut ca, "a1").await, 60);
    // The leader's file changes: it reloads, and the log holds it.
    std::fs::write(&a_policy, policy(&thirty)).unwrap();
    a.wait_for_log("policy reloaded", Duration::from_secs(10));
    assert_eq!(ttl_in_force(&mut ca, "a2").await, 30);

    // The standby, whose own file never changed, takes over: the policy
    // the log holds stays in force, not rolled back to its file.
    a.kill9();
    let mut cb = client(&b).await;
    until_leading(&mut cb).await;
    // Its policy watcher has looked at the file as the leader (every 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ttl_in_force(&mut cb, "b1").await, 30, "{}", b.logs());
    // A standby whose file changes while it stands by applies it once it
    // leads.
    let (c, c_policy) = careroute_on(&nats, &id, "3", &[]);
    c.wait_for_log("standby rebuilt from the log", Duration::from_secs(30));
    std::fs::write(&c_policy, policy(&forty_five)).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ttl_in_force(&mut cb, "b2").await, 30);
    assert!(!b.logs().contains("policy reloaded"), "{}", b.logs());
    drop(b);
    let mut cc = client(&c).await;
    until_leading(&mut cc).await;
    c.wait_for_log("policy reloaded", Duration::from_secs(10));
    assert_eq!(ttl_in_force(&mut cc, "c1").await, 45);
    assert_eq!(
        c.logs().matches("policy reloaded").count(),
        1,
        "{}",
        c.logs()
    );
}
