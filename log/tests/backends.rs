//! The log's behaviour suite, run against every write backend.

mod common;

use std::sync::Arc;

use common::*;
use raftline_log::batch::{check_frame, BATCH_HEADER_BYTES};
use raftline_log::segment::segment_path;
use raftline_log::{BackendKind, Batch, CorruptionKind, Log, LogError};

fn appended_entries_survive_reopen(kind: BackendKind) {
    let dir = scratch();
    {
        let log = Log::open(config(dir.path(), kind)).unwrap();
        assert_eq!(log.backend(), kind);
        append_waited(&log, 1, 0..50);
        assert_eq!(log.durable_index(), 50);
    }
    let log = Log::open(config(dir.path(), kind)).unwrap();
    assert_eq!(
        (log.first_index(), log.last_index(), log.next_offset()),
        (1, 50, 150)
    );
    assert_eq!(all_tags(&log), (0..50).collect::<Vec<_>>());
    assert_eq!(log.term_at(50), Some(1));
    let b = &log.entries(7, 7, usize::MAX).unwrap()[0];
    assert_eq!(
        (b.header().index, b.header().base_offset, b.header().term),
        (7, 18, 1)
    );
}

fn configuration_breaking_a_limit_is_refused(kind: BackendKind) {
    let dir = scratch();
    let mut cfg = config(dir.path(), kind);
    cfg.batch_bytes_max = cfg.group_bytes_max + 1;
    assert!(matches!(Log::open(cfg), Err(LogError::Config(_))));
    let mut cfg = config(dir.path(), kind);
    cfg.segment_bytes = 4096 * 2 + 1;
    assert!(matches!(Log::open(cfg), Err(LogError::Config(_))));
}

fn writes_are_sector_aligned_and_groups_padded(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..5);
    drop(log);
    let starts: Vec<usize> = frames(dir.path(), 1).iter().map(|&(p, _)| p).collect();
    assert_eq!(starts.len(), 5);
    // A group starts on a sector, with the durability marker at its head if one is due.
    let marks: Vec<usize> = marks(dir.path(), 1).iter().map(|&(p, _)| p).collect();
    assert!(
        starts
            .iter()
            .all(|p| p % 4096 == 0 || marks.contains(&(p - BATCH_HEADER_BYTES))),
        "each waited append is its own padded group: {starts:?}, markers at {marks:?}"
    );
}

fn concurrent_appenders_are_durable_when_told(kind: BackendKind) {
    let dir = scratch();
    let threads = 8u64;
    let per_thread = 40u64;
    let acked: Vec<(u64, u64)> = {
        let log = Arc::new(Log::open(config(dir.path(), kind)).unwrap());
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    let tickets: Vec<_> = (0..per_thread)
                        .map(|i| {
                            let tag = t * 1000 + i;
                            (tag, log.append(None, 1, batch(tag, 2)).unwrap())
                        })
                        .collect();
                    for (tag, ticket) in tickets {
                        ticket.wait().unwrap();
                        assert!(
                            log.durable_index() >= ticket.index,
                            "completion before durable index"
                        );
                        acked.push((ticket.index, tag));
                    }
                    acked
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    };
    let log = Log::open(config(dir.path(), kind)).unwrap();
    assert_eq!(log.last_index(), threads * per_thread);
    for (index, tag) in acked {
        let b = &log.entries(index, index, usize::MAX).unwrap()[0];
        assert_eq!(
            tag_of(b),
            tag,
            "entry {index} holds another batch after reopen"
        );
    }
    let stats_groups = log
        .stats()
        .fdatasyncs
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stats_groups, 0, "a fresh open has written nothing");
}

