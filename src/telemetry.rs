//! Metric names and the helpers that record them. Every metric switchyard
//! emits is named here, so dashboards and docs have one place to look.
//! [`prometheus`] installs the process-wide Prometheus recorder.

use std::net::SocketAddr;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

use crate::topology::GatewayId;

/// Messages by route, transport (`via`) and outcome.
pub const MESSAGES: &str = "switchyard_messages_total";
/// End-to-end delivery latency measured at the receiver, by transport.
pub const DELIVERY_LATENCY: &str = "switchyard_delivery_latency_seconds";
/// 1 when a transport can reach its backend, 0 when not.
pub const TRANSPORT_UP: &str = "switchyard_transport_up";
/// Publish attempts that failed and were retried, by transport.
pub const PUBLISH_RETRIES: &str = "switchyard_publish_retries_total";
/// Publishes refused at once because `delivery.publishes_in_flight` were
/// already in flight on the transport, by transport.
pub const PUBLISHES_SHED: &str = "switchyard_publishes_shed_total";
/// Histogram: one publish to one transport, retries included.
pub const PUBLISH_DURATION: &str = "switchyard_publish_duration_seconds";
/// Presence lookups by cache result (`hit` or `miss`).
pub const PRESENCE_LOOKUPS: &str = "switchyard_presence_lookups_total";
/// Block-list lookups by cache result (`hit` or `miss`).
pub const BLOCK_LOOKUPS: &str = "switchyard_block_lookups_total";
/// Messages the inbox refused, by reason.
pub const INBOX_REJECTED: &str = "switchyard_inbox_rejected_total";
/// Duplicate messages the inbox dropped, by transport.
pub const INBOX_DUPLICATES: &str = "switchyard_inbox_duplicates_total";
/// Deliveries the gateway acked.
pub const INBOX_ACKED: &str = "switchyard_inbox_acked_total";
/// Unacked deliveries handed out again (a gateway re-attached).
pub const INBOX_REDELIVERED: &str = "switchyard_inbox_redelivered_total";
/// Messages written to the offline store, by reason.
pub const OFFLINE_STORED: &str = "switchyard_offline_stored_total";
/// Offline messages dropped because a user's store was full or too old.
pub const OFFLINE_TRIMMED: &str = "switchyard_offline_trimmed_total";
/// Offline messages moved to a dead-letter queue, by `reason`
/// (`unreadable`, `max_deliveries`).
pub const OFFLINE_DEAD_LETTERED: &str = "switchyard_offline_dead_lettered_total";
/// Dead letters an operator moved back to the offline queue (Admin API).
pub const DEAD_LETTERS_REPLAYED: &str = "switchyard_dead_letters_replayed_total";
/// Dead letters an operator deleted (Admin API).
pub const DEAD_LETTERS_PURGED: &str = "switchyard_dead_letters_purged_total";
/// Presence snapshots produced for other regions, by outcome (`sent`, `failed`).
pub const PRESENCE_REPLICATED: &str = "switchyard_presence_replicated_total";
/// Other regions' presence snapshots read, by outcome (`applied`, `stale`).
pub const PRESENCE_APPLIED: &str = "switchyard_presence_applied_total";
/// Group joins and leaves produced for other regions, by outcome (`sent`, `failed`).
pub const MEMBERSHIPS_REPLICATED: &str = "switchyard_group_memberships_replicated_total";
/// Other regions' group joins and leaves read, by outcome (`applied`, `unchanged`).
pub const MEMBERSHIPS_APPLIED: &str = "switchyard_group_memberships_applied_total";
/// Users a periodic re-sync snapshotted again for other regions.
pub const PRESENCE_RESYNCED: &str = "switchyard_presence_resynced_total";
/// From a presence snapshot's taking in its region to its application here, by region (`from`).
pub const PRESENCE_REPLICATION_LAG: &str = "switchyard_presence_replication_lag_seconds";
/// Messages that reached a gateway their user had left, routed again, by
/// outcome (`forwarded`, `unconfirmed`, `offline`, `failed`).
pub const RERESOLVED: &str = "switchyard_reresolved_total";
/// Offline messages of this region sent on to a user online in another, by outcome.
pub const OFFLINE_HANDED_OVER: &str = "switchyard_offline_handed_over_total";
/// Redis subscription gaps, by `what` (`transport`, `presence`) and `reason`:
/// `disconnected` (connection dropped, failover, or cut off by the server's
/// `client-output-buffer-limit pubsub`) or `lagging` (this process fell more
/// than the subscription queue behind and dropped messages itself).
pub const REDIS_SUBSCRIBER_DROPS: &str = "switchyard_redis_subscriber_drops_total";
/// Seconds from a lost Redis subscription to its resubscription, by `what`.
pub const REDIS_SUBSCRIBE_GAP: &str = "switchyard_redis_subscribe_gap_seconds";
/// Messages re-read from a gateway's Redis replay stream after a gap.
pub const REDIS_REPLAYED: &str = "switchyard_redis_replayed_total";
/// Times a Redis subscription could not resume where its predecessor left
/// off: the replay stream no longer held it (messages were lost).
pub const REDIS_RESUME_GAPS: &str = "switchyard_redis_resume_gaps_total";

