//! Erlang C, the planners' formula: the chance a contact waits, the
//! average speed of answer and the service level for `agents` agents,
//! Poisson arrivals and exponential handle times, nobody hanging up. The
//! simulator prints it beside what it measured, so planners see where the
//! formula misleads.

/// What Erlang C predicts for one queue over one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// The chance an arriving contact waits.
    pub wait_probability: f64,
    /// Average speed of answer, in seconds (infinite when the load is at or
    /// above the agents).
    pub asa_seconds: f64,
    /// The share answered within the threshold.
    pub service_level: f64,
}

/// The prediction for `agents` agents, `arrivals_per_second`, a mean handle
/// time of `aht_seconds`, answered within `threshold_seconds`.
pub fn predict(
    agents: u32,
    arrivals_per_second: f64,
    aht_seconds: f64,
    threshold_seconds: f64,
) -> Prediction {
    let load = arrivals_per_second * aht_seconds;
    let n = f64::from(agents);
    if arrivals_per_second <= 0.0 {
        return Prediction {
            wait_probability: 0.0,
            asa_seconds: 0.0,
            service_level: 1.0,
        };
    }
    if n <= load {
        return Prediction {
            wait_probability: 1.0,
            asa_seconds: f64::INFINITY,
            service_level: 0.0,
        };
    }
    let pw = wait_probability(agents, load);
    let spare = n - load;
    Prediction {
        wait_probability: pw,
        asa_seconds: pw * aht_seconds / spare,
        service_level: 1.0 - pw * (-spare * threshold_seconds / aht_seconds).exp(),
    }
}

/// Erlang C's P(wait) for `agents` and an offered load in Erlangs, by the
/// Erlang B recursion (stable for hundreds of agents).
fn wait_probability(agents: u32, load: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=agents {
        b = load * b / (f64::from(k) + load * b);
    }
    let n = f64::from(agents);
    b / (1.0 - (load / n) * (1.0 - b))
}

/// The fewest agents Erlang C says reach `goal` (a share answered within
/// the threshold), at most `cap`. One pass of the Erlang B recursion: the
/// cost grows with the answer, not with the cap.
pub fn agents_for(
    goal: f64,
    arrivals_per_second: f64,
    aht_seconds: f64,
    threshold_seconds: f64,
    cap: u32,
) -> Option<u32> {
    if arrivals_per_second <= 0.0 {
        return Some(0);
    }
    let load = arrivals_per_second * aht_seconds;
    let mut b = 1.0;
    for n in 1..=cap {
        b = load * b / (f64::from(n) + load * b);
        let agents = f64::from(n);
        if agents <= load {
            continue;
        }
        let pw = b / (1.0 - (load / agents) * (1.0 - b));
        let spare = agents - load;
        if 1.0 - pw * (-spare * threshold_seconds / aht_seconds).exp() >= goal {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Erlang C's P(wait) by its closed form, summed directly.
    fn direct(agents: u32, load: f64) -> f64 {
        let n = f64::from(agents);
        let mut term = 1.0;
        let mut sum = 0.0;
        for k in 0..agents {
            if k > 0 {
                term *= load / f64::from(k);
            }
            sum += term;
        }
        let top = term * load / n * n / (n - load);
        top / (sum + top)
    }

    #[test]
    fn agrees_with_the_closed_form_and_finds_the_staffing() {
        // 360 contacts an hour, 240 s each (24 Erlangs), 20 s threshold.
        for agents in [25, 28, 29, 40] {
            let p = predict(agents, 360.0 / 3600.0, 240.0, 20.0);
            let pw = direct(agents, 24.0);
            assert!(
                (p.wait_probability - pw).abs() < 1e-9,
                "{agents}: {p:?} {pw}"
            );
            let spare = f64::from(agents) - 24.0;
            assert!((p.asa_seconds - pw * 240.0 / spare).abs() < 1e-6);
        }
        let p = predict(28, 0.1, 240.0, 20.0);
        assert!((p.wait_probability - 0.3331).abs() < 1e-4, "{p:?}");
        assert!((p.service_level - 0.7613).abs() < 1e-4, "{p:?}");
        // 28 agents miss 80% in 20 s; 29 reach it.
        assert_eq!(agents_for(0.8, 0.1, 240.0, 20.0, 100), Some(29));
        assert_eq!(agents_for(0.8, 0.1, 240.0, 20.0, 28), None);
        // The same answer as trying each headcount with `predict`.
        for (rate, aht, goal) in [(0.02, 300.0, 0.8), (0.5, 180.0, 0.9), (0.001, 600.0, 0.8)] {
            let slow = (0..=500).find(|&n| predict(n, rate, aht, 30.0).service_level >= goal);
            assert_eq!(
                agents_for(goal, rate, aht, 30.0, 500),
                slow,
                "{rate} {aht} {goal}"
            );
        }
    }

    #[test]
    fn overload_and_no_load() {
        assert_eq!(predict(24, 0.1, 240.0, 20.0).service_level, 0.0);
        assert!(predict(24, 0.1, 240.0, 20.0).asa_seconds.is_infinite());
        assert_eq!(predict(3, 0.0, 240.0, 20.0).service_level, 1.0);
    }
}
