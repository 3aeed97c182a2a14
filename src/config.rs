//! Typed settings: command-line flags with environment overrides and safe
//! defaults (loopback listeners, the embedded policy).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// careroute: healthcare contact routing over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do; without one, serve.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings of the service.
    #[command(flatten)]
    pub serve: Config,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default). Its flags may come before or after
    /// `serve`.
    Serve,
    /// Validate policy files and exit: non-zero with file, line and field on
    /// the first error of each.
    Check {
        /// Policy files to check.
        #[arg(required = true)]
        policies: Vec<PathBuf>,
    },
    /// Run policy unit tests: each case of each file routes on the real
    /// engine at its own time, and its answer is checked. Non-zero if a
    /// case fails or a file is refused (file, line and field).
    Test {
        /// Test files (`examples/healthcare.test.toml` shows the format).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write the results as JUnit XML here, for CI systems.
        #[arg(long)]
        junit: Option<PathBuf>,
    },
    /// Rehearse a day: the real engine routes the demand of --demand on a
    /// virtual clock with the shift plan of --roster (and --policy, or the
    /// embedded one), and reports per queue and half-hour beside Erlang C:
    /// a table here, DIR/queues.csv and the chart DIR/day.svg. With
    /// --staff-for, finds the fewest agents per queue and half-hour that
    /// meet the goal instead (DIR/staffing.csv too).
    Simulate {
        /// The demand: arrivals by half-hour, handle times, patience.
        #[arg(long)]
        demand: PathBuf,
        /// Where queues.csv and day.svg go (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Show progress on stderr (also when stderr is a terminal).
        #[arg(long)]
        progress: bool,
        /// Find the fewest agents per queue and half-hour that meet
        /// --goal and --max-abandonment, by simulation, beside Erlang C's.
        /// Each queue's agents copy the --roster agent that qualifies for
        /// it and the fewest other queues (the roster is optional: without
        /// it, an agent with exactly the queue's skills, one contact at a
        /// time); the shift times are not used.
        #[arg(long)]
        staff_for: bool,
        /// With --staff-for: the percentage to answer within each queue's
        /// `service_level` threshold.
        #[arg(long, default_value_t = 80.0, value_parser = percent, requires = "staff_for")]
        goal: f64,
        /// With --staff-for: the largest percentage of callers who may
        /// hang up while waiting.
        #[arg(long, default_value_t = 5.0, value_parser = percent, requires = "staff_for")]
        max_abandonment: f64,
    },
    /// Print a range of the journal as JSON lines, for audit, without
    /// starting the service (it may be running): the local journal in
    /// --data-dir, or with --journal the log of --cluster-id on NATS. Exits
    /// non-zero if a record in the range cannot be read (it is reported
    /// and skipped).
    Journal {
        /// The first record (sequence number; default: the first one kept,
        /// as snapshots compact the log before them).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        from: Option<u64>,
        /// The last record (default: the last one kept).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to: Option<u64>,
        /// Replay the log (from the snapshot before `--from`) to show what
        /// each command decided: decision, rule, reasons, outcome, agent,
        /// reservation, or the refusal; and what it set off.
        #[arg(long)]
        outcomes: bool,
    },
}

/// A percentage, 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{s}` is not a percentage"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err("a percentage from 0 to 100".into());
    }
    Ok(p)
}

/// A ratio, 0 to 1.
fn ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err("a ratio from 0 to 1".into());
    }
    Ok(r)
}

/// An OTLP/gRPC collector URL: `http://` or `https://`, with a host.
fn otlp_endpoint(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("`{s}` is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "`{s}` is not an http:// or https:// URL with a host"
        ));
    }
    Ok(s.to_owned())
}

/// A duration of at least a second.
fn at_least_a_second(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".into());
    }
    Ok(d)
}

/// One or more `nats://HOST:PORT` URLs, separated by commas.
fn nats_urls(s: &str) -> Result<String, String> {
    for url in s.split(',') {
        let rest = url
            .trim()
            .strip_prefix("nats://")
            .ok_or_else(|| format!("`{url}` is not a nats://HOST:PORT URL"))?;
        if rest.is_empty() {
            return Err(format!("`{url}` names no host"));
        }
    }
    Ok(s.to_owned())
}

