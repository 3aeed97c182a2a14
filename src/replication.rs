//! Leader and hot standbys on a replicated log (`--journal nats://...`).
//! Every process starts as a standby: it rebuilds the engine from the log
//! (the newest snapshot that loads, then the records after it) and keeps it
//! current by applying each record as the leader appends it, answering no
//! call (the events of the last records are kept, so a watcher resumes
//! across a failover). Standbys take the snapshots, from their own copy,
//! so the leader never waits for one; a leader no standby snapshots for
//! takes them itself, on a thread of its own, from a copy rebuilt for each.
//! When the leader's lease is free a standby takes it, applies the rest of
//! the log, and opens its term: its engine goes in service and the term's
//! first records (a logged restart; on a new log, the policy, limits and
//! roster) are appended under the engine's lock before any call is let
//! in. The first append fences the old leader out:
//! its own appends no longer fit the stream. The leader renews the lease
//! and stops answering the moment its last renewal is older than the lease
//! (a leader frozen and resumed answers nothing, reads included); when an
//! append or a renewal fails it steps down: what it applied since its last
//! logged record is thrown away and the engine rebuilt from the log.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::engine::{Command, Configure, Engine, EngineConfig, Limits, ReplacePolicy};
use crate::grpc::{Routing, event_ring::Replayed, events::Published};
use crate::journal::{Every, JournalError, Lease, Nats, Replay, Tail, Unreplayable};
use crate::policy::Policy;
use crate::reload::LogPolicy;
use crate::shared::Role;
use crate::telemetry::EngineGauges;

/// How long a standby waits before trying again after NATS failed it.
const RETRY: Duration = Duration::from_secs(1);
/// How long a process that stepped down looks for the new leader's name
/// before it goes on rebuilding without it.
const LEADER_LOOKUP: Duration = Duration::from_secs(1);
/// How long catching up with the log may take before the lease is given
/// back.
const CATCH_UP: Duration = Duration::from_secs(30);

/// What a process brings to a replicated log.
pub struct Seed {
    /// The policy a new log starts from.
    pub policy: Arc<Policy>,
    /// The engine's settings (the id key is the log's).
    pub config: EngineConfig,
    /// The limits this process runs under (logged when they differ).
    pub limits: Limits,
    /// The roster a new log starts with, as commands.
    pub roster: Vec<Command>,
    /// The address standbys name as the leader's while this process leads.
    pub me: String,
    /// How long the lease lasts unless renewed.
    pub ttl: Duration,
    /// When a standby takes a snapshot (and how often the leader looks
    /// for one).
    pub every: Every,
}

impl Seed {
    /// Until when a lease renewed (or taken) at `at` is surely still this
    /// process's: its TTL counts from when NATS stored it, which is later,
    /// less a tenth for clocks that run at different rates.
    fn deadline(&self, at: Instant) -> Instant {
        at + self.ttl - self.ttl / 10
    }
}

