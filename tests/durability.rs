//! Nothing acknowledged is lost: the real binary with its journal, killed
//! with `kill -9` after a stretch of acknowledged answers, restarted on the
//! same data directory; and a journal whose last record is corrupt, cut and
//! reported at start. A ledger of what the clients were told is the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use careroute::grpc::pb;
use common::{
    contact,
    floor::{
        self, KNOBS, Knobs, agent, busy, client, decides, follows, next_event, policy, queue,
        resumable_after, watch_after,
    },
    process::{Process, ScratchDir, fresh_data_dir},
};
use tonic::Code;

/// A minute of TTL: reservations outlive the restart.
const SLOW: Knobs = Knobs {
    reservation_ttl: "60s",
    ..KNOBS
};

fn policy_file(dir: &std::path::Path) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(&path, policy(&SLOW)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Where GetContactStatus says `id` is.
async fn status(
    c: &mut pb::routing_service_client::RoutingServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Option<pb::get_contact_status_response::Status> {
    floor::status(c, id).await.unwrap().status
}

/// The floor both restart tests stand up before the kill: three agents, a
/// confirmed call, an offer out (decided with a request id), a second
/// confirmed call; returns the request to retry and its first answer.
async fn busy_floor(
    c: &mut pb::routing_service_client::RoutingServiceClient<tonic::transport::Channel>,
) -> (pb::RouteContactRequest, pb::RouteContactResponse) {
    for id in ["b1", "b2", "b3"] {
        agent(c, id, "Billing", "billing").await;
    }
    busy(c, "on-call", "billing").await;
    let mut retried = contact("offered", "billing");
    retried.request_id = "req-1".into();
    let offered = c.route_contact(retried.clone()).await.unwrap().into_inner();
    busy(c, "third", "billing").await;
    (retried, offered)
}

#[tokio::test]
async fn kill_9_loses_nothing_acknowledged() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    // Acknowledged before the kill: three agents; a confirmed call; an
    // offer out; a decision with a request id; two callers in line.
    let (retried, offered) = busy_floor(&mut c).await;
    let Some(pb::route_contact_response::Outcome::Agent(out)) = &offered.outcome else {
        panic!("{offered:?}")
    };
    queue(&mut c, contact("w1", "billing")).await;
    queue(&mut c, contact("w2", "billing")).await;
    assert!(!p.kill9().success());

    let p = Process::start_in(&data, &args, "info");
    let line = p.wait_for_log("journal replayed", Duration::from_secs(10));
    assert!(line.contains("\"waiting\":2"), "{line}");
    let mut c = client(&p).await;
    // The retry gets the first decision, not a second agent.
    let again = c.route_contact(retried).await.unwrap().into_inner();
    assert_eq!(again.decision_id, offered.decision_id);
    // The live offer can still be confirmed, once.
    c.confirm_reservation(pb::ConfirmReservationRequest {
        reservation_id: out.reservation_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let twice = c
        .confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: out.reservation_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition);
    // The line is there, in its order.
    for (id, position) in [("w1", 1), ("w2", 2)] {
        let Some(pb::get_contact_status_response::Status::Waiting(w)) = status(&mut c, id).await
        else {
            panic!("{id} no longer waits")
        };
        assert_eq!(w.position, position, "{id}");
    }
    // Every agent is busy, as before: a new caller waits third.
    let d = c
        .route_contact(contact("w3", "billing"))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::route_contact_response::Outcome::Queued(q)) = d.outcome else {
        panic!("{d:?}")
    };
    assert_eq!(q.position, 3);
}

/// Reads `stream` until the decision for `contact_id`, checking each event
/// follows the one before (none lost, none twice, in order).
async fn until_decided(
    stream: &mut tonic::Streaming<pb::RoutingEvent>,
    mut prev: pb::RoutingEvent,
    contact_id: &str,
) -> Vec<pb::RoutingEvent> {
    let mut read = Vec::new();
    loop {
        let e = next_event(stream).await;
        assert!(follows(&prev, &e), "{e:?} after {prev:?}");
        prev = e.clone();
        read.push(e);
        if decides(&prev, contact_id) {
            return read;
        }
    }
}

#[tokio::test]
async fn a_watcher_resumes_across_a_kill_9_and_is_told_what_it_was_told_before() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    let mut watch = watch_after(&mut c, 0).await.unwrap();
    busy_floor(&mut c).await;
    queue(&mut c, contact("w1", "billing")).await;
    queue(&mut c, contact("w2", "billing")).await;
    // Everything the watcher was told before the kill, up to w2's decision.
    let first = next_event(&mut watch).await;
    let mut before = vec![first.clone()];
    before.extend(until_decided(&mut watch, first, "w2").await);
    assert!(before.len() > 10, "{before:?}");
    assert!(!p.kill9().success());

    // Twice: the second restart tells again the first's own records (its
    // restart, what fell due while it was down), as they were told.
    for restart in ["w3", "w4"] {
        let p = Process::start_in(&data, &args, "info");
        let mut c = client(&p).await;
        // From the start of the log: every event again, the same to the
        // byte (decisions with their whole answer, at the time they were
        // made).
        let mut again = watch_after(&mut c, 0).await.unwrap();
        for (i, expected) in before.iter().enumerate() {
            assert_eq!(&next_event(&mut again).await, expected, "event {i}");
        }
        // From the middle, after a whole command: what came after it.
        let middle = before[before.len() / 2].sequence;
        let mut resumed = watch_after(&mut c, middle).await.unwrap();
        for expected in before.iter().filter(|e| e.sequence > middle) {
            assert_eq!(&next_event(&mut resumed).await, expected);
        }
        // Then the rest, the same on both streams, up to this process's
        // own first decision.
        queue(&mut c, contact(restart, "billing")).await;
        let last = before.last().unwrap().clone();
        let rest = until_decided(&mut again, last.clone(), restart).await;
        assert_eq!(until_decided(&mut resumed, last, restart).await, rest);
        before.extend(rest);
        // A sequence the log has not reached is still refused.
        let ahead = watch_after(&mut c, before.last().unwrap().sequence + 1000)
            .await
            .unwrap_err();
        assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
        drop(p);
    }
}

