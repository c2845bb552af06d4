//! Helpers shared by the sidecar tests: sidecars on `127.0.0.1:0`, gateway
//! clients, and a plain HTTP GET.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use switchyard::proto::gateway_client::GatewayClient;
use switchyard::proto::{self, admin_client::AdminClient};
pub use switchyard::sidecar::client::Attachment;
use switchyard::sidecar::Sidecar;
use switchyard::{Backends, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// The embedded default, listening on free loopback ports.
pub fn settings() -> Settings {
    let mut settings = Settings::default();
    settings.sidecar.listen = "127.0.0.1:0".parse().unwrap();
    settings.telemetry.listen = "127.0.0.1:0".parse().unwrap();
    settings
}

/// `settings()` plus the `grpc` transport and the given hot-pair thresholds.
pub fn with_direct_links(promote: f64, demote: f64, window: Duration) -> Settings {
    let mut settings = settings();
    settings.transports.grpc = Some(Default::default());
    settings.transports.grpc.as_mut().unwrap().retry_after = Duration::from_secs(30);
    settings.routing.hot_pairs.promote_per_second = promote;
    settings.routing.hot_pairs.demote_per_second = demote;
    settings.routing.hot_pairs.window = window;
    settings
}

/// `n` sidecars sharing one set of backends (one process, one memory store).
pub async fn fleet(settings: &Settings, n: usize) -> (Backends, Vec<Sidecar>) {
    let backends = Backends::from_settings(settings).await.unwrap();
    let mut sidecars = Vec::new();
    for _ in 0..n {
        sidecars.push(
            Sidecar::start_with_backends(settings.clone(), None, backends.clone())
                .await
                .unwrap(),
        );
    }
    (backends, sidecars)
}

pub async fn channel(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn gateway(addr: SocketAddr) -> GatewayClient<Channel> {
    GatewayClient::new(channel(addr).await)
}

pub async fn admin(addr: SocketAddr) -> AdminClient<Channel> {
    AdminClient::new(channel(addr).await)
}

/// Attaches `id` in `region` and returns its delivery stream.
pub async fn attach(client: &mut GatewayClient<Channel>, id: &str, region: &str) -> Attachment {
    attach_at(client, id, region, "").await
}

pub async fn attach_at(
    client: &mut GatewayClient<Channel>,
    id: &str,
    region: &str,
    address: &str,
) -> Attachment {
    let request = proto::AttachRequest {
        gateway_id: id.into(),
        region: region.into(),
        address: address.into(),
    };
    Attachment::open(client, request).await.unwrap()
}

pub async fn online(client: &mut GatewayClient<Channel>, gateway: &str, user: &str) -> u64 {
    client
        .online(proto::OnlineRequest {
            gateway_id: gateway.into(),
            user: user.into(),
            device: "phone".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .replayed
}

/// An envelope from `from` to user `to`, leaving id, gateway and time to the sidecar.
pub fn message(from: &str, to: &str, payload: &str) -> proto::Envelope {
    proto::Envelope {
        sender_user: from.into(),
        destination: Some(proto::envelope::Destination::User(to.into())),
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

pub async fn send(
    client: &mut GatewayClient<Channel>,
    gateway: &str,
    envelope: proto::Envelope,
) -> proto::SendOutcome {
    client
        .send(proto::SendRequest {
            gateway_id: gateway.into(),
            envelope: Some(envelope),
        })
        .await
        .unwrap()
        .into_inner()
        .outcome
        .unwrap()
}

/// The routed targets of an outcome; panics on any other outcome.
pub fn routed(outcome: &proto::SendOutcome) -> &proto::Routed {
    match &outcome.result {
        Some(proto::send_outcome::Result::Routed(routed)) => routed,
        other => panic!("expected a routed outcome, got {other:?}"),
    }
}

/// The next delivery, acked (the gateway took it over); fails the test
/// after 5 s.
pub async fn next(stream: &mut Attachment) -> proto::Delivery {
    let delivery = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a delivery within 5 s")
        .expect("stream ok")
        .expect("stream open");
    stream.ack(delivery.seq);
    delivery
}

/// `GET path` over HTTP/1.0; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends `n` messages alice -> bob one by one; counts the transports used.
pub async fn send_counting(a: &mut GatewayClient<Channel>, n: usize) -> BTreeMap<String, usize> {
    let mut by_via = BTreeMap::new();
    for i in 0..n {
        let outcome = send(a, "gw-a", message("alice", "bob", &format!("m{i}"))).await;
        let target = &routed(&outcome).targets[0];
        assert!(target.delivered, "{target:?}");
        *by_via.entry(target.via.clone()).or_insert(0) += 1;
    }
    by_via
}
