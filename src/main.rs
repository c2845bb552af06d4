//! The `switchyard` command: thin argument parsing over the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use switchyard::bench::{self, BenchOptions, PathKind};
use switchyard::config::Problem;
use switchyard::demo::{self, DemoOptions};
use switchyard::sidecar::admin_ctl::AdminCtl;
use switchyard::sidecar::SidecarError;
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
    /// Log line format on stderr: `text` (coloured only on a terminal) or
    /// `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
        after_help = "Example:\n  switchyard bench --config config/local.toml --transports redis,kafka --rate 5000 --duration 30s --json out.json --plot out.svg"
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
        user: String,
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
enum Format {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// TOML config file (default: the embedded in-memory config); environment
    /// overrides as SWITCHYARD__SECTION__KEY.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// Loads the settings; every problem on its own line.
    fn load(&self) -> anyhow::Result<Settings> {
        load_settings(self.config.as_deref())
    }
}

fn config_name(file: Option<&Path>) -> String {
    file.map_or_else(
        || "the embedded default".into(),
        |f| f.display().to_string(),
    )
}

fn load_settings(file: Option<&Path>) -> anyhow::Result<Settings> {
    switchyard::config::load_checked(file).map_err(|problems| match &problems[..] {
        // The file itself (not found, not TOML): the reason names it.
        [only] if only.key.is_empty() => anyhow::anyhow!("{}", only.reason),
        _ => {
            let lines: Vec<String> = problems.iter().map(|p| format!("  {}", line(p))).collect();
            anyhow::anyhow!("config {}:\n{}", config_name(file), lines.join("\n"))
        }
    })
}

/// `key: reason`, or the reason alone when it concerns no key (the file).
/// A secret or TLS file start-up could not read, as a problem of its key.
fn secret_problem(err: SidecarError) -> Problem {
    match err {
        SidecarError::Secret { key, from, reason } => Problem {
            key,
            reason: format!("cannot read the secret from {from}: {reason}"),
        },
        SidecarError::Tls { key, path, reason } => Problem {
            key,
            reason: format!("{}: {reason}", path.display()),
        },
        other => Problem {
            key: "sidecar".into(),
            reason: other.to_string(),
        },
    }
}

fn line(problem: &Problem) -> String {
    if problem.key.is_empty() {
        problem.reason.clone()
    } else {
        problem.to_string()
    }
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The sidecars' gRPC addresses (`host:port` or a URI), comma-separated
    /// or repeated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    addr: Vec<String>,
    /// Environment variable holding the admin token (sidecar.admin_token).
    #[arg(long, global = true)]
    token_env: Option<String>,
}

