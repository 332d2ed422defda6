//! The raft thread's event loop: one thread owns the network (`Net`: peer and client sockets on
//! one io_uring, or the poll fallback), the replica, the appends and the subscriptions; no locks
//! on its data path. The log writer thread wakes it through the Net's waker after every durable
//! group.
//!
//! [`EventLoop::round`] is the whole order of effects, one numbered stage after the other:
//! input → proposals → durability and time → the core's `Ready` (hard state, messages, entries,
//! apply) → answers → reads. Each stage is a call on the part that owns its state, so moving a
//! stage to another thread (client connections, consumers' reads) changes who runs that call,
//! not the loop.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_netio::client_proto::{
    decode_request, ClientError, DiskFullStatus, NodeRole, NodeStatus, PeerStatus, Request,
    Response, SnapshotStatus,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net, NetEvent, PeerHello, PeerTls, SendWithError};
use raftline_netio::peer_codec::{decode_message, encode_message, PeerCodecError};
use raftline_replicator::{Index, MemberAddress, Message, Role};

use crate::access::{Access, AccessPolicy, Verdict};
use crate::appends::{Appends, GrantError, Proposal};
use crate::disk_watch::DiskWatch;
use crate::kafka::Kafka;
use crate::members::{MemberRequest, Members};
use crate::metrics::Metrics;
use crate::peer_names::PeerNames;
use crate::peer_rtt::PeerRtt;
use crate::replica::{FatalError, Replica, READY_ROUNDS_MAX};
use crate::replies::Replier;
use crate::subscriptions::Subscriptions;
use crate::vouching::{Verdict as VouchVerdict, Vouching};
use raftline_netio::warn_limit::WarnLimit;

/// Static parameters of the loop.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Our cluster.
    pub cluster_id: ClusterId,
    /// Our node id.
    pub node_id: u64,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// On stop: how long appends already accepted may take to be acknowledged.
    pub drain_timeout: Duration,
    /// Addresses of the members known before the log holds a configuration (`--peers` and
    /// `--peer-clients`, or what a joining node was admitted with); the log's win.
    pub addresses: BTreeMap<u64, MemberAddress>,
    /// A voter not heard from for this long (the election timeout's upper end) counts as down
    /// (membership changes check it).
    pub election_timeout_max: Duration,
    /// How long a membership change or leadership transfer may take to be answered.
    pub admin_timeout: Duration,
    /// The data directory (its size is reported in `Status`).
    pub data_dir: PathBuf,
    /// A log write outstanding this long means a stalled disk.
    pub disk_stall: Duration,
    /// Lower end of the election timeout range (measured peer round trips are held against it).
    pub election_timeout_min: Duration,
    /// The data directory's incarnation (`identity.rs`).
    pub incarnation: u64,
    /// A pristine bootstrap voter waits to be vouched for by these voters' hellos (`None`: it
    /// takes part at once; `vouching.rs`).
    pub vouch_among: Option<BTreeSet<u64>>,
}

/// Client events (requests, closes) one round handles at most; the rest wait for the next.
const CLIENT_EVENTS_PER_ROUND: usize = 1024;

/// How often the data directory's size is measured (a walk of a few dozen files).
const DISK_USAGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a node waiting to be vouched for says what it waits for.
const VOUCHING_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Measures the data directory's size every [`DISK_USAGE_INTERVAL`] on a thread of its own
/// until `stop`: a walk of the filesystem on the raft thread would stall it with the disk (a
/// frozen one blocks every call), and the node must keep running to route around that disk.
fn spawn_disk_usage(dir: PathBuf, stop: Arc<AtomicBool>) -> Arc<AtomicU64> {
    let bytes = Arc::new(AtomicU64::new(0));
    let measured = Arc::clone(&bytes);
    let spawned = std::thread::Builder::new()
        .name("raftline-disk-usage".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                measured.store(dir_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(DISK_USAGE_INTERVAL);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot spawn the disk usage thread; status reports 0 bytes");
    }
    bytes
}

/// Bytes of the files under `dir` (what `du` would count, without block rounding); files that
/// vanish while it walks (a segment dropped, a snapshot replaced) count as nothing.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Why the loop ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The replica failed (log, storage).
    #[error(transparent)]
    Fatal(#[from] FatalError),
    /// The network event loop failed.
    #[error("network event loop: {0}")]
    Net(#[from] std::io::Error),
    /// A peer records another data directory for this node id (seen while vouching).
    #[error(
        "node {node}: node {by} records data directory incarnation {recorded:016x} for this id, \
         but this data directory is {ours:016x}: it is not the directory the cluster knows (a \
         wiped or replaced disk, or two nodes started with one id). A voter that lost its log \
         and vote must not take part: remove it (`raftline member remove {node}`), then start \
         it with --join (tools/deploy/README.md \"Replacing a dead node\")"
    )]
    Incarnation {
        /// This node.
        node: u64,
        /// Who records the other incarnation.
        by: u64,
        /// What is recorded.
        recorded: u64,
        /// This directory's.
        ours: u64,
    },
}

