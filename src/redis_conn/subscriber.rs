//! Every channel subscription of a [`RedisHandle`](super::RedisHandle)
//! over one shared push connection, as Socket.IO's and Centrifugo's Redis
//! engines do. A process hosting many gateways (a sidecar, the demo fleet,
//! the bench) then holds one pub/sub connection per Redis deployment
//! instead of one per gateway, and Redis writes a burst for all of them
//! to one socket, read with one syscall, instead of one socket per gateway
//! woken for one message each.
//!
//! Pushes are demultiplexed by channel name into one bounded queue per
//! [`Follower`]; a queue that is full drops what does not fit and the gap
//! is reported, so one slow gateway neither blocks the others nor grows
//! memory. A dropped connection is reported to every follower, each of
//! which subscribes again and reports the gap.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, OnceCell};

use super::{connect_error, open, Conn, ConnectError, Pushed, RedisConfig};
use crate::cause::Cause;
use crate::telemetry;

/// What the shared connection hands one follower.
enum Push {
    Message(Bytes),
    /// The subscription is gone (connection dropped, or the server
    /// unsubscribed it): named by the push's kind, for the log.
    Lost(PushKind),
}

/// One follower's queue.
struct Sink {
    id: u64,
    queue: mpsc::Sender<Push>,
    /// When this follower first fell behind since its last report.
    lagging: Arc<Mutex<Option<Instant>>>,
}

impl Sink {
    fn offer(&self, push: Push) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(push) {
            self.lagging.lock().get_or_insert_with(Instant::now);
        }
    }
}

/// Followers by channel (several when two subscriptions of one channel
/// are open in this process, e.g. a gateway and its successor).
type Sinks = RwLock<HashMap<Vec<u8>, Vec<Sink>>>;

/// The shared push connection of one Redis deployment, opened on the
/// first subscription.
#[derive(Default)]
pub(crate) struct Subscriber {
    conn: OnceCell<Conn>,
    sinks: Arc<Sinks>,
    next_id: AtomicU64,
    /// Per channel, held while subscribing and while unsubscribing, so an
    /// `UNSUBSCRIBE` of a gateway that left cannot land after its
    /// successor's `SUBSCRIBE` (and cut the successor off).
    changing: Arc<ChangeLocks>,
    /// Our own `UNSUBSCRIBE`s not yet confirmed, per channel: their
    /// confirmation may reach the push handler after a successor's sink is
    /// in place, and is not the server dropping the successor.
    ours: Arc<Ours>,
}

/// A lock per channel whose subscription is being made or ended.
type ChangeLocks = Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>;

/// Unconfirmed unsubscribes per channel.
type Ours = Mutex<HashMap<Vec<u8>, u32>>;

impl Subscriber {
    fn change_lock(&self, channel: &[u8]) -> Arc<tokio::sync::Mutex<()>> {
        self.changing
            .lock()
            .entry(channel.to_vec())
            .or_default()
            .clone()
    }
}

impl Subscriber {
    /// Subscribes to `channel`; see [`RedisHandle::subscribe`](super::RedisHandle::subscribe).
    pub(crate) async fn follow(
        self: &Arc<Self>,
        config: &RedisConfig,
        channel: String,
        what: &'static str,
        queue: usize,
    ) -> Result<Follower, ConnectError> {
        let mut conn = self
            .conn
            .get_or_try_init(|| {
                let handler = demultiplexer(self.sinks.clone(), self.ours.clone());
                open(config, Some(handler))
            })
            .await?
            .clone();
        let (tx, pushes) = mpsc::channel(queue.max(1));
        let lagging = Arc::<Mutex<Option<Instant>>>::default();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let change = self.change_lock(channel.as_bytes());
        let _changing = change.lock().await;
        // Registered before SUBSCRIBE: nothing published after the
        // subscription is confirmed can miss the queue.
        self.sinks
            .write()
            .entry(channel.clone().into_bytes())
            .or_default()
            .push(Sink {
                id,
                queue: tx,
                lagging: lagging.clone(),
            });
        let follower = Follower {
            conn: conn.clone(),
            subscriber: self.clone(),
            id,
            pushes,
            lagging,
            channel,
            what,
            queue,
            ahead: VecDeque::new(),
            dropped: None,
        };
        // On error the follower is dropped, which unregisters it.
        conn.subscribe(&follower.channel)
            .await
            .map_err(|e| connect_error(config, Cause::new(e)))?;
        Ok(follower)
    }
}

