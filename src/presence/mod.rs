//! Who is online where. A user may be online on several devices, each on some
//! gateway; [`PresenceStore`] holds those sessions with a TTL that the
//! gateway's heartbeat refreshes. [`cache::CachedPresence`] wraps any store
//! with a bounded in-process cache invalidated by change events.

pub mod cache;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod watch;

use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::changes::Changed;
use crate::error::StoreError;
use crate::topology::{DeviceId, GatewayId, Region, UserId};

/// Lookups of one `locate_many` in flight at once.
pub(crate) const LOCATE_CONCURRENCY: usize = 128;

/// One device of a user, connected to one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// The device (connection) id, unique per user.
    pub device: DeviceId,
    /// The gateway holding the connection.
    pub gateway: GatewayId,
    /// The gateway's region.
    pub region: Region,
    /// When the session came online, microseconds since the Unix epoch.
    pub since_micros: i64,
}

/// The sessions of users, shared by every router node.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Marks a session online (or refreshes it). Returns true when this is the
    /// user's first live session on that gateway.
    async fn online(&self, session: Session) -> Result<bool, StoreError>;

    /// Marks a device offline. Returns the removed session and whether it was
    /// the user's last session on its gateway; `None` if it was not online.
    async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<(Session, bool)>, StoreError>;

    /// Every live session of a user.
    async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError>;

    /// The live sessions of each of `users`, in order. The lookups run
    /// concurrently, so on Redis they share the connections' pipelines:
    /// about one round trip per shard for a whole friend list.
    async fn locate_many(&self, users: &[UserId]) -> Result<Vec<Vec<Session>>, StoreError> {
        // Owned ids: a closure over `&UserId` trips async_trait's `Send`.
        stream::iter(users.to_vec())
            .map(|user| async move { self.locate(&user).await })
            .buffered(LOCATE_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Extends the TTL of every session on a gateway (its heartbeat).
    async fn refresh(&self, gateway: &GatewayId) -> Result<(), StoreError>;

    /// Users with a live session on a gateway (its online count).
    async fn hosted_users(&self, gateway: &GatewayId) -> Result<u64, StoreError>;

    /// Removes every session on a gateway that died; returns them.
    async fn remove_gateway(&self, gateway: &GatewayId) -> Result<Vec<Session>, StoreError>;

    /// Users whose sessions changed, as seen by any node, and
    /// [`Changed::All`] when the feed may have missed some; used to
    /// invalidate local caches and to follow watches.
    fn changes(&self) -> broadcast::Receiver<Changed<UserId>>;
}

/// `[presence]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    /// A session not refreshed by a heartbeat for this long is gone.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Users kept in the in-process cache (0 turns the cache off).
    pub cache_capacity: u64,
    /// How long a cached lookup may be served without asking the store.
    /// Change events invalidate entries earlier, and a gap in the change
    /// feed (a Redis subscription dropped) clears the cache, so this only
    /// bounds an event lost without a detected gap: a write whose publish
    /// failed, or a subscriber connection dead without the client knowing.
    /// Minutes, not seconds, by default: under Zipf lookups the TTL is what
    /// caps the hit rate (5 s: 67 %, 5 min: 90 %, docs/BENCHMARKS.md).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// A lookup that hits an entry this close to its TTL reloads it in the
    /// background, so a user looked up at least this often never expires
    /// into a miss (0 turns it off; at most `cache_ttl`). Entries stay at
    /// most `cache_ttl` old: this adds hits, not staleness.
    #[serde(with = "humantime_serde")]
    pub cache_refresh_ahead: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(60),
            cache_capacity: 1_000_000,
            cache_ttl: Duration::from_secs(300),
            cache_refresh_ahead: Duration::from_secs(1),
        }
    }
}
