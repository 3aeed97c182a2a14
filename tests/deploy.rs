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
    // Variables for instance and queue, and every query filtered by them:
    // by instance everywhere, by queue where the metric has a queue.
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["instance", "queue"]);
    for v in dash["templating"]["list"].as_array().unwrap() {
        let query = v["query"]["query"].as_str().unwrap();
        let metric = query
            .trim_start_matches("label_values(")
            .split(',')
            .next()
            .unwrap();
        assert!(exported(metric), "variable {} reads {metric}", v["name"]);
        assert_eq!(v["multi"], true);
        assert_eq!(v["includeAll"], true);
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for selector in expr.split("careroute_").skip(1) {
                let labels = selector
                    .split_once('{')
                    .filter(|(name, _)| !name.contains(['(', ')', ' ', '[']))
                    .map(|(_, rest)| rest.split('}').next().unwrap())
                    .unwrap_or_else(|| panic!("an unfiltered selector in {expr}"));
                assert!(labels.contains(r#"instance=~"$instance""#), "{expr}");
                if selector.starts_with("queue_") {
                    assert!(labels.contains(r#"queue=~"$queue""#), "{expr}");
                }
            }
            // A standby holds the leader's state: replicated gauges are
            // not summed across instances.
            if expr.contains("careroute_queue_") || expr.contains("careroute_agents{") {
                assert!(!expr.starts_with("sum"), "{expr}");
            }
        }
    }
    // The issue's list: latency, RPC rate and errors, outcomes, callbacks,
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

/// The `CAREROUTE_*` variables a deployment file sets, with their values:
/// `ENV NAME=value` pairs of the Dockerfile, `- name:`/`value:` pairs of a
/// manifest.
fn env_in(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches("ENV ")
            .trim_end_matches('\\')
            .trim();
        if let Some(name) = line.strip_prefix("- name: ") {
            pending = name.starts_with("CAREROUTE_").then(|| name.to_owned());
        } else if let (Some(value), Some(name)) = (line.strip_prefix("value: "), pending.take()) {
            out.push((name, value.trim_matches('"').to_owned()));
        } else if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CAREROUTE_")
        {
            out.push((name.to_owned(), value.to_owned()));
        }
    }
    out
}

/// The settings careroute would run with under these variables, read the
/// way clap reads them (each variable stands for its flag).
fn settings(env: &[(String, String)]) -> careroute::config::Config {
    use clap::CommandFactory;
    let command = careroute::config::Cli::command();
    let mut args = vec!["careroute".to_owned()];
    for (name, value) in env {
        let arg = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
            .unwrap_or_else(|| panic!("{name} is no flag's environment variable"));
        args.push(format!("--{}", arg.get_long().unwrap()));
        if !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
            // A pod's own address is filled in by Kubernetes.
            args.push(value.replace("$(POD_IP)", "10.0.0.7"));
        }
    }
    <careroute::config::Cli as clap::Parser>::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        .serve
}

#[test]
fn the_image_and_the_manifests_run_protected_on_their_own_variables() {
    let image = env_in(include_str!("../Dockerfile"));
    assert!(image.len() >= 5, "{image:?}");
    let config = settings(&image);
    // It listens beyond loopback, so it must be protected, and is.
    assert!(!config.grpc_addr.ip().is_loopback());
    assert!(config.tls_cert.is_some() && config.credentials.is_some());
    assert!(!config.insecure);
    config.exposure().unwrap();

    // The manifests add to the image's variables.
    let pod = env_in(include_str!("../deploy/kubernetes/deployment.yaml"));
    assert!(pod.iter().any(|(n, _)| n == "CAREROUTE_TLS_CLIENT_CA"));
    let config = settings(&[image, pod].concat());
    assert!(config.journal.is_some() && config.tls_client_ca.is_some());
    config.exposure().unwrap();
    // ... and mount what the image's variables point at, readable by the
    // image's user (65532): the secret files belong to its group.
    let manifest = include_str!("../deploy/kubernetes/deployment.yaml");
    assert!(manifest.contains("runAsUser: 65532"));
    assert!(manifest.contains("fsGroup: 65532"));
    assert!(include_str!("../Dockerfile").contains("USER nonroot:nonroot"));
    assert!(config.nats_ca.is_some() && config.nats_nkey_seed.is_some());
    for file in [
        &config.tls_cert,
        &config.tls_key,
        &config.credentials,
        &config.tls_client_ca,
        &config.nats_ca,
        &config.nats_nkey_seed,
        &config.policy,
    ] {
        let dir = file.as_ref().unwrap().parent().unwrap();
        assert!(
            manifest.contains(&format!("mountPath: {}", dir.display())),
            "nothing is mounted at {}",
            dir.display()
        );
    }
}

#[test]
fn the_configmap_policy_is_the_example_and_is_mounted_so_updates_arrive() {
    // The same policy as the one the README documents and `careroute test`
    // checks: one edited without the other would drift.
    assert_eq!(
        include_str!("../deploy/kubernetes/policy.toml"),
        include_str!("../examples/healthcare.toml")
    );
    let kustomization = include_str!("../deploy/kubernetes/kustomization.yaml");
    assert!(kustomization.contains("- policy.toml"));
    // No hash in the name (an edit updates the file in place, no restart),
    // and a directory mount (a subPath never sees an update).
    assert!(kustomization.contains("disableNameSuffixHash: true"));
    let manifest = include_str!("../deploy/kubernetes/deployment.yaml");
    assert!(manifest.contains("name: careroute-policy"));
    assert!(
        !manifest
            .lines()
            .any(|l| l.trim_start().starts_with("subPath"))
    );
}

/// The gRPC service config clients load (deadlines, retries) names real
/// methods, covers every single-answer RPC of the routing service (read
/// from the descriptor, so a new RPC cannot be forgotten), and retries only
/// what is safe to send twice.
#[test]
fn the_service_config_covers_every_rpc_and_retries_only_what_is_safe() {
    let config: Value =
        serde_json::from_str(include_str!("../deploy/grpc/service-config.json")).unwrap();
    let rpcs: Vec<_> = careroute::grpc::methods::all()
        .iter()
        .filter(|m| m.service == "careroute.v1.RoutingService")
        .collect();
    // Safe twice: RouteContact with its request_id (a retry is answered
    // from the first decision), setting a profile or a state, and reads.
    let retryable = [
        "RouteContact",
        "UpsertAgent",
        "SetAgentState",
        "ListQueues",
        "GetAgent",
        "ListAgents",
        "GetContactPath",
        "GetContactStatus",
    ];
    let mut named = HashSet::new();
    for mc in config["methodConfig"].as_array().unwrap() {
        let timeout = mc["timeout"].as_str().unwrap();
        let seconds: f64 = timeout.strip_suffix('s').unwrap().parse().unwrap();
        assert!(seconds > 0.0 && seconds <= 10.0, "{timeout}");
        let retry = mc.get("retryPolicy");
        if let Some(r) = retry {
            assert!((2..=5).contains(&r["maxAttempts"].as_u64().unwrap()));
            for key in ["initialBackoff", "maxBackoff"] {
                assert!(r[key].as_str().unwrap().ends_with('s'), "{key}");
            }
            assert!(r["backoffMultiplier"].as_f64().unwrap() > 1.0);
            let codes = r["retryableStatusCodes"].as_array().unwrap();
            assert!(
                codes
                    .iter()
                    .all(|c| c == "UNAVAILABLE" || c == "RESOURCE_EXHAUSTED")
            );
        }
        for name in mc["name"].as_array().unwrap() {
            assert_eq!(name["service"], "careroute.v1.RoutingService");
            let method = name["method"].as_str().unwrap();
            let rpc = rpcs
                .iter()
                .find(|m| m.name == method)
                .unwrap_or_else(|| panic!("{method} is not an RPC of the service"));
            assert!(
                !rpc.client_streaming && !rpc.server_streaming,
                "{method} streams: no deadline or retry fits it"
            );
            assert!(named.insert(method.to_owned()), "{method} twice");
            assert_eq!(
                retry.is_some(),
                retryable.contains(&method),
                "{method}: retried only if safe to send twice"
            );
        }
    }
    for m in rpcs {
        if !m.client_streaming && !m.server_streaming {
            assert!(named.contains(&m.name), "{} has no method config", m.name);
        }
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    let listed: HashSet<String> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.ends_with(".yaml"))
        .map(str::to_owned)
        .collect();
    let present: HashSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}
