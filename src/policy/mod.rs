//! The routing policy as data: schedules, queues, intents and the ordered rule
//! list, loaded and validated from the TOML file operations staff write
//! ([`load`]), and [`Policy::plan`], the pure function that applies the rules
//! and the healthcare guards to one contact. It decides *where* a contact
//! goes; the engine decides *who* takes it. Knows nothing of agents, gRPC or
//! tokio.

mod load;
mod rules;
pub mod schedule;

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::Duration;
use chrono_tz::Tz;

pub use load::{PolicyError, parse, parse_logged, read};
pub use rules::{Match, RULE_URGENCIES};
pub use schedule::Schedule;

use crate::model::{
    CallbackReason, Channel, ChannelSet, Contact, FastMap, Identity, Reason, Time, Urgency,
};

/// Channels there are.
const CHANNELS: usize = Channel::ALL.len();

/// The default policy compiled into the binary: the healthcare example.
pub const DEFAULT_POLICY: &str = include_str!("../../examples/healthcare.toml");
/// The name messages use for the embedded default.
pub const DEFAULT_POLICY_NAME: &str = "examples/healthcare.toml (embedded)";

/// Index of a queue in [`Policy::queues`].
pub type QueueIdx = usize;
/// Index of an intent in [`Policy::intents`].
pub type IntentIdx = usize;

/// Shared, immutable text copied into decisions without allocating.
pub type Text = Arc<str>;
/// A shared list of texts (guidance, intake fields).
pub type TextList = Arc<[Text]>;

