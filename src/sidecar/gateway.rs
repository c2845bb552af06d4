//! The Gateway API: one [`Router`] per attached gateway, its [`Inbox`](crate::Inbox)
//! streamed to the gateway, and every other call checked to act only as that
//! gateway and only for users it hosts.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::attached::{Attached, Parked};
use super::auth::{authorize, hosted};
use super::fields::id;
use super::send::send_all;
use super::stream::{pump, STREAM_QUEUE};
use super::{presence, Shared};
use crate::cause::Report;
use crate::envelope::{Envelope, MessageId};
use crate::proto::{self, gateway_server::Gateway};
use crate::router::Router;
use crate::telemetry;
use crate::topology::{DeviceId, GatewayId, GatewayInfo, GroupId, Region, UserId};

/// Offline messages returned by FetchOffline when the request sets no limit.
const DEFAULT_FETCH_LIMIT: usize = 100;

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
        let user: UserId = id("user", &req.user)?;
        let group: GroupId = id("group", &req.group)?;
        hosted(&router, &user).await?;
        match change {
            Membership::Join => router.join(group, user).await,
            Membership::Leave => router.leave(group, user).await,
        }
        .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
        Ok(Response::new(proto::GroupResponse {}))
    }
}

/// Which way a group membership changes.
enum Membership {
    Join,
    Leave,
}

/// Fills the defaults a gateway may leave out, then checks that the sender
/// is this gateway. An envelope that cannot be parsed is returned as the
/// reason for a `Rejected` outcome.
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
        let region: Region = id("region", &req.region)?;
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
            region,
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
                        Status::unavailable(format!(
                            "cannot re-register gateway {gateway:?}: {}",
                            Report(&e)
                        ))
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
                        Status::unavailable(format!(
                            "cannot attach gateway {gateway:?}: {}",
                            Report(&e)
                        ))
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
        let user: UserId = id("user", &req.user)?;
        let device: DeviceId = id("device", &req.device)?;
        self.shared
            .auth
            .verify_user(&req.user_token, user.as_str())?;
        let replayed = router
            .connect(user, device)
            .await
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
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
        let user: UserId = id("user", &req.user)?;
        let device: DeviceId = id("device", &req.device)?;
        let me = &router.gateway().id;
        let sessions = router
            .backends()
            .presence
            .locate_shared(&user)
            .await
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
        if sessions
            .iter()
            .any(|s| s.device == device && &s.gateway != me)
        {
            return Err(Status::permission_denied(format!(
                "device {device:?} of user {user:?} is connected to another gateway"
            )));
        }
        router
            .disconnect(user, device)
            .await
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
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
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
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
        let user: UserId = id("user", &req.user)?;
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
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
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
        let user: UserId = id("user", &req.user)?;
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
            .map_err(|e| Status::unavailable(Report(&e).to_string()))?;
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
