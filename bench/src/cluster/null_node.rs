//! A NULL NODE for `raftline bench cluster --null-node`: one process with a client port that
//! validates every append the way a leader does (frame CRC, request, `Batch::decode`) and answers
//! it at once with the offsets it would get, with no Raft, no log and no followers. Loaded by the
//! same generator as a cluster, it measures the ceiling of the client path on this machine (the
//! generator, loopback TCP, frames and the event loop), which a cluster's figures are read against.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftline_log::Batch;
use raftline_netio::client_proto::{
    decode_request, encode_response, AccessRole, ClientError, NodeRole, NodeStatus, Request,
    Response,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net, NetConfig, NetEvent, SendWithError};

/// How long the benchmark waits for a started null node to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of `raftline bench null-node` (started by `bench cluster --null-node`).
#[derive(Args, Debug, Clone)]
pub struct NullNodeArgs {
    /// Client address to listen on.
    #[arg(long, default_value = "127.0.0.1:7409")]
    pub client_listen: SocketAddr,
    /// Cluster name its frames carry (clients must use the same).
    #[arg(long = "cluster-id", value_name = "NAME", default_value = crate::local_cluster::DEV_CLUSTER)]
    pub cluster: String,
}

/// Serves until the process is killed.
pub fn run(args: NullNodeArgs) -> anyhow::Result<ExitCode> {
    let cluster_id = ClusterId::from_name(&args.cluster);
    let unused_peer_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = NetConfig::new(
        NODE_ID,
        cluster_id,
        unused_peer_port,
        args.client_listen,
        Default::default(),
    );
    let mut net = Net::bind(cfg).context("binding the null node's client port")?;
    let mut node = NullNode {
        cluster_id,
        address: args.client_listen.to_string(),
        next_offset: 0,
        appends: 0,
    };
    eprintln!(
        "NULL NODE on {} (no Raft, no disk): answers every append at once",
        args.client_listen
    );
    let mut events = Vec::new();
    loop {
        net.poll(None, &mut events)?;
        for event in events.drain(..) {
            if let NetEvent::ClientFrame { client, frame } = event {
                match decode_request(frame) {
                    Ok(request) => node.answer(&mut net, client, request),
                    Err(e) => net.close_client(client, &format!("undecodable request: {e}")),
                }
            }
        }
    }
}

/// The only node id of a null node (it leads itself).
const NODE_ID: u64 = 1;

struct NullNode {
    cluster_id: ClusterId,
    address: String,
    next_offset: u64,
    appends: u64,
}

impl NullNode {
    fn answer(&mut self, net: &mut Net, client: ClientId, request: Request) {
        let response = match request {
            Request::Append {
                request_id, batch, ..
            } => match Batch::decode(batch) {
                Ok(batch) => {
                    let records = u64::from(batch.header().record_count);
                    let base_offset = self.next_offset;
                    self.next_offset += records;
                    self.appends += 1;
                    Response::Appended {
                        request_id,
                        base_offset,
                        last_offset: self.next_offset.saturating_sub(1),
                    }
                }
                Err(e) => Response::Error {
                    request_id,
                    error: ClientError::BadRequest {
                        why: format!("invalid batch: {e}"),
                    },
                },
            },
            Request::Status { request_id } => Response::StatusReply {
                request_id,
                status: NodeStatus {
                    node_id: NODE_ID,
                    role: NodeRole::Leader,
                    term: 1,
                    leader_id: Some(NODE_ID),
                    leader_client_address: Some(self.address.clone()),
                    commit_index: self.appends,
                    log_start_offset: 0,
                    log_end_offset: self.next_offset,
                    log_first_index: 1,
                    log_last_index: self.appends,
                    peers: Vec::new(),
                    snapshot: None,
                    disk_bytes: 0,
                    state_keys: 0,
                    state_bytes: 0,
                    state_bytes_max: 1 << 30,
                    log_write_age_ms: 0,
                    disk_full: None,
                    disk_stalled: false,
                },
            },
            // Load generators send plain batches; an idempotent producer gets an id (the null
            // node stores nothing, so it has nothing to deduplicate).
            Request::InitProducer { request_id } => Response::ProducerGranted {
                request_id,
                producer_id: NODE_ID << 48,
                epoch: 0,
            },
            // Like a node without an auth file: any token holds every role.
            Request::Authenticate { request_id, .. } => Response::Authenticated {
                request_id,
                role: AccessRole::Admin,
            },
            Request::Subscribe {
                subscription_id, ..
            }
            | Request::SubscribeSnapshot {
                subscription_id, ..
            }
            | Request::SnapshotNow {
                request_id: subscription_id,
            } => Response::Error {
                request_id: subscription_id,
                error: ClientError::BadRequest {
                    why: "a null node keeps no log to read".to_string(),
                },
            },
            Request::MemberList { request_id }
            | Request::MemberAdd { request_id, .. }
            | Request::MemberPromote { request_id, .. }
            | Request::MemberRemove { request_id, .. }
            | Request::LeaderTransfer { request_id, .. }
            | Request::MemberUpdate { request_id, .. } => Response::Error {
                request_id,
                error: ClientError::BadRequest {
                    why: "a null node has no membership".to_string(),
                },
            },
            Request::Credit { .. } => return,
        };
        let cluster_id = self.cluster_id;
        let encode = |frame: &mut Vec<u8>| encode_response(frame, cluster_id, NODE_ID, &response);
        match net.send_client_with(client, encode) {
            Ok(()) => {}
            Err(SendWithError::Encode(e)) => eprintln!("null node: cannot encode a response: {e}"),
            Err(SendWithError::Refused(e)) => {
                net.close_client(client, &format!("response refused: {e}"))
            }
        }
    }
}

/// A null node child process, killed when dropped.
pub struct NullNodeProcess {
    child: Child,
}

impl NullNodeProcess {
    /// Starts `raftline bench null-node` on `address` (its output goes to `dir/null-node.log`)
    /// and waits until it accepts connections.
    pub fn start(dir: &Path, address: SocketAddr, cluster: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the raftline executable")?;
        let log_path = dir.join("null-node.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(exe)
            .args(["bench", "null-node", "--cluster-id", cluster])
            .args(["--client-listen", &address.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the null node")?;
        let mut node = NullNodeProcess { child };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_err() {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "the null node exited ({status}) before listening; see {}",
                    log_path.display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the null node did not listen on {address} within {START_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(node)
    }

    /// Its process id (for the CPU figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NullNodeProcess {
    fn drop(&mut self) {
        // It holds no state: killing it loses nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
