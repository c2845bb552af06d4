//! NATS JetStream node faults on a three-node cluster (stream and consumers
//! at replicas 3) during a steady high-priority send through the router.
//! Each case counts messages by id: every message a send confirmed must
//! reach bob's gateway (or the offline store), and the time from the kill
//! to the first send NATS confirmed again is printed (kept in
//! docs/NATS.md).
//!
//! - A node that is not the stream leader is killed with SIGKILL and
//!   restarted while the sends go on.
//! - The stream leader's node is killed with SIGKILL: the other two elect a
//!   new leader.
//!
//! In both the routers are given only the victim's URL, so they are
//! connected to the node that dies and must reconnect to the nodes the
//! cluster announced.
//!
//! Each case runs a private cluster (`servers::PrivateNatsCluster`, ports
//! of its own); presence and the offline store are the shared Redis.
//!
//!   scripts/services/redis.sh start
//!   cargo test -p switchyard --features it-nats,it-redis --test it nats_faults:: -- --nocapture

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-nats", feature = "it-redis"))]

use std::time::Duration;

use redis_nodes::{account, redis_config, router, steady_send, Deployment};
use servers::PrivateNatsCluster;
use switchyard::transport::nats::{NatsConfig, NatsTransport, Storage};
use switchyard::Settings;
use testkit::redis_nodes;
use testkit::servers;

/// Private clusters' ports (node N on `+N-1`, routes `+9+N`, monitoring
/// `+19+N`), in this engineer's fixed range.
const FOLLOWER_CASE_BASE: u16 = 22500;
const LEADER_CASE_BASE: u16 = 22600;

/// The test stream at replicas 3 on disk, reached through `url`.
fn nats(url: String) -> NatsConfig {
    NatsConfig {
        replicas: 3,
        storage: Storage::File,
        request_timeout: Duration::from_secs(2),
        ..servers::nats_config(&url)
    }
}

/// Stores on the shared Redis, both routes on NATS through `url` (no
/// fallback transport: a send NATS cannot take goes to the offline store).
fn settings(url: String) -> Settings {
    let mut settings = redis_nodes::settings(&redis_config(Deployment::Standalone));
    settings.transports.redis = None;
    settings.transports.nats = Some(nats(url));
    settings.routing.same_region = "nats".into();
    settings.routing.cross_region = "nats".into();
    settings.delivery.publish_timeout = Duration::from_secs(2);
    settings
}

/// Creates the test stream; the node (1-3) leading its Raft group.
async fn stream_leader(cluster: &PrivateNatsCluster) -> u16 {
    let config = nats(cluster.url());
    NatsTransport::connect(&config)
        .await
        .expect("the stream is created on the cluster");
    let servers: Vec<&str> = config.url.split(',').collect();
    let client = async_nats::connect(servers.as_slice()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(&config.stream).await.unwrap();
    let info = stream.info().await.unwrap();
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("a replicated stream has a leader");
    leader
        .strip_prefix('n')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server name {leader}"))
}

/// Runs 600 sends, killing `victim(leader)` after the 100th; with
/// `restart`, starts the node again 2 s after the kill while sends go on.
async fn kill_during_sends(base: u16, what: &str, victim: fn(u16) -> u16, restart: bool) {
    let cluster = PrivateNatsCluster::start(base).await;
    let leader = stream_leader(&cluster).await;
    let victim = victim(leader);
    let settings = settings(cluster.node_url(victim));
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let (killed, restart_after) = tokio::sync::oneshot::channel();
    let sending = steady_send(&a, 600, 100, async {
        cluster.kill(victim).await;
        let _ = killed.send(());
    });
    let restarting = async {
        if restart && restart_after.await.is_ok() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.start_node(victim).await;
        }
    };
    let (steady, ()) = tokio::join!(sending, restarting);
    let recovered = steady
        .recovered
        .expect("a publish NATS confirmed after the kill");
    let (delivered, offline, missing) =
        account(&b, &mut inbox, &steady.ids, Duration::from_secs(30)).await;
    println!(
        "{what}: leader n{leader}, node n{victim} killed{}; first publish NATS confirmed after the kill in {recovered:?}; \
         sent {} delivered {delivered} stored offline {offline} missing {}",
        if restart { " and restarted" } else { "" },
        steady.ids.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} high-priority messages lost: {missing:?}",
        missing.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_loses_no_confirmed_message() {
    // The first node that does not lead the stream.
    kill_during_sends(
        FOLLOWER_CASE_BASE,
        "follower node",
        |leader| if leader == 1 { 2 } else { 1 },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_leaders_node_killed_loses_no_confirmed_message() {
    kill_during_sends(LEADER_CASE_BASE, "stream leader", |leader| leader, false).await;
}

/// A stream with no leader answers a publish with "no responders" (what a
/// clustered stream does while it elects one): the transport publishes
/// again for a bounded time instead of refusing at once, and the message
/// is stored once the stream answers. Here the stream is deleted under the
/// transport and made again 400 ms later, on the shared NATS (4222).
#[tokio::test]
async fn a_publish_that_finds_no_stream_leader_is_tried_again_until_one_answers() {
    use switchyard::transport::{Ack, Transport};
    use switchyard::{Destination, Envelope, GatewayId};

    let run = ulid::Ulid::new().to_string();
    let mut config = servers::nats_config(servers::NATS);
    config.stream = format!("SY_ELECT_{run}");
    config.subject_prefix = format!("syelect.{}", run.to_lowercase());
    let transport = NatsTransport::connect(&config).await.expect("NATS on 4222");
    let client = async_nats::connect(servers::NATS)
        .await
        .expect("a raw client");
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream
        .get_stream(&config.stream)
        .await
        .expect("the transport made its stream");
    let stream_config = stream.cached_info().config.clone();
    jetstream
        .delete_stream(&config.stream)
        .await
        .expect("delete the stream");

    let gw = GatewayId::from("gw-elect");
    let envelope = Envelope::new("alice", "gw-a", Destination::User("bob".into()), "hi");
    let recreate = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        jetstream
            .create_stream(stream_config)
            .await
            .expect("the stream again");
    };
    let started = std::time::Instant::now();
    let batch = [envelope.encode()];
    let (published, ()) = tokio::join!(transport.publish(&gw, &batch, Ack::Confirmed), recreate);
    published.expect("published once the stream answered");
    let stored = jetstream
        .get_stream(&config.stream)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("its info")
        .state
        .messages;
    assert_eq!(stored, 1, "stored once");
    println!("no responders: confirmed after {:?}", started.elapsed());
    jetstream
        .delete_stream(&config.stream)
        .await
        .expect("clean up");
}
