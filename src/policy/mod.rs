//! The route decision: given the sending gateway and a target gateway, which
//! route applies and which transports to try, in order, after the canary.
//! [`hot_pairs`] puts the direct link first for pairs with heavy traffic;
//! [`quality`] takes a route's other transport while its own is slow or
//! failing; [`live::LivePolicy`] holds the policy a process runs with;
//! [`handover::Handover`] keeps per-pair order when a gateway's transport changes.

pub mod canary;
pub mod handover;
pub mod hot_pairs;
pub mod live;
pub mod quality;
pub mod window;

use std::fmt;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use crate::config::problem::Problem;
use crate::topology::{GatewayId, GatewayInfo, Region, UserId};
use crate::transport::TransportKind;
use canary::{Canary, CanaryConfig, CanaryMode, RollbackConfig};
use hot_pairs::HotPairsConfig;
use quality::{Quality, QualityConfig, QualityRule, QualityRuleConfig, Steer};

/// How far a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    /// The target is the sending gateway itself: no transport.
    Local,
    /// Another gateway in the sender's region.
    SameRegion,
    /// A gateway in another region.
    CrossRegion,
}

impl Route {
    /// The name used in metrics, logs and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::SameRegion => "same_region",
            Route::CrossRegion => "cross_region",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a decision reads of the transports' state at the time.
#[derive(Clone, Copy)]
pub struct Conditions<'a> {
    /// Which transports can currently reach their backend.
    pub is_up: &'a dyn Fn(TransportKind) -> bool,
    /// The verdicts of the quality rules.
    pub quality: &'a Quality,
}

/// Transports to try, in order; inline up to four, so deciding does not allocate.
pub type TransportList = SmallVec<[TransportKind; 4]>;

/// The route for one target gateway and the transports to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The route.
    pub route: Route,
    /// Primary first, then fallbacks; empty for [`Route::Local`].
    pub transports: TransportList,
    /// A dual-mode canary also publishes on this transport; the receiver
    /// dedupes, so the message arrives once whichever path is faster.
    pub mirror: Option<TransportKind>,
    /// The target is in the canary cohort: only its publishes on the canary
    /// transport count towards the canary's limits, not traffic that takes
    /// that transport for other reasons (another route, a fallback).
    pub cohort: bool,
    /// Why this order, for `switchyard explain` and logs.
    pub reason: &'static str,
}

/// Finds a transport name among the enabled ones (built-in, or added by
/// the embedding crate), or records why not.
fn parse_enabled(
    problems: &mut Vec<Problem>,
    enabled: &[TransportKind],
    key: String,
    name: &str,
) -> Option<TransportKind> {
    if let Some(&kind) = enabled.iter().find(|k| k.as_str() == name) {
        return Some(kind);
    }
    let reason = match TransportKind::parse(name) {
        Some(_) => format!("transport {name:?} is not enabled (add a [transports.{name}] section)"),
        None => {
            let added = enabled.iter().filter(|k| !k.is_builtin());
            let known: Vec<&str> = TransportKind::ALL
                .iter()
                .chain(added)
                .map(|k| k.as_str())
                .collect();
            format!("unknown transport {name:?} (known: {})", known.join(", "))
        }
    };
    problems.push(Problem { key, reason });
    None
}

/// Validates the quality rule of `route`, whose transport is `prefer`.
fn quality_rule(
    problems: &mut Vec<Problem>,
    enabled: &[TransportKind],
    route: Route,
    prefer: TransportKind,
    rule: &QualityRuleConfig,
) -> Option<QualityRule> {
    let key = |name: &str| format!("routing.quality.{route}.{name}");
    let otherwise = parse_enabled(problems, enabled, key("otherwise"), &rule.otherwise)?;
    let mut problem = |name: &str, reason: String| {
        problems.push(Problem {
            key: key(name),
            reason,
        })
    };
    if otherwise == prefer {
        problem(
            "otherwise",
            format!("is the route's own transport (routing.{route} = \"{prefer}\")"),
        );
        return None;
    }
    if rule.probe_every >= rule.window {
        problem(
            "probe_every",
            format!(
                "{:?} must be shorter than the window ({:?}), or the window of a degraded transport holds no probe",
                rule.probe_every, rule.window
            ),
        );
        return None;
    }
    Some(QualityRule {
        route,
        prefer,
        otherwise,
        limits: rule.clone(),
    })
}

