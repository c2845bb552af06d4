//! The Peer API: the receiving end of direct links. Each batch is handed to
//! the target gateway's queue in the `grpc` transport and acked once the
//! gateway acked every message of it, in batch order. Batches behind one
//! that waits for its gateway keep flowing (up to `IN_FLIGHT`).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::cause::Report;
use crate::proto::{self, peer_server::Peer};
use crate::topology::GatewayId;
use crate::transport::grpc::PeerLinks;
use crate::transport::TransportError;

/// Acks buffered per link before the receiver stops reading batches.
const ACK_QUEUE: usize = 256;
/// Batches per link waiting for their gateway's acks before the receiver
/// stops reading more.
const IN_FLIGHT: usize = 1024;

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
        let Some(PeerLinks(links)) = self.shared.backends.extension().cloned() else {
            return Err(Status::failed_precondition(
                "direct links are off here: no [transports.grpc] section",
            ));
        };
        let mut batches = request.into_inner();
        let mut stopping = self.shared.stopping.clone();
        // Draining, batches still waiting for their gateway's acks get as long
        // as the gateways' Attach streams take acks; then the link closes and
        // the sender falls back for them.
        let grace = self.shared.settings.load().sidecar.drain_timeout / 2;
        let (acks, rx) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(async move {
            let mut waiting = FuturesOrdered::new();
            let mut reading = true;
            let give_up = tokio::time::sleep(Duration::MAX);
            tokio::pin!(give_up);
            while reading || !waiting.is_empty() {
                tokio::select! {
                    batch = batches.next(), if reading && waiting.len() < IN_FLIGHT => {
                        let batch = match batch {
                            Some(Ok(batch)) => batch,
                            Some(Err(status)) => {
                                tracing::debug!(%status, "peer link ended with an error");
                                break;
                            }
                            None => {
                                reading = false;
                                continue;
                            }
                        };
                        let seq = batch.seq;
                        let report = |e: TransportError| Report(&e).to_string();
                        // A bad id refuses the batch; the sender falls back.
                        let acked = match GatewayId::parse("to_gateway", &batch.to_gateway) {
                            Ok(to) => links.accept(&to, batch.envelopes).await.map_err(report),
                            Err(err) => Err(err.to_string()),
                        };
                        waiting.push_back(async move {
                            let result = match acked {
                                Ok(acked) => acked.await.map_err(report),
                                Err(err) => Err(err),
                            };
                            (seq, result)
                        });
                    }
                    // Draining: stop taking batches; the sender falls back.
                    _ = async { drop(stopping.wait_for(|stop| *stop).await) }, if reading => {
                        reading = false;
                        give_up.as_mut().reset(tokio::time::Instant::now() + grace);
                    }
                    () = &mut give_up => break,
                    Some((seq, result)) = waiting.next() => {
                        let error = result.err().unwrap_or_default();
                        if acks.send(Ok(proto::PeerAck { seq, error })).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