/// The raft thread: owns the network, the replica and the client state; no locks on its data
/// path.
pub struct EventLoop {
    cfg: LoopConfig,
    net: Net,
    replica: Replica,
    appends: Appends,
    subscriptions: Subscriptions,
    kafka: Kafka,
    members: Members,
    replier: Replier,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    events: Vec<NetEvent>,
    /// Client events not handled yet (at most `CLIENT_EVENTS_PER_ROUND` per round), in order.
    client_backlog: VecDeque<NetEvent>,
    /// The data directory's size (see [`spawn_disk_usage`]).
    disk_bytes: Arc<AtomicU64>,
    disk_watch: DiskWatch,
    /// `SnapshotNow` requests waiting for a snapshot covering `.2`: (client, request id, index).
    snapshot_waiters: Vec<(ClientId, u64, Index)>,
    /// Warnings about peers' messages, rate-limited (a flood must not flood the log).
    peer_warnings: WarnLimit,
    /// Each client connection's role and the check of its requests.
    access: Access,
    /// Warnings about refused client requests, rate-limited.
    client_warnings: WarnLimit,
    /// Round trips of heartbeats to each peer (leader only).
    peer_rtt: PeerRtt,
    next_tick: Instant,
    /// The core had more work than one round does (`READY_ROUNDS_MAX`): do not wait.
    more_ready: bool,
    /// Reloaded peer certificates (see `tls_reload.rs`).
    peer_tls_reloads: Option<Receiver<PeerTls>>,
    /// A pristine bootstrap voter not vouched for yet: its core neither ticks nor steps peer
    /// messages (`vouching.rs`).
    vouching: Option<Vouching>,
    /// When the node last said what it waits for while vouching.
    vouching_reported: Instant,
    /// A peer records another incarnation for this node (heard while vouching): the round
    /// ends the loop with it.
    refused: Option<LoopError>,
    /// Opens the replica again from the data directory, repairing what it finds damaged
    /// (`None`: damage met while running stops the node).
    reopen: Option<Reopen>,
}

/// Opens the node's replica from its data directory, as at start.
pub type Reopen = Box<dyn FnMut() -> Result<Replica, FatalError> + Send>;

