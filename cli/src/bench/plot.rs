//! The bench result as an SVG: latency percentiles per path and transport
//! (left, log scale) and delivered throughput (right). Plotters' SVG backend
//! writes text as `<text>` elements, so no font is needed at build or run time.

use std::path::Path;

use plotters::prelude::*;

use super::{BenchError, BenchReport};
use switchyard::cause::Cause;

const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

/// Writes the plot of `report` to `path`.
pub fn write_svg(report: &BenchReport, path: &Path) -> Result<(), BenchError> {
    let output = |reason: Cause| BenchError::Output {
        path: path.display().to_string(),
        reason,
    };
    draw(report, path).map_err(|e| output(Cause::from(e)))
}

fn label(row: &super::Row) -> String {
    if row.path.starts_with("raw ") {
        row.path.clone()
    } else {
        format!("{} {}", row.path, row.transport)
    }
}

fn draw(report: &BenchReport, path: &Path) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(640);
    let rows = &report.rows;

    let max_ms = rows.iter().map(|r| r.p999_ms).fold(1.0f64, f64::max) * 2.0;
    let mut latency = ChartBuilder::on(&left)
        .caption("end-to-end latency (ms, log)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0usize..PERCENTILES.len() - 1, (0.01f64..max_ms).log_scale())?;
    latency
        .configure_mesh()
        .x_labels(PERCENTILES.len())
        .x_label_formatter(&|i| PERCENTILES.get(*i).copied().unwrap_or("").to_string())
        .y_desc("ms")
        .draw()?;
    for (i, row) in rows.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(usize, f64)> = [row.p50_ms, row.p90_ms, row.p99_ms, row.p999_ms]
            .into_iter()
            .map(|ms| ms.max(0.01))
            .enumerate()
            .collect();
        latency
            .draw_series(std::iter::once(PathElement::new(
                points.clone(),
                color.stroke_width(2),
            )))?
            .label(label(row))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        latency.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let max_rate = rows
        .iter()
        .map(|r| r.delivered_per_sec)
        .fold(1.0f64, f64::max)
        * 1.15;
    // One bar per row, named under it and with its figure above it (the
    // same colour as its line on the left).
    let mut throughput = ChartBuilder::on(&right)
        .caption("delivered msg/s", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d((0usize..rows.len().max(1)).into_segmented(), 0f64..max_rate)?;
    throughput
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len().max(1))
        .x_label_style(("sans-serif", 11))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => rows.get(*i).map(label).unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc("msg/s")
        .draw()?;
    throughput.draw_series(rows.iter().enumerate().map(|(i, row)| {
        let color = Palette99::pick(i).to_rgba();
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), row.delivered_per_sec),
            ],
            color.filled(),
        )
    }))?;
    throughput.draw_series(rows.iter().enumerate().map(|(i, row)| {
        Text::new(
            format!("{:.0}", row.delivered_per_sec),
            (SegmentValue::CenterOf(i), row.delivered_per_sec),
            ("sans-serif", 11).into_font().color(&BLACK),
        )
    }))?;
    root.present()?;
    Ok(())
}
