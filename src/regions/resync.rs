//! The periodic re-sync: every user on this node's gateways snapshotted
//! again, so a snapshot that never reached the other regions is repaired.
//!
//! A snapshot is produced when a user's sessions change. One that is lost
//! (the node crashed with the user marked and not yet produced, a region's
//! replica was wiped) would leave the other regions stale until the user's
//! next change. So every `regions.resync_interval` each node marks again
//! every user indexed on the gateways attached to it, a page at a time,
//! the pages spread over the period: a node with a million users marks
//! about 3,300 a second at 5 minutes, never a million at once. A gateway is
//! attached to one node, so a region re-syncs each of its users about once
//! per period, however many nodes it has.
//!
//! Marking goes through the publisher like any change: the snapshot is
//! taken when it is produced, with a version newer than any before, so a
//! re-sync describes the current state and can never bring back an older
//! one (a late one loses to a newer version where it is applied). Remote
//! regions skip the effects of a snapshot that changes nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::presence::RegionalPresence;
use super::reresolve::Guard;
use crate::cause::Report;
use crate::presence::PresenceStore;
use crate::telemetry;
use crate::topology::GatewayId;

/// Users asked of the region's Redis at once (a hint to `SSCAN`).
const PAGE: usize = 256;

/// The gateways attached to this node, as long as they are.
#[derive(Default)]
pub(super) struct Hosted {
    guards: Mutex<Vec<Weak<Guard>>>,
}

impl Hosted {
    /// Re-syncs `guard`'s gateway until the guard (the gateway) is gone.
    pub(super) fn add(&self, guard: &Arc<Guard>) {
        self.guards.lock().push(Arc::downgrade(guard));
    }

    /// The gateways still attached (those gone are forgotten), each
    /// once each, however often they re-attached.
    fn gateways(&self) -> BTreeSet<GatewayId> {
        let mut guards = self.guards.lock();
        guards.retain(|g| g.strong_count() > 0);
        guards
            .iter()
            .filter_map(Weak::upgrade)
            .map(|g| g.gateway().clone())
            .collect()
    }
}

/// Starts the re-sync, a pass every `every` (the first one `every` after
/// the start: gateways attach meanwhile). Abort the returned task to stop.
pub(super) fn start(
    hosted: Arc<Hosted>,
    presence: Arc<RegionalPresence>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + every;
        let mut tick = tokio::time::interval_at(start, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            pass(&hosted, &presence, every).await;
        }
    })
}

/// Marks every user of every hosted gateway once, paced so the pass takes
/// about `every`.
async fn pass(hosted: &Hosted, presence: &RegionalPresence, every: Duration) {
    let gateways = hosted.gateways();
    let mut total = 0u64;
    for gateway in &gateways {
        match presence.hosted_users(gateway).await {
            Ok(n) => total += n,
            Err(err) => {
                tracing::warn!(err = %Report(&err), %gateway, "presence re-sync: users not counted")
            }
        }
    }
    let per_user = every.div_f64(total.max(1) as f64);
    let replica = presence.replica();
    for gateway in &gateways {
        let mut cursor = 0;
        loop {
            let (next, users) = match replica.users_on(gateway, cursor, PAGE).await {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(err = %Report(&err), %gateway, "presence re-sync: gateway skipped this time");
                    break;
                }
            };
            for user in &users {
                presence.mark(user);
            }
            metrics::counter!(telemetry::PRESENCE_RESYNCED).increment(users.len() as u64);
            tokio::time::sleep(per_user.mul_f64(users.len() as f64)).await;
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}
