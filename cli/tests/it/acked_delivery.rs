//! Acknowledged delivery through faults, on each durable route (Redis,
//! Kafka, NATS JetStream), against the real servers of
//! `scripts/services/*.sh start`.
//!
//! The receiving gateway's sidecar is a real `switchyard serve` process, so
//! it can be killed with SIGKILL or stopped with SIGTERM and started again;
//! the sender is a router in this process on the same Redis store. Every
//! case counts messages by id: each one whose send was confirmed for the
//! receiving gateway (or that was stored offline for its user) must reach
//! the gateway, and duplicates are allowed only after a fault, bounded by
//! the unacked window plus one batch.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-nats"))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sidecars::Attachment;
use switchyard::proto;
use switchyard::{Destination, Envelope, GatewayInfo, MessageId, Outcome, Router, Settings};
use testkit::servers;
use testkit::sidecars;

/// How long a case waits for everything to arrive.
const PATIENCE: Duration = Duration::from_secs(60);
/// The receiving sidecar's unacked window (`limits.inbox_queue`): small, so
/// a slow gateway leaves most messages with the transport.
const WINDOW: usize = 100;
/// Messages per `send_batch`.
const BATCH: usize = 50;

#[derive(Debug, Clone, Copy)]
enum Route {
    Redis,
    Kafka,
    Nats,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Redis => "redis",
            Route::Kafka => "kafka",
            Route::Nats => "nats",
        }
    }

    /// The `[transports.*]` section of this route, under `run`'s names.
    fn section(self, run: &str) -> String {
        match self {
            Route::Redis => format!(
                r#"
                [transports.redis.connection]
                url = "redis://127.0.0.1:6379"
                key_prefix = "sy-ack-{run}""#
            ),
            Route::Kafka => format!(
                r#"
                [transports.kafka]
                brokers = "{brokers}"
                topic_prefix = "syack.{run}."
                group_prefix = "syack.{run}."
                fetch_wait_max = "5ms"
                commit_interval = "100ms"
                session_timeout = "6s"
                delivery_timeout = "10s""#,
                brokers = servers::KAFKA
            ),
            Route::Nats => format!(
                r#"
                [transports.nats]
                url = "{url}"
                stream = "SYACK_{run}"
                subject_prefix = "syack.{run}"
                storage = "memory"
                ack_wait = "2s"
                max_age = "10m""#,
                url = servers::NATS
            ),
        }
    }
}

/// One run's config: Redis store, every route over `route` alone.
fn config(route: Route, run: &str, grpc: u16) -> String {
    format!(
        r#"
        [store]
        kind = "redis"
        url = "redis://127.0.0.1:6379"
        key_prefix = "sy-ack-{run}"
        {section}

        [routing]
        same_region = "{name}"
        cross_region = "{name}"
        fallbacks = []

        [limits]
        inbox_queue = {WINDOW}

        [sidecar]
        listen = "127.0.0.1:{grpc}"
        drain_timeout = "4s"

        [telemetry]
        listen = "127.0.0.1:0"
        "#,
        section = route.section(run),
        name = route.name(),
    )
}

/// The receiving gateway's sidecar: a `switchyard serve` process.
struct Receiver {
    config: PathBuf,
    grpc: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(text: &str, grpc: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("switchyard.toml");
        std::fs::write(&config, text).expect("write config");
        let mut receiver = Self {
            config,
            grpc,
            child: None,
            _dir: dir,
        };
        receiver.run().await;
        receiver
    }

    async fn run(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn switchyard serve");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !servers::wait_listening(self.grpc, Duration::from_millis(100)).await {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("switchyard serve exited with {status} (its log is above)");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "switchyard serve did not listen on {} within 30 s",
                self.grpc
            );
        }
    }

    /// Sends `signal` (KILL or TERM) and waits for the process to exit.
    fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status()
                .expect("kill");
            assert!(status.success(), "kill -{signal} failed");
            let _ = child.wait();
        }
    }

    async fn gateway(&self) -> proto::gateway_client::GatewayClient<tonic::transport::Channel> {
        let addr = format!("127.0.0.1:{}", self.grpc).parse().expect("address");
        sidecars::gateway(addr).await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop("KILL");
    }
}

/// The receiving gateway `gw-recv` in `region`, attached with user `bob`
/// online. Right after a stream broke the sidecar may not have noticed yet
/// (ALREADY_EXISTS): a gateway retries, as this does.
async fn attach(receiver: &Receiver, region: &str) -> Attachment {
    let mut client = receiver.gateway().await;
    let request = || proto::AttachRequest {
        gateway_id: "gw-recv".into(),
        region: region.into(),
        address: String::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match Attachment::open(&mut client, request()).await {
            Ok(stream) => break stream,
            Err(status)
                if status.code() == tonic::Code::AlreadyExists
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("attach: {status:?}"),
        }
    };
    sidecars::online(&mut client, "gw-recv", "bob").await;
    stream
}

