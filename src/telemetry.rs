//! Telemetry: every metric name in one place with its description, the
//! Prometheus recorder, cached handles for the per-decision hot path, and
//! tracing setup. Labels come only from bounded sets: outcome kinds, levels
//! 1-4, reason codes, agent states, queue ids of the policy.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock, PoisonError};

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::{
    Layer, filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::LogFormat;
use crate::engine::{Counters, Decision, Engine, Event, Outcome, QueueView, Withdrawal};
use crate::model::{AgentState, CallbackReason, Reason, STATES};

/// Time the engine took to decide one RouteContact, in seconds.
pub const DECISION_SECONDS: &str = "careroute_decision_duration_seconds";
/// Decisions by outcome and escalation level.
pub const DECISIONS: &str = "careroute_decisions_total";
/// Reason codes attached to decisions.
pub const DECISION_REASONS: &str = "careroute_decision_reasons_total";
/// Callback tickets by reason.
pub const CALLBACKS: &str = "careroute_callbacks_total";
/// gRPC calls handled, by service, method and status code.
pub const RPC_REQUESTS: &str = "careroute_rpc_requests_total";
/// Time from a call's arrival to its status, by service, method and code.
pub const RPC_SECONDS: &str = "careroute_rpc_duration_seconds";
/// gRPC calls being handled now.
pub const RPC_IN_FLIGHT: &str = "careroute_rpc_in_flight_requests";
/// Agents by state.
pub const AGENTS: &str = "careroute_agents";
/// Reservations made.
pub const RESERVATIONS_MADE: &str = "careroute_reservations_made_total";
/// Reservations confirmed.
pub const RESERVATIONS_CONFIRMED: &str = "careroute_reservations_confirmed_total";
/// Reservations released by a client, or withdrawn by careroute.
pub const RESERVATIONS_RELEASED: &str = "careroute_reservations_released_total";
/// Reservations whose TTL passed.
pub const RESERVATIONS_EXPIRED: &str = "careroute_reservations_expired_total";
/// Request ids forgotten before their idempotency window ended.
pub const IDEMPOTENCY_EVICTIONS: &str = "careroute_idempotency_evictions_total";
/// Contact paths forgotten before their window ended.
pub const PATH_EVICTIONS: &str = "careroute_path_evictions_total";
/// Live reservations now.
pub const RESERVATIONS_LIVE: &str = "careroute_reservations_live";
/// Staffed agents per queue.
pub const QUEUE_STAFFED: &str = "careroute_queue_agents_staffed";
/// Free agents per queue.
pub const QUEUE_AVAILABLE: &str = "careroute_queue_agents_available";
/// Whether each queue is open (1) or closed (0).
pub const QUEUE_OPEN: &str = "careroute_queue_open";
/// Contacts waiting per queue.
pub const QUEUE_WAITING: &str = "careroute_queue_waiting";
/// Longest wait among waiting contacts per queue.
pub const QUEUE_LONGEST_WAIT: &str = "careroute_queue_longest_wait_seconds";
/// Estimated wait for a contact arriving now, per queue.
pub const QUEUE_ESTIMATED_WAIT: &str = "careroute_queue_estimated_wait_seconds";
/// Share of waiting contacts answered within the threshold, per queue.
pub const QUEUE_SERVICE_LEVEL: &str = "careroute_queue_service_level_ratio";
/// Share of waiting contacts that hung up, per queue.
pub const QUEUE_ABANDONMENT: &str = "careroute_queue_abandonment_ratio";
/// Waiting contacts answered, per queue.
pub const QUEUE_ANSWERED: &str = "careroute_queue_answered_total";
/// Waiting contacts that hung up, per queue.
pub const QUEUE_ABANDONED: &str = "careroute_queue_abandoned_total";
/// Callback tickets owned, per queue.
pub const QUEUE_CALLBACKS: &str = "careroute_queue_callbacks_total";
/// Policy reloads by result.
pub const POLICY_RELOADS: &str = "careroute_policy_reloads_total";
/// Request handlers that panicked (each also stops the service).
pub const PANICS: &str = "careroute_panics_total";
/// Background tasks that ended unexpectedly, by task (each also stops the
/// service).
pub const TASK_FAILURES: &str = "careroute_task_failures_total";

/// Waiting contacts that left their line for a callback, by reason.
pub const LINE_CALLBACKS: &str = "careroute_line_callbacks_total";
/// Offers of waiting contacts withdrawn, by reason.
pub const OFFERS_WITHDRAWN: &str = "careroute_offers_withdrawn_total";
/// Assignment watchers (CTI connections) connected now.
pub const WATCHERS: &str = "careroute_assignment_watchers";
/// Callbacks and moves kept for a watcher of their queue that has not
/// connected.
pub const UNDELIVERED: &str = "careroute_undelivered_events";
/// Of those, dropped (kept an hour, or past the cap) before one connected.
pub const UNDELIVERED_DROPPED: &str = "careroute_undelivered_events_dropped_total";
/// Snapshots of the engine's state taken for the journal.
pub const SNAPSHOTS: &str = "careroute_journal_snapshots_total";
/// Size of the last snapshot.
pub const SNAPSHOT_BYTES: &str = "careroute_journal_snapshot_bytes";
/// How long the last snapshot took to encode and save.
pub const SNAPSHOT_SECONDS: &str = "careroute_journal_snapshot_duration_seconds";
/// Snapshots that could not be saved.
pub const SNAPSHOT_FAILURES: &str = "careroute_journal_snapshot_failures_total";

/// Calls refused for their credentials, by method, the role it needs, and
/// code (unauthenticated, permission_denied).
pub const AUTH_REFUSALS: &str = "careroute_auth_refusals_total";
/// Whether this process leads (or is alone on its log): 1, or 0 as a
/// standby.
pub const LEADING: &str = "careroute_leading";
/// TLS handshakes that failed or ran late (no client certificate under
/// mutual TLS, an unknown CA, plaintext to a TLS port).
pub const TLS_HANDSHAKE_FAILURES: &str = "careroute_tls_handshake_failures_total";
/// Re-readings of changed files by file (tls, credentials) and result (ok,
/// refused).
pub const FILE_RELOADS: &str = "careroute_file_reloads_total";
/// When the server's TLS certificate in force expires (Unix seconds).
pub const TLS_CERT_EXPIRY: &str = "careroute_tls_certificate_expiry_timestamp_seconds";
/// HTTP/JSON requests refused by the HTTP/JSON layer, by reason
/// (UNKNOWN_ROUTE, NOT_JSON before any call; MALFORMED_BODY,
/// REQUEST_TOO_LARGE for a body, which the call reads, so those count under
/// their RPC too).
pub const HTTP_JSON_REFUSED: &str = "careroute_http_json_refused_total";

/// The target of the per-call trace spans: exported over OTLP, never logged.
pub const TRACE_TARGET: &str = "careroute::trace";
/// Span attribute: the decision's id (RouteContact).
pub const TRACE_DECISION_ID: &str = "careroute.decision_id";
/// Span attribute: the rule that decided (RouteContact).
pub const TRACE_RULE_ID: &str = "careroute.rule_id";
/// Span attribute: the outcome (agent, queued, callback, emergency,
/// authenticate).
pub const TRACE_OUTCOME: &str = "careroute.outcome";
/// Span attribute: the call's gRPC status code number.
pub const TRACE_GRPC_STATUS: &str = "rpc.grpc.status_code";
/// Span status (`ERROR` for a server fault), as tracing-opentelemetry reads it.
pub const TRACE_STATUS: &str = "otel.status_code";

/// Every metric the service exports, for checks of dashboards and alerts.
pub const EXPORTED: [&str; 45] = [
    AUTH_REFUSALS,
    HTTP_JSON_REFUSED,
    TLS_HANDSHAKE_FAILURES,
    FILE_RELOADS,
    TLS_CERT_EXPIRY,
    LEADING,
    SNAPSHOTS,
    SNAPSHOT_BYTES,
    SNAPSHOT_SECONDS,
    SNAPSHOT_FAILURES,
    UNDELIVERED,
    UNDELIVERED_DROPPED,
    LINE_CALLBACKS,
    OFFERS_WITHDRAWN,
    WATCHERS,
    QUEUE_WAITING,
    QUEUE_LONGEST_WAIT,
    QUEUE_ESTIMATED_WAIT,
    QUEUE_SERVICE_LEVEL,
    QUEUE_ABANDONMENT,
    QUEUE_ANSWERED,
    QUEUE_ABANDONED,
    QUEUE_CALLBACKS,
    DECISION_SECONDS,
    DECISIONS,
    DECISION_REASONS,
    CALLBACKS,
    RPC_REQUESTS,
    RPC_SECONDS,
    RPC_IN_FLIGHT,
    AGENTS,
    RESERVATIONS_MADE,
    RESERVATIONS_CONFIRMED,
    RESERVATIONS_RELEASED,
    RESERVATIONS_EXPIRED,
    RESERVATIONS_LIVE,
    QUEUE_STAFFED,
    QUEUE_AVAILABLE,
    QUEUE_OPEN,
    POLICY_RELOADS,
    PANICS,
    TASK_FAILURES,
    IDEMPOTENCY_EVICTIONS,
    PATH_EVICTIONS,
    "up",
];

/// Decision latency buckets: 250 ns to 10 ms.
const DECISION_BUCKETS: [f64; 14] = [
    250e-9, 500e-9, 1e-6, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 64e-6, 128e-6, 256e-6, 1e-3, 4e-3, 10e-3,
];

/// RPC latency buckets: 10 µs to 1 s.
const RPC_BUCKETS: [f64; 16] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and describes every
/// metric; later calls return the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(DECISION_SECONDS.into()), &DECISION_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(RPC_SECONDS.into()), &RPC_BUCKETS)
                });
            let handle = match builder {
                Ok(b) => match b.install_recorder() {
                    Ok(handle) => handle,
                    // Another recorder is installed already (an embedding
                    // program's): serve an empty, private one.
                    Err(_) => PrometheusBuilder::new().build_recorder().handle(),
                },
                // Only fails for an empty bucket list, which neither list is.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_histogram!(
        DECISION_SECONDS,
        Unit::Seconds,
        "Time the engine took to decide one RouteContact."
    );
    describe_counter!(
        DECISIONS,
        "Routing decisions by outcome (agent, callback, emergency, authenticate) and escalation level."
    );
    describe_counter!(
        DECISION_REASONS,
        "Reason codes attached to routing decisions."
    );
    describe_counter!(
        CALLBACKS,
        "Callback tickets issued, by reason (closed, no_agents_staffed, no_agent_available, policy...)."
    );
    describe_counter!(
        RPC_REQUESTS,
        "gRPC calls handled, by service, method and status code."
    );
    describe_histogram!(
        RPC_SECONDS,
        Unit::Seconds,
        "Time from a gRPC call's arrival to its status, by service, method and code."
    );
    describe_gauge!(RPC_IN_FLIGHT, "gRPC calls being handled now.");
    describe_gauge!(AGENTS, "Agents by state.");
    describe_counter!(
        RESERVATIONS_MADE,
        "Agent reservations made for warm transfers."
    );
    describe_counter!(
        RESERVATIONS_CONFIRMED,
        "Reservations confirmed: the transfer connected."
    );
    describe_counter!(
        RESERVATIONS_RELEASED,
        "Reservations released by a client (rejected, no answer, cancelled) or withdrawn by careroute (routed again, hung up while waiting, queue removed by a reload)."
    );
    describe_counter!(
        RESERVATIONS_EXPIRED,
        "Reservations whose TTL passed without a confirm."
    );
    describe_gauge!(RESERVATIONS_LIVE, "Reservations live now.");
    describe_counter!(
        IDEMPOTENCY_EVICTIONS,
        "Request ids forgotten before their idempotency window ended: traffic above the sized peak; a late retry would be decided anew."
    );
    describe_counter!(
        PATH_EVICTIONS,
        "Contact paths forgotten before their window ended: more contacts than --max-contact-paths."
    );
    describe_gauge!(
        QUEUE_STAFFED,
        "Eligible agents logged in on one of the queue's channels, per queue."
    );
    describe_gauge!(QUEUE_AVAILABLE, "Eligible agents free now, per queue.");
    describe_gauge!(
        QUEUE_OPEN,
        "1 when the queue is inside its opening hours, else 0."
    );
    describe_gauge!(QUEUE_WAITING, "Contacts waiting in line, per queue.");
    describe_gauge!(
        QUEUE_LONGEST_WAIT,
        Unit::Seconds,
        "Longest wait among contacts in line, per queue."
    );
    describe_gauge!(
        QUEUE_ESTIMATED_WAIT,
        Unit::Seconds,
        "Estimated wait for a contact arriving now, per queue."
    );
    describe_gauge!(
        QUEUE_SERVICE_LEVEL,
        "Share of waiting contacts answered within the queue's service-level threshold (absent until one is answered)."
    );
    describe_gauge!(
        QUEUE_ABANDONMENT,
        "Share of waiting contacts that hung up before an answer (absent until one ended)."
    );
    describe_counter!(
        QUEUE_ANSWERED,
        "Waiting contacts answered (offer confirmed), per queue."
    );
    describe_counter!(QUEUE_ABANDONED, "Waiting contacts that hung up, per queue.");
    describe_counter!(QUEUE_CALLBACKS, "Callback tickets owned, per queue.");
    describe_counter!(POLICY_RELOADS, "Policy reloads by result (ok, refused).");
    describe_counter!(
        PANICS,
        "Request handlers that panicked; the service answers INTERNAL, stops and exits non-zero."
    );
    describe_counter!(
        LINE_CALLBACKS,
        "Waiting contacts that left their line for a callback, by reason (closed, wait_too_long, no_agents_staffed, policy)."
    );
    describe_counter!(
        OFFERS_WITHDRAWN,
        "Offers of waiting contacts withdrawn, by reason (cancelled, rerouted, policy_changed)."
    );
    describe_gauge!(
        UNDELIVERED,
        "Callbacks and moves decided while no watcher covered their queue, kept (up to an hour) for the next one that does."
    );
    describe_counter!(
        UNDELIVERED_DROPPED,
        "Callbacks and moves dropped before any watcher of their queue connected: a parked caller nobody was told about."
    );
    describe_counter!(
        SNAPSHOTS,
        "Snapshots of the routing state written to the journal (each compacts the log before the previous one)."
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        Unit::Bytes,
        "Size of the last snapshot of the routing state."
    );
    describe_gauge!(
        SNAPSHOT_SECONDS,
        Unit::Seconds,
        "How long the last snapshot took to encode and save, on the snapshot thread (serving does not wait for it)."
    );
    describe_counter!(
        AUTH_REFUSALS,
        "Calls refused for their credentials, by method, the role the method needs, and code (unauthenticated: no or unknown token; permission_denied: the client lacks the role)."
    );
    describe_counter!(
        HTTP_JSON_REFUSED,
        "HTTP/JSON requests refused by the HTTP/JSON layer, by reason: UNKNOWN_ROUTE and NOT_JSON before any call; MALFORMED_BODY and REQUEST_TOO_LARGE for a body, which the call reads, so those also count under their RPC (INVALID_ARGUMENT, RESOURCE_EXHAUSTED)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or did not finish in time (no or untrusted client certificate under mutual TLS, plaintext to a TLS port)."
    );
    describe_counter!(
        FILE_RELOADS,
        "Changed TLS or credentials files re-read, by file (tls, credentials) and result (ok; refused: the previous contents stay in force)."
    );
    describe_gauge!(
        TLS_CERT_EXPIRY,
        Unit::Seconds,
        "When the TLS certificate being served expires, as a Unix time."
    );
    describe_gauge!(
        LEADING,
        "1 while this process leads its replicated log (or is alone on a local journal), 0 as a standby."
    );
    describe_counter!(
        SNAPSHOT_FAILURES,
        "Snapshots that could not be saved; the log is kept whole until one is, so restarts replay more."
    );
    describe_gauge!(
        WATCHERS,
        "WatchAssignments streams connected now; waiting contacts are offered only to agents one of them covers."
    );
    describe_counter!(
        TASK_FAILURES,
        "Background tasks (housekeeping, reload, drain) that ended unexpectedly; the service stops and exits non-zero."
    );
}

