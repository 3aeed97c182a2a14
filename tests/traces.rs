//! Traces across the call, against the real binary: a collector of the
//! test's own (OTLP/gRPC, opentelemetry-proto's service) receives what
//! `careroute --otlp-endpoint` exports. A call with a W3C `traceparent`
//! gives a span in the caller's trace, child of the caller's span, with the
//! decision id, rule and outcome and never contact data, over gRPC and
//! HTTP/JSON alike; a call the caller did not sample (and the sample ratio
//! leaves out) gives none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use careroute::grpc::pb;
use common::{
    floor::{self, KNOBS},
    process::{Process, fresh_data_dir},
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every span received, with its resource's service name.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves on a free loopback port; its address.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }

    /// The spans of `trace_id` received within `within`, waiting for at
    /// least `n`.
    fn wait_for(&self, trace_id: &[u8], n: usize, within: Duration) -> Vec<(String, Span)> {
        let started = Instant::now();
        loop {
            let found: Vec<_> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, s)| s.trace_id == trace_id)
                .cloned()
                .collect();
            if found.len() >= n || started.elapsed() > within {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The string or integer value of a span attribute, as text.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            _ => None,
        })
}

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

fn hex_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// A collector, and the binary on the floor's policy exporting to it at
/// `ratio`, each batch at once rather than every 5 s.
async fn start(ratio: &str) -> (Collector, Process) {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let dir = fresh_data_dir();
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, floor::policy(&KNOBS)).unwrap();
    let p = Process::start_with_env(
        &dir,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--otlp-endpoint",
            &endpoint,
            "--trace-sample-ratio",
            ratio,
        ],
        "info",
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    )
    .keeping(dir);
    (collector, p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_traceparent_is_a_span_of_the_callers_trace() {
    // Only what the caller sampled.
    let (collector, p) = start("0").await;
    let mut c = floor::client(&p).await;
    floor::agent(&mut c, "agent-1", "Access", "scheduling").await;

    // RouteContact over gRPC, in the IVR's trace.
    let (trace, ivr_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut request = tonic::Request::new(common::contact("c-trace-1", "scheduling"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent(trace, ivr_span).parse().unwrap());
    // Vendor values the caller chose: not passed on.
    request
        .metadata_mut()
        .insert("tracestate", "ivr=c-trace-1".parse().unwrap());
    let decision = c.route_contact(request).await.unwrap().into_inner();
    let Some(pb::route_contact_response::Outcome::Agent(agent)) = &decision.outcome else {
        panic!("expected an agent: {decision:?}")
    };

    let spans = collector.wait_for(&hex_bytes(trace), 1, Duration::from_secs(20));
    assert_eq!(spans.len(), 1, "{spans:?}\nlogs:\n{}", p.logs());
    let (service, span) = &spans[0];
    assert_eq!(service, "careroute");
    assert_eq!(span.name, "careroute.v1.RoutingService/RouteContact");
    assert_eq!(span.parent_span_id, hex_bytes(ivr_span));
    assert_eq!(span.trace_state, "");
    // SPAN_KIND_SERVER
    assert_eq!(span.kind, 2);
    assert_eq!(
        attribute(span, "careroute.decision_id").as_deref(),
        Some(decision.decision_id.as_str())
    );
    assert_eq!(
        attribute(span, "careroute.rule_id").as_deref(),
        Some("scheduling")
    );
    assert_eq!(
        attribute(span, "careroute.outcome").as_deref(),
        Some("agent")
    );
    assert_eq!(
        attribute(span, "rpc.grpc.status_code").as_deref(),
        Some("0")
    );
    // Nothing the contact sent, nor what careroute keyed to it.
    let everything = format!("{span:?}");
    for secret in ["c-trace-1", &agent.reservation_id] {
        assert!(!everything.contains(secret), "{secret} in {everything}");
    }

    // The CTI's confirm, in the same trace as a child of the CTI's span.
    let cti_span = "b7ad6b7169203331";
    let mut confirm = tonic::Request::new(pb::ConfirmReservationRequest {
        reservation_id: agent.reservation_id.clone(),
        ..Default::default()
    });
    confirm
        .metadata_mut()
        .insert("traceparent", traceparent(trace, cti_span).parse().unwrap());
    c.confirm_reservation(confirm).await.unwrap();
    // A refused call, over HTTP/JSON: its status on the span.
    let body = r#"{"contactId":"c-trace-2","channel":"CHANNEL_VOICE","intent":"dentistry"}"#;
    let mut s = tokio::net::TcpStream::connect(&p.grpc).await.unwrap();
    let request = format!(
        "POST /v1/contacts:route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         traceparent: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        traceparent(trace, "0000000000000abc"),
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let spans = collector.wait_for(&hex_bytes(trace), 3, Duration::from_secs(20));
    assert_eq!(spans.len(), 3, "{spans:?}");
    let confirm = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "careroute.v1.RoutingService/ConfirmReservation")
        .unwrap();
    assert_eq!(confirm.parent_span_id, hex_bytes(cti_span));
    let refused = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.parent_span_id == hex_bytes("0000000000000abc"))
        .unwrap();
    assert_eq!(refused.name, "careroute.v1.RoutingService/RouteContact");
    assert_eq!(
        attribute(refused, "rpc.grpc.status_code").as_deref(),
        Some("3")
    );
    assert!(!format!("{refused:?}").contains("dentistry"));

    // Not sampled by the caller, and the ratio is 0: no span.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(common::contact("c-trace-3", "scheduling"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{unsampled}-{ivr_span}-00").parse().unwrap(),
    );
    c.route_contact(request).await.unwrap();
    // A sampled call after it, to know the exporter has sent what it had.
    let last = "11111111111111111111111111111111";
    let mut request = tonic::Request::new(common::contact("c-trace-4", "scheduling"));
    request
        .metadata_mut()
        .insert("traceparent", traceparent(last, ivr_span).parse().unwrap());
    c.route_contact(request).await.unwrap();
    assert_eq!(
        collector
            .wait_for(&hex_bytes(last), 1, Duration::from_secs(20))
            .len(),
        1
    );
    assert!(
        collector
            .wait_for(&hex_bytes(unsampled), 1, Duration::ZERO)
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_traceparent_are_sampled_at_the_ratio_and_the_callers_choice_holds() {
    let (collector, p) = start("1").await;
    let mut c = floor::client(&p).await;
    // No traceparent, ratio 1: a root span of a trace of careroute's own.
    c.list_queues(tonic::Request::new(Default::default()))
        .await
        .unwrap();
    // The caller chose not to sample: no span, whatever the ratio.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let mut request = tonic::Request::new(pb::ListQueuesRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{unsampled}-00f067aa0ba902b7-00")
            .parse()
            .unwrap(),
    );
    c.list_queues(request).await.unwrap();
    // A sampled call after both, to know the exporter sent what it had.
    let last = "22222222222222222222222222222222";
    let mut request = tonic::Request::new(pb::ListQueuesRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        traceparent(last, "00f067aa0ba902b7").parse().unwrap(),
    );
    c.list_queues(request).await.unwrap();
    assert_eq!(
        collector
            .wait_for(&hex_bytes(last), 1, Duration::from_secs(20))
            .len(),
        1
    );
    let spans = collector.spans.lock().unwrap().clone();
    let roots: Vec<_> = spans
        .iter()
        .filter(|(_, s)| s.name == "careroute.v1.RoutingService/ListQueues")
        .filter(|(_, s)| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{spans:?}");
    assert!(
        spans
            .iter()
            .all(|(_, s)| s.trace_id != hex_bytes(unsampled))
    );
}
