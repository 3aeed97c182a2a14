//! Running a test file: each case on a fresh engine built from the file's
//! policy and roster, on a virtual clock that moves only when a step says
//! so, every change through the engine's one door. A CTI is taken to watch
//! every agent, so waiting contacts are offered as they would be live.

use std::collections::{BTreeSet, HashMap};

use super::spec::{Case, Expect, StepKind, Suite};
use crate::engine::{
    Cancel, Complete, Confirm, Decision, Engine, EngineConfig, Event, Outcome, Release,
    ReservationId, Route, SetAgentState, Tick, UpsertAgent, Watch, WatchFilter,
};
use crate::model::Time;

/// What one case gave.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Its line.
    pub line: usize,
    /// What did not hold; empty if it passed.
    pub failures: Vec<Failure>,
}

/// One thing that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The line of the step.
    pub line: usize,
    /// What was checked (`outcome`, `queue`, ..., or `step`).
    pub field: String,
    /// What the case expected.
    pub expected: String,
    /// What came.
    pub got: String,
    /// What decided and why, to read beside it.
    pub context: String,
}

/// What a test file gave.
#[derive(Debug)]
pub struct SuiteResult {
    /// The file.
    pub file: String,
    /// Each case, in file order.
    pub cases: Vec<CaseResult>,
    /// The policy's rules no case matched (whether or not a guard then
    /// decided instead), in policy order.
    pub unexercised: Vec<String>,
}

impl SuiteResult {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|c| c.failures.is_empty())
    }
}

/// Runs every case of `suite`.
pub fn run(suite: &Suite) -> SuiteResult {
    let mut matched = BTreeSet::new();
    let cases = suite
        .cases
        .iter()
        .map(|case| run_case(suite, case, &mut matched))
        .collect();
    let unexercised = suite
        .policy
        .rules
        .iter()
        .filter(|r| !matched.contains(&*r.id))
        .map(|r| r.id.to_string())
        .collect();
    SuiteResult {
        file: suite.file.clone(),
        cases,
        unexercised,
    }
}

/// Who holds each contact a case touched.
#[derive(Default)]
struct Held {
    /// The agent and reservation of a contact offered or transferred.
    by_contact: HashMap<String, (String, ReservationId)>,
    /// Contacts offered since the last `assigned` check, and to whom.
    offered: Vec<(String, String)>,
}

impl Held {
    fn take_events(&mut self, engine: &mut Engine) {
        for event in engine.take_events() {
            if let Event::Assigned(a) = event {
                self.offered
                    .push((a.contact_id.clone(), a.offer.agent_id.to_string()));
                self.by_contact.insert(
                    a.contact_id,
                    (a.offer.agent_id.to_string(), a.offer.reservation),
                );
            }
        }
    }
}

