//! Conversion between protobuf messages and domain types, validating every
//! request field once, here. A refusal is INVALID_ARGUMENT naming the field
//! and what is expected; it never echoes the value, which could be patient
//! data sent by mistake.

use std::{collections::HashSet, fmt::Display};

use prost_types::Timestamp;
use tonic::Status;

use super::events::Change;
use super::pb;
use super::status::{self, Violation};
use crate::engine::{
    AgentFilter, AgentOffer, AgentPage, AgentSpec, AgentView, CallbackOffer, ContactStatus,
    Decision, Event, Hop, HopKind, Outcome, Parked, Paused, ProfilePart, QueueView, ReservationId,
    WatchFilter, Withdrawal,
};
use crate::model::{
    AgentState, CallbackReason, Channel, Contact, Identity, Reason, ReleaseReason, Time,
    TransferFrom, Urgency, language_tag,
};
use crate::shape::{ADDRESS, ID, LANGUAGE, MAX_AGENT_LIST, Shape, TEXT, VALUE, WORD};

/// Most signals on one contact.
pub const MAX_SIGNALS: usize = 32;
/// Most attributes on one contact.
pub const MAX_ATTRIBUTES: usize = 16;

fn violation(field: impl Display, problem: impl Display) -> Violation {
    Violation {
        field: field.to_string(),
        description: problem.to_string(),
    }
}

/// Every field violation of one request, so a client fixes its request in
/// one go rather than one refusal at a time.
#[derive(Debug, Default)]
struct Violations(Vec<Violation>);

impl Violations {
    /// The value, or `None` with its violation noted.
    fn take<T>(&mut self, checked: Result<T, Violation>) -> Option<T> {
        checked.map_err(|v| self.0.push(v)).ok()
    }

    /// Notes a violation.
    fn add(&mut self, v: Violation) {
        self.0.push(v);
    }

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The refusal naming them all.
    fn refusal(self) -> Status {
        status::invalid(self.0)
    }
}

/// Checks one string field; empty is `None` (or an error if `required`).
fn checked(
    field: impl Display,
    value: String,
    shape: Shape,
    required: bool,
) -> Result<Option<String>, Violation> {
    if value.is_empty() {
        return if required {
            Err(violation(field, "required"))
        } else {
            Ok(None)
        };
    }
    match shape.problem(&value) {
        Some(problem) => Err(violation(field, problem)),
        None => Ok(Some(value)),
    }
}

fn required(field: impl Display, value: String, shape: Shape) -> Result<String, Violation> {
    checked(field, value, shape, true).map(Option::unwrap_or_default)
}

fn channel(field: impl Display, value: i32) -> Result<Channel, Violation> {
    match pb::Channel::try_from(value) {
        Ok(pb::Channel::Voice) => Ok(Channel::Voice),
        Ok(pb::Channel::Chat) => Ok(Channel::Chat),
        Ok(pb::Channel::Sms) => Ok(Channel::Sms),
        Ok(pb::Channel::Email) => Ok(Channel::Email),
        Ok(pb::Channel::Portal) => Ok(Channel::Portal),
        Ok(pb::Channel::Unspecified) => Err(violation(field, "required")),
        Err(_) => Err(violation(field, "not a value of the enum")),
    }
}

/// At most `max` entries in a list field.
fn at_most(field: &str, len: usize, max: usize) -> Result<(), Violation> {
    if len > max {
        return Err(violation(field, format!("more than {max} entries")));
    }
    Ok(())
}

impl TryFrom<pb::RouteContactRequest> for Contact {
    type Error = Status;

