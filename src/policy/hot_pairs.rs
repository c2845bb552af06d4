//! Hot-pair detection: which (sender gateway, receiver gateway) pairs carry
//! enough traffic to deserve a direct gRPC link.
//!
//! Counting uses a sliding window of [`SLOTS`] time slots, each a Space-Saving
//! summary (Metwally et al.) of at most `capacity` pairs, so memory is bounded
//! however many pairs exist. A pair's rate is the sum of its slot counts over
//! the window: an upper bound that is exact for the pairs that matter (heavy
//! hitters are never evicted). Promotion at `promote_per_second` and demotion
//! below `demote_per_second` (hysteresis) keep a pair near the threshold from
//! flapping.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Conditions, Decision, Policy};
use crate::config::problem::Problem;
use crate::telemetry;
use crate::topology::{GatewayId, GatewayInfo, Region, UserId};
use crate::transport::TransportKind;

/// Time slots per window: the window slides in steps of `window / SLOTS`.
pub const SLOTS: usize = 10;

/// `[routing.hot_pairs]` settings. Detection runs only when the `grpc`
/// transport is enabled.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HotPairsConfig {
    /// A pair at or above this many messages per second gets a direct link.
    pub promote_per_second: f64,
    /// A promoted pair below this many messages per second loses it.
    pub demote_per_second: f64,
    /// The sliding window the rate is measured over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Pairs tracked per time slot (memory bound).
    pub capacity: usize,
}

impl Default for HotPairsConfig {
    fn default() -> Self {
        Self {
            promote_per_second: 200.0,
            demote_per_second: 100.0,
            window: Duration::from_secs(10),
            capacity: 1024,
        }
    }
}

impl HotPairsConfig {
    /// Every problem with these settings, keyed under `routing.hot_pairs`.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(Problem {
                key: format!("routing.hot_pairs.{key}"),
                reason,
            })
        };
        if !(self.promote_per_second > 0.0 && self.promote_per_second.is_finite()) {
            problem("promote_per_second", "must be a positive number".into());
        }
        if !(self.demote_per_second >= 0.0 && self.demote_per_second <= self.promote_per_second) {
            problem(
                "demote_per_second",
                format!(
                    "must be between 0 and promote_per_second ({}), got {}",
                    self.promote_per_second, self.demote_per_second
                ),
            );
        }
        if self.window < Duration::from_millis(SLOTS as u64) {
            problem("window", format!("must be at least {SLOTS}ms"));
        }
        problems
    }
}

/// A sender/receiver gateway pair.
pub type Pair = (GatewayId, GatewayId);

/// A hot pair and its current rate, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct HotPair {
    /// The sending gateway.
    pub from: GatewayId,
    /// The receiving gateway.
    pub to: GatewayId,
    /// Messages per second over the window (upper bound).
    pub per_second: f64,
}

/// The detector shared by every router of a process.
pub struct HotPairs {
    /// The direct-link transport hot pairs are promoted to (the enabled
    /// one whose capabilities say `direct`); without one nothing is counted.
    direct: Option<TransportKind>,
    state: Mutex<State>,
}

struct State {
    config: HotPairsConfig,
    slots: Vec<SpaceSaving>,
    /// Index of the slot that covers `slot_start`.
    current: usize,
    slot_start: Instant,
    promoted: HashSet<Pair>,
}

impl HotPairs {
    /// A detector promoting hot pairs to `direct`, if there is one.
    pub fn new(config: HotPairsConfig, direct: Option<TransportKind>) -> Self {
        if direct.is_some() {
            // Shown (at 0) before the first promotion.
            metrics::gauge!(telemetry::HOT_PAIRS).increment(0.0);
        }
        Self {
            direct,
            state: Mutex::new(State::new(config)),
        }
    }

    /// Whether pairs are counted at all.
    pub fn enabled(&self) -> bool {
        self.direct.is_some()
    }

