//! A sparse index of record timestamps over the committed log, for Kafka's ListOffsets by
//! timestamp ("the first offset whose timestamp is at least T", and the record with the
//! largest timestamp).
//!
//! Producer timestamps need not grow with offsets, so a lookup cannot bisect the log. The index
//! cuts the committed log into spans of about [`SPAN_BYTES`] and keeps, per span, its first
//! offset and the largest timestamp in it: the first record at or after T lies in the first
//! span whose largest timestamp is at least T, so a lookup walks the spans (16 bytes each in
//! memory: 256 KiB per GiB of log) and then reads at most one span of the log. Spans are kept
//! for what the log retains and dropped with its prefix. Nothing is stored on disk: the node
//! rebuilds the index from its log when it opens (the retained part the snapshot covers) and
//! from each entry it applies.

use std::collections::VecDeque;

/// Log bytes per span: what a lookup reads at most, beyond one batch.
pub const SPAN_BYTES: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Offset of the span's first record.
    first_offset: u64,
    /// Largest record timestamp in the span (`None`: no record with a timestamp yet).
    max_timestamp: Option<u64>,
    bytes: u64,
}

/// Spans of the committed log, in offset order.
#[derive(Debug, Default)]
pub struct TimeIndex {
    spans: VecDeque<Span>,
    /// The log's start: the first span may begin below it (its records below are gone, its
    /// largest timestamp may be theirs).
    start_offset: u64,
    /// One past the last indexed record.
    end_offset: u64,
}

impl TimeIndex {
    /// Notes a committed data batch `[base_offset, next_offset)` of `bytes` log bytes whose
    /// largest record timestamp is `max_timestamp`. Batches come in offset order; a gap (a
    /// follower that installed a snapshot) starts a new span.
    pub fn note(
        &mut self,
        base_offset: u64,
        next_offset: u64,
        bytes: u64,
        max_timestamp: Option<u64>,
    ) {
        assert!(
            base_offset >= self.end_offset,
            "committed batches are indexed in offset order: {base_offset} after {}",
            self.end_offset
        );
        let continues = base_offset == self.end_offset;
        match self.spans.back_mut() {
            Some(span) if continues && span.bytes < SPAN_BYTES => {
                span.max_timestamp = span.max_timestamp.max(max_timestamp);
                span.bytes += bytes;
            }
            _ => self.spans.push_back(Span {
                first_offset: base_offset,
                max_timestamp,
                bytes,
            }),
        }
        self.end_offset = next_offset;
    }

    /// The log now starts at `offset`: spans wholly below it go.
    pub fn forget_below(&mut self, offset: u64) {
        self.start_offset = self.start_offset.max(offset);
        while self
            .spans
            .front()
            .is_some_and(|_| self.span_end(0) <= self.start_offset)
        {
            self.spans.pop_front();
        }
    }

    /// The first record (offset, timestamp) whose timestamp is at least `timestamp`.
    /// `read(from, to, visit)` visits every record of the log in `[from, to)` in order; it is
    /// called for one span, or two when the first span's match lay below the log start.
    pub fn find_at_or_after<E>(
        &self,
        timestamp: u64,
        mut read: impl FnMut(u64, u64, &mut dyn FnMut(u64, u64)) -> Result<(), E>,
    ) -> Result<Option<(u64, u64)>, E> {
        for at in 0..self.spans.len() {
            if self.spans[at].max_timestamp.is_none_or(|m| m < timestamp) {
                continue;
            }
            let (from, to) = self.span_range(at);
            let mut found = None;
            read(from, to, &mut |offset, ts| {
                if found.is_none() && ts >= timestamp {
                    found = Some((offset, ts));
                }
            })?;
            if found.is_some() {
                return Ok(found);
            }
            // Only a span cut by the log start can miss: its match was below the cut.
        }
        Ok(None)
    }

    /// The first record (offset, timestamp) with the largest timestamp; `read` as for
    /// [`TimeIndex::find_at_or_after`].
    pub fn find_largest<E>(
        &self,
        mut read: impl FnMut(u64, u64, &mut dyn FnMut(u64, u64)) -> Result<(), E>,
    ) -> Result<Option<(u64, u64)>, E> {
        let Some(first) = self.spans.front() else {
            return Ok(None);
        };
        let mut first_max = first.max_timestamp;
        if first.first_offset < self.start_offset {
            // Its largest may have been cut away: learn what remains of it.
            let (from, to) = self.span_range(0);
            first_max = None;
            read(from, to, &mut |_, ts| first_max = first_max.max(Some(ts)))?;
        }
        let largest = self
            .spans
            .iter()
            .skip(1)
            .filter_map(|s| s.max_timestamp)
            .chain(first_max)
            .max();
        let Some(largest) = largest else {
            return Ok(None);
        };
        let at = if first_max == Some(largest) {
            0
        } else {
            (1..self.spans.len())
                .find(|&i| self.spans[i].max_timestamp == Some(largest))
                .expect("the largest is some span's")
        };
        let (from, to) = self.span_range(at);
        let mut found = None;
        read(from, to, &mut |offset, ts| {
            if found.is_none() && ts == largest {
                found = Some((offset, ts));
            }
        })?;
        Ok(found)
    }

