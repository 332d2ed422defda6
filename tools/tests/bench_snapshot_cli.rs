//! `raftline bench snapshot` as an operator runs it, on tiny settings against a real local
//! 3-node cluster: its JSON report is consistent (every phase ran, counts add up, the wiped
//! follower replaced through InstallSnapshot), and it refuses bad flags. Never a timing
//! threshold.

mod cluster_support;

use std::process::Command;

use cluster_support::number;

fn raftline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftline"))
}

/// Runs a tiny `raftline bench snapshot --json` with `extra` flags in a temporary directory and
/// returns its report, checking the run directory was removed.
fn tiny_run(extra: &[&str]) -> serde_json::Value {
    let cwd = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // 4 MiB segments: the 7 MB the load writes span two, so every snapshot drops some and
    // the wiped follower can only be rebuilt through InstallSnapshot.
    let out = raftline()
        .args(["bench", "snapshot", "--keys", "50000", "--probe-s", "0.3"])
        .args(["--rate", "100", "--server-arg=--segment-mib=4", "--json"])
        .args(extra)
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        std::fs::read_dir(cwd.path().join("data")).map_or(true, |mut d| d.next().is_none()),
        "the run directory is removed"
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// The rebuilt node holds a snapshot it was sent (it takes none itself) and the log after it.
fn assert_rebuilt_by_install_snapshot(r: &serde_json::Value) {
    assert!(number(r, &["rebuild_s"]) > 0.0);
    assert_eq!(r["rebuilt_by_install_snapshot"], true, "{r:#}");
    assert!(
        number(r, &["rebuilt_snapshot_bytes"]) > 50000.0 * 100.0,
        "{r:#}"
    );
    assert!(number(r, &["rebuilt_log_records"]) > 0.0, "{r:#}");
}

#[test]
fn a_tiny_run_reports_every_phase_with_consistent_counts() {
    let r = tiny_run(&[]);
    let rounds = number(&r, &["snapshot_rounds"]);
    assert!(rounds >= 1.0, "{r:#}");
    assert_eq!(
        r["snapshot_write_ms"].as_array().unwrap().len() as f64,
        3.0 * rounds,
        "one write time per node and round"
    );
    assert!(
        number(&r, &["snapshot_bytes"]) > 50000.0 * 100.0,
        "the snapshot holds every loaded value"
    );
    // The loaded keys, and the probe's (at most 1,000 keys) written before the snapshot.
    let streamed = number(&r, &["stream_records"]);
    assert!((50000.0..=51000.0).contains(&streamed), "{r:#}");
    assert!(number(&r, &["append_baseline", "count"]) > 0.0);
    assert!(number(&r, &["append_during_snapshot", "count"]) > 0.0);
    // The wiped follower is replaced as the runbook says (a wiped voter restarted under its id
    // is refused): removed, then a fresh node 4 joins.
    assert_eq!(r["rebuild_mode"], "replace");
    assert_eq!(
        r["rebuilt_node"], 4,
        "the next id after the bootstrap three"
    );
    assert_rebuilt_by_install_snapshot(&r);
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    for flags in [&["--keys", "0"][..], &["--rate", "0"], &["--probe-s", "0"]] {
        let out = raftline()
            .args(["bench", "snapshot"])
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("must be"),
            "{flags:?}"
        );
    }
}
