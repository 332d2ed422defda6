//! Real `raftline server` processes on loopback for the end-to-end tests, and a blocking raw
//! client speaking the client protocol (so tests control every byte and every retry).
#![allow(dead_code)]

pub mod acks;
pub mod producer;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftline_bench::dev_certs::{self, DevCa};
use raftline_faultfs::{FaultFs, MountOptions};
use raftline_log::{Batch, Record};
use raftline_netio::client_proto::{
    decode_response, encode_request, split_batches, AckMode, NodeRole, NodeStatus, Request,
    Response, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::FrameDecoder;

/// Cluster name every test cluster uses.
pub const CLUSTER: &str = "raftline-e2e";
/// Bound on every wait in these tests.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Each node's `--segment-mib` unless a test asks for another ([`Cluster::start_with_segments`]).
pub const SEGMENT_MIB: u64 = 4;

/// A loopback port nobody listens on right now, below the kernel's ephemeral range (32768+ on
/// Linux): a node restarted after a kill must get its ports back, and an ephemeral port freed by
/// the kill could meanwhile be taken as the local port of some outbound connection. Each test
/// process starts at its own offset and never hands out a port twice.
pub fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 211) % 10_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 2_000, "no free loopback port found");
        let port = (base + n) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
}

/// One node's addresses and process.
pub struct Node {
    pub id: u64,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub metrics: SocketAddr,
    /// Its Kafka listener, for a cluster started with [`Cluster::start_kafka`].
    pub kafka: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub child: Option<Child>,
    /// Started with `--join` through this client address or name (not part of the bootstrap
    /// `--peers`).
    pub join: Option<String>,
    /// Flags of this node only, after the others.
    pub args: Vec<String>,
}