    fn try_from(r: pb::RouteContactRequest) -> Result<Contact, Status> {
        let mut v = Violations::default();
        let urgency = v.take(match pb::Urgency::try_from(r.urgency) {
            Ok(pb::Urgency::Unspecified | pb::Urgency::Routine) => Ok(Urgency::Routine),
            Ok(pb::Urgency::Urgent) => Ok(Urgency::Urgent),
            Ok(pb::Urgency::Emergency) => Ok(Urgency::Emergency),
            Err(_) => Err(violation("urgency", "not a value of the enum")),
        });
        let identity = v.take(match pb::Identity::try_from(r.identity) {
            Ok(pb::Identity::Unspecified | pb::Identity::NotAttempted) => {
                Ok(Identity::NotAttempted)
            }
            Ok(pb::Identity::Verified) => Ok(Identity::Verified),
            Ok(pb::Identity::Failed) => Ok(Identity::Failed),
            Err(_) => Err(violation("identity", "not a value of the enum")),
        });
        v.take(at_most("signals", r.signals.len(), MAX_SIGNALS));
        let signals: Vec<String> = r
            .signals
            .into_iter()
            .take(MAX_SIGNALS)
            .enumerate()
            .filter_map(|(i, s)| v.take(required(format!("signals[{i}]"), s, WORD)))
            .collect();
        v.take(at_most("attributes", r.attributes.len(), MAX_ATTRIBUTES));
        let mut attributes = Vec::with_capacity(r.attributes.len().min(MAX_ATTRIBUTES));
        // A map's keys are the client's words: a refusal names the map,
        // never a key (it could be anything), and says it once.
        let mut bad_keys = false;
        let mut bad_values = false;
        for (key, value) in r.attributes.into_iter().take(MAX_ATTRIBUTES) {
            let key = required("attributes", key, WORD).ok();
            let value = required("attributes", value, VALUE).ok();
            bad_keys |= key.is_none();
            bad_values |= value.is_none();
            if let (Some(key), Some(value)) = (key, value) {
                attributes.push((key, value));
            }
        }
        if bad_keys {
            v.add(violation(
                "attributes",
                format!(
                    "a key is not {} bytes or fewer of {}",
                    WORD.max,
                    WORD.describe()
                ),
            ));
        }
        if bad_values {
            v.add(violation(
                "attributes",
                format!(
                    "a value is not 1 to {} bytes of {}",
                    VALUE.max,
                    VALUE.describe()
                ),
            ));
        }
        // A map on the wire has no order: one order, so the same request
        // is logged (and replayed) the same way.
        attributes.sort_unstable();
        let transfer_from = match r.transfer_from {
            Some(t) => {
                let queue_id = v.take(required("transfer_from.queue_id", t.queue_id, ID));
                let agent_id = v.take(checked("transfer_from.agent_id", t.agent_id, ID, false));
                queue_id
                    .zip(agent_id)
                    .map(|(queue_id, agent_id)| Some(TransferFrom { queue_id, agent_id }))
            }
            None => Some(None),
        };
        let contact_id = v.take(required("contact_id", r.contact_id, ID));
        let request_id = v.take(checked("request_id", r.request_id, ID, false));
        let channel = v.take(channel("channel", r.channel));
        // An IVR that heard an emergency may not have told the intent, so
        // the field may be empty when the contact may be one (the engine,
        // which knows the emergency signals, asks for it otherwise).
        let emergency = urgency == Some(Urgency::Emergency) || !signals.is_empty();
        let intent =
            v.take(checked("intent", r.intent, WORD, !emergency).map(Option::unwrap_or_default));
        let language = v
            .take(checked("language", r.language, LANGUAGE, false))
            .map(|l| l.map(|l| language_tag(&l)));
        let preferred_agent_id = v.take(checked(
            "preferred_agent_id",
            r.preferred_agent_id,
            ID,
            false,
        ));
        match (
            contact_id,
            request_id,
            channel,
            intent,
            urgency,
            identity,
            language,
            transfer_from,
            preferred_agent_id,
        ) {
            (
                Some(contact_id),
                Some(request_id),
                Some(channel),
                Some(intent),
                Some(urgency),
                Some(identity),
                Some(language),
                Some(transfer_from),
                Some(preferred_agent_id),
            ) if v.is_empty() => Ok(Contact {
                contact_id,
                request_id,
                channel,
                intent,
                urgency,
                identity,
                language,
                escalation_requested: r.escalation_requested,
                signals,
                attributes,
                transfer_from,
                preferred_agent_id,
            }),
            _ => Err(v.refusal()),
        }
    }
}

impl TryFrom<pb::UpsertAgentRequest> for AgentSpec {
    type Error = Status;

    fn try_from(r: pb::UpsertAgentRequest) -> Result<AgentSpec, Status> {
        let mut v = Violations::default();
        v.take(at_most("skills", r.skills.len(), MAX_AGENT_LIST));
        v.take(at_most("languages", r.languages.len(), MAX_AGENT_LIST));
        v.take(at_most("channels", r.channels.len(), MAX_AGENT_LIST));
        // Each list keeps the request's index of every entry it took, so
        // a problem of the whole profile names the entry the client sent.
        let (skill_at, skills): (Vec<usize>, Vec<(String, u8)>) = r
            .skills
            .into_iter()
            .take(MAX_AGENT_LIST)
            .enumerate()
            .filter_map(|(i, s)| {
                let level = u8::try_from(s.proficiency).unwrap_or(u8::MAX);
                let skill = required(format!("skills[{i}].skill"), s.skill, WORD);
                v.take(skill).map(|skill| (i, (skill, level)))
            })
            .unzip();
        let (language_at, languages): (Vec<usize>, Vec<String>) = r
            .languages
            .into_iter()
            .take(MAX_AGENT_LIST)
            .enumerate()
            .filter_map(|(i, l)| {
                v.take(required(format!("languages[{i}]"), l, LANGUAGE))
                    .map(|l| (i, language_tag(&l)))
            })
            .unzip();
        let (channel_at, channels): (Vec<usize>, Vec<(Channel, u8)>) = r
            .channels
            .into_iter()
            .take(MAX_AGENT_LIST)
            .enumerate()
            .filter_map(|(i, c)| {
                let capacity = u8::try_from(c.capacity).unwrap_or(u8::MAX);
                v.take(channel(format!("channels[{i}].channel"), c.channel))
                    .map(|channel| (i, (channel, capacity)))
            })
            .unzip();
        let at = |list: &[usize], i: usize| list.get(i).copied().unwrap_or(i);
        let field = |part: ProfilePart| match part {
            ProfilePart::Id => "agent_id".to_owned(),
            ProfilePart::TransferAddress => "transfer_address".to_owned(),
            ProfilePart::Skill(i) => format!("skills[{}].skill", at(&skill_at, i)),
            ProfilePart::Proficiency(i) => format!("skills[{}].proficiency", at(&skill_at, i)),
            ProfilePart::Language(i) => format!("languages[{}]", at(&language_at, i)),
            ProfilePart::Channels => "channels".to_owned(),
            ProfilePart::Channel(i) => format!("channels[{}].channel", at(&channel_at, i)),
            ProfilePart::Capacity(i) => format!("channels[{}].capacity", at(&channel_at, i)),
        };
        let id = v.take(required("agent_id", r.agent_id, ID));
        let team = v.take(checked("team", r.team, TEXT, false));
        let transfer_address = v.take(required("transfer_address", r.transfer_address, ADDRESS));
        let mut spec = AgentSpec {
            id: String::new(),
            team: String::new(),
            transfer_address: String::new(),
            skills,
            languages,
            channels,
        };
        // What only the whole profile shows (proficiency and capacity
        // ranges, duplicates), with the rest.
        for problem in spec.profile_problems() {
            v.add(violation(field(problem.part), problem.describe(field)));
        }
        match (id, team, transfer_address) {
            (Some(id), Some(team), Some(transfer_address)) if v.is_empty() => {
                spec.id = id;
                spec.team = team.unwrap_or_default();
                spec.transfer_address = transfer_address;
                Ok(spec)
            }
            _ => Err(v.refusal()),
        }
    }
}

