//! The presence cache under a skewed workload, against the real Redis of
//! `scripts/services/redis.sh` (127.0.0.1:6379).
//!
//! A million users, half of them online (one session each, in Redis
//! through the store's own `online`), looked up through the real
//! [`CachedPresence`] at a fixed rate, ranks drawn from a Zipf
//! distribution, while another node connects and disconnects users drawn
//! from the same distribution (its change events invalidate this node's
//! cache, as in production). Per cache capacity, TTL and exponent: the
//! hit rate (from `switchyard_presence_lookups_total`, and per lookup),
//! why misses missed (absent or expired) and lookup latency p50/p99 for
//! hits, misses and all.
//!
//! ```text
//! scripts/services/redis.sh start
//! cargo bench --bench presence_zipf
//! ```
//!
//! Knobs (environment): `ZIPF_USERS` (1000000), `ZIPF_RATE` lookups/s
//! (20000), `ZIPF_CHURN` connects + disconnects/s (200), `ZIPF_WARMUP`
//! and `ZIPF_SECS` seconds (10, 20), `ZIPF_CAPACITIES` (10000,100000,1000000),
//! `ZIPF_TTLS` (the default `presence.cache_ttl`), `ZIPF_EXPONENTS`
//! (1.0,0.8), `ZIPF_REFRESH_AHEAD` (the default
//! `presence.cache_refresh_ahead`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use switchyard::presence::cache::{CachedPresence, Lookup};
use switchyard::presence::redis::RedisPresence;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::redis_conn::{RedisConfig, RedisHandle};
use switchyard::UserId;
use tokio::time::Instant;

/// Tasks issuing lookups; each keeps its share of the rate.
const WORKERS: u64 = 64;
/// Percent of users online at the start.
const ONLINE_PERCENT: u64 = 50;

