//! The connection layer a node drives from one thread: peer and client listeners, one outbound
//! connection per peer with reconnect and backoff, frame decoding and admission, bounded send
//! queues, all on one [`Reactor`] together with the thread's [`Waker`].
//!
//! Peer links are one-way: each node sends on the connection it opened to a peer (announcing
//! itself with `PeerHello`) and receives on the connections its peers opened. No tie-breaking is
//! needed when two nodes connect at once, and a restarted peer simply opens a new connection.
//! Each configured peer has one inbound slot: a newer hello as node N replaces the connection
//! holding N's slot, so a restarted peer always gets back in, whoever held its slot (impostors
//! on an insecure peer port included). Connections that have not said a valid hello yet wait in
//! a small pool (`peer_hello_pool_max`, short `peer_hello_timeout`); they cannot hold the port.
//!
//! Resources are bounded per connection (send queue, frame size), per source address
//! (`clients_per_source_max`) and node-wide (`buffer_budget_bytes`: beyond it the client holding
//! the most is closed); an incomplete frame must keep arriving at `recv_progress_min_bytes_per_s`
//! (slowloris). Every close is counted by reason ([`Net::stats`]).
//!
//! An optional third listener takes Kafka clients: their connections carry Kafka's framing (a
//! 4-byte big-endian size, then the request), handed to the node whole as
//! [`NetEvent::KafkaFrame`]; the node's answers are raw bytes queued like any client's
//! ([`Net::send_client_with`]). Kafka connections share the client limit and timeouts.
//!
//! The peer port may run mutual TLS ([`NetConfig::peer_tls`], `tls.rs`): inside this loop, each
//! connection's bytes through its own rustls session. A node dialling peer N verifies that the
//! server's certificate names `raftline-node-N`; a hello as N is admitted only on a connection
//! whose client certificate names N ([`CloseReason::PeerIdentity`] otherwise), so with TLS an
//! impostor cannot take a real peer's slot. A failed handshake closes its connection
//! ([`CloseReason::Tls`], warned at most once a second).
//!
//! The client port may run TLS too ([`NetConfig::client_tls`]: a server certificate, and client
//! certificates verified if the configuration asks for them); [`Net::client_is_named`] tells the
//! node what a client's certificate names.
//!
//! Admission (checked on every frame, both ports): the frame decodes (magic, version, size limit
//! from the header, CRC, type, flags); its cluster id is ours; its type belongs to the port.
//! Peer connections must open with `PeerHello` from a configured peer that is not us, and keep
//! that sender id. Any violation closes that connection only, with a logged reason.

mod close_reason;
mod config;
mod conn;
mod hello;
mod kafka_framing;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftline_pinning::Waker;

use crate::frame::{
    self, Frame, FrameDecoder, FrameHeader, FrameType, CLIENT_SENDER_ID, FRAME_HEADER_BYTES,
};
use crate::reactor::{BackendKind, Completion, Reactor, SocketId};

pub use close_reason::CloseReason;
pub use config::{
    NetConfig, NetConfigError, BUFFER_BUDGET_BYTES_DEFAULT, CLIENTS_PER_SOURCE_MAX_DEFAULT,
};
use conn::{Conn, ConnKind, Decoder, EnqueueError, QueueRefusal};
pub use hello::{PeerHello, HELLO_BYTES};
use kafka_framing::KafkaFrameDecoder;
pub use kafka_framing::KafkaFrameError;
use tls::TlsSession;
pub use tls::{
    client_config, load_certs, load_key, load_roots, node_name, server_config, ClientAuth,
    FilesStamp, PeerTls, PeerTlsFiles, TlsError,
};

use crate::warn_limit::WarnLimit;

/// Pause before re-arming a listener whose accept failed (EMFILE: don't spin).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A client connection, unique for the life of the Net (ids are never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client#{}", self.0)
    }
}

/// An inbound peer connection, unique for the life of the Net (ids are never reused): the node
/// names it to close it ([`Net::close_peer`]) when a message it carried was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerConn(pub u64);

/// What the Net holds and has closed, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Bytes in every connection's send queue and decoder buffer, at the last check.
    pub buffered_bytes: usize,
    /// Connections closed since start, by [`CloseReason::label`].
    pub closed: BTreeMap<&'static str, u64>,
}

/// How often the node-wide buffer budget is checked (a scan of the connections).
const BUDGET_CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// The addresses the Net listens on (the real ports when port 0 was configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetAddrs {
    /// Peer port.
    pub peer: SocketAddr,
    /// Client port.
    pub client: SocketAddr,
    /// Kafka port, if one is configured.
    pub kafka: Option<SocketAddr>,
}

/// What happened on the network since the last `poll`.
#[derive(Debug)]
pub enum NetEvent {
    /// A `PeerMessage` frame from peer `from` (admitted: our cluster, a configured peer).
    PeerFrame {
        /// The sender's node id.
        from: u64,
        /// The connection it came on.
        conn: PeerConn,
        /// The frame.
        frame: Frame,
    },
    /// A client request frame (Append, Subscribe, Credit, Status; keepalives are swallowed).
    ClientFrame {
        /// The connection it came on.
        client: ClientId,
        /// The frame.
        frame: Frame,
    },
    /// A whole Kafka request (its size prefix removed) from a Kafka connection.
    KafkaFrame {
        /// The connection it came on.
        client: ClientId,
        /// Request header and body, as sent.
        frame: Vec<u8>,
    },
    /// A Kafka connection closed, by whoever: emitted exactly once per connection.
    KafkaClosed {
        /// The connection.
        client: ClientId,
        /// Why.
        reason: CloseReason,
    },
    /// A client connection closed, by whoever: emitted exactly once per client.
    ClientClosed {
        /// The connection.
        client: ClientId,
        /// Why.
        reason: CloseReason,
    },
    /// The client's send queue fell below `client_drained_bytes` after having reached it (or
    /// after a refused send): stream more to it.
    ClientDrained {
        /// The connection.
        client: ClientId,
    },
    /// Peer `from` said hello on a new inbound connection (its incarnation was not refused).
    PeerHello {
        /// The sender's node id.
        from: u64,
        /// What it said.
        hello: PeerHello,
    },
    /// Our outbound connection to peer `id` is established.
    PeerUp {
        /// The peer.
        id: u64,
    },
    /// Our outbound connection to peer `id` was lost; frames to it are refused (`Down`) until it
    /// is back.
    PeerDown {
        /// The peer.
        id: u64,
    },
    /// The Net's waker was woken (by another thread, e.g. the log writer).
    Woken,
}

