//! The measurement loop every switchyard path shares (library routers or
//! gateways over sidecars): warm up, send on the [`Schedule`] from
//! `senders` loops at once on the load generator's thread, count what the
//! receivers see, per receiving gateway, and wait for stragglers. The
//! paths differ only in how they send a batch ([`Sender`]) and what their
//! receivers yield.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use indicatif::ProgressBar;
use tokio::runtime::Handle;

use super::generator::Generator;
use super::layout::Spread;
use super::schedule::{run_senders, Schedule, Stop};
use super::{new_histogram, BenchError, BenchOptions, Cpu, Measured, Receiver};
use switchyard::envelope::now_micros;
use switchyard::transport::TransportKind;

/// Deliveries a bench gateway takes before it acks them (with one
/// cumulative ack), on both paths.
pub(crate) const ACK_EVERY: u64 = 32;

/// Latencies a reader keeps before adding them to the run's histogram:
/// one histogram per receiving gateway was 170 KiB each, zeroed by the
/// kernel while measuring (38% of the CPU at 1,000 targets).
const LATENCY_BUFFER: usize = 1024;

/// Every reader's latencies, in one histogram.
struct Latencies {
    histogram: parking_lot::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            histogram: parking_lot::Mutex::new(new_histogram()),
        }
    }
}

impl Latencies {
    /// Adds `pending` (microseconds) and empties it.
    fn record(&self, pending: &mut Vec<u64>) {
        let mut histogram = self.histogram.lock();
        for micros in pending.drain(..) {
            histogram.saturating_record(micros);
        }
    }
}

/// How long receivers wait for stragglers after the last send.
pub(crate) const SETTLE: Duration = Duration::from_secs(10);

/// The messages of a batch a path did not accept.
#[derive(Debug, Default)]
pub(crate) struct Refused {
    /// How many.
    pub(crate) count: u64,
    /// Why the first one was refused.
    pub(crate) first: Option<String>,
}

impl Refused {
    /// Counts one refusal.
    pub(crate) fn add(&mut self, reason: impl FnOnce() -> String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(reason());
        }
    }
}

/// What a path did with one batch.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// The messages it did not accept.
    pub(crate) refused: Refused,
    /// Distinct gateways the router's reports name for the batch: the
    /// per-gateway publishes it split the batch into.
    pub(crate) gateways: u64,
}

/// The sending gateway of a path, called on the load generator's thread,
/// by several send loops at once with `--senders` above 1.
#[async_trait::async_trait]
pub(crate) trait Sender: Send + Sync {
    /// Sends one message per timestamp (its `created_at`), each to the
    /// layout's next destination.
    async fn send(&self, stamps: Vec<i64>) -> Handled;
}

/// A path ready to measure: its sender, and per receiving gateway the
/// latency of each delivery, read on `receive_on` (the routers' runtime
/// when reading is the library's work, the generator's for gRPC clients).
pub(crate) struct Ends {
    pub(crate) sender: Arc<dyn Sender>,
    pub(crate) receivers: Vec<BoxStream<'static, Duration>>,
    pub(crate) receive_on: Handle,
    /// How the layout's messages reach `receivers` (in the same order).
    pub(crate) spread: Spread,
    /// Whatever must outlive the run (receiving routers, sidecars, gateway
    /// streams, heartbeats).
    pub(crate) keep: Box<dyn Send>,
}

/// Latency of a delivery of an envelope created at `created_at_micros`,
/// measured now.
pub(crate) fn since(created_at_micros: i64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(created_at_micros).max(0) as u64)
}

