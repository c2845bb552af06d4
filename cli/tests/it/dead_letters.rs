//! Dead letters an operator can act on, against the real Redis of
//! `scripts/services/` (standalone and cluster) and a real sidecar on
//! 127.0.0.1:0: messages dead-lettered for each named reason are listed
//! and inspected through the Admin API and the `switchyard dead-letters`
//! CLI, replayed into the normal path (the gateway's Attach stream, every
//! one once), and purged; the counts show in `/metrics`.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-redis")]

use std::collections::BTreeSet;
use std::time::Duration;

use redis_nodes::{node, raw, redis_config, settings, Deployment};
use switchyard::offline::OfflineConfig;
use switchyard::proto;
use switchyard::sidecar::Sidecar;
use switchyard::{Destination, Envelope, UserId};
use testkit::redis_nodes;
use testkit::sidecars;

testkit::on_both!(dead_letters_are_listed_replayed_and_purged);

const POISONED: usize = 12;

async fn dead_letters_are_listed_replayed_and_purged(deployment: Deployment) {
    let redis = redis_config(deployment);
    let mut settings = settings(&redis);
    settings.offline = OfflineConfig {
        max_deliveries: 2,
        ..OfflineConfig::default()
    };
    settings.sidecar.listen = "127.0.0.1:0".parse().unwrap();
    settings.telemetry.listen = "127.0.0.1:0".parse().unwrap();
    settings.sidecar.readiness_grace = Duration::ZERO;
    let backends = node(&settings).await;
    let sidecar = Sidecar::start_with_backends(settings.clone(), None, backends.clone())
        .await
        .unwrap();
    let mut gateway = sidecars::gateway(sidecar.grpc_addr()).await;
    let mut stream = sidecars::attach(&mut gateway, "gw-b", "eu").await;
    sidecars::online(&mut gateway, "gw-b", "bob").await;

    // Twelve messages whose delivery failed twice, and one unreadable entry.
    let bob = UserId::from("bob");
    let offline = &backends.offline();
    let mut poisoned = Vec::new();
    for i in 0..POISONED {
        let envelope = Envelope::new(
            "alice",
            "gw-a",
            Destination::User(bob.clone()),
            format!("poison {i}"),
        );
        offline.append(&bob, &envelope).await.unwrap();
        for _ in 0..2 {
            offline
                .delivery_failed(&bob, envelope.id, "device rejected it")
                .await
                .unwrap();
        }
        poisoned.push(envelope);
    }
    let queue = raw(&redis).await.key(&["offline", "{bob}"]);
    let _: String = redis::cmd("XADD")
        .arg(&queue)
        .arg("*")
        .arg("m")
        .arg("garbage-id")
        .arg("e")
        .arg(&b"\xff\xff not an envelope"[..])
        .query_async(&mut raw(&redis).await.conn())
        .await
        .unwrap();
    assert!(offline.read(&bob, 100).await.unwrap().is_empty());

    let mut admin = sidecars::admin(sidecar.grpc_addr()).await;
    let users = admin
        .dead_letters(proto::DeadLettersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(
        users,
        [proto::DeadLetterCount {
            user: "bob".into(),
            count: POISONED as u64 + 1
        }]
    );
    let letters = admin
        .dead_letters(proto::DeadLettersRequest {
            user: "bob".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .letters;
    assert_eq!(letters.len(), POISONED + 1);
    for (letter, sent) in letters.iter().zip(&poisoned) {
        assert_eq!(letter.message_id, sent.id.to_string());
        assert_eq!(letter.reason, "max_deliveries");
        assert_eq!(letter.detail, "device rejected it");
        let envelope = letter.envelope.clone().expect("readable");
        assert_eq!(envelope.payload, sent.payload);
    }
    let unreadable = &letters[POISONED];
    assert_eq!(
        (unreadable.message_id.as_str(), unreadable.reason.as_str()),
        ("garbage-id", "unreadable")
    );
    assert!(unreadable.envelope.is_none());
    assert!(
        unreadable.detail.starts_with("unreadable: "),
        "{unreadable:?}"
    );

    // The CLI shows one in full.
    let addr = sidecar.grpc_addr().to_string();
    let shown = cli(&["show", "bob", &poisoned[3].id.to_string(), "--addr", &addr]);
    assert!(shown.contains("reason: max_deliveries"), "{shown}");
    assert!(shown.contains("payload (8 B): poison 3"), "{shown}");
    assert!(shown.contains("from: alice on gateway gw-a"), "{shown}");

    // Replay five by id: they come down bob's gateway's stream at its next
    // heartbeat, once each, and leave the dead-letter queue.
    let first: Vec<String> = poisoned[..5].iter().map(|e| e.id.to_string()).collect();
    let replayed = admin
        .replay_dead_letters(proto::ReplayDeadLettersRequest {
            user: "bob".into(),
            message_ids: first.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 5);
    assert_eq!(replayed.flagged_gateways, ["gw-b"]);
    heartbeat(&mut gateway).await;
    assert_eq!(
        received(&mut stream, 5).await,
        first.iter().cloned().collect()
    );

    // The rest through the CLI: the unreadable one stays.
    let out = cli(&["replay", "bob", "--addr", &addr]);
    assert!(
        out.contains("7 dead letter(s) back in the offline queue"),
        "{out}"
    );
    heartbeat(&mut gateway).await;
    let rest: BTreeSet<String> = poisoned[5..].iter().map(|e| e.id.to_string()).collect();
    assert_eq!(received(&mut stream, 7).await, rest);
    quiet(&mut stream).await;
    assert!(
        offline.read(&bob, 100).await.unwrap().is_empty(),
        "acked away"
    );

    let purge_needs_all = cli_status(&["purge", "bob", "--addr", &addr]);
    assert!(
        !purge_needs_all.status.success(),
        "purge without ids or --all is refused"
    );
    let out = cli(&["purge", "bob", "--all", "--addr", &addr]);
    assert!(out.contains("bob: 1 dead letter(s) deleted"), "{out}");
    let out = cli(&["list", "--addr", &addr]);
    assert_eq!(out.trim(), "no dead letters");

    let (_, metrics) = sidecars::http_get(sidecar.telemetry_addr(), "/metrics").await;
    for (series, at_least) in [
        (
            "switchyard_offline_dead_lettered_total{reason=\"max_deliveries\"}",
            POISONED,
        ),
        (
            "switchyard_offline_dead_lettered_total{reason=\"unreadable\"}",
            1,
        ),
        ("switchyard_dead_letters_replayed_total", POISONED),
        ("switchyard_dead_letters_purged_total", 1),
    ] {
        // Both deployments' cases share this process's recorder.
        let value = sidecars::sample(&metrics, series)
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"));
        assert!(value >= at_least as f64, "{series} = {value}");
    }
    sidecar.shutdown().await.unwrap();
}

async fn heartbeat(gateway: &mut proto::gateway_client::GatewayClient<tonic::transport::Channel>) {
    gateway
        .heartbeat(proto::HeartbeatRequest {
            gateway_id: "gw-b".into(),
        })
        .await
        .unwrap();
}

/// The ids of the next `n` deliveries; fails on a duplicate.
async fn received(stream: &mut sidecars::Deliveries, n: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let delivery = sidecars::next(stream).await;
        let envelope = delivery.envelope.expect("an envelope");
        let id = switchyard::MessageId::from_slice(&envelope.id)
            .unwrap()
            .to_string();
        assert!(ids.insert(id.clone()), "{id} delivered twice");
    }
    ids
}

/// Nothing more arrives (no duplicate of a replayed letter).
async fn quiet(stream: &mut sidecars::Deliveries) {
    let more = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(more.is_err(), "unexpected delivery: {more:?}");
}

fn cli_status(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("dead-letters")
        .args(args)
        .output()
        .expect("run switchyard")
}

fn cli(args: &[&str]) -> String {
    let out = cli_status(args);
    assert!(
        out.status.success(),
        "switchyard dead-letters {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
