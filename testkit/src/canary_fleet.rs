//! Shared by the canary tests: sidecars that each build their own backends
//! over real Redis and a Kafka-protocol broker (so they behave as separate
//! processes), gateways attached to them, steady mixed traffic, and the
//! ledger that checks every message arrived exactly once or went offline,
//! in per-pair order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchyard::policy::canary::bucket;
use switchyard::proto::{self, gateway_client::GatewayClient};
use switchyard::sidecar::Sidecar;
use switchyard::Settings;
use tonic::transport::Channel;

use crate::sidecars;

/// Settings for one canary test run: Redis store and same-region Redis
/// Pub/Sub, Kafka cross-region, a `redis -> kafka` canary at 0% in `mode`.
/// `kafka_extra` adds lines to `[transports.kafka]`; `rollback` is the body
/// of `[canary.rollback]`. Keys and topics are private to `run`.
pub fn settings(
    run: &str,
    brokers: &str,
    mode: &str,
    kafka_extra: &str,
    rollback: &str,
) -> Settings {
    let toml = format!(
        r#"
[store]
kind = "redis"
url = "redis://127.0.0.1:6379"
key_prefix = "sycanary-{run}"
# The test gateways do not heartbeat: their registrations and sessions
# must outlive the longest run (a loaded machine holds shares longer).
gateway_ttl = "10m"

[presence]
session_ttl = "10m"

[transports.redis.connection]
url = "redis://127.0.0.1:6379"
key_prefix = "sycanary-{run}"

[transports.kafka]
brokers = "{brokers}"
client_id = "switchyard-canary-test"
topic_prefix = "sycanary.{run}."
group_prefix = "sycanary-{run}."
linger = "1ms"
fetch_wait_max = "5ms"
commit_interval = "100ms"
connect_timeout = "5s"
{kafka_extra}

[routing]
same_region = "redis"
cross_region = "kafka"

[delivery]
retries = 0
publish_timeout = "2s"

[canary]
from = "redis"
to = "kafka"
share = 0
mode = "{mode}"
handover = "500ms"

[canary.rollback]
{rollback}

[sidecar]
listen = "127.0.0.1:0"

[telemetry]
listen = "127.0.0.1:0"
"#
    );
    Settings::from_toml(&toml).expect("valid canary test settings")
}

/// A unique suffix for keys and topics of one run.
pub fn run_id(name: &str) -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{name}-{}-{millis}", std::process::id())
}

/// The first `{prefix}{i}` whose canary bucket lies in `range`: gateway ids
/// chosen so each canary step moves at least one gateway.
pub fn gateway_in(prefix: &str, range: std::ops::Range<u8>) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|id| range.contains(&bucket(id)))
        .expect("a gateway id in the bucket range")
}

/// One attached gateway: its region, its sidecar's client, the users it hosts.
pub struct Gateway {
    pub id: String,
    pub region: String,
    pub client: GatewayClient<Channel>,
}

/// What a receiving gateway got: (message id, payload, via), in order.
pub type Received = Arc<Mutex<Vec<(Vec<u8>, String, String)>>>;

/// Attaches `id` on the sidecar at `addr` and collects its deliveries.
pub async fn attach(sidecar: &Sidecar, id: &str, region: &str) -> (Gateway, Received) {
    let mut client = sidecars::gateway(sidecar.grpc_addr()).await;
    let mut stream = sidecars::attach(&mut client, id, region).await;
    let received: Received = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok(Some(d)) = stream.next().await {
            let e = d.envelope.unwrap_or_default();
            sink.lock().push((
                e.id.to_vec(),
                String::from_utf8_lossy(&e.payload).into_owned(),
                d.via,
            ));
        }
    });
    (
        Gateway {
            id: id.into(),
            region: region.into(),
            client,
        },
        received,
    )
}

/// One send as the sender saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub id: Vec<u8>,
    pub payload: String,
    /// The canary epoch when the send started and when it returned.
    pub epoch: (u64, u64),
    pub targets: Vec<proto::TargetOutcome>,
    pub stored_offline: bool,
}

/// Sends from `sender` on `gateway` to `destinations` in turn, one send
/// awaited before the next (so per-pair order is defined), until `stop`.
/// Payloads are `sender:seq`.
pub fn sender(
    mut gateway: Gateway,
    sender: String,
    destinations: Vec<proto::envelope::Destination>,
    epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pause: Duration,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Vec<Sent>> {
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut seq = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let destination = destinations[seq % destinations.len()].clone();
            let payload = format!("{sender}:{seq}");
            let envelope = proto::Envelope {
                sender_user: sender.clone(),
                destination: Some(destination),
                payload: payload.clone().into_bytes().into(),
                ..Default::default()
            };
            let start = epoch.load(Ordering::SeqCst);
            let outcome = sidecars::send(&mut gateway.client, &gateway.id, envelope).await;
            let end = epoch.load(Ordering::SeqCst);
            let routed = sidecars::routed(&outcome);
            sent.push(Sent {
                id: outcome.id.to_vec(),
                payload,
                epoch: (start, end),
                targets: routed.targets.clone(),
                stored_offline: routed.stored_offline != proto::OfflineReason::Unspecified as i32,
            });
            seq += 1;
            done.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
        }
        sent
    })
}

