//! `careroute simulate`: the simulator agrees with Erlang C where the
//! formula is exact (one queue, one skill, Poisson arrivals, exponential
//! handle times, nobody hanging up), a run is reproducible from its seed,
//! the command writes its table, CSV and chart for the example day, bad
//! input is refused with file, line and field, and `--staff-for` finds the
//! fewest agents that meet the goal (exactly, where that can be counted;
//! near Erlang C where the formula holds).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, process::Command, sync::Arc};

use careroute::simulate::{self, erlang};

/// One queue open around the clock, no wrap-up, room for everyone to wait.
const POLICY: &str = r#"version = "erlang"
default_queue = "q"
main_schedule = "always"
intake_fields = ["callback_number"]

[emergency]
script_id = "E"
instruction = "Emergency."
level = 3
team = "T"

[authenticate]
script_id = "A"
instruction = "Verify."
failed_script_id = "AF"
failed_instruction = "Not verified."

[intents.x]
callback_window = "4h"
priority = 4

[schedules.always]
time_zone = "UTC"
hours = { mon = "00:00-24:00", tue = "00:00-24:00", wed = "00:00-24:00", thu = "00:00-24:00", fri = "00:00-24:00", sat = "00:00-24:00", sun = "00:00-24:00" }

[[queues]]
id = "q"
level = 1
team = "T"
skills = { s = 1 }
channels = ["voice"]
schedule = "always"
transfer_address = "sip:q@pbx"
wrap_up = "0s"
max_waiting = 10000
max_wait = "24h"
max_wait_in_line = "24h"
service_level = "20s"
handle_time = "5m"

[[rules]]
id = "x"
when = { intent = ["x"] }
route_to = "q"
"#;

const ROSTER: &str = r#"[[agents]]
id = "a"
team = "T"
transfer_address = "sip:a@pbx"
skills = { s = 1 }
channels = { voice = 1 }
"#;

/// Writes the files of a one-queue day: `agents` agents around the clock,
/// `per_half_hour` arrivals, exponential 5-minute handle times.
fn one_queue(dir: &Path, agents: u32, per_half_hour: f64, days: u32, patience: &str) {
    std::fs::write(dir.join("policy.toml"), POLICY).unwrap();
    std::fs::write(dir.join("roster.toml"), ROSTER).unwrap();
    std::fs::write(
        dir.join("shifts.toml"),
        format!(
            "roster = \"roster.toml\"\n[[shifts]]\nagent = \"a\"\ncount = {agents}\nstart = \"00:00\"\nend = \"24:00\"\n"
        ),
    )
    .unwrap();
    let slots: Vec<String> = (0..48)
        .map(|i| format!("\"{:02}:{:02}\" = {per_half_hour}", i / 2, (i % 2) * 30))
        .collect();
    std::fs::write(
        dir.join("demand.toml"),
        format!(
            "date = \"2026-11-23\"\nzone = \"UTC\"\ndays = {days}\nseed = 11\npatience = \"{patience}\"\n[handle_time]\nq = {{ mean = \"5m\" }}\n[[arrivals]]\nintent = \"x\"\nper_half_hour = {{ {} }}\n",
            slots.join(", ")
        ),
    )
    .unwrap();
}

fn run(dir: &Path) -> simulate::Run {
    let policy = careroute::policy::read(&dir.join("policy.toml")).unwrap();
    let shifts = simulate::read_shifts(&dir.join("shifts.toml")).unwrap();
    let demand = simulate::read_demand(&dir.join("demand.toml"), &policy).unwrap();
    simulate::run(Arc::new(policy), &shifts, &demand, |_| {}).unwrap()
}