/// A contact's word the policy's vocabulary does not have
/// ([`Policy::stray`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stray<'c> {
    /// A signal it does not know.
    Signal(&'c str),
    /// An attribute key it does not declare.
    Attribute(&'c str),
    /// A value the attribute does not allow.
    Value {
        /// The attribute.
        key: &'c str,
        /// The value given.
        value: &'c str,
        /// The values it allows.
        allowed: &'c [String],
    },
}

/// A validated routing policy.
#[derive(Debug)]
pub struct Policy {
    /// Where it came from, for messages.
    pub source: String,
    /// The text it was parsed from: a log of the engine's commands holds
    /// it, so a replay uses the policy that was in force.
    pub text: Arc<str>,
    /// The policy's own version label.
    pub version: String,
    /// Language assumed when a contact names none.
    pub default_language: String,
    /// Where contacts go when no rule matches.
    pub default_queue: QueueIdx,
    /// The schedule a rule's `after_hours` is judged against.
    pub main_schedule: usize,
    /// How long an agent stays reserved without a confirm.
    pub reservation_ttl: Duration,
    /// A waiting contact gains one priority point per this much wait.
    pub priority_aging: Duration,
    /// Offers an agent may let time out in a row before being set not-responding.
    pub missed_offers_to_pause: u32,
    /// Cross-channel utilization: which work blocks new contacts on which
    /// channel. None by default: channels are independent.
    pub blocks: Blocks,
    /// A waiting contact every eligible agent passed on (rejected or let
    /// lapse) may be offered again to one who passed after this long.
    pub reoffer_after: Duration,
    /// The emergency answer.
    pub emergency: Emergency,
    /// The "authenticate first" answers.
    pub authenticate: Authenticate,
    /// Whether an escalation request (a supervisor, a manager) needs a
    /// verified identity first, unless its rule says otherwise.
    pub identity_before_escalation: bool,
    /// Every signal contacts may carry: the top-level `signals`, those of
    /// `[emergency]` and those the rules name.
    pub signals: BTreeSet<String>,
    /// Routing attributes contacts may carry, with their allowed values.
    pub attributes: FastMap<String, Vec<String>>,
    /// Request types.
    pub intents: Vec<Intent>,
    /// Opening hours.
    pub schedules: Vec<Schedule>,
    /// Queues, in file order.
    pub queues: Vec<Queue>,
    /// Ordered rules: first match wins.
    pub rules: Vec<Rule>,
    intent_ids: FastMap<String, IntentIdx>,
    queue_ids: FastMap<String, QueueIdx>,
}

/// The emergency answer, given whatever the rules say.
#[derive(Debug)]
pub struct Emergency {
    /// Script the agent or IVR plays.
    pub script_id: Text,
    /// Short instruction for the agent.
    pub instruction: Text,
    /// NLU tags that mean emergency.
    pub signals: Vec<String>,
    /// Escalation level reported with the answer.
    pub level: u8,
    /// Owning team reported with the answer.
    pub team: Text,
}

/// The answers that ask for identity verification before escalating.
#[derive(Debug)]
pub struct Authenticate {
    /// Script when identity was not attempted.
    pub script_id: Text,
    /// Instruction when identity was not attempted.
    pub instruction: Text,
    /// Script when identity verification failed.
    pub failed_script_id: Text,
    /// Instruction when identity verification failed.
    pub failed_instruction: Text,
    /// Guidance with an urgent clinical contact routed before its identity
    /// was verified.
    pub verify_during_call: TextList,
}

/// A request type and its callback terms.
#[derive(Debug)]
pub struct Intent {
    /// The name contacts carry.
    pub id: Text,
    /// Callback window in business minutes of the owning queue.
    pub callback_window_minutes: u32,
    /// Callback priority, 1 most urgent; urgent contacts always get 1.
    pub callback_priority: u8,
    /// What the ticket must capture.
    pub intake_fields: TextList,
}

/// A queue of agents with the skills it needs.
#[derive(Debug, Clone)]
pub struct Queue {
    /// The id rules and clients use.
    pub id: Text,
    /// Escalation level 1-4.
    pub level: u8,
    /// Owning team.
    pub team: Text,
    /// Skills an agent needs, with minimum proficiency 1-5.
    pub skills: Vec<(String, u8)>,
    /// Other skill sets that also qualify an agent (a relaxation step's
    /// wider pool: relaxed skills, or an overflow queue's skills).
    pub also_qualify: Vec<Vec<(String, u8)>>,
    /// Requirement relaxation: after each wait, a waiting contact moves to
    /// a wider pool.
    pub steps: Vec<WaitStep>,
    /// For a step's wider pool: the queue it widens. Such queues are
    /// internal: no rule names them and views count them in their parent.
    pub parent: Option<QueueIdx>,
    /// Channels the queue takes.
    pub channels: ChannelSet,
    /// Opening hours; `None` is always open.
    pub schedule: Option<usize>,
    /// Where the telephony platform parks a transfer to the queue itself.
    pub transfer_address: Text,
    /// Wrap-up time after each contact.
    pub wrap_up: Duration,
    /// Contacts that may wait for an agent; 0 answers with a callback instead.
    pub max_waiting: u32,
    /// Longest estimated wait offered; beyond it, a callback.
    pub max_wait: Duration,
    /// Longest actual wait in line: a contact still waiting then leaves
    /// the line with a callback (`wait_too_long`). Defaults to `max_wait`.
    pub max_wait_in_line: Duration,
    /// Answered within this counts toward the service level.
    pub service_level: Duration,
    /// Handle time assumed until the service has observed some.
    pub handle_time: Duration,
    /// Ticket type of callbacks it owns.
    pub callback_ticket_type: Text,
    /// When closed, urgent contacts go here (the on-call path).
    pub after_hours_urgent_to: Option<QueueIdx>,
    /// Whether agents may transfer to another agent of the same team.
    pub same_team_transfers: bool,
    /// Where contacts go instead of a forbidden same-team transfer.
    pub escalate_to: Option<QueueIdx>,
    /// Contacts reach it only with a verified identity ("authenticate
    /// first" otherwise), urgent clinical contacts excepted.
    pub requires_identity: bool,
    /// Licensed clinical staff: an urgent contact bound here is never held
    /// for identity; it is verified during the call.
    pub clinical: bool,
    /// Guidance for the receiving agent.
    pub guidance: TextList,
}

/// One relaxation step of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStep {
    /// Wait after which the step applies.
    pub after: Duration,
    /// The wider pool the contact moves to.
    pub pool: QueueIdx,
}

