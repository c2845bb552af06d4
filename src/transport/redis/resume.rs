//! Where a gateway's Redis subscription resumes after its process dies.
//!
//! Confirmed publishes append each batch to the gateway's replay stream and
//! publish every message framed with its place there: the stream entry id,
//! its index in the entry and the entry's size (one Lua script, so the
//! stream and the channel see batches in the same order). The receiving
//! side tracks which places the gateway has acked and keeps the resume
//! position (`sy:gw:{gateway}:resume`) at the oldest entry still unacked, or
//! just past the last complete entry. A successor subscription (a sidecar
//! restarted after SIGKILL, a gateway process restarted) re-reads the stream
//! from there: nothing confirmed and unacked is lost while the stream still
//! holds it (`replay_window`, `replay_max`); duplicates after such a restart
//! are bounded by one batch plus what was unacked, and carry the same ids.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedMutexGuard};

use super::{Acknowledge, TransportError};
use crate::redis_conn::RedisHandle;
use crate::topology::GatewayId;

/// How often the moved resume positions are written. A crash loses at most
/// this much progress: a few more duplicates on restart, never a loss.
/// The positions of all of a process's subscriptions go in one pipeline per
/// tick: one SET per gateway per tick was, at 5 ms and 100 busy gateways,
/// 20,000 SETs a second and more than a fifth of the process's
/// instructions per message (callgrind, docs/bench/HISTORY.md).
const WRITE_SPACING: Duration = Duration::from_millis(50);

/// The Lua script of a confirmed publish to one or more gateways: per
/// gateway, one XADD for its batch, then one (S)PUBLISH per message framed
/// as `\0{entry id}:{index}:{count}\0{bytes}`. `KEYS[g]` is gateway g's
/// replay stream; `ARGV` is the window in ms, the publish command, the
/// stream's cap in messages, then per gateway its channel, its count n and
/// its n envelopes. Returns each gateway's receiver count, in order (the
/// same for all its messages: nothing subscribes while a script runs).
/// One call carries a whole batch however many gateways it spreads over
/// (on a cluster, where a script stays in one slot, one call per gateway).
/// A gateway with one message, the usual case when a batch spreads over
/// many, skips the field table and `unpack` (with the one count per
/// gateway, 8 % of the script's time there: docs/bench/HISTORY.md,
/// "Publish script, 2026-12-07").
pub(crate) const PUBLISH_SCRIPT: &str = r"
local window, publish, cap = ARGV[1], ARGV[2], tonumber(ARGV[3])
local call = redis.call
local at = 4
local receivers = {}
for g = 1, #KEYS do
  local channel, n = ARGV[at], tonumber(ARGV[at + 1])
  at = at + 2
  local id
  if n == 1 then
    id = call('XADD', KEYS[g], 'MAXLEN', '~', cap, '*', 'e', ARGV[at])
  else
    local fields = {}
    for i = 1, n do
      fields[2 * i - 1] = 'e'
      fields[2 * i] = ARGV[at + i - 1]
    end
    local maxlen = math.max(1, math.floor(cap / n))
    id = call('XADD', KEYS[g], 'MAXLEN', '~', maxlen, '*', unpack(fields))
  end
  call('PEXPIRE', KEYS[g], window)
  local head, tail = '\0' .. id .. ':', ':' .. n .. '\0'
  local count
  for i = 1, n do
    count = call(publish, channel, head .. (i - 1) .. tail .. ARGV[at + i - 1])
  end
  receivers[g] = count
  at = at + n
end
return receivers
";

/// A message's place in its gateway's replay stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place {
    /// The stream entry id (milliseconds, sequence).
    entry: (u64, u64),
    index: u32,
    count: u32,
}

impl Place {
    pub(crate) fn new(entry: (u64, u64), index: u32, count: u32) -> Self {
        Self {
            entry,
            index,
            count,
        }
    }

    /// The stream entry id (milliseconds, sequence).
    pub(crate) fn entry(&self) -> (u64, u64) {
        self.entry
    }

    fn last_of_entry(&self) -> bool {
        self.index + 1 >= self.count
    }
}

