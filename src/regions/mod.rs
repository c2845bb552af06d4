//! Several regions, each with its own Redis: presence, same-region Pub/Sub
//! and offline queues stay in the region; what other regions need to know
//! of a user (where they are online) is replicated to them asynchronously
//! over Kafka, so no message waits on a cross-region lookup.
//!
//! - [`presence::RegionalPresence`]: the presence store of a region: local
//!   sessions in the region's Redis, other regions' from the replica,
//!   every local change marked for replication.
//! - `feed`: the Kafka side (snapshots of a user's sessions, versioned,
//!   produced on change; each region's consumer group applies the others).
//! - `replica`: the region's Redis side (snapshot and apply scripts).
//! - `reresolve`: a message that reached a gateway on stale presence (the
//!   user moved on) is routed again from there, and a user who comes online
//!   in another region gets the offline messages stored here.
//!
//! docs/OPERATIONS.md ("Regions") has the deployment and its limits.

mod feed;
pub mod presence;
mod replica;
pub mod reresolve;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use feed::{RemoteSession, Snapshot};

use crate::config::{Problem, Settings, StoreConfig};
use crate::error::BuildError;
use crate::groups::Directory;
use crate::offline::OfflineStore;
use crate::presence::cache::CachedPresence;
use crate::presence::redis::RedisPresence;
use crate::redis_conn::{RedisConfig, RedisHandle};
use crate::topology::{check, GatewayId, IdKind, Region};

/// `[regions]`: this node's region and how presence replicates between
/// regions. Absent: one region (or one shared store), nothing replicated.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionsConfig {
    /// The region this node serves; its gateways must be of this region.
    pub local: String,
    /// Each region's Redis, by region name. When this node's region is
    /// listed, its entry replaces `[store]` and
    /// `[transports.redis.connection]`, so one file serves every region.
    pub redis: BTreeMap<String, RedisConfig>,
    /// The Kafka topic presence snapshots replicate on (created compacted
    /// on `[transports.kafka]`'s brokers if missing).
    pub topic: String,
    /// Partitions of that topic when it is created.
    pub partitions: i32,
    /// How long a user's replicated entry is kept once no other region has
    /// a session of them (it guards against late, older snapshots).
    #[serde(with = "humantime_serde")]
    pub tombstone_ttl: Duration,
    /// How often messages stored here for users online in another region
    /// (every transport there had failed) are tried again.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for RegionsConfig {
    fn default() -> Self {
        Self {
            local: String::new(),
            redis: BTreeMap::new(),
            topic: "sy.presence".into(),
            partitions: 12,
            tombstone_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(2),
        }
    }
}

impl RegionsConfig {
    /// What is wrong with `[regions]` in `settings`.
    pub(crate) fn problems(&self, settings: &Settings) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, reason: String| {
            problems.push(Problem {
                key: format!("regions.{key}"),
                reason,
            })
        };
        if let Err(err) = check("regions.local", IdKind::Name, &self.local) {
            problem("local", err.to_string());
        }
        if !self.redis.is_empty() && !self.redis.contains_key(&self.local) {
            problem(
                "redis",
                format!(
                    "has no entry for the local region {:?} (listed: {})",
                    self.local,
                    self.redis.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        for (region, redis) in &self.redis {
            for (key, reason) in redis.problems() {
                problem(&format!("redis.{region}.{key}"), reason);
            }
        }
        if settings.transports.kafka.is_none() {
            problem(
                "local",
                "presence replicates over Kafka: add a [transports.kafka] section".into(),
            );
        }
        if !self.redis.contains_key(&self.local) && !matches!(settings.store, StoreConfig::Redis(_))
        {
            problem(
                "local",
                "each region keeps its presence in its own Redis: set [store] kind = \"redis\" \
                 or a [regions.redis.<local>] entry"
                    .into(),
            );
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.topic.is_empty() || self.topic.len() > 249 || !self.topic.chars().all(legal) {
            problem(
                "topic",
                format!("{:?} is not a legal Kafka topic name", self.topic),
            );
        }
        problems
    }
}

/// `settings` as this node's region runs them: its region's Redis (from
/// `[regions.redis]`) as the store and the Redis transport's connection.
pub fn localize(settings: &Settings) -> Settings {
    let mut settings = settings.clone();
    let Some(regions) = &settings.regions else {
        return settings;
    };
    if let Some(redis) = regions.redis.get(&regions.local).cloned() {
        if let Some(transport) = settings.transports.redis.as_mut() {
            transport.connection = redis.clone();
        }
        settings.store = StoreConfig::Redis(redis);
    }
    settings
}

/// The running replication of one node: its publisher and its consumer.
pub struct Regions {
    region: Region,
    presence: Arc<presence::RegionalPresence>,
    kafka: feed::Kafka,
    config: RegionsConfig,
    forwarder: Arc<reresolve::Forwarder>,
    /// The consumer and the sweep, stopped on drop.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Regions {
    /// Connects the presence feed and wraps the region's presence store.
    pub(crate) async fn connect(
        settings: &Settings,
        config: &RegionsConfig,
        redis: RedisHandle,
        local: Arc<RedisPresence>,
    ) -> Result<Self, BuildError> {
        let Some(kafka_config) = settings.transports.kafka.as_ref() else {
            return Err(crate::config::ConfigError::Invalid(config.problems(settings)).into());
        };
        let kafka = feed::Kafka::connect(kafka_config, config).await?;
        let region = Region::from(config.local.as_str());
        let replica = Arc::new(replica::Replica::new(redis, config.tombstone_ttl));
        let publisher = feed::publish(
            &kafka,
            replica.clone(),
            region.clone(),
            config.topic.clone(),
        );
        let presence = Arc::new(presence::RegionalPresence::new(local, replica, publisher));
        Ok(Self {
            region,
            presence,
            kafka,
            config: config.clone(),
            forwarder: Arc::default(),
            tasks: parking_lot::Mutex::default(),
        })
    }

    /// This node's region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The region's presence store (local and replicated sessions).
    pub fn presence(&self) -> Arc<presence::RegionalPresence> {
        self.presence.clone()
    }

    /// Starts applying other regions' snapshots: the replica, then the
    /// group distributions of `directory`, then the hand-over of
    /// `offline` messages to users who came online elsewhere.
    pub(crate) fn follow(
        &self,
        directory: Directory,
        offline: Arc<dyn OfflineStore>,
        offline_limit: usize,
    ) -> Result<(), BuildError> {
        let applied = reresolve::on_applied(
            self.presence.clone(),
            directory,
            offline.clone(),
            self.forwarder.clone(),
            offline_limit,
        );
        let consumer = feed::follow(&self.kafka, &self.config, self.presence.replica(), applied)?;
        let sweep = reresolve::sweep(
            offline,
            self.forwarder.clone(),
            self.config.sweep_interval,
            offline_limit,
        );
        self.tasks.lock().extend([consumer, sweep]);
        Ok(())
    }

    /// The check in front of gateway `me`'s subscriptions.
    pub(crate) fn guard(
        &self,
        me: &GatewayId,
        cache: Arc<CachedPresence>,
    ) -> Arc<reresolve::Guard> {
        reresolve::Guard::new(
            me.clone(),
            cache,
            self.presence.clone(),
            self.forwarder.clone(),
        )
    }
}

impl Drop for Regions {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}
