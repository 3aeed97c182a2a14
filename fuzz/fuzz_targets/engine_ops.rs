//! Fuzz target: arbitrary command sequences against the engine, decoded
//! with `arbitrary` from the input bytes. Contacts of every intent, channel,
//! urgency, identity, language, signal and attribute (and some the policy
//! does not know), confirms, releases, completes, cancels, agent state and
//! profile changes, time that only moves forward (milliseconds to days),
//! policy reloads between the example policy and live-queueing variants,
//! small retention limits. After every operation the engine's public view
//! must hold together: counts equal a recount, no agent gains work while at
//! or over capacity, no reservation outlives its TTL, no waiting contact is
//! lost or assigned unless it waits, every decision and event converts to
//! protobuf. Mirrors the property test in src/engine/tests.rs, through the
//! public API only.

#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use careroute::engine::{
    AgentSpec, Engine, EngineConfig, EngineError, Event, Outcome, ReservationId, WatchFilter,
    WatchId,
};
use careroute::engine::{
    Cancel, Command, Complete, Confirm, Release, RemoveAgent, ReplacePolicy, Restarted, Route,
    SetAgentState, Tick, Unwatch, UpsertAgent, Watch,
};
use careroute::grpc::pb;
use careroute::model::{
    AgentState, Channel, Contact, Identity, ReleaseReason, Time, TransferFrom, Urgency,
};
use careroute::policy::{DEFAULT_POLICY, Policy};
use careroute_fuzz::{
    check_decision, check_invariants, demo_roster, embedded, instants, list_queues, register,
    status, to_wire,
};
use chrono::Duration;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Below 128 the Monday opening hours, else one of `instants()`.
    start: u8,
    start_offset_minutes: u8,
    policy: u8,
    /// With the demo roster (13 agents) besides the four billing agents.
    demo_roster: bool,
    config: Config,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Config {
    max_tracked_contacts: Option<u8>,
    max_hops: Option<u8>,
    retention_secs: Option<u16>,
    id_key: [u8; 16],
}

#[derive(Arbitrary, Debug)]
enum Op {
    Route(RouteInput),
    /// A verified routine or urgent billing or scheduling contact, as in the
    /// property test: the quickest way to fill lines.
    Call {
        contact: u8,
        scheduling: bool,
        chat: bool,
        urgent: bool,
    },
    Confirm(u8),
    Release(u8, u8),
    Complete(u8),
    CompleteAny {
        agent: u8,
        contact: u8,
    },
    SetState {
        agent: u8,
        state: u8,
    },
    Upsert(Upsert),
    Wait(Wait),
    Cancel(u8),
    Reload(u8),
    Queues,
    Path(u8),
    Remove(u8),
    /// A CTI connects: the whole floor, one agent, or a team.
    Watch(u8),
    Unwatch(u8),
    /// The process restarted: its watchers are gone.
    Restart,
}

#[derive(Arbitrary, Debug)]
struct RouteInput {
    contact: u8,
    request: Option<u8>,
    /// Index into the policy's intents; past the end, an unknown intent.
    intent: u8,
    channel: u8,
    urgency: u8,
    identity: u8,
    language: Option<u8>,
    escalation: bool,
    /// Index into the policy's signals; past the end, one it does not know.
    signal: Option<u8>,
    /// Per declared attribute (sorted by key): absent, or a value index;
    /// the last index past the values is an undeclared value.
    attributes: [Option<u8>; 2],
    undeclared_attribute: bool,
    /// Index into the visible queues; past the end, an unknown queue.
    transfer_from: Option<(u8, Option<u8>)>,
    preferred: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Upsert {
    agent: u8,
    skills: Vec<(u8, u8)>,
    languages: u8,
    channels: [u8; 5],
}

#[derive(Arbitrary, Debug)]
enum Wait {
    Millis(u16),
    Seconds(u8),
    Minutes(u8),
    Hours(u8),
    Days(u8),
}

/// Agents commands name: the demo roster, four billing agents, two that
/// exist only once upserted, and one never registered.
fn agent_ids() -> &'static [String] {
    static IDS: OnceLock<Vec<String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut ids: Vec<String> = demo_roster().iter().map(|(s, _)| s.id.clone()).collect();
        ids.extend(["b0", "b1", "b2", "b3", "n0", "n1", "ghost"].map(String::from));
        ids
    })
}

