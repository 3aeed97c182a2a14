//! Restart time: a journal holding a snapshot of 100,000 agents and
//! 100,000 (the most at the default `--snapshot-every`) or 1,000,000
//! commands after it, opened, checked and replayed as a start
//! does (`server::build_engine`), beside a baseline from the same run: the
//! same snapshot decoded and the same commands applied from memory (the
//! engine's share of the restart). Also the snapshot itself at 100,000
//! agents and after the traffic: its size, and how long encoding it takes
//! (on the snapshot thread, off the serving path).
//! Run with `cargo bench --bench restart`; figures go in BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use careroute::{
    config::{Config, JournalSync},
    engine::{
        AgentSpec, Command, Complete, Configure, Confirm, Engine, EngineConfig, Outcome, Route,
        SetAgentState, UpsertAgent,
    },
    journal::{Entry, Every, Journal, Log, Snapshots, Store},
    model::{AgentState, Channel, Contact, Identity, Time},
    policy::Policy,
    server::build_engine,
};
use chrono::{Duration, TimeZone, Utc};

/// The service's allocator (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AGENTS: usize = 100_000;

fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

fn spec(i: usize) -> AgentSpec {
    AgentSpec {
        id: format!("agent-{i}"),
        team: format!("Team {}", i % 50),
        transfer_address: format!("sip:{}@pbx.careroute.example", 10_000 + i),
        skills: vec![
            ("billing".into(), 3),
            ("scheduling".into(), 2),
            ("patient_access".into(), 2),
        ],
        languages: vec!["en".into()],
        channels: vec![(Channel::Voice, 1), (Channel::Chat, 3)],
    }
}

/// The commands after the snapshot: contacts routed to an agent,
/// confirmed and completed, 10 ms apart.
fn traffic(
    e: &mut Engine,
    start: Time,
    n: usize,
    mut log: impl FnMut(Time, Command),
) -> Vec<(Time, Command)> {
    let mut kept = Vec::with_capacity(n);
    let mut i = 0usize;
    while kept.len() < n {
        let at = start + Duration::milliseconds(i as i64 * 10);
        let mut contact = Contact::new(format!("contact-{i:09}"), "billing");
        contact.identity = Identity::Verified;
        contact.request_id = Some(format!("req-{i:09}"));
        let routed = e.apply(Route(&contact), at).unwrap();
        let mut commands: Vec<Command> = vec![Route(&contact).into()];
        if let Outcome::Agent(a) = routed.outcome {
            let done = Complete {
                agent_id: a.agent_id.to_string(),
                contact_id: contact.contact_id.clone(),
            };
            e.apply(Confirm(a.reservation), at).unwrap();
            e.apply(done.clone(), at).unwrap();
            commands.push(Confirm(a.reservation).into());
            commands.push(done.into());
        }
        for c in commands {
            log(at, c.clone());
            kept.push((at, c));
        }
        i += 1;
    }
    e.take_events();
    kept
}

/// Waits until no writer holds the journal (the writer thread of the run
/// before ends once its queue is dropped).
fn wait_unlocked(dir: &std::path::Path) {
    let lock = std::fs::File::create(dir.join("LOCK")).unwrap();
    while lock.try_lock().is_err() {
        std::thread::sleep(StdDuration::from_millis(10));
    }
    lock.unlock().unwrap();
}

