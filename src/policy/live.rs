//! The policy of a running process: swapped atomically on reload or canary
//! change, shared by every router in the process, and watched so a canary
//! that breaks its limits is rolled back without an operator.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::canary::RollbackConfig;
use super::Policy;
use crate::config::{ConfigError, Settings};
use crate::telemetry;
use crate::transport::TransportKind;

/// Why and when the canary was rolled back (by the router itself or an operator).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    /// The share before the rollback.
    pub from_share: u8,
    /// The limit that broke, with the measured value.
    pub reason: String,
    /// Seconds since the Unix epoch.
    pub at_unix_secs: u64,
}

/// The canary transport's figures over the rollback window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CohortStats {
    /// Publishes attempted on the transport.
    pub published: u64,
    /// Of which failed.
    pub failed: u64,
    /// Deliveries received over the transport.
    pub delivered: u64,
    /// Their p99 latency.
    pub p99: Duration,
}

/// One second of samples for the canary's two transports.
struct Slot {
    at: Instant,
    /// Indexed by [`cohort_index`]: 0 = old transport, 1 = new.
    published: [u64; 2],
    failed: [u64; 2],
    latency: [Histogram<u64>; 2],
}

/// The live policy and its canary watchdog.
pub struct LivePolicy {
    policy: ArcSwap<Policy>,
    slots: Mutex<VecDeque<Slot>>,
    rollback: Mutex<Option<Rollback>>,
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("constant bounds are valid")
}

impl LivePolicy {
    /// Starts with `policy`. Call [`LivePolicy::watch`] to enable auto-rollback.
    pub fn new(policy: Policy) -> Arc<Self> {
        let live = Arc::new(Self {
            policy: ArcSwap::from_pointee(policy),
            slots: Mutex::default(),
            rollback: Mutex::default(),
        });
        live.export();
        live
    }

    /// The policy `settings` describe, watched for auto-rollback: what a
    /// process (library router, demo fleet, sidecar) starts with.
    pub fn from_settings(settings: &Settings) -> Result<Arc<Self>, ConfigError> {
        let live = Self::new(Policy::from_settings(settings).map_err(ConfigError::Invalid)?);
        live.watch();
        Ok(live)
    }

    /// The current policy.
    pub fn load(&self) -> Guard<Arc<Policy>> {
        self.policy.load()
    }

    /// Replaces the policy (reload); logs a canary change with old and new values.
    pub fn store(&self, policy: Policy) {
        let old = self.policy.swap(Arc::new(policy));
        let new = self.policy.load();
        if old.canary != new.canary {
            tracing::info!(
                old = %old.canary.as_ref().map_or("none".into(), |c| c.to_string()),
                new = %new.canary.as_ref().map_or("none".into(), |c| c.to_string()),
                "canary changed"
            );
            self.slots.lock().clear();
        }
        self.export();
    }

    /// Sets the canary share; returns the old one, or `None` if no canary is configured.
    pub fn set_share(&self, share: u8) -> Option<u8> {
        let policy = self.policy.load();
        let canary = policy.canary.as_ref()?;
        let old = canary.share;
        let mut next = Policy::clone(&policy);
        if let Some(c) = next.canary.as_mut() {
            c.share = share.min(100);
        }
        self.store(next);
        Some(old)
    }

    /// The last rollback, automatic or by an operator, if any.
    pub fn last_rollback(&self) -> Option<Rollback> {
        self.rollback.lock().clone()
    }

    /// Records publish attempts on a transport.
    pub fn record_publish(&self, kind: TransportKind, ok: bool, n: u64) {
        let Some(i) = self.cohort_index(kind) else {
            return;
        };
        self.with_slot(|slot| {
            slot.published[i] += n;
            if !ok {
                slot.failed[i] += n;
            }
        });
    }

    /// Records one delivery received over a transport.
    pub fn record_delivery(&self, kind: TransportKind, latency: Duration) {
        let Some(i) = self.cohort_index(kind) else {
            return;
        };
        self.with_slot(|slot| {
            slot.latency[i].saturating_record(latency.as_micros() as u64);
        });
    }

    /// The canary transport's figures over the window.
    pub fn canary_stats(&self) -> CohortStats {
        let Some(window) = self.rollback_config().map(|r| r.window) else {
            return CohortStats::default();
        };
        let mut slots = self.slots.lock();
        Self::expire(&mut slots, window);
        let mut stats = CohortStats::default();
        let mut latency = latency_histogram();
        for slot in slots.iter() {
            stats.published += slot.published[1];
            stats.failed += slot.failed[1];
            let _ = latency.add(&slot.latency[1]);
        }
        stats.delivered = latency.len();
        stats.p99 = Duration::from_micros(latency.value_at_quantile(0.99));
        stats
    }

