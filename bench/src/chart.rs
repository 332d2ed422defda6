//! Log-log line charts as small standalone SVG documents: panels of labelled curves
//! ([`render_chart`]), e.g. the fsync profiler's group-commit curve and the cluster benchmark's
//! throughput-vs-latency sweep.

use std::fmt::Write;

use crate::labels::grouped;

const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 70.0;
const PANEL_GAP: f64 = 80.0;
/// Height of one legend line under a panel.
const LEGEND_LINE: f64 = 16.0;

/// One curve of a panel.
pub struct Series {
    /// Legend text (empty: no legend entry).
    pub label: String,
    /// SVG colour.
    pub colour: String,
    /// Drawn dashed (e.g. a p99 beside its p50).
    pub dashed: bool,
    /// (x, y) per point, in x order; points with y <= 0 are skipped.
    pub points: Vec<(f64, f64)>,
    /// Text above each point (empty strings: none); `None`: the y value.
    pub point_labels: Option<Vec<String>>,
}

/// How the x axis is ticked.
pub enum XTicks {
    /// A tick at every point of the first series, labelled by the function (log2 spacing).
    AtPoints(fn(f64) -> String),
    /// Log10 decades (with 2x and 5x).
    Decades,
}

/// One log-log panel.
pub struct Panel {
    /// Title above the frame.
    pub title: String,
    /// X axis caption.
    pub x_label: String,
    /// Y axis caption.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
    /// A horizontal line for a limit, with its label.
    pub limit: Option<(f64, String)>,
    /// X axis ticks.
    pub x_ticks: XTicks,
}

/// Renders panels stacked vertically under a title and a subtitle (plain text: escaped here).
pub fn render_chart(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let legend_height =
        |p: &Panel| p.series.iter().filter(|s| !s.label.is_empty()).count() as f64 * LEGEND_LINE;
    let height = MARGIN_TOP
        + panels
            .iter()
            .map(|p| PANEL_HEIGHT + PANEL_GAP + legend_height(p))
            .sum::<f64>()
        - PANEL_GAP
        + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" text-anchor="middle" fill="#555">{}</text>"##,
        WIDTH / 2.0,
        escape(subtitle)
    );
    let mut top = MARGIN_TOP;
    for panel in panels {
        draw_panel(&mut s, top, panel);
        top += PANEL_HEIGHT + PANEL_GAP + legend_height(panel);
    }
    let _ = writeln!(s, "</svg>");
    s
}

