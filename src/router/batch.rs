//! The send path for a batch of messages: plan each, split each target
//! gateway's messages into runs (consecutive messages of one priority and
//! decision), publish the runs that share a decision in one call for all
//! their gateways (a sender's batch of 1:1 messages spreads over many
//! gateways, and one broker round trip should carry them all), then
//! conclude each message (offline store, report). A gateway's runs go out
//! one after another, in waves, so per-pair order holds.

use std::ops::Range;

use bytes::Bytes;
use futures::future::{join_all, FutureExt};

use crate::envelope::Envelope;
use crate::error::SendError;
use crate::policy::{Decision, Route};
use crate::telemetry;
use crate::topology::{GatewayId, Region};
use crate::transport::Outgoing;

use super::plan::{plan, Planned};
use super::publish::Sent;
use super::report::{SendReport, TargetReport};
use super::Router;

/// A (message, target) pair: `planned[message].targets[target]`.
type Slot = (usize, usize);

/// Runs of one wave that share a route, priority and decision, published
/// in one call: each a range of the slots, one gateway's.
struct Group {
    wave: usize,
    runs: Vec<Range<usize>>,
}

impl Router {
    /// Routes one message. Messages from one sender to one recipient arrive
    /// in order when each send is awaited before the next.
    pub async fn send(&self, envelope: Envelope) -> Result<SendReport, SendError> {
        let mut reports = self.send_batch(vec![envelope]).await;
        reports
            .pop()
            .expect("send_batch returns one report per envelope")
    }