const OUTCOMES: [&str; 5] = ["agent", "callback", "emergency", "authenticate", "queued"];
/// Handles for everything recorded per decision, created once so the hot
/// path does no label lookup.
pub struct DecisionMetrics {
    latency: Histogram,
    decisions: [[Counter; 4]; OUTCOMES.len()],
    reasons: [Counter; Reason::ALL.len()],
    callbacks: [Counter; CallbackReason::ALL.len()],
}

impl DecisionMetrics {
    /// Registers the handles with the installed recorder.
    pub fn new() -> DecisionMetrics {
        install();
        DecisionMetrics {
            latency: metrics::histogram!(DECISION_SECONDS),
            decisions: OUTCOMES.map(|outcome| {
                ["1", "2", "3", "4"].map(
                    |level| metrics::counter!(DECISIONS, "outcome" => outcome, "level" => level),
                )
            }),
            reasons: Reason::ALL
                .map(|r| metrics::counter!(DECISION_REASONS, "reason" => r.as_str())),
            callbacks: CallbackReason::ALL
                .map(|r| metrics::counter!(CALLBACKS, "reason" => r.as_str())),
        }
    }

    /// Records one decision and how long the engine took.
    pub fn record(&self, decision: &Decision, seconds: f64) {
        self.latency.record(seconds);
        let outcome = OUTCOMES
            .iter()
            .position(|o| *o == decision.outcome.kind())
            .unwrap_or_default();
        let level = usize::from(decision.level.clamp(1, 4) - 1);
        self.decisions[outcome][level].increment(1);
        for reason in &decision.reasons {
            // ALL is in declaration order, so the discriminant is the index.
            self.reasons[*reason as usize].increment(1);
        }
        if let Outcome::Callback(c) = &decision.outcome {
            self.callbacks[c.reason as usize].increment(1);
        }
    }
}

