//! `raftline server`'s configuration: command-line flags, optionally on top of a TOML file
//! (`--config FILE`; a flag given on the command line wins), turned into the node's
//! [`NodeConfig`] (which validates it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use raftline_netio::net::{
    PeerTlsFiles, BUFFER_BUDGET_BYTES_DEFAULT, CLIENTS_PER_SOURCE_MAX_DEFAULT,
};
use raftline_netio::reactor::Backend;
use serde::Deserialize;

use raftline_node::config::ClientTlsFiles;
use raftline_node::config::{
    APPEND_TIMEOUT_MS_DEFAULT, BATCH_BYTES_MAX_DEFAULT, CLIENT_IDLE_TIMEOUT_S_DEFAULT,
    DISK_STALL_ELECTIONS_DEFAULT, DURABLE_MARK_IDLE_MS_DEFAULT, ELECTION_TIMEOUT_MAX_MS_DEFAULT,
    ELECTION_TIMEOUT_MIN_MS_DEFAULT, HEARTBEAT_MS_DEFAULT, SEGMENT_BYTES_DEFAULT, TICK_MS_DEFAULT,
};
use raftline_node::snapshots::SnapshotPolicy;
use raftline_node::{JoinCredentials, NodeConfig, PeerSecurity};

use raftline_bench::emulated_disk::DiskProfile;

use crate::auth_file::read_auth_file;

/// Environment variable that selects the network backend when `--net-backend` is not given.
pub const NET_BACKEND_ENV: &str = "RAFTLINE_NET_BACKEND";

