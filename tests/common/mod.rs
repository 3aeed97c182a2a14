//! Starts the real server on 127.0.0.1:0 with a manual clock and hands out
//! clients; shared by the end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod floor;
pub mod nats;
pub mod pki;
pub mod process;

use std::{net::SocketAddr, sync::Arc};

use careroute::{
    clock::ManualClock,
    config::Config,
    grpc::pb::{self, routing_service_client::RoutingServiceClient},
    model::Time,
    server::{self, ServerError},
};
use chrono::{TimeZone, Utc};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// Monday 2026-11-23 10:00 in New York: the business schedule is open.
pub fn monday_10am() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

/// Monday 2026-11-23 20:00 in New York: after hours.
pub fn monday_8pm() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 24, 1, 0, 0).unwrap()
}

/// A running server and what a test needs to drive it.
pub struct TestServer {
    pub client: RoutingServiceClient<Channel>,
    pub channel: Channel,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub clock: Arc<ManualClock>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// The embedded policy and demo roster, clock at `at`.
    pub async fn start(at: Time) -> TestServer {
        TestServer::start_with(at, |_| {}).await
    }

    /// Like [`TestServer::start`] with adjusted settings.
    pub async fn start_with(at: Time, configure: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::ephemeral();
        configure(&mut config);
        let clock = Arc::new(ManualClock::new(at));
        let engine = server::build_engine(&config, at).expect("engine");
        let listeners = server::Listeners::bind(&config).await.expect("bind");
        let grpc = listeners.grpc_addr().unwrap();
        let metrics = listeners.metrics_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server_clock = clock.clone();
        let handle = tokio::spawn(async move {
            server::run(&config, listeners, engine, server_clock, async {
                let _ = stopped.await;
            })
            .await
        });
        let channel = Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        TestServer {
            client: RoutingServiceClient::new(channel.clone()),
            channel,
            grpc,
            metrics,
            clock,
            stop: Some(stop),
            handle: Some(handle),
        }
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    /// `n` more HTTP/2 connections to the server, for load from several.
    pub async fn connections(&self, n: usize) -> Vec<Channel> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            let endpoint = Channel::from_shared(format!("http://{}", self.grpc)).unwrap();
            channels.push(endpoint.connect().await.unwrap());
        }
        channels
    }

    /// One queue of ListQueues.
    pub async fn queue(&self, id: &str) -> pb::QueueView {
        let queues = self
            .client
            .clone()
            .list_queues(pb::ListQueuesRequest {})
            .await
            .unwrap()
            .into_inner();
        queues
            .queues
            .into_iter()
            .find(|q| q.queue_id == id)
            .unwrap()
    }

    /// One RouteContact.
    pub async fn route(
        &self,
        request: pb::RouteContactRequest,
    ) -> Result<pb::RouteContactResponse, tonic::Status> {
        self.client
            .clone()
            .route_contact(request)
            .await
            .map(|r| r.into_inner())
    }

    /// GET /metrics.
    pub async fn scrape(&self) -> String {
        http_get(&self.metrics.to_string(), "/metrics").await
    }
}

/// A value of a series on a scrape, 0 if absent.
pub fn sample(scrape: &str, name_and_labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| name_and_labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A plain HTTP/1.1 GET, whole response (status line, headers, body).
pub async fn http_get(addr: &str, path: &str) -> String {
    http_get_with(addr, path, None).await
}

/// [`http_get`] with a bearer token, if given.
pub async fn http_get_with(addr: &str, path: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The grpc.health.v1 status of `service` ("" for the whole server).
pub async fn health_status(channel: Channel, service: &str) -> i32 {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A voice contact with the given intent; identity verified unless changed.
pub fn contact(id: &str, intent: &str) -> pb::RouteContactRequest {
    pb::RouteContactRequest {
        contact_id: id.into(),
        channel: pb::Channel::Voice.into(),
        intent: intent.into(),
        identity: pb::Identity::Verified.into(),
        ..Default::default()
    }
}

/// The agent target of a decision, or a panic naming what came instead.
pub fn agent(d: &pb::RouteContactResponse) -> &pb::AgentTarget {
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Agent(a)) => a,
        other => panic!("expected an agent, got {other:?} ({:?})", d.reasons),
    }
}

/// The callback ticket of a decision.
pub fn callback(d: &pb::RouteContactResponse) -> &pb::CallbackTicket {
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Callback(c)) => c,
        other => panic!("expected a callback, got {other:?} ({:?})", d.reasons),
    }
}

/// The authenticate instruction of a decision.
pub fn authenticate(d: &pb::RouteContactResponse) -> &pb::AuthenticateFirst {
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Authenticate(a)) => a,
        other => panic!("expected authenticate, got {other:?} ({:?})", d.reasons),
    }
}

/// The emergency script of a decision.
pub fn emergency(d: &pb::RouteContactResponse) -> &pb::EmergencyScript {
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Emergency(e)) => e,
        other => panic!("expected emergency, got {other:?} ({:?})", d.reasons),
    }
}

/// Whether the decision carries reason `r`.
pub fn has_reason(d: &pb::RouteContactResponse, r: pb::Reason) -> bool {
    d.reasons.contains(&(r as i32))
}

/// The stable reason of a refusal's `google.rpc.ErrorInfo`, and its domain.
pub fn error_reason(status: &tonic::Status) -> Option<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| (info.reason, info.domain))
}

/// The fields a refusal's `google.rpc.BadRequest` names, in order.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
