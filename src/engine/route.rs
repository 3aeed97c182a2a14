//! Routing one contact: the policy's plan, then the preferred or longest
//! idle agent, a place in line or a callback; the decision recorded.

use std::sync::Arc;

use super::roster::{self, Pick};
use super::{
    AgentIdx, CallbackOffer, Decision, DecisionId, Engine, EngineError, Guidance, IdKind, Outcome,
    QueueNamed, Slot, Withdrawal,
};
use crate::model::{CallbackReason, Contact, Reason, Time};
use crate::policy::{Guard, IntentIdx, Policy, QueueIdx, Resolved, Rule, Step, Stray, Text};

/// What routing decided, before the decision is dressed and recorded.
struct Verdict<'p> {
    /// The decision's id.
    id: DecisionId,
    /// The guard that decided instead of a rule.
    guard: Option<Guard>,
    /// The rule that decided.
    rule: Option<&'p Rule>,
    /// Why, in the order found.
    reasons: Vec<Reason>,
    /// The queue that owns the outcome, if any.
    queue: Option<QueueIdx>,
    /// Where the contact goes.
    outcome: Outcome,
}

/// Checks the contact's signals, attributes and transfer against the
/// policy's vocabulary; returns the queue handing it on.
fn vocabulary(policy: &Policy, contact: &Contact) -> Result<Option<QueueIdx>, EngineError> {
    let attributes = contact
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    match policy.stray(&contact.signals, attributes) {
        Some(Stray::Signal(_)) => {
            return Err(EngineError::UnknownSignal {
                allowed: policy.signal_names(),
            });
        }
        Some(Stray::Attribute(_)) => {
            return Err(EngineError::UnknownAttribute {
                allowed: policy.attribute_names(),
            });
        }
        Some(Stray::Value { key, allowed, .. }) => {
            return Err(EngineError::AttributeValue {
                key: key.to_owned(),
                allowed: allowed.join(", "),
            });
        }
        None => {}
    }
    let transfer_from = match &contact.transfer_from {
        Some(t) => {
            Some(
                policy
                    .queue_idx(&t.queue_id)
                    .ok_or_else(|| EngineError::UnknownQueue {
                        named: QueueNamed::TransferFrom,
                        id: t.queue_id.clone(),
                    })?,
            )
        }
        None => None,
    };
    Ok(transfer_from)
}

/// The contact's intent in the policy's vocabulary.
fn intent(policy: &Policy, contact: &Contact) -> Result<IntentIdx, EngineError> {
    if contact.intent.is_empty() {
        return Err(EngineError::MissingIntent);
    }
    policy
        .intent_idx(&contact.intent)
        .ok_or_else(|| EngineError::UnknownIntent {
            allowed: policy.intent_names(),
        })
}

/// The policy's emergency script as an outcome.
fn emergency(policy: &Policy) -> Outcome {
    Outcome::Emergency {
        script_id: policy.emergency.script_id.clone(),
        instruction: policy.emergency.instruction.clone(),
    }
}

