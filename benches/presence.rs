//! Presence at friend-list scale, against the real Redis of
//! `scripts/services/` (standalone 6379, cluster 7000-7005):
//!
//! - `Presence` of 500 users (a third online, some on two devices):
//!   p50/p99 uncached (the store) and cached (warm presence cache);
//! - watch latency: from `online()` returning on one node to the event on
//!   a watch that another node runs (includes the 50 ms coalescing);
//! - memory per watched user (RSS growth over 100,000 watched users).
//!
//! ```text
//! scripts/services/redis.sh start; scripts/services/redis-cluster.sh start
//! cargo bench --bench presence     # PRESENCE_ROUNDS=200
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use switchyard::presence::cache::CachedPresence;
use switchyard::presence::redis::RedisPresence;
use switchyard::presence::watch::PresenceWatch;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::redis_conn::{RedisConfig, RedisHandle};
use switchyard::UserId;

const FRIENDS: usize = 500;
const WATCHED: usize = 100_000;

fn session(user: &UserId, device: &'static str) -> Session {
    Session {
        user: user.clone(),
        device: device.into(),
        gateway: "gw-bench".into(),
        region: "eu".into(),
        since_micros: 1,
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn node(config: &RedisConfig) -> Result<Arc<CachedPresence>> {
    let redis = RedisHandle::connect(config).await?;
    let store: Arc<dyn PresenceStore> =
        Arc::new(RedisPresence::new(redis, Duration::from_secs(600)).await?);
    Ok(Arc::new(CachedPresence::new(
        store,
        &PresenceConfig::default(),
    )))
}

async fn run(name: &str, url: &str, cluster: bool, rounds: usize) -> Result<()> {
    let config = RedisConfig {
        url: url.into(),
        cluster,
        key_prefix: format!("sy-bench-{}", ulid::Ulid::new()),
        ..RedisConfig::default()
    };
    let (a, b) = (node(&config).await?, node(&config).await?);
    let friends: Vec<UserId> = (0..FRIENDS)
        .map(|i| format!("friend-{i}").parse().unwrap())
        .collect();
    for (i, user) in friends.iter().enumerate() {
        if i % 3 == 0 {
            b.online(session(user, "phone")).await?;
            if i % 5 == 0 {
                b.online(session(user, "laptop")).await?;
            }
        }
    }

    for (label, cached) in [("uncached", false), ("cached", true)] {
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..rounds {
            let start = Instant::now();
            let found = if cached {
                a.locate_many(&friends).await?
            } else {
                a.locate_many_uncached(&friends).await?
            };
            h.record(start.elapsed().as_micros() as u64)?;
            assert_eq!(
                found.iter().filter(|s| !s.is_empty()).count(),
                FRIENDS.div_ceil(3)
            );
        }
        println!(
            "{name}: Presence of {FRIENDS} users, {label}: p50 {:.2} ms, p99 {:.2} ms ({rounds} calls)",
            ms(&h, 0.5),
            ms(&h, 0.99)
        );
    }

    let mut watch = PresenceWatch::new(a.clone(), FRIENDS + 10);
    let watched: Vec<UserId> = (0..100)
        .map(|i| format!("watched-{i}").parse().unwrap())
        .collect();
    watch.add(&watched).await?;
    let mut h = Histogram::<u64>::new(3)?;
    for user in watched.iter().take(rounds.min(100)) {
        let start = Instant::now();
        b.online(session(user, "phone")).await?;
        let events = watch.next().await.expect("feed open")?;
        h.record(start.elapsed().as_micros() as u64)?;
        assert_eq!(&events[0].user, user);
    }
    println!(
        "{name}: watch event after online(): p50 {:.1} ms, p99 {:.1} ms (coalescing window {} ms)",
        ms(&h, 0.5),
        ms(&h, 0.99),
        switchyard::presence::watch::COALESCE.as_millis()
    );

    let many: Vec<UserId> = (0..WATCHED)
        .map(|i| format!("user-{i:06}").parse().unwrap())
        .collect();
    let before = rss_kib();
    let mut big = PresenceWatch::new(a.clone(), WATCHED);
    for chunk in many.chunks(5000) {
        big.add(chunk).await?;
    }
    let grown = rss_kib().saturating_sub(before);
    println!(
        "{name}: {WATCHED} watched users: RSS +{:.1} MiB, {} B per watched user",
        grown as f64 / 1024.0,
        grown * 1024 / WATCHED as u64
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds = std::env::var("PRESENCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    run("redis", "redis://127.0.0.1:6379", false, rounds).await?;
    run("redis-cluster", "redis://127.0.0.1:7000", true, rounds).await?;
    Ok(())
}