/// Messages waiting in the offline store (its depth), over all users.
pub const OFFLINE_MESSAGES: &str = "switchyard_offline_messages";
/// Bytes of compressed envelopes before (`side="raw"`) and after
/// (`side="wire"`) compression, by `transport` and `codec`.
pub const COMPRESSION_BYTES: &str = "switchyard_compression_bytes_total";
/// A quality rule's transport: p99 time to confirm over its window, by
/// `transport` and target `region`.
pub const ROUTE_QUALITY_P99: &str = "switchyard_route_quality_p99_seconds";
/// ...and the fraction of its publishes that failed.
pub const ROUTE_QUALITY_ERRORS: &str = "switchyard_route_quality_error_ratio";
/// 1 while a route to a `region` has left its transport for the rule's
/// `otherwise`, else 0.
pub const ROUTE_DEGRADED: &str = "switchyard_route_degraded";
/// Quality changes of a route, by `route`, `region` and the transport it moved `to`.
pub const ROUTE_QUALITY_CHANGES: &str = "switchyard_route_quality_changes_total";
/// Sender/receiver gateway pairs currently promoted to a direct link.
pub const HOT_PAIRS: &str = "switchyard_hot_pairs";
/// Hot-pair promotions and demotions, by `change`.
pub const HOT_PAIR_CHANGES: &str = "switchyard_hot_pair_changes_total";
/// Direct links that failed (the publish fell back to the route's transport).
pub const PEER_LINK_FAILURES: &str = "switchyard_peer_link_failures_total";
/// Records a gateway's Kafka consumer has yet to read, over its partitions.
pub const KAFKA_CONSUMER_LAG: &str = "switchyard_kafka_consumer_lag_messages";
/// Kafka producers replaced because librdkafka declared them fatal.
pub const KAFKA_PRODUCER_REBUILDS: &str = "switchyard_kafka_producer_rebuilds_total";
/// Gateways attached to this sidecar with an open delivery stream.
pub const ATTACHED_GATEWAYS: &str = "switchyard_sidecar_attached_gateways";
/// Config reloads, by `result` (`applied`, `rejected`).
pub const CONFIG_RELOADS: &str = "switchyard_config_reloads_total";
/// Stored entries skipped because they could not be read, by `store`.
pub const STORE_MALFORMED: &str = "switchyard_store_malformed_total";
/// Users with a live session on a gateway, by `gateway` and `region`
/// (`sum by (region)` for a region's count); set at each heartbeat.
pub const ONLINE_USERS: &str = "switchyard_online_users";
/// Detached gateways forgotten after their registration expired.
pub const GATEWAYS_EVICTED: &str = "switchyard_sidecar_gateways_evicted_total";
/// Share (0-1) of buckets in the canary cohort, by `from`/`to` transport.
pub const CANARY_SHARE: &str = "switchyard_canary_share_ratio";
/// Automatic canary rollbacks, by `from`/`to` transport.
pub const CANARY_ROLLBACKS: &str = "switchyard_canary_rollbacks_total";
/// Always 1, labelled with the `version` running.
pub const BUILD_INFO: &str = "switchyard_build_info";
/// gRPC calls finished, by `grpc_service`, `grpc_method`, `grpc_code`.
pub const GRPC_HANDLED: &str = "switchyard_grpc_server_handled_total";
/// gRPC call duration to the last response byte, by service and method.
pub const GRPC_HANDLING: &str = "switchyard_grpc_server_handling_seconds";

/// Upper bounds of the latency histogram buckets, in seconds: 100 µs (an
/// in-process hop) to 10 s (a broker backlog).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// `[telemetry]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The Prometheus recorder could not be installed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot install the Prometheus metrics recorder: {0}")]
pub struct RecorderError(String);