const SKILLS: [&str; 11] = [
    "billing",
    "patient_access",
    "scheduling",
    "escalations",
    "resolutions",
    "patient_experience",
    "access_support",
    "clinical_triage",
    "on_call",
    "pharmacy",
    "compliance",
];
const LANGUAGES: [&str; 4] = ["en", "es", "vi", "zz-ZZ"];
const CAPACITIES: [u8; 5] = [0, 1, 2, 3, 50];

fn billing_agent(id: &str, chat: u8) -> AgentSpec {
    let mut channels = vec![(Channel::Voice, 1)];
    if chat > 0 {
        channels.push((Channel::Chat, chat));
    }
    AgentSpec {
        id: id.into(),
        team: "Billing".into(),
        transfer_address: format!("sip:{id}@pbx"),
        skills: vec![("billing".into(), 3)],
        languages: vec!["en".into(), "es".into()],
        channels,
    }
}

/// The example policy with lines on billing (20) and scheduling (2), as in
/// the engine's queueing tests.
fn waiting_text() -> String {
    replaced(
        &replaced(
            DEFAULT_POLICY,
            "transfer_address = \"sip:billing@pbx.careroute.example\"",
            "transfer_address = \"sip:billing@pbx.careroute.example\"\nmax_waiting = 20\nmax_wait = \"2h\"\nsteps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]",
        ),
        "max_waiting = 10",
        "max_waiting = 2",
    )
}

/// `text` with the first `from` replaced; panics (at start, for every
/// input) if the example policy no longer has `from`.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "fixture lost: {from}");
    text.replacen(from, to, 1)
}

/// Policies the engine is reloaded between: the example, the waiting one,
/// and variants that drop, change and add relaxation steps, raise skills,
/// narrow channels, rename a queue, and shorten the TTL and patience.
fn policies() -> &'static [Arc<Policy>] {
    static POLICIES: OnceLock<Vec<Arc<Policy>>> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let base = waiting_text();
        let steps = "steps = [{ after = \"60s\", skills = { billing = 1 } }, { after = \"120s\", overflow_to = \"frontline\" }]";
        let variants = [
            replaced(&base, steps, ""),
            replaced(
                &replaced(
                    &base,
                    steps,
                    "steps = [{ after = \"30s\", overflow_to = \"frontline\" }]",
                ),
                "max_waiting = 20",
                "max_waiting = 3",
            ),
            replaced(&base, "skills = { billing = 2 }", "skills = { billing = 4 }"),
            replaced(
                &base,
                "channels = [\"voice\", \"chat\", \"email\", \"portal\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
                "channels = [\"voice\"]\nschedule = \"business\"\ntransfer_address = \"sip:billing@",
            ),
            replaced(
                &replaced(&base, "id = \"billing\"\nlevel", "id = \"billing_v2\"\nlevel"),
                "route_to = \"billing\"\n",
                "route_to = \"billing_v2\"\n",
            ),
            replaced(
                &replaced(&base, "reservation_ttl = \"15s\"", "reservation_ttl = \"1s\""),
                "missed_offers_to_pause = 3",
                "missed_offers_to_pause = 1",
            ),
        ];
        let mut policies = vec![embedded()];
        policies.push(Arc::new(
            careroute::policy::parse("waiting.toml", &base).unwrap(),
        ));
        for (i, text) in variants.iter().enumerate() {
            policies.push(Arc::new(
                careroute::policy::parse(&format!("variant-{i}.toml"), text).unwrap(),
            ));
        }
        policies
    })
}

