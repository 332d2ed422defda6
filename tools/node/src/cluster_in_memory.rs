//! Three replicas with real logs in temporary directories exchanging `Message`s through an
//! in-memory transport: the node driver's replication path before any socket exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raftline_log::batch::entry_batches;
use raftline_log::{BackendChoice, BackendKind, Batch, LogError, Record, WriterHook};
use raftline_replicator::{Config, Entry, EntryKind, Index, Message, MessageBody, Role};

use crate::producers::{Placed, ProducerTable, Verdict};
use crate::replica::{Committed, Replica, ReplicaConfig, StepRefused};
use crate::snapshots::SnapshotPolicy;
use crate::state::KeyState;

const NODES: [u64; 3] = [1, 2, 3];

/// Far more rounds of message exchange than settling any of these scenarios takes.
const ROUTE_ROUNDS_MAX: usize = 10_000;

struct Cluster {
    dir: tempfile::TempDir,
    replicas: Vec<Option<Replica>>,
    durable_tx: Sender<usize>,
    durable_rx: Receiver<usize>,
    committed: Vec<Vec<Committed>>,
    /// Messages from and to this slot are dropped (a partitioned node).
    isolated: Option<usize>,
    snapshots: SnapshotPolicy,
    segment_bytes: u64,
}

/// Snapshots every 96 KiB of applied log, nothing retained below them, 128 KiB segments: a few
/// hundred small batches compact the log several times.
const COMPACTING: SnapshotPolicy = SnapshotPolicy {
    every_bytes: 96 << 10,
    retain_bytes: 0,
    state_bytes_max: 1 << 20,
    tombstone_retain_offsets: None,
    interval: None,
    write_bytes_per_s: None,
};
const COMPACTING_SEGMENT_BYTES: u64 = 128 << 10;

fn replica_config(
    dir: &std::path::Path,
    id: u64,
    hook: WriterHook,
    snapshots: SnapshotPolicy,
    segment_bytes: u64,
) -> ReplicaConfig {
    let mut raft = Config::new(id, NODES.to_vec());
    // One committed entry per Ready: a restarted replica re-learning its log then needs more
    // rounds than one `advance` carries out, as a large log would.
    raft.committed_bytes_max = 1;
    ReplicaConfig {
        raft,
        data_dir: dir.join(format!("node-{id}")),
        log_backend: BackendChoice::Force(BackendKind::Buffered),
        segment_bytes,
        batch_bytes_max: 16 << 10,
        rng_seed: id,
        durable_hook: Some(hook),
        writer_start_hook: None,
        snapshots,
        emulated_fsync_delay: std::time::Duration::ZERO,
        durable_mark_idle: std::time::Duration::from_millis(
            crate::config::DURABLE_MARK_IDLE_MS_DEFAULT,
        ),
        durable_mark_before_ack: false,
    }
}

impl Cluster {
    fn new() -> Cluster {
        let never = SnapshotPolicy {
            every_bytes: 0,
            ..SnapshotPolicy::default()
        };
        Cluster::with(never, 1 << 20)
    }

    fn with(snapshots: SnapshotPolicy, segment_bytes: u64) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("raftline-node-test")
            .tempdir_in("/tmp")
            .unwrap();
        let (durable_tx, durable_rx) = crossbeam_channel::unbounded();
        let mut cluster = Cluster {
            dir,
            replicas: NODES.iter().map(|_| None).collect(),
            durable_tx,
            durable_rx,
            committed: vec![Vec::new(); NODES.len()],
            isolated: None,
            snapshots,
            segment_bytes,
        };
        for slot in 0..NODES.len() {
            cluster.start(slot);
        }
        cluster
    }

    fn start(&mut self, slot: usize) {
        let tx = self.durable_tx.clone();
        let hook = WriterHook(Arc::new(move || {
            let _ = tx.send(slot);
        }));
        let cfg = replica_config(
            self.dir.path(),
            NODES[slot],
            hook,
            self.snapshots,
            self.segment_bytes,
        );
        self.replicas[slot] = Some(Replica::open(cfg).unwrap());
    }

    fn replica(&mut self, slot: usize) -> &mut Replica {
        self.replicas[slot].as_mut().expect("running")
    }

    /// Runs rounds (a tick every 1 ms of waiting for the log writers) until `done` holds.
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last_tick = Instant::now();
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            if let Ok(slot) = self.durable_rx.recv_timeout(Duration::from_millis(1)) {
                if let Some(r) = self.replicas[slot].as_mut() {
                    r.on_durable().unwrap();
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(1) {
                last_tick = Instant::now();
                for r in self.replicas.iter_mut().flatten() {
                    r.tick();
                }
            }
            self.route();
        }
    }

    /// Advances every replica and delivers messages until none are in flight; panics past
    /// `ROUTE_ROUNDS_MAX` rounds (the replicas exchange messages without end: a storm).
    fn route(&mut self) {
        for round in 0.. {
            assert!(
                round < ROUTE_ROUNDS_MAX,
                "messages still in flight after {ROUTE_ROUNDS_MAX} rounds"
            );
            let mut inflight = Vec::new();
            for (slot, r) in self.replicas.iter_mut().enumerate() {
                if let Some(r) = r {
                    r.advance().unwrap();
                    inflight.extend(r.take_messages());
                    self.committed[slot].extend(r.take_committed());
                }
            }
            if inflight.is_empty() {
                return;
            }
            for msg in inflight {
                let slot = NODES.iter().position(|&n| n == msg.to).unwrap();
                let from = NODES.iter().position(|&n| n == msg.from).unwrap();
                if self.isolated.is_some_and(|i| i == slot || i == from) {
                    continue;
                }
                if let Some(r) = self.replicas[slot].as_mut() {
                    let what = msg.to_string();
                    if let Err(refused) = r.step(msg) {
                        panic!("a real message was refused: {what}: {refused}");
                    }
                }
            }
        }
    }

    /// Running replicas that are not isolated.
    fn connected(&self) -> impl Iterator<Item = &Replica> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|&(slot, _)| self.isolated != Some(slot))
            .filter_map(|(_, r)| r.as_ref())
    }

    fn leader(&self) -> Option<usize> {
        self.replicas
            .iter()
            .position(|r| r.as_ref().is_some_and(|r| r.raft().role() == Role::Leader))
    }
}

