//! Who blocked whom. Checked before a message is forwarded, so every send to
//! a user asks; [`cache::CachedBlocks`] keeps each recipient's list in
//! process, dropped on any node's change event.

pub mod cache;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::changes::Changed;
use crate::error::StoreError;
use crate::topology::UserId;

/// A per-user block list.
#[async_trait]
pub trait BlockList: Send + Sync + 'static {
    /// `user` stops receiving messages from `blocked`.
    async fn block(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError>;
    /// Undoes [`BlockList::block`].
    async fn unblock(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError>;
    /// Whether `recipient` has blocked `sender`.
    async fn is_blocked(&self, recipient: &UserId, sender: &UserId) -> Result<bool, StoreError>;
    /// Everyone `user` has blocked.
    async fn blocked_by(&self, user: &UserId) -> Result<Vec<UserId>, StoreError>;
    /// Users whose block list changed, as seen by any node, and
    /// [`Changed::All`] when the feed may have missed some; used to
    /// invalidate caches.
    fn changes(&self) -> broadcast::Receiver<Changed<UserId>>;
}

/// `[blocks]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlocksConfig {
    /// Recipients whose block list is kept in process (0 turns the cache
    /// off: one store lookup per message to a user).
    pub cache_capacity: u64,
    /// How long a cached list may be served without asking the store.
    /// Change events invalidate entries within milliseconds; this bounds
    /// how long a block can be missed if an event is lost.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for BlocksConfig {
    fn default() -> Self {
        Self {
            cache_capacity: 1_000_000,
            cache_ttl: Duration::from_secs(5),
        }
    }
}
