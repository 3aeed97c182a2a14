//! `careroute test`: policy unit tests. A test file names a policy (and a
//! roster), then cases: a time, agent states, one contact or a short
//! sequence of calls, and what the answer must be. Each case runs the real
//! engine on a virtual clock, through its one door, with no server; only
//! the keys a case gives are checked. Reading a file ([`spec`]), running it
//! ([`run`]) and reporting ([`report`]) are apart.

pub mod report;
pub mod run;
pub mod spec;

pub use report::{junit, text};
pub use run::{CaseResult, Failure, SuiteResult, run};
pub use spec::{Suite, read};
