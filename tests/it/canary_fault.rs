//! Fault during a canary: at 30% (dual mode) Kafka's only broker goes down.
//! Kafka is a private three-node Apache Kafka cluster (`servers::PrivateKafka`,
//! every node killed), so the shared cluster on 127.0.0.1:9092-9094 that other
//! suites use is never touched; Redis is the real one of
//! `scripts/services/redis.sh`.
//!
//! The auto-rollback (window 3 s, at least 8 samples, error rate above 1%)
//! fires within the window plus one failed delivery (delivery timeout 1 s)
//! and one watchdog tick (1 s), and no message is lost: every send is
//! delivered to each gateway it reported, exactly once, or stored offline.
//!
//! Why only 8 samples: a mirror publish to the down broker fails only once
//! the delivery timeout passed (librdkafka reports it up to a second late).
//! Before `canary.mirror_wait` every send waited for that, so each sender
//! yielded one failure per 1-2 s and a loaded run with 20 once saw no
//! rollback for 15 s; sends now return after `mirror_wait` and the mirror
//! fails in the background, so samples come faster, and 8 keeps the margin
//! (docs/OPERATIONS.md, "a canary broker that is down").
//!
//!   scripts/services/redis.sh start
//!   cargo test -p switchyard --features it-redis,it-kafka --test it canary_fault::

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka"))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canary_fleet::{gateway_in, user, Sent};
use switchyard::proto;
use switchyard::sidecar::Sidecar;
use testkit::canary_fleet;
use testkit::servers;
use testkit::sidecars;

const WINDOW: Duration = Duration::from_secs(3);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_down_at_30_percent_rolls_back_and_loses_nothing() {
    let started = Instant::now();
    let cluster = servers::PrivateKafka::start(21020).await;
    let run = canary_fleet::run_id("fault");
    let settings = canary_fleet::settings(
        &run,
        &cluster.brokers(),
        "dual",
        "delivery_timeout = \"1s\"",
        "enabled = true\nwindow = \"3s\"\nmin_samples = 8\nmax_error_rate = 0.01\nmax_p99 = \"5s\"",
    );
    let mut sidecars = Vec::new();
    for _ in 0..2 {
        sidecars.push(
            Sidecar::start(settings.clone(), None)
                .await
                .expect("sidecar"),
        );
    }
    // Two gateways in the 30% cohort, two outside it; one region.
    let ids: Vec<String> = [0..10, 10..30, 30..50, 50..100]
        .into_iter()
        .map(|r| gateway_in(&format!("{run}-eu-"), r))
        .collect();
    let mut gateways = Vec::new();
    let mut received = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let (gateway, got) = canary_fleet::attach(&sidecars[i % 2], id, "eu").await;
        received.insert(id.clone(), got);
        gateways.push(gateway);
    }
    for g in &mut gateways {
        sidecars::online(&mut g.client, &g.id, &format!("{}.b", g.id)).await;
    }
    canary_fleet::set_share(&sidecars, 30).await;

    // Four senders per gateway, so failed mirror publishes (each known only
    // after the delivery timeout) add up to enough samples.
    let epoch = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut destinations: Vec<_> = ids.iter().map(|id| user(&format!("{id}.b"))).collect();
    destinations.push(user(&format!("{run}-ghost")));
    let mut senders = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for k in 0..4 {
            let mut client = sidecars::gateway(sidecars[i % 2].grpc_addr()).await;
            let from = format!("{id}.a{k}");
            sidecars::online(&mut client, id, &from).await;
            let gateway = canary_fleet::Gateway {
                id: id.clone(),
                region: "eu".into(),
                client,
            };
            senders.push(canary_fleet::sender(
                gateway,
                from,
                destinations.clone(),
                epoch.clone(),
                stop.clone(),
                Duration::from_millis(5),
                Arc::default(),
            ));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // From the first kill: publishes led by the first node fail at once.
    let down = Instant::now();
    cluster.kill_all();

    // Every sidecar judges its own canary; wait for all to roll back.
    let mut rolled = Vec::new();
    for sidecar in &sidecars {
        let mut admin = sidecars::admin(sidecar.grpc_addr()).await;
        loop {
            let state = admin
                .canary_status(proto::CanaryStatusRequest {})
                .await
                .expect("CanaryStatus")
                .into_inner()
                .canary
                .expect("a canary");
            if let Some(rollback) = state.last_rollback {
                assert_eq!(state.share, 0);
                rolled.push((down.elapsed(), rollback));
                break;
            }
            assert!(
                down.elapsed() < Duration::from_secs(15),
                "no auto-rollback 15 s after the broker went down: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Traffic goes on (now on Redis only) for a moment after the rollback.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent: Vec<Sent> = Vec::new();
    for s in senders {
        sent.extend(s.await.expect("sender task"));
    }
    let ledger = canary_fleet::settle(&sent, &received, Duration::from_secs(15)).await;
    for (after, rollback) in &rolled {
        println!(
            "rolled back {after:.1?} after the broker went down, from {}%: {}",
            rollback.from_share, rollback.reason
        );
        assert_eq!(rollback.from_share, 30);
        assert!(
            rollback.reason.starts_with("kafka error rate"),
            "{}",
            rollback.reason
        );
        assert!(
            *after <= WINDOW + DELIVERY_TIMEOUT + TICK,
            "rollback took {after:?}"
        );
    }
    println!(
        "sent {}  delivered {} of {}  stored offline {}  duplicates {}  missing {}; took {:.1?}",
        ledger.sent,
        ledger.delivered,
        ledger.expected_deliveries,
        ledger.stored_offline,
        ledger.duplicates.len(),
        ledger.missing.len(),
        started.elapsed()
    );
    ledger.assert_clean();
    let stored = sent.iter().filter(|s| s.stored_offline).count();
    let delivered_messages = sent
        .iter()
        .filter(|s| !s.stored_offline && s.targets.iter().all(|t| t.delivered))
        .count();
    assert_eq!(
        ledger.sent,
        delivered_messages + stored,
        "sent == delivered + stored offline"
    );

    // Closing consumers commit and leave their groups: bring Kafka back so
    // the shutdown does not wait on a dead cluster.
    cluster.start_all().await;
    for sidecar in sidecars {
        sidecar.shutdown().await.expect("shutdown");
    }
}
