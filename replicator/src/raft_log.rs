//! The core's view of its log: every entry from index 1 to the last, durable or not.

use crate::message::{Entry, Index, Term};

/// Entries in index order; `entries[i].index == i + 1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RaftLog {
    entries: Vec<Entry>,
}

impl RaftLog {
    /// A log holding `entries`, which must be dense from index 1.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, i as Index + 1, "log must be dense from index 1");
            if i > 0 {
                assert!(
                    e.term >= entries[i - 1].term,
                    "terms must not decrease along the log"
                );
            }
        }
        RaftLog { entries }
    }

    /// Index of the last entry (0 when empty).
    pub fn last_index(&self) -> Index {
        self.entries.len() as Index
    }

    /// Term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(0, |e| e.term)
    }

    /// Term at `index`; index 0 has term 0; `None` beyond the end.
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == 0 {
            return Some(0);
        }
        self.entries.get(index as usize - 1).map(|e| e.term)
    }

    /// The entry at `index`, if present.
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        index
            .checked_sub(1)
            .and_then(|i| self.entries.get(i as usize))
    }

    /// Entries from `from` on, at least one if any, further ones while under `bytes_max`.
    pub fn slice_from(&self, from: Index, bytes_max: u64) -> Vec<Entry> {
        assert!(from >= 1);
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().skip(from as usize - 1) {
            if !out.is_empty() && bytes + e.size_bytes() > bytes_max {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        out
    }

    /// Entries in `[from, to]`.
    pub fn range(&self, from: Index, to: Index) -> &[Entry] {
        assert!(from >= 1 && to <= self.last_index());
        if from > to {
            return &[];
        }
        &self.entries[from as usize - 1..to as usize]
    }

    /// Appends one entry at the end.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1, "append must be dense");
        assert!(
            entry.term >= self.last_term(),
            "terms must not decrease along the log"
        );
        self.entries.push(entry);
    }

    /// First index in `entries` whose term differs from ours (or is beyond our end), if any.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<Index> {
        entries
            .iter()
            .find(|e| self.term(e.index) != Some(e.term))
            .map(|e| e.index)
    }

    /// Drops entries from `from` on and appends `entries`, which must start at `from`.
    pub fn truncate_and_append(&mut self, from: Index, entries: &[Entry]) {
        assert!(from >= 1 && from <= self.last_index() + 1);
        self.entries.truncate(from as usize - 1);
        for e in entries {
            self.push(e.clone());
        }
    }

    /// The first index of the run of entries with the same term as `index`.
    pub fn first_index_of_term_at(&self, index: Index) -> Index {
        let term = self.term(index).expect("index within the log");
        let mut i = index;
        while i > 1 && self.term(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding an entry of `term`, if the log has one.
    pub fn last_index_of_term(&self, term: Term) -> Option<Index> {
        self.entries
            .iter()
            .rev()
            .take_while(|e| e.term >= term)
            .find(|e| e.term == term)
            .map(|e| e.index)
    }
}