#[test]
fn the_simulated_speed_of_answer_agrees_with_erlang_c_where_it_is_exact() {
    // 10 agents, 8 Erlangs (48 arrivals a half-hour, 5 minutes each), for
    // a year: about 840,000 contacts. At this load waits are long-memoried:
    // one 30-day run's average speed of answer lands anywhere within
    // about 10% of the formula (eight seeds gave 58.9 s to 71.3 s against
    // 61.4 s), so only a long run can be held to 5%.
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 10, 48.0, 365, "none");
    let run = run(&dir);
    let q = &run.queues[0];
    let total = q.total();
    assert!(total.offered > 800_000, "{}", total.offered);
    // Nobody hangs up or is called back: all are answered but the few
    // still in line when the last day ends.
    assert_eq!(
        total.callback_total() + total.abandoned,
        0,
        "{:?}",
        total.callbacks
    );
    assert_eq!(
        u64::from(total.answered) + run.left_waiting,
        u64::from(total.offered)
    );
    assert!(run.left_waiting < 50, "{}", run.left_waiting);
    let predicted = erlang::predict(10, 48.0 / 1800.0, 300.0, 20.0);
    let simulated = total.asa().unwrap();
    let off = simulated / predicted.asa_seconds - 1.0;
    eprintln!(
        "{} contacts: simulated ASA {simulated:.1} s, Erlang C {:.1} s ({:+.1}%)",
        total.offered,
        predicted.asa_seconds,
        off * 100.0
    );
    assert!(
        off.abs() < 0.05,
        "simulated ASA {simulated:.1} s, Erlang C {:.1} s ({:+.1}%)",
        predicted.asa_seconds,
        off * 100.0
    );
    let sl = total.service_level().unwrap();
    assert!(
        (sl - predicted.service_level).abs() < 0.02,
        "simulated SL {sl:.3}, Erlang C {:.3}",
        predicted.service_level
    );
    // Ten agents always on: about 10 staffed in every half-hour.
    assert!((q.slots[100].staffed() - 10.0).abs() < 0.01);
}

#[test]
fn a_run_is_reproducible_from_its_seed_and_impatient_callers_hang_up() {
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 6, 48.0, 1, "2m");
    let (a, b) = (run(&dir), run(&dir));
    let (ta, tb) = (a.queues[0].total(), b.queues[0].total());
    assert_eq!(
        (
            ta.offered,
            ta.answered,
            ta.abandoned,
            ta.wait_seconds.to_bits()
        ),
        (
            tb.offered,
            tb.answered,
            tb.abandoned,
            tb.wait_seconds.to_bits()
        )
    );
    // 8 Erlangs on 6 agents: the line grows until callers give up.
    assert!(ta.abandoned > 100, "{ta:?}");
    assert_eq!(
        u64::from(ta.answered + ta.abandoned) + a.left_waiting,
        u64::from(ta.offered)
    );
}

