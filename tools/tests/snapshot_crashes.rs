//! A crash at each step of snapshot writing, compaction (segment and snapshot deletion) and
//! installation leaves a node that restarts consistent, against real `raftline server`
//! processes: a follower runs with `RAFTLINE_CRASH_AT=<point>` (log/src/fault.rs) under a keyed
//! workload and aborts there; it is restarted without it and must come back, catch up, and serve
//! — from its own snapshot and log — exactly the key → value map of every acknowledged record,
//! with no half-written snapshot file left to trust. One test per crash point; and for the points
//! after which only a directory's fsync makes a step durable (a rename, a deletion), once more
//! with the node's data on a fault filesystem whose power is cut after the abort, so that what
//! was not synced is forgotten (names since their directory's last fsync, file data since its
//! own).

mod cluster_support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use cluster_support::{http_get, status, Cluster, CLUSTER, DEADLINE};
use raftline_log::Record;
use raftline_netio::client::{Client, ClientConfig, StateEvent, StateMode, StateSubscription};
use raftline_netio::client_proto::StartFrom;
use raftline_netio::cluster_id::ClusterId;

/// A snapshot every MiB of applied log, nothing retained below it (the test cluster's segments
/// are 4 MiB): a few MiB of records snapshot, truncate and prune.
const COMPACTING: &[&str] = &["--snapshot-every-mib", "1", "--retain-mib", "0"];
/// Keys of the workload: their state (about 1.6 MB) spans two InstallSnapshot chunks.
const KEYS: u64 = 12_000;
const RECORDS_PER_BATCH: u64 = 200;
/// Batches produced at most while waiting for a crash point (about 24 MiB).
const BATCHES_MAX: u64 = 1000;
/// Log bytes the leader must take after a follower stopped so that it sends that follower a
/// snapshot: beyond the core's cache of recent entries (`log_cache_bytes_max`, 16 MiB), which
/// would otherwise still serve them after the segments were dropped.
const PAST_THE_CACHE_BYTES: u64 = 20 << 20;
/// Records of a large batch (about 360 KiB).
const LARGE_BATCH_RECORDS: u64 = 3000;
/// Bytes a record takes in a batch, about (key, value, framing).
const RECORD_BYTES: u64 = 120;

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// Applies a keyed record: an empty value deletes.
fn apply(state: &mut State, key: Vec<u8>, value: Vec<u8>) {
    if value.is_empty() {
        state.remove(&key);
    } else {
        state.insert(key, value);
    }
}

/// A keyed producer that remembers the state every acknowledged record makes.
struct Workload {
    client: Client,
    expected: State,
    batches: u64,
    /// One past the last acknowledged offset.
    end: u64,
}

impl Workload {
    fn new(cluster: &Cluster) -> Workload {
        let bootstrap = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
        let mut config = ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER));
        config.failover_timeout = Duration::from_secs(20);
        Workload {
            client: Client::connect(config).unwrap(),
            expected: BTreeMap::new(),
            batches: 0,
            end: 0,
        }
    }

    /// Appends one batch (about 24 KiB; 1 record in 10 a delete) and waits for its ack.
    fn append_batch(&mut self) {
        self.append_records(RECORDS_PER_BATCH);
    }

    /// Appends one batch of `count` records and waits for its ack.
    fn append_records(&mut self, count: u64) {
        let first = self.end;
        let records: Vec<Record> = (0..count)
            .map(|i| {
                let n = first + i;
                let key = format!("key-{:05}", n.wrapping_mul(2_654_435_761) % KEYS);
                let value = if n % 10 == 9 {
                    Vec::new()
                } else {
                    format!("{n:>12} {}", "v".repeat(88)).into_bytes()
                };
                Record {
                    key: Some(key.into_bytes()),
                    value,
                    timestamp_ms: 1_700_000_000_000 + n,
                    headers: vec![],
                }
            })
            .collect();
        let acked = self.client.append(&records).expect("acknowledged");
        for r in records {
            apply(&mut self.expected, r.key.unwrap(), r.value);
        }
        self.batches += 1;
        self.end = acked.last_offset + 1;
    }
}

