//! One node's replica: the Raft core over its durable log and hard state, driven without any
//! network. The raft thread feeds it ticks, peer messages, proposals and the log writer's wake-ups,
//! and carries its output (messages to send, entries committed) to the network and the clients;
//! tests drive several replicas through an in-memory transport.
//!
//! Order of effects for each `Ready` (see the core's driver contract): the hard state is saved
//! (fdatasync) before anything else; entries are queued to the log writer (a conflicting suffix is
//! cut first); messages then leave — a leader's AppendEntries before its own fdatasync completes,
//! the core holding back anything that depends on state not yet durable; committed entries are
//! only those committed AND durable here.

use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use raftline_log::batch::{
    entry_batches, for_each_timestamp_in, max_timestamp_in, parse_header, BATCH_HEADER_BYTES,
};
use raftline_log::{
    BackendChoice, Batch, BatchError, BatchHeader, DurableLoss, DurableLossHook, HardStateStore,
    Log, LogConfig, LogError, OnDamage, WriterHook,
};
use raftline_replicator::{
    Config, Entry, EntryKind, HardState, Index, InitError, MembershipChange, MembershipError,
    Message, MessageBody, NodeId, ProposeError, Raft, Ready, RefusalReason, Role, StorageError,
    Term, TransferError,
};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::producers::{ProducerBatch, ProducerTable, Producers, Verdict};
use crate::snapshots::{Restored, SnapshotError, SnapshotPolicy, Snapshots};
use crate::storage::{batch_of, command_header, LogStorage};
use crate::storage_repair::{self, Repair};
use crate::time_index::TimeIndex;

/// `Ready` rounds one [`Replica::advance`] carries out before the event loop gets a turn (each
/// hands out at most the core's `committed_bytes_max` of committed entries).
pub const READY_ROUNDS_MAX: usize = 16;

/// What a replica needs to start.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The Raft core's configuration (ids, timing in ticks, limits).
    pub raft: Config,
    /// The node's data directory (already claimed by its identity).
    pub data_dir: PathBuf,
    /// Log write path.
    pub log_backend: BackendChoice,
    /// Size of each log segment file.
    pub segment_bytes: u64,
    /// Largest batch a producer may append.
    pub batch_bytes_max: usize,
    /// Seed of the RNG that draws election timeouts.
    pub rng_seed: u64,
    /// Run by the log writer after every durable group (wakes the raft thread).
    pub durable_hook: Option<WriterHook>,
    /// Run once on the log writer thread at start (pins it).
    pub writer_start_hook: Option<WriterHook>,
    /// When to snapshot the materialised state and compact the log.
    pub snapshots: SnapshotPolicy,
    /// `--emulate-disk`: least time from issuing a log group commit to its completion (zero: real disk).
    pub emulated_fsync_delay: std::time::Duration,
    /// `--durable-mark-idle-ms`: the log writer's idle delay before a marker-only group.
    pub durable_mark_idle: std::time::Duration,
    /// `--durable-mark-before-ack`: acknowledge log writes only once a synced marker vouches.
    pub durable_mark_before_ack: bool,
}

/// An error after which the node must stop: it can no longer vouch for its log.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    /// The log failed (a write or fdatasync error, corruption found at open).
    #[error("log: {0}")]
    Log(#[from] LogError),
    /// The core could not read its durable log.
    #[error("reading the log for Raft: {0}")]
    Storage(#[from] StorageError),
    /// The core refused its start-up state.
    #[error("starting Raft: {0}")]
    Init(#[from] InitError),
    /// Taking, loading or installing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// An entry's bytes are not a valid batch (a peer bug: frames are checksummed).
    #[error("entry {index} is not a valid batch: {source}")]
    BadEntry {
        /// Its index.
        index: Index,
        /// Why.
        source: BatchError,
    },
}

impl FatalError {
    /// Whether this is damage the node met in its own storage while running (a log batch or
    /// the served snapshot failing its checksum): nothing damaged was served, and reopening the
    /// replica repairs it as a restart would (`EventLoop`'s repair in place). I/O errors, a
    /// failed fdatasync above all, are not: the log's state after them is unknown.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            FatalError::Log(LogError::Corrupt { .. })
                | FatalError::Storage(StorageError::Damaged(_))
        )
    }
}

/// Why a peer message was dropped (see [`Replica::step`]).
#[derive(Debug, thiserror::Error)]
pub enum StepRefused {
    /// The core refused it (see `raftline_replicator::refusal`).
    #[error("{0}")]
    Core(RefusalReason),
    /// An entry that is not a valid batch of that entry.
    #[error("entry {index} is not a valid batch: {source}")]
    BadEntry {
        /// Its index.
        index: Index,
        /// Why.
        source: BatchError,
    },
    /// An entry stamped at another offset than where this log continues.
    #[error("entry {index} stamped at offset {stamped} but the log continues at {expected}")]
    WrongOffset {
        /// Its index.
        index: Index,
        /// The base offset in its batch header.
        stamped: u64,
        /// The offset the entry before it ends at here.
        expected: u64,
    },
}

