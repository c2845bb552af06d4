//! Messages routed on stale presence, caught where they land.
//!
//! A sender's region learns of a move only when the user's snapshot has
//! replicated, so for that lag it may route a message to a gateway the
//! user has left. The receiving gateway's region is authoritative for its
//! own sessions: every message that arrives for a user with no session on
//! this gateway is routed again from here (to where the user is now, or
//! the offline store), and the transport is acked only once that send is
//! confirmed. A message re-routed [`MAX_HOPS`] times goes to the offline
//! store instead, so a flapping user cannot make a message circle.
//!
//! The other half: a user who comes online in another region gets the
//! offline messages stored in this one, sent on as soon as their snapshot
//! is applied here. Messages stored here because every transport to an
//! online user's gateway in another region failed (the link was cut) are
//! flagged for that gateway, as within a region; since that gateway's
//! heartbeat reads its own region's store, this region sweeps the flags of
//! the remote gateways it has seen every `regions.sweep_interval` and
//! sends the flagged users' messages on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use parking_lot::Mutex;

use super::feed::OnApplied;
use super::presence::RegionalPresence;
use super::snapshot::{RemoteSession, Snapshot};
use crate::cause::Report;
use crate::envelope::{Destination, Envelope};
use crate::groups::Directory;
use crate::offline::OfflineStore;
use crate::presence::cache::CachedPresence;
use crate::telemetry;
use crate::topology::{GatewayId, UserId};
use crate::transport::{Incoming, Subscription};

/// The header counting how often a message was routed again.
pub const HOPS_HEADER: &str = "sy-reresolved";
/// Re-routes before a misrouted message goes to the offline store.
pub const MAX_HOPS: u32 = 2;
/// A sender that looked the user up just before their snapshot was applied
/// may store a message offline just after the hand-over read the queue:
/// the queue is read once more this much later.
const RECHECK: Duration = Duration::from_secs(1);

/// How a message routed again went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resent {
    /// Every target confirmed it.
    Forwarded,
    /// Taken, fire-and-forget (low priority), as the sender asked.
    Unconfirmed,
    /// Nobody online (or every transport failed): in the offline store.
    Offline,
    /// Neither sent nor stored.
    Failed,
}

impl Resent {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Resent::Forwarded => "forwarded",
            Resent::Unconfirmed => "unconfirmed",
            Resent::Offline => "offline",
            Resent::Failed => "failed",
        }
    }
}

/// Routes a message again from some gateway: a router that does not keep
/// its gateway alive (the router implements it; `None` once it is gone).
pub trait Resend: Send + Sync {
    /// Sends `envelope` as a new send from this gateway would.
    fn resend(&self, envelope: Envelope) -> BoxFuture<'static, Option<Resent>>;
}

/// The routers of this process, for sending on what arrived or was stored
/// for users who are elsewhere now.
#[derive(Default)]
pub struct Forwarder {
    routers: Mutex<Vec<Arc<dyn Resend>>>,
    /// Gateways of other regions seen in applied snapshots: whose flags
    /// the sweep reads. Grows with the fleet (one id per remote gateway).
    remote: Mutex<HashSet<GatewayId>>,
}

impl Forwarder {
    /// Remembers a router (without keeping it alive).
    fn attach(&self, router: Arc<dyn Resend>) {
        self.routers.lock().push(router);
    }

    /// Routes `envelope` again from the first router still up (routers
    /// that are gone are forgotten).
    async fn resend(&self, envelope: Envelope) -> Resent {
        loop {
            let Some(router) = self.routers.lock().first().cloned() else {
                return Resent::Failed;
            };
            match router.resend(envelope.clone()).await {
                Some(resent) => return resent,
                None => self.routers.lock().retain(|r| !Arc::ptr_eq(r, &router)),
            }
        }
    }
}

