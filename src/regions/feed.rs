//! Presence changes between regions over Kafka.
//!
//! Every change of a local session marks its user; a background task takes
//! a [`Snapshot`] of each marked user (the user's sessions in this region
//! and a version, read in one script) and produces it to the presence
//! topic, keyed `region/user`: one partition per (region, user), so a
//! region's snapshots of one user stay in order, and log compaction keeps
//! the latest of each. A user changed again while a snapshot is in flight
//! is marked again; one whose publish failed stays marked and is retried,
//! so the last snapshot sent always describes the current state.
//!
//! Each region reads the topic in its own consumer group (every sidecar of
//! the region shares the partitions), skips its own snapshots and applies
//! the others to its [`Replica`]; the version makes that idempotent, so a
//! replay after a crash or rebalance changes nothing. The offset is stored
//! only once a snapshot is applied (at-least-once).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use super::marks::{send_marked, Marks};
use super::replica::Replica;
use super::snapshot::{RemoteSession, Snapshot};
use super::RegionsConfig;
use crate::cause::{Cause, Report};
use crate::envelope::now_micros;
use crate::telemetry;
use crate::topology::{Region, UserId};
use crate::transport::kafka::group_consumer::GroupConsumer;
use crate::transport::kafka::{client_config, millis, KafkaConfig, WithOverrides};
use crate::transport::{TransportError, TransportKind};

/// The longest wait between attempts at a failing apply.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The publishing half: users whose local sessions changed, sent on by a
/// task that ends when this is dropped.
pub struct Publisher {
    marks: Arc<Marks<UserId>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Marks `user` for a snapshot.
    pub fn mark(&self, user: &UserId) {
        self.marks.mark(user.clone());
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the feed needs from Kafka.
pub(super) struct Kafka {
    config: KafkaConfig,
    producer: FutureProducer,
    /// This node's region, whose own records the consumers skip.
    local: Region,
}

impl Kafka {
    /// Connects the producer and creates the presence and membership
    /// topics (compacted) if they do not exist.
    pub(super) async fn connect(
        kafka: &KafkaConfig,
        regions: &RegionsConfig,
        local: Region,
    ) -> Result<Self, TransportError> {
        let connect_err = |reason: Cause| TransportError::Connect {
            transport: TransportKind::KAFKA,
            address: kafka.brokers.clone(),
            reason,
        };
        let producer: FutureProducer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("linger.ms", millis(kafka.linger))
            .set("message.timeout.ms", millis(kafka.delivery_timeout))
            .with_overrides(kafka)
            .create()
            .map_err(|e| connect_err(Cause::context("bad producer settings", e)))?;
        let admin: AdminClient<DefaultClientContext> = client_config(kafka)
            .with_overrides(kafka)
            .create()
            .map_err(|e| connect_err(Cause::context("bad admin settings", e)))?;
        let groups = groups_topic(regions);
        let topics: Vec<NewTopic> = [regions.topic.as_str(), groups.as_str()]
            .into_iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    regions.partitions,
                    TopicReplication::Fixed(kafka.topics.replication),
                )
                .set("cleanup.policy", "compact")
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(kafka.connect_timeout));
        let results = tokio::time::timeout(
            kafka.connect_timeout,
            admin.create_topics(&topics, &options),
        )
        .await
        .map_err(|_| {
            connect_err(Cause::from_message(format!(
                "no broker answered within {:?}",
                kafka.connect_timeout
            )))
        })?
        .map_err(|e| {
            connect_err(Cause::context(
                format!("create topics {}, {groups}", regions.topic),
                e,
            ))
        })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(connect_err(Cause::context(
                        format!("create topic {name}"),
                        code,
                    )))
                }
            }
        }
        Ok(Self {
            config: kafka.clone(),
            producer,
            local,
        })
    }

    /// The producer both feeds share.
    pub(super) fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// A consumer of `topic` in this region's consumer group `{kind}.{region}`
    /// (the region's nodes share the partitions), reading a new group's
    /// log from the start and storing offsets only when told.
    pub(super) fn consumer(
        &self,
        regions: &RegionsConfig,
        kind: &str,
        topic: &str,
    ) -> Result<GroupConsumer<rdkafka::consumer::DefaultConsumerContext>, TransportError> {
        let config = &self.config;
        let group = format!("{}{kind}.{}", config.group_prefix, regions.local);
        let consumer: StreamConsumer = client_config(config)
            .set("group.id", &group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", millis(config.commit_interval))
            .set("enable.auto.offset.store", "false")
            // A region that joins rebuilds its replica from the compacted log.
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", millis(config.fetch_wait_max))
            .set("session.timeout.ms", millis(config.session_timeout))
            .with_overrides(config)
            .create()
            .map_err(|e| TransportError::Connect {
                transport: TransportKind::KAFKA,
                address: config.brokers.clone(),
                reason: Cause::context(format!("bad consumer settings for group {group}"), e),
            })?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| TransportError::Connect {
                transport: TransportKind::KAFKA,
                address: config.brokers.clone(),
                reason: Cause::context(format!("subscribe to {topic}"), e),
            })?;
        // The task owning it is aborted to stop: it closes off the runtime.
        Ok(GroupConsumer::new(consumer).0)
    }
}

/// The topic group memberships replicate on: `{regions.topic}.groups`.
pub(super) fn groups_topic(regions: &RegionsConfig) -> String {
    format!("{}.groups", regions.topic)
}

