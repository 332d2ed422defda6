//! Bad input on both ports of a running node: garbage, a frame over the size limit, a wrong
//! magic and a wrong version, a valid frame of another cluster, a peer hello from a node that is
//! not configured, and a connection that says nothing. Each closes only its own connection with a
//! logged reason; the node keeps leading, replicating and serving other clients.

mod cluster_support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use cluster_support::{
    append_window, closed_within, http_get, read_all, status, Cluster, Outcome, CLUSTER,
};
use raftline_netio::client_proto::{
    decode_response, encode_request, ClientError, NodeRole, Request, Response,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{
    encode, FrameDecoder, FrameHeader, FrameType, PAYLOAD_BYTES_MAX_DEFAULT,
};

/// How long a misbehaving connection may stay open: the silent one lasts until the node's
/// hello timeout (5 s).
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

fn status_frame(cluster: ClusterId) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, cluster, &Request::Status { request_id: 1 }).unwrap();
    out
}

fn hello_frame(cluster: ClusterId, sender_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let header = FrameHeader {
        frame_type: FrameType::PeerHello,
        cluster_id: cluster,
        sender_id,
    };
    encode(&mut out, header, &[]).unwrap();
    out
}

/// The inputs every port gets, by name; `valid` is a well-formed frame for that port.
fn bad_inputs(valid: Vec<u8>, other_cluster_frame: Vec<u8>) -> Vec<(&'static str, Vec<u8>)> {
    let mut oversize = valid.clone();
    oversize[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut wrong_version = valid.clone();
    wrong_version[4] = 99;
    let mut wrong_magic = valid;
    wrong_magic[0] ^= 0xFF;
    vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("oversize frame", oversize),
        ("wrong version", wrong_version),
        ("wrong magic", wrong_magic),
        ("another cluster's frame", other_cluster_frame),
        ("silent connection", Vec::new()),
    ]
}

fn attack(
    addr: SocketAddr,
    inputs: Vec<(&'static str, Vec<u8>)>,
) -> Vec<(&'static str, TcpStream)> {
    inputs
        .into_iter()
        .map(|(name, bytes)| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.write_all(&bytes).unwrap();
            (name, stream)
        })
        .collect()
}

