//! `switchyard serve` as a real process: env overrides of the listen
//! addresses, SIGHUP reload (a bad file is refused, the old config stays),
//! a graceful exit on SIGTERM, and `/metrics` before the first message
//! under every shipped config. The shipped configs and the CLI's `state`,
//! `canary` and `presence` reach the Redis, Kafka and NATS of
//! `scripts/services/` (test tiers `it-redis`, `it-kafka`, `it-nats`; the
//! `/metrics` check also `it-tools`, for `promtool`); the rest runs on the
//! embedded default.

use testkit::sidecars;

#[cfg(feature = "it-redis")]
use std::path::Path;

use crate::process::Served;
use switchyard::proto;

/// The repository root: this crate is cli/ in it.
#[cfg(feature = "it-redis")]
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

#[cfg(all(
    feature = "it-redis",
    feature = "it-kafka",
    feature = "it-nats",
    feature = "it-tools"
))]
use switchyard::Settings;

// Multi-threaded: the test thread blocks reading the child's log, and the
// gRPC client's connection task must keep running meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "[routing]\nsame_region = \"memory\"\n").unwrap();
    let served = Served::start(Some(&config), &[]);
    let (status, _) = sidecars::http_get(served.telemetry, "/readyz").await;
    assert_eq!(status, 200);

    // A bad file: refused with key and reason, the old config stays.
    std::fs::write(&config, "[routing]\nsame_region = \"pigeon\"\n").unwrap();
    served.signal("HUP");
    let refused = served.wait_for("config reload refused");
    assert!(refused.contains("routing.same_region"), "{refused}");
    let state = sidecars::admin(served.grpc)
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.routing.unwrap().same_region, "memory");

    served.signal("TERM");
    served.wait_for("sidecar stopped");
    let exit = tokio::task::spawn_blocking(move || served.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// Every config the repository ships that can run on this machine: the
/// container configs with their host names pointed at the local services
/// and their secret files written to `secrets`.
#[cfg(all(
    feature = "it-redis",
    feature = "it-kafka",
    feature = "it-nats",
    feature = "it-tools"
))]
fn shipped_configs(secrets: &Path) -> Vec<(String, String)> {
    let root = Path::new(REPO);
    let mut configs = Vec::new();
    for dir in ["config", "deploy/config"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            configs.push((
                format!("{dir}/{}", file.file_name().unwrap().to_str().unwrap()),
                text,
            ));
        }
    }
    let configmap = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
    let configmap: serde_norway::Value = serde_norway::from_str(&configmap).unwrap();
    let toml = configmap["data"]["switchyard.toml"].as_str().unwrap();
    // As statefulset.yaml's `config` init container runs it: with the pod's
    // own gateway token appended (listening on 0.0.0.0 needs tokens).
    let toml = format!(
        "{toml}\n[sidecar.tokens.chat-gateway-0]\nfile = \"/run/secrets/switchyard/gateway-token\"\n"
    );
    configs.push(("deploy/k8s/configmap.yaml".into(), toml));
    for (_, text) in &mut configs {
        *text = local(text, secrets);
    }
    configs
}

/// `text` with container host names replaced by the local services and
/// `/run/secrets/switchyard` by `secrets`, where each secret it names is
/// written.
#[cfg(all(
    feature = "it-redis",
    feature = "it-kafka",
    feature = "it-nats",
    feature = "it-tools"
))]
fn local(text: &str, secrets: &Path) -> String {
    let mut text = text
        .replace("redis://redis:6379", "redis://127.0.0.1:6379")
        .replace("nats://nats:4222", "nats://127.0.0.1:4222")
        .replace("/run/secrets/switchyard", secrets.to_str().unwrap());
    for line in text.clone().lines() {
        let line = line.trim();
        if let Some(brokers) = line.strip_prefix("brokers = ") {
            text = text.replace(brokers, "\"127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094\"");
        }
        if let Some(path) = line
            .strip_prefix("file = \"")
            .and_then(|p| p.strip_suffix('"'))
        {
            let path = Path::new(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "a-test-token\n").unwrap();
        }
    }
    text
}

