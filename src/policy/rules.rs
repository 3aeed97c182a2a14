//! A rule's conditions: whether a contact matches them, and whether one
//! rule's conditions cover another's (so the later one can never match).

use super::{IntentIdx, Policy, QueueIdx, Resolved};
use crate::model::{Channel, ChannelSet, Contact, Identity, Urgency, language_ranges};

/// The conditions of one rule; every condition set must hold. `None` (or an
/// empty attribute list) places no condition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Match {
    /// The contact's channel is one of these.
    pub channels: Option<ChannelSet>,
    /// The contact's intent is one of these.
    pub intents: Option<Vec<IntentIdx>>,
    /// The contact's urgency is one of these.
    pub urgencies: Option<Vec<Urgency>>,
    /// The contact's identity state is one of these.
    pub identities: Option<Vec<Identity>>,
    /// The caller did (or did not) ask for a supervisor or manager.
    pub escalation_requested: Option<bool>,
    /// Each of these attributes has exactly this value.
    pub attributes: Vec<(String, String)>,
    /// At least one of these signals was detected.
    pub signals: Option<Vec<String>>,
    /// The contact's language (or the default) is one of these.
    pub languages: Option<Vec<String>>,
    /// The main schedule is closed (true) or open (false).
    pub after_hours: Option<bool>,
    /// The contact was transferred from one of these queues.
    pub transferred_from: Option<Vec<QueueIdx>>,
    /// The contact was (or was not) transferred by an agent.
    pub transferred: Option<bool>,
}

fn one_of<T: PartialEq>(allowed: &Option<Vec<T>>, value: &T) -> bool {
    allowed.as_ref().is_none_or(|a| a.contains(value))
}

/// `wide` places no condition, or allows everything `narrow` allows; a
/// `wide` list of every value a rule can see (`all`, when known) places
/// none either.
fn covers_set<T: PartialEq>(wide: &Option<Vec<T>>, narrow: &Option<Vec<T>>, all: &[T]) -> bool {
    match (wide, narrow) {
        (None, _) => true,
        (Some(w), None) => !all.is_empty() && all.iter().all(|x| w.contains(x)),
        (Some(w), Some(n)) => n.iter().all(|x| w.contains(x)),
    }
}

/// Whether every contact language `narrow` matches, `wide` matches: a
/// language of `wide` takes its regional forms, so `es` covers `es-MX`.
fn covers_languages(wide: &Option<Vec<String>>, narrow: &Option<Vec<String>>) -> bool {
    match (wide, narrow) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(w), Some(n)) => n.iter().all(|x| takes_language(w, x)),
    }
}

/// Whether a rule's `languages` take a contact speaking `tag`: one of them
/// is the tag or a shorter form of it (`es` takes `es-MX`, `es-MX` not
/// `es`).
fn takes_language(languages: &[String], tag: &str) -> bool {
    language_ranges(tag).any(|range| languages.iter().any(|l| l == range))
}

/// The urgencies a rule can see: the emergency guard answers emergency
/// contacts before any rule.
pub const RULE_URGENCIES: [Urgency; 2] = [Urgency::Routine, Urgency::Urgent];

fn covers_flag(wide: Option<bool>, narrow: Option<bool>) -> bool {
    wide.is_none() || wide == narrow
}

impl Match {
    /// Whether `contact` meets every condition.
    pub fn matches(
        &self,
        policy: &Policy,
        contact: &Contact,
        facts: Resolved,
        after_hours: bool,
    ) -> bool {
        self.channels.is_none_or(|c| c.contains(contact.channel))
            && one_of(&self.intents, &facts.intent)
            && one_of(&self.urgencies, &contact.urgency)
            && one_of(&self.identities, &contact.identity)
            && self
                .escalation_requested
                .is_none_or(|e| e == contact.escalation_requested)
            && self
                .attributes
                .iter()
                .all(|(k, v)| contact.attribute(k) == Some(v.as_str()))
            && self
                .signals
                .as_ref()
                .is_none_or(|s| contact.signals.iter().any(|x| s.contains(x)))
            && self.languages.as_ref().is_none_or(|l| {
                let lang = contact
                    .language
                    .as_deref()
                    .unwrap_or(&policy.default_language);
                takes_language(l, lang)
            })
            && self.after_hours.is_none_or(|a| a == after_hours)
            && self
                .transferred_from
                .as_ref()
                .is_none_or(|q| facts.transfer_from.is_some_and(|f| q.contains(&f)))
            && self
                .transferred
                .is_none_or(|t| t == contact.transfer_from.is_some())
    }

