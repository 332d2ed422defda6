//! `raftline bench cluster --sweep`: the throughput-vs-latency curve as load rises, one short
//! measured run per (P, W) point of a grid on the same cluster, as a table, in the JSON report,
//! and as an SVG chart (throughput on x, p50 and p99 latency on y, one curve per W).

use crate::chart::{render_chart, Panel, Series, XTicks};
use serde::Serialize;

use crate::cluster::figures::LoadFigures;

/// Producer counts of the default grid.
pub const DEFAULT_PRODUCERS: &[usize] = &[1, 16, 64, 256];
/// Windows of the default grid.
pub const DEFAULT_WINDOWS: &[usize] = &[1, 8];
/// Longest a whole sweep may take, seconds (points × (warm-up + duration)).
pub const SWEEP_SECS_MAX: f64 = 600.0;

/// Curve colours, one per window.
const COLOURS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One measured point of the sweep.
#[derive(Debug, Serialize)]
pub struct SweepPoint {
    /// Producer connections.
    pub producers: usize,
    /// Appends in flight per connection.
    pub window: usize,
    /// What the point measured.
    #[serde(flatten)]
    pub figures: LoadFigures,
}

/// The grid in run order: every W for each P, P rising (load rises along each curve).
pub fn grid(producers: &[usize], windows: &[usize]) -> Vec<(usize, usize)> {
    windows
        .iter()
        .flat_map(|&w| producers.iter().map(move |&p| (p, w)))
        .collect()
}

/// The sweep as a table.
pub fn render_table(points: &[SweepPoint]) -> String {
    let mut out = format!(
        "{:>5} {:>4} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>8}\n",
        "P",
        "W",
        "records/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "fsyncs/s",
        "rec/fsync",
        "gen cpu"
    );
    for p in points {
        let f = &p.figures;
        let l = &f.latency_us;
        let (fsyncs, per_fsync) = f.leader.as_ref().map_or((f64::NAN, f64::NAN), |l| {
            (l.fdatasyncs_per_s, l.records_per_fdatasync)
        });
        out += &format!(
            "{:>5} {:>4} {:>12.0} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>9.0} {:>9.1} {:>7.0}%{}\n",
            p.producers,
            p.window,
            f.records_per_s,
            l.us_p50 / 1e3,
            l.us_p90 / 1e3,
            l.us_p99 / 1e3,
            l.us_p999 / 1e3,
            l.us_max / 1e3,
            fsyncs,
            per_fsync,
            f.generator.cpu_percent.unwrap_or(f64::NAN),
            if f.leader_changed {
                "  (leader changed)"
            } else {
                ""
            }
        );
    }
    out
}

/// The sweep as an SVG chart: records/s on x, p50 (solid) and p99 (dashed) latency on y, one
/// colour per window, each point labelled with its P.
pub fn render_svg(points: &[SweepPoint], subtitle: &str) -> String {
    let mut windows: Vec<usize> = points.iter().map(|p| p.window).collect();
    windows.sort_unstable();
    windows.dedup();
    let mut series = Vec::new();
    for (i, &w) in windows.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()].to_string();
        let mut curve: Vec<&SweepPoint> = points.iter().filter(|p| p.window == w).collect();
        // In load order (P rising), so a curve that bends back (more connections, less
        // throughput) shows it.
        curve.sort_by_key(|p| p.producers);
        let xy = |q: fn(&LoadFigures) -> f64| -> Vec<(f64, f64)> {
            curve
                .iter()
                .map(|p| (p.figures.records_per_s, q(&p.figures) / 1e3))
                .collect()
        };
        series.push(Series {
            label: format!("W={w}: p50"),
            colour: colour.clone(),
            dashed: false,
            points: xy(|f| f.latency_us.us_p50),
            point_labels: Some(curve.iter().map(|p| format!("P={}", p.producers)).collect()),
        });
        series.push(Series {
            label: format!("W={w}: p99"),
            colour,
            dashed: true,
            points: xy(|f| f.latency_us.us_p99),
            point_labels: Some(vec![String::new(); curve.len()]),
        });
    }
    let panel = Panel {
        title: "append->ack latency vs committed records/s".to_string(),
        x_label: "committed records/s (log scale)".to_string(),
        y_label: "latency, ms".to_string(),
        series,
        limit: None,
        x_ticks: XTicks::Decades,
    };
    render_chart(
        "raftline bench cluster: throughput vs latency",
        subtitle,
        &[panel],
    )
}
