//! What a decision is: where one contact goes (a reserved agent, a
//! callback ticket, a place in line, a script) and why, with the ids
//! clients are given for it.

use std::{fmt, str::FromStr};

use super::QueuedOffer;
use crate::model::{CallbackReason, Reason, Time, Urgency};
use crate::policy::{CallbackTerms, IntentIdx, Policy, QueueIdx, Text, TextList};

macro_rules! hex_id {
    ($name:ident, $prefix:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u128);

        /// As its text in JSON (the log, exports: what clients hold), as
        /// its number in binary snapshots.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.collect_str(self)
                } else {
                    s.serialize_u128(self.0)
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                    text.parse()
                        .map_err(|()| serde::de::Error::custom(concat!("not a ", $prefix, " id")))
                } else {
                    u128::deserialize(d).map($name)
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:032x}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let hex = s.strip_prefix($prefix).ok_or(())?;
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(());
                }
                u128::from_str_radix(hex, 16).map($name).map_err(|_| ())
            }
        }
    };
}

hex_id!(
    DecisionId,
    "d-",
    "Identifies one decision in logs, paths and replies."
);
hex_id!(
    ReservationId,
    "r-",
    "Identifies one reservation of an agent."
);

/// A warm transfer to a reserved agent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentOffer {
    /// Who.
    pub agent_id: Text,
    /// SIP URI or extension.
    pub transfer_address: Text,
    /// Through which queue.
    pub queue_id: Text,
    /// The reservation to confirm or release.
    pub reservation: ReservationId,
    /// When the reservation lapses unless confirmed.
    pub expires_at: Time,
    /// The agent does not speak the contact's language.
    pub interpreter_needed: bool,
}

/// A callback ticket to open.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallbackOffer {
    /// Owning queue.
    pub queue_id: Text,
    /// Why not a transfer.
    pub reason: CallbackReason,
    /// Ticket type, deadline, priority, intake fields.
    pub terms: CallbackTerms,
}

impl CallbackOffer {
    /// The ticket `policy` gives a contact of `intent` and `urgency` owned
    /// by `queue`, from `now`.
    pub fn new(
        policy: &Policy,
        queue: QueueIdx,
        reason: CallbackReason,
        intent: IntentIdx,
        urgency: Urgency,
        now: Time,
    ) -> CallbackOffer {
        CallbackOffer {
            queue_id: policy.queues[queue].id.clone(),
            reason,
            terms: policy.callback_terms(queue, intent, urgency, now),
        }
    }
}

/// Exactly one outcome per decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// Warm transfer to a reserved agent.
    Agent(AgentOffer),
    /// Open a callback ticket.
    Callback(CallbackOffer),
    /// Wait in a queue; an agent is assigned when one frees up.
    Queued(QueuedOffer),
    /// The emergency script.
    Emergency {
        /// Script id.
        script_id: Text,
        /// What the agent does.
        instruction: Text,
    },
    /// Verify the caller first.
    Authenticate {
        /// Script id.
        script_id: Text,
        /// What the agent does.
        instruction: Text,
    },
}

impl Outcome {
    /// "agent", "callback", "emergency" or "authenticate": a bounded label.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Agent(_) => "agent",
            Outcome::Callback(_) => "callback",
            Outcome::Queued(_) => "queued",
            Outcome::Emergency { .. } => "emergency",
            Outcome::Authenticate { .. } => "authenticate",
        }
    }
}

/// Where one contact goes, and why.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Unique id.
    pub id: DecisionId,
    /// What decided: the matched rule's id, or the guard's that overrode
    /// it (`guard:identity`, `guard:emergency`); none for the default
    /// queue.
    pub rule_id: Option<Text>,
    /// Why, in the order the reasons applied.
    pub reasons: Vec<Reason>,
    /// Escalation level 1-4 of the owner.
    pub level: u8,
    /// Owning team.
    pub team: Text,
    /// Guidance for the receiving agent: the rule's, then the queue's.
    pub guidance: Guidance,
    /// What happens.
    pub outcome: Outcome,
}

impl Decision {
    /// The queue that owns the contact after this decision, if any.
    pub fn queue_id(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Agent(a) => Some(&a.queue_id),
            Outcome::Callback(c) => Some(&c.queue_id),
            Outcome::Queued(q) => Some(&q.queue_id),
            Outcome::Emergency { .. } | Outcome::Authenticate { .. } => None,
        }
    }

    /// A retry answered with the first decision: nothing was decided anew.
    pub fn replayed(&self) -> bool {
        self.reasons.last() == Some(&Reason::IdempotentReplay)
    }
}

/// Guidance from the policy, shared with it rather than copied.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Guidance {
    /// The identity guard's, when an urgent clinical contact goes on
    /// before its identity is verified.
    pub identity: Option<TextList>,
    /// The matched rule's, when the rule decided.
    pub rule: Option<TextList>,
    /// The owning queue's.
    pub queue: Option<TextList>,
}

impl Guidance {
    /// Every line: the identity guard's first, then the rule's, then the
    /// queue's.
    pub fn iter(&self) -> impl Iterator<Item = &Text> {
        self.identity
            .iter()
            .chain(self.rule.iter())
            .chain(self.queue.iter())
            .flat_map(|l| l.iter())
    }
}
