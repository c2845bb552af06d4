//! Block lists on Redis: `sy:blocks:{user}` is the set of senders `user`
//! has blocked (hash tag: one slot per user on a cluster). Every change is
//! announced on the channel `sy:blocks-events` so each node's
//! [`CachedBlocks`](super::cache::CachedBlocks) drops the user's list.

use async_trait::async_trait;
use redis::AsyncCommands;
use tokio::sync::broadcast;

use super::BlockList;
use crate::changes::Changed;
use crate::error::StoreError;
use crate::redis_conn::{backend, RedisChanges, RedisHandle};
use crate::stored;
use crate::topology::UserId;

const STORE: &str = "blocks";

/// Block lists in Redis sets.
pub struct RedisBlocks {
    redis: RedisHandle,
    changes: RedisChanges,
}

impl RedisBlocks {
    /// Uses `redis` for every call and subscribes to change events.
    pub async fn new(redis: RedisHandle) -> Result<Self, StoreError> {
        let changes = RedisChanges::connect(redis.clone(), "blocks-events", STORE).await?;
        Ok(Self { redis, changes })
    }

    fn key(&self, user: &UserId) -> String {
        self.redis.key(&["blocks", &format!("{{{user}}}")])
    }
}

#[async_trait]
impl BlockList for RedisBlocks {
    async fn block(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        let _: i64 = self
            .redis
            .conn()
            .sadd(self.key(user), blocked.as_str())
            .await
            .map_err(backend(STORE, format!("{user} blocks {blocked}")))?;
        self.changes.publish(user).await
    }

    async fn unblock(&self, user: &UserId, blocked: &UserId) -> Result<(), StoreError> {
        let _: i64 = self
            .redis
            .conn()
            .srem(self.key(user), blocked.as_str())
            .await
            .map_err(backend(STORE, format!("{user} unblocks {blocked}")))?;
        self.changes.publish(user).await
    }

    async fn is_blocked(&self, recipient: &UserId, sender: &UserId) -> Result<bool, StoreError> {
        self.redis
            .conn()
            .sismember(self.key(recipient), sender.as_str())
            .await
            .map_err(backend(STORE, format!("has {recipient} blocked {sender}")))
    }

    async fn blocked_by(&self, user: &UserId) -> Result<Vec<UserId>, StoreError> {
        let blocked: Vec<String> = self
            .redis
            .conn()
            .smembers(self.key(user))
            .await
            .map_err(backend(STORE, format!("list whom {user} blocked")))?;
        Ok(blocked
            .iter()
            .filter_map(|u| stored::id(STORE, u))
            .collect())
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.changes.subscribe()
    }
}
