//! Three replicas with real logs in temporary directories exchanging `Message`s through an
//! in-memory transport: the node driver's replication path before any socket exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use raftline_log::{BackendChoice, BackendKind, Batch, Record, WriterHook};
use raftline_replicator::{Config, Role};

use super::replica::{Committed, Replica, ReplicaConfig};

const NODES: [u64; 3] = [1, 2, 3];

struct Cluster {
    dir: tempfile::TempDir,
    replicas: Vec<Option<Replica>>,
    durable_tx: Sender<usize>,
    durable_rx: Receiver<usize>,
    committed: Vec<Vec<Committed>>,
    /// Messages from and to this slot are dropped (a partitioned node).
    isolated: Option<usize>,
}

fn replica_config(dir: &std::path::Path, id: u64, hook: WriterHook) -> ReplicaConfig {
    let mut raft = Config::new(id, NODES.to_vec());
    // One committed entry per Ready: a restarted replica re-learning its log then needs more
    // rounds than one `advance` carries out, as a large log would.
    raft.committed_bytes_max = 1;
    ReplicaConfig {
        raft,
        data_dir: dir.join(format!("node-{id}")),
        log_backend: BackendChoice::Force(BackendKind::Buffered),
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        rng_seed: id,
        durable_hook: Some(hook),
        writer_start_hook: None,
    }
}

impl Cluster {
    fn new() -> Cluster {
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
        let cfg = replica_config(self.dir.path(), NODES[slot], hook);
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

    /// Advances every replica and delivers messages until none are in flight.
    fn route(&mut self) {
        loop {
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
                    r.step(msg);
                }
            }
        }
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
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let batches = r.read_committed(offset, 1 << 20).unwrap();
        let Some(last) = batches.last() else {
            return out;
        };
        offset = last.header().next_offset();
        out.extend(batches.into_iter().map(Batch::into_bytes));
    }
}

/// Proposes `count` batches at the leader (retrying refusals on the next round) and runs until
/// every replica has them committed; returns the leader's slot.
fn produce(cluster: &mut Cluster, count: usize, first_tag: usize) -> usize {
    cluster.run_until("a leader is elected", |c| c.leader().is_some());
    let leader = cluster.leader().unwrap();
    let mut proposed = Vec::new();
    for tag in first_tag..first_tag + count {
        let p = cluster.replica(leader).propose(batch(tag)).unwrap();
        proposed.push(p);
        if tag % 10 == 0 {
            cluster.route();
        }
    }
    let last = proposed.last().unwrap().index;
    cluster.run_until("every replica applied the proposals", |c| {
        c.replicas
            .iter()
            .flatten()
            .all(|r| r.readable_index() >= last)
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