    /// The thresholds in force.
    pub fn config(&self) -> HotPairsConfig {
        self.state.lock().config.clone()
    }

    /// Applies new thresholds. A new window or capacity restarts counting
    /// (promoted pairs keep their link until they are seen cool).
    pub fn configure(&self, config: HotPairsConfig) {
        let mut state = self.state.lock();
        if state.config.window != config.window || state.config.capacity != config.capacity {
            let promoted = std::mem::take(&mut state.promoted);
            *state = State::new(config);
            state.promoted = promoted;
        } else {
            state.config = config;
        }
    }

    /// Counts one message from `from` to `to`; returns whether the pair is hot.
    pub fn observe(&self, from: &GatewayId, to: &GatewayId) -> bool {
        if self.direct.is_none() {
            return false;
        }
        let mut state = self.state.lock();
        state.advance(Instant::now());
        let pair = (from.clone(), to.clone());
        let current = state.current;
        state.slots[current].add(&pair);
        state.evaluate(&pair)
    }

    /// The hot pairs now, demoting those that cooled down since last seen.
    pub fn hot(&self) -> Vec<HotPair> {
        let mut state = self.state.lock();
        state.advance(Instant::now());
        let pairs: Vec<Pair> = state.promoted.iter().cloned().collect();
        let mut hot = Vec::new();
        for pair in pairs {
            if state.evaluate(&pair) {
                hot.push(HotPair {
                    per_second: state.rate(&pair),
                    from: pair.0,
                    to: pair.1,
                });
            }
        }
        hot.sort_by(|a, b| b.per_second.total_cmp(&a.per_second));
        hot
    }

    /// [`Policy::decide`], with the direct link tried first for a hot pair
    /// (when the link is healthy); the route's transports follow as the
    /// fallback, so a failed link loses nothing.
    pub fn decide(
        &self,
        policy: &Policy,
        from: &GatewayInfo,
        to: &GatewayId,
        to_region: &Region,
        recipient: Option<&UserId>,
        now: Conditions<'_>,
    ) -> Decision {
        let mut decision = policy.decide(from, to, to_region, recipient, now);
        let Some(direct) = self.direct else {
            return decision;
        };
        if decision.transports.is_empty() || !self.observe(&from.id, to) || !(now.is_up)(direct) {
            return decision;
        }
        decision.transports.retain(|k| *k != direct);
        decision.transports.insert(0, direct);
        decision.reason = "hot pair: direct link first, then the route's transports";
        decision
    }
}

impl State {
    fn new(config: HotPairsConfig) -> Self {
        Self {
            slots: (0..SLOTS)
                .map(|_| SpaceSaving::new(config.capacity))
                .collect(),
            config,
            current: 0,
            slot_start: Instant::now(),
            promoted: HashSet::new(),
        }
    }

    fn slot_len(&self) -> Duration {
        self.config.window / SLOTS as u32
    }

    /// Moves the window forward to `now`, clearing the slots that left it.
    fn advance(&mut self, now: Instant) {
        let slot_len = self.slot_len();
        let elapsed = now.saturating_duration_since(self.slot_start);
        let steps = (elapsed.as_nanos() / slot_len.as_nanos().max(1)) as usize;
        if steps == 0 {
            return;
        }
        for step in 1..=steps.min(SLOTS) {
            let slot = (self.current + step) % SLOTS;
            self.slots[slot].clear();
        }
        self.current = (self.current + steps) % SLOTS;
        self.slot_start += slot_len * steps as u32;
    }

    fn rate(&self, pair: &Pair) -> f64 {
        let count: u64 = self.slots.iter().map(|s| s.count(pair)).sum();
        count as f64 / self.config.window.as_secs_f64()
    }

