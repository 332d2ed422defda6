//! `--emulate-disk` as an operator meets it: the server's flag, its marks in the start-up output,
//! /metrics and the benchmarks' JSON, and a tiny `raftline bench profiles` run. Never a timing
//! threshold: only the structure of the figures and that group commit grouped.

mod cluster_support;

use std::process::Command;

use cluster_support::{http_get, Cluster};

fn raftline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftline"))
}

/// On the repository's disk (ext4), not tmpfs: the disk probe needs O_DIRECT alignment rules.
fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn an_emulating_server_says_so_at_start_and_in_its_metrics() {
    let cluster = Cluster::start_with(1, "auto", &["--emulate-disk", "nvme"]);
    cluster.wait_leader();
    let metrics = http_get(cluster.node(1).metrics, "/metrics");
    assert!(
        metrics.contains("raftline_emulated_disk{profile=\"nvme\"} 1"),
        "{metrics}"
    );
    let log = cluster.log_of(1);
    assert!(log.contains("EMULATED DISK (nvme profile)"), "{log}");
}

#[test]
fn an_unknown_profile_and_emulation_of_a_running_cluster_are_refused_clearly() {
    let out = raftline()
        .args(["server", "--emulate-disk", "floppy"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("floppy") && stderr.contains("hdd, sata, nvme"),
        "{stderr}"
    );
    let out = raftline()
        .args([
            "bench",
            "cluster",
            "--emulate-disk",
            "hdd",
            "--bootstrap",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--emulate-disk configures the local"),
        "{stderr}"
    );
}

#[test]
fn bench_cluster_marks_an_emulated_run_in_its_json_and_text() {
    let cwd = ext4_tempdir();
    let run = |json: bool| {
        let mut cmd = raftline();
        cmd.args([
            "bench",
            "cluster",
            "--emulate-disk",
            "nvme",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--disk-probe-secs",
            "0.1",
        ]);
        if json {
            cmd.arg("--json");
        }
        cmd.current_dir(cwd.path()).output().unwrap()
    };
    let report = json_of(&run(true));
    assert_eq!(report["setup"]["emulated_disk"]["profile"], "nvme");
    assert_eq!(report["setup"]["emulated_disk"]["fsync_latency_us"], 200);
    let text = run(false);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.starts_with("EMULATED DISK (nvme profile)"),
        "{stdout}"
    );
}

#[test]
fn a_short_nvme_profile_run_prints_both_loads_and_group_commit_groups() {
    let cwd = ext4_tempdir();
    let out = raftline()
        .args([
            "bench",
            "profiles",
            "--profiles",
            "nvme",
            "-P",
            "4",
            "-W",
            "8",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--disk-probe-secs",
            "0.1",
            "--json",
        ])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let report = json_of(&out);
    assert!(
        report["emulation"]
            .as_str()
            .unwrap()
            .contains("EMULATED DISKS (nvme)"),
        "{report:#}"
    );
    let rows = report["profiles"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report:#}");
    let row = &rows[0];
    assert_eq!(row["profile"], "nvme");
    assert_eq!(row["emulated_disk"]["profile"], "nvme");
    assert_eq!(row["reference_unbatched_entries_per_s"], "~2,000-10,000");
    let (unbatched, grouped) = (&row["unbatched"], &row["group_committed"]);
    assert_eq!(
        (&unbatched["producers"], &unbatched["window"]),
        (&1.into(), &1.into())
    );
    assert_eq!(
        (&grouped["producers"], &grouped["window"]),
        (&4.into(), &8.into())
    );
    for point in [unbatched, grouped] {
        for key in [
            "entries_per_s",
            "records_per_s",
            "latency_us_p50",
            "latency_us_p99",
            "fdatasyncs_per_s",
            "records_per_fdatasync",
        ] {
            assert!(point[key].as_f64().unwrap() >= 0.0, "{key}: {report:#}");
        }
    }
    assert!(
        grouped["entries_per_s"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(
        grouped["records_per_fdatasync"].as_f64().unwrap() > 1.0,
        "32 appends in flight behind a held flush were not grouped: {report:#}"
    );
    let unbatched_entries = unbatched["entries_per_s"].as_f64().unwrap();
    if unbatched_entries > 0.0 {
        let expected = grouped["entries_per_s"].as_f64().unwrap() / unbatched_entries;
        let gain = row["group_commit_gain"].as_f64().unwrap();
        assert!((gain - expected).abs() < 1e-9 * expected, "{report:#}");
    }
    assert!(report["disk"]["fdatasync_4k_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["load_at_start"]["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "the run left files behind"
    );
}
