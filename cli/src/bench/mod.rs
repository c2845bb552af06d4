//! `switchyard bench`: a load generator that drives a small fleet per
//! transport (one sending gateway, `fanout` or `targets` receiving
//! gateways) and, in the
//! same run, the raw client alone with the same messages on the same
//! timeline, so every switchyard figure reads as a ratio to the machine's
//! physical limit. The fleet runs on the library path (routers in this
//! process), the sidecar path (gateways as gRPC clients of two sidecars in
//! this process), or both, one after the other.
//!
//! - [`schedule`]: the send timeline (open loop at a rate, or closed loop).
//! - `layout`: the fleet's ids and messages, the same on every path, and
//!   how the messages spread over the receivers (a group, round robin, or
//!   the chat mix).
//! - `chat`: the chat workload's mix of Zipf-popular users and groups.
//! - `drive`: the measurement loop every path shares.
//! - `generator`: the load generator's own thread, whose CPU is counted
//!   apart from switchyard's.
//! - `library`, `sidecar`: the two paths.
//! - [`raw`]: the raw-client baselines (redis-rs, rdkafka, async-nats, tonic).
//! - [`process`]: CPU time and RSS of this process from `/proc`.
//! - `report`: the rows, the table and the JSON of a run.
//! - [`plot`]: the SVG of latency percentiles and throughput.
//! - [`chat_text`]: the chat-like payload every path sends.
//!
//! Latency is measured at the receiver from the envelope timestamp. In open
//! loop the timestamp is the *intended* send time, so a router that falls
//! behind is charged for the wait (no coordinated omission).

mod chat;
mod drive;
mod generator;
mod layout;
mod library;
pub mod plot;
pub mod process;
pub mod raw;
mod report;
pub mod schedule;
mod sidecar;
mod text;

pub(crate) use report::new_histogram;
pub use report::{BenchReport, Load, Measured, Receiver, Row};
pub use text::chat_text;

use std::net::SocketAddr;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use layout::{Layout, Spread};
use switchyard::backends::BuildError;
use switchyard::cause::Cause;
use switchyard::config::{ConfigError, Settings};
use switchyard::error::StoreError;
use switchyard::sidecar::{SidecarConfig, SidecarError};
use switchyard::telemetry::RecorderError;
use switchyard::transport::TransportKind;

/// Most receiving gateways a run may have: each is a router (or a gRPC
/// client and a sidecar session) with its own inbox and subscription in
/// this one process.
pub const MAX_GATEWAYS: usize = 1000;

