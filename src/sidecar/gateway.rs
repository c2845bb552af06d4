//! The Gateway API: one [`Router`] per attached gateway, its [`Inbox`]
//! streamed to the gateway, and every other call checked to act only as that
//! gateway and only for users it hosts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::authorize;
use super::fields::{id, text};
use super::{presence, Shared};
use crate::envelope::{Envelope, MessageId};
use crate::error::{SendError, StoreError};
use crate::inbox::Inbox;
use crate::offline::OfflineReason;
use crate::policy::Route;
use crate::presence::PresenceStore;
use crate::proto::{self, gateway_server::Gateway};
use crate::router::{Outcome, Router, SendReport};
use crate::telemetry;
use crate::topology::{GatewayId, GatewayInfo, IdKind, UserId};

/// Offline messages returned by FetchOffline when the request sets no limit.
const DEFAULT_FETCH_LIMIT: usize = 100;

/// A gateway attached to this sidecar.
pub(crate) struct Attached {
    pub(crate) router: Router,
    /// The inbox, while no Attach stream holds it.
    inbox: Arc<Mutex<Parked>>,
}

/// Where an inbox waits between Attach streams.
struct Parked {
    inbox: Option<Inbox>,
    /// When it was last put back (or made).
    since: Instant,
}

impl Parked {
    fn new(inbox: Inbox) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self {
            inbox: Some(inbox),
            since: Instant::now(),
        }))
    }
}

impl Attached {
    /// Whether an Attach stream holds the inbox now.
    pub(crate) fn streaming(&self) -> bool {
        self.inbox.lock().inbox.is_none()
    }

    /// The inbox, unless an Attach stream still holds it.
    pub(crate) fn take_inbox(&self) -> Option<Inbox> {
        self.inbox.lock().inbox.take()
    }

    /// Whether no Attach stream has held the inbox for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let parked = self.inbox.lock();
        parked.inbox.is_some() && parked.since.elapsed() >= idle
    }
}

/// Forgets gateways that have had no Attach stream for `idle` (by then
/// their registration and sessions have expired too), so gateway ids that
/// come and go do not grow the sidecar without bound. Each inbox is closed
/// as on shutdown: what the gateway acked is settled on the transports,
/// what it did not stays there for its next Attach.
pub(crate) async fn evict_idle(shared: &Shared, idle: Duration) -> usize {
    let evicted: Vec<(GatewayId, Attached)> = {
        let mut gateways = shared.gateways.lock().await;
        let ids: Vec<GatewayId> = gateways
            .iter()
            .filter(|(_, attached)| attached.idle_for(idle))
            .map(|(id, _)| id.clone())
            .collect();
        ids.into_iter()
            .filter_map(|id| gateways.remove(&id).map(|a| (id, a)))
            .collect()
    };
    let count = evicted.len();
    for (gateway, attached) in evicted {
        tracing::info!(%gateway, ?idle, "forgetting a gateway detached for too long");
        metrics::counter!(telemetry::GATEWAYS_EVICTED).increment(1);
        if let Some(inbox) = attached.take_inbox() {
            inbox.close().await;
        }
    }
    count
}

/// The Gateway service.
pub struct GatewayService {
    shared: Arc<Shared>,
}

impl GatewayService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn router(&self, gateway: &GatewayId) -> Result<Router, Status> {
        self.shared
            .gateways
            .lock()
            .await
            .get(gateway)
            .map(|a| a.router.clone())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "gateway {gateway:?} is not attached: call Attach first"
                ))
            })
    }

    /// The router of an attached gateway the call may act as.
    async fn caller<T>(&self, request: &Request<T>, gateway: &str) -> Result<Router, Status> {
        let gateway = authorize(request, gateway)?;
        self.router(&gateway).await
    }

    /// Join and Leave: the same checks, then one router call.
    async fn change_membership(
        &self,
        request: Request<proto::GroupRequest>,
        change: Membership,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let req = request.into_inner();
        let user = UserId::from(text("user", &req.user)?);
        let group = text("group", &req.group)?;
        hosted(&router, &user).await?;
        match change {
            Membership::Join => router.join(group, user).await,
            Membership::Leave => router.leave(group, user).await,
        }
        .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::GroupResponse {}))
    }
}

