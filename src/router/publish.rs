//! Publishing runs of messages that share a decision, one run per target
//! gateway, all at once: this gateway's own inbox for the local route;
//! otherwise the route stack, built once with the router, a tower service
//! of [`Routed`] made of three layers, from the top:
//!
//! - `handover.rs`: after a change of primary, wait until the old
//!   transport has gone quiet (per-pair order);
//! - `mirror.rs`: the canary mirror alongside;
//! - `fallback.rs`: the decision's transports in order, each through its
//!   own stack (`stack.rs`), every target in one call.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::error::PublishError;
use crate::inbox::{Handed, Via};
use crate::policy::live::LivePolicy;

use super::fallback::Fallback;
use super::handover::{AwaitHandover, HandoverLayer};
use super::mirror::{Mirror, MirrorLayer};
use super::plan::Planned;
use super::service::{Routed, Sent};
use super::stack::Stacks;
use super::Router;

/// The route stack the router publishes through.
pub(super) type Routes = AwaitHandover<Mirror<Fallback>>;

/// Stacks the route layers over every transport's stack.
pub(super) fn routes(stacks: Stacks, policy: &Arc<LivePolicy>) -> Routes {
    ServiceBuilder::new()
        .layer(HandoverLayer {
            policy: policy.clone(),
        })
        .layer(MirrorLayer {
            stacks: stacks.clone(),
            policy: policy.clone(),
        })
        .service(Fallback { stacks })
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
                return Sent::failed(PublishError::InboxClosed);
            }
        }
        Sent {
            result: Ok(Via::Local),
            confirmed: true,
            mirrored: None,
        }
    }

    /// Publishes every target's run through the route stack. One [`Sent`]
    /// per target, in order.
    pub(super) async fn publish(&self, routed: Routed<'_>) -> Vec<Sent> {
        super::service::call(&self.inner.routes, routed).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use bytes::Bytes;
    use parking_lot::Mutex;

    use super::*;
    use crate::cause::Cause;
    use crate::config::DeliveryConfig;
    use crate::envelope::Priority;
    use crate::policy::{Decision, Policy, Route, RoutingConfig};
    use crate::router::service::call;
    use crate::topology::{GatewayId, Region};
    use crate::transport::{
        Ack, Capabilities, Health, Outgoing, Subscription, Transport, TransportError,
        TransportKind, Transports,
    };

    /// A broker that takes a while, refuses the gateways it was told to,
    /// and remembers every gateway it took a run for.
    struct Broker {
        kind: TransportKind,
        delay: Duration,
        refuses: Vec<GatewayId>,
        took: Mutex<Vec<GatewayId>>,
    }

    impl Broker {
        fn new(name: &str, delay: Duration, refuses: &[&'static str]) -> Arc<Self> {
            Arc::new(Self {
                kind: TransportKind::named(name).expect("a name"),
                delay,
                refuses: refuses.iter().map(|&g| GatewayId::from(g)).collect(),
                took: Mutex::default(),
            })
        }

        fn took(&self) -> Vec<GatewayId> {
            self.took.lock().clone()
        }
    }

    #[async_trait]
    impl Transport for Broker {
        fn kind(&self) -> TransportKind {
            self.kind
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                durable: true,
                ordered: true,
                redelivers: false,
                direct: false,
            }
        }

        async fn publish(&self, to: &GatewayId, _: &[Bytes], _: Ack) -> Result<(), TransportError> {
            tokio::time::sleep(self.delay).await;
            if self.refuses.contains(to) {
                return Err(TransportError::Publish {
                    transport: self.kind,
                    gateway: to.clone(),
                    reason: Cause::from_message("refused"),
                });
            }
            self.took.lock().push(to.clone());
            Ok(())
        }

        async fn subscribe(&self, _: &GatewayId) -> Result<Subscription, TransportError> {
            Ok(Subscription::new(Box::pin(futures::stream::pending())))
        }

        fn health(&self) -> Health {
            Health::Up
        }

        fn confirms(&self, _: Ack) -> bool {
            true
        }
    }

    /// The route stack over `brokers`, on the default policy (handover
    /// 500 ms, mirror wait 100 ms).
    fn route_stack(brokers: &[Arc<Broker>]) -> Routes {
        let mut transports = Transports::default();
        for broker in brokers {
            transports.insert(broker.clone());
        }
        let kinds: Vec<TransportKind> = brokers.iter().map(|b| b.kind).collect();
        let routing = RoutingConfig {
            same_region: kinds[0].as_str().into(),
            cross_region: kinds[0].as_str().into(),
            ..RoutingConfig::default()
        };
        let policy = LivePolicy::new(Policy::new(&routing, None, &kinds).expect("policy"));
        let stacks = Stacks::new(&transports, &DeliveryConfig::default(), &policy);
        routes(stacks, &policy)
    }

    fn decision(transports: &[&Arc<Broker>], mirror: Option<&Arc<Broker>>) -> Decision {
        Decision {
            route: Route::SameRegion,
            transports: transports.iter().map(|b| b.kind).collect(),
            mirror: mirror.map(|b| b.kind),
            cohort: mirror.is_some(),
            reason: "test",
        }
    }

    /// One message to each of `gateways` through `routes`.
    async fn send(routes: &Routes, gateways: &[&'static str], decision: &Decision) -> Vec<Sent> {
        let ids: Vec<GatewayId> = gateways.iter().map(|&g| GatewayId::from(g)).collect();
        let batch = [Bytes::from_static(b"m")];
        let targets: Vec<Outgoing<'_>> = ids
            .iter()
            .map(|to| Outgoing { to, batch: &batch })
            .collect();
        let regions = vec![Region::from("eu"); ids.len()];
        let routed = Routed {
            targets: &targets,
            regions: &regions,
            priority: Priority::Normal,
            decision,
        };
        call(routes, routed).await
    }

    fn via(sent: &Sent) -> Option<&'static str> {
        sent.result.as_ref().ok().map(|via| via.as_str())
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_gateways_the_primary_refused_go_to_the_fallback() {
        let primary = Broker::new("primary", Duration::ZERO, &["gw-bad"]);
        let fallback = Broker::new("fallback", Duration::ZERO, &[]);
        let routes = route_stack(&[primary.clone(), fallback.clone()]);

        let sent = send(
            &routes,
            &["gw-ok", "gw-bad"],
            &decision(&[&primary, &fallback], None),
        )
        .await;

        assert_eq!(via(&sent[0]), Some("primary"), "{sent:?}");
        assert_eq!(via(&sent[1]), Some("fallback"), "{sent:?}");
        assert!(sent.iter().all(|s| s.confirmed), "{sent:?}");
        assert_eq!(fallback.took(), [GatewayId::from("gw-bad")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_no_transport_took_carries_each_ones_error_in_order() {
        let primary = Broker::new("primary", Duration::ZERO, &["gw-2"]);
        let fallback = Broker::new("fallback", Duration::ZERO, &["gw-2"]);
        let routes = route_stack(&[primary.clone(), fallback.clone()]);

        let sent = send(&routes, &["gw-2"], &decision(&[&primary, &fallback], None)).await;

        let Err(PublishError::Failed(errors)) = &sent[0].result else {
            panic!("taken: {sent:?}");
        };
        let tried: Vec<&str> = errors
            .iter()
            .map(|err| match err {
                TransportError::Publish { transport, .. } => transport.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(tried, ["primary", "fallback"]);
        assert!(!sent[0].confirmed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_mirror_takes_what_the_primary_refused() {
        let primary = Broker::new("primary", Duration::ZERO, &["gw-2"]);
        let canary = Broker::new("canary", Duration::from_millis(5), &[]);
        let routes = route_stack(&[primary.clone(), canary.clone()]);

        let sent = send(&routes, &["gw-2"], &decision(&[&primary], Some(&canary))).await;

        assert_eq!(via(&sent[0]), Some("canary"), "{sent:?}");
        assert!(sent[0].confirmed);
        assert_eq!(sent[0].mirrored, Some(canary.kind));
    }

    /// The primary took the run: a slow mirror holds the send for
    /// `mirror_wait` only, then finishes in the background.
    #[tokio::test(start_paused = true)]
    async fn a_slow_mirror_holds_the_send_for_the_mirror_wait_then_finishes_alone() {
        let primary = Broker::new("primary", Duration::ZERO, &[]);
        let canary = Broker::new("canary", Duration::from_secs(1), &[]);
        let routes = route_stack(&[primary.clone(), canary.clone()]);

        let started = tokio::time::Instant::now();
        let sent = send(&routes, &["gw-2"], &decision(&[&primary], Some(&canary))).await;

        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(via(&sent[0]), Some("primary"), "{sent:?}");
        assert_eq!(sent[0].mirrored, None, "reported mirrored before it was");
        assert!(canary.took().is_empty());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            canary.took(),
            [GatewayId::from("gw-2")],
            "the mirror gave up"
        );
    }

    /// After a change of primary, the first publish to a gateway waits
    /// until the old transport has been quiet for `canary.handover`; one
    /// that stays on its transport does not wait.
    #[tokio::test(start_paused = true)]
    async fn a_change_of_primary_waits_out_the_handover_once() {
        let redis = Broker::new("old", Duration::ZERO, &[]);
        let kafka = Broker::new("new", Duration::ZERO, &[]);
        let routes = route_stack(&[redis.clone(), kafka.clone()]);
        let timed = |decision: Decision| {
            let routes = routes.clone();
            async move {
                let started = tokio::time::Instant::now();
                send(&routes, &["gw-2"], &decision).await;
                started.elapsed()
            }
        };

        assert_eq!(timed(decision(&[&redis], None)).await, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let waited = timed(decision(&[&kafka], None)).await;
        assert_eq!(
            waited,
            Duration::from_millis(300),
            "quiet for 500 ms in all"
        );
        assert_eq!(timed(decision(&[&kafka], None)).await, Duration::ZERO);
    }
}