#[test]
fn the_example_day_writes_its_table_csv_and_chart() {
    let out = common::process::fresh_data_dir();
    let status = Command::new(env!("CARGO_BIN_EXE_careroute"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "simulate",
            "--roster",
            "examples/healthcare.shifts.toml",
            "--demand",
            "examples/healthcare.demand.toml",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(stdout.contains("scheduling"), "{stdout}");
    // Every line of the table has a value under each heading.
    let table: Vec<&str> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.contains("simulated in"))
        .collect();
    // Five headings are two words: "SL erlC", "ASA s", "ASA erlC", "erlC over", "agent h".
    let headings = table[0].split_whitespace().count() - 5;
    for row in &table[1..] {
        assert_eq!(
            row.split_whitespace().count(),
            headings,
            "{row}\n{}",
            table[0]
        );
    }
    assert!(stdout.contains("agents,"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("queues.csv")).unwrap();
    assert!(csv.starts_with("queue,day,start,offered,answered"), "{csv}");
    assert!(
        csv.lines()
            .any(|l| l.starts_with("scheduling,2026-11-23,10:00,")),
        "{csv}"
    );
    let svg = std::fs::read_to_string(out.join("day.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Service level by half-hour"));
}

#[test]
fn bad_demand_and_shifts_are_refused_with_file_line_and_field() {
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 2, 10.0, 1, "none");
    let policy = careroute::policy::read(&dir.join("policy.toml")).unwrap();
    let demand = |text: &str| {
        simulate::input::parse_demand("demand.toml", text, &policy)
            .unwrap_err()
            .to_string()
    };
    let head = "date = \"2026-11-23\"\nzone = \"UTC\"\n";
    for (text, expected) in [
        (
            format!("{head}[[arrivals]]\nintent = \"nope\"\nper_half_hour = {{ \"08:00\" = 1 }}\n"),
            "demand.toml:4: arrivals.intent: `nope` is not an intent of the policy",
        ),
        (
            format!("{head}[[arrivals]]\nintent = \"x\"\nper_half_hour = {{ \"08:15\" = 1 }}\n"),
            "demand.toml:5: arrivals.per_half_hour: `08:15` is not the start of a half-hour",
        ),
        (
            format!(
                "{head}[handle_time]\nnope = {{ mean = \"5m\" }}\n[[arrivals]]\nintent = \"x\"\nper_half_hour = {{}}\n"
            ),
            "demand.toml:4: handle_time: unknown queue `nope`",
        ),
        (
            "date = \"23/11/2026\"\nzone = \"UTC\"\n".to_owned(),
            "demand.toml:1: date: `23/11/2026` is not YYYY-MM-DD",
        ),
        (
            "date = \"2026-11-23\"\nzone = \"Mars/Olympus\"\n".to_owned(),
            "demand.toml:2: zone: `Mars/Olympus` is neither an IANA time zone nor a schedule",
        ),
        (
            format!("{head}patience = \"soon\"\n"),
            "demand.toml:3: patience: `soon` is not a duration",
        ),
        (format!("{head}days = 0\n"), "demand.toml:3: days: 1 to 366"),
        (
            format!("{head}[handle_time]\nq = {{ mean = \"5m\",\n  cv = 9.0 }}\n"),
            "demand.toml:5: handle_time.q.cv: between 0 and 5",
        ),
        (
            format!(
                "{head}[[arrivals]]\nintent = \"x\"\nescalation_share = 1.5\nper_half_hour = {{}}\n"
            ),
            "demand.toml:5: arrivals.escalation_share: between 0 and 1",
        ),
        // A few zeros too many are refused, not run out of memory.
        (
            format!(
                "{head}days = 2\n[[arrivals]]\nintent = \"x\"\nper_half_hour = {{ \"08:00\" = 1e6 }}\n[[arrivals]]\nintent = \"x\"\nper_half_hour = {{ \"09:00\" = 4.5e6 }}\n"
            ),
            "demand.toml:9: arrivals.per_half_hour: more than 10000000 contacts expected in the run",
        ),
    ] {
        let e = demand(&text);
        assert!(e.starts_with(expected), "{e}\nexpected: {expected}");
    }
    let shifts = dir.join("bad-shifts.toml");
    std::fs::write(
        &shifts,
        "roster = \"roster.toml\"\n[[shifts]]\nagent = \"a\"\nstart = \"17:00\"\nend = \"09:00\"\n",
    )
    .unwrap();
    let e = simulate::read_shifts(&shifts).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "{}:5: shifts.end: must come after start",
            shifts.display()
        )),
        "{e}"
    );
    std::fs::write(
        &shifts,
        "roster = \"roster.toml\"\n[[shifts]]\nagent = \"b\"\nstart = \"09:00\"\nend = \"17:00\"\n",
    )
    .unwrap();
    let e = simulate::read_shifts(&shifts).unwrap_err().to_string();
    assert!(
        e.contains(":3: shifts.agent: `b` is not an agent of the roster"),
        "{e}"
    );
    std::fs::write(
        &shifts,
        "roster = \"roster.toml\"\n[[shifts]]\nagent = \"a\"\ncount = 60000\nstart = \"09:00\"\nend = \"17:00\"\n\n[[shifts]]\nagent = \"a\"\ncount = 40001\nstart = \"09:00\"\nend = \"17:00\"\n",
    )
    .unwrap();
    let e = simulate::read_shifts(&shifts).unwrap_err().to_string();
    assert!(
        e.contains(":10: shifts.count: more than 100000 agents in the file's shifts"),
        "{e}"
    );
}

