//! The in-memory index of durable entries: where each batch lies on disk, by index and offset.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

/// Location and identity of one durable entry (= one batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryLoc {
    pub index: u64,
    pub term: u64,
    pub base_offset: u64,
    pub record_count: u32,
    /// Segment sequence number.
    pub seg: u64,
    /// Byte position in the segment file.
    pub pos: u64,
    /// Total batch bytes.
    pub len: u32,
}

impl EntryLoc {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// An open segment, readable while the log writes and after it is dropped from the directory.
pub(crate) struct SegmentRef {
    pub seq: u64,
    pub file: Arc<File>,
    /// Highest index of any batch or marker the file holds, in any of its lives (stale and
    /// voided ones included): what a recycled file's `stale_index_max` must cover.
    pub index_max: u64,
    /// The file holds a truncation marker: it is never recycled (a stale marker could not be
    /// told from a new one).
    pub has_marker: bool,
}

impl SegmentRef {
    /// A segment whose file holds nothing of this life yet (only stale batches `<= stale_index_max`).
    pub fn new(seq: u64, file: Arc<File>, stale_index_max: u64) -> SegmentRef {
        SegmentRef {
            seq,
            file,
            index_max: stale_index_max,
            has_marker: false,
        }
    }

    /// Notes a batch (or marker) written to the file.
    pub fn note_written(&mut self, index: u64, marker: bool) {
        self.index_max = self.index_max.max(index);
        self.has_marker |= marker;
    }
}

/// Durable entries, contiguous by index, plus the positions just before and just after them.
pub(crate) struct LogIndex {
    pub entries: VecDeque<EntryLoc>,
    pub segments: VecDeque<SegmentRef>,
    /// Index of the first entry (== `next_index` when empty).
    pub first_index: u64,
    /// Offset of the first entry's first record.
    pub start_offset: u64,
    /// Term of the entry at `first_index - 1` (0 if none).
    pub prev_term: u64,
    pub next_index: u64,
    pub next_offset: u64,
    /// Term of the entry at `next_index - 1`.
    pub last_term: u64,
}

impl LogIndex {
    /// An empty index whose next entry is `index` at `offset`, after an entry of `prev_term`.
    pub fn starting_at(index: u64, offset: u64, prev_term: u64) -> LogIndex {
        LogIndex {
            entries: VecDeque::new(),
            segments: VecDeque::new(),
            first_index: index,
            start_offset: offset,
            prev_term,
            next_index: index,
            next_offset: offset,
            last_term: prev_term,
        }
    }

    /// Appends an entry that continues the log.
    pub fn push(&mut self, e: EntryLoc) {
        assert_eq!(e.index, self.next_index, "durable entries are contiguous");
        assert_eq!(
            e.base_offset, self.next_offset,
            "durable offsets are contiguous"
        );
        self.next_index = e.index + 1;
        self.next_offset = e.next_offset();
        self.last_term = e.term;
        self.entries.push_back(e);
    }

    /// Voids entries from `index` on; the log continues at `index`/`next_offset` after `prev_term`.
    pub fn truncate_suffix(&mut self, index: u64, next_offset: u64, prev_term: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            self.entries.pop_back();
        }
        if index <= self.first_index {
            self.first_index = index;
            self.start_offset = next_offset;
            self.prev_term = prev_term;
        }
        self.next_index = index;
        self.next_offset = next_offset;
        self.last_term = prev_term;
    }

    /// Position in `entries` of the first batch that holds `offset` or starts after it.
    pub fn position_of_offset(&self, offset: u64) -> usize {
        self.entries.partition_point(|e| e.next_offset() <= offset)
    }

    /// The file of segment `seq`.
    pub fn segment_file(&self, seq: u64) -> Arc<File> {
        let i = self.segments.partition_point(|s| s.seq < seq);
        let s = &self.segments[i];
        assert_eq!(s.seq, seq, "every entry's segment is open");
        Arc::clone(&s.file)
    }

    /// Forgets whole segments (never `keep_seq` or later) whose entries all lie below `index`;
    /// returns them.
    pub fn drop_segments_below(&mut self, index: u64, keep_seq: u64) -> Vec<SegmentRef> {
        let mut dropped = Vec::new();
        while let Some(seg) = self.segments.front() {
            if seg.seq >= keep_seq {
                break;
            }
            let seq = seg.seq;
            let next_seg_first = self
                .entries
                .iter()
                .find(|e| e.seg > seq)
                .map_or(self.next_index, |e| e.index);
            if next_seg_first > index {
                break;
            }
            while let Some(e) = self.entries.front().copied().filter(|e| e.seg <= seq) {
                self.entries.pop_front();
                self.first_index = e.index + 1;
                self.start_offset = e.next_offset();
                self.prev_term = e.term;
            }
            dropped.extend(self.segments.pop_front());
        }
        dropped
    }
}
