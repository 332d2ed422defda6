//! `raftline bench kafka` as an operator runs it, tiny: a real local 3-node cluster with Kafka
//! listeners, the confluent-kafka producer, kcat -P and kcat beside the native client, its JSON
//! report (figures, batches and CPU seconds of every path).
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
    for path in ["native_produce", "kafka_produce", "kcat_produce"] {
        let p = &report[path];
        assert_eq!(number(p, &["records"]), 500.0, "{path}: {p:#}");
        let per_s = number(p, &["records_per_s"]);
        assert!((per_s - 500.0 / number(p, &["seconds"])).abs() < 1e-6 * per_s);
        // The leader's batch count agrees with the records (a warm-up record is outside it).
        let batches = number(p, &["batches", "count"]);
        assert!(batches >= 1.0, "{path}: {p:#}");
        assert!((number(p, &["batches", "records_per_batch"]) * batches - 500.0).abs() < 1e-6);
        assert_cpu(&p["cpu"], path);
    }
    for path in ["native_produce", "kafka_produce"] {
        let p = &report[path];
        assert_eq!(number(p, &["latency", "count"]), 500.0, "{path}");
        assert!(number(p, &["latency", "us_p50"]) <= number(p, &["latency", "us_p99"]));
    }
    assert!(
        report["kcat_produce"]["latency"].is_null(),
        "kcat reports none"
    );
    // The three producers' records follow one another (each after its warm-up record).
    let first = |path: &str| number(&report[path], &["first_offset"]);
    assert!(first("native_produce") < first("kafka_produce"));
    assert!(first("kafka_produce") + 500.0 < first("kcat_produce"));
    let consume = report["consume"].as_array().expect("consume");
    assert_eq!(consume.len(), 4, "{report:#}");
    for c in consume {
        assert_eq!(number(c, &["records"]), 500.0, "{c:#}");
        assert_cpu(&c["cpu"], "a consumer");
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

/// A path's CPU figures: the client's and each of the three nodes', none negative.
fn assert_cpu(cpu: &serde_json::Value, path: &str) {
    assert!(number(cpu, &["client_seconds"]) >= 0.0, "{path}: {cpu:#}");
    let nodes = cpu["node_seconds"].as_array().expect("node_seconds");
    assert_eq!(nodes.len(), 3, "{path}: {cpu:#}");
    assert!(
        nodes.iter().all(|s| s.as_f64().is_some_and(|s| s >= 0.0)),
        "{path}: {cpu:#}"
    );
}