impl Engine {
    /// Decides where one contact goes at `now`, reserving an agent for a warm
    /// transfer when there is one.
    pub(super) fn route(&mut self, contact: &Contact, now: Time) -> Result<Decision, EngineError> {
        self.advance(now);
        // Built once: looked up now, and kept with the reply if it is new.
        let reply_key = contact
            .request_id
            .as_deref()
            .map(|r| (roster::text(&contact.contact_id), roster::text(r)));
        if let Some((digest, first)) = reply_key.as_ref().and_then(|key| self.replies.get(key)) {
            if *digest != contact.digest() {
                return Err(EngineError::RequestIdReused);
            }
            let mut replay = Decision::clone(first);
            replay.reasons.push(Reason::IdempotentReplay);
            return Ok(replay);
        }
        let policy = Arc::clone(&self.policy);
        // Every contact keeps to the vocabulary (the log keeps nothing it
        // keeps out), but an emergency may come without an intent: the IVR
        // may not have told it, and the script does not depend on it.
        let transfer_from = vocabulary(&policy, contact)?;
        if let Some(plan) = policy.emergency_guard(contact) {
            if !contact.intent.is_empty() {
                intent(&policy, contact)?;
            }
            let freed = self.supersede(contact, now);
            let id = self.next_decision_id();
            let verdict = Verdict {
                id,
                guard: plan.guard,
                rule: None,
                reasons: plan.reasons,
                queue: None,
                outcome: emergency(&policy),
            };
            let decision = self.decide(&policy, contact, verdict, reply_key, now);
            self.dispatch_freed(freed, now);
            return Ok(decision);
        }
        let facts = Resolved {
            intent: intent(&policy, contact)?,
            transfer_from,
        };
        let freed = self.supersede(contact, now);
        let plan = policy.plan(contact, facts, now);
        // The rule that decided: none when a guard overrode it.
        let rule = plan
            .rule
            .filter(|_| plan.guard.is_none())
            .map(|r| &policy.rules[r]);
        let mut reasons = plan.reasons;
        let id = self.next_decision_id();

        let (queue, outcome) = match plan.step {
            Step::Emergency => (None, emergency(&policy)),
            Step::Authenticate { failed, target } => {
                let a = &policy.authenticate;
                let (script_id, instruction) = if failed {
                    (a.failed_script_id.clone(), a.failed_instruction.clone())
                } else {
                    (a.script_id.clone(), a.instruction.clone())
                };
                (
                    target,
                    Outcome::Authenticate {
                        script_id,
                        instruction,
                    },
                )
            }
            Step::Callback { queue, reason } => (
                Some(queue),
                self.callback(queue, reason, facts, contact, now),
            ),
            Step::Route { queue } => {
                let chosen = self.choose(queue, contact);
                if contact.preferred_agent_id.is_some() && !matches!(chosen, Some((_, true))) {
                    reasons.push(Reason::PreferredAgentUnavailable);
                }
                let outcome = match chosen {
                    Some(pick) => {
                        reasons.push(if pick.1 {
                            Reason::PreferredAgent
                        } else {
                            Reason::LongestIdle
                        });
                        if pick.0.interpreter_needed {
                            reasons.push(Reason::InterpreterNeeded);
                        }
                        let slot = Slot {
                            queue,
                            contact_id: &contact.contact_id,
                            channel: contact.channel,
                            waiter: None,
                        };
                        Outcome::Agent(self.reserve(pick.0, slot, now))
                    }
                    // Nobody logged in with room on the contact's channel
                    // (in the queue's pool or a wider one ahead), or the
                    // queue does not take the channel: its line could not
                    // be served.
                    None if !policy.queues[queue].channels.contains(contact.channel)
                        || self.unservable(queue, contact.channel) =>
                    {
                        reasons.push(Reason::NoAgentsStaffed);
                        self.callback(queue, CallbackReason::NoAgentsStaffed, facts, contact, now)
                    }
                    None => match self.enqueue(
                        queue,
                        contact,
                        facts,
                        id,
                        reasons.contains(&Reason::IdentityDeferred),
                        now,
                    ) {
                        Ok(offer) => {
                            reasons.push(Reason::Queued);
                            Outcome::Queued(offer)
                        }
                        Err(reason) => {
                            reasons.push(match reason {
                                CallbackReason::QueueFull => Reason::QueueFull,
                                CallbackReason::WaitTooLong => Reason::WaitTooLong,
                                _ => Reason::NoAgentAvailable,
                            });
                            self.callback(queue, reason, facts, contact, now)
                        }
                    },
                };
                (Some(queue), outcome)
            }
        };

        let verdict = Verdict {
            id,
            guard: plan.guard,
            rule,
            reasons,
            queue,
            outcome,
        };
        let decision = self.decide(&policy, contact, verdict, reply_key, now);
        self.dispatch_freed(freed, now);
        Ok(decision)
    }

    /// A new hop supersedes any place in line the contact held (its offer
    /// withdrawn), the offer an earlier hop reserved for it, and any
    /// callback kept for a watcher that has not connected. Returns the
    /// agents whose offers were withdrawn: the contact is decided again
    /// before they go to anyone else, so a contact routed again while its
    /// offer is out is not passed over for one behind it.
    fn supersede(&mut self, contact: &Contact, now: Time) -> [Option<AgentIdx>; 2] {
        let from_line = self.withdraw_from_line(&contact.contact_id, Withdrawal::Rerouted, now);
        let offered = self.withdraw_offer(&contact.contact_id, now);
        if !self.undelivered.is_empty() {
            self.undelivered.forget(&contact.contact_id);
        }
        // The earlier hop ended before this one is decided.
        self.acts_from_here();
        [from_line, offered]
    }

