//! `switchyard serve` as a real process: env overrides of the listen
//! addresses, SIGHUP reload (a bad file is refused, the old config stays),
//! and a graceful exit on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use switchyard::proto;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Forwards the child's log lines to a channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    for pipe in [
        Box::new(stderr) as Box<dyn std::io::Read + Send>,
        Box::new(stdout),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    rx
}

fn wait_for(log: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match log.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no log line containing {needle:?} within 10 s");
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

// Multi-threaded: the test thread blocks reading the child's log, and the
// gRPC client's connection task must keep running meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "[routing]\nsame_region = \"memory\"\n").unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWITCHYARD__SIDECAR__LISTEN", format!("127.0.0.1:{grpc}"))
        .env("SWITCHYARD__TELEMETRY__LISTEN", format!("127.0.0.1:{http}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = lines(&mut child);
    let serving = wait_for(&log, "sidecar serving");
    assert!(serving.contains(&format!("127.0.0.1:{grpc}")), "{serving}");
    let addr = format!("127.0.0.1:{grpc}").parse().unwrap();
    let (status, _) =
        common::http_get(format!("127.0.0.1:{http}").parse().unwrap(), "/readyz").await;
    assert_eq!(status, 200);

    // A bad file: refused with key and reason, the old config stays.
    std::fs::write(&config, "[routing]\nsame_region = \"pigeon\"\n").unwrap();
    signal(&child, "HUP");
    let refused = wait_for(&log, "config reload refused");
    assert!(refused.contains("routing.same_region"), "{refused}");
    let state = common::admin(addr)
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.routing.unwrap().same_region, "memory");

    signal(&child, "TERM");
    wait_for(&log, "sidecar stopped");
    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
