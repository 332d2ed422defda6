//! Reading across the truncation, against real `raftline server` processes: a keyed workload
//! with overwrites and deletes runs long enough for several snapshots and truncations; a
//! consumer that read every record from offset 0 while the log still held it, and one that
//! starts after the truncation with the snapshot stream, end with exactly the same key → value
//! map and the same last offset — also when the second one's node is killed mid-snapshot.

mod cluster_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_support::{status, Cluster, CLUSTER};
use raftline_log::Record;
use raftline_netio::client::{
    Client, ClientConfig, StateEvent, StateMode, StateSubscription, Subscription,
};
use raftline_netio::client_proto::StartFrom;
use raftline_netio::cluster_id::ClusterId;

/// Snapshots every MiB of applied log (the test cluster's segments are 4 MiB): ~10 MiB of
/// records compact the log several times; 1 MiB retained below the newest snapshot lets the
/// early reader keep up.
const COMPACTING: &[&str] = &["--snapshot-every-mib", "1", "--retain-mib", "1"];
const KEYS: u64 = 300;
const BATCHES: u64 = 1200;
const RECORDS_PER_BATCH: u64 = 40;
/// The last batches, which write only 5 keys.
const TAIL_BATCHES: u64 = 150;

fn config(cluster: &Cluster, order: &[u64]) -> ClientConfig {
    let bootstrap = order
        .iter()
        .map(|&id| cluster.node(id).client.to_string())
        .collect();
    let mut config = ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER));
    config.failover_timeout = Duration::from_secs(20);
    config
}

/// A seeded xorshift: the workload is replayable from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Produces the keyed workload (about 1 in 8 records a delete); returns the end offset. The
/// last batches touch only a few keys, so the state of most keys comes from the snapshot alone
/// (a snapshot that lost or garbled records cannot be hidden by later overwrites).
fn produce(cluster: &Cluster, seed: u64) -> u64 {
    let mut rng = Rng(seed | 1);
    let mut client = Client::connect(config(cluster, &[1, 2, 3])).unwrap();
    let mut end = 0;
    for b in 0..BATCHES {
        let keys = if b < BATCHES - TAIL_BATCHES { KEYS } else { 5 };
        let records: Vec<Record> = (0..RECORDS_PER_BATCH)
            .map(|i| {
                let key = format!("key-{:03}", rng.next() % keys);
                let value = if rng.next() % 8 == 0 {
                    Vec::new()
                } else {
                    format!("value {b}/{i} {}", "x".repeat(200)).into_bytes()
                };
                Record {
                    key: Some(key.into_bytes()),
                    value,
                    timestamp_ms: 1_700_000_000_000 + b,
                    headers: vec![],
                }
            })
            .collect();
        end = client.append(&records).unwrap().last_offset + 1;
    }
    end
}

/// A key -> value state.
type State = BTreeMap<Vec<u8>, Vec<u8>>;
/// Every record read, by offset: (key, value).
type ByOffset = BTreeMap<u64, (Vec<u8>, Vec<u8>)>;

/// Applies a keyed record: an empty value deletes.
fn apply(state: &mut State, key: Vec<u8>, value: Vec<u8>) {
    if value.is_empty() {
        state.remove(&key);
    } else {
        state.insert(key, value);
    }
}

/// What a state subscription ends with: the map, the last offset it covers, the snapshot
/// records it applied (key, offset, value) and how many resets it saw.
struct StateRead {
    state: State,
    last_offset: u64,
    from_snapshot: Vec<(Vec<u8>, u64, Vec<u8>)>,
    resets: Vec<u64>,
}

/// Reads with a state subscription until the log reaches `end`; `mid_snapshot` runs once after
/// the first snapshot records arrived.
fn read_state(config: ClientConfig, end: u64, mut mid_snapshot: impl FnMut()) -> StateRead {
    let mut sub = StateSubscription::open(config, StartFrom::Earliest, StateMode::Always).unwrap();
    let mut read = StateRead {
        state: BTreeMap::new(),
        last_offset: 0,
        from_snapshot: Vec::new(),
        resets: Vec::new(),
    };
    let mut fired = false;
    loop {
        let event = sub
            .next_event(Some(cluster_support::DEADLINE))
            .unwrap()
            .expect("an event within the deadline");
        match event {
            StateEvent::Reset(info) => {
                read.state.clear();
                read.from_snapshot.clear();
                read.resets.push(info.index);
            }
            StateEvent::SnapshotRecord(r) => {
                read.from_snapshot
                    .push((r.key.clone(), r.offset, r.value.clone()));
                apply(&mut read.state, r.key, r.value);
                if !fired && read.from_snapshot.len() >= 20 {
                    fired = true;
                    mid_snapshot();
                }
            }
            StateEvent::CaughtUp { offset } => {
                read.last_offset = offset.saturating_sub(1);
                if offset >= end {
                    return read;
                }
            }
            StateEvent::Record(r) => {
                read.last_offset = r.offset;
                if let Some(key) = r.record.key {
                    apply(&mut read.state, key, r.record.value);
                }
                if r.offset + 1 >= end {
                    return read;
                }
            }
        }
    }
}

