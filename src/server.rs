//! Wiring: builds the engine (from the journal's log, or from the policy and
//! roster), binds the gRPC and
//! metrics listeners, serves RoutingService with health and reflection (v1
//! and v1alpha), keeps the engine's timers and gauges current, reloads the
//! policy on SIGHUP, and drains on the injected shutdown signal.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;

use crate::clock::Clock;
use crate::config::Config;
use crate::engine::{
    Command, Configure, Engine, EngineConfig, IdKey, ReplacePolicy, SetAgentState, Tick,
    UpsertAgent,
};
use crate::file::FileError;
use crate::grpc::{
    FILE_DESCRIPTOR_SET, Routing,
    admission::AdmissionLayer,
    authorize::{AuthorizeLayer, metrics_gate},
    client_faults::ClientFaultsLayer,
    deadline::RequestDeadlineLayer,
    event_ring::Replayed,
    events::Published,
    http_json::HttpJsonLayer,
    layer::RpcMetricsLayer,
    panic::CatchPanicLayer,
    pb,
};
use crate::incoming::Prefaced;
use crate::journal::{
    Entry, Every, JournalError, Log, Nats, NatsSecurity, Replay, Snapshots, Store, Unreplayable,
};
use crate::policy::{self, Policy};
use crate::reload::{FileSeen, listen_for_hangups, reload_on_change};
use crate::replication::{self, Seed};
use crate::roster;
use crate::secrets::{Secrets, SecretsError};
use crate::shared::{Fatal, Role, SharedEngine};
use crate::telemetry::{self, EngineGauges};
use crate::tls::{self, HttpListener, Peer, Side};