/// Most ids in each list of a watch filter.
pub const MAX_WATCH_LIST: usize = 10_000;

impl TryFrom<pb::WatchAssignmentsRequest> for WatchFilter {
    type Error = Status;

    fn try_from(r: pb::WatchAssignmentsRequest) -> Result<WatchFilter, Status> {
        let mut v = Violations::default();
        let mut list = |name: &str, values: Vec<String>, shape: Shape| {
            v.take(at_most(name, values.len(), MAX_WATCH_LIST));
            values
                .into_iter()
                .take(MAX_WATCH_LIST)
                .enumerate()
                .filter_map(|(i, value)| v.take(required(format!("{name}[{i}]"), value, shape)))
                .collect::<HashSet<_>>()
        };
        let filter = WatchFilter {
            agents: list("agent_ids", r.agent_ids, ID),
            teams: list("teams", r.teams, TEXT),
            queues: list("queue_ids", r.queue_ids, ID),
        };
        if v.is_empty() {
            Ok(filter)
        } else {
            Err(v.refusal())
        }
    }
}

/// Validates an agent id field.
pub fn agent_id(field: &str, value: String) -> Result<String, Violation> {
    required(field, value, ID)
}

/// Validates a contact id field.
pub fn contact_id(field: &str, value: String) -> Result<String, Violation> {
    required(field, value, ID)
}

/// Parses a reservation id field.
pub fn reservation_id(value: &str) -> Result<ReservationId, Violation> {
    if value.is_empty() {
        return Err(violation("reservation_id", "required"));
    }
    value.parse().map_err(|()| {
        violation(
            "reservation_id",
            "not a reservation id (r- and 32 hex digits)",
        )
    })
}

/// Converts an agent state field; unspecified is refused.
pub fn agent_state(value: i32) -> Result<AgentState, Violation> {
    match pb::AgentState::try_from(value) {
        Ok(pb::AgentState::Offline) => Ok(AgentState::Offline),
        Ok(pb::AgentState::Available) => Ok(AgentState::Available),
        Ok(pb::AgentState::Busy) => Ok(AgentState::Busy),
        Ok(pb::AgentState::WrapUp) => Ok(AgentState::WrapUp),
        Ok(pb::AgentState::Away) => Ok(AgentState::Away),
        Ok(pb::AgentState::NotResponding) => Ok(AgentState::NotResponding),
        Ok(pb::AgentState::Unspecified) => Err(violation("state", "required")),
        Err(_) => Err(violation("state", "not a value of the enum")),
    }
}

/// Converts a release reason; unspecified is allowed.
pub fn release_reason(value: i32) -> Result<ReleaseReason, Violation> {
    match pb::ReleaseReason::try_from(value) {
        Ok(pb::ReleaseReason::Unspecified) => Ok(ReleaseReason::Unspecified),
        Ok(pb::ReleaseReason::Rejected) => Ok(ReleaseReason::Rejected),
        Ok(pb::ReleaseReason::NoAnswer) => Ok(ReleaseReason::NoAnswer),
        Ok(pb::ReleaseReason::Cancelled) => Ok(ReleaseReason::CallerHungUp),
        Ok(pb::ReleaseReason::TransferFailed) => Ok(ReleaseReason::TransferFailed),
        Err(_) => Err(violation("reason", "not a value of the enum")),
    }
}

/// Agents per ListAgents page when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Agents per ListAgents page at most; a larger page size gives this many.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Most states in a ListAgents filter (there are six).
const MAX_STATES: usize = 16;

/// A ListAgents request, checked: the filter, the cursor, the page size.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentQuery {
    /// Which agents.
    pub filter: AgentFilter,
    /// Where the page starts.
    pub from: u32,
    /// How many at most.
    pub limit: usize,
}

impl TryFrom<pb::ListAgentsRequest> for AgentQuery {
    type Error = Status;

