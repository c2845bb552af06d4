//! The compression layer around a transport: envelopes at least
//! `envelope_compression.min_bytes` long are compressed before the
//! transport sees them ([`crate::envelope::compression`]); receivers open
//! them in [`crate::Envelope::decode`], so subscriptions pass through.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Ack, Capabilities, Health, Outgoing, Subscription, Transport, TransportError, TransportKind,
};
use crate::envelope::compression::{Codec, CompressionConfig};
use crate::envelope::Envelope;
use crate::telemetry;
use crate::topology::GatewayId;

/// `inner`, compressing as `config` says; `inner` itself when the codec is `none`.
pub fn wrap(inner: Arc<dyn Transport>, config: &CompressionConfig) -> Arc<dyn Transport> {
    if config.codec == Codec::None {
        return inner;
    }
    Arc::new(Compressing {
        inner,
        config: *config,
    })
}

struct Compressing {
    inner: Arc<dyn Transport>,
    config: CompressionConfig,
}

impl Compressing {
    /// The batch as it goes on the wire; borrowed when nothing is big enough.
    fn pack<'a>(&self, batch: &'a [Bytes]) -> Cow<'a, [Bytes]> {
        let min = self.config.min_bytes;
        if batch.iter().all(|b| b.len() < min) {
            return Cow::Borrowed(batch);
        }
        let (mut raw, mut wire) = (0, 0);
        let packed = batch
            .iter()
            .map(|bytes| {
                if bytes.len() < min {
                    return bytes.clone();
                }
                // Envelopes come from the router's encoder; one without an id
                // is passed on for the receiver to refuse, as uncompressed.
                let Ok(id) = Envelope::peek_id(bytes) else {
                    return bytes.clone();
                };
                let packed = self.config.pack(&id.to_bytes(), bytes);
                raw += bytes.len();
                wire += packed.len();
                packed
            })
            .collect();
        let (kind, codec) = (self.inner.kind().as_str(), self.config.codec.as_str());
        telemetry::compression(kind, codec, raw as u64, wire as u64);
        Cow::Owned(packed)
    }
}

#[async_trait]
impl Transport for Compressing {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn publish(
        &self,
        to: &GatewayId,
        batch: &[Bytes],
        ack: Ack,
    ) -> Result<(), TransportError> {
        let packed = self.pack(batch);
        self.inner.publish(to, &packed, ack).await
    }

    async fn publish_many(
        &self,
        targets: &[Outgoing<'_>],
        ack: Ack,
    ) -> Vec<Result<(), TransportError>> {
        let packed: Vec<_> = targets.iter().map(|t| self.pack(t.batch)).collect();
        let targets: Vec<Outgoing<'_>> = targets
            .iter()
            .zip(&packed)
            .map(|(t, batch)| Outgoing { to: t.to, batch })
            .collect();
        self.inner.publish_many(&targets, ack).await
    }

    async fn subscribe(&self, me: &GatewayId) -> Result<Subscription, TransportError> {
        self.inner.subscribe(me).await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    fn confirms(&self, ack: Ack) -> bool {
        self.inner.confirms(ack)
    }
}