/// How often expiries are applied when no request does it.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// How often the policy file is looked at for changes (a ConfigMap update
/// sends no SIGHUP).
const POLICY_RECHECK_EVERY: Duration = crate::secrets::RECHECK_EVERY;
/// How often the exporter drains histogram buckets, so memory stays flat.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The policy or roster file was refused.
    #[error(transparent)]
    File(#[from] FileError),
    /// A roster agent could not be placed (its state update failed).
    #[error("roster: {0}")]
    RosterAgent(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics server failed.
    #[error("metrics server: {0}")]
    Metrics(std::io::Error),
    /// A fault the service did not expect (a panic, a background task that
    /// ended): it stopped rather than serve from state it cannot trust.
    #[error("stopped after an internal fault: {0}")]
    Fatal(String),
    /// The journal cannot be opened, read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A listener would be open to the network without protection.
    #[error("{0}")]
    Exposed(String),
    /// The TLS or credentials files were refused.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The proto's HTTP/JSON bindings cannot be served (a build defect).
    #[error("HTTP/JSON routes: {0}")]
    Routes(#[from] crate::grpc::http_json::RouteError),
}

/// The engine, ready to serve, and its journal.
pub struct Prepared {
    /// The engine: replayed from the journal, or new.
    pub engine: Engine,
    journal: (Option<Store>, u64),
    /// With a journal, a copy of the engine that snapshots are taken from.
    snapshots: Option<Snapshots>,
    /// On a replicated log: what this process brings to it (the engine
    /// above only holds the place until the log is read).
    replicated: Option<Seed>,
    /// The events of the log's last records, told again for watchers that
    /// resume across the restart.
    retained: Replayed,
}

/// How this process checks the NATS servers and proves itself to them.
pub fn nats_security(config: &Config) -> NatsSecurity {
    NatsSecurity {
        nkey_seed: config.nats_nkey_seed.clone(),
        ca: config.nats_ca.clone(),
        client: config.nats_cert.clone().zip(config.nats_key.clone()),
    }
}

/// Builds the engine. With a journal that holds a log, the engine is that
/// log replayed (a torn or corrupt tail reported and cut), then told the
/// process restarted, then given the policy file if it changed; the roster
/// file is not loaded again (the log holds the agents and their states).
/// Otherwise it starts from the policy file (or the embedded default) and
/// the roster file (or, on the embedded default, the demo roster), and the
/// log starts with them.
pub fn build_engine(config: &Config, now: crate::model::Time) -> Result<Prepared, ServerError> {
    // What this start logs is applied at the time it is read back with.
    let now = crate::clock::as_logged(now);
    let policy = Arc::new(match &config.policy {
        Some(path) => policy::read(path)?,
        None => Policy::embedded()?,
    });
    // At most a year: a window is added to times, which must not overflow.
    let window = |d: Duration| {
        chrono::Duration::from_std(d)
            .unwrap_or(chrono::Duration::MAX)
            .min(chrono::Duration::days(366))
    };
    let idempotency = window(config.idempotency_window);
    let mut engine_config = EngineConfig {
        idempotency_retention: idempotency,
        max_idempotency_keys: EngineConfig::keys_for(idempotency, config.peak_contacts_per_second),
        path_retention: window(config.path_window),
        max_paths: config.max_contact_paths,
        max_agents: config.max_agents,
        id_key: IdKey(rand::random()),
        ..EngineConfig::default()
    };
    let limits = engine_config.limits();
    if config.journal.is_some() {
        return replicated(config, policy, engine_config);
    }
    let (store, recovered) = if config.no_journal {
        (None, None)
    } else {
        let (store, recovered) = Store::open(&config.data_dir, config.journal_sync)?;
        (Some(store), Some(recovered))
    };
    // A log's engine keeps the log's id key.
    if let Some(key) = recovered.as_ref().and_then(|r| r.id_key) {
        engine_config.id_key = key;
    }
    let mut store = store;
    // What this start adds to the log, applied as it is logged.
    let mut added: Vec<(crate::model::Time, Command)> = Vec::new();
    let mut last_seq = 0;
    let mut retained = Replayed::new(0, config.event_retention);
    let engine = match (recovered, store.as_ref()) {
        (Some(r), Some(store)) if !r.is_new() => {
            for (seq, why) in &r.refused_snapshots {
                tracing::warn!(
                    data_dir = %config.data_dir.display(),
                    snapshot = seq,
                    why = why.as_str(),
                    "journal: a snapshot cannot be loaded; an older one and the log since are used"
                );
            }
            let snapshot = r.snapshot.as_ref().map(|(seq, _)| *seq);
            let no_start = || JournalError::NoStart {
                file: config.data_dir.join(crate::journal::FILE),
            };
            if r.snapshot.is_none() && r.id_key.is_none() {
                return Err(no_start().into());
            }
            let mut replay = Replay::new(r.snapshot.map(|(_, e)| e), engine_config.clone());
            let mut records = r.records;
            let first = records.first();
            // Only the last records' events can be retained for watchers
            // that resume across the restart.
            retained = Replayed::reading(first - 1, records.last_present(), config.event_retention);
            let unreplayable =
                |e: Unreplayable| e.in_log(config.data_dir.join(crate::journal::FILE));
            for (seq, entry) in (first..).zip(&mut records) {
                if !retained.tells(seq) {
                    replay.apply(seq, entry).map_err(unreplayable)?;
                    continue;
                }
                let told = replay
                    .apply_with(seq, entry, |engine, at, command| {
                        let (told, refused) = Published::replayed(engine, seq, at, command);
                        (told, refused.is_err())
                    })
                    .map_err(unreplayable)?;
                retained.keep(seq, told.flatten());
            }
            let end = records.finish(store)?;
            // A tail cut before the first record that tells: none did, and
            // the ring starts where the log now ends.
            if !retained.tells(end.last_seq + 1) {
                retained = Replayed::new(end.last_seq, config.event_retention);
            }
            if let Some(cut) = &end.cut {
                tracing::error!(
                    data_dir = %config.data_dir.display(),
                    first_record_cut = cut.first,
                    last_record_cut = cut.last,
                    why = cut.why.as_str(),
                    "journal: a torn or corrupt tail was cut (none of it written under --journal-sync fsync); the log before it is replayed"
                );
            }
            last_seq = end.last_seq;
            let engine = replay.finish().ok_or_else(no_start)?;
            added.push((now, crate::journal::restarted()));
            // Limits changed by this start's flags are a logged change; the
            // log before it replays under its own.
            if engine.limits() != limits {
                added.push((now, Command::Configure(Configure(limits))));
            }
            // Only a policy file named at start replaces the log's policy:
            // without one, the policy in force carries on.
            if config.policy.is_some() && engine.policy().text != policy.text {
                added.push((now, Command::ReplacePolicy(ReplacePolicy(policy))));
            }
            tracing::info!(
                data_dir = %config.data_dir.display(),
                snapshot,
                replayed = last_seq + 1 - first,
                agents = engine.roster().live(),
                waiting = engine.waiting_contacts(),
                reservations = engine.live_reservations(),
                "journal replayed"
            );
            engine
        }
        (_, store) => {
            if let Some(store) = store {
                store.accept()?;
                store.set_id_key(&engine_config.id_key)?;
                // The log starts from the policy (not applied: the engine is
                // built on it).
                added.push((
                    now,
                    Command::ReplacePolicy(ReplacePolicy(Arc::clone(&policy))),
                ));
                // And the limits it runs under, so a replay runs under them.
                added.push((now, Command::Configure(Configure(limits))));
            }
            let engine = Engine::new(Arc::clone(&policy), engine_config.clone());
            added.extend(roster_commands(config)?.into_iter().map(|c| (now, c)));
            engine
        }
    };
    // The snapshot shadow rebuilds its own copy of the log's engine on its
    // own thread, now that this one has replayed (not beside it: the
    // second core reads the records while this one applies them); it is
    // fed what this start adds once it is written.
    let snapshots = match store.as_mut() {
        Some(store) => {
            let file = store.take_snapshots().ok_or_else(|| {
                JournalError::Setup("the snapshot database was taken twice".into())
            })?;
            let every = Every {
                commands: config.snapshot_every,
                interval: config.snapshot_interval,
            };
            let started = Snapshots::start(
                file,
                store.file().to_owned(),
                last_seq,
                engine_config,
                every,
            );
            Some(started.map_err(|e| {
                JournalError::Setup(format!("cannot start the snapshot shadow: {e}"))
            })?)
        }
        None => None,
    };
    let mut engine = engine;
    let fresh = last_seq == 0;
    for (seq, (at, command)) in (last_seq + 1..).zip(&added) {
        // A new log's first record is the policy the engine was built on.
        if fresh && seq == 1 && store.is_some() {
            continue;
        }
        let (told, refused) = Published::replayed(&mut engine, seq, *at, command.clone());
        refused.map_err(|e| ServerError::RosterAgent(e.to_string()))?;
        // Told to watchers that resume, once logged.
        if store.is_some() {
            retained.keep(seq, told);
        }
    }
    if let Some(store) = store.as_mut() {
        // None was refused: a start that adds a refused one stops above.
        let entries = added.into_iter().map(|(at, c)| Entry::accepted(at, c));
        let rows = store.append_now(last_seq, entries.collect())?;
        last_seq += rows.len() as u64;
        if let Some(shadow) = &snapshots
            && !shadow.feed(rows)
        {
            return Err(JournalError::Setup("the snapshot shadow stopped at start".into()).into());
        }
    }
    Ok(Prepared {
        engine,
        journal: (store, last_seq),
        snapshots,
        replicated: None,
        retained,
    })
}

/// The roster a new log starts with, as commands: the roster file, or on
/// the embedded default the demo roster.
fn roster_commands(config: &Config) -> Result<Vec<Command>, ServerError> {
    let agents = match &config.roster {
        Some(path) => roster::read(path)?,
        None if config.wants_demo_roster() => {
            roster::parse("examples/demo-roster.toml (embedded)", roster::DEMO_ROSTER)?
        }
        None => Vec::new(),
    };
    let mut commands = Vec::with_capacity(agents.len() * 2);
    for (spec, state) in agents {
        let agent_id = spec.id.clone();
        commands.push(Command::UpsertAgent(UpsertAgent(spec)));
        commands.push(Command::SetAgentState(SetAgentState { agent_id, state }));
    }
    Ok(commands)
}

/// On a replicated log the engine is the log's, read once the service
/// runs; until then an engine on the policy alone holds its place.
fn replicated(
    config: &Config,
    policy: Arc<Policy>,
    engine_config: EngineConfig,
) -> Result<Prepared, ServerError> {
    let limits = engine_config.limits();
    Ok(Prepared {
        engine: Engine::new(Arc::clone(&policy), engine_config.clone()),
        journal: (None, 0),
        snapshots: None,
        retained: Replayed::new(0, 0),
        replicated: Some(Seed {
            policy,
            config: engine_config,
            limits,
            roster: roster_commands(config)?,
            me: config
                .advertise
                .clone()
                .unwrap_or_else(|| config.grpc_addr.to_string()),
            ttl: config.lease_ttl,
            every: Every {
                commands: config.snapshot_every,
                interval: config.snapshot_interval,
            },
        }),
    })
}

/// The two bound listeners.
pub struct Listeners {
    grpc: TcpListener,
    metrics: TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`, unless that would expose the
    /// service unprotected ([`Config::exposure`]).
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        config.exposure().map_err(ServerError::Exposed)?;
        if let Some(would_refuse) = config.insecure_exposure() {
            tracing::warn!(
                would_refuse,
                "running exposed: --insecure lets this start without the protection it needs"
            );
        }
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        Ok(Listeners {
            grpc: bind(config.grpc_addr).await?,
            metrics: bind(config.metrics_addr).await?,
        })
    }

    /// Where gRPC listens.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Where /metrics listens.
    pub fn metrics_addr(&self) -> std::io::Result<SocketAddr> {
        self.metrics.local_addr()
    }
}

/// Serves until `shutdown` resolves, then reports NOT_SERVING and drains:
/// requests in flight finish, new ones are refused.
pub async fn run(
    config: &Config,
    listeners: Listeners,
    prepared: Prepared,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let prometheus = telemetry::install();
    // Who may connect and call what, checked before anything is served.
    let secrets = Secrets::load(config)?;
    let credentials = secrets.credentials.clone();
    let tls = secrets.tls.clone();
    let grpc_addr = listeners.grpc_addr().map_err(|source| ServerError::Bind {
        addr: config.grpc_addr,
        source,
    })?;
    let metrics_addr = listeners
        .metrics_addr()
        .map_err(|source| ServerError::Bind {
            addr: config.metrics_addr,
            source,
        })?;
    let Prepared {
        engine,
        journal: (store, last_seq),
        snapshots,
        replicated,
        retained,
    } = prepared;
    // The policy file as this start read it (the engine is built on it, or
    // on a replicated log holds the place with it), to tell its later
    // changes from what the log already holds.
    let policy_file = config.policy.clone().map(|path| {
        let seen = FileSeen::at_start(&engine.policy().text, replicated.is_some());
        (path, seen)
    });
    // The policy of a replicated log as this process follows it.
    let (log_policy_tx, log_policy) = watch::channel(None);
    // On a replicated log: its stream, and this process's part in it.
    let (log, replicated) = match replicated {
        Some(mut seed) => {
            let url = config.journal.as_deref().unwrap_or_default();
            let security = nats_security(config);
            let (nats, key) = Nats::connect(
                url,
                &security,
                &config.cluster_id,
                config.nats_replicas,
                config.lease_ttl,
                seed.config.id_key,
            )
            .await?;
            seed.config.id_key = key;
            if config.advertise.is_none() {
                seed.me = grpc_addr.to_string();
            }
            let log = Log::nats(nats.clone(), tokio::runtime::Handle::current());
            (Some(log), Some((nats, seed)))
        }
        None => (store.map(|s| Log::Local(Box::new(s))), None),
    };
    let role = if replicated.is_some() {
        Role::Standby { leader: None }
    } else {
        Role::Alone
    };
    // Listening for SIGHUP before announcing the service: a reload sent
    // right after start-up must not find the default action (exit).
    let hangups = listen_for_hangups();
    tracing::info!(
        grpc = %grpc_addr,
        metrics = %metrics_addr,
        policy = %engine.policy().source,
        version = %engine.policy().version,
        agents = engine.roster().len(),
        role = role_name(&role),
        "careroute serving"
    );
    metrics::gauge!(telemetry::LEADING).set(if role == Role::Alone { 1.0 } else { 0.0 });
    let fatal = Fatal::new();
    let engine = Arc::new(SharedEngine::new(engine, fatal.clone()));
    if let Ok(mut held) = engine.lock() {
        engine.set_role(&mut held, role.clone());
    }
    // Ready once the policy is loaded (it is) and the listeners are bound
    // (they are); not ready again from the start of the drain.
    let ready = Arc::new(AtomicBool::new(true));
    // One stop signal for every task, and for open assignment streams.
    let (stop_tx, stop_rx) = watch::channel(false);
    let raise = fatal.clone();
    let routing = Routing::new(
        Arc::clone(&engine),
        Arc::clone(&clock),
        stop_rx.clone(),
        (log, last_seq),
        snapshots,
        config.event_retention,
        move |e| {
            tracing::error!(error = %e, "journal write failed: nothing more can be acknowledged");
            raise.raise("the journal cannot be written");
        },
    );
    // A watcher resumes across the restart.
    routing.restore_events(retained);

    let (health, health_service) = tonic_health::server::health_reporter();
    report_health(&health, role == Role::Alone).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The rich error details (ErrorInfo, BadRequest), so reflection
        // clients such as grpcurl print them decoded.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Metrics(std::io::Error::other(e)))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The rich error details (ErrorInfo, BadRequest), so reflection
        // clients such as grpcurl print them decoded.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServerError::Metrics(std::io::Error::other(e)))?;

    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    {
        let health = health.clone();
        let ready = Arc::clone(&ready);
        let grace = Duration::from_millis(config.drain_grace_ms);
        let raised = fatal.clone();
        supervise(
            "drain",
            async move {
                // A fatal fault skips the grace: nothing more is answered.
                let grace = tokio::select! {
                    _ = shutdown => grace,
                    _ = raised.raised() => Duration::ZERO,
                };
                tracing::info!(
                    grace_ms = grace.as_millis() as u64,
                    "draining: health NOT_SERVING"
                );
                ready.store(false, Ordering::SeqCst);
                report_health(&health, false).await;
                tokio::time::sleep(grace).await;
                tracing::info!("closing listeners, finishing requests in flight");
                let _ = stop_tx.send(true);
            },
            stop_rx.clone(),
            fatal.clone(),
        );
    }

    if let Some((nats, seed)) = replicated {
        let routing = routing.clone();
        let stop = stopped(stop_rx.clone());
        supervise(
            "replication",
            async move {
                // An error ends the task, which stops the service.
                if let Err(e) = replication::run(routing, nats, seed, log_policy_tx, stop).await {
                    tracing::error!(error = %e, "replication cannot go on");
                }
            },
            stop_rx.clone(),
            fatal.clone(),
        );
        supervise(
            "role",
            serve_by_role(
                engine.role(),
                health.clone(),
                Arc::clone(&ready),
                stopped(stop_rx.clone()),
            ),
            stop_rx.clone(),
            fatal.clone(),
        );
    }
    supervise(
        "housekeeping",
        housekeeping(
            routing.clone(),
            prometheus.clone(),
            stopped(stop_rx.clone()),
        ),
        stop_rx.clone(),
        fatal.clone(),
    );
    supervise(
        "secrets",
        secrets.watch(crate::secrets::RECHECK_EVERY, stopped(stop_rx.clone())),
        stop_rx.clone(),
        fatal.clone(),
    );
    supervise(
        "reload",
        reload_on_change(
            hangups,
            policy_file,
            log_policy,
            routing.clone(),
            POLICY_RECHECK_EVERY,
            stopped(stop_rx.clone()),
        ),
        stop_rx.clone(),
        fatal.clone(),
    );

    let metrics_app = {
        let routing = routing.clone();
        let ready = Arc::clone(&ready);
        let role = engine.role();
        let credentials = credentials.clone();
        axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(
                    move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<Peer>,
                          headers: axum::http::HeaderMap| {
                        let (routing, prometheus) = (routing.clone(), prometheus.clone());
                        let credentials = credentials.clone();
                        async move {
                            // With credentials, a scrape needs the observe role.
                            let credentials = credentials.as_ref().map(|c| c.load_full());
                            if let Err((status, body)) =
                                metrics_gate(credentials.as_deref(), &headers, Some(&peer))
                            {
                                let mut refused =
                                    axum::response::IntoResponse::into_response((status, body));
                                if status == axum::http::StatusCode::UNAUTHORIZED {
                                    refused.headers_mut().insert(
                                        axum::http::header::WWW_AUTHENTICATE,
                                        axum::http::HeaderValue::from_static("Bearer"),
                                    );
                                }
                                return refused;
                            }
                            axum::response::IntoResponse::into_response(
                                scrape(&routing, &prometheus).await,
                            )
                        }
                    },
                ),
            )
            // Alive while the process answers at all.
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            // Ready from start-up to the start of the drain. Closed or
            // unstaffed queues never make it unready: a callback is a
            // correct answer.
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let ready = ready.load(Ordering::SeqCst);
                    let standby = matches!(*role.borrow(), Role::Standby { .. });
                    async move {
                        if !ready {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                        } else if standby {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "standby\n")
                        } else {
                            (axum::http::StatusCode::OK, "ready\n")
                        }
                    }
                }),
            )
    };
    let handshake = config.handshake_timeout;
    let (metrics_listener, accepting) =
        HttpListener::new(listeners.metrics, tls.clone(), handshake)
            .map_err(ServerError::Metrics)?;
    supervise("accept metrics", accepting, stop_rx.clone(), fatal.clone());
    let metrics_server = axum::serve(
        metrics_listener,
        metrics_app.into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));

    let tcp = TcpIncoming::from(listeners.grpc)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let (incoming, accepting) = tls::accept(tcp, tls.map(|t| (t, Side::Grpc)), handshake);
    supervise("accept grpc", accepting, stop_rx.clone(), fatal.clone());
    let incoming = incoming.map(move |conn| conn.map(|io| Prefaced::new(io, handshake)));
    let http_json = HttpJsonLayer::new()?;
    let grpc_server = tonic::transport::Server::builder()
        // HTTP/1.1 too, for HTTP/JSON clients (gRPC needs HTTP/2).
        .accept_http1(true)
        .layer(http_json)
        .layer(RpcMetricsLayer::new())
        .layer(ClientFaultsLayer)
        .layer(AuthorizeLayer::new(credentials.clone()))
        .layer(AdmissionLayer::new(config.max_in_flight))
        .layer(CatchPanicLayer::new(fatal.clone()))
        .layer(RequestDeadlineLayer::new(config.request_timeout))
        .concurrency_limit_per_connection(config.concurrency_per_connection)
        .max_concurrent_streams(config.max_concurrent_streams)
        // No server-wide timeout: it would cut the long-lived CTI stream
        // (StreamAgentStates). The deadline layer times single-message
        // calls only, and clients' grpc-timeout deadlines are honoured.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(routing.into_server())
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));

    // Serve until both servers end by themselves after the stop signal, or
    // until the shutdown deadline after it: then open streams and
    // connections that never finished their handshake are cut (dropping
    // the servers ends their tasks with the runtime).
    let serving = async {
        let (grpc, metrics) = tokio::join!(grpc_server, metrics_server);
        grpc?;
        metrics.map_err(ServerError::Metrics)
    };
    let deadline = config.shutdown_timeout;
    let cut = async move {
        stopped(stop_rx).await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        result = serving => result?,
        _ = cut => tracing::warn!(
            timeout_ms = deadline.as_millis() as u64,
            "shutdown deadline passed: cutting open streams and connections"
        ),
    }
    if fatal.is_raised() {
        let reason = fatal.raised().await;
        return Err(ServerError::Fatal(reason));
    }
    tracing::info!("stopped");
    Ok(())
}

/// How the role is named in logs.
fn role_name(role: &Role) -> &'static str {
    match role {
        Role::Alone => "alone",
        Role::Leader => "leader",
        Role::Standby { .. } => "standby",
    }
}

/// Tells gRPC health whether this process serves routing calls, for the
/// routing service and for the server as a whole (service `""`, what
/// probes ask by default), so that both say what `/readyz` says.
async fn report_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health
        .set_service_status(
            <pb::routing_service_server::RoutingServiceServer<Routing> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
}

/// Reports SERVING on gRPC health while this process leads, NOT_SERVING
/// while it is a standby, so a load balancer sends calls only to the
/// leader; from the start of the drain it stays NOT_SERVING.
async fn serve_by_role(
    mut role: watch::Receiver<Role>,
    health: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let now = role.borrow_and_update().clone();
        let leading = matches!(now, Role::Alone | Role::Leader);
        metrics::gauge!(telemetry::LEADING).set(if leading { 1.0 } else { 0.0 });
        if ready.load(Ordering::SeqCst) {
            tracing::info!(role = role_name(&now), "role");
            report_health(&health, leading).await;
        }
        tokio::select! {
            _ = &mut stop => return,
            changed = role.changed() => if changed.is_err() { return stop.await },
        }
    }
}

/// Runs a background task that must live as long as the service: if it
/// ends (or panics) before the stop signal, that is logged, counted, and
/// raises the fatal signal, so the process stops and its supervisor
/// restarts it; never a silent stop. Returns the supervisor's own task.
fn supervise(
    task: &'static str,
    work: impl Future<Output = ()> + Send + 'static,
    stopping: watch::Receiver<bool>,
    fatal: Fatal,
) -> tokio::task::JoinHandle<()> {
    let handle = tokio::spawn(work);
    tokio::spawn(async move {
        let result = handle.await;
        if *stopping.borrow() {
            return;
        }
        let how = match &result {
            Ok(()) => "ended",
            Err(e) if e.is_panic() => "panicked",
            Err(_) => "was cancelled",
        };
        metrics::counter!(telemetry::TASK_FAILURES, "task" => task).increment(1);
        tracing::error!(task, how, "background task stopped unexpectedly");
        fatal.raise("a background task stopped unexpectedly");
    })
}

/// Applies what the engine has due (expiries, wrap-up ends, relaxation
/// steps, wait limits) when it is due, even when no request comes: it
/// sleeps until the engine's next due time, woken early when a call makes
/// something due sooner, and at least every [`HOUSEKEEPING_EVERY`]. Also
/// runs the exporter's upkeep.
async fn housekeeping(
    routing: Routing,
    prometheus: PrometheusHandle,
    stop: impl Future<Output = ()>,
) {
    let mut due = routing.next_due();
    let mut last_upkeep = tokio::time::Instant::now();
    tokio::pin!(stop);
    loop {
        let wait = match *due.borrow_and_update() {
            Some(at) => (at - routing.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(HOUSEKEEPING_EVERY),
            None => HOUSEKEEPING_EVERY,
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
            // Something is due sooner than we slept for: look again.
            Ok(()) = due.changed() => continue,
        }
        if routing.tick().await.is_err() {
            if routing.engine().fatal().is_raised() {
                // The engine is halted and the fatal signal raised: wait
                // for the stop rather than be reported as a second failure.
                return stop.await;
            }
            // A standby's tick is refused (the log brings its time): look
            // again later, not at once for a due time that stays past.
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => continue,
            }
        }
        if last_upkeep.elapsed() >= UPKEEP_EVERY {
            prometheus.run_upkeep();
            last_upkeep = tokio::time::Instant::now();
        }
    }
}

/// Refreshes the engine's gauges and renders the Prometheus text: gauges
/// are read at scrape time, so they are never stale. The views apply what
/// is due first, through the service's one door, so what that decides is
/// streamed at once. A standby's gauges are its replica's, which its
/// replication sets (`replication`): the serving engine is empty there.
async fn scrape(routing: &Routing, prometheus: &PrometheusHandle) -> String {
    // A halted engine has no state worth showing; the process metrics and
    // counters still are. Time passing is a command like any other.
    let mut queues = None;
    if routing.engine().leading().is_ok() {
        let _ = routing.apply(Tick).await;
        if let Ok(gauges) = routing.view(EngineGauges::read) {
            queues = Some(gauges.publish());
        }
    }
    telemetry::render(prometheus, queues.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_or_panics_before_shutdown_stops_the_service() {
        for work in [
            Box::pin(async {}) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
            Box::pin(async { panic!("housekeeping bug") }),
        ] {
            let fatal = Fatal::new();
            let (_stop_tx, stop_rx) = watch::channel(false);
            supervise("test", work, stop_rx, fatal.clone());
            let reason = tokio::time::timeout(Duration::from_secs(10), fatal.raised())
                .await
                .expect("the fatal signal was never raised");
            assert_eq!(reason, "a background task stopped unexpectedly");
        }
    }

    #[tokio::test]
    async fn a_task_that_ends_after_shutdown_is_no_fault() {
        let fatal = Fatal::new();
        let (stop_tx, stop_rx) = watch::channel(false);
        stop_tx.send(true).unwrap();
        supervise("test", async {}, stop_rx, fatal.clone())
            .await
            .unwrap();
        assert!(!fatal.is_raised());
    }
}
