//! The telemetry endpoint: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up), `/readyz` (it accepts new work; 503 while starting,
//! during the readiness grace and while draining) and `/status` (the HTML
//! status page, `status_page`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{status_page, Shared};
use crate::telemetry;

#[derive(Clone)]
struct Endpoint {
    metrics: PrometheusHandle,
    shared: Arc<Shared>,
    rates: Arc<status_page::Rates>,
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
        .route("/status", get(status))
        .with_state(Endpoint {
            metrics,
            shared,
            rates: Arc::default(),
        });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(err) = result {
        tracing::error!(%err, "telemetry endpoint failed");
    }
}

/// The scrape, with every transport's health read now: transports set the
/// gauge as their health changes, but the direct link's comes back up by
/// time (`retry_after`), which no event marks.
fn scrape(endpoint: &Endpoint) -> String {
    for transport in endpoint.shared.backends.transports.iter() {
        let up = matches!(transport.health(), crate::transport::Health::Up);
        crate::transport::record_up(transport.kind(), up);
    }
    telemetry::render(&endpoint.metrics)
}

async fn render(State(endpoint): State<Endpoint>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        scrape(&endpoint),
    )
}

async fn status(State(endpoint): State<Endpoint>) -> ([(&'static str, &'static str); 1], String) {
    let state = super::admin::state(&endpoint.shared).await;
    let page = status_page::render(&state, &scrape(&endpoint), &endpoint.rates);
    ([("content-type", "text/html; charset=utf-8")], page)
}

async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if endpoint.shared.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
