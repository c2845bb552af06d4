//! The Admin API: what the sidecar runs and how it routes, a reload, and
//! the canary's status, share and rollback.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{attached, dead_letters, reload, Shared};
use crate::policy::canary::{CanaryMode, CanaryUnit};
use crate::policy::live::{LivePolicy, Rollback};
use crate::proto::{self, admin_server::Admin};
use crate::transport::Health;

/// The Admin service.
pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn state(
        &self,
        _: Request<proto::StateRequest>,
    ) -> Result<Response<proto::StateResponse>, Status> {
        Ok(Response::new(state(&self.shared).await))
    }

    async fn canary_status(
        &self,
        _: Request<proto::CanaryStatusRequest>,
    ) -> Result<Response<proto::CanaryStatusResponse>, Status> {
        Ok(Response::new(proto::CanaryStatusResponse {
            canary: canary_state(&self.shared.policy),
        }))
    }

    async fn set_canary_share(
        &self,
        request: Request<proto::SetCanaryShareRequest>,
    ) -> Result<Response<proto::SetCanaryShareResponse>, Status> {
        let share = request.into_inner().share;
        let new = u8::try_from(share)
            .ok()
            .filter(|s| *s <= 100)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "canary share {share} is not a percentage (0-100)"
                ))
            })?;
        let old = self.shared.policy.set_share(new).ok_or_else(no_canary)?;
        tracing::info!(old, new, "canary share set through the admin API");
        Ok(Response::new(proto::SetCanaryShareResponse {
            old_share: u32::from(old),
            new_share: u32::from(new),
        }))
    }

    async fn rollback_canary(
        &self,
        request: Request<proto::RollbackCanaryRequest>,
    ) -> Result<Response<proto::RollbackCanaryResponse>, Status> {
        let reason = match request.into_inner().reason {
            r if r.trim().is_empty() => "operator rollback (no reason given)".to_string(),
            r => format!("operator: {r}"),
        };
        let rollback = self.shared.policy.roll_back(reason).ok_or_else(no_canary)?;
        tracing::warn!(old = rollback.from_share, reason = %rollback.reason, "canary rolled back to 0% through the admin API");
        Ok(Response::new(proto::RollbackCanaryResponse {
            old_share: u32::from(rollback.from_share),
        }))
    }

    async fn dead_letters(
        &self,
        request: Request<proto::DeadLettersRequest>,
    ) -> Result<Response<proto::DeadLettersResponse>, Status> {
        let proto::DeadLettersRequest { user, limit } = request.into_inner();
        Ok(Response::new(
            dead_letters::list(&self.shared.backends, &user, limit).await?,
        ))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<proto::ReplayDeadLettersRequest>,
    ) -> Result<Response<proto::ReplayDeadLettersResponse>, Status> {
        let proto::ReplayDeadLettersRequest { user, message_ids } = request.into_inner();
        Ok(Response::new(
            dead_letters::replay(&self.shared.backends, &user, &message_ids).await?,
        ))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<proto::PurgeDeadLettersRequest>,
    ) -> Result<Response<proto::PurgeDeadLettersResponse>, Status> {
        let proto::PurgeDeadLettersRequest { user, message_ids } = request.into_inner();
        Ok(Response::new(
            dead_letters::purge(&self.shared.backends, &user, &message_ids).await?,
        ))
    }

    async fn reload(
        &self,
        _: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        let report = reload::reload(&self.shared).await;
        Ok(Response::new(proto::ReloadResponse {
            applied: report.applied,
            problems: report
                .problems
                .into_iter()
                .map(|p| proto::ConfigProblem {
                    key: p.key,
                    reason: p.reason,
                })
                .collect(),
            restart_required: report.restart_required,
        }))
    }
}

/// The sidecar's state, as `State` answers it (and the status page shows it).
pub(crate) async fn state(shared: &Shared) -> proto::StateResponse {
    let settings = shared.settings.load();
    let transports = shared
        .backends
        .transports
        .iter()
        .map(|t| {
            let (up, reason) = match t.health() {
                Health::Up => (true, String::new()),
                Health::Down(reason) => (false, reason),
            };
            proto::TransportState {
                kind: t.kind().to_string(),
                up,
                reason,
            }
        })
        .collect();
    let hot = &shared.backends.hot_pairs;
    let thresholds = hot.config();
    let (promote, demote) = if hot.enabled() {
        (thresholds.promote_per_second, thresholds.demote_per_second)
    } else {
        (0.0, 0.0)
    };
    let routing = proto::RoutingTable {
        same_region: settings.routing.same_region.clone(),
        cross_region: settings.routing.cross_region.clone(),
        fallbacks: settings.routing.fallbacks.clone(),
        hot_pair_promote_per_second: promote,
        hot_pair_demote_per_second: demote,
    };
    let hot_pairs = hot
        .hot()
        .into_iter()
        .map(|p| proto::HotPair {
            from_gateway: p.from.to_string(),
            to_gateway: p.to.to_string(),
            per_second: p.per_second,
        })
        .collect();
    proto::StateResponse {
        transports,
        routing: Some(routing),
        hot_pairs,
        gateways: attached::attached(shared).await,
        config_path: shared
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        canary: canary_state(&shared.policy),
        route_quality: shared
            .policy
            .route_quality()
            .into_iter()
            .map(|q| {
                let (to, since, why) = q
                    .degraded
                    .map(|(to, since, why)| (to.to_string(), since, why))
                    .unwrap_or_default();
                proto::RouteQuality {
                    route: q.route.to_string(),
                    region: q.region.to_string(),
                    transport: q.prefer.to_string(),
                    p99_micros: q.stats.p99.as_micros() as u64,
                    published: q.stats.published,
                    failed: q.stats.failed,
                    degraded_to: to,
                    degraded_reason: why,
                    degraded_for_millis: since.as_millis() as u64,
                    changes: q.changes,
                }
            })
            .collect(),
    }
}

fn no_canary() -> Status {
    Status::failed_precondition("no canary is configured (add a [canary] section and reload)")
}

/// The canary in force with its limits, last rollback and window figures.
fn canary_state(policy: &LivePolicy) -> Option<proto::CanaryState> {
    let current = policy.load();
    let canary = current.canary.as_ref()?;
    let rollback = current.rollback.as_ref().map(|r| proto::RollbackLimits {
        enabled: r.enabled,
        window_ms: r.window.as_millis() as u64,
        max_error_rate: r.max_error_rate,
        max_p99_ms: r.max_p99.as_secs_f64() * 1000.0,
        min_samples: r.min_samples,
        max_down_ms: r.max_down.as_millis() as u64,
    });
    let stats = policy.canary_stats();
    Some(proto::CanaryState {
        from: canary.from.to_string(),
        to: canary.to.to_string(),
        share: u32::from(canary.share),
        unit: match canary.unit {
            CanaryUnit::Gateway => "gateway",
            CanaryUnit::User => "user",
        }
        .into(),
        mode: match canary.mode {
            CanaryMode::Dual => "dual",
            CanaryMode::Switch => "switch",
        }
        .into(),
        rollback,
        last_rollback: policy
            .last_rollback()
            .map(|r: Rollback| proto::CanaryRollback {
                from_share: u32::from(r.from_share),
                reason: r.reason,
                at_unix_secs: r.at_unix_secs,
            }),
        canary_stats: Some(proto::CohortStats {
            published: stats.published,
            failed: stats.failed,
            delivered: stats.confirmed,
            p99_ms: stats.p99.as_secs_f64() * 1000.0,
        }),
    })
}
