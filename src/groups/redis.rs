//! Groups on Redis (standalone or cluster).
//!
//! Keys (braces are hash tags: a group's keys share a slot, a user's too):
//!
//! - `sy:group:{group}:members`: set of user ids.
//! - `sy:group:{group}:gateways`: hash, gateway -> online member count,
//!   changed with HINCRBY; a count that reaches 0 is deleted.
//! - `sy:groups-of:{user}`: set of group ids.

use std::collections::BTreeMap;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::GroupStore;
use crate::error::StoreError;
use crate::redis_conn::{backend, RedisHandle};
use crate::stored;
use crate::topology::{GatewayId, GroupId, UserId};

const STORE: &str = "groups";

/// KEYS: members, gateways. ARGV: user. Removes the member; forgets the
/// distribution with the last one. Returns 1 if they were a member.
const LEAVE: &str = r#"
local was = redis.call('SREM', KEYS[1], ARGV[1])
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return was
"#;

/// KEYS: members, gateways. ARGV: gateway, delta. Ignored for a group with
/// no members (it was deleted meanwhile).
const ADJUST: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
return n
"#;

/// Membership and distribution in Redis.
pub struct RedisGroups {
    redis: RedisHandle,
    leave: Script,
    adjust: Script,
}

impl RedisGroups {
    /// Uses `redis` for every call.
    pub fn new(redis: RedisHandle) -> Self {
        Self {
            redis,
            leave: Script::new(LEAVE),
            adjust: Script::new(ADJUST),
        }
    }

    /// The group's members (`regions::groups` writes it too).
    pub(crate) fn members_key(&self, group: &GroupId) -> String {
        self.redis
            .key(&["group", &format!("{{{group}}}"), "members"])
    }

    /// The group's distribution.
    pub(crate) fn gateways_key(&self, group: &GroupId) -> String {
        self.redis
            .key(&["group", &format!("{{{group}}}"), "gateways"])
    }

    /// The user's groups.
    pub(crate) fn groups_of_key(&self, user: &UserId) -> String {
        self.redis.key(&["groups-of", &format!("{{{user}}}")])
    }
}

#[async_trait]
impl GroupStore for RedisGroups {
    async fn join(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn();
        let new: i64 = conn
            .sadd(self.members_key(group), user.as_str())
            .await
            .map_err(backend(STORE, format!("join {user} to {group}")))?;
        let _: i64 = conn
            .sadd(self.groups_of_key(user), group.as_str())
            .await
            .map_err(backend(STORE, format!("record {group} for {user}")))?;
        Ok(new == 1)
    }

    async fn leave(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn();
        let was: i64 = self
            .leave
            .key(self.members_key(group))
            .key(self.gateways_key(group))
            .arg(user.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(backend(STORE, format!("remove {user} from {group}")))?;
        let _: i64 = conn
            .srem(self.groups_of_key(user), group.as_str())
            .await
            .map_err(backend(STORE, format!("forget {group} for {user}")))?;
        Ok(was == 1)
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        let members: Vec<String> = self
            .redis
            .conn()
            .smembers(self.members_key(group))
            .await
            .map_err(backend(STORE, format!("members of {group}")))?;
        if members.is_empty() {
            return Err(StoreError::UnknownGroup(group.clone()));
        }
        Ok(members
            .iter()
            .filter_map(|u| stored::id(STORE, u))
            .collect())
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        let groups: Vec<String> = self
            .redis
            .conn()
            .smembers(self.groups_of_key(user))
            .await
            .map_err(backend(STORE, format!("groups of {user}")))?;
        Ok(groups.iter().filter_map(|g| stored::id(STORE, g)).collect())
    }

    async fn adjust(
        &self,
        group: &GroupId,
        gateway: &GatewayId,
        delta: i64,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .adjust
            .key(self.members_key(group))
            .key(self.gateways_key(group))
            .arg(gateway.as_str())
            .arg(delta)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(
                STORE,
                format!("count {delta:+} for {group} on {gateway}"),
            ))?;
        Ok(())
    }

    async fn distribution(&self, group: &GroupId) -> Result<Vec<(GatewayId, u64)>, StoreError> {
        // Both keys share the group's slot, so one pipeline serves them.
        let (exists, counts): (bool, BTreeMap<String, u64>) = redis::pipe()
            .exists(self.members_key(group))
            .hgetall(self.gateways_key(group))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("distribution of {group}")))?;
        if !exists {
            return Err(StoreError::UnknownGroup(group.clone()));
        }
        Ok(counts
            .into_iter()
            .filter_map(|(g, c)| Some((stored::id(STORE, &g)?, c)))
            .collect())
    }
}
