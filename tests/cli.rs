//! The `switchyard` command as an operator runs it.

use std::process::{Command, Output};

fn switchyard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    // deploy/k8s's ConfigMap: tests/sidecar_deploy.rs. The deploy configs
    // name secrets that exist only in a deployment.
    for (dir, flags) in [
        ("config", &[][..]),
        ("deploy/config", &["--skip-secrets"][..]),
    ] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().path();
            let file = file.to_str().unwrap();
            let mut args = vec!["check-config", file];
            args.extend(flags);
            let out = switchyard(&args, &[]);
            assert!(out.status.success(), "{file}: {}", stdout(&out));
        }
    }
}

#[test]
fn check_config_lists_every_problem_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[routing]\ncross_region = \"kafak\"\nfallbacks = [\"nats\"]\n[limits]\ninbox_queue = 0\n",
    )
    .unwrap();
    let out = switchyard(&["check-config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for expected in [
        "routing.cross_region: unknown transport \"kafak\" (known: memory, redis, kafka, nats, grpc)",
        "routing.fallbacks[0]: transport \"nats\" is not enabled (add a [transports.nats] section)",
        "limits.inbox_queue: must be between 1 and 1000000, got 0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn environment_overrides_the_file() {
    let out = switchyard(
        &["check-config", "config/switchyard.toml"],
        &[("SWITCHYARD__ROUTING__CROSS_REGION", "kafak")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("routing.cross_region: unknown transport \"kafak\""));
}

#[test]
fn sentinel_nodes_come_from_the_environment_as_a_list() {
    let out = switchyard(
        &["check-config", "config/sentinel.toml"],
        &[
            (
                "SWITCHYARD__STORE__SENTINEL__NODES",
                "redis://10.0.0.1:26379,http://x",
            ),
            (
                "SWITCHYARD__TRANSPORTS__REDIS__CONNECTION__SENTINEL__NODES",
                "redis://10.0.0.1:26379,redis://10.0.0.2:26379",
            ),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // The second entry of the list, not one string that is not a list.
    assert!(
        text.contains("store.sentinel.nodes: \"http://x\" is not a redis:// or rediss:// URL"),
        "{text}"
    );
    assert!(!text.contains("transports.redis"), "{text}");
}

#[test]
fn demo_prints_the_table_and_the_loss_line() {
    let out = switchyard(
        &[
            "demo",
            "--users",
            "200",
            "--messages",
            "2000",
            "--rate",
            "0",
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("same_region"), "{text}");
    assert!(text.contains("lost: 0  duplicates: 0"), "{text}");
}

#[test]
fn bench_runs_on_the_memory_default_and_writes_json_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let svg = dir.path().join("bench.svg");
    let out = switchyard(
        &[
            "bench",
            "--duration",
            "1s",
            "--rate",
            "2000",
            "--json",
            json.to_str().unwrap(),
            "--plot",
            svg.to_str().unwrap(),
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = &report["rows"][0];
    assert_eq!(row["transport"], "memory");
    assert_eq!(row["path"], "switchyard");
    // Speed is not asserted; only that the run measured what it sent.
    assert_eq!(row["sent"], 2000);
    assert_eq!(row["delivered"], 2000);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}

#[test]
fn bench_drives_direct_links_and_the_sidecar_path() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = switchyard(
        &[
            "bench",
            "--transports",
            "memory,grpc",
            "--paths",
            "library,sidecar",
            "--duration",
            "1s",
            "--rate",
            "1000",
            "--json",
            json.to_str().unwrap(),
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let found: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap(),
                r["transport"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("switchyard", "memory"),
            ("sidecar", "memory"),
            ("raw tonic", "grpc"),
            ("switchyard", "grpc"),
            ("sidecar", "grpc"),
        ]
    );
    // Speed is not asserted; only that every path measured what it sent.
    for row in rows {
        assert_eq!(row["sent"], 1000, "{row}");
        assert_eq!(row["delivered"], row["sent"], "{row}");
    }
    assert!(rows[3]["throughput_ratio"].is_number(), "grpc x raw tonic");
    assert!(
        rows[4]["sidecar_p99_added_ms"].is_number(),
        "sidecar vs library"
    );
}

#[test]
fn explain_says_why() {
    let out = switchyard(
        &[
            "explain",
            "--from",
            "alice",
            "--to",
            "bob",
            "--gateway",
            "eu-1",
            "--region",
            "eu",
        ],
        &[],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no live session -> stored offline"), "{text}");
}
