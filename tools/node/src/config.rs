//! What a node needs to start ([`NodeConfig`]), its defaults and the rules its settings must
//! obey together. The CLI turns flags and TOML into this; benchmarks and tests build it directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use raftline_netio::net::{
    load_certs, load_key, load_roots, server_config, ClientAuth, PeerTlsFiles, TlsError,
    BUFFER_BUDGET_BYTES_DEFAULT, CLIENTS_PER_SOURCE_MAX_DEFAULT,
};
use raftline_netio::reactor::Backend;

use crate::access::AccessPolicy;
use crate::members::check_address;
use crate::snapshots::SnapshotPolicy;

/// Default heartbeat interval: a LAN round trip is well under a millisecond; 50 ms keeps idle
/// traffic negligible while failures are noticed quickly.
pub const HEARTBEAT_MS_DEFAULT: u64 = 50;
/// Default election timeout range (randomised per election): 5–10 heartbeats.
pub const ELECTION_TIMEOUT_MIN_MS_DEFAULT: u64 = 250;
/// Upper end of the default election timeout range.
pub const ELECTION_TIMEOUT_MAX_MS_DEFAULT: u64 = 500;
/// An election timeout must span at least this many heartbeats.
pub const ELECTION_HEARTBEATS_MIN: u64 = 5;
/// A log write outstanding for this many election timeouts (the upper end) means a stalled
/// disk: the node stops campaigning and, leading, hands leadership over. Long enough that a
/// healthy disk's slowest fdatasync under load never trips it; short enough that writes move
/// to a new leader within a few election timeouts.
pub const DISK_STALL_ELECTIONS_DEFAULT: u32 = 4;
/// The log writer's idle delay before a marker-only group: the log's own default.
pub const DURABLE_MARK_IDLE_MS_DEFAULT: u64 =
    raftline_log::DURABLE_MARK_IDLE_DEFAULT.as_millis() as u64;
/// Length of one Raft tick (the unit all Raft timing is counted in).
pub const TICK_MS_DEFAULT: u64 = 10;
/// Default size of each log segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default largest batch a producer may append.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Default time after which an append not yet acknowledged is answered `Timeout`.
pub const APPEND_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time after which a client connection that sent nothing is closed (Kafka brokers'
/// `connections.max.idle.ms` is the same): idle connections do not hold slots forever.
pub const CLIENT_IDLE_TIMEOUT_S_DEFAULT: u64 = 600;
/// On stop: how long appends already accepted may take to be acknowledged.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Shortest wait for a membership change to commit or a leadership transfer to complete
/// before the operator gets `Timeout` (the append timeout, if longer).
pub const ADMIN_TIMEOUT_MIN: Duration = Duration::from_secs(5);
/// Room above the batch limit for the rest of a Kafka Produce request (its header, topic and
/// partition fields).
pub const KAFKA_REQUEST_HEADROOM_BYTES: usize = 64 << 10;
/// Subscriptions one client connection may hold.
pub const SUBSCRIPTIONS_PER_CLIENT_MAX: usize = 64;

/// A node's log made to behave like a slower disk (benchmarks only; always marked as such).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEmulation {
    /// The reference device's name (`hdd`, `sata`, `nvme`): the metrics label.
    pub profile: &'static str,
    /// Least time from issuing a log write + fdatasync to its completion.
    pub fsync_latency: Duration,
}

impl DiskEmulation {
    /// One line saying what the emulation does, for start-up logs and report headers.
    pub fn banner(&self) -> String {
        let latency = if self.fsync_latency >= Duration::from_millis(1) {
            format!("{} ms", self.fsync_latency.as_millis())
        } else {
            format!("{} us", self.fsync_latency.as_micros())
        };
        format!(
            "EMULATED DISK ({} profile): every log fdatasync completes no earlier than {latency} \
             after it was issued, on top of the real write; figures are not this disk's",
            self.profile
        )
    }
}

