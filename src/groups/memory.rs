//! In-process groups: the embedded default and single-node deployments.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::GroupStore;
use crate::error::StoreError;
use crate::topology::{GatewayId, GroupId, UserId};

#[derive(Default)]
struct State {
    members: HashMap<GroupId, HashSet<UserId>>,
    groups_of: HashMap<UserId, HashSet<GroupId>>,
    distribution: HashMap<GroupId, BTreeMap<GatewayId, u64>>,
}

/// Groups in maps.
#[derive(Default)]
pub struct MemoryGroups {
    state: Mutex<State>,
}

#[async_trait]
impl GroupStore for MemoryGroups {
    async fn join(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let new = state
            .members
            .entry(group.clone())
            .or_default()
            .insert(user.clone());
        state
            .groups_of
            .entry(user.clone())
            .or_default()
            .insert(group.clone());
        Ok(new)
    }

    async fn leave(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let mut state = self.state.lock();
        let was = state.members.get_mut(group).is_some_and(|m| m.remove(user));
        if state.members.get(group).is_some_and(HashSet::is_empty) {
            state.members.remove(group);
            state.distribution.remove(group);
        }
        if let Some(groups) = state.groups_of.get_mut(user) {
            groups.remove(group);
        }
        Ok(was)
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        let state = self.state.lock();
        let members = state
            .members
            .get(group)
            .ok_or_else(|| StoreError::UnknownGroup(group.clone()))?;
        Ok(members.iter().cloned().collect())
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        let state = self.state.lock();
        Ok(state
            .groups_of
            .get(user)
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn adjust(
        &self,
        group: &GroupId,
        gateway: &GatewayId,
        delta: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        if !state.members.contains_key(group) {
            return Ok(());
        }
        let counts = state.distribution.entry(group.clone()).or_default();
        let count = counts.entry(gateway.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            counts.remove(gateway);
        }
        Ok(())
    }

    async fn distribution(&self, group: &GroupId) -> Result<Vec<(GatewayId, u64)>, StoreError> {
        let state = self.state.lock();
        if !state.members.contains_key(group) {
            return Err(StoreError::UnknownGroup(group.clone()));
        }
        Ok(state
            .distribution
            .get(group)
            .map(|d| d.iter().map(|(g, c)| (g.clone(), *c)).collect())
            .unwrap_or_default())
    }
}
