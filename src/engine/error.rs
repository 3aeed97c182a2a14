//! Why the engine refused an operation. The gRPC edge maps each variant to a
//! status code, and to the request field it is about, in one exhaustive
//! match: messages here say what is wrong in the engine's words, never the
//! value a client sent (an id may be anything a client chose to put in it);
//! the values are kept for tests and for the engine's own checks.

/// An operation the engine refused; the state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The contact's intent is not in the policy's vocabulary; the message
    /// lists the policy's intents, never the value sent.
    #[error("not an intent of the policy ({allowed})")]
    UnknownIntent {
        /// The policy's intents.
        allowed: String,
    },
    /// The contact has no intent and is not an emergency.
    #[error("required unless the contact is an emergency")]
    MissingIntent,
    /// The contact carries a signal the policy does not know; the message
    /// lists the policy's signals, never the value sent.
    #[error("a signal is not one the policy knows ({allowed})")]
    UnknownSignal {
        /// The policy's signals.
        allowed: String,
    },
    /// The contact carries an attribute the policy does not declare; the
    /// message lists the declared keys, never the key sent.
    #[error("a key is not declared by the policy ({allowed})")]
    UnknownAttribute {
        /// The declared keys.
        allowed: String,
    },
    /// The contact carries a declared attribute with a value not declared.
    #[error("value is not one of the declared values: {allowed}")]
    AttributeValue {
        /// The attribute.
        key: String,
        /// The values the policy allows.
        allowed: String,
    },
    /// A request names a queue the policy does not have.
    #[error("no such queue in the policy")]
    UnknownQueue {
        /// Where the request named it.
        named: QueueNamed,
        /// The id given.
        id: String,
    },
    /// A request id already used for this contact with a different
    /// request: refused, never answered with the first decision.
    #[error(
        "already used for a different request to the same contact or reservation (REQUEST_ID_REUSED); a retry must repeat the request unchanged"
    )]
    RequestIdReused,
    /// No agent with this id.
    #[error("no such agent")]
    UnknownAgent(String),
    /// No reservation with this id was ever made here, or it was forgotten.
    #[error("no such reservation (never made here, or forgotten)")]
    UnknownReservation(String),
    /// The reservation's TTL passed before it was confirmed.
    #[error("the reservation expired before it was confirmed")]
    ReservationExpired(String),
    /// The reservation was already confirmed or released.
    #[error("the reservation was already {how}")]
    ReservationSettled {
        /// The reservation.
        id: String,
        /// Which.
        how: Settled,
    },
    /// The contact is not waiting in any queue.
    #[error("the contact is not waiting in any queue")]
    NotWaiting(String),
    /// The agent cannot be removed while it holds work.
    #[error("the agent holds {what}: remove it once that ends (or set it offline now)")]
    AgentBusy {
        /// The agent.
        agent: String,
        /// "a live reservation" or "an active contact".
        what: &'static str,
    },
    /// Registering a new agent would pass the configured maximum.
    #[error("the roster is full ({max} agents); remove agents first")]
    TooManyAgents {
        /// The agent that was refused.
        agent: String,
        /// The configured maximum.
        max: usize,
    },
    /// The agent has no active contact with this id.
    #[error("the agent has no such active contact")]
    NoActiveContact {
        /// The agent.
        agent: String,
        /// The contact id given.
        contact: String,
    },
}

/// Where a request named a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueNamed {
    /// The queue a transfer came from.
    TransferFrom,
    /// The queue a listing is filtered by.
    Filter,
}

/// How a reservation was settled before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Confirmed: the contact went to the agent.
    Confirmed,
    /// Released: the offer was given up.
    Released,
}

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Settled::Confirmed => "confirmed",
            Settled::Released => "released",
        })
    }
}