fn torn_tail_at_every_byte_is_cut_and_acknowledged_data_kept(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..6);
    // The last group holds two batches written together.
    let t1 = log.append(None, 1, batch(6, 3)).unwrap();
    let t2 = log.append(None, 1, batch(7, 3)).unwrap();
    t1.wait().unwrap();
    t2.wait().unwrap();
    drop(log);
    let path = segment_path(dir.path(), 1);
    let fr = frames(dir.path(), 1);
    let torn_from = fr[6].0;
    let end = fr.last().map(|&(p, l)| p + l).unwrap();
    // A crash while the last group was in flight: the marker-only group the writer wrote when
    // it closed (it vouches for the last group) was never written.
    let mut pristine = std::fs::read(&path).unwrap();
    pristine[end.next_multiple_of(4096)..].fill(0);
    for cut in torn_from..=end {
        // Zeros (nothing written) at every byte; garbage (a partly written sector) at every 5th.
        for garbage in [false, true] {
            if garbage && cut % 5 != 0 {
                continue;
            }
            let mut data = pristine.clone();
            for (i, b) in data[cut..end.next_multiple_of(4096)].iter_mut().enumerate() {
                *b = if garbage {
                    (i as u8).wrapping_mul(31).wrapping_add(7)
                } else {
                    0
                };
            }
            std::fs::write(&path, &data).unwrap();
            // Exactly the intact prefix survives (cutting may leave a batch intact when the
            // bytes it zeroes were already zero).
            let expected = fr
                .iter()
                .take_while(|&&(p, _)| check_frame(&data[p..]).is_ok())
                .count() as u64;
            assert!(expected >= fr.iter().filter(|&&(p, l)| p + l <= cut).count() as u64);
            let log =
                Log::open(config(dir.path(), kind)).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!(log.last_index(), expected, "cut at {cut} garbage={garbage}");
            assert_eq!(all_tags(&log), (0..expected).collect::<Vec<_>>());
            assert_eq!(
                log.durable_loss(),
                None,
                "a torn write is no loss (cut at {cut})"
            );
            if cut % 16 == 0 {
                // The log continues cleanly after the cut, and that survives another reopen.
                append_waited(&log, 1, [100]);
                drop(log);
                let log = Log::open(config(dir.path(), kind)).unwrap();
                assert_eq!(
                    log.last_index(),
                    expected + 1,
                    "cut at {cut}: append after recovery lost"
                );
                assert_eq!(
                    log.torn_bytes_cut(),
                    0,
                    "recovery left garbage behind at cut {cut}"
                );
            }
        }
    }
    std::fs::write(&path, &pristine).unwrap();
}

fn bit_flip_before_the_tail_is_reported_precisely(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..12);
    drop(log);
    let path = segment_path(dir.path(), 1);
    let pristine = std::fs::read(&path).unwrap();
    let fr = frames(dir.path(), 1);
    let seed: u64 = std::env::var("RAFTLINE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("bit flip seed {seed} (replay with RAFTLINE_TEST_SEED)");
    let mut rng = seed;
    // Batches 0..8: at least 8 KiB (the group bound) of acknowledged groups follow each of them.
    for &(pos, len) in &fr[..8] {
        for _ in 0..8 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let bit = (rng >> 33) as usize % (len * 8);
            let mut data = pristine.clone();
            data[pos + bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &data).unwrap();
            match Log::open(config(dir.path(), kind)) {
                Err(LogError::Corrupt {
                    segment,
                    position,
                    kind,
                }) => {
                    assert_eq!(segment, path);
                    assert_eq!(position, pos as u64, "bit {bit} of batch at {pos}");
                    if let CorruptionKind::Checksum { expected, actual } = kind {
                        assert_ne!(expected, actual);
                    }
                }
                Err(other) => panic!("bit {bit} at {pos}: wrong error {other}"),
                Ok(log) => panic!(
                    "bit {bit} at {pos}: opened with {} entries",
                    log.last_index()
                ),
            }
        }
    }
    std::fs::write(&path, &pristine).unwrap();
    assert_eq!(
        Log::open(config(dir.path(), kind)).unwrap().last_index(),
        12
    );
}

fn corruption_in_a_sealed_segment_is_reported(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..40);
    drop(log);
    assert!(
        segment_path(dir.path(), 2).exists(),
        "40 padded groups fill more than one 64 KiB segment"
    );
    let path = segment_path(dir.path(), 1);
    let fr = frames(dir.path(), 1);
    let (pos, _) = *fr.last().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    data[pos + 60] ^= 0x10;
    std::fs::write(&path, &data).unwrap();
    match Log::open(config(dir.path(), kind)) {
        Err(LogError::Corrupt {
            segment,
            position,
            kind: CorruptionKind::Checksum { .. },
        }) => {
            assert_eq!((segment, position), (path, pos as u64));
        }
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a damaged sealed segment was accepted"),
    }
}

