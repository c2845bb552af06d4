//! How envelope bytes travel between gateways: the [`Transport`] trait, the
//! set of enabled transports, and the factory that builds them from config.
//!
//! Each transport owns one logical address per gateway and maps it its own
//! way (a channel, a topic, a subject). Nothing outside this module names a
//! backend: the router only sees [`TransportKind`] values chosen by policy.

mod catalog;
pub mod compress;
#[cfg(feature = "grpc")]
pub mod grpc;
#[cfg(feature = "kafka")]
pub mod kafka;
mod kind;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "kafka", feature = "nats"))]
mod pipeline;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use parking_lot::Mutex;

use crate::cause::Cause;
use crate::telemetry;

use crate::topology::GatewayId;
pub use catalog::{Dependencies, TransportFactory, TransportsConfig};
pub use kind::{KindError, TransportKind};

/// Whether a publish waits for the transport to confirm it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Return once the bytes are handed to the client library (some
    /// transports confirm anyway: see [`Transport::confirms`]).
    None,
    /// Return once the broker (or the receiving queue) confirmed every message,
    /// and fail if the transport knows nobody will read them.
    Confirmed,
}

/// What went wrong on a transport, and where.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The transport cannot reach its backend.
    #[error("{transport}: cannot connect to {address}")]
    Connect {
        /// The transport.
        transport: TransportKind,
        /// The address it tried.
        address: String,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// The message was accepted but nobody is subscribed to read it, and the
    /// transport keeps nothing (a publish that would be lost).
    #[error("{transport}: nobody is subscribed to the address of gateway {gateway}")]
    NoSubscriber {
        /// The transport.
        transport: TransportKind,
        /// The target gateway.
        gateway: GatewayId,
    },
    /// A publish failed.
    #[error("{transport}: publish to gateway {gateway} failed")]
    Publish {
        /// The transport.
        transport: TransportKind,
        /// The target gateway.
        gateway: GatewayId,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// The transport did not confirm a publish in time.
    #[error("{transport}: publish to gateway {gateway} not confirmed within {after:?}")]
    Timeout {
        /// The transport.
        transport: TransportKind,
        /// The target gateway.
        gateway: GatewayId,
        /// The configured `delivery.publish_timeout`.
        after: std::time::Duration,
    },
    /// As many publishes as `delivery.publishes_in_flight` allows were
    /// already in flight on the transport: this one was refused at once.
    #[error("{transport}: {limit} publishes in flight already (delivery.publishes_in_flight); the one to gateway {gateway} was shed")]
    Overloaded {
        /// The transport.
        transport: TransportKind,
        /// The target gateway.
        gateway: GatewayId,
        /// The configured bound.
        limit: usize,
    },
    /// Subscribing to a gateway's address failed.
    #[error("{transport}: subscribe for gateway {gateway} failed")]
    Subscribe {
        /// The transport.
        transport: TransportKind,
        /// The subscribing gateway.
        gateway: GatewayId,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// Acknowledging a received message failed (it will be redelivered).
    #[error("{transport}: ack failed")]
    Ack {
        /// The transport.
        transport: TransportKind,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// Removing an offline message the gateway acked failed (it will be
    /// replayed again on the user's next connect).
    #[error("offline store: removing acked message {id} of user {user} failed")]
    OfflineAck {
        /// The user whose queue it is.
        user: crate::topology::UserId,
        /// The message.
        id: crate::envelope::MessageId,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// Policy named a transport that is not enabled in config.
    #[error("transport {0} is not enabled in config (add a [transports.{0}] section)")]
    NotEnabled(TransportKind),
}

/// Confirms to a durable transport that the gateway acked a message, so it
/// is not redelivered. Transports without redelivery send no ack.
#[async_trait]
pub trait Acknowledge: Send {
    /// Marks the message as consumed.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
}

/// One message as it arrived on a subscription.
pub struct Incoming {
    /// The envelope bytes, exactly as published.
    pub bytes: Bytes,
    /// Present when the transport redelivers unacknowledged messages.
    pub ack: Option<Box<dyn Acknowledge>>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("len", &self.bytes.len())
            .field("ack", &self.ack.is_some())
            .finish()
    }
}

/// The stream of messages published to one gateway's address. Transports
/// reconnect and resubscribe inside it; it ends only when the transport
/// closes. Dropping it unsubscribes; the [`Settled`] half of
/// [`Subscription::into_parts`] completes once the transport has settled
/// what was acked (Kafka offsets committed and the group left, the Redis
/// resume position written): what [`crate::Inbox::close`] waits for.
pub struct Subscription {
    stream: BoxStream<'static, Incoming>,
    settled: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Subscription {
    /// A subscription with nothing to settle when it closes.
    pub fn new(stream: BoxStream<'static, Incoming>) -> Self {
        Self {
            stream,
            settled: None,
        }
    }

    /// The same subscription with its stream passed through `f` (what
    /// settles it is kept).
    #[cfg(feature = "regions")]
    pub(crate) fn map_stream(
        self,
        f: impl FnOnce(BoxStream<'static, Incoming>) -> BoxStream<'static, Incoming>,
    ) -> Self {
        Self {
            stream: f(self.stream),
            settled: self.settled,
        }
    }

    /// A subscription whose transport signals `settled` (or drops it) once
    /// it has settled after the stream was dropped.
    pub fn settling(
        stream: BoxStream<'static, Incoming>,
        settled: tokio::sync::oneshot::Receiver<()>,
    ) -> Self {
        Self {
            stream,
            settled: Some(settled),
        }
    }

    /// The stream, and what completes once the transport settled after it
    /// is dropped.
    pub fn into_parts(self) -> (BoxStream<'static, Incoming>, Settled) {
        (self.stream, Settled(self.settled))
    }
}

/// Completes once a dropped subscription's transport has settled.
pub struct Settled(Option<tokio::sync::oneshot::Receiver<()>>);

impl Settled {
    /// Waits for it (an error means the transport's task ended: settled).
    pub async fn wait(self) {
        if let Some(settled) = self.0 {
            let _ = settled.await;
        }
    }
}

impl futures::Stream for Subscription {
    type Item = Incoming;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Incoming>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// What a transport promises, so tests and policy know what to expect of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Messages published while nobody subscribes are kept until someone does.
    pub durable: bool,
    /// Messages to one address arrive in publish order.
    pub ordered: bool,
    /// Unacknowledged messages are delivered again.
    pub redelivers: bool,
    /// A link straight to the target gateway's node, no broker between:
    /// what hot pairs are promoted to.
    pub direct: bool,
}

/// One gateway's part of a publish to several gateways at once.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The target gateway.
    pub to: &'a GatewayId,
    /// Its encoded envelopes, in order.
    pub batch: &'a [Bytes],
}

/// One way of moving envelopes between gateways.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Which transport this is.
    fn kind(&self) -> TransportKind;

    /// What this transport promises.
    fn capabilities(&self) -> Capabilities;

    /// Publishes encoded envelopes, in order, to one gateway's address.
    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError>;

    /// Publishes to several gateways at once, each batch in order; one
    /// result per target, in `targets` order. A sender's batch of 1:1
    /// messages spreads over many gateways, so broker transports override
    /// this to carry every gateway's messages in one round trip (one
    /// pipeline, one flush); the default publishes to each concurrently.
    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        futures::future::join_all(targets.iter().map(|t| self.publish(t.to, t.batch, ack))).await
    }

    /// Subscribes to this gateway's own address.
    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError>;

    /// Whether the transport can currently reach its backend.
    fn health(&self) -> Health;

    /// Whether a publish with `ack` that returned `Ok` was accepted by
    /// something that will deliver it (the broker's ack, the receiving
    /// queue, a subscriber), rather than only handed to the client
    /// library's send queue. With [`Ack::Confirmed`] always true; with
    /// [`Ack::None`] only where the one round trip says so anyway.
    fn confirms(&self, ack: Ack) -> bool {
        ack == Ack::Confirmed
    }
}

/// Up or down, with the reason it went down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Reachable.
    Up,
    /// Not reachable; the reason is the last error seen.
    Down(String),
}

/// Sets the `switchyard_transport_up` gauge of `kind`.
pub(crate) fn record_up(kind: TransportKind, up: bool) {
    metrics::gauge!(telemetry::TRANSPORT_UP, "transport" => kind.as_str()).set(if up {
        1.0
    } else {
        0.0
    });
}

/// Shared up/down state a transport updates as it sees its backend, exported
/// as the `switchyard_transport_up` gauge.
#[derive(Debug)]
pub struct HealthCell {
    kind: TransportKind,
    up: AtomicBool,
    reason: Mutex<String>,
}

impl HealthCell {
    /// Starts up.
    pub fn new(kind: TransportKind) -> Self {
        record_up(kind, true);
        Self {
            kind,
            up: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
        }
    }

    /// Records a success.
    pub fn up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(transport = %self.kind, "transport is up again");
            record_up(self.kind, true);
        }
    }

    /// Records a failure to reach the backend.
    pub fn down(&self, reason: impl fmt::Display) {
        *self.reason.lock() = reason.to_string();
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(transport = %self.kind, %reason, "transport is down");
            record_up(self.kind, false);
        }
    }

    /// The current state.
    pub fn get(&self) -> Health {
        if self.up.load(Ordering::Relaxed) {
            Health::Up
        } else {
            Health::Down(self.reason.lock().clone())
        }
    }
}

