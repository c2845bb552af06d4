//! The stores on Redis (standalone, Cluster or Sentinel): `[store] kind =
//! "redis"`. One connection serves them all; with `[regions]`, presence is
//! the region's (local and replicated) and its replication comes along.

use std::sync::Arc;

use async_trait::async_trait;

use super::stores::{StoreFactory, Stores};
use super::BuildError;
#[cfg(feature = "regions")]
use crate::config::ConfigError;
use crate::config::Settings;
use crate::groups::redis::RedisGroups;
#[cfg(feature = "regions")]
use crate::groups::GroupStore;
use crate::presence::redis::RedisPresence;
#[cfg(feature = "regions")]
use crate::presence::PresenceStore;
use crate::redis_conn::{RedisConfig, RedisHandle};
use crate::registry::{redis::RedisRegistry, Reaper};
use crate::{blocks::redis::RedisBlocks, offline::redis::RedisOffline};

#[async_trait]
impl StoreFactory for RedisConfig {
    async fn build(&self, settings: &Settings) -> Result<Stores, BuildError> {
        let redis = RedisHandle::connect(self)
            .await
            .map_err(|e| e.for_store("redis"))?;
        let registry = Arc::new(RedisRegistry::new(redis.clone(), self.gateway_ttl));
        let (expiring, every) = (registry.clone(), self.gateway_ttl / 2);
        let reaper: Reaper = Box::new(move |directory| {
            // Runs for the life of the process, like the registry.
            drop(expiring.watch(directory.clone(), every));
        });
        let ttl = settings.presence.session_ttl;
        let presence = Arc::new(RedisPresence::new(redis.clone(), ttl).await?);
        #[cfg(feature = "regions")]
        let (presence, groups, regions): (Arc<dyn PresenceStore>, Arc<dyn GroupStore>, _) =
            match &settings.regions {
                Some(regions) => {
                    let (Some(kafka), Ok(local)) =
                        (&settings.transports.kafka, regions.local.parse())
                    else {
                        return Err(ConfigError::Invalid(regions.problems(settings)).into());
                    };
                    let running = crate::regions::Regions::connect(
                        regions,
                        local,
                        kafka,
                        redis.clone(),
                        presence,
                    )
                    .await?;
                    let groups: Arc<dyn GroupStore> = running.groups();
                    (running.presence(), groups, Some(Arc::new(running)))
                }
                None => (presence, Arc::new(RedisGroups::new(redis.clone())), None),
            };
        #[cfg(not(feature = "regions"))]
        let groups = Arc::new(RedisGroups::new(redis.clone()));
        Ok(Stores {
            presence,
            groups,
            blocks: Arc::new(RedisBlocks::new(redis.clone()).await?),
            offline: Arc::new(RedisOffline::new(redis, settings.offline.clone())),
            registry,
            reaper: Some(reaper),
            #[cfg(feature = "regions")]
            regions,
        })
    }
}
