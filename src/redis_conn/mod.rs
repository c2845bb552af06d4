//! The one place that connects to Redis, standalone, cluster or through
//! Sentinel ([`sentinel`]), for every
//! Redis store and the Redis transport: [`RedisConfig`] (the `[store]` and
//! `[transports.redis.connection]` settings), [`RedisHandle`] (a small pool
//! of multiplexed connections), [`Conn`] (one connection, either kind, usable
//! with any `redis::cmd`, pipeline or script), [`RedisHandle::subscribe`]
//! (a channel subscription that survives connection drops; all of a
//! handle's subscriptions share one connection, `subscriber.rs`) and
//! [`RedisChanges`] (the change events of a Redis store, between nodes).
//!
//! On a cluster, keys carry hash tags (`sy:presence:{alice}`) so one user's,
//! group's or gateway's keys share a slot, and pub/sub is sharded
//! (SPUBLISH/SSUBSCRIBE): a message only travels to the shard that owns its
//! channel instead of being broadcast to every node.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, RedisFuture, RedisResult, Value,
};

mod changes;
mod config;
pub mod sentinel;
mod subscriber;

use crate::cause::Cause;
use crate::error::StoreError;
pub use changes::RedisChanges;
pub use config::{ConnectError, RedisConfig};
use sentinel::SentinelConn;
use subscriber::Subscriber;

/// Maps a failed command of `store` to [`StoreError::Backend`] naming the
/// `operation` (and its input): `.map_err(backend(STORE, format!(..)))`.
pub(crate) fn backend(
    store: &'static str,
    operation: String,
) -> impl FnOnce(redis::RedisError) -> StoreError {
    move |e| StoreError::Backend {
        store,
        operation,
        reason: Cause::new(e),
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

    /// Ends a subscription made with [`Conn::subscribe`].
    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.unsubscribe(channel).await,
            Conn::Cluster(c) => c.sunsubscribe(channel).await,
            Conn::Sentinel(c) => c.unsubscribe(channel).await,
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
    /// Every subscription's shared push connection.
    subscriber: Arc<Subscriber>,
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
                .map_err(|e| connect_error(&config, Cause::new(e)))?;
            conns.push(conn);
        }
        Ok(Self {
            config,
            conns: conns.into(),
            next: Arc::default(),
            subscriber: Arc::default(),
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

    /// Subscribes to `channel` on the handle's one push connection, shared
    /// by all its subscriptions (`subscriber`). The stream yields its
    /// messages and reports every gap: after a dropped connection it
    /// resubscribes (retrying with backoff until Redis answers); when this
    /// subscription falls more than `queue` messages behind, the messages
    /// that do not fit are dropped here (not left to grow without bound)
    /// and the gap reported. Drops and gaps are counted in metrics under
    /// `what`. Dropping the stream unsubscribes (once no other stream of
    /// this handle follows the channel).
    pub async fn subscribe(
        &self,
        channel: String,
        what: &'static str,
        queue: usize,
    ) -> Result<BoxStream<'static, Pushed>, ConnectError> {
        let follower = self
            .subscriber
            .follow(&self.config, channel, what, queue)
            .await?;
        // Read straight from the follower's queue (no task or channel of
        // its own: one hand-off less per message).
        Ok(
            futures::stream::unfold(follower, |mut follower| async move {
                let pushed = follower.next().await?;
                Some((pushed, follower))
            })
            .boxed(),
        )
    }
}

fn connect_error(config: &RedisConfig, reason: Cause) -> ConnectError {
    ConnectError {
        address: config.address(),
        reason,
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
    let err = |e: Cause| connect_error(config, e);
    let username = env_secret(&config.username_env).map_err(|e| err(Cause::from_message(e)))?;
    let password = env_secret(&config.password_env).map_err(|e| err(Cause::from_message(e)))?;
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
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| err(Cause::new(e)))?;
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
        let client = builder.build().map_err(|e| err(Cause::new(e)))?;
        let conn = tokio::time::timeout(config.connect_timeout * 2, client.get_async_connection())
            .await
            .map_err(|_| err(Cause::from_message("timed out")))?
            .map_err(|e| err(Cause::new(e)))?;
        Ok(Conn::Cluster(conn))
    } else {
        let client = redis::Client::open(infos.remove(0)).map_err(|e| err(Cause::new(e)))?;
        let conn = manager(client, config, push)
            .await
            .map_err(|e| err(Cause::new(e)))?;
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
