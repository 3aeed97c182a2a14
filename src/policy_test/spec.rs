//! The test file: read, checked against its policy and roster (a refusal
//! names the file, the line and the field, as policy errors do), and
//! turned into cases of typed steps.
//!
//! ```toml
//! policy = "healthcare.toml"      # beside this file; none: the embedded one
//! roster = "demo-roster.toml"     # none: the demo roster on the embedded policy
//!
//! [[cases]]
//! name = "a billing question in hours"
//! at = "2026-11-23 10:00 America/New_York"   # or a schedule id as the zone
//! agents = { agent-billing-1 = "away" }       # states before the contact
//! contact = { intent = "billing", identity = "verified" }
//! expect = { outcome = "callback", queue = "billing", rule = "billing" }
//! ```
//!
//! A sequence gives `steps` instead of `contact` and `expect`: `route`
//! (with its `expect`), `confirm`, `release` (with a `reason`), `complete`,
//! `cancel` (each naming a contact), `wait` (a duration), `set_state` (with
//! an `agent`), and `assigned` (a waiting contact was offered to an agent
//! since the step before, to `agent` if given).

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use chrono::{LocalResult, NaiveDateTime, TimeZone};
use serde::Deserialize;
use toml::Spanned;

use crate::engine::AgentSpec;
use crate::file::{self, FileError};
use crate::model::{
    AgentState, CallbackReason, Channel, Contact, Identity, Reason, ReleaseReason, Time, Urgency,
    language_tag,
};
use crate::policy::{self, Policy, Stray};
use crate::roster;
use crate::shape::LANGUAGE;

/// A test file, checked.
#[derive(Debug)]
pub struct Suite {
    /// The file, as named.
    pub file: String,
    /// The policy under test.
    pub policy: Arc<Policy>,
    /// The agents every case starts with, and their states.
    pub roster: Vec<(AgentSpec, AgentState)>,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One case: a fresh engine at a time.
#[derive(Debug)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// Its line in the file.
    pub line: usize,
    /// When it starts.
    pub at: Time,
    /// Agent states set before the first step.
    pub agents: Vec<(String, AgentState)>,
    /// What happens, in order.
    pub steps: Vec<Step>,
}

/// One step of a case, with its line.
#[derive(Debug)]
pub struct Step {
    /// Its line in the file.
    pub line: usize,
    /// What it does.
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug)]
pub enum StepKind {
    /// Route a contact and check the answer.
    Route(Box<Contact>, Expect),
    /// Confirm the reservation a contact holds.
    Confirm(String),
    /// Release it, for a reason.
    Release(String, ReleaseReason),
    /// The agent holding the contact completes it.
    Complete(String),
    /// The waiting caller hangs up.
    Cancel(String),
    /// Time passes.
    Wait(Duration),
    /// An agent's state changes.
    SetState(String, AgentState),
    /// The contact was offered to an agent (this one, if given) since the
    /// step before.
    Assigned(String, Option<String>),
}

