//! Disks that fail, fill up, stall or slow down, under real `raftline server` processes whose
//! data directories each live on their own `raftline-faultfs` mount (issue 14, items 4 and 5).
//! A producer appends without pause while one node's (or every node's) disk misbehaves; then
//! every acknowledged record must be at its acknowledged offset on every node, with no offset
//! handed out twice (`cluster_support::acks::check`).
//!
//! - a frozen disk, and an fsync slower than the stall bound, under the leader: leadership moves
//!   to a follower and writes go on through it;
//! - a full disk on the leader (leadership moves to a follower with room), on a follower (the
//!   leader commits with the other and shows the follower's acknowledgements ageing), and on
//!   every node (appends refused with the typed error naming the disk, reads served, writes
//!   resuming by themselves once less than a segment is freed);
//! - an fsync EIO on the leader: the node fails stop with the error and recovers on restart.
//!
//! The nodes run 1 MiB segments so that a disk fills at a roll-over within a few hundred appends.

mod cluster_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_support::acks::{check, settled_end, Ledger};
use cluster_support::producer::{Producer, RECORDS};
use cluster_support::{
    read_batches, status, tagged_batch, tags_in, Cluster, Conn, CLUSTER, DEADLINE,
};
use raftline_netio::client_proto::{AckMode, ClientError, NodeRole, NodeStatus, Request, Response};

/// Every node: appends that cannot commit are answered within 2 s, and 1 MiB segments (with
/// batches of at most a quarter of one).
const FLAGS: &[&str] = &[
    "--append-timeout-ms",
    "2000",
    "--segment-mib",
    "1",
    "--batch-kib-max",
    "256",
];

/// How long the test's producer waits for a node before trying the next (a node on a frozen
/// disk answers nothing).
const PRODUCER_PATIENCE: Duration = Duration::from_secs(2);

/// Polls `f` until it returns `Some`, failing with `what` and the nodes' logs after
/// [`DEADLINE`].
fn until<T>(cluster: &Cluster, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn clients(cluster: &Cluster) -> Vec<std::net::SocketAddr> {
    cluster.nodes.iter().map(|n| n.client).collect()
}

/// A leader of a term above `after_term`, not `not`, that every other node agrees on.
fn new_leader(cluster: &Cluster, not: u64, after_term: u64) -> Option<u64> {
    let others: Vec<NodeStatus> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != not)
        .map(|n| status(n.client).ok())
        .collect::<Option<_>>()?;
    let leader = others
        .iter()
        .find(|s| s.role == NodeRole::Leader && s.term > after_term)?
        .node_id;
    others
        .iter()
        .all(|s| s.leader_id == Some(leader))
        .then_some(leader)
}

/// Whether node `id`'s process is still running.
fn running(cluster: &mut Cluster, id: u64) -> bool {
    let child = cluster.nodes[id as usize - 1]
        .child
        .as_mut()
        .expect("spawned");
    child.try_wait().expect("try_wait").is_none()
}

/// One append of tag `tag` straight to the node that says it leads: that node and its answer.
fn append_to_leader(cluster: &Cluster, tag: u64) -> Option<(u64, Response)> {
    let leader = cluster
        .nodes
        .iter()
        .find(|n| status(n.client).is_ok_and(|s| s.role == NodeRole::Leader))?;
    let mut conn = Conn::connect(leader.client).ok()?;
    conn.send(&Request::Append {
        request_id: tag,
        ack: AckMode::Quorum,
        batch: tagged_batch(tag, RECORDS),
    })
    .ok()?;
    Some((leader.id, conn.recv().ok()?))
}

/// Asserts that node `id` serves every record of `ledger` (all below `end`) at its offset.
fn assert_serves(cluster: &Cluster, id: u64, ledger: &Ledger, end: u64) {
    let batches = read_batches(cluster.node(id).client, 0, end);
    let held: BTreeMap<u64, u64> = tags_in(&batches, 0, end).into_iter().collect();
    for (&tag, &(base, last)) in ledger {
        for offset in base..=last {
            assert_eq!(
                held.get(&offset),
                Some(&tag),
                "node {id} does not serve tag {tag} at offset {offset}"
            );
        }
    }
}

