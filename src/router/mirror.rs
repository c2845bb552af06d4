//! The canary's dual send, as a layer of the route stack: a decision with
//! a mirror publishes on it alongside the fallback chain, and a target's
//! run is out once either path took it. The receiver dedupes, so the
//! message arrives once whichever path is faster.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower::{Layer, Service};

use crate::envelope::Priority;
use crate::error::PublishError;
use crate::inbox::Via;
use crate::policy::live::LivePolicy;
use crate::telemetry;
use crate::topology::{GatewayId, Region};
use crate::transport::{Outgoing, TransportKind};

use super::service::{call, take, Call, Publish, Published, RouteService, Routed, Sent};
use super::stack::Stacks;

/// Publishes on the decision's mirror beside the inner service; waits for
/// it at most `canary.mirror_wait` (read on each call) once the inner
/// service took every target.
pub(crate) struct MirrorLayer {
    pub stacks: Stacks,
    pub policy: Arc<LivePolicy>,
}

/// See [`MirrorLayer`].
#[derive(Clone)]
pub(crate) struct Mirror<S> {
    inner: S,
    stacks: Stacks,
    policy: Arc<LivePolicy>,
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;
    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            stacks: self.stacks.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<'a, S: RouteService> Service<Routed<'a>> for Mirror<S> {
    type Response = Vec<Sent>;
    type Error = std::convert::Infallible;
    type Future = Call<'a, Vec<Sent>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed<'a>) -> Call<'a, Vec<Sent>> {
        let mut inner = take(&mut self.inner);
        let Some(mirror) = routed.decision.mirror else {
            return inner.call(routed);
        };
        let mirror_wait = self.policy.load().mirror_wait;
        let mut mirroring = Box::pin(mirror_publish(&self.stacks, mirror, routed));
        Box::pin(async move {
            let mut chain = std::pin::pin!(inner.call(routed));
            let mut mirrored = None;
            let Ok(primary) = tokio::select! {
                primary = &mut chain => primary,
                done = &mut mirroring => {
                    mirrored = Some(done);
                    (&mut chain).await
                }
            };
            let mirrored = match mirrored {
                Some(done) => Some(done),
                // The primary took them all: the mirror gets `mirror_wait`,
                // not the whole publish timeout (a canary broker that is
                // down would otherwise hold every cohort send for that long).
                None if primary.iter().all(|sent| sent.result.is_ok()) => {
                    tokio::time::timeout(mirror_wait, &mut mirroring).await.ok()
                }
                None => Some((&mut mirroring).await),
            };
            if mirrored.is_none() {
                tracing::debug!(gateways = routed.targets.len(), transport = %mirror, ?mirror_wait, "mirror publish not confirmed in time; finishing in the background");
                tokio::spawn(mirroring);
            }
            let mut mirrored = mirrored.map(Vec::into_iter);
            let merged = primary.into_iter().map(|primary| {
                let mirrored = mirrored.as_mut().and_then(Iterator::next);
                merge(primary, mirrored, mirror)
            });
            Ok(merged.collect())
        })
    }
}

/// The mirror's publish of every target, owned: one still unconfirmed when
/// the wait ends finishes in the background, where its outcome still feeds
/// the watchdog (and a late copy is dropped by the receiver's dedupe).
fn mirror_publish(
    stacks: &Stacks,
    mirror: TransportKind,
    routed: Routed<'_>,
) -> impl std::future::Future<Output = Published> + Send + 'static {
    let stack = stacks.get(mirror).cloned();
    let owned: Vec<(GatewayId, Vec<Bytes>)> = routed
        .targets
        .iter()
        .map(|t| (t.to.clone(), t.batch.to_vec()))
        .collect();
    let regions: Vec<Region> = routed.regions.to_vec();
    let (route, priority): (&'static str, Priority) =
        (routed.decision.route.as_str(), routed.priority);
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
        let mirrored = match stack {
            Ok(stack) => call(&stack, publish).await,
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
}

/// One target's outcome from both paths: taken if either took it,
/// confirmed if either confirmed; if neither, every error (the mirror's
/// last).
fn merge(
    primary: Sent,
    mirrored: Option<Result<bool, crate::transport::TransportError>>,
    mirror: TransportKind,
) -> Sent {
    let mirror_confirmed = matches!(mirrored, Some(Ok(true)));
    let (result, confirmed) = match (primary.result, mirrored) {
        (Ok(via), _) => (Ok(via), primary.confirmed || mirror_confirmed),
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
