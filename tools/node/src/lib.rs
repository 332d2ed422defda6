//! `raftline-node`: a running raftline node, the one place where the log (`raftline-log`), the
//! Raft core (`raftline-replicator`) and the network (`raftline-netio`) meet.
//!
//! [`Node::start`] claims the data directory, binds the ports, recovers the log and the core and
//! starts the raft thread (and the metrics thread); the [`RunningNode`] it returns reports status
//! and stops the node. The modules, in the order an append meets them:
//!
//! - [`config`]: [`NodeConfig`], its defaults and validation.
//! - [`identity`]: the data directory's owner (cluster, node), checked at every start.
//! - [`event_loop`]: the raft thread's loop; [`event_loop::EventLoop::round`] shows the order of
//!   a round's effects in one function.
//! - [`access`]: who may do what on the client port (the auth file's roles), checked first.
//! - [`appends`]: client appends from validation to acknowledgement.
//! - [`replica`]: the core + log + hard state, driven without a network (testable in memory).
//! - [`storage`]: Raft entries ↔ log batches and the core's `Storage` over the log.
//! - [`subscriptions`]: consumers streaming committed batches under credit.
//! - [`state`]: the key → latest value state materialised from the log, its snapshot payload.
//! - [`snapshots`]: taking snapshots, compacting the log, installing a leader's snapshot.
//! - [`metrics`]: the Prometheus endpoint's data and renderer.
//! - [`peer_rtt`]: heartbeat round trips to each peer, held against the election timeout.
//! - `vouching`: a bootstrap voter on a new data directory waits to be vouched for by its
//!   peers' hellos (a wiped voter must not vote).

pub mod access;
pub mod appends;
pub mod config;
mod disk_watch;
pub mod event_loop;
pub mod identity;
pub mod kafka;
mod members;
pub mod metrics;
mod peer_names;
pub mod peer_rtt;
pub mod producers;
pub mod replica;
mod replies;
pub mod snapshot_stream;
pub mod snapshots;
pub mod state;
pub mod storage;
pub mod storage_repair;
pub mod subscriptions;
mod time_index;
mod tls_reload;
mod vouching;

#[cfg(test)]
mod cluster_in_memory;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use raftline_log::{BackendChoice, BackendKind as LogBackend, WriterHook};
use raftline_netio::client_proto::NodeStatus;
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{BindError, Net, NetAddrs, NetConfig, TlsError};
use raftline_netio::reactor::BackendKind as NetBackend;
use raftline_pinning::{Layout, LayoutError, Role, Waker};
use raftline_replicator::{Config, Index, MemberAddress, Membership};

pub use config::{ConfigError, DiskEmulation, JoinCredentials, NodeConfig, PeerSecurity};

use appends::{AppendConfig, Appends};
use event_loop::{EventLoop, LoopConfig, LoopError};
use identity::{Identity, IdentityError};
use kafka::{Kafka, KafkaConfig};
use metrics::Metrics;
use peer_names::PeerNames;
use producers::ProducerIds;
use replica::{FatalError, Replica, ReplicaConfig};
use subscriptions::Subscriptions;

