//! Soak: the real binary for `SOAK_MINUTES` (default 10) under a steady mix
//! of distinct contacts (some retried with their request id), confirms,
//! releases, lapses, completions, cancels, agents flapping between away
//! and available, and a policy reload (SIGHUP) every minute that changes
//! the waiting lines and their relaxation steps. Each minute it prints the
//! server's resident memory, the status codes seen and RouteContact p99.
//!
//! A client-side ledger of every answer is the oracle. It fails the run if
//! an agent was offered a contact while it still held a live reservation or
//! a voice call, if a retry got another decision, or if a contact that was
//! queued is neither assigned, called back, cancelled, nor still waiting at
//! the end (a lost caller), and if the lines are not empty once everyone
//! is cancelled (a phantom).
//!
//! Run with `cargo bench --bench soak` (`SOAK_MINUTES=1` for a short one);
//! figures go in BENCHMARKS.md.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use careroute::grpc::pb::{self, routing_service_client::RoutingServiceClient};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

/// The reservation TTL of the example policy.
const TTL: Duration = Duration::from_secs(15);
/// Agents per queue under test.
const AGENTS_PER_QUEUE: usize = 12;
/// Concurrent client workers, each pacing its own loop.
const WORKERS: usize = 8;
/// Pause between one worker's operations.
const PACE: Duration = Duration::from_millis(4);

/// The example policy open around the clock, with lines on scheduling and
/// billing; `variant` changes the lines and steps as an operator would.
fn policy(variant: usize) -> String {
    let base = careroute::policy::DEFAULT_POLICY
        .replace(
            "hours = { mon = \"09:00-17:00\", tue = \"09:00-17:00\", wed = \"09:00-17:00\", thu = \"09:00-17:00\", fri = \"09:00-17:00\" }\nholidays = [\"2026-11-26\", \"2026-12-25\", \"2027-01-01\"]",
            "hours = { mon = \"00:00-24:00\", tue = \"00:00-24:00\", wed = \"00:00-24:00\", thu = \"00:00-24:00\", fri = \"00:00-24:00\", sat = \"00:00-24:00\", sun = \"00:00-24:00\" }",
        )
        .replacen(
            "transfer_address = \"sip:billing@pbx.careroute.example\"",
            "transfer_address = \"sip:billing@pbx.careroute.example\"\nmax_waiting = 20\nmax_wait = \"2h\"\nsteps = [{ after = \"20s\", skills = { billing = 1 } }]",
            1,
        )
        .replace("max_wait = \"15m\"", "max_wait = \"2h\"");
    match variant % 3 {
        0 => base,
        1 => base
            .replacen("max_waiting = 10", "max_waiting = 14", 1)
            .replacen(
                "steps = [{ after = \"20s\", skills = { billing = 1 } }]",
                "",
                1,
            ),
        _ => base
            .replacen("max_waiting = 20", "max_waiting = 6", 1)
            .replacen(
                "  { after = \"2m\", skills = { scheduling = 1 } },\n",
                "",
                1,
            ),
    }
}

/// The server as a child process, as the end-to-end tests start it.
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What the client knows of one agent.
#[derive(Default)]
struct AgentBook {
    /// A reservation not yet settled by us, its contact, and when we
    /// learnt of it.
    offer: Option<(String, String, Instant)>,
    /// A voice contact confirmed (true) or being confirmed (false), not
    /// yet completed.
    active: Option<(String, bool)>,
    /// Offers that reached us while a confirm was on its way: legitimate if
    /// it fails (the reservation had lapsed), a double booking if it works.
    while_confirming: Vec<String>,
}

/// Everything the client was told, to check the server against.
#[derive(Default)]
struct Ledger {
    agents: HashMap<String, AgentBook>,
    /// Contacts queued and not yet settled (confirmed, called back or
    /// cancelled).
    waiting: HashSet<String>,
    /// Contacts we cancelled (or are cancelling): an offer of one that
    /// reaches us late was withdrawn with it.
    cancelled: HashSet<String>,
    /// Offers to settle: (reservation, agent, contact, from a line).
    to_settle: Vec<(String, String, String, bool)>,
    /// Confirmed contacts to complete: (agent, contact).
    to_complete: Vec<(String, String)>,
    violations: Vec<String>,
    /// Per minute: status codes by name, RouteContact latencies.
    codes: BTreeMap<String, u64>,
    latencies: Vec<Duration>,
    offers: u64,
    queued: u64,
    lost: u64,
}

