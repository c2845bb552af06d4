//! The range of every numeric setting. A value outside it is a [`Problem`]
//! at check-config, start-up and reload, never a panic or an allocation
//! that exhausts the machine later (`limits.inbox_queue = 4e18` used to
//! panic on the first Attach). docs/CONFIGURATION.md lists these ranges; a
//! test keeps the two in step.

use std::time::Duration;

use super::{Problem, Settings};

const MIB: u64 = 1024 * 1024;
const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// The largest in-process queue or window, in entries.
const MAX_QUEUE: i128 = 1_000_000;

/// Collects the problems, and the keys checked (for the docs test).
#[derive(Default)]
pub(super) struct Bounds {
    pub(super) problems: Vec<Problem>,
    pub(super) keys: Vec<String>,
}

impl Bounds {
    fn count(&mut self, key: &str, value: impl TryInto<i128>, min: i128, max: i128) {
        self.keys.push(key.to_owned());
        let value: i128 = value.try_into().unwrap_or(i128::MAX);
        if !(min..=max).contains(&value) {
            self.problem(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    /// Like `count`, but `-1` also means "no limit".
    #[cfg(any(feature = "kafka", feature = "nats"))]
    fn count_or_unlimited(&mut self, key: &str, value: i64, min: i128, max: i128) {
        if value == -1 {
            self.keys.push(key.to_owned());
        } else {
            self.count(key, value, min, max);
        }
    }

    fn time(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        self.keys.push(key.to_owned());
        if !(min..=max).contains(&value) {
            self.problem(
                key,
                format!(
                    "must be between {} and {}, got {}",
                    humantime_serde::re::humantime::format_duration(min),
                    humantime_serde::re::humantime::format_duration(max),
                    humantime_serde::re::humantime::format_duration(value)
                ),
            );
        }
    }

    /// Like `time`, but zero also means "off".
    #[cfg(feature = "regions")]
    fn time_or_off(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if value.is_zero() {
            self.keys.push(key.to_owned());
        } else {
            self.time(key, value, min, max);
        }
    }

    fn ratio(&mut self, key: &str, value: f64, min: f64, max: f64) {
        self.keys.push(key.to_owned());
        if !(min..=max).contains(&value) {
            self.problem(key, format!("must be between {min} and {max}, got {value}"));
        }
    }

    fn problem(&mut self, key: &str, reason: String) {
        self.problems.push(Problem {
            key: key.to_owned(),
            reason,
        });
    }
}

/// Checks every numeric setting of `s` that is in force (sections that are
/// absent are not checked).
pub(super) fn check(s: &Settings) -> Bounds {
    let mut b = Bounds::default();
    let max_queue = MAX_QUEUE;

    let l = &s.limits;
    b.count(
        "limits.max_payload_bytes",
        l.max_payload_bytes,
        1,
        64 * MIB as i128,
    );
    b.count("limits.dedupe_window", l.dedupe_window, 1, 10 * max_queue);
    b.count("limits.inbox_queue", l.inbox_queue, 1, max_queue);
    b.count(
        "limits.inbox_bytes",
        l.inbox_bytes,
        1024,
        16 * 1024 * MIB as i128,
    );

    b.time("presence.session_ttl", s.presence.session_ttl, SECOND, DAY);
    b.count(
        "presence.cache_capacity",
        s.presence.cache_capacity,
        0,
        10 * max_queue,
    );
    b.time(
        "presence.cache_ttl",
        s.presence.cache_ttl,
        Duration::ZERO,
        HOUR,
    );
    b.time(
        "presence.cache_refresh_ahead",
        s.presence.cache_refresh_ahead,
        Duration::ZERO,
        s.presence.cache_ttl,
    );
    b.count(
        "blocks.cache_capacity",
        s.blocks.cache_capacity,
        0,
        10 * max_queue,
    );
    b.time("blocks.cache_ttl", s.blocks.cache_ttl, Duration::ZERO, HOUR);

    let o = &s.offline;
    b.count("offline.max_per_user", o.max_per_user, 1, max_queue);
    b.time("offline.max_age", o.max_age, SECOND, 365 * DAY);
    b.count("offline.max_deliveries", o.max_deliveries, 1, 1000);

    let d = &s.delivery;
    b.count("delivery.retries", d.retries, 0, 100);
    b.time(
        "delivery.retry_backoff",
        d.retry_backoff,
        Duration::ZERO,
        MINUTE,
    );
    b.time(
        "delivery.publish_timeout",
        d.publish_timeout,
        MS,
        10 * MINUTE,
    );

    b.time(
        "sidecar.drain_timeout",
        s.sidecar.drain_timeout,
        MS,
        10 * MINUTE,
    );

    let h = &s.routing.hot_pairs;
    b.count("routing.hot_pairs.capacity", h.capacity, 1, max_queue);
    b.time("routing.hot_pairs.window", h.window, MS, HOUR);

    let q = &s.routing.quality;
    for (route, rule) in [
        ("same_region", &q.same_region),
        ("cross_region", &q.cross_region),
    ] {
        let Some(r) = rule else { continue };
        let key = |name: &str| format!("routing.quality.{route}.{name}");
        b.time(&key("max_p99"), r.max_p99, MS, HOUR);
        b.ratio(&key("max_error_rate"), r.max_error_rate, 0.0, 1.0);
        b.time(&key("window"), r.window, SECOND, HOUR);
        b.count(&key("min_samples"), r.min_samples, 1, 1_000_000_000);
        b.time(&key("recover_after"), r.recover_after, Duration::ZERO, DAY);
        b.time(&key("probe_every"), r.probe_every, 10 * MS, HOUR);
    }

    if let Some(c) = &s.canary {
        b.time("canary.handover", c.handover, Duration::ZERO, MINUTE);
        b.time("canary.mirror_wait", c.mirror_wait, Duration::ZERO, MINUTE);
        let r = &c.rollback;
        b.time("canary.rollback.window", r.window, SECOND, DAY);
        b.ratio("canary.rollback.max_error_rate", r.max_error_rate, 0.0, 1.0);
        b.time("canary.rollback.max_p99", r.max_p99, MS, HOUR);
        b.count(
            "canary.rollback.min_samples",
            r.min_samples,
            1,
            1_000_000_000,
        );
        b.time("canary.rollback.max_down", r.max_down, Duration::ZERO, DAY);
    }

    #[cfg(feature = "redis")]
    if let super::StoreConfig::Redis(redis) = &s.store {
        redis_connection(&mut b, "store", redis);
    }
    if let crate::registry::RegistryConfig::Etcd(e) = &s.registry {
        // etcd grants no lease shorter than about 2 s (1.5 election timeouts).
        b.time("registry.lease_ttl", e.lease_ttl, 2 * SECOND, HOUR);
        b.time("registry.connect_timeout", e.connect_timeout, MS, MINUTE);
        b.time("registry.request_timeout", e.request_timeout, MS, MINUTE);
    }
    let t = &s.transports;
    if let Some(m) = &t.memory {
        b.count("transports.memory.queue", m.queue, 1, max_queue);
    }
    #[cfg(feature = "redis")]
    if let Some(r) = &t.redis {
        redis_connection(&mut b, "transports.redis.connection", &r.connection);
        b.time(
            "transports.redis.replay_window",
            r.replay_window,
            SECOND,
            DAY,
        );
        b.count(
            "transports.redis.replay_max",
            r.replay_max,
            1,
            10 * max_queue,
        );
        b.count("transports.redis.queue", r.queue, 1, max_queue);
        compression(&mut b, "transports.redis", &r.envelope_compression);
    }
    #[cfg(feature = "kafka")]
    if let Some(k) = &t.kafka {
        let key = |name: &str| format!("transports.kafka.{name}");
        b.time(&key("linger"), k.linger, Duration::ZERO, 10 * SECOND);
        b.count(&key("batch_size"), k.batch_size, 1, 1_000_000_000);
        b.count(&key("max_in_flight"), k.max_in_flight, 1, 10 * max_queue);
        b.count(
            &key("max_message_bytes"),
            k.max_message_bytes,
            1024,
            1024 * MIB as i128,
        );
        b.time(&key("delivery_timeout"), k.delivery_timeout, MS, HOUR);
        b.time(
            &key("fetch_wait_max"),
            k.fetch_wait_max,
            Duration::ZERO,
            10 * SECOND,
        );
        b.time(&key("commit_interval"), k.commit_interval, MS, MINUTE);
        b.time(&key("metadata_refresh"), k.metadata_refresh, SECOND, HOUR);
        b.time(
            &key("session_timeout"),
            k.session_timeout,
            SECOND,
            30 * MINUTE,
        );
        b.time(&key("connect_timeout"), k.connect_timeout, MS, MINUTE);
        b.count(&key("queue"), k.queue, 1, max_queue);
        b.count(&key("topics.partitions"), k.topics.partitions, 1, 10_000);
        b.count_or_unlimited(
            &key("topics.replication"),
            k.topics.replication.into(),
            1,
            100,
        );
        compression(&mut b, "transports.kafka", &k.envelope_compression);
    }
    #[cfg(feature = "nats")]
    if let Some(n) = &t.nats {
        let key = |name: &str| format!("transports.nats.{name}");
        b.time(&key("max_age"), n.max_age, SECOND, 365 * DAY);
        b.count_or_unlimited(&key("max_bytes"), n.max_bytes, 1, i128::from(i64::MAX));
        b.count(&key("replicas"), n.replicas, 1, 5);
        b.time(&key("duplicate_window"), n.duplicate_window, SECOND, DAY);
        b.time(&key("ack_wait"), n.ack_wait, SECOND, HOUR);
        b.count_or_unlimited(&key("max_ack_pending"), n.max_ack_pending, 1, max_queue);
        b.count(&key("max_in_flight"), n.max_in_flight, 1, max_queue);
        b.count(&key("pull_batch"), n.pull_batch, 1, 100_000);
        b.time(&key("request_timeout"), n.request_timeout, MS, 10 * MINUTE);
        b.time(&key("connect_timeout"), n.connect_timeout, MS, MINUTE);
        b.count(&key("queue"), n.queue, 1, max_queue);
        compression(&mut b, "transports.nats", &n.envelope_compression);
    }
    #[cfg(feature = "grpc")]
    if let Some(g) = &t.grpc {
        b.time(
            "transports.grpc.connect_timeout",
            g.connect_timeout,
            MS,
            MINUTE,
        );
        b.time("transports.grpc.retry_after", g.retry_after, MS, HOUR);
        b.count("transports.grpc.queue", g.queue, 1, max_queue);
        compression(&mut b, "transports.grpc", &g.envelope_compression);
    }
    #[cfg(feature = "regions")]
    if let Some(r) = &s.regions {
        b.count("regions.partitions", r.partitions, 1, 10_000);
        b.time("regions.tombstone_ttl", r.tombstone_ttl, MINUTE, 30 * DAY);
        b.time("regions.sweep_interval", r.sweep_interval, 10 * MS, HOUR);
        b.time_or_off("regions.resync_interval", r.resync_interval, SECOND, DAY);
        for (region, redis) in &r.redis {
            redis_connection(&mut b, &format!("regions.redis.{region}"), redis);
        }
    }
    b
}

#[cfg(any(
    feature = "redis",
    feature = "kafka",
    feature = "nats",
    feature = "grpc"
))]
fn compression(b: &mut Bounds, section: &str, c: &crate::envelope::compression::CompressionConfig) {
    let key = |name: &str| format!("{section}.envelope_compression.{name}");
    b.count(&key("min_bytes"), c.min_bytes, 0, 64 * MIB as i128);
    // zstd's own range; negative (faster) levels are not offered.
    b.count(&key("level"), c.level, 1, 22);
}

