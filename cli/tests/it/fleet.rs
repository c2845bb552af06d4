//! An in-process fleet on the memory backends, used the way a gateway uses
//! the library: connect users, send, read the inbox.

use std::time::Duration;

use bytes::Bytes;
use switchyard::envelope::EnvelopeError;
use switchyard::offline::OfflineReason;
use switchyard::policy::Route;
use switchyard::presence::Session;
use switchyard::transport::{Ack, TransportError, TransportKind};
use switchyard::{
    Backends, Delivery, Destination, Envelope, GatewayInfo, Inbox, Outcome, Priority, Router,
    SendError, Settings, StoreError, UserId, Via,
};
use switchyard_cli::demo::{self, DemoOptions};

struct Gateway {
    router: Router,
    inbox: Inbox,
}

/// Gateways sharing one set of memory backends, as in one process.
async fn fleet(gateways: &[(&'static str, &'static str)]) -> (Backends, Vec<Gateway>) {
    let settings = Settings::default();
    let backends = Backends::from_settings(&settings).await.unwrap();
    let mut fleet = Vec::new();
    for (id, region) in gateways {
        let (router, inbox) = Router::builder(GatewayInfo::new(*id, *region))
            .settings(settings.clone())
            .backends(backends.clone())
            .build()
            .await
            .unwrap();
        fleet.push(Gateway { router, inbox });
    }
    (backends, fleet)
}

fn message(from: &'static str, gateway: &'static str, to: Destination, text: &str) -> Envelope {
    Envelope::new(from, gateway, to, text.to_owned())
}

fn to(user: &'static str) -> Destination {
    Destination::User(user.into())
}

/// Reads `n` deliveries, failing if they do not come within a second.
async fn take(inbox: &mut Inbox, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(1), inbox.recv()).await {
            Ok(Some(d)) => {
                inbox.ack(d.seq);
                got.push(d);
            }
            _ => panic!("expected {n} deliveries, got {}", got.len()),
        }
    }
    got
}

/// Asserts nothing more arrives.
async fn assert_quiet(inbox: &mut Inbox) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(100), inbox.recv()).await {
        panic!("unexpected delivery: {:?}", d.envelope);
    }
}

/// Each target's gateway, route and result (an error as its text).
fn targets(outcome: &Outcome) -> Vec<(String, Route, Result<Via, String>)> {
    match outcome {
        Outcome::Routed { targets, .. } => targets
            .iter()
            .map(|t| {
                let result = t.result.clone().map_err(|e| e.to_string());
                (t.gateway.to_string(), t.route, result)
            })
            .collect(),
        Outcome::Blocked => panic!("blocked"),
    }
}

#[tokio::test]
async fn a_message_crosses_regions_exactly_once_and_in_order() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("us-1", "us")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    gw[1].router.connect("bob", "phone").await.unwrap();

    let mut sent = Vec::new();
    for i in 0..200 {
        let report = gw[0]
            .router
            .send(message("alice", "eu-1", to("bob"), &format!("m{i}")))
            .await
            .unwrap();
        assert_eq!(
            targets(&report.outcome),
            [(
                "us-1".into(),
                Route::CrossRegion,
                Ok(Via::Transport(TransportKind::MEMORY))
            )]
        );
        sent.push(report.id);
    }
    let got: Vec<_> = take(&mut gw[1].inbox, 200)
        .await
        .iter()
        .map(|d| d.envelope.id)
        .collect();
    assert_eq!(got, sent, "every message once, in send order");
    assert_quiet(&mut gw[1].inbox).await;
    assert_quiet(&mut gw[0].inbox).await;
}

#[tokio::test]
async fn a_user_on_several_devices_gets_one_copy_per_gateway() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    gw[1].router.connect("bob", "phone").await.unwrap();
    gw[1].router.connect("bob", "tablet").await.unwrap();
    gw[2].router.connect("bob", "laptop").await.unwrap();

    let report = gw[0]
        .router
        .send(message("alice", "eu-1", to("bob"), "hi"))
        .await
        .unwrap();
    let mut routes: Vec<_> = targets(&report.outcome)
        .into_iter()
        .map(|(g, r, _)| (g, r))
        .collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            ("eu-2".into(), Route::SameRegion),
            ("us-1".into(), Route::CrossRegion)
        ]
    );
    assert_eq!(take(&mut gw[1].inbox, 1).await[0].envelope.id, report.id);
    assert_eq!(take(&mut gw[2].inbox, 1).await[0].envelope.id, report.id);
    assert_quiet(&mut gw[1].inbox).await;
}

