//! Publishing one run of messages to one target gateway: this gateway's
//! own inbox for the local route; otherwise the decision's transports in
//! order (each through its [`super::stack`]), with the canary mirror
//! alongside, after waiting out a handover when the primary changed.

use std::time::Instant;

use bytes::Bytes;

use crate::envelope::Priority;
use crate::error::PublishError;
use crate::inbox::{Handed, Via};
use crate::policy::Decision;
use crate::telemetry;
use crate::topology::{GatewayId, Region};
use crate::transport::{TransportError, TransportKind};

use super::plan::Planned;
use super::stack::{Publish, Publisher};
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
    /// alongside); the message is out once either path took it. After a
    /// change of primary it first waits out the handover (per-pair order).
    pub(super) async fn publish(
        &self,
        to: &GatewayId,
        region: &Region,
        decision: &Decision,
        batch: &[Bytes],
        priority: Priority,
    ) -> Sent {
        let policy = self.inner.policy.load();
        let (quiet, mirror_wait) = (policy.handover, policy.mirror_wait);
        drop(policy);
        if let Some(&primary) = decision.transports.first() {
            let wait = self
                .inner
                .handover
                .steer(to, primary, quiet, Instant::now());
            if !wait.is_zero() {
                tracing::debug!(gateway = %to, transport = %primary, ?wait, "transport changed: waiting for the old one to go quiet");
                tokio::time::sleep(wait).await;
            }
        }
        let chain = self.publish_chain(to, region, decision, batch, priority);
        let Some(mirror) = decision.mirror else {
            let (result, confirmed) = split(chain.await);
            return Sent {
                result,
                confirmed,
                mirrored: None,
            };
        };
        // Owned, so that a mirror publish still unconfirmed when the wait
        // ends can finish in the background: its outcome still feeds the
        // watchdog, and a late copy is dropped by the receiver's dedupe.
        let mut mirroring = Box::pin({
            let stack = self.inner.stacks.get(mirror).cloned();
            let (to, region, batch) = (to.clone(), region.clone(), batch.to_vec());
            let route = decision.route.as_str();
            async move {
                let publish = Publish {
                    to: &to,
                    region: &region,
                    batch: &batch,
                    priority,
                    cohort: true,
                };
                let mirrored = match stack {
                    Ok(stack) => stack.publish(publish).await,
                    Err(err) => Err(err),
                };
                let outcome = if mirrored.is_ok() {
                    "mirrored"
                } else {
                    "failed"
                };
                telemetry::messages(route, mirror.as_str(), outcome, batch.len() as u64);
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
            // The primary took it: the mirror gets `mirror_wait`, not the
            // whole publish timeout (a canary broker that is down would
            // otherwise hold every cohort send for that long).
            None if primary.is_ok() => tokio::time::timeout(mirror_wait, &mut mirroring).await.ok(),
            None => Some((&mut mirroring).await),
        };
        if mirrored.is_none() {
            tracing::debug!(gateway = %to, transport = %mirror, ?mirror_wait, "mirror publish not confirmed in time; finishing in the background");
            tokio::spawn(mirroring);
        }
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
    }

    /// Tries each transport of the decision in order until one takes the
    /// batch; returns it and whether it confirmed.
    async fn publish_chain(
        &self,
        to: &GatewayId,
        region: &Region,
        decision: &Decision,
        batch: &[Bytes],
        priority: Priority,
    ) -> Result<(Via, bool), PublishError> {
        if decision.transports.is_empty() {
            return Err(PublishError::NoTransport);
        }
        let publish = Publish {
            to,
            region,
            batch,
            priority,
            cohort: decision.cohort,
        };
        let mut errors: Vec<TransportError> = Vec::new();
        for &kind in &decision.transports {
            let result = match self.inner.stacks.get(kind) {
                Ok(stack) => stack.publish(publish).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(confirmed) => return Ok((Via::Transport(kind), confirmed)),
                Err(err) => {
                    tracing::warn!(transport = %kind, gateway = %to, %err, "publish failed, trying the next transport");
                    errors.push(err);
                }
            }
        }
        Err(PublishError::Failed(errors))
    }
}

/// A chain's result as a report's `result` and `confirmed`.
fn split(result: Result<(Via, bool), PublishError>) -> (Result<Via, PublishError>, bool) {
    match result {
        Ok((via, confirmed)) => (Ok(via), confirmed),
        Err(err) => (Err(err), false),
    }
}
