//! Which gateways exist and where: the router asks it for a gateway's region
//! (group targets) and its peer address (direct links), through a short
//! in-process [`cache`]; the consistent-hash [`ring`] over live gateways
//! assigns users to them. The registry lives in the `[store]` backend
//! unless `[registry]` names one of its own ([`RegistryConfig`]: etcd).

pub mod cache;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod ring;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::problem::Problem;
use crate::config::range::{Bounded, Bounds, HOUR, MINUTE, MS, SECOND};
use crate::error::StoreError;
use crate::topology::{GatewayId, GatewayInfo};

/// Live gateways.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or refreshes) a gateway.
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError>;
    /// Removes a gateway that is leaving.
    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError>;
    /// A gateway by id, if it is alive.
    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError>;
    /// Every live gateway.
    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError>;
    /// The consistent-hash ring over the live gateways, `vnodes` points
    /// each, for [`ring::Ring::assign`] (load balancing users).
    async fn ring(&self, vnodes: u32) -> Result<ring::Ring, StoreError> {
        Ok(ring::Ring::new(self.list().await?, vnodes))
    }
}

/// The registry's name in errors of the shared backends.
#[cfg(any(feature = "redis", feature = "etcd"))]
const STORE: &str = "registry";

/// A registration's stored value: `region \x1f address` (Redis and etcd).
#[cfg(any(feature = "redis", feature = "etcd"))]
pub(crate) fn encode(gateway: &GatewayInfo) -> String {
    format!("{}\x1f{}", gateway.region, gateway.address)
}

/// Reads [`encode`]'s value back; a malformed one names the gateway.
#[cfg(any(feature = "redis", feature = "etcd"))]
pub(crate) fn decode(id: &GatewayId, value: &str) -> Result<GatewayInfo, StoreError> {
    let bad = || StoreError::Backend {
        store: STORE,
        operation: format!("read gateway {id}"),
        reason: crate::cause::Cause::from_message(format!("malformed value {value:?}")),
    };
    let (region, address) = value.split_once('\x1f').ok_or_else(bad)?;
    Ok(GatewayInfo {
        id: id.clone(),
        region: region.parse().map_err(|_| bad())?,
        address: address.into(),
    })
}

/// `[registry]`: where live gateways are kept.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RegistryConfig {
    /// In the `[store]` backend (memory, or Redis with `store.gateway_ttl`).
    #[default]
    Store,
    /// On etcd v3: leases for heartbeats, a watch for liveness changes.
    /// Needs a binary built with the `etcd` feature.
    Etcd(EtcdConfig),
}

/// `[registry]` with `kind = "etcd"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Every key lives under `{key_prefix}/`, so deployments can share an
    /// etcd.
    pub key_prefix: String,
    /// A gateway whose lease is not kept alive for this long leaves the
    /// ring, and its sessions are removed. Whole seconds (etcd's unit).
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long connecting to a member may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            key_prefix: "switchyard".into(),
            lease_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Bounded for RegistryConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        let RegistryConfig::Etcd(etcd) = self else {
            return;
        };
        // etcd grants no lease shorter than about 2 s (1.5 election timeouts).
        b.time(section, "lease_ttl", etcd.lease_ttl, 2 * SECOND, HOUR);
        b.time(section, "connect_timeout", etcd.connect_timeout, MS, MINUTE);
        b.time(section, "request_timeout", etcd.request_timeout, MS, MINUTE);
    }
}

impl RegistryConfig {
    /// How long a silent gateway stays registered, when this registry sets
    /// it (the store's registry has its own, `store.gateway_ttl`).
    pub fn gateway_ttl(&self) -> Option<Duration> {
        match self {
            RegistryConfig::Store => None,
            RegistryConfig::Etcd(etcd) => Some(etcd.lease_ttl),
        }
    }