fn batch(tag: usize) -> Batch {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            key: None,
            value: format!("record-{tag}-{i}").into_bytes(),
            timestamp_ms: tag as u64,
            headers: vec![],
        })
        .collect();
    Batch::encode(&records).unwrap()
}

fn all_bytes(r: &Replica) -> Vec<Vec<u8>> {
    bytes_from(r, 0)
}

/// Committed batches from the one holding `offset` on.
fn bytes_from(r: &Replica, mut offset: u64) -> Vec<Vec<u8>> {
    let (mut out, mut buf) = (Vec::new(), Vec::new());
    loop {
        let batches = r.read_committed_into(offset, 1 << 20, &mut buf).unwrap();
        let Some((last, _)) = batches.last() else {
            return out;
        };
        offset = last.next_offset();
        out.extend(batches.into_iter().map(|(_, range)| buf[range].to_vec()));
    }
}

/// Proposes `count` batches at the leader and runs until every replica has them committed;
/// returns the leader's slot.
fn produce(cluster: &mut Cluster, count: usize, first_tag: usize) -> usize {
    let batches: Vec<Batch> = (first_tag..first_tag + count).map(batch).collect();
    produce_batches(cluster, batches)
}

/// Proposes `batches` at the leader and runs until every replica not isolated has them
/// committed; returns the leader's slot.
fn produce_batches(cluster: &mut Cluster, batches: Vec<Batch>) -> usize {
    cluster.run_until("a leader is elected", |c| c.leader().is_some());
    let leader = cluster.leader().unwrap();
    let mut proposed = Vec::new();
    for (n, batch) in batches.into_iter().enumerate() {
        let p = cluster.replica(leader).propose(batch).unwrap();
        proposed.push(p);
        if n % 10 == 0 {
            cluster.route();
        }
    }
    let last = proposed.last().unwrap().index;
    cluster.run_until("every connected replica applied the proposals", |c| {
        c.connected().all(|r| r.readable_index() >= last)
    });
    for p in &proposed {
        let committed = &cluster.committed[leader];
        assert!(
            committed.contains(&Committed {
                index: p.index,
                term: p.term
            }),
            "proposal {p:?} committed with its own term"
        );
    }
    leader
}

#[test]
fn three_replicas_commit_identical_bytes_at_identical_offsets() {
    let mut cluster = Cluster::new();
    let leader = produce(&mut cluster, 100, 0);
    let reference = all_bytes(cluster.replica(leader));
    assert_eq!(reference.len(), 100);
    for (slot, node) in NODES.iter().enumerate() {
        assert_eq!(all_bytes(cluster.replica(slot)), reference, "node {node}");
    }
    let mut next = 0;
    for (tag, bytes) in reference.into_iter().enumerate() {
        let batch = Batch::decode(bytes).unwrap();
        assert_eq!(batch.header().base_offset, next);
        assert_eq!(batch.records().unwrap(), batch_records(tag));
        next += 3;
    }
}

fn batch_records(tag: usize) -> Vec<Record> {
    batch(tag).records().unwrap()
}

#[test]
fn restarted_replicas_resume_from_disk_and_keep_offsets_dense() {
    let mut cluster = Cluster::new();
    produce(&mut cluster, 20, 0);
    let term_before = cluster.replica(0).raft().term();
    for slot in 0..NODES.len() {
        cluster.replicas[slot] = None;
    }
    for slot in 0..NODES.len() {
        cluster.start(slot);
        assert!(cluster.replica(slot).raft().term() >= term_before);
        assert!(
            cluster.replica(slot).log().last_index() >= 21,
            "entries survived"
        );
    }
    let leader = produce(&mut cluster, 20, 20);
    let all = all_bytes(cluster.replica(leader));
    assert_eq!(all.len(), 40);
    for (tag, bytes) in all.into_iter().enumerate() {
        let batch = Batch::decode(bytes).unwrap();
        assert_eq!(batch.header().base_offset, 3 * tag as u64);
        assert_eq!(batch.records().unwrap(), batch_records(tag));
    }
}

#[test]
fn a_lagging_replica_restarted_alone_catches_up_to_the_same_log() {
    let mut cluster = Cluster::new();
    produce(&mut cluster, 10, 0);
    let leader = cluster.leader().unwrap();
    let lagging = (leader + 1) % NODES.len();
    cluster.replicas[lagging] = None;
    let more = {
        let mut proposed = Vec::new();
        for tag in 10..30 {
            proposed.push(cluster.replica(leader).propose(batch(tag)).unwrap());
        }
        proposed.last().unwrap().index
    };
    cluster.run_until("the two live replicas commit", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= more)
    });
    cluster.start(lagging);
    cluster.run_until("the restarted replica catches up", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= more)
    });
    let leader_now = cluster.leader().unwrap();
    let reference = all_bytes(cluster.replica(leader_now));
    assert_eq!(reference.len(), 30);
    assert_eq!(all_bytes(cluster.replica(lagging)), reference);
}

