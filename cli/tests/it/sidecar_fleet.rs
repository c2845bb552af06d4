//! Sidecars that share nothing in-process: each builds its own `Backends`
//! (its own Redis and Kafka connections), as separate processes would, and
//! they meet only through Redis (state, same-region Pub/Sub) and Kafka
//! (cross-region). Every run uses a fresh Redis key prefix and Kafka
//! topic/group prefix, so runs do not see each other.
//!
//! Needs `scripts/services/{redis,kafka}.sh start`.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-tools"))]

use std::time::Duration;

use switchyard::proto;
use switchyard::sidecar::Sidecar;
use switchyard::Settings;
use testkit::sidecars;

/// The repository root: this crate is cli/ in it.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The `config/local.toml` routing (Redis same-region, Kafka cross-region)
/// under prefixes unique to `run`, on free loopback ports.
fn settings(run: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
        [store]
        kind = "redis"
        url = "redis://127.0.0.1:6379"
        key_prefix = "sy-test-{run}"

        [transports.redis.connection]
        url = "redis://127.0.0.1:6379"
        key_prefix = "sy-test-{run}"

        [transports.kafka]
        brokers = "127.0.0.1:9092"
        client_id = "switchyard-test"
        topic_prefix = "sytest.{run}."
        group_prefix = "sytest.{run}."
        linger = "1ms"
        fetch_wait_max = "5ms"
        commit_interval = "100ms"
        delivery_timeout = "5s"
        connect_timeout = "5s"

        [routing]
        same_region = "redis"
        cross_region = "kafka"

        [sidecar]
        listen = "127.0.0.1:0"

        [telemetry]
        listen = "127.0.0.1:0"
        "#
    ))
    .expect("test settings are valid")
}

/// How long a confirmed message may take to arrive. A gateway's first
/// Kafka record waits for its topic's creation and its consumer group's
/// join, which on a 2-core machine also running other brokers' JVMs has
/// taken over 20 s; a delivery that works arrives in milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// The next delivery on `stream`, which should bring `what`.
async fn next(stream: &mut sidecars::Deliveries, what: &str) -> proto::Delivery {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: confirmed, but not delivered within {PATIENCE:?}"))
        .expect("stream ok")
        .expect("stream open")
}

/// Three sidecars, each on its own backends: A and B in `eu`, C in `us`.
async fn fleet() -> Vec<Sidecar> {
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        let sidecar = Sidecar::start(settings(&run), None)
            .await
            .expect("sidecar on Redis and Kafka (scripts/services/{redis,kafka}.sh start)");
        sidecars.push(sidecar);
    }
    sidecars
}

// Multi-threaded: each sidecar's server and consumers run beside the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_on_separate_sidecars_talk_over_redis_and_kafka() {
    let sidecars = fleet().await;
    let mut a = sidecars::gateway(sidecars[0].grpc_addr()).await;
    let mut b = sidecars::gateway(sidecars[1].grpc_addr()).await;
    let mut c = sidecars::gateway(sidecars[2].grpc_addr()).await;
    let _from_a = sidecars::attach(&mut a, "gw-a", "eu").await;
    let mut to_b = sidecars::attach(&mut b, "gw-b", "eu").await;
    let mut to_c = sidecars::attach(&mut c, "gw-c", "us").await;
    sidecars::online(&mut a, "gw-a", "alice").await;
    sidecars::online(&mut b, "gw-b", "bob").await;
    sidecars::online(&mut c, "gw-c", "carol").await;

    for (to, gateway, route, via, stream) in [
        ("bob", "gw-b", proto::Route::SameRegion, "redis", &mut to_b),
        (
            "carol",
            "gw-c",
            proto::Route::CrossRegion,
            "kafka",
            &mut to_c,
        ),
    ] {
        for i in 0..5 {
            let payload = format!("{to} {i}");
            let outcome =
                sidecars::send(&mut a, "gw-a", sidecars::message("alice", to, &payload)).await;
            let target = &sidecars::routed(&outcome).targets[0];
            assert_eq!(target.gateway, gateway);
            assert_eq!(target.route(), route, "{target:?}");
            assert!(target.delivered, "{target:?}");
            assert_eq!(target.via, via, "{target:?}");
            let delivery = next(stream, &format!("{payload:?} over {via}")).await;
            assert_eq!(delivery.via, via);
            let envelope = delivery.envelope.expect("an envelope");
            assert_eq!(envelope.payload, payload.as_bytes(), "in order");
            assert_eq!(envelope.sender_user, "alice");
        }
    }

    // librdkafka reports statistics every second; the lag of gw-c's
    // consumer shows once it has committed an offset.
    let telemetry = sidecars[2].telemetry_addr();
    let lag = "switchyard_kafka_consumer_lag_messages{gateway=\"gw-c\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let (status, body) = sidecars::http_get(telemetry, "/metrics").await;
        assert_eq!(status, 200);
        if body.contains(lag) || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(metrics.contains(lag), "no {lag} in:\n{metrics}");
    assert!(metrics.contains("# HELP switchyard_kafka_consumer_lag_messages "));
    for via in ["redis", "kafka"] {
        let series = format!("switchyard_delivery_latency_seconds_bucket{{via=\"{via}\"");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    sidecars::promtool_check(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));

    for sidecar in sidecars {
        tokio::time::timeout(Duration::from_secs(20), sidecar.shutdown())
            .await
            .expect("shutdown within 20 s")
            .expect("clean shutdown");
    }
}

