//! The one place that connects to Redis, standalone, cluster or through
//! Sentinel ([`sentinel`]), for every
//! Redis store and the Redis transport: [`RedisConfig`] (the `[store]` and
//! `[transports.redis.connection]` settings), [`RedisHandle`] (a small pool
//! of multiplexed connections), [`Conn`] (one connection, either kind, usable
//! with any `redis::cmd`, pipeline or script), [`RedisHandle::subscribe`]
//! (a channel subscription that survives connection drops) and
//! [`RedisChanges`] (the change events of a Redis store, between nodes).
//!
//! On a cluster, keys carry hash tags (`sy:presence:{alice}`) so one user's,
//! group's or gateway's keys share a slot, and pub/sub is sharded
//! (SPUBLISH/SSUBSCRIBE): a message only travels to the shard that owns its
//! channel instead of being broadcast to every node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisFuture,
    RedisResult, Value,
};
use tokio::sync::mpsc;

mod changes;
mod config;
pub mod sentinel;

use crate::error::StoreError;
use crate::telemetry;
pub use changes::RedisChanges;
pub use config::{ConnectError, RedisConfig};
use sentinel::SentinelConn;

/// Maps a failed command of `store` to [`StoreError::Backend`] naming the
/// `operation` (and its input): `.map_err(backend(STORE, format!(..)))`.
pub(crate) fn backend(
    store: &'static str,
    operation: String,
) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend {
        store,
        operation,
        reason: e.to_string(),
    }
}

/// One multiplexed connection to a standalone Redis or a cluster. Implements
/// [`ConnectionLike`], so commands, pipelines and scripts do not care which.
#[derive(Clone)]
pub enum Conn {
    /// A standalone server; reconnects by itself.
    Single(ConnectionManager),
    /// A cluster; follows slot moves and failovers by itself.
    Cluster(ClusterConnection),
    /// The master of a Sentinel service; follows failovers.
    Sentinel(SentinelConn),
}

impl Conn {
    /// A cluster: a pipeline or a script must stay within one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// `PUBLISH` on a standalone server, `SPUBLISH` (sharded) on a cluster.
    pub fn publish_command(&self) -> &'static str {
        match self {
            Conn::Single(_) | Conn::Sentinel(_) => "PUBLISH",
            Conn::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to `channel` (sharded on a cluster); messages arrive on the
    /// connection's push sender.
    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.ssubscribe(channel).await,
            Conn::Sentinel(c) => c.subscribe(channel).await,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// What a [`RedisHandle::subscribe`] stream yields.
#[derive(Debug)]
pub enum Pushed {
    /// A message published to the channel.
    Message(Bytes),
    /// Messages are being missed (the connection dropped, or this process
    /// fell behind).
    Dropped,
    /// Messages flow again; some published during the last `gap` were missed.
    Resumed {
        /// From the first missed message (or the drop) to now.
        gap: Duration,
    },
}

/// Connections to one Redis deployment, shared by every store of a node.
#[derive(Clone)]
pub struct RedisHandle {
    config: Arc<RedisConfig>,
    conns: Arc<[Conn]>,
    next: Arc<AtomicUsize>,
}

impl RedisHandle {
    /// Connects (and pings) `config.connections` connections. Fails with the
    /// URL when Redis is not there.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let config = Arc::new(config.clone());
        let mut conns = Vec::with_capacity(config.connections.max(1));
        for _ in 0..config.connections.max(1) {
            let mut conn = open(&config, None).await?;
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| connect_error(&config, e))?;
            conns.push(conn);
        }
        Ok(Self {
            config,
            conns: conns.into(),
            next: Arc::default(),
        })
    }

    /// The settings this handle was built from.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A key or channel name: the prefix, then `parts` joined by `:`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// A connection, round robin (cheap: a clone of a multiplexed handle).
    pub fn conn(&self) -> Conn {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        self.conns[i].clone()
    }

    /// Subscribes to `channel` on a dedicated connection. The stream yields
    /// its messages and reports every gap: after a dropped connection it
    /// resubscribes (retrying with backoff until Redis answers); when this
    /// process falls more than `queue` messages behind, the messages that do
    /// not fit are dropped here (not left to grow without bound) and the gap
    /// reported. Drops and gaps are counted in metrics under `what`. Ends,
    /// closing the connection, when the stream is dropped.
    pub async fn subscribe(
        &self,
        channel: String,
        what: &'static str,
        queue: usize,
    ) -> Result<BoxStream<'static, Pushed>, ConnectError> {
        let (push_tx, pushes) = mpsc::channel::<PushInfo>(queue.max(1));
        // When this process first fell behind since the last report.
        let lagging: Arc<parking_lot::Mutex<Option<Instant>>> = Arc::default();
        let overflow = lagging.clone();
        let sender = move |push: PushInfo| match push_tx.try_send(push) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                overflow.lock().get_or_insert_with(Instant::now);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        };
        let mut conn = open(&self.config, Some(Arc::new(sender))).await?;
        conn.subscribe(&channel)
            .await
            .map_err(|e| connect_error(&self.config, e))?;
        let follower = Follower {
            conn,
            pushes,
            lagging,
            channel,
            what,
            queue,
            ahead: VecDeque::new(),
            dropped: None,
        };
        // Read straight from the connection's pushes (no task or channel of
        // its own: one hand-off less per message). Dropping the stream drops
        // the connection, so PUBLISH stops counting this subscriber at once.
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let pushed = follower.next().await?;
                Some((pushed, follower))
            })
            .boxed(),
        )
    }
}

