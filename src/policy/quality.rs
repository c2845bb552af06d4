//! Quality-aware routing: take a route's fast transport while it is fast,
//! the reliable one while it is not. `[routing.quality.same_region]` (or
//! `cross_region`) names the transport to use instead of the route's own
//! (`otherwise`) and the limits the route's own must keep: p99 time to
//! confirm a publish and error rate, over a sliding window, per target
//! region.
//!
//! Every publish on a watched transport feeds a score per (transport,
//! target region) ([`Quality::record`]). Decisions read a verdict per
//! (route, target region) ([`Quality::steer`]), re-judged at most every
//! [`CHECK_EVERY`]. The route leaves its transport once a limit is broken
//! over at least `min_samples` messages, and comes back only after the
//! window has been within the limits for `recover_after` without a break:
//! the window and the dwell time are the hysteresis, so one slow publish
//! does not flap the route. While degraded, one publish per `probe_every`
//! still goes on the route's transport first (the reliable one next, so a
//! probe that fails loses nothing): those probes are what tells the window
//! that the transport is good again. Per-pair order across each change is
//! kept by the [`super::handover`].

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::window::{Sample, SampleWindow, WindowStats};
use super::Route;
use crate::telemetry;
use crate::topology::Region;
use crate::transport::TransportKind;

/// The most often a route's verdict is re-judged.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// `[routing.quality]`: a rule per route; none by default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// `[routing.quality.same_region]`: limits for `routing.same_region`.
    pub same_region: Option<QualityRuleConfig>,
    /// `[routing.quality.cross_region]`: limits for `routing.cross_region`.
    pub cross_region: Option<QualityRuleConfig>,
}

/// One route's rule, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityRuleConfig {
    /// The transport to take while the route's own breaks a limit.
    pub otherwise: String,
    /// The route's transport must confirm 99% of publishes within this.
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    /// ...and fail at most this fraction of them.
    pub max_error_rate: f64,
    /// The sliding window both are measured over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Messages the window must hold before a limit counts as broken.
    pub min_samples: u64,
    /// How long the window must stay within the limits before the route
    /// returns to its own transport.
    #[serde(with = "humantime_serde")]
    pub recover_after: Duration,
    /// While degraded, one publish this often probes the route's transport.
    #[serde(with = "humantime_serde")]
    pub probe_every: Duration,
}

impl Default for QualityRuleConfig {
    fn default() -> Self {
        Self {
            otherwise: String::new(),
            max_p99: Duration::from_millis(50),
            max_error_rate: 0.01,
            window: Duration::from_secs(10),
            min_samples: 20,
            recover_after: Duration::from_secs(30),
            probe_every: Duration::from_secs(1),
        }
    }
}

/// A validated rule: `prefer` (the route's transport) while it keeps the
/// limits, else `otherwise`.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityRule {
    /// The route it applies to.
    pub route: Route,
    /// The route's own transport.
    pub prefer: TransportKind,
    /// The transport while `prefer` is degraded.
    pub otherwise: TransportKind,
    /// The limits and timings, as configured.
    pub limits: QualityRuleConfig,
}

impl QualityRule {
    /// The broken limit, with the measured value, if any.
    fn broken(&self, stats: &WindowStats) -> Option<String> {
        let l = &self.limits;
        if stats.published >= l.min_samples && stats.error_rate() > l.max_error_rate {
            Some(format!(
                "error rate {:.2}% ({} of {}) over {:?} is above {:.2}%",
                stats.error_rate() * 100.0,
                stats.failed,
                stats.published,
                l.window,
                l.max_error_rate * 100.0
            ))
        } else if stats.confirmed >= l.min_samples && stats.p99 > l.max_p99 {
            Some(format!(
                "p99 {:?} over {:?} is above {:?}",
                stats.p99, l.window, l.max_p99
            ))
        } else {
            None
        }
    }

    /// Within the limits, and measured at all: a window without samples
    /// proves nothing about a transport that was degraded.
    fn healthy(&self, stats: &WindowStats) -> bool {
        let l = &self.limits;
        stats.published > 0
            && stats.error_rate() <= l.max_error_rate
            && (stats.confirmed == 0 || stats.p99 <= l.max_p99)
    }
}

/// What a decision does with a rule's route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// The route's own transport first.
    Prefer,
    /// Degraded: the other transport first, the route's own next.
    Otherwise,
    /// Degraded, but this publish measures the route's own transport.
    Probe,
}

/// A route's verdict for one target region, for `explain` and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteQuality {
    /// The route.
    pub route: Route,
    /// The target region.
    pub region: Region,
    /// The route's own transport and its figures over the window.
    pub prefer: TransportKind,
    /// Those figures.
    pub stats: WindowStats,
    /// The transport taken instead, and since when and why, while degraded.
    pub degraded: Option<(TransportKind, Duration, String)>,
    /// How many times the route left or returned to its transport.
    pub changes: u64,
}

