//! Canary migration between two transports: a share of traffic, chosen by a
//! stable bucket of the target gateway (or recipient user), moves from one
//! transport to another, either mirrored on both (`dual`) or switched.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::transport::TransportKind;

/// What a bucket is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryUnit {
    /// The target gateway: one gateway's inbound traffic moves as a whole.
    #[default]
    Gateway,
    /// The recipient user (group messages fall back to the gateway).
    User,
}

/// How the canary cohort is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryMode {
    /// On both transports; receivers dedupe. Safe for first steps and rollback.
    #[default]
    Dual,
    /// On the new transport only (the old one stays as its fallback).
    Switch,
}

/// `[canary]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryConfig {
    /// The transport traffic moves away from.
    pub from: String,
    /// The transport traffic moves to.
    pub to: String,
    /// Percent of buckets (0-100) in the canary cohort.
    #[serde(default)]
    pub share: u8,
    /// What a bucket is computed from.
    #[serde(default)]
    pub unit: CanaryUnit,
    /// Mirror or switch.
    #[serde(default)]
    pub mode: CanaryMode,
    /// When the router rolls the share back to 0 by itself.
    #[serde(default)]
    pub rollback: RollbackConfig,
    /// How long a target gateway must have been quiet on its old transport
    /// before the first publish on a new one, so per-pair order holds across
    /// a change; must exceed the transports' latency difference.
    #[serde(default = "default_handover", with = "humantime_serde")]
    pub handover: Duration,
    /// Dual mode: how long a send waits for the mirror publish once the
    /// primary transport took the message. A mirror that has not confirmed
    /// by then is reported as not mirrored and finishes in the background.
    #[serde(default = "default_mirror_wait", with = "humantime_serde")]
    pub mirror_wait: Duration,
}

/// The default `canary.mirror_wait`: several times a healthy broker's ack,
/// far below any publish timeout.
pub const DEFAULT_MIRROR_WAIT: Duration = Duration::from_millis(100);

fn default_mirror_wait() -> Duration {
    DEFAULT_MIRROR_WAIT
}

/// The default `canary.handover`: far above Kafka's extra 10-30 ms over
/// Redis Pub/Sub, and paid at most once per target gateway per change.
pub const DEFAULT_HANDOVER: Duration = Duration::from_millis(500);

fn default_handover() -> Duration {
    DEFAULT_HANDOVER
}

/// `[canary.rollback]`: limits on the canary transport over a sliding window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollbackConfig {
    /// Turn automatic rollback on or off.
    pub enabled: bool,
    /// The sliding window the limits are measured over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Largest tolerated share of failed publishes on the canary transport.
    pub max_error_rate: f64,
    /// Largest tolerated p99 latency of the canary transport's confirmation
    /// of cohort publishes, as the sender measures it.
    #[serde(with = "humantime_serde")]
    pub max_p99: Duration,
    /// Samples needed in the window before a limit is judged.
    pub min_samples: u64,
    /// Roll back when the canary transport has been down (its health, as
    /// `switchyard_transport_up` shows it) for this long without a break;
    /// `0s` turns this limit off.
    #[serde(with = "humantime_serde")]
    pub max_down: Duration,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(30),
            max_error_rate: 0.01,
            max_p99: Duration::from_millis(50),
            min_samples: 100,
            max_down: Duration::from_secs(10),
        }
    }
}

/// A validated canary.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Old transport.
    pub from: TransportKind,
    /// New transport.
    pub to: TransportKind,
    /// Percent of buckets in the cohort.
    pub share: u8,
    /// Bucket source.
    pub unit: CanaryUnit,
    /// Mirror or switch.
    pub mode: CanaryMode,
}

impl Canary {
    /// Whether the bucket of `gateway` (or of `user`, for the user unit) is
    /// in the cohort. Growing the share only adds buckets.
    pub fn selects(&self, gateway: &str, user: Option<&str>) -> bool {
        let key = match (self.unit, user) {
            (CanaryUnit::User, Some(user)) => user,
            _ => gateway,
        };
        bucket(key) < self.share
    }
}

impl fmt::Display for Canary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} at {}% by {:?} ({:?})",
            self.from, self.to, self.share, self.unit, self.mode
        )
    }
}

/// The bucket (0..100) of an id: a stable hash, the same in every process
/// and across restarts (xxh3, no per-process seed).
pub fn bucket(key: &str) -> u8 {
    (xxh3_64(key.as_bytes()) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(share: u8) -> Canary {
        Canary {
            from: TransportKind::REDIS,
            to: TransportKind::KAFKA,
            share,
            unit: CanaryUnit::Gateway,
            mode: CanaryMode::Dual,
        }
    }

    #[test]
    fn buckets_are_stable_across_processes() {
        // Pinned values: a change of hash would silently reshuffle cohorts
        // in a running fleet during an upgrade.
        assert_eq!(bucket("gw-eu-1"), bucket("gw-eu-1"));
        let pinned: Vec<u8> = ["gw-eu-1", "gw-eu-2", "gw-us-1", "alice"]
            .map(bucket)
            .to_vec();
        assert_eq!(pinned, PINNED);
    }

    const PINNED: [u8; 4] = [53, 9, 51, 80];

    #[test]
    fn the_cohort_only_grows_with_the_share() {
        let gateways: Vec<String> = (0..2000).map(|i| format!("gw-{i}")).collect();
        let mut previous: Vec<&String> = Vec::new();
        for share in [0, 10, 30, 50, 100] {
            let cohort: Vec<&String> = gateways
                .iter()
                .filter(|g| canary(share).selects(g, None))
                .collect();
            assert!(
                previous.iter().all(|g| cohort.contains(g)),
                "{share}% dropped a gateway"
            );
            let fraction = cohort.len() as f64 / gateways.len() as f64;
            assert!(
                (fraction - f64::from(share) / 100.0).abs() < 0.03,
                "{share}%: {fraction}"
            );
            previous = cohort;
        }
    }

    #[test]
    fn the_user_unit_buckets_by_recipient() {
        let c = Canary {
            unit: CanaryUnit::User,
            ..canary(50)
        };
        let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
        let moved = users.iter().filter(|u| c.selects("gw-1", Some(u))).count();
        assert!((400..600).contains(&moved), "{moved}");
        // Group messages (no user) fall back to the gateway's bucket.
        assert_eq!(c.selects("gw-1", None), bucket("gw-1") < 50);
    }
}