/// Installs the Prometheus recorder (once per process; later calls return
/// the same handle) with histogram buckets for every `_seconds` metric, and
/// describes every metric so the output carries `# HELP` lines.
pub fn prometheus() -> Result<PrometheusHandle, RecorderError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, RecorderError>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| RecorderError(e.to_string()))?;
            describe();
            // Histogram samples wait in the recorder until a render or an
            // upkeep folds them into buckets: without this, a process nobody
            // scrapes grew by every delivery's latency sample (about 1.6
            // MiB/s at 100k msg/s, docs/bench/HISTORY.md). A thread, not a
            // task: this may be called outside a runtime.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .map_err(|e| RecorderError(format!("upkeep thread: {e}")))?;
            Ok(handle)
        })
        .clone()
}

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Bucketed samples (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// One metric switchyard emits, as `/metrics` describes it.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric { name, kind, help }
}

/// Every metric switchyard emits, with its HELP text: [`prometheus`]
/// describes each, so no series goes out without one, and the unit test
/// `every_metric_is_documented_in_the_sidecar_guide` checks each is
/// documented.
pub const CATALOG: &[Metric] = &[
    metric(BUILD_INFO, Kind::Gauge, "Always 1; the version label says which switchyard runs."),
    metric(MESSAGES, Kind::Counter, "Messages by route, transport (via) and outcome."),
    metric(
        DELIVERY_LATENCY,
        Kind::Histogram,
        "End-to-end delivery latency measured at the receiver, by transport (via).",
    ),
    metric(TRANSPORT_UP, Kind::Gauge, "1 when a transport can reach its backend, 0 when not."),
    metric(PUBLISH_RETRIES, Kind::Counter, "Publish attempts retried, by transport."),
    metric(
        PUBLISHES_SHED,
        Kind::Counter,
        "Publishes refused at once, delivery.publishes_in_flight being in flight, by transport.",
    ),
    metric(
        PUBLISH_DURATION,
        Kind::Histogram,
        "Time one publish to one transport took, retries included, by transport and outcome (ok, failed).",
    ),
    metric(
        PRESENCE_LOOKUPS,
        Kind::Counter,
        "Presence lookups by cache result (hit, miss); hit ratio = hit / (hit + miss).",
    ),
    metric(BLOCK_LOOKUPS, Kind::Counter, "Block-list lookups by cache result (hit, miss)."),
    metric(INBOX_REJECTED, Kind::Counter, "Messages the inbox refused, by transport (via) and reason."),
    metric(INBOX_DUPLICATES, Kind::Counter, "Duplicate messages the inbox dropped, by transport (via)."),
    metric(INBOX_ACKED, Kind::Counter, "Deliveries the gateway acked."),
    metric(
        INBOX_REDELIVERED,
        Kind::Counter,
        "Unacked deliveries handed out again because the gateway re-attached.",
    ),
    metric(OFFLINE_STORED, Kind::Counter, "Messages written to the offline store, by reason."),
    metric(OFFLINE_TRIMMED, Kind::Counter, "Offline messages dropped (queue full or too old)."),
    metric(
        OFFLINE_DEAD_LETTERED,
        Kind::Counter,
        "Offline messages moved to a dead-letter queue, by reason (unreadable, max_deliveries).",
    ),
    metric(
        DEAD_LETTERS_REPLAYED,
        Kind::Counter,
        "Dead letters an operator moved back to the offline queue for delivery.",
    ),
    metric(DEAD_LETTERS_PURGED, Kind::Counter, "Dead letters an operator deleted."),
    metric(
        PRESENCE_REPLICATED,
        Kind::Counter,
        "Presence snapshots produced for other regions, by outcome (sent, failed).",
    ),
    metric(
        PRESENCE_APPLIED,
        Kind::Counter,
        "Other regions' presence snapshots read, by outcome (applied, stale: a newer one was applied).",
    ),
    metric(
        MEMBERSHIPS_REPLICATED,
        Kind::Counter,
        "Group joins and leaves produced for other regions, by outcome (sent, failed).",
    ),
    metric(
        MEMBERSHIPS_APPLIED,
        Kind::Counter,
        "Other regions' group joins and leaves read, by outcome (applied, unchanged: a newer write was there or nothing changed).",
    ),
    metric(
        PRESENCE_RESYNCED,
        Kind::Counter,
        "Users a periodic re-sync (regions.resync_interval) snapshotted again for other regions.",
    ),
    metric(
        PRESENCE_REPLICATION_LAG,
        Kind::Histogram,
        "From a presence snapshot in its region (from) to its application in this one.",
    ),
    metric(
        RERESOLVED,
        Kind::Counter,
        "Messages that reached a gateway their user had left, routed again, by outcome (forwarded, unconfirmed, offline, failed).",
    ),
    metric(
        OFFLINE_HANDED_OVER,
        Kind::Counter,
        "Offline messages of this region sent on to a user now online in another, by outcome.",
    ),
    metric(
        OFFLINE_MESSAGES,
        Kind::Gauge,
        "Messages waiting in the in-memory offline store, over all users.",
    ),
    metric(
        REDIS_SUBSCRIBER_DROPS,
        Kind::Counter,
        "Redis subscription gaps, by what (transport, presence) and reason (disconnected, lagging).",
    ),
    metric(
        REDIS_SUBSCRIBE_GAP,
        Kind::Histogram,
        "Seconds from a lost Redis subscription to its resubscription, by what.",
    ),
    metric(
        REDIS_REPLAYED,
        Kind::Counter,
        "Messages re-read from a gateway's Redis replay stream after a subscription gap.",
    ),
    metric(
        REDIS_RESUME_GAPS,
        Kind::Counter,
        "Redis subscriptions that could not resume where their predecessor left off (messages lost).",
    ),
    metric(
        COMPRESSION_BYTES,
        Kind::Counter,
        "Bytes of envelopes at least min_bytes long before (side=raw) and after (side=wire) compression, by transport and codec.",
    ),
    metric(
        ROUTE_QUALITY_P99,
        Kind::Gauge,
        "p99 seconds to confirm a publish over the quality rule's window, by transport and target region.",
    ),
    metric(
        ROUTE_QUALITY_ERRORS,
        Kind::Gauge,
        "Fraction of publishes that failed over the quality rule's window, by transport and target region.",
    ),
    metric(
        ROUTE_DEGRADED,
        Kind::Gauge,
        "1 while a route to a region has left its transport for the quality rule's otherwise.",
    ),
    metric(
        ROUTE_QUALITY_CHANGES,
        Kind::Counter,
        "Routes leaving (to=otherwise) or returning to (to=the route's transport) their transport, by route and region.",
    ),
    metric(HOT_PAIRS, Kind::Gauge, "Gateway pairs currently promoted to a direct link."),
    metric(HOT_PAIR_CHANGES, Kind::Counter, "Hot-pair promotions and demotions, by change."),
    metric(
        PEER_LINK_FAILURES,
        Kind::Counter,
        "Direct links that failed; their publishes fell back to the route's transport.",
    ),
    metric(
        KAFKA_CONSUMER_LAG,
        Kind::Gauge,
        "Kafka records not yet consumed by a gateway's consumer group, by gateway.",
    ),
    metric(
        KAFKA_PRODUCER_REBUILDS,
        Kind::Counter,
        "Kafka producers replaced after a fatal error (e.g. UnknownProducerId).",
    ),
    metric(ATTACHED_GATEWAYS, Kind::Gauge, "Gateways with an open delivery stream on this sidecar."),
    metric(CONFIG_RELOADS, Kind::Counter, "Config reloads by result (applied, rejected)."),
    metric(
        STORE_MALFORMED,
        Kind::Counter,
        "Stored entries skipped because they could not be read, by store.",
    ),
    metric(
        ONLINE_USERS,
        Kind::Gauge,
        "Users with a live session on a gateway, set at each of its heartbeats.",
    ),
    metric(
        GATEWAYS_EVICTED,
        Kind::Counter,
        "Detached gateways forgotten after their registration expired.",
    ),
    metric(
        CANARY_SHARE,
        Kind::Gauge,
        "Share of buckets (0-1) in the canary cohort, by from and to transport.",
    ),
    metric(CANARY_ROLLBACKS, Kind::Counter, "Automatic canary rollbacks, by from and to transport."),
    metric(
        GRPC_HANDLED,
        Kind::Counter,
        "gRPC calls the sidecar finished, by grpc_service, grpc_method and grpc_code.",
    ),
    metric(
        GRPC_HANDLING,
        Kind::Histogram,
        "Seconds from a gRPC call's arrival to its last response byte (a stream's lifetime), by grpc_service and grpc_method.",
    ),
];

