//! Real `nats-server` processes with JetStream for the replication tests:
//! one, or a cluster of three, on free loopback ports, each with its own
//! store directory; frozen, resumed and killed for real. Without the
//! binary the tests say so and skip, unless `CI=true`, where they must run.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `nats-server` binary: on PATH or where Debian puts it.
pub fn binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    let found = on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/nats-server");
        debian.is_file().then_some(debian)
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not installed, and CI=true: the replication tests must run (apt-get install nats-server)"
        );
        eprintln!(
            "SKIPPED: nats-server is not on PATH (apt-get install nats-server); the replication tests did not run"
        );
    }
    found
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One running nats-server.
pub struct Server {
    child: Child,
    pub port: u16,
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
}

/// Starts nats-server with `args`, its log kept if NATS_TEST_LOG names a
/// directory.
fn spawn(binary: &PathBuf, args: &[std::ffi::OsString], port: u16) -> Child {
    Command::new(binary)
        .args(args)
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("NATS_TEST_LOG") {
            Some(logs) => Stdio::from(
                std::fs::File::create(PathBuf::from(logs).join(format!("nats-{port}.log")))
                    .unwrap(),
            ),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap()
}

/// Waits (20 s at most) until a server accepts connections on `port`.
fn wait_for(port: u16) {
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nats-server on port {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Server {
    /// Waits (20 s at most) until it accepts connections; false if it
    /// exited first (its port was taken).
    fn started(&mut self) -> bool {
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server on port {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Sends a signal by name (`STOP`, `CONT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} nats-server failed");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers of one test, and the URL list careroute is given.
pub struct Nats {
    pub servers: Vec<Server>,
    dir: PathBuf,
}

impl Nats {
    /// `n` servers (1, or a cluster of 3), JetStream on, each accepting
    /// connections; `None` (the test skips) without the binary.
    pub fn start(n: usize) -> Option<Nats> {
        Nats::start_with(n, "")
    }

    /// [`Nats::start`] with a configuration file of `conf` (TLS,
    /// authorization) under the command line's settings.
    pub fn start_with(n: usize, conf: &str) -> Option<Nats> {
        let binary = binary()?;
        // A port picked free may be taken before the server binds it (by
        // another test's process): that server exits, and the cluster is
        // started again on other ports.
        for _ in 0..3 {
            let mut nats = Nats::spawn_cluster(&binary, n, conf);
            if nats.servers.iter_mut().all(Server::started) {
                return Some(nats);
            }
            eprintln!("a nats-server could not take its port; starting again on others");
            drop(nats);
        }
        panic!("nats-server did not start on three sets of free ports");
    }

    /// `n` servers of `binary` on ports free when picked, not waited for.
    fn spawn_cluster(binary: &PathBuf, n: usize, conf: &str) -> Nats {
        let dir = std::env::temp_dir().join(format!(
            "careroute-nats-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, cluster)| format!("nats://127.0.0.1:{cluster}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, (port, cluster)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).unwrap();
            let mut args: Vec<std::ffi::OsString> = Vec::new();
            if !conf.is_empty() {
                let file = dir.join(format!("n{i}.conf"));
                std::fs::write(&file, conf).unwrap();
                args.extend(["-c".into(), file.into()]);
            }
            let port_text = port.to_string();
            args.extend(["-a", "127.0.0.1", "-p", &port_text, "-js", "-sd"].map(Into::into));
            args.push(store.into());
            args.extend(["-n".into(), format!("n{i}").into()]);
            if n > 1 {
                args.extend(
                    [
                        "--cluster_name",
                        "careroute-test",
                        "--cluster",
                        &format!("nats://127.0.0.1:{cluster}"),
                        "--routes",
                        &routes,
                    ]
                    .map(Into::into),
                );
            }
            servers.push(Server {
                child: spawn(binary, &args, *port),
                port: *port,
                binary: binary.clone(),
                args,
            });
        }
        Nats { servers, dir }
    }

    /// Stops every server and starts it again, on its ports and its
    /// store, with the configuration `conf`: every client reconnects.
    pub fn restart_with(&mut self, conf: &str) {
        for (i, server) in self.servers.iter_mut().enumerate() {
            let _ = server.child.kill();
            let _ = server.child.wait();
            std::fs::write(self.dir.join(format!("n{i}.conf")), conf).unwrap();
            server.child = spawn(&server.binary, &server.args, server.port);
        }
        for s in &self.servers {
            wait_for(s.port);
        }
    }

    /// A JetStream client of the first server, to look at what careroute
    /// keeps there.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(format!("nats://127.0.0.1:{}", self.servers[0].port))
            .await
            .expect("connect to nats-server");
        async_nats::jetstream::new(client)
    }

    /// The first record the log of `cluster` keeps.
    pub async fn first_record(&self, cluster: &str) -> u64 {
        let js = self.jetstream().await;
        let mut stream = js.get_stream(format!("CAREROUTE_{cluster}")).await.unwrap();
        stream.info().await.unwrap().state.first_sequence
    }

    /// The URLs of every server, as `--journal` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