impl Ledger {
    /// An offer of `contact` to `agent` arrived: it must be free.
    fn offered(&mut self, agent: &str, reservation: &str, contact: &str, from_line: bool) {
        self.offers += 1;
        let book = self.agents.entry(agent.to_owned()).or_default();
        if let Some((held, _, since)) = &book.offer
            && since.elapsed() + Duration::from_secs(1) < TTL
        {
            self.violations.push(format!(
                "agent {agent} offered {contact} ({reservation}, from a line: {from_line}) while holding {held} for {:?}",
                since.elapsed()
            ));
        }
        match &book.active {
            Some((active, true)) => self.violations.push(format!(
                "agent {agent} offered {contact} while on a call with {active}"
            )),
            Some((_, false)) => book.while_confirming.push(reservation.to_owned()),
            None => {}
        }
        if self.cancelled.contains(contact) {
            // Withdrawn by our cancel before we heard of it.
            book.offer = None;
            return;
        }
        book.offer = Some((reservation.to_owned(), contact.to_owned(), Instant::now()));
        self.to_settle.push((
            reservation.to_owned(),
            agent.to_owned(),
            contact.to_owned(),
            from_line,
        ));
    }

    /// We are about to cancel `contact`: any offer of it is withdrawn with
    /// it, and the server may re-offer that agent before the call returns.
    fn withdraw(&mut self, contact: &str) {
        self.cancelled.insert(contact.to_owned());
        self.to_settle.retain(|(_, _, c, _)| c != contact);
        for book in self.agents.values_mut() {
            if book.offer.as_ref().is_some_and(|(_, c, _)| c == contact) {
                book.offer = None;
            }
        }
    }

    /// The server withdrew an offer: nothing to settle, the agent is free.
    fn withdrawn(&mut self, reservation: &str) {
        self.to_settle.retain(|(r, _, _, _)| r != reservation);
        for book in self.agents.values_mut() {
            if book
                .offer
                .as_ref()
                .is_some_and(|(r, _, _)| r == reservation)
            {
                book.offer = None;
            }
        }
    }

    fn code(&mut self, code: tonic::Code) {
        *self.codes.entry(format!("{code:?}")).or_default() += 1;
    }
}

fn agent_spec(id: &str, skill: &str) -> pb::UpsertAgentRequest {
    pb::UpsertAgentRequest {
        agent_id: id.into(),
        team: "Soak".into(),
        transfer_address: format!("sip:{id}@pbx"),
        skills: vec![pb::SkillLevel {
            skill: skill.into(),
            proficiency: 3,
        }],
        languages: vec!["en".into()],
        channels: vec![pb::ChannelCapacity {
            channel: pb::Channel::Voice.into(),
            capacity: 1,
        }],
    }
}

fn state(id: &str, s: pb::AgentState) -> pb::SetAgentStateRequest {
    pb::SetAgentStateRequest {
        agent_id: id.into(),
        state: s.into(),
    }
}

fn agent_ids() -> Vec<(String, &'static str)> {
    ["scheduling", "billing"]
        .into_iter()
        .flat_map(|skill| (0..AGENTS_PER_QUEUE).map(move |i| (format!("{skill}-{i}"), skill)))
        .collect()
}

