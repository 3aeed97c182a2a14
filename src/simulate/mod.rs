//! `careroute simulate`: a day in the life. The real engine routes a day
//! (or several) of demand on a virtual clock, with the agents of a shift
//! plan, far faster than real time; per queue and half-hour it reports
//! what happened (offered, answered, service level, speed of answer,
//! abandonment, callbacks, occupancy) beside Erlang C's prediction. Inputs
//! ([`input`]), the run ([`run`]), the formula ([`erlang`]) and the
//! reports ([`report`]) are apart; `--staff-for`'s search for the fewest
//! agents ([`staff`]) runs the same days half-hour by half-hour; [`cli`]
//! is the command around them. No server, no runtime: it drives the engine
//! directly, as a log replay does.

pub mod cli;
pub mod erlang;
pub mod input;
pub mod report;
pub mod run;
pub mod staff;

pub use cli::{Args, command};
pub use input::{Demand, Shift, read_demand, read_shifts};
pub use run::{QueueRun, Run, SimulateError, Slot, run};
pub use staff::{Goal, Staffing, staff_for};
