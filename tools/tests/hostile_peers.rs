//! Forged peer messages against real `raftline server` processes: a connection that says hello
//! as one of the cluster's nodes and then sends what no correct node could send. Each message is
//! refused (counted in /metrics by reason), never obeyed, and the cluster keeps its leader, its
//! term and its writes.

mod cluster_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::{
    append_window, assert_healthy, closed_within, status, tagged_batch, wait_counter, Cluster,
    Outcome, CLUSTER, DEADLINE,
};
use raftline_log::Batch;
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{encode, FrameHeader, FrameType};
use raftline_netio::peer_codec::encode_message;
use raftline_replicator::{Entry, EntryKind, Message, MessageBody, TERM_MAX};

/// A connection to `peer_addr` that said hello as node `as_node`, then sent `msgs`.
fn forge(peer_addr: SocketAddr, as_node: u64, msgs: &[Message]) -> TcpStream {
    let cluster = ClusterId::from_name(CLUSTER);
    let mut out = Vec::new();
    let hello = FrameHeader {
        frame_type: FrameType::PeerHello,
        cluster_id: cluster,
        sender_id: as_node,
    };
    encode(&mut out, hello, &[]).unwrap();
    for msg in msgs {
        encode_message(&mut out, cluster, msg).unwrap();
    }
    let mut stream = TcpStream::connect(peer_addr).unwrap();
    stream.write_all(&out).unwrap();
    stream
}

/// Waits until node `metrics`' refusal counter for `reason` reaches `at_least`.
fn wait_refused(metrics: SocketAddr, reason: &str, at_least: u64) {
    let series = format!("raftline_peer_messages_refused_total{{reason=\"{reason}\"}}");
    wait_counter(metrics, &series, at_least);
}

