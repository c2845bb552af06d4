//! Offline queues on Redis Streams.
//!
//! Keys (the `{user}` hash tag keeps a user's three keys in one slot, so the
//! scripts below may touch all of them on a cluster):
//!
//! - `sy:offline:{user}`: stream, one entry per message, fields `m` (message
//!   id) and `e` (envelope bytes). Capped with `XTRIM MAXLEN ~` (count; `~`
//!   lets Redis trim whole nodes, so a few more may be kept) and
//!   `XTRIM MINID ~` (age); the key expires `max_age` after the last append.
//! - `sy:offline:{user}:fails`: hash, message id -> failed deliveries.
//! - `sy:offline:{user}:dlq`: stream of dead letters, fields `m`, `e`,
//!   `kind` (the named [`DeadLetterReason`]) and `reason` (the detail),
//!   capped like the queue.
//!
//! And one index, outside the users' slots: `sy:offline-dlq-users`, a
//! sorted set of users with dead letters by the time of their latest (what
//! `dead_letter_users` lists; a user whose dead letters are gone is dropped
//! from it when listed).

use async_trait::async_trait;
use bytes::Bytes;
use redis::{AsyncCommands, Script};

use super::{DeadLetter, DeadLetterReason, Letters, OfflineConfig, OfflineStore};
use crate::cause::Report;
use crate::envelope::{now_micros, Envelope, MessageId};
use crate::error::StoreError;
use crate::redis_conn::{backend, RedisHandle};
use crate::stored;
use crate::telemetry;
use crate::topology::{GatewayId, UserId};

const STORE: &str = "offline";

/// `scan(want, left, hit)`: walks KEYS[1] from the oldest entry, calling
/// `hit(stream_id, fields)` for each entry whose `m` is in `want`, until
/// `left` ids were found. Acked and failing messages are near the head.
const SCAN: &str = r#"
local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
end
local function scan(want, left, hit)
  local start = '-'
  while left > 0 do
    local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 256)
    if #batch == 0 then return end
    for _, entry in ipairs(batch) do
      local m = field(entry[2], 'm')
      if want[m] then
        want[m] = nil
        left = left - 1
        hit(entry[1], entry[2])
        if left == 0 then return end
      end
    end
    start = '(' .. batch[#batch][1]
  end
end
"#;

/// KEYS: stream, fails. ARGV: message ids. Returns how many were removed.
const ACK: &str = r#"
local want = {}
for i = 1, #ARGV do want[ARGV[i]] = true end
local removed = 0
scan(want, #ARGV, function(id, fields)
  removed = removed + redis.call('XDEL', KEYS[1], id)
end)
redis.call('HDEL', KEYS[2], unpack(ARGV))
return removed
"#;

/// KEYS: stream, fails, dlq. ARGV: message id, reason, max deliveries, dlq
/// cap, kind. Returns 1 when the message moved to the dead-letter stream.
const FAILED: &str = r#"
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if n < tonumber(ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local moved = 0
scan({[ARGV[1]] = true}, 1, function(id, fields)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
    'm', ARGV[1], 'e', field(fields, 'e') or '', 'reason', ARGV[2], 'kind', ARGV[5])
  redis.call('XDEL', KEYS[1], id)
  moved = 1
end)
return moved
"#;

/// KEYS: stream, fails, dlq. ARGV: `restore` or `purge`, `all` or `ids`,
/// queue cap, queue ttl in ms, then the message ids. Takes the chosen dead
/// letters out of the dlq, and for `restore` appends each readable one to
/// the queue (unreadable ones stay). Returns how many were taken.
const TAKE_DEAD: &str = r#"
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
local restore = ARGV[1] == 'restore'
local taken = 0
local start = '-'
while true do
  local batch = redis.call('XRANGE', KEYS[3], start, '+', 'COUNT', 256)
  if #batch == 0 then break end
  for _, entry in ipairs(batch) do
    local m = field(entry[2], 'm') or ''
    local readable = field(entry[2], 'kind') ~= 'unreadable'
    if (ARGV[2] == 'all' or want[m]) and (readable or not restore) then
      if restore then
        redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', m, 'e', field(entry[2], 'e') or '')
        redis.call('HDEL', KEYS[2], m)
      end
      redis.call('XDEL', KEYS[3], entry[1])
      taken = taken + 1
    end
  end
  start = '(' .. batch[#batch][1]
end
if restore and taken > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return taken
"#;

/// One stream per user.
pub struct RedisOffline {
    redis: RedisHandle,
    config: OfflineConfig,
    ack: Script,
    failed: Script,
    take_dead: Script,
}

/// A stream entry as XRANGE returns it: id, then flat field/value pairs.
type Entry = (String, Vec<Vec<u8>>);

impl RedisOffline {
    /// Uses `redis`, with the given bounds.
    pub fn new(redis: RedisHandle, config: OfflineConfig) -> Self {
        Self {
            redis,
            config,
            ack: Script::new(&format!("{SCAN}{ACK}")),
            failed: Script::new(&format!("{SCAN}{FAILED}")),
            take_dead: Script::new(&format!("{SCAN}{TAKE_DEAD}")),
        }
    }

    fn flagged_key(&self, gateway: &GatewayId) -> String {
        self.redis
            .key(&["offline-flagged", &format!("{{{gateway}}}")])
    }

    fn key(&self, user: &UserId, suffix: Option<&str>) -> String {
        let tagged = format!("{{{user}}}");
        match suffix {
            None => self.redis.key(&["offline", &tagged]),
            Some(suffix) => self.redis.key(&["offline", &tagged, suffix]),
        }
    }

    async fn range(&self, key: String, limit: usize) -> Result<Vec<Entry>, StoreError> {
        redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("read {key}")))
    }

    fn dlq_users_key(&self) -> String {
        self.redis.key(&["offline-dlq-users"])
    }

    async fn move_to_dlq(
        &self,
        user: &UserId,
        id: &str,
        kind: DeadLetterReason,
        reason: &str,
        threshold: u32,
    ) -> Result<bool, StoreError> {
        let moved: i64 = self
            .failed
            .key(self.key(user, None))
            .key(self.key(user, Some("fails")))
            .key(self.key(user, Some("dlq")))
            .arg(id)
            .arg(reason)
            .arg(threshold)
            .arg(self.config.max_per_user)
            .arg(kind.as_str())
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(
                STORE,
                format!("record failed delivery of {id} to {user}"),
            ))?;
        if moved == 1 {
            tracing::warn!(%user, %id, kind = kind.as_str(), reason, "offline message dead-lettered");
            telemetry::dead_lettered(kind.as_str());
            let index = self.dlq_users_key();
            self.redis
                .conn()
                .zadd::<_, _, _, ()>(&index, user.as_str(), now_micros() / 1000)
                .await
                .map_err(backend(STORE, format!("index the dead letters of {user}")))?;
        }
        Ok(moved == 1)
    }

    async fn take_dead(
        &self,
        user: &UserId,
        mode: &str,
        which: Letters<'_>,
    ) -> Result<usize, StoreError> {
        let mut invocation = self.take_dead.prepare_invoke();
        invocation
            .key(self.key(user, None))
            .key(self.key(user, Some("fails")))
            .key(self.key(user, Some("dlq")))
            .arg(mode)
            .arg(match which {
                Letters::All => "all",
                Letters::Ids(_) => "ids",
            })
            .arg(self.config.max_per_user)
            .arg(self.config.max_age.as_millis() as u64);
        if let Letters::Ids(ids) = which {
            for id in ids {
                invocation.arg(id.to_string());
            }
        }
        invocation
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("{mode} dead letters of {user}")))
    }
}