#[derive(clap::Args)]
struct CanaryArgs {
    #[command(subcommand)]
    action: CanaryAction,
    #[command(flatten)]
    admin: AdminArgs,
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
struct DeadLetterArgs {
    #[command(subcommand)]
    action: DeadLetterAction,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum DeadLetterAction {
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
struct DemoArgs {
    #[command(flatten)]
    config: ConfigArg,
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
    #[command(flatten)]
    config: ConfigArg,
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
    #[command(flatten)]
    config: ConfigArg,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes only for a person at a terminal, never in a file,
        // a pipe or a container log; `NO_COLOR` turns them off there too.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
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
            print_error(&err);
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo(args) => run_demo(args).await,
        Command::CheckConfig {
            file,
            format,
            skip_secrets,
        } => Ok(check_config(&file, format, skip_secrets)),
        Command::Explain(args) => explain(args).await,
        Command::Canary(args) => {
            use switchyard::sidecar::admin_ctl::CanaryCommand;
            let command = match args.action {
                CanaryAction::Status => CanaryCommand::Status,
                CanaryAction::Set { share } => CanaryCommand::Set(share),
                CanaryAction::Rollback { reason } => CanaryCommand::Rollback(reason),
            };
            on_each_sidecar(&args.admin, |mut ctl| {
                let command = command.clone();
                async move { Ok(ctl.canary(command).await?) }
            })
            .await
        }
        Command::DeadLetters(args) => {
            use switchyard::sidecar::admin_ctl::DeadLetterCommand;
            let command = match args.action {
                DeadLetterAction::List { user, limit } => DeadLetterCommand::List { user, limit },
                DeadLetterAction::Show { user, id } => DeadLetterCommand::Show { user, id },
                DeadLetterAction::Replay { user, ids } => DeadLetterCommand::Replay { user, ids },
                // Empty ids mean all: clap required --all for that.
                DeadLetterAction::Purge { user, ids, .. } => DeadLetterCommand::Purge { user, ids },
            };
            on_each_sidecar(&args.admin, |mut ctl| {
                let command = command.clone();
                async move { Ok(ctl.dead_letters(command).await?) }
            })
            .await
        }
        Command::State(args) => {
            on_each_sidecar(&args, |mut ctl| async move { Ok(ctl.state().await?) }).await
        }
        Command::Presence { user, config } => {
            let settings = config.load()?;
            let backends = switchyard::Backends::from_settings(&settings).await?;
            let sessions = backends
                .presence
                .locate_shared(&user.as_str().into())
                .await?;
            if sessions.is_empty() {
                println!("{user}: offline (no live session)");
            }
            for s in sessions.iter() {
                let since = std::time::UNIX_EPOCH
                    + std::time::Duration::from_micros(u64::try_from(s.since_micros).unwrap_or(0));
                println!(
                    "{user}  device {}  gateway {}  region {}  since {}",
                    s.device,
                    s.gateway,
                    s.region,
                    humantime_serde::re::humantime::format_rfc3339_seconds(since)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { effective, config } => {
            if effective {
                print!("{}", switchyard::config::effective_toml(&config.load()?)?);
            } else {
                print!("{}", switchyard::config::EMBEDDED_DEFAULT);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let settings = args.config.load()?;
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
            let settings = config.load()?;
            switchyard::sidecar::serve(settings, config.config, terminated()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `check-config`: `FILE: ok` on stdout, or every problem on stderr (one
/// line each); `--format json`: one object on stdout either way.
fn check_config(file: &Path, format: Format, skip_secrets: bool) -> ExitCode {
    let problems = match switchyard::config::load_checked(Some(file)) {
        Err(problems) => problems,
        Ok(_) if skip_secrets => Vec::new(),
        Ok(settings) => match switchyard::sidecar::preflight(&settings) {
            Ok(()) => Vec::new(),
            Err(err) => vec![secret_problem(err)],
        },
    };
    match format {
        Format::Json => {
            let report = serde_json::json!({
                "file": file.display().to_string(),
                "ok": problems.is_empty(),
                "problems": problems
                    .iter()
                    .map(|p| serde_json::json!({"key": p.key, "reason": p.reason}))
                    .collect::<Vec<_>>(),
            });
            println!("{report}");
        }
        Format::Text if problems.is_empty() => println!("{}: ok", file.display()),
        Format::Text => {
            for problem in &problems {
                eprintln!("{}: {}", file.display(), line(problem));
            }
        }
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `action` on each sidecar of `args` in turn, printing its answer
/// under the sidecar's address when there are several; fails if any did.
async fn on_each_sidecar<F, Fut>(args: &AdminArgs, action: F) -> anyhow::Result<ExitCode>
where
    F: Fn(AdminCtl) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let several = args.addr.len() > 1;
    let mut failed = 0;
    for addr in &args.addr {
        let answer = match AdminCtl::connect(addr, args.token_env.as_deref()).await {
            Ok(ctl) => action(ctl).await,
            Err(err) => Err(err.into()),
        };
        match answer {
            Ok(text) if several => print!("== {addr}\n{text}"),
            Ok(text) => print!("{text}"),
            Err(err) if several => {
                failed += 1;
                println!("== {addr}");
                print_error(&err);
            }
            Err(err) => return Err(err),
        }
    }
    if failed > 0 {
        bail!("{failed} of {} sidecars failed", args.addr.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `error: ...` and then each cause on its own line, skipping causes whose
/// text the line before already carries (many errors print their source).
fn print_error(err: &anyhow::Error) {
    let mut last = err.to_string();
    eprintln!("error: {last}");
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        last = text;
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let settings = args.config.load()?;
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
    let settings = args.config.load()?;
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
    let policy = settings
        .policy()
        .map_err(switchyard::config::ConfigError::Invalid)?;
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