/// Which way a group membership changes.
enum Membership {
    Join,
    Leave,
}

/// Refuses unless `user` has a session on the router's gateway.
async fn hosted(router: &Router, user: &UserId) -> Result<(), Status> {
    let me = &router.gateway().id;
    let sessions = router
        .backends()
        .presence
        .locate_shared(user)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    if sessions.iter().any(|s| &s.gateway == me) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "user {user:?} has no session on gateway {me:?}: a gateway acts only for the users it hosts"
        )))
    }
}

/// Fills the defaults a gateway may leave out, then checks that the sender
/// is this gateway. An envelope that cannot be parsed is returned as the
/// reason for a `Rejected` outcome.
pub(crate) fn prepare(
    gateway: &GatewayId,
    mut wire: proto::Envelope,
) -> Result<Result<Envelope, (Vec<u8>, String)>, Status> {
    if wire.id.is_empty() {
        wire.id = MessageId::new().to_bytes().to_vec();
    }
    if wire.sender_gateway.is_empty() {
        wire.sender_gateway = gateway.to_string();
    } else if wire.sender_gateway != gateway.as_str() {
        return Err(Status::permission_denied(format!(
            "gateway {gateway:?} cannot send as gateway {:?}",
            wire.sender_gateway
        )));
    }
    let id = wire.id.clone();
    Ok(Envelope::from_wire(wire).map_err(|e| (id, e.to_string())))
}

fn route(route: Route) -> proto::Route {
    match route {
        Route::Local => proto::Route::Local,
        Route::SameRegion => proto::Route::SameRegion,
        Route::CrossRegion => proto::Route::CrossRegion,
    }
}

fn outcome(id: MessageId, result: Result<SendReport, SendError>) -> proto::SendOutcome {
    use proto::send_outcome::Result as R;
    let result = match result {
        Ok(SendReport {
            outcome: Outcome::Blocked,
            ..
        }) => R::Blocked(proto::Blocked {}),
        Ok(SendReport {
            outcome:
                Outcome::Routed {
                    targets,
                    stored_offline,
                },
            ..
        }) => {
            let targets = targets
                .into_iter()
                .map(|t| {
                    let (delivered, via, error) = match t.result {
                        Ok(via) => (true, via.to_string(), String::new()),
                        Err(error) => (false, String::new(), error.to_string()),
                    };
                    proto::TargetOutcome {
                        gateway: t.gateway.to_string(),
                        route: route(t.route) as i32,
                        delivered,
                        via,
                        error,
                        mirrored: t.mirrored.map(|k| k.to_string()).unwrap_or_default(),
                        confirmed: t.confirmed,
                    }
                })
                .collect();
            let stored_offline = match stored_offline {
                None => proto::OfflineReason::Unspecified,
                Some(OfflineReason::NoSession) => proto::OfflineReason::NoSession,
                Some(OfflineReason::TransportsFailed) => proto::OfflineReason::TransportsFailed,
            };
            let routed = proto::Routed {
                targets,
                stored_offline: stored_offline as i32,
            };
            R::Routed(routed)
        }
        Err(SendError::Invalid(err)) => R::Rejected(proto::Rejected {
            reason: err.to_string(),
        }),
        // Nobody to deliver to: retrying will not help until someone joins.
        Err(
            err @ SendError::Store {
                source: StoreError::UnknownGroup(_),
                ..
            },
        ) => R::Rejected(proto::Rejected {
            reason: err.to_string(),
        }),
        Err(err @ (SendError::Store { .. } | SendError::Undeliverable { .. })) => {
            R::Failed(proto::Failed {
                reason: err.to_string(),
            })
        }
    };
    proto::SendOutcome {
        id: id.to_bytes().to_vec(),
        result: Some(result),
    }
}

fn rejected(id: Vec<u8>, reason: String) -> proto::SendOutcome {
    proto::SendOutcome {
        id,
        result: Some(proto::send_outcome::Result::Rejected(proto::Rejected {
            reason,
        })),
    }
}

