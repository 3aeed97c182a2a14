//! The simulator's reports: a table for the terminal (each queue's day,
//! simulated beside Erlang C), `queues.csv` (every queue and half-hour),
//! and `day.svg` (service level and waiting contacts over the day, per
//! queue), drawn with plotters; for `--staff-for`, the headcounts found
//! beside Erlang C's (a table and `staffing.csv`).

use std::{fmt::Write as _, path::Path};

use plotters::prelude::*;

use super::input::SLOTS;
use super::run::{QueueRun, Run};
use super::staff::Staffing;

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.1}%", x * 100.0))
}

fn secs(x: Option<f64>) -> String {
    match x {
        Some(x) if x.is_infinite() => "inf".into(),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    }
}

/// Erlang C over the whole run of a queue: its service level for each
/// half-hour weighted by the contacts offered in it; its speed of answer
/// likewise over the half-hours it can answer for; and how many half-hours
/// it cannot (the load at or above the agents: an ever-growing line).
fn erlang_overall(q: &QueueRun) -> (Option<f64>, Option<f64>, u32) {
    let (mut sl, mut weight) = (0.0, 0.0);
    let (mut asa, mut asa_weight, mut overloaded) = (0.0, 0.0, 0);
    for (i, s) in q.slots.iter().enumerate() {
        if s.offered == 0 {
            continue;
        }
        let p = q.erlang(i);
        let w = f64::from(s.offered);
        sl += p.service_level * w;
        weight += w;
        if p.asa_seconds.is_finite() {
            asa += p.asa_seconds * w;
            asa_weight += w;
        } else {
            overloaded += 1;
        }
    }
    let share = |x: f64, w: f64| (w > 0.0).then(|| x / w);
    (share(sl, weight), share(asa, asa_weight), overloaded)
}

/// The terminal table: one line per queue for the whole run. "erlC over"
/// counts the half-hours where Erlang C has the load at or above the
/// agents (it then predicts a line that grows without end; the simulated
/// engine answers with callbacks and relaxation steps instead).
/// Occupancy is the queue's handle time over its eligible agents' logged-in
/// time: above 100% where agents work contacts side by side (chats), or
/// where a relaxation step or an overflow has agents of other queues
/// answer; agents eligible for several queues count in each, which pulls
/// it down.
pub fn table(run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} contacts; {} answered by a script (emergency, authenticate); {} still waiting at the end",
        run.contacts, run.scripted, run.left_waiting
    );
    let _ = writeln!(
        out,
        "{:<22} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "queue",
        "offered",
        "answered",
        "SL",
        "SL erlC",
        "ASA s",
        "ASA erlC",
        "erlC over",
        "abandon",
        "callback",
        "occupancy",
        "agent h"
    );
    for q in &run.queues {
        let t = q.total();
        let (sl_c, asa_c, overloaded) = erlang_overall(q);
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9} {:>9.1}",
            q.id,
            t.offered,
            t.answered,
            pct(t.service_level()),
            pct(sl_c),
            secs(t.asa()),
            secs(asa_c),
            overloaded,
            pct(t.abandonment()),
            t.callback_total(),
            pct(t.occupancy()),
            t.agent_hours(),
        );
    }
    out
}

/// `queues.csv`: every queue and half-hour with any contact or agent.
pub fn csv(run: &Run) -> String {
    let mut out = String::from(
        "queue,day,start,offered,answered,answered_in_threshold,service_level,asa_seconds,abandoned,abandonment,callbacks,callback_reasons,occupancy,staffed,waiting,erlang_c_agents,erlang_c_service_level,erlang_c_asa_seconds\n",
    );
    for q in &run.queues {
        for (i, s) in q.slots.iter().enumerate() {
            if s.offered == 0 && s.staffed() == 0.0 {
                continue;
            }
            let local =
                (run.start + chrono::Duration::minutes(30 * i as i64)).with_timezone(&run.zone);
            let p = q.erlang(i);
            let reasons: Vec<String> = s
                .callbacks
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.2},{:.2},{},{:.4},{}",
                q.id,
                local.format("%Y-%m-%d"),
                local.format("%H:%M"),
                s.offered,
                s.answered,
                s.answered_in_time,
                s.service_level()
                    .map_or(String::new(), |x| format!("{x:.4}")),
                s.asa().map_or(String::new(), |x| format!("{x:.1}")),
                s.abandoned,
                s.abandonment().map_or(String::new(), |x| format!("{x:.4}")),
                s.callback_total(),
                reasons.join(" "),
                s.occupancy().map_or(String::new(), |x| format!("{x:.4}")),
                s.staffed(),
                s.waiting(),
                s.staffed().floor(),
                p.service_level,
                if p.asa_seconds.is_finite() {
                    format!("{:.1}", p.asa_seconds)
                } else {
                    "inf".into()
                },
            );
        }
    }
    out
}

