//! Redis Pub/Sub transport: channel `sy:gw:{gateway}` per gateway (sharded
//! SPUBLISH/SSUBSCRIBE on a cluster, so a message only crosses the shard
//! that owns the channel).
//!
//! Pub/Sub keeps nothing, so this transport adds two things:
//!
//! - PUBLISH returns how many subscribers got the message; 0 means nobody
//!   reads that gateway's channel and the publish fails with
//!   [`TransportError::NoSubscriber`], so the router retries, falls back,
//!   and finally stores the message offline. This holds at every priority
//!   (the count comes with the one round trip anyway), so a publish that
//!   returns `Ok` was taken by a subscriber: it is confirmed.
//! - For normal and high priority, the same pipeline appends the batch to
//!   the gateway's replay stream `sy:gw:{gateway}:replay` (capped by count,
//!   expired by age). When a
//!   subscriber lost its connection (dropped, failed over, or cut off for
//!   lagging behind `client-output-buffer-limit pubsub`) it resubscribes and
//!   re-reads that stream from just before the drop; when it fell more than
//!   `queue` messages behind in this process, it drops the excess and
//!   re-reads the same way. The inbox drops the duplicates. This covers
//!   messages a subscriber was counted for but never read. Low-priority
//!   messages are not in the stream: a subscriber that drops loses those it
//!   was counted for but had not read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod replay;
pub(crate) mod resume;

use replay::{replay_until_done, stream_end, From};
use resume::{unframe, PlaceAck, Positions, SharedProgress, PUBLISH_SCRIPT};

use super::{
    Ack, Acknowledge, Capabilities, Dependencies, Health, HealthCell, Incoming, Outgoing,
    Subscription, Transport, TransportError, TransportFactory, TransportKind,
};
use crate::cause::Cause;
use crate::config::problem::Problem;
use crate::config::range::{Bounded, Bounds, DAY, MAX_QUEUE, SECOND};
use crate::redis_conn::{Conn, Pushed, RedisConfig, RedisHandle};
use crate::topology::GatewayId;

const KIND: TransportKind = TransportKind::REDIS;
/// Margin before a drop from which the replay stream is re-read, for
/// messages published just before it that were still in flight.
const REPLAY_MARGIN: Duration = Duration::from_secs(1);
/// Longest a subscription waits for its predecessor in this process to
/// write where it left off.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(2);
/// Replay entries read per XRANGE.
const REPLAY_CHUNK: usize = 1000;
/// Messages per publish script call: Lua unpacks at most ~8000 values at
/// once (a gateway's XADD takes two per message).
const SCRIPT_CHUNK: usize = 1000;

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
    /// `[transports.redis.envelope_compression]`: compresses envelopes of
    /// at least `min_bytes` (off by default).
    pub envelope_compression: crate::envelope::compression::CompressionConfig,
}

impl Default for RedisTransportConfig {
    fn default() -> Self {
        Self {
            connection: RedisConfig::default(),
            replay_window: Duration::from_secs(30),
            replay_max: 100_000,
            queue: 65_536,
            envelope_compression: Default::default(),
        }
    }
}

impl Bounded for RedisTransportConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        self.connection.bounds(b, &format!("{section}.connection"));
        b.time(section, "replay_window", self.replay_window, SECOND, DAY);
        b.count(section, "replay_max", self.replay_max, 1, 10 * MAX_QUEUE);
        b.count(section, "queue", self.queue, 1, MAX_QUEUE);
        let compression = format!("{section}.envelope_compression");
        self.envelope_compression.bounds(b, &compression);
    }
}

