//! The binary under real signals and misbehaving connections: SIGHUP with
//! and without a policy file, SIGTERM with streams that never end and
//! connections that never finish their handshake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use careroute::grpc::pb::routing_service_client::RoutingServiceClient;
use common::{contact, process::Process};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn sighup_on_the_embedded_policy_is_logged_and_the_service_keeps_serving() {
    let mut p = Process::start(&[]);
    p.signal("HUP");
    p.wait_for_log("nothing to reload", Duration::from_secs(10));
    assert!(p.is_running(), "SIGHUP ended the process");
    let grpc = p.grpc.clone();
    runtime().block_on(async {
        let mut client = RoutingServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .route_contact(contact("c-1", "billing"))
            .await
            .unwrap();
    });
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).unwrap().success());
}

#[test]
fn sighup_reloads_the_policy_file_and_refuses_a_broken_one() {
    let dir = common::process::scratch_dir("hup");
    let path = dir.join("policy.toml");
    let good = include_str!("../examples/healthcare.toml");
    std::fs::write(&path, good).unwrap();
    let p = Process::start(&["--policy", path.to_str().unwrap()]);
    // First a change the file watch finds by itself: from then on it has
    // looked at the file, and looks again only every 2 s.
    std::fs::write(
        &path,
        good.replacen("version = \"2026-11-22\"", "version = \"2026-11-28\"", 1),
    )
    .unwrap();
    let line = p.wait_for_log("policy reloaded", Duration::from_secs(10));
    assert!(line.contains("2026-11-28"), "{line}");
    std::fs::write(&path, good.replacen("level = 4", "level = 7", 1)).unwrap();
    p.signal("HUP");
    p.wait_for_log("policy reload refused", Duration::from_secs(10));
    // Refused once: the file watch does not take the file the SIGHUP
    // refused for news. (Had it looked between the write and the signal,
    // it would have refused the file first, before the SIGHUP did: a
    // look after the refusal is the fault.)
    std::thread::sleep(Duration::from_secs(5));
    let logs = p.logs();
    let refused = logs.find("policy reload refused").unwrap();
    assert!(
        !logs[refused..].contains("the policy file changed and differs"),
        "{logs}"
    );
    std::fs::write(
        &path,
        good.replacen("version = \"2026-11-22\"", "version = \"2026-11-29\"", 1),
    )
    .unwrap();
    p.signal("HUP");
    let line = p.wait_for_nth_log("policy reloaded", 2, Duration::from_secs(10));
    assert!(line.contains("2026-11-29"), "{line}");
}

/// A Kubernetes ConfigMap update sends no signal: the kubelet writes the
/// new files into a fresh directory and swaps the `..data` symlink the
/// mounted file points through. careroute notices the changed contents.
#[cfg(unix)]
#[test]
fn a_configmap_style_update_of_the_policy_is_reloaded_without_a_signal() {
    use std::os::unix::fs::symlink;
    let dir = common::process::fresh_data_dir();
    let good = include_str!("../examples/healthcare.toml");
    let publish = |generation: u32, text: &str| {
        let data = dir.join(format!("..gen{generation}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("policy.toml"), text).unwrap();
        let next = dir.join("..data_tmp");
        let _ = std::fs::remove_file(&next);
        symlink(format!("..gen{generation}"), &next).unwrap();
        std::fs::rename(&next, dir.join("..data")).unwrap();
    };
    publish(1, good);
    symlink("..data/policy.toml", dir.join("policy.toml")).unwrap();
    let path = dir.join("policy.toml");
    let p = Process::start(&["--policy", path.to_str().unwrap()]);
    publish(
        2,
        &good.replacen("version = \"2026-11-22\"", "version = \"2026-12-01\"", 1),
    );
    let line = p.wait_for_log("policy reloaded", Duration::from_secs(20));
    assert!(line.contains("2026-12-01"), "{line}");
    assert!(
        p.logs()
            .contains("the policy file changed and differs from the policy in force")
    );
    // A broken update is refused once, and the policy in force stays.
    publish(3, &good.replacen("level = 4", "level = 7", 1));
    p.wait_for_log("policy reload refused", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(p.logs().matches("policy reload refused").count(), 1);
    assert_eq!(p.logs().matches("policy reloaded").count(), 1);
    let grpc = p.grpc.clone();
    runtime().block_on(async {
        let mut client = RoutingServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        client
            .route_contact(contact("c-1", "billing"))
            .await
            .unwrap();
    });
}

/// An open Health/Watch stream and a TCP connection that never sends the
/// HTTP/2 preface both once kept a SIGTERM'd process alive forever.
#[test]
fn shutdown_ends_within_its_deadline_despite_open_streams_and_silent_connections() {
    let mut p = Process::start(&["--shutdown-timeout", "1s", "--handshake-timeout", "1h"]);
    let silent = TcpStream::connect(&p.grpc).unwrap();
    let grpc = p.grpc.clone();
    let rt = runtime();
    let _watch = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let mut stream = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        stream
    });
    let signalled = Instant::now();
    p.signal("TERM");
    let status = p
        .wait_exit(Duration::from_secs(30))
        .expect("the process never exited");
    assert!(status.success(), "{status:?}");
    p.wait_for_log("shutdown deadline passed", Duration::from_secs(1));
    // Not a speed check: the process waited for its deadline, no more
    // than the test's patience.
    assert!(signalled.elapsed() >= Duration::from_secs(1));
    drop(silent);
}

#[test]
fn a_connection_that_never_sends_the_preface_is_closed() {
    let p = Process::start(&["--handshake-timeout", "300ms"]);
    let mut silent = TcpStream::connect(&p.grpc).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // Half a preface, then nothing.
    silent.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
    let mut buf = [0u8; 256];
    let closed = loop {
        match silent.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // the server's SETTINGS
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false;
            }
            Err(_) => break true, // reset
        }
    };
    assert!(closed, "the silent connection was never closed");
}