/// Sends on the schedule for the configured duration and collects what
/// arrives at every receiver.
pub(crate) async fn measure(
    ends: Ends,
    kind: TransportKind,
    options: &BenchOptions,
    generator: &Generator,
    bar: &ProgressBar,
) -> Result<Measured, BenchError> {
    let Ends {
        sender,
        receivers,
        receive_on,
        spread,
        keep,
    } = ends;
    // Readers run from the start: a confirmed direct-link send waits for
    // the receivers' acks, which they send only while read (awaiting the
    // warm-up send before reading stalled it for the publish timeout, and
    // its retry delivered the warm-up message twice).
    let delivered = Arc::new(AtomicU64::new(0));
    let warmed = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Latencies::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for mut receiver in receivers {
        let (delivered, warmed, measuring) = (delivered.clone(), warmed.clone(), measuring.clone());
        let mut stopped = stopped.clone();
        let latencies = latencies.clone();
        readers.push(receive_on.spawn(async move {
            let mut last = Instant::now();
            let mut count = 0u64;
            let mut warm = false;
            let mut pending = Vec::new();
            loop {
                tokio::select! {
                    d = receiver.next() => {
                        let Some(d) = d else { break };
                        if !measuring.load(Ordering::Acquire) {
                            if !warm {
                                warm = true;
                                warmed.fetch_add(1, Ordering::Release);
                            }
                            continue;
                        }
                        pending.push(d.as_micros() as u64);
                        if pending.len() == LATENCY_BUFFER {
                            latencies.record(&mut pending);
                        }
                        last = Instant::now();
                        count += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = stopped.changed() => break,
                }
            }
            latencies.record(&mut pending);
            (last, count)
        }));
    }
    // Warm-up: one round, a delivery at every receiver (every
    // subscription, a Kafka consumer joining its group, a direct link
    // opening, is live before the clock starts), and the measured messages
    // start again at the first user.
    let warm = sender.clone();
    let warmed_up = generator
        .run(async move { warm.send(vec![now_micros(); spread.round()]).await })
        .await?;
    if let Some(reason) = warmed_up.refused.first {
        return Err(BenchError::Transport {
            transport: kind,
            reason: format!("the warm-up message was refused: {reason}"),
        });
    }
    let waited = Instant::now();
    while warmed.load(Ordering::Acquire) < readers.len() as u64 {
        if waited.elapsed() > SETTLE {
            return Err(BenchError::Transport {
                transport: kind,
                reason: format!("the warm-up message did not arrive within {SETTLE:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    measuring.store(true, Ordering::Release);
    // The router's CPU per delivery is taken over the measured window only:
    // building a fleet of 1,000 gateways is not a cost per message.
    let window = Cpu::now();
    // RSS once a second while sending: growth under a steady load is a leak.
    let (sent_all, mut sending_done) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => samples.push(super::process::rss() as f64 / (1024.0 * 1024.0)),
                _ = &mut sending_done => return samples,
            }
        }
    });
    let stop_at = match options.messages {
        Some(n) => Stop::Count(n),
        None => Stop::After(options.duration),
    };
    let schedule = Schedule::new(options.rate, options.batch, stop_at);
    let start = Instant::now();
    let (senders, looping, progress) = (options.senders, sender.clone(), bar.clone());
    let counted = delivered.clone();
    let (sent, failed, gateways_per_batch) = generator
        .run(async move {
            let failed = parking_lot::Mutex::new(Refused::default());
            let handed = AtomicU64::new(0);
            let (batches, gateways) = (AtomicU64::new(0), AtomicU64::new(0));
            let sent = run_senders(schedule, senders, |stamps| async {
                let n = stamps.len() as u64;
                let Handled {
                    refused,
                    gateways: published,
                } = looping.send(stamps).await;
                batches.fetch_add(1, Ordering::Relaxed);
                gateways.fetch_add(published, Ordering::Relaxed);
                let mut failed = failed.lock();
                failed.count += refused.count;
                failed.first = failed.first.take().or(refused.first);
                drop(failed);
                let sent = handed.fetch_add(n, Ordering::Relaxed) + n;
                progress.set_position(start.elapsed().as_millis() as u64);
                progress.set_message(format!(
                    "sent {sent}  delivered {}",
                    counted.load(Ordering::Relaxed)
                ));
                Ok::<(), std::convert::Infallible>(())
            })
            .await;
            let Ok(sent) = sent;
            let per_batch = gateways.into_inner() as f64 / batches.into_inner().max(1) as f64;
            (sent, failed.into_inner(), per_batch)
        })
        .await?;
    if let Some(first) = failed.first {
        tracing::warn!(transport = %kind, failed = failed.count, %first, "sends failed during the bench");
    }
    let _ = sent_all.send(());
    let rss_mib = sampler.await.unwrap_or_default();
    // Wait for the expected deliveries (or the settle time).
    let expected_per_gateway = spread.expected(sent);
    let expected: u64 = expected_per_gateway.iter().sum();
    let waited = Instant::now();
    while delivered.load(Ordering::Relaxed) < expected && waited.elapsed() < SETTLE {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stragglers past the settle time count as lost.
    let _ = stop.send(true);
    let mut last = start;
    let mut receivers = Vec::with_capacity(readers.len());
    for (reader, expected) in readers.into_iter().zip(expected_per_gateway) {
        // A reader that panicked saw nothing we can count.
        let delivered = match reader.await {
            Ok((at, count)) => {
                last = last.max(at);
                count
            }
            Err(_) => 0,
        };
        receivers.push(Receiver {
            delivered,
            expected,
        });
    }
    let cpu = window.since();
    let latency = std::mem::replace(&mut *latencies.histogram.lock(), new_histogram());
    drop((sender, keep));
    let mut measured = Measured::new(sent, latency, last - start);
    measured.rss_mib = rss_mib;
    measured.receivers = receivers;
    measured.gateways_per_batch = Some(gateways_per_batch);
    measured.cpu = Some(cpu);
    Ok(measured)
}
