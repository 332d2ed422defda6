//! End to end: three real `raftline server` processes on loopback, produced to and read back
//! through the client protocol; a leader killed with SIGKILL mid-stream and restarted.

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster_support::{
    append_window, http_get, read_all, read_range, status, tagged_batch, wait_counter, Cluster,
    Conn, Outcome, DEADLINE,
};
use raftline_netio::client_proto::{AckMode, ClientError, Request, Response};

const RECORDS_PER_BATCH: u64 = 5;

/// Reads every node's whole log and checks each holds exactly `expected` (offset, tag) pairs.
fn assert_every_node_serves(cluster: &Cluster, expected: &[(u64, u64)]) {
    let end = expected.len() as u64;
    for node in cluster.nodes.iter().filter(|n| n.child.is_some()) {
        let deadline = Instant::now() + DEADLINE;
        while status(node.client).map_or(true, |s| s.log_end_offset < end) {
            assert!(
                Instant::now() < deadline,
                "node {} never caught up: {:?}\n{}",
                node.id,
                status(node.client),
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read_all(node.client, end), expected, "node {}", node.id);
    }
}

fn produce_and_read_back_everywhere(backend: &'static str) {
    let cluster = Cluster::start(3, backend);
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (1..=200).collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, RECORDS_PER_BATCH, 16);
    let mut expected = Vec::new();
    for tag in &tags {
        let Outcome::Acked { base, last } = outcomes[tag] else {
            panic!(
                "append {tag} not acknowledged: {:?}\n{}",
                outcomes[tag],
                cluster.logs()
            );
        };
        assert_eq!(last - base + 1, RECORDS_PER_BATCH);
        assert_eq!(
            base,
            expected.len() as u64,
            "offsets are dense in acknowledgement order"
        );
        expected.extend((base..=last).map(|o| (o, *tag)));
    }
    // A follower refuses appends and names the leader and its client address.
    let follower = cluster.nodes.iter().find(|n| n.id != leader).unwrap();
    let mut conn = Conn::connect(follower.client).unwrap();
    let batch = tagged_batch(999, 1);
    conn.send(&Request::Append {
        request_id: 1,
        ack: AckMode::Quorum,
        batch,
    })
    .unwrap();
    match conn.recv().unwrap() {
        Response::Error {
            error:
                ClientError::NotLeader {
                    leader_id,
                    leader_address,
                },
            ..
        } => {
            assert_eq!(leader_id, Some(leader));
            assert_eq!(
                leader_address,
                Some(cluster.node(leader).client.to_string())
            );
        }
        other => panic!("a follower answered an append with {other:?}"),
    }
    // The weaker ack modes answer too, with the offsets the records then commit at.
    let mut conn = Conn::connect(cluster.node(leader).client).unwrap();
    for (tag, ack) in [(201, AckMode::Leader), (202, AckMode::None)] {
        let batch = tagged_batch(tag, RECORDS_PER_BATCH);
        conn.send(&Request::Append {
            request_id: tag,
            ack,
            batch,
        })
        .unwrap();
        let Response::Appended {
            request_id,
            base_offset,
            last_offset,
        } = conn.recv().unwrap()
        else {
            panic!("append with {ack:?} not acknowledged");
        };
        assert_eq!((request_id, base_offset), (tag, expected.len() as u64));
        expected.extend((base_offset..=last_offset).map(|o| (o, tag)));
    }
    assert_every_node_serves(&cluster, &expected);
    // Reading from inside an entry starts at the producer's batch holding that offset, also
    // when the entry is a run of several producers' batches (`read_range` checks it).
    let end = expected.len() as u64;
    for node in &cluster.nodes {
        for from in (1..end).step_by(37) {
            assert_eq!(
                read_range(node.client, from, end),
                &expected[from as usize..],
                "node {} from offset {from}",
                node.id
            );
        }
    }
    let pinned = cluster.log_of(3);
    assert!(
        pinned.contains("thread layout (cores given: 0)") && pinned.contains("(shared)"),
        "node 3 prints its pinned layout\n{pinned}"
    );
    let metrics = http_get(cluster.node(leader).metrics, "/metrics");
    assert!(
        metrics.contains("raftline_role{role=\"leader\"} 1"),
        "{metrics}"
    );
    let commits = metrics
        .lines()
        .find_map(|l| l.strip_prefix("raftline_append_commit_seconds_count "))
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(
        commits,
        Some(200),
        "one append->commit sample per append\n{metrics}"
    );
    // etcd's names and buckets: wal fsync 1 ms .. 8.192 s, peer round trips per follower.
    for series in [
        "raftline_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"}",
        "raftline_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"}",
        "raftline_server_proposals_failed_total 0",
        "raftline_server_has_leader 1",
    ] {
        assert!(metrics.contains(series), "{series} missing\n{metrics}");
    }
    // Heartbeats (not appends) are timed: the run above may be over before the first one's
    // answer (TLS links come up a handshake later), so wait for it.
    for follower in (1..=3).filter(|&id| id != leader) {
        let count =
            format!("raftline_network_peer_round_trip_time_seconds_count{{To=\"{follower}\"}}");
        wait_counter(cluster.node(leader).metrics, &count, 1);
    }
    // 16 appends in flight on one connection reach the leader together: they are proposed as
    // runs, fewer entries than appends.
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing\n{metrics}"))
    };
    let (entries, batches) = (
        metric("raftline_entry_batches_count "),
        metric("raftline_entry_batches_sum "),
    );
    assert_eq!(batches, 202.0, "every producer batch in exactly one entry");
    assert!(entries < batches, "no run was formed: {entries} entries");
}

