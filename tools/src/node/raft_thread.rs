//! The raft thread's event loop: one thread owns the network (`Net`: peer and client sockets on
//! one io_uring, or the poll fallback), the replica and the client sessions; no locks on its data
//! path. The log writer thread wakes it through the Net's waker after every durable group.
//!
//! One round: wait for network events, a wake-up or the next tick; hand peer messages to the
//! core and client requests to the sessions; read the durable position; tick if due; carry out
//! the core's `Ready` (hard state, log appends, messages out); answer what committed; stream to
//! subscribers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_netio::client_proto::{decode_request, NodeRole, NodeStatus, PeerStatus, Request};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{Net, NetEvent, SendWithError};
use raftline_netio::peer_codec::{decode_message, encode_message, PeerCodecError};
use raftline_replicator::{Message, Role};

use super::metrics::Metrics;
use super::replica::{FatalError, Replica};
use super::sessions::Sessions;

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
    /// Client address of every node (for `Status`).
    pub client_addresses: BTreeMap<u64, String>,
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
}

/// Runs the node until `stop` is set (then drains and returns) or a fatal error.
pub fn run(
    cfg: LoopConfig,
    mut net: Net,
    mut replica: Replica,
    mut sessions: Sessions,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> Result<(), LoopError> {
    let mut events = Vec::new();
    let mut next_tick = Instant::now() + cfg.tick;
    let mut drain_deadline: Option<Instant> = None;
    let mut handing_over = false;
    let mut more_ready = false;
    loop {
        if stop.load(Ordering::Relaxed) && drain_deadline.is_none() {
            tracing::info!(
                pending_appends = sessions.pending_appends(),
                "stopping: draining"
            );
            sessions.start_draining();
            handing_over = replica.hand_over_leadership().is_some();
            drain_deadline = Some(Instant::now() + cfg.drain_timeout);
        }
        if let Some(deadline) = drain_deadline {
            let handed_over = !handing_over || replica.raft().role() != Role::Leader;
            if (sessions.pending_appends() == 0 && handed_over) || Instant::now() >= deadline {
                sessions.fail_pending(
                    &mut net,
                    "the node stopped before the append was acknowledged",
                );
                // Give the answers a moment to leave; the Net flushes on poll.
                net.poll(Some(Duration::from_millis(20)), &mut events)?;
                tracing::info!("stopped");
                return Ok(());
            }
        }
        // With work left over from the last round, only look at the network, do not wait.
        let timeout = if more_ready {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        net.poll(Some(timeout), &mut events)?;
        for event in events.drain(..) {
            match event {
                NetEvent::PeerFrame { from, frame } => match decode_message(&frame) {
                    Ok(msg) if msg.to == cfg.node_id => replica.step(msg),
                    Ok(msg) => {
                        tracing::warn!(from, to = msg.to, "peer message for another node dropped")
                    }
                    Err(e) => tracing::warn!(from, error = %e, "undecodable peer message dropped"),
                },
                NetEvent::ClientFrame { client, frame } => match decode_request(frame) {
                    Ok(Request::Append {
                        request_id,
                        ack,
                        batch,
                    }) => {
                        sessions.append(&mut net, &mut replica, client, request_id, ack, batch)?
                    }
                    Ok(Request::Subscribe {
                        subscription_id,
                        from,
                        window_bytes,
                    }) => sessions.subscribe(
                        &mut net,
                        &replica,
                        client,
                        subscription_id,
                        from,
                        window_bytes,
                    ),
                    Ok(Request::Credit {
                        subscription_id,
                        bytes,
                    }) => sessions.credit(client, subscription_id, bytes),
                    Ok(Request::Status { request_id }) => {
                        let status = status(&cfg, &replica, &net);
                        sessions.status(&mut net, client, request_id, status);
                    }
                    Err(e) => sessions.undecodable(&mut net, client, &e.to_string()),
                },
                NetEvent::ClientClosed { client, .. } => sessions.closed(client),
                NetEvent::ClientDrained { client } => sessions.drained(client),
                NetEvent::PeerUp { id } => tracing::info!(peer = id, "peer connection up"),
                NetEvent::PeerDown { id } => tracing::info!(peer = id, "peer connection down"),
                NetEvent::Woken => {}
            }
        }
        // Every append of the round becomes one entry (a run when there are several).
        sessions.propose_staged(&mut net, &mut replica)?;
        replica.on_durable()?;
        let now = Instant::now();
        if now >= next_tick {
            replica.tick();
            sessions.expire(&mut net, now);
            metrics.publish(status(&cfg, &replica, &net));
            let snapshot_index = replica.snapshot_index().unwrap_or(0);
            metrics
                .snapshot_index
                .store(snapshot_index, std::sync::atomic::Ordering::Relaxed);
            next_tick += cfg.tick;
            if next_tick < now {
                // The loop fell behind (a long stall): skip missed ticks rather than burst them.
                next_tick = now + cfg.tick;
            }
        }
        // Messages leave (submitted to the kernel) before the same Ready's entries wake the log
        // writer: the follower's copy is on its way while this node's write starts.
        more_ready = replica.advance_sending(&mut |msgs| {
            send_messages(&mut net, cfg.cluster_id, &metrics, msgs);
            if let Err(e) = net.submit() {
                tracing::warn!(error = %e, "submitting sends failed; they go at the next poll");
            }
        })?;
        send_messages(
            &mut net,
            cfg.cluster_id,
            &metrics,
            &mut replica.take_messages(),
        );
        let committed = replica.take_committed();
        let leader = replica.raft().leader();
        if !committed.is_empty() {
            sessions.on_committed(&mut net, &committed, leader);
        }
        let raft = replica.raft();
        sessions.on_durable(&mut net, raft.durable_index(), |i| raft.term_at(i), leader);
        sessions.stream(&mut net, &replica)?;
    }
}

/// Encodes and queues peer messages (a full or down link drops them: Raft retransmits) and
/// counts the bytes queued (`raftline_peer_bytes_sent_total`).
fn send_messages(net: &mut Net, cluster_id: ClusterId, metrics: &Metrics, msgs: &mut Vec<Message>) {
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
            }
            Err(SendWithError::Encode(e)) => {
                tracing::error!(error = %e, "cannot encode a peer message");
            }
            Err(SendWithError::Refused(_)) => {}
        }
    }
}

/// The node's status as `Status` answers it and the metrics export it.
pub fn status(cfg: &LoopConfig, replica: &Replica, net: &Net) -> NodeStatus {
    let raft = replica.raft();
    let log = replica.log();
    let role = match raft.role() {
        Role::Follower => NodeRole::Follower,
        Role::PreCandidate => NodeRole::PreCandidate,
        Role::Candidate => NodeRole::Candidate,
        Role::Leader => NodeRole::Leader,
    };
    let last_index = raft.last_index();
    let peers = if raft.role() == Role::Leader {
        raft.config()
            .voters
            .iter()
            .filter(|&&id| id != cfg.node_id)
            .filter_map(|&id| {
                raft.progress(id).map(|p| PeerStatus {
                    node_id: id,
                    match_index: p.match_index,
                    lag_entries: last_index.saturating_sub(p.match_index),
                    connected: net.peer_is_up(id),
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
        leader_client_address: leader.and_then(|id| cfg.client_addresses.get(&id).cloned()),
        commit_index: raft.commit_index(),
        log_start_offset: log.start_offset(),
        log_end_offset: log.next_offset(),
        log_first_index: log.first_index(),
        log_last_index: log.last_index(),
        peers,
    }
}