/// Flags of `raftline server` (every one may also come from `--config FILE`).
#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML file with any of the settings below (keys named like the flags, with underscores;
    /// `peers`, `peer_clients` and `kafka_advertise` as tables `{ 1 = "host:port", ... }`).
    /// Flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id (a positive integer, one of the --peers).
    #[arg(long)]
    pub id: Option<u64>,
    /// The cluster's name; every frame carries its id, and the data directory is bound to it.
    #[arg(long, value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// The bootstrap voters' peer addresses, this node included: `1=host:port,2=host:port,3=...`.
    /// With --join too, only the nodes it lists bootstrap; any other id joins.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: Option<String>,
    /// Every voter's client address, so followers can tell clients where the leader is:
    /// `1=host:port,...`.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peer_clients: Option<String>,
    /// Join an existing cluster instead of bootstrapping one: the client address of any member
    /// (or a name that resolves to members). The node asks to be added as a learner at its
    /// --listen and --client-listen addresses, or the --advertise-* ones (promote it with
    /// `raftline member promote`); a restarted node that already has the configuration in its
    /// log ignores it. Beside --peers (one command line for every node, e.g. a StatefulSet): a
    /// node whose id --peers lists bootstraps with them, any other joins.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// The peer address a joining node announces, where other nodes dial it: ip:port or a name
    /// (`raftline-3.raftline-peers.prod.svc:7301`), resolved again when it moves [default:
    /// --listen, which must not be a wildcard then].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_peer_addr: Option<String>,
    /// The client address a joining node announces, where clients are sent to it [default:
    /// --client-listen, which must not be a wildcard then].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_client_addr: Option<String>,
    /// A file holding a token with the admin role, sent when joining (--join) a cluster started
    /// with --auth-file (adding a member is an admin request).
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// The CA bundle (PEM) the members' client-port certificates (--client-cert-file) chain to:
    /// the join talks TLS to the member it joins through.
    #[arg(long, value_name = "FILE")]
    pub join_tls_ca: Option<PathBuf>,
    /// Check the settings and print what the node would do (bootstrap with --peers, or join
    /// through --join announcing which addresses), then exit: nothing is bound, resolved or
    /// written (names are checked for their form only).
    #[arg(long)]
    pub dry_run: bool,
    /// Address for peer connections [default: this node's entry in --peers].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Address for client connections (produce, tail, status).
    #[arg(long, value_name = "HOST:PORT")]
    pub client_listen: Option<SocketAddr>,
    /// Address of the Prometheus text endpoint (GET /metrics) [default: none].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address for Kafka clients: the log as one topic with one partition [default: none].
    #[arg(long, value_name = "HOST:PORT")]
    pub kafka_listen: Option<SocketAddr>,
    /// Every voter's Kafka address as Metadata announces it, `1=host:port,...` [default: this
    /// node's --kafka-listen only].
    #[arg(long, value_name = "ID=ADDR,...")]
    pub kafka_advertise: Option<String>,
    /// Name of the Kafka topic the log appears as [default: the --cluster-id].
    #[arg(long, value_name = "NAME")]
    pub kafka_topic: Option<String>,
    /// Data directory (log segments, hard state, identity); created if missing.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cores to pin to: the raft thread on the first, the log writer on the second (or sharing
    /// the first) [default: unpinned].
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Leader heartbeat interval in milliseconds [default: 50].
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Lower end of the randomised election timeout, ms; at least 5 heartbeats [default: 250].
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Upper end of the randomised election timeout, ms [default: 500].
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Network backend: auto (io_uring, else poll), uring, poll [default: auto, or $RAFTLINE_NET_BACKEND].
    #[arg(long, value_name = "auto|uring|poll")]
    pub net_backend: Option<String>,
    /// Size of each log segment file in MiB [default: 64].
    #[arg(long)]
    pub segment_mib: Option<u64>,
    /// Largest batch a producer may append, in KiB [default: 1024].
    #[arg(long)]
    pub batch_kib_max: Option<u64>,
    /// An append not acknowledged within this many ms is answered Timeout [default: 10000].
    #[arg(long)]
    pub append_timeout_ms: Option<u64>,
    /// A log write outstanding this many ms means a stalled disk: the node logs it, exports it
    /// (raftline_disk_stalled), stops campaigning and, if it leads, hands leadership to a
    /// follower (or steps down) [default: 4 election timeouts (upper end), 2000].
    #[arg(long)]
    pub disk_stall_ms: Option<u64>,
    /// Idle this many ms after a log group, the log writer syncs a group holding only a
    /// durability marker, so that a power cut cannot leave the last group unvouched for (a
    /// rotted, acknowledged group then passes for a torn write: log/FORMAT.md, "Residual
    /// window"). Lower narrows that window at the cost of an fdatasync per idle pause
    /// [default: 10].
    #[arg(long)]
    pub durable_mark_idle_ms: Option<u64>,
    /// Acknowledge a log write only once a synced durability marker vouches for it (the next
    /// group's head, or a marker-only group synced at once when the writer is idle): closes the
    /// residual window above for power cuts too, at the cost of one more group commit of
    /// latency per acknowledgement.
    #[arg(long)]
    pub durable_mark_before_ack: bool,
    /// Close a client connection that sends nothing for this many seconds; 0 = never
    /// [default: 600].
    #[arg(long)]
    pub client_idle_timeout_s: Option<u64>,
    /// Client and Kafka connections at once from one address; at the limit a new one takes
    /// the slot of that address's longest-idle one, or is refused [default: 256].
    #[arg(long)]
    pub clients_per_source_max: Option<usize>,
    /// MiB all connections' send queues and decoder buffers may hold together; beyond it the
    /// client holding the most is closed [default: 512; at least 33].
    #[arg(long)]
    pub connection_buffers_mib: Option<usize>,
    /// This node's certificate for the peer port's mutual TLS (PEM, the chain from it up):
    /// a DNS subject alternative name `raftline-node-N` for this --id, for TLS server and
    /// client use. The three peer files are reloaded when they change (checked every 2 s).
    #[arg(long, value_name = "FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of --peer-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// The CA bundle (PEM) every peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Run the peer port in plaintext instead of mutual TLS: whoever reaches it can speak as
    /// any node. Only for a network nobody but the cluster's nodes can reach.
    #[arg(long)]
    pub peer_insecure: bool,
    /// Snapshot the materialised state after this many MiB of log applied since the last
    /// snapshot, then drop the log prefix; 0 = never [default: 256].
    #[arg(long)]
    pub snapshot_every_mib: Option<u64>,
    /// Also snapshot when this many seconds passed since the last snapshot and anything was
    /// applied since; 0 = only by size (and `raftline snapshot now`) [default: 0].
    #[arg(long)]
    pub snapshot_interval_s: Option<u64>,
    /// MiB of log kept below its end when compacting, so consumers can tail recent history
    /// [default: 64].
    #[arg(long)]
    pub retain_mib: Option<u64>,
    /// Write snapshot files at most this many MiB per second, so the log's fdatasyncs on the
    /// same disk do not wait behind a whole snapshot; 0 = as fast as the disk takes them
    /// [default: 64].
    #[arg(long)]
    pub snapshot_write_mib_per_s: Option<u64>,
    /// Largest materialised state in MiB. Once the state holds this much, the leader refuses
    /// appends that would add a key (error StateFull; Kafka: POLICY_VIOLATION) while overwrites
    /// and deletes of held keys go on, and every node keeps snapshotting and compacting
    /// [default: 1024].
    #[arg(long)]
    pub state_mib_max: Option<u64>,
    /// A delete's tombstone stays in the materialised state (and so in snapshots) until the log
    /// is this many records past it; then the key is simply absent. 0 = forever
    /// [default: 10000000].
    #[arg(long)]
    pub tombstone_retain_offsets: Option<u64>,
    /// EMULATION for benchmarks: hold every log fdatasync's completion back to a reference
    /// device's latency (hdd 10 ms, sata 1 ms, nvme 0.2 ms after it was issued) on top of the real
    /// write. Marked in the start-up output and in /metrics (raftline_emulated_disk).
    #[arg(long, value_enum, value_name = "hdd|sata|nvme")]
    pub emulate_disk: Option<DiskProfile>,
    /// TOML file of who may do what on the client port: tokens (as SHA-256 digests, made with
    /// `raftline auth hash-token`) and client-certificate names, each with a role (read <
    /// produce < admin). A connection must then authenticate before any request [default:
    /// none, every request is served]. Excludes --kafka-listen (no Kafka authentication yet).
    #[arg(long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// TLS on the client port: this node's certificate (PEM chain), naming the host clients
    /// dial it at (DNS name or IP address) [default: plaintext]. Needs --client-key-file.
    #[arg(long, value_name = "FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// The private key of --client-cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against this CA bundle (PEM); a verified
    /// certificate whose DNS name the auth file lists gets that role without a token. Clients
    /// without one are still admitted unless --client-cert-required.
    #[arg(long, value_name = "FILE")]
    pub client_trusted_ca_file: Option<PathBuf>,
    /// Refuse clients that present no certificate from --client-trusted-ca-file.
    #[arg(long)]
    pub client_cert_required: bool,
}