impl Node {
    /// Returns once this (dead) node's ports can be bound again. The kernel tears a dead
    /// process's io_uring down after the process is reaped, and the listeners with an accept
    /// pending in it close only then.
    fn await_ports_free(&self) {
        let deadline = Instant::now() + DEADLINE;
        while [self.peer, self.client]
            .iter()
            .any(|&addr| TcpListener::bind(addr).is_err())
        {
            assert!(
                Instant::now() < deadline,
                "node {}'s ports stay taken after it died",
                self.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How a test cluster's nodes run besides their flags.
#[derive(Default, Clone, Copy)]
struct Options {
    /// Each node's data directory on its own fault filesystem.
    faulty: bool,
    /// Each node listens for Kafka clients too.
    kafka: bool,
    /// `--segment-mib` (`None`: [`SEGMENT_MIB`]).
    segment_mib: Option<u64>,
    /// `--peer-insecure` instead of mutual TLS.
    insecure_peers: bool,
    /// Nodes configured (in every `--peers`) but not started.
    not_started: &'static [u64],
}

/// A cluster of real server processes; killed (and its data removed) on drop.
pub struct Cluster {
    /// Node `id`'s fault filesystem at `[id - 1]` when started on them (its data directory is
    /// `data` inside the mount). Declared before `dir`: unmounted before the backing goes.
    pub faults: Vec<FaultFs>,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub net_backend: &'static str,
    /// Flags added to every node's command line (they override the TOML file of node 1).
    pub extra_args: Vec<String>,
    /// Each node's `--segment-mib`.
    pub segment_mib: u64,
    /// The CA of the nodes' peer certificates (in [`Cluster::tls_dir`]); `None`: insecure peers.
    pub peer_ca: Option<DevCa>,
}

impl Cluster {
    /// Starts `n` nodes with the given network backend ("auto", "uring", "poll").
    pub fn start(n: u64, net_backend: &'static str) -> Cluster {
        Cluster::start_with(n, net_backend, &[])
    }

    /// Starts `n` nodes with `extra_args` added to every node's flags.
    pub fn start_with(n: u64, net_backend: &'static str, extra_args: &[&str]) -> Cluster {
        Cluster::start_on(n, net_backend, extra_args, Options::default())
    }

    /// Configures `n` nodes but starts only those not in `not_started` (a first start with
    /// some machines missing; start the rest with [`Cluster::spawn`]).
    pub fn start_but(n: u64, not_started: &'static [u64]) -> Cluster {
        let options = Options {
            not_started,
            ..Options::default()
        };
        Cluster::start_on(n, "auto", &[], options)
    }

    /// Starts `n` nodes, each with its data directory on its own fault filesystem
    /// (`raftline-faultfs`, served from this process), so a test can cut a node's power
    /// ([`Cluster::faultfs`]) after killing it. The data directory is a subdirectory of the
    /// mount, so the node creates it and must make that durable too.
    pub fn start_on_faultfs(n: u64, net_backend: &'static str, extra_args: &[&str]) -> Cluster {
        let options = Options {
            faulty: true,
            ..Options::default()
        };
        Cluster::start_on(n, net_backend, extra_args, options)
    }

    /// Starts `n` nodes with `extra_args` and log segments of `segment_mib` MiB.
    pub fn start_with_segments(
        n: u64,
        net_backend: &'static str,
        extra_args: &[&str],
        segment_mib: u64,
    ) -> Cluster {
        let options = Options {
            segment_mib: Some(segment_mib),
            ..Options::default()
        };
        Cluster::start_on(n, net_backend, extra_args, options)
    }

    /// Starts `n` nodes whose peer ports run plaintext (`--peer-insecure`), for tests that
    /// speak raw peer frames.
    pub fn start_insecure_peers(n: u64, net_backend: &'static str, extra_args: &[&str]) -> Cluster {
        let options = Options {
            insecure_peers: true,
            ..Options::default()
        };
        Cluster::start_on(n, net_backend, extra_args, options)
    }

    /// Starts `n` nodes that also listen for Kafka clients, each announcing all of them.
    pub fn start_kafka(n: u64, net_backend: &'static str, extra_args: &[&str]) -> Cluster {
        let options = Options {
            kafka: true,
            ..Options::default()
        };
        Cluster::start_on(n, net_backend, extra_args, options)
    }

    fn start_on(
        n: u64,
        net_backend: &'static str,
        extra_args: &[&str],
        options: Options,
    ) -> Cluster {
        let Options {
            faulty,
            kafka,
            segment_mib,
            insecure_peers,
            not_started,
        } = options;
        let dir = tempfile::Builder::new()
            .prefix("raftline-e2e")
            .tempdir_in("/tmp")
            .unwrap();
        let mut faults = Vec::new();
        if faulty {
            for id in 1..=n {
                let backing = dir.path().join(format!("backing-{id}"));
                let mountpoint = dir.path().join(format!("mnt-{id}"));
                std::fs::create_dir(&backing).unwrap();
                std::fs::create_dir(&mountpoint).unwrap();
                let fs = MountOptions::new()
                    .in_process()
                    .mount(&backing, &mountpoint)
                    .expect("mount the fault filesystem (FUSE is available in CI)");
                faults.push(fs);
            }
        }
        let nodes = (1..=n)
            .map(|id| Node {
                id,
                peer: free_port(),
                client: free_port(),
                metrics: free_port(),
                kafka: kafka.then(free_port),
                data_dir: match faults.get(id as usize - 1) {
                    Some(fs) => fs.mountpoint().join("data"),
                    None => dir.path().join(format!("node-{id}")),
                },
                log_file: dir.path().join(format!("node-{id}.log")),
                child: None,
                join: None,
                args: Vec::new(),
            })
            .collect();
        let peer_ca = (!insecure_peers).then(|| DevCa::new("raftline-e2e test CA").unwrap());
        let mut cluster = Cluster {
            faults,
            dir,
            nodes,
            net_backend,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            segment_mib: segment_mib.unwrap_or(SEGMENT_MIB),
            peer_ca,
        };
        for id in 1..=n {
            cluster.write_peer_cert(id);
        }
        for id in (1..=n).filter(|id| !not_started.contains(id)) {
            cluster.spawn(id);
        }
        cluster
    }

    /// Where the nodes' peer certificates, keys and the CA bundle are.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    /// Writes node `id`'s peer certificate (from [`Cluster::peer_ca`]), if the cluster has one.
    fn write_peer_cert(&self, id: u64) {
        if let Some(ca) = &self.peer_ca {
            ca.write_node_files(&self.tls_dir(), id).unwrap();
        }
    }

    /// Node `id`'s flags for its peer port: its TLS files, or `--peer-insecure`.
    fn peer_security_args(&self, id: u64) -> Vec<String> {
        match &self.peer_ca {
            Some(_) => dev_certs::server_args(&dev_certs::node_files(&self.tls_dir(), id)),
            None => vec!["--peer-insecure".into()],
        }
    }

    /// `id=address` of every bootstrap node (those `--peers` names).
    fn list(&self, f: impl Fn(&Node) -> SocketAddr) -> String {
        self.nodes
            .iter()
            .filter(|n| n.join.is_none())
            .map(|n| format!("{}={}", n.id, f(n)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// (Re)starts node `id` on its data directory; its output is appended to its log file.
    pub fn spawn(&mut self, id: u64) {
        self.spawn_with_env(id, &[]);
    }

    /// [`Cluster::spawn`] with `env` added to the node's environment (e.g. a crash point).
    pub fn spawn_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        let peers = self.list(|n| n.peer);
        let clients = self.list(|n| n.client);
        let kafka: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.kafka.map(|k| format!("{}={k}", n.id)))
            .collect();
        let backend = self.net_backend;
        let segment_mib = self.segment_mib;
        let peer_security = self.peer_security_args(id);
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "node {id} is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_file)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftline"));
        cmd.arg("server");
        if let Some(via) = &node.join {
            cmd.args(["--id", &id.to_string(), "--cluster-id", CLUSTER])
                .args(["--join", via])
                .args(["--listen", &node.peer.to_string()])
                .args(["--client-listen", &node.client.to_string()])
                .args(["--metrics-listen", &node.metrics.to_string()])
                .args(["--net-backend", backend, "--segment-mib", "4"])
                .args(&peer_security)
                .arg("--data-dir")
                .arg(&node.data_dir);
        } else if id == 1 {
            // Node 1 takes its settings from a TOML file, the others from flags.
            let file = node.log_file.with_extension("toml");
            let table = |list: &str| {
                list.split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap();
                        format!("{k} = \"{v}\"\n")
                    })
                    .collect::<String>()
            };
            let toml = format!(
                "id = 1\ncluster_id = \"{CLUSTER}\"\nclient_listen = \"{}\"\n\
                 metrics_listen = \"{}\"\nnet_backend = \"{backend}\"\nsegment_mib = {segment_mib}\n\
                 data_dir = \"{}\"\n[peers]\n{}[peer_clients]\n{}",
                node.client,
                node.metrics,
                node.data_dir.display(),
                table(&peers),
                table(&clients)
            );
            // The peer TLS settings as the file's keys, `--peer-insecure` as a flag.
            let toml = match peer_security.as_slice() {
                [_, cert, _, key, _, ca] => format!(
                    "peer_cert_file = \"{cert}\"\npeer_key_file = \"{key}\"\n\
                     peer_trusted_ca_file = \"{ca}\"\n{toml}"
                ),
                _ => {
                    cmd.args(&peer_security);
                    toml
                }
            };
            let toml = match node.kafka {
                Some(listen) => format!(
                    "kafka_listen = \"{listen}\"\n{toml}[kafka_advertise]\n{}",
                    table(&kafka.join(","))
                ),
                None => toml,
            };
            std::fs::write(&file, toml).unwrap();
            cmd.arg("--config").arg(file);
        } else {
            cmd.args(["--id", &id.to_string(), "--cluster-id", CLUSTER])
                .args(["--peers", &peers, "--peer-clients", &clients])
                .args(["--client-listen", &node.client.to_string()])
                .args(["--metrics-listen", &node.metrics.to_string()])
                .args(["--net-backend", backend])
                .args(&peer_security)
                .arg("--data-dir")
                .arg(&node.data_dir);
            if !self.extra_args.iter().any(|a| a == "--segment-mib") {
                cmd.args(["--segment-mib", &segment_mib.to_string()]);
            }
            if id == 3 {
                // One node runs pinned: its raft thread and log writer share core 0.
                cmd.args(["--cores", "0"]);
            }
            if let Some(listen) = node.kafka {
                cmd.args(["--kafka-listen", &listen.to_string()])
                    .args(["--kafka-advertise", &kafka.join(",")]);
            }
        }
        let child = cmd
            .args(&self.extra_args)
            .args(&node.args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn raftline server");
        node.child = Some(child);
    }

    /// Starts a new node with an empty data directory that joins the cluster (`--join`) through
    /// node `via`'s client address; returns its id.
    pub fn join(&mut self, via: u64) -> u64 {
        let id = self.add_joiner(via);
        self.spawn(id);
        id
    }

    /// A new node (not started) that will join through node `via`'s client address; returns its
    /// id (its addresses are in [`Cluster::node`]).
    pub fn add_joiner(&mut self, via: u64) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let node = Node {
            id,
            peer: free_port(),
            client: free_port(),
            metrics: free_port(),
            kafka: None,
            data_dir: self.dir.path().join(format!("node-{id}")),
            log_file: self.dir.path().join(format!("node-{id}.log")),
            child: None,
            join: Some(self.node(via).client.to_string()),
            args: Vec::new(),
        };
        self.nodes.push(node);
        self.write_peer_cert(id);
        id
    }

    /// Deletes the (stopped) node's data directory: its disk is gone.
    pub fn wipe(&mut self, id: u64) {
        let node = self.node(id);
        assert!(node.child.is_none(), "node {id} is running");
        std::fs::remove_dir_all(&node.data_dir).unwrap();
    }

    /// Runs the `raftline` binary with `args` against the running nodes (`--bootstrap` and
    /// `--cluster-id` added); returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let bootstrap: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.client.to_string())
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_raftline"))
            .args(args)
            .args(["--bootstrap", &bootstrap.join(","), "--cluster-id", CLUSTER])
            .output()
            .expect("run raftline");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// kill -9; returns once the node's ports can be bound again, so it can be restarted.
    pub fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        node.await_ports_free();
    }

