//! The library path: every gateway of the [`Layout`] is a [`Router`] in this
//! process, as an application embedding switchyard runs them. Over `grpc`
//! the receiving gateways are registered at the address of a sidecar on
//! loopback whose Peer API is the receiving end of the direct link, so the
//! sending router opens a real link to it, as it would to another process.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::runtime::Handle;

use super::drive::{Ends, Handled, Sender, ACK_EVERY};
use super::layout::Layout;
use super::BenchError;
use switchyard::backends::Backends;
use switchyard::cause::Report;
use switchyard::config::Settings;
use switchyard::inbox::Inbox;
use switchyard::router::{KeepAlive, Outcome, Router};
use switchyard::sidecar::Sidecar;
use switchyard::topology::GatewayInfo;
use switchyard::transport::TransportKind;

/// The sending router, called from the load generator's thread: it builds
/// each batch there and runs `send_batch` on the routers' runtime, as a
/// gateway's request handler would, so the router's CPU is not the
/// generator's.
struct Library {
    router: Router,
    layout: Layout,
    routers: Handle,
}

/// What must live as long as the library path sends.
struct Keep {
    /// The sender's own inbox, open as a gateway's would be.
    _inbox: Inbox,
    /// The receiving routers: their inboxes end when they are dropped.
    _receivers: Vec<Router>,
    /// Heartbeats of every gateway: a run may outlast the session TTL.
    _alive: Vec<KeepAlive>,
    /// The Peer API the direct links of `grpc` reach.
    _peer: Option<Sidecar>,
}

#[async_trait::async_trait]
impl Sender for Library {
    async fn send(&self, stamps: Vec<i64>) -> Handled {
        let n = stamps.len() as u64;
        let batch = stamps.into_iter().map(|s| self.layout.message(s)).collect();
        let router = self.router.clone();
        let mut handled = Handled::default();
        match self
            .routers
            .spawn(async move { router.send_batch(batch).await })
            .await
        {
            Ok(results) => {
                let mut gateways = std::collections::HashSet::new();
                for result in &results {
                    match result {
                        Ok(report) => {
                            if let Outcome::Routed { targets, .. } = &report.outcome {
                                gateways.extend(targets.iter().map(|t| &t.gateway));
                            }
                        }
                        Err(err) => handled.refused.add(|| Report(err).to_string()),
                    }
                }
                handled.gateways = gateways.len() as u64;
            }
            Err(err) => {
                handled.refused.add(|| format!("send_batch task: {err}"));
                handled.refused.count = n;
            }
        }
        handled
    }
}

/// Latencies of an inbox's deliveries, as measured by the inbox; acked as
/// the sidecar path's gateways ack (one cumulative ack every
/// [`ACK_EVERY`] deliveries, and whenever it would otherwise wait), so both
/// paths pay the same for acks.
fn latencies(inbox: Inbox) -> BoxStream<'static, Duration> {
    futures::stream::unfold((inbox, 0u64), |(mut inbox, mut unacked)| async move {
        let delivery = match inbox.recv().now_or_never() {
            Some(delivery) => delivery?,
            None => {
                if unacked > 0 {
                    inbox.ack(unacked);
                }
                inbox.recv().await?
            }
        };
        unacked = delivery.seq;
        if delivery.seq % ACK_EVERY == 0 {
            inbox.ack(delivery.seq);
        }
        Some((delivery.latency, (inbox, unacked)))
    })
    .boxed()
}

/// Builds the routers of `layout` over `settings` (already routed over
/// `kind` alone).
pub(crate) async fn ends(
    settings: &Settings,
    kind: TransportKind,
    layout: Layout,
) -> Result<Ends, BenchError> {
    let backends = Backends::from_settings(settings).await?;
    let peer = match kind {
        TransportKind::GRPC => Some(super::sidecar::start(settings, backends.clone()).await?),
        _ => None,
    };
    let address = peer
        .as_ref()
        .map(|p| p.grpc_addr().to_string())
        .unwrap_or_default();
    let build = |id, region: &'static str| {
        let mut info = GatewayInfo::new(id, region);
        info.address = address.clone();
        Router::builder(info)
            .settings(settings.clone())
            .backends(backends.clone())
            .build()
    };
    let (router, inbox) = build(layout.sender().clone(), "eu").await?;
    let mut receivers = Vec::new();
    let mut inboxes = Vec::new();
    for (k, (gateway, user)) in layout.receivers().enumerate() {
        let (receiver, inbox) = build(gateway, layout.to_region).await?;
        receiver.connect(user.clone(), "d0").await?;
        for group in layout.groups_of(k) {
            receiver.join(group, user.clone()).await?;
        }
        receivers.push(receiver);
        inboxes.push(latencies(inbox));
    }
    let every = settings.heartbeat_interval();
    let layout_spread = layout.spread();
    let alive = std::iter::once(&router)
        .chain(&receivers)
        .map(|r| r.keep_alive(every))
        .collect();
    Ok(Ends {
        sender: Arc::new(Library {
            router,
            layout,
            routers: Handle::current(),
        }),
        receivers: inboxes,
        // Taking and acking deliveries is the library's work.
        receive_on: Handle::current(),
        spread: layout_spread,
        keep: Box::new(Keep {
            _inbox: inbox,
            _receivers: receivers,
            _alive: alive,
            _peer: peer,
        }),
    })
}