/// Builds the contact a route command describes, and whether the policy
/// knows every word of it (then the engine must accept it).
fn contact(r: &RouteInput, policy: &Policy) -> (Contact, bool) {
    let mut known = true;
    let intent = match policy
        .intents
        .get(usize::from(r.intent) % (policy.intents.len() + 1))
    {
        Some(i) => i.id.to_string(),
        None => {
            known = false;
            "astrology".into()
        }
    };
    let mut c = Contact::new(format!("c{}", r.contact % 24), intent);
    c.request_id = r.request.map(|n| format!("req-{}", n % 4));
    c.channel = Channel::ALL[usize::from(r.channel) % Channel::ALL.len()];
    c.urgency = [Urgency::Routine, Urgency::Urgent, Urgency::Emergency][usize::from(r.urgency) % 3];
    c.identity =
        [Identity::NotAttempted, Identity::Verified, Identity::Failed][usize::from(r.identity) % 3];
    c.language = r
        .language
        .map(|l| LANGUAGES[usize::from(l) % LANGUAGES.len()].to_owned());
    c.escalation_requested = r.escalation;
    if let Some(s) = r.signal {
        let signals: Vec<&String> = policy.signals.iter().collect();
        let signal = match signals.get(usize::from(s) % (signals.len() + 1)) {
            Some(name) => (*name).clone(),
            None => {
                known = false;
                "cough".into()
            }
        };
        c.signals = vec![signal];
    }
    let mut keys: Vec<_> = policy.attributes.iter().collect();
    keys.sort();
    for ((key, values), pick) in keys.into_iter().zip(r.attributes) {
        let Some(pick) = pick else { continue };
        match values.get(usize::from(pick) % (values.len() + 1)) {
            Some(v) => c.attributes.push((key.clone(), v.clone())),
            None => {
                known = false;
                c.attributes.push((key.clone(), "platinum".into()));
            }
        }
    }
    if r.undeclared_attribute {
        known = false;
        c.attributes.push(("patient_name".into(), "x".into()));
    }
    if let Some((q, agent)) = r.transfer_from {
        let visible: Vec<_> = policy
            .queues
            .iter()
            .filter(|q| q.parent.is_none())
            .collect();
        let queue_id = match visible.get(usize::from(q) % (visible.len() + 1)) {
            Some(q) => q.id.to_string(),
            None => {
                known = false;
                "nowhere".into()
            }
        };
        let ids = agent_ids();
        c.transfer_from = Some(TransferFrom {
            queue_id,
            agent_id: agent.map(|a| ids[usize::from(a) % ids.len()].clone()),
        });
    }
    let ids = agent_ids();
    c.preferred_agent_id = r.preferred.map(|a| ids[usize::from(a) % ids.len()].clone());
    (c, known)
}

fn upsert_spec(u: &Upsert) -> AgentSpec {
    let ids = agent_ids();
    let mut skills: Vec<(String, u8)> = Vec::new();
    for (s, level) in u.skills.iter().take(6) {
        let skill = SKILLS[usize::from(*s) % SKILLS.len()];
        if skills.iter().all(|(k, _)| k != skill) {
            skills.push((skill.into(), level % 5 + 1));
        }
    }
    let languages = LANGUAGES
        .iter()
        .enumerate()
        .filter(|(i, _)| u.languages & (1 << i) != 0)
        .map(|(_, l)| l.to_string())
        .collect();
    let channels = Channel::ALL
        .into_iter()
        .zip(u.channels)
        .map(|(c, n)| (c, CAPACITIES[usize::from(n) % CAPACITIES.len()]))
        .filter(|(_, n)| *n > 0)
        .collect();
    let id = ids[usize::from(u.agent) % ids.len()].clone();
    AgentSpec {
        transfer_address: format!("sip:{id}@fuzz"),
        id,
        team: "Fuzz".into(),
        skills,
        languages,
        channels,
    }
}

