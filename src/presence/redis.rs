//! Presence on Redis (standalone or cluster).
//!
//! Keys (`sy` is `key_prefix`; braces are hash tags, so a user's keys share
//! a slot on a cluster):
//!
//! - `sy:presence:{user}`: hash, device -> `expires_ms \x1f gateway \x1f
//!   region \x1f since_micros`. Each session expires on its own (the
//!   `expires_ms` field, read with the server's clock); the key's TTL is the
//!   latest session's, so a user who vanishes leaves nothing behind.
//! - `sy:presence-gw:{gateway}`: set of users with a session on the gateway,
//!   so its heartbeat can refresh them and its death can remove them; same
//!   TTL as the sessions it indexes.
//! - channel `sy:presence-events`: user ids whose sessions changed; every
//!   node's [`CachedPresence`](super::cache::CachedPresence) invalidates
//!   them. One channel (sharded on a cluster, so it lives on one shard).
//!
//! Per-user changes run as Lua scripts on the user's key, so "first session
//! on this gateway" and "last session on this gateway" are atomic.

use std::time::Duration;

use async_trait::async_trait;
use futures::{stream, StreamExt, TryStreamExt};
use redis::{AsyncCommands, Script};
use tokio::sync::broadcast;

use super::{PresenceStore, Session};
use crate::cause::{Cause, Report};
use crate::changes::Changed;
use crate::error::StoreError;
use crate::redis_conn::{backend, RedisChanges, RedisHandle};
use crate::stored;
use crate::telemetry;
use crate::topology::{DeviceId, GatewayId, UserId};

const STORE: &str = "presence";
/// Users refreshed or removed concurrently on a heartbeat or gateway death.
const CONCURRENCY: usize = 64;

/// Drops expired sessions of KEYS[1] and returns the live ones as
/// [device, value, ...]; with ARGV[1] = gateway, only that gateway's.
/// Shared head of every script: `now` is the server's clock in ms.
/// (`regions::replica` takes its snapshots with it too.)
pub(crate) const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function parse(v)
  local exp, gw = string.match(v, '^(%d+)\31([^\31]*)\31')
  return tonumber(exp), gw
end
local function live()
  local out = {}
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local exp = parse(all[i + 1])
    if exp > now then
      table.insert(out, all[i]); table.insert(out, all[i + 1])
    end
  end
  return out
end
"#;

/// ARGV: device, gateway, rest of the value (`gateway\x1fregion\x1fsince`),
/// ttl_ms. Returns 1 when it is the user's first live session on the gateway.
const ONLINE: &str = r#"
local first = 1
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local exp, gw = parse(all[i + 1])
  if exp <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] and gw == ARGV[2] then
    first = 0
  end
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], (now + ttl) .. '\31' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
return first
"#;

/// ARGV: device. Returns {value, last_on_gateway} or nil.
const OFFLINE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return nil end
redis.call('HDEL', KEYS[1], ARGV[1])
local exp, gw = parse(v)
if exp <= now then return nil end
local last = 1
local rest = live()
for i = 1, #rest, 2 do
  local _, g = parse(rest[i + 1])
  if g == gw then last = 0 end
end
return {v, last}
"#;

/// Returns the live sessions as [device, value, ...].
const LOCATE: &str = "return live()";

/// ARGV: gateway, ttl_ms. Extends that gateway's sessions; returns how many.
const REFRESH: &str = r#"
local n = 0
local ttl = tonumber(ARGV[2])
local all = live()
for i = 1, #all, 2 do
  local v = all[i + 1]
  local _, gw = parse(v)
  if gw == ARGV[1] then
    n = n + 1
    local rest = string.sub(v, string.find(v, '\31') + 1)
    redis.call('HSET', KEYS[1], all[i], (now + ttl) .. '\31' .. rest)
  end
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return n
"#;

/// ARGV: gateway. Removes its sessions; returns them as [device, value, ...].
const REMOVE_GATEWAY: &str = r#"
local out = {}
local all = live()
for i = 1, #all, 2 do
  local _, gw = parse(all[i + 1])
  if gw == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    table.insert(out, all[i]); table.insert(out, all[i + 1])
  end
