//! The client library against an in-process fake cluster: std TcpListeners speaking the client
//! protocol, with a leader that can move, crash mid-append, and nodes that drop a subscription
//! mid-stream. No real node is involved.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftline_log::{Batch, Record};
use raftline_netio::client::{
    status_of_all, AppendDone, Client, ClientConfig, Error, MultiProducer, Producer, Subscription,
};
use raftline_netio::client_proto::{
    decode_request, encode_batches, encode_response, ClientError, NodeRole, NodeStatus, Request,
    Response, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{FrameDecoder, PAYLOAD_BYTES_MAX_DEFAULT};

const NO_LEADER: usize = usize::MAX;

/// Faults a fake node injects once.
#[derive(Default, Clone, Copy)]
struct Faults {
    /// The node, as leader, appends this many batches, then "crashes" on the last one: it drops
    /// the connection without answering and leadership passes to the next node.
    crash_after_appends: Option<u64>,
    /// The node closes a subscription's connection after streaming this many records.
    drop_stream_after_records: Option<u64>,
}

struct FakeCluster {
    id: ClusterId,
    addresses: Vec<String>,
    leader: AtomicUsize,
    log: Mutex<Vec<(u64, Vec<u8>)>>,
    log_start_offset: AtomicU64,
    faults: Mutex<Vec<Faults>>,
    appends_seen: Vec<AtomicU64>,
    /// A muted node reads and discards everything and never answers (a hung process).
    muted: Vec<AtomicBool>,
    /// The leader answers `Busy` (without appending) to this many appends first.
    busy_appends: AtomicU64,
    /// Connections each node accepted, and status requests it answered.
    connections: Vec<AtomicU64>,
    statuses: Vec<AtomicU64>,
    credit_frames: AtomicU64,
    outstanding_bytes_max: AtomicU64,
}

impl FakeCluster {
    /// Starts `nodes` fake nodes on loopback ports chosen by the OS.
    fn start(nodes: usize, leader: usize) -> Arc<FakeCluster> {
        let listeners: Vec<TcpListener> = (0..nodes)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let cluster = Arc::new(FakeCluster {
            id: ClusterId::from_name("fake"),
            addresses: listeners
                .iter()
                .map(|l| l.local_addr().unwrap().to_string())
                .collect(),
            leader: AtomicUsize::new(leader),
            log: Mutex::new(Vec::new()),
            log_start_offset: AtomicU64::new(0),
            faults: Mutex::new(vec![Faults::default(); nodes]),
            appends_seen: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            muted: (0..nodes).map(|_| AtomicBool::new(false)).collect(),
            busy_appends: AtomicU64::new(0),
            connections: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            statuses: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            credit_frames: AtomicU64::new(0),
            outstanding_bytes_max: AtomicU64::new(0),
        });
        for (node, listener) in listeners.into_iter().enumerate() {
            let cluster = cluster.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let cluster = cluster.clone();
                    cluster.connections[node].fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || serve(&cluster, node, stream.unwrap()));
                }
            });
        }
        cluster
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.addresses.clone(), self.id);
        config.request_timeout = Duration::from_secs(5);
        config.failover_timeout = Duration::from_secs(5);
        config.backoff_min = Duration::from_millis(5);
        config.backoff_max = Duration::from_millis(50);
        config
    }

    fn set_faults(&self, node: usize, faults: Faults) {
        self.faults.lock().unwrap()[node] = faults;
    }

    /// Appends a batch of `values` directly (as if produced earlier); returns its base offset.
    fn preload(&self, values: &[&str]) -> u64 {
        let records: Vec<Record> = values.iter().map(|v| record(v)).collect();
        let mut log = self.log.lock().unwrap();
        let base = next_offset(&log).max(self.log_start_offset.load(Ordering::SeqCst));
        let mut batch = Batch::encode(&records).unwrap();
        batch.stamp(base, 1, log.len() as u64 + 1);
        log.push((base, batch.into_bytes()));
        base
    }

    /// Every record in the log as (offset, value).
    fn contents(&self) -> Vec<(u64, String)> {
        let log = self.log.lock().unwrap();
        let mut out = Vec::new();
        for (base, bytes) in log.iter() {
            let records = Batch::decode(bytes.clone()).unwrap().records().unwrap();
            for (i, r) in records.into_iter().enumerate() {
                out.push((base + i as u64, String::from_utf8(r.value).unwrap()));
            }
        }
        out
    }

    fn status(&self, node: usize) -> NodeStatus {
        let leader = self.leader.load(Ordering::SeqCst);
        let log = self.log.lock().unwrap();
        NodeStatus {
            node_id: node as u64 + 1,
            role: if leader == node {
                NodeRole::Leader
            } else {
                NodeRole::Follower
            },
            term: 1,
            leader_id: (leader != NO_LEADER).then(|| leader as u64 + 1),
            leader_client_address: (leader != NO_LEADER).then(|| self.addresses[leader].clone()),
            commit_index: log.len() as u64,
            log_start_offset: self.log_start_offset.load(Ordering::SeqCst),
            log_end_offset: next_offset(&log),
            log_first_index: 1,
            log_last_index: log.len() as u64,
            peers: vec![],
        }
    }
}

