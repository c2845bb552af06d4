//! What the router puts around each transport, as tower middleware: a
//! timeout per attempt, retries for high priority, a bound on the
//! publishes in flight (tower's own `ConcurrencyLimit` and `LoadShed`: one
//! over the bound is refused at once and falls back), canary feedback and
//! publish metrics. Each transport's stack is one [`tower::Service`] of
//! [`Publish`], built once when the router is built; the router itself
//! only calls it.
//!
//! Every layer answers a publish with one result per target gateway and
//! never fails a publish as a whole (`Error = Infallible`): the layers
//! above count outcomes per gateway, and the router falls back per
//! gateway. Tower's layers, whose errors are whole-call, sit inside
//! [`Shed`], which turns their refusal into per-target errors.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use metrics::Histogram;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

use crate::cause::{Cause, Report};
use crate::config::DeliveryConfig;
use crate::envelope::Priority;
use crate::policy::live::LivePolicy;
use crate::telemetry;
use crate::topology::Region;
use crate::transport::{Ack, Outgoing, Transport, TransportError, TransportKind, Transports};

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

/// Per target, in order: `Ok(confirmed)` ([`Transport::confirms`]) or why
/// that gateway's run was not taken.
pub(crate) type Published = Vec<Result<bool, TransportError>>;

/// What a layer's call returns: it may borrow the publish, not the layer.
type Call<'a> = BoxFuture<'a, Result<Published, Infallible>>;

/// A stack or any layer of one: answers every publish per target.
pub(crate) trait PublishService:
    for<'a> Service<Publish<'a>, Response = Published, Error = Infallible, Future = Call<'a>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> PublishService for S where
    S: for<'a> Service<Publish<'a>, Response = Published, Error = Infallible, Future = Call<'a>>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The ready service to call, leaving a fresh clone in its place (tower's
/// rule: the instance `poll_ready` readied is the one called).
fn take<S: Clone>(inner: &mut S) -> S {
    let fresh = inner.clone();
    std::mem::replace(inner, fresh)
}

/// Publishes through `stack`, waiting until it is ready.
pub(crate) async fn publish<S: PublishService>(stack: &S, publish: Publish<'_>) -> Published {
    let Ok(results) = stack.clone().oneshot(publish).await;
    results
}

/// The bottom of every stack, the transport itself: low priority does not
/// wait for the broker. (A named type, not `Arc<dyn Transport>` itself: a
/// spawned stack's future must not carry the trait object's lifetime.)
#[derive(Clone)]
pub(crate) struct Bare(Arc<dyn Transport>);

impl<'a> Service<Publish<'a>> for Bare {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let transport = self.0.clone();
        Box::pin(async move {
            let ack = match publish.priority {
                Priority::Low => Ack::None,
                Priority::Normal | Priority::High => Ack::Confirmed,
            };
            let confirms = transport.confirms(ack);
            let results = transport.publish_many(publish.targets, ack).await;
            Ok(results.into_iter().map(|r| r.map(|()| confirms)).collect())
        })
    }
}

/// The stack the router publishes through.
pub(crate) type Stack = Metered<Feedback<Shed<Retry<Timeout<Bare>>>>>;

/// One stack per enabled transport.
#[derive(Clone)]
pub(crate) struct Stacks(Vec<(TransportKind, Stack)>);

impl Stacks {
    /// Stacks every transport with the router's delivery settings and policy.
    pub(crate) fn new(
        transports: &Transports,
        delivery: &DeliveryConfig,
        policy: &Arc<LivePolicy>,
    ) -> Self {
        let stacks = transports
            .iter()
            .map(|t| (t.kind(), stack(t.clone(), delivery, policy.clone())))
            .collect();
        Self(stacks)
    }

    /// The stack of `kind`, if that transport is enabled.
    pub(crate) fn get(&self, kind: TransportKind) -> Result<&Stack, TransportError> {
        self.0
            .iter()
            .find_map(|(k, stack)| (*k == kind).then_some(stack))
            .ok_or(TransportError::NotEnabled(kind))
    }
}

