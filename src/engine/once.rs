//! Settling commands sent with the client's request id (confirm, release,
//! complete, cancel): a retry after a lost answer, with the same id and the
//! same command, answers what the first answered and changes nothing; the
//! same id with another command for the same target is refused. The replies
//! are kept for the idempotency window, as RouteContact's are.

use serde::{Deserialize, Serialize};

use super::command::{Apply, Cancel, Command, Complete, Confirm, Release};
use super::{Engine, EngineError, roster};
use crate::model::Time;
use crate::policy::Text;

/// A settling command with the client's request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Once<C> {
    /// The client's id for this request; a retry repeats it.
    pub request_id: String,
    /// The command.
    pub command: C,
}

/// What a [`Once`] answers: the command's answer, and whether it was the
/// first's, replayed (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered<T> {
    /// The answer.
    pub out: T,
    /// A retry answered from the first.
    pub replayed: bool,
}

/// The answer kept for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kept {
    /// A confirm: the agent and contact.
    Confirmed(Text, String),
    /// A release.
    Released,
    /// A completion: when wrap-up ends.
    Completed(Time),
    /// A cancel.
    Cancelled,
}

/// A command that settles something once: what its replies are kept under
/// and how its answer is kept.
pub trait Settle: Apply + Clone + Into<Command> {
    /// What it acts on (a reservation, a contact): with the request id, the
    /// key its reply is kept under.
    fn target(&self) -> String;
    /// The whole command as text, so a retry can be told from another
    /// command under the same key.
    fn canonical(&self) -> String;
    /// Its answer, to keep.
    fn keep(out: &Self::Output) -> Kept;
    /// A kept answer as its own, if it is one of its kind.
    fn replay(kept: &Kept) -> Option<Self::Output>;
}

impl Settle for Confirm {
    fn target(&self) -> String {
        self.0.to_string()
    }
    fn canonical(&self) -> String {
        format!("confirm\0{}", self.0)
    }
    fn keep((agent, contact): &(Text, String)) -> Kept {
        Kept::Confirmed(agent.clone(), contact.clone())
    }
    fn replay(kept: &Kept) -> Option<(Text, String)> {
        match kept {
            Kept::Confirmed(agent, contact) => Some((agent.clone(), contact.clone())),
            _ => None,
        }
    }
}

impl Settle for Release {
    fn target(&self) -> String {
        self.0.to_string()
    }
    fn canonical(&self) -> String {
        format!("release\0{}\0{}", self.0, self.1.as_str())
    }
    fn keep((): &()) -> Kept {
        Kept::Released
    }
    fn replay(kept: &Kept) -> Option<()> {
        matches!(kept, Kept::Released).then_some(())
    }
}

impl Settle for Complete {
    fn target(&self) -> String {
        self.contact_id.clone()
    }
    fn canonical(&self) -> String {
        format!("complete\0{}\0{}", self.agent_id, self.contact_id)
    }
    fn keep(until: &Time) -> Kept {
        Kept::Completed(*until)
    }
    fn replay(kept: &Kept) -> Option<Time> {
        match kept {
            Kept::Completed(until) => Some(*until),
            _ => None,
        }
    }
}

impl Settle for Cancel {
    fn target(&self) -> String {
        self.0.clone()
    }
    fn canonical(&self) -> String {
        format!("cancel\0{}", self.0)
    }
    fn keep((): &()) -> Kept {
        Kept::Cancelled
    }
    fn replay(kept: &Kept) -> Option<()> {
        matches!(kept, Kept::Cancelled).then_some(())
    }
}

impl<C> Once<C> {
    /// `command`, sent with the client's `request_id`.
    pub fn new(request_id: impl Into<String>, command: C) -> Once<C> {
        Once {
            request_id: request_id.into(),
            command,
        }
    }
}

impl<C: Settle> Apply for Once<C> {
    type Output = Answered<C::Output>;
    fn apply_at(self, e: &mut Engine, now: Time) -> Result<Self::Output, EngineError> {
        // What is due first, as the command itself would: an entry past its
        // window is forgotten before it is looked up.
        e.advance(now);
        let key = (
            roster::text(&self.request_id),
            roster::text(&self.command.target()),
        );
        let digest = crc32fast::hash(self.command.canonical().as_bytes());
        if let Some((kept_digest, kept)) = e.settle_replies.get(&key) {
            return match C::replay(kept).filter(|_| *kept_digest == digest) {
                Some(out) => Ok(Answered {
                    out,
                    replayed: true,
                }),
                None => Err(EngineError::RequestIdReused),
            };
        }
        let out = self.command.apply_at(e, now)?;
        e.settle_replies.insert(key, (digest, C::keep(&out)), now);
        Ok(Answered {
            out,
            replayed: false,
        })
    }
}

