//! Two regions end to end through real routers: same-region traffic over
//! the in-process transport, cross-region over Kafka, then over NATS
//! JetStream by changing one config key; and the Kafka broker dying
//! mid-stream without losing a message.
//!
//! The traffic tests (`--features it-kafka,it-nats`) need the servers of
//! `scripts/services/*.sh start`; the fault test runs a private three-node
//! Kafka cluster, which it stops whole. The config checks need nothing.

use std::time::Duration;

use switchyard::{Backends, Settings};
use testkit::servers;
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
use {
    std::collections::HashSet,
    std::sync::Arc,
    switchyard::inbox::Via,
    switchyard::transport::{Health, TransportKind},
    switchyard::{Destination, Envelope, GatewayInfo, Inbox, MessageId, Outcome, Priority, Router},
};

/// How long a gateway waits for its messages before the test fails.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
const PATIENCE: Duration = Duration::from_secs(30);

/// Settings for the fleet: memory same-region, `cross_region` between regions.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
fn settings(kafka_brokers: &str, cross_region: &str, fallbacks: &[&str]) -> Settings {
    let mut settings = Settings::default();
    settings.transports.kafka = Some(servers::kafka_config(kafka_brokers));
    settings.transports.nats = Some(servers::nats_config(servers::NATS));
    settings.routing.same_region = "memory".into();
    settings.routing.cross_region = cross_region.into();
    settings.routing.fallbacks = fallbacks.iter().map(|s| s.to_string()).collect();
    settings
}

/// One gateway of the fleet with one connected user.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
struct Gateway {
    router: Router,
    inbox: Inbox,
    user: switchyard::UserId,
}

/// Three gateways: two in `eu`, one in `us`, sharing one set of backends
/// (the presence store is what lets them find each other).
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
async fn fleet(settings: &Settings) -> (Gateway, Gateway, Gateway) {
    let backends = Backends::from_settings(settings).await.expect("backends");
    let run = ulid::Ulid::new();
    let mut gateways = Vec::new();
    for (name, region) in [("eu1", "eu"), ("eu2", "eu"), ("us1", "us")] {
        let info = GatewayInfo::new(
            switchyard::GatewayId::try_from(format!("{name}-{run}")).unwrap(),
            region,
        );
        let (router, inbox) = Router::builder(info)
            .settings(settings.clone())
            .backends(backends.clone())
            .build()
            .await
            .expect("router");
        let user = switchyard::UserId::try_from(format!("user-{name}-{run}")).unwrap();
        router
            .connect(user.clone(), "phone")
            .await
            .expect("connect");
        gateways.push(Gateway {
            router,
            inbox,
            user,
        });
    }
    let us = gateways.pop().expect("us1");
    let eu2 = gateways.pop().expect("eu2");
    let eu1 = gateways.pop().expect("eu1");
    (eu1, eu2, us)
}

/// Sends `n` messages from `from` to `to`'s user; returns their ids and the
/// transport each went over.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
async fn send(
    from: &Gateway,
    to: &Gateway,
    n: usize,
    priority: Priority,
) -> (HashSet<MessageId>, Vec<Option<Via>>) {
    let mut ids = HashSet::new();
    let mut vias = Vec::new();
    for i in 0..n {
        let env = Envelope::new(
            from.user.clone(),
            from.router.gateway().id.clone(),
            Destination::User(to.user.clone()),
            format!("msg {i}"),
        )
        .with_priority(priority);
        let report = from.router.send(env).await.expect("send");
        ids.insert(report.id);
        let Outcome::Routed { targets, .. } = report.outcome else {
            panic!("not routed: {:?}", report.outcome)
        };
        vias.push(targets.first().and_then(|t| t.result.clone().ok()));
    }
    (ids, vias)
}