#[tokio::test]
async fn a_message_to_a_user_on_the_same_gateway_never_leaves_it() {
    let (_, mut gw) = fleet(&[("eu-1", "eu")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    gw[0].router.connect("bob", "phone").await.unwrap();
    let report = gw[0]
        .router
        .send(message("alice", "eu-1", to("bob"), "hi"))
        .await
        .unwrap();
    assert_eq!(
        targets(&report.outcome),
        [("eu-1".into(), Route::Local, Ok(Via::Local))]
    );
    assert_eq!(take(&mut gw[0].inbox, 1).await[0].via, Via::Local);
}

#[tokio::test]
async fn a_group_message_is_published_once_per_gateway_not_per_member() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    // 9 members on three gateways, one offline member.
    for i in 0..9 {
        let member = UserId::try_from(format!("m{i}")).unwrap();
        gw[i % 3].router.connect(member.clone(), "d").await.unwrap();
        gw[0].router.join("room", member).await.unwrap();
    }
    gw[0].router.join("room", "offline-member").await.unwrap();

    let group = Destination::Group("room".into());
    let report = gw[0]
        .router
        .send(message("alice", "eu-1", group.clone(), "hello"))
        .await
        .unwrap();
    assert_eq!(targets(&report.outcome).len(), 3, "one publish per gateway");
    for g in gw.iter_mut() {
        assert_eq!(take(&mut g.inbox, 1).await[0].envelope.id, report.id);
        assert_quiet(&mut g.inbox).await;
    }

    // When the last members on us-1 leave, us-1 is no longer a target.
    for i in [2, 5, 8] {
        let member = UserId::try_from(format!("m{i}")).unwrap();
        gw[2].router.disconnect(member, "d").await.unwrap();
    }
    let report = gw[0]
        .router
        .send(message("alice", "eu-1", group, "again"))
        .await
        .unwrap();
    let mut gateways: Vec<_> = targets(&report.outcome)
        .into_iter()
        .map(|(g, _, _)| g)
        .collect();
    gateways.sort();
    assert_eq!(gateways, ["eu-1", "eu-2"]);
}

#[tokio::test]
async fn offline_messages_are_stored_and_replayed_in_order_on_connect() {
    let (backends, mut gw) = fleet(&[("eu-1", "eu"), ("us-1", "us")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    let mut sent = Vec::new();
    for i in 0..5 {
        let report = gw[0]
            .router
            .send(message("alice", "eu-1", to("bob"), &format!("m{i}")))
            .await
            .unwrap();
        assert!(
            matches!(
                &report.outcome,
                Outcome::Routed {
                    targets,
                    stored_offline: Some(OfflineReason::NoSession)
                } if targets.is_empty()
            ),
            "{:?}",
            report.outcome
        );
        sent.push(report.id);
    }
    assert_eq!(backends.offline().depth(&"bob".into()).await.unwrap(), 5);

    assert_eq!(gw[1].router.connect("bob", "phone").await.unwrap(), 5);
    let replayed = take(&mut gw[1].inbox, 5).await;
    assert!(replayed.iter().all(|d| d.via == Via::Offline));
    assert_eq!(
        replayed.iter().map(|d| d.envelope.id).collect::<Vec<_>>(),
        sent
    );
    // Removed from the store once the gateway acked (`take` acks each).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while backends.offline().depth(&"bob".into()).await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acked offline messages are still stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn when_every_transport_fails_the_message_is_stored_offline() {
    let (backends, gw) = fleet(&[("eu-1", "eu")]).await;
    // bob's session points at a gateway that is not reading its address.
    backends
        .directory()
        .online(Session {
            user: "bob".into(),
            device: "phone".into(),
            gateway: "eu-ghost".into(),
            region: "eu".into(),
            since_micros: 0,
        })
        .await
        .unwrap();
    for priority in [Priority::High, Priority::Normal, Priority::Low] {
        let env = message("alice", "eu-1", to("bob"), "hi").with_priority(priority);
        let report = gw[0].router.send(env).await.unwrap();
        let Outcome::Routed {
            targets,
            stored_offline,
        } = report.outcome
        else {
            panic!()
        };
        assert_eq!(
            stored_offline,
            Some(OfflineReason::TransportsFailed),
            "{priority:?}"
        );
        let err = targets[0].result.clone().unwrap_err();
        assert!(
            matches!(
                err.transport_errors(),
                [TransportError::NoSubscriber { .. }]
            ),
            "{err}"
        );
    }
    assert_eq!(backends.offline().depth(&"bob".into()).await.unwrap(), 3);
}

#[tokio::test]
async fn a_blocked_sender_reaches_nobody() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu")]).await;
    gw[0].router.connect("alice", "phone").await.unwrap();
    gw[1].router.connect("bob", "phone").await.unwrap();
    gw[1].router.block("bob", "alice").await.unwrap();
    let report = gw[0]
        .router
        .send(message("alice", "eu-1", to("bob"), "hi"))
        .await
        .unwrap();
    assert!(matches!(report.outcome, Outcome::Blocked), "{report:?}");
    assert_quiet(&mut gw[1].inbox).await;

    gw[1].router.unblock("bob", "alice").await.unwrap();
    gw[0]
        .router
        .send(message("alice", "eu-1", to("bob"), "hi"))
        .await
        .unwrap();
    take(&mut gw[1].inbox, 1).await;
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_and_the_rest_of_the_batch_goes_through() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu")]).await;
    gw[1].router.connect("bob", "phone").await.unwrap();
    let oversized = message("alice", "eu-1", to("bob"), &"x".repeat(1024 * 1024 + 1));
    let mut expired = message("alice", "eu-1", to("bob"), "hi").with_ttl(Duration::from_secs(1));
    expired.created_at_micros -= 2_000_000;
    let no_group = message("alice", "eu-1", Destination::Group("nope".into()), "hi");
    let batch = vec![
        message("alice", "eu-1", to("bob"), "first"),
        oversized.clone(),
        expired.clone(),
        no_group.clone(),
        message("alice", "eu-1", to("bob"), "last"),
    ];
    let results = gw[0].router.send_batch(batch).await;
    assert!(results[0].is_ok());
    assert!(
        matches!(
            &results[1],
            Err(SendError::Invalid(EnvelopeError::PayloadTooLarge {
                id,
                size: 1_048_577,
                limit: 1_048_576,
            })) if *id == oversized.id
        ),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(
            &results[2],
            Err(SendError::Invalid(EnvelopeError::Expired { id, .. })) if *id == expired.id
        ),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(
            &results[3],
            Err(SendError::Store {
                id,
                source: StoreError::UnknownGroup(group),
            }) if *id == no_group.id && group.as_str() == "nope"
        ),
        "{:?}",
        results[3]
    );
    assert!(results[4].is_ok());
    let got = take(&mut gw[1].inbox, 2).await;
    assert_eq!(got[0].envelope.payload, Bytes::from("first"));
    assert_eq!(got[1].envelope.payload, Bytes::from("last"));
}

#[tokio::test]
async fn malformed_bytes_on_a_subscription_are_dropped_and_the_stream_goes_on() {
    let (backends, mut gw) = fleet(&[("eu-1", "eu")]).await;
    let memory = backends.transports().get(TransportKind::MEMORY).unwrap();
    let good = message("alice", "eu-2", to("bob"), "ok");
    let batch = [Bytes::from_static(b"\x0a\xff garbage"), good.encode()];
    memory
        .publish(&"eu-1".into(), &batch, Ack::Confirmed)
        .await
        .unwrap();
    assert_eq!(take(&mut gw[0].inbox, 1).await[0].envelope, good);
    assert_quiet(&mut gw[0].inbox).await;
}

#[tokio::test]
async fn a_retried_message_is_delivered_once() {
    let (_, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu")]).await;
    gw[1].router.connect("bob", "phone").await.unwrap();
    let env = message("alice", "eu-1", to("bob"), "once");
    gw[0].router.send(env.clone()).await.unwrap();
    gw[0].router.send(env.clone()).await.unwrap();
    assert_eq!(take(&mut gw[1].inbox, 1).await[0].envelope, env);
    assert_quiet(&mut gw[1].inbox).await;
}

#[tokio::test]
async fn the_demo_fleet_loses_and_duplicates_nothing() {
    let options = DemoOptions {
        users: 300,
        messages: 3000,
        groups: 5,
        group_size: 20,
        rate: 0,
        ..DemoOptions::default()
    };
    let report = demo::run(Settings::default(), options, |_| {})
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.messages, 3000);
    assert!(report.replayed > 0, "some users were offline");
    let delivered: u64 = report.rows.values().map(|r| r.delivered).sum();
    assert!(
        delivered > 3000,
        "multi-device and groups fan out: {delivered}"
    );
}

#[tokio::test]
async fn messages_stored_while_the_user_is_online_come_with_the_next_heartbeat() {
    let (backends, mut gw) = fleet(&[("eu-1", "eu"), ("eu-2", "eu")]).await;
    gw[1].router.connect("bob", "phone").await.unwrap();
    // eu-2 closes its inbox: bob's session stays, publishes to it fail.
    let Gateway { router: old, inbox } = gw.pop().unwrap();
    inbox.close().await;
    let report = gw[0]
        .router
        .send(message("alice", "eu-1", to("bob"), "while you were away"))
        .await
        .unwrap();
    let Outcome::Routed { stored_offline, .. } = &report.outcome else {
        panic!("{:?}", report.outcome);
    };
    assert_eq!(*stored_offline, Some(OfflineReason::TransportsFailed));
    drop(old);
    // eu-2 comes back without bob connecting again: its heartbeat replays.
    let (router, mut inbox) = Router::builder(GatewayInfo::new("eu-2", "eu"))
        .backends(backends.clone())
        .build()
        .await
        .unwrap();
    router.heartbeat().await.unwrap();
    let got = take(&mut inbox, 1).await;
    assert_eq!(got[0].envelope.id, report.id);
    assert_eq!(got[0].via, Via::Offline);
}
