//! The sidecar (`switchyard serve`): gateways in any language use switchyard
//! over gRPC. One process serves any number of attached gateways, one
//! [`Router`](crate::Router) each, all sharing one [`Backends`].
//!
//! - [`gateway`]: the Gateway API (attach, send, presence, groups, offline);
//!   `attached` (the gateways attached here, idle eviction), `send` (wire
//!   envelopes in, send outcomes out), `stream` (the Attach stream's
//!   delivery pump and drain), `fields` (request ids checked).
//! - [`admin`]: the Admin API (state, reload, canary status/share/rollback).
//! - [`peer`]: the Peer API, the receiving half of the `grpc` transport.
//! - `presence`: the Gateway API's presence and group queries and watches.
//! - [`auth`]: bearer tokens per gateway, for admin and for peers; a
//!   gateway acts only for users it hosts. `secrets` reads the tokens.
//! - [`user_auth`]: optional user tokens (JWT) that `Online` must carry.
//! - [`client`]: the gateway's half of an Attach stream, for Rust callers.
//! - [`reload`]: live config (admin RPC, file watch, SIGHUP).
//! - [`tls`]: TLS and mutual TLS for the server and for direct links.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, `/status`.
//! - `status_page`: the HTML status page for operators.
//! - `rpc_metrics`: per-RPC call counts and durations.
//! - `reflection`: gRPC server reflection, v1 and v1alpha.
//!
//! Beside them the server runs the standard gRPC health service.

pub mod admin;
mod attached;
pub mod auth;
pub mod client;
mod dead_letters;
mod fields;
pub mod gateway;
pub mod http;
pub mod peer;
mod presence;
mod reflection;
pub mod reload;
mod rpc_metrics;
mod secrets;
mod send;
mod status_page;
mod stream;
pub mod tls;
pub mod user_auth;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use humantime_serde::re::humantime::format_duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::backends::Backends;
use crate::backends::BuildError;
use crate::cause::{Cause, Report};
use crate::config::Settings;
use crate::policy::live::LivePolicy;
use crate::proto::{
    admin_server::AdminServer, gateway_server::GatewayServer, peer_server::PeerServer,
};
use crate::telemetry::{self, RecorderError};
use crate::topology::{GatewayId, IdError};
use crate::transport::grpc::PeerLinks;

pub use crate::config::sidecar::{SecretSource, SidecarConfig};

/// What went wrong starting or running the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The backends could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A listen address could not be bound.
    #[error("cannot listen on {key} = {address}")]
    Bind {
        /// The config key.
        key: &'static str,
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A secret could not be read (its value is never shown).
    #[error("{key}: cannot read the secret from {from}")]
    Secret {
        /// The config key.
        key: String,
        /// `env NAME` or `file PATH`.
        from: String,
        /// Why.
        #[source]
        reason: Cause,
    },
    /// A `[sidecar.tokens]` key is not a gateway id.
    #[error("{key}: not a gateway id")]
    TokenKey {
        /// The config key.
        key: String,
        /// Which rule it breaks.
        source: IdError,
    },
    /// A TLS file could not be read or used.
    #[error("{key} = {path}: cannot use it for TLS")]
    Tls {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        reason: Cause,
    },
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// The encoded proto descriptors could not be read.
    #[error("cannot read the proto descriptors for {what}")]
    Descriptors {
        /// Which service needed them.
        what: &'static str,
        /// Why.
        #[source]
        reason: prost::DecodeError,
    },
    /// The gRPC server failed.
    #[error("gRPC server on {address} failed")]
    Server {
        /// The listen address.
        address: SocketAddr,
        /// Why.
        #[source]
        reason: Cause,
    },
    /// Watching the config file failed.
    #[error("cannot watch config file {path}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        reason: notify::Error,
    },
}

/// What start-up would read besides the settings themselves: every token
/// (from its variable or file) and the TLS files. `check-config` runs it so
/// a missing secret shows before a deploy, not at the first start.
pub fn preflight(settings: &Settings) -> Result<(), SidecarError> {
    auth::Tokens::resolve(&settings.sidecar)?;
    if let Some(tls) = &settings.sidecar.tls {
        tls::Tls::load(tls)?;
    }
    Ok(())
}

/// State shared by the sidecar's services.
pub(crate) struct Shared {
    pub(crate) backends: Backends,
    /// Routing and canary, shared by every attached gateway's router.
    pub(crate) policy: Arc<LivePolicy>,
    /// The config in force (restart-only sections stay as started).
    pub(crate) settings: ArcSwap<Settings>,
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) auth: auth::Auth,
    pub(crate) gateways: tokio::sync::Mutex<HashMap<GatewayId, attached::Attached>>,
    /// Registered for gateways that attach without an address.
    pub(crate) advertise: String,
    /// Flips to true when the sidecar starts draining.
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) ready: AtomicBool,
}

