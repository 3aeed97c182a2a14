//! Policy validation and plan tests.

use chrono::{TimeZone, Utc};

use super::*;
use crate::model::{Channel, Contact, TransferFrom};

const FILE: &str = "healthcare.toml";

#[test]
fn embedded_default_is_valid() {
    let p = Policy::embedded().unwrap();
    assert_eq!(p.version, "2026-11-22");
    assert_eq!(p.visible_queues(), 13);
    // Scheduling's two relaxation steps are two internal pools.
    let scheduling = &p.queues[p.queue_idx("scheduling").unwrap()];
    assert_eq!(scheduling.steps.len(), 2);
    assert_eq!(p.queues.len(), 15);
    let frontline_skills = &p.queues[p.queue_idx("frontline").unwrap()].skills;
    let last = &p.queues[scheduling.steps[1].pool];
    assert_eq!(last.parent, p.queue_idx("scheduling"));
    assert!(
        last.also_qualify.contains(frontline_skills),
        "overflow widens by frontline's skills"
    );
    for level in 1..=4 {
        assert!(
            p.queues.iter().any(|q| q.level == level),
            "a queue at level {level}"
        );
    }
    let res = &p.queues[p.queue_idx("resolutions").unwrap()];
    assert!(!res.same_team_transfers);
    assert_eq!(res.escalate_to, p.queue_idx("escalations"));
}

/// Applies `edit` to the example policy and returns the refusal.
fn refusal(from: &str, to: &str) -> (String, usize, String) {
    assert!(DEFAULT_POLICY.contains(from), "fixture lost: {from}");
    let text = DEFAULT_POLICY.replacen(from, to, 1);
    match parse(FILE, &text) {
        Err(PolicyError::Invalid {
            file,
            line,
            field,
            message,
        }) => {
            assert_eq!(file, FILE);
            let msg = PolicyError::Invalid {
                file: file.clone(),
                line,
                field: field.clone(),
                message: message.clone(),
            }
            .to_string();
            assert!(
                msg.starts_with(&format!("{FILE}:{line}: {field}: ")),
                "{msg}"
            );
            (field, line, message)
        }
        other => panic!("expected a refusal for {to:?}, got {other:?}"),
    }
}

/// The 1-based line of the first occurrence of `needle` after `edit`.
fn line_of(from: &str, to: &str, needle: &str) -> usize {
    let text = DEFAULT_POLICY.replacen(from, to, 1);
    let at = text.find(needle).unwrap();
    text[..at].matches('\n').count() + 1
}

