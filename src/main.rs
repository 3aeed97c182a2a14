//! The careroute binary: parse flags, set up tracing, build the engine and
//! serve until SIGTERM or Ctrl-C; or `careroute check FILE...` to validate
//! policy files before they go live; or `careroute test FILE...` to run
//! policy unit tests; or `careroute simulate` to rehearse a day; or
//! `careroute journal` to print the log for audit.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use careroute::{
    audit,
    clock::SystemClock,
    config::{Cli, Command, Config},
    policy, policy_test, server, simulate, telemetry,
};
use clap::Parser;

/// mimalloc: a replay and a busy engine allocate and free small objects at
/// a rate glibc's allocator spends a fifth of the time on (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        }) => simulate::command(&simulate::Args {
            policy: cli.serve.policy.as_deref(),
            roster: cli.serve.roster.as_deref(),
            demand: &demand,
            out: &out,
            progress,
            staff_for: staff_for.then_some(simulate::Goal {
                service_level: goal / 100.0,
                max_abandonment: max_abandonment / 100.0,
            }),
        }),
        Some(Command::Journal { from, to, outcomes }) => {
            journal(&cli.serve, from, to.unwrap_or(u64::MAX), outcomes)
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

fn journal(config: &Config, from: Option<u64>, to: u64, outcomes: bool) -> ExitCode {
    if let Some(from) = from
        && from > to
    {
        eprintln!(
            "careroute journal: --from {from} comes after --to {to}: no record is in that range"
        );
        return ExitCode::FAILURE;
    }
    if let Err(e) = config.nats_exposure() {
        eprintln!("careroute journal: {e}");
        return ExitCode::FAILURE;
    }
    // The log on NATS with --journal, the local journal otherwise.
    let opened = match &config.journal {
        Some(urls) => audit::OnNats::open(urls, &server::nats_security(config), &config.cluster_id)
            .map(|s| Box::new(s) as Box<dyn audit::Source>),
        None => audit::Local::open(&config.data_dir).map(|s| Box::new(s) as Box<dyn audit::Source>),
    };
    let mut source = match opened {
        Ok(source) => source,
        Err(e) => {
            eprintln!("careroute journal: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let exported = audit::export(source.as_mut(), from, to, outcomes, &mut out).and_then(|e| {
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
            if let Some((first, last)) = e.compacted {
                eprintln!(
                    "careroute journal: records {first} to {last} were compacted behind a snapshot and are no longer in the log (an export taken before holds them)"
                );
            }
            if e.damaged.is_empty() && e.compacted.is_none() {
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
            let why = format!("cannot start the runtime: {e}");
            telemetry::report_fatal(config.log_format, &why);
            return ExitCode::FAILURE;
        }
    };
    // The trace exporter's channel lives on the runtime.
    let tracing = {
        let _entered = runtime.enter();
        telemetry::init_tracing(
            config.log_format,
            config.otlp_endpoint.as_deref(),
            config.trace_sample_ratio,
        )
    };
    let tracing = match tracing {
        Ok(tracing) => tracing,
        Err(e) => {
            telemetry::report_fatal(config.log_format, &e);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let clock = Arc::new(SystemClock);
        let engine = server::build_engine(&config, chrono::Utc::now())?;
        let listeners = server::Listeners::bind(&config).await?;
        server::run(&config, listeners, engine, clock, shutdown_signal()).await
    });
    tracing.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::report_fatal(config.log_format, &e);
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