end
return out
"#;

/// The compiled scripts (hashed once; EVALSHA with EVAL fallback).
struct Scripts {
    online: Script,
    offline: Script,
    locate: Script,
    refresh: Script,
    remove_gateway: Script,
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            online: script(ONLINE),
            offline: script(OFFLINE),
            locate: script(LOCATE),
            refresh: script(REFRESH),
            remove_gateway: script(REMOVE_GATEWAY),
        }
    }
}

/// Sessions in Redis, shared by every router node of a deployment.
pub struct RedisPresence {
    redis: RedisHandle,
    ttl: Duration,
    scripts: Scripts,
    changes: RedisChanges,
}

impl RedisPresence {
    /// Connects the change-event subscription; sessions live `ttl` past
    /// their last refresh.
    pub async fn new(redis: RedisHandle, ttl: Duration) -> Result<Self, StoreError> {
        let changes = RedisChanges::connect(redis.clone(), "presence-events", STORE).await?;
        Ok(Self {
            redis,
            ttl,
            scripts: Scripts::new(),
            changes,
        })
    }

    pub(crate) fn user_key(&self, user: &UserId) -> String {
        self.redis.key(&["presence", &format!("{{{user}}}")])
    }

    fn gateway_key(&self, gateway: &GatewayId) -> String {
        self.redis.key(&["presence-gw", &format!("{{{gateway}}}")])
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Tells every node (this one included) that a user's sessions changed.
    pub(crate) async fn changed(&self, user: &UserId) -> Result<(), StoreError> {
        self.changes.publish(user).await
    }

    /// Users indexed on a gateway, as stored (see `crate::stored` for the ones
    /// that break the id rule).
    async fn users_on(&self, gateway: &GatewayId) -> Result<Vec<String>, StoreError> {
        self.redis
            .conn()
            .smembers(self.gateway_key(gateway))
            .await
            .map_err(backend(STORE, format!("list users on gateway {gateway}")))
    }
}

/// Decodes a stored session value (`expires\x1fgateway\x1fregion\x1fsince`).
pub(crate) fn decode(user: &UserId, device: &str, value: &str) -> Result<Session, StoreError> {
    let bad = || StoreError::Backend {
        store: STORE,
        operation: format!("read session {user}/{device}"),
        reason: Cause::from_message(format!("malformed value {value:?}")),
    };
    let mut parts = value.split('\x1f').skip(1);
    let (Some(gateway), Some(region), Some(since)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    Ok(Session {
        user: user.clone(),
        device: device.parse().map_err(|_| bad())?,
        gateway: gateway.parse().map_err(|_| bad())?,
        region: region.parse().map_err(|_| bad())?,
        since_micros: since.parse().map_err(|_| bad())?,
    })
}

/// The sessions that decode; an entry that does not (written by an older
/// version, or by hand) is skipped and counted, so one bad entry cannot
/// make a user unreachable. It expires with its TTL like any other.
pub(crate) fn decode_pairs(user: &UserId, pairs: Vec<String>) -> Vec<Session> {
    pairs
        .chunks_exact(2)
        .filter_map(|p| match decode(user, &p[0], &p[1]) {
            Ok(session) => Some(session),
            Err(err) => {
                metrics::counter!(telemetry::STORE_MALFORMED, "store" => STORE).increment(1);
                tracing::warn!(err = %Report(&err), "skipping a session that cannot be read");
                None
            }
        })
        .collect()
}

#[async_trait]
impl PresenceStore for RedisPresence {
    async fn online(&self, session: Session) -> Result<bool, StoreError> {
        let mut conn = self.redis.conn();
        let value = format!(
            "{}\x1f{}\x1f{}",
            session.gateway, session.region, session.since_micros
        );
        let first: i64 = self
            .scripts
            .online
            .key(self.user_key(&session.user))
            .arg(session.device.as_str())
            .arg(session.gateway.as_str())
            .arg(value)
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(backend(
                STORE,
                format!("online {}/{}", session.user, session.device),
            ))?;
        // Not atomic with the script (another slot on a cluster); adding
        // again is harmless and the index only ever over-approximates.
        let gateway_key = self.gateway_key(&session.gateway);
        redis::pipe()
            .sadd(&gateway_key, session.user.as_str())
            .ignore()
            .pexpire(&gateway_key, self.ttl_ms() as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(backend(
                STORE,
                format!("index {} on {}", session.user, session.gateway),
            ))?;
        self.changed(&session.user).await?;
        Ok(first == 1)
    }

    async fn offline(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<Option<(Session, bool)>, StoreError> {
        let removed: Option<(String, i64)> = self
            .scripts
            .offline
            .key(self.user_key(user))
            .arg(device.as_str())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("offline {user}/{device}")))?;
        let Some((value, last)) = removed else {
            return Ok(None);
        };
        let session = decode(user, device.as_str(), &value)?;
        if last == 1 {
            let _: i64 = self
                .redis
                .conn()
                .srem(self.gateway_key(&session.gateway), user.as_str())
                .await
                .map_err(backend(
                    STORE,
                    format!("unindex {user} on {}", session.gateway),
                ))?;
        }
        self.changed(user).await?;
        Ok(Some((session, last == 1)))
    }

    async fn locate(&self, user: &UserId) -> Result<Vec<Session>, StoreError> {
        let pairs: Vec<String> = self
            .scripts
            .locate
            .key(self.user_key(user))
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("locate {user}")))?;
        Ok(decode_pairs(user, pairs))
    }

