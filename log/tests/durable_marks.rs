//! Durability markers: the writer vouches on disk for what it has synced, and recovery tells a
//! cut of synced (possibly acknowledged) entries from a torn write (FORMAT.md, "Durability
//! markers").

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use raftline_log::segment::segment_path;
use raftline_log::{BackendKind, DurableLoss, DurableLossHook, Log, LogConfig, LogError};

const KIND: BackendKind = BackendKind::Buffered;

/// A configuration whose writer never goes idle long enough for a marker-only group (only the
/// close writes one).
fn no_idle_marks(dir: &std::path::Path) -> LogConfig {
    let mut cfg = config(dir, KIND);
    cfg.durable_mark_idle = Duration::from_secs(3600);
    cfg
}

/// Flips one bit in the payload of the batch at `(pos, len)` of segment 1.
fn flip_bit_in(dir: &std::path::Path, (pos, len): (usize, usize)) {
    let path = segment_path(dir, 1);
    let mut data = std::fs::read(&path).unwrap();
    data[pos + len - 1] ^= 0x10;
    std::fs::write(&path, &data).unwrap();
}

#[test]
fn each_group_after_a_synced_one_carries_a_marker_and_the_close_writes_the_last() {
    let dir = scratch();
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    append_waited(&log, 1, 0..3);
    drop(log);
    // The first group after open vouches for nothing: what recovery found was not synced by
    // this writer. Every later group names the index durable before it; the close vouches for
    // the last group.
    let marks: Vec<u64> = marks(dir.path(), 1).iter().map(|&(_, i)| i).collect();
    assert_eq!(marks, vec![1, 2, 3]);
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!(log.durable_loss(), None);
    assert_eq!(log.stats().durable_mark_groups.load(Ordering::SeqCst), 0);
}

#[test]
fn markers_are_invisible_to_readers_offsets_and_indexes() {
    let dir = scratch();
    {
        let log = Log::open(no_idle_marks(dir.path())).unwrap();
        append_waited(&log, 1, 0..4);
    }
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert!(marks(dir.path(), 1).len() >= 3, "the log holds markers");
    assert_eq!(
        (log.first_index(), log.last_index(), log.next_offset()),
        (1, 4, 12),
        "markers take no index and no offset"
    );
    assert_eq!(all_tags(&log), vec![0, 1, 2, 3]);
    let read = log.read_from_offset(0, 4, usize::MAX).unwrap();
    let seen: Vec<(u64, u64)> = read
        .iter()
        .map(|b| (b.header().index, b.header().base_offset))
        .collect();
    assert_eq!(seen, vec![(1, 0), (2, 3), (3, 6), (4, 9)]);
    let mut buf = Vec::new();
    let into = log
        .read_from_offset_into(4, 4, usize::MAX, &mut buf)
        .unwrap();
    assert!(into.iter().all(|(h, _)| h.is_data() && h.record_count == 3));
    assert_eq!(into.len(), 3, "from the batch holding offset 4");
    // A truncation and appends after markers replay the same across a reopen.
    log.truncate_suffix(3, 2).unwrap().wait().unwrap();
    append_waited(&log, 2, [7]);
    drop(log);
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!(all_tags(&log), vec![0, 1, 7]);
    assert_eq!((log.last_index(), log.next_offset()), (3, 9));
    assert_eq!(log.durable_loss(), None);
}

