//! What a Raft group gets from a disk: unbatched entries/s and group-commit records/s per batch size.

use serde::Serialize;

/// Record sizes the prediction table is printed for.
pub const RECORD_BYTES: [usize; 2] = [256, 1024];
/// The recommended batch is the largest whose commit takes at most this many times an unbatched
/// commit: past it the transfer costs more than the flush, so latency grows faster than throughput.
pub const RECOMMENDED_COMMIT_LATENCY_FACTOR: f64 = 2.0;

/// One point of the group-commit curve: a batch of `batch_bytes` written and fdatasync'ed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Bytes per write + fdatasync.
    pub batch_bytes: usize,
    /// Commits per second at that size.
    pub commits_per_s: f64,
    /// Typical (p50) latency of one commit, µs.
    pub commit_us_p50: f64,
}

/// A typical disk used for comparison; its curve is modelled, not measured.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReferenceProfile {
    /// The profile's name.
    pub name: &'static str,
    /// Typical write + fdatasync latency of a small write, µs.
    pub fdatasync_us: f64,
    /// Typical sequential write bandwidth, bytes/s.
    pub bandwidth_bytes_per_s: f64,
}

/// Typical HDD, SATA SSD and consumer NVMe disks (reference, not measured).
pub const REFERENCE_PROFILES: [ReferenceProfile; 3] = [
    ReferenceProfile {
        name: "HDD (reference)",
        fdatasync_us: 10_000.0,
        bandwidth_bytes_per_s: 150e6,
    },
    ReferenceProfile {
        name: "SATA SSD (reference)",
        fdatasync_us: 1_000.0,
        bandwidth_bytes_per_s: 450e6,
    },
    ReferenceProfile {
        name: "NVMe consumer (reference)",
        fdatasync_us: 300.0,
        bandwidth_bytes_per_s: 2_000e6,
    },
];

impl ReferenceProfile {
    /// The modelled curve: one commit of `b` bytes costs the flush plus `b / bandwidth`.
    pub fn curve(&self, batch_sizes: &[usize]) -> Vec<CurvePoint> {
        batch_sizes
            .iter()
            .map(|&batch_bytes| {
                let commit_us =
                    self.fdatasync_us + batch_bytes as f64 / self.bandwidth_bytes_per_s * 1e6;
                CurvePoint {
                    batch_bytes,
                    commits_per_s: 1e6 / commit_us,
                    commit_us_p50: commit_us,
                }
            })
            .collect()
    }
}

/// One row of the prediction table.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PredictionRow {
    /// Bytes per group commit.
    pub batch_bytes: usize,
    /// Records that fit one batch.
    pub records_per_batch: u64,
    /// Records made durable per second at this batch size.
    pub records_per_s: f64,
    /// What a producer waits for one commit at this size, µs (p50).
    pub commit_us_p50: f64,
}

/// The prediction for one record size.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Bytes per record (framing included).
    pub record_bytes: usize,
    /// One record per commit: 1 / commit latency at the smallest batch size.
    pub unbatched_entries_per_s: f64,
    /// Group commit at each batch size.
    pub rows: Vec<PredictionRow>,
    /// The largest batch whose commit stays within [`RECOMMENDED_COMMIT_LATENCY_FACTOR`] × the unbatched one.
    pub recommended_batch_bytes: usize,
}

