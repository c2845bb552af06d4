//! Kafka faults on Apache Kafka itself: three KRaft nodes, replication
//! factor 3, `min.insync.replicas` 2, switchyard's idempotent producer
//! (`acks=all`). Each case counts messages by id, Jepsen-style: a publish
//! is confirmed or failed (outcome unknown, retried with the same ids); lost
//! means confirmed and never received. Every case must lose nothing.
//!
//! The broker cases run a private cluster each (`servers::PrivateKafka`,
//! their own ports), since they kill nodes; the subscriber case kills a
//! child process reading the shared cluster of `scripts/services/kafka.sh`.
//! Measured figures are printed (`--nocapture`) and kept in docs/KAFKA.md.
//!
//!   scripts/services/kafka.sh start
//!   cargo test -p switchyard-cli --features it-kafka,it-redis --test it kafka_faults:: -- --nocapture

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-kafka", feature = "it-redis"))]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use switchyard::transport::kafka::KafkaTransport;
use switchyard::transport::{Ack, Subscription, Transport};
use switchyard::{Destination, Envelope, GatewayId, MessageId};
use testkit::servers;
use testkit::sidecars;
use tokio::time::Instant;

use servers::PrivateKafka;

/// Longest any case waits for its messages (or for a retried publish).
const PATIENCE: Duration = Duration::from_secs(90);
/// Messages a sender publishes at once.
const BATCH: usize = 10;

fn gateway(case: &str) -> GatewayId {
    GatewayId::try_from(format!("{case}{}", ulid::Ulid::new())).unwrap()
}

fn envelopes(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            Envelope::new(
                "u",
                "gw-sender",
                Destination::User("v".into()),
                format!("{i}"),
            )
        })
        .collect()
}

/// What the sender was told, per message id.
#[derive(Default)]
struct Sent {
    confirmed: Vec<MessageId>,
    /// When each of `confirmed` was confirmed.
    confirmed_at: Vec<Instant>,
    /// Publishes that failed and were retried (outcome unknown each time).
    failed_attempts: usize,
    /// When the last publish failed, and the first confirmation after it.
    last_failure: Option<Instant>,
    recovered_at: Option<Instant>,
}

