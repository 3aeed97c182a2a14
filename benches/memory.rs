//! Memory at scale, measured as resident set growth (allocator overhead
//! included) over a baseline taken in the same run just before: bytes per
//! agent at 100,000 agents, and bytes per remembered contact (its path, and
//! its idempotency entry when it carries a request id) at the default caps.
//! Run with `cargo bench --bench memory`; figures go in BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use careroute::{
    engine::{AgentSpec, Engine, EngineConfig, Route, SetAgentState, UpsertAgent},
    model::{AgentState, Channel, Contact, Identity, Time},
    policy::Policy,
};
use chrono::{Duration, TimeZone, Utc};

/// Resident set size now, in bytes (Linux).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

fn engine() -> Engine {
    Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig::default(),
    )
}

fn per(label: &str, before: u64, after: u64, n: usize) {
    let grown = after.saturating_sub(before);
    println!(
        "{label:<44} n={n:>9}  rss +{:>8.1} MiB  {:>7.0} bytes each",
        grown as f64 / (1 << 20) as f64,
        grown as f64 / n as f64
    );
}

fn agents(n: usize, state: AgentState) {
    let mut e = engine();
    let t = open();
    let before = rss();
    for i in 0..n {
        let mut languages = vec!["en".to_string()];
        if i % 10 == 0 {
            languages.push("es".into());
        }
        e.apply(
            UpsertAgent(AgentSpec {
                id: format!("agent-{i}"),
                team: format!("Team {}", i % 50),
                transfer_address: format!("sip:{}@pbx.careroute.example", 10_000 + i),
                skills: vec![
                    ("billing".into(), 3),
                    ("scheduling".into(), 2),
                    ("patient_access".into(), 2),
                ],
                languages,
                channels: vec![(Channel::Voice, 1), (Channel::Chat, 3)],
            }),
            t,
        )
        .unwrap();
        e.apply(
            SetAgentState {
                agent_id: format!("agent-{i}"),
                state,
            },
            t,
        )
        .unwrap();
    }
    let label = format!("agents (3 skills, voice + chat, {})", state.as_str());
    per(&label, before, rss(), n);
    std::hint::black_box(&e);
}

/// A roster file of `n` agents parsed and loaded, as at start-up: time and
/// resident growth (the parse's own peak included, as the process sees it).
fn roster_file(n: usize) {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[agents]]\nid = \"agent-{i}\"\nteam = \"Team {}\"\ntransfer_address = \"sip:{}@pbx.careroute.example\"\nskills = {{ billing = 3, scheduling = 2, patient_access = 2 }}\nlanguages = [\"en\"]\nchannels = {{ voice = 1, chat = 3 }}\n\n",
            i % 50,
            10_000 + i
        ));
    }
    let mut e = engine();
    let t = open();
    let before = rss();
    let started = std::time::Instant::now();
    for (spec, state) in careroute::roster::parse("bench-roster.toml", &text).unwrap() {
        let id = spec.id.clone();
        e.apply(UpsertAgent(spec), t).unwrap();
        e.apply(
            SetAgentState {
                agent_id: id.to_owned(),
                state,
            },
            t,
        )
        .unwrap();
    }
    let took = started.elapsed();
    per("roster file parsed and loaded", before, rss(), n);
    println!(
        "{:<44} n={n:>9}  {:.2} s",
        "roster file load time",
        took.as_secs_f64()
    );
    std::hint::black_box(&e);
}

/// `n` distinct contacts routed (a callback decision: nobody is staffed),
/// each with or without a request id.
fn contacts(n: usize, request_ids: bool) {
    let mut e = engine();
    let t = open();
    let before = rss();
    for i in 0..n {
        let mut c = Contact::new(format!("contact-{i:09}"), "billing");
        c.identity = Identity::Verified;
        if request_ids {
            c.request_id = Some(format!("req-{i:09}-0123456789abcdef"));
        }
        // 1,000 new contacts a second: the default sizing's peak.
        let at = t + Duration::microseconds(i as i64 * 1_000);
        e.apply(Route(&c), at).unwrap();
    }
    let label = if request_ids {
        "contacts with a request id (path + idempotency)"
    } else {
        "contacts without a request id (path only)"
    };
    per(label, before, rss(), n);
    std::hint::black_box(&e);
}

fn main() {
    // `cargo bench --no-run` only builds, and `cargo test --benches` runs
    // this without --bench: measure only when run as a bench. Each
    // measurement runs in a fresh process, so memory freed by one is not
    // reused by the next.
    let args: Vec<String> = std::env::args().collect();
    match args.iter().find_map(|a| a.strip_prefix("--measure=")) {
        Some("agents") => agents(100_000, AgentState::Available),
        Some("agents-offline") => agents(100_000, AgentState::Offline),
        Some("roster-file") => roster_file(100_000),
        Some("requests") => contacts(600_000, true),
        Some("paths") => contacts(600_000, false),
        Some(other) => panic!("unknown measurement {other}"),
        None if args.iter().any(|a| a == "--bench") => {
            for m in [
                "agents",
                "agents-offline",
                "roster-file",
                "requests",
                "paths",
            ] {
                let status = std::process::Command::new(&args[0])
                    .arg(format!("--measure={m}"))
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        None => {}
    }
}
