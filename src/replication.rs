//! Leader and hot standbys on a replicated log (`--journal nats://...`).
//! Every process starts as a standby: it rebuilds the engine from the log
//! (the newest snapshot that loads, then the records after it) and keeps it
//! current by applying each record as the leader appends it, answering no
//! call. Standbys take the snapshots, from their own copy, so the leader
//! never waits for one. When the leader's lease is free it takes it, applies
//! the rest of the log, puts its engine in service and opens a new term
//! with a logged restart (the first append of a term fences the old leader
//! out: its own appends now fail the expected-last-sequence check). It
//! leads until an append or a lease renewal fails, then steps down: what it
//! applied since the last record it logged is thrown away and the engine
//! is rebuilt from the log.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::engine::{Command, Engine, EngineConfig, Limits};
use crate::grpc::Routing;
use crate::journal::{Every, JournalError, Lease, Nats, Replay, Tail};
use crate::policy::Policy;
use crate::shared::Role;

/// How long a standby waits before trying again after NATS failed it.
const RETRY: Duration = Duration::from_secs(1);
/// How long catching up with the log may take before the lease is given
/// back.
const CATCH_UP: Duration = Duration::from_secs(30);

/// What a process brings to a replicated log.
pub struct Seed {
    /// The policy a new log starts from.
    pub policy: Arc<Policy>,
    /// The engine's settings (the id prefix is the log's).
    pub config: EngineConfig,
    /// The limits this process runs under (logged when they differ).
    pub limits: Limits,
    /// The roster a new log starts with, as commands.
    pub roster: Vec<Command>,
    /// The address standbys name as the leader's while this process leads.
    pub me: String,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// When a standby takes a snapshot.
    pub every: Every,
}

