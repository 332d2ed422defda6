//! A local 3-node cluster of child `raftline server` processes on loopback: what `raftline dev`
//! keeps in the foreground and what `raftline bench cluster` measures. Node N listens on
//! BASE+N (peers), BASE+100+N (clients) and BASE+200+N (metrics); its data lives in
//! DATA/node-N and its log output in DATA/node-N.log.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftline_netio::client::{status_of, ClientConfig};
use raftline_netio::client_proto::NodeRole;
use raftline_netio::cluster_id::ClusterId;

/// Nodes in a local cluster.
pub const NODES: u64 = 3;
/// How long the cluster may take to elect a leader before start-up gives up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node may take to drain after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Peer, client and metrics address of node `id` for base port `base`.
pub fn node_addrs(base: u16, id: u64) -> (SocketAddr, SocketAddr, SocketAddr) {
    let at = |offset: u16| SocketAddr::from(([127, 0, 0, 1], base + offset + id as u16));
    (at(0), at(100), at(200))
}

fn id_list(addr: impl Fn(u64) -> SocketAddr) -> String {
    (1..=NODES)
        .map(|id| format!("{id}={}", addr(id)))
        .collect::<Vec<_>>()
        .join(",")
}

/// A base port whose nine node ports are all free right now, below the kernel's ephemeral
/// range (32768+ on Linux) so that no outbound connection takes one of them meanwhile.
pub fn free_base_port() -> anyhow::Result<u16> {
    let first = 20_000 + (std::process::id() % 40) as u16 * 300;
    for step in 0..40u16 {
        let base = 20_000 + (first - 20_000 + step * 300) % 12_000;
        let all_free = (1..=NODES).all(|id| {
            let (peer, client, metrics) = node_addrs(base, id);
            [peer, client, metrics]
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

/// A client configuration addressing every node of the cluster on `base`.
pub fn client_config(base: u16, cluster: &str) -> ClientConfig {
    let bootstrap = (1..=NODES)
        .map(|id| node_addrs(base, id).1.to_string())
        .collect();
    ClientConfig::new(bootstrap, ClusterId::from_name(cluster))
}

/// One child node process.
pub struct Node {
    /// The node's id (1..=NODES).
    pub id: u64,
    child: Child,
}

/// How a node ended when the cluster was stopped.
pub struct StopOutcome {
    /// The node's id.
    pub id: u64,
    /// Its exit status, or None if it did not stop within the deadline and was killed.
    pub status: Option<ExitStatus>,
}

/// Three running child nodes.
pub struct LocalCluster {
    /// The base port (see the module documentation).
    pub base: u16,
    /// The cluster name (its wire id is derived from it).
    pub cluster: String,
    nodes: Vec<Node>,
    /// Extra `raftline server` arguments every node gets (e.g. `--emulate-disk hdd`).
    server_args: Vec<String>,
}

impl LocalCluster {
    /// Starts the three nodes (this same executable, `raftline server`, with `server_args` added
    /// to each command line) with data under `data`; on error the nodes already started are
    /// stopped again.
    pub fn start_with_args(
        data: &Path,
        base: u16,
        cluster: &str,
        server_args: &[String],
    ) -> anyhow::Result<LocalCluster> {
        let exe = std::env::current_exe().context("finding the raftline executable")?;
        let available = raftline_pinning::available_cores();
        let mut cluster = LocalCluster {
            base,
            cluster: cluster.to_string(),
            nodes: Vec::new(),
            server_args: server_args.to_vec(),
        };
        for id in 1..=NODES {
            match cluster.start_node(&exe, data, id, &available) {
                Ok(node) => cluster.nodes.push(node),
                Err(e) => {
                    cluster.stop();
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }

    fn start_node(
        &self,
        exe: &Path,
        data: &Path,
        id: u64,
        available: &[usize],
    ) -> anyhow::Result<Node> {
        let base = self.base;
        let (_, client, metrics) = node_addrs(base, id);
        let log_path = data.join(format!("node-{id}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("server")
            .args(["--id", &id.to_string(), "--cluster-id", &self.cluster])
            .args(["--peers", &id_list(|n| node_addrs(base, n).0)])
            .args(["--peer-clients", &id_list(|n| node_addrs(base, n).1)])
            .args(["--client-listen", &client.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--data-dir")
            .arg(data.join(format!("node-{id}")));
        if let Some(cores) = cores_for(id, available) {
            cmd.args(["--cores", &cores]);
        }
        cmd.args(&self.server_args);
        // A process group of its own: a terminal's Ctrl-C reaches only the parent, which then
        // stops each node once (a node takes a second signal as "exit now, skip the drain").
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id} ({})", exe.display()))?;
        Ok(Node { id, child })
    }

    /// Waits until every node answers `Status` and one of them leads; returns the leader's id.
    pub fn wait_for_leader(&mut self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(id) = self.exited() {
                bail!("node {id} exited during start-up; see its log file");
            }
            let mut config = client_config(self.base, &self.cluster);
            config.connect_timeout = Duration::from_millis(500);
            config.request_timeout = Duration::from_millis(500);
            let statuses: Vec<_> = (1..=NODES)
                .map(|id| status_of(&node_addrs(self.base, id).1.to_string(), &config))
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
                let base = self.base;
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

    /// The id of a node that has exited, if any did.
    pub fn exited(&mut self) -> Option<u64> {
        self.nodes
            .iter_mut()
            .find_map(|n| matches!(n.child.try_wait(), Ok(Some(_))).then_some(n.id))
    }

    /// SIGTERMs every node (each drains and exits on its own), kills those still running after
    /// the deadline, and says how each ended.
    pub fn stop(&mut self) -> Vec<StopOutcome> {
        for node in &self.nodes {
            unsafe { libc::kill(node.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut outcomes = Vec::new();
        for node in self.nodes.iter_mut() {
            let status = loop {
                match node.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = node.child.kill();
                        let _ = node.child.wait();
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