fn wait(w: &Wait) -> Duration {
    match *w {
        Wait::Millis(n) => Duration::milliseconds(i64::from(n)),
        Wait::Seconds(n) => Duration::seconds(i64::from(n)),
        Wait::Minutes(n) => Duration::minutes(i64::from(n)),
        Wait::Hours(n) => Duration::hours(i64::from(n % 48)),
        Wait::Days(n) => Duration::days(i64::from(n % 30)),
    }
}

/// Each agent's contacts reserved plus active, per channel.
fn loads(e: &Engine) -> Vec<[u16; 5]> {
    e.roster()
        .agents()
        .iter()
        .map(|a| std::array::from_fn(|k| u16::from(a.reserved[k]) + u16::from(a.active[k])))
        .collect()
}

/// What the commands have been told, to hold the engine's answers to.
#[derive(Default)]
struct Model {
    /// Offers out: reservation, agent, contact, expiry.
    offers: Vec<(ReservationId, String, String, Time)>,
    /// Offers made to waiting contacts (from assignment events).
    assignments: HashSet<ReservationId>,
    /// Confirmed contacts: agent, contact.
    active: Vec<(String, String)>,
    /// Contacts told they wait.
    waiting: HashSet<String>,
    /// Agents registered.
    agents: HashSet<String>,
    /// Requests decided with a request id: (contact, request id), digest.
    requests: std::collections::HashMap<(String, String), u32>,
}

/// Routes `c` and holds the answer to what the model knows: a contact in
/// the policy's vocabulary is accepted, an offer fits the agent's capacity
/// and state, a new hop replaces the contact's place in line.
fn route(e: &mut Engine, m: &mut Model, c: &Contact, known: bool, now: Time) {
    match e.apply(Route(c), now) {
        Ok(d) => {
            let replay = d.replayed();
            check_decision(e, &d, now);
            if let Some(r) = &c.request_id {
                let first = m.requests.entry((c.contact_id.clone(), r.clone()));
                if replay {
                    // A retry is answered only for the request it repeats.
                    if let std::collections::hash_map::Entry::Occupied(o) = &first {
                        assert_eq!(*o.get(), c.digest(), "replayed a different request");
                    }
                } else {
                    // Decided anew: the first for this id, or its window ended.
                    *first.or_default() = c.digest();
                }
            }
            if !replay {
                assert!(
                    e.path(&c.contact_id).is_some(),
                    "a routed contact has no path"
                );
                // A new hop replaces the contact's place in line.
                m.waiting.remove(&c.contact_id);
                match &d.outcome {
                    Outcome::Agent(a) => {
                        let agent = e.roster().agent(
                            e.roster()
                                .find(&a.agent_id)
                                .expect("offered an unknown agent"),
                        );
                        let k = c.channel.index();
                        assert!(
                            u16::from(agent.reserved[k]) + u16::from(agent.active[k])
                                <= u16::from(agent.capacity[k]),
                            "reserved {} beyond capacity on {}",
                            agent.id,
                            c.channel
                        );
                        assert!(
                            agent.state == AgentState::Available,
                            "reserved {} while {:?}",
                            agent.id,
                            agent.state
                        );
                        m.offers.push((
                            a.reservation,
                            a.agent_id.to_string(),
                            c.contact_id.clone(),
                            a.expires_at,
                        ));
                    }
                    Outcome::Queued(_) => {
                        m.waiting.insert(c.contact_id.clone());
                    }
                    _ => {}
                }
            }
            to_wire(d);
        }
        Err(careroute::engine::EngineError::RequestIdReused) => {
            // Only a request id already decided for another request.
            let key = (
                c.contact_id.clone(),
                c.request_id.clone().unwrap_or_default(),
            );
            let first = m.requests.get(&key).copied();
            assert!(
                first.is_some_and(|d| d != c.digest()),
                "refused a request id never used for another request"
            );
        }
        Err(err) => {
            assert!(
                !known,
                "refused a contact in the policy's vocabulary: {err}"
            );
            let _ = status(err);
        }
    }
}

