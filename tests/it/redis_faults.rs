//! Faults during a steady high-priority send; each asserts that no message
//! is lost (sent == delivered + stored offline).
//!
//! - Every subscriber connection is killed (`CLIENT KILL TYPE pubsub`,
//!   standalone and every cluster node): the transport reconnects,
//!   resubscribes and re-reads the gap.
//! - A standalone Redis (a private `redis-server` with an append-only
//!   file) is killed and restarted: publishers reconnect, the subscriber
//!   resubscribes and re-reads its gap.
//! - The cluster master that owns the receiving gateway's channel is shut
//!   down: its replica is promoted and sends continue.
//!
//! - The master of a Redis Sentinel deployment (a private one: one master,
//!   two replicas, three sentinels) is killed with SIGKILL: the sentinels
//!   promote a replica, every connection follows, and the old master comes
//!   back as a replica. Prints the time to recover (kept in docs/REDIS.md).
//!   A manual failover (the master demoted, not killed) is followed too.
//!
//! The faults hit every client of the deployment, so each test owns its
//! Redis (a private `redis-server`, Redis Cluster or Sentinel deployment,
//! on ports of its own: the shared ones serve the rest of the suite), and
//! they run one at a time.
//!
//!   cargo test -p switchyard --features it-redis --test it redis_faults:: -- --nocapture

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-redis")]

use std::process::Command;
use std::time::{Duration, Instant};

use redis::Value;
use redis_nodes::{account, raw, redis_config, router, settings, steady_send, Deployment};
use switchyard::presence::PresenceStore;
use switchyard::redis_conn::sentinel::SentinelConfig;
use switchyard::redis_conn::RedisConfig;
use switchyard::{Inbox, MessageId, Router};
use testkit::redis_nodes;
use testkit::servers;
use tokio::sync::Mutex;

/// Held by each test: one fault at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Base ports of the private Redis Clusters, one per test (the cluster
/// bus on each port + 10000).
const CLUSTER_BASE: u16 = 21100;

mod a_killed_subscriber_resubscribes_and_no_high_priority_message_is_lost {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn standalone() {
        let server = servers::PrivateBroker::redis().await;
        let redis = RedisConfig {
            url: server.address(),
            ..redis_config(Deployment::Standalone)
        };
        killed_subscribers("standalone", redis, &[server.address()]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        let cluster = servers::PrivateRedisCluster::start(CLUSTER_BASE).await;
        let redis = RedisConfig {
            url: cluster.url(),
            ..redis_config(Deployment::Cluster)
        };
        killed_subscribers("cluster", redis, &cluster.node_urls()).await;
    }
}

/// Kills every pub/sub connection of `nodes`; returns how many were killed.
async fn kill_subscribers(redis: &RedisConfig, nodes: &[String]) -> usize {
    let mut killed = 0;
    for url in nodes {
        let node = RedisConfig {
            url: url.clone(),
            cluster: false,
            connections: 1,
            ..redis.clone()
        };
        let mut conn = raw(&node).await.conn();
        killed += redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async::<usize>(&mut conn)
            .await
            .unwrap_or(0);
    }
    killed
}

/// The port of the master serving `key`'s slot.
async fn master_of(redis: &RedisConfig, key: &str) -> u16 {
    let mut conn = raw(redis).await.conn();
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let slots: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
        .unwrap();
    for range in slots {
        let Value::Array(range) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            continue;
        };
        if (*start..=*end).contains(&slot) {
            if let Some(Value::Int(port)) = master.get(1) {
                return *port as u16;
            }
        }
    }
    panic!("no master serves slot {slot}");
}

