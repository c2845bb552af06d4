//! `[regions]`: this node's region, each region's Redis and the presence
//! feed, as plain data checked with the rest of [`Settings`]; what runs it
//! is [`crate::regions`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redis_conn::RedisConfig;
use crate::topology::{check, IdKind};

use super::range::{Bounded, Bounds, DAY, HOUR, MINUTE, MS, SECOND};
use super::{Problem, Settings, StoreConfig};

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
    /// The Kafka topic presence snapshots replicate on, group memberships
    /// on `{topic}.groups` (both created compacted on `[transports.kafka]`'s
    /// brokers if missing).
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
    /// How often each node snapshots again every user on its gateways, in
    /// pages spread over the period, so a snapshot that was lost (a node
    /// crashed before producing it, a replica was wiped) is repaired within
    /// it. `0s`: never.
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
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
            resync_interval: Duration::from_secs(300),
        }
    }
}

impl Bounded for RegionsConfig {
    fn bounds(&self, b: &mut Bounds, section: &str) {
        b.count(section, "partitions", self.partitions, 1, 10_000);
        b.time(
            section,
            "tombstone_ttl",
            self.tombstone_ttl,
            MINUTE,
            30 * DAY,
        );
        b.time(
            section,
            "sweep_interval",
            self.sweep_interval,
            10 * MS,
            HOUR,
        );
        b.time_or_off(
            section,
            "resync_interval",
            self.resync_interval,
            SECOND,
            DAY,
        );
        for (region, redis) in &self.redis {
            redis.bounds(b, &format!("{section}.redis.{region}"));
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
        // Memberships replicate on `{topic}.groups`, which must be legal too.
        let longest = 249 - ".groups".len();
        if self.topic.is_empty() || self.topic.len() > longest || !self.topic.chars().all(legal) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn problems(toml: &str) -> Vec<String> {
        match Settings::from_toml(toml) {
            Err(ConfigError::Invalid(p)) => p.iter().map(Problem::to_string).collect(),
            other => panic!("expected invalid config, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_regions_config_is_valid_and_localizes() {
        let text = include_str!("../../config/regions.toml");
        let mut settings = Settings::from_toml(text).expect("config/regions.toml");
        let us = settings.regions.as_mut().expect("[regions]");
        us.local = "us".into();
        let local = localize(&settings);
        let StoreConfig::Redis(store) = &local.store else {
            panic!("a Redis store")
        };
        assert_eq!(store.url, "redis://127.0.0.1:6380");
        let transport = local.transports.redis.as_ref().expect("redis transport");
        assert_eq!(transport.connection.url, "redis://127.0.0.1:6380");
    }

    #[test]
    fn regions_need_kafka_a_regional_store_and_their_own_entry() {
        assert_eq!(
            problems("[regions]\nlocal = \"eu\"\n[regions.redis.us]\nurl = \"redis://h:1\"\n"),
            [
                "regions.redis: has no entry for the local region \"eu\" (listed: us)",
                "regions.local: presence replicates over Kafka: add a [transports.kafka] section",
                "regions.local: each region keeps its presence in its own Redis: set [store] kind = \"redis\" or a [regions.redis.<local>] entry",
            ]
        );
        let found = problems(
            "[transports.memory]\n[transports.kafka]\n[store]\nkind = \"redis\"\n\
             [regions]\nlocal = \"\"\ntopic = \"bad topic\"\npartitions = 0\n",
        );
        assert_eq!(
            found,
            [
                "regions.partitions: must be between 1 and 10000, got 0",
                "regions.local: `regions.local` is empty",
                "regions.topic: \"bad topic\" is not a legal Kafka topic name",
            ]
        );
    }
}