/// Parses a stream entry id `ms-seq`.
pub(crate) fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Splits a framed live message into its place and the envelope bytes;
/// `None` for a plain (fire-and-forget) message.
pub(crate) fn unframe(bytes: &Bytes) -> Option<(Place, Bytes)> {
    // Protobuf never starts with 0 (field number 0 does not exist).
    let rest = bytes.strip_prefix(b"\0")?;
    let end = rest.iter().position(|&b| b == 0)?;
    let header = std::str::from_utf8(&rest[..end]).ok()?;
    let mut parts = header.split(':');
    let entry = entry_id(parts.next()?)?;
    let index = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let body = bytes.slice(1 + end + 1..);
    Some((Place::new(entry, index, count), body))
}

/// What one subscription has received and what its gateway has acked.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Unacked messages per stream entry.
    unacked: BTreeMap<(u64, u64), u32>,
    /// The furthest place received.
    last: Option<Place>,
    /// Changed since last written.
    dirty: bool,
}

impl Progress {
    pub(crate) fn received(&mut self, place: Place) {
        *self.unacked.entry(place.entry).or_default() += 1;
        self.dirty = true;
        if self.last.is_none_or(|last| place > last) {
            self.last = Some(place);
        }
    }

    fn acked(&mut self, entry: (u64, u64)) {
        if let Some(left) = self.unacked.get_mut(&entry) {
            *left -= 1;
            if *left == 0 {
                self.unacked.remove(&entry);
            }
        }
        self.dirty = true;
    }

    /// The XRANGE start a successor re-reads from: the oldest entry with an
    /// unacked message, else just past the last entry received whole.
    pub(crate) fn resume_from(&self) -> Option<String> {
        if let Some((ms, seq)) = self.unacked.keys().next() {
            return Some(format!("{ms}-{seq}"));
        }
        self.received_up_to()
    }

    /// The XRANGE start that re-reads everything after what was received
    /// (after a dropped connection): unlike [`Self::resume_from`], acks do
    /// not matter, the inbox still holds what it received.
    pub(crate) fn received_up_to(&self) -> Option<String> {
        // Past an entry received whole; at it (again) if its rest is missing.
        self.last.map(|last| {
            let (ms, seq) = last.entry;
            let past = if last.last_of_entry() { "(" } else { "" };
            format!("{past}{ms}-{seq}")
        })
    }
}

/// The progress of one subscription, shared by its acks and its writer.
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedProgress {
    progress: Arc<Mutex<Progress>>,
}

impl SharedProgress {
    pub(crate) fn received(&self, place: Place) {
        self.progress.lock().received(place);
    }

    fn acked(&self, entry: (u64, u64)) {
        self.progress.lock().acked(entry);
    }

    /// The resume position, if it moved since last taken (or `always`).
    fn take_moved(&self, always: bool) -> Option<String> {
        let mut state = self.progress.lock();
        let dirty = std::mem::take(&mut state.dirty);
        if dirty || always {
            state.resume_from()
        } else {
            None
        }
    }

    /// Written in vain: to be written again with the next.
    fn not_written(&self) {
        self.progress.lock().dirty = true;
    }

    pub(crate) fn received_up_to(&self) -> Option<String> {
        self.progress.lock().received_up_to()
    }
}

/// Acks one framed message: moves the resume position.
pub(crate) struct PlaceAck {
    pub(crate) progress: SharedProgress,
    pub(crate) entry: (u64, u64),
}

#[async_trait]
impl Acknowledge for PlaceAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.progress.acked(self.entry);
        Ok(())
    }
}

/// The resume positions of every subscription of one transport, written
/// together: every [`WRITE_SPACING`] one pipeline with a `SET` for each
/// position that moved. A process hosting 1,000 gateways used to write
/// them with a task, a timer and a round trip each (0.47 `SET`s per
/// message at 1,000 targets).
pub(crate) struct Positions {
    redis: RedisHandle,
    ttl: Duration,
    kept: Mutex<HashMap<u64, (String, SharedProgress)>>,
    next: AtomicU64,
    /// Held while writing, so a subscription's last write cannot be
    /// overtaken by an older position still in flight.
    writing: tokio::sync::Mutex<()>,
}

