//! Short real measurements on the ext4 disk: structural facts only, never timing thresholds.

use std::path::Path;
use std::time::Duration;

use raftline_bench::fsync::{
    measure_fdatasync, measure_sequential_bandwidth, BandwidthProbe, FileLayout, FsyncMeasurement,
    FsyncProbe, IoPath, LatencySummary,
};
use raftline_bench::stop::StopSignal;

/// A temp dir on the ext4 disk (not /dev/shm, which accepts any O_DIRECT alignment).
fn ext4_tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::tempdir_in(base).expect("temp dir under the target dir")
}

fn assert_ordered(s: &LatencySummary) {
    assert!(s.count > 0, "{s:?}");
    assert!(s.us_p50 > 0.0, "{s:?}");
    assert!(
        s.us_p50 <= s.us_p90
            && s.us_p90 <= s.us_p99
            && s.us_p99 <= s.us_p999
            && s.us_p999 <= s.us_max,
        "{s:?}"
    );
}

fn assert_structure(m: &FsyncMeasurement, probe: &FsyncProbe) {
    assert!(m.commits > 0, "{m:?}");
    assert_eq!(m.fdatasync.count, m.commits);
    assert_eq!(m.commit.count, m.commits);
    assert_ordered(&m.fdatasync);
    assert_ordered(&m.commit);
    // A commit includes its fdatasync.
    assert!(m.commit.us_mean >= m.fdatasync.us_mean, "{m:?}");
    assert!(m.commits * m.write_bytes as u64 <= probe.file_bytes_max);
    assert_eq!(m.path, probe.path);
}

fn probe(path: IoPath, layout: FileLayout) -> FsyncProbe {
    FsyncProbe {
        layout,
        file_bytes_max: 4 << 20,
        ..FsyncProbe::new(4096, Duration::from_millis(50), path)
    }
}

#[test]
fn every_path_and_layout_records_ordered_percentiles_and_leaves_no_file() {
    let dir = ext4_tempdir();
    for path in [
        IoPath::Buffered,
        IoPath::DirectPwrite,
        IoPath::DirectUring,
        IoPath::DirectUringLinked,
    ] {
        for layout in [FileLayout::Fallocated, FileLayout::Prewritten] {
            let p = probe(path, layout);
            let m = measure_fdatasync(dir.path(), &p, &StopSignal::default())
                .expect("measurement runs");
            assert_structure(&m, &p);
            assert_eq!(m.layout, layout);
        }
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch files are removed"
    );
}

#[test]
fn size_cap_stops_a_step_before_its_duration() {
    let dir = ext4_tempdir();
    let p = FsyncProbe {
        file_bytes_max: 3 * 16384,
        ..FsyncProbe::new(16384, Duration::from_secs(600), IoPath::DirectUring)
    };
    let m = measure_fdatasync(dir.path(), &p, &StopSignal::default()).unwrap();
    assert_eq!(m.commits, 3);
}

#[test]
fn bandwidth_writes_whole_blocks_and_syncs_once() {
    let dir = ext4_tempdir();
    for path in [IoPath::DirectUring, IoPath::DirectPwrite, IoPath::Buffered] {
        let p = BandwidthProbe {
            write_bytes: 1 << 20,
            queue_depth: 4,
            duration: Duration::from_secs(600),
            file_bytes_max: 8 << 20,
            path,
        };
        let m = measure_sequential_bandwidth(dir.path(), &p, &StopSignal::default()).unwrap();
        assert_eq!(m.bytes_written, 8 << 20, "{m:?}");
        assert!(m.bytes_per_s > 0.0 && m.end_fdatasync_us > 0.0, "{m:?}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn raised_stop_signal_interrupts_and_removes_the_file() {
    let dir = ext4_tempdir();
    let stop = StopSignal::default();
    stop.raise();
    let err = measure_fdatasync(
        dir.path(),
        &probe(IoPath::DirectUring, FileLayout::Fallocated),
        &stop,
    )
    .unwrap_err();
    assert!(
        matches!(err, raftline_bench::fsync::BenchError::Interrupted),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