impl EventLoop {
    /// A loop over `net`, `replica` and the client state, stopped by `stop`; `peer_names`
    /// resolves the members known by name.
    #[allow(clippy::too_many_arguments)] // the parts the loop owns, each built by `Node::start`
    pub fn new(
        cfg: LoopConfig,
        mut net: Net,
        replica: Replica,
        appends: Appends,
        subscriptions: Subscriptions,
        kafka: Kafka,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        peer_names: PeerNames,
    ) -> EventLoop {
        let peer_rtt = PeerRtt::new(cfg.election_timeout_min, metrics.clone());
        let vouching = cfg.vouch_among.as_ref().and_then(|voters| {
            let vouching = Vouching::new(cfg.node_id, cfg.incarnation, voters);
            (vouching.verdict() != VouchVerdict::Vouched).then_some(vouching)
        });
        if let Some(v) = &vouching {
            tracing::info!(
                waiting_for = ?v.missing(),
                needed = v.quorum(),
                "new data directory: not voting until a quorum of the other voters has said \
                 hello without recording another data directory for this node id (a wiped voter \
                 must not vote)"
            );
        }
        net.set_pristine(replica.is_pristine());
        EventLoop {
            vouching,
            vouching_reported: Instant::now(),
            refused: None,
            replier: Replier {
                cluster_id: cfg.cluster_id,
                node_id: cfg.node_id,
            },
            next_tick: Instant::now() + cfg.tick,
            disk_bytes: spawn_disk_usage(cfg.data_dir.clone(), Arc::clone(&stop)),
            disk_watch: DiskWatch::new(cfg.disk_stall),
            members: Members::new(
                cfg.node_id,
                cfg.admin_timeout,
                cfg.election_timeout_max,
                cfg.addresses.clone(),
                peer_names,
            ),
            cfg,
            net,
            replica,
            appends,
            subscriptions,
            kafka,
            metrics,
            stop,
            events: Vec::new(),
            client_backlog: VecDeque::new(),
            snapshot_waiters: Vec::new(),
            peer_warnings: WarnLimit::default(),
            access: Access::default(),
            client_warnings: WarnLimit::default(),
            peer_rtt,
            more_ready: false,
            peer_tls_reloads: None,
            reopen: None,
        }
    }

    /// Repairs damage met while running by reopening the replica with `reopen` (see
    /// [`EventLoop::repaired`]).
    pub fn with_reopen(mut self, reopen: Reopen) -> EventLoop {
        self.reopen = Some(reopen);
        self
    }

    /// Checks every client request against `policy` (without one, every request is served).
    pub fn with_access(mut self, policy: Option<AccessPolicy>) -> EventLoop {
        self.access = Access::new(policy);
        self
    }

    /// Hands the peer port each reloaded TLS configuration received on `reloads`.
    pub fn with_peer_tls_reloads(mut self, reloads: Receiver<PeerTls>) -> EventLoop {
        self.peer_tls_reloads = Some(reloads);
        self
    }

    /// Runs rounds until `stop` is set (then drains and returns) or a fatal error.
    pub fn run(mut self) -> Result<(), LoopError> {
        let mut drain: Option<(Instant, bool)> = None;
        loop {
            if self.stop.load(Ordering::Relaxed) && drain.is_none() {
                tracing::info!(
                    pending_appends = self.appends.pending(),
                    "stopping: draining"
                );
                self.appends.start_draining();
                let handing_over = self.replica.hand_over_leadership(false).is_some();
                if handing_over {
                    tracing::info!("handing leadership over before stopping");
                }
                drain = Some((Instant::now() + self.cfg.drain_timeout, handing_over));
            }
            if let Some((deadline, handing_over)) = drain {
                let handed_over = !handing_over || self.replica.raft().role() != Role::Leader;
                if (self.appends.pending() == 0 && handed_over) || Instant::now() >= deadline {
                    let why = "the node stopped before the append was acknowledged";
                    self.appends.fail_pending(&mut self.net, why);
                    let answers = self.appends.take_kafka_answers();
                    self.kafka
                        .answer_produces(&mut self.net, &self.replica, answers);
                    // Give the answers a moment to leave; the Net flushes on poll.
                    self.net
                        .poll(Some(Duration::from_millis(20)), &mut self.events)?;
                    tracing::info!("stopped");
                    return Ok(());
                }
            }
            match self.round() {
                Err(LoopError::Fatal(e)) if e.is_damage() && self.reopen.is_some() => {
                    self = self.repaired(e)?;
                }
                done => done?,
            }
        }
    }

