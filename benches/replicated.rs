//! RouteContact with the log on NATS JetStream (one server, R1; a cluster
//! of three, R3) against the same server with the default local journal,
//! each beside an empty-RPC baseline (grpc.health.v1 Check) measured on the
//! same server in the same run. Serial calls give p50 and p99; 64 calls in
//! flight for 3 s give throughput, and RouteContact's p50 and p99 under
//! that load. Client and server in this process over loopback; the
//! nats-servers are real processes (Debian's `nats-server`; without it only
//! the local journal is measured). Run with `cargo bench --bench
//! replicated`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;

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
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERIAL: usize = 3000;
const IN_FLIGHT: usize = 64;
const FOR: Duration = Duration::from_secs(3);

/// The server on its own 2-worker runtime: the local journal in a fresh
/// directory, or the log on `journal` with `replicas`.
fn start(journal: Option<(&str, usize)>) -> (tokio::runtime::Runtime, Channel) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let channel = rt.block_on(async {
        let mut config = Config::ephemeral();
        config.no_journal = false;
        config.data_dir = std::env::temp_dir().join(format!(
            "careroute-replicated-bench-{}-{}",
            std::process::id(),
            journal.map_or(0, |(_, r)| r)
        ));
        let _ = std::fs::remove_dir_all(&config.data_dir);
        if let Some((urls, replicas)) = journal {
            config.journal = Some(urls.to_owned());
            config.cluster_id = format!("bench-{}-r{replicas}", std::process::id());
            config.nats_replicas = replicas;
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

fn emergency(i: usize) -> pb::RouteContactRequest {
    pb::RouteContactRequest {
        contact_id: format!("bench-{}", i % 1024),
        channel: pb::Channel::Voice.into(),
        intent: "clinical".into(),
        urgency: pb::Urgency::Emergency.into(),
        identity: pb::Identity::Verified.into(),
        ..Default::default()
    }
}

/// p50 and p99 of `n` serial calls of `call`.
async fn serial<F, Fut>(n: usize, mut call: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        call(i).await;
        took.push(started.elapsed());
    }
    took.sort_unstable();
    (took[n / 2], took[n * 99 / 100])
}

/// Calls per second with [`IN_FLIGHT`] calls of `call` in flight for
/// [`FOR`], and the p50 and p99 of those calls.
async fn throughput<F, Fut>(call: F) -> (f64, Duration, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..IN_FLIGHT {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while started.elapsed() < FOR {
                let one = Instant::now();
                call(k * 1_000_000 + took.len()).await;
                took.push(one.elapsed());
            }
            took
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.unwrap());
    }
    let rate = took.len() as f64 / started.elapsed().as_secs_f64();
    took.sort_unstable();
    let n = took.len();
    (rate, took[n / 2], took[n * 99 / 100])
}

fn measure(name: &str, journal: Option<(&str, usize)>) {
    let (_server, channel) = start(journal);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        let routing = RoutingServiceClient::new(channel.clone());
        let health = HealthClient::new(channel);
        // A replicated server answers once it leads.
        let waited = Instant::now();
        while routing.clone().route_contact(emergency(0)).await.is_err() {
            assert!(waited.elapsed() < Duration::from_secs(60), "{name}: never led");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let check = move |_| {
            let mut h = health.clone();
            async move {
                h.check(HealthCheckRequest::default()).await.unwrap();
            }
        };
        let route = move |i| {
            let mut r = routing.clone();
            async move {
                r.route_contact(emergency(i)).await.unwrap();
            }
        };
        let (base50, base99) = serial(SERIAL, check.clone()).await;
        let (p50, p99) = serial(SERIAL, route.clone()).await;
        let (base_rate, _, _) = throughput(check).await;
        let (rate, loaded50, loaded99) = throughput(route).await;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {name} | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {base_rate:.0} | {rate:.0} ({:.2}x) | {:.0} / {:.0} µs |",
            us(base50),
            us(base99),
            us(p50),
            us(p99),
            rate / base_rate,
            us(loaded50),
            us(loaded99),
        );
    });
}

fn main() {
    // `cargo bench` passes --bench; anything else (a filter) is ignored.
    println!(
        "| log | Health/Check p50 / p99 | RouteContact (emergency) p50 / p99 | Health/Check calls/s ({IN_FLIGHT} in flight) | RouteContact calls/s | RouteContact p50 / p99 ({IN_FLIGHT} in flight) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    measure("local journal (write)", None);
    for (servers, replicas) in [(1, 1), (3, 3)] {
        let Some(cluster) = nats::Nats::start(servers) else {
            return;
        };
        measure(
            &format!("NATS JetStream R{replicas}"),
            Some((&cluster.urls(), replicas)),
        );
    }
}
