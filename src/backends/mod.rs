//! Every backend a router uses, built once at start-up from [`Settings`].
//! Routers in one process (the demo fleet, a sidecar serving several
//! gateways) share one `Backends`.
//!
//! - `stores`: the state stores of one `[store]` backend, and the factory
//!   each backend implements (memory here, `redis` in its own file).

#[cfg(feature = "redis")]
mod redis;
mod stores;

use std::sync::Arc;

use crate::blocks::{cache::CachedBlocks, BlockList};
use crate::config::ConfigError;
use crate::config::Settings;
use crate::error::StoreError;
use crate::groups::Directory;
use crate::offline::OfflineStore;
use crate::policy::hot_pairs::HotPairs;
use crate::presence::cache::CachedPresence;
use crate::registry::{cache::CachedRegistry, Registry, Separate};
use crate::transport::{Dependencies, TransportError, Transports};
use stores::Stores;

/// The state stores and transports of a router node. Opaque: built from
/// settings, read through its accessors, shared by cloning.
#[derive(Clone)]
pub struct Backends {
    /// Sessions, behind the local cache.
    pub(crate) presence: Arc<CachedPresence>,
    /// Presence and groups kept in step.
    pub(crate) directory: Directory,
    /// Block lists, behind the local cache.
    pub(crate) blocks: Arc<dyn BlockList>,
    /// Offline queues.
    pub(crate) offline: Arc<dyn OfflineStore>,
    /// Live gateways, behind a short local cache of look-ups.
    pub(crate) registry: Arc<dyn Registry>,
    /// Enabled transports.
    pub(crate) transports: Transports,
    /// What the transports' factories left for the node, by type; shared,
    /// so a clone of the backends stays a copy of pointers.
    pub(crate) extensions: Arc<http::Extensions>,
    /// Hot-pair detection, shared by every router of the process.
    pub(crate) hot_pairs: Arc<HotPairs>,
    /// Presence replication between regions, with `[regions]`.
    #[cfg(feature = "regions")]
    pub(crate) regions: Option<Arc<crate::regions::Regions>>,
}

impl Backends {
    /// Sessions, behind the local cache.
    pub fn presence(&self) -> &Arc<CachedPresence> {
        &self.presence
    }

    /// Presence and groups kept in step.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Block lists, behind the local cache.
    pub fn blocks(&self) -> &Arc<dyn BlockList> {
        &self.blocks
    }

    /// Offline queues.
    pub fn offline(&self) -> &Arc<dyn OfflineStore> {
        &self.offline
    }

    /// Live gateways, behind a short local cache of look-ups.
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    /// The transports, each once by kind.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// The same backends over these transports instead (a gateway that
    /// routes over a set of its own choosing; the conformance suite runs
    /// routers over the one transport under test).
    pub fn with_transports(mut self, transports: Transports) -> Self {
        self.transports = transports;
        self
    }

    /// What a transport's factory left of type `T` for the parts of the
    /// node that serve it (the `grpc` transport's `PeerLinks`, which the
    /// sidecar's Peer API feeds), if that transport is enabled.
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get()
    }

    /// The same backends with `value` as their extension of its type (a
    /// test whose direct links point back at its own sidecar).
    pub fn with_extension<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        Arc::make_mut(&mut self.extensions).insert(value);
        self
    }

    /// Builds the backends `settings` select. Must run inside a Tokio
    /// runtime. Checks every setting but `[routing]` and `[canary]`, which
    /// the router builder checks against the transports it is given too.
    pub async fn from_settings(settings: &Settings) -> Result<Self, BuildError> {
        settings.validate_backends()?;
        #[cfg(feature = "regions")]
        let settings = &crate::config::regions::localize(settings);
        let Stores {
            presence,
            groups,
            blocks,
            offline,
            mut registry,
            mut reaper,
            #[cfg(feature = "regions")]
            regions,
        } = stores::factory(&settings.store).build(settings).await?;
        // `[registry]` may name a registry of its own (etcd), which then
        // cleans up after the gateways it expires.
        if let Some(separate) = Separate::connect(&settings.registry).await? {
            registry = separate.registry;
            reaper = Some(separate.clean_up);
        }
        let presence = Arc::new(CachedPresence::new(presence, &settings.presence));
        let blocks = Arc::new(CachedBlocks::new(blocks, &settings.blocks));
        let registry: Arc<dyn Registry> = Arc::new(CachedRegistry::new(registry));
        let deps = Dependencies {
            registry: registry.clone(),
            extensions: Default::default(),
        };
        let transports = settings.transports.build(&deps).await?;
        let extensions = Arc::new(deps.extensions.into_inner());
        let direct = transports
            .iter()
            .find(|t| t.capabilities().direct)
            .map(|t| t.kind());
        let hot_pairs = Arc::new(HotPairs::new(settings.routing.hot_pairs.clone(), direct));
        let directory = Directory::new(presence.clone(), groups);
        if let Some(reap) = reaper {
            reap(&directory);
        }
        #[cfg(feature = "regions")]
        if let Some(regions) = &regions {
            let limit = settings.offline.max_per_user;
            regions.follow(directory.clone(), offline.clone(), limit)?;
        }
        Ok(Self {
            directory,
            presence,
            blocks,
            offline,
            registry,
            transports,
            extensions,
            hot_pairs,
            #[cfg(feature = "regions")]
            regions,
        })
    }

    /// With `[regions]`: the check that routes again what reaches gateway
    /// `me` for a user who is not there; an error when `me` is of another
    /// region (its sessions would land in this region's store).
    #[cfg(feature = "regions")]
    pub(crate) fn region_guard(
        &self,
        me: &crate::topology::GatewayInfo,
    ) -> Result<Option<Arc<crate::regions::reresolve::Guard>>, BuildError> {
        let Some(regions) = self.regions.as_ref() else {
            return Ok(None);
        };
        if regions.region() != &me.region {
            return Err(ConfigError::Invalid(vec![crate::config::Problem {
                key: "regions.local".into(),
                reason: format!(
                    "this node serves region {}; gateway {} is in region {}",
                    regions.region(),
                    me.id,
                    me.region
                ),
            }])
            .into());
        }
        let (presence, offline) = (self.presence.clone(), self.offline.clone());
        Ok(Some(regions.guard(&me.id, presence, offline)))
    }
}

/// Building a router or its backends failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A store could not start.
    #[error(transparent)]
    Store(#[from] StoreError),
}