/// Routes a batch: every sender is checked first (one foreign sender refuses
/// the whole batch, so nothing is half-sent), unparsable envelopes are
/// rejected one by one, the rest go out in one `send_batch`.
async fn send_all(
    router: &Router,
    wires: Vec<proto::Envelope>,
) -> Result<Vec<proto::SendOutcome>, Status> {
    let me = router.gateway().id.clone();
    let mut prepared = Vec::with_capacity(wires.len());
    // A batch mostly comes from one user: check each sender once per run.
    let mut checked: Option<UserId> = None;
    for wire in wires {
        let envelope = prepare(&me, wire)?;
        if let Ok(envelope) = &envelope {
            if checked.as_ref() != Some(&envelope.sender) {
                hosted(router, &envelope.sender).await?;
                checked = Some(envelope.sender.clone());
            }
        }
        prepared.push(envelope);
    }
    let valid: Vec<Envelope> = prepared
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut sent = router.send_batch(valid).await.into_iter();
    Ok(prepared
        .into_iter()
        .map(|p| match p {
            Ok(envelope) => match sent.next() {
                Some(result) => outcome(envelope.id, result),
                None => rejected(
                    envelope.id.to_bytes().to_vec(),
                    "internal: the router returned no outcome".into(),
                ),
            },
            Err((id, reason)) => rejected(id, reason),
        })
        .collect())
}

/// Deliveries queued for the gRPC stream; the inbox's window is the real
/// bound, this only smooths the hand-off to HTTP/2.
const STREAM_QUEUE: usize = 256;

/// Streams the inbox to one Attach call and applies the gateway's acks.
/// When the call ends (the gateway went away, its stream broke, the sidecar
/// drains), whatever the gateway did not ack is handed out again to the
/// next Attach, and the inbox goes back to its slot.
async fn pump(
    inbox: Inbox,
    slot: Arc<Mutex<Parked>>,
    mut acks: Streaming<proto::AttachMessage>,
    out: mpsc::Sender<Result<proto::Delivery, Status>>,
    mut stopping: watch::Receiver<bool>,
    grace: Duration,
    gateway: GatewayId,
) {
    let mut inbox = inbox;
    let end = loop {
        tokio::select! {
            biased;
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                drain(&inbox, &mut acks, grace).await;
                break Some(Status::unavailable("the sidecar is shutting down: attach to another one"));
            }
            message = acks.message() => match message {
                Ok(Some(proto::AttachMessage { kind: Some(proto::attach_message::Kind::Ack(ack)) })) => {
                    inbox.ack(ack.seq);
                }
                Ok(Some(_)) => {
                    break Some(Status::invalid_argument(
                        "after the AttachRequest, an Attach stream carries only acks",
                    ));
                }
                // Half-closed or broken: the gateway is gone.
                Ok(None) => break None,
                Err(status) => {
                    tracing::debug!(%gateway, %status, "attach stream broke");
                    break None;
                }
            },
            next = next_delivery(&mut inbox, &out) => match next {
                Some((permit, delivery)) => permit.send(Ok(delivery)),
                None => break None,
            },
        }
    };
    if let Some(status) = end {
        let _ = out.send(Err(status)).await;
    }
    let redelivered = inbox.redeliver();
    tracing::info!(%gateway, redelivered, "gateway detached");
    *slot.lock() = Parked {
        inbox: Some(inbox),
        since: Instant::now(),
    };
    metrics::gauge!(telemetry::ATTACHED_GATEWAYS).decrement(1.0);
}

/// Shutting down: hand out nothing more, and take the gateway's acks for
/// what it has until it acked everything or `grace` ran out. What stays
/// unacked is left unacked on its transport, for the next sidecar.
async fn drain(inbox: &Inbox, acks: &mut Streaming<proto::AttachMessage>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while inbox.unacked() > 0 {
        let message = tokio::time::timeout_at(deadline, acks.message()).await;
        match message {
            Ok(Ok(Some(proto::AttachMessage {
                kind: Some(proto::attach_message::Kind::Ack(ack)),
            }))) => inbox.ack(ack.seq),
            _ => return,
        }
    }
}