/// The push handler of the shared connection: each message to the queues
/// of its channel, a dropped connection to every queue.
fn demultiplexer(sinks: Arc<Sinks>, ours: Arc<Ours>) -> super::PushSender {
    Arc::new(move |push: PushInfo| {
        let mut data = push.data.into_iter();
        let channel = match data.next() {
            Some(Value::BulkString(channel)) => Some(channel),
            _ => None,
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let (Some(channel), Some(Value::BulkString(payload))) = (channel, data.next()) {
                    if let Some(followers) = sinks.read().get(&channel) {
                        let payload = Bytes::from(payload);
                        for sink in followers {
                            sink.offer(Push::Message(payload.clone()));
                        }
                    }
                }
            }
            // The library reports a closed socket as `Disconnection` (a
            // lagging connection cut off by the server's
            // `client-output-buffer-limit pubsub` looks the same).
            PushKind::Disconnection => {
                // No confirmation comes for what was in flight.
                ours.lock().clear();
                for sink in sinks.read().values().flatten() {
                    sink.offer(Push::Lost(PushKind::Disconnection));
                }
            }
            // A cluster node that loses the slot sends `sunsubscribe`; our
            // own unsubscribe of a channel nobody follows any more finds
            // no sink.
            kind @ (PushKind::SUnsubscribe | PushKind::Unsubscribe) => {
                if let Some(channel) = channel.filter(|c| !confirms_ours(&ours, c)) {
                    for sink in sinks.read().get(&channel).into_iter().flatten() {
                        sink.offer(Push::Lost(kind.clone()));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })
}

/// Whether an unsubscribe push for `channel` confirms one of ours (and
/// counts it off).
fn confirms_ours(ours: &Ours, channel: &[u8]) -> bool {
    let mut ours = ours.lock();
    match ours.get_mut(channel) {
        Some(pending) => {
            *pending -= 1;
            if *pending == 0 {
                ours.remove(channel);
            }
            true
        }
        None => false,
    }
}

/// One subscription on the shared connection, and what it has yet to
/// report. Dropping it unregisters it and, when it was the channel's last,
/// unsubscribes, so PUBLISH stops counting this process for the channel.
pub(crate) struct Follower {
    conn: Conn,
    subscriber: Arc<Subscriber>,
    id: u64,
    pushes: mpsc::Receiver<Push>,
    lagging: Arc<Mutex<Option<Instant>>>,
    channel: String,
    what: &'static str,
    queue: usize,
    /// Reported before anything else is read.
    ahead: VecDeque<Pushed>,
    /// The subscription dropped then, and is to be made again.
    dropped: Option<Instant>,
}

impl Follower {
    /// The next message or gap; `None` once the connection is gone for good.
    pub(crate) async fn next(&mut self) -> Option<Pushed> {
        loop {
            if let Some(pushed) = self.ahead.pop_front() {
                return Some(pushed);
            }
            if let Some(dropped) = self.dropped.take() {
                return Some(self.resubscribe(dropped).await);
            }
            let push = self.pushes.recv().await?;
            let fell_behind = self.lagging.lock().take();
            if let Some(since) = fell_behind {
                metrics::counter!(telemetry::REDIS_SUBSCRIBER_DROPS, "what" => self.what, "reason" => "lagging")
                    .increment(1);
                tracing::warn!(channel = %self.channel, queue = self.queue, "subscriber fell behind: messages dropped locally");
                let gap = since.elapsed();
                self.ahead.push_back(Pushed::Dropped);
                self.ahead.push_back(Pushed::Resumed { gap });
            }
            match push {
                // After any gap just reported: a replay starts from the
                // last message received before it.
                Push::Message(payload) => self.ahead.push_back(Pushed::Message(payload)),
                // Reported before the resubscribe, which may take a while.
                Push::Lost(kind) => {
                    metrics::counter!(telemetry::REDIS_SUBSCRIBER_DROPS, "what" => self.what, "reason" => "disconnected")
                        .increment(1);
                    tracing::warn!(channel = %self.channel, %kind, "Redis subscription lost, resubscribing");
                    self.ahead.push_back(Pushed::Dropped);
                    self.dropped = Some(Instant::now());
                }
            }
        }
    }

    /// Subscribes again until Redis answers (the library resubscribes too;
    /// subscribing again is idempotent and tells us when it is back), and
    /// reports the resume.
    async fn resubscribe(&mut self, dropped: Instant) -> Pushed {
        let mut backoff = Backoff::default();
        while let Err(err) = self.conn.subscribe(&self.channel).await {
            tracing::debug!(channel = %self.channel, %err, "resubscribe failed, retrying");
            tokio::time::sleep(backoff.next()).await;
        }
        let gap = dropped.elapsed();
        metrics::histogram!(telemetry::REDIS_SUBSCRIBE_GAP, "what" => self.what)
            .record(gap.as_secs_f64());
        Pushed::Resumed { gap }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let last = {
            let mut sinks = self.subscriber.sinks.write();
            let key = self.channel.as_bytes();
            match sinks.get_mut(key) {
                Some(followers) => {
                    followers.retain(|s| s.id != self.id);
                    let last = followers.is_empty();
                    if last {
                        sinks.remove(key);
                    }
                    last
                }
                None => false,
            }
        };
        // Outside a runtime (a process exiting) the connection goes too.
        if let (true, Ok(runtime)) = (last, tokio::runtime::Handle::try_current()) {
            let (mut conn, channel, subscriber) = (
                self.conn.clone(),
                std::mem::take(&mut self.channel),
                self.subscriber.clone(),
            );
            runtime.spawn(async move {
                let key = channel.as_bytes();
                let change = subscriber.change_lock(key);
                let changing = change.lock().await;
                // A successor subscribed meanwhile: the channel stays.
                if !subscriber.sinks.read().contains_key(key) {
                    *subscriber.ours.lock().entry(key.to_vec()).or_default() += 1;
                    if let Err(err) = conn.unsubscribe(&channel).await {
                        // No confirmation will come for it.
                        confirms_ours(&subscriber.ours, key);
                        tracing::debug!(%channel, %err, "unsubscribe failed");
                    }
                }
                drop(changing);
                let mut changing = subscriber.changing.lock();
                // Only the map and this task hold it: nobody is changing it.
                if Arc::strong_count(&change) <= 2 {
                    changing.remove(key);
                }
            });
        }
    }
}

/// Exponential delay between resubscribe attempts: 50 ms doubling to
/// 500 ms. Each attempt is one connect (cheap), and every step of the cap is
/// added to the time a gateway is unreachable after a failover (the new
/// master counts no subscriber until this one is back).
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Self(Duration::from_millis(50))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_millis(500));
        now
    }
}
