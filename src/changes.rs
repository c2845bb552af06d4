//! Change events and the in-process caches that follow them.
//!
//! State read on every send (sessions, block lists, gateways) is cached in
//! each router process. A change anywhere publishes the key as an event;
//! every node drops its cached copy when the event arrives. Stores in this
//! process send events on a [`local`] broadcast channel; the Redis stores
//! carry them between nodes on a Pub/Sub channel
//! ([`RedisChanges`](crate::redis_conn::RedisChanges)). An event missed
//! during a subscription gap is bounded by the cache's TTL.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use tokio::sync::broadcast;

use crate::telemetry::LookupCounters;

/// Events buffered per follower before it has to start over.
pub(crate) const BUFFER: usize = 4096;

/// In-process change events, for stores that live in this process.
pub fn local<K: Clone>() -> broadcast::Sender<K> {
    broadcast::channel(BUFFER).0
}

/// A bounded, TTL'd cache of per-key values (per user, per gateway) that
/// drops a key's entry when its change event arrives; the one cache behind
/// presence, block lists and the registry, each wrapping its store with it.
///
/// quick_cache rather than moka: a million cached users is an ordinary
/// deployment, and moka's per-entry bookkeeping (about 300 B) was more than
/// the entry itself (docs/BENCHMARKS.md). quick_cache has no TTL, so each
/// entry carries the millisecond it was loaded and a stale one reads as a
/// miss.
pub struct FollowingCache<K, V> {
    /// `None` with capacity 0: caching off, every lookup loads.
    entries: Option<Entries<K, V>>,
    /// Hits and misses, for a cache that reports them.
    lookups: Option<LookupCounters>,
}

struct Entries<K, V> {
    cache: Arc<Cache<K, (V, u64)>>,
    ttl_ms: u64,
    start: Instant,
    /// Bumped on every invalidation: a load that overlapped one may have
    /// read the old state, so its result is returned but not cached.
    epoch: Arc<AtomicU64>,
}

impl<K, V> FollowingCache<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of `capacity` keys (0 turns it off) whose entries live at
    /// most `ttl`, following `changes` (without a feed, only this node's
    /// [`invalidate`](Self::invalidate) and the TTL drop entries), counting
    /// hits and misses in the counter `lookups` names, if any.
    pub fn new(
        capacity: u64,
        ttl: Duration,
        changes: Option<broadcast::Receiver<K>>,
        lookups: Option<&'static str>,
    ) -> Self {
        let entries = (capacity > 0).then(|| Entries::new(capacity, ttl, changes));
        Self {
            lookups: entries.as_ref().and(lookups).map(LookupCounters::new),
            entries,
        }
    }

    /// Whether lookups are cached at all.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The cached value, or `load`'s (cached unless a change arrived while
    /// it was loading).
    pub async fn get_or_load<E, F>(&self, key: &K, load: F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
    {
        let Some(entries) = &self.entries else {
            return load.await;
        };
        let (value, hit) = entries.get_or_load(key, load).await?;
        if let Some(lookups) = &self.lookups {
            lookups.record(hit);
        }
        Ok(value)
    }

    /// Drops `key`'s entry now (this node changed it; its own event follows).
    pub fn invalidate(&self, key: &K) {
        if let Some(entries) = &self.entries {
            entries.epoch.fetch_add(1, Ordering::AcqRel);
            entries.cache.remove(key);
        }
    }
}

impl<K, V> Entries<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(capacity: u64, ttl: Duration, changes: Option<broadcast::Receiver<K>>) -> Self {
        let cache = Arc::new(Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)));
        let epoch = Arc::new(AtomicU64::new(0));
        if let Some(mut changes) = changes {
            let (follower, bump) = (cache.clone(), epoch.clone());
            tokio::spawn(async move {
                loop {
                    let event = changes.recv().await;
                    bump.fetch_add(1, Ordering::AcqRel);
                    match event {
                        Ok(key) => {
                            follower.remove(&key);
                        }
                        // Missed events: anything may be stale, start over.
                        Err(broadcast::error::RecvError::Lagged(_)) => follower.clear(),
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        Self {
            cache,
            ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
            start: Instant::now(),
            epoch,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The value and whether it was a hit.
    async fn get_or_load<E, F>(&self, key: &K, load: F) -> Result<(V, bool), E>
    where
        F: Future<Output = Result<V, E>>,
    {
        if let Some((hit, loaded)) = self.cache.get(key) {
            if self.now_ms().saturating_sub(loaded) < self.ttl_ms {
                return Ok((hit, true));
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let loaded = self.now_ms();
        let value = load.await?;
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.cache.insert(key.clone(), (value.clone(), loaded));
        }
        Ok((value, false))
    }
}