/// Why a node could not start, or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The settings do not go together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory belongs to another cluster or node, or cannot be claimed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `--cores` names cores this machine does not have (or one twice).
    #[error("--cores: {0}")]
    Layout(#[from] LayoutError),
    /// A peer or client port cannot be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The peer port's certificate, key or trusted CA file does not load.
    #[error("peer TLS: {0}")]
    PeerTls(#[from] TlsError),
    /// The metrics port cannot be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The log, hard state, snapshots or core could not be recovered, or failed while running.
    #[error(transparent)]
    Fatal(#[from] FatalError),
    /// The raft thread's event loop failed.
    #[error("the node stopped on an error: {0}")]
    Loop(#[from] LoopError),
    /// `--join`: the cluster did not admit this node.
    #[error("joining the cluster through {via}: {why}")]
    Join {
        /// The member asked.
        via: String,
        /// Why it failed.
        why: String,
    },
    /// A thread could not be started.
    #[error("spawning the {what} thread: {source}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The client port's TLS files could not be loaded.
    #[error("client-port TLS: {0}")]
    ClientTls(raftline_netio::net::TlsError),
    /// The raft thread panicked (an invariant of this node failed; its message is in the log).
    #[error("the raft thread panicked")]
    Panicked,
}

/// What the node found and bound at start, for its start-up report.
#[derive(Debug, Clone)]
pub struct Started {
    /// The network backend running.
    pub net_backend: NetBackend,
    /// Ports actually bound.
    pub addrs: NetAddrs,
    /// The log's write path.
    pub log_backend: LogBackend,
    /// Entries in the log at start: first index.
    pub first_index: Index,
    /// Last index.
    pub last_index: Index,
    /// Records in the log at start: first offset.
    pub start_offset: u64,
    /// One past the last offset.
    pub next_offset: u64,
    /// The thread layout (`None`: unpinned).
    pub layout: Option<Layout>,
}

/// A raftline node (see [`Node::start`]).
pub struct Node;

impl Node {
    /// Starts a node: claims `cfg.data_dir` for the cluster and node id, binds the peer, client
    /// and metrics ports, recovers the log, hard state and snapshots, then runs the raft thread
    /// (network, Raft, clients) and the log writer until [`RunningNode::stop`]. A restarted node
    /// resumes from its data directory.
    pub fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
        let cfg = cfg.validated()?;
        for warning in &cfg.warnings {
            tracing::warn!("{warning}");
        }
        let incarnation = Identity {
            cluster_name: cfg.cluster_name.clone(),
            node_id: cfg.id,
        }
        .claim(&cfg.data_dir)?;
        let cluster_id = ClusterId::from_name(&cfg.cluster_name);
        let layout = if cfg.cores.is_empty() {
            None
        } else {
            Some(Layout::new(&cfg.cores)?)
        };
        let mut net_cfg = NetConfig::new(
            cfg.id,
            cluster_id,
            cfg.listen,
            cfg.client_listen,
            cfg.peers
                .iter()
                .filter(|(&id, _)| id != cfg.id)
                .map(|(&id, &addr)| (id, addr))
                .collect(),
        );
        net_cfg.backend = cfg.net_backend;
        net_cfg.incarnation = incarnation;
        net_cfg.client_idle_timeout = cfg.client_idle_timeout;
        net_cfg.clients_per_source_max = cfg.clients_per_source_max;
        net_cfg.buffer_budget_bytes = cfg.connection_buffers_bytes;
        net_cfg.kafka_listen = cfg.kafka_listen;
        if let Some(files) = &cfg.client_tls {
            net_cfg.client_tls = Some(files.load().map_err(NodeError::ClientTls)?);
        }
        net_cfg.kafka_request_bytes_max =
            cfg.batch_bytes_max + config::KAFKA_REQUEST_HEADROOM_BYTES;
        // The files' stamp is taken before the load: a file replaced meanwhile is reloaded.
        let peer_tls_stamp = match &cfg.peer_security {
            PeerSecurity::Tls(files) => {
                let stamp = files.stamp();
                net_cfg.peer_tls = Some(files.load()?);
                Some(stamp)
            }
            PeerSecurity::Insecure => {
                tracing::warn!(
                    "the peer port is INSECURE (--peer-insecure): anyone who can reach {} can \
                     speak as any node of the cluster; use it only on a network nobody else \
                     reaches",
                    cfg.listen
                );
                None
            }
        };
        let mut net = bind_retrying(net_cfg)?;
        let waker = net.waker();
        let mut bootstrap = bootstrap_addresses(&cfg);
        let mut replica = open_replica(&cfg, &bootstrap, &layout, waker.clone())?;
        let mut join_via = cfg.join.clone();
        if let Some(via) = &cfg.rejoin {
            if replica.is_pristine() && removed_from(&cfg, cluster_id, via, incarnation)? {
                // Start over as a node that joins: no bootstrap configuration.
                drop(replica);
                bootstrap.clear();
                replica = open_replica(&cfg, &bootstrap, &layout, waker.clone())?;
                join_via = Some(via.clone());
            }
        }
        let reopen: event_loop::Reopen = {
            let (cfg, bootstrap, layout, waker) = (
                cfg.clone(),
                bootstrap.clone(),
                layout.clone(),
                waker.clone(),
            );
            Box::new(move || open_replica(&cfg, &bootstrap, &layout, waker.clone()))
        };
        let membership = replica.raft().membership();
        let joining = membership.voters.is_empty() && membership.learners.is_empty();
        // A bootstrap voter that has never voted nor acknowledged by its own durable state may
        // be one whose disk was wiped: it waits to be vouched for (vouching.rs).
        let vouch_among = (!joining && replica.is_pristine() && cfg.peers.contains_key(&cfg.id))
            .then(|| cfg.peers.keys().copied().collect());
        let addresses = match &join_via {
            Some(via) if joining => {
                let admitted = join(&cfg, cluster_id, via, incarnation)?;
                // The members must be known to the Net before the leader dials in with the
                // log; names are looked up here, before the raft thread runs.
                for (&id, address) in &admitted {
                    match peer_names::resolve(&address.peer) {
                        Ok(addr) => net.add_peer(id, addr),
                        Err(e) => tracing::warn!(
                            peer = id,
                            address = address.peer,
                            error = %e,
                            "a member's peer address does not resolve now; it is looked up \
                             again once the configuration arrives"
                        ),
                    }
                }
                admitted
            }
            Some(_) => bootstrap,
            None => {
                warn_if_flags_differ(&cfg, &bootstrap, membership);
                bootstrap
            }
        };
        let mut metrics = Metrics::new(replica.log_handle())
            .with_net_backend(net.backend())
            .with_repairs(replica.repairs_at_open())
            .with_election_timeout(cfg.election_timeout_min);
        if let Some(emulation) = &cfg.emulated_disk {
            tracing::warn!("{}", emulation.banner());
            metrics = metrics.with_emulated_disk(emulation.profile);
        }
        let metrics = Arc::new(metrics);
        let log = replica.log();
        let started = Started {
            net_backend: net.backend(),
            addrs: net.local_addrs(),
            log_backend: log.backend(),
            first_index: log.first_index(),
            last_index: log.last_index(),
            start_offset: log.start_offset(),
            next_offset: log.next_offset(),
            layout: layout.clone(),
        };
        if let Some(addr) = cfg.metrics_listen {
            let listener = TcpListener::bind(addr)
                .map_err(|source| NodeError::MetricsBind { addr, source })?;
            let metrics = Arc::clone(&metrics);
            std::thread::Builder::new()
                .name(Role::Control.thread_name().into())
                .spawn(move || metrics::serve(listener, metrics))
                .map_err(|source| NodeError::Spawn {
                    what: "metrics",
                    source,
                })?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let loop_cfg = LoopConfig {
            cluster_id,
            node_id: cfg.id,
            tick: cfg.tick,
            drain_timeout: config::DRAIN_TIMEOUT,
            addresses,
            election_timeout_max: cfg.election_timeout_max,
            admin_timeout: cfg.append_timeout.max(config::ADMIN_TIMEOUT_MIN),
            data_dir: cfg.data_dir.clone(),
            disk_stall: cfg.disk_stall,
            election_timeout_min: cfg.election_timeout_min,
            incarnation,
            vouch_among,
        };
        let appends = Appends::new(
            AppendConfig {
                cluster_id,
                node_id: cfg.id,
                client_addresses: cfg.peer_clients.clone(),
                batch_bytes_max: cfg.batch_bytes_max,
                append_timeout: cfg.append_timeout,
            },
            ProducerIds::new(&cfg.data_dir, cfg.id),
            Arc::clone(&metrics),
        );
        let subscriptions =
            Subscriptions::new(cluster_id, cfg.id, config::SUBSCRIPTIONS_PER_CLIENT_MAX);
        let kafka = Kafka::new(KafkaConfig {
            cluster_name: cfg.cluster_name.clone(),
            topic: cfg
                .kafka_topic
                .clone()
                .unwrap_or_else(|| cfg.cluster_name.clone()),
            advertised: cfg.kafka_advertise.clone(),
            voters: cfg.peers.keys().copied().collect(),
        });
        let known = cfg
            .peers
            .iter()
            .filter(|(&id, _)| id != cfg.id)
            .map(|(&id, &addr)| (id, addr))
            .collect();
        let peer_names =
            PeerNames::start(known, waker.clone()).map_err(|source| NodeError::Spawn {
                what: "peer name resolver",
                source,
            })?;
        let mut event_loop = EventLoop::new(
            loop_cfg,
            net,
            replica,
            appends,
            subscriptions,
            kafka,
            Arc::clone(&metrics),
            Arc::clone(&stop),
            peer_names,
        )
        .with_access(cfg.access.clone())
        .with_reopen(reopen);
        if let (PeerSecurity::Tls(files), Some(stamp)) = (&cfg.peer_security, peer_tls_stamp) {
            let reloads =
                tls_reload::watch(files.clone(), stamp, waker.clone()).map_err(|source| {
                    NodeError::Spawn {
                        what: "peer certificate reloader",
                        source,
                    }
                })?;
            event_loop = event_loop.with_peer_tls_reloads(reloads);
        }
        let body = move || event_loop.run();
        let thread = match &layout {
            Some(layout) => layout.spawn(Role::Raft, body),
            None => std::thread::Builder::new()
                .name(Role::Raft.thread_name().into())
                .spawn(body),
        }
        .map_err(|source| NodeError::Spawn {
            what: "raft",
            source,
        })?;
        Ok(RunningNode {
            thread,
            stopper: Stopper { stop, waker },
            metrics,
            started,
        })
    }
}

/// How long a busy listen address is retried before the node gives up (a restarted node's
/// previous process may hold its ports a moment after it died).
const BIND_RETRY: Duration = Duration::from_secs(30);

/// Binds the network, retrying with backoff while a listen address is in use (for at most
/// [`BIND_RETRY`]); any other error, or the same one past the bound, is final.
fn bind_retrying(cfg: NetConfig) -> Result<Net, BindError> {
    let deadline = std::time::Instant::now() + BIND_RETRY;
    let mut backoff = Duration::from_millis(50);
    let mut warned = false;
    loop {
        match Net::bind(cfg.clone()) {
            Err(BindError::Listen {
                port, addr, source, ..
            }) if source.kind() == std::io::ErrorKind::AddrInUse
                && std::time::Instant::now() < deadline =>
            {
                if !warned {
                    tracing::warn!(port, %addr, "listen address in use; retrying for up to {BIND_RETRY:?}");
                    warned = true;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// The bootstrap configuration's address book: `--peers` (as written: a name stays a name) and
/// `--peer-clients`.
fn bootstrap_addresses(cfg: &NodeConfig) -> BTreeMap<u64, MemberAddress> {
    cfg.peers
        .iter()
        .map(|(&id, addr)| {
            let address = MemberAddress {
                peer: cfg
                    .peer_names
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| addr.to_string()),
                client: cfg.peer_clients.get(&id).cloned().unwrap_or_default(),
                incarnation: 0,
            };
            (id, address)
        })
        .collect()
}

/// A client of the cluster through the member at client address `via`, with the join
/// credentials (`--join-token-file`, `--join-tls-ca`).
fn join_client(
    cfg: &NodeConfig,
    cluster_id: ClusterId,
    via: &str,
) -> Result<raftline_netio::client::ClientConfig, NodeError> {
    use raftline_netio::client::ClientConfig;
    use raftline_netio::net::{client_config, load_roots};
    let failed = |why: String| NodeError::Join {
        via: via.to_string(),
        why,
    };
    let mut client = ClientConfig::new(vec![via.to_string()], cluster_id);
    let credentials = &cfg.join_credentials;
    if let Some(path) = &credentials.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| failed(format!("reading the join token {}: {e}", path.display())))?;
        client.token = Some(token.trim().to_string());
    }
    if let Some(ca) = &credentials.tls_ca {
        let roots = load_roots(ca).map_err(|e| failed(e.to_string()))?;
        let tls = client_config(Arc::new(roots), None).map_err(|e| failed(e.to_string()))?;
        client.tls = Some(tls);
    }
    Ok(client)
}

/// How long a bootstrap voter on a pristine directory waits for the cluster at `--join` to
/// list its members: at a cluster's first start nobody answers, and the node bootstraps.
const REJOIN_ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// A bootstrap voter on a pristine data directory asks the cluster at `via` whether it still
/// counts this id as a member: true when it does not (the operator removed it after its disk
/// was lost: it joins instead). No answer, or a member with no other incarnation recorded, is
/// false (it bootstraps, and waits to be vouched for); a member recorded on another directory
/// is refused with the runbook.
fn removed_from(
    cfg: &NodeConfig,
    cluster_id: ClusterId,
    via: &str,
    incarnation: u64,
) -> Result<bool, NodeError> {
    use raftline_netio::client::admin;
    let mut client = join_client(cfg, cluster_id, via)?;
    client.failover_timeout = REJOIN_ASK_TIMEOUT;
    client.request_timeout = REJOIN_ASK_TIMEOUT;
    let list = match admin::members(&client) {
        Ok(list) => list,
        Err(e) => {
            tracing::info!(via, error = %e, "no member list from the cluster (a first start?): bootstrapping with --peers");
            return Ok(false);
        }
    };
    match list.members.iter().find(|m| m.member.id == cfg.id) {
        None => {
            tracing::info!(
                via,
                "this node id is not a member of the running cluster (removed after its disk was \
                 lost?): joining it as a learner"
            );
            Ok(true)
        }
        Some(m) if m.member.incarnation != 0 && m.member.incarnation != incarnation => {
            Err(NodeError::Loop(LoopError::Incarnation {
                node: cfg.id,
                by: list.leader_id,
                recorded: m.member.incarnation,
                ours: incarnation,
            }))
        }
        Some(_) => Ok(false),
    }
}

/// Asks the cluster (through the member at client address `via`) to add this node as a learner
/// at its announced addresses (`--advertise-*-addr`, else its listen addresses) on the data
/// directory of `incarnation`; returns the address book it was admitted with. A learner
/// already added at these addresses (by `raftline member add`, or an earlier start that died
/// before it got the log) is admitted as it is unless it is recorded on another directory; a
/// voter is refused (its data directory is empty: it lost its vote and log).
fn join(
    cfg: &NodeConfig,
    cluster_id: ClusterId,
    via: &str,
    incarnation: u64,
) -> Result<BTreeMap<u64, MemberAddress>, NodeError> {
    use raftline_netio::client::admin;
    let failed = |why: String| NodeError::Join {
        via: via.to_string(),
        why,
    };
    cfg.check_announced()?;
    let client = join_client(cfg, cluster_id, via)?;
    let (peer, client_address) = cfg.announced();
    let members = match admin::add_learner(&client, cfg.id, &peer, &client_address, incarnation) {
        Ok(changed) => {
            tracing::info!(index = changed.index, "joined the cluster as a learner");
            changed.members
        }
        Err(refused) => {
            let list = admin::members(&client).map_err(|e| failed(e.to_string()))?;
            let me = list.members.iter().find(|m| m.member.id == cfg.id);
            match me {
                // A voter's vote and log are part of the cluster's quorum: one that comes back
                // with an empty data directory lost them, and must not vote as if it had not.
                Some(m) if m.member.voter => {
                    return Err(failed(format!(
                        "node {} is a voter of this cluster, but this data directory is empty \
                         (its disk was replaced?): a voter that lost its log must not vote. \
                         Remove it first (`raftline member remove {}`), then start it again \
                         to join as a new learner",
                        cfg.id, cfg.id
                    )))
                }
                Some(m) if m.member.incarnation != 0 && m.member.incarnation != incarnation => {
                    return Err(failed(format!(
                        "node {} is a learner of this cluster recorded on another data \
                         directory (incarnation {:016x}, this one is {incarnation:016x}): remove \
                         it first (`raftline member remove {}`), then start it again",
                        cfg.id, m.member.incarnation, cfg.id
                    )))
                }
                Some(m)
                    if m.member.peer_address == peer
                        && m.member.client_address == client_address =>
                {
                    tracing::info!("already a member at these addresses: starting as one");
                    list.members.into_iter().map(|m| m.member).collect()
                }
                _ => return Err(failed(refused.to_string())),
            }
        }
    };
    Ok(members
        .into_iter()
        .map(|m| {
            let address = MemberAddress {
                peer: m.peer_address,
                client: m.client_address,
                incarnation: m.incarnation,
            };
            (m.id, address)
        })
        .collect())
}

/// A node restarted with flags that no longer describe the cluster: the log's configuration
/// is in force; the operator hears about the difference.
fn warn_if_flags_differ(
    cfg: &NodeConfig,
    flags: &BTreeMap<u64, MemberAddress>,
    membership: &Membership,
) {
    let members: Vec<u64> = membership.members().collect();
    let flag_ids: Vec<u64> = flags.keys().copied().collect();
    let mut sorted = members.clone();
    sorted.sort_unstable();
    let moved: Vec<u64> = flags
        .iter()
        .filter(|(id, a)| {
            membership
                .addresses
                .get(id)
                .is_some_and(|m| m.peer != a.peer)
        })
        .map(|(&id, _)| id)
        .collect();
    if sorted != flag_ids || !moved.is_empty() {
        tracing::warn!(
            node = cfg.id,
            log_voters = ?membership.voters,
            log_learners = ?membership.learners,
            flag_peers = ?flag_ids,
            peer_address_differs = ?moved,
            "--peers does not match the configuration in the log (changed with `raftline member`); \
             the log's configuration is in force and --peers is ignored"
        );
    }
}

/// The log, hard state, snapshots and core of `cfg`'s node, recovered from its data directory
/// (a new one starts with `bootstrap` as its configuration: none for a node that joins).
fn open_replica(
    cfg: &NodeConfig,
    bootstrap: &BTreeMap<u64, MemberAddress>,
    layout: &Option<Layout>,
    waker: Waker,
) -> Result<Replica, FatalError> {
    let (heartbeat_ticks, election_min, election_max) = cfg.ticks();
    let mut raft = Config::new(cfg.id, bootstrap.keys().copied().collect());
    raft.addresses = bootstrap.clone();
    raft.heartbeat_ticks = heartbeat_ticks;
    raft.election_ticks_min = election_min;
    raft.election_ticks_max = election_max;
    raft.entry_bytes_max = cfg.batch_bytes_max as u64;
    let writer_core = layout.as_ref().and_then(|l| l.core_of(Role::LogWriter));
    Replica::open(ReplicaConfig {
        raft,
        data_dir: cfg.data_dir.clone(),
        log_backend: BackendChoice::Auto,
        segment_bytes: cfg.segment_bytes,
        batch_bytes_max: cfg.batch_bytes_max,
        rng_seed: rng_seed(cfg.id),
        // The log writer wakes the raft thread after every durable group.
        durable_hook: Some(WriterHook(Arc::new(move || waker.wake()))),
        writer_start_hook: writer_core.map(|core| {
            WriterHook(Arc::new(move || {
                if let Err(e) = raftline_pinning::pin_current_thread(core) {
                    tracing::warn!(core, error = %e, "log writer runs unpinned");
                }
            }))
        }),
        snapshots: cfg.snapshots,
        emulated_fsync_delay: cfg
            .emulated_disk
            .as_ref()
            .map_or(Duration::ZERO, |e| e.fsync_latency),
        durable_mark_idle: cfg.durable_mark_idle,
        durable_mark_before_ack: cfg.durable_mark_before_ack,
    })
}

/// A seed for the election-timeout RNG that differs between nodes and runs.
fn rng_seed(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.rotate_left(32) ^ u64::from(std::process::id())
}

/// Stops a running node from any thread (a signal handler, a test).
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
    waker: Waker,
}

impl Stopper {
    /// Asks the node to drain and stop: a leader first hands leadership to a follower, appends
    /// already accepted get their answer, the log writer finishes what it was given.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// A node started by [`Node::start`].
pub struct RunningNode {
    thread: JoinHandle<Result<(), LoopError>>,
    stopper: Stopper,
    metrics: Arc<Metrics>,
    started: Started,
}

impl RunningNode {
    /// What the node found and bound at start.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// The node's status as of its last tick (`None` before its first).
    pub fn status(&self) -> Option<NodeStatus> {
        self.metrics.status()
    }

    /// A handle that stops the node from another thread.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Asks the node to drain and stop (see [`Stopper::stop`]); [`RunningNode::join`] waits.
    pub fn stop(&self) {
        self.stopper.stop();
    }

    /// Whether the raft thread has ended (stopped, failed or panicked; [`RunningNode::join`]
    /// says which).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the node stopped: `Ok` after a clean drain, else what stopped it.
    pub fn join(self) -> Result<(), NodeError> {
        match self.thread.join() {
            Ok(result) => Ok(result?),
            Err(_) => Err(NodeError::Panicked),
        }
    }
}