/// What a decision must be; `None` is not checked.
#[derive(Debug, Default)]
pub struct Expect {
    /// agent, queued, callback, emergency or authenticate.
    pub outcome: Option<String>,
    /// The owning queue.
    pub queue: Option<String>,
    /// The rule (or guard) that decided; "" for the default queue.
    pub rule: Option<String>,
    /// Reasons that must all be among the decision's.
    pub reasons: Vec<Reason>,
    /// The escalation level.
    pub level: Option<u8>,
    /// The owning team.
    pub team: Option<String>,
    /// The reserved agent.
    pub agent: Option<String>,
    /// The callback ticket's deadline.
    pub callback_deadline: Option<Time>,
    /// Why a callback.
    pub callback_reason: Option<CallbackReason>,
    /// Text one guidance line must contain.
    pub guidance: Option<String>,
    /// The place in line.
    pub position: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    policy: Option<Spanned<String>>,
    roster: Option<Spanned<String>>,
    #[serde(default)]
    cases: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    at: Spanned<String>,
    #[serde(default)]
    agents: BTreeMap<String, Spanned<String>>,
    contact: Option<Spanned<RawContact>>,
    expect: Option<Spanned<RawExpect>>,
    #[serde(default)]
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContact {
    contact_id: Option<String>,
    request_id: Option<String>,
    channel: Option<Spanned<String>>,
    /// May be left out for an emergency, as in RouteContact.
    intent: Option<Spanned<String>>,
    urgency: Option<Spanned<String>>,
    identity: Option<Spanned<String>>,
    language: Option<Spanned<String>>,
    #[serde(default)]
    escalation_requested: bool,
    signals: Option<Spanned<Vec<String>>>,
    attributes: Option<Spanned<BTreeMap<String, String>>>,
    preferred_agent: Option<String>,
    transfer_from: Option<crate::model::TransferFrom>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    outcome: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    rule: Option<Spanned<String>>,
    reasons: Option<Spanned<Vec<String>>>,
    level: Option<u8>,
    team: Option<String>,
    agent: Option<Spanned<String>>,
    callback_deadline: Option<Spanned<String>>,
    callback_reason: Option<Spanned<String>>,
    guidance: Option<String>,
    position: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    route: Option<Spanned<RawContact>>,
    expect: Option<Spanned<RawExpect>>,
    confirm: Option<String>,
    release: Option<String>,
    reason: Option<Spanned<String>>,
    complete: Option<String>,
    cancel: Option<String>,
    wait: Option<Spanned<String>>,
    set_state: Option<Spanned<String>>,
    assigned: Option<String>,
    agent: Option<Spanned<String>>,
}

/// Where refusals point.
struct Cx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Cx<'_> {
    fn invalid(&self, at: usize, field: &str, message: impl Into<String>) -> FileError {
        file::invalid(self.file, self.text, at, field, message)
    }

    fn one_of<T: Copy>(
        &self,
        s: &Spanned<String>,
        field: &str,
        options: &[T],
        name: fn(T) -> &'static str,
    ) -> Result<T, FileError> {
        file::one_of(self.file, self.text, s, field, options, name)
    }
}

/// Reads and checks the test file at `path`; its policy and roster paths
/// are taken from beside it.
pub fn read(path: &Path) -> Result<Suite, FileError> {
    let (file, text) = file::read_text(path)?;
    parse(&file, &text, path.parent().unwrap_or(Path::new(".")))
}

/// Checks `text`, the contents of `file`; `dir` is where its paths start.
pub fn parse(file: &str, text: &str, dir: &Path) -> Result<Suite, FileError> {
    let cx = Cx { file, text };
    let raw: RawSuite = toml::from_str(text).map_err(|e| file::toml_error(file, text, &e))?;
    let policy = match &raw.policy {
        Some(p) => policy::read(&dir.join(p.get_ref()))?,
        None => Policy::embedded()?,
    };
    let roster = match (&raw.roster, &raw.policy) {
        (Some(r), _) => roster::read(&dir.join(r.get_ref()))?,
        (None, None) => roster::parse("examples/demo-roster.toml (embedded)", roster::DEMO_ROSTER)?,
        (None, Some(_)) => Vec::new(),
    };
    if raw.cases.is_empty() {
        return Err(cx.invalid(0, "cases", "no [[cases]]: nothing would be tested"));
    }
    let agents: std::collections::HashSet<&str> =
        roster.iter().map(|(a, _)| a.id.as_str()).collect();
    let mut cases = Vec::with_capacity(raw.cases.len());
    for spanned in &raw.cases {
        let c = spanned.get_ref();
        let line = file::line_at(text, spanned.span().start);
        let at = time(&cx, &policy, &c.at, "cases.at")?;
        let mut states = Vec::new();
        for (id, state) in &c.agents {
            if !agents.contains(id.as_str()) {
                return Err(cx.invalid(
                    state.span().start,
                    "cases.agents",
                    format!("`{id}` is not an agent of the roster"),
                ));
            }
            states.push((id.clone(), agent_state(&cx, state, "cases.agents")?));
        }
        let mut steps = Vec::new();
        match (&c.contact, &c.steps.is_empty()) {
            (Some(contact), true) => {
                let expect = match &c.expect {
                    Some(e) => expect(&cx, &policy, &agents, e)?,
                    None => {
                        return Err(cx.invalid(
                            contact.span().start,
                            "cases.expect",
                            "required with `contact`: what must the answer be?",
                        ));
                    }
                };
                let contact = self::contact(&cx, &policy, contact, "case")?;
                steps.push(Step {
                    line: file::line_at(text, c.contact.as_ref().map_or(0, |s| s.span().start)),
                    kind: StepKind::Route(Box::new(contact), expect),
                });
            }
            (None, false) => {
                if let Some(e) = &c.expect {
                    return Err(cx.invalid(
                        e.span().start,
                        "cases.expect",
                        "a case with steps gives each route its own expect",
                    ));
                }
                for step in &c.steps {
                    steps.push(self::step(&cx, &policy, &agents, step)?);
                }
            }
            (Some(contact), false) => {
                return Err(cx.invalid(
                    contact.span().start,
                    "cases.contact",
                    "give `contact` or `steps`, not both",
                ));
            }
            (None, true) => {
                return Err(cx.invalid(
                    spanned.span().start,
                    "cases.contact",
                    "required: a contact to route, or steps",
                ));
            }
        }
        cases.push(Case {
            name: c.name.get_ref().clone(),
            line,
            at,
            agents: states,
            steps,
        });
    }
    Ok(Suite {
        file: file.to_owned(),
        policy: Arc::new(policy),
        roster,
        cases,
    })
}

