//! A local 3-node cluster of child `raftline server` processes: what `raftline dev` keeps in the
//! foreground and what `raftline bench cluster` measures. On loopback, node N listens on BASE+N
//! (peers), BASE+100+N (clients) and BASE+200+N (metrics); placed in network namespaces
//! ([`Placement::Netns`], `netns.rs`), node N runs inside its own namespace and dials its peers
//! through the topology's delaying relays. Its data lives in DATA/node-N and its log output in
//! DATA/node-N.log. The peer ports run mutual TLS with a CA made for the run
//! ([`crate::dev_certs`]; files in DATA/tls, made anew at each start), the path an operator runs.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftline_netio::client::{status_of, ClientConfig};
use raftline_netio::client_proto::NodeRole;
use raftline_netio::cluster_id::ClusterId;

use crate::dev_certs::{self, DevCa};
use crate::netns::Topology;

/// Nodes in a local cluster.
pub const NODES: u64 = 3;
/// The name of the cluster `raftline dev` and the benchmarks start (its id on the wire is
/// derived from it).
pub const DEV_CLUSTER: &str = "raftline-dev";
/// How long the cluster may take to elect a leader before start-up gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Peer, client and metrics address of node `id` for base port `base`.
pub fn node_addrs(base: u16, id: u64) -> (SocketAddr, SocketAddr, SocketAddr) {
    let at = |offset: u16| SocketAddr::from(([127, 0, 0, 1], base + offset + id as u16));
    (at(0), at(100), at(200))
}

/// Where a base port's block keeps Kafka ports (BASE+251..253), checked by [`free_base_port`].
pub const KAFKA_PORT_OFFSET: u16 = 250;

/// Kafka address of node `id` for Kafka base port `base`.
pub fn kafka_addr(base: u16, id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + id as u16))
}