impl Default for DecisionMetrics {
    fn default() -> Self {
        DecisionMetrics::new()
    }
}

/// Records a snapshot saved: how long it took and its size.
pub fn record_snapshot(took: std::time::Duration, bytes: usize) {
    metrics::counter!(SNAPSHOTS).increment(1);
    metrics::gauge!(SNAPSHOT_BYTES).set(bytes as f64);
    metrics::gauge!(SNAPSHOT_SECONDS).set(took.as_secs_f64());
}

/// Sets the snapshot counters at zero, so the first failure is an
/// increase an alert can see.
pub fn register_snapshots() {
    metrics::counter!(SNAPSHOTS).increment(0);
    metrics::counter!(SNAPSHOT_FAILURES).increment(0);
}

/// Records a snapshot that could not be saved.
pub fn record_snapshot_failure() {
    metrics::counter!(SNAPSHOT_FAILURES).increment(1);
}

/// Counts an event decided outside a request: a waiting contact's
/// callback or a withdrawn offer.
pub fn record_event(event: &Event) {
    match event {
        Event::CallbackInstead { callback, .. } => {
            metrics::counter!(LINE_CALLBACKS, "reason" => callback.reason.as_str()).increment(1);
        }
        Event::Withdrawn { reason, .. } => {
            let reason = match reason {
                Withdrawal::Cancelled => "cancelled",
                Withdrawal::Rerouted => "rerouted",
                Withdrawal::PolicyChanged => "policy_changed",
            };
            metrics::counter!(OFFERS_WITHDRAWN, "reason" => reason).increment(1);
        }
        Event::Assigned(_) | Event::Moved { .. } => {}
    }
}