    /// Repair in place of damage met while running (`damage`: a log batch or the served
    /// snapshot failed its checksum; nothing of it was served). What a restart would do, with
    /// the process, its sockets and its clients kept: appends waiting for an answer get
    /// `Unavailable` (their outcome is unknown: an idempotent producer's retry is deduplicated),
    /// the replica is closed (its log writer finishes what it was given) and opened again,
    /// which cuts the damage, persists the repair marker and leaves the node mute until a
    /// leader has sent back what it may have lost (tools/node/README.md, "Repair instead of
    /// refusal"). A leader is a follower after it; the others elect. If the reopen finds
    /// nothing damaged, the damage was not on the disk and the node stops with it.
    fn repaired(mut self, damage: FatalError) -> Result<EventLoop, LoopError> {
        tracing::error!(
            error = %damage,
            "storage damage found while running: reopening the storage in place to cut it and \
             fetch it again from a peer (nothing damaged was served)"
        );
        self.appends.fail_pending(
            &mut self.net,
            "the node found damage in its storage and is repairing it; the append's outcome is \
             unknown",
        );
        let answers = self.appends.take_kafka_answers();
        self.kafka
            .answer_produces(&mut self.net, &self.replica, answers);
        self.metrics.release_log();
        self.replica.close();
        let reopen = self
            .reopen
            .as_mut()
            .expect("repair in place needs a reopen");
        self.replica = reopen()?;
        self.metrics.set_log(self.replica.log_handle());
        self.metrics.count_repairs(self.replica.repairs_at_open());
        self.metrics.storage_reopens.fetch_add(1, Ordering::Relaxed);
        if self.replica.repairs_at_open().is_empty() {
            return Err(damage.into());
        }
        tracing::warn!(
            repairs = ?self.replica.repairs_at_open(),
            "storage reopened in place; serving again once a leader has repaired it"
        );
        self.net.set_pristine(self.replica.is_pristine());
        Ok(self)
    }

    /// One round, in the order of its effects.
    pub fn round(&mut self) -> Result<(), LoopError> {
        // 1. Input: peer messages step the core, client and Kafka requests are validated and
        //    staged (a Kafka Fetch registered); wait for them until the next tick (not at all with
        //    work left from the last round).
        let timeout = if self.more_ready {
            Duration::ZERO
        } else {
            self.next_tick.saturating_duration_since(Instant::now())
        };
        self.net.poll(Some(timeout), &mut self.events)?;
        let polled_at = Instant::now();
        // Peer traffic first, and at most `CLIENT_EVENTS_PER_ROUND` client events after it:
        // however many requests clients send, the core hears its leader's heartbeats and its
        // followers' answers before serving them, and a round (whose end sends heartbeats)
        // stays short. Client events wait in order; client reads are held while any wait.
        let mut events = std::mem::take(&mut self.events);
        for event in events.drain(..) {
            match event {
                NetEvent::PeerFrame { .. }
                | NetEvent::PeerHello { .. }
                | NetEvent::PeerUp { .. }
                | NetEvent::PeerDown { .. }
                | NetEvent::Woken => self.take(event, polled_at),
                client => self.client_backlog.push_back(client),
            }
        }
        self.events = events;
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        for _ in 0..CLIENT_EVENTS_PER_ROUND {
            let Some(event) = self.client_backlog.pop_front() else {
                break;
            };
            self.take(event, polled_at);
        }
        self.net.hold_client_reads(!self.client_backlog.is_empty());
        self.members.dial_resolved(&mut self.net);
        if let Some(reloads) = &self.peer_tls_reloads {
            for tls in reloads.try_iter() {
                self.net.set_peer_tls(tls);
            }
        }
        // 2. Proposals: the round's appends become one entry (a run when there are several).
        // Appends that would add keys to a full state are refused here (Snapshots::admits),
        // then resends of idempotent producers' stored batches are answered instead.
        loop {
            let snapshots = self.replica.snapshots();
            let refusal = |batch: &_| {
                (!snapshots.admits(batch)).then(|| ClientError::StateFull {
                    state_bytes_max: snapshots.state_bytes_max() as u64,
                })
            };
            let Some(proposal) = self.appends.take_proposal(&mut self.net, refusal) else {
                break;
            };
            let admitted = self.appends.admit(&mut self.net, &self.replica, proposal);
            let Some(Proposal {
                batches, waiting, ..
            }) = admitted
            else {
                continue;
            };
            let result = self.replica.propose_run(batches);
            self.appends.proposed(&mut self.net, waiting, result)?;
        }
        // 3. Durability and time: how far the log writer got; a tick when one is due.
        self.replica.on_durable()?;
        let now = Instant::now();
        if now >= self.next_tick {
            self.tick(now);
        }
        // 4. The core's Ready, stage by stage: hard state durable, then messages out (a leader's
        //    AppendEntries before its own fdatasync), then entries to the log writer and the
        //    committed ones applied.
        let backlog = !self.client_backlog.is_empty();
        self.more_ready = true;
        for _ in 0..READY_ROUNDS_MAX {
            let Some(mut rd) = self.replica.ready() else {
                self.more_ready = false;
                break;
            };
            let messages = self.replica.persist(&mut rd)?;
            if !messages.is_empty() {
                self.send(messages);
                if let Err(e) = self.net.submit() {
                    tracing::warn!(error = %e, "submitting sends failed; they go at the next poll");
                }
            }
            self.replica.write_and_apply(rd)?;
        }
        self.more_ready |= backlog;
        self.replica.settle()?;
        if self
            .members
            .settle(&mut self.net, &self.replier, &self.replica)
        {
            let addresses = self.members.client_addresses().clone();
            self.appends.set_client_addresses(addresses);
        }
        self.members
            .record_incarnations(&mut self.replica, self.cfg.incarnation);
        let held = self.replica.take_messages();
        self.send(held);
        // 5. Answers: appends decided by what committed (or, for `ack=leader`, is durable here);
        //    a Kafka produce's answer leaves in its connection's request order.
        let committed = self.replica.take_committed();
        let leader = self.replica.raft().leader();
        self.appends.on_committed(&mut self.net, &committed, leader);
        let raft = self.replica.raft();
        self.appends.on_durable(
            &mut self.net,
            raft.durable_index(),
            |i| raft.term_at(i),
            leader,
        );
        self.answer_snapshot_waiters();
        let kafka_answers = self.appends.take_kafka_answers();
        self.kafka
            .answer_produces(&mut self.net, &self.replica, kafka_answers);
        // 6. Reads: committed batches to every subscription with credit; Kafka fetches that
        //    have enough to read or waited long enough.
        self.subscriptions.stream(&mut self.net, &self.replica)?;
        self.kafka.serve_fetches(&mut self.net, &self.replica)?;
        Ok(())
    }