/// `scripts/fleet.sh` with its own ports, state dir and prefixes; stopped
/// when dropped, so a failing test leaves no processes behind.
struct ScriptFleet {
    state: tempfile::TempDir,
    grpc_base: u16,
    http_base: u16,
    run: String,
}

impl ScriptFleet {
    fn new() -> Self {
        // Seven ports below the ephemeral range, picked by process id so
        // parallel test binaries do not collide.
        let grpc_base = 20000 + (std::process::id() % 1500) as u16 * 7;
        Self {
            state: tempfile::tempdir().unwrap(),
            grpc_base,
            http_base: grpc_base + 3,
            run: ulid::Ulid::new().to_string().to_lowercase(),
        }
    }

    fn run(&self, action: &str) -> std::process::Output {
        let prefix = format!("sy-test-{}", self.run);
        std::process::Command::new("bash")
            .arg(format!("{REPO}/scripts/fleet.sh"))
            .arg(action)
            .env("FLEET_BIN", env!("CARGO_BIN_EXE_switchyard"))
            .env("FLEET_STATE", self.state.path())
            .env("FLEET_GRPC_BASE", self.grpc_base.to_string())
            .env("FLEET_HTTP_BASE", self.http_base.to_string())
            .env("SWITCHYARD__STORE__KEY_PREFIX", &prefix)
            .env(
                "SWITCHYARD__TRANSPORTS__REDIS__CONNECTION__KEY_PREFIX",
                &prefix,
            )
            .env(
                "SWITCHYARD__TRANSPORTS__KAFKA__TOPIC_PREFIX",
                format!("sytest.{}.", self.run),
            )
            .env(
                "SWITCHYARD__TRANSPORTS__KAFKA__GROUP_PREFIX",
                format!("sytest.{}.", self.run),
            )
            .output()
            .unwrap()
    }

    fn grpc(&self, n: u16) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.grpc_base + n).into()
    }
}

impl Drop for ScriptFleet {
    fn drop(&mut self) {
        self.run("stop");
        // A failed test shows what each sidecar logged (the state dir goes).
        if std::thread::panicking() {
            for n in 1..=3 {
                let log = self.state.path().join(format!("sidecar-{n}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("--- sidecar-{n}.log, last lines ---");
                tail.iter().rev().for_each(|line| eprintln!("{line}"));
            }
        }
    }
}

fn output(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The same exchange through `scripts/fleet.sh`: three `switchyard serve`
/// processes on `deploy/config/fleet.toml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_fleet_routes_over_redis_and_kafka() {
    let fleet = ScriptFleet::new();
    let started = tokio::task::block_in_place(|| fleet.run("start"));
    assert!(started.status.success(), "start:\n{}", output(&started));
    let mut a = sidecars::gateway(fleet.grpc(1)).await;
    let mut b = sidecars::gateway(fleet.grpc(2)).await;
    let mut c = sidecars::gateway(fleet.grpc(3)).await;
    let _from_a = sidecars::attach(&mut a, "gw-a", "eu").await;
    let mut to_b = sidecars::attach(&mut b, "gw-b", "eu").await;
    let mut to_c = sidecars::attach(&mut c, "gw-c", "us").await;
    sidecars::online(&mut a, "gw-a", "alice").await;
    sidecars::online(&mut b, "gw-b", "bob").await;
    sidecars::online(&mut c, "gw-c", "carol").await;
    for (to, via, stream) in [("bob", "redis", &mut to_b), ("carol", "kafka", &mut to_c)] {
        let outcome = sidecars::send(&mut a, "gw-a", sidecars::message("alice", to, to)).await;
        let target = &sidecars::routed(&outcome).targets[0];
        assert!(target.delivered, "{target:?}");
        assert_eq!(target.via, via, "{target:?}");
        let delivery = next(stream, &format!("{to:?} over {via}")).await;
        assert_eq!(delivery.via, via);
        assert_eq!(delivery.envelope.unwrap().payload, to.as_bytes());
    }
    let stopped = tokio::task::block_in_place(|| fleet.run("stop"));
    assert_eq!(
        output(&stopped).matches(" stopped").count(),
        3,
        "{}",
        output(&stopped)
    );
}
