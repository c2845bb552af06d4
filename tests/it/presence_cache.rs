//! The presence cache on real Redis: an entry, positive (online) or
//! negative (offline), is answered from the cache, and a change on another
//! node evicts it through the change events, with refresh-ahead on or off.
//! A change whose event a node missed (its subscription was down) is not
//! served stale after the subscription is back, however long the TTL; the
//! block list cache likewise.
//!
//! Needs `scripts/services/redis.sh start` (127.0.0.1:6379) and
//! `scripts/services/redis-cluster.sh start` (7000-7005).

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-redis")]

use std::sync::Arc;
use std::time::Duration;

use redis_nodes::{eventually, raw, redis_config, Deployment};
use switchyard::blocks::cache::CachedBlocks;
use switchyard::blocks::redis::RedisBlocks;
use switchyard::blocks::{BlockList, BlocksConfig};
use switchyard::presence::cache::{CachedPresence, Lookup};
use switchyard::presence::redis::RedisPresence;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::redis_conn::RedisConfig;
use switchyard::UserId;
use testkit::redis_nodes;

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

fn session(user: &'static str) -> Session {
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

testkit::on_both!(
    without_refresh_ahead,
    with_refresh_ahead,
    a_change_missed_in_a_subscription_gap_is_not_served_after_it
);

/// Every server of the deployment, each as a standalone connection's
/// settings (ACLs and pub/sub counts are per server).
fn servers(redis: &RedisConfig) -> Vec<RedisConfig> {
    let urls: Vec<String> = if redis.cluster {
        (7000..=7005)
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    } else {
        vec![redis.url.clone()]
    };
    urls.into_iter()
        .map(|url| RedisConfig {
            url,
            cluster: false,
            connections: 1,
            ..redis.clone()
        })
        .collect()
}

/// Runs `ACL SETUSER user <rules>` on every server.
async fn acl_setuser(redis: &RedisConfig, user: &str, rules: &[&str]) {
    for server in servers(redis) {
        let mut conn = raw(&server).await.conn();
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg(rules)
            .query_async::<()>(&mut conn)
            .await
            .expect("ACL SETUSER");
    }
}

/// Subscribers of `channel` on the whole deployment (sharded ones on a
/// cluster, where each server counts its own).
async fn subscribers(redis: &RedisConfig, channel: &str) -> i64 {
    let command = if redis.cluster {
        "SHARDNUMSUB"
    } else {
        "NUMSUB"
    };
    let mut total = 0;
    for server in servers(redis) {
        let mut conn = raw(&server).await.conn();
        let (_, count): (String, i64) = redis::cmd("PUBSUB")
            .arg(command)
            .arg(channel)
            .query_async::<Vec<(String, i64)>>(&mut conn)
            .await
            .expect("PUBSUB NUMSUB")
            .pop()
            .expect("one channel asked, one answered");
        total += count;
    }
    total
}

/// Node A caches alice offline and her empty block list (TTL 10 min, so
/// only an event or a gap can evict them). A's subscriptions are cut off
/// and held off: its Redis user loses its channel permissions, which
/// disconnects its subscribers and refuses their resubscribes. Node B then
/// changes alice; both events are published while A hears nothing. When
/// A's permissions are back and it has resubscribed, its next lookups must
/// see the change: before gaps cleared the caches, A served the stale
/// entries until the TTL.
async fn a_change_missed_in_a_subscription_gap_is_not_served_after_it(deployment: Deployment) {
    let redis = redis_config(deployment);
    let user = format!("{}-a", redis.key_prefix);
    acl_setuser(&redis, &user, &["on", ">gap", "~*", "&*", "+@all"]).await;
    let as_a = RedisConfig {
        url: redis
            .url
            .replacen("redis://", &format!("redis://{user}:gap@"), 1),
        ..redis.clone()
    };
    let ten_minutes = Duration::from_secs(600);
    let a_redis = raw(&as_a).await;
    let a_presence = CachedPresence::new(
        Arc::new(
            RedisPresence::new(a_redis.clone(), ten_minutes)
                .await
                .expect("presence on Redis"),
        ),
        &PresenceConfig {
            cache_ttl: ten_minutes,
            cache_refresh_ahead: Duration::ZERO,
            ..PresenceConfig::default()
        },
    );
    let a_blocks = CachedBlocks::new(
        Arc::new(RedisBlocks::new(a_redis).await.expect("blocks on Redis")),
        &BlocksConfig {
            cache_ttl: ten_minutes,
            ..BlocksConfig::default()
        },
    );
    let b_redis = raw(&redis).await;
    let b_presence = RedisPresence::new(b_redis.clone(), ten_minutes)
        .await
        .expect("presence on Redis");
    let b_blocks = RedisBlocks::new(b_redis).await.expect("blocks on Redis");
    let (alice, mallory) = (UserId::from("alice"), UserId::from("mallory"));

    assert!(a_presence.locate(&alice).await.unwrap().is_empty());
    let (found, lookup) = a_presence.locate_traced(&alice).await.unwrap();
    assert_eq!((found.len(), lookup), (0, Lookup::Hit), "cached offline");
    assert!(!a_blocks.is_blocked(&alice, &mallory).await.unwrap());

    // Each channel has two subscribers, A's and B's; A's go.
    let channels = [
        format!("{}:presence-events", redis.key_prefix),
        format!("{}:blocks-events", redis.key_prefix),
    ];
    let subscribed = |count: i64| {
        let (redis, channels) = (&redis, &channels);
        move || async move {
            for channel in channels {
                if subscribers(redis, channel).await != count {
                    return false;
                }
            }
            true
        }
    };
    assert!(eventually(Duration::from_secs(5), subscribed(2)).await);
    acl_setuser(&redis, &user, &["resetchannels"]).await;
    assert!(
        eventually(Duration::from_secs(5), subscribed(1)).await,
        "A's subscribers were cut off"
    );

    b_presence.online(session("alice")).await.unwrap();
    b_blocks.block(&alice, &mallory).await.unwrap();
    // A tries to resubscribe meanwhile and is refused; the events are lost.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        subscribed(1)().await,
        "A stayed unsubscribed over the change"
    );

    acl_setuser(&redis, &user, &["allchannels"]).await;
    assert!(
        eventually(Duration::from_secs(10), subscribed(2)).await,
        "A resubscribed"
    );
    let presence_fresh = eventually(Duration::from_secs(5), || async {
        a_presence.locate(&alice).await.unwrap().len() == 1
    })
    .await;
    let blocks_fresh = eventually(Duration::from_secs(5), || async {
        a_blocks.is_blocked(&alice, &mallory).await.unwrap()
    })
    .await;
    for server in servers(&redis) {
        let mut conn = raw(&server).await.conn();
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut conn)
            .await
            .expect("ACL DELUSER");
    }
    assert!(
        presence_fresh,
        "the presence entry cached before the gap was dropped after it"
    );
    assert!(
        blocks_fresh,
        "the block list cached before the gap was dropped after it"
    );
}
