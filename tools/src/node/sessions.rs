//! Client sessions on the raft thread: appends waiting for their acknowledgement, and
//! subscriptions streaming committed batches under the client's credit.
//!
//! An append is answered once, by the first of: its entry committed (`Quorum`, the default) or
//! durable here (`Leader`) — with the offsets stamped at proposal — or the entry at its index
//! committed with another term (the proposal was lost with this node's leadership: `NotLeader`),
//! or `append_timeout` passed (`Timeout`: it may still commit). Subscriptions read committed,
//! locally durable batches straight from the log; a subscription sends while it has credit and the
//! connection's queue accepts, and resumes on `ClientDrained` or new credit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_log::batch::{entry_batches, BATCH_HEADER_BYTES};
use raftline_log::{Batch, LogError};
use raftline_netio::client_proto::{
    encode_batches, encode_response, AckMode, ClientError, NodeStatus, Response, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net, SendError, SendWithError};
use raftline_replicator::{Index, ProposeError, Term};

use super::metrics::Metrics;
use super::replica::{Committed, FatalError, ProposalError, Replica};

/// Batch bytes read from the log into one `Batches` frame at most.
const STREAM_FRAME_BYTES_MAX: usize = 1 << 20;
/// Frames one subscription may send per event-loop round before others get their turn.
const STREAM_FRAMES_PER_ROUND: usize = 4;

/// Static parameters of the sessions.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our cluster (stamped into every frame).
    pub cluster_id: ClusterId,
    /// Our node id (sender of every response).
    pub node_id: u64,
    /// Client address of every node, for `NotLeader` hints.
    pub client_addresses: BTreeMap<u64, String>,
    /// Largest batch accepted from a producer.
    pub batch_bytes_max: usize,
    /// An append not acknowledged within this is answered `Timeout`.
    pub append_timeout: Duration,
    /// Subscriptions per connection.
    pub subscriptions_per_client_max: usize,
}

struct PendingAppend {
    client: ClientId,
    request_id: u64,
    term: Term,
    base_offset: u64,
    last_offset: u64,
    accepted: Instant,
}

struct Subscription {
    next_offset: u64,
    credit_bytes: u64,
}

#[derive(Default)]
struct Client {
    subscriptions: BTreeMap<u64, Subscription>,
    /// The connection's queue refused a frame; wait for `ClientDrained`.
    blocked: bool,
}

/// Removes and returns the lowest-indexed pending append if its index is at most `index`.
fn pop_first_at_most(
    pending: &mut BTreeMap<PendingKey, PendingAppend>,
    index: Index,
) -> Option<(Index, PendingAppend)> {
    let first = pending.first_entry()?;
    (first.key().0 <= index).then(|| {
        let ((index, _), p) = first.remove_entry();
        (index, p)
    })
}

/// An append validated in this event-loop round, waiting for the round's proposal.
struct StagedAppend {
    client: ClientId,
    request_id: u64,
    ack: AckMode,
    accepted: Instant,
}

/// A pending append's key: its entry's index, then its place in the entry (a run holds several).
type PendingKey = (Index, usize);

/// All client state of the node.
pub struct Sessions {
    cfg: SessionConfig,
    /// Appends acknowledged at commit, by entry index and place in the entry.
    awaiting_commit: BTreeMap<PendingKey, PendingAppend>,
    /// Appends acknowledged once durable on this node, by entry index and place in the entry.
    awaiting_durable: BTreeMap<PendingKey, PendingAppend>,
    /// This round's validated appends, proposed together as one entry by `propose_staged`.
    staged: Vec<StagedAppend>,
    staged_batches: Vec<Batch>,
    /// Bytes the staged batches' entry will have.
    staged_bytes: usize,
    clients: HashMap<ClientId, Client>,
    /// No new appends are taken (the node is stopping).
    draining: bool,
    metrics: Arc<Metrics>,
    /// Batches read from the log for one frame, reused by every subscription (no fresh buffer
    /// per read); at most a frame's worth, or one batch when that batch alone is larger.
    read_buf: Vec<u8>,
}