/// Pub/Sub over one Redis deployment.
pub struct RedisTransport {
    redis: RedisHandle,
    config: RedisTransportConfig,
    health: std::sync::Arc<HealthCell>,
    publish_script: redis::Script,
    /// One slot per gateway, held by a subscription until it wrote its
    /// resume position a last time: a successor in this process waits for
    /// it, then reads where it left off.
    members: Mutex<HashMap<GatewayId, Arc<tokio::sync::Mutex<()>>>>,
    /// Where each subscription resumes, written for all of them together.
    positions: Arc<Positions>,
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
            positions: Positions::start(redis.clone(), config.replay_window),
            redis,
            config: config.clone(),
            health: std::sync::Arc::new(HealthCell::new(KIND)),
            publish_script: redis::Script::new(PUBLISH_SCRIPT),
            members: Mutex::default(),
        })
    }

    fn channel(&self, gateway: &GatewayId) -> String {
        let mut key = String::new();
        self.gateway_key(&mut key, gateway, "");
        key
    }

    fn replay_key(&self, gateway: &GatewayId) -> String {
        let mut key = String::new();
        self.gateway_key(&mut key, gateway, ":replay");
        key
    }

    fn resume_key(&self, gateway: &GatewayId) -> String {
        let mut key = String::new();
        self.gateway_key(&mut key, gateway, ":resume");
        key
    }

    /// Writes `{prefix}:gw:{gateway}{suffix}` into `key` (reused across
    /// the gateways of a publish: no allocation per gateway).
    fn gateway_key(&self, key: &mut String, gateway: &GatewayId, suffix: &str) {
        key.clear();
        key.push_str(&self.redis.config().key_prefix);
        key.push_str(":gw:{");
        key.push_str(gateway.as_str());
        key.push('}');
        key.push_str(suffix);
    }

    fn replays(&self) -> bool {
        !self.config.replay_window.is_zero()
    }
}

impl RedisTransport {
    /// Publishes every target's batch in one pipeline on `conn`: a
    /// receiver count of 0 for any of a target's messages fails that
    /// gateway with [`TransportError::NoSubscriber`].
    async fn publish_on(
        &self,
        mut conn: Conn,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let all_failed = |reason: Cause| -> Vec<Result<(), TransportError>> {
            targets
                .iter()
                .map(|t| Err(publish_failed(t.to, reason.clone())))
                .collect()
        };
        let (pipe, owners) = self.pipeline(&conn, targets, ack);
        let mut result: redis::RedisResult<Vec<redis::Value>> = pipe.query_async(&mut conn).await;
        if matches!(&result, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // First use on this server (or it restarted): load, then retry once.
            result = async {
                self.publish_script
                    .prepare_invoke()
                    .load_async(&mut conn)
                    .await?;
                pipe.query_async(&mut conn).await
            }
            .await;
        }
        let receivers = match result.and_then(|replies| receiver_counts(&replies)) {
            Ok(receivers) => receivers,
            Err(err) => {
                if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                    self.health.down(&err);
                }
                return all_failed(Cause::new(err));
            }
        };
        self.health.up();
        if receivers.len() != owners.len() {
            return all_failed(Cause::from_message(format!(
                "Redis answered {} receiver counts for {} publishes",
                receivers.len(),
                owners.len()
            )));
        }
        let mut unread = vec![false; targets.len()];
        for (count, &owner) in receivers.iter().zip(&owners) {
            unread[owner] |= *count == 0;
        }
        // PUBLISH answers with its receiver count at any priority: a
        // low-priority message nobody receives fails (and falls back) at no
        // extra cost instead of vanishing.
        targets
            .iter()
            .zip(unread)
            .map(|(t, unread)| {
                if unread {
                    Err(TransportError::NoSubscriber {
                        transport: KIND,
                        gateway: t.to.clone(),
                    })
                } else {
                    Ok(())
                }
            })
            .collect()
    }

    /// The commands publishing `targets`, and for each receiver count they
    /// answer with, the index of the target it counts: confirmed messages
    /// through the replay script (see `resume`; one count per gateway in
    /// a call), each call carrying up to [`SCRIPT_CHUNK`] messages of one
    /// or more gateways; fire-and-forget ones as plain (S)PUBLISH, one
    /// count each.
    fn pipeline(
        &self,
        conn: &Conn,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> (redis::Pipeline, Vec<usize>) {
        let mut pipe = redis::pipe();
        let mut owners = Vec::new();
        if ack != Ack::Confirmed || !self.replays() {
            let mut channel = String::new();
            for (owner, target) in targets.iter().enumerate() {
                self.gateway_key(&mut channel, target.to, "");
                for bytes in target.batch {
                    pipe.cmd(conn.publish_command())
                        .arg(&channel)
                        .arg(bytes.as_ref());
                    owners.push(owner);
                }
            }
            return (pipe, owners);
        }
        // Each gateway's batch in chunks of at most SCRIPT_CHUNK, packed in
        // order into calls of at most SCRIPT_CHUNK messages.
        let pieces: Vec<(usize, &GatewayId, &[Bytes])> = targets
            .iter()
            .enumerate()
            .flat_map(|(owner, t)| {
                t.batch
                    .chunks(SCRIPT_CHUNK)
                    .map(move |chunk| (owner, t.to, chunk))
            })
            .collect();
        let mut key = String::new();
        let mut from = 0;
        while from < pieces.len() {
            let mut until = from;
            let mut messages = 0;
            while until < pieces.len()
                && (until == from || messages + pieces[until].2.len() <= SCRIPT_CHUNK)
            {
                messages += pieces[until].2.len();
                until += 1;
            }
            let call = &pieces[from..until];
            let invocation = pipe
                .cmd("EVALSHA")
                .arg(self.publish_script.get_hash())
                .arg(call.len());
            for (_, to, _) in call {
                self.gateway_key(&mut key, to, ":replay");
                invocation.arg(&key);
            }
            invocation
                .arg(self.config.replay_window.as_millis() as u64)
                .arg(conn.publish_command())
                .arg(self.config.replay_max);
            for (owner, to, chunk) in call {
                self.gateway_key(&mut key, to, "");
                invocation.arg(&key).arg(chunk.len());
                for bytes in *chunk {
                    invocation.arg(bytes.as_ref());
                }
                owners.push(*owner);
            }
            from = until;
        }
        (pipe, owners)
    }
}

