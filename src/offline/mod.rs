//! Messages for users with no live session, kept until they come back.
//! Per user, bounded by count and age; replayed oldest first on attach and
//! removed when the gateway acknowledges them.

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, MessageId};
use crate::error::StoreError;
use crate::topology::{GatewayId, UserId};
use crate::transport::{Acknowledge, TransportError};

/// Why a message went to the offline store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfflineReason {
    /// The recipient had no live session.
    NoSession,
    /// Every transport to one of the recipient's gateways failed.
    TransportsFailed,
}

impl OfflineReason {
    /// The name used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::NoSession => "no_session",
            OfflineReason::TransportsFailed => "transports_failed",
        }
    }
}

/// Per-user offline queues.
#[async_trait]
pub trait OfflineStore: Send + Sync + 'static {
    /// Appends a message to a user's queue, trimming the oldest past the cap.
    async fn append(&self, user: &UserId, envelope: &Envelope) -> Result<(), StoreError>;
    /// Up to `limit` messages, oldest first, without removing them.
    async fn read(&self, user: &UserId, limit: usize) -> Result<Vec<Envelope>, StoreError>;
    /// Removes acknowledged messages; returns how many were removed.
    async fn ack(&self, user: &UserId, ids: &[MessageId]) -> Result<usize, StoreError>;
    /// Messages waiting for a user.
    async fn depth(&self, user: &UserId) -> Result<usize, StoreError>;
    /// Records that `user`, who has a session on `gateway`, has messages
    /// waiting although online (every transport to that gateway failed), so
    /// the gateway replays them without waiting for the user's next connect.
    async fn flag(&self, gateway: &GatewayId, user: &UserId) -> Result<(), StoreError>;
    /// Takes (and clears) the users flagged for `gateway`.
    async fn take_flagged(&self, gateway: &GatewayId) -> Result<Vec<UserId>, StoreError>;
    /// Records that delivering a stored message failed. After
    /// `max_deliveries` failures the message moves from the user's queue to
    /// their dead-letter queue with `reason`; returns true when it moved.
    async fn delivery_failed(
        &self,
        user: &UserId,
        id: MessageId,
        reason: &str,
    ) -> Result<bool, StoreError>;
    /// Dead-lettered messages with their reasons, oldest first.
    async fn dead_letters(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<(Envelope, String)>, StoreError>;
}

/// Removes one replayed message from its user's queue once the gateway
/// acked its delivery (the inbox's transport ack for offline deliveries).
pub struct OfflineAck {
    store: Arc<dyn OfflineStore>,
    user: UserId,
    id: MessageId,
}

impl OfflineAck {
    /// The ack of message `id` replayed to `user`.
    pub fn new(store: Arc<dyn OfflineStore>, user: UserId, id: MessageId) -> Self {
        Self { store, user, id }
    }
}

#[async_trait]
impl Acknowledge for OfflineAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.store
            .ack(&self.user, &[self.id])
            .await
            .map(drop)
            .map_err(|e| TransportError::OfflineAck {
                user: self.user.clone(),
                reason: format!("remove message {}: {e}", self.id),
            })
    }
}

/// `[offline]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineConfig {
    /// Messages kept per user; older ones are trimmed (and counted).
    pub max_per_user: usize,
    /// Messages older than this are trimmed.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Failed deliveries of one message before it is dead-lettered.
    pub max_deliveries: u32,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            max_per_user: 1000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_deliveries: 5,
        }
    }
}
