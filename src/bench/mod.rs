//! `switchyard bench`: a load generator that drives a small fleet per
//! transport (one sending gateway, `fanout` receiving gateways) and, in the
//! same run, the raw client alone with the same messages on the same
//! timeline, so every switchyard figure reads as a ratio to the machine's
//! physical limit. The fleet runs on the library path (routers in this
//! process), the sidecar path (gateways as gRPC clients of two sidecars in
//! this process), or both, one after the other.
//!
//! - [`schedule`]: the send timeline (open loop at a rate, or closed loop).
//! - `layout`: the fleet's ids and message, the same on every path.
//! - `drive`: the measurement loop every path shares.
//! - `generator`: the load generator's own thread, whose CPU is counted
//!   apart from switchyard's.
//! - `library`, `sidecar`: the two paths.
//! - [`raw`]: the raw-client baselines (redis-rs, rdkafka, async-nats, tonic).
//! - [`process`]: CPU time and RSS of this process from `/proc`.
//! - [`plot`]: the SVG of latency percentiles and throughput.
//! - [`chat_text`]: the chat-like payload every path sends.
//!
//! Latency is measured at the receiver from the envelope timestamp. In open
//! loop the timestamp is the *intended* send time, so a router that falls
//! behind is charged for the wait (no coordinated omission).

mod drive;
mod generator;
mod layout;
mod library;
pub mod plot;
pub mod process;
pub mod raw;
pub mod schedule;
mod sidecar;
mod text;

pub use text::chat_text;

use std::net::SocketAddr;
use std::time::Duration;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backends::BuildError;
use crate::config::{ConfigError, Settings};
use crate::error::StoreError;
use crate::sidecar::{SidecarConfig, SidecarError};
use crate::telemetry::RecorderError;
use crate::transport::TransportKind;
use layout::Layout;

/// Where the bench's gateways run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Routers in this process, as an application embedding switchyard.
    Library,
    /// Gateways as gRPC clients of sidecars (`switchyard serve`) in this
    /// process: gateway -> sidecar -> transport -> sidecar -> gateway.
    Sidecar,
}

