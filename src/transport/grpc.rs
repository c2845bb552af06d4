//! Direct gRPC links between sidecars (the Peer API in `proto/`), used for
//! hot gateway pairs: no broker hop. The sending half keeps one long-lived
//! bidirectional stream per peer address (looked up in the [`Registry`]) and
//! waits for the peer's ack per batch; the receiving half is a set of
//! per-gateway queues that the sidecar's Peer service feeds through
//! [`GrpcTransport::accept`].
//!
//! A link that fails is marked down for `retry_after`, so publishes fail at
//! once and the router falls through to the route's broker transport. When
//! the last [`DOWN_AFTER`] link attempts all failed, the transport reports
//! itself down (policy then puts it last) until `retry_after` has passed
//! since the latest failure, when the next attempt may probe again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use super::{
    Ack, Acknowledge, Capabilities, Dependencies, Health, Incoming, Subscription, Transport,
    TransportError, TransportFactory, TransportKind,
};
use crate::cause::{Cause, Report};
use crate::config::range::{Bounded, Bounds, HOUR, MAX_QUEUE, MINUTE, MS};
use crate::proto::{peer_client::PeerClient, PeerBatch};
use crate::registry::Registry;
use crate::telemetry;
use crate::topology::GatewayId;

/// `[transports.grpc]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// How long opening a link to a peer sidecar may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// After a link fails, publishes to that peer fail at once (and fall back)
    /// for this long before a new link is tried.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Messages queued per local gateway, and batches in flight per link.
    pub queue: usize,
    /// `[transports.grpc.envelope_compression]`: compresses envelopes of
    /// at least `min_bytes` (off by default).
    pub envelope_compression: crate::envelope::compression::CompressionConfig,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            queue: 4096,
            envelope_compression: Default::default(),
        }
    }
}

impl Bounded for GrpcConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        b.time(section, "connect_timeout", self.connect_timeout, MS, MINUTE);
        b.time(section, "retry_after", self.retry_after, MS, HOUR);
        b.count(section, "queue", self.queue, 1, MAX_QUEUE);
        let compression = format!("{section}.envelope_compression");
        self.envelope_compression.bounds(b, &compression);
    }
}

/// Consecutive failed link attempts, over all peers, after which the
/// transport reports itself down.
pub const DOWN_AFTER: u32 = 3;

/// Replies to batches sent on a link, by sequence number.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>>;

/// One open link to a peer sidecar.
struct Link {
    batches: mpsc::Sender<PeerBatch>,
    pending: Pending,
    next_seq: AtomicU64,
    /// Set by the ack reader when the stream ends.
    closed: Arc<AtomicBool>,
}

enum LinkState {
    Open(Arc<Link>),
    Failed {
        until: Instant,
        reason: Cause,
        /// Failures in a row of this peer.
        failures: u32,
    },
}

/// Failed link attempts in a row over all peers (any open link resets it).
#[derive(Default)]
struct Failures {
    in_a_row: u32,
    latest: Option<(Instant, String)>,
}

/// The `grpc` transport.
pub struct GrpcTransport {
    config: GrpcConfig,
    registry: Arc<dyn Registry>,
    /// `authorization` value presented to peers (`sidecar.peer_token`).
    token: Mutex<Option<String>>,
    /// TLS for links (`sidecar.tls`); plaintext when absent.
    tls: Mutex<Option<ClientTlsConfig>>,
    links: Mutex<HashMap<String, LinkState>>,
    failures: Mutex<Failures>,
    /// Receiving half: queues of the gateways attached in this process.
    inboxes: Mutex<HashMap<GatewayId, mpsc::Sender<Incoming>>>,
}

impl GrpcTransport {
    /// A transport that finds peers' addresses in `registry`.
    pub fn new(config: &GrpcConfig, registry: Arc<dyn Registry>) -> Self {
        super::record_up(TransportKind::GRPC, true);
        Self {
            config: GrpcConfig {
                queue: config.queue.max(1),
                ..config.clone()
            },
            registry,
            token: Mutex::new(None),
            tls: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            failures: Mutex::default(),
            inboxes: Mutex::new(HashMap::new()),
        }
    }

    /// Sets the bearer token presented to peer sidecars.
    pub fn set_peer_token(&self, token: Option<String>) {
        *self.token.lock() = token;
    }

    /// Sets the TLS used for links opened from now on.
    pub fn set_tls(&self, tls: Option<ClientTlsConfig>) {
        *self.tls.lock() = tls;
    }

