//! The state stores of one `[store]` backend, and the factory each backend
//! implements on its config (as each transport implements
//! `TransportFactory`): the in-process one here, Redis in `redis.rs`.

use std::sync::Arc;

use async_trait::async_trait;

use super::BuildError;
use crate::blocks::{memory::MemoryBlocks, BlockList};
use crate::config::{Settings, StoreConfig};
use crate::groups::{memory::MemoryGroups, GroupStore};
use crate::offline::{memory::MemoryOffline, OfflineStore};
use crate::presence::{memory::MemoryPresence, PresenceStore};
use crate::registry::{memory::MemoryRegistry, Reaper, Registry};

/// What one `[store]` backend provides.
pub(super) struct Stores {
    pub(super) presence: Arc<dyn PresenceStore>,
    pub(super) groups: Arc<dyn GroupStore>,
    pub(super) blocks: Arc<dyn BlockList>,
    pub(super) offline: Arc<dyn OfflineStore>,
    pub(super) registry: Arc<dyn Registry>,
    /// Cleans up after the gateways its registry expires, once the
    /// directory exists.
    pub(super) reaper: Option<Reaper>,
    /// Presence replication between regions, with `[regions]`.
    #[cfg(feature = "regions")]
    pub(super) regions: Option<Arc<crate::regions::Regions>>,
}

/// Builds the stores of one `[store]` backend.
#[async_trait]
pub(super) trait StoreFactory: Sync {
    /// Connects the stores; `settings` for the sections they read
    /// (`[presence]`, `[offline]`, `[regions]`).
    async fn build(&self, settings: &Settings) -> Result<Stores, BuildError>;
}

/// The factory of `config`'s backend.
pub(super) fn factory(config: &StoreConfig) -> &dyn StoreFactory {
    match config {
        StoreConfig::Memory => &Memory,
        #[cfg(feature = "redis")]
        StoreConfig::Redis(redis) => redis,
    }
}

/// In-process maps: `[store] kind = "memory"`.
struct Memory;

#[async_trait]
impl StoreFactory for Memory {
    async fn build(&self, settings: &Settings) -> Result<Stores, BuildError> {
        Ok(Stores {
            presence: Arc::new(MemoryPresence::new(settings.presence.session_ttl)),
            groups: Arc::new(MemoryGroups::default()),
            blocks: Arc::new(MemoryBlocks::default()),
            offline: Arc::new(MemoryOffline::new(settings.offline.clone())),
            registry: Arc::new(MemoryRegistry::default()),
            reaper: None,
            #[cfg(feature = "regions")]
            regions: None,
        })
    }
}