fn assert_nothing_lost(cluster: &Cluster, ledger: &Ledger, what: &str) {
    let violations = check(cluster, ledger, RECORDS);
    eprintln!("{what}: {} appends acknowledged", ledger.len());
    assert!(violations.is_empty(), "{violations:#?}\n{}", cluster.logs());
}

/// The leader's disk freezes (every filesystem call blocks, like fsfreeze): after the stall
/// bound (the default, 4 election timeouts) it hands leadership to a follower, the producer's
/// writes go on through the new leader, and once the disk thaws the old leader follows it.
#[test]
fn a_frozen_disk_under_the_leader_moves_writes_to_a_new_leader() {
    let cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let producer = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 0);
    producer.await_more(20).unwrap();
    cluster.faultfs(leader).freeze(true).unwrap();
    assert!(
        cluster.faultfs(leader).wait_frozen(1, DEADLINE).unwrap(),
        "nothing of the leader blocked on the frozen disk"
    );
    let new = until(&cluster, "a new leader", || {
        new_leader(&cluster, leader, term)
    });
    producer.await_more(20).unwrap();
    eprintln!("leader {leader} frozen: node {new} leads, writes go on");
    cluster.faultfs(leader).freeze(false).unwrap();
    let back = until(&cluster, "the old leader following again", || {
        status(cluster.node(leader).client)
            .ok()
            .filter(|s| s.role == NodeRole::Follower && s.leader_id.is_some() && !s.disk_stalled)
    });
    producer.await_more(20).unwrap();
    let ledger = producer.stop();
    let log = cluster.log_of(leader);
    assert!(
        log.contains("disk stalled: handing leadership over"),
        "the frozen leader handed over (not merely lost its followers):\n{log}"
    );
    eprintln!("old leader after the thaw: {back:?}");
    assert_nothing_lost(&cluster, &ledger, "frozen leader");
}

/// Every fsync of the leader takes 800 ms, longer than its stall bound (500 ms): it hands
/// leadership to a follower and, slow as it stays, does not take it back; writes go on through
/// the new leader.
#[test]
fn a_slow_fsync_under_the_leader_moves_writes_to_a_new_leader() {
    let flags: Vec<&str> = FLAGS
        .iter()
        .copied()
        .chain(["--disk-stall-ms", "500"])
        .collect();
    let cluster = Cluster::start_on_faultfs(3, "auto", &flags);
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let producer = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 0);
    producer.await_more(20).unwrap();
    cluster
        .faultfs(leader)
        .delay_fsync(Duration::from_millis(800))
        .unwrap();
    let new = until(&cluster, "a new leader", || {
        new_leader(&cluster, leader, term)
    });
    producer.await_more(20).unwrap();
    let stalled = until(&cluster, "the slow node reporting its stall", || {
        status(cluster.node(leader).client)
            .ok()
            .filter(|s| s.disk_stalled)
    });
    assert_ne!(stalled.role, NodeRole::Leader, "{stalled:?}");
    eprintln!("leader {leader} slow: node {new} leads; the slow one: {stalled:?}");
    cluster.faultfs(leader).delay_fsync(Duration::ZERO).unwrap();
    producer.await_more(20).unwrap();
    let ledger = producer.stop();
    let log = cluster.log_of(leader);
    assert!(
        log.contains("disk stalled: handing leadership over"),
        "{log}"
    );
    assert_nothing_lost(&cluster, &ledger, "slow leader");
}

/// The leader's disk fills (ENOSPC on anything that grows a file): the node does not exit, it
/// hands leadership to a follower with room and writes go on there; it keeps following and,
/// once there is room again, catches up by itself without a restart.
#[test]
fn a_full_disk_on_the_leader_moves_leadership_to_a_follower_with_room() {
    let mut cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let producer = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 0);
    producer.await_more(20).unwrap();
    cluster.faultfs(leader).enospc(true).unwrap();
    let full = until(&cluster, "the leader reporting a full disk", || {
        status(cluster.node(leader).client).ok()?.disk_full
    });
    let data_dir = cluster.node(leader).data_dir.display().to_string();
    assert!(
        full.path.starts_with(&data_dir),
        "{full:?} names {data_dir}"
    );
    let new = until(&cluster, "a new leader", || {
        new_leader(&cluster, leader, term)
    });
    producer.await_more(50).unwrap();
    assert!(running(&mut cluster, leader), "{}", cluster.log_of(leader));
    let old = status(cluster.node(leader).client).unwrap();
    assert_eq!(old.role, NodeRole::Follower, "{old:?}");
    assert_eq!(old.leader_id, Some(new), "{old:?}");
    assert!(old.disk_full.is_some(), "{old:?}");
    cluster.faultfs(leader).enospc(false).unwrap();
    until(
        &cluster,
        "the old leader's disk taking writes again",
        || {
            status(cluster.node(leader).client)
                .ok()
                .filter(|s| s.disk_full.is_none())
        },
    );
    producer.await_more(20).unwrap();
    let ledger = producer.stop();
    assert!(running(&mut cluster, leader), "{}", cluster.log_of(leader));
    assert_nothing_lost(&cluster, &ledger, "full leader");
}

