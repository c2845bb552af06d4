//! Redis Sentinel: [`SentinelConfig`] (`[store.sentinel]`,
//! `[transports.redis.connection.sentinel]`) and [`SentinelConn`], a
//! connection to whichever server the sentinels currently name master of a
//! service. It follows failovers: a command that fails because the master
//! is gone (refused, dropped, timed out, `READONLY` from a demoted master)
//! makes it ask the sentinels again, and once they name another server it
//! connects there; the caller's retry goes to the new master. Each
//! connection also watches the sentinels' `+switch-master` events, so it
//! moves as soon as they switch, even while idle, and a subscription is
//! made again on the new master (a demoted master keeps its subscribers
//! until the sentinels reconfigure it, up to ~10 s later).
//!
//! Replication is asynchronous, so a write the old master answered may not
//! have reached the replica that is promoted. With `wait_replicas` every
//! request is followed by `WAIT`: it only succeeds once that many replicas
//! hold it, and the sentinels promote the replica with the most data, so a
//! confirmed write survives the failover.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ErrorKind, Pipeline, ProtocolVersion, PushInfo, PushKind, RedisConnectionInfo, RedisError,
    RedisFuture, RedisResult, ServerErrorKind, TlsMode, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{manager, ConnectError, PushSender, RedisConfig};
use crate::cause::Cause;

/// `[store.sentinel]` or `[transports.redis.connection.sentinel]`: find the
/// master through Redis Sentinel instead of `url`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// The master's name in the sentinels' `sentinel monitor` line.
    pub service: String,
    /// The sentinels, `redis://host:port` (`rediss://` for TLS, to them and
    /// to the master). Credentials in a URL are the sentinel's; the
    /// master's come from `username_env` / `password_env`.
    pub nodes: Vec<String>,
    /// Replicas that must hold a write before it counts as done (`WAIT`
    /// after each request); 0 answers as soon as the master has it, and a
    /// failover may then lose confirmed writes.
    pub wait_replicas: usize,
    /// How long a request waits for those replicas before it fails; shorter
    /// than the connection's `response_timeout`.
    #[serde(with = "humantime_serde")]
    pub wait_timeout: Duration,
}

impl Default for SentinelConfig {
    fn default() -> Self {
        Self {
            service: "switchyard".into(),
            nodes: Vec::new(),
            wait_replicas: 1,
            wait_timeout: Duration::from_secs(1),
        }
    }
}

impl SentinelConfig {
    /// What is wrong with these settings, as (key under `sentinel.`, reason).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.service.is_empty() {
            problems.push(("sentinel.service", "must name the monitored master".into()));
        }
        if self.nodes.is_empty() {
            problems.push(("sentinel.nodes", "must list at least one sentinel".into()));
        }
        for url in &self.nodes {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                problems.push((
                    "sentinel.nodes",
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                ));
            }
        }
        problems
    }

    /// The service and its sentinels, for error messages.
    pub fn address(&self) -> String {
        format!(
            "sentinel service {} at {}",
            self.service,
            self.nodes.join(",")
        )
    }
}

/// Minimum time between two lookups of one connection: while the old master
/// is down and not yet replaced, every failing command would ask again.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(100);

/// A multiplexed connection to the current master of a Sentinel service.
/// Cheap to clone; clones share the connection and follow failovers
/// together.
#[derive(Clone)]
pub struct SentinelConn(Arc<Follower>);

struct Follower {
    config: Arc<RedisConfig>,
    sentinel: SentinelConfig,
    /// Lookups run one at a time; holds when the last one ran.
    client: tokio::sync::Mutex<(SentinelClient, Option<Instant>)>,
    master: ArcSwap<Master>,
    push: Option<PushSender>,
    /// The channels subscribed through this connection, made again on each
    /// master it moves to. Held while they are, so an unsubscribe cannot
    /// land before a resubscribe of its channel (which would leave the new
    /// master counting a reader nobody is).
    channels: tokio::sync::Mutex<HashSet<String>>,
    /// Dropped with the follower: ends its `+switch-master` watch.
    _watching: oneshot::Sender<()>,
}

/// The server this connection currently sends to.
struct Master {
    address: String,
    conn: ConnectionManager,
    /// Bumped on every move, so a lookup triggered by a failure on an
    /// older master does not move again.
    generation: u64,
}

