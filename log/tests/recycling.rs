//! Segments dropped by prefix truncation are recycled: their old batches stay on disk behind the
//! new life's end and must never be taken for log content, whatever recovery finds there.

mod common;

use std::sync::atomic::Ordering;

use common::{all_tags, append_waited, batch, config, frames, marks, scratch};
use raftline_log::batch::check_frame;
use raftline_log::segment::{segment_path, SegmentHeader};
use raftline_log::{BackendKind, Log, LogConfig};

fn recycled(log: &Log) -> u64 {
    log.stats().segments_recycled.load(Ordering::Relaxed)
}

fn segment_seqs(dir: &std::path::Path) -> Vec<u64> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

fn header(dir: &std::path::Path, seq: u64) -> SegmentHeader {
    SegmentHeader::decode(&std::fs::read(segment_path(dir, seq)).unwrap()[..4096]).unwrap()
}

/// Fills segments, drops the prefix, and keeps appending until a dropped segment was recycled
/// and the log is writing into it. Returns the log, the next tag and the recycled segment's seq.
fn log_writing_into_a_recycled_segment(cfg: &LogConfig) -> (Log, u64, u64) {
    let log = Log::open(cfg.clone()).unwrap();
    let mut tag = 0;
    while segment_seqs(&cfg.dir).len() < 3 {
        append_waited(&log, 1, [tag]);
        tag += 1;
    }
    let dropped = log.truncate_prefix(log.last_index()).unwrap();
    assert!(
        dropped >= 1,
        "whole segments below the last index are dropped"
    );
    while recycled(&log) == 0 {
        append_waited(&log, 1, [tag]);
        tag += 1;
        assert!(tag < 10_000, "no segment was ever recycled");
    }
    let seq = *segment_seqs(&cfg.dir).last().unwrap();
    assert!(header(&cfg.dir, seq).stale_index_max > 0);
    (log, tag, seq)
}

fn a_recycled_segment_recovers_exactly_the_new_life(kind: BackendKind) {
    let dir = scratch();
    let cfg = config(dir.path(), kind);
    let (log, mut tag, seq) = log_writing_into_a_recycled_segment(&cfg);
    // A few groups into the recycled body: its stale batches follow the new end.
    for _ in 0..3 {
        append_waited(&log, 1, [tag]);
        tag += 1;
    }
    let (first, last, tags) = (log.first_index(), log.last_index(), all_tags(&log));
    drop(log);
    let data = std::fs::read(segment_path(dir.path(), seq)).unwrap();
    let h = header(dir.path(), seq);
    let stale_after_end = (4096..data.len())
        .step_by(4096)
        .any(|q| check_frame(&data[q..]).is_ok_and(|b| b.index <= h.stale_index_max));
    assert!(
        stale_after_end,
        "the recycled body still holds stale batches"
    );
    for round in 0..2 {
        let log = Log::open(cfg.clone()).unwrap();
        assert_eq!(
            (log.first_index(), log.last_index()),
            (first, last),
            "round {round}"
        );
        assert_eq!(all_tags(&log), tags, "round {round}");
        assert_eq!(log.torn_bytes_cut(), 0, "a clean end is not a torn tail");
    }
}

fn appends_after_reopen_of_a_recycled_tail_survive(kind: BackendKind) {
    let dir = scratch();
    let cfg = config(dir.path(), kind);
    let (log, tag, _) = log_writing_into_a_recycled_segment(&cfg);
    let mut tags = all_tags(&log);
    drop(log);
    // Reopen, append, reopen, many times: each end lies on stale bytes of the earlier life.
    for tag in tag..tag + 20 {
        let log = Log::open(cfg.clone()).unwrap();
        assert_eq!(all_tags(&log), tags);
        append_waited(&log, 2, [tag]);
        tags.push(tag);
    }
}

