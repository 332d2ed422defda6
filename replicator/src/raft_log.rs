//! The core's view of its log. The durable prefix lives in the driver's [`Storage`]; in memory
//! the core keeps only the entries that are not durable yet (they exist nowhere else it may
//! read) and a bounded cache of the most recent durable ones, so a follower a little behind, or
//! entries about to be applied, are served without a storage read.

use std::collections::VecDeque;

use crate::message::{Entry, Index, SnapshotMeta, Term};
use crate::storage::{Storage, StorageError};

/// The log: storage for the durable prefix, memory for the tail.
///
/// Invariants: `mem` holds exactly the entries `mem_first()..=last_index`, dense; every entry
/// above `durable` is in `mem`; `durable < persist_from <= last_index + 1`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RaftLog<S> {
    storage: S,
    mem: VecDeque<Entry>,
    last_index: Index,
    last_term: Term,
    /// Entries up to here are durable, so storage can serve them.
    durable: Index,
    /// Entries from here on have not been handed out for persistence yet.
    persist_from: Index,
    /// Bytes of durable entries kept in `mem` (the cache), bounded by `cache_bytes_max`.
    cached_bytes: u64,
    /// Bytes of entries in `mem` that are not durable yet.
    unstable_bytes: u64,
    cache_bytes_max: u64,
}

impl<S: Storage> RaftLog<S> {
    /// The log as `storage` holds it (all of it durable), caching up to `cache_bytes_max`.
    pub fn new(storage: S, cache_bytes_max: u64) -> Result<Self, StorageError> {
        let last_index = storage.last_index();
        assert!(
            last_index + 1 >= storage.first_index(),
            "storage ends before it starts"
        );
        let last_term = storage.term(last_index)?;
        Ok(RaftLog {
            storage,
            mem: VecDeque::new(),
            last_index,
            last_term,
            durable: last_index,
            persist_from: last_index + 1,
            cached_bytes: 0,
            unstable_bytes: 0,
            cache_bytes_max,
        })
    }

