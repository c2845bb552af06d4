//! Typed settings: defaults, then an optional TOML file, then environment
//! overrides (`SWITCHYARD__ROUTING__CROSS_REGION=kafka`). Validation reports
//! every problem at once, each with its key and reason.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod bounds;

use crate::blocks::BlocksConfig;
use crate::offline::OfflineConfig;
use crate::policy::canary::CanaryConfig;
use crate::policy::live::LivePolicy;
use crate::policy::{Policy, RoutingConfig};
use crate::presence::PresenceConfig;
#[cfg(feature = "redis")]
use crate::redis_conn::RedisConfig;
use crate::registry::RegistryConfig;
use crate::telemetry::TelemetryConfig;
use crate::transport::{TransportKind, TransportsConfig};

mod check;
pub mod problem;
pub mod range;
#[cfg(feature = "regions")]
pub mod regions;
mod show;
pub mod sidecar;
pub use check::{env_var, load_checked};
pub use problem::{ConfigError, Problem};
#[cfg(feature = "regions")]
pub use regions::RegionsConfig;
pub use show::{effective_toml, ShowError, EMBEDDED_DEFAULT};

/// Everything a router node is configured with.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Size limits and inbox bounds.
    pub limits: LimitsConfig,
    /// Where presence, groups, block lists, the registry and offline
    /// messages are kept.
    pub store: StoreConfig,
    /// The registry of live gateways, when not the store's (etcd).
    pub registry: RegistryConfig,
    /// Presence TTL and cache.
    pub presence: PresenceConfig,
    /// The block-list cache.
    pub blocks: BlocksConfig,
    /// Offline store bounds.
    pub offline: OfflineConfig,
    /// Enabled transports and their settings.
    pub transports: TransportsConfig,
    /// Which transport each route uses.
    pub routing: RoutingConfig,
    /// Acknowledgement, retries and timeouts.
    pub delivery: DeliveryConfig,
    /// A canary moving traffic between two transports, if any.
    pub canary: Option<CanaryConfig>,
    /// The gRPC sidecar (`switchyard serve`): listen address and auth.
    pub sidecar: sidecar::SidecarConfig,
    /// The metrics and health endpoint.
    pub telemetry: TelemetryConfig,
    /// This node's region and presence replication between regions, if any.
    #[cfg(feature = "regions")]
    pub regions: Option<RegionsConfig>,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// Message ids remembered per inbox to drop duplicates (retries, dual-write canaries).
    pub dedupe_window: usize,
    /// The unacked window: deliveries held per gateway until it acks them.
    /// With the window full the inbox stops reading (backpressure reaches
    /// the transports, nothing is dropped); it also bounds the duplicates a
    /// gateway sees after a crash.
    pub inbox_queue: usize,
    /// The unacked window in bytes (payload and headers): with
    /// `inbox_queue` messages of the largest size held, memory would
    /// otherwise reach `inbox_queue * max_payload_bytes`. One delivery is
    /// always let in, however large.
    pub inbox_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            dedupe_window: 100_000,
            inbox_queue: 10_000,
            inbox_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[store]`: the backend of every state store, chosen once at start-up.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In-process maps: the embedded default and single-node deployments.
    #[default]
    Memory,
    /// Redis or Redis Cluster, shared by every router node of a deployment.
    #[cfg(feature = "redis")]
    Redis(RedisConfig),
}

impl range::Bounded for StoreConfig {
    // Memory has no numeric setting; without `redis` nothing reads these.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn bounds(&self, b: &mut range::Bounds, section: &str) {
        match self {
            StoreConfig::Memory => {}
            #[cfg(feature = "redis")]
            StoreConfig::Redis(redis) => redis.bounds(b, section),
        }
    }
}

impl StoreConfig {
    /// The name used in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory => "memory",
            #[cfg(feature = "redis")]
            StoreConfig::Redis(_) => "redis",
        }
    }
}

/// `[delivery]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Extra attempts per transport for high-priority messages.
    pub retries: u32,
    /// First retry delay; doubles per attempt.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// How long one publish may wait for its acknowledgement.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Most publishes in flight on one transport (retries included); one
    /// over is refused at once and falls back, instead of queueing behind
    /// a broker that stalls. 0: no bound.
    pub publishes_in_flight: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            retries: 3,
            retry_backoff: Duration::from_millis(20),
            publish_timeout: Duration::from_secs(5),
            publishes_in_flight: 0,
        }
    }
}

