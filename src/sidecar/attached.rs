//! The gateways attached to this sidecar: each one's router, its parked
//! inbox between streams, idle eviction, and the list the Admin API shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Shared;
use crate::cause::Report;
use crate::inbox::Inbox;
use crate::presence::PresenceStore;
use crate::proto;
use crate::router::Router;
use crate::telemetry;
use crate::topology::{GatewayId, GatewayInfo};

/// A gateway attached to this sidecar.
pub(crate) struct Attached {
    pub(crate) router: Router,
    /// The inbox, while no Attach stream holds it.
    pub(super) inbox: Arc<Mutex<Parked>>,
}

/// Where an inbox waits between Attach streams.
pub(super) struct Parked {
    pub(super) inbox: Option<Inbox>,
    /// When it was last put back (or made).
    pub(super) since: Instant,
}

impl Parked {
    pub(super) fn new(inbox: Inbox) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            inbox: Some(inbox),
            since: Instant::now(),
        }))
    }
}

impl Attached {
    /// Whether an Attach stream holds the inbox now.
    pub(crate) fn streaming(&self) -> bool {
        self.inbox.lock().inbox.is_none()
    }

    /// The inbox, unless an Attach stream still holds it.
    pub(crate) fn take_inbox(&self) -> Option<Inbox> {
        self.inbox.lock().inbox.take()
    }

    /// Whether no Attach stream has held the inbox for `idle`.
    pub(super) fn idle_for(&self, idle: Duration) -> bool {
        let parked = self.inbox.lock();
        parked.inbox.is_some() && parked.since.elapsed() >= idle
    }
}

/// Forgets gateways that have had no Attach stream for `idle` (by then
/// their registration and sessions have expired too), so gateway ids that
/// come and go do not grow the sidecar without bound. Each inbox is closed
/// as on shutdown: what the gateway acked is settled on the transports,
/// what it did not stays there for its next Attach.
pub(crate) async fn evict_idle(shared: &Shared, idle: Duration) -> usize {
    let evicted: Vec<(GatewayId, Attached)> = {
        let mut gateways = shared.gateways.lock().await;
        let ids: Vec<GatewayId> = gateways
            .iter()
            .filter(|(_, attached)| attached.idle_for(idle))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| gateways.remove(&id).map(|a| (id, a)))
            .collect()
    };
    let count = evicted.len();
    for (gateway, attached) in evicted {
        tracing::info!(%gateway, ?idle, "forgetting a gateway detached for too long");
        metrics::counter!(telemetry::GATEWAYS_EVICTED).increment(1);
        if let Some(inbox) = attached.take_inbox() {
            inbox.close().await;
        }
    }
    count
}

/// The gateways attached here, for the Admin API, with their online
/// counts (0 when the presence store cannot be asked now).
pub(crate) async fn attached(shared: &Shared) -> Vec<proto::AttachedGateway> {
    let attached: Vec<(GatewayInfo, bool)> = {
        let gateways = shared.gateways.lock().await;
        gateways
            .values()
            .map(|a| (a.router.gateway().clone(), a.streaming()))
            .collect()
    };
    let mut list = Vec::with_capacity(attached.len());
    for (info, streaming) in attached {
        let online_users = match shared.backends.presence.hosted_users(&info.id).await {
            Ok(count) => count,
            Err(err) => {
                tracing::debug!(err = %Report(&err), "online count unavailable");
                0
            }
        };
        list.push(proto::AttachedGateway {
            gateway_id: info.id.to_string(),
            region: info.region.to_string(),
            address: info.address,
            streaming,
            online_users,
        });
    }
    list.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
    list
}
