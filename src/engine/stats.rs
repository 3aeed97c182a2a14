//! What each queue has counted since start (answered, abandoned, callbacks)
//! and observed (handle times), from which its service level, abandonment
//! and the wait estimate's handle time come.

use chrono::Duration;

/// Weight of the newest observation in the moving averages.
const EWMA_WEIGHT: f64 = 0.2;
/// Handle times observed before the observed average alone makes the
/// estimate; until then it is blended with the configured `handle_time`
/// in proportion (after 5 of 20, a quarter observed, three quarters
/// configured).
pub const HANDLE_TIMES_TRUSTED: u64 = 20;

/// What one queue counted since start.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct QueueStats {
    /// Contacts that entered the line.
    pub queued: u64,
    /// Waiting contacts whose offer was confirmed.
    pub answered: u64,
    /// Of those, answered within the queue's service-level threshold.
    pub answered_in_time: u64,
    /// Waiting contacts cancelled (the caller hung up).
    pub abandoned: u64,
    /// Callback tickets this queue owns.
    pub callbacks: u64,
    /// Moving average of the handle times observed (seconds), if any.
    pub handle_time: Option<f64>,
    /// Handle times observed.
    pub handle_times_observed: u64,
}

fn ewma(old: Option<f64>, new: f64) -> f64 {
    old.map_or(new, |o| o + EWMA_WEIGHT * (new - o))
}

impl QueueStats {
    /// Share of answered waiting contacts answered within the threshold.
    pub fn service_level(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.answered_in_time as f64 / self.answered as f64)
    }

    /// Share of waiting contacts that hung up before an answer.
    pub fn abandonment(&self) -> Option<f64> {
        let ended = self.answered + self.abandoned;
        (ended > 0).then(|| self.abandoned as f64 / ended as f64)
    }

    /// Records one finished contact's handle time.
    pub fn observe_handle_time(&mut self, d: Duration) {
        let secs = d.num_milliseconds().max(0) as f64 / 1000.0;
        self.handle_time = Some(ewma(self.handle_time, secs));
        self.handle_times_observed += 1;
    }

    /// The handle time the wait estimate uses (seconds): the configured
    /// value blended with the observed average in proportion to how many
    /// have been observed, the observed average alone from
    /// [`HANDLE_TIMES_TRUSTED`] on. One odd call cannot move it far.
    pub fn handle_estimate(&self, configured: Duration) -> f64 {
        let configured = configured.num_milliseconds() as f64 / 1000.0;
        let Some(observed) = self.handle_time else {
            return configured;
        };
        let w = self.handle_times_observed.min(HANDLE_TIMES_TRUSTED) as f64
            / HANDLE_TIMES_TRUSTED as f64;
        w * observed + (1.0 - w) * configured
    }

    pub(super) fn observe_arrival(&mut self) {
        self.queued += 1;
    }
}
