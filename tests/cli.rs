//! The binary as operations staff use it: `careroute check` on policy files,
//! and a service refusing to start on an invalid policy.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

fn careroute() -> Command {
    Command::new(env!("CARGO_BIN_EXE_careroute"))
}

/// A file holding `text`, removed when dropped.
fn write(name: &str, text: &str) -> common::process::ScratchFile {
    common::process::scratch_file("cli", name, text)
}

const EXAMPLE: &str = include_str!("../examples/healthcare.toml");

#[test]
fn check_accepts_the_example_policy() {
    let out = careroute()
        .args(["check", "examples/healthcare.toml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("examples/healthcare.toml: ok (version 2026-11-22, 13 queues"),
        "{stdout}"
    );
}

#[test]
fn check_refuses_with_file_line_and_field() {
    let bad = EXAMPLE.replacen("route_to = \"pharmacy\"", "route_to = \"farmacy\"", 1);
    let line = bad[..bad.find("farmacy").unwrap()].matches('\n').count() + 1;
    let path = write("bad-check.toml", &bad);
    let out = careroute().arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "{}:{line}: rules.refill.route_to: unknown queue `farmacy`",
            path.display()
        )
    );
}

#[test]
fn service_refuses_to_start_on_an_invalid_policy() {
    let bad = EXAMPLE.replacen(
        "time_zone = \"America/New_York\"",
        "time_zone = \"Mars/Olympus\"",
        1,
    );
    let path = write("bad-start.toml", &bad);
    let start = |more: &[&str]| {
        careroute()
            .arg("--policy")
            .arg(&path)
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(more)
            .output()
            .unwrap()
    };
    let out = start(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schedules.business.time_zone: `Mars/Olympus` is not an IANA time zone"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{}:", path.display())), "{stderr}");

    // With JSON logs the refusal is a JSON line like every other, so a log
    // shipper parses it rather than drop it.
    let out = start(&["--log-format", "json"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("`Mars/Olympus` is not an IANA time zone"),
        "{stderr}"
    );
}

#[test]
fn serve_flags_work_on_both_sides_of_serve() {
    use careroute::config::Cli;
    use clap::Parser;
    for args in [
        ["careroute", "serve", "--grpc-addr", "127.0.0.1:7001"],
        ["careroute", "--grpc-addr", "127.0.0.1:7001", "serve"],
    ] {
        let cli = Cli::try_parse_from(args).unwrap();
        assert_eq!(cli.serve.grpc_addr, "127.0.0.1:7001".parse().unwrap());
    }
    let out = careroute().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--grpc-addr") && help.contains("--policy"),
        "{help}"
    );
}
