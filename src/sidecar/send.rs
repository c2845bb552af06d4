//! Sends as the Gateway API takes them: envelopes from the wire, checked
//! to come from the calling gateway, routed, and each report turned into a
//! `SendOutcome` (delivered, via, confirmed, stored offline, or rejected).

use tonic::Status;

use super::auth::hosted;
use crate::cause::Report;
use crate::envelope::{Envelope, MessageId};
use crate::error::{SendError, StoreError};
use crate::offline::OfflineReason;
use crate::policy::Route;
use crate::proto;
use crate::router::{Outcome, Router, SendReport};
use crate::topology::{GatewayId, UserId};

pub(crate) fn prepare(
    gateway: &GatewayId,
    mut wire: proto::Envelope,
) -> Result<Result<Envelope, (Vec<u8>, String)>, Status> {
    if wire.id.is_empty() {
        wire.id = MessageId::new().to_bytes().to_vec();
    }
    if wire.sender_gateway.is_empty() {
        wire.sender_gateway = gateway.to_string();
    } else if wire.sender_gateway != gateway.as_str() {
        return Err(Status::permission_denied(format!(
            "gateway {gateway:?} cannot send as gateway {:?}",
            wire.sender_gateway
        )));
    }
    let id = wire.id.clone();
    Ok(Envelope::from_wire(wire).map_err(|e| (id, Report(&e).to_string())))
}

pub(super) fn route(route: Route) -> proto::Route {
    match route {
        Route::Local => proto::Route::Local,
        Route::SameRegion => proto::Route::SameRegion,
        Route::CrossRegion => proto::Route::CrossRegion,
    }
}

pub(super) fn outcome(id: MessageId, result: Result<SendReport, SendError>) -> proto::SendOutcome {
    use proto::send_outcome::Result as R;
    let result = match result {
        Ok(SendReport {
            outcome: Outcome::Blocked,
            ..
        }) => R::Blocked(proto::Blocked {}),
        Ok(SendReport {
            outcome:
                Outcome::Routed {
                    targets,
                    stored_offline,
                },
            ..
        }) => {
            let targets = targets
                .into_iter()
                .map(|t| {
                    let (delivered, via, error) = match t.result {
                        Ok(via) => (true, via.to_string(), String::new()),
                        Err(error) => (false, String::new(), error.to_string()),
                    };
                    proto::TargetOutcome {
                        gateway: t.gateway.to_string(),
                        route: route(t.route) as i32,
                        delivered,
                        via,
                        error,
                        mirrored: t.mirrored.map(|k| k.to_string()).unwrap_or_default(),
                        confirmed: t.confirmed,
                    }
                })
                .collect();
            let stored_offline = match stored_offline {
                None => proto::OfflineReason::Unspecified,
                Some(OfflineReason::NoSession) => proto::OfflineReason::NoSession,
                Some(OfflineReason::TransportsFailed) => proto::OfflineReason::TransportsFailed,
            };
            let routed = proto::Routed {
                targets,
                stored_offline: stored_offline as i32,
            };
            R::Routed(routed)
        }
        Err(SendError::Invalid(err)) => R::Rejected(proto::Rejected {
            reason: Report(&err).to_string(),
        }),
        // Nobody to deliver to: retrying will not help until someone joins.
        Err(
            err @ SendError::Store {
                source: StoreError::UnknownGroup(_),
                ..
            },
        ) => R::Rejected(proto::Rejected {
            reason: Report(&err).to_string(),
        }),
        Err(err @ (SendError::Store { .. } | SendError::Undeliverable { .. })) => {
            R::Failed(proto::Failed {
                reason: Report(&err).to_string(),
            })
        }
    };
    proto::SendOutcome {
        id: id.to_bytes().to_vec(),
        result: Some(result),
    }
}

pub(super) fn rejected(id: Vec<u8>, reason: String) -> proto::SendOutcome {
    proto::SendOutcome {
        id,
        result: Some(proto::send_outcome::Result::Rejected(proto::Rejected {
            reason,
        })),
    }
}

/// Routes a batch: every sender is checked first (one foreign sender refuses
/// the whole batch, so nothing is half-sent), unparsable envelopes are
/// rejected one by one, the rest go out in one `send_batch`.
pub(super) async fn send_all(
    router: &Router,
    wires: Vec<proto::Envelope>,
) -> Result<Vec<proto::SendOutcome>, Status> {
    let me = router.gateway().id.clone();
    // Each request slot's id (or why it was rejected), and the valid
    // envelopes moved out in order for one `send_batch`.
    let mut slots = Vec::with_capacity(wires.len());
    let mut valid = Vec::with_capacity(wires.len());
    // A batch mostly comes from one user: check each sender once per run.
    let mut checked: Option<UserId> = None;
    for wire in wires {
        match prepare(&me, wire)? {
            Ok(envelope) => {
                if checked.as_ref() != Some(&envelope.sender) {
                    hosted(router, &envelope.sender).await?;
                    checked = Some(envelope.sender.clone());
                }
                slots.push(Ok(envelope.id));
                valid.push(envelope);
            }
            Err(rejected) => slots.push(Err(rejected)),
        }
    }
    let mut sent = router.send_batch(valid).await.into_iter();
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Ok(id) => match sent.next() {
                Some(result) => outcome(id, result),
                None => rejected(
                    id.to_bytes().to_vec(),
                    "internal: the router returned no outcome".into(),
                ),
            },
            Err((id, reason)) => rejected(id, reason),
        })
        .collect())
}
