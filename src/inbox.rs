//! The receive path: subscribe to this gateway's address on every enabled
//! transport, merge the streams, drop malformed bytes and duplicates, and
//! deliver to the gateway in arrival order (which keeps each transport's
//! per-pair order).

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use std::sync::Arc;

use crate::dedupe::DedupeWindow;
use crate::envelope::{now_micros, Envelope, EnvelopeError};
use crate::policy::live::LivePolicy;
use crate::telemetry;
use crate::transport::{Incoming, Subscription, TransportKind};

/// How a delivered message reached this gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// Sender and recipient share this gateway.
    Local,
    /// Over a transport.
    Transport(TransportKind),
    /// Replayed from the offline store when the user came online.
    Offline,
}

impl Via {
    /// The name used in metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Local => "local",
            Via::Transport(kind) => kind.as_str(),
            Via::Offline => "offline",
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message for this gateway to hand to its connections.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message. For a group message the gateway fans out to its members.
    pub envelope: Envelope,
    /// How it arrived.
    pub via: Via,
    /// From the envelope's creation to acceptance by this inbox.
    pub latency: Duration,
}

/// The gateway's side of the receive path.
pub struct Inbox {
    deliveries: mpsc::Receiver<Delivery>,
}

impl Inbox {
    /// The next delivery; `None` once the router is gone.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// Polls for the next delivery, for callers that wrap the inbox in a
    /// stream of their own and want it back afterwards (the sidecar does).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.deliveries.poll_recv(cx)
    }

    /// The deliveries as a stream.
    pub fn into_stream(self) -> ReceiverStream<Delivery> {
        ReceiverStream::new(self.deliveries)
    }
}

/// Something that arrived for this gateway.
enum Arrival {
    Wire(TransportKind, Incoming),
    Decoded(Via, Envelope),
}

/// Starts the inbox task over `subscriptions` and the router's in-process
/// channel (`local`, for local and offline deliveries).
pub(crate) fn spawn(
    policy: Arc<LivePolicy>,
    subscriptions: Vec<(TransportKind, Subscription)>,
    local: mpsc::Receiver<(Via, Envelope)>,
    dedupe_window: usize,
    queue: usize,
) -> Inbox {
    let (tx, deliveries) = mpsc::channel(queue);
    let wire = subscriptions.into_iter().map(|(kind, sub)| {
        sub.map(move |incoming| Arrival::Wire(kind, incoming))
            .boxed()
    });
    let local = ReceiverStream::new(local)
        .map(|(via, env)| Arrival::Decoded(via, env))
        .boxed();
    let mut merged = stream::select_all(wire.chain(std::iter::once(local)));
    tokio::spawn(async move {
        let mut window = DedupeWindow::new(dedupe_window);
        let mut latencies = telemetry::DeliveryLatency::default();
        while let Some(arrival) = merged.next().await {
            let (via, decoded, ack) = match arrival {
                Arrival::Wire(kind, incoming) => (
                    Via::Transport(kind),
                    Envelope::decode(incoming.bytes),
                    incoming.ack,
                ),
                Arrival::Decoded(via, env) => (via, Ok(env), None),
            };
            let accepted = match decoded {
                Ok(envelope) => {
                    accept(&mut window, &mut latencies, &policy, via, envelope, &tx).await
                }
                Err(err) => {
                    reject(via, &err);
                    Ok(())
                }
            };
            if accepted.is_err() {
                // The gateway dropped its inbox: leave the message unacked so
                // a durable transport redelivers it to the next subscriber.
                break;
            }
            if let Some(ack) = ack {
                if let Err(err) = ack.ack().await {
                    tracing::warn!(%via, %err, "ack failed; the message may be redelivered (and deduped)");
                }
            }
        }
    });
    Inbox { deliveries }
}

fn reject(via: Via, err: &EnvelopeError) {
    let reason = match err {
        EnvelopeError::Expired { .. } => "expired",
        _ => "malformed",
    };
    tracing::warn!(%via, %err, "inbox rejected a message");
    metrics::counter!(telemetry::INBOX_REJECTED, "via" => via.as_str(), "reason" => reason)
        .increment(1);
}

async fn accept(
    window: &mut DedupeWindow,
    latencies: &mut telemetry::DeliveryLatency,
    policy: &LivePolicy,
    via: Via,
    envelope: Envelope,
    tx: &mpsc::Sender<Delivery>,
) -> Result<(), ()> {
    if !window.insert(envelope.id) {
        metrics::counter!(telemetry::INBOX_DUPLICATES, "via" => via.as_str()).increment(1);
        return Ok(());
    }
    let now = now_micros();
    // Bytes from the wire were never validated by this process: a message
    // past its ttl, or without a sender, is refused here, counted and logged.
    if let Err(err) = envelope.validate(usize::MAX, now) {
        reject(via, &err);
        return Ok(());
    }
    let latency =
        Duration::from_micros(now.saturating_sub(envelope.created_at_micros).max(0) as u64);
    latencies.record(via.as_str(), latency);
    if let Via::Transport(kind) = via {
        policy.record_delivery(kind, latency);
    }
    tx.send(Delivery {
        envelope,
        via,
        latency,
    })
    .await
    .map_err(|_| ())
}