impl PathKind {
    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Library => "library",
            PathKind::Sidecar => "sidecar",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<Self> {
        [PathKind::Library, PathKind::Sidecar]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    /// The `path` of its rows.
    fn row_name(self) -> &'static str {
        match self {
            PathKind::Library => "switchyard",
            PathKind::Sidecar => "sidecar",
        }
    }
}

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per second offered (open loop); 0 = closed loop, as fast as
    /// each batch is accepted.
    pub rate: u64,
    /// Receiving gateways per message: 1 = one user, N = a group with one
    /// member on each of N gateways.
    pub fanout: usize,
    /// Sending time per transport.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Send exactly this many messages per path instead of for `duration`
    /// (a fixed workload, for instruction counts under callgrind).
    pub messages: Option<u64>,
    /// Send loops at once, each with its own batch in flight, sharing the
    /// schedule (the offered rate is the total).
    pub senders: usize,
    /// Messages per `send_batch` call (and per raw pipeline).
    pub batch: usize,
    /// Transports to measure; empty = every enabled one the bench can drive.
    pub transports: Vec<TransportKind>,
    /// Also run the raw-client baseline of each broker transport and of
    /// direct links.
    pub raw: bool,
    /// The paths to measure, in this order, per transport; empty = library.
    pub paths: Vec<PathKind>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            size: 256,
            rate: 0,
            fanout: 1,
            duration: Duration::from_secs(10),
            messages: None,
            senders: 1,
            batch: 100,
            transports: Vec::new(),
            raw: true,
            paths: vec![PathKind::Library],
        }
    }
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The fleet could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A store failed while setting up presence or groups.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sidecar of the sidecar path (or the Peer API of direct links)
    /// could not start.
    #[error("bench sidecar: {0}")]
    Sidecar(#[from] SidecarError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// A gateway's call to its sidecar failed while setting up.
    #[error("gateway {gateway}: {call} failed: {reason}")]
    Gateway {
        /// The gateway id.
        gateway: String,
        /// The RPC (or `connect`).
        call: &'static str,
        /// Why.
        reason: String,
    },
    /// A transport was asked for that the bench cannot drive here.
    #[error("transport {transport}: {reason}")]
    Transport {
        /// The transport.
        transport: TransportKind,
        /// Why.
        reason: String,
    },
    /// A raw-client baseline failed.
    #[error("raw {client} baseline: {reason}")]
    Raw {
        /// The client library.
        client: &'static str,
        /// What failed.
        reason: String,
    },
    /// The load generator's thread could not start, or stopped mid-run.
    #[error("bench load generator: {0}")]
    Generator(String),
    /// The result could not be written.
    #[error("writing {path}: {reason}")]
    Output {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

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
}

impl Measured {
    /// Bundles a finished load.
    pub fn new(sent: u64, latency: Histogram<u64>, elapsed: Duration) -> Self {
        Self {
            sent,
            latency,
            elapsed,
            rss_mib: Vec::new(),
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
    /// Deliveries seen (sent x fanout when nothing is lost).
    pub delivered: u64,
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
    fn new(path: &str, transport: &str, route: &str, m: &Measured, cpu: Cpu, rate: u64) -> Self {
        let ms = |q: f64| m.latency.value_at_quantile(q) as f64 / 1000.0;
        let router = cpu.total.saturating_sub(cpu.generator);
        Self {
            path: path.into(),
            transport: transport.into(),
            route: route.into(),
            offered_per_sec: rate,
            sent: m.sent,
            delivered: m.latency.len(),
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

    fn compare_with(&mut self, raw: &Row) {
        if raw.delivered_per_sec > 0.0 {
            self.throughput_ratio = Some(self.delivered_per_sec / raw.delivered_per_sec);
        }
        self.p99_added_ms = Some(self.p99_ms - raw.p99_ms);
    }
}

/// CPU spent during one load: the whole process's, and the load
/// generator's threads' part of it.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    total: Duration,
    generator: Duration,
}

impl Cpu {
    /// Both clocks now; [`Cpu::since`] gives the difference.
    fn now() -> Self {
        Self {
            total: process::cpu_time(),
            generator: generator::Generator::cpu_time(),
        }
    }

    fn since(self) -> Self {
        let now = Self::now();
        Self {
            total: now.total.saturating_sub(self.total),
            generator: now.generator.saturating_sub(self.generator),
        }
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
            "delivered",
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
                right(format!("{}/{}", r.delivered, r.sent)),
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
        let output = |reason: String| BenchError::Output {
            path: path.display().to_string(),
            reason,
        };
        let file = std::fs::File::create(path).map_err(|e| output(e.to_string()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), self)
            .map_err(|e| output(e.to_string()))
    }
}

/// Microsecond latencies from 1 µs to 10 minutes, 3 significant figures.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant bounds are valid")
}

/// The transports of `settings` the bench can drive: the enabled broker
/// transports, and direct links (`grpc`), which need nothing but loopback
/// (the bench starts the sidecar they link to).
fn drivable(settings: &Settings) -> Vec<TransportKind> {
    let mut kinds = settings.transports.enabled();
    if !kinds.contains(&TransportKind::Grpc) {
        kinds.push(TransportKind::Grpc);
    }
    kinds
}

/// `base` routed over `kind` alone. No fallbacks: a failed publish should
/// show as a loss, not as another transport. No canary. Direct links only
/// when measured (with the config's `[transports.grpc]` or its defaults),
/// or a hot pair would move to them mid-run. Sidecars listen on loopback
/// ports the OS picks, without tokens or TLS.
fn settings_for(base: &Settings, kind: TransportKind) -> Settings {
    let mut settings = base.clone();
    settings.routing.same_region = kind.as_str().into();
    settings.routing.cross_region = kind.as_str().into();
    settings.routing.fallbacks.clear();
    settings.canary = None;
    settings.transports.grpc = match kind {
        TransportKind::Grpc => Some(base.transports.grpc.clone().unwrap_or_default()),
        _ => None,
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    settings.sidecar = SidecarConfig {
        listen: loopback,
        ..SidecarConfig::default()
    };
    settings.telemetry.listen = loopback;
    settings
}

/// Runs every requested transport in turn (each path, then the raw
/// baseline), with a progress bar on stderr.
pub async fn run(settings: Settings, options: BenchOptions) -> Result<BenchReport, BenchError> {
    let enabled = drivable(&settings);
    let kinds = if options.transports.is_empty() {
        enabled.clone()
    } else {
        options.transports.clone()
    };
    for kind in &kinds {
        if !enabled.contains(kind) {
            return Err(BenchError::Transport {
                transport: *kind,
                reason: format!(
                    "not enabled in this config, or not drivable by the bench (here: {})",
                    enabled
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
    }
    // Every row records metrics, as `switchyard serve` does: the recorder
    // is process-wide, so the first sidecar would turn it on for the rest
    // of the run anyway, and rows would differ by when they ran.
    crate::telemetry::prometheus()?;
    let mut report = BenchReport {
        options: options.clone(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows: Vec::new(),
    };
    let generator =
        generator::Generator::start().map_err(|e| BenchError::Generator(e.to_string()))?;
    let paths = if options.paths.is_empty() {
        vec![PathKind::Library]
    } else {
        options.paths.clone()
    };
    for kind in kinds {
        let route = match kind {
            TransportKind::Kafka | TransportKind::Nats => "cross_region",
            _ => "same_region",
        };
        let routed = settings_for(&settings, kind);
        let mut rows: Vec<Row> = Vec::new();
        let mut sent = 0;
        for &path in &paths {
            let bar = progress_bar(&options, kind, path);
            let cpu = Cpu::now();
            let layout = Layout::new(route, options.fanout, options.size);
            let ends = match path {
                PathKind::Library => library::ends(&routed, kind, layout).await?,
                PathKind::Sidecar => sidecar::ends(&routed, layout, &generator).await?,
            };
            let measured = drive::measure(ends, kind, &options, &generator, &bar).await?;
            bar.finish_and_clear();
            // Raw runs the count the first path sent.
            if sent == 0 {
                sent = measured.sent;
            }
            rows.push(Row::new(
                path.row_name(),
                kind.as_str(),
                route,
                &measured,
                cpu.since(),
                options.rate,
            ));
        }
        let load = Load {
            size: options.size,
            count: sent,
            batch: options.batch,
            rate: options.rate,
            senders: options.senders,
        };
        let t = &settings.transports;
        let cpu = Cpu::now();
        // 1:1 only (the raw loops have one subscriber), so fan-out runs are
        // compared per delivery.
        let raw = match (options.raw, kind, &t.redis, &t.kafka, &t.nats) {
            (false, ..) => None,
            (true, TransportKind::Redis, Some(r), ..) => {
                Some(("raw redis-rs", raw::redis(&r.connection.url, load).await?))
            }
            (true, TransportKind::Kafka, _, Some(k), _) => {
                Some(("raw rdkafka", raw::kafka(k, load).await?))
            }
            (true, TransportKind::Nats, .., Some(n)) => {
                Some(("raw async-nats", raw::nats(n, load).await?))
            }
            (true, TransportKind::Grpc, ..) => Some(("raw tonic", raw::grpc(load).await?)),
            _ => None,
        };
        if let Some((name, measured)) = raw {
            let raw_row = Row::new(
                name,
                kind.as_str(),
                "-",
                &measured,
                cpu.since(),
                options.rate,
            );
            for row in &mut rows {
                row.compare_with(&raw_row);
            }
            report.rows.push(raw_row);
        }
        let library_p99 = rows
            .iter()
            .find(|r| r.path == PathKind::Library.row_name())
            .map(|r| r.p99_ms);
        for row in &mut rows {
            if row.path == PathKind::Sidecar.row_name() {
                row.sidecar_p99_added_ms = library_p99.map(|p99| row.p99_ms - p99);
            }
        }
        report.rows.extend(rows);
    }
    Ok(report)
}

fn progress_bar(options: &BenchOptions, kind: TransportKind, path: PathKind) -> ProgressBar {
    let bar = ProgressBar::new(options.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:30} {elapsed}/{duration}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(format!("{} {}", path.as_str(), kind.as_str()));
    bar
}
