//! One message, several target gateways, over NATS JetStream through the
//! router: a group with members on two gateways, and a user online on two
//! gateways, with NATS as the route's transport and as its fallback. Each
//! gateway must get every message exactly once. The one JetStream stream
//! dedupes `Nats-Msg-Id` across all its subjects, so an id naming only the
//! message let one gateway have it and reported both delivered.
//!
//! Presence and groups live in the shared Redis (so every router, with
//! backends of its own, sees the same sessions); NATS is the server of
//! `scripts/services/nats.sh`.
//!
//!   scripts/services/redis.sh start && scripts/services/nats.sh start
//!   cargo test -p switchyard --features it-nats,it-redis --test it nats_fanout::

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-nats", feature = "it-redis"))]

use std::collections::BTreeMap;
use std::time::Duration;

use redis_nodes::{redis_config, Deployment};
use switchyard::transport::TransportKind;
use switchyard::{
    Destination, Envelope, GatewayInfo, Inbox, MessageId, Outcome, Router, Settings, UserId, Via,
};
use testkit::redis_nodes;
use testkit::servers;

/// How long a gateway may take to get every message before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);
/// Messages per destination (group, user).
const N: usize = 20;

/// Settings over the shared Redis store and NATS, with `same_region` as the
/// route's transport and `fallbacks` after it; `redis_transport` enables
/// Redis Pub/Sub (a gateway without it does not read its Redis channel).
fn settings(
    store: &switchyard::redis_conn::RedisConfig,
    same_region: &str,
    fallbacks: &[&str],
    redis_transport: bool,
) -> Settings {
    let mut settings = redis_nodes::settings(store);
    if !redis_transport {
        settings.transports.redis = None;
    }
    settings.transports.nats = Some(servers::nats_config(servers::NATS));
    settings.routing.same_region = same_region.into();
    settings.routing.cross_region = same_region.into();
    settings.routing.fallbacks = fallbacks.iter().map(|f| f.to_string()).collect();
    settings
}

async fn router(settings: &Settings, id: &str) -> (Router, Inbox) {
    Router::builder(GatewayInfo::new(
        id.parse::<switchyard::GatewayId>().unwrap(),
        "eu",
    ))
    .settings(settings.clone())
    .build()
    .await
    .expect("router over Redis and NATS")
}

/// Gateway `g0` sends `N` messages to a group with one member on each of
/// `g1` and `g2`, and `N` to a user online on both; asserts every report
/// says both targets were delivered and confirmed over NATS, and that each
/// gateway got each message exactly once.
async fn each_gateway_gets_every_message_once(sender: Settings, receiver: Settings) {
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let (g0, _) = router(&sender, &format!("{run}-g0")).await;
    let mut receivers = Vec::new();
    for (g, device) in [(1, "phone"), (2, "laptop")] {
        let (r, inbox) = router(&receiver, &format!("{run}-g{g}")).await;
        let member: UserId = format!("member-{g}").parse().unwrap();
        r.connect(member.clone(), "phone").await.unwrap();
        g0.join("team", member).await.unwrap();
        r.connect("bob", device).await.unwrap();
        receivers.push((r, inbox));
    }
    let mut sent = Vec::new();
    for i in 0..N {
        for to in [
            Destination::Group("team".into()),
            Destination::User("bob".into()),
        ] {
            let envelope = Envelope::new("alice", g0.gateway().id.clone(), to, format!("{i}"));
            sent.push(envelope.id);
            let report = g0.send(envelope).await.expect("routed");
            let Outcome::Routed {
                targets,
                stored_offline: None,
            } = &report.outcome
            else {
                panic!("not routed to both gateways: {report:?}");
            };
            assert_eq!(targets.len(), 2, "{targets:?}");
            for t in targets {
                assert_eq!(
                    t.result.as_ref().ok(),
                    Some(&Via::Transport(TransportKind::NATS)),
                    "{t:?}"
                );
                assert!(t.confirmed, "{t:?}");
            }
        }
    }
    for (r, inbox) in &mut receivers {
        let mut copies: BTreeMap<MessageId, usize> = BTreeMap::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while sent.iter().any(|id| !copies.contains_key(id)) {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(d)) => {
                    // Taken, as a gateway acks: the transport is acked too.
                    inbox.ack(d.seq);
                    *copies.entry(d.envelope.id).or_default() += 1;
                }
                _ => break,
            }
        }
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await
        {
            inbox.ack(d.seq);
            *copies.entry(d.envelope.id).or_default() += 1;
        }
        let lost = sent.iter().filter(|id| !copies.contains_key(id)).count();
        let duplicated = copies.values().filter(|&&n| n > 1).count();
        let strangers = copies.keys().filter(|id| !sent.contains(id)).count();
        assert_eq!(
            (lost, duplicated, strangers),
            (0, 0, 0),
            "gateway {}: (lost, duplicated, strangers) of {} sent",
            r.gateway().id,
            sent.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_as_the_route_transport() {
    let store = redis_config(Deployment::Standalone);
    let nats = settings(&store, "nats", &[], false);
    each_gateway_gets_every_message_once(nats.clone(), nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_nats_as_the_fallback() {
    let store = redis_config(Deployment::Standalone);
    // The receivers do not read Redis Pub/Sub: every Redis publish finds
    // no subscriber and the sender falls back to NATS.
    let sender = settings(&store, "redis", &["nats"], true);
    let receiver = settings(&store, "nats", &[], false);
    each_gateway_gets_every_message_once(sender, receiver).await;
}

/// Low priority over NATS is fire-and-forget: the client only enqueued it,
/// so the outcome says delivered but not confirmed (on a healthy server it
/// still arrives, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_over_nats_is_delivered_not_confirmed() {
    let store = redis_config(Deployment::Standalone);
    let nats = settings(&store, "nats", &[], false);
    let run = ulid::Ulid::new().to_string().to_lowercase();
    let (g0, _) = router(&nats, &format!("{run}-g0")).await;
    let (g1, mut inbox) = router(&nats, &format!("{run}-g1")).await;
    g1.connect("bob", "phone").await.unwrap();
    let mut sent = BTreeMap::new();
    for i in 0..N {
        let envelope = Envelope::new(
            "alice",
            g0.gateway().id.clone(),
            Destination::User("bob".into()),
            format!("{i}"),
        )
        .with_priority(switchyard::Priority::Low);
        sent.insert(envelope.id, 0usize);
        let report = g0.send(envelope).await.expect("routed");
        let Outcome::Routed { targets, .. } = &report.outcome else {
            panic!("not routed: {report:?}");
        };
        assert_eq!(
            targets[0].result.as_ref().ok(),
            Some(&Via::Transport(TransportKind::NATS)),
            "{targets:?}"
        );
        assert!(!targets[0].confirmed, "{targets:?}");
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sent.values().any(|&n| n == 0) {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(d)) => {
                inbox.ack(d.seq);
                *sent.entry(d.envelope.id).or_default() += 1;
            }
            _ => break,
        }
    }
    let lost = sent.values().filter(|&&n| n == 0).count();
    assert_eq!((lost, sent.len()), (0, N), "(lost, ids seen)");
}