/// TLS on the client port: the node's certificate and key, and optionally the CA that client
/// certificates must chain to (`--client-cert-file`, `--client-key-file`,
/// `--client-trusted-ca-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The certificate (chain) clients verify; it must name the host they dial.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// With it, client certificates are asked for and verified against this CA bundle (a
    /// client without one is still admitted unless `cert_required`): the names of a verified
    /// one are matched against the auth file's `[[certificate]]` entries.
    pub trusted_ca: Option<PathBuf>,
    /// Refuse clients that present no certificate (needs `trusted_ca`).
    pub cert_required: bool,
}

impl ClientTlsFiles {
    /// The rustls server configuration of the client port.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let client_auth = match &self.trusted_ca {
            None => ClientAuth::None,
            Some(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                if self.cert_required {
                    ClientAuth::Required(roots)
                } else {
                    ClientAuth::Optional(roots)
                }
            }
        };
        server_config(load_certs(&self.cert)?, load_key(&self.key)?, client_auth)
    }
}

/// A settings combination the node refuses to run with, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// A joining node's credentials for the client port of the member it joins through: adding a
/// member is an admin request, so a cluster started with `--auth-file` wants a token with the
/// admin role, and one whose client port runs TLS wants the CA its certificates chain to.
#[derive(Debug, Clone, Default)]
pub struct JoinCredentials {
    /// A file holding the token (read at the join, so it shows in no process listing).
    pub token_file: Option<PathBuf>,
    /// The CA bundle (PEM) the members' client-port certificates chain to: the join talks TLS.
    pub tls_ca: Option<PathBuf>,
}

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub id: u64,
    /// The cluster's name.
    pub cluster_name: String,
    /// Peer address of every voter (this node included).
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Each voter's peer address as configured, when it was a name (`host:port`): resolved
    /// again every few seconds, so a replaced machine that kept its name is found at its new
    /// address (empty: the addresses are fixed).
    pub peer_names: BTreeMap<u64, String>,
    /// Client address of every voter that has one configured.
    pub peer_clients: BTreeMap<u64, String>,
    /// Join an existing cluster through the member at this client address (`--join`): the node
    /// asks to be added as a learner at its announced addresses ([`NodeConfig::announced`]);
    /// `peers` is then empty.
    pub join: Option<String>,
    /// A bootstrap voter's `--join` (given with `--peers`: one command line for every node, as
    /// a StatefulSet has). On a pristine data directory the node first asks the cluster there
    /// whether its id is still a member: one the operator removed (its disk was lost) joins as
    /// a learner instead of bootstrapping; one recorded on another data directory is refused.
    pub rejoin: Option<String>,
    /// What a joining node presents to the member it joins through, for a cluster whose client
    /// port requires them (`--join-token-file`, `--join-tls-ca`).
    pub join_credentials: JoinCredentials,
    /// The peer address a joining node announces (`--advertise-peer-addr`, `ip:port` or a name)
    /// [default: `listen`].
    pub advertise_peer: Option<String>,
    /// The client address a joining node announces (`--advertise-client-addr`) [default:
    /// `client_listen`].
    pub advertise_client: Option<String>,
    /// Peer listen address.
    pub listen: SocketAddr,
    /// Client listen address.
    pub client_listen: SocketAddr,
    /// Metrics listen address.
    pub metrics_listen: Option<SocketAddr>,
    /// Kafka listen address (`None`: no Kafka listener).
    pub kafka_listen: Option<SocketAddr>,
    /// The Kafka address Metadata announces for each node (this node's defaults to
    /// `kafka_listen`).
    pub kafka_advertise: BTreeMap<u64, String>,
    /// The Kafka topic the log appears as (`None`: the cluster's name).
    pub kafka_topic: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Cores to pin to (empty: unpinned).
    pub cores: Vec<usize>,
    /// Tick length.
    pub tick: Duration,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range.
    pub election_timeout_min: Duration,
    /// Upper end of the election timeout range.
    pub election_timeout_max: Duration,
    /// Network backend.
    pub net_backend: Backend,
    /// Log segment size.
    pub segment_bytes: u64,
    /// Largest producer batch.
    pub batch_bytes_max: usize,
    /// Append acknowledgement timeout.
    pub append_timeout: Duration,
    /// A log write outstanding this long means a stalled disk (see `disk_watch.rs`).
    pub disk_stall: Duration,
    /// How long the log writer idles after a group before it syncs a marker-only group.
    pub durable_mark_idle: Duration,
    /// The log writer acknowledges a group only once a synced marker vouches for it.
    pub durable_mark_before_ack: bool,
    /// A client connection that sends nothing for this long is closed (`None`: never).
    pub client_idle_timeout: Option<Duration>,
    /// Client and Kafka connections at once from one address.
    pub clients_per_source_max: usize,
    /// Bytes all connections' send queues and decoder buffers may hold together.
    pub connection_buffers_bytes: usize,
    /// How the peer port is secured.
    pub peer_security: PeerSecurity,
    /// When to snapshot and compact the log.
    pub snapshots: SnapshotPolicy,
    /// Emulated device whose fdatasync latency the log imposes (benchmarks only).
    pub emulated_disk: Option<DiskEmulation>,
    /// Who may do what on the client port (`--auth-file`; `None`: every request is served).
    pub access: Option<AccessPolicy>,
    /// TLS on the client port (`None`: plaintext).
    pub client_tls: Option<ClientTlsFiles>,
    /// Things that work but deserve the operator's attention (filled by [`NodeConfig::validated`]).
    pub warnings: Vec<String>,
}

