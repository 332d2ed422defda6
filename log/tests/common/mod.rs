//! Shared fixtures of the log's integration tests.
#![allow(dead_code)]

use std::path::Path;

use raftline_log::batch::check_frame;
use raftline_log::segment::{segment_path, SEGMENT_HEADER_BYTES};
use raftline_log::{BackendChoice, BackendKind, Batch, Log, LogConfig, Preallocate, Record};

/// Small segments and groups so that tests cross segment boundaries and torn-tail bounds.
pub fn config(dir: &Path, kind: BackendKind) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        backend: BackendChoice::Force(kind),
        segment_bytes: 64 << 10,
        batch_bytes_max: 4 << 10,
        group_bytes_max: 8 << 10,
        queue_depth: 64,
        preallocate: Preallocate::ZeroFill,
        reserve_bytes: 0,
        emulated_fsync_delay: std::time::Duration::ZERO,
        durable_mark_idle: std::time::Duration::from_millis(10),
        durable_mark_before_ack: false,
        durable_hook: None,
        writer_start_hook: None,
        durable_loss_hook: None,
        on_damage: raftline_log::OnDamage::Refuse,
    }
}

/// A scratch directory on the ext4 disk (not tmpfs: alignment must be enforced).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("raftline-log-test")
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// A batch of `n` records whose values identify (`tag`, record number).
pub fn batch(tag: u64, n: usize) -> Batch {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            key: Some(format!("k{tag}").into_bytes()),
            value: format!("value-{tag}-{i}").into_bytes(),
            timestamp_ms: tag,
            headers: vec![],
        })
        .collect();
    Batch::encode(&records).expect("encode")
}

/// The tag a batch made by `batch` carries.
pub fn tag_of(b: &Batch) -> u64 {
    b.records()
        .expect("records")
        .first()
        .map_or(u64::MAX, |r| r.timestamp_ms)
}

/// Appends `tags` one at a time, each waited for (so each is its own group), with `term`.
pub fn append_waited(log: &Log, term: u64, tags: impl IntoIterator<Item = u64>) {
    for tag in tags {
        log.append(None, term, batch(tag, 3))
            .expect("append")
            .wait()
            .expect("durable");
    }
}

/// (position, length) of every valid frame in segment `seq` but the durability markers, in file
/// order.
pub fn frames(dir: &Path, seq: u64) -> Vec<(usize, usize)> {
    let data = std::fs::read(segment_path(dir, seq)).expect("read segment");
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    while pos < data.len() {
        match check_frame(&data[pos..]) {
            Ok(h) => {
                if !h.is_durable_mark() {
                    out.push((pos, h.total_bytes));
                }
                pos += h.total_bytes;
            }
            Err(_) => pos += 1,
        }
    }
    out
}

/// (position, durable index) of every durability marker in segment `seq`, in file order.
pub fn marks(dir: &Path, seq: u64) -> Vec<(usize, u64)> {
    let data = std::fs::read(segment_path(dir, seq)).expect("read segment");
    (SEGMENT_HEADER_BYTES as usize..data.len())
        .step_by(4096)
        .filter_map(|pos| {
            check_frame(&data[pos..])
                .ok()
                .filter(|h| h.is_durable_mark())
                .map(|h| (pos, h.index))
        })
        .collect()
}

/// Tags of all durable entries, in index order.
pub fn all_tags(log: &Log) -> Vec<u64> {
    let (first, last) = (log.first_index(), log.last_index());
    if last < first {
        return vec![];
    }
    log.entries(first, last, usize::MAX)
        .expect("entries")
        .iter()
        .map(tag_of)
        .collect()
}