fn run_case(suite: &Suite, case: &Case, matched: &mut BTreeSet<String>) -> CaseResult {
    let mut failures = Vec::new();
    let mut fail = |line: usize, field: &str, expected: String, got: String, context: String| {
        failures.push(Failure {
            line,
            field: field.to_owned(),
            expected,
            got,
            context,
        })
    };
    let mut engine = Engine::new(suite.policy.clone(), EngineConfig::default());
    let mut now = case.at;
    let mut held = Held::default();
    let setup = (|| {
        engine.apply(Watch(WatchFilter::default()), now)?;
        for (spec, state) in &suite.roster {
            engine.apply(UpsertAgent(spec.clone()), now)?;
            engine.apply(
                SetAgentState {
                    agent_id: spec.id.clone(),
                    state: *state,
                },
                now,
            )?;
        }
        for (agent_id, state) in &case.agents {
            engine.apply(
                SetAgentState {
                    agent_id: agent_id.clone(),
                    state: *state,
                },
                now,
            )?;
        }
        Ok::<(), crate::engine::EngineError>(())
    })();
    if let Err(e) = setup {
        fail(
            case.line,
            "setup",
            "the roster and states apply".into(),
            e.to_string(),
            String::new(),
        );
        return CaseResult {
            name: case.name.clone(),
            line: case.line,
            failures,
        };
    }
    held.take_events(&mut engine);
    held.offered.clear();
    for step in &case.steps {
        let done = match &step.kind {
            StepKind::Route(contact, expect) => match engine.apply(Route(contact), now) {
                Ok(decision) => {
                    // The rule that matched counts even when a guard then
                    // decided instead (identity first): the case did reach it.
                    if let Some(rule) = suite.policy.matching_rule(contact, now) {
                        matched.insert(rule.to_owned());
                    }
                    if let Outcome::Agent(a) = &decision.outcome {
                        held.by_contact.insert(
                            contact.contact_id.clone(),
                            (a.agent_id.to_string(), a.reservation),
                        );
                    }
                    for (field, expected, got) in compare(expect, &decision) {
                        fail(step.line, field, expected, got, context(&decision));
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            },
            StepKind::Confirm(contact) | StepKind::Release(contact, _) => {
                let Some(&(_, r)) = held.by_contact.get(contact) else {
                    fail(
                        step.line,
                        "step",
                        format!("`{contact}` holds a reservation"),
                        "it holds none".into(),
                        String::new(),
                    );
                    continue;
                };
                match &step.kind {
                    StepKind::Release(_, reason) => {
                        engine.apply(Release(r, *reason), now).map(drop)
                    }
                    _ => engine.apply(Confirm(r), now).map(drop),
                }
            }
            StepKind::Complete(contact) => match held.by_contact.get(contact) {
                Some((agent, _)) => engine
                    .apply(
                        Complete {
                            agent_id: agent.clone(),
                            contact_id: contact.clone(),
                        },
                        now,
                    )
                    .map(drop),
                None => {
                    fail(
                        step.line,
                        "step",
                        format!("an agent has `{contact}`"),
                        "none has".into(),
                        String::new(),
                    );
                    continue;
                }
            },
            StepKind::Cancel(contact) => engine.apply(Cancel(contact.clone()), now).map(drop),
            // Time passes as it would live: each timer fires when it is
            // due (an offer lapses, then is made again, ...), up to the end.
            StepKind::Wait(d) => {
                let until = advance(now, *d);
                let mut ticked = Ok(());
                while let Some(due) = engine.next_due().filter(|due| *due < until) {
                    now = due.max(now);
                    ticked = engine.apply(Tick, now).map(drop);
                    held.take_events(&mut engine);
                    if ticked.is_err() {
                        break;
                    }
                }
                now = until;
                ticked.and_then(|()| engine.apply(Tick, now).map(drop))
            }
            StepKind::SetState(agent, state) => engine
                .apply(
                    SetAgentState {
                        agent_id: agent.clone(),
                        state: *state,
                    },
                    now,
                )
                .map(drop),
            StepKind::Assigned(contact, agent) => {
                held.take_events(&mut engine);
                let offered: Vec<&(String, String)> =
                    held.offered.iter().filter(|(c, _)| c == contact).collect();
                let to = |a: &str| format!("`{contact}` offered to {a}");
                match (offered.last(), agent) {
                    (None, _) => fail(
                        step.line,
                        "assigned",
                        to(agent.as_deref().unwrap_or("an agent")),
                        describe_offers(&held.offered),
                        String::new(),
                    ),
                    (Some((_, got)), Some(want)) if got != want => {
                        fail(step.line, "assigned", to(want), to(got), String::new())
                    }
                    _ => {}
                }
                held.offered.clear();
                Ok(())
            }
        };
        if let Err(e) = done {
            fail(
                step.line,
                "step",
                "accepted".into(),
                format!("refused: {e}"),
                String::new(),
            );
        }
        held.take_events(&mut engine);
    }
    CaseResult {
        name: case.name.clone(),
        line: case.line,
        failures,
    }
}

fn advance(now: Time, by: std::time::Duration) -> Time {
    now + chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX)
}

fn describe_offers(offered: &[(String, String)]) -> String {
    if offered.is_empty() {
        "no offer since the step before".into()
    } else {
        let list: Vec<String> = offered
            .iter()
            .map(|(c, a)| format!("`{c}` to {a}"))
            .collect();
        format!("offers: {}", list.join(", "))
    }
}

/// What decided, and why.
fn context(d: &Decision) -> String {
    let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
    let by = match &d.rule_id {
        Some(rule) => format!("decided by `{rule}`"),
        None => "no rule matched: the default queue".to_owned(),
    };
    format!("{by}; reasons: {}", reasons.join(", "))
}

/// Each expected key that differs: the key, what was expected, what came.
fn compare(e: &Expect, d: &Decision) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    let mut check = |field: &'static str, expected: Option<String>, got: Option<String>| {
        if let Some(expected) = expected {
            let got = got.unwrap_or_else(|| "none".into());
            if expected != got {
                out.push((field, expected, got));
            }
        }
    };
    check(
        "outcome",
        e.outcome.clone(),
        Some(d.outcome.kind().to_owned()),
    );
    check("queue", e.queue.clone(), d.queue_id().map(str::to_owned));
    check(
        "rule",
        e.rule.clone(),
        Some(d.rule_id.as_deref().unwrap_or("").to_owned()),
    );
    check(
        "level",
        e.level.map(|l| l.to_string()),
        Some(d.level.to_string()),
    );
    check("team", e.team.clone(), Some(d.team.to_string()));
    let (agent, deadline, callback_reason, position) = match &d.outcome {
        Outcome::Agent(a) => (Some(a.agent_id.to_string()), None, None, None),
        Outcome::Callback(c) => (None, Some(c.terms.deadline), Some(c.reason), None),
        Outcome::Queued(q) => (None, None, None, Some(q.position)),
        _ => (None, None, None, None),
    };
    check("agent", e.agent.clone(), agent);
    check(
        "callback_deadline",
        e.callback_deadline.map(|t| t.to_rfc3339()),
        deadline.map(|t| t.to_rfc3339()),
    );
    check(
        "callback_reason",
        e.callback_reason.map(|r| r.as_str().to_owned()),
        callback_reason.map(|r| r.as_str().to_owned()),
    );
    check(
        "position",
        e.position.map(|p| p.to_string()),
        position.map(|p| p.to_string()),
    );
    let missing: Vec<&str> = e
        .reasons
        .iter()
        .filter(|r| !d.reasons.contains(r))
        .map(|r| r.as_str())
        .collect();
    if !missing.is_empty() {
        let got: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
        out.push((
            "reasons",
            format!("to include {}", missing.join(", ")),
            got.join(", "),
        ));
    }
    if let Some(text) = &e.guidance
        && !d.guidance.iter().any(|line| line.contains(text.as_str()))
    {
        let lines: Vec<&str> = d.guidance.iter().map(|l| &**l).collect();
        out.push((
            "guidance",
            format!("a line containing `{text}`"),
            lines.join(" | "),
        ));
    }
    out
}
