//! Kafka transport (rdkafka, bundled librdkafka): the durable, replayable
//! route between regions.
//!
//! Layout: one topic per gateway (`{topic_prefix}{gateway_id}`, one
//! partition by default, records keyed by the gateway id) and one consumer
//! group per gateway (`{group_prefix}{gateway_id}`), so a gateway reads only
//! its own traffic and a restarted gateway resumes at its committed offset.
//! Why this layout and not a topic per region: `docs/KAFKA.md`.
//!
//! Delivery: the producer is idempotent; [`Ack::Confirmed`] enqueues the
//! whole batch and then awaits every delivery report, [`Ack::None`] only
//! enqueues into librdkafka's bounded queue (full queue -> error, so the
//! router falls back). A producer that librdkafka declares fatal (e.g.
//! `UnknownProducerId` after a broker lost its producer state) can never
//! send again, so it is replaced by a fresh one on the next publish.
//!
//! Offsets are stored only when the inbox acknowledges a message
//! (`enable.auto.offset.store=false`), and only up to the highest offset
//! below which every received record was acked (`OffsetTracker`): acks
//! may come out of order (a duplicate is acked at once while earlier
//! records still wait for the gateway), and a commit past an unacked record
//! would lose it in a crash. Stored offsets are committed periodically.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use super::pipeline::{enqueue_then_confirm, spawn_subscription};
use super::{
    Ack, Acknowledge, Capabilities, Dependencies, Health, HealthCell, Incoming, Subscription,
    Transport, TransportError, TransportFactory, TransportKind,
};
use crate::config::problem::Problem;
use crate::telemetry;
use crate::topology::GatewayId;

const KIND: TransportKind = TransportKind::Kafka;

/// Producer compression codec (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression: chat messages are small and latency matters most.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// `[transports.kafka.topics]`: whether switchyard creates gateway topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTopicsConfig {
    /// Create a gateway's topic on first use (publish or subscribe). When
    /// false, topics must exist already (created by operators).
    pub create: bool,
    /// Partitions of a created topic. One keeps per-gateway order without
    /// relying on keys; more only helps if a gateway's consumer is scaled out.
    pub partitions: i32,
    /// Replication factor of a created topic; -1 takes the brokers'
    /// `default.replication.factor` (1 on a single dev broker, 3 on the
    /// test cluster). With `acks=all`, a factor below the brokers'
    /// `min.insync.replicas` makes every publish fail.
    pub replication: i32,
}

impl Default for KafkaTopicsConfig {
    fn default() -> Self {
        Self {
            create: true,
            partitions: 1,
            replication: -1,
        }
    }
}

/// `[transports.kafka]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// `client.id` reported to the brokers.
    pub client_id: String,
    /// A gateway's topic is this prefix followed by its id.
    pub topic_prefix: String,
    /// A gateway's consumer group is this prefix followed by its id.
    pub group_prefix: String,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Largest producer batch in bytes (`batch.size`).
    pub batch_size: usize,
    /// Producer compression of whole record batches (librdkafka's).
    pub compression: Compression,
    /// `[transports.kafka.envelope_compression]`: compresses envelopes of
    /// at least `min_bytes` (off by default).
    pub envelope_compression: crate::envelope::compression::CompressionConfig,
    /// Messages librdkafka may hold unsent (`queue.buffering.max.messages`):
    /// the bound of fire-and-forget publishing; past it a publish fails.
    pub max_in_flight: usize,
    /// Largest record in bytes (`message.max.bytes`, and the created topics'
    /// `max.message.bytes`); must exceed `limits.max_payload_bytes` plus the
    /// envelope's own fields.
    pub max_message_bytes: usize,
    /// How long librdkafka keeps retrying one delivery (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Longest time the broker may hold a fetch waiting for data
    /// (`fetch.wait.max.ms`). Low for latency: some brokers hold every
    /// fetch this long even when data is waiting.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often clients refresh topic metadata (`topic.metadata.refresh.interval.ms`),
    /// which bounds how long a consumer takes to see its topic come back.
    #[serde(with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// How long the group coordinator waits for a silent consumer before
    /// it gives the consumer's partitions away (`session.timeout.ms`): how
    /// long a restarted gateway may wait for the partition its crashed
    /// predecessor held. Also the longest a new subscription waits for the
    /// previous one of the same gateway in this process to leave.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long start-up waits for the brokers to answer before failing.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Received messages buffered per subscription before reading pauses.
    pub queue: usize,
    /// Topic creation.
    pub topics: KafkaTopicsConfig,
    /// Extra librdkafka properties applied last to every client, e.g.
    /// `"security.protocol" = "SASL_SSL"`, `"sasl.mechanisms" = "PLAIN"`.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "switchyard".into(),
            topic_prefix: "sy.gw.".into(),
            group_prefix: "switchyard.".into(),
            linger: Duration::from_millis(1),
            batch_size: 1_000_000,
            compression: Compression::None,
            envelope_compression: Default::default(),
            max_in_flight: 100_000,
            max_message_bytes: 2 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(10),
            fetch_wait_max: Duration::from_millis(5),
            commit_interval: Duration::from_millis(200),
            metadata_refresh: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            queue: 1024,
            topics: KafkaTopicsConfig::default(),
            properties: BTreeMap::new(),
        }
    }
}

