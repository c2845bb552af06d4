//! Envelope compression over the real brokers of `scripts/services/`
//! (Redis 6379, Kafka 9092-9094, NATS 4222): what goes on the wire is
//! compressed above `min_bytes` and untouched below, and two routers that
//! compress exchange 256 B, 4 KiB and 64 KiB chat messages with none lost,
//! none doubled, every byte intact.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-kafka", feature = "it-nats"))]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use switchyard::envelope::compression::{Codec, CompressionConfig};
use switchyard::redis_conn::RedisConfig;
use switchyard::transport::redis::RedisTransportConfig;
use switchyard::transport::{Ack, TransportKind, TransportsConfig};
use switchyard::{Destination, Envelope, GatewayInfo, MessageId, Outcome, Router, Settings, Via};
use testkit::servers;

const SIZES: [usize; 3] = [256, 4096, 65536];

/// Chat-like text (words, punctuation, repeats), not random bytes.
fn chat(len: usize, seed: usize) -> Vec<u8> {
    switchyard_cli::bench::chat_text(len, seed as u64)
}

fn compression(codec: Codec) -> CompressionConfig {
    CompressionConfig {
        codec,
        min_bytes: 1024,
        level: 3,
    }
}

/// Only `kind` enabled, compressing with `codec`.
fn transports(kind: TransportKind, codec: Codec) -> TransportsConfig {
    let envelope_compression = compression(codec);
    let mut config = TransportsConfig {
        memory: None,
        ..TransportsConfig::default()
    };
    match kind {
        TransportKind::REDIS => {
            config.redis = Some(RedisTransportConfig {
                connection: RedisConfig {
                    key_prefix: format!("sy-test-{}", ulid::Ulid::new()),
                    ..RedisConfig::default()
                },
                envelope_compression,
                ..RedisTransportConfig::default()
            })
        }
        TransportKind::KAFKA => {
            let mut kafka = servers::kafka_config(servers::KAFKA);
            kafka.envelope_compression = envelope_compression;
            config.kafka = Some(kafka);
        }
        TransportKind::NATS => {
            let mut nats = servers::nats_config(servers::NATS);
            nats.envelope_compression = envelope_compression;
            config.nats = Some(nats);
        }
        other => panic!("{other} is not tested here"),
    }
    config
}

/// Both routes on `kind`, the only transport, compressing with `codec`.
fn settings(kind: TransportKind, codec: Codec) -> Settings {
    let mut settings = Settings {
        transports: transports(kind, codec),
        ..Settings::default()
    };
    settings.routing.same_region = kind.as_str().into();
    settings.routing.cross_region = kind.as_str().into();
    settings
}

/// Publishes one envelope of each size through the compressing transport
/// and reads the raw bytes its subscription hands over.
async fn on_the_wire(kind: TransportKind, codec: Codec) {
    let backends = switchyard::Backends::from_settings(&settings(kind, codec))
        .await
        .expect("transport");
    let transport = backends.transports().get(kind).expect("enabled");
    let me: switchyard::GatewayId = format!("gw-wire-{}", ulid::Ulid::new()).parse().unwrap();
    let mut subscription = transport.subscribe(&me).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent: Vec<Envelope> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            Envelope::new(
                "alice",
                "gw-a",
                Destination::User("bob".into()),
                chat(len, i),
            )
        })
        .collect();
    let batch: Vec<bytes::Bytes> = sent.iter().map(Envelope::encode).collect();
    transport
        .publish(&me, &batch, Ack::Confirmed)
        .await
        .expect("publish");
    let mut seen = HashMap::new();
    while seen.len() < sent.len() {
        let incoming = tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .unwrap_or_else(|_| panic!("{kind}/{codec:?}: only {} of 3 arrived", seen.len()))
            .expect("subscription open");
        let envelope = Envelope::decode(incoming.bytes.clone()).expect("decodes");
        if let Some(ack) = incoming.ack {
            ack.ack().await.expect("ack");
        }
        seen.insert(envelope.id, (incoming.bytes.len(), envelope));
    }
    for (plain, envelope) in batch.iter().zip(&sent) {
        let (wire, got) = &seen[&envelope.id];
        assert_eq!(got, envelope, "{kind}/{codec:?}: the same envelope");
        if plain.len() < 1024 {
            assert_eq!(
                *wire,
                plain.len(),
                "{kind}/{codec:?}: below min_bytes as is"
            );
        } else {
            // Chat text shrinks to well under 60% with either codec.
            assert!(
                *wire * 5 < plain.len() * 3,
                "{kind}/{codec:?}: {} bytes on the wire for {}",
                wire,
                plain.len()
            );
        }
    }
}

/// Two routers over `kind`, both compressing with `codec`: 60 messages of
/// the three sizes, every one confirmed, delivered once, intact.
async fn end_to_end(kind: TransportKind, codec: Codec) {
    let settings = settings(kind, codec);
    let backends = switchyard::Backends::from_settings(&settings)
        .await
        .expect("backends");
    let run = ulid::Ulid::new();
    let build = |id: String| {
        Router::builder(GatewayInfo::new(
            switchyard::GatewayId::try_from(id).unwrap(),
            "eu",
        ))
        .settings(settings.clone())
        .backends(backends.clone())
        .build()
    };
    let (a, _a_inbox) = build(format!("gw-a-{run}")).await.expect("router a");
    let (b, mut inbox) = build(format!("gw-b-{run}")).await.expect("router b");
    b.connect("bob", "phone").await.expect("connect");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sent: HashMap<MessageId, Envelope> = HashMap::new();
    for i in 0..60 {
        let envelope = Envelope::new(
            "alice",
            a.gateway().id.clone(),
            Destination::User("bob".into()),
            chat(SIZES[i % 3], i),
        );
        let report = a.send(envelope.clone()).await.expect("send");
        let Outcome::Routed {
            targets,
            stored_offline: None,
        } = report.outcome
        else {
            panic!(
                "{kind}/{codec:?}: message {i} not routed: {:?}",
                report.outcome
            )
        };
        assert_eq!(
            targets[0].result.as_ref().ok(),
            Some(&Via::Transport(kind)),
            "{targets:?}"
        );
        assert!(targets[0].confirmed, "{kind}/{codec:?}: {i} confirmed");
        sent.insert(envelope.id, envelope);
    }
    let mut missing = sent.clone();
    while !missing.is_empty() {
        let delivery = tokio::time::timeout(Duration::from_secs(20), inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("{kind}/{codec:?}: {} lost", missing.len()))
            .expect("inbox open");
        inbox.ack(delivery.seq);
        let expected = missing
            .remove(&delivery.envelope.id)
            .unwrap_or_else(|| panic!("duplicate or stray {}", delivery.envelope.id));
        assert_eq!(delivery.envelope.payload, expected.payload);
    }
    let stray = tokio::time::timeout(Duration::from_millis(300), inbox.recv()).await;
    assert!(stray.is_err(), "{kind}/{codec:?}: nothing more arrives");
}

macro_rules! cases {
    ($($name:ident: $kind:ident, $codec:ident;)*) => {
        $(
            mod $name {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn wire() {
                    on_the_wire(TransportKind::$kind, Codec::$codec).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn routers() {
                    end_to_end(TransportKind::$kind, Codec::$codec).await
                }
            }
        )*
    };
}

cases! {
    redis_lz4: REDIS, Lz4;
    redis_zstd: REDIS, Zstd;
    kafka_lz4: KAFKA, Lz4;
    kafka_zstd: KAFKA, Zstd;
    nats_lz4: NATS, Lz4;
    nats_zstd: NATS, Zstd;
}