impl<C: Settle> From<Once<C>> for Command {
    fn from(once: Once<C>) -> Command {
        Command::Once {
            request_id: once.request_id,
            command: Box::new(once.command.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::engine::{
        AgentSpec, EngineConfig, Outcome, ReservationId, Route, SetAgentState, UpsertAgent,
    };
    use crate::model::{AgentState, Channel, Contact, Identity, ReleaseReason};
    use crate::policy::Policy;

    fn engine_with_offers(n: usize) -> (Engine, Vec<ReservationId>, Time) {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
        let mut e = Engine::new(
            Arc::new(Policy::embedded().unwrap()),
            EngineConfig::default(),
        );
        let mut offers = Vec::new();
        for i in 0..n {
            let id = format!("b{i}");
            e.apply(
                UpsertAgent(AgentSpec {
                    id: id.clone(),
                    team: "Billing".into(),
                    transfer_address: format!("sip:{id}"),
                    skills: vec![("billing".into(), 3)],
                    languages: vec!["en".into()],
                    channels: vec![(Channel::Voice, 1)],
                }),
                t,
            )
            .unwrap();
            e.apply(
                SetAgentState {
                    agent_id: id,
                    state: AgentState::Available,
                },
                t,
            )
            .unwrap();
            let mut c = Contact::new(format!("c{i}"), "billing");
            c.identity = Identity::Verified;
            match e.apply(Route(&c), t).unwrap().outcome {
                Outcome::Agent(a) => offers.push(a.reservation),
                other => panic!("{other:?}"),
            }
        }
        (e, offers, t)
    }

    fn once<C>(request_id: &str, command: C) -> Once<C> {
        Once {
            request_id: request_id.into(),
            command,
        }
    }

    #[test]
    fn a_retry_is_answered_as_the_first_and_changes_nothing() {
        let (mut e, offers, t) = engine_with_offers(2);
        let first = e.apply(once("q1", Confirm(offers[0])), t).unwrap();
        assert!(!first.replayed);
        let before = e.live_reservations();
        let again = e.apply(once("q1", Confirm(offers[0])), t).unwrap();
        assert!(again.replayed);
        assert_eq!(again.out, first.out);
        assert_eq!(e.live_reservations(), before);
        // Without the request id, or with another, a second confirm is
        // refused as before: only a retry is answered.
        assert!(matches!(
            e.apply(Confirm(offers[0]), t),
            Err(EngineError::ReservationSettled { .. })
        ));
        assert!(matches!(
            e.apply(once("q2", Confirm(offers[0])), t),
            Err(EngineError::ReservationSettled { .. })
        ));
        // The same id with another command for the same reservation.
        assert_eq!(
            e.apply(once("q1", Release(offers[0], ReleaseReason::Rejected)), t),
            Err(EngineError::RequestIdReused)
        );
        // Release with a reason; a retry with another reason is refused.
        let r = once("q3", Release(offers[1], ReleaseReason::Rejected));
        assert!(!e.apply(r.clone(), t).unwrap().replayed);
        assert!(e.apply(r, t).unwrap().replayed);
        assert_eq!(
            e.apply(once("q3", Release(offers[1], ReleaseReason::NoAnswer)), t),
            Err(EngineError::RequestIdReused)
        );
        // Completion keeps when wrap-up ends.
        let done = Complete {
            agent_id: first.out.0.to_string(),
            contact_id: first.out.1.clone(),
        };
        let until = e.apply(once("q4", done.clone()), t).unwrap();
        let later = t + chrono::Duration::seconds(5);
        let retried = e.apply(once("q4", done), later).unwrap();
        assert!(retried.replayed);
        assert_eq!(retried.out, until.out);
    }

    #[test]
    fn a_refusal_is_not_kept_and_the_window_ends() {
        let (mut e, offers, t) = engine_with_offers(1);
        // A cancel of a contact not waiting is refused, and not kept: the
        // same id later acts anew.
        assert!(e.apply(once("q1", Cancel("c0".into())), t).is_err());
        let window = EngineConfig::default().idempotency_retention;
        e.apply(once("q2", Confirm(offers[0])), t).unwrap();
        let after = t + window + chrono::Duration::seconds(1);
        assert!(matches!(
            e.apply(once("q2", Confirm(offers[0])), after),
            Err(EngineError::ReservationSettled { .. })
        ));
    }
}