/// Runs this process's part in the cluster until `stop` resolves.
pub async fn run(
    routing: Routing,
    nats: Nats,
    seed: Seed,
    stop: impl Future<Output = ()>,
) -> Result<(), JournalError> {
    crate::telemetry::register_snapshots();
    tokio::pin!(stop);
    loop {
        let standby = async {
            let (replay, applied, tail) = rebuild(&nats, &seed).await?;
            follow(&routing, &nats, &seed, replay, applied, tail).await
        };
        let lease = tokio::select! {
            _ = &mut stop => return Ok(()),
            led = standby => led,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e @ (JournalError::OtherRouting { .. } | JournalError::NoStart { .. })) => {
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(error = %e, "replication: the log cannot be followed; trying again");
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let why = tokio::select! {
            _ = &mut stop => {
                nats.resign(lease).await;
                return Ok(());
            }
            why = lead(&routing, &nats, &seed, lease) => why,
        };
        tracing::warn!(reason = %why, "replication: this process steps down and rebuilds from the log");
        step_down(&routing, &seed, None)?;
        nats.resign(lease).await;
    }
}

/// Reads the whole log into a new engine (none while the log is empty),
/// returning the last record applied and the tail after it.
async fn rebuild(nats: &Nats, seed: &Seed) -> Result<(Replay, u64, Tail), JournalError> {
    let snapshot = nats.load_snapshot().await?;
    for (seq, why) in &snapshot.refused {
        tracing::warn!(
            snapshot = seq,
            why = why.as_str(),
            "replication: a snapshot cannot be loaded; an older one and the log since are used"
        );
    }
    let base = snapshot.loaded.as_ref().map_or(0, |(seq, _)| *seq);
    let (first, last) = nats.span().await?;
    if first > base + 1 {
        let why = snapshot
            .refused
            .iter()
            .map(|(seq, why)| format!("snapshot {seq}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(JournalError::NoSnapshot {
            file: "the NATS stream".into(),
            first,
            why: if why.is_empty() {
                "none kept".into()
            } else {
                why
            },
        });
    }
    let mut tail = nats.tail(base).await?;
    let mut replay = Replay::new(snapshot.loaded.map(|(_, e)| e), seed.config.clone());
    let mut applied = base;
    while applied < last {
        applied = catch_up(&mut tail, &mut replay, applied).await?;
    }
    tracing::info!(
        snapshot = base,
        records = applied - base,
        "replication: standby rebuilt from the log"
    );
    Ok((replay, applied, tail))
}

/// Applies a record known to be in the log: one that does not come within
/// [`CATCH_UP`] means the subscription is broken.
async fn catch_up(tail: &mut Tail, replay: &mut Replay, applied: u64) -> Result<u64, JournalError> {
    tokio::time::timeout(CATCH_UP, apply_next(tail, replay, applied))
        .await
        .map_err(|_| JournalError::Nats("the log stopped delivering records".into()))?
}

/// Saves a snapshot of the standby's engine after record `applied`.
async fn snapshot(nats: &Nats, replay: &mut Replay, applied: u64) {
    let Some(engine) = replay.engine() else {
        return;
    };
    let started = Instant::now();
    // Encoded inline: a standby answers nothing, so nothing waits for it.
    let saved = match engine.encode_state() {
        Ok(state) => nats
            .save_snapshot(applied, &state)
            .await
            .map(|fallback| (state.len(), fallback)),
        Err(e) => Err(JournalError::Encode(e.to_string())),
    };
    match saved {
        Ok((bytes, fallback)) => {
            let took = started.elapsed();
            crate::telemetry::record_snapshot(took, bytes);
            tracing::info!(
                seq = applied,
                bytes,
                took_ms = took.as_millis() as u64,
                purged_before = fallback.map(|f| f + 1),
                "replication: snapshot saved"
            );
        }
        Err(e) => {
            crate::telemetry::record_snapshot_failure();
            tracing::error!(
                error = %e,
                "replication: a snapshot cannot be saved; the stream is kept whole until one is"
            );
        }
    }
}

/// Applies the tail's next record, which must follow `applied`, waiting
/// for it as long as it takes.
async fn apply_next(
    tail: &mut Tail,
    replay: &mut Replay,
    applied: u64,
) -> Result<u64, JournalError> {
    let record = tail.next().await;
    let (seq, at, command) =
        record.ok_or_else(|| JournalError::Nats("the log's subscription ended".into()))??;
    if seq != applied + 1 {
        return Err(JournalError::Corrupt {
            file: "the NATS stream".into(),
            seq: applied + 1,
            why: format!("record {seq} came where {} was due", applied + 1),
        });
    }
    replay
        .apply(at, command)
        .map_err(|_| JournalError::NoStart {
            file: "the NATS stream".into(),
        })?;
    Ok(seq)
}

/// Follows the log as a standby until the lease is free, then takes it,
/// catches up and puts the engine in service.
async fn follow(
    routing: &Routing,
    nats: &Nats,
    seed: &Seed,
    mut replay: Replay,
    mut applied: u64,
    mut tail: Tail,
) -> Result<Lease, JournalError> {
    let mut poll = tokio::time::interval(seed.ttl / 4);
    let (mut since, mut last_snapshot) = (0u64, Instant::now());
    let lease = loop {
        tokio::select! {
            next = apply_next(&mut tail, &mut replay, applied) => {
                applied = next?;
                since += 1;
                if since >= seed.every.commands || last_snapshot.elapsed() >= seed.every.interval {
                    snapshot(nats, &mut replay, applied).await;
                    (since, last_snapshot) = (0, Instant::now());
                }
            }
            _ = poll.tick() => match nats.try_lead(&seed.me).await? {
                Some(lease) => break lease,
                None => {
                    let leader = nats.leader().await;
                    let mut engine = held(routing)?;
                    routing.engine().set_role(&mut engine, Role::Standby { leader });
                }
            },
        }
    };
    // Everything appended before the lease was taken is applied before
    // anything is answered.
    let caught_up = async {
        let last = nats.last_seq().await?;
        while applied < last {
            applied = catch_up(&mut tail, &mut replay, applied).await?;
        }
        Ok::<_, JournalError>(())
    };
    if let Err(e) = caught_up.await {
        nats.resign(lease).await;
        return Err(e);
    }
    drop(tail);
    let fresh = applied == 0;
    let engine = match replay.finish() {
        Some(engine) => engine,
        None => Engine::new(Arc::clone(&seed.policy), seed.config.clone()),
    };
    {
        let mut held = held(routing)?;
        *held = engine;
        routing.journal().lead(applied);
        routing.engine().set_role(&mut held, Role::Leader);
    }
    tracing::info!(after = applied, "replication: this process leads");
    let opened = if fresh {
        start_log(routing, seed).await
    } else {
        open_term(routing, seed).await
    };
    if let Err(e) = opened {
        tracing::warn!(error = %e, "replication: the new term could not be opened");
        step_down(routing, seed, None)?;
        nats.resign(lease).await;
        return Err(JournalError::Nats(e.message().to_owned()));
    }
    Ok(lease)
}

/// Writes a new log's first records: the policy the engine was built on,
/// the limits, the roster.
async fn start_log(routing: &Routing, seed: &Seed) -> Result<(), tonic::Status> {
    routing
        .log_unapplied(Command::ReplacePolicy(crate::engine::ReplacePolicy(
            Arc::clone(&seed.policy),
        )))
        .await?;
    routing
        .apply(Command::Configure(crate::engine::Configure(seed.limits)))
        .await?;
    for command in &seed.roster {
        if let Err(e) = routing.apply(command.clone()).await {
            // A refused agent is the roster's problem, not the log's.
            if e.code() == tonic::Code::Unavailable {
                return Err(e);
            }
            tracing::warn!(error = %e.message(), "replication: a roster entry was refused");
        }
    }
    Ok(())
}

/// A new term on a log with records: a logged restart (connections to the
/// old leader are gone), and the limits if this process runs under others.
async fn open_term(routing: &Routing, seed: &Seed) -> Result<(), tonic::Status> {
    routing.apply(Command::Restarted).await?;
    let limits = routing.view(Engine::limits)?;
    if limits != seed.limits {
        routing
            .apply(Command::Configure(crate::engine::Configure(seed.limits)))
            .await?;
    }
    Ok(())
}

/// Leads until the term ends (an append failed) or the lease cannot be
/// renewed; returns why it stopped.
async fn lead(routing: &Routing, nats: &Nats, seed: &Seed, mut lease: Lease) -> String {
    let mut renew = tokio::time::interval(seed.ttl / 3);
    renew.tick().await;
    let ended = routing.journal().term_ended();
    tokio::pin!(ended);
    loop {
        tokio::select! {
            why = &mut ended => return why,
            _ = renew.tick() => match nats.renew(&seed.me, lease).await {
                Ok(renewed) => lease = renewed,
                Err(e) => return format!("the lease could not be renewed: {e}"),
            },
        }
    }
}

/// Stops answering and ends the term: the engine, which may hold commands
/// the log does not, is put aside for one built on the policy alone until
/// the log is read again.
fn step_down(routing: &Routing, seed: &Seed, leader: Option<String>) -> Result<(), JournalError> {
    let mut held = held(routing)?;
    routing
        .engine()
        .set_role(&mut held, Role::Standby { leader });
    routing.journal().end_term("this process stepped down");
    *held = Engine::new(Arc::clone(&seed.policy), seed.config.clone());
    Ok(())
}

/// The engine under its lock; a halted engine ends replication (the
/// service is already stopping).
fn held(routing: &Routing) -> Result<std::sync::MutexGuard<'_, Engine>, JournalError> {
    routing
        .engine()
        .lock()
        .map_err(|e| JournalError::Setup(e.to_string()))
}