/// Whether a `nats://HOST:PORT` URL names this machine (localhost or a
/// loopback address).
fn nats_loopback(url: &str) -> bool {
    let rest = url.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    // Credentials in the URL (user:pass@) are not the host.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => rest.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A cluster id usable in stream and bucket names.
fn cluster_id(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("1 to 32 letters, digits, `-` or `_`".into())
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people at a terminal.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// When a journal batch counts as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JournalSync {
    /// Handed to the operating system: survives the process (kill -9), not
    /// a power loss.
    Write,
    /// On disk (fsync): survives a power loss; slower.
    Fsync,
}

/// Settings of the running service.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Where the journal lives (created if missing): every change to routing
    /// state, replayed at start.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_DATA_DIR",
        default_value = "careroute-data"
    )]
    pub data_dir: PathBuf,
    /// Keep no journal: state lives in this process's memory only, and a
    /// restart starts empty.
    #[arg(global = true, long, env = "CAREROUTE_NO_JOURNAL")]
    pub no_journal: bool,
    /// When an answer may leave: once its command's batch is handed to the
    /// operating system (write) or on disk (fsync).
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_JOURNAL_SYNC",
        value_enum,
        default_value = "write"
    )]
    pub journal_sync: JournalSync,
    /// Put the log on a NATS JetStream stream instead of --data-dir
    /// (`nats://HOST:PORT`, several separated by commas): processes on the
    /// same --cluster-id elect one leader; the others are hot standbys.
    #[arg(global = true, long, env = "CAREROUTE_JOURNAL", value_parser = nats_urls)]
    pub journal: Option<String>,
    /// Names the stream, the lease and the metadata buckets of one
    /// replicated log (letters, digits, `-` and `_`).
    #[arg(global = true, long, env = "CAREROUTE_CLUSTER_ID", default_value = "careroute", value_parser = cluster_id)]
    pub cluster_id: String,
    /// Replicas of the stream and buckets when this process creates them
    /// (3 in production: a NATS server may be lost; 1 for a demo).
    #[arg(global = true, long, env = "CAREROUTE_NATS_REPLICAS", default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=5))]
    pub nats_replicas: usize,
    /// How long the leader's lease lasts unless renewed: a standby takes
    /// over this long after the leader stops renewing it.
    #[arg(global = true, long, env = "CAREROUTE_LEASE_TTL", default_value = "3s", value_parser = at_least_a_second)]
    pub lease_ttl: Duration,
    /// NATS authentication: a file holding an NKEY user seed (`SU...`); it
    /// signs the server's challenge and is never sent.
    #[arg(global = true, long, env = "CAREROUTE_NATS_NKEY_SEED")]
    pub nats_nkey_seed: Option<PathBuf>,
    /// The CA certificates (PEM) the NATS servers' certificates must chain
    /// to; with it, the connection to NATS must be TLS.
    #[arg(global = true, long, env = "CAREROUTE_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// For NATS servers that verify clients (mutual TLS): this process's
    /// certificate (PEM); with --nats-key and --nats-ca.
    #[arg(global = true, long, env = "CAREROUTE_NATS_CERT", requires_all = ["nats_key", "nats_ca"])]
    pub nats_cert: Option<PathBuf>,
    /// The private key of --nats-cert (PEM).
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_NATS_KEY",
        requires = "nats_cert"
    )]
    pub nats_key: Option<PathBuf>,
    /// The gRPC address standbys name as the leader's when this process
    /// leads (default: --grpc-addr as bound).
    #[arg(global = true, long, env = "CAREROUTE_ADVERTISE")]
    pub advertise: Option<String>,
    /// A snapshot of the state is taken once this many commands were
    /// logged since the last one, and the log before the previous snapshot
    /// is compacted: a restart replays at most this many commands.
    #[arg(global = true, long, env = "CAREROUTE_SNAPSHOT_EVERY", default_value_t = 100_000,
        value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..))]
    pub snapshot_every: u64,
    /// And at least this often while commands are logged.
    #[arg(global = true, long, env = "CAREROUTE_SNAPSHOT_INTERVAL", default_value = "5m", value_parser = at_least_a_second)]
    pub snapshot_interval: Duration,
    /// Routing events kept for WatchEvents watchers that resume: the log's
    /// last (whole commands), told again by a restart's replay and kept by
    /// a standby as it follows; older ones are read from the journal.
    /// Each holds its wire form (a decision's is its whole answer), so this
    /// bounds the memory it takes.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_EVENT_RETENTION",
        default_value_t = 10_000
    )]
    pub event_retention: usize,
    /// Who may call what: a TOML file of clients, each with the SHA-256 of
    /// its bearer token and its roles (route, cti, observe, admin). Without
    /// it every call is accepted.
    #[arg(global = true, long, env = "CAREROUTE_CREDENTIALS")]
    pub credentials: Option<PathBuf>,
    /// The server's certificate chain (PEM): with --tls-key, both
    /// listeners speak TLS only. Re-read when the file changes, so a
    /// rotated certificate is served without a restart.
    #[arg(global = true, long, env = "CAREROUTE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(global = true, long, env = "CAREROUTE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: the CA certificates (PEM) that sign client certificates.
    /// A gRPC client without a certificate they sign is refused at the
    /// handshake; a client's identity is then its certificate's names
    /// (matched against `certificate` in --credentials).
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Listen on an address other than loopback without TLS or without
    /// credentials. Without it such a start is refused: anyone who reaches
    /// the port could route contacts, reserve agents and change them.
    #[arg(global = true, long, env = "CAREROUTE_INSECURE")]
    pub insecure: bool,
    /// gRPC listen address.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_GRPC_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub grpc_addr: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_addr: SocketAddr,
    /// Policy file; without it the embedded healthcare policy. SIGHUP reloads
    /// it; an invalid file is refused and the running policy stays.
    #[arg(global = true, long, env = "CAREROUTE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Roster file of agents registered at start. Without --policy and
    /// without --roster, the embedded demo roster is loaded.
    #[arg(global = true, long, env = "CAREROUTE_ROSTER")]
    pub roster: Option<PathBuf>,
    /// Start with no agents even on the embedded policy.
    #[arg(global = true, long, env = "CAREROUTE_NO_DEMO_ROSTER")]
    pub no_demo_roster: bool,
    /// Export a trace span per RPC over OTLP/gRPC to this collector (e.g.
    /// `http://otel-collector:4317`). Off when not set: then no span is made.
    #[arg(global = true, long, env = "CAREROUTE_OTLP_ENDPOINT", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// The share of calls without a `traceparent` that are traced (0 to 1).
    /// A call with one follows its caller: traced if the caller sampled its
    /// trace, not traced if it did not.
    #[arg(global = true, long, env = "CAREROUTE_TRACE_SAMPLE_RATIO", default_value_t = 0.01, value_parser = ratio)]
    pub trace_sample_ratio: f64,
    /// Log format.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// Largest number of concurrent requests per connection.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_CONCURRENCY_PER_CONNECTION",
        default_value_t = 256
    )]
    pub concurrency_per_connection: usize,
    /// How long a RouteContact retry with the same request_id gets the
    /// first decision back.
    #[arg(global = true, long, env = "CAREROUTE_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub idempotency_window: Duration,
    /// The peak rate of new RouteContact requests (with a request_id) the
    /// idempotency window holds in full; memory is sized from it (window x
    /// rate entries). Above it, the oldest ids are forgotten early and
    /// counted in careroute_idempotency_evictions_total.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_PEAK_CONTACTS_PER_SECOND",
        default_value_t = 1000
    )]
    pub peak_contacts_per_second: u32,
    /// How long a contact's path is kept (GetContactPath).
    #[arg(global = true, long, env = "CAREROUTE_PATH_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub path_window: Duration,
    /// Contacts whose paths are kept at most; beyond it the oldest are
    /// forgotten early and counted in careroute_path_evictions_total.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_MAX_CONTACT_PATHS",
        default_value_t = 2_000_000
    )]
    pub max_contact_paths: usize,
    /// Agents registered at most (roster file and UpsertAgent); a new agent
    /// beyond it is refused with RESOURCE_EXHAUSTED. At most 16,777,216 (the
    /// agent slots the engine's idle indexes can name).
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_MAX_AGENTS",
        default_value_t = 100_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_777_216)
    )]
    pub max_agents: usize,
    /// Largest number of calls in flight across all connections; beyond it
    /// calls are refused at once with RESOURCE_EXHAUSTED, so accepted calls
    /// keep their latency. Health checks and client streams are exempt.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_MAX_IN_FLIGHT",
        default_value_t = 512
    )]
    pub max_in_flight: usize,
    /// Largest number of concurrent HTTP/2 streams per connection. Under
    /// overload this bounds the work queued on each connection, and so how
    /// long a new connection waits for its first answer (benches/overload.sh).
    /// Long-lived streams (WatchAssignments, StreamAgentStates) hold a slot
    /// each for their life.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_MAX_STREAMS",
        default_value_t = 8
    )]
    pub max_concurrent_streams: u32,
    /// On SIGTERM, how long to keep serving while health reports
    /// NOT_SERVING (and /readyz 503), so load balancers move traffic away
    /// before the listeners close.
    #[arg(
        global = true,
        long,
        env = "CAREROUTE_DRAIN_GRACE_MS",
        default_value_t = 0
    )]
    pub drain_grace_ms: u64,
    /// After the drain grace, how long requests in flight and open streams
    /// (assignment watches, health watches, agent-state streams) get to
    /// finish before they are cut and the process exits.
    #[arg(global = true, long, env = "CAREROUTE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// How long a new connection has to finish its TLS handshake (with
    /// TLS), and then again to send the HTTP/2 preface, before it is
    /// closed.
    #[arg(global = true, long, env = "CAREROUTE_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// How long a call whose client sends one message has to arrive and be
    /// answered (a request trickled in slowly is answered DEADLINE_EXCEEDED).
    /// Client streams are exempt.
    #[arg(global = true, long, env = "CAREROUTE_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl Config {
    /// Defaults with both listeners on 127.0.0.1 and OS-chosen ports: tests.
    pub fn ephemeral() -> Config {
        Cli::parse_from([
            "careroute",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--no-journal",
        ])
        .serve
    }

    /// Refuses to use a log on NATS other than on loopback without TLS and
    /// authentication, unless --insecure says to: the service and
    /// `careroute journal` both read it.
    pub fn nats_exposure(&self) -> Result<(), String> {
        let Some(urls) = &self.journal else {
            return Ok(());
        };
        if self.insecure || urls.split(',').all(nats_loopback) {
            return Ok(());
        }
        let mut missing = Vec::new();
        if self.nats_ca.is_none() {
            missing.push("TLS (--nats-ca)");
        }
        if self.nats_nkey_seed.is_none() {
            missing.push("authentication (--nats-nkey-seed)");
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to use the log on {urls} without {}: anyone who reaches NATS could read the log and append commands every careroute applies. Configure {}, use NATS on 127.0.0.1, or give --insecure to run exposed anyway",
            missing.join(" or "),
            missing.join(" and "),
        ))
    }

    /// Refuses to expose the service: a listener on an address other than
    /// loopback needs TLS and credentials, unless --insecure says to run
    /// without. The refusal says what to configure.
    pub fn exposure(&self) -> Result<(), String> {
        if self.insecure {
            return Ok(());
        }
        let exposed: Vec<String> = [self.grpc_addr, self.metrics_addr]
            .iter()
            // ::ffff:127.0.0.1 is loopback too; :: and 0.0.0.0 are not.
            .filter(|addr| !addr.ip().to_canonical().is_loopback())
            .map(ToString::to_string)
            .collect();
        let mut missing = Vec::new();
        if self.tls_cert.is_none() || self.tls_key.is_none() {
            missing.push("TLS (--tls-cert and --tls-key)");
        }
        if self.credentials.is_none() {
            missing.push("credentials (--credentials)");
        }
        self.nats_exposure()?;
        if exposed.is_empty() || missing.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {} without {}: anyone who reaches the port could route contacts, reserve agents and change them. Configure {}, listen on 127.0.0.1, or give --insecure to run exposed anyway",
            exposed.join(" and "),
            missing.join(" or "),
            missing.join(" and "),
        ))
    }

    /// What `--insecure` lets through that would be refused without it,
    /// for the start to say at warning level.
    pub fn insecure_exposure(&self) -> Option<String> {
        if !self.insecure {
            return None;
        }
        let strict = Config {
            insecure: false,
            ..self.clone()
        };
        strict.exposure().err()
    }

    /// Whether the embedded demo roster is loaded.
    pub fn wants_demo_roster(&self) -> bool {
        self.policy.is_none() && self.roster.is_none() && !self.no_demo_roster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_listen_unprotected() {
        let with = |grpc: &str, metrics: &str, protect: &dyn Fn(&mut Config)| {
            let mut config = Config::ephemeral();
            config.grpc_addr = grpc.parse().unwrap();
            config.metrics_addr = metrics.parse().unwrap();
            protect(&mut config);
            config.exposure()
        };
        let open = |_: &mut Config| {};
        for loopback in [
            "127.0.0.1:1",
            "127.8.9.10:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(with(loopback, "127.0.0.1:2", &open).is_ok(), "{loopback}");
        }
        for exposed in ["0.0.0.0:1", "[::]:1", "10.0.0.7:1", "[::ffff:10.0.0.7]:1"] {
            let refused = with(exposed, "127.0.0.1:2", &open).unwrap_err();
            assert!(refused.starts_with("refusing to listen on "), "{refused}");
            // Either listener counts.
            assert!(with("127.0.0.1:1", exposed, &open).is_err(), "{exposed}");
        }
        let tls = |c: &mut Config| {
            c.tls_cert = Some("c".into());
            c.tls_key = Some("k".into());
        };
        let full = |c: &mut Config| {
            tls(c);
            c.credentials = Some("creds".into());
        };
        let half_tls = |c: &mut Config| {
            c.tls_cert = Some("c".into());
            c.credentials = Some("creds".into());
        };
        assert!(with("0.0.0.0:1", "0.0.0.0:2", &full).is_ok());
        assert!(with("0.0.0.0:1", "0.0.0.0:2", &tls).is_err());
        assert!(with("0.0.0.0:1", "0.0.0.0:2", &half_tls).is_err());
        assert!(with("0.0.0.0:1", "0.0.0.0:2", &|c| c.insecure = true).is_ok());
        // What --insecure let through is said; nothing when it let nothing.
        let warned = |grpc: &str, insecure: bool| {
            let mut config = Config::ephemeral();
            config.grpc_addr = grpc.parse().unwrap();
            config.insecure = insecure;
            config.insecure_exposure()
        };
        let said = warned("0.0.0.0:1", true).unwrap();
        assert!(said.contains("0.0.0.0:1"), "{said}");
        assert_eq!(warned("127.0.0.1:1", true), None);
        assert_eq!(warned("0.0.0.0:1", false), None);
    }

    #[test]
    fn a_log_on_nats_beyond_loopback_needs_tls_and_authentication() {
        let with = |urls: &str, protect: &dyn Fn(&mut Config)| {
            let mut config = Config::ephemeral();
            config.journal = Some(urls.to_owned());
            protect(&mut config);
            config.exposure()
        };
        let open = |_: &mut Config| {};
        for local in [
            "nats://127.0.0.1:4222",
            "nats://localhost:4222,nats://[::1]:4223",
        ] {
            assert!(with(local, &open).is_ok(), "{local}");
        }
        for remote in [
            "nats://nats.nats.svc:4222",
            "nats://127.0.0.1:4222,nats://10.0.0.9:4222",
            "nats://user:pw@10.0.0.9:4222",
            "nats://[2001:db8::1]:4222",
        ] {
            let refused = with(remote, &open).unwrap_err();
            assert!(
                refused.starts_with("refusing to use the log on "),
                "{refused}"
            );
            assert!(refused.contains("--nats-ca") && refused.contains("--nats-nkey-seed"));
        }
        let remote = "nats://nats.nats.svc:4222";
        assert!(with(remote, &|c| c.nats_ca = Some("ca".into())).is_err());
        assert!(with(remote, &|c| c.nats_nkey_seed = Some("seed".into())).is_err());
        let both = |c: &mut Config| {
            c.nats_ca = Some("ca".into());
            c.nats_nkey_seed = Some("seed".into());
        };
        assert!(with(remote, &both).is_ok());
        assert!(with(remote, &|c| c.insecure = true).is_ok());
    }
}