#[tokio::test]
async fn a_restart_retains_only_the_last_events_and_tells_them_as_before() {
    // A ring of six events: a restart applies the records before the last
    // six telling nothing, and those after as they were told.
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str(), "--event-retention", "6"];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    let mut watch = watch_after(&mut c, 0).await.unwrap();
    busy_floor(&mut c).await;
    let waiting = ["w1", "w2", "w3", "w4", "w5", "w6"];
    for id in waiting {
        queue(&mut c, contact(id, "billing")).await;
    }
    let first = next_event(&mut watch).await;
    let mut before = vec![first.clone()];
    before.extend(until_decided(&mut watch, first, "w6").await);
    assert!(before.len() > 12, "{}", before.len());
    // Refusals are logged and tell nothing: the last six records hold
    // fewer than six events.
    for _ in 0..3 {
        let refused = c
            .confirm_reservation(pb::ConfirmReservationRequest {
                reservation_id: format!("r-{}", "9".repeat(32)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
    }
    assert!(!p.kill9().success());

    let p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    let refused = watch_after(&mut c, 0).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    let after = resumable_after(&refused);
    // Some of the last events before the kill are retained, not all.
    let last = before.last().unwrap().sequence;
    assert!(
        after > before[0].sequence && after < last,
        "{after} of {last}"
    );
    // Resumed there: every one of them, the same to the byte, in order.
    let mut resumed = watch_after(&mut c, after).await.unwrap();
    let retained: Vec<_> = before.iter().filter(|e| e.sequence > after).collect();
    assert!(!retained.is_empty());
    for expected in retained {
        assert_eq!(&next_event(&mut resumed).await, expected);
    }
    // And one before it is refused, naming the same sequence.
    let earlier = watch_after(&mut c, after - 1).await.unwrap_err();
    assert_eq!(resumable_after(&earlier), after, "{earlier:?}");
    drop(p);
}

/// A data directory whose last record, b2's state, is flipped after a
/// `kill -9` of a service run under `--journal-sync` `sync`: its checksum no
/// longer matches. Returns the directory, the policy file and the record.
async fn with_a_corrupt_last_record(sync: &str) -> (ScratchDir, String, i64) {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str(), "--journal-sync", sync];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    agent(&mut c, "b2", "Billing", "billing").await;
    p.kill9();
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    let last: i64 = db
        .query_row("SELECT max(seq) FROM commands", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE commands SET body = replace(body, 'b2', 'bX') WHERE seq = ?1",
        [last],
    )
    .unwrap();
    drop(db);
    (data, policy, last)
}

#[tokio::test]
async fn a_corrupt_last_record_is_reported_with_its_position_and_cut() {
    let (data, policy, last) = with_a_corrupt_last_record("write").await;
    let args = ["--policy", policy.as_str()];
    let p = Process::start_in(&data, &args, "info");
    let cut = p.wait_for_log("torn or corrupt tail was cut", Duration::from_secs(10));
    assert!(
        cut.contains(&format!("\"first_record_cut\":{last}"))
            && cut.contains(&format!("\"last_record_cut\":{last}"))
            && cut.contains("\"level\":\"ERROR\""),
        "{cut}"
    );
    assert!(cut.contains("checksum"), "{cut}");
    let mut c = client(&p).await;
    // b1 is there and available; b2's last command (its state) was cut,
    // so it is registered but offline.
    let previous = |agent: &str| pb::SetAgentStateRequest {
        agent_id: agent.into(),
        state: pb::AgentState::Busy.into(),
    };
    let b1 = c
        .set_agent_state(previous("b1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b1.previous(), pb::AgentState::Available);
    let b2 = c
        .set_agent_state(previous("b2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b2.previous(), pb::AgentState::Offline);
}

#[tokio::test]
async fn a_corrupt_record_written_under_fsync_is_damage_and_never_cut() {
    let (data, policy, last) = with_a_corrupt_last_record("fsync").await;
    let db = data.join(careroute::journal::FILE);
    let count = || -> i64 {
        let db = rusqlite::Connection::open(&db).unwrap();
        db.query_row("SELECT count(*) FROM commands", [], |r| r.get(0))
            .unwrap()
    };
    let before = count();
    // It was on disk when answered, so no power loss tore it; whatever
    // --journal-sync the start is given now.
    for more in [
        &["--journal-sync", "fsync"][..],
        &["--journal-sync", "write"][..],
    ] {
        let why = refused_with(&data, &policy, more);
        assert!(
            why.contains(&format!("record {last} cannot be read (checksum"))
                && why.contains(&format!("records up to {last} were on disk when answered")),
            "{why}"
        );
        assert_eq!(count(), before, "a refused start cut records");
    }
}

/// Runs the binary on `data` until it exits (it must refuse to start);
/// its stderr.
fn refused(data: &std::path::Path, policy: &str) -> String {
    refused_with(data, policy, &[])
}

/// [`refused`], with more flags.
fn refused_with(data: &std::path::Path, policy: &str, more: &[&str]) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_careroute"))
        .args([
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data)
        .args(["--policy", policy])
        .args(more)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "it started: {status:?}\n{stderr}"
    );
    stderr
}

#[tokio::test]
async fn damage_that_is_not_a_tail_is_refused_and_so_is_a_second_process() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    for id in ["b1", "b2", "b3"] {
        agent(&mut c, id, "Billing", "billing").await;
    }
    // A second careroute on the same journal is refused while the first
    // runs, and writes nothing.
    let second = refused(&data, &policy);
    assert!(
        second.contains("in use by another careroute process"),
        "{second}"
    );
    p.kill9();
    // Damage a record in the middle: the records after it are readable, so
    // cutting would lose acknowledged commands. Refused, naming it.
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    db.execute("UPDATE commands SET crc = crc + 1 WHERE seq = 4", [])
        .unwrap();
    let count: i64 = db
        .query_row("SELECT count(*) FROM commands", [], |r| r.get(0))
        .unwrap();
    drop(db);
    let file = data.join(careroute::journal::FILE);
    let before = std::fs::read(&file).unwrap();
    let why = refused(&data, &policy);
    assert!(
        why.contains("record 4 cannot be read (checksum mismatch)"),
        "{why}"
    );
    // It read before it wrote: the file is as it was found.
    assert!(
        std::fs::read(&file).unwrap() == before,
        "a refused start changed {}",
        file.display()
    );
    // Nothing was cut.
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    let after: i64 = db
        .query_row("SELECT count(*) FROM commands", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, count);
    // Missing records with later ones kept are not a tail either.
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    db.execute("UPDATE commands SET crc = crc - 1 WHERE seq = 4", [])
        .unwrap();
    db.execute("DELETE FROM commands WHERE seq = 5", [])
        .unwrap();
    drop(db);
    let why = refused(&data, &policy);
    assert!(why.contains("records 5 to 5 are missing"), "{why}");
}

/// A copy of data directory `from` (the journal of a killed process).
fn copy_dir(from: &std::path::Path) -> ScratchDir {
    let to = fresh_data_dir();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

/// Overwrites `len` bytes of `file` at `at` with 0xFF.
fn damage(file: &std::path::Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&vec![0xFF; len], at).unwrap();
}

/// The write-ahead file of a journal written by a killed careroute under
/// `sync`, one call (one batch, frames of its own) after another; and the
/// last record the mark says was written.
async fn killed_with_its_write_ahead_file(sync: &str) -> (ScratchDir, String, u64) {
    let (data, policy) = killed_after_agents(sync, 12).await;
    let size = std::fs::metadata(wal(&data)).unwrap().len();
    assert!(
        size > 40_000,
        "the records are in the write-ahead file: {size} bytes"
    );
    let written = careroute::journal::Mark::read(&data).unwrap().last;
    // (SQLite folds the write-ahead file in when it closes a database:
    // each look is at a copy.)
    assert_eq!(held(&copy_dir(&data)), written);
    (data, policy, written)
}

/// The data directory of a careroute killed with `kill -9` under `sync`
/// after registering `agents` agents one call after another, and its
/// policy file.
async fn killed_after_agents(sync: &str, agents: usize) -> (ScratchDir, String) {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str(), "--journal-sync", sync];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    for i in 0..agents {
        agent(&mut c, &format!("b{i}"), "Billing", "billing").await;
    }
    p.kill9();
    (data, policy)
}

fn wal(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(format!("{}-wal", careroute::journal::FILE))
}

/// The last record a journal's database holds.
fn held(dir: &std::path::Path) -> u64 {
    rusqlite::Connection::open(dir.join(careroute::journal::FILE))
        .unwrap()
        .query_row("SELECT coalesce(max(seq), 0) FROM commands", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64
}

/// A copy of `data` with a frame of its write-ahead file damaged three
/// quarters in: SQLite keeps the frames before it and drops the rest, and
/// with them the last records. Returns it and the last record left.
fn torn_copy(data: &std::path::Path, written: u64) -> (ScratchDir, u64) {
    let torn = copy_dir(data);
    let size = std::fs::metadata(wal(&torn)).unwrap().len();
    damage(&wal(&torn), size * 3 / 4, 64);
    let left = held(&copy_dir(&torn));
    assert!(
        (1..written).contains(&left),
        "records 1 to {left} of {written} left"
    );
    (torn, left)
}

#[tokio::test]
async fn records_sqlite_drops_with_a_damaged_write_ahead_file_are_not_lost_silently() {
    let (data, policy, written) = killed_with_its_write_ahead_file("write").await;
    let args = ["--policy", policy.as_str()];

    // The whole write-ahead file lost: the database holds no log at all.
    // Before, this started as a new log, on nothing.
    let gone = copy_dir(&data);
    std::fs::write(wal(&gone), b"").unwrap();
    let why = refused(&gone, &policy);
    assert!(
        why.contains(&format!("records up to {written} were written ("))
            && why.contains("holds them only up to 0")
            && why.contains(careroute::journal::WRITTEN_FILE),
        "{why}"
    );
    let copy = copy_dir(&gone);
    let (ok, lines, stderr) = common::process::journal(&["--data-dir", copy.to_str().unwrap()]);
    assert!(!ok && lines.is_empty(), "{stderr}");
    assert!(
        stderr.contains(&format!("records 1 to {written} were written")),
        "{stderr}"
    );

    // A database moved aside, as the messages advise to start anew, is
    // not one SQLite lost: a new log starts.
    let aside = copy_dir(&data);
    std::fs::remove_file(aside.join(careroute::journal::FILE)).unwrap();
    std::fs::remove_file(wal(&aside)).unwrap();
    let p = Process::start_in(&aside, &args, "info");
    client(&p).await;
    drop(p);

    // The last records lost. The audit export says so, and exits non-zero.
    let (torn, left) = torn_copy(&data, written);
    let copy = copy_dir(&torn);
    let (ok, lines, stderr) = common::process::journal(&["--data-dir", copy.to_str().unwrap()]);
    assert!(!ok, "{stderr}");
    assert_eq!(lines.len() as u64, left, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "records {} to {written} were written but the log no longer holds them",
            left + 1
        )),
        "{stderr}"
    );
    // Written under write (a power loss loses the last batches too): the
    // start reports the records lost, as for a torn tail, and goes on from
    // the rest, whatever --journal-sync it is started with now.
    let fsync_now = copy_dir(&torn);
    let p = Process::start_in(
        &fsync_now,
        &["--policy", policy.as_str(), "--journal-sync", "fsync"],
        "info",
    );
    p.wait_for_log("records written were lost", Duration::from_secs(10));
    drop(p);
    let mut p = Process::start_in(&torn, &args, "info");
    let lost = p.wait_for_log("records written were lost", Duration::from_secs(10));
    assert!(
        lost.contains(&format!("\"first_record_lost\":{}", left + 1))
            && lost.contains(&format!("\"last_record_lost\":{written}")),
        "{lost}"
    );
    let mut c = client(&p).await;
    c.set_agent_state(pb::SetAgentStateRequest {
        agent_id: "b0".into(),
        state: pb::AgentState::Busy.into(),
    })
    .await
    .unwrap();
    p.kill9();
    // Reported once: the next start finds the log as the last one left it.
    let p = Process::start_in(&torn, &args, "info");
    client(&p).await;
    assert!(
        !p.logs().contains("records written were lost"),
        "{}",
        p.logs()
    );
}

#[tokio::test]
async fn records_written_under_fsync_and_lost_are_refused_leaving_the_files_as_found() {
    let (data, policy, written) = killed_with_its_write_ahead_file("fsync").await;
    let (torn, left) = torn_copy(&data, written);
    let before = std::fs::read(wal(&torn)).unwrap();
    // They were on disk when answered: damage, whatever the start asks now.
    let why = refused(&torn, &policy);
    assert!(
        why.contains(&format!(
            "records up to {written} were written under --journal-sync fsync ({}",
            torn.join(careroute::journal::WRITTEN_FILE).display()
        )) && why.contains(&format!("holds them only up to {left}")),
        "{why}"
    );
    // Nothing was written to the log before the refusal: the damaged
    // frames are still there for whoever restores it.
    assert!(
        std::fs::read(wal(&torn)).unwrap() == before,
        "the write-ahead file changed"
    );
}

#[tokio::test]
async fn records_written_under_fsync_stay_protected_after_a_start_under_write() {
    let (data, policy, written) = killed_with_its_write_ahead_file("fsync").await;
    // One start under write, killed once it answers: its records are the
    // mark's last now, but not what was on disk when answered.
    let args = ["--policy", policy.as_str(), "--journal-sync", "write"];
    let mut p = Process::start_in(&data, &args, "info");
    client(&p).await;
    p.kill9();
    let mark = careroute::journal::Mark::read(&data).unwrap();
    assert!(
        mark.last > written && mark.fsync_upto == written,
        "{mark:?}"
    );
    let (torn, left) = torn_copy(&data, written);
    let why = refused_with(&torn, &policy, &["--journal-sync", "write"]);
    assert!(
        why.contains(&format!(
            "records up to {written} were written under --journal-sync fsync"
        )) && why.contains(&format!("holds them only up to {left}")),
        "{why}"
    );
}

#[tokio::test]
async fn a_damaged_mark_is_refused_rather_than_trusted_to_say_nothing_was_lost() {
    let (data, policy) = killed_after_agents("write", 2).await;
    let mark = data.join(careroute::journal::WRITTEN_FILE);
    std::fs::write(&mark, "00000000000000000007 0000000").unwrap();
    let why = refused(&data, &policy);
    assert!(
        why.contains(&format!(
            "journal {}: not a mark of how far the log was written",
            mark.display()
        )) && why.contains("remove"),
        "{why}"
    );
    // The audit export says so too, rather than that nothing was lost.
    let (ok, _, stderr) = export(&data, &[]);
    assert!(!ok && stderr.contains("not a mark"), "{stderr}");
    // The way out it names: without the mark, the log starts as it is.
    std::fs::remove_file(&mark).unwrap();
    let p = Process::start_in(&data, &["--policy", policy.as_str()], "info");
    client(&p).await;
}

#[tokio::test]
async fn a_database_damaged_below_its_records_is_refused_saying_so() {
    let (data, policy) = killed_after_agents("write", 60).await;
    // Folded into the database file, whose last pages are then lost.
    rusqlite::Connection::open(data.join(careroute::journal::FILE))
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let db = data.join(careroute::journal::FILE);
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size > 8 * 4096, "{size} bytes");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(size - 2 * 4096)
        .unwrap();
    let why = refused(&data, &policy);
    assert!(
        why.contains("database disk image is malformed")
            && why.contains("the database file itself is damaged")
            && why.contains("restore the data directory from a copy"),
        "{why}"
    );
}

