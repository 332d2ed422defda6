//! Compaction an operator can steer, against real `raftline server` processes: `raftline
//! snapshot now` (one node, or all) and `--snapshot-interval-s`, with the size trigger off.

mod cluster_support;

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::{append_window, status, Cluster, Outcome, CLUSTER, DEADLINE};

/// Appends 20 keyless batches of 5 records through the leader.
fn load(cluster: &Cluster) {
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (1..=20).collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, 5, 4);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
}

/// `raftline snapshot now` with `args`; its stdout (it must succeed).
fn snapshot_now(cluster: &Cluster, args: &[&str]) -> String {
    let bootstrap: Vec<String> = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["snapshot", "now", "--cluster-id", CLUSTER])
        .args(["--bootstrap", &bootstrap.join(",")])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn snapshot_now_snapshots_the_node_asked_and_answers_once_it_is_durable() {
    let cluster = Cluster::start_with(3, "auto", &["--snapshot-every-mib", "0"]);
    load(&cluster);
    let out = snapshot_now(&cluster, &["--node", "2"]);
    let index: u64 = out
        .split("snapshot at index ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with("node 2 ("), "{out}");
    // Answered once durable: the node serves it now; the others took none.
    let served = status(cluster.node(2).client).unwrap().snapshot.unwrap();
    assert_eq!(served.index, index);
    assert!(served.cut_offset >= 100, "{served:?}");
    for id in [1, 3] {
        assert_eq!(status(cluster.node(id).client).unwrap().snapshot, None);
    }
    // Nothing applied since: the same snapshot, at once.
    let again = snapshot_now(&cluster, &["--node", "2"]);
    assert!(
        again.contains(&format!("snapshot at index {index},")),
        "{again}"
    );
    // Every node.
    let all = snapshot_now(&cluster, &[]);
    assert_eq!(all.matches("snapshot at index").count(), 3, "{all}");
    for n in &cluster.nodes {
        assert!(
            status(n.client).unwrap().snapshot.is_some(),
            "node {}",
            n.id
        );
    }
}

#[test]
fn the_interval_trigger_snapshots_every_node_without_the_size_trigger() {
    let cluster = Cluster::start_with(
        3,
        "auto",
        &["--snapshot-every-mib", "0", "--snapshot-interval-s", "1"],
    );
    load(&cluster);
    let deadline = Instant::now() + DEADLINE;
    for n in &cluster.nodes {
        while status(n.client).unwrap().snapshot.is_none() {
            assert!(Instant::now() < deadline, "node {} took no snapshot", n.id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
