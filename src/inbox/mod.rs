//! The receive path: subscribe to this gateway's address on every enabled
//! transport, merge the streams, drop malformed bytes and duplicates,
//! deliver to the gateway in arrival order (which keeps each transport's
//! per-pair order), and ack the transport only once the gateway acked.
//!
//! Every delivery carries a sequence number, increasing by one per delivery
//! of this inbox. The gateway acks cumulatively ([`Inbox::ack`]): acking
//! `seq` acks it and everything handed out before it. Until then the inbox
//! keeps the delivery, and the transport is not acked for it (no Kafka
//! offset committed past it, no JetStream ack, the Redis resume position
//! left before it, the offline entry kept). At most `limits.inbox_queue`
//! deliveries are held; past that the inbox stops reading its
//! subscriptions, so backpressure reaches the transports, not memory.
//! [`Inbox::redeliver`] hands every unacked delivery out again, oldest
//! first, before anything new: what a gateway that re-attaches needs.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

pub(crate) mod replay;

use crate::dedupe::DedupeWindow;
use crate::envelope::{now_micros, Envelope, EnvelopeError};
use crate::telemetry;
use crate::transport::{Acknowledge, Incoming, Settled, Subscription, TransportKind};

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
    /// Its place in this inbox, for [`Inbox::ack`]. A redelivered message
    /// keeps its sequence number.
    pub seq: u64,
}

/// Something the router hands to the inbox directly: a local delivery, or
/// an offline message with the ack that removes it from the store.
pub(crate) struct Handed {
    pub(crate) via: Via,
    pub(crate) envelope: Envelope,
    pub(crate) ack: Option<Box<dyn Acknowledge>>,
}

/// A delivery the gateway has not acked yet, with the transport acks that
/// wait for it (its own, and those of duplicates that arrived meanwhile).
struct Pending {
    delivery: Delivery,
    acks: Vec<Box<dyn Acknowledge>>,
}

#[derive(Default)]
struct State {
    /// Unacked deliveries, oldest first; `pending[i].seq == first + i`.
    pending: VecDeque<Pending>,
    /// The sequence number of `pending[0]` (or of the next delivery).
    first: u64,
    /// Index in `pending` of the next delivery to hand out.
    next: usize,
    /// Payload and header bytes of `pending` (`Envelope::size`).
    bytes: usize,
    /// The feeding task ended (every subscription and the router are gone).
    closed: bool,
    /// The gateway dropped its [`Inbox`]: stop reading, ack nothing more.
    gone: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Something to hand out (new, redelivered) or the inbox closed.
    readable: Notify,
    /// The gateway acked (room in the window) or dropped the inbox.
    writable: Notify,
    /// Transport acks to send, in ack order.
    acks: mpsc::UnboundedSender<Acking>,
    capacity: usize,
    /// The window in bytes; one delivery is always let in, however large.
    max_bytes: usize,
    /// Resolved on first use (a recorder installed after the inbox was
    /// built still counts), not per ack: `counter!` is a registry lookup.
    acked: OnceLock<metrics::Counter>,
}

/// Work for the acking task.
enum Acking {
    Ack(Box<dyn Acknowledge>),
    /// Answered once every ack queued before it was sent.
    Barrier(oneshot::Sender<()>),
}

/// The gateway's side of the receive path: take deliveries, ack them.
pub struct Inbox {
    shared: Arc<Shared>,
    /// The feeding task; it returns the subscriptions when told to stop.
    feeder: Option<JoinHandle<Option<Merged>>>,
    settled: Vec<Settled>,
}

/// Every subscription and the router's channel as one stream, polled in
/// turn from where the last item came (so none starves). A handful of
/// streams: cheaper per item than `select_all`, which re-queues a future
/// per stream for every item.
struct Merged {
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

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Inbox")
            .field("unacked", &state.next)
            .field("queued", &(state.pending.len() - state.next))
            .finish()
    }
}

impl Inbox {
    /// The next delivery; `None` once the router and every subscription are
    /// gone and everything was handed out.
    pub async fn recv(&mut self) -> Option<Delivery> {
        loop {
            let readable = self.shared.readable.notified();
            {
                let mut state = self.shared.state.lock();
                if let Some(pending) = state.pending.get(state.next) {
                    let delivery = pending.delivery.clone();
                    state.next += 1;
                    return Some(delivery);
                }
                if state.closed {
                    return None;
                }
            }
            readable.await;
        }
    }