/// The engine's gauges and cumulative counters: read under its lock
/// ([`EngineGauges::read`]), published after it is let go.
pub struct EngineGauges {
    by_state: [u32; STATES],
    counters: Counters,
    live: usize,
    watchers: usize,
    undelivered: usize,
    queues: Vec<QueueView>,
}

impl EngineGauges {
    /// Reads them from `engine`: the serving one, or a standby's replica.
    pub fn read(engine: &Engine) -> EngineGauges {
        EngineGauges {
            by_state: engine.roster().by_state(),
            counters: engine.counters(),
            live: engine.live_reservations(),
            watchers: engine.watchers(),
            undelivered: engine.undelivered(),
            queues: engine.queues(),
        }
    }

    /// Sets the metrics; returns the ids of the queues they show (for
    /// [`render`]).
    pub fn publish(&self) -> BTreeSet<String> {
        let queues: BTreeSet<String> = self.queues.iter().map(|q| q.id.to_string()).collect();
        PUBLISHED_QUEUES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone_from(&queues);
        metrics::gauge!(WATCHERS).set(self.watchers as f64);
        metrics::gauge!(UNDELIVERED).set(self.undelivered as f64);
        metrics::counter!(UNDELIVERED_DROPPED).absolute(self.counters.undelivered_dropped);
        for (state, n) in AgentState::ALL.iter().zip(self.by_state) {
            metrics::gauge!(AGENTS, "state" => state.as_str()).set(f64::from(n));
        }
        metrics::counter!(RESERVATIONS_MADE).absolute(self.counters.reserved);
        metrics::counter!(RESERVATIONS_CONFIRMED).absolute(self.counters.confirmed);
        metrics::counter!(RESERVATIONS_RELEASED).absolute(self.counters.released);
        metrics::counter!(RESERVATIONS_EXPIRED).absolute(self.counters.expired);
        metrics::counter!(IDEMPOTENCY_EVICTIONS).absolute(self.counters.idempotency_evicted_early);
        metrics::counter!(PATH_EVICTIONS).absolute(self.counters.paths_evicted_early);
        metrics::gauge!(RESERVATIONS_LIVE).set(self.live as f64);
        for q in &self.queues {
            let id = q.id.to_string();
            metrics::gauge!(QUEUE_STAFFED, "queue" => id.clone()).set(f64::from(q.staffed));
            metrics::gauge!(QUEUE_AVAILABLE, "queue" => id.clone()).set(f64::from(q.available));
            metrics::gauge!(QUEUE_OPEN, "queue" => id.clone()).set(if q.open { 1.0 } else { 0.0 });
            metrics::gauge!(QUEUE_WAITING, "queue" => id.clone()).set(f64::from(q.waiting));
            metrics::gauge!(QUEUE_LONGEST_WAIT, "queue" => id.clone()).set(seconds(q.longest_wait));
            metrics::gauge!(QUEUE_ESTIMATED_WAIT, "queue" => id.clone())
                .set(q.estimated_wait.map_or(f64::NAN, seconds));
            if let Some(sl) = q.stats.service_level() {
                metrics::gauge!(QUEUE_SERVICE_LEVEL, "queue" => id.clone()).set(sl);
            }
            if let Some(ab) = q.stats.abandonment() {
                metrics::gauge!(QUEUE_ABANDONMENT, "queue" => id.clone()).set(ab);
            }
            metrics::counter!(QUEUE_ANSWERED, "queue" => id.clone()).absolute(q.stats.answered);
            metrics::counter!(QUEUE_ABANDONED, "queue" => id.clone()).absolute(q.stats.abandoned);
            metrics::counter!(QUEUE_CALLBACKS, "queue" => id).absolute(q.stats.callbacks);
        }
        queues
    }
}

