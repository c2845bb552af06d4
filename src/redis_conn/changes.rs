//! A store's change events on one Redis channel (`{prefix}:{name}`),
//! re-broadcast in process: how every node's caches hear of a change, and
//! of a gap in the subscription, when they may have missed one.

use futures::StreamExt;
use tokio::sync::broadcast;

use crate::changes::Changed;
use crate::error::StoreError;
use crate::stored;
use crate::topology::UserId;

use super::{backend, Pushed, RedisHandle};

/// A store's change events on a Redis channel, re-broadcast in process.
pub struct RedisChanges {
    redis: RedisHandle,
    channel: String,
    store: &'static str,
    local: broadcast::Sender<Changed<UserId>>,
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
            while let Some(event) = pushed.next().await {
                let change = match event {
                    // No cache holds an id that breaks the rule.
                    Pushed::Message(user) => match std::str::from_utf8(&user)
                        .ok()
                        .and_then(|user| stored::id::<UserId>(store, user))
                    {
                        Some(user) => Changed::Key(user),
                        None => continue,
                    },
                    // Events published from the drop until the resubscribe
                    // are lost: on the drop, what was cached before it may
                    // already be stale; on the resume, so may what was
                    // loaded during the gap. Followers start over at both.
                    Pushed::Dropped | Pushed::Resumed { .. } => Changed::All,
                };
                let _ = sender.send(change);
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

    /// Users whose state changed, as seen by any node, and the gaps in
    /// this node's subscription ([`Changed::All`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.local.subscribe()
    }
}