impl Sessions {
    /// No clients yet.
    pub fn new(cfg: SessionConfig, metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            metrics,
            cfg,
            awaiting_commit: BTreeMap::new(),
            awaiting_durable: BTreeMap::new(),
            staged: Vec::new(),
            staged_batches: Vec::new(),
            staged_bytes: 0,
            clients: HashMap::new(),
            draining: false,
            read_buf: Vec::new(),
        }
    }

    /// Appends still waiting for their acknowledgement.
    pub fn pending_appends(&self) -> usize {
        self.awaiting_commit.len() + self.awaiting_durable.len() + self.staged.len()
    }

    /// Refuse new appends from now on (`Unavailable`): the node is stopping.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    fn respond(&self, net: &mut Net, client: ClientId, response: &Response) {
        let (cluster_id, node_id) = (self.cfg.cluster_id, self.cfg.node_id);
        let encode = |frame: &mut Vec<u8>| encode_response(frame, cluster_id, node_id, response);
        match net.send_client_with(client, encode) {
            Ok(()) | Err(SendWithError::Refused(SendError::Closed)) => {}
            Err(SendWithError::Encode(e)) => {
                tracing::error!(error = %e, %client, "cannot encode a response");
            }
            Err(SendWithError::Refused(e)) => {
                // A reply that does not fit means the client stopped reading its answers.
                net.close_client(client, &format!("response refused: {e}"));
            }
        }
    }

    fn error(&self, net: &mut Net, client: ClientId, request_id: u64, error: ClientError) {
        self.respond(net, client, &Response::Error { request_id, error });
    }

    /// Answers a `Status` request.
    pub fn status(&self, net: &mut Net, client: ClientId, request_id: u64, status: NodeStatus) {
        self.respond(net, client, &Response::StatusReply { request_id, status });
    }

    /// A request that does not decode: say why, then close that connection.
    pub fn undecodable(&mut self, net: &mut Net, client: ClientId, why: &str) {
        tracing::warn!(%client, why, "closing a client that sent an undecodable request");
        let why = format!("undecodable request: {why}");
        self.error(net, client, 0, ClientError::BadRequest { why: why.clone() });
        net.close_client(client, &why);
        self.clients.remove(&client);
    }

    /// The `NotLeader` error naming the leader this node knows of.
    pub fn not_leader(&self, leader: Option<u64>) -> ClientError {
        ClientError::NotLeader {
            leader_id: leader,
            leader_address: leader.and_then(|id| self.cfg.client_addresses.get(&id).cloned()),
        }
    }

    /// Handles an `Append`: validates the batch and stages it for this round's proposal
    /// ([`Sessions::propose_staged`]); invalid ones are answered at once.
    pub fn append(
        &mut self,
        net: &mut Net,
        replica: &mut Replica,
        client: ClientId,
        request_id: u64,
        ack: AckMode,
        bytes: Vec<u8>,
    ) -> Result<(), FatalError> {
        if self.draining {
            let why = "the node is shutting down".to_string();
            self.error(net, client, request_id, ClientError::Unavailable { why });
            return Ok(());
        }
        if bytes.len() > self.cfg.batch_bytes_max {
            let limit_bytes = self.cfg.batch_bytes_max as u64;
            self.error(
                net,
                client,
                request_id,
                ClientError::TooLarge { limit_bytes },
            );
            return Ok(());
        }
        let batch_bytes = bytes.len();
        let batch = match Batch::decode(bytes) {
            Ok(batch) if batch.header().record_count > 0 => batch,
            Ok(_) => {
                let why = "a batch must carry at least one record".to_string();
                self.error(net, client, request_id, ClientError::BadRequest { why });
                return Ok(());
            }
            Err(e) => {
                let why = format!("invalid batch: {e}");
                self.error(net, client, request_id, ClientError::BadRequest { why });
                return Ok(());
            }
        };
        // The entry must fit the entry limit: a run adds its own header.
        if !self.staged.is_empty()
            && self.staged_bytes + BATCH_HEADER_BYTES + batch_bytes > self.cfg.batch_bytes_max
        {
            self.propose_staged(net, replica)?;
        }
        self.metrics.batch_bytes.record(batch_bytes as u64);
        self.staged_bytes += batch_bytes;
        self.staged_batches.push(batch);
        self.staged.push(StagedAppend {
            client,
            request_id,
            ack,
            accepted: Instant::now(),
        });
        Ok(())
    }

    /// Proposes the round's staged appends as one entry and registers their acknowledgements
    /// (or answers them all with the reason the entry was refused).
    pub fn propose_staged(
        &mut self,
        net: &mut Net,
        replica: &mut Replica,
    ) -> Result<(), FatalError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.staged_batches);
        let staged = std::mem::take(&mut self.staged);
        self.staged_bytes = 0;
        self.metrics.entry_batches.record(batches.len() as u64);
        let proposed = match replica.propose_run(batches) {
            Ok(p) => p,
            Err(ProposalError::Fatal(e)) => return Err(e),
            Err(ProposalError::Empty) => unreachable!("empty batches are refused when staged"),
            Err(ProposalError::Refused(refused)) => {
                let error = match refused {
                    ProposeError::NotLeader { leader } => self.not_leader(leader),
                    ProposeError::TooLarge { limit, .. } => {
                        ClientError::TooLarge { limit_bytes: limit }
                    }
                    ProposeError::Busy { .. } | ProposeError::DiskBacklog { .. } => {
                        ClientError::Busy
                    }
                    ProposeError::Transferring { to } => self.not_leader(Some(to)),
                };
                for s in &staged {
                    self.error(net, s.client, s.request_id, error.clone());
                }
                return Ok(());
            }
        };
        for (place, (s, proposed)) in staged.into_iter().zip(proposed).enumerate() {
            let pending = PendingAppend {
                client: s.client,
                request_id: s.request_id,
                term: proposed.term,
                base_offset: proposed.base_offset,
                last_offset: proposed.last_offset,
                accepted: s.accepted,
            };
            let key = (proposed.index, place);
            match s.ack {
                AckMode::None => self.acknowledge(net, &pending),
                AckMode::Leader => {
                    self.awaiting_durable.insert(key, pending);
                }
                AckMode::Quorum => {
                    self.awaiting_commit.insert(key, pending);
                }
            }
        }
        Ok(())
    }

    fn acknowledge(&self, net: &mut Net, p: &PendingAppend) {
        let response = Response::Appended {
            request_id: p.request_id,
            base_offset: p.base_offset,
            last_offset: p.last_offset,
        };
        self.respond(net, p.client, &response);
    }

    /// Answers the appends decided by newly committed entries.
    pub fn on_committed(&mut self, net: &mut Net, committed: &[Committed], leader: Option<u64>) {
        for c in committed {
            // Entries at or below a committed index are decided: this one won or lost.
            while let Some((index, p)) = pop_first_at_most(&mut self.awaiting_commit, c.index) {
                if index == c.index && p.term == c.term {
                    self.metrics
                        .append_commit_us
                        .record(p.accepted.elapsed().as_micros() as u64);
                    self.acknowledge(net, &p);
                } else {
                    self.error(net, p.client, p.request_id, self.not_leader(leader));
                }
            }
        }
    }

    /// Answers `Leader`-mode appends now durable here (`term_at` tells whether the entry at an
    /// index is still the proposed one).
    pub fn on_durable(
        &mut self,
        net: &mut Net,
        durable_index: Index,
        term_at: impl Fn(Index) -> Option<Term>,
        leader: Option<u64>,
    ) {
        while let Some((index, p)) = pop_first_at_most(&mut self.awaiting_durable, durable_index) {
            if term_at(index) == Some(p.term) {
                self.acknowledge(net, &p);
            } else {
                self.error(net, p.client, p.request_id, self.not_leader(leader));
            }
        }
    }

    /// Answers `Timeout` to appends older than the limit (they may still commit).
    pub fn expire(&mut self, net: &mut Net, now: Instant) {
        for map in [&mut self.awaiting_commit, &mut self.awaiting_durable] {
            let expired: Vec<PendingKey> = map
                .iter()
                .filter(|(_, p)| now.duration_since(p.accepted) >= self.cfg.append_timeout)
                .map(|(&i, _)| i)
                .collect();
            let answers: Vec<PendingAppend> =
                expired.iter().filter_map(|i| map.remove(i)).collect();
            for p in answers {
                let response = Response::Error {
                    request_id: p.request_id,
                    error: ClientError::Timeout,
                };
                let mut frame = Vec::new();
                if encode_response(&mut frame, self.cfg.cluster_id, self.cfg.node_id, &response)
                    .is_ok()
                {
                    let _ = net.send_client(p.client, frame);
                }
            }
        }
    }

    /// Answers every append still waiting with `Unavailable` (the node is stopping).
    pub fn fail_pending(&mut self, net: &mut Net, why: &str) {
        let all: Vec<(ClientId, u64)> = std::mem::take(&mut self.awaiting_commit)
            .into_values()
            .chain(std::mem::take(&mut self.awaiting_durable).into_values())
            .map(|p| (p.client, p.request_id))
            .chain(self.staged.drain(..).map(|s| (s.client, s.request_id)))
            .collect();
        self.staged_batches.clear();
        self.staged_bytes = 0;
        for (client, request_id) in all {
            let error = ClientError::Unavailable {
                why: why.to_string(),
            };
            self.error(net, client, request_id, error);
        }
    }

    /// Starts a subscription: answers `Subscribed` (resolved start, end of committed data now)
    /// before any batch, or `OffsetOutOfRange` when the start is not in the log.
    pub fn subscribe(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        client: ClientId,
        subscription_id: u64,
        from: StartFrom,
        window_bytes: u64,
    ) {
        let log = replica.log();
        let (earliest, end) = (log.start_offset(), log.next_offset());
        let next_offset = match from {
            StartFrom::Earliest => earliest,
            StartFrom::Latest => replica.readable_end_offset(),
            StartFrom::Offset(n) => n,
        };
        if next_offset < earliest || next_offset > end {
            let error = ClientError::OffsetOutOfRange {
                requested: next_offset,
                earliest,
                end,
                snapshot_index: replica.snapshot_index().filter(|_| next_offset < earliest),
            };
            self.error(net, client, subscription_id, error);
            return;
        }
        let max = self.cfg.subscriptions_per_client_max;
        let session = self.clients.entry(client).or_default();
        if session.subscriptions.len() >= max
            && !session.subscriptions.contains_key(&subscription_id)
        {
            let why = format!("at most {max} subscriptions per connection");
            self.error(
                net,
                client,
                subscription_id,
                ClientError::BadRequest { why },
            );
            return;
        }
        session.subscriptions.insert(
            subscription_id,
            Subscription {
                next_offset,
                credit_bytes: window_bytes,
            },
        );
        let subscribed = Response::Subscribed {
            subscription_id,
            start_offset: next_offset,
            end_offset: replica.readable_end_offset(),
        };
        self.respond(net, client, &subscribed);
    }

    /// Adds credit to a subscription (unknown ones are ignored: it may have just failed).
    pub fn credit(&mut self, client: ClientId, subscription_id: u64, bytes: u64) {
        if let Some(sub) = self
            .clients
            .get_mut(&client)
            .and_then(|c| c.subscriptions.get_mut(&subscription_id))
        {
            sub.credit_bytes = sub.credit_bytes.saturating_add(bytes);
        }
    }

    /// The connection can take more: resume its subscriptions.
    pub fn drained(&mut self, client: ClientId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.blocked = false;
        }
    }

    /// Forgets a closed connection (its pending appends still commit; their answers are dropped).
    pub fn closed(&mut self, client: ClientId) {
        self.clients.remove(&client);
    }

    /// Sends committed batches to every subscription that has credit and something new to read.
    pub fn stream(&mut self, net: &mut Net, replica: &Replica) -> Result<(), FatalError> {
        let readable_end = replica.readable_end_offset();
        let (cluster_id, node_id) = (self.cfg.cluster_id, self.cfg.node_id);
        let mut failed: Vec<(ClientId, u64, ClientError)> = Vec::new();
        for (&client, session) in self.clients.iter_mut() {
            if session.blocked {
                continue;
            }
            'subs: for (&sub_id, sub) in session.subscriptions.iter_mut() {
                for _ in 0..STREAM_FRAMES_PER_ROUND {
                    if sub.credit_bytes == 0 || sub.next_offset >= readable_end {
                        break;
                    }
                    let bytes_max = STREAM_FRAME_BYTES_MAX.min(sub.credit_bytes as usize);
                    let read_buf = &mut self.read_buf;
                    let batches =
                        match replica.read_committed_into(sub.next_offset, bytes_max, read_buf) {
                            Ok(b) => b,
                            Err(LogError::BelowStart { start_offset, .. }) => {
                                failed.push((
                                    client,
                                    sub_id,
                                    ClientError::OffsetOutOfRange {
                                        requested: sub.next_offset,
                                        earliest: start_offset,
                                        end: readable_end,
                                        snapshot_index: replica.snapshot_index(),
                                    },
                                ));
                                break;
                            }
                            Err(e) => return Err(FatalError::Log(e)),
                        };
                    let Some((last, _)) = batches.last() else {
                        break;
                    };
                    let next_offset = last.next_offset();
                    // A run goes out as its producers' batches, from the first one the
                    // subscription has not had.
                    let mut slices: Vec<&[u8]> = Vec::with_capacity(batches.len());
                    for (entry_header, range) in &batches {
                        let entry = &read_buf[range.clone()];
                        for inner in entry_batches(entry) {
                            let (h, inner) = inner.map_err(|source| FatalError::BadEntry {
                                index: entry_header.index,
                                source,
                            })?;
                            if h.next_offset() > sub.next_offset {
                                slices.push(&entry[inner]);
                            }
                        }
                    }
                    let sent_bytes: usize = slices.iter().map(|s| s.len()).sum();
                    // Encoded straight into the connection's queue: one copy of the batches.
                    let encode =
                        |b: &mut Vec<u8>| encode_batches(b, cluster_id, node_id, sub_id, &slices);
                    match net.send_client_with(client, encode) {
                        Ok(()) => {
                            sub.credit_bytes = sub.credit_bytes.saturating_sub(sent_bytes as u64);
                            sub.next_offset = next_offset;
                        }
                        Err(SendWithError::Refused(SendError::Full)) => {
                            session.blocked = true;
                            break 'subs;
                        }
                        Err(SendWithError::Refused(_)) => break 'subs,
                        Err(SendWithError::Encode(e)) => {
                            tracing::error!(error = %e, "cannot encode batches");
                            break;
                        }
                    }
                }
            }
        }
        for (client, sub_id, error) in failed {
            if let Some(c) = self.clients.get_mut(&client) {
                c.subscriptions.remove(&sub_id);
            }
            self.error(net, client, sub_id, error);
        }
        Ok(())
    }
}
