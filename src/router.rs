//! The send path: validate -> block check -> locate -> decide -> publish
//! (batched per target gateway) -> offline store for whatever could not go.
//! A [`Router`] is one gateway's handle on switchyard.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use foldhash::fast::RandomState;
use futures::future::{join_all, FutureExt};
use tokio::sync::mpsc;

use crate::backends::Backends;
use crate::config::{DeliveryConfig, LimitsConfig, Settings};
use crate::envelope::{now_micros, Destination, Envelope, MessageId, Priority};
use crate::error::{BuildError, SendError, StoreError};
use crate::inbox::{self, Handed, Inbox, Via};
use crate::offline::{OfflineAck, OfflineReason};
use crate::policy::handover::Handover;
use crate::policy::live::LivePolicy;
use crate::policy::{Decision, Policy, Route};
use crate::presence::watch::PresenceWatch;
use crate::presence::{PresenceStore, Session};
use crate::telemetry;
use crate::topology::{check, DeviceId, GatewayId, GatewayInfo, GroupId, IdKind, Region, UserId};
use crate::transport::{Ack, Health, TransportError, TransportKind};

/// One gateway's handle: sends messages, manages its users' presence and
/// groups, and feeds its [`Inbox`]. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    me: GatewayInfo,
    backends: Backends,
    policy: Arc<LivePolicy>,
    limits: LimitsConfig,
    delivery: DeliveryConfig,
    /// Offline messages replayed per connect: the store keeps no more.
    replay_limit: usize,
    /// The inbox's in-process input: local and offline deliveries.
    local: mpsc::Sender<Handed>,
    /// Last transport per target gateway, for order across a change.
    handover: Handover,
}

/// A router that does not keep its gateway alive (for tasks the gateway's
/// own inbox or backends hold: `regions`).
#[derive(Clone)]
pub(crate) struct WeakRouter(std::sync::Weak<Inner>);

impl WeakRouter {
    /// The router, while its gateway is still up.
    pub(crate) fn upgrade(&self) -> Option<Router> {
        self.0.upgrade().map(|inner| Router { inner })
    }
}