/// The early reader: every record from offset 0, followed as it is committed (keeping up with
/// the producer, so the log still holds what it reads), until `end` is known and reached.
/// Returns the map, and every record by offset (key, value).
fn read_log_from_zero(mut sub: Subscription, end: &AtomicU64) -> (State, ByOffset) {
    let mut state = BTreeMap::new();
    let mut by_offset = BTreeMap::new();
    let mut next = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let known = end.load(Ordering::SeqCst);
        if known > 0 && next >= known {
            return (state, by_offset);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stuck at offset {next}"
        );
        let Some(r) = sub.next_record(Some(Duration::from_millis(100))).unwrap() else {
            continue;
        };
        assert_eq!(r.offset, next, "every offset once, in order");
        next += 1;
        let key = r.record.key.unwrap();
        by_offset.insert(r.offset, (key.clone(), r.record.value.clone()));
        apply(&mut state, key, r.record.value);
    }
}

fn check_equal(early: &State, by_offset: &ByOffset, late: &StateRead, end: u64) {
    assert!(
        late.resets.last().is_some_and(|&index| index > 0),
        "the late reader started from a real snapshot: {:?}",
        late.resets
    );
    assert_eq!(late.last_offset, end - 1, "the same last offset");
    let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    let differing: Vec<String> = early
        .keys()
        .chain(late.state.keys())
        .filter(|k| early.get(*k) != late.state.get(*k))
        .map(|k| text(k))
        .collect();
    assert!(
        differing.is_empty(),
        "the key -> value maps differ at {} keys: {:?}",
        differing.len(),
        &differing[..differing.len().min(10)]
    );
    // Every snapshot record is the record at its original offset.
    for (key, offset, value) in &late.from_snapshot {
        assert_eq!(
            by_offset.get(offset),
            Some(&(key.clone(), value.clone())),
            "snapshot record at offset {offset}"
        );
    }
}

#[test]
fn a_consumer_starting_after_truncation_ends_with_the_state_of_one_that_read_from_zero() {
    let seed =
        std::env::var("RAFTLINE_TEST_SEED").map_or(0x5eed_0001, |s| s.parse().expect("a number"));
    println!("seed {seed} (replay with RAFTLINE_TEST_SEED={seed})");
    let mut cluster = Cluster::start_with(3, "auto", COMPACTING);
    cluster.wait_leader();
    let early = Subscription::open(config(&cluster, &[1, 2, 3]), StartFrom::Offset(0)).unwrap();
    let known_end = Arc::new(AtomicU64::new(0));
    let reader = {
        let known_end = Arc::clone(&known_end);
        std::thread::spawn(move || read_log_from_zero(early, &known_end))
    };
    let end = produce(&cluster, seed);
    known_end.store(end, Ordering::SeqCst);
    let (state, by_offset) = reader.join().unwrap();
    assert!(state.len() > (KEYS / 2) as usize, "{} keys", state.len());

    for n in &cluster.nodes {
        let deadline = std::time::Instant::now() + cluster_support::DEADLINE;
        while status(n.client).map_or(true, |s| s.log_end_offset < end || s.log_start_offset == 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} did not compact",
                n.id
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Status says what each node serves and holds.
    for n in &cluster.nodes {
        let s = status(n.client).unwrap();
        let snap = s.snapshot.expect("a node that compacted serves a snapshot");
        assert!(snap.index > 0 && snap.bytes > 0, "{s:?}");
        assert!(
            snap.cut_offset >= s.log_start_offset && snap.cut_offset <= s.log_end_offset,
            "the log continues after the snapshot: {s:?}"
        );
        assert!(s.disk_bytes > snap.bytes, "{s:?}");
        let metrics = cluster_support::http_get(n.metrics, "/metrics");
        for name in [
            "raftline_snapshot_cut_offset ",
            "raftline_snapshot_bytes ",
            "raftline_disk_bytes ",
        ] {
            assert!(metrics.contains(name), "{name}missing:\n{metrics}");
        }
    }
    // A late reader on each node in turn (followers serve the state too).
    for id in 1..=3 {
        let late = read_state(config(&cluster, &[id]), end, || {});
        check_equal(&state, &by_offset, &late, end);
    }

    // Killed mid-snapshot: a small credit window keeps the node from sending the whole
    // snapshot ahead; the reader resumes on another node (same snapshot from its position, or
    // a new reset) and still ends with the same state.
    let victim = 2;
    let mut small = config(&cluster, &[victim, 3, 1]);
    small.subscribe_window_bytes = 2 << 10;
    let late = read_state(small, end, || cluster.kill(victim));
    println!(
        "killed mid-snapshot: resets {:?}, {} snapshot records",
        late.resets,
        late.from_snapshot.len()
    );
    check_equal(&state, &by_offset, &late, end);
}
