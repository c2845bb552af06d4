//! The demo's traffic: a sending phase over every router, what the routers
//! reported of it, and the receivers that count what arrived.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use switchyard::cause::Report;
use switchyard::envelope::{now_micros, Envelope};
use switchyard::inbox::{Inbox, Via};
use switchyard::policy::{Policy, Route};
use switchyard::router::{Outcome, Router};
use switchyard::topology::{GatewayId, GatewayInfo, Region};

use super::{DemoError, DemoOptions, Seen};
use crate::bench::new_histogram;

/// What one sending phase did, as the routers reported it.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) sent: BTreeMap<(String, String), u64>,
    pub(super) publishes: BTreeMap<String, u64>,
    pub(super) offline: BTreeMap<String, u64>,
    pub(super) blocked: u64,
}

/// One task per gateway sends its messages in chunks, in order, so
/// per-pair order holds; open loop at the configured rate.
pub(super) async fn send_phase(
    routers: &[Router],
    per_gateway: Vec<Vec<Envelope>>,
    options: &DemoOptions,
    on_sent: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Tally, DemoError> {
    let n_gw = routers.len();
    let batch = options.batch.max(1);
    let mut senders = Vec::new();
    for (router, envelopes) in routers.iter().cloned().zip(per_gateway) {
        let on_sent = on_sent.clone();
        let mut pacer = (options.rate > 0).then(|| {
            let per_gateway = (options.rate as f64 / n_gw as f64).max(1.0);
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(batch as f64 / per_gateway));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            tick
        });
        senders.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut errors = Vec::new();
            let mut chunks = envelopes.into_iter().peekable();
            while chunks.peek().is_some() {
                if let Some(pacer) = pacer.as_mut() {
                    pacer.tick().await;
                }
                let mut chunk: Vec<Envelope> = chunks.by_ref().take(batch).collect();
                // Latency counts from the hand-off to the router, not from planning.
                let now = now_micros();
                for envelope in &mut chunk {
                    envelope.created_at_micros = now;
                }
                let n = chunk.len() as u64;
                for result in router.send_batch(chunk).await {
                    match result {
                        Ok(r) => tally.count(r.outcome),
                        Err(err) => errors.push(Report(&err).to_string()),
                    }
                }
                on_sent(n);
            }
            if let Some(first) = errors.first() {
                tracing::error!(count = errors.len(), first = %first, "sends failed");
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for sender in senders {
        let Ok(tally) = sender.await else {
            return Err(DemoError::Options("a sender task panicked".into()));
        };
        total.merge(tally);
    }
    Ok(total)
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Blocked => self.blocked += 1,
            Outcome::Routed {
                targets,
                stored_offline,
            } => {
                for t in targets {
                    let via = t.result.map_or("failed", |v| v.as_str());
                    *self
                        .sent
                        .entry((t.route.as_str().into(), via.into()))
                        .or_default() += 1;
                    *self.publishes.entry(via.into()).or_default() += 1;
                    if let Some(mirror) = t.mirrored {
                        *self.publishes.entry(mirror.as_str().into()).or_default() += 1;
                    }
                }
                if let Some(reason) = stored_offline {
                    *self.offline.entry(reason.as_str().into()).or_default() += 1;
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, n) in other.sent {
            *self.sent.entry(k).or_default() += n;
        }
        for (k, n) in other.publishes {
            *self.publishes.entry(k).or_default() += n;
        }
        for (k, n) in other.offline {
            *self.offline.entry(k).or_default() += n;
        }
        self.blocked += other.blocked;
    }
}

/// Waits until `target` deliveries arrived, or nothing arrived for `idle`.
pub(super) async fn settle(received: &AtomicU64, target: u64, idle: Duration) {
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while last < target && last_change.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

pub(super) async fn receive(
    mut inbox: Inbox,
    me: GatewayInfo,
    region_of: Arc<HashMap<GatewayId, Region>>,
    seen: Arc<Mutex<Seen>>,
    received: Arc<AtomicU64>,
) {
    while let Some(delivery) = inbox.recv().await {
        inbox.ack(delivery.seq);
        let envelope = &delivery.envelope;
        // Every sender is one of the demo's gateways; one that is not
        // would be another region's as far as the route goes.
        let route = match region_of.get(&envelope.sender_gateway) {
            Some(from) => Policy::route(
                &GatewayInfo::new(envelope.sender_gateway.clone(), from.clone()),
                &me.id,
                &me.region,
            ),
            None => Route::CrossRegion,
        };
        let mut seen = seen.lock();
        *seen.counts.entry(envelope.id).or_default() += 1;
        if delivery.via != Via::Offline {
            let pair = (envelope.sender.clone(), envelope.destination.clone());
            match seen.last_of_pair.get(&pair) {
                Some(last) if *last > envelope.id => seen.out_of_order += 1,
                _ => {
                    seen.last_of_pair.insert(pair, envelope.id);
                }
            }
        }
        let histogram = seen
            .latency
            .entry((route, delivery.via))
            .or_insert_with(new_histogram);
        // Saturate rather than fail on an absurd latency (clock skew).
        histogram.saturating_record(delivery.latency.as_micros() as u64);
        received.fetch_add(1, Ordering::Relaxed);
    }
}
