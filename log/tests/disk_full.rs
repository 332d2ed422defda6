//! A full disk is a mode of the log (FORMAT.md "Space and preallocation"), on the fault
//! filesystem (`raftline-faultfs`): a group with no room for the next segment waits whole (its
//! ticket neither completes nor fails, `disk_full` names the directory), the log takes it once
//! there is room again — in a segment sized to that room — and nothing but whole batches is
//! ever on disk.

mod common;

use std::time::{Duration, Instant};

use common::{append_waited, batch, config, scratch, tag_of};
use raftline_faultfs::MountOptions;
use raftline_log::segment::{list_segments, segment_path};
use raftline_log::{BackendKind, Log};

#[test]
fn a_group_without_room_waits_whole_and_is_written_once_there_is_room() {
    let dir = scratch();
    let (backing, mount) = (dir.path().join("backing"), dir.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    let fs = MountOptions::new()
        .in_process()
        .mount(&backing, &mount)
        .expect("mount the fault filesystem");
    let log_dir = mount.join("log");
    let cfg = config(&log_dir, BackendKind::PwriteDirect);
    let segment_bytes = cfg.segment_bytes;
    let log = Log::open(cfg.clone()).unwrap();
    // Segment 1 (and the spare prepared beside it) hold what comes before the disk fills.
    append_waited(&log, 1, 0..4);
    fs.enospc(true).unwrap();
    let mut tag = 4;
    let held = loop {
        let ticket = log.append(None, 1, batch(tag, 3)).unwrap();
        tag += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while ticket.try_outcome().is_none() && log.disk_full().is_none() {
            assert!(
                Instant::now() < deadline,
                "append {tag} neither done nor held"
            );
            std::thread::yield_now();
        }
        if log.disk_full().is_some() {
            break ticket;
        }
        ticket
            .try_outcome()
            .unwrap()
            .expect("durable while there was room");
    };
    let full = log.disk_full().expect("full");
    assert_eq!(full.path, log_dir, "names the log directory");
    assert!(
        held.try_outcome().is_none(),
        "the held append neither completes nor fails"
    );
    let durable = log.durable_index();
    // Appends still queue behind it (the owner refuses producers meanwhile).
    let queued = log.append(None, 1, batch(tag, 3)).unwrap();
    assert!(queued.try_outcome().is_none());
    // Less room than a segment returns: the log makes a smaller one and goes on by itself.
    fs.enospc(false).unwrap();
    fs.space(Some(segment_bytes / 2)).unwrap();
    queued.wait().expect("durable once there is room");
    held.try_outcome()
        .unwrap()
        .expect("the held one too, first");
    assert!(log.disk_full().is_none());
    assert_eq!(log.durable_index(), durable + 2);
    let sizes: Vec<u64> = list_segments(&log_dir)
        .unwrap()
        .into_iter()
        .map(|seq| {
            std::fs::metadata(segment_path(&log_dir, seq))
                .unwrap()
                .len()
        })
        .collect();
    assert!(
        sizes.iter().any(|&s| s < segment_bytes),
        "a segment sized to the room left: {sizes:?}"
    );
    let last = log.last_index();
    drop(log);
    // Reopened: exactly the appended batches, in order, nothing partial.
    let log = Log::open(cfg).unwrap();
    assert_eq!(log.last_index(), last);
    let tags: Vec<u64> = log
        .entries(1, last, usize::MAX)
        .unwrap()
        .iter()
        .map(tag_of)
        .collect();
    assert_eq!(tags, (0..=tag).collect::<Vec<_>>());
    drop(log);
    fs.unmount().unwrap();
}