#[test]
fn a_flipped_bit_in_the_last_vouched_group_is_reported_as_lost_durable_entries() {
    let dir = scratch();
    {
        let log = Log::open(no_idle_marks(dir.path())).unwrap();
        append_waited(&log, 1, 0..4);
    }
    let last = *frames(dir.path(), 1).last().unwrap();
    flip_bit_in(dir.path(), last);
    let lost = DurableLoss {
        first_lost: 4,
        durable_through: 4,
    };
    // An owner that cannot persist the loss fails the open, and nothing is cut.
    let mut cfg = no_idle_marks(dir.path());
    cfg.durable_loss_hook = Some(DurableLossHook(Arc::new(|_| Err("disk full".into()))));
    assert!(matches!(Log::open(cfg), Err(LogError::Io { .. })));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = no_idle_marks(dir.path());
    let record = Arc::clone(&seen);
    cfg.durable_loss_hook = Some(DurableLossHook(Arc::new(move |l| {
        record.lock().unwrap().push(l);
        Ok(())
    })));
    let log = Log::open(cfg).unwrap();
    assert_eq!(log.last_index(), 3, "the damaged entry is cut");
    assert_eq!(log.durable_loss(), Some(lost));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![lost],
        "the owner heard of it once"
    );
    drop(log);
    // The cut zeroed the evidence: the owner must keep the report (the node's hard state).
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!(log.durable_loss(), None);
}

#[test]
fn a_torn_group_beyond_the_markers_is_cut_silently() {
    let dir = scratch();
    {
        let log = Log::open(no_idle_marks(dir.path())).unwrap();
        append_waited(&log, 1, 0..4);
    }
    let path = segment_path(dir.path(), 1);
    let (pos, len) = *frames(dir.path(), 1).last().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    // A crash while the last group was in flight: its marker (vouching for the group before)
    // landed, its batch is half written, the marker-only group of the close never came.
    data[pos + len / 2..].fill(0);
    data[pos + len / 2] = 0xa5;
    std::fs::write(&path, &data).unwrap();
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!(log.last_index(), 3);
    assert!(log.torn_bytes_cut() > 0);
    assert_eq!(log.durable_loss(), None, "a torn write is no loss");
    // So is a torn marker-only group.
    append_waited(&log, 1, [9]);
    drop(log);
    let (close_mark, _) = *marks(dir.path(), 1).last().unwrap();
    let mut data = std::fs::read(&path).unwrap();
    data[close_mark + 20] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!((log.last_index(), log.durable_loss()), (4, None));
}

