//! The send path, one room per step, in the order a message takes them:
//!
//! - [`plan`](self) (`plan.rs`): validate, block check, locate, decide;
//! - `batch.rs`: one batch per target gateway, runs in order, concurrently
//!   across gateways;
//! - `publish.rs`: the local inbox, or the decision's transports in order
//!   with the canary mirror and the handover wait;
//! - `stack.rs`: what wraps each transport (timeout, retry, canary
//!   feedback, metrics) as tower layers;
//! - `offline.rs`: the offline store for what nothing took, and the report
//!   (`report.rs`).
//!
//! `sessions.rs` holds the gateway's side of presence (connect with offline
//! replay, heartbeats), `explain.rs` the dry run, `builder.rs` the wiring.
//! A [`Router`] is one gateway's handle on switchyard.

mod batch;
mod builder;
mod explain;
mod offline;
mod plan;
mod publish;
mod report;
#[cfg(feature = "regions")]
mod resend;
mod sessions;
mod stack;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::backends::Backends;
use crate::envelope::Envelope;
use crate::error::{SendError, StoreError};
use crate::inbox::Handed;
use crate::policy::handover::Handover;
use crate::policy::live::LivePolicy;
use crate::presence::watch::PresenceWatch;
use crate::presence::{PresenceStore, Session};
use crate::topology::{GatewayInfo, GroupId, UserId};

pub use builder::RouterBuilder;
pub use explain::{explain, Explanation};
pub use report::{Outcome, SendReport, TargetReport};
pub use sessions::KeepAlive;

/// One gateway's handle: sends messages, manages its users' presence and
/// groups, and feeds its [`crate::Inbox`]. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    me: GatewayInfo,
    backends: Backends,
    policy: Arc<LivePolicy>,
    max_payload: usize,
    /// Offline messages replayed per connect: the store keeps no more.
    replay_limit: usize,
    /// The inbox's in-process input: local and offline deliveries.
    local: mpsc::Sender<Handed>,
    /// Last transport per target gateway, for order across a change.
    handover: Handover,
    /// Each enabled transport with its timeout, retry, feedback, metrics.
    stacks: stack::Stacks,
}

impl Inner {
    /// The same router state for the gateway `me` (moved), with its own
    /// handover.
    fn at(from: &Inner, me: GatewayInfo) -> Self {
        Self {
            me,
            backends: from.backends.clone(),
            policy: from.policy.clone(),
            max_payload: from.max_payload,
            replay_limit: from.replay_limit,
            local: from.local.clone(),
            handover: Handover::default(),
            stacks: from.stacks.clone(),
        }
    }
}

impl Router {
    /// A builder for the gateway `gateway`, on the embedded default settings.
    pub fn builder(gateway: GatewayInfo) -> RouterBuilder {
        RouterBuilder::new(gateway)
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

    /// What `send` would do with this message, without sending it.
    pub async fn explain(&self, envelope: Envelope) -> Result<Explanation, SendError> {
        let inner = &self.inner;
        explain(
            &inner.me,
            &inner.backends,
            &inner.policy,
            inner.max_payload,
            envelope,
        )
        .await
    }

    /// The live sessions of each of `users`, in order (a friend list's
    /// online dots): cached where the cache holds them, the rest looked up
    /// concurrently.
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Vec<Session>>, StoreError> {
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
        self.inner.backends.directory.join(&group, &user).await
    }

    /// Removes a user from a group.
    pub async fn leave(
        &self,
        group: impl Into<GroupId>,
        user: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (group, user) = (group.into(), user.into());
        self.inner.backends.directory.leave(&group, &user).await
    }

    /// `user` stops receiving messages from `blocked`.
    pub async fn block(
        &self,
        user: impl Into<UserId>,
        blocked: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (user, blocked) = (user.into(), blocked.into());
        self.inner.backends.blocks.block(&user, &blocked).await
    }

    /// Undoes [`Router::block`].
    pub async fn unblock(
        &self,
        user: impl Into<UserId>,
        blocked: impl Into<UserId>,
    ) -> Result<(), StoreError> {
        let (user, blocked) = (user.into(), blocked.into());
        self.inner.backends.blocks.unblock(&user, &blocked).await
    }
}
