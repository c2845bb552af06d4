//! Group membership of one region among several: joins and leaves written
//! here are versioned and marked for the other regions; theirs are applied
//! here unless a newer write of the same member is.
//!
//! Keys, next to [`RedisGroups`]' (`{group}` keeps them in one slot):
//!
//! - `sy:group:{group}:versions`: hash, user -> `version|member|region`:
//!   the last write of each member, here or replicated. The version is the
//!   server's clock in microseconds, raised past the last one of the
//!   member, so a write made after seeing another always wins over it;
//!   concurrent writes in two regions go to the later clock (the region's
//!   name breaks a tie). A member who left keeps the entry (a tombstone
//!   of about 30 bytes), so a late, older join cannot bring them back.
//!
//! Membership and its version change in one script; the user's
//! `groups-of` set lives in another slot and follows just after.

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::member::{Marks, Membership};
use crate::error::StoreError;
use crate::groups::redis::RedisGroups;
use crate::groups::GroupStore;
use crate::redis_conn::{backend, RedisHandle};
use crate::topology::{GatewayId, GroupId, Region, UserId};

const STORE: &str = "groups";

/// KEYS: members, gateways, versions. ARGV: user, member (1/0), version
/// ('' to take one from the clock, for a write made here), region. Returns
/// {applied (0/1), membership changed (0/1)}.
const WRITE: &str = r#"
local v = ARGV[3]
local cur = redis.call('HGET', KEYS[3], ARGV[1])
local cv, cr = 0, ''
if cur then
  local a, _, r = string.match(cur, '^(%d+)|(%d)|(.*)$')
  if a then cv, cr = tonumber(a), r end
end
if v == '' then
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  v = string.format('%.0f', math.max(us, cv + 1))
elseif cv > tonumber(v) or (cv == tonumber(v) and cr >= ARGV[4]) then
  return {0, 0}
end
redis.call('HSET', KEYS[3], ARGV[1], v .. '|' .. ARGV[2] .. '|' .. ARGV[4])
local changed
if ARGV[2] == '1' then
  changed = redis.call('SADD', KEYS[1], ARGV[1])
else
  changed = redis.call('SREM', KEYS[1], ARGV[1])
  if redis.call('SCARD', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
end
return {1, changed}
"#;

/// The region's groups: [`RedisGroups`] with versioned, replicated joins
/// and leaves.
pub struct RegionalGroups {
    redis: RedisHandle,
    local: RedisGroups,
    region: Region,
    write: Script,
    marks: Marks,
}

impl RegionalGroups {
    pub(super) fn new(redis: RedisHandle, region: Region, marks: Marks) -> Self {
        Self {
            local: RedisGroups::new(redis.clone()),
            redis,
            region,
            write: Script::new(WRITE),
            marks,
        }
    }

    fn versions_key(&self, group: &GroupId) -> String {
        self.redis
            .key(&["group", &format!("{{{group}}}"), "versions"])
    }

    /// Writes one membership in one script; `None`: not applied (a newer
    /// write of the member is). Returns whether membership changed.
    async fn write(
        &self,
        group: &GroupId,
        user: &UserId,
        member: bool,
        version: Option<(u64, &Region)>,
    ) -> Result<Option<bool>, StoreError> {
        let (stamp, region) = match version {
            Some((v, region)) => (v.to_string(), region),
            None => (String::new(), &self.region),
        };
        let operation = format!(
            "{} {user} in {group}",
            if member { "join" } else { "leave" }
        );
        let (applied, changed): (i64, i64) = self
            .write
            .key(self.local.members_key(group))
            .key(self.local.gateways_key(group))
            .key(self.versions_key(group))
            .arg(user.as_str())
            .arg(if member { "1" } else { "0" })
            .arg(stamp)
            .arg(region.as_str())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, operation))?;
        if applied == 0 {
            return Ok(None);
        }
        let mut conn = self.redis.conn();
        let key = self.local.groups_of_key(user);
        let followed: Result<i64, _> = if member {
            conn.sadd(key, group.as_str()).await
        } else {
            conn.srem(key, group.as_str()).await
        };
        followed.map_err(backend(STORE, format!("record {group} for {user}")))?;
        Ok(Some(changed == 1))
    }

    /// Applies another region's write of a membership unless a newer one
    /// of the member is here. Returns whether membership changed.
    pub(super) async fn apply(&self, membership: &Membership) -> Result<bool, StoreError> {
        let version = Some((membership.version, &membership.region));
        let written = self
            .write(
                &membership.group,
                &membership.user,
                membership.member,
                version,
            )
            .await?;
        Ok(written == Some(true))
    }

    /// A member's last write, as [`Membership`] of this region; `None` when
    /// the last write is another region's (that region replicates it).
    pub(super) async fn last_write(
        &self,
        group: &GroupId,
        user: &UserId,
    ) -> Result<Option<Membership>, StoreError> {
        let entry: Option<String> = self
            .redis
            .conn()
            .hget(self.versions_key(group), user.as_str())
            .await
            .map_err(backend(STORE, format!("version of {user} in {group}")))?;
        let parsed = entry.as_deref().and_then(|e| {
            let mut parts = e.splitn(3, '|');
            let version = parts.next()?.parse().ok()?;
            let member = parts.next()? == "1";
            Some((version, member, parts.next()?.parse::<Region>().ok()?))
        });
        Ok(parsed.filter(|(_, _, region)| region == &self.region).map(
            |(version, member, region)| Membership {
                region,
                group: group.clone(),
                user: user.clone(),
                member,
                version,
            },
        ))
    }
}

#[async_trait]
impl GroupStore for RegionalGroups {
    async fn join(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let written = self.write(group, user, true, None).await?;
        self.marks.mark(group, user);
        Ok(written == Some(true))
    }

    async fn leave(&self, group: &GroupId, user: &UserId) -> Result<bool, StoreError> {
        let written = self.write(group, user, false, None).await?;
        self.marks.mark(group, user);
        Ok(written == Some(true))
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<UserId>, StoreError> {
        self.local.members(group).await
    }

    async fn groups_of(&self, user: &UserId) -> Result<Vec<GroupId>, StoreError> {
        self.local.groups_of(user).await
    }

    async fn adjust(
        &self,
        group: &GroupId,
        gateway: &GatewayId,
        delta: i64,
    ) -> Result<(), StoreError> {
        self.local.adjust(group, gateway, delta).await
    }

    async fn distribution(&self, group: &GroupId) -> Result<Vec<(GatewayId, u64)>, StoreError> {
        self.local.distribution(group).await
    }
}