    /// Hands one network event, received at `polled_at`, to whoever it is for.
    fn take(&mut self, event: NetEvent, polled_at: Instant) {
        let net = &mut self.net;
        match event {
            // Not vouched for yet: the core hears nobody (the leader sends again later).
            NetEvent::PeerFrame { .. } if self.vouching.is_some() => {}
            NetEvent::PeerFrame { from, conn, frame } => {
                // The Net admits a message only from the node that said hello on its
                // connection; what no correct node could send closes that connection.
                let refused = match decode_message(&frame) {
                    Ok(msg) => {
                        self.members.heard(from, polled_at);
                        self.peer_rtt.received(&msg, polled_at);
                        self.replica
                            .step(msg)
                            .err()
                            .map(|r| (r.label(), r.to_string()))
                    }
                    Err(e) => Some(("undecodable", e.to_string())),
                };
                if let Some((reason, why)) = refused {
                    self.refuse_peer(from, reason, &why);
                    self.net.close_peer(conn, reason);
                }
            }
            NetEvent::ClientFrame { client, frame } => match decode_request(frame) {
                // Every request passes the access check, here and nowhere else.
                Ok(request) => {
                    let is_named = |name: &str| net.client_is_named(client, name);
                    match self.access.judge(client, request, is_named) {
                        Verdict::Serve(request) => self.serve(client, request),
                        Verdict::Authenticated(answer) => {
                            self.replier.respond(net, client, &answer)
                        }
                        Verdict::Refused {
                            answer,
                            reason,
                            close,
                        } => self.refuse_client(client, &answer, reason, close),
                    }
                }
                Err(e) => {
                    // Say why, then close that connection.
                    let why = format!("undecodable request: {e}");
                    tracing::warn!(%client, why, "closing a client that sent an undecodable request");
                    let error = ClientError::BadRequest { why: why.clone() };
                    self.replier.error(net, client, 0, error);
                    net.close_client(client, &why);
                    self.subscriptions.closed(client);
                }
            },
            NetEvent::KafkaFrame { client, frame } => {
                self.kafka
                    .request(net, &self.replica, &mut self.appends, client, frame)
            }
            NetEvent::KafkaClosed { client, .. } => self.kafka.closed(client),
            NetEvent::ClientClosed { client, .. } => {
                self.subscriptions.closed(client);
                self.access.closed(client);
            }
            NetEvent::ClientDrained { client } => self.subscriptions.drained(client),
            NetEvent::PeerHello { from, hello } => self.hello(from, hello),
            NetEvent::PeerUp { id } => tracing::info!(peer = id, "peer connection up"),
            NetEvent::PeerDown { id } => {
                tracing::info!(peer = id, "peer connection down");
                self.members.peer_down(id);
            }
            NetEvent::Woken => {}
        }
    }

