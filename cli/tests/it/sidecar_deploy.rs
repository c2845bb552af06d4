//! What can be checked of `deploy/` and `scripts/fleet.sh` without a
//! container engine: every YAML file parses, every config a manifest or the
//! fleet references loads, the crate builds from exactly the files the
//! Dockerfile copies, the k8s pod gives each container only its own
//! tokens, probes point at the telemetry endpoint, compose waits for
//! healthy services, the Prometheus config and alert rules pass `promtool`,
//! and the local fleet starts and stops. The `promtool` check is in the
//! `it-tools` test tier, the fleet (on the Redis and Kafka of
//! `scripts/services/`) in `it-redis` plus `it-kafka`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;
use switchyard::Settings;

/// The repository root: this crate is cli/ in it.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn deploy() -> PathBuf {
    Path::new(REPO).join("deploy")
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
            let toml = in_pod(doc["data"]["switchyard.toml"].as_str().unwrap());
            let settings = Settings::from_toml(&toml).unwrap_or_else(|e| panic!("ConfigMap: {e}"));
            assert_eq!(settings.telemetry.listen.port(), 9464);
            found = true;
        }
    }
    assert!(found, "no ConfigMap in deploy/k8s");
}

/// The gateway's StatefulSet: its pod spec.
fn pod_spec() -> Value {
    let (_, set) = yaml_documents()
        .into_iter()
        .find(|(path, d)| {
            path.ends_with("k8s/statefulset.yaml")
                && d.get("kind").and_then(Value::as_str) == Some("StatefulSet")
                && d["metadata"]["name"].as_str() == Some("chat-gateway")
        })
        .expect("the gateway's StatefulSet in deploy/k8s/statefulset.yaml");
    set["spec"]["template"]["spec"].clone()
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn the_sidecar_is_a_native_sidecar_probed_on_healthz_and_readyz() {
    let pod = pod_spec();
    let sidecar = named(&pod["initContainers"], "switchyard");
    // Native sidecar: starts before the gateway, stops after it.
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    named(&pod["containers"], "gateway");
    assert_eq!(
        sidecar["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
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
    let run_as = pod["securityContext"]["runAsUser"].as_i64();
    assert!(run_as.is_some_and(|uid| uid > 0), "pods run as non-root");
    // SIGKILL comes after the readiness grace and the drain.
    let (_, configmap) = yaml_documents()
        .into_iter()
        .find(|(_, d)| d.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
        .unwrap();
    let settings = Settings::from_toml(&in_pod(
        configmap["data"]["switchyard.toml"].as_str().unwrap(),
    ))
    .unwrap();
    let budget = settings.sidecar.readiness_grace + settings.sidecar.drain_timeout;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > budget.as_secs(), "{grace} s <= {budget:?}");
}

#[test]
fn each_container_sees_only_the_tokens_it_needs() {
    let pod = pod_spec();
    let secret_of = |volume: &str| {
        named(&pod["volumes"], volume)["secret"]["secretName"]
            .as_str()
            .map(str::to_owned)
    };
    let mounts = |list: &str, container: &str| -> Vec<(String, Option<String>)> {
        named(&pod[list], container)["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|m| {
                let secret = secret_of(m["name"].as_str().unwrap())?;
                Some((secret, m["subPathExpr"].as_str().map(str::to_owned)))
            })
            .collect()
    };
    let gateway_tokens = "switchyard-gateway-tokens".to_owned();
    assert_eq!(
        mounts("containers", "gateway"),
        [(gateway_tokens.clone(), Some("$(GATEWAY_ID)".to_owned()))],
        "the gateway mounts its own token only"
    );
    let sidecar = mounts("initContainers", "switchyard");
    assert!(sidecar.contains(&(gateway_tokens.clone(), Some("$(POD_NAME)".to_owned()))));
    assert!(sidecar.contains(&("switchyard-sidecar-tokens".to_owned(), None)));
    assert_eq!(sidecar.len(), 2, "{sidecar:?}");
    assert!(mounts("initContainers", "config").is_empty());
}

#[test]
fn the_config_init_container_gives_each_pod_its_own_token() {
    let pod = pod_spec();
    let config = named(&pod["initContainers"], "config");
    let script = config["command"][2].as_str().unwrap();
    let (_, configmap) = yaml_documents()
        .into_iter()
        .find(|(_, d)| d.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        shared.join("switchyard.toml"),
        configmap["data"]["switchyard.toml"].as_str().unwrap(),
    )
    .unwrap();
    let script = script
        .replace("/etc/switchyard-shared", shared.to_str().unwrap())
        .replace("/etc/switchyard/", &format!("{}/", out.display()));
    let status = Command::new("sh")
        .args(["-c", &script])
        .env("POD_NAME", "chat-gateway-1")
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(out.join("switchyard.toml")).unwrap();
    let settings = Settings::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let gateways: Vec<&String> = settings.sidecar.tokens.keys().collect();
    assert_eq!(gateways, ["chat-gateway-1"]);
    assert_eq!(
        settings.sidecar.tokens["chat-gateway-1"].file.as_deref(),
        Some(Path::new("/run/secrets/switchyard/gateway-token"))
    );
}

#[test]
fn compose_waits_for_healthy_services_and_provisions_grafana() {
    let (_, mut compose) = yaml_documents()
        .into_iter()
        .find(|(path, _)| path.ends_with("compose.yaml"))
        .unwrap();
    // The sidecars share their settings through `<<: *sidecar`.
    compose.apply_merge().unwrap();
    let services = &compose["services"];
    for name in ["sidecar-eu-1", "sidecar-eu-2", "sidecar-us-1"] {
        let depends = services[name]["depends_on"].as_mapping().expect(name);
        for (dependency, condition) in depends {
            let dependency = dependency.as_str().unwrap();
            assert_eq!(
                condition["condition"].as_str(),
                Some("service_healthy"),
                "{name} -> {dependency}"
            );
            assert!(
                services[dependency]["healthcheck"]["test"].is_sequence(),
                "{dependency} has no health check"
            );
        }
    }
    let grafana = &services["grafana"];
    let volumes: Vec<&str> = grafana["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro"));
    assert!(volumes.contains(&"./grafana:/var/lib/grafana/dashboards:ro"));
    let provider: Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy().join("grafana/provisioning/dashboards/switchyard.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards")
    );
    assert!(deploy().join("grafana/switchyard-canary.json").is_file());
}

