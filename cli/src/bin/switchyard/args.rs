//! The command line: every subcommand and its flags.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use switchyard::transport::TransportKind;
use switchyard::{GatewayId, Region, Settings, UserId};
use switchyard_cli::bench::{PathKind, Workload};

use crate::settings::load_settings;

/// A message router for chat and IM back ends.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log line format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run an in-process fleet under a mixed load and check that every
    /// message arrived exactly once (the embedded default needs no service).
    #[command(
        after_help = "Example:\n  switchyard demo --config config/local.toml --messages 20000"
    )]
    Demo(DemoArgs),
    /// Validate a config file: exit 0, or list every problem on stderr and
    /// exit 1.
    #[command(
        after_help = "Examples:\n  switchyard check-config config/local.toml\n  SWITCHYARD_CONFIG=deploy/config/sidecar.toml switchyard check-config --format json"
    )]
    CheckConfig {
        /// The TOML file.
        #[arg(env = "SWITCHYARD_CONFIG")]
        file: PathBuf,
        /// `text` (problems on stderr) or `json` (one object on stdout, for CI).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Check the settings only, without reading the token and TLS files
        /// they name (in CI, away from the secrets).
        #[arg(long)]
        skip_secrets: bool,
    },
    /// Print how a message would be routed, and why.
    #[command(
        after_help = "Example:\n  switchyard explain --from alice --to group:team --gateway eu-1 --region eu"
    )]
    Explain(ExplainArgs),
    /// Measure throughput and latency per transport next to the raw clients.
    #[command(
        after_help = "Examples:\n  switchyard bench --config config/local.toml --transports redis,kafka --rate 5000 --duration 30s --json out.json --plot out.svg\n  switchyard bench --transports memory --targets 100 --duration 5s   # 1:1 over 100 receiving gateways"
    )]
    Bench(BenchArgs),
    /// Run the gRPC sidecar (the embedded default when no --config is given).
    #[command(
        after_help = "Examples:\n  switchyard serve --config config/redis.toml\n  SWITCHYARD__SIDECAR__LISTEN=0.0.0.0:50051 switchyard serve --log-format json"
    )]
    Serve {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Inspect or steer the canary of one or more running sidecars through
    /// their Admin API.
    #[command(
        after_help = "Examples:\n  switchyard canary status --addr 10.0.0.5:50051\n  switchyard canary set 30 --addr sidecar-1:50051,sidecar-2:50051 --token-env SY_ADMIN\n  switchyard canary rollback --reason \"kafka p99\" --addr sidecar-1:50051 --token-env SY_ADMIN"
    )]
    Canary(CanaryArgs),
    /// Show running sidecars' state (Admin `State`): gateways, transports
    /// up or down, routing, hot pairs, canary.
    #[command(
        after_help = "Example:\n  switchyard state --addr sidecar-1:50051,sidecar-2:50051 --token-env SY_ADMIN"
    )]
    State(AdminArgs),
    /// List, inspect, replay or purge the offline store's dead letters
    /// through a sidecar's Admin API.
    #[command(
        after_help = "Examples:\n  switchyard dead-letters list --addr sidecar-1:50051\n  switchyard dead-letters list bob\n  switchyard dead-letters show bob 01JF3...\n  switchyard dead-letters replay bob\n  switchyard dead-letters purge bob --all"
    )]
    DeadLetters(DeadLetterArgs),
    /// Show where a user is online (sessions: device, gateway, region),
    /// read from the presence store of the config.
    #[command(after_help = "Example:\n  switchyard presence alice --config config/redis.toml")]
    Presence {
        /// The user id.
        user: UserId,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a config: the embedded default, annotated (a starting point),
    /// or with --effective the settings in force after the file and the
    /// environment, secrets in URLs redacted.
    #[command(
        after_help = "Examples:\n  switchyard config > switchyard.toml\n  SWITCHYARD__ROUTING__CROSS_REGION=nats switchyard config --effective --config config/local.toml"
    )]
    Config {
        /// Defaults, then the file, then the environment, as `serve` would run.
        #[arg(long)]
        effective: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Output format of a report.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
pub(crate) struct ConfigArg {
    /// TOML config file (default: the embedded in-memory config); environment
    /// overrides as SWITCHYARD__SECTION__KEY.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the settings; every problem on its own line.
    pub(crate) fn load(&self) -> anyhow::Result<Settings> {
        load_settings(self.config.as_deref())
    }
}

#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The sidecars' gRPC addresses (`host:port` or a URI), comma-separated
    /// or repeated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    pub(crate) addr: Vec<String>,
    /// Environment variable holding the admin token (sidecar.admin_token).
    #[arg(long, global = true)]
    pub(crate) token_env: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct CanaryArgs {
    #[command(subcommand)]
    pub(crate) action: CanaryAction,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum CanaryAction {
    /// Show the canary, its rollback limits, last rollback and figures.
    Status,
    /// Set the share of traffic on the new transport (0-100).
    Set {
        /// Percent of buckets.
        share: u32,
    },
    /// Roll the share back to 0% at once.
    Rollback {
        /// Why, recorded in the admin state.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(clap::Args)]
pub(crate) struct DeadLetterArgs {
    #[command(subcommand)]
    pub(crate) action: DeadLetterAction,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum DeadLetterAction {
    /// The users with dead letters, or with USER that user's.
    List {
        /// Whose dead letters.
        user: Option<String>,
        /// At most this many users or letters (default 100).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// One dead letter in full, payload included.
    Show {
        /// Whose.
        user: String,
        /// Its message id.
        id: String,
    },
    /// Move dead letters back to the user's offline queue: delivered at the
    /// next heartbeat of the gateways the user is online on, else on connect.
    Replay {
        /// Whose.
        user: String,
        /// Which (default: every readable one).
        ids: Vec<String>,
    },
    /// Delete dead letters.
    Purge {
        /// Whose.
        user: String,
        /// Which.
        #[arg(required_unless_present = "all")]
        ids: Vec<String>,
        /// Every one of the user's dead letters.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Regions.
    #[arg(long, default_value_t = 3)]
    pub(crate) regions: usize,
    /// Gateways per region.
    #[arg(long, default_value_t = 3)]
    pub(crate) gateways: usize,
    /// Users.
    #[arg(long, default_value_t = 3000)]
    pub(crate) users: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 50_000)]
    pub(crate) messages: usize,
    /// Groups.
    #[arg(long, default_value_t = 20)]
    pub(crate) groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 50)]
    pub(crate) group_size: usize,
    /// Share of users offline while sending (0..1).
    #[arg(long, default_value_t = 0.1)]
    pub(crate) offline: f64,
    /// Share of online users with a second device (0..1).
    #[arg(long, default_value_t = 0.2)]
    pub(crate) multi_device: f64,
    /// Messages per batch.
    #[arg(long, default_value_t = 64)]
    pub(crate) batch: usize,
    /// Messages per second over the fleet; 0 = as fast as possible.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    pub(crate) size: usize,
    /// Offered messages per second (open loop); 0 = max throughput (closed loop).
    #[arg(long, default_value_t = 0)]
    pub(crate) rate: u64,
    /// Receiving gateways per message (1 = one user; N = a group over N
    /// gateways), 1 to 1000.
    #[arg(long, default_value_t = 1)]
    pub(crate) fanout: usize,
    /// Receiving gateways of 1:1 messages: message i goes to user i mod N,
    /// each on its own gateway, so a batch splits into up to N per-gateway
    /// publishes (1 to 1000; only with --fanout 1).
    #[arg(long, default_value_t = 1)]
    pub(crate) targets: usize,
    /// How --targets messages spread: uniform (round robin) or chat (Zipf-
    /// popular users and groups of mixed sizes; deliveries per message vary).
    #[arg(long, value_enum, default_value_t = Workload::Uniform)]
    pub(crate) workload: Workload,
    /// Sending time per transport, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub(crate) duration: std::time::Duration,
    /// Messages per batch.
    #[arg(long, default_value_t = 100)]
    pub(crate) batch: usize,
    /// Send loops at once, each with a batch in flight (the rate is the total).
    #[arg(long, default_value_t = 1)]
    pub(crate) senders: usize,
    /// Sidecar path: the receiving gateways share one HTTP/2 connection to
    /// their sidecar (a cheap stand-in for gateway processes with a
    /// connection each; writes and acks then carry several gateways).
    #[arg(long)]
    pub(crate) shared_connection: bool,
    /// Send exactly this many messages per path instead of for --duration
    /// (a fixed workload, e.g. under callgrind).
    #[arg(long)]
    pub(crate) messages: Option<u64>,
    /// Transports to measure, comma-separated (default: every enabled one,
    /// and grpc: direct links on loopback).
    #[arg(long, value_delimiter = ',', value_parser = parse_transport)]
    pub(crate) transports: Vec<TransportKind>,
    /// Paths to measure per transport, comma-separated: library (routers in
    /// process), sidecar (gateways -> sidecar -> transport -> sidecar ->
    /// gateways, over gRPC on loopback).
    #[arg(long, value_delimiter = ',', value_parser = parse_path, default_value = "library")]
    pub(crate) paths: Vec<PathKind>,
    /// Run the raw-client baseline of each broker transport and of grpc
    /// (--raw=false to skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) raw: bool,
    /// Write the result as JSON.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Write the latency/throughput plot as SVG.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
}

fn parse_transport(name: &str) -> Result<TransportKind, String> {
    TransportKind::parse(name).ok_or_else(|| format!("unknown transport {name:?}"))
}

fn parse_path(name: &str) -> Result<PathKind, String> {
    PathKind::parse(name).ok_or_else(|| format!("unknown path {name:?} (known: library, sidecar)"))
}

#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Sending user.
    #[arg(long)]
    pub(crate) from: UserId,
    /// Recipient: a user id, or `group:ID`.
    #[arg(long)]
    pub(crate) to: String,
    /// The sender's gateway (default: where presence finds the sender).
    #[arg(long)]
    pub(crate) gateway: Option<GatewayId>,
    /// The sender gateway's region, with --gateway.
    #[arg(long)]
    pub(crate) region: Option<Region>,
}
