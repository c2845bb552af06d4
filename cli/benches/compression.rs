//! Envelope compression (`envelope_compression`) on real brokers: for
//! chat-like payloads of 256 B, 4 KiB and 64 KiB, the bytes each envelope
//! takes on the wire and the messages per second one publisher gets
//! through the transport to one subscriber (which decodes every
//! envelope), with `none`, `lz4` and `zstd` (level 3), in one run.
//!
//! ```text
//! scripts/services/redis.sh start; scripts/services/kafka.sh start
//! cargo bench --bench compression         # COMPRESSION_TRANSPORTS=redis,kafka
//! ```

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use switchyard::envelope::compression::{Codec, CompressionConfig};
use switchyard::redis_conn::RedisConfig;
use switchyard::transport::kafka::KafkaConfig;
use switchyard::transport::redis::RedisTransportConfig;
use switchyard::transport::{Ack, TransportKind, TransportsConfig};
use switchyard::{Destination, Envelope, GatewayId};
use switchyard_cli::bench::chat_text;

const SIZES: [usize; 3] = [256, 4096, 65536];
const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];
const BATCH: usize = 100;

/// Messages per run: about 50 MB of payload at the largest size.
fn count(size: usize) -> usize {
    match size {
        256 => 50_000,
        4096 => 20_000,
        _ => 2_000,
    }
}

fn config(kind: TransportKind, codec: Codec) -> Result<TransportsConfig> {
    let envelope_compression = CompressionConfig {
        codec,
        min_bytes: 200,
        level: 3,
    };
    let mut config = TransportsConfig {
        memory: None,
        ..TransportsConfig::default()
    };
    match kind {
        TransportKind::REDIS => {
            config.redis = Some(RedisTransportConfig {
                connection: RedisConfig {
                    key_prefix: format!("sy-bench-{}", ulid::Ulid::new()),
                    ..RedisConfig::default()
                },
                envelope_compression,
                ..RedisTransportConfig::default()
            })
        }
        TransportKind::KAFKA => {
            let mut kafka = KafkaConfig {
                brokers: "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094".into(),
                max_message_bytes: 2 * 1024 * 1024,
                envelope_compression,
                ..KafkaConfig::default()
            };
            kafka.topics.replication = 3;
            config.kafka = Some(kafka);
        }
        other => bail!("{other} is not measured here (redis, kafka)"),
    }
    Ok(config)
}

struct Figure {
    wire_per_msg: f64,
    msgs_per_s: f64,
}

async fn run(kind: TransportKind, codec: Codec, size: usize) -> Result<Figure> {
    let mut settings = switchyard::Settings {
        transports: config(kind, codec)?,
        ..switchyard::Settings::default()
    };
    settings.routing.same_region = kind.as_str().into();
    settings.routing.cross_region = kind.as_str().into();
    let backends = switchyard::Backends::from_settings(&settings).await?;
    let transport = backends.transports().get(kind)?.clone();
    let me: GatewayId = format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase())
        .parse()
        .unwrap();
    let mut subscription = transport.subscribe(&me).await?;
    let n = count(size);
    // Distinct texts, built before the clock starts.
    let messages: Vec<Bytes> = (0..n)
        .map(|i| {
            Envelope::new(
                "alice",
                "gw-bench",
                Destination::User("bob".into()),
                chat_text(size, i as u64 % 64),
            )
            .encode()
        })
        .collect();
    let reader = tokio::spawn(async move {
        let (mut got, mut wire) = (0usize, 0usize);
        while got < n {
            let next = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await;
            let Ok(Some(incoming)) = next else { break };
            wire += incoming.bytes.len();
            if Envelope::decode(incoming.bytes).is_ok() {
                got += 1;
            }
            if let Some(ack) = incoming.ack {
                let _ = ack.ack().await;
            }
        }
        (got, wire, Instant::now())
    });
    // One warm-up message is not counted: it is not in `messages`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for batch in messages.chunks(BATCH) {
        transport.publish(&me, batch, Ack::Confirmed).await?;
    }
    let (got, wire, done) = reader.await.context("reader")?;
    if got != n {
        bail!("{kind}/{}/{size}: {got} of {n} arrived", codec.as_str());
    }
    Ok(Figure {
        wire_per_msg: wire as f64 / n as f64,
        msgs_per_s: n as f64 / done.duration_since(started).as_secs_f64(),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let kinds = std::env::var("COMPRESSION_TRANSPORTS").unwrap_or_else(|_| "redis,kafka".into());
    println!("| transport | payload | codec | wire B/msg | wire vs none | msg/s | msg/s vs none |");
    println!("|---|---|---|---|---|---|---|");
    for name in kinds.split(',') {
        let kind = TransportKind::parse(name).with_context(|| format!("transport {name}"))?;
        for size in SIZES {
            let mut none = None;
            for codec in CODECS {
                let f = run(kind, codec, size).await?;
                let (base_wire, base_rate) = *none.get_or_insert((f.wire_per_msg, f.msgs_per_s));
                println!(
                    "| {kind} | {size} B | {} | {:.0} | {:.2} | {:.0} | {:.2} |",
                    codec.as_str(),
                    f.wire_per_msg,
                    f.wire_per_msg / base_wire,
                    f.msgs_per_s,
                    f.msgs_per_s / base_rate,
                );
            }
        }
    }
    Ok(())
}
