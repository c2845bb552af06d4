//! In-process transport: one bounded queue per gateway address. The embedded
//! default and the transport of single-node deployments.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    Ack, Capabilities, Dependencies, Health, Incoming, Outgoing, Subscription, Transport,
    TransportError, TransportFactory, TransportKind,
};
use crate::cause::Cause;
use crate::config::range::{Bounded, Bounds, MAX_QUEUE};
use crate::topology::GatewayId;

/// `[transports.memory]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Messages queued per gateway before publishers wait (or, for
    /// fire-and-forget, fail over to the next transport).
    pub queue: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self { queue: 65_536 }
    }
}

impl Bounded for MemoryConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        b.count(section, "queue", self.queue, 1, MAX_QUEUE);
    }
}

/// Queues shared by every router in the process.
pub struct MemoryTransport {
    queue: usize,
    inboxes: Arc<Mutex<HashMap<GatewayId, mpsc::Sender<Incoming>>>>,
}

#[async_trait]
impl TransportFactory for MemoryConfig {
    async fn build(&self, _: &Dependencies) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(Arc::new(MemoryTransport::new(self)))
    }
}

impl MemoryTransport {
    /// An empty hub.
    pub fn new(config: &MemoryConfig) -> Self {
        // In process, so never down; reported like every transport's health
        // so a dashboard of `switchyard_transport_up` misses none.
        super::record_up(TransportKind::MEMORY, true);
        Self {
            queue: config.queue.max(1),
            inboxes: Arc::default(),
        }
    }

    fn sender(&self, to: &GatewayId) -> Result<mpsc::Sender<Incoming>, TransportError> {
        self.inboxes
            .lock()
            .get(to)
            .cloned()
            .ok_or_else(|| Self::no_subscriber(to))
    }

    /// Puts `batch` on one gateway's queue. Confirmed publishes wait for
    /// room (backpressure instead of a drop), one reservation per
    /// queue-full of the batch, and only when the queue is full;
    /// fire-and-forget ones fail over instead of waiting.
    async fn enqueue(
        &self,
        sender: &mpsc::Sender<Incoming>,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let incoming = |bytes: &Bytes| Incoming {
            bytes: bytes.clone(),
            ack: None,
        };
        match ack {
            Ack::Confirmed => {
                for chunk in batch.chunks(self.queue) {
                    let permits = match sender.try_reserve_many(chunk.len()) {
                        Ok(permits) => permits,
                        Err(mpsc::error::TrySendError::Full(())) => sender
                            .reserve_many(chunk.len())
                            .await
                            .map_err(|_| Self::no_subscriber(to))?,
                        Err(mpsc::error::TrySendError::Closed(())) => {
                            return Err(Self::no_subscriber(to))
                        }
                    };
                    for (permit, bytes) in permits.zip(chunk) {
                        permit.send(incoming(bytes));
                    }
                }
            }
            Ack::None => {
                for bytes in batch {
                    sender.try_send(incoming(bytes)).map_err(|e| match e {
                        mpsc::error::TrySendError::Closed(_) => Self::no_subscriber(to),
                        mpsc::error::TrySendError::Full(_) => TransportError::Publish {
                            transport: TransportKind::MEMORY,
                            gateway: to.clone(),
                            reason: Cause::from_message(format!(
                                "queue full ({} messages)",
                                self.queue
                            )),
                        },
                    })?;
                }
            }
        }
        Ok(())
    }

    fn no_subscriber(to: &GatewayId) -> TransportError {
        TransportError::NoSubscriber {
            transport: TransportKind::MEMORY,
            gateway: to.clone(),
        }
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::MEMORY
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            redelivers: false,
            direct: false,
        }
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let sender = self.sender(to)?;
        self.enqueue(&sender, to, batch, ack).await
    }

    /// One lock for every target's queue, and no wait while they have room.
    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let senders: Vec<Option<mpsc::Sender<Incoming>>> = {
            let inboxes = self.inboxes.lock();
            targets.iter().map(|t| inboxes.get(t.to).cloned()).collect()
        };
        let mut results = Vec::with_capacity(targets.len());
        for (target, sender) in targets.iter().zip(senders) {
            results.push(match sender {
                Some(sender) => self.enqueue(&sender, target.to, target.batch, ack).await,
                None => Err(Self::no_subscriber(target.to)),
            });
        }
        results
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let (tx, rx) = mpsc::channel(self.queue);
        // A gateway that subscribes again (restart) takes over its address.
        self.inboxes.lock().insert(me.clone(), tx);
        Ok(Subscription::new(ReceiverStream::new(rx).boxed()))
    }

    fn health(&self) -> Health {
        Health::Up
    }

    /// Every publish lands in the receiving gateway's queue, or fails.
    fn confirms(&self, _: Ack) -> bool {
        true
    }
}
