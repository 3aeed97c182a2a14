//! careroute decides, in microseconds, where a patient's contact goes: a warm
//! transfer to a reserved agent, a callback ticket with its deadline, the
//! emergency script, or "authenticate first", following a routing policy that
//! operations staff write and check as a TOML file.
//!
//! # Layout
//!
//! - [`model`]: the shared vocabulary (channels, urgency, identity, contacts).
//! - [`shape`]: what ids, words, values, language tags and addresses may
//!   hold, checked alike in requests, policy files and roster files.
//! - [`policy`]: the policy file: parsing, validation, schedules, and the pure
//!   rule and guard evaluation ([`policy::Policy::plan`]).
//! - [`engine`]: the pure synchronous core: agents, per-queue free-agent
//!   indexes, reservations with TTLs, live queueing (waiting lines ordered by
//!   priority and age, assignment when an agent frees up, the estimated
//!   wait), contact paths; every change a command through its one door,
//!   [`engine::Engine::apply`].
//! - [`journal`]: the log of those commands, written before each answer
//!   leaves: on disk (SQLite, snapshotted from a shadow engine, replayed
//!   from the last snapshot at start) or on a NATS JetStream stream.
//! - [`replication`]: leader and hot standbys on the NATS log: the lease,
//!   the terms, following the log, snapshots taken by standbys.
//! - [`audit`]: the log read by a person (`careroute journal`).
//! - [`auth`]: who may call what: roles, the RPCs of each, the credentials
//!   file.
//! - [`roster`]: roster files (the demo agents loaded at start).
//! - [`file`]: errors in policy and roster files, with file, line and field.
//! - [`grpc`]: the edge: generated types, validation and conversion, the
//!   service, and the one mapping of engine errors to gRPC status codes.
//! - [`incoming`]: accepted connections with a deadline for the HTTP/2
//!   preface.
//! - [`tls`]: TLS on both listeners: the files, re-read when they change,
//!   the handshakes off the accept loop, the names of client certificates.
//! - [`secrets`]: the TLS and credentials files at start, and watched for
//!   changes.
//! - [`policy_test`]: `careroute test`, policy unit tests on the engine
//!   and a virtual clock.
//! - [`simulate`]: `careroute simulate`, a day of demand through the engine
//!   on a virtual clock, beside Erlang C.
//! - [`telemetry`]: metric names, descriptions, the exporter and tracing setup.
//! - [`clock`]: the time source the edge hands to the engine.
//! - [`config`]: typed settings from flags and environment.
//! - [`shared`]: the engine behind its one lock, and whether this process
//!   may change it (its role); a panic under it halts the service (fail
//!   fast) through the fatal signal.
//! - [`reload`]: the policy file re-read on SIGHUP and when it changes, and
//!   which changes are news to the log.
//! - [`server`]: wiring: listeners, health, reflection, metrics, drain,
//!   supervised background tasks.

//!
//! # Example
//!
//! The engine is usable without any runtime: every change is a command,
//! applied with its time through `Engine::apply`.
//!
//! ```
//! use std::sync::Arc;
//! use careroute::engine::{
//!     AgentSpec, Engine, EngineConfig, Outcome, Route, SetAgentState, UpsertAgent,
//! };
//! use careroute::model::{AgentState, Channel, Contact, Identity};
//! use careroute::policy::Policy;
//! use chrono::{TimeZone, Utc};
//!
//! let policy = Arc::new(Policy::embedded()?);
//! let mut engine = Engine::new(policy, EngineConfig::default());
//! // Monday 2026-11-23, 10:00 in New York: billing is open.
//! let now = Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).unwrap();
//! let agent = AgentSpec {
//!     id: "b1".into(),
//!     team: "Billing".into(),
//!     transfer_address: "sip:1201@pbx".into(),
//!     skills: vec![("billing".into(), 3)],
//!     languages: vec!["en".into()],
//!     channels: vec![(Channel::Voice, 1)],
//! };
//! engine.apply(UpsertAgent(agent), now)?;
//! let available = SetAgentState { agent_id: "b1".into(), state: AgentState::Available };
//! engine.apply(available, now)?;
//!
//! let mut contact = Contact::new("c-1", "billing");
//! contact.identity = Identity::Verified;
//! let decision = engine.apply(Route(&contact), now)?;
//! let Outcome::Agent(offer) = &decision.outcome else { panic!("{decision:?}") };
//! assert_eq!(&*offer.agent_id, "b1");
//! assert_eq!(decision.rule_id.as_deref(), Some("billing"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod engine;
pub mod file;
pub mod grpc;
pub mod incoming;
pub mod journal;
pub mod model;
pub mod policy;
pub mod policy_test;
pub mod reload;
pub mod replication;
pub mod roster;
pub mod secrets;
pub mod server;
pub mod shape;
pub mod shared;
pub mod simulate;
pub mod telemetry;
pub mod tls;
