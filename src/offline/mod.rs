//! Messages for users with no live session, kept until they come back.
//! Per user, bounded by count and age; replayed oldest first on attach and
//! removed when the gateway acknowledges them.

pub mod dead_letters;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::cause::Cause;
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

/// Why a stored message was given up on and set aside as a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Its stored bytes do not decode: it would block the user's replay.
    Unreadable,
    /// Its delivery failed `offline.max_deliveries` times.
    MaxDeliveries,
}

impl DeadLetterReason {
    /// The name used in metrics, the Admin API and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Unreadable => "unreadable",
            DeadLetterReason::MaxDeliveries => "max_deliveries",
        }
    }

    /// The reason named `name`; entries written before reasons were named
    /// had none and were given up on after failed deliveries.
    pub fn parse(name: &str) -> Self {
        match name {
            "unreadable" => DeadLetterReason::Unreadable,
            _ => DeadLetterReason::MaxDeliveries,
        }
    }
}

/// One dead letter, as an operator inspects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message id as stored (text: an unreadable entry may hold anything).
    pub id: String,
    /// Why it was set aside.
    pub reason: DeadLetterReason,
    /// What failed, in words (the decode error, the delivery failure).
    pub detail: String,
    /// When it was set aside, microseconds since the Unix epoch.
    pub dead_at_micros: i64,
    /// The message; `None` when its bytes do not decode.
    pub envelope: Option<Envelope>,
}

/// Which of a user's dead letters an operation takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Letters<'a> {
    /// Every one.
    All,
    /// Those with these message ids.
    Ids(&'a [MessageId]),
}

impl Letters<'_> {
    fn takes(&self, id: &str) -> bool {
        match self {
            Letters::All => true,
            Letters::Ids(ids) => ids.iter().any(|m| m.to_string() == id),
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
    /// Users with dead letters and how many each holds, up to `limit`
    /// users, most recently dead-lettered first.
    async fn dead_letter_users(&self, limit: usize) -> Result<Vec<(UserId, usize)>, StoreError>;
    /// Up to `limit` of `user`'s dead letters, oldest first, unreadable
    /// ones included.
    async fn dead_letter_entries(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;
    /// Moves `which` of `user`'s readable dead letters back to the end of
    /// their offline queue, failure count reset, in one step (a crash
    /// leaves each in one place or the other); returns how many moved.
    async fn restore_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError>;
    /// Deletes `which` of `user`'s dead letters; returns how many.
    async fn purge_dead_letters(
        &self,
        user: &UserId,
        which: Letters<'_>,
    ) -> Result<usize, StoreError>;
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
                id: self.id,
                reason: Cause::new(e),
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
