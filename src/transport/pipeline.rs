//! What every broker transport does the same way: publish by enqueueing
//! every message of every target gateway in order and only then awaiting
//! the broker's confirmations, all together ([`confirm_all`]), and run a
//! subscription as a task that feeds a bounded channel and stops when the
//! subscriber drops its [`Subscription`].

use std::future::Future;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::{Incoming, Subscription, TransportError};

/// Awaits every target's confirmations together, after every message of
/// every target was enqueued (one broker round trip for a batch however
/// many gateways it spreads over, not one per gateway or per message).
/// `confirmations` pairs each with its target's index in `results`; a
/// target's first failure becomes its result.
pub(crate) async fn confirm_all<C>(
    results: &mut [Result<(), TransportError>],
    confirmations: Vec<(usize, C)>,
) where
    C: Future<Output = Result<(), TransportError>>,
{
    let confirmed = join_all(
        confirmations
            .into_iter()
            .map(|(i, confirmation)| confirmation.map(move |result| (i, result))),
    )
    .await;
    for (i, result) in confirmed {
        if let (Err(err), Ok(())) = (result, &results[i]) {
            results[i] = Err(err);
        }
    }
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
