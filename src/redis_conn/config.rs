//! [`RedisConfig`]: how to reach Redis, and [`ConnectError`] when it cannot be.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::sentinel::SentinelConfig;
use crate::cause::Cause;
use crate::config::range::{Bounded, Bounds, DAY, MINUTE, MS, SECOND};

/// How to reach Redis: `[store] kind = "redis"` and
/// `[transports.redis.connection]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port` or, for TLS, `rediss://host:port`. On a cluster,
    /// any node (a seed); the others are discovered.
    pub url: String,
    /// Talk to a Redis Cluster (slot routing, sharded pub/sub).
    pub cluster: bool,
    /// More cluster seed nodes, tried when `url` is down at start-up.
    pub cluster_seeds: Vec<String>,
    /// `[...sentinel]`: find the master through Redis Sentinel (then `url`
    /// and `cluster_seeds` are not used).
    pub sentinel: Option<Box<SentinelConfig>>,
    /// Environment variable holding the ACL user name (unset: none or the URL's).
    pub username_env: Option<String>,
    /// Environment variable holding the password (unset: none or the URL's).
    pub password_env: Option<String>,
    /// Multiplexed connections per process; commands are spread over them.
    pub connections: usize,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one command may wait for its reply.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Prefix of every key and channel, so several deployments can share a
    /// Redis (and tests can run in parallel).
    pub key_prefix: String,
    /// A gateway whose registration is not refreshed by its heartbeat for
    /// this long is dead: its sessions are removed and the ring recomputed.
    #[serde(with = "humantime_serde")]
    pub gateway_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            cluster_seeds: Vec::new(),
            sentinel: None,
            username_env: None,
            password_env: None,
            connections: 2,
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(3),
            key_prefix: "sy".into(),
            gateway_ttl: Duration::from_secs(30),
        }
    }
}

impl Bounded for RedisConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        b.count(section, "connections", self.connections, 1, 1024);
        b.time(section, "connect_timeout", self.connect_timeout, MS, MINUTE);
        b.time(
            section,
            "response_timeout",
            self.response_timeout,
            MS,
            10 * MINUTE,
        );
        b.time(section, "gateway_ttl", self.gateway_ttl, SECOND, DAY);
        if let Some(sentinel) = &self.sentinel {
            let section = format!("{section}.sentinel");
            b.count(&section, "wait_replicas", sentinel.wait_replicas, 0, 16);
            b.time(&section, "wait_timeout", sentinel.wait_timeout, MS, MINUTE);
        }
    }
}

impl RedisConfig {
    /// Every seed address, `url` first.
    pub(super) fn seeds(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.url).chain(&self.cluster_seeds)
    }

    /// What is wrong with these settings, as (key, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        for url in self.seeds() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.push(("url", format!("{url:?} is not a redis:// or rediss:// URL")));
            }
        }
        if let Some(sentinel) = &self.sentinel {
            problems.extend(sentinel.problems());
            if sentinel.wait_replicas > 0 && sentinel.wait_timeout >= self.response_timeout {
                // WAIT is a command like any other: its reply must come
                // before the response timeout cuts the request off.
                problems.push((
                    "sentinel.wait_timeout",
                    format!(
                        "must be shorter than response_timeout ({:?})",
                        self.response_timeout
                    ),
                ));
            }
            if self.cluster {
                problems.push((
                    "sentinel",
                    "cannot be combined with cluster = true (a cluster fails over by itself)"
                        .into(),
                ));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            problems.push((
                "key_prefix",
                "must be non-empty, without braces (hash tags)".into(),
            ));
        }
        problems
    }

    /// The addresses, for error messages.
    pub fn address(&self) -> String {
        if let Some(sentinel) = &self.sentinel {
            return sentinel.address();
        }
        self.seeds().cloned().collect::<Vec<_>>().join(",")
    }
}

/// Redis could not be reached or refused us.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to Redis at {address}")]
pub struct ConnectError {
    /// The URL(s) tried.
    pub address: String,
    /// Why it failed.
    #[source]
    pub reason: Cause,
}

impl ConnectError {
    /// As the error of the store that needed the connection (its cause
    /// moves over: the store's error names the same address).
    pub fn for_store(self, store: &'static str) -> crate::error::StoreError {
        crate::error::StoreError::Unavailable {
            store,
            address: self.address,
            reason: self.reason,
        }
    }
}