#[test]
fn shifts_of_one_agent_are_different_people_who_stop_taking_work_when_they_end() {
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 1, 20.0, 1, "2m");
    std::fs::write(
        dir.join("shifts.toml"),
        "roster = \"roster.toml\"\n\
         [[shifts]]\nagent = \"a\"\ncount = 3\nstart = \"08:00\"\nend = \"10:00\"\n\
         [[shifts]]\nagent = \"a\"\ncount = 2\nstart = \"10:00\"\nend = \"12:00\"\n",
    )
    .unwrap();
    let shifts = simulate::read_shifts(&dir.join("shifts.toml")).unwrap();
    let ids: std::collections::HashSet<_> = shifts.iter().map(|s| s.agent.id.clone()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    let run = run(&dir);
    let q = &run.queues[0];
    let slot = |hh: usize, mm: usize| &q.slots[hh * 2 + mm / 30];
    assert!(
        (slot(9, 0).staffed() - 3.0).abs() < 0.01,
        "{}",
        slot(9, 0).staffed()
    );
    assert!(
        (slot(11, 0).staffed() - 2.0).abs() < 0.01,
        "{}",
        slot(11, 0).staffed()
    );
    // After the last shift: nobody logged in, nobody answered; contacts
    // get callbacks.
    for hh in 13..24 {
        assert_eq!(slot(hh, 0).staffed(), 0.0, "{hh}:00");
        assert_eq!(slot(hh, 0).answered + slot(hh, 30).answered, 0, "{hh}:00");
    }
    assert!(slot(15, 0).callback_total() > 0);
    // Another seed, another day.
    let text = std::fs::read_to_string(dir.join("demand.toml"))
        .unwrap()
        .replace("seed = 11", "seed = 12");
    std::fs::write(dir.join("demand.toml"), text).unwrap();
    let other = self::run(&dir);
    assert_ne!(other.queues[0].total().offered, q.total().offered);
}

fn staff_for(dir: &Path, goal: simulate::Goal) -> simulate::Staffing {
    let policy = careroute::policy::read(&dir.join("policy.toml")).unwrap();
    let demand = simulate::read_demand(&dir.join("demand.toml"), &policy).unwrap();
    simulate::staff_for(Arc::new(policy), None, &demand, goal, |_| {}).unwrap()
}

#[test]
fn staff_for_finds_exactly_the_fewest_agents_where_they_can_be_counted() {
    // Nobody may wait (an immediate callback when no agent is free) and
    // every contact holds its agent for about a day: to answer 80% at once
    // takes exactly an agent for each of 80% of the contacts, rounded up;
    // in the next half-hour, as many again on top of those still busy.
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 1, 0.0, 1, "none");
    let policy = POLICY.replace("max_waiting = 10000", "max_waiting = 0");
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    std::fs::write(
        dir.join("demand.toml"),
        "date = \"2026-11-23\"\nzone = \"UTC\"\nseed = 5\npatience = \"none\"\n[handle_time]\nq = { mean = \"24h\", cv = 0.1 }\n[[arrivals]]\nintent = \"x\"\nper_half_hour = { \"00:00\" = 20, \"00:30\" = 12 }\n",
    )
    .unwrap();
    let found = staff_for(&dir, simulate::Goal::default());
    let q = &found.queues[0];
    let (first, second) = (&q.slots[0], &q.slots[1]);
    assert!(
        first.offered > 5 && second.offered > 5,
        "{first:?} {second:?}"
    );
    let need = |n: u32| (f64::from(n) * 0.8).ceil() as u32;
    assert_eq!(first.agents, need(first.offered), "{first:?}");
    assert_eq!(
        second.agents,
        first.agents + need(second.offered),
        "{second:?}"
    );
    assert!(first.met && second.met);
    assert!(first.service_level.unwrap() >= 0.8);
    // No demand after: nobody is staffed (those still busy finish their
    // contact off shift).
    assert!(q.slots[2..].iter().all(|n| n.offered == 0 && n.agents == 0));
    assert_eq!(
        found.run.queues[0].total().answered,
        need(first.offered) + need(second.offered)
    );
    // The same day with a plain shift plan: the headcount found meets the
    // goal in the first half-hour, one agent fewer does not.
    let answered_at_once = |agents: u32| {
        std::fs::write(
            dir.join("shifts.toml"),
            format!(
                "roster = \"roster.toml\"\n[[shifts]]\nagent = \"a\"\ncount = {agents}\nstart = \"00:00\"\nend = \"00:30\"\n"
            ),
        )
        .unwrap();
        let slot = run(&dir).queues[0].slots[0].clone();
        f64::from(slot.answered_in_time) / f64::from(slot.offered)
    };
    assert!(answered_at_once(first.agents) >= 0.8);
    assert!(answered_at_once(first.agents - 1) < 0.8);
}