#[test]
fn refusals_name_file_line_and_field() {
    let cases = [
        // (replace, with, field, a word of the message, the line holds)
        (
            "route_to = \"billing_escalations\"",
            "route_to = \"billing_escalation\"",
            "rules.supervisor-payment-plan-offered.route_to",
            "unknown queue",
            "route_to = \"billing_escalation\"",
        ),
        (
            "id = \"scheduling\"\nlevel = 1",
            "id = \"frontline\"\nlevel = 1",
            "queues[1].id",
            "duplicate queue id",
            "id = \"frontline\"\nlevel = 1\nteam = \"Patient Access\"\nskills = { scheduling",
        ),
        (
            "time_zone = \"America/New_York\"",
            "time_zone = \"America/Gotham\"",
            "schedules.business.time_zone",
            "IANA time zone",
            "America/Gotham",
        ),
        (
            "mon = \"09:00-17:00\"",
            "mon = \"17:00-09:00\"",
            "schedules.business.hours.mon",
            "closes before it opens",
            "17:00-09:00",
        ),
        (
            "level = 4",
            "level = 5",
            "queues.compliance.level",
            "not 1-4",
            "level = 5",
        ),
        (
            "transfer_address = \"sip:scheduling@pbx.careroute.example\"",
            "transfer_address = \"sip:scheduling@pbx created=x\"",
            "queues.scheduling.transfer_address",
            "no spaces",
            "created=x",
        ),
        (
            "skills = { compliance = 3 }",
            "skills = { compliance = 9 }",
            "queues.compliance.skills.compliance",
            "proficiency 9",
            "compliance = 9",
        ),
        (
            "channels = [\"voice\", \"email\"]",
            "channels = [\"voice\", \"fax\"]",
            "queues.compliance.channels",
            "`fax`",
            "\"fax\"",
        ),
        (
            "escalate_to = \"escalations\"\nguidance",
            "guidance",
            "queues.resolutions.escalate_to",
            "needs an escalate_to",
            "id = \"resolutions\"",
        ),
        (
            "attributes = { coverage = \"non_covered\" }",
            "attributes = { coverage = \"platinum\" }",
            "rules.supervisor-payment-non-covered.when.attributes.coverage",
            "declared values",
            "\"platinum\"",
        ),
        (
            "when = { intent = [\"refill\"] }",
            "when = { intent = [\"refil\"] }",
            "rules.refill.when.intent",
            "not an intent",
            "\"refil\"",
        ),
        (
            "reservation_ttl = \"15s\"",
            "reservation_ttl = \"fifteen\"",
            "reservation_ttl",
            "not a duration",
            "\"fifteen\"",
        ),
        (
            "reservation_ttl = \"15s\"",
            "reservation_ttl = \"15s\"\nreoffer_after = \"500ms\"",
            "reoffer_after",
            "at least 1s",
            "\"500ms\"",
        ),
        (
            "max_wait = \"15m\"",
            "max_wait = \"15m\"\nmax_wait_in_line = \"soon\"",
            "queues.scheduling.max_wait_in_line",
            "not a duration",
            "\"soon\"",
        ),
        (
            "[[rules]]\nid = \"identity-failed\"",
            "[[rules]]\nid = \"supervisor-other\"",
            "rules.supervisor-other.id",
            "duplicate rule id",
            "id = \"supervisor-other\"\ndescription = \"A caller who failed",
        ),
    ];
    let cases = cases.into_iter().chain([
        (
            "{ after = \"5m\", overflow_to = \"frontline\" }",
            "{ after = \"5m\", overflow_to = \"frontdesk\" }",
            "queues.scheduling.steps[1].overflow_to",
            "unknown queue",
            "\"frontdesk\"",
        ),
        (
            "{ after = \"5m\", overflow_to = \"frontline\" }",
            "{ after = \"1m\", overflow_to = \"frontline\" }",
            "queues.scheduling.steps[1].after",
            "later than the one before",
            "after = \"1m\"",
        ),
        // Cross-channel utilization, added after the escalation settings.
        (
            "missed_offers_to_pause = 3",
            "missed_offers_to_pause = 3\nutilization = { voice = { blocked_by = { fax = 1 } } }",
            "utilization.voice.blocked_by",
            "not one of: voice, chat",
            "fax = 1",
        ),
        (
            "missed_offers_to_pause = 3",
            "missed_offers_to_pause = 3\nutilization = { voice = { blocked_by = { voice = 1 } } }",
            "utilization.voice.blocked_by",
            "does not block itself",
            "voice = 1 } } }",
        ),
        (
            "missed_offers_to_pause = 3",
            "missed_offers_to_pause = 3\nutilization = { chat = { blocked_by = { voice = 0 } } }",
            "utilization.chat.blocked_by.voice",
            "not 1-50",
            "0 } } }",
        ),
        (
            "callback_window = \"8h\"",
            "callback_window = \"0s\"",
            "intents.complaint.callback_window",
            "at least 1m",
            "\"0s\"",
        ),
        (
            "holidays = [\"2026-11-26\", \"2026-12-25\", \"2027-01-01\"]",
            "holidays = [\"2026-11-26\", \"2026-12-25\", \"2026-11-26\"]",
            "schedules.business.holidays",
            "listed twice",
            "holidays = [",
        ),
        // Each at the line of the key it is about, not its table's first.
        (
            "channels = [\"voice\", \"email\"]",
            "channels = []",
            "queues.compliance.channels",
            "at least one channel",
            "channels = []",
        ),
        (
            "hours = { mon = \"09:00-17:00\", tue = \"09:00-17:00\", wed = \"09:00-17:00\", thu = \"09:00-17:00\", fri = \"09:00-17:00\" }",
            "hours = {}",
            "schedules.business.hours",
            "never opens",
            "hours = {}",
        ),
        (
            "id = \"escalations\"\nlevel = 2\nteam = \"Escalations\"",
            "id = \"escalations\"\nlevel = 2\nteam = \"Resolutions\"",
            "queues.resolutions.escalate_to",
            "same team",
            "escalate_to = \"escalations\"",
        ),
    ]);
    for (from, to, field, word, holds) in cases {
        let (got_field, line, message) = refusal(from, to);
        assert_eq!(got_field, field, "for {to:?}");
        assert!(message.contains(word), "{message:?} should say {word:?}");
        assert_eq!(line, line_of(from, to, holds), "line of {field}");
    }
}

