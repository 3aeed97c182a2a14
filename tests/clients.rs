//! The Python client examples in examples/clients, run against the real
//! binary so they never rot: the IVR routes, transfers and confirms (a
//! retried confirm answered as the first), waits in line with in-queue
//! announcements; the CTI registers agents, feeds their states and
//! confirms the offer careroute makes when an agent frees up.
//!
//! They need Python 3 with grpcio and grpcio-tools (`.ci/run` installs
//! them). Without them the test says so and passes, unless `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use careroute::grpc::pb::{self, routing_service_client::RoutingServiceClient};
use common::process::Process;
use serde_json::Value;

/// Whether Python with the gRPC modules is here; under CI it must be.
fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but python3 with grpcio and grpcio-tools is missing (pip install grpcio grpcio-tools)"
        );
        eprintln!(
            "SKIPPED: python3 with grpcio and grpcio-tools not found; pip install grpcio grpcio-tools"
        );
    }
    ok
}

/// A running example, its JSON lines gathered as they come.
struct Script {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Script {
    fn start(name: &str, args: &[&str]) -> Script {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clients");
        let mut child = Command::new("python3")
            .arg(dir.join(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let gathered = Arc::clone(&lines);
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| panic!("{name} printed a line that is not JSON: {line}"));
                gathered.lock().unwrap().push(v);
            }
        });
        Script { child, lines }
    }

    /// The first line of `event`, waiting up to 60 s.
    fn wait_for(&self, event: &str) -> Value {
        let started = Instant::now();
        loop {
            if let Some(v) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["event"] == event)
            {
                return v.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {event} line; got {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the script to end; it must succeed.
    fn finish(mut self) -> Vec<Value> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{status:?}: {:?}",
                    self.lines.lock().unwrap()
                );
                // The reader drains the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return self.lines.lock().unwrap().clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "still running: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[test]
fn the_python_ivr_and_cti_examples_work_against_the_real_binary() {
    if !python_ready() {
        return;
    }
    // The example policy, open around the clock, with a line for billing
    // and no wrap-up, so the story runs in seconds at any hour.
    let dir = common::process::fresh_data_dir();
    let policy = include_str!("../examples/healthcare.toml")
        .replace(
            "hours = { mon = \"09:00-17:00\", tue = \"09:00-17:00\", wed = \"09:00-17:00\", thu = \"09:00-17:00\", fri = \"09:00-17:00\" }",
            "hours = { mon = \"00:00-24:00\", tue = \"00:00-24:00\", wed = \"00:00-24:00\", thu = \"00:00-24:00\", fri = \"00:00-24:00\", sat = \"00:00-24:00\", sun = \"00:00-24:00\" }",
        )
        .replace("holidays = [\"2026-11-26\", \"2026-12-25\", \"2027-01-01\"]\n", "")
        .replacen(
            "transfer_address = \"sip:billing@pbx.careroute.example\"",
            "transfer_address = \"sip:billing@pbx.careroute.example\"\nmax_waiting = 20\nmax_wait = \"2h\"",
            1,
        )
        .replace("wrap_up = \"45s\"", "wrap_up = \"0s\"");
    assert!(policy.contains("max_waiting = 20") && !policy.contains("09:00-17:00"));
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let p = Process::start(&["--policy", path.to_str().unwrap()]);
    let target = p.grpc.clone();

    // The CTI: one agent, watched, available; it confirms the first offer.
    let cti = Script::start(
        "cti.py",
        &["--target", &target, "--agent", "py-1", "--offers", "1"],
    );
    assert_eq!(cti.wait_for("registered")["queues"][0], "billing");
    cti.wait_for("available");

    // A call: the agent is free, so a warm transfer; the IVR confirms, and
    // its retried confirm is answered as the first.
    let first = Script::start("ivr.py", &["--target", &target, "--contact", "c-1"]).finish();
    let event = |lines: &[Value], e: &str| {
        lines
            .iter()
            .find(|v| v["event"] == e)
            .cloned()
            .unwrap_or_else(|| panic!("no {e} in {lines:?}"))
    };
    assert_eq!(event(&first, "routed")["outcome"], "agent");
    assert_eq!(event(&first, "transfer")["agent"], "py-1");
    let confirmed = event(&first, "confirmed");
    assert_eq!(
        (
            &confirmed["agent"],
            &confirmed["contact"],
            &confirmed["retry_same"]
        ),
        (
            &Value::from("py-1"),
            &Value::from("c-1"),
            &Value::from(true)
        )
    );

    // A second call waits in line, announced every half second.
    let second = Script::start(
        "ivr.py",
        &[
            "--target",
            &target,
            "--contact",
            "c-2",
            "--announce-every",
            "0.5",
        ],
    );
    let queued = second.wait_for("queued");
    assert_eq!(
        (&queued["queue"], &queued["position"]),
        (&Value::from("billing"), &Value::from(1))
    );
    let announced = second.wait_for("announce");
    assert_eq!(announced["position"], 1);
    assert!(
        announced["text"]
            .as_str()
            .unwrap()
            .starts_with("You are number 1")
    );

    // The first call ends: the agent is free, careroute offers it the
    // waiting call, the CTI confirms it, and the IVR's loop sees it go.
    runtime().block_on(async {
        let mut client = RoutingServiceClient::connect(format!("http://{target}"))
            .await
            .unwrap();
        client
            .complete_contact(pb::CompleteContactRequest {
                agent_id: "py-1".into(),
                contact_id: "c-1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let cti = cti.finish();
    let confirmed = event(&cti, "confirmed");
    assert_eq!(
        (&confirmed["contact"], &confirmed["agent"]),
        (&Value::from("c-2"), &Value::from("py-1"))
    );
    let second = second.finish();
    assert_eq!(event(&second, "left_line")["agent"], "py-1");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}
