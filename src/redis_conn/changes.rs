//! A store's change events on one Redis channel (`{prefix}:{name}`),
//! re-broadcast in process: how every node's caches hear of a change.

use tokio::sync::broadcast;

use crate::error::StoreError;
use crate::topology::UserId;

use super::{backend, Pushed, RedisHandle};

/// A store's change events on a Redis channel, re-broadcast in process.
pub struct RedisChanges {
    redis: RedisHandle,
    channel: String,
    store: &'static str,
    local: broadcast::Sender<UserId>,
}

impl RedisChanges {
    /// Subscribes to `{prefix}:{name}` for `store` (named in errors and
    /// metrics).
    pub async fn connect(
        redis: RedisHandle,
        name: &str,
        store: &'static str,
    ) -> Result<Self, StoreError> {
        let channel = redis.key(&[name]);
        let mut pushed = redis
            .subscribe(channel.clone(), store, crate::changes::BUFFER)
            .await
            .map_err(|e| e.for_store(store))?;
        let local = crate::changes::local();
        let sender = local.clone();
        tokio::spawn(async move {
            while let Some(event) = pushed.recv().await {
                // Events missed during a gap are bounded by the cache TTL.
                if let Pushed::Message(user) = event {
                    if let Ok(user) = std::str::from_utf8(&user) {
                        let _ = sender.send(UserId::from(user));
                    }
                }
            }
        });
        Ok(Self {
            redis,
            channel,
            store,
            local,
        })
    }

    /// Tells every node (this one included) that `user`'s state changed.
    pub async fn publish(&self, user: &UserId) -> Result<(), StoreError> {
        let mut conn = self.redis.conn();
        redis::cmd(conn.publish_command())
            .arg(&self.channel)
            .arg(user.as_str())
            .query_async::<i64>(&mut conn)
            .await
            .map_err(backend(self.store, format!("publish change of {user}")))?;
        Ok(())
    }

    /// Users whose state changed, as seen by any node.
    pub fn subscribe(&self) -> broadcast::Receiver<UserId> {
        self.local.subscribe()
    }
}
