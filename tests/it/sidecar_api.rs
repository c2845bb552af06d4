//! The Gateway API end to end: two sidecars on loopback, gateway clients on
//! each, sharing one in-process memory store (the Redis and Kafka variants
//! need a store both processes see).

use testkit::sidecars;

use sidecars::*;
use switchyard::proto::{self, send_outcome::Result as R};
use switchyard::{Destination, Envelope, UserId};
use tonic::Code;

#[tokio::test]
async fn a_gateway_on_sidecar_a_delivers_to_a_gateway_on_sidecar_b() {
    let (_, sidecars) = fleet(&settings(), 2).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(sidecars[1].grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;

    let outcome = send(&mut a, "gw-a", message("alice", "bob", "hello bob")).await;
    let target = &routed(&outcome).targets[0];
    assert_eq!(
        (
            target.gateway.as_str(),
            target.route(),
            target.delivered,
            target.via.as_str()
        ),
        ("gw-b", proto::Route::SameRegion, true, "memory")
    );
    assert_eq!(outcome.id.len(), 16, "the sidecar assigns an id");

    let delivery = next(&mut b_stream).await;
    let envelope = delivery.envelope.unwrap();
    assert_eq!(envelope.payload.as_ref(), b"hello bob");
    assert_eq!(envelope.sender_gateway, "gw-a");
    assert_eq!(envelope.id, outcome.id);
    assert_eq!(delivery.via, "memory");
}

#[tokio::test]
async fn a_batch_reports_each_message_and_offline_messages_replay_on_online() {
    let (_, sidecars) = fleet(&settings(), 2).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(sidecars[1].grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "us").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;

    let oversized = message("alice", "bob", &"x".repeat(2 * 1024 * 1024));
    let batch = vec![
        message("alice", "bob", "one"),
        oversized,
        message("alice", "carol", "for later"),
        proto::Envelope {
            id: vec![1, 2, 3],
            ..message("alice", "bob", "bad id")
        },
    ];
    let outcomes = send_batch_as_a(&mut a, batch).await;
    assert_eq!(outcomes.len(), 4);
    let target = &routed(&outcomes[0]).targets[0];
    assert_eq!(
        (target.route(), target.via.as_str()),
        (proto::Route::CrossRegion, "memory")
    );
    // In the receiving gateway's queue: delivered and confirmed.
    assert!(target.delivered && target.confirmed, "{target:?}");
    match &outcomes[1].result {
        Some(R::Rejected(r)) => assert!(
            r.reason.contains("over the limit of 1048576 bytes"),
            "{}",
            r.reason
        ),
        other => panic!("oversized: {other:?}"),
    }
    let carol = routed(&outcomes[2]);
    assert!(carol.targets.is_empty());
    assert_eq!(carol.stored_offline(), proto::OfflineReason::NoSession);
    match &outcomes[3].result {
        Some(R::Rejected(r)) => assert!(r.reason.contains("16 bytes"), "{}", r.reason),
        other => panic!("bad id: {other:?}"),
    }
    assert_eq!(
        next(&mut b_stream).await.envelope.unwrap().payload.as_ref(),
        b"one"
    );

    // Carol connects to gw-b: her message is replayed into gw-b's stream.
    assert_eq!(online(&mut b, "gw-b", "carol").await, 1);
    let replayed = next(&mut b_stream).await;
    assert_eq!(replayed.via, "offline");
    assert_eq!(replayed.envelope.unwrap().payload.as_ref(), b"for later");
}

async fn send_batch_as_a(
    client: &mut proto::gateway_client::GatewayClient<tonic::transport::Channel>,
    envelopes: Vec<proto::Envelope>,
) -> Vec<proto::SendOutcome> {
    client
        .send_batch(proto::SendBatchRequest {
            gateway_id: "gw-a".into(),
            envelopes,
        })
        .await
        .unwrap()
        .into_inner()
        .outcomes
}

#[tokio::test]
async fn fetch_and_ack_offline_for_a_hosted_user_only() {
    let (backends, sidecars) = fleet(&settings(), 1).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let _stream = attach(&mut a, "gw-a", "eu").await;
    online(&mut a, "gw-a", "dave").await;
    let stored = Envelope::new("erin", "gw-x", Destination::User("dave".into()), "kept");
    backends
        .offline()
        .append(&UserId::from("dave"), &stored)
        .await
        .unwrap();

    let fetched = a
        .fetch_offline(proto::FetchOfflineRequest {
            gateway_id: "gw-a".into(),
            user: "dave".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .envelopes;
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].payload.as_ref(), b"kept");
    let removed = a
        .ack_offline(proto::AckOfflineRequest {
            gateway_id: "gw-a".into(),
            user: "dave".into(),
            ids: vec![fetched[0].id.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 1);

    let status = a
        .fetch_offline(proto::FetchOfflineRequest {
            gateway_id: "gw-a".into(),
            user: "frank".into(),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn calls_before_attach_and_sends_as_foreign_users_are_refused() {
    let (_, sidecars) = fleet(&settings(), 1).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let status = a
        .heartbeat(proto::HeartbeatRequest {
            gateway_id: "gw-a".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let _stream = attach(&mut a, "gw-a", "eu").await;
    a.heartbeat(proto::HeartbeatRequest {
        gateway_id: "gw-a".into(),
    })
    .await
    .unwrap();
    let status = a
        .send(proto::SendRequest {
            gateway_id: "gw-a".into(),
            envelope: Some(message("mallory", "bob", "spoofed")),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    online(&mut a, "gw-a", "alice").await;
    let spoofed_gateway = proto::Envelope {
        sender_gateway: "gw-z".into(),
        ..message("alice", "bob", "spoofed")
    };
    let status = a
        .send(proto::SendRequest {
            gateway_id: "gw-a".into(),
            envelope: Some(spoofed_gateway),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A second stream for the same gateway is refused while the first is open.
    let request = proto::AttachRequest {
        gateway_id: "gw-a".into(),
        region: "eu".into(),
        address: String::new(),
    };
    let status = Attachment::open(&mut a, request)
        .await
        .err()
        .expect("a second stream is refused");
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn group_messages_reach_members_on_other_sidecars() {
    let (_, sidecars) = fleet(&settings(), 2).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(sidecars[1].grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;
    let join = |gateway: &str, user: &str| proto::GroupRequest {
        gateway_id: gateway.into(),
        group: "room".into(),
        user: user.into(),
    };
    a.join(join("gw-a", "alice")).await.unwrap();
    b.join(join("gw-b", "bob")).await.unwrap();
    assert_eq!(
        b.join(join("gw-b", "alice")).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    let to_room = proto::Envelope {
        destination: Some(proto::envelope::Destination::Group("room".into())),
        ..message("alice", "", "hi room")
    };
    let outcome = send(&mut a, "gw-a", to_room).await;
    let mut targets: Vec<&str> = routed(&outcome)
        .targets
        .iter()
        .map(|t| t.gateway.as_str())
        .collect();
    targets.sort();
    assert_eq!(targets, ["gw-a", "gw-b"]);
    assert_eq!(
        next(&mut b_stream).await.envelope.unwrap().payload.as_ref(),
        b"hi room"
    );
}

#[tokio::test]
async fn shutdown_ends_attach_streams_and_the_gateway_can_reattach_elsewhere() {
    let (_, mut sidecars) = fleet(&settings(), 2).await;
    let first = sidecars.remove(0);
    let mut a = gateway(first.grpc_addr()).await;
    let mut stream = attach(&mut a, "gw-a", "eu").await;
    first.shutdown().await.unwrap();
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    // UNAVAILABLE, not a normal end: the gateway can tell shutdown apart.
    assert_eq!(
        end.as_ref().map_err(|s| s.code()).err(),
        Some(tonic::Code::Unavailable),
        "{end:?}"
    );

    let mut b = gateway(sidecars[0].grpc_addr()).await;
    let _stream = attach(&mut b, "gw-a", "eu").await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (_, sidecars) = fleet(&settings(), 1).await;
    let channel = channel(sidecars[0].grpc_addr()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "switchyard.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        serving,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "grpc.health.v1.Health",
        "switchyard.v1.Admin",
        "switchyard.v1.Gateway",
        "switchyard.v1.Peer",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_gateway_gets_backpressure_and_nothing_is_lost() {
    let mut settings = settings();
    settings.limits.inbox_queue = 4;
    settings.transports.memory.as_mut().unwrap().queue = 4;
    settings.delivery.publish_timeout = std::time::Duration::from_millis(100);
    let (backends, sidecars) = fleet(&settings, 2).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(sidecars[1].grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach_stream(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;

    // gw-b reads nothing: queues and HTTP/2 windows fill up, then sends
    // time out and go to the offline store instead of piling up in memory.
    let payload = "x".repeat(4096);
    let mut delivered = 0;
    let mut stored = 0;
    for _ in 0..2000 {
        let outcome = send(&mut a, "gw-a", message("alice", "bob", &payload)).await;
        let routed = routed(&outcome);
        if routed.stored_offline() == proto::OfflineReason::TransportsFailed {
            stored += 1;
            if stored == 3 {
                break;
            }
        } else {
            delivered += 1;
        }
    }
    assert_eq!(stored, 3, "the slow gateway never pushed back");
    assert!(
        delivered < 1000,
        "{delivered} messages buffered for a gateway that reads nothing"
    );
    let waiting = backends
        .offline()
        .depth(&UserId::from("bob"))
        .await
        .unwrap();
    assert_eq!(waiting, 3);

    // Everything accepted earlier is still delivered, in order.
    for _ in 0..delivered {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(5), b_stream.next())
            .await
            .expect("a delivery within 5 s")
            .expect("stream ok")
            .expect("stream open");
        b_stream.ack(delivery.seq);
        assert_eq!(delivery.via, "memory");
    }
}
