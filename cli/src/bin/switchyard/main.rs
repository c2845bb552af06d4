//! The `switchyard` command: thin argument parsing over the library.

//!
//! # Layout
//!
//! - `args`: the subcommands and their flags (clap).
//! - `settings`: loading a config for a command, and `check-config`.
//! - `demo`: the demo's progress bar and summary table.
//! - here: dispatch, the admin commands, `explain`, errors and signals.

mod args;
mod demo;
mod settings;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::bail;
use clap::Parser;
use switchyard::{router, Destination, Envelope, GatewayInfo, GroupId, UserId};
use switchyard_cli::admin_ctl::AdminCtl;
use switchyard_cli::bench::{self, BenchOptions};

use args::{AdminArgs, CanaryAction, Cli, Command, DeadLetterAction, ExplainArgs, LogFormat};
use settings::check_config;

// The router allocates a few small buffers per message on several threads;
// glibc's allocator took about a fifth of the CPU of a Redis route
// (docs/bench/HISTORY.md). The library leaves the choice to the gateway.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Demo(args) => demo::run_demo(args).await,
        Command::CheckConfig {
            file,
            format,
            skip_secrets,
        } => Ok(check_config(&file, format, skip_secrets)),
        Command::Explain(args) => explain(args).await,
        Command::Canary(args) => {
            use switchyard_cli::admin_ctl::CanaryCommand;
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
            use switchyard_cli::admin_ctl::DeadLetterCommand;
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
            let sessions = backends.presence().locate_shared(&user).await?;
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
                targets: args.targets,
                workload: args.workload,
                duration: args.duration,
                messages: args.messages,
                senders: args.senders,
                batch: args.batch,
                transports: args.transports,
                raw: args.raw,
                paths: args.paths,
                shared_connection: args.shared_connection,
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
            // Hooked before the sidecar starts: a SIGTERM that arrives right
            // after "sidecar serving" drains instead of killing the process.
            let terminated = terminated();
            switchyard::sidecar::serve(settings, config.config, terminated).await?;
            Ok(ExitCode::SUCCESS)
        }
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

/// `error: ...` and then each cause on its own line (the library's errors
/// leave their cause to `source()`), skipping a cause whose text the line
/// before already carries (some client libraries' errors print their source).
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

async fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let settings = args.config.load()?;
    let backends = switchyard::Backends::from_settings(&settings).await?;
    let from = match args.gateway {
        Some(gateway) => {
            let Some(region) = args.region else {
                bail!("--gateway {gateway} needs --region: the route depends on it");
            };
            GatewayInfo::new(gateway, region)
        }
        None => {
            let sessions = backends.presence().locate_shared(&args.from).await?;
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
        Some(group) => Destination::Group(GroupId::parse("--to", group)?),
        None => Destination::User(UserId::parse("--to", &args.to)?),
    };
    let envelope = Envelope::new(args.from, from.id.clone(), destination, Vec::new());
    // A fresh policy: the quality verdicts of a running sidecar are in its
    // metrics and `switchyard admin state`, not in this process.
    let policy = settings.live_policy()?;
    let max_payload = settings.limits.max_payload_bytes;
    print!(
        "{}",
        router::explain(&from, &backends, &policy, max_payload, envelope).await?
    );
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or Ctrl-C: the sidecar then drains and exits. The
/// SIGTERM handler is installed when this is called, not when first polled.
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    async move {
        match term {
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
}
