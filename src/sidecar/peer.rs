//! The Peer API: the receiving end of direct links. Each batch is handed to
//! the target gateway's queue in the `grpc` transport and acked once
//! accepted, in order.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::proto::{self, peer_server::Peer};
use crate::topology::GatewayId;

/// Acks buffered per link before the receiver stops reading batches.
const ACK_QUEUE: usize = 256;

/// The Peer service.
pub struct PeerService {
    shared: Arc<Shared>,
}

impl PeerService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    type LinkStream = ReceiverStream<Result<proto::PeerAck, Status>>;

    async fn link(
        &self,
        request: Request<Streaming<proto::PeerBatch>>,
    ) -> Result<Response<Self::LinkStream>, Status> {
        let links = self.shared.backends.peer_links.clone().ok_or_else(|| {
            Status::failed_precondition("direct links are off here: no [transports.grpc] section")
        })?;
        let mut batches = request.into_inner();
        let mut stopping = self.shared.stopping.clone();
        let (acks, rx) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    batch = batches.next() => batch,
                    // Draining: stop taking batches; the sender falls back.
                    _ = stopping.wait_for(|stop| *stop) => None,
                };
                let batch = match batch {
                    Some(Ok(batch)) => batch,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "peer link ended with an error");
                        break;
                    }
                    None => break,
                };
                let to = GatewayId::from(batch.to_gateway);
                let error = match links.accept(&to, batch.envelopes).await {
                    Ok(()) => String::new(),
                    Err(err) => err.to_string(),
                };
                if acks
                    .send(Ok(proto::PeerAck {
                        seq: batch.seq,
                        error,
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
