//! Block lists cached per recipient in front of any [`BlockList`]. Most
//! users block nobody, so a hit is usually an empty list.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{BlockList, BlocksConfig};
use crate::changes::{Changed, FollowingCache};
use crate::error::StoreError;
use crate::telemetry;
use crate::topology::UserId;

/// Wraps a store; changes go straight through and drop the cached list.
pub struct CachedBlocks {
    store: Arc<dyn BlockList>,
    cache: FollowingCache<UserId, Arc<[UserId]>>,
}

impl CachedBlocks {
    /// Wraps `store`, following its change events.
    pub fn new(store: Arc<dyn BlockList>, config: &BlocksConfig) -> Self {
        let cache = FollowingCache::new(
            config.cache_capacity,
            config.cache_ttl,
            Some(store.changes()),
            Some(telemetry::BLOCK_LOOKUPS),
        );
        Self { store, cache }
    }
}

#[async_trait]
impl BlockList for CachedBlocks {
    async fn block(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        self.store.block(user, blocked).await?;
        self.cache.invalidate(user);
        Ok(())
    }

    async fn unblock(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        self.store.unblock(user, blocked).await?;
        self.cache.invalidate(user);
        Ok(())
    }

    async fn is_blocked(&self, recipient: &UserId, sender: &UserId) -> Result<bool, StoreError> {
        if !self.cache.enabled() {
            return self.store.is_blocked(recipient, sender).await;
        }
        // Sorted once per load: a user who blocked thousands costs a binary
        // search per message, not a scan.
        let load = async {
            let mut blocked = self.store.blocked_by(recipient).await?;
            blocked.sort_unstable();
            Ok::<_, StoreError>(Arc::from(blocked))
        };
        let blocked = self.cache.get_or_load(recipient, load).await?;
        Ok(blocked.binary_search(sender).is_ok())
    }

    async fn blocked_by(&self, user: &UserId) -> Result<Vec<UserId>, StoreError> {
        self.store.blocked_by(user).await
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.store.changes()
    }
}
