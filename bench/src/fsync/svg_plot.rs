//! The fsync profile's group-commit curve as a standalone SVG document ([`render_svg`]), drawn
//! with [`crate::chart`].

use super::profile::Profile;
use crate::chart::{render_chart, Panel, Series, XTicks};
use crate::labels::size_label;

/// Renders the profile's group-commit curve as a standalone SVG document.
pub fn render_svg(p: &Profile) -> String {
    let fsyncs = Panel {
        title: "fdatasyncs per second vs write size".to_string(),
        x_label: "write size per fdatasync (log scale)".to_string(),
        y_label: "fsyncs/s".to_string(),
        series: vec![Series {
            label: String::new(),
            colour: "#1f77b4".to_string(),
            dashed: false,
            points: p
                .curve
                .iter()
                .map(|m| (m.write_bytes as f64, m.commits_per_s))
                .collect(),
            point_labels: None,
        }],
        limit: None,
        x_ticks: XTicks::AtPoints(|x| size_label(x as usize)),
    };
    let bandwidth = Panel {
        title: "durable MB/s vs write size (one fdatasync per write)".to_string(),
        x_label: "write size per fdatasync (log scale)".to_string(),
        y_label: "MB/s".to_string(),
        series: vec![Series {
            label: String::new(),
            colour: "#d62728".to_string(),
            dashed: false,
            points: p
                .curve
                .iter()
                .map(|m| (m.write_bytes as f64, m.bytes_per_s / 1e6))
                .collect(),
            point_labels: None,
        }],
        limit: Some((
            p.bandwidth.bytes_per_s / 1e6,
            format!(
                "sequential O_DIRECT ceiling, {} in flight: {:.0} MB/s",
                p.bandwidth.queue_depth,
                p.bandwidth.bytes_per_s / 1e6
            ),
        )),
        x_ticks: XTicks::AtPoints(|x| size_label(x as usize)),
    };
    render_chart(
        &format!(
            "raftline bench fsync: group-commit curve ({})",
            p.fast_path.name()
        ),
        &format!(
            "{}: {} ({})",
            p.dir.display(),
            p.classification.class.label(),
            p.device.disk.as_deref().unwrap_or("no block device")
        ),
        &[fsyncs, bandwidth],
    )
}