    /// A peer said hello: the members learn its incarnation (a leader records it); while this
    /// node waits to be vouched for, what the peer records for it counts. (Only then: a node
    /// with a log may hear a stale record from a peer still catching up through the
    /// configuration from before this id was removed and joined again.)
    fn hello(&mut self, from: u64, hello: PeerHello) {
        self.members.hello(from, hello.incarnation);
        let Some(vouching) = &mut self.vouching else {
            return;
        };
        match vouching.hear(from, &hello) {
            VouchVerdict::Waiting => {}
            VouchVerdict::Vouched => {
                tracing::info!(
                    peer = from,
                    "vouched for: no other voter records another data directory for this node \
                     id; taking part"
                );
                self.vouching = None;
            }
            VouchVerdict::Refused { by, recorded } => {
                self.refused = Some(LoopError::Incarnation {
                    node: self.cfg.node_id,
                    by,
                    recorded,
                    ours: self.cfg.incarnation,
                })
            }
        }
    }

    /// Serves one request the access check let through.
    fn serve(&mut self, client: ClientId, request: Request) {
        let net = &mut self.net;
        match request {
            Request::Append {
                request_id,
                ack,
                batch,
            } => self.appends.append(net, client, request_id, ack, batch),
            Request::Subscribe {
                subscription_id,
                from,
                window_bytes,
            } => self.subscriptions.subscribe(
                net,
                &self.replica,
                client,
                subscription_id,
                from,
                window_bytes,
            ),
            Request::SubscribeSnapshot {
                subscription_id,
                window_bytes,
                resume,
            } => self.subscriptions.subscribe_snapshot(
                net,
                &self.replica,
                client,
                subscription_id,
                window_bytes,
                resume,
            ),
            Request::SnapshotNow { request_id } => match self.replica.request_snapshot() {
                Ok(index) => self.snapshot_waiters.push((client, request_id, index)),
                Err(why) => {
                    let error = ClientError::Unavailable { why };
                    self.replier.error(net, client, request_id, error);
                }
            },
            Request::InitProducer { request_id } => {
                let reply = match self.appends.grant_producer(&self.replica, None) {
                    Ok((producer_id, epoch)) => Response::ProducerGranted {
                        request_id,
                        producer_id,
                        epoch,
                    },
                    Err(GrantError::DiskFull(full)) => Response::Error {
                        request_id,
                        error: ClientError::DiskFull {
                            path: full.path.display().to_string(),
                            free_bytes: full.free_bytes,
                        },
                    },
                    Err(e) => Response::Error {
                        request_id,
                        error: ClientError::Unavailable { why: e.to_string() },
                    },
                };
                self.replier.respond(net, client, &reply);
            }
            Request::Credit {
                subscription_id,
                bytes,
            } => self.subscriptions.credit(client, subscription_id, bytes),
            Request::Status { request_id } => {
                let disk_bytes = self.disk_bytes.load(Ordering::Relaxed);
                let status = status(
                    &self.cfg,
                    &self.members,
                    &self.replica,
                    net,
                    disk_bytes,
                    &self.disk_watch,
                );
                let reply = Response::StatusReply { request_id, status };
                self.replier.respond(net, client, &reply);
            }
            Request::MemberList { request_id } => {
                self.member_request(client, request_id, MemberRequest::List)
            }
            Request::MemberAdd {
                request_id,
                id,
                peer_address,
                client_address,
                incarnation,
            } => {
                let request = MemberRequest::Add {
                    id,
                    peer_address,
                    client_address,
                    incarnation,
                };
                self.member_request(client, request_id, request)
            }
            Request::MemberPromote { request_id, id } => {
                self.member_request(client, request_id, MemberRequest::Promote(id))
            }
            Request::MemberRemove {
                request_id,
                id,
                force,
            } => self.member_request(client, request_id, MemberRequest::Remove(id, force)),
            Request::MemberUpdate {
                request_id,
                id,
                peer_address,
                client_address,
            } => {
                let request = MemberRequest::Update {
                    id,
                    peer_address,
                    client_address,
                };
                self.member_request(client, request_id, request)
            }
            Request::LeaderTransfer { request_id, to } => {
                self.member_request(client, request_id, MemberRequest::Transfer(to))
            }
            Request::Authenticate { .. } => unreachable!("the access check answers Authenticate"),
        }
    }

