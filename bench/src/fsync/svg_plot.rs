//! The group-commit curve as a small SVG: fsyncs/s and MB/s against write size, log scales.

use std::fmt::Write;

use super::profile::{size_label, Profile};
use super::text_report::grouped;

const WIDTH: f64 = 720.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 70.0;
const PANEL_GAP: f64 = 80.0;

/// One log-log panel.
struct Panel<'a> {
    title: &'a str,
    y_label: &'a str,
    colour: &'a str,
    /// (write bytes, value) per curve point.
    points: Vec<(f64, f64)>,
    /// A horizontal line for a limit, with its label.
    limit: Option<(f64, String)>,
}

/// Renders the profile's group-commit curve as a standalone SVG document.
pub fn render_svg(p: &Profile) -> String {
    let fsyncs = Panel {
        title: "fdatasyncs per second vs write size",
        y_label: "fsyncs/s",
        colour: "#1f77b4",
        points: p
            .curve
            .iter()
            .map(|m| (m.write_bytes as f64, m.commits_per_s))
            .collect(),
        limit: None,
    };
    let bandwidth = Panel {
        title: "durable MB/s vs write size (one fdatasync per write)",
        y_label: "MB/s",
        colour: "#d62728",
        points: p
            .curve
            .iter()
            .map(|m| (m.write_bytes as f64, m.bytes_per_s / 1e6))
            .collect(),
        limit: Some((
            p.bandwidth.bytes_per_s / 1e6,
            format!(
                "sequential O_DIRECT ceiling, {} in flight: {:.0} MB/s",
                p.bandwidth.queue_depth,
                p.bandwidth.bytes_per_s / 1e6
            ),
        )),
    };
    let height = MARGIN_TOP + 2.0 * PANEL_HEIGHT + PANEL_GAP + 60.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">raftline bench fsync: group-commit curve ({})</text>"#,
        WIDTH / 2.0,
        p.fast_path.name()
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" text-anchor="middle" fill="#555">{}: {} ({})</text>"##,
        WIDTH / 2.0,
        escape(&p.dir.display().to_string()),
        escape(p.classification.class.label()),
        escape(p.device.disk.as_deref().unwrap_or("no block device"))
    );
    draw_panel(&mut s, MARGIN_TOP, &fsyncs);
    draw_panel(&mut s, MARGIN_TOP + PANEL_HEIGHT + PANEL_GAP, &bandwidth);
    let _ = writeln!(s, "</svg>");
    s
}

fn draw_panel(s: &mut String, top: f64, panel: &Panel) {
    let (left, right, bottom) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT, top + PANEL_HEIGHT);
    let xs: Vec<f64> = panel.points.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = panel
        .points
        .iter()
        .map(|p| p.1)
        .filter(|y| *y > 0.0)
        .collect();
    ys.extend(panel.limit.iter().map(|l| l.0).filter(|y| *y > 0.0));
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    // Half a doubling of padding on each side keeps the end points and their labels inside the frame.
    let (x_min, x_max) = (
        xs[0].log2() - 0.5,
        xs[xs.len() - 1].log2().max(xs[0].log2() + 1.0) + 0.5,
    );
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
    let px = |x: f64| left + (x.log2() - x_min) / (x_max - x_min) * (right - left);
    let py = |y: f64| bottom - (y.log10() - y_lo) / (y_hi - y_lo) * PANEL_HEIGHT;

    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 10.0,
        panel.title
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
                    grouped(v)
                );
            }
        }
        decade += 1.0;
    }
    // Vertical grid at each measured write size.
    for &x in &xs {
        let xp = px(x);
        let _ = writeln!(
            s,
            r##"<line x1="{xp:.1}" y1="{top}" x2="{xp:.1}" y2="{bottom}" stroke="#e5e5e5"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{xp:.1}" y="{}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            size_label(x as usize)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">write size per fdatasync (log scale)</text>"#,
        (left + right) / 2.0,
        bottom + 34.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{} (log scale)</text>"#,
        left - 60.0,
        top + PANEL_HEIGHT / 2.0,
        left - 60.0,
        top + PANEL_HEIGHT / 2.0,
        panel.y_label
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
    let path: Vec<String> = panel
        .points
        .iter()
        .filter(|p| p.1 > 0.0)
        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
        path.join(" "),
        panel.colour
    );
    for &(x, y) in panel.points.iter().filter(|p| p.1 > 0.0) {
        let (xp, yp) = (px(x), py(y));
        let _ = writeln!(
            s,
            r#"<circle cx="{xp:.1}" cy="{yp:.1}" r="4" fill="{}"/>"#,
            panel.colour
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{}">{}</text>"#,
            xp,
            yp - 9.0,
            panel.colour,
            if y < 10.0 {
                format!("{y:.1}")
            } else {
                grouped(y)
            }
        );
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
