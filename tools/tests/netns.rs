//! Real `raftline server` processes, each in its own network namespace, linked through the
//! delaying relays of `raftline_bench::netns` (root only: CI runs as root). A minority
//! partition made with iptables inside a namespace, and round trips the nodes measure through
//! delayed links.

mod cluster_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{append_window, http_get, read_all, status, Outcome, CLUSTER, DEADLINE};
use raftline_bench::local_cluster::{Launch, LocalCluster, Placement, NODES};
use raftline_bench::netns::{EnteredNs, LinkDelays, Scenario, Topology};
use raftline_netio::client_proto::NodeRole;

/// A cluster in namespaces; the calling thread stays in the client namespace while it lives.
/// Fields drop in order: nodes first, then the thread leaves the namespace, then the topology.
struct NetnsCluster {
    cluster: LocalCluster,
    _client: EnteredNs,
    topology: Arc<Topology>,
    dir: tempfile::TempDir,
}

impl NetnsCluster {
    fn start(delays: LinkDelays, server_args: &[&str]) -> NetnsCluster {
        let seed = std::process::id() as u64;
        println!("loss seed {seed}");
        let topology = Arc::new(Topology::create(NODES, delays, seed).expect("namespaces (root)"));
        let client = topology.enter_client().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("raftline-netns")
            .tempdir_in("/tmp")
            .unwrap();
        let args: Vec<String> = server_args.iter().map(|a| a.to_string()).collect();
        let cluster = Launch::new(dir.path(), Placement::Netns(topology.clone()), CLUSTER)
            .server_args(&args)
            .exe(Path::new(env!("CARGO_BIN_EXE_raftline")))
            .start()
            .unwrap();
        NetnsCluster {
            cluster,
            _client: client,
            topology,
            dir,
        }
    }

    fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (1..=NODES)
            .map(|id| format!("--- node {id} ---\n{}", self.log_of(id)))
            .collect()
    }

    /// Polls until one of `among` leads and the others of `among` follow it.
    fn leader_among(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let statuses: Vec<_> = among
                .iter()
                .map(|&id| status(self.cluster.client_addr(id)).ok())
                .collect();
            let leader = statuses
                .iter()
                .flatten()
                .find(|s| s.role == NodeRole::Leader)
                .map(|s| s.node_id);
            if let Some(leader) = leader.filter(|&l| {
                statuses
                    .iter()
                    .all(|s| s.as_ref().is_some_and(|s| s.leader_id == Some(l)))
            }) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no leader among {among:?}: {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Acknowledged tag → its offset; panics on any append that was not acknowledged.
fn all_acked(outcomes: &BTreeMap<u64, Outcome>, tags: &[u64]) -> BTreeMap<u64, u64> {
    assert_eq!(
        outcomes.len(),
        tags.len(),
        "every append answered: {outcomes:?}"
    );
    outcomes
        .iter()
        .map(|(&tag, outcome)| match outcome {
            Outcome::Acked { base, .. } => (tag, *base),
            other => panic!("append {tag} not acknowledged: {other:?}"),
        })
        .collect()
}

#[test]
fn a_minority_partition_refuses_writes_while_the_majority_commits_and_all_converge_after() {
    let c = NetnsCluster::start(
        Scenario::Lan.delays(NODES, 0.0),
        &["--append-timeout-ms", "2000"],
    );
    let old = c.leader_among(&[1, 2, 3]);
    let majority: Vec<u64> = (1..=NODES).filter(|&id| id != old).collect();
    let before: Vec<u64> = (1..=20).collect();
    let mut acked = all_acked(
        &append_window(c.cluster.client_addr(old), &before, 1, 4),
        &before,
    );

    // The leader alone on its side: DROP its peer traffic inside its namespace.
    c.topology.partition(old).unwrap();
    let minority_tags: Vec<u64> = (100..=103).collect();
    let minority = append_window(c.cluster.client_addr(old), &minority_tags, 1, 4);
    assert_eq!(minority.len(), minority_tags.len(), "{minority:?}");
    for (tag, outcome) in &minority {
        assert!(
            !matches!(outcome, Outcome::Acked { .. }),
            "the cut-off old leader acknowledged append {tag}: {minority:?}\n{}",
            c.logs()
        );
    }
    let new = c.leader_among(&majority);
    let during: Vec<u64> = (200..=239).collect();
    acked.extend(all_acked(
        &append_window(c.cluster.client_addr(new), &during, 1, 4),
        &during,
    ));
    // The old leader noticed it lost its quorum (check-quorum) and refuses writes outright.
    let deadline = Instant::now() + DEADLINE;
    while status(c.cluster.client_addr(old)).unwrap().role == NodeRole::Leader {
        assert!(
            Instant::now() < deadline,
            "the cut-off leader never stepped down"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = append_window(c.cluster.client_addr(old), &[300], 1, 1);
    assert_eq!(refused.get(&300), Some(&Outcome::Rejected), "{refused:?}");

    c.topology.heal(old).unwrap();
    let after: Vec<u64> = (400..=409).collect();
    let leader = c.leader_among(&[1, 2, 3]);
    acked.extend(all_acked(
        &append_window(c.cluster.client_addr(leader), &after, 1, 4),
        &after,
    ));
    // Every node converges on one log holding every acknowledged record at its offset.
    let end = status(c.cluster.client_addr(leader))
        .unwrap()
        .log_end_offset;
    let deadline = Instant::now() + DEADLINE;
    for id in 1..=NODES {
        while status(c.cluster.client_addr(id)).map_or(true, |s| s.log_end_offset < end) {
            assert!(
                Instant::now() < deadline,
                "node {id} did not catch up\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let logs: Vec<Vec<(u64, u64)>> = (1..=NODES)
        .map(|id| read_all(c.cluster.client_addr(id), end))
        .collect();
    for (id, log) in (1..=NODES).zip(&logs) {
        assert_eq!(log, &logs[0], "node {id}'s log differs from node 1's");
    }
    let stored: BTreeMap<u64, u64> = logs[0].iter().copied().collect();
    for (tag, offset) in &acked {
        assert_eq!(
            stored.get(offset),
            Some(tag),
            "acknowledged record {tag} is not at offset {offset}"
        );
    }
    let tags: Vec<u64> = logs[0].iter().map(|&(_, tag)| tag).collect();
    assert!(!tags.contains(&300), "a refused append is in the log");
}

#[test]
fn the_leader_measures_peer_round_trips_and_warns_when_they_outgrow_the_election_timeout() {
    // 60 ms round trips (30 ms each way) against the default 250 ms election timeout, whose
    // fifth is 50 ms: the leader must see the round trips and say the timeout is too short.
    let delays = LinkDelays::new(NODES, 0.0, |_, _| Duration::from_millis(30));
    let c = NetnsCluster::start(delays, &[]);
    let leader = c.leader_among(&[1, 2, 3]);
    let deadline = Instant::now() + DEADLINE;
    while !c
        .log_of(leader)
        .contains("peer round-trip p99 exceeds a fifth of the election timeout")
    {
        assert!(
            Instant::now() < deadline,
            "no round-trip warning from leader {leader}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = http_get(c.cluster.metrics_addr(leader), "/metrics");
    for peer in (1..=NODES).filter(|&id| id != leader) {
        let series = |suffix: &str| -> f64 {
            let name = format!("raftline_network_peer_round_trip_time_seconds{suffix}");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
        };
        // No round trip can beat the relays' 2 x 30 ms; at least a window of them was taken.
        let under_51ms = series(&format!("_bucket{{To=\"{peer}\",le=\"0.0512\"}}"));
        let count = series(&format!("_count{{To=\"{peer}\"}}"));
        assert_eq!(under_51ms, 0.0, "a round trip to {peer} under 51.2 ms");
        assert!(count >= 100.0, "only {count} round trips to {peer}");
    }
    assert!(
        metrics.contains("raftline_election_timeout_seconds 0.25"),
        "{metrics}"
    );
}
