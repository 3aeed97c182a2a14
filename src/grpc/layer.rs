//! A tower layer that records, for every gRPC call, a request counter and a
//! latency histogram by service, method and status code, the number of
//! calls in flight, and the call's trace span ([`super::trace`]) when spans
//! are exported. It reads the status from a trailers-only response or from
//! the trailers at the end of the body, so streaming calls count too.
//! Service and method come from the descriptor sets (anything else is
//! "unknown") and codes from the 17 gRPC codes: the label set is bounded
//! whatever clients send.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Instrument, Span};

use super::{methods, trace};
use crate::telemetry::{RPC_IN_FLIGHT, RPC_REQUESTS, RPC_SECONDS};

/// gRPC status codes by number, as their canonical names.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// The canonical name of a gRPC code number (UNKNOWN for anything else).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code)
        .ok()
        .and_then(|c| CODES.get(c))
        .copied()
        .unwrap_or(CODES[UNKNOWN])
}

/// The metric slot of a request path: its index in [`methods::all`], or
/// the catch-all slot after them for anything else.
fn method_index(path: &str) -> usize {
    methods::index(path).unwrap_or(methods::all().len())
}

/// Service and method labels of a metric slot.
fn method_labels(slot: usize) -> (&'static str, &'static str) {
    methods::all()
        .get(slot)
        .map_or(("unknown", "unknown"), |m| {
            (m.service.as_str(), m.name.as_str())
        })
}

/// Metric handles, created on first use of each (method, code) so /metrics
/// shows only combinations that happened.
struct Handles {
    requests: Vec<OnceLock<Counter>>,
    seconds: Vec<OnceLock<Histogram>>,
    in_flight: Gauge,
}

impl Handles {
    fn record(&self, method: usize, code: usize, seconds: f64) {
        let i = method * CODES.len() + code;
        let (service, name) = method_labels(method);
        let labels = || {
            [
                ("service", service),
                ("method", name),
                ("code", CODES[code]),
            ]
        };
        self.requests[i]
            .get_or_init(|| metrics::counter!(RPC_REQUESTS, &labels()))
            .increment(1);
        self.seconds[i]
            .get_or_init(|| metrics::histogram!(RPC_SECONDS, &labels()))
            .record(seconds);
        self.in_flight.decrement(1.0);
    }
}

/// The layer to add to the tonic server.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    handles: Arc<Handles>,
}

impl RpcMetricsLayer {
    /// A layer recording into the installed recorder.
    pub fn new() -> RpcMetricsLayer {
        crate::telemetry::install();
        let n = (methods::all().len() + 1) * CODES.len();
        RpcMetricsLayer {
            handles: Arc::new(Handles {
                requests: (0..n).map(|_| OnceLock::new()).collect(),
                seconds: (0..n).map(|_| OnceLock::new()).collect(),
                in_flight: metrics::gauge!(RPC_IN_FLIGHT),
            }),
        }
    }
}

impl Default for RpcMetricsLayer {
    fn default() -> Self {
        RpcMetricsLayer::new()
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics {
            inner,
            handles: Arc::clone(&self.handles),
        }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    handles: Arc<Handles>,
}

/// One call being measured; records exactly once, at the status or at drop.
struct Call {
    handles: Arc<Handles>,
    method: usize,
    started: Instant,
    done: bool,
    span: Span,
}

impl Call {
    fn finish(&mut self, code: usize) {
        if !self.done {
            self.done = true;
            trace::finish(&self.span, code);
            self.handles
                .record(self.method, code, self.started.elapsed().as_secs_f64());
        }
    }

    fn finish_from(&mut self, headers: &http::HeaderMap) -> bool {
        match headers.get("grpc-status") {
            Some(v) => {
                let code = v
                    .to_str()
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|c| *c < CODES.len())
                    .unwrap_or(UNKNOWN);
                self.finish(code);
                true
            }
            None => false,
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // The client went away (or the deadline passed) before a status.
        self.finish(CANCELLED);
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Recorded<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        self.handles.in_flight.increment(1.0);
        let method = method_index(request.uri().path());
        let span = trace::call_span(methods::all().get(method), request.headers());
        let mut call = Call {
            handles: Arc::clone(&self.handles),
            method,
            started: Instant::now(),
            done: false,
            span: span.clone(),
        };
        let response = self.inner.call(request).instrument(span);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    // A trailers-only response carries the status in headers.
                    let pending = !call.finish_from(response.headers());
                    Ok(response.map(|inner| Recorded {
                        inner,
                        call: pending.then_some(call),
                    }))
                }
                Err(e) => {
                    call.finish(UNKNOWN);
                    Err(e)
                }
            }
        })
    }
}

/// A response body that records the call's status when its trailers pass.
pub struct Recorded<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Body for Recorded<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(ref frame) = polled {
            match frame {
                Some(Ok(f)) => {
                    if let (Some(trailers), Some(call)) = (f.trailers_ref(), this.call.as_mut()) {
                        call.finish_from(trailers);
                    }
                }
                Some(Err(_)) => {
                    if let Some(call) = this.call.as_mut() {
                        call.finish(UNKNOWN);
                    }
                }
                // The body ended without trailers: nothing more will say.
                None => {
                    if let Some(call) = this.call.as_mut() {
                        call.finish(UNKNOWN);
                    }
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_codes_are_bounded() {
        let catch_all = methods::all().len();
        for path in [
            "/careroute.v1.RoutingService/RouteContact",
            "/careroute.v1.RoutingService/CancelContact",
            "/careroute.v1.RoutingService/WatchAssignments",
            "/grpc.health.v1.Health/Check",
        ] {
            let slot = method_index(path);
            assert!(slot < catch_all, "{path}");
            let (service, method) = method_labels(slot);
            assert_eq!(format!("/{service}/{method}"), path);
        }
        assert_eq!(
            method_index("/careroute.v1.RoutingService/Jane-Doe-555-0199"),
            catch_all
        );
        assert_eq!(method_index("/whatever"), catch_all);
        assert_eq!(method_labels(catch_all), ("unknown", "unknown"));
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "INVALID_ARGUMENT");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }
}
