//! Shared by the `tests/redis_*.rs` suites: settings that point every store
//! and the same-region transport at a real Redis (standalone or cluster)
//! under a key prefix unique to the test, so tests run in parallel.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard::config::StoreConfig;
use switchyard::redis_conn::{RedisConfig, RedisHandle};
use switchyard::transport::redis::RedisTransportConfig;
use switchyard::transport::TransportsConfig;
use switchyard::{Backends, Destination, Envelope, MessageId, Priority, Router, Settings};

pub use crate::wait::eventually;

/// Which Redis a test case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    Standalone,
    Cluster,
}

/// Runs an `async fn(Deployment)` case as two tests, one per deployment.
#[macro_export]
macro_rules! on_both {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn standalone() {
                    super::$case($crate::redis_nodes::Deployment::Standalone).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$case($crate::redis_nodes::Deployment::Cluster).await
                }
            }
        )*
    };
}

/// Connection settings for `deployment` with a fresh key prefix.
pub fn redis_config(deployment: Deployment) -> RedisConfig {
    let (var, default, cluster) = match deployment {
        Deployment::Standalone => ("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379", false),
        Deployment::Cluster => (
            "SWITCHYARD_TEST_REDIS_CLUSTER",
            "redis://127.0.0.1:7000",
            true,
        ),
    };
    RedisConfig {
        url: std::env::var(var).unwrap_or_else(|_| default.into()),
        cluster,
        key_prefix: format!("sy-test-{}", ulid::Ulid::new()),
        ..RedisConfig::default()
    }
}

/// Settings with every store and both routes on `redis` (no memory transport).
pub fn settings(redis: &RedisConfig) -> Settings {
    let mut settings = Settings {
        store: StoreConfig::Redis(redis.clone()),
        transports: TransportsConfig {
            redis: Some(RedisTransportConfig {
                connection: redis.clone(),
                ..RedisTransportConfig::default()
            }),
            ..TransportsConfig::default()
        },
        ..Settings::default()
    };
    settings.routing.same_region = "redis".into();
    settings.routing.cross_region = "redis".into();
    settings
}

/// Logs to the test output when `RUST_LOG` is set.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One router node's backends (each call is another node).
pub async fn node(settings: &Settings) -> Backends {
    init_logs();
    Backends::from_settings(settings)
        .await
        .expect("backends over Redis")
}

/// A router for gateway `id` in region `eu` on its own node.
pub async fn router(settings: &Settings, id: &str) -> (Router, switchyard::Inbox) {
    init_logs();
    let id: switchyard::GatewayId = id.parse().expect("gateway id");
    Router::builder(switchyard::GatewayInfo::new(id, "eu"))
        .settings(settings.clone())
        .build()
        .await
        .expect("router over Redis")
}

/// A raw connection for assertions and fault injection.
pub async fn raw(redis: &RedisConfig) -> RedisHandle {
    RedisHandle::connect(redis)
        .await
        .expect("raw Redis connection")
}

/// Message `i` from alice on gw-a to bob.
pub fn to_bob(i: usize, priority: Priority) -> Envelope {
    Envelope::new(
        "alice",
        "gw-a",
        Destination::User("bob".into()),
        format!("m{i}"),
    )
    .with_priority(priority)
}

/// What a [`steady_send`] sent.
pub struct Steady {
    /// Every id sent, in order.
    pub ids: Vec<MessageId>,
    /// From the end of the fault to the first send after it that every
    /// target's transport confirmed (not stored offline); `None` if none was.
    pub recovered: Option<Duration>,
}

/// Sends `count` high-priority messages to bob, one every 5 ms, calling
/// `fault` after `fault_at`; a send that fails is retried like a caller
/// would.
pub async fn steady_send<F: std::future::Future<Output = ()>>(
    a: &Router,
    count: usize,
    fault_at: usize,
    fault: F,
) -> Steady {
    let mut fault = Some(fault);
    let mut faulted = None;
    let mut recovered = None;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        if i == fault_at {
            if let Some(fault) = fault.take() {
                fault.await;
                faulted = Some(std::time::Instant::now());
            }
        }
        let envelope = to_bob(i, Priority::High);
        ids.push(envelope.id);
        let report = loop {
            match a.send(envelope.clone()).await {
                Ok(report) => break report,
                Err(err) => {
                    eprintln!("send {i} failed, retrying: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        if let (Some(at), None) = (faulted, recovered) {
            if published(&report) {
                recovered = Some(at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Steady { ids, recovered }
}

/// Every target's transport confirmed the message, and none of it went to
/// the offline store.
fn published(report: &switchyard::SendReport) -> bool {
    match &report.outcome {
        switchyard::Outcome::Routed {
            targets,
            stored_offline: None,
        } => !targets.is_empty() && targets.iter().all(|t| t.confirmed),
        _ => false,
    }
}

/// Reads bob's inbox until every id in `sent` was delivered or is waiting
/// in the offline store, or `within` passes; returns (delivered, offline,
/// missing).
pub async fn account(
    b: &Router,
    inbox: &mut switchyard::Inbox,
    sent: &[MessageId],
    within: Duration,
) -> (usize, usize, Vec<MessageId>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut delivered = BTreeSet::new();
    loop {
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), inbox.recv()).await
        {
            inbox.ack(d.seq);
            delivered.insert(d.envelope.id);
        }
        let offline: BTreeSet<MessageId> = b
            .backends()
            .offline()
            .read(&"bob".into(), 100_000)
            .await
            .map(|v| v.into_iter().map(|e| e.id).collect())
            .unwrap_or_default();
        let missing: Vec<MessageId> = sent
            .iter()
            .filter(|id| !delivered.contains(id) && !offline.contains(id))
            .copied()
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            let stored = sent.iter().filter(|id| !delivered.contains(id)).count();
            return (delivered.len(), stored, missing);
        }
    }
}
