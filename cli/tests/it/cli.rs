//! The `switchyard` command as an operator runs it.

use std::path::Path;
use std::process::{Command, Output};

/// The repository root: this crate is cli/ in it.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn switchyard(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    // The shipped configs' paths (`config/...`) are relative to the root.
    cmd.current_dir(REPO).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `switchyard bench ARGS --json F`, asserts it succeeded, and returns
/// the report it wrote.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let mut all = vec!["bench"];
    all.extend(args);
    all.extend(["--json", json.to_str().unwrap()]);
    let out = switchyard(&all, &[]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// Each receiving gateway's (delivered, expected) of one report row.
fn receivers(row: &serde_json::Value) -> Vec<(u64, u64)> {
    row["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["delivered"].as_u64().unwrap(),
                r["expected"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn check_config_accepts_the_shipped_configs() {
    // deploy/k8s's ConfigMap: cli/tests/it/sidecar_deploy.rs. The deploy configs
    // name secrets that exist only in a deployment.
    for (dir, flags) in [
        ("config", &[][..]),
        ("deploy/config", &["--skip-secrets"][..]),
    ] {
        for entry in std::fs::read_dir(Path::new(REPO).join(dir)).unwrap() {
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
    assert_eq!(stdout(&out), "", "problems go to stderr");
    let text = stderr(&out);
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
    assert!(stderr(&out).contains("routing.cross_region: unknown transport \"kafak\""));
}

#[test]
fn check_config_reports_every_section_that_does_not_parse_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[routing]\nbogus = 1\n[limits]\ninbox_queue = \"x\"\n[nonsense]\na = 1\n",
    )
    .unwrap();
    let out = switchyard(
        &["check-config", "--format", "json"],
        &[
            ("SWITCHYARD_CONFIG", file.to_str().unwrap()),
            ("SWITCHYARD__DELIVERY__RETRIES", "many"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(report["ok"], false);
    let keys: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "delivery.retries",
            "limits.inbox_queue",
            "nonsense",
            "routing"
        ],
        "{report}"
    );
    let retries = &report["problems"][0]["reason"];
    assert!(
        retries
            .as_str()
            .unwrap()
            .ends_with("(set by SWITCHYARD__DELIVERY__RETRIES)"),
        "{retries}"
    );
    let ok = switchyard(
        &["check-config", "--format", "json", "config/local.toml"],
        &[],
    );
    assert!(ok.status.success());
    let report: serde_json::Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["problems"], serde_json::json!([]));
}

#[test]
fn every_subcommand_reads_switchyard_config_and_the_effective_config_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchyard.toml");
    std::fs::write(
        &file,
        "[store]\nkind = \"redis\"\nurl = \"redis://app:hunter2@127.0.0.1:6379\"\n",
    )
    .unwrap();
    let env = [
        ("SWITCHYARD_CONFIG", file.to_str().unwrap()),
        ("SWITCHYARD__ROUTING__FALLBACKS", "memory"),
    ];
    let out = switchyard(&["config", "--effective"], &env);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("redis://app:<redacted>@127.0.0.1:6379"),
        "{text}"
    );
    assert!(text.contains("fallbacks = [\"memory\"]"), "{text}");
    // A bad SWITCHYARD_CONFIG fails every subcommand that loads config,
    // naming the file once (check-config: tested above).
    let missing = [("SWITCHYARD_CONFIG", "/nonexistent/switchyard.toml")];
    for args in [
        &["config", "--effective"][..],
        &["demo", "--messages", "1"],
        &["explain", "--from", "a", "--to", "b", "--gateway", "g"],
        &["bench", "--duration", "1s"],
        &["presence", "alice"],
        &["serve"],
    ] {
        let out = switchyard(args, &missing);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let text = stderr(&out);
        assert_eq!(
            text.matches("/nonexistent/switchyard.toml").count(),
            1,
            "{args:?}: {text}"
        );
    }
    // Without --effective: the embedded default, with its comments.
    let default = stdout(&switchyard(&["config"], &[]));
    assert!(default.contains("# switchyard serve"), "{default}");
}

#[test]
fn help_shows_an_example_per_subcommand() {
    for command in [
        "demo",
        "check-config",
        "explain",
        "bench",
        "serve",
        "canary",
        "state",
        "presence",
        "config",
    ] {
        let out = switchyard(&[command, "--help"], &[]);
        let text = stdout(&out);
        assert!(out.status.success(), "{command}: {text}");
        assert!(
            text.contains(&format!("\n  switchyard {command}"))
                || text.contains(&format!(" switchyard {command} ")),
            "{command} --help has no example:\n{text}"
        );
    }
}

#[test]
fn an_error_prints_each_cause_once_on_its_own_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there any more; no scheme given.
    let out = switchyard(&["state", "--addr", &format!("127.0.0.1:{port}")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with(&format!(
            "error: cannot connect to the admin API at http://127.0.0.1:{port}\n"
        )),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let cause = line.trim_start_matches("  caused by: ");
        assert!(
            lines[i + 1..].iter().all(|later| !later.contains(cause)),
            "{cause:?} repeated in:\n{text}"
        );
    }
    assert!(text.contains("Connection refused"), "{text}");
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
    let text = stderr(&out);
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
fn bench_spreads_targets_over_gateways_and_counts_each() {
    let report = bench_json(&[
        "--transports",
        "memory",
        "--paths",
        "library,sidecar",
        "--targets",
        "3",
        "--messages",
        "1000",
        "--batch",
        "30",
    ]);
    assert_eq!(report["options"]["targets"], 3);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "library and sidecar, no raw baseline for memory"
    );
    for row in rows {
        // Message i to user i mod 3: 334, 333, 333, each delivered once.
        assert_eq!(row["sent"], 1000, "{row}");
        assert_eq!(row["expected"], 1000, "{row}");
        assert_eq!(row["delivered"], 1000, "{row}");
        assert_eq!(
            receivers(row),
            [(334, 334), (333, 333), (333, 333)],
            "{row}"
        );
        // Each batch of 30 went to all three gateways.
        assert_eq!(row["gateways_per_batch"], 3.0, "{row}");
    }
}

#[test]
fn bench_chat_workload_counts_every_gateways_share_of_users_and_groups() {
    let report = bench_json(&[
        "--transports",
        "memory",
        "--paths",
        "library,sidecar",
        "--workload",
        "chat",
        "--raw=false",
        "--targets",
        "20",
        "--messages",
        "2000",
    ]);
    assert_eq!(report["options"]["workload"], "chat");
    for row in report["rows"].as_array().unwrap() {
        let receivers = receivers(row);
        // Each gateway got exactly what the mix sent it, and it is skewed:
        // the most popular user's gateway gets more than the least's.
        assert!(receivers.iter().all(|(got, due)| got == due), "{row}");
        let dues: Vec<u64> = receivers.iter().map(|(_, due)| *due).collect();
        assert!(dues[0] > 2 * dues[19], "{dues:?}");
        // Groups deliver to several gateways: more deliveries than messages.
        assert_eq!(row["sent"], 2000, "{row}");
        assert!(row["expected"].as_u64().unwrap() > 2000, "{row}");
        assert_eq!(row["delivered"], row["expected"], "{row}");
    }
}

#[test]
fn bench_refuses_gateway_counts_out_of_range_naming_the_flag() {
    for (args, expected) in [
        (
            &["--targets", "0"][..],
            "--targets: must be between 1 and 1000",
        ),
        (
            &["--targets", "1000000"],
            "--targets: must be between 1 and 1000",
        ),
        (&["--fanout", "0"], "--fanout: must be between 1 and 1000"),
        (
            &["--fanout", "3", "--targets", "3"],
            "--targets: spreads 1:1 messages",
        ),
        (
            &["--workload", "chat", "--targets", "3"],
            "--workload: the raw clients have no chat mix",
        ),
        (
            &["--workload", "chat", "--raw=false", "--fanout", "3"],
            "--workload: chat spreads its own groups",
        ),
    ] {
        let mut all = vec!["bench", "--duration", "1s"];
        all.extend(args);
        let out = switchyard(&all, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains(expected), "{args:?}: {text}");
    }
    let out = switchyard(&["bench", "--targets", "many"], &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--targets"), "{}", stderr(&out));
}

#[test]
fn bench_drives_direct_links_and_the_sidecar_path() {
    let report = bench_json(&[
        "--transports",
        "memory,grpc",
        "--paths",
        "library,sidecar",
        "--duration",
        "1s",
        "--rate",
        "1000",
    ]);
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
