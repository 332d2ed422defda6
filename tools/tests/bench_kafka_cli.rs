//! `raftline bench kafka` as an operator runs it, tiny: a real local 3-node cluster with Kafka
//! listeners, the confluent-kafka producer and kcat beside the native client, its JSON report.
//! Never a timing threshold: only that every path moved every record and the report agrees
//! with itself.

mod cluster_support;

use std::process::Command;

use cluster_support::number;

#[test]
fn every_path_moves_every_record_and_the_report_agrees_with_itself() {
    let cwd = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["bench", "kafka", "-N", "500", "-V", "40", "--json"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let holds = report["goal_holds"] == true;
    assert_eq!(
        out.status.code(),
        Some(if holds { 0 } else { 2 }),
        "{stderr}"
    );
    for path in ["native_produce", "kafka_produce"] {
        let p = &report[path];
        assert_eq!(number(p, &["records"]), 500.0, "{path}: {p:#}");
        assert_eq!(number(p, &["latency", "count"]), 500.0, "{path}");
        let per_s = number(p, &["records_per_s"]);
        assert!((per_s - 500.0 / number(p, &["seconds"])).abs() < 1e-6 * per_s);
        assert!(number(p, &["latency", "us_p50"]) <= number(p, &["latency", "us_p99"]));
    }
    let consume = report["consume"].as_array().expect("consume");
    assert_eq!(consume.len(), 4, "{report:#}");
    for c in consume {
        assert_eq!(number(c, &["records"]), 500.0, "{c:#}");
    }
    let ratio = number(&report, &["produce_ratio"]);
    let expected = number(&report, &["kafka_produce", "records_per_s"])
        / number(&report, &["native_produce", "records_per_s"]);
    assert!((ratio - expected).abs() < 1e-9 * expected);
    assert!(
        std::fs::read_dir(cwd.path().join("data/bench-kafka"))
            .map_or(true, |mut d| d.next().is_none()),
        "the run directory is removed"
    );
}
