//! What a careless or hostile gateway can send, against a real sidecar over
//! gRPC: forged peer batches, gateway-chosen peer addresses, identifiers
//! that would poison shared state, oversized or undecodable requests,
//! claimed users, and configs that would crash the sidecar. One case, an
//! undecodable presence entry, needs Redis (`--features it-redis`).

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
#[cfg(feature = "it-redis")]
use redis_nodes::Deployment;
use sidecars::*;
use switchyard::config::ConfigError;
use switchyard::proto::{self, peer_client::PeerClient};
use switchyard::sidecar::user_auth::{UserTokenAlgorithm, UserTokensConfig};
use switchyard::sidecar::{SecretSource, Sidecar};
use switchyard::Settings;
#[cfg(feature = "it-redis")]
use testkit::redis_nodes;
use testkit::sidecars;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Secrets in files under one temporary directory.
struct Secrets(tempfile::TempDir);

impl Secrets {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn file(&self, name: &str, value: &str) -> SecretSource {
        let path = self.0.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        SecretSource {
            env: None,
            file: Some(path),
        }
    }
}

fn problems(settings: &Settings) -> Vec<String> {
    match settings.validate() {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn status_of<T>(result: Result<T, Status>) -> Status {
    match result {
        Err(status) => status,
        Ok(_) => panic!("expected the call to be refused"),
    }
}

#[tokio::test]
async fn the_peer_api_never_takes_batches_where_gateway_tokens_guard_the_gateway_api() {
    let secrets = Secrets::new();
    let mut settings = with_direct_links(200.0, 100.0, Duration::from_secs(10));
    settings.sidecar.tokens = BTreeMap::from([("gw-a".into(), secrets.file("a", "token-a"))]);
    settings.sidecar.admin_token = Some(secrets.file("admin", "token-admin"));
    // Direct links on, gateway tokens on, no peer credential: refused.
    assert!(
        problems(&settings)
            .iter()
            .any(|p| p.starts_with("sidecar.peer_token: required when sidecar.tokens is set")),
        "{:?}",
        problems(&settings)
    );
    // Without direct links the config is valid, and the Peer API is closed.
    settings.transports.grpc = None;
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut a = gateway(sidecar.grpc_addr()).await;
    let _a = Attachment::open(
        &mut a,
        bearer(
            proto::AttachRequest {
                gateway_id: "gw-a".into(),
                region: "eu".into(),
                address: String::new(),
            },
            "token-a",
        ),
    )
    .await
    .unwrap();
    let forged = proto::PeerBatch {
        seq: 1,
        to_gateway: "gw-a".into(),
        envelopes: vec![switchyard::Envelope::new(
            "mallory",
            "gw-x",
            switchyard::Destination::User("alice".into()),
            "forged",
        )
        .encode()],
    };
    let mut peer = PeerClient::new(channel(sidecar.grpc_addr()).await);
    let status = status_of(peer.link(tokio_stream::iter([forged])).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_gateway_cannot_choose_where_peers_send_the_peer_token() {
    let sidecar = Sidecar::start(settings(), None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let status = status_of(
        Attachment::open(
            &mut client,
            proto::AttachRequest {
                gateway_id: "gw-a".into(),
                region: "eu".into(),
                address: "attacker.example:443".into(),
            },
        )
        .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("sidecar.advertise"), "{status:?}");

    // Left empty, the registered address is the sidecar's own.
    let _a = attach(&mut client, "gw-a", "eu").await;
    let state = admin(sidecar.grpc_addr())
        .await
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.gateways[0].address, sidecar.grpc_addr().to_string());
}

#[tokio::test]
async fn identifiers_are_checked_where_they_enter() {
    let sidecar = Sidecar::start(settings(), None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let attach_in = |region: &str| proto::AttachRequest {
        gateway_id: "gw-a".into(),
        region: region.into(),
        address: String::new(),
    };
    let status = status_of(Attachment::open(&mut client, attach_in("eu\u{1f}x")).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("`region` has '\\u{1f}' at byte 2"),
        "{status:?}"
    );
    let mut dotted = attach_in("eu");
    dotted.gateway_id = "gw.a".into();
    let status = status_of(Attachment::open(&mut client, dotted).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let _a = attach(&mut client, "gw-a", "eu").await;
    for (user, device, why) in [
        (
            "u".repeat(1 << 20),
            "phone".to_owned(),
            "`user` is 1048576 bytes, over the limit of 256",
        ),
        (
            "bob\0".to_owned(),
            "phone".to_owned(),
            "`user` has '\\0' at byte 3",
        ),
        (
            "bob".to_owned(),
            "ph\none".to_owned(),
            "`device` has '\\n' at byte 2",
        ),
    ] {
        let status = status_of(
            client
                .online(proto::OnlineRequest {
                    gateway_id: "gw-a".into(),
                    user,
                    device,
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(why), "{status:?}");
    }
    online(&mut client, "gw-a", "alice").await;
    let outcome = send(&mut client, "gw-a", message("alice", "bob\u{7f}", "x")).await;
    match outcome.result {
        Some(proto::send_outcome::Result::Rejected(r)) => {
            assert!(r.reason.contains("`user` has '\\u{7f}'"), "{r:?}")
        }
        other => panic!("expected rejected, got {other:?}"),
    }
}

#[cfg(feature = "it-redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_presence_entry_does_not_make_its_user_unreachable() {
    let redis = redis_nodes::redis_config(Deployment::Standalone);
    let mut settings = redis_nodes::settings(&redis);
    settings.sidecar.listen = "127.0.0.1:0".parse().unwrap();
    settings.telemetry.listen = "127.0.0.1:0".parse().unwrap();
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let mut a = attach(&mut client, "gw-a", "eu").await;
    online(&mut client, "gw-a", "victim").await;

    // What an unchecked region used to write: a separator inside a field.
    let far = "99999999999999";
    let connection = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = connection.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{}:presence:{{victim}}", redis.key_prefix))
        .arg("evil-device")
        .arg(format!("{far}\u{1f}gw-evil\u{1f}eu\u{1f}x\u{1f}1"))
        .query_async(&mut conn)
        .await
        .unwrap();

    let outcome = send(
        &mut client,
        "gw-a",
        message("victim", "victim", "still here"),
    )
    .await;
    let targets = &routed(&outcome).targets;
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(targets[0].delivered, "{targets:?}");
    let delivery = next(&mut a).await;
    assert_eq!(delivery.envelope.unwrap().payload.as_ref(), b"still here");
    let (_, metrics) = http_get(sidecar.telemetry_addr(), "/metrics").await;
    assert!(
        metrics.contains("switchyard_store_malformed_total{store=\"presence\"}"),
        "{metrics}"
    );
}

#[test]
fn settings_that_would_crash_or_exhaust_the_sidecar_are_refused_by_name() {
    let mut settings = settings();
    settings.limits.inbox_queue = 4_000_000_000_000_000_000;
    settings.limits.dedupe_window = 1_000_000_000_000;
    settings.sidecar.listen = "0.0.0.0:50051".parse().unwrap();
    let found = problems(&settings);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found[0],
        "limits.dedupe_window: must be between 1 and 10000000, got 1000000000000"
    );
    assert_eq!(
        found[1],
        "limits.inbox_queue: must be between 1 and 1000000, got 4000000000000000000"
    );
    assert!(
        found[2].starts_with("sidecar.listen: 0.0.0.0:50051 is reachable from other hosts and no sidecar.tokens are set"),
        "{found:?}"
    );
    // The explicit override.
    settings.limits = Default::default();
    settings.sidecar.allow_unauthenticated = true;
    assert!(settings.validate().is_ok());
}

#[test]
fn check_config_reads_every_secret_the_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[sidecar.tokens.gw-a]\nfile = \"{0}/missing-token\"\n\
             [sidecar.admin_token]\nfile = \"{0}/missing-admin\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("sidecar.tokens.gw-a: cannot read the secret from file"),
        "{text}"
    );
}

#[tokio::test]
async fn detached_gateways_are_forgotten_once_their_registration_expired() {
    let mut settings = settings();
    settings.presence.session_ttl = Duration::from_secs(1);
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    for i in 0..20 {
        let stream = attach(&mut client, &format!("throwaway-{i}"), "eu").await;
        drop(stream);
    }
    let mut admin = admin(sidecar.grpc_addr()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = admin
            .state(proto::StateRequest {})
            .await
            .unwrap()
            .into_inner();
        if state.gateways.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still remembered: {:?}",
            state.gateways
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = http_get(sidecar.telemetry_addr(), "/metrics").await;
    // At least these 20: the recorder is the process's, shared with the
    // other tests' sidecars.
    let evicted = sample(&metrics, "switchyard_sidecar_gateways_evicted_total")
        .unwrap_or_else(|| panic!("no evicted count in:\n{metrics}"));
    assert!(evicted >= 20.0, "{evicted} evicted:\n{metrics}");
    // A forgotten gateway attaches again as new.
    let mut again = attach(&mut client, "throwaway-0", "eu").await;
    online(&mut client, "throwaway-0", "carol").await;
    let outcome = send(
        &mut client,
        "throwaway-0",
        message("carol", "carol", "back"),
    )
    .await;
    assert!(routed(&outcome).targets[0].delivered);
    assert_eq!(
        next(&mut again).await.envelope.unwrap().payload.as_ref(),
        b"back"
    );
}

#[tokio::test]
async fn headers_count_toward_the_size_limit_and_the_future_is_refused() {
    let sidecar = Sidecar::start(settings(), None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let _a = attach(&mut client, "gw-a", "eu").await;
    online(&mut client, "gw-a", "alice").await;
    let reason = |outcome: proto::SendOutcome| match outcome.result {
        Some(proto::send_outcome::Result::Rejected(r)) => r.reason,
        other => panic!("expected rejected, got {other:?}"),
    };

    let mut heavy = message("alice", "alice", "small payload");
    heavy.headers.insert("h".into(), "x".repeat(3 << 20));
    let why = reason(send(&mut client, "gw-a", heavy).await);
    assert!(
        why.contains("payload and headers are 3145742 bytes"),
        "{why}"
    );

    let mut future = message("alice", "alice", "from 2100");
    future.created_at_unix_micros = 4_102_444_800_000_000;
    future.ttl_ms = 1000;
    let why = reason(send(&mut client, "gw-a", future).await);
    assert!(why.contains("ms in the future"), "{why}");
}

/// Sends raw bytes as a request: what a broken client puts on the wire.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

#[tokio::test]
async fn an_undecodable_request_is_invalid_argument_and_an_empty_group_is_rejected() {
    let sidecar = Sidecar::start(settings(), None).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel(sidecar.grpc_addr()).await);
    grpc.ready().await.unwrap();
    let status = status_of(
        grpc.unary(
            Request::new(vec![0xff, 0xff, 0xff, 0xff]),
            tonic::codegen::http::uri::PathAndQuery::from_static("/switchyard.v1.Gateway/Send"),
            RawCodec,
        )
        .await,
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let mut client = gateway(sidecar.grpc_addr()).await;
    let _a = attach(&mut client, "gw-a", "eu").await;
    online(&mut client, "gw-a", "alice").await;
    let mut to_group = message("alice", "x", "anyone?");
    to_group.destination = Some(proto::envelope::Destination::Group("nobody-here".into()));
    match send(&mut client, "gw-a", to_group).await.result {
        Some(proto::send_outcome::Result::Rejected(r)) => {
            assert!(r.reason.contains("unknown group \"nobody-here\""), "{r:?}")
        }
        other => panic!("expected rejected, got {other:?}"),
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

#[tokio::test]
async fn with_user_tokens_a_gateway_token_cannot_claim_arbitrary_users() {
    let secrets = Secrets::new();
    let mut settings = settings();
    settings.sidecar.user_tokens = Some(UserTokensConfig {
        algorithm: UserTokenAlgorithm::HS256,
        key: secrets.file("users", "platform-secret"),
        issuer: None,
        audience: None,
        leeway: Duration::ZERO,
    });
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let _a = attach(&mut client, "gw-a", "eu").await;
    let now = jsonwebtoken::get_current_timestamp();
    let token = |sub: &str, exp: u64, key: &[u8]| {
        jsonwebtoken::encode(
            &Header::default(),
            &Claims { sub, exp },
            &EncodingKey::from_secret(key).unwrap(),
        )
        .unwrap()
    };
    let online_with = |user_token: String| {
        let mut client = client.clone();
        async move {
            client
                .online(proto::OnlineRequest {
                    gateway_id: "gw-a".into(),
                    user: "alice".into(),
                    device: "phone".into(),
                    user_token,
                })
                .await
        }
    };
    let cases = [
        (String::new(), Code::Unauthenticated),
        (token("alice", now + 60, b"guessed"), Code::Unauthenticated),
        (
            token("alice", now - 60, b"platform-secret"),
            Code::Unauthenticated,
        ),
        (
            token("mallory", now + 60, b"platform-secret"),
            Code::PermissionDenied,
        ),
    ];
    for (user_token, code) in cases {
        let status = status_of(online_with(user_token).await);
        assert_eq!(status.code(), code, "{status:?}");
    }
    online_with(token("alice", now + 60, b"platform-secret"))
        .await
        .unwrap();
}

#[tokio::test]
async fn large_messages_fill_the_unacked_window_by_bytes_not_by_count() {
    let mut settings = settings();
    settings.limits.inbox_queue = 1000;
    settings.limits.inbox_bytes = 64 * 1024;
    settings.transports.memory.as_mut().unwrap().queue = 4;
    settings.delivery.publish_timeout = Duration::from_millis(100);
    let sidecar = Sidecar::start(settings, None).await.unwrap();
    let mut client = gateway(sidecar.grpc_addr()).await;
    let _a = attach(&mut client, "gw-a", "eu").await;
    let mut stream = attach_stream(&mut client, "gw-b", "eu").await;
    online(&mut client, "gw-a", "alice").await;
    online(&mut client, "gw-b", "bob").await;

    // gw-b acks nothing: 4 messages of 16 KiB fill the 64 KiB
    // window, 4 more the transport queue, then sends fall back offline.
    let payload = "x".repeat(16 * 1024);
    let mut delivered = 0;
    for _ in 0..100 {
        let outcome = send(&mut client, "gw-a", message("alice", "bob", &payload)).await;
        if routed(&outcome).stored_offline() == proto::OfflineReason::TransportsFailed {
            break;
        }
        delivered += 1;
    }
    assert!(
        (4..=9).contains(&delivered),
        "{delivered} messages of 16 KiB held for a 64 KiB window"
    );
    for _ in 0..delivered {
        let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("a delivery within 5 s")
            .expect("stream ok")
            .expect("stream open");
        stream.ack(delivery.seq);
    }
}
