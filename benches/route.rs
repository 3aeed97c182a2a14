//! Engine benches: `Engine::route` at 100, 10,000 and 100,000 agents, beside
//! a trivial baseline measured the same way in the same run (an emergency
//! decision: rules and guards only, no agent choice).
//!
//! Each measured call is timed alone with `iter_custom`, and the reservation
//! it made is released outside the timed region, so the roster stays the same
//! from one call to the next. Run with `cargo bench --bench route`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration as StdDuration, Instant},
};

use careroute::{
    engine::{
        AgentFilter, AgentSpec, Cancel, Complete, Confirm, Engine, EngineConfig, Event, Outcome,
        Release, Route, SetAgentState, UpsertAgent, Watch, WatchFilter,
    },
    model::{AgentState, Channel, Contact, Identity, ReleaseReason, Time, Urgency},
    policy::Policy,
};
use chrono::{Duration, TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, criterion_group};

/// Monday 10:00 in New York: queues open.
fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

/// `n` available agents, all eligible for billing; one in ten also speaks
/// Spanish; a few skills more so profiles are not all alike.
fn engine_with(n: usize) -> Engine {
    let mut e = Engine::new(
        Arc::new(Policy::embedded().unwrap()),
        EngineConfig::default(),
    );
    let t = open() - Duration::hours(1);
    for i in 0..n {
        let mut languages = vec!["en".to_string()];
        if i % 10 == 0 {
            languages.push("es".into());
        }
        let spec = AgentSpec {
            id: format!("agent-{i}"),
            team: "Billing".into(),
            transfer_address: format!("sip:{i}@pbx"),
            skills: vec![
                ("billing".into(), 3 + (i % 3) as u8),
                ("patient_access".into(), 2),
            ],
            languages,
            channels: vec![(Channel::Voice, 1), (Channel::Chat, 3)],
        };
        // Spread idle times so the ordered index is realistic.
        let at = t + Duration::milliseconds(i as i64);
        e.apply(UpsertAgent(spec), at).unwrap();
        e.apply(
            SetAgentState {
                agent_id: format!("agent-{i}"),
                state: AgentState::Available,
            },
            at,
        )
        .unwrap();
    }
    e
}

fn contacts(intent: &str, f: impl Fn(&mut Contact)) -> Vec<Contact> {
    (0..1024)
        .map(|i| {
            let mut c = Contact::new(format!("contact-{i}"), intent);
            c.identity = Identity::Verified;
            f(&mut c);
            c
        })
        .collect()
}

/// Times `route` alone; releases what it reserved outside the timing.
fn timed_routes(e: &mut Engine, contacts: &[Contact], iters: u64) -> StdDuration {
    let now = open();
    let mut total = StdDuration::ZERO;
    for i in 0..iters {
        let c = &contacts[i as usize % contacts.len()];
        let started = Instant::now();
        let d = black_box(e.apply(black_box(Route(c)), now).unwrap());
        total += started.elapsed();
        if let Outcome::Agent(a) = &d.outcome {
            e.apply(Release(a.reservation, ReleaseReason::Rejected), now)
                .unwrap();
        }
    }
    total
}

fn route(c: &mut Criterion) {
    let billing = contacts("billing", |_| {});
    let spanish = contacts("billing", |c| c.language = Some("es".into()));
    // Served by es speakers through its shorter form (no agent registers
    // es-MX here): one lookup more than an exact match.
    let regional = contacts("billing", |c| c.language = Some("es-MX".into()));
    let emergency = contacts("billing", |c| c.urgency = Urgency::Emergency);
    let mut group = c.benchmark_group("route");
    for n in [100usize, 10_000, 100_000] {
        let mut e = engine_with(n);
        group.bench_function(BenchmarkId::new("baseline_emergency", n), |b| {
            b.iter_custom(|iters| timed_routes(&mut e, &emergency, iters))
        });
        group.bench_function(BenchmarkId::new("agent_longest_idle", n), |b| {
            b.iter_custom(|iters| timed_routes(&mut e, &billing, iters))
        });
        group.bench_function(BenchmarkId::new("agent_language_match", n), |b| {
            b.iter_custom(|iters| timed_routes(&mut e, &spanish, iters))
        });
        group.bench_function(BenchmarkId::new("agent_language_regional", n), |b| {
            b.iter_custom(|iters| timed_routes(&mut e, &regional, iters))
        });
        // Route and release together, both timed: the full cycle a
        // rejected offer costs.
        group.bench_function(BenchmarkId::new("route_and_release", n), |b| {
            let now = open();
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) % billing.len();
                let d = e.apply(Route(&billing[i]), now).unwrap();
                if let Outcome::Agent(a) = &d.outcome {
                    e.apply(Release(a.reservation, ReleaseReason::Rejected), now)
                        .unwrap();
                }
                black_box(d)
            })
        });
    }
    group.finish();
}