impl StepRefused {
    /// A short stable name for metrics labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            StepRefused::Core(reason) => reason.label(),
            StepRefused::BadEntry { .. } => "bad_entry",
            StepRefused::WrongOffset { .. } => "wrong_offset",
        }
    }
}

/// A proposal the leader accepted: where its records will live if it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposed {
    /// Term of the entry; the proposal succeeded iff the entry committed at `index` has it.
    pub term: Term,
    /// Raft index of the entry.
    pub index: Index,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Why a proposal was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ProposalError {
    /// The core refused it (not the leader, too large, busy, disk backlog, transferring).
    #[error(transparent)]
    Refused(#[from] ProposeError),
    /// A batch must carry at least one record.
    #[error("a batch must carry at least one record")]
    Empty,
    /// The log's disk is full: nothing is proposed until there is room.
    #[error("disk full: no room for the log in {}", .0.path.display())]
    DiskFull(raftline_log::DiskFull),
    /// The node failed while taking it.
    #[error(transparent)]
    Fatal(#[from] FatalError),
}

/// An entry that is committed and durable here, in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its index.
    pub index: Index,
    /// Its term (a proposal of another term at this index lost).
    pub term: Term,
}

/// Persists the repair marker for entries the log is about to cut although they were durable
/// (recovery calls this before the cut erases the evidence, so a crash in between cannot
/// forget it): the higher of their durable index and a marker an earlier, unrepaired loss left.
/// Bytes a timestamp lookup reads from the log at a time.
const READ_BYTES: usize = 1 << 20;

/// Notes a committed entry's data batches in the time index (a no-op or configuration entry
/// holds none).
fn index_entry(index: &mut TimeIndex, entry: &[u8]) -> Result<(), BatchError> {
    for batch in entry_batches(entry) {
        let (h, range) = batch?;
        if h.is_data() {
            let max = max_timestamp_in(&entry[range.clone()])?;
            index.note(h.base_offset, h.next_offset(), range.len() as u64, max);
        }
    }
    Ok(())
}

/// Indexes the log's committed entries up to `applied` (what a restarted node does not apply
/// again: its snapshot covers them).
fn index_retained(index: &mut TimeIndex, log: &Log, applied: Index) -> Result<(), LogError> {
    let mut offset = log.start_offset();
    let mut buf = Vec::new();
    loop {
        let batches = log.read_from_offset_into(offset, applied, READ_BYTES, &mut buf)?;
        let Some((last, _)) = batches.last() else {
            return Ok(());
        };
        offset = last.next_offset();
        for (_, range) in &batches {
            index_entry(index, &buf[range.clone()])?;
        }
    }
}

fn persist_repair_marker(data_dir: &std::path::Path, loss: DurableLoss) -> Result<(), LogError> {
    let (mut hard_state, _) = HardStateStore::open(data_dir)?;
    let pending = hard_state.repair_through();
    let through = pending.map_or(loss.durable_through, |p| p.max(loss.durable_through));
    hard_state.set_repair_through(Some(through))?;
    tracing::error!(
        first_lost = loss.first_lost,
        durable_through = loss.durable_through,
        repair_through = through,
        "log damaged: entries from index {} lost, durable through {}; not voting until repaired from the leader",
        loss.first_lost,
        loss.durable_through
    );
    Ok(())
}

/// Role, term and leader, to notice and log changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leadership {
    role: Role,
    term: Term,
    leader: Option<NodeId>,
}

/// The Raft core, its log and its hard state.
pub struct Replica {
    raft: Raft<LogStorage>,
    log: Arc<Log>,
    hard_state: HardStateStore,
    rng: ChaCha8Rng,
    /// `(index, next offset after it)` of the last entry proposed here, while it is the core's
    /// last entry and not yet handed to the log; lets proposals in one event-loop round be
    /// stamped without a round trip through `ready()` each.
    tail: Option<(Index, u64)>,
    /// The stamped batches proposed here and not yet handed to the log, in index order: the
    /// log gets these very bytes (the core's entry holds a copy), so the leader neither copies
    /// nor re-checks its own proposals on their way to the disk.
    proposed: VecDeque<Batch>,
    outbox: Vec<Message>,
    committed: Vec<Committed>,
    snapshots: Snapshots,
    /// Offset one past the last record a consumer may read here.
    readable_end_offset: u64,
    /// Where committed records lie by producer timestamp (Kafka's ListOffsets by time).
    time_index: TimeIndex,
    leadership: Leadership,
    /// Idempotent producers' dedup state (committed table + this leader's proposals).
    producers: Producers,
    /// What was repaired when the replica opened (for the metrics).
    repairs: Vec<Repair>,
}