/// Connections the node at `metrics` closed for what they sent (every reason but the remote
/// going away, an I/O error, the node's own close and a replaced peer connection).
fn bad_input_closes(metrics: SocketAddr) -> u64 {
    http_get(metrics, "/metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("raftline_connections_closed_total{reason=\""))
        .filter_map(|l| l.split_once("\"} "))
        .filter(|(reason, _)| {
            !["remote_closed", "io_error", "by_node", "replaced"].contains(reason)
        })
        .map(|(_, n)| n.trim().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn bad_input_on_either_port_closes_only_that_connection_and_the_node_keeps_serving() {
    // Plaintext peers: the inputs are frames (on a TLS peer port every one is a failed
    // handshake, tools/tests/tls.rs).
    let cluster = Cluster::start_insecure_peers(3, "auto", &[]);
    let leader = cluster.wait_leader();
    let node = cluster.node(leader);
    let ours = ClusterId::from_name(CLUSTER);
    let theirs = ClusterId::from_name("someone-else");

    let mut client_inputs = bad_inputs(status_frame(ours), status_frame(theirs));
    client_inputs.push(("peer frame on the client port", hello_frame(ours, 2)));
    let mut peer_inputs = bad_inputs(hello_frame(ours, 2), hello_frame(theirs, 2));
    peer_inputs.push(("hello from an unknown node", hello_frame(ours, 42)));
    peer_inputs.push(("client frame on the peer port", status_frame(ours)));

    let mut open = attack(node.client, client_inputs);
    open.extend(attack(node.peer, peer_inputs));

    // While the bad connections are open, the node serves a well-behaved client.
    let tags: Vec<u64> = (1..=50).collect();
    let outcomes = append_window(node.client, &tags, 3, 8);
    assert!(
        outcomes
            .values()
            .all(|o| matches!(o, Outcome::Acked { .. })),
        "appends during the attack: {outcomes:?}"
    );

    let closed = open.len() as u64;
    for (name, mut stream) in open {
        assert!(
            closed_within(&mut stream, CLOSE_WITHIN),
            "{name}: the node did not close the connection"
        );
    }
    // Each close is counted by its reason; the log names the reason once a second (warnings
    // for what a remote sent are rate-limited: hostile_peers.rs floods them).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bad_input_closes(node.metrics) < closed {
        assert!(
            std::time::Instant::now() < deadline,
            "{closed} bad inputs, closes counted:\n{}",
            http_get(node.metrics, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        cluster
            .log_of(leader)
            .contains("WARN raftline_netio::net: closing"),
        "no close reason logged\n{}",
        cluster.log_of(leader)
    );

    // Still the leader of the same healthy cluster, replicating to both followers.
    let after = status(node.client).unwrap();
    assert_eq!(after.role, NodeRole::Leader, "{after:?}");
    assert!(after.peers.iter().all(|p| p.connected), "{after:?}");
    let more: Vec<u64> = (51..=60).collect();
    let outcomes = append_window(node.client, &more, 3, 8);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let expected: Vec<(u64, u64)> = (1..=60u64)
        .flat_map(|tag| (0..3).map(move |i| ((tag - 1) * 3 + i, tag)))
        .collect();
    for n in &cluster.nodes {
        let deadline = std::time::Instant::now() + CLOSE_WITHIN;
        while status(n.client).map_or(true, |s| s.log_end_offset < 180) {
            assert!(std::time::Instant::now() < deadline, "node {} behind", n.id);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read_all(n.client, 180), expected, "node {}", n.id);
    }
}

#[test]
fn a_node_started_on_another_nodes_data_directory_refuses_and_says_so() {
    let mut cluster = Cluster::start(1, "auto");
    cluster.wait_leader();
    assert!(cluster.terminate(1));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftline"))
        .arg("server")
        .args(["--id", "2", "--cluster-id", CLUSTER])
        .args(["--peers", &format!("2={}", cluster.node(1).peer)])
        .args(["--client-listen", &cluster.node(1).client.to_string()])
        .arg("--peer-insecure")
        .arg("--data-dir")
        .arg(&cluster.node(1).data_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("belongs to cluster")
            && stderr.contains("node 1")
            && stderr.contains("node 2"),
        "{stderr}"
    );
}

#[test]
fn an_election_timeout_under_five_heartbeats_is_refused_with_an_explanation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftline"))
        .arg("server")
        .args([
            "--id",
            "1",
            "--cluster-id",
            CLUSTER,
            "--peers",
            "1=127.0.0.1:1",
        ])
        .args([
            "--client-listen",
            "127.0.0.1:2",
            "--data-dir",
            "/nonexistent/never-created",
        ])
        .args(["--heartbeat-ms", "100", "--election-timeout-min-ms", "200"])
        .arg("--peer-insecure")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("under 5x the heartbeat"), "{stderr}");
}

#[test]
fn an_undecodable_request_is_answered_with_the_reason_before_the_close() {
    let cluster = Cluster::start(1, "auto");
    cluster.wait_leader();
    let mut stream = TcpStream::connect(cluster.node(1).client).unwrap();
    // A whole, checksummed Status frame whose payload is no archived request.
    let header = FrameHeader {
        frame_type: FrameType::Status,
        cluster_id: ClusterId::from_name(CLUSTER),
        sender_id: 0,
    };
    let mut out = Vec::new();
    encode(&mut out, header, &[b"not an archive"]).unwrap();
    stream.write_all(&out).unwrap();
    stream.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut received).unwrap();
    let mut decoder = FrameDecoder::new(PAYLOAD_BYTES_MAX_DEFAULT);
    decoder.feed(&received);
    let frame = decoder
        .next_frame()
        .unwrap()
        .expect("an answer before the close");
    match decode_response(frame).unwrap() {
        Response::Error {
            request_id: 0,
            error: ClientError::BadRequest { why },
        } => assert!(why.contains("undecodable request"), "{why}"),
        other => panic!("expected the reason, got {other:?}"),
    }
}