    /// Acks `seq` and every delivery handed out before it: the inbox forgets
    /// them and acks their transports. Sequence numbers not handed out yet,
    /// or acked already, are ignored, so a late or repeated ack is harmless.
    pub fn ack(&self, seq: u64) {
        let mut state = self.shared.state.lock();
        let Some(upto) = seq.checked_sub(state.first).map(|i| i + 1) else {
            return;
        };
        let count = (upto.min(state.next as u64)) as usize;
        if count == 0 {
            return;
        }
        let held = &mut *state;
        for pending in held.pending.drain(..count) {
            held.bytes -= pending.delivery.envelope.size();
            for ack in pending.acks {
                // Err: the acking task is gone with the subscriptions.
                let _ = self.shared.acks.send(Acking::Ack(ack));
            }
        }
        state.first += count as u64;
        state.next -= count;
        drop(state);
        self.shared
            .acked
            .get_or_init(|| metrics::counter!(telemetry::INBOX_ACKED))
            .increment(count as u64);
        self.shared.writable.notify_one();
    }

    /// Hands out every unacked delivery again, oldest first, before any new
    /// one: for a gateway that lost what it had taken (its stream dropped,
    /// its process restarted). Returns how many will be redelivered.
    pub fn redeliver(&self) -> usize {
        let mut state = self.shared.state.lock();
        let again = state.next;
        state.next = 0;
        drop(state);
        if again > 0 {
            metrics::counter!(telemetry::INBOX_REDELIVERED).increment(again as u64);
        }
        self.shared.readable.notify_one();
        again
    }

    /// Deliveries handed out and not acked yet.
    pub fn unacked(&self) -> usize {
        self.shared.state.lock().next
    }

    /// Stops reading, sends the transport acks of everything the gateway
    /// acked, then unsubscribes and waits until every transport settled
    /// (Kafka offsets committed, the Redis resume position written). What
    /// was not acked stays with the transports for the next subscriber. A
    /// plain drop does the same without waiting.
    pub async fn close(mut self) {
        self.stop();
        let merged = match self.feeder.take() {
            Some(feeder) => feeder.await.ok().flatten(),
            None => None,
        };
        let (barrier, passed) = oneshot::channel();
        if self.shared.acks.send(Acking::Barrier(barrier)).is_ok() {
            let _ = passed.await;
        }
        drop(merged);
        for settled in std::mem::take(&mut self.settled) {
            settled.wait().await;
        }
    }

    fn stop(&self) {
        self.shared.state.lock().gone = true;
        self.shared.writable.notify_one();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Unacked deliveries are dropped unacked: a durable transport
        // redelivers them to the next subscriber.
        self.stop();
    }
}

/// Something that arrived for this gateway.
enum Arrival {
    Wire(TransportKind, Incoming),
    Handed(Handed),
}

/// Starts the inbox over `subscriptions` and the router's in-process
/// channel (`local`, for local and offline deliveries).
pub(crate) fn spawn(
    subscriptions: Vec<(TransportKind, Subscription)>,
    local: mpsc::Receiver<Handed>,
    dedupe_window: usize,
    capacity: usize,
    max_bytes: usize,
) -> Inbox {
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            first: 1,
            ..State::default()
        }),
        readable: Notify::new(),
        writable: Notify::new(),
        acks,
        capacity: capacity.max(1),
        max_bytes,
        acked: OnceLock::new(),
    });
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
    let merged = Merged {
        streams: wire,
        next: 0,
    };
    tokio::spawn(send_acks(ack_rx));
    let feeder = tokio::spawn(feed(shared.clone(), merged, dedupe_window));
    Inbox {
        shared,
        feeder: Some(feeder),
        settled,
    }
}

/// Sends transport acks one after another, in the order the gateway acked.
async fn send_acks(mut acks: mpsc::UnboundedReceiver<Acking>) {
    while let Some(acking) = acks.recv().await {
        match acking {
            Acking::Ack(ack) => {
                if let Err(err) = ack.ack().await {
                    tracing::warn!(%err, "transport ack failed; the message may be redelivered (and deduped)");
                }
            }
            Acking::Barrier(passed) => {
                let _ = passed.send(());
            }
        }
    }
}