impl Replica {
    /// Opens the log and hard state under `data_dir` and starts the core from them: a restarted
    /// node resumes from its disk.
    pub fn open(mut cfg: ReplicaConfig) -> Result<Replica, FatalError> {
        // This driver calls `ready()` once per round after all of the round's input: the core
        // may then send one AppendEntries per follower with every proposal of the round.
        cfg.raft.batch_appends = true;
        let mut log_cfg = LogConfig::new(cfg.data_dir.join("log"));
        log_cfg.backend = cfg.log_backend;
        log_cfg.segment_bytes = cfg.segment_bytes;
        log_cfg.batch_bytes_max = cfg.batch_bytes_max;
        // A group is at most a quarter segment (bounded torn tail), never smaller than a batch.
        log_cfg.group_bytes_max = (log_cfg.group_bytes_max)
            .min(cfg.segment_bytes as usize / 4)
            .max(cfg.batch_bytes_max);
        log_cfg.durable_hook = cfg.durable_hook;
        log_cfg.writer_start_hook = cfg.writer_start_hook;
        log_cfg.emulated_fsync_delay = cfg.emulated_fsync_delay;
        log_cfg.durable_mark_idle = cfg.durable_mark_idle;
        log_cfg.durable_mark_before_ack = cfg.durable_mark_before_ack;
        // Room a new segment leaves free (for a snapshot that lets the log drop its prefix).
        log_cfg.reserve_bytes = cfg.segment_bytes / 16;
        let data_dir = cfg.data_dir.clone();
        log_cfg.durable_loss_hook = Some(DurableLossHook(Arc::new(move |loss| {
            persist_repair_marker(&data_dir, loss).map_err(|e| e.to_string())
        })));
        // The hard state's file first, its blocks written: a disk that fills up with log
        // segments never leaves the node unable to save a term or a vote.
        raftline_log::dir::ensure_dir_durable(&cfg.data_dir)
            .map_err(|e| LogError::io(format!("creating {}", cfg.data_dir.display()), e))?;
        drop(HardStateStore::open(&cfg.data_dir)?);
        // Damage before the tail is cut and re-fetched from a peer, not refused.
        log_cfg.on_damage = OnDamage::Cut;
        let log = Arc::new(Log::open(log_cfg)?);
        let mut repairs = Vec::new();
        match (log.damage_cut(), log.durable_loss()) {
            (Some(_), _) => repairs.push(Repair::LogRange),
            (None, Some(_)) => repairs.push(Repair::LogTail),
            (None, None) => {}
        }
        let (mut hard_state, mut saved) = HardStateStore::open(&cfg.data_dir)?;
        repairs.extend(storage_repair::hard_state_damage(
            &mut hard_state,
            &mut saved,
            &log,
        )?);
        let snapshots_dir = cfg.data_dir.join("snapshots");
        let restored = match Snapshots::open(&snapshots_dir, cfg.snapshots, &log) {
            Err(SnapshotError::BaseLost { dropped, .. }) => {
                repairs.extend(std::iter::repeat_n(Repair::Snapshot, dropped));
                storage_repair::empty_log_for_a_peer_snapshot(&mut hard_state, &log)?;
                Snapshots::open(&snapshots_dir, cfg.snapshots, &log)?
            }
            other => other?,
        };
        repairs.extend(std::iter::repeat_n(
            Repair::Snapshot,
            restored.dropped_corrupt,
        ));
        let Restored {
            snapshots,
            served,
            next_offset,
            producers,
            ..
        } = restored;
        let repair_through = hard_state.repair_through();
        if let (Some(through), None) = (repair_through, log.durable_loss()) {
            tracing::warn!(
                repair_through = through,
                "log repair still pending from before the restart; not voting until repaired from the leader"
            );
        }
        let hs = HardState {
            term: saved.term,
            vote: saved.voted_for,
        };
        // The state machine holds what the snapshot covers; committed entries after it are
        // learnt again from the leader (and re-read from the local log) and applied again.
        let applied = served
            .as_ref()
            .map_or(log.first_index() - 1, |s| s.meta().index);
        let storage = LogStorage::new(Arc::clone(&log), served);
        let mut raft = Raft::new(cfg.raft, hs, applied, storage)?;
        if let Some(index) = repair_through {
            raft.set_repair_through(index);
        }
        let leadership = Leadership {
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
        };
        tracing::info!(
            term = hs.term,
            vote = ?hs.vote,
            first_index = log.first_index(),
            last_index = log.last_index(),
            next_offset = log.next_offset(),
            backend = ?log.backend(),
            "replica recovered from disk"
        );
        let mut time_index = TimeIndex::default();
        time_index.forget_below(log.start_offset());
        index_retained(&mut time_index, &log, applied)?;
        Ok(Replica {
            time_index,
            readable_end_offset: next_offset.unwrap_or_else(|| log.start_offset()),
            snapshots,
            raft,
            log,
            hard_state,
            rng: ChaCha8Rng::seed_from_u64(cfg.rng_seed),
            tail: None,
            proposed: VecDeque::new(),
            outbox: Vec::new(),
            committed: Vec::new(),
            leadership,
            producers: Producers::new(producers),
            repairs,
        })
    }