fn id_list(addr: impl Fn(u64) -> SocketAddr) -> String {
    (1..=NODES)
        .map(|id| format!("{id}={}", addr(id)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A base port whose twelve node ports (Kafka's included) are all free right now, below the kernel's ephemeral
/// range (32768+ on Linux) so that no outbound connection takes one of them meanwhile. Each call
/// in a process starts at another block: the ports are only probed, not held, so two clusters
/// started at once in one process (parallel tests) would otherwise both find the first block
/// free and one of them would fail to bind it.
pub fn free_base_port() -> anyhow::Result<u16> {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 40;
    let first = 20_000 + ((std::process::id() % 40) as u16 + call) % 40 * 300;
    for step in 0..40u16 {
        let base = 20_000 + (first - 20_000 + step * 300) % 12_000;
        let all_free = (1..=NODES).all(|id| {
            let (peer, client, metrics) = node_addrs(base, id);
            let kafka = kafka_addr(base + KAFKA_PORT_OFFSET, id);
            [peer, client, metrics, kafka]
                .iter()
                .all(|addr| TcpListener::bind(addr).is_ok())
        });
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free block of loopback ports found between 20000 and 32000")
}

/// `--cores` for node `id`: the raft threads of the three nodes spread over the cores this
/// process may use, each node's log writer on the next core (none when there is only one core).
fn cores_for(id: u64, available: &[usize]) -> Option<String> {
    if available.len() < 2 {
        return None;
    }
    let n = available.len();
    let first = (id as usize - 1) % n;
    Some(format!(
        "{},{}",
        available[first],
        available[(first + 1) % n]
    ))
}

/// Where a cluster's nodes run and how they reach each other.
#[derive(Clone)]
pub enum Placement {
    /// On loopback, ports from `base` (see the module documentation).
    Loopback {
        /// The base port.
        base: u16,
    },
    /// Node N in the topology's namespace for N; peers through its relays.
    Netns(Arc<Topology>),
}

impl Placement {
    /// Where node `id` listens for peers.
    fn peer_listen(&self, id: u64) -> SocketAddr {
        match self {
            Placement::Loopback { base } => node_addrs(*base, id).0,
            Placement::Netns(t) => t.peer_listen(id),
        }
    }

    /// Where node `from` dials node `to` (its own entry: where it listens).
    fn peer_dial(&self, from: u64, to: u64) -> SocketAddr {
        match self {
            Placement::Netns(t) if from != to => t.peer_dial(from, to),
            _ => self.peer_listen(to),
        }
    }

    /// Node `id`'s client address.
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        match self {
            Placement::Loopback { base } => node_addrs(*base, id).1,
            Placement::Netns(t) => t.client_addr(id),
        }
    }

    /// Node `id`'s metrics address.
    pub fn metrics_addr(&self, id: u64) -> SocketAddr {
        match self {
            Placement::Loopback { base } => node_addrs(*base, id).2,
            Placement::Netns(t) => t.metrics_addr(id),
        }
    }
}

/// A client configuration addressing every node of the cluster on `base`.
pub fn client_config(base: u16, cluster: &str) -> ClientConfig {
    let bootstrap = (1..=NODES)
        .map(|id| node_addrs(base, id).1.to_string())
        .collect();
    ClientConfig::new(bootstrap, ClusterId::from_name(cluster))
}

/// A run's temporary directory (`run-` plus a random suffix, inside `dir`; for a cluster's data
/// and probe files):
/// removed with everything in it on drop, and with it the directories leading to it that this
/// run created, if they are left empty.
pub struct RunDir {
    temp: Option<tempfile::TempDir>,
    dir: PathBuf,
    created: Option<PathBuf>,
}

impl RunDir {
    /// Creates `dir` (and missing parents) and a fresh run directory inside it.
    pub fn create(dir: &Path) -> anyhow::Result<RunDir> {
        // The outermost directory this run creates, removed again at the end if left empty.
        let created = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .last()
            .map(Path::to_path_buf);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let temp = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(dir)
            .with_context(|| format!("creating a run directory in {}", dir.display()))?;
        Ok(RunDir {
            temp: Some(temp),
            dir: dir.to_path_buf(),
            created,
        })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        self.temp.as_ref().expect("present until drop").path()
    }

    /// Keeps the run directory and its contents (for a post-mortem of the nodes' logs).
    pub fn keep(mut self) -> PathBuf {
        self.created = None;
        self.temp.take().expect("present until drop").keep()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        drop(self.temp.take());
        if let Some(created) = &self.created {
            // remove_dir only removes empty directories: anything else put there meanwhile stays.
            for dir in self.dir.ancestors() {
                if std::fs::remove_dir(dir).is_err() || dir == created {
                    break;
                }
            }
        }
    }
}

/// One child node process.
pub struct Node {
    /// The node's id (1..=NODES, then those that joined: [`LocalCluster::join`]).
    pub id: u64,
    /// The running process; None while the node is killed (see [`LocalCluster::kill`]).
    child: Option<Child>,
    /// The node it joined through (`--join`), for one added after the bootstrap three.
    joined_via: Option<u64>,
}

/// How a node ended when the cluster was stopped.
pub struct StopOutcome {
    /// The node's id.
    pub id: u64,
    /// Its exit status, or None if it did not stop within the deadline and was killed.
    pub status: Option<ExitStatus>,
}

/// How to start a [`LocalCluster`]: [`Launch::new`], then the settings that differ from the
/// defaults, then [`Launch::start`].
pub struct Launch {
    data: PathBuf,
    placement: Placement,
    cluster: String,
    server_args: Vec<String>,
    kafka_base: Option<u16>,
    exe: Option<PathBuf>,
}

impl Launch {
    /// Three nodes with data under `data`, named `cluster`, placed as `placement`.
    pub fn new(data: &Path, placement: Placement, cluster: &str) -> Launch {
        Launch {
            data: data.to_path_buf(),
            placement,
            cluster: cluster.to_string(),
            server_args: Vec::new(),
            kafka_base: None,
            exe: None,
        }
    }

    /// Flags added to every node's command line (a restarted node gets them too).
    pub fn server_args(mut self, args: &[String]) -> Launch {
        self.server_args = args.to_vec();
        self
    }

    /// Node N also listens for Kafka clients on 127.0.0.1:(kafka_base + N) (loopback only).
    pub fn kafka(mut self, kafka_base: Option<u16>) -> Launch {
        self.kafka_base = kafka_base;
        self
    }

    /// The `raftline` executable to run (default: this process's own, as the benchmarks are
    /// called from the `raftline` binary; tests name the binary cargo built).
    pub fn exe(mut self, exe: &Path) -> Launch {
        self.exe = Some(exe.to_path_buf());
        self
    }

    /// Starts the three nodes; on error the nodes already started are stopped again.
    pub fn start(self) -> anyhow::Result<LocalCluster> {
        if let Placement::Netns(topology) = &self.placement {
            anyhow::ensure!(
                topology.nodes() == NODES,
                "the topology has {} nodes, a local cluster {NODES}",
                topology.nodes()
            );
            anyhow::ensure!(
                self.kafka_base.is_none(),
                "Kafka listeners are on loopback only"
            );
        }
        let exe = match self.exe {
            Some(exe) => exe,
            None => std::env::current_exe().context("finding the raftline executable")?,
        };
        let available = raftline_pinning::available_cores();
        let peer_ca = DevCa::new(&format!("{} throwaway CA", self.cluster))?;
        let mut cluster = LocalCluster {
            placement: self.placement,
            cluster: self.cluster,
            data: self.data,
            exe,
            server_args: self.server_args,
            peer_ca,
            kafka_base: self.kafka_base,
            nodes: Vec::new(),
        };
        for id in 1..=NODES {
            match cluster.spawn_node(id, &available, false, None) {
                Ok(child) => cluster.nodes.push(Node {
                    id,
                    child: Some(child),
                    joined_via: None,
                }),
                Err(e) => {
                    cluster.stop();
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }
}

/// Three running child nodes.
pub struct LocalCluster {
    /// Where the nodes run.
    pub placement: Placement,
    /// The cluster name (its wire id is derived from it).
    pub cluster: String,
    /// Holds node N's data in `node-N` and its output in `node-N.log`.
    data: PathBuf,
    exe: PathBuf,
    /// Appended to every node's `raftline server` command line (also on a restart).
    server_args: Vec<String>,
    /// The CA of the nodes' peer certificates (in DATA/tls; each node's made at its first start).
    peer_ca: DevCa,
    /// Node N listens for Kafka clients on 127.0.0.1:(this + N), if set.
    kafka_base: Option<u16>,
    nodes: Vec<Node>,
}

impl LocalCluster {
    /// Starts the three nodes (this same executable, `raftline server`) with data under `data`
    /// and `server_args` added to every node's command line (e.g. `--emulate-disk hdd`; a
    /// restarted node gets them too); on error the nodes already started are stopped again.
    pub fn start_with_args(
        data: &Path,
        base: u16,
        cluster: &str,
        server_args: &[String],
    ) -> anyhow::Result<LocalCluster> {
        Launch::new(data, Placement::Loopback { base }, cluster)
            .server_args(server_args)
            .start()
    }

    /// Like [`LocalCluster::start_with_args`], and node N also listens for Kafka clients on
    /// 127.0.0.1:(kafka_base + N) when `kafka_base` is given (every node announces all three).
    pub fn start_with_kafka(
        data: &Path,
        base: u16,
        cluster: &str,
        server_args: &[String],
        kafka_base: Option<u16>,
    ) -> anyhow::Result<LocalCluster> {
        Launch::new(data, Placement::Loopback { base }, cluster)
            .server_args(server_args)
            .kafka(kafka_base)
            .start()
    }

    /// Spawns node `id`, one of the bootstrap `--peers`, or one that joins through node
    /// `join`'s client address; `append_log` keeps the output of its earlier lives in its log
    /// file.
    fn spawn_node(
        &self,
        id: u64,
        available: &[usize],
        append_log: bool,
        join: Option<u64>,
    ) -> anyhow::Result<Child> {
        let placement = &self.placement;
        let (client, metrics) = (placement.client_addr(id), placement.metrics_addr(id));
        let log_path = self.data.join(format!("node-{id}.log"));
        let log = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append_log)
            .truncate(!append_log)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("server")
            .args(["--id", &id.to_string(), "--cluster-id", &self.cluster]);
        match join {
            None => cmd
                .args(["--peers", &id_list(|n| placement.peer_dial(id, n))])
                .args(["--peer-clients", &id_list(|n| placement.client_addr(n))]),
            Some(via) => cmd
                .args(["--join", &placement.client_addr(via).to_string()])
                .args(["--listen", &placement.peer_listen(id).to_string()]),
        };
        cmd.args(["--client-listen", &client.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--data-dir")
            .arg(self.node_dir(id));
        if let Some(cores) = cores_for(id, available) {
            cmd.args(["--cores", &cores]);
        }
        if let Some(kafka) = self.kafka_base {
            let kafka_addr = |n: u64| kafka_addr(kafka, n);
            cmd.args(["--kafka-listen", &kafka_addr(id).to_string()])
                .args(["--kafka-advertise", &id_list(kafka_addr)]);
        }
        // A node's first start in this run gets a certificate from this run's CA; a restart
        // (`append_log`) keeps it.
        let tls_dir = self.data.join("tls");
        let tls = match append_log {
            false => self.peer_ca.write_node_files(&tls_dir, id)?,
            true => dev_certs::node_files(&tls_dir, id),
        };
        cmd.args(dev_certs::server_args(&tls));
        cmd.args(&self.server_args);
        if let Placement::Netns(topology) = placement {
            topology.command_in_node(id, &mut cmd);
        }
        // A process group of its own: a terminal's Ctrl-C reaches only the parent, which then
        // stops each node once (a node takes a second signal as "exit now, skip the drain").
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id} ({})", self.exe.display()))
    }

    /// The client address of node `id`.
    pub fn client_addr(&self, id: u64) -> SocketAddr {
        self.placement.client_addr(id)
    }

    /// The metrics address of node `id`.
    pub fn metrics_addr(&self, id: u64) -> SocketAddr {
        self.placement.metrics_addr(id)
    }

    /// A client configuration addressing every node.
    pub fn client_config(&self) -> ClientConfig {
        let bootstrap = (1..=NODES)
            .map(|id| self.client_addr(id).to_string())
            .collect();
        ClientConfig::new(bootstrap, ClusterId::from_name(&self.cluster))
    }

    /// Node `id`'s data directory.
    pub fn node_dir(&self, id: u64) -> PathBuf {
        self.data.join(format!("node-{id}"))
    }

    /// Whether node `id` is running (started and not killed).
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.iter().any(|n| n.id == id && n.child.is_some())
    }

    /// Kills node `id` with SIGKILL (no drain, no leadership hand-over: a crash) and reaps it.
    /// Returns when the signal was sent, taken right after `kill(2)` returned: the process is
    /// gone within microseconds of it, its sockets closed by the kernel.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<Instant> {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .with_context(|| format!("no node {id} in this cluster"))?;
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        child
            .kill()
            .with_context(|| format!("sending SIGKILL to node {id}"))?;
        let killed_at = Instant::now();
        child.wait().with_context(|| format!("reaping node {id}"))?;
        Ok(killed_at)
    }

    /// Starts node `id` again on its data directory and ports after [`LocalCluster::kill`]
    /// (its output is appended to its log file). Does not wait for it to answer.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let join = self
            .nodes
            .iter()
            .find(|n| n.id == id && n.child.is_none())
            .with_context(|| format!("node {id} is not a killed node of this cluster"))?
            .joined_via;
        let child = self.spawn_node(id, &raftline_pinning::available_cores(), true, join)?;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .expect("checked above");
        node.child = Some(child);
        Ok(())
    }

    /// Starts a new node with an empty data directory that joins the cluster as a learner
    /// through node `via`'s client address (`--join`), as an operator adds a replacement
    /// (tools/deploy/README.md); returns its id (the next after the highest). Loopback only.
    /// Does not wait for it to answer.
    pub fn join(&mut self, via: u64) -> anyhow::Result<u64> {
        anyhow::ensure!(
            matches!(self.placement, Placement::Loopback { .. }),
            "only a loopback cluster takes a joining node"
        );
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let child = self.spawn_node(id, &raftline_pinning::available_cores(), false, Some(via))?;
        self.nodes.push(Node {
            id,
            child: Some(child),
            joined_via: Some(via),
        });
        Ok(id)
    }

    /// Waits until every node answers `Status` and one of them leads; returns the leader's id.
    pub fn wait_for_leader(&mut self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(id) = self.exited() {
                let log = std::fs::read_to_string(self.data.join(format!("node-{id}.log")))
                    .unwrap_or_default();
                let from = (log.len().saturating_sub(2000)..log.len())
                    .find(|&i| log.is_char_boundary(i))
                    .unwrap_or(log.len());
                let tail = &log[from..];
                bail!("node {id} exited during start-up; the end of its log:\n{tail}");
            }
            let mut config = self.client_config();
            config.connect_timeout = Duration::from_millis(500);
            config.request_timeout = Duration::from_millis(500);
            let statuses: Vec<_> = (1..=NODES)
                .map(|id| status_of(&self.client_addr(id).to_string(), &config))
                .collect();
            if statuses.iter().all(Result::is_ok) {
                if let Some(leader) = statuses
                    .iter()
                    .flatten()
                    .find(|s| s.role == NodeRole::Leader)
                {
                    return Ok(leader.node_id);
                }
            }
            if Instant::now() >= deadline {
                let Placement::Loopback { base } = self.placement else {
                    bail!("no leader within {START_TIMEOUT:?}; see the node log files");
                };
                bail!(
                    "no leader within {START_TIMEOUT:?}; are ports {}-{}, {}-{} and {}-{} free? \
                     see the node log files",
                    base + 1,
                    base + 3,
                    base + 101,
                    base + 103,
                    base + 201,
                    base + 203
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (node id, process id) of every running node (for CPU accounting from /proc).
    pub fn node_pids(&self) -> Vec<(u64, u32)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.id, n.child.as_ref()?.id())))
            .collect()
    }

    /// The id of a node that has exited by itself, if any did (a killed node has not).
    pub fn exited(&mut self) -> Option<u64> {
        self.nodes.iter_mut().find_map(|n| {
            let child = n.child.as_mut()?;
            matches!(child.try_wait(), Ok(Some(_))).then_some(n.id)
        })
    }

    /// SIGTERMs every running node (each drains and exits on its own), kills those still
    /// running after the deadline, and says how each ended (a node left killed is not listed).
    pub fn stop(&mut self) -> Vec<StopOutcome> {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut outcomes = Vec::new();
        for node in self.nodes.iter_mut() {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            outcomes.push(StopOutcome {
                id: node.id,
                status,
            });
        }
        self.nodes.clear();
        outcomes
    }
}

impl Drop for LocalCluster {
    /// A cluster dropped on an error path is still stopped: no orphan nodes.
    fn drop(&mut self) {
        if !self.nodes.is_empty() {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_nodes_spread_raft_threads_over_the_cores() {
        assert_eq!(cores_for(1, &[0, 1]).as_deref(), Some("0,1"));
        assert_eq!(cores_for(2, &[0, 1]).as_deref(), Some("1,0"));
        assert_eq!(cores_for(3, &[0, 1]).as_deref(), Some("0,1"));
        assert_eq!(cores_for(1, &[3]), None);
        assert_eq!(
            node_addrs(7300, 2).1,
            "127.0.0.1:7402".parse::<SocketAddr>().unwrap()
        );
    }
}
