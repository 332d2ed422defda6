//! A simulated disk: writes sit in a volatile queue until a simulated fsync covering them
//! completes; a crash loses every write not yet covered by a completed fsync. It is also the
//! core's [`Storage`]: reads see durable data only.

use crate::message::{Entry, HardState, Index, Term};
use crate::storage::{Storage, StorageError};

/// One write as the core handed it out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Write {
    HardState(HardState),
    /// Replaces stored entries from `entries[0].index` on.
    Entries(Vec<Entry>),
}

/// What a completed fsync made durable, to acknowledge to the core.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Hard state now durable, if the fsync covered one.
    pub hard_state: Option<HardState>,
    /// Last `(index, term)` of the durable log, if the fsync covered entries.
    pub log: Option<(Index, Term)>,
}

/// One node's disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SimDisk {
    hard_state: HardState,
    log: Vec<Entry>,
    pending: Vec<Write>,
    /// Writes at the front of `pending` that the in-flight fsync covers.
    syncing: Option<usize>,
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

    /// Durable log.
    pub fn log(&self) -> &[Entry] {
        &self.log
    }

    /// True when the durable log holds `(index, term)`.
    pub fn holds(&self, index: Index, term: Term) -> bool {
        index >= 1
            && self
                .log
                .get(index as usize - 1)
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
        for write in self.pending.drain(..covered) {
            match write {
                Write::HardState(hs) => {
                    assert!(hs.term >= self.hard_state.term, "hard state term went back");
                    self.hard_state = hs;
                    synced.hard_state = Some(hs);
                }
                Write::Entries(entries) => {
                    let first = entries[0].index;
                    assert!(
                        first >= 1 && first as usize <= self.log.len() + 1,
                        "write leaves a gap"
                    );
                    self.log.truncate(first as usize - 1);
                    self.log.extend(entries);
                    let last = self.log.last().expect("just extended");
                    synced.log = Some((last.index, last.term));
                }
            }
        }
        synced
    }

    /// Loses every write not made durable.
    pub fn crash(&mut self) {
        self.pending.clear();
        self.syncing = None;
    }
}

impl Storage for SimDisk {
    fn first_index(&self) -> Index {
        1
    }

    fn last_index(&self) -> Index {
        self.log.len() as Index
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index == 0 {
            return Ok(0);
        }
        self.log
            .get(index as usize - 1)
            .map(|e| e.term)
            .ok_or(StorageError::Unavailable {
                index,
                last_index: self.log.len() as Index,
            })
    }

    fn entries(&self, from: Index, to: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        assert!(from >= 1 && from <= to, "bad range {from}..={to}");
        let last_index = self.log.len() as Index;
        if to > last_index {
            return Err(StorageError::Unavailable {
                index: to,
                last_index,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in &self.log[from as usize - 1..to as usize] {
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }
}