    fn try_from(r: pb::ListAgentsRequest) -> Result<AgentQuery, Status> {
        let mut v = Violations::default();
        let queue_id = v.take(checked("queue_id", r.queue_id, ID, false));
        let team = v.take(checked("team", r.team, TEXT, false));
        v.take(at_most("states", r.states.len(), MAX_STATES));
        let states: Vec<AgentState> = r
            .states
            .iter()
            .take(MAX_STATES)
            .enumerate()
            .filter_map(|(i, &s)| {
                let state = agent_state(s).map_err(|e| {
                    let why = if s == pb::AgentState::Unspecified as i32 {
                        "AGENT_STATE_UNSPECIFIED is no state: list the states to show".to_owned()
                    } else {
                        e.description
                    };
                    violation(format!("states[{i}]"), why)
                });
                v.take(state)
            })
            .collect();
        let from = if r.page_token.is_empty() {
            Some(0)
        } else {
            v.take(
                r.page_token
                    .strip_prefix("agents:")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        violation(
                            "page_token",
                            "not a token this service gave (give a previous page's next_page_token)",
                        )
                    }),
            )
        };
        let limit = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        } as usize;
        match (queue_id, team, from) {
            (Some(queue_id), Some(team), Some(from)) if v.is_empty() => Ok(AgentQuery {
                filter: AgentFilter {
                    queue_id,
                    team,
                    states,
                },
                from,
                limit,
            }),
            _ => Err(v.refusal()),
        }
    }
}

impl From<AgentPage> for pb::ListAgentsResponse {
    fn from(page: AgentPage) -> pb::ListAgentsResponse {
        pb::ListAgentsResponse {
            agents: page.agents.into_iter().map(pb::AgentView::from).collect(),
            next_page_token: page.next.map_or(String::new(), |n| format!("agents:{n}")),
        }
    }
}

impl From<AgentView> for pb::AgentView {
    fn from(a: AgentView) -> pb::AgentView {
        let paused = match a.paused {
            None => pb::PausedReason::Unspecified,
            Some(Paused::MissedOffers) => pb::PausedReason::MissedOffers,
            Some(Paused::ByCti) => pb::PausedReason::SetByCti,
        };
        pb::AgentView {
            agent_id: a.id.to_string(),
            team: a.team.to_string(),
            transfer_address: a.transfer_address.to_string(),
            state: pb::AgentState::from(a.state).into(),
            paused_reason: paused.into(),
            missed_offers: a.missed_offers,
            channels: a
                .channels
                .into_iter()
                .map(|c| pb::ChannelLoad {
                    channel: pb::Channel::from(c.channel).into(),
                    capacity: u32::from(c.capacity),
                    reserved: u32::from(c.reserved),
                    active: u32::from(c.active),
                    free: u32::from(c.free),
                    idle_since: c.idle_since.map(timestamp),
                })
                .collect(),
            reservations: a
                .reservations
                .into_iter()
                .map(|r| pb::HeldOffer {
                    reservation_id: r.reservation.to_string(),
                    contact_id: r.contact_id,
                    queue_id: r.queue_id.to_string(),
                    channel: pb::Channel::from(r.channel).into(),
                    expires_at: Some(timestamp(r.expires_at)),
                })
                .collect(),
            contacts: a
                .contacts
                .into_iter()
                .map(|c| pb::HeldContact {
                    contact_id: c.contact_id,
                    channel: pb::Channel::from(c.channel).into(),
                    queue_id: c.queue_id.to_string(),
                    since: Some(timestamp(c.since)),
                })
                .collect(),
            eligible_queue_ids: a.queues.iter().map(ToString::to_string).collect(),
            skills: a
                .skills
                .iter()
                .map(|(skill, level)| pb::SkillLevel {
                    skill: skill.to_string(),
                    proficiency: u32::from(*level),
                })
                .collect(),
            languages: a.languages,
        }
    }
}

impl From<Channel> for pb::Channel {
    fn from(c: Channel) -> pb::Channel {
        match c {
            Channel::Voice => pb::Channel::Voice,
            Channel::Chat => pb::Channel::Chat,
            Channel::Sms => pb::Channel::Sms,
            Channel::Email => pb::Channel::Email,
            Channel::Portal => pb::Channel::Portal,
        }
    }
}

/// Validates an optional request id field (empty: none).
pub fn request_id(value: String) -> Result<Option<String>, Violation> {
    checked("request_id", value, ID, false)
}

/// Two fields of one request, both checked: a refusal names every one
/// that is wrong.
pub fn both<A, B>(a: Result<A, Violation>, b: Result<B, Violation>) -> Result<(A, B), Status> {
    let mut v = Violations::default();
    match (v.take(a), v.take(b)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(v.refusal()),
    }
}

/// Three fields of one request, all checked, as [`both`].
pub fn three<A, B, C>(
    a: Result<A, Violation>,
    b: Result<B, Violation>,
    c: Result<C, Violation>,
) -> Result<(A, B, C), Status> {
    let mut v = Violations::default();
    match (v.take(a), v.take(b), v.take(c)) {
        (Some(a), Some(b), Some(c)) => Ok((a, b, c)),
        _ => Err(v.refusal()),
    }
}

