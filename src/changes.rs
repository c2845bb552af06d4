//! Change events and the in-process caches that follow them.
//!
//! State read on every send (sessions, block lists, gateways) is cached in
//! each router process. A change anywhere publishes the key as an event;
//! every node drops its cached copy when the event arrives. Stores in this
//! process send events on a [`local`] broadcast channel; the Redis stores
//! carry them between nodes on a Pub/Sub channel
//! ([`RedisChanges`](crate::redis_conn::RedisChanges)). A feed that may
//! have missed events (its Redis subscription dropped, or it fell behind)
//! says so with [`Changed::All`], and every follower starts over, so a
//! missed event does not leave a stale entry to be served until its TTL.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::fast::FixedState;
use parking_lot::Mutex;
use quick_cache::sync::Cache;
use tokio::sync::broadcast;

use crate::telemetry::LookupCounters;

/// Events buffered per follower before it has to start over.
pub(crate) const BUFFER: usize = 4096;

/// One event of a store's change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed<K> {
    /// This key's state changed.
    Key(K),
    /// The feed had a gap (its Redis subscription dropped, or this process
    /// fell behind it): any key it covers may have changed unheard.
    All,
}

/// In-process change events, for stores that live in this process.
pub fn local<K: Clone>() -> broadcast::Sender<Changed<K>> {
    broadcast::channel(BUFFER).0
}

/// A bounded, TTL'd cache of per-key values (per user, per gateway) that
/// drops a key's entry when its change event arrives, and every entry when
/// the feed reports a gap ([`Changed::All`]); the one cache behind
/// presence, block lists and the registry, each wrapping its store with it.
///
/// quick_cache rather than moka: a million cached users is an ordinary
/// deployment, and moka's per-entry bookkeeping (about 300 B) was more than
/// the entry itself (docs/bench/HISTORY.md). quick_cache has no TTL, so each
/// entry carries the millisecond it was loaded and a stale one reads as a
/// miss.
///
/// With [refresh-ahead](Self::refresh_ahead), a hit on an entry close to
/// its expiry reloads it in the background, so a key asked for often never
/// expires into a miss; its entry is still at most one TTL old.
pub struct FollowingCache<K, V> {
    /// `None` with capacity 0: caching off, every lookup loads.
    entries: Option<Entries<K, V>>,
    /// Hits and misses, for a cache that reports them.
    lookups: Option<LookupCounters>,
}

/// How a lookup was answered; the metric counts `Expired` as a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From the cache.
    Hit,
    /// Loaded: not cached (never loaded, evicted, invalidated, or the cache
    /// is off).
    Miss,
    /// Loaded: the cached entry had outlived the TTL.
    Expired,
}

struct Entries<K, V> {
    cache: Arc<Cache<K, (V, u64)>>,
    ttl_ms: u64,
    /// A hit on an entry older than this reloads it in the background
    /// (`ttl_ms` when refresh-ahead is off: never).
    refresh_after_ms: u64,
    /// Keys being reloaded in the background, so a hot key is reloaded
    /// once, not on every hit of its last moments.
    refreshing: Arc<Mutex<HashSet<K>>>,
    start: Instant,
    epochs: Arc<Epochs>,
}

/// Stripes of invalidation counters, a key's stripe bumped when it is
/// invalidated: a load that overlapped an invalidation of its stripe may
/// have read the old state, so its result is returned but not cached.
/// Striped, not one counter for the cache: with one, every change anywhere
/// (hundreds a second for a million users) kept every load then in flight
/// from being cached (docs/BENCHMARKS.md, "Presence cache under a skewed
/// workload").
struct Epochs {
    stripes: Box<[AtomicU64]>,
    hasher: FixedState,
}

/// Stripes per cache: 8 KiB, and a change spoils 1 in 1024 loads in flight.
const STRIPES: usize = 1024;

