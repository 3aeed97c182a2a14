//! The one mapping from refusals to gRPC statuses: an exhaustive match over
//! engine errors, so a new variant forces a deliberate choice of code; and
//! the richer error model every refusal carries (`google.rpc.ErrorInfo`
//! with a stable reason, `google.rpc.BadRequest` with every field
//! violation), so a program can act on it without reading the message.

use std::borrow::Cow;
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::engine::{EngineError, QueueNamed, Settled};
use crate::journal::JournalError;
use crate::shared::{Closed, Halted};

/// Metadata naming the leader, on a standby's refusals.
pub const LEADER_METADATA: &str = "careroute-leader";

/// The `google.rpc.ErrorInfo` domain of careroute's refusals.
pub const ERROR_DOMAIN: &str = "careroute";

/// The stable reasons of `google.rpc.ErrorInfo`, one per kind of refusal:
/// what a client program matches on (the message is for people and may
/// change). The README lists each with what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A request field is missing, malformed or out of range (BadRequest
    /// names every one).
    InvalidField,
    /// The body does not decode as the method's message.
    MalformedBody,
    /// The request is larger than careroute decodes.
    RequestTooLarge,
    /// The intent is not in the policy's vocabulary.
    UnknownIntent,
    /// A signal the policy does not know.
    UnknownSignal,
    /// An attribute key the policy does not declare.
    UnknownAttribute,
    /// An attribute value the policy does not declare.
    AttributeValueNotAllowed,
    /// A request id reused with a different request.
    RequestIdReused,
    /// A queue id the policy does not have.
    UnknownQueue,
    /// An agent id the roster does not have.
    UnknownAgent,
    /// A reservation never made here, or forgotten.
    UnknownReservation,
    /// The reservation lapsed before it was confirmed.
    ReservationExpired,
    /// The reservation was confirmed already.
    ReservationAlreadyConfirmed,
    /// The reservation was released already.
    ReservationAlreadyReleased,
    /// The contact is not waiting in any queue.
    ContactNotWaiting,
    /// The agent has no such active contact.
    NoActiveContact,
    /// The agent holds work and cannot be removed.
    AgentBusy,
    /// The roster is at its configured maximum.
    RosterFull,
    /// This process is a standby (the leader is in `careroute-leader`
    /// metadata and in ErrorInfo's `leader`, when known).
    NotLeader,
    /// The journal cannot take commands; the process is stopping.
    JournalUnavailable,
    /// An internal error stopped the engine; the process is restarting.
    EngineHalted,
    /// Too many calls in flight.
    Overloaded,
    /// The call was not answered within the server's own limit.
    ServerDeadline,
    /// No credential the credentials file knows.
    Unauthenticated,
    /// The client lacks the role the method needs.
    RoleRequired,
    /// An event stream cannot resume from the sequence asked for.
    ResumeOutOfRange,
    /// A contact this process has no record of (never routed here, or
    /// forgotten after `--path-window`).
    UnknownContact,
    /// A watcher fell behind the events and its stream ended.
    WatcherBehind,
    /// A bug in careroute: the call failed, the process stops.
    InternalError,
    /// HTTP/JSON: no method is bound to this path, or not with this HTTP
    /// method.
    UnknownRoute,
    /// HTTP/JSON: the request's content type is not `application/json`.
    NotJson,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 31] = [
        Reason::InvalidField,
        Reason::MalformedBody,
        Reason::RequestTooLarge,
        Reason::UnknownIntent,
        Reason::UnknownSignal,
        Reason::UnknownAttribute,
        Reason::AttributeValueNotAllowed,
        Reason::RequestIdReused,
        Reason::UnknownQueue,
        Reason::UnknownAgent,
        Reason::UnknownReservation,
        Reason::ReservationExpired,
        Reason::ReservationAlreadyConfirmed,
        Reason::ReservationAlreadyReleased,
        Reason::ContactNotWaiting,
        Reason::NoActiveContact,
        Reason::AgentBusy,
        Reason::RosterFull,
        Reason::NotLeader,
        Reason::JournalUnavailable,
        Reason::EngineHalted,
        Reason::Overloaded,
        Reason::ServerDeadline,
        Reason::Unauthenticated,
        Reason::RoleRequired,
        Reason::ResumeOutOfRange,
        Reason::UnknownContact,
        Reason::WatcherBehind,
        Reason::InternalError,
        Reason::UnknownRoute,
        Reason::NotJson,
    ];

    /// The UPPER_SNAKE_CASE name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidField => "INVALID_FIELD",
            Reason::MalformedBody => "MALFORMED_BODY",
            Reason::RequestTooLarge => "REQUEST_TOO_LARGE",
            Reason::UnknownIntent => "UNKNOWN_INTENT",
            Reason::UnknownSignal => "UNKNOWN_SIGNAL",
            Reason::UnknownAttribute => "UNKNOWN_ATTRIBUTE",
            Reason::AttributeValueNotAllowed => "ATTRIBUTE_VALUE_NOT_ALLOWED",
            Reason::RequestIdReused => "REQUEST_ID_REUSED",
            Reason::UnknownQueue => "UNKNOWN_QUEUE",
            Reason::UnknownAgent => "UNKNOWN_AGENT",
            Reason::UnknownReservation => "UNKNOWN_RESERVATION",
            Reason::ReservationExpired => "RESERVATION_EXPIRED",
            Reason::ReservationAlreadyConfirmed => "RESERVATION_ALREADY_CONFIRMED",
            Reason::ReservationAlreadyReleased => "RESERVATION_ALREADY_RELEASED",
            Reason::ContactNotWaiting => "CONTACT_NOT_WAITING",
            Reason::NoActiveContact => "NO_ACTIVE_CONTACT",
            Reason::AgentBusy => "AGENT_BUSY",
            Reason::RosterFull => "ROSTER_FULL",
            Reason::NotLeader => "NOT_LEADER",
            Reason::JournalUnavailable => "JOURNAL_UNAVAILABLE",
            Reason::EngineHalted => "ENGINE_HALTED",
            Reason::Overloaded => "OVERLOADED",
            Reason::ServerDeadline => "SERVER_DEADLINE",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::RoleRequired => "ROLE_REQUIRED",
            Reason::ResumeOutOfRange => "RESUME_OUT_OF_RANGE",
            Reason::UnknownContact => "UNKNOWN_CONTACT",
            Reason::WatcherBehind => "WATCHER_BEHIND",
            Reason::InternalError => "INTERNAL_ERROR",
            Reason::UnknownRoute => "UNKNOWN_ROUTE",
            Reason::NotJson => "NOT_JSON",
        }
    }
}

