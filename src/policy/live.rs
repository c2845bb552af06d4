//! The policy of a running process: swapped atomically on reload or canary
//! change, shared by every router in the process, and watched so a canary
//! that breaks its limits is rolled back without an operator.
//!
//! What the watchdog counts is the canary cohort only, measured where the
//! cohort is known: at the sender. The decision marks a target as in the
//! cohort ([`super::Decision::cohort`]) and the router records that target's
//! publishes on the canary transport (failed or not, and how long the
//! transport took to confirm). Traffic that takes the canary transport for
//! another reason (cross-region traffic that was on it all along, a
//! fallback) is not counted, so it can neither roll the canary back nor
//! dilute its errors. Deliveries are not counted at the receiver: it cannot
//! tell a cohort message from another without a marker in every envelope,
//! and its own watchdog steers its own sends, not the sender's.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use parking_lot::Mutex;

use super::quality::{Quality, RouteQuality};
use super::window::{Sample, SampleWindow, WindowStats};
use super::Policy;
use crate::telemetry;
use crate::topology::Region;
use crate::transport::{Health, Transport, TransportKind, Transports};

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

/// The live policy, its canary watchdog and its quality scores.
pub struct LivePolicy {
    policy: ArcSwap<Policy>,
    /// The canary cohort's publishes on the canary transport.
    cohort: Mutex<SampleWindow>,
    rollback: Mutex<Option<Rollback>>,
    /// Transports whose health the `max_down` limit reads.
    observed: Mutex<Vec<Weak<dyn Transport>>>,
    /// Since when the canary transport has been seen down, without a break.
    down_since: Mutex<Option<Instant>>,
    /// Scores and verdicts of the quality rules.
    quality: Quality,
}

impl LivePolicy {
    /// Starts with `policy`. Call [`LivePolicy::watch`] to enable auto-rollback.
    pub fn new(policy: Policy) -> Arc<Self> {
        let live = Arc::new(Self {
            cohort: Mutex::new(SampleWindow::new(
                policy
                    .rollback
                    .as_ref()
                    .map_or(Duration::ZERO, |r| r.window),
            )),
            policy: ArcSwap::from_pointee(policy),
            rollback: Mutex::default(),
            observed: Mutex::default(),
            down_since: Mutex::default(),
            quality: Quality::default(),
        });
        live.export();
        live
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
            self.cohort.lock().clear();
            *self.down_since.lock() = None;
        }
        self.cohort
            .lock()
            .set_span(new.rollback.as_ref().map_or(Duration::ZERO, |r| r.window));
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

    /// Records a publish of `n` messages of the canary cohort on `kind`, and
    /// how long the transport took to confirm it (`None` when it did not:
    /// failed or fire-and-forget). Only the canary transport's count.
    pub fn record_publish(
        &self,
        kind: TransportKind,
        ok: bool,
        n: u64,
        confirmed_in: Option<Duration>,
    ) {
        if self.policy.load().canary.as_ref().map(|c| c.to) != Some(kind) {
            return;
        }
        self.cohort.lock().record(Sample {
            at: Instant::now(),
            ok,
            n,
            confirmed_in,
        });
    }

    /// Records a publish of `n` messages on `kind` to a gateway in
    /// `region` for the quality rules that watch `kind` (either of a rule's
    /// transports); nothing when none does.
    pub fn record_quality(
        &self,
        kind: TransportKind,
        region: &Region,
        ok: bool,
        n: u64,
        confirmed_in: Option<Duration>,
    ) {
        let policy = self.policy.load();
        let span = policy
            .quality_rules()
            .iter()
            .filter(|r| r.prefer == kind || r.otherwise == kind)
            .map(|r| r.limits.window)
            .max();
        if let Some(span) = span {
            let sample = Sample {
                at: Instant::now(),
                ok,
                n,
                confirmed_in,
            };
            self.quality.record(kind, region, span, sample);
        }
    }

    /// The verdicts of the quality rules, for decisions.
    pub fn quality(&self) -> &Quality {
        &self.quality
    }

