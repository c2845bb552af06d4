//! A gateway that embeds the library adds a transport of its own with
//! `RouterBuilder::transport`, names it in `[routing]`, and routes over it
//! exactly like over a built-in one. Its conformance: tests/it/conformance/mod.rs
//! (`relay`).

use crate::conformance::embedded as relay;

use std::sync::Arc;
use std::time::Duration;

use switchyard::config::ConfigError;
use switchyard::transport::{Transport, TransportKind};
use switchyard::{Destination, Envelope, GatewayInfo, Outcome, Router, Settings};

const ROUTING: &str = r#"
[routing]
same_region = "relay"
cross_region = "relay"
"#;

#[tokio::test]
async fn a_routing_that_names_an_added_transport_delivers_over_it_once() {
    let relay: Arc<dyn Transport> = Arc::new(relay::Relay::new());
    let settings = Settings::from_toml_with(ROUTING, &[relay.kind()]).expect("settings");
    let (sender, _) = Router::builder(GatewayInfo::new("gw-a", "eu"))
        .settings(settings.clone())
        .transport(relay.clone())
        .build()
        .await
        .expect("router a");
    let (receiver, mut inbox) = Router::builder(GatewayInfo::new("gw-b", "eu"))
        .settings(settings)
        .backends(sender.backends().clone())
        .transport(relay)
        .build()
        .await
        .expect("router b");
    receiver.connect("bob", "phone").await.expect("bob online");

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
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
            .await
            .expect("a delivery within 5 s")
            .expect("the inbox is open");
        inbox.ack(delivery.seq);
        received.push(delivery.envelope.id);
    }
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
