//! Dedupe and deliver: each arrival decoded, checked, deduped against the
//! window of seen ids, and held for the gateway while the window has room.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::StreamExt;
use futures::FutureExt;

use crate::cause::Report;
use crate::dedupe::DedupeWindow;
use crate::envelope::{now_micros, Envelope, EnvelopeError};
use crate::telemetry;
use crate::transport::Acknowledge;

use super::{Acking, Arrival, Delivery, Merged, Pending, Shared, Via};

/// Takes arrivals while the window has room: decode, dedupe, validate,
/// hold. Returns the subscriptions when the inbox is stopped, so closing it
/// can send the last acks before they go.
pub(super) async fn feed(
    shared: Arc<Shared>,
    mut merged: Merged,
    dedupe_window: usize,
) -> Option<Merged> {
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
pub(super) struct Holder {
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
pub(super) fn duplicate(shared: &Shared, original: u64, ack: Option<Box<dyn Acknowledge>>) {
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

pub(super) fn fire(shared: &Shared, ack: Option<Box<dyn Acknowledge>>) {
    if let Some(ack) = ack {
        let _ = shared.acks.send(Acking::Ack(ack));
    }
}

pub(super) fn reject(via: Via, err: &EnvelopeError) {
    let reason = match err {
        EnvelopeError::Expired { .. } => "expired",
        EnvelopeError::Compression { .. } => "compression",
        _ => "malformed",
    };
    tracing::warn!(%via, err = %Report(err), "inbox rejected a message");
    metrics::counter!(telemetry::INBOX_REJECTED, "via" => via.as_str(), "reason" => reason)
        .increment(1);
}
