//! The signals a single-threaded Raft driver needs from the log: a hook run after every durable
//! group, the durable `(index, term)` that ignores accepted-but-not-durable truncations, and
//! no-op entries whose kind survives a restart.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{append_waited, batch, config, scratch};
use raftline_log::{BackendKind, Batch, Log, WriterHook};

#[test]
fn durable_hook_runs_after_every_durable_group() {
    let dir = scratch();
    let calls = Arc::new(AtomicU64::new(0));
    let mut cfg = config(dir.path(), BackendKind::Buffered);
    let counter = Arc::clone(&calls);
    cfg.durable_hook = Some(WriterHook(Arc::new(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })));
    let log = Log::open(cfg).unwrap();
    // Each waited append is its own group; the hook runs before the group's tickets complete.
    append_waited(&log, 1, 0..3);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one call per durable group"
    );
    // A slow append may find the writer idle long enough for a marker-only group.
    let stats = log.stats();
    let mark_groups = stats.durable_mark_groups.load(Ordering::SeqCst);
    assert_eq!(stats.fdatasyncs.load(Ordering::SeqCst) - mark_groups, 3);
}

#[test]
fn durable_last_ignores_a_truncation_until_it_is_on_disk() {
    let dir = scratch();
    let log = Log::open(config(dir.path(), BackendKind::Buffered)).unwrap();
    append_waited(&log, 1, 0..3);
    assert_eq!(log.durable_last().unwrap(), (3, 1));
    let cut = log.truncate_suffix(3, 2).unwrap();
    let replacement = log.append(Some(3), 2, batch(9, 1)).unwrap();
    // Whatever the writer has done so far, the durable view never pairs index 3 with term 2
    // before the replacement entry itself is durable.
    let (index, term) = log.durable_last().unwrap();
    assert!(
        (index, term) == (3, 1) || (index, term) == (2, 1) || (index, term) == (3, 2),
        "durable view {index}/{term} is one the disk held"
    );
    cut.wait().unwrap();
    replacement.wait().unwrap();
    assert_eq!(log.durable_last().unwrap(), (3, 2));
}

#[test]
fn noop_and_config_entries_keep_their_kind_and_take_no_offsets_across_reopen() {
    let dir = scratch();
    {
        let log = Log::open(config(dir.path(), BackendKind::Buffered)).unwrap();
        log.append(None, 1, Batch::noop()).unwrap().wait().unwrap();
        log.append(None, 1, batch(1, 3)).unwrap().wait().unwrap();
        let config = Batch::config(b"voters 1 2 3").unwrap();
        log.append(None, 1, config).unwrap().wait().unwrap();
    }
    let log = Log::open(config(dir.path(), BackendKind::Buffered)).unwrap();
    let entries = log.entries(1, 3, 1 << 20).unwrap();
    assert!(entries[2].header().is_config());
    assert_eq!(entries[2].payload(), b"voters 1 2 3");
    assert!(entries[0].header().is_noop());
    assert_eq!(entries[0].header().record_count, 0);
    assert!(!entries[1].header().is_noop());
    assert_eq!(entries[1].header().base_offset, 0);
    assert_eq!(log.next_offset(), 3);
}