impl fmt::Display for RouteQuality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} to region {}: {} p99 {:?}, errors {:.2}% over {} message(s)",
            self.route,
            self.region,
            self.prefer,
            s.p99,
            s.error_rate() * 100.0,
            s.published
        )?;
        match &self.degraded {
            Some((to, since, why)) => write!(f, "; degraded for {since:.1?} ({why}): {to} first"),
            None => write!(f, "; within the limits"),
        }
    }
}

/// The scores and verdicts of a process, shared by its routers.
#[derive(Default)]
pub struct Quality {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    scores: HashMap<(TransportKind, Region), SampleWindow>,
    routes: HashMap<(Route, Region), Verdict>,
}

struct Verdict {
    checked: Option<Instant>,
    changes: u64,
    degraded: Option<Degraded>,
    /// While degraded: since when the window has been within the limits.
    healthy_since: Option<Instant>,
}

struct Degraded {
    to: TransportKind,
    since: Instant,
    reason: String,
    last_probe: Instant,
}

impl Quality {
    /// Records a publish on `kind` to a gateway in `region`; `span` is
    /// the window of the rules watching `kind`.
    pub fn record(&self, kind: TransportKind, region: &Region, span: Duration, sample: Sample) {
        let mut state = self.state.lock();
        let window = state
            .scores
            .entry((kind, region.clone()))
            .or_insert_with(|| SampleWindow::new(span));
        window.set_span(span);
        window.record(sample);
    }

    /// What a decision on `rule`'s route to `region` does at `now`.
    pub fn steer(&self, rule: &QualityRule, region: &Region, now: Instant) -> Steer {
        let mut state = self.state.lock();
        let State { scores, routes } = &mut *state;
        let verdict = routes
            .entry((rule.route, region.clone()))
            .or_insert(Verdict {
                checked: None,
                changes: 0,
                degraded: None,
                healthy_since: None,
            });
        if verdict
            .checked
            .is_none_or(|at| now.saturating_duration_since(at) >= CHECK_EVERY)
        {
            verdict.checked = Some(now);
            let stats = scores
                .get_mut(&(rule.prefer, region.clone()))
                .map(|w| w.stats(now))
                .unwrap_or_default();
            judge(rule, region, verdict, &stats, now);
        }
        match &mut verdict.degraded {
            None => Steer::Prefer,
            Some(d) if now.saturating_duration_since(d.last_probe) >= rule.limits.probe_every => {
                d.last_probe = now;
                Steer::Probe
            }
            Some(_) => Steer::Otherwise,
        }
    }