fn secs(d: StdDuration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn measure(tail: usize) {
    let dir = std::env::temp_dir().join(format!(
        "careroute-restart-bench-{}-{tail}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let t = open();
    let policy = Arc::new(Policy::embedded().unwrap());
    let config = EngineConfig {
        id_key: careroute::engine::IdKey([42; 16]),
        ..EngineConfig::default()
    };
    let mut e = Engine::new(Arc::clone(&policy), config.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The journal, written as a running service writes it: the roster,
    // snapshotted by the shadow once it has applied all of it.
    let (mut store, _) = Store::open(&dir, JournalSync::Write).unwrap();
    store
        .set_id_key(&careroute::engine::IdKey([42; 16]))
        .unwrap();
    let shadow = Snapshots::start(
        store.take_snapshots().unwrap(),
        store.file().to_owned(),
        0,
        config,
        Every {
            commands: 2 + 2 * AGENTS as u64,
            interval: StdDuration::from_secs(3600),
        },
    )
    .unwrap();
    let journal = Journal::<()>::start(
        Some(Log::Local(Box::new(store))),
        0,
        Some(shadow),
        |_, _| {},
        |e| panic!("{e}"),
    );
    let log = |journal: &Journal<()>, at: Time, c: Command| {
        journal.append(true, Some(Entry::accepted(at, c)), |_| Vec::new());
    };
    log(
        &journal,
        t,
        careroute::engine::ReplacePolicy(Arc::clone(&policy)).into(),
    );
    log(&journal, t, Configure(e.limits()).into());
    for i in 0..AGENTS {
        let up = UpsertAgent(spec(i));
        e.apply(up.clone(), t).unwrap();
        log(&journal, t, up.into());
        let state = SetAgentState {
            agent_id: format!("agent-{i}"),
            state: AgentState::Available,
        };
        e.apply(state.clone(), t).unwrap();
        log(&journal, t, state.into());
    }
    rt.block_on(journal.durable(journal.last())).unwrap();
    let snapshots = dir.join(careroute::journal::SNAPSHOT_FILE);
    let saved = || {
        rusqlite::Connection::open(&snapshots)
            .and_then(|db| {
                db.query_row("SELECT count(*) FROM snapshots", [], |r| r.get::<_, i64>(0))
            })
            .unwrap_or(0)
    };
    while saved() == 0 {
        std::thread::sleep(StdDuration::from_millis(50));
    }
    drop(journal);

    // The snapshot's size, and what encoding it costs the shadow's thread.
    let mut encodings = Vec::new();
    let mut snapshot = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        snapshot = e.encode_state().unwrap();
        encodings.push(started.elapsed());
    }
    encodings.sort();
    let started = Instant::now();
    let base = Engine::decode_state(&snapshot).unwrap();
    let decoding = started.elapsed();

    // The traffic after it, with no further snapshot.
    wait_unlocked(&dir);
    let (store, recovered) = Store::open(&dir, JournalSync::Write).unwrap();
    let last_seq = recovered.records.finish(&store).unwrap().last_seq;
    let journal = Journal::<()>::start(
        Some(Log::Local(Box::new(store))),
        last_seq,
        None,
        |_, _| {},
        |e| panic!("{e}"),
    );
    let commands = traffic(&mut e, t + Duration::seconds(1), tail, |at, c| {
        log(&journal, at, c)
    });
    // The state after the traffic: its contact paths and idempotency
    // entries too.
    let started = Instant::now();
    let after = e.encode_state().unwrap();
    println!(
        "snapshot after {tail} commands of traffic: {:.1} MiB, encoding {:.1} ms",
        after.len() as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64() * 1e3
    );
    rt.block_on(journal.durable(journal.last())).unwrap();
    drop(journal);
    let size = std::fs::metadata(dir.join(careroute::journal::FILE))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "snapshot at {AGENTS} agents: {:.1} MiB, encoding (on the snapshot thread) median {:.1} ms",
        snapshot.len() as f64 / (1 << 20) as f64,
        encodings[encodings.len() / 2].as_secs_f64() * 1e3
    );
    println!(
        "snapshot at {AGENTS} agents: decoding {:.1} ms",
        decoding.as_secs_f64() * 1e3
    );
    println!(
        "journal: {} commands after the snapshot, database {:.0} MiB",
        commands.len(),
        size as f64 / (1 << 20) as f64
    );

    // Baseline: the engine's share, from memory.
    let mut baseline = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let mut engine = Engine::decode_state(&snapshot).unwrap();
        for (at, c) in commands.iter().cloned() {
            let _ = engine.apply(c, at);
        }
        baseline.push(started.elapsed());
        std::hint::black_box(&engine);
    }
    drop(base);

    // The restart: open, check every record, load, replay.
    let mut config = Config::ephemeral();
    config.no_journal = false;
    config.data_dir = dir.clone();
    // The shadow a start begins saves no snapshot while it is timed: one
    // would compact the log, and the next start would replay less.
    config.snapshot_every = u64::MAX;
    config.snapshot_interval = StdDuration::from_secs(24 * 3600);
    let mut restarts = Vec::new();
    for _ in 0..3 {
        wait_unlocked(&dir);
        let started = Instant::now();
        let prepared = build_engine(&config, t + Duration::days(1)).unwrap();
        let took = started.elapsed();
        restarts.push(took);
        assert_eq!(prepared.engine.roster().live(), AGENTS);
        drop(prepared);
        // The snapshot shadow rebuilds its copy on the other core once the
        // start has replayed, and ends once it has (the start is dropped):
        // let it end before the next start is timed.
        std::thread::sleep(took + StdDuration::from_secs(1));
    }
    baseline.sort();
    restarts.sort();
    println!(
        "restart, {AGENTS} agents + {} commands: median {} (min {}); baseline (snapshot decoded + commands applied from memory): median {}",
        commands.len(),
        secs(restarts[1]),
        secs(restarts[0]),
        secs(baseline[1]),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo bench --no-run` only builds, and `cargo test --benches` runs
    // this without --bench: measure only when run as a bench.
    if std::env::args().any(|a| a == "--bench") {
        // The most a restart replays at the default --snapshot-every, and
        // the target case.
        measure(100_000);
        measure(1_000_000);
    }
}
