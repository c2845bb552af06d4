//! The canary watchdog and dual mode over real servers, with NATS JetStream
//! as the canary transport (a private `nats-server` each test stops) and
//! the shared Redis of `scripts/services/redis.sh` as the old one:
//!
//! - only the canary cohort counts: publishes that fail on the canary
//!   transport for another route (cross-region traffic on it all along) do
//!   not roll the canary back; the cohort's own failures do;
//! - a dual-mode send does not wait for a mirror that cannot confirm: once
//!   the primary took the message it waits `canary.mirror_wait`, and says
//!   the message was not mirrored;
//! - a canary transport down for `canary.rollback.max_down` rolls back.
//!
//! The watchdog is checked by the test (`LivePolicy::check`), not by its
//! once-a-second ticker, so what triggers a rollback is what the test did.
//!
//!   scripts/services/redis.sh start
//!   cargo test -p switchyard --features it-redis,it-nats --test it canary_cohort::

// Only with its test tiers (Cargo.toml [features]); plain `cargo test` runs none of it.
#![cfg(all(feature = "it-redis", feature = "it-nats"))]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use servers::PrivateBroker;
use switchyard::policy::live::{LivePolicy, Rollback};
use switchyard::transport::{Health, TransportKind};
use switchyard::{
    Backends, Destination, Envelope, GatewayInfo, Inbox, MessageId, Outcome, Router, SendReport,
    Settings, Via,
};
use testkit::servers;

/// How long a test waits for messages, or for the watchdog, before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// One region `eu` with gateways `eu-a` (the sender) and `eu-b`, one
/// region `us` with `us-c`. Same region goes over Redis, cross region over
/// NATS with no fallback, and a dual `redis -> nats` canary at 100% moves
/// every same-region target into the cohort.
struct Fleet {
    live: Arc<LivePolicy>,
    a: Router,
    inboxes: BTreeMap<&'static str, Inbox>,
    _routers: Vec<Router>,
}

fn settings(run: &str, nats: &str, timeout: &str, mirror_wait: &str, max_down: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
[transports.redis.connection]
url = "redis://127.0.0.1:6379"
key_prefix = "sycohort-{run}"

[transports.nats]
url = "{nats}"
stream = "SYCOHORT"
subject_prefix = "sycohort.gw"
storage = "memory"
request_timeout = "{timeout}"
connect_timeout = "5s"

[routing]
same_region = "redis"
cross_region = "nats"

[delivery]
retries = 0
publish_timeout = "{timeout}"

[canary]
from = "redis"
to = "nats"
share = 100
mode = "dual"
mirror_wait = "{mirror_wait}"

[canary.rollback]
enabled = true
window = "10m"
min_samples = 5
max_error_rate = 0.01
max_p99 = "10m"
max_down = "{max_down}"
"#
    ))
    .expect("valid test settings")
}

impl Fleet {
    async fn start(settings: Settings) -> Self {
        // Not watched: the test calls `check` itself.
        let live = LivePolicy::new(settings.policy().expect("valid policy"));
        let backends = Backends::from_settings(&settings)
            .await
            .expect("backends over Redis and NATS");
        let mut routers = Vec::new();
        let mut inboxes = BTreeMap::new();
        for (id, region) in [("eu-a", "eu"), ("eu-b", "eu"), ("us-c", "us")] {
            let (router, inbox) = Router::builder(GatewayInfo::new(id, region))
                .settings(settings.clone())
                .backends(backends.clone())
                .policy(live.clone())
                .build()
                .await
                .expect("router");
            inboxes.insert(id, inbox);
            routers.push(router);
        }
        routers[1]
            .connect("bob", "phone")
            .await
            .expect("bob online");
        routers[2]
            .connect("carol", "phone")
            .await
            .expect("carol online");
        Self {
            live,
            a: routers[0].clone(),
            inboxes,
            _routers: routers,
        }
    }

    /// `n` messages from alice on eu-a to `user`, sent as one batch.
    async fn send(&self, user: &'static str, n: usize) -> Vec<SendReport> {
        let envelopes = (0..n)
            .map(|i| {
                Envelope::new(
                    "alice",
                    "eu-a",
                    Destination::User(user.into()),
                    format!("{i}"),
                )
            })
            .collect();
        self.a
            .send_batch(envelopes)
            .await
            .into_iter()
            .map(|r| r.expect("routed or stored offline"))
            .collect()
    }