/// Runs this process's part in the cluster until `stop` resolves.
/// `log_policy` is told the log's policy as this process reads and follows
/// the log (so its policy file is not taken for news to a log that another
/// leader changed since).
pub async fn run(
    routing: Routing,
    nats: Nats,
    seed: Seed,
    log_policy: watch::Sender<LogPolicy>,
    stop: impl Future<Output = ()>,
) -> Result<(), JournalError> {
    crate::telemetry::register_snapshots();
    tokio::pin!(stop);
    loop {
        let standby = async {
            let (replay, applied, tail) = rebuild(&routing, &nats, &seed).await?;
            follow(&routing, &nats, &seed, &log_policy, replay, applied, tail).await
        };
        let lease = tokio::select! {
            _ = &mut stop => return Ok(()),
            led = standby => led,
        };
        let mut lease = match lease {
            Ok(lease) => lease,
            Err(
                e @ (JournalError::OtherRouting { .. }
                | JournalError::NoStart { .. }
                | JournalError::Diverged { .. }),
            ) => {
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
            why = lead(&routing, &nats, &seed, &mut lease) => why,
        };
        tracing::warn!(reason = %why, "replication: this process steps down and rebuilds from the log");
        step_down(&routing, &seed)?;
        nats.resign(lease).await;
        name_leader(&routing, &nats, &seed).await?;
    }
}

/// Names the process now leading, if the lease says and within
/// [`LEADER_LOOKUP`], to the clients and watchers this one sends away: its
/// own looks at the lease start only once it has read the log again.
async fn name_leader(routing: &Routing, nats: &Nats, seed: &Seed) -> Result<(), JournalError> {
    let Ok(Some(leader)) = tokio::time::timeout(LEADER_LOOKUP, nats.leader()).await else {
        return Ok(());
    };
    if leader != seed.me {
        let mut engine = held(routing)?;
        let role = Role::Standby {
            leader: Some(leader),
        };
        routing.engine().set_role(&mut engine, role);
    }
    Ok(())
}

/// Reads the whole log into a new engine (none while the log is empty),
/// returning the last record applied and the tail after it. The events of
/// the last records are kept for watchers that resume once this process
/// leads.
async fn rebuild(
    routing: &Routing,
    nats: &Nats,
    seed: &Seed,
) -> Result<(Replay, u64, Tail), JournalError> {
    let (replay, base, applied, tail, told) =
        read_log(nats, &seed.config, routing.event_retention()).await?;
    tracing::info!(
        snapshot = base,
        records = applied - base,
        "replication: standby rebuilt from the log"
    );
    routing.restore_events(told);
    Ok((replay, applied, tail))
}

/// Reads the whole log into a new engine: the newest snapshot that loads,
/// then the records after it up to the stream's last, telling the events
/// of the last `retention` records only (none with 0) and keeping at most
/// `retention` of them: a record that told nothing (a refusal) still counts
/// among those records, so a rebuilt standby may keep fewer events than
/// one that followed the log. Returns the engine, the snapshot's record
/// and the last applied, the tail after it, and the events kept.
async fn read_log(
    nats: &Nats,
    config: &EngineConfig,
    retention: usize,
) -> Result<(Replay, u64, u64, Tail, Replayed), JournalError> {
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
    let mut replay = Replay::new(snapshot.loaded.map(|(_, e)| e), config.clone());
    // Only the last records' events can be kept, as in a local restart.
    let mut told = Replayed::reading(base, last, retention);
    let mut applied = base;
    while applied < last {
        let published;
        let tell = told.tells(applied + 1);
        (applied, published) = catch_up(&mut tail, &mut replay, applied, tell).await?;
        told.keep(applied, published);
    }
    Ok((replay, base, applied, tail, told))
}

/// Tells `log_policy` the policy of the log as replayed so far, if it
/// changed (a new log's is the one this process brings), counting its
/// changes since the first.
fn tell_policy(log_policy: &watch::Sender<LogPolicy>, replay: &Replay, seed: &Seed) {
    let text = replay.policy_text().unwrap_or(&seed.policy.text);
    log_policy.send_if_modified(|told| match told {
        Some((_, t)) if Arc::ptr_eq(t, text) => false,
        Some((changes, t)) => {
            if **t != **text {
                *changes += 1;
            }
            *t = Arc::clone(text);
            true
        }
        None => {
            *told = Some((0, Arc::clone(text)));
            true
        }
    });
}

/// Applies a record known to be in the log: one that does not come within
/// [`CATCH_UP`] means the subscription is broken.
async fn catch_up(
    tail: &mut Tail,
    replay: &mut Replay,
    applied: u64,
    tell: bool,
) -> Result<(u64, Option<Published>), JournalError> {
    tokio::time::timeout(CATCH_UP, apply_next(tail, replay, applied, tell))
        .await
        .map_err(|_| JournalError::Nats("the log stopped delivering records".into()))?
}

/// Encodes the standby's engine after record `applied` and saves it on a
/// task of its own, so the standby keeps applying records and watching the
/// lease while it uploads. None if there is no engine yet.
fn snapshot(nats: &Nats, replay: &mut Replay, applied: u64) -> Option<tokio::task::JoinHandle<()>> {
    let engine = replay.engine()?;
    let started = Instant::now();
    let state = match engine.encode_state() {
        Ok(state) => state,
        Err(e) => {
            crate::telemetry::record_snapshot_failure();
            tracing::error!(error = %e, "replication: a snapshot cannot be encoded");
            return None;
        }
    };
    let nats = nats.clone();
    Some(tokio::spawn(async move {
        match nats.save_snapshot(applied, &state).await {
            Ok(purged) => {
                let took = started.elapsed();
                crate::telemetry::record_snapshot(took, state.len());
                tracing::info!(
                    seq = applied,
                    bytes = state.len(),
                    took_ms = took.as_millis() as u64,
                    stream_starts_at = purged,
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
    }))
}

/// Applies the tail's next record, which must follow `applied`, waiting
/// for it as long as it takes; returns its sequence and, with `tell`, the
/// events it tells.
async fn apply_next(
    tail: &mut Tail,
    replay: &mut Replay,
    applied: u64,
    tell: bool,
) -> Result<(u64, Option<Published>), JournalError> {
    let record = tail.next().await;
    let (seq, entry) =
        record.ok_or_else(|| JournalError::Nats("the log's subscription ended".into()))??;
    if seq != applied + 1 {
        return Err(JournalError::Corrupt {
            file: "the NATS stream".into(),
            seq: applied + 1,
            why: format!("record {seq} came where {} was due", applied + 1),
        });
    }
    let unreplayable = |e: Unreplayable| e.in_log("the NATS stream");
    if !tell {
        replay.apply(seq, entry).map_err(unreplayable)?;
        return Ok((seq, None));
    }
    let told = replay
        .apply_with(seq, entry, |engine, at, command| {
            let (told, refused) = Published::replayed(engine, seq, at, command);
            (told, refused.is_err())
        })
        .map_err(unreplayable)?;
    Ok((seq, told.flatten()))
}

/// Follows the log as a standby until the lease is free, then takes it,
/// catches up and opens this process's term.
async fn follow(
    routing: &Routing,
    nats: &Nats,
    seed: &Seed,
    log_policy: &watch::Sender<LogPolicy>,
    mut replay: Replay,
    mut applied: u64,
    mut tail: Tail,
) -> Result<Lease, JournalError> {
    tell_policy(log_policy, &replay, seed);
    let mut poll = tokio::time::interval(seed.ttl / 4);
    let (mut since, mut last_snapshot) = (0u64, Instant::now());
    let mut saving: Option<tokio::task::JoinHandle<()>> = None;
    let (mut lease, mut taken) = loop {
        tokio::select! {
            next = apply_next(&mut tail, &mut replay, applied, true) => {
                let told;
                (applied, told) = next?;
                routing.keep_events(applied, told.as_ref());
                tell_policy(log_policy, &replay, seed);
                since += 1;
                let due = since >= seed.every.commands
                    || last_snapshot.elapsed() >= seed.every.interval;
                // One snapshot at a time; a due one waits for the next record.
                if due && saving.as_ref().is_none_or(|s| s.is_finished()) {
                    saving = snapshot(nats, &mut replay, applied);
                    (since, last_snapshot) = (0, Instant::now());
                }
            }
            _ = poll.tick() => {
                let asked = Instant::now();
                match nats.try_lead(&seed.me).await? {
                    Some(lease) => break (lease, asked),
                    None => {
                        // The lease may still name this process, just
                        // deposed (its renewal failed; it lapses within the
                        // TTL): then no leader is known yet, and clients are
                        // not sent back here.
                        let leader = nats.leader().await.filter(|l| *l != seed.me);
                        let mut engine = held(routing)?;
                        routing.engine().set_role(&mut engine, Role::Standby { leader });
                        drop(engine);
                        // A standby's metrics are its replica's (the
                        // serving engine is empty): a dashboard taking
                        // the max over instances sees the leader's state.
                        if let Some(replica) = replay.engine() {
                            EngineGauges::read(replica).publish();
                        }
                    }
                }
            }
        }
    };
    // Everything appended before the lease was taken is applied before
    // anything is answered; the lease is renewed meanwhile.
    let mut renew = tokio::time::interval(seed.ttl / 3);
    renew.tick().await;
    let caught_up = async {
        let last = nats.last_seq().await?;
        while applied < last {
            tokio::select! {
                next = catch_up(&mut tail, &mut replay, applied, true) => {
                    let told;
                    (applied, told) = next?;
                    routing.keep_events(applied, told.as_ref());
                }
                _ = renew.tick() => {
                    taken = Instant::now();
                    lease = nats.renew(&seed.me, lease).await?;
                }
            }
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
    // The term's first records: on a new log, the policy the engine is
    // built on (logged, not applied), the limits and the roster; otherwise
    // a restart (the old leader's connections are gone) and the limits if
    // this process runs under others.
    let opening = if fresh {
        let mut opening = vec![
            Command::ReplacePolicy(ReplacePolicy(Arc::clone(&seed.policy))),
            Command::Configure(Configure(seed.limits)),
        ];
        opening.extend(seed.roster.iter().cloned());
        opening
    } else {
        let mut opening = vec![crate::journal::restarted()];
        if engine.limits() != seed.limits {
            opening.push(Command::Configure(Configure(seed.limits)));
        }
        opening
    };
    if let Err(e) = routing.open_term(engine, applied, opening, !fresh).await {
        tracing::warn!(error = %e, "replication: the new term could not be opened");
        step_down(routing, seed)?;
        nats.resign(lease).await;
        return Err(e);
    }
    let mut engine = held(routing)?;
    routing.engine().set_deadline(Some(seed.deadline(taken)));
    routing.engine().set_role(&mut engine, Role::Leader);
    drop(engine);
    tracing::info!(after = applied, "replication: this process leads");
    Ok(lease)
}

/// Leads until the term ends (an append failed) or the lease cannot be
/// renewed; returns why it stopped. `lease` is kept current, so it can be
/// given back. Meanwhile it takes the snapshots no standby takes.
async fn lead(routing: &Routing, nats: &Nats, seed: &Seed, lease: &mut Lease) -> String {
    let mut renew = tokio::time::interval(seed.ttl / 3);
    renew.tick().await;
    // The snapshots no standby takes, looked for every interval; each look
    // on a thread of its own, off the serving runtime.
    let mut look = tokio::time::interval(seed.every.interval);
    let mut looking: Option<std::thread::JoinHandle<Looks>> = None;
    let mut looks = Looks::default();
    let ended = routing.journal().term_ended();
    tokio::pin!(ended);
    let why = loop {
        tokio::select! {
            why = &mut ended => break why,
            _ = renew.tick() => {
                let asked = Instant::now();
                match nats.renew(&seed.me, *lease).await {
                    Ok(renewed) => {
                        *lease = renewed;
                        routing.engine().set_deadline(Some(seed.deadline(asked)));
                    }
                    Err(e) => break format!("the lease could not be renewed: {e}"),
                }
            }
            _ = look.tick() => {
                if let Some(done) = looking.take_if(|l| l.is_finished()) {
                    looks = done.join().unwrap_or(looks);
                }
                if looking.is_none() {
                    looking = look_for_snapshot(nats.clone(), seed.config.clone(), seed.every, looks);
                }
            }
        }
    };
    // A look under way finishes by itself: a snapshot saved after the term
    // is as good as one saved in it (each save keeps the newest two that
    // load, and purges only up to one of them).
    why
}

/// What the leader saw at its last two looks at the newest snapshot (none
/// before it looked; an inner none: there was no snapshot).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Looks {
    last: Option<Option<u64>>,
    before: Option<Option<u64>>,
}

impl Looks {
    /// Whether the leader takes a snapshot, finding `newest` with `behind`
    /// records after it: standbys take one at least every interval (or
    /// `every.commands` records) while records arrive, so none since the
    /// last two looks means there is none; none since the last look with
    /// twice the count behind means none keeps up.
    fn due(self, newest: Option<u64>, behind: u64, every: Every) -> bool {
        let since_last = self.last == Some(newest);
        let since_before = since_last && self.before == Some(newest);
        behind > 0 && (since_before || (since_last && behind >= every.commands.saturating_mul(2)))
    }

    /// The looks after one that found `newest`.
    fn then(self, newest: Option<u64>) -> Looks {
        Looks {
            last: Some(newest),
            before: self.last,
        }
    }
}

/// Starts one look on a thread of its own (so neither the replay nor the
/// state's encoding and decoding ever holds a serving thread); none if the
/// thread cannot be started (the next look tries again).
fn look_for_snapshot(
    nats: Nats,
    config: EngineConfig,
    every: Every,
    looks: Looks,
) -> Option<std::thread::JoinHandle<Looks>> {
    let spawned = std::thread::Builder::new()
        .name("leader-snapshot".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(snapshot_unless_taken(nats, config, every, looks)),
                Err(e) => {
                    tracing::warn!(error = %e, "replication: the leader's snapshot look cannot run");
                    looks
                }
            }
        });
    spawned
        .inspect_err(
            |e| tracing::warn!(error = %e, "replication: the leader's snapshot look cannot start"),
        )
        .ok()
}

/// The leader's snapshot when no standby takes them (a deployment without
/// one), so the stream is still purged and a restart stays short: taken
/// when [`Looks::due`], from an engine rebuilt for it alone (the newest
/// snapshot and the stream after it) and dropped once encoded. Returns the
/// looks after this one.
async fn snapshot_unless_taken(
    nats: Nats,
    config: EngineConfig,
    every: Every,
    looks: Looks,
) -> Looks {
    let taken = async {
        let newest = nats.newest_snapshot().await?;
        let behind = nats.last_seq().await?.saturating_sub(newest.unwrap_or(0));
        if !looks.due(newest, behind, every) {
            return Ok(newest);
        }
        tracing::info!(
            after = newest,
            records = behind,
            "replication: no standby took a snapshot; the leader takes one"
        );
        let (mut replay, _, applied, _, _) = read_log(&nats, &config, 0).await?;
        let saving = snapshot(&nats, &mut replay, applied);
        drop(replay);
        if let Some(saving) = saving
            && let Err(e) = saving.await
        {
            tracing::error!(error = %e, "replication: the leader's snapshot save failed");
        }
        nats.newest_snapshot().await
    };
    match taken.await {
        Ok(newest) => looks.then(newest),
        Err(e) => {
            tracing::warn!(error = %e, "replication: the leader's look for a snapshot failed");
            looks
        }
    }
}

/// Stops answering and ends the term: the engine, which may hold commands
/// the log does not, is put aside for one built on the policy alone until
/// the log is read again.
fn step_down(routing: &Routing, seed: &Seed) -> Result<(), JournalError> {
    let mut held = held(routing)?;
    routing
        .engine()
        .set_role(&mut held, Role::Standby { leader: None });
    routing.engine().set_deadline(None);
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

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Every = Every {
        commands: 100,
        interval: Duration::from_secs(60),
    };

    #[test]
    fn the_leader_snapshots_only_when_no_standby_does() {
        let first = Looks::default();
        // The first look only notes what it finds.
        assert!(!first.due(None, 10, EVERY));
        assert!(!first.due(Some(5), 10_000, EVERY));
        let once = first.then(None);
        // Nothing new for one interval: not yet, unless far behind.
        assert!(!once.due(None, 150, EVERY));
        assert!(once.due(None, 200, EVERY));
        // Nothing new for two intervals, with records: due.
        let twice = once.then(None);
        assert!(twice.due(None, 1, EVERY));
        // ... but not without records after the newest.
        assert!(!twice.due(None, 0, EVERY));
        // A standby's snapshot since the last look: never due, however
        // far behind.
        assert!(!twice.due(Some(7), 10_000, EVERY));
        let standby = twice.then(Some(7));
        assert!(!standby.due(Some(7), 150, EVERY));
        assert!(standby.due(Some(7), 200, EVERY));
        assert!(standby.then(Some(7)).due(Some(7), 1, EVERY));
        assert!(!standby.then(Some(7)).due(Some(9), 1, EVERY));
    }
}
