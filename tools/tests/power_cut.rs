//! Power cuts and disk faults under real `raftline server` processes (issue 14). Every node's
//! data directory lives on its own `raftline-faultfs` mount, which forgets whatever was not made
//! durable (file data since its last fsync, names since their directory's last fsync, stricter
//! than ext4) when the test cuts its power. While a producer appends without pause, the test
//! kills nodes with SIGKILL, cuts their power (plain or torn, seeded) and restarts them. Then
//! every acknowledged record must be at its acknowledged offset on every node, the nodes must
//! agree byte for byte, no offset may have been handed out twice, and the cluster must
//! acknowledge new appends again with no manual step.
//!
//! `RAFTLINE_POWER_CUT_SEED=N` replays a run. Each test prints its seed.
//!
//! Other disk faults (fsync errors, full and stalled disks) are in `disk_faults.rs`.
//!
//! The checker is shown to see loss: with every disk lying about fsync, a whole-cluster cut must
//! be reported as lost records (`a_lying_disk_is_caught_losing_acknowledged_records`).

mod cluster_support;

use std::time::{Duration, Instant};

use cluster_support::acks::{check, settled_end, Ledger};
use cluster_support::producer::{Producer, RECORDS};
use cluster_support::{append_window, http_get, status, Cluster, Outcome, DEADLINE};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Flags for every node: an append that cannot commit (no quorum while nodes are down) is
/// answered within 2 s instead of 10, so the producer moves on to the next leader sooner.
const FLAGS: &[&str] = &["--append-timeout-ms", "2000"];

/// The run's seed: `RAFTLINE_POWER_CUT_SEED` or the clock; printed so a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("RAFTLINE_POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: RAFTLINE_POWER_CUT_SEED={seed}");
    seed
}

/// Which nodes lose power, and how.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Leader,
    Follower,
    /// The leader, then (once it is back and caught up) a follower.
    TwoInSequence,
    /// All three at once.
    Everyone,
}

/// What a run found.
struct Findings {
    acked: usize,
    cuts: u64,
    violations: Vec<String>,
}

/// Kills `ids`, cuts their power (torn with a seed from `rng` when `torn`) and restarts them.
fn kill_cut_restart(cluster: &mut Cluster, ids: &[u64], torn: bool, rng: &mut ChaCha8Rng) {
    for &id in ids {
        cluster.kill(id);
    }
    for &id in ids {
        let cut_seed = torn.then(|| rng.gen::<u64>());
        let report = cluster.faultfs(id).power_cut(cut_seed).expect("power cut");
        eprintln!("node {id}: power cut {report:?}");
    }
    for &id in ids {
        cluster.spawn(id);
    }
}

/// Starts a cluster on fault mounts (lying about fsync when `lie`), produces, cuts the power of
/// the nodes `cut` names, and checks what survived once the cluster acknowledges appends again.
fn run(test: &str, cut: Cut, torn: bool, lie: bool) -> Findings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed(test));
    let mut cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    for id in 1..=3 {
        cluster.faultfs(id).lie_fsync(lie).unwrap();
    }
    let leader = cluster.wait_leader();
    let clients = cluster.nodes.iter().map(|n| n.client).collect();
    let producer = Producer::start(clients);
    let mut cuts = 0;
    let mut violations = Vec::new();
    let follower_of = |leader: u64, rng: &mut ChaCha8Rng| {
        let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        others[rng.gen_range(0..others.len())]
    };
    let mut phase = |cluster: &mut Cluster, ids: &[u64], rng: &mut ChaCha8Rng| {
        let before = rng.gen_range(10..40);
        producer.await_more(before)?;
        kill_cut_restart(cluster, ids, torn, rng);
        cuts += ids.len() as u64;
        // Available again: appends are acknowledged with no step but the restart.
        producer.await_more(10)
    };
    let outcome = match cut {
        Cut::Leader => phase(&mut cluster, &[leader], &mut rng),
        Cut::Follower => {
            let f = follower_of(leader, &mut rng);
            phase(&mut cluster, &[f], &mut rng)
        }
        Cut::TwoInSequence => phase(&mut cluster, &[leader], &mut rng).and_then(|()| {
            // The first victim must hold the log again before the second loses power, or
            // a majority would be missing what the first lost.
            settled_end(&cluster)?;
            let leader = cluster.wait_leader();
            let f = follower_of(leader, &mut rng);
            phase(&mut cluster, &[f], &mut rng)
        }),
        Cut::Everyone => phase(&mut cluster, &[1, 2, 3], &mut rng),
    };
    let ledger = producer.stop();
    if let Err(e) = outcome {
        violations.push(e);
    }
    violations.extend(check(&cluster, &ledger, RECORDS));
    if !violations.is_empty() {
        eprintln!("{}", cluster.logs());
    }
    Findings {
        acked: ledger.len(),
        cuts,
        violations,
    }
}