/// Heartbeats a gateway until dropped: see [`Router::keep_alive`].
#[must_use = "the heartbeats stop when this is dropped"]
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    /// Runs `beat` now and then every `every` until dropped.
    pub(crate) fn spawn<F, Fut>(every: std::time::Duration, mut beat: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        Self(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                beat().await;
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds a [`Router`] and its [`Inbox`].
pub struct RouterBuilder {
    gateway: GatewayInfo,
    settings: Settings,
    backends: Option<Backends>,
    policy: Option<Arc<LivePolicy>>,
}

impl RouterBuilder {
    /// Uses these settings instead of the embedded default.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Shares already-built backends (several gateways in one process).
    pub fn backends(mut self, backends: Backends) -> Self {
        self.backends = Some(backends);
        self
    }

    /// Shares a live policy (several gateways in one process follow one
    /// canary). Without it the router builds its own from the settings.
    pub fn policy(mut self, policy: Arc<LivePolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Connects the backends, subscribes to this gateway's address on every
    /// enabled transport and registers the gateway.
    pub async fn build(self) -> Result<(Router, Inbox), BuildError> {
        check("gateway_id", IdKind::Name, self.gateway.id.as_str())?;
        check("region", IdKind::Name, self.gateway.region.as_str())?;
        let settings = self.settings;
        settings.validate()?;
        let policy = match self.policy {
            Some(policy) => policy,
            None => LivePolicy::from_settings(&settings)?,
        };
        let backends = match self.backends {
            Some(backends) => backends,
            None => Backends::from_settings(&settings).await?,
        };
        let mut subscriptions = Vec::new();
        let guard = backends.reresolve_guard(&self.gateway.id);
        for transport in backends.transports.iter() {
            let mut subscription = transport.subscribe(&self.gateway.id).await?;
            if let Some(guard) = &guard {
                subscription = guard.wrap(subscription);
            }
            subscriptions.push((transport.kind(), subscription));
        }
        let (local, local_rx) = mpsc::channel(settings.limits.inbox_queue);
        let inbox = inbox::spawn(
            subscriptions,
            local_rx,
            settings.limits.dedupe_window,
            settings.limits.inbox_queue,
            settings.limits.inbox_bytes,
        );
        backends.registry.register(&self.gateway).await?;
        policy.observe(&backends.transports);
        let router = Router {
            inner: Arc::new(Inner {
                me: self.gateway,
                backends,
                policy,
                limits: settings.limits,
                delivery: settings.delivery,
                replay_limit: settings.offline.max_per_user,
                local,
                handover: Handover::default(),
            }),
        };
        if let Some(guard) = guard {
            guard.attach(&router);
        }
        Ok((router, inbox))
    }
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// The message.
    pub id: MessageId,
    /// Its fate.
    pub outcome: Outcome,
}

/// The fate of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The recipient has blocked the sender; nothing was sent.
    Blocked,
    /// Published to each target gateway (one per gateway, however many
    /// devices or members it hosts). `stored_offline` says whether (and why)
    /// the message also went to the offline store: the recipient had no
    /// session, or every transport to one of its gateways failed. A group
    /// message with no online member has no targets and is not stored.
    Routed {
        /// One entry per target gateway.
        targets: Vec<TargetReport>,
        /// Set when the message was written to the offline store.
        stored_offline: Option<OfflineReason>,
    },
}

/// The fate of one message at one target gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    /// The target gateway.
    pub gateway: GatewayId,
    /// The route taken.
    pub route: Route,
    /// `Ok` with what took the message: this gateway's inbox, or a transport
    /// that either confirmed it or (fire-and-forget, `confirmed == false`)
    /// accepted it into its client's send queue. `Err` with every
    /// transport's error when none took it.
    pub result: Result<Via, String>,
    /// Something that will deliver the message accepted it: the local inbox,
    /// the broker's ack, the receiving queue, a subscriber count above 0.
    /// False when `result` is an error, and for fire-and-forget publishes the
    /// client library only enqueued (low priority on Kafka, NATS, gRPC),
    /// which may still be lost.
    pub confirmed: bool,
    /// The canary transport it was also published on (dual mode), when that
    /// publish was confirmed within `canary.mirror_wait` of the primary's.
    pub mirrored: Option<TransportKind>,
}

/// How the publish of one run of messages to one target gateway went.
struct Sent {
    result: Result<Via, String>,
    confirmed: bool,
    mirrored: Option<TransportKind>,
}

/// Where a message would go and why: `switchyard explain`.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The sending gateway.
    pub from: GatewayInfo,
    /// The recipient.
    pub destination: Destination,
    /// Whether the recipient blocked the sender.
    pub blocked: bool,
    /// Sessions found for a user recipient.
    pub sessions: Vec<Session>,
    /// Gateways hosting online members of a group recipient, with counts.
    pub distribution: Vec<(GatewayId, u64)>,
    /// The decision per target gateway, with each transport's health.
    pub targets: Vec<(GatewayId, Region, Decision, Vec<Health>)>,
}

/// A chain's result as a report's `result` and `confirmed`.
fn split(result: Result<(Via, bool), String>) -> (Result<Via, String>, bool) {
    match result {
        Ok((via, confirmed)) => (Ok(via), confirmed),
        Err(err) => (Err(err), false),
    }
}

/// One target gateway's route and its (message, target) indices in a batch.
type Members = (Route, Vec<(usize, usize)>);

/// A message ready to publish.
struct Planned {
    envelope: Envelope,
    bytes: Bytes,
    targets: Vec<(GatewayId, Region, Decision)>,
    blocked: bool,
    found: Found,
}

enum Found {
    Sessions(Arc<[Session]>),
    Distribution(Vec<(GatewayId, u64)>),
}

impl Router {
    /// A builder for the gateway `gateway`, on the embedded default settings.
    pub fn builder(gateway: GatewayInfo) -> RouterBuilder {
        RouterBuilder {
            gateway,
            settings: Settings::default(),
            backends: None,
            policy: None,
        }
    }

