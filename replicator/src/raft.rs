//! The Raft state machine: messages, ticks and durability acknowledgements in; a [`Ready`] of
//! things to persist, send and apply out. No I/O, no clock, no randomness of its own.
//!
//! Read top to bottom: construction, the driver API (`tick`, `step`, `propose`, the durability
//! acknowledgements, `ready`), the role transitions, then one step function per role.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use rand::RngCore;

use crate::config::{Config, ConfigError, Mutation};
use crate::membership::{ConfigHistory, MembershipChange, MembershipError};
use crate::message::{
    AppendReject, Entry, EntryKind, HardState, Index, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};
use crate::progress::{Progress, ProgressState};
use crate::raft_log::RaftLog;
use crate::refusal::{Refusal, RefusalReason, REFUSALS_PENDING_MAX, TERM_JUMP_MAX, TERM_MAX};
use crate::storage::{Storage, StorageError};

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows the leader of its term, if it knows one.
    Follower,
    /// Asking whether it could win an election, without bumping its term.
    PreCandidate,
    /// Campaigning in its term, having voted for itself.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Why a proposal was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts proposals; `leader` is its best guess of who is.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The payload exceeds `entry_bytes_max`.
    #[error("entry of {bytes} bytes exceeds the limit of {limit}")]
    TooLarge { bytes: u64, limit: u64 },
    /// Too many entries await commit; retry once some commit.
    #[error("{uncommitted} entries await commit (limit {limit})")]
    Busy { uncommitted: u64, limit: u64 },
    /// Leadership is being handed to `to`; retry with the new leader.
    #[error("leadership is being transferred to node {to}")]
    Transferring { to: NodeId },
    /// Too many entry bytes wait for the local disk; retry once some are durable.
    #[error("{bytes} entry bytes await the disk (limit {limit})")]
    DiskBacklog { bytes: u64, limit: u64 },
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The storage could not be read.
    #[error("reading the log at start-up: {0}")]
    Storage(#[from] StorageError),
    /// The applied index lies outside what the log and its snapshot cover.
    #[error("applied index {applied} outside [{snapshot_index}, {last_index}] (snapshot end, last entry)")]
    Applied {
        applied: Index,
        snapshot_index: Index,
        last_index: Index,
    },
}

/// Why a ReadIndex request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    /// Only the leader serves ReadIndex.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// A new leader's commit index is only known current once it committed in its term.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    NotYetCommittedInTerm,
    /// Too many reads await confirmation.
    #[error("{pending} reads await confirmation (limit {limit})")]
    Busy { pending: usize, limit: usize },
}

/// A confirmed linearizable read: serve request `ctx` once the state machine applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    /// The caller's request id.
    pub ctx: u64,
    /// Commit index at request time; reads must see at least this much applied.
    pub index: Index,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingRead {
    ctx: u64,
    seq: u64,
    index: Index,
    acks: BTreeSet<NodeId>,
}

/// Why a leadership transfer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransferError {
    /// Only the leader can hand over leadership.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The target is not a voter of this cluster (or is this node).
    #[error("node {0} is not another voter")]
    NotAVoter(NodeId),
}

/// Everything the driver must do, handed out by [`Raft::ready`].
///
/// Persist `hard_state` and `entries` in order (entries replace any stored entries at or after
/// `entries[0].index`), then report durability with [`Raft::hard_state_durable`] and
/// [`Raft::log_durable`]. `messages` may be sent at once: the core holds back any message whose
/// safety depends on state not yet durable. Apply `committed` in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// New hard state to persist atomically.
    pub hard_state: Option<HardState>,
    /// Entries to write, in index order.
    pub entries: Vec<Entry>,
    /// Messages safe to send now.
    pub messages: Vec<Message>,
    /// Newly committed entries, durable locally, to apply in order.
    pub committed: Vec<Entry>,
    /// ReadIndex requests confirmed by a quorum.
    pub read_states: Vec<ReadState>,
    /// Chunks of a snapshot the leader is sending us, in order, to write. A chunk at offset 0
    /// starts a new snapshot (discard any partial one). After the chunk marked `done`, install
    /// it durably — snapshot data first, then restart the log after `meta.index` — and call
    /// [`Raft::snapshot_installed`].
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Peer messages dropped since the last `Ready` because no correct peer could have sent
    /// them (see [`crate::refusal`]): close that peer's connection with the reason and count
    /// it. At most [`REFUSALS_PENDING_MAX`] per `Ready`; [`Raft::refused_total`] counts all.
    /// Nothing else needs doing: the core already ignored the message.
    pub refused: Vec<Refusal>,
    /// The log given to [`Raft::set_repair_through`] is repaired: this node votes and campaigns
    /// again. Clear the persisted `repair_through` (a crash before that only keeps the node
    /// mute a little longer).
    pub repaired: bool,
}

/// A piece of an incoming snapshot for the driver to write.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotChunk {
    /// The snapshot it belongs to.
    pub meta: SnapshotMeta,
    /// Where `data` goes in the snapshot.
    pub offset: u64,
    /// The bytes.
    pub data: Arc<[u8]>,
    /// The last chunk: the snapshot is complete.
    pub done: bool,
}

/// A snapshot arriving from the leader, on a follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct IncomingSnapshot {
    meta: SnapshotMeta,
    from: NodeId,
    /// The term of the leader sending it: another leader's copy of the same snapshot need not
    /// have the same bytes, so its offset 0 starts the transfer again.
    term: Term,
    /// Bytes handed to the driver so far.
    received: u64,
    /// Every chunk arrived: the driver is installing it; the log must not change meanwhile.
    complete: bool,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.refused.is_empty()
            && !self.repaired
    }
}

/// A message waiting until the local state it reports is durable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Gated {
    msg: Message,
    /// Must be the durable hard state before sending.
    hard_state: Option<HardState>,
    /// `(index, term)` that must be durable before sending.
    log: Option<(Index, Term)>,
}

enum GateStatus {
    Send,
    Wait,
    Drop,
}

/// Outcome of counting votes.
enum Poll {
    Won,
    Lost,
    Pending,
}

/// One Raft node's consensus state, reading its durable log through `S`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Raft<S> {
    cfg: Config,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog<S>,
    /// The first storage failure seen; the driver must stop the node (see `storage_failure`).
    storage_failure: Option<StorageError>,
    /// The configurations in force along the log.
    configs: ConfigHistory,
    /// Follower only: the snapshot being received or installed.
    incoming: Option<IncomingSnapshot>,
    snapshot_chunks: Vec<SnapshotChunk>,
    commit: Index,
    applied: Index,
    election_elapsed: u32,
    /// Drawn from the driver's RNG at the next tick after each reset.
    election_timeout: Option<u32>,
    heartbeat_elapsed: u32,
    /// Leader only: the follower leadership is being handed to (no proposals meanwhile).
    transfer_to: Option<NodeId>,
    /// Leader only: ReadIndex requests awaiting a quorum of heartbeat responses, oldest first.
    reads: VecDeque<PendingRead>,
    /// Sequence number of the latest heartbeat round or ReadIndex request (carried by
    /// heartbeats, echoed by their responses).
    read_seq: u64,
    /// Ticks since this node started (the lease clock).
    ticks: u64,
    /// Leader only: `(first read_seq sent in that tick, tick)` of recent heartbeat rounds, for
    /// lease reads; rounds older than the lease are dropped.
    rounds: VecDeque<(u64, u64)>,
    /// Leader only: per peer, the highest heartbeat round it acknowledged.
    lease_acks: BTreeMap<NodeId, u64>,
    /// Leader only: a TimeoutNow went out this term; the target may campaign through the
    /// followers' stickiness, so no lease holds any more.
    lease_revoked: bool,
    /// Refuse votes for an election timeout after start: this node may have acknowledged a
    /// leader's heartbeat just before it crashed (lease reads count on that).
    quiet_after_start: bool,
    read_states: Vec<ReadState>,
    votes: BTreeMap<NodeId, bool>,
    progress: BTreeMap<NodeId, Progress>,
    hard_state_durable: HardState,
    hard_state_handed_out: HardState,
    outbox: Vec<Message>,
    gated: VecDeque<Gated>,
    /// Leader with `batch_appends`: what the next `ready()` broadcasts (see [`Config`]).
    broadcast_due: BroadcastDue,
    /// Peer messages refused since the last `ready()` (bounded).
    refused: Vec<Refusal>,
    /// Peer messages refused since start.
    refused_total: u64,
    /// Why the message being stepped was refused (see [`Raft::step`]).
    last_refusal: Option<RefusalReason>,
    /// Suspect mode (see [`Raft::set_repair_through`]): this node lost durable entries through
    /// at most this index and may not vote or campaign until its log is repaired.
    repair_through: Option<Index>,
    /// The term when suspect mode began: acknowledgements the lost entries got were sent in it
    /// or earlier.
    repair_term: Term,
    /// Follower: our log is known to match the current leader's through this index (entries
    /// it sent us in this term, or a snapshot of it). Reset with the term or leader.
    leader_match: Index,
    /// The driver's log writes make no progress (see [`Raft::set_write_stalled`]): no
    /// campaign, TimeoutNow ignored.
    write_stalled: bool,
}