    /// The driver's storage.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The driver's storage, for the driver to write to.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back (the node stops).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> Index {
        self.last_index
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.last_term
    }

    /// Highest index known durable.
    pub fn durable_index(&self) -> Index {
        self.durable
    }

    /// First index not yet handed out for persistence.
    pub fn persist_from(&self) -> Index {
        self.persist_from
    }

    /// Bytes of entries held only in memory (not durable yet).
    pub fn unstable_bytes(&self) -> u64 {
        self.unstable_bytes
    }

    /// Bytes of durable entries cached in memory.
    pub fn cached_bytes(&self) -> u64 {
        self.cached_bytes
    }

    fn mem_first(&self) -> Index {
        self.last_index + 1 - self.mem.len() as Index
    }

    /// Lowest index whose term can be read: the end of the compacted prefix, unless the cache
    /// still holds entries below it.
    fn first_term_index(&self) -> Index {
        let storage_first = self.storage.first_index();
        if self.mem_first() < storage_first {
            self.mem_first()
        } else {
            storage_first - 1
        }
    }

    fn mem_entry(&self, index: Index) -> &Entry {
        &self.mem[(index - self.mem_first()) as usize]
    }

    /// Term at `index` (index 0 has term 0 while nothing is compacted).
    pub fn term(&self, index: Index) -> Result<Term, StorageError> {
        if index > self.last_index {
            return Err(StorageError::Unavailable {
                index,
                last_index: self.last_index,
            });
        }
        if index == self.last_index {
            return Ok(self.last_term);
        }
        if index >= self.mem_first() {
            return Ok(self.mem_entry(index).term);
        }
        self.storage.term(index)
    }

    /// True when the log holds an entry `(index, term)` (or `index` is the compacted prefix's end
    /// with that term).
    pub fn matches(&self, index: Index, term: Term) -> Result<bool, StorageError> {
        match self.term(index) {
            Ok(t) => Ok(t == term),
            Err(StorageError::Unavailable { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Entries `from..=to`, at least one when `from <= to`, further ones while the total
    /// stays within `bytes_max`.
    pub fn entries(
        &self,
        from: Index,
        to: Index,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        assert!(
            from >= 1 && to <= self.last_index,
            "reading outside the log"
        );
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mem_first = self.mem_first();
        let mut bytes = 0;
        if from < mem_first {
            let stored_to = to.min(mem_first - 1);
            out = self.storage.entries(from, stored_to, bytes_max)?;
            assert!(
                !out.is_empty()
                    && out.len() as Index <= stored_to - from + 1
                    && out.iter().zip(from..).all(|(e, i)| e.index == i),
                "storage returned entries other than {from}..={stored_to}"
            );
            bytes = out.iter().map(Entry::size_bytes).sum();
            if out.last().map(|e| e.index) != Some(stored_to) {
                return Ok(out);
            }
        }
        for index in from.max(mem_first)..=to {
            let e = self.mem_entry(index);
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        Ok(out)
    }

    /// The entry at `index`.
    pub fn entry(&self, index: Index) -> Result<Entry, StorageError> {
        let mut one = self.entries(index, index, 0)?;
        Ok(one.pop().expect("one entry asked for"))
    }

    /// The entry at `index` if memory holds it (unstable, or cached since durable); never
    /// reads storage.
    pub fn entry_in_memory(&self, index: Index) -> Option<&Entry> {
        (index >= self.mem_first() && index <= self.last_index).then(|| self.mem_entry(index))
    }

    /// Appends one entry at the end (not durable yet).
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index + 1, "append must be dense");
        assert!(
            entry.term >= self.last_term,
            "terms must not decrease along the log"
        );
        self.last_index = entry.index;
        self.last_term = entry.term;
        self.unstable_bytes += entry.size_bytes();
        self.mem.push_back(entry);
    }

    /// First index in `entries` whose term differs from ours (or is beyond our end), if any.
    pub fn find_conflict(&self, entries: &[Entry]) -> Result<Option<Index>, StorageError> {
        for e in entries {
            if !self.matches(e.index, e.term)? {
                return Ok(Some(e.index));
            }
        }
        Ok(None)
    }

    /// Drops entries from `from` on and appends `entries`, which must start at `from`. Durability
    /// of the dropped entries is forgotten.
    pub fn truncate_and_append(
        &mut self,
        from: Index,
        entries: &[Entry],
    ) -> Result<(), StorageError> {
        assert!(from >= 1 && from <= self.last_index + 1);
        assert!(entries.first().is_none_or(|e| e.index == from));
        let prev_term = self.term(from - 1)?;
        let keep = from.saturating_sub(self.mem_first()) as usize;
        for e in self.mem.drain(keep.min(self.mem.len())..) {
            if e.index <= self.durable {
                self.cached_bytes -= e.size_bytes();
            } else {
                self.unstable_bytes -= e.size_bytes();
            }
        }
        self.last_index = from - 1;
        self.last_term = prev_term;
        self.durable = self.durable.min(from - 1);
        self.persist_from = self.persist_from.min(from);
        for e in entries {
            self.push(e.clone());
        }
        Ok(())
    }

    /// Entries not handed out for persistence yet; they count as handed out from now on.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        if self.persist_from > self.last_index {
            return Vec::new();
        }
        let start = (self.persist_from - self.mem_first()) as usize;
        self.persist_from = self.last_index + 1;
        self.mem.range(start..).cloned().collect()
    }

    /// Records that the log is durable through `index`, whose entry had `term` when written;
    /// false (and nothing changes) if that write was since overwritten or is not news.
    pub fn durable_to(&mut self, index: Index, term: Term) -> bool {
        if index <= self.durable || index >= self.persist_from || self.mem_entry(index).term != term
        {
            return false;
        }
        for i in self.durable + 1..=index {
            let bytes = self.mem_entry(i).size_bytes();
            self.unstable_bytes -= bytes;
            self.cached_bytes += bytes;
        }
        self.durable = index;
        while self.cached_bytes > self.cache_bytes_max {
            let front = self.mem.front().expect("cached bytes live in mem");
            if front.index > self.durable {
                break;
            }
            self.cached_bytes -= front.size_bytes();
            self.mem.pop_front();
        }
        true
    }

    /// The first index of the run of entries with the same term as `index` (binary search:
    /// terms never decrease along the log).
    pub fn first_index_of_term_at(&self, index: Index) -> Result<Index, StorageError> {
        let term = self.term(index)?;
        let mut lo = self.first_term_index().max(1);
        if lo > index || self.term(lo)? == term {
            return Ok(lo.min(index));
        }
        // term(lo) < term == term(hi)
        let mut hi = index;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.term(mid)? < term {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(hi)
    }

    /// The last index holding an entry of `term` (or the compacted prefix's end, if it has that
    /// term), if the log has one.
    pub fn last_index_of_term(&self, term: Term) -> Result<Option<Index>, StorageError> {
        if self.last_term <= term {
            return Ok((self.last_term == term).then_some(self.last_index));
        }
        let mut lo = self.first_term_index();
        if self.term(lo)? > term {
            return Ok(None);
        }
        // term(lo) <= term < term(hi)
        let mut hi = self.last_index;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.term(mid)? <= term {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok((self.term(lo)? == term).then_some(lo))
    }

    /// Replaces the whole log by the end of installed snapshot `meta` (the storage already
    /// restarted its log after it, durably): the log continues at `meta.index + 1`.
    pub fn restore(&mut self, meta: &SnapshotMeta) {
        self.mem.clear();
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.durable = meta.index;
        self.persist_from = meta.index + 1;
        self.cached_bytes = 0;
        self.unstable_bytes = 0;
    }

    /// Asserts the structural invariants.
    pub fn check_invariants(&self) {
        assert!(
            self.mem_first() <= self.durable + 1,
            "unstable entries live in memory"
        );
        assert!(self.durable < self.persist_from && self.persist_from <= self.last_index + 1);
        debug_assert!(self
            .mem
            .iter()
            .zip(self.mem_first()..)
            .all(|(e, i)| e.index == i));
        debug_assert!(self.mem.back().is_none_or(|e| e.term == self.last_term));
        debug_assert_eq!(
            self.cached_bytes + self.unstable_bytes,
            self.mem.iter().map(Entry::size_bytes).sum::<u64>()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::{EntryKind, HardState};
    use crate::sim::disk::SimDisk;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Command,
            payload: Arc::from(vec![index as u8; 8]),
        }
    }

    /// Writes what the log hands out to its disk and makes it durable.
    fn persist(log: &mut RaftLog<SimDisk>) {
        let entries = log.take_unpersisted();
        let last = entries.last().map(|e| (e.index, e.term));
        if !entries.is_empty() {
            log.storage_mut().write_entries(entries);
        }
        if log.storage_mut().start_fsync() {
            log.storage_mut().complete_fsync();
        }
        if let Some((index, term)) = last {
            assert!(log.durable_to(index, term));
        }
    }

    /// A log whose terms are 1,1,1,2,2,3,3,3,3,3 at indexes 1..=10, all durable.
    fn durable_log(cache_bytes_max: u64) -> RaftLog<SimDisk> {
        let mut log = RaftLog::new(SimDisk::default(), cache_bytes_max).unwrap();
        for (i, t) in (1..).zip([1, 1, 1, 2, 2, 3, 3, 3, 3, 3]) {
            log.push(entry(i, t));
        }
        persist(&mut log);
        log
    }

    #[test]
    fn durable_entries_beyond_the_cache_are_read_back_from_storage() {
        let per_entry = entry(1, 1).size_bytes();
        let log = durable_log(3 * per_entry);
        assert_eq!(
            log.cached_bytes(),
            3 * per_entry,
            "cache holds only 3 entries"
        );
        assert_eq!(log.unstable_bytes(), 0);
        let all = log.entries(1, 10, u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(
            log.entries(2, 10, 2 * per_entry).unwrap().len(),
            2,
            "byte limit holds"
        );
        assert_eq!(log.term(4), Ok(2));
        log.check_invariants();
    }

    #[test]
    fn unstable_entries_stay_in_memory_whatever_the_cache_size() {
        let mut log = durable_log(0);
        assert_eq!(log.cached_bytes(), 0);
        log.push(entry(11, 4));
        log.push(entry(12, 4));
        assert_eq!(log.unstable_bytes(), 2 * entry(1, 1).size_bytes());
        assert_eq!(log.entries(10, 12, u64::MAX).unwrap().len(), 3);
        assert!(
            !log.durable_to(12, 3),
            "a write of another term is not ours"
        );
        log.check_invariants();
    }

    #[test]
    fn truncating_into_the_storage_range_forgets_durability_and_reads_the_new_entries() {
        let mut log = durable_log(0);
        log.truncate_and_append(5, &[entry(5, 4), entry(6, 4)])
            .unwrap();
        assert_eq!(log.durable_index(), 4);
        assert_eq!(log.persist_from(), 5);
        assert_eq!((log.last_index(), log.last_term()), (6, 4));
        assert_eq!(
            log.term(5),
            Ok(4),
            "memory answers above the durable prefix"
        );
        assert_eq!(log.term(4), Ok(2), "storage answers below it");
        persist(&mut log);
        assert_eq!(log.entries(1, 6, u64::MAX).unwrap()[4], entry(5, 4));
        log.check_invariants();
    }

    #[test]
    fn term_boundaries_are_found_across_storage_and_memory() {
        let mut log = durable_log(2 * entry(1, 1).size_bytes());
        log.push(entry(11, 5));
        assert_eq!(log.first_index_of_term_at(9), Ok(6));
        assert_eq!(log.first_index_of_term_at(5), Ok(4));
        assert_eq!(log.first_index_of_term_at(2), Ok(1));
        assert_eq!(log.first_index_of_term_at(11), Ok(11));
        assert_eq!(log.last_index_of_term(1), Ok(Some(3)));
        assert_eq!(log.last_index_of_term(3), Ok(Some(10)));
        assert_eq!(log.last_index_of_term(4), Ok(None));
        assert_eq!(log.last_index_of_term(5), Ok(Some(11)));
        assert_eq!(log.last_index_of_term(6), Ok(None));
    }

    #[test]
    fn a_restarted_log_reads_everything_from_storage() {
        let disk =
            SimDisk::with_durable(HardState::default(), (1..=4).map(|i| entry(i, 1)).collect());
        let log = RaftLog::new(disk, 1 << 20).unwrap();
        assert_eq!(
            (log.last_index(), log.last_term(), log.durable_index()),
            (4, 1, 4)
        );
        assert_eq!(log.entries(1, 4, u64::MAX).unwrap().len(), 4);
        assert_eq!(
            log.term(5),
            Err(StorageError::Unavailable {
                index: 5,
                last_index: 4
            })
        );
    }
}