/// What the sender was told, per message id.
#[derive(Default)]
struct Sent {
    /// Confirmed for gw-recv, or stored offline for bob: must arrive.
    owed: BTreeSet<MessageId>,
    /// Neither (every transport and the offline store refused).
    refused: usize,
}

async fn sender(settings: &Settings) -> Router {
    let (router, _inbox) = Router::builder(GatewayInfo::new("gw-send", "eu"))
        .settings(settings.clone())
        .build()
        .await
        .expect("sender router");
    router
}

/// Sends `n` messages to bob in batches, recording what each outcome owes.
async fn send(router: &Router, n: usize, sent: &mut Sent) {
    for chunk in 0..n.div_ceil(BATCH) {
        let batch = (0..BATCH.min(n - chunk * BATCH))
            .map(|i| {
                Envelope::new(
                    "alice",
                    "gw-send",
                    Destination::User("bob".into()),
                    format!("m{}", chunk * BATCH + i),
                )
            })
            .collect();
        for result in router.send_batch(batch).await {
            let Ok(report) = result else {
                sent.refused += 1;
                continue;
            };
            let Outcome::Routed {
                targets,
                stored_offline,
            } = report.outcome
            else {
                panic!("bob never blocks alice: {:?}", report.outcome);
            };
            let confirmed = targets
                .iter()
                .any(|t| t.gateway.as_str() == "gw-recv" && t.result.is_ok());
            if confirmed || stored_offline.is_some() {
                sent.owed.insert(report.id);
            } else {
                sent.refused += 1;
            }
        }
    }
}

/// What the gateway took, by id (how often).
type Taken = BTreeMap<MessageId, usize>;

/// Takes up to `n` deliveries, acking each; stops early when the stream
/// ends or nothing comes for `idle`.
async fn take(stream: &mut Attachment, n: usize, idle: Duration, taken: &mut Taken) -> usize {
    let mut count = 0;
    while count < n {
        let Ok(Ok(Some(delivery))) = tokio::time::timeout(idle, stream.next()).await else {
            break;
        };
        let id = MessageId::from_slice(&delivery.envelope.expect("an envelope").id)
            .expect("a 16-byte id");
        *taken.entry(id).or_default() += 1;
        stream.ack(delivery.seq);
        count += 1;
    }
    count
}

/// Takes deliveries until every owed id arrived (or [`PATIENCE`] ran out),
/// then asserts none is lost and duplicates stay within `bound`.
async fn settle(stream: &mut Attachment, sent: &Sent, taken: &mut Taken, bound: usize, case: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sent.owed.iter().any(|id| !taken.contains_key(id))
        && tokio::time::Instant::now() < deadline
    {
        take(stream, usize::MAX, Duration::from_secs(2), taken).await;
    }
    // Anything still in flight shows up as a duplicate, not later.
    take(stream, usize::MAX, Duration::from_millis(500), taken).await;
    let lost = sent
        .owed
        .iter()
        .filter(|id| !taken.contains_key(id))
        .count();
    let duplicates: usize = taken.values().map(|n| n - 1).sum();
    let strangers = taken.keys().filter(|id| !sent.owed.contains(id)).count();
    println!(
        "{case}: owed {}, refused {}, taken {} unique, lost {lost}, duplicates {duplicates}, strangers {strangers}",
        sent.owed.len(),
        sent.refused,
        taken.len()
    );
    assert_eq!(lost, 0, "{case}: confirmed messages lost");
    assert_eq!(strangers, 0, "{case}: messages nobody was told were sent");
    assert!(
        duplicates <= bound,
        "{case}: {duplicates} duplicates, more than {bound}"
    );
}

fn run_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

/// The gateway takes 100 of 1,000, then its process dies (the stream breaks,
/// no clean close); it attaches again and gets the rest, none twice except
/// what it had taken and whose ack had not reached the sidecar.
async fn gateway_dies_mid_stream(route: Route) {
    let run = run_id();
    let grpc = servers::free_port();
    let text = config(route, &run, grpc);
    let receiver = Receiver::start(&text, grpc).await;
    let settings = Settings::from_toml(&text).expect("valid");
    let router = sender(&settings).await;
    let mut stream = attach(&receiver, "eu").await;
    let mut sent = Sent::default();
    let sending = async {
        send(&router, 1_000, &mut sent).await;
    };
    let mut taken = Taken::new();
    let reading = take(&mut stream, 100, Duration::from_secs(20), &mut taken);
    let (_, got) = tokio::join!(sending, reading);
    assert_eq!(got, 100, "{route:?}: first 100");
    drop(stream);
    let mut stream = attach(&receiver, "eu").await;
    // The gateway died with acks still on their way: what it took after
    // the last ack the sidecar saw comes again (at most the window).
    let case = format!("{route:?} gateway dies");
    settle(&mut stream, &sent, &mut taken, WINDOW, &case).await;
}