/// What the messages of a `--targets` run look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Message i to user i mod N: every gateway gets the same share.
    #[default]
    Uniform,
    /// Chat: 80 % 1:1 to Zipf-popular users (exponent 1), 20 % to groups of
    /// 2 to 100 members (capped at N), one user per gateway.
    Chat,
}

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
    /// Receiving gateways of 1:1 messages: message i goes to user i mod N,
    /// each user on its own gateway, so each batch splits into up to N
    /// per-gateway publishes. Above 1 only with `fanout` 1.
    pub targets: usize,
    /// How the messages spread over the `targets` gateways.
    pub workload: Workload,
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
    /// Sidecar path: the receiving gateways' gRPC clients share one HTTP/2
    /// connection to their sidecar, a cheap stand-in for N gateway
    /// processes with a connection each (the sidecar's writes and the
    /// clients' reads and acks then carry several gateways at once).
    pub shared_connection: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            size: 256,
            rate: 0,
            fanout: 1,
            targets: 1,
            workload: Workload::Uniform,
            duration: Duration::from_secs(10),
            messages: None,
            senders: 1,
            batch: 100,
            transports: Vec::new(),
            raw: true,
            paths: vec![PathKind::Library],
            shared_connection: false,
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
    #[error("bench sidecar could not start")]
    Sidecar(#[from] SidecarError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Recorder(#[from] RecorderError),
    /// A gateway's call to its sidecar failed while setting up.
    #[error("gateway {gateway}: {call} failed")]
    Gateway {
        /// The gateway id.
        gateway: String,
        /// The RPC (or `connect`).
        call: &'static str,
        /// Why.
        #[source]
        reason: Cause,
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
    #[error("raw {client} baseline failed")]
    Raw {
        /// The client library.
        client: &'static str,
        /// What failed.
        #[source]
        reason: Cause,
    },
    /// The load generator's thread could not start, or stopped mid-run.
    #[error("bench load generator failed")]
    Generator(#[source] Cause),
    /// An option is out of range, or options conflict.
    #[error("{flag}: {reason}")]
    Option {
        /// The command-line flag of the option.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The result could not be written.
    #[error("cannot write {path}")]
    Output {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        reason: Cause,
    },
}

/// CPU spent during one load: the whole process's, and the load
/// generator's threads' part of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cpu {
    total: Duration,
    generator: Duration,
}

impl Cpu {
    /// Both clocks now; [`Cpu::since`] gives the difference.
    pub(crate) fn now() -> Self {
        Self {
            total: process::cpu_time(),
            generator: generator::Generator::cpu_time(),
        }
    }

    pub(crate) fn since(self) -> Self {
        let now = Self::now();
        Self {
            total: now.total.saturating_sub(self.total),
            generator: now.generator.saturating_sub(self.generator),
        }
    }
}

/// The transports of `settings` the bench can drive: the enabled broker
/// transports, and direct links (`grpc`), which need nothing but loopback
/// (the bench starts the sidecar they link to).
fn drivable(settings: &Settings) -> Vec<TransportKind> {
    let mut kinds = settings.transports.enabled();
    if !kinds.contains(&TransportKind::GRPC) {
        kinds.push(TransportKind::GRPC);
    }
    kinds
}

impl BenchOptions {
    /// How the messages reach the receivers, once `fanout` and `targets`
    /// are in range and do not conflict: checked before anything starts,
    /// since every receiving gateway is a router of its own.
    fn spread(&self) -> Result<Spread, BenchError> {
        for (flag, n) in [("--fanout", self.fanout), ("--targets", self.targets)] {
            if !(1..=MAX_GATEWAYS).contains(&n) {
                return Err(BenchError::Option {
                    flag,
                    reason: format!(
                        "must be between 1 and {MAX_GATEWAYS} receiving gateways, got {n}"
                    ),
                });
            }
        }
        match (self.fanout, self.targets, self.workload) {
            (1, _, Workload::Chat) if self.raw => Err(BenchError::Option {
                flag: "--workload",
                reason: "the raw clients have no chat mix to compare with: add --raw=false".into(),
            }),
            (1, targets, Workload::Chat) => Ok(Spread::Chat(targets)),
            (fanout, _, Workload::Chat) => Err(BenchError::Option {
                flag: "--workload",
                reason: format!(
                    "chat spreads its own groups over --targets gateways, so it needs --fanout 1 (got --fanout {fanout})"
                ),
            }),
            (fanout, 1, Workload::Uniform) => Ok(Spread::Group(fanout)),
            (1, targets, Workload::Uniform) => Ok(Spread::Users(targets)),
            (fanout, _, Workload::Uniform) => Err(BenchError::Option {
                flag: "--targets",
                reason: format!(
                    "spreads 1:1 messages over gateways, so it needs --fanout 1 (got --fanout {fanout})"
                ),
            }),
        }
    }
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
        TransportKind::GRPC => Some(base.transports.grpc.clone().unwrap_or_default()),
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
    let spread = options.spread()?;
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
    switchyard::telemetry::prometheus()?;
    let mut report = BenchReport {
        options: options.clone(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows: Vec::new(),
    };
    let generator =
        generator::Generator::start().map_err(|e| BenchError::Generator(Cause::new(e)))?;
    let paths = if options.paths.is_empty() {
        vec![PathKind::Library]
    } else {
        options.paths.clone()
    };
    for kind in kinds {
        let route = match kind {
            TransportKind::KAFKA | TransportKind::NATS => "cross_region",
            _ => "same_region",
        };
        let routed = settings_for(&settings, kind);
        let mut rows: Vec<Row> = Vec::new();
        let mut sent = 0;
        for &path in &paths {
            let bar = progress_bar(&options, kind, path);
            let cpu = Cpu::now();
            let layout = Layout::new(route, spread, options.size);
            let ends = match path {
                PathKind::Library => library::ends(&routed, kind, layout).await?,
                PathKind::Sidecar => {
                    sidecar::ends(&routed, layout, &generator, options.shared_connection).await?
                }
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
                measured.cpu.unwrap_or_else(|| cpu.since()),
                options.rate,
            ));
        }
        let load = Load {
            size: options.size,
            count: sent,
            batch: options.batch,
            rate: options.rate,
            senders: options.senders,
            targets: options.targets,
        };
        let t = &settings.transports;
        let cpu = Cpu::now();
        // 1:1 over the same number of receivers as `--targets` (one for
        // fan-out runs, compared per delivery). On Redis also the confirmed
        // route's durability done by hand, which the rows are compared with.
        let mut raws = Vec::new();
        match (options.raw, kind, &t.redis, &t.kafka, &t.nats) {
            (false, ..) => {}
            (true, TransportKind::REDIS, Some(r), ..) => {
                let url = &r.connection.url;
                let plain = raw::redis(url, load, raw::RedisDurability::Publish).await?;
                raws.push(("raw redis-rs", plain, cpu.since()));
                let cpu = Cpu::now();
                let durable = raw::redis(url, load, raw::RedisDurability::Stream).await?;
                raws.push(("raw redis-rs xadd", durable, cpu.since()));
            }
            (true, TransportKind::KAFKA, _, Some(k), _) => {
                raws.push(("raw rdkafka", raw::kafka(k, load).await?, cpu.since()));
            }
            (true, TransportKind::NATS, .., Some(n)) => {
                raws.push(("raw async-nats", raw::nats(n, load).await?, cpu.since()));
            }
            (true, TransportKind::GRPC, ..) => {
                raws.push(("raw tonic", raw::grpc(load).await?, cpu.since()));
            }
            _ => {}
        }
        for (name, measured, cpu) in raws {
            let raw_row = Row::new(name, kind.as_str(), "-", &measured, cpu, options.rate);
            // The last baseline of a transport is the like-for-like one.
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