/// `day.svg`: service level (top) and contacts waiting (bottom) for each
/// half-hour of the run, one line per queue.
pub fn chart(run: &Run, path: &Path) -> Result<(), String> {
    let slots = run.queues.first().map_or(0, |q| q.slots.len());
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (top, bottom) = root.split_vertically(400);
    let hours = slots as f64 / 2.0;
    let max_waiting = run
        .queues
        .iter()
        .flat_map(|q| q.slots.iter().map(|s| s.waiting()))
        .fold(1.0_f64, f64::max);
    let mut sl = ChartBuilder::on(&top)
        .caption("Service level by half-hour", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..hours, 0.0..100.0)
        .map_err(|e| e.to_string())?;
    sl.configure_mesh()
        .x_desc("hour of the run")
        .y_desc("% answered in threshold")
        .draw()
        .map_err(|e| e.to_string())?;
    let mut wait = ChartBuilder::on(&bottom)
        .caption("Contacts waiting", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..hours, 0.0..max_waiting * 1.1)
        .map_err(|e| e.to_string())?;
    wait.configure_mesh()
        .x_desc("hour of the run")
        .y_desc("waiting (average)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (n, q) in run.queues.iter().enumerate() {
        let color = Palette99::pick(n).to_rgba();
        let points: Vec<(f64, f64)> = q
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as f64 / 2.0 + 0.25, s.service_level()? * 100.0)))
            .collect();
        sl.draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(q.id.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        let waiting: Vec<(f64, f64)> = q
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64 / 2.0 + 0.25, s.waiting()))
            .collect();
        wait.draw_series(LineSeries::new(waiting, color.stroke_width(2)))
            .map_err(|e| e.to_string())?;
    }
    sl.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// The `--staff-for` table: per queue, the agent-hours and the peak found
/// beside Erlang C's, and the half-hours no headcount could meet; then the
/// headcount per half-hour of the day (the most any day needed), with
/// Erlang C's in brackets.
pub fn staffing_table(staffing: &Staffing) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fewest agents for {:.0}% answered within each queue's threshold and at most {:.0}% hanging up, found by simulation; Erlang C's beside",
        staffing.goal.service_level * 100.0,
        staffing.goal.max_abandonment * 100.0
    );
    let _ = writeln!(
        out,
        "{:<22} {:>9} {:>9} {:>6} {:>9} {:>7}  profile",
        "queue", "agent h", "erlC h", "peak", "erlC peak", "unmet"
    );
    for q in &staffing.queues {
        let (hours, erlang_hours) = q.agent_hours();
        let peak = q.slots.iter().map(|n| n.agents).max().unwrap_or(0);
        let erlang_peak = q.slots.iter().filter_map(|n| n.erlang_c).max().unwrap_or(0);
        let unmet = q.slots.iter().filter(|n| !n.met).count();
        let _ = writeln!(
            out,
            "{:<22} {:>9.1} {:>9.1} {:>6} {:>9} {:>7}  {}",
            q.id,
            hours,
            erlang_hours,
            peak,
            erlang_peak,
            unmet,
            q.profile.as_deref().unwrap_or("(the queue's own skills)")
        );
    }
    let _ = writeln!(out);
    let width = |id: &str| id.len().max(9);
    let _ = write!(out, "{:<6}", "local");
    for q in &staffing.queues {
        let _ = write!(out, " {:>w$}", q.id, w = width(&q.id));
    }
    let _ = writeln!(out);
    for i in 0..SLOTS {
        let needs: Vec<_> = staffing.queues.iter().map(|q| q.of_day(i)).collect();
        if needs.iter().all(|n| n.offered == 0 && n.agents == 0) {
            continue;
        }
        let _ = write!(out, "{:02}:{:02} ", i / 2, (i % 2) * 30);
        for (q, n) in staffing.queues.iter().zip(&needs) {
            let cell = match n.erlang_c {
                Some(e) => format!("{}{} ({e})", n.agents, if n.met { "" } else { "!" }),
                None => format!("{}{}", n.agents, if n.met { "" } else { "!" }),
            };
            let _ = write!(out, " {:>w$}", cell, w = width(&q.id));
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "(n) Erlang C; ! not met even with an agent per contact (closed, or a channel the queue does not take)"
    );
    out
}

/// `staffing.csv`: every queue and half-hour with any contact or agent:
/// what was offered, the headcount found, Erlang C's, and what the
/// headcount gave.
pub fn staffing_csv(staffing: &Staffing) -> String {
    let mut out = String::from(
        "queue,day,start,offered,agents,erlang_c_agents,service_level,abandonment,met\n",
    );
    let run = &staffing.run;
    for q in &staffing.queues {
        for (i, n) in q.slots.iter().enumerate() {
            if n.offered == 0 && n.agents == 0 {
                continue;
            }
            let local =
                (run.start + chrono::Duration::minutes(30 * i as i64)).with_timezone(&run.zone);
            let share = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.4}"));
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                q.id,
                local.format("%Y-%m-%d"),
                local.format("%H:%M"),
                n.offered,
                n.agents,
                n.erlang_c.map_or(String::new(), |e| e.to_string()),
                share(n.service_level),
                share(n.abandonment),
                n.met
            );
        }
    }
    out
}
