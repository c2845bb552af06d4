//! What the router's tower services take and answer. Two kinds stack up:
//!
//! - a transport's stack (`stack.rs`) takes a [`Publish`], runs for many
//!   gateways on that one transport, and answers [`Published`];
//! - the route stack (`publish.rs`: handover wait, canary mirror,
//!   fallback chain) takes a [`Routed`], the same runs with the decision
//!   that says which transports to try, and answers one [`Sent`] each.
//!
//! Every service answers per target gateway and never fails a call as a
//! whole (`Error = Infallible`): the layers above count outcomes per
//! gateway, and the router falls back per gateway.

use std::convert::Infallible;

use futures::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::envelope::Priority;
use crate::error::PublishError;
use crate::inbox::Via;
use crate::policy::Decision;
use crate::topology::Region;
use crate::transport::{Outgoing, TransportError, TransportKind};

/// One publish as the router asks it: runs of encoded envelopes of one
/// priority, one run per target gateway, all on one transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publish<'a> {
    pub targets: &'a [Outgoing<'a>],
    /// Each target's region, in `targets` order: what the quality scores
    /// are kept per.
    pub regions: &'a [Region],
    pub priority: Priority,
    /// Part of the canary cohort (or its mirror): feeds the watchdog.
    pub cohort: bool,
}

/// Per target, in order: `Ok(confirmed)` ([`crate::transport::Transport::confirms`])
/// or why that gateway's run was not taken.
pub(crate) type Published = Vec<Result<bool, TransportError>>;

/// Runs that share one decision, one per target gateway: what the route
/// stack publishes on the decision's transports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Routed<'a> {
    pub targets: &'a [Outgoing<'a>],
    /// Each target's region, in `targets` order.
    pub regions: &'a [Region],
    pub priority: Priority,
    pub decision: &'a Decision,
}

/// How the publish of one run went.
#[derive(Debug)]
pub(crate) struct Sent {
    pub result: Result<Via, PublishError>,
    pub confirmed: bool,
    pub mirrored: Option<TransportKind>,
}

impl Sent {
    /// Nothing took the run.
    pub fn failed(err: PublishError) -> Self {
        Self {
            result: Err(err),
            confirmed: false,
            mirrored: None,
        }
    }
}

/// What a service's call returns: it may borrow the request, not the service.
pub(crate) type Call<'a, R> = BoxFuture<'a, Result<R, Infallible>>;

/// A transport's stack or any layer of one: answers every publish per target.
pub(crate) trait PublishService:
    for<'a> Service<
        Publish<'a>,
        Response = Published,
        Error = Infallible,
        Future = Call<'a, Published>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> PublishService for S where
    S: for<'a> Service<
            Publish<'a>,
            Response = Published,
            Error = Infallible,
            Future = Call<'a, Published>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The route stack or any layer of one: answers every target's run.
pub(crate) trait RouteService:
    for<'a> Service<
        Routed<'a>,
        Response = Vec<Sent>,
        Error = Infallible,
        Future = Call<'a, Vec<Sent>>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> RouteService for S where
    S: for<'a> Service<
            Routed<'a>,
            Response = Vec<Sent>,
            Error = Infallible,
            Future = Call<'a, Vec<Sent>>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The ready service to call, leaving a fresh clone in its place (tower's
/// rule: the instance `poll_ready` readied is the one called).
pub(crate) fn take<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    std::mem::replace(inner, fresh)
}

/// Calls `service` once it is ready; its answer, which cannot be an error.
pub(crate) async fn call<S, R>(service: &S, request: R) -> S::Response
where
    S: Service<R, Error = Infallible> + Clone,
{
    let Ok(response) = service.clone().oneshot(request).await;
    response
}