/// Predicts records/s per batch size from a commit curve, capped by `bandwidth_bytes_per_s`.
/// `curve` must be non-empty and sorted by batch size; its first point is the unbatched case.
pub fn predict(
    curve: &[CurvePoint],
    bandwidth_bytes_per_s: f64,
    record_bytes: usize,
) -> Prediction {
    assert!(
        !curve.is_empty(),
        "a prediction needs at least one curve point"
    );
    assert!(
        curve
            .windows(2)
            .all(|w| w[0].batch_bytes < w[1].batch_bytes),
        "curve sorted by batch size"
    );
    assert!(
        record_bytes > 0 && record_bytes <= curve[0].batch_bytes,
        "a record fits the smallest batch"
    );
    let records_per_s_cap = bandwidth_bytes_per_s / record_bytes as f64;
    let rows: Vec<PredictionRow> = curve
        .iter()
        .map(|p| {
            let records_per_batch = (p.batch_bytes / record_bytes) as u64;
            PredictionRow {
                batch_bytes: p.batch_bytes,
                records_per_batch,
                records_per_s: (p.commits_per_s * records_per_batch as f64).min(records_per_s_cap),
                commit_us_p50: p.commit_us_p50,
            }
        })
        .collect();
    let commit_us_limit = RECOMMENDED_COMMIT_LATENCY_FACTOR * curve[0].commit_us_p50;
    let recommended_batch_bytes = rows
        .iter()
        .filter(|r| r.commit_us_p50 <= commit_us_limit)
        .map(|r| r.batch_bytes)
        .max()
        .unwrap_or(curve[0].batch_bytes);
    Prediction {
        record_bytes,
        unbatched_entries_per_s: curve[0].commits_per_s,
        rows,
        recommended_batch_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];

    #[test]
    fn reference_profiles_predict_the_expected_table() {
        // Commit of b bytes = flush + b / bandwidth. E.g. SATA, 1 KiB records at 256 KiB:
        // 1000 µs + 582.5 µs -> 632 commits/s x 256 records = 161 765 records/s.
        // Recommended: the largest batch with commit <= 2 x the 4 KiB commit (HDD 20 054 µs, SATA
        // 2 018 µs, NVMe 604 µs): HDD 1 MiB (16 991 µs), SATA 256 KiB (1 583 µs; 1 MiB is 3 330 µs),
        // NVMe 256 KiB (431 µs; 1 MiB is 824 µs).
        // (profile index, record bytes, unbatched entries/s, records/s per batch size, recommended)
        let cases = [
            (
                0,
                256,
                99.73,
                [1_595.6, 6_330.9, 24_528.3, 87_166.5, 241_075.8],
                1 << 20,
            ),
            (
                1,
                1024,
                990.98,
                [3_963.9, 15_437.9, 55_864.2, 161_765.0, 307_491.9],
                256 << 10,
            ),
            (
                2,
                256,
                3_310.7,
                [52_971.7, 207_662.8, 769_304.7, 2_375_473.2, 4_969_137.0],
                256 << 10,
            ),
        ];
        for (i, record_bytes, unbatched, records_per_s, recommended) in cases {
            let profile = REFERENCE_PROFILES[i];
            let p = predict(
                &profile.curve(&SIZES),
                profile.bandwidth_bytes_per_s,
                record_bytes,
            );
            let close = |a: f64, b: f64| (a - b).abs() / b < 1e-4;
            assert!(
                close(p.unbatched_entries_per_s, unbatched),
                "{}: {p:?}",
                profile.name
            );
            for (row, expected) in p.rows.iter().zip(records_per_s) {
                assert!(
                    close(row.records_per_s, expected),
                    "{}: {row:?} expected {expected}",
                    profile.name
                );
            }
            assert_eq!(p.recommended_batch_bytes, recommended, "{}", profile.name);
        }
    }

    #[test]
    fn bandwidth_caps_records_per_second() {
        let curve = [CurvePoint {
            batch_bytes: 1 << 20,
            commits_per_s: 1_000.0,
            commit_us_p50: 1_000.0,
        }];
        // Uncapped: 1000 commits × 4096 records = 4.1 M/s; 100 MB/s of 256 B records is 390 625/s.
        let p = predict(&curve, 100e6, 256);
        assert_eq!(p.rows[0].records_per_batch, 4096);
        assert!((p.rows[0].records_per_s - 390_625.0).abs() < 1e-6);
    }

    #[test]
    fn recommendation_is_the_largest_batch_within_twice_the_unbatched_commit() {
        let point = |batch_bytes, commit_us_p50: f64| CurvePoint {
            batch_bytes,
            commits_per_s: 1e6 / commit_us_p50,
            commit_us_p50,
        };
        // Limit 2 x 100 µs = 200 µs: 16 KiB (200 µs) is in, 64 KiB (201 µs) is out.
        let curve = [point(4096, 100.0), point(16384, 200.0), point(65536, 201.0)];
        let p = predict(&curve, f64::INFINITY, 1024);
        assert_eq!(p.recommended_batch_bytes, 16384);
        assert_eq!(p.unbatched_entries_per_s, 10_000.0);
    }
}
