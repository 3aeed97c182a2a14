//! Fuzz target: arbitrary text through `careroute::roster::parse`. A refusal
//! must format (file, line, field); every agent of a roster it accepts must
//! pass `AgentSpec::validate`, have a unique id, and register, as the server
//! does at start, into an engine with the embedded policy that then routes
//! every intent on every channel. Nothing may panic.

#![no_main]

use careroute::engine::{Engine, EngineConfig};
use careroute_fuzz::{
    check_invariants, embedded, instants, list_queues, register, route_every_intent,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let agents = match careroute::roster::parse("fuzz-roster.toml", text) {
        Ok(agents) => agents,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    for (i, (spec, _)) in agents.iter().enumerate() {
        assert!(
            spec.validate().is_ok(),
            "accepted an invalid agent: {spec:?}"
        );
        assert!(
            agents[..i].iter().all(|(other, _)| other.id != spec.id),
            "accepted a duplicate agent id"
        );
    }
    let now = instants()[0];
    let mut e = Engine::new(embedded(), EngineConfig::default());
    register(&mut e, &agents, now);
    assert_eq!(e.roster().agents().len(), agents.len());
    check_invariants(&e);
    route_every_intent(&mut e, now);
    check_invariants(&e);
    list_queues(&mut e, now);
});