/// What a rule does with a matching contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Warm transfer through a queue.
    Route(QueueIdx),
    /// Open a callback ticket owned by a queue.
    Callback(QueueIdx),
    /// The emergency script.
    Emergency,
    /// Verify the caller first.
    Authenticate,
}

/// One rule of the ordered list.
#[derive(Debug)]
pub struct Rule {
    /// Id reported in decisions.
    pub id: Text,
    /// What a contact must look like.
    pub when: Match,
    /// What happens to it.
    pub action: Action,
    /// Whether its contacts need a verified identity first: `None` leaves
    /// it to the policy (escalation requests) and the target queue.
    pub requires_identity: Option<bool>,
    /// Guidance for the agent.
    pub guidance: TextList,
}

/// Where a contact goes before an agent is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The emergency script.
    Emergency,
    /// Verify first; `target` is where the contact would have gone.
    Authenticate {
        /// Identity was attempted and failed.
        failed: bool,
        /// The queue the escalation aimed at, if any.
        target: Option<QueueIdx>,
    },
    /// A callback ticket owned by `queue`.
    Callback {
        /// Owning queue.
        queue: QueueIdx,
        /// Why.
        reason: CallbackReason,
    },
    /// Pick an agent of `queue`.
    Route {
        /// The queue whose agents are eligible.
        queue: QueueIdx,
    },
}

/// A built-in guard that decided instead of the matched rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Emergency urgency or an emergency signal.
    Emergency,
    /// Identity before an escalation or a queue that requires it.
    Identity,
}

impl Guard {
    /// The id a decision names it by, where a rule's id would be.
    pub fn id(self) -> &'static str {
        match self {
            Guard::Emergency => "guard:emergency",
            Guard::Identity => "guard:identity",
        }
    }
}

/// The policy's verdict on one contact.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Index of the matched rule.
    pub rule: Option<usize>,
    /// The guard that decided instead of the rule, if one did.
    pub guard: Option<Guard>,
    /// Why, so far.
    pub reasons: Vec<Reason>,
    /// What to do.
    pub step: Step,
}

/// Facts about a contact resolved against the policy once, by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// The contact's intent.
    pub intent: IntentIdx,
    /// The queue handing the contact on.
    pub transfer_from: Option<QueueIdx>,
}

/// The callback terms for one ticket.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallbackTerms {
    /// e.g. "Patient Callback".
    pub ticket_type: Text,
    /// Deadline: the window in business hours of the owning queue.
    pub deadline: Time,
    /// The owning queue's time zone, to show the deadline locally.
    pub time_zone: Tz,
    /// The window, in minutes.
    pub window_minutes: u32,
    /// 1 most urgent.
    pub priority: u8,
    /// What the ticket must capture.
    pub intake_fields: TextList,
}