    async fn refresh(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        let users = self.users_on(gateway).await?;
        let gone: Vec<String> = stream::iter(users)
            .map(|raw| async move {
                // No session can sit under an id that breaks the rule:
                // drop it from the index rather than skip it each beat.
                let Some(user) = stored::id::<UserId>(STORE, &raw) else {
                    return Ok(Some(raw));
                };
                let mut conn = self.redis.conn();
                let n: i64 = self
                    .scripts
                    .refresh
                    .key(self.user_key(&user))
                    .arg(gateway.as_str())
                    .arg(self.ttl_ms())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(backend(STORE, format!("refresh {user} on {gateway}")))?;
                Ok::<_, StoreError>((n == 0).then_some(raw))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|gone| async move { Ok(gone) })
            .try_collect()
            .await?;
        let key = self.gateway_key(gateway);
        let mut pipe = redis::pipe();
        if !gone.is_empty() {
            pipe.srem(&key, gone).ignore();
        }
        pipe.pexpire(&key, self.ttl_ms() as i64).ignore();
        pipe.query_async::<()>(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("refresh index of {gateway}")))
    }

    async fn remove_gateway(&self, gateway: &GatewayId) -> Result<Vec<Session>, StoreError> {
        let users = self.users_on(gateway).await?;
        let users: Vec<UserId> = users.iter().filter_map(|u| stored::id(STORE, u)).collect();
        let removed: Vec<Vec<Session>> = stream::iter(users)
            .map(|user| async move {
                let pairs: Vec<String> = self
                    .scripts
                    .remove_gateway
                    .key(self.user_key(&user))
                    .arg(gateway.as_str())
                    .invoke_async(&mut self.redis.conn())
                    .await
                    .map_err(backend(STORE, format!("remove {user} from {gateway}")))?;
                if !pairs.is_empty() {
                    self.changed(&user).await?;
                }
                Ok::<_, StoreError>(decode_pairs(&user, pairs))
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let _: i64 = self
            .redis
            .conn()
            .del(self.gateway_key(gateway))
            .await
            .map_err(backend(STORE, format!("drop index of {gateway}")))?;
        Ok(removed.into_iter().flatten().collect())
    }

    /// The gateway's index (refreshed by its heartbeat, so it may count a
    /// session that expired since, until the next one).
    async fn hosted_users(&self, gateway: &GatewayId) -> Result<u64, StoreError> {
        self.redis
            .conn()
            .scard(self.gateway_key(gateway))
            .await
            .map_err(backend(STORE, format!("count users on gateway {gateway}")))
    }

    fn changes(&self) -> broadcast::Receiver<Changed<UserId>> {
        self.changes.subscribe()
    }
}