impl Positions {
    /// Starts the writer, which ends once the positions are dropped.
    pub(crate) fn start(redis: RedisHandle, ttl: Duration) -> Arc<Self> {
        let positions = Arc::new(Self {
            redis,
            ttl,
            kept: Mutex::default(),
            next: AtomicU64::new(0),
            writing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(write_moved(Arc::downgrade(&positions)));
        positions
    }

    /// Keeps `progress` written to `key` until the subscription is dropped
    /// (`closed` fires), then writes it a last time. `done` (the gateway's
    /// membership, and the settle signal) is held until that last write is
    /// done, so a successor subscription in this process reads where this
    /// one left off.
    pub(crate) async fn keep(
        self: Arc<Self>,
        key: String,
        progress: SharedProgress,
        closed: oneshot::Receiver<()>,
        done: (Option<OwnedMutexGuard<()>>, oneshot::Sender<()>),
        gateway: GatewayId,
    ) {
        let _done = done;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.kept.lock().insert(id, (key.clone(), progress.clone()));
        // Err: the sender went with the subscription, which also means closed.
        let _ = closed.await;
        self.kept.lock().remove(&id);
        let Some(position) = progress.take_moved(true) else {
            return;
        };
        let _writing = self.writing.lock().await;
        let mut pipe = redis::pipe();
        self.set(&mut pipe, &key, &position);
        if let Err(err) = pipe.query_async::<()>(&mut self.redis.conn()).await {
            tracing::debug!(%gateway, %err, "cannot write the Redis resume position");
        }
    }

    fn set(&self, pipe: &mut redis::Pipeline, key: &str, position: &str) {
        pipe.cmd("SET")
            .arg(key)
            .arg(position)
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .ignore();
    }
}

/// Every [`WRITE_SPACING`], writes the positions that moved in one pipeline.
async fn write_moved(positions: Weak<Positions>) {
    loop {
        tokio::time::sleep(WRITE_SPACING).await;
        let Some(positions) = positions.upgrade() else {
            return;
        };
        let moved: Vec<(String, SharedProgress, String)> = positions
            .kept
            .lock()
            .values()
            .filter_map(|(key, progress)| {
                let position = progress.take_moved(false)?;
                Some((key.clone(), progress.clone(), position))
            })
            .collect();
        if moved.is_empty() {
            continue;
        }
        let _writing = positions.writing.lock().await;
        let mut pipe = redis::pipe();
        for (key, _, position) in &moved {
            positions.set(&mut pipe, key, position);
        }
        if let Err(err) = pipe.query_async::<()>(&mut positions.redis.conn()).await {
            // Tried again on the next tick: a position only moves forward.
            for (_, progress, _) in &moved {
                progress.not_written();
            }
            tracing::debug!(%err, positions = moved.len(), "cannot write the Redis resume positions");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(ms: u64, index: u32, count: u32) -> Place {
        Place::new((ms, 0), index, count)
    }

    #[test]
    fn frames_round_trip_and_plain_bytes_are_not_frames() {
        let framed = Bytes::from_static(b"\x001700-3:2:5\x00\x0a\x10body");
        let (at, body) = unframe(&framed).expect("a frame");
        assert_eq!(at, Place::new((1700, 3), 2, 5));
        assert_eq!(&body[..], b"\x0a\x10body");
        assert!(unframe(&Bytes::from_static(b"\x0a\x10body")).is_none());
    }

    #[test]
    fn resumes_at_the_oldest_unacked_entry_and_past_complete_ones() {
        let mut progress = Progress::default();
        assert_eq!(progress.resume_from(), None, "nothing received yet");
        progress.received(place(10, 0, 2));
        progress.received(place(10, 1, 2));
        progress.received(place(11, 0, 1));
        assert_eq!(progress.resume_from().as_deref(), Some("10-0"));
        progress.acked((10, 0));
        assert_eq!(progress.resume_from().as_deref(), Some("10-0"), "one left");
        progress.acked((10, 0));
        assert_eq!(progress.resume_from().as_deref(), Some("11-0"));
        progress.acked((11, 0));
        assert_eq!(
            progress.resume_from().as_deref(),
            Some("(11-0"),
            "all acked"
        );
        progress.received(place(12, 0, 3));
        progress.acked((12, 0));
        assert_eq!(
            progress.resume_from().as_deref(),
            Some("12-0"),
            "the rest of entry 12 was never received"
        );
    }
}
