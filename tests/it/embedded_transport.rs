//! A gateway that embeds the library adds a transport of its own with
//! `RouterBuilder::transport`, names it in `[routing]`, and routes over it
//! exactly like over a built-in one. Its conformance: tests/it/conformance/mod.rs
//! (`relay`).

use crate::conformance::embedded as relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use switchyard::config::ConfigError;
use switchyard::transport::{
    Ack, Capabilities, Health, Subscription, Transport, TransportError, TransportKind,
};
use switchyard::{
    Destination, Envelope, GatewayId, GatewayInfo, Inbox, MessageId, Outcome, Router, Settings,
};

const ROUTING: &str = r#"
[routing]
same_region = "relay"
cross_region = "relay"
"#;

/// Alice's gateway `gw-a` and bob's `gw-b` (bob online) on one set of
/// memory backends, each router given the `added` transport.
async fn alice_and_bob(settings: Settings, added: Arc<dyn Transport>) -> (Router, Router, Inbox) {
    let (sender, _) = Router::builder(GatewayInfo::new("gw-a", "eu"))
        .settings(settings.clone())
        .transport(added.clone())
        .build()
        .await
        .expect("router a");
    let (receiver, inbox) = Router::builder(GatewayInfo::new("gw-b", "eu"))
        .settings(settings)
        .backends(sender.backends().clone())
        .transport(added)
        .build()
        .await
        .expect("router b");
    receiver.connect("bob", "phone").await.expect("bob online");
    (sender, receiver, inbox)
}

/// The ids of the next `n` deliveries, each acked, in arrival order.
async fn receive(inbox: &mut Inbox, n: usize) -> Vec<MessageId> {
    let mut received = Vec::with_capacity(n);
    while received.len() < n {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a delivery within 5 s")
            .expect("the inbox is open");
        inbox.ack(delivery.seq);
        received.push(delivery.envelope.id);
    }
    received
}

#[tokio::test]
async fn a_routing_that_names_an_added_transport_delivers_over_it_once() {
    let relay: Arc<dyn Transport> = Arc::new(relay::Relay::new());
    let settings = Settings::from_toml_with(ROUTING, &[relay.kind()]).expect("settings");
    let (sender, _receiver, mut inbox) = alice_and_bob(settings, relay).await;

    let mut sent = Vec::new();
    for i in 0..20 {
        let message = Envelope::new(
            "alice",
            "gw-a",
            Destination::User("bob".into()),
            format!("m{i}"),
        );
        sent.push(message.id);
        let report = sender.send(message).await.expect("send");
        let Outcome::Routed {
            targets,
            stored_offline: None,
        } = &report.outcome
        else {
            panic!("not routed: {report:?}");
        };
        assert_eq!(targets.len(), 1, "{report:?}");
        assert!(targets[0].confirmed, "{report:?}");
        let via = targets[0].result.as_ref().map(|via| via.as_str()).ok();
        assert_eq!(via, Some("relay"), "{report:?}");
    }
    let received = receive(&mut inbox, sent.len()).await;
    assert_eq!(received, sent, "each once, in order");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), inbox.recv())
            .await
            .is_err(),
        "nothing more arrives"
    );
}

#[tokio::test]
async fn a_routing_that_names_a_transport_nobody_added_is_refused_with_the_key() {
    let problems = |err: ConfigError| err.to_string();
    // Loading the settings without it...
    let text = problems(Settings::from_toml(ROUTING).expect_err("refused"));
    assert!(
        text.contains("routing.same_region") && text.contains("unknown transport \"relay\""),
        "{text}"
    );
    // ...and building a router without it, from settings that had it.
    let relay = TransportKind::named("relay").expect("a name");
    let settings = Settings::from_toml_with(ROUTING, &[relay]).expect("settings");
    let err = Router::builder(GatewayInfo::new("gw-a", "eu"))
        .settings(settings)
        .build()
        .await
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("routing.same_region") && text.contains("unknown transport \"relay\""),
        "{text}"
    );
}

/// A broker that takes every publish and never answers, as one that
/// stalls does.
struct Stalled(TransportKind);

#[async_trait]
impl Transport for Stalled {
    fn kind(&self) -> TransportKind {
        self.0
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            durable: false,
            ordered: true,
            redelivers: false,
            direct: false,
        }
    }

    async fn publish(&self, _: &GatewayId, _: &[Bytes], _: Ack) -> Result<(), TransportError> {
        std::future::pending().await
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

/// With `delivery.publishes_in_flight = 1`, a send that finds the bound
/// taken on a stalled transport falls back at once; the one holding it
/// falls back when its publish times out. Both reach bob, confirmed.
#[tokio::test]
async fn a_publish_over_the_in_flight_bound_falls_back_at_once() {
    let stalled: Arc<dyn Transport> = Arc::new(Stalled(
        TransportKind::named("stalled").expect("a valid transport name"),
    ));
    let config = r#"
[routing]
same_region = "stalled"
fallbacks = ["memory"]

[delivery]
publish_timeout = "3s"
publishes_in_flight = 1
"#;
    let settings = Settings::from_toml_with(config, &[stalled.kind()]).expect("settings");
    let (sender, _receiver, mut inbox) = alice_and_bob(settings, stalled).await;

    let message =
        |text: &'static str| Envelope::new("alice", "gw-a", Destination::User("bob".into()), text);
    let (holding, shed) = (message("holds the bound"), message("finds it taken"));
    let ids = [holding.id, shed.id];
    let first = {
        let sender = sender.clone();
        tokio::spawn(async move { sender.send(holding).await })
    };
    // Once the first publish holds the bound on the stalled transport.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let report = sender.send(shed).await.expect("send");
    let took = started.elapsed();
    let via = |report: &switchyard::SendReport| match &report.outcome {
        Outcome::Routed { targets, .. } if targets[0].confirmed => targets[0]
            .result
            .as_ref()
            .map(|via| via.as_str().to_owned())
            .ok(),
        _ => None,
    };
    assert_eq!(via(&report).as_deref(), Some("memory"), "{report:?}");
    assert!(
        took < Duration::from_secs(1),
        "the shed publish waited {took:?}, as if for the 3 s publish timeout"
    );
    let first = first.await.expect("the first send").expect("send");
    assert_eq!(via(&first).as_deref(), Some("memory"), "{first:?}");

    let mut received = receive(&mut inbox, 2).await;
    received.sort();
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(received, expected, "each once");
}
