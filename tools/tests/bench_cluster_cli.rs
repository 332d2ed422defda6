//! `raftline bench cluster` as an operator runs it: a tiny real run against a local 3-node
//! cluster, its JSON report, and its clean-up. Never a timing threshold: only that the figures
//! exist and are consistent.

mod cluster_support;

use std::fs;
use std::process::Command;

use cluster_support::number;

fn raftline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftline"))
}

/// On the repository's disk (ext4), not tmpfs: the disk probes need O_DIRECT alignment rules.
fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
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

    assert!(
        number(leader, &["shipped_to_followers_mb_per_s"]) > 0.0,
        "the leader ships every record to two followers: {report:#}"
    );

    let generator = &report["generator"];
    assert_eq!(generator["threads"], 1);
    assert_eq!(generator["connections"], 2);
    assert!(number(generator, &["cpu_percent"]) >= 0.0);
    let cpu = &report["cpu"];
    assert!(!cpu["cores"].as_array().unwrap().is_empty());
    let processes = cpu["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 4, "three nodes and the bench: {cpu:#}");
    assert!(
        processes[..3].iter().all(|p| p["threads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "raftline-raft")),
        "every node's raft thread is accounted: {cpu:#}"
    );

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

/// Runs `raftline bench cluster ARGS --json` in a fresh directory; returns the report.
fn run_json(cwd: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = raftline()
        .args(["bench", "cluster", "--disk-probe-secs", "0.2", "--json"])
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn sweep_measures_every_grid_point_and_draws_the_chart() {
    let cwd = ext4_tempdir();
    let svg = cwd.path().join("sweep.svg");
    let report = run_json(
        cwd.path(),
        &[
            "--sweep",
            "--sweep-producers",
            "1,3",
            "--sweep-windows",
            "2",
            "--sweep-point-secs",
            "1",
            "--warmup",
            "0.2",
            "--svg",
            svg.to_str().unwrap(),
        ],
    );
    let points = report["sweep"].as_array().expect("sweep points");
    assert_eq!(points.len(), 2, "{report:#}");
    for (point, producers) in points.iter().zip([1, 3]) {
        assert_eq!(point["producers"], producers);
        assert_eq!(point["window"], 2);
        assert_eq!(point["generator"]["connections"], producers);
        let records = number(point, &["records"]);
        assert_eq!(number(point, &["latency_us", "count"]), records);
        assert!(number(point, &["elapsed_s"]) > 0.0);
    }
    // Not per point: on a starved 2-core machine a short point may see an election and commit
    // nothing; the sweep as a whole must have measured something.
    let total: f64 = points.iter().map(|p| number(p, &["records"])).sum();
    assert!(
        total > 0.0,
        "no record acknowledged in any point: {report:#}"
    );
    assert!(
        report["records"].is_null(),
        "no single-run figures in a sweep"
    );
    let chart = fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg"), "{chart}");
    for label in ["P=1", "P=3", "W=2: p50", "W=2: p99"] {
        assert!(chart.contains(label), "{label} missing from the chart");
    }
    fs::remove_file(&svg).unwrap();
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
fn tail_log_reads_every_prefilled_offset_once_in_order() {
    let cwd = ext4_tempdir();
    let report = run_json(cwd.path(), &["--tail-log", "30000", "-V", "64"]);
    let tail = &report["tail"];
    assert_eq!(tail["records_in_log"], 30000, "{report:#}");
    assert_eq!(tail["records_read"], 30000);
    let batch_records = number(tail, &["prefill_batch_records"]);
    assert_eq!(
        number(tail, &["batches_read"]),
        (30000.0 / batch_records).ceil(),
        "one batch per prefill append"
    );
    assert!(number(tail, &["read_records_per_s"]) > 0.0);
    assert!(number(tail, &["prefill_records_per_s"]) > 0.0);
    assert!(report["records"].is_null());
}

#[test]
fn fixed_rate_run_times_appends_from_their_intended_send_times() {
    let cwd = ext4_tempdir();
    let report = run_json(
        cwd.path(),
        &[
            "-P",
            "3",
            "-W",
            "2",
            "--rate",
            "300",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    assert_eq!(report["setup"]["rate_appends_per_s"], 300.0);
    let records = number(&report, &["records"]);
    assert!(records > 0.0, "{report:#}");
    assert_eq!(number(&report, &["latency_us", "count"]), records);
    assert_eq!(report["generator"]["connections"], 3);
}

#[test]
fn svg_without_sweep_is_refused() {
    let dir = ext4_tempdir();
    let out = raftline()
        .args(["bench", "cluster", "--svg", "x.svg", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--sweep"), "{stderr}");
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

#[test]
fn null_node_run_answers_every_append_and_is_marked_as_such() {
    let cwd = ext4_tempdir();
    let report = run_json(
        cwd.path(),
        &[
            "--null-node",
            "-P",
            "3",
            "-W",
            "2",
            "-B",
            "5",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
        ],
    );
    assert_eq!(report["setup"]["cluster"], "null-node");
    let appends = number(&report, &["appends"]);
    assert!(appends > 0.0, "no append answered: {report:#}");
    assert_eq!(number(&report, &["records"]), 5.0 * appends);
    assert_eq!(report["records_refused"], 0);
    assert!(
        report["durable_share_of_disk_per_replica"].is_null(),
        "a null node makes nothing durable: {report:#}"
    );
    let watched: Vec<&str> = report["cpu"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert!(watched.contains(&"NULL NODE"), "{watched:?}");
    assert_eq!(fs::read_dir(cwd.path()).unwrap().count(), 0);
}

#[test]
fn null_node_with_a_cluster_option_is_refused() {
    let dir = ext4_tempdir();
    let out = raftline()
        .args([
            "bench",
            "cluster",
            "--null-node",
            "--tail-log",
            "10",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--null-node"), "{stderr}");
}