    /// Receiving half: hands envelopes a peer sent to a local gateway's queue,
    /// waiting while it is full (backpressure reaches the sending sidecar).
    /// Returns what completes once the gateway acked every one of them: the
    /// sending sidecar may report them delivered only then, since nothing
    /// here survives this process.
    pub async fn accept(
        &self,
        to: &GatewayId,
        envelopes: Vec<Bytes>,
    ) -> Result<impl std::future::Future<Output = Result<(), TransportError>>, TransportError> {
        let no_subscriber = || TransportError::NoSubscriber {
            transport: TransportKind::GRPC,
            gateway: to.clone(),
        };
        let queue = self
            .inboxes
            .lock()
            .get(to)
            .cloned()
            .ok_or_else(no_subscriber)?;
        let mut acked = Vec::with_capacity(envelopes.len());
        for bytes in envelopes {
            let (ack, done) = oneshot::channel();
            queue
                .send(Incoming {
                    bytes,
                    ack: Some(Box::new(GatewayAck(ack))),
                })
                .await
                .map_err(|_| no_subscriber())?;
            acked.push(done);
        }
        let gateway = to.clone();
        Ok(async move {
            for done in acked {
                // Err: the inbox dropped it unacked (the gateway went away).
                done.await.map_err(|_| TransportError::Publish {
                    transport: TransportKind::GRPC,
                    gateway: gateway.clone(),
                    reason: Cause::from_message("the gateway went away before acking"),
                })?;
            }
            Ok(())
        })
    }

    fn publish_error(to: &GatewayId, reason: Cause) -> TransportError {
        TransportError::Publish {
            transport: TransportKind::GRPC,
            gateway: to.clone(),
            reason,
        }
    }

    /// The open link to `address`, opening one unless a recent failure says
    /// to fall back instead.
    async fn link(&self, address: &str) -> Result<Arc<Link>, Cause> {
        match self.links.lock().get(address) {
            Some(LinkState::Open(link)) if !link.closed.load(Ordering::Acquire) => {
                return Ok(link.clone())
            }
            Some(LinkState::Failed { until, reason, .. }) if Instant::now() < *until => {
                return Err(Cause::context(
                    format!("link to {address} is down"),
                    reason.clone(),
                ));
            }
            _ => {}
        }
        match self.open(address).await {
            Ok(link) => {
                let link = Arc::new(link);
                let failed = std::mem::take(&mut *self.failures.lock());
                if failed.in_a_row >= DOWN_AFTER {
                    super::record_up(TransportKind::GRPC, true);
                }
                self.links
                    .lock()
                    .insert(address.to_owned(), LinkState::Open(link.clone()));
                Ok(link)
            }
            Err(reason) => {
                self.fail(address, &reason);
                Err(Cause::context(format!("link to {address} is down"), reason))
            }
        }
    }

    fn fail(&self, address: &str, reason: &Cause) {
        metrics::counter!(telemetry::PEER_LINK_FAILURES).increment(1);
        let now = Instant::now();
        let mut links = self.links.lock();
        let failures = match links.get(address) {
            Some(LinkState::Failed { failures, .. }) => failures + 1,
            _ => 1,
        };
        tracing::warn!(%address, reason = %Report(reason), failures, "direct link failed; falling back to the route's transport");
        links.insert(
            address.to_owned(),
            LinkState::Failed {
                until: now + self.config.retry_after,
                reason: reason.clone(),
                failures,
            },
        );
        let mut all = self.failures.lock();
        all.in_a_row += 1;
        all.latest = Some((now, format!("{address}: {}", Report(reason))));
        // The gauge stays 0 from here until a link opens again (health()
        // lets the policy probe again after `retry_after`).
        if all.in_a_row == DOWN_AFTER {
            super::record_up(TransportKind::GRPC, false);
        }
    }

    async fn open(&self, address: &str) -> Result<Link, Cause> {
        let tls = self.tls.lock().clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| Cause::context("bad peer address", e))?
            .connect_timeout(self.config.connect_timeout);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Cause::context("TLS setup failed", e))?;
        }
        let channel = tokio::time::timeout(self.config.connect_timeout, endpoint.connect())
            .await
            .map_err(|_| {
                Cause::from_message(format!(
                    "connect timed out after {:?}",
                    self.config.connect_timeout
                ))
            })?
            .map_err(|e| Cause::context("connect failed", e))?;
        let (batches, rx) = mpsc::channel(self.config.queue);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = self.token.lock().as_deref() {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Cause::from_message("sidecar.peer_token is not valid header text"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut acks = PeerClient::new(channel)
            .link(request)
            .await
            .map_err(|status| {
                Cause::from_message(format!("peer refused the link: {}", status.message()))
            })?
            .into_inner();
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (reader_pending, reader_closed) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            let reason = loop {
                match acks.next().await {
                    Some(Ok(ack)) => {
                        if let Some(reply) = reader_pending.lock().remove(&ack.seq) {
                            let result = if ack.error.is_empty() {
                                Ok(())
                            } else {
                                Err(ack.error)
                            };
                            // The publisher may have timed out and left.
                            let _ = reply.send(result);
                        }
                    }
                    Some(Err(status)) => break format!("link broke: {}", status.message()),
                    None => break "peer closed the link".to_string(),
                }
            };
            reader_closed.store(true, Ordering::Release);
            for (_, reply) in reader_pending.lock().drain() {
                let _ = reply.send(Err(reason.clone()));
            }
        });
        Ok(Link {
            batches,
            pending,
            next_seq: AtomicU64::new(0),
            closed,
        })
    }
}