/// Every name a contact or an agent brings has the shape the gRPC edge
/// takes: a policy word no request could carry would be a rule, guard or
/// skill that never matches, so it is refused at load.
#[test]
fn names_no_request_could_carry_are_refused() {
    let cases = [
        // (replace, with, field, the line holds)
        (
            "signals = [\"mild_worry\"]",
            "signals = [\"mild_worry\", \"Mild Worry\"]",
            "signals[1]",
            "\"Mild Worry\"",
        ),
        (
            "signals = [\"chest_pain\",",
            "signals = [\"chest-pain\",",
            "emergency.signals[0]",
            "\"chest-pain\"",
        ),
        (
            "[intents.billing]",
            "[intents.Billing]",
            "intents.Billing",
            "[intents.Billing]",
        ),
        (
            "coverage = [\"in_network\",",
            "coverage = [\"in network\",",
            "attributes.coverage",
            "\"in network\"",
        ),
        (
            "skills = { billing = 4 }",
            "skills = { \"billing desk\" = 4 }",
            "queues.billing_escalations.skills",
            "\"billing desk\" = 4",
        ),
        (
            "{ after = \"2m\", skills = { scheduling = 1 } }",
            "{ after = \"2m\", skills = { Scheduling = 1 } }",
            "queues.scheduling.steps[0].skills",
            "Scheduling = 1",
        ),
        (
            "default_language = \"en\"",
            "default_language = \"en_US\"",
            "default_language",
            "\"en_US\"",
        ),
    ];
    for (from, to, field, holds) in cases {
        let (got_field, line, message) = refusal(from, to);
        assert_eq!(got_field, field, "for {to:?}");
        assert!(
            message.contains("is not a name a request can carry (only "),
            "{message:?}"
        );
        assert_eq!(line, line_of(from, to, holds), "line of {field}");
    }
    // A rule's signals and languages are checked the same way.
    let rule = "[[rules]]\nid = \"worried\"\nwhen = { signals = [\"mild_worry\", \"x y\"] }\nroute_to = \"frontline\"\n\n[[rules]]\nid = \"resolutions-unresolved\"";
    let (field, _, message) = refusal("[[rules]]\nid = \"resolutions-unresolved\"", rule);
    assert_eq!(field, "rules.worried.when.signals[1]", "{message}");
    let rule = rule.replace(
        "signals = [\"mild_worry\", \"x y\"]",
        "language = [\"es MX\"]",
    );
    let (field, _, message) = refusal("[[rules]]\nid = \"resolutions-unresolved\"", &rule);
    assert_eq!(field, "rules.worried.when.language[0]", "{message}");
}