/// Stacks `transport` with the router's delivery settings and its policy.
fn stack(
    transport: Arc<dyn Transport>,
    delivery: &DeliveryConfig,
    policy: Arc<LivePolicy>,
) -> Stack {
    let kind = transport.kind();
    let limit = delivery.publishes_in_flight;
    ServiceBuilder::new()
        .layer(MeteredLayer(kind))
        .layer(FeedbackLayer { kind, policy })
        .layer(ShedLayer { kind, limit })
        .layer(RetryLayer {
            kind,
            retries: delivery.retries as usize,
            backoff: delivery.retry_backoff,
        })
        .layer(TimeoutLayer {
            kind,
            after: delivery.publish_timeout,
        })
        .service(Bare(transport))
}

/// Fails an attempt the transport did not finish within the limit
/// (`delivery.publish_timeout`) with [`TransportError::Timeout`].
pub(crate) struct TimeoutLayer {
    pub kind: TransportKind,
    pub after: Duration,
}

/// See [`TimeoutLayer`].
#[derive(Clone)]
pub(crate) struct Timeout<S> {
    inner: S,
    kind: TransportKind,
    after: Duration,
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            kind: self.kind,
            after: self.after,
        }
    }
}

impl<'a, S: PublishService> Service<Publish<'a>> for Timeout<S> {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// One limit for the whole publish: its targets share a round trip, so
    /// a publish that ran out fails every target (each then falls back).
    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let (transport, after) = (self.kind, self.after);
        let attempt = take(&mut self.inner).call(publish);
        Box::pin(async move {
            let Ok(results) = tokio::time::timeout(after, attempt).await else {
                let timed_out = publish.targets.iter().map(|target| {
                    Err(TransportError::Timeout {
                        transport,
                        gateway: target.to.clone(),
                        after,
                    })
                });
                return Ok(timed_out.collect());
            };
            results
        })
    }
}

/// Retries high-priority publishes with exponential backoff
/// (`delivery.retries`, `delivery.retry_backoff`); others get one attempt,
/// and the router falls back to the next transport instead.
pub(crate) struct RetryLayer {
    pub kind: TransportKind,
    pub retries: usize,
    pub backoff: Duration,
}

/// See [`RetryLayer`].
#[derive(Clone)]
pub(crate) struct Retry<S> {
    inner: S,
    kind: TransportKind,
    retries: usize,
    backoff: Duration,
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            kind: self.kind,
            retries: self.retries,
            backoff: self.backoff,
        }
    }
}

impl<'a, S: PublishService> Service<Publish<'a>> for Retry<S> {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// Only the targets that failed are published again.
    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let (kind, retries, backoff) = (self.kind, self.retries, self.backoff);
        let mut inner = take(&mut self.inner);
        Box::pin(async move {
            let Ok(mut results) = inner.call(publish).await;
            if publish.priority != Priority::High || retries == 0 {
                return Ok(results);
            }
            let mut delays = ExponentialBuilder::default()
                .with_min_delay(backoff)
                .with_max_times(retries)
                .build();
            loop {
                let failed: Vec<usize> = (0..results.len())
                    .filter(|&i| results[i].is_err())
                    .collect();
                if failed.is_empty() {
                    return Ok(results);
                }
                let Some(delay) = delays.next() else {
                    return Ok(results);
                };
                for &i in &failed {
                    if let Err(err) = &results[i] {
                        tracing::debug!(transport = %kind, gateway = %publish.targets[i].to, err = %Report(err), ?delay, "publish failed, retrying");
                    }
                }
                metrics::counter!(telemetry::PUBLISH_RETRIES, "transport" => kind.as_str())
                    .increment(failed.len() as u64);
                tokio::time::sleep(delay).await;
                let targets: Vec<Outgoing<'_>> =
                    failed.iter().map(|&i| publish.targets[i]).collect();
                let regions: Vec<Region> =
                    failed.iter().map(|&i| publish.regions[i].clone()).collect();
                let again = Publish {
                    targets: &targets,
                    regions: &regions,
                    ..publish
                };
                let Ok(ready) = inner.ready().await;
                let Ok(more) = ready.call(again).await;
                for (i, result) in failed.into_iter().zip(more) {
                    results[i] = result;
                }
            }
        })
    }
}