/// Why a frame was not queued. Nothing was queued in every case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Not a configured peer.
    #[error("not a configured peer")]
    UnknownPeer,
    /// The peer's connection is down (reconnecting after backoff).
    #[error("peer connection down")]
    Down,
    /// The connection's queue is full (back-pressure; for a peer, Raft retransmits).
    #[error("send queue full")]
    Full,
    /// The frame is larger than the connection's whole queue.
    #[error("frame larger than the send queue")]
    TooLarge,
    /// The client connection is closed.
    #[error("client connection closed")]
    Closed,
}

/// Why [`Net::send_peer_with`] / [`Net::send_client_with`] queued nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendWithError<E> {
    /// Refused by the connection (nothing was encoded into its queue).
    #[error(transparent)]
    Refused(#[from] SendError),
    /// The encoder failed (its partial output was discarded).
    #[error("encoding the frame failed: {0:?}")]
    Encode(E),
}

impl<E> SendWithError<E> {
    fn from_enqueue(e: EnqueueError<E>) -> SendWithError<E> {
        match e {
            EnqueueError::Refused(QueueRefusal::Full) => SendWithError::Refused(SendError::Full),
            EnqueueError::Refused(QueueRefusal::TooLarge) => {
                SendWithError::Refused(SendError::TooLarge)
            }
            EnqueueError::Encode(e) => SendWithError::Encode(e),
        }
    }
}