/// Starts the publishing task; it ends when the returned publisher is
/// dropped.
pub(super) fn publish(
    kafka: &Kafka,
    replica: Arc<Replica>,
    region: Region,
    topic: String,
) -> Arc<Publisher> {
    let marks = Arc::new(Marks::default());
    let producer = kafka.producer.clone();
    let task = send_marked(marks.clone(), telemetry::PRESENCE_REPLICATED, move |user| {
        let (replica, producer) = (replica.clone(), producer.clone());
        let (region, topic) = (region.clone(), topic.clone());
        async move { send(&replica, &producer, &region, &topic, &user).await }
    });
    Arc::new(Publisher { marks, task })
}

/// Takes one snapshot of `user` and produces it.
async fn send(
    replica: &Replica,
    producer: &FutureProducer,
    region: &Region,
    topic: &str,
    user: &UserId,
) -> Result<(), String> {
    let (version, sessions) = replica
        .snapshot(user)
        .await
        .map_err(|e| Report(&e).to_string())?;
    let snapshot = Snapshot {
        region: region.clone(),
        user: user.clone(),
        version,
        at_micros: now_micros(),
        sessions: sessions
            .into_iter()
            .map(|s| RemoteSession {
                device: s.device,
                gateway: s.gateway,
                since_micros: s.since_micros,
            })
            .collect(),
    };
    produce_json(producer, topic, &format!("{region}/{user}"), &snapshot).await?;
    metrics::counter!(telemetry::PRESENCE_REPLICATED, "outcome" => "sent").increment(1);
    Ok(())
}

/// Produces `record` as JSON under `key` on a regions topic.
pub(super) async fn produce_json(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    record: &impl serde::Serialize,
) -> Result<(), String> {
    let payload = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&payload),
            Duration::ZERO,
        )
        .await
        .map_err(|(e, _)| format!("produce to {topic}: {e}"))?;
    Ok(())
}

/// Called with each applied remote snapshot and the region's sessions of
/// the user before it.
pub(super) type OnApplied = Arc<
    dyn Fn(Snapshot, Vec<RemoteSession>) -> futures::future::BoxFuture<'static, ()> + Send + Sync,
>;

/// Starts the consuming task of this region: applies every other region's
/// snapshots to `replica`, then calls `applied`. Abort the returned task to
/// stop it.
pub(super) fn follow(
    kafka: &Kafka,
    regions: &RegionsConfig,
    replica: Arc<Replica>,
    applied: OnApplied,
) -> Result<tokio::task::JoinHandle<()>, TransportError> {
    consume(
        kafka,
        regions,
        "presence",
        &regions.topic,
        move |snapshot: Snapshot| {
            let (replica, applied) = (replica.clone(), applied.clone());
            async move { apply(&replica, &applied, snapshot).await }
        },
    )
}

/// A record one region writes on a regions topic for the others.
pub(super) trait FromRegion: serde::de::DeserializeOwned + Send + 'static {
    /// The region that wrote it.
    fn region(&self) -> &Region;
}

impl FromRegion for Snapshot {
    fn region(&self) -> &Region {
        &self.region
    }
}

/// Consumes `topic` as this region's `name` feed: each record decoded as
/// `T`, the local region's own skipped, the others handed to `apply`
/// (which retries as it needs), and each offset stored only after. A record
/// that cannot be read is counted and skipped. Abort the returned task to
/// stop it.
pub(super) fn consume<T, F, Fut>(
    kafka: &Kafka,
    regions: &RegionsConfig,
    name: &'static str,
    topic: &str,
    apply: F,
) -> Result<tokio::task::JoinHandle<()>, TransportError>
where
    T: FromRegion,
    F: Fn(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let consumer = kafka.consumer(regions, name, topic)?;
    let local = kafka.local.clone();
    Ok(tokio::spawn(async move {
        loop {
            let message = match consumer.recv().await {
                Ok(message) => message,
                Err(err) => {
                    tracing::debug!(feed = name, %err, "regions feed: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match message.payload().map(serde_json::from_slice::<T>) {
                Some(Ok(record)) if *record.region() != local => apply(record).await,
                Some(Ok(_)) => {}
                _ => {
                    metrics::counter!(telemetry::STORE_MALFORMED, "store" => format!("{name}-feed"))
                        .increment(1);
                    tracing::warn!(
                        feed = name,
                        partition = message.partition(),
                        offset = message.offset(),
                        "skipping a record that cannot be read"
                    );
                }
            }
            if let Err(err) = consumer.store_offset_from_message(&message) {
                tracing::debug!(feed = name, %err, "regions feed: store offset failed");
            }
        }
    }))
}

/// Applies one snapshot, retrying while the region's Redis fails (a
/// skipped snapshot would leave the replica stale until the next change).
async fn apply(replica: &Replica, applied: &OnApplied, snapshot: Snapshot) {
    let mut backoff = Duration::from_millis(50);
    let before = loop {
        match replica.apply(&snapshot).await {
            Ok(before) => break before,
            Err(err) => {
                tracing::warn!(err = %Report(&err), "presence snapshot not applied; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    let Some(before) = before else {
        metrics::counter!(telemetry::PRESENCE_APPLIED, "outcome" => "stale").increment(1);
        return;
    };
    metrics::counter!(telemetry::PRESENCE_APPLIED, "outcome" => "applied").increment(1);
    let lag = (now_micros() - snapshot.at_micros).max(0) as f64 / 1e6;
    metrics::histogram!(telemetry::PRESENCE_REPLICATION_LAG, "from" => snapshot.region.to_string())
        .record(lag);
    applied(snapshot, before).await;
}