/// Routing rules and the canary, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    same_region: TransportKind,
    cross_region: TransportKind,
    fallbacks: TransportList,
    /// Quality rules, at most one per route.
    quality: Vec<QualityRule>,
    /// The canary in force, if one is configured (share may be 0).
    pub canary: Option<Canary>,
    /// Its automatic rollback limits.
    pub rollback: Option<RollbackConfig>,
    /// Quiet time before a target gateway's transport changes ([`handover`]).
    pub handover: Duration,
    /// How long a dual-mode send waits for the mirror once the primary took
    /// the message (`canary.mirror_wait`).
    pub mirror_wait: Duration,
}

/// `[routing]`: the transport of each route, and what to try when it fails.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Between gateways of one region.
    pub same_region: String,
    /// Between regions.
    pub cross_region: String,
    /// Tried in order after the route's own transport fails.
    pub fallbacks: Vec<String>,
    /// `[routing.hot_pairs]`: when a gateway pair gets a direct link.
    pub hot_pairs: HotPairsConfig,
    /// `[routing.quality]`: when a route leaves its transport for another.
    pub quality: QualityConfig,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            same_region: "memory".into(),
            cross_region: "memory".into(),
            fallbacks: Vec::new(),
            hot_pairs: HotPairsConfig::default(),
            quality: QualityConfig::default(),
        }
    }
}

impl Policy {
    /// Builds the policy when only the `enabled` transports may be named.
    pub fn new(
        routing: &RoutingConfig,
        canary: Option<&CanaryConfig>,
        enabled: &[TransportKind],
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut parse =
            |key: &str, name: &str| parse_enabled(&mut problems, enabled, key.into(), name);
        let same_region = parse("routing.same_region", &routing.same_region);
        let cross_region = parse("routing.cross_region", &routing.cross_region);
        let fallbacks: TransportList = routing
            .fallbacks
            .iter()
            .enumerate()
            .filter_map(|(i, name)| parse(&format!("routing.fallbacks[{i}]"), name))
            .collect();
        let quality = [
            (Route::SameRegion, same_region, &routing.quality.same_region),
            (
                Route::CrossRegion,
                cross_region,
                &routing.quality.cross_region,
            ),
        ]
        .into_iter()
        .filter_map(|(route, prefer, rule)| {
            quality_rule(&mut problems, enabled, route, prefer?, rule.as_ref()?)
        })
        .collect();
        let canary_config = canary;
        let canary = canary.and_then(|c| {
            let from = parse_enabled(&mut problems, enabled, "canary.from".into(), &c.from);
            let to = parse_enabled(&mut problems, enabled, "canary.to".into(), &c.to);
            let mut problem = |key: &str, reason: String| {
                problems.push(Problem {
                    key: key.into(),
                    reason,
                })
            };
            if c.share > 100 {
                problem(
                    "canary.share",
                    format!("{} is not a percentage (0-100)", c.share),
                );
            }
            if !(0.0..=1.0).contains(&c.rollback.max_error_rate) {
                problem(
                    "canary.rollback.max_error_rate",
                    format!("{} is not a fraction (0-1)", c.rollback.max_error_rate),
                );
            }
            match (from, to) {
                (Some(from), Some(to)) if from == to => {
                    problem(
                        "canary.to",
                        format!("is the same transport as canary.from ({from})"),
                    );
                    None
                }
                (Some(from), Some(to)) => Some(Canary {
                    from,
                    to,
                    share: c.share.min(100),
                    unit: c.unit,
                    mode: c.mode,
                }),
                _ => None,
            }
        });
        match (same_region, cross_region) {
            (Some(same_region), Some(cross_region)) if problems.is_empty() => Ok(Self {
                same_region,
                cross_region,
                fallbacks,
                quality,
                rollback: canary
                    .as_ref()
                    .and(canary_config)
                    .map(|c| c.rollback.clone()),
                handover: canary_config.map_or(canary::DEFAULT_HANDOVER, |c| c.handover),
                mirror_wait: canary_config.map_or(canary::DEFAULT_MIRROR_WAIT, |c| c.mirror_wait),
                canary,
            }),
            _ => Err(problems),
        }
    }

    /// The quality rules, at most one per route.
    pub fn quality_rules(&self) -> &[QualityRule] {
        &self.quality
    }