fn publish_failed(to: &GatewayId, reason: Cause) -> TransportError {
    TransportError::Publish {
        transport: KIND,
        gateway: to.clone(),
        reason,
    }
}

/// Flattens the publish replies (one integer per plain publish, one array
/// of integers per script call) into their receiver counts, in order.
fn receiver_counts(replies: &[redis::Value]) -> redis::RedisResult<Vec<i64>> {
    let mut counts = Vec::with_capacity(replies.len());
    let mut push = |value: &redis::Value| -> redis::RedisResult<()> {
        counts.push(match value {
            redis::Value::Int(n) => *n,
            value => redis::from_redis_value(value.clone())?,
        });
        Ok(())
    };
    for reply in replies {
        match reply {
            redis::Value::Array(inner) => inner.iter().try_for_each(&mut push)?,
            value => push(value)?,
        }
    }
    Ok(counts)
}

#[async_trait]
impl TransportFactory for RedisTransportConfig {
    async fn build(&self, _: &Dependencies) -> Result<Arc<dyn Transport>, TransportError> {
        let redis = Arc::new(RedisTransport::new(self).await?);
        Ok(super::compress::wrap(redis, &self.envelope_compression))
    }

    fn problems(&self, key: &str) -> Vec<Problem> {
        let connection = self.connection.problems().into_iter();
        connection
            .map(|(field, reason)| Problem {
                key: format!("{key}.connection.{field}"),
                reason,
            })
            .collect()
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
            // Within the replay window a successor subscription re-reads
            // what its predecessor's gateway had not acked.
            redelivers: self.replays(),
            direct: false,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let mut results = self
            .publish_on(self.redis.conn(), &[Outgoing { to, batch }], ack)
            .await;
        results.pop().unwrap_or(Ok(()))
    }

