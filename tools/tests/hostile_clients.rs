//! Clients that attack a running leader's resources, against real `raftline server` processes:
//! a crowd that sends requests and never reads the answers (memory, and leadership: the raft
//! thread serves peers before clients), and a connection that dribbles a frame (slowloris).
//! Memory is the leader's resident set (`VmRSS` in /proc/<pid>/status), a figure of the
//! process, not of timing.

mod cluster_support;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{
    append_window, closed_within, http_get, status, tagged_batch, Cluster, Conn, Outcome, CLUSTER,
    DEADLINE,
};
use raftline_netio::client_proto::{encode_request, AckMode, ClientError, Request, Response};
use raftline_netio::cluster_id::ClusterId;
use socket2::{Domain, Socket, Type};

/// Resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib << 10
}

/// The value of the metric `series` (name and labels; a counter or a gauge) of the node at
/// `metrics`, 0 if absent.
fn counter(metrics: SocketAddr, series: &str) -> u64 {
    let line = format!("{series} ");
    http_get(metrics, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Status requests, back to back, `count` of them.
fn status_requests(count: u64) -> Vec<u8> {
    let cluster = ClusterId::from_name(CLUSTER);
    let mut out = Vec::new();
    for request_id in 0..count {
        encode_request(&mut out, cluster, &Request::Status { request_id }).unwrap();
    }
    out
}

/// A client that writes Status requests as fast as the node takes them and never reads an
/// answer; reconnects when the node closes it or a connect fails (a persistent attacker).
fn flood(client: SocketAddr, stop: Arc<AtomicBool>) {
    let requests = status_requests(256);
    let connect = || -> std::io::Result<TcpStream> {
        // A small receive buffer: the answers pile up in the node, not in this kernel.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_recv_buffer_size(4096)?;
        socket.connect(&client.into())?;
        let s = TcpStream::from(socket);
        s.set_write_timeout(Some(Duration::from_millis(50)))?;
        Ok(s)
    };
    let mut stream = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = stream.as_mut() else {
            stream = connect().ok();
            continue;
        };
        match s.write_all(&requests) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => stream = None,
        }
    }
}