    /// Waits up to `within` for node `id` to exit by itself; returns its exit status once it
    /// has (the node is then not running) or `None` if it is still running.
    pub fn await_exit(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let node = &mut self.nodes[id as usize - 1];
        let deadline = Instant::now() + within;
        loop {
            let child = node.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                node.child = None;
                node.await_ports_free();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited 0.
    pub fn terminate(&mut self, id: u64) -> bool {
        let mut child = self.nodes[id as usize - 1].child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Node `id`'s fault filesystem (the cluster must have been started on them).
    pub fn faultfs(&self, id: u64) -> &FaultFs {
        &self.faults[id as usize - 1]
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[id as usize - 1]
    }

    /// The node's output so far (for failure messages and log assertions).
    pub fn log_of(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).log_file).unwrap_or_default()
    }

    /// Polls `Status` on the running nodes until one leads and every running node knows it.
    pub fn wait_leader(&self) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let statuses: Vec<Option<NodeStatus>> =
                running.iter().map(|n| status(n.client).ok()).collect();
            let leaders: Vec<u64> = statuses
                .iter()
                .flatten()
                .filter(|s| s.role == NodeRole::Leader)
                .map(|s| s.node_id)
                .collect();
            if leaders.len() == 1
                && statuses
                    .iter()
                    .all(|s| s.as_ref().is_some_and(|s| s.leader_id == Some(leaders[0])))
            {
                return leaders[0];
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader: {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every node's output, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- node {} ---\n{}", n.id, self.log_of(n.id)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A node blocked on a frozen disk cannot even die (its io_uring teardown waits for the
        // filesystem): thaw first, also when a test failed while a disk was frozen.
        for fs in &self.faults {
            let _ = fs.freeze(false);
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A blocking client connection speaking raw client protocol frames.
pub struct Conn {
    pub stream: TcpStream,
    decoder: FrameDecoder,
    cluster: ClusterId,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        Ok(Conn::from_stream(stream))
    }

    /// A client over a stream already connected (e.g. from a chosen source address).
    pub fn from_stream(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            decoder: FrameDecoder::new(64 << 20),
            cluster: ClusterId::from_name(CLUSTER),
        }
    }

    pub fn send(&mut self, request: &Request) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode_request(&mut out, self.cluster, request).expect("encode");
        self.stream.write_all(&out)
    }

    /// The next response; `Err` when the connection ends or breaks.
    pub fn recv(&mut self) -> std::io::Result<Response> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => {
                    return decode_response(frame).map_err(|e| std::io::Error::other(e.to_string()))
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            if self.decoder.fill_from(&mut self.stream)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// GET `path` from a node's metrics endpoint; asserts a 200 answer and returns it whole.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer
}

/// The status of the node at `addr`.
pub fn status(addr: SocketAddr) -> std::io::Result<NodeStatus> {
    let mut conn = Conn::connect(addr)?;
    conn.stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.send(&Request::Status { request_id: 7 })?;
    match conn.recv()? {
        Response::StatusReply { status, .. } => Ok(status),
        other => Err(std::io::Error::other(format!("unexpected {other:?}"))),
    }
}

/// A batch of `records` records whose values name `(tag, i)`.
pub fn tagged_batch(tag: u64, records: u64) -> Vec<u8> {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            key: Some(tag.to_le_bytes().to_vec()),
            value: format!("tag-{tag}-record-{i}").into_bytes(),
            timestamp_ms: tag,
            headers: vec![],
        })
        .collect();
    Batch::encode(&records).unwrap().into_bytes()
}

/// Reads every committed record of the node at `addr` from offset 0 until `end_offset`:
/// `(offset, tag)` per record, in stream order; no batch may reach past `end_offset`.
pub fn read_all(addr: SocketAddr, end_offset: u64) -> Vec<(u64, u64)> {
    let batches = read_batches(addr, 0, end_offset);
    assert_eq!(
        batches.last().map_or(0, |b| b.header().next_offset()),
        end_offset,
        "no batch past the end"
    );
    tags_in(&batches, 0, end_offset)
}

/// `(offset, tag)` of every committed record in `[from, end)` at the node at `addr`.
pub fn read_range(addr: SocketAddr, from: u64, end: u64) -> Vec<(u64, u64)> {
    tags_in(&read_batches(addr, from, end), from, end)
}

/// `(offset, tag)` of every record of `batches` in `[from, end)`.
pub fn tags_in(batches: &[Batch], from: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for batch in batches {
        let base = batch.header().base_offset;
        for (i, r) in batch.records().unwrap().into_iter().enumerate() {
            let offset = base + i as u64;
            if (from..end).contains(&offset) {
                out.push((offset, r.timestamp_ms));
            }
        }
    }
    out
}

/// Subscribes at `from` and reads until the stream reaches `end`: every batch received, as
/// stored (so nodes can be compared byte for byte). The first batch is the one holding `from`
/// (sent whole); every later one must follow it densely.
pub fn read_batches(addr: SocketAddr, from: u64, end: u64) -> Vec<Batch> {
    let mut conn = Conn::connect(addr).unwrap();
    conn.send(&Request::Subscribe {
        subscription_id: 1,
        from: StartFrom::Offset(from),
        window_bytes: 1 << 20,
    })
    .unwrap();
    let mut out = Vec::new();
    let mut next: Option<u64> = None;
    while next.unwrap_or(from) < end {
        match conn.recv().unwrap() {
            Response::Subscribed { start_offset, .. } => assert_eq!(start_offset, from),
            Response::Batches { batches, .. } => {
                for bytes in split_batches(&batches) {
                    let batch = Batch::decode(bytes.unwrap().to_vec()).unwrap();
                    let h = batch.header();
                    match next {
                        Some(n) => {
                            assert_eq!(h.base_offset, n, "batches arrive dense and in order")
                        }
                        None => assert!(
                            h.base_offset <= from && from < h.next_offset(),
                            "the first batch holds the start offset"
                        ),
                    }
                    next = Some(h.next_offset());
                    out.push(batch);
                }
                conn.send(&Request::Credit {
                    subscription_id: 1,
                    bytes: batches.len() as u64,
                })
                .unwrap();
            }
            other => panic!("unexpected answer while reading: {other:?}"),
        }
    }
    out
}

/// Outcome of one append as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at these offsets.
    Acked { base: u64, last: u64 },
    /// Refused before acceptance or lost with leadership: definitely not in the log.
    Rejected,
    /// Timeout, shutdown or connection loss: may or may not be in the log.
    Unknown,
}

