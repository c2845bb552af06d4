//! What a bench run reports: one [`Row`] per transport and path, the
//! table printed at the end, and the JSON written for docs/BENCHMARKS.md.

use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{process, BenchError, BenchOptions, Cpu};
use switchyard::cause::Cause;

/// The same message count, size, batch and rate for the raw client.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Payload bytes.
    pub size: usize,
    /// Messages in all.
    pub count: u64,
    /// Messages per batch or pipeline.
    pub batch: usize,
    /// Offered messages per second; 0 = closed loop.
    pub rate: u64,
    /// Batches in flight at once (see [`BenchOptions::senders`]).
    pub senders: usize,
    /// Receivers the messages are spread over, round robin (see
    /// [`BenchOptions::targets`]); 1 for fan-out runs.
    pub targets: usize,
}

/// Deliveries at one receiving gateway, against its share of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Receiver {
    /// Deliveries it saw.
    pub delivered: u64,
    /// Deliveries it should have seen: every message in a fan-out run, its
    /// round-robin share with `--targets`.
    pub expected: u64,
}

/// What one load measured at the receivers.
#[derive(Debug)]
pub struct Measured {
    /// Messages sent.
    pub sent: u64,
    /// Deliveries seen, microseconds from the (intended) send time.
    pub latency: Histogram<u64>,
    /// From the first send to the last delivery.
    pub elapsed: Duration,
    /// This process's RSS once per second while sending, MiB (switchyard
    /// paths only: the raw loops are not watched for growth).
    pub rss_mib: Vec<f64>,
    /// Per receiving gateway, in layout order (a raw loop: its one
    /// subscriber, expected to see every message).
    pub receivers: Vec<Receiver>,
    /// Distinct target gateways per `send_batch`, from the router's reports
    /// (switchyard paths only).
    pub gateways_per_batch: Option<f64>,
    /// CPU over the measured window, warm-up and fleet building left out
    /// (switchyard paths; the raw loops are timed whole).
    pub(crate) cpu: Option<Cpu>,
}

impl Measured {
    /// Bundles a finished load.
    pub fn new(sent: u64, latency: Histogram<u64>, elapsed: Duration) -> Self {
        let receiver = Receiver {
            delivered: latency.len(),
            expected: sent,
        };
        Self {
            sent,
            latency,
            elapsed,
            rss_mib: Vec::new(),
            receivers: vec![receiver],
            gateways_per_batch: None,
            cpu: None,
        }
    }

    /// RSS at the end of sending minus RSS a quarter of the way in (after
    /// warm-up allocations settled), MiB; `None` below four samples.
    pub fn rss_drift_mib(&self) -> Option<f64> {
        let n = self.rss_mib.len();
        (n >= 4).then(|| self.rss_mib[n - 1] - self.rss_mib[n / 4])
    }
}

/// One line of the result: a path (switchyard or raw client) over a transport.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `switchyard` (library path), `sidecar` (sidecar path) or the raw
    /// client (`raw redis-rs`, ...).
    pub path: String,
    /// The transport measured.
    pub transport: String,
    /// The route the router took (`same_region`, `cross_region`), `-` for raw.
    pub route: String,
    /// Offered messages per second; 0 for closed loop.
    pub offered_per_sec: u64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries seen (`expected` when nothing is lost).
    pub delivered: u64,
    /// Deliveries due: sent x fan-out, or sent with `--targets`.
    pub expected: u64,
    /// Each receiving gateway's deliveries and share.
    pub receivers: Vec<Receiver>,
    /// Distinct target gateways per batch (the router's per-gateway
    /// publishes); `None` for raw rows.
    pub gateways_per_batch: Option<f64>,
    /// Deliveries per second, from the first send to the last delivery.
    pub delivered_per_sec: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// CPU seconds this process spent during the load (router and receivers,
    /// or the raw client; brokers are other processes).
    pub cpu_seconds: f64,
    /// Of `cpu_seconds`, what the load generator's threads spent (schedule,
    /// building messages, the sidecar path's gRPC gateway clients).
    pub generator_cpu_seconds: f64,
    /// `cpu_seconds` less the generator's: switchyard's own (or the raw
    /// client's).
    pub router_cpu_seconds: f64,
    /// `router_cpu_seconds` per delivery, µs.
    pub router_cpu_us_per_msg: f64,
    /// Peak RSS of this process by the end of the load, MiB.
    pub peak_rss_mib: f64,
    /// RSS once per second while sending, MiB.
    pub rss_mib: Vec<f64>,
    /// RSS growth from a quarter of the way in to the end of sending, MiB:
    /// near 0 when memory is stable under the load.
    pub rss_drift_mib: Option<f64>,
    /// Delivered throughput over the raw baseline's, same run.
    pub throughput_ratio: Option<f64>,
    /// p99 minus the raw baseline's, ms.
    pub p99_added_ms: Option<f64>,
    /// Sidecar rows: p99 minus the library path's over the same transport,
    /// same run, ms (what the two gRPC hops to and from gateways add).
    pub sidecar_p99_added_ms: Option<f64>,
}

