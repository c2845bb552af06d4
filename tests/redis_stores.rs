//! The Redis state stores against a real Redis, standalone and cluster:
//! presence, cache invalidation across nodes, registry expiry, the ring,
//! offline streams, dead letters, groups and block lists.

mod redis_support;

use std::collections::BTreeMap;
use std::time::Duration;

use redis_support::{eventually, node, redis_config, router, settings, Deployment};
use switchyard::offline::OfflineConfig;
use switchyard::presence::{PresenceStore, Session};
use switchyard::registry::ring::{Ring, DEFAULT_VNODES};
use switchyard::{Destination, Envelope, GatewayId, GatewayInfo, Outcome, Priority, UserId};

on_both!(
    presence_keeps_every_device_of_a_user,
    sessions_expire_without_heartbeat,
    a_presence_change_invalidates_the_cache_of_every_node,
    an_expired_gateway_loses_its_sessions_and_its_ring_share,
    the_ring_is_balanced_and_moves_only_the_changed_share,
    offline_messages_replay_in_order_and_acks_remove_them,
    a_message_that_keeps_failing_is_dead_lettered,
    users_flagged_for_a_gateway_are_taken_once,
    a_group_message_is_published_once_per_gateway,
    a_blocked_sender_reaches_nobody,
    a_block_reaches_the_cache_of_every_node,
);

fn session(user: &str, device: &str, gateway: &str) -> Session {
    Session {
        user: user.into(),
        device: device.into(),
        gateway: gateway.into(),
        region: "eu".into(),
        since_micros: 42,
    }
}

async fn presence_keeps_every_device_of_a_user(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let backends = node(&settings).await;
    let presence = &backends.presence;
    assert!(presence
        .online(session("u1", "phone", "gw-a"))
        .await
        .unwrap());
    assert!(!presence
        .online(session("u1", "laptop", "gw-a"))
        .await
        .unwrap());
    assert!(presence
        .online(session("u1", "tablet", "gw-b"))
        .await
        .unwrap());
    let mut found = presence.locate(&"u1".into()).await.unwrap();
    found.sort_by(|a, b| a.device.cmp(&b.device));
    assert_eq!(
        found,
        vec![
            session("u1", "laptop", "gw-a"),
            session("u1", "phone", "gw-a"),
            session("u1", "tablet", "gw-b")
        ]
    );
    let (_, last) = presence
        .offline(&"u1".into(), &"phone".into())
        .await
        .unwrap()
        .unwrap();
    assert!(!last, "the laptop is still on gw-a");
    let (_, last) = presence
        .offline(&"u1".into(), &"laptop".into())
        .await
        .unwrap()
        .unwrap();
    assert!(last);
    assert!(presence
        .offline(&"u1".into(), &"laptop".into())
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        presence.locate(&"u1".into()).await.unwrap(),
        vec![session("u1", "tablet", "gw-b")]
    );
}

async fn sessions_expire_without_heartbeat(deployment: Deployment) {
    let mut settings = settings(&redis_config(deployment));
    settings.presence.session_ttl = Duration::from_millis(1500);
    settings.presence.cache_capacity = 0;
    let backends = node(&settings).await;
    let presence = &backends.presence;
    presence.online(session("u1", "d", "gw-a")).await.unwrap();
    presence.online(session("u2", "d", "gw-b")).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        presence.refresh(&"gw-a".into()).await.unwrap();
    }
    assert_eq!(
        presence.locate(&"u1".into()).await.unwrap().len(),
        1,
        "refreshed"
    );
    assert!(
        presence.locate(&"u2".into()).await.unwrap().is_empty(),
        "expired"
    );
}

async fn a_presence_change_invalidates_the_cache_of_every_node(deployment: Deployment) {
    let mut settings = settings(&redis_config(deployment));
    // Without events, node B would serve its cached answer for a minute.
    settings.presence.cache_ttl = Duration::from_secs(60);
    let (a, b) = (node(&settings).await, node(&settings).await);
    let alice = UserId::from("alice");
    assert!(
        b.presence.locate(&alice).await.unwrap().is_empty(),
        "cached: offline"
    );
    a.directory
        .online(session("alice", "phone", "gw-a"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.presence.locate(&alice).await.unwrap().len() == 1
        })
        .await,
        "node B still serves the stale cached lookup"
    );
    a.directory.offline(&alice, &"phone".into()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.presence.locate(&alice).await.unwrap().is_empty()
        })
        .await
    );
}