/// Runs the scenario on honest disks and asserts no promise was broken.
fn assert_survives(test: &str, cut: Cut, torn: bool) {
    let found = run(test, cut, torn, false);
    eprintln!(
        "{test}: {} power cuts, {} appends acknowledged",
        found.cuts, found.acked
    );
    assert!(
        found.violations.is_empty(),
        "{test}: {:#?}",
        found.violations
    );
}

#[test]
fn power_cut_of_the_leader_loses_no_acknowledged_record() {
    assert_survives("leader", Cut::Leader, false);
}

#[test]
fn torn_power_cut_of_the_leader_loses_no_acknowledged_record() {
    assert_survives("leader-torn", Cut::Leader, true);
}

#[test]
fn torn_power_cut_of_a_follower_loses_no_acknowledged_record() {
    assert_survives("follower-torn", Cut::Follower, true);
}

#[test]
fn torn_power_cuts_of_two_nodes_in_sequence_lose_no_acknowledged_record() {
    assert_survives("two-in-sequence-torn", Cut::TwoInSequence, true);
}

#[test]
fn power_cut_of_the_whole_cluster_loses_no_acknowledged_record() {
    assert_survives("everyone", Cut::Everyone, false);
}

#[test]
fn torn_power_cut_of_the_whole_cluster_loses_no_acknowledged_record() {
    assert_survives("everyone-torn", Cut::Everyone, true);
}

/// The mutation: disks that report fsyncs done without making anything durable. A whole-cluster
/// cut must then show up as acknowledged records lost, or the checker above proves nothing.
#[test]
fn a_lying_disk_is_caught_losing_acknowledged_records() {
    let found = run("lying-disk", Cut::Everyone, false, true);
    assert!(found.acked > 0);
    assert!(
        found.violations.iter().any(|v| v.contains("records lost")),
        "lying disks went unnoticed: {:#?}",
        found.violations
    );
}

/// The index of the newest snapshot node `id` exports (0 while it has none).
fn snapshot_index(cluster: &Cluster, id: u64) -> u64 {
    http_get(cluster.node(id).metrics, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("raftline_snapshot_index "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Every name a node relies on (data, log and snapshots directories, identity, hard state,
/// segments, snapshot files) must be durable by the time it is relied on: the fault filesystem
/// forgets names whose directory was not fsynced. The leader and a follower snapshot, drop their
/// log prefix and lose power; they must come back with their snapshots (before the fix the
/// snapshots directory itself vanished, and with it every key below the log start).
#[test]
fn nodes_that_snapshotted_and_truncated_keep_their_state_through_a_power_cut() {
    let mut rng = ChaCha8Rng::seed_from_u64(seed("snapshot"));
    let mut flags = FLAGS.to_vec();
    flags.extend(["--snapshot-every-mib", "1", "--retain-mib", "0"]);
    let mut cluster = Cluster::start_on_faultfs(3, "auto", &flags);
    let leader = cluster.wait_leader();
    // 300 batches of 1000 small records: ~8 MiB of log, more than one 4 MiB segment to drop.
    const BIG: u64 = 1000;
    let tags: Vec<u64> = (0..300).collect();
    let mut ledger = Ledger::new();
    for (tag, outcome) in append_window(cluster.node(leader).client, &tags, BIG, 16) {
        match outcome {
            Outcome::Acked { base, last } => ledger.insert(tag, (base, last)),
            other => panic!("append {tag}: {other:?}"),
        };
    }
    let deadline = Instant::now() + DEADLINE;
    while !(1..=3).all(|id| {
        status(cluster.node(id).client).is_ok_and(|s| s.log_start_offset > 0)
            && snapshot_index(&cluster, id) > 0
    }) {
        assert!(Instant::now() < deadline, "the nodes never compacted");
        std::thread::sleep(Duration::from_millis(20));
    }
    let follower = *[1, 2, 3]
        .iter()
        .filter(|&&id| id != leader)
        .nth(rng.gen_range(0..2))
        .unwrap();
    let victims = [leader, follower];
    let before: Vec<u64> = victims
        .iter()
        .map(|&id| snapshot_index(&cluster, id))
        .collect();
    kill_cut_restart(&mut cluster, &victims, false, &mut rng);
    for (&id, &index) in victims.iter().zip(&before) {
        let deadline = Instant::now() + DEADLINE;
        while status(cluster.node(id).client).is_err() || snapshot_index(&cluster, id) < index {
            assert!(
                Instant::now() < deadline,
                "node {id} came back without its snapshot at {index}\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Available, and every acknowledged record still held above the log start.
    let leader = cluster.wait_leader();
    let tag = tags.len() as u64;
    match append_window(cluster.node(leader).client, &[tag], BIG, 1).get(&tag) {
        Some(&Outcome::Acked { base, last }) => ledger.insert(tag, (base, last)),
        other => panic!("append after the cut: {other:?}\n{}", cluster.logs()),
    };
    let violations = check(&cluster, &ledger, BIG);
    assert!(violations.is_empty(), "{violations:#?}\n{}", cluster.logs());
}