/// A follower's disk fills: it does not exit; the leader goes on committing with the other
/// follower and shows how long the full one has not acknowledged; once there is room the
/// follower resumes and holds every acknowledged record, without a restart.
#[test]
fn a_full_disk_on_a_follower_stops_its_acks_and_the_leader_commits_without_it() {
    let mut cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    let leader = cluster.wait_leader();
    let follower = if leader == 1 { 2 } else { 1 };
    let producer = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 0);
    producer.await_more(20).unwrap();
    cluster.faultfs(follower).enospc(true).unwrap();
    until(&cluster, "the follower reporting a full disk", || {
        status(cluster.node(follower).client).ok()?.disk_full
    });
    let lagging = until(
        &cluster,
        "the leader reporting the follower's ack age",
        || {
            let s = status(cluster.node(leader).client).ok()?;
            let p = s.peers.into_iter().find(|p| p.node_id == follower)?;
            (p.ack_age_ms >= 1000 && p.lag_entries > 0).then_some(p)
        },
    );
    producer.await_more(50).unwrap();
    assert!(
        running(&mut cluster, follower),
        "{}",
        cluster.log_of(follower)
    );
    eprintln!("follower {follower} full; the leader sees {lagging:?}");
    cluster.faultfs(follower).enospc(false).unwrap();
    until(&cluster, "the follower's disk taking writes again", || {
        status(cluster.node(follower).client)
            .ok()
            .filter(|s| s.disk_full.is_none())
    });
    producer.await_more(20).unwrap();
    let ledger = producer.stop();
    assert!(
        running(&mut cluster, follower),
        "{}",
        cluster.log_of(follower)
    );
    assert_nothing_lost(&cluster, &ledger, "full follower");
}

