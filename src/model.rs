//! The vocabulary shared by the policy and the engine: channels, urgency,
//! identity, agent states and the contact being routed. Plain data; imports
//! nothing from the gRPC edge.

use std::fmt;

/// Instants everywhere in the core: wall-clock UTC, passed in by the caller.
pub type Time = chrono::DateTime<chrono::Utc>;

/// How the patient reached us.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Channel {
    /// A phone call.
    Voice,
    /// Web or app chat, including chatbot handoffs.
    Chat,
    /// Text messages.
    Sms,
    /// Email.
    Email,
    /// Patient portal messages.
    Portal,
}

impl Channel {
    /// Every channel, in index order.
    pub const ALL: [Channel; 5] = [
        Channel::Voice,
        Channel::Chat,
        Channel::Sms,
        Channel::Email,
        Channel::Portal,
    ];

    /// Dense index for per-channel arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The one-bit mask of this channel in a [`ChannelSet`].
    pub fn bit(self) -> u8 {
        1 << self.index()
    }

    /// The lowercase name used in policy files, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Voice => "voice",
            Channel::Chat => "chat",
            Channel::Sms => "sms",
            Channel::Email => "email",
            Channel::Portal => "portal",
        }
    }

    /// Parses a policy-file name.
    pub fn parse(name: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of channels as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ChannelSet(pub u8);

impl ChannelSet {
    /// Whether `c` is in the set.
    pub fn contains(self, c: Channel) -> bool {
        self.0 & c.bit() != 0
    }

    /// Adds `c`.
    pub fn insert(&mut self, c: Channel) {
        self.0 |= c.bit();
    }

    /// Whether `self` and `other` share a channel.
    pub fn intersects(self, other: ChannelSet) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every channel of `other` is in `self`.
    pub fn is_superset(self, other: ChannelSet) -> bool {
        self.0 & other.0 == other.0
    }
}

/// How soon the patient needs help, as the IVR, NLU or agent judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Urgency {
    /// Can wait for the normal path.
    Routine,
    /// Needs the clinical path today (after hours: the on-call queue).
    Urgent,
    /// Emergency wording: the emergency script, whatever the rules say.
    Emergency,
}

impl Urgency {
    /// Every urgency.
    pub const ALL: [Urgency; 3] = [Urgency::Routine, Urgency::Urgent, Urgency::Emergency];

    /// The lowercase name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Urgency::Routine => "routine",
            Urgency::Urgent => "urgent",
            Urgency::Emergency => "emergency",
        }
    }

    /// Parses a policy-file name.
    pub fn parse(name: &str) -> Option<Urgency> {
        Urgency::ALL.into_iter().find(|u| u.as_str() == name)
    }
}

/// Where the caller's identity check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Identity {
    /// Nobody tried to verify the caller yet.
    NotAttempted,
    /// The caller passed the approved checks.
    Verified,
    /// The caller could not pass the checks.
    Failed,
}

impl Identity {
    /// Every state of the check.
    pub const ALL: [Identity; 3] = [Identity::NotAttempted, Identity::Verified, Identity::Failed];

    /// The lowercase name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::NotAttempted => "not_attempted",
            Identity::Verified => "verified",
            Identity::Failed => "failed",
        }
    }

    /// Parses a policy-file name.
    pub fn parse(name: &str) -> Option<Identity> {
        Identity::ALL.into_iter().find(|i| i.as_str() == name)
    }
}

/// Number of agent states.
pub const STATES: usize = AgentState::ALL.len();

/// An agent's state as the CTI platform reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum AgentState {
    /// Logged out: not staffed.
    Offline,
    /// Ready for contacts on channels with free capacity.
    Available,
    /// Busy outside careroute's reservations (or on a contact careroute routed).
    Busy,
    /// Finishing notes after a contact.
    WrapUp,
    /// Logged in but on a break: staffed, not offered contacts.
    Away,
    /// Let too many offers time out in a row: paused until the CTI sets
    /// another state, so contacts are not offered to a dead seat.
    NotResponding,
}

impl AgentState {
    /// Every state, in metric order.
    pub const ALL: [AgentState; 6] = [
        AgentState::Offline,
        AgentState::Available,
        AgentState::Busy,
        AgentState::WrapUp,
        AgentState::Away,
        AgentState::NotResponding,
    ];

    /// The lowercase name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Offline => "offline",
            AgentState::Available => "available",
            AgentState::Busy => "busy",
            AgentState::WrapUp => "wrap_up",
            AgentState::Away => "away",
            AgentState::NotResponding => "not_responding",
        }
    }
}

/// The queue and agent handing a contact on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferFrom {
    /// A queue id of the policy.
    pub queue_id: String,
    /// The agent handing over, never chosen again for this hop.
    pub agent_id: Option<String>,
}