    /// The route from `from` to a gateway in `to_region`.
    pub fn route(from: &GatewayInfo, to: &GatewayId, to_region: &Region) -> Route {
        if &from.id == to {
            Route::Local
        } else if &from.region == to_region {
            Route::SameRegion
        } else {
            Route::CrossRegion
        }
    }

    /// Decides the route and transport order for one target gateway.
    /// `recipient` is the user for 1:1 messages (canary by user).
    /// Transports that cannot reach their backend (`now.is_up`) are moved
    /// to the end rather than removed, so a message still has somewhere to
    /// go if health is wrong; `now.quality` holds the verdicts of the
    /// route's quality rule, if it has one.
    pub fn decide(
        &self,
        from: &GatewayInfo,
        to: &GatewayId,
        to_region: &Region,
        recipient: Option<&UserId>,
        now: Conditions<'_>,
    ) -> Decision {
        let Conditions { is_up, quality } = now;
        let route = Self::route(from, to, to_region);
        let primary = match route {
            Route::Local => {
                return Decision {
                    route,
                    transports: TransportList::new(),
                    mirror: None,
                    cohort: false,
                    reason: "target is this gateway: handed straight to its inbox",
                }
            }
            Route::SameRegion => self.same_region,
            Route::CrossRegion => self.cross_region,
        };
        let mut reason = "route's transport first, then fallbacks";
        let rule = self.quality.iter().find(|r| r.route == route);
        let primary = match rule.map(|r| (r, quality.steer(r, to_region, Instant::now()))) {
            Some((rule, Steer::Otherwise)) => {
                reason = "quality: the route's transport is degraded for this region, the other one first";
                rule.otherwise
            }
            Some((_, Steer::Probe)) => {
                reason = "quality: probing the route's degraded transport, the other one next";
                primary
            }
            _ => primary,
        };
        let mut transports = TransportList::new();
        let mut mirror = None;
        let mut cohort = false;
        match &self.canary {
            Some(c)
                if c.from == primary && c.selects(to.as_str(), recipient.map(UserId::as_str)) =>
            {
                cohort = true;
                match c.mode {
                    CanaryMode::Dual => {
                        transports.push(primary);
                        mirror = Some(c.to);
                        reason = "canary cohort (dual): route's transport, mirrored on the canary transport";
                    }
                    CanaryMode::Switch => {
                        // The old transport stays next in line: a failing
                        // canary falls back instead of losing the message.
                        transports.extend([c.to, primary]);
                        reason = "canary cohort (switch): canary transport first, the old one as fallback";
                    }
                }
            }
            _ => transports.push(primary),
        }
        // Both of a rule's transports stay in line, whichever leads.
        let rule_pair = rule.map(|r| [r.prefer, r.otherwise]);
        for kind in rule_pair.iter().flatten().chain(&self.fallbacks) {
            if !transports.contains(kind) {
                transports.push(*kind);
            }
        }
        if transports.iter().any(|k| !is_up(*k)) {
            // Stable: keeps the configured order among the healthy ones.
            transports.sort_by_key(|k| !is_up(*k));
            reason = "unhealthy transports moved last";
        }
        Decision {
            route,
            transports,
            mirror,
            cohort,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_up(quality: &Quality) -> Conditions<'_> {
        Conditions {
            is_up: &|_| true,
            quality,
        }
    }

    fn policy(fallbacks: &[&str]) -> Policy {
        let fallbacks = format!("{fallbacks:?}");
        from_toml(&format!(
            "[routing]\nsame_region = \"redis\"\ncross_region = \"kafka\"\nfallbacks = {fallbacks}\n"
        ))
        .unwrap()
    }

    /// A policy from TOML with every transport enabled, so policy alone is tested.
    fn from_toml(toml: &str) -> Result<Policy, Vec<Problem>> {
        let s: crate::Settings = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        Policy::new(&s.routing, s.canary.as_ref(), TransportKind::ALL)
    }

    #[test]
    fn decisions_follow_the_routing_table() {
        let me = GatewayInfo::new("gw-1", "eu");
        let all_up = |_| true;
        let redis_down = |k| k != TransportKind::REDIS;
        // (fallbacks, target gateway, its region, health, route, transports)
        type Case<'a> = (
            &'a [&'a str],
            &'static str,
            &'static str,
            &'a dyn Fn(TransportKind) -> bool,
            Route,
            &'a [TransportKind],
        );
        let cases: &[Case] = &[
            (&[], "gw-1", "eu", &all_up, Route::Local, &[]),
            (
                &[],
                "gw-2",
                "eu",
                &all_up,
                Route::SameRegion,
                &[TransportKind::REDIS],
            ),
            (
                &[],
                "gw-9",
                "us",
                &all_up,
                Route::CrossRegion,
                &[TransportKind::KAFKA],
            ),
            (
                &["nats"],
                "gw-2",
                "eu",
                &all_up,
                Route::SameRegion,
                &[TransportKind::REDIS, TransportKind::NATS],
            ),
            (
                &["kafka", "nats"],
                "gw-9",
                "us",
                &all_up,
                Route::CrossRegion,
                &[TransportKind::KAFKA, TransportKind::NATS],
            ),
            (
                &["nats"],
                "gw-2",
                "eu",
                &redis_down,
                Route::SameRegion,
                &[TransportKind::NATS, TransportKind::REDIS],
            ),
            (
                &[],
                "gw-2",
                "eu",
                &redis_down,
                Route::SameRegion,
                &[TransportKind::REDIS],
            ),
        ];
        for (fallbacks, to, region, is_up, route, transports) in cases {
            let d = policy(fallbacks).decide(
                &me,
                &(*to).into(),
                &(*region).into(),
                None,
                Conditions {
                    is_up: *is_up,
                    quality: &Quality::default(),
                },
            );
            assert_eq!(d.route, *route, "{fallbacks:?} -> {to}");
            assert_eq!(
                d.transports.as_slice(),
                *transports,
                "{fallbacks:?} -> {to}"
            );
        }
    }

    #[test]
    fn a_canary_moves_only_its_buckets_and_keeps_the_old_transport() {
        let me = GatewayInfo::new("gw-1", "eu");
        let base = "[routing]\nsame_region = \"redis\"\ncross_region = \"kafka\"\n";
        let quality = Quality::default();
        let gateways: Vec<GatewayId> = (0..400)
            .map(|i| GatewayId::try_from(format!("target-{i}")).unwrap())
            .collect();
        for (mode, expect) in [
            (
                "dual",
                (vec![TransportKind::REDIS], Some(TransportKind::KAFKA)),
            ),
            (
                "switch",
                (vec![TransportKind::KAFKA, TransportKind::REDIS], None),
            ),
        ] {
            let p = from_toml(&format!(
                "{base}[canary]\nfrom = \"redis\"\nto = \"kafka\"\nshare = 30\nmode = \"{mode}\"\n"
            ))
            .unwrap();
            let mut moved = 0;
            for gw in &gateways {
                let d = p.decide(&me, gw, &"eu".into(), None, all_up(&quality));
                if canary::bucket(gw.as_str()) < 30 {
                    assert_eq!(
                        (d.transports.to_vec(), d.mirror),
                        expect.clone(),
                        "{mode} {gw}"
                    );
                    assert!(d.cohort, "{mode} {gw}");
                    moved += 1;
                } else {
                    assert_eq!(
                        (d.transports.to_vec(), d.mirror),
                        (vec![TransportKind::REDIS], None)
                    );
                    assert!(!d.cohort, "{mode} {gw}");
                }
                // Cross-region traffic is on kafka already: the canary leaves
                // it alone, and it is not the canary's cohort.
                let d = p.decide(&me, gw, &"us".into(), None, all_up(&quality));
                assert_eq!(
                    (d.transports.to_vec(), d.mirror),
                    (vec![TransportKind::KAFKA], None)
                );
                assert!(!d.cohort, "{mode} {gw} cross region");
            }
            assert!((90..150).contains(&moved), "about 30% of 400: {moved}");
        }
    }

    #[test]
    fn a_bad_canary_is_named_key_by_key() {
        let problems =
            from_toml("[canary]\nfrom = \"redis\"\nto = \"redis\"\nshare = 130\n").unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "canary.share: 130 is not a percentage (0-100)",
                "canary.to: is the same transport as canary.from (redis)",
            ]
        );
    }

    #[test]
    fn unknown_transports_are_named() {
        let err = from_toml("[routing]\ncross_region = \"kafak\"\n").unwrap_err();
        assert_eq!(
            err[0].to_string(),
            "routing.cross_region: unknown transport \"kafak\" (known: memory, redis, kafka, nats, grpc)"
        );
    }
}