    /// Reads `gateway`'s inbox until every id of `want` arrived (or
    /// [`PATIENCE`] ran out), then for a moment more; returns (lost, duplicates).
    async fn account(&mut self, gateway: &str, want: &BTreeSet<MessageId>) -> (usize, usize) {
        let inbox = self
            .inboxes
            .get_mut(gateway)
            .expect("a gateway of the fleet");
        let mut got = BTreeSet::new();
        let mut duplicates = 0;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !want.is_subset(&got) {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(d)) => {
                    inbox.ack(d.seq);
                    if !got.insert(d.envelope.id) {
                        duplicates += 1;
                    }
                }
                _ => break,
            }
        }
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), inbox.recv()).await
        {
            inbox.ack(d.seq);
            if !got.insert(d.envelope.id) {
                duplicates += 1;
            }
        }
        (want.difference(&got).count(), duplicates)
    }

    /// Checks the watchdog until it rolls back, or [`PATIENCE`] runs out.
    async fn rollback(&self) -> Option<Rollback> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Some(rollback) = self.live.check() {
                return Some(rollback);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

/// The single target of a 1:1 report.
fn target(report: &SendReport) -> &switchyard::TargetReport {
    match &report.outcome {
        Outcome::Routed { targets, .. } if targets.len() == 1 => &targets[0],
        other => panic!("one target expected: {other:?}"),
    }
}

fn ids(reports: &[SendReport]) -> BTreeSet<MessageId> {
    reports.iter().map(|r| r.id).collect()
}

/// Waits until the private NATS server's absence shows in the transport's health.
async fn nats_down(fleet: &Fleet) {
    let transports = &fleet.a.backends().transports();
    let nats = transports.get(TransportKind::NATS).expect("nats enabled");
    let deadline = Instant::now() + PATIENCE;
    while nats.health() == Health::Up {
        assert!(
            Instant::now() < deadline,
            "nats health stayed up with its server gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cohort_counts_towards_a_rollback() {
    let mut nats = PrivateBroker::nats().await;
    let run = ulid::Ulid::new().to_string();
    let mut fleet = Fleet::start(settings(&run, &nats.address(), "1s", "100ms", "0s")).await;
    nats.kill();
    nats_down(&fleet).await;

    // Cross-region traffic has been on NATS all along: it is not the
    // canary's cohort, so its failures (stored offline, not lost) do not count.
    let cross = fleet.send("carol", 20).await;
    for report in &cross {
        let Outcome::Routed {
            targets,
            stored_offline,
        } = &report.outcome
        else {
            panic!("{report:?}")
        };
        assert!(targets[0].result.is_err(), "{targets:?}");
        assert!(
            !targets[0].confirmed && stored_offline.is_some(),
            "{report:?}"
        );
    }
    let stored: BTreeSet<MessageId> = fleet
        .a
        .backends()
        .offline()
        .read(&"carol".into(), 100)
        .await
        .expect("offline store")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        stored,
        ids(&cross),
        "every failed cross-region message stored offline"
    );
    let stats = fleet.live.canary_stats();
    assert_eq!(
        (stats.published, stats.failed),
        (0, 0),
        "non-cohort publishes counted"
    );
    assert_eq!(
        fleet.live.check(),
        None,
        "rolled back for traffic outside the cohort"
    );

    // The cohort's mirror publishes fail: those count, and roll back.
    let cohort = fleet.send("bob", 20).await;
    for report in &cohort {
        let t = target(report);
        assert!(
            matches!(t.result, Ok(Via::Transport(TransportKind::REDIS))),
            "{t:?}"
        );
        assert!(t.confirmed && t.mirrored.is_none(), "{t:?}");
    }
    let rollback = fleet
        .rollback()
        .await
        .expect("cohort failures roll the canary back");
    assert!(
        rollback.reason.starts_with("nats error rate"),
        "{}",
        rollback.reason
    );
    assert_eq!(rollback.from_share, 100);
    assert_eq!(
        fleet.account("eu-b", &ids(&cohort)).await,
        (0, 0),
        "(lost, duplicates)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_send_does_not_wait_for_a_mirror_that_is_down() {
    let mut nats = PrivateBroker::nats().await;
    let run = ulid::Ulid::new().to_string();
    // A mirror publish to a stopped server takes the whole 20 s timeout.
    const MIRROR_TIMEOUT: Duration = Duration::from_secs(20);
    let mut fleet = Fleet::start(settings(&run, &nats.address(), "20s", "500ms", "0s")).await;

    // With both up, each cohort message is mirrored and arrives once.
    let up = fleet.send("bob", 10).await;
    for report in &up {
        let t = target(report);
        assert!(
            matches!(t.result, Ok(Via::Transport(TransportKind::REDIS))),
            "{t:?}"
        );
        assert!(t.confirmed, "{t:?}");
        assert_eq!(t.mirrored, Some(TransportKind::NATS), "{t:?}");
    }
    assert_eq!(
        fleet.account("eu-b", &ids(&up)).await,
        (0, 0),
        "(lost, duplicates)"
    );

    nats.kill();
    nats_down(&fleet).await;
    // Ten sends one after another, each waiting `mirror_wait` (500 ms) for
    // the mirror: all ten return before the mirror's timeout, which one
    // alone would have taken had it waited for the mirror to fail.
    let started = Instant::now();
    let mut down = Vec::new();
    for i in 0..10 {
        down.extend(fleet.send("bob", 1).await);
        let took = started.elapsed();
        assert!(
            took < MIRROR_TIMEOUT,
            "{} send(s) took {took:?}: they waited for the mirror",
            i + 1
        );
    }
    for report in &down {
        let t = target(report);
        assert!(
            matches!(t.result, Ok(Via::Transport(TransportKind::REDIS))),
            "{t:?}"
        );
        assert!(t.confirmed, "{t:?}");
        assert_eq!(
            t.mirrored, None,
            "reported mirrored with the mirror down: {t:?}"
        );
    }
    assert_eq!(
        fleet.account("eu-b", &ids(&down)).await,
        (0, 0),
        "(lost, duplicates)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_transport_down_for_max_down_rolls_back() {
    let mut nats = PrivateBroker::nats().await;
    let run = ulid::Ulid::new().to_string();
    let fleet = Fleet::start(settings(&run, &nats.address(), "1s", "100ms", "2s")).await;
    assert_eq!(fleet.live.check(), None, "up: nothing to roll back");
    nats.kill();
    nats_down(&fleet).await;
    // No traffic at all: only the transport's health can trigger this.
    let rollback = fleet.rollback().await.expect("rolled back for the outage");
    assert!(
        rollback.reason.starts_with("nats down for"),
        "{}",
        rollback.reason
    );
    assert_eq!(fleet.live.canary_stats().published, 0);
}