/// One inbound contact as the edge validated it. Routing attributes and opaque
/// references only: never a name, a date of birth or a phone number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Contact {
    /// Opaque identity across hops.
    pub contact_id: String,
    /// Idempotency key for retries.
    pub request_id: Option<String>,
    /// How the patient reached us.
    pub channel: Channel,
    /// Request type in the policy's vocabulary.
    pub intent: String,
    /// How soon help is needed.
    pub urgency: Urgency,
    /// Where the identity check stands.
    pub identity: Identity,
    /// Language tag; `None` means the policy's default language.
    pub language: Option<String>,
    /// The caller asked for a supervisor or manager.
    pub escalation_requested: bool,
    /// Tags an upstream NLU detected.
    pub signals: Vec<String>,
    /// Routing attributes declared by the policy.
    pub attributes: Vec<(String, String)>,
    /// Set when an agent transfers or escalates the contact.
    pub transfer_from: Option<TransferFrom>,
    /// Continuity: this agent first, if eligible and free.
    pub preferred_agent_id: Option<String>,
}

impl Contact {
    /// A routine, unauthenticated voice contact with no attributes: the base
    /// that tests and benches adjust.
    pub fn new(contact_id: impl Into<String>, intent: impl Into<String>) -> Contact {
        Contact {
            contact_id: contact_id.into(),
            request_id: None,
            channel: Channel::Voice,
            intent: intent.into(),
            urgency: Urgency::Routine,
            identity: Identity::NotAttempted,
            language: None,
            escalation_requested: false,
            signals: Vec::new(),
            attributes: Vec::new(),
            transfer_from: None,
            preferred_agent_id: None,
        }
    }

    /// A checksum (CRC-32) of everything in the request but its request
    /// id: a retry carries the same, a different request under a reused
    /// request id does not. Stable across processes and builds, since a
    /// journal keeps it.
    pub fn digest(&self) -> u32 {
        let mut h = crc32fast::Hasher::new();
        // Each field with its length, so no two contacts run together.
        let mut put = |s: &[u8]| {
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s);
        };
        const NONE: &[u8] = b"\0none";
        put(self.contact_id.as_bytes());
        put(self.channel.as_str().as_bytes());
        put(self.intent.as_bytes());
        put(self.urgency.as_str().as_bytes());
        put(self.identity.as_str().as_bytes());
        put(self.language.as_deref().map_or(NONE, str::as_bytes));
        put(if self.escalation_requested {
            b"1"
        } else {
            b"0"
        });
        // Signals and attributes are sets: in any order, the same request
        // (a map on the wire comes in no fixed order): hashed sorted, after
        // their count.
        let mut signals: Vec<&str> = self.signals.iter().map(String::as_str).collect();
        signals.sort_unstable();
        put(&(signals.len() as u64).to_le_bytes());
        for s in signals {
            put(s.as_bytes());
        }
        let mut attributes: Vec<&(String, String)> = self.attributes.iter().collect();
        attributes.sort_unstable();
        put(&(attributes.len() as u64).to_le_bytes());
        for (k, v) in attributes {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        match &self.transfer_from {
            Some(t) => {
                put(t.queue_id.as_bytes());
                put(t.agent_id.as_deref().map_or(NONE, str::as_bytes));
            }
            None => put(NONE),
        }
        put(self
            .preferred_agent_id
            .as_deref()
            .map_or(NONE, str::as_bytes));
        h.finalize()
    }

