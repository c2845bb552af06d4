//! The errors the library returns. Each names what failed and with which input.

use crate::envelope::{EnvelopeError, MessageId};
use crate::topology::{GroupId, IdError};
use crate::transport::TransportError;

/// A state store (presence, groups, offline, blocks, registry) failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The backend cannot be reached.
    #[error("{store} store: cannot reach {address}: {reason}")]
    Unavailable {
        /// Which store (presence, groups, ...).
        store: &'static str,
        /// The backend address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The backend answered with an error or with data we cannot read.
    #[error("{store} store: {operation} failed: {reason}")]
    Backend {
        /// Which store.
        store: &'static str,
        /// What we asked for.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// The group has no members (it was never joined, or everyone left).
    #[error("unknown group {0:?}")]
    UnknownGroup(GroupId),
    /// An identifier breaks its rule; nothing was stored.
    #[error(transparent)]
    InvalidId(#[from] IdError),
}

/// Why the router refused or could not route a message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The envelope itself is invalid; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] EnvelopeError),
    /// A group message names a group that does not exist.
    #[error("message {id}: {source}")]
    Store {
        /// The message.
        id: MessageId,
        /// What failed.
        source: StoreError,
    },
    /// Every transport failed and so did the offline store: the caller still
    /// owns the message and must retry it.
    #[error("message {id} could not be delivered nor stored offline: {offline}; transports: {transports}")]
    Undeliverable {
        /// The message.
        id: MessageId,
        /// Why the offline store failed.
        offline: StoreError,
        /// The transport errors, joined.
        transports: String,
    },
}

/// Building a router or its backends failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A transport could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A store could not start.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gateway's id or region breaks the identifier rules.
    #[error("gateway: {0}")]
    Gateway(#[from] IdError),
}
