//! The gateway registry on Redis.
//!
//! Keys:
//!
//! - `sy:gateway:{id}`: `region \x1f address`, with a TTL (`gateway_ttl`)
//!   that every heartbeat (`register`) renews.
//! - `sy:gateways`: set of registered ids. An id whose key has expired is a
//!   dead gateway: [`RedisRegistry::watch`] polls for them (keyspace
//!   notifications are off by default and lost while a node is down, a poll
//!   is not), and the node that removes the id from the set (SREM returns 1)
//!   cleans up its presence and group counts, so exactly one node does.
//!   The ring is built from the live set, so it changes with it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, StreamExt, TryStreamExt};
use redis::AsyncCommands;
use tokio::task::JoinHandle;

use super::Registry;
use crate::cause::Report;
use crate::error::StoreError;
use crate::groups::Directory;
use crate::redis_conn::{backend, RedisHandle};
use crate::stored;
use crate::topology::{GatewayId, GatewayInfo};

use super::STORE;

/// Registrations with a TTL in Redis.
pub struct RedisRegistry {
    redis: RedisHandle,
    ttl: Duration,
}

impl RedisRegistry {
    /// A gateway not refreshed for `ttl` is dead.
    pub fn new(redis: RedisHandle, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    fn key(&self, gateway: &GatewayId) -> String {
        self.redis.key(&["gateway", &format!("{{{gateway}}}")])
    }

    fn set_key(&self) -> String {
        self.redis.key(&["gateways"])
    }

    async fn ids(&self) -> Result<Vec<String>, StoreError> {
        self.redis
            .conn()
            .smembers(self.set_key())
            .await
            .map_err(backend(STORE, "list gateway ids".into()))
    }

    /// Finds gateways whose registration expired and claims them; returns
    /// the ones this node claimed (another node may claim the rest).
    pub async fn reap(&self) -> Result<Vec<GatewayId>, StoreError> {
        let mut dead = Vec::new();
        for id in self.ids().await? {
            let mut conn = self.redis.conn();
            // An id that breaks the rule was never registered by a node:
            // take it out of the set, nobody's sessions to remove.
            let Some(gateway) = stored::id::<GatewayId>(STORE, &id) else {
                let _: i64 = conn
                    .srem(self.set_key(), &id)
                    .await
                    .map_err(backend(STORE, format!("drop malformed gateway id {id:?}")))?;
                continue;
            };
            let alive: bool = conn
                .exists(self.key(&gateway))
                .await
                .map_err(backend(STORE, format!("check gateway {gateway}")))?;
            if alive {
                continue;
            }
            let claimed: i64 = conn
                .srem(self.set_key(), &id)
                .await
                .map_err(backend(STORE, format!("claim dead gateway {gateway}")))?;
            if claimed == 1 {
                dead.push(gateway);
            }
        }
        Ok(dead)
    }

    /// Every `every`, reaps dead gateways and removes their sessions and
    /// group counts through `directory`. Stops when the registry is dropped.
    pub fn watch(self: &Arc<Self>, directory: Directory, every: Duration) -> JoinHandle<()> {
        let registry: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                let dead = match registry.reap().await {
                    Ok(dead) => dead,
                    Err(err) => {
                        tracing::warn!(err = %Report(&err), "cannot look for dead gateways");
                        continue;
                    }
                };
                for gateway in dead {
                    match directory.remove_gateway(&gateway).await {
                        Ok(sessions) => {
                            tracing::warn!(%gateway, sessions, "gateway expired: sessions removed")
                        }
                        Err(err) => {
                            tracing::error!(%gateway, err = %Report(&err), "cannot clean up dead gateway")
                        }
                    }
                }
            }
        })
    }
}

#[async_trait]
impl Registry for RedisRegistry {
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError> {
        let mut conn = self.redis.conn();
        let value = super::encode(gateway);
        let _: () = conn
            .pset_ex(self.key(&gateway.id), value, self.ttl.as_millis() as u64)
            .await
            .map_err(backend(STORE, format!("register gateway {}", gateway.id)))?;
        let _: i64 = conn
            .sadd(self.set_key(), gateway.id.as_str())
            .await
            .map_err(backend(STORE, format!("list gateway {}", gateway.id)))?;
        Ok(())
    }

    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        let mut conn = self.redis.conn();
        let _: i64 = conn
            .del(self.key(gateway))
            .await
            .map_err(backend(STORE, format!("deregister gateway {gateway}")))?;
        let _: i64 = conn
            .srem(self.set_key(), gateway.as_str())
            .await
            .map_err(backend(STORE, format!("unlist gateway {gateway}")))?;
        Ok(())
    }

    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError> {
        let value: Option<String> = self
            .redis
            .conn()
            .get(self.key(gateway))
            .await
            .map_err(backend(STORE, format!("get gateway {gateway}")))?;
        value.map(|v| super::decode(gateway, &v)).transpose()
    }

    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        let ids = self.ids().await?;
        let ids: Vec<GatewayId> = ids.iter().filter_map(|id| stored::id(STORE, id)).collect();
        let mut live: Vec<GatewayInfo> = stream::iter(ids)
            .map(|id| async move { self.get(&id).await })
            .buffer_unordered(64)
            .try_filter_map(|g| async move { Ok(g) })
            .try_collect()
            .await?;
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }
}
