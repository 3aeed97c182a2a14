//! `careroute simulate` as a command: reads the inputs (a refusal names
//! file, line and field), runs the days or `--staff-for`'s search, prints
//! the tables and writes the files. The simulation itself is in the
//! modules beside this one; this one only moves their results to the
//! terminal and the disk.

use std::{io::Write as _, path::Path, process::ExitCode, sync::Arc};

use super::{Goal, Run, Staffing, read_demand, read_shifts, report, run, staff_for};
use crate::file::FileError;
use crate::policy::{self, Policy};

/// What `careroute simulate` was asked for.
pub struct Args<'a> {
    /// `--policy`; the embedded one without it.
    pub policy: Option<&'a Path>,
    /// `--roster`: the shift plan (for `--staff-for`, the agents' profiles).
    pub roster: Option<&'a Path>,
    /// `--demand`.
    pub demand: &'a Path,
    /// `--out`.
    pub out: &'a Path,
    /// `--progress`.
    pub progress: bool,
    /// `--staff-for`, with its goal.
    pub staff_for: Option<Goal>,
}

/// Runs the command; the exit code says whether it all went.
pub fn command(args: &Args) -> ExitCode {
    if args.roster.is_none() && args.staff_for.is_none() {
        eprintln!(
            "careroute simulate: --roster SHIFTS is required: who works when (examples/healthcare.shifts.toml shows the format)"
        );
        return ExitCode::FAILURE;
    }
    let started = std::time::Instant::now();
    let inputs = (|| {
        let policy = match args.policy {
            Some(path) => policy::read(path)?,
            None => Policy::embedded()?,
        };
        let shifts = args.roster.map(read_shifts).transpose()?;
        let demand = read_demand(args.demand, &policy)?;
        Ok::<_, FileError>((Arc::new(policy), shifts, demand))
    })();
    let (policy, shifts, demand) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let show = args.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let progress = |done: f64| {
        if show {
            eprint!("\rsimulating: {:>3.0}%", done * 100.0);
        }
    };
    let outcome = match args.staff_for {
        Some(goal) => {
            staff_for(policy, shifts.as_deref(), &demand, goal, progress).map(Done::Staffed)
        }
        None => run(
            policy,
            shifts.as_deref().unwrap_or_default(),
            &demand,
            progress,
        )
        .map(Done::Ran),
    };
    if show {
        eprintln!();
    }
    let done = match outcome {
        Ok(done) => done,
        Err(e) => {
            eprintln!("careroute simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed();
    let (day, staffing) = match &done {
        Done::Ran(run) => (run, None),
        Done::Staffed(s) => (&s.run, Some(s)),
    };
    if let Some(s) = staffing {
        say(&report::staffing_table(s));
        say("\nthe day with that staffing:\n");
    }
    say(&report::table(day));
    if let Err(e) = write(args.out, day, staffing) {
        eprintln!(
            "careroute simulate: cannot write to {}: {e}",
            args.out.display()
        );
        return ExitCode::FAILURE;
    }
    let who = match staffing {
        Some(s) => format!("{} queues staffed", s.queues.len()),
        None => format!("{} agents", shifts.as_deref().map_or(0, <[_]>::len)),
    };
    say(&format!(
        "{who}, {} contacts, {} day(s) simulated in {:.2} s; written to {}\n",
        day.contacts,
        demand.days,
        elapsed.as_secs_f64(),
        args.out.display()
    ));
    ExitCode::SUCCESS
}

/// What a run gave: a day, or a staffing and its day.
enum Done {
    Ran(Run),
    Staffed(Staffing),
}

/// `queues.csv`, `day.svg` and, for a staffing, `staffing.csv` in `out`.
fn write(out: &Path, day: &Run, staffing: Option<&Staffing>) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(out).map_err(io)?;
    std::fs::write(out.join("queues.csv"), report::csv(day)).map_err(io)?;
    if let Some(s) = staffing {
        std::fs::write(out.join("staffing.csv"), report::staffing_csv(s)).map_err(io)?;
    }
    report::chart(day, &out.join("day.svg"))
}

/// Writes a report to stdout; a closed pipe (`| head`) is not an error.
fn say(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
