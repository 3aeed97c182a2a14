//! `careroute test`, run as operations staff run it: the example readiness
//! check passes; a case that does not hold fails with expected against got
//! and what decided, a non-zero exit, and a JUnit report; a bad test file
//! is refused with file, line and field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::ScratchFile;
use std::process::Command;

fn careroute(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_careroute"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A test file in a fresh directory, on the example policy and roster.
fn test_file(body: &str) -> ScratchFile {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    common::process::scratch_file(
        "policy-test",
        "site.test.toml",
        &format!(
            "policy = \"{}\"\nroster = \"{}\"\n\n{body}",
            examples.join("healthcare.toml").display(),
            examples.join("demo-roster.toml").display()
        ),
    )
}

#[test]
fn the_example_readiness_check_passes_and_exercises_every_rule() {
    let (ok, out, err) = careroute(&["test", "examples/healthcare.test.toml"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("passed, 0 failed"), "{out}");
    assert!(!out.contains("rules no case exercised"), "{out}");
}

/// A rule a case reached counts as exercised even when a guard decided
/// instead: an unverified refill request is asked to authenticate (the
/// pharmacy queue requires identity), yet it matched `refill`.
#[test]
fn a_rule_the_identity_guard_overrode_was_still_exercised() {
    let path = test_file(
        r#"[[cases]]
name = "an unverified refill authenticates first"
at = "2026-11-23 10:00 America/New_York"
contact = { intent = "refill" }
expect = { outcome = "authenticate" }
"#,
    );
    let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let unexercised = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("rules no case exercised: "))
        .unwrap_or_else(|| panic!("{out}"));
    let unexercised: Vec<&str> = unexercised.split(", ").collect();
    assert!(!unexercised.contains(&"refill"), "{out}");
    assert!(unexercised.contains(&"billing"), "{out}");
}

/// A case's contact language is read as RouteContact reads it: in any
/// case, served by speakers of its shorter form; a malformed one is
/// refused at its line.
#[test]
fn a_case_reads_the_contact_language_as_route_contact_does() {
    let path = test_file(
        r#"[[cases]]
name = "an ES-mx caller goes to the Spanish speaker, though the other waited longer"
at = "2026-11-23 10:00 America/New_York"

[[cases.steps]]
set_state = "away"
agent = "agent-frontline-1"

[[cases.steps]]
wait = "1m"

[[cases.steps]]
set_state = "available"
agent = "agent-frontline-1"

[[cases.steps]]
route = { contact_id = "c", intent = "scheduling", identity = "verified", language = "ES-mx" }
expect = { outcome = "agent", agent = "agent-frontline-1" }
"#,
    );
    let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let path = test_file(
        r#"[[cases]]
name = "malformed"
at = "2026-11-23 10:00 America/New_York"
contact = { intent = "scheduling", language = "en--US" }
expect = { outcome = "agent" }
"#,
    );
    let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        err.contains(":7: cases.contact.language: a well-formed BCP 47 language tag"),
        "{err}"
    );
}