/// The body of an HTTP GET (the metrics endpoint closes after each answer).

#[test]
fn acknowledged_records_are_read_back_exactly_once_in_order_from_every_node() {
    produce_and_read_back_everywhere("auto");
}

#[test]
fn the_poll_fallback_without_io_uring_passes_the_same_end_to_end_test() {
    produce_and_read_back_everywhere("poll");
}

#[test]
fn killing_the_leader_mid_stream_loses_nothing_acknowledged_and_the_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3, "auto");
    let first_leader = cluster.wait_leader();
    let mut outcomes: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut next_tag = 1u64;
    let mut killed = false;
    let deadline = Instant::now() + DEADLINE;
    // Produce in rounds to whoever leads; kill the first leader with SIGKILL while a window
    // of appends is in flight to it.
    while outcomes
        .values()
        .filter(|o| matches!(o, Outcome::Acked { .. }))
        .count()
        < 400
    {
        assert!(Instant::now() < deadline, "producing stalled: {outcomes:?}");
        let leader = cluster.wait_leader();
        let kill_now = !killed && outcomes.len() >= 100;
        // The round the kill interrupts is long enough to still be running when it lands.
        let round = if kill_now { 2000 } else { 100 };
        let tags: Vec<u64> = (next_tag..next_tag + round).collect();
        if kill_now {
            assert_eq!(leader, first_leader);
            let addr = cluster.node(leader).client;
            let producer = std::thread::spawn({
                let tags = tags.clone();
                move || append_window(addr, &tags, RECORDS_PER_BATCH, 32)
            });
            // Wait until the leader has taken some of this round, then kill it mid-stream.
            let start = status(addr).unwrap().commit_index;
            let wait = Instant::now() + DEADLINE;
            while status(addr).is_ok_and(|s| s.commit_index < start + 10) {
                assert!(Instant::now() < wait, "the leader stopped committing");
                std::thread::sleep(Duration::from_millis(2));
            }
            cluster.kill(leader);
            killed = true;
            outcomes.extend(producer.join().unwrap());
        } else {
            outcomes.extend(append_window(
                cluster.node(leader).client,
                &tags,
                RECORDS_PER_BATCH,
                32,
            ));
        }
        // Tags never sent are simply skipped: every tag is proposed at most once.
        next_tag += round;
    }
    let new_leader = cluster.wait_leader();
    assert_ne!(new_leader, first_leader, "a new leader took over");

    let end = status(cluster.node(new_leader).client)
        .unwrap()
        .log_end_offset;
    let log = read_all(cluster.node(new_leader).client, end);
    let mut records_of: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(offset, tag) in &log {
        records_of.entry(tag).or_default().push(offset);
    }
    for (tag, outcome) in &outcomes {
        let found = records_of.get(tag).map_or(0, Vec::len) as u64;
        match outcome {
            Outcome::Acked { base, last } => {
                assert_eq!(
                    found, RECORDS_PER_BATCH,
                    "acknowledged append {tag} is in the log once"
                );
                assert_eq!(
                    records_of[tag],
                    (*base..=*last).collect::<Vec<_>>(),
                    "at its offsets"
                );
            }
            Outcome::Rejected => assert_eq!(found, 0, "rejected append {tag} is absent"),
            Outcome::Unknown => assert!(
                found == 0 || found == RECORDS_PER_BATCH,
                "append {tag} with unknown outcome is absent or present exactly once ({found})"
            ),
        }
    }
    let count = |f: fn(&Outcome) -> bool| outcomes.values().filter(|o| f(o)).count();
    eprintln!(
        "leader {first_leader} killed -> {new_leader}: acked {}, rejected {}, unknown {} ({} unknown present)",
        count(|o| matches!(o, Outcome::Acked { .. })),
        count(|o| matches!(o, Outcome::Rejected)),
        count(|o| matches!(o, Outcome::Unknown)),
        outcomes
            .iter()
            .filter(|(t, o)| matches!(o, Outcome::Unknown) && records_of.contains_key(t))
            .count()
    );
    let sent: BTreeSet<u64> = outcomes.keys().copied().collect();
    assert!(
        records_of.keys().all(|t| sent.contains(t)),
        "nothing appears that was not sent"
    );
    assert!(
        outcomes
            .values()
            .any(|o| !matches!(o, Outcome::Acked { .. })),
        "the kill interrupted appends in flight"
    );

    cluster.spawn(first_leader);
    assert_every_node_serves(&cluster, &log);
}