    /// Every route's quality verdict per target region seen so far.
    pub fn route_quality(&self) -> Vec<RouteQuality> {
        let policy = self.policy.load();
        self.quality.routes(policy.quality_rules(), Instant::now())
    }

    /// Reads these transports' health for the `max_down` limit (every
    /// router calls this with its own; the same transport counts once).
    pub fn observe(&self, transports: &Transports) {
        let mut observed = self.observed.lock();
        observed.retain(|t| t.strong_count() > 0);
        for transport in transports.iter() {
            let weak = Arc::downgrade(transport);
            if !observed.iter().any(|t| Weak::ptr_eq(t, &weak)) {
                observed.push(weak);
            }
        }
    }

    /// The cohort's figures on the canary transport over the rollback window.
    pub fn canary_stats(&self) -> WindowStats {
        self.cohort.lock().stats(Instant::now())
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
        let error_rate = stats.error_rate();
        let down = self.down_for(canary.to);
        let reason = if let Some((down_for, why)) =
            down.filter(|(d, _)| !limits.max_down.is_zero() && *d >= limits.max_down)
        {
            format!(
                "{} down for {:.1?} (limit {:?}): {why}",
                canary.to, down_for, limits.max_down
            )
        } else if stats.published >= limits.min_samples && error_rate > limits.max_error_rate {
            format!(
                "{} error rate {:.2}% over {:?} ({} of {} publishes) is above {:.2}%",
                canary.to,
                error_rate * 100.0,
                limits.window,
                stats.failed,
                stats.published,
                limits.max_error_rate * 100.0
            )
        } else if stats.confirmed >= limits.min_samples && stats.p99 > limits.max_p99 {
            format!(
                "{} p99 publish confirmation latency {:?} over {:?} is above {:?}",
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

    /// How long `kind` has been down without a break, and why, when every
    /// observed instance of it is down now; called by each check, so the
    /// time is measured in watchdog ticks.
    fn down_for(&self, kind: TransportKind) -> Option<(Duration, String)> {
        let healths: Vec<Health> = self
            .observed
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| t.kind() == kind)
            .map(|t| t.health())
            .collect();
        let why = healths
            .iter()
            .map(|h| match h {
                Health::Up => None,
                Health::Down(why) => Some(why.clone()),
            })
            .collect::<Option<Vec<String>>>()
            .and_then(|whys| whys.into_iter().next());
        let mut since = self.down_since.lock();
        match why {
            Some(why) => Some((since.get_or_insert_with(Instant::now).elapsed(), why)),
            None => {
                *since = None;
                None
            }
        }
    }

    fn export(&self) {
        let policy = self.policy.load();
        if let Some(c) = &policy.canary {
            metrics::gauge!(telemetry::CANARY_SHARE, "from" => c.from.as_str(), "to" => c.to.as_str())
                .set(f64::from(c.share) / 100.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::canary::CanaryConfig;
    use crate::policy::RoutingConfig;

    fn live(share: u8, enabled: bool) -> Arc<LivePolicy> {
        let canary: CanaryConfig = toml_canary(share, enabled);
        let policy = Policy::new(&RoutingConfig::default(), Some(&canary), TransportKind::ALL)
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
        live.record_publish(TransportKind::KAFKA, true, 95, None);
        live.record_publish(TransportKind::KAFKA, false, 4, None);
        assert_eq!(live.check(), None, "99 samples: too few to judge");
        live.record_publish(TransportKind::KAFKA, false, 1, None);
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
            let slow = Some(Duration::from_millis(500));
            live.record_publish(TransportKind::REDIS, true, 1, slow);
            live.record_publish(
                TransportKind::KAFKA,
                true,
                1,
                Some(Duration::from_millis(2)),
            );
        }
        assert_eq!(live.check(), None, "only the baseline is slow");
        live.record_publish(
            TransportKind::KAFKA,
            true,
            10,
            Some(Duration::from_millis(80)),
        );
        let rollback = live.check().expect("p99 80ms > 50ms");
        assert!(rollback.reason.contains("p99"), "{}", rollback.reason);
    }

    #[test]
    fn rollback_can_be_turned_off() {
        let live = live(50, false);
        live.record_publish(TransportKind::KAFKA, false, 1000, None);
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
