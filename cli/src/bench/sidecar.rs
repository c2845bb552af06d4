//! The sidecar path: the same [`Layout`] as the library path, but every
//! gateway is a tonic client of a sidecar in this process, as a gateway
//! written in another language runs. The sender calls `SendBatch` on
//! sidecar A; A's router publishes over the transport; sidecar B's router
//! receives and streams each delivery down the receiving gateway's `Attach`
//! stream, where its latency is measured from the envelope timestamp. Both
//! sidecars share one set of backends (one process: the memory transport
//! needs it), each listens on its own loopback port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tonic::transport::{Channel, Endpoint};

use super::drive::{since, Ends, Handled, Sender, ACK_EVERY};
use super::generator::Generator;
use super::layout::Layout;
use super::BenchError;
use switchyard::backends::Backends;
use switchyard::cause::Cause;
use switchyard::config::Settings;
use switchyard::proto::{self, gateway_client::GatewayClient, send_outcome::Result as Outcome};
use switchyard::router::KeepAlive;
use switchyard::sidecar::client::Attachment;
use switchyard::sidecar::Sidecar;

/// Starts a sidecar on `settings` (whose listen addresses are loopback
/// port 0) over shared `backends`.
pub(crate) async fn start(settings: &Settings, backends: Backends) -> Result<Sidecar, BenchError> {
    Ok(Sidecar::start_with_backends(settings.clone(), None, backends).await?)
}

/// One gateway's client of a sidecar.
struct Gateway {
    id: String,
    client: GatewayClient<Channel>,
}

impl Gateway {
    /// Calls Heartbeat every `every` until the guard is dropped.
    fn keep_alive(&self, every: Duration) -> KeepAlive {
        switchyard::sidecar::client::keep_alive(&self.client, &self.id, every)
    }

    async fn connect(id: String, sidecar: SocketAddr) -> Result<Self, BenchError> {
        let channel = channel(&id, sidecar).await?;
        Ok(Self::on(id, channel))
    }

    /// A gateway whose calls go over `channel` (one HTTP/2 connection,
    /// which tonic lets several clients share).
    fn on(id: String, channel: Channel) -> Self {
        Self {
            id,
            client: GatewayClient::new(channel),
        }
    }

