//! The connection layer's configuration: addresses, limits and timeouts, all explicit.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster_id::ClusterId;
use crate::frame::{FRAME_HEADER_BYTES, PAYLOAD_BYTES_MAX_DEFAULT};
use crate::reactor::Backend;

use super::tls::PeerTls;

/// Default of [`NetConfig::clients_per_source_max`].
pub const CLIENTS_PER_SOURCE_MAX_DEFAULT: usize = 256;
/// Default of [`NetConfig::buffer_budget_bytes`] (512 MiB).
pub const BUFFER_BUDGET_BYTES_DEFAULT: usize = 512 << 20;

/// Everything a [`Net`](super::Net) needs; [`NetConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// This node's id (never 0: that is the clients' sender id).
    pub node_id: u64,
    /// This node's data directory incarnation, announced in every hello (0: not known).
    pub incarnation: u64,
    /// The cluster every frame on both ports must belong to.
    pub cluster_id: ClusterId,
    /// Where peers connect (port 0: the OS picks; see `Net::local_addrs`).
    pub peer_listen: SocketAddr,
    /// Where clients connect.
    pub client_listen: SocketAddr,
    /// Where Kafka clients connect (`None`: no Kafka listener).
    pub kafka_listen: Option<SocketAddr>,
    /// Largest Kafka request accepted (checked from its size prefix, before buffering).
    pub kafka_request_bytes_max: usize,
    /// The other voters: one outbound connection each. Must not contain `node_id`.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Largest frame payload accepted (checked from the header, before buffering).
    pub payload_bytes_max: u32,
    /// Bytes queued (not yet sent) per peer before `send_peer` refuses.
    pub peer_queue_bytes_max: usize,
    /// Bytes queued per client before `send_client` refuses.
    pub client_queue_bytes_max: usize,
    /// A client whose queue falls below this after being at or above it gets `ClientDrained`.
    pub client_drained_bytes: usize,
    /// Client connections open at once; more are closed on accept.
    pub clients_max: usize,
    /// Client (and Kafka) connections open at once from one source address; at the limit, a
    /// new one from that address takes the slot of its longest-idle one (as for `clients_max`)
    /// or is refused. One host cannot take every slot.
    pub clients_per_source_max: usize,
    /// Peer-port connections that have not said a valid hello yet, at once: a small pool, so
    /// strangers cannot hold the peer port. A new connection beyond it closes the oldest one in
    /// the pool (a real peer says hello at once; it is never the oldest for long). A connection
    /// that said hello as node N holds N's one slot: a newer hello as N replaces it (a
    /// restarted peer's new connection gets in, whoever holds the old one).
    pub peer_hello_pool_max: usize,
    /// A peer-port connection must say hello within this (short: a peer says it at once).
    pub peer_hello_timeout: Duration,
    /// An accepted client connection must deliver its first whole frame, and an outbound
    /// connection must connect, within this.
    pub hello_timeout: Duration,
    /// Bytes per second an inbound connection must keep delivering while a frame is
    /// incomplete (after `recv_progress_grace`): a connection that dribbles a frame is closed
    /// (slowloris).
    pub recv_progress_min_bytes_per_s: u64,
    /// How long an incomplete frame may take before the progress rate counts.
    pub recv_progress_grace: Duration,
    /// Bytes all connections together may hold in send queues and decoder buffers. Beyond it,
    /// the client or Kafka connection holding the most is closed until the total is back
    /// under (peer connections are never closed for it: their queues are bounded per peer).
    pub buffer_budget_bytes: usize,
    /// An inbound peer connection that delivers nothing for this long is closed; an outbound
    /// one sends a keepalive after a quarter of it. Any connection (peer or client) whose queued
    /// bytes make no send progress for this long is closed (its receiver stopped reading).
    pub idle_timeout: Duration,
    /// A client that sends nothing for this long is closed (`None`: never).
    pub client_idle_timeout: Option<Duration>,
    /// When all `clients_max` slots are taken, a new client takes the slot of the one that
    /// has sent no request for the longest time, if that is at least this long (else the new
    /// one is refused): idle or keepalive-only connections cannot lock clients out.
    pub client_evict_idle_min: Duration,
    /// A client connection closed for bad input or by the node first flushes what is queued
    /// for it (answers it earned, an `Error` saying why), for at most this long.
    pub close_linger: Duration,
    /// First delay before reconnecting to a peer; doubles per failure.
    pub reconnect_backoff_min: Duration,
    /// Largest delay between reconnect attempts.
    pub reconnect_backoff_max: Duration,
    /// Event loop backend.
    pub backend: Backend,
    /// Mutual TLS on the peer port (`None`: plaintext, for a trusted network only).
    pub peer_tls: Option<PeerTls>,
    /// TLS on the client port (`None`: plaintext): the server end of every client connection
    /// (`tls::server_config`; its client-certificate setting decides whether clients present
    /// one). Kafka connections stay plaintext.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Why a configuration cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// Node id 0 is the clients' sender id.
    #[error("node id 0 is reserved for clients; use 1 or more")]
    ZeroNodeId,
    /// The peer list names this node.
    #[error("the peer list contains this node's own id {0}")]
    SelfInPeers(u64),
    /// The peer list contains id 0.
    #[error("peer id 0 is reserved for clients")]
    ZeroPeerId,
    /// A queue could never hold one maximal frame.
    #[error("{name} ({bytes} bytes) is smaller than one maximal frame ({frame_bytes} bytes)")]
    QueueTooSmall {
        /// Which queue.
        name: &'static str,
        /// Its configured size.
        bytes: usize,
        /// Header plus `payload_bytes_max`.
        frame_bytes: usize,
    },
    /// The drained mark must lie below the client queue limit.
    #[error("client_drained_bytes must be below client_queue_bytes_max")]
    DrainedMarkTooHigh,
    /// A per-source or hello-pool limit of zero would refuse every connection.
    #[error("clients_per_source_max and peer_hello_pool_max must be at least 1")]
    NoSlots,
    /// A timeout or backoff is zero, or min > max.
    #[error("invalid timing: {0}")]
    Timing(&'static str),
}