impl SentinelConn {
    /// Asks the sentinels of `config.sentinel` for the master and connects
    /// to it; with `push`, pub/sub messages and disconnections go there (on
    /// every master this connection follows).
    pub(crate) async fn connect(
        config: &RedisConfig,
        sentinel: &SentinelConfig,
        username: Option<String>,
        password: Option<String>,
        push: Option<PushSender>,
    ) -> Result<Self, ConnectError> {
        let err = |e: Cause| ConnectError {
            address: sentinel.address(),
            reason: e,
        };
        let mut redis = RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
        if let Some(user) = &username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &password {
            redis = redis.set_password(password);
        }
        let mut node = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
        if sentinel
            .nodes
            .iter()
            .any(|url| url.starts_with("rediss://"))
        {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        let mut client = SentinelClient::build(
            sentinel.nodes.clone(),
            &sentinel.service,
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(|e| err(Cause::new(e)))?;
        let (address, conn) = locate(config, &mut client, push.clone())
            .await
            .map_err(|e| err(Cause::new(e)))?;
        tracing::info!(service = %sentinel.service, master = %address, "Redis Sentinel names the master");
        let (watching, stop) = oneshot::channel();
        let follower = Arc::new(Follower {
            config: Arc::new(config.clone()),
            sentinel: sentinel.clone(),
            client: tokio::sync::Mutex::new((client, Some(Instant::now()))),
            master: ArcSwap::from_pointee(Master {
                address,
                conn,
                generation: 0,
            }),
            push,
            channels: tokio::sync::Mutex::default(),
            _watching: watching,
        });
        tokio::spawn(watch(Arc::downgrade(&follower), stop));
        Ok(Self(follower))
    }

    /// Subscribes on the current master (its pushes go to the push sender
    /// this connection was made with), asking the sentinels first: a
    /// subscription is made at start and after a drop, and a drop may be a
    /// demoted master disconnecting its clients. It would take the
    /// subscription (a replica does), and publishes on the new master would
    /// count no subscriber.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        let generation = self.0.master.load().generation;
        self.0.relocate(generation, false).await;
        // Recorded before the master is read: a move after this makes it
        // again on the new master, a move before is read here.
        self.0.channels.lock().await.insert(channel.to_owned());
        let (master, mut conn) = self.current();
        let result = conn.subscribe(channel).await;
        if let Err(err) = &result {
            self.0.after_failure(err, master.generation).await;
        }
        result
    }

    /// Ends a subscription on the current master (one on a master left
    /// behind went with its connection).
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        let mut channels = self.0.channels.lock().await;
        channels.remove(channel);
        let (_, mut conn) = self.current();
        conn.unsubscribe(channel).await
    }

    /// The current master, and a handle to it.
    fn current(&self) -> (Arc<Master>, ConnectionManager) {
        let master = self.0.master.load_full();
        let conn = master.conn.clone();
        (master, conn)
    }
}

impl Follower {
    /// What a request on the master of `generation` answered, after (with
    /// `wait_replicas`) `WAIT`ing for the replicas; on a failure that means
    /// the master moved, looks it up again before returning the error.
    async fn settle<T>(
        &self,
        result: RedisResult<T>,
        conn: &mut ConnectionManager,
        generation: u64,
    ) -> RedisResult<T> {
        let result = match result {
            Ok(value) if self.sentinel.wait_replicas > 0 => {
                self.replicated(conn).await.map(|()| value)
            }
            other => other,
        };
        if let Err(err) = &result {
            self.after_failure(err, generation).await;
        }
        result
    }

    /// `WAIT`s until `wait_replicas` replicas hold what this connection
    /// wrote; an error if fewer did within `wait_timeout`.
    async fn replicated(&self, conn: &mut ConnectionManager) -> RedisResult<()> {
        let wanted = self.sentinel.wait_replicas;
        let acked: usize = redis::cmd("WAIT")
            .arg(wanted)
            .arg(self.sentinel.wait_timeout.as_millis() as u64)
            .query_async(conn)
            .await
            .map_err(|err| match err.kind() {
                // A replica refuses WAIT ("cannot be used with replica
                // instances"): this is a demoted master, move like READONLY.
                ErrorKind::Server(_) => RedisError::from((
                    ErrorKind::Server(ServerErrorKind::ReadOnly),
                    "WAIT refused, not a master",
                    err.to_string(),
                )),
                _ => err,
            })?;
        if acked < wanted {
            return Err(RedisError::from((
                ErrorKind::Io,
                "write not replicated",
                format!(
                    "{acked} of {wanted} replicas acknowledged within {:?}",
                    self.sentinel.wait_timeout
                ),
            )));
        }
        Ok(())
    }

    /// After `err` on the master of `generation`: if it says the master
    /// is gone or demoted, asks the sentinels and moves to the one they name.
    async fn after_failure(&self, err: &RedisError, generation: u64) {
        let gone = err.is_io_error()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_timeout()
            || matches!(
                err.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            );
        if gone {
            self.relocate(generation, true).await;
        }
    }