/// One worker: routes, settles offers, completes calls, cancels and flaps.
async fn worker(
    w: usize,
    mut client: RoutingServiceClient<Channel>,
    ledger: Arc<Mutex<Ledger>>,
    until: Instant,
) {
    let mut rng = StdRng::seed_from_u64(w as u64);
    let mut n = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(PACE).await;
        n += 1;
        let roll = rng.random_range(0..100);
        if roll < 40 {
            let id = format!("soak-{w}-{n}");
            let mut c = pb::RouteContactRequest {
                contact_id: id.clone(),
                channel: pb::Channel::Voice.into(),
                intent: if rng.random_bool(0.5) {
                    "scheduling"
                } else {
                    "billing"
                }
                .into(),
                identity: pb::Identity::Verified.into(),
                request_id: format!("req-{id}"),
                ..Default::default()
            };
            c.urgency = pb::Urgency::Routine.into();
            let started = Instant::now();
            let answer = client.route_contact(c.clone()).await;
            let took = started.elapsed();
            let first = {
                let mut l = ledger.lock().unwrap();
                l.latencies.push(took);
                match answer {
                    Ok(r) => {
                        l.code(tonic::Code::Ok);
                        let d = r.into_inner();
                        match &d.outcome {
                            Some(pb::route_contact_response::Outcome::Agent(a)) => {
                                l.offered(&a.agent_id, &a.reservation_id, &id, false)
                            }
                            Some(pb::route_contact_response::Outcome::Queued(_)) => {
                                l.queued += 1;
                                l.waiting.insert(id.clone());
                            }
                            _ => {}
                        }
                        Some(d.decision_id)
                    }
                    Err(e) => {
                        l.code(e.code());
                        None
                    }
                }
            };
            // A retry of the same request gets the same decision.
            if let Some(first) = first
                && rng.random_bool(0.1)
                && let Ok(again) = client.route_contact(c).await
                && again.get_ref().decision_id != first
            {
                ledger.lock().unwrap().violations.push(format!(
                    "retry of {id} decided anew: {first} then {}",
                    again.get_ref().decision_id
                ));
            }
        } else if roll < 75 {
            let job = {
                let mut l = ledger.lock().unwrap();
                if l.to_settle.is_empty() {
                    None
                } else {
                    let i = rng.random_range(0..l.to_settle.len());
                    Some(l.to_settle.swap_remove(i))
                }
            };
            let Some((reservation, agent, contact, from_line)) = job else {
                continue;
            };
            let fate = rng.random_range(0..10);
            if fate < 7 {
                // Marked before the call: the server may re-offer the agent
                // the moment it answers.
                {
                    let mut l = ledger.lock().unwrap();
                    let book = l.agents.entry(agent.clone()).or_default();
                    book.offer = None;
                    book.active = Some((contact.clone(), false));
                    book.while_confirming.clear();
                }
                let r = client
                    .confirm_reservation(pb::ConfirmReservationRequest {
                        reservation_id: reservation,
                        ..Default::default()
                    })
                    .await;
                let mut l = ledger.lock().unwrap();
                match r {
                    Ok(_) => {
                        l.code(tonic::Code::Ok);
                        if from_line {
                            l.waiting.remove(&contact);
                        }
                        let book = l.agents.entry(agent.clone()).or_default();
                        book.active = Some((contact.clone(), true));
                        let doubled = std::mem::take(&mut book.while_confirming);
                        if !doubled.is_empty() {
                            l.violations.push(format!(
                                "agent {agent} offered {doubled:?} while its call with {contact} was being confirmed"
                            ));
                        }
                        l.to_complete.push((agent, contact));
                    }
                    Err(e) => {
                        l.code(e.code());
                        let book = l.agents.entry(agent).or_default();
                        book.active = None;
                        book.while_confirming.clear();
                    }
                }
            } else if fate < 9 {
                {
                    let mut l = ledger.lock().unwrap();
                    l.agents.entry(agent.clone()).or_default().offer = None;
                }
                let r = client
                    .release_reservation(pb::ReleaseReservationRequest {
                        reservation_id: reservation,
                        reason: pb::ReleaseReason::Rejected.into(),
                        ..Default::default()
                    })
                    .await;
                let code = r.err().map_or(tonic::Code::Ok, |e| e.code());
                ledger.lock().unwrap().code(code);
            }
            // else: let it lapse; its TTL frees the agent.
        } else if roll < 88 {
            let job = {
                let mut l = ledger.lock().unwrap();
                if l.to_complete.is_empty() {
                    None
                } else {
                    let i = rng.random_range(0..l.to_complete.len());
                    Some(l.to_complete.swap_remove(i))
                }
            };
            let Some((agent, contact)) = job else {
                continue;
            };
            ledger
                .lock()
                .unwrap()
                .agents
                .entry(agent.clone())
                .or_default()
                .active = None;
            let r = client
                .complete_contact(pb::CompleteContactRequest {
                    agent_id: agent,
                    contact_id: contact,
                    ..Default::default()
                })
                .await;
            let code = r.err().map_or(tonic::Code::Ok, |e| e.code());
            ledger.lock().unwrap().code(code);
        } else if roll < 94 {
            let contact = {
                let mut l = ledger.lock().unwrap();
                let contact = l.waiting.iter().next().cloned();
                if let Some(contact) = &contact {
                    l.withdraw(contact);
                }
                contact
            };
            let Some(contact) = contact else { continue };
            let r = client
                .cancel_contact(pb::CancelContactRequest {
                    contact_id: contact.clone(),
                    ..Default::default()
                })
                .await;
            let mut l = ledger.lock().unwrap();
            match r {
                Ok(_) => {
                    l.code(tonic::Code::Ok);
                    l.waiting.remove(&contact);
                }
                // Confirmed meanwhile, or called back: the ledger learns it
                // from the confirm or the event.
                Err(e) => l.code(e.code()),
            }
        } else {
            let ids = agent_ids();
            let (id, _) = &ids[rng.random_range(0..ids.len())];
            let to = if rng.random_bool(0.5) {
                pb::AgentState::Away
            } else {
                pb::AgentState::Available
            };
            let r = client.set_agent_state(state(id, to)).await;
            let code = r.err().map_or(tonic::Code::Ok, |e| e.code());
            ledger.lock().unwrap().code(code);
        }
    }
}