/// Gateways `gw-a` and `gw-b` over `redis`, with timeouts short enough for
/// a fault to be noticed within the test, and bob online on `gw-b`.
async fn gateways_for_faults(mut redis: RedisConfig) -> (Router, Router, Inbox) {
    redis.response_timeout = Duration::from_millis(500);
    redis.connect_timeout = Duration::from_millis(500);
    let mut settings = settings(&redis);
    settings.delivery.publish_timeout = Duration::from_secs(1);
    let (a, _) = router(&settings, "gw-a").await;
    let (b, inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    (a, b, inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_dies_during_a_steady_send_and_no_high_priority_message_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = servers::PrivateRedisCluster::start(CLUSTER_BASE + 20).await;
    let redis = RedisConfig {
        url: cluster.url(),
        ..redis_config(Deployment::Cluster)
    };
    let (a, b, mut inbox) = gateways_for_faults(redis.clone()).await;
    let victim = master_of(&redis, &format!("{}:gw:{{gw-b}}", redis.key_prefix)).await;

    let started = Instant::now();
    let sent = steady_send(&a, 600, 100, async {
        println!("stopping master 127.0.0.1:{victim}");
        let status = Command::new("redis-cli")
            .args(["-p", &victim.to_string(), "SHUTDOWN", "NOSAVE"])
            .status()
            .unwrap();
        // redis-cli reports the closed connection; the node is gone either way.
        println!("SHUTDOWN NOSAVE: {status}");
    })
    .await
    .ids;
    let (delivered, offline, missing) =
        account(&b, &mut inbox, &sent, Duration::from_secs(20)).await;
    println!(
        "failover: sent {} delivered {delivered} stored offline {offline} missing {} in {:?}",
        sent.len(),
        missing.len(),
        started.elapsed()
    );
    assert!(
        missing.is_empty(),
        "{} high-priority messages lost: {missing:?}",
        missing.len()
    );
}

/// Kills every subscriber connection of `nodes` during a steady send to
/// bob's gateway over `redis`.
async fn killed_subscribers(what: &str, redis: RedisConfig, nodes: &[String]) {
    let _one = ONE_AT_A_TIME.lock().await;
    let settings = settings(&redis);
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let sent = steady_send(&a, 400, 150, async {
        let killed = kill_subscribers(&redis, nodes).await;
        assert!(killed >= 1, "no subscriber connection was killed");
    })
    .await
    .ids;
    nothing_lost_and_resubscribed(what, &b, &mut inbox, &sent).await;
}

/// Every message of `sent` reached bob's inbox or the offline store, and
/// more than 300 of the 400 arrived live: the subscription came back.
async fn nothing_lost_and_resubscribed(
    what: &str,
    b: &Router,
    inbox: &mut Inbox,
    sent: &[MessageId],
) {
    let (delivered, offline, missing) = account(b, inbox, sent, Duration::from_secs(20)).await;
    println!(
        "{what}: sent {} delivered {delivered} stored offline {offline}",
        sent.len()
    );
    assert!(
        missing.is_empty(),
        "{} high-priority messages lost: {missing:?}",
        missing.len()
    );
    assert!(
        delivered > 300,
        "only {delivered} of {} delivered live after the fault",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_reconnected_and_no_high_priority_message_is_lost() {
    // A private server: killing the shared one would fail every other test.
    let mut server = servers::PrivateBroker::redis().await;
    let redis = RedisConfig {
        url: server.address(),
        ..redis_config(Deployment::Standalone)
    };
    let (a, b, mut inbox) = gateways_for_faults(redis).await;

    // The outage overlaps the sends (about 6 ms each): they fail, are
    // retried, and resume once the server is back.
    let outage = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.run().await.expect("redis-server restarts");
        Instant::now()
    };
    let sending = async {
        let sent = steady_send(&a, 400, usize::MAX, async {}).await.ids;
        (sent, Instant::now())
    };
    let ((sent, sends_ended), back) = tokio::join!(sending, outage);
    assert!(
        back < sends_ended,
        "the restart did not happen during the sends"
    );
    nothing_lost_and_resubscribed("restart", &b, &mut inbox, &sent).await;
}

/// The private Sentinel deployment's ports (node N on `+N-1`, sentinel N
/// on `+9+N`), in this engineer's fixed range.
const SENTINEL_BASE: u16 = 22200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_master_killed_fails_over_and_no_high_priority_message_is_lost() {
    let deployment = servers::PrivateSentinel::start(SENTINEL_BASE).await;
    let redis = RedisConfig {
        sentinel: Some(Box::new(SentinelConfig {
            nodes: deployment.sentinels(),
            // Below the 500 ms response timeout of `gateways_for_faults`.
            wait_timeout: Duration::from_millis(300),
            ..SentinelConfig::default()
        })),
        ..redis_config(Deployment::Standalone)
    };
    let (a, b, mut inbox) = gateways_for_faults(redis.clone()).await;
    let victim = deployment.master().await;

    let steady = steady_send(&a, 600, 100, async {
        deployment.kill(victim).await;
    })
    .await;
    let recovered = steady
        .recovered
        .expect("a publish succeeded after the kill");
    let (delivered, offline, missing) =
        account(&b, &mut inbox, &steady.ids, Duration::from_secs(20)).await;
    let promoted = deployment.master().await;
    println!(
        "sentinel failover: node {victim} killed, node {promoted} promoted; first publish after the kill in {recovered:?}; \
         sent {} delivered {delivered} stored offline {offline} missing {}",
        steady.ids.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} high-priority messages lost: {missing:?}",
        missing.len()
    );
    assert_ne!(promoted, victim, "the sentinels did not fail over");

    // Presence written before the failover is read from the promoted
    // master by a node that never saw it.
    let fresh = redis_nodes::node(&settings(&redis)).await;
    let sessions = fresh.presence().locate(&"bob".into()).await.unwrap();
    assert_eq!(
        sessions.len(),
        1,
        "bob's session after the failover: {sessions:?}"
    );

    // The old master comes back and the sentinels make it a replica.
    deployment.start_node(victim).await;
    let demoted = redis_nodes::eventually(Duration::from_secs(30), || async {
        deployment.role(victim) == "slave"
    })
    .await;
    assert!(demoted, "node {victim} did not come back as a replica");
    // Sends keep going to the promoted master.
    let after = steady_send(&a, 50, usize::MAX, async {}).await;
    let (_, _, missing) = account(&b, &mut inbox, &after.ids, Duration::from_secs(10)).await;
    assert!(
        missing.is_empty(),
        "lost after the old master returned: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_sentinel_master_is_left_for_the_promoted_one() {
    let deployment = servers::PrivateSentinel::start(SENTINEL_BASE + 100).await;
    let mut redis = redis_config(Deployment::Standalone);
    redis.sentinel = Some(Box::new(SentinelConfig {
        nodes: deployment.sentinels(),
        wait_timeout: Duration::from_millis(300),
        ..SentinelConfig::default()
    }));
    redis.response_timeout = Duration::from_millis(500);
    let handle = raw(&redis).await;
    let channel = handle.key(&["demoted"]);
    let mut pushed = handle.subscribe(channel.clone(), "test", 16).await.unwrap();
    let key = handle.key(&["kept"]);
    redis::cmd("SET")
        .arg(&key)
        .arg("before")
        .query_async::<()>(&mut handle.conn())
        .await
        .unwrap();
    let before = deployment.master().await;

    deployment.failover();
    let switched = redis_nodes::eventually(Duration::from_secs(30), || async {
        deployment.master().await != before
    })
    .await;
    assert!(switched, "the sentinels did not fail over");
    // Every connection of the handle, and the subscription, follow the
    // sentinels' switch at once (their `+switch-master` event), not when the
    // sentinels get round to reconfiguring the old master (~10 s later,
    // which is when it drops its clients). Nobody reads the subscription
    // meanwhile: it moves by itself. The promoted master is asked directly,
    // since the handle's connections count the old master's subscriber
    // until they move too.
    let started = Instant::now();
    let promoted = deployment.master().await;
    let direct = redis::Client::open(format!(
        "redis://127.0.0.1:{}",
        deployment.base + promoted - 1
    ))
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap();
    let moved = redis_nodes::eventually(Duration::from_secs(5), || async {
        let mut ok = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg("after")
            .query_async::<i64>(&mut direct.clone())
            .await
            .is_ok_and(|receivers| receivers == 1);
        for _ in 0..redis.connections {
            ok &= redis::cmd("PUBLISH")
                .arg(&channel)
                .arg("after")
                .query_async::<i64>(&mut handle.conn())
                .await
                .is_ok_and(|receivers| receivers == 1);
        }
        ok
    })
    .await;
    let after = deployment.master().await;
    println!(
        "manual failover: node {before} -> node {after}, followed in {:?}",
        started.elapsed()
    );
    assert!(moved, "the handle did not follow the failover");
    // Requests fail while the promoted master has no replica in sync yet.
    let kept = redis_nodes::eventually(Duration::from_secs(10), || async {
        redis::cmd("GET")
            .arg(&key)
            .query_async::<String>(&mut handle.conn())
            .await
            .is_ok_and(|value| value == "before")
    })
    .await;
    assert!(
        kept,
        "a write confirmed before the failover is on the promoted master"
    );
    let message = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match futures::StreamExt::next(&mut pushed).await {
                Some(switchyard::redis_conn::Pushed::Message(bytes)) => return bytes,
                Some(_) => continue,
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .expect("the subscription follows the promoted master");
    assert_eq!(&message[..], b"after");
}
