//! What the router puts around each transport: a timeout per attempt,
//! retries for high priority, canary feedback and publish metrics, each a
//! [`tower::Layer`] around a [`Publisher`], stacked once per transport when
//! the router is built. The router itself only asks a stack to publish.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use metrics::Histogram;
use tower::{Layer, ServiceBuilder};

use crate::cause::Report;
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

/// Something that publishes to several gateways at once and says, per
/// gateway, whether the publish was confirmed. Statically dispatched: a
/// stack is one type.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// The transport at the bottom of the stack.
    fn kind(&self) -> TransportKind;

    /// Publishes every target's run; one result per target.
    fn publish(&self, publish: Publish<'_>) -> impl Future<Output = Published> + Send;
}

/// The bottom of every stack, the transport itself: low priority does not
/// wait for the broker. (A named type, not `Arc<dyn Transport>` itself: a
/// spawned stack's future must not carry the trait object's lifetime.)
pub(crate) struct Bare(Arc<dyn Transport>);

impl Publisher for Bare {
    fn kind(&self) -> TransportKind {
        self.0.kind()
    }

    async fn publish(&self, publish: Publish<'_>) -> Published {
        let ack = match publish.priority {
            Priority::Low => Ack::None,
            Priority::Normal | Priority::High => Ack::Confirmed,
        };
        let confirms = self.0.confirms(ack);
        let results = self.0.publish_many(publish.targets, ack).await;
        results.into_iter().map(|r| r.map(|()| confirms)).collect()
    }
}

/// The stack the router publishes through.
pub(crate) type Stack = Metered<Feedback<Retry<Timeout<Bare>>>>;

/// One stack per enabled transport.
#[derive(Clone)]
pub(crate) struct Stacks(Vec<(TransportKind, Arc<Stack>)>);

impl Stacks {
    /// Stacks every transport with the router's delivery settings and policy.
    pub(crate) fn new(
        transports: &Transports,
        delivery: &DeliveryConfig,
        policy: &Arc<LivePolicy>,
    ) -> Self {
        let stacks = transports
            .iter()
            .map(|t| {
                (
                    t.kind(),
                    Arc::new(stack(t.clone(), delivery, policy.clone())),
                )
            })
            .collect();
        Self(stacks)
    }

    /// The stack of `kind`, if that transport is enabled.
    pub(crate) fn get(&self, kind: TransportKind) -> Result<&Arc<Stack>, TransportError> {
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
    ServiceBuilder::new()
        .layer(MeteredLayer)
        .layer(FeedbackLayer(policy))
        .layer(RetryLayer {
            retries: delivery.retries as usize,
            backoff: delivery.retry_backoff,
        })
        .layer(TimeoutLayer(delivery.publish_timeout))
        .service(Bare(transport))
}

/// Fails an attempt the transport did not finish within the limit
/// (`delivery.publish_timeout`) with [`TransportError::Timeout`].
pub(crate) struct TimeoutLayer(pub Duration);

/// See [`TimeoutLayer`].
pub(crate) struct Timeout<P> {
    inner: P,
    after: Duration,
}

impl<P> Layer<P> for TimeoutLayer {
    type Service = Timeout<P>;
    fn layer(&self, inner: P) -> Timeout<P> {
        Timeout {
            inner,
            after: self.0,
        }
    }
}

impl<P: Publisher> Publisher for Timeout<P> {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }

    /// One limit for the whole publish: its targets share a round trip, so
    /// a publish that ran out fails every target (each then falls back).
    async fn publish(&self, publish: Publish<'_>) -> Published {
        match tokio::time::timeout(self.after, self.inner.publish(publish)).await {
            Ok(results) => results,
            Err(_) => publish
                .targets
                .iter()
                .map(|target| {
                    Err(TransportError::Timeout {
                        transport: self.kind(),
                        gateway: target.to.clone(),
                        after: self.after,
                    })
                })
                .collect(),
        }
    }
}

/// Retries high-priority publishes with exponential backoff
/// (`delivery.retries`, `delivery.retry_backoff`); others get one attempt,
/// and the router falls back to the next transport instead.
pub(crate) struct RetryLayer {
    pub retries: usize,
    pub backoff: Duration,
}