    /// Asks the sentinels for the master, unless the master of `generation`
    /// was already left (or, when `throttled`, was looked up less than
    /// [`LOOKUP_INTERVAL`] ago), and moves there if it is another server.
    async fn relocate(&self, generation: u64, throttled: bool) {
        let mut guard = self.client.lock().await;
        let (client, last) = &mut *guard;
        if self.master.load().generation != generation
            || (throttled && last.is_some_and(|at| at.elapsed() < LOOKUP_INTERVAL))
        {
            return;
        }
        *last = Some(Instant::now());
        let current = self.master.load_full();
        let found = tokio::time::timeout(
            self.config.connect_timeout * 2,
            locate_address(client, &current.address),
        )
        .await;
        let client = match found {
            Ok(Ok(Some(client))) => client,
            // Same master (not failed over yet): the caller retries.
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(service = %self.sentinel.service, %e, "sentinel lookup failed");
                return;
            }
            Err(_) => {
                tracing::debug!(service = %self.sentinel.service, "sentinel lookup timed out");
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        match manager(client, &self.config, self.push.clone()).await {
            Ok(conn) => {
                tracing::warn!(service = %self.sentinel.service, from = %current.address, to = %address, "Redis master moved: following the failover");
                self.master.store(Arc::new(Master {
                    address,
                    conn,
                    generation: current.generation + 1,
                }));
                // The subscriptions are on the old master's connection,
                // which keeps them until the sentinels demote it (~10 s):
                // reported as dropped first (each reader re-reads the gap),
                // then made again here at once, reader or not, so the new
                // master counts them from now on.
                if let Some(push) = &self.push {
                    let _ = push(PushInfo {
                        kind: PushKind::Disconnection,
                        data: Vec::new(),
                    });
                    self.resubscribe().await;
                }
            }
            Err(e) => {
                tracing::debug!(service = %self.sentinel.service, %address, %e, "cannot connect to the new master yet")
            }
        }
    }

    /// Makes every channel of this connection again on the current master,
    /// in one SUBSCRIBE. If that fails, each reader makes its own after
    /// the drop it was told of.
    async fn resubscribe(&self) {
        let channels = self.channels.lock().await;
        if channels.is_empty() {
            return;
        }
        let mut conn = self.master.load().conn.clone();
        let all: Vec<&String> = channels.iter().collect();
        if let Err(e) = conn.subscribe(all).await {
            tracing::debug!(service = %self.sentinel.service, channels = channels.len(), %e, "resubscribe on the new master failed");
        }
    }
}

/// Follows the sentinels' `+switch-master` events (from any sentinel that
/// answers) until the follower is dropped: on a switch of its service the
/// follower looks the master up and moves.
async fn watch(follower: Weak<Follower>, mut stop: oneshot::Receiver<()>) {
    let Some((nodes, service)) = follower
        .upgrade()
        .map(|f| (f.sentinel.nodes.clone(), f.sentinel.service.clone()))
    else {
        return;
    };
    for url in nodes.iter().cycle() {
        let watched = async {
            let mut pubsub = redis::Client::open(url.as_str())?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe("+switch-master").await?;
            let mut switches = pubsub.into_on_message();
            // "<service> <old ip> <old port> <new ip> <new port>"
            while let Some(switch) = switches.next().await {
                let text: String = switch.get_payload()?;
                if text.split(' ').next() != Some(service.as_str()) {
                    continue;
                }
                let Some(follower) = follower.upgrade() else {
                    return Ok(());
                };
                let generation = follower.master.load().generation;
                follower.relocate(generation, false).await;
            }
            Ok::<(), RedisError>(())
        };
        tokio::select! {
            _ = &mut stop => return,
            watched = watched => {
                if let Err(e) = watched {
                    tracing::debug!(%service, sentinel = %url, %e, "cannot watch this sentinel; trying the next");
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The master the sentinels name and a connection to it.
async fn locate(
    config: &RedisConfig,
    client: &mut SentinelClient,
    push: Option<PushSender>,
) -> RedisResult<(String, ConnectionManager)> {
    let found = tokio::time::timeout(config.connect_timeout * 2, client.async_get_client())
        .await
        .map_err(|_| RedisError::from((ErrorKind::Io, "sentinel lookup timed out")))??;
    let address = found.get_connection_info().addr().to_string();
    Ok((address, manager(found, config, push).await?))
}

/// The master the sentinels name, if it is not `current` (which the
/// library only returns once it answers `ROLE` as master).
async fn locate_address(
    client: &mut SentinelClient,
    current: &str,
) -> RedisResult<Option<redis::Client>> {
    let found = client.async_get_client().await?;
    Ok((found.get_connection_info().addr().to_string() != current).then_some(found))
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (master, mut conn) = self.current();
            let result = conn.req_packed_command(cmd).await;
            self.0.settle(result, &mut conn, master.generation).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (master, mut conn) = self.current();
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            self.0.settle(result, &mut conn, master.generation).await
        })
    }

    fn get_db(&self) -> i64 {
        self.0.master.load().conn.get_db()
    }
}
