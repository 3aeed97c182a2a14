//! `careroute simulate`: the simulator agrees with Erlang C where the
//! formula is exact (one queue, one skill, Poisson arrivals, exponential
//! handle times, nobody hanging up), a run is reproducible from its seed,
//! the command writes its table, CSV and chart for the example day, and bad
//! input is refused with file, line and field.
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
