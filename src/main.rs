//! The `switchyard` command: thin argument parsing over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use switchyard::bench::{self, BenchOptions, PathKind};
use switchyard::demo::{self, DemoOptions};
use switchyard::policy::Policy;
use switchyard::transport::TransportKind;
use switchyard::{router, Destination, Envelope, GatewayInfo, Settings};

// The router allocates a few small buffers per message on several threads;
// glibc's allocator took about a fifth of the CPU of a Redis route
// (docs/BENCHMARKS.md). The library leaves the choice to the gateway.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A message router for chat and IM back ends.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an in-process fleet under a mixed load and check that every
    /// message arrived exactly once (the embedded default needs no service).
    Demo(DemoArgs),
    /// Validate a config file: exit 0, or print every problem and exit 1.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print how a message would be routed, and why.
    Explain(ExplainArgs),
    /// Measure throughput and latency per transport next to the raw clients.
    Bench(BenchArgs),
    /// Run the gRPC sidecar (the embedded default when no --config is given).
    Serve {
        /// TOML config file; environment overrides as SWITCHYARD__SECTION__KEY.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Inspect or steer a running sidecar's canary through its Admin API.
    Canary(CanaryArgs),
}

#[derive(clap::Args)]
struct CanaryArgs {
    #[command(subcommand)]
    action: CanaryAction,
    /// The sidecar's gRPC address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Environment variable holding the admin token (sidecar.admin_token).
    #[arg(long, global = true)]
    token_env: Option<String>,
}

#[derive(Subcommand)]
enum CanaryAction {
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
struct DemoArgs {
    /// Config file (default: the embedded in-memory config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Regions.
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// Gateways per region.
    #[arg(long, default_value_t = 3)]
    gateways: usize,
    /// Users.
    #[arg(long, default_value_t = 3000)]
    users: usize,
    /// Messages to send.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Groups.
    #[arg(long, default_value_t = 20)]
    groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 50)]
    group_size: usize,
    /// Share of users offline while sending (0..1).
    #[arg(long, default_value_t = 0.1)]
    offline: f64,
    /// Share of online users with a second device (0..1).
    #[arg(long, default_value_t = 0.2)]
    multi_device: f64,
    /// Messages per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Messages per second over the fleet; 0 = as fast as possible.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Config file (default: the embedded in-memory config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Offered messages per second (open loop); 0 = max throughput (closed loop).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Receiving gateways per message (1 = one user; N = a group over N gateways).
    #[arg(long, default_value_t = 1)]
    fanout: usize,
    /// Sending time per transport, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: std::time::Duration,
    /// Messages per batch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Send loops at once, each with a batch in flight (the rate is the total).
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Send exactly this many messages per path instead of for --duration
    /// (a fixed workload, e.g. under callgrind).
    #[arg(long)]
    messages: Option<u64>,
    /// Transports to measure, comma-separated (default: every enabled one,
    /// and grpc: direct links on loopback).
    #[arg(long, value_delimiter = ',', value_parser = parse_transport)]
    transports: Vec<TransportKind>,
    /// Paths to measure per transport, comma-separated: library (routers in
    /// process), sidecar (gateways -> sidecar -> transport -> sidecar ->
    /// gateways, over gRPC on loopback).
    #[arg(long, value_delimiter = ',', value_parser = parse_path, default_value = "library")]
    paths: Vec<PathKind>,
    /// Run the raw-client baseline of each broker transport and of grpc
    /// (--raw=false to skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    raw: bool,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the latency/throughput plot as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn parse_transport(name: &str) -> Result<TransportKind, String> {
    TransportKind::parse(name).ok_or_else(|| format!("unknown transport {name:?}"))
}

