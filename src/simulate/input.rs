//! The simulator's inputs, checked like the policy (a refusal names the
//! file, the line and the field): the shifts (which agents work when,
//! copies of a roster's agents) and the demand (arrivals per intent,
//! channel and urgency by half-hour, handle times per queue, caller
//! patience, the share that asks for escalation).
//!
//! ```toml
//! # shifts
//! roster = "demo-roster.toml"     # the agents' profiles, beside this file
//! [[shifts]]
//! agent = "agent-billing-1"       # copied `count` times: agent-billing-1.1, ...
//!                                 # (numbered on across shifts of the same agent)
//! count = 6
//! start = "08:00"                 # local, in the demand's zone
//! end = "17:00"
//!
//! # demand
//! date = "2026-11-23"             # the (first) day simulated
//! zone = "America/New_York"       # or a schedule id of the policy
//! days = 1
//! seed = 7
//! patience = "4m"                 # voice and chat: mean, exponential; "none": nobody hangs up
//! [handle_time]
//! default = { mean = "5m" }       # exponential unless cv is given (lognormal)
//! billing = { mean = "6m", cv = 0.6 }
//! [[arrivals]]
//! intent = "billing"
//! channel = "voice"
//! escalation_share = 0.05
//! per_half_hour = { "08:00" = 20, "08:30" = 24 }
//! ```

use std::{collections::BTreeMap, path::Path, time::Duration};

use chrono::{NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use crate::engine::AgentSpec;
use crate::file::{self, FileError};
use crate::model::{Channel, Identity, Time, Urgency};
use crate::policy::Policy;
use crate::roster;

/// Half-hours in a day.
pub const SLOTS: usize = 48;

/// One agent's working hours, every simulated day.
#[derive(Debug, Clone)]
pub struct Shift {
    /// The agent (a copy of a roster agent, its own id).
    pub agent: AgentSpec,
    /// From, in minutes after local midnight.
    pub start: u32,
    /// To, in minutes after local midnight (up to 1440).
    pub end: u32,
}

/// A handle time distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandleTime {
    /// Its mean.
    pub mean: Duration,
    /// Its coefficient of variation: `None` is exponential, else lognormal.
    pub cv: Option<f64>,
}

/// Most agents a shift plan may hold (the engine's default `--max-agents`).
pub const MAX_SHIFT_AGENTS: usize = 100_000;
/// Most contacts a run may expect: about 1.4 GB and half a minute.
pub const MAX_EXPECTED_CONTACTS: f64 = 10_000_000.0;

/// One stream of arrivals.
#[derive(Debug, Clone)]
pub struct Arrivals {
    /// The contacts' intent.
    pub intent: String,
    /// Their channel.
    pub channel: Channel,
    /// Their urgency.
    pub urgency: Urgency,
    /// Their identity check.
    pub identity: Identity,
    /// The share that asks for a supervisor.
    pub escalation_share: f64,
    /// Mean patience while waiting (exponential); `None`: unlimited.
    pub patience: Option<Duration>,
    /// Expected arrivals in each half-hour of the day.
    pub per_slot: [f64; SLOTS],
}

/// The demand of a simulated day.
#[derive(Debug, Clone)]
pub struct Demand {
    /// Local midnight of the first day.
    pub start: Time,
    /// The zone the day is local to.
    pub zone: Tz,
    /// How many days.
    pub days: u32,
    /// The random seed: the same inputs and seed give the same run.
    pub seed: u64,
    /// Mean patience of a waiting caller or chatter (exponential), unless
    /// a stream gives its own; `None`: unlimited. Written channels (sms,
    /// email, portal) wait unless their stream says otherwise.
    pub patience: Option<Duration>,
    /// Handle time per queue id; `default` for the others.
    pub handle: BTreeMap<String, HandleTime>,
    /// The arrival streams.
    pub arrivals: Vec<Arrivals>,
}