fn describe() {
    metrics::with_recorder(|recorder| {
        for m in CATALOG {
            let (name, help) = (m.name.into(), m.help.into());
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, Some(Unit::Count), help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, Some(Unit::Seconds), help),
            }
        }
    });
    PROCESS.describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// The `process_*` series, read from `/proc` on each scrape.
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// The Prometheus text of everything recorded, with the process series
/// read now.
pub fn render(handle: &PrometheusHandle) -> String {
    PROCESS.collect();
    handle.render()
}

/// Counts `n` messages with one outcome.
pub fn messages(route: &'static str, via: &'static str, outcome: &'static str, n: u64) {
    metrics::counter!(MESSAGES, "route" => route, "via" => via, "outcome" => outcome).increment(n);
}

/// Counts one batch's envelopes considered for compression: `raw` bytes
/// in, `wire` bytes out (those it did not shrink count the same on both).
pub fn compression(transport: &'static str, codec: &'static str, raw: u64, wire: u64) {
    for (side, bytes) in [("raw", raw), ("wire", wire)] {
        metrics::counter!(COMPRESSION_BYTES, "transport" => transport, "codec" => codec, "side" => side)
            .increment(bytes);
    }
}

/// Counts one message dead-lettered for `reason` (a `DeadLetterReason` name).
pub fn dead_lettered(reason: &'static str) {
    metrics::counter!(OFFLINE_DEAD_LETTERED, "reason" => reason).increment(1);
}