/// librdkafka callbacks, turned into the transport's health and, for a
/// gateway's consumer (the second field), its consumer lag gauge.
#[derive(Clone)]
struct HealthContext(Arc<HealthCell>, Option<GatewayId>);

impl ClientContext for HealthContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Debug only: while a broker is away librdkafka warns on every
        // reconnect attempt; the health cell and its gauge carry that signal.
        use RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error | Warning) {
            tracing::debug!(transport = %KIND, fac, message, "librdkafka");
        }
    }

    fn stats(&self, statistics: Statistics) {
        // Statistics arrive every second: the only signal that a broker is
        // back when no message has flowed since it went away.
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.0.up();
        }
        if let Some(gateway) = &self.1 {
            // -1: not known yet (no committed offset or high watermark).
            let lag = statistics
                .topics
                .values()
                .flat_map(|t| t.partitions.values())
                .map(|p| p.consumer_lag)
                .filter(|lag| *lag >= 0)
                .reduce(|a, b| a + b);
            if let Some(lag) = lag {
                telemetry::kafka_consumer_lag(gateway, lag);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.0.down(reason),
            _ => tracing::debug!(transport = %KIND, %error, reason, "librdkafka error"),
        }
    }
}

impl ConsumerContext for HealthContext {}

/// Kafka, one topic and one consumer group per gateway.
pub struct KafkaTransport {
    config: KafkaConfig,
    /// Swapped for a new producer when librdkafka declares this one fatal.
    producer: ArcSwap<FutureProducer<HealthContext>>,
    admin: AdminClient<HealthContext>,
    health: Arc<HealthCell>,
    /// Topics known to exist, so each is created at most once per process.
    ensured: Mutex<HashSet<String>>,
    /// One slot per consumer group, held by the subscription whose consumer
    /// is in the group until that consumer has committed and left. The next
    /// subscription of the same gateway in this process waits for it, so it
    /// starts at the committed offset instead of joining beside a member
    /// that is leaving and waiting out the rebalance.
    members: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KafkaTransport {
    /// Connects to the brokers; fails with [`TransportError::Connect`]
    /// naming them if none answers within `connect_timeout`.
    pub async fn connect(config: &KafkaConfig) -> Result<Self, TransportError> {
        let connect_err = |reason: String| TransportError::Connect {
            transport: KIND,
            address: config.brokers.clone(),
            reason,
        };
        let health = Arc::new(HealthCell::new(KIND));
        let context = HealthContext(health.clone(), None);
        let producer = producer(config, &health)
            .map_err(|e| connect_err(format!("bad producer settings: {e}")))?;
        let admin: AdminClient<HealthContext> = client_config(config)
            .with_overrides(config)
            .create_with_context(context)
            .map_err(|e| connect_err(format!("bad admin settings: {e}")))?;
        // librdkafka connects lazily and retries forever: ask for metadata
        // so a broker that is down at start-up is a clear error, not a hang.
        let probe = producer.clone();
        let timeout = config.connect_timeout;
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|e| connect_err(format!("metadata probe panicked: {e}")))?
            .map_err(|e| connect_err(format!("no broker answered within {timeout:?}: {e}")))?;
        health.up();
        Ok(Self {
            config: config.clone(),
            producer: ArcSwap::from_pointee(producer),
            admin,
            health,
            ensured: Mutex::default(),
            members: Mutex::default(),
        })
    }

