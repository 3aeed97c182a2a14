//! End-to-end RPC latency over loopback: RouteContact against an empty-RPC
//! baseline (grpc.health.v1 Check) measured in the same run, one call at a
//! time on one connection, client and server in this process.
//!
//! Cases: the baseline; an emergency decision (no agent choice), over gRPC
//! and as HTTP/JSON on the same HTTP/2 connection (the transcoding's cost);
//! a warm transfer (agent reserved; the reservation is released outside the
//! timed call); and all again on a server with the default journal (every
//! command written before its answer leaves). Run with
//! `cargo bench --bench rpc`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use careroute::{
    clock::SystemClock,
    config::Config,
    grpc::pb::{self, routing_service_client::RoutingServiceClient},
    server,
};
use criterion::{Criterion, criterion_group, criterion_main};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Starts the server (embedded policy; one always-open agent pool) on its
/// own runtime, with the default journal in a fresh directory or none, and
/// returns a connected channel.
fn start(journal: bool) -> (tokio::runtime::Runtime, Channel) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let channel = rt.block_on(async {
        let mut config = Config::ephemeral();
        if journal {
            let dir =
                std::env::temp_dir().join(format!("careroute-rpc-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            config.no_journal = false;
            config.data_dir = dir;
        }
        let engine = server::build_engine(&config, chrono::Utc::now()).unwrap();
        let listeners = server::Listeners::bind(&config).await.unwrap();
        let addr = listeners.grpc_addr().unwrap();
        tokio::spawn(async move {
            server::run(
                &config,
                listeners,
                engine,
                Arc::new(SystemClock),
                std::future::pending(),
            )
            .await
        });
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    });
    (rt, channel)
}

fn request(id: u64, emergency: bool) -> pb::RouteContactRequest {
    pb::RouteContactRequest {
        contact_id: format!("bench-{}", id % 1024),
        channel: pb::Channel::Voice.into(),
        intent: "clinical".into(),
        urgency: if emergency {
            pb::Urgency::Emergency
        } else {
            pb::Urgency::Urgent
        }
        .into(),
        identity: pb::Identity::Verified.into(),
        ..Default::default()
    }
}

/// Times `call(i)` for `iters` calls; `after(i)` runs untimed after each.
async fn timed<C, A, FC, FA>(iters: u64, mut call: C, mut after: A) -> Duration
where
    C: FnMut(u64) -> FC,
    FC: std::future::Future<Output = Option<pb::AgentTarget>>,
    A: FnMut(pb::AgentTarget) -> FA,
    FA: std::future::Future<Output = ()>,
{
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let started = Instant::now();
        let agent = call(i).await;
        total += started.elapsed();
        if let Some(agent) = agent {
            after(agent).await;
        }
    }
    total
}

fn agent_of(d: pb::RouteContactResponse) -> Option<pb::AgentTarget> {
    match d.outcome {
        Some(pb::route_contact_response::Outcome::Agent(a)) => Some(a),
        _ => None,
    }
}

fn rpc(c: &mut Criterion) {
    for journal in [false, true] {
        cases(c, journal);
    }
}

fn cases(c: &mut Criterion, journal: bool) {
    let (rt, channel) = start(journal);
    let mut group = c.benchmark_group(if journal { "rpc_journal" } else { "rpc" });
    group.bench_function("baseline_health_check", |b| {
        let mut health = HealthClient::new(channel.clone());
        b.to_async(&rt).iter(|| {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .unwrap()
            }
        });
        let _ = &mut health;
    });
    let client = RoutingServiceClient::new(channel.clone());
    group.bench_function("route_emergency", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let client = client.clone();
            timed(
                iters,
                move |i| {
                    let mut client = client.clone();
                    async move {
                        agent_of(
                            client
                                .route_contact(request(i, true))
                                .await
                                .unwrap()
                                .into_inner(),
                        )
                    }
                },
                |_| async {},
            )
        });
    });
    // The same decision as a chatbot asks for it: JSON in, JSON out.
    group.bench_function("route_emergency_http_json", |b| {
        b.to_async(&rt).iter(|| {
            let mut channel = channel.clone();
            async move {
                use http_body_util::BodyExt;
                use tower_service::Service;
                let body = r#"{"contactId":"bench-json","channel":"CHANNEL_VOICE","intent":"clinical","urgency":"URGENCY_EMERGENCY","identity":"IDENTITY_VERIFIED"}"#;
                let request = http::Request::post("/v1/contacts:route")
                    .header("content-type", "application/json")
                    .body(tonic::body::Body::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(body.as_bytes()),
                    )))
                    .unwrap();
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
                let answer = channel.call(request).await.unwrap();
                assert_eq!(answer.status(), 200);
                answer.into_body().collect().await.unwrap().to_bytes()
            }
        });
    });
    // Urgent clinical from a verified caller: the nurse line in hours, the
    // on-call nurse after hours; either way an agent is reserved, then
    // released outside the timing.
    group.bench_function("route_warm_transfer", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (client, releaser) = (client.clone(), client.clone());
            timed(
                iters,
                move |i| {
                    let mut client = client.clone();
                    async move {
                        let agent = agent_of(
                            client
                                .route_contact(request(i, false))
                                .await
                                .unwrap()
                                .into_inner(),
                        );
                        assert!(agent.is_some(), "expected a warm transfer");
                        agent
                    }
                },
                move |a| {
                    let mut client = releaser.clone();
                    async move {
                        client
                            .release_reservation(pb::ReleaseReservationRequest {
                                reservation_id: a.reservation_id,
                                reason: pb::ReleaseReason::Cancelled.into(),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                    }
                },
            )
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = rpc
}
criterion_main!(benches);
