//! Fixtures the fuzz targets share: interesting instants, the embedded
//! policy, engines staffed from the demo roster or from a policy's own
//! queues, and the engine invariants that the public API can check.

use std::sync::{Arc, OnceLock};

use careroute::engine::{AgentSpec, Decision, Engine, EngineConfig, Event, Outcome};
use careroute::engine::{Route, SetAgentState, Tick, UpsertAgent};
use careroute::grpc::pb;
use careroute::model::{AgentState, Channel, Contact, Identity, Time, Urgency};
use careroute::policy::Policy;
use chrono::{TimeZone, Utc};
use prost::Message;

/// A UTC instant.
pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Time {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// Instants where schedules behave differently: open, closed, a holiday, a
/// weekend, and both New York DST transitions (a missing and a repeated
/// local hour).
pub fn instants() -> &'static [Time] {
    static INSTANTS: OnceLock<Vec<Time>> = OnceLock::new();
    INSTANTS.get_or_init(|| {
        vec![
            utc(2026, 11, 23, 15, 0),  // Monday 10:00 New York: open
            utc(2026, 11, 24, 1, 0),   // Monday 20:00: closed
            utc(2026, 11, 26, 15, 0),  // Thanksgiving: a holiday
            utc(2026, 11, 28, 15, 0),  // Saturday
            utc(2026, 3, 8, 6, 59),    // a minute before 02:00 EST is skipped
            utc(2026, 11, 1, 5, 59),   // a minute before 01:00-02:00 repeats
            utc(2026, 11, 23, 21, 59), // Monday 16:59: a minute to close
        ]
    })
}

/// The embedded healthcare policy, parsed once.
pub fn embedded() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    Arc::clone(POLICY.get_or_init(|| Arc::new(Policy::embedded().unwrap())))
}

/// The demo roster compiled into careroute, parsed once.
pub fn demo_roster() -> &'static [(AgentSpec, AgentState)] {
    static ROSTER: OnceLock<Vec<(AgentSpec, AgentState)>> = OnceLock::new();
    ROSTER.get_or_init(|| {
        careroute::roster::parse("demo-roster.toml", careroute::roster::DEMO_ROSTER).unwrap()
    })
}

/// Registers `agents` in their states, as the server does at start.
pub fn register(engine: &mut Engine, agents: &[(AgentSpec, AgentState)], now: Time) {
    for (spec, state) in agents {
        engine.apply(UpsertAgent(spec.clone()), now).unwrap();
        engine
            .apply(
                SetAgentState {
                    agent_id: spec.id.to_owned(),
                    state: *state,
                },
                now,
            )
            .unwrap();
    }
}

/// An engine on `policy` with the demo roster registered at `now`.
pub fn demo_engine(policy: Arc<Policy>, now: Time) -> Engine {
    let mut engine = Engine::new(policy, EngineConfig::default());
    register(&mut engine, demo_roster(), now);
    engine
}

/// One available agent per queue of the engine's policy, meeting its skills
/// at the top level, on every channel.
pub fn staff_every_queue(engine: &mut Engine, now: Time) {
    let policy = Arc::clone(engine.policy());
    for (i, q) in policy.queues.iter().enumerate() {
        let spec = AgentSpec {
            id: format!("staff-{i}"),
            team: q.team.to_string(),
            transfer_address: format!("sip:staff-{i}@fuzz"),
            skills: q.skills.iter().map(|(s, _)| (s.clone(), 5)).collect(),
            languages: vec!["en".into(), "es".into()],
            channels: Channel::ALL.iter().map(|c| (*c, 1)).collect(),
        };
        if spec.validate().is_ok() {
            engine.apply(UpsertAgent(spec), now).unwrap();
            engine
                .apply(
                    SetAgentState {
                        agent_id: format!("staff-{i}"),
                        state: AgentState::Available,
                    },
                    now,
                )
                .unwrap();
        }
    }
}