#[test]
fn sigterm_hands_leadership_over_stops_cleanly_and_nodes_resume_from_disk() {
    let mut cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let tags: Vec<u64> = (1..=20).collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, 1, 4);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    for id in 1..=3 {
        assert!(
            cluster.terminate(id),
            "node {id} exits 0 after SIGTERM\n{}",
            cluster.logs()
        );
    }
    for id in 1..=3 {
        cluster.spawn(id);
    }
    let leader = cluster.wait_leader();
    let more: Vec<u64> = (21..=30).collect();
    let outcomes = append_window(cluster.node(leader).client, &more, 1, 4);
    assert_eq!(
        outcomes[&21],
        Outcome::Acked { base: 20, last: 20 },
        "offsets continue after the restart"
    );
    let expected: Vec<(u64, u64)> = (1..=30).map(|t| (t - 1, t)).collect();
    assert_every_node_serves(&cluster, &expected);
}

/// The client library's stated guarantee (an idempotent producer, the default: exactly once)
/// against real servers and a real kill: every acknowledged record is at its acknowledged
/// offset, every record sent is present once (the resends after an unknown outcome are
/// recognised by the new leader), and a subscription sees every offset exactly once.
#[test]
fn the_client_library_keeps_its_exactly_once_promise_across_a_leader_kill() {
    use raftline_log::Record;
    use raftline_netio::client::{ClientConfig, Producer, Subscription};
    use raftline_netio::client_proto::StartFrom;
    use raftline_netio::cluster_id::ClusterId;

    const RECORDS: u64 = 20_000;
    let mut cluster = Cluster::start(3, "auto");
    let first_leader = cluster.wait_leader();
    let config = |nodes: &[&cluster_support::Node]| {
        let bootstrap = nodes.iter().map(|n| n.client.to_string()).collect();
        ClientConfig::new(bootstrap, ClusterId::from_name(cluster_support::CLUSTER))
    };
    let all: Vec<&cluster_support::Node> = cluster.nodes.iter().collect();
    let producer_config = config(&all);
    let producer = std::thread::spawn(move || {
        let mut producer = Producer::new(producer_config);
        let mut acks = Vec::new();
        for seq in 0..RECORDS {
            let record = Record {
                key: None,
                value: format!("seq-{seq}").into_bytes(),
                timestamp_ms: seq,
                headers: vec![],
            };
            assert_eq!(producer.send(record).unwrap(), seq);
            acks.extend(producer.take_acks());
        }
        producer.flush().unwrap();
        acks.extend(producer.take_acks());
        acks
    });
    let leader_addr = cluster.node(first_leader).client;
    let deadline = Instant::now() + DEADLINE;
    while status(leader_addr).is_ok_and(|s| s.log_end_offset < RECORDS / 4) {
        assert!(Instant::now() < deadline, "the producer never got going");
        std::thread::sleep(Duration::from_millis(2));
    }
    cluster.kill(first_leader);
    let acks = producer.join().unwrap();
    assert_eq!(acks.len() as u64, RECORDS, "one answer per record");
    let acked: BTreeMap<u64, u64> = acks
        .iter()
        .map(|a| {
            (
                a.seq,
                *a.result
                    .as_ref()
                    .expect("every record acknowledged in the end"),
            )
        })
        .collect();
    let end = acked.values().max().unwrap() + 1;

    let survivors: Vec<&cluster_support::Node> = cluster
        .nodes
        .iter()
        .filter(|n| n.id != first_leader)
        .collect();
    let mut sub = Subscription::open(config(&survivors), StartFrom::Earliest).unwrap();
    let mut copies: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut next = 0;
    while next < end {
        let record = sub
            .next_record(Some(DEADLINE))
            .unwrap()
            .expect("a record within the deadline");
        assert_eq!(record.offset, next, "every offset exactly once, in order");
        copies
            .entry(record.record.timestamp_ms)
            .or_default()
            .push(record.offset);
        next += 1;
    }
    for seq in 0..RECORDS {
        let at = copies.get(&seq).map(Vec::as_slice).unwrap_or_default();
        assert!(
            at.contains(&acked[&seq]),
            "record {seq} acknowledged at {} but found at {at:?}",
            acked[&seq]
        );
        assert_eq!(at.len(), 1, "record {seq} present {} times", at.len());
    }
    assert_eq!(end, RECORDS, "the log holds the records sent, each once");
}