    /// One pipeline, and for confirmed messages one script call per
    /// 1,000 messages (Lua unpacks at most ~8,000 values), for every target together. A cluster
    /// keeps a pipeline (and a script) within one slot, and each gateway's
    /// keys are a slot of their own, so there each gateway gets its own
    /// pipeline, all sent at once over the nodes' multiplexed connections.
    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let conn = self.redis.conn();
        if conn.is_cluster() && targets.len() > 1 {
            let per_gateway = targets
                .iter()
                .map(|t| self.publish_on(conn.clone(), std::slice::from_ref(t), ack));
            return futures::future::join_all(per_gateway)
                .await
                .into_iter()
                .flatten()
                .collect();
        }
        self.publish_on(conn, targets, ack).await
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let subscribe_err = |reason: Cause| TransportError::Subscribe {
            transport: KIND,
            gateway: me.clone(),
            reason,
        };
        let pushed = self
            .redis
            .subscribe(self.channel(me), "transport", self.config.queue)
            .await
            .map_err(|e| subscribe_err(Cause::new(e)))?;
        let progress = SharedProgress::default();
        let window = self.config.replay_window;
        let replay_key = self.replay_key(me);
        // Where a predecessor of this gateway left off, read only once the
        // live subscription is in place so nothing falls between the two.
        let (resumed, resuming) = mpsc::channel(REPLAY_CHUNK);
        let (closed, on_close) = tokio::sync::oneshot::channel();
        let (written, settled) = tokio::sync::oneshot::channel();
        if self.replays() {
            let slot = self.members.lock().entry(me.clone()).or_default().clone();
            let membership = match tokio::time::timeout(PREDECESSOR_WAIT, slot.lock_owned()).await {
                Ok(membership) => Some(membership),
                Err(_) => {
                    tracing::warn!(gateway = %me, "another Redis subscription of this gateway is still open in this process; subscribing beside it");
                    None
                }
            };
            let resume_key = self.resume_key(me);
            let left_off: Option<String> = self
                .redis
                .conn()
                .get(&resume_key)
                .await
                .map_err(|e| subscribe_err(Cause::context(format!("read {resume_key}"), e)))?;
            tracing::debug!(gateway = %me, ?left_off, "where this gateway's last subscription left off");
            if left_off.is_none() {
                // A first subscription starts at the end of the stream, and
                // says so before it reads anything: a successor after a
                // crash then knows where this one began.
                let start = stream_end(&self.redis, &replay_key).await.map_err(|e| {
                    subscribe_err(Cause::context(format!("read the end of {replay_key}"), e))
                })?;
                redis::cmd("SET")
                    .arg(&resume_key)
                    .arg(&start)
                    .arg("PX")
                    .arg(window.as_millis() as u64)
                    .query_async::<()>(&mut self.redis.conn())
                    .await
                    .map_err(|e| subscribe_err(Cause::context(format!("write {resume_key}"), e)))?;
            }
            if let Some(place) = left_off {
                tokio::spawn(replay_until_done(
                    self.redis.clone(),
                    replay_key.clone(),
                    From::Place(place),
                    window,
                    progress.clone(),
                    resumed,
                    me.clone(),
                ));
            }
            tokio::spawn(self.positions.clone().keep(
                resume_key,
                progress.clone(),
                on_close,
                (membership, written),
                me.clone(),
            ));
        }
        // Live messages pass straight through (no task or channel of their
        // own: one hand-off less per message); gap replays run beside them
        // on a channel of their own.
        let (replays, replayed) = mpsc::channel(self.config.queue.max(1));
        let redis = self.redis.clone();
        let health = self.health.clone();
        let gateway = me.clone();
        let live_progress = progress.clone();
        let live = pushed.filter_map(move |event| {
            let incoming = match event {
                Pushed::Message(bytes) => Some(match unframe(&bytes) {
                    Some((place, bytes)) => {
                        live_progress.received(place);
                        Incoming {
                            bytes,
                            ack: Some(Box::new(PlaceAck {
                                progress: live_progress.clone(),
                                entry: place.entry(),
                            })),
                        }
                    }
                    None => Incoming { bytes, ack: None },
                }),
                Pushed::Dropped => {
                    health.down(format!("subscription of {gateway} lost"));
                    None
                }
                Pushed::Resumed { gap } => {
                    health.up();
                    if !window.is_zero() {
                        // After the last message received, or (none yet)
                        // from just before the drop.
                        let from = match live_progress.received_up_to() {
                            Some(place) => From::Place(place),
                            None => From::Drop(Instant::now() - gap),
                        };
                        // Off the live path: new messages keep flowing meanwhile.
                        tokio::spawn(replay_until_done(
                            redis.clone(),
                            replay_key.clone(),
                            from,
                            window,
                            live_progress.clone(),
                            replays.clone(),
                            gateway.clone(),
                        ));
                    }
                    None
                }
            };
            std::future::ready(incoming)
        });
        // The predecessor's unacked messages come first, then live traffic.
        let stream = ReceiverStream::new(resuming)
            .chain(futures::stream::select(live, ReceiverStream::new(replayed)))
            .map(move |incoming| {
                // Held by the stream: dropping the subscription drops it,
                // which writes the resume position a last time.
                let _closed = &closed;
                incoming
            });
        Ok(Subscription::settling(stream.boxed(), settled))
    }

    fn health(&self) -> Health {
        self.health.get()
    }

    /// Every publish counts its receivers, and fails if one has none.
    fn confirms(&self, _: Ack) -> bool {
        true
    }
}