/// Publishes `envelopes` in batches, confirmed, pausing `pace` between
/// batches so the stream spans the fault; a failed batch is retried with
/// the same ids until confirmed or [`PATIENCE`] runs out. `progress`
/// counts confirmed messages for the test driving the fault.
async fn send(
    t: Arc<dyn Transport>,
    to: GatewayId,
    envelopes: Vec<Envelope>,
    pace: Duration,
    progress: Arc<AtomicUsize>,
) -> Sent {
    let mut sent = Sent::default();
    let deadline = Instant::now() + PATIENCE;
    for chunk in envelopes.chunks(BATCH) {
        let bytes: Vec<Bytes> = chunk.iter().map(Envelope::encode).collect();
        loop {
            match t.publish(&to, &bytes, Ack::Confirmed).await {
                Ok(()) => break,
                Err(e) => {
                    sent.failed_attempts += 1;
                    sent.last_failure = Some(Instant::now());
                    sent.recovered_at = None;
                    assert!(Instant::now() < deadline, "publishing never recovered: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if sent.last_failure.is_some() && sent.recovered_at.is_none() {
            sent.recovered_at = Some(Instant::now());
        }
        sent.confirmed.extend(chunk.iter().map(|e| e.id));
        sent.confirmed_at
            .extend(std::iter::repeat_n(Instant::now(), chunk.len()));
        progress.fetch_add(chunk.len(), Ordering::Relaxed);
        tokio::time::sleep(pace).await;
    }
    sent
}

/// What a subscription received, by id, acking each message.
#[derive(Default)]
struct Received {
    copies: HashMap<MessageId, usize>,
    /// When each id first arrived.
    first_seen: HashMap<MessageId, Instant>,
}

impl Received {
    fn duplicates(&self) -> usize {
        self.copies.values().map(|n| n - 1).sum()
    }
}

/// Reads `sub` into `into`, acking every message, until `stop` says so.
fn receive(mut sub: Subscription, into: Arc<Mutex<Received>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = sub.next().await {
            let env = Envelope::decode(incoming.bytes).expect("the bytes published");
            if let Some(ack) = incoming.ack {
                ack.ack().await.expect("ack");
            }
            let mut got = into.lock();
            *got.copies.entry(env.id).or_default() += 1;
            got.first_seen.entry(env.id).or_insert_with(Instant::now);
        }
    })
}

/// Waits until every id of `want` was received or [`PATIENCE`] ran out;
/// returns the ids still missing.
async fn settle(want: &[MessageId], got: &Mutex<Received>) -> Vec<MessageId> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let missing: Vec<MessageId> = {
            let got = got.lock();
            want.iter()
                .filter(|id| !got.copies.contains_key(id))
                .copied()
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(progress: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    while progress.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "the sender stalled before {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node leading the gateway's (only) partition.
fn leader(brokers: &str, topic: &str) -> i32 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions()[0].leader()
}

async fn transport(brokers: &str) -> Arc<dyn Transport> {
    Arc::new(
        KafkaTransport::connect(&servers::kafka_config(brokers))
            .await
            .expect("connect"),
    )
}

/// One run of a broker fault while a sender streams `n` messages: the fault
/// is injected by `fault` once a third of them is confirmed.
struct Run {
    sent: Sent,
    received: Arc<Mutex<Received>>,
    missing: Vec<MessageId>,
}

impl Run {
    /// Waits until every confirmed message arrived (or patience ran out).
    async fn settled(sent: Sent, received: Arc<Mutex<Received>>) -> Self {
        let missing = settle(&sent.confirmed, &received).await;
        Self {
            sent,
            received,
            missing,
        }
    }

    fn report(&self, case: &str) {
        let got = self.received.lock();
        println!(
            "{case}: sent {}, confirmed {}, failed attempts {}, received {} unique, \
             {} lost, {} dups",
            self.sent.confirmed.len(),
            self.sent.confirmed.len(),
            self.sent.failed_attempts,
            got.copies.len(),
            self.missing.len(),
            got.duplicates()
        );
    }

    fn assert_nothing_lost(&self, n: usize) {
        assert_eq!(
            self.sent.confirmed.len(),
            n,
            "every message confirmed in the end"
        );
        assert!(
            self.missing.is_empty(),
            "{} confirmed messages lost, e.g. {:?}",
            self.missing.len(),
            &self.missing[..self.missing.len().min(5)]
        );
    }
}

/// One broker of three killed with SIGKILL mid-stream (not the partition's
/// leader), then restarted while the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_and_restarted_loses_nothing() {
    const N: usize = 2000;
    let cluster = PrivateKafka::start(21030).await;
    let brokers = cluster.brokers();
    let t = transport(&brokers).await;
    let to = gateway("kill1");
    let received = Arc::new(Mutex::new(Received::default()));
    let reader = receive(t.subscribe(&to).await.expect("subscribe"), received.clone());
    let victim = leader(&brokers, &format!("sy.gw.{to}")) % 3 + 1;

    let progress = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(send(
        t.clone(),
        to.clone(),
        envelopes(N),
        Duration::from_millis(5),
        progress.clone(),
    ));
    wait_for(&progress, N / 3).await;
    cluster.kill(victim).await;
    wait_for(&progress, 2 * N / 3).await;
    cluster.start_node(victim).await;
    let run = Run::settled(sender.await.expect("sender"), received).await;
    run.report(&format!("follower node {victim} killed and restarted"));
    run.assert_nothing_lost(N);
    reader.abort();
}

/// The partition leader's node killed: the producer and the consumer move
/// to the new leader. How long that took is printed (docs/KAFKA.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partition_leaders_broker_killed_loses_nothing() {
    const N: usize = 1500;
    let cluster = PrivateKafka::start(21040).await;
    let brokers = cluster.brokers();
    let t = transport(&brokers).await;
    let to = gateway("leader");
    let topic = format!("sy.gw.{to}");
    let received = Arc::new(Mutex::new(Received::default()));
    let reader = receive(t.subscribe(&to).await.expect("subscribe"), received.clone());
    let victim = leader(&brokers, &topic);

    let progress = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(send(
        t.clone(),
        to.clone(),
        envelopes(N),
        Duration::from_millis(5),
        progress.clone(),
    ));
    wait_for(&progress, N / 3).await;
    let killed_at = Instant::now();
    cluster.kill(victim).await;
    let run = Run::settled(sender.await.expect("sender"), received).await;
    run.report(&format!("leader node {victim} killed"));
    run.assert_nothing_lost(N);
    let new_leader = leader(&brokers, &topic);
    assert_ne!(new_leader, victim, "leadership moved");

    // The consumer moved once a message the new leader confirmed (at or
    // after the producer's recovery) arrived.
    let got = run.received.lock();
    let consumer_moved = run.sent.recovered_at.and_then(|recovered| {
        run.sent
            .confirmed
            .iter()
            .zip(&run.sent.confirmed_at)
            .filter(|(_, at)| **at >= recovered)
            .filter_map(|(id, _)| got.first_seen.get(id))
            .min()
            .map(|at| at.duration_since(killed_at))
    });
    let producer_moved = run.sent.recovered_at.map(|at| at.duration_since(killed_at));
    println!(
        "leader {victim} -> {new_leader}: producer confirmed again after {producer_moved:?}, \
         consumer read again after {consumer_moved:?}"
    );
    drop(got);
    reader.abort();
}

