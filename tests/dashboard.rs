//! The canary dashboard parses as JSON and queries only metrics that
//! `src/telemetry.rs` names (a renamed metric would leave a panel empty).

use std::collections::BTreeSet;

const DASHBOARD: &str = include_str!("../deploy/grafana/switchyard-canary.json");
const TELEMETRY: &str = include_str!("../src/telemetry.rs");

/// `switchyard_*` identifiers in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_"))
        .map(str::to_owned)
        .collect()
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
            for name in metric_names(expr) {
                // Histograms are queried through their Prometheus series.
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name)
                    .to_owned();
                used.insert(base);
            }
        }
    }
    let unknown: Vec<&String> = used.difference(&known).collect();
    assert!(unknown.is_empty(), "not in src/telemetry.rs: {unknown:?}");
    for name in [
        "switchyard_canary_share_percent",
        "switchyard_canary_rollbacks_total",
    ] {
        assert!(used.contains(name), "the dashboard shows {name}");
    }
}
