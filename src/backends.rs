//! Every backend a router uses, built once at start-up from [`Settings`].
//! Routers in one process (the demo fleet, a sidecar serving several
//! gateways) share one `Backends`.

use std::sync::Arc;

use crate::blocks::{cache::CachedBlocks, memory::MemoryBlocks, redis::RedisBlocks, BlockList};
use crate::config::{ConfigError, Problem};
use crate::config::{Settings, StoreConfig};
use crate::error::StoreError;
use crate::groups::{memory::MemoryGroups, redis::RedisGroups, Directory, GroupStore};
use crate::offline::{memory::MemoryOffline, redis::RedisOffline, OfflineStore};
use crate::policy::hot_pairs::HotPairs;
use crate::presence::cache::CachedPresence;
use crate::presence::{memory::MemoryPresence, redis::RedisPresence, PresenceStore};
use crate::redis_conn::RedisHandle;
use crate::regions::{reresolve::Guard, Regions};
use crate::registry::{
    cache::CachedRegistry, memory::MemoryRegistry, redis::RedisRegistry, Registry,
};
use crate::topology::{GatewayInfo, IdError};
use crate::transport::{grpc::GrpcTransport, TransportError, Transports};

/// The state stores and transports of a router node.
#[derive(Clone)]
pub struct Backends {
    /// Sessions, behind the local cache.
    pub presence: Arc<CachedPresence>,
    /// Presence and groups kept in step.
    pub directory: Directory,
    /// Block lists, behind the local cache.
    pub blocks: Arc<dyn BlockList>,
    /// Offline queues.
    pub offline: Arc<dyn OfflineStore>,
    /// Live gateways, behind a short local cache of look-ups.
    pub registry: Arc<dyn Registry>,
    /// Enabled transports.
    pub transports: Transports,
    /// The `grpc` transport when enabled; the sidecar's Peer API feeds its
    /// receiving half.
    pub peer_links: Option<Arc<GrpcTransport>>,
    /// Hot-pair detection, shared by every router of the process.
    pub hot_pairs: Arc<HotPairs>,
    /// Presence replication between regions, with `[regions]`.
    pub regions: Option<Arc<Regions>>,
}

/// The state stores one `[store]` backend provides.
struct Stores {
    presence: Arc<dyn PresenceStore>,
    groups: Arc<dyn GroupStore>,
    blocks: Arc<dyn BlockList>,
    offline: Arc<dyn OfflineStore>,
    registry: Arc<dyn Registry>,
}

impl Backends {
    /// Builds the backends `settings` select. Must run inside a Tokio runtime.
    pub async fn from_settings(settings: &Settings) -> Result<Self, BuildError> {
        settings.validate()?;
        let settings = &crate::config::regions::localize(settings);
        let mut regions = None;
        // A shared registry expires gateways; someone must clean up after them.
        let mut reaper = None;
        let stores = match &settings.store {
            StoreConfig::Memory => Stores {
                presence: Arc::new(MemoryPresence::new(settings.presence.session_ttl)),
                groups: Arc::new(MemoryGroups::default()),
                blocks: Arc::new(MemoryBlocks::default()),
                offline: Arc::new(MemoryOffline::new(settings.offline.clone())),
                registry: Arc::new(MemoryRegistry::default()),
            },
            StoreConfig::Redis(config) => {
                let redis = RedisHandle::connect(config)
                    .await
                    .map_err(|e| e.for_store("redis"))?;
                let registry = Arc::new(RedisRegistry::new(redis.clone(), config.gateway_ttl));
                reaper = Some((registry.clone(), config.gateway_ttl / 2));
                let ttl = settings.presence.session_ttl;
                let local = Arc::new(RedisPresence::new(redis.clone(), ttl).await?);
                let presence: Arc<dyn PresenceStore> = match &settings.regions {
                    Some(config) => {
                        let Some(kafka) = &settings.transports.kafka else {
                            return Err(ConfigError::Invalid(config.problems(settings)).into());
                        };
                        let r = Regions::connect(config, kafka, redis.clone(), local).await?;
                        let presence = r.presence();
                        regions = Some(Arc::new(r));
                        presence
                    }
                    None => local,
                };
                Stores {
                    presence,
                    groups: Arc::new(RedisGroups::new(redis.clone())),
                    blocks: Arc::new(RedisBlocks::new(redis.clone()).await?),
                    offline: Arc::new(RedisOffline::new(redis, settings.offline.clone())),
                    registry,
                }
            }
        };
        let Stores {
            presence,
            groups,
            blocks,
            offline,
            registry,
        } = stores;
        let presence = Arc::new(CachedPresence::new(presence, &settings.presence));
        let blocks = Arc::new(CachedBlocks::new(blocks, &settings.blocks));
        let registry: Arc<dyn Registry> = Arc::new(CachedRegistry::new(registry));
        let mut transports = Transports::from_config(&settings.transports).await?;
        let peer_links = settings.transports.grpc.as_ref().map(|config| {
            let grpc = Arc::new(GrpcTransport::new(config, registry.clone()));
            transports.insert(grpc.clone());
            grpc
        });
        let hot_pairs = Arc::new(HotPairs::new(
            settings.routing.hot_pairs.clone(),
            peer_links.is_some(),
        ));
        let directory = Directory::new(presence.clone(), groups);
        if let Some((registry, every)) = reaper {
            registry.watch(directory.clone(), every);
        }
        if let Some(regions) = &regions {
            regions.follow(
                directory.clone(),
                offline.clone(),
                settings.offline.max_per_user,
            )?;
        }
        Ok(Self {
            directory,
            presence,
            blocks,
            offline,
            registry,
            transports,
            peer_links,
            hot_pairs,
            regions,
        })
    }

    /// With `[regions]`: the check that routes again what reaches gateway
    /// `me` for a user who is not there; an error when `me` is of another
    /// region (its sessions would land in this region's store).
    pub(crate) fn region_guard(&self, me: &GatewayInfo) -> Result<Option<Arc<Guard>>, BuildError> {
        let Some(regions) = self.regions.as_ref() else {
            return Ok(None);
        };
        if regions.region() != &me.region {
            return Err(ConfigError::Invalid(vec![Problem {
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
        Ok(Some(regions.guard(
            &me.id,
            self.presence.clone(),
            self.offline.clone(),
        )))
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
    /// The gateway's id or region breaks the identifier rules.
    #[error("gateway: {0}")]
    Gateway(#[from] IdError),
}