/// A policy in the log was accepted by the build that wrote it: it is read
/// again as it was, or a journal of the build before would not replay.
#[test]
fn a_logged_policy_is_read_without_the_checks_added_since() {
    let text = DEFAULT_POLICY.replacen(
        "signals = [\"mild_worry\"]",
        "signals = [\"mild_worry\", \"Mild Worry\"]",
        1,
    );
    assert!(parse(FILE, &text).is_err());
    let logged = crate::policy::parse_logged(FILE, &text).unwrap();
    assert!(logged.signals.contains("Mild Worry"));
    // As the engine's command reads it from the log.
    let record = serde_json::json!({ "source": FILE, "text": text });
    let command: crate::engine::ReplacePolicy = serde_json::from_value(record).unwrap();
    assert!(command.0.signals.contains("Mild Worry"));
    // Anything that builds the policy is still checked.
    let broken = text.replacen("level = 4", "level = 5", 1);
    assert!(crate::policy::parse_logged(FILE, &broken).is_err());
}

#[test]
fn a_rule_after_a_catch_all_is_refused() {
    let catch_all = "[[rules]]\nid = \"everything\"\nroute_to = \"frontline\"\n\n[[rules]]\nid = \"resolutions-unresolved\"";
    let (field, line, message) = refusal("[[rules]]\nid = \"resolutions-unresolved\"", catch_all);
    assert_eq!(field, "rules.resolutions-unresolved.when");
    assert!(
        message.contains("can never match: rule `everything`"),
        "{message}"
    );
    assert_eq!(
        line,
        line_of(
            "[[rules]]\nid = \"resolutions-unresolved\"",
            catch_all,
            "id = \"resolutions-unresolved\""
        )
    );
}

#[test]
fn a_rule_shadowed_by_a_wider_earlier_rule_is_refused() {
    // `billing` (any billing contact) placed before the supervisor rules.
    let wide = "[[rules]]\nid = \"billing-first\"\nwhen = { intent = [\"billing\"] }\nroute_to = \"billing\"\n\n[[rules]]\nid = \"supervisor-payment-plan-offered\"";
    let (field, _, message) = refusal("[[rules]]\nid = \"supervisor-payment-plan-offered\"", wide);
    assert_eq!(field, "rules.supervisor-payment-plan-offered.when");
    assert!(message.contains("billing-first"), "{message}");
}

#[test]
fn syntax_errors_and_unknown_fields_name_the_line() {
    let (field, line, message) = refusal("wrap_up = \"45s\"", "wrap_upp = \"45s\"");
    assert_eq!(field, "queues");
    assert!(message.contains("unknown field"), "{message}");
    assert_eq!(
        line,
        line_of("wrap_up = \"45s\"", "wrap_upp = \"45s\"", "wrap_upp")
    );
    // A value of the wrong type is named by its key, not by the value.
    let (field, line, message) = refusal("level = 4", "level = \"four\"");
    assert_eq!(field, "queues.level", "{message}");
    assert_eq!(line, line_of("level = 4", "level = \"four\"", "\"four\""));
    let (field, _, message) = refusal("reservation_ttl = \"15s\"", "reservation_ttl = 15");
    assert_eq!(field, "reservation_ttl", "{message}");
    let (_, line, _) = refusal(
        "priority = 3\n\n[intents.general]",
        "priority = = 3\n\n[intents.general]",
    );
    assert_eq!(
        line,
        line_of(
            "priority = 3\n\n[intents.general]",
            "priority = = 3\n\n[intents.general]",
            "priority = = 3"
        )
    );
}

#[test]
fn unreadable_file_is_a_read_error() {
    let err = read(std::path::Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("/nonexistent/policy.toml: cannot read")
    );
}

// ---------------------------------------------------------------- plan

/// Monday 2026-11-23 10:00 New York.
fn open() -> Time {
    Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap()
}

fn plan(p: &Policy, c: &Contact) -> Plan {
    let facts = Resolved {
        intent: p.intent_idx(&c.intent).unwrap(),
        transfer_from: c
            .transfer_from
            .as_ref()
            .and_then(|t| p.queue_idx(&t.queue_id)),
    };
    p.plan(c, facts, open())
}

