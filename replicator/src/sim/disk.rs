//! A simulated disk: writes sit in a volatile queue until a simulated fsync covering them
//! completes; a crash loses every write not yet covered by a completed fsync. It holds the hard
//! state, the latest snapshot and the log after (part of) it, and is the core's [`Storage`]:
//! reads see durable data only.

use std::sync::Arc;

use crate::message::{Entry, HardState, Index, SnapshotMeta, Term};
use crate::storage::{Storage, StorageError};

/// A snapshot as stored: where it ends and its opaque bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimSnapshot {
    /// Last entry covered and membership there.
    pub meta: SnapshotMeta,
    /// The state machine's bytes.
    pub data: Arc<[u8]>,
}

/// One write as the driver issued it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Write {
    HardState(HardState),
    /// Replaces stored entries from `entries[0].index` on.
    Entries(Vec<Entry>),
    /// A snapshot of this node's own state; entries below `compact_to` are dropped with it.
    Snapshot {
        snapshot: SimSnapshot,
        compact_to: Index,
    },
    /// A snapshot received from the leader: replaces the whole log, which restarts after it.
    Install(SimSnapshot),
}

/// What a completed fsync made durable, to acknowledge to the core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Hard state now durable, if the fsync covered one.
    pub hard_state: Option<HardState>,
    /// Last `(index, term)` of the durable log, if the fsync covered entries.
    pub log: Option<(Index, Term)>,
    /// First index of the entries the fsync covered (its group commit ends at `log`).
    pub group_from: Option<Index>,
    /// A received snapshot now installed, if the fsync covered one.
    pub installed: Option<SnapshotMeta>,
}

/// One node's disk.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SimDisk {
    hard_state: HardState,
    snapshot: Option<SimSnapshot>,
    /// Durable entries `log_start..`.
    log: Vec<Entry>,
    log_start: Index,
    /// Term of entry `log_start - 1` (0 for index 0).
    start_term: Term,
    pending: Vec<Write>,
    /// Writes at the front of `pending` that the in-flight fsync covers.
    syncing: Option<usize>,
    /// Durable, beside the hard state: the log lost entries that were durable through this
    /// index (a damaged tail, see [`SimDisk::lose_tail`]) and the node has not been repaired.
    repair_through: Option<Index>,
    /// Not on the real disk, the simulator's knowledge: the log lost entries through this
    /// index that no marker covers (see [`SimDisk::lose_tail_silently`]), and has not been
    /// written that far again.
    silently_lost: Option<Index>,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk {
            hard_state: HardState::default(),
            snapshot: None,
            log: Vec::new(),
            log_start: 1,
            start_term: 0,
            pending: Vec::new(),
            syncing: None,
            repair_through: None,
            silently_lost: None,
        }
    }
}

impl SimDisk {
    /// A disk already holding `hard_state` and `log` (dense from index 1) durably.
    pub fn with_durable(hard_state: HardState, log: Vec<Entry>) -> Self {
        assert!(
            log.iter().zip(1..).all(|(e, i)| e.index == i),
            "log must be dense from index 1"
        );
        SimDisk {
            hard_state,
            log,
            ..SimDisk::default()
        }
    }

    /// Durable hard state.
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    /// Durable snapshot, if any.
    pub fn snapshot(&self) -> Option<&SimSnapshot> {
        self.snapshot.as_ref()
    }

    /// Durable entries (from `first_index()` on).
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    /// `(index, term)` of the last durable entry (the snapshot's end, or 0, when the log is
    /// empty).
    pub fn last(&self) -> (Index, Term) {
        self.log
            .last()
            .map_or((self.log_start - 1, self.start_term), |e| (e.index, e.term))
    }