/// Appends tags `tags` to the node at `addr` with up to `window` in flight. Returns the outcome
/// of every append that was sent; it stops at the first connection failure (appends sent but
/// unanswered are then `Unknown`, later ones are not sent and absent from the map).
pub fn append_window(
    addr: SocketAddr,
    tags: &[u64],
    records: u64,
    window: usize,
) -> BTreeMap<u64, Outcome> {
    append_window_within(addr, tags, window, DEADLINE, |tag| {
        tagged_batch(tag, records)
    })
}

/// [`append_window`] with the batch of each tag built by `batch_of`, giving up on the node (the
/// rest `Unknown`) once it has not answered for `timeout`.
pub fn append_window_within(
    addr: SocketAddr,
    tags: &[u64],
    window: usize,
    timeout: Duration,
    batch_of: impl Fn(u64) -> Vec<u8>,
) -> BTreeMap<u64, Outcome> {
    use raftline_netio::client_proto::ClientError;
    let mut outcomes = BTreeMap::new();
    let Ok(mut conn) = Conn::connect(addr) else {
        return outcomes;
    };
    if conn.stream.set_read_timeout(Some(timeout)).is_err() {
        return outcomes;
    }
    let mut sent = 0;
    while outcomes.len() < tags.len() {
        let mut broken = false;
        while sent < tags.len() && sent - outcomes.len() < window {
            let tag = tags[sent];
            let request = Request::Append {
                request_id: tag,
                ack: AckMode::Quorum,
                batch: batch_of(tag),
            };
            if conn.send(&request).is_err() {
                broken = true;
                break;
            }
            sent += 1;
        }
        let answer = if broken {
            Err(std::io::ErrorKind::BrokenPipe.into())
        } else {
            conn.recv()
        };
        let (tag, outcome) = match answer {
            Ok(Response::Appended {
                request_id,
                base_offset,
                last_offset,
            }) => (
                request_id,
                Outcome::Acked {
                    base: base_offset,
                    last: last_offset,
                },
            ),
            Ok(Response::Error { request_id, error }) => match error {
                ClientError::Timeout | ClientError::Unavailable { .. } => {
                    (request_id, Outcome::Unknown)
                }
                _ => (request_id, Outcome::Rejected),
            },
            Ok(other) => panic!("unexpected answer to an append: {other:?}"),
            Err(_) => {
                for &tag in &tags[..sent] {
                    outcomes.entry(tag).or_insert(Outcome::Unknown);
                }
                return outcomes;
            }
        };
        assert!(
            outcomes.insert(tag, outcome).is_none(),
            "one answer per append"
        );
    }
    outcomes
}