/// One subscription's connection and what it has yet to report.
struct Follower {
    conn: Conn,
    pushes: mpsc::Receiver<PushInfo>,
    lagging: Arc<parking_lot::Mutex<Option<Instant>>>,
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
    async fn next(&mut self) -> Option<Pushed> {
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
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    // [channel, payload]
                    if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                        self.ahead.push_back(Pushed::Message(payload.into()));
                    }
                }
                // The library reports a closed socket as `Disconnection` (a
                // lagging subscriber cut off by the server's
                // `client-output-buffer-limit pubsub` looks the same); a
                // cluster node that loses the slot sends `sunsubscribe`.
                // The drop is reported before the resubscribe, which may
                // take a while.
                PushKind::Disconnection | PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                    metrics::counter!(telemetry::REDIS_SUBSCRIBER_DROPS, "what" => self.what, "reason" => "disconnected")
                        .increment(1);
                    tracing::warn!(channel = %self.channel, kind = %push.kind, "Redis subscription lost, resubscribing");
                    self.ahead.push_back(Pushed::Dropped);
                    self.dropped = Some(Instant::now());
                }
                _ => {}
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

fn connect_error(config: &RedisConfig, err: impl std::fmt::Display) -> ConnectError {
    ConnectError {
        address: config.address(),
        reason: err.to_string(),
    }
}

/// Reads a credential from the environment variable `name`, if configured.
fn env_secret(name: &Option<String>) -> Result<Option<String>, String> {
    match name {
        None => Ok(None),
        Some(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set")),
    }
}

/// Where a subscription connection hands its pushes (shared: a Sentinel
/// connection hands it to every master it follows).
pub(crate) type PushSender =
    Arc<dyn Fn(PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync>;

/// Opens one connection; with `push`, in RESP3 with pushes (pub/sub
/// messages, disconnections) sent there and subscriptions restored on
/// reconnect.
async fn open(config: &RedisConfig, push: Option<PushSender>) -> Result<Conn, ConnectError> {
    let err = |e: &dyn std::fmt::Display| connect_error(config, e);
    let username = env_secret(&config.username_env).map_err(|e| err(&e))?;
    let password = env_secret(&config.password_env).map_err(|e| err(&e))?;
    let tls = match &config.sentinel {
        Some(sentinel) => sentinel
            .nodes
            .iter()
            .any(|url| url.starts_with("rediss://")),
        None => config.seeds().any(|url| url.starts_with("rediss://")),
    };
    if tls {
        // rustls needs one process-wide crypto provider; if another crate
        // enables a second one it cannot pick by itself. Already installed
        // (by us or the application) is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if let Some(sentinel) = &config.sentinel {
        let conn = SentinelConn::connect(config, sentinel, username, password, push).await?;
        return Ok(Conn::Sentinel(conn));
    }
    let mut infos = Vec::new();
    for url in config.seeds() {
        let info = url.as_str().into_connection_info().map_err(|e| err(&e))?;
        let mut redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(user) = &username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &password {
            redis = redis.set_password(password);
        }
        infos.push(info.set_redis_settings(redis));
    }
    if config.cluster {
        let mut builder = ClusterClientBuilder::new(infos)
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout);
        if let Some(push) = push {
            builder = builder.push_sender(move |info| push(info));
        }
        let client = builder.build().map_err(|e| err(&e))?;
        let conn = tokio::time::timeout(config.connect_timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| err(&"timed out"))?
            .map_err(|e| err(&e))?;
        Ok(Conn::Cluster(conn))
    } else {
        let client = redis::Client::open(infos.remove(0)).map_err(|e| err(&e))?;
        let conn = manager(client, config, push).await.map_err(|e| err(&e))?;
        Ok(Conn::Single(conn))
    }
}

/// A reconnecting connection to one server; with `push`, in RESP3 with
/// pushes sent there and subscriptions restored on reconnect.
pub(crate) async fn manager(
    client: redis::Client,
    config: &RedisConfig,
    push: Option<PushSender>,
) -> RedisResult<ConnectionManager> {
    let mut manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_number_of_retries(2);
    if let Some(push) = push {
        manager = manager
            .set_push_sender(move |info| push(info))
            .set_automatic_resubscription();
    }
    ConnectionManager::new_with_config(client, manager).await
}
