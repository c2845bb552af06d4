//! Operating the sidecar: auth refusals, hot-pair promotion and demotion,
//! direct-link failure and live reload.

use std::collections::BTreeMap;
use std::time::Duration;

use sidecars::*;
use switchyard::cause::Report;
use switchyard::proto;
use switchyard::sidecar::{SecretSource, Sidecar};
use testkit::sidecars;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn auth_refuses_missing_and_wrong_tokens_and_impersonation() {
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        SecretSource {
            env: None,
            file: Some(path),
        }
    };
    let mut settings = settings();
    settings.sidecar.tokens = BTreeMap::from([
        ("gw-a".to_string(), secret("a", "token-a")),
        ("gw-b".to_string(), secret("b", "token-b")),
    ]);
    settings.sidecar.admin_token = Some(secret("admin", "token-admin"));
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let attach = |gateway: &str| proto::AttachRequest {
        gateway_id: gateway.into(),
        region: "eu".into(),
        address: String::new(),
    };

    let status = Attachment::open(&mut client, attach("gw-a"))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::Unauthenticated, "no token: {status:?}");
    let status = Attachment::open(&mut client, bearer(attach("gw-a"), "token-x"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "wrong token: {status:?}"
    );
    let status = Attachment::open(&mut client, bearer(attach("gw-b"), "token-a"))
        .await
        .err()
        .expect("refused");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "as another gateway: {status:?}"
    );
    assert!(
        !status.message().contains("token-a"),
        "a token leaked: {status:?}"
    );
    let _stream = Attachment::open(&mut client, bearer(attach("gw-a"), "token-a"))
        .await
        .unwrap();
    client
        .heartbeat(bearer(
            proto::HeartbeatRequest {
                gateway_id: "gw-a".into(),
            },
            "token-a",
        ))
        .await
        .unwrap();

    let mut admin = admin(sidecar.grpc_addr()).await;
    let status = admin.state(proto::StateRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = admin
        .state(bearer(proto::StateRequest {}, "token-a"))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "a gateway token is not the admin token"
    );
    admin
        .state(bearer(proto::StateRequest {}, "token-admin"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_hot_pair_is_promoted_to_the_direct_link_and_demoted_when_cool() {
    // 10/s over 2 s: the 20th message in the window promotes the pair.
    let settings = with_direct_links(10.0, 5.0, Duration::from_secs(2));
    let AliceAndBob {
        sidecars,
        mut a,
        a_stream: _a_stream,
        mut b_stream,
        ..
    } = alice_and_bob(&settings).await;

    let counts = send_counting(&mut a, 30).await;
    assert_eq!(
        counts,
        BTreeMap::from([("grpc".into(), 11), ("memory".into(), 19)])
    );
    let mut received = BTreeMap::new();
    for i in 0..30 {
        let delivery = next(&mut b_stream).await;
        assert_eq!(
            delivery.envelope.unwrap().payload.as_ref(),
            format!("m{i}").as_bytes()
        );
        *received.entry(delivery.via).or_insert(0) += 1;
    }
    assert_eq!(received, counts, "the receiver saw the same split");

    let mut admin = admin(sidecars[0].grpc_addr()).await;
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.hot_pairs.len(), 1);
    assert_eq!(
        (
            state.hot_pairs[0].from_gateway.as_str(),
            state.hot_pairs[0].to_gateway.as_str()
        ),
        ("gw-a", "gw-b")
    );
    assert_eq!(state.hot_pairs[0].per_second, 15.0);

    // Once the window has slid past the burst the pair is cool again.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(state.hot_pairs.is_empty(), "{:?}", state.hot_pairs);
    assert_eq!(
        send_counting(&mut a, 1).await,
        BTreeMap::from([("memory".into(), 1)])
    );
}

#[tokio::test]
async fn a_failed_direct_link_falls_back_to_the_broker_route_without_loss() {
    // Every message is hot at once: 1/s over 1 s.
    let settings = with_direct_links(1.0, 0.5, Duration::from_secs(1));
    let (backends, sidecars) = fleet(&settings, 1).await;
    // gw-b's sidecar advertises a peer address where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut unreachable = settings.clone();
    unreachable.sidecar.advertise = dead.to_string();
    let b_sidecar = Sidecar::start_with_backends(unreachable, None, backends)
        .await
        .unwrap();
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(b_sidecar.grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;

    let counts = send_counting(&mut a, 20).await;
    assert_eq!(counts, BTreeMap::from([("memory".into(), 20)]));
    for i in 0..20 {
        let delivery = next(&mut b_stream).await;
        assert_eq!(
            delivery.envelope.unwrap().payload.as_ref(),
            format!("m{i}").as_bytes()
        );
    }
    let state = admin(sidecars[0].grpc_addr())
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.hot_pairs.len(), 1, "still hot, only the link is down");
    let (_, metrics) = http_get(sidecars[0].telemetry_addr(), "/metrics").await;
    assert!(
        metrics.contains("switchyard_peer_link_failures_total"),
        "{metrics}"
    );
}

const GOOD: &str = r#"
[sidecar]
listen = "127.0.0.1:0"
[telemetry]
listen = "127.0.0.1:0"
[routing]
same_region = "memory"
cross_region = "memory"
"#;

#[tokio::test]
async fn a_bad_reload_keeps_the_old_config_and_a_good_one_applies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, GOOD).unwrap();
    let settings = switchyard::Settings::load(Some(&path)).unwrap();
    let sidecar = Sidecar::start(settings, Some(path.clone())).await.unwrap();
    let mut admin = admin(sidecar.grpc_addr()).await;

    std::fs::write(
        &path,
        GOOD.replace("cross_region = \"memory\"", "cross_region = \"kafak\""),
    )
    .unwrap();
    let report = admin
        .reload(proto::ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!report.applied);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(report.problems[0].key, "routing.cross_region");
    assert!(
        report.problems[0]
            .reason
            .contains("unknown transport \"kafak\""),
        "{:?}",
        report.problems
    );
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        state.routing.unwrap().cross_region,
        "memory",
        "the old config stays"
    );

    // Valid: routing applies at once; a new listen address needs a restart.
    let changed = GOOD
        .replace("[routing]", "[routing]\nfallbacks = [\"memory\"]")
        .replace(
            "[sidecar]\nlisten = \"127.0.0.1:0\"",
            "[sidecar]\nlisten = \"127.0.0.1:1\"",
        );
    std::fs::write(&path, changed).unwrap();
    let report = admin
        .reload(proto::ReloadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(report.applied, "{report:?}");
    assert_eq!(report.restart_required, ["sidecar.listen"]);
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.routing.unwrap().fallbacks, ["memory"]);
}

