//! careroute decides, in microseconds, where a patient's contact goes: a warm
//! transfer to a reserved agent, a callback ticket with its deadline, the
//! emergency script, or "authenticate first", following a routing policy that
//! operations staff write and check as a TOML file.
//!
//! # Layout
//!
//! - [`model`]: the shared vocabulary (channels, urgency, identity, contacts).
//! - [`policy`]: the policy file: parsing, validation, schedules, and the pure
//!   rule and guard evaluation ([`policy::Policy::plan`]).
//! - [`engine`]: the pure synchronous core: agents, per-queue free-agent
//!   indexes, reservations with TTLs, contact paths, [`engine::Engine::route`].
//! - [`roster`]: roster files (the demo agents loaded at start).
//! - [`grpc`]: the edge: generated types, validation and conversion, the
//!   service, and the one mapping of engine errors to gRPC status codes.
//! - [`telemetry`]: metric names, descriptions, the exporter and tracing setup.
//! - [`clock`]: the time source the edge hands to the engine.
//! - [`config`]: typed settings from flags and environment.
//! - [`server`]: wiring: listeners, health, reflection, metrics, drain.

pub mod clock;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod model;
pub mod policy;
pub mod roster;
pub mod server;
pub mod telemetry;