/// Why `Net::bind` failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The configuration is invalid.
    #[error("invalid network configuration: {0}")]
    Config(#[from] NetConfigError),
    /// The event loop could not be created (e.g. io_uring forced but refused).
    #[error("cannot create the network event loop: {0}")]
    Reactor(io::Error),
    /// A listener could not be bound.
    #[error("cannot listen for {port} connections on {addr}: {source}")]
    Listen {
        /// "peer", "client" or "Kafka".
        port: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

/// The outbound side of one peer.
struct PeerLink {
    addr: SocketAddr,
    state: LinkState,
    backoff: Duration,
}

enum LinkState {
    Waiting { retry_at: Instant },
    Connecting(SocketId),
    Up(SocketId),
}

/// A node's network: call [`Net::poll`] in a loop on one thread.
pub struct Net {
    cfg: NetConfig,
    reactor: Reactor,
    waker: Waker,
    peer_listener: SocketId,
    client_listener: SocketId,
    kafka_listener: Option<SocketId>,
    addrs: NetAddrs,
    peers: BTreeMap<u64, PeerLink>,
    conns: HashMap<SocketId, Conn>,
    clients: HashMap<ClientId, SocketId>,
    next_client: u64,
    next_peer_conn: u64,
    /// Inbound peer connections, and which holds each configured peer's slot (with the hello
    /// it said).
    inbound: HashMap<PeerConn, SocketId>,
    peer_slots: BTreeMap<u64, (PeerConn, PeerHello)>,
    /// The incarnation the configuration records for each peer (absent: none): a pristine
    /// node's hello with another is refused (a wiped member). A node with a log and another
    /// incarnation is admitted: this node's configuration may be one it is still catching up
    /// through, from before that member was removed and joined again on a new directory.
    recorded: BTreeMap<u64, u64>,
    /// This node has no log entry, no snapshot and term 0 (said in its hellos).
    pristine: bool,
    stats: NetStats,
    budget_checked_at: Instant,
    /// Client and Kafka connections are not read from (the node has a backlog of their work).
    clients_held: bool,
    paused_listeners: Vec<(SocketId, Instant)>,
    keepalive_frame: Vec<u8>,
    completions: Vec<Completion>,
    events: Vec<NetEvent>,
    /// Connections closed for what they sent (bad frames, failed TLS handshakes, refused
    /// identities and messages, ...): warned at most once a second, the rest counted in the next
    /// line and in `stats.closed` by reason (a stranger flooding a port must not fill the log).
    refusal_warnings: WarnLimit,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("node_id", &self.cfg.node_id)
            .field("addrs", &self.addrs)
            .field("backend", &self.reactor.kind())
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Net {
    /// Binds both listeners and starts connecting to every peer (at the first `poll`).
    pub fn bind(cfg: NetConfig) -> Result<Net, BindError> {
        cfg.validate()?;
        let waker = Waker::new().map_err(BindError::Reactor)?;
        let mut reactor = Reactor::new(cfg.backend, waker.clone()).map_err(BindError::Reactor)?;
        let mut listen = |port, addr| {
            let id =
                reactor
                    .listen(addr)
                    .map_err(|source| BindError::Listen { port, addr, source })?;
            let local = reactor.local_addr(id).map_err(|source| BindError::Listen {
                port,
                addr,
                source,
            })?;
            Ok::<_, BindError>((id, local))
        };
        let (peer_listener, peer_addr) = listen("peer", cfg.peer_listen)?;
        let (client_listener, client_addr) = listen("client", cfg.client_listen)?;
        let kafka = match cfg.kafka_listen {
            Some(addr) => Some(listen("Kafka", addr)?),
            None => None,
        };
        reactor.accept(peer_listener);
        reactor.accept(client_listener);
        if let Some((listener, _)) = kafka {
            reactor.accept(listener);
        }
        let now = Instant::now();
        let peers = cfg
            .peers
            .iter()
            .map(|(&id, &addr)| {
                let link = PeerLink {
                    addr,
                    state: LinkState::Waiting { retry_at: now },
                    backoff: cfg.reconnect_backoff_min,
                };
                (id, link)
            })
            .collect();
        let control_frame = |frame_type| {
            let mut out = Vec::new();
            let header = FrameHeader {
                frame_type,
                cluster_id: cfg.cluster_id,
                sender_id: cfg.node_id,
            };
            frame::encode(&mut out, header, &[]).expect("an empty payload fits");
            out
        };
        let keepalive_frame = control_frame(FrameType::Keepalive);
        tracing::info!(
            node = cfg.node_id,
            peer = %peer_addr,
            client = %client_addr,
            kafka = ?kafka.map(|(_, addr)| addr),
            backend = %reactor.kind(),
            "network listening"
        );
        Ok(Net {
            cfg,
            reactor,
            waker,
            peer_listener,
            client_listener,
            kafka_listener: kafka.map(|(listener, _)| listener),
            addrs: NetAddrs {
                peer: peer_addr,
                client: client_addr,
                kafka: kafka.map(|(_, addr)| addr),
            },
            peers,
            conns: HashMap::new(),
            clients: HashMap::new(),
            next_client: 1,
            next_peer_conn: 1,
            inbound: HashMap::new(),
            peer_slots: BTreeMap::new(),
            recorded: BTreeMap::new(),
            pristine: false,
            stats: NetStats::default(),
            budget_checked_at: now,
            clients_held: false,
            paused_listeners: Vec::new(),
            keepalive_frame,
            completions: Vec::new(),
            events: Vec::new(),
            refusal_warnings: WarnLimit::default(),
        })
    }

    /// Replaces the peer port's TLS configuration (reloaded certificates): connections opened
    /// from now on use it, established ones keep theirs. Ignored on an insecure peer port.
    pub fn set_peer_tls(&mut self, tls: PeerTls) {
        match &mut self.cfg.peer_tls {
            Some(current) => *current = tls,
            None => tracing::warn!("peer TLS configuration ignored: the peer port is insecure"),
        }
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> NetAddrs {
        self.addrs
    }

    /// A waker that makes `poll` return early with [`NetEvent::Woken`]; give clones to other
    /// threads (the log writer's durability callback, mailboxes into this thread).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// The event loop backend in use.
    pub fn backend(&self) -> BackendKind {
        self.reactor.kind()
    }

    /// Runs one loop turn: waits until something happens or `timeout` passes (`None`: no limit;
    /// internal timers still bound the wait), handles it and appends the events to `events`.
    /// May return with no new events (a timer ran); callers simply call it again.
    pub fn poll(
        &mut self,
        timeout: Option<Duration>,
        events: &mut Vec<NetEvent>,
    ) -> io::Result<()> {
        let now = Instant::now();
        let mut wait = timeout;
        if let Some(at) = self.run_timers(now) {
            let until = at.saturating_duration_since(now);
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        if !self.events.is_empty() {
            wait = Some(Duration::ZERO);
        }
        let mut completions = std::mem::take(&mut self.completions);
        self.reactor.wait(wait, &mut completions)?;
        let now = Instant::now();
        for completion in completions.drain(..) {
            self.on_completion(completion, now);
        }
        self.completions = completions;
        self.enforce_budget(now);
        events.append(&mut self.events);
        Ok(())
    }

    /// What the Net holds and has closed.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Closes an inbound peer connection whose message the node refused (`why`: its reason),
    /// at once. The peer, if real, reconnects; a forger loses its connection.
    pub fn close_peer(&mut self, conn: PeerConn, why: &'static str) {
        if let Some(&socket) = self.inbound.get(&conn) {
            self.close(socket, CloseReason::PeerRefused(why));
        }
    }

    /// Beyond `buffer_budget_bytes` in all send queues and decoders together, closes the
    /// client or Kafka connections holding the most until the total is back under: a crowd of
    /// clients that do not read (or that send huge frames) cannot grow the node's memory past
    /// the budget, and the heaviest go first. Peer connections are never closed for it.
    fn enforce_budget(&mut self, now: Instant) {
        if now.duration_since(self.budget_checked_at) < BUDGET_CHECK_INTERVAL {
            return;
        }
        self.budget_checked_at = now;
        let mut total: usize = self.conns.values().map(Conn::buffered_bytes).sum();
        while total > self.cfg.buffer_budget_bytes {
            let heaviest = self
                .conns
                .iter()
                .filter(|(_, c)| matches!(c.kind, ConnKind::Client(_) | ConnKind::Kafka(_)))
                .map(|(&socket, c)| (socket, c.buffered_bytes()))
                .max_by_key(|&(_, bytes)| bytes);
            let Some((socket, bytes)) = heaviest else {
                break;
            };
            total -= bytes;
            self.close(socket, CloseReason::OverBudget { bytes });
        }
        self.stats.buffered_bytes = total;
    }

    /// Hands the sends queued so far to the kernel now instead of at the next [`Net::poll`]
    /// (io_uring: one `io_uring_enter` without waiting; epoll: sends are tried when queued).
    /// For a caller about to do something slow before polling again.
    pub fn submit(&mut self) -> io::Result<()> {
        self.reactor.submit()
    }

    /// Queues one whole encoded frame for peer `to`. A full queue drops it (`Full`): Raft
    /// retransmits, and a slow or dead peer costs only its own bounded queue.
    pub fn send_peer(&mut self, to: u64, frame: Vec<u8>) -> Result<(), SendError> {
        let link = self.peers.get(&to).ok_or(SendError::UnknownPeer)?;
        let socket = match link.state {
            LinkState::Waiting { .. } => return Err(SendError::Down),
            LinkState::Connecting(s) | LinkState::Up(s) => s,
        };
        let conn = self
            .conns
            .get_mut(&socket)
            .expect("a peer link's socket is a live connection");
        conn.enqueue(frame, Instant::now()).map_err(|r| match r {
            QueueRefusal::Full => SendError::Full,
            QueueRefusal::TooLarge => SendError::TooLarge,
        })?;
        self.pump(socket);
        Ok(())
    }

    /// Like [`Net::send_peer`], but `encode` appends the whole frame straight into the
    /// connection's send queue: no buffer per frame and no copy when it is sent.
    pub fn send_peer_with<E>(
        &mut self,
        to: u64,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), SendWithError<E>> {
        let link = self.peers.get(&to).ok_or(SendError::UnknownPeer)?;
        let socket = match link.state {
            LinkState::Waiting { .. } => return Err(SendError::Down.into()),
            LinkState::Connecting(s) | LinkState::Up(s) => s,
        };
        let conn = self
            .conns
            .get_mut(&socket)
            .expect("a peer link's socket is a live connection");
        conn.enqueue_with(Instant::now(), encode)
            .map_err(SendWithError::from_enqueue)?;
        self.pump(socket);
        Ok(())
    }

    /// Dials `peer` at `addr` from its next connection attempt on (its name resolved anew: a
    /// rescheduled machine or pod kept its name but not its address). A connection being made
    /// to the old address is abandoned so the next attempt uses the new one; an established one
    /// is kept (it works). Unknown peers are ignored.
    pub fn set_peer_addr(&mut self, peer: u64, addr: SocketAddr) {
        let Some(link) = self.peers.get_mut(&peer) else {
            return;
        };
        if link.addr == addr {
            return;
        }
        tracing::info!(peer, old = %link.addr, new = %addr, "peer address changed");
        link.addr = addr;
        if let LinkState::Connecting(socket) = link.state {
            self.close(
                socket,
                CloseReason::ByNode("the peer's address changed".into()),
            );
        }
    }

    /// Starts connecting to a new peer at `addr` and admits its connections (a member added to
    /// the configuration). A known peer only gets the address, as [`Net::set_peer_addr`].
    pub fn add_peer(&mut self, peer: u64, addr: SocketAddr) {
        if peer == self.cfg.node_id {
            return;
        }
        if self.peers.contains_key(&peer) {
            return self.set_peer_addr(peer, addr);
        }
        tracing::info!(peer, %addr, "peer added");
        self.cfg.peers.insert(peer, addr);
        let link = PeerLink {
            addr,
            state: LinkState::Waiting {
                retry_at: Instant::now(),
            },
            backoff: self.cfg.reconnect_backoff_min,
        };
        self.peers.insert(peer, link);
    }

    /// Forgets a peer (a member removed from the configuration): closes the connection to it and
    /// those from it, and refuses its hellos from now on.
    pub fn remove_peer(&mut self, peer: u64) {
        if !self.peers.contains_key(&peer) {
            return;
        }
        tracing::info!(peer, "peer removed");
        let sockets: Vec<SocketId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.kind, ConnKind::OutboundPeer(id) | ConnKind::InboundPeer(_, Some(id)) if id == peer)
            })
            .map(|(&socket, _)| socket)
            .collect();
        for socket in sockets {
            self.close(
                socket,
                CloseReason::ByNode("the peer left the cluster".into()),
            );
        }
        self.peers.remove(&peer);
        self.cfg.peers.remove(&peer);
    }

    /// The configuration records `incarnation` for `peer` (0: none recorded): from now on its
    /// hellos as a pristine node must announce it, and its connection is closed if it said
    /// another as one.
    pub fn set_peer_incarnation(&mut self, peer: u64, incarnation: u64) {
        if incarnation == 0 {
            self.recorded.remove(&peer);
            return;
        }
        if self.recorded.insert(peer, incarnation) == Some(incarnation) {
            return;
        }
        let Some(&(conn, hello)) = self.peer_slots.get(&peer) else {
            return;
        };
        if hello.pristine && hello.incarnation != incarnation {
            if let Some(&socket) = self.inbound.get(&conn) {
                let reason = CloseReason::Incarnation {
                    peer,
                    found: hello.incarnation,
                    recorded: incarnation,
                };
                self.close(socket, reason);
            }
        }
    }

    /// Whether this node is pristine (no log entry, no snapshot, term 0), as its hellos say
    /// from the next connection on.
    pub fn set_pristine(&mut self, pristine: bool) {
        self.pristine = pristine;
    }

    /// The hello frame opening a connection to `peer`.
    fn hello_frame(&self, peer: u64) -> Vec<u8> {
        let hello = PeerHello {
            incarnation: self.cfg.incarnation,
            recorded_for_you: self.recorded.get(&peer).copied().unwrap_or(0),
            pristine: self.pristine,
        };
        let header = FrameHeader {
            frame_type: FrameType::PeerHello,
            cluster_id: self.cfg.cluster_id,
            sender_id: self.cfg.node_id,
        };
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + HELLO_BYTES);
        frame::encode(&mut out, header, &[&hello.encode()]).expect("a hello fits");
        out
    }

    /// Whether `client`'s verified TLS client certificate names `name` (a DNS subject
    /// alternative name): false without client-port TLS, without a certificate, or closed.
    pub fn client_is_named(&self, client: ClientId, name: &str) -> bool {
        self.clients
            .get(&client)
            .and_then(|socket| self.conns.get(socket))
            .and_then(|conn| conn.tls.as_ref())
            .is_some_and(|tls| tls.peer_is_named(name))
    }

    /// Whether the outbound connection to `peer` is established.
    pub fn peer_is_up(&self, peer: u64) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|l| matches!(l.state, LinkState::Up(_)))
    }

    /// Queues one whole encoded frame for a client (or raw response bytes for a Kafka client);
    /// `Full` asks the caller to wait for [`NetEvent::ClientDrained`].
    pub fn send_client(&mut self, client: ClientId, frame: Vec<u8>) -> Result<(), SendError> {
        let socket = *self.clients.get(&client).ok_or(SendError::Closed)?;
        let conn = self
            .conns
            .get_mut(&socket)
            .expect("a client's socket is a live connection");
        match conn.enqueue(frame, Instant::now()) {
            Ok(()) => {
                if conn.queued_bytes() >= self.cfg.client_drained_bytes {
                    conn.drain_wanted = true;
                }
            }
            Err(QueueRefusal::Full) => {
                conn.drain_wanted = true;
                return Err(SendError::Full);
            }
            Err(QueueRefusal::TooLarge) => return Err(SendError::TooLarge),
        }
        self.pump(socket);
        Ok(())
    }

    /// Like [`Net::send_client`], but `encode` appends the whole frame straight into the
    /// connection's send queue: no buffer per frame and no copy when it is sent.
    pub fn send_client_with<E>(
        &mut self,
        client: ClientId,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), SendWithError<E>> {
        let socket = *self.clients.get(&client).ok_or(SendError::Closed)?;
        let conn = self
            .conns
            .get_mut(&socket)
            .expect("a client's socket is a live connection");
        match conn.enqueue_with(Instant::now(), encode) {
            Ok(()) => {
                if conn.queued_bytes() >= self.cfg.client_drained_bytes {
                    conn.drain_wanted = true;
                }
            }
            Err(e) => {
                if matches!(e, EnqueueError::Refused(QueueRefusal::Full)) {
                    conn.drain_wanted = true;
                }
                return Err(SendWithError::from_enqueue(e));
            }
        }
        self.pump(socket);
        Ok(())
    }

    /// Bytes queued for `client` and not yet sent; `None` if it is closed.
    pub fn client_queued_bytes(&self, client: ClientId) -> Option<usize> {
        let socket = self.clients.get(&client)?;
        self.conns.get(socket).map(Conn::queued_bytes)
    }

    /// Closes a client connection once what is queued for it has been sent (at most
    /// `close_linger`; nothing more is read from it meanwhile); `ClientClosed` follows.
    pub fn close_client(&mut self, client: ClientId, reason: &str) {
        if let Some(&socket) = self.clients.get(&client) {
            self.close_after_flush(socket, CloseReason::ByNode(reason.to_owned()));
        }
    }

    /// Closes a client or Kafka connection once its queue is flushed (answers to the requests
    /// that came before bad input still arrive); any other connection at once.
    fn close_after_flush(&mut self, socket: SocketId, reason: CloseReason) {
        let linger = self.cfg.close_linger;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if !matches!(conn.kind, ConnKind::Client(_) | ConnKind::Kafka(_)) {
            return self.close(socket, reason);
        }
        if conn.closing.is_none() {
            conn.closing = Some((reason, Instant::now() + linger));
        }
    }

    /// Runs due timers; returns when the next one is due.
    fn run_timers(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due_at = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));

        let mut rearm = Vec::new();
        self.paused_listeners.retain(|&(listener, at)| {
            if at <= now {
                rearm.push(listener);
                return false;
            }
            due_at(at);
            true
        });
        for listener in rearm {
            self.reactor.accept(listener);
        }

        let mut connect = Vec::new();
        for (&id, link) in &self.peers {
            if let LinkState::Waiting { retry_at } = link.state {
                if retry_at <= now {
                    connect.push(id);
                } else {
                    due_at(retry_at);
                }
            }
        }
        for id in connect {
            self.start_connect(id, now);
        }

        let cfg = &self.cfg;
        let keepalive_interval = cfg.idle_timeout / 4;
        let mut close = Vec::new();
        let mut flushed = Vec::new();
        let mut keepalive = Vec::new();
        for (&socket, conn) in &self.conns {
            // An incomplete frame must keep coming at the least rate (slowloris), on top of
            // whatever else bounds this connection.
            if let Some((since, bytes)) = conn.partial.filter(|_| conn.closing.is_none()) {
                let rate = cfg.recv_progress_min_bytes_per_s.max(1) as f64;
                let at =
                    since + cfg.recv_progress_grace + Duration::from_secs_f64(bytes as f64 / rate);
                if at <= now {
                    let over = now.duration_since(since);
                    close.push((socket, CloseReason::TooSlow { bytes, over }));
                    continue;
                }
                due_at(at);
            }
            let (deadline, reason) = match conn.kind {
                // Flushed (the node answered what it had, last turn), or out of time.
                _ if conn.closing.is_some() => {
                    let deadline = conn.closing.as_ref().map_or(now, |(_, at)| *at);
                    if conn.is_quiet() || deadline <= now {
                        flushed.push(socket);
                    } else {
                        due_at(deadline);
                    }
                    continue;
                }
                ConnKind::InboundPeer(..) if !conn.established => (
                    conn.opened_at + cfg.peer_hello_timeout,
                    CloseReason::HelloTimeout(cfg.peer_hello_timeout),
                ),
                _ if !conn.established => (
                    conn.opened_at + cfg.hello_timeout,
                    CloseReason::HelloTimeout(cfg.hello_timeout),
                ),

                // A receiver that stops reading (or vanished without a reset) must not hold
                // its queue forever.
                ConnKind::OutboundPeer(_) | ConnKind::Client(_) | ConnKind::Kafka(_)
                    if !conn.is_quiet() =>
                {
                    (
                        conn.last_send_at + cfg.idle_timeout,
                        CloseReason::SendStalled(cfg.idle_timeout),
                    )
                }
                ConnKind::OutboundPeer(_) => {
                    let at = conn.last_send_at + keepalive_interval;
                    if at <= now {
                        keepalive.push(socket);
                        due_at(now + keepalive_interval);
                    } else {
                        due_at(at);
                    }
                    continue;
                }
                ConnKind::InboundPeer(..) => (
                    conn.last_recv_at + cfg.idle_timeout,
                    CloseReason::Idle(cfg.idle_timeout),
                ),
                ConnKind::Client(_) | ConnKind::Kafka(_) => match cfg.client_idle_timeout {
                    Some(idle) => (conn.last_recv_at + idle, CloseReason::Idle(idle)),
                    None => continue,
                },
            };
            if deadline <= now {
                close.push((socket, reason));
            } else {
                due_at(deadline);
            }
        }
        for (socket, reason) in close {
            self.close(socket, reason);
        }
        for socket in flushed {
            let closing = self.conns.get_mut(&socket).and_then(|c| c.closing.take());
            if let Some((reason, _)) = closing {
                self.close(socket, reason);
            }
        }
        for socket in keepalive {
            let frame = self.keepalive_frame.clone();
            if let Some(conn) = self.conns.get_mut(&socket) {
                // A full queue cannot happen on a quiet connection; nothing to do if it did.
                let _ = conn.enqueue(frame, now);
                self.pump(socket);
            }
        }
        next
    }

    fn start_connect(&mut self, id: u64, now: Instant) {
        let link = self.peers.get_mut(&id).expect("a configured peer");
        match self.reactor.connect(link.addr) {
            Ok(socket) => {
                link.state = LinkState::Connecting(socket);
                let mut conn = Conn::new(
                    ConnKind::OutboundPeer(id),
                    link.addr,
                    Decoder::Raftline(FrameDecoder::new(self.cfg.payload_bytes_max)),
                    self.cfg.peer_queue_bytes_max,
                    now,
                );
                conn.enqueue(self.hello_frame(id), now)
                    .expect("an empty queue takes the hello");
                self.conns.insert(socket, conn);
                if let Some(tls) = &self.cfg.peer_tls {
                    match TlsSession::client(&tls.client, &node_name(id)) {
                        Ok(session) => {
                            self.conns.get_mut(&socket).expect("just added").tls = Some(session)
                        }
                        Err(error) => {
                            let reason = CloseReason::Tls {
                                error,
                                handshaking: true,
                            };
                            self.close(socket, reason);
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(peer = id, addr = %link.addr, "cannot create a socket: {err}");
                link.state = LinkState::Waiting {
                    retry_at: now + link.backoff,
                };
                link.backoff = (link.backoff * 2).min(self.cfg.reconnect_backoff_max);
            }
        }
    }

    fn on_completion(&mut self, completion: Completion, now: Instant) {
        match completion {
            Completion::Accepted { listener, result } => match result {
                Ok((socket, remote)) => {
                    self.on_accepted(listener, socket, remote, now);
                    self.reactor.accept(listener);
                }
                Err(err) => {
                    tracing::warn!("accept failed: {err}; retrying in {ACCEPT_RETRY_DELAY:?}");
                    self.paused_listeners
                        .push((listener, now + ACCEPT_RETRY_DELAY));
                }
            },
            Completion::Connected { socket, result } => self.on_connected(socket, result),
            Completion::Received {
                socket,
                buf,
                result,
            } => self.on_received(socket, buf, result, now),
            Completion::Sent {
                socket,
                buf,
                start,
                result,
            } => self.on_sent(socket, buf, start, result, now),
            Completion::Woken => self.events.push(NetEvent::Woken),
        }
    }

    fn on_accepted(
        &mut self,
        listener: SocketId,
        socket: SocketId,
        remote: SocketAddr,
        now: Instant,
    ) {
        let (kind, queue_bytes_max) = if listener == self.peer_listener {
            self.make_room_in_hello_pool();
            let conn = PeerConn(self.next_peer_conn);
            self.next_peer_conn += 1;
            self.inbound.insert(conn, socket);
            (
                ConnKind::InboundPeer(conn, None),
                self.cfg.peer_queue_bytes_max,
            )
        } else {
            let kafka = Some(listener) == self.kafka_listener;
            debug_assert!(kafka || listener == self.client_listener);
            let from_source = |c: &Conn| c.remote.ip() == remote.ip();
            let refusal = if self.clients.len() >= self.cfg.clients_max
                && !self.evict_idlest_client(now, |_| true)
            {
                Some(CloseReason::TooManyClients(self.cfg.clients_max))
            } else if self.clients_from(from_source) >= self.cfg.clients_per_source_max
                && !self.evict_idlest_client(now, from_source)
            {
                Some(CloseReason::TooManyFromSource(
                    self.cfg.clients_per_source_max,
                ))
            } else {
                None
            };
            if let Some(reason) = refusal {
                tracing::warn!(%remote, "refusing client connection: {reason}");
                self.count_close(&reason);
                self.reactor.close(socket);
                return;
            }
            let client = ClientId(self.next_client);
            self.next_client += 1;
            self.clients.insert(client, socket);
            let kind = if kafka {
                ConnKind::Kafka(client)
            } else {
                ConnKind::Client(client)
            };
            (kind, self.cfg.client_queue_bytes_max)
        };
        tracing::debug!(%remote, "accepted {kind}");
        let decoder = match kind {
            ConnKind::Kafka(_) => {
                Decoder::Kafka(KafkaFrameDecoder::new(self.cfg.kafka_request_bytes_max))
            }
            _ => Decoder::Raftline(FrameDecoder::new(self.cfg.payload_bytes_max)),
        };
        let mut conn = Conn::new(kind, remote, decoder, queue_bytes_max, now);
        let server_tls = match kind {
            ConnKind::InboundPeer(..) => self.cfg.peer_tls.as_ref().map(|tls| &tls.server),
            ConnKind::Client(_) => self.cfg.client_tls.as_ref(),
            ConnKind::Kafka(_) | ConnKind::OutboundPeer(_) => None,
        };
        if let Some(server) = server_tls {
            match TlsSession::server(server) {
                Ok(session) => conn.tls = Some(session),
                Err(error) => {
                    let reason = CloseReason::Tls {
                        error,
                        handshaking: true,
                    };
                    tracing::warn!(%remote, "refusing {kind} connection: {reason}");
                    self.count_close(&reason);
                    self.inbound.retain(|_, s| *s != socket);
                    self.clients.retain(|_, s| *s != socket);
                    self.reactor.close(socket);
                    return;
                }
            }
        }
        self.conns.insert(socket, conn);
        self.start_recv(socket);
    }

    fn on_connected(&mut self, socket: SocketId, result: io::Result<()>) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        let ConnKind::OutboundPeer(id) = conn.kind else {
            unreachable!("only outbound peer connections connect");
        };
        if let Err(error) = result {
            self.close(
                socket,
                CloseReason::Io {
                    op: "connect",
                    error,
                },
            );
            return;
        }
        conn.established = true;
        let link = self.peers.get_mut(&id).expect("a configured peer");
        link.state = LinkState::Up(socket);
        link.backoff = self.cfg.reconnect_backoff_min;
        tracing::info!(peer = id, addr = %conn.remote, "connected to peer");
        self.events.push(NetEvent::PeerUp { id });
        self.start_recv(socket);
        self.pump(socket);
    }

    fn on_received(
        &mut self,
        socket: SocketId,
        mut buf: Vec<u8>,
        result: io::Result<usize>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        match result {
            Ok(0) => return self.close(socket, CloseReason::RemoteClosed),
            Err(error) => return self.close(socket, CloseReason::Io { op: "recv", error }),
            Ok(_) => {}
        }
        if conn.closing.is_some() {
            // Closing: what it sends now is not read (and no more recvs are started).
            return;
        }
        conn.last_recv_at = now;
        let received = buf.len();
        let Conn { decoder, tls, .. } = conn;
        let fed = match tls {
            None => {
                decoder.feed(&buf);
                Ok(())
            }
            Some(tls) => tls
                .receive(&buf, |plain| decoder.feed(plain))
                .map_err(|error| CloseReason::Tls {
                    handshaking: tls.is_handshaking(),
                    error,
                }),
        };
        buf.clear();
        conn.recv_buf = Some(buf);
        if let Err(reason) = fed {
            return self.close_after_alert(socket, reason);
        }
        loop {
            let Some(conn) = self.conns.get_mut(&socket) else {
                return;
            };
            match &mut conn.decoder {
                Decoder::Raftline(d) => match d.next_frame() {
                    Ok(Some(frame)) => {
                        if let Err(reason) = self.admit(socket, frame) {
                            return self.close_after_flush(socket, reason);
                        }
                    }
                    Ok(None) => {
                        let incomplete = d.buffered_bytes() > 0;
                        conn.note_progress(received, incomplete, now);
                        break;
                    }
                    Err(err) => return self.close_after_flush(socket, CloseReason::BadFrame(err)),
                },
                Decoder::Kafka(d) => match d.next_frame() {
                    Ok(Some(frame)) => {
                        let ConnKind::Kafka(client) = conn.kind else {
                            unreachable!("only Kafka connections have a Kafka decoder");
                        };
                        conn.established = true;
                        conn.last_request_at = Instant::now();
                        self.events.push(NetEvent::KafkaFrame { client, frame });
                    }
                    Ok(None) => {
                        let incomplete = d.buffered_bytes() > 0;
                        conn.note_progress(received, incomplete, now);
                        break;
                    }
                    Err(err) => {
                        return self.close_after_flush(socket, CloseReason::BadKafkaFrame(err))
                    }
                },
            }
        }
        self.recv_unless_backlogged(socket);
        if self.conns.get(&socket).is_some_and(|c| c.tls.is_some()) {
            // The handshake's answers, or the frames it held back now that it is done.
            self.pump(socket);
        }
    }

    /// Closes a connection whose TLS session failed once the alert rustls queued is sent (best
    /// effort, within `close_linger`: it tells the remote why, unknown CA, bad certificate);
    /// nothing more is read from it or encrypted for it meanwhile.
    fn close_after_alert(&mut self, socket: SocketId, reason: CloseReason) {
        let linger = self.cfg.close_linger;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if conn.closing.is_some() {
            return self.close(socket, reason);
        }
        conn.discard_queue();
        conn.closing = Some((reason, Instant::now() + linger));
        self.pump(socket);
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if conn.is_quiet() {
            if let Some((reason, _)) = conn.closing.take() {
                self.close(socket, reason);
            }
        }
    }

    /// Client (and Kafka) connections open that `which` selects.
    fn clients_from(&self, which: impl Fn(&Conn) -> bool) -> usize {
        self.clients
            .values()
            .filter(|socket| self.conns.get(socket).is_some_and(&which))
            .count()
    }

    /// Closes the client (or Kafka) connection among those `which` selects that has sent no
    /// request for the longest time, if that is at least `client_evict_idle_min`; whether it
    /// made room.
    fn evict_idlest_client(&mut self, now: Instant, which: impl Fn(&Conn) -> bool) -> bool {
        let idlest = self
            .clients
            .values()
            .filter_map(|socket| self.conns.get(socket).map(|c| (*socket, c)))
            .filter(|(_, c)| c.closing.is_none() && which(c))
            .map(|(socket, c)| (socket, c.last_request_at))
            .min_by_key(|&(_, at)| at);
        match idlest {
            Some((socket, at)) if now.duration_since(at) >= self.cfg.client_evict_idle_min => {
                let idle = now.duration_since(at);
                self.close(socket, CloseReason::Evicted { idle });
                true
            }
            _ => false,
        }
    }

    /// Makes room for one more connection in the peer port's hello pool: beyond
    /// `peer_hello_pool_max` connections without a hello, the oldest is closed.
    fn make_room_in_hello_pool(&mut self) {
        // Ids grow in accept order: the smallest is the oldest.
        let mut waiting: Vec<(PeerConn, SocketId)> = self
            .inbound
            .iter()
            .filter(|(_, socket)| {
                self.conns
                    .get(socket)
                    .is_some_and(|c| matches!(c.kind, ConnKind::InboundPeer(_, None)))
            })
            .map(|(&conn, &socket)| (conn, socket))
            .collect();
        if waiting.len() < self.cfg.peer_hello_pool_max {
            return;
        }
        waiting.sort_unstable();
        let excess = waiting.len() + 1 - self.cfg.peer_hello_pool_max;
        for &(_, socket) in &waiting[..excess] {
            self.close(
                socket,
                CloseReason::HelloPoolFull(self.cfg.peer_hello_pool_max),
            );
        }
    }

    /// A valid hello as `sender` on `conn`: it takes `sender`'s slot, closing the connection
    /// that held it. On a TLS peer port only a connection whose certificate names `sender`
    /// may (`PeerIdentity` otherwise: the slot's holder stays); on an insecure one any hello as
    /// a configured peer is believed. Then a pristine sender must have the incarnation recorded
    /// for it, if any (`Incarnation`; the holder stays too).
    fn claim_peer_slot(
        &mut self,
        socket: SocketId,
        conn: PeerConn,
        sender: u64,
        hello: PeerHello,
    ) -> Result<(), CloseReason> {
        let tls = self.conns.get(&socket).and_then(|c| c.tls.as_ref());
        if tls.is_some_and(|tls| !tls.peer_is_named(&node_name(sender))) {
            return Err(CloseReason::PeerIdentity(sender));
        }
        if let Some(&recorded) = self.recorded.get(&sender) {
            if hello.pristine && hello.incarnation != recorded {
                return Err(CloseReason::Incarnation {
                    peer: sender,
                    found: hello.incarnation,
                    recorded,
                });
            }
        }
        if let Some((held, _)) = self.peer_slots.insert(sender, (conn, hello)) {
            if let Some(&socket) = self.inbound.get(&held) {
                self.close(socket, CloseReason::Replaced);
            }
        }
        Ok(())
    }

    /// Checks one decoded frame against the connection it came on and turns it into an event.
    fn admit(&mut self, socket: SocketId, frame: Frame) -> Result<(), CloseReason> {
        let conn = self
            .conns
            .get_mut(&socket)
            .expect("admit on a live connection");
        let header = frame.header;
        if header.cluster_id != self.cfg.cluster_id {
            return Err(CloseReason::WrongCluster {
                found: header.cluster_id,
                expected: self.cfg.cluster_id,
            });
        }
        match conn.kind {
            ConnKind::OutboundPeer(_) => Err(CloseReason::UnexpectedData),
            ConnKind::Kafka(_) => unreachable!("Kafka connections carry no raftline frames"),
            ConnKind::Client(client) => {
                if !header.frame_type.is_client_request() {
                    return Err(CloseReason::FrameTypeNotAllowed {
                        frame_type: header.frame_type,
                        port: "client",
                    });
                }
                if header.sender_id != CLIENT_SENDER_ID {
                    return Err(CloseReason::ClientSenderId(header.sender_id));
                }
                conn.established = true;
                if header.frame_type != FrameType::Keepalive {
                    conn.last_request_at = Instant::now();
                    self.events.push(NetEvent::ClientFrame { client, frame });
                }
                Ok(())
            }
            ConnKind::InboundPeer(peer_conn, known) => {
                if !header.frame_type.is_peer() {
                    return Err(CloseReason::FrameTypeNotAllowed {
                        frame_type: header.frame_type,
                        port: "peer",
                    });
                }
                let sender = header.sender_id;
                match known {
                    None => {
                        if header.frame_type != FrameType::PeerHello {
                            return Err(CloseReason::NoHello(header.frame_type));
                        }
                        if sender == self.cfg.node_id {
                            return Err(CloseReason::OwnId(sender));
                        }
                        if !self.cfg.peers.contains_key(&sender) {
                            return Err(CloseReason::UnknownPeer(sender));
                        }
                        let hello =
                            PeerHello::decode(&frame.payload).ok_or(CloseReason::BadHello)?;
                        tracing::debug!(peer = sender, remote = %conn.remote, ?hello, "peer hello");
                        self.claim_peer_slot(socket, peer_conn, sender, hello)?;
                        self.events.push(NetEvent::PeerHello {
                            from: sender,
                            hello,
                        });
                        let conn = self
                            .conns
                            .get_mut(&socket)
                            .expect("admit on a live connection");
                        conn.kind = ConnKind::InboundPeer(peer_conn, Some(sender));
                        conn.established = true;
                        Ok(())
                    }
                    Some(from) if from != sender => {
                        Err(CloseReason::SenderChanged { from, to: sender })
                    }
                    Some(from) => {
                        if header.frame_type == FrameType::PeerMessage {
                            self.events.push(NetEvent::PeerFrame {
                                from,
                                conn: peer_conn,
                                frame,
                            });
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    fn on_sent(
        &mut self,
        socket: SocketId,
        buf: Vec<u8>,
        start: usize,
        result: io::Result<usize>,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        let sent = match result {
            Ok(0) => {
                let error = io::Error::new(io::ErrorKind::WriteZero, "send accepted no bytes");
                return self.close(socket, CloseReason::Io { op: "send", error });
            }
            Ok(n) => n,
            Err(error) => return self.close(socket, CloseReason::Io { op: "send", error }),
        };
        if let Some((buf, resume)) = conn.sent(buf, start, sent, now) {
            self.reactor.send(socket, buf, resume);
            return;
        }
        if conn.is_quiet() {
            if let Some((reason, _)) = conn.closing.take() {
                return self.close(socket, reason);
            }
        }
        if conn.read_paused && conn.queued_bytes() < self.cfg.client_drained_bytes {
            conn.read_paused = false;
            self.start_recv(socket);
        }
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if let ConnKind::Client(client) = conn.kind {
            if conn.drain_wanted && conn.queued_bytes() < self.cfg.client_drained_bytes {
                conn.drain_wanted = false;
                self.events.push(NetEvent::ClientDrained { client });
            }
        }
        self.pump(socket);
    }

    /// Reads on, unless the connection is a client whose unread answers reached
    /// `client_drained_bytes`: then it waits until they drain (`on_sent` resumes it), so a
    /// client that sends requests without reading answers cannot make the node buffer them.
    fn recv_unless_backlogged(&mut self, socket: SocketId) {
        let drained = self.cfg.client_drained_bytes;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if matches!(conn.kind, ConnKind::Client(_) | ConnKind::Kafka(_))
            && conn.queued_bytes() >= drained
        {
            conn.read_paused = true;
            return;
        }
        self.start_recv(socket);
    }

    fn start_recv(&mut self, socket: SocketId) {
        let held = self.clients_held;
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if held && matches!(conn.kind, ConnKind::Client(_) | ConnKind::Kafka(_)) {
            conn.held = true;
            return;
        }
        if let Some(buf) = conn.recv_buf.take() {
            self.reactor.recv(socket, buf);
        }
    }

    /// While `hold`, client and Kafka connections are not read from (their requests wait in
    /// the kernel); peer connections always are. The node holds them while it has a backlog of
    /// client work, so a flood of requests can neither delay peer traffic nor pile up in its
    /// memory.
    pub fn hold_client_reads(&mut self, hold: bool) {
        if self.clients_held == hold {
            return;
        }
        self.clients_held = hold;
        if hold {
            return;
        }
        let held: Vec<SocketId> = self
            .conns
            .iter_mut()
            .filter(|(_, c)| c.held)
            .map(|(&socket, c)| {
                c.held = false;
                socket
            })
            .collect();
        for socket in held {
            if !self.conns[&socket].read_paused {
                self.start_recv(socket);
            }
        }
    }

    /// Starts the next send if the connection may send and none is in flight.
    fn pump(&mut self, socket: SocketId) {
        let Some(conn) = self.conns.get_mut(&socket) else {
            return;
        };
        if matches!(conn.kind, ConnKind::OutboundPeer(_)) && !conn.established {
            return;
        }
        if let Some(buf) = conn.next_send() {
            self.reactor.send(socket, buf, 0);
        }
    }

    fn count_close(&mut self, reason: &CloseReason) {
        *self.stats.closed.entry(reason.label()).or_default() += 1;
    }

    fn close(&mut self, socket: SocketId, reason: CloseReason) {
        let Some(conn) = self.conns.remove(&socket) else {
            return;
        };
        self.reactor.close(socket);
        self.count_close(&reason);
        let kind = conn.kind;
        if reason.is_bad_input() {
            match self.refusal_warnings.admit(Instant::now()) {
                Some(suppressed) => {
                    tracing::warn!(remote = %conn.remote, suppressed, "closing {kind}: {reason}")
                }
                None => tracing::debug!(remote = %conn.remote, "closing {kind}: {reason}"),
            }
        } else if matches!(kind, ConnKind::OutboundPeer(_)) && !conn.established {
            tracing::debug!(remote = %conn.remote, "closing {kind}: {reason}");
        } else {
            tracing::info!(remote = %conn.remote, "closing {kind}: {reason}");
        }
        match kind {
            ConnKind::OutboundPeer(id) => {
                let link = self.peers.get_mut(&id).expect("a configured peer");
                let was_up = matches!(link.state, LinkState::Up(_));
                link.state = LinkState::Waiting {
                    retry_at: Instant::now() + link.backoff,
                };
                link.backoff = (link.backoff * 2).min(self.cfg.reconnect_backoff_max);
                if was_up {
                    self.events.push(NetEvent::PeerDown { id });
                }
            }
            ConnKind::Client(client) => {
                self.clients.remove(&client);
                self.events.push(NetEvent::ClientClosed { client, reason });
            }
            ConnKind::Kafka(client) => {
                self.clients.remove(&client);
                self.events.push(NetEvent::KafkaClosed { client, reason });
            }
            ConnKind::InboundPeer(peer_conn, known) => {
                self.inbound.remove(&peer_conn);
                if let Some(id) = known {
                    if self
                        .peer_slots
                        .get(&id)
                        .is_some_and(|&(c, _)| c == peer_conn)
                    {
                        self.peer_slots.remove(&id);
                    }
                }
            }
        }
    }
}