/// Polls the journal of a running process until `done` holds of (snapshots
/// kept, first command kept).
fn wait_for_journal(data: &std::path::Path, done: impl Fn(i64, i64) -> bool) -> (i64, i64) {
    let started = std::time::Instant::now();
    loop {
        let snapshots: i64 =
            rusqlite::Connection::open(data.join(careroute::journal::SNAPSHOT_FILE))
                .and_then(|db| db.query_row("SELECT count(*) FROM snapshots", [], |r| r.get(0)))
                .unwrap_or(0);
        let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
        let first: i64 = db
            .query_row("SELECT coalesce(min(seq), 0) FROM commands", [], |r| {
                r.get(0)
            })
            .unwrap();
        if done(snapshots, first) {
            return (snapshots, first);
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "journal still at {snapshots} snapshots, first record {first}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_restart_loads_the_snapshot_and_a_damaged_one_falls_back_to_the_one_before() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let snapshotting = [
        "--policy",
        policy.as_str(),
        "--snapshot-every",
        "4",
        "--snapshot-interval",
        "1h",
    ];
    // Restarts take no snapshot of their own, so the damage stays put.
    let quiet = [
        "--policy",
        policy.as_str(),
        "--snapshot-every",
        "1000000",
        "--snapshot-interval",
        "1h",
    ];
    let mut p = Process::start_in(&data, &snapshotting, "info");
    let mut c = client(&p).await;
    let (retried, offered) = busy_floor(&mut c).await;
    wait_for_journal(&data, |snapshots, _| snapshots >= 1);
    let Some(pb::route_contact_response::Outcome::Agent(out)) = &offered.outcome else {
        panic!("{offered:?}")
    };
    queue(&mut c, contact("w1", "billing")).await;
    // A second snapshot compacts the log before the first.
    wait_for_journal(&data, |snapshots, first| snapshots == 2 && first > 1);
    // And one more caller after it: the tail a restart replays.
    queue(&mut c, contact("w2", "billing")).await;
    p.kill9();

    // The export starts, by default, at the first record kept, with what
    // each decided from the snapshot before it; a range asked for from a
    // record compacted away says so and fails.
    let (_, first) = wait_for_journal(&data, |_, _| true);
    let (ok, lines, stderr) = export(&data, &["--outcomes"]);
    assert!(ok, "{stderr}");
    assert_eq!(lines[0]["seq"], first, "{stderr}");
    assert!(lines.iter().all(|l| l.get("result").is_some()), "{lines:?}");
    let (ok, lines, stderr) = export(&data, &["--from", "1"]);
    assert!(!ok);
    assert_eq!(lines[0]["seq"], first);
    assert!(
        stderr.contains(&format!(
            "records 1 to {} were compacted behind a snapshot",
            first - 1
        )),
        "{stderr}"
    );
    let (ok, lines, stderr) = export(&data, &["--to", "1"]);
    assert!(!ok && lines.is_empty(), "{lines:?}");
    assert!(
        stderr.contains("records 1 to 1 were compacted behind a snapshot"),
        "{stderr}"
    );
    // Records are numbered from 1.
    let (ok, lines, stderr) = export(&data, &["--to", "0"]);
    assert!(!ok && lines.is_empty(), "{stderr}");
    assert!(stderr.contains("--to"), "{stderr}");
    let (ok, lines, stderr) = export(&data, &["--from", "5", "--to", "3"]);
    assert!(!ok && lines.is_empty());
    assert!(stderr.contains("--from 5 comes after --to 3"), "{stderr}");

    // Each start must show the same floor: the retry answered from memory,
    // the offer confirmable once, the line in order.
    async fn same_floor(
        c: &mut pb::routing_service_client::RoutingServiceClient<tonic::transport::Channel>,
        retried: &pb::RouteContactRequest,
        decision_id: &str,
    ) {
        let again = c.route_contact(retried.clone()).await.unwrap().into_inner();
        assert_eq!(again.decision_id, decision_id);
        for (id, position) in [("w1", 1), ("w2", 2)] {
            let Some(pb::get_contact_status_response::Status::Waiting(w)) = status(c, id).await
            else {
                panic!("{id} no longer waits")
            };
            assert_eq!(w.position, position, "{id}");
        }
    }

    let mut p = Process::start_in(&data, &quiet, "info");
    let line = p.wait_for_log("journal replayed", Duration::from_secs(10));
    assert!(line.contains("\"snapshot\":"), "{line}");
    assert!(line.contains("\"waiting\":2"), "{line}");
    let mut c = client(&p).await;
    same_floor(&mut c, &retried, &offered.decision_id).await;
    p.kill9();

    // The newest snapshot damaged: the one before it and the log since.
    let db = rusqlite::Connection::open(data.join(careroute::journal::SNAPSHOT_FILE)).unwrap();
    let newest: i64 = db
        .query_row("SELECT max(seq) FROM snapshots", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE snapshots SET crc = crc + 1 WHERE seq = ?1",
        [newest],
    )
    .unwrap();
    drop(db);
    let mut p = Process::start_in(&data, &quiet, "info");
    let warned = p.wait_for_log("a snapshot cannot be loaded", Duration::from_secs(10));
    assert!(
        warned.contains(&format!("\"snapshot\":{newest}")),
        "{warned}"
    );
    assert!(warned.contains("checksum"), "{warned}");
    let mut c = client(&p).await;
    same_floor(&mut c, &retried, &offered.decision_id).await;
    c.confirm_reservation(pb::ConfirmReservationRequest {
        reservation_id: out.reservation_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.kill9();

    // A start that falls back takes snapshots again: the snapshot it loaded
    // stays as the fallback and the damaged one goes, so damage to the new
    // one still falls back to a snapshot the log reaches.
    let mut p = Process::start_in(&data, &snapshotting, "info");
    p.wait_for_log("a snapshot cannot be loaded", Duration::from_secs(10));
    let db = data.join(careroute::journal::SNAPSHOT_FILE);
    let kept = || -> Vec<i64> {
        let db = rusqlite::Connection::open(&db).unwrap();
        let mut q = db
            .prepare("SELECT seq FROM snapshots ORDER BY seq")
            .unwrap();
        q.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let started = std::time::Instant::now();
    while kept().contains(&newest) {
        assert!(started.elapsed() < Duration::from_secs(15), "{:?}", kept());
        std::thread::sleep(Duration::from_millis(50));
    }
    p.kill9();
    let snapshots = kept();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let db = rusqlite::Connection::open(data.join(careroute::journal::SNAPSHOT_FILE)).unwrap();
    db.execute(
        "UPDATE snapshots SET crc = crc + 1 WHERE seq = ?1",
        [snapshots[1]],
    )
    .unwrap();
    drop(db);
    let p = Process::start_in(&data, &quiet, "info");
    let line = p.wait_for_log("journal replayed", Duration::from_secs(10));
    assert!(
        line.contains(&format!("\"snapshot\":{}", snapshots[0])),
        "{line}"
    );
    let mut c = client(&p).await;
    same_floor(&mut c, &retried, &offered.decision_id).await;
    drop(p);

    // Both damaged, and the log before the older one compacted: refused,
    // rather than started on half a state.
    let db = rusqlite::Connection::open(data.join(careroute::journal::SNAPSHOT_FILE)).unwrap();
    db.execute("UPDATE snapshots SET body = x'00'", []).unwrap();
    drop(db);
    let (_, first) = wait_for_journal(&data, |_, _| true);
    let why = refused(&data, &policy);
    assert!(why.contains("no snapshot can be loaded"), "{why}");
    assert!(why.contains(&format!("before record {first}")), "{why}");

    // The snapshot database emptied (a disk that lost it): the same
    // refusal, and the export says what is missing, not SQLite's words.
    let db = data.join(careroute::journal::SNAPSHOT_FILE);
    std::fs::write(&db, b"").unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", db.display()));
    }
    let why = refused(&data, &policy);
    assert!(why.contains(&format!("before record {first}")), "{why}");
    assert!(!why.contains("no such table"), "{why}");
    let (ok, _, why) = export(&data, &["--outcomes"]);
    assert!(!ok);
    assert!(why.contains("no snapshot before it loads"), "{why}");
}

/// Runs `careroute journal` on `data` with `args`: whether it succeeded,
/// its lines parsed, and its stderr.
fn export(data: &std::path::Path, args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let data = data.to_str().unwrap();
    let mut all = vec!["--data-dir", data];
    all.extend_from_slice(args);
    common::process::journal(&all)
}

#[tokio::test]
async fn the_journal_export_shows_every_record_and_what_it_decided() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let mut p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    let d = c
        .route_contact(contact("c-1", "billing"))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::route_contact_response::Outcome::Agent(offer)) = &d.outcome else {
        panic!("{d:?}")
    };

    // The CTI's confirm, sent again after a lost answer.
    for _ in 0..2 {
        c.confirm_reservation(pb::ConfirmReservationRequest {
            reservation_id: offer.reservation_id.clone(),
            request_id: "confirm-c-1".into(),
        })
        .await
        .unwrap();
    }

    // Read while the service runs, replayed: the decision as answered.
    let (ok, lines, stderr) = export(&data, &["--outcomes"]);
    assert!(ok, "{stderr}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let routed = lines
        .iter()
        .find(|l| l["command"]["route"]["contact_id"] == "c-1")
        .expect("the route is logged");
    assert_eq!(routed["result"]["decision_id"], d.decision_id.as_str());
    assert_eq!(routed["result"]["outcome"], "agent");
    assert_eq!(routed["result"]["agent_id"], "b1");
    assert_eq!(
        routed["result"]["reservation_id"],
        offer.reservation_id.as_str()
    );
    assert!(routed["at"].as_str().unwrap().ends_with('Z'));
    // The confirm and its retry, told apart.
    let confirms: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["command"].to_string().contains("confirm-c-1"))
        .map(|l| &l["result"])
        .collect();
    assert_eq!(
        confirms,
        [
            &serde_json::json!({"accepted": true}),
            &serde_json::json!({"accepted": true, "retry_of_an_answered_request": true})
        ]
    );

    // A range, as stored.
    let (ok, lines, _) = export(&data, &["--from", "2", "--to", "3"]);
    assert!(ok);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 2);
    assert!(lines[0].get("result").is_none());

    // A damaged record is reported, skipped, and fails the export.
    p.kill9();
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    db.execute("UPDATE commands SET crc = crc + 1 WHERE seq = 3", [])
        .unwrap();
    drop(db);
    let (ok, lines, stderr) = export(&data, &["--to", "4"]);
    assert!(!ok);
    assert_eq!(lines.len(), 3);
    assert!(
        stderr.contains("record 3 cannot be read (checksum mismatch); skipped"),
        "{stderr}"
    );
    // Outcomes after it would come from a state missing it: refused.
    let (ok, lines, stderr) = export(&data, &["--outcomes", "--from", "4"]);
    assert!(!ok && lines.is_empty());
    assert!(
        stderr.contains("outcomes from record 4 need every record before it since the snapshot: record 3 is damaged"),
        "{stderr}"
    );
    // Across it: outcomes up to it, none replayed after it.
    let (ok, lines, stderr) = export(&data, &["--outcomes", "--to", "4"]);
    assert!(!ok, "{stderr}");
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 4]);
    assert_eq!(lines[0]["result"], serde_json::json!({"started": true}));
    assert_eq!(lines[1]["result"]["accepted"], true, "{}", lines[1]);
    assert_eq!(
        lines[2]["result"],
        serde_json::json!({"not_replayed": "record 3 before it cannot be read"})
    );
    // From it: the state before it rebuilt, none replayed after it.
    let (ok, lines, stderr) = export(&data, &["--outcomes", "--from", "3", "--to", "4"]);
    assert!(!ok, "{stderr}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["seq"], 4);
    assert_eq!(
        lines[0]["result"],
        serde_json::json!({"not_replayed": "record 3 before it cannot be read"})
    );
}