/// Every `every`, hands over the messages of users flagged for remote
/// gateways. Abort the returned task to stop it.
pub(super) fn sweep(
    offline: Arc<dyn OfflineStore>,
    forwarder: Arc<Forwarder>,
    every: Duration,
    limit: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let gateways: Vec<GatewayId> = forwarder.remote.lock().iter().cloned().collect();
            for gateway in gateways {
                match offline.take_flagged(&gateway).await {
                    Ok(users) => {
                        for user in users {
                            hand_over(&offline, &forwarder, &user, limit).await;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(err = %Report(&err), %gateway, "flagged offline messages not read")
                    }
                }
            }
        }
    })
}

/// The check in front of one gateway's subscriptions.
pub(crate) struct Guard {
    me: GatewayId,
    cache: Arc<CachedPresence>,
    presence: Arc<RegionalPresence>,
    offline: Arc<dyn OfflineStore>,
    forwarder: Arc<Forwarder>,
    router: std::sync::OnceLock<Arc<dyn Resend>>,
}

impl Guard {
    /// The guard of gateway `me`; inert until [`Guard::attach`].
    pub(super) fn new(
        me: GatewayId,
        cache: Arc<CachedPresence>,
        presence: Arc<RegionalPresence>,
        offline: Arc<dyn OfflineStore>,
        forwarder: Arc<Forwarder>,
    ) -> Arc<Self> {
        Arc::new(Self {
            me,
            cache,
            presence,
            offline,
            forwarder,
            router: std::sync::OnceLock::new(),
        })
    }

    /// The gateway this guard is in front of.
    pub(super) fn gateway(&self) -> &GatewayId {
        &self.me
    }

    /// The router that sends misrouted messages on (and this node's
    /// offline hand-overs).
    pub(crate) fn attach(&self, router: Arc<dyn Resend>) {
        let _ = self.router.set(router.clone());
        self.forwarder.attach(router);
    }

    /// `subscription` with every message for a user not on this gateway
    /// routed again instead of delivered.
    pub(crate) fn wrap(self: &Arc<Self>, subscription: Subscription) -> Subscription {
        let guard = self.clone();
        subscription.map_stream(move |stream| {
            stream
                .filter_map(move |incoming| {
                    let guard = guard.clone();
                    async move { guard.check(incoming).await }
                })
                .boxed()
        })
    }

    /// `Some` to deliver here, `None` when sent on (and acked).
    async fn check(&self, incoming: Incoming) -> Option<Incoming> {
        let Ok(envelope) = Envelope::decode(incoming.bytes.clone()) else {
            return Some(incoming); // the inbox rejects and counts it
        };
        let Destination::User(user) = &envelope.destination else {
            return Some(incoming);
        };
        if self.is_here(user).await {
            return Some(incoming);
        }
        let Some(router) = self.router.get() else {
            return Some(incoming); // not wired yet: deliver as addressed
        };
        let hops = envelope
            .headers
            .get(HOPS_HEADER)
            .and_then(|h| h.parse::<u32>().ok())
            .unwrap_or(0);
        let user = user.clone();
        let outcome = if hops >= MAX_HOPS {
            match self.offline.append(&user, &envelope).await {
                Ok(()) => Resent::Offline,
                Err(err) => {
                    tracing::warn!(err = %Report(&err), id = %envelope.id, "misrouted message not stored offline");
                    Resent::Failed
                }
            }
        } else {
            let mut envelope = envelope;
            envelope
                .headers
                .insert(HOPS_HEADER.into(), (hops + 1).to_string());
            // The router gone means the gateway is: deliver as addressed.
            router.resend(envelope).await.unwrap_or(Resent::Failed)
        };
        metrics::counter!(telemetry::RERESOLVED, "outcome" => outcome.as_str()).increment(1);
        if outcome == Resent::Failed {
            // Delivered here after all: the gateway may still know better,
            // and nothing is acked that was not sent on.
            return Some(incoming);
        }
        if let Some(ack) = incoming.ack {
            if let Err(err) = ack.ack().await {
                tracing::debug!(err = %Report(&err), "ack of a re-routed message failed");
            }
        }
        None
    }