    /// Promotes or demotes `pair` by its rate; returns whether it is hot.
    fn evaluate(&mut self, pair: &Pair) -> bool {
        let rate = self.rate(pair);
        let was_hot = self.promoted.contains(pair);
        let hot = if was_hot {
            rate >= self.config.demote_per_second
        } else {
            rate >= self.config.promote_per_second
        };
        if hot != was_hot {
            let change = if hot {
                self.promoted.insert(pair.clone());
                "promoted"
            } else {
                self.promoted.remove(pair);
                "demoted"
            };
            tracing::info!(from = %pair.0, to = %pair.1, rate, change, "hot pair");
            metrics::counter!(telemetry::HOT_PAIR_CHANGES, "change" => change).increment(1);
            metrics::gauge!(telemetry::HOT_PAIRS).set(self.promoted.len() as f64);
        }
        hot
    }
}

/// Space-Saving top-k counter: at most `capacity` keys; a new key evicts the
/// smallest and inherits its count, so counts are upper bounds and no key
/// with a true count above `total / capacity` is ever missing.
struct SpaceSaving {
    capacity: usize,
    counts: HashMap<Pair, u64>,
}

impl SpaceSaving {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            counts: HashMap::new(),
        }
    }

    fn add(&mut self, pair: &Pair) {
        if let Some(count) = self.counts.get_mut(pair) {
            *count += 1;
            return;
        }
        let mut inherited = 0;
        if self.counts.len() >= self.capacity {
            // O(capacity) scan, only for a new key when full; the hot path
            // (a key already tracked) is a hash lookup.
            if let Some(min) = self
                .counts
                .iter()
                .min_by_key(|(_, c)| **c)
                .map(|(k, _)| k.clone())
            {
                inherited = self.counts.remove(&min).unwrap_or_default();
            }
        }
        self.counts.insert(pair.clone(), inherited + 1);
    }

    fn count(&self, pair: &Pair) -> u64 {
        self.counts.get(pair).copied().unwrap_or_default()
    }

    fn clear(&mut self) {
        self.counts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &'static str, b: &'static str) -> Pair {
        (a.into(), b.into())
    }

    #[test]
    fn space_saving_keeps_the_heavy_hitter_within_its_capacity() {
        let mut sketch = SpaceSaving::new(4);
        for i in 0..1000 {
            sketch.add(&pair("hot", "b"));
            sketch.add(&(
                GatewayId::try_from(format!("cold-{i}")).unwrap(),
                "b".into(),
            ));
        }
        assert!(sketch.counts.len() <= 4);
        // Heavy hitter's count is exact here: it is never the minimum.
        assert_eq!(sketch.count(&pair("hot", "b")), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn pairs_are_promoted_above_the_rate_and_demoted_when_cool() {
        let config = HotPairsConfig {
            promote_per_second: 10.0,
            demote_per_second: 5.0,
            window: Duration::from_secs(1),
            capacity: 8,
        };
        let hot = HotPairs::new(config, Some(TransportKind::GRPC));
        let (a, b) = (GatewayId::from("a"), GatewayId::from("b"));
        // 9 messages in one second: below 10/s.
        let seen: Vec<bool> = (0..10).map(|_| hot.observe(&a, &b)).collect();
        assert_eq!(
            seen.iter().filter(|h| **h).count(),
            1,
            "the 10th message promotes"
        );
        assert_eq!(hot.hot().len(), 1);
        // Half a window later, still 10 in the window.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(hot.hot()[0].per_second, 10.0);
        // Once the window slid past them, the pair is cool and demoted.
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(hot.hot().is_empty());
        assert!(!hot.observe(&a, &b));
    }

    #[test]
    fn disabled_detection_counts_nothing() {
        let hot = HotPairs::new(HotPairsConfig::default(), None);
        assert!(!hot.observe(&"a".into(), &"b".into()));
        assert!(hot.hot().is_empty());
    }

    #[test]
    fn bad_thresholds_name_their_key() {
        let config = HotPairsConfig {
            demote_per_second: 500.0,
            ..HotPairsConfig::default()
        };
        let keys: Vec<String> = config.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["routing.hot_pairs.demote_per_second"]);
    }
}
