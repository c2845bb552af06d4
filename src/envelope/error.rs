//! [`EnvelopeError`]: what is wrong with an envelope.

use super::{compression, MessageId, MAX_CLOCK_SKEW};
use crate::topology::IdError;

/// What is wrong with an envelope, named precisely enough to fix it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvelopeError {
    /// No recipient user or group.
    #[error("envelope {id} has no recipient (set a user or a group)")]
    MissingRecipient {
        /// The message id.
        id: MessageId,
    },
    /// A required identifier is empty.
    #[error("envelope {id}: field `{field}` is empty")]
    EmptyField {
        /// The message id.
        id: MessageId,
        /// The empty field's name.
        field: &'static str,
    },
    /// An identifier from the wire breaks its rule (see [`crate::topology`]).
    #[error("envelope {id}: bad identifier")]
    BadId {
        /// The message id.
        id: MessageId,
        /// Which field and rule.
        source: IdError,
    },
    /// The payload and headers are over the configured limit.
    #[error(
        "envelope {id}: payload and headers are {size} bytes, over the limit of {limit} bytes"
    )]
    PayloadTooLarge {
        /// The message id.
        id: MessageId,
        /// The payload and headers (keys and values) in bytes.
        size: usize,
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The time to live ran out before the message could be routed.
    #[error("envelope {id} expired {late_ms} ms ago (ttl {ttl_ms} ms)")]
    Expired {
        /// The message id.
        id: MessageId,
        /// The time to live in milliseconds.
        ttl_ms: u64,
        /// How long ago it expired, in milliseconds.
        late_ms: u64,
    },
    /// Created further in the future than clock skew explains; its TTL
    /// and the offline store's age trimming would never apply.
    #[error("envelope {id}: created_at is {ahead_ms} ms in the future (more than the {MAX_CLOCK_SKEW:?} allowed for clock skew)")]
    FromTheFuture {
        /// The message id.
        id: MessageId,
        /// How far ahead of this node's clock, in milliseconds.
        ahead_ms: u64,
    },
    /// The message id is not 16 bytes.
    #[error("message id must be 16 bytes, got {len}")]
    BadMessageId {
        /// The length received.
        len: usize,
    },
    /// The bytes are not an envelope at all.
    #[error("malformed envelope bytes: {0}")]
    Malformed(String),
    /// A compressed envelope whose body does not open.
    #[error("envelope {id}: compressed body does not open")]
    Compression {
        /// The message id (from the outer envelope).
        id: MessageId,
        /// Why the body does not open.
        source: compression::CompressionError,
    },
}
