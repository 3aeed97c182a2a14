//! The real binary as a child process: started with JSON logs on free
//! loopback ports, its log lines collected, signalled and waited for, so
//! tests can cause faults for real (SIGHUP, SIGTERM, kill -9).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// A new, empty directory under the system's temporary directory,
/// removed with everything in it when dropped: a test's journal or files
/// do not outlive it.
pub struct ScratchDir(tempfile::TempDir);

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for ScratchDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// A new, empty directory named after `what` it holds.
pub fn scratch_dir(what: &str) -> ScratchDir {
    ScratchDir(
        tempfile::Builder::new()
            .prefix(&format!("careroute-{what}-"))
            .tempdir()
            .unwrap(),
    )
}

/// A file in a directory of its own, both removed when dropped.
pub struct ScratchFile {
    path: std::path::PathBuf,
    _dir: ScratchDir,
}

impl std::ops::Deref for ScratchFile {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::path::Path> for ScratchFile {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for ScratchFile {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

/// File `name` holding `text`, in a new directory named after `what`.
pub fn scratch_file(what: &str, name: &str, text: &str) -> ScratchFile {
    let dir = scratch_dir(what);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    ScratchFile { path, _dir: dir }
}

/// A new, empty directory for one process's journal.
pub fn fresh_data_dir() -> ScratchDir {
    scratch_dir("journal")
}

/// A running careroute process.
pub struct Process {
    pub child: Child,
    pub grpc: String,
    pub metrics: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// What the process was started in, when it was made for it alone:
    /// removed after the process is killed.
    scratch: Vec<ScratchDir>,
}

impl Process {
    /// Starts the binary with `args` (after loopback listeners on free
    /// ports and JSON logs) and waits for its start-up event.
    pub fn start(args: &[&str]) -> Process {
        Process::start_logging(args, "info")
    }

    /// [`Process::start`] with `RUST_LOG` set to `log`.
    pub fn start_logging(args: &[&str], log: &str) -> Process {
        let data_dir = fresh_data_dir();
        Process::start_in(&data_dir, args, log).keeping(data_dir)
    }

    /// [`Process::start_logging`] with its journal in `data_dir` (a restart
    /// on the same directory replays the log of the process before).
    pub fn start_in(data_dir: &std::path::Path, args: &[&str], log: &str) -> Process {
        Process::start_with_env(data_dir, args, log, &[])
    }

    /// [`Process::start_in`] with environment variables set.
    pub fn start_with_env(
        data_dir: &std::path::Path,
        args: &[&str],
        log: &str,
        env: &[(&str, &str)],
    ) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_careroute"))
            .envs(env.iter().copied())
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", log)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = Arc::clone(&lines);
            let stderr = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let mut p = Process {
            child,
            grpc: String::new(),
            metrics: String::new(),
            lines,
            reader: Some(reader),
            scratch: Vec::new(),
        };
        let serving = p.wait_for_log("careroute serving", Duration::from_secs(30));
        let serving: serde_json::Value = serde_json::from_str(&serving).unwrap();
        p.grpc = serving["fields"]["grpc"].as_str().unwrap().to_owned();
        p.metrics = serving["fields"]["metrics"].as_str().unwrap().to_owned();
        p
    }

    /// The process, keeping `dir` until it is dropped (after the process
    /// is killed, so nothing writes into a removed directory).
    pub fn keeping(mut self, dir: ScratchDir) -> Process {
        self.scratch.push(dir);
        self
    }

    /// The first log line containing `text`, waiting up to `within`.
    pub fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            assert!(
                started.elapsed() < within,
                "no log line with {text:?} in {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` until `n` log lines contain `text`; returns the
    /// `n`th.
    pub fn wait_for_nth_log(&self, text: &str, n: usize, within: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .nth(n - 1)
            {
                return l.clone();
            }
            assert!(
                started.elapsed() < within,
                "fewer than {n} log lines with {text:?} in {within:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// The exit status, if the process ends within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return Some(status);
            }
            if started.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10))
            .expect("still running 10 s after kill -9")
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `careroute journal` with `args`: whether it succeeded, its JSON lines,
/// and its stderr.
pub fn journal(args: &[&str]) -> (bool, Vec<serde_json::Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_careroute"))
        .arg("journal")
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