#[test]
fn forged_peer_messages_are_refused_and_the_cluster_keeps_its_leader_and_term() {
    let cluster = Cluster::start_insecure_peers(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    let leader_node = cluster.node(leader);

    // 1. An answer with a term no election reaches (u64::MAX wrapped the pre-vote term and
    //    wedged every node for good): refused, our term stays.
    let wild = Message {
        from: f1,
        to: leader,
        term: u64::MAX,
        body: MessageBody::AppendEntriesResponse { result: Ok(1) },
    };
    let beyond = Message {
        term: TERM_MAX + 1,
        ..wild.clone()
    };
    let _a = forge(leader_node.peer, f1, &[wild, beyond]);
    wait_refused(leader_node.metrics, "term_out_of_range", 2);

    // 2. An acknowledgement of entries the leader never had: refused, not a panic.
    let over_ack = Message {
        from: f1,
        to: leader,
        term,
        body: MessageBody::AppendEntriesResponse {
            result: Ok(1_000_000),
        },
    };
    let _b = forge(leader_node.peer, f1, &[over_ack]);
    wait_refused(leader_node.metrics, "ack_beyond_log", 1);

    // 3. TimeoutNow to a follower from the other follower (only its leader may ask it to
    //    campaign): refused, no election.
    let timeout_now = Message {
        from: f2,
        to: f1,
        term,
        body: MessageBody::TimeoutNow,
    };
    let _d = forge(cluster.node(f1).peer, f2, &[timeout_now]);
    wait_refused(cluster.node(f1).metrics, "not_the_leader", 1);

    assert_healthy(&cluster, leader, term, 1..=20);
    // The refusals are logged (rate-limited), with the reason.
    assert!(
        cluster.log_of(leader).contains("peer message refused"),
        "{}",
        cluster.log_of(leader)
    );
}

#[test]
fn a_forged_append_from_the_leaders_id_at_a_wrong_offset_closes_that_connection_only() {
    let cluster = Cluster::start_insecure_peers(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let appended = append_window(cluster.node(leader).client, &[1, 2, 3], 1, 4);
    assert!(appended
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let f = cluster.node(follower);
    // The follower holds the three appends (its status says so once they are applied).
    let deadline = Instant::now() + DEADLINE;
    let s = loop {
        let s = status(f.client).unwrap();
        let l = status(cluster.node(leader).client).unwrap();
        if s.commit_index == l.log_last_index && s.log_last_index == l.log_last_index {
            break s;
        }
        assert!(Instant::now() < deadline, "follower never caught up: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };

    // From the leader's id, in its term, continuing the follower's log at the right index and
    // term, but stamped 1,000 offsets beyond where the log continues: the follower used to
    // panic ("entry … stamped at offset … but the log continues at …").
    let (index, offset) = (s.log_last_index + 1, s.log_end_offset + 1000);
    let mut batch = Batch::decode(tagged_batch(99, 2)).unwrap();
    batch.stamp(offset, s.term, index);
    let forged = Message {
        from: leader,
        to: follower,
        term: s.term,
        body: MessageBody::AppendEntries {
            prev_index: s.log_last_index,
            prev_term: s.term,
            entries: vec![Entry {
                term: s.term,
                index,
                kind: EntryKind::Command,
                payload: batch.into_bytes().into(),
            }],
            commit: s.commit_index,
        },
    };
    let mut stream = forge(f.peer, leader, &[forged]);
    wait_refused(f.metrics, "wrong_offset", 1);
    assert!(
        closed_within(&mut stream, DEADLINE),
        "the forger's connection stays open"
    );
    let closed = "raftline_connections_closed_total{reason=\"peer_refused\"}";
    wait_counter(f.metrics, closed, 1);
    // The follower is alive, nothing forged is in its log, and the cluster goes on.
    assert_healthy(&cluster, leader, s.term, 4..=20);
    let after = status(f.client).unwrap();
    assert!(after.log_end_offset < offset, "{after:?}");
}

/// Control frame `frame_type` of our cluster, as node `as_node`.
fn control(frame_type: FrameType, as_node: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        frame_type,
        cluster_id: ClusterId::from_name(CLUSTER),
        sender_id: as_node,
    };
    encode(&mut out, header, &[]).unwrap();
    out
}

#[test]
fn impostors_holding_peer_slots_do_not_keep_a_restarted_follower_out() {
    let mut cluster = Cluster::start_insecure_peers(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let leader_peer = cluster.node(leader).peer;

    // 70 impostors (more than the 64 peer-port connections main admitted) say hello as the
    // follower and keep their connections alive with keepalives, reconnecting whenever the
    // leader closes one; 16 more connect and say nothing, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicBool::new(false));
    let impostors = {
        let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
        std::thread::spawn(move || {
            let hello = control(FrameType::PeerHello, follower);
            let keepalive = control(FrameType::Keepalive, follower);
            let open = |talks: bool| {
                let mut s = TcpStream::connect(leader_peer).ok()?;
                if talks {
                    s.write_all(&hello).ok()?;
                }
                s.set_nonblocking(true).unwrap();
                Some(s)
            };
            let mut all: Vec<(bool, Option<TcpStream>)> = (0..86).map(|i| (i < 70, None)).collect();
            while !stop.load(Ordering::Relaxed) {
                for (talks, slot) in &mut all {
                    // Closed by the leader: EOF or an error other than "nothing to read".
                    let alive = slot.as_mut().is_some_and(|s| {
                        let mut buf = [0u8; 64];
                        let open = matches!(std::io::Read::read(s, &mut buf),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                        open && (!*talks || s.write_all(&keepalive).is_ok())
                    });
                    if !alive {
                        *slot = open(*talks);
                    }
                }
                ready.store(true, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while !ready.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the impostors never got going");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The real follower restarts while they hold on, and must catch up with new appends.
    cluster.kill(follower);
    cluster.spawn(follower);
    let appended = append_window(cluster.node(leader).client, &[1, 2, 3, 4], 1, 4);
    assert!(appended
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let l = status(cluster.node(leader).client).unwrap();
        let f = status(cluster.node(follower).client).ok();
        let matched = l
            .peers
            .iter()
            .any(|p| p.node_id == follower && p.match_index == l.log_last_index);
        if matched
            && f.as_ref()
                .is_some_and(|f| f.commit_index >= l.log_last_index)
        {
            assert_eq!(l.leader_id, Some(leader), "{l:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted follower never rejoined: leader {l:?}, follower {f:?}\n{}",
            cluster.log_of(leader)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    impostors.join().unwrap();
}

#[test]
fn a_flood_of_undecodable_peer_messages_is_refused_without_flooding_the_log() {
    const CONNECTIONS: u64 = 2_000;
    let cluster = Cluster::start_insecure_peers(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (victim, posing_as) = (followers[0], followers[1]);
    let victim_node = cluster.node(victim);
    let log_before = cluster.log_of(victim).len();

    // Each connection says hello as the other follower, then sends frames whose payload is no
    // peer message; the node refuses the first and closes the connection.
    let mut garbage = Vec::new();
    let cluster_id = ClusterId::from_name(CLUSTER);
    let hello = FrameHeader {
        frame_type: FrameType::PeerHello,
        cluster_id,
        sender_id: posing_as,
    };
    encode(&mut garbage, hello, &[]).unwrap();
    let message = FrameHeader {
        frame_type: FrameType::PeerMessage,
        ..hello
    };
    for i in 0..16u8 {
        encode(&mut garbage, message, &[&[0xF0 | (i & 0xF); 40]]).unwrap();
    }
    let garbage = Arc::new(garbage);
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (addr, garbage) = (victim_node.peer, Arc::clone(&garbage));
            std::thread::spawn(move || {
                for _ in 0..CONNECTIONS / 4 {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream.write_all(&garbage).unwrap();
                    assert!(
                        closed_within(&mut stream, DEADLINE),
                        "a connection sending undecodable messages was kept open"
                    );
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    wait_refused(victim_node.metrics, "undecodable", CONNECTIONS);

    // The flood is in the metric, not the log: one line a second with the count held back,
    // where one line a close (330 KB for these 2,000 before) made the log the attack's amplifier.
    let log = cluster.log_of(victim);
    let grown = log.len() - log_before;
    let lines = log[log_before..]
        .lines()
        .filter(|l| l.contains("peer message refused"))
        .count();
    assert!(
        grown < 64 << 10 && lines >= 1,
        "{grown} bytes of log ({lines} refusal lines) for {CONNECTIONS} undecodable messages:\n{}",
        &log[log.len() - grown.min(3000)..]
    );
    assert!(
        log[log_before..].contains("suppressed"),
        "the held-back refusals are counted in the log"
    );
    cluster_support::assert_healthy(&cluster, leader, term, 1..=20);
    eprintln!("{CONNECTIONS} undecodable peer messages: {grown} bytes of log, {lines} lines");
}