/// One field of a request that is wrong, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field's path, as in the proto (`skills[2].skill`).
    pub field: String,
    /// What is expected; never the value sent.
    pub description: String,
}

impl From<Violation> for Status {
    fn from(v: Violation) -> Status {
        invalid(vec![v])
    }
}

/// INVALID_ARGUMENT for `violations` (at least one): the message names
/// each field and what is wrong, ErrorInfo says `INVALID_FIELD`, and
/// BadRequest lists them.
pub fn invalid(violations: Vec<Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    refusal(
        Code::InvalidArgument,
        message,
        Reason::InvalidField,
        violations,
    )
}

/// A refusal: `code` and `message`, ErrorInfo with `reason`, and
/// BadRequest when there are field violations.
pub fn refusal(
    code: Code,
    message: impl Into<String>,
    reason: Reason,
    violations: Vec<Violation>,
) -> Status {
    refusal_with(code, message, reason, violations, HashMap::new())
}

/// [`refusal`] with ErrorInfo metadata.
fn refusal_with(
    code: Code,
    message: impl Into<String>,
    reason: Reason,
    violations: Vec<Violation>,
    metadata: HashMap<String, String>,
) -> Status {
    let mut details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata);
    if !violations.is_empty() {
        details.set_bad_request(
            violations
                .into_iter()
                .map(|v| FieldViolation::new(v.field, v.description))
                .collect::<Vec<_>>(),
        );
    }
    Status::with_error_details(code, message, details)
}

/// A violation of `field`.
fn field(field: impl Into<String>, description: impl Into<String>) -> Vec<Violation> {
    vec![Violation {
        field: field.into(),
        description: description.into(),
    }]
}

