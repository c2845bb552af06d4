//! A bounded, TTL'd in-process cache in front of any [`PresenceStore`],
//! invalidated by the store's change events. Lookups are the hot path of
//! every send; the cache keeps them off the network.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use futures::{stream, StreamExt, TryStreamExt};

use super::{PresenceConfig, PresenceStore, Session, LOCATE_CONCURRENCY};
pub use crate::changes::Lookup;
use crate::changes::{Changed, FollowingCache};
use crate::error::StoreError;
use crate::telemetry;
use crate::topology::{DeviceId, GatewayId, UserId};

/// Wraps a store; every call but `locate` goes straight through.
pub struct CachedPresence {
    store: Arc<dyn PresenceStore>,
    cache: FollowingCache<UserId, Arc<[Session]>>,
}

impl CachedPresence {
    /// Wraps `store`, following its change events.
    pub fn new(store: Arc<dyn PresenceStore>, config: &PresenceConfig) -> Self {
        let cache = FollowingCache::new(
            config.cache_capacity,
            config.cache_ttl,
            Some(store.changes()),
            Some(telemetry::PRESENCE_LOOKUPS),
        )
        .refresh_ahead(config.cache_refresh_ahead);
        Self { store, cache }
    }

    /// Sessions of a user, shared; avoids a copy on a cache hit.
    pub async fn locate_shared(&self, user: &UserId) -> Result<Arc<[Session]>, StoreError> {
        Ok(self.locate_traced(user).await?.0)
    }

    /// [`locate_shared`](Self::locate_shared), saying whether the cache
    /// answered (benches/presence_zipf.rs, tests/it/presence_cache.rs).
    pub async fn locate_traced(
        &self,
        user: &UserId,
    ) -> Result<(Arc<[Session]>, Lookup), StoreError> {
        let load = async { self.store.locate(user).await.map(Arc::from) };
        let reload = || {
            let (store, user) = (self.store.clone(), user.clone());
            async move { store.locate(&user).await.map(Arc::from) }
        };
        self.cache.lookup(user, load, reload).await
    }

    /// The sessions of each of `users` from the store itself, for a
    /// caller that must see a change its event announced (the cache drops
    /// the entry on the same event, maybe later).
    pub async fn locate_many_uncached(
        &self,
        users: &[UserId],
    ) -> Result<Vec<Vec<Session>>, StoreError> {
        self.store.locate_many(users).await
    }
}

#[async_trait]
impl PresenceStore for CachedPresence {
    async fn online(&self, session: Session) -> Result<bool, StoreError> {
        let user = session.user.clone();
        let first = self.store.online(session).await?;
        self.cache.invalidate(&user);
        Ok(first)
    }

    async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let removed = self.store.offline(user, device).await?;
        self.cache.invalidate(user);
        Ok(removed)
    }

    async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        Ok(self.locate_shared(user).await?.to_vec())
    }

    /// Cached users answer at once; the rest load concurrently.
    async fn locate_many(&self, users: &[UserId]) -> Result<Vec<Vec<Session>>, StoreError> {
        stream::iter(users.to_vec())
            .map(|user| async move { Ok(self.locate_shared(&user).await?.to_vec()) })
            .buffered(LOCATE_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn refresh(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        self.store.refresh(gateway).await
    }

    async fn remove_gateway(&self, gateway: &GatewayId) -> Result<Vec<Session>, StoreError> {
        let removed = self.store.remove_gateway(gateway).await?;
        for session in &removed {
            self.cache.invalidate(&session.user);
        }
        Ok(removed)
    }

    async fn hosted_users(&self, gateway: &GatewayId) -> Result<u64, StoreError> {
        self.store.hosted_users(gateway).await
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.store.changes()
    }
}
