//! `LogConfig::emulated_fsync_delay` (what `raftline server --emulate-disk` sets): a group's
//! completion is held back to `issue + delay` on top of the real write + fdatasync, one group at
//! a time, so appends arriving while a flush is held are grouped into the next one, as on a
//! slow real device.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{batch, config, scratch};
use raftline_log::{BackendKind, Log};

const DELAY: Duration = Duration::from_millis(40);

fn emulated_log(dir: &std::path::Path) -> Log {
    let mut cfg = config(dir, BackendKind::Buffered);
    cfg.emulated_fsync_delay = DELAY;
    Log::open(cfg).unwrap()
}

#[test]
fn an_append_is_never_durable_before_the_emulated_latency_has_passed() {
    let dir = scratch();
    let log = emulated_log(dir.path());
    for tag in 0..3 {
        let issued = Instant::now();
        let ticket = log.append(None, 1, batch(tag, 1)).unwrap();
        ticket.wait().unwrap();
        // A lower bound the emulation guarantees (the writer sleeps until issue + delay), not a
        // performance threshold.
        assert!(
            issued.elapsed() >= DELAY,
            "append {} durable after {:?}, before the emulated {DELAY:?}",
            ticket.index,
            issued.elapsed()
        );
        assert!(log.durable_index() >= ticket.index);
    }
}

#[test]
fn appends_queued_while_an_emulated_flush_is_held_form_the_next_group() {
    let dir = scratch();
    let log = emulated_log(dir.path());
    const APPENDS: u64 = 32;
    // The first append starts a flush that is held for DELAY; the others are queued (append does
    // not wait) while it is held, so they are written together by the next fdatasync(s).
    let tickets: Vec<_> = (0..APPENDS)
        .map(|tag| log.append(None, 1, batch(tag, 1)).unwrap())
        .collect();
    for ticket in &tickets {
        ticket.wait().unwrap();
    }
    let fsyncs = log.stats().fdatasyncs.load(Ordering::SeqCst);
    let batches = log.stats().batches.load(Ordering::SeqCst);
    assert_eq!(batches, APPENDS);
    // Only a descheduling of the appending thread for a whole DELAY, again and again, could
    // split the queue into many groups.
    assert!(
        fsyncs <= APPENDS / 4,
        "{APPENDS} appends took {fsyncs} fdatasyncs: not grouped behind the held flush"
    );
    assert_eq!(log.durable_index(), APPENDS);
}
