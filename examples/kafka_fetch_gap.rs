//! Minimal reproduction, raw rdkafka and no switchyard, of a record that a
//! broker confirmed but a live consumer never read: several idempotent
//! producers (separate clients, as separate sidecars are) write to one
//! single-partition topic while one consumer group reads it at the tail.
//! Busy threads load the CPU, which widens the broker's race window.
//!
//! Afterwards a fresh consumer group reads the whole topic again: a record
//! that it finds but the live consumer missed was stored by the broker and
//! skipped by a fetch (tansu 0.6 `dynostore` did; Apache Kafka 4.4 missed
//! none: docs/KAFKA.md, "The test cluster").
//!
//!   cargo run --example kafka_fetch_gap -- 127.0.0.1:9092   # a real broker (tansu then, Apache Kafka now)
//!   cargo run --example kafka_fetch_gap -- mock             # librdkafka's mock cluster
//!
//! Environment: `PRODUCERS` (3), `RECORDS` per producer (2000), `HOGS`
//! busy threads (2), `ROUNDS` topics in turn (3). Exits 1 if any round lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn consumer(brokers: &str, group: &str, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Reads with `consumer` until `want` distinct ids or `patience` without a
/// record: each id with its offset.
async fn read(
    consumer: &StreamConsumer,
    want: usize,
    patience: Duration,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut got = BTreeMap::new();
    while got.len() < want {
        match tokio::time::timeout(patience, consumer.recv()).await {
            Ok(Ok(record)) => {
                let id = String::from_utf8_lossy(record.payload().unwrap_or_default());
                got.insert(id.into_owned(), record.offset());
            }
            Ok(Err(e)) => anyhow::bail!("consume: {e}"),
            Err(_) => break,
        }
    }
    Ok(got)
}

async fn round(
    brokers: &str,
    topic: &str,
    producers: usize,
    records: usize,
) -> anyhow::Result<usize> {
    let live = consumer(brokers, &format!("{topic}.live"), topic)?;
    let total = producers * records;
    let reader = tokio::spawn(async move { read(&live, total, Duration::from_secs(20)).await });
    let mut writers = Vec::new();
    for p in 0..producers {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create()?;
        let topic = topic.to_owned();
        writers.push(tokio::spawn(async move {
            let mut delivered = BTreeSet::new();
            for i in 0..records {
                let id = format!("{p}:{i}");
                let record = FutureRecord::to(&topic).key("k").payload(&id);
                if producer.send(record, Duration::from_secs(10)).await.is_ok() {
                    delivered.insert(id);
                }
            }
            delivered
        }));
    }
    let mut delivered = BTreeSet::new();
    for w in writers {
        delivered.extend(w.await?);
    }
    let live = reader.await??;
    let missed: Vec<_> = delivered
        .iter()
        .filter(|id| !live.contains_key(*id))
        .collect();
    let fresh = consumer(brokers, &format!("{topic}.fresh"), topic)?;
    let reread = read(&fresh, delivered.len(), Duration::from_secs(10)).await?;
    println!(
        "{topic}: delivered {}  read live {}  missed {}",
        delivered.len(),
        live.len(),
        missed.len()
    );
    // Where a missed record sits in the log, and what the live consumer
    // read on either side of it: a skipped offset, not an overwritten one.
    let live_offsets: BTreeSet<i64> = live.values().copied().collect();
    for id in &missed {
        match reread.get(*id) {
            Some(&offset) => println!(
                "  {id}: at offset {offset} for a fresh group; live read {:?} then {:?}",
                live_offsets.range(..offset).next_back(),
                live_offsets.range(offset..).next()
            ),
            None => println!("  {id}: not read by a fresh group either"),
        }
    }
    Ok(missed.len())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let target = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let (producers, records) = (env("PRODUCERS", 3), env("RECORDS", 2000));
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..env("HOGS", 2))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mock = (target == "mock")
        .then(|| MockCluster::<DefaultProducerContext>::new(1))
        .transpose()?;
    let brokers = mock.as_ref().map_or(target, MockCluster::bootstrap_servers);
    let started = Instant::now();
    let mut lost = 0;
    for r in 0..env("ROUNDS", 3) {
        let topic = format!("fetchgap.{}.{r}", std::process::id());
        match &mock {
            Some(mock) => mock.create_topic(&topic, 1, 1)?,
            None => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()?;
                let new = NewTopic::new(&topic, 1, TopicReplication::Fixed(-1));
                admin.create_topics([&new], &AdminOptions::new()).await?;
            }
        }
        lost += round(&brokers, &topic, producers, records).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        let _ = h.join();
    }
    println!("{brokers}: lost {lost} in {:.1?}", started.elapsed());
    std::process::exit(i32::from(lost > 0));
}
