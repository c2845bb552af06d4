//! Publishing runs of messages that share a decision, one run per target
//! gateway, all at once: this gateway's own inbox for the local route;
//! otherwise the decision's transports in order (each through its
//! [`super::stack`], every target in one call), with the canary mirror
//! alongside, after waiting out a handover when the primary changed.

use std::time::Instant;

use bytes::Bytes;

use crate::cause::Report;
use crate::envelope::Priority;
use crate::error::PublishError;
use crate::inbox::{Handed, Via};
use crate::policy::Decision;
use crate::telemetry;
use crate::topology::{GatewayId, Region};
use crate::transport::{Outgoing, TransportError, TransportKind};

use super::plan::Planned;
use super::stack::{self, Publish};
use super::Router;

/// How the publish of one run went.
pub(super) struct Sent {
    pub result: Result<Via, PublishError>,
    pub confirmed: bool,
    pub mirrored: Option<TransportKind>,
}

impl Router {
    /// Hands the run to this gateway's own inbox.
    pub(super) async fn deliver_locally(&self, plans: &[&Planned]) -> Sent {
        for plan in plans {
            let handed = Handed {
                via: Via::Local,
                envelope: plan.envelope.clone(),
                ack: None,
            };
            if self.inner.local.send(handed).await.is_err() {
                return Sent {
                    result: Err(PublishError::InboxClosed),
                    confirmed: false,
                    mirrored: None,
                };
            }
        }
        Sent {
            result: Ok(Via::Local),
            confirmed: true,
            mirrored: None,
        }
    }