#[tokio::test]
async fn what_a_refused_contact_carried_never_reaches_the_journal() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    // Free text where the policy's vocabulary keeps it out: an attribute
    // it does not declare, a value it does not allow, an unknown intent, a
    // signal it does not know (on an emergency too).
    let mut undeclared = contact("c-1", "billing");
    undeclared
        .attributes
        .insert("patient_name".into(), "Jane_Doe".into());
    let mut value = contact("c-2", "billing");
    value
        .attributes
        .insert("coverage".into(), "Jane_Doe_555_0100".into());
    let intent = contact("c-3", "jane_doe_born_1980");
    let mut signal = contact("c-5", "billing");
    signal.signals = vec!["jane_doe_dob_1970_01_01".into()];
    let mut emergency = contact("c-6", "");
    emergency.urgency = pb::Urgency::Emergency.into();
    emergency.signals = vec!["jane_doe_called_911".into()];
    for request in [undeclared, value, intent, signal, emergency] {
        let refused = c.route_contact(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    let accepted = c
        .route_contact(contact("c-4", "billing"))
        .await
        .unwrap()
        .into_inner();

    let (ok, lines, stderr) = export(&data, &["--outcomes"]);
    assert!(ok, "{stderr}");
    let all = lines
        .iter()
        .map(|l| l.to_string().to_lowercase())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!all.contains("jane"), "{all}");
    assert!(all.contains(&accepted.decision_id), "{all}");
    // Nor anywhere in the database.
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    let bodies: i64 = db
        .query_row(
            "SELECT count(*) FROM commands WHERE lower(body) LIKE '%jane%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(bodies, 0);
}

#[tokio::test]
async fn a_log_written_under_other_routing_rules_is_not_replayed() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let mut p = Process::start_in(&data, &["--policy", policy.as_str()], "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    p.kill9();
    // As if an older build had written it.
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    db.execute(
        "UPDATE meta SET value = '1' WHERE key = 'routing_version'",
        [],
    )
    .unwrap();
    drop(db);
    let why = refused(&data, &policy);
    assert!(why.contains("routes by rules version 1"), "{why}");
    assert!(why.contains("fresh --data-dir"), "{why}");
    // Its records can still be exported; their outcomes cannot be replayed
    // here.
    let (ok, lines, _) = export(&data, &[]);
    assert!(ok && !lines.is_empty());
    let (ok, _, stderr) = export(&data, &["--outcomes"]);
    assert!(!ok);
    assert!(stderr.contains("rules version 1"), "{stderr}");
}

/// Starts careroute on `data` with `args`, registers b1, has a state for
/// an agent nobody registered refused (a refusal the journal keeps) and
/// routes `routed` with a request id; the process, and the answer.
async fn a_refusal_and_a_route(
    data: &std::path::Path,
    args: &[&str],
    routed: &str,
) -> (Process, pb::RouteContactRequest, pb::RouteContactResponse) {
    let p = Process::start_in(data, args, "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    let nobody = c
        .set_agent_state(pb::SetAgentStateRequest {
            agent_id: "nobody".into(),
            state: pb::AgentState::Available.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nobody.code(), Code::NotFound, "{nobody:?}");
    let mut request = contact(routed, "billing");
    request.request_id = format!("req-{routed}");
    let answer = c.route_contact(request.clone()).await.unwrap().into_inner();
    (p, request, answer)
}

/// The journal's records in `data` as stored (seq, body, client), those
/// matching `filter` (an SQL condition).
fn stored(data: &std::path::Path, filter: &str) -> Vec<(i64, String, Option<String>)> {
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    db.prepare(&format!(
        "SELECT seq, body, client FROM commands WHERE {filter} ORDER BY seq"
    ))
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A record's checksum as the journal keeps it: CRC-32 of the body, then
/// a newline and the client if one is named, then a NUL and the result
/// (1 refused, 0 accepted) if one is kept.
fn record_crc(body: &str, client: Option<&str>, refused: Option<bool>) -> i64 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(body.as_bytes());
    if let Some(client) = client {
        crc.update(b"\n");
        crc.update(client.as_bytes());
    }
    if let Some(refused) = refused {
        crc.update(&[0, u8::from(refused)]);
    }
    i64::from(crc.finalize())
}

/// Each record keeps whether it was refused, and a start checks that its
/// replay comes to the same. One that replays to another result (as under
/// a build that decides differently without saying so) would rebuild a
/// state the answers were not given from: the start is refused, naming
/// it, and the export shows it.
#[tokio::test]
async fn a_record_replayed_to_another_result_than_it_had_is_refused_naming_it() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let (mut p, ..) = a_refusal_and_a_route(&data, &args, "c-1").await;
    p.kill9();

    // The log says which one it refused, and that every other was accepted.
    let refused_rows = stored(&data, "refused = 1");
    assert_eq!(refused_rows.len(), 1, "{refused_rows:?}");
    let (seq, body, client_name) = refused_rows.into_iter().next().unwrap();
    assert!(body.contains("nobody"), "{body}");
    assert!(stored(&data, "refused IS NULL").is_empty());
    assert!(!stored(&data, "refused = 0").is_empty());
    let (ok, lines, stderr) = export(&data, &[]);
    assert!(ok, "{stderr}");
    let marked: Vec<_> = lines.iter().filter(|l| l["refused"] == true).collect();
    assert_eq!(marked.len(), 1, "{lines:?}");
    assert_eq!(marked[0]["seq"], seq);

    // A copy where that record says it was accepted, its checksum made to
    // fit: what a build that now refuses it would find.
    let copy = copy_dir(&data);
    let db = rusqlite::Connection::open(copy.join(careroute::journal::FILE)).unwrap();
    db.execute(
        "UPDATE commands SET refused = 0, crc = ?1 WHERE seq = ?2",
        rusqlite::params![record_crc(&body, client_name.as_deref(), Some(false)), seq],
    )
    .unwrap();
    drop(db);
    let why = refused(&copy, &policy);
    assert!(
        why.contains(&format!(
            "record {seq} was accepted when first applied and is refused when replayed"
        )),
        "{why}"
    );
    let (_, lines, stderr) = export(&copy, &["--outcomes"]);
    let line = lines.iter().find(|l| l["seq"] == seq).expect(&stderr);
    assert!(
        line["result"]["diverged"]
            .as_str()
            .is_some_and(|d| d.contains("accepted when first applied")),
        "{line}"
    );
    // The result is inside the checksum: dropped, the record is damaged.
    let copy = copy_dir(&data);
    let db = rusqlite::Connection::open(copy.join(careroute::journal::FILE)).unwrap();
    db.execute(
        "UPDATE commands SET refused = NULL WHERE seq = ?1",
        rusqlite::params![seq],
    )
    .unwrap();
    drop(db);
    let (ok, _, stderr) = export(&copy, &[]);
    assert!(!ok && stderr.contains("checksum"), "{stderr}");

    // The log as written restarts, every record to the result it had.
    let p = Process::start_in(&data, &args, "info");
    let mut c = client(&p).await;
    c.route_contact(contact("c-2", "billing")).await.unwrap();
}

/// A journal of the build before (rules version 4, no result kept per
/// record) is refused as any journal of other rules is, and left as it
/// was found; `careroute journal` still exports it.
#[tokio::test]
async fn a_journal_of_the_build_before_is_refused_as_found_and_still_exported() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let (mut p, ..) = a_refusal_and_a_route(&data, &args, "c-1").await;
    p.kill9();
    // As the build before wrote it: its version, no column, and checksums
    // of the body and the client only.
    let rows = stored(&data, "1");
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    for (seq, body, client_name) in &rows {
        db.execute(
            "UPDATE commands SET crc = ?1 WHERE seq = ?2",
            rusqlite::params![record_crc(body, client_name.as_deref(), None), seq],
        )
        .unwrap();
    }
    db.execute_batch(
        "ALTER TABLE commands DROP COLUMN refused;
         UPDATE meta SET value = '4' WHERE key = 'routing_version';",
    )
    .unwrap();
    drop(db);

    let why = refused(&data, &policy);
    assert!(why.contains("routes by rules version 4"), "{why}");
    let db = rusqlite::Connection::open(data.join(careroute::journal::FILE)).unwrap();
    let columns: i64 = db
        .query_row(
            "SELECT count(*) FROM pragma_table_info('commands') WHERE name = 'refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(columns, 0, "the refused start changed the journal");
    let version: String = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'routing_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "4");
    drop(db);
    let (ok, lines, stderr) = export(&data, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), rows.len());
    assert!(
        lines.iter().all(|l| l.get("refused").is_none()),
        "{lines:?}"
    );
}

/// The last record of the log may have told nothing (a refused command, a
/// tick): a watcher that read the journal up to it resumes after it, and
/// is told what comes next; before and after a restart.
#[tokio::test]
async fn a_watcher_resumes_after_a_record_that_told_nothing() {
    let data = fresh_data_dir();
    let policy = policy_file(&data);
    let args = ["--policy", policy.as_str()];
    let mut p = Process::start_in(&data, &args, "info");
    for round in ["before", "after"] {
        let mut c = client(&p).await;
        agent(&mut c, &format!("b-{round}"), "Billing", "billing").await;
        // Refused, and logged: the log's last record, which told nothing.
        c.set_agent_state(pb::SetAgentStateRequest {
            agent_id: "nobody".into(),
            state: pb::AgentState::Available.into(),
        })
        .await
        .unwrap_err();
        let (ok, lines, stderr) = export(&data, &[]);
        assert!(ok, "{stderr}");
        let last = lines.last().unwrap()["seq"].as_u64().unwrap();
        assert!(lines.last().unwrap()["refused"] == true, "{lines:?}");
        let mut resumed = watch_after(&mut c, last).await.unwrap();
        c.route_contact(contact(&format!("c-{round}"), "billing"))
            .await
            .unwrap();
        let next = next_event(&mut resumed).await;
        assert_eq!(next.sequence, last + 1, "{next:?}");
        // Past the log's end: refused, saying so.
        let ahead = watch_after(&mut c, last + 2).await.unwrap_err();
        assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
        assert!(
            ahead.message().contains("past the log's last record"),
            "{ahead:?}"
        );
        p.kill9();
        p = Process::start_in(&data, &args, "info");
    }
}

/// A caller waiting on a quiet floor adds nothing to the log: the lines
/// are looked at when one fills or its staffing changes, and then only
/// when a queue closes or a grace ends, not on a clock of their own; and a
/// confirmed transfer's reservation leaves no expiry to tick at.
#[tokio::test]
async fn a_caller_waiting_on_a_quiet_floor_adds_no_records() {
    let data = fresh_data_dir();
    let policy = data.join("policy.toml");
    let short = Knobs {
        reservation_ttl: "2s",
        ..KNOBS
    };
    std::fs::write(&policy, floor::policy(&short)).unwrap();
    let policy = policy.to_str().unwrap().to_owned();
    let p = Process::start_in(&data, &["--policy", policy.as_str()], "info");
    let mut c = client(&p).await;
    agent(&mut c, "b1", "Billing", "billing").await;
    busy(&mut c, "on-call", "billing").await;
    queue(&mut c, contact("waits", "billing")).await;
    let logged = stored(&data, "1 = 1").last().map_or(0, |r| r.0);
    // Several of the old once-a-second sweeps, each of which was a record.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let Some(pb::get_contact_status_response::Status::Waiting(w)) = status(&mut c, "waits").await
    else {
        panic!("the caller no longer waits")
    };
    assert_eq!(w.position, 1);
    let after: Vec<String> = stored(&data, &format!("seq > {logged}"))
        .into_iter()
        .map(|(_, body, _)| body)
        .collect();
    assert!(
        after.is_empty(),
        "records while nothing happened: {after:?}"
    );
    drop(p);
}

#[tokio::test]
async fn a_data_directory_careroute_makes_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt;
    let parent = fresh_data_dir();
    let data = parent.join("site").join("journal");
    let p = Process::start_in(&data, &[], "info");
    for dir in [parent.join("site"), data.clone()] {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}: {mode:o}", dir.display());
    }
    drop(p);
}