/// Supervisor views at 100,000 agents (GetAgent, ListAgents pages), beside
/// a routing decision measured in the same run: a page is read under the
/// engine's lock, so what it costs is what routing waits.
fn views(c: &mut Criterion) {
    let billing = contacts("billing", |_| {});
    let mut e = engine_with(100_000);
    let mut group = c.benchmark_group("views_100k_agents");
    group.bench_function("baseline_route_longest_idle", |b| {
        b.iter_custom(|iters| timed_routes(&mut e, &billing, iters))
    });
    group.bench_function("get_agent", |b| {
        b.iter(|| black_box(e.agent_view(black_box("agent-54321")).unwrap()))
    });
    let all = AgentFilter::default();
    group.bench_function("list_agents_page_of_1000", |b| {
        b.iter(|| black_box(e.agent_page(&all, 50_000, 1000).unwrap()))
    });
    // The worst page: a filter nobody matches scans every agent.
    let away = AgentFilter {
        queue_id: Some("billing".into()),
        team: None,
        states: vec![AgentState::Away],
    };
    group.bench_function("list_agents_filter_matching_none", |b| {
        b.iter(|| black_box(e.agent_page(&away, 0, 1000).unwrap()))
    });
    group.finish();
}

/// 10,000 agents all on a call, 5,000 contacts waiting for billing.
fn busy_center() -> (Engine, Vec<String>) {
    let text = careroute::policy::DEFAULT_POLICY.replacen(
        "transfer_address = \"sip:billing@pbx.careroute.example\"",
        "transfer_address = \"sip:billing@pbx.careroute.example\"\nmax_waiting = 100000\nmax_wait = \"24h\"",
        1,
    );
    let policy = careroute::policy::parse("bench.toml", &text).unwrap();
    let mut e = Engine::new(Arc::new(policy), EngineConfig::default());
    let t = open() - Duration::hours(1);
    // A CTI watches the floor: waiting contacts are offered only then.
    e.apply(Watch(WatchFilter::default()), t).unwrap();
    let mut agents = Vec::new();
    for i in 0..10_000 {
        let id = format!("agent-{i}");
        e.apply(
            UpsertAgent(AgentSpec {
                id: id.clone(),
                team: "Billing".into(),
                transfer_address: format!("sip:{i}@pbx"),
                skills: vec![("billing".into(), 3)],
                languages: vec!["en".into()],
                channels: vec![(Channel::Voice, 1)],
            }),
            t,
        )
        .unwrap();
        e.apply(
            SetAgentState {
                agent_id: id.to_owned(),
                state: AgentState::Available,
            },
            t,
        )
        .unwrap();
        let mut c = Contact::new(format!("busy-{i}"), "billing");
        c.identity = Identity::Verified;
        let Outcome::Agent(a) = e.apply(Route(&c), t).unwrap().outcome else {
            panic!()
        };
        e.apply(Confirm(a.reservation), t).unwrap();
        agents.push(id);
    }
    for i in 0..5_000 {
        let mut c = Contact::new(format!("waiting-{i}"), "billing");
        c.identity = Identity::Verified;
        let d = e.apply(Route(&c), t + Duration::milliseconds(i)).unwrap();
        assert!(matches!(d.outcome, Outcome::Queued(_)));
    }
    // Every call ends and every agent steps away during wrap-up: nobody is
    // free, nobody holds a contact.
    for (i, id) in agents.iter().enumerate() {
        e.apply(
            Complete {
                agent_id: id.to_owned(),
                contact_id: format!("busy-{i}"),
            },
            t,
        )
        .unwrap();
        e.apply(
            SetAgentState {
                agent_id: id.to_owned(),
                state: AgentState::Away,
            },
            t,
        )
        .unwrap();
    }
    (e, agents)
}