async fn an_expired_gateway_loses_its_sessions_and_its_ring_share(deployment: Deployment) {
    let mut redis = redis_config(deployment);
    redis.gateway_ttl = Duration::from_millis(1000);
    let settings = settings(&redis);
    let backends = node(&settings).await;
    let (a, b) = (
        GatewayInfo::new("gw-a", "eu"),
        GatewayInfo::new("gw-b", "eu"),
    );
    backends.registry.register(&a).await.unwrap();
    backends.registry.register(&b).await.unwrap();
    backends
        .directory
        .online(session("u1", "d1", "gw-a"))
        .await
        .unwrap();
    backends
        .directory
        .online(session("u1", "d2", "gw-b"))
        .await
        .unwrap();
    backends
        .directory
        .join(&"g".into(), &"u1".into())
        .await
        .unwrap();
    let ring = backends.registry.ring(DEFAULT_VNODES).await.unwrap();
    assert_eq!(ring.gateways().count(), 2);

    // gw-b keeps beating, gw-a stops.
    let beats = async {
        for _ in 0..8 {
            backends.registry.register(&b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    beats.await;
    let ring = backends.registry.ring(DEFAULT_VNODES).await.unwrap();
    assert_eq!(
        ring.gateways().map(|g| g.as_str()).collect::<Vec<_>>(),
        ["gw-b"]
    );
    assert!(backends
        .registry
        .get(&"gw-a".into())
        .await
        .unwrap()
        .is_none());
    assert!(
        eventually(Duration::from_secs(3), || async {
            backends.presence.locate(&"u1".into()).await.unwrap()
                == vec![session("u1", "d2", "gw-b")]
        })
        .await,
        "the reaper did not remove gw-a's session"
    );
    assert_eq!(
        backends
            .directory
            .groups()
            .distribution(&"g".into())
            .await
            .unwrap(),
        vec![("gw-b".into(), 1)]
    );
}

/// 10 gateways, 100 000 users, 160 virtual nodes each: every gateway gets
/// within ±15% of the mean (measured: -7.9%..+6.5%); adding an 11th moves only users to it (about
/// 1/11 of them), and removing one moves only that gateway's users.
async fn the_ring_is_balanced_and_moves_only_the_changed_share(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let backends = node(&settings).await;
    for i in 0..10 {
        let gateway = GatewayInfo::new(format!("gw-{i:02}"), "eu");
        backends.registry.register(&gateway).await.unwrap();
    }
    let ring = backends.registry.ring(DEFAULT_VNODES).await.unwrap();
    let users: Vec<UserId> = (0..100_000)
        .map(|u| UserId::from(format!("user-{u}")))
        .collect();
    let assign = |ring: &Ring| -> Vec<String> {
        users
            .iter()
            .map(|u| ring.assign(u).unwrap().id.to_string())
            .collect()
    };
    let before = assign(&ring);
    let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &before {
        *shares.entry(g).or_default() += 1;
    }
    let mean = users.len() / 10;
    let (min, max) = (
        shares.values().min().unwrap(),
        shares.values().max().unwrap(),
    );
    println!("shares over 10 gateways: min {min} max {max} mean {mean} ({shares:?})");
    assert!(
        *min as f64 >= mean as f64 * 0.85 && *max as f64 <= mean as f64 * 1.15,
        "unbalanced: {shares:?}"
    );

    let joined = GatewayInfo::new("gw-10", "eu");
    backends.registry.register(&joined).await.unwrap();
    let after_join = assign(&backends.registry.ring(DEFAULT_VNODES).await.unwrap());
    let moved: Vec<usize> = (0..users.len())
        .filter(|&i| before[i] != after_join[i])
        .collect();
    println!(
        "join: {} of {} users moved ({:.1}%, ideal {:.1}%)",
        moved.len(),
        users.len(),
        moved.len() as f64 * 100.0 / users.len() as f64,
        100.0 / 11.0
    );
    assert!(
        moved.iter().all(|&i| after_join[i] == "gw-10"),
        "a join moved users between old gateways"
    );
    assert!(moved.len() > users.len() / 11 * 3 / 4 && moved.len() < users.len() / 11 * 5 / 4);

    backends.registry.deregister(&"gw-03".into()).await.unwrap();
    let after_leave = assign(&backends.registry.ring(DEFAULT_VNODES).await.unwrap());
    let moved = (0..users.len())
        .filter(|&i| after_join[i] != after_leave[i])
        .count();
    let owned = after_join.iter().filter(|g| *g == "gw-03").count();
    println!("leave: {moved} users moved, gw-03 owned {owned}");
    assert_eq!(
        moved, owned,
        "a leave moved users the leaving gateway did not own"
    );
}

async fn offline_messages_replay_in_order_and_acks_remove_them(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let backends = node(&settings).await;
    let bob = UserId::from("bob");
    let sent: Vec<Envelope> = (0..300)
        .map(|i| {
            Envelope::new(
                "alice",
                "gw-a",
                Destination::User(bob.clone()),
                format!("m{i}"),
            )
        })
        .collect();
    for env in &sent {
        backends.offline.append(&bob, env).await.unwrap();
    }
    assert_eq!(backends.offline.depth(&bob).await.unwrap(), 300);
    let first = backends.offline.read(&bob, 200).await.unwrap();
    assert_eq!(first, sent[..200].to_vec());
    let ids: Vec<_> = first.iter().map(|e| e.id).collect();
    assert_eq!(backends.offline.ack(&bob, &ids).await.unwrap(), 200);
    assert_eq!(
        backends.offline.read(&bob, 1000).await.unwrap(),
        sent[200..].to_vec()
    );

    // And through the router: connecting replays the rest in order.
    let (router, mut inbox) = redis_support::router(&settings, "gw-b").await;
    assert_eq!(router.connect("bob", "phone").await.unwrap(), 100);
    for expected in &sent[200..] {
        let delivery = inbox.recv().await.unwrap();
        assert_eq!(&delivery.envelope.payload, &expected.payload);
        inbox.ack(delivery.seq);
    }
    // Each replayed message leaves the store once its delivery is acked.
    assert!(
        eventually(Duration::from_secs(5), || async {
            backends.offline.depth(&bob).await.unwrap() == 0
        })
        .await,
        "acked offline messages are still stored"
    );
}

async fn a_message_that_keeps_failing_is_dead_lettered(deployment: Deployment) {
    let mut settings = settings(&redis_config(deployment));
    settings.offline = OfflineConfig {
        max_deliveries: 3,
        ..OfflineConfig::default()
    };
    let backends = node(&settings).await;
    let bob = UserId::from("bob");
    let (ok, poison) = (
        Envelope::new("alice", "gw-a", Destination::User(bob.clone()), "fine"),
        Envelope::new("alice", "gw-a", Destination::User(bob.clone()), "poison"),
    );
    backends.offline.append(&bob, &poison).await.unwrap();
    backends.offline.append(&bob, &ok).await.unwrap();
    for attempt in 1..=3 {
        let moved = backends
            .offline
            .delivery_failed(&bob, poison.id, "client crashed")
            .await
            .unwrap();
        assert_eq!(moved, attempt == 3, "attempt {attempt}");
    }
    assert_eq!(
        backends.offline.read(&bob, 10).await.unwrap(),
        vec![ok.clone()]
    );
    assert_eq!(
        backends.offline.dead_letters(&bob, 10).await.unwrap(),
        vec![(poison, "client crashed".to_owned())]
    );
}

async fn users_flagged_for_a_gateway_are_taken_once(deployment: Deployment) {
    let backends = node(&settings(&redis_config(deployment))).await;
    let (gw, other) = (GatewayId::from("gw-f"), GatewayId::from("gw-g"));
    for user in ["bob", "carol", "bob"] {
        backends.offline.flag(&gw, &user.into()).await.unwrap();
    }
    backends.offline.flag(&other, &"dave".into()).await.unwrap();
    let mut taken = backends.offline.take_flagged(&gw).await.unwrap();
    taken.sort();
    assert_eq!(taken, [UserId::from("bob"), UserId::from("carol")]);
    assert!(backends.offline.take_flagged(&gw).await.unwrap().is_empty());
    assert_eq!(
        backends.offline.take_flagged(&other).await.unwrap(),
        [UserId::from("dave")]
    );
}

async fn a_group_message_is_published_once_per_gateway(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let (sender, _) = redis_support::router(&settings, "gw-s").await;
    let mut gateways = Vec::new();
    for g in 0..3 {
        let (router, inbox) = redis_support::router(&settings, &format!("gw-{g}")).await;
        // 4 members per gateway, one of them on two devices there.
        for m in 0..4 {
            let user = format!("m{g}-{m}");
            router.connect(user.as_str(), "phone").await.unwrap();
            sender.join("room", user.as_str()).await.unwrap();
        }
        router.connect(format!("m{g}-0"), "laptop").await.unwrap();
        gateways.push((router, inbox));
    }
    let distribution = sender
        .backends()
        .directory
        .groups()
        .distribution(&"room".into())
        .await
        .unwrap();
    assert_eq!(
        distribution,
        vec![("gw-0".into(), 4), ("gw-1".into(), 4), ("gw-2".into(), 4)]
    );
    let report = sender
        .send(
            Envelope::new(
                "m0-0",
                "gw-s",
                Destination::Group("room".into()),
                "hello room",
            )
            .with_priority(Priority::High),
        )
        .await
        .unwrap();
    let Outcome::Routed {
        targets,
        stored_offline,
    } = report.outcome
    else {
        panic!("not routed")
    };
    assert_eq!(stored_offline, None);
    assert_eq!(
        targets.len(),
        3,
        "one publish per gateway, not per member: {targets:?}"
    );
    assert!(targets.iter().all(|t| t.result.is_ok()), "{targets:?}");
    for (_, inbox) in &mut gateways {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .unwrap()
            .unwrap();
        inbox.ack(delivery.seq);
        assert_eq!(delivery.envelope.payload, "hello room");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), inbox.recv())
                .await
                .is_err(),
            "a gateway got the group message twice"
        );
    }
}

