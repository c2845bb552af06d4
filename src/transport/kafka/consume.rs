//! The receive side of the Kafka transport: one consumer group per
//! gateway, offsets stored only as far as every record before them is
//! acked, and a close that never holds up a runtime thread.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::{watch, OwnedMutexGuard};

use super::config::{client_config, millis, WithOverrides};
use super::group_consumer::GroupConsumer;
use super::{HealthContext, KafkaTransport, KIND};
use crate::cause::Cause;
use crate::topology::GatewayId;
use crate::transport::pipeline::spawn_subscription;
use crate::transport::{Acknowledge, Incoming, Subscription, TransportError};

/// How long a new consumer waits for its assignment before asking for
/// the cluster's metadata again.
const ASSIGNMENT_LOOK: Duration = Duration::from_millis(500);

impl KafkaTransport {
    /// Joins the gateway's consumer group on its topic.
    pub(super) async fn open(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let subscribe_err = |reason: Cause| TransportError::Subscribe {
            transport: KIND,
            gateway: me.clone(),
            reason,
        };
        let topic = self.topic(me).map_err(subscribe_err)?;
        self.ensure_topic(&topic).await.map_err(subscribe_err)?;
        let group = format!("{}{}", self.config.group_prefix, me);
        let membership = self.wait_for_predecessor(&group).await;
        let (assigned, mut on_assigned) = watch::channel(false);
        let consumer = self
            .consumer(me, &group, assigned)
            .map_err(|e| subscribe_err(Cause::context(format!("consumer for group {group}"), e)))?;
        consumer.subscribe(&[&topic]).map_err(|e| {
            subscribe_err(Cause::context(format!("subscribe {group} to {topic}"), e))
        })?;
        let (consumer, closed) = GroupConsumer::new(consumer);
        let consumer = Arc::new(consumer);
        let close_limit = self.config.session_timeout;
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let health = self.health.clone();
        let asker = Arc::downgrade(&consumer);
        let subscription = spawn_subscription(self.config.queue, move |tx| async move {
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
            // The membership is held until the consumer has committed
            // and left, or for as long as the broker would keep it.
            drop(consumer);
            if tokio::time::timeout(close_limit, closed).await.is_err() {
                tracing::warn!(
                    transport = %KIND, %group, ?close_limit,
                    "the consumer did not close in time (brokers unreachable?); \
                     the broker ends its membership after session_timeout"
                );
            }
            drop(membership);
        });
        if !self.wait_for_assignment(&asker, &mut on_assigned, me).await {
            // Keep asking in the background: left to librdkafka, the next
            // look is at `metadata_refresh`, and a gateway's first delivery
            // would wait for it.
            tokio::spawn(
                async move { while !look_for_assignment(&asker, &mut on_assigned).await {} },
            );
        }
        Ok(subscription)
    }

    /// Waits, at most `connect_timeout`, until the group has assigned the
    /// new consumer its topic, so a gateway's first delivery does not wait
    /// on librdkafka's metadata refresh: a consumer whose just-created
    /// topic had not reached the broker it asked is assigned nothing, and
    /// looks again only at `metadata_refresh` (10 s). `false` past the
    /// limit (brokers away): the subscription is returned unassigned and
    /// starts reading, from the committed offset, once the group assigns it.
    async fn wait_for_assignment(
        &self,
        consumer: &Weak<GroupConsumer<HealthContext>>,
        assigned: &mut watch::Receiver<bool>,
        me: &GatewayId,
    ) -> bool {
        let limit = self.config.connect_timeout;
        let waited = tokio::time::timeout(limit, async {
            while !look_for_assignment(consumer, assigned).await {}
        })
        .await;
        if waited.is_err() {
            tracing::warn!(
                transport = %KIND, gateway = %me, ?limit,
                "the consumer group has not assigned the topic yet; \
                 the subscription starts reading once it does"
            );
        }
        waited.is_ok()
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
        assigned: watch::Sender<bool>,
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
            .create_with_context(HealthContext {
                health: self.health.clone(),
                gateway: Some(me.clone()),
                assigned: Some(assigned),
            })
    }
}

/// Waits up to [`ASSIGNMENT_LOOK`] for the assignment (or the consumer's
/// end); if neither came, asks for every topic's metadata, which makes the
/// group look again at once (a request naming one topic does not update
/// the group's view). `true` once settled.
async fn look_for_assignment(
    consumer: &Weak<GroupConsumer<HealthContext>>,
    assigned: &mut watch::Receiver<bool>,
) -> bool {
    // Assigned, or the consumer is gone (the subscription ended).
    if tokio::time::timeout(ASSIGNMENT_LOOK, assigned.wait_for(|a| *a))
        .await
        .is_ok()
    {
        return true;
    }
    // Held only while asking: the subscription's end must drop the consumer.
    let Some(consumer) = consumer.upgrade() else {
        return true;
    };
    let _ = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(None, ASSIGNMENT_LOOK).map(drop)
    })
    .await;
    false
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
    consumer: Arc<GroupConsumer<HealthContext>>,
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
                reason: Cause::context(
                    format!(
                        "store offset {offset} of {}[{}] (acked {})",
                        self.topic, self.partition, self.offset
                    ),
                    e,
                ),
            })
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
}