impl From<&Change> for pb::routing_event::Event {
    fn from(change: &Change) -> pb::routing_event::Event {
        use pb::routing_event::Event as E;
        let agent = |agent_id: &str, change| {
            E::Agent(pb::AgentEvent {
                agent_id: agent_id.to_owned(),
                change: Some(change),
            })
        };
        let contact = |contact_id: &str, change| {
            E::Contact(pb::ContactEvent {
                contact_id: contact_id.to_owned(),
                change: Some(change),
            })
        };
        match change {
            Change::Decision {
                contact_id,
                decision,
            } => E::Decision(pb::DecisionEvent {
                contact_id: contact_id.clone(),
                decision: Some(pb::RouteContactResponse::from(decision.clone())),
            }),
            Change::Confirmed {
                reservation,
                agent_id,
                contact_id,
            } => E::Reservation(pb::ReservationEvent {
                reservation_id: reservation.to_string(),
                change: Some(pb::reservation_event::Change::Confirmed(
                    pb::ReservationConfirmed {
                        agent_id: agent_id.to_string(),
                        contact_id: contact_id.clone(),
                    },
                )),
            }),
            Change::Released {
                reservation,
                reason,
            } => E::Reservation(pb::ReservationEvent {
                reservation_id: reservation.to_string(),
                change: Some(pb::reservation_event::Change::Released(
                    pb::ReleaseReason::from(*reason).into(),
                )),
            }),
            Change::Expired { reservation } => E::Reservation(pb::ReservationEvent {
                reservation_id: reservation.to_string(),
                change: Some(pb::reservation_event::Change::Expired(true)),
            }),
            Change::Withdrawn { reservation } => E::Reservation(pb::ReservationEvent {
                reservation_id: reservation.to_string(),
                change: Some(pb::reservation_event::Change::Withdrawn(true)),
            }),
            Change::Completed {
                agent_id,
                contact_id,
            } => contact(
                contact_id,
                pb::contact_event::Change::CompletedByAgentId(agent_id.clone()),
            ),
            Change::Cancelled { contact_id } => {
                contact(contact_id, pb::contact_event::Change::Cancelled(true))
            }
            Change::Upserted { agent_id } => {
                agent(agent_id, pb::agent_event::Change::Upserted(true))
            }
            Change::Removed { agent_id } => agent(agent_id, pb::agent_event::Change::Removed(true)),
            Change::State { agent_id, state } => agent(
                agent_id,
                pb::agent_event::Change::State(pb::AgentState::from(*state).into()),
            ),
            Change::Policy { version } => E::PolicyVersion(version.clone()),
        }
    }
}

impl From<ReleaseReason> for pb::ReleaseReason {
    fn from(r: ReleaseReason) -> pb::ReleaseReason {
        match r {
            ReleaseReason::Unspecified => pb::ReleaseReason::Unspecified,
            ReleaseReason::Rejected => pb::ReleaseReason::Rejected,
            ReleaseReason::NoAnswer => pb::ReleaseReason::NoAnswer,
            ReleaseReason::CallerHungUp => pb::ReleaseReason::Cancelled,
            ReleaseReason::TransferFailed => pb::ReleaseReason::TransferFailed,
        }
    }
}

impl From<AgentState> for pb::AgentState {
    fn from(s: AgentState) -> pb::AgentState {
        match s {
            AgentState::Offline => pb::AgentState::Offline,
            AgentState::Available => pb::AgentState::Available,
            AgentState::Busy => pb::AgentState::Busy,
            AgentState::WrapUp => pb::AgentState::WrapUp,
            AgentState::Away => pb::AgentState::Away,
            AgentState::NotResponding => pb::AgentState::NotResponding,
        }
    }
}

/// A domain instant as a protobuf timestamp.
pub fn timestamp(t: Time) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<Reason> for pb::Reason {
    fn from(r: Reason) -> pb::Reason {
        match r {
            Reason::RuleMatched => pb::Reason::RuleMatched,
            Reason::DefaultQueue => pb::Reason::DefaultQueue,
            Reason::EmergencyUrgency => pb::Reason::EmergencyUrgency,
            Reason::EmergencySignal => pb::Reason::EmergencySignal,
            Reason::IdentityNotAttempted => pb::Reason::IdentityNotAttempted,
            Reason::IdentityFailed => pb::Reason::IdentityFailed,
            Reason::SameTeamTransferRedirected => pb::Reason::SameTeamTransferRedirected,
            Reason::AfterHoursOnCall => pb::Reason::AfterHoursOnCall,
            Reason::QueueClosed => pb::Reason::QueueClosed,
            Reason::NoAgentsStaffed => pb::Reason::NoAgentsStaffed,
            Reason::NoAgentAvailable => pb::Reason::NoAgentAvailable,
            Reason::PreferredAgent => pb::Reason::PreferredAgent,
            Reason::LongestIdle => pb::Reason::LongestIdle,
            Reason::InterpreterNeeded => pb::Reason::InterpreterNeeded,
            Reason::PolicyCallback => pb::Reason::PolicyCallback,
            Reason::PolicyAuthenticate => pb::Reason::PolicyAuthenticate,
            Reason::IdempotentReplay => pb::Reason::IdempotentReplay,
            Reason::Queued => pb::Reason::Queued,
            Reason::QueueFull => pb::Reason::QueueFull,
            Reason::WaitTooLong => pb::Reason::WaitTooLong,
            Reason::IdentityDeferred => pb::Reason::IdentityDeferred,
            Reason::PreferredAgentUnavailable => pb::Reason::PreferredAgentUnavailable,
        }
    }
}