/// `file` if given, then `SWITCHYARD__*` environment overrides.
fn sources(file: Option<&Path>) -> config::ConfigBuilder<config::builder::DefaultState> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).required(true));
    }
    builder.add_source(
        config::Environment::with_prefix("SWITCHYARD")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("routing.fallbacks")
            .with_list_parse_key("store.sentinel.nodes")
            .with_list_parse_key("transports.redis.connection.sentinel.nodes")
            .try_parsing(true),
    )
}

impl Settings {
    /// Loads defaults, then `file` if given, then `SWITCHYARD__*` environment
    /// overrides, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, &[])
    }

    /// [`Settings::load`], where `[routing]` and `[canary]` may also name
    /// the `added` transports (see [`Settings::policy_with`]).
    pub fn load_with(file: Option<&Path>, added: &[TransportKind]) -> Result<Self, ConfigError> {
        let settings: Settings = sources(file).build()?.try_deserialize()?;
        settings.validate_with(added)?;
        Ok(settings)
    }

    /// Parses TOML text (no environment), and validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with(text, &[])
    }

    /// [`Settings::from_toml`], where `[routing]` and `[canary]` may also
    /// name the `added` transports (see [`Settings::policy_with`]).
    pub fn from_toml_with(text: &str, added: &[TransportKind]) -> Result<Self, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate_with(added)?;
        Ok(settings)
    }

    /// How often a gateway should heartbeat: a third of the shortest TTL
    /// that a silent gateway loses (its sessions, and on a shared store its
    /// registration), so two missed beats still leave it alive.
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        let mut ttl = match &self.store {
            StoreConfig::Memory => self.presence.session_ttl,
            #[cfg(feature = "redis")]
            StoreConfig::Redis(redis) => self.presence.session_ttl.min(redis.gateway_ttl),
        };
        if let Some(registry) = self.registry.gateway_ttl() {
            ttl = ttl.min(registry);
        }
        ttl / 3
    }

    /// The routing policy `[routing]` and `[canary]` describe, or every
    /// problem with them: unknown or disabled transports, a bad canary.
    pub fn policy(&self) -> Result<Policy, Vec<Problem>> {
        self.policy_with(&[])
    }

    /// The same over the enabled transports and `added`, the kinds of the
    /// transports an embedding crate adds to its routers
    /// ([`crate::RouterBuilder::transport`]), which `[routing]` and
    /// `[canary]` may then name.
    pub fn policy_with(&self, added: &[TransportKind]) -> Result<Policy, Vec<Problem>> {
        let mut enabled = self.transports.enabled();
        for &kind in added {
            if !enabled.contains(&kind) {
                enabled.push(kind);
            }
        }
        Policy::new(&self.routing, self.canary.as_ref(), &enabled)
    }

    /// That policy, live: what a process (library router, demo fleet,
    /// sidecar) starts with. Not yet watched for auto-rollback; the process
    /// that runs it calls [`LivePolicy::watch`] (a settings accessor spawns
    /// nothing, so it works outside a runtime and in tests that check by
    /// hand).
    pub fn live_policy(&self) -> Result<std::sync::Arc<LivePolicy>, ConfigError> {
        self.live_policy_with(&[])
    }

    /// [`Settings::live_policy`] over the enabled transports and `added`
    /// (see [`Settings::policy_with`]).
    pub fn live_policy_with(
        &self,
        added: &[TransportKind],
    ) -> Result<std::sync::Arc<LivePolicy>, ConfigError> {
        Ok(LivePolicy::new(
            self.policy_with(added).map_err(ConfigError::Invalid)?,
        ))
    }

    /// Every problem with these settings, or `Ok`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_with(&[])
    }

    /// [`Settings::validate`], with `added` transports that `[routing]` and
    /// `[canary]` may name (see [`Settings::policy_with`]).
    pub fn validate_with(&self, added: &[TransportKind]) -> Result<(), ConfigError> {
        self.check(Some(added))
    }

    /// Every problem but those of the policy: what the backends need
    /// ([`crate::Backends::from_settings`]), which may be shared by routers
    /// that add transports of their own for `[routing]` to name.
    pub(crate) fn validate_backends(&self) -> Result<(), ConfigError> {
        self.check(None)
    }

    /// Every problem, with the policy's over the enabled transports and
    /// `added` (none checked without).
    fn check(&self, policy_over: Option<&[TransportKind]>) -> Result<(), ConfigError> {
        let mut problems = bounds::check(self).problems;
        if let Some(Err(policy)) = policy_over.map(|added| self.policy_with(added)) {
            problems.extend(policy);
        }
        let mut problem = |key: &str, reason: &str| {
            problems.push(Problem {
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        for (section, capacity, ttl) in [
            (
                "presence",
                self.presence.cache_capacity,
                self.presence.cache_ttl,
            ),
            ("blocks", self.blocks.cache_capacity, self.blocks.cache_ttl),
        ] {
            if capacity > 0 && ttl.is_zero() {
                problem(
                    &format!("{section}.cache_ttl"),
                    &format!("must be longer than zero (set {section}.cache_capacity = 0 to turn the cache off)"),
                );
            }
        }
        #[cfg(feature = "redis")]
        if let StoreConfig::Redis(redis) = &self.store {
            for (key, problem_text) in redis.problems() {
                problem(&format!("store.{key}"), &problem_text);
            }
        }
        problems.extend(self.transports.problems());
        problems.extend(self.registry.problems());
        problems.extend(self.routing.hot_pairs.problems());
        #[cfg(feature = "regions")]
        if let Some(regions) = &self.regions {
            problems.extend(regions.problems(self));
        }
        problems.extend(self.sidecar.problems());
        #[cfg(feature = "grpc")]
        if self.transports.grpc.is_some()
            && !self.sidecar.tokens.is_empty()
            && self.sidecar.peer_token.is_none()
        {
            problems.push(Problem {
                key: "sidecar.peer_token".into(),
                reason: "required when sidecar.tokens is set and [transports.grpc] is enabled \
                         (the Peer API would take messages from anyone)"
                    .into(),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        match Settings::from_toml(toml) {
            Err(ConfigError::Invalid(p)) => p.iter().map(Problem::to_string).collect(),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_default_is_the_built_in_default() {
        let shipped = Settings::from_toml(include_str!("../config/switchyard.toml")).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{:?}", Settings::default()));
    }

    #[test]
    fn a_misspelt_transport_names_the_key_and_the_known_ones() {
        assert_eq!(
            problems("[routing]\ncross_region = \"kafak\""),
            ["routing.cross_region: unknown transport \"kafak\" (known: memory, redis, kafka, nats, grpc)"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(
            "[routing]\nsame_region = \"kafka\"\nfallbacks = [\"memory\", \"carrier-pigeon\"]\n\
             [limits]\nmax_payload_bytes = 0\n",
        );
        assert_eq!(
            found,
            [
                "limits.max_payload_bytes: must be between 1 and 67108864, got 0",
                "routing.same_region: transport \"kafka\" is not enabled (add a [transports.kafka] section)",
                "routing.fallbacks[1]: unknown transport \"carrier-pigeon\" (known: memory, redis, kafka, nats, grpc)",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Settings::from_toml("[routing]\ncross_regoin = \"memory\"").unwrap_err();
        let text = crate::cause::Report(&err).to_string();
        assert!(text.contains("cross_regoin"), "{text}");
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let s = Settings::from_toml("[delivery]\nretry_backoff = \"150ms\"\n").unwrap();
        assert_eq!(s.delivery.retry_backoff, Duration::from_millis(150));
    }
}
