//! `switchyard demo`: a fleet on the configured backends, with a progress
//! bar and a summary table.

use std::process::ExitCode;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};
use switchyard_cli::demo::{self, DemoOptions};

use crate::args::DemoArgs;

pub(crate) async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
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
