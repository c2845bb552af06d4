//! Wiring a [`Router`]: settings, backends, policy, the subscriptions its
//! inbox reads, the publish stacks, and the gateway's registration.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::backends::{Backends, BuildError};
use crate::config::Settings;
use crate::inbox::{self, Inbox};
use crate::policy::handover::Handover;
use crate::policy::live::LivePolicy;
use crate::topology::GatewayInfo;
use crate::transport::{Transport, TransportKind};

use super::stack::Stacks;
use super::{Inner, Router};

/// Builds a [`Router`] and its [`Inbox`].
pub struct RouterBuilder {
    gateway: GatewayInfo,
    settings: Settings,
    backends: Option<Backends>,
    policy: Option<Arc<LivePolicy>>,
    added: Vec<Arc<dyn Transport>>,
}

impl RouterBuilder {
    pub(super) fn new(gateway: GatewayInfo) -> Self {
        Self {
            gateway,
            settings: Settings::default(),
            backends: None,
            policy: None,
            added: Vec::new(),
        }
    }

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
    /// canary); whoever made it watches it ([`LivePolicy::watch`]).
    /// Without it the router builds its own from the settings and watches
    /// that.
    pub fn policy(mut self, policy: Arc<LivePolicy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Adds a transport of the embedding crate's own, beside those the
    /// settings enable: the router subscribes to this gateway's address on
    /// it, and `[routing]` and `[canary]` may name it by its kind
    /// ([`TransportKind::named`](crate::TransportKind::named)), e.g.
    /// `routing.same_region = "sqs"`. It is held to the same contract as
    /// the built-in ones (`tests/it/conformance/mod.rs` runs the suite on one).
    /// Routers that share backends each take the same transport.
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.added.push(transport);
        self
    }

    /// Connects the backends, subscribes to this gateway's address on every
    /// enabled transport and registers the gateway.
    pub async fn build(self) -> Result<(Router, Inbox), BuildError> {
        let settings = self.settings;
        let added: Vec<TransportKind> = self.added.iter().map(|t| t.kind()).collect();
        settings.validate_with(&added)?;
        let policy = match self.policy {
            Some(policy) => policy,
            None => {
                let policy = settings.live_policy_with(&added)?;
                policy.watch();
                policy
            }
        };
        let mut backends = match self.backends {
            Some(backends) => backends,
            None => Backends::from_settings(&settings).await?,
        };
        for transport in self.added {
            backends.transports.insert(transport);
        }
        let mut subscriptions = Vec::new();
        #[cfg(feature = "regions")]
        let guard = backends.region_guard(&self.gateway)?;
        for transport in backends.transports.iter() {
            #[cfg_attr(not(feature = "regions"), allow(unused_mut))]
            let mut subscription = transport.subscribe(&self.gateway.id).await?;
            #[cfg(feature = "regions")]
            if let Some(guard) = &guard {
                subscription = guard.wrap(subscription);
            }
            subscriptions.push((transport.kind(), subscription));
        }
        let limits = &settings.limits;
        let (local, local_rx) = mpsc::channel(limits.inbox_queue);
        let inbox = inbox::spawn(
            subscriptions,
            local_rx,
            limits.dedupe_window,
            limits.inbox_queue,
            limits.inbox_bytes,
        );
        backends.registry.register(&self.gateway).await?;
        policy.observe(&backends.transports);
        let stacks = Stacks::new(&backends.transports, &settings.delivery, &policy);
        let router = Router {
            inner: Arc::new(Inner {
                me: self.gateway,
                backends,
                policy,
                max_payload: limits.max_payload_bytes,
                replay_limit: settings.offline.max_per_user,
                local,
                handover: Handover::default(),
                stacks,
            }),
        };
        #[cfg(feature = "regions")]
        if let Some(guard) = guard {
            guard.attach(router.resender());
        }
        Ok((router, inbox))
    }
}