    /// The offsets of span `at` the log still holds.
    fn span_range(&self, at: usize) -> (u64, u64) {
        (
            self.spans[at].first_offset.max(self.start_offset),
            self.span_end(at),
        )
    }

    fn span_end(&self, at: usize) -> u64 {
        self.spans
            .get(at + 1)
            .map_or(self.end_offset, |s| s.first_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::convert::Infallible;

    /// Indexes a log of batches `(record timestamps, bytes)` starting at offset `start`;
    /// returns the index and every record `(offset, timestamp)`.
    fn indexed(start: u64, batches: &[(Vec<u64>, u64)]) -> (TimeIndex, Vec<(u64, u64)>) {
        let mut index = TimeIndex::default();
        let mut records = Vec::new();
        let mut offset = start;
        for (timestamps, bytes) in batches {
            let next = offset + timestamps.len() as u64;
            index.note(offset, next, *bytes, timestamps.iter().copied().max());
            records.extend((offset..).zip(timestamps.iter().copied()));
            offset = next;
        }
        (index, records)
    }

    /// The log's reader as the node has it: only records at or after the log start exist;
    /// counts the records read.
    fn reader<'a>(
        records: &'a [(u64, u64)],
        start: u64,
        read: &'a mut u64,
    ) -> impl FnMut(u64, u64, &mut dyn FnMut(u64, u64)) -> Result<(), Infallible> + 'a {
        move |from, to, visit| {
            assert!(from >= start, "read below the log start");
            for &(o, t) in records.iter().filter(|&&(o, _)| o >= from && o < to) {
                *read += 1;
                visit(o, t);
            }
            Ok(())
        }
    }

    #[test]
    fn a_lookup_reads_one_span_and_spans_close_at_their_size() {
        let mut index = TimeIndex::default();
        let records = [(0, 5), (10, 9), (20, 7), (30, 3)];
        index.note(0, 10, SPAN_BYTES - 1, Some(5));
        index.note(10, 20, 1, Some(9));
        index.note(20, 30, 1, Some(7));
        index.note(30, 40, 1, Some(3));
        let mut read = 0;
        let found = index.find_at_or_after(8, reader(&records, 0, &mut read));
        assert_eq!(found, Ok(Some((10, 9))));
        assert_eq!(read, 2, "the first span: its two batches");
        let mut read = 0;
        let found = index.find_at_or_after(6, reader(&records, 0, &mut read));
        assert_eq!(
            found,
            Ok(Some((10, 9))),
            "5 < 6: the first record at or after"
        );
        let mut read = 0;
        let found = index.find_at_or_after(10, reader(&records, 0, &mut read));
        assert_eq!(found, Ok(None));
        assert_eq!(read, 0, "no span holds a match: nothing read");
        let mut read = 0;
        assert_eq!(
            index.find_largest(reader(&records, 0, &mut read)),
            Ok(Some((10, 9)))
        );
    }

    #[test]
    fn a_span_cut_by_the_log_start_is_read_from_the_start_and_its_lost_largest_forgotten() {
        let mut index = TimeIndex::default();
        let records = [(0, 50), (10, 9), (20, 7)];
        index.note(0, 10, 1, Some(50));
        index.note(10, 20, 1, Some(9));
        index.note(20, 30, SPAN_BYTES, Some(7));
        index.forget_below(10);
        let kept = &records[1..];
        let mut read = 0;
        assert_eq!(
            index.find_at_or_after(8, reader(kept, 10, &mut read)),
            Ok(Some((10, 9)))
        );
        assert_eq!(
            index.find_largest(reader(kept, 10, &mut read)),
            Ok(Some((10, 9))),
            "50 was cut away"
        );
        index.forget_below(30);
        assert_eq!(
            index.find_at_or_after(0, reader(&[], 30, &mut read)),
            Ok(None)
        );
    }

    proptest! {
        /// Against a search of every record the log still holds, for timestamps out of order
        /// and logs cut at any offset: the first offset at or after a timestamp, and the first
        /// record with the largest timestamp.
        #[test]
        fn lookups_match_a_search_of_every_record(
            batches in proptest::collection::vec(
                (proptest::collection::vec(0u64..1_000, 1..20), 1u64..SPAN_BYTES / 2),
                1..60,
            ),
            cut in 0usize..400,
            probe in 0u64..1_100,
        ) {
            let (mut index, records) = indexed(1_000, &batches);
            let end = records.last().unwrap().0 + 1;
            let start = records.get(cut).map_or(end, |r| r.0);
            index.forget_below(start);
            let kept: Vec<_> = records.iter().copied().filter(|&(o, _)| o >= start).collect();
            let mut read = 0;
            let expected = kept.iter().copied().find(|&(_, t)| t >= probe);
            let found = index.find_at_or_after(probe, reader(&kept, start, &mut read));
            prop_assert_eq!(found, Ok(expected));
            let largest = kept.iter().map(|&(_, t)| t).max();
            let expected = largest.and_then(|m| kept.iter().copied().find(|&(_, t)| t == m));
            let found = index.find_largest(reader(&kept, start, &mut read));
            prop_assert_eq!(found, Ok(expected));
        }
    }
}