/// See [`RetryLayer`].
pub(crate) struct Retry<P> {
    inner: P,
    retries: usize,
    backoff: Duration,
}

impl<P> Layer<P> for RetryLayer {
    type Service = Retry<P>;
    fn layer(&self, inner: P) -> Retry<P> {
        Retry {
            inner,
            retries: self.retries,
            backoff: self.backoff,
        }
    }
}

impl<P: Publisher> Publisher for Retry<P> {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }

    /// Only the targets that failed are published again.
    async fn publish(&self, publish: Publish<'_>) -> Published {
        let mut results = self.inner.publish(publish).await;
        if publish.priority != Priority::High || self.retries == 0 {
            return results;
        }
        let kind = self.kind();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_max_times(self.retries)
            .build();
        loop {
            let failed: Vec<usize> = (0..results.len())
                .filter(|&i| results[i].is_err())
                .collect();
            if failed.is_empty() {
                return results;
            }
            let Some(delay) = delays.next() else {
                return results;
            };
            for &i in &failed {
                if let Err(err) = &results[i] {
                    tracing::debug!(transport = %kind, gateway = %publish.targets[i].to, err = %Report(err), ?delay, "publish failed, retrying");
                }
            }
            metrics::counter!(telemetry::PUBLISH_RETRIES, "transport" => kind.as_str())
                .increment(failed.len() as u64);
            tokio::time::sleep(delay).await;
            let targets: Vec<Outgoing<'_>> = failed.iter().map(|&i| publish.targets[i]).collect();
            let regions: Vec<Region> = failed.iter().map(|&i| publish.regions[i].clone()).collect();
            let again = Publish {
                targets: &targets,
                regions: &regions,
                ..publish
            };
            for (i, result) in failed.into_iter().zip(self.inner.publish(again).await) {
                results[i] = result;
            }
        }
    }
}

/// Reports publishes (outcome, count, time to confirm, retries included)
/// to the live policy: the canary cohort's to its watchdog, every one to
/// the quality scores (which keep those of the transports a rule watches).
pub(crate) struct FeedbackLayer(pub Arc<LivePolicy>);

/// See [`FeedbackLayer`].
pub(crate) struct Feedback<P> {
    inner: P,
    policy: Arc<LivePolicy>,
}

impl<P> Layer<P> for FeedbackLayer {
    type Service = Feedback<P>;
    fn layer(&self, inner: P) -> Feedback<P> {
        Feedback {
            inner,
            policy: self.0.clone(),
        }
    }
}

impl<P: Publisher> Publisher for Feedback<P> {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }

    /// One sample per region and outcome, counting its messages: a
    /// publish to a hundred gateways is not a hundred samples' work.
    async fn publish(&self, publish: Publish<'_>) -> Published {
        let started = Instant::now();
        let results = self.inner.publish(publish).await;
        let elapsed = started.elapsed();
        let kind = self.kind();
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
                    self.policy.record_publish(kind, ok, n, confirmed_in);
                }
                self.policy
                    .record_quality(kind, region, ok, n, confirmed_in);
            }
            from = end;
        }
        results
    }
}

/// Records each publish's duration, retries included, in
/// `switchyard_publish_duration_seconds{transport, outcome}`.
pub(crate) struct MeteredLayer;

/// See [`MeteredLayer`].
pub(crate) struct Metered<P> {
    inner: P,
    /// Resolved on first use, so a recorder installed after the router was
    /// built (the sidecar builds first) is the one recording.
    histograms: OnceLock<[Histogram; 2]>,
}

impl<P> Layer<P> for MeteredLayer {
    type Service = Metered<P>;
    fn layer(&self, inner: P) -> Metered<P> {
        Metered {
            inner,
            histograms: OnceLock::new(),
        }
    }
}

