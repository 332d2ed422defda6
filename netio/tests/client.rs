//! The client library against an in-process fake cluster: std TcpListeners speaking the client
//! protocol, with a leader that can move, crash mid-append, and nodes that drop a subscription
//! mid-stream. No real node is involved.

mod support;

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Duration;

use raftline_netio::client::{status_of_all, Client, Error, Producer, Subscription};
use raftline_netio::client_proto::{ClientError, NodeRole, StartFrom};
use raftline_netio::cluster_id::ClusterId;

use support::{record, values, FakeCluster, Faults, NO_LEADER};

#[test]
fn client_finds_the_leader_from_a_follower_bootstrap_address() {
    let cluster = FakeCluster::start(3, 2);
    let mut config = cluster.config();
    config.bootstrap = vec![cluster.addresses[0].clone()];
    let mut client = Client::connect(config).unwrap();
    let offsets = client.append(&[record("a"), record("b")]).unwrap();
    assert_eq!((offsets.base_offset, offsets.last_offset), (0, 1));
    assert_eq!(cluster.appends_seen[2].load(Ordering::SeqCst), 1);
    assert_eq!(
        cluster.contents(),
        vec![(0, "a".to_string()), (1, "b".to_string())]
    );
}

#[test]
fn a_client_waiting_out_an_election_asks_again_on_the_connections_it_opened() {
    let cluster = FakeCluster::start(3, NO_LEADER);
    let electing = cluster.clone();
    let elect = std::thread::spawn(move || {
        // Several rounds of "no leader yet" first (polled: the client's pace is its own).
        while electing.statuses[0].load(Ordering::SeqCst) < 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
        electing.leader.store(2, Ordering::SeqCst);
    });
    let mut client = Client::connect(cluster.config()).unwrap();
    elect.join().unwrap();
    client.append(&[record("after the election")]).unwrap();
    assert_eq!(cluster.appends_seen[2].load(Ordering::SeqCst), 1);
    assert!(cluster.statuses[0].load(Ordering::SeqCst) >= 4);
    for node in 0..3 {
        assert_eq!(
            cluster.connections[node].load(Ordering::SeqCst),
            1,
            "node {node}: one connection through every round (the new leader's is the one kept)"
        );
    }
}

#[test]
fn not_leader_answer_redirects_the_append_to_the_hinted_leader() {
    let cluster = FakeCluster::start(3, 0);
    let mut client = Client::connect(cluster.config()).unwrap();
    client.append(&[record("first")]).unwrap();
    cluster.leader.store(1, Ordering::SeqCst);
    let offsets = client.append(&[record("second")]).unwrap();
    assert_eq!(offsets.base_offset, 1);
    assert_eq!(cluster.appends_seen[1].load(Ordering::SeqCst), 1);
    assert_eq!(
        cluster.contents(),
        vec![(0, "first".to_string()), (1, "second".to_string())]
    );
}

/// Sends `values` through a producer and returns the acknowledged offset of each, by sequence.
fn produce_all(producer: &mut Producer, values: &[String]) -> Vec<u64> {
    for (i, v) in values.iter().enumerate() {
        assert_eq!(producer.send(record(v)).unwrap(), i as u64);
    }
    producer.flush().unwrap();
    assert_eq!(producer.unanswered(), 0);
    let mut acks = producer.take_acks();
    acks.sort_by_key(|a| a.seq);
    assert_eq!(acks.len(), values.len());
    acks.iter()
        .enumerate()
        .map(|(i, a)| {
            assert_eq!(a.seq, i as u64);
            *a.result.as_ref().unwrap()
        })
        .collect()
}