/// Bounds the publishes in flight on a transport
/// (`delivery.publishes_in_flight`): tower's `LoadShed` over
/// `ConcurrencyLimit`, answering a publish they refused with
/// [`TransportError::Overloaded`] for every target, at once, so the router
/// falls back instead of queueing behind a broker that stalls. With no
/// bound (0) it is its inner service alone: no semaphore, no extra call.
pub(crate) struct ShedLayer {
    pub kind: TransportKind,
    pub limit: usize,
}

/// See [`ShedLayer`].
#[derive(Clone)]
pub(crate) enum Shed<S> {
    Unbounded(S),
    Bounded {
        inner: LoadShed<ConcurrencyLimit<S>>,
        kind: TransportKind,
        limit: usize,
    },
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        if self.limit == 0 {
            return Shed::Unbounded(inner);
        }
        Shed::Bounded {
            inner: LoadShed::new(ConcurrencyLimit::new(inner, self.limit)),
            kind: self.kind,
            limit: self.limit,
        }
    }
}

impl<'a, S: PublishService> Service<Publish<'a>> for Shed<S> {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    /// Bounded, always ready: `LoadShed` is, and refuses in the call.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self {
            Shed::Unbounded(inner) => inner.poll_ready(cx),
            Shed::Bounded { inner, .. } => inner.poll_ready(cx).map(|_| Ok(())),
        }
    }

    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let (inner, transport, limit) = match self {
            Shed::Unbounded(inner) => return take(inner).call(publish),
            Shed::Bounded { inner, kind, limit } => (inner, *kind, *limit),
        };
        let call = take(inner).call(publish);
        Box::pin(async move {
            let err = match call.await {
                Ok(results) => return Ok(results),
                Err(err) => err,
            };
            let shed = err.is::<tower::load_shed::error::Overloaded>();
            let reason = Cause::from(err);
            if shed {
                metrics::counter!(telemetry::PUBLISHES_SHED, "transport" => transport.as_str())
                    .increment(1);
            }
            let refused = publish.targets.iter().map(|target| {
                let gateway = target.to.clone();
                Err(if shed {
                    TransportError::Overloaded {
                        transport,
                        gateway,
                        limit,
                    }
                } else {
                    TransportError::Publish {
                        transport,
                        gateway,
                        reason: reason.clone(),
                    }
                })
            });
            Ok(refused.collect())
        })
    }
}

/// Reports publishes (outcome, count, time to confirm, retries included)
/// to the live policy: the canary cohort's to its watchdog, every one to
/// the quality scores (which keep those of the transports a rule watches).
pub(crate) struct FeedbackLayer {
    pub kind: TransportKind,
    pub policy: Arc<LivePolicy>,
}

/// See [`FeedbackLayer`].
#[derive(Clone)]
pub(crate) struct Feedback<S> {
    inner: S,
    kind: TransportKind,
    policy: Arc<LivePolicy>,
}

impl<S> Layer<S> for FeedbackLayer {
    type Service = Feedback<S>;
    fn layer(&self, inner: S) -> Feedback<S> {
        Feedback {
            inner,
            kind: self.kind,
            policy: self.policy.clone(),
        }
    }
}

impl<'a, S: PublishService> Service<Publish<'a>> for Feedback<S> {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// One sample per region and outcome, counting its messages: a
    /// publish to a hundred gateways is not a hundred samples' work.
    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let (kind, policy) = (self.kind, self.policy.clone());
        let call = take(&mut self.inner).call(publish);
        Box::pin(async move {
            let started = Instant::now();
            let Ok(results) = call.await;
            let elapsed = started.elapsed();
            let mut from = 0;
            while from < results.len() {
                let region = &publish.regions[from];
                let end = (from..results.len())
                    .find(|&i| publish.regions[i] != *region)
                    .unwrap_or(results.len());
                // [failed, unconfirmed, confirmed] messages of this region.
                let mut counts = [0u64; 3];
                for (result, target) in results[from..end].iter().zip(&publish.targets[from..end]) {
                    let slot = match result {
                        Err(_) => 0,
                        Ok(false) => 1,
                        Ok(true) => 2,
                    };
                    counts[slot] += target.batch.len() as u64;
                }
                for (slot, n) in counts.into_iter().enumerate() {
                    if n == 0 {
                        continue;
                    }
                    let (ok, confirmed_in) = (slot > 0, (slot == 2).then_some(elapsed));
                    if publish.cohort {
                        policy.record_publish(kind, ok, n, confirmed_in);
                    }
                    policy.record_quality(kind, region, ok, n, confirmed_in);
                }
                from = end;
            }
            Ok(results)
        })
    }
}