/// The same settings as read from a TOML file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    cluster_id: Option<String>,
    peers: Option<BTreeMap<String, String>>,
    peer_clients: Option<BTreeMap<String, String>>,
    join: Option<String>,
    advertise_peer_addr: Option<String>,
    advertise_client_addr: Option<String>,
    join_token_file: Option<PathBuf>,
    join_tls_ca: Option<PathBuf>,
    listen: Option<SocketAddr>,
    client_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    kafka_listen: Option<SocketAddr>,
    kafka_advertise: Option<BTreeMap<String, String>>,
    kafka_topic: Option<String>,
    data_dir: Option<PathBuf>,
    cores: Option<Vec<usize>>,
    heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    net_backend: Option<String>,
    segment_mib: Option<u64>,
    batch_kib_max: Option<u64>,
    append_timeout_ms: Option<u64>,
    disk_stall_ms: Option<u64>,
    durable_mark_idle_ms: Option<u64>,
    durable_mark_before_ack: Option<bool>,
    client_idle_timeout_s: Option<u64>,
    clients_per_source_max: Option<usize>,
    connection_buffers_mib: Option<usize>,
    peer_cert_file: Option<PathBuf>,
    peer_key_file: Option<PathBuf>,
    peer_trusted_ca_file: Option<PathBuf>,
    peer_insecure: Option<bool>,
    snapshot_every_mib: Option<u64>,
    snapshot_interval_s: Option<u64>,
    retain_mib: Option<u64>,
    snapshot_write_mib_per_s: Option<u64>,
    state_mib_max: Option<u64>,
    tombstone_retain_offsets: Option<u64>,
    emulate_disk: Option<DiskProfile>,
    auth_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    client_trusted_ca_file: Option<PathBuf>,
    client_cert_required: Option<bool>,
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_id_map(text: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut map = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .with_context(|| format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("node id {id:?} in {item:?} is not a number"))?;
        if map.insert(id, addr.trim().to_string()).is_some() {
            bail!("node id {id} is listed twice");
        }
    }
    Ok(map)
}

fn parse_cores(text: &str) -> anyhow::Result<Vec<usize>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            c.parse()
                .with_context(|| format!("core {c:?} is not a number"))
        })
        .collect()
}

fn file_map(map: BTreeMap<String, String>, what: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    map.into_iter()
        .map(|(k, v)| {
            let id = k
                .parse()
                .with_context(|| format!("{what}: key {k:?} is not a node id"))?;
            Ok((id, v))
        })
        .collect()
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing the config file {}", path.display()))
}

impl ServerArgs {
    /// Merges flags over the config file and validates the result (names in --peers are looked
    /// up).
    pub fn resolve(self) -> anyhow::Result<NodeConfig> {
        self.resolve_with(resolve_addr)
    }