impl<P: Publisher> Publisher for Metered<P> {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }

    /// One observation per outcome the publish had (a publish to many
    /// gateways can have both).
    async fn publish(&self, publish: Publish<'_>) -> Published {
        let started = Instant::now();
        let results = self.inner.publish(publish).await;
        let [ok, failed] = self.histograms.get_or_init(|| {
            let transport = self.kind().as_str();
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
        results
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::cause::Cause;
    use crate::topology::GatewayId;

    /// Fails its first `fail` attempts per target, then confirms; counts
    /// attempts per target.
    struct Flaky {
        fail: usize,
        attempts: parking_lot::Mutex<std::collections::HashMap<GatewayId, usize>>,
        calls: AtomicUsize,
        delay: Duration,
    }

    impl Publisher for Arc<Flaky> {
        fn kind(&self) -> TransportKind {
            TransportKind::MEMORY
        }

        async fn publish(&self, publish: Publish<'_>) -> Published {
            tokio::time::sleep(self.delay).await;
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut attempts = self.attempts.lock();
            publish
                .targets
                .iter()
                .map(|target| {
                    let tried = attempts.entry(target.to.clone()).or_default();
                    *tried += 1;
                    if *tried <= self.fail {
                        return Err(TransportError::Publish {
                            transport: TransportKind::MEMORY,
                            gateway: target.to.clone(),
                            reason: Cause::from_message("flaky"),
                        });
                    }
                    Ok(true)
                })
                .collect()
        }
    }

    fn flaky(fail: usize, delay: Duration) -> Arc<Flaky> {
        Arc::new(Flaky {
            fail,
            attempts: Default::default(),
            calls: AtomicUsize::new(0),
            delay,
        })
    }

    fn publish<'a>(
        targets: &'a [Outgoing<'a>],
        regions: &'a [Region],
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
        let (to, eu) = (GatewayId::new("gw-2"), Region::new("eu"));
        let targets = [Outgoing {
            to: &to,
            batch: &[],
        }];
        let regions = [eu];
        let retry = RetryLayer {
            retries: 3,
            backoff: Duration::from_millis(10),
        };
        let high = flaky(2, Duration::ZERO);
        let stacked = retry.layer(high.clone());
        let results = stacked
            .publish(publish(&targets, &regions, Priority::High))
            .await;
        assert!(matches!(results[..], [Ok(true)]), "{results:?}");
        assert_eq!(high.calls.load(Ordering::Relaxed), 3);

        let normal = flaky(2, Duration::ZERO);
        let stacked = retry.layer(normal.clone());
        assert!(stacked
            .publish(publish(&targets, &regions, Priority::Normal))
            .await[0]
            .is_err());
        assert_eq!(normal.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_publishes_again_only_to_the_gateways_that_failed() {
        let (ok, bad) = (GatewayId::new("gw-ok"), GatewayId::new("gw-bad"));
        let targets = [
            Outgoing {
                to: &ok,
                batch: &[],
            },
            Outgoing {
                to: &bad,
                batch: &[],
            },
        ];
        let regions = [Region::new("eu"), Region::new("eu")];
        // Every target fails its first two attempts, but gw-ok counts two
        // already: it is taken at once, gw-bad on its third attempt.
        let inner = flaky(2, Duration::ZERO);
        inner.attempts.lock().insert(ok.clone(), 2);
        let stacked = RetryLayer {
            retries: 3,
            backoff: Duration::from_millis(10),
        }
        .layer(inner.clone());
        let results = stacked
            .publish(publish(&targets, &regions, Priority::High))
            .await;
        assert!(matches!(results[..], [Ok(true), Ok(true)]), "{results:?}");
        let attempts = inner.attempts.lock();
        assert_eq!(attempts[&ok], 3, "gw-ok published once");
        assert_eq!(attempts[&bad], 3, "gw-bad published three times");
        assert_eq!(inner.calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_naming_the_gateway_and_limit() {
        let (to, eu) = (GatewayId::new("gw-2"), Region::new("eu"));
        let targets = [Outgoing {
            to: &to,
            batch: &[],
        }];
        let regions = [eu];
        let stacked =
            TimeoutLayer(Duration::from_millis(50)).layer(flaky(0, Duration::from_secs(1)));
        let results = stacked
            .publish(publish(&targets, &regions, Priority::Normal))
            .await;
        assert!(
            matches!(
                &results[..],
                [Err(TransportError::Timeout {
                    transport: TransportKind::MEMORY,
                    gateway,
                    after,
                })] if *gateway == to && *after == Duration::from_millis(50)
            ),
            "{results:?}"
        );
    }
}
