//! The Redis Pub/Sub transport between router nodes of one region, against
//! a real Redis, standalone and cluster (sharded pub/sub). Faults are in
//! `redis_faults.rs`.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-redis")]

use std::time::Duration;

use redis_nodes::{redis_config, router, settings, to_bob, Deployment};
use switchyard::transport::{TransportError, TransportKind};
use switchyard::{Destination, Envelope, GatewayInfo, Outcome, Priority, Router, Via};
use testkit::redis_nodes;

testkit::on_both!(
    two_routers_in_one_region_talk_over_redis,
    a_publish_nobody_reads_goes_offline,
);

async fn two_routers_in_one_region_talk_over_redis(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let priorities = [Priority::High, Priority::Normal, Priority::Low];
    for i in 0..300 {
        let report = a.send(to_bob(i, priorities[i % 3])).await.unwrap();
        let Outcome::Routed {
            targets,
            stored_offline: None,
        } = report.outcome
        else {
            panic!("message {i} not routed: {:?}", report.outcome);
        };
        assert_eq!(
            targets[0].result.as_ref().ok(),
            Some(&Via::Transport(TransportKind::REDIS)),
            "{targets:?}"
        );
        assert!(
            targets[0].confirmed,
            "a subscriber was counted at every priority"
        );
    }
    for i in 0..300 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("delivery within 5 s")
            .expect("inbox open");
        inbox.ack(delivery.seq);
        assert_eq!(delivery.envelope.payload, format!("m{i}"), "in order");
        assert_eq!(delivery.via, Via::Transport(TransportKind::REDIS));
    }
}