/// A leader's broadcast deferred to the next `ready()` (`Config::batch_appends`); ordered by
/// what it covers (a commit broadcast also carries new entries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum BroadcastDue {
    /// Nothing deferred.
    #[default]
    Nothing,
    /// New entries: send what each follower's window allows.
    Entries,
    /// The commit index advanced: every follower hears of it, with or without new entries.
    Commit,
}

impl<S: Storage> Raft<S> {
    /// A node starting from its durable state: the hard state, the index its state machine has
    /// applied (at least the end of the snapshot the log continues; entries after it are handed
    /// out again as `committed` once known committed) and the log in `storage` (all durable).
    /// A fresh node passes `HardState::default()`, 0 and an empty storage.
    pub fn new(
        cfg: Config,
        hard_state: HardState,
        applied: Index,
        storage: S,
    ) -> Result<Self, InitError> {
        cfg.validate()?;
        let quiet_after_start = cfg.lease_read;
        let snapshot_index = storage.first_index() - 1;
        // The configuration: the snapshot's, or the bootstrap voters, then any configuration
        // entries after it.
        let (base, scan_from) = match storage.snapshot_meta() {
            Some(meta) => (meta.membership, meta.index + 1),
            None => {
                let bootstrap = Membership {
                    voters: cfg.voters.clone(),
                    learners: Vec::new(),
                    addresses: cfg.addresses.clone(),
                };
                (bootstrap, 1)
            }
        };
        let mut configs = ConfigHistory::new(base);
        for e in storage.config_entries(scan_from)? {
            let membership = Membership::decode(&e.payload).ok_or(StorageError::Failed(
                format!("configuration entry {} does not decode", e.index),
            ))?;
            configs.appended(e.index, membership);
        }
        configs.applied_to(applied);
        let log = RaftLog::new(storage, cfg.log_cache_bytes_max)?;
        if applied < snapshot_index || applied > log.last_index() {
            return Err(InitError::Applied {
                applied,
                snapshot_index,
                last_index: log.last_index(),
            });
        }
        // The entries' write may have become durable without the hard state's: nothing was sent
        // in a term whose hard state was not durable, so adopting the log's term without a vote
        // is safe.
        let (term, vote) = if log.last_term() > hard_state.term {
            (log.last_term(), None)
        } else {
            (hard_state.term, hard_state.vote)
        };
        if term >= TERM_MAX {
            // Written by a core that trusted a forged term: peers refuse every message of it,
            // so this node can never lead or vote again; only an operator can repair it.
            tracing::error!(
                node = cfg.id,
                term,
                "durable term at or beyond TERM_MAX: this node cannot campaign"
            );
        }
        Ok(Raft {
            cfg,
            term,
            vote,
            role: Role::Follower,
            leader: None,
            log,
            storage_failure: None,
            configs,
            incoming: None,
            snapshot_chunks: Vec::new(),
            // What was applied was committed.
            commit: applied,
            applied,
            election_elapsed: 0,
            election_timeout: None,
            heartbeat_elapsed: 0,
            transfer_to: None,
            reads: VecDeque::new(),
            read_seq: 0,
            ticks: 0,
            rounds: VecDeque::new(),
            lease_acks: BTreeMap::new(),
            lease_revoked: false,
            quiet_after_start,
            read_states: Vec::new(),
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            hard_state_durable: hard_state,
            hard_state_handed_out: hard_state,
            outbox: Vec::new(),
            gated: VecDeque::new(),
            broadcast_due: BroadcastDue::Nothing,
            refused: Vec::new(),
            refused_total: 0,
            last_refusal: None,
            repair_through: None,
            write_stalled: false,
            repair_term: 0,
            leader_match: 0,
        })
    }