/// The verdict over all sends and deliveries.
#[derive(Debug, Default)]
pub struct Ledger {
    pub sent: usize,
    /// (message, gateway) deliveries expected from the senders' reports.
    pub expected_deliveries: usize,
    pub delivered: usize,
    pub stored_offline: usize,
    /// Each confirmed delivery that did not arrive within the patience,
    /// with the transport its send reported.
    pub missing: Vec<String>,
    /// How many of `missing` arrived within a further patience: late (a
    /// stalled consumer), not lost. Still a failure, told apart.
    pub late: usize,
    pub duplicates: Vec<String>,
    pub unexpected: Vec<String>,
    pub out_of_order: Vec<String>,
}

/// Waits until the receivers have everything the senders' reports promise
/// (or `patience` passes), then checks exactly-once and per-pair order.
pub async fn settle(
    sent: &[Sent],
    received: &BTreeMap<String, Received>,
    patience: Duration,
) -> Ledger {
    let expected: usize = sent
        .iter()
        .map(|s| s.targets.iter().filter(|t| t.delivered).count())
        .sum();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let got: usize = received.values().map(|r| r.lock().len()).sum();
        if got >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A late duplicate would arrive now, if at all.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut ledger = Ledger {
        sent: sent.len(),
        expected_deliveries: expected,
        stored_offline: sent.iter().filter(|s| s.stored_offline).count(),
        ..Ledger::default()
    };
    let stored: std::collections::HashSet<&[u8]> = sent
        .iter()
        .filter(|s| s.stored_offline)
        .map(|s| s.id.as_slice())
        .collect();
    let mut want: HashMap<(&str, &[u8]), (&Sent, &proto::TargetOutcome)> = HashMap::new();
    for s in sent {
        for t in &s.targets {
            if t.delivered {
                want.insert((t.gateway.as_str(), s.id.as_slice()), (s, t));
            } else {
                assert!(s.stored_offline, "undelivered target not stored: {s:?}");
            }
        }
    }
    for (gateway, got) in received {
        let got = got.lock();
        let mut seen: HashMap<&[u8], usize> = HashMap::new();
        let mut last_seq: HashMap<&str, usize> = HashMap::new();
        for (id, payload, via) in got.iter() {
            *seen.entry(id.as_slice()).or_default() += 1;
            if !want.contains_key(&(gateway.as_str(), id.as_slice())) {
                // Not confirmed there, so stored offline: a publish (a late
                // mirror, a timed-out attempt) may still have got through.
                // At least once is allowed; anything else is a stray.
                if !stored.contains(id.as_slice()) {
                    ledger
                        .unexpected
                        .push(format!("{gateway}: {payload} via {via}"));
                }
                continue;
            }
            ledger.delivered += 1;
            let Some((sender, seq)) = payload.rsplit_once(':') else {
                continue;
            };
            let seq: usize = seq.parse().unwrap_or(0);
            if let Some(prev) = last_seq.insert(sender, seq) {
                if prev >= seq {
                    ledger.out_of_order.push(format!(
                        "{gateway}: {sender} {seq} after {prev} (via {via})"
                    ));
                }
            }
        }
        for (id, n) in &seen {
            if *n > 1 {
                ledger.duplicates.push(format!("{gateway}: {id:?} x{n}"));
            }
        }
        for ((g, id), (s, t)) in &want {
            if g == gateway && !seen.contains_key(id) {
                ledger
                    .missing
                    .push(format!("{gateway}: {} via {}", s.payload, t.via));
            }
        }
    }
    if !ledger.missing.is_empty() {
        // Tell patience from loss: what arrives now came late.
        let missing: Vec<(&str, &[u8])> = want
            .keys()
            .filter(|(g, id)| {
                received
                    .get(*g)
                    .is_none_or(|got| !got.lock().iter().any(|(i, _, _)| i.as_slice() == *id))
            })
            .copied()
            .collect();
        tokio::time::sleep(patience).await;
        ledger.late = missing
            .iter()
            .filter(|(g, id)| {
                received
                    .get(*g)
                    .is_some_and(|got| got.lock().iter().any(|(i, _, _)| i.as_slice() == *id))
            })
            .count();
    }
    ledger
}

impl Ledger {
    /// Panics with the first problems, if any.
    pub fn assert_clean(&self) {
        assert!(
            self.missing.is_empty()
                && self.duplicates.is_empty()
                && self.unexpected.is_empty()
                && self.out_of_order.is_empty(),
            "missing {} ({} of them arrived later: late, not lost) {:?}\nduplicates {} {:?}\nunexpected {} {:?}\nout of order {} {:?}",
            self.missing.len(),
            self.late,
            self.missing.iter().take(5).collect::<Vec<_>>(),
            self.duplicates.len(),
            self.duplicates.iter().take(5).collect::<Vec<_>>(),
            self.unexpected.len(),
            self.unexpected.iter().take(5).collect::<Vec<_>>(),
            self.out_of_order.len(),
            self.out_of_order.iter().take(5).collect::<Vec<_>>(),
        );
        assert_eq!(self.delivered, self.expected_deliveries);
    }
}

/// Sets the share on every sidecar through the Admin API.
pub async fn set_share(sidecars: &[Sidecar], share: u32) {
    for sidecar in sidecars {
        let mut admin = sidecars::admin(sidecar.grpc_addr()).await;
        let set = admin
            .set_canary_share(proto::SetCanaryShareRequest { share })
            .await
            .expect("SetCanaryShare")
            .into_inner();
        assert_eq!(set.new_share, share);
    }
}

/// A user recipient.
pub fn user(id: &str) -> proto::envelope::Destination {
    proto::envelope::Destination::User(id.into())
}

/// A group recipient.
pub fn group(id: &str) -> proto::envelope::Destination {
    proto::envelope::Destination::Group(id.into())
}