/// Records the Kafka consumer lag of `gateway`'s subscription.
pub fn kafka_consumer_lag(gateway: &GatewayId, records: i64) {
    // Lag is far below 2^53, so the f64 gauge is exact.
    metrics::gauge!(KAFKA_CONSUMER_LAG, "gateway" => gateway.to_string()).set(records as f64);
}

/// Counts a Kafka producer replaced after a fatal error.
pub fn kafka_producer_rebuilt() {
    metrics::counter!(KAFKA_PRODUCER_REBUILDS).increment(1);
}

/// Hit and miss counters of one cache, resolved on first use instead of
/// per lookup: a labelled `counter!` is a registry lookup, and caches are
/// asked once per message (about 4 % of the router's CPU,
/// docs/bench/HISTORY.md). On first use, not at construction, so a recorder
/// installed after the cache was built (the sidecar builds its backends
/// first) is the one counted in.
pub(crate) struct LookupCounters {
    name: &'static str,
    handles: OnceLock<[Counter; 2]>,
}

impl LookupCounters {
    pub(crate) const fn new(name: &'static str) -> Self {
        Self {
            name,
            handles: OnceLock::new(),
        }
    }

    pub(crate) fn record(&self, hit: bool) {
        let [hits, misses] = self.handles.get_or_init(|| {
            [
                metrics::counter!(self.name, "result" => "hit"),
                metrics::counter!(self.name, "result" => "miss"),
            ]
        });
        if hit { hits } else { misses }.increment(1);
    }
}

/// One inbox's end-to-end delivery latency histograms, by how messages
/// arrived; each resolved on its first delivery (see [`LookupCounters`]).
#[derive(Default)]
pub(crate) struct DeliveryLatency(Vec<(&'static str, Histogram)>);

impl DeliveryLatency {
    /// Records one delivery's latency.
    pub(crate) fn record(&mut self, via: &'static str, latency: Duration) {
        let i = match self.0.iter().position(|(v, _)| *v == via) {
            Some(i) => i,
            None => {
                let histogram = metrics::histogram!(DELIVERY_LATENCY, "via" => via);
                self.0.push((via, histogram));
                self.0.len() - 1
            }
        };
        self.0[i].1.record(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::CATALOG;

    /// The value of every `pub const NAME: &str = "switchyard_...";` here.
    fn named_here() -> BTreeSet<&'static str> {
        include_str!("telemetry.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = "))
            .filter_map(|l| l.split('"').nth(1))
            .collect()
    }

    #[test]
    fn every_metric_named_here_is_in_the_catalog_once() {
        let catalog: Vec<&str> = CATALOG.iter().map(|m| m.name).collect();
        let unique: BTreeSet<&str> = catalog.iter().copied().collect();
        assert_eq!(unique.len(), catalog.len(), "a metric is listed twice");
        assert_eq!(unique, named_here());
        assert!(CATALOG.iter().all(|m| !m.help.is_empty()));
    }

    #[test]
    fn every_metric_is_documented_in_the_sidecar_guide() {
        let docs = include_str!("../docs/SIDECAR.md");
        let missing: Vec<&str> = CATALOG
            .iter()
            .map(|m| m.name)
            .filter(|name| !docs.contains(&format!("| `{name}` |")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/SIDECAR.md's metric table: {missing:?}"
        );
    }
}
