//! `raftline bench cluster` as an operator runs it: a tiny real run against a local 3-node
//! cluster, its JSON report, and its clean-up. Never a timing threshold: only that the figures
//! exist and are consistent.

use std::fs;
use std::process::Command;

fn raftline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftline"))
}

/// On the repository's disk (ext4), not tmpfs: the disk probes need O_DIRECT alignment rules.
fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

#[test]
fn tiny_run_with_a_consumer_reports_consistent_figures_and_cleans_up() {
    let cwd = ext4_tempdir();
    let out = raftline()
        .args([
            "bench",
            "cluster",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "-P",
            "2",
            "-W",
            "2",
            "-C",
            "1",
            "--disk-probe-secs",
            "0.2",
            "--json",
        ])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    assert_eq!(report["setup"]["producers"], 2);
    assert_eq!(report["setup"]["window"], 2);
    assert_eq!(report["setup"]["ack"], "quorum");
    let records = number(&report, &["records"]);
    assert!(records > 0.0, "no record acknowledged: {report:#}");
    assert_eq!(
        records,
        number(&report, &["appends"]),
        "one record per append"
    );
    assert!(number(&report, &["records_per_s"]) > 0.0);
    let latency = |q: &str| number(&report, &["latency_us", q]);
    assert_eq!(
        latency("count"),
        records,
        "one latency per acknowledged append"
    );
    assert!(latency("us_p50") > 0.0);
    assert!(latency("us_p50") <= latency("us_p99"));
    assert!(latency("us_p99") <= latency("us_max"));

    let leader = &report["leader"];
    assert!(leader.is_object(), "leader figures missing: {report:#}");
    assert!(number(leader, &["fdatasyncs_per_s"]) > 0.0);
    assert!(number(leader, &["records_per_fdatasync"]) > 0.0);

    let consumers = &report["consumers"];
    assert_eq!(consumers["consumers"], 1);
    assert!(number(consumers, &["records"]) > 0.0, "{report:#}");
    let consumed = |q: &str| number(consumers, &["produce_to_consume_us", q]);
    assert!(
        consumed("count") > 0.0,
        "no produce->consume latency: {report:#}"
    );
    assert!(consumed("us_p50") <= consumed("us_max"));

    let disk = &report["disk"];
    assert!(number(disk, &["fdatasync_4k_per_s"]) > 0.0);
    assert!(number(disk, &["fdatasync_4k_commit_us", "us_p50"]) > 0.0);
    assert!(number(disk, &["sequential_mb_per_s"]) > 0.0);
    assert!(number(&report, &["durable_share_of_disk_per_replica"]) > 0.0);

    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "./data/bench-cluster (nodes' data, probe files) created for the run and removed"
    );
}

#[test]
fn zero_producers_is_refused_before_anything_starts() {
    let dir = ext4_tempdir();
    let out = raftline()
        .args(["bench", "cluster", "-P", "0", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--producers"), "{stderr}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}
