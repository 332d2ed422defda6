//! The keyed state's policies against real `raftline server` processes: at `--state-mib-max` the
//! leader refuses appends that add keys (`StateFull`) while overwrites and deletes go on and
//! every node keeps compacting; a delete's tombstone leaves the state after
//! `--tombstone-retain-offsets`, and a reader of a later snapshot, which cannot see that delete,
//! still ends with the map of a reader of the whole log.

mod cluster_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster_support::{http_get, status, Cluster, CLUSTER, DEADLINE};
use raftline_log::Record;
use raftline_netio::client::{
    snapshot_now, Client, ClientConfig, Error, StateEvent, StateMode, StateSubscription,
};
use raftline_netio::client_proto::{ClientError, StartFrom};
use raftline_netio::cluster_id::ClusterId;

fn config(cluster: &Cluster) -> ClientConfig {
    let bootstrap = cluster.nodes.iter().map(|n| n.client.to_string()).collect();
    let mut config = ClientConfig::new(bootstrap, ClusterId::from_name(CLUSTER));
    config.failover_timeout = Duration::from_secs(20);
    config
}

fn record(key: &str, value: &[u8]) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        value: value.to_vec(),
        timestamp_ms: 1_700_000_000_000,
        headers: vec![],
    }
}

/// 100 records with keys `prefix-<first..first+100>` and 100-byte values.
fn keyed(prefix: &str, first: u64, fill: u8) -> Vec<Record> {
    keyed_n(prefix, first, 100, fill)
}

/// `n` records with keys `prefix-<first..first+n>` and 100-byte values.
fn keyed_n(prefix: &str, first: u64, n: u64, fill: u8) -> Vec<Record> {
    (first..first + n)
        .map(|k| record(&format!("{prefix}-{k:06}"), &[fill; 100]))
        .collect()
}

fn is_state_full(result: &Result<raftline_netio::client::AppendOffsets, Error>) -> bool {
    matches!(
        result,
        Err(Error::Refused {
            error: ClientError::StateFull { state_bytes_max },
            ..
        }) if *state_bytes_max == 1 << 20
    )
}

