//! Why the Net closed a connection: logged, and handed to the node with `ClientClosed`.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::cluster_id::ClusterId;
use crate::frame::{FrameError, FrameType};

use super::kafka_framing::KafkaFrameError;

/// Why a connection was closed.
#[derive(Debug)]
pub enum CloseReason {
    /// The remote end closed the stream (EOF).
    RemoteClosed,
    /// A socket operation failed (reset, refused, broken pipe, ...).
    Io {
        /// Which operation.
        op: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// The bytes are not valid frames (garbage, oversize, wrong magic/version, CRC, type).
    BadFrame(FrameError),
    /// The bytes of a Kafka connection are not requests (a bad size prefix).
    BadKafkaFrame(KafkaFrameError),
    /// A frame of another cluster.
    WrongCluster {
        /// The cluster id in the frame.
        found: ClusterId,
        /// Ours.
        expected: ClusterId,
    },
    /// A frame type this port does not carry.
    FrameTypeNotAllowed {
        /// The type received.
        frame_type: FrameType,
        /// "peer" or "client".
        port: &'static str,
    },
    /// A client frame with a node's sender id.
    ClientSenderId(u64),
    /// A peer connection whose first frame is not `PeerHello`.
    NoHello(FrameType),
    /// A peer hello from an id that is not a configured peer.
    UnknownPeer(u64),
    /// A peer hello carrying this node's own id (a node connected to itself, or a clone).
    OwnId(u64),
    /// A peer hello whose payload is not a hello.
    BadHello,
    /// A pristine peer's hello from a data directory other than the one the configuration
    /// records for that node (its disk was wiped or replaced: it lost the vote and log its id
    /// stands for).
    Incarnation {
        /// The node.
        peer: u64,
        /// The incarnation its hello announced.
        found: u64,
        /// The one recorded.
        recorded: u64,
    },
    /// A peer connection switched sender ids.
    SenderChanged {
        /// The id its hello announced.
        from: u64,
        /// The id a later frame carried.
        to: u64,
    },
    /// Bytes arrived on a connection we opened only to send on.
    UnexpectedData,
    /// No first frame (inbound) or no connection (outbound) within the hello timeout.
    HelloTimeout(Duration),
    /// Nothing received within the idle timeout.
    Idle(Duration),
    /// Queued bytes made no progress within the idle timeout (the receiver stopped reading).
    SendStalled(Duration),
    /// `clients_max` connections are open already.
    TooManyClients(usize),
    /// The client slots were full and this connection had sent no request for the longest
    /// time: it made room for a new client.
    Evicted {
        /// How long it had sent no request.
        idle: Duration,
    },
    /// `peer_hello_pool_max` peer-port connections without a hello were open, and this was
    /// the oldest: it made room for a new one.
    HelloPoolFull(usize),
    /// A newer connection said hello as the same node and took its slot.
    Replaced,
    /// `clients_per_source_max` connections from this address are open already.
    TooManyFromSource(usize),
    /// An incomplete frame arrived slower than `recv_progress_min_bytes_per_s` (slowloris).
    TooSlow {
        /// Bytes received since the frame began.
        bytes: u64,
        /// For how long.
        over: Duration,
    },
    /// The node's connection buffers exceeded `buffer_budget_bytes` and this connection held
    /// the most.
    OverBudget {
        /// What it held (send queue and decoder).
        bytes: usize,
    },
    /// The node asked for it.
    ByNode(String),
    /// The peer sent a message that contradicts what this node knows (the node's reason).
    PeerRefused(&'static str),
    /// The TLS session failed: a certificate not from the trusted CA or not naming the node
    /// dialled, no certificate where one is required, bytes that are not TLS, a record that
    /// does not decrypt, an alert from the remote.
    Tls {
        /// What rustls found.
        error: rustls::Error,
        /// Whether it happened during the handshake.
        handshaking: bool,
    },
    /// A peer hello as this node id on a connection whose certificate does not name
    /// `raftline-node-N` for it.
    PeerIdentity(u64),
}

impl CloseReason {
    /// A short stable name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::RemoteClosed => "remote_closed",
            CloseReason::Io { .. } => "io_error",
            CloseReason::BadFrame(_) => "bad_frame",
            CloseReason::BadKafkaFrame(_) => "bad_kafka_frame",
            CloseReason::WrongCluster { .. } => "wrong_cluster",
            CloseReason::FrameTypeNotAllowed { .. } => "frame_type_not_allowed",
            CloseReason::ClientSenderId(_) => "client_sender_id",
            CloseReason::NoHello(_) => "no_hello",
            CloseReason::UnknownPeer(_) => "unknown_peer",
            CloseReason::OwnId(_) => "own_id",
            CloseReason::BadHello => "bad_hello",
            CloseReason::Incarnation { .. } => "incarnation",
            CloseReason::SenderChanged { .. } => "sender_changed",
            CloseReason::UnexpectedData => "unexpected_data",
            CloseReason::HelloTimeout(_) => "hello_timeout",
            CloseReason::Idle(_) => "idle",
            CloseReason::SendStalled(_) => "send_stalled",
            CloseReason::TooManyClients(_) => "too_many_clients",
            CloseReason::Evicted { .. } => "evicted",
            CloseReason::HelloPoolFull(_) => "hello_pool_full",
            CloseReason::Replaced => "replaced",
            CloseReason::TooManyFromSource(_) => "too_many_from_source",
            CloseReason::TooSlow { .. } => "too_slow",
            CloseReason::OverBudget { .. } => "over_budget",
            CloseReason::ByNode(_) => "by_node",
            CloseReason::PeerRefused(_) => "peer_refused",
            CloseReason::Tls {
                handshaking: true, ..
            } => "tls_handshake",
            CloseReason::Tls { .. } => "tls",
            CloseReason::PeerIdentity(_) => "peer_identity",
        }
    }