#[cfg(all(
    feature = "it-redis",
    feature = "it-kafka",
    feature = "it-nats",
    feature = "it-tools"
))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_before_the_first_message_pass_promtool_under_every_shipped_config() {
    let dir = tempfile::tempdir().unwrap();
    let configs = shipped_configs(&dir.path().join("secrets"));
    assert!(
        configs.len() >= 7,
        "{:?}",
        configs.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    for (name, text) in configs {
        let file = dir.path().join("switchyard.toml");
        std::fs::write(&file, &text).unwrap();
        let settings = Settings::load(Some(&file)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let served = Served::start(Some(&file), &[]);
        let (status, body) = sidecars::http_get(served.telemetry, "/metrics").await;
        assert_eq!(status, 200, "{name}");
        let mut expected = vec![
            "switchyard_build_info{version=\"".to_owned(),
            "process_resident_memory_bytes ".to_owned(),
            "process_start_time_seconds ".to_owned(),
            "switchyard_sidecar_attached_gateways 0".to_owned(),
            "switchyard_grpc_server_handled_total{grpc_service=\"switchyard.v1.Gateway\",grpc_method=\"Send\",grpc_code=\"Ok\"} 0".to_owned(),
            "switchyard_grpc_server_handling_seconds_bucket{grpc_service=\"switchyard.v1.Gateway\",grpc_method=\"Attach\",le=\"0.001\"} 0".to_owned(),
        ];
        for kind in settings.transports.enabled() {
            expected.push(format!("switchyard_transport_up{{transport=\"{kind}\"}} 1"));
        }
        if let Some(canary) = &settings.canary {
            expected.push(format!(
                "switchyard_canary_share_ratio{{from=\"{}\",to=\"{}\"}} {}",
                canary.from,
                canary.to,
                f64::from(canary.share) / 100.0
            ));
        }
        for series in expected {
            assert!(
                body.contains(&series),
                "{name}: {series} missing from:\n{body}"
            );
        }
        sidecars::promtool_check(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        served.signal("TERM");
        let exit = tokio::task::spawn_blocking(move || served.wait())
            .await
            .unwrap();
        assert!(exit.success(), "{name}: {exit:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_readyz_answers_503_for_the_grace_while_new_calls_are_still_served() {
    use std::time::{Duration, Instant};
    use switchyard::proto::admin_client::AdminClient;

    let grace = Duration::from_secs(2);
    let served = Served::start(None, &[("SWITCHYARD__SIDECAR__READINESS_GRACE", "2s")]);
    assert_eq!(sidecars::http_get(served.telemetry, "/readyz").await.0, 200);
    served.signal("TERM");
    let signalled = Instant::now();
    served.wait_for("sidecar not ready");
    // From here on: 503, while a fresh connection's call is still served,
    // until the grace is over and the listener closes.
    let (mut not_ready, mut last_served) = (None, None);
    loop {
        assert!(signalled.elapsed() < grace * 5, "the listener never closed");
        let call = async {
            let mut admin = AdminClient::connect(format!("http://{}", served.grpc)).await?;
            admin.state(proto::StateRequest {}).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        if call.await.is_err() {
            break;
        }
        last_served = Some(Instant::now());
        let (status, _) = sidecars::http_get(served.telemetry, "/readyz").await;
        assert_eq!(status, 503, "readiness while shutting down");
        not_ready.get_or_insert_with(Instant::now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (not_ready, last_served) = (not_ready.unwrap(), last_served.unwrap());
    assert!(
        last_served - not_ready >= grace.mul_f64(0.75),
        "calls were served for only {:?} after readiness turned 503 (grace {grace:?})",
        last_served - not_ready
    );
    served.wait_for("sidecar stopped");
    let exit = tokio::task::spawn_blocking(move || served.wait())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// The `switchyard` command with `env`, as an operator runs it.
#[cfg(feature = "it-redis")]
fn switchyard(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(args).env_remove("SWITCHYARD_CONFIG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

#[cfg(feature = "it-redis")]
fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_line_by_line_and_text_logs_carry_no_colour_codes() {
    let served = Served::start(None, &[("SWITCHYARD_LOG_FORMAT", "json")]);
    served.signal("TERM");
    let draining = served.wait_for("sidecar draining");
    let stopped = served.wait_for("sidecar stopped");
    for line in [served.serving.clone(), draining, stopped] {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
    assert!(served.wait().success());
    // Text, on a pipe: no ANSI escapes.
    let served = Served::start(None, &[]);
    served.signal("TERM");
    let stopped = served.wait_for("sidecar stopped");
    assert!(!stopped.contains('\u{1b}'), "{stopped:?}");
    assert!(served.wait().success());
}

#[cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_canary_act_on_several_sidecars_given_as_host_port() {
    let root = Path::new(REPO);
    let canary = root.join("config/canary.toml");
    let a = Served::start(Some(&canary), &[]);
    let b = Served::start(Some(&canary), &[]);
    let addrs = format!("{},{}", a.grpc, b.grpc);
    let set = switchyard(&["canary", "set", "10", "--addr", &addrs], &[]);
    assert!(set.status.success(), "{}", text(&set));
    let out = text(&set);
    assert_eq!(out.matches("canary share 0% -> 10%").count(), 2, "{out}");
    let state = switchyard(&["state", "--addr", &addrs], &[]);
    let out = text(&state);
    assert!(state.status.success(), "{out}");
    for served in [&a, &b] {
        assert!(out.contains(&format!("== {}\n", served.grpc)), "{out}");
    }
    assert_eq!(out.matches("  redis    up\n").count(), 2, "{out}");
    assert_eq!(out.matches("  kafka    up\n").count(), 2, "{out}");
    assert_eq!(
        out.matches("canary: redis -> kafka  share: 10%").count(),
        2,
        "{out}"
    );
    // Durations as humans read them.
    let status = text(&switchyard(
        &["canary", "status", "--addr", &a.grpc.to_string()],
        &[],
    ));
    assert!(status.contains("window: "), "{status}");
    assert!(!status.contains(" ms  max down"), "{status}");
    for served in [a, b] {
        served.signal("TERM");
        assert!(served.wait().success());
    }
}

#[cfg(feature = "it-redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_the_shared_store() {
    let root = Path::new(REPO);
    let config = root.join("config/redis.toml");
    let prefix = format!("sy-presence-cli-{}", std::process::id());
    let env = [
        ("SWITCHYARD_CONFIG", config.to_str().unwrap()),
        ("SWITCHYARD__STORE__KEY_PREFIX", prefix.as_str()),
        (
            "SWITCHYARD__TRANSPORTS__REDIS__CONNECTION__KEY_PREFIX",
            prefix.as_str(),
        ),
    ];
    let served = Served::start(None, &env);
    let mut gateway = sidecars::gateway(served.grpc).await;
    let _deliveries = sidecars::attach(&mut gateway, "gw-cli", "eu").await;
    sidecars::online(&mut gateway, "gw-cli", "alice").await;
    let out = switchyard(&["presence", "alice"], &env);
    let found = text(&out);
    assert!(out.status.success(), "{found}");
    assert!(
        found.contains("alice  device phone  gateway gw-cli  region eu  since 20"),
        "{found}"
    );
    let out = switchyard(&["presence", "nobody"], &env);
    assert!(text(&out).contains("nobody: offline"), "{}", text(&out));
    served.signal("TERM");
    assert!(served.wait().success());
}