#[test]
fn same_team_transfer_is_redirected_by_the_guard_even_if_a_rule_says_otherwise() {
    // Without the resolutions-unresolved rule, a rule sending escalations to
    // Resolutions would bounce a Resolutions contact back into the team.
    let text = DEFAULT_POLICY.replacen(
        "when = { transferred_from = [\"resolutions\"] }",
        "when = { transferred_from = [\"billing\"] }",
        1,
    );
    let p = parse(FILE, &text).unwrap();
    let mut c = Contact::new("c1", "general");
    c.identity = crate::model::Identity::Verified;
    c.escalation_requested = true;
    c.transfer_from = Some(TransferFrom {
        queue_id: "resolutions".into(),
        agent_id: Some("agent-resolutions-1".into()),
    });
    let got = plan(&p, &c);
    assert_eq!(
        got.step,
        Step::Route {
            queue: p.queue_idx("escalations").unwrap()
        }
    );
    assert!(got.reasons.contains(&Reason::SameTeamTransferRedirected));
    // From another team, Resolutions is fine.
    c.transfer_from = Some(TransferFrom {
        queue_id: "frontline".into(),
        agent_id: None,
    });
    assert_eq!(
        plan(&p, &c).step,
        Step::Route {
            queue: p.queue_idx("resolutions").unwrap()
        }
    );
}

#[test]
fn emergency_wins_over_every_rule_and_guard() {
    let p = Policy::embedded().unwrap();
    let mut c = Contact::new("c1", "billing");
    c.escalation_requested = true; // would need authentication
    c.signals = vec!["mild_worry".into(), "chest_pain".into()];
    let got = plan(&p, &c);
    assert_eq!(got.step, Step::Emergency);
    assert_eq!(got.reasons, vec![Reason::EmergencySignal]);
    let mut c = Contact::new("c2", "scheduling");
    c.urgency = Urgency::Emergency;
    c.channel = Channel::Chat;
    assert_eq!(plan(&p, &c).reasons, vec![Reason::EmergencyUrgency]);
}

/// A minimal policy for the identity gate: a level-1 frontline, a level-2
/// escalation queue, and a clinical queue; `extra` lands in the queues and
/// rules as given.
fn identity_policy(authenticate: &str, clinical_queue: &str, escalation_rule: &str) -> Policy {
    let text = format!(
        r#"
version = "t"
default_queue = "frontline"
main_schedule = "always"
[emergency]
script_id = "E"
instruction = "e"
level = 3
team = "Nurse Line"
[authenticate]
script_id = "A"
instruction = "a"
failed_script_id = "AF"
failed_instruction = "af"
{authenticate}
[intents.general]
callback_window = "2h"
priority = 3
[intents.clinical]
callback_window = "2h"
priority = 1
[schedules.always]
time_zone = "UTC"
hours = {{ mon = "00:00-24:00", tue = "00:00-24:00", wed = "00:00-24:00", thu = "00:00-24:00", fri = "00:00-24:00", sat = "00:00-24:00", sun = "00:00-24:00" }}
[[queues]]
id = "frontline"
level = 1
team = "Front"
channels = ["voice"]
transfer_address = "sip:f@x"
[[queues]]
id = "supervisors"
level = 2
team = "Sup"
channels = ["voice"]
transfer_address = "sip:s@x"
[[queues]]
id = "nurses"
level = 3
team = "Nurse Line"
channels = ["voice"]
transfer_address = "sip:n@x"
{clinical_queue}
[[rules]]
id = "escalation"
when = {{ escalation_requested = true }}
route_to = "supervisors"
{escalation_rule}
[[rules]]
id = "clinical"
when = {{ intent = ["clinical"] }}
route_to = "nurses"
"#
    );
    parse("identity.toml", &text).unwrap()
}