fuzz_target!(|input: Input| {
    let start = if input.start < 128 {
        instants()[0]
    } else {
        instants()[usize::from(input.start) % instants().len()]
    };
    let mut now = start + Duration::minutes(i64::from(input.start_offset_minutes));
    let policies = policies();
    let defaults = EngineConfig::default();
    let retention = input
        .config
        .retention_secs
        .map(|s| Duration::seconds(i64::from(s)));
    let config = EngineConfig {
        idempotency_retention: retention.unwrap_or(defaults.idempotency_retention),
        path_retention: retention.unwrap_or(defaults.path_retention),
        max_idempotency_keys: input
            .config
            .max_tracked_contacts
            .map_or(defaults.max_idempotency_keys, usize::from),
        max_paths: input
            .config
            .max_tracked_contacts
            .map_or(defaults.max_paths, usize::from),
        max_hops: input.config.max_hops.map_or(defaults.max_hops, usize::from),
        id_key: careroute::engine::IdKey(input.config.id_key),
        ..defaults
    };
    let max_hops = config.max_hops;
    let policy = &policies[usize::from(input.policy) % policies.len()];
    let mut e = Engine::new(Arc::clone(policy), config);
    let mut m = Model::default();
    let mut watchers: Vec<WatchId> = vec![e.apply(Watch(WatchFilter::default()), now).unwrap().0];
    if input.demo_roster {
        register(&mut e, demo_roster(), now);
    }
    for i in 0..4u8 {
        let spec = billing_agent(&format!("b{i}"), i % 3);
        let id = spec.id.clone();
        e.apply(UpsertAgent(spec), now).unwrap();
        e.apply(
            SetAgentState {
                agent_id: id.to_owned(),
                state: AgentState::Available,
            },
            now,
        )
        .unwrap();
    }
    for a in e.roster().agents() {
        m.agents.insert(a.id.to_string());
    }

    let mut epoch = 0;
    for op in input.ops.iter().take(256) {
        let before = loads(&e);
        match op {
            Op::Route(r) => {
                let policy = Arc::clone(e.policy());
                let (c, known) = contact(r, &policy);
                route(&mut e, &mut m, &c, known, now);
            }
            Op::Call {
                contact,
                scheduling,
                chat,
                urgent,
            } => {
                let intent = if *scheduling { "scheduling" } else { "billing" };
                let mut c = Contact::new(format!("c{}", contact % 24), intent);
                c.identity = Identity::Verified;
                if *chat {
                    c.channel = Channel::Chat;
                }
                if *urgent {
                    c.urgency = Urgency::Urgent;
                }
                route(&mut e, &mut m, &c, true, now);
            }
            Op::Confirm(k) if !m.offers.is_empty() => {
                let (r, agent, contact, expires_at) =
                    m.offers.remove(usize::from(*k) % m.offers.len());
                match e.apply(Confirm(r), now) {
                    Ok((a, c)) => {
                        assert!(now < expires_at, "confirmed {r} after its TTL");
                        assert_eq!(
                            (&*a, &c),
                            (agent.as_str(), &contact),
                            "confirmed someone else"
                        );
                        if m.assignments.contains(&r) {
                            m.waiting.remove(&c);
                        }
                        m.active.push((a.to_string(), c));
                    }
                    Err(err) => {
                        let _ = status(err);
                    }
                }
            }
            Op::Release(k, why) if !m.offers.is_empty() => {
                let (r, _, contact, expires_at) = m.offers.remove(usize::from(*k) % m.offers.len());
                let reason = [
                    ReleaseReason::Unspecified,
                    ReleaseReason::Rejected,
                    ReleaseReason::NoAnswer,
                    ReleaseReason::CallerHungUp,
                    ReleaseReason::TransferFailed,
                ][usize::from(*why) % 5];
                let hung_up = reason == ReleaseReason::CallerHungUp && m.assignments.contains(&r);
                if e.apply(Release(r, reason), now).is_ok() {
                    if hung_up {
                        m.waiting.remove(&contact);
                    }
                    assert!(now < expires_at, "released {r} after its TTL");
                }
            }
            Op::Complete(k) if !m.active.is_empty() => {
                let (agent, contact) = m.active.remove(usize::from(*k) % m.active.len());
                let until = e.apply(
                    Complete {
                        agent_id: agent.to_owned(),
                        contact_id: contact.to_owned(),
                    },
                    now,
                );
                assert!(
                    matches!(until, Ok(t) if t >= now),
                    "completing an active contact: {until:?}"
                );
            }
            Op::CompleteAny { agent, contact } => {
                let ids = agent_ids();
                let agent = &ids[usize::from(*agent) % ids.len()];
                let contact = format!("c{}", contact % 24);
                let listed = m
                    .active
                    .iter()
                    .position(|(a, c)| a == agent && *c == contact);
                let done = e.apply(
                    Complete {
                        agent_id: agent.to_owned(),
                        contact_id: contact.to_owned(),
                    },
                    now,
                );
                assert_eq!(
                    done.is_ok(),
                    listed.is_some(),
                    "complete {agent} {contact}: {done:?}"
                );
                if let Some(i) = listed {
                    m.active.remove(i);
                }
            }
            Op::SetState { agent, state } => {
                let ids = agent_ids();
                let agent = &ids[usize::from(*agent) % ids.len()];
                let state = AgentState::ALL[usize::from(*state) % AgentState::ALL.len()];
                let done = e.apply(
                    SetAgentState {
                        agent_id: agent.to_owned(),
                        state,
                    },
                    now,
                );
                assert_eq!(
                    done.is_ok(),
                    m.agents.contains(agent),
                    "set_state {agent}: {done:?}"
                );
                if let Ok(previous) = done {
                    let _ = pb::AgentState::from(previous);
                }
            }
            Op::Remove(a) => {
                let ids = agent_ids();
                let agent = &ids[usize::from(*a) % ids.len()];
                match e.apply(RemoveAgent(agent.to_owned()), now) {
                    Ok(()) => {
                        assert!(m.agents.remove(agent), "removed {agent}, never added");
                        assert!(
                            !m.active.iter().any(|(ag, _)| ag == agent),
                            "removed {agent} while it held an active contact"
                        );
                        m.offers.retain(|(_, ag, _, _)| ag != agent);
                    }
                    Err(EngineError::AgentBusy { .. }) => {
                        assert!(m.agents.contains(agent), "{agent} busy, never added");
                    }
                    Err(EngineError::UnknownAgent(_)) => {
                        assert!(!m.agents.contains(agent), "{agent} added, not found");
                    }
                    Err(other) => panic!("remove {agent}: {other:?}"),
                }
            }
            Op::Upsert(u) => {
                let spec = upsert_spec(u);
                if spec.validate().is_ok() {
                    let id = spec.id.clone();
                    let (_, created) = e.apply(UpsertAgent(spec), now).unwrap();
                    assert_eq!(created, m.agents.insert(id), "upsert's `created` is wrong");
                }
            }
            Op::Wait(w) => {
                now += wait(w);
                e.apply(Tick, now).unwrap();
            }
            Op::Cancel(c) => {
                let id = format!("c{}", c % 24);
                let done = e.apply(Cancel(id.to_owned()), now);
                assert_eq!(done.is_ok(), m.waiting.remove(&id), "cancel {id}: {done:?}");
            }
            Op::Reload(k) => {
                e.apply(
                    ReplacePolicy(Arc::clone(&policies[usize::from(*k) % policies.len()])),
                    now,
                )
                .unwrap();
            }
            Op::Queues => list_queues(&mut e, now),
            Op::Watch(k) => {
                let filter = match k % 3 {
                    0 => WatchFilter::default(),
                    1 => WatchFilter {
                        agents: [format!("b{}", k % 4)].into(),
                        ..WatchFilter::default()
                    },
                    _ => WatchFilter {
                        teams: ["Billing".into()].into(),
                        ..WatchFilter::default()
                    },
                };
                let (id, live) = e.apply(Watch(filter), now).unwrap();
                for event in &live {
                    // Offers still live; callbacks and moves nobody watched.
                    match event {
                        Event::Assigned(a) => assert!(
                            m.assignments.contains(&a.offer.reservation),
                            "resent an offer never made"
                        ),
                        Event::CallbackInstead { contact_id, .. } => {
                            assert!(
                                !m.waiting.contains(contact_id),
                                "a stale callback for {contact_id}"
                            )
                        }
                        Event::Moved { contact_id, .. } => {
                            assert!(
                                m.waiting.contains(contact_id),
                                "a stale move for {contact_id}"
                            )
                        }
                        Event::Withdrawn { .. } => panic!("a withdrawal is never kept: {event:?}"),
                    }
                    let _ = pb::AssignmentEvent::from(event).encode_to_vec();
                }
                watchers.push(id);
            }
            Op::Restart => {
                epoch += 1;
                e.apply(Command::Restarted(Restarted { epoch }), now)
                    .unwrap();
                watchers.clear();
                assert_eq!(e.watchers(), 0);
            }
            Op::Unwatch(k) if !watchers.is_empty() => {
                let id = watchers.remove(usize::from(*k) % watchers.len());
                e.apply(Unwatch(id), now).unwrap();
            }
            Op::Path(c) => {
                if let Some(hops) = e.path(&format!("c{}", c % 24)) {
                    assert!(hops.len() <= max_hops.max(1), "{} hops kept", hops.len());
                    for hop in hops {
                        let _ = pb::ContactHop::from(hop).encode_to_vec();
                    }
                }
            }
            _ => {}
        }
        for event in e.take_events() {
            match &event {
                Event::Assigned(a) => {
                    let (contact_id, offer) = (&a.contact_id, &a.offer);
                    assert!(
                        m.waiting.contains(contact_id),
                        "assigned {contact_id}, which does not wait"
                    );
                    m.assignments.insert(offer.reservation);
                    m.offers.push((
                        offer.reservation,
                        offer.agent_id.to_string(),
                        contact_id.clone(),
                        offer.expires_at,
                    ));
                }
                Event::CallbackInstead { contact_id, .. } => {
                    assert!(
                        m.waiting.remove(contact_id),
                        "called back {contact_id}, which does not wait"
                    );
                }
                Event::Withdrawn { reservation, .. } => {
                    assert!(
                        m.assignments.contains(reservation),
                        "withdrew an offer never made"
                    );
                }
                Event::Moved { contact_id, .. } => {
                    assert!(
                        m.waiting.contains(contact_id),
                        "moved {contact_id}, which does not wait"
                    );
                }
            }
            let _ = pb::AssignmentEvent::from(&event).encode_to_vec();
        }
        check_invariants(&e);
        // No agent gains work on a channel while at or over its capacity
        // (a profile change may lower capacity below work in progress).
        let after = loads(&e);
        for (i, agent) in e.roster().agents().iter().enumerate() {
            for c in Channel::ALL {
                let k = c.index();
                let was = before.get(i).map_or(0, |l| l[k]);
                assert!(
                    after[i][k] <= u16::from(agent.capacity[k]) || after[i][k] <= was,
                    "{} went from {was} to {} contacts on {c}, capacity {}",
                    agent.id,
                    after[i][k],
                    agent.capacity[k]
                );
            }
        }
        let unexpired = m.offers.iter().filter(|o| o.3 > now).count();
        assert!(
            e.live_reservations() <= unexpired,
            "{} live reservations, {unexpired} offers within their TTL",
            e.live_reservations()
        );
        assert_eq!(
            e.waiting_contacts(),
            m.waiting.len(),
            "the engine holds {} waiting contacts, {} were told they wait",
            e.waiting_contacts(),
            m.waiting.len()
        );
    }
});