/// The value of metric `name` in `/metrics` text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_full_state_refuses_new_keys_takes_overwrites_and_deletes_and_keeps_compacting() {
    let cluster = Cluster::start_with(
        3,
        "auto",
        &[
            "--state-mib-max",
            "1",
            "--snapshot-every-mib",
            "1",
            "--retain-mib",
            "0",
        ],
    );
    let leader = cluster.wait_leader();
    let mut client = Client::connect(config(&cluster)).unwrap();
    // New keys until the leader refuses them: about 1 MiB of state (100 + key + 64 bytes each).
    let mut added = 0;
    let refused = loop {
        let result = client.append(&keyed("key", added, 1));
        if is_state_full(&result) {
            break result;
        }
        result.expect("appends below the bound are taken");
        added += 100;
        assert!(added < 20_000, "never refused: the bound is not kept");
    };
    let s = status(cluster.node(leader).client).unwrap();
    assert!(
        s.state_bytes >= s.state_bytes_max && s.state_bytes_max == 1 << 20,
        "{s:?}"
    );
    assert!(
        s.state_bytes < s.state_bytes_max + (64 << 10),
        "the state stays near its bound: {s:?}"
    );
    assert_eq!(s.state_keys, added, "the refused batch added no key");
    let full_at = s.log_end_offset;
    eprintln!("refused at {added} keys: {refused:?}");
    // A batch mixing one new key with overwrites is refused whole; overwrites and deletes of
    // held keys alone are taken, also well past the size that filled the state.
    let mut mixed = keyed("key", 0, 2);
    mixed.push(record("another-new-key", b"v"));
    assert!(is_state_full(&client.append(&mixed)));
    // About 6 MB of overwrites: more than a 4 MiB segment past the snapshots.
    let mut overwritten = 0;
    while overwritten < 8 * added {
        let first = overwritten % added;
        let n = 1000.min(added - first);
        client
            .append(&keyed_n("key", first, n, 3))
            .expect("overwrites of held keys are taken");
        overwritten += n;
    }
    client
        .append(&[record("key-000000", b"")])
        .expect("a delete of a held key is taken");
    let metrics = http_get(cluster.node(leader).metrics, "/metrics");
    assert_eq!(metric(&metrics, "raftline_state_full"), 1);
    assert_eq!(metric(&metrics, "raftline_state_bytes_max"), 1 << 20);
    assert_eq!(
        metric(&metrics, "raftline_appends_refused_state_full_total"),
        2
    );
    // Every node keeps snapshotting and dropping its log: none stopped compacting.
    let end = status(cluster.node(leader).client).unwrap().log_end_offset;
    let deadline = Instant::now() + DEADLINE;
    for node in &cluster.nodes {
        loop {
            let s = status(node.client).unwrap();
            let compacted =
                s.snapshot.is_some_and(|n| n.cut_offset > full_at) && s.log_start_offset > 0;
            if compacted && s.log_end_offset == end {
                assert_eq!(s.state_keys, added, "node {}", node.id);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} stopped compacting: {s:?}\n{}",
                node.id,
                cluster.log_of(node.id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["status", "--cluster-id", CLUSTER])
        .args(["--bootstrap", &cluster.node(leader).client.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().next().unwrap().ends_with("STATE") && table.contains("/1.0 MiB FULL"),
        "{table}"
    );
}

type State = BTreeMap<Vec<u8>, Vec<u8>>;

/// What a state subscription shows: the snapshot's records by key (an empty value: a
/// tombstone), and the map after the log up to `end`.
fn read_state(cluster: &Cluster, end: u64) -> (BTreeMap<Vec<u8>, Vec<u8>>, State) {
    let mut sub =
        StateSubscription::open(config(cluster), StartFrom::Earliest, StateMode::Always).unwrap();
    let (mut snapshot, mut state) = (BTreeMap::new(), State::new());
    loop {
        let event = sub.next_event(Some(DEADLINE)).unwrap().expect("an event");
        let (key, value, log_offset) = match event {
            StateEvent::Reset(_) => {
                snapshot.clear();
                state.clear();
                continue;
            }
            StateEvent::CaughtUp { offset } if offset >= end => return (snapshot, state),
            StateEvent::CaughtUp { .. } => continue,
            StateEvent::SnapshotRecord(r) => {
                snapshot.insert(r.key.clone(), r.value.clone());
                (r.key, r.value, None)
            }
            StateEvent::Record(r) => match r.record.key {
                Some(key) => (key, r.record.value, Some(r.offset)),
                None => continue,
            },
        };
        if value.is_empty() {
            state.remove(&key);
        } else {
            state.insert(key, value);
        }
        if log_offset.is_some_and(|o| o + 1 >= end) {
            return (snapshot, state);
        }
    }
}

#[test]
fn an_expired_tombstone_is_absent_from_the_snapshot_and_the_reader_still_ends_with_the_same_map() {
    // Tombstones kept for 500 records; the whole log retained, so a reader from offset 0 sees
    // every delete.
    let cluster = Cluster::start_with(
        3,
        "auto",
        &[
            "--tombstone-retain-offsets",
            "500",
            "--snapshot-every-mib",
            "0",
        ],
    );
    cluster.wait_leader();
    let mut client = Client::connect(config(&cluster)).unwrap();
    let mut expected = State::new();
    let mut append = |records: Vec<Record>, expected: &mut State| {
        for r in &records {
            let key = r.key.clone().unwrap();
            if r.value.is_empty() {
                expected.remove(&key);
            } else {
                expected.insert(key, r.value.clone());
            }
        }
        client.append(&records).unwrap().last_offset + 1
    };
    append(keyed("key", 0, 1), &mut expected);
    // An old delete: 1,000 records follow it before the snapshot, so its tombstone expired.
    append(vec![record("key-000007", b"")], &mut expected);
    for round in 0..10 {
        append(keyed("filler", round * 100, 2), &mut expected);
    }
    // A recent delete: its tombstone is within the retention at the snapshot.
    let end = append(vec![record("key-000042", b"")], &mut expected);
    // A node snapshots what it has applied when asked: every node must have applied the last
    // delete first (a follower learns the commit a heartbeat later).
    let leader = cluster.wait_leader();
    let commit = status(cluster.node(leader).client).unwrap().commit_index;
    let deadline = Instant::now() + DEADLINE;
    for node in &cluster.nodes {
        while status(node.client).map_or(true, |s| s.commit_index < commit) {
            assert!(
                Instant::now() < deadline,
                "node {} never applied {commit}",
                node.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for node in &cluster.nodes {
        snapshot_now(
            &node.client.to_string(),
            &config(&cluster),
            Duration::from_secs(20),
        )
        .unwrap();
    }
    let (snapshot, state) = read_state(&cluster, end);
    assert!(
        !snapshot.contains_key(&b"key-000007"[..]),
        "the expired tombstone is not in the snapshot"
    );
    assert_eq!(
        snapshot.get(&b"key-000042"[..]).map(Vec::len),
        Some(0),
        "the recent delete is in the snapshot as a tombstone"
    );
    assert_eq!(
        snapshot.len(),
        1099,
        "100 keys less the expired delete, and 1,000 fillers"
    );
    assert_eq!(state, expected, "the snapshot reader's map");
    // The same as a reader of the whole log, which saw both deletes.
    let mut from_zero = State::new();
    for batch in cluster_support::read_batches(cluster.node(1).client, 0, end) {
        for r in batch.records().unwrap() {
            let key = r.key.unwrap();
            if r.value.is_empty() {
                from_zero.remove(&key);
            } else {
                from_zero.insert(key, r.value);
            }
        }
    }
    assert_eq!(from_zero, state);
}