    // ---- read access -------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// The configuration the node runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Current term and vote.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
        }
    }
    /// Highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.commit
    }
    /// Highest index handed out for applying.
    pub fn applied_index(&self) -> Index {
        self.applied
    }
    /// Highest index of the local log known durable.
    pub fn durable_index(&self) -> Index {
        self.log.durable_index()
    }
    /// Last index of the local log (durable or not).
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    /// The index the next proposal gets if accepted (`last_index() + 1`); with [`Raft::term`]
    /// what a driver stamps into the payload before [`Raft::propose`].
    pub fn next_index(&self) -> Index {
        self.log.last_index() + 1
    }
    /// Term of the entry at `index`, if the log holds it (index 0 has term 0; the end of the
    /// compacted prefix has its snapshot's term).
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.log.term(index).ok()
    }
    /// The entry at `index`, if the log holds it (from memory or storage).
    pub fn entry(&self, index: Index) -> Option<Entry> {
        self.log.entry(index).ok()
    }
    /// The entry at `index` if the core holds it in memory (every entry not yet durable, and
    /// recent durable ones); `None` where only storage has it. Unlike [`Raft::entry`] this never
    /// reads storage, and it sees entries the driver has not been handed yet.
    pub fn entry_in_memory(&self, index: Index) -> Option<&Entry> {
        self.log.entry_in_memory(index)
    }
    /// Entry bytes held only in memory because they are not durable yet.
    pub fn unstable_bytes(&self) -> u64 {
        self.log.unstable_bytes()
    }
    /// Durable entry bytes cached in memory (bounded by `Config::log_cache_bytes_max`).
    pub fn cached_bytes(&self) -> u64 {
        self.log.cached_bytes()
    }
    /// The storage the core reads its durable log from.
    pub fn storage(&self) -> &S {
        self.log.storage()
    }
    /// The storage, for a driver that writes through it (the simulator does).
    pub fn storage_mut(&mut self) -> &mut S {
        self.log.storage_mut()
    }
    /// Stops the node and gives its storage back.
    pub fn into_storage(self) -> S {
        self.log.into_storage()
    }
    /// The first storage read that failed, if any: the node must stop (restart it from its
    /// durable state once the storage is repaired). The core keeps running but sends nothing
    /// that depends on the failed read, as if that message had been lost.
    pub fn storage_failure(&self) -> Option<&StorageError> {
        self.storage_failure.as_ref()
    }
    /// The configuration in force (that of the last configuration entry in the log).
    pub fn membership(&self) -> &Membership {
        self.configs.current()
    }
    /// The configuration as of the applied index: what a snapshot taken at
    /// [`Raft::applied_index`] must record.
    pub fn applied_membership(&self) -> &Membership {
        self.configs.applied()
    }
    /// True when this node votes in the configuration in force.
    pub fn is_voter(&self) -> bool {
        self.configs.current().is_voter(self.cfg.id)
    }
    /// The leader's view of `peer`, when leading.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }
    /// The index given to [`Raft::set_repair_through`] while the repair is pending.
    pub fn repair_through(&self) -> Option<Index> {
        self.repair_through
    }
    /// Peer messages refused since start (each also reported once in [`Ready::refused`],
    /// unless more than [`REFUSALS_PENDING_MAX`] piled up between two `ready()` calls).
    pub fn refused_total(&self) -> u64 {
        self.refused_total
    }

    // ---- driver API --------------------------------------------------------------------

    /// Suspect mode: the node's log lost entries that were durable through `index` (a damaged
    /// tail cut at recovery; see `log/FORMAT.md`), and it may have acknowledged them. Until the
    /// log is repaired from a leader the node grants no pre-vote and no vote, does not campaign
    /// and ignores TimeoutNow; it follows a leader as usual, and its rejections ask the leader
    /// to resend what it lost ([`AppendReject::log_lost`]). Repaired once its durable log
    /// matches the leader of the current term through the commit index, whose entry is of that
    /// term, and — in the term it started suspect in — also through `index` (see
    /// replicator/DRIVER.md, "Suspect mode"); then [`Ready::repaired`] is set. The driver
    /// persists `index` before calling this (right after [`Raft::new`], before any other
    /// call), so a crash before the repair keeps the node mute; a second call keeps the higher
    /// index.
    pub fn set_repair_through(&mut self, index: Index) {
        tracing::warn!(
            node = self.cfg.id,
            index,
            "log lost durable entries: not voting or campaigning until repaired from a leader"
        );
        self.repair_through = Some(self.repair_through.map_or(index, |i| i.max(index)));
        self.repair_term = self.term;
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// The driver's log writes make no progress (a stalled or far too slow disk: its own
    /// clock's judgement, the core has none) or do again. While stalled the node does not
    /// campaign (an election timeout only forgets the leader) and ignores TimeoutNow, so it
    /// never takes leadership it could not exercise; it still follows a leader and votes (a
    /// vote waits for the hard state's own fdatasync, which the gate enforces as always). A
    /// leader keeps leading: handing over is the driver's call ([`Raft::transfer_leadership`],
    /// else [`Raft::step_down`]).
    pub fn set_write_stalled(&mut self, stalled: bool) {
        self.write_stalled = stalled;
    }

    /// Whether the driver said its log writes are stalled.
    pub fn write_stalled(&self) -> bool {
        self.write_stalled
    }

    /// A leader gives up leadership in its term (its disk cannot keep up and no follower could
    /// take over by transfer): it becomes a follower knowing no leader, and the others elect
    /// one once their election timeout passes. No-op unless leading.
    pub fn step_down(&mut self) {
        if self.role == Role::Leader {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// Advances logical time by one tick. `rng` is the driver's seeded generator; it is used
    /// only to draw the randomized election timeout.
    pub fn tick(&mut self, rng: &mut dyn RngCore) {
        if self.election_timeout.is_none() {
            let span = self.cfg.election_ticks_max - self.cfg.election_ticks_min;
            self.election_timeout = Some(self.cfg.election_ticks_min + rng.next_u32() % span);
        }
        self.election_elapsed += 1;
        self.ticks += 1;
        if self.election_elapsed >= self.cfg.election_ticks_min {
            self.quiet_after_start = false;
        }
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.election_elapsed >= self.election_timeout.expect("drawn above") {
            if self.repair_through.is_some() || self.write_stalled {
                // Suspect, or a stalled disk: stay a follower; the timeout only forgets the
                // leader's lease.
                self.election_elapsed = 0;
                self.election_timeout = None;
                if self.write_stalled {
                    // And the leader itself, so that this node grants its vote to the
                    // candidates that replace it (a known leader would keep it in its lease).
                    self.leader = None;
                }
                return;
            }
            self.campaign();
        } else if self.role == Role::PreCandidate
            && self.election_elapsed % self.cfg.heartbeat_ticks == 0
        {
            self.repeat_pre_vote();
        }
    }

    /// Starts an election now, as if the election timeout had fired (not while a snapshot is
    /// being installed: the log is about to be replaced).
    pub fn campaign(&mut self) {
        if self.role == Role::Leader
            || self.installing_snapshot()
            || !self.is_voter()
            || self.repair_through.is_some()
            || self.write_stalled
        {
            return;
        }
        if self.next_term().is_none() {
            // Peers would refuse the next term (see `TERM_MAX`); wait a whole timeout again.
            self.election_elapsed = 0;
            return;
        }
        if self.cfg.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Hands leadership to `to` (thesis §3.10): once `to` holds the whole log durably it is told
    /// to campaign at once. Proposals are refused meanwhile; the attempt is abandoned after an
    /// election timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id || !self.configs.current().is_voter(to) {
            return Err(TransferError::NotAVoter(to));
        }
        self.transfer_to = Some(to);
        self.election_elapsed = 0;
        if self.progress[&to].match_index == self.log.last_index() {
            self.lease_revoked = true;
            self.send(to, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }

    /// Requests a linearizable read (ReadIndex, thesis §6.4): once a quorum confirms this node
    /// still leads, `ready()` returns a [`ReadState`] with `ctx` and the commit index to await.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ReadError> {
        if self.role != Role::Leader {
            return Err(ReadError::NotLeader {
                leader: self.leader,
            });
        }
        if self.log.term(self.commit).ok() != Some(self.term) {
            return Err(ReadError::NotYetCommittedInTerm);
        }
        if self.lease_holds() {
            self.read_states.push(ReadState {
                ctx,
                index: self.commit,
            });
            return Ok(());
        }
        if self.reads.len() >= self.cfg.reads_pending_max {
            let (pending, limit) = (self.reads.len(), self.cfg.reads_pending_max);
            return Err(ReadError::Busy { pending, limit });
        }
        self.read_seq += 1;
        let read = PendingRead {
            ctx,
            seq: self.read_seq,
            index: self.commit,
            acks: BTreeSet::new(),
        };
        self.reads.push_back(read);
        self.release_reads();
        self.broadcast_heartbeat();
        Ok(())
    }

    /// True when this leader may serve a read from its lease: a quorum acknowledged a heartbeat
    /// round sent less than [`Config::lease_ticks`] ticks ago, no transfer was started this
    /// term and no configuration change is pending.
    pub fn lease_holds(&self) -> bool {
        if !self.cfg.lease_read
            || self.role != Role::Leader
            || self.lease_revoked
            || self.transfer_to.is_some()
            || self.configs.last_index().is_some_and(|i| i > self.commit)
        {
            return false;
        }
        if self.cfg.mutation == Mutation::LeaseWithoutQuorum {
            let sent = self.rounds.back().map_or(0, |&(_, tick)| tick);
            return sent > 0 && self.ticks - sent < self.cfg.lease_ticks();
        }
        // Per voter: when its lease started, in our ticks.
        let start = self.quorum_value(|v| {
            if v == self.cfg.id {
                return self.ticks;
            }
            let Some(&seq) = self.lease_acks.get(&v) else {
                return 0;
            };
            // The round's send tick: that of the latest round starting at or before it.
            self.rounds
                .iter()
                .rev()
                .find(|&&(first, _)| first <= seq)
                .map_or(0, |&(_, sent)| sent)
        });
        let Some(start) = start else {
            return false;
        };
        start > 0 && self.ticks - start < self.cfg.lease_ticks()
    }

    /// Index of a configuration entry not committed yet, if any (the change under way).
    pub fn pending_config_index(&self) -> Option<Index> {
        self.configs.last_index().filter(|&i| i > self.commit)
    }

    /// The follower leadership is being handed to, if a transfer is under way.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_to
    }

    /// Appends a client command; returns the `(term, index)` it will commit at, if it commits
    /// (always `(self.term(), self.next_index())` as they were before the call).
    pub fn propose(&mut self, payload: Arc<[u8]>) -> Result<(Term, Index), ProposeError> {
        self.check_proposal(payload.len() as u64)?;
        let index = self.append_as_leader(EntryKind::Command, payload);
        if self.cfg.batch_appends {
            self.broadcast_due = self.broadcast_due.max(BroadcastDue::Entries);
        } else {
            self.broadcast_append(false);
        }
        Ok((self.term, index))
    }

    /// Proposes one membership change (thesis §4.1): refused while an earlier change is
    /// uncommitted or before this leader committed an entry of its term. The new configuration
    /// is in force as soon as it is appended; a leader that removed itself steps down once the
    /// change commits. Returns the configuration entry's `(term, index)`.
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(Term, Index), MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.transfer_to {
            return Err(MembershipError::Transferring { to });
        }
        if self.log.term(self.commit).ok() != Some(self.term) {
            return Err(MembershipError::NotYetCommittedInTerm);
        }
        if let Some(index) = self.pending_config_index() {
            return Err(MembershipError::ChangePending { index });
        }
        if let MembershipChange::PromoteLearner(id) = change {
            let match_index = self.progress.get(&id).map_or(0, |p| p.match_index);
            if match_index < self.commit {
                let commit = self.commit;
                return Err(MembershipError::LearnerBehind {
                    id,
                    match_index,
                    commit,
                });
            }
        }
        let next = self.configs.current().apply(&change)?;
        let index = self.append_as_leader(EntryKind::Config, Arc::from(next.encode()));
        self.broadcast_append(false);
        Ok((self.term, index))
    }

    /// Whether a proposal of `payload_bytes` would be accepted now, and the `(term, index)` it
    /// would get: a driver that stamps term and index into the payload asks first.
    pub fn check_proposal(&self, payload_bytes: u64) -> Result<(Term, Index), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(to) = self.transfer_to {
            return Err(ProposeError::Transferring { to });
        }
        if payload_bytes > self.cfg.entry_bytes_max {
            return Err(ProposeError::TooLarge {
                bytes: payload_bytes,
                limit: self.cfg.entry_bytes_max,
            });
        }
        let uncommitted = self.log.last_index() - self.commit;
        if uncommitted >= self.cfg.uncommitted_entries_max {
            return Err(ProposeError::Busy {
                uncommitted,
                limit: self.cfg.uncommitted_entries_max,
            });
        }
        if self.log.unstable_bytes() >= self.cfg.unstable_bytes_max {
            return Err(ProposeError::DiskBacklog {
                bytes: self.log.unstable_bytes(),
                limit: self.cfg.unstable_bytes_max,
            });
        }
        Ok((self.term, self.next_index()))
    }

    /// Reports that the snapshot `meta` (whose last chunk `ready` handed out) is installed
    /// durably and the storage's log restarted after `meta.index`. The state machine must now be
    /// the snapshot's: committed entries resume at `meta.index + 1`.
    pub fn snapshot_installed(&mut self, meta: &SnapshotMeta) {
        let Some(inc) = self
            .incoming
            .take_if(|inc| inc.complete && inc.meta == *meta)
        else {
            tracing::warn!(
                node = self.cfg.id,
                index = meta.index,
                "install of a snapshot not received ignored"
            );
            return;
        };
        self.log.restore(meta);
        self.configs.restored(meta.membership.clone());
        // The snapshot ends beyond our commit index (stale ones are never installed), so this
        // only moves forward — unless the stale-snapshot mutation rolls it back.
        self.commit = meta.index;
        self.applied = meta.index;
        if inc.term == self.term && self.leader == Some(inc.from) {
            self.leader_match = meta.index;
        }
        self.send(
            inc.from,
            MessageBody::AppendEntriesResponse {
                result: Ok(meta.index),
            },
        );
    }

    /// True while a received snapshot is being installed by the driver.
    pub fn installing_snapshot(&self) -> bool {
        self.incoming.as_ref().is_some_and(|inc| inc.complete)
    }

    /// Reports that `hard_state` (handed out earlier by `ready`) is durable.
    pub fn hard_state_durable(&mut self, hard_state: HardState) {
        assert!(
            hard_state.term <= self.term,
            "durable hard state from the future"
        );
        if hard_state.term > self.hard_state_durable.term
            || (hard_state.term == self.hard_state_durable.term && hard_state.vote.is_some())
        {
            self.hard_state_durable = hard_state;
        }
        self.release_gated();
    }

    /// Reports that the log is durable through `index`, whose entry had `term` when written.
    /// Acknowledgements of writes since overwritten are recognised by the term and ignored.
    pub fn log_durable(&mut self, index: Index, term: Term) {
        if self.log.durable_to(index, term) && self.role == Role::Leader {
            self.maybe_commit();
        }
        self.release_gated();
    }

    /// Hands out everything to do since the last call.
    pub fn ready(&mut self) -> Ready {
        match std::mem::take(&mut self.broadcast_due) {
            BroadcastDue::Nothing => {}
            BroadcastDue::Entries => self.broadcast_append(false),
            BroadcastDue::Commit => self.broadcast_append(true),
        }
        let mut rd = Ready::default();
        if let Some(through) = self.repair_through.filter(|&i| self.log_repaired(i)) {
            tracing::info!(
                node = self.cfg.id,
                repair_through = through,
                commit = self.commit,
                "log repaired from the leader: voting again"
            );
            self.repair_through = None;
            rd.repaired = true;
            // Whatever this node voted in this term before it lost its state (a lost hard
            // state, DRIVER.md "Suspect mode"), it now backs this term's leader: no other
            // candidate of this term gets its vote.
            if self.vote.is_none() {
                self.vote = self.leader;
            }
        }
        let hs = self.hard_state();
        if hs != self.hard_state_handed_out {
            rd.hard_state = Some(hs);
            self.hard_state_handed_out = hs;
        }
        rd.entries = self.log.take_unpersisted();
        rd.messages = std::mem::take(&mut self.outbox);
        rd.read_states = std::mem::take(&mut self.read_states);
        rd.snapshot_chunks = std::mem::take(&mut self.snapshot_chunks);
        rd.refused = std::mem::take(&mut self.refused);
        let applicable = self.commit.min(self.log.durable_index());
        if applicable > self.applied {
            let from = self.applied + 1;
            match self
                .log
                .entries(from, applicable, self.cfg.committed_bytes_max)
            {
                Ok(committed) => {
                    self.applied = committed.last().expect("at least one").index;
                    let folded = self.configs.applied_to(self.applied);
                    if folded && self.role == Role::Leader {
                        // A removed member's removal is applied: stop replicating to it.
                        self.track_members();
                    }
                    rd.committed = committed;
                }
                Err(e) => self.record_storage_failure(e),
            }
        }
        self.check_invariants();
        rd
    }

    /// Handles a message from a peer. A message no correct peer could have sent is dropped and
    /// reported in [`Ready::refused`] (see [`crate::refusal`]); no peer message panics. Returns
    /// why when this message was refused, so a driver can close the connection it came on.
    pub fn step(&mut self, msg: Message) -> Option<RefusalReason> {
        let refused_before = self.refused_total;
        self.last_refusal = None;
        self.step_message(msg);
        if self.refused_total == refused_before {
            return None;
        }
        self.last_refusal.take()
    }

    fn step_message(&mut self, msg: Message) {
        if self.cfg.mutation == Mutation::TrustPeers {
            // As before the checks existed.
            assert_eq!(msg.to, self.cfg.id, "message delivered to the wrong node");
            if msg.from == self.cfg.id {
                return;
            }
        } else if let Some(reason) = self.check_message(&msg) {
            return self.refuse(&msg, reason);
        }
        // Any sender is heard (the network layer admits only the cluster's nodes): a node
        // added to the configuration must reach nodes that have not seen that entry yet.
        if msg.term > self.term {
            match msg.body {
                MessageBody::PreVote { .. }
                | MessageBody::RequestVote {
                    transfer: false, ..
                } if self.in_lease() => {
                    // A leader was heard from recently: a disruptive candidate is ignored.
                    return;
                }
                // A pre-vote does not move our term; neither does a grant for our own pre-vote.
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            match msg.body {
                // Tell a stale leader (or pre-candidate) about the newer term so it steps down.
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.send(msg.from, MessageBody::HeartbeatResponse { read_seq: 0 });
                }
                MessageBody::PreVote { .. } => {
                    self.send(msg.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }
        match msg.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => self.handle_vote_request(msg.from, msg.term, true, last_index, last_term),
            MessageBody::RequestVote {
                last_index,
                last_term,
                ..
            } => self.handle_vote_request(msg.from, msg.term, false, last_index, last_term),
            _ => match self.role {
                Role::Leader => self.step_leader(msg),
                Role::PreCandidate | Role::Candidate => self.step_candidate(msg),
                Role::Follower => self.step_follower(msg),
            },
        }
    }

    /// What makes `msg` impossible for a correct peer, judged before it may change our term:
    /// addressing, the term bound, and fields that contradict each other.
    fn check_message(&self, msg: &Message) -> Option<RefusalReason> {
        if msg.to != self.cfg.id {
            return Some(RefusalReason::WrongRecipient { to: msg.to });
        }
        if msg.from == 0 || msg.from == self.cfg.id {
            return Some(RefusalReason::InvalidSender);
        }
        if msg.term > TERM_MAX || msg.term > self.term.saturating_add(TERM_JUMP_MAX) {
            return Some(RefusalReason::TermOutOfRange {
                term: msg.term,
                ours: self.term,
            });
        }
        match &msg.body {
            // A candidate's log ends in a term at most its own (a pre-vote proposes term + 1).
            MessageBody::PreVote { last_term, .. } | MessageBody::RequestVote { last_term, .. }
                if *last_term > msg.term =>
            {
                Some(RefusalReason::Malformed(
                    "last log term above the message term",
                ))
            }
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                if *prev_term > msg.term {
                    return Some(RefusalReason::Malformed("prev_term above the message term"));
                }
                // The leader's log: consecutive after prev, terms never decreasing and at most
                // the leader's.
                let mut term = *prev_term;
                for (e, n) in entries.iter().zip(1u64..) {
                    if Some(e.index) != prev_index.checked_add(n) {
                        return Some(RefusalReason::Malformed(
                            "entries not consecutive after prev_index",
                        ));
                    }
                    if e.term < term {
                        return Some(RefusalReason::Malformed("entry terms decrease"));
                    }
                    if e.term > msg.term {
                        return Some(RefusalReason::Malformed(
                            "entry term above the message term",
                        ));
                    }
                    term = e.term;
                }
                None
            }
            MessageBody::InstallSnapshot {
                meta, offset, data, ..
            } => {
                if meta.term > msg.term {
                    Some(RefusalReason::Malformed(
                        "snapshot term above the message term",
                    ))
                } else if offset.checked_add(data.len() as u64).is_none() {
                    Some(RefusalReason::Malformed("snapshot chunk end overflows"))
                } else {
                    None
                }
            }
            // A leader asks only a follower that acknowledged its whole log in its term, which
            // that follower's durable term then reached: no leader of a newer term sends one.
            MessageBody::TimeoutNow if msg.term > self.term => {
                Some(RefusalReason::NotTheLeader { leader: None })
            }
            _ => None,
        }
    }

    /// Drops `msg` and reports it (see [`Ready::refused`]).
    fn refuse(&mut self, msg: &Message, reason: RefusalReason) {
        self.refuse_from(msg.from, msg.term, reason);
    }

    fn refuse_from(&mut self, from: NodeId, term: Term, reason: RefusalReason) {
        tracing::debug!(node = self.cfg.id, from, term, %reason, "peer message refused");
        self.refused_total += 1;
        self.last_refusal = Some(reason);
        if self.refused.len() < REFUSALS_PENDING_MAX {
            self.refused.push(Refusal { from, term, reason });
        }
    }

    /// True unless the peer-message checks are switched off (mutation (g)).
    fn guarded(&self) -> bool {
        self.cfg.mutation != Mutation::TrustPeers
    }

    /// The term a campaign would move to, if peers would accept it (at most [`TERM_MAX`]).
    fn next_term(&self) -> Option<Term> {
        self.term.checked_add(1).filter(|&t| t <= TERM_MAX)
    }

    // ---- role transitions --------------------------------------------------------------

    fn reset(&mut self, term: Term) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            // Messages of older terms still waiting for durability would only confuse peers.
            self.gated.retain(|g| g.msg.term >= term);
        }
        self.leader = None;
        self.transfer_to = None;
        // Unconfirmed reads die with the leadership; their callers retry elsewhere.
        self.reads.clear();
        self.rounds.clear();
        self.lease_acks.clear();
        self.lease_revoked = false;
        self.election_elapsed = 0;
        self.election_timeout = None;
        self.heartbeat_elapsed = 0;
        self.votes.clear();
        self.progress.clear();
        self.broadcast_due = BroadcastDue::Nothing;
        self.leader_match = 0;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.term);
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader);
        let Some(next) = self.next_term() else {
            return;
        };
        // Keep term and vote: a failed pre-vote must leave no trace.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        self.broadcast_vote_request(
            next,
            MessageBody::PreVote {
                last_index,
                last_term,
            },
        );
        self.votes.insert(self.cfg.id, true);
        if let Poll::Won = self.poll() {
            self.become_candidate(false);
        }
    }

    /// Asks the voters that have not answered our pre-vote again. A peer still inside its
    /// leader lease ignores a PreVote without answering (check-quorum stickiness); its lease may
    /// end a tick after ours did (tick phases differ), and without a resend the election would
    /// wait for that peer's own timeout or our next one. Safe: a pre-vote changes nothing
    /// durable and a resend is only a duplicate message.
    fn repeat_pre_vote(&mut self) {
        let Some(next) = self.next_term() else {
            return;
        };
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let silent: Vec<NodeId> = self
            .configs
            .current()
            .voters
            .iter()
            .copied()
            .filter(|p| *p != self.cfg.id && !self.votes.contains_key(p))
            .collect();
        for peer in silent {
            let body = MessageBody::PreVote {
                last_index,
                last_term,
            };
            self.send_with_term(peer, next, body);
        }
    }

    fn become_candidate(&mut self, transfer: bool) {
        assert_ne!(self.role, Role::Leader);
        let Some(term) = self.next_term() else {
            return;
        };
        self.reset(term);
        self.role = Role::Candidate;
        self.vote = Some(self.cfg.id);
        self.votes.insert(self.cfg.id, true);
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        // Sent only once the self-vote is durable (see `send`).
        self.broadcast_vote_request(
            term,
            MessageBody::RequestVote {
                last_index,
                last_term,
                transfer,
            },
        );
        if let Poll::Won = self.poll() {
            self.become_leader();
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        assert_eq!(self.vote, Some(self.cfg.id));
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.track_members();
        // Entries of earlier terms commit only together with one of ours (Raft §5.4.2).
        self.append_as_leader(EntryKind::Noop, Arc::from(&[][..]));
        self.broadcast_append(true);
    }

    /// Leader: keeps a progress for exactly the members of the configuration in force.
    /// Replicates to every member of the current configuration and, until its removal is
    /// applied, to a member being removed: it then receives the entry that removes it, which
    /// stops it campaigning (a node outside its configuration never does). Its acknowledgements
    /// count toward no quorum (quorums are the current configuration's).
    fn track_members(&mut self) {
        let mut members: Vec<NodeId> = self.configs.current().members().collect();
        members.extend(self.configs.applied().members());
        members.sort_unstable();
        members.dedup();
        self.progress.retain(|id, _| members.contains(id));
        let last = self.log.last_index();
        for peer in members {
            if peer != self.cfg.id && !self.progress.contains_key(&peer) {
                let pr = Progress::new(
                    last,
                    self.cfg.inflight_msgs_max,
                    self.cfg.inflight_bytes_max,
                );
                self.progress.insert(peer, pr);
            }
        }
    }

    /// The largest value a quorum of voters reaches: the quorum-th largest `value(voter)`.
    fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> Option<u64> {
        let current = self.configs.current();
        let mut values: Vec<u64> = current.voters.iter().map(|&v| value(v)).collect();
        values.sort_unstable_by(|a, b| b.cmp(a));
        values.get(current.quorum().checked_sub(1)?).copied()
    }

    /// Voters (besides this node) for which `f` holds, plus this node if it votes.
    fn count_voters(&self, mut f: impl FnMut(NodeId) -> bool) -> usize {
        let me = self.cfg.id;
        let current = self.configs.current();
        current.voters.iter().filter(|&&v| v != me && f(v)).count()
            + usize::from(current.is_voter(me))
    }

    // ---- shared handlers ---------------------------------------------------------------

    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader.is_some() || self.quiet_after_start)
            && self.election_elapsed < self.cfg.election_ticks_min
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        pre: bool,
        last_index: Index,
        last_term: Term,
    ) {
        let can_vote = if pre {
            // A pre-vote is for a future term; `step` already ignored it if we are in a lease.
            term > self.term
        } else {
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none())
        };
        let up_to_date = self.cfg.mutation == Mutation::SkipUpToDateCheck
            || (last_term, last_index) >= (self.log.last_term(), self.log.last_index());
        // Suspect: our log no longer holds everything we acknowledged, so our "up to date"
        // means nothing; a leader must be elected by a majority without us.
        let granted = can_vote && up_to_date && self.repair_through.is_none();
        if pre {
            let reply_term = if granted { term } else { self.term };
            self.send_with_term(from, reply_term, MessageBody::PreVoteResponse { granted });
            return;
        }
        if granted {
            self.vote = Some(from);
            self.election_elapsed = 0;
        }
        self.send(from, MessageBody::RequestVoteResponse { granted });
    }

    // ---- leader ------------------------------------------------------------------------

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks_min {
            self.election_elapsed = 0;
            // A transfer that has not completed within an election timeout is abandoned.
            self.transfer_to = None;
            if self.cfg.check_quorum {
                let progress = &self.progress;
                let active =
                    self.count_voters(|v| progress.get(&v).is_some_and(|p| p.recent_active));
                if active < self.configs.current().quorum() {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                self.progress
                    .values_mut()
                    .for_each(|p| p.recent_active = false);
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn broadcast_heartbeat(&mut self) {
        // Every round gets its own number, so acknowledgements tell when the lease started.
        self.read_seq += 1;
        if self
            .rounds
            .back()
            .is_none_or(|&(_, tick)| tick < self.ticks)
        {
            self.rounds.push_back((self.read_seq, self.ticks));
        }
        let horizon = self.cfg.lease_ticks();
        while self
            .rounds
            .front()
            .is_some_and(|&(_, tick)| tick + horizon < self.ticks)
        {
            self.rounds.pop_front();
        }
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            let commit = self.commit.min(self.progress[&peer].match_index);
            let read_seq = self.read_seq;
            self.send(peer, MessageBody::Heartbeat { commit, read_seq });
        }
    }

    /// Confirms, oldest first, the reads a quorum (this leader included) has acknowledged.
    fn release_reads(&mut self) {
        let quorum = self.configs.current().quorum();
        while self
            .reads
            .front()
            .is_some_and(|r| self.count_voters(|v| r.acks.contains(&v)) >= quorum)
        {
            let r = self.reads.pop_front().expect("checked");
            self.read_states.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            });
        }
    }

    /// What in a message of our term makes it impossible for a correct follower to have sent
    /// it to this leader.
    fn check_at_leader(&self, msg: &Message) -> Option<RefusalReason> {
        let last_index = self.log.last_index();
        if matches!(
            msg.body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        ) {
            // Only the leader of a term sends these, and that is us.
            return Some(RefusalReason::NotTheLeader {
                leader: Some(self.cfg.id),
            });
        }
        let pr = self.progress.get(&msg.from)?;
        match &msg.body {
            MessageBody::AppendEntriesResponse { result: Ok(index) } => {
                if *index > last_index {
                    Some(RefusalReason::AckBeyondLog {
                        index: *index,
                        last_index,
                    })
                } else if *index > pr.sent_max {
                    Some(RefusalReason::AckBeyondSent {
                        index: *index,
                        sent: pr.sent_max,
                    })
                } else {
                    None
                }
            }
            // A follower rejects a prev_index we sent (at most our last index) and hints at
            // or below it, with a term of its log (at most the message term, ours). One that
            // lost its log rejects a heartbeat's commit instead, which lies beyond our log only
            // if an impostor forged that heartbeat: the answer is still honest (only its hint,
            // the follower's end, lowers a match).
            MessageBody::AppendEntriesResponse { result: Err(r) } => {
                ((r.rejected_prev_index > last_index && !r.log_lost)
                    || r.hint_index > r.rejected_prev_index
                    || r.hint_term.is_some_and(|t| t > msg.term))
                .then_some(RefusalReason::BadRejectHint)
            }
            MessageBody::InstallSnapshotResponse { index, received } => pr
                .snapshot
                .as_ref()
                .filter(|t| t.meta.index == *index)
                .and_then(|t| t.size)
                .filter(|&size| *received > size)
                .map(|size| RefusalReason::SnapshotBeyondEnd {
                    received: *received,
                    size,
                }),
            MessageBody::HeartbeatResponse { read_seq } if *read_seq > self.read_seq => {
                Some(RefusalReason::ReadSeqFromFuture {
                    read_seq: *read_seq,
                    ours: self.read_seq,
                })
            }
            _ => None,
        }
    }

    fn step_leader(&mut self, msg: Message) {
        if self.guarded() {
            if let Some(reason) = self.check_at_leader(&msg) {
                return self.refuse(&msg, reason);
            }
        }
        let from = msg.from;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        match msg.body {
            MessageBody::AppendEntriesResponse { result: Ok(index) } => {
                if pr.acknowledge(index) {
                    let snapshot_done = pr
                        .snapshot
                        .as_ref()
                        .is_some_and(|t| pr.match_index >= t.meta.index);
                    if pr.state == ProgressState::Probe || snapshot_done {
                        pr.become_replicate();
                    }
                    self.maybe_commit();
                    if self.transfer_to == Some(from) && index == self.log.last_index() {
                        self.lease_revoked = true;
                        self.send(from, MessageBody::TimeoutNow);
                    }
                }
                self.send_append(from, false);
            }
            MessageBody::AppendEntriesResponse {
                result: Err(reject),
            } => {
                let last_of_term = match reject.hint_term {
                    Some(t) => match self.log.last_index_of_term(t) {
                        Ok(found) => found,
                        Err(e) => return self.record_storage_failure(e),
                    },
                    None => None,
                };
                let hinted_next = match last_of_term {
                    Some(last_of_term) => last_of_term + 1,
                    None => reject.hint_index,
                };
                let pr = self.progress.get_mut(&from).expect("checked above");
                let hinted_next = hinted_next.max(1);
                let detect_loss = self.cfg.mutation != Mutation::IgnoreLostMatch;
                if (reject.log_lost && pr.lost_log(hinted_next))
                    || pr.reject(reject.rejected_prev_index, hinted_next, detect_loss)
                {
                    self.send_append(from, true);
                }
            }
            MessageBody::InstallSnapshotResponse { index, received } => {
                if let Some(t) = pr.snapshot.as_mut().filter(|t| t.meta.index == index) {
                    t.acknowledge(received);
                    self.send_append(from, false);
                }
            }
            MessageBody::HeartbeatResponse { read_seq } => {
                pr.probe_sent = false;
                if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
                    pr.inflights.free_first();
                }
                if let Some(t) = pr.snapshot.as_mut() {
                    t.heartbeat_answered();
                }
                if pr.match_index < self.log.last_index() {
                    self.send_append(from, true);
                }
                for r in self.reads.iter_mut().take_while(|r| r.seq <= read_seq) {
                    r.acks.insert(from);
                }
                let acked = self.lease_acks.entry(from).or_insert(0);
                *acked = (*acked).max(read_seq);
                self.release_reads();
            }
            _ => {}
        }
    }

    fn append_as_leader(&mut self, kind: EntryKind, payload: Arc<[u8]>) -> Index {
        assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            kind,
            payload,
        };
        self.track_config(&entry);
        self.log.push(entry);
        if kind == EntryKind::Config {
            self.track_members();
        }
        index
    }

    /// A configuration entry is in force as soon as it is in the log.
    fn track_config(&mut self, e: &Entry) {
        if e.kind != EntryKind::Config {
            return;
        }
        match Membership::decode(&e.payload) {
            Some(m) => self.configs.appended(e.index, m),
            None => self.record_storage_failure(StorageError::Failed(format!(
                "configuration entry {} does not decode",
                e.index
            ))),
        }
    }

    fn broadcast_append(&mut self, allow_empty: bool) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, allow_empty);
        }
    }

    /// Sends entries to `to` while its window allows (one message when probing). With
    /// `allow_empty`, sends an empty AppendEntries when there is nothing new, to carry the
    /// commit index or probe the follower's log.
    fn send_append(&mut self, to: NodeId, mut allow_empty: bool) {
        // No progress: not a member, or we stepped down while handling its message.
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        if pr.state == ProgressState::Snapshot {
            return self.send_snapshot_chunks(to);
        }
        loop {
            let pr = &self.progress[&to];
            if pr.is_paused() {
                return;
            }
            let prev_index = pr.next_index - 1;
            let last_index = self.log.last_index();
            let read = self.log.term(prev_index).and_then(|prev_term| {
                let entries =
                    self.log
                        .entries(prev_index + 1, last_index, self.cfg.msg_bytes_max)?;
                Ok((prev_term, entries))
            });
            let (prev_term, entries) = match read {
                Ok(read) => read,
                Err(StorageError::Compacted { .. }) => return self.start_snapshot(to),
                Err(e) => return self.record_storage_failure(e),
            };
            if entries.is_empty() && !allow_empty {
                return;
            }
            allow_empty = false;
            let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
            let last = entries.last().map(|e| e.index);
            let pr = self.progress.get_mut(&to).expect("peer exists");
            if let Some(last) = last {
                pr.sent_max = pr.sent_max.max(last);
            }
            match pr.state {
                ProgressState::Probe => pr.probe_sent = true,
                ProgressState::Replicate => {
                    if let Some(last) = last {
                        pr.next_index = last + 1;
                        pr.inflights.add(last, bytes);
                    }
                }
                ProgressState::Snapshot => unreachable!("handled at the top"),
            }
            let commit = self.commit;
            self.send(
                to,
                MessageBody::AppendEntries {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                },
            );
            if last.is_none() {
                return;
            }
        }
    }

    /// Switches `to` to snapshot state with the latest snapshot: it needs entries we compacted.
    fn start_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.log.storage().snapshot_meta() else {
            let first_index = self.log.storage().first_index();
            let index = self.progress[&to].next_index;
            return self.record_storage_failure(StorageError::Compacted { index, first_index });
        };
        let window_bytes = self.cfg.inflight_bytes_max;
        let pr = self.progress.get_mut(&to).expect("peer exists");
        pr.become_snapshot(meta, window_bytes);
        self.send_snapshot_chunks(to);
    }

    /// Streams snapshot chunks to `to` while its window allows.
    fn send_snapshot_chunks(&mut self, to: NodeId) {
        loop {
            let pr = &self.progress[&to];
            let t = pr.snapshot.as_ref().expect("snapshot state has a transfer");
            if t.is_paused() {
                return;
            }
            let (meta, offset) = (t.meta.clone(), t.sent);
            let chunk =
                self.log
                    .storage()
                    .snapshot_chunk(meta.index, offset, self.cfg.msg_bytes_max);
            let (data, done) = match chunk {
                Ok(chunk) => chunk,
                Err(StorageError::SnapshotUnavailable { .. })
                    if self
                        .log
                        .storage()
                        .snapshot_meta()
                        .is_some_and(|newer| newer.index > meta.index) =>
                {
                    // A newer snapshot replaced it: send that one from the start.
                    return self.start_snapshot(to);
                }
                Err(e) => return self.record_storage_failure(e),
            };
            let pr = self.progress.get_mut(&to).expect("peer exists");
            let t = pr.snapshot.as_mut().expect("snapshot state has a transfer");
            t.sent += data.len() as u64;
            t.all_sent = done;
            if done {
                t.size = Some(t.sent);
            }
            self.send(
                to,
                MessageBody::InstallSnapshot {
                    meta,
                    offset,
                    data,
                    done,
                },
            );
        }
    }

    /// Advances the commit index to the highest index durable on a quorum (the leader counting
    /// its own durable index), provided that entry is of the current term.
    fn maybe_commit(&mut self) {
        let quorum_index = self.quorum_value(|v| {
            if v == self.cfg.id {
                // Our own vote counts only what our disk holds.
                self.log.durable_index()
            } else {
                self.progress.get(&v).map_or(0, |p| p.match_index)
            }
        });
        let Some(quorum_index) = quorum_index else {
            return;
        };
        if quorum_index <= self.commit {
            return;
        }
        let current_term = match self.log.term(quorum_index) {
            Ok(term) => term == self.term,
            Err(e) => return self.record_storage_failure(e),
        };
        if current_term || self.cfg.mutation == Mutation::CommitPreviousTerm {
            self.commit = quorum_index;
            let stepping_down =
                !self.is_voter() && self.configs.last_index().is_none_or(|i| i <= self.commit);
            if self.cfg.batch_appends && !stepping_down {
                self.broadcast_due = BroadcastDue::Commit;
            } else {
                self.broadcast_append(true);
                self.broadcast_due = BroadcastDue::Nothing;
            }
            if stepping_down {
                // Our removal is committed: the others carry on without us (thesis §4.2.2).
                let term = self.term;
                self.become_follower(term, None);
            }
        }
    }

    // ---- candidates --------------------------------------------------------------------

    fn broadcast_vote_request(&mut self, term: Term, body: MessageBody) {
        let peers: Vec<NodeId> = self
            .configs
            .current()
            .voters
            .iter()
            .copied()
            .filter(|&p| p != self.cfg.id)
            .collect();
        for peer in peers {
            self.send_with_term(peer, term, body.clone());
        }
    }

    fn poll(&self) -> Poll {
        let current = self.configs.current();
        let counted = |want: bool| {
            self.votes
                .iter()
                .filter(|&(id, &g)| g == want && current.is_voter(*id))
                .count()
        };
        let (granted, rejected) = (counted(true), counted(false));
        if granted >= current.quorum() {
            Poll::Won
        } else if rejected >= current.quorum() {
            Poll::Lost
        } else {
            Poll::Pending
        }
    }

    fn step_candidate(&mut self, msg: Message) {
        match (self.role, &msg.body) {
            (_, MessageBody::AppendEntries { .. })
            | (_, MessageBody::Heartbeat { .. })
            | (_, MessageBody::InstallSnapshot { .. }) => {
                // A leader exists in our term (or, for a pre-candidate, a later one).
                self.become_follower(msg.term, Some(msg.from));
                self.step_follower(msg);
            }
            (Role::PreCandidate, MessageBody::PreVoteResponse { granted })
                if Some(msg.term) == self.term.checked_add(1) =>
            {
                self.votes.insert(msg.from, *granted);
                match self.poll() {
                    Poll::Won => self.become_candidate(false),
                    Poll::Lost => self.become_follower(self.term, None),
                    Poll::Pending => {}
                }
            }
            (Role::Candidate, MessageBody::RequestVoteResponse { granted }) => {
                self.votes.insert(msg.from, *granted);
                match self.poll() {
                    Poll::Won => self.become_leader(),
                    Poll::Lost => self.become_follower(self.term, None),
                    Poll::Pending => {}
                }
            }
            _ => {}
        }
    }

    // ---- follower ----------------------------------------------------------------------

    fn step_follower(&mut self, msg: Message) {
        if self.guarded() {
            let from_leader = matches!(
                msg.body,
                MessageBody::AppendEntries { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::InstallSnapshot { .. }
                    | MessageBody::TimeoutNow
            );
            if from_leader && self.leader.is_some_and(|l| l != msg.from) {
                // One leader per term (Election Safety): we already follow another one.
                let leader = self.leader;
                return self.refuse(&msg, RefusalReason::NotTheLeader { leader });
            }
            if let MessageBody::Heartbeat { commit, .. } = msg.body {
                // The leader sends at most the match we acknowledged, which we still hold —
                // unless we lost it: a damaged tail cut at restart (suspect), a last synced
                // group lost unnoticed (the residual window), a wiped data directory. Then it
                // is to be told to resend from our end with a `log_lost` rejection, which
                // lowers the match it counts for us (no term hint, which would skip what its
                // term holds); it resends from there, or sends its snapshot. The commit is never
                // taken. A forged heartbeat gains nothing: the answer goes to the node we follow
                // and names our true end, below which no correct leader's match for us lies. A
                // suspect also takes no commit index beyond what it matched with this leader (or
                // already knew committed): entries it holds past that may be ones a lost
                // truncation had voided.
                let last_index = self.log.last_index();
                let vouched = self.leader_match.max(self.commit);
                let lost = commit > last_index && self.cfg.mutation != Mutation::IgnoreLostMatch;
                if lost || (commit > vouched && self.repair_through.is_some()) {
                    self.leader = Some(msg.from);
                    self.election_elapsed = 0;
                    let held = if commit > last_index {
                        last_index
                    } else {
                        vouched
                    };
                    let reject = AppendReject {
                        rejected_prev_index: commit,
                        hint_term: None,
                        hint_index: held + 1,
                        log_lost: true,
                    };
                    let result = Err(reject);
                    self.send(msg.from, MessageBody::AppendEntriesResponse { result });
                    return;
                }
            }
        }
        let (from, term) = (msg.from, msg.term);
        match msg.body {
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                self.handle_append(from, term, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                // At most our last index (answered above otherwise).
                self.commit = self.commit.max(commit.min(self.log.last_index()));
                self.send(from, MessageBody::HeartbeatResponse { read_seq });
            }
            MessageBody::TimeoutNow
                if !self.installing_snapshot()
                    && self.repair_through.is_none()
                    && !self.write_stalled
                    && (self.leader == Some(from) || !self.guarded()) =>
            {
                // The leader hands over: campaign now, skipping pre-vote (the leader agreed).
                // Only the leader we follow in this term can ask (another one was refused
                // above); with no leader known (we restarted since) the request is dropped —
                // a lost TimeoutNow only abandons the transfer.
                self.become_candidate(true);
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.leader = Some(from);
                self.election_elapsed = 0;
                self.handle_snapshot_chunk(from, meta, offset, data, done);
            }
            _ => {}
        }
    }

    /// Takes a snapshot chunk if it is the next one expected, and reports how much we hold.
    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Arc<[u8]>,
        done: bool,
    ) {
        let covered = match self.log.matches(meta.index, meta.term) {
            Ok(holds) => meta.index <= self.commit || holds,
            // Below our own log start: a snapshot of ours already covers it.
            Err(StorageError::Compacted { .. }) => true,
            Err(e) => return self.record_storage_failure(e),
        };
        if covered && self.cfg.mutation != Mutation::InstallStaleSnapshot {
            // Our log already holds its last entry (the leader's view of us lagged, or this is a
            // duplicate): installing would roll back entries after it that we may have
            // acknowledged (Raft §7). Keep the log; the snapshot proves its end is committed.
            if !self.installing_snapshot() {
                self.incoming = None;
            }
            self.commit = self.commit.max(meta.index);
            let at = self.commit;
            // Committed through `at`: the leader's log holds the same entries.
            self.leader_match = self.leader_match.max(at);
            if let Err(e) = self.send_ack(from, at) {
                self.record_storage_failure(e);
            }
            return;
        }
        let term = self.term;
        let same = self
            .incoming
            .as_ref()
            .is_some_and(|inc| inc.meta == meta && inc.term == term);
        if !same && offset == 0 && !self.installing_snapshot() {
            self.incoming = Some(IncomingSnapshot {
                meta: meta.clone(),
                from,
                term,
                received: 0,
                complete: false,
            });
        }
        let received = match self
            .incoming
            .as_mut()
            .filter(|inc| inc.meta == meta && inc.term == term)
        {
            Some(inc) => {
                if !inc.complete && offset == inc.received {
                    inc.received += data.len() as u64;
                    inc.complete = done;
                    inc.from = from;
                    self.snapshot_chunks.push(SnapshotChunk {
                        meta: meta.clone(),
                        offset,
                        data,
                        done,
                    });
                }
                inc.received
            }
            None => 0,
        };
        let index = meta.index;
        self.send(
            from,
            MessageBody::InstallSnapshotResponse { index, received },
        );
    }

    /// Handles an AppendEntries; a failed storage read drops it (as if it had been lost).
    fn handle_append(
        &mut self,
        from: NodeId,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        let result = self.try_handle_append(from, term, prev_index, prev_term, entries, commit);
        if let Err(e) = result {
            self.record_storage_failure(e);
        }
    }

    fn try_handle_append(
        &mut self,
        from: NodeId,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) -> Result<(), StorageError> {
        if self.installing_snapshot() {
            // The log is about to be replaced: drop it, the leader retransmits.
            return Ok(());
        }
        if prev_index < self.commit {
            // Everything up to our commit index already matches; tell the leader so.
            let at = self.commit;
            self.leader_match = self.leader_match.max(at);
            return self.send_ack(from, at);
        }
        if !self.log.matches(prev_index, prev_term)? {
            return self.reject_append(from, prev_index);
        }
        // No overflow: `check_message` refused entries not consecutive after prev_index.
        let last_new = prev_index + entries.len() as Index;
        if let Some(conflict) = self.log.find_conflict(&entries)? {
            if conflict <= self.commit && self.guarded() {
                // Leader Completeness: a leader holds every committed entry. Not one.
                let reason = RefusalReason::OverwritesCommitted {
                    index: conflict,
                    commit: self.commit,
                };
                self.refuse_from(from, term, reason);
                return Ok(());
            }
            assert!(
                conflict > self.commit,
                "a leader tried to overwrite committed entry {conflict}"
            );
            let first = entries[0].index;
            let new = &entries[(conflict - first) as usize..];
            self.log.truncate_and_append(conflict, new)?;
            self.configs.truncated(conflict);
            for e in new {
                self.track_config(e);
            }
        }
        self.commit = self.commit.max(commit.min(last_new));
        self.leader_match = self.leader_match.max(last_new);
        self.send_ack(from, last_new)
    }

    /// Rejects the leader's AppendEntries at `prev_index`, with a hint where our log diverges.
    fn reject_append(&mut self, from: NodeId, prev_index: Index) -> Result<(), StorageError> {
        let probe = prev_index.min(self.log.last_index());
        let (hint_term, hint_index) = if prev_index > self.log.last_index() {
            (None, self.log.last_index() + 1)
        } else {
            (
                Some(self.log.term(probe)?),
                self.log.first_index_of_term_at(probe)?,
            )
        };
        let reject = AppendReject {
            rejected_prev_index: prev_index,
            hint_term,
            hint_index,
            log_lost: self.repair_through.is_some(),
        };
        self.send(
            from,
            MessageBody::AppendEntriesResponse {
                result: Err(reject),
            },
        );
        Ok(())
    }

    /// Suspect mode ends once the durable log provably holds every entry committed with this
    /// node's help (replicator/DRIVER.md, "Suspect mode"): it matches the leader of this term
    /// through the commit index, whose entry is of this term — by Leader Completeness every
    /// entry committed in an earlier term lies below it — and, while still in the term suspect
    /// mode began in (whose leader may have committed lost entries above that commit index),
    /// through `repair_through` too.
    fn log_repaired(&self, repair_through: Index) -> bool {
        if self.role != Role::Follower || self.leader.is_none() {
            return false;
        }
        let commit = self.commit;
        let through = if self.term > self.repair_term {
            commit
        } else {
            commit.max(repair_through)
        };
        self.leader_match >= through
            && self.log.durable_index() >= through
            && self.log.term(commit).ok() == Some(self.term)
    }

    /// Acknowledges a match through `index`: sent once that entry is durable.
    fn send_ack(&mut self, to: NodeId, index: Index) -> Result<(), StorageError> {
        let term = self.log.term(index)?;
        let msg = self.message(
            to,
            self.term,
            MessageBody::AppendEntriesResponse { result: Ok(index) },
        );
        let log = if self.cfg.mutation == Mutation::AckBeforeDurable {
            None
        } else {
            Some((index, term))
        };
        self.enqueue(msg, log);
        Ok(())
    }

    /// Remembers the first storage failure (the driver stops the node on seeing it).
    fn record_storage_failure(&mut self, e: StorageError) {
        tracing::error!(node = self.cfg.id, error = %e, "storage read failed");
        self.storage_failure.get_or_insert(e);
    }

    // ---- output ------------------------------------------------------------------------

    fn message(&self, to: NodeId, term: Term, body: MessageBody) -> Message {
        Message {
            from: self.cfg.id,
            to,
            term,
            body,
        }
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let msg = self.message(to, self.term, body);
        self.enqueue(msg, None);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let msg = self.message(to, term, body);
        self.enqueue(msg, None);
    }

    /// Queues `msg`; it leaves only once the hard state as of now is durable and, if `log` is
    /// given, that entry is durable too.
    fn enqueue(&mut self, msg: Message, log: Option<(Index, Term)>) {
        let hs = self.hard_state();
        let vote_grant = matches!(msg.body, MessageBody::RequestVoteResponse { granted: true });
        let skip_hs = vote_grant && self.cfg.mutation == Mutation::VoteBeforePersist;
        let hard_state = (hs != self.hard_state_durable && !skip_hs).then_some(hs);
        let gated = Gated {
            msg,
            hard_state,
            log,
        };
        match self.gate_status(&gated) {
            GateStatus::Send => self.outbox.push(gated.msg),
            GateStatus::Wait => {
                if self.gated.len() >= self.cfg.gated_msgs_max {
                    self.gated.pop_front();
                }
                self.gated.push_back(gated);
            }
            GateStatus::Drop => {}
        }
    }

    fn gate_status(&self, g: &Gated) -> GateStatus {
        if g.msg.term < self.term && !matches!(g.msg.body, MessageBody::PreVoteResponse { .. }) {
            return GateStatus::Drop;
        }
        if let Some((index, term)) = g.log {
            // An unreadable term counts as "no longer ours": dropping is always safe.
            if !self.log.matches(index, term).unwrap_or(false) {
                return GateStatus::Drop;
            }
            if index > self.log.durable_index() {
                return GateStatus::Wait;
            }
        }
        match g.hard_state {
            Some(hs) if hs != self.hard_state_durable => GateStatus::Wait,
            _ => GateStatus::Send,
        }
    }

    fn release_gated(&mut self) {
        let mut waiting = VecDeque::with_capacity(self.gated.len());
        while let Some(g) = self.gated.pop_front() {
            match self.gate_status(&g) {
                GateStatus::Send => self.outbox.push(g.msg),
                GateStatus::Wait => waiting.push_back(g),
                GateStatus::Drop => {}
            }
        }
        self.gated = waiting;
    }

    fn check_invariants(&self) {
        let last = self.log.last_index();
        assert!(
            self.applied <= self.commit && self.commit <= last,
            "applied <= commit <= last"
        );
        self.log.check_invariants();
        assert!(self.hard_state_durable.term <= self.term);
        assert!(self.gated.len() <= self.cfg.gated_msgs_max);
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.cfg.id));
                assert_eq!(self.vote, Some(self.cfg.id));
                assert!(
                    self.is_voter() || self.configs.last_index().is_some_and(|i| i > self.commit),
                    "a leader outside the configuration leads only until its removal commits"
                );
                assert!(
                    self.log.last_term() == self.term,
                    "a leader's log ends in its term (no-op)"
                );
                for pr in self.progress.values() {
                    assert!(pr.match_index < pr.next_index && pr.next_index <= last + 1);
                }
            }
            Role::Candidate => assert_eq!(self.vote, Some(self.cfg.id)),
            Role::Follower | Role::PreCandidate => assert!(self.progress.is_empty()),
        }
    }
}
