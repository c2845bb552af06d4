//! The send path for a batch of messages: plan each, group the targets
//! into one batch per gateway, publish the gateways concurrently (runs of
//! the same priority and transports one after another, so per-pair order
//! holds), then conclude each message (offline store, report).

use std::collections::HashMap;

use bytes::Bytes;
use foldhash::fast::RandomState;
use futures::future::{join_all, FutureExt};

use crate::envelope::Envelope;
use crate::error::SendError;
use crate::policy::Route;
use crate::telemetry;
use crate::topology::GatewayId;

use super::plan::{plan, Planned};
use super::publish::Sent;
use super::report::{SendReport, TargetReport};
use super::Router;

/// One target gateway's route and its (message, target) indices in a batch.
type Members = (Route, Vec<(usize, usize)>);

/// The messages of one run, and how their publish went.
type Run = (Vec<usize>, Sent);

impl Router {
    /// Routes one message. Messages from one sender to one recipient arrive
    /// in order when each send is awaited before the next.
    pub async fn send(&self, envelope: Envelope) -> Result<SendReport, SendError> {
        let mut reports = self.send_batch(vec![envelope]).await;
        reports
            .pop()
            .expect("send_batch returns one report per envelope")
    }

    /// Routes several messages, publishing once per (target gateway,
    /// transport) batch. Returns one result per envelope, in input order.
    pub async fn send_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<SendReport, SendError>> {
        let plans = self.plan_all(envelopes).await;
        let planned: Vec<Option<&Planned>> = plans.iter().map(|p| p.as_ref().ok()).collect();
        let published = join_all(per_gateway(&planned).into_iter().map(
            |(gateway, (route, members))| self.publish_gateway(gateway, route, members, &planned),
        ))
        .await;

        let mut targets: Vec<Vec<TargetReport>> = plans
            .iter()
            .map(|p| Vec::with_capacity(p.as_ref().map_or(0, |p| p.targets.len())))
            .collect();
        for (gateway, route, runs) in published {
            for (members, sent) in runs {
                for i in members {
                    targets[i].push(TargetReport {
                        gateway: gateway.clone(),
                        route,
                        result: sent.result.clone(),
                        confirmed: sent.confirmed,
                        mirrored: sent.mirrored,
                    });
                }
            }
        }
        let mut reports = Vec::with_capacity(plans.len());
        for (plan, targets) in plans.into_iter().zip(targets) {
            reports.push(match plan {
                Ok(plan) => self.conclude(plan, targets).await,
                Err(err) => Err(err),
            });
        }
        reports
    }

    /// Plans every message, in input order. Most plans finish on their
    /// first poll (presence and block lists cached in process): those are
    /// taken at once, and only plans that wait on a store are joined,
    /// overlapping their round trips (a `join_all` of every plan cost a
    /// task slot and a wake per message).
    async fn plan_all(&self, envelopes: Vec<Envelope>) -> Vec<Result<Planned, SendError>> {
        // One policy for the whole batch (its runs must agree anyway), owned:
        // plans that wait on a store hold it across that wait.
        let policy = arc_swap::Guard::into_inner(self.inner.policy.load());
        let (me, backends) = (&self.inner.me, &self.inner.backends);
        let quality = self.inner.policy.quality();
        let max_payload = self.inner.max_payload;
        let mut plans = Vec::with_capacity(envelopes.len());
        let mut waiting = Vec::new();
        for envelope in envelopes {
            let mut plan = Box::pin(plan(me, backends, &policy, quality, max_payload, envelope));
            match plan.as_mut().now_or_never() {
                Some(done) => plans.push(Some(done)),
                None => {
                    waiting.push((plans.len(), plan));
                    plans.push(None);
                }
            }
        }
        let (slots, waiting): (Vec<usize>, Vec<_>) = waiting.into_iter().unzip();
        for (slot, done) in slots.into_iter().zip(join_all(waiting).await) {
            plans[slot] = Some(done);
        }
        // Sized up front: `flatten` hints no length, and a plan is large.
        let mut done = Vec::with_capacity(plans.len());
        done.extend(plans.into_iter().flatten());
        done
    }

    /// Publishes one gateway's batch as runs of messages that share a
    /// priority and a decision, one run after another.
    async fn publish_gateway(
        &self,
        gateway: GatewayId,
        route: Route,
        members: Vec<(usize, usize)>,
        planned: &[Option<&Planned>],
    ) -> (GatewayId, Route, Vec<Run>) {
        let mut runs = Vec::new();
        for run in members.chunk_by(|&(a, ta), &(b, tb)| {
            let (Some(a), Some(b)) = (planned[a], planned[b]) else {
                return false;
            };
            let (da, db) = (&a.targets[ta].2, &b.targets[tb].2);
            a.envelope.priority == b.envelope.priority
                && da.transports == db.transports
                && da.mirror == db.mirror
                && da.cohort == db.cohort
        }) {
            let plans: Vec<&Planned> = run.iter().filter_map(|&(i, _)| planned[i]).collect();
            let Some(first) = plans.first() else {
                continue;
            };
            let sent = if route == Route::Local {
                self.deliver_locally(&plans).await
            } else {
                let batch: Vec<Bytes> = plans.iter().map(|p| p.bytes.clone()).collect();
                let (_, region, decision) = &first.targets[run[0].1];
                self.publish(&gateway, region, decision, &batch, first.envelope.priority)
                    .await
            };
            let outcome = if sent.result.is_ok() {
                "sent"
            } else {
                "failed"
            };
            let via = sent.result.as_ref().map_or("none", |via| via.as_str());
            telemetry::messages(route.as_str(), via, outcome, run.len() as u64);
            runs.push((run.iter().map(|&(i, _)| i).collect(), sent));
        }
        (gateway, route, runs)
    }
}

/// One batch per target gateway, its members in input order; blocked
/// messages and failed plans have no targets.
fn per_gateway(planned: &[Option<&Planned>]) -> HashMap<GatewayId, Members, RandomState> {
    let mut batches: HashMap<GatewayId, Members, RandomState> = HashMap::default();
    for (i, plan) in planned.iter().enumerate() {
        let Some(plan) = plan.filter(|p| !p.blocked) else {
            continue;
        };
        for (t, (gateway, _, decision)) in plan.targets.iter().enumerate() {
            batches
                .entry(gateway.clone())
                .or_insert_with(|| (decision.route, Vec::new()))
                .1
                .push((i, t));
        }
    }
    batches
}