    /// [`ServerArgs::resolve`] without looking names up (`--dry-run`): a name in --peers stands
    /// for a documentation address (192.0.2.1) with its port.
    pub fn resolve_offline(self) -> anyhow::Result<NodeConfig> {
        self.resolve_with(|addr| {
            addr.parse().or_else(|_| {
                let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
                let port = port.with_context(|| format!("{addr:?} is not host:port"))?;
                Ok(SocketAddr::from(([192, 0, 2, 1], port)))
            })
        })
    }

    fn resolve_with(
        self,
        lookup: impl Fn(&str) -> anyhow::Result<SocketAddr>,
    ) -> anyhow::Result<NodeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let id = self.id.or(file.id).context("--id is required")?;
        let cluster_name = self
            .cluster_id
            .or(file.cluster_id)
            .context("--cluster-id is required")?;
        let join = self.join.or(file.join);
        let join_credentials = JoinCredentials {
            token_file: self.join_token_file.or(file.join_token_file),
            tls_ca: self.join_tls_ca.or(file.join_tls_ca),
        };
        if join.is_none()
            && (join_credentials.token_file.is_some() || join_credentials.tls_ca.is_some())
        {
            bail!("--join-token-file and --join-tls-ca are what a node presents when it joins: give --join too");
        }
        let peers_text = match (self.peers, file.peers) {
            (Some(text), _) => parse_id_map(&text)?,
            (None, Some(map)) => file_map(map, "peers")?,
            (None, None) if join.is_some() => BTreeMap::new(),
            (None, None) => bail!(
                "--peers is required to bootstrap a cluster (every voter, this node included: \
                 1=host:port,2=...), or --join HOST:PORT to join one"
            ),
        };
        let peer_clients = match (self.peer_clients, file.peer_clients) {
            (Some(text), _) => parse_id_map(&text)?,
            (None, Some(map)) => file_map(map, "peer_clients")?,
            (None, None) => BTreeMap::new(),
        };
        // --peers and --join together: the bootstrap voters bootstrap (or, on a new data
        // directory after the operator removed them, join), every other node joins.
        let (peers_text, peer_clients, join, rejoin) = match join {
            Some(via) if peers_text.contains_key(&id) => {
                (peers_text, peer_clients, None, Some(via))
            }
            Some(via) => (BTreeMap::new(), BTreeMap::new(), Some(via), None),
            None => (peers_text, peer_clients, None, None),
        };
        let advertise_peer = self.advertise_peer_addr.or(file.advertise_peer_addr);
        let advertise_client = self.advertise_client_addr.or(file.advertise_client_addr);
        let kafka_advertise = match (self.kafka_advertise, file.kafka_advertise) {
            (Some(text), _) => parse_id_map(&text)?,
            (None, Some(map)) => file_map(map, "kafka_advertise")?,
            (None, None) => BTreeMap::new(),
        };
        let mut peers = BTreeMap::new();
        for (&peer, addr) in &peers_text {
            let resolved =
                lookup(addr).with_context(|| format!("peer {peer}'s address {addr:?}"))?;
            peers.insert(peer, resolved);
        }
        let cores = match (self.cores, file.cores) {
            (Some(text), _) => parse_cores(&text)?,
            (None, Some(list)) => list,
            (None, None) => Vec::new(),
        };
        let net_backend_text = self
            .net_backend
            .or(file.net_backend)
            .or_else(|| std::env::var(NET_BACKEND_ENV).ok())
            .unwrap_or_else(|| "auto".into());
        let net_backend: Backend = net_backend_text.parse().map_err(|_| {
            anyhow::anyhow!("--net-backend {net_backend_text:?}: use auto, uring or poll")
        })?;
        let own = peers.get(&id).copied();
        let listen = self.listen.or(file.listen).or(own).with_context(|| {
            format!("--peers does not list this node's id {id}, and --listen is not given")
        })?;
        let election_timeout_max = Duration::from_millis(
            self.election_timeout_max_ms
                .or(file.election_timeout_max_ms)
                .unwrap_or(ELECTION_TIMEOUT_MAX_MS_DEFAULT),
        );
        let peer_security = peer_security(
            id,
            self.peer_cert_file.or(file.peer_cert_file),
            self.peer_key_file.or(file.peer_key_file),
            self.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
            self.peer_insecure || file.peer_insecure.unwrap_or(false),
        )?;
        let access = match self.auth_file.or(file.auth_file) {
            Some(path) => Some(read_auth_file(&path)?),
            None => None,
        };
        let client_tls = match (
            self.client_cert_file.or(file.client_cert_file),
            self.client_key_file.or(file.client_key_file),
        ) {
            (Some(cert), Some(key)) => Some(ClientTlsFiles {
                cert,
                key,
                trusted_ca: self.client_trusted_ca_file.or(file.client_trusted_ca_file),
                cert_required: self.client_cert_required
                    || file.client_cert_required.unwrap_or(false),
            }),
            (None, None) => {
                if self.client_trusted_ca_file.is_some()
                    || file.client_trusted_ca_file.is_some()
                    || self.client_cert_required
                    || file.client_cert_required == Some(true)
                {
                    bail!(
                        "--client-trusted-ca-file and --client-cert-required need client-port \
                         TLS: give --client-cert-file and --client-key-file too"
                    );
                }
                None
            }
            _ => bail!("--client-cert-file and --client-key-file go together"),
        };
        let cfg = NodeConfig {
            id,
            cluster_name,
            peers,
            peer_names: peers_text,
            peer_clients,
            join,
            rejoin,
            join_credentials,
            advertise_peer,
            advertise_client,
            listen,
            client_listen: self
                .client_listen
                .or(file.client_listen)
                .context("--client-listen is required")?,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            kafka_listen: self.kafka_listen.or(file.kafka_listen),
            kafka_advertise,
            kafka_topic: self.kafka_topic.or(file.kafka_topic),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .context("--data-dir is required")?,
            cores,
            tick: Duration::from_millis(TICK_MS_DEFAULT),
            heartbeat: Duration::from_millis(
                self.heartbeat_ms
                    .or(file.heartbeat_ms)
                    .unwrap_or(HEARTBEAT_MS_DEFAULT),
            ),
            election_timeout_min: Duration::from_millis(
                self.election_timeout_min_ms
                    .or(file.election_timeout_min_ms)
                    .unwrap_or(ELECTION_TIMEOUT_MIN_MS_DEFAULT),
            ),
            election_timeout_max,
            net_backend,
            segment_bytes: self
                .segment_mib
                .or(file.segment_mib)
                .map_or(SEGMENT_BYTES_DEFAULT, |mib| mib << 20),
            batch_bytes_max: self
                .batch_kib_max
                .or(file.batch_kib_max)
                .map_or(BATCH_BYTES_MAX_DEFAULT, |kib| (kib << 10) as usize),
            append_timeout: Duration::from_millis(
                self.append_timeout_ms
                    .or(file.append_timeout_ms)
                    .unwrap_or(APPEND_TIMEOUT_MS_DEFAULT),
            ),
            disk_stall: self.disk_stall_ms.or(file.disk_stall_ms).map_or(
                election_timeout_max * DISK_STALL_ELECTIONS_DEFAULT,
                Duration::from_millis,
            ),
            durable_mark_idle: Duration::from_millis(
                self.durable_mark_idle_ms
                    .or(file.durable_mark_idle_ms)
                    .unwrap_or(DURABLE_MARK_IDLE_MS_DEFAULT),
            ),
            durable_mark_before_ack: self.durable_mark_before_ack
                || file.durable_mark_before_ack.unwrap_or(false),
            client_idle_timeout: match self
                .client_idle_timeout_s
                .or(file.client_idle_timeout_s)
                .unwrap_or(CLIENT_IDLE_TIMEOUT_S_DEFAULT)
            {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            clients_per_source_max: self
                .clients_per_source_max
                .or(file.clients_per_source_max)
                .unwrap_or(CLIENTS_PER_SOURCE_MAX_DEFAULT),
            connection_buffers_bytes: self
                .connection_buffers_mib
                .or(file.connection_buffers_mib)
                .map_or(BUFFER_BUDGET_BYTES_DEFAULT, |mib| mib << 20),
            peer_security,
            snapshots: SnapshotPolicy {
                every_bytes: self
                    .snapshot_every_mib
                    .or(file.snapshot_every_mib)
                    .unwrap_or(SnapshotPolicy::default().every_bytes >> 20)
                    << 20,
                retain_bytes: self
                    .retain_mib
                    .or(file.retain_mib)
                    .unwrap_or(SnapshotPolicy::default().retain_bytes >> 20)
                    << 20,
                state_bytes_max: (self
                    .state_mib_max
                    .or(file.state_mib_max)
                    .unwrap_or((SnapshotPolicy::default().state_bytes_max >> 20) as u64)
                    << 20) as usize,
                interval: self
                    .snapshot_interval_s
                    .or(file.snapshot_interval_s)
                    .filter(|&s| s > 0)
                    .map(Duration::from_secs),
                write_bytes_per_s: match self
                    .snapshot_write_mib_per_s
                    .or(file.snapshot_write_mib_per_s)
                {
                    Some(0) => None,
                    Some(mib) => Some(mib << 20),
                    None => SnapshotPolicy::default().write_bytes_per_s,
                },
                tombstone_retain_offsets: match self
                    .tombstone_retain_offsets
                    .or(file.tombstone_retain_offsets)
                {
                    Some(0) => None,
                    Some(n) => Some(n),
                    None => SnapshotPolicy::default().tombstone_retain_offsets,
                },
            },
            emulated_disk: self
                .emulate_disk
                .or(file.emulate_disk)
                .map(DiskProfile::emulation),
            access,
            client_tls,
            warnings: Vec::new(),
        };
        Ok(cfg.validated()?)
    }
}