    /// What is wrong with these settings, each with its key (ranges: its
    /// [`Bounded`] impl).
    pub fn problems(&self) -> Vec<Problem> {
        let RegistryConfig::Etcd(etcd) = self else {
            return Vec::new();
        };
        let problem = |key: &str, reason: String| Problem {
            key: format!("registry.{key}"),
            reason,
        };
        let mut problems = Vec::new();
        if !cfg!(feature = "etcd") {
            problems.push(problem(
                "kind",
                "\"etcd\": this binary was built without the `etcd` feature \
                 (cargo build --features etcd)"
                    .into(),
            ));
        }
        if etcd.endpoints.is_empty() {
            problems.push(problem("endpoints", "needs at least one URL".into()));
        }
        for (i, endpoint) in etcd.endpoints.iter().enumerate() {
            let address = endpoint.strip_prefix("http://").unwrap_or_default();
            if address
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                problems.push(problem(
                    &format!("endpoints[{i}]"),
                    format!("{endpoint:?} is not http://host:port"),
                ));
            }
        }
        if etcd.key_prefix.is_empty() || etcd.key_prefix.contains('/') {
            problems.push(problem(
                "key_prefix",
                format!("{:?} must be non-empty and without '/'", etcd.key_prefix),
            ));
        }
        if etcd.lease_ttl.subsec_nanos() != 0 {
            problems.push(problem(
                "lease_ttl",
                format!(
                    "{} is not whole seconds (etcd leases count seconds)",
                    humantime_serde::re::humantime::format_duration(etcd.lease_ttl)
                ),
            ));
        }
        problems
    }
}

/// What cleans up after gateways a shared registry expired, started once
/// the directory (presence and groups) exists.
pub(crate) type Reaper = Box<dyn FnOnce(&crate::groups::Directory) + Send>;

/// A registry of its own and how it cleans up after gateways that expire,
/// started once the directory it cleans exists.
pub(crate) struct Separate {
    pub registry: Arc<dyn Registry>,
    pub clean_up: Reaper,
}

impl Separate {
    /// The registry `config` names, connected; `None` for the store's own.
    pub(crate) async fn connect(config: &RegistryConfig) -> Result<Option<Self>, StoreError> {
        match config {
            RegistryConfig::Store => Ok(None),
            #[cfg(feature = "etcd")]
            RegistryConfig::Etcd(config) => {
                let registry = Arc::new(etcd::EtcdRegistry::connect(config).await?);
                Ok(Some(Self {
                    registry: registry.clone(),
                    clean_up: Box::new(move |directory| registry.clean_up_with(directory.clone())),
                }))
            }
            // Settings::validate names this first (`registry.kind`).
            #[cfg(not(feature = "etcd"))]
            RegistryConfig::Etcd(config) => Err(StoreError::Unavailable {
                store: "registry",
                address: config.endpoints.join(","),
                reason: crate::cause::Cause::from_message(
                    "this binary was built without the `etcd` feature",
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, Settings};

    #[test]
    fn etcd_settings_are_checked_by_key() {
        let toml = "[registry]\nkind = \"etcd\"\nendpoints = [\"10.0.0.1:2379\"]\n\
                    key_prefix = \"a/b\"\nlease_ttl = \"1500ms\"\n";
        let Err(ConfigError::Invalid(problems)) = Settings::from_toml(toml) else {
            panic!("invalid etcd settings were accepted");
        };
        let mut found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        found.sort();
        let mut expected = vec![
            "registry.endpoints[0]: \"10.0.0.1:2379\" is not http://host:port".to_owned(),
            "registry.key_prefix: \"a/b\" must be non-empty and without '/'".to_owned(),
            "registry.lease_ttl: 1s 500ms is not whole seconds (etcd leases count seconds)"
                .to_owned(),
            "registry.lease_ttl: must be between 2s and 1h, got 1s 500ms".to_owned(),
        ];
        if !cfg!(feature = "etcd") {
            expected.push(
                "registry.kind: \"etcd\": this binary was built without the `etcd` feature \
                 (cargo build --features etcd)"
                    .to_owned(),
            );
        }
        expected.sort();
        assert_eq!(found, expected);
    }

    #[test]
    fn the_lease_ttl_paces_the_heartbeat() {
        let toml = "[registry]\nkind = \"etcd\"\nlease_ttl = \"3s\"\n";
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("parses");
        assert_eq!(
            settings.heartbeat_interval(),
            std::time::Duration::from_secs(1)
        );
    }
}