fn record(value: &str) -> Record {
    Record {
        key: None,
        value: value.as_bytes().to_vec(),
        timestamp_ms: 0,
        headers: vec![],
    }
}

fn next_offset(log: &[(u64, Vec<u8>)]) -> u64 {
    log.last().map_or(0, |(base, bytes)| {
        base + u64::from(Batch::decode(bytes.clone()).unwrap().header().record_count)
    })
}

struct Stream {
    subscription_id: u64,
    next_offset: u64,
    credit_bytes: i64,
    sent_bytes: u64,
    credited_bytes: u64,
    window_bytes: u64,
    records_sent: u64,
}

/// One client connection to fake node `node`; polls the socket every few milliseconds so it can
/// both answer requests and stream batches.
fn serve(cluster: &FakeCluster, node: usize, mut stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut decoder = FrameDecoder::new(PAYLOAD_BYTES_MAX_DEFAULT);
    let mut sub: Option<Stream> = None;
    let mut buf = vec![0u8; 64 << 10];
    let node_id = node as u64 + 1;
    let reply = |stream: &mut TcpStream, response: Response| {
        let mut out = Vec::new();
        encode_response(&mut out, cluster.id, node_id, &response).unwrap();
        stream.write_all(&out).is_ok()
    };
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
        if cluster.muted[node].load(Ordering::SeqCst) {
            continue;
        }
        while let Some(frame) = decoder.next_frame().unwrap() {
            if frame.header.cluster_id != cluster.id {
                let error = ClientError::WrongCluster {
                    node_cluster_id: cluster.id.0,
                };
                reply(
                    &mut stream,
                    Response::Error {
                        request_id: 0,
                        error,
                    },
                );
                return;
            }
            let answer = match decode_request(frame).unwrap() {
                Request::Append {
                    request_id, batch, ..
                } => {
                    let leader = cluster.leader.load(Ordering::SeqCst);
                    if leader != node {
                        Some(Response::Error {
                            request_id,
                            error: ClientError::NotLeader {
                                leader_id: (leader != NO_LEADER).then(|| leader as u64 + 1),
                                leader_address: (leader != NO_LEADER)
                                    .then(|| cluster.addresses[leader].clone()),
                            },
                        })
                    } else if cluster
                        .busy_appends
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        Some(Response::Error {
                            request_id,
                            error: ClientError::Busy,
                        })
                    } else {
                        let mut batch = Batch::decode(batch).unwrap();
                        let count = u64::from(batch.header().record_count);
                        let base = {
                            let mut log = cluster.log.lock().unwrap();
                            let base = next_offset(&log);
                            batch.stamp(base, 1, log.len() as u64 + 1);
                            log.push((base, batch.into_bytes()));
                            base
                        };
                        let seen = cluster.appends_seen[node].fetch_add(1, Ordering::SeqCst) + 1;
                        let crash = cluster.faults.lock().unwrap()[node].crash_after_appends;
                        if crash == Some(seen) {
                            cluster.faults.lock().unwrap()[node].crash_after_appends = None;
                            cluster
                                .leader
                                .store((node + 1) % cluster.addresses.len(), Ordering::SeqCst);
                            return;
                        }
                        Some(Response::Appended {
                            request_id,
                            base_offset: base,
                            last_offset: (base + count).wrapping_sub(1),
                        })
                    }
                }
                Request::Subscribe {
                    subscription_id,
                    from,
                    window_bytes,
                } => {
                    let start = cluster.log_start_offset.load(Ordering::SeqCst);
                    let end = next_offset(&cluster.log.lock().unwrap());
                    let first = match from {
                        StartFrom::Offset(n) => n,
                        StartFrom::Earliest => start,
                        StartFrom::Latest => end,
                    };
                    if first < start || first > end {
                        Some(Response::Error {
                            request_id: subscription_id,
                            error: ClientError::OffsetOutOfRange {
                                requested: first,
                                earliest: start,
                                end,
                                snapshot_index: None,
                            },
                        })
                    } else {
                        reply(
                            &mut stream,
                            Response::Subscribed {
                                subscription_id,
                                start_offset: first,
                                end_offset: end,
                            },
                        );
                        sub = Some(Stream {
                            subscription_id,
                            next_offset: first,
                            credit_bytes: window_bytes as i64,
                            sent_bytes: 0,
                            credited_bytes: 0,
                            window_bytes,
                            records_sent: 0,
                        });
                        None
                    }
                }
                Request::Credit { bytes, .. } => {
                    cluster.credit_frames.fetch_add(1, Ordering::SeqCst);
                    if let Some(s) = sub.as_mut() {
                        s.credit_bytes += bytes as i64;
                        s.credited_bytes += bytes;
                    }
                    None
                }
                Request::Status { request_id } => {
                    cluster.statuses[node].fetch_add(1, Ordering::SeqCst);
                    Some(Response::StatusReply {
                        request_id,
                        status: cluster.status(node),
                    })
                }
            };
            if let Some(answer) = answer {
                if !reply(&mut stream, answer) {
                    return;
                }
            }
        }
        if let Some(s) = sub.as_mut() {
            while s.credit_bytes > 0 {
                let next = {
                    let log = cluster.log.lock().unwrap();
                    // Checked under the log lock: a node muted before a batch was added never
                    // streams that batch.
                    if cluster.muted[node].load(Ordering::SeqCst) {
                        break;
                    }
                    log.iter()
                        .find(|(base, bytes)| {
                            let count = Batch::decode(bytes.clone()).unwrap().header().record_count;
                            base + u64::from(count) > s.next_offset
                        })
                        .cloned()
                };
                let Some((base, bytes)) = next else { break };
                let count = u64::from(Batch::decode(bytes.clone()).unwrap().header().record_count);
                let mut out = Vec::new();
                encode_batches(&mut out, cluster.id, node_id, s.subscription_id, &[&bytes])
                    .unwrap();
                if stream.write_all(&out).is_err() {
                    return;
                }
                s.credit_bytes -= bytes.len() as i64;
                s.sent_bytes += bytes.len() as u64;
                s.next_offset = base + count;
                s.records_sent += count;
                cluster.outstanding_bytes_max.fetch_max(
                    s.sent_bytes - s.credited_bytes.min(s.sent_bytes),
                    Ordering::SeqCst,
                );
                let drop_after = cluster.faults.lock().unwrap()[node].drop_stream_after_records;
                if drop_after.is_some_and(|n| s.records_sent >= n) {
                    cluster.faults.lock().unwrap()[node].drop_stream_after_records = None;
                    return;
                }
            }
            debug_assert!(s.window_bytes > 0);
        }
    }
}