#[test]
fn identity_is_asked_for_escalations_and_where_the_policy_says_never_by_level_alone() {
    let p = identity_policy("", "", "");
    let supervisors = p.queue_idx("supervisors").unwrap();
    let nurses = p.queue_idx("nurses").unwrap();
    // An escalation request: verify first, and the guard is what decided.
    let mut c = Contact::new("c1", "general");
    c.escalation_requested = true;
    let got = plan(&p, &c);
    assert_eq!(
        got.step,
        Step::Authenticate {
            failed: false,
            target: Some(supervisors)
        }
    );
    assert_eq!(got.guard, Some(Guard::Identity));
    assert!(got.reasons.contains(&Reason::IdentityNotAttempted));
    // A queue above level 1 requires identity unless it says otherwise
    // (safe by default for policies that predate the key).
    let c = Contact::new("c2", "clinical");
    assert!(matches!(plan(&p, &c).step, Step::Authenticate { .. }));
    let open = identity_policy("", "requires_identity = false", "");
    assert_eq!(plan(&open, &c).step, Step::Route { queue: nurses });
    // The policy can let escalations through, and a rule can opt out (once
    // the level-2 queue itself does not require identity).
    let open_supervisors = |p: Policy| {
        let text = p.text.replacen(
            "transfer_address = \"sip:s@x\"",
            "transfer_address = \"sip:s@x\"\nrequires_identity = false",
            1,
        );
        parse("identity.toml", &text).unwrap()
    };
    let mut c = Contact::new("c3", "general");
    c.escalation_requested = true;
    let p = identity_policy("", "", "");
    assert!(matches!(
        plan(&open_supervisors(p), &c).step,
        Step::Authenticate { .. }
    ));
    let p = open_supervisors(identity_policy("escalations = false", "", ""));
    assert_eq!(plan(&p, &c).step, Step::Route { queue: supervisors });
    let p = open_supervisors(identity_policy("", "", "requires_identity = false"));
    assert_eq!(plan(&p, &c).step, Step::Route { queue: supervisors });
    assert_eq!(plan(&p, &c).guard, None);
    // A verified caller is never asked.
    c.identity = Identity::Verified;
    let p = identity_policy("", "", "");
    assert_eq!(plan(&p, &c).step, Step::Route { queue: supervisors });
}

#[test]
fn urgent_clinical_contacts_are_never_held_for_identity() {
    let p = identity_policy("", "requires_identity = true\nclinical = true", "");
    let nurses = p.queue_idx("nurses").unwrap();
    // Routine: the queue requires identity, so verify first.
    let mut c = Contact::new("c1", "clinical");
    c.identity = Identity::Failed;
    let got = plan(&p, &c);
    assert_eq!(
        got.step,
        Step::Authenticate {
            failed: true,
            target: Some(nurses)
        }
    );
    // Urgent: straight to the clinical queue, the check deferred to the call.
    c.urgency = Urgency::Urgent;
    let got = plan(&p, &c);
    assert_eq!(got.step, Step::Route { queue: nurses });
    assert_eq!(got.guard, None);
    assert!(got.reasons.contains(&Reason::IdentityDeferred));
    // The failed check is still said: it may be an impostor.
    assert!(got.reasons.contains(&Reason::IdentityFailed));
    // A rule answering with a callback to the clinical queue defers too.
    let cb = identity_policy("", "requires_identity = true\nclinical = true", "");
    let text = cb.text.replacen(
        "when = { intent = [\"clinical\"] }\nroute_to = \"nurses\"",
        "when = { intent = [\"clinical\"] }\ncallback_to = \"nurses\"",
        1,
    );
    let cb = parse("identity.toml", &text).unwrap();
    let got = plan(&cb, &c);
    assert!(matches!(got.step, Step::Callback { .. }), "{:?}", got.step);
    assert!(got.reasons.contains(&Reason::IdentityDeferred));
    // Not clinical: urgency alone does not lift the requirement.
    let p = identity_policy("", "requires_identity = true", "");
    assert!(matches!(plan(&p, &c).step, Step::Authenticate { .. }));
    // Verified: nothing to defer.
    let p = identity_policy("", "requires_identity = true\nclinical = true", "");
    c.identity = Identity::Verified;
    assert!(!plan(&p, &c).reasons.contains(&Reason::IdentityDeferred));
}

