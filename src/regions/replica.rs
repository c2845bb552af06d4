//! The region's Redis side of presence replication.
//!
//! Keys (`sy` is `key_prefix`; `{user}` is the hash tag that keeps them in
//! the slot of the user's own presence key):
//!
//! - `sy:presence-ver:{user}`: the version of the user's last snapshot in
//!   this region: the server's clock in microseconds, raised to the last
//!   version + 1 when the clock has not moved on, so versions of one user
//!   only grow, whichever sidecar takes the snapshot.
//! - `sy:presence-remote:{user}`: hash, region -> `version|sessions-json`:
//!   the user's sessions in every other region, as last replicated. A
//!   region with no sessions keeps its entry (a tombstone), so an older
//!   snapshot arriving late cannot bring them back; a key of tombstones
//!   only expires `tombstone_ttl` after its last change, one with a live
//!   region never does.

use std::time::Duration;

use redis::Script;

use super::snapshot::{RemoteSession, Snapshot};
use crate::cause::Cause;
use crate::error::StoreError;
use crate::presence::redis::PRELUDE;
use crate::presence::Session;
use crate::redis_conn::RedisHandle;
use crate::stored;
use crate::telemetry;
use crate::topology::{GatewayId, Region, UserId};

const STORE: &str = "presence";

/// KEYS: presence, version. ARGV: version ttl ms. Returns {version,
/// device, value, ...}: the live sessions and the version they carry.
const SNAPSHOT: &str = r#"
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local v = string.format('%.0f', math.max(us, last + 1))
redis.call('SET', KEYS[2], v, 'PX', ARGV[1])
local out = live()
table.insert(out, 1, v)
return out
"#;

/// KEYS: remote. ARGV: region, version, sessions json, tombstone ttl ms.
/// Returns {applied (0/1), the region's previous sessions json or ''}.
const APPLY: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local old = ''
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep and tonumber(string.sub(cur, 1, sep - 1)) >= tonumber(ARGV[2]) then
    return {0, ''}
  end
  if sep then old = string.sub(cur, sep + 1) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
local live = false
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  if string.sub(v, -3) ~= '|[]' then live = true break end
end
if live then redis.call('PERSIST', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {1, old}
"#;

/// Snapshots of local sessions and the replica of remote ones, on the
/// region's Redis.
pub struct Replica {
    redis: RedisHandle,
    snapshot: Script,
    apply: Script,
    tombstone_ttl: Duration,
}

impl Replica {
    /// The replica on `redis`, tombstones kept `tombstone_ttl`.
    pub fn new(redis: RedisHandle, tombstone_ttl: Duration) -> Self {
        Self {
            redis,
            snapshot: Script::new(&format!("{PRELUDE}{SNAPSHOT}")),
            apply: Script::new(APPLY),
            tombstone_ttl,
        }
    }

    fn key(&self, kind: &str, user: &UserId) -> String {
        self.redis.key(&[kind, &format!("{{{user}}}")])
    }

    /// The user's live sessions in this region and a version newer than
    /// any snapshot of the user taken before (in this region).
    pub async fn snapshot(&self, user: &UserId) -> Result<(u64, Vec<Session>), StoreError> {
        let mut reply: Vec<String> = self
            .snapshot
            .key(self.key("presence", user))
            .key(self.key("presence-ver", user))
            .arg(self.tombstone_ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(format!("snapshot {user}")))?;
        let bad = || StoreError::Backend {
            store: STORE,
            operation: format!("snapshot {user}"),
            reason: Cause::from_message("the script returned no version"),
        };
        if reply.is_empty() {
            return Err(bad());
        }
        let version = reply.remove(0).parse().map_err(|_| bad())?;
        Ok((version, crate::presence::redis::decode_pairs(user, reply)))
    }

    /// Applies a remote region's snapshot unless a newer one of that region
    /// is applied already (replays and reordering are harmless). Returns
    /// the region's sessions before, or `None` when it was not applied.
    pub async fn apply(
        &self,
        snapshot: &Snapshot,
    ) -> Result<Option<Vec<RemoteSession>>, StoreError> {
        let user = &snapshot.user;
        let json = serde_json::to_string(&snapshot.sessions).map_err(|e| StoreError::Backend {
            store: STORE,
            operation: format!("encode sessions of {user}"),
            reason: Cause::new(e),
        })?;
        let (applied, old): (i64, String) = self
            .apply
            .key(self.key("presence-remote", user))
            .arg(snapshot.region.as_str())
            .arg(snapshot.version.to_string())
            .arg(json)
            .arg(self.tombstone_ttl.as_millis() as u64)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(format!(
                "apply {user}@{} v{}",
                snapshot.region, snapshot.version
            )))?;
        if applied == 0 {
            return Ok(None);
        }
        Ok(Some(decode_sessions(&old).unwrap_or_default()))
    }

    /// One page of the users indexed on `gateway` in this region (an
    /// over-approximation: the index outlives expired sessions until the
    /// gateway's next heartbeat) and the cursor of the next; `0`: done.
    pub async fn users_on(
        &self,
        gateway: &GatewayId,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<UserId>), StoreError> {
        // The key `RedisPresence` indexes a gateway's users under.
        let key = self.redis.key(&["presence-gw", &format!("{{{gateway}}}")]);
        let (next, users): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(key)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(format!("list users on gateway {gateway}")))?;
        Ok((
            next,
            users.iter().filter_map(|u| stored::id(STORE, u)).collect(),
        ))
    }

    /// The user's sessions in every other region, as last replicated. An
    /// entry that does not decode is skipped and counted.
    pub async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("presence-remote", user))
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(format!("locate {user} in other regions")))?;
        let mut sessions = Vec::new();
        for (region, value) in entries {
            let decoded = value
                .split_once('|')
                .and_then(|(_, json)| decode_sessions(json));
            let Some(remote) = decoded else {
                metrics::counter!(telemetry::STORE_MALFORMED, "store" => STORE).increment(1);
                tracing::warn!(%user, %region, "skipping a replicated entry that cannot be read");
                continue;
            };
            let Some(region) = stored::id::<Region>(STORE, &region) else {
                continue;
            };
            sessions.extend(remote.into_iter().map(|r| r.session(user, &region)));
        }
        Ok(sessions)
    }
}

fn decode_sessions(json: &str) -> Option<Vec<RemoteSession>> {
    if json.is_empty() {
        return Some(Vec::new());
    }
    serde_json::from_str(json).ok()
}

fn backend(operation: String) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend {
        store: STORE,
        operation,
        reason: Cause::new(e),
    }
}