#[tokio::test]
async fn the_config_file_is_watched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, GOOD).unwrap();
    let settings = switchyard::Settings::load(Some(&path)).unwrap();
    let sidecar = Sidecar::start(settings, Some(path.clone())).await.unwrap();
    let mut admin = admin(sidecar.grpc_addr()).await;
    std::fs::write(
        &path,
        GOOD.replace("[routing]", "[routing]\nfallbacks = [\"memory\"]"),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = admin
            .state(proto::StateRequest {})
            .await
            .unwrap()
            .into_inner();
        if state.routing.unwrap().fallbacks == ["memory"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file change was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_grpc_transport_names_what_failed() {
    use switchyard::transport::grpc::PeerLinks;
    use switchyard::transport::{Ack, Transport};
    use switchyard::{GatewayId, GatewayInfo};

    let settings = with_direct_links(1.0, 0.5, Duration::from_secs(1));
    let (backends, sidecars) = fleet(&settings, 1).await;
    let links = backends.extension::<PeerLinks>().cloned().unwrap().0;
    let batch = [bytes::Bytes::from_static(b"not even an envelope")];

    let err = links
        .publish(&GatewayId::from("nowhere"), &batch, Ack::Confirmed)
        .await
        .unwrap_err();
    // What failed and with which gateway; why is its source.
    assert_eq!(err.to_string(), "grpc: publish to gateway nowhere failed");
    assert_eq!(
        std::error::Error::source(&err).map(|cause| cause.to_string()),
        Some("gateway is not registered".to_owned())
    );

    // Registered at a live sidecar, but nobody subscribed there: the peer's ack says so.
    let mut ghost = GatewayInfo::new("ghost", "eu");
    ghost.address = sidecars[0].grpc_addr().to_string();
    backends.registry().register(&ghost).await.unwrap();
    let err = links
        .publish(&ghost.id, &batch, Ack::Confirmed)
        .await
        .unwrap_err();
    let text = Report(&err).to_string();
    assert!(
        text.contains("nobody is subscribed to the address of gateway ghost"),
        "{text}"
    );

    // Subscribed: delivered in order, bytes untouched, and confirmed once
    // the receiver acked both.
    let mut subscription = links.subscribe(&ghost.id).await.unwrap();
    let batch = [
        bytes::Bytes::from_static(b"one"),
        bytes::Bytes::from_static(b"two"),
    ];
    let receiving = async {
        use futures::StreamExt;
        for expected in [&b"one"[..], b"two"] {
            let incoming = subscription.next().await.unwrap();
            assert_eq!(incoming.bytes.as_ref(), expected);
            incoming
                .ack
                .expect("a direct link waits for the ack")
                .ack()
                .await
                .unwrap();
        }
    };
    let (published, ()) = tokio::join!(links.publish(&ghost.id, &batch, Ack::Confirmed), receiving);
    published.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_drop_nothing_and_apply_hot_pair_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let config = |promote: u32| {
        format!(
            "{GOOD}fallbacks = [\"grpc\"]\n[transports.memory]\n[transports.grpc]\n\
             [routing.hot_pairs]\npromote_per_second = {promote}.0\ndemote_per_second = 1.0\n"
        )
    };
    std::fs::write(&path, config(1000)).unwrap();
    let settings = switchyard::Settings::load(Some(&path)).unwrap();
    let backends = switchyard::Backends::from_settings(&settings)
        .await
        .unwrap();
    let sidecar = Sidecar::start_with_backends(settings, Some(path.clone()), backends)
        .await
        .unwrap();
    let mut a = gateway(sidecar.grpc_addr()).await;
    let _a_stream = attach(&mut a, "gw-a", "eu").await;
    let mut b_stream = attach(&mut a, "gw-b", "us").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut a, "gw-b", "bob").await;

    let sender = tokio::spawn(async move { send_counting(&mut a, 300).await });
    let mut admin = admin(sidecar.grpc_addr()).await;
    for promote in [900, 800, 700, 600, 500] {
        std::fs::write(&path, config(promote)).unwrap();
        let report = admin
            .reload(proto::ReloadRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(report.applied, "{report:?}");
    }
    let sent: usize = sender.await.unwrap().values().sum();
    assert_eq!(sent, 300);
    for i in 0..300 {
        let delivery = next(&mut b_stream).await;
        assert_eq!(
            delivery.envelope.unwrap().payload.as_ref(),
            format!("m{i}").as_bytes()
        );
    }
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.routing.unwrap().hot_pair_promote_per_second, 500.0);
}
