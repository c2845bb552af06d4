//! The metrics scrape after traffic. Alone in its test binary, apart from
//! `tests/it`: the Prometheus recorder is process-wide, so counts here are
//! exact only with no other test in the process.

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(feature = "it-tools")]

use std::time::Duration;

use testkit::sidecars::*;

#[tokio::test]
async fn metrics_health_and_readiness_after_traffic() {
    let settings = with_direct_links(1.0, 0.5, Duration::from_secs(1));
    let AliceAndBob {
        sidecars,
        mut a,
        a_stream: _a_stream,
        mut b_stream,
        ..
    } = alice_and_bob(&settings).await;
    send_counting(&mut a, 3).await;
    send(&mut a, "gw-a", message("alice", "nobody", "stored")).await;
    for _ in 0..3 {
        next(&mut b_stream).await;
    }

    let telemetry = sidecars[0].telemetry_addr();
    assert_eq!(http_get(telemetry, "/healthz").await.0, 200);
    assert_eq!(http_get(telemetry, "/readyz").await.0, 200);
    let (status, body) = http_get(telemetry, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "# TYPE switchyard_delivery_latency_seconds histogram",
        "switchyard_delivery_latency_seconds_bucket{via=\"grpc\",le=\"0.001\"}",
        "switchyard_messages_total{route=\"same_region\",via=\"grpc\",outcome=\"sent\"}",
        "switchyard_offline_stored_total{reason=\"no_session\"} 1",
        "switchyard_offline_messages 1",
        "switchyard_presence_lookups_total{result=",
        "switchyard_hot_pairs 1",
        "switchyard_hot_pair_changes_total{change=\"promoted\"} 1",
        "switchyard_sidecar_attached_gateways 2",
        "switchyard_grpc_server_handled_total{grpc_service=\"switchyard.v1.Gateway\",grpc_method=\"Online\",grpc_code=\"Ok\"} 2",
    ] {
        assert!(body.contains(series), "{series} missing from:\n{body}");
    }
    promtool_check(&body).unwrap();
}