impl From<CallbackReason> for pb::CallbackReason {
    fn from(r: CallbackReason) -> pb::CallbackReason {
        match r {
            CallbackReason::Closed => pb::CallbackReason::Closed,
            CallbackReason::NoAgentsStaffed => pb::CallbackReason::NoAgentsStaffed,
            CallbackReason::QueueFull => pb::CallbackReason::QueueFull,
            CallbackReason::NoAgentAvailable => pb::CallbackReason::NoAgentAvailable,
            CallbackReason::WaitTooLong => pb::CallbackReason::WaitTooLong,
            CallbackReason::Policy => pb::CallbackReason::Policy,
        }
    }
}

impl From<&AgentOffer> for pb::AgentTarget {
    fn from(a: &AgentOffer) -> pb::AgentTarget {
        pb::AgentTarget {
            agent_id: a.agent_id.to_string(),
            transfer_address: a.transfer_address.to_string(),
            queue_id: a.queue_id.to_string(),
            reservation_id: a.reservation.to_string(),
            reservation_expires_at: Some(timestamp(a.expires_at)),
            interpreter_needed: a.interpreter_needed,
        }
    }
}

impl From<&CallbackOffer> for pb::CallbackTicket {
    fn from(c: &CallbackOffer) -> pb::CallbackTicket {
        pb::CallbackTicket {
            ticket_type: c.terms.ticket_type.to_string(),
            queue_id: c.queue_id.to_string(),
            reason: pb::CallbackReason::from(c.reason).into(),
            deadline: Some(timestamp(c.terms.deadline)),
            deadline_local: c
                .terms
                .deadline
                .with_timezone(&c.terms.time_zone)
                .to_rfc3339(),
            window_minutes: c.terms.window_minutes,
            priority: u32::from(c.terms.priority),
            intake_fields: c
                .terms
                .intake_fields
                .iter()
                .map(|f| f.to_string())
                .collect(),
        }
    }
}

impl From<&Event> for pb::AssignmentEvent {
    fn from(e: &Event) -> pb::AssignmentEvent {
        use pb::assignment_event::Event as E;
        let mut out = pb::AssignmentEvent {
            contact_id: e.contact_id().to_owned(),
            ..Default::default()
        };
        let mut parked = |p: &Parked| {
            out.parked_queue_id = p.queue_id.to_string();
            out.parked_transfer_address = p.transfer_address.to_string();
        };
        let (event, waited) = match e {
            Event::Assigned(a) => {
                parked(&a.parked);
                out.reoffer = a.reoffer;
                if let Some(guidance) = &a.verify_identity {
                    out.verify_identity = true;
                    out.identity_guidance = guidance.iter().map(ToString::to_string).collect();
                }
                (E::Agent(pb::AgentTarget::from(&a.offer)), Some(a.waited))
            }
            Event::CallbackInstead {
                parked: p,
                callback,
                waited,
                ..
            } => {
                parked(p);
                (
                    E::Callback(pb::CallbackTicket::from(callback)),
                    Some(*waited),
                )
            }
            Event::Withdrawn {
                agent_id,
                reservation,
                reason,
                ..
            } => (
                E::Withdrawn(pb::OfferWithdrawn {
                    agent_id: agent_id.to_string(),
                    reservation_id: reservation.to_string(),
                    reason: pb::WithdrawReason::from(*reason).into(),
                }),
                None,
            ),
            Event::Moved {
                parked: p,
                from_queue_id,
                to_queue_id,
                waited,
                ..
            } => {
                parked(p);
                (
                    E::Moved(pb::QueueMove {
                        from_queue_id: from_queue_id.to_string(),
                        to_queue_id: to_queue_id.to_string(),
                    }),
                    Some(*waited),
                )
            }
        };
        out.event = Some(event);
        out.waited = waited.map(duration);
        out
    }
}

impl From<Withdrawal> for pb::WithdrawReason {
    fn from(w: Withdrawal) -> pb::WithdrawReason {
        match w {
            Withdrawal::Cancelled => pb::WithdrawReason::Cancelled,
            Withdrawal::Rerouted => pb::WithdrawReason::Rerouted,
            Withdrawal::PolicyChanged => pb::WithdrawReason::PolicyChanged,
        }
    }
}

