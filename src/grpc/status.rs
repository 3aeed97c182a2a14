//! The one mapping from engine errors to gRPC status codes: an exhaustive
//! match, so a new error variant forces a deliberate choice of code.

use tonic::Status;

use crate::engine::EngineError;
use crate::journal::JournalError;
use crate::shared::{Closed, Halted};

/// Metadata naming the leader, on a standby's refusals.
pub const LEADER_METADATA: &str = "careroute-leader";

impl From<Halted> for Status {
    fn from(e: Halted) -> Status {
        Status::unavailable(e.to_string())
    }
}

impl From<Closed> for Status {
    /// A standby's refusal names the leader in `careroute-leader` metadata
    /// when it knows it, so a client can go there.
    fn from(e: Closed) -> Status {
        let mut status = Status::unavailable(e.to_string());
        if let Closed::Standby {
            leader: Some(leader),
        } = &e
            && let Ok(value) = leader.parse()
        {
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
            JournalError::Deposed | JournalError::Fenced { .. } => {
                Status::unavailable(e.to_string())
            }
            JournalError::Dir { .. }
            | JournalError::Sqlite { .. }
            | JournalError::NoStart { .. }
            | JournalError::Corrupt { .. }
            | JournalError::Locked { .. }
            | JournalError::NoSnapshot { .. }
            | JournalError::OtherRouting { .. }
            | JournalError::Setup(_)
            | JournalError::Encode(_)
            | JournalError::Failed(_)
            | JournalError::Nats(_) => {
                Status::unavailable("the journal cannot be written; the service is stopping")
            }
        }
    }
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        let message = e.to_string();
        match e {
            EngineError::UnknownIntent { .. } => Status::invalid_argument(message),
            EngineError::RequestIdReused => Status::invalid_argument(message),
            EngineError::UnknownAttribute { .. } => Status::invalid_argument(message),
            EngineError::AttributeValue { .. } => Status::invalid_argument(message),
            EngineError::UnknownQueue { .. } => Status::not_found(message),
            EngineError::UnknownAgent(_) => Status::not_found(message),
            EngineError::UnknownReservation(_) => Status::not_found(message),
            EngineError::ReservationExpired(_) => Status::failed_precondition(message),
            EngineError::ReservationSettled { .. } => Status::failed_precondition(message),
            EngineError::NoActiveContact { .. } => Status::not_found(message),
            EngineError::NotWaiting(_) => Status::not_found(message),
            EngineError::AgentBusy { .. } => Status::failed_precondition(message),
            EngineError::TooManyAgents { .. } => Status::resource_exhausted(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

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
                    field: "transfer_from.queue_id",
                    id: "q".into(),
                },
                Code::NotFound,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }
}