    /// Whether the remote misbehaved (logged as a warning) rather than just went away.
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            CloseReason::RemoteClosed
                | CloseReason::Io { .. }
                | CloseReason::ByNode(_)
                | CloseReason::Replaced
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::RemoteClosed => write!(f, "closed by the remote end"),
            CloseReason::Io { op, error } => write!(f, "{op} failed: {error}"),
            CloseReason::BadFrame(err) => write!(f, "invalid frame: {err}"),
            CloseReason::BadKafkaFrame(err) => write!(f, "invalid Kafka request: {err}"),
            CloseReason::WrongCluster { found, expected } => {
                write!(f, "frame of cluster {found}, this is cluster {expected}")
            }
            CloseReason::FrameTypeNotAllowed { frame_type, port } => {
                write!(
                    f,
                    "frame type {frame_type:?} is not allowed on the {port} port"
                )
            }
            CloseReason::ClientSenderId(id) => {
                write!(f, "sender id {id} on the client port (clients send 0)")
            }
            CloseReason::NoHello(t) => write!(f, "first frame is {t:?}, not PeerHello"),
            CloseReason::UnknownPeer(id) => write!(f, "node {id} is not a configured peer"),
            CloseReason::OwnId(id) => write!(f, "peer hello carries this node's own id {id}"),
            CloseReason::BadHello => write!(f, "peer hello payload is malformed"),
            CloseReason::Incarnation {
                peer,
                found,
                recorded,
            } => write!(
                f,
                "node {peer} said hello from data directory incarnation {found:016x}, but the \
                 cluster records {recorded:016x} for it: its disk was wiped or replaced, and a \
                 member that lost its vote and log must not take part (`raftline member remove \
                 {peer}`, then start it with --join)"
            ),
            CloseReason::SenderChanged { from, to } => {
                write!(f, "sender id changed from {from} to {to}")
            }
            CloseReason::UnexpectedData => {
                write!(f, "peer sent data on a connection that only we send on")
            }
            CloseReason::HelloTimeout(t) => write!(f, "nothing within the hello timeout ({t:?})"),
            CloseReason::Idle(t) => write!(f, "idle for {t:?}"),
            CloseReason::SendStalled(t) => write!(f, "no send progress for {t:?}"),
            CloseReason::Evicted { idle } => write!(
                f,
                "evicted to make room for a new client (no request for {idle:?}, all client slots taken)"
            ),
            CloseReason::TooManyClients(max) => {
                write!(f, "{max} clients already connected (clients_max)")
            }
            CloseReason::HelloPoolFull(max) => write!(
                f,
                "oldest of {max} peer-port connections without a hello (peer_hello_pool_max)"
            ),
            CloseReason::Replaced => {
                write!(f, "a newer connection said hello as the same node")
            }
            CloseReason::TooManyFromSource(max) => write!(
                f,
                "{max} connections from this address already open (clients_per_source_max)"
            ),
            CloseReason::TooSlow { bytes, over } => write!(
                f,
                "an incomplete frame got only {bytes} bytes in {over:?} (recv_progress_min_bytes_per_s)"
            ),
            CloseReason::OverBudget { bytes } => write!(
                f,
                "the node's connection buffers are over budget and this one held the most ({bytes} bytes)"
            ),
            CloseReason::ByNode(why) => write!(f, "closed by the node: {why}"),
            CloseReason::PeerRefused(why) => {
                write!(f, "sent a message this node refused ({why})")
            }
            CloseReason::Tls {
                error,
                handshaking: true,
            } => write!(f, "TLS handshake failed: {error}"),
            CloseReason::Tls { error, .. } => write!(f, "TLS failed: {error}"),
            CloseReason::PeerIdentity(id) => write!(
                f,
                "hello as node {id}, but the connection's certificate does not name {}",
                super::tls::node_name(*id)
            ),
        }
    }
}