/// The build stage's `COPY` sources and its `cargo build` flags.
fn dockerfile_build_stage() -> (Vec<String>, Vec<String>) {
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let stage: Vec<&str> = dockerfile
        .split("\nFROM ")
        .nth(1)
        .expect("a build stage")
        .lines()
        .collect();
    let mut sources = Vec::new();
    for line in &stage {
        if let Some(args) = line.strip_prefix("COPY ") {
            let args: Vec<&str> = args.split_whitespace().collect();
            let (dest, from) = args.split_last().unwrap();
            for source in from {
                // `COPY proto proto` and `COPY a b ./`: the same path in /src.
                assert!(*dest == "./" || dest == source, "COPY {source} to {dest}");
                sources.push((*source).to_owned());
            }
        }
    }
    // The RUN's continuation lines, joined.
    let run = stage.join("\n").replace("\\\n", " ");
    let flags = run
        .split("cargo build ")
        .nth(1)
        .expect("a cargo build")
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (sources, flags)
}

fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
}

/// The crate builds from exactly the files the Dockerfile copies, with its
/// cargo flags. `cargo check` instead of `build`, and without `--release`,
/// sharing this target dir: which files are needed, whether the lock file
/// holds (`--locked`) and whether the build script finds its protos do not
/// depend on code generation, and this way only the copied crate itself is
/// checked (the dependencies' check artifacts are reused) instead of a
/// release build of everything.
#[test]
fn the_crate_builds_from_exactly_the_files_the_dockerfile_copies() {
    let root = Path::new(REPO);
    let (sources, flags) = dockerfile_build_stage();
    assert!(flags.contains(&"--locked".to_owned()), "{flags:?}");
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let context = tempfile::tempdir().unwrap();
    for source in &sources {
        assert!(
            !ignored.contains(&source.as_str()),
            "{source} is copied but .dockerignore excludes it"
        );
        copy(&root.join(source), &context.path().join(source));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let flags: Vec<&String> = flags.iter().filter(|f| *f != "--release").collect();
    let output = Command::new(env!("CARGO"))
        .arg("check")
        .args(&flags)
        .arg("--quiet")
        .current_dir(context.path())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo check {flags:?} on the Dockerfile's files ({sources:?}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The ConfigMap's config as a pod runs it: statefulset.yaml's `config`
/// init container appends the pod's own gateway token.
fn in_pod(configmap_toml: &str) -> String {
    format!(
        "{configmap_toml}\n[sidecar.tokens.chat-gateway-0]\nfile = \"/run/secrets/switchyard/gateway-token\"\n"
    )
}

/// Cargo.toml's `rust-version` is at least every locked dependency's, and
/// the Dockerfile's Rust image at least that.
#[test]
fn rust_version_satisfies_the_locked_dependencies_and_the_image_has_it() {
    // `1.89` is `1.89.0`.
    let parse = |v: &str| -> Vec<u64> {
        let mut parts: Vec<u64> = v.split('.').map(|n| n.parse().unwrap()).collect();
        parts.resize(3, 0);
        parts
    };
    let output = Command::new(env!("CARGO"))
        // Not --offline: metadata covers every platform's dependencies,
        // and a build fetched only this one's.
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(REPO)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut ours = None;
    let mut needed = (vec![0], String::new());
    for package in metadata["packages"].as_array().unwrap() {
        let Some(version) = package["rust_version"].as_str() else {
            continue;
        };
        if package["name"] == "switchyard" {
            ours = Some(parse(version));
        } else if parse(version) > needed.0 {
            needed = (parse(version), package["name"].as_str().unwrap().to_owned());
        }
    }
    let ours = ours.expect("Cargo.toml sets rust-version");
    assert!(ours >= needed.0, "rust-version {ours:?} < {needed:?}");
    let dockerfile = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("FROM rust:VERSION");
    let image = parse(image.split('-').next().unwrap());
    assert!(
        image >= ours,
        "rust:{image:?} older than rust-version {ours:?}"
    );
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
    // Every file the runtime stage copies from the context exists.
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(Path::new(REPO).join(source).exists(), "{line}");
    }
}

/// `promtool` (Debian package `prometheus`; scripts/test.sh installs it).
#[cfg(feature = "it-tools")]
fn promtool(args: &[&Path], check: &str) {
    let output = Command::new("promtool")
        .args(["check", check])
        .args(args)
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(feature = "it-tools")]
#[test]
fn promtool_accepts_the_prometheus_config_and_the_alert_rules() {
    promtool(&[&deploy().join("prometheus/prometheus.yml")], "config");
    promtool(&[&deploy().join("prometheus/alerts.yml")], "rules");
}

#[cfg(all(feature = "it-redis", feature = "it-kafka"))]
#[test]
fn the_local_fleet_starts_ready_and_stops() {
    let root = REPO;
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