async fn a_publish_nobody_reads_goes_offline(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let (a, _) = router(&settings, "gw-a").await;
    // Presence says bob is on gw-ghost, but no gateway subscribes there.
    let ghost = switchyard::presence::Session {
        user: "bob".into(),
        device: "phone".into(),
        gateway: "gw-ghost".into(),
        region: "eu".into(),
        since_micros: 0,
    };
    a.backends().directory().online(ghost).await.unwrap();
    // Low priority too: PUBLISH counts receivers at every priority, and a
    // low-priority message nobody received used to vanish, reported delivered.
    let priorities = [Priority::High, Priority::Normal, Priority::Low];
    let mut sent = Vec::new();
    for (i, priority) in priorities.into_iter().enumerate() {
        let envelope = to_bob(i, priority);
        sent.push(envelope.id);
        let report = a.send(envelope).await.unwrap();
        let Outcome::Routed {
            targets,
            stored_offline,
        } = report.outcome
        else {
            panic!("not routed")
        };
        assert!(
            targets[0].result.as_ref().is_err_and(|e| matches!(
                e.transport_errors(),
                [TransportError::NoSubscriber { .. }]
            )),
            "{priority:?}: {targets:?}"
        );
        assert!(!targets[0].confirmed, "{priority:?}: {targets:?}");
        assert!(stored_offline.is_some(), "{priority:?}");
    }
    let stored: Vec<_> = a
        .backends()
        .offline()
        .read(&"bob".into(), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(stored, sent, "every message stored offline, none lost");
}

testkit::on_both!(a_gateway_that_goes_away_stops_counting_as_a_subscriber);

async fn a_gateway_that_goes_away_stops_counting_as_a_subscriber(deployment: Deployment) {
    let settings = settings(&redis_config(deployment));
    let (a, _) = router(&settings, "gw-a").await;
    let (b, inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    drop((b, inbox));
    // bob's session is still there (no disconnect), but nobody reads gw-b.
    let stored = redis_nodes::eventually(Duration::from_secs(5), || async {
        let report = a.send(to_bob(0, Priority::Normal)).await.unwrap();
        matches!(
            report.outcome,
            Outcome::Routed {
                stored_offline: Some(_),
                ..
            }
        )
    })
    .await;
    assert!(
        stored,
        "publishes to a gone gateway still counted a subscriber"
    );
}

testkit::on_both!(a_gateway_that_falls_behind_loses_no_confirmed_message);

/// A gateway that does not read its inbox while 3 000 messages arrive: the
/// subscription queue (64) overflows, the excess is dropped locally and
/// re-read from the replay stream once the gateway reads again.
async fn a_gateway_that_falls_behind_loses_no_confirmed_message(deployment: Deployment) {
    let mut settings = settings(&redis_config(deployment));
    if let Some(redis) = settings.transports.redis.as_mut() {
        redis.queue = 64;
    }
    settings.limits.inbox_queue = 64;
    let (a, _) = router(&settings, "gw-a").await;
    let (b, mut inbox) = router(&settings, "gw-b").await;
    b.connect("bob", "phone").await.unwrap();
    let mut sent = std::collections::BTreeSet::new();
    for chunk in 0..30 {
        let batch: Vec<_> = (0..100)
            .map(|i| to_bob(chunk * 100 + i, Priority::Normal))
            .collect();
        sent.extend(batch.iter().map(|e| e.id));
        for report in a.send_batch(batch).await {
            let report = report.unwrap();
            assert!(matches!(
                report.outcome,
                Outcome::Routed {
                    stored_offline: None,
                    ..
                }
            ));
        }
    }
    let mut delivered = std::collections::BTreeSet::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(3), inbox.recv()).await {
        inbox.ack(d.seq);
        delivered.insert(d.envelope.id);
    }
    let missing = sent.difference(&delivered).count();
    println!(
        "{deployment:?}: sent {} delivered {} missing {missing}",
        sent.len(),
        delivered.len()
    );
    assert_eq!(missing, 0);
}

testkit::on_both!(gateways_of_one_process_share_a_subscription_connection_and_leave_alone);

/// Ten gateways over one set of backends (as a sidecar hosts them) share
/// one pub/sub connection: each receives only its own messages, one that
/// leaves stops counting as a subscriber while the others keep receiving,
/// and a successor of it receives again.
async fn gateways_of_one_process_share_a_subscription_connection_and_leave_alone(
    deployment: Deployment,
) {
    let settings = settings(&redis_config(deployment));
    let backends = switchyard::Backends::from_settings(&settings)
        .await
        .expect("backends over Redis");
    let build = |id: String| {
        Router::builder(GatewayInfo::new(
            switchyard::GatewayId::try_from(id).unwrap(),
            "eu",
        ))
        .settings(settings.clone())
        .backends(backends.clone())
        .build()
    };
    let (sender, _) = build("gw-sender".into()).await.unwrap();
    let mut gateways = Vec::new();
    for i in 0..10 {
        let (router, inbox) = build(format!("gw-{i}")).await.unwrap();
        router
            .connect(format!("u{i}").parse::<switchyard::UserId>().unwrap(), "d0")
            .await
            .unwrap();
        gateways.push(Some((router, inbox)));
    }
    let to = |i: usize, n: usize| {
        Envelope::new(
            "alice",
            "gw-sender",
            Destination::User(format!("u{i}").parse().unwrap()),
            format!("m{n}"),
        )
        .with_priority(Priority::High)
    };
    let batch: Vec<_> = (0..10).map(|i| to(i, 0)).collect();
    for report in sender.send_batch(batch).await {
        let report = report.unwrap();
        assert!(matches!(
            report.outcome,
            Outcome::Routed {
                stored_offline: None,
                ..
            }
        ));
    }
    for (i, gateway) in gateways.iter_mut().enumerate() {
        let (_, inbox) = gateway.as_mut().unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("delivery within 5 s")
            .expect("inbox open");
        inbox.ack(delivery.seq);
        assert_eq!(
            delivery.envelope.destination,
            Destination::User(format!("u{i}").parse().unwrap()),
            "gw-{i} got only its own user's message"
        );
    }
    // gw-3 leaves (its session stays, as after a crash): sends to u3 go
    // offline once Redis no longer counts it, the others still arrive.
    drop(gateways[3].take());
    let stored = redis_nodes::eventually(Duration::from_secs(5), || async {
        let report = sender.send(to(3, 1)).await.unwrap();
        matches!(
            report.outcome,
            Outcome::Routed {
                stored_offline: Some(_),
                ..
            }
        )
    })
    .await;
    assert!(
        stored,
        "publishes to the gateway that left still counted a subscriber"
    );
    for i in (0..10).filter(|&i| i != 3) {
        let report = sender.send(to(i, 2)).await.unwrap();
        assert!(
            matches!(
                report.outcome,
                Outcome::Routed {
                    stored_offline: None,
                    ..
                }
            ),
            "gw-{i} stopped counting with gw-3: {:?}",
            report.outcome
        );
        let (_, inbox) = gateways[i].as_mut().unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("delivery within 5 s")
            .expect("inbox open");
        inbox.ack(delivery.seq);
        assert_eq!(delivery.envelope.payload, "m2", "gw-{i}");
    }
    // A successor of gw-3 in the same process subscribes again.
    let (_successor, mut inbox) = build("gw-3".into()).await.unwrap();
    let routed = redis_nodes::eventually(Duration::from_secs(5), || async {
        let report = sender.send(to(3, 3)).await.unwrap();
        matches!(
            report.outcome,
            Outcome::Routed {
                stored_offline: None,
                ..
            }
        )
    })
    .await;
    assert!(
        routed,
        "the successor of gw-3 is not counted as a subscriber"
    );
    let delivery = loop {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("delivery within 5 s")
            .expect("inbox open");
        inbox.ack(delivery.seq);
        if delivery.envelope.payload == "m3" {
            break delivery;
        }
    };
    assert_eq!(delivery.via, Via::Transport(TransportKind::REDIS));
}