/// Waits for room on the stream, then for a delivery; `None` when the
/// gateway is gone or the inbox closed. Both waits are cancel-safe.
async fn next_delivery<'a>(
    inbox: &mut Inbox,
    out: &'a mpsc::Sender<Result<proto::Delivery, Status>>,
) -> Option<(
    mpsc::Permit<'a, Result<proto::Delivery, Status>>,
    proto::Delivery,
)> {
    let permit = out.reserve().await.ok()?;
    let d = inbox.recv().await?;
    let delivery = proto::Delivery {
        envelope: Some(d.envelope.to_wire()),
        via: d.via.to_string(),
        latency_micros: d.latency.as_micros().min(u128::from(u64::MAX)) as u64,
        seq: d.seq,
    };
    Some((permit, delivery))
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    type AttachStream = ReceiverStream<Result<proto::Delivery, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<proto::AttachMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (metadata, extensions, mut messages) = request.into_parts();
        let req = match messages.message().await? {
            Some(proto::AttachMessage {
                kind: Some(proto::attach_message::Kind::Attach(req)),
            }) => req,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an Attach stream must be an AttachRequest",
                ))
            }
        };
        let gateway = authorize(
            &Request::from_parts(metadata, extensions, ()),
            &req.gateway_id,
        )?;
        let region = id("region", IdKind::Name, &req.region)?;
        // Peers dial the registered address with the peer token, so only
        // the sidecar names it: a gateway-chosen address would receive it.
        if !req.address.is_empty() && req.address != self.shared.advertise {
            return Err(Status::invalid_argument(format!(
                "address {:?}: direct links go to this sidecar's sidecar.advertise ({:?}); leave address empty",
                req.address, self.shared.advertise
            )));
        }
        let info = GatewayInfo {
            id: gateway.clone(),
            region: region.into(),
            address: self.shared.advertise.clone(),
        };
        if *self.shared.stopping.borrow() {
            return Err(Status::unavailable("the sidecar is shutting down"));
        }
        let mut gateways = self.shared.gateways.lock().await;
        let slot = match gateways.get_mut(&gateway) {
            Some(attached) => {
                if attached.router.gateway() != &info {
                    // The gateway moved (region or address): same addresses
                    // on every transport, so the inbox and what it holds
                    // stay; only the router's view of the gateway changes.
                    attached.router = attached.router.moved(info).await.map_err(|e| {
                        Status::unavailable(format!("cannot re-register gateway {gateway:?}: {e}"))
                    })?;
                }
                attached.inbox.clone()
            }
            None => {
                let settings = (**self.shared.settings.load()).clone();
                let (router, inbox) = Router::builder(info)
                    .settings(settings)
                    .backends(self.shared.backends.clone())
                    .policy(self.shared.policy.clone())
                    .build()
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!("cannot attach gateway {gateway:?}: {e}"))
                    })?;
                let slot = Parked::new(inbox);
                gateways.insert(
                    gateway.clone(),
                    Attached {
                        router,
                        inbox: slot.clone(),
                    },
                );
                slot
            }
        };
        let inbox = slot.lock().inbox.take().ok_or_else(|| {
            Status::already_exists(format!(
                "gateway {gateway:?} already has an open Attach stream"
            ))
        })?;
        drop(gateways);
        metrics::gauge!(telemetry::ATTACHED_GATEWAYS).increment(1.0);
        tracing::info!(%gateway, "gateway attached");
        let (out, deliveries) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(pump(
            inbox,
            slot,
            messages,
            out,
            self.shared.stopping.clone(),
            self.shared.settings.load().sidecar.drain_timeout / 2,
            gateway,
        ));
        Ok(Response::new(ReceiverStream::new(deliveries)))
    }

    async fn send(
        &self,
        request: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope is missing"))?;
        let mut outcomes = send_all(&router, vec![envelope]).await?;
        Ok(Response::new(proto::SendResponse {
            outcome: outcomes.pop(),
        }))
    }

    async fn send_batch(
        &self,
        request: Request<proto::SendBatchRequest>,
    ) -> Result<Response<proto::SendBatchResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let outcomes = send_all(&router, request.into_inner().envelopes).await?;
        Ok(Response::new(proto::SendBatchResponse { outcomes }))
    }

    async fn online(
        &self,
        request: Request<proto::OnlineRequest>,
    ) -> Result<Response<proto::OnlineResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let req = request.into_inner();
        let user = text("user", &req.user)?;
        let device = text("device", &req.device)?;
        self.shared.auth.verify_user(&req.user_token, user)?;
        let replayed = router
            .connect(user, device)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::OnlineResponse {
            replayed: replayed as u64,
        }))
    }

    async fn offline(
        &self,
        request: Request<proto::OfflineRequest>,
    ) -> Result<Response<proto::OfflineResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let req = request.into_inner();
        let user = UserId::from(text("user", &req.user)?);
        let device = text("device", &req.device)?;
        let me = &router.gateway().id;
        let sessions = router
            .backends()
            .presence
            .locate_shared(&user)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if sessions
            .iter()
            .any(|s| s.device.as_str() == device && &s.gateway != me)
        {
            return Err(Status::permission_denied(format!(
                "device {device:?} of user {user:?} is connected to another gateway"
            )));
        }
        router
            .disconnect(user, device)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::OfflineResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        router
            .heartbeat()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::HeartbeatResponse {}))
    }

    async fn join(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        self.change_membership(request, Membership::Join).await
    }

    async fn leave(
        &self,
        request: Request<proto::GroupRequest>,
    ) -> Result<Response<proto::GroupResponse>, Status> {
        self.change_membership(request, Membership::Leave).await
    }

    async fn fetch_offline(
        &self,
        request: Request<proto::FetchOfflineRequest>,
    ) -> Result<Response<proto::FetchOfflineResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let req = request.into_inner();
        let user = UserId::from(text("user", &req.user)?);
        hosted(&router, &user).await?;
        let limit = if req.limit == 0 {
            DEFAULT_FETCH_LIMIT
        } else {
            req.limit as usize
        };
        let envelopes = router
            .backends()
            .offline
            .read(&user, limit)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::FetchOfflineResponse {
            envelopes: envelopes.iter().map(Envelope::to_wire).collect(),
        }))
    }

    async fn ack_offline(
        &self,
        request: Request<proto::AckOfflineRequest>,
    ) -> Result<Response<proto::AckOfflineResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        let req = request.into_inner();
        let user = UserId::from(text("user", &req.user)?);
        hosted(&router, &user).await?;
        let ids = req
            .ids
            .iter()
            .map(|id| MessageId::from_slice(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("ids: {e}")))?;
        let removed = router
            .backends()
            .offline
            .ack(&user, &ids)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::AckOfflineResponse {
            removed: removed as u64,
        }))
    }

    async fn presence(
        &self,
        request: Request<proto::PresenceRequest>,
    ) -> Result<Response<proto::PresenceResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        presence::presence(&router, request.into_inner()).await
    }

    type WatchStream = ReceiverStream<Result<proto::PresenceEvent, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<proto::WatchMessage>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, extensions, mut messages) = request.into_parts();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("a Watch stream starts with a WatchMessage"))?;
        let request = Request::from_parts(metadata, extensions, ());
        let router = self.caller(&request, &first.gateway_id).await?;
        Ok(Response::new(presence::watch(
            router,
            first,
            messages,
            self.shared.stopping.clone(),
        )))
    }

    async fn group_members(
        &self,
        request: Request<proto::GroupMembersRequest>,
    ) -> Result<Response<proto::GroupMembersResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        presence::group_members(&router, request.into_inner()).await
    }

    async fn user_groups(
        &self,
        request: Request<proto::UserGroupsRequest>,
    ) -> Result<Response<proto::UserGroupsResponse>, Status> {
        let router = self.caller(&request, &request.get_ref().gateway_id).await?;
        presence::user_groups(&router, request.into_inner()).await
    }
}

/// The gateways attached here, for the Admin API, with their online
/// counts (0 when the presence store cannot be asked now).
pub(crate) async fn attached(shared: &Shared) -> Vec<proto::AttachedGateway> {
    let mut list: Vec<proto::AttachedGateway> = {
        let gateways = shared.gateways.lock().await;
        gateways
            .values()
            .map(|a| {
                let info = a.router.gateway();
                proto::AttachedGateway {
                    gateway_id: info.id.to_string(),
                    region: info.region.to_string(),
                    address: info.address.clone(),
                    streaming: a.streaming(),
                    online_users: 0,
                }
            })
            .collect()
    };
    for gateway in &mut list {
        let id = GatewayId::from(gateway.gateway_id.as_str());
        match shared.backends.presence.hosted_users(&id).await {
            Ok(count) => gateway.online_users = count,
            Err(err) => tracing::debug!(%err, "online count unavailable"),
        }
    }
    list.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
    list
}