    /// The producer to publish with: the current one, or a new one in its
    /// place if librdkafka declared it fatal (it then fails every send).
    fn live_producer(&self) -> Result<Arc<FutureProducer<HealthContext>>, String> {
        let current = self.producer.load_full();
        let Some((code, reason)) = current.client().fatal_error() else {
            return Ok(current);
        };
        tracing::warn!(transport = %KIND, %code, reason, "producer is fatal; replacing it");
        let fresh = Arc::new(
            producer(&self.config, &self.health)
                .map_err(|e| format!("replace fatal producer ({code}: {reason}): {e}"))?,
        );
        // Concurrent publishers that saw the same fatal producer: one swap
        // wins, the others use the winner's producer and drop their own.
        let previous = self.producer.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&previous, &current) {
            telemetry::kafka_producer_rebuilt();
            Ok(fresh)
        } else {
            Ok(Arc::clone(&previous))
        }
    }

    /// The topic of a gateway, or an error naming the id if Kafka cannot
    /// name a topic after it.
    fn topic(&self, gateway: &GatewayId) -> Result<String, String> {
        let topic = format!("{}{}", self.config.topic_prefix, gateway);
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.len() > 249 || !topic.chars().all(legal) {
            return Err(format!(
                "topic {topic:?} for gateway {gateway:?} is not a legal Kafka topic name \
                 (at most 249 of [a-zA-Z0-9._-])"
            ));
        }
        Ok(topic)
    }

    /// Creates `topic` unless it is known to exist or creation is off.
    async fn ensure_topic(&self, topic: &str) -> Result<(), String> {
        let topics = &self.config.topics;
        if !topics.create || self.ensured.lock().contains(topic) {
            return Ok(());
        }
        let max_bytes = self.config.max_message_bytes.to_string();
        let new = NewTopic::new(
            topic,
            topics.partitions,
            TopicReplication::Fixed(topics.replication),
        )
        .set("max.message.bytes", &max_bytes);
        let options = AdminOptions::new().operation_timeout(Some(self.config.connect_timeout));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| format!("create topic {topic}: {e}"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => return Err(format!("create topic {name}: {code}")),
            }
        }
        self.ensured.lock().insert(topic.to_owned());
        Ok(())
    }

    /// Waits until the previous subscription of this consumer group in this
    /// process has committed and left, and returns the membership to hold
    /// until this one has. A predecessor still open after `session_timeout`
    /// is a second live subscription: this one joins beside it.
    async fn wait_for_predecessor(&self, group: &str) -> Option<OwnedMutexGuard<()>> {
        let slot = self
            .members
            .lock()
            .entry(group.to_owned())
            .or_default()
            .clone();
        match tokio::time::timeout(self.config.session_timeout, slot.lock_owned()).await {
            Ok(membership) => Some(membership),
            Err(_) => {
                tracing::warn!(
                    transport = %KIND, %group,
                    "another subscription of this gateway is still open in this process; \
                     joining the group beside it"
                );
                None
            }
        }
    }

    fn consumer(
        &self,
        me: &GatewayId,
        group: &str,
    ) -> Result<StreamConsumer<HealthContext>, KafkaError> {
        client_config(&self.config)
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                millis(self.config.commit_interval),
            )
            // Offsets are stored by the inbox's ack, never on receipt.
            .set("enable.auto.offset.store", "false")
            // A gateway's first subscription reads what was sent before it.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", millis(self.config.fetch_wait_max))
            .set("session.timeout.ms", millis(self.config.session_timeout))
            .set("enable.partition.eof", "false")
            .with_overrides(&self.config)
            .create_with_context(HealthContext(self.health.clone(), Some(me.clone())))
    }
}