/// A domain duration as a protobuf duration.
pub fn duration(d: chrono::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

impl From<Decision> for pb::RouteContactResponse {
    fn from(d: Decision) -> pb::RouteContactResponse {
        use pb::route_contact_response::Outcome as O;
        let outcome = match d.outcome {
            Outcome::Agent(a) => O::Agent(pb::AgentTarget::from(&a)),
            Outcome::Queued(q) => O::Queued(pb::QueuedTarget {
                queue_id: q.queue_id.to_string(),
                transfer_address: q.transfer_address.to_string(),
                position: q.position,
                estimated_wait: Some(duration(q.estimated_wait)),
            }),
            Outcome::Callback(c) => O::Callback(pb::CallbackTicket::from(&c)),
            Outcome::Emergency {
                script_id,
                instruction,
            } => O::Emergency(pb::EmergencyScript {
                script_id: script_id.to_string(),
                instruction: instruction.to_string(),
            }),
            Outcome::Authenticate {
                script_id,
                instruction,
            } => O::Authenticate(pb::AuthenticateFirst {
                script_id: script_id.to_string(),
                instruction: instruction.to_string(),
            }),
        };
        pb::RouteContactResponse {
            decision_id: d.id.to_string(),
            rule_id: d.rule_id.map(|r| r.to_string()).unwrap_or_default(),
            reasons: d
                .reasons
                .into_iter()
                .map(|r| pb::Reason::from(r).into())
                .collect(),
            escalation_level: u32::from(d.level),
            owning_team: d.team.to_string(),
            guidance: d.guidance.iter().map(|g| g.to_string()).collect(),
            outcome: Some(outcome),
        }
    }
}

impl From<QueueView> for pb::QueueView {
    fn from(q: QueueView) -> pb::QueueView {
        pb::QueueView {
            queue_id: q.id.to_string(),
            level: u32::from(q.level),
            team: q.team.to_string(),
            open: q.open,
            agents_staffed: q.staffed,
            agents_available: q.available,
            reservations: q.reservations,
            waiting: q.waiting,
            longest_wait: Some(duration(q.longest_wait)),
            estimated_wait: q.estimated_wait.map(duration),
            service_level: q.stats.service_level(),
            abandonment_rate: q.stats.abandonment(),
            callbacks_issued: q.stats.callbacks,
            answered: q.stats.answered,
            handle_time: Some(duration(q.handle_time)),
            handle_times_observed: q.stats.handle_times_observed,
        }
    }
}

impl From<ContactStatus> for pb::GetContactStatusResponse {
    fn from(s: ContactStatus) -> pb::GetContactStatusResponse {
        use pb::get_contact_status_response::Status as S;
        let status = match s {
            ContactStatus::Waiting {
                parked,
                queue_id,
                position,
                estimated_wait,
                waited,
                offered,
            } => {
                let (offered_agent_id, reservation_id) = offered
                    .map(|(agent, r)| (agent.to_string(), r.to_string()))
                    .unwrap_or_default();
                S::Waiting(pb::WaitingStatus {
                    queue_id: queue_id.to_string(),
                    parked_queue_id: parked.queue_id.to_string(),
                    parked_transfer_address: parked.transfer_address.to_string(),
                    position,
                    estimated_wait: Some(duration(estimated_wait)),
                    waited: Some(duration(waited)),
                    offered_agent_id,
                    reservation_id,
                })
            }
            ContactStatus::Done(hop) => S::Last(pb::ContactHop::from(&hop)),
        };
        pb::GetContactStatusResponse {
            status: Some(status),
        }
    }
}

/// The `outcome` a hop shows.
fn hop_outcome(kind: HopKind) -> &'static str {
    match kind {
        HopKind::Decided(outcome, _) => outcome,
        HopKind::Assigned => "assigned",
        HopKind::OfferExpired => "offer_expired",
        HopKind::OfferReleased => "offer_released",
        HopKind::Stepped(_) => "step",
        HopKind::Moved => "moved",
        HopKind::Cancelled => "cancelled",
        HopKind::CalledBack(_) => "callback",
    }
}