fn env<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list<T: FromStr>(name: &str, default: &str) -> Vec<T> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Online at the start, uncorrelated with the rank (a multiplicative hash).
fn starts_online(rank: u64) -> bool {
    (rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 < ONLINE_PERCENT
}

fn user(rank: u64) -> UserId {
    format!("z{rank}").parse().unwrap()
}

fn session(rank: u64) -> Session {
    Session {
        user: user(rank),
        device: "phone".into(),
        gateway: format!("gw-{}", rank % 8).parse().unwrap(),
        region: "eu".into(),
        since_micros: 1,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

fn us(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// `switchyard_presence_lookups_total{result=...}` as rendered now.
fn counted(metrics: &PrometheusHandle, result: &str) -> u64 {
    let prefix = format!("switchyard_presence_lookups_total{{result=\"{result}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The same lookups through an unbounded TTL cache that the same change
/// events invalidate, loads taking no time: the hit rate the TTL and the
/// churn allow, with no capacity and no in-flight load to lose.
#[derive(Default)]
struct Ceiling {
    /// Rank -> millisecond loaded.
    loaded: Mutex<HashMap<u64, u64>>,
}

impl Ceiling {
    /// Whether a lookup of `rank` at `now_ms` hits.
    fn lookup(&self, rank: u64, now_ms: u64, ttl_ms: u64, refresh_after_ms: u64) -> bool {
        let mut loaded = self.loaded.lock();
        match loaded.get_mut(&rank) {
            Some(at) if now_ms - *at < ttl_ms => {
                if now_ms - *at >= refresh_after_ms {
                    *at = now_ms;
                }
                true
            }
            _ => {
                loaded.insert(rank, now_ms);
                false
            }
        }
    }

    fn invalidate(&self, rank: u64) {
        self.loaded.lock().remove(&rank);
    }
}

/// One worker's measurements after the warm-up.
struct Tally {
    hits: Histogram<u64>,
    misses: Histogram<u64>,
    all: Histogram<u64>,
    expired: u64,
    ceiling_hits: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            hits: histogram(),
            misses: histogram(),
            all: histogram(),
            expired: 0,
            ceiling_hits: 0,
        }
    }

    fn add(&mut self, other: &Tally) -> Result<()> {
        self.hits.add(&other.hits)?;
        self.misses.add(&other.misses)?;
        self.all.add(&other.all)?;
        self.expired += other.expired;
        self.ceiling_hits += other.ceiling_hits;
        Ok(())
    }
}

struct Params {
    users: u64,
    rate: u64,
    churn: u64,
    warmup: Duration,
    measured: Duration,
}

/// When a run starts and stops, and its cache's timing.
#[derive(Clone, Copy)]
struct Run {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    ttl_ms: u64,
    refresh_after_ms: u64,
}

/// Lookups at `rate / WORKERS` per second until `end`, timed after `measure_from`.
async fn worker(
    cache: Arc<CachedPresence>,
    ceiling: Arc<Ceiling>,
    zipf: Zipf<f64>,
    seed: u64,
    interval: Duration,
    run: Run,
) -> Result<Tally> {
    let Run {
        measure_from, end, ..
    } = run;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::new();
    let mut next = Instant::now() + interval.mul_f64(rng.random::<f64>());
    while next < end {
        tokio::time::sleep_until(next).await;
        next += interval;
        let rank = rng.sample(zipf) as u64;
        let start = Instant::now();
        let (_, lookup) = cache.locate_traced(&user(rank)).await?;
        let took = start.elapsed().as_nanos() as u64;
        let now_ms = (start - run.start).as_millis() as u64;
        let ideal = ceiling.lookup(rank, now_ms, run.ttl_ms, run.refresh_after_ms);
        if start < measure_from {
            continue;
        }
        tally.ceiling_hits += u64::from(ideal);
        tally.all.record(took)?;
        match lookup {
            Lookup::Hit => tally.hits.record(took)?,
            Lookup::Miss => tally.misses.record(took)?,
            Lookup::Expired => {
                tally.expired += 1;
                tally.misses.record(took)?;
            }
        }
    }
    Ok(tally)
}

/// Another node connecting and disconnecting users until `end`.
#[allow(clippy::too_many_arguments)]
async fn churn(
    other: &RedisPresence,
    ceiling: &Ceiling,
    rng: &mut StdRng,
    zipf: Zipf<f64>,
    rate: u64,
    end: Instant,
    state: &mut HashMap<u64, bool>,
) -> Result<u64> {
    if rate == 0 {
        tokio::time::sleep_until(end).await;
        return Ok(0);
    }
    let interval = Duration::from_secs(1) / rate as u32;
    let (mut next, mut changes) = (Instant::now(), 0);
    while next < end {
        tokio::time::sleep_until(next).await;
        next += interval;
        let rank = rng.sample(zipf) as u64;
        let online = state.entry(rank).or_insert_with(|| starts_online(rank));
        if *online {
            other.offline(&user(rank), &"phone".into()).await?;
        } else {
            other.online(session(rank)).await?;
        }
        *online = !*online;
        ceiling.invalidate(rank);
        changes += 1;
    }
    Ok(changes)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    p: &Params,
    metrics: &PrometheusHandle,
    here: &Arc<RedisPresence>,
    other: &Arc<RedisPresence>,
    state: &mut HashMap<u64, bool>,
    exponent: f64,
    config: PresenceConfig,
) -> Result<()> {
    let store: Arc<dyn PresenceStore> = here.clone();
    let cache = Arc::new(CachedPresence::new(store, &config));
    let zipf = Zipf::new(p.users as f64, exponent).context("zipf")?;
    let start = Instant::now();
    let ms = |d: Duration| d.as_millis() as u64;
    let run = Run {
        start,
        measure_from: start + p.warmup,
        end: start + p.warmup + p.measured,
        ttl_ms: ms(config.cache_ttl),
        refresh_after_ms: ms(config.cache_ttl.saturating_sub(config.cache_refresh_ahead)),
    };
    let ceiling = Arc::new(Ceiling::default());
    let interval = Duration::from_secs(WORKERS) / p.rate as u32;
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (cache, ceiling) = (cache.clone(), ceiling.clone());
            tokio::spawn(worker(cache, ceiling, zipf, w * 7919 + 1, interval, run))
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(p.churn);
    churn(
        other,
        &ceiling,
        &mut rng,
        zipf,
        p.churn,
        run.measure_from,
        state,
    )
    .await?;
    let (hits0, misses0) = (counted(metrics, "hit"), counted(metrics, "miss"));
    let changes = churn(other, &ceiling, &mut rng, zipf, p.churn, run.end, state).await?;
    let mut tally = Tally::new();
    for w in workers {
        tally.add(&w.await??)?;
    }
    let (hits, misses) = (
        counted(metrics, "hit") - hits0,
        counted(metrics, "miss") - misses0,
    );
    let lookups = tally.all.len();
    let share = |n: u64| 100.0 * n as f64 / lookups.max(1) as f64;
    let secs = p.measured.as_secs_f64();
    println!(
        "| {exponent:.1} | {} | {} | {} | {:.1} % | {:.1} % | {:.1} % | {:.0} % | {:.1} / {:.0} | {:.0} / {:.0} | {:.1} / {:.0} | {:.0} | {:.0} |",
        config.cache_capacity,
        humantime_serde::re::humantime::format_duration(config.cache_ttl),
        humantime_serde::re::humantime::format_duration(config.cache_refresh_ahead),
        100.0 * hits as f64 / (hits + misses).max(1) as f64,
        share(tally.hits.len()),
        share(tally.ceiling_hits),
        100.0 * tally.expired as f64 / tally.misses.len().max(1) as f64,
        us(&tally.hits, 0.5),
        us(&tally.hits, 0.99),
        us(&tally.misses, 0.5),
        us(&tally.misses, 0.99),
        us(&tally.all, 0.5),
        us(&tally.all, 0.99),
        lookups as f64 / secs,
        changes as f64 / secs,
    );
    Ok(())
}

/// Writes every starting session through the store, 256 at a time.
async fn load(store: &RedisPresence, users: u64) -> Result<()> {
    let started = Instant::now();
    let online: Vec<u64> = (1..=users).filter(|r| starts_online(*r)).collect();
    let n = online.len();
    stream::iter(online)
        .map(|rank| async move { store.online(session(rank)).await })
        .buffer_unordered(256)
        .try_for_each(|_| async { Ok(()) })
        .await?;
    println!(
        "loaded {n} of {users} users online in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let defaults = PresenceConfig::default();
    let p = Params {
        users: env("ZIPF_USERS", 1_000_000),
        rate: env("ZIPF_RATE", 20_000),
        churn: env("ZIPF_CHURN", 200),
        warmup: Duration::from_secs(env("ZIPF_WARMUP", 10)),
        measured: Duration::from_secs(env("ZIPF_SECS", 20)),
    };
    let capacities: Vec<u64> = env_list("ZIPF_CAPACITIES", "10000,100000,1000000");
    let default_ttl =
        humantime_serde::re::humantime::format_duration(defaults.cache_ttl).to_string();
    let ttls: Vec<humantime_serde::re::humantime::Duration> = env_list("ZIPF_TTLS", &default_ttl);
    let default_ahead =
        humantime_serde::re::humantime::format_duration(defaults.cache_refresh_ahead).to_string();
    let ahead: Vec<humantime_serde::re::humantime::Duration> =
        env_list("ZIPF_REFRESH_AHEAD", &default_ahead);
    let exponents: Vec<f64> = env_list("ZIPF_EXPONENTS", "1.0,0.8");

    let config = RedisConfig {
        url: env("ZIPF_URL", "redis://127.0.0.1:6379".to_string()),
        key_prefix: format!("sy-zipf-{}", ulid::Ulid::new()),
        ..RedisConfig::default()
    };
    // Sessions outlive the run: no heartbeat refreshes them here.
    let ttl = Duration::from_secs(3600);
    let here = Arc::new(RedisPresence::new(RedisHandle::connect(&config).await?, ttl).await?);
    let other = Arc::new(RedisPresence::new(RedisHandle::connect(&config).await?, ttl).await?);
    load(&here, p.users).await?;
    println!(
        "{} users, {} lookups/s, {} changes/s on another node, {} s warm-up, {} s measured",
        p.users,
        p.rate,
        p.churn,
        p.warmup.as_secs(),
        p.measured.as_secs()
    );
    println!("| s | capacity | TTL | refresh-ahead | hit rate (metric) | hit rate (per lookup) | ceiling | misses expired | hit p50 / p99 µs | miss p50 / p99 µs | all p50 / p99 µs | lookups/s | changes/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut state = HashMap::new();
    for &exponent in &exponents {
        for &capacity in &capacities {
            for &cache_ttl in &ttls {
                for &refresh_ahead in &ahead {
                    let config = PresenceConfig {
                        cache_capacity: capacity,
                        cache_ttl: cache_ttl.into(),
                        cache_refresh_ahead: refresh_ahead.into(),
                        ..PresenceConfig::default()
                    };
                    measure(&p, &metrics, &here, &other, &mut state, exponent, config).await?;
                }
            }
        }
    }
    Ok(())
}