#[test]
fn a_failing_case_says_what_was_expected_what_came_and_what_decided() {
    let path = test_file(
        r#"[[cases]]
name = "billing goes to pharmacy (it does not)"
at = "2026-11-23 10:00 America/New_York"
contact = { intent = "billing", identity = "verified" }
expect = { outcome = "agent", queue = "pharmacy", level = 1 }

[[cases]]
name = "billing goes to billing"
at = "2026-11-23 10:00 America/New_York"
contact = { intent = "billing", identity = "verified" }
expect = { queue = "billing" }
"#,
    );
    let junit = path.with_extension("xml");
    let (ok, out, _) = careroute(&[
        "test",
        path.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert!(!ok, "a failing case exits non-zero");
    assert!(out.contains("2 cases, 1 passed, 1 failed"), "{out}");
    assert!(
        out.contains("FAILED: \"billing goes to pharmacy (it does not)\""),
        "{out}"
    );
    assert!(
        out.contains("line 7: queue: expected pharmacy, got billing"),
        "{out}"
    );
    assert!(
        out.contains("decided by `billing`; reasons: rule_matched"),
        "{out}"
    );
    // Keys the case does not give are not checked; those it gives and
    // hold are not reported.
    assert!(!out.contains("level:"), "{out}");
    assert!(
        out.contains("rules no case exercised: resolutions-unresolved"),
        "{out}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuites"), "{xml}");
    assert!(xml.contains("tests=\"2\""), "{xml}");
    assert!(xml.contains("failures=\"1\""), "{xml}");
    assert!(xml.contains("expected pharmacy, got billing"), "{xml}");
}

#[test]
fn a_sequence_runs_each_step_through_the_engine_and_reports_a_refused_one() {
    let path = test_file(
        r#"[[cases]]
name = "a billing agent takes a voice call, then a chat beside it; a second confirm is refused"
at = "2026-11-23 10:00 America/New_York"
agents = { agent-billing-escalations-1 = "offline" }

[[cases.steps]]
route = { contact_id = "first", intent = "billing", identity = "verified" }
expect = { outcome = "agent", agent = "agent-billing-1" }

[[cases.steps]]
confirm = "first"

[[cases.steps]]
route = { contact_id = "second", intent = "billing", identity = "verified", channel = "chat" }
expect = { outcome = "agent", agent = "agent-billing-1" }

[[cases.steps]]
confirm = "first"
"#,
    );
    // The voice call and the chat pass (the agent takes two chats beside
    // a call); confirming the call twice is refused by the engine, and the
    // case fails there, at its line.
    let (ok, out, _) = careroute(&["test", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("1 cases, 0 passed, 1 failed"), "{out}");
    assert!(
        out.contains(
            "line 20: step: expected accepted, got refused: the reservation was already confirmed"
        ),
        "{out}"
    );
    assert_eq!(out.matches("line ").count(), 1, "{out}");
}

#[test]
fn bad_test_files_are_refused_with_file_line_and_field() {
    let case = |expect: &str, at: &str| {
        format!(
            "[[cases]]\nname = \"x\"\nat = \"{at}\"\ncontact = {{ intent = \"billing\" }}\nexpect = {{ {expect} }}\n"
        )
    };
    for (body, message) in [
        (
            case("queue = \"farmacy\"", "2026-11-23 10:00 business"),
            ":8: cases.expect.queue: unknown queue `farmacy`",
        ),
        (
            case("rule = \"nope\"", "2026-11-23 10:00 business"),
            ":8: cases.expect.rule: unknown rule `nope`",
        ),
        (
            case("outcome = \"transfer\"", "2026-11-23 10:00 business"),
            ":8: cases.expect.outcome: `transfer` is not one of",
        ),
        (
            case("queue = \"billing\"", "2026-11-23 25:00 business"),
            ":6: cases.at: `2026-11-23 25:00` is not `YYYY-MM-DD HH:MM`",
        ),
        (
            case("queue = \"billing\"", "2026-03-08 02:30 America/New_York"),
            ":6: cases.at: 2026-03-08 02:30 does not exist in America/New_York",
        ),
        (
            case("queue = \"billing\"", "2026-11-01 01:30 America/New_York"),
            ":6: cases.at: 2026-11-01 01:30 happens twice in America/New_York (a clock change repeats it): write it with its offset, 2026-11-01T01:30:00-04:00 or 2026-11-01T01:30:00-05:00",
        ),
        (
            case("queue = \"billing\"", "2026-11-23 10:00 Mars/Olympus"),
            ":6: cases.at: `Mars/Olympus` is neither an IANA time zone nor a schedule",
        ),
        (
            case("reasons = [\"because\"]", "2026-11-23 10:00 business"),
            ":8: cases.expect.reasons: `because` is not a reason",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\nagents = { nobody = \"away\" }\ncontact = { intent = \"billing\" }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.agents: `nobody` is not an agent of the roster",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { intent = \"biling\" }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.contact.intent: `biling` is not an intent of the policy",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { intent = \"billing\" }\n".to_owned(),
            ":7: cases.expect: required with `contact`",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { intent = \"billing\", signals = [\"mild_worry\", \"Mild Worry\"] }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.contact.signals: `Mild Worry` is not a signal of the policy (",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { intent = \"billing\", attributes = { plan = \"gold\" } }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.contact.attributes: `plan` is not an attribute of the policy (",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { intent = \"billing\", attributes = { coverage = \"gold\" } }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.contact.attributes.coverage: `gold` is not one of: ",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\ncontact = { urgency = \"urgent\" }\nexpect = { queue = \"billing\" }\n".to_owned(),
            ":7: cases.contact.intent: required, unless the contact is an emergency",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\n[[cases.steps]]\nwait = \"soon\"\n".to_owned(),
            ":8: cases.steps.wait: `soon`",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\n[[cases.steps]]\nconfirm = \"a\"\ncancel = \"a\"\n".to_owned(),
            ":7: cases.steps: each step is one of",
        ),
        (
            "[[cases]]\nname = \"x\"\nat = \"2026-11-23 10:00 business\"\n[[cases.steps]]\nrelease = \"a\"\nreason = \"hung_up\"\n".to_owned(),
            ":9: cases.steps.reason: `hung_up` is not one of: unspecified, rejected, no_answer, cancelled, transfer_failed",
        ),
        ("".to_owned(), ":1: cases: no [[cases]]"),
    ] {
        let path = test_file(&body);
        let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
        assert!(!ok, "{body}");
        let expected = format!("{}{message}", path.display());
        assert!(err.starts_with(&expected), "{err}{out}\nexpected: {expected}");
    }
}

#[test]
fn an_emergency_case_may_leave_out_the_intent_as_a_request_may() {
    let path = test_file(
        r#"[[cases]]
name = "an IVR that heard chest pain before any intent"
at = "2026-11-23 10:00 business"
contact = { signals = ["chest_pain"] }
expect = { outcome = "emergency", rule = "guard:emergency" }

[[cases]]
name = "an emergency by urgency"
at = "2026-11-23 10:00 business"
contact = { urgency = "emergency" }
expect = { outcome = "emergency" }
"#,
    );
    let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("2 cases, 2 passed, 0 failed"), "{out}");
}

/// Release reasons are named as the API names them (`cancelled` is
/// `RELEASE_REASON_CANCELLED`: the caller hung up); `caller_hung_up`,
/// which files took before, still reads as the same reason.
#[test]
fn a_release_reason_is_named_as_the_api_names_it() {
    use careroute::model::ReleaseReason;
    use careroute::policy_test::spec::StepKind;
    let case = |reason: &str| {
        format!(
            r#"[[cases]]
name = "the caller hangs up before the transfer connects"
at = "2026-11-23 10:00 business"

[[cases.steps]]
route = {{ contact_id = "s1", intent = "scheduling" }}
expect = {{ outcome = "agent" }}

[[cases.steps]]
release = "s1"
reason = "{reason}"
"#
        )
    };
    for (name, reason) in [
        ("cancelled", ReleaseReason::CallerHungUp),
        ("caller_hung_up", ReleaseReason::CallerHungUp),
        ("rejected", ReleaseReason::Rejected),
        ("no_answer", ReleaseReason::NoAnswer),
        ("transfer_failed", ReleaseReason::TransferFailed),
    ] {
        let path = test_file(&case(name));
        let suite = careroute::policy_test::spec::read(&path).unwrap();
        let StepKind::Release(contact, read) = &suite.cases[0].steps[1].kind else {
            panic!("not a release step")
        };
        assert_eq!((contact.as_str(), *read), ("s1", reason), "{name}");
        let (ok, out, err) = careroute(&["test", path.to_str().unwrap()]);
        assert!(ok, "{name}: {out}{err}");
        assert!(out.contains("1 cases, 1 passed, 0 failed"), "{out}");
    }
}

#[test]
fn an_offer_that_never_comes_fails_the_assigned_step() {
    let path = test_file(
        r#"[[cases]]
name = "nobody finishes, so nobody is offered the waiting caller"
at = "2026-11-23 10:00 America/New_York"

[[cases.steps]]
route = { contact_id = "s1", intent = "scheduling" }

[[cases.steps]]
confirm = "s1"

[[cases.steps]]
route = { contact_id = "s2", intent = "scheduling" }

[[cases.steps]]
confirm = "s2"

[[cases.steps]]
route = { contact_id = "s3", intent = "scheduling" }
expect = { outcome = "queued", position = 1 }

[[cases.steps]]
wait = "20s"

[[cases.steps]]
assigned = "s3"
"#,
    );
    let junit = path.with_extension("xml");
    let (ok, out, _) = careroute(&[
        "test",
        path.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        out.contains(
            "assigned: expected `s3` offered to an agent, got no offer since the step before"
        ),
        "{out}"
    );
    // A file refused before any case ran is an errored test in the report.
    let bad = test_file("[[cases]]\nname = \"x\"\n");
    let (ok, _, _) = careroute(&[
        "test",
        bad.to_str().unwrap(),
        path.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert!(!ok);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("errors=\"1\""), "{xml}");
    assert!(xml.contains("the test file"), "{xml}");
}