    /// Answers a request the access check refused (counted by `reason`, warned of at a limited
    /// rate: a client guessing tokens must not flood the log), and closes the connection if
    /// `close`.
    fn refuse_client(
        &mut self,
        client: ClientId,
        answer: &Response,
        reason: &'static str,
        close: bool,
    ) {
        self.metrics.count_client_refusal(reason);
        if let Some(suppressed) = self.client_warnings.admit(Instant::now()) {
            tracing::warn!(%client, reason, suppressed, "client request refused");
        }
        self.replier.respond(&mut self.net, client, answer);
        if close {
            self.net.close_client(client, reason);
            self.subscriptions.closed(client);
        }
    }

    fn member_request(&mut self, client: ClientId, request_id: u64, request: MemberRequest) {
        self.members.request(
            &mut self.net,
            &self.replier,
            &mut self.replica,
            client,
            request_id,
            request,
        );
    }

    /// Answers the `SnapshotNow` requests a durable snapshot now covers.
    fn answer_snapshot_waiters(&mut self) {
        if self.snapshot_waiters.is_empty() {
            return;
        }
        let Some(served) = self.replica.served_snapshot() else {
            return;
        };
        let (index, cut_offset) = (served.meta().index, served.cut_offset());
        let (net, replier) = (&mut self.net, &self.replier);
        self.snapshot_waiters
            .retain(|&(client, request_id, wanted)| {
                if index < wanted {
                    return true;
                }
                let taken = Response::SnapshotTaken {
                    request_id,
                    index,
                    cut_offset,
                };
                replier.respond(net, client, &taken);
                false
            });
    }

    /// One tick of logical time: the core's timers, append timeouts, published status.
    fn tick(&mut self, now: Instant) {
        self.disk_watch.check(&mut self.replica, now);
        match &self.vouching {
            None => self.replica.tick(),
            Some(v) if now >= self.vouching_reported + VOUCHING_REPORT_INTERVAL => {
                tracing::warn!(
                    waiting_for = ?v.missing(),
                    needed = v.quorum(),
                    "new data directory: still not voting, waiting to hear from the other \
                     voters (a node removed from the cluster is not dialled: start it with \
                     --join instead of --peers)"
                );
                self.vouching_reported = now;
            }
            Some(_) => {}
        }
        self.net.set_pristine(self.replica.is_pristine());
        self.appends.expire(&mut self.net, now);
        self.metrics
            .proposals_pending
            .store(self.appends.pending() as u64, Ordering::Relaxed);
        self.metrics.publish(self.status());
        self.metrics.publish_net(self.net.stats());
        let snapshot_index = self.replica.snapshot_index().unwrap_or(0);
        self.metrics
            .snapshot_index
            .store(snapshot_index, Ordering::Relaxed);
        let repair_through = self.replica.raft().repair_through().unwrap_or(0);
        self.metrics
            .repair_through
            .store(repair_through, Ordering::Relaxed);
        self.next_tick += self.cfg.tick;
        if self.next_tick < now {
            // The loop fell behind (a long stall): skip missed ticks rather than burst them.
            self.next_tick = now + self.cfg.tick;
        }
    }

    /// Counts a peer message dropped for `reason` and says so (rate-limited); the caller closes
    /// the connection it came on.
    fn refuse_peer(&mut self, from: u64, reason: &'static str, why: &str) {
        self.metrics.count_peer_refusal(reason);
        if let Some(suppressed) = self.peer_warnings.admit(Instant::now()) {
            tracing::warn!(from, reason, why, suppressed, "peer message refused");
        }
    }