    /// The value of one routing attribute.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a decision came out as it did; several apply to one decision. The
/// names are bounded and safe as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Reason {
    /// A policy rule matched.
    RuleMatched,
    /// No rule matched; the policy's default queue was used.
    DefaultQueue,
    /// The contact's urgency was emergency.
    EmergencyUrgency,
    /// An emergency signal was detected.
    EmergencySignal,
    /// Escalation asked or needed, identity not attempted.
    IdentityNotAttempted,
    /// Escalation asked or needed, identity check failed.
    IdentityFailed,
    /// A transfer within a team that forbids it went to the escalation target.
    SameTeamTransferRedirected,
    /// The target queue was closed; an urgent contact went to its on-call queue.
    AfterHoursOnCall,
    /// The target queue was closed.
    QueueClosed,
    /// Nobody eligible for the queue is logged in.
    NoAgentsStaffed,
    /// Agents are staffed but none is free.
    NoAgentAvailable,
    /// The preferred agent took the contact.
    PreferredAgent,
    /// The eligible agent idle longest took the contact.
    LongestIdle,
    /// No free agent speaks the contact's language.
    InterpreterNeeded,
    /// The matched rule answers with a callback.
    PolicyCallback,
    /// The matched rule answers "authenticate".
    PolicyAuthenticate,
    /// A retry with a known request id: the first decision, unchanged.
    IdempotentReplay,
    /// No agent free: the contact waits in the queue.
    Queued,
    /// No agent free and the queue's line is full.
    QueueFull,
    /// No agent free and the estimated wait is over the queue's limit.
    WaitTooLong,
    /// An urgent contact for a clinical queue whose identity is not
    /// verified: routed without waiting, to verify during the call.
    IdentityDeferred,
    /// A preferred agent was named but could not take the contact: unknown,
    /// not free, not eligible for the queue, or the agent handing it on.
    PreferredAgentUnavailable,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 22] = [
        Reason::RuleMatched,
        Reason::DefaultQueue,
        Reason::EmergencyUrgency,
        Reason::EmergencySignal,
        Reason::IdentityNotAttempted,
        Reason::IdentityFailed,
        Reason::SameTeamTransferRedirected,
        Reason::AfterHoursOnCall,
        Reason::QueueClosed,
        Reason::NoAgentsStaffed,
        Reason::NoAgentAvailable,
        Reason::PreferredAgent,
        Reason::LongestIdle,
        Reason::InterpreterNeeded,
        Reason::PolicyCallback,
        Reason::PolicyAuthenticate,
        Reason::IdempotentReplay,
        Reason::Queued,
        Reason::QueueFull,
        Reason::WaitTooLong,
        Reason::IdentityDeferred,
        Reason::PreferredAgentUnavailable,
    ];

    /// The snake_case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RuleMatched => "rule_matched",
            Reason::DefaultQueue => "default_queue",
            Reason::EmergencyUrgency => "emergency_urgency",
            Reason::EmergencySignal => "emergency_signal",
            Reason::IdentityNotAttempted => "identity_not_attempted",
            Reason::IdentityFailed => "identity_failed",
            Reason::SameTeamTransferRedirected => "same_team_transfer_redirected",
            Reason::AfterHoursOnCall => "after_hours_on_call",
            Reason::QueueClosed => "queue_closed",
            Reason::NoAgentsStaffed => "no_agents_staffed",
            Reason::NoAgentAvailable => "no_agent_available",
            Reason::PreferredAgent => "preferred_agent",
            Reason::LongestIdle => "longest_idle",
            Reason::InterpreterNeeded => "interpreter_needed",
            Reason::PolicyCallback => "policy_callback",
            Reason::PolicyAuthenticate => "policy_authenticate",
            Reason::IdempotentReplay => "idempotent_replay",
            Reason::Queued => "queued",
            Reason::QueueFull => "queue_full",
            Reason::WaitTooLong => "wait_too_long",
            Reason::IdentityDeferred => "identity_deferred",
            Reason::PreferredAgentUnavailable => "preferred_agent_unavailable",
        }
    }
}

/// Why an offer was released rather than confirmed. Only the agent's own
/// misses (it rejected the offer, or did not answer) count toward pausing
/// it; the IVR's and the network's do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReleaseReason {
    /// Not given: the agent may not have the contact again before the
    /// cool-down, but it is not counted as the agent's miss.
    Unspecified,
    /// The agent rejected the offer.
    Rejected,
    /// The agent did not answer.
    NoAnswer,
    /// The caller hung up before the transfer connected.
    CallerHungUp,
    /// The transfer failed (telephony, network): nobody's miss.
    TransferFailed,
}

impl ReleaseReason {
    /// Every reason.
    pub const ALL: [ReleaseReason; 5] = [
        ReleaseReason::Unspecified,
        ReleaseReason::Rejected,
        ReleaseReason::NoAnswer,
        ReleaseReason::CallerHungUp,
        ReleaseReason::TransferFailed,
    ];

    /// Whether the release is the agent's own miss.
    pub fn agents_miss(self) -> bool {
        matches!(self, ReleaseReason::Rejected | ReleaseReason::NoAnswer)
    }

    /// Whether the agent passed on the contact (it is not offered it again
    /// before the cool-down).
    pub fn passed(self) -> bool {
        matches!(
            self,
            ReleaseReason::Rejected | ReleaseReason::NoAnswer | ReleaseReason::Unspecified
        )
    }

    /// A bounded label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Unspecified => "unspecified",
            ReleaseReason::Rejected => "rejected",
            ReleaseReason::NoAnswer => "no_answer",
            ReleaseReason::CallerHungUp => "caller_hung_up",
            ReleaseReason::TransferFailed => "transfer_failed",
        }
    }
}

/// Why a callback ticket instead of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CallbackReason {
    /// The queue is outside its opening hours.
    Closed,
    /// Nobody eligible is logged in.
    NoAgentsStaffed,
    /// Too many contacts waiting.
    QueueFull,
    /// Agents are staffed but none is free.
    NoAgentAvailable,
    /// The estimated wait is over the queue's limit.
    WaitTooLong,
    /// The matched rule asks for a callback.
    Policy,
}