/// Every assignment event: offers to settle, callbacks that end a wait.
async fn watcher(mut client: RoutingServiceClient<Channel>, ledger: Arc<Mutex<Ledger>>) {
    let mut stream = client
        .watch_assignments(pb::WatchAssignmentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(event)) = stream.message().await {
        let mut l = ledger.lock().unwrap();
        match event.event {
            Some(pb::assignment_event::Event::Agent(a)) => {
                l.offered(&a.agent_id, &a.reservation_id, &event.contact_id, true)
            }
            Some(pb::assignment_event::Event::Callback(_)) => {
                l.waiting.remove(&event.contact_id);
            }
            Some(pb::assignment_event::Event::Withdrawn(w)) => l.withdrawn(&w.reservation_id),
            Some(pb::assignment_event::Event::Moved(_)) | None => {}
        }
    }
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort_unstable();
    latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let dir = std::env::temp_dir().join(format!("careroute-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy(0)).unwrap();
    let server = process::Process::start_logging(
        &["--policy", policy_path.to_str().unwrap()],
        "warn,careroute::server=info",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (violations, lost, phantom) = rt.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = RoutingServiceClient::new(channel.clone());
        for (id, skill) in agent_ids() {
            client.upsert_agent(agent_spec(&id, skill)).await.unwrap();
            client
                .set_agent_state(state(&id, pb::AgentState::Available))
                .await
                .unwrap();
        }
        tokio::spawn(watcher(client.clone(), Arc::clone(&ledger)));
        let started = Instant::now();
        let until = started + Duration::from_secs(minutes * 60);
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| tokio::spawn(worker(w, client.clone(), Arc::clone(&ledger), until)))
            .collect();
        println!(
            "{:>6} {:>9} {:>9} {:>8} {:>8} {:>8}  codes",
            "minute", "rss MiB", "p99 ms", "offers", "queued", "waiting"
        );
        for minute in 1..=minutes {
            tokio::time::sleep_until((started + Duration::from_secs(minute * 60)).into()).await;
            let (codes, p99_ms, offers, queued, waiting) = {
                let mut l = ledger.lock().unwrap();
                let p = p99(&mut l.latencies).as_secs_f64() * 1e3;
                l.latencies.clear();
                let codes = std::mem::take(&mut l.codes);
                (codes, p, l.offers, l.queued, l.waiting.len())
            };
            println!(
                "{minute:>6} {:>9.1} {p99_ms:>9.2} {offers:>8} {queued:>8} {waiting:>8}  {codes:?}",
                rss_mib(server.id())
            );
            if minute < minutes {
                std::fs::write(&policy_path, policy(minute as usize)).unwrap();
                server.signal("HUP");
            }
        }
        for w in workers {
            w.await.unwrap();
        }
        // Everyone still waiting is cancelled: each must still be known.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let waiting: Vec<String> = ledger.lock().unwrap().waiting.iter().cloned().collect();
        let mut lost = Vec::new();
        for contact in waiting {
            ledger.lock().unwrap().withdraw(&contact);
            let r = client
                .cancel_contact(pb::CancelContactRequest {
                    contact_id: contact.clone(),
                    ..Default::default()
                })
                .await;
            if let Err(e) = r {
                // Confirmed or called back in the last moments is fine.
                if ledger.lock().unwrap().waiting.contains(&contact) {
                    lost.push(format!("{contact}: {}", e.message()));
                }
            }
        }
        let queues = client
            .list_queues(pb::ListQueuesRequest {})
            .await
            .unwrap()
            .into_inner();
        let phantom: Vec<String> = queues
            .queues
            .iter()
            .filter(|q| q.waiting > 0)
            .map(|q| format!("{} shows {} waiting", q.queue_id, q.waiting))
            .collect();
        let l = ledger.lock().unwrap();
        (l.violations.clone(), lost, phantom)
    });
    ledger.lock().unwrap().lost = lost.len() as u64;
    for line in server.logs().lines() {
        if line.contains("\"ERROR\"") || line.contains("\"WARN\"") {
            println!("server: {line}");
        }
    }
    println!(
        "end: {} violations, {} lost waiting contacts, {} phantom lines",
        violations.len(),
        lost.len(),
        phantom.len()
    );
    for v in violations.iter().chain(&lost).chain(&phantom).take(20) {
        println!("  {v}");
    }
    assert!(
        violations.is_empty() && lost.is_empty() && phantom.is_empty(),
        "the soak found faults"
    );
}