fn truncate_suffix_is_durable_and_refuses_committed(kind: BackendKind) {
    let dir = scratch();
    {
        let log = Log::open(config(dir.path(), kind)).unwrap();
        append_waited(&log, 1, 0..10);
        assert!(matches!(
            log.truncate_suffix(5, 5),
            Err(LogError::TruncateCommitted { from: 5, commit: 5 })
        ));
        assert!(matches!(
            log.append(Some(3), 1, batch(0, 1)),
            Err(LogError::IndexMismatch {
                expected: 11,
                got: 3
            })
        ));
        assert!(matches!(
            log.append(None, 0, batch(0, 1)),
            Err(LogError::TermRegression {
                term: 0,
                last_term: 1
            })
        ));
        assert!(matches!(
            log.truncate_prefix(12),
            Err(LogError::OutOfRange { index: 12, .. })
        ));
        log.truncate_suffix(6, 5).unwrap().wait().unwrap();
        assert_eq!(
            (log.last_index(), log.next_offset(), log.durable_index()),
            (5, 15, 5)
        );
        log.append(Some(6), 2, batch(60, 3))
            .unwrap()
            .wait()
            .unwrap();
    }
    let log = Log::open(config(dir.path(), kind)).unwrap();
    assert_eq!(all_tags(&log), vec![0, 1, 2, 3, 4, 60]);
    assert_eq!(
        (log.term_at(5), log.term_at(6), log.term_at(7)),
        (Some(1), Some(2), None)
    );
}

fn prefix_truncation_drops_whole_segments_only(kind: BackendKind) {
    let dir = scratch();
    {
        let log = Log::open(config(dir.path(), kind)).unwrap();
        append_waited(&log, 3, 0..45);
        let first_of_seg2 = frames(dir.path(), 1).len() as u64 + 1;
        assert_eq!(
            log.truncate_prefix(first_of_seg2 - 1).unwrap(),
            0,
            "segment 1 still holds an entry >= index"
        );
        assert_eq!(log.truncate_prefix(first_of_seg2).unwrap(), 1);
        assert!(!segment_path(dir.path(), 1).exists());
        assert_eq!(log.first_index(), first_of_seg2);
        assert_eq!(log.term_at(first_of_seg2 - 1), Some(3));
        assert!(matches!(
            log.read_from_offset(0, u64::MAX, 1),
            Err(LogError::BelowStart { .. })
        ));
    }
    let log = Log::open(config(dir.path(), kind)).unwrap();
    assert_eq!(
        all_tags(&log),
        (log.first_index() - 1..45).collect::<Vec<_>>()
    );
    assert_eq!(log.last_index(), 45);
}

fn consumer_reads_find_the_batch_holding_an_offset(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..20); // 3 records each: offsets 3t..3t+2 in batch t
    for offset in 0..60u64 {
        let got = log.read_from_offset(offset, u64::MAX, 1).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(tag_of(&got[0]), offset / 3, "offset {offset}");
    }
    let upto = log.read_from_offset(0, 5, usize::MAX).unwrap();
    assert_eq!(
        upto.iter().map(|b| b.header().index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(log
        .read_from_offset(60, u64::MAX, usize::MAX)
        .unwrap()
        .is_empty());
}

fn readers_never_see_undurable_batches(kind: BackendKind) {
    let dir = scratch();
    let log = Arc::new(Log::open(config(dir.path(), kind)).unwrap());
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let tickets: Vec<_> = (0..200)
                .map(|t| log.append(None, 1, batch(t, 2)).unwrap())
                .collect();
            tickets.iter().for_each(|t| t.wait().unwrap());
        })
    };
    let mut seen = 0;
    while seen < 200 {
        let got = log
            .read_from_offset(seen * 2, u64::MAX, usize::MAX)
            .unwrap();
        let durable = log.durable_index();
        for b in &got {
            assert!(
                b.header().index <= durable,
                "served index {} above durable {durable}",
                b.header().index
            );
            assert_eq!(tag_of(b), seen);
            seen += 1;
        }
        if got.is_empty() {
            log.wait_durable(seen + 1, std::time::Duration::from_secs(10))
                .unwrap();
        }
    }
    writer.join().unwrap();
}

