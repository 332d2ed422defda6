//! Damage before a log's tail, cut instead of refused (`OnDamage::Cut`, issue 14 item 2): the
//! log ends just before the damage, reports what it held beyond it, persists that through the
//! loss hook before anything is cut, and any crash during the cut reopens to the same cut.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use raftline_log::segment::segment_path;
use raftline_log::{
    BackendKind, CorruptionKind, DurableLoss, DurableLossHook, Log, LogConfig, LogError, OnDamage,
};

const KIND: BackendKind = BackendKind::Buffered;
/// 40 entries of padded groups fill segment 1 and part of segment 2 or more.
const ENTRIES: u64 = 40;

/// The segments in `dir`, ascending (read only: `segment::list_segments` also deletes an open
/// log's segment in preparation).
fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".seg")?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Each loss the hook was told about, with the number of segment files present then.
type Told = Arc<Mutex<Vec<(DurableLoss, usize)>>>;

/// A cutting configuration whose hook records each loss it is told about, and the segment
/// files that existed when it was told (the evidence must still be there).
fn cutting(dir: &Path) -> (LogConfig, Told) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = config(dir, KIND);
    cfg.on_damage = OnDamage::Cut;
    let (seen, at) = (Arc::clone(&told), dir.to_path_buf());
    cfg.durable_loss_hook = Some(DurableLossHook(Arc::new(move |loss| {
        let segments = list_segments(&at).unwrap().len();
        seen.lock().unwrap().push((loss, segments));
        Ok(())
    })));
    (cfg, told)
}

/// A log of [`ENTRIES`] entries over several segments; returns the position of entry
/// `victim`'s batch in segment 1 and the number of segments.
fn written(dir: &Path, victim: usize) -> (usize, usize) {
    let log = Log::open(config(dir, KIND)).unwrap();
    append_waited(&log, 1, 0..ENTRIES);
    drop(log);
    let segments = list_segments(dir).unwrap().len();
    assert!(segments >= 2, "the log spans several segments");
    (frames(dir, 1)[victim].0, segments)
}

fn flip(path: &Path, at: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0x10;
    std::fs::write(path, &data).unwrap();
}

/// The log after a cut at entry `victim + 1`: it ends before it, continues cleanly there, and
/// the next open finds nothing to cut.
fn assert_cut_at(dir: &Path, log: Log, victim: u64) {
    assert_eq!(log.last_index(), victim, "the log ends before the damage");
    assert_eq!(all_tags(&log), (0..victim).collect::<Vec<_>>());
    assert_eq!(
        list_segments(dir).unwrap(),
        vec![1],
        "later segments deleted"
    );
    // Re-fetched entries go where the damaged ones were, at the same offsets.
    assert_eq!(log.next_offset(), victim * 3);
    append_waited(&log, 2, 1000..1000 + ENTRIES - victim);
    drop(log);
    let (cfg, told) = cutting(dir);
    let log = Log::open(cfg).unwrap();
    assert_eq!(log.damage_cut(), None, "the cut left no damage behind");
    assert!(told.lock().unwrap().is_empty());
    assert_eq!(log.last_index(), ENTRIES);
    let mut expected: Vec<u64> = (0..victim).collect();
    expected.extend(1000..1000 + ENTRIES - victim);
    assert_eq!(all_tags(&log), expected);
}

#[test]
fn a_flip_in_a_sealed_segment_cuts_the_log_there_and_names_what_it_held() {
    let dir = scratch();
    let victim = 5;
    let (pos, segments) = written(dir.path(), victim);
    let path = segment_path(dir.path(), 1);
    flip(&path, pos + 60);
    // The default still refuses, naming the place.
    match Log::open(config(dir.path(), KIND)) {
        Err(LogError::Corrupt {
            segment, position, ..
        }) => {
            assert_eq!((segment, position), (path.clone(), pos as u64))
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|l| l.last_index())),
    }
    let (cfg, told) = cutting(dir.path());
    let log = Log::open(cfg).unwrap();
    let cut = log.damage_cut().cloned().expect("the cut is reported");
    assert_eq!(
        (cut.segment.as_path(), cut.position),
        (path.as_path(), pos as u64)
    );
    assert!(
        matches!(cut.kind, CorruptionKind::Checksum { .. }),
        "{:?}",
        cut.kind
    );
    assert_eq!(
        (cut.first_lost, cut.last_lost),
        (victim as u64 + 1, ENTRIES)
    );
    assert_eq!(cut.segments_removed, segments - 1);
    let loss = DurableLoss {
        first_lost: victim as u64 + 1,
        durable_through: ENTRIES,
    };
    assert_eq!(log.durable_loss(), Some(loss));
    assert_eq!(
        *told.lock().unwrap(),
        vec![(loss, segments)],
        "told once, before any segment went"
    );
    assert_cut_at(dir.path(), log, victim as u64);
}

