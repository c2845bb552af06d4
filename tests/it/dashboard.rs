//! The canary dashboard and the alert rules query only metrics that
//! `src/telemetry.rs` names (a renamed metric would leave a panel empty or
//! an alert silent).

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../../deploy/grafana/switchyard-canary.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const TELEMETRY: &str = include_str!("../../src/telemetry.rs");

/// `switchyard_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_"))
        .map(str::to_owned)
        .collect()
}

/// A histogram is queried through its Prometheus series.
fn base(name: String) -> String {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .map(str::to_owned)
        .unwrap_or(name)
}

#[test]
fn the_alert_rules_use_only_known_metrics() {
    let alerts: serde_norway::Value = serde_norway::from_str(ALERTS).expect("valid YAML");
    let known = metric_names(TELEMETRY);
    let mut used = BTreeSet::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            used.extend(
                metric_names(rule["expr"].as_str().expect("expr"))
                    .into_iter()
                    .map(base),
            );
        }
    }
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "not in src/telemetry.rs: {unknown:?}");
    assert!(used.contains("switchyard_transport_up"));
}

#[test]
fn the_canary_dashboard_uses_only_known_metrics() {
    // JSON is YAML: the YAML parser already among the dev-dependencies reads it.
    let dashboard: serde_norway::Value = serde_norway::from_str(DASHBOARD).expect("valid JSON");
    let panels = dashboard["panels"].as_sequence().expect("panels");
    assert!(!panels.is_empty());
    let known = metric_names(TELEMETRY);
    let mut used = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_sequence().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            used.extend(metric_names(expr).into_iter().map(base));
        }
    }
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "not in src/telemetry.rs: {unknown:?}");
    for name in [
        "switchyard_canary_share_ratio",
        "switchyard_canary_rollbacks_total",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
    }
}
