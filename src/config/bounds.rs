//! The range of every numeric setting in force: the core sections here,
//! each backend's next to its fields ([`Bounded`] impls).

use super::range::{Bounded, Bounds, DAY, HOUR, MAX_QUEUE, MIB, MINUTE, MS, SECOND};
use super::Settings;
use std::time::Duration;

/// Checks every numeric setting of `s` that is in force (sections that are
/// absent are not checked).
pub(super) fn check(s: &Settings) -> Bounds {
    let mut b = Bounds::default();

    let l = &s.limits;
    b.count(
        "limits",
        "max_payload_bytes",
        l.max_payload_bytes,
        1,
        64 * MIB,
    );
    b.count(
        "limits",
        "dedupe_window",
        l.dedupe_window,
        1,
        10 * MAX_QUEUE,
    );
    b.count("limits", "inbox_queue", l.inbox_queue, 1, MAX_QUEUE);
    b.count(
        "limits",
        "inbox_bytes",
        l.inbox_bytes,
        1024,
        16 * 1024 * MIB,
    );

    let p = &s.presence;
    b.time("presence", "session_ttl", p.session_ttl, SECOND, DAY);
    b.count(
        "presence",
        "cache_capacity",
        p.cache_capacity,
        0,
        10 * MAX_QUEUE,
    );
    b.time("presence", "cache_ttl", p.cache_ttl, Duration::ZERO, HOUR);
    let ahead = p.cache_refresh_ahead;
    b.time(
        "presence",
        "cache_refresh_ahead",
        ahead,
        Duration::ZERO,
        p.cache_ttl,
    );
    let k = &s.blocks;
    b.count(
        "blocks",
        "cache_capacity",
        k.cache_capacity,
        0,
        10 * MAX_QUEUE,
    );
    b.time("blocks", "cache_ttl", k.cache_ttl, Duration::ZERO, HOUR);

    let o = &s.offline;
    b.count("offline", "max_per_user", o.max_per_user, 1, MAX_QUEUE);
    b.time("offline", "max_age", o.max_age, SECOND, 365 * DAY);
    b.count("offline", "max_deliveries", o.max_deliveries, 1, 1000);

    let d = &s.delivery;
    b.count("delivery", "retries", d.retries, 0, 100);
    b.time(
        "delivery",
        "retry_backoff",
        d.retry_backoff,
        Duration::ZERO,
        MINUTE,
    );
    b.time(
        "delivery",
        "publish_timeout",
        d.publish_timeout,
        MS,
        10 * MINUTE,
    );
    b.count(
        "delivery",
        "publishes_in_flight",
        d.publishes_in_flight,
        0,
        1_000_000,
    );

    b.time(
        "sidecar",
        "drain_timeout",
        s.sidecar.drain_timeout,
        MS,
        10 * MINUTE,
    );

    let h = &s.routing.hot_pairs;
    b.count("routing.hot_pairs", "capacity", h.capacity, 1, MAX_QUEUE);
    b.time("routing.hot_pairs", "window", h.window, MS, HOUR);

    let q = &s.routing.quality;
    for (route, rule) in [
        ("same_region", &q.same_region),
        ("cross_region", &q.cross_region),
    ] {
        let Some(r) = rule else { continue };
        let section = format!("routing.quality.{route}");
        let section = section.as_str();
        b.time(section, "max_p99", r.max_p99, MS, HOUR);
        b.ratio(section, "max_error_rate", r.max_error_rate, 0.0, 1.0);
        b.time(section, "window", r.window, SECOND, HOUR);
        b.count(section, "min_samples", r.min_samples, 1, 1_000_000_000);
        b.time(
            section,
            "recover_after",
            r.recover_after,
            Duration::ZERO,
            DAY,
        );
        b.time(section, "probe_every", r.probe_every, 10 * MS, HOUR);
    }

    if let Some(c) = &s.canary {
        b.time("canary", "handover", c.handover, Duration::ZERO, MINUTE);
        b.time(
            "canary",
            "mirror_wait",
            c.mirror_wait,
            Duration::ZERO,
            MINUTE,
        );
        let r = &c.rollback;
        let section = "canary.rollback";
        b.time(section, "window", r.window, SECOND, DAY);
        b.ratio(section, "max_error_rate", r.max_error_rate, 0.0, 1.0);
        b.time(section, "max_p99", r.max_p99, MS, HOUR);
        b.count(section, "min_samples", r.min_samples, 1, 1_000_000_000);
        b.time(section, "max_down", r.max_down, Duration::ZERO, DAY);
    }

    s.store.bounds(&mut b, "store");
    s.registry.bounds(&mut b, "registry");
    s.transports.bounds(&mut b, "transports");
    #[cfg(feature = "regions")]
    if let Some(regions) = &s.regions {
        regions.bounds(&mut b, "regions");
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Problem, StoreConfig};

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
