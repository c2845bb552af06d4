//! Redis Pub/Sub transport: channel `sy:gw:{gateway}` per gateway (sharded
//! SPUBLISH/SSUBSCRIBE on a cluster, so a message only crosses the shard
//! that owns the channel).
//!
//! Pub/Sub keeps nothing, so for confirmed publishes (normal and high
//! priority) this transport adds two things:
//!
//! - PUBLISH returns how many subscribers got the message; 0 means nobody
//!   reads that gateway's channel and the publish fails with
//!   [`TransportError::NoSubscriber`], so the router retries, falls back,
//!   and finally stores the message offline.
//! - The same pipeline appends the batch to the gateway's replay stream
//!   `sy:gw:{gateway}:replay` (capped by count, expired by age). When a
//!   subscriber lost its connection (dropped, failed over, or cut off for
//!   lagging behind `client-output-buffer-limit pubsub`) it resubscribes and
//!   re-reads that stream from just before the drop; when it fell more than
//!   `queue` messages behind in this process, it drops the excess and
//!   re-reads the same way. The inbox drops the duplicates. This covers messages a subscriber was counted for but never
//!   read. Fire-and-forget (low priority) messages are not covered.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Ack, Capabilities, Health, HealthCell, Incoming, Subscription, Transport, TransportError,
    TransportKind,
};
use crate::redis_conn::{Pushed, RedisConfig, RedisHandle};
use crate::telemetry;
use crate::topology::GatewayId;

const KIND: TransportKind = TransportKind::Redis;
/// Margin before a drop from which the replay stream is re-read, for
/// messages published just before it that were still in flight.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);
/// Replay entries read per XRANGE.
const REPLAY_CHUNK: usize = 1000;

/// `[transports.redis]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTransportConfig {
    /// `[transports.redis.connection]`: where Redis is (the same keys as
    /// `[store]`; it may point at the same Redis or another one).
    pub connection: RedisConfig,
    /// Confirmed messages are also kept this long in the target gateway's
    /// replay stream, to be re-read after a subscription gap ("0s" turns it
    /// off: a gap then loses what subscribers were counted for).
    #[serde(with = "humantime_serde")]
    pub replay_window: Duration,
    /// Messages kept per replay stream (approximately).
    pub replay_max: usize,
    /// Messages buffered per subscription; a gateway further behind has the
    /// excess dropped and re-read from the replay stream (bounding memory).
    pub queue: usize,
}

impl Default for RedisTransportConfig {
    fn default() -> Self {
        Self {
            connection: RedisConfig::default(),
            replay_window: Duration::from_secs(30),
            replay_max: 100_000,
            queue: 65_536,
        }
    }
}

/// Pub/Sub over one Redis deployment.
pub struct RedisTransport {
    redis: RedisHandle,
    config: RedisTransportConfig,
    health: std::sync::Arc<HealthCell>,
}

impl RedisTransport {
    /// Connects; fails with the URL when Redis is not there.
    pub async fn new(config: &RedisTransportConfig) -> Result<Self, TransportError> {
        let redis = RedisHandle::connect(&config.connection)
            .await
            .map_err(|e| TransportError::Connect {
                transport: KIND,
                address: e.address,
                reason: e.reason,
            })?;
        Ok(Self {
            redis,
            config: config.clone(),
            health: std::sync::Arc::new(HealthCell::new(KIND)),
        })
    }

    fn channel(&self, gateway: &GatewayId) -> String {
        self.redis.key(&["gw", &format!("{{{gateway}}}")])
    }

    fn replay_key(&self, gateway: &GatewayId) -> String {
        self.redis.key(&["gw", &format!("{{{gateway}}}"), "replay"])
    }

    fn replays(&self) -> bool {
        !self.config.replay_window.is_zero()
    }
}

/// Re-reads a gateway's replay stream from just before `dropped` into
/// `out`; returns how many were re-sent, or why reading failed.
async fn replay(
    redis: &RedisHandle,
    key: &str,
    dropped: Instant,
    window: Duration,
    out: &mpsc::Sender<Incoming>,
) -> Result<usize, redis::RedisError> {
    let mut conn = redis.conn();
    // The server's clock: stream ids are its milliseconds.
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let back = (dropped.elapsed() + REPLAY_MARGIN).min(window).as_millis() as u64;
    let mut start = format!("{}", now_ms.saturating_sub(back));
    let mut sent = 0;
    loop {
        let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(REPLAY_CHUNK)
            .query_async(&mut conn)
            .await?;
        let Some((last, _)) = entries.last() else {
            return Ok(sent);
        };
        start = format!("({last}");
        for (_, fields) in entries {
            // Fields are [e, bytes] per message of the batch, in order.
            for bytes in fields.into_iter().skip(1).step_by(2) {
                let incoming = Incoming {
                    bytes: bytes.into(),
                    ack: None,
                };
                if out.send(incoming).await.is_err() {
                    return Ok(sent);
                }
                sent += 1;
            }
        }
    }
}