#[test]
fn a_misdirected_write_in_a_sealed_segment_is_cut_like_a_flip() {
    let dir = scratch();
    let victim = 7;
    let (pos, _) = written(dir.path(), victim);
    // A valid batch of the log written over entry 8's place: its checksum holds, its index
    // does not follow.
    let path = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&path).unwrap();
    let (from, len) = frames(dir.path(), 1)[2];
    let copy = data[from..from + len].to_vec();
    data[pos..pos + len].copy_from_slice(&copy);
    std::fs::write(&path, &data).unwrap();
    let (cfg, _) = cutting(dir.path());
    let log = Log::open(cfg).unwrap();
    let cut = log.damage_cut().cloned().unwrap();
    assert!(
        matches!(cut.kind, CorruptionKind::Sequence(_)),
        "{:?}",
        cut.kind
    );
    assert_eq!(cut.first_lost, victim as u64 + 1);
    assert_cut_at(dir.path(), log, victim as u64);
}

#[test]
fn a_damaged_header_of_a_later_segment_ends_the_log_with_the_segment_before() {
    let dir = scratch();
    let (_, _) = written(dir.path(), 0);
    let in_first = frames(dir.path(), 1).len() as u64;
    flip(&segment_path(dir.path(), 2), 20);
    let (cfg, told) = cutting(dir.path());
    let log = Log::open(cfg).unwrap();
    let cut = log.damage_cut().cloned().unwrap();
    assert!(
        matches!(cut.kind, CorruptionKind::SegmentHeader(_)),
        "{:?}",
        cut.kind
    );
    assert_eq!(
        (cut.position, cut.first_lost, cut.last_lost),
        (0, in_first + 1, ENTRIES)
    );
    assert_eq!(told.lock().unwrap().len(), 1);
    assert_cut_at(dir.path(), log, in_first);
}

#[test]
fn a_crash_at_any_step_of_the_cut_reopens_to_the_same_cut() {
    let victim = 4;
    // (what the crash left, described) → the state to reopen from.
    type Step = fn(&Path, usize);
    let steps: [(&str, Step); 4] = [
        ("nothing done yet", |_, _| {}),
        ("only the newest later segment deleted", |dir, _| {
            let seqs = list_segments(dir).unwrap();
            std::fs::remove_file(segment_path(dir, *seqs.last().unwrap())).unwrap();
        }),
        (
            "every later segment deleted, the damage not yet zeroed",
            |dir, _| {
                for seq in list_segments(dir).unwrap().into_iter().skip(1) {
                    std::fs::remove_file(segment_path(dir, seq)).unwrap();
                }
            },
        ),
        (
            "the damage zeroed, later segments still there",
            |dir, pos| {
                let path = segment_path(dir, 1);
                let mut data = std::fs::read(&path).unwrap();
                data[pos..].fill(0);
                std::fs::write(&path, &data).unwrap();
            },
        ),
    ];
    for (what, step) in steps {
        let dir = scratch();
        let (pos, _) = written(dir.path(), victim);
        flip(&segment_path(dir.path(), 1), pos + 60);
        // The owner could not persist the loss: nothing is cut.
        let mut failing = config(dir.path(), KIND);
        failing.on_damage = OnDamage::Cut;
        failing.durable_loss_hook = Some(DurableLossHook(Arc::new(|_| Err("disk".into()))));
        let before = list_segments(dir.path()).unwrap();
        assert!(
            Log::open(failing).is_err(),
            "{what}: a failed hook fails the open"
        );
        assert_eq!(
            list_segments(dir.path()).unwrap(),
            before,
            "{what}: nothing cut"
        );
        step(dir.path(), pos);
        let (cfg, told) = cutting(dir.path());
        let log = Log::open(cfg).unwrap_or_else(|e| panic!("{what}: {e}"));
        let cut = log.damage_cut().cloned();
        let first_lost = cut.as_ref().map(|c| c.first_lost);
        assert_eq!(first_lost, Some(victim as u64 + 1), "{what}");
        let told = told.lock().unwrap().clone();
        assert!(
            told.iter().all(|(l, _)| l.first_lost == victim as u64 + 1),
            "{what}: {told:?}"
        );
        assert_cut_at(dir.path(), log, victim as u64);
    }
}

#[test]
fn damage_to_the_first_segment_header_is_still_refused() {
    let dir = scratch();
    written(dir.path(), 0);
    flip(&segment_path(dir.path(), 1), 20);
    let (cfg, _) = cutting(dir.path());
    assert!(matches!(
        Log::open(cfg),
        Err(LogError::Corrupt {
            kind: CorruptionKind::SegmentHeader(_),
            ..
        })
    ));
}
