//! The canary admin RPCs and the `switchyard canary` client against an
//! in-process sidecar: status, set (and its refusals), rollback with the
//! operator's reason, the canary in `State`, and the admin token.
//! The canary itself (`--features it-redis,it-kafka`) uses the Redis and
//! Kafka of `scripts/services/{redis,kafka}.sh`; the refusals and the token
//! need nothing.

#[cfg(all(feature = "it-redis", feature = "it-kafka"))]
use testkit::canary_fleet;
use testkit::sidecars;

use switchyard::proto;
use switchyard::sidecar::{SecretSource, Sidecar};
use switchyard_cli::admin_ctl::{self, CanaryCommand};
use tonic::Code;

#[cfg(all(feature = "it-redis", feature = "it-kafka"))]
#[tokio::test]
async fn status_set_and_rollback_through_the_admin_api_and_the_cli() {
    let run = canary_fleet::run_id("admin");
    let settings = canary_fleet::settings(&run, "127.0.0.1:9092", "switch", "", "enabled = true");
    let sidecar = Sidecar::start(settings, None).await.expect("sidecar");
    let mut admin = sidecars::admin(sidecar.grpc_addr()).await;
    let addr = format!("http://{}", sidecar.grpc_addr());

    let status = admin_ctl::run(&addr, None, CanaryCommand::Status)
        .await
        .unwrap();
    assert!(
        status.starts_with("canary: redis -> kafka  share: 0%  unit: gateway  mode: switch"),
        "{status}"
    );
    assert!(status.contains("last rollback: none"), "{status}");

    let err = admin
        .set_canary_share(proto::SetCanaryShareRequest { share: 130 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(
        admin_ctl::run(&addr, None, CanaryCommand::Set(30))
            .await
            .unwrap(),
        "canary share 0% -> 30%\n"
    );
    let state = admin
        .state(proto::StateRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.canary.as_ref().map(|c| c.share), Some(30));

    assert_eq!(
        admin_ctl::run(&addr, None, CanaryCommand::Rollback("kafka p99".into()))
            .await
            .unwrap(),
        "canary rolled back: 30% -> 0%\n"
    );
    let canary = admin
        .canary_status(proto::CanaryStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .canary
        .expect("a canary");
    assert_eq!(canary.share, 0);
    let last = canary.last_rollback.expect("the operator's rollback");
    assert_eq!(
        (last.from_share, last.reason.as_str()),
        (30, "operator: kafka p99")
    );
    sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_canary_set_and_rollback_are_refused() {
    let sidecar = Sidecar::start(sidecars::settings(), None)
        .await
        .expect("sidecar");
    let mut admin = sidecars::admin(sidecar.grpc_addr()).await;
    let set = admin
        .set_canary_share(proto::SetCanaryShareRequest { share: 10 })
        .await
        .unwrap_err();
    assert_eq!(set.code(), Code::FailedPrecondition, "{set:?}");
    let rollback = admin
        .rollback_canary(proto::RollbackCanaryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(rollback.code(), Code::FailedPrecondition, "{rollback:?}");
    let addr = format!("http://{}", sidecar.grpc_addr());
    assert_eq!(
        admin_ctl::run(&addr, None, CanaryCommand::Status)
            .await
            .unwrap(),
        "no canary configured\n"
    );
    sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_cli_sends_the_admin_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin");
    std::fs::write(&path, "token-admin\n").unwrap();
    let mut settings = sidecars::settings();
    settings.sidecar.admin_token = Some(SecretSource {
        env: None,
        file: Some(path),
    });
    let sidecar = Sidecar::start(settings, None).await.expect("sidecar");
    let addr = format!("http://{}", sidecar.grpc_addr());
    let refused = admin_ctl::run(&addr, None, CanaryCommand::Status)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.starts_with("CanaryStatus failed"), "{refused}");
    // Set once, before any thread reads the environment in this test binary.
    std::env::set_var("SWITCHYARD_TEST_CANARY_ADMIN", "token-admin");
    let status = admin_ctl::run(
        &addr,
        Some("SWITCHYARD_TEST_CANARY_ADMIN"),
        CanaryCommand::Status,
    )
    .await
    .unwrap();
    assert_eq!(status, "no canary configured\n");
    let missing = admin_ctl::run(
        &addr,
        Some("SWITCHYARD_TEST_CANARY_UNSET"),
        CanaryCommand::Status,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        missing.starts_with("admin token from $SWITCHYARD_TEST_CANARY_UNSET"),
        "{missing}"
    );
    sidecar.shutdown().await.unwrap();
}