/// Takes arrivals while the window has room: decode, dedupe, validate,
/// hold. Returns the subscriptions when the inbox is stopped, so closing it
/// can send the last acks before they go.
async fn feed(shared: Arc<Shared>, mut merged: Merged, dedupe_window: usize) -> Option<Merged> {
    let mut holder = Holder {
        window: DedupeWindow::new(dedupe_window),
        latencies: telemetry::DeliveryLatency::default(),
        next_seq: 1,
        shared: shared.clone(),
    };
    'feeding: loop {
        // Wait for room before reading on: unread messages stay with the
        // transports (and their brokers), not in this process.
        let writable = loop {
            let writable = shared.writable.notified();
            let (gone, room) = {
                let state = shared.state.lock();
                let room = state.pending.is_empty()
                    || (state.pending.len() < shared.capacity && state.bytes < shared.max_bytes);
                (state.gone, room)
            };
            if gone {
                return Some(merged);
            }
            if room {
                break writable;
            }
            writable.await;
        };
        let arrival = tokio::select! {
            arrival = merged.next() => arrival,
            // Only a dropped inbox wakes this while there is room.
            () = writable => continue,
        };
        let Some(arrival) = arrival else {
            break;
        };
        let mut held = holder.take(arrival);
        let mut handed = held.is_some();
        // Whatever else is ready, while there is room, without a wait (and
        // a waiter registered and dropped) and a wake-up per message.
        while held.is_none_or(|room| room) {
            match merged.next().now_or_never() {
                Some(Some(arrival)) => {
                    held = holder.take(arrival).or(held);
                    handed |= held.is_some();
                }
                Some(None) => {
                    if handed {
                        shared.readable.notify_one();
                    }
                    break 'feeding;
                }
                None => break,
            }
        }
        if handed {
            shared.readable.notify_one();
        }
    }
    shared.state.lock().closed = true;
    shared.readable.notify_one();
    None
}

/// What the feeding task keeps between arrivals.
struct Holder {
    window: DedupeWindow,
    latencies: telemetry::DeliveryLatency,
    /// The sequence number of the next held delivery (`State::first`
    /// starts at 1). Only this task appends, and an ack moves `first` and
    /// the queue's length together, so it is known without the lock.
    next_seq: u64,
    shared: Arc<Shared>,
}

impl Holder {
    /// Decodes, validates and dedupes one arrival and holds it for the
    /// gateway; returns whether the window has room for more then, `None`
    /// if this one was not held (malformed, expired, a duplicate).
    fn take(&mut self, arrival: Arrival) -> Option<bool> {
        let shared = &*self.shared;
        let (via, decoded, ack) = match arrival {
            Arrival::Wire(kind, incoming) => (
                Via::Transport(kind),
                Envelope::decode(incoming.bytes),
                incoming.ack,
            ),
            Arrival::Handed(handed) => (handed.via, Ok(handed.envelope), handed.ack),
        };
        let envelope = match decoded {
            Ok(envelope) => envelope,
            Err(err) => {
                // Unreadable now is unreadable on redelivery too: ack it away.
                reject(via, &err);
                fire(shared, ack);
                return None;
            }
        };
        let now = now_micros();
        // Bytes from the wire were never validated by this process: a message
        // past its ttl, or without a sender, is refused here, counted and
        // logged (before dedupe, so only held deliveries enter the window).
        if let Err(err) = envelope.check_arrival(now) {
            reject(via, &err);
            fire(shared, ack);
            return None;
        }
        let seq = self.next_seq;
        if let Err(original) = self.window.insert_tagged(envelope.id, seq) {
            metrics::counter!(telemetry::INBOX_DUPLICATES, "via" => via.as_str()).increment(1);
            duplicate(shared, original, ack);
            return None;
        }
        self.next_seq += 1;
        let latency =
            Duration::from_micros(now.saturating_sub(envelope.created_at_micros).max(0) as u64);
        self.latencies.record(via.as_str(), latency);
        let mut state = shared.state.lock();
        debug_assert_eq!(seq, state.first + state.pending.len() as u64);
        state.bytes += envelope.size();
        state.pending.push_back(Pending {
            delivery: Delivery {
                envelope,
                via,
                latency,
                seq,
            },
            acks: ack.into_iter().collect(),
        });
        Some(state.pending.len() < shared.capacity && state.bytes < shared.max_bytes)
    }
}

/// A duplicate's transport ack waits for the original (sequence number
/// `original`) while the gateway has not acked that yet (acking it now
/// could commit past the only copy); otherwise it goes at once.
fn duplicate(shared: &Shared, original: u64, ack: Option<Box<dyn Acknowledge>>) {
    let Some(ack) = ack else { return };
    let mut state = shared.state.lock();
    // Below `first`: the original was acked already.
    if let Some(index) = original.checked_sub(state.first) {
        if let Some(pending) = state.pending.get_mut(index as usize) {
            pending.acks.push(ack);
            return;
        }
    }
    drop(state);
    fire(shared, Some(ack));
}

fn fire(shared: &Shared, ack: Option<Box<dyn Acknowledge>>) {
    if let Some(ack) = ack {
        let _ = shared.acks.send(Acking::Ack(ack));
    }
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