    /// The user has a session on this gateway: the cache first, the
    /// region's store (authoritative for it) when the cache says no.
    async fn is_here(&self, user: &UserId) -> bool {
        let here =
            |sessions: &[crate::presence::Session]| sessions.iter().any(|s| s.gateway == self.me);
        match self.cache.locate_shared(user).await {
            Ok(sessions) if here(&sessions) => return true,
            Ok(_) => {}
            Err(_) => return true, // cannot tell: deliver as addressed
        }
        match self.presence.locate_local(user).await {
            Ok(sessions) => here(&sessions),
            Err(_) => true,
        }
    }
}

/// What follows an applied remote snapshot: this region's caches drop the
/// user, the user's groups count them on their new gateways, and a user
/// now online elsewhere gets what this region stored for them offline.
pub(super) fn on_applied(
    presence: Arc<RegionalPresence>,
    directory: Directory,
    offline: Arc<dyn OfflineStore>,
    forwarder: Arc<Forwarder>,
    limit: usize,
) -> OnApplied {
    Arc::new(move |snapshot: Snapshot, before: Vec<RemoteSession>| {
        let (presence, directory) = (presence.clone(), directory.clone());
        let (offline, forwarder) = (offline.clone(), forwarder.clone());
        let fut: BoxFuture<'static, ()> = Box::pin(async move {
            let user = &snapshot.user;
            let gateways = |sessions: &[RemoteSession]| {
                sessions
                    .iter()
                    .map(|s| s.gateway.clone())
                    .collect::<std::collections::BTreeSet<_>>()
            };
            let (old, new) = (gateways(&before), gateways(&snapshot.sessions));
            // Even unchanged: a node that restarted learns its sweep's
            // remote gateways again from re-synced snapshots.
            forwarder.remote.lock().extend(new.iter().cloned());
            if unchanged(&before, &snapshot.sessions) {
                return; // a re-sync: caches, counts and queues are right
            }
            if let Err(err) = presence.changed(user).await {
                tracing::warn!(err = %Report(&err), %user, "replicated change not announced; caches catch up at their TTL");
            }
            for (gateway, delta) in new
                .difference(&old)
                .map(|g| (g, 1))
                .chain(old.difference(&new).map(|g| (g, -1)))
            {
                if let Err(err) = directory.adjust_all(user, gateway, delta).await {
                    tracing::warn!(err = %Report(&err), %user, %gateway, "group distribution not adjusted");
                }
            }
            if !snapshot.sessions.is_empty() {
                let user = user.clone();
                tokio::spawn(async move {
                    hand_over(&offline, &forwarder, &user, limit).await;
                    tokio::time::sleep(RECHECK).await;
                    hand_over(&offline, &forwarder, &user, limit).await;
                });
            }
        });
        fut
    })
}

/// The same sessions (a device is in a snapshot once).
fn unchanged(before: &[RemoteSession], after: &[RemoteSession]) -> bool {
    before.len() == after.len() && after.iter().all(|s| before.contains(s))
}

/// Sends `user`'s offline messages of this region on to wherever they are
/// online now; each is removed once its send is confirmed (not when it
/// went back to the offline store: the user left again).
async fn hand_over(
    offline: &Arc<dyn OfflineStore>,
    forwarder: &Forwarder,
    user: &UserId,
    limit: usize,
) {
    let stored = match offline.read(user, limit).await {
        Ok(stored) => stored,
        Err(err) => {
            tracing::warn!(err = %Report(&err), %user, "offline messages not handed over");
            return;
        }
    };
    for envelope in stored {
        let id = envelope.id;
        let outcome = forwarder.resend(envelope).await;
        metrics::counter!(telemetry::OFFLINE_HANDED_OVER, "outcome" => outcome.as_str())
            .increment(1);
        if outcome == Resent::Forwarded {
            if let Err(err) = offline.ack(user, &[id]).await {
                tracing::warn!(err = %Report(&err), %user, %id, "handed-over message not removed; it may come twice");
            }
        }
    }
}
