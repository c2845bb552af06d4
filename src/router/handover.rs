//! The top of the route stack: after a change of primary transport to a
//! gateway, a publish first waits until that gateway has been quiet on the
//! old one for `canary.handover` (per-pair order; the table is
//! [`crate::policy::handover::Handover`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::policy::handover::Handover;
use crate::policy::live::LivePolicy;

use super::service::{take, Call, RouteService, Routed, Sent};

/// Waits out a handover before its inner service publishes; the quiet
/// time is read from the live policy on each call.
pub(crate) struct HandoverLayer {
    pub policy: Arc<LivePolicy>,
}

/// See [`HandoverLayer`]. Its clones share one table: the last transport
/// per target gateway, for every router of this gateway (a gateway that
/// moved keeps its pairs' order).
#[derive(Clone)]
pub(crate) struct AwaitHandover<S> {
    inner: S,
    table: Arc<Handover>,
    policy: Arc<LivePolicy>,
}

impl<S> Layer<S> for HandoverLayer {
    type Service = AwaitHandover<S>;
    fn layer(&self, inner: S) -> AwaitHandover<S> {
        AwaitHandover {
            inner,
            table: Arc::default(),
            policy: self.policy.clone(),
        }
    }
}

impl<'a, S: RouteService> Service<Routed<'a>> for AwaitHandover<S> {
    type Response = Vec<Sent>;
    type Error = std::convert::Infallible;
    type Future = Call<'a, Vec<Sent>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// One wait for all: the longest any target needs (they all changed
    /// primary together, on the same policy change).
    fn call(&mut self, routed: Routed<'a>) -> Call<'a, Vec<Sent>> {
        let mut inner = take(&mut self.inner);
        let Some(&primary) = routed.decision.transports.first() else {
            return inner.call(routed);
        };
        let quiet = self.policy.load().handover;
        let now = Instant::now();
        let wait = routed
            .targets
            .iter()
            .map(|t| self.table.steer(t.to, primary, quiet, now))
            .max()
            .unwrap_or_default();
        if wait.is_zero() {
            return inner.call(routed);
        }
        Box::pin(async move {
            tracing::debug!(gateways = routed.targets.len(), transport = %primary, ?wait, "transport changed: waiting for the old one to go quiet");
            tokio::time::sleep(wait).await;
            inner.call(routed).await
        })
    }
}
