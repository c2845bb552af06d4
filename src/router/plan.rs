//! The first half of the send path, for one message: validate, block
//! check, locate the recipient, decide a route and transports per target
//! gateway. Nothing is sent here; `switchyard explain` stops after it.

use std::sync::Arc;

use bytes::Bytes;

use crate::backends::Backends;
use crate::envelope::{now_micros, Destination, Envelope};
use crate::error::{SendError, StoreError};
use crate::policy::quality::Quality;
use crate::policy::{Conditions, Decision, Policy};
use crate::presence::Session;
use crate::topology::{GatewayId, GatewayInfo, Region, UserId};
use crate::transport::Health;

/// A message ready to publish.
pub(super) struct Planned {
    pub envelope: Envelope,
    pub bytes: Bytes,
    pub targets: Vec<(GatewayId, Region, Decision)>,
    pub blocked: bool,
    pub found: Found,
}

/// Where the recipient was found.
pub(super) enum Found {
    Sessions(Arc<[Session]>),
    Distribution(Vec<(GatewayId, u64)>),
}

/// Validate, block check, locate, decide.
pub(super) async fn plan(
    me: &GatewayInfo,
    backends: &Backends,
    policy: &Policy,
    quality: &Quality,
    max_payload: usize,
    mut envelope: Envelope,
) -> Result<Planned, SendError> {
    let now = now_micros();
    if envelope.created_at_micros == 0 {
        envelope.created_at_micros = now;
    }
    envelope.validate(max_payload, now)?;
    let id = envelope.id;
    let store_err = |source| SendError::Store { id, source };
    let (blocked, found, gateways) = match &envelope.destination {
        Destination::User(user) => {
            if backends
                .blocks
                .is_blocked(user, &envelope.sender)
                .await
                .map_err(store_err)?
            {
                (true, Found::Sessions(Arc::from([])), Vec::new())
            } else {
                let (sessions, gateways) = locate_user(backends, user).await.map_err(store_err)?;
                (false, Found::Sessions(sessions), gateways)
            }
        }
        Destination::Group(group) => {
            let groups = backends.directory.groups();
            let distribution = groups.distribution(group).await.map_err(store_err)?;
            let gateways = regions_of(backends, &distribution)
                .await
                .map_err(store_err)?;
            (false, Found::Distribution(distribution), gateways)
        }
    };
    let recipient = match &envelope.destination {
        Destination::User(user) => Some(user),
        Destination::Group(_) => None,
    };
    let targets = decide(me, backends, policy, quality, gateways, recipient);
    Ok(Planned {
        bytes: envelope.encode(),
        envelope,
        targets,
        blocked,
        found,
    })
}

/// A user's sessions, and one target per gateway hosting them, in gateway
/// order (a user has few sessions, so a sorted Vec beats a set).
async fn locate_user(
    backends: &Backends,
    user: &UserId,
) -> Result<(Arc<[Session]>, Vec<(GatewayId, Region)>), StoreError> {
    let sessions = backends.presence.locate_shared(user).await?;
    let mut gateways: Vec<(GatewayId, Region)> = sessions
        .iter()
        .map(|s| (s.gateway.clone(), s.region.clone()))
        .collect();
    gateways.sort_unstable();
    gateways.dedup();
    Ok((sessions, gateways))
}

/// The region of each gateway of a group's distribution.
async fn regions_of(
    backends: &Backends,
    distribution: &[(GatewayId, u64)],
) -> Result<Vec<(GatewayId, Region)>, StoreError> {
    let mut gateways = Vec::with_capacity(distribution.len());
    for (gateway, _) in distribution {
        let region = match backends.registry.get(gateway).await? {
            Some(info) => info.region,
            // Not registered (dying?): any other region takes the durable route.
            None => Region::unregistered(),
        };
        gateways.push((gateway.clone(), region));
    }
    Ok(gateways)
}

/// The route and transport order per target: the policy's rules and
/// their quality verdicts, a hot pair's direct link while its transport is up.
fn decide(
    me: &GatewayInfo,
    backends: &Backends,
    policy: &Policy,
    quality: &Quality,
    gateways: Vec<(GatewayId, Region)>,
    recipient: Option<&UserId>,
) -> Vec<(GatewayId, Region, Decision)> {
    let transports = &backends.transports;
    let is_up = |kind| transports.get(kind).is_ok_and(|t| t.health() == Health::Up);
    let now = Conditions {
        is_up: &is_up,
        quality,
    };
    gateways
        .into_iter()
        .map(|(gateway, region)| {
            let decision = backends
                .hot_pairs
                .decide(policy, me, &gateway, &region, recipient, now);
            (gateway, region, decision)
        })
        .collect()
}