#[test]
fn a_deposed_leader_with_a_stale_uncommitted_tail_restarts_and_converges() {
    let mut cluster = Cluster::new();
    let old = produce(&mut cluster, 10, 0);
    // The leader takes proposals nobody else ever sees, makes them durable, and dies.
    cluster.isolated = Some(old);
    let stale_last = (100..105)
        .map(|tag| cluster.replica(old).propose(batch(tag)).unwrap().index)
        .last()
        .unwrap();
    cluster.run_until("the isolated leader's tail is durable", |c| {
        c.replicas[old].as_ref().unwrap().log().durable_index() >= stale_last
    });
    cluster.replicas[old] = None;
    cluster.isolated = None;
    // The others commit well beyond the stale tail; one AppendEntries to the restarted node
    // then both replaces its tail and carries a commit index above the cut.
    let leader = produce(&mut cluster, 30, 10);
    assert_ne!(leader, old);
    let reference = all_bytes(cluster.replica(leader));
    cluster.start(old);
    let last = cluster.replica(leader).raft().last_index();
    cluster.run_until("the restarted node converges", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= last)
    });
    assert_eq!(all_bytes(cluster.replica(old)), reference);
    assert_eq!(reference.len(), 40, "the stale proposals are gone");
}

/// Three keyed records of about 1 KiB each over ten keys; every 50th batch deletes `key-0`.
fn keyed_batch(tag: usize) -> Batch {
    let records: Vec<Record> = (0..3)
        .map(|i| {
            let n = tag * 3 + i;
            let value = if n % 150 == 149 {
                Vec::new()
            } else {
                format!("value-{n}-").repeat(100).into_bytes()
            };
            let key = if n % 150 == 149 { 0 } else { n % 10 };
            Record {
                key: Some(format!("key-{key}").into_bytes()),
                value,
                timestamp_ms: tag as u64,
                headers: vec![],
            }
        })
        .collect();
    Batch::encode(&records).unwrap()
}

/// The state `batches` make when committed in order from offset 0 (each key keeps the offset of
/// its latest record).
fn expected_state(batches: &[Batch]) -> KeyState {
    let mut state = KeyState::new(None);
    let mut offset = 0;
    for b in batches {
        let mut stamped = b.clone();
        stamped.stamp(offset, 1, 1);
        offset = stamped.header().next_offset();
        state.apply(stamped.as_bytes()).unwrap();
    }
    state
}

fn snapshot_files(cluster: &Cluster, slot: usize) -> usize {
    let dir = cluster
        .dir
        .path()
        .join(format!("node-{}/snapshots", NODES[slot]));
    raftline_log::snapshot::list_snapshots(&dir).unwrap().len()
}

/// Every replica's log is compacted (no snapshot write in flight): a snapshot exists and covers
/// the dropped prefix.
fn all_compacted(c: &Cluster) -> bool {
    c.replicas.iter().flatten().all(|r| {
        !r.snapshot_writing()
            && r.snapshot_index()
                .is_some_and(|s| r.log().first_index() > 1 && r.log().first_index() <= s + 1)
    })
}

#[test]
fn replicas_snapshot_their_state_and_drop_segments_as_the_log_grows() {
    let mut cluster = Cluster::with(COMPACTING, COMPACTING_SEGMENT_BYTES);
    let batches: Vec<Batch> = (0..300).map(keyed_batch).collect();
    let expected = expected_state(&batches);
    let leader = produce_batches(&mut cluster, batches);
    cluster.run_until("every replica compacted its log", |c| all_compacted(c));
    let start = (0..NODES.len())
        .map(|slot| cluster.replica(slot).log().start_offset())
        .max()
        .unwrap();
    assert!(start > 0);
    let reference = bytes_from(cluster.replica(leader), start);
    assert!(!reference.is_empty(), "records after the snapshots remain");
    for (slot, node) in NODES.iter().enumerate() {
        let files = snapshot_files(&cluster, slot);
        assert!(
            (1..=2).contains(&files),
            "node {node}: {files} snapshot files"
        );
        let r = cluster.replica(slot);
        assert_eq!(r.snapshots().state(), &expected, "node {node}");
        assert!(matches!(
            r.read_committed_into(0, 1 << 20, &mut Vec::new()),
            Err(LogError::BelowStart { .. })
        ));
        assert_eq!(bytes_from(r, start), reference, "node {node}");
    }
}