/// Records each publish's duration, retries included, in
/// `switchyard_publish_duration_seconds{transport, outcome}`.
pub(crate) struct MeteredLayer(pub TransportKind);

/// See [`MeteredLayer`].
#[derive(Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    kind: TransportKind,
    /// Resolved on first use, so a recorder installed after the router was
    /// built (the sidecar builds first) is the one recording; shared by
    /// the clones each call makes.
    histograms: Arc<OnceLock<[Histogram; 2]>>,
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            kind: self.0,
            histograms: Arc::default(),
        }
    }
}

impl<'a, S: PublishService> Service<Publish<'a>> for Metered<S> {
    type Response = Published;
    type Error = Infallible;
    type Future = Call<'a>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// One observation per outcome the publish had (a publish to many
    /// gateways can have both).
    fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
        let (kind, histograms) = (self.kind, self.histograms.clone());
        let call = take(&mut self.inner).call(publish);
        Box::pin(async move {
            let started = Instant::now();
            let Ok(results) = call.await;
            let [ok, failed] = histograms.get_or_init(|| {
                let transport = kind.as_str();
                [
                    metrics::histogram!(telemetry::PUBLISH_DURATION, "transport" => transport, "outcome" => "ok"),
                    metrics::histogram!(telemetry::PUBLISH_DURATION, "transport" => transport, "outcome" => "failed"),
                ]
            });
            let seconds = started.elapsed().as_secs_f64();
            if results.iter().any(Result::is_ok) {
                ok.record(seconds);
            }
            if results.iter().any(Result::is_err) {
                failed.record(seconds);
            }
            Ok(results)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::topology::GatewayId;

    /// Fails its first `fail` attempts per target, then confirms; counts
    /// attempts per target.
    #[derive(Clone)]
    struct Flaky(Arc<Attempts>);

    struct Attempts {
        fail: usize,
        per_target: parking_lot::Mutex<std::collections::HashMap<GatewayId, usize>>,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl<'a> Service<Publish<'a>> for Flaky {
        type Response = Published;
        type Error = Infallible;
        type Future = Call<'a>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, publish: Publish<'a>) -> Call<'a> {
            let this = self.0.clone();
            Box::pin(async move {
                tokio::time::sleep(this.delay).await;
                this.calls.fetch_add(1, Ordering::Relaxed);
                let mut attempts = this.per_target.lock();
                let results = publish.targets.iter().map(|target| {
                    let tried = attempts.entry(target.to.clone()).or_default();
                    *tried += 1;
                    if *tried <= this.fail {
                        return Err(TransportError::Publish {
                            transport: TransportKind::MEMORY,
                            gateway: target.to.clone(),
                            reason: Cause::from_message("flaky"),
                        });
                    }
                    Ok(true)
                });
                Ok(results.collect())
            })
        }
    }

    fn flaky(fail: usize, delay: Duration) -> Flaky {
        Flaky(Arc::new(Attempts {
            fail,
            per_target: Default::default(),
            calls: AtomicUsize::new(0),
            delay,
        }))
    }

    impl Flaky {
        fn calls(&self) -> usize {
            self.0.calls.load(Ordering::Relaxed)
        }
    }

    fn retry(retries: usize) -> RetryLayer {
        RetryLayer {
            kind: TransportKind::MEMORY,
            retries,
            backoff: Duration::from_millis(10),
        }
    }

    fn to(gateways: &[GatewayId]) -> (Vec<Outgoing<'_>>, Vec<Region>) {
        gateways
            .iter()
            .map(|to| (Outgoing { to, batch: &[] }, Region::from("eu")))
            .unzip()
    }

    fn request<'a>(
        (targets, regions): &'a (Vec<Outgoing<'a>>, Vec<Region>),
        priority: Priority,
    ) -> Publish<'a> {
        Publish {
            targets,
            regions,
            priority,
            cohort: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_is_retried_and_normal_is_not() {
        let gateways = [GatewayId::from("gw-2")];
        let targets = to(&gateways);
        let high = flaky(2, Duration::ZERO);
        let results = publish(
            &retry(3).layer(high.clone()),
            request(&targets, Priority::High),
        )
        .await;
        assert!(matches!(results[..], [Ok(true)]), "{results:?}");
        assert_eq!(high.calls(), 3);

        let normal = flaky(2, Duration::ZERO);
        let results = publish(
            &retry(3).layer(normal.clone()),
            request(&targets, Priority::Normal),
        )
        .await;
        assert!(results[0].is_err());
        assert_eq!(normal.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_publishes_again_only_to_the_gateways_that_failed() {
        let gateways = [GatewayId::from("gw-ok"), GatewayId::from("gw-bad")];
        let targets = to(&gateways);
        // Every target fails its first two attempts, but gw-ok counts two
        // already: it is taken at once, gw-bad on its third attempt.
        let inner = flaky(2, Duration::ZERO);
        inner.0.per_target.lock().insert(gateways[0].clone(), 2);
        let results = publish(
            &retry(3).layer(inner.clone()),
            request(&targets, Priority::High),
        )
        .await;
        assert!(matches!(results[..], [Ok(true), Ok(true)]), "{results:?}");
        let attempts = inner.0.per_target.lock();
        assert_eq!(attempts[&gateways[0]], 3, "gw-ok published once");
        assert_eq!(attempts[&gateways[1]], 3, "gw-bad published three times");
        assert_eq!(inner.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_naming_the_gateway_and_limit() {
        let gateways = [GatewayId::from("gw-2")];
        let targets = to(&gateways);
        let stacked = TimeoutLayer {
            kind: TransportKind::MEMORY,
            after: Duration::from_millis(50),
        }
        .layer(flaky(0, Duration::from_secs(1)));
        let results = publish(&stacked, request(&targets, Priority::Normal)).await;
        assert!(
            matches!(
                &results[..],
                [Err(TransportError::Timeout {
                    transport: TransportKind::MEMORY,
                    gateway,
                    after,
                })] if *gateway == gateways[0] && *after == Duration::from_millis(50)
            ),
            "{results:?}"
        );
    }

    /// `delivery.publishes_in_flight = 1`: while one publish waits on the
    /// broker, the next is refused at once, naming the transport, the
    /// gateway and the bound; once the first is done, publishes go again.
    #[tokio::test(start_paused = true)]
    async fn a_publish_over_the_in_flight_bound_is_refused_at_once() {
        let gateways = [GatewayId::from("gw-2")];
        let targets = to(&gateways);
        let slow = flaky(0, Duration::from_secs(1));
        let stacked = ShedLayer {
            kind: TransportKind::MEMORY,
            limit: 1,
        }
        .layer(slow.clone());

        let first = publish(&stacked, request(&targets, Priority::Normal));
        let second = async {
            // Once the first holds the only slot.
            tokio::task::yield_now().await;
            let started = tokio::time::Instant::now();
            let results = publish(&stacked, request(&targets, Priority::Normal)).await;
            (results, started.elapsed())
        };
        let (first, (second, waited)) = tokio::join!(first, second);
        assert!(matches!(first[..], [Ok(true)]), "{first:?}");
        assert!(
            matches!(
                &second[..],
                [Err(TransportError::Overloaded {
                    transport: TransportKind::MEMORY,
                    gateway,
                    limit: 1,
                })] if *gateway == gateways[0]
            ),
            "{second:?}"
        );
        assert_eq!(waited, Duration::ZERO, "the refusal waited");
        assert_eq!(slow.calls(), 1, "the refused publish reached the broker");

        let third = publish(&stacked, request(&targets, Priority::Normal)).await;
        assert!(matches!(third[..], [Ok(true)]), "{third:?}");
    }
}