    /// Checks the canary against its limits once a second while the
    /// process holds the policy; stops when it is dropped.
    pub fn watch(self: &Arc<Self>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(live) = weak.upgrade() else { return };
                live.check();
            }
        });
    }

    /// Rolls back if a limit is broken; returns the rollback it made.
    pub fn check(&self) -> Option<Rollback> {
        let policy = self.policy.load();
        let canary = policy.canary.as_ref().filter(|c| c.share > 0)?;
        let limits = policy.rollback.as_ref().filter(|r| r.enabled)?;
        let stats = self.canary_stats();
        let error_rate = stats.failed as f64 / stats.published.max(1) as f64;
        let reason = if stats.published >= limits.min_samples && error_rate > limits.max_error_rate
        {
            format!(
                "{} error rate {:.2}% over {:?} ({} of {} publishes) is above {:.2}%",
                canary.to,
                error_rate * 100.0,
                limits.window,
                stats.failed,
                stats.published,
                limits.max_error_rate * 100.0
            )
        } else if stats.delivered >= limits.min_samples && stats.p99 > limits.max_p99 {
            format!(
                "{} p99 delivery latency {:?} over {:?} is above {:?}",
                canary.to, stats.p99, limits.window, limits.max_p99
            )
        } else {
            return None;
        };
        tracing::warn!(share = canary.share, %reason, "canary rolled back to 0%");
        metrics::counter!(telemetry::CANARY_ROLLBACKS, "from" => canary.from.as_str(), "to" => canary.to.as_str())
            .increment(1);
        drop(policy);
        self.roll_back(reason)
    }

    /// Sets the share to 0 and records why (the watchdog's broken limit or an
    /// operator's reason); `None` if no canary is configured.
    pub fn roll_back(&self, reason: String) -> Option<Rollback> {
        let from_share = self.set_share(0)?;
        let rollback = Rollback {
            from_share,
            reason,
            at_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        *self.rollback.lock() = Some(rollback.clone());
        Some(rollback)
    }

    fn rollback_config(&self) -> Option<RollbackConfig> {
        self.policy.load().rollback.clone()
    }

    fn cohort_index(&self, kind: TransportKind) -> Option<usize> {
        let policy = self.policy.load();
        let canary = policy.canary.as_ref()?;
        if kind == canary.from {
            Some(0)
        } else if kind == canary.to {
            Some(1)
        } else {
            None
        }
    }

    fn with_slot(&self, f: impl FnOnce(&mut Slot)) {
        let now = Instant::now();
        let mut slots = self.slots.lock();
        let fresh = slots
            .back()
            .is_some_and(|s| now.duration_since(s.at) < Duration::from_secs(1));
        if !fresh {
            if let Some(window) = self.rollback_config().map(|r| r.window) {
                Self::expire(&mut slots, window);
            }
            slots.push_back(Slot {
                at: now,
                published: [0; 2],
                failed: [0; 2],
                latency: [latency_histogram(), latency_histogram()],
            });
        }
        if let Some(slot) = slots.back_mut() {
            f(slot);
        }
    }

    fn expire(slots: &mut VecDeque<Slot>, window: Duration) {
        while slots.front().is_some_and(|s| s.at.elapsed() > window) {
            slots.pop_front();
        }
    }

    fn export(&self) {
        let policy = self.policy.load();
        if let Some(c) = &policy.canary {
            metrics::gauge!(telemetry::CANARY_SHARE, "from" => c.from.as_str(), "to" => c.to.as_str())
                .set(f64::from(c.share));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RoutingConfig;
    use crate::policy::canary::CanaryConfig;

    fn live(share: u8, enabled: bool) -> Arc<LivePolicy> {
        let canary: CanaryConfig = toml_canary(share, enabled);
        let policy = Policy::new(
            &RoutingConfig::default(),
            Some(&canary),
            &TransportKind::ALL,
        )
        .expect("valid canary");
        LivePolicy::new(policy)
    }

    fn toml_canary(share: u8, enabled: bool) -> CanaryConfig {
        config::Config::builder()
            .add_source(config::File::from_str(
                &format!(
                    "from = \"redis\"\nto = \"kafka\"\nshare = {share}\n\
                     [rollback]\nenabled = {enabled}\nmin_samples = 100\nmax_error_rate = 0.01\nmax_p99 = \"50ms\"\n"
                ),
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("valid toml")
    }

    #[test]
    fn a_failing_canary_is_rolled_back_with_the_reason() {
        let live = live(30, true);
        live.record_publish(TransportKind::Kafka, true, 95);
        live.record_publish(TransportKind::Kafka, false, 4);
        assert_eq!(live.check(), None, "99 samples: too few to judge");
        live.record_publish(TransportKind::Kafka, false, 1);
        let rollback = live.check().expect("5% errors > 1%");
        assert_eq!(rollback.from_share, 30);
        assert!(
            rollback.reason.starts_with("kafka error rate 5.00%"),
            "{}",
            rollback.reason
        );
        assert_eq!(live.load().canary.as_ref().map(|c| c.share), Some(0));
        assert_eq!(live.last_rollback(), Some(rollback));
    }

    #[test]
    fn a_slow_canary_is_rolled_back_and_the_baseline_does_not_count() {
        let live = live(10, true);
        for _ in 0..200 {
            live.record_delivery(TransportKind::Redis, Duration::from_millis(500));
            live.record_delivery(TransportKind::Kafka, Duration::from_millis(2));
        }
        assert_eq!(live.check(), None, "only the baseline is slow");
        for _ in 0..10 {
            live.record_delivery(TransportKind::Kafka, Duration::from_millis(80));
        }
        let rollback = live.check().expect("p99 80ms > 50ms");
        assert!(rollback.reason.contains("p99"), "{}", rollback.reason);
    }

    #[test]
    fn rollback_can_be_turned_off() {
        let live = live(50, false);
        live.record_publish(TransportKind::Kafka, false, 1000);
        assert_eq!(live.check(), None);
        assert_eq!(live.load().canary.as_ref().map(|c| c.share), Some(50));
    }

    #[test]
    fn the_share_changes_at_run_time() {
        let live = live(10, true);
        assert_eq!(live.set_share(30), Some(10));
        assert_eq!(live.load().canary.as_ref().map(|c| c.share), Some(30));
    }
}