fn a_torn_group_in_a_recycled_segment_is_cut_and_never_resurrected(kind: BackendKind) {
    let dir = scratch();
    let cfg = config(dir.path(), kind);
    let (log, mut tag, seq) = log_writing_into_a_recycled_segment(&cfg);
    append_waited(&log, 1, [tag]);
    tag += 1;
    let kept = all_tags(&log);
    let kept_last = log.last_index();
    // The last group: two batches written together (one sector).
    let t1 = log.append(None, 1, batch(tag, 3)).unwrap();
    let t2 = log.append(None, 1, batch(tag + 1, 3)).unwrap();
    t1.wait().unwrap();
    t2.wait().unwrap();
    drop(log);
    let path = segment_path(dir.path(), seq);
    let pristine = std::fs::read(&path).unwrap();
    let stale_max = header(dir.path(), seq).stale_index_max;
    let first = frames(dir.path(), seq)
        .into_iter()
        .find(|&(p, _)| check_frame(&pristine[p..]).is_ok_and(|h| h.index == kept_last + 1))
        .map(|(p, _)| p)
        .unwrap();
    // The group starts with the durability marker vouching for the one before.
    let group_start = first - first % 4096;
    assert!(marks(dir.path(), seq).contains(&(group_start, kept_last)));
    let stale_sector = (4096..pristine.len())
        .step_by(4096)
        .find(|&q| {
            q > group_start + 4096
                && check_frame(&pristine[q..]).is_ok_and(|h| h.index <= stale_max)
        })
        .map(|q| pristine[q..q + 4096].to_vec())
        .expect("a stale batch behind the end");
    // A crash while the torn group was in flight: no sector from the one after it up to the
    // close's marker-only group (which vouches for it) ever overwrote the stale bytes.
    let (close, _) = *marks(dir.path(), seq).last().unwrap();
    assert!(close > group_start);
    let never_written_from = |data: &mut Vec<u8>, from: usize| {
        for q in (from..=close).step_by(4096) {
            data[q..q + 4096].copy_from_slice(&stale_sector);
        }
    };
    let window = 8 << 10; // group_bytes_max of the test configuration
                          // Torn: the group's sector never reached the disk (a stale batch there); half of it did
                          // (the rest stale); garbage.
    let mut variants = Vec::new();
    let mut never = pristine.clone();
    never_written_from(&mut never, group_start);
    variants.push(never);
    let second = frames(dir.path(), seq)
        .into_iter()
        .find(|&(p, _)| check_frame(&pristine[p..]).is_ok_and(|h| h.index == kept_last + 2))
        .map(|(p, _)| p)
        .unwrap();
    let mut half = pristine.clone();
    // (The two appends usually form one group; when the writer took the first alone, the
    // second starts the next sector: the cut is then in that group.)
    let cut = second + 10;
    let sector_end = cut - cut % 4096 + 4096;
    half[cut..sector_end].copy_from_slice(&stale_sector[cut % 4096..]);
    never_written_from(&mut half, sector_end);
    variants.push(half);
    let mut garbage = pristine.clone();
    for (i, b) in garbage[group_start + 100..group_start + 4096]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    never_written_from(&mut garbage, group_start + 4096);
    variants.push(garbage);
    for (v, torn) in variants.into_iter().enumerate() {
        std::fs::write(&path, &torn).unwrap();
        let log = Log::open(cfg.clone()).unwrap_or_else(|e| panic!("variant {v}: {e}"));
        let recovered = all_tags(&log);
        // The first batch may have been written whole (never acknowledged, but intact).
        assert!(
            recovered == kept || recovered == [&kept[..], &[tag]].concat(),
            "variant {v}: {recovered:?}"
        );
        assert_eq!(
            log.durable_loss(),
            None,
            "variant {v}: a torn write is no loss"
        );
        let data = std::fs::read(&path).unwrap();
        let zero_from = if recovered == kept { first } else { second };
        let window_end = zero_from - zero_from % 4096 + window;
        assert!(
            data[zero_from..window_end].iter().all(|&b| b == 0),
            "variant {v}: the torn window is zeroed"
        );
        // A new group where the torn one was; reopen: nothing of the torn group reappears.
        append_waited(&log, 1, [9_000]);
        drop(log);
        let log = Log::open(cfg.clone()).unwrap();
        let mut expected = recovered.clone();
        expected.push(9_000);
        assert_eq!(all_tags(&log), expected, "variant {v}");
        drop(log);
        std::fs::write(&path, &pristine).unwrap();
    }
}

