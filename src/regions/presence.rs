//! The presence store of one region among several.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::feed::Publisher;
use super::replica::Replica;
use crate::changes::Changed;
use crate::error::StoreError;
use crate::presence::redis::RedisPresence;
use crate::presence::{PresenceStore, Session};
use crate::topology::{DeviceId, GatewayId, UserId};

/// Local sessions in the region's Redis, other regions' from the replica.
/// Writes go to the local store and mark the user for replication;
/// a lookup reads both (two commands on one connection, answered in one
/// round trip to the region's Redis), never another region.
pub struct RegionalPresence {
    local: Arc<RedisPresence>,
    replica: Arc<Replica>,
    publisher: Arc<Publisher>,
}

impl RegionalPresence {
    pub(super) fn new(
        local: Arc<RedisPresence>,
        replica: Arc<Replica>,
        publisher: Arc<Publisher>,
    ) -> Self {
        Self {
            local,
            replica,
            publisher,
        }
    }

    pub(super) fn replica(&self) -> Arc<Replica> {
        self.replica.clone()
    }

    /// Marks `user` for a snapshot, as a change of their sessions does.
    pub(super) fn mark(&self, user: &UserId) {
        self.publisher.mark(user);
    }

    /// This region's sessions of `user` only: where a message that arrived
    /// here may be delivered.
    pub async fn locate_local(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        self.local.locate(user).await
    }

    /// Tells this region's nodes that `user`'s replicated sessions changed
    /// (their caches drop the user).
    pub(super) async fn changed(&self, user: &UserId) -> Result<(), StoreError> {
        self.local.changed(user).await
    }
}

#[async_trait]
impl PresenceStore for RegionalPresence {
    async fn online(&self, session: Session) -> Result<bool, StoreError> {
        let user = session.user.clone();
        let first = self.local.online(session).await?;
        self.publisher.mark(&user);
        Ok(first)
    }

    async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let removed = self.local.offline(user, device).await?;
        if removed.is_some() {
            self.publisher.mark(user);
        }
        Ok(removed)
    }

    async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        let (mut local, remote) =
            tokio::try_join!(self.local.locate(user), self.replica.locate(user))?;
        local.extend(remote);
        Ok(local)
    }

    async fn refresh(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        self.local.refresh(gateway).await
    }

    async fn hosted_users(&self, gateway: &GatewayId) -> Result<u64, StoreError> {
        self.local.hosted_users(gateway).await
    }

    async fn remove_gateway(&self, gateway: &GatewayId) -> Result<Vec<Session>, StoreError> {
        let removed = self.local.remove_gateway(gateway).await?;
        for session in &removed {
            self.publisher.mark(&session.user);
        }
        Ok(removed)
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        // Applied remote snapshots are announced on the same channel.
        self.local.changes()
    }
}