/// The queues the last [`EngineGauges::publish`] showed, for a scrape that
/// published none itself (a standby's: its replication publishes). The
/// recorder cannot forget a series, so a queue a reload removed would be
/// scraped at its last values for ever (an open queue nobody staffs,
/// alerting): [`render`] leaves out the series of queues not shown.
static PUBLISHED_QUEUES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The Prometheus text of `prometheus` with only the series of `queues`
/// (the queues this scrape published), or of the queues last published.
pub fn render(prometheus: &PrometheusHandle, queues: Option<&BTreeSet<String>>) -> String {
    let text = prometheus.render();
    match queues {
        Some(queues) => only_queues(&text, queues),
        None => only_queues(
            &text,
            &PUBLISHED_QUEUES
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        ),
    }
}

/// `text` (Prometheus exposition) without the samples whose `queue` label
/// is not one of `queues`.
fn only_queues(text: &str, queues: &BTreeSet<String>) -> String {
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        if queue_label(line).is_none_or(|q| queues.contains(q)) {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// The value of a sample line's `queue` label, if it has one (queue ids
/// hold no quote or backslash to unescape).
fn queue_label(line: &str) -> Option<&str> {
    if line.starts_with('#') {
        return None;
    }
    let labels = line.get(line.find('{')? + 1..line.rfind('}')?)?;
    let at = labels
        .match_indices("queue=\"")
        .find(|(i, _)| *i == 0 || labels[..*i].ends_with(','))?
        .0;
    let value = &labels[at + "queue=\"".len()..];
    value.find('"').map(|end| &value[..end])
}

fn seconds(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1000.0
}

/// Trace export, when configured: flush it with [`Tracing::shutdown`]
/// before the process ends.
#[must_use]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Exports the spans still queued and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "the last trace spans could not be exported");
        }
    }
}