/// The idempotent producer (acks=all, the idempotence default).
fn producer(
    config: &KafkaConfig,
    health: &Arc<HealthCell>,
) -> Result<FutureProducer<HealthContext>, KafkaError> {
    client_config(config)
        .set("enable.idempotence", "true")
        .set("linger.ms", millis(config.linger))
        .set("batch.size", config.batch_size.to_string())
        .set("compression.type", config.compression.as_str())
        .set(
            "queue.buffering.max.messages",
            config.max_in_flight.to_string(),
        )
        .set("message.max.bytes", config.max_message_bytes.to_string())
        .set("message.timeout.ms", millis(config.delivery_timeout))
        .with_overrides(config)
        .create_with_context(HealthContext(health.clone(), None))
}

/// Settings every client shares.
pub(crate) fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("client.id", &config.client_id)
        .set("statistics.interval.ms", "1000")
        .set(
            "topic.metadata.refresh.interval.ms",
            millis(config.metadata_refresh),
        );
    c
}

/// Applies the pass-through properties last, so they win.
pub(crate) trait WithOverrides {
    fn with_overrides(&mut self, config: &KafkaConfig) -> &mut Self;
}

impl WithOverrides for ClientConfig {
    fn with_overrides(&mut self, config: &KafkaConfig) -> &mut Self {
        for (key, value) in &config.properties {
            self.set(key, value);
        }
        self
    }
}

pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

