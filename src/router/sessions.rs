//! A gateway's users coming and going, and the gateway staying alive:
//! sessions in presence, offline replay on connect, heartbeats.

use std::sync::Arc;
use std::time::Duration;

use crate::cause::Report;
use crate::envelope::now_micros;
use crate::error::StoreError;
use crate::inbox::replay::replay;
use crate::presence::{PresenceStore, Session};
use crate::telemetry;
use crate::topology::{DeviceId, GatewayInfo, UserId};

use super::{Inner, Router};

/// Heartbeats a gateway until dropped: see [`Router::keep_alive`].
#[must_use = "the heartbeats stop when this is dropped"]
pub struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    /// Runs `beat` now and then every `every` until dropped.
    pub fn spawn<F, Fut>(every: Duration, mut beat: F) -> Self
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

impl Router {
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

    async fn replay_offline(&self, user: UserId) -> Result<usize, StoreError> {
        let inner = &self.inner;
        replay(
            &inner.backends.offline,
            user,
            inner.replay_limit,
            &inner.local,
        )
        .await
    }

    /// A user's device disconnected from this gateway.
    pub async fn disconnect(
        &self,
        user: impl Into<UserId>,
        device: impl Into<DeviceId>,
    ) -> Result<(), StoreError> {
        let (user, device) = (user.into(), device.into());
        let directory = &self.inner.backends.directory;
        directory.offline(&user, &device).await.map(drop)
    }

    /// The same gateway at a new region or address (it re-attached from
    /// elsewhere): re-registers it and returns its router there. Transport
    /// addresses depend only on the gateway id, so the inbox, and every
    /// delivery it holds, stays with the new router.
    pub async fn moved(&self, to: GatewayInfo) -> Result<Router, StoreError> {
        self.inner.backends.registry.register(&to).await?;
        Ok(Router {
            inner: Arc::new(Inner::at(&self.inner, to)),
        })
    }

    /// The gateway is alive: refreshes its registration and its sessions'
    /// TTL, and replays the offline messages of hosted users that were
    /// stored while they were online (every transport to this gateway had
    /// failed), so they need not wait for the user's next connect.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let (backends, me) = (&self.inner.backends, &self.inner.me);
        backends.registry.register(me).await?;
        backends.presence.refresh(&me.id).await?;
        let online = backends.presence.hosted_users(&me.id).await?;
        metrics::gauge!(telemetry::ONLINE_USERS, "gateway" => me.id.to_string(), "region" => me.region.to_string())
            .set(online as f64);
        for user in backends.offline.take_flagged(&me.id).await? {
            self.replay_offline(user).await?;
        }
        Ok(())
    }

    /// Heartbeats every `every` (see [`crate::Settings::heartbeat_interval`])
    /// until the returned guard is dropped, so the gateway's registration
    /// and its users' sessions outlive their TTLs. A failed heartbeat is
    /// logged and tried again at the next tick.
    pub fn keep_alive(&self, every: Duration) -> KeepAlive {
        let router = self.clone();
        KeepAlive::spawn(every, move || {
            let router = router.clone();
            async move {
                if let Err(err) = router.heartbeat().await {
                    tracing::warn!(gateway = %router.gateway().id, err = %Report(&err), "heartbeat failed");
                }
            }
        })
    }
}
