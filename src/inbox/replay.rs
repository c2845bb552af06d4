//! Offline messages into the inbox: on connect, and when a heartbeat finds
//! messages stored while every transport to this gateway failed. Each stays
//! stored until the gateway acks its delivery, so a crash before then
//! replays it again.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::error::StoreError;
use crate::offline::{OfflineAck, OfflineStore};
use crate::topology::UserId;

use super::{Handed, Via};

/// Hands up to `limit` of `user`'s offline messages (oldest first) to the
/// inbox behind `local` in the background, as the gateway makes room;
/// returns how many.
pub(crate) async fn replay(
    offline: &Arc<dyn OfflineStore>,
    user: UserId,
    limit: usize,
    local: &mpsc::Sender<Handed>,
) -> Result<usize, StoreError> {
    let stored = offline.read(&user, limit).await?;
    let replayed = stored.len();
    let (offline, local) = (offline.clone(), local.clone());
    tokio::spawn(async move {
        for envelope in stored {
            let ack = OfflineAck::new(offline.clone(), user.clone(), envelope.id);
            let handed = Handed {
                via: Via::Offline,
                envelope,
                ack: Some(Box::new(ack)),
            };
            if local.send(handed).await.is_err() {
                // The inbox is gone; the rest stays stored.
                return;
            }
        }
    });
    Ok(replayed)
}