fn restart_after_snapshot_discards_the_log_and_survives_reopen(kind: BackendKind) {
    let dir = scratch();
    let old_segment;
    {
        let log = Log::open(config(dir.path(), kind)).unwrap();
        append_waited(&log, 2, 0..20);
        old_segment = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        log.restart_after_snapshot(100, 7, 5000)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(
            (log.first_index(), log.last_index(), log.next_offset()),
            (101, 100, 5000)
        );
        assert_eq!(
            (log.term_at(100), log.term_at(20), log.durable_index()),
            (Some(7), None, 100)
        );
        log.append(Some(101), 7, batch(101, 3))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert!(
        !segment_path(dir.path(), 1).exists(),
        "obsolete segments are deleted"
    );
    // A crash between installing the restart segment and deleting the old ones leaves them.
    std::fs::write(segment_path(dir.path(), 1), &old_segment).unwrap();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    assert!(
        !segment_path(dir.path(), 1).exists(),
        "recovery deletes segments before a restart"
    );
    assert_eq!(
        (log.first_index(), log.last_index(), log.term_at(100)),
        (101, 101, Some(7))
    );
    assert_eq!(all_tags(&log), vec![101]);
    assert_eq!(
        log.read_from_offset(5000, u64::MAX, 1).unwrap()[0]
            .header()
            .base_offset,
        5000
    );
}

fn reads_into_a_reused_buffer_match_batch_reads_across_segments(kind: BackendKind) {
    let dir = scratch();
    let log = Log::open(config(dir.path(), kind)).unwrap();
    append_waited(&log, 1, 0..40);
    // Pipelined appends share groups: adjacent batches, read as one run.
    let tickets: Vec<_> = (40..240)
        .map(|t| log.append(None, 1, batch(t, 3)).unwrap())
        .collect();
    tickets.iter().for_each(|t| t.wait().unwrap());
    assert!(segment_path(dir.path(), 3).exists(), "reads span segments");
    let back_to_back = |fr: &[(usize, usize)]| fr.windows(2).any(|w| w[0].0 + w[0].1 == w[1].0);
    let seg = (1..)
        .take_while(|&seq| segment_path(dir.path(), seq).exists())
        .find(|&seq| back_to_back(&frames(dir.path(), seq)))
        .expect("some batches lie back to back");
    let fr = frames(dir.path(), seg);
    let expected: Vec<Vec<u8>> = log
        .read_from_offset(0, u64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(Batch::into_bytes)
        .collect();
    assert_eq!(expected.len(), 240);
    let mut buf = Vec::new();
    for bytes_max in [1, 700, 5000, usize::MAX] {
        let (mut offset, mut got) = (0u64, Vec::new());
        loop {
            let read = log
                .read_from_offset_into(offset, u64::MAX, bytes_max, &mut buf)
                .unwrap();
            let Some((last, _)) = read.last() else { break };
            offset = last.next_offset();
            for (header, range) in read {
                assert_eq!(header.total_bytes, range.len());
                got.push(buf[range].to_vec());
            }
        }
        assert_eq!(got, expected, "bytes_max {bytes_max}");
    }
    let upto = log
        .read_from_offset_into(0, 5, usize::MAX, &mut buf)
        .unwrap();
    assert_eq!(
        upto.iter().map(|(h, _)| h.index).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // A damaged batch inside a run is an error, never data.
    let path = segment_path(dir.path(), seg);
    let (pos, _) = fr[fr.len() / 2];
    let mut data = std::fs::read(&path).unwrap();
    data[pos + 60] ^= 0x10;
    std::fs::write(&path, &data).unwrap();
    match log.read_from_offset_into(0, u64::MAX, usize::MAX, &mut buf) {
        Err(LogError::Corrupt {
            segment,
            position,
            kind: CorruptionKind::Checksum { .. },
        }) => assert_eq!((segment, position), (path, pos as u64)),
        Err(other) => panic!("wrong error {other}"),
        Ok(_) => panic!("a damaged batch was read as data"),
    }
}

macro_rules! for_every_backend {
    ($($test:ident),* $(,)?) => {
        mod uring_direct { $( #[test] fn $test() { super::$test(raftline_log::BackendKind::UringDirect) } )* }
        mod pwrite_direct { $( #[test] fn $test() { super::$test(raftline_log::BackendKind::PwriteDirect) } )* }
        mod buffered { $( #[test] fn $test() { super::$test(raftline_log::BackendKind::Buffered) } )* }
    };
}

for_every_backend!(
    appended_entries_survive_reopen,
    writes_are_sector_aligned_and_groups_padded,
    configuration_breaking_a_limit_is_refused,
    concurrent_appenders_are_durable_when_told,
    torn_tail_at_every_byte_is_cut_and_acknowledged_data_kept,
    bit_flip_before_the_tail_is_reported_precisely,
    corruption_in_a_sealed_segment_is_reported,
    truncate_suffix_is_durable_and_refuses_committed,
    prefix_truncation_drops_whole_segments_only,
    consumer_reads_find_the_batch_holding_an_offset,
    readers_never_see_undurable_batches,
    restart_after_snapshot_discards_the_log_and_survives_reopen,
    reads_into_a_reused_buffer_match_batch_reads_across_segments,
);