#[test]
fn a_partitioned_follower_catches_up_by_snapshot_and_serves_the_same_records() {
    let mut cluster = Cluster::with(COMPACTING, COMPACTING_SEGMENT_BYTES);
    let mut batches: Vec<Batch> = (0..10).map(keyed_batch).collect();
    let leader = produce_batches(&mut cluster, batches.clone());
    let follower = (leader + 1) % NODES.len();
    cluster.isolated = Some(follower);
    let behind = cluster.replica(follower).log().last_index();
    let more: Vec<Batch> = (10..300).map(keyed_batch).collect();
    batches.extend(more.iter().cloned());
    produce_batches(&mut cluster, more);
    cluster.run_until("the others compacted past the follower's log", |c| {
        c.connected().all(|r| r.log().first_index() > behind + 1)
    });
    cluster.isolated = None;
    let last = cluster.replica(leader).raft().last_index();
    cluster.run_until("the follower caught up", |c| {
        c.replicas[follower].as_ref().unwrap().readable_index() >= last
    });
    let expected = expected_state(&batches);
    let leader_now = cluster.leader().unwrap();
    let f = cluster.replicas[follower].as_ref().unwrap();
    assert!(
        f.snapshot_index().is_some_and(|s| s > behind),
        "installed a snapshot"
    );
    assert!(f.log().first_index() > behind + 1, "its old log is gone");
    assert_eq!(f.snapshots().state(), &expected);
    let same_records_from_the_later_start = |c: &mut Cluster, leader: usize| {
        let start = c.replica(follower).log().start_offset();
        let start = start.max(c.replica(leader).log().start_offset());
        let reference = bytes_from(c.replica(leader), start);
        assert!(!reference.is_empty());
        assert_eq!(bytes_from(c.replica(follower), start), reference);
    };
    same_records_from_the_later_start(&mut cluster, leader_now);
    // And it keeps replicating after the snapshot point.
    let tail: Vec<Batch> = (300..310).map(keyed_batch).collect();
    let leader_now = produce_batches(&mut cluster, tail);
    same_records_from_the_later_start(&mut cluster, leader_now);
}

#[test]
fn a_restart_from_a_snapshot_resumes_with_the_same_state_and_offsets() {
    let mut cluster = Cluster::with(COMPACTING, COMPACTING_SEGMENT_BYTES);
    let batches: Vec<Batch> = (0..200).map(keyed_batch).collect();
    let expected = expected_state(&batches);
    assert!(expected.is_deleted(b"key-0") && expected.get(b"key-0").is_none());
    produce_batches(&mut cluster, batches);
    cluster.run_until("every replica compacted its log", |c| all_compacted(c));
    let last_before = cluster.replica(0).readable_index();
    let end_before: Vec<u64> = (0..NODES.len())
        .map(|slot| cluster.replica(slot).readable_end_offset())
        .collect();
    for slot in 0..NODES.len() {
        cluster.replicas[slot] = None;
    }
    for slot in 0..NODES.len() {
        cluster.start(slot);
        let r = cluster.replica(slot);
        let snapshot = r.snapshot_index().expect("restored from a snapshot");
        assert_eq!(
            r.raft().applied_index(),
            snapshot,
            "applied = the snapshot's index"
        );
    }
    cluster.run_until("the restarted replicas applied the log again", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= last_before)
    });
    for (slot, node) in NODES.iter().enumerate() {
        let state = cluster.replica(slot).snapshots().state();
        assert_eq!(state, &expected, "node {node}");
        assert!(state.is_deleted(b"key-0"), "the tombstone survived");
    }
    let tail: Vec<Batch> = (200..210).map(keyed_batch).collect();
    let all = (0..210).map(keyed_batch).collect::<Vec<_>>();
    let leader = produce_batches(&mut cluster, tail);
    let first_new = bytes_from(cluster.replica(leader), end_before[leader]);
    let first_new = Batch::decode(first_new[0].clone()).unwrap();
    assert_eq!(
        first_new.header().base_offset,
        end_before[leader],
        "offsets continue after the restart"
    );
    assert_eq!(
        first_new.records().unwrap(),
        keyed_batch(200).records().unwrap()
    );
    let expected_after = expected_state(&all);
    for slot in 0..NODES.len() {
        let r = cluster.replica(slot);
        assert_eq!(
            r.snapshots().state(),
            &expected_after,
            "node {}",
            NODES[slot]
        );
        assert_eq!(r.readable_end_offset(), end_before[slot] + 30);
    }
}

