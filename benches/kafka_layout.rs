//! Kafka topic layout: one topic per gateway (what the transport does) versus
//! one topic per region keyed by target gateway, where every gateway's
//! consumer group reads the region's topic and drops other gateways' records.
//! Raw rdkafka, same messages, same run; reports records read and the time
//! until every gateway has its messages.
//!
//! ```text
//! scripts/services/kafka.sh start
//! cargo bench --bench kafka_layout   # LAYOUT_GATEWAYS=20 LAYOUT_MESSAGES=500 (per gateway)
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The cluster of `scripts/services/kafka.sh`; topics take its default
/// replication factor (3).
const KAFKA: &str = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn common() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", KAFKA);
    c
}

/// Publishes `per_gateway` records to each gateway, `topic_of(g)` naming the
/// topic, with one consumer group per gateway subscribed to that topic; a
/// consumer counts every record it reads and keeps those keyed to it.
async fn measure(
    name: &str,
    gateways: usize,
    per_gateway: usize,
    topic_of: impl Fn(usize) -> String,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = common().create()?;
    let mut topics: Vec<String> = (0..gateways).map(&topic_of).collect();
    topics.sort();
    topics.dedup();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(-1)))
        .collect();
    admin.create_topics(&new, &AdminOptions::new()).await?;
    let read = Arc::new(AtomicUsize::new(0));
    let run = ulid::Ulid::new();
    let mut readers = Vec::new();
    for g in 0..gateways {
        let consumer: StreamConsumer = common()
            .set("group.id", format!("layout-{run}-{g}"))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        consumer.subscribe(&[&topic_of(g)])?;
        let (read, key) = (read.clone(), g.to_string());
        readers.push(tokio::spawn(async move {
            let mut mine = 0;
            while mine < per_gateway {
                if let Ok(record) = consumer.recv().await {
                    read.fetch_add(1, Ordering::Relaxed);
                    if record.key() == Some(key.as_bytes()) {
                        mine += 1;
                    }
                }
            }
            Instant::now()
        }));
    }
    let producer: FutureProducer = common()
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()?;
    let start = Instant::now();
    let mut acks = Vec::new();
    for i in 0..per_gateway {
        for g in 0..gateways {
            let (topic, key, payload) = (topic_of(g), g.to_string(), vec![i as u8; 256]);
            acks.push(
                producer
                    .send_result(FutureRecord::to(&topic).key(&key).payload(&payload))
                    .map_err(|(e, _)| e)?,
            );
        }
    }
    for ack in acks {
        ack.await?.map_err(|(e, _)| e)?;
    }
    let mut last = start;
    for reader in readers {
        last = last.max(
            tokio::time::timeout(Duration::from_secs(300), reader)
                .await
                .context("readers timed out")??,
        );
    }
    println!(
        "| {name:<24} | {:>6} | {:>8} | {:>14} | {:>8.2} |",
        topics.len(),
        gateways * per_gateway,
        read.load(Ordering::Relaxed),
        (last - start).as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    // Only `cargo bench` passes `--bench`; `cargo test --all-targets` skips.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "kafka_layout: benchmark skipped (run it with `cargo bench --bench kafka_layout`)"
        );
        return Ok(());
    }
    let gateways = env("LAYOUT_GATEWAYS", 20);
    let per_gateway = env("LAYOUT_MESSAGES", 500);
    println!("{gateways} gateways in one region, {per_gateway} records of 256 B each, Kafka on {KAFKA}\n");
    println!(
        "| {:<24} | {:>6} | {:>8} | {:>14} | {:>8} |",
        "layout", "topics", "sent", "records read", "seconds"
    );
    println!(
        "|{:-<26}|{:->8}|{:->10}|{:->16}|{:->10}|",
        "", "", "", "", ""
    );
    let id = ulid::Ulid::new();
    measure("topic per gateway", gateways, per_gateway, |g| {
        format!("layout.gw.{id}.{g}")
    })
    .await?;
    measure("topic per region, keyed", gateways, per_gateway, |_| {
        format!("layout.region.{id}")
    })
    .await
}