impl NetConfig {
    /// A configuration with the default limits and timeouts.
    pub fn new(
        node_id: u64,
        cluster_id: ClusterId,
        peer_listen: SocketAddr,
        client_listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
    ) -> NetConfig {
        let frame_bytes = FRAME_HEADER_BYTES + PAYLOAD_BYTES_MAX_DEFAULT as usize;
        NetConfig {
            node_id,
            incarnation: 0,
            cluster_id,
            peer_listen,
            client_listen,
            kafka_listen: None,
            kafka_request_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT as usize,
            peers,
            payload_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT,
            peer_queue_bytes_max: 4 * frame_bytes,
            client_queue_bytes_max: 2 * frame_bytes,
            client_drained_bytes: frame_bytes / 2,
            clients_max: 1024,
            clients_per_source_max: CLIENTS_PER_SOURCE_MAX_DEFAULT,
            peer_hello_pool_max: 8,
            peer_hello_timeout: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(5),
            recv_progress_min_bytes_per_s: 16 << 10,
            recv_progress_grace: Duration::from_secs(5),
            buffer_budget_bytes: BUFFER_BUDGET_BYTES_DEFAULT,
            idle_timeout: Duration::from_secs(10),
            client_idle_timeout: None,
            client_evict_idle_min: Duration::from_secs(1),
            close_linger: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            backend: Backend::Auto,
            peer_tls: None,
            client_tls: None,
        }
    }

    /// Bytes of the largest frame accepted.
    pub fn frame_bytes_max(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload_bytes_max as usize
    }

    /// Checks the configuration; `Net::bind` refuses an invalid one.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.node_id == 0 {
            return Err(NetConfigError::ZeroNodeId);
        }
        if self.peers.contains_key(&self.node_id) {
            return Err(NetConfigError::SelfInPeers(self.node_id));
        }
        if self.peers.contains_key(&0) {
            return Err(NetConfigError::ZeroPeerId);
        }
        let frame_bytes = self.frame_bytes_max();
        for (name, bytes) in [
            ("peer_queue_bytes_max", self.peer_queue_bytes_max),
            ("client_queue_bytes_max", self.client_queue_bytes_max),
        ] {
            if bytes < frame_bytes {
                return Err(NetConfigError::QueueTooSmall {
                    name,
                    bytes,
                    frame_bytes,
                });
            }
        }
        if self.client_drained_bytes >= self.client_queue_bytes_max {
            return Err(NetConfigError::DrainedMarkTooHigh);
        }
        if self.clients_per_source_max == 0 || self.peer_hello_pool_max == 0 {
            return Err(NetConfigError::NoSlots);
        }
        if self.buffer_budget_bytes < 2 * frame_bytes {
            return Err(NetConfigError::QueueTooSmall {
                name: "buffer_budget_bytes",
                bytes: self.buffer_budget_bytes,
                frame_bytes: 2 * frame_bytes,
            });
        }
        if self.hello_timeout.is_zero()
            || self.peer_hello_timeout.is_zero()
            || self.idle_timeout.is_zero()
        {
            return Err(NetConfigError::Timing(
                "hello and idle timeouts must be positive",
            ));
        }
        if self.client_idle_timeout.is_some_and(|t| t.is_zero()) {
            return Err(NetConfigError::Timing(
                "client idle timeout must be positive",
            ));
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_min > self.reconnect_backoff_max
        {
            return Err(NetConfigError::Timing(
                "reconnect backoff needs 0 < min <= max",
            ));
        }
        Ok(())
    }
}
