//! What an operator does with dead letters (the Admin API and
//! `switchyard dead-letters`): replay puts them back on the normal path,
//! purge deletes them. Listing and inspecting are the store's
//! [`OfflineStore::dead_letter_users`] and
//! [`OfflineStore::dead_letter_entries`].

use super::{Letters, OfflineStore};
use crate::backends::Backends;
use crate::error::StoreError;
use crate::telemetry;
use crate::topology::{GatewayId, UserId};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters moved back to the user's offline queue.
    pub restored: usize,
    /// Gateways the user is online on, flagged so their next heartbeat
    /// replays the queue (a user who is offline gets it on connect).
    pub flagged: Vec<GatewayId>,
}

/// Moves `which` of `user`'s dead letters back to their offline queue
/// (failure counts reset), then flags every gateway the user is online on:
/// each replays them at its next heartbeat, to the gateway's inbox, removed
/// once acked, as any stored message. Unreadable letters stay where they are.
pub async fn replay(
    backends: &Backends,
    user: &UserId,
    which: Letters<'_>,
) -> Result<Replayed, StoreError> {
    let restored = backends.offline.restore_dead_letters(user, which).await?;
    let mut flagged = Vec::new();
    if restored > 0 {
        metrics::counter!(telemetry::DEAD_LETTERS_REPLAYED).increment(restored as u64);
        for session in backends.presence.locate_shared(user).await?.iter() {
            if !flagged.contains(&session.gateway) {
                backends.offline.flag(&session.gateway, user).await?;
                flagged.push(session.gateway.clone());
            }
        }
    }
    tracing::info!(%user, restored, ?flagged, "dead letters replayed");
    Ok(Replayed { restored, flagged })
}

/// Deletes `which` of `user`'s dead letters; returns how many.
pub async fn purge(
    offline: &dyn OfflineStore,
    user: &UserId,
    which: Letters<'_>,
) -> Result<usize, StoreError> {
    let purged = offline.purge_dead_letters(user, which).await?;
    metrics::counter!(telemetry::DEAD_LETTERS_PURGED).increment(purged as u64);
    tracing::info!(%user, purged, "dead letters purged");
    Ok(purged)
}