/// How a node's peer port is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSecurity {
    /// Mutual TLS with these PEM files, reloaded when they change (`tls_reload.rs`): a peer
    /// must present a certificate from the trusted CA naming the node it says it is.
    Tls(PeerTlsFiles),
    /// Plaintext, for a network only the cluster's nodes can reach (`--peer-insecure`): anyone
    /// who reaches the peer port can speak as any node. Warned at start.
    Insecure,
}

impl NodeConfig {
    /// The peer and client addresses a joining node asks to be added at: the advertised ones,
    /// else its listen addresses.
    pub fn announced(&self) -> (String, String) {
        (
            self.advertise_peer
                .clone()
                .unwrap_or_else(|| self.listen.to_string()),
            self.advertise_client
                .clone()
                .unwrap_or_else(|| self.client_listen.to_string()),
        )
    }

    /// Whether the addresses a joining node announces ([`NodeConfig::announced`]) are ones
    /// other nodes and clients can dial.
    pub fn check_announced(&self) -> Result<(), ConfigError> {
        for (flag, advertised, advertise_flag, listen) in [
            (
                "--listen",
                &self.advertise_peer,
                "--advertise-peer-addr",
                self.listen,
            ),
            (
                "--client-listen",
                &self.advertise_client,
                "--advertise-client-addr",
                self.client_listen,
            ),
        ] {
            match advertised {
                Some(address) => check_address(advertise_flag, address).map_err(ConfigError)?,
                None if listen.ip().is_unspecified() || listen.port() == 0 => {
                    return Err(ConfigError(format!(
                        "{flag} {listen}: a joining node announces its listen addresses to the \
                         cluster, so they must be ones other nodes and clients can reach; or \
                         give the address to announce with {advertise_flag}"
                    )))
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Node `id` of the cluster `cluster_name` whose voters listen for peers on `peers`, with
    /// every other setting at its default (peer port = its own entry in `peers`, insecure).
    pub fn new(
        id: u64,
        cluster_name: impl Into<String>,
        peers: BTreeMap<u64, SocketAddr>,
        client_listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
    ) -> NodeConfig {
        let listen = peers
            .get(&id)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        NodeConfig {
            id,
            cluster_name: cluster_name.into(),
            peers,
            peer_names: BTreeMap::new(),
            peer_clients: BTreeMap::new(),
            join: None,
            rejoin: None,
            join_credentials: JoinCredentials::default(),
            advertise_peer: None,
            advertise_client: None,
            listen,
            client_listen,
            metrics_listen: None,
            kafka_listen: None,
            kafka_advertise: BTreeMap::new(),
            kafka_topic: None,
            data_dir: data_dir.into(),
            cores: Vec::new(),
            tick: Duration::from_millis(TICK_MS_DEFAULT),
            heartbeat: Duration::from_millis(HEARTBEAT_MS_DEFAULT),
            election_timeout_min: Duration::from_millis(ELECTION_TIMEOUT_MIN_MS_DEFAULT),
            election_timeout_max: Duration::from_millis(ELECTION_TIMEOUT_MAX_MS_DEFAULT),
            net_backend: Backend::Auto,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            append_timeout: Duration::from_millis(APPEND_TIMEOUT_MS_DEFAULT),
            disk_stall: Duration::from_millis(ELECTION_TIMEOUT_MAX_MS_DEFAULT)
                * DISK_STALL_ELECTIONS_DEFAULT,
            durable_mark_idle: Duration::from_millis(DURABLE_MARK_IDLE_MS_DEFAULT),
            durable_mark_before_ack: false,
            client_idle_timeout: Some(Duration::from_secs(CLIENT_IDLE_TIMEOUT_S_DEFAULT)),
            clients_per_source_max: CLIENTS_PER_SOURCE_MAX_DEFAULT,
            connection_buffers_bytes: BUFFER_BUDGET_BYTES_DEFAULT,
            peer_security: PeerSecurity::Insecure,
            snapshots: SnapshotPolicy::default(),
            emulated_disk: None,
            access: None,
            client_tls: None,
            warnings: Vec::new(),
        }
    }

    /// Checks the settings against each other; collects warnings into `warnings`.
    pub fn validated(mut self) -> Result<NodeConfig, ConfigError> {
        let refuse = |why: String| Err(ConfigError(why));
        if self.id == 0 {
            return refuse("--id 0 is reserved for clients; node ids start at 1".into());
        }
        if self.peers.contains_key(&0) {
            return refuse("--peers: node id 0 is reserved for clients".into());
        }
        if self.join.is_some() {
            if !self.peers.is_empty() {
                return refuse(
                    "--join and --peers exclude each other: --peers bootstraps a new cluster, \
                     --join enters an existing one (which knows its members)"
                        .into(),
                );
            }
            self.check_announced()?;
        } else if !self.peers.contains_key(&self.id) {
            return refuse(format!(
                "--peers must list every voter including this node (id {}); it lists {:?}",
                self.id,
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        if self.cluster_name.is_empty() {
            return refuse("--cluster-id must not be empty".into());
        }
        let ms = |d: Duration| d.as_millis() as u64;
        if self.heartbeat < self.tick {
            return refuse(format!(
                "--heartbeat-ms {} is shorter than the {} ms tick Raft counts time in",
                ms(self.heartbeat),
                ms(self.tick)
            ));
        }
        if ms(self.election_timeout_min) < ELECTION_HEARTBEATS_MIN * ms(self.heartbeat) {
            return refuse(format!(
                "election timeout {} ms is under {ELECTION_HEARTBEATS_MIN}x the heartbeat interval \
                 ({} ms): a follower would call an election after a few late heartbeats, and \
                 leadership would flap under ordinary jitter. Raise --election-timeout-min-ms to at \
                 least {} or lower --heartbeat-ms",
                ms(self.election_timeout_min),
                ms(self.heartbeat),
                ELECTION_HEARTBEATS_MIN * ms(self.heartbeat)
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return refuse(format!(
                "--election-timeout-max-ms ({}) must exceed --election-timeout-min-ms ({}): the \
                 timeout is drawn at random from the range so that candidates rarely collide",
                ms(self.election_timeout_max),
                ms(self.election_timeout_min)
            ));
        }
        if self.disk_stall < self.heartbeat {
            return refuse(format!(
                "--disk-stall-ms {} is shorter than the heartbeat interval ({} ms): every \
                 ordinary fdatasync would count as a stalled disk",
                ms(self.disk_stall),
                ms(self.heartbeat)
            ));
        }
        if self.disk_stall < self.election_timeout_max {
            self.warnings.push(format!(
                "--disk-stall-ms {} is under the election timeout ({} ms): a slow but working \
                 disk may move leadership often",
                ms(self.disk_stall),
                ms(self.election_timeout_max)
            ));
        }
        if self.segment_bytes < 1 << 20 {
            return refuse("--segment-mib must be at least 1".into());
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max as u64 > self.segment_bytes / 4 {
            return refuse(
                "--batch-kib-max must be positive and at most a quarter of a segment".into(),
            );
        }
        let voters = self.peers.len();
        if self.join.is_none() && voters % 2 == 0 {
            self.warnings.push(format!(
                "{voters} voters: an even number tolerates no more failures than {} would \
                 ({} failure(s)); consider {} or {} voters",
                voters - 1,
                (voters - 1) / 2,
                voters - 1,
                voters + 1
            ));
        }
        if let (Some(listen), Some(_)) = (self.kafka_listen, &self.access) {
            return refuse(format!(
                "--auth-file with --kafka-listen {listen}: the Kafka port has no authentication \
                 yet (SASL), so it would let anyone past the auth file; run the Kafka listener \
                 only on a node without --auth-file"
            ));
        }
        if let Some(tls) = &self.client_tls {
            if tls.cert_required && tls.trusted_ca.is_none() {
                return refuse(
                    "--client-cert-required needs --client-trusted-ca-file (the CA client \
                     certificates must chain to)"
                        .into(),
                );
            }
        }
        let verifies_clients = self
            .client_tls
            .as_ref()
            .is_some_and(|tls| tls.trusted_ca.is_some());
        if let Some(access) = &self.access {
            if access.certificates() > 0 && !verifies_clients {
                self.warnings.push(
                    "the auth file's [[certificate]] entries grant nothing without \
                     --client-trusted-ca-file: no client certificate is asked for"
                        .into(),
                );
            }
            if self.client_tls.is_none() {
                self.warnings.push(
                    "--auth-file without client-port TLS (--client-cert-file): tokens cross \
                     the network in the clear"
                        .into(),
                );
            }
        }
        if let Some(listen) = self.kafka_listen {
            if listen.ip().is_unspecified() && !self.kafka_advertise.contains_key(&self.id) {
                return refuse(format!(
                    "--kafka-listen {listen} is a wildcard address: Kafka clients need a reachable \
                     one, so give this node's in --kafka-advertise ({}=host:port)",
                    self.id
                ));
            }
            self.kafka_advertise
                .entry(self.id)
                .or_insert_with(|| listen.to_string());
            for id in self.peers.keys() {
                if !self.kafka_advertise.contains_key(id) {
                    self.warnings.push(format!(
                        "--kafka-advertise has no Kafka address for node {id}: Kafka clients \
                         cannot produce while it leads"
                    ));
                }
            }
        }
        if self.kafka_topic.as_deref() == Some("") {
            return refuse("--kafka-topic must not be empty".into());
        }
        for id in self.peers.keys() {
            if !self.peer_clients.contains_key(id) {
                self.warnings.push(format!(
                    "--peer-clients has no client address for node {id}: followers cannot point \
                     clients to it when it leads"
                ));
            }
        }
        Ok(self)
    }

    /// Raft timing in ticks (heartbeat, election min, election max).
    pub fn ticks(&self) -> (u32, u32, u32) {
        let t = |d: Duration| (d.as_millis() / self.tick.as_millis()).max(1) as u32;
        (
            t(self.heartbeat),
            t(self.election_timeout_min),
            t(self.election_timeout_max),
        )
    }
}