/// `2026-12-24 16:30 America/New_York`: a local time and its zone, an IANA
/// name or a schedule of the policy (its zone); or an RFC 3339 time.
fn time(cx: &Cx, policy: &Policy, s: &Spanned<String>, field: &str) -> Result<Time, FileError> {
    let text = s.get_ref().trim();
    let bad = |why: String| cx.invalid(s.span().start, field, why);
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let (local, zone) = text.rsplit_once(' ').ok_or_else(|| {
        bad(format!(
            "`{text}` is not `YYYY-MM-DD HH:MM ZONE` (an IANA zone or a schedule id)"
        ))
    })?;
    let tz = policy.time_zone(zone).ok_or_else(|| {
        bad(format!(
            "`{zone}` is neither an IANA time zone nor a schedule of the policy"
        ))
    })?;
    let naive = NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S"))
        .map_err(|_| bad(format!("`{local}` is not `YYYY-MM-DD HH:MM`")))?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&chrono::Utc)),
        LocalResult::Ambiguous(first, second) => Err(bad(format!(
            "{local} happens twice in {zone} (a clock change repeats it): write it with its \
             offset, {} or {}",
            first.to_rfc3339(),
            second.to_rfc3339()
        ))),
        LocalResult::None => Err(bad(format!(
            "{local} does not exist in {zone} (a clock change skips it)"
        ))),
    }
}

fn agent_state(cx: &Cx, s: &Spanned<String>, field: &str) -> Result<AgentState, FileError> {
    cx.one_of(s, field, &AgentState::ALL, AgentState::as_str)
}

