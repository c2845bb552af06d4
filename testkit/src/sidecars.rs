//! Helpers shared by the sidecar tests: sidecars on `127.0.0.1:0`, gateway
//! clients, and a plain HTTP GET.

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
    // In-process tests stop at once; cli/tests/it/sidecar_process.rs tests the grace.
    settings.sidecar.readiness_grace = Duration::ZERO;
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

/// Two sidecars on one set of backends: gw-a (hosting alice) on the first,
/// gw-b (hosting bob) on the second, both attached in `eu`.
pub struct AliceAndBob {
    pub sidecars: Vec<Sidecar>,
    pub a: GatewayClient<Channel>,
    pub b: GatewayClient<Channel>,
    pub a_stream: Deliveries,
    pub b_stream: Deliveries,
}

pub async fn alice_and_bob(settings: &Settings) -> AliceAndBob {
    let (_, sidecars) = fleet(settings, 2).await;
    let mut a = gateway(sidecars[0].grpc_addr()).await;
    let mut b = gateway(sidecars[1].grpc_addr()).await;
    let a_stream = attach(&mut a, "gw-a", "eu").await;
    let b_stream = attach(&mut b, "gw-b", "eu").await;
    online(&mut a, "gw-a", "alice").await;
    online(&mut b, "gw-b", "bob").await;
    AliceAndBob {
        sidecars,
        a,
        b,
        a_stream,
        b_stream,
    }
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

/// Deliveries a test gateway holds in its own queue; it acks each delivery
/// as it takes it into that queue, and stops reading when it is full. Tests
/// that read only after sending need room for all they send; a gateway that
/// reads nothing at all is `attach_stream` without reading it.
const GATEWAY_QUEUE: usize = 10_000;

/// A test gateway's deliveries, read off its Attach stream as they come
/// (a gateway reads while it sends: a confirmed direct-link send waits for
/// the receiving gateway's ack) and acked once queued here. Dropping it
/// drops the stream.
pub struct Deliveries {
    queue: tokio::sync::mpsc::Receiver<Result<proto::Delivery, tonic::Status>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Deliveries {
    /// The next delivery; `None` when the sidecar ended the stream normally.
    pub async fn next(&mut self) -> Result<Option<proto::Delivery>, tonic::Status> {
        self.queue.recv().await.transpose()
    }
}

impl Drop for Deliveries {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Attaches `id` in `region` and returns the bare stream, for a test that
/// acks by hand.
pub async fn attach_stream(
    client: &mut GatewayClient<Channel>,
    id: &str,
    region: &str,
) -> Attachment {
    let request = proto::AttachRequest {
        gateway_id: id.into(),
        region: region.into(),
        address: String::new(),
    };
    Attachment::open(client, request).await.unwrap()
}

/// Attaches `id` in `region` and returns its deliveries.
pub async fn attach(client: &mut GatewayClient<Channel>, id: &str, region: &str) -> Deliveries {
    attach_at(client, id, region, "").await
}

pub async fn attach_at(
    client: &mut GatewayClient<Channel>,
    id: &str,
    region: &str,
    address: &str,
) -> Deliveries {
    let request = proto::AttachRequest {
        gateway_id: id.into(),
        region: region.into(),
        address: address.into(),
    };
    let mut stream = Attachment::open(client, request).await.unwrap();
    let (queue, rx) = tokio::sync::mpsc::channel(GATEWAY_QUEUE);
    let reader = tokio::spawn(async move {
        loop {
            match stream.next().await {
                Ok(Some(delivery)) => {
                    let seq = delivery.seq;
                    if queue.send(Ok(delivery)).await.is_err() {
                        return;
                    }
                    stream.ack(seq);
                }
                Ok(None) => return,
                Err(status) => {
                    let _ = queue.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    Deliveries { queue: rx, reader }
}

pub async fn online(client: &mut GatewayClient<Channel>, gateway: &str, user: &str) -> u64 {
    client
        .online(proto::OnlineRequest {
            gateway_id: gateway.into(),
            user: user.into(),
            device: "phone".into(),
            ..Default::default()
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

/// The next delivery; fails the test after 5 s.
pub async fn next(stream: &mut Deliveries) -> proto::Delivery {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a delivery within 5 s")
        .expect("stream ok")
        .expect("stream open")
}

/// The value of `series` (its name and labels as the scrape prints them,
/// e.g. `switchyard_dead_letters_purged_total`) in a `/metrics` body.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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

/// `promtool check metrics` on a scrape (Debian package `prometheus`;
/// scripts/test.sh installs it): every series needs HELP and TYPE, names
/// and units follow the conventions.
pub fn promtool_check(body: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (apt-get install prometheus): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(body.as_bytes())
        .map_err(|e| e.to_string())?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