    /// Whether every contact `other` matches is matched by `self` too: a rule
    /// listed after one that covers it can never match.
    pub fn covers(&self, other: &Match) -> bool {
        let channels = match (self.channels, other.channels) {
            (None, _) => true,
            (Some(w), None) => Channel::ALL.iter().all(|&c| w.contains(c)),
            (Some(w), Some(n)) => w.is_superset(n),
        };
        channels
            && covers_set(&self.intents, &other.intents, &[])
            && covers_set(&self.urgencies, &other.urgencies, &RULE_URGENCIES)
            && covers_set(&self.identities, &other.identities, &Identity::ALL)
            && covers_flag(self.escalation_requested, other.escalation_requested)
            && self.attributes.iter().all(|a| other.attributes.contains(a))
            && covers_set(&self.signals, &other.signals, &[])
            && covers_languages(&self.languages, &other.languages)
            && covers_flag(self.after_hours, other.after_hours)
            && covers_set(&self.transferred_from, &other.transferred_from, &[])
            && covers_flag(self.transferred, other.transferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice() -> Option<ChannelSet> {
        let mut s = ChannelSet::default();
        s.insert(Channel::Voice);
        Some(s)
    }

    #[test]
    fn catch_all_covers_everything_and_narrow_covers_nothing_wider() {
        let all = Match::default();
        let billing_voice = Match {
            channels: voice(),
            intents: Some(vec![1]),
            ..Match::default()
        };
        let billing_escalated = Match {
            intents: Some(vec![1]),
            escalation_requested: Some(true),
            attributes: vec![("payment_plan".into(), "offered".into())],
            ..Match::default()
        };
        assert!(all.covers(&billing_voice));
        assert!(all.covers(&billing_escalated));
        assert!(!billing_voice.covers(&all));
        assert!(!billing_voice.covers(&billing_escalated), "channel differs");
        assert!(!billing_escalated.covers(&billing_voice));
        let billing = Match {
            intents: Some(vec![1, 2]),
            ..Match::default()
        };
        assert!(billing.covers(&billing_escalated));
        assert!(billing.covers(&billing_voice));
    }

    #[test]
    fn a_language_covers_its_regional_forms_and_not_the_other_way() {
        let langs = |l: &[&str]| Match {
            languages: Some(l.iter().map(|x| x.to_string()).collect()),
            ..Match::default()
        };
        assert!(langs(&["es"]).covers(&langs(&["es-MX"])));
        assert!(langs(&["es", "en"]).covers(&langs(&["es-MX", "en-US", "en"])));
        assert!(!langs(&["es-MX"]).covers(&langs(&["es"])));
        assert!(!langs(&["es"]).covers(&langs(&["es-MX", "fr"])));
    }

    #[test]
    fn signals_cover_only_subsets() {
        let wide = Match {
            signals: Some(vec!["a".into(), "b".into()]),
            ..Match::default()
        };
        let narrow = Match {
            signals: Some(vec!["a".into()]),
            ..Match::default()
        };
        assert!(wide.covers(&narrow));
        assert!(!narrow.covers(&wide));
        assert!(!narrow.covers(&Match::default()));
    }

    /// A list of every value a rule can see places no condition: it
    /// covers a rule that leaves that condition open.
    #[test]
    fn a_list_of_every_value_is_no_condition() {
        let mut every_channel = ChannelSet::default();
        for c in Channel::ALL {
            every_channel.insert(c);
        }
        let wide = Match {
            channels: Some(every_channel),
            ..Match::default()
        };
        assert!(wide.covers(&Match::default()));
        let wide = Match {
            identities: Some(Identity::ALL.to_vec()),
            ..Match::default()
        };
        assert!(wide.covers(&Match::default()));
        // Emergencies never reach a rule: routine and urgent are all.
        let wide = Match {
            urgencies: Some(RULE_URGENCIES.to_vec()),
            ..Match::default()
        };
        assert!(wide.covers(&Match::default()));
        let narrow = Match {
            urgencies: Some(vec![Urgency::Routine]),
            ..Match::default()
        };
        assert!(!narrow.covers(&Match::default()));
        assert!(!voice_only().covers(&Match::default()));
    }

    fn voice_only() -> Match {
        Match {
            channels: voice(),
            ..Match::default()
        }
    }
}
