//! Group membership and, per group, the gateways that host online members
//! with a count each, so a group message is published once per gateway and
//! never once per member. [`Directory`] keeps the distribution in step with
//! presence; the [`GroupStore`] only stores it.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::presence::{PresenceStore, Session};
use crate::topology::{DeviceId, GatewayId, GroupId, UserId};

/// Membership and per-gateway distribution storage.
#[async_trait]
pub trait GroupStore: Send + Sync + 'static {
    /// Adds a member; true if they were not a member yet.
    async fn join(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError>;
    /// Removes a member; true if they were one.
    async fn leave(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError>;
    /// Every member; [`StoreError::UnknownGroup`] if there is none.
    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, StoreError>;
    /// The groups a user belongs to.
    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupId>, StoreError>;
    /// Adds `delta` to the count of online members a gateway hosts; a count
    /// that reaches zero removes the gateway.
    async fn adjust(
        &self,
        group: &GroupId,
        gateway: &GatewayId,
        delta: i64,
    ) -> Result<(), StoreError>;
    /// The gateways hosting online members, with their counts;
    /// [`StoreError::UnknownGroup`] if the group has no members.
    async fn distribution(&self, group: &GroupId) -> Result<Vec<(GatewayId, u64)>, StoreError>;
}

/// Presence and groups together: the one place that keeps the per-gateway
/// distribution in step with sessions coming and going.
#[derive(Clone)]
pub struct Directory {
    presence: Arc<dyn PresenceStore>,
    groups: Arc<dyn GroupStore>,
}

impl Directory {
    /// Combines the two stores.
    pub fn new(presence: Arc<dyn PresenceStore>, groups: Arc<dyn GroupStore>) -> Self {
        Self { presence, groups }
    }

    /// The group store.
    pub fn groups(&self) -> &Arc<dyn GroupStore> {
        &self.groups
    }

    /// Marks a session online; counts the user on its gateway for each of
    /// their groups when it is their first session there.
    pub async fn online(&self, session: Session) -> Result<(), StoreError> {
        let (user, gateway) = (session.user.clone(), session.gateway.clone());
        if self.presence.online(session).await? {
            self.adjust_all(&user, &gateway, 1).await?;
        }
        Ok(())
    }

    /// Marks a device offline; uncounts the user on its gateway when it was
    /// their last session there. Returns the session, if it was online.
    pub async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<Session>, StoreError> {
        let Some((session, last)) = self.presence.offline(user, device).await? else {
            return Ok(None);
        };
        if last {
            self.adjust_all(user, &session.gateway, -1).await?;
        }
        Ok(Some(session))
    }

    /// Removes a dead gateway's sessions and its share of every distribution.
    pub async fn remove_gateway(&self, gateway: &GatewayId) -> Result<usize, StoreError> {
        let removed = self.presence.remove_gateway(gateway).await?;
        let users: BTreeSet<&UserId> = removed.iter().map(|s| &s.user).collect();
        for user in &users {
            self.adjust_all(user, gateway, -1).await?;
        }
        Ok(removed.len())
    }

    /// Adds a member and counts them on every gateway where they are online.
    pub async fn join(&self, group: &GroupId, user: &UserId) -> Result<(), StoreError> {
        if self.groups.join(group, user).await? {
            for gateway in self.gateways_of(user).await? {
                self.groups.adjust(group, &gateway, 1).await?;
            }
        }
        Ok(())
    }

    /// Removes a member and uncounts them.
    pub async fn leave(&self, group: &GroupId, user: &UserId) -> Result<(), StoreError> {
        if self.groups.leave(group, user).await? {
            for gateway in self.gateways_of(user).await? {
                self.groups.adjust(group, &gateway, -1).await?;
            }
        }
        Ok(())
    }

    async fn gateways_of(&self, user: &UserId) -> Result<BTreeSet<GatewayId>, StoreError> {
        let sessions = self.presence.locate(user).await?;
        Ok(sessions.into_iter().map(|s| s.gateway).collect())
    }

    /// Adds `delta` to `user`'s count on `gateway` in each of their groups
    /// (also for sessions replicated from another region).
    pub(crate) async fn adjust_all(
        &self,
        user: &UserId,
        gateway: &GatewayId,
        delta: i64,
    ) -> Result<(), StoreError> {
        for group in self.groups.groups_of(user).await? {
            self.groups.adjust(&group, gateway, delta).await?;
        }
        Ok(())
    }
}