impl Demand {
    /// The handle time of `queue`.
    pub fn handle_time(&self, queue: &str) -> HandleTime {
        self.handle
            .get(queue)
            .or_else(|| self.handle.get("default"))
            .copied()
            .unwrap_or(HandleTime {
                mean: Duration::from_secs(300),
                cv: None,
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShifts {
    roster: Spanned<String>,
    #[serde(default)]
    shifts: Vec<Spanned<RawShift>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShift {
    agent: Spanned<String>,
    count: Option<Spanned<u32>>,
    start: Spanned<String>,
    end: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemand {
    date: Spanned<String>,
    zone: Spanned<String>,
    days: Option<Spanned<u32>>,
    #[serde(default)]
    seed: u64,
    patience: Option<Spanned<String>>,
    #[serde(default)]
    handle_time: BTreeMap<String, Spanned<RawHandle>>,
    #[serde(default)]
    arrivals: Vec<Spanned<RawArrivals>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHandle {
    mean: Spanned<String>,
    cv: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArrivals {
    intent: Spanned<String>,
    channel: Option<Spanned<String>>,
    urgency: Option<Spanned<String>>,
    identity: Option<Spanned<String>>,
    escalation_share: Option<Spanned<f64>>,
    patience: Option<Spanned<String>>,
    per_half_hour: Spanned<BTreeMap<String, f64>>,
}

/// Minutes after midnight of `HH:MM` (`24:00` allowed for an end).
fn minutes(s: &str) -> Option<u32> {
    crate::policy::schedule::minutes_of_day(s).map(u32::from)
}

/// Reads and checks a shifts file; its roster is taken from beside it.
pub fn read_shifts(path: &Path) -> Result<Vec<Shift>, FileError> {
    let (file, text) = file::read_text(path)?;
    let raw: RawShifts = toml::from_str(&text).map_err(|e| file::toml_error(&file, &text, &e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let roster = roster::read(&dir.join(raw.roster.get_ref()))?;
    let invalid = |at: usize, field: &str, why: String| file::invalid(&file, &text, at, field, why);
    if raw.shifts.is_empty() {
        return Err(invalid(
            0,
            "shifts",
            "no [[shifts]]: nobody would work".into(),
        ));
    }
    let mut shifts = Vec::new();
    let mut copies_made: BTreeMap<String, u32> = BTreeMap::new();
    for spanned in &raw.shifts {
        let s = spanned.get_ref();
        let count = s.count.as_ref().map_or(1, |c| *c.get_ref());
        // Each copy is an agent held in memory: a few zeros too many must
        // be refused, not take the machine's memory.
        if shifts.len() + count as usize > MAX_SHIFT_AGENTS {
            return Err(invalid(
                s.count.as_ref().map_or(spanned.span(), Spanned::span).start,
                "shifts.count",
                format!("more than {MAX_SHIFT_AGENTS} agents in the file's shifts"),
            ));
        }
        let template = roster
            .iter()
            .find(|(a, _)| a.id == *s.agent.get_ref())
            .ok_or_else(|| {
                invalid(
                    s.agent.span().start,
                    "shifts.agent",
                    format!("`{}` is not an agent of the roster", s.agent.get_ref()),
                )
            })?;
        let time = |t: &Spanned<String>, field: &str| {
            minutes(t.get_ref()).ok_or_else(|| {
                invalid(
                    t.span().start,
                    field,
                    format!("`{}` is not HH:MM", t.get_ref()),
                )
            })
        };
        let (start, end) = (time(&s.start, "shifts.start")?, time(&s.end, "shifts.end")?);
        if end <= start || start >= 1440 {
            return Err(invalid(
                s.end.span().start,
                "shifts.end",
                "must come after start, on the same day (up to 24:00)".into(),
            ));
        }
        // Copies are numbered across the file: two shifts of one roster
        // agent are different people.
        let copies = copies_made.entry(template.0.id.clone()).or_insert(0u32);
        for _ in 0..count {
            *copies += 1;
            let agent = copy_of(&template.0, *copies);
            shifts.push(Shift { agent, start, end });
        }
    }
    Ok(shifts)
}

/// Copy number `k` of `agent`: its own id (`<id>.<k>`) and address.
pub fn copy_of(agent: &AgentSpec, k: u32) -> AgentSpec {
    let mut copy = agent.clone();
    copy.id = format!("{}.{k}", agent.id);
    copy.transfer_address = format!("{};copy={k}", agent.transfer_address);
    copy
}

/// Reads and checks a demand file against `policy` (its intents, queues
/// and schedules).
pub fn read_demand(path: &Path, policy: &Policy) -> Result<Demand, FileError> {
    let (file, text) = file::read_text(path)?;
    parse_demand(&file, &text, policy)
}

/// Checks demand text; `file` names it in messages.
pub fn parse_demand(file: &str, text: &str, policy: &Policy) -> Result<Demand, FileError> {
    let raw: RawDemand = toml::from_str(text).map_err(|e| file::toml_error(file, text, &e))?;
    let invalid = |at: usize, field: &str, why: String| file::invalid(file, text, at, field, why);
    let zone = policy.time_zone(raw.zone.get_ref()).ok_or_else(|| {
        invalid(
            raw.zone.span().start,
            "zone",
            format!(
                "`{}` is neither an IANA time zone nor a schedule of the policy",
                raw.zone.get_ref()
            ),
        )
    })?;
    let date = NaiveDate::parse_from_str(raw.date.get_ref(), "%Y-%m-%d").map_err(|_| {
        invalid(
            raw.date.span().start,
            "date",
            format!("`{}` is not YYYY-MM-DD", raw.date.get_ref()),
        )
    })?;
    let start = zone
        .from_local_datetime(&date.and_time(NaiveTime::MIN))
        .earliest()
        .ok_or_else(|| {
            invalid(
                raw.date.span().start,
                "date",
                "its midnight does not exist in the zone".into(),
            )
        })?
        .with_timezone(&chrono::Utc);
    let days = match &raw.days {
        Some(d) if !(1..=366).contains(d.get_ref()) => {
            return Err(invalid(d.span().start, "days", "1 to 366".into()));
        }
        Some(d) => *d.get_ref(),
        None => 1,
    };
    let duration = |s: &Spanned<String>, field: &str| {
        humantime::parse_duration(s.get_ref())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    s.span().start,
                    field,
                    format!("`{}` is not a duration above zero", s.get_ref()),
                )
            })
    };
    let patience = match &raw.patience {
        Some(p) if p.get_ref() == "none" => None,
        Some(p) => Some(duration(p, "patience")?),
        None => None,
    };
    let mut handle = BTreeMap::new();
    for (queue, h) in &raw.handle_time {
        let internal = |i: usize| policy.queues[i].parent.is_some();
        if queue != "default" && policy.queue_idx(queue).is_none_or(internal) {
            return Err(invalid(
                h.span().start,
                "handle_time",
                format!("unknown queue `{queue}`"),
            ));
        }
        let h = h.get_ref();
        let cv = match &h.cv {
            Some(cv) if !(*cv.get_ref() > 0.0 && *cv.get_ref() <= 5.0) => {
                return Err(invalid(
                    cv.span().start,
                    &format!("handle_time.{queue}.cv"),
                    "between 0 and 5".into(),
                ));
            }
            cv => cv.as_ref().map(|c| *c.get_ref()),
        };
        handle.insert(
            queue.clone(),
            HandleTime {
                mean: duration(&h.mean, &format!("handle_time.{queue}.mean"))?,
                cv,
            },
        );
    }
    let mut arrivals = Vec::new();
    for a in &raw.arrivals {
        let a = a.get_ref();
        if policy.intent_idx(a.intent.get_ref()).is_none() {
            return Err(invalid(
                a.intent.span().start,
                "arrivals.intent",
                format!("`{}` is not an intent of the policy", a.intent.get_ref()),
            ));
        }
        let channel = match &a.channel {
            Some(c) => file::one_of(
                file,
                text,
                c,
                "arrivals.channel",
                &Channel::ALL,
                Channel::as_str,
            )?,
            None => Channel::Voice,
        };
        let urgency = match &a.urgency {
            Some(u) => file::one_of(
                file,
                text,
                u,
                "arrivals.urgency",
                &Urgency::ALL,
                Urgency::as_str,
            )?,
            None => Urgency::Routine,
        };
        let identity = match &a.identity {
            Some(i) => file::one_of(
                file,
                text,
                i,
                "arrivals.identity",
                &Identity::ALL,
                Identity::as_str,
            )?,
            None => Identity::Verified,
        };
        let escalation_share = match &a.escalation_share {
            Some(e) if !(0.0..=1.0).contains(e.get_ref()) => {
                return Err(invalid(
                    e.span().start,
                    "arrivals.escalation_share",
                    "between 0 and 1".into(),
                ));
            }
            Some(e) => *e.get_ref(),
            None => 0.0,
        };
        let mut per_slot = [0.0; SLOTS];
        for (at, expected) in a.per_half_hour.get_ref() {
            let slot = minutes(at)
                .filter(|m| m % 30 == 0 && *m < 1440)
                .map(|m| (m / 30) as usize)
                .ok_or_else(|| {
                    invalid(
                        a.per_half_hour.span().start,
                        "arrivals.per_half_hour",
                        format!("`{at}` is not the start of a half-hour (HH:00 or HH:30)"),
                    )
                })?;
            if !(*expected >= 0.0 && expected.is_finite()) {
                return Err(invalid(
                    a.per_half_hour.span().start,
                    "arrivals.per_half_hour",
                    format!("`{at}`: expected arrivals must be zero or more"),
                ));
            }
            per_slot[slot] = *expected;
        }
        // Callers and chatters give up; written messages wait for their
        // answer, unless the stream says otherwise.
        let stream_patience = match &a.patience {
            Some(p) if p.get_ref() == "none" => None,
            Some(p) => Some(duration(p, "arrivals.patience")?),
            None if matches!(channel, Channel::Voice | Channel::Chat) => patience,
            None => None,
        };
        arrivals.push(Arrivals {
            intent: a.intent.get_ref().clone(),
            channel,
            urgency,
            identity,
            escalation_share,
            patience: stream_patience,
            per_slot,
        });
    }
    if arrivals.is_empty() {
        return Err(invalid(
            0,
            "arrivals",
            "no [[arrivals]]: nobody would call".into(),
        ));
    }
    // Every contact of the run is held in memory: a few zeros too many
    // must be refused, not take the machine's memory.
    let mut expected = 0.0;
    for (a, raw_a) in arrivals.iter().zip(&raw.arrivals) {
        expected += a.per_slot.iter().sum::<f64>() * f64::from(days);
        if expected > MAX_EXPECTED_CONTACTS {
            return Err(invalid(
                raw_a.get_ref().per_half_hour.span().start,
                "arrivals.per_half_hour",
                format!(
                    "more than {MAX_EXPECTED_CONTACTS} contacts expected in the run (every stream, every day)"
                ),
            ));
        }
    }
    Ok(Demand {
        start,
        zone,
        days,
        seed: raw.seed,
        patience,
        handle,
        arrivals,
    })
}
