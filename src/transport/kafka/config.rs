//! `[transports.kafka]`: what the transport and the region feed connect with.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::range::{Bounded, Bounds, HOUR, MAX_QUEUE, MIB, MINUTE, MS, SECOND};
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

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
    pub(super) fn as_str(self) -> &'static str {
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

impl Bounded for KafkaConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        let s = section;
        b.time(s, "linger", self.linger, Duration::ZERO, 10 * SECOND);
        b.count(s, "batch_size", self.batch_size, 1, 1_000_000_000);
        b.count(s, "max_in_flight", self.max_in_flight, 1, 10 * MAX_QUEUE);
        b.count(
            s,
            "max_message_bytes",
            self.max_message_bytes,
            1024,
            1024 * MIB,
        );
        b.time(s, "delivery_timeout", self.delivery_timeout, MS, HOUR);
        b.time(
            s,
            "fetch_wait_max",
            self.fetch_wait_max,
            Duration::ZERO,
            10 * SECOND,
        );
        b.time(s, "commit_interval", self.commit_interval, MS, MINUTE);
        b.time(s, "metadata_refresh", self.metadata_refresh, SECOND, HOUR);
        b.time(
            s,
            "session_timeout",
            self.session_timeout,
            SECOND,
            30 * MINUTE,
        );
        b.time(s, "connect_timeout", self.connect_timeout, MS, MINUTE);
        b.count(s, "queue", self.queue, 1, MAX_QUEUE);
        b.count(s, "topics.partitions", self.topics.partitions, 1, 10_000);
        let replication = self.topics.replication.into();
        b.count_or_unlimited(s, "topics.replication", replication, 1, 100);
        self.envelope_compression
            .bounds(b, &format!("{s}.envelope_compression"));
    }
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