/// The whole cluster stopped and started: committed offsets survive (a
/// new subscription starts after what was acked), the gateway gets every
/// message not acked, and the producer publishes again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarted_keeps_offsets_and_loses_nothing() {
    const BEFORE: usize = 600;
    const ACKED: usize = 300;
    const DURING: usize = 600;
    let cluster = PrivateKafka::start(21050).await;
    let t = transport(&cluster.brokers()).await;
    let to = gateway("whole");

    // Before: every message confirmed, the first ACKED read and acked.
    let mut first = t.subscribe(&to).await.expect("subscribe");
    let before = envelopes(BEFORE);
    let no_progress = Arc::new(AtomicUsize::new(0));
    let sent_before = send(
        t.clone(),
        to.clone(),
        before.clone(),
        Duration::ZERO,
        no_progress,
    )
    .await;
    let mut acked = HashSet::new();
    while acked.len() < ACKED {
        let incoming = tokio::time::timeout(PATIENCE, first.next())
            .await
            .expect("the first messages")
            .expect("subscription open");
        let env = Envelope::decode(incoming.bytes).expect("the bytes published");
        incoming.ack.expect("kafka acks").ack().await.expect("ack");
        acked.insert(env.id);
    }
    // Closing commits what was acked; give the close its moment before
    // the cluster goes (the next subscription would wait for it anyway).
    drop(first);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // During: a stream that the restart interrupts.
    let progress = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn(send(
        t.clone(),
        to.clone(),
        envelopes(DURING),
        Duration::from_millis(10),
        progress.clone(),
    ));
    wait_for(&progress, DURING / 4).await;
    cluster.stop().await;
    let confirmed_while_down = progress.load(Ordering::Relaxed);
    cluster.start_all().await;
    let sent_during = sender.await.expect("sender");
    assert!(
        sent_during.failed_attempts > 0,
        "the restart interrupted no publish"
    );
    assert!(
        progress.load(Ordering::Relaxed) > confirmed_while_down,
        "nothing confirmed after the restart"
    );

    let received = Arc::new(Mutex::new(Received::default()));
    let reader = receive(
        t.subscribe(&to).await.expect("resubscribe"),
        received.clone(),
    );
    let want: Vec<MessageId> = sent_before
        .confirmed
        .iter()
        .filter(|id| !acked.contains(id))
        .chain(&sent_during.confirmed)
        .copied()
        .collect();
    let missing = settle(&want, &received).await;
    let redelivered_acked = {
        let got = received.lock();
        acked
            .iter()
            .filter(|id| got.copies.contains_key(id))
            .count()
    };
    let run = Run {
        sent: sent_during,
        received,
        missing,
    };
    println!(
        "whole cluster restarted: before {BEFORE} (acked {ACKED}, of them redelivered \
         {redelivered_acked}), during: {} publish attempts failed",
        run.sent.failed_attempts
    );
    run.report("whole cluster restarted (not acked before + during)");
    assert_eq!(
        redelivered_acked, 0,
        "the committed offset did not survive the restart"
    );
    assert!(
        run.missing.is_empty(),
        "{} confirmed and not acked messages lost",
        run.missing.len()
    );
    assert_eq!(run.sent.confirmed.len(), DURING);
    reader.abort();
}

/// Env of [`child_subscriber`]: the gateway to read and the brokers.
const CHILD_GATEWAY: &str = "KAFKA_FAULTS_CHILD_GATEWAY";