/// Routes one contact of every intent of the engine's policy on each
/// channel, with varied urgency, identity and escalation; converts every
/// decision and event to its protobuf form as the edge does.
pub fn route_every_intent(engine: &mut Engine, now: Time) {
    let policy = Arc::clone(engine.policy());
    for (i, intent) in policy.intents.iter().enumerate() {
        for (k, channel) in Channel::ALL.into_iter().enumerate() {
            let mut c = Contact::new(format!("c-{i}-{k}"), intent.id.to_string());
            c.channel = channel;
            c.identity = if k % 2 == 0 {
                Identity::Verified
            } else {
                Identity::NotAttempted
            };
            c.urgency = match k % 3 {
                0 => Urgency::Routine,
                1 => Urgency::Urgent,
                _ => Urgency::Routine,
            };
            c.escalation_requested = k == 3;
            if k == 4 {
                c.language = Some("es".into());
            }
            let decision = engine.apply(Route(&c), now).unwrap();
            check_decision(engine, &decision, now);
            to_wire(decision);
        }
    }
    drain_events(engine);
}

/// The protobuf form of a decision, encoded, as the edge sends it.
pub fn to_wire(decision: careroute::engine::Decision) -> Vec<u8> {
    pb::RouteContactResponse::from(decision).encode_to_vec()
}

/// Takes the engine's events and converts each as the edge streams them.
pub fn drain_events(engine: &mut Engine) -> Vec<Event> {
    let events = engine.take_events();
    for e in &events {
        let _ = pb::AssignmentEvent::from(e).encode_to_vec();
    }
    events
}

/// Lists queues and converts each view as the edge does (time passing
/// first, as the edge applies it).
pub fn list_queues(engine: &mut Engine, now: Time) {
    engine.apply(Tick, now).unwrap();
    for view in engine.queues() {
        let _ = pb::QueueView::from(view).encode_to_vec();
    }
}

/// An engine error as the edge answers it.
pub fn status(err: careroute::engine::EngineError) -> tonic::Status {
    tonic::Status::from(err)
}

/// Invariants the public API can check between any two operations: every
/// queue's staffed and available counts equal a recount over the agents,
/// and agents hold exactly the live reservations.
pub fn check_invariants(engine: &Engine) {
    let policy = engine.policy();
    let agents = engine.roster().agents();
    for (q, queue) in policy.queues.iter().enumerate() {
        let eligible = agents.iter().filter(|a| a.queues.contains(&q));
        // Logged in on one of the queue's channels.
        let staffed = eligible
            .clone()
            .filter(|a| a.state != AgentState::Offline && a.serves().intersects(queue.channels))
            .count() as u32;
        let available = eligible
            .filter(|a| a.free_channels(engine.roster().blocks()).0 & queue.channels.0 != 0)
            .count() as u32;
        let pool = engine.roster().pool(q);
        assert_eq!(pool.staffed, staffed, "staffed count of {}", queue.id);
        assert_eq!(pool.available, available, "available count of {}", queue.id);
    }
    let reserved: usize = agents
        .iter()
        .map(|a| a.reserved.iter().map(|n| usize::from(*n)).sum::<usize>())
        .sum();
    assert_eq!(
        reserved,
        engine.live_reservations(),
        "agents' reserved slots and live reservations disagree"
    );
    let by_queue: usize = (0..policy.queues.len())
        .map(|q| engine.roster().pool(q).reservations as usize)
        .sum();
    assert!(
        by_queue <= engine.live_reservations(),
        "queues count {by_queue} reservations, {} live",
        engine.live_reservations()
    );
    for a in agents {
        assert!(
            a.contacts.len() == a.active.iter().map(|n| usize::from(*n)).sum::<usize>(),
            "agent {} lists {} active contacts, counts {:?}",
            a.id,
            a.contacts.len(),
            a.active
        );
    }
}

/// Checks what every fresh decision (not a replay) promises: an offer
/// expires one TTL from now, a queued contact has a place in line.
pub fn check_decision(engine: &Engine, decision: &Decision, now: Time) {
    if decision.replayed() {
        return;
    }
    match &decision.outcome {
        Outcome::Agent(offer) => assert_eq!(
            offer.expires_at,
            now + engine.policy().reservation_ttl,
            "an offer's expiry is not one TTL away"
        ),
        Outcome::Queued(q) => assert!(q.position >= 1, "queued at position 0"),
        _ => {}
    }
}
