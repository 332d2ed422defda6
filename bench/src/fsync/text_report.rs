//! The profile as plain-text tables for a terminal.

use std::fmt::Write;

use super::classify::FDATASYNC_US_P50_IMPLAUSIBLE;
use super::predict::{Prediction, RECOMMENDED_COMMIT_LATENCY_FACTOR};
use super::profile::Profile;
use super::{FileLayout, LatencySummary};
use crate::labels::{grouped, size_label};
use crate::machine_load::MachineLoad;

/// Renders every table of a profile, the warnings and the verdict.
pub fn render_text(p: &Profile) -> String {
    let mut out = String::new();
    let o = &mut out;
    let dev = &p.device;
    let _ = writeln!(o, "raftline bench fsync: {}", p.dir.display());
    let _ = writeln!(
        o,
        "disk: {} (st_dev {}{}), driver {}, write_cache {}, rotational {}, fua {}, model {}",
        dev.disk.as_deref().unwrap_or("none"),
        dev.dev,
        dev.partition
            .as_deref()
            .map(|x| format!(", partition {x}"))
            .unwrap_or_default(),
        dev.driver.as_deref().unwrap_or("?"),
        dev.write_cache
            .as_deref()
            .map(|w| format!("\"{w}\""))
            .unwrap_or_else(|| "?".into()),
        dev.rotational
            .map_or("?".to_string(), |r| u8::from(r).to_string()),
        dev.fua.map_or("?".to_string(), |r| u8::from(r).to_string()),
        dev.model.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(
        o,
        "fast path: {}; each step at most {} s and {} MiB",
        p.fast_path.name(),
        p.step_duration_s,
        p.file_bytes_max >> 20
    );
    let load = |l: &MachineLoad| l.load_avg_1m.map_or("?".to_string(), |v| format!("{v:.2}"));
    let _ = writeln!(
        o,
        "machine: load average {} at start, {} at end, {} cores",
        load(&p.load_start),
        load(&p.load_end),
        p.load_start.cpus
    );
    if p.load_start.busy() || p.load_end.busy() {
        let _ = writeln!(
            o,
            "WARNING: the machine was busy: latencies include scheduler delay after each wake-up; rerun on a quiet machine (or under `chrt -f 20`) before trusting them"
        );
    }
    for f in &p.fallbacks {
        let _ = writeln!(o, "WARNING: fell back from the wanted fast path: {f}");
    }

    let _ = writeln!(
        o,
        "\n1-2. 4 KiB sequential write + fdatasync, unbatched (latency in µs)"
    );
    let _ = writeln!(
        o,
        "{:<33} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10}",
        "path", "commits", "p50", "p90", "p99", "p99.9", "max", "commit p50", "entries/s"
    );
    let mut rows = vec![&p.buffered_4k];
    if p.fast_4k.path != p.buffered_4k.path {
        rows.push(&p.fast_4k);
    }
    rows.extend(p.fast_4k_linked.iter());
    rows.extend(p.fast_4k_prewritten.iter());
    for m in rows {
        let name = match m.layout {
            FileLayout::Fallocated => format!("{} (fresh file)", m.path.name()),
            FileLayout::Prewritten => format!("{} (prewritten)", m.path.name()),
        };
        let _ = writeln!(
            o,
            "{:<33} {:>8} {} {:>11.0} {:>10}",
            name,
            m.commits,
            latency_cells(&m.fdatasync),
            m.commit.us_p50,
            grouped(m.commits_per_s)
        );
    }
    let _ = writeln!(
        o,
        "(p50..max: the fdatasync alone, as fio reports it; commit = write + fdatasync)"
    );

    let _ = writeln!(
        o,
        "\n3. group-commit curve, {} write + fdatasync (commit latency in µs)",
        p.fast_path.name()
    );
    let _ = writeln!(
        o,
        "{:<10} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "write", "fsyncs/s", "MB/s", "p50", "p90", "p99", "p99.9", "max"
    );
    for m in &p.curve {
        let _ = writeln!(
            o,
            "{:<10} {:>10} {:>9.1} {}",
            size_label(m.write_bytes),
            grouped(m.commits_per_s),
            m.bytes_per_s / 1e6,
            latency_cells(&m.commit)
        );
    }

    let b = &p.bandwidth;
    let _ = writeln!(
        o,
        "\n4. sequential bandwidth: {:.0} MB/s ({} writes of {} in flight, {}, {} MiB, final fdatasync {:.0} µs included)",
        b.bytes_per_s / 1e6,
        b.queue_depth,
        size_label(b.write_bytes),
        b.path.name(),
        b.bytes_written >> 20,
        b.end_fdatasync_us
    );

    let c = &p.classification;
    let _ = writeln!(o, "\n5. profile: {} ({})", c.class.label(), c.reason);
    let bands: Vec<String> = p
        .latency_bands
        .iter()
        .map(|b| {
            if b.fdatasync_us_p50_max.is_finite() {
                format!(
                    "{} {:.0}-{:.0} µs",
                    b.class.label(),
                    b.fdatasync_us_p50_min,
                    b.fdatasync_us_p50_max
                )
            } else {
                format!("{} >= {:.0} µs", b.class.label(), b.fdatasync_us_p50_min)
            }
        })
        .collect();
    let _ = writeln!(
        o,
        "   thresholds on p50 fdatasync: {}; below {FDATASYNC_US_P50_IMPLAUSIBLE:.0} µs implausible; a virtual disk is always unknown/virtualised",
        bands.join(" | ")
    );
    // Warnings usually share their evidence: print it once after the run of warnings it backs.
    for (i, w) in p.warnings.iter().enumerate() {
        let _ = writeln!(o, "WARNING: {}", w.message);
        if p.warnings
            .get(i + 1)
            .is_none_or(|next| next.evidence != w.evidence)
        {
            let _ = writeln!(o, "  evidence: {}", w.evidence.join("; "));
        }
    }

    let _ = writeln!(o, "\n6. prediction from the measured curve");
    prediction_table(o, &p.predictions);
    for r in &p.reference_predictions {
        let _ = writeln!(
            o,
            "\nreference, not measured: {} ({:.0} µs flush, {:.0} MB/s)",
            r.profile.name,
            r.profile.fdatasync_us,
            r.profile.bandwidth_bytes_per_s / 1e6
        );
        prediction_table(o, &r.predictions);
    }
    let _ = writeln!(o, "\nverdict: {}", p.verdict.summary);
    out
}

/// One table: batches as rows, a records/s column per record size; `*` marks the recommended batch.
fn prediction_table(o: &mut String, predictions: &[Prediction]) {
    let Some(first) = predictions.first() else {
        return;
    };
    let _ = write!(o, "{:<12} {:>13}", "batch", "commit p50 µs");
    for p in predictions {
        let _ = write!(o, " {:>16}", format!("{} B rec/s", p.record_bytes));
    }
    let _ = writeln!(o);
    let _ = write!(
        o,
        "{:<12} {:>13.0}",
        "unbatched", first.rows[0].commit_us_p50
    );
    for p in predictions {
        let _ = write!(o, " {:>16}", grouped(p.unbatched_entries_per_s));
    }
    let _ = writeln!(o);
    for (i, row) in first.rows.iter().enumerate() {
        let mark = if row.batch_bytes == first.recommended_batch_bytes {
            " *"
        } else {
            ""
        };
        let _ = write!(
            o,
            "{:<12} {:>13.0}",
            format!("{}{mark}", size_label(row.batch_bytes)),
            row.commit_us_p50
        );
        for p in predictions {
            let _ = write!(o, " {:>16}", grouped(p.rows[i].records_per_s));
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(
        o,
        "* recommended batch: the largest whose commit stays within {RECOMMENDED_COMMIT_LATENCY_FACTOR}x an unbatched one"
    );
}

fn latency_cells(s: &LatencySummary) -> String {
    format!(
        "{:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>9.0}",
        s.us_p50, s.us_p90, s.us_p99, s.us_p999, s.us_max
    )
}
