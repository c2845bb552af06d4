//! Ack: transport acks sent one after another, in the order the gateway
//! acked, so a durable transport's position only moves past what was seen.

use tokio::sync::{mpsc, oneshot};

use crate::cause::Report;
use crate::transport::Acknowledge;

/// Work for the acking task.
pub(super) enum Acking {
    Ack(Box<dyn Acknowledge>),
    /// Answered once every ack queued before it was sent.
    Barrier(oneshot::Sender<()>),
}

/// Sends transport acks one after another, in the order the gateway acked.
pub(super) async fn send_acks(mut acks: mpsc::UnboundedReceiver<Acking>) {
    while let Some(acking) = acks.recv().await {
        match acking {
            Acking::Ack(ack) => {
                if let Err(err) = ack.ack().await {
                    tracing::warn!(err = %Report(&err), "transport ack failed; the message may be redelivered (and deduped)");
                }
            }
            Acking::Barrier(passed) => {
                let _ = passed.send(());
            }
        }
    }
}