/// A running sidecar: a gRPC server and a telemetry endpoint.
pub struct Sidecar {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    telemetry_addr: SocketAddr,
    stop: watch::Sender<bool>,
    /// Stops the telemetry endpoint, after the drain (so `/readyz` answers
    /// 503 while draining).
    http_stop: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), SidecarError>>,
    http: JoinHandle<()>,
    /// The gRPC health service's state, NOT_SERVING from the first moment
    /// of a shutdown.
    health: tonic_health::server::HealthReporter,
    /// Keeps the config file watch alive.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Sidecar {
    /// Builds the backends from `settings` and starts serving.
    pub async fn start(
        settings: Settings,
        config_path: Option<PathBuf>,
    ) -> Result<Self, SidecarError> {
        // Before the backends: they set gauges (`switchyard_transport_up`)
        // as they are built, and a gauge set before the recorder is lost.
        telemetry::prometheus()?;
        let backends = Backends::from_settings(&settings).await?;
        Self::start_with_backends(settings, config_path, backends).await
    }

    /// Starts serving on backends shared with other sidecars or routers in
    /// this process (single-node fleets, tests).
    pub async fn start_with_backends(
        settings: Settings,
        config_path: Option<PathBuf>,
        backends: Backends,
    ) -> Result<Self, SidecarError> {
        settings.validate().map_err(BuildError::from)?;
        let metrics = telemetry::prometheus()?;
        let tokens = auth::Tokens::resolve(&settings.sidecar)?;
        let tls = settings
            .sidecar
            .tls
            .as_ref()
            .map(tls::Tls::load)
            .transpose()?;
        if let Some(PeerLinks(links)) = backends.extension() {
            links.set_peer_token(tokens.peer.clone());
            links.set_tls(tls.as_ref().map(|t| t.client.clone()));
        }
        let bind = |key, address| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| SidecarError::Bind {
                    key,
                    address,
                    source,
                })
        };
        let grpc_listener = bind("sidecar.listen", settings.sidecar.listen).await?;
        let http_listener = bind("telemetry.listen", settings.telemetry.listen).await?;
        let local = |l: &TcpListener, key, address| {
            l.local_addr().map_err(|source| SidecarError::Bind {
                key,
                address,
                source,
            })
        };
        let grpc_addr = local(&grpc_listener, "sidecar.listen", settings.sidecar.listen)?;
        let telemetry_addr = local(
            &http_listener,
            "telemetry.listen",
            settings.telemetry.listen,
        )?;
        let advertise = if settings.sidecar.advertise.is_empty() {
            grpc_addr.to_string()
        } else {
            settings.sidecar.advertise.clone()
        };

        let policy = settings.live_policy().map_err(BuildError::Config)?;
        policy.watch();
        // From start-up, not from the first Attach: a canary transport that
        // is down rolls back (`max_down`) even before a gateway attaches.
        policy.observe(&backends.transports);
        let (stop, stopping) = watch::channel(false);
        // Present from the first scrape, not from the first attach.
        metrics::gauge!(telemetry::ATTACHED_GATEWAYS).increment(0.0);
        let shared = Arc::new(Shared {
            backends,
            policy,
            settings: ArcSwap::from_pointee(settings),
            config_path,
            auth: auth::Auth::new(tokens),
            gateways: tokio::sync::Mutex::new(HashMap::new()),
            advertise,
            stopping,
            ready: AtomicBool::new(false),
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<GatewayServer<gateway::GatewayService>>()
            .await;
        health
            .set_serving::<AdminServer<admin::AdminService>>()
            .await;
        health.set_serving::<PeerServer<peer::PeerService>>().await;
        let descriptors = [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let reflection = reflection::Reflection::new(&descriptors).map_err(|reason| {
            SidecarError::Descriptors {
                what: "gRPC reflection",
                reason,
            }
        })?;
        let rpc_metrics = rpc_metrics::RpcMetricsLayer::new(&descriptors).map_err(|e| {
            SidecarError::Descriptors {
                what: "per-RPC metrics",
                reason: e,
            }
        })?;
        let mut server = tonic::transport::Server::builder().layer(rpc_metrics);
        if let Some(tls) = tls {
            server = server
                .tls_config(tls.server)
                .map_err(|e| SidecarError::Tls {
                    key: "sidecar.tls".into(),
                    path: PathBuf::new(),
                    reason: Cause::new(e),
                })?;
        }
        let router = server
            .add_service(health_service)
            .add_service(reflection.v1())
            .add_service(reflection.v1alpha())
            .add_service(InterceptedService::new(
                GatewayServer::new(gateway::GatewayService::new(shared.clone())),
                auth::gateway_interceptor(shared.clone()),
            ))
            .add_service(InterceptedService::new(
                AdminServer::new(admin::AdminService::new(shared.clone())),
                auth::admin_interceptor(shared.clone()),
            ))
            .add_service(InterceptedService::new(
                PeerServer::new(peer::PeerService::new(shared.clone())),
                auth::peer_interceptor(shared.clone()),
            ));
        let mut grpc_stop = stop.subscribe();
        let grpc = tokio::spawn(async move {
            let signal = async move {
                // Err: the sender is gone, which also means stop.
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            };
            // `TcpIncoming::from` leaves Nagle on (tonic's `tcp_nodelay`
            // only applies to `serve(addr)`): small replies and stream
            // messages then wait for the client's delayed ACK, ~40 ms each.
            let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .map_err(|e| SidecarError::Server {
                    address: grpc_addr,
                    reason: Cause::new(e),
                })
        });
        let (http_stop, http_stopping) = watch::channel(false);
        let http = tokio::spawn(http::serve(
            http_listener,
            metrics,
            shared.clone(),
            http_stopping,
        ));
        let watcher = match &shared.config_path {
            Some(path) => Some(reload::watch_file(shared.clone(), path.clone())?),
            None => None,
        };
        tokio::spawn(evict_idle_gateways(shared.clone()));
        shared.ready.store(true, Ordering::Release);
        tracing::info!(grpc = %grpc_addr, telemetry = %telemetry_addr, "sidecar serving");
        Ok(Self {
            shared,
            grpc_addr,
            telemetry_addr,
            stop,
            http_stop,
            grpc,
            http,
            health,
            _watcher: watcher,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound telemetry address.
    pub fn telemetry_addr(&self) -> SocketAddr {
        self.telemetry_addr
    }

    /// Reloads the config file, as the Admin API and SIGHUP do.
    pub async fn reload(&self) -> reload::ReloadReport {
        reload::reload(&self.shared).await
    }

    /// Graceful stop: answers readiness 503 (and gRPC health NOT_SERVING)
    /// while still serving for `sidecar.readiness_grace`, then refuses new
    /// calls, stops handing out deliveries, takes the gateways' acks for what they hold for up to
    /// half of `sidecar.drain_timeout`, ends every Attach stream with
    /// UNAVAILABLE, lets in-flight calls finish within the drain timeout,
    /// removes its gateways from the registry so peers stop linking here,
    /// and closes their subscriptions once the acked part is settled on the
    /// transports. Nothing unacked is acked.
    pub async fn shutdown(self) -> Result<(), SidecarError> {
        let (grace, drain) = {
            let settings = self.shared.settings.load();
            (
                settings.sidecar.readiness_grace,
                settings.sidecar.drain_timeout,
            )
        };
        self.shared.ready.store(false, Ordering::Release);
        self.health
            .set_not_serving::<GatewayServer<gateway::GatewayService>>()
            .await;
        tracing::info!(
            grace = %format_duration(grace),
            "sidecar not ready; still serving until load balancers stop sending"
        );
        tokio::time::sleep(grace).await;
        tracing::info!(
            drain = %format_duration(drain),
            "sidecar draining"
        );
        self.stop.send_replace(true);
        let result = match tokio::time::timeout(drain, self.grpc).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(SidecarError::Server {
                address: self.grpc_addr,
                reason: Cause::new(join),
            }),
            Err(_) => {
                tracing::warn!(
                    drain = %format_duration(drain),
                    "drain timeout: calls still in flight were cut"
                );
                Ok(())
            }
        };
        let gateways: Vec<(GatewayId, attached::Attached)> =
            self.shared.gateways.lock().await.drain().collect();
        for (gateway, attached) in gateways {
            if let Err(err) = self.shared.backends.registry.deregister(&gateway).await {
                tracing::warn!(%gateway, err = %Report(&err), "could not deregister gateway");
            }
            // Send the acks of what the gateway acked and let the transports
            // settle (offsets committed, resume position written); what was
            // not acked stays with them for the next sidecar.
            if let Some(inbox) = attached.take_inbox() {
                if tokio::time::timeout(drain, inbox.close()).await.is_err() {
                    tracing::warn!(%gateway, drain = %format_duration(drain), "transports did not settle within the drain timeout");
                }
            }
        }
        self.http_stop.send_replace(true);
        let _ = self.http.await;
        tracing::info!("sidecar stopped");
        result
    }
}

/// Every few seconds, forgets the gateways detached for longer than a
/// silent gateway's registration lives; stops when the sidecar drains.
async fn evict_idle_gateways(shared: Arc<Shared>) {
    let idle = shared.settings.load().heartbeat_interval() * 3;
    let mut stopping = shared.stopping.clone();
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                attached::evict_idle(&shared, idle).await;
            }
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => return,
        }
    }
}

/// Runs the sidecar until `shutdown` completes, then drains. Reloads config
/// on SIGHUP and on changes to `config_path`.
pub async fn serve(
    settings: Settings,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SidecarError> {
    let hangups = reload::Hangups::hook();
    let sidecar = Sidecar::start(settings, config_path).await?;
    let hangups = hangups.reload_on_each(sidecar.shared.clone());
    shutdown.await;
    if let Some(hangups) = hangups {
        hangups.abort();
    }
    sidecar.shutdown().await
}
