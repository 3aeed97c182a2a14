//! The trace span of one call: named after the RPC, a child of the caller's
//! W3C `traceparent` when it sent one (its `tracestate` is not passed on), so an IVR,
//! careroute and a CTI appear in one trace. Handlers add what was decided
//! (decision id, rule, outcome: never contact data) with [`record`]; the
//! metrics layer records the status and closes it. Spans are made only when
//! a subscriber exports them (`--otlp-endpoint`): otherwise this costs a
//! disabled-callsite check per call.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::methods::Method;
use crate::telemetry::{self, TRACE_TARGET};

/// The span of a call to `method` (None for a path no RPC has), with the
/// caller's trace context from `headers` as its parent; disabled when
/// nothing exports spans.
pub fn call_span(method: Option<&Method>, headers: &http::HeaderMap) -> Span {
    let Some(method) = method else {
        return Span::none();
    };
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "rpc",
        otel.name = %format_args!("{}/{}", method.service, method.name),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %method.service,
        rpc.method = %method.name,
        rpc.grpc.status_code = tracing::field::Empty,
        careroute.decision_id = tracing::field::Empty,
        careroute.rule_id = tracing::field::Empty,
        careroute.outcome = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Without a valid traceparent the context is empty and the span is a
    // root; a parent cannot be refused on a span just made.
    let _ = span.set_parent(parent);
    span
}

/// Records the call's gRPC status on its span (and marks server faults as
/// errors, as OpenTelemetry's gRPC conventions say).
pub fn finish(span: &Span, code: usize) {
    span.record(telemetry::TRACE_GRPC_STATUS, code as i64);
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
    // DATA_LOSS.
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record(telemetry::TRACE_STATUS, "ERROR");
    }
}

/// Adds what was decided to the current call's span.
pub fn record(decision_id: &impl std::fmt::Display, rule_id: Option<&str>, outcome: &'static str) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record(
        telemetry::TRACE_DECISION_ID,
        tracing::field::display(decision_id),
    );
    if let Some(rule) = rule_id {
        span.record(telemetry::TRACE_RULE_ID, rule);
    }
    span.record(telemetry::TRACE_OUTCOME, outcome);
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    /// `traceparent` only: the caller's `tracestate` (vendor values it
    /// chose) is not passed on to the collector.
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case("tracestate") {
            return None;
        }
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_declares_every_field_recorded_on_it() {
        let method = &crate::grpc::methods::all()[0];
        // Under a subscriber that enables every span, as an exporter does.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let span = call_span(Some(method), &http::HeaderMap::new());
            let fields = span.metadata().unwrap().fields();
            for name in [
                telemetry::TRACE_DECISION_ID,
                telemetry::TRACE_RULE_ID,
                telemetry::TRACE_OUTCOME,
                telemetry::TRACE_GRPC_STATUS,
                telemetry::TRACE_STATUS,
            ] {
                assert!(fields.field(name).is_some(), "{name}");
            }
            assert!(call_span(None, &http::HeaderMap::new()).is_none());
        });
    }
}