fn contact(
    cx: &Cx,
    policy: &Policy,
    raw: &Spanned<RawContact>,
    default_id: &str,
) -> Result<Contact, FileError> {
    let c = raw.get_ref();
    let field = |f: &str| format!("cases.contact.{f}");
    let channel = match &c.channel {
        Some(ch) => cx.one_of(ch, &field("channel"), &Channel::ALL, Channel::as_str)?,
        None => Channel::Voice,
    };
    let urgency = match &c.urgency {
        Some(u) => cx.one_of(u, &field("urgency"), &Urgency::ALL, Urgency::as_str)?,
        None => Urgency::Routine,
    };
    let identity = match &c.identity {
        Some(i) => cx.one_of(i, &field("identity"), &Identity::ALL, Identity::as_str)?,
        None => Identity::NotAttempted,
    };
    // As RouteContact takes it: a well-formed tag, in its canonical case.
    let language = match &c.language {
        Some(l) if !l.get_ref().is_empty() => {
            if let Some(problem) = LANGUAGE.problem(l.get_ref()) {
                return Err(cx.invalid(l.span().start, &field("language"), problem));
            }
            Some(language_tag(l.get_ref()))
        }
        _ => None,
    };
    if let Some(intent) = &c.intent
        && policy.intent_idx(intent.get_ref()).is_none()
    {
        return Err(cx.invalid(
            intent.span().start,
            &field("intent"),
            format!("`{}` is not an intent of the policy", intent.get_ref()),
        ));
    }
    // The engine refuses a contact outside the policy's vocabulary; a case
    // is refused here instead, with its line, as its intent is.
    let signals = c.signals.as_ref().map_or(&[][..], |s| s.get_ref());
    let attributes = c.attributes.as_ref().map(|a| a.get_ref());
    let pairs = attributes
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let at = |list: Option<std::ops::Range<usize>>| list.map_or(raw.span().start, |s| s.start);
    match policy.stray(signals, pairs) {
        Some(Stray::Signal(stray)) => {
            return Err(cx.invalid(
                at(c.signals.as_ref().map(|s| s.span())),
                &field("signals"),
                format!(
                    "`{stray}` is not a signal of the policy ({})",
                    policy.signal_names()
                ),
            ));
        }
        Some(Stray::Attribute(key)) => {
            return Err(cx.invalid(
                at(c.attributes.as_ref().map(|a| a.span())),
                &field("attributes"),
                format!(
                    "`{key}` is not an attribute of the policy ({})",
                    policy.attribute_names()
                ),
            ));
        }
        Some(Stray::Value {
            key,
            value,
            allowed,
        }) => {
            return Err(cx.invalid(
                at(c.attributes.as_ref().map(|a| a.span())),
                &field(&format!("attributes.{key}")),
                format!("`{value}` is not one of: {}", allowed.join(", ")),
            ));
        }
        None => {}
    }
    let contact = Contact {
        contact_id: c
            .contact_id
            .clone()
            .unwrap_or_else(|| default_id.to_owned()),
        request_id: c.request_id.clone(),
        channel,
        intent: c
            .intent
            .as_ref()
            .map(|i| i.get_ref().clone())
            .unwrap_or_default(),
        urgency,
        identity,
        language,
        escalation_requested: c.escalation_requested,
        signals: signals.to_vec(),
        attributes: attributes
            .map(|a| a.clone().into_iter().collect())
            .unwrap_or_default(),
        transfer_from: c.transfer_from.clone(),
        preferred_agent_id: c.preferred_agent.clone(),
    };
    if contact.intent.is_empty() && policy.emergency_guard(&contact).is_none() {
        return Err(cx.invalid(
            raw.span().start,
            &field("intent"),
            "required, unless the contact is an emergency (urgency \"emergency\" or an emergency signal)",
        ));
    }
    Ok(contact)
}

/// A release reason as the API names it (`RELEASE_REASON_CANCELLED` is
/// `cancelled`: the caller hung up).
fn release_name(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::CallerHungUp => "cancelled",
        other => other.as_str(),
    }
}

fn expect(
    cx: &Cx,
    policy: &Policy,
    agents: &std::collections::HashSet<&str>,
    raw: &Spanned<RawExpect>,
) -> Result<Expect, FileError> {
    let e = raw.get_ref();
    let field = |f: &str| format!("cases.expect.{f}");
    if let Some(o) = &e.outcome {
        let kinds = ["agent", "queued", "callback", "emergency", "authenticate"];
        if !kinds.contains(&o.get_ref().as_str()) {
            return Err(cx.invalid(
                o.span().start,
                &field("outcome"),
                format!("`{}` is not one of: {}", o.get_ref(), kinds.join(", ")),
            ));
        }
    }
    // Internal queues (a relaxation step's wider pool) own no contact.
    if let Some(q) = &e.queue
        && policy
            .queue_idx(q.get_ref())
            .is_none_or(|i| policy.queues[i].parent.is_some())
    {
        return Err(cx.invalid(
            q.span().start,
            &field("queue"),
            format!("unknown queue `{}`", q.get_ref()),
        ));
    }
    if let Some(r) = &e.rule {
        let known = ["", "guard:identity", "guard:emergency"].contains(&r.get_ref().as_str())
            || policy.rules.iter().any(|rule| &*rule.id == r.get_ref());
        if !known {
            return Err(cx.invalid(
                r.span().start,
                &field("rule"),
                format!("unknown rule `{}`", r.get_ref()),
            ));
        }
    }
    if let Some(a) = &e.agent
        && !agents.contains(a.get_ref().as_str())
    {
        return Err(cx.invalid(
            a.span().start,
            &field("agent"),
            format!("`{}` is not an agent of the roster", a.get_ref()),
        ));
    }
    let mut reasons = Vec::new();
    if let Some(rs) = &e.reasons {
        for r in rs.get_ref() {
            let reason = Reason::ALL
                .into_iter()
                .find(|x| x.as_str() == r)
                .ok_or_else(|| {
                    cx.invalid(
                        rs.span().start,
                        &field("reasons"),
                        format!("`{r}` is not a reason (see the proto's Reason, in snake_case)"),
                    )
                })?;
            reasons.push(reason);
        }
    }
    let callback_reason = match &e.callback_reason {
        Some(r) => Some(cx.one_of(
            r,
            &field("callback_reason"),
            &CallbackReason::ALL,
            CallbackReason::as_str,
        )?),
        None => None,
    };
    Ok(Expect {
        outcome: e.outcome.as_ref().map(|o| o.get_ref().clone()),
        queue: e.queue.as_ref().map(|q| q.get_ref().clone()),
        rule: e.rule.as_ref().map(|r| r.get_ref().clone()),
        reasons,
        level: e.level,
        team: e.team.clone(),
        agent: e.agent.as_ref().map(|a| a.get_ref().clone()),
        callback_deadline: match &e.callback_deadline {
            Some(d) => Some(time(cx, policy, d, &field("callback_deadline"))?),
            None => None,
        },
        callback_reason,
        guidance: e.guidance.clone(),
        position: e.position,
    })
}

