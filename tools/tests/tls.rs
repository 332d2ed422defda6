//! Mutual TLS on the peer port against real `raftline server` processes: a node presenting
//! another member's certificate cannot say hello as the victim, a certificate from a foreign CA
//! is refused at the handshake, a rotated CA bundle takes effect without a restart, and a server
//! started with neither TLS files nor `--peer-insecure` refuses to start.

mod cluster_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster_support::{
    append_window, assert_healthy, free_port, status, wait_counter, Cluster, Outcome, CLUSTER,
    DEADLINE,
};
use raftline_bench::dev_certs::{self, DevCa};
use raftline_netio::net::PeerTlsFiles;

/// A node process killed when dropped (also when a test fails).
struct Impostor(Child);

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real node process claiming to be node `as_id` of `cluster` (its own ports and data, every
/// real node in its `--peers`), with the peer TLS `files` it was given.
fn impostor(cluster: &Cluster, as_id: u64, files: &PeerTlsFiles) -> Impostor {
    let dir = cluster.dir.path().join("impostor");
    let peers: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| match n.id == as_id {
            true => format!("{}={}", n.id, free_port()),
            false => format!("{}={}", n.id, n.peer),
        })
        .collect();
    let log = std::fs::File::create(cluster.dir.path().join("impostor.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args([
            "server",
            "--id",
            &as_id.to_string(),
            "--cluster-id",
            CLUSTER,
        ])
        .args(["--peers", &peers.join(",")])
        .args(["--client-listen", &free_port().to_string()])
        .args(dev_certs::server_args(files))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Impostor(child)
}

/// `raftline_connections_closed_total` for `reason`.
fn closed_series(reason: &str) -> String {
    format!("raftline_connections_closed_total{{reason=\"{reason}\"}}")
}

/// Every node still follows `leader` in `term` and appends commit ([`assert_healthy`]), and the
/// leader's links to its followers are up (the victim kept its slot).
fn assert_unchanged(
    cluster: &Cluster,
    leader: u64,
    term: u64,
    tags: std::ops::RangeInclusive<u64>,
) {
    let s = status(cluster.node(leader).client).unwrap();
    assert!(s.peers.iter().all(|p| p.connected), "{s:?}");
    assert_healthy(cluster, leader, term, tags);
}

#[test]
fn a_node_presenting_another_members_certificate_cannot_say_hello_as_the_victim() {
    let cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (victim, stolen_from) = (followers[0], followers[1]);
    // A genuine certificate of the cluster's CA, but naming another member.
    let stolen = dev_certs::node_files(&cluster.tls_dir(), stolen_from);
    let _fake = impostor(&cluster, victim, &stolen);
    let leader_metrics = cluster.node(leader).metrics;
    // Its hellos as the victim are refused again and again (it reconnects with backoff).
    wait_counter(leader_metrics, &closed_series("peer_identity"), 2);
    assert_unchanged(&cluster, leader, term, 1..=10);
    assert!(
        cluster.log_of(leader).contains(&format!(
            "hello as node {victim}, but the connection's certificate does not name raftline-node-{victim}"
        )),
        "{}",
        cluster.log_of(leader)
    );
}

#[test]
fn a_peer_with_a_certificate_from_a_foreign_ca_is_refused_at_the_handshake() {
    let cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let term = status(cluster.node(leader).client).unwrap().term;
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    // The right name, the wrong CA; it trusts the cluster's CA, so only its own certificate
    // is at fault.
    let foreign = DevCa::new("foreign CA").unwrap();
    let files = foreign
        .write_node_files(&cluster.dir.path().join("foreign"), victim)
        .unwrap();
    std::fs::copy(
        dev_certs::node_files(&cluster.tls_dir(), 1).trusted_ca,
        &files.trusted_ca,
    )
    .unwrap();
    let _fake = impostor(&cluster, victim, &files);
    wait_counter(
        cluster.node(leader).metrics,
        &closed_series("tls_handshake"),
        1,
    );
    assert_unchanged(&cluster, leader, term, 1..=10);
    // The leader's alert told the stranger why.
    let told = cluster.dir.path().join("impostor.log");
    let deadline = Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&told).unwrap().contains("alert") {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&told).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until node `id`'s log contains `text`.