    /// Closes the replica for a reopen of the same data directory: waits for a snapshot being
    /// written (its file then verifies, or is dropped, at the open), drops the core and joins
    /// the log's writer once it has written what it was given. The caller must have given back
    /// every other handle of the log (`Metrics::release_log`).
    pub fn close(self) {
        let Replica {
            raft,
            log,
            mut snapshots,
            ..
        } = self;
        snapshots.wait_written();
        drop(raft);
        let log = Arc::into_inner(log).expect("the replica holds the last handle of its log");
        drop(log);
    }

    /// What was found damaged and repaired when the replica opened, one item per repair.
    pub fn repairs_at_open(&self) -> &[Repair] {
        &self.repairs
    }

    /// The core (read access: role, term, progress...).
    pub fn raft(&self) -> &Raft<LogStorage> {
        &self.raft
    }

    /// The log (read access: offsets, writer statistics).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.raft.tick(&mut self.rng);
    }

    /// Hands a peer message to the core, unless it contradicts what this node knows: then it
    /// is dropped (Raft tolerates a lost message) and the reason returned, so the driver closes
    /// the connection it came on. The core checks terms and indices; entries that would not
    /// continue this log (a batch that is not valid, or stamped at an offset other than where
    /// the log goes on) are refused here, before the core takes them: handed to the log they
    /// would break its offsets, which this node must never do (see `write_and_apply`).
    pub fn step(&mut self, msg: Message) -> Result<(), StepRefused> {
        self.tail = None;
        if let MessageBody::AppendEntries {
            prev_index,
            prev_term,
            entries,
            ..
        } = &msg.body
        {
            self.check_entries(msg.term, *prev_index, *prev_term, entries)?;
        }
        match self.raft.step(msg) {
            Some(reason) => Err(StepRefused::Core(reason)),
            None => Ok(()),
        }
    }

    /// Checks the entries of an AppendEntries the core would take: at or after our commit
    /// index, continuing an entry we hold (a message the core rejects or ignores is its
    /// business). Each command must be a valid batch of its entry, at the offset where the
    /// entry before it ends.
    fn check_entries(
        &self,
        term: Term,
        prev_index: Index,
        prev_term: Term,
        entries: &[Entry],
    ) -> Result<(), StepRefused> {
        let taken = !entries.is_empty()
            && term >= self.raft.term()
            && prev_index >= self.raft.commit_index()
            && !self.raft.installing_snapshot()
            && self.raft.term_at(prev_index) == Some(prev_term);
        if !taken {
            return Ok(());
        }
        let Some(mut offset) = self.offset_after(prev_index) else {
            // Cannot happen: `prev_index` is at or above the snapshot this log starts after.
            debug_assert!(false, "no offset known after entry {prev_index}");
            return Ok(());
        };
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Command) {
            let header = command_header(entry).map_err(|source| StepRefused::BadEntry {
                index: entry.index,
                source,
            })?;
            if header.base_offset != offset {
                return Err(StepRefused::WrongOffset {
                    index: entry.index,
                    stamped: header.base_offset,
                    expected: offset,
                });
            }
            offset = header.next_offset();
        }
        Ok(())
    }

    /// The offset of the first record after entry `index` of the core's log. The core's memory
    /// has the entries not yet handed to the log (and a suffix it replaced, which the log still
    /// holds until `write_and_apply` cuts it); below that, the log's sequencer knows.
    fn offset_after(&self, mut index: Index) -> Option<u64> {
        loop {
            match self.raft.entry_in_memory(index) {
                Some(e) if e.kind == EntryKind::Command => {
                    return parse_header(&e.payload).ok().map(|h| h.next_offset());
                }
                // A no-op or configuration entry holds no records. Index 0 is never in memory.
                Some(_) => index -= 1,
                None => return self.log.offset_after(index),
            }
        }
    }

    /// When leading, starts handing leadership to the most caught-up follower (a stopping node
    /// spares the cluster an election timeout; a stalled disk moves the leadership off itself);
    /// with `caught_up_only`, only to one that holds the whole log durably (a full disk hands
    /// over only to a follower with room). Returns the chosen follower.
    pub fn hand_over_leadership(&mut self, caught_up_only: bool) -> Option<NodeId> {
        if self.raft.role() != Role::Leader {
            return None;
        }
        let me = self.raft.id();
        let (to, matched) = self
            .raft
            .membership()
            .voters
            .iter()
            .filter(|&&id| id != me)
            .map(|&id| (id, self.raft.progress(id).map_or(0, |p| p.match_index)))
            .max_by_key(|&(_, matched)| matched)?;
        if caught_up_only && matched < self.raft.last_index() {
            return None;
        }
        self.raft.transfer_leadership(to).ok()?;
        Some(to)
    }

    /// Tells the core whether the log's writes are stalled (no campaigning meanwhile).
    pub fn set_write_stalled(&mut self, stalled: bool) {
        self.raft.set_write_stalled(stalled);
    }

    /// A leader gives up leadership (its disk stalled and no transfer succeeded).
    pub fn step_down(&mut self) {
        self.tail = None;
        self.raft.step_down();
    }

    /// Proposes a configuration change (an operator's `member` request).
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(Term, Index), MembershipError> {
        self.raft.propose_membership(change)
    }

    /// Starts handing leadership to `to` (an operator's `leader transfer`).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        self.raft.transfer_leadership(to)
    }

    /// Tells the core how far the log is durable (after the writer's hook fired).
    pub fn on_durable(&mut self) -> Result<(), FatalError> {
        let (index, term) = self.log.durable_last()?;
        self.raft.log_durable(index, term);
        Ok(())
    }

    /// Stamps a producer's batch with its final offset, term and index and proposes it.
    #[cfg(test)] // the node proposes a round's appends together (`propose_run`)
    pub fn propose(&mut self, batch: Batch) -> Result<Proposed, ProposalError> {
        let mut proposed = self.propose_run(vec![batch])?;
        Ok(proposed.remove(0))
    }

    /// Proposes producers' batches as ONE Raft entry: a single batch is the entry itself,
    /// several become a run (`Batch::run`), each batch stamped with its own offsets and the
    /// entry's term and index. One entry per event-loop round instead of one per append: the
    /// core, the log writer, every follower and every apply handle one entry for all of them.
    /// Returns where each batch's records will live, in order.
    pub fn propose_run(&mut self, mut batches: Vec<Batch>) -> Result<Vec<Proposed>, ProposalError> {
        assert!(!batches.is_empty(), "a proposal holds at least one batch");
        if batches.iter().any(|b| b.header().record_count == 0) {
            return Err(ProposalError::Empty);
        }
        // Refuse early (not leader, too large, busy) before touching the log.
        let bytes = match batches.as_slice() {
            [one] => one.as_bytes().len(),
            all => BATCH_HEADER_BYTES + all.iter().map(|b| b.as_bytes().len()).sum::<usize>(),
        } as u64;
        let (term, index) = self.raft.check_proposal(bytes)?;
        if let Some(full) = self.log.disk_full() {
            return Err(ProposalError::DiskFull(full));
        }
        let base_offset = self.next_offset_at(index)?;
        assert_eq!(
            self.raft.check_proposal(bytes),
            Ok((term, index)),
            "handing entries to the log changed nothing the proposal depends on"
        );
        let producer_batches: Vec<Option<ProducerBatch>> =
            batches.iter().map(ProducerBatch::of_batch).collect();
        let mut proposed = Vec::with_capacity(batches.len());
        let mut next_offset = base_offset;
        for batch in &batches {
            let records = u64::from(batch.header().record_count);
            proposed.push(Proposed {
                term,
                index,
                base_offset: next_offset,
                last_offset: next_offset + records - 1,
            });
            next_offset += records;
        }
        let entry = if batches.len() == 1 {
            let mut batch = batches.pop().expect("one batch");
            batch.stamp(base_offset, term, index);
            batch
        } else {
            Batch::run(&mut batches, base_offset, term, index)
                .map_err(|source| FatalError::BadEntry { index, source })?
        };
        debug_assert_eq!(entry.header().next_offset(), next_offset);
        let (term_got, index_got) = self.raft.propose(Arc::from(entry.as_bytes()))?;
        assert_eq!(
            (term_got, index_got),
            (term, index),
            "check_proposal agrees"
        );
        self.proposed.push_back(entry);
        self.tail = Some((index, next_offset));
        let stored: Vec<(u64, u64)> = proposed
            .iter()
            .map(|p| (p.base_offset, p.last_offset))
            .collect();
        self.producers
            .proposed(&producer_batches, &stored, term, index);
        Ok(proposed)
    }

    /// The leader's judgement of a proposal's batches before it proposes them: which are new,
    /// which resend a stored (or in-flight) batch, which break their producer's sequence or
    /// epoch (`producers.rs`). A node that does not lead judges nothing.
    pub fn judge(&self, batches: &[Batch]) -> Vec<Verdict> {
        if self.raft.role() != Role::Leader || self.log.disk_full().is_some() {
            // Proposing answers `NotLeader` (the client goes to the leader, which judges) or
            // `DiskFull` (nothing is stored, and the producer learns why rather than a `Busy`
            // of a leader that cannot commit its term's first entry).
            return vec![Verdict::Fresh; batches.len()];
        }
        let raft = &self.raft;
        let term = raft.term();
        // Asked only before the term's first proposal, when the entries of this term are its
        // no-op and a few configuration entries (a compacted index is applied).
        let earlier_terms_end = || {
            let mut end = raft.last_index();
            while end > 0 && raft.term_at(end) == Some(term) {
                end -= 1;
            }
            end
        };
        self.producers
            .judge(batches, term, earlier_terms_end, raft.applied_index())
    }

    /// The committed dedup table.
    pub fn producer_table(&self) -> &ProducerTable {
        self.producers.table()
    }

    /// Offset of the first record of a new entry at `index` (the core's next index).
    fn next_offset_at(&mut self, index: Index) -> Result<u64, FatalError> {
        if let Some((tail_index, next_offset)) = self.tail {
            if tail_index + 1 == index {
                return Ok(next_offset);
            }
        }
        // Entries the core appended since (a no-op, a follower's entries) go to the log first;
        // then the log's own sequencer knows the offset.
        while self.advance()? {}
        assert_eq!(
            self.log.last_index() + 1,
            index,
            "every entry of the core was handed to the log"
        );
        Ok(self.log.next_offset())
    }

    /// Carries out what the core asks for, for at most [`READY_ROUNDS_MAX`] rounds, without a
    /// network: messages and committed entries accumulate for [`Replica::take_messages`] /
    /// [`Replica::take_committed`]. Returns whether the core has more (committed entries come
    /// in bounded chunks: a restarted node re-learns its whole committed log, which must not
    /// stall the event loop). The event loop runs the same stages itself, sending each `Ready`'s
    /// messages between [`Replica::persist`] and [`Replica::write_and_apply`].
    pub fn advance(&mut self) -> Result<bool, FatalError> {
        let mut more = true;
        for _ in 0..READY_ROUNDS_MAX {
            let Some(mut rd) = self.ready() else {
                more = false;
                break;
            };
            let messages = self.persist(&mut rd)?;
            self.outbox.extend(messages);
            self.write_and_apply(rd)?;
        }
        self.settle()?;
        Ok(more)
    }

    /// The core's next `Ready`, or `None` when it has nothing to do.
    pub fn ready(&mut self) -> Option<Ready> {
        self.tail = None;
        let rd = self.raft.ready();
        (!rd.is_empty()).then_some(rd)
    }

    /// First stage of a `Ready`: the hard state is saved (fdatasync) and incoming snapshot
    /// chunks written. Returns the messages that may leave now — messages held from proposals
    /// first, then this `Ready`'s. Sending them before [`Replica::write_and_apply`] hands the
    /// entries to the log writer is safe (the core gates every message that depends on local
    /// durability, and a leader's AppendEntries may precede its own write) and puts the
    /// followers' copy on the wire while this node's write starts.
    pub fn persist(&mut self, rd: &mut Ready) -> Result<Vec<Message>, FatalError> {
        if let Some(hs) = rd.hard_state {
            self.hard_state.save(raftline_log::HardState {
                term: hs.term,
                voted_for: hs.vote,
            })?;
            self.raft.hard_state_durable(hs);
        }
        if rd.repaired {
            self.clear_repair_marker()?;
        }
        for chunk in &rd.snapshot_chunks {
            self.receive_snapshot_chunk(chunk)?;
        }
        let mut messages = std::mem::take(&mut self.outbox);
        messages.append(&mut rd.messages);
        Ok(messages)
    }

    /// The core found the log repaired from the leader: the node votes again, also after a
    /// restart (a crash before this save only keeps it mute a little longer).
    fn clear_repair_marker(&mut self) -> Result<(), FatalError> {
        let through = self.hard_state.repair_through();
        self.hard_state.set_repair_through(None)?;
        tracing::info!(
            repair_through = ?through,
            durable_index = self.raft.durable_index(),
            "log repaired from the leader; voting again"
        );
        Ok(())
    }

    /// Second stage of a `Ready`: its entries go to the log writer (a conflicting suffix is cut
    /// first), then its committed entries — committed AND durable here — are applied to the
    /// state and queued for [`Replica::take_committed`].
    pub fn write_and_apply(&mut self, rd: Ready) -> Result<(), FatalError> {
        if let Some(first) = rd.entries.first() {
            if first.index <= self.log.last_index() {
                // The log refuses to cut below the guard. Not the commit index: one
                // AppendEntries can both replace a stale suffix and announce a commit index
                // beyond it (the new entries are committed, the cut ones never were). What
                // must never be cut is what was handed out as committed, i.e. applied.
                self.log
                    .truncate_suffix(first.index, self.raft.applied_index())?;
            }
            for entry in &rd.entries {
                let batch = match self.own_proposal(entry) {
                    Some(batch) => batch,
                    None => batch_of(entry).map_err(|source| FatalError::BadEntry {
                        index: entry.index,
                        source,
                    })?,
                };
                let stamped = batch.header();
                let ticket = self.log.append(Some(entry.index), entry.term, batch)?;
                // Every node computes the same offsets from the same log, and `step` refused
                // entries from the wire that would not continue it: a difference here is this
                // node's own bug (diverging logs), which must stop the node, not spread.
                assert!(
                    entry.kind != EntryKind::Command || ticket.base_offset == stamped.base_offset,
                    "entry {} stamped at offset {} but the log continues at {}",
                    entry.index,
                    stamped.base_offset,
                    ticket.base_offset
                );
            }
        }
        for e in &rd.committed {
            if e.kind == EntryKind::Command {
                let h = parse_header(&e.payload).map_err(|source| FatalError::BadEntry {
                    index: e.index,
                    source,
                })?;
                debug_assert_eq!(h.base_offset, self.readable_end_offset);
                self.readable_end_offset = h.next_offset();
                self.producers
                    .apply_entry(e.index, &e.payload)
                    .map_err(|source| FatalError::BadEntry {
                        index: e.index,
                        source,
                    })?;
                index_entry(&mut self.time_index, &e.payload).map_err(|source| {
                    FatalError::BadEntry {
                        index: e.index,
                        source,
                    }
                })?;
            }
            self.snapshots.apply(e)?;
            self.committed.push(Committed {
                index: e.index,
                term: e.term,
            });
        }
        Ok(())
    }

    /// After a round's `Ready`s: proposals lost with the leadership are forgotten, a storage
    /// failure the core noticed stops the node, a due snapshot starts (or a written one
    /// compacts the log), and a leadership change is logged.
    pub fn settle(&mut self) -> Result<(), FatalError> {
        if self.raft.role() != Role::Leader {
            // Whatever was proposed and not handed out was dropped with the leadership.
            self.proposed.clear();
            self.producers.stop_leading();
        }
        if let Some(failure) = self.raft.storage_failure() {
            return Err(FatalError::Storage(failure.clone()));
        }
        self.compact()?;
        self.note_leadership();
        Ok(())
    }

    /// The batch proposed here for `entry`, if it is one (same index and term: the core's
    /// payload is a copy of its bytes). Proposals the core dropped (lost leadership) are skipped.
    fn own_proposal(&mut self, entry: &raftline_replicator::Entry) -> Option<Batch> {
        while let Some(front) = self.proposed.front() {
            let h = front.header();
            if h.index > entry.index {
                return None;
            }
            let batch = self.proposed.pop_front().expect("front exists");
            if h.index == entry.index {
                if h.term != entry.term || entry.kind != EntryKind::Command {
                    return None;
                }
                debug_assert_eq!(batch.as_bytes(), &entry.payload[..]);
                return Some(batch);
            }
        }
        None
    }

    /// Starts a snapshot at the applied index when one is due; once one is durable, serves it
    /// and drops the log segments it (and the retain floor) make unnecessary.
    fn compact(&mut self) -> Result<(), FatalError> {
        if let Some((served, floor)) = self.snapshots.poll_written()? {
            let index = served.meta().index;
            // Serve the snapshot before the prefix it covers goes.
            self.raft.storage_mut().set_snapshot(served);
            raftline_log::fault::crash_point("compact-before-truncate");
            let dropped = self.log.truncate_prefix(floor)?;
            self.time_index.forget_below(self.log.start_offset());
            tracing::info!(
                index,
                floor,
                dropped_segments = dropped,
                first_index = self.log.first_index(),
                "log compacted"
            );
        }
        let applied = self.raft.applied_index();
        self.snapshots.maybe_start(
            applied,
            self.raft.term_at(applied),
            self.raft.applied_membership(),
            self.readable_end_offset,
            self.producers.table(),
        );
        Ok(())
    }

    /// Writes a chunk of a snapshot sent by the leader; after the last one: the snapshot is
    /// durable, then the log restarts after it, then the state is loaded, then the core is told.
    fn receive_snapshot_chunk(
        &mut self,
        chunk: &raftline_replicator::SnapshotChunk,
    ) -> Result<(), FatalError> {
        let Some((served, payload)) = self.snapshots.receive(chunk)? else {
            return Ok(());
        };
        let meta = served.meta().clone();
        raftline_log::fault::crash_point("install-before-restart");
        self.log
            .restart_after_snapshot(meta.index, meta.term, payload.next_offset)?
            .wait()?;
        self.tail = None;
        self.readable_end_offset = payload.next_offset;
        self.producers.install(payload.producers);
        self.time_index.forget_below(payload.next_offset);
        self.snapshots.installed(meta.index, payload.state)?;
        self.raft.storage_mut().set_snapshot(served);
        self.raft.snapshot_installed(&meta);
        Ok(())
    }

    /// The state materialised from the committed log, its bound and the admission check
    /// against it.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// Whether a snapshot is being written in the background.
    #[cfg(test)]
    pub fn snapshot_writing(&self) -> bool {
        self.snapshots.writing()
    }

    /// Asks for a snapshot of everything applied so far; returns the index it will cover at
    /// least (the applied index now). Refused while nothing is applied.
    pub fn request_snapshot(&mut self) -> Result<Index, String> {
        let applied = self.raft.applied_index();
        if applied == 0 {
            return Err("nothing is applied yet: there is no state to snapshot".into());
        }
        self.snapshots.request();
        Ok(applied)
    }

    /// The snapshot this node serves (to followers and to consumers reading the state).
    pub fn served_snapshot(&self) -> Option<crate::storage::ServedSnapshot> {
        self.raft.storage().served().cloned()
    }

    /// No log entry, no snapshot, term 0: by its own durable state this node has never voted
    /// nor acknowledged anything.
    pub fn is_pristine(&self) -> bool {
        let raft = self.raft();
        raft.term() == 0 && raft.last_index() == 0 && self.snapshot_index().is_none()
    }

    /// Index of the newest durable snapshot here (it covers offsets below the log's start).
    pub fn snapshot_index(&self) -> Option<Index> {
        self.snapshots.latest_index()
    }

    fn note_leadership(&mut self) {
        let now = Leadership {
            role: self.raft.role(),
            term: self.raft.term(),
            leader: self.raft.leader(),
        };
        if now == self.leadership {
            return;
        }
        if now.role == Role::Leader && self.leadership.role != Role::Leader {
            tracing::info!(term = now.term, "became leader");
        } else if self.leadership.role == Role::Leader && now.role != Role::Leader {
            tracing::warn!(term = now.term, leader = ?now.leader, "stepped down as leader");
        } else if now.leader != self.leadership.leader || now.term != self.leadership.term {
            tracing::info!(term = now.term, role = ?now.role, leader = ?now.leader, "leadership changed");
        }
        self.leadership = now;
    }

    /// Messages to send, in order.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.outbox)
    }

    /// Entries committed and durable here since the last call, in order.
    pub fn take_committed(&mut self) -> Vec<Committed> {
        std::mem::take(&mut self.committed)
    }

    /// Highest index a consumer may read here: committed and durable locally.
    pub fn readable_index(&self) -> Index {
        self.raft.applied_index()
    }

    /// Offset one past the last record a consumer may read here.
    pub fn readable_end_offset(&self) -> u64 {
        self.readable_end_offset
    }

    /// A shared handle on the log (metrics read its writer statistics).
    pub fn log_handle(&self) -> Arc<Log> {
        Arc::clone(&self.log)
    }

    /// The first committed record (offset, timestamp) whose producer timestamp is at least
    /// `timestamp`, or with `None` the first with the largest timestamp; reads at most two
    /// spans of the log (`time_index`).
    pub fn find_by_timestamp(
        &self,
        timestamp: Option<u64>,
    ) -> Result<Option<(u64, u64)>, LogError> {
        let read = |from: u64, to: u64, visit: &mut dyn FnMut(u64, u64)| {
            let mut buf = Vec::new();
            let mut offset = from;
            while offset < to {
                let batches = self.read_committed_into(offset, READ_BYTES, &mut buf)?;
                let Some((last, _)) = batches.last() else {
                    break;
                };
                offset = last.next_offset();
                for (_, range) in &batches {
                    for inner in entry_batches(&buf[range.clone()]) {
                        let (_, inner) = inner?;
                        let batch = &buf[range.start + inner.start..range.start + inner.end];
                        for_each_timestamp_in(batch, |o, ts| {
                            if (from..to).contains(&o) {
                                visit(o, ts)
                            }
                        })?;
                    }
                }
            }
            Ok(())
        };
        match timestamp {
            Some(t) => self.time_index.find_at_or_after(t, read),
            None => self.time_index.find_largest(read),
        }
    }

    /// Committed, locally durable client batches from the one holding record `offset`, at most
    /// `bytes_max` bytes (but at least one), read into the caller's reused `buf`: each batch's
    /// header and byte range in `buf` (no-op and configuration entries left out). `BelowStart`
    /// names the earliest retained offset.
    pub fn read_committed_into(
        &self,
        offset: u64,
        bytes_max: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<(BatchHeader, Range<usize>)>, LogError> {
        let mut batches =
            self.log
                .read_from_offset_into(offset, self.readable_index(), bytes_max, buf)?;
        batches.retain(|(h, _)| !h.is_noop() && !h.is_config());
        Ok(batches)
    }
}
