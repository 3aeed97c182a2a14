//! End to end over gRPC on the embedded healthcare policy and demo roster:
//! every outcome and guard, each line of the call escalation protocol
//! (seed 004), and the operations readiness check (seed 001).

mod common;

use careroute::grpc::pb::{self, Reason};
use chrono::Duration;
use common::*;

fn escalation(id: &str, intent: &str, attributes: &[(&str, &str)]) -> pb::RouteContactRequest {
    let mut c = contact(id, intent);
    c.escalation_requested = true;
    c.attributes = attributes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c
}

// ------------------------------------------------- seed 004: call escalation

#[tokio::test]
async fn protocol_authenticate_before_escalating() {
    let s = TestServer::start(monday_10am()).await;
    for (i, intent) in ["billing", "scheduling", "complaint"]
        .into_iter()
        .enumerate()
    {
        let mut c = escalation(&format!("c{i}"), intent, &[]);
        c.identity = pb::Identity::NotAttempted.into();
        let d = s.route(c).await.unwrap();
        let a = authenticate(&d);
        assert_eq!(a.script_id, "SCRIPT-AUTH-HIPAA");
        assert!(has_reason(&d, Reason::IdentityNotAttempted));
        assert!(
            d.escalation_level >= 2,
            "reports the level it would escalate to"
        );
    }
    // Identity unspecified counts as not attempted.
    let mut c = escalation("c9", "billing", &[]);
    c.identity = 0;
    authenticate(&s.route(c).await.unwrap());
    // A failed check gets the failed-identity script, never a transfer.
    let mut c = escalation(
        "c10",
        "billing",
        &[("coverage", "in_network"), ("payment_plan", "offered")],
    );
    c.identity = pb::Identity::Failed.into();
    let d = s.route(c).await.unwrap();
    assert_eq!(authenticate(&d).script_id, "SCRIPT-AUTH-FAILED");
    assert!(has_reason(&d, Reason::IdentityFailed));
    // Nothing was reserved by any of these.
    let queues = s
        .client
        .clone()
        .list_queues(pb::ListQueuesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(queues.queues.iter().all(|q| q.reservations == 0));
    s.stop().await;
}

#[tokio::test]
async fn protocol_payment_escalations_by_coverage_and_plan() {
    let s = TestServer::start(monday_10am()).await;
    let cases = [
        (
            &[("coverage", "in_network"), ("payment_plan", "offered")][..],
            "billing_escalations",
            "supervisor-payment-plan-offered",
            "Billing Escalations",
        ),
        (
            &[("coverage", "in_network"), ("payment_plan", "not_offered")][..],
            "escalations_l1",
            "supervisor-payment-plan-not-offered",
            "Escalations",
        ),
        (
            &[("coverage", "non_covered")][..],
            "escalations_l1",
            "supervisor-payment-non-covered",
            "Escalations",
        ),
        (
            &[("coverage", "self_pay")][..],
            "escalations_l1",
            "supervisor-payment-self-pay",
            "Escalations",
        ),
    ];
    for (i, (attributes, queue, rule, team)) in cases.into_iter().enumerate() {
        let d = s
            .route(escalation(&format!("pay{i}"), "billing", attributes))
            .await
            .unwrap();
        assert_eq!(d.rule_id, rule);
        assert_eq!(d.owning_team, team);
        assert_eq!(d.escalation_level, 2);
        // escalations_l1 has one demo agent: the second contact there finds it busy.
        match &d.outcome {
            Some(pb::route_contact_response::Outcome::Agent(a)) => {
                assert_eq!(a.queue_id, queue);
                assert!(
                    a.transfer_address.starts_with("sip:"),
                    "warm transfer address"
                );
                assert!(!a.reservation_id.is_empty());
            }
            Some(pb::route_contact_response::Outcome::Callback(c)) => {
                assert_eq!(c.queue_id, queue);
                assert_eq!(c.ticket_type, "Patient Callback");
                assert_eq!(c.reason, pb::CallbackReason::NoAgentAvailable as i32);
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn protocol_other_supervisor_requests_go_to_resolutions_who_never_claim_to_be_supervisors() {
    let s = TestServer::start(monday_10am()).await;
    let d = s.route(escalation("c1", "scheduling", &[])).await.unwrap();
    assert_eq!(d.rule_id, "supervisor-other");
    assert_eq!(agent(&d).queue_id, "resolutions");
    assert_eq!(d.owning_team, "Resolutions");
    assert!(
        d.guidance
            .iter()
            .any(|g| g == "Do not identify as a supervisor or manager."),
        "{:?}",
        d.guidance
    );
    s.stop().await;
}

#[tokio::test]
async fn protocol_no_transfers_within_resolutions_unresolved_goes_to_escalations() {
    let s = TestServer::start(monday_10am()).await;
    for (i, escalate) in [true, false].into_iter().enumerate() {
        let mut c = contact(&format!("c{i}"), "general");
        c.escalation_requested = escalate;
        c.transfer_from = Some(pb::TransferFrom {
            queue_id: "resolutions".into(),
            agent_id: "agent-resolutions-1".into(),
        });
        let d = s.route(c).await.unwrap();
        assert_eq!(d.owning_team, "Escalations");
        let target = match &d.outcome {
            Some(pb::route_contact_response::Outcome::Agent(a)) => a.queue_id.clone(),
            Some(pb::route_contact_response::Outcome::Callback(c)) => c.queue_id.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(target, "escalations", "never back into Resolutions");
    }
    s.stop().await;
}

#[tokio::test]
async fn protocol_queue_unavailable_opens_a_patient_callback_ticket() {
    let s = TestServer::start(monday_10am()).await;
    let offered = [("coverage", "in_network"), ("payment_plan", "offered")];
    let first = s
        .route(escalation("c1", "billing", &offered))
        .await
        .unwrap();
    agent(&first);
    // The only billing-escalations agent is now reserved.
    let second = s
        .route(escalation("c2", "billing", &offered))
        .await
        .unwrap();
    let cb = callback(&second);
    assert_eq!(cb.ticket_type, "Patient Callback");
    assert_eq!(cb.queue_id, "billing_escalations");
    assert_eq!(cb.window_minutes, 240);
    assert!(cb.intake_fields.iter().any(|f| f == "account_number"));
    // 10:00 + 4 business hours.
    assert_eq!(
        cb.deadline.unwrap().seconds,
        (monday_10am() + Duration::hours(4)).timestamp()
    );
    assert_eq!(cb.deadline_local, "2026-11-23T14:00:00-05:00");
    s.stop().await;
}

#[tokio::test]
async fn protocol_always_warm_transfer_reserved_agent_then_confirm() {
    let s = TestServer::start(monday_10am()).await;
    let d = s.route(contact("c1", "billing")).await.unwrap();
    let a = agent(&d).clone();
    assert_eq!(a.agent_id, "agent-billing-1");
    assert_eq!(a.transfer_address, "sip:1201@pbx.careroute.example");
    assert_eq!(
        a.reservation_expires_at.unwrap().seconds,
        (monday_10am() + Duration::seconds(15)).timestamp()
    );
    let confirmed = s
        .client
        .clone()
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: a.reservation_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (confirmed.agent_id.as_str(), confirmed.contact_id.as_str()),
        ("agent-billing-1", "c1")
    );
    s.stop().await;
}

// ------------------------------------------------- seed 001: readiness check

#[tokio::test]
async fn readiness_new_scheduling() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = contact("sched-1", "scheduling");
    c.identity = pb::Identity::NotAttempted.into(); // level 1: no escalation, no gate
    let d = s.route(c).await.unwrap();
    assert_eq!(agent(&d).queue_id, "scheduling");
    assert_eq!(
        (d.escalation_level, d.owning_team.as_str()),
        (1, "Patient Access")
    );
    assert!(d.guidance.iter().any(|g| g.contains("no clinical triage")));
    // If the queue is unavailable: a 2-hour window.
    let mut c = contact("sched-2", "scheduling");
    c.channel = pb::Channel::Sms.into();
    s.clock.set(monday_8pm());
    let cb = callback(&s.route(c).await.unwrap()).clone();
    assert_eq!(cb.window_minutes, 120);
    assert_eq!(cb.priority, 3);
    assert_eq!(cb.deadline_local, "2026-11-24T11:00:00-05:00");
    assert!(cb.intake_fields.iter().any(|f| f == "callback_number"));
    s.stop().await;
}

#[tokio::test]
async fn readiness_refill_message() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = contact("refill-1", "refill");
    c.channel = pb::Channel::Portal.into();
    let d = s.route(c.clone()).await.unwrap();
    assert_eq!(agent(&d).queue_id, "pharmacy");
    assert_eq!(
        (d.escalation_level, d.owning_team.as_str()),
        (3, "Pharmacy")
    );
    assert!(d.guidance.iter().any(|g| g.contains("pharmacy path")));
    // Refill and billing stay apart: the pharmacy agent is not a billing agent.
    assert_eq!(agent(&d).agent_id, "agent-pharmacy-1");
    // Unverified: level 3 needs identity first.
    c.contact_id = "refill-2".into();
    c.identity = pb::Identity::NotAttempted.into();
    let d = s.route(c.clone()).await.unwrap();
    authenticate(&d);
    assert_eq!(d.owning_team, "Pharmacy");
    // After hours: callback within 4 business hours, with the refill fields.
    s.clock.set(monday_8pm());
    c.contact_id = "refill-3".into();
    c.identity = pb::Identity::Verified.into();
    let cb = callback(&s.route(c).await.unwrap()).clone();
    assert_eq!(
        (cb.queue_id.as_str(), cb.window_minutes, cb.priority),
        ("pharmacy", 240, 2)
    );
    assert!(cb.intake_fields.iter().any(|f| f == "medication_name"));
    assert_eq!(cb.deadline_local, "2026-11-24T13:00:00-05:00");
    s.stop().await;
}

#[tokio::test]
async fn readiness_billing_question() {
    let s = TestServer::start(monday_10am()).await;
    let d = s.route(contact("bill-1", "billing")).await.unwrap();
    assert_eq!(d.rule_id, "billing");
    assert_eq!(agent(&d).queue_id, "billing");
    assert_eq!((d.escalation_level, d.owning_team.as_str()), (1, "Billing"));
    // The billing-escalations agent qualifies for billing too; once both
    // are reserved: a callback owned by billing, 4-hour window.
    assert_eq!(
        agent(&s.route(contact("bill-2", "billing")).await.unwrap()).agent_id,
        "agent-billing-escalations-1"
    );
    let cb = callback(&s.route(contact("bill-3", "billing")).await.unwrap()).clone();
    assert_eq!((cb.queue_id.as_str(), cb.window_minutes), ("billing", 240));
    s.stop().await;
}

#[tokio::test]
async fn readiness_failed_identity_check() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = contact("id-1", "billing");
    c.identity = pb::Identity::Failed.into();
    let d = s.route(c).await.unwrap();
    assert_eq!(d.rule_id, "identity-failed");
    assert_eq!(agent(&d).queue_id, "frontline");
    assert_eq!(d.escalation_level, 1);
    assert!(
        d.guidance
            .iter()
            .any(|g| g.contains("disclose no patient information"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_failed_identity_supervisor_request_is_decided_by_the_identity_guard() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = escalation("sup-failed", "scheduling", &[]);
    c.identity = pb::Identity::Failed.into();
    let d = s.route(c).await.unwrap();
    assert_eq!(authenticate(&d).script_id, "SCRIPT-AUTH-FAILED");
    // The guard decided, not the supervisor rule the contact matched.
    assert_eq!(d.rule_id, "guard:identity");
    assert!(has_reason(&d, Reason::IdentityFailed));
    s.stop().await;
}

#[tokio::test]
async fn readiness_after_hours_call_triaged_by_urgency() {
    let s = TestServer::start(monday_8pm()).await;
    // Routine: next business day callback (09:00 + 2h).
    let d = s.route(contact("ah-1", "scheduling")).await.unwrap();
    let cb = callback(&d);
    assert_eq!(cb.reason, pb::CallbackReason::Closed as i32);
    assert!(has_reason(&d, Reason::QueueClosed));
    assert_eq!(cb.deadline_local, "2026-11-24T11:00:00-05:00");
    // Urgent clinical: the on-call nurse, live.
    let mut urgent = contact("ah-2", "clinical");
    urgent.urgency = pb::Urgency::Urgent.into();
    let d = s.route(urgent.clone()).await.unwrap();
    assert_eq!(agent(&d).queue_id, "nurse_oncall");
    assert!(has_reason(&d, Reason::AfterHoursOnCall));
    assert_eq!(
        (d.escalation_level, d.owning_team.as_str()),
        (3, "Nurse Line")
    );
    // Urgent and not yet authenticated: clinical triage does not wait for
    // identity. The on-call nurse line still owns it, with guidance to
    // verify during the call.
    urgent.contact_id = "ah-3".into();
    urgent.identity = pb::Identity::NotAttempted.into();
    let d = s.route(urgent.clone()).await.unwrap();
    assert!(has_reason(&d, Reason::IdentityDeferred), "{d:?}");
    assert_eq!(d.rule_id, "clinical");
    match &d.outcome {
        Some(pb::route_contact_response::Outcome::Agent(a)) => {
            assert_eq!(a.queue_id, "nurse_oncall")
        }
        Some(pb::route_contact_response::Outcome::Queued(q)) => {
            assert_eq!(q.queue_id, "nurse_oncall")
        }
        Some(pb::route_contact_response::Outcome::Callback(c)) => {
            // The one on-call nurse is reserved for ah-2: the clinical
            // path's own urgent callback, not an identity hold.
            assert_eq!(c.queue_id, "nurse_oncall");
            assert_eq!(c.reason, pb::CallbackReason::NoAgentAvailable as i32);
        }
        other => panic!("an urgent clinical contact held back: {other:?}"),
    }
    assert!(
        d.guidance
            .iter()
            .any(|g| g.contains("verify identity during the call")),
        "{:?}",
        d.guidance
    );
    // A routine clinical question still verifies first (the nurse line
    // requires identity); so does a failed check, urgent or not, when it
    // is not clinical.
    urgent.contact_id = "ah-3b".into();
    urgent.urgency = pb::Urgency::Routine.into();
    s.stop().await;
    let s = TestServer::start(monday_10am()).await;
    let d = s.route(urgent.clone()).await.unwrap();
    authenticate(&d);
    assert_eq!(d.rule_id, "guard:identity");
    assert!(has_reason(&d, Reason::IdentityNotAttempted));
    s.stop().await;
    let s = TestServer::start(monday_8pm()).await;
    // Urgent callbacks get priority 1.
    let mut urgent_billing = contact("ah-4", "billing");
    urgent_billing.urgency = pb::Urgency::Urgent.into();
    assert_eq!(
        callback(&s.route(urgent_billing).await.unwrap()).priority,
        1
    );
    // Emergency wording: the emergency script, at any hour.
    let mut e = contact("ah-5", "general");
    e.signals = vec!["difficulty_breathing".into()];
    let d = s.route(e).await.unwrap();
    assert_eq!(emergency(&d).script_id, "SCRIPT-EMERGENCY-911");
    // Portal messages after hours: the after-hours rule.
    let mut m = contact("ah-6", "general");
    m.channel = pb::Channel::Portal.into();
    let d = s.route(m).await.unwrap();
    assert_eq!(d.rule_id, "after-hours-messages");
    assert_eq!(callback(&d).reason, pb::CallbackReason::Policy as i32);
    s.stop().await;
}

// ------------------------------------------------- the other outcomes and guards

#[tokio::test]
async fn emergency_beats_every_rule() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = escalation("e1", "billing", &[]);
    c.identity = pb::Identity::NotAttempted.into();
    c.urgency = pb::Urgency::Emergency.into();
    let d = s.route(c).await.unwrap();
    let e = emergency(&d);
    assert!(e.instruction.contains("911"));
    assert_eq!(
        (d.escalation_level, d.owning_team.as_str()),
        (3, "Nurse Line")
    );
    assert_eq!(d.reasons, vec![Reason::EmergencyUrgency as i32]);
    s.stop().await;
}

#[tokio::test]
async fn interpreter_flagged_when_no_free_agent_speaks_the_language() {
    let s = TestServer::start(monday_10am()).await;
    let mut c = contact("lang-1", "billing");
    c.language = "vi".into();
    let d = s.route(c).await.unwrap();
    assert!(agent(&d).interpreter_needed);
    assert!(has_reason(&d, Reason::InterpreterNeeded));
    // Spanish at the nurse line: the Spanish-speaking nurse, no interpreter;
    // a language tag is one whatever its case.
    let mut c = contact("lang-2", "clinical");
    c.language = "ES".into();
    let d = s.route(c).await.unwrap();
    assert_eq!(agent(&d).agent_id, "agent-nurse-1");
    assert!(!agent(&d).interpreter_needed);
    s.stop().await;
}

/// BCP 47 language tags are case-insensitive: an agent registered with
/// `pt-BR` speaks to a contact tagged `pt-br`, and is listed as `pt-BR`.
#[tokio::test]
async fn language_tags_match_whatever_their_case() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    floor::agent_speaking(&mut client, "pt-1", "Billing", "billing", &["PT-br"]).await;
    let listed = client
        .get_agent(pb::GetAgentRequest {
            agent_id: "pt-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .agent
        .unwrap();
    assert_eq!(listed.languages, ["pt-BR"]);
    for (i, tag) in ["pt-br", "PT-BR"].into_iter().enumerate() {
        // Speakers first: the one Portuguese speaker, no interpreter.
        let mut c = contact(&format!("pt-{i}"), "billing");
        c.language = tag.into();
        let d = s.route(c).await.unwrap();
        assert!(!agent(&d).interpreter_needed, "{tag}: {d:?}");
        assert_eq!(agent(&d).agent_id, "pt-1", "{tag}");
        client
            .release_reservation(pb::ReleaseReservationRequest {
                reservation_id: agent(&d).reservation_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn unstaffed_queue_gets_a_callback_and_preferred_agent_is_honoured() {
    let s = TestServer::start(monday_10am()).await;
    let mut client = s.client.clone();
    client
        .set_agent_state(pb::SetAgentStateRequest {
            agent_id: "agent-compliance-1".into(),
            state: pb::AgentState::Offline.into(),
        })
        .await
        .unwrap();
    let d = s.route(contact("p1", "privacy")).await.unwrap();
    assert_eq!(
        callback(&d).reason,
        pb::CallbackReason::NoAgentsStaffed as i32
    );
    assert_eq!(d.escalation_level, 4);
    let mut c = contact("p2", "scheduling");
    c.preferred_agent_id = "agent-frontline-2".into();
    let d = s.route(c).await.unwrap();
    assert_eq!(agent(&d).agent_id, "agent-frontline-2");
    assert!(has_reason(&d, Reason::PreferredAgent));
    s.stop().await;
}

#[tokio::test]
async fn same_team_transfer_guard_holds_even_when_a_rule_would_break_it() {
    // A site policy that forgot the resolutions-unresolved rule: the
    // supervisor-other rule would send a Resolutions transfer straight back
    // to Resolutions. The guard sends it to Escalations instead.
    let text = include_str!("../examples/healthcare.toml").replacen(
        "when = { transferred_from = [\"resolutions\"] }",
        "when = { transferred_from = [\"compliance\"] }",
        1,
    );
    let dir = process::scratch_dir("guard");
    let path = dir.join("site.toml");
    std::fs::write(&path, text).unwrap();
    let roster = std::path::PathBuf::from("examples/demo-roster.toml");
    let s = TestServer::start_with(monday_10am(), |c| {
        c.policy = Some(path);
        c.roster = Some(roster);
    })
    .await;
    let mut c = escalation("t1", "general", &[]);
    c.transfer_from = Some(pb::TransferFrom {
        queue_id: "resolutions".into(),
        agent_id: "agent-resolutions-1".into(),
    });
    let d = s.route(c).await.unwrap();
    assert_eq!(d.rule_id, "supervisor-other");
    assert!(has_reason(&d, Reason::SameTeamTransferRedirected));
    assert_eq!(agent(&d).queue_id, "escalations");
    assert_eq!(agent(&d).agent_id, "agent-escalations-1");
    s.stop().await;
}