async fn a_blocked_sender_reaches_nobody(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let (router, _) = redis_support::router(&settings, "gw-a").await;
    router.block("bob", "mallory").await.unwrap();
    let to_bob = |from: &str| Envelope::new(from, "gw-a", Destination::User("bob".into()), "hi");
    assert_eq!(
        router.send(to_bob("mallory")).await.unwrap().outcome,
        Outcome::Blocked
    );
    assert_ne!(
        router.send(to_bob("alice")).await.unwrap().outcome,
        Outcome::Blocked
    );
    router.unblock("bob", "mallory").await.unwrap();
    assert_ne!(
        router.send(to_bob("mallory")).await.unwrap().outcome,
        Outcome::Blocked
    );
    assert_eq!(
        router
            .backends()
            .offline
            .depth(&"bob".into())
            .await
            .unwrap(),
        2
    );
}

async fn a_block_reaches_the_cache_of_every_node(deployment: Deployment) {
    let mut settings = settings(&redis_config(deployment));
    // Without events, node B would serve its cached list for a minute.
    settings.blocks.cache_ttl = Duration::from_secs(60);
    let (a, b) = (node(&settings).await, node(&settings).await);
    let (bob, mallory) = (UserId::from("bob"), UserId::from("mallory"));
    assert!(
        !b.blocks.is_blocked(&bob, &mallory).await.unwrap(),
        "cached: bob blocks nobody"
    );
    a.blocks.block(&bob, &mallory).await.unwrap();
    assert!(
        a.blocks.is_blocked(&bob, &mallory).await.unwrap(),
        "the node that blocked sees it at once"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.blocks.is_blocked(&bob, &mallory).await.unwrap()
        })
        .await,
        "node B still lets mallory through from its cache"
    );
    a.blocks.unblock(&bob, &mallory).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            !b.blocks.is_blocked(&bob, &mallory).await.unwrap()
        })
        .await
    );
}

