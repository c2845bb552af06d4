//! The gateway's half of an Attach stream, for Rust gateways that use a
//! sidecar over gRPC (and for `switchyard bench` and the tests): attach,
//! read deliveries, ack them, and heartbeat.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{IntoRequest, Request, Status, Streaming};

use crate::proto::{self, attach_message::Kind, gateway_client::GatewayClient};
use crate::router::KeepAlive;

/// Calls Heartbeat for `gateway` every `every` until the guard is dropped,
/// as a gateway process does, so its registration and its users' sessions
/// outlive their TTLs. A failed beat is logged; the next one tries again.
pub fn keep_alive(client: &GatewayClient<Channel>, gateway: &str, every: Duration) -> KeepAlive {
    let (client, gateway) = (client.clone(), gateway.to_owned());
    KeepAlive::spawn(every, move || {
        let (mut client, gateway_id) = (client.clone(), gateway.clone());
        async move {
            let beat = proto::HeartbeatRequest {
                gateway_id: gateway_id.clone(),
            };
            if let Err(status) = client.heartbeat(beat).await {
                tracing::warn!(gateway = %gateway_id, error = status.message(), "heartbeat failed");
            }
        }
    })
}

/// An open Attach stream: deliveries in, acks out.
pub struct Attachment {
    deliveries: Streaming<proto::Delivery>,
    acks: mpsc::UnboundedSender<proto::AttachMessage>,
}

impl Attachment {
    /// Opens an Attach stream with `request` (metadata such as the bearer
    /// token travels with it).
    pub async fn open(
        client: &mut GatewayClient<Channel>,
        request: impl IntoRequest<proto::AttachRequest>,
    ) -> Result<Self, Status> {
        let (metadata, extensions, attach) = request.into_request().into_parts();
        let (acks, rx) = mpsc::unbounded_channel();
        let first = proto::AttachMessage {
            kind: Some(Kind::Attach(attach)),
        };
        let outgoing =
            futures::stream::once(async { first }).chain(UnboundedReceiverStream::new(rx));
        let deliveries = client
            .attach(Request::from_parts(metadata, extensions, outgoing))
            .await?
            .into_inner();
        Ok(Self { deliveries, acks })
    }

    /// The next delivery; `None` when the sidecar ended the stream normally,
    /// an error status when it ended it otherwise (UNAVAILABLE: it is
    /// shutting down).
    pub async fn next(&mut self) -> Result<Option<proto::Delivery>, Status> {
        self.deliveries.message().await
    }

    /// Acks every delivery up to and including `seq`.
    pub fn ack(&self, seq: u64) {
        // Err: the stream is gone; the sidecar redelivers what was unacked.
        let _ = self.acks.send(proto::AttachMessage {
            kind: Some(Kind::Ack(proto::Ack { seq })),
        });
    }
}
