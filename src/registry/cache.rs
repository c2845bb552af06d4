//! Gateway look-ups cached in process in front of any [`Registry`]. Every
//! group message asks for the region of each gateway hosting members, and
//! every direct-link publish for its peer's address: one store round trip
//! each without this. A gateway's entry changes when it re-registers
//! elsewhere (a restart on a new address) or dies; other nodes see that
//! within [`TTL`], and a stale address fails the link, which falls back to
//! the broker route.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::Registry;
use crate::changes::FollowingCache;
use crate::error::StoreError;
use crate::topology::{GatewayId, GatewayInfo};

/// How long a looked-up gateway is served from the cache.
pub const TTL: Duration = Duration::from_secs(1);
/// Gateways kept (far more than any fleet has).
const CAPACITY: u64 = 100_000;

/// Wraps a registry; changes go straight through and drop this node's entry
/// (registries publish no change events: other nodes rely on [`TTL`]).
pub struct CachedRegistry {
    store: Arc<dyn Registry>,
    cache: FollowingCache<GatewayId, GatewayInfo>,
}

impl CachedRegistry {
    /// Wraps `store`.
    pub fn new(store: Arc<dyn Registry>) -> Self {
        let cache = FollowingCache::new(CAPACITY, TTL, None, None);
        Self { store, cache }
    }
}

/// A gateway that is not registered is not cached: one that registers a
/// moment later must be found at once.
#[derive(Debug)]
enum Miss {
    Absent,
    Store(StoreError),
}

#[async_trait]
impl Registry for CachedRegistry {
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError> {
        self.store.register(gateway).await?;
        self.cache.invalidate(&gateway.id);
        Ok(())
    }

    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        self.store.deregister(gateway).await?;
        self.cache.invalidate(gateway);
        Ok(())
    }

    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError> {
        let load = async {
            match self.store.get(gateway).await {
                Ok(Some(info)) => Ok(info),
                Ok(None) => Err(Miss::Absent),
                Err(err) => Err(Miss::Store(err)),
            }
        };
        match self.cache.get_or_load(gateway, load).await {
            Ok(info) => Ok(Some(info)),
            Err(Miss::Absent) => Ok(None),
            Err(Miss::Store(err)) => Err(err),
        }
    }

    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        self.store.list().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::memory::MemoryRegistry;

    #[tokio::test]
    async fn this_nodes_changes_show_at_once_and_absence_is_not_cached() {
        let registry = CachedRegistry::new(Arc::new(MemoryRegistry::default()));
        let gw = GatewayInfo::new("gw-a", "eu");
        assert_eq!(registry.get(&gw.id).await.unwrap(), None);
        registry.register(&gw).await.unwrap();
        assert_eq!(registry.get(&gw.id).await.unwrap(), Some(gw.clone()));

        let mut moved = gw.clone();
        moved.address = "10.0.0.2:7000".into();
        registry.register(&moved).await.unwrap();
        assert_eq!(registry.get(&gw.id).await.unwrap(), Some(moved));

        registry.deregister(&gw.id).await.unwrap();
        assert_eq!(registry.get(&gw.id).await.unwrap(), None);
    }
}
