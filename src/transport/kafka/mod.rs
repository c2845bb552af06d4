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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use tokio::sync::watch;

use super::pipeline::confirm_all;
use super::{
    Ack, Capabilities, Dependencies, Health, HealthCell, Outgoing, Subscription, Transport,
    TransportError, TransportFactory, TransportKind,
};
use crate::cause::Cause;
use crate::config::problem::Problem;
use crate::telemetry;
use crate::topology::GatewayId;

mod config;
mod consume;
pub(crate) mod group_consumer;

pub(crate) use config::{client_config, millis, WithOverrides};
pub use config::{Compression, KafkaConfig, KafkaTopicsConfig};

const KIND: TransportKind = TransportKind::KAFKA;

/// librdkafka callbacks, turned into the transport's health and, for a
/// gateway's consumer, its consumer lag gauge and whether the group has
/// assigned it its topic yet.
#[derive(Clone)]
struct HealthContext {
    health: Arc<HealthCell>,
    /// The gateway whose consumer this is (none for the producer and admin).
    gateway: Option<GatewayId>,
    /// Set once a rebalance assigned the consumer partitions.
    assigned: Option<watch::Sender<bool>>,
}

impl HealthContext {
    fn client(health: &Arc<HealthCell>) -> Self {
        Self {
            health: health.clone(),
            gateway: None,
            assigned: None,
        }
    }
}

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
            self.health.up();
        }
        if let Some(gateway) = &self.gateway {
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
            Some(RDKafkaErrorCode::AllBrokersDown) => self.health.down(reason),
            _ => tracing::debug!(transport = %KIND, %error, reason, "librdkafka error"),
        }
    }
}

impl ConsumerContext for HealthContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Some(assigned), Rebalance::Assign(partitions)) = (&self.assigned, rebalance) {
            // An empty assignment: the group did not see the topic yet.
            if partitions.count() > 0 {
                assigned.send_replace(true);
            }
        }
    }
}

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
        let connect_err = |reason: Cause| TransportError::Connect {
            transport: KIND,
            address: config.brokers.clone(),
            reason,
        };
        let health = Arc::new(HealthCell::new(KIND));
        let context = HealthContext::client(&health);
        let producer = producer(config, &health)
            .map_err(|e| connect_err(Cause::context("bad producer settings", e)))?;
        let admin: AdminClient<HealthContext> = client_config(config)
            .with_overrides(config)
            .create_with_context(context)
            .map_err(|e| connect_err(Cause::context("bad admin settings", e)))?;
        // librdkafka connects lazily and retries forever: ask for metadata
        // so a broker that is down at start-up is a clear error, not a hang.
        let probe = producer.clone();
        let timeout = config.connect_timeout;
        tokio::task::spawn_blocking(move || probe.client().fetch_metadata(None, timeout).map(drop))
            .await
            .map_err(|e| connect_err(Cause::context("metadata probe panicked", e)))?
            .map_err(|e| {
                connect_err(Cause::context(
                    format!("no broker answered within {timeout:?}"),
                    e,
                ))
            })?;
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
    fn live_producer(&self) -> Result<Arc<FutureProducer<HealthContext>>, Cause> {
        let current = self.producer.load_full();
        let Some((code, reason)) = current.client().fatal_error() else {
            return Ok(current);
        };
        tracing::warn!(transport = %KIND, %code, reason, "producer is fatal; replacing it");
        let fresh = Arc::new(producer(&self.config, &self.health).map_err(|e| {
            Cause::context(format!("replace fatal producer ({code}: {reason})"), e)
        })?);
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
    fn topic(&self, gateway: &GatewayId) -> Result<String, Cause> {
        let topic = format!("{}{}", self.config.topic_prefix, gateway);
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.len() > 249 || !topic.chars().all(legal) {
            return Err(Cause::from_message(format!(
                "topic {topic:?} for gateway {gateway:?} is not a legal Kafka topic name \
                 (at most 249 of [a-zA-Z0-9._-])"
            )));
        }
        Ok(topic)
    }

    /// Creates `topic` unless it is known to exist or creation is off.
    async fn ensure_topic(&self, topic: &str) -> Result<(), Cause> {
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
            .map_err(|e| Cause::context(format!("create topic {topic}"), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Cause::context(format!("create topic {name}"), code))
                }
            }
        }
        self.ensured.lock().insert(topic.to_owned());
        Ok(())
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
        .create_with_context(HealthContext::client(health))
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

fn publish_err(to: &GatewayId, reason: Cause) -> TransportError {
    TransportError::Publish {
        transport: KIND,
        gateway: to.clone(),
        reason,
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
        let mut results = self.publish_many(&[Outgoing { to, batch }], ack).await;
        results.pop().unwrap_or(Ok(()))
    }

    /// Every target's records produced, then every delivery awaited
    /// together: one flush for the whole batch.
    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let producer = match self.live_producer() {
            Ok(producer) => producer,
            Err(reason) => {
                return targets
                    .iter()
                    .map(|t| Err(publish_err(t.to, reason.clone())))
                    .collect()
            }
        };
        let mut topics = Vec::with_capacity(targets.len());
        for target in targets {
            let topic = match self.topic(target.to) {
                Ok(topic) => self.ensure_topic(&topic).await.map(|()| topic),
                Err(reason) => Err(reason),
            };
            topics.push(topic.map_err(|reason| publish_err(target.to, reason)));
        }
        let mut results = Vec::with_capacity(targets.len());
        let mut confirmations = Vec::new();
        for (i, (target, topic)) in targets.iter().zip(&topics).enumerate() {
            let topic = match topic {
                Ok(topic) => topic.as_str(),
                Err(err) => {
                    results.push(Err(err.clone()));
                    continue;
                }
            };
            results.push(Ok(()));
            for bytes in target.batch {
                let record = FutureRecord::to(topic)
                    .key(target.to.as_str())
                    .payload(bytes.as_ref());
                // Never block on a full queue: the error lets the router
                // fall back (and the rest of this gateway's batch waits,
                // so nothing overtakes it).
                match producer.send_result(record) {
                    Ok(delivery) => confirmations.push((i, async move {
                        match delivery.await {
                            Ok(Ok(_)) => {
                                self.health.up();
                                Ok(())
                            }
                            Ok(Err((e, _))) => {
                                // The topic may be gone (deleted, or lost by a
                                // broker that restarted empty): check it again
                                // next time.
                                self.ensured.lock().remove(topic);
                                Err(publish_err(
                                    target.to,
                                    Cause::context(format!("delivery to {topic}"), e),
                                ))
                            }
                            Err(_) => Err(publish_err(
                                target.to,
                                Cause::from_message(format!(
                                    "delivery to {topic}: producer shut down"
                                )),
                            )),
                        }
                    })),
                    Err((e, _)) => {
                        results[i] = Err(publish_err(
                            target.to,
                            Cause::context(format!("enqueue to {topic}"), e),
                        ));
                        break;
                    }
                }
            }
        }
        if ack == Ack::Confirmed {
            confirm_all(&mut results, confirmations).await;
        }
        results
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        self.open(me).await
    }

    fn health(&self) -> Health {
        self.health.get()
    }
}

// Needs Kafka: run with the `it-kafka` test tier (scripts/test.sh).
#[cfg(all(test, feature = "it-kafka"))]
mod tests {
    use std::time::Duration;

    use super::*;

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
        let to = GatewayId::try_from(format!("fatal{}", ulid::Ulid::new())).unwrap();
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