impl Epochs {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: FixedState::default(),
        }
    }

    fn of<K: Hash>(&self, key: &K) -> &AtomicU64 {
        &self.stripes[self.hasher.hash_one(key) as usize % STRIPES]
    }

    fn bump<K: Hash>(&self, key: &K) {
        self.of(key).fetch_add(1, Ordering::AcqRel);
    }

    fn bump_all(&self) {
        for stripe in self.stripes.iter() {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
    }
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
        changes: Option<broadcast::Receiver<Changed<K>>>,
        lookups: Option<&'static str>,
    ) -> Self {
        let entries = (capacity > 0).then(|| Entries::new(capacity, ttl, changes));
        Self {
            lookups: entries.as_ref().and(lookups).map(LookupCounters::new),
            entries,
        }
    }

    /// Reloads an entry in the background when it is hit within `ahead`
    /// of its expiry (zero, as [`new`](Self::new) builds it, turns it off):
    /// hot keys stay cached, at the cost of one load per hot key and TTL.
    pub fn refresh_ahead(mut self, ahead: Duration) -> Self {
        if let Some(entries) = &mut self.entries {
            let ahead_ms = u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX);
            entries.refresh_after_ms = entries.ttl_ms.saturating_sub(ahead_ms);
        }
        self
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
        E: Send + 'static,
    {
        let Some(entries) = &self.entries else {
            return load.await;
        };
        // No reload: refresh-ahead is for callers that give one (`lookup`).
        let no_reload = None::<fn() -> std::future::Ready<Result<V, E>>>;
        let (value, lookup) = entries.get_or_load(key, load, no_reload).await?;
        self.record(lookup);
        Ok(value)
    }

    /// [`get_or_load`](Self::get_or_load), saying how the value was found
    /// (what a benchmark or a test needs per lookup; the metric only counts
    /// them). `reload` makes the future that refreshes a hot entry ahead of
    /// its expiry, in the background; it is called only then.
    pub async fn lookup<E, F, R, G>(&self, key: &K, load: F, reload: R) -> Result<(V, Lookup), E>
    where
        F: Future<Output = Result<V, E>>,
        R: FnOnce() -> G,
        G: Future<Output = Result<V, E>> + Send + 'static,
    {
        let Some(entries) = &self.entries else {
            return Ok((load.await?, Lookup::Miss));
        };
        let (value, lookup) = entries.get_or_load(key, load, Some(reload)).await?;
        self.record(lookup);
        Ok((value, lookup))
    }

    fn record(&self, lookup: Lookup) {
        if let Some(lookups) = &self.lookups {
            lookups.record(lookup == Lookup::Hit);
        }
    }

    /// Drops `key`'s entry now (this node changed it; its own event follows).
    pub fn invalidate(&self, key: &K) {
        if let Some(entries) = &self.entries {
            entries.epochs.bump(key);
            entries.cache.remove(key);
        }
    }
}