impl Policy {
    /// The embedded default policy.
    pub fn embedded() -> Result<Policy, PolicyError> {
        parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY)
    }

    /// The time zone `name` names: an IANA zone, or a schedule of this
    /// policy (its zone).
    pub fn time_zone(&self, name: &str) -> Option<Tz> {
        name.parse().ok().or_else(|| {
            self.schedules
                .iter()
                .find(|s| s.id == name)
                .map(|s| s.time_zone)
        })
    }

    /// A queue by id.
    pub fn queue_idx(&self, id: &str) -> Option<QueueIdx> {
        self.queue_ids.get(id).copied()
    }

    /// An intent by name.
    pub fn intent_idx(&self, id: &str) -> Option<IntentIdx> {
        self.intent_ids.get(id).copied()
    }

    /// The intents, comma-separated, for messages.
    pub fn intent_names(&self) -> String {
        let names: Vec<&str> = self.intents.iter().map(|i| &*i.id).collect();
        names.join(", ")
    }

    /// The first of a contact's `signals` and `attributes` outside the
    /// policy's vocabulary, if any: what the engine refuses a contact for,
    /// and a policy test file at load.
    pub fn stray<'c>(
        &'c self,
        signals: &'c [String],
        attributes: impl IntoIterator<Item = (&'c str, &'c str)>,
    ) -> Option<Stray<'c>> {
        if let Some(signal) = signals.iter().find(|s| !self.signals.contains(*s)) {
            return Some(Stray::Signal(signal));
        }
        for (key, value) in attributes {
            let Some(allowed) = self.attributes.get(key) else {
                return Some(Stray::Attribute(key));
            };
            if !allowed.iter().any(|a| a == value) {
                return Some(Stray::Value {
                    key,
                    value,
                    allowed,
                });
            }
        }
        None
    }

    /// The signals contacts may carry, sorted and comma-separated, for
    /// messages.
    pub fn signal_names(&self) -> String {
        let names: Vec<&str> = self.signals.iter().map(String::as_str).collect();
        listed(names)
    }

    /// The declared attribute keys, sorted and comma-separated, for messages.
    pub fn attribute_names(&self) -> String {
        let mut names: Vec<&str> = self.attributes.keys().map(String::as_str).collect();
        names.sort_unstable();
        listed(names)
    }

    /// The queues clients see (not the internal pools of relaxation steps).
    pub fn visible_queues(&self) -> usize {
        self.queues.iter().filter(|q| q.parent.is_none()).count()
    }

    /// The queue a step's wider pool belongs to (itself otherwise).
    pub fn root(&self, queue: QueueIdx) -> QueueIdx {
        self.queues[queue].parent.unwrap_or(queue)
    }

    /// The ids clients know of `queues`: a step pool as its queue, each
    /// once, in the policy's order (step pools come after every queue, so
    /// the order they are given in is not it).
    pub fn client_queue_ids(&self, queues: impl IntoIterator<Item = QueueIdx>) -> Vec<Text> {
        let mut roots: Vec<QueueIdx> = queues.into_iter().map(|q| self.root(q)).collect();
        roots.sort_unstable();
        roots.dedup();
        roots
            .into_iter()
            .map(|q| self.queues[q].id.clone())
            .collect()
    }

    /// `queue` and the wider pools of its relaxation steps, in order.
    pub fn pools_of(&self, queue: QueueIdx) -> impl Iterator<Item = QueueIdx> + '_ {
        std::iter::once(queue).chain(self.queues[queue].steps.iter().map(|s| s.pool))
    }

    /// How far along its queue's relaxation steps a pool is: 0 for a queue
    /// itself, n for the pool of its n-th step.
    pub fn step_rank(&self, queue: QueueIdx) -> usize {
        self.queues[queue].parent.map_or(0, |p| {
            self.queues[p]
                .steps
                .iter()
                .position(|s| s.pool == queue)
                .map_or(0, |i| i + 1)
        })
    }

    /// Where each of this policy's queues is in `new`, found by id (queues
    /// are known by identity, never by position): a step's pool whose step
    /// is gone maps to its queue; a queue that is gone maps to nothing.
    pub fn queue_map(&self, new: &Policy) -> Vec<Option<QueueIdx>> {
        self.queues
            .iter()
            .map(|q| {
                new.queue_idx(&q.id)
                    .or_else(|| q.parent.and_then(|p| new.queue_idx(&self.queues[p].id)))
            })
            .collect()
    }

    /// Whether a queue qualifies an agent with these skills.
    pub fn qualifies(&self, queue: QueueIdx, meets: impl Fn(&[(String, u8)]) -> bool) -> bool {
        let q = &self.queues[queue];
        meets(&q.skills) || q.also_qualify.iter().any(|alt| meets(alt))
    }

    /// Whether a queue is open at `now`.
    pub fn is_open(&self, queue: QueueIdx, now: Time) -> bool {
        self.queues[queue]
            .schedule
            .is_none_or(|s| self.schedules[s].is_open(now))
    }

    /// When to look next whether `queue`, open at `now`, has closed (see
    /// [`Schedule::next_close`]); never for a queue without a schedule.
    pub fn next_close(&self, queue: QueueIdx, now: Time) -> Option<Time> {
        self.queues[queue]
            .schedule
            .map(|s| self.schedules[s].next_close(now))
    }

    /// Whether `contact`, matched by `rule`, needs a verified identity
    /// before it reaches `queue`: an escalation request (unless the policy
    /// or the rule says otherwise), a rule or a queue that requires it.
    fn needs_identity(&self, contact: &Contact, rule: Option<&Rule>, queue: QueueIdx) -> bool {
        let required = match rule.and_then(|r| r.requires_identity) {
            Some(required) => required,
            None => contact.escalation_requested && self.identity_before_escalation,
        };
        (required || self.queues[queue].requires_identity) && contact.identity != Identity::Verified
    }

    /// The emergency guard, ahead of every rule: emergency urgency or a
    /// red-flag signal gets the emergency script. It reads nothing else of
    /// the contact.
    pub fn emergency_guard(&self, contact: &Contact) -> Option<Plan> {
        let reason = if contact.urgency == Urgency::Emergency {
            Reason::EmergencyUrgency
        } else if contact
            .signals
            .iter()
            .any(|s| self.emergency.signals.contains(s))
        {
            Reason::EmergencySignal
        } else {
            return None;
        };
        let mut reasons = Vec::with_capacity(4);
        reasons.push(reason);
        Some(Plan {
            rule: None,
            guard: Some(Guard::Emergency),
            reasons,
            step: Step::Emergency,
        })
    }

    /// The id of the first rule matching `contact` at `now`, whether or not
    /// a guard then decides instead; `None` when none matches, for an
    /// emergency (its guard comes before the rules), or for an intent or
    /// queue the policy does not know.
    pub fn matching_rule(&self, contact: &Contact, now: Time) -> Option<&str> {
        let transfer_from = match &contact.transfer_from {
            Some(t) => Some(self.queue_idx(&t.queue_id)?),
            None => None,
        };
        let facts = Resolved {
            intent: self.intent_idx(&contact.intent)?,
            transfer_from,
        };
        let rule = self.plan(contact, facts, now).rule?;
        Some(&self.rules[rule].id)
    }

    /// Applies the guards and the first matching rule to one contact. The
    /// guards hold whatever the rules say: emergency first, then the
    /// same-team transfer redirect, the after-hours on-call path, identity
    /// before escalation, and a callback when the queue is closed.
    pub fn plan(&self, contact: &Contact, facts: Resolved, now: Time) -> Plan {
        if let Some(plan) = self.emergency_guard(contact) {
            return plan;
        }
        let mut reasons = Vec::with_capacity(4);
        let after_hours = !self.schedules[self.main_schedule].is_open(now);
        let rule = self
            .rules
            .iter()
            .position(|r| r.when.matches(self, contact, facts, after_hours));
        let action = match rule {
            Some(i) => {
                reasons.push(Reason::RuleMatched);
                self.rules[i].action
            }
            None => {
                reasons.push(Reason::DefaultQueue);
                Action::Route(self.default_queue)
            }
        };
        let mut guard = None;
        let step = match action {
            Action::Emergency => Step::Emergency,
            Action::Authenticate => {
                reasons.push(Reason::PolicyAuthenticate);
                Step::Authenticate {
                    failed: contact.identity == Identity::Failed,
                    target: None,
                }
            }
            Action::Route(q) | Action::Callback(q) => {
                let mut queue = self.redirect_same_team(q, facts, &mut reasons);
                let routed = matches!(action, Action::Route(_));
                let open = self.is_open(queue, now);
                if routed
                    && !open
                    && contact.urgency == Urgency::Urgent
                    && let Some(on_call) = self.queues[queue].after_hours_urgent_to
                    && self.is_open(on_call, now)
                    && self.queues[on_call].channels.contains(contact.channel)
                {
                    reasons.push(Reason::AfterHoursOnCall);
                    queue = on_call;
                }
                let needs_identity =
                    self.needs_identity(contact, rule.map(|i| &self.rules[i]), queue);
                // Clinical triage never waits for identity: an urgent
                // contact goes on, to be verified during the call.
                let deferred = needs_identity
                    && contact.urgency == Urgency::Urgent
                    && self.queues[queue].clinical;
                if deferred {
                    // Said as it is: a failed check may be an impostor.
                    reasons.push(if contact.identity == Identity::Failed {
                        Reason::IdentityFailed
                    } else {
                        Reason::IdentityNotAttempted
                    });
                    reasons.push(Reason::IdentityDeferred);
                }
                if needs_identity && !deferred {
                    guard = Some(Guard::Identity);
                    let failed = contact.identity == Identity::Failed;
                    reasons.push(if failed {
                        Reason::IdentityFailed
                    } else {
                        Reason::IdentityNotAttempted
                    });
                    Step::Authenticate {
                        failed,
                        target: Some(queue),
                    }
                } else if !routed {
                    reasons.push(Reason::PolicyCallback);
                    Step::Callback {
                        queue,
                        reason: CallbackReason::Policy,
                    }
                } else if !self.is_open(queue, now) {
                    reasons.push(Reason::QueueClosed);
                    Step::Callback {
                        queue,
                        reason: CallbackReason::Closed,
                    }
                } else {
                    Step::Route { queue }
                }
            }
        };
        Plan {
            rule,
            guard,
            reasons,
            step,
        }
    }

    /// A contact transferred out of a team that forbids transfers within it
    /// goes to that queue's escalation target instead of back to the team.
    fn redirect_same_team(
        &self,
        target: QueueIdx,
        facts: Resolved,
        reasons: &mut Vec<Reason>,
    ) -> QueueIdx {
        let Some(from) = facts.transfer_from.map(|f| &self.queues[f]) else {
            return target;
        };
        match from.escalate_to {
            Some(escalation)
                if !from.same_team_transfers && from.team == self.queues[target].team =>
            {
                reasons.push(Reason::SameTeamTransferRedirected);
                escalation
            }
            _ => target,
        }
    }

    /// The callback terms for a ticket owned by `queue` for this intent: the
    /// intent's window counted in the queue's business hours from `now`.
    pub fn callback_terms(
        &self,
        queue: QueueIdx,
        intent: IntentIdx,
        urgency: Urgency,
        now: Time,
    ) -> CallbackTerms {
        let q = &self.queues[queue];
        let intent = &self.intents[intent];
        let window = intent.callback_window_minutes;
        let (deadline, time_zone) = match q.schedule.map(|s| &self.schedules[s]) {
            Some(s) => (
                // Validation refuses schedules that never open, so the
                // fallback is never taken; it keeps the answer well-defined.
                s.add_business_minutes(now, window)
                    .unwrap_or(now + Duration::minutes(i64::from(window))),
                s.time_zone,
            ),
            None => (now + Duration::minutes(i64::from(window)), Tz::UTC),
        };
        CallbackTerms {
            ticket_type: q.callback_ticket_type.clone(),
            deadline,
            time_zone,
            window_minutes: window,
            priority: if urgency == Urgency::Urgent {
                1
            } else {
                intent.callback_priority
            },
            intake_fields: intent.intake_fields.clone(),
        }
    }
}

/// Names comma-separated for a message, or says there are none.
fn listed(names: Vec<&str>) -> String {
    if names.is_empty() {
        "the policy declares none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;

/// Cross-channel utilization: for each channel, how many contacts (offered
/// or in hand) on each other channel keep an agent from new contacts on
/// it; 0 is no limit. `[utilization.voice] blocked_by = { chat = 2 }`: an
/// agent with two chats gets no call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Blocks([[u8; CHANNELS]; CHANNELS]);

impl Blocks {
    /// Sets that `n` contacts on `by` block new ones on `channel`.
    pub fn set(&mut self, channel: Channel, by: Channel, n: u8) {
        self.0[channel.index()][by.index()] = n;
    }

    /// Whether work held (`held[c]`: contacts offered or in hand on each
    /// channel) blocks new contacts on `channel`.
    pub fn blocked(&self, channel: Channel, held: &[u16; CHANNELS]) -> bool {
        self.0[channel.index()]
            .iter()
            .zip(held)
            .any(|(&n, &h)| n > 0 && h >= u16::from(n))
    }

    /// Whether any channel blocks another.
    pub fn any(&self) -> bool {
        self.0.iter().flatten().any(|&n| n > 0)
    }
}
