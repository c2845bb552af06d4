//! The telemetry endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (it accepts new work; 503 while
//! starting or draining).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Shared;
use crate::telemetry;

#[derive(Clone)]
struct Endpoint {
    metrics: PrometheusHandle,
    shared: Arc<Shared>,
}

/// Serves until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoint { metrics, shared });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "telemetry endpoint failed");
    }
}

async fn render(State(endpoint): State<Endpoint>) -> ([(&'static str, &'static str); 1], String) {
    // Read now from every transport: the direct link and the in-memory
    // transport keep no gauge of their own.
    for transport in endpoint.shared.backends.transports.iter() {
        let up = matches!(transport.health(), crate::transport::Health::Up);
        telemetry::transport_up(transport.kind(), up);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        telemetry::render(&endpoint.metrics),
    )
}

async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