fn queueing(c: &mut Criterion) {
    let mut group = c.benchmark_group("queueing_10k_agents_5k_waiting");
    let (mut e, agents) = busy_center();
    let now = open();
    let emergency = contacts("billing", |c| c.urgency = Urgency::Emergency);
    group.bench_function("baseline_emergency", |b| {
        b.iter_custom(|iters| timed_routes(&mut e, &emergency, iters))
    });
    // A new contact finds everyone busy and joins the line (its position is
    // counted); it leaves again outside the timing.
    group.bench_function("arrival_while_all_busy", |b| {
        b.iter_custom(|iters| {
            let mut total = StdDuration::ZERO;
            for i in 0..iters {
                let mut c = Contact::new(format!("arrival-{i}"), "billing");
                c.identity = Identity::Verified;
                let started = Instant::now();
                let d = black_box(e.apply(black_box(Route(&c)), now).unwrap());
                total += started.elapsed();
                assert!(matches!(d.outcome, Outcome::Queued(_)));
                e.apply(Cancel(c.contact_id.to_owned()), now).unwrap();
            }
            total
        })
    });
    // An agent becomes available and is offered the head of the line; then,
    // outside the timing, it steps away, the offer is withdrawn and a new
    // contact joins, so the line stays at 5,000.
    group.bench_function("agent_frees_up", |b| {
        let mut n = 0u64;
        b.iter_custom(|iters| {
            let mut total = StdDuration::ZERO;
            for _ in 0..iters {
                n += 1;
                let agent = &agents[(n as usize) % agents.len()];
                e.apply(
                    SetAgentState {
                        agent_id: agent.to_owned(),
                        state: AgentState::Away,
                    },
                    now,
                )
                .unwrap();
                let started = Instant::now();
                e.apply(
                    SetAgentState {
                        agent_id: black_box(agent).to_owned(),
                        state: AgentState::Available,
                    },
                    now,
                )
                .unwrap();
                total += started.elapsed();
                let events = e.take_events();
                let [Event::Assigned(a)] = events.as_slice() else {
                    panic!("expected one assignment: {events:?}")
                };
                let contact_id = &a.contact_id;
                e.apply(
                    SetAgentState {
                        agent_id: agent.to_owned(),
                        state: AgentState::Busy,
                    },
                    now,
                )
                .unwrap();
                e.apply(Cancel(contact_id.to_owned()), now).unwrap();
                let mut c = Contact::new(format!("refill-{n}"), "billing");
                c.identity = Identity::Verified;
                e.apply(Route(&c), now).unwrap();
                // The cancel's withdrawn offer.
                e.take_events();
            }
            total
        })
    });
    // A log-in changes who staffs the lines, so the command sweeps them
    // (every queue's line: closing time, staffing per channel); the same
    // agent going from away to busy changes no staffing and sweeps nothing.
    // Each is undone outside the timing.
    let agent = agents[0].clone();
    group.bench_function("baseline_away_to_busy", |b| {
        b.iter_custom(|iters| flip(&mut e, &agent, AgentState::Busy, AgentState::Away, iters))
    });
    group.bench_function("log_in_sweeps_the_lines", |b| {
        b.iter_custom(|iters| {
            set_state(&mut e, &agent, AgentState::Offline);
            let took = flip(&mut e, &agent, AgentState::Away, AgentState::Offline, iters);
            set_state(&mut e, &agent, AgentState::Away);
            took
        })
    });
    group.finish();
}

fn set_state(e: &mut Engine, agent: &str, state: AgentState) {
    e.apply(
        SetAgentState {
            agent_id: agent.to_owned(),
            state,
        },
        open(),
    )
    .unwrap();
}

/// Times `iters` changes of `agent` to `to`, each undone to `back` outside
/// the timing.
fn flip(e: &mut Engine, agent: &str, to: AgentState, back: AgentState, iters: u64) -> StdDuration {
    let mut total = StdDuration::ZERO;
    for _ in 0..iters {
        let started = Instant::now();
        set_state(e, black_box(agent), to);
        total += started.elapsed();
        set_state(e, agent, back);
    }
    total
}

/// Per-call percentiles, which criterion's per-sample means hide: 200,000
/// calls timed one by one (the ~20 ns of `Instant::now` included).
fn percentiles() {
    let billing = contacts("billing", |_| {});
    let emergency = contacts("billing", |c| c.urgency = Urgency::Emergency);
    println!("\nper-call route() latency, 200,000 calls each (p50 / p99 / p99.9):");
    for n in [100usize, 10_000, 100_000] {
        let mut e = engine_with(n);
        for (name, contacts) in [
            ("baseline_emergency", &emergency),
            ("agent_longest_idle", &billing),
        ] {
            timed_routes(&mut e, contacts, 20_000); // warm up
            let mut samples: Vec<u128> = Vec::with_capacity(200_000);
            let now = open();
            for i in 0..200_000usize {
                let c = &contacts[i % contacts.len()];
                let started = Instant::now();
                let d = black_box(e.apply(black_box(Route(c)), now).unwrap());
                samples.push(started.elapsed().as_nanos());
                if let Outcome::Agent(a) = &d.outcome {
                    e.apply(Release(a.reservation, ReleaseReason::Rejected), now)
                        .unwrap();
                }
            }
            samples.sort_unstable();
            let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
            println!(
                "  {name:<20} {n:>7} agents: {:>6} ns / {:>6} ns / {:>6} ns",
                at(0.50),
                at(0.99),
                at(0.999)
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(StdDuration::from_millis(500))
        .measurement_time(StdDuration::from_secs(2));
    targets = route, queueing, views
}

fn main() {
    benches();
    // Only on a real bench run (`cargo bench`), not under `cargo test`.
    if std::env::args().any(|a| a == "--bench") {
        percentiles();
    }
    Criterion::default().configure_from_args().final_summary();
}