/// Flagged users taken per heartbeat (the rest wait for the next one).
const FLAGGED_PER_TAKE: usize = 1000;

/// The value of `name` in an entry's flat field list.
fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks_exact(2)
        .find(|kv| kv[0] == name.as_bytes())
        .map(|kv| kv[1].as_slice())
}

#[async_trait]
impl OfflineStore for RedisOffline {
    async fn append(&self, user: &UserId, envelope: &Envelope) -> Result<(), StoreError> {
        let key = self.key(user, None);
        let oldest_ms = (now_micros() / 1000) - self.config.max_age.as_millis() as i64;
        let (trimmed_len, trimmed_age): (u64, u64) = redis::pipe()
            .cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("m")
            .arg(envelope.id.to_string())
            .arg("e")
            .arg(envelope.encode().as_ref())
            .ignore()
            .cmd("XTRIM")
            .arg(&key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.max_per_user)
            .cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg("~")
            .arg(oldest_ms.max(0))
            .pexpire(&key, self.config.max_age.as_millis() as i64)
            .ignore()
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("append {} for {user}", envelope.id)))?;
        let trimmed = trimmed_len + trimmed_age;
        if trimmed > 0 {
            // Counted, not logged at warn: a user far behind trims on every
            // message, and a log line each would flood the log.
            tracing::debug!(%user, trimmed, "offline queue full or expired: oldest messages dropped");
            metrics::counter!(telemetry::OFFLINE_TRIMMED).increment(trimmed);
        }
        Ok(())
    }

    async fn read(&self, user: &UserId, limit: usize) -> Result<Vec<Envelope>, StoreError> {
        let mut envelopes = Vec::new();
        for (stream_id, fields) in self.range(self.key(user, None), limit).await? {
            let decoded = field(&fields, "e")
                .ok_or_else(|| "no envelope field".to_owned())
                .and_then(|e| {
                    Envelope::decode(Bytes::copy_from_slice(e)).map_err(|e| Report(&e).to_string())
                });
            match decoded {
                Ok(envelope) => envelopes.push(envelope),
                // Unreadable bytes would block the replay forever: set them aside.
                Err(reason) => {
                    let id = field(&fields, "m")
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .unwrap_or_default();
                    tracing::warn!(%user, %stream_id, %reason, "unreadable offline entry");
                    let detail = format!("unreadable: {reason}");
                    self.move_to_dlq(user, &id, DeadLetterReason::Unreadable, &detail, 1)
                        .await?;
                }
            }
        }
        Ok(envelopes)
    }

    async fn ack(&self, user: &UserId, ids: &[MessageId]) -> Result<usize, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.ack.prepare_invoke();
        invocation
            .key(self.key(user, None))
            .key(self.key(user, Some("fails")));
        for id in ids {
            invocation.arg(id.to_string());
        }
        let removed: usize = invocation
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(backend(
                STORE,
                format!("ack {} message(s) of {user}", ids.len()),
            ))?;
        Ok(removed)
    }

    async fn depth(&self, user: &UserId) -> Result<usize, StoreError> {
        let key = self.key(user, None);
        self.redis
            .conn()
            .xlen(&key)
            .await
            .map_err(backend(STORE, format!("length of {key}")))
    }

    async fn flag(&self, gateway: &GatewayId, user: &UserId) -> Result<(), StoreError> {
        let key = self.flagged_key(gateway);
        redis::pipe()
            .sadd(&key, user.as_str())
            .ignore()
            .pexpire(&key, self.config.max_age.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.redis.conn())
            .await
            .map_err(backend(STORE, format!("flag {user} for gateway {gateway}")))
    }

    async fn take_flagged(&self, gateway: &GatewayId) -> Result<Vec<UserId>, StoreError> {
        let key = self.flagged_key(gateway);
        // SPOP with a count takes members atomically, so a flag set meanwhile
        // is kept for the next take.
        let users: Vec<String> = redis::cmd("SPOP")
            .arg(&key)
            .arg(FLAGGED_PER_TAKE)
            .query_async(&mut self.redis.conn())
            .await
            .map_err(backend(
                STORE,
                format!("take the users flagged for gateway {gateway}"),
            ))?;
        Ok(users.iter().filter_map(|u| stored::id(STORE, u)).collect())
    }

    async fn delivery_failed(
        &self,
        user: &UserId,
        id: MessageId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let threshold = self.config.max_deliveries;
        let kind = DeadLetterReason::MaxDeliveries;
        self.move_to_dlq(user, &id.to_string(), kind, reason, threshold)
            .await
    }

    async fn dead_letters(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<(Envelope, String)>, StoreError> {
        let key = self.key(user, Some("dlq"));
        let mut letters = Vec::new();
        for (stream_id, fields) in self.range(key.clone(), limit).await? {
            let decoded = field(&fields, "e").map(|e| Envelope::decode(Bytes::copy_from_slice(e)));
            let reason = field(&fields, "reason")
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .unwrap_or_default();
            match decoded {
                Some(Ok(envelope)) => letters.push((envelope, reason)),
                // Unreadable bytes were dead-lettered as such; they stay for operators.
                _ => {
                    tracing::warn!(%key, %stream_id, %reason, "dead letter holds no readable envelope")
                }
            }
        }
        Ok(letters)
    }

    async fn dead_letter_users(&self, limit: usize) -> Result<Vec<(UserId, usize)>, StoreError> {
        let index = self.dlq_users_key();
        let stop = limit.saturating_sub(1) as isize;
        let users: Vec<String> = self
            .redis
            .conn()
            .zrevrange(&index, 0, stop)
            .await
            .map_err(backend(STORE, format!("read {index}")))?;
        let mut counted = Vec::with_capacity(users.len());
        for user in users.iter().filter_map(|u| stored::id::<UserId>(STORE, u)) {
            let key = self.key(&user, Some("dlq"));
            let n: usize = self
                .redis
                .conn()
                .xlen(&key)
                .await
                .map_err(backend(STORE, format!("length of {key}")))?;
            if n == 0 {
                // Purged, replayed or trimmed away: forget it.
                let _: () = self
                    .redis
                    .conn()
                    .zrem(&index, user.as_str())
                    .await
                    .map_err(backend(STORE, format!("drop {user} from {index}")))?;
            } else {
                counted.push((user, n));
            }
        }
        Ok(counted)
    }

    async fn dead_letter_entries(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let key = self.key(user, Some("dlq"));
        let text = |fields: &[Vec<u8>], name| {
            field(fields, name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        Ok(self
            .range(key, limit)
            .await?
            .into_iter()
            .map(|(stream_id, fields)| DeadLetter {
                id: text(&fields, "m"),
                reason: DeadLetterReason::parse(&text(&fields, "kind")),
                detail: text(&fields, "reason"),
                // A stream id is `<ms>-<seq>`, stamped when the entry was added.
                dead_at_micros: stream_id
                    .split('-')
                    .next()
                    .and_then(|ms| ms.parse::<i64>().ok())
                    .map_or(0, |ms| ms * 1000),
                envelope: field(&fields, "e")
                    .and_then(|e| Envelope::decode(Bytes::copy_from_slice(e)).ok()),
            })
            .collect())
    }

    async fn restore_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError> {
        self.take_dead(user, "restore", which).await
    }

    async fn purge_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError> {
        self.take_dead(user, "purge", which).await
    }
}
