//! Where the edge reads the time it hands to the engine: the system clock in
//! production, a manual clock in tests (after-hours, expiry) with no sleeps.

use parking_lot::Mutex;

use crate::model::Time;

/// A source of the current instant.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Time;
}

/// `t` to the microsecond, as a log keeps a command's time: a command
/// is applied at the time it is read back with.
pub fn as_logged(t: Time) -> Time {
    Time::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Time {
        chrono::Utc::now()
    }
}

/// A clock that moves only when told: for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Time>);

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: Time) -> ManualClock {
        ManualClock(Mutex::new(at))
    }

    /// Moves the clock to `at`.
    pub fn set(&self, at: Time) {
        *self.0.lock() = at;
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Time {
        *self.0.lock()
    }
}