    /// Attaches in `region` (the sidecar registers its own address for
    /// direct links) and brings `user` online; returns the delivery stream.
    async fn attach(&mut self, region: &str, user: &str) -> Result<Attachment, BenchError> {
        let request = proto::AttachRequest {
            gateway_id: self.id.clone(),
            region: region.into(),
            address: String::new(),
        };
        let stream = Attachment::open(&mut self.client, request)
            .await
            .map_err(|s| failed(&self.id, "Attach", Cause::from_message(s.message())))?;
        self.client
            .online(proto::OnlineRequest {
                gateway_id: self.id.clone(),
                user: user.into(),
                device: "d0".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| failed(&self.id, "Online", Cause::from_message(s.message())))?;
        Ok(stream)
    }

    async fn join(&mut self, user: &str, group: &str) -> Result<(), BenchError> {
        self.client
            .join(proto::GroupRequest {
                gateway_id: self.id.clone(),
                user: user.into(),
                group: group.into(),
            })
            .await
            .map_err(|s| failed(&self.id, "Join", Cause::from_message(s.message())))?;
        Ok(())
    }
}

/// One HTTP/2 connection to `sidecar`, opened for gateway `id`.
async fn channel(id: &str, sidecar: SocketAddr) -> Result<Channel, BenchError> {
    Endpoint::from_shared(format!("http://{sidecar}"))
        .map_err(|e| failed(id, "connect", Cause::new(e)))?
        .connect()
        .await
        .map_err(|e| failed(id, "connect", Cause::context(format!("to {sidecar}"), e)))
}

fn failed(gateway: &str, call: &'static str, reason: Cause) -> BenchError {
    BenchError::Gateway {
        gateway: gateway.into(),
        call,
        reason,
    }
}

/// The sending gateway: a gRPC client on the load generator's thread.
struct ViaSidecar {
    gateway: Gateway,
    layout: Layout,
}

/// What must live as long as the sidecar path sends.
struct Keep {
    /// The sender's own Attach stream, open as a gateway's would be.
    _attached: Attachment,
    /// The receiving gateways' connections, which carry their streams.
    _receivers: Vec<Gateway>,
    /// Heartbeats of every gateway: a run may outlast the session TTL.
    _alive: Vec<KeepAlive>,
    _sidecars: [Sidecar; 2],
}

/// Why the sidecar did not route a message.
fn refusal(outcome: Option<Outcome>) -> String {
    match outcome {
        Some(Outcome::Blocked(_)) => "blocked".into(),
        Some(Outcome::Rejected(r)) => format!("rejected: {}", r.reason),
        Some(Outcome::Failed(f)) => format!("failed: {}", f.reason),
        Some(Outcome::Routed(_)) | None => "no outcome".into(),
    }
}

#[async_trait::async_trait]
impl Sender for ViaSidecar {
    async fn send(&self, stamps: Vec<i64>) -> Handled {
        let n = stamps.len() as u64;
        let request = proto::SendBatchRequest {
            gateway_id: self.gateway.id.clone(),
            envelopes: stamps
                .into_iter()
                .map(|s| self.layout.message(s).to_wire())
                .collect(),
        };
        let mut handled = Handled::default();
        let mut routed = 0;
        let mut gateways = std::collections::HashSet::new();
        // A tonic client is a handle on one channel: a clone per call lets
        // several send loops have calls in flight on it at once.
        match self.gateway.client.clone().send_batch(request).await {
            Ok(response) => {
                for outcome in response.into_inner().outcomes {
                    match outcome.result {
                        Some(Outcome::Routed(r)) => {
                            routed += 1;
                            gateways.extend(r.targets.into_iter().map(|t| t.gateway));
                        }
                        other => handled.refused.add(|| refusal(other)),
                    }
                }
            }
            Err(status) => handled
                .refused
                .add(|| format!("SendBatch: {}", status.message())),
        }
        // Messages the sidecar gave no outcome for were not routed either.
        handled.refused.count = n.saturating_sub(routed);
        handled.gateways = gateways.len() as u64;
        handled
    }
}

/// Latencies of the deliveries on an Attach stream, measured on arrival;
/// acked as a gateway would: every [`ACK_EVERY`] deliveries, and whenever
/// it would otherwise wait for the next one (a confirmed direct-link send
/// waits for this ack).
fn latencies(stream: Attachment) -> BoxStream<'static, Duration> {
    futures::stream::unfold((stream, 0u64), |(mut stream, mut unacked)| async move {
        loop {
            let next = match stream.next().now_or_never() {
                Some(next) => next,
                None => {
                    if unacked > 0 {
                        stream.ack(unacked);
                    }
                    stream.next().await
                }
            };
            match next {
                Ok(Some(delivery)) => {
                    unacked = delivery.seq;
                    if delivery.seq % ACK_EVERY == 0 {
                        stream.ack(delivery.seq);
                    }
                    if let Some(envelope) = delivery.envelope {
                        return Some((since(envelope.created_at_unix_micros), (stream, unacked)));
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    })
    .boxed()
}

/// Starts two sidecars on `settings` (already routed over one transport)
/// and attaches the gateways of `layout` from the load generator's thread
/// (a tonic channel runs its connection on the runtime that opened it): the
/// sender to the first sidecar, every receiver to the second (each over a
/// connection of its own, or with `shared_connection` all over one).
pub(crate) async fn ends(
    settings: &Settings,
    layout: Layout,
    generator: &Generator,
    shared_connection: bool,
) -> Result<Ends, BenchError> {
    let backends = Backends::from_settings(settings).await?;
    let sidecars = [
        start(settings, backends.clone()).await?,
        start(settings, backends).await?,
    ];
    let addrs = [sidecars[0].grpc_addr(), sidecars[1].grpc_addr()];
    let every = settings.heartbeat_interval();
    let spread = layout.spread();
    let (sender, receivers, keep) = generator
        .run(async move {
            let mut gateway = Gateway::connect(layout.sender().to_string(), addrs[0]).await?;
            let attached = gateway.attach("eu", layout.sender_user().as_str()).await?;
            let mut receivers = Vec::new();
            let mut clients = Vec::new();
            let shared = match shared_connection {
                true => Some(channel("receivers", addrs[1]).await?),
                false => None,
            };
            for (k, (id, user)) in layout.receivers().enumerate() {
                let mut receiver = match &shared {
                    Some(channel) => Gateway::on(id.to_string(), channel.clone()),
                    None => Gateway::connect(id.to_string(), addrs[1]).await?,
                };
                let stream = receiver.attach(layout.to_region, user.as_str()).await?;
                for group in layout.groups_of(k) {
                    receiver.join(user.as_str(), group.as_str()).await?;
                }
                receivers.push(latencies(stream));
                clients.push(receiver);
            }
            let alive = std::iter::once(&gateway)
                .chain(&clients)
                .map(|g| g.keep_alive(every))
                .collect();
            let keep = (attached, clients, alive);
            Ok::<_, BenchError>((ViaSidecar { gateway, layout }, receivers, keep))
        })
        .await??;
    let (attached, clients, alive) = keep;
    Ok(Ends {
        sender: Arc::new(sender),
        receivers,
        receive_on: generator.handle().clone(),
        spread,
        keep: Box::new(Keep {
            _attached: attached,
            _receivers: clients,
            _alive: alive,
            _sidecars: sidecars,
        }),
    })
}
