//! The errors the library returns. Each names what failed and with which input.

use crate::cause::{Cause, Report};
use crate::envelope::{EnvelopeError, MessageId};
use crate::topology::GroupId;
use crate::transport::TransportError;

/// A state store (presence, groups, offline, blocks, registry) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached.
    #[error("{store} store: cannot reach {address}")]
    Unavailable {
        /// Which store (presence, groups, ...).
        store: &'static str,
        /// The backend address.
        address: String,
        /// Why.
        #[source]
        reason: Cause,
    },
    /// The backend answered with an error or with data we cannot read.
    #[error("{store} store: {operation} failed")]
    Backend {
        /// Which store.
        store: &'static str,
        /// What we asked for.
        operation: String,
        /// Why it failed.
        #[source]
        reason: Cause,
    },
    /// The group has no members (it was never joined, or everyone left).
    #[error("unknown group {0:?}")]
    UnknownGroup(GroupId),
}

/// Why the router refused or could not route a message.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The envelope itself is invalid; nothing was sent.
    #[error(transparent)]
    Invalid(#[from] EnvelopeError),
    /// A store the send reads before publishing (blocks, presence, group
    /// membership) failed: nothing was published, and the caller still
    /// owns the message and may retry it.
    #[error("message {id} not sent")]
    Store {
        /// The message.
        id: MessageId,
        /// What failed.
        source: StoreError,
    },
    /// Every transport failed and so did the offline store: the caller still
    /// owns the message and must retry it.
    #[error("message {id} could not be delivered nor stored offline: {}; transports: {}", Report(.offline), Joined(.transports))]
    Undeliverable {
        /// The message.
        id: MessageId,
        /// Why the offline store failed.
        offline: StoreError,
        /// Why each failed target gateway was not reached.
        transports: Vec<PublishError>,
    },
}

/// Why nothing took a run of messages to one target gateway.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The route's decision named no transport.
    #[error("no transport configured for this route")]
    NoTransport,
    /// This gateway's own inbox is closed (the local route).
    #[error("this gateway's inbox is closed")]
    InboxClosed,
    /// Every transport tried failed: their errors, in the order tried (a
    /// canary mirror's last).
    #[error("{}", Joined(.0))]
    Failed(Vec<TransportError>),
}

impl PublishError {
    /// The transport errors behind it (none for the other cases).
    pub fn transport_errors(&self) -> &[TransportError] {
        match self {
            PublishError::Failed(errors) => errors,
            PublishError::NoTransport | PublishError::InboxClosed => &[],
        }
    }
}

/// Displays a list of errors, each with its causes, joined with "; ": a
/// list has no one `source` to hold them.
struct Joined<'a, T>(&'a [T]);

impl<T: std::error::Error + 'static> std::fmt::Display for Joined<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}", Report(item))?;
        }
        Ok(())
    }
}
