//! Quality-aware routing against real brokers: same-region traffic prefers
//! Redis while Redis confirms within 200 ms and fails under 5%, else takes
//! Kafka. Redis (a private `redis-server`) is reached through Toxiproxy, so
//! it can be slowed without failing. A steady sender sees:
//!
//! 1. Redis healthy: every message goes over Redis.
//! 2. Redis slowed by 150 ms each way (publishes confirm in ~300 ms, the
//!    transport stays up): the route moves to Kafka.
//! 3. The delay removed: probes find Redis fast again; the route comes back.
//! 4. Redis paused (SIGSTOP: publishes time out): the route moves to Kafka.
//! 5. Redis resumed: the route comes back.
//!
//! Four changes and no more (no flapping), and every confirmed message is
//! seen by the receiving gateway exactly once, whichever way it went.
//!
//!   scripts/services/{kafka,toxiproxy}.sh start
//!   cargo test -p switchyard --features it-redis,it-kafka,it-toxiproxy --test it quality_routing:: -- --nocapture

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-toxiproxy"))]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchyard::inbox::Via;
use switchyard::policy::quality::{QualityRuleConfig, RouteQuality};
use switchyard::redis_conn::RedisConfig;
use switchyard::transport::redis::RedisTransportConfig;
use switchyard::transport::{Health, TransportKind};
use switchyard::{
    Backends, Destination, Envelope, GatewayInfo, MessageId, Outcome, Priority, Router, Settings,
};
use testkit::servers;
use testkit::toxiproxy;

/// Toxiproxy's listen port in front of the private Redis (the features
/// block of the test port plan).
const PROXY_PORT: u16 = 28391;
const MAX_P99: Duration = Duration::from_millis(200);
/// How long a phase may take to show its change before the test fails.
const PATIENCE: Duration = Duration::from_secs(40);

fn settings(redis_url: &str, run: &str) -> Settings {
    let mut settings = Settings::default();
    let mut kafka = servers::kafka_config(servers::KAFKA);
    kafka.group_prefix = format!("quality-{run}.");
    settings.transports.kafka = Some(kafka);
    settings.transports.redis = Some(RedisTransportConfig {
        connection: RedisConfig {
            url: redis_url.into(),
            key_prefix: format!("sy-quality-{run}"),
            ..RedisConfig::default()
        },
        ..RedisTransportConfig::default()
    });
    settings.routing.same_region = "redis".into();
    settings.routing.cross_region = "kafka".into();
    settings.routing.quality.same_region = Some(QualityRuleConfig {
        otherwise: "kafka".into(),
        max_p99: MAX_P99,
        max_error_rate: 0.05,
        window: Duration::from_secs(4),
        // One sender whose publishes to a paused Redis each take the 1 s
        // timeout yields 4 failures per window: 3 must be enough.
        min_samples: 3,
        recover_after: Duration::from_secs(2),
        probe_every: Duration::from_secs(1),
    });
    // A paused Redis fails a publish after 1 s (then Kafka takes it).
    settings.delivery.publish_timeout = Duration::from_secs(1);
    settings.delivery.retries = 0;
    settings
}