/// The transports enabled in config, built once at start-up.
#[derive(Clone, Default)]
pub struct Transports {
    by_kind: BTreeMap<TransportKind, Arc<dyn Transport>>,
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.by_kind.keys()).finish()
    }
}

impl Transports {
    /// Adds (or replaces) a transport.
    pub fn insert(&mut self, transport: Arc<dyn Transport>) {
        self.by_kind.insert(transport.kind(), transport);
    }

    /// The transport of this kind, if enabled.
    pub fn get(&self, kind: TransportKind) -> Result<&Arc<dyn Transport>, TransportError> {
        self.by_kind
            .get(&kind)
            .ok_or(TransportError::NotEnabled(kind))
    }

    /// Every enabled transport.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Transport>> {
        self.by_kind.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a dashboard of `switchyard_transport_up` shows follows what
    /// the transport saw of its backend.
    #[test]
    fn the_up_gauge_follows_the_health_cell() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle.render().lines().find_map(|line| {
                line.strip_prefix("switchyard_transport_up{transport=\"memory\"} ")
                    .map(str::to_owned)
            })
        };
        metrics::with_local_recorder(&recorder, || {
            let cell = HealthCell::new(TransportKind::MEMORY);
            assert_eq!(gauge().as_deref(), Some("1"));
            cell.down("connection refused");
            assert_eq!(gauge().as_deref(), Some("0"));
            assert_eq!(cell.get(), Health::Down("connection refused".into()));
            cell.up();
            assert_eq!(gauge().as_deref(), Some("1"));
        });
    }
}
