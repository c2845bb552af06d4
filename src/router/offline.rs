//! The end of the send path: whatever no transport took (or a user with no
//! session) goes to the offline store, and each message gets its report.

use std::collections::BTreeSet;

use crate::envelope::{Destination, Envelope};
use crate::error::{SendError, StoreError};
use crate::offline::OfflineReason;
use crate::telemetry;
use crate::topology::{GatewayId, UserId};

use super::plan::Planned;
use super::report::{Outcome, SendReport, TargetReport};
use super::Router;

impl Router {
    /// Stores offline whatever could not be published, and builds the report.
    pub(super) async fn conclude(
        &self,
        plan: Planned,
        targets: Vec<TargetReport>,
    ) -> Result<SendReport, SendError> {
        let id = plan.envelope.id;
        if plan.blocked {
            telemetry::messages("none", "none", "blocked", 1);
            return Ok(SendReport {
                id,
                outcome: Outcome::Blocked,
            });
        }
        let failed: Vec<&TargetReport> = targets.iter().filter(|t| t.result.is_err()).collect();
        let reason = match (&plan.envelope.destination, targets.is_empty()) {
            (Destination::User(_), true) => Some(OfflineReason::NoSession),
            _ if !failed.is_empty() => Some(OfflineReason::TransportsFailed),
            _ => None,
        };
        if let Some(reason) = reason {
            let failed_gateways: BTreeSet<&GatewayId> = failed.iter().map(|t| &t.gateway).collect();
            self.store_offline(&plan.envelope, &failed_gateways, reason)
                .await
                .map_err(|offline| SendError::Undeliverable {
                    id,
                    offline,
                    transports: failed
                        .iter()
                        .filter_map(|t| t.result.as_ref().err().cloned())
                        .collect(),
                })?;
        }
        Ok(SendReport {
            id,
            outcome: Outcome::Routed {
                targets,
                stored_offline: reason,
            },
        })
    }

    /// A user message is stored for its recipient; a group message for each
    /// member hosted on a gateway every transport failed to reach.
    async fn store_offline(
        &self,
        envelope: &Envelope,
        failed: &BTreeSet<&GatewayId>,
        reason: OfflineReason,
    ) -> Result<(), StoreError> {
        let backends = &self.inner.backends;
        // Each recipient, with the failed gateways it has a session on.
        let recipients: Vec<(UserId, Vec<GatewayId>)> = match &envelope.destination {
            Destination::User(user) => {
                vec![(user.clone(), failed.iter().map(|g| (*g).clone()).collect())]
            }
            Destination::Group(group) => {
                let mut stranded = Vec::new();
                for member in backends.directory.groups().members(group).await? {
                    let sessions = backends.presence.locate_shared(&member).await?;
                    let on: Vec<GatewayId> = sessions
                        .iter()
                        .filter(|s| failed.contains(&s.gateway))
                        .map(|s| s.gateway.clone())
                        .collect();
                    if !on.is_empty() {
                        stranded.push((member, on));
                    }
                }
                stranded
            }
        };
        for (user, gateways) in &recipients {
            backends.offline.append(user, envelope).await?;
            metrics::counter!(telemetry::OFFLINE_STORED, "reason" => reason.as_str()).increment(1);
            // Online there: that gateway's next heartbeat replays it.
            for gateway in gateways {
                backends.offline.flag(gateway, user).await?;
            }
        }
        Ok(())
    }
}
