//! What can be checked of `deploy/` and `scripts/fleet.sh` without a
//! container engine: every YAML file parses, every config a manifest or the
//! fleet references loads, probes point at the telemetry endpoint, the
//! Prometheus config passes `promtool check config` (when installed), and
//! the local fleet starts and stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;
use switchyard::Settings;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, ext: &[&str], found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, ext, found);
        } else if path
            .extension()
            .is_some_and(|e| ext.iter().any(|x| e == *x))
        {
            found.push(path);
        }
    }
}

/// Every document of every YAML file under `deploy/`.
fn yaml_documents() -> Vec<(PathBuf, Value)> {
    let mut paths = Vec::new();
    files(&deploy(), &["yaml", "yml"], &mut paths);
    assert!(
        paths.len() >= 6,
        "expected compose, prometheus and k8s files, found {paths:?}"
    );
    let mut docs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            docs.push((path.clone(), value));
        }
    }
    docs
}

#[test]
fn every_yaml_file_parses_and_k8s_objects_are_complete() {
    for (path, doc) in yaml_documents() {
        if path.parent().unwrap().ends_with("k8s") {
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(doc.get(key).is_some(), "{}: no {key}", path.display());
            }
        }
    }
}

#[test]
fn every_referenced_config_loads() {
    let mut tomls = Vec::new();
    files(&deploy().join("config"), &["toml"], &mut tomls);
    assert!(tomls.len() >= 2, "{tomls:?}");
    for path in &tomls {
        Settings::load(Some(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // The compose file mounts configs from deploy/config.
    let compose = std::fs::read_to_string(deploy().join("compose.yaml")).unwrap();
    for mount in compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./config/"))
    {
        let file = mount.split(':').next().unwrap();
        assert!(
            deploy().join("config").join(file).is_file(),
            "compose mounts missing config/{file}"
        );
    }
    // The ConfigMap's switchyard.toml.
    let mut found = false;
    for (_, doc) in yaml_documents() {
        if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap") {
            let toml = doc["data"]["switchyard.toml"].as_str().unwrap();
            let settings = Settings::from_toml(toml).unwrap_or_else(|e| panic!("ConfigMap: {e}"));
            assert_eq!(settings.telemetry.listen.port(), 9464);
            found = true;
        }
    }
    assert!(found, "no ConfigMap in deploy/k8s");
}

#[test]
fn the_sidecar_container_is_probed_on_healthz_and_readyz() {
    let (_, set) = yaml_documents()
        .into_iter()
        .find(|(_, d)| {
            d.get("kind").and_then(Value::as_str) == Some("StatefulSet")
                && d["metadata"]["name"].as_str() == Some("chat-gateway")
        })
        .expect("the gateway's StatefulSet");
    let containers = set["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert!(
        containers.len() >= 2,
        "the gateway and its sidecar share the pod"
    );
    let sidecar = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("switchyard"))
        .expect("a switchyard container");
    assert_eq!(
        sidecar["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let ports: Vec<i64> = sidecar["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [50051, 9464]);
    let run_as = set["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_i64();
    assert!(run_as.is_some_and(|uid| uid > 0), "pods run as non-root");
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_as_non_root() {
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2
    );
    let user = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "USER {user}"
    );
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    let config = deploy().join("prometheus/prometheus.yml");
    match Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&config)
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => {
            eprintln!("promtool not installed (apt-get install prometheus): config check skipped")
        }
    }
}

#[test]
fn the_local_fleet_starts_ready_and_stops() {
    let root = env!("CARGO_MANIFEST_DIR");
    let state = tempfile::tempdir().unwrap();
    let fleet = |action: &str| {
        Command::new("bash")
            .arg(format!("{root}/scripts/fleet.sh"))
            .arg(action)
            .env("FLEET_BIN", env!("CARGO_BIN_EXE_switchyard"))
            .env("FLEET_STATE", state.path())
            .output()
            .unwrap()
    };
    let started = fleet("start");
    let stopped = fleet("stop");
    let out = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(started.status.success(), "start:\n{}", out(&started));
    assert_eq!(
        out(&started).matches(" ready (grpc").count(),
        3,
        "{}",
        out(&started)
    );
    assert!(stopped.status.success(), "stop:\n{}", out(&stopped));
    assert_eq!(
        out(&stopped).matches(" stopped").count(),
        3,
        "{}",
        out(&stopped)
    );
}
