//! Reading a policy file: TOML into raw, span-carrying structs, then strict
//! validation into a [`Policy`]. Every refusal names the file, the line and
//! the field.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
    path::Path,
    sync::Arc,
};

use chrono::{Duration, NaiveDate};
use serde::Deserialize;
use toml::Spanned;

use super::{
    Action, Authenticate, Blocks, Emergency, Intent, IntentIdx, Match, Policy, Queue, QueueIdx,
    RULE_URGENCIES, Rule, Schedule, Text, TextList,
};
use crate::file::{self, FileError};
use crate::model::{
    Channel, ChannelSet, FastMap, Identity, MAX_PROFICIENCY, Urgency, language_tag,
};
use crate::shape::{ADDRESS, ID, LANGUAGE, Shape, VALUE, WORD};

/// Why a policy was refused: the file, the line and the field.
pub type PolicyError = FileError;

/// Reads and validates a policy file.
pub fn read(path: &Path) -> Result<Policy, PolicyError> {
    let (file, text) = file::read_text(path)?;
    parse(&file, &text)
}

/// What a queue or rule id may be.
const ID_FORM: &str = "1-64 characters of letters, digits and _ - . :";

/// Whether `id` is a queue or rule id ([`ID_FORM`]): an id requests can
/// carry, and at most 64 bytes (answers and metric labels carry it).
fn id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len()) && ID.problem(id).is_none()
}

/// Why a policy names what no request could carry.
fn unsendable(value: &str, problem: &str) -> String {
    format!("`{value}` is not a name a request can carry ({problem})")
}

/// Validates policy text; `file` names it in messages.
pub fn parse(file: &str, text: &str) -> Result<Policy, PolicyError> {
    parse_with(file, text, true)
}

/// Builds a policy the log or a snapshot holds. It was accepted when it
/// was written, so it is read as it was then: the checks added since that
/// only refuse a policy file (a name no request could carry) are not made,
/// or a journal written by the build before would no longer replay.
pub fn parse_logged(file: &str, text: &str) -> Result<Policy, PolicyError> {
    parse_with(file, text, false)
}

fn parse_with(file: &str, text: &str, names: bool) -> Result<Policy, PolicyError> {
    let cx = Cx { file, text, names };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| file::toml_error(file, text, &e))?;
    cx.build(raw)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MAX_RESERVATION_TTL_SECS: i64 = 600;