/// Node `id` was aborted at `point`: it exited by SIGABRT and said where.
fn assert_crashed_at(cluster: &Cluster, id: u64, exit: std::process::ExitStatus, point: &str) {
    assert_eq!(
        exit.signal(),
        Some(libc::SIGABRT),
        "node {id} exited {exit:?}, not by the crash point\n{}",
        cluster.log_of(id)
    );
    assert!(
        cluster
            .log_of(id)
            .contains(&format!("crash point {point} reached")),
        "node {id} crashed elsewhere\n{}",
        cluster.log_of(id)
    );
}

/// Whether the crash left a half-written snapshot file (`*.tmp`) the restart must delete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaves {
    TempFile,
    NoTempFile,
}

/// What happens to the crashed node's disk before it restarts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Power {
    /// It keeps every byte (a process crash).
    Kept,
    /// Its power is cut: what was not made durable is gone (the cluster runs on fault mounts).
    Cut,
}

impl Power {
    fn cluster(self) -> Cluster {
        match self {
            Power::Kept => Cluster::start_with(3, "auto", COMPACTING),
            Power::Cut => Cluster::start_on_faultfs(3, "auto", COMPACTING),
        }
    }

    /// After node `id` aborted.
    fn apply(self, cluster: &Cluster, id: u64) {
        if self == Power::Cut {
            let report = cluster.faultfs(id).power_cut(None).expect("power cut");
            eprintln!("node {id}: power cut {report:?}");
        }
    }
}