    /// A handle that does not keep this router alive.
    pub(crate) fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.inner))
    }

    /// This gateway.
    pub fn gateway(&self) -> &GatewayInfo {
        &self.inner.me
    }

    /// The backends this router uses.
    pub fn backends(&self) -> &Backends {
        &self.inner.backends
    }

    /// The live policy: routing rules and canary, changed at run time.
    /// Messages already being published keep the rules they started with.
    pub fn policy(&self) -> &Arc<LivePolicy> {
        &self.inner.policy
    }

    /// A user's device connected to this gateway: marks it online and
    /// replays the user's offline messages into the inbox (oldest first).
    /// Each stays stored until the gateway acks its delivery, so a crash
    /// before then replays it again on the next connect. Returns how many
    /// are being replayed; they are handed to the inbox in the background,
    /// as the gateway makes room, so this returns before they are read.
    pub async fn connect(
        &self,
        user: impl Into<UserId>,
        device: impl Into<DeviceId>,
    ) -> Result<usize, StoreError> {
        let (user, device) = (user.into(), device.into());
        check("user", IdKind::Text, user.as_str())?;
        check("device", IdKind::Text, device.as_str())?;
        let session = Session {
            user,
            device,
            gateway: self.inner.me.id.clone(),
            region: self.inner.me.region.clone(),
            since_micros: now_micros(),
        };
        let user = session.user.clone();
        self.inner.backends.directory.online(session).await?;
        self.replay_offline(user).await
    }

    /// Hands `user`'s offline messages to the inbox in the background;
    /// returns how many.
    async fn replay_offline(&self, user: UserId) -> Result<usize, StoreError> {
        let offline = self.inner.backends.offline.clone();
        let stored = offline.read(&user, self.inner.replay_limit).await?;
        let replayed = stored.len();
        let local = self.inner.local.clone();
        tokio::spawn(async move {
            for envelope in stored {
                let ack = OfflineAck::new(offline.clone(), user.clone(), envelope.id);
                let handed = Handed {
                    via: Via::Offline,
                    envelope,
                    ack: Some(Box::new(ack)),
                };
                if local.send(handed).await.is_err() {
                    // The inbox is gone; the rest stays stored.
                    return;
                }
            }
        });
        Ok(replayed)
    }

    /// A user's device disconnected from this gateway.
    pub async fn disconnect(
        &self,
        user: impl Into<UserId>,
        device: impl Into<DeviceId>,
    ) -> Result<(), StoreError> {
        let (user, device) = (user.into(), device.into());
        check("user", IdKind::Text, user.as_str())?;
        check("device", IdKind::Text, device.as_str())?;
        let directory = &self.inner.backends.directory;
        directory.offline(&user, &device).await.map(drop)
    }

    /// The same gateway at a new region or address (it re-attached from
    /// elsewhere): re-registers it and returns its router there. Transport
    /// addresses depend only on the gateway id, so the inbox, and every
    /// delivery it holds, stays with the new router.
    pub async fn moved(&self, to: GatewayInfo) -> Result<Router, StoreError> {
        check("region", IdKind::Name, to.region.as_str())?;
        let inner = &self.inner;
        inner.backends.registry.register(&to).await?;
        Ok(Router {
            inner: Arc::new(Inner {
                me: to,
                backends: inner.backends.clone(),
                policy: inner.policy.clone(),
                limits: inner.limits.clone(),
                delivery: inner.delivery.clone(),
                replay_limit: inner.replay_limit,
                local: inner.local.clone(),
                handover: Handover::default(),
            }),
        })
    }

    /// The gateway is alive: refreshes its registration and its sessions'
    /// TTL, and replays the offline messages of hosted users that were
    /// stored while they were online (every transport to this gateway had
    /// failed), so they need not wait for the user's next connect.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let backends = &self.inner.backends;
        backends.registry.register(&self.inner.me).await?;
        backends.presence.refresh(&self.inner.me.id).await?;
        let online = backends.presence.hosted_users(&self.inner.me.id).await?;
        let me = &self.inner.me;
        metrics::gauge!(telemetry::ONLINE_USERS, "gateway" => me.id.to_string(), "region" => me.region.to_string())
            .set(online as f64);
        for user in backends.offline.take_flagged(&self.inner.me.id).await? {
            self.replay_offline(user).await?;
        }
        Ok(())
    }

    /// Heartbeats every `every` (see [`Settings::heartbeat_interval`]) until
    /// the returned guard is dropped, so the gateway's registration and its
    /// users' sessions outlive their TTLs. A failed heartbeat is logged and
    /// tried again at the next tick.
    pub fn keep_alive(&self, every: std::time::Duration) -> KeepAlive {
        let router = self.clone();
        KeepAlive::spawn(every, move || {
            let router = router.clone();
            async move {
                if let Err(err) = router.heartbeat().await {
                    tracing::warn!(gateway = %router.gateway().id, %err, "heartbeat failed");
                }
            }
        })
    }

    /// The live sessions of each of `users`, in order (a friend list's
    /// online dots): cached where the cache holds them, the rest looked up
    /// concurrently.
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Vec<Session>>, StoreError> {
        for user in users {
            check("users", IdKind::Text, user.as_str())?;
        }
        self.inner.backends.presence.locate_many(users).await
    }

    /// A watch of presence changes, empty until users are added
    /// ([`PresenceWatch::add`]); it holds at most `max` users.
    pub fn watch(&self, max: usize) -> PresenceWatch {
        PresenceWatch::new(self.inner.backends.presence.clone(), max)
    }

    /// Adds a user to a group (creating the group).
    pub async fn join(
        &self,
        group: impl Into<GroupId>,
        user: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (group, user) = (group.into(), user.into());
        check("group", IdKind::Text, group.as_str())?;
        check("user", IdKind::Text, user.as_str())?;
        self.inner.backends.directory.join(&group, &user).await
    }

    /// Removes a user from a group.
    pub async fn leave(
        &self,
        group: impl Into<GroupId>,
        user: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (group, user) = (group.into(), user.into());
        check("group", IdKind::Text, group.as_str())?;
        check("user", IdKind::Text, user.as_str())?;
        self.inner.backends.directory.leave(&group, &user).await
    }

    /// `user` stops receiving messages from `blocked`.
    pub async fn block(
        &self,
        user: impl Into<UserId>,
        blocked: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (user, blocked) = (user.into(), blocked.into());
        check("user", IdKind::Text, user.as_str())?;
        check("blocked", IdKind::Text, blocked.as_str())?;
        self.inner.backends.blocks.block(&user, &blocked).await
    }

    /// Undoes [`Router::block`].
    pub async fn unblock(
        &self,
        user: impl Into<UserId>,
        blocked: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (user, blocked) = (user.into(), blocked.into());
        check("user", IdKind::Text, user.as_str())?;
        check("blocked", IdKind::Text, blocked.as_str())?;
        self.inner.backends.blocks.unblock(&user, &blocked).await
    }

    /// Routes one message. Messages from one sender to one recipient arrive
    /// in order when each send is awaited before the next.
    pub async fn send(&self, envelope: Envelope) -> Result<SendReport, SendError> {
        let mut reports = self.send_batch(vec![envelope]).await;
        reports
            .pop()
            .expect("send_batch returns one report per envelope")
    }

    /// Routes several messages, publishing once per (target gateway,
    /// transport) batch. Returns one result per envelope, in input order.
    pub async fn send_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<SendReport, SendError>> {
        let mut results: Vec<Option<Result<SendReport, SendError>>> =
            Vec::with_capacity(envelopes.len());
        let mut planned: Vec<Option<Planned>> = Vec::with_capacity(envelopes.len());
        // Most plans finish on their first poll (presence and block lists
        // cached in process): those are taken at once, and only plans that
        // wait on a store are joined, overlapping their round trips. A
        // `join_all` of every plan cost a task slot and a wake per message.
        // One policy for the whole batch (its runs must agree anyway), owned:
        // plans that wait on a store hold it across that wait.
        let policy = arc_swap::Guard::into_inner(self.inner.policy.load());
        let (me, backends) = (&self.inner.me, &self.inner.backends);
        let max_payload = self.inner.limits.max_payload_bytes;
        let mut plans = Vec::with_capacity(envelopes.len());
        let mut waiting = Vec::new();
        for envelope in envelopes {
            let mut plan = Box::pin(plan(me, backends, &policy, max_payload, envelope));
            match plan.as_mut().now_or_never() {
                Some(done) => plans.push(Some(done)),
                None => {
                    waiting.push((plans.len(), plan));
                    plans.push(None);
                }
            }
        }
        let (slots, waiting): (Vec<usize>, Vec<_>) = waiting.into_iter().unzip();
        for (slot, done) in slots.into_iter().zip(join_all(waiting).await) {
            plans[slot] = Some(done);
        }
        for plan in plans.into_iter().flatten() {
            match plan {
                Ok(plan) => {
                    results.push(None);
                    planned.push(Some(plan));
                }
                Err(err) => {
                    results.push(Some(Err(err)));
                    planned.push(None);
                }
            }
        }

        // One batch per target gateway, in input order. Gateways are
        // published to concurrently; within one, runs of the same priority
        // and transports go one after another, so per-pair order holds.
        let mut batches: HashMap<GatewayId, Members, RandomState> = HashMap::default();
        for (i, plan) in planned.iter().enumerate() {
            let Some(plan) = plan.as_ref().filter(|p| !p.blocked) else {
                continue;
            };
            for (t, (gateway, _, decision)) in plan.targets.iter().enumerate() {
                batches
                    .entry(gateway.clone())
                    .or_insert_with(|| (decision.route, Vec::new()))
                    .1
                    .push((i, t));
            }
        }
        let published = join_all(batches.into_iter().map(|(gateway, (route, members))| {
            let planned = &planned;
            async move {
                let mut runs = Vec::new();
                for run in members.chunk_by(|&(a, ta), &(b, tb)| {
                    let (Some(a), Some(b)) = (&planned[a], &planned[b]) else {
                        return false;
                    };
                    let (da, db) = (&a.targets[ta].2, &b.targets[tb].2);
                    a.envelope.priority == b.envelope.priority
                        && da.transports == db.transports
                        && da.mirror == db.mirror
                        && da.cohort == db.cohort
                }) {
                    let plans: Vec<&Planned> = run
                        .iter()
                        .filter_map(|&(i, _)| planned[i].as_ref())
                        .collect();
                    let sent = match plans.first() {
                        None => continue,
                        Some(_) if route == Route::Local => {
                            let result = self.deliver_locally(&plans).await;
                            Sent {
                                confirmed: result.is_ok(),
                                result,
                                mirrored: None,
                            }
                        }
                        Some(first) => {
                            let batch: Vec<Bytes> = plans.iter().map(|p| p.bytes.clone()).collect();
                            let decision = &first.targets[run[0].1].2;
                            self.publish(&gateway, decision, &batch, first.envelope.priority)
                                .await
                        }
                    };
                    telemetry::messages(
                        route.as_str(),
                        sent.result.as_ref().map_or("none", |via| via.as_str()),
                        if sent.result.is_ok() {
                            "sent"
                        } else {
                            "failed"
                        },
                        run.len() as u64,
                    );
                    let members: Vec<usize> = run.iter().map(|&(i, _)| i).collect();
                    runs.push((members, sent));
                }
                (gateway, route, runs)
            }
        }))
        .await;

        let mut targets: Vec<Vec<TargetReport>> = vec![Vec::new(); planned.len()];
        for (gateway, route, runs) in published {
            for (members, sent) in runs {
                for i in members {
                    targets[i].push(TargetReport {
                        gateway: gateway.clone(),
                        route,
                        result: sent.result.clone(),
                        confirmed: sent.confirmed,
                        mirrored: sent.mirrored,
                    });
                }
            }
        }
        for (i, plan) in planned.into_iter().enumerate() {
            if let Some(plan) = plan {
                results[i] = Some(self.conclude(plan, std::mem::take(&mut targets[i])).await);
            }
        }
        results.into_iter().flatten().collect()
    }

    /// What `send` would do with this message, without sending it.
    pub async fn explain(&self, envelope: Envelope) -> Result<Explanation, SendError> {
        let policy = self.inner.policy.load();
        explain(
            &self.inner.me,
            &self.inner.backends,
            &policy,
            self.inner.limits.max_payload_bytes,
            envelope,
        )
        .await
    }

    async fn deliver_locally(&self, plans: &[&Planned]) -> Result<Via, String> {
        for plan in plans {
            let handed = Handed {
                via: Via::Local,
                envelope: plan.envelope.clone(),
                ack: None,
            };
            self.inner
                .local
                .send(handed)
                .await
                .map_err(|_| "this gateway's inbox is closed".to_string())?;
        }
        Ok(Via::Local)
    }

    /// Tries the decision's transports in order (and its canary mirror
    /// alongside); the message is out once either path took it. After a
    /// change of primary it first waits out the handover (per-pair order).
    async fn publish(
        &self,
        to: &GatewayId,
        decision: &Decision,
        batch: &[Bytes],
        priority: Priority,
    ) -> Sent {
        let policy = self.inner.policy.load();
        let (quiet, mirror_wait) = (policy.handover, policy.mirror_wait);
        drop(policy);
        if let Some(&primary) = decision.transports.first() {
            let wait = self
                .inner
                .handover
                .steer(to, primary, quiet, std::time::Instant::now());
            if !wait.is_zero() {
                tracing::debug!(gateway = %to, transport = %primary, ?wait, "transport changed: waiting for the old one to go quiet");
                tokio::time::sleep(wait).await;
            }
        }
        let chain = self.publish_chain(to, decision, batch, priority);
        let Some(mirror) = decision.mirror else {
            let (result, confirmed) = split(chain.await);
            return Sent {
                result,
                confirmed,
                mirrored: None,
            };
        };
        // Owned, so that a mirror publish still unconfirmed when the wait
        // ends can finish in the background: its outcome still feeds the
        // watchdog, and a late copy is dropped by the receiver's dedupe.
        let mut mirroring = Box::pin({
            let (router, to, batch) = (self.clone(), to.clone(), batch.to_vec());
            let route = decision.route.as_str();
            async move {
                let mirrored = router.publish_on(mirror, &to, &batch, priority, true).await;
                let outcome = if mirrored.is_ok() {
                    "mirrored"
                } else {
                    "failed"
                };
                telemetry::messages(route, mirror.as_str(), outcome, batch.len() as u64);
                mirrored
            }
        });
        let mut chain = std::pin::pin!(chain);
        let mut mirrored = None;
        let primary = tokio::select! {
            primary = &mut chain => primary,
            done = &mut mirroring => {
                mirrored = Some(done);
                (&mut chain).await
            }
        };
        let mirrored = match mirrored {
            Some(done) => Some(done),
            // The primary took it: the mirror gets `mirror_wait`, not the
            // whole publish timeout (a canary broker that is down would
            // otherwise hold every cohort send for that long).
            None if primary.is_ok() => tokio::time::timeout(mirror_wait, &mut mirroring).await.ok(),
            None => Some((&mut mirroring).await),
        };
        if mirrored.is_none() {
            tracing::debug!(gateway = %to, transport = %mirror, ?mirror_wait, "mirror publish not confirmed in time; finishing in the background");
            tokio::spawn(mirroring);
        }
        let mirror_confirmed = matches!(mirrored, Some(Ok(true)));
        let (result, confirmed) = match (primary, mirrored) {
            (Ok((via, confirmed)), _) => (Ok(via), confirmed || mirror_confirmed),
            (Err(_), Some(Ok(confirmed))) => (Ok(Via::Transport(mirror)), confirmed),
            (Err(primary), Some(Err(mirrored))) => (Err(format!("{primary}; {mirrored}")), false),
            (Err(primary), None) => (Err(primary), false),
        };
        Sent {
            result,
            confirmed,
            mirrored: mirror_confirmed.then_some(mirror),
        }
    }

    /// Tries each transport of the decision in order until one takes the
    /// batch; returns it and whether it confirmed.
    async fn publish_chain(
        &self,
        to: &GatewayId,
        decision: &Decision,
        batch: &[Bytes],
        priority: Priority,
    ) -> Result<(Via, bool), String> {
        let mut errors = Vec::new();
        for &kind in &decision.transports {
            match self
                .publish_on(kind, to, batch, priority, decision.cohort)
                .await
            {
                Ok(confirmed) => return Ok((Via::Transport(kind), confirmed)),
                Err(err) => {
                    tracing::warn!(transport = %kind, gateway = %to, %err, "publish failed, trying the next transport");
                    errors.push(err);
                }
            }
        }
        if errors.is_empty() {
            errors.push("no transport configured for this route".into());
        }
        Err(errors.join("; "))
    }

    /// One transport: high priority retries with backoff; low priority does
    /// not wait for the broker's ack. Returns whether the transport
    /// confirmed ([`crate::transport::Transport::confirms`]). Publishes of
    /// the canary cohort (`cohort`) feed the canary watchdog.
    async fn publish_on(
        &self,
        kind: TransportKind,
        to: &GatewayId,
        batch: &[Bytes],
        priority: Priority,
        cohort: bool,
    ) -> Result<bool, String> {
        let delivery = &self.inner.delivery;
        let transport = self
            .inner
            .backends
            .transports
            .get(kind)
            .map_err(|e| e.to_string())?;
        let ack = if priority == Priority::Low {
            Ack::None
        } else {
            Ack::Confirmed
        };
        let retries = if priority == Priority::High {
            delivery.retries as usize
        } else {
            0
        };
        let attempt = || async {
            tokio::time::timeout(delivery.publish_timeout, transport.publish(to, batch, ack))
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::Timeout {
                        transport: kind,
                        gateway: to.clone(),
                        after: delivery.publish_timeout,
                    })
                })
        };
        let started = std::time::Instant::now();
        let result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(delivery.retry_backoff)
                    .with_max_times(retries),
            )
            .notify(|err, delay| {
                tracing::debug!(transport = %kind, gateway = %to, %err, ?delay, "publish failed, retrying");
                metrics::counter!(telemetry::PUBLISH_RETRIES, "transport" => kind.as_str()).increment(1);
            })
            .await;
        let confirmed = result.is_ok() && transport.confirms(ack);
        if cohort {
            self.inner.policy.record_publish(
                kind,
                result.is_ok(),
                batch.len() as u64,
                confirmed.then(|| started.elapsed()),
            );
        }
        result.map(|()| confirmed).map_err(|e| e.to_string())
    }

    /// Stores offline whatever could not be published, and builds the report.
    async fn conclude(
        &self,
        plan: Planned,
        targets: Vec<TargetReport>,
    ) -> Result<SendReport, SendError> {
        let id = plan.envelope.id;
        if plan.blocked {
            telemetry::messages("none", "none", "blocked", 1);
            return Ok(SendReport {
                id,
                outcome: Outcome::Blocked,
            });
        }
        let failed: Vec<&TargetReport> = targets.iter().filter(|t| t.result.is_err()).collect();
        let reason = match (&plan.envelope.destination, targets.is_empty()) {
            (Destination::User(_), true) => Some(OfflineReason::NoSession),
            _ if !failed.is_empty() => Some(OfflineReason::TransportsFailed),
            _ => None,
        };
        if let Some(reason) = reason {
            let failed_gateways: BTreeSet<&GatewayId> = failed.iter().map(|t| &t.gateway).collect();
            self.store_offline(&plan.envelope, &failed_gateways, reason)
                .await
                .map_err(|offline| SendError::Undeliverable {
                    id,
                    offline,
                    transports: failed
                        .iter()
                        .filter_map(|t| t.result.as_ref().err().map(String::as_str))
                        .collect::<Vec<_>>()
                        .join("; "),
                })?;
        }
        Ok(SendReport {
            id,
            outcome: Outcome::Routed {
                targets,
                stored_offline: reason,
            },
        })
    }

    /// A user message is stored for its recipient; a group message for each
    /// member hosted on a gateway every transport failed to reach.
    async fn store_offline(
        &self,
        envelope: &Envelope,
        failed: &BTreeSet<&GatewayId>,
        reason: OfflineReason,
    ) -> Result<(), StoreError> {
        let backends = &self.inner.backends;
        // Each recipient, with the failed gateways it has a session on.
        let recipients: Vec<(UserId, Vec<GatewayId>)> = match &envelope.destination {
            Destination::User(user) => {
                vec![(user.clone(), failed.iter().map(|g| (*g).clone()).collect())]
            }
            Destination::Group(group) => {
                let mut stranded = Vec::new();
                for member in backends.directory.groups().members(group).await? {
                    let sessions = backends.presence.locate_shared(&member).await?;
                    let on: Vec<GatewayId> = sessions
                        .iter()
                        .filter(|s| failed.contains(&s.gateway))
                        .map(|s| s.gateway.clone())
                        .collect();
                    if !on.is_empty() {
                        stranded.push((member, on));
                    }
                }
                stranded
            }
        };
        for (user, gateways) in &recipients {
            backends.offline.append(user, envelope).await?;
            metrics::counter!(telemetry::OFFLINE_STORED, "reason" => reason.as_str()).increment(1);
            // Online there: that gateway's next heartbeat replays it.
            for gateway in gateways {
                backends.offline.flag(gateway, user).await?;
            }
        }
        Ok(())
    }
}