impl From<&Hop> for pb::ContactHop {
    fn from(h: &Hop) -> pb::ContactHop {
        pb::ContactHop {
            decision_id: h.decision.to_string(),
            at: Some(timestamp(h.at)),
            rule_id: h.rule_id.as_deref().unwrap_or_default().to_owned(),
            outcome: hop_outcome(h.kind).to_owned(),
            queue_id: h.queue_id.as_deref().unwrap_or_default().to_owned(),
            agent_id: h.agent_id.as_deref().unwrap_or_default().to_owned(),
            from_queue_id: h.from_queue_id.as_deref().unwrap_or_default().to_owned(),
            reservation_id: h.reservation.map(|r| r.to_string()).unwrap_or_default(),
            step: match h.kind {
                HopKind::Stepped(n) => n,
                _ => 0,
            },
            callback_reason: match h.kind {
                HopKind::CalledBack(r) | HopKind::Decided(_, Some(r)) => {
                    pb::CallbackReason::from(r).into()
                }
                _ => pb::CallbackReason::Unspecified.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> pb::RouteContactRequest {
        pb::RouteContactRequest {
            contact_id: "c-1".into(),
            channel: pb::Channel::Voice.into(),
            intent: "billing".into(),
            ..Default::default()
        }
    }

    fn field_of(r: pb::RouteContactRequest) -> String {
        let status = Contact::try_from(r).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        status
            .message()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn valid_request_converts_with_defaults() {
        let c = Contact::try_from(base()).unwrap();
        assert_eq!(c.urgency, Urgency::Routine);
        assert_eq!(c.identity, Identity::NotAttempted);
        assert_eq!(c.request_id, None);
    }

    #[test]
    fn an_emergency_may_come_without_an_intent() {
        let mut r = base();
        r.intent.clear();
        assert_eq!(field_of(r.clone()), "intent");
        r.urgency = pb::Urgency::Emergency.into();
        assert_eq!(Contact::try_from(r.clone()).unwrap().intent, "");
        r.urgency = pb::Urgency::Routine.into();
        r.signals = vec!["chest_pain".into()];
        assert_eq!(Contact::try_from(r.clone()).unwrap().intent, "");
        // A malformed intent is still refused.
        r.intent = "Chest pain!".into();
        assert_eq!(field_of(r), "intent");
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut pb::RouteContactRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("contact_id", Box::new(|r| r.contact_id.clear())),
            ("contact_id", Box::new(|r| r.contact_id = "x".repeat(129))),
            ("contact_id", Box::new(|r| r.contact_id = "Jane Doe".into())),
            ("channel", Box::new(|r| r.channel = 0)),
            ("channel", Box::new(|r| r.channel = 42)),
            ("intent", Box::new(|r| r.intent.clear())),
            ("urgency", Box::new(|r| r.urgency = 9)),
            ("identity", Box::new(|r| r.identity = -1)),
            ("language", Box::new(|r| r.language = "en US".into())),
            (
                "signals[0]",
                Box::new(|r| r.signals = vec!["Chest pain!".into()]),
            ),
            ("signals", Box::new(|r| r.signals = vec!["a".into(); 33])),
            (
                "attributes",
                Box::new(|r| {
                    r.attributes = (0..17).map(|i| (format!("k{i}"), "v".into())).collect()
                }),
            ),
            // A bad value names the map, never the key the client chose.
            (
                "attributes",
                Box::new(|r| {
                    r.attributes.insert("dob".into(), "01/02/1980".into());
                }),
            ),
            (
                "transfer_from.queue_id",
                Box::new(|r| r.transfer_from = Some(pb::TransferFrom::default())),
            ),
            ("request_id", Box::new(|r| r.request_id = "x".repeat(200))),
        ];
        for (field, change) in cases {
            let mut r = base();
            change(&mut r);
            assert_eq!(field_of(r), field);
        }
    }

    #[test]
    fn refusals_never_echo_the_value() {
        let mut r = base();
        r.contact_id = "555-0199 Jane Doe".into();
        let status = Contact::try_from(r).unwrap_err();
        assert!(!status.message().contains("Jane"), "{}", status.message());
    }

    #[test]
    fn an_unspecified_state_in_a_filter_is_named_as_such() {
        let r = pb::ListAgentsRequest {
            states: vec![pb::AgentState::Available as i32, 0, 99],
            ..Default::default()
        };
        let refused = AgentQuery::try_from(r).unwrap_err();
        assert_eq!(
            refused.message(),
            "states[1]: AGENT_STATE_UNSPECIFIED is no state: list the states to show; \
             states[2]: not a value of the enum"
        );
    }

    #[test]
    fn agent_fields_are_named() {
        let ok = pb::UpsertAgentRequest {
            agent_id: "a1".into(),
            transfer_address: "sip:1@x".into(),
            skills: vec![pb::SkillLevel {
                skill: "billing".into(),
                proficiency: 3,
            }],
            channels: vec![pb::ChannelCapacity {
                channel: pb::Channel::Voice.into(),
                capacity: 1,
            }],
            ..Default::default()
        };
        assert!(AgentSpec::try_from(ok.clone()).is_ok());
        let mut bad = ok.clone();
        bad.skills[0].proficiency = 6;
        assert!(
            AgentSpec::try_from(bad)
                .unwrap_err()
                .message()
                .starts_with("skills[0].proficiency")
        );
        let mut bad = ok.clone();
        bad.channels[0].capacity = 51;
        assert!(
            AgentSpec::try_from(bad)
                .unwrap_err()
                .message()
                .starts_with("channels[0].capacity")
        );
        let mut bad = ok.clone();
        bad.channels.clear();
        let refused = AgentSpec::try_from(bad).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with("channels:"), "{refused:?}");
        for address in [
            "",
            "sip:z8@x created=false by=\"admin\"",
            "sip:Jane Doe called re results",
        ] {
            let mut bad = ok.clone();
            bad.transfer_address = address.into();
            let refused = AgentSpec::try_from(bad).unwrap_err();
            assert!(
                refused.message().starts_with("transfer_address"),
                "{address}"
            );
            assert!(!refused.message().contains("Jane"), "{refused:?}");
        }
        let mut uri = ok.clone();
        uri.transfer_address = "sips:+1-555-0100@pbx.example;transport=tls".into();
        assert!(AgentSpec::try_from(uri).is_ok());
        // An entry refused on its own is not taken, yet a later entry's
        // problem still names that entry's own index in the request.
        let mut bad = ok;
        bad.skills.insert(
            0,
            pb::SkillLevel {
                skill: String::new(),
                proficiency: 3,
            },
        );
        bad.skills[1].proficiency = 9;
        bad.skills.push(bad.skills[1].clone());
        bad.skills[2].proficiency = 2;
        let refused = AgentSpec::try_from(bad).unwrap_err();
        assert_eq!(
            refused.message(),
            "skills[0].skill: required; skills[1].proficiency: must be 1-5; \
             skills[2].skill: the same skill as skills[1].skill"
        );
    }
}