#[test]
fn the_shipped_redis_config_loads_and_bad_keys_are_named() {
    let settings = switchyard::Settings::from_toml(include_str!("../config/redis.toml")).unwrap();
    assert!(matches!(
        settings.store,
        switchyard::config::StoreConfig::Redis(_)
    ));
    assert_eq!(settings.routing.same_region, "redis");
    let err = switchyard::Settings::from_toml("[store]\nkind = \"redis\"\nurl = \"http://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store.url") && err.contains("http://x"),
        "{err}"
    );
    let err = switchyard::Settings::from_toml("[store]\nkind = \"redis\"\nulr = \"redis://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ulr"), "{err}");
}

/// `config/sentinel.toml` against `scripts/services/redis-sentinel.sh`:
/// stores and Pub/Sub find the master through the sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sentinel_config_routes_through_the_sentinels_master() {
    let mut settings =
        switchyard::Settings::from_toml(include_str!("../config/sentinel.toml")).unwrap();
    let prefix = format!("sy-test-{}", ulid::Ulid::new());
    let switchyard::config::StoreConfig::Redis(store) = &mut settings.store else {
        panic!("config/sentinel.toml has a Redis store");
    };
    store.key_prefix = prefix.clone();
    let transport = settings
        .transports
        .redis
        .as_mut()
        .expect("a Redis transport");
    transport.connection.key_prefix = prefix;
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let envelope = redis_support::to_bob(0, switchyard::Priority::High);
    let report = a.send(envelope.clone()).await.unwrap();
    assert!(
        matches!(&report.outcome, switchyard::Outcome::Routed { targets, stored_offline: None } if targets.iter().all(|t| t.confirmed)),
        "{report:?}"
    );
    let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("a delivery within 5 s")
        .expect("the inbox is open");
    assert_eq!(delivery.envelope.id, envelope.id);
}

