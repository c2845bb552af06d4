//! A sliding window of publish outcomes, in one-second slots: what the
//! canary watchdog ([`super::live`]) and the quality scores
//! ([`super::quality`]) judge a transport by.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The figures of a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// Publishes attempted.
    pub published: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which the transport confirmed (fire-and-forget publishes are not
    /// confirmed): the samples of `p99`.
    pub confirmed: u64,
    /// The p99 time from publish to the transport's confirmation.
    pub p99: Duration,
}

impl WindowStats {
    /// Failed publishes as a fraction of all (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        self.failed as f64 / self.published.max(1) as f64
    }
}

/// One publish of `n` messages, as measured by the sender.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it finished.
    pub at: Instant,
    /// Whether it succeeded.
    pub ok: bool,
    /// Messages in it.
    pub n: u64,
    /// How long the transport took to confirm it, when it did.
    pub confirmed_in: Option<Duration>,
}

/// One second of samples.
struct Slot {
    at: Instant,
    published: u64,
    failed: u64,
    latency: Histogram<u64>,
}

/// Outcomes over the last `span`.
pub(crate) struct SampleWindow {
    span: Duration,
    slots: VecDeque<Slot>,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("constant bounds are valid")
}

impl SampleWindow {
    pub(crate) fn new(span: Duration) -> Self {
        Self {
            span,
            slots: VecDeque::new(),
        }
    }

    /// Changes the span (a reload); samples older than it leave at the next call.
    pub(crate) fn set_span(&mut self, span: Duration) {
        self.span = span;
    }

    /// Records a sample.
    pub(crate) fn record(&mut self, sample: Sample) {
        let Sample {
            at: now,
            ok,
            n,
            confirmed_in,
        } = sample;
        let fresh = self
            .slots
            .back()
            .is_some_and(|s| now.saturating_duration_since(s.at) < Duration::from_secs(1));
        if !fresh {
            self.expire(now);
            self.slots.push_back(Slot {
                at: now,
                published: 0,
                failed: 0,
                latency: latency_histogram(),
            });
        }
        if let Some(slot) = self.slots.back_mut() {
            slot.published += n;
            if !ok {
                slot.failed += n;
            }
            if let Some(latency) = confirmed_in {
                let _ = slot.latency.record_n(latency.as_micros().max(1) as u64, n);
            }
        }
    }

    /// The figures of the samples within the span at `now`.
    pub(crate) fn stats(&mut self, now: Instant) -> WindowStats {
        self.expire(now);
        let mut stats = WindowStats::default();
        let mut latency = latency_histogram();
        for slot in &self.slots {
            stats.published += slot.published;
            stats.failed += slot.failed;
            let _ = latency.add(&slot.latency);
        }
        stats.confirmed = latency.len();
        stats.p99 = Duration::from_micros(latency.value_at_quantile(0.99));
        stats
    }

    /// Forgets every sample.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
    }

    fn expire(&mut self, now: Instant) {
        while self
            .slots
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > self.span)
        {
            self.slots.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_leave_the_window_after_its_span() {
        let mut w = SampleWindow::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let sample = |at, ok, n, confirmed_in| Sample {
            at,
            ok,
            n,
            confirmed_in,
        };
        w.record(sample(t0, false, 3, None));
        w.record(sample(t0, true, 7, Some(Duration::from_millis(20))));
        let stats = w.stats(t0);
        assert_eq!((stats.published, stats.failed, stats.confirmed), (10, 3, 7));
        assert!((stats.error_rate() - 0.3).abs() < 1e-9);
        assert!(stats.p99 >= Duration::from_millis(19), "{:?}", stats.p99);
        w.record(sample(t0 + Duration::from_secs(3), true, 1, None));
        assert_eq!(w.stats(t0 + Duration::from_secs(6)).published, 1);
        assert_eq!(w.stats(t0 + Duration::from_secs(9)), WindowStats::default());
    }
}
