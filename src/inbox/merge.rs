//! Subscribe: every transport subscription and the router's in-process
//! channel merged into one stream of arrivals.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{BoxStream, Stream, StreamExt};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::transport::{Incoming, Settled, Subscription, TransportKind};

use super::Handed;

/// Something that arrived for this gateway.
pub(super) enum Arrival {
    Wire(TransportKind, Incoming),
    Handed(Handed),
}

/// Every subscription and the router's channel as one stream, polled in
/// turn from where the last item came (so none starves). A handful of
/// streams: cheaper per item than `select_all`, which re-queues a future
/// per stream for every item.
pub(super) struct Merged {
    streams: Vec<BoxStream<'static, Arrival>>,
    next: usize,
}

impl Stream for Merged {
    type Item = Arrival;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arrival>> {
        let this = self.get_mut();
        'again: loop {
            let len = this.streams.len();
            if len == 0 {
                return Poll::Ready(None);
            }
            for step in 0..len {
                let i = (this.next + step) % len;
                match this.streams[i].poll_next_unpin(cx) {
                    Poll::Ready(Some(arrival)) => {
                        this.next = (i + 1) % len;
                        return Poll::Ready(Some(arrival));
                    }
                    // An ended stream is not polled again.
                    Poll::Ready(None) => {
                        drop(this.streams.swap_remove(i));
                        this.next = 0;
                        continue 'again;
                    }
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    }
}

impl Merged {
    /// The subscriptions' streams and the router's channel (`local`), and
    /// what completes once each subscription's transport has settled.
    pub(super) fn new(
        subscriptions: Vec<(TransportKind, Subscription)>,
        local: mpsc::Receiver<Handed>,
    ) -> (Self, Vec<Settled>) {
        let mut settled = Vec::with_capacity(subscriptions.len());
        let mut wire = Vec::with_capacity(subscriptions.len() + 1);
        for (kind, subscription) in subscriptions {
            let (stream, settles) = subscription.into_parts();
            settled.push(settles);
            wire.push(
                stream
                    .map(move |incoming| Arrival::Wire(kind, incoming))
                    .boxed(),
            );
        }
        wire.push(ReceiverStream::new(local).map(Arrival::Handed).boxed());
        let merged = Self {
            streams: wire,
            next: 0,
        };
        (merged, settled)
    }
}