impl CallbackReason {
    /// Every callback reason, in declaration order.
    pub const ALL: [CallbackReason; 6] = [
        CallbackReason::Closed,
        CallbackReason::NoAgentsStaffed,
        CallbackReason::QueueFull,
        CallbackReason::NoAgentAvailable,
        CallbackReason::WaitTooLong,
        CallbackReason::Policy,
    ];

    /// The snake_case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CallbackReason::Closed => "closed",
            CallbackReason::NoAgentsStaffed => "no_agents_staffed",
            CallbackReason::QueueFull => "queue_full",
            CallbackReason::NoAgentAvailable => "no_agent_available",
            CallbackReason::WaitTooLong => "wait_too_long",
            CallbackReason::Policy => "policy",
        }
    }
}

/// Most contacts an agent takes at once on one channel (its profile's
/// capacity, and a policy's cross-channel thresholds).
pub const MAX_CHANNEL_CAPACITY: u8 = 50;

/// The highest skill proficiency (the lowest is 1).
pub const MAX_PROFICIENCY: u8 = 5;

/// The hash map of the routing path: aHash with per-process random keys,
/// several times faster than SipHash and still resistant to hash flooding
/// through client-chosen ids.
pub type FastMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_sees_the_request_not_its_id_or_the_order_of_its_sets() {
        let mut a = Contact::new("c1", "billing");
        a.attributes = vec![
            ("coverage".into(), "in_network".into()),
            ("plan".into(), "offered".into()),
        ];
        a.signals = vec!["x".into(), "y".into()];
        let mut b = a.clone();
        b.attributes.reverse();
        b.signals.reverse();
        b.request_id = Some("r-2".into());
        assert_eq!(a.digest(), b.digest());
        // Any field that routes is seen, and fields do not run together.
        let mut c = a.clone();
        c.language = Some("es".into());
        assert_ne!(a.digest(), c.digest());
        let mut d = a.clone();
        d.attributes = vec![
            ("coverage".into(), "in_networkplan".into()),
            ("".into(), "offered".into()),
        ];
        assert_ne!(a.digest(), d.digest());
    }

    #[test]
    fn all_lists_are_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, r) in CallbackReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, s) in AgentState::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
        for (i, c) in Channel::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }
}

/// A language tag in its canonical case, since BCP 47 tags are
/// case-insensitive (RFC 5646 2.1.1, by `oxilangtag`): the language
/// lowercase, a script title case (`Hant`), a region uppercase (`BR`), the
/// rest lowercase, and everything after a singleton lowercase; so `pt-br`,
/// `PT-BR` and `pt-BR` are one language, shown as `pt-BR`. A tag that is
/// not well-formed (checked at the edge before this) is lowercased.
pub fn language_tag(tag: &str) -> String {
    oxilangtag::LanguageTag::parse_and_normalize(tag)
        .map(oxilangtag::LanguageTag::into_inner)
        .unwrap_or_else(|_| tag.to_ascii_lowercase())
}

/// The language ranges a contact's `tag` is served by, most specific
/// first: the tag, then each shorter form of it (`zh-Hant-HK`, `zh-Hant`,
/// `zh`), as RFC 4647's lookup falls back. An agent who speaks `es` speaks
/// to an `es-MX` caller.
pub fn language_ranges(tag: &str) -> impl Iterator<Item = &str> + Clone {
    let mut end = Some(tag.len());
    std::iter::from_fn(move || {
        let range = &tag[..end?];
        end = range.rfind('-');
        Some(range)
    })
}

#[cfg(test)]
mod language_tests {
    use super::{language_ranges, language_tag};

    #[test]
    fn a_tag_is_served_by_itself_then_each_shorter_form() {
        let ranges = |tag| language_ranges(tag).collect::<Vec<_>>();
        assert_eq!(ranges("zh-Hant-HK"), ["zh-Hant-HK", "zh-Hant", "zh"]);
        assert_eq!(ranges("es-MX"), ["es-MX", "es"]);
        assert_eq!(ranges("en"), ["en"]);
    }

    #[test]
    fn language_tags_are_one_whatever_their_case() {
        for (tag, canonical) in [
            ("pt-br", "pt-BR"),
            ("PT-BR", "pt-BR"),
            ("pt-BR", "pt-BR"),
            ("EN", "en"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("es-419", "es-419"),
            ("sgn-BE-FR", "sgn-BE-FR"),
            ("es-419-X-Ab", "es-419-x-ab"),
            ("en-a-BC", "en-a-bc"),
            ("en-x-abcd", "en-x-abcd"),
        ] {
            assert_eq!(language_tag(tag), canonical, "{tag}");
        }
    }
}
