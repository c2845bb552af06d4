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
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

mod ack;
mod feed;
mod merge;
pub(crate) mod replay;

use ack::{send_acks, Acking};
use feed::feed;
use merge::{Arrival, Merged};

use crate::envelope::Envelope;
use crate::telemetry;
use crate::transport::{Acknowledge, Settled, Subscription, TransportKind};

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

/// The gateway's side of the receive path: take deliveries, ack them.
pub struct Inbox {
    shared: Arc<Shared>,
    /// The feeding task; it returns the subscriptions when told to stop.
    feeder: Option<JoinHandle<Option<Merged>>>,
    settled: Vec<Settled>,
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
        self.ready(|state| {
            let delivery = state.pending.get(state.next)?.delivery.clone();
            state.next += 1;
            Some(delivery)
        })
        .await
    }

    /// Every delivery ready now, up to `limit`, appended to `into` once at
    /// least one is: a burst taken with one wake and one lock. Returns how
    /// many; 0 once the inbox is closed and everything was handed out.
    pub async fn recv_many(&mut self, into: &mut Vec<Delivery>, limit: usize) -> usize {
        self.ready(|state| {
            let n = (state.pending.len() - state.next).min(limit);
            if n == 0 {
                return None;
            }
            let ready = state.pending.range(state.next..state.next + n);
            into.extend(ready.map(|pending| pending.delivery.clone()));
            state.next += n;
            Some(n)
        })
        .await
        .unwrap_or(0)
    }

    /// Waits until `take` finds something to hand out; `None` once the
    /// inbox closed with nothing left.
    async fn ready<T>(&mut self, mut take: impl FnMut(&mut State) -> Option<T>) -> Option<T> {
        loop {
            let readable = self.shared.readable.notified();
            {
                let mut state = self.shared.state.lock();
                if let Some(taken) = take(&mut state) {
                    return Some(taken);
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
    let (merged, settled) = Merged::new(subscriptions, local);
    tokio::spawn(send_acks(ack_rx));
    let feeder = tokio::spawn(feed(shared.clone(), merged, dedupe_window));
    Inbox {
        shared,
        feeder: Some(feeder),
        settled,
    }
}