/// The OTLP exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint: {0}")]
pub struct TracingError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Reports why the service cannot run, or stopped, as its logs are
/// written: a line of text, or with JSON logs one JSON object shaped like
/// theirs (written here, so it works before tracing is set up, and after
/// it is shut down).
pub fn report_fatal(format: LogFormat, error: &dyn std::fmt::Display) {
    match format {
        LogFormat::Human => eprintln!("careroute: {error}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "fields": { "message": "careroute cannot run", "error": error.to_string() },
                "target": "careroute",
            })
        ),
    }
}

/// Sets up tracing: human or JSON lines on stderr, filtered by RUST_LOG
/// (default `info`), and with `otlp` a span per RPC exported over OTLP/gRPC
/// (batched on a thread of its own; a collector that is down or slow drops
/// spans, never delays a call). Calls without a sampled `traceparent` are
/// traced at `sample_ratio`. Exporting needs the Tokio runtime entered (its
/// channel lives there). Safe to call more than once: the first wins.
pub fn init_tracing(
    format: LogFormat,
    otlp: Option<&str>,
    sample_ratio: f64,
) -> Result<Tracing, TracingError> {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The per-call spans are exported, never logged.
    if let Ok(off) = format!("{TRACE_TARGET}=off").parse() {
        filter = filter.add_directive(off);
    }
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs.json().boxed(),
    };
    let mut provider = None;
    let mut spans = None;
    if let Some(endpoint) = otlp {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint);
        if endpoint.starts_with("https://") {
            // The collector's certificate is checked against the Mozilla
            // roots built in (webpki-roots).
            builder = builder
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_enabled_roots());
        }
        let exporter = builder.build()?;
        let sdk = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample_ratio,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("careroute")
                    .build(),
            )
            .build();
        spans = Some(span_layer(sdk.tracer("careroute")));
        provider = Some(sdk);
    }
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init();
    Ok(Tracing { provider })
}

/// The layer that exports the per-call spans (target [`TRACE_TARGET`]),
/// and nothing else, to `tracer`.
pub fn span_layer<S>(tracer: opentelemetry_sdk::trace::Tracer) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_leaves_out_the_series_of_queues_the_policy_no_longer_has() {
        let text = "# HELP careroute_queue_open Open now.\n\
                    # TYPE careroute_queue_open gauge\n\
                    careroute_queue_open{queue=\"billing\"} 1\n\
                    careroute_queue_open{queue=\"pharmacy\"} 1\n\
                    careroute_other{subqueue=\"pharmacy\",queue=\"billing\"} 2\n\
                    careroute_other{kind=\"x\",queue=\"pharmacy\"} 3\n\
                    careroute_rpc_in_flight_requests 0\n";
        let kept = only_queues(text, &BTreeSet::from(["billing".to_owned()]));
        assert_eq!(
            kept,
            "# HELP careroute_queue_open Open now.\n\
             # TYPE careroute_queue_open gauge\n\
             careroute_queue_open{queue=\"billing\"} 1\n\
             careroute_other{subqueue=\"pharmacy\",queue=\"billing\"} 2\n\
             careroute_rpc_in_flight_requests 0\n"
        );
    }
}
