//! Re-reading a gateway's replay stream after its subscriber dropped.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::resume::{entry_id, Place, PlaceAck, SharedProgress};
use super::{REPLAY_CHUNK, REPLAY_MARGIN};
use crate::redis_conn::RedisHandle;
use crate::telemetry;
use crate::topology::GatewayId;
use crate::transport::{Acknowledge, Incoming};

/// Just past the last entry of a replay stream (XRANGE start), or the
/// server's current millisecond when there is none yet.
pub(super) async fn stream_end(redis: &RedisHandle, key: &str) -> redis::RedisResult<String> {
    let mut conn = redis.conn();
    let last: Vec<(String, Vec<Bytes>)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    if let Some((id, _)) = last.first() {
        return Ok(format!("({id}"));
    }
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    Ok(format!("({}-0", secs * 1000 + micros / 1000))
}

/// Where a re-read of the replay stream starts.
pub(super) enum From {
    /// An XRANGE start (`ms-seq` inclusive, `(ms-seq` exclusive).
    Place(String),
    /// Just before a drop at this instant (nothing was received before it).
    Drop(Instant),
}

/// Re-reads a gateway's replay stream from `from` into `out`, recording
/// each message's place in `progress`; returns how many were re-sent, and
/// whether the stream no longer held the first entry asked for (trimmed or
/// expired: messages were lost).
async fn replay(
    redis: &RedisHandle,
    key: &str,
    from: &From,
    window: Duration,
    progress: &SharedProgress,
    out: &mpsc::Sender<Incoming>,
) -> Result<(usize, bool), redis::RedisError> {
    let mut conn = redis.conn();
    let mut start = match from {
        From::Place(place) => place.clone(),
        From::Drop(dropped) => {
            // The server's clock: stream ids are its milliseconds.
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
            let now_ms = secs * 1000 + micros / 1000;
            let back = (dropped.elapsed() + REPLAY_MARGIN).min(window).as_millis() as u64;
            format!("{}", now_ms.saturating_sub(back))
        }
    };
    // An inclusive place names an entry that must still be there.
    let mut expected = match from {
        From::Place(place) if !place.starts_with('(') => Some(place.clone()),
        _ => None,
    };
    let mut missing = false;
    let mut sent = 0;
    loop {
        let entries: Vec<(String, Vec<Bytes>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(REPLAY_CHUNK)
            .query_async(&mut conn)
            .await?;
        if let Some(expected) = expected.take() {
            missing = entries.first().is_none_or(|(id, _)| *id != expected);
        }
        let Some((last, _)) = entries.last() else {
            return Ok((sent, missing));
        };
        start = format!("({last}");
        for (id, fields) in entries {
            let entry = entry_id(&id);
            // Fields are [e, bytes] per message of the batch, in order.
            let count = (fields.len() / 2) as u32;
            for (index, bytes) in fields.into_iter().skip(1).step_by(2).enumerate() {
                let ack = entry.map(|entry| {
                    progress.received(Place::new(entry, index as u32, count));
                    Box::new(PlaceAck {
                        progress: progress.clone(),
                        entry,
                    }) as Box<dyn Acknowledge>
                });
                if out.send(Incoming { bytes, ack }).await.is_err() {
                    return Ok((sent, missing));
                }
                sent += 1;
            }
        }
    }
}

/// Re-reads the replay stream from `from`, retrying while Redis may still
/// be failing over and the stream still holds what is asked for.
pub(super) async fn replay_until_done(
    redis: RedisHandle,
    key: String,
    from: From,
    window: Duration,
    progress: SharedProgress,
    out: mpsc::Sender<Incoming>,
    gateway: GatewayId,
) {
    let began = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match replay(&redis, &key, &from, window, &progress, &out).await {
            Ok((n, missing)) => {
                if missing {
                    tracing::error!(%gateway, "the replay stream no longer holds where this gateway left off (past replay_window or replay_max): unacked messages were lost");
                    metrics::counter!(telemetry::REDIS_RESUME_GAPS).increment(1);
                }
                tracing::info!(%gateway, replayed = n, "replay stream re-read");
                metrics::counter!(telemetry::REDIS_REPLAYED).increment(n as u64);
                return;
            }
            Err(err) if began.elapsed() + delay < window => {
                tracing::warn!(%gateway, %err, "cannot re-read the replay stream yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(%gateway, %err, "cannot re-read the replay stream: messages of the gap may be lost");
                return;
            }
        }
    }
}
