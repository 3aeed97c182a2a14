//! The careroute binary: parse flags, set up tracing, build the engine and
//! serve until SIGTERM or Ctrl-C; or `careroute check FILE...` to validate
//! policy files before they go live; or `careroute test FILE...` to run
//! policy unit tests; or `careroute simulate` to rehearse a day; or
//! `careroute journal` to print the log for audit.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use careroute::{
    audit,
    clock::SystemClock,
    config::{Cli, Command, Config},
    policy, policy_test, server, simulate, telemetry,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { policies }) => check(&policies),
        Some(Command::Test { files, junit }) => test(&files, junit.as_deref()),
        Some(Command::Simulate {
            demand,
            out,
            progress,
            staff_for,
            goal,
            max_abandonment,
        }) => simulate(
            &cli.serve,
            &SimulateArgs {
                demand: &demand,
                out: &out,
                progress,
                staff_for: staff_for.then_some(simulate::Goal {
                    service_level: goal / 100.0,
                    max_abandonment: max_abandonment / 100.0,
                }),
            },
        ),
        Some(Command::Journal { from, to, outcomes }) => {
            journal(&cli.serve.data_dir, from, to.unwrap_or(u64::MAX), outcomes)
        }
        Some(Command::Serve) | None => serve(cli.serve),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in paths {
        match policy::read(path) {
            Ok(p) => println!(
                "{}: ok (version {}, {} queues, {} rules)",
                path.display(),
                p.version,
                p.visible_queues(),
                p.rules.len()
            ),
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn test(paths: &[PathBuf], junit: Option<&std::path::Path>) -> ExitCode {
    let mut ok = true;
    let mut results = Vec::new();
    // Files refused before any case ran: an errored test in the report.
    let mut errored = Vec::new();
    for path in paths {
        match policy_test::read(path) {
            Ok(suite) => {
                let result = policy_test::run(&suite);
                say(&policy_test::text(&result));
                ok &= result.passed();
                results.push(result);
            }
            Err(e) => {
                eprintln!("{e}");
                errored.push((path.display().to_string(), e.to_string()));
                ok = false;
            }
        }
    }
    if let Some(out) = junit {
        let written = policy_test::junit(&results, &errored)
            .map_err(|e| e.to_string())
            .and_then(|xml| std::fs::write(out, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("careroute test: cannot write {}: {e}", out.display());
            ok = false;
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `careroute simulate` was asked for.
struct SimulateArgs<'a> {
    demand: &'a Path,
    out: &'a Path,
    progress: bool,
    /// `--staff-for`, with its goal.
    staff_for: Option<simulate::Goal>,
}

fn simulate(config: &Config, args: &SimulateArgs) -> ExitCode {
    let shifts = match (&config.roster, args.staff_for) {
        (Some(path), _) => Some(path),
        (None, Some(_)) => None,
        (None, None) => {
            eprintln!(
                "careroute simulate: --roster SHIFTS is required: who works when (examples/healthcare.shifts.toml shows the format)"
            );
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let inputs = (|| {
        let policy = match &config.policy {
            Some(path) => policy::read(path)?,
            None => policy::Policy::embedded()?,
        };
        let shifts = shifts.map(|s| simulate::read_shifts(s)).transpose()?;
        let demand = simulate::read_demand(args.demand, &policy)?;
        Ok::<_, careroute::file::FileError>((std::sync::Arc::new(policy), shifts, demand))
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
        Some(goal) => simulate::staff_for(policy, shifts.as_deref(), &demand, goal, progress)
            .map(|s| (s.run.clone(), Some(s))),
        None => simulate::run(
            policy,
            shifts.as_deref().unwrap_or_default(),
            &demand,
            progress,
        )
        .map(|run| (run, None)),
    };
    if show {
        eprintln!();
    }
    let (run, staffing) = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("careroute simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let elapsed = started.elapsed();
    if let Some(staffing) = &staffing {
        say(&simulate::report::staffing_table(staffing));
        say("\nthe day with that staffing:\n");
    }
    say(&simulate::report::table(&run));
    let out = args.out;
    let written = std::fs::create_dir_all(out)
        .and_then(|()| std::fs::write(out.join("queues.csv"), simulate::report::csv(&run)))
        .and_then(|()| match &staffing {
            Some(s) => std::fs::write(out.join("staffing.csv"), simulate::report::staffing_csv(s)),
            None => Ok(()),
        })
        .map_err(|e| e.to_string())
        .and_then(|()| simulate::report::chart(&run, &out.join("day.svg")));
    if let Err(e) = written {
        eprintln!("careroute simulate: cannot write to {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let agents = match &staffing {
        Some(s) => format!("{} queues staffed", s.queues.len()),
        None => format!("{} agents", shifts.as_deref().map_or(0, <[_]>::len)),
    };
    say(&format!(
        "{agents}, {} contacts, {} day(s) simulated in {:.2} s; written to {}\n",
        run.contacts,
        demand.days,
        elapsed.as_secs_f64(),
        out.display()
    ));
    ExitCode::SUCCESS
}

fn journal(data_dir: &std::path::Path, from: u64, to: u64, outcomes: bool) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let exported = audit::export(data_dir, from, to, outcomes, &mut out).and_then(|e| {
        std::io::Write::flush(&mut out)
            .map(|()| e)
            .map_err(Into::into)
    });
    match exported {
        Ok(e) => {
            if let Some((first, last)) = e.span {
                eprintln!(
                    "careroute journal: {} records written; the log keeps records {first} to {last}",
                    e.records
                );
            } else {
                eprintln!("careroute journal: the log is empty");
            }
            for (seq, why) in &e.damaged {
                eprintln!("careroute journal: record {seq} cannot be read ({why}); skipped");
            }
            if e.damaged.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("careroute journal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    telemetry::init_tracing(config.log_format);
    // A panic is logged as an event like any other (JSON included); the
    // server then answers INTERNAL, stops and exits non-zero.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "panic");
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("careroute: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let clock = Arc::new(SystemClock);
        let engine = server::build_engine(&config, chrono::Utc::now())?;
        let listeners = server::Listeners::bind(&config).await?;
        server::run(&config, listeners, engine, clock, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("careroute: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a report to stdout; a closed pipe (`| head`) is not an error.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