/// Reads `to`'s inbox until every id arrived, then a little longer to catch
/// duplicates; returns (delivered count, transports seen).
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
async fn drain(to: &mut Gateway, ids: &HashSet<MessageId>) -> (usize, HashSet<Via>) {
    let mut missing = ids.clone();
    let mut delivered = 0;
    let mut vias = HashSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !missing.is_empty() {
        let Ok(Some(d)) = tokio::time::timeout_at(deadline, to.inbox.recv()).await else {
            panic!(
                "{} message(s) never arrived at {}",
                missing.len(),
                to.router.gateway().id
            );
        };
        to.inbox.ack(d.seq);
        assert!(
            missing.remove(&d.envelope.id),
            "unexpected or duplicate delivery {}",
            d.envelope.id
        );
        delivered += 1;
        vias.insert(d.via);
    }
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), to.inbox.recv()).await {
        panic!(
            "duplicate or stray delivery {} via {}",
            d.envelope.id, d.via
        );
    }
    (delivered, vias)
}

#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
async fn cross_region_over(kind: TransportKind) {
    let (eu1, mut eu2, mut us) = fleet(&settings(servers::KAFKA, kind.as_str(), &[])).await;
    const N: usize = 50;
    let (same, same_via) = send(&eu1, &eu2, N, Priority::Normal).await;
    let (cross, cross_via) = send(&eu1, &us, N, Priority::High).await;
    assert!(
        same_via
            .iter()
            .all(|v| *v == Some(Via::Transport(TransportKind::MEMORY))),
        "{same_via:?}"
    );
    assert!(
        cross_via.iter().all(|v| *v == Some(Via::Transport(kind))),
        "{cross_via:?}"
    );
    assert_eq!(
        drain(&mut eu2, &same).await,
        (N, HashSet::from([Via::Transport(TransportKind::MEMORY)]))
    );
    assert_eq!(
        drain(&mut us, &cross).await,
        (N, HashSet::from([Via::Transport(kind)]))
    );
    // And back the other way.
    let (back, _) = send(&us, &eu1, N, Priority::Low).await;
    let mut eu1 = eu1;
    assert_eq!(
        drain(&mut eu1, &back).await,
        (N, HashSet::from([Via::Transport(kind)]))
    );
}

#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_goes_over_kafka() {
    cross_region_over(TransportKind::KAFKA).await;
}

#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_region_goes_over_nats_by_config_alone() {
    cross_region_over(TransportKind::NATS).await;
}

#[test]
fn the_local_demo_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/local.toml"))
        .expect("read");
    let settings = Settings::from_toml(&text).unwrap_or_else(|e| panic!("config/local.toml: {e}"));
    assert_eq!(settings.routing.cross_region, "kafka");
    assert_eq!(settings.routing.fallbacks, ["nats"]);
}