/// The receiving half of direct links, which the sidecar's Peer API feeds
/// with what peers send: the transport itself, left by its factory in the
/// backends' extensions ([`crate::Backends::extension`]).
#[derive(Clone)]
pub struct PeerLinks(pub Arc<GrpcTransport>);

/// Also leaves the transport in [`Dependencies::extensions`] as
/// [`PeerLinks`], once however often it is built.
#[async_trait]
impl TransportFactory for GrpcConfig {
    async fn build(&self, deps: &Dependencies) -> Result<Arc<dyn Transport>, TransportError> {
        let links = deps
            .extensions
            .lock()
            .get_or_insert_with(|| {
                PeerLinks(Arc::new(GrpcTransport::new(self, deps.registry.clone())))
            })
            .0
            .clone();
        Ok(super::compress::wrap(links, &self.envelope_compression))
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::GRPC
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            redelivers: false,
            direct: true,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let info = self
            .registry
            .get(to)
            .await
            .map_err(|e| Self::publish_error(to, Cause::context("registry lookup failed", e)))?
            .ok_or_else(|| {
                Self::publish_error(to, Cause::from_message("gateway is not registered"))
            })?;
        if info.address.is_empty() {
            return Err(Self::publish_error(
                to,
                Cause::from_message("gateway has no peer address"),
            ));
        }
        let link = self
            .link(&info.address)
            .await
            .map_err(|reason| Self::publish_error(to, reason))?;
        let seq = link.next_seq.fetch_add(1, Ordering::Relaxed);
        let reply = (ack == Ack::Confirmed).then(|| {
            let (tx, rx) = oneshot::channel();
            link.pending.lock().insert(seq, tx);
            rx
        });
        let batch = PeerBatch {
            seq,
            to_gateway: to.to_string(),
            envelopes: batch.to_vec(),
        };
        if link.batches.send(batch).await.is_err() {
            link.pending.lock().remove(&seq);
            self.fail(&info.address, &Cause::from_message("link closed"));
            return Err(Self::publish_error(
                to,
                Cause::from_message(format!("link to {} closed", info.address)),
            ));
        }
        let Some(reply) = reply else { return Ok(()) };
        let result = match reply.await {
            Ok(result) => result,
            Err(_) => Err("link closed before the ack".to_string()),
        };
        // The peer's reply, or why the link ended: text from the other side.
        result.map_err(|reason| {
            let reason = Cause::from_message(reason);
            if link.closed.load(Ordering::Acquire) {
                self.fail(&info.address, &reason);
            }
            Self::publish_error(to, reason)
        })
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let (tx, rx) = mpsc::channel(self.config.queue);
        // A gateway that attaches again takes over its queue.
        self.inboxes.lock().insert(me.clone(), tx);
        Ok(Subscription::new(ReceiverStream::new(rx).boxed()))
    }

    fn health(&self) -> Health {
        // One bad peer among good ones must not push the direct link last
        // for every pair: down only when the last few attempts all failed.
        // Up again after `retry_after`, or nothing would ever probe a link.
        let failures = self.failures.lock();
        match &failures.latest {
            Some((at, reason))
                if failures.in_a_row >= DOWN_AFTER
                    && Instant::now() < *at + self.config.retry_after =>
            {
                Health::Down(format!(
                    "the last {} direct link attempts failed; latest {reason}",
                    failures.in_a_row
                ))
            }
            _ => Health::Up,
        }
    }
}

/// Tells the peer link that the gateway acked one message.
struct GatewayAck(oneshot::Sender<()>);

#[async_trait]
impl Acknowledge for GatewayAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        // Err: the link is gone; the sender already fell back.
        let _ = self.0.send(());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;
    use crate::topology::GatewayInfo;

    /// A loopback address nothing listens on.
    fn dead_address() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        address
    }

    #[tokio::test(start_paused = true)]
    async fn down_after_failed_links_to_every_peer_and_up_again_to_probe() {
        let registry = Arc::new(MemoryRegistry::default());
        let config = GrpcConfig {
            retry_after: Duration::from_secs(30),
            ..GrpcConfig::default()
        };
        let transport = GrpcTransport::new(&config, registry.clone());
        let mut peers = Vec::new();
        for n in 0..DOWN_AFTER {
            let mut info = GatewayInfo::new(GatewayId::try_from(format!("gw-{n}")).unwrap(), "eu");
            info.address = dead_address();
            registry.register(&info).await.expect("register");
            peers.push(info.id);
        }
        let batch = [Bytes::from_static(b"x")];
        for (n, peer) in peers.iter().enumerate() {
            assert_eq!(transport.health(), Health::Up, "after {n} failures");
            assert!(transport
                .publish(peer, &batch, Ack::Confirmed)
                .await
                .is_err());
            // A failed peer fails at once: no new attempt, no new count.
            assert!(transport.publish(peer, &batch, Ack::None).await.is_err());
        }
        match transport.health() {
            Health::Down(reason) => assert!(reason.contains("last 3"), "{reason}"),
            Health::Up => panic!("up after {DOWN_AFTER} failed links"),
        }
        tokio::time::advance(config.retry_after).await;
        assert_eq!(transport.health(), Health::Up, "probing again");
    }
}