    /// True when the disk durably holds `(index, term)`: in its log, or covered by its
    /// snapshot (which holds committed entries only; the checker verifies its content).
    pub fn holds(&self, index: Index, term: Term) -> bool {
        if index < self.log_start {
            return index == 0
                || self
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| index <= s.meta.index);
        }
        self.log
            .get((index - self.log_start) as usize)
            .is_some_and(|e| e.term == term)
    }

    /// Queues a hard state write.
    pub fn write_hard_state(&mut self, hs: HardState) {
        self.pending.push(Write::HardState(hs));
    }

    /// Queues an entries write.
    pub fn write_entries(&mut self, entries: Vec<Entry>) {
        assert!(!entries.is_empty());
        self.pending.push(Write::Entries(entries));
    }

    /// Queues a snapshot of this node's own state, dropping entries below `compact_to` with it.
    pub fn write_snapshot(&mut self, snapshot: SimSnapshot, compact_to: Index) {
        assert!(
            compact_to <= snapshot.meta.index + 1,
            "compacting past the snapshot"
        );
        self.pending.push(Write::Snapshot {
            snapshot,
            compact_to,
        });
    }

    /// Queues the install of a snapshot received from the leader.
    pub fn write_install(&mut self, snapshot: SimSnapshot) {
        self.pending.push(Write::Install(snapshot));
    }

    /// Starts an fsync covering all queued writes, unless one is running or nothing is queued.
    pub fn start_fsync(&mut self) -> bool {
        if self.syncing.is_some() || self.pending.is_empty() {
            return false;
        }
        self.syncing = Some(self.pending.len());
        true
    }

    /// Completes the in-flight fsync: its writes become durable.
    pub fn complete_fsync(&mut self) -> Synced {
        let covered = self.syncing.take().expect("an fsync is in flight");
        let mut synced = Synced::default();
        let writes: Vec<Write> = self.pending.drain(..covered).collect();
        for write in writes {
            match write {
                Write::HardState(hs) => {
                    assert!(hs.term >= self.hard_state.term, "hard state term went back");
                    self.hard_state = hs;
                    synced.hard_state = Some(hs);
                }
                Write::Entries(entries) => {
                    let first = entries[0].index;
                    assert!(
                        first >= self.log_start && first <= self.last().0 + 1,
                        "write of {first}.. leaves a gap or rewrites the compacted prefix"
                    );
                    self.log.truncate((first - self.log_start) as usize);
                    self.log.extend(entries);
                    synced.log = Some(self.last());
                    synced.group_from = Some(synced.group_from.map_or(first, |g| g.min(first)));
                }
                Write::Snapshot {
                    snapshot,
                    compact_to,
                } => {
                    assert!(
                        snapshot.meta.index <= self.last().0,
                        "snapshot of entries not durable"
                    );
                    if compact_to > self.log_start {
                        self.start_term = self.log[(compact_to - 1 - self.log_start) as usize].term;
                        self.log.drain(..(compact_to - self.log_start) as usize);
                        self.log_start = compact_to;
                    }
                    if self
                        .snapshot
                        .as_ref()
                        .is_none_or(|s| s.meta.index < snapshot.meta.index)
                    {
                        self.snapshot = Some(snapshot);
                    }
                }
                Write::Install(snapshot) => {
                    self.log.clear();
                    self.log_start = snapshot.meta.index + 1;
                    self.start_term = snapshot.meta.term;
                    synced.log = None;
                    synced.group_from = None;
                    synced.installed = Some(snapshot.meta.clone());
                    self.snapshot = Some(snapshot);
                }
            }
        }
        if self.silently_lost.is_some_and(|i| self.last().0 >= i) {
            self.silently_lost = None;
        }
        synced
    }

    /// Loses every write not made durable.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.syncing = None;
    }

    /// Damages the durable log of a crashed node as a bit flip in its last synced groups does
    /// once recovery cuts it: loses up to `entries` entries at its end, never the snapshot nor
    /// the entries the snapshot covers (the state machine restarts from it). Returns the first
    /// lost index and the index the log was durable through (what the real log's durability
    /// markers vouch for), or `None` if nothing could be lost.
    pub fn lose_tail(&mut self, entries: u64) -> Option<(Index, Index)> {
        assert!(self.pending.is_empty(), "damage a crashed disk only");
        let last = self.last().0;
        let keep_through = self
            .snapshot
            .as_ref()
            .map_or(0, |s| s.meta.index)
            .max(self.log_start - 1);
        let first_lost = last.saturating_sub(entries).max(keep_through) + 1;
        if first_lost > last {
            return None;
        }
        self.log.truncate((first_lost - self.log_start) as usize);
        Some((first_lost, last))
    }

    /// Loses the entries from `first` on as [`SimDisk::lose_tail`] does, but as the residual
    /// window of log/FORMAT.md does: no marker vouched for them, so recovery takes the cut for
    /// a torn write and nobody is told (only [`SimDisk::silently_lost`] remembers).
    pub fn lose_tail_silently(&mut self, first: Index) -> Option<(Index, Index)> {
        let lost = self.lose_tail((self.last().0 + 1).saturating_sub(first))?;
        self.silently_lost = Some(lost.1);
        Some(lost)
    }

    /// The last index lost by [`SimDisk::lose_tail_silently`] while the log has not been
    /// written that far again.
    pub fn silently_lost(&self) -> Option<Index> {
        self.silently_lost
    }

    /// Loses the hard state and the repair marker (both slots of the node's file damaged): a
    /// crashed disk then reads term 0, no vote.
    pub fn lose_hard_state(&mut self) {
        assert!(self.pending.is_empty(), "damage a crashed disk only");
        self.hard_state = HardState::default();
        self.repair_through = None;
    }

    /// The persisted repair marker (see [`SimDisk::lose_tail`]).
    pub fn repair_through(&self) -> Option<Index> {
        self.repair_through
    }

    /// Persists the repair marker, keeping the higher index if one is pending (a driver writes
    /// it before its node acts on the damaged log).
    pub fn set_repair_through(&mut self, index: Index) {
        self.repair_through = Some(self.repair_through.map_or(index, |i| i.max(index)));
    }

    /// Clears the repair marker (the core reported the log repaired), or drops it unused (the
    /// `CutAndCarryOn` mutation); returns what it was.
    pub fn take_repair_through(&mut self) -> Option<Index> {
        self.repair_through.take()
    }
}

impl Storage for SimDisk {
    fn first_index(&self) -> Index {
        self.log_start
    }

    fn last_index(&self) -> Index {
        self.last().0
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let first_index = self.log_start;
        if index + 1 < first_index {
            return Err(StorageError::Compacted { index, first_index });
        }
        if index + 1 == first_index {
            return Ok(self.start_term);
        }
        self.log
            .get((index - first_index) as usize)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.last().0,
            })
    }

    fn entries(&self, from: Index, to: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(from <= to, "bad range {from}..={to}");
        let (first_index, last_index) = (self.log_start, self.last().0);
        if from < first_index {
            return Err(StorageError::Compacted {
                index: from,
                first_index,
            });
        }
        if to > last_index {
            return Err(StorageError::Unavailable {
                index: to,
                last_index,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in &self.log[(from - first_index) as usize..=(to - first_index) as usize] {
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }

    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot.as_ref().map(|s| s.meta.clone())
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        bytes_max: u64,
    ) -> Result<(Arc<[u8]>, bool), StorageError> {
        let snapshot = self
            .snapshot
            .as_ref()
            .filter(|s| s.meta.index == index)
            .ok_or(StorageError::SnapshotUnavailable { index })?;
        let len = snapshot.data.len() as u64;
        let start = offset.min(len);
        let end = (start + bytes_max).min(len);
        let data = Arc::from(&snapshot.data[start as usize..end as usize]);
        Ok((data, end == len))
    }
}