fn parse_path(name: &str) -> Result<PathKind, String> {
    PathKind::parse(name).ok_or_else(|| format!("unknown path {name:?} (known: library, sidecar)"))
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// Config file (default: the embedded in-memory config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sending user.
    #[arg(long)]
    from: String,
    /// Recipient: a user id, or `group:ID`.
    #[arg(long)]
    to: String,
    /// The sender's gateway (default: where presence finds the sender).
    #[arg(long)]
    gateway: Option<String>,
    /// The sender gateway's region, when --gateway is given.
    #[arg(long, default_value = "")]
    region: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server logs what it does; one-shot commands only what went wrong.
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        _ => "switchyard=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo(args) => run_demo(args).await,
        Command::CheckConfig { file } => match Settings::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                println!("{}: {err}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Explain(args) => explain(args).await,
        Command::Canary(args) => {
            use switchyard::sidecar::canary_ctl::{self, CanaryCommand};
            let command = match args.action {
                CanaryAction::Status => CanaryCommand::Status,
                CanaryAction::Set { share } => CanaryCommand::Set(share),
                CanaryAction::Rollback { reason } => CanaryCommand::Rollback(reason),
            };
            print!(
                "{}",
                canary_ctl::run(&args.addr, args.token_env.as_deref(), command).await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let settings = Settings::load(args.config.as_deref()).context("loading config")?;
            let options = BenchOptions {
                size: args.size,
                rate: args.rate,
                fanout: args.fanout,
                duration: args.duration,
                messages: args.messages,
                senders: args.senders,
                batch: args.batch,
                transports: args.transports,
                raw: args.raw,
                paths: args.paths,
            };
            let report = bench::run(settings, options).await?;
            println!(
                "load average {} on {} CPUs",
                report.load_average, report.cpus
            );
            println!("{}", report.table());
            if let Some(path) = args.json {
                report.write_json(&path)?;
            }
            if let Some(path) = args.plot {
                bench::plot::write_svg(&report, &path)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config } => {
            let settings = Settings::load(config.as_deref())
                .with_context(|| format!("loading config {config:?}"))?;
            switchyard::sidecar::serve(settings, config, terminated()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref()).context("loading config")?;
    let options = DemoOptions {
        regions: args.regions,
        gateways_per_region: args.gateways,
        users: args.users,
        messages: args.messages,
        groups: args.groups,
        group_size: args.group_size,
        offline: args.offline,
        multi_device: args.multi_device,
        batch: args.batch,
        rate: args.rate,
        seed: args.seed,
        ..DemoOptions::default()
    };
    println!(
        "fleet: {} regions x {} gateways, {} users ({:.0}% offline, {:.0}% multi-device), {} groups of {}; sending {} messages at {}",
        options.regions,
        options.gateways_per_region,
        options.users,
        options.offline * 100.0,
        options.multi_device * 100.0,
        options.groups,
        options.group_size,
        options.messages,
        if options.rate == 0 { "full speed".to_string() } else { format!("{} msg/s", options.rate) }
    );
    let bar = ProgressBar::new(options.messages as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} messages  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let report = demo::run(settings, options, move |n| progress.inc(n)).await?;
    bar.finish_and_clear();

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "route",
        "via",
        "sent",
        "delivered",
        "p50 ms",
        "p99 ms",
    ]);
    for ((route, via), row) in &report.rows {
        let ms = |micros: u64| {
            if row.delivered == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", micros as f64 / 1000.0)
            }
        };
        table.add_row([
            Cell::new(route),
            Cell::new(via),
            Cell::new(row.sent).set_alignment(CellAlignment::Right),
            Cell::new(row.delivered).set_alignment(CellAlignment::Right),
            Cell::new(ms(row.p50_micros)).set_alignment(CellAlignment::Right),
            Cell::new(ms(row.p99_micros)).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{table}");
    if !report.canary_steps.is_empty() {
        let mut steps = Table::new();
        steps.load_preset(UTF8_FULL_CONDENSED).set_header([
            "canary share",
            "publishes per transport",
            "auto-rollback",
        ]);
        for step in &report.canary_steps {
            let per: Vec<String> = step
                .publishes
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            steps.add_row([
                Cell::new(format!("{}%", step.share)).set_alignment(CellAlignment::Right),
                Cell::new(per.join(", ")),
                Cell::new(step.rolled_back.as_deref().unwrap_or("-")),
            ]);
        }
        println!("{steps}");
    }
    let offline: Vec<String> = report
        .stored_offline
        .iter()
        .map(|(reason, n)| format!("{n} ({reason})"))
        .collect();
    println!(
        "messages: {}  in {:.2?} = {:.0} msg/s   stored offline: {}   replayed on connect: {}   blocked: {}",
        report.messages,
        report.send_elapsed,
        report.send_rate(),
        if offline.is_empty() { "0".into() } else { offline.join(", ") },
        report.replayed,
        report.blocked,
    );
    if report.misrouted > 0 || report.out_of_order > 0 {
        println!(
            "misrouted: {}  out of order: {}",
            report.misrouted, report.out_of_order
        );
    }
    println!("lost: {}  duplicates: {}", report.lost, report.duplicates);
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(args.config.as_deref()).context("loading config")?;
    let backends = switchyard::Backends::from_settings(&settings).await?;
    let from = match args.gateway {
        Some(gateway) => GatewayInfo::new(gateway, args.region),
        None => {
            let sessions = backends
                .presence
                .locate_shared(&args.from.as_str().into())
                .await?;
            let Some(session) = sessions.first() else {
                bail!(
                    "user {:?} has no live session; pass --gateway (and --region) to say where they send from",
                    args.from
                );
            };
            GatewayInfo::new(session.gateway.clone(), session.region.clone())
        }
    };
    let destination = match args.to.strip_prefix("group:") {
        Some(group) => Destination::Group(group.into()),
        None => Destination::User(args.to.as_str().into()),
    };
    let envelope = Envelope::new(args.from.as_str(), from.id.clone(), destination, Vec::new());
    let policy =
        Policy::from_settings(&settings).map_err(switchyard::config::ConfigError::Invalid)?;
    let max_payload = settings.limits.max_payload_bytes;
    print!(
        "{}",
        router::explain(&from, &backends, &policy, max_payload, envelope).await?
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or Ctrl-C: the sidecar then drains and exits.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
