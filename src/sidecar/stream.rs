//! The Attach stream: the gateway's inbox pumped to it, its acks read
//! back, and the drain when the stream ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::attached::Parked;
use crate::inbox::{Delivery, Inbox};
use crate::proto;
use crate::telemetry;
use crate::topology::GatewayId;

/// Deliveries queued for the gRPC stream; the inbox's window is the real
/// bound, this only smooths the hand-off to HTTP/2.
pub(super) const STREAM_QUEUE: usize = 256;

/// Streams the inbox to one Attach call and applies the gateway's acks.
/// When the call ends (the gateway went away, its stream broke, the sidecar
/// drains), whatever the gateway did not ack is handed out again to the
/// next Attach, and the inbox goes back to its slot.
pub(super) async fn pump(
    inbox: Inbox,
    slot: Arc<Mutex<Parked>>,
    mut acks: Streaming<proto::AttachMessage>,
    out: mpsc::Sender<Result<proto::Delivery, Status>>,
    mut stopping: watch::Receiver<bool>,
    grace: Duration,
    gateway: GatewayId,
) {
    let mut inbox = inbox;
    let mut burst = Vec::new();
    let end = loop {
        tokio::select! {
            biased;
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                drain(&inbox, &mut acks, grace).await;
                break Some(Status::unavailable("the sidecar is shutting down: attach to another one"));
            }
            message = acks.message() => match message {
                Ok(Some(proto::AttachMessage { kind: Some(proto::attach_message::Kind::Ack(ack)) })) => {
                    inbox.ack(ack.seq);
                }
                Ok(Some(_)) => {
                    break Some(Status::invalid_argument(
                        "after the AttachRequest, an Attach stream carries only acks",
                    ));
                }
                // Half-closed or broken: the gateway is gone.
                Ok(None) => break None,
                Err(status) => {
                    tracing::debug!(%gateway, %status, "attach stream broke");
                    break None;
                }
            },
            more = next_deliveries(&mut inbox, &out, &mut burst) => if !more {
                break None;
            },
        }
    };
    if let Some(status) = end {
        let _ = out.send(Err(status)).await;
    }
    let redelivered = inbox.redeliver();
    tracing::info!(%gateway, redelivered, "gateway detached");
    *slot.lock() = Parked {
        inbox: Some(inbox),
        since: Instant::now(),
    };
    metrics::gauge!(telemetry::ATTACHED_GATEWAYS).decrement(1.0);
}

/// Shutting down: hand out nothing more, and take the gateway's acks for
/// what it has until it acked everything or `grace` ran out. What stays
/// unacked is left unacked on its transport, for the next sidecar.
pub(super) async fn drain(
    inbox: &Inbox,
    acks: &mut Streaming<proto::AttachMessage>,
    grace: Duration,
) {
    let deadline = tokio::time::Instant::now() + grace;
    while inbox.unacked() > 0 {
        let message = tokio::time::timeout_at(deadline, acks.message()).await;
        match message {
            Ok(Ok(Some(proto::AttachMessage {
                kind: Some(proto::attach_message::Kind::Ack(ack)),
            }))) => inbox.ack(ack.seq),
            _ => return,
        }
    }
}

/// Waits for room on the stream, then for deliveries, and puts every one
/// ready (as many as there is room for) on the stream: a burst costs one
/// pass of the pump, not one per message. `false` when the gateway is gone
/// or the inbox closed. Both waits are cancel-safe.
pub(super) async fn next_deliveries(
    inbox: &mut Inbox,
    out: &mpsc::Sender<Result<proto::Delivery, Status>>,
    burst: &mut Vec<Delivery>,
) -> bool {
    let Ok(first) = out.reserve().await else {
        return false;
    };
    // This pump is the stream's only sender until it ends: the room seen
    // now stays free.
    let room = 1 + out.capacity();
    if inbox.recv_many(burst, room).await == 0 {
        return false;
    }
    let Ok(mut permits) = out.try_reserve_many(burst.len() - 1) else {
        return false;
    };
    let mut deliveries = burst.drain(..).map(|d| {
        Ok(proto::Delivery::encoded(
            d.envelope.encode(),
            d.via.to_string(),
            d.latency.as_micros().min(u128::from(u64::MAX)) as u64,
            d.seq,
        ))
    });
    if let Some(delivery) = deliveries.next() {
        first.send(delivery);
    }
    for (permit, delivery) in permits.by_ref().zip(deliveries) {
        permit.send(delivery);
    }
    true
}