fn draw_panel(s: &mut String, top: f64, panel: &Panel) {
    let (left, right, bottom) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT, top + PANEL_HEIGHT);
    let all = || panel.series.iter().flat_map(|c| c.points.iter());
    let xs: Vec<f64> = all().map(|p| p.0).filter(|x| *x > 0.0).collect();
    let mut ys: Vec<f64> = all().map(|p| p.1).filter(|y| *y > 0.0).collect();
    ys.extend(panel.limit.iter().map(|l| l.0).filter(|y| *y > 0.0));
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    let x_lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_hi = xs.iter().copied().fold(0.0, f64::max);
    // X in log2 (points) or log10 (decades) units; half a step of padding keeps the end points
    // and their labels inside the frame.
    let (x_log, x_min, x_max): (fn(f64) -> f64, f64, f64) = match panel.x_ticks {
        XTicks::AtPoints(_) => (
            f64::log2,
            x_lo.log2() - 0.5,
            x_hi.log2().max(x_lo.log2() + 1.0) + 0.5,
        ),
        XTicks::Decades => (
            f64::log10,
            (x_lo.log10() - 0.15).floor().min(x_lo.log10() - 0.15),
            x_hi.log10().max(x_lo.log10() + 0.5) + 0.15,
        ),
    };
    let y_lo = ys
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let y_hi = ys
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(y_lo + 1.0);
    let px = |x: f64| left + (x_log(x) - x_min) / (x_max - x_min) * (right - left);
    let py = |y: f64| bottom - (y.log10() - y_lo) / (y_hi - y_lo) * PANEL_HEIGHT;

    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 10.0,
        escape(&panel.title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{PANEL_HEIGHT}" fill="none" stroke="#333"/>"##,
        right - left
    );
    // Horizontal grid: every decade labelled, 2x and 5x as faint lines.
    let mut decade = y_lo;
    while decade <= y_hi {
        for (mult, strong) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = mult * 10f64.powf(decade);
            if v.log10() > y_hi + 1e-9 {
                continue;
            }
            let y = py(v);
            let stroke = if strong { "#bbb" } else { "#e5e5e5" };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="{stroke}"/>"#
            );
            if strong || y_hi - y_lo <= 2.0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    y + 4.0,
                    number_label(v)
                );
            }
        }
        decade += 1.0;
    }
    // Vertical grid: at each point, or at each decade (2x and 5x faint) inside the frame.
    let ticks: Vec<(f64, String, bool)> = match panel.x_ticks {
        XTicks::AtPoints(label) => panel
            .series
            .first()
            .map(|c| c.points.iter().map(|p| (p.0, label(p.0), false)).collect())
            .unwrap_or_default(),
        XTicks::Decades => {
            let mut ticks = Vec::new();
            let mut decade = x_min.floor();
            while decade <= x_max {
                for (mult, strong) in [(1.0, true), (2.0, false), (5.0, false)] {
                    let v = mult * 10f64.powf(decade);
                    if (x_min..=x_max).contains(&v.log10()) {
                        ticks.push((v, number_label(v), strong));
                    }
                }
                decade += 1.0;
            }
            ticks
        }
    };
    for (x, label, strong) in &ticks {
        let xp = px(*x);
        let stroke = if *strong { "#bbb" } else { "#e5e5e5" };
        let _ = writeln!(
            s,
            r#"<line x1="{xp:.1}" y1="{top}" x2="{xp:.1}" y2="{bottom}" stroke="{stroke}"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{xp:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (left + right) / 2.0,
        bottom + 34.0,
        escape(&panel.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{} (log scale)</text>"#,
        left - 60.0,
        top + PANEL_HEIGHT / 2.0,
        left - 60.0,
        top + PANEL_HEIGHT / 2.0,
        escape(&panel.y_label)
    );
    if let Some((value, label)) = &panel.limit {
        let y = py(*value);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#555" stroke-dasharray="6 4"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#555">{}</text>"##,
            right - 6.0,
            y - 6.0,
            escape(label)
        );
    }
    let mut legend_y = bottom + 56.0;
    for series in &panel.series {
        draw_series(s, series, &px, &py);
        if !series.label.is_empty() {
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{left}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{}" stroke-width="2.5"{dash}/>"#,
                legend_y - 4.0,
                left + 30.0,
                legend_y - 4.0,
                series.colour
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{legend_y:.1}">{}</text>"#,
                left + 38.0,
                escape(&series.label)
            );
            legend_y += LEGEND_LINE;
        }
    }
}

fn draw_series(s: &mut String, series: &Series, px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64) {
    let shown: Vec<(usize, f64, f64)> = series
        .points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.0 > 0.0 && p.1 > 0.0)
        .map(|(i, p)| (i, p.0, p.1))
        .collect();
    let path: Vec<String> = shown
        .iter()
        .map(|&(_, x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let dash = if series.dashed {
        r#" stroke-dasharray="6 4""#
    } else {
        ""
    };
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"{dash}/>"#,
        path.join(" "),
        series.colour
    );
    for &(i, x, y) in &shown {
        let (xp, yp) = (px(x), py(y));
        let _ = writeln!(
            s,
            r#"<circle cx="{xp:.1}" cy="{yp:.1}" r="4" fill="{}"/>"#,
            series.colour
        );
        let label = match &series.point_labels {
            Some(labels) => labels.get(i).cloned().unwrap_or_default(),
            None => number_label(y),
        };
        if !label.is_empty() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{}">{}</text>"#,
                xp,
                yp - 9.0,
                series.colour,
                escape(&label)
            );
        }
    }
}

/// A value as a tick or point label: one decimal below 10, else grouped digits.
fn number_label(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        grouped(v)
    }
}

/// Escapes text for SVG content and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_in_paths_is_escaped() {
        assert_eq!(
            escape(r#"/data/<a & "b">"#),
            "/data/&lt;a &amp; &quot;b&quot;&gt;"
        );
    }
}