/// One subscription's received and acked offsets per partition, so only
/// the highest contiguous acked offset is ever stored for commit.
#[derive(Debug, Default)]
struct OffsetTracker {
    partitions: HashMap<(String, i32), PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Received and not yet acked.
    unacked: BTreeSet<i64>,
    /// The highest offset received.
    highest: i64,
    /// The highest offset stored for commit (every offset up to it acked).
    stored: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` was received (handed to the inbox).
    fn received(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        p.unacked.insert(offset);
        p.highest = p.highest.max(offset);
    }

    /// Records the ack of `offset` and returns the offset to store, if the
    /// contiguous acked prefix grew: every offset received up to it is acked.
    fn acked(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        p.unacked.remove(&offset);
        let contiguous = match p.unacked.first() {
            Some(lowest) => lowest - 1,
            None => p.highest,
        };
        if p.stored.is_some_and(|stored| stored >= contiguous) || contiguous < offset {
            return None;
        }
        p.stored = Some(contiguous);
        Some(contiguous)
    }
}

/// Acks one received record; stores an offset only when every record
/// before it on the partition is acked too.
struct OffsetAck {
    consumer: Arc<StreamConsumer<HealthContext>>,
    tracker: Arc<Mutex<OffsetTracker>>,
    topic: String,
    partition: i32,
    offset: i64,
}

#[async_trait]
impl Acknowledge for OffsetAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        let Some(offset) = self
            .tracker
            .lock()
            .acked(&self.topic, self.partition, self.offset)
        else {
            return Ok(());
        };
        // librdkafka stores offset + 1 (the next record to read); the
        // periodic auto commit sends it to the broker.
        self.consumer
            .store_offset(&self.topic, self.partition, offset)
            .map_err(|e| TransportError::Ack {
                transport: KIND,
                reason: format!(
                    "store offset {offset} of {}[{}] (acked {}): {e}",
                    self.topic, self.partition, self.offset
                ),
            })
    }
}

#[async_trait]
impl TransportFactory for KafkaConfig {
    async fn build(&self, _: &Dependencies) -> Result<Arc<dyn Transport>, TransportError> {
        let kafka = Arc::new(KafkaTransport::connect(self).await?);
        Ok(super::compress::wrap(kafka, &self.envelope_compression))
    }

    fn problems(&self, key: &str) -> Vec<Problem> {
        if self.brokers.trim().is_empty() {
            return vec![Problem {
                key: format!("{key}.brokers"),
                reason: "must not be empty: a comma-separated list of host:port bootstrap brokers"
                    .into(),
            }];
        }
        Vec::new()
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    fn kind(&self) -> TransportKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: true,
            ordered: true,
            redelivers: true,
            direct: false,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let publish_err = |reason: String| TransportError::Publish {
            transport: KIND,
            gateway: to.clone(),
            reason,
        };
        let topic = self.topic(to).map_err(publish_err)?;
        self.ensure_topic(&topic).await.map_err(publish_err)?;
        let producer = self.live_producer().map_err(publish_err)?;
        let key = to.as_str();
        let topic = topic.as_str();
        enqueue_then_confirm(batch, ack, |bytes| {
            let record = FutureRecord::to(topic).key(key).payload(bytes.as_ref());
            // Never block on a full queue: the error lets the router fall back.
            let enqueued = producer
                .send_result(record)
                .map_err(|(e, _)| publish_err(format!("enqueue to {topic}: {e}")))
                .map(|delivery| async move {
                    match delivery.await {
                        Ok(Ok(_)) => {
                            self.health.up();
                            Ok(())
                        }
                        Ok(Err((e, _))) => {
                            // The topic may be gone (deleted, or lost by a broker
                            // that restarted empty): check it again next time.
                            self.ensured.lock().remove(topic);
                            Err(publish_err(format!("delivery to {topic}: {e}")))
                        }
                        Err(_) => Err(publish_err(format!(
                            "delivery to {topic}: producer shut down"
                        ))),
                    }
                });
            std::future::ready(enqueued)
        })
        .await
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let subscribe_err = |reason: String| TransportError::Subscribe {
            transport: KIND,
            gateway: me.clone(),
            reason,
        };
        let topic = self.topic(me).map_err(subscribe_err)?;
        self.ensure_topic(&topic).await.map_err(subscribe_err)?;
        let group = format!("{}{}", self.config.group_prefix, me);
        let membership = self.wait_for_predecessor(&group).await;
        let consumer = self
            .consumer(me, &group)
            .map_err(|e| subscribe_err(format!("consumer for group {group}: {e}")))?;
        consumer
            .subscribe(&[&topic])
            .map_err(|e| subscribe_err(format!("subscribe {group} to {topic}: {e}")))?;
        let consumer = Arc::new(consumer);
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let health = self.health.clone();
        Ok(spawn_subscription(
            self.config.queue,
            move |tx| async move {
                loop {
                    let incoming = tokio::select! {
                        _ = tx.closed() => break,
                        received = consumer.recv() => match received {
                            Ok(record) => {
                                let (topic, partition, offset) =
                                    (record.topic(), record.partition(), record.offset());
                                tracker.lock().received(topic, partition, offset);
                                Incoming {
                                    bytes: Bytes::copy_from_slice(
                                        record.payload().unwrap_or_default(),
                                    ),
                                    ack: Some(Box::new(OffsetAck {
                                        consumer: consumer.clone(),
                                        tracker: tracker.clone(),
                                        topic: topic.to_owned(),
                                        partition,
                                        offset,
                                    })),
                                }
                            }
                            Err(e) => {
                                tracing::debug!(transport = %KIND, %group, %e, "consume error");
                                // Errors repeat while the broker is away: don't spin.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        },
                    };
                    health.up();
                    if tx.send(incoming).await.is_err() {
                        break;
                    }
                }
                // Closing commits stored offsets and leaves the group; it
                // blocks. The membership is held until it is done.
                let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
                drop(membership);
            },
        ))
    }

    fn health(&self) -> Health {
        self.health.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(received: impl IntoIterator<Item = i64>) -> OffsetTracker {
        let mut t = OffsetTracker::default();
        for offset in received {
            t.received("t", 0, offset);
        }
        t
    }

    #[test]
    fn in_order_acks_store_each_offset() {
        let mut t = tracker(0..3);
        assert_eq!(t.acked("t", 0, 0), Some(0));
        assert_eq!(t.acked("t", 0, 1), Some(1));
        assert_eq!(t.acked("t", 0, 2), Some(2));
    }

    #[test]
    fn an_ack_past_an_unacked_offset_stores_nothing_until_the_gap_closes() {
        let mut t = tracker(10..15);
        // A duplicate (12) acked at once while 10 and 11 wait for the gateway.
        assert_eq!(t.acked("t", 0, 12), None);
        assert_eq!(t.acked("t", 0, 11), None);
        assert_eq!(t.acked("t", 0, 10), Some(12));
        assert_eq!(t.acked("t", 0, 14), None);
        assert_eq!(t.acked("t", 0, 13), Some(14));
    }

    #[test]
    fn the_stored_offset_waits_for_records_received_later_only_if_unacked() {
        let mut t = tracker(0..2);
        assert_eq!(t.acked("t", 0, 1), None);
        t.received("t", 0, 2);
        assert_eq!(t.acked("t", 0, 0), Some(1));
        assert_eq!(t.acked("t", 0, 2), Some(2));
    }

    #[test]
    fn partitions_are_tracked_apart() {
        let mut t = tracker(0..2);
        t.received("t", 1, 0);
        t.received("u", 0, 5);
        assert_eq!(t.acked("t", 1, 0), Some(0));
        assert_eq!(t.acked("u", 0, 5), Some(5));
        assert_eq!(t.acked("t", 0, 1), None);
        assert_eq!(t.acked("t", 0, 0), Some(1));
    }

    #[test]
    fn a_redelivered_offset_never_moves_the_stored_offset_back() {
        let mut t = tracker(0..3);
        for offset in 0..3 {
            t.acked("t", 0, offset);
        }
        // The partition came back after a rebalance: records from 1 again.
        t.received("t", 0, 1);
        assert_eq!(t.acked("t", 0, 1), None);
        assert_eq!(t.acked("t", 0, 7), None, "never received");
    }

    /// A fatal idempotent producer (as after `UnknownProducerId`) is replaced
    /// on the next publish, which succeeds. Needs the cluster of
    /// `scripts/services/kafka.sh start`; the fatal error is injected with
    /// librdkafka's own test hook, since no broker fault gives one on demand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(unsafe_code)]
    async fn a_fatal_producer_is_replaced_and_publishing_goes_on() {
        use futures::StreamExt;
        use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};

        let config = KafkaConfig {
            brokers: "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094".into(),
            delivery_timeout: Duration::from_secs(10),
            ..KafkaConfig::default()
        };
        let kafka = KafkaTransport::connect(&config)
            .await
            .expect("the cluster of scripts/services/kafka.sh start");
        let to = GatewayId::new(format!("fatal{}", ulid::Ulid::new()));
        let batch =
            |n: u32| -> Vec<Bytes> { (0..n).map(|i| Bytes::from(format!("{i}"))).collect() };
        kafka
            .publish(&to, &batch(10), Ack::Confirmed)
            .await
            .expect("publish before");
        let first = kafka.producer.load_full();
        let reason = c"injected by a test";
        // SAFETY: the pointer is the live producer's handle (kept alive by
        // `first`), and the reason is a NUL-terminated string.
        let code = unsafe {
            rd_kafka_test_fatal_error(
                first.client().native_ptr(),
                rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID,
                reason.as_ptr(),
            )
        };
        assert_eq!(code, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        assert!(first.client().fatal_error().is_some());
        kafka
            .publish(&to, &batch(10), Ack::Confirmed)
            .await
            .expect("publish after the fatal error");
        assert!(
            !Arc::ptr_eq(&first, &kafka.producer.load_full()),
            "not replaced"
        );

        let mut sub = kafka.subscribe(&to).await.expect("subscribe");
        let mut got = 0;
        while got < 20 {
            let incoming = tokio::time::timeout(Duration::from_secs(20), sub.next())
                .await
                .expect("all 20 within 20 s")
                .expect("subscription open");
            got += 1;
            if let Some(ack) = incoming.ack {
                ack.ack().await.expect("ack");
            }
        }
        assert_eq!(got, 20);
    }
}