#[test]
fn rule_ids_may_not_take_a_guard_name() {
    let (field, _, message) = refusal(
        "id = \"clinical\"\ndescription",
        "id = \"guard:clinical\"\ndescription",
    );
    assert_eq!(field, "rules.guard:clinical.id");
    assert!(message.contains("built-in guards"), "{message}");
}

/// A rule can never match if an earlier one lists every value a contact
/// can have for a condition it leaves open (every channel, every identity
/// state, routine and urgent), or if only emergencies could match it (the
/// emergency guard answers them first).
#[test]
fn rules_that_can_never_match_are_refused_whatever_their_shape() {
    let first = "when = { transferred_from = [\"resolutions\"] }";
    for (when, why) in [
        (
            "when = { channel = [\"voice\", \"chat\", \"sms\", \"email\", \"portal\"] }",
            "can never match: rule `resolutions-unresolved`",
        ),
        (
            "when = { identity = [\"not_attempted\", \"verified\", \"failed\"] }",
            "can never match: rule `resolutions-unresolved`",
        ),
        (
            "when = { urgency = [\"routine\", \"urgent\"] }",
            "can never match: rule `resolutions-unresolved`",
        ),
        ("when = { urgency = [\"emergency\"] }", "emergency guard"),
        (
            "when = { signals = [\"chest_pain\", \"overdose\"] }",
            "emergency guard",
        ),
    ] {
        let (field, _, message) = refusal(first, when);
        assert!(message.contains(why), "{when}: {message}");
        let expected = if why == "emergency guard" {
            "rules.resolutions-unresolved.when"
        } else {
            "rules.supervisor-payment-plan-offered.when"
        };
        assert_eq!(field, expected, "{when}");
    }
}

/// A rule id is a name that answers and metrics carry, as a queue id is:
/// never empty, never free text.
#[test]
fn rule_ids_are_names() {
    for bad in ["", "rule with spaces", "ünïcode", &"r".repeat(65)] {
        let (field, line, message) =
            refusal("id = \"resolutions-unresolved\"", &format!("id = {bad:?}"));
        assert_eq!(field, "rules[0].id", "{bad:?}");
        assert!(line > 1, "{bad:?}");
        assert!(message.contains("1-64 characters"), "{message}");
    }
}

#[test]
fn utilization_is_read_per_channel_and_absent_by_default() {
    assert!(!Policy::embedded().unwrap().blocks.any());
    let text = DEFAULT_POLICY.replacen(
        "missed_offers_to_pause = 3",
        "missed_offers_to_pause = 3\nutilization = { voice = { blocked_by = { chat = 2, sms = 3 } } }",
        1,
    );
    let p = parse(FILE, &text).unwrap();
    let held = |chat: u16, sms: u16| {
        let mut h = [0u16; 5];
        h[Channel::Chat.index()] = chat;
        h[Channel::Sms.index()] = sms;
        h
    };
    assert!(!p.blocks.blocked(Channel::Voice, &held(1, 2)));
    assert!(p.blocks.blocked(Channel::Voice, &held(2, 0)));
    assert!(p.blocks.blocked(Channel::Voice, &held(0, 3)));
    // Only voice was named: chat is blocked by nothing.
    assert!(!p.blocks.blocked(Channel::Chat, &held(9, 9)));
}

#[test]
fn a_policy_without_rules_sends_everyone_to_the_default_queue_under_the_guards() {
    let cut = DEFAULT_POLICY.find("\n[[rules]]").unwrap();
    let p = parse(FILE, &DEFAULT_POLICY[..cut]).unwrap();
    assert!(p.rules.is_empty());
    let mut c = Contact::new("c1", "billing");
    c.identity = crate::model::Identity::Verified;
    let got = plan(&p, &c);
    assert_eq!(got.reasons, vec![Reason::DefaultQueue]);
    assert_eq!(
        got.step,
        Step::Route {
            queue: p.queue_idx("frontline").unwrap()
        }
    );
    c.urgency = Urgency::Emergency;
    assert_eq!(plan(&p, &c).step, Step::Emergency);
}