/// Every disk fills: the leader answers appends with `DiskFull` naming its log directory (the
/// native client and `raftline produce` show it), every node still serves what it holds, and
/// once less than a segment (600 KiB of a 1 MiB segment) is freed on each, the nodes make a
/// smaller segment and take appends again, by themselves. A node restarted then, with no room
/// at all, comes back and follows.
#[test]
fn full_disks_everywhere_refuse_appends_by_name_and_resume_after_freeing_less_than_a_segment() {
    let mut cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    cluster.wait_leader();
    let producer = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 0);
    producer.await_more(20).unwrap();
    let mut ledger = producer.stop();
    let end = settled_end(&cluster).unwrap();
    for fs in &cluster.faults {
        fs.enospc(true).unwrap();
    }
    let filler = Producer::start_within(clients(&cluster), PRODUCER_PATIENCE, 1 << 20);
    let mut tag = 1 << 30;
    let (full_leader, path) = until(&cluster, "an append answered DiskFull", || {
        tag += 1;
        match append_to_leader(&cluster, tag)? {
            (
                leader,
                Response::Error {
                    error: ClientError::DiskFull { path, .. },
                    ..
                },
            ) => Some((leader, path)),
            _ => None,
        }
    });
    ledger.extend(filler.stop());
    let data_dir = cluster.node(full_leader).data_dir.display().to_string();
    assert!(
        path.starts_with(&data_dir),
        "DiskFull names {path}, not under {data_dir}"
    );
    let bootstrap: Vec<String> = clients(&cluster).iter().map(|a| a.to_string()).collect();
    let produce = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args([
            "produce",
            "--bootstrap",
            &bootstrap.join(","),
            "--cluster-id",
            CLUSTER,
        ])
        .args(["--generate", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&produce.stderr);
    assert!(!produce.status.success(), "raftline produce: {stderr}");
    // An idempotent producer first asks any node for its id, which needs room too: the error
    // names whichever node's full disk it met.
    let names_a_data_dir =
        (1..=3).any(|id| stderr.contains(&cluster.node(id).data_dir.display().to_string()));
    assert!(
        stderr.contains("disk full") && names_a_data_dir,
        "raftline produce names the full disk: {stderr}"
    );
    let before: Ledger = ledger.range(..1 << 20).map(|(&t, &o)| (t, o)).collect();
    for id in 1..=3 {
        assert_serves(&cluster, id, &before, end);
    }
    for fs in &cluster.faults {
        fs.enospc(false).unwrap();
        fs.space(Some(600 << 10)).unwrap();
    }
    until(
        &cluster,
        "an append acknowledged after freeing space",
        || {
            tag += 1;
            match append_to_leader(&cluster, tag)? {
                (
                    _,
                    Response::Appended {
                        base_offset,
                        last_offset,
                        ..
                    },
                ) => {
                    ledger.insert(tag, (base_offset, last_offset));
                    Some(())
                }
                _ => None,
            }
        },
    );
    // With no room at all after its restart it can serve only what it holds: let it hold every
    // acknowledged record first.
    let acked_end = ledger
        .values()
        .map(|&(_, last)| last + 1)
        .max()
        .unwrap_or(0);
    until(
        &cluster,
        "the node that was full holding every acknowledged record",
        || {
            status(cluster.node(full_leader).client)
                .ok()
                .filter(|s| s.log_end_offset >= acked_end && s.commit_index >= s.log_last_index)
        },
    );
    cluster.kill(full_leader);
    // Not a byte to spare: start-up must not need any.
    cluster.faultfs(full_leader).space(Some(0)).unwrap();
    cluster.spawn(full_leader);
    until(&cluster, "the restarted node following", || {
        status(cluster.node(full_leader).client)
            .ok()
            .filter(|s| s.leader_id.is_some_and(|l| l != full_leader) || s.role == NodeRole::Leader)
    });
    assert_nothing_lost(&cluster, &ledger, "full everywhere");
    // The node that was full rolled over into what room there was (checked once every node
    // holds the whole log, so also the appends after the space was freed).
    let leader_log = cluster.node(full_leader).data_dir.join("log");
    let sizes: Vec<u64> = std::fs::read_dir(&leader_log)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert!(
        sizes.iter().any(|&s| s < 1 << 20),
        "a segment sized to the room left: {sizes:?}"
    );
}

/// An fsync failing with EIO on the leader: the leader fails stop (exit 1, the I/O error named,
/// no panic: it cannot know what reached the disk, so it never retries), the others elect a
/// leader and go on, no acknowledged record is lost, and the node restarts from its disk (its
/// recovery cuts whatever the failed fsync left unsynced) once the disk is healthy again.
#[test]
fn an_fsync_error_stops_the_leader_and_the_cluster_carries_on() {
    let mut cluster = Cluster::start_on_faultfs(3, "auto", FLAGS);
    let leader = cluster.wait_leader();
    let producer = Producer::start(clients(&cluster));
    producer.await_more(20).unwrap();
    cluster.faultfs(leader).fail_fsync(1).unwrap();
    let exit = cluster.await_exit(leader, DEADLINE);
    let log = cluster.log_of(leader);
    eprintln!("leader {leader} after an fsync EIO: {exit:?}");
    assert_eq!(
        exit.and_then(|s| s.code()),
        Some(1),
        "the leader fails stop with exit code 1 after an fsync error\n{log}"
    );
    assert!(
        log.contains("Input/output error"),
        "the exit names the I/O error:\n{log}"
    );
    assert!(
        !log.contains("panicked"),
        "a clean stop, not a panic:\n{log}"
    );
    let stats = cluster.faultfs(leader).stats().unwrap();
    assert_eq!(stats.fsync_failed, 1);
    producer.await_more(20).unwrap();
    cluster.spawn(leader);
    producer.await_more(20).unwrap();
    let ledger = producer.stop();
    assert_nothing_lost(&cluster, &ledger, "fsync EIO");
}