    /// Every route's verdict and its transport's figures at `now`.
    pub fn routes(&self, rules: &[QualityRule], now: Instant) -> Vec<RouteQuality> {
        let mut state = self.state.lock();
        let State { scores, routes } = &mut *state;
        let mut out: Vec<RouteQuality> = routes
            .iter()
            .filter_map(|((route, region), verdict)| {
                let rule = rules.iter().find(|r| r.route == *route)?;
                let stats = scores
                    .get_mut(&(rule.prefer, region.clone()))
                    .map(|w| w.stats(now))
                    .unwrap_or_default();
                Some(RouteQuality {
                    route: *route,
                    region: region.clone(),
                    prefer: rule.prefer,
                    stats,
                    degraded: verdict.degraded.as_ref().map(|d| {
                        (
                            d.to,
                            now.saturating_duration_since(d.since),
                            d.reason.clone(),
                        )
                    }),
                    changes: verdict.changes,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.route, &a.region).cmp(&(b.route, &b.region)));
        out
    }
}

/// Moves a verdict on from what the window shows; logs and counts each change.
fn judge(
    rule: &QualityRule,
    region: &Region,
    verdict: &mut Verdict,
    stats: &WindowStats,
    now: Instant,
) {
    let (route, prefer) = (rule.route.as_str(), rule.prefer.as_str());
    metrics::gauge!(telemetry::ROUTE_QUALITY_P99, "transport" => prefer, "region" => region.to_string())
        .set(stats.p99.as_secs_f64());
    metrics::gauge!(telemetry::ROUTE_QUALITY_ERRORS, "transport" => prefer, "region" => region.to_string())
        .set(stats.error_rate());
    match &verdict.degraded {
        None => {
            let Some(reason) = rule.broken(stats) else {
                return;
            };
            tracing::warn!(%route, %region, from = %prefer, to = %rule.otherwise, %reason, "route degraded: taking the other transport");
            metrics::counter!(telemetry::ROUTE_QUALITY_CHANGES, "route" => route, "region" => region.to_string(), "to" => rule.otherwise.as_str())
                .increment(1);
            metrics::gauge!(telemetry::ROUTE_DEGRADED, "route" => route, "region" => region.to_string())
                .set(1.0);
            verdict.changes += 1;
            verdict.degraded = Some(Degraded {
                to: rule.otherwise,
                since: now,
                reason,
                last_probe: now,
            });
            verdict.healthy_since = None;
        }
        Some(degraded) => {
            if !rule.healthy(stats) {
                verdict.healthy_since = None;
                return;
            }
            let since = *verdict.healthy_since.get_or_insert(now);
            if now.saturating_duration_since(since) < rule.limits.recover_after {
                return;
            }
            tracing::info!(%route, %region, to = %prefer, after = ?now.saturating_duration_since(degraded.since), "route recovered: back on its own transport");
            metrics::counter!(telemetry::ROUTE_QUALITY_CHANGES, "route" => route, "region" => region.to_string(), "to" => prefer)
                .increment(1);
            metrics::gauge!(telemetry::ROUTE_DEGRADED, "route" => route, "region" => region.to_string())
                .set(0.0);
            verdict.changes += 1;
            verdict.degraded = None;
            verdict.healthy_since = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> QualityRule {
        QualityRule {
            route: Route::SameRegion,
            prefer: TransportKind::REDIS,
            otherwise: TransportKind::KAFKA,
            limits: QualityRuleConfig {
                otherwise: "kafka".into(),
                max_p99: Duration::from_millis(50),
                max_error_rate: 0.05,
                window: Duration::from_secs(5),
                min_samples: 10,
                recover_after: Duration::from_secs(3),
                probe_every: Duration::from_secs(1),
            },
        }
    }

    /// Publishes of a second on `kind`: `n` messages that took `latency`, or failed.
    fn second(q: &Quality, at: Instant, n: u64, result: Result<Duration, ()>) {
        let eu = Region::from("eu");
        let sample = Sample {
            at,
            ok: result.is_ok(),
            n,
            confirmed_in: result.ok(),
        };
        q.record(TransportKind::REDIS, &eu, Duration::from_secs(5), sample);
    }

    #[test]
    fn a_slow_transport_is_left_and_probed_and_taken_back_after_the_dwell() {
        let (q, r, eu) = (Quality::default(), rule(), Region::from("eu"));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        second(&q, t0, 1000, Ok(Duration::from_millis(2)));
        assert_eq!(q.steer(&r, &eu, t0), Steer::Prefer);
        // A few slow publishes: under 1% of the window, so not the p99.
        second(&q, t0 + s(1), 5, Ok(Duration::from_millis(300)));
        assert_eq!(q.steer(&r, &eu, t0 + s(1)), Steer::Prefer);
        // Enough of them push the p99 over the limit.
        second(&q, t0 + s(1), 10, Ok(Duration::from_millis(300)));
        assert_eq!(q.steer(&r, &eu, t0 + s(2)), Steer::Otherwise);
        let view = &q.routes(std::slice::from_ref(&r), t0 + s(2))[0];
        let (to, _, why) = view.degraded.as_ref().expect("degraded");
        assert_eq!(*to, TransportKind::KAFKA);
        assert!(why.starts_with("p99"), "{why}");
        // One probe per second, the rest on the other transport.
        assert_eq!(q.steer(&r, &eu, t0 + s(3)), Steer::Probe);
        assert_eq!(q.steer(&r, &eu, t0 + s(3)), Steer::Otherwise);
        // Fast probes: the slow samples leave the 5 s window at t0+6 s; the
        // route comes back 3 s (recover_after) later, not before.
        for t in 3..=9 {
            second(&q, t0 + s(t), 1, Ok(Duration::from_millis(2)));
            let steer = q.steer(&r, &eu, t0 + s(t) + Duration::from_millis(1));
            let want = if t < 9 {
                Steer::Otherwise
            } else {
                Steer::Prefer
            };
            assert!(
                steer == want || (t < 9 && steer == Steer::Probe),
                "at {t} s: {steer:?}"
            );
        }
    }

    #[test]
    fn a_failure_during_the_dwell_starts_it_again() {
        let (q, r, eu) = (Quality::default(), rule(), Region::from("eu"));
        let t0 = Instant::now();
        let s = Duration::from_secs;
        second(&q, t0, 20, Err(()));
        assert_eq!(q.steer(&r, &eu, t0), Steer::Otherwise, "100% errors");
        // Healthy from 6 s (the errors left the window), a failed probe
        // at 8 s: the 3 s dwell restarts once that one leaves too (14 s).
        for t in 6..=16 {
            let result = if t == 8 {
                Err(())
            } else {
                Ok(Duration::from_millis(1))
            };
            second(&q, t0 + s(t), 1, result);
            let steer = q.steer(&r, &eu, t0 + s(t));
            assert_ne!(steer, Steer::Prefer, "at {t} s");
        }
        second(&q, t0 + s(17), 1, Ok(Duration::from_millis(1)));
        assert_eq!(q.steer(&r, &eu, t0 + s(17)), Steer::Prefer);
    }

    #[test]
    fn regions_are_judged_apart() {
        let (q, r) = (Quality::default(), rule());
        let (eu, us) = (Region::from("eu"), Region::from("us"));
        let t0 = Instant::now();
        let failed = Sample {
            at: t0,
            ok: false,
            n: 50,
            confirmed_in: None,
        };
        q.record(TransportKind::REDIS, &us, Duration::from_secs(5), failed);
        assert_eq!(q.steer(&r, &us, t0), Steer::Otherwise);
        assert_eq!(q.steer(&r, &eu, t0), Steer::Prefer);
    }
}