const DEFAULT_RESERVATION_TTL: Duration = Duration::seconds(15);
const MAX_WRAP_UP_SECS: i64 = 3600;
/// Guidance with an urgent clinical contact routed before its identity was
/// verified, unless the policy words it.
const DEFAULT_VERIFY_DURING_CALL: &str = "Urgent clinical contact, identity not yet verified: triage first, verify identity during the call, and disclose no records until it is verified.";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<String>,
    #[serde(default)]
    default_language: Option<Spanned<String>>,
    default_queue: Spanned<String>,
    main_schedule: Spanned<String>,
    #[serde(default)]
    reservation_ttl: Option<Spanned<String>>,
    #[serde(default)]
    priority_aging: Option<Spanned<String>>,
    #[serde(default)]
    missed_offers_to_pause: Option<Spanned<i64>>,
    #[serde(default)]
    reoffer_after: Option<Spanned<String>>,
    /// Per channel, the work on other channels that blocks new contacts on
    /// it: `[utilization.voice] blocked_by = { chat = 2 }`.
    #[serde(default)]
    utilization: BTreeMap<Spanned<String>, RawUtilization>,
    #[serde(default)]
    intake_fields: Vec<String>,
    /// Signals contacts may carry beyond those `[emergency]` and the rules
    /// name (an IVR's tags no rule acts on yet).
    #[serde(default)]
    signals: Option<Spanned<Vec<String>>>,
    emergency: RawEmergency,
    authenticate: RawAuthenticate,
    #[serde(default)]
    attributes: BTreeMap<Spanned<String>, Vec<Spanned<String>>>,
    intents: BTreeMap<Spanned<String>, RawIntent>,
    schedules: BTreeMap<Spanned<String>, RawSchedule>,
    queues: Vec<RawQueue>,
    /// None: every contact goes to `default_queue`, under the guards.
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUtilization {
    blocked_by: BTreeMap<Spanned<String>, Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmergency {
    script_id: String,
    instruction: String,
    #[serde(default)]
    signals: Option<Spanned<Vec<String>>>,
    level: Spanned<i64>,
    team: String,
}

impl RawEmergency {
    fn signals(&self) -> &[String] {
        self.signals.as_ref().map_or(&[], |s| s.get_ref())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthenticate {
    script_id: String,
    instruction: String,
    failed_script_id: String,
    failed_instruction: String,
    #[serde(default)]
    escalations: Option<bool>,
    #[serde(default)]
    verify_during_call: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    callback_window: Spanned<String>,
    priority: Spanned<i64>,
    #[serde(default)]
    intake_fields: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    time_zone: Spanned<String>,
    hours: Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
    #[serde(default)]
    holidays: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    id: Spanned<String>,
    level: Spanned<i64>,
    team: String,
    #[serde(default)]
    skills: BTreeMap<Spanned<String>, Spanned<i64>>,
    channels: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    schedule: Option<Spanned<String>>,
    transfer_address: Spanned<String>,
    #[serde(default)]
    wrap_up: Option<Spanned<String>>,
    #[serde(default)]
    max_waiting: Option<Spanned<i64>>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(default)]
    max_wait: Option<Spanned<String>>,
    #[serde(default)]
    max_wait_in_line: Option<Spanned<String>>,
    #[serde(default)]
    service_level: Option<Spanned<String>>,
    #[serde(default)]
    handle_time: Option<Spanned<String>>,
    #[serde(default)]
    callback_ticket_type: Option<String>,
    #[serde(default)]
    after_hours_urgent_to: Option<Spanned<String>>,
    #[serde(default)]
    same_team_transfers: Option<bool>,
    #[serde(default)]
    escalate_to: Option<Spanned<String>>,
    #[serde(default)]
    requires_identity: Option<bool>,
    #[serde(default)]
    clinical: Option<bool>,
    #[serde(default)]
    guidance: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    after: Spanned<String>,
    #[serde(default)]
    skills: Option<Spanned<BTreeMap<Spanned<String>, Spanned<i64>>>>,
    #[serde(default)]
    overflow_to: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for the people who read the file
    description: Option<String>,
    #[serde(default)]
    when: Option<RawWhen>,
    #[serde(default)]
    route_to: Option<Spanned<String>>,
    #[serde(default)]
    callback_to: Option<Spanned<String>>,
    #[serde(default)]
    answer: Option<Spanned<String>>,
    #[serde(default)]
    requires_identity: Option<bool>,
    #[serde(default)]
    guidance: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    channel: Option<Spanned<Vec<Spanned<String>>>>,
    intent: Option<Spanned<Vec<Spanned<String>>>>,
    urgency: Option<Spanned<Vec<Spanned<String>>>>,
    identity: Option<Spanned<Vec<Spanned<String>>>>,
    escalation_requested: Option<bool>,
    #[serde(default)]
    attributes: BTreeMap<Spanned<String>, Spanned<String>>,
    signals: Option<Spanned<Vec<String>>>,
    language: Option<Spanned<Vec<String>>>,
    after_hours: Option<bool>,
    transferred_from: Option<Spanned<Vec<Spanned<String>>>>,
    transferred: Option<bool>,
}

/// The file being validated, for messages.
struct Cx<'a> {
    file: &'a str,
    text: &'a str,
    /// Whether names are checked against what requests can carry.
    names: bool,
}

fn text(s: impl AsRef<str>) -> Text {
    Arc::from(s.as_ref())
}

fn text_list(items: &[String]) -> TextList {
    items.iter().map(text).collect()
}

impl Cx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        let end = span.start.min(self.text.len());
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: self.text.as_bytes()[..end]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A skill's proficiency, 1 to [`MAX_PROFICIENCY`].
    fn proficiency(&self, level: &Spanned<i64>, field: String) -> Result<u8, PolicyError> {
        u8::try_from(*level.get_ref())
            .ok()
            .filter(|p| (1..=MAX_PROFICIENCY).contains(p))
            .ok_or_else(|| {
                self.bad(
                    level,
                    field,
                    format!("proficiency {} is not 1-{MAX_PROFICIENCY}", level.get_ref()),
                )
            })
    }

    fn bad<T>(
        &self,
        value: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        self.err(value.span(), field, message)
    }

    /// Refuses a name no request could carry: a rule or guard on it would
    /// never match.
    fn shaped(
        &self,
        value: &Spanned<String>,
        field: impl Into<String>,
        shape: Shape,
    ) -> Result<(), PolicyError> {
        if !self.names {
            return Ok(());
        }
        match shape.required_problem(value.get_ref()) {
            Some(problem) => Err(self.bad(value, field, unsendable(value.get_ref(), &problem))),
            None => Ok(()),
        }
    }

    /// [`Cx::shaped`] for each entry of a list (the list's line is named).
    fn shaped_list(
        &self,
        list: &Spanned<Vec<String>>,
        field: &str,
        shape: Shape,
    ) -> Result<(), PolicyError> {
        if !self.names {
            return Ok(());
        }
        for (i, value) in list.get_ref().iter().enumerate() {
            if let Some(problem) = shape.required_problem(value) {
                return Err(self.err(
                    list.span(),
                    format!("{field}[{i}]"),
                    unsendable(value, &problem),
                ));
            }
        }
        Ok(())
    }

    fn duration(
        &self,
        value: &Spanned<String>,
        field: &str,
        max_secs: i64,
    ) -> Result<Duration, PolicyError> {
        let parsed = humantime::parse_duration(value.get_ref()).map_err(|e| {
            self.bad(
                value,
                field,
                format!(
                    "`{}` is not a duration like \"15s\" or \"2h\": {e}",
                    value.get_ref()
                ),
            )
        })?;
        let d = Duration::from_std(parsed).map_err(|_| self.bad(value, field, "too long"))?;
        if d.num_seconds() > max_secs {
            return Err(self.bad(value, field, format!("must be at most {max_secs}s")));
        }
        Ok(d)
    }

    /// Builds each queue's relaxation steps: step n's pool is a copy of the
    /// queue that also qualifies every skill set widened so far (relaxed
    /// skills, or an overflow queue's skills), appended as an internal queue.
    fn steps(
        &self,
        raw: &[RawQueue],
        queues: &mut Vec<Queue>,
        ids: &FastMap<String, QueueIdx>,
    ) -> Result<(), PolicyError> {
        for (base, rq) in raw.iter().enumerate() {
            let mut widened: Vec<Vec<(String, u8)>> = Vec::new();
            let mut last = Duration::zero();
            for (n, step) in rq.steps.iter().enumerate() {
                let field = format!("queues.{}.steps[{n}]", rq.id.get_ref());
                let after = self.duration(&step.after, &format!("{field}.after"), 24 * 3600)?;
                if after <= last {
                    return Err(self.bad(
                        &step.after,
                        format!("{field}.after"),
                        "steps must come later than the one before (and after 0s)",
                    ));
                }
                last = after;
                match (&step.skills, &step.overflow_to) {
                    (Some(skills), None) => {
                        let mut set = Vec::new();
                        for (skill, level) in skills.get_ref() {
                            self.shaped(skill, format!("{field}.skills"), WORD)?;
                            let p = self.proficiency(
                                level,
                                format!("{field}.skills.{}", skill.get_ref()),
                            )?;
                            set.push((skill.get_ref().clone(), p));
                        }
                        widened.push(set);
                    }
                    (None, Some(to)) => {
                        let Some(&other) = ids.get(to.get_ref()) else {
                            return Err(self.bad(
                                to,
                                format!("{field}.overflow_to"),
                                format!("unknown queue `{}`", to.get_ref()),
                            ));
                        };
                        if other == base {
                            return Err(self.bad(
                                to,
                                format!("{field}.overflow_to"),
                                "a queue cannot overflow to itself",
                            ));
                        }
                        widened.push(queues[other].skills.clone());
                    }
                    _ => {
                        return Err(self.bad(
                            &step.after,
                            field,
                            "give exactly one of skills, overflow_to",
                        ));
                    }
                }
                let mut pool = queues[base].clone();
                pool.id = text(format!("{}~{}", rq.id.get_ref(), n + 1));
                pool.also_qualify = widened.clone();
                pool.parent = Some(base);
                pool.steps = Vec::new();
                let idx = queues.len();
                queues.push(pool);
                queues[base]
                    .steps
                    .push(super::WaitStep { after, pool: idx });
            }
        }
        Ok(())
    }

    fn duration_or(
        &self,
        value: &Option<Spanned<String>>,
        field: &str,
        max_secs: i64,
        default: Duration,
    ) -> Result<Duration, PolicyError> {
        value
            .as_ref()
            .map_or(Ok(default), |v| self.duration(v, field, max_secs))
    }

    fn level(&self, value: &Spanned<i64>, field: &str) -> Result<u8, PolicyError> {
        match *value.get_ref() {
            l @ 1..=4 => Ok(l as u8),
            l => Err(self.bad(value, field, format!("escalation level {l} is not 1-4"))),
        }
    }

    fn build(&self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        // Signals: the words contacts may carry.
        for (list, field) in [
            (&raw.signals, "signals"),
            (&raw.emergency.signals, "emergency.signals"),
        ] {
            if let Some(list) = list {
                self.shaped_list(list, field, WORD)?;
            }
        }
        // Schedules.
        let mut schedules = Vec::new();
        let mut schedule_ids = FastMap::default();
        for (id, s) in &raw.schedules {
            let field = format!("schedules.{}", id.get_ref());
            schedule_ids.insert(id.get_ref().clone(), schedules.len());
            schedules.push(self.schedule(id.get_ref(), s, &field)?);
        }
        let schedule_ref = |v: &Spanned<String>, field: &str| {
            schedule_ids
                .get(v.get_ref())
                .copied()
                .ok_or_else(|| self.bad(v, field, format!("unknown schedule `{}`", v.get_ref())))
        };
        let main_schedule = schedule_ref(&raw.main_schedule, "main_schedule")?;

        // Intents.
        let mut intents = Vec::new();
        let mut intent_ids = FastMap::default();
        for (id, i) in &raw.intents {
            let field = format!("intents.{}", id.get_ref());
            self.shaped(id, &field, WORD)?;
            let window = self.duration(
                &i.callback_window,
                &format!("{field}.callback_window"),
                90 * 24 * 3600,
            )?;
            if window < Duration::minutes(1) {
                return Err(self.bad(
                    &i.callback_window,
                    format!("{field}.callback_window"),
                    "must be at least 1m: a deadline counts whole minutes of opening hours",
                ));
            }
            let priority = match *i.priority.get_ref() {
                p @ 1..=5 => p as u8,
                p => {
                    return Err(self.bad(
                        &i.priority,
                        format!("{field}.priority"),
                        format!("priority {p} is not 1 (most urgent) to 5"),
                    ));
                }
            };
            intent_ids.insert(id.get_ref().clone(), intents.len());
            intents.push(Intent {
                id: text(id.get_ref()),
                callback_window_minutes: window.num_minutes() as u32,
                callback_priority: priority,
                intake_fields: text_list(i.intake_fields.as_deref().unwrap_or(&raw.intake_fields)),
            });
        }

        // Attributes.
        let mut attributes = FastMap::default();
        for (key, values) in &raw.attributes {
            let field = format!("attributes.{}", key.get_ref());
            self.shaped(key, &field, WORD)?;
            for value in values {
                self.shaped(value, &field, VALUE)?;
            }
            if values.is_empty() {
                return Err(self.bad(
                    key,
                    format!("attributes.{}", key.get_ref()),
                    "list the allowed values",
                ));
            }
            attributes.insert(
                key.get_ref().clone(),
                values
                    .iter()
                    .map(|v| v.get_ref().clone())
                    .collect::<Vec<_>>(),
            );
        }

        // Queues: ids first, so queues can refer to later ones.
        let mut queue_ids = FastMap::default();
        for (i, q) in raw.queues.iter().enumerate() {
            if !id_ok(q.id.get_ref()) {
                return Err(self.bad(&q.id, format!("queues[{i}].id"), ID_FORM));
            }
            if queue_ids.insert(q.id.get_ref().clone(), i).is_some() {
                return Err(self.bad(
                    &q.id,
                    format!("queues[{i}].id"),
                    format!("duplicate queue id `{}`", q.id.get_ref()),
                ));
            }
        }
        let queue_ref = |v: &Spanned<String>, field: &str| {
            queue_ids
                .get(v.get_ref())
                .copied()
                .ok_or_else(|| self.bad(v, field, format!("unknown queue `{}`", v.get_ref())))
        };
        let mut queues = Vec::new();
        for q in &raw.queues {
            let field = format!("queues.{}", q.id.get_ref());
            let mut skills = Vec::new();
            for (skill, level) in &q.skills {
                self.shaped(skill, format!("{field}.skills"), WORD)?;
                let p = self.proficiency(level, format!("{field}.skills.{}", skill.get_ref()))?;
                skills.push((skill.get_ref().clone(), p));
            }
            let mut channels = ChannelSet::default();
            for c in q.channels.get_ref() {
                channels.insert(self.channel(c, &format!("{field}.channels"))?);
            }
            if channels.0 == 0 {
                return Err(self.bad(
                    &q.channels,
                    format!("{field}.channels"),
                    "a queue takes at least one channel",
                ));
            }
            let after_hours_urgent_to = q
                .after_hours_urgent_to
                .as_ref()
                .map(|v| queue_ref(v, &format!("{field}.after_hours_urgent_to")))
                .transpose()?;
            let escalate_to = q
                .escalate_to
                .as_ref()
                .map(|v| queue_ref(v, &format!("{field}.escalate_to")))
                .transpose()?;
            let own = queue_ids[q.id.get_ref()];
            for (target, name) in [
                (after_hours_urgent_to, "after_hours_urgent_to"),
                (escalate_to, "escalate_to"),
            ] {
                if target == Some(own) {
                    return Err(self.bad(
                        &q.id,
                        format!("{field}.{name}"),
                        "a queue cannot hand contacts to itself",
                    ));
                }
            }
            let same_team_transfers = q.same_team_transfers.unwrap_or(true);
            if !same_team_transfers && escalate_to.is_none() {
                return Err(self.bad(&q.id, format!("{field}.escalate_to"), "same_team_transfers = false needs an escalate_to queue for the contacts it refuses"));
            }
            if q.transfer_address.get_ref().trim().is_empty() {
                return Err(self.bad(
                    &q.transfer_address,
                    format!("{field}.transfer_address"),
                    "must not be empty",
                ));
            }
            // As an agent's: an address, nothing that reads as a log field.
            if self.names
                && let Some(problem) = ADDRESS.problem(q.transfer_address.get_ref())
            {
                return Err(self.bad(
                    &q.transfer_address,
                    format!("{field}.transfer_address"),
                    format!("{problem} ({})", ADDRESS.describe()),
                ));
            }
            let max_wait = self.duration_or(
                &q.max_wait,
                &format!("{field}.max_wait"),
                24 * 3600,
                Duration::minutes(10),
            )?;
            queues.push(Queue {
                id: text(q.id.get_ref()),
                level: self.level(&q.level, &format!("{field}.level"))?,
                team: text(&q.team),
                skills,
                also_qualify: Vec::new(),
                steps: Vec::new(),
                parent: None,
                channels,
                schedule: q
                    .schedule
                    .as_ref()
                    .map(|s| schedule_ref(s, &format!("{field}.schedule")))
                    .transpose()?,
                transfer_address: text(q.transfer_address.get_ref()),
                wrap_up: q
                    .wrap_up
                    .as_ref()
                    .map(|w| self.duration(w, &format!("{field}.wrap_up"), MAX_WRAP_UP_SECS))
                    .transpose()?
                    .unwrap_or_else(Duration::zero),
                max_waiting: match &q.max_waiting {
                    Some(v) => match *v.get_ref() {
                        n @ 0..=100_000 => n as u32,
                        n => {
                            return Err(self.bad(
                                v,
                                format!("{field}.max_waiting"),
                                format!("{n} is not 0 (no waiting) to 100000"),
                            ));
                        }
                    },
                    None => 0,
                },
                max_wait,
                max_wait_in_line: self.duration_or(
                    &q.max_wait_in_line,
                    &format!("{field}.max_wait_in_line"),
                    24 * 3600,
                    max_wait,
                )?,
                service_level: self.duration_or(
                    &q.service_level,
                    &format!("{field}.service_level"),
                    3600,
                    Duration::seconds(30),
                )?,
                handle_time: self.duration_or(
                    &q.handle_time,
                    &format!("{field}.handle_time"),
                    24 * 3600,
                    Duration::minutes(5),
                )?,
                callback_ticket_type: text(
                    q.callback_ticket_type
                        .as_deref()
                        .unwrap_or("Patient Callback"),
                ),
                after_hours_urgent_to,
                same_team_transfers,
                escalate_to,
                // Safe by default: a queue above level 1 requires a
                // verified caller unless the policy says otherwise.
                requires_identity: q.requires_identity.unwrap_or(*q.level.get_ref() > 1),
                clinical: q.clinical.unwrap_or(false),
                guidance: text_list(&q.guidance),
            });
        }
        self.steps(&raw.queues, &mut queues, &queue_ids)?;
        for (q, raw_q) in queues.iter().zip(&raw.queues) {
            if let Some(e) = q.escalate_to
                && queues[e].team == q.team
                && !q.same_team_transfers
            {
                let at = raw_q
                    .escalate_to
                    .as_ref()
                    .map_or_else(|| raw_q.id.span(), Spanned::span);
                return Err(self.err(
                    at,
                    format!("queues.{}.escalate_to", q.id),
                    format!("`{}` belongs to the same team `{}`", queues[e].id, q.team),
                ));
            }
        }

        let reservation_ttl = match &raw.reservation_ttl {
            Some(v) => {
                let ttl = self.duration(v, "reservation_ttl", MAX_RESERVATION_TTL_SECS)?;
                if ttl <= Duration::zero() {
                    return Err(self.bad(v, "reservation_ttl", "must be longer than zero"));
                }
                ttl
            }
            None => DEFAULT_RESERVATION_TTL,
        };

        let policy_stub = PolicyRefs {
            intent_ids: &intent_ids,
            queue_ids: &queue_ids,
            attributes: &attributes,
        };
        let mut rules: Vec<Rule> = Vec::new();
        let mut rule_lines: Vec<(String, usize)> = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            // Answers and metrics carry it: a name, never free text.
            if !id_ok(r.id.get_ref()) {
                return Err(self.bad(&r.id, format!("rules[{i}].id"), ID_FORM));
            }
            let field = format!("rules.{}", r.id.get_ref());
            if r.id.get_ref().starts_with("guard:") {
                return Err(self.bad(
                    &r.id,
                    format!("{field}.id"),
                    "`guard:` names the built-in guards in answers; choose another id",
                ));
            }
            if rules.iter().any(|x| *x.id == **r.id.get_ref()) {
                return Err(self.bad(
                    &r.id,
                    format!("{field}.id"),
                    format!("duplicate rule id `{}`", r.id.get_ref()),
                ));
            }
            let when = match &r.when {
                Some(w) => self.when(w, &field, &policy_stub)?,
                None => Match::default(),
            };
            let action = match (&r.route_to, &r.callback_to, &r.answer) {
                (Some(q), None, None) => Action::Route(queue_ref(q, &format!("{field}.route_to"))?),
                (None, Some(q), None) => {
                    Action::Callback(queue_ref(q, &format!("{field}.callback_to"))?)
                }
                (None, None, Some(a)) => match a.get_ref().as_str() {
                    "emergency" => Action::Emergency,
                    "authenticate" => Action::Authenticate,
                    other => {
                        return Err(self.bad(
                            a,
                            format!("{field}.answer"),
                            format!("`{other}` is not one of: emergency, authenticate"),
                        ));
                    }
                },
                _ => {
                    return Err(self.bad(
                        &r.id,
                        field,
                        "give exactly one of route_to, callback_to, answer",
                    ));
                }
            };
            // The emergency guard answers emergency contacts before any
            // rule: a rule only they could match never would.
            let guarded = when
                .urgencies
                .as_ref()
                .is_some_and(|u| !u.iter().any(|x| RULE_URGENCIES.contains(x)))
                || when
                    .signals
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|x| raw.emergency.signals().contains(x)));
            if guarded {
                return Err(self.bad(&r.id, format!("{field}.when"), "can never match: the emergency guard answers every contact it would (emergency urgency, or only emergency signals) before any rule"));
            }
            let line = self.line_of(r.id.span());
            for (earlier, (earlier_id, earlier_line)) in rules.iter().zip(&rule_lines) {
                if earlier.when.covers(&when) {
                    return Err(self.bad(&r.id, format!("{field}.when"), format!("can never match: rule `{earlier_id}` (line {earlier_line}) matches every contact this one does")));
                }
            }
            rule_lines.push((r.id.get_ref().clone(), line));
            rules.push(Rule {
                id: text(r.id.get_ref()),
                when,
                action,
                requires_identity: r.requires_identity,
                guidance: text_list(&r.guidance),
            });
        }

        if let Some(l) = &raw.default_language {
            self.shaped(l, "default_language", LANGUAGE)?;
        }
        let default_language = raw
            .default_language
            .as_ref()
            .map(|l| language_tag(l.get_ref()))
            .unwrap_or_else(|| "en".to_owned());
        let default_queue = queue_ref(&raw.default_queue, "default_queue")?;
        // Step pools are found by id too (reload carries waiting contacts
        // over by id); rules were resolved above, so none can name them.
        for (i, q) in queues.iter().enumerate().skip(raw.queues.len()) {
            queue_ids.insert(q.id.to_string(), i);
        }
        Ok(Policy {
            source: self.file.to_owned(),
            text: Arc::from(self.text),
            version: raw.version.get_ref().clone(),
            default_language,
            default_queue,
            main_schedule,
            reservation_ttl,
            priority_aging: self
                .duration_or(
                    &raw.priority_aging,
                    "priority_aging",
                    24 * 3600,
                    Duration::seconds(60),
                )?
                .max(Duration::seconds(1)),
            reoffer_after: match &raw.reoffer_after {
                Some(v) => {
                    let d = self.duration(v, "reoffer_after", 3600)?;
                    if d < Duration::seconds(1) {
                        return Err(self.bad(
                            v,
                            "reoffer_after",
                            "must be at least 1s: an agent who passed would be offered the contact again at once",
                        ));
                    }
                    d
                }
                None => Duration::seconds(30),
            },
            blocks: self.blocks(&raw.utilization)?,
            missed_offers_to_pause: match &raw.missed_offers_to_pause {
                Some(v) => match *v.get_ref() {
                    n @ 1..=100 => n as u32,
                    n => {
                        return Err(self.bad(
                            v,
                            "missed_offers_to_pause",
                            format!("{n} is not 1-100"),
                        ));
                    }
                },
                None => 3,
            },
            emergency: Emergency {
                script_id: text(&raw.emergency.script_id),
                instruction: text(&raw.emergency.instruction),
                signals: raw.emergency.signals().to_vec(),
                level: self.level(&raw.emergency.level, "emergency.level")?,
                team: text(&raw.emergency.team),
            },
            authenticate: Authenticate {
                script_id: text(&raw.authenticate.script_id),
                instruction: text(&raw.authenticate.instruction),
                failed_script_id: text(&raw.authenticate.failed_script_id),
                failed_instruction: text(&raw.authenticate.failed_instruction),
                verify_during_call: text_list(
                    raw.authenticate
                        .verify_during_call
                        .as_deref()
                        .unwrap_or(&[DEFAULT_VERIFY_DURING_CALL.to_owned()]),
                ),
            },
            identity_before_escalation: raw.authenticate.escalations.unwrap_or(true),
            signals: raw
                .signals
                .iter()
                .flat_map(|s| s.get_ref())
                .chain(raw.emergency.signals())
                .chain(rules.iter().flat_map(|r| r.when.signals.iter().flatten()))
                .cloned()
                .collect(),
            attributes,
            intents,
            schedules,
            queues,
            rules,
            intent_ids,
            queue_ids,
        })
    }

    /// The `[utilization]` section: for each channel, how many contacts on
    /// each other channel block new ones on it.
    fn blocks(
        &self,
        raw: &BTreeMap<Spanned<String>, RawUtilization>,
    ) -> Result<Blocks, PolicyError> {
        let mut blocks = Blocks::default();
        for (channel, u) in raw {
            let c = self.channel(channel, "utilization")?;
            for (other, n) in &u.blocked_by {
                let field = format!("utilization.{}.blocked_by", c.as_str());
                let o = self.channel(other, &field)?;
                if o == c {
                    return Err(self.bad(
                        other,
                        field,
                        "a channel does not block itself: its capacity is the agent's `channels`",
                    ));
                }
                let max = i64::from(crate::model::MAX_CHANNEL_CAPACITY);
                let n = match *n.get_ref() {
                    n @ 1.. if n <= max => n as u8,
                    v => {
                        return Err(self.bad(
                            n,
                            format!("{field}.{}", o.as_str()),
                            format!("{v} is not 1-{max}: the number of contacts on it that blocks"),
                        ));
                    }
                };
                blocks.set(c, o, n);
            }
        }
        Ok(blocks)
    }

    fn line_of(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn channel(&self, v: &Spanned<String>, field: &str) -> Result<Channel, PolicyError> {
        Channel::parse(v.get_ref()).ok_or_else(|| {
            self.bad(
                v,
                field,
                format!(
                    "`{}` is not one of: voice, chat, sms, email, portal",
                    v.get_ref()
                ),
            )
        })
    }

    fn schedule(&self, id: &str, s: &RawSchedule, field: &str) -> Result<Schedule, PolicyError> {
        let time_zone = s.time_zone.get_ref().parse().map_err(|_| {
            self.bad(
                &s.time_zone,
                format!("{field}.time_zone"),
                format!(
                    "`{}` is not an IANA time zone such as \"America/New_York\"",
                    s.time_zone.get_ref()
                ),
            )
        })?;
        let mut week = [None; 7];
        for (day, hours) in s.hours.get_ref() {
            let hfield = format!("{field}.hours.{}", day.get_ref());
            let Some(d) = DAYS.iter().position(|x| x == day.get_ref()) else {
                return Err(self.bad(
                    day,
                    hfield,
                    "day must be one of mon, tue, wed, thu, fri, sat, sun",
                ));
            };
            week[d] = self.hours(hours, &hfield)?;
        }
        if week.iter().all(Option::is_none) {
            return Err(self.err(
                s.hours.span(),
                format!("{field}.hours"),
                "the schedule never opens: give hours for at least one day",
            ));
        }
        let mut holidays = BTreeSet::new();
        for h in &s.holidays {
            let date = NaiveDate::parse_from_str(h.get_ref(), "%Y-%m-%d").map_err(|_| {
                self.bad(
                    h,
                    format!("{field}.holidays"),
                    format!("`{}` is not a date like \"2026-12-25\"", h.get_ref()),
                )
            })?;
            if !holidays.insert(date) {
                return Err(self.bad(
                    h,
                    format!("{field}.holidays"),
                    format!("`{}` is listed twice", h.get_ref()),
                ));
            }
        }
        Ok(Schedule {
            id: id.to_owned(),
            time_zone,
            week,
            holidays,
        })
    }

    /// "09:00-17:00" (close may be "24:00") or "closed".
    fn hours(&self, v: &Spanned<String>, field: &str) -> Result<Option<(u16, u16)>, PolicyError> {
        let s = v.get_ref().trim();
        if s == "closed" {
            return Ok(None);
        }
        let bad = || {
            self.bad(
                v,
                field,
                format!("`{s}` is not opening hours like \"08:00-17:00\" or \"closed\""),
            )
        };
        let minutes = super::schedule::minutes_of_day;
        let (open, close) = s.split_once('-').ok_or_else(bad)?;
        let (open, close) = (
            minutes(open).ok_or_else(bad)?,
            minutes(close).ok_or_else(bad)?,
        );
        if open >= close {
            return Err(self.bad(
                v,
                field,
                format!("`{s}` closes before it opens (overnight hours: split them over two days)"),
            ));
        }
        Ok(Some((open, close)))
    }

    fn when(&self, w: &RawWhen, rule: &str, refs: &PolicyRefs<'_>) -> Result<Match, PolicyError> {
        let field = |name: &str| format!("{rule}.when.{name}");
        let nonempty =
            |list: &Spanned<Vec<Spanned<String>>>, name: &str| -> Result<(), PolicyError> {
                if list.get_ref().is_empty() {
                    Err(self.bad(list, field(name), "an empty list never matches"))
                } else {
                    Ok(())
                }
            };
        let list = |name: &str,
                    list: &Option<Spanned<Vec<Spanned<String>>>>,
                    parse: &dyn Fn(&str) -> Option<usize>,
                    what: &str|
         -> Result<Option<Vec<usize>>, PolicyError> {
            let Some(l) = list else { return Ok(None) };
            nonempty(l, name)?;
            l.get_ref()
                .iter()
                .map(|v| {
                    parse(v.get_ref()).ok_or_else(|| {
                        self.bad(v, field(name), format!("`{}` is not {what}", v.get_ref()))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let channels = list(
            "channel",
            &w.channel,
            &|s| Channel::parse(s).map(Channel::index),
            "one of: voice, chat, sms, email, portal",
        )?
        .map(|cs| {
            let mut set = ChannelSet::default();
            for c in cs {
                set.insert(Channel::ALL[c]);
            }
            set
        });
        let intents = list(
            "intent",
            &w.intent,
            &|s| refs.intent_ids.get(s).copied(),
            "an intent of the policy",
        )?;
        let urgencies = list(
            "urgency",
            &w.urgency,
            &|s| Urgency::parse(s).map(|u| u as usize),
            "one of: routine, urgent, emergency",
        )?
        .map(|v| {
            v.into_iter()
                .map(|u| [Urgency::Routine, Urgency::Urgent, Urgency::Emergency][u])
                .collect()
        });
        let identities = list(
            "identity",
            &w.identity,
            &|s| Identity::parse(s).map(|i| i as usize),
            "one of: not_attempted, verified, failed",
        )?
        .map(|v| {
            v.into_iter()
                .map(|i| [Identity::NotAttempted, Identity::Verified, Identity::Failed][i])
                .collect()
        });
        let transferred_from = list(
            "transferred_from",
            &w.transferred_from,
            &|s| refs.queue_ids.get(s).copied(),
            "a queue of the policy",
        )?;
        let mut attributes = Vec::new();
        for (k, v) in &w.attributes {
            let f = field(&format!("attributes.{}", k.get_ref()));
            let Some(allowed) = refs.attributes.get(k.get_ref()) else {
                return Err(self.bad(
                    k,
                    f,
                    format!("`{}` is not declared in [attributes]", k.get_ref()),
                ));
            };
            if !allowed.contains(v.get_ref()) {
                return Err(self.bad(
                    v,
                    f,
                    format!(
                        "`{}` is not one of the declared values: {}",
                        v.get_ref(),
                        allowed.join(", ")
                    ),
                ));
            }
            attributes.push((k.get_ref().clone(), v.get_ref().clone()));
        }
        let strings = |name: &str,
                       l: &Option<Spanned<Vec<String>>>,
                       shape: Shape|
         -> Result<Option<Vec<String>>, PolicyError> {
            match l {
                Some(l) if l.get_ref().is_empty() => {
                    Err(self.bad(l, field(name), "an empty list never matches"))
                }
                Some(l) => {
                    self.shaped_list(l, &field(name), shape)?;
                    Ok(Some(l.get_ref().clone()))
                }
                None => Ok(None),
            }
        };
        Ok(Match {
            channels,
            intents,
            urgencies,
            identities,
            escalation_requested: w.escalation_requested,
            attributes,
            signals: strings("signals", &w.signals, WORD)?,
            languages: strings("language", &w.language, LANGUAGE)?
                .map(|list| list.iter().map(|l| language_tag(l)).collect()),
            after_hours: w.after_hours,
            transferred_from,
            transferred: w.transferred,
        })
    }
}

/// The name tables rule conditions resolve against.
struct PolicyRefs<'a> {
    intent_ids: &'a FastMap<String, IntentIdx>,
    queue_ids: &'a FastMap<String, QueueIdx>,
    attributes: &'a FastMap<String, Vec<String>>,
}