/// Kafka dies mid-stream: high-priority messages fall back to NATS (or the
/// offline store), nothing is lost or duplicated, Kafka's health shows it
/// down (the `switchyard_transport_up` gauge follows the health:
/// `transport::tests` in the library), and once the broker is back
/// cross-region traffic returns to Kafka.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_falls_back_and_recovers() {
    // Private: the whole cluster goes down, which the shared one must not.
    let cluster = servers::PrivateKafka::start(21010).await;
    let mut settings = settings(&cluster.brokers(), "kafka", &["nats"]);
    settings.delivery.publish_timeout = Duration::from_secs(2);
    settings.delivery.retries = 1;
    if let Some(kafka) = settings.transports.kafka.as_mut() {
        kafka.delivery_timeout = Duration::from_secs(1);
        kafka.metadata_refresh = Duration::from_secs(2);
    }
    let (eu1, _eu2, mut us) = fleet(&settings).await;
    let kafka = eu1
        .router
        .backends()
        .transports()
        .get(TransportKind::KAFKA)
        .expect("kafka")
        .clone();

    let (before, vias) = send(&eu1, &us, 20, Priority::High).await;
    assert!(
        vias.iter()
            .all(|v| *v == Some(Via::Transport(TransportKind::KAFKA))),
        "{vias:?}"
    );
    drain(&mut us, &before).await;

    cluster.kill_all();
    let (during, vias) = send(&eu1, &us, 20, Priority::High).await;
    assert!(
        vias.iter()
            .all(|v| *v != Some(Via::Transport(TransportKind::KAFKA))),
        "a message claims Kafka confirmed it while the broker was down: {vias:?}"
    );
    assert!(
        matches!(kafka.health(), Health::Down(_)),
        "kafka health stayed up"
    );
    if vias.iter().any(Option::is_none) {
        // Every transport failed for some: they wait in the offline store,
        // replayed when the user's device (re)connects.
        us.router
            .connect(us.user.clone(), "phone")
            .await
            .expect("reconnect");
    }
    let (delivered, _) = drain(&mut us, &during).await;
    assert_eq!(delivered, during.len());

    cluster.start_all().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while kafka.health() != Health::Up {
        assert!(
            tokio::time::Instant::now() < deadline,
            "kafka never came back up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back on Kafka once it answers again (the first sends may still take the fallback).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (after, vias) = send(&eu1, &us, 5, Priority::High).await;
        drain(&mut us, &after).await;
        if vias
            .iter()
            .all(|v| *v == Some(Via::Transport(TransportKind::KAFKA)))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cross-region never returned to kafka: {vias:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A broker that is down at start-up is a clear error naming its address,
/// not a hang.
#[tokio::test]
async fn a_broker_down_at_start_up_is_named() {
    let port = servers::free_port(); // nothing listens there
    let mut settings = Settings::default();
    let mut kafka = servers::kafka_config(&format!("127.0.0.1:{port}"));
    kafka.connect_timeout = Duration::from_secs(1);
    settings.transports.kafka = Some(kafka);
    let err = Backends::from_settings(&settings)
        .await
        .err()
        .expect("kafka down");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("kafka: cannot connect to 127.0.0.1:{port}")),
        "{text}"
    );

    let mut settings = Settings::default();
    settings.transports.nats = Some(servers::nats_config(&format!("nats://127.0.0.1:{port}")));
    let err = Backends::from_settings(&settings)
        .await
        .err()
        .expect("nats down");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("nats: cannot connect to nats://127.0.0.1:{port}")),
        "{text}"
    );
}

/// Broker settings reject a misspelt key by name.
#[test]
fn broker_settings_reject_unknown_keys() {
    for (section, key) in [("kafka", "brokres"), ("nats", "ack_wiat")] {
        let err =
            Settings::from_toml(&format!("[transports.{section}]\n{key} = \"x\"\n")).unwrap_err();
        let text = switchyard::cause::Report(&err).to_string();
        assert!(text.contains(key), "{text}");
    }
}

/// Fire-and-forget publishing is bounded: past `max_in_flight` a publish
/// fails at once (so the router falls back) instead of queueing without end.
#[cfg(all(feature = "it-kafka", feature = "it-nats"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_is_bounded() {
    use switchyard::transport::kafka::KafkaTransport;
    use switchyard::transport::nats::NatsTransport;
    use switchyard::transport::{Ack, Transport, TransportError};

    let mut kafka = servers::kafka_config(servers::KAFKA);
    kafka.max_in_flight = 10;
    kafka.linger = Duration::from_millis(200); // keep the first ones queued
    let mut nats = servers::nats_config(servers::NATS);
    nats.max_in_flight = 10;
    let transports: [Arc<dyn Transport>; 2] = [
        Arc::new(KafkaTransport::connect(&kafka).await.expect("kafka")),
        Arc::new(NatsTransport::connect(&nats).await.expect("nats")),
    ];
    for t in transports {
        let to = switchyard::GatewayId::try_from(format!("bound{}", ulid::Ulid::new())).unwrap();
        let batch: Vec<_> = (0..1000)
            .map(|i| {
                Envelope::new("u", "g", Destination::User("v".into()), format!("{i}")).encode()
            })
            .collect();
        let err = t
            .publish(&to, &batch, Ack::None)
            .await
            .expect_err("unbounded");
        assert!(
            matches!(err, TransportError::Publish { .. }),
            "{}: {err}",
            t.kind()
        );
    }
}