/// Waits until the metric `series` (name and labels) of node `metrics` reaches `at_least`.
pub fn wait_counter(metrics: SocketAddr, series: &str, at_least: u64) {
    let line = format!("{series} ");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = http_get(metrics, "/metrics");
        let n = page
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
        if n >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {at_least}:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The cluster still has `leader` leading in `term` and commits appends on every node.
pub fn assert_healthy(
    cluster: &Cluster,
    leader: u64,
    term: u64,
    tags: std::ops::RangeInclusive<u64>,
) {
    for n in &cluster.nodes {
        let s = status(n.client).unwrap();
        assert_eq!(s.term, term, "node {} changed term: {s:?}", n.id);
        assert_eq!(s.leader_id, Some(leader), "node {}: {s:?}", n.id);
    }
    let tags: Vec<u64> = tags.collect();
    let outcomes = append_window(cluster.node(leader).client, &tags, 1, 4);
    assert!(
        outcomes
            .values()
            .all(|o| matches!(o, Outcome::Acked { .. })),
        "appends: {outcomes:?}"
    );
}

/// Reads a raw stream until the peer closes it (`true`) or `within` passes (`false`).
pub fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// The number at `path` in a benchmark's JSON report; panics with the whole report if absent.
pub fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut at = v;
    for key in path {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}