#[test]
fn staff_for_meets_the_goal_every_half_hour_near_erlang_c_where_it_holds() {
    // 8 Erlangs around the clock, exponential handle times, nobody hangs
    // up: Erlang C holds, so the simulated headcount stays near its answer.
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 1, 48.0, 1, "none");
    let goal = simulate::Goal {
        service_level: 0.8,
        max_abandonment: 0.05,
    };
    let found = staff_for(&dir, goal);
    let q = &found.queues[0];
    assert_eq!(q.slots.len(), 48);
    for (i, n) in q.slots.iter().enumerate() {
        assert!(n.met, "half-hour {i}: {n:?}");
        assert!(n.service_level.unwrap() >= 0.8, "half-hour {i}: {n:?}");
        assert!(n.erlang_c.is_some(), "half-hour {i}: {n:?}");
    }
    let (hours, erlang_hours) = q.agent_hours();
    let off = hours / erlang_hours - 1.0;
    eprintln!(
        "simulated {hours} agent-hours, Erlang C {erlang_hours} ({:+.1}%)",
        off * 100.0
    );
    assert!(
        off.abs() < 0.12,
        "simulated {hours} agent-hours, Erlang C {erlang_hours} ({:+.1}%)",
        off * 100.0
    );
    // The same inputs find the same plan.
    let again = staff_for(&dir, goal);
    assert_eq!(again.queues[0].slots, q.slots);
    assert_eq!(q.profile, None, "no roster: the queue's own skills");
    // A stricter goal never needs fewer agents.
    let strict = staff_for(
        &dir,
        simulate::Goal {
            service_level: 0.95,
            max_abandonment: 0.05,
        },
    );
    let (strict_hours, _) = strict.queues[0].agent_hours();
    assert!(strict_hours > hours, "{strict_hours} vs {hours}");
}

#[test]
fn the_staff_for_command_writes_its_table_and_csv_and_refuses_a_bad_goal() {
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 1, 12.0, 1, "3m");
    let out = dir.join("out");
    let careroute = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_careroute"));
        c.arg("simulate")
            .arg("--policy")
            .arg(dir.join("policy.toml"))
            .arg("--demand")
            .arg(dir.join("demand.toml"))
            .arg("--out")
            .arg(&out)
            .arg("--staff-for");
        c
    };
    let done = careroute().args(["--goal", "90"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        stdout.contains("fewest agents for 90% answered"),
        "{stdout}"
    );
    assert!(stdout.contains("(the queue's own skills)"), "{stdout}");
    let csv = std::fs::read_to_string(out.join("staffing.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("queue,day,start,offered,agents,erlang_c_agents,service_level,abandonment,met")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 48, "{csv}");
    for row in &rows {
        assert_eq!(row[0], "q");
        assert_eq!(row[8], "true", "{row:?}");
        let sl: f64 = row[6].parse().unwrap();
        assert!(sl >= 0.9, "{row:?}");
    }
    assert!(out.join("queues.csv").exists() && out.join("day.svg").exists());

    let refused = careroute().args(["--goal", "120"]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--goal") && stderr.contains("0 to 100"),
        "{stderr}"
    );
}

#[test]
fn staff_for_copies_the_roster_agent_closest_to_the_queue_and_plans_every_day() {
    // Two days; with a roster, the queue's agents copy its agent.
    let dir = common::process::fresh_data_dir();
    one_queue(&dir, 1, 24.0, 2, "none");
    let policy = Arc::new(careroute::policy::read(&dir.join("policy.toml")).unwrap());
    let demand = simulate::read_demand(&dir.join("demand.toml"), &policy).unwrap();
    let roster = simulate::read_shifts(&dir.join("shifts.toml")).unwrap();
    let found = simulate::staff_for(
        Arc::clone(&policy),
        Some(&roster),
        &demand,
        simulate::Goal::default(),
        |_| {},
    )
    .unwrap();
    let q = &found.queues[0];
    assert_eq!(q.profile.as_deref(), Some("a"));
    assert_eq!(q.slots.len(), 96);
    // A half-hour of the day needs what the busier of its two days needed.
    for i in 0..48 {
        let most = q.slots[i].agents.max(q.slots[48 + i].agents);
        assert_eq!(q.of_day(i).agents, most, "half-hour {i}");
    }
    // More days than the search copies its state for: refused, saying so.
    std::fs::write(
        dir.join("demand.toml"),
        std::fs::read_to_string(dir.join("demand.toml"))
            .unwrap()
            .replace("days = 2", "days = 15"),
    )
    .unwrap();
    let demand = simulate::read_demand(&dir.join("demand.toml"), &policy).unwrap();
    let e = simulate::staff_for(policy, None, &demand, simulate::Goal::default(), |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 14 days") && e.contains("15"), "{e}");
}