fn step(
    cx: &Cx,
    policy: &Policy,
    agents: &std::collections::HashSet<&str>,
    raw: &Spanned<RawStep>,
) -> Result<Step, FileError> {
    let s = raw.get_ref();
    let at = raw.span().start;
    let line = file::line_at(cx.text, at);
    let given = [
        s.route.is_some(),
        s.confirm.is_some(),
        s.release.is_some(),
        s.complete.is_some(),
        s.cancel.is_some(),
        s.wait.is_some(),
        s.set_state.is_some(),
        s.assigned.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(cx.invalid(
            at,
            "cases.steps",
            "each step is one of: route, confirm, release, complete, cancel, wait, set_state, assigned",
        ));
    }
    let agent = match &s.agent {
        Some(a) if !agents.contains(a.get_ref().as_str()) => {
            return Err(cx.invalid(
                a.span().start,
                "cases.steps.agent",
                format!("`{}` is not an agent of the roster", a.get_ref()),
            ));
        }
        a => a.as_ref().map(|a| a.get_ref().clone()),
    };
    let kind = if let Some(route) = &s.route {
        let expect = match &s.expect {
            Some(e) => expect(cx, policy, agents, e)?,
            None => Expect::default(),
        };
        let default_id = format!("contact-line-{line}");
        StepKind::Route(Box::new(contact(cx, policy, route, &default_id)?), expect)
    } else if let Some(c) = &s.confirm {
        StepKind::Confirm(c.clone())
    } else if let Some(c) = &s.release {
        let reason = match &s.reason {
            // The name files written before took for `cancelled`.
            Some(r) if r.get_ref() == "caller_hung_up" => ReleaseReason::CallerHungUp,
            Some(r) => cx.one_of(r, "cases.steps.reason", &ReleaseReason::ALL, release_name)?,
            None => ReleaseReason::Unspecified,
        };
        StepKind::Release(c.clone(), reason)
    } else if let Some(c) = &s.complete {
        StepKind::Complete(c.clone())
    } else if let Some(c) = &s.cancel {
        StepKind::Cancel(c.clone())
    } else if let Some(w) = &s.wait {
        StepKind::Wait(humantime::parse_duration(w.get_ref()).map_err(|e| {
            cx.invalid(
                w.span().start,
                "cases.steps.wait",
                format!("`{}`: {e}", w.get_ref()),
            )
        })?)
    } else if let Some(state) = &s.set_state {
        let Some(agent) = agent else {
            return Err(cx.invalid(at, "cases.steps.agent", "required with set_state"));
        };
        StepKind::SetState(agent, agent_state(cx, state, "cases.steps.set_state")?)
    } else {
        // Exactly one kind was given, and every other was ruled out.
        StepKind::Assigned(s.assigned.clone().unwrap_or_default(), agent)
    };
    Ok(Step { line, kind })
}