/// What sending `envelope` from gateway `from` would do, without sending it
/// or attaching to any transport (`switchyard explain`).
pub async fn explain(
    from: &GatewayInfo,
    backends: &Backends,
    policy: &Policy,
    max_payload: usize,
    envelope: Envelope,
) -> Result<Explanation, SendError> {
    let plan = plan(from, backends, policy, max_payload, envelope).await?;
    let transports = &backends.transports;
    let (sessions, distribution) = match plan.found {
        Found::Sessions(s) => (s.to_vec(), Vec::new()),
        Found::Distribution(d) => (Vec::new(), d),
    };
    Ok(Explanation {
        from: from.clone(),
        destination: plan.envelope.destination,
        blocked: plan.blocked,
        sessions,
        distribution,
        targets: plan
            .targets
            .into_iter()
            .map(|(gateway, region, decision)| {
                let health = decision
                    .transports
                    .iter()
                    .map(|k| {
                        transports
                            .get(*k)
                            .map_or_else(|e| Health::Down(e.to_string()), |t| t.health())
                    })
                    .collect();
                (gateway, region, decision, health)
            })
            .collect(),
    })
}

/// Validate, block check, locate, decide.
async fn plan(
    me: &GatewayInfo,
    backends: &Backends,
    policy: &Policy,
    max_payload: usize,
    mut envelope: Envelope,
) -> Result<Planned, SendError> {
    let now = now_micros();
    if envelope.created_at_micros == 0 {
        envelope.created_at_micros = now;
    }
    envelope.validate(max_payload, now)?;
    let id = envelope.id;
    let store_err = |source| SendError::Store { id, source };
    let (blocked, found, gateways): (bool, Found, Vec<(GatewayId, Region)>) =
        match &envelope.destination {
            Destination::User(user) => {
                if backends
                    .blocks
                    .is_blocked(user, &envelope.sender)
                    .await
                    .map_err(store_err)?
                {
                    (true, Found::Sessions(Arc::from([])), Vec::new())
                } else {
                    let sessions = backends
                        .presence
                        .locate_shared(user)
                        .await
                        .map_err(store_err)?;
                    // One target per gateway, in gateway order; a user has
                    // few sessions, so a sorted Vec beats a set.
                    let mut gateways: Vec<(GatewayId, Region)> = sessions
                        .iter()
                        .map(|s| (s.gateway.clone(), s.region.clone()))
                        .collect();
                    gateways.sort_unstable();
                    gateways.dedup();
                    (false, Found::Sessions(sessions), gateways)
                }
            }
            Destination::Group(group) => {
                let distribution = backends
                    .directory
                    .groups()
                    .distribution(group)
                    .await
                    .map_err(store_err)?;
                let mut gateways = Vec::with_capacity(distribution.len());
                for (gateway, _) in &distribution {
                    let region = match backends.registry.get(gateway).await.map_err(store_err)? {
                        Some(info) => info.region,
                        // Not registered (dying?): any other region takes the durable route.
                        None => Region::new(""),
                    };
                    gateways.push((gateway.clone(), region));
                }
                (false, Found::Distribution(distribution), gateways)
            }
        };
    let recipient = match &envelope.destination {
        Destination::User(user) => Some(user),
        Destination::Group(_) => None,
    };
    let transports = &backends.transports;
    let is_up = |kind| transports.get(kind).is_ok_and(|t| t.health() == Health::Up);
    let targets = gateways
        .into_iter()
        .map(|(gateway, region)| {
            let decision = backends
                .hot_pairs
                .decide(policy, me, &gateway, &region, recipient, is_up);
            (gateway, region, decision)
        })
        .collect();
    Ok(Planned {
        bytes: envelope.encode(),
        envelope,
        targets,
        blocked,
        found,
    })
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "from gateway {} (region {})",
            self.from.id, self.from.region
        )?;
        writeln!(f, "to {}", self.destination)?;
        if self.blocked {
            return writeln!(
                f,
                "blocked: the recipient has blocked the sender; nothing is sent"
            );
        }
        match &self.destination {
            Destination::User(_) if self.sessions.is_empty() => {
                return writeln!(
                    f,
                    "presence: no live session -> stored offline, replayed on connect"
                );
            }
            Destination::User(_) => {
                writeln!(f, "presence: {} session(s)", self.sessions.len())?;
                for s in &self.sessions {
                    writeln!(
                        f,
                        "  device {} on gateway {} (region {})",
                        s.device, s.gateway, s.region
                    )?;
                }
            }
            Destination::Group(_) if self.distribution.is_empty() => {
                return writeln!(f, "group: no online member -> nothing to publish");
            }
            Destination::Group(_) => {
                writeln!(
                    f,
                    "group: online members on {} gateway(s), one publish each",
                    self.distribution.len()
                )?;
                for (gateway, count) in &self.distribution {
                    writeln!(f, "  gateway {gateway}: {count} member(s)")?;
                }
            }
        }
        for (gateway, region, decision, health) in &self.targets {
            let order: Vec<String> = decision
                .transports
                .iter()
                .zip(health)
                .map(|(k, h)| match h {
                    Health::Up => k.to_string(),
                    Health::Down(why) => format!("{k} (down: {why})"),
                })
                .collect();
            writeln!(
                f,
                "-> gateway {gateway} (region {region}): route {}, transports [{}]: {}",
                decision.route,
                order.join(", "),
                decision.reason
            )?;
        }
        writeln!(f, "if every transport fails: stored offline")
    }
}
