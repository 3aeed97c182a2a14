//! Estimated wait time for a contact at a position in line. Pure
//! arithmetic.
//!
//! A contact waits only while every agent of its pool is busy. Then, with
//! `agents` agents each taking `handle_time` on average, one frees up every
//! `handle_time / agents` on average, and the contact at 1-based
//! `position` is reached after `position` of them: `position x handle_time
//! / agents`. (For exponential handle times this is exact; Erlang C's
//! average speed of answer is the same quantity averaged over every
//! arrival, most of which never wait, so it does not describe a contact
//! known to be waiting. Used per contact it also explodes as the measured
//! load nears the agents, which the simulator showed sending callers to
//! callbacks with three waiting.)

/// Seconds a contact at 1-based `position` can expect to wait while all
/// `agents` (at least one is assumed) are busy with contacts of
/// `handle_time` seconds on average.
pub fn estimated_wait(position: u32, agents: u32, handle_time: f64) -> f64 {
    f64::from(position) * handle_time / f64::from(agents.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_the_time_to_free_as_many_agents_as_are_ahead() {
        assert_eq!(estimated_wait(1, 4, 300.0), 75.0);
        assert_eq!(estimated_wait(3, 2, 300.0), 450.0);
        assert_eq!(estimated_wait(8, 0, 60.0), 480.0);
        let mut last = 0.0;
        for position in 1..=20 {
            let w = estimated_wait(position, 10, 180.0);
            assert!(w > last, "position {position}: {w} after {last}");
            last = w;
        }
    }
}