    /// Routes several messages, publishing once per (decision, wave) for
    /// every target gateway together. Returns one result per envelope, in
    /// input order.
    pub async fn send_batch(&self, envelopes: Vec<Envelope>) -> Vec<Result<SendReport, SendError>> {
        let plans = self.plan_all(envelopes).await;
        let planned: Vec<Option<&Planned>> = plans.iter().map(|p| p.as_ref().ok()).collect();
        let slots = by_gateway(&planned);
        let groups = groups(&slots, &planned);

        let mut targets: Vec<Vec<TargetReport>> = plans
            .iter()
            .map(|p| Vec::with_capacity(p.as_ref().map_or(0, |p| p.targets.len())))
            .collect();
        let waves = groups.last().map_or(0, |g| g.wave + 1);
        for wave in 0..waves {
            let published = join_all(
                groups
                    .iter()
                    .filter(|g| g.wave == wave)
                    .map(|g| self.publish_group(g, &slots, &planned)),
            )
            .await;
            for (group, sent) in groups.iter().filter(|g| g.wave == wave).zip(published) {
                for (run, sent) in group.runs.iter().zip(sent) {
                    let (i, t) = slots[run.start];
                    let (gateway, _, decision) = target(&planned, (i, t));
                    for &(i, _) in &slots[run.clone()] {
                        targets[i].push(TargetReport {
                            gateway: gateway.clone(),
                            route: decision.route,
                            result: sent.result.clone(),
                            confirmed: sent.confirmed,
                            mirrored: sent.mirrored,
                        });
                    }
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

    /// Publishes one group's runs: this gateway's own inbox for the local
    /// route, otherwise one publish for every gateway of the group. One
    /// [`Sent`] per run, in order.
    async fn publish_group(
        &self,
        group: &Group,
        slots: &[Slot],
        planned: &[Option<&Planned>],
    ) -> Vec<Sent> {
        let lead = slots[group.runs[0].start];
        let (_, _, decision) = target(planned, lead);
        let priority = message(planned, lead.0).envelope.priority;
        let sent = if decision.route == Route::Local {
            let mut sent = Vec::with_capacity(group.runs.len());
            for run in &group.runs {
                let plans: Vec<&Planned> = slots[run.clone()]
                    .iter()
                    .map(|&(i, _)| message(planned, i))
                    .collect();
                sent.push(self.deliver_locally(&plans).await);
            }
            sent
        } else {
            // Every run's bytes in one buffer, each gateway's a slice of it.
            let bytes: Vec<Bytes> = group
                .runs
                .iter()
                .flat_map(|run| slots[run.clone()].iter())
                .map(|&(i, _)| message(planned, i).bytes.clone())
                .collect();
            let mut outgoing = Vec::with_capacity(group.runs.len());
            let mut regions = Vec::with_capacity(group.runs.len());
            let mut at = 0;
            for run in &group.runs {
                let (to, region, _) = target(planned, slots[run.start]);
                outgoing.push(Outgoing {
                    to,
                    batch: &bytes[at..at + run.len()],
                });
                regions.push(region.clone());
                at += run.len();
            }
            self.publish(&outgoing, &regions, decision, priority).await
        };
        count(decision.route, &group.runs, &sent);
        sent
    }
}

/// The (message, target) slots of every unblocked plan, grouped by target
/// gateway (one sort, no map or allocation per gateway), each gateway's in
/// input order.
fn by_gateway(planned: &[Option<&Planned>]) -> Vec<Slot> {
    let mut slots: Vec<Slot> = planned
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.filter(|p| !p.blocked).map(|p| (i, p)))
        .flat_map(|(i, p)| (0..p.targets.len()).map(move |t| (i, t)))
        .collect();
    // Stable: a gateway's messages keep their input order.
    slots.sort_by(|&a, &b| target(planned, a).0.cmp(&target(planned, b).0));
    slots
}

/// Splits each gateway's slots into runs (consecutive messages of one
/// priority and decision) and gathers the n-th runs of every gateway that
/// share a route, priority and decision into one group of wave n. Sorted
/// by wave.
fn groups(slots: &[Slot], planned: &[Option<&Planned>]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut from = 0;
    for gateway in slots.chunk_by(|&a, &b| target(planned, a).0 == target(planned, b).0) {
        let runs = gateway.chunk_by(|&a, &b| same_run(planned, a, b));
        for (wave, run) in runs.enumerate() {
            let range = from..from + run.len();
            from += run.len();
            let joins = groups
                .iter_mut()
                .find(|g| g.wave == wave && same_run(planned, slots[g.runs[0].start], run[0]));
            match joins {
                Some(group) => group.runs.push(range),
                None => groups.push(Group {
                    wave,
                    runs: vec![range],
                }),
            }
        }
    }
    groups.sort_by_key(|g| g.wave);
    groups
}

/// Whether two slots' messages can go in one publish: the same priority
/// and the same decision (route, transports, mirror, cohort).
fn same_run(planned: &[Option<&Planned>], a: Slot, b: Slot) -> bool {
    let (pa, pb) = (message(planned, a.0), message(planned, b.0));
    let (da, db) = (&target(planned, a).2, &target(planned, b).2);
    pa.envelope.priority == pb.envelope.priority
        && da.route == db.route
        && da.transports == db.transports
        && da.mirror == db.mirror
        && da.cohort == db.cohort
}

/// The plan of a slot's message (slots only name planned messages).
fn message<'p>(planned: &[Option<&'p Planned>], i: usize) -> &'p Planned {
    planned[i].expect("slots only name planned messages")
}

/// A slot's target: gateway, region, decision.
fn target<'p>(planned: &[Option<&'p Planned>], (i, t): Slot) -> &'p (GatewayId, Region, Decision) {
    &message(planned, i).targets[t]
}

/// Counts a group's messages per transport and outcome, one metric update
/// per distinct pair rather than per gateway.
fn count(route: Route, runs: &[Range<usize>], sent: &[Sent]) {
    let mut counts: Vec<(&'static str, &'static str, u64)> = Vec::new();
    for (run, sent) in runs.iter().zip(sent) {
        let via = sent.result.as_ref().map_or("none", |via| via.as_str());
        let outcome = if sent.result.is_ok() {
            "sent"
        } else {
            "failed"
        };
        match counts
            .iter_mut()
            .find(|(v, o, _)| *v == via && *o == outcome)
        {
            Some((_, _, n)) => *n += run.len() as u64,
            None => counts.push((via, outcome, run.len() as u64)),
        }
    }
    for (via, outcome, n) in counts {
        telemetry::messages(route.as_str(), via, outcome, n);
    }
}