/// The receiving sidecar is killed (SIGKILL) or stopped (SIGTERM) while its
/// gateway reads slowly, then started again; the gateway attaches to the
/// new process and gets everything that was owed to it.
async fn sidecar_stops_under_a_slow_gateway(route: Route, signal: &str) {
    let run = run_id();
    let grpc = servers::free_port();
    let text = config(route, &run, grpc);
    let mut receiver = Receiver::start(&text, grpc).await;
    let settings = Settings::from_toml(&text).expect("valid");
    let router = sender(&settings).await;
    let mut stream = attach(&receiver, "eu").await;
    let mut sent = Sent::default();
    send(&router, 1_000, &mut sent).await;
    let mut taken = Taken::new();
    // A slow gateway: 200 taken, the rest waits in the window and the broker.
    take(&mut stream, 200, Duration::from_secs(20), &mut taken).await;
    receiver.stop(signal);
    drop(stream);
    // Traffic goes on while the sidecar is away (Redis: stored offline).
    send(&router, 200, &mut sent).await;
    receiver.run().await;
    let mut stream = attach(&receiver, "eu").await;
    // After SIGKILL: what was unacked, the rest of its batch, and what was
    // acked but not yet recorded by the transport (Redis: the last few ms).
    let bound = if signal == "KILL" {
        2 * WINDOW + BATCH
    } else {
        0
    };
    let case = format!("{route:?} sidecar SIG{signal}");
    settle(&mut stream, &sent, &mut taken, bound, &case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gateway_dies_mid_stream() {
    gateway_dies_mid_stream(Route::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gateway_dies_mid_stream() {
    gateway_dies_mid_stream(Route::Kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_gateway_dies_mid_stream() {
    gateway_dies_mid_stream(Route::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sidecar_sigkill() {
    sidecar_stops_under_a_slow_gateway(Route::Redis, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sidecar_sigkill() {
    sidecar_stops_under_a_slow_gateway(Route::Kafka, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sidecar_sigkill() {
    sidecar_stops_under_a_slow_gateway(Route::Nats, "KILL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sidecar_sigterm() {
    sidecar_stops_under_a_slow_gateway(Route::Redis, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sidecar_sigterm() {
    sidecar_stops_under_a_slow_gateway(Route::Kafka, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sidecar_sigterm() {
    sidecar_stops_under_a_slow_gateway(Route::Nats, "TERM").await;
}

/// Bob is offline while 1,000 messages are stored for him; his Online
/// replay is cut by SIGKILL after 100 were taken; the next Online replays
/// the rest, and only what was taken and not acked comes twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_replay_survives_sigkill() {
    let run = run_id();
    let grpc = servers::free_port();
    let text = config(Route::Redis, &run, grpc);
    let mut receiver = Receiver::start(&text, grpc).await;
    let settings = Settings::from_toml(&text).expect("valid");
    let router = sender(&settings).await;
    let mut sent = Sent::default();
    send(&router, 1_000, &mut sent).await;
    assert_eq!(sent.owed.len(), 1_000, "all stored offline");
    let mut stream = attach(&receiver, "eu").await;
    let mut taken = Taken::new();
    take(&mut stream, 100, Duration::from_secs(20), &mut taken).await;
    receiver.stop("KILL");
    drop(stream);
    receiver.run().await;
    let mut stream = attach(&receiver, "eu").await;
    settle(
        &mut stream,
        &sent,
        &mut taken,
        WINDOW,
        "offline replay SIGKILL",
    )
    .await;
}

/// The gateway leaves without acking and attaches again from another
/// region: the sidecar keeps its inbox and hands everything out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_in_another_region_keeps_the_unacked() {
    let run = run_id();
    let grpc = servers::free_port();
    let text = config(Route::Redis, &run, grpc);
    let receiver = Receiver::start(&text, grpc).await;
    let settings = Settings::from_toml(&text).expect("valid");
    let router = sender(&settings).await;
    let mut stream = attach(&receiver, "eu").await;
    let mut sent = Sent::default();
    send(&router, 50, &mut sent).await;
    // Read every one, ack none.
    let mut unacked = 0;
    while unacked < 50 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Ok(Some(_))) => unacked += 1,
            other => panic!("after {unacked}: {other:?}"),
        }
    }
    drop(stream);
    let mut stream = attach(&receiver, "us").await;
    let mut taken = Taken::new();
    settle(&mut stream, &sent, &mut taken, 0, "re-attach in us").await;
}