fn segments_holding_a_truncation_marker_are_never_recycled(kind: BackendKind) {
    let dir = scratch();
    let cfg = config(dir.path(), kind);
    let log = Log::open(cfg.clone()).unwrap();
    append_waited(&log, 1, 0..5);
    log.truncate_suffix(4, 0).unwrap().wait().unwrap();
    let mut tag = 100;
    while segment_seqs(dir.path()).len() < 3 {
        append_waited(&log, 2, [tag]);
        tag += 1;
    }
    // Segment 1 holds the marker; drop it (and only segments below the last index).
    assert!(log.truncate_prefix(log.last_index()).unwrap() >= 1);
    let before = segment_seqs(dir.path()).last().copied().unwrap();
    while *segment_seqs(dir.path()).last().unwrap() < before + 3 {
        append_waited(&log, 2, [tag]);
        tag += 1;
    }
    for seq in segment_seqs(dir.path()) {
        let h = header(dir.path(), seq);
        if h.stale_index_max > 0 {
            assert!(h.base_index > h.stale_index_max);
        }
    }
    assert!(
        !dir.path().join(format!("{:016}.seg.free", 1)).exists(),
        "segment 1 (with a marker) is deleted, not set aside"
    );
    let tags = all_tags(&log);
    drop(log);
    let log = Log::open(cfg).unwrap();
    assert_eq!(all_tags(&log), tags);
}

fn rolls_racing_with_preparation_keep_the_log_intact(kind: BackendKind) {
    // Tiny segments and big groups: roll-overs come while the next segment is still being
    // prepared (zero-fill stopped early, or a recycled rename), often several per second.
    let dir = scratch();
    let mut cfg = config(dir.path(), kind);
    cfg.queue_depth = 256;
    let log = std::sync::Arc::new(Log::open(cfg.clone()).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                let tickets: Vec<_> = (0..150u64)
                    .map(|i| log.append(None, 1, batch(t * 1000 + i, 20)).unwrap())
                    .collect();
                for ticket in tickets {
                    ticket.wait().unwrap();
                }
            })
        })
        .collect();
    for (round, th) in threads.into_iter().enumerate() {
        th.join().unwrap();
        if round == 1 {
            log.truncate_prefix(log.durable_index()).unwrap();
        }
    }
    let (first, last) = (log.first_index(), log.last_index());
    let entries = log.entries(first, last, usize::MAX).unwrap();
    drop(log);
    let log = Log::open(cfg).unwrap();
    assert_eq!((log.first_index(), log.last_index()), (first, last));
    let again = log.entries(first, last, usize::MAX).unwrap();
    assert_eq!(
        entries.iter().map(|b| b.as_bytes()).collect::<Vec<_>>(),
        again.iter().map(|b| b.as_bytes()).collect::<Vec<_>>()
    );
}

macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod uring_direct { $( #[test] fn $test() { super::$test(raftline_log::BackendKind::UringDirect) } )* }
        mod buffered { $( #[test] fn $test() { super::$test(raftline_log::BackendKind::Buffered) } )* }
    };
}

for_each_backend!(
    a_recycled_segment_recovers_exactly_the_new_life,
    appends_after_reopen_of_a_recycled_tail_survive,
    a_torn_group_in_a_recycled_segment_is_cut_and_never_resurrected,
    segments_holding_a_truncation_marker_are_never_recycled,
    rolls_racing_with_preparation_keep_the_log_intact,
);