    fn status(&self) -> NodeStatus {
        let disk_bytes = self.disk_bytes.load(Ordering::Relaxed);
        status(
            &self.cfg,
            &self.members,
            &self.replica,
            &self.net,
            disk_bytes,
            &self.disk_watch,
        )
    }

    fn send(&mut self, mut messages: Vec<Message>) {
        send_messages(
            &mut self.net,
            self.cfg.cluster_id,
            &self.metrics,
            &mut self.peer_rtt,
            &mut messages,
        );
    }
}

/// Encodes and queues peer messages (a full or down link drops them: Raft retransmits) and
/// counts the bytes queued (`raftline_peer_bytes_sent_total`); heartbeats start a round-trip
/// measurement.
fn send_messages(
    net: &mut Net,
    cluster_id: ClusterId,
    metrics: &Metrics,
    rtt: &mut PeerRtt,
    msgs: &mut Vec<Message>,
) {
    let now = Instant::now();
    for msg in msgs.drain(..) {
        let mut bytes = 0;
        let encode = |frame: &mut Vec<u8>| {
            let before = frame.len();
            encode_message(frame, cluster_id, &msg)?;
            bytes = (frame.len() - before) as u64;
            Ok::<(), PeerCodecError>(())
        };
        match net.send_peer_with(msg.to, encode) {
            Ok(()) => {
                metrics
                    .peer_bytes_sent
                    .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                rtt.sent(&msg, now);
            }
            Err(SendWithError::Encode(e)) => {
                tracing::error!(error = %e, "cannot encode a peer message");
            }
            Err(SendWithError::Refused(_)) => {}
        }
    }
}

/// The node's status as `Status` answers it and the metrics export it.
fn status(
    cfg: &LoopConfig,
    members: &Members,
    replica: &Replica,
    net: &Net,
    disk_bytes: u64,
    disk_watch: &DiskWatch,
) -> NodeStatus {
    let now = Instant::now();
    let raft = replica.raft();
    let log = replica.log();
    let role = match raft.role() {
        Role::Follower if !raft.is_voter() => NodeRole::Learner,
        Role::Follower => NodeRole::Follower,
        Role::PreCandidate => NodeRole::PreCandidate,
        Role::Candidate => NodeRole::Candidate,
        Role::Leader => NodeRole::Leader,
    };
    let last_index = raft.last_index();
    let peers = if raft.role() == Role::Leader {
        raft.membership()
            .members()
            .filter(|&id| id != cfg.node_id)
            .filter_map(|id| {
                raft.progress(id).map(|p| PeerStatus {
                    node_id: id,
                    match_index: p.match_index,
                    lag_entries: last_index.saturating_sub(p.match_index),
                    connected: net.peer_is_up(id),
                    ack_age_ms: disk_watch.ack_age(id, now).as_millis() as u64,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let leader = raft.leader();
    NodeStatus {
        node_id: cfg.node_id,
        role,
        term: raft.term(),
        leader_id: leader,
        leader_client_address: leader.and_then(|id| members.client_addresses().get(&id).cloned()),
        commit_index: raft.commit_index(),
        log_start_offset: log.start_offset(),
        log_end_offset: log.next_offset(),
        log_first_index: log.first_index(),
        log_last_index: log.last_index(),
        peers,
        snapshot: replica.served_snapshot().map(|s| SnapshotStatus {
            index: s.meta().index,
            term: s.meta().term,
            cut_offset: s.cut_offset(),
            bytes: s.file_bytes(),
            age_ms: s.age().map(|a| a.as_millis() as u64),
        }),
        disk_bytes,
        state_keys: replica.snapshots().state().len() as u64,
        state_bytes: replica.snapshots().state().bytes() as u64,
        state_bytes_max: replica.snapshots().state_bytes_max() as u64,
        log_write_age_ms: log.write_age().map_or(0, |a| a.as_millis() as u64),
        disk_full: log.disk_full().map(|f| DiskFullStatus {
            path: f.path.display().to_string(),
            free_bytes: f.free_bytes,
        }),
        disk_stalled: raft.write_stalled(),
    }
}