/// The receiving subscriber is a process killed with SIGKILL mid-stream;
/// its successor (a new process, same gateway) gets the partition within
/// `session_timeout` plus a rebalance, and everything the first did not
/// commit. Issue: a killed sidecar never got its partition back on tansu.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_killed_with_sigkill_hands_over_everything_not_committed() {
    const N: usize = 1000;
    const KILL_AFTER: usize = 300;
    let t = transport(servers::KAFKA).await;
    let to = gateway("sigkill");
    // Everything is in the topic before any subscriber (the publish
    // creates it); the first reads from the earliest offset.
    let sent = send(
        t.clone(),
        to.clone(),
        envelopes(N),
        Duration::ZERO,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;

    let (mut first, first_lines) = spawn_subscriber(&to);
    let mut first_ids = Vec::new();
    while first_ids.len() < KILL_AFTER {
        first_ids.push(
            first_lines
                .recv_timeout(PATIENCE)
                .expect("the first subscriber reads"),
        );
    }
    // SIGKILL: no close, no commit, no leaving the group.
    first.kill();
    let killed_at = std::time::Instant::now();
    let (second, lines) = spawn_subscriber(&to);
    let want: HashSet<MessageId> = sent.confirmed.iter().copied().collect();
    let mut seen: HashSet<MessageId> = first_ids.iter().copied().collect();
    let mut successor = HashSet::new();
    let mut successor_first = None;
    let deadline = std::time::Instant::now() + PATIENCE;
    while !want.is_subset(&seen) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(id) => {
                successor_first.get_or_insert_with(|| killed_at.elapsed());
                successor.insert(id);
                seen.insert(id);
            }
            Err(_) => break,
        }
    }
    drop(first);
    drop(second);
    let missing = want.difference(&seen).count();
    let overlap = first_ids.iter().filter(|id| successor.contains(id)).count();
    println!(
        "subscriber SIGKILL: sent {N}, confirmed {}, first process read {}, successor read {} \
         (first after {successor_first:?}), {missing} lost, {overlap} read by both",
        sent.confirmed.len(),
        first_ids.len(),
        successor.len(),
    );
    assert_eq!(missing, 0, "confirmed messages the successor never got");
    // Everything the first did not read is the successor's; what it read
    // and had not committed yet is read again (the unacked window).
    assert!(successor.len() >= N - first_ids.len());
}

/// A child process reading a gateway, killed on drop.
struct Child(std::process::Child);

impl Child {
    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts [`child_subscriber`] for `gateway`; the channel yields each id
/// it acked, in order.
fn spawn_subscriber(gateway: &GatewayId) -> (Child, std::sync::mpsc::Receiver<MessageId>) {
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        // Its name in this binary: module, then function.
        .args([
            "kafka_faults::child_subscriber",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_GATEWAY, gateway.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child subscriber");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("acked ") {
                if tx.send(id.parse::<MessageId>().expect("an id")).is_err() {
                    break;
                }
            }
        }
    });
    (Child(child), rx)
}

