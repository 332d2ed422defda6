//! The orchestrator probes on the metrics listener, against real `raftline server` processes:
//! `/livez` answers while the raft thread turns, `/readyz` only while the node knows a leader,
//! and the metrics say which I/O path each layer runs and whether a leader is known.

mod cluster_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use cluster_support::{http_get, Cluster, DEADLINE};

/// The HTTP status code and body of `GET path`.
fn probe(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer[9..12].parse().unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

#[test]
fn probes_follow_liveness_and_leadership_and_metrics_name_the_io_backends() {
    let mut cluster = Cluster::start(3, "poll");
    let leader = cluster.wait_leader();
    for n in &cluster.nodes {
        let deadline = Instant::now() + DEADLINE;
        while probe(n.metrics, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "node {} never ready", n.id);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(probe(n.metrics, "/livez"), (200, "ok\n".to_string()));
        let metrics = http_get(n.metrics, "/metrics");
        assert!(
            metrics.contains("raftline_server_has_leader 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("raftline_io_backend{layer=\"net\",backend=\"poll\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("raftline_io_backend{layer=\"log\","),
            "{metrics}"
        );
    }

    // Without a quorum the survivor stays live but stops being ready once it gives up on the
    // leader (its election timeout), and says why.
    let survivor = (1..=3).find(|&id| id != leader).unwrap();
    for id in (1..=3).filter(|&id| id != survivor) {
        cluster.kill(id);
    }
    let addr = cluster.node(survivor).metrics;
    let deadline = Instant::now() + DEADLINE;
    let (code, why) = loop {
        let answer = probe(addr, "/readyz");
        if answer.0 != 200 {
            break answer;
        }
        assert!(Instant::now() < deadline, "still ready without a quorum");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(code, 503);
    assert!(why.contains("no leader known"), "{why}");
    assert_eq!(probe(addr, "/livez").0, 200);
    let metrics = http_get(addr, "/metrics");
    assert!(
        metrics.contains("raftline_server_has_leader 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("raftline_server_leader_changes_seen_total 0"),
        "{metrics}"
    );
}

/// `raftline server` for a one-voter cluster on `peer`/`client`, its data under `dir`.
fn single_node(
    dir: &std::path::Path,
    peer: std::net::SocketAddr,
    client: std::net::SocketAddr,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_raftline"));
    cmd.args([
        "server",
        "--id",
        "1",
        "--cluster-id",
        cluster_support::CLUSTER,
    ])
    .args(["--peers", &format!("1={peer}")])
    .args(["--peer-clients", &format!("1={client}")])
    .args(["--client-listen", &client.to_string()])
    .arg("--peer-insecure")
    .arg("--data-dir")
    .arg(dir.join("data"));
    cmd
}

#[test]
fn under_systemd_the_server_says_ready_once_it_has_joined_and_stopping_on_sigterm() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let (peer, client) = (cluster_support::free_port(), cluster_support::free_port());
    let mut server = single_node(dir.path(), peer, client)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("no READY=1 within the deadline");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains("leader is node 1"), "{ready}");
    // READY comes only once the node leads (a single voter elects itself).
    let status = cluster_support::status(client).unwrap();
    assert_eq!(status.leader_id, Some(1), "{status:?}");

    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let n = socket.recv(&mut buf).expect("no STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(server.wait().unwrap().success());
}

#[test]
fn a_busy_listen_address_is_retried_until_it_is_free() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (peer, client) = (cluster_support::free_port(), cluster_support::free_port());
    // Someone (a previous process of this node, say) still holds the client port.
    let holder = std::net::TcpListener::bind(client).unwrap();
    let mut server = single_node(dir.path(), peer, client)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server exited instead of retrying"
        );
        if line.contains("listen address in use") {
            break;
        }
    }
    drop(holder);
    let deadline = Instant::now() + DEADLINE;
    while cluster_support::status(client).map_or(true, |s| s.leader_id != Some(1)) {
        assert!(Instant::now() < deadline, "the node never came up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    // Keep draining its output so it never blocks on a full pipe while stopping.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    assert!(server.wait().unwrap().success());
}
