//! A fake raftline cluster for client tests: std TcpListeners speaking the client protocol, with
//! a leader that can move, crash mid-append, and nodes that drop a subscription mid-stream. No
//! real node is involved. Shared by netio's client tests and bench's load-generator tests
//! (`#[path]`-included there), so both test against the same fake.

// Each test crate that includes this uses a different part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftline_log::{Batch, Record};
use raftline_netio::client::ClientConfig;
use raftline_netio::client_proto::{
    decode_request, encode_batches, encode_response, AccessRole, ClientError, NodeRole, NodeStatus,
    Request, Response, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{FrameDecoder, PAYLOAD_BYTES_MAX_DEFAULT};

pub const NO_LEADER: usize = usize::MAX;

/// Faults a fake node injects once.
#[derive(Default, Clone, Copy)]
pub struct Faults {
    /// The node, as leader, appends this many batches, then "crashes" on the last one: it drops
    /// the connection without answering and leadership passes to the next node.
    pub crash_after_appends: Option<u64>,
    /// The node closes a subscription's connection after streaming this many records.
    pub drop_stream_after_records: Option<u64>,
}

pub struct FakeCluster {
    pub id: ClusterId,
    pub addresses: Vec<String>,
    pub leader: AtomicUsize,
    pub log: Mutex<Vec<(u64, Vec<u8>)>>,
    pub log_start_offset: AtomicU64,
    pub faults: Mutex<Vec<Faults>>,
    pub appends_seen: Vec<AtomicU64>,
    /// A muted node reads and discards everything and never answers (a hung process).
    pub muted: Vec<AtomicBool>,
    /// The leader answers `Busy` (without appending) to this many appends first.
    pub busy_appends: AtomicU64,
    /// Connections each node accepted, and status requests it answered.
    pub connections: Vec<AtomicU64>,
    pub statuses: Vec<AtomicU64>,
    pub credit_frames: AtomicU64,
    pub outstanding_bytes_max: AtomicU64,
}

impl FakeCluster {
    /// Starts `nodes` fake nodes on loopback ports chosen by the OS.
    pub fn start(nodes: usize, leader: usize) -> Arc<FakeCluster> {
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

    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.addresses.clone(), self.id);
        config.request_timeout = Duration::from_secs(5);
        config.failover_timeout = Duration::from_secs(5);
        config.backoff_min = Duration::from_millis(5);
        config.backoff_max = Duration::from_millis(50);
        config
    }

    pub fn set_faults(&self, node: usize, faults: Faults) {
        self.faults.lock().unwrap()[node] = faults;
    }

    /// Appends a batch of `values` directly (as if produced earlier); returns its base offset.
    pub fn preload(&self, values: &[&str]) -> u64 {
        let records: Vec<Record> = values.iter().map(|v| record(v)).collect();
        let mut log = self.log.lock().unwrap();
        let base = next_offset(&log).max(self.log_start_offset.load(Ordering::SeqCst));
        let mut batch = Batch::encode(&records).unwrap();
        batch.stamp(base, 1, log.len() as u64 + 1);
        log.push((base, batch.into_bytes()));
        base
    }

    /// Every record in the log as (offset, value).
    pub fn contents(&self) -> Vec<(u64, String)> {
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

    pub fn status(&self, node: usize) -> NodeStatus {
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
            snapshot: None,
            disk_bytes: 0,
            state_keys: 0,
            state_bytes: 0,
            state_bytes_max: 1 << 30,
            log_write_age_ms: 0,
            disk_full: None,
            disk_stalled: false,
        }
    }
}

pub fn record(value: &str) -> Record {
    Record {
        key: None,
        value: value.as_bytes().to_vec(),
        timestamp_ms: 0,
        headers: vec![],
    }
}

pub fn next_offset(log: &[(u64, Vec<u8>)]) -> u64 {
    log.last().map_or(0, |(base, bytes)| {
        base + u64::from(Batch::decode(bytes.clone()).unwrap().header().record_count)
    })
}

pub struct Stream {
    pub subscription_id: u64,
    pub next_offset: u64,
    pub credit_bytes: i64,
    pub sent_bytes: u64,
    pub credited_bytes: u64,
    pub window_bytes: u64,
    pub records_sent: u64,
}

/// One client connection to fake node `node`; polls the socket every few milliseconds so it can
/// both answer requests and stream batches.
pub fn serve(cluster: &FakeCluster, node: usize, mut stream: TcpStream) {
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
                // Every idempotent producer of the fake gets the same id: the fake stores what
                // it is sent (it does not deduplicate; the node's dedup is tested on real nodes).
                Request::InitProducer { request_id } => Some(Response::ProducerGranted {
                    request_id,
                    producer_id: 1 << 48,
                    epoch: 0,
                }),
                // The fake keeps no snapshot: the clients under test here read the log only.
                Request::SubscribeSnapshot {
                    subscription_id, ..
                }
                | Request::SnapshotNow {
                    request_id: subscription_id,
                } => Some(Response::Error {
                    request_id: subscription_id,
                    error: ClientError::Unavailable {
                        why: "the fake cluster keeps no snapshot".into(),
                    },
                }),
                // Nor a configuration: the clients under test here append and read.
                Request::MemberList { request_id }
                | Request::MemberAdd { request_id, .. }
                | Request::MemberPromote { request_id, .. }
                | Request::MemberRemove { request_id, .. }
                | Request::LeaderTransfer { request_id, .. }
                | Request::MemberUpdate { request_id, .. } => Some(Response::Error {
                    request_id,
                    error: ClientError::Unavailable {
                        why: "the fake cluster has no membership".into(),
                    },
                }),
                // Nor an auth file: any token holds every role.
                Request::Authenticate { request_id, .. } => Some(Response::Authenticated {
                    request_id,
                    role: AccessRole::Admin,
                }),
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

pub fn values(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}