/// Not a test of its own: the subscriber process of
/// `a_subscriber_killed_with_sigkill_hands_over_everything_not_committed`,
/// which runs it with `--ignored` and the gateway in its environment. It
/// acks each message, then prints its id, a little slowly so the parent
/// can kill it mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_subscriber_killed_with_sigkill_..."]
async fn child_subscriber() {
    let gateway = std::env::var(CHILD_GATEWAY).expect("run by the parent test");
    let t = transport(servers::KAFKA).await;
    let mut sub = t
        .subscribe(&GatewayId::try_from(gateway).unwrap())
        .await
        .expect("subscribe");
    let mut out = std::io::stdout();
    while let Some(incoming) = sub.next().await {
        let env = Envelope::decode(incoming.bytes).expect("the bytes published");
        if let Some(ack) = incoming.ack {
            ack.ack().await.expect("ack");
        }
        writeln!(out, "acked {}", env.id).expect("stdout");
        out.flush().expect("stdout");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `switchyard serve` process, SIGKILLed on drop.
struct Serve {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Serve {
    async fn start(config: &std::path::Path) -> Self {
        let (grpc, http) = (servers::free_port(), servers::free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["serve", "--config"])
            .arg(config)
            .env("SWITCHYARD__SIDECAR__LISTEN", format!("127.0.0.1:{grpc}"))
            .env("SWITCHYARD__TELEMETRY__LISTEN", format!("127.0.0.1:{http}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn switchyard serve");
        let child = Child(child);
        assert!(
            servers::wait_listening(grpc, Duration::from_secs(30)).await,
            "switchyard serve never listened on {grpc}"
        );
        Self {
            child,
            addr: format!("127.0.0.1:{grpc}").parse().expect("an address"),
        }
    }
}

/// Issue "Confirmed means delivered", item 3: the receiving sidecar, a
/// `switchyard serve` process, is killed with SIGKILL; a new process takes
/// the gateway's attach and gets its Kafka traffic again (the partition
/// after `session_timeout`): every message the gateway had not acked, the
/// ones the dead sidecar held and all sent since the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_with_sigkill_gets_its_kafka_traffic_back() {
    use switchyard::proto;
    const N: usize = 200;
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let toml = format!(
        r#"
[store]
kind = "redis"
url = "redis://127.0.0.1:6379"
key_prefix = "sy-kf-{run}"

[transports.redis.connection]
url = "redis://127.0.0.1:6379"
key_prefix = "sy-kf-{run}"

[transports.kafka]
brokers = "{brokers}"
topic_prefix = "sykf.{run}."
group_prefix = "sykf.{run}."
fetch_wait_max = "5ms"
commit_interval = "100ms"
delivery_timeout = "5s"

[transports.kafka.topics]
replication = 3

[routing]
same_region = "redis"
cross_region = "kafka"
"#,
        brokers = servers::KAFKA
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, &toml).expect("write the config");
    let mut settings = switchyard::Settings::from_toml(&toml).expect("valid");
    settings.sidecar.listen = "127.0.0.1:0".parse().expect("an address");
    settings.telemetry.listen = "127.0.0.1:0".parse().expect("an address");
    let sender = switchyard::sidecar::Sidecar::start(settings, None)
        .await
        .expect("the sending sidecar (Redis and Kafka up?)");
    let mut eu = sidecars::gateway(sender.grpc_addr()).await;
    let _eu_stream = sidecars::attach(&mut eu, "gw-eu", "eu").await;
    sidecars::online(&mut eu, "gw-eu", "alice").await;
    // 400 sends confirmed over Kafka and two sidecar starts can outlast
    // alice's session TTL on a loaded machine (it did once, at 60 s).
    let _eu_alive = switchyard::sidecar::client::keep_alive(&eu, "gw-eu", Duration::from_secs(1));

    let mut first = Serve::start(&config).await;
    let mut us = sidecars::gateway(first.addr).await;
    let mut stream = sidecars::attach_stream(&mut us, "gw-us", "us").await;
    sidecars::online(&mut us, "gw-us", "bob").await;

    let send = |eu: &mut proto::gateway_client::GatewayClient<_>, i: usize| {
        let mut eu = eu.clone();
        async move {
            let outcome = sidecars::send(
                &mut eu,
                "gw-eu",
                sidecars::message("alice", "bob", &i.to_string()),
            )
            .await;
            let target = &sidecars::routed(&outcome).targets[0];
            assert!(target.delivered && target.via == "kafka", "{target:?}");
            outcome.id
        }
    };
    let mut before = HashSet::new();
    for i in 0..N {
        before.insert(send(&mut eu, i).await);
    }
    let mut read_before = HashSet::new();
    while read_before.len() < N / 2 {
        let delivery = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("deliveries before the kill")
            .expect("stream ok")
            .expect("stream open");
        stream.ack(delivery.seq);
        read_before.insert(delivery.envelope.expect("an envelope").id);
    }
    first.child.kill();
    let killed_at = Instant::now();
    let mut after = HashSet::new();
    for i in N..2 * N {
        after.insert(send(&mut eu, i).await);
    }

    let second = Serve::start(&config).await;
    let mut us = sidecars::gateway(second.addr).await;
    let mut stream = sidecars::attach_stream(&mut us, "gw-us", "us").await;
    sidecars::online(&mut us, "gw-us", "bob").await;
    // Everything the gateway had not acked: the unread rest of the first
    // batch (the dead sidecar never acked Kafka for it) and all sent since.
    let want: HashSet<_> = before
        .difference(&read_before)
        .chain(&after)
        .cloned()
        .collect();
    let mut got = HashSet::new();
    let mut copies = 0;
    let mut first_delivery = None;
    let deadline = Instant::now() + PATIENCE;
    while !want.is_subset(&got) {
        let Ok(Ok(Some(delivery))) = tokio::time::timeout_at(deadline, stream.next()).await else {
            break;
        };
        stream.ack(delivery.seq);
        first_delivery.get_or_insert_with(|| killed_at.elapsed());
        copies += 1;
        got.insert(delivery.envelope.expect("an envelope").id);
    }
    let lost = want.difference(&got).count();
    let acked_again = read_before.intersection(&got).count();
    println!(
        "sidecar SIGKILL: {N} sent, gateway read and acked {} before the kill; {N} sent after \
         it; the successor delivered {} unique ({copies} deliveries, {acked_again} of them \
         acked before the kill), first after {first_delivery:?}; {lost} of {} unacked lost",
        read_before.len(),
        got.len(),
        want.len()
    );
    assert_eq!(
        lost, 0,
        "confirmed messages the gateway never acked were lost"
    );
    drop(second);
    sender.shutdown().await.expect("shutdown");
}