#[test]
fn sentinel_settings_are_validated_by_key() {
    let err = switchyard::Settings::from_toml(
        "[store]\nkind = \"redis\"\ncluster = true\nresponse_timeout = \"1s\"\n\
         [store.sentinel]\nnodes = [\"http://x\"]\nwait_timeout = \"1s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("store.sentinel.nodes") && err.contains("http://x"),
        "{err}"
    );
    assert!(
        err.contains("store.sentinel: cannot be combined with cluster"),
        "{err}"
    );
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_up_is_named_in_the_error() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = "redis://127.0.0.1:1".into();
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("no Redis on port 1")
        .to_string();
    println!("{err}");
    assert!(err.contains("redis://127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_missing_credential_variable_is_named() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.password_env = Some("SWITCHYARD_TEST_UNSET_PASSWORD".into());
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("the variable is not set")
        .to_string();
    assert!(
        err.contains("SWITCHYARD_TEST_UNSET_PASSWORD is not set"),
        "{err}"
    );
}

/// A private password-protected Redis on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    server: std::process::Child,
}

impl PrivateRedis {
    fn start(password: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let server = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services/redis.sh installs it)");
        Self { port, server }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[tokio::test]
async fn the_password_comes_from_the_named_environment_variable() {
    let private = PrivateRedis::start("s3cret");
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = format!("redis://127.0.0.1:{}", private.port);
    assert!(
        eventually(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", private.port))
                .await
                .is_ok()
        })
        .await
    );
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("no password given")
        .to_string();
    assert!(err.contains(&redis.url), "{err}");

    // A variable only this test reads.
    std::env::set_var("SWITCHYARD_TEST_PRIVATE_REDIS_PASSWORD", "s3cret");
    redis.password_env = Some("SWITCHYARD_TEST_PRIVATE_REDIS_PASSWORD".into());
    let backends = node(&settings(&redis)).await;
    backends
        .blocks
        .block(&"bob".into(), &"mallory".into())
        .await
        .unwrap();
    assert!(backends
        .blocks
        .is_blocked(&"bob".into(), &"mallory".into())
        .await
        .unwrap());
}

/// No TLS Redis here: a `rediss://` URL against the plain-text server must
/// fail the TLS handshake with a clear error (not panic for want of a
/// crypto provider, not fall back to plain text).
#[tokio::test]
async fn a_rediss_url_speaks_tls() {
    let mut redis = redis_config(Deployment::Standalone);
    redis.url = redis.url.replacen("redis://", "rediss://", 1);
    redis.connect_timeout = Duration::from_secs(2);
    let err = switchyard::Backends::from_settings(&settings(&redis))
        .await
        .err()
        .expect("a plain-text server cannot complete a TLS handshake")
        .to_string();
    println!("{err}");
    assert!(err.contains(&redis.url), "{err}");
}
