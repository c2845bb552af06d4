//! A transport an embedding crate adds through the public API alone: the
//! library has never heard of it. In-process, one unbounded queue of
//! batches per gateway address, so it needs no server; what it proves is that a
//! transport from outside the crate goes through the same suite, policy,
//! metrics and routers as the built-in ones.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use switchyard::transport::{
    Ack, Capabilities, Health, HealthCell, Incoming, Subscription, Transport, TransportError,
    TransportKind,
};
use switchyard::GatewayId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// The embedding crate's transport: `relay` in config and metrics.
pub struct Relay {
    kind: TransportKind,
    health: HealthCell,
    /// A batch is one item, so it lands whole or not at all: a publish
    /// that fails delivered none of it (`close_under_load`).
    addresses: Mutex<HashMap<GatewayId, mpsc::UnboundedSender<Vec<Incoming>>>>,
}

impl Relay {
    pub fn new() -> Self {
        let kind = TransportKind::named("relay").expect("a valid transport name");
        Self {
            kind,
            health: HealthCell::new(kind),
            addresses: Mutex::default(),
        }
    }
}

#[async_trait]
impl Transport for Relay {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            redelivers: false,
            direct: false,
        }
    }

    /// Lands on the gateway's queue or fails: nothing is kept for a
    /// gateway that is not subscribed.
    async fn publish(&self, to: &GatewayId, batch: &[Bytes], _: Ack) -> Result<(), TransportError> {
        let nobody = || TransportError::NoSubscriber {
            transport: self.kind,
            gateway: to.clone(),
        };
        let sender = self
            .addresses
            .lock()
            .expect("addresses lock")
            .get(to)
            .cloned()
            .ok_or_else(nobody)?;
        let batch = batch
            .iter()
            .map(|bytes| Incoming {
                bytes: bytes.clone(),
                ack: None,
            })
            .collect();
        sender.send(batch).map_err(|_| nobody())
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // A gateway that subscribes again takes over its address.
        self.addresses
            .lock()
            .expect("addresses lock")
            .insert(me.clone(), tx);
        let messages = UnboundedReceiverStream::new(rx).flat_map(futures::stream::iter);
        Ok(Subscription::new(messages.boxed()))
    }

    fn health(&self) -> Health {
        self.health.get()
    }

    /// Every publish that returns `Ok` is on the gateway's queue.
    fn confirms(&self, _: Ack) -> bool {
        true
    }
}