#[test]
fn producer_batches_and_pipelines_and_returns_every_records_offset() {
    let cluster = FakeCluster::start(3, 1);
    let mut config = cluster.config();
    config.window_appends = 4;
    config.batch_records_max = 10;
    config.linger = Duration::from_secs(60);
    let mut producer = Producer::new(config);
    let sent = values(95, "p");
    let offsets = produce_all(&mut producer, &sent);
    assert_eq!(offsets, (0..95).collect::<Vec<u64>>());
    let contents = cluster.contents();
    assert_eq!(
        contents,
        sent.iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(cluster.log.lock().unwrap().len(), 10);
}

#[test]
fn leader_crash_mid_stream_loses_no_acknowledged_record_and_may_duplicate() {
    let cluster = FakeCluster::start(3, 0);
    cluster.set_faults(
        0,
        Faults {
            crash_after_appends: Some(3),
            ..Faults::default()
        },
    );
    let mut config = cluster.config();
    config.window_appends = 3;
    config.batch_records_max = 5;
    config.linger = Duration::from_secs(60);
    let mut producer = Producer::new(config);
    let sent = values(50, "c");
    let offsets = produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    // Every acknowledged record is at its acknowledged offset.
    for (seq, offset) in offsets.iter().enumerate() {
        assert_eq!(contents[*offset as usize].1, sent[seq], "seq {seq}");
    }
    // Nothing lost, nothing more than twice, and the batch the crash left unanswered is there
    // twice (at-least-once, as documented).
    for v in &sent {
        let copies = contents.iter().filter(|(_, c)| c == v).count();
        assert!((1..=2).contains(&copies), "{v} present {copies} times");
    }
    assert_eq!(
        contents.len(),
        55,
        "exactly the unanswered batch of 5 is duplicated"
    );
    assert!(cluster.appends_seen[1].load(Ordering::SeqCst) > 0);
}

#[test]
fn subscription_resumes_on_another_node_after_a_dropped_connection() {
    let cluster = FakeCluster::start(3, 0);
    for b in 0..30 {
        let batch = values(3, &format!("s{b}"));
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        cluster.preload(&refs);
    }
    cluster.set_faults(
        0,
        Faults {
            drop_stream_after_records: Some(20),
            ..Faults::default()
        },
    );
    let client = Client::connect(cluster.config()).unwrap();
    let subscription = client.subscribe(StartFrom::Earliest).unwrap();
    let got: Vec<(u64, String)> = subscription
        .take(90)
        .map(|r| {
            let r = r.unwrap();
            (r.offset, String::from_utf8(r.record.value).unwrap())
        })
        .collect();
    assert_eq!(got, cluster.contents());
}

#[test]
fn subscription_from_an_offset_inside_a_batch_skips_the_records_before_it() {
    let cluster = FakeCluster::start(1, 0);
    cluster.preload(&["a", "b", "c"]);
    cluster.preload(&["d", "e", "f"]);
    let client = Client::connect(cluster.config()).unwrap();
    let mut subscription = client.subscribe(StartFrom::Offset(4)).unwrap();
    let first = subscription.next().unwrap().unwrap();
    assert_eq!(
        (first.offset, first.record.value.as_slice()),
        (4, &b"e"[..])
    );
    assert_eq!(subscription.next_offset(), Some(5));
    assert_eq!(subscription.end_offset_at_start(), 6);
}

#[test]
fn callback_subscription_sees_records_appended_after_it_started_and_stops_on_break() {
    let cluster = FakeCluster::start(3, 0);
    cluster.preload(&["old"]);
    let mut client = Client::connect(cluster.config()).unwrap();
    let subscription = client.subscribe(StartFrom::Latest).unwrap();
    client
        .append(&[record("n0"), record("n1"), record("n2")])
        .unwrap();
    let mut seen = Vec::new();
    subscription
        .for_each_record(|r| {
            seen.push((r.offset, String::from_utf8(r.record.value).unwrap()));
            if seen.len() == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(
        seen,
        vec![(1, "n0".into()), (2, "n1".into()), (3, "n2".into())]
    );
}

#[test]
fn a_slow_consumer_bounds_what_the_node_sends_ahead() {
    let cluster = FakeCluster::start(1, 0);
    let big = "x".repeat(200);
    for _ in 0..100 {
        cluster.preload(&[&big]);
    }
    let batch_bytes = cluster.log.lock().unwrap()[0].1.len() as u64;
    let mut config = cluster.config();
    config.subscribe_window_bytes = 1024;
    let subscription = Subscription::open(config, StartFrom::Earliest).unwrap();
    let got = subscription
        .take(100)
        .map(|r| r.unwrap().offset)
        .collect::<Vec<_>>();
    assert_eq!(got, (0..100).collect::<Vec<u64>>());
    let outstanding = cluster.outstanding_bytes_max.load(Ordering::SeqCst);
    assert!(
        outstanding <= 1024 + batch_bytes,
        "node ran {outstanding} bytes ahead with a 1024-byte window"
    );
    assert!(cluster.credit_frames.load(Ordering::SeqCst) >= 10);
}

#[test]
fn offset_below_the_log_start_is_a_typed_error_naming_the_earliest_offset() {
    let cluster = FakeCluster::start(1, 0);
    cluster.log_start_offset.store(10, Ordering::SeqCst);
    cluster.preload(&["a"]);
    let client = Client::connect(cluster.config()).unwrap();
    match client.subscribe(StartFrom::Offset(3)).err() {
        Some(Error::Refused {
            error:
                ClientError::OffsetOutOfRange {
                    requested: 3,
                    earliest: 10,
                    end: 11,
                    ..
                },
            ..
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
}

/// An address that refuses connections: a bound socket that never listens, kept open so no other
/// test can take its port while it lives.
fn refusing_address() -> (socket2::Socket, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let address = socket
        .local_addr()
        .unwrap()
        .as_socket()
        .unwrap()
        .to_string();
    (socket, address)
}

#[test]
fn status_reports_every_node_and_unreachable_ones_as_errors() {
    let cluster = FakeCluster::start(3, 1);
    let mut config = cluster.config();
    let (_reserved, dead) = refusing_address();
    config.bootstrap.push(dead.clone());
    let results = status_of_all(&config);
    assert_eq!(results.len(), 4);
    let roles: Vec<Option<NodeRole>> = results
        .iter()
        .map(|r| r.result.as_ref().ok().map(|s| s.role))
        .collect();
    assert_eq!(
        roles,
        vec![
            Some(NodeRole::Follower),
            Some(NodeRole::Leader),
            Some(NodeRole::Follower),
            None
        ]
    );
    assert_eq!(results[3].address, dead);
}

#[test]
fn no_leader_reachable_says_what_to_do() {
    let cluster = FakeCluster::start(2, NO_LEADER);
    let mut config = cluster.config();
    let (_reserved, dead) = refusing_address();
    config.bootstrap.push(dead);
    config.failover_timeout = Duration::from_millis(200);
    let err = Client::connect(config.clone())
        .err()
        .expect("no leader exists");
    let text = err.to_string();
    assert!(matches!(err, Error::NoLeader { .. }), "{text}");
    assert!(text.contains(&config.bootstrap.join(",")), "{text}");
    assert!(text.contains("try `raftline status`"), "{text}");
}

#[test]
fn a_node_of_another_cluster_is_refused() {
    let cluster = FakeCluster::start(1, 0);
    let mut config = cluster.config();
    config.cluster_id = ClusterId::from_name("other");
    config.failover_timeout = Duration::from_millis(100);
    let err = Client::connect(config).err().expect("wrong cluster");
    assert!(err.to_string().contains("belongs to cluster"), "{err}");
}

#[test]
fn an_unresponsive_leader_is_abandoned_after_the_request_timeout() {
    let cluster = FakeCluster::start(3, 0);
    let mut config = cluster.config();
    config.request_timeout = Duration::from_millis(300);
    let mut client = Client::connect(config).unwrap();
    client.append(&[record("a")]).unwrap();
    cluster.muted[0].store(true, Ordering::SeqCst);
    cluster.leader.store(1, Ordering::SeqCst);
    let offsets = client.append(&[record("b")]).unwrap();
    assert_eq!(offsets.base_offset, 1);
    assert_eq!(
        cluster.contents(),
        vec![(0, "a".to_string()), (1, "b".to_string())]
    );
}

#[test]
fn a_silent_subscription_node_is_probed_and_left_for_another() {
    let cluster = FakeCluster::start(2, 0);
    cluster.preload(&["a", "b", "c"]);
    let mut config = cluster.config();
    config.idle_probe_interval = Duration::from_millis(50);
    config.request_timeout = Duration::from_millis(300);
    let mut subscription = Subscription::open(config, StartFrom::Earliest).unwrap();
    for want in 0..3 {
        assert_eq!(subscription.next().unwrap().unwrap().offset, want);
    }
    assert_eq!(
        subscription.node_address(),
        Some(cluster.addresses[0].as_str())
    );
    cluster.muted[0].store(true, Ordering::SeqCst);
    cluster.preload(&["d", "e"]);
    let rest: Vec<u64> = (&mut subscription)
        .take(2)
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(rest, vec![3, 4]);
    assert_eq!(
        subscription.node_address(),
        Some(cluster.addresses[1].as_str())
    );
}

#[test]
fn busy_answers_delay_only_the_refused_batches_and_duplicate_nothing() {
    let cluster = FakeCluster::start(1, 0);
    cluster.busy_appends.store(3, Ordering::SeqCst);
    let mut config = cluster.config();
    config.window_appends = 3;
    config.batch_records_max = 5;
    config.linger = Duration::from_secs(60);
    let mut producer = Producer::new(config);
    let sent = values(50, "b");
    let offsets = produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    assert_eq!(contents.len(), 50, "a Busy batch was appended twice");
    for (seq, offset) in offsets.iter().enumerate() {
        assert_eq!(contents[*offset as usize].1, sent[seq], "seq {seq}");
    }
    assert_eq!(cluster.busy_appends.load(Ordering::SeqCst), 0);
}

#[test]
fn a_failed_append_is_not_sent_again_by_the_next_one() {
    let cluster = FakeCluster::start(2, 0);
    let mut config = cluster.config();
    config.failover_timeout = Duration::from_millis(200);
    let mut client = Client::connect(config).unwrap();
    cluster.leader.store(NO_LEADER, Ordering::SeqCst);
    assert!(matches!(
        client.append(&[record("lost")]),
        Err(Error::NoLeader { .. })
    ));
    cluster.leader.store(1, Ordering::SeqCst);
    let offsets = client.append(&[record("kept")]).unwrap();
    assert_eq!(offsets.base_offset, 0);
    assert_eq!(cluster.contents(), vec![(0, "kept".to_string())]);
}

#[test]
fn a_batch_over_the_frame_limit_is_refused_before_it_is_sent() {
    let cluster = FakeCluster::start(1, 0);
    let mut config = cluster.config();
    config.frame_payload_bytes_max = 4096;
    let mut client = Client::connect(config).unwrap();
    let big = "x".repeat(5000);
    assert!(matches!(
        client.append(&[record(&big)]),
        Err(Error::Batch(raftline_log::BatchError::TooLarge { .. }))
    ));
    assert_eq!(cluster.appends_seen[0].load(Ordering::SeqCst), 0);
    client.append(&[record("small")]).unwrap();
}

#[test]
fn next_batch_delivers_whole_batches_and_the_rest_of_one_partly_read() {
    let cluster = FakeCluster::start(1, 0);
    cluster.preload(&["a", "b", "c"]);
    cluster.preload(&["d", "e"]);
    let mut subscription = Subscription::open(cluster.config(), StartFrom::Offset(1)).unwrap();
    let first = subscription
        .next_batch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.first_offset(), first.next_offset()),
        (1, 3),
        "mid-batch start"
    );
    let values: Vec<String> = first
        .records()
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.record.value).unwrap())
        .collect();
    assert_eq!(values, ["b", "c"]);
    let d = subscription
        .next_record(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(d.offset, 3);
    let rest = subscription
        .next_batch(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!((rest.first_offset(), rest.record_count()), (4, 1));
    assert_eq!(subscription.next_offset(), Some(5));
}