/// The producers' batches a replica's committed log holds from offset 0, runs split.
fn producer_batches(r: &Replica) -> Vec<Vec<u8>> {
    all_bytes(r)
        .iter()
        .flat_map(|entry| {
            entry_batches(entry)
                .map(|b| entry[b.unwrap().1].to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_run_commits_as_one_entry_and_every_replica_keeps_its_producers_batches() {
    // Snapshots far away: the state is materialised, never compacted here.
    let mut cluster = Cluster::with(SnapshotPolicy::default(), 1 << 20);
    cluster.run_until("a leader is elected", |c| c.leader().is_some());
    let leader = cluster.leader().unwrap();
    let first_index = cluster.replica(leader).log().last_index() + 1;
    let sizes = [5, 1, 3, 2];
    let mut tag = 0;
    let mut proposals = Vec::new();
    let mut sent = Vec::new();
    for size in sizes {
        let batches: Vec<Batch> = (tag..tag + size).map(keyed_batch).collect();
        tag += size;
        sent.extend(batches.iter().cloned());
        proposals.push(cluster.replica(leader).propose_run(batches).unwrap());
    }
    let last = proposals.last().unwrap()[0].index;
    assert_eq!(
        last,
        first_index + sizes.len() as u64 - 1,
        "one entry per run"
    );
    let mut next_offset = 0;
    for (run, size) in proposals.iter().zip(sizes) {
        assert_eq!(run.len(), size);
        for p in run {
            assert_eq!((p.index, p.term), (run[0].index, run[0].term));
            assert_eq!(p.base_offset, next_offset, "dense offsets inside a run");
            next_offset = p.last_offset + 1;
        }
    }
    let state = expected_state(&sent);
    for restarted in [false, true] {
        cluster.run_until("every replica applied the runs", |c| {
            c.connected().all(|r| r.readable_index() >= last)
        });
        for (slot, node) in NODES.iter().enumerate() {
            let r = cluster.replica(slot);
            let batches = producer_batches(r);
            assert_eq!(
                batches.len(),
                sent.len(),
                "node {node} (restarted: {restarted})"
            );
            let mut offset = 0;
            for (got, want) in batches.iter().zip(&sent) {
                let got = Batch::decode(got.clone()).unwrap();
                assert_eq!(got.header().base_offset, offset);
                assert_eq!(got.records().unwrap(), want.records().unwrap());
                offset = got.header().next_offset();
            }
            assert!(
                r.snapshots().state() == &state,
                "node {node} applied every record of every run (restarted: {restarted})"
            );
        }
        for slot in 0..NODES.len() {
            cluster.replicas[slot] = None;
        }
        for slot in 0..NODES.len() {
            cluster.start(slot);
        }
    }
}

/// The tail segment of `slot`'s log, its bytes and the (position, length) of its last batch.
fn last_batch(cluster: &Cluster, slot: usize) -> (std::path::PathBuf, Vec<u8>, (usize, usize)) {
    use raftline_log::batch::check_frame;
    use raftline_log::segment::{list_segments, segment_path, SEGMENT_HEADER_BYTES};
    let dir = cluster
        .dir
        .path()
        .join(format!("node-{}", NODES[slot]))
        .join("log");
    let seq = *list_segments(&dir).unwrap().last().unwrap();
    let path = segment_path(&dir, seq);
    let data = std::fs::read(&path).unwrap();
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    let mut last = None;
    while pos < data.len() {
        match check_frame(&data[pos..]) {
            Ok(h) => {
                if !h.is_durable_mark() {
                    last = Some((pos, h.total_bytes));
                }
                pos += h.total_bytes;
            }
            Err(_) => pos += 1,
        }
    }
    (path, data, last.expect("the log holds batches"))
}

/// Flips a bit in the last batch of `slot`'s log (stopped): damage to a group the log's
/// durability markers vouch for.
fn flip_bit_in_last_batch(cluster: &Cluster, slot: usize) {
    let (path, mut data, (pos, len)) = last_batch(cluster, slot);
    data[pos + len - 1] ^= 0x04;
    std::fs::write(&path, &data).unwrap();
}

/// Tears the last batch of `slot`'s log (stopped) as a crash in its write does: half of it
/// written, zeros after it, so no durability marker vouches for it.
fn tear_last_batch(cluster: &Cluster, slot: usize) {
    let (path, mut data, (pos, len)) = last_batch(cluster, slot);
    data[pos + len / 2..].fill(0);
    data[pos + len / 2] = 0xa5;
    std::fs::write(&path, &data).unwrap();
}

#[test]
fn a_replica_whose_log_lost_durable_entries_comes_back_muted_and_is_repaired() {
    let mut cluster = Cluster::new();
    let leader = produce(&mut cluster, 20, 0);
    let damaged = (leader + 1) % NODES.len();
    let last_before = cluster.replica(damaged).log().last_index();
    cluster.replicas[damaged] = None;
    flip_bit_in_last_batch(&cluster, damaged);
    cluster.start(damaged);
    {
        let r = cluster.replica(damaged);
        assert_eq!(
            r.log().last_index(),
            last_before - 1,
            "the damaged entry is cut"
        );
        assert_eq!(
            r.raft().repair_through(),
            Some(last_before),
            "muted until repaired, through what was durable"
        );
    }
    // A restart before the repair (no leader reaches it) keeps it muted: the hard state has it.
    cluster.isolated = Some(damaged);
    cluster.replicas[damaged] = None;
    cluster.start(damaged);
    assert_eq!(
        cluster.replica(damaged).raft().repair_through(),
        Some(last_before)
    );
    cluster.isolated = None;
    // The leader resends what the muted follower lost; the follower votes again, and says so
    // durably: after another restart nothing is pending.
    let leader = produce(&mut cluster, 5, 20);
    cluster.run_until("the damaged replica is repaired", |c| {
        c.replica(damaged).raft().repair_through().is_none()
    });
    let reference = all_bytes(cluster.replica(leader));
    assert_eq!(reference.len(), 25);
    assert_eq!(all_bytes(cluster.replica(damaged)), reference);
    cluster.replicas[damaged] = None;
    cluster.start(damaged);
    assert_eq!(cluster.replica(damaged).raft().repair_through(), None);
}

#[test]
fn a_leader_whose_torn_last_group_is_cut_votes_at_once() {
    let mut cluster = Cluster::new();
    let old = produce(&mut cluster, 20, 0);
    let last_before = cluster.replica(old).log().last_index();
    cluster.replicas[old] = None;
    // A crash while its last group was in flight (the followers have it): its batch half
    // written, nothing after it (the marker vouching for it never came).
    tear_last_batch(&cluster, old);
    cluster.start(old);
    let r = cluster.replica(old);
    assert_eq!(
        r.log().last_index(),
        last_before - 1,
        "the torn entry is cut"
    );
    assert_eq!(r.raft().repair_through(), None, "a torn write mutes nobody");
    let leader = produce(&mut cluster, 5, 20);
    let reference = all_bytes(cluster.replica(leader));
    assert_eq!(reference.len(), 25);
    assert_eq!(all_bytes(cluster.replica(old)), reference);
}

#[test]
fn a_follower_that_lost_its_acknowledged_last_group_unnoticed_gets_it_again() {
    let mut cluster = Cluster::new();
    let leader = produce(&mut cluster, 20, 0);
    let follower = (leader + 1) % NODES.len();
    let (id, last_before) = (
        NODES[follower],
        cluster.replica(follower).log().last_index(),
    );
    cluster.run_until("the leader counts the follower's last entry", |c| {
        let pr = c.replica(leader).raft().progress(id).cloned();
        pr.is_some_and(|p| p.match_index == last_before)
    });
    cluster.replicas[follower] = None;
    // The residual window (log/FORMAT.md): the last group, synced and acknowledged, damaged
    // and the marker after it lost too; recovery cuts it as a torn write, the node unaware.
    tear_last_batch(&cluster, follower);
    cluster.start(follower);
    let r = cluster.replica(follower);
    assert_eq!(r.log().last_index(), last_before - 1, "the entry is cut");
    assert_eq!(
        r.raft().repair_through(),
        None,
        "no marker says it was durable"
    );
    // The leader still counts it at `last_before`; its appends are rejected with a hint
    // below that. Before, it resent the same probe at once for every rejection and `route`
    // never came back.
    let leader = produce(&mut cluster, 5, 20);
    let reference = all_bytes(cluster.replica(leader));
    assert_eq!(reference.len(), 25);
    assert_eq!(all_bytes(cluster.replica(follower)), reference);
}

/// Records over 400 keys with overwrites and, every 7th record, a delete: a state wide enough
/// that a snapshot is many map nodes.
fn wide_keyed_batch(tag: usize) -> Batch {
    let records: Vec<Record> = (0..20)
        .map(|i| {
            let n = tag * 20 + i;
            Record {
                key: Some(format!("key-{}", (n * 7919) % 400).into_bytes()),
                value: if n % 7 == 6 {
                    Vec::new()
                } else {
                    format!("value-{n}").into_bytes()
                },
                timestamp_ms: n as u64,
                headers: vec![],
            }
        })
        .collect();
    Batch::encode(&records).unwrap()
}

#[test]
fn every_snapshot_holds_exactly_the_state_rebuilt_from_the_log_up_to_its_index() {
    // Snapshots every 16 KiB while the whole log is kept, so each snapshot file can be checked
    // against the log it claims to cover; proposals go on while each snapshot is written.
    let policy = SnapshotPolicy {
        every_bytes: 16 << 10,
        retain_bytes: 1 << 40,
        state_bytes_max: 1 << 30,
        tombstone_retain_offsets: None,
        interval: None,
        write_bytes_per_s: None,
    };
    let mut cluster = Cluster::with(policy, COMPACTING_SEGMENT_BYTES);
    let mut checked = std::collections::BTreeSet::new();
    for round in 0..12 {
        produce_batches(
            &mut cluster,
            (round * 20..round * 20 + 20)
                .map(wide_keyed_batch)
                .collect(),
        );
        for (slot, node) in NODES.iter().enumerate() {
            let dir = cluster.dir.path().join(format!("node-{node}/snapshots"));
            let r = cluster.replica(slot);
            for file in raftline_log::snapshot::list_snapshots(&dir).unwrap() {
                if !checked.insert((slot, file.last_index)) {
                    continue;
                }
                let payload = raftline_log::read_snapshot(&file).unwrap();
                let got = crate::state::SnapshotPayload::decode(&payload, None).unwrap();
                let entries = r.log().entries(1, file.last_index, usize::MAX).unwrap();
                assert_eq!(entries.len() as u64, file.last_index, "the log is whole");
                let mut rebuilt = KeyState::new(None);
                for batch in entries.into_iter().map(crate::storage::entry_of) {
                    if batch.kind == EntryKind::Command {
                        rebuilt.apply(&batch.payload).unwrap();
                    }
                }
                let cut = r
                    .log()
                    .entries(file.last_index + 1, file.last_index + 1, 1)
                    .ok()
                    .and_then(|b| b.first().map(|b| b.header().base_offset));
                assert!(
                    got.state == rebuilt,
                    "node {node}: snapshot {} ({} keys) differs from the log's state at its \
                     index ({} keys)",
                    file.last_index,
                    got.state.len(),
                    rebuilt.len()
                );
                if let Some(cut) = cut {
                    assert_eq!(got.next_offset, cut, "node {node}: the snapshot's cut");
                }
            }
        }
    }
    assert!(
        checked.len() >= 3 * NODES.len(),
        "several snapshots per node were checked: {checked:?}"
    );
}

/// An AppendEntries from the leader's id whose `prev` matches `follower`'s log end, carrying
/// `entries` (each a batch stamped at the offset given, with the leader's term).
fn forged_append(
    cluster: &mut Cluster,
    leader: usize,
    follower: usize,
    prev_index: Index,
    entries: &[(u64, Vec<u8>)],
) -> Message {
    let term = cluster.replica(leader).raft().term();
    let prev_term = cluster
        .replica(follower)
        .raft()
        .term_at(prev_index)
        .unwrap();
    let entries = entries
        .iter()
        .zip(prev_index + 1..)
        .map(|((offset, bytes), index)| {
            let payload = match Batch::decode(bytes.clone()) {
                Ok(mut batch) => {
                    batch.stamp(*offset, term, index);
                    batch.into_bytes()
                }
                Err(_) => bytes.clone(), // not a batch: sent as it is
            };
            Entry {
                term,
                index,
                kind: EntryKind::Command,
                payload: Arc::from(payload),
            }
        })
        .collect();
    Message {
        from: NODES[leader],
        to: NODES[follower],
        term,
        body: MessageBody::AppendEntries {
            prev_index,
            prev_term,
            entries,
            commit: cluster.replica(follower).raft().commit_index(),
        },
    }
}

#[test]
fn entries_that_would_not_continue_the_log_are_refused_before_the_core_takes_them() {
    let mut cluster = Cluster::new();
    let leader = produce(&mut cluster, 5, 0);
    let follower = (leader + 1) % NODES.len();
    let f = cluster.replica(follower);
    let (last, next) = (f.raft().last_index(), f.log().next_offset());
    let records = batch(100).as_bytes().to_vec();

    // A wrong base offset (the panic "stamped at offset … but the log continues at …").
    let wrong = forged_append(
        &mut cluster,
        leader,
        follower,
        last,
        &[(next + 1000, records.clone())],
    );
    let refused = cluster.replica(follower).step(wrong).unwrap_err();
    assert!(
        matches!(refused, StepRefused::WrongOffset { index, stamped, expected }
            if index == last + 1 && stamped == next + 1000 && expected == next),
        "{refused}"
    );
    // The right offset for the first entry, a gap before the second.
    let gap = forged_append(
        &mut cluster,
        leader,
        follower,
        last,
        &[(next, records.clone()), (next + 4, records.clone())],
    );
    let refused = cluster.replica(follower).step(gap).unwrap_err();
    assert_eq!(refused.label(), "wrong_offset", "{refused}");
    // Bytes that are no batch (a fatal `BadEntry` once handed to the log).
    let garbage = forged_append(&mut cluster, leader, follower, last, &[(0, vec![7; 64])]);
    let refused = cluster.replica(follower).step(garbage).unwrap_err();
    assert_eq!(refused.label(), "bad_entry", "{refused}");
    // At the right offset with a valid envelope CRC (any peer can compute one), records no
    // reader can decode: committed, they would stop every node applying them.
    let mut stamped = Batch::decode(records.clone()).unwrap();
    stamped.stamp(next, cluster.replica(leader).raft().term(), last + 1);
    let mut undecodable = stamped.into_bytes();
    undecodable[48..].fill(0xFF);
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &undecodable[8..]) as u32;
    undecodable[4..8].copy_from_slice(&crc.to_le_bytes());
    let forged = forged_append(&mut cluster, leader, follower, last, &[(next, undecodable)]);
    let refused = cluster.replica(follower).step(forged).unwrap_err();
    assert_eq!(refused.label(), "bad_entry", "{refused}");

    // Nothing of it reached the core, and the cluster goes on: every replica ends identical.
    let f = cluster.replica(follower);
    assert_eq!((f.raft().last_index(), f.log().next_offset()), (last, next));
    let leader = produce(&mut cluster, 5, 5);
    let reference = all_bytes(cluster.replica(leader));
    assert_eq!(reference.len(), 10);
    for (slot, node) in NODES.iter().enumerate() {
        assert_eq!(all_bytes(cluster.replica(slot)), reference, "node {node}");
    }

    // An entry the core holds but has not handed to the log yet anchors the next check.
    // (These forgeries have plausible offsets and are taken: only authenticated peers stop
    // those.)
    let f = cluster.replica(follower);
    let (last, next) = (f.raft().last_index(), f.log().next_offset());
    let right = forged_append(
        &mut cluster,
        leader,
        follower,
        last,
        &[(next, records.clone())],
    );
    cluster.replica(follower).step(right).unwrap();
    let after = forged_append(
        &mut cluster,
        leader,
        follower,
        last + 1,
        &[(next + 1, records.clone())],
    );
    let refused = cluster.replica(follower).step(after).unwrap_err();
    assert!(
        matches!(refused, StepRefused::WrongOffset { expected, .. } if expected == next + 3),
        "{refused}"
    );
    let after = forged_append(
        &mut cluster,
        leader,
        follower,
        last + 1,
        &[(next + 3, records)],
    );
    cluster.replica(follower).step(after).unwrap();
}

/// A batch of 3 records of about 1 KiB of idempotent producer `producer_id` from sequence
/// `base_sequence`.
fn idempotent(producer_id: u64, base_sequence: i32) -> Batch {
    let records: Vec<Record> = (0..3)
        .map(|i| Record {
            key: Some(format!("p{producer_id}-{}", (base_sequence + i) % 7).into_bytes()),
            value: vec![b'v'; 1000],
            timestamp_ms: 0,
            headers: vec![],
        })
        .collect();
    let seq = raftline_log::ProducerSeq {
        producer_id,
        epoch: 0,
        base_sequence,
    };
    Batch::encode_idempotent(&records, seq).unwrap()
}

/// The leader's verdict on one batch, as the event loop asks before proposing.
fn verdict(cluster: &mut Cluster, slot: usize, batch: &Batch) -> Verdict {
    cluster.replica(slot).judge(std::slice::from_ref(batch))[0]
}

/// Every running replica's committed dedup table, once all applied `index`.
fn tables_at(cluster: &mut Cluster, index: u64) -> Vec<ProducerTable> {
    cluster.run_until("every replica applied", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= index)
    });
    let tables: Vec<ProducerTable> = cluster
        .replicas
        .iter()
        .flatten()
        .map(|r| r.producer_table().clone())
        .collect();
    assert!(
        tables.windows(2).all(|w| w[0] == w[1]),
        "every replica holds the same table"
    );
    tables
}

#[test]
fn a_resend_to_a_new_leader_gets_the_original_offsets_and_a_replaced_suffix_leaves_no_trace() {
    let mut cluster = Cluster::new();
    let p = 1 << 32;
    let old = produce_batches(&mut cluster, (0..3).map(|i| idempotent(p, i * 3)).collect());
    // The next batch reaches the followers' logs but its commit never reaches anyone.
    let racing = idempotent(p, 9);
    assert_eq!(verdict(&mut cluster, old, &racing), Verdict::Fresh);
    let original = cluster.replica(old).propose(racing.clone()).unwrap();
    assert_eq!(
        verdict(&mut cluster, old, &racing),
        Verdict::Duplicate(Placed {
            first_seq: 9,
            last_seq: 11,
            base_offset: original.base_offset,
            last_offset: original.last_offset,
            index: original.index,
            term: original.term
        }),
        "a resend racing its uncommitted original is caught"
    );
    cluster.replica(old).advance().unwrap();
    for msg in cluster.replica(old).take_messages() {
        let to = NODES.iter().position(|&n| n == msg.to).unwrap();
        cluster
            .replica(to)
            .step(msg)
            .expect("a real message is taken");
    }
    cluster.isolated = Some(old);
    cluster.run_until("the followers hold the entry durably", |c| {
        c.connected()
            .all(|r| r.log().durable_index() >= original.index)
    });
    // The isolated leader goes on with a tail nobody else sees.
    let stale = idempotent(p, 12);
    let stale_index = cluster.replica(old).propose(stale.clone()).unwrap().index;
    cluster.run_until("a new leader", |c| c.leader().is_some_and(|l| l != old));
    let new = cluster.leader().unwrap();
    cluster.run_until("the new leader applied its log", |c| {
        let r = c.replicas[new].as_ref().unwrap();
        r.readable_index() >= r.raft().last_index()
    });
    match verdict(&mut cluster, new, &racing) {
        Verdict::Duplicate(placed) => assert_eq!(
            (placed.base_offset, placed.last_offset, placed.index),
            (original.base_offset, original.last_offset, 0),
            "answered with the original's offsets, committed"
        ),
        other => panic!("the resend is a duplicate, got {other:?}"),
    }
    // A follower judges nothing: proposing tells the client to go to the leader.
    let follower = 3 - old - new;
    assert_eq!(verdict(&mut cluster, follower, &racing), Verdict::Fresh);
    assert!(matches!(
        cluster.replica(follower).propose(racing.clone()),
        Err(crate::replica::ProposalError::Refused(
            raftline_replicator::ProposeError::NotLeader { .. }
        ))
    ));
    // What the stale leader took was never committed: for the new leader it is the next batch.
    assert_eq!(verdict(&mut cluster, new, &stale), Verdict::Fresh);
    cluster.replica(new).propose(stale.clone()).unwrap();
    cluster.isolated = None;
    cluster.run_until("the old leader's tail is replaced", |c| {
        let r = c.replicas[old].as_ref().unwrap();
        r.raft().role() == Role::Follower && r.readable_index() >= stale_index
    });
    let last = cluster.replica(new).raft().last_index();
    let tables = tables_at(&mut cluster, last);
    let last_batch = tables[0].get(p).expect("the producer is held");
    assert_eq!(last_batch.epoch(), 0);
    assert_eq!(
        all_bytes(cluster.replica(old)).len(),
        5,
        "three batches, the raced one once, the stale one once"
    );
    // Restarted, every replica rebuilds the same table from its log.
    for slot in 0..NODES.len() {
        cluster.replicas[slot] = None;
    }
    for slot in 0..NODES.len() {
        cluster.start(slot);
    }
    cluster.run_until("a leader after the restart", |c| c.leader().is_some());
    let leader = cluster.leader().unwrap();
    let last = cluster.replica(leader).raft().last_index();
    assert_eq!(tables_at(&mut cluster, last)[0], tables[0]);
}

#[test]
fn the_dedup_table_survives_compaction_and_a_restart_from_the_snapshot() {
    let mut cluster = Cluster::with(COMPACTING, COMPACTING_SEGMENT_BYTES);
    let producers = [1 << 32, (1 << 32) + 1];
    let batches: Vec<Batch> = (0..150)
        .map(|i| idempotent(producers[i % 2], (i / 2) as i32 * 3))
        .collect();
    let last_sent = batches[149].clone();
    produce_batches(&mut cluster, batches);
    cluster.run_until("every replica compacted its log", |c| all_compacted(c));
    let leader = cluster.leader().unwrap();
    let last = cluster.replica(leader).raft().last_index();
    let before = tables_at(&mut cluster, last)[0].clone();
    let stored = match verdict(&mut cluster, leader, &last_sent) {
        Verdict::Duplicate(placed) => placed,
        other => panic!("a duplicate, got {other:?}"),
    };
    for slot in 0..NODES.len() {
        cluster.replicas[slot] = None;
    }
    for slot in 0..NODES.len() {
        cluster.start(slot);
        let r = cluster.replica(slot);
        assert!(r.snapshot_index().is_some(), "restored from a snapshot");
        assert!(
            !r.producer_table().is_empty(),
            "the snapshot held the table"
        );
    }
    cluster.run_until("a leader after the restart", |c| c.leader().is_some());
    let leader = cluster.leader().unwrap();
    let last = cluster.replica(leader).raft().last_index();
    let after = tables_at(&mut cluster, last)[0].clone();
    assert_eq!(after.len(), before.len());
    match verdict(&mut cluster, leader, &last_sent) {
        Verdict::Duplicate(placed) => assert_eq!(
            (placed.base_offset, placed.last_offset),
            (stored.base_offset, stored.last_offset)
        ),
        other => panic!("still a duplicate after the restart, got {other:?}"),
    }
    let next = idempotent(producers[1], 75 * 3);
    assert_eq!(verdict(&mut cluster, leader, &next), Verdict::Fresh);
    let gap = idempotent(producers[1], 76 * 3);
    assert!(matches!(
        verdict(&mut cluster, leader, &gap),
        Verdict::OutOfOrder {
            expected: 225,
            got: 228,
            ..
        }
    ));
}