impl From<Halted> for Status {
    fn from(e: Halted) -> Status {
        refusal(
            Code::Unavailable,
            e.to_string(),
            Reason::EngineHalted,
            Vec::new(),
        )
    }
}

impl From<Closed> for Status {
    /// A standby's refusal names the leader in `careroute-leader` metadata
    /// (and ErrorInfo's `leader`) when it knows it, so a client can go
    /// there.
    fn from(e: Closed) -> Status {
        let leader = match &e {
            Closed::Halted(h) => return Status::from(*h),
            Closed::Standby { leader } => leader.clone(),
        };
        let metadata = leader
            .iter()
            .map(|l| ("leader".to_owned(), l.clone()))
            .collect();
        let mut status = refusal_with(
            Code::Unavailable,
            e.to_string(),
            Reason::NotLeader,
            Vec::new(),
            metadata,
        );
        if let Some(value) = leader.and_then(|l| l.parse().ok()) {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
        status
    }
}

impl From<JournalError> for Status {
    /// Only a failed or stopped writer reaches a client: the answer was not
    /// logged, so it does not leave. The details (file, SQLite's words) are
    /// in the service's log, not in the answer.
    fn from(e: JournalError) -> Status {
        tracing::debug!(error = %e, "answer withheld: the journal did not take its command");
        match e {
            // This process stepped down: the client should go to the leader.
            JournalError::Deposed | JournalError::Fenced { .. } => refusal(
                Code::Unavailable,
                e.to_string(),
                Reason::NotLeader,
                Vec::new(),
            ),
            JournalError::Dir { .. }
            | JournalError::Sqlite { .. }
            | JournalError::NoStart { .. }
            | JournalError::Diverged { .. }
            | JournalError::Corrupt { .. }
            | JournalError::Damaged { .. }
            | JournalError::Lost { .. }
            | JournalError::Mark { .. }
            | JournalError::MarkUnreadable { .. }
            | JournalError::Locked { .. }
            | JournalError::NoSnapshot { .. }
            | JournalError::OtherRouting { .. }
            | JournalError::Setup(_)
            | JournalError::Encode(_)
            | JournalError::Failed(_)
            | JournalError::Nats(_) => refusal(
                Code::Unavailable,
                "the journal cannot be written; the service is stopping",
                Reason::JournalUnavailable,
                Vec::new(),
            ),
        }
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        // The engine says what is wrong; the edge says which field of the
        // request it is about, in the message and, for a malformed request,
        // as a field violation.
        let (code, reason, at, violation): (Code, Reason, Cow<'static, str>, Option<&str>) =
            match &e {
                EngineError::UnknownIntent { .. } => (
                    Code::InvalidArgument,
                    Reason::UnknownIntent,
                    "intent".into(),
                    Some("not an intent of the policy"),
                ),
                EngineError::UnknownSignal { .. } => (
                    Code::InvalidArgument,
                    Reason::UnknownSignal,
                    "signals".into(),
                    Some("not a signal of the policy"),
                ),
                EngineError::MissingIntent => (
                    Code::InvalidArgument,
                    Reason::InvalidField,
                    "intent".into(),
                    Some("required unless the contact is an emergency"),
                ),
                EngineError::RequestIdReused => (
                    Code::InvalidArgument,
                    Reason::RequestIdReused,
                    "request_id".into(),
                    Some("already used for a different request"),
                ),
                EngineError::UnknownAttribute { .. } => (
                    Code::InvalidArgument,
                    Reason::UnknownAttribute,
                    "attributes".into(),
                    Some("a key is not declared by the policy"),
                ),
                EngineError::AttributeValue { key, .. } => (
                    Code::InvalidArgument,
                    Reason::AttributeValueNotAllowed,
                    format!("attributes[{key}]").into(),
                    Some("not one of the declared values"),
                ),
                EngineError::UnknownQueue { named, .. } => (
                    Code::NotFound,
                    Reason::UnknownQueue,
                    match named {
                        QueueNamed::TransferFrom => "transfer_from.queue_id",
                        QueueNamed::Filter => "queue_id",
                    }
                    .into(),
                    None,
                ),
                EngineError::UnknownAgent(_) => (
                    Code::NotFound,
                    Reason::UnknownAgent,
                    "agent_id".into(),
                    None,
                ),
                EngineError::UnknownReservation(_) => (
                    Code::NotFound,
                    Reason::UnknownReservation,
                    "reservation_id".into(),
                    None,
                ),
                EngineError::ReservationExpired(_) => (
                    Code::FailedPrecondition,
                    Reason::ReservationExpired,
                    "reservation_id".into(),
                    None,
                ),
                EngineError::ReservationSettled { how, .. } => (
                    Code::FailedPrecondition,
                    match how {
                        Settled::Confirmed => Reason::ReservationAlreadyConfirmed,
                        Settled::Released => Reason::ReservationAlreadyReleased,
                    },
                    "reservation_id".into(),
                    None,
                ),
                EngineError::NoActiveContact { .. } => (
                    Code::NotFound,
                    Reason::NoActiveContact,
                    "contact_id".into(),
                    None,
                ),
                EngineError::NotWaiting(_) => (
                    Code::NotFound,
                    Reason::ContactNotWaiting,
                    "contact_id".into(),
                    None,
                ),
                EngineError::AgentBusy { .. } => (
                    Code::FailedPrecondition,
                    Reason::AgentBusy,
                    "agent_id".into(),
                    None,
                ),
                EngineError::TooManyAgents { .. } => (
                    Code::ResourceExhausted,
                    Reason::RosterFull,
                    "agent_id".into(),
                    None,
                ),
            };
        let message = format!("{at}: {e}");
        let violations = violation.map_or_else(Vec::new, |d| field(at, d));
        refusal(code, message, reason, violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_documented_and_named_once() {
        let readme = include_str!("../../README.md");
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{} twice", r.as_str());
            assert!(
                readme.contains(&format!("| `{}` |", r.as_str())),
                "the README's table lacks {}",
                r.as_str()
            );
        }
    }

    /// The fields a refusal's violations name.
    fn violated(s: &Status) -> Vec<String> {
        s.get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn refusals_carry_their_reason_and_violations() {
        let s = Status::from(EngineError::ReservationSettled {
            id: "r".into(),
            how: Settled::Released,
        });
        let info = s.get_details_error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("RESERVATION_ALREADY_RELEASED", ERROR_DOMAIN)
        );
        let s = invalid(vec![
            Violation {
                field: "a".into(),
                description: "required".into(),
            },
            Violation {
                field: "b[2]".into(),
                description: "only digits".into(),
            },
        ]);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "a: required; b[2]: only digits");
        assert_eq!(violated(&s), ["a", "b[2]"]);
        let standby = Status::from(Closed::Standby {
            leader: Some("10.0.0.7:50051".into()),
        });
        let info = standby.get_details_error_info().unwrap();
        assert_eq!(info.reason, "NOT_LEADER");
        assert_eq!(info.metadata["leader"], "10.0.0.7:50051");
        assert_eq!(
            standby.metadata().get(LEADER_METADATA).unwrap(),
            "10.0.0.7:50051"
        );
    }

    #[test]
    fn codes() {
        let cases = [
            (
                EngineError::UnknownIntent {
                    allowed: "billing".into(),
                },
                Code::InvalidArgument,
            ),
            (EngineError::UnknownAgent("a".into()), Code::NotFound),
            (
                EngineError::ReservationExpired("r".into()),
                Code::FailedPrecondition,
            ),
            (
                EngineError::UnknownQueue {
                    named: QueueNamed::TransferFrom,
                    id: "q".into(),
                },
                Code::NotFound,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        // The edge names the field the engine's refusal is about.
        let s = Status::from(EngineError::UnknownQueue {
            named: QueueNamed::Filter,
            id: "q".into(),
        });
        assert_eq!(s.message(), "queue_id: no such queue in the policy");
        let s = Status::from(EngineError::AttributeValue {
            key: "coverage".into(),
            allowed: "gold, silver".into(),
        });
        assert_eq!(
            s.message(),
            "attributes[coverage]: value is not one of the declared values: gold, silver"
        );
        assert_eq!(violated(&s), ["attributes[coverage]"]);
    }
}
