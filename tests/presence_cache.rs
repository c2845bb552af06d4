//! The presence cache on real Redis: an entry, positive (online) or
//! negative (offline), is answered from the cache, and a change on another
//! node evicts it through the change events, with refresh-ahead on or off.
//!
//! Needs `scripts/services/redis.sh start` (127.0.0.1:6379) and
//! `scripts/services/redis-cluster.sh start` (7000-7005).

mod redis_support;

use std::sync::Arc;
use std::time::Duration;

use redis_support::{raw, redis_config, Deployment};
use switchyard::presence::cache::{CachedPresence, Lookup};
use switchyard::presence::redis::RedisPresence;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::UserId;

/// A node's cached presence on the deployment `redis` names. The TTL is a
/// minute, so only an event can evict an entry within the test.
async fn node(
    redis: &switchyard::redis_conn::RedisConfig,
    refresh_ahead: Duration,
) -> CachedPresence {
    let store: Arc<dyn PresenceStore> = Arc::new(
        RedisPresence::new(raw(redis).await, Duration::from_secs(600))
            .await
            .expect("presence on Redis"),
    );
    let config = PresenceConfig {
        cache_ttl: Duration::from_secs(60),
        cache_refresh_ahead: refresh_ahead,
        ..PresenceConfig::default()
    };
    CachedPresence::new(store, &config)
}

fn session(user: &str) -> Session {
    Session {
        user: user.into(),
        device: "phone".into(),
        gateway: "gw-a".into(),
        region: "eu".into(),
        since_micros: 1,
    }
}

/// Looks `user` up on `node` every 50 ms until it has `sessions` sessions
/// (for at most 5 s), and returns how the lookup that saw them was answered.
async fn settles(node: &CachedPresence, user: &UserId, sessions: usize) -> Option<Lookup> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let (found, lookup) = node.locate_traced(user).await.expect("lookup");
        if found.len() == sessions {
            return Some(lookup);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn an_entry_is_cached_and_a_change_elsewhere_evicts_it(
    deployment: Deployment,
    refresh_ahead: Duration,
) {
    let redis = redis_config(deployment);
    let (a, b) = (
        node(&redis, refresh_ahead).await,
        node(&redis, refresh_ahead).await,
    );
    let alice = UserId::from("alice");

    // Negative: offline is cached too.
    let (found, first) = b.locate_traced(&alice).await.unwrap();
    assert!(found.is_empty());
    assert_eq!(first, Lookup::Miss);
    let (found, second) = b.locate_traced(&alice).await.unwrap();
    assert!(found.is_empty());
    assert_eq!(
        second,
        Lookup::Hit,
        "an offline user is answered from the cache"
    );

    // Without refresh-ahead the state after the event is a load (a miss);
    // with it, a background reload that began after the event may have
    // cached it already.
    let evicted = |seen: Option<Lookup>| {
        seen == Some(Lookup::Miss) || (!refresh_ahead.is_zero() && seen == Some(Lookup::Hit))
    };
    a.online(session("alice")).await.unwrap();
    let seen = settles(&b, &alice, 1).await;
    assert!(
        evicted(seen),
        "the cached offline entry was evicted by the event, not served until its TTL: {seen:?}"
    );

    // Positive: the new session is cached in turn.
    let (found, lookup) = b.locate_traced(&alice).await.unwrap();
    assert_eq!((found.len(), lookup), (1, Lookup::Hit));

    a.offline(&alice, &"phone".into()).await.unwrap();
    let seen = settles(&b, &alice, 0).await;
    assert!(
        evicted(seen),
        "the cached online entry was evicted by the event: {seen:?}"
    );
    // And nothing (a background refresh that raced the event) put the
    // old state back.
    for _ in 0..20 {
        assert!(b.locate(&alice).await.unwrap().is_empty());
    }
}

async fn without_refresh_ahead(deployment: Deployment) {
    an_entry_is_cached_and_a_change_elsewhere_evicts_it(deployment, Duration::ZERO).await
}

/// Refresh-ahead over the whole TTL: every hit reloads in the background,
/// the case where a reload most often races an event.
async fn with_refresh_ahead(deployment: Deployment) {
    let whole_ttl = Duration::from_secs(60);
    an_entry_is_cached_and_a_change_elsewhere_evicts_it(deployment, whole_ttl).await
}

on_both!(without_refresh_ahead, with_refresh_ahead);