fn values(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

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

/// Submits one single-record append per value, spread round-robin over the producer's
/// connections, and waits for all; returns each value's outcome by index.
fn multi_produce_all(producer: &mut MultiProducer, values: &[String]) -> Vec<AppendDone> {
    for (i, v) in values.iter().enumerate() {
        let batch: Arc<[u8]> = Arc::from(Batch::encode(&[record(v)]).unwrap().into_bytes());
        producer
            .submit(i % producer.connections(), batch, i as u64)
            .unwrap();
    }
    let mut done = Vec::new();
    assert!(producer.flush(Duration::from_secs(20), &mut done).unwrap());
    assert_eq!(producer.unfinished(), 0);
    done.sort_by_key(|d| d.tag);
    assert_eq!(
        done.iter().map(|d| d.tag).collect::<Vec<_>>(),
        (0..values.len() as u64).collect::<Vec<_>>(),
        "one outcome per append"
    );
    done
}

#[test]
fn multi_producer_commits_every_append_once_over_many_connections_and_times_each() {
    let cluster = FakeCluster::start(3, 1);
    let mut config = cluster.config();
    config.window_appends = 2;
    let mut producer = MultiProducer::connect(config, 8).unwrap();
    let sent = values(60, "m");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    assert_eq!(contents.len(), 60, "nothing duplicated without a failure");
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize]);
        assert_eq!(d.connection, d.tag as usize % 8);
        assert_eq!(d.attempts, 1);
        assert!(d.sent_at <= d.answered_at);
    }
}

#[test]
fn multi_producer_follows_a_moved_leader_and_resends_after_a_crash_losing_nothing() {
    let cluster = FakeCluster::start(3, 0);
    cluster.set_faults(
        0,
        Faults {
            crash_after_appends: Some(5),
            ..Faults::default()
        },
    );
    let mut config = cluster.config();
    config.window_appends = 3;
    let mut producer = MultiProducer::connect(config, 4).unwrap();
    let sent = values(40, "f");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize], "{d:?}");
    }
    for v in &sent {
        let copies = contents.iter().filter(|(_, c)| c == v).count();
        assert!((1..=2).contains(&copies), "{v} present {copies} times");
    }
    assert!(
        done.iter().any(|d| d.attempts > 1),
        "the crash forced resends"
    );
    assert!(cluster.appends_seen[1].load(Ordering::SeqCst) > 0);

    // The leader moves: the old one answers NotLeader with a hint, appends follow it.
    cluster.leader.store(2, Ordering::SeqCst);
    let more = values(10, "g");
    let done = multi_produce_all(&mut producer, &more);
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert!(cluster.appends_seen[2].load(Ordering::SeqCst) >= 10);
}

#[test]
fn multi_producer_resends_only_busy_appends_and_duplicates_nothing() {
    let cluster = FakeCluster::start(1, 0);
    cluster.busy_appends.store(3, Ordering::SeqCst);
    let mut config = cluster.config();
    config.window_appends = 3;
    let mut producer = MultiProducer::connect(config, 2).unwrap();
    let sent = values(30, "b");
    let done = multi_produce_all(&mut producer, &sent);
    let contents = cluster.contents();
    assert_eq!(contents.len(), 30, "a Busy append was appended twice");
    for d in &done {
        let offset = *d.result.as_ref().unwrap();
        assert_eq!(contents[offset as usize].1, sent[d.tag as usize]);
    }
    assert_eq!(cluster.busy_appends.load(Ordering::SeqCst), 0);
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