/// The peer port's security from its flags: all three TLS files, or `--peer-insecure` alone.
fn peer_security(
    id: u64,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trusted_ca: Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<PeerSecurity> {
    const FLAGS: &str = "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file";
    match (cert, key, trusted_ca, insecure) {
        (Some(cert), Some(key), Some(trusted_ca), false) => Ok(PeerSecurity::Tls(PeerTlsFiles {
            cert,
            key,
            trusted_ca,
        })),
        (None, None, None, true) => Ok(PeerSecurity::Insecure),
        (None, None, None, false) => bail!(
            "the peer port runs mutual TLS: pass {FLAGS} (a certificate naming \
             raftline-node-{id}, its key, and the CA bundle peers' certificates chain to; \
             tools/deploy/README.md says how to make them), or --peer-insecure for a network \
             only the cluster's nodes can reach"
        ),
        (_, _, _, true) => bail!("--peer-insecure excludes {FLAGS}"),
        (cert, key, trusted_ca, false) => {
            let missing: Vec<&str> = [
                ("--peer-cert-file", cert.is_none()),
                ("--peer-key-file", key.is_none()),
                ("--peer-trusted-ca-file", trusted_ca.is_none()),
            ]
            .iter()
            .filter(|(_, missing)| *missing)
            .map(|(flag, _)| *flag)
            .collect();
            bail!(
                "peer TLS needs all of {FLAGS}: {} missing",
                missing.join(" and ")
            )
        }
    }
}

fn resolve_addr(addr: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?}"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServerArgs {
        ServerArgs {
            id: Some(1),
            cluster_id: Some("c".into()),
            peers: Some("1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103".into()),
            peer_clients: Some("1=127.0.0.1:7201,2=127.0.0.1:7202,3=127.0.0.1:7203".into()),
            client_listen: Some("127.0.0.1:7201".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            peer_insecure: true,
            ..ServerArgs::default()
        }
    }

    #[test]
    fn the_peer_port_needs_all_three_tls_files_or_an_explicit_insecure() {
        let mut neither = args();
        neither.peer_insecure = false;
        let err = neither.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--peer-cert-file, --peer-key-file and --peer-trusted-ca-file")
                && err.contains("raftline-node-1")
                && err.contains("--peer-insecure"),
            "{err}"
        );
        let mut partial = args();
        partial.peer_insecure = false;
        partial.peer_cert_file = Some("/etc/raftline/node.pem".into());
        let err = partial.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--peer-key-file and --peer-trusted-ca-file missing"),
            "{err}"
        );
        let mut both = args();
        both.peer_cert_file = Some("/etc/raftline/node.pem".into());
        let err = both.resolve().unwrap_err().to_string();
        assert!(err.contains("--peer-insecure excludes"), "{err}");
        assert_eq!(
            args().resolve().unwrap().peer_security,
            PeerSecurity::Insecure
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "peer_cert_file = \"/c.pem\"\npeer_key_file = \"/k.pem\"\n\
             peer_trusted_ca_file = \"/ca.pem\"\n",
        )
        .unwrap();
        let mut from_file = args();
        from_file.peer_insecure = false;
        from_file.config = Some(path);
        let files = PeerTlsFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
            trusted_ca: "/ca.pem".into(),
        };
        assert_eq!(
            from_file.resolve().unwrap().peer_security,
            PeerSecurity::Tls(files)
        );
    }

    #[test]
    fn defaults_are_valid_and_listen_on_the_own_peer_entry() {
        let cfg = args().resolve().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:7101".parse::<SocketAddr>().unwrap());
        assert_eq!(cfg.ticks(), (5, 25, 50));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }

    #[test]
    fn election_timeout_under_five_heartbeats_is_refused_with_the_reason() {
        let mut a = args();
        a.heartbeat_ms = Some(100);
        a.election_timeout_min_ms = Some(300);
        a.election_timeout_max_ms = Some(600);
        let err = a.resolve().unwrap_err().to_string();
        assert!(
            err.contains("under 5x the heartbeat") && err.contains("at least 500"),
            "{err}"
        );
    }

    #[test]
    fn client_tls_settings_that_do_not_go_together_are_refused() {
        let mut a = args();
        a.client_cert_file = Some("/etc/cert.pem".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        let mut a = args();
        a.client_trusted_ca_file = Some("/etc/ca.pem".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("need client-port TLS"), "{err}");
        let mut a = args();
        a.client_cert_file = Some("/etc/cert.pem".into());
        a.client_key_file = Some("/etc/key.pem".into());
        a.client_cert_required = true;
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("--client-cert-required needs"), "{err}");
    }

    #[test]
    fn an_even_number_of_voters_gets_a_warning() {
        let mut a = args();
        a.peers = Some("1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3,4=127.0.0.1:4".into());
        a.peer_clients = Some("1=a:1,2=a:2,3=a:3,4=a:4".into());
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.warnings.len(), 1);
        assert!(
            cfg.warnings[0].contains("no more failures than 3"),
            "{:?}",
            cfg.warnings
        );
    }

    #[test]
    fn a_config_file_supplies_settings_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "id = 2\ncluster_id = \"from-file\"\nclient_listen = \"127.0.0.1:7202\"\n\
             data_dir = \"/tmp/d\"\nheartbeat_ms = 20\nelection_timeout_min_ms = 100\n\
             election_timeout_max_ms = 200\n\
             [peers]\n1 = \"127.0.0.1:7101\"\n2 = \"127.0.0.1:7102\"\n3 = \"127.0.0.1:7103\"\n",
        )
        .unwrap();
        let cfg = ServerArgs {
            config: Some(path.clone()),
            heartbeat_ms: Some(10),
            peer_insecure: true,
            ..ServerArgs::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((cfg.id, cfg.cluster_name.as_str()), (2, "from-file"));
        assert_eq!(cfg.listen, "127.0.0.1:7102".parse::<SocketAddr>().unwrap());
        assert_eq!(cfg.heartbeat, Duration::from_millis(10));
        assert_eq!(cfg.election_timeout_min, Duration::from_millis(100));
        std::fs::write(&path, "id = 2\nbogus = 1\n").unwrap();
        let err = format!(
            "{:#}",
            ServerArgs {
                config: Some(path),
                ..ServerArgs::default()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn the_snapshot_write_rate_defaults_to_64_mib_per_s_and_0_lifts_it() {
        let rate = |mib: Option<u64>| {
            let mut a = args();
            a.snapshot_write_mib_per_s = mib;
            a.resolve().unwrap().snapshots.write_bytes_per_s
        };
        assert_eq!(rate(None), Some(64 << 20));
        assert_eq!(rate(Some(16)), Some(16 << 20));
        assert_eq!(rate(Some(0)), None);
    }

    #[test]
    fn kafka_settings_come_from_flags_or_the_file_and_this_node_advertises_its_listener() {
        let mut a = args();
        a.kafka_listen = Some("127.0.0.1:9092".parse().unwrap());
        a.kafka_advertise = Some("2=10.0.0.2:9092,3=10.0.0.3:9092".into());
        let cfg = a.resolve().unwrap();
        assert_eq!(cfg.kafka_advertise[&1], "127.0.0.1:9092");
        assert_eq!(cfg.kafka_advertise[&3], "10.0.0.3:9092");
        assert_eq!(
            cfg.kafka_topic, None,
            "the topic defaults to the cluster's name"
        );
        let mut wildcard = args();
        wildcard.kafka_listen = Some("0.0.0.0:9092".parse().unwrap());
        let err = wildcard.resolve().unwrap_err();
        assert!(err.to_string().contains("--kafka-advertise"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "kafka_listen = \"127.0.0.1:9093\"\nkafka_topic = \"events\"\n\
             [kafka_advertise]\n1 = \"k1:9092\"\n",
        )
        .unwrap();
        let mut from_file = args();
        from_file.config = Some(path);
        let cfg = from_file.resolve().unwrap();
        assert_eq!(cfg.kafka_listen, Some("127.0.0.1:9093".parse().unwrap()));
        assert_eq!(cfg.kafka_topic.as_deref(), Some("events"));
        assert_eq!(cfg.kafka_advertise[&1], "k1:9092");
    }

    #[test]
    fn durable_mark_before_ack_is_off_unless_the_flag_or_the_file_turns_it_on() {
        assert!(!args().resolve().unwrap().durable_mark_before_ack);
        let mut flagged = args();
        flagged.durable_mark_before_ack = true;
        assert!(flagged.resolve().unwrap().durable_mark_before_ack);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "durable_mark_before_ack = true\n").unwrap();
        let mut from_file = args();
        from_file.config = Some(path);
        assert!(from_file.resolve().unwrap().durable_mark_before_ack);
    }

    #[test]
    fn emulate_disk_comes_from_the_flag_or_the_file_and_an_unknown_profile_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            server: ServerArgs,
        }
        let parsed = Cli::try_parse_from(["server", "--emulate-disk", "hdd"]).unwrap();
        assert_eq!(parsed.server.emulate_disk, Some(DiskProfile::Hdd));
        let err = Cli::try_parse_from(["server", "--emulate-disk", "floppy"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("floppy") && err.contains("hdd, sata, nvme"),
            "{err}"
        );
        assert_eq!(args().resolve().unwrap().emulated_disk, None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "emulate_disk = \"sata\"\n").unwrap();
        let from_file = |path: &Path| {
            let mut a = args();
            a.config = Some(path.to_path_buf());
            a.resolve()
        };
        assert_eq!(
            from_file(&path).unwrap().emulated_disk,
            Some(DiskProfile::Sata.emulation())
        );
        std::fs::write(&path, "emulate_disk = \"floppy\"\n").unwrap();
        let err = format!("{:#}", from_file(&path).unwrap_err());
        assert!(err.contains("floppy") && err.contains("hdd"), "{err}");
    }

    #[test]
    fn join_replaces_peers_and_needs_addresses_the_cluster_can_reach() {
        let joiner = || ServerArgs {
            id: Some(4),
            cluster_id: Some("c".into()),
            join: Some("127.0.0.1:7201".into()),
            listen: Some("127.0.0.1:7104".parse().unwrap()),
            client_listen: Some("127.0.0.1:7204".parse().unwrap()),
            data_dir: Some("/tmp/x".into()),
            peer_insecure: true,
            ..ServerArgs::default()
        };
        let cfg = joiner().resolve().unwrap();
        assert!(cfg.peers.is_empty());
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let mut wildcard = joiner();
        wildcard.listen = Some("0.0.0.0:7104".parse().unwrap());
        let err = wildcard.resolve().unwrap_err().to_string();
        assert!(
            err.contains("--listen 0.0.0.0:7104") && err.contains("--advertise-peer-addr"),
            "{err}"
        );
        let mut neither = joiner();
        neither.join = None;
        let err = neither.resolve().unwrap_err().to_string();
        assert!(err.contains("--join"), "{err}");
    }

    #[test]
    fn with_peers_and_join_the_listed_nodes_bootstrap_and_the_others_join_at_advertised_names() {
        // One command line for every pod: --peers names the bootstrap voters 1-3.
        let pod = |id: u64| ServerArgs {
            id: Some(id),
            join: Some("raftline.prod.svc:7401".into()),
            listen: Some("0.0.0.0:7301".parse().unwrap()),
            client_listen: Some("0.0.0.0:7401".parse().unwrap()),
            advertise_peer_addr: Some(format!("raftline-{}.raftline-peers:7301", id - 1)),
            advertise_client_addr: Some(format!("raftline-{}.raftline-peers:7401", id - 1)),
            ..args()
        };
        let voter = pod(2).resolve().unwrap();
        assert_eq!((voter.join, voter.peers.len()), (None, 3));
        let joiner = pod(4).resolve().unwrap();
        assert_eq!(joiner.join.as_deref(), Some("raftline.prod.svc:7401"));
        assert!(joiner.peers.is_empty() && joiner.peer_clients.is_empty());
        assert_eq!(
            joiner.announced(),
            (
                "raftline-3.raftline-peers:7301".to_string(),
                "raftline-3.raftline-peers:7401".to_string()
            )
        );
        // A joiner's announced addresses must be dialable: no wildcard, no port 0.
        let mut wildcard = pod(4);
        wildcard.advertise_peer_addr = Some("0.0.0.0:7301".into());
        let err = wildcard.resolve().unwrap_err().to_string();
        assert!(err.contains("--advertise-peer-addr 0.0.0.0:7301"), "{err}");
        let mut unset = pod(4);
        unset.advertise_client_addr = None;
        let err = unset.resolve().unwrap_err().to_string();
        assert!(err.contains("--client-listen 0.0.0.0:7401"), "{err}");
    }

    #[test]
    fn a_node_missing_from_its_peer_list_is_refused() {
        let mut a = args();
        a.id = Some(9);
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("--peers does not list"));
    }
}
