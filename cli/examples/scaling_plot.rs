//! The scaling plot of docs/BENCHMARKS.md ("Scaling (issue 14)"): delivered
//! msg/s, p99 and the router's CPU per delivery against the number of
//! receiving gateways, one line per (`--targets` or `--fanout`, workload,
//! transport, path), read from `switchyard bench --json` files; and, when given, bytes per
//! cached presence entry against the entries (from
//! `cli/examples/presence_cache_memory.rs`). Repeated runs of one point are
//! drawn as dots, the line goes through their mean.
//!
//!   cargo run --release --example scaling_plot -- docs/bench/scaling.svg \
//!       targets:t1.json targets:t10.json fanout:f10.json presence:10000=170
//!
//! The gateway count of a file is its `options.targets` (or `fanout`); a
//! 1-gateway run may be given under both axes.

use std::collections::BTreeMap;

use plotters::prelude::*;

type Error = Box<dyn std::error::Error>;

/// One switchyard row of one file: gateways, msg/s, p99 ms, router µs/delivery.
type Point = (f64, f64, f64, f64);

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: scaling_plot OUT.svg (targets|fanout):FILE.json... [presence:N=BYTES...]")?;
    let mut series: BTreeMap<String, Vec<Point>> = BTreeMap::new();
    let mut presence: Vec<(f64, f64)> = Vec::new();
    for arg in args {
        let (axis, value) = arg
            .split_once(':')
            .ok_or_else(|| format!("{arg}: expected AXIS:VALUE"))?;
        if axis == "presence" {
            let (n, bytes) = value
                .split_once('=')
                .ok_or_else(|| format!("{arg}: expected presence:N=BYTES"))?;
            presence.push((n.parse()?, bytes.parse()?));
            continue;
        }
        if axis != "targets" && axis != "fanout" {
            return Err(format!("{arg}: axis must be targets, fanout or presence").into());
        }
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(value)?)?;
        let gateways = report["options"][axis]
            .as_f64()
            .ok_or_else(|| format!("{value}: no options.{axis}"))?;
        let rows = report["rows"]
            .as_array()
            .ok_or_else(|| format!("{value}: no rows"))?;
        // Files from before `--workload` are uniform.
        let workload = match report["options"]["workload"].as_str() {
            Some("chat") => " chat",
            _ => "",
        };
        let switchyard =
            |r: &&serde_json::Value| r["path"] == "switchyard" || r["path"] == "sidecar";
        for row in rows.iter().filter(switchyard) {
            let number = |key: &str| {
                row[key]
                    .as_f64()
                    .ok_or_else(|| format!("{value}: a row has no {key}"))
            };
            let name = format!(
                "{axis}{workload} {} {}",
                row["transport"].as_str().unwrap_or("?"),
                row["path"].as_str().unwrap_or("?")
            );
            series.entry(name).or_default().push((
                gateways,
                number("delivered_per_sec")?,
                number("p99_ms")?,
                number("router_cpu_us_per_msg")?,
            ));
        }
    }
    let root = SVGBackend::new(&out, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((2, 2));
    let metric = |f: fn(&Point) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        series
            .iter()
            .map(|(name, points)| (name.clone(), points.iter().map(|p| (p.0, f(p))).collect()))
            .collect()
    };
    draw(&panels[0], "delivered msg/s", &metric(|p| p.1))?;
    draw(&panels[1], "p99 ms", &metric(|p| p.2))?;
    draw(&panels[2], "router CPU µs per delivery", &metric(|p| p.3))?;
    if !presence.is_empty() {
        draw(
            &panels[3],
            "bytes per cached presence entry (target < 200)",
            &[("presence cache".into(), presence)],
        )?;
    }
    root.present()?;
    println!("wrote {out}");
    Ok(())
}

/// One panel, log-log: x = receiving gateways (or entries), so 1, 10, 100
/// are evenly spaced and a constant cost per gateway is a straight line.
fn draw(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    lines: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Error> {
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 1e-3f64);
    for &(x, y) in lines.iter().flat_map(|(_, p)| p.iter()) {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (0.8..x_max * 1.25).log_scale(),
            ((y_min * 0.5).max(1e-3)..y_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("receiving gateways (presence: entries)")
        .draw()?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Mean of the repeated runs of each x.
        let mut by_x: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for &(x, y) in points {
            by_x.entry(x as u64).or_default().push(y);
        }
        let means: Vec<(f64, f64)> = by_x
            .iter()
            .map(|(&x, ys)| (x as f64, ys.iter().sum::<f64>() / ys.len() as f64))
            .collect();
        chart
            .draw_series(std::iter::once(PathElement::new(
                means,
                color.stroke_width(2),
            )))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    Ok(())
}
