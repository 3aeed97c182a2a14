//! Fuzz target: arbitrary text through `careroute::policy::parse`. A refusal
//! must format (file, line, field); a policy it accepts must run: an engine
//! on it, staffed for every queue, routes every intent on every channel at
//! one of the interesting instants (picked by the input's length), lists its
//! queues, moves on through hours and days, and reloads to and from the
//! embedded policy. Nothing may panic.

#![no_main]

use std::sync::Arc;

use careroute::engine::{Engine, EngineConfig};
use careroute::engine::{ReplacePolicy, Tick};
use careroute_fuzz::{
    check_invariants, drain_events, embedded, instants, list_queues, route_every_intent,
    staff_every_queue,
};
use chrono::Duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match careroute::policy::parse("fuzz.toml", text) {
        Ok(policy) => Arc::new(policy),
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let start = instants()[data.len() % instants().len()];
    let mut e = Engine::new(Arc::clone(&policy), EngineConfig::default());
    staff_every_queue(&mut e, start);
    // Twice: first onto the free agents, then with every agent taken, so
    // contacts queue or get callbacks.
    route_every_intent(&mut e, start);
    route_every_intent(&mut e, start);
    check_invariants(&e);
    list_queues(&mut e, start);
    let mut now = start;
    for step in [
        Duration::seconds(20),
        Duration::minutes(5),
        Duration::hours(3),
        Duration::days(2),
    ] {
        now += step;
        e.apply(Tick, now).unwrap();
        drain_events(&mut e);
        check_invariants(&e);
    }
    // Reload away from the fuzzed policy and back, with contacts waiting.
    route_every_intent(&mut e, now);
    e.apply(ReplacePolicy(embedded()), now).unwrap();
    drain_events(&mut e);
    check_invariants(&e);
    e.apply(ReplacePolicy(Arc::clone(&policy)), now).unwrap();
    drain_events(&mut e);
    check_invariants(&e);
    list_queues(&mut e, now);
});