    /// Tries the decision's transports in order (and its canary mirror
    /// alongside) for every target at once; a target's run is out once
    /// either path took it. After a change of primary it first waits out
    /// the handover (per-pair order). One [`Sent`] per target, in order.
    pub(super) async fn publish(
        &self,
        targets: &[Outgoing<'_>],
        regions: &[Region],
        decision: &Decision,
        priority: Priority,
    ) -> Vec<Sent> {
        let policy = self.inner.policy.load();
        let (quiet, mirror_wait) = (policy.handover, policy.mirror_wait);
        drop(policy);
        if let Some(&primary) = decision.transports.first() {
            // One wait for all: the longest any target needs (they all
            // changed primary together, on the same policy change).
            let now = Instant::now();
            let wait = targets
                .iter()
                .map(|t| self.inner.handover.steer(t.to, primary, quiet, now))
                .max()
                .unwrap_or_default();
            if !wait.is_zero() {
                tracing::debug!(gateways = targets.len(), transport = %primary, ?wait, "transport changed: waiting for the old one to go quiet");
                tokio::time::sleep(wait).await;
            }
        }
        let chain = self.publish_chain(targets, regions, decision, priority);
        let Some(mirror) = decision.mirror else {
            return chain
                .await
                .into_iter()
                .map(|primary| match primary {
                    Ok((via, confirmed)) => Sent {
                        result: Ok(via),
                        confirmed,
                        mirrored: None,
                    },
                    Err(err) => Sent {
                        result: Err(err),
                        confirmed: false,
                        mirrored: None,
                    },
                })
                .collect();
        };
        // Owned, so that a mirror publish still unconfirmed when the wait
        // ends can finish in the background: its outcome still feeds the
        // watchdog, and a late copy is dropped by the receiver's dedupe.
        let mut mirroring = Box::pin({
            let mirror_stack = self.inner.stacks.get(mirror).cloned();
            let owned: Vec<(GatewayId, Vec<Bytes>)> = targets
                .iter()
                .map(|t| (t.to.clone(), t.batch.to_vec()))
                .collect();
            let regions = regions.to_vec();
            let route = decision.route.as_str();
            async move {
                let targets: Vec<Outgoing<'_>> = owned
                    .iter()
                    .map(|(to, batch)| Outgoing { to, batch })
                    .collect();
                let publish = Publish {
                    targets: &targets,
                    regions: &regions,
                    priority,
                    cohort: true,
                };
                let mirrored = match mirror_stack {
                    Ok(mirror_stack) => stack::publish(&mirror_stack, publish).await,
                    Err(err) => vec![Err(err); targets.len()],
                };
                let (mut ok, mut failed) = (0, 0);
                for (result, target) in mirrored.iter().zip(&targets) {
                    let n = target.batch.len() as u64;
                    if result.is_ok() {
                        ok += n;
                    } else {
                        failed += n;
                    }
                }
                for (outcome, n) in [("mirrored", ok), ("failed", failed)] {
                    if n > 0 {
                        telemetry::messages(route, mirror.as_str(), outcome, n);
                    }
                }
                mirrored
            }
        });
        let mut chain = std::pin::pin!(chain);
        let mut mirrored = None;
        let primary = tokio::select! {
            primary = &mut chain => primary,
            done = &mut mirroring => {
                mirrored = Some(done);
                (&mut chain).await
            }
        };
        let mirrored = match mirrored {
            Some(done) => Some(done),
            // The primary took them all: the mirror gets `mirror_wait`, not
            // the whole publish timeout (a canary broker that is down would
            // otherwise hold every cohort send for that long).
            None if primary.iter().all(Result::is_ok) => {
                tokio::time::timeout(mirror_wait, &mut mirroring).await.ok()
            }
            None => Some((&mut mirroring).await),
        };
        if mirrored.is_none() {
            tracing::debug!(gateways = targets.len(), transport = %mirror, ?mirror_wait, "mirror publish not confirmed in time; finishing in the background");
            tokio::spawn(mirroring);
        }
        let mut mirrored = mirrored.map(Vec::into_iter);
        primary
            .into_iter()
            .map(|primary| {
                let mirrored = mirrored.as_mut().and_then(Iterator::next);
                let mirror_confirmed = matches!(mirrored, Some(Ok(true)));
                let (result, confirmed) = match (primary, mirrored) {
                    (Ok((via, confirmed)), _) => (Ok(via), confirmed || mirror_confirmed),
                    (Err(_), Some(Ok(confirmed))) => (Ok(Via::Transport(mirror)), confirmed),
                    (Err(primary), Some(Err(mirrored))) => {
                        let mut errors = primary.transport_errors().to_vec();
                        errors.push(mirrored);
                        (Err(PublishError::Failed(errors)), false)
                    }
                    (Err(primary), None) => (Err(primary), false),
                };
                Sent {
                    result,
                    confirmed,
                    mirrored: mirror_confirmed.then_some(mirror),
                }
            })
            .collect()
    }

    /// Tries each transport of the decision in order, each with the
    /// targets no earlier one took; per target, the transport that took
    /// its run and whether it confirmed, or every transport's error.
    async fn publish_chain(
        &self,
        targets: &[Outgoing<'_>],
        regions: &[Region],
        decision: &Decision,
        priority: Priority,
    ) -> Vec<Result<(Via, bool), PublishError>> {
        if decision.transports.is_empty() {
            return vec![Err(PublishError::NoTransport); targets.len()];
        }
        let mut taken: Vec<Option<(Via, bool)>> = vec![None; targets.len()];
        let mut errors: Vec<Vec<TransportError>> = vec![Vec::new(); targets.len()];
        // The targets no transport took yet, in order.
        let mut left: Vec<usize> = (0..targets.len()).collect();
        for &kind in &decision.transports {
            if left.is_empty() {
                break;
            }
            // All of them (the first transport, or every one failed): no copy.
            let subset: (Vec<Outgoing<'_>>, Vec<Region>) = if left.len() == targets.len() {
                Default::default()
            } else {
                left.iter()
                    .map(|&i| (targets[i], regions[i].clone()))
                    .unzip()
            };
            let (these, their_regions) = if left.len() == targets.len() {
                (targets, regions)
            } else {
                (&subset.0[..], &subset.1[..])
            };
            let publish = Publish {
                targets: these,
                regions: their_regions,
                priority,
                cohort: decision.cohort,
            };
            let results = match self.inner.stacks.get(kind) {
                Ok(kind_stack) => stack::publish(kind_stack, publish).await,
                Err(err) => vec![Err(err); these.len()],
            };
            let mut failed = Vec::new();
            for (i, result) in left.into_iter().zip(results) {
                match result {
                    Ok(confirmed) => taken[i] = Some((Via::Transport(kind), confirmed)),
                    Err(err) => {
                        tracing::warn!(transport = %kind, gateway = %targets[i].to, err = %Report(&err), "publish failed, trying the next transport");
                        errors[i].push(err);
                        failed.push(i);
                    }
                }
            }
            left = failed;
        }
        taken
            .into_iter()
            .zip(errors)
            .map(|(taken, errors)| taken.ok_or(PublishError::Failed(errors)))
            .collect()
    }
}