impl Row {
    pub(super) fn new(
        path: &str,
        transport: &str,
        route: &str,
        m: &Measured,
        cpu: Cpu,
        rate: u64,
    ) -> Self {
        let ms = |q: f64| m.latency.value_at_quantile(q) as f64 / 1000.0;
        let router = cpu.total.saturating_sub(cpu.generator);
        Self {
            path: path.into(),
            transport: transport.into(),
            route: route.into(),
            offered_per_sec: rate,
            sent: m.sent,
            delivered: m.latency.len(),
            expected: m.receivers.iter().map(|r| r.expected).sum(),
            receivers: m.receivers.clone(),
            gateways_per_batch: m.gateways_per_batch,
            delivered_per_sec: m.latency.len() as f64 / m.elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            cpu_seconds: cpu.total.as_secs_f64(),
            generator_cpu_seconds: cpu.generator.as_secs_f64(),
            router_cpu_seconds: router.as_secs_f64(),
            router_cpu_us_per_msg: router.as_secs_f64() * 1e6 / m.latency.len().max(1) as f64,
            peak_rss_mib: process::peak_rss() as f64 / (1024.0 * 1024.0),
            rss_mib: m.rss_mib.clone(),
            rss_drift_mib: m.rss_drift_mib(),
            throughput_ratio: None,
            p99_added_ms: None,
            sidecar_p99_added_ms: None,
        }
    }

    pub(super) fn compare_with(&mut self, raw: &Row) {
        if raw.delivered_per_sec > 0.0 {
            self.throughput_ratio = Some(self.delivered_per_sec / raw.delivered_per_sec);
        }
        self.p99_added_ms = Some(self.p99_ms - raw.p99_ms);
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// What was asked for.
    pub options: BenchOptions,
    /// `uptime`'s load averages (1, 5, 15 min) at the start: the machine is
    /// shared, so figures are read against the load.
    pub load_average: String,
    /// CPUs available.
    pub cpus: usize,
    /// One row per path and transport, raw baseline first.
    pub rows: Vec<Row>,
}

impl BenchReport {
    /// The rows as a terminal table.
    pub fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "path",
            "transport",
            "route",
            "offered/s",
            "delivered/due",
            "gw/batch",
            "msg/s",
            "x raw",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "+p99 ms",
            "sidecar +p99 ms",
            "cpu s",
            "gen cpu s",
            "router µs/msg",
            "peak RSS MiB",
            "RSS drift MiB",
        ]);
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        let opt = |v: Option<f64>, digits: usize| v.map_or("-".into(), |v| format!("{v:.digits$}"));
        for r in &self.rows {
            table.add_row([
                Cell::new(&r.path),
                Cell::new(&r.transport),
                Cell::new(&r.route),
                right(if r.offered_per_sec == 0 {
                    "max".into()
                } else {
                    r.offered_per_sec.to_string()
                }),
                right(format!("{}/{}", r.delivered, r.expected)),
                right(opt(r.gateways_per_batch, 1)),
                right(format!("{:.0}", r.delivered_per_sec)),
                right(opt(r.throughput_ratio, 2)),
                right(format!("{:.3}", r.p50_ms)),
                right(format!("{:.3}", r.p90_ms)),
                right(format!("{:.3}", r.p99_ms)),
                right(format!("{:.3}", r.p999_ms)),
                right(opt(r.p99_added_ms, 3)),
                right(opt(r.sidecar_p99_added_ms, 3)),
                right(format!("{:.2}", r.cpu_seconds)),
                right(format!("{:.2}", r.generator_cpu_seconds)),
                right(format!("{:.2}", r.router_cpu_us_per_msg)),
                right(format!("{:.0}", r.peak_rss_mib)),
                right(opt(r.rss_drift_mib, 1)),
            ]);
        }
        table
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &std::path::Path) -> Result<(), BenchError> {
        let output = |reason: Cause| BenchError::Output {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::File::create(path).map_err(|e| output(Cause::new(e)))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), self)
            .map_err(|e| output(Cause::new(e)))
    }
}

/// Microsecond latencies from 1 µs to 10 minutes, 3 significant figures.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}
