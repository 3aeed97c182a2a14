//! What an SRE relies on: /metrics keeps a bounded number of series whatever
//! contacts arrive, and neither logs nor metrics carry patient data; health
//! and /readyz flip while draining. (Its own test binary: the Prometheus
//! recorder is process-wide.)

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use careroute::grpc::pb::{self, routing_service_client::RoutingServiceClient};
use common::*;

/// Series on a scrape: every sample line.
fn series(scrape: &str) -> Vec<String> {
    scrape
        .lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with("HTTP/") && l.contains(' ')
        })
        .filter(|l| l.starts_with("careroute_"))
        .map(|l| {
            l.rsplit_once(' ')
                .map(|(name, _)| name.to_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// A contact with a distinct id, request id and a rotating mix of intents,
/// channels, attributes, urgencies and identities.
fn varied(i: usize) -> pb::RouteContactRequest {
    let intents = [
        "billing",
        "scheduling",
        "clinical",
        "refill",
        "complaint",
        "general",
        "privacy",
        "access",
    ];
    let mut c = contact(&format!("contact-{i:06}"), intents[i % intents.len()]);
    c.request_id = format!("req-{i:06}");
    c.channel = [pb::Channel::Voice, pb::Channel::Chat, pb::Channel::Portal][i % 3].into();
    c.urgency = [
        pb::Urgency::Routine,
        pb::Urgency::Urgent,
        pb::Urgency::Emergency,
    ][(i / 3) % 3]
        .into();
    c.identity = [
        pb::Identity::Verified,
        pb::Identity::NotAttempted,
        pb::Identity::Failed,
    ][(i / 9) % 3]
        .into();
    c.escalation_requested = i.is_multiple_of(4);
    c.attributes.insert(
        "coverage".into(),
        ["in_network", "non_covered", "self_pay"][(i / 27) % 3].into(),
    );
    c.language = ["en", "es", "vi"][(i / 81) % 3].into();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_do_not_grow_with_contacts() {
    let s = TestServer::start(monday_10am()).await;
    let channels = s.connections(4).await;
    let send = |from: usize, to: usize| {
        let channels = channels.clone();
        async move {
            let workers: Vec<_> = (0..32)
                .map(|w| {
                    let mut client =
                        RoutingServiceClient::new(channels[w % channels.len()].clone());
                    tokio::spawn(async move {
                        let mut i = from + w;
                        while i < to {
                            client.route_contact(varied(i)).await.unwrap();
                            i += 32;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    // Every combination once, plus an after-hours pass, then count.
    send(0, 2_000).await;
    s.clock.set(monday_8pm());
    send(2_000, 4_000).await;
    let before = series(&s.scrape().await);
    assert!(
        before.len() > 50,
        "expected a real scrape, got {} series",
        before.len()
    );

    send(4_000, 104_000).await;
    let after = series(&s.scrape().await);
    let added: Vec<_> = after.iter().filter(|x| !before.contains(x)).collect();
    assert!(
        added.is_empty(),
        "100,000 more contacts added series: {added:?}"
    );
    assert_eq!(after.len(), before.len());
    assert!(
        !after.iter().any(|x| x.contains("contact-")),
        "a contact id became a label"
    );
    s.stop().await;
}

/// Values shaped like patient data: a name, a date of birth, a phone number.
const PHI: [&str; 6] = [
    "Jane",
    "Doe",
    "1980-02-14",
    "555-867-5309",
    "5558675309",
    "John.Smith",
];

#[test]
fn no_patient_data_in_logs_or_metrics_and_health_flips_while_draining() {
    let mut p = process::Process::start_logging(&["--drain-grace-ms", "3000"], "debug");
    let (grpc, metrics) = (p.grpc.clone(), p.metrics.clone());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let scrape = rt.block_on(async {
        let mut client = RoutingServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        // Accepted: ids shaped like a name, a date of birth, a phone number.
        let mut c = contact("Jane-Doe-1980-02-14", "billing");
        c.request_id = "555-867-5309".into();
        c.preferred_agent_id = "John.Smith".into();
        c.attributes.insert("coverage".into(), "in_network".into());
        client.route_contact(c).await.unwrap();
        // Refused: undeclared attributes carrying patient data.
        for (k, v) in [
            ("patient_name", "Jane Doe"),
            ("dob", "1980-02-14"),
            ("phone", "5558675309"),
            ("coverage", "Jane"),
        ] {
            let mut c = contact("c-2", "billing");
            c.attributes.insert(k.into(), v.into());
            client.route_contact(c).await.unwrap_err();
        }
        let mut c = contact("5558675309", "Jane");
        c.signals = vec!["Doe".into()];
        client.route_contact(c).await.unwrap_err();
        http_get(&metrics, "/metrics").await
    });
    assert!(scrape.contains("careroute_decisions_total"), "{scrape}");

    // SIGTERM: not ready and NOT_SERVING during the grace, then a clean exit.
    p.signal("TERM");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if http_get(&metrics, "/readyz")
                .await
                .starts_with("HTTP/1.1 503")
            {
                break;
            }
            assert!(Instant::now() < deadline, "/readyz never said draining");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let status = health_status(channel, "").await;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
        );
    });
    let exit = p
        .wait_exit(Duration::from_secs(30))
        .expect("no exit after drain");
    assert!(exit.success(), "exit after drain: {exit:?}");
    let logs = p.logs();
    assert!(logs.contains("\"routed\""), "no decision event at debug");
    assert!(
        logs.contains("decision_id"),
        "decision events carry the decision id"
    );
    for value in PHI {
        assert!(!logs.contains(value), "logs contain {value:?}");
        assert!(!scrape.contains(value), "/metrics contains {value:?}");
    }
}

/// A TCP proxy in front of the server whose connections can be cut: the
/// client's side of the wire dies without a goodbye, as when a CTI host
/// crashes or a network path drops.
async fn cuttable_proxy(
    server: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut outbound = tokio::net::TcpStream::connect(server).await.unwrap();
            let mut cut_rx = cut_rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|c| *c) => {
                        // Reset, not a clean close: linger 0 on drop.
                        let _ = outbound.set_zero_linger();
                    }
                }
            });
        }
    });
    (addr, cut)
}

/// A CTI whose connection is cut mid-stream is a client going away:
/// CANCELLED, never UNKNOWN (which the server-error alert pages on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_client_stream_counts_as_cancelled_not_unknown() {
    let s = TestServer::start(monday_10am()).await;
    let (proxy, cut) = cuttable_proxy(s.grpc).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{proxy}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = RoutingServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamAgentStatesRequest {
        agent_id: "agent-billing-1".into(),
        state: pb::AgentState::Available.into(),
    })
    .await
    .unwrap();
    let call = tokio::spawn(async move {
        client
            .stream_agent_states(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let stream_calls = |scrape: &str, code: &str| {
        sample(
            scrape,
            &[
                "careroute_rpc_requests_total{",
                "method=\"StreamAgentStates\"",
                &format!("code=\"{code}\""),
            ],
        )
    };
    // The stream is open on the server: its first entry was applied.
    let started = Instant::now();
    while sample(&s.scrape().await, &["careroute_rpc_in_flight_requests"]) < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cut.send(true).unwrap();
    let started = Instant::now();
    let scrape = loop {
        let scrape = s.scrape().await;
        if stream_calls(&scrape, "CANCELLED") + stream_calls(&scrape, "UNKNOWN") > 0.0 {
            break scrape;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cut stream was never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stream_calls(&scrape, "UNKNOWN"), 0.0, "{scrape}");
    assert_eq!(stream_calls(&scrape, "CANCELLED"), 1.0, "{scrape}");
    drop(tx);
    let _ = call.await;
    s.stop().await;
}
