//! Estimated wait time: Erlang C when the queue is in steady state, with
//! "position x handle time / agents" as the floor. Pure arithmetic.

/// Erlang C: the probability that an arrival waits, for `agents` servers and
/// an offered load of `erlangs` (arrival rate x handle time); 1 when the
/// load meets or exceeds the agents.
pub fn erlang_c(agents: u32, erlangs: f64) -> f64 {
    let n = f64::from(agents);
    if agents == 0 || erlangs >= n {
        return 1.0;
    }
    // Erlang B by its stable recurrence, then C from B. Past the load, B
    // falls faster than geometrically; once it is negligible, so is C.
    let mut b = 1.0;
    for k in 1..=agents {
        b = erlangs * b / (f64::from(k) + erlangs * b);
        if b < 1e-15 && f64::from(k) > erlangs {
            return 0.0;
        }
    }
    n * b / (n - erlangs * (1.0 - b))
}

/// Seconds a contact at 1-based `position` can expect to wait.
///
/// - floor: `position x handle_time / agents`, what clearing the line up to
///   this contact takes if every agent works it;
/// - steady state (load A below the N agents): Erlang C's average speed of
///   answer `C(N, A) x handle_time / (N - A)` for the head of the line, plus
///   `handle_time / N` for each contact ahead.
///
/// The larger of the two is returned, so the estimate grows with position.
pub fn estimated_wait(
    position: u32,
    agents: u32,
    arrivals_per_second: f64,
    handle_time: f64,
) -> f64 {
    let n = agents.max(1);
    let erlangs = arrivals_per_second * handle_time;
    estimated_wait_with(position, n, erlangs, handle_time, erlang_c(n, erlangs))
}

/// [`estimated_wait`] with the load in erlangs and `C(N, A)` already known
/// (callers cache C: it costs up to N steps).
pub fn estimated_wait_with(
    position: u32,
    agents: u32,
    erlangs: f64,
    handle_time: f64,
    c: f64,
) -> f64 {
    let n = agents.max(1);
    let floor = f64::from(position) * handle_time / f64::from(n);
    if erlangs < f64::from(n) {
        let asa = c * handle_time / (f64::from(n) - erlangs);
        let ahead = f64::from(position.saturating_sub(1)) * handle_time / f64::from(n);
        floor.max(asa + ahead)
    } else {
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_the_textbook() {
        // 10 agents, 8 erlangs: P(wait) = 0.409 (standard tables).
        assert!(
            (erlang_c(10, 8.0) - 0.409).abs() < 0.001,
            "{}",
            erlang_c(10, 8.0)
        );
        // Light load on many agents stops early at zero.
        assert_eq!(erlang_c(10_000, 5.0), 0.0);
        assert!((erlang_c(100, 90.0) - erlang_c_slow(100, 90.0)).abs() < 1e-12);
        // One agent: P(wait) equals the utilisation.
        assert!((erlang_c(1, 0.5) - 0.5).abs() < 1e-9);
        assert_eq!(erlang_c(3, 3.0), 1.0);
        assert_eq!(erlang_c(0, 0.1), 1.0);
    }

    fn erlang_c_slow(agents: u32, erlangs: f64) -> f64 {
        let mut b = 1.0;
        for k in 1..=agents {
            b = erlangs * b / (f64::from(k) + erlangs * b);
        }
        let n = f64::from(agents);
        n * b / (n - erlangs * (1.0 - b))
    }

    #[test]
    fn wait_grows_with_position_and_never_drops_below_the_floor() {
        let mut last = 0.0;
        for position in 1..=20 {
            let w = estimated_wait(position, 4, 0.01, 300.0);
            assert!(w > last, "position {position}: {w} after {last}");
            assert!(w >= f64::from(position) * 300.0 / 4.0);
            last = w;
        }
        // Overloaded (A >= N): the floor alone.
        assert_eq!(estimated_wait(3, 2, 1.0, 300.0), 450.0);
        // Steady state, first in line: Erlang C dominates the floor.
        let asa = erlang_c(10, 8.0) * 180.0 / 2.0;
        assert!((estimated_wait(1, 10, 8.0 / 180.0, 180.0) - asa).abs() < 1e-6);
    }
}