#[test]
fn the_idle_marker_vouches_for_the_last_group() {
    let dir = scratch();
    let mut cfg = config(dir.path(), KIND);
    cfg.durable_mark_idle = Duration::from_millis(5);
    let log = Log::open(cfg).unwrap();
    append_waited(&log, 1, 0..2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.stats().durable_mark_groups.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "no idle marker for the last group"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(marks(dir.path(), 1).last().map(|&(_, i)| i), Some(2));
    // An append after the idle marker is a group as usual; the close vouches for it.
    append_waited(&log, 1, [2]);
    drop(log);
    assert_eq!(marks(dir.path(), 1).last().map(|&(_, i)| i), Some(3));
}

/// What a process killed now would leave of the log in `dir` (its files as the page cache and
/// the device hold them, the log still open), copied into a new directory.
fn left_by_a_crash(dir: &std::path::Path) -> tempfile::TempDir {
    let copy = scratch();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    copy
}

#[test]
fn a_process_killed_right_after_a_group_leaves_the_marker_written_ahead_for_it() {
    // The idle marker never comes: only the marker written ahead, without an fdatasync, right
    // after each group the writer found nothing queued behind, can vouch for the last group.
    let dir = scratch();
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    for tag in 0..4 {
        append_waited(&log, 1, [tag]);
        // Only once it is written does the next append come: one queued before it would
        // carry the marker at its own head instead.
        let deadline = Instant::now() + Duration::from_secs(10);
        while log.stats().durable_marks_ahead.load(Ordering::SeqCst) <= tag {
            assert!(
                Instant::now() < deadline,
                "no marker written ahead after group {tag}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let crashed = left_by_a_crash(dir.path());
    assert_eq!(
        marks(crashed.path(), 1).last().map(|&(_, i)| i),
        Some(4),
        "the last group is vouched for before any fdatasync of it"
    );
    // Its last group rots: recovery knows it was durable, so possibly acknowledged.
    let last = *frames(crashed.path(), 1).last().unwrap();
    flip_bit_in(crashed.path(), last);
    let reopened = Log::open(no_idle_marks(crashed.path())).unwrap();
    assert_eq!(reopened.last_index(), 3);
    assert_eq!(
        reopened.durable_loss(),
        Some(DurableLoss {
            first_lost: 4,
            durable_through: 4,
        })
    );
    // The group after a marker written ahead starts with the same marker: the log reads
    // back whole, one marker per group.
    append_waited(&log, 1, [4]);
    drop(log);
    let log = Log::open(no_idle_marks(dir.path())).unwrap();
    assert_eq!(all_tags(&log), vec![0, 1, 2, 3, 4]);
    let marks: Vec<u64> = marks(dir.path(), 1).iter().map(|&(_, i)| i).collect();
    assert_eq!(marks, vec![1, 2, 3, 4, 5]);
    assert_eq!(log.durable_loss(), None);
}

/// [`no_idle_marks`] with every append held until a synced marker vouches for it.
fn marks_before_ack(dir: &std::path::Path) -> LogConfig {
    let mut cfg = no_idle_marks(dir);
    cfg.durable_mark_before_ack = true;
    cfg
}

#[test]
fn with_marks_before_ack_an_append_completes_only_once_a_synced_marker_vouches_for_it() {
    let dir = scratch();
    let log = Log::open(marks_before_ack(dir.path())).unwrap();
    for tag in 0..4u64 {
        append_waited(&log, 1, [tag]);
        let stats = log.stats();
        assert_eq!(
            stats.fdatasyncs.load(Ordering::SeqCst),
            2 * (tag + 1),
            "append {tag} completed before its group and the marker-only group vouching for it were both synced"
        );
        assert_eq!(stats.durable_mark_groups.load(Ordering::SeqCst), tag + 1);
        assert_eq!(marks(dir.path(), 1).last().map(|&(_, i)| i), Some(tag + 1));
    }
    assert_eq!(
        log.stats().durable_marks_ahead.load(Ordering::SeqCst),
        0,
        "nothing is left written but unsynced"
    );
    // Every write is synced, so the files now are what a power cut would leave: the last
    // (acknowledged) group rots, and recovery knows it was durable.
    let cut = left_by_a_crash(dir.path());
    let last = *frames(cut.path(), 1).last().unwrap();
    flip_bit_in(cut.path(), last);
    let reopened = Log::open(no_idle_marks(cut.path())).unwrap();
    assert_eq!(
        reopened.durable_loss(),
        Some(DurableLoss {
            first_lost: 4,
            durable_through: 4,
        })
    );
}

#[test]
fn with_marks_before_ack_pipelined_appends_complete_in_order_across_segments_and_read_back() {
    let dir = scratch();
    let log = Log::open(marks_before_ack(dir.path())).unwrap();
    // Queued faster than the writer syncs: groups carry the marker for the one before.
    let tickets: Vec<_> = (0..64)
        .map(|tag| log.append(None, 1, batch(tag, 60)).unwrap())
        .collect();
    // The segments written so far (not `list_segments`: it deletes the writer's spare).
    let segments = || (1..).take_while(|&seq| segment_path(dir.path(), seq).exists());
    let vouched = || {
        segments()
            .flat_map(|seq| marks(dir.path(), seq))
            .map(|(_, index)| index)
            .max()
    };
    for t in &tickets {
        t.wait().unwrap();
        assert!(
            vouched() >= Some(t.index),
            "entry {} completed before a marker vouched for it ({:?})",
            t.index,
            vouched()
        );
    }
    assert!(segments().count() > 1, "the appends cross segments");
    drop(log);
    let log = Log::open(marks_before_ack(dir.path())).unwrap();
    assert_eq!(all_tags(&log), (0..64).collect::<Vec<_>>());
    assert_eq!(log.durable_loss(), None);
}
