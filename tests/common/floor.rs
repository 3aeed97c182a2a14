//! A floor for tests against the real binary on the real clock: a policy
//! of the tests' own, open round the clock, with knobs for what varies, and
//! the client calls a CTI and an IVR make on it.

use std::path::PathBuf;

use careroute::grpc::pb::{self, routing_service_client::RoutingServiceClient};
use tonic::transport::Channel;

use super::{contact, process::Process};

/// What varies between the tests' policies.
pub struct Knobs {
    pub missed_offers_to_pause: u32,
    pub max_wait_in_line: &'static str,
    /// Whether the scheduling queue is closed (a holiday around today).
    pub scheduling_closed: bool,
    pub reservation_ttl: &'static str,
}

pub const KNOBS: Knobs = Knobs {
    missed_offers_to_pause: 3,
    max_wait_in_line: "1h",
    scheduling_closed: false,
    reservation_ttl: "2s",
};

/// A small policy of the tests' own, open round the clock (so tests on the
/// real clock run at any hour): billing (team Billing), scheduling (team
/// Access, which can be closed by a holiday around today) with an on-call
/// queue (team Nurse Line).
pub fn policy(k: &Knobs) -> String {
    let all_day = "hours = { mon = \"00:00-24:00\", tue = \"00:00-24:00\", wed = \"00:00-24:00\", thu = \"00:00-24:00\", fri = \"00:00-24:00\", sat = \"00:00-24:00\", sun = \"00:00-24:00\" }";
    let today = chrono::Utc::now().date_naive();
    let holidays = if k.scheduling_closed {
        let days: Vec<String> = [-1, 0, 1]
            .iter()
            .map(|d| format!("\"{}\"", today + chrono::Duration::days(*d)))
            .collect();
        format!("holidays = [{}]", days.join(", "))
    } else {
        String::new()
    };
    format!(
        r#"version = "cti-test"
default_queue = "billing"
main_schedule = "always"
reservation_ttl = "{ttl}"
reoffer_after = "2s"
missed_offers_to_pause = {pause}
intake_fields = ["contact_reason", "callback_number"]

[emergency]
script_id = "SCRIPT-EMERGENCY"
instruction = "Emergency."
level = 3
team = "Nurse Line"

[authenticate]
script_id = "SCRIPT-AUTH"
instruction = "Verify."
failed_script_id = "SCRIPT-AUTH-FAILED"
failed_instruction = "Not verified."

[intents.billing]
callback_window = "4h"
priority = 4

[intents.scheduling]
callback_window = "2h"
priority = 3

[schedules.always]
time_zone = "UTC"
{all_day}

[schedules.desk]
time_zone = "UTC"
{all_day}
{holidays}

[[queues]]
id = "billing"
level = 1
team = "Billing"
skills = {{ billing = 1 }}
channels = ["voice"]
schedule = "always"
transfer_address = "sip:billing@pbx"
max_waiting = 20
max_wait = "2h"
max_wait_in_line = "{limit}"

[[queues]]
id = "scheduling"
level = 1
team = "Access"
skills = {{ scheduling = 1 }}
channels = ["voice"]
schedule = "desk"
transfer_address = "sip:scheduling@pbx"
max_waiting = 20
max_wait = "2h"
after_hours_urgent_to = "oncall"

[[queues]]
id = "oncall"
level = 1
team = "Nurse Line"
skills = {{ on_call = 1 }}
channels = ["voice"]
schedule = "always"
transfer_address = "sip:oncall@pbx"
max_waiting = 20
max_wait = "2h"

[[rules]]
id = "billing"
when = {{ intent = ["billing"] }}
route_to = "billing"

[[rules]]
id = "scheduling"
when = {{ intent = ["scheduling"] }}
route_to = "scheduling"
"#,
        pause = k.missed_offers_to_pause,
        ttl = k.reservation_ttl,
        limit = k.max_wait_in_line,
    )
}

/// The binary on a policy file written from `knobs`; the file's path, for
/// a reload.
pub fn start(name: &str, knobs: &Knobs) -> (Process, PathBuf) {
    let dir = super::process::scratch_dir(&format!("cti-{name}"));
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy(knobs)).unwrap();
    let p = Process::start(&["--policy", path.to_str().unwrap()]).keeping(dir);
    (p, path)
}

pub async fn client(p: &Process) -> RoutingServiceClient<Channel> {
    RoutingServiceClient::connect(format!("http://{}", p.grpc))
        .await
        .unwrap()
}