/// Replays the gap that started at `dropped`, retrying while Redis may
/// still be failing over and the stream still holds the gap.
async fn replay_after_gap(
    redis: RedisHandle,
    key: String,
    dropped: Instant,
    window: Duration,
    out: mpsc::Sender<Incoming>,
    gateway: GatewayId,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match replay(&redis, &key, dropped, window, &out).await {
            Ok(n) => {
                tracing::info!(%gateway, gap = ?dropped.elapsed(), replayed = n, "replay stream re-read after a gap");
                metrics::counter!(telemetry::REDIS_REPLAYED).increment(n as u64);
                return;
            }
            Err(err) if dropped.elapsed() + delay < window => {
                tracing::warn!(%gateway, %err, "cannot re-read the replay stream yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(%gateway, %err, "cannot re-read the replay stream: messages of the gap may be lost");
                return;
            }
        }
    }
}

#[async_trait]
impl Transport for RedisTransport {
    fn kind(&self) -> TransportKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            redelivers: false,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let mut conn = self.redis.conn();
        let channel = self.channel(to);
        let mut pipe = redis::pipe();
        for bytes in batch {
            pipe.cmd(conn.publish_command())
                .arg(&channel)
                .arg(bytes.as_ref());
        }
        // Same hash tag as the channel: one slot, one pipeline on a cluster.
        let replay_key = self.replay_key(to);
        if ack == Ack::Confirmed && self.replays() && !batch.is_empty() {
            // One entry per batch (fields e, bytes, e, bytes, ...): one XADD
            // instead of one per message halved Redis's work per publish
            // (docs/BENCHMARKS.md). MAXLEN counts entries, so it is scaled
            // by this batch's size to keep about `replay_max` messages.
            let xadd = pipe
                .cmd("XADD")
                .arg(&replay_key)
                .arg("MAXLEN")
                .arg("~")
                .arg((self.config.replay_max / batch.len()).max(1))
                .arg("*");
            for bytes in batch {
                xadd.arg("e").arg(bytes.as_ref());
            }
            xadd.ignore();
            pipe.pexpire(&replay_key, self.config.replay_window.as_millis() as i64)
                .ignore();
        }
        let receivers: Vec<i64> = match pipe.query_async(&mut conn).await {
            Ok(receivers) => receivers,
            Err(err) => {
                if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                    self.health.down(&err);
                }
                return Err(TransportError::Publish {
                    transport: KIND,
                    gateway: to.clone(),
                    reason: err.to_string(),
                });
            }
        };
        self.health.up();
        if ack == Ack::Confirmed && receivers.contains(&0) {
            return Err(TransportError::NoSubscriber {
                transport: KIND,
                gateway: to.clone(),
            });
        }
        Ok(())
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let pushed = self
            .redis
            .subscribe(self.channel(me), "transport", self.config.queue)
            .await
            .map_err(|e| TransportError::Subscribe {
                transport: KIND,
                gateway: me.clone(),
                reason: e.to_string(),
            })?;
        // Live messages pass straight through (no task or channel of their
        // own: one hand-off less per message); gap replays run beside them
        // on a channel of their own.
        let (replays, replayed) = mpsc::channel(self.config.queue.max(1));
        let redis = self.redis.clone();
        let replay_key = self.replay_key(me);
        let window = self.config.replay_window;
        let health = self.health.clone();
        let gateway = me.clone();
        let live = ReceiverStream::new(pushed).filter_map(move |event| {
            let incoming = match event {
                Pushed::Message(bytes) => Some(Incoming { bytes, ack: None }),
                Pushed::Dropped => {
                    health.down(format!("subscription of {gateway} lost"));
                    None
                }
                Pushed::Resumed { gap } => {
                    health.up();
                    if !window.is_zero() {
                        // Off the live path: new messages keep flowing meanwhile.
                        tokio::spawn(replay_after_gap(
                            redis.clone(),
                            replay_key.clone(),
                            Instant::now() - gap,
                            window,
                            replays.clone(),
                            gateway.clone(),
                        ));
                    }
                    None
                }
            };
            std::future::ready(incoming)
        });
        Ok(futures::stream::select(live, ReceiverStream::new(replayed)).boxed())
    }

    fn health(&self) -> Health {
        self.health.get()
    }
}
