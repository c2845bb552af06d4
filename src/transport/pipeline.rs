//! What every broker transport does the same way: publish a batch by
//! enqueueing every message in order and only then awaiting the broker's
//! confirmations (one round trip per batch, not per message), and run a
//! subscription as a task that feeds a bounded channel and stops when the
//! subscriber drops its [`Subscription`].

use std::future::Future;

use bytes::Bytes;
use futures::future::try_join_all;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{Ack, Incoming, Subscription, TransportError};

/// Enqueues each message of `batch` in order with `enqueue`, which returns
/// the message's confirmation future. With [`Ack::Confirmed`] every
/// confirmation is awaited (the first error wins); with [`Ack::None`] they
/// are dropped, and the client library's bounded queue is the only limit.
pub(crate) async fn enqueue_then_confirm<E, EFut, C>(
    batch: &[Bytes],
    ack: Ack,
    mut enqueue: E,
) -> Result<(), TransportError>
where
    E: FnMut(&Bytes) -> EFut,
    EFut: Future<Output = Result<C, TransportError>>,
    C: Future<Output = Result<(), TransportError>>,
{
    let mut confirmations = Vec::with_capacity(batch.len());
    for bytes in batch {
        confirmations.push(enqueue(bytes).await?);
    }
    if ack == Ack::Confirmed {
        try_join_all(confirmations).await?;
    }
    Ok(())
}

/// Spawns `feed` with the sending half of a channel of `capacity` messages
/// and returns the receiving half as the subscription. `feed` must return
/// once the sender reports closed (the subscriber dropped the stream), so a
/// consumer never outlives its subscriber and holds no broker-side claim;
/// its return settles the subscription ([`super::Settled`]).
pub(crate) fn spawn_subscription<F, Fut>(capacity: usize, feed: F) -> Subscription
where
    F: FnOnce(mpsc::Sender<Incoming>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (settled, on_settled) = oneshot::channel();
    let feeding = feed(tx);
    tokio::spawn(async move {
        feeding.await;
        let _ = settled.send(());
    });
    Subscription::settling(ReceiverStream::new(rx).boxed(), on_settled)
}