    /// Offers the agents freed by [`Engine::supersede`] what waits, once
    /// the contact routed again was decided (it may have taken one).
    fn dispatch_freed(&mut self, freed: [Option<AgentIdx>; 2], now: Time) {
        for agent in freed.into_iter().flatten() {
            self.dispatch(agent, now);
        }
    }

    /// A new decision's id, never handed out before.
    fn next_decision_id(&mut self) -> DecisionId {
        self.next_id += 1;
        DecisionId(self.id(IdKind::Decision, self.next_id))
    }

    /// The decision with its level, team and guidance, recorded.
    fn decide(
        &mut self,
        policy: &Policy,
        contact: &Contact,
        verdict: Verdict<'_>,
        reply_key: Option<(Text, Text)>,
        now: Time,
    ) -> Decision {
        let Verdict {
            id,
            guard,
            rule,
            reasons,
            queue,
            outcome,
        } = verdict;
        let (level, team) = match (&outcome, queue) {
            (Outcome::Emergency { .. }, _) => {
                (policy.emergency.level, policy.emergency.team.clone())
            }
            (_, Some(q)) => (policy.queues[q].level, policy.queues[q].team.clone()),
            (_, None) => {
                let q = &policy.queues[policy.default_queue];
                (q.level, q.team.clone())
            }
        };
        let guidance = Guidance {
            identity: reasons
                .contains(&Reason::IdentityDeferred)
                .then(|| policy.authenticate.verify_during_call.clone()),
            rule: rule.map(|r| r.guidance.clone()),
            queue: match (queue, &outcome) {
                (_, Outcome::Emergency { .. }) | (None, _) => None,
                (Some(q), _) => Some(policy.queues[q].guidance.clone()),
            },
        };
        let decision = Decision {
            id,
            rule_id: match guard {
                Some(guard) => Some(Text::from(guard.id())),
                None => rule.map(|r| r.id.clone()),
            },
            reasons,
            level,
            team,
            guidance,
            outcome,
        };
        self.record(
            contact,
            &decision,
            queue.map(|q| policy.queues[q].id.clone()),
            reply_key,
            now,
        );
        decision
    }

    /// The preferred agent if eligible and free, else the longest idle free
    /// agent (speakers of the contact's language first). Never the agent
    /// handing the contact on. The flag says whether the preferred agent won.
    fn choose(&self, queue: QueueIdx, contact: &Contact) -> Option<(Pick, bool)> {
        let exclude = contact
            .transfer_from
            .as_ref()
            .and_then(|t| t.agent_id.as_deref())
            .and_then(|id| self.roster.find(id));
        let language = contact
            .language
            .as_deref()
            .unwrap_or(&self.policy.default_language);
        let langs = self.roster.speakers_of(language);
        if let Some(a) = contact
            .preferred_agent_id
            .as_deref()
            .and_then(|id| self.roster.find(id))
            && Some(a) != exclude
            && self.roster.is_free_for(a, queue, contact.channel)
        {
            let speaks = langs
                .clone()
                .any(|l| self.roster.agent(a).languages.contains(&l));
            return Some((
                Pick {
                    agent: a,
                    interpreter_needed: !speaks,
                },
                true,
            ));
        }
        self.roster
            .pick(queue, contact.channel, langs, exclude.as_slice())
            .map(|p| (p, false))
    }

    fn callback(
        &mut self,
        queue: QueueIdx,
        reason: CallbackReason,
        facts: Resolved,
        contact: &Contact,
        now: Time,
    ) -> Outcome {
        self.stats[queue].callbacks += 1;
        Outcome::Callback(CallbackOffer::new(
            &self.policy,
            queue,
            reason,
            facts.intent,
            contact.urgency,
            now,
        ))
    }
}
