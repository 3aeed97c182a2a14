//! The dashboard and the alerts in deploy/ only name metrics the service
//! exports, and the dashboard has what Grafana needs to import it.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use careroute::telemetry::EXPORTED;
use serde_json::Value;

/// Every `careroute_*` metric an expression names, histogram suffixes removed.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("careroute_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(&name);
        out.push(base.to_owned());
    }
    out
}

fn exported(name: &str) -> bool {
    EXPORTED.contains(&name)
}

#[test]
fn dashboard_is_importable_and_queries_only_exported_metrics() {
    let dash: Value =
        serde_json::from_str(include_str!("../deploy/grafana/careroute.json")).unwrap();
    for key in [
        "uid",
        "title",
        "schemaVersion",
        "panels",
        "time",
        "templating",
        "__inputs",
    ] {
        assert!(dash.get(key).is_some(), "dashboard lacks {key}");
    }
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = HashSet::new();
    let mut named = HashSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id at {title}"
        );
        for key in ["type", "gridPos"] {
            assert!(p.get(key).is_some(), "panel {title} lacks {key}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let metrics = metrics_in(expr);
            assert!(
                !metrics.is_empty(),
                "panel {title} queries no careroute metric: {expr}"
            );
            for m in metrics {
                assert!(
                    exported(&m),
                    "panel {title} queries {m}, which the service does not export"
                );
                named.insert(m);
            }
        }
    }
    // The list: latency, RPC rate and errors, outcomes, callbacks,
    // agents by state, per-queue staffing.
    for m in [
        "careroute_decision_duration_seconds",
        "careroute_rpc_duration_seconds",
        "careroute_rpc_requests_total",
        "careroute_decisions_total",
        "careroute_callbacks_total",
        "careroute_agents",
        "careroute_queue_agents_staffed",
    ] {
        assert!(named.contains(m), "no panel shows {m}");
    }
}

#[test]
fn alerts_name_only_exported_metrics() {
    let rules = include_str!("../deploy/prometheus/alerts.yml");
    let named = metrics_in(rules);
    assert!(named.len() >= 10);
    for m in named {
        assert!(
            exported(&m),
            "alerts.yml uses {m}, which the service does not export"
        );
    }
}

#[test]
fn the_checker_catches_a_wrong_name() {
    assert_eq!(
        metrics_in("rate(careroute_rpc_duration_seconds_bucket[5m])"),
        ["careroute_rpc_duration_seconds"]
    );
    assert!(!exported(&metrics_in("careroute_decisions_totl")[0]));
}