/// The sender's log: each confirmed message's id and the transport it took.
#[derive(Default)]
struct Sent {
    confirmed: Vec<(MessageId, TransportKind)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_paused_redis_moves_the_route_to_kafka_and_back() {
    let mut redis = servers::PrivateBroker::redis().await;
    let link = toxiproxy::Link::new("quality-redis", PROXY_PORT, redis.port, Duration::ZERO);
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let settings = settings(&format!("redis://127.0.0.1:{PROXY_PORT}"), &run);
    let backends = Backends::from_settings(&settings).await.expect("backends");
    let mut routers = Vec::new();
    for name in ["a", "b"] {
        let (router, inbox) = Router::builder(GatewayInfo::new(
            switchyard::GatewayId::try_from(format!("q{name}-{run}")).unwrap(),
            "eu",
        ))
        .settings(settings.clone())
        .backends(backends.clone())
        .build()
        .await
        .expect("router");
        routers.push((router, inbox));
    }
    let (receiver, mut inbox) = routers.pop().expect("b");
    let (sender, _sender_inbox) = routers.pop().expect("a");
    let bob: switchyard::UserId = format!("bob-{run}").parse().unwrap();
    receiver
        .connect(bob.clone(), "phone")
        .await
        .expect("connect");

    // The gateway's view: every delivery by id, acked as it comes.
    let seen: Arc<Mutex<HashMap<MessageId, Vec<Via>>>> = Arc::default();
    let reader = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(d) = inbox.recv().await {
                inbox.ack(d.seq);
                seen.lock().entry(d.envelope.id).or_default().push(d.via);
            }
        }
    });

    let mut sent = Sent::default();
    let send = |sender: &Router| {
        let envelope = Envelope::new(
            "alice",
            sender.gateway().id.clone(),
            Destination::User(bob.clone()),
            "hi",
        )
        .with_priority(Priority::Normal);
        let sender = sender.clone();
        async move {
            let report = sender.send(envelope).await.expect("send");
            let Outcome::Routed { targets, .. } = report.outcome else {
                panic!("not routed: {:?}", report.outcome)
            };
            let target = targets.first().expect("one target");
            assert!(target.confirmed, "unconfirmed: {:?}", target.result);
            match target.result {
                Ok(Via::Transport(kind)) => (report.id, kind),
                ref other => panic!("not over a transport: {other:?}"),
            }
        }
    };
    let quality = |router: &Router| -> Option<RouteQuality> {
        router.policy().route_quality().into_iter().next()
    };
    let redis_health = || {
        backends
            .transports()
            .get(TransportKind::REDIS)
            .expect("redis enabled")
            .health()
    };

    // Sends every 20 ms until `until` holds for the route (checked after
    // each send), or fails after PATIENCE; returns how long it took.
    macro_rules! send_until {
        ($what:expr, $until:expr) => {{
            let started = Instant::now();
            loop {
                let (id, kind) = send(&sender).await;
                sent.confirmed.push((id, kind));
                let q = quality(&sender);
                if $until(q.as_ref(), kind) {
                    break started.elapsed();
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "{}: not after {PATIENCE:?}; route: {q:?}",
                    $what
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }};
    }
    let degraded = |q: Option<&RouteQuality>| q.is_some_and(|q| q.degraded.is_some());
    // Back, and the messages after it go over Redis again.
    let back = |q: Option<&RouteQuality>, kind| {
        q.is_some_and(|q| q.degraded.is_none()) && kind == TransportKind::REDIS
    };

    // 1. Healthy: Redis.
    for _ in 0..50 {
        let (id, kind) = send(&sender).await;
        assert_eq!(kind, TransportKind::REDIS, "healthy Redis is the route");
        sent.confirmed.push((id, kind));
    }

    // 2. Slow, not down.
    link.set_latency(Duration::from_millis(150));
    let moved = send_until!("slow redis left", |q: Option<&RouteQuality>, _| degraded(q));
    let q = quality(&sender).expect("a verdict");
    let (to, _, why) = q.degraded.clone().expect("degraded");
    assert_eq!(to, TransportKind::KAFKA);
    assert!(why.starts_with("p99"), "left for its p99: {why}");
    assert_eq!(
        redis_health(),
        Health::Up,
        "slow, not down: the rule moved it"
    );
    // Degraded: all but the probes go over Kafka, without waiting for Redis.
    let mut over_kafka = 0;
    for _ in 0..30 {
        let started = Instant::now();
        let (id, kind) = send(&sender).await;
        sent.confirmed.push((id, kind));
        if kind == TransportKind::KAFKA && started.elapsed() < MAX_P99 {
            over_kafka += 1;
        }
    }
    assert!(
        over_kafka >= 15,
        "only {over_kafka} of 30 straight to Kafka"
    );
    println!("slowed: the route moved after {moved:?}: {why}");

    // 3. Fast again: back after the window and the dwell.
    link.set_latency(Duration::ZERO);
    let returned = send_until!("fast redis back", back);
    println!("delay removed: back on Redis after {returned:?}");

    // 4. Paused: publishes time out.
    redis.freeze();
    let moved = send_until!("paused redis left", |q: Option<&RouteQuality>, _| degraded(
        q
    ));
    let why = quality(&sender)
        .and_then(|q| q.degraded)
        .map(|d| d.2)
        .unwrap_or_default();
    println!("paused: the route moved after {moved:?}: {why}");

    // 5. Resumed.
    redis.thaw();
    let returned = send_until!("resumed redis back", back);
    println!("resumed: back on Redis after {returned:?}");
    let q = quality(&sender).expect("a verdict");
    assert_eq!(
        q.changes, 4,
        "two moves and two returns, no flapping: {q:?}"
    );

    // Every confirmed message reaches the gateway once (a copy of a Redis
    // publish that timed out but landed after the pause is deduped).
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let missing: Vec<MessageId> = {
            let seen = seen.lock();
            sent.confirmed
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !seen.contains_key(id))
                .collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = seen.lock();
    let twice: Vec<_> = seen.iter().filter(|(_, vias)| vias.len() > 1).collect();
    let by_kind = |k| sent.confirmed.iter().filter(|(_, t)| *t == k).count();
    println!(
        "{} confirmed ({} over redis, {} over kafka), {} delivered, {} lost, {} seen twice",
        sent.confirmed.len(),
        by_kind(TransportKind::REDIS),
        by_kind(TransportKind::KAFKA),
        seen.len(),
        missing.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "{} confirmed, never delivered",
        missing.len()
    );
    assert!(twice.is_empty(), "the gateway saw duplicates: {twice:?}");
    assert_eq!(
        seen.len(),
        sent.confirmed.len(),
        "nothing unexpected arrived"
    );
    drop(seen);
    reader.abort();
}