/// Registers an available agent with one skill, speaking English.
pub async fn agent(c: &mut RoutingServiceClient<Channel>, id: &str, team: &str, skill: &str) {
    agent_speaking(c, id, team, skill, &["en"]).await;
}

/// Registers an available agent with one skill, speaking `languages`.
pub async fn agent_speaking(
    c: &mut RoutingServiceClient<Channel>,
    id: &str,
    team: &str,
    skill: &str,
    languages: &[&str],
) {
    c.upsert_agent(pb::UpsertAgentRequest {
        agent_id: id.into(),
        team: team.into(),
        transfer_address: format!("sip:{id}@pbx"),
        skills: vec![pb::SkillLevel {
            skill: skill.into(),
            proficiency: 3,
        }],
        languages: languages.iter().map(|l| l.to_string()).collect(),
        channels: vec![pb::ChannelCapacity {
            channel: pb::Channel::Voice.into(),
            capacity: 1,
        }],
    })
    .await
    .unwrap();
    set_state(c, id, pb::AgentState::Available).await;
}

/// Sets an agent's state; returns the previous one.
pub async fn set_state(
    c: &mut RoutingServiceClient<Channel>,
    id: &str,
    state: pb::AgentState,
) -> pb::AgentState {
    c.set_agent_state(pb::SetAgentStateRequest {
        agent_id: id.into(),
        state: state.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .previous()
}

/// Routes `id` with `intent`, which must reach an agent; confirms it.
pub async fn busy(c: &mut RoutingServiceClient<Channel>, id: &str, intent: &str) -> String {
    let d = c
        .route_contact(contact(id, intent))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::route_contact_response::Outcome::Agent(a)) = d.outcome else {
        panic!("expected an agent: {d:?}")
    };
    confirm(c, &a.reservation_id).await;
    a.agent_id
}

/// Routes `id`, which must wait in line.
pub async fn queue(c: &mut RoutingServiceClient<Channel>, mut r: pb::RouteContactRequest) {
    let id = r.contact_id.clone();
    r.request_id = format!("{id}-1");
    let d = c.route_contact(r).await.unwrap().into_inner();
    assert!(
        matches!(
            d.outcome,
            Some(pb::route_contact_response::Outcome::Queued(_))
        ),
        "{id} should wait: {d:?}"
    );
}

pub async fn confirm(c: &mut RoutingServiceClient<Channel>, reservation: &str) {
    c.confirm_reservation(pb::ConfirmReservationRequest {
        reservation_id: reservation.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// What GetContactStatus says of `id`.
pub async fn status(
    c: &mut RoutingServiceClient<Channel>,
    id: &str,
) -> Result<pb::GetContactStatusResponse, tonic::Status> {
    c.get_contact_status(pb::GetContactStatusRequest {
        contact_id: id.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// WatchEvents resumed after record `after`.
pub async fn watch_after(
    c: &mut RoutingServiceClient<Channel>,
    after: u64,
) -> Result<tonic::Streaming<pb::RoutingEvent>, tonic::Status> {
    c.watch_events(pb::WatchEventsRequest {
        after_sequence: Some(after),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The next routing event of a stream, within 10 s.
pub async fn next_event(s: &mut tonic::Streaming<pb::RoutingEvent>) -> pb::RoutingEvent {
    tokio::time::timeout(std::time::Duration::from_secs(10), s.message())
        .await
        .expect("no event within 10 s")
        .unwrap()
        .expect("the stream ended")
}

/// The sequence a refused resume names as the first it can resume after.
pub fn resumable_after(refused: &tonic::Status) -> u64 {
    let m = refused.message();
    let after = m
        .split("resume after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no resumable sequence in {m:?}"));
    after.parse().unwrap()
}

/// Whether `e` tells the decision for `contact_id`.
pub fn decides(e: &pb::RoutingEvent, contact_id: &str) -> bool {
    matches!(&e.event, Some(pb::routing_event::Event::Decision(d)) if d.contact_id == contact_id)
}

/// Whether `next` follows `prev` on a routing event stream: the next event
/// of the same command, or the first of a later one.
pub fn follows(prev: &pb::RoutingEvent, next: &pb::RoutingEvent) -> bool {
    (next.sequence == prev.sequence && next.index == prev.index + 1)
        || (next.sequence > prev.sequence && next.index == 0)
}