/// Restarts node `id` without a crash point, waits until it holds every acknowledged record,
/// and checks what it serves: from its own snapshot and log, exactly the expected map up to the
/// last acknowledged offset; and no temp snapshot file was trusted or kept. After a power cut a
/// temp file may be gone with its unsynced name, so only a process crash says whether one is
/// found to delete.
fn restart_and_check(
    cluster: &mut Cluster,
    id: u64,
    workload: &mut Workload,
    leaves: Leaves,
    power: Power,
) {
    let restarted_at = std::time::SystemTime::now();
    cluster.spawn(id);
    // The cluster goes on while the node comes back.
    for _ in 0..5 {
        workload.append_batch();
    }
    let end = workload.end;
    let client = cluster.node(id).client;
    let deadline = Instant::now() + DEADLINE;
    while status(client).map_or(true, |s| s.log_end_offset < end || s.commit_index == 0) {
        assert!(
            Instant::now() < deadline,
            "node {id} did not catch up to offset {end}: {:?}\n{}",
            status(client),
            cluster.log_of(id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = status(client).unwrap();
    if s.log_start_offset > 0 {
        let snap = s
            .snapshot
            .expect("a compacted log is covered by a snapshot");
        assert!(
            snap.cut_offset >= s.log_start_offset,
            "node {id}: snapshot cut {} below its log start {}",
            snap.cut_offset,
            s.log_start_offset
        );
    }
    // Only this node: no failover to a peer that would hide what it serves.
    let mut config = ClientConfig::new(vec![client.to_string()], ClusterId::from_name(CLUSTER));
    config.failover_timeout = Duration::from_secs(5);
    let mut sub = StateSubscription::open(config, StartFrom::Earliest, StateMode::Always).unwrap();
    let mut state = State::new();
    let mut last = None;
    while last.is_none_or(|l| l + 1 < end) {
        let event = sub
            .next_event(Some(DEADLINE))
            .unwrap()
            .expect("an event within the deadline");
        match event {
            StateEvent::Reset(_) => state.clear(),
            StateEvent::SnapshotRecord(r) => apply(&mut state, r.key, r.value),
            StateEvent::CaughtUp { offset } => last = offset.checked_sub(1),
            StateEvent::Record(r) => {
                last = Some(r.offset);
                if let Some(key) = r.record.key {
                    apply(&mut state, key, r.record.value);
                }
            }
        }
    }
    assert_eq!(
        last,
        Some(end - 1),
        "node {id} read past the acknowledged end"
    );
    assert_eq!(state.len(), workload.expected.len(), "node {id}: keys held");
    assert!(
        state == workload.expected,
        "node {id}: the state differs from the acknowledged records'"
    );
    let snapshots = cluster.node(id).data_dir.join("snapshots");
    // Temp files written before the restart (the restarted node may be writing a snapshot of
    // its own right now, under the same name if it reached the same index).
    let leftovers: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter(|e| {
            e.metadata()
                .is_ok_and(|m| m.modified().unwrap() < restarted_at)
        })
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "node {id} kept {leftovers:?} after restarting\n{}",
        cluster.log_of(id)
    );
    if power == Power::Cut {
        // Each step was durable before the next began: what the cut forgot is only what no
        // later step relied on, so the node found nothing to repair (a snapshot name lost after
        // the log below it was dropped would be repaired from the leader, and counted).
        let metrics = http_get(cluster.node(id).metrics, "/metrics");
        let repairs: Vec<_> = metrics
            .lines()
            .filter(|l| l.starts_with("raftline_log_repairs_total{") && !l.ends_with(" 0"))
            .collect();
        assert!(
            repairs.is_empty(),
            "node {id} repaired after the cut: {repairs:?}"
        );
        return;
    }
    let deleted = cluster
        .log_of(id)
        .contains("deleted snapshot files a crash left half-written");
    assert_eq!(
        deleted,
        leaves == Leaves::TempFile,
        "node {id}: deleting a half-written snapshot at restart\n{}",
        cluster.log_of(id)
    );
}

/// A follower runs with the crash point armed from the start; production goes on until it
/// aborts there (taking, compacting or pruning its own snapshots).
fn crash_while_compacting(point: &str, leaves: Leaves, power: Power) {
    let mut cluster = power.cluster();
    let leader = cluster.wait_leader();
    let victim = leader % 3 + 1;
    cluster.terminate(victim);
    cluster.spawn_with_env(victim, &[("RAFTLINE_CRASH_AT", point)]);
    cluster.wait_leader();
    let mut workload = Workload::new(&cluster);
    let exit = loop {
        workload.append_batch();
        if let Some(exit) = cluster.await_exit(victim, Duration::ZERO) {
            break exit;
        }
        assert!(
            workload.batches < BATCHES_MAX,
            "node {victim} never reached {point}\n{}",
            cluster.log_of(victim)
        );
    };
    assert_crashed_at(&cluster, victim, exit, point);
    power.apply(&cluster, victim);
    restart_and_check(&mut cluster, victim, &mut workload, leaves, power);
}

/// A follower is stopped while the others compact past its log, then started with the crash
/// point armed: the leader sends it a snapshot and it aborts while installing it.
fn crash_while_installing(point: &str, leaves: Leaves, power: Power) {
    let mut cluster = power.cluster();
    let leader = cluster.wait_leader();
    let victim = leader % 3 + 1;
    let mut workload = Workload::new(&cluster);
    for _ in 0..20 {
        workload.append_batch();
    }
    let behind = status(cluster.node(victim).client).unwrap().log_last_index;
    cluster.terminate(victim);
    let large_batches = PAST_THE_CACHE_BYTES / (LARGE_BATCH_RECORDS * RECORD_BYTES) + 1;
    for _ in 0..large_batches {
        workload.append_records(LARGE_BATCH_RECORDS);
    }
    let leader_now = status(cluster.node(leader).client).unwrap();
    assert!(
        leader_now.log_first_index > behind + 1 && leader_now.snapshot.is_some(),
        "the leader compacted past index {behind}: {leader_now:?}"
    );
    cluster.spawn_with_env(victim, &[("RAFTLINE_CRASH_AT", point)]);
    let exit = cluster.await_exit(victim, DEADLINE).unwrap_or_else(|| {
        panic!(
            "node {victim} did not crash at {point}\n{}",
            cluster.log_of(victim)
        )
    });
    assert_crashed_at(&cluster, victim, exit, point);
    power.apply(&cluster, victim);
    restart_and_check(&mut cluster, victim, &mut workload, leaves, power);
}

#[test]
fn a_crash_with_half_a_snapshot_written_restarts_from_the_previous_one() {
    crash_while_compacting("snapshot-write-half", Leaves::TempFile, Power::Kept);
}

#[test]
fn a_crash_before_the_snapshot_is_renamed_restarts_from_the_previous_one() {
    crash_while_compacting("snapshot-before-rename", Leaves::TempFile, Power::Kept);
}

#[test]
fn a_crash_before_the_snapshot_directory_is_synced_restarts_consistent() {
    crash_while_compacting("snapshot-before-dir-sync", Leaves::NoTempFile, Power::Kept);
}

#[test]
fn a_crash_between_the_snapshot_and_the_truncation_restarts_consistent() {
    crash_while_compacting("compact-before-truncate", Leaves::NoTempFile, Power::Kept);
}

#[test]
fn a_crash_in_the_middle_of_dropping_segments_restarts_consistent() {
    crash_while_compacting(
        "truncate-after-first-segment",
        Leaves::NoTempFile,
        Power::Kept,
    );
}

#[test]
fn a_crash_in_the_middle_of_pruning_old_snapshots_restarts_consistent() {
    crash_while_compacting(
        "prune-after-first-snapshot",
        Leaves::NoTempFile,
        Power::Kept,
    );
}

#[test]
fn a_crash_with_part_of_a_received_snapshot_written_restarts_and_receives_it_again() {
    crash_while_installing("install-partial", Leaves::TempFile, Power::Kept);
}

#[test]
fn a_crash_before_a_received_snapshot_is_renamed_restarts_consistent() {
    crash_while_installing("install-before-rename", Leaves::TempFile, Power::Kept);
}

#[test]
fn a_crash_between_installing_a_snapshot_and_restarting_the_log_restarts_consistent() {
    crash_while_installing("install-before-restart", Leaves::NoTempFile, Power::Kept);
}

#[test]
fn a_crash_before_the_superseded_segments_are_deleted_restarts_consistent() {
    crash_while_installing("restart-before-delete", Leaves::NoTempFile, Power::Kept);
}

#[test]
fn a_power_cut_after_a_crash_before_the_snapshot_directory_is_synced_restarts_consistent() {
    crash_while_compacting("snapshot-before-dir-sync", Leaves::NoTempFile, Power::Cut);
}

#[test]
fn a_power_cut_after_a_crash_in_the_middle_of_dropping_segments_restarts_consistent() {
    crash_while_compacting(
        "truncate-after-first-segment",
        Leaves::NoTempFile,
        Power::Cut,
    );
}

#[test]
fn a_power_cut_after_a_crash_in_the_middle_of_pruning_old_snapshots_restarts_consistent() {
    crash_while_compacting("prune-after-first-snapshot", Leaves::NoTempFile, Power::Cut);
}

#[test]
fn a_power_cut_after_a_crash_before_a_received_snapshot_is_renamed_restarts_consistent() {
    crash_while_installing("install-before-rename", Leaves::TempFile, Power::Cut);
}

#[test]
fn a_power_cut_after_a_crash_between_installing_a_snapshot_and_restarting_the_log_restarts_consistent(
) {
    crash_while_installing("install-before-restart", Leaves::NoTempFile, Power::Cut);
}

#[test]
fn a_power_cut_after_a_crash_before_the_superseded_segments_are_deleted_restarts_consistent() {
    crash_while_installing("restart-before-delete", Leaves::NoTempFile, Power::Cut);
}

#[test]
fn an_unknown_crash_point_is_refused_at_start() {
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["server", "--id", "1", "--cluster-id", CLUSTER])
        .args(["--peers", "1=127.0.0.1:1", "--client-listen", "127.0.0.1:1"])
        .arg("--peer-insecure")
        .arg("--data-dir")
        .arg(dir.path())
        .env("RAFTLINE_CRASH_AT", "snapshot-write-halff")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names no crash point") && stderr.contains("snapshot-write-half"),
        "{stderr}"
    );
}