#[test]
fn forty_clients_that_never_read_stay_within_the_buffer_budget_and_the_leader_keeps_leading() {
    const BUDGET_MIB: u64 = 64;
    let budget = BUDGET_MIB.to_string();
    let cluster = Cluster::start_with(3, "auto", &["--connection-buffers-mib", &budget]);
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let term = status(node.client).unwrap().term;
    let pid = node.child.as_ref().unwrap().id();
    // The bound this test sets: the leader at rest, plus the budget, plus 128 MiB for
    // everything else (allocator slack, socket buffers, the flooders' decoders).
    let bound = rss_bytes(pid) + ((BUDGET_MIB + 128) << 20);

    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..40)
        .map(|_| {
            let (client, stop) = (node.client, Arc::clone(&stop));
            std::thread::spawn(move || flood(client, stop))
        })
        .collect();
    // Until the node has closed 40 connections for the budget (every flooder once, on
    // average), the leader's memory stays under the bound.
    let over_budget = "raftline_connections_closed_total{reason=\"over_budget\"}";
    let deadline = Instant::now() + DEADLINE;
    let mut peak = 0;
    while counter(node.metrics, over_budget) < 40 {
        peak = peak.max(rss_bytes(pid));
        assert!(
            peak < bound,
            "leader RSS {} MiB over the bound {} MiB",
            peak >> 20,
            bound >> 20
        );
        assert!(
            Instant::now() < deadline,
            "the budget was never enforced: {}",
            http_get(node.metrics, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Leadership held throughout: same leader, same term, on every node; and appends from a
    // new producer still commit while the flood goes on.
    let outcomes = append_window(node.client, &[1, 2, 3, 4], 1, 4);
    assert!(
        outcomes
            .values()
            .all(|o| matches!(o, Outcome::Acked { .. })),
        "appends during the flood: {outcomes:?}"
    );
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    for n in &cluster.nodes {
        let s = status(n.client).unwrap();
        assert_eq!(
            (s.leader_id, s.term),
            (Some(leader), term),
            "node {}: {s:?}",
            n.id
        );
    }
    eprintln!(
        "leader RSS peak {} MiB (bound {} MiB)",
        peak >> 20,
        bound >> 20
    );
}

#[test]
fn a_connection_that_dribbles_a_frame_after_its_hello_is_closed() {
    let cluster = Cluster::start(1, "auto");
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let mut stream = TcpStream::connect(node.client).unwrap();
    // A whole first frame (the hello a client owes), then an append of 80 KB one byte every
    // 100 ms: 10 bytes a second, far under the least progress rate; it would take hours.
    stream.write_all(&status_requests(1)).unwrap();
    let mut append = Vec::new();
    let request = Request::Append {
        request_id: 1,
        ack: AckMode::Quorum,
        batch: tagged_batch(1, 2000),
    };
    encode_request(&mut append, ClusterId::from_name(CLUSTER), &request).unwrap();
    let dribbler = {
        let mut stream = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in append {
                if stream.write_all(&[byte]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    assert!(
        closed_within(&mut stream, DEADLINE),
        "the dribbling connection was never closed"
    );
    dribbler.join().unwrap();
    let too_slow = "raftline_connections_closed_total{reason=\"too_slow\"}";
    let deadline = Instant::now() + DEADLINE;
    while counter(node.metrics, too_slow) < 1 {
        assert!(Instant::now() < deadline, "no too_slow close counted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_that_sent_a_16_mib_frame_give_its_memory_back_while_they_idle() {
    const CONNS: u64 = 20;
    let cluster = Cluster::start(1, "auto");
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let pid = node.child.as_ref().unwrap().id();
    let rest = rss_bytes(pid);
    // An append just under the 16 MiB frame limit, far over the 1 MiB batch limit: the node
    // reads it whole, answers TooLarge and keeps the connection.
    let mut huge = Vec::new();
    let request = Request::Append {
        request_id: 1,
        ack: AckMode::Quorum,
        batch: vec![0; 15 << 20],
    };
    encode_request(&mut huge, ClusterId::from_name(CLUSTER), &request).unwrap();
    let mut conns: Vec<_> = (0..CONNS)
        .map(|_| {
            let mut c = Conn::connect(node.client).unwrap();
            c.stream.set_read_timeout(Some(DEADLINE)).unwrap();
            c.stream.write_all(&huge).unwrap();
            c
        })
        .collect();
    for c in &mut conns {
        match c.recv().unwrap() {
            Response::Error {
                error: ClientError::TooLarge { .. },
                ..
            } => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    // While all of them stay open and idle, each holds at most what any connection keeps between
    // frames (a 2 MiB decoder), not the 15 MiB it once needed (300 MiB for the 20), and the
    // process gives the memory back.
    let held_max = CONNS * (2 << 20) + (1 << 20);
    let rss_max = rest + held_max + (128 << 20);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (held, rss) = (
            counter(node.metrics, "raftline_connection_buffer_bytes"),
            rss_bytes(pid),
        );
        if held <= held_max && rss <= rss_max {
            eprintln!(
                "idle after 16 MiB frames: buffers {} MiB, RSS {} MiB (at rest {} MiB)",
                held >> 20,
                rss >> 20,
                rest >> 20
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle connections still hold {} MiB of buffers (bound {} MiB), RSS {} MiB (bound {} MiB)",
            held >> 20,
            held_max >> 20,
            rss >> 20,
            rss_max >> 20
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // They are still served.
    for c in &mut conns {
        c.send(&Request::Status { request_id: 2 }).unwrap();
        assert!(matches!(c.recv().unwrap(), Response::StatusReply { .. }));
    }
}

/// Raises this process's descriptor limit to its hard limit (1,024 sockets and a node's files
/// need more than the usual soft limit of 1,024); children inherit it.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur = limit.rlim_max;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

#[test]
fn a_thousand_idle_keepalive_connections_from_one_host_leave_room_for_a_producer_from_another() {
    raise_fd_limit();
    let cluster = Cluster::start(1, "auto");
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let keepalive = {
        let mut out = Vec::new();
        let header = raftline_netio::frame::FrameHeader {
            frame_type: raftline_netio::frame::FrameType::Keepalive,
            cluster_id: ClusterId::from_name(CLUSTER),
            sender_id: 0,
        };
        raftline_netio::frame::encode(&mut out, header, &[]).unwrap();
        out
    };
    // 1,024 connections from 127.0.0.1, each one keepalive, then idle: as many as the node's
    // client slots. At most `--clients-per-source-max` (256) of them are kept.
    let squatters: Vec<TcpStream> = (0..1024)
        .filter_map(|_| {
            let mut s = TcpStream::connect(node.client).ok()?;
            s.write_all(&keepalive).ok()?;
            Some(s)
        })
        .collect();
    let refused = "raftline_connections_closed_total{reason=\"too_many_from_source\"}";
    let deadline = Instant::now() + DEADLINE;
    while counter(node.metrics, refused) < 1024 - 256 {
        assert!(
            Instant::now() < deadline,
            "the squatters were not limited by source: {}",
            http_get(node.metrics, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A producer from another address (all of 127.0.0.0/8 is loopback) gets in at once.
    let producer = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    producer
        .bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    producer.connect(&node.client.into()).unwrap();
    let mut conn = cluster_support::Conn::from_stream(TcpStream::from(producer));
    conn.send(&Request::Append {
        request_id: 1,
        ack: AckMode::Quorum,
        batch: tagged_batch(1, 1),
    })
    .unwrap();
    let answer = conn.recv().unwrap();
    assert!(
        matches!(
            answer,
            raftline_netio::client_proto::Response::Appended { request_id: 1, .. }
        ),
        "{answer:?}"
    );
    drop(squatters);
}