fn wait_logged(cluster: &Cluster, id: u64, text: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !cluster.log_of(id).contains(text) {
        assert!(
            Instant::now() < deadline,
            "node {id} never logged {text:?}:\n{}",
            cluster.log_of(id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_rotated_trusted_ca_bundle_takes_effect_without_a_restart() {
    let mut cluster = Cluster::start(3, "auto");
    let leader = cluster.wait_leader();
    let moved = (1..=3).find(|&id| id != leader).unwrap();
    let stays = (1..=3).find(|&id| id != leader && id != moved).unwrap();
    cluster.kill(moved);
    let bundle = dev_certs::node_files(&cluster.tls_dir(), 1).trusted_ca;

    // A half-written bundle does not load: the running nodes keep their certificates.
    dev_certs::write(&bundle, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    for id in [leader, stays] {
        wait_logged(&cluster, id, "peer TLS files changed but do not load");
    }

    // The new CA joins the bundle (the old one stays trusted), and the moved node comes back
    // with a certificate from the new CA only.
    let rotated = DevCa::new("rotated CA").unwrap();
    rotated.write_node_files(&cluster.tls_dir(), moved).unwrap();
    let old = cluster.peer_ca.as_ref().unwrap().cert_pem();
    dev_certs::write(&bundle, &format!("{old}{}", rotated.cert_pem())).unwrap();
    for id in [leader, stays] {
        wait_logged(&cluster, id, "peer TLS certificates reloaded");
    }
    cluster.spawn(moved);

    // Accepted both ways by the nodes that never restarted: it follows and replicates.
    let tags: Vec<u64> = (1..=10).collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, 1, 4);
    assert!(outcomes
        .values()
        .all(|o| matches!(o, Outcome::Acked { .. })));
    let deadline = Instant::now() + DEADLINE;
    loop {
        let on_leader = status(cluster.node(leader).client).unwrap();
        let linked = on_leader.peers.iter().all(|p| p.connected);
        let caught_up = status(cluster.node(moved).client).is_ok_and(|s| {
            s.leader_id == Some(leader) && s.log_end_offset >= on_leader.log_end_offset
        });
        if linked && caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {moved} was not taken back: {on_leader:?}\n{}",
            cluster.log_of(leader)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The stderr of `raftline server` for a one-voter cluster with data under `dir` and `args`
/// added, which must refuse to start (exit non-zero within the deadline).
fn refused_start(dir: &Path, args: &[String]) -> String {
    let mut server = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["server", "--id", "1", "--cluster-id", CLUSTER])
        .args(["--peers", &format!("1={}", free_port())])
        .args(["--client-listen", &free_port().to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            server.kill().unwrap();
            server.wait().unwrap();
            panic!("the server started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    stderr
}

#[test]
fn a_server_without_peer_tls_files_or_peer_insecure_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(dir.path(), &[]);
    for flag in [
        "--peer-cert-file",
        "--peer-key-file",
        "--peer-trusted-ca-file",
        "--peer-insecure",
        "raftline-node-1",
    ] {
        assert!(stderr.contains(flag), "{flag} not named: {stderr}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching the disk"
    );

    let stderr = refused_start(
        dir.path(),
        &["--peer-cert-file".into(), "/nonexistent.pem".into()],
    );
    assert!(
        stderr.contains("--peer-key-file and --peer-trusted-ca-file missing"),
        "{stderr}"
    );

    // Files that do not load: the start fails naming the file.
    let files = dev_certs::node_files(dir.path(), 1);
    dev_certs::write(&files.cert, "not PEM").unwrap();
    let stderr = refused_start(dir.path(), &dev_certs::server_args(&files));
    assert!(stderr.contains("node-1.pem"), "{stderr}");
}