impl<K, V> Entries<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new(capacity: u64, ttl: Duration, changes: Option<broadcast::Receiver<Changed<K>>>) -> Self {
        let cache = Arc::new(Cache::new(usize::try_from(capacity).unwrap_or(usize::MAX)));
        let epochs = Arc::new(Epochs::new());
        if let Some(mut changes) = changes {
            // Weak: a dropped cache ends its follower at the next event
            // instead of being kept alive by it.
            let (follower, epochs) = (Arc::downgrade(&cache), epochs.clone());
            tokio::spawn(async move {
                loop {
                    let event = changes.recv().await;
                    let Some(follower) = follower.upgrade() else {
                        break;
                    };
                    match event {
                        Ok(Changed::Key(key)) => {
                            epochs.bump(&key);
                            follower.remove(&key);
                        }
                        // Missed events, upstream or here: anything may be
                        // stale, start over. The bump keeps a load begun
                        // before the gap from caching what it read.
                        Ok(Changed::All) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            epochs.bump_all();
                            follower.clear();
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
        }
        let ttl_ms = ttl.as_millis().try_into().unwrap_or(u64::MAX);
        Self {
            cache,
            ttl_ms,
            refresh_after_ms: ttl_ms,
            refreshing: Arc::default(),
            start: Instant::now(),
            epochs,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// The value and how it was found.
    async fn get_or_load<E, F, R, G>(
        &self,
        key: &K,
        load: F,
        reload: Option<R>,
    ) -> Result<(V, Lookup), E>
    where
        F: Future<Output = Result<V, E>>,
        R: FnOnce() -> G,
        G: Future<Output = Result<V, E>> + Send + 'static,
    {
        let mut lookup = Lookup::Miss;
        if let Some((hit, loaded)) = self.cache.get(key) {
            let age = self.now_ms().saturating_sub(loaded);
            if age < self.ttl_ms {
                if age >= self.refresh_after_ms {
                    if let Some(reload) = reload {
                        self.refresh(key, reload());
                    }
                }
                return Ok((hit, Lookup::Hit));
            }
            lookup = Lookup::Expired;
        }
        let epoch = self.epochs.of(key).load(Ordering::Acquire);
        let loaded = self.now_ms();
        let value = load.await?;
        keep(&self.cache, &self.epochs, key, value.clone(), loaded, epoch);
        Ok((value, lookup))
    }

    /// Reloads `key` in the background unless a reload of it is running;
    /// cached under the same rule as a load (not across an invalidation).
    /// A failed reload leaves the entry to expire, and the lookup after
    /// that reports the error.
    fn refresh<E, G>(&self, key: &K, reload: G)
    where
        G: Future<Output = Result<V, E>> + Send + 'static,
    {
        if !self.refreshing.lock().insert(key.clone()) {
            return;
        }
        let (cache, epochs, refreshing) = (
            self.cache.clone(),
            self.epochs.clone(),
            self.refreshing.clone(),
        );
        let (key, start) = (key.clone(), self.start);
        tokio::spawn(async move {
            let epoch = epochs.of(&key).load(Ordering::Acquire);
            let loaded = start.elapsed().as_millis() as u64;
            if let Ok(value) = reload.await {
                keep(&cache, &epochs, &key, value, loaded, epoch);
            }
            refreshing.lock().remove(&key);
        });
    }
}

/// Caches a value loaded at `loaded` unless `key`'s stripe was bumped since
/// it read `epoch`. Checked again after the insert: an invalidation landing
/// between the check and the insert would otherwise have its removal
/// overwritten by the old value. (Either the second check sees its bump,
/// or its removal comes after the insert: both take the cache shard's lock.)
fn keep<K, V>(
    cache: &Cache<K, (V, u64)>,
    epochs: &Epochs,
    key: &K,
    value: V,
    loaded: u64,
    epoch: u64,
) where
    K: Eq + Hash + Clone,
    V: Clone,
{
    let stripe = epochs.of(key);
    if stripe.load(Ordering::Acquire) != epoch {
        return;
    }
    cache.insert(key.clone(), (value, loaded));
    if stripe.load(Ordering::Acquire) != epoch {
        cache.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Changed, FollowingCache, Lookup};

    type Cache = FollowingCache<&'static str, u64>;

    /// Looks `key` up with a load (and reload) of `source`'s current value.
    async fn lookup(cache: &Cache, source: &Arc<AtomicU64>) -> (u64, Lookup) {
        let read = |s: Arc<AtomicU64>| async move { Ok::<_, ()>(s.load(Ordering::SeqCst)) };
        let reload = || read(source.clone());
        cache
            .lookup(&"k", read(source.clone()), reload)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_hit_near_expiry_reloads_in_the_background() {
        let source = Arc::new(AtomicU64::new(1));
        // Refresh-ahead over the whole TTL: every hit reloads.
        let cache = Cache::new(10, Duration::from_secs(60), None, None)
            .refresh_ahead(Duration::from_secs(60));
        assert_eq!(lookup(&cache, &source).await, (1, Lookup::Miss));
        source.store(2, Ordering::SeqCst);
        assert_eq!(lookup(&cache, &source).await, (1, Lookup::Hit));
        let mut seen = (1, Lookup::Hit);
        for _ in 0..100 {
            seen = lookup(&cache, &source).await;
            if seen.0 == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, (2, Lookup::Hit), "reloaded without a miss");
    }

    #[tokio::test]
    async fn without_refresh_ahead_a_hit_reloads_nothing() {
        let source = Arc::new(AtomicU64::new(1));
        let cache = Cache::new(10, Duration::from_secs(60), None, None);
        assert_eq!(lookup(&cache, &source).await, (1, Lookup::Miss));
        source.store(2, Ordering::SeqCst);
        for _ in 0..10 {
            assert_eq!(lookup(&cache, &source).await, (1, Lookup::Hit));
            tokio::task::yield_now().await;
        }
    }

    /// Loads `key` while `changed` is invalidated, then looks `key` up again.
    async fn load_across_a_change(key: u64, changed: u64) -> Lookup {
        let cache: FollowingCache<u64, u64> =
            FollowingCache::new(10, Duration::from_secs(60), None, None);
        let load = async {
            cache.invalidate(&changed);
            Ok::<_, ()>(key)
        };
        cache.get_or_load(&key, load).await.unwrap();
        looked_up(&cache, key).await
    }

    /// How a lookup of `key` (loading the key itself) is answered.
    async fn looked_up(cache: &FollowingCache<u64, u64>, key: u64) -> Lookup {
        let load = async { Ok::<_, ()>(key) };
        cache
            .lookup(&key, load, || async { Err(()) })
            .await
            .unwrap()
            .1
    }

    #[tokio::test]
    async fn a_load_across_its_keys_invalidation_is_not_cached() {
        assert_eq!(load_across_a_change(1, 1).await, Lookup::Miss);
    }

    #[tokio::test]
    async fn a_load_across_another_keys_invalidation_is_cached() {
        assert_eq!(load_across_a_change(1, 2).await, Lookup::Hit);
    }

    #[tokio::test]
    async fn an_invalidation_evicts_only_its_key() {
        let cache: FollowingCache<u64, u64> =
            FollowingCache::new(10, Duration::from_secs(60), None, None);
        for key in [1, 2] {
            cache
                .get_or_load(&key, async { Ok::<_, ()>(key) })
                .await
                .unwrap();
        }
        cache.invalidate(&1);
        assert_eq!(looked_up(&cache, 1).await, Lookup::Miss);
        assert_eq!(looked_up(&cache, 2).await, Lookup::Hit);
    }

    /// Lookups of 1 and 2 after `event` arrives on the feed (both cached
    /// before it).
    async fn after_event(event: Changed<u64>) -> [Lookup; 2] {
        let feed = super::local();
        let cache: FollowingCache<u64, u64> =
            FollowingCache::new(10, Duration::from_secs(600), Some(feed.subscribe()), None);
        for key in [1, 2] {
            cache
                .get_or_load(&key, async { Ok::<_, ()>(key) })
                .await
                .unwrap();
        }
        feed.send(event).unwrap();
        // The follower runs on its own task; give it the event.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if looked_up(&cache, 1).await == Lookup::Miss {
                return [Lookup::Miss, looked_up(&cache, 2).await];
            }
        }
        [Lookup::Hit, looked_up(&cache, 2).await]
    }

    #[tokio::test]
    async fn a_key_event_evicts_its_key() {
        assert_eq!(
            after_event(Changed::Key(1)).await,
            [Lookup::Miss, Lookup::Hit]
        );
    }

    #[tokio::test]
    async fn a_gap_in_the_feed_evicts_every_key() {
        assert_eq!(
            after_event(Changed::All).await,
            [Lookup::Miss, Lookup::Miss]
        );
    }
}
