//! What the router puts around each transport: a timeout per attempt,
//! retries for high priority, canary feedback and publish metrics, each a
//! [`tower::Layer`] around a [`Publisher`], stacked once per transport when
//! the router is built. The router itself only asks a stack to publish.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use metrics::Histogram;
use tower::{Layer, ServiceBuilder};

use crate::config::DeliveryConfig;
use crate::envelope::Priority;
use crate::policy::live::LivePolicy;
use crate::telemetry;
use crate::topology::{GatewayId, Region};
use crate::transport::{Ack, Transport, TransportError, TransportKind, Transports};

/// One publish as the router asks it: a run of encoded envelopes of one
/// priority to one gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Publish<'a> {
    pub to: &'a GatewayId,
    /// The gateway's region: what the quality scores are kept per.
    pub region: &'a Region,
    pub batch: &'a [Bytes],
    pub priority: Priority,
    /// Part of the canary cohort (or its mirror): feeds the watchdog.
    pub cohort: bool,
}

/// Something that publishes and says whether the publish was confirmed
/// ([`Transport::confirms`]). Statically dispatched: a stack is one type.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// The transport at the bottom of the stack.
    fn kind(&self) -> TransportKind;

    /// Publishes; `Ok(confirmed)`.
    fn publish(
        &self,
        publish: Publish<'_>,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send;
}

/// The bottom of every stack, the transport itself: low priority does not
/// wait for the broker. (A named type, not `Arc<dyn Transport>` itself: a
/// spawned stack's future must not carry the trait object's lifetime.)
pub(crate) struct Bare(Arc<dyn Transport>);

impl Publisher for Bare {
    fn kind(&self) -> TransportKind {
        self.0.kind()
    }

    async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
        let ack = match publish.priority {
            Priority::Low => Ack::None,
            Priority::Normal | Priority::High => Ack::Confirmed,
        };
        self.0.publish(publish.to, publish.batch, ack).await?;
        Ok(self.0.confirms(ack))
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

    async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
        tokio::time::timeout(self.after, self.inner.publish(publish))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Timeout {
                    transport: self.kind(),
                    gateway: publish.to.clone(),
                    after: self.after,
                })
            })
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

    async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
        if publish.priority != Priority::High || self.retries == 0 {
            return self.inner.publish(publish).await;
        }
        let kind = self.kind();
        (|| self.inner.publish(publish))
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(self.backoff)
                    .with_max_times(self.retries),
            )
            .notify(|err, delay| {
                tracing::debug!(transport = %kind, gateway = %publish.to, %err, ?delay, "publish failed, retrying");
                metrics::counter!(telemetry::PUBLISH_RETRIES, "transport" => kind.as_str())
                    .increment(1);
            })
            .await
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

    async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
        let started = Instant::now();
        let result = self.inner.publish(publish).await;
        let confirmed_in = matches!(result, Ok(true)).then(|| started.elapsed());
        let (kind, ok, n) = (self.kind(), result.is_ok(), publish.batch.len() as u64);
        if publish.cohort {
            self.policy.record_publish(kind, ok, n, confirmed_in);
        }
        self.policy
            .record_quality(kind, publish.region, ok, n, confirmed_in);
        result
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

    async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
        let started = Instant::now();
        let result = self.inner.publish(publish).await;
        let [ok, failed] = self.histograms.get_or_init(|| {
            let transport = self.kind().as_str();
            [
                metrics::histogram!(telemetry::PUBLISH_DURATION, "transport" => transport, "outcome" => "ok"),
                metrics::histogram!(telemetry::PUBLISH_DURATION, "transport" => transport, "outcome" => "failed"),
            ]
        });
        if result.is_ok() { ok } else { failed }.record(started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fails its first `fail` publishes, then confirms; counts attempts.
    struct Flaky {
        fail: usize,
        attempts: AtomicUsize,
        delay: Duration,
    }

    impl Publisher for Arc<Flaky> {
        fn kind(&self) -> TransportKind {
            TransportKind::Memory
        }

        async fn publish(&self, publish: Publish<'_>) -> Result<bool, TransportError> {
            tokio::time::sleep(self.delay).await;
            if self.attempts.fetch_add(1, Ordering::Relaxed) < self.fail {
                return Err(TransportError::Publish {
                    transport: TransportKind::Memory,
                    gateway: publish.to.clone(),
                    reason: "flaky".into(),
                });
            }
            Ok(true)
        }
    }

    fn flaky(fail: usize, delay: Duration) -> Arc<Flaky> {
        Arc::new(Flaky {
            fail,
            attempts: AtomicUsize::new(0),
            delay,
        })
    }

    fn publish<'a>(to: &'a GatewayId, region: &'a Region, priority: Priority) -> Publish<'a> {
        Publish {
            to,
            region,
            batch: &[],
            priority,
            cohort: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_is_retried_and_normal_is_not() {
        let (to, eu) = (GatewayId::new("gw-2"), Region::new("eu"));
        let retry = RetryLayer {
            retries: 3,
            backoff: Duration::from_millis(10),
        };
        let high = flaky(2, Duration::ZERO);
        let stacked = retry.layer(high.clone());
        assert_eq!(
            stacked.publish(publish(&to, &eu, Priority::High)).await,
            Ok(true)
        );
        assert_eq!(high.attempts.load(Ordering::Relaxed), 3);

        let normal = flaky(2, Duration::ZERO);
        let stacked = retry.layer(normal.clone());
        assert!(stacked
            .publish(publish(&to, &eu, Priority::Normal))
            .await
            .is_err());
        assert_eq!(normal.attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_attempt_times_out_naming_the_gateway_and_limit() {
        let (to, eu) = (GatewayId::new("gw-2"), Region::new("eu"));
        let stacked =
            TimeoutLayer(Duration::from_millis(50)).layer(flaky(0, Duration::from_secs(1)));
        let err = stacked
            .publish(publish(&to, &eu, Priority::Normal))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            TransportError::Timeout {
                transport: TransportKind::Memory,
                gateway: to,
                after: Duration::from_millis(50),
            }
        );
    }
}