#[cfg(feature = "redis")]
fn redis_connection(b: &mut Bounds, section: &str, r: &crate::redis_conn::RedisConfig) {
    b.count(&format!("{section}.connections"), r.connections, 1, 1024);
    b.time(
        &format!("{section}.connect_timeout"),
        r.connect_timeout,
        MS,
        MINUTE,
    );
    b.time(
        &format!("{section}.response_timeout"),
        r.response_timeout,
        MS,
        10 * MINUTE,
    );
    b.time(
        &format!("{section}.gateway_ttl"),
        r.gateway_ttl,
        SECOND,
        DAY,
    );
    if let Some(sentinel) = &r.sentinel {
        let key = |name: &str| format!("{section}.sentinel.{name}");
        b.count(&key("wait_replicas"), sentinel.wait_replicas, 0, 16);
        b.time(&key("wait_timeout"), sentinel.wait_timeout, MS, MINUTE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    /// Every section present, so every key is checked.
    fn everything() -> Settings {
        let mut s: Settings = Settings::from_toml(
            "[transports.memory]\n[transports.redis]\n[transports.kafka]\n[transports.nats]\n[transports.grpc]\n\
             [canary]\nfrom = \"memory\"\nto = \"redis\"\nshare = 10\n\
             [routing.quality.same_region]\notherwise = \"redis\"\n\
             [routing.quality.cross_region]\notherwise = \"redis\"\n",
        )
        .expect("a valid config");
        s.store = StoreConfig::Redis(crate::redis_conn::RedisConfig {
            sentinel: Some(Box::default()),
            ..Default::default()
        });
        s.registry = crate::registry::RegistryConfig::Etcd(Default::default());
        #[cfg(feature = "regions")]
        {
            s.regions = Some(crate::config::RegionsConfig {
                local: "eu".into(),
                redis: [("eu".to_owned(), Default::default())].into(),
                ..Default::default()
            });
        }
        s
    }

    #[test]
    fn the_defaults_are_in_range() {
        let bounds = check(&everything());
        assert!(bounds.problems.is_empty(), "{:?}", bounds.problems);
    }

    #[test]
    fn a_huge_window_names_the_key_and_the_range() {
        let mut s = Settings::default();
        s.limits.inbox_queue = 4_000_000_000_000_000_000;
        s.limits.dedupe_window = 1_000_000_000_000;
        let found: Vec<String> = check(&s).problems.iter().map(Problem::to_string).collect();
        assert_eq!(
            found,
            [
                "limits.dedupe_window: must be between 1 and 10000000, got 1000000000000",
                "limits.inbox_queue: must be between 1 and 1000000, got 4000000000000000000",
            ]
        );
    }

    #[test]
    fn every_range_is_documented() {
        let doc = include_str!("../../docs/CONFIGURATION.md");
        let missing: Vec<String> = check(&everything())
            .keys
            .into_iter()
            .filter(|key| !doc.contains(&format!("`{key}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/CONFIGURATION.md: {missing:?}"
        );
    }
}
