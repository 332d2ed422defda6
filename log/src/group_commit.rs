//! The writer thread: many appenders hand batches over a bounded channel; the writer packs
//! whatever has queued into one sector-aligned group, writes it and fdatasyncs once, then tells
//! every appender in the group. While one group's fdatasync is in flight, the next accumulates
//! in the channel.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use crate::aligned_buf::{align_up, AlignedBuf};
use crate::backend::{Backend, WriteFailure};
use crate::batch::{Batch, BATCH_HEADER_BYTES, FLAG_TRUNCATE_MARKER};
use crate::error::LogError;
use crate::index::{EntryLoc, LogIndex, SegmentRef};
use crate::segment::{self, FillGate, Preallocate, Prepared, SegmentHeader};
use crate::space::{self, DiskFull};
use crate::writer_hook::WriterHook;

/// Work for the writer, in log order. Ops are numbered 1, 2, ... in the order they are queued
/// (under the sequencer lock) and completed in that order: a caller waits for "op n completed"
/// on the durable state, so queueing allocates nothing per op.
pub(crate) enum Op {
    /// A stamped batch to persist.
    Append { batch: Batch },
    /// A truncation marker to persist on its own.
    Truncate { marker: Batch },
    /// Discard the whole log; it restarts at `next_index`/`next_offset` after `prev_term`.
    Restart {
        next_index: u64,
        next_offset: u64,
        prev_term: u64,
    },
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Append { batch, .. } => batch.as_bytes().len(),
            Op::Truncate { marker, .. } => marker.as_bytes().len(),
            Op::Restart { .. } => 0,
        }
    }
}

/// Counters of the writer, for benchmarks and status.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// fdatasync calls completed (one per group).
    pub fdatasyncs: AtomicU64,
    /// Batches made durable.
    pub batches: AtomicU64,
    /// Bytes written including padding.
    pub bytes_written: AtomicU64,
    /// Microseconds per group commit (write + fdatasync), in etcd's wal fsync buckets.
    pub group_commit_us: crate::histogram::WalFsyncHistogram,
    /// Batches per group commit.
    pub group_batches: crate::histogram::Pow2Histogram,
    /// Segment roll-overs that found the next segment's preparation unfinished (the writer then
    /// stops the zero-fill, waiting at most for its current chunk) or not started.
    pub segment_prepare_waits: AtomicU64,
    /// Microseconds the writer waited at each such roll-over.
    pub segment_prepare_wait_us: crate::histogram::Pow2Histogram,
    /// Segments installed from a file dropped by prefix truncation (no zero-fill, no new blocks).
    pub segments_recycled: AtomicU64,
    /// Groups holding only a durability marker, written when the writer went idle or closed
    /// (each one an fdatasync, also counted in `fdatasyncs`).
    pub durable_mark_groups: AtomicU64,
    /// Durability markers written ahead, without an fdatasync, where the next group will
    /// start: the writer found nothing queued right after a group (FORMAT.md, "Durability
    /// markers").
    pub durable_marks_ahead: AtomicU64,
}

/// A segment dropped by prefix truncation, set aside (as a `.free` file) to be recycled.
pub(crate) struct FreeSegment {
    pub path: PathBuf,
    /// Highest index of any batch the file holds.
    pub stale_index_max: u64,
}

/// Dropped segments kept for recycling; more are deleted. Four cover the roll-overs between two
/// prefix drops of a node snapshotting every 256 MiB with 64 MiB segments, so that in steady
/// state every segment is a recycled one (a fresh one under load is only fallocated, and each
/// fdatasync into unwritten extents waits for an ext4 journal commit).
pub(crate) const FREE_SEGMENTS_MAX: usize = 4;

/// Bytes of a durability marker (a bare batch header).
const DURABLE_MARK_BYTES: usize = BATCH_HEADER_BYTES;

/// How often a writer whose disk is full tries again to make room for its group (a roll-over
/// finding space, a recycled segment or a sized-down one).
const DISK_FULL_RETRY: Duration = Duration::from_millis(100);

/// "Durable up to index N", "ops 1..=n completed", or the error that failed the log.
pub(crate) struct DurableState {
    pub durable_index: u64,
    /// The term of the entry at `durable_index` (what a Raft driver reports as durable).
    pub durable_term: u64,
    pub failed: Option<String>,
    /// Ops completed (successfully, or failed as recorded in `failed_ops`), in queue order.
    pub ops_done: u64,
    /// The ops of the group whose write failed (`first..=last`) and that write's error; every
    /// later op fails with `LogError::Failed`.
    pub failed_ops: Option<(u64, u64, LogError)>,
    /// The writer thread has stopped: ops not completed by now never will be.
    pub closed: bool,
    /// Threads blocked on `Shared::durable_changed`: the writer skips the wake-up syscall per
    /// group when there are none (a Raft driver reads the durable side after its hook instead).
    pub waiters: u32,
    /// The writer holds a group it has no room for and retries (disk-full mode); nothing of
    /// the group is acknowledged, and the ops behind it wait in the queue.
    pub full: Option<DiskFull>,
}

impl DurableState {
    /// The state of a log whose entries up to `durable_index` are on disk and no op is queued.
    pub fn new(durable_index: u64, durable_term: u64) -> DurableState {
        DurableState {
            durable_index,
            durable_term,
            failed: None,
            ops_done: 0,
            failed_ops: None,
            closed: false,
            waiters: 0,
            full: None,
        }
    }

    /// `Err(Failed)` once the log has failed.
    pub fn check_failed(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// The outcome of op `op` if it is known: `Ok` once completed, the write error for the ops
    /// of the failed group, `Failed` for every later one.
    pub fn outcome(&self, op: u64) -> Option<Result<(), LogError>> {
        if let Some((first, last, e)) = &self.failed_ops {
            if (*first..=*last).contains(&op) {
                return Some(Err(e.clone()));
            }
            if op > *last {
                let why = self.failed.clone().unwrap_or_default();
                return Some(Err(LogError::Failed(why)));
            }
        }
        if op <= self.ops_done {
            return Some(Ok(()));
        }
        self.closed.then_some(Err(LogError::Closed))
    }
}

/// State shared by the writer, appenders and readers.
pub(crate) struct Shared {
    pub index: RwLock<LogIndex>,
    pub durable: Mutex<DurableState>,
    pub durable_changed: Condvar,
    pub stats: WriterStats,
    /// Dropped segments waiting to be recycled, oldest first (at most `FREE_SEGMENTS_MAX`).
    pub free_segments: Mutex<VecDeque<FreeSegment>>,
    /// When the group being written (or held for want of space) was started, in microseconds
    /// after `epoch` plus one; 0 while the writer waits for work. Lets the owner see a write
    /// that makes no progress without a lock on the commit path.
    busy_since_us: AtomicU64,
    epoch: Instant,
    /// The log is being closed: a writer held by a full disk gives up its group.
    pub closing: AtomicBool,
}

impl Shared {
    /// The state of a log whose entries (all of `index`) are on disk.
    pub fn new(index: LogIndex) -> Shared {
        let durable = DurableState::new(index.next_index - 1, index.last_term);
        Shared {
            index: RwLock::new(index),
            durable: Mutex::new(durable),
            durable_changed: Condvar::new(),
            stats: WriterStats::default(),
            free_segments: Mutex::new(VecDeque::new()),
            busy_since_us: AtomicU64::new(0),
            epoch: Instant::now(),
            closing: AtomicBool::new(false),
        }
    }

    /// The oldest segment set aside for recycling, if any.
    fn take_free_segment(&self) -> Option<FreeSegment> {
        self.free_segments
            .lock()
            .expect("free segments lock")
            .pop_front()
    }

    fn set_busy(&self, busy: bool) {
        let since = if busy {
            self.epoch.elapsed().as_micros() as u64 + 1
        } else {
            0
        };
        self.busy_since_us.store(since, Ordering::Relaxed);
    }

    /// How long the group now being written has been outstanding (`None`: the writer is idle).
    pub fn write_age(&self) -> Option<Duration> {
        match self.busy_since_us.load(Ordering::Relaxed) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_micros(since - 1)),
            ),
        }
    }

    /// Blocks until `done` holds for the durable state or `timeout` passes (`None`: never),
    /// counted as a waiter so that the writer wakes it.
    pub fn wait_durable_until(
        &self,
        timeout: Option<std::time::Duration>,
        mut done: impl FnMut(&DurableState) -> bool,
    ) -> std::sync::MutexGuard<'_, DurableState> {
        let mut d = self.durable.lock().expect("durable lock");
        if done(&d) {
            return d;
        }
        d.waiters += 1;
        let mut d = match timeout {
            None => self
                .durable_changed
                .wait_while(d, |d| !done(d))
                .expect("durable lock"),
            Some(t) => {
                self.durable_changed
                    .wait_timeout_while(d, t, |d| !done(d))
                    .expect("durable lock")
                    .0
            }
        };
        d.waiters -= 1;
        d
    }
}

/// The next segment being prepared by a background thread.
struct Preparation {
    handle: JoinHandle<std::io::Result<Prepared>>,
    /// Tells a zero-fill when the log commits, and to stop when the segment is needed.
    gate: Arc<FillGate>,
}

impl Preparation {
    /// Stops an unfinished zero-fill (at most one chunk in flight) and returns the body.
    fn cancel_and_join(self) -> std::thread::Result<std::io::Result<Prepared>> {
        self.gate.cancel.store(true, Ordering::Relaxed);
        self.handle.thread().unpark();
        self.handle.join()
    }
}

/// Static parameters of the writer.
pub(crate) struct WriterParams {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    /// Bytes a new segment must leave free on the disk (see `space::segment_size`).
    pub reserve_bytes: u64,
    pub group_bytes_max: usize,
    pub preallocate: Preallocate,
    pub emulated_fsync_delay: Duration,
    /// How long the writer stays idle after a group before it writes a marker-only group.
    pub durable_mark_idle: Duration,
    /// A group's ops complete only once a synced marker vouches for it (`LogConfig`).
    pub durable_mark_before_ack: bool,
    pub durable_hook: Option<WriterHook>,
}

/// The writer thread's state.
pub(crate) struct Writer {
    params: WriterParams,
    backend: Backend,
    shared: Arc<Shared>,
    file: File,
    header: SegmentHeader,
    pos: u64,
    buf: AlignedBuf,
    spare: Option<Preparation>,
    failed: Option<String>,
    /// Ops completed so far (the numbering of `Op`).
    ops_completed: u64,
    /// Where each batch of the group being written lands (reused: no allocation per group).
    locs: Vec<(crate::batch::BatchHeader, u64)>,
    /// The durable index no marker on disk vouches for yet: set after each group this writer
    /// synced, cleared once a marker carrying it is written. `None` at open: what recovery
    /// found was not necessarily synced, and a marker must never claim more than was.
    mark_due: Option<u64>,
    /// Where in the active segment a marker carrying `mark_due` was written ahead (not synced):
    /// the next group starts there and rewrites those bytes unchanged.
    mark_ahead: Option<u64>,
    /// With `durable_mark_before_ack`: the ops of the groups synced since the last synced
    /// marker and the durable `(index, term)` after them, completed once a marker vouching for
    /// that index is synced (at the next group's head, or in a marker-only group at once).
    unvouched: Option<(u64, (u64, u64))>,
}

/// Marks the durable state closed when the writer thread ends, even by a panic, so that no
/// caller waits forever for an op that will never complete.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let mut d = match self.0.durable.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        d.closed = true;
        self.0.durable_changed.notify_all();
    }
}

impl Writer {
    /// A writer continuing segment `header` at `pos` (opened with `file` for `backend`).
    pub fn new(
        params: WriterParams,
        backend: Backend,
        shared: Arc<Shared>,
        file: File,
        header: SegmentHeader,
        pos: u64,
    ) -> Writer {
        let buf = AlignedBuf::new(params.group_bytes_max);
        let mut w = Writer {
            params,
            backend,
            shared,
            file,
            header,
            pos,
            buf,
            spare: None,
            failed: None,
            ops_completed: 0,
            locs: Vec::new(),
            mark_due: None,
            mark_ahead: None,
            unvouched: None,
        };
        w.prepare_spare_if_due();
        w
    }

    /// Starts preparing the next segment in the background once the active one is a quarter
    /// full (or right after a roll-over, when the log is evidently busy): early enough to be
    /// ready at the next roll-over, late enough that a log which is opened and closed often
    /// does not zero-fill segments it never uses.
    fn prepare_spare_if_due(&mut self) {
        if self.spare.is_none() && self.pos >= self.params.segment_bytes / 4 {
            self.prepare_spare();
        }
    }

    /// Starts preparing the next segment: recycling a dropped one if any is set aside (a rename:
    /// its blocks are already written), else zero-filling a new one.
    fn prepare_spare(&mut self) {
        let dir = self.params.dir.clone();
        let (seq, bytes, how) = (
            self.header.seq + 1,
            self.params.segment_bytes,
            self.params.preallocate,
        );
        let (min, reserve) = (self.min_segment_bytes(), self.params.reserve_bytes);
        let free = self.shared.take_free_segment();
        let gate = Arc::new(FillGate::default());
        let fill_gate = Arc::clone(&gate);
        let spawned = std::thread::Builder::new()
            .name("raftline-log-prep".into())
            .spawn(move || match free {
                Some(f) => segment::recycle(&dir, &f.path, seq, f.stale_index_max),
                None => space::segment_size(&dir, bytes, min, reserve)
                    .and_then(|bytes| segment::prepare(&dir, seq, bytes, how, &fill_gate)),
            });
        match spawned {
            Ok(handle) => self.spare = Some(Preparation { handle, gate }),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot spawn the segment preparation thread; the next roll-over prepares inline"
            ),
        }
    }

    /// The prepared next segment, if its preparation was started: stops an unfinished zero-fill
    /// (the rest of the body stays fallocated, reading as zeros) and counts the wait.
    fn take_spare(&mut self) -> Option<std::io::Result<Prepared>> {
        let spare = self.spare.take()?;
        if spare.handle.is_finished() {
            return Some(spare.handle.join().expect("segment preparation panicked"));
        }
        let started = std::time::Instant::now();
        let prepared = spare
            .cancel_and_join()
            .expect("segment preparation panicked");
        let stats = &self.shared.stats;
        stats.segment_prepare_waits.fetch_add(1, Ordering::Relaxed);
        stats
            .segment_prepare_wait_us
            .record(started.elapsed().as_micros() as u64);
        Some(prepared)
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Op>) {
        let _close = CloseOnExit(Arc::clone(&self.shared));
        let mut carry: Option<Op> = None;
        let mut group: Vec<Op> = Vec::new();
        loop {
            let first = match carry.take() {
                Some(op) => op,
                None => match self.next_op_or_mark(&rx) {
                    Some(op) => op,
                    None => break,
                },
            };
            if let Op::Restart {
                next_index,
                next_offset,
                prev_term,
            } = first
            {
                // Ops held for a marker complete before the restart's, in queue order.
                if let Some((_, (durable, _))) = self.unvouched {
                    if !self.vouch_now(durable) {
                        break;
                    }
                }
                let Some(result) =
                    self.until_room(|w| w.restart(next_index, next_offset, prev_term))
                else {
                    break;
                };
                self.mark_due = result.as_ref().ok().map(|&(index, _)| index);
                self.complete(1, result);
                continue;
            }
            let group_max = self.group_bytes_max();
            // The marker rides at the head of the group when it fits; else the next one
            // carries it (a marker only ever claims less than is durable, never more).
            let mark = self
                .mark_due
                .filter(|_| first.bytes() + DURABLE_MARK_BYTES <= group_max);
            let mut bytes = first.bytes() + mark.map_or(0, |_| DURABLE_MARK_BYTES);
            // A truncation marker is a group of its own.
            let alone = !matches!(first, Op::Append { .. });
            group.push(first);
            if !alone {
                loop {
                    match rx.try_recv() {
                        Ok(op @ Op::Append { .. }) if bytes + op.bytes() <= group_max => {
                            bytes += op.bytes();
                            group.push(op);
                        }
                        Ok(op) => {
                            carry = Some(op);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
            }
            if !self.commit(&mut group, bytes, mark) {
                break;
            }
        }
        if let Some(spare) = self.spare.take() {
            let _ = spare.cancel_and_join();
        }
    }

    /// The next op; while a durable index waits for its marker, waits at most
    /// `durable_mark_idle` for one and otherwise writes a marker-only group (also when the
    /// last sender is gone, so that a clean close leaves every group vouched for). With
    /// `durable_mark_before_ack`, ops wait for that marker: it is written at once when nothing
    /// is queued. `None` once every sender is gone.
    fn next_op_or_mark(&mut self, rx: &Receiver<Op>) -> Option<Op> {
        loop {
            let Some(durable) = self.mark_due.filter(|_| self.failed.is_none()) else {
                return rx.recv().ok();
            };
            if self.params.durable_mark_before_ack {
                let closed = match rx.try_recv() {
                    Ok(op) => return Some(op),
                    Err(TryRecvError::Empty) => false,
                    Err(TryRecvError::Disconnected) => true,
                };
                if !self.vouch_now(durable) || closed {
                    return None;
                }
                continue;
            }
            if self.mark_ahead != Some(self.pos) {
                match rx.try_recv() {
                    Ok(op) => return Some(op),
                    Err(TryRecvError::Empty) => self.write_mark_ahead(durable),
                    Err(TryRecvError::Disconnected) => {}
                }
            }
            let closed = match rx.recv_timeout(self.params.durable_mark_idle) {
                Ok(op) => return Some(op),
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            self.shared.set_busy(true);
            let written = self.write_mark_group(durable);
            self.shared.set_busy(false);
            match written {
                Ok(()) => {}
                // No room for a marker alone: the next op's group carries it (or waits for
                // room itself).
                Err(LogError::DiskFull { .. }) if !closed => return rx.recv().ok(),
                Err(LogError::DiskFull { .. }) => {}
                // No op waits for a marker: the log is failed for the ops that come.
                Err(e) => self.complete(0, Err(e)),
            }
            if closed {
                return None;
            }
        }
    }

    /// Writes and syncs a group holding only the marker vouching for `durable`.
    fn write_mark_group(&mut self, durable: u64) -> Result<(), LogError> {
        self.write_group(&[], DURABLE_MARK_BYTES, Some(durable))?;
        self.mark_due = None;
        self.shared
            .stats
            .durable_mark_groups
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// With `durable_mark_before_ack`: syncs a marker-only group vouching for `durable` now
    /// (waiting for room if need be) and completes the ops held for it, or fails them with the
    /// log; `false` if the log was closed while it waited for room.
    fn vouch_now(&mut self, durable: u64) -> bool {
        let Some(written) = self.until_room(|w| w.write_mark_group(durable)) else {
            return false;
        };
        match written {
            Ok(()) => {
                self.release_vouched(durable);
                self.shared.set_busy(false);
            }
            Err(e) => {
                let held = self.take_held_ops();
                self.complete(held, Err(e));
            }
        }
        true
    }

    /// How many ops were held for a marker, no longer held (they complete or fail with the caller's).
    fn take_held_ops(&mut self) -> u64 {
        self.unvouched.take().map_or(0, |(ops, _)| ops)
    }

    /// Completes the held ops: a synced marker now vouches for every entry through `mark`.
    fn release_vouched(&mut self, mark: u64) {
        if let Some((ops, durable)) = self.unvouched.take() {
            // Held ops always wait for the marker of the latest synced group (`mark_due`).
            assert_eq!(durable.0, mark, "a marker vouches for the held groups");
            self.complete(ops, Ok(durable));
        }
    }

    /// Writes the marker vouching for `durable` where the next group will start, without an
    /// fdatasync, when the writer has nothing queued right after a group: a process that dies
    /// now (kill -9, a panic, OOM) leaves the marker in the page cache or on the device, and
    /// recovery can tell a rotted last group from a torn one, where before it could not until
    /// the next group or the idle marker. Only a power cut before the next fdatasync still
    /// loses it (FORMAT.md, "Residual window"). The next group starts with the same marker, so
    /// rewriting the sector cannot damage it whichever version a torn write leaves. Best
    /// effort: on failure the marker rides at the head of the next group as before.
    fn write_mark_ahead(&mut self, durable: u64) {
        let sector = crate::aligned_buf::SECTOR_BYTES as u64;
        if self.pos + sector > self.header.segment_bytes {
            return;
        }
        self.buf.clear();
        self.buf
            .extend_from_slice(Batch::durable_mark(durable, self.header.seq).as_bytes());
        self.buf.pad_to_sector();
        // Outstanding like any log write: a disk that freezes under this pwrite must show as
        // a stall (`write_age`), not as an idle writer.
        self.shared.set_busy(true);
        let written = self.file.write_all_at(self.buf.as_slice(), self.pos);
        self.shared.set_busy(false);
        match written {
            Ok(()) => {
                self.mark_ahead = Some(self.pos);
                self.shared
                    .stats
                    .durable_marks_ahead
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "writing a durability marker ahead failed"),
        }
    }

    fn run_durable_hook(&self) {
        if let Some(hook) = &self.params.durable_hook {
            (hook.0)();
        }
    }

    fn group_bytes_max(&self) -> usize {
        self.params
            .group_bytes_max
            .min(self.header.group_bytes_max as usize)
    }

    /// The smallest segment worth creating: its header and one whole group.
    fn min_segment_bytes(&self) -> u64 {
        segment::SEGMENT_HEADER_BYTES + align_up(self.params.group_bytes_max as u64)
    }

    /// Writes `group` (`bytes` of batches, with the marker vouching for `mark` at its head if
    /// any) as one write + fdatasync and completes its ops; `false` if the log was closed while
    /// the group waited for room (its ops never complete).
    fn commit(&mut self, group: &mut Vec<Op>, bytes: usize, mark: Option<u64>) -> bool {
        let Some(result) = self.until_room(|w| w.write_group(group, bytes, mark)) else {
            return false;
        };
        let ops = group.len() as u64;
        group.clear();
        match result {
            Ok(durable) if self.params.durable_mark_before_ack => {
                self.mark_due = Some(durable.0);
                if let Some(mark) = mark {
                    self.release_vouched(mark);
                }
                // This group's ops wait for the marker the next group (or one of its own)
                // carries; a group too large to carry one adds its ops to those held.
                let held = self.take_held_ops();
                self.unvouched = Some((held + ops, durable));
                self.shared.set_busy(false);
            }
            Ok(durable) => {
                self.mark_due = Some(durable.0);
                self.complete(ops, Ok(durable));
            }
            // The held ops fail with this group's: none was acknowledged.
            Err(e) => {
                let held = self.take_held_ops();
                self.complete(held + ops, Err(e));
            }
        }
        true
    }

    /// Runs `attempt` (a group's write or a restart) until it does not fail for want of space:
    /// meanwhile the log is in disk-full mode (published in the durable state, the owner woken)
    /// and nothing is completed, failed or dropped; the queue behind it backs up. Retried every
    /// [`DISK_FULL_RETRY`]: a prefix truncation may have set a segment aside to recycle, or an
    /// operator freed space. `None` if the log was closed meanwhile.
    fn until_room<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Self) -> Result<T, LogError>,
    ) -> Option<Result<T, LogError>> {
        self.shared.set_busy(true);
        let mut held = false;
        loop {
            let result = match &self.failed {
                Some(why) => Err(LogError::Failed(why.clone())),
                None => attempt(self),
            };
            let Err(LogError::DiskFull { dir, free_bytes }) = result else {
                if held {
                    self.publish_full(None);
                    tracing::info!(dir = %self.params.dir.display(), "the disk has room again: log writes resume");
                }
                return Some(result);
            };
            if !held {
                tracing::warn!(
                    dir = %dir.display(),
                    free_bytes,
                    "disk full: log writes wait for room (nothing acknowledged is lost; appends are refused meanwhile)"
                );
                held = true;
            }
            self.publish_full(Some(DiskFull {
                path: dir,
                free_bytes,
            }));
            std::thread::sleep(DISK_FULL_RETRY);
            if self.shared.closing.load(Ordering::Relaxed) {
                return None;
            }
        }
    }

    /// Publishes the disk-full state and wakes the owner when it changes.
    fn publish_full(&self, full: Option<DiskFull>) {
        let changed = {
            let mut d = self.shared.durable.lock().expect("durable lock");
            let changed = d.full.is_some() != full.is_some();
            d.full = full;
            changed
        };
        if changed {
            self.run_durable_hook();
        }
    }

    /// The disk-full error for this log's directory, with the space free there now.
    fn disk_full(&self) -> LogError {
        LogError::DiskFull {
            dir: self.params.dir.clone(),
            free_bytes: space::free_bytes(&self.params.dir).unwrap_or(0),
        }
    }

    /// Publishes the outcome of the next `ops` ops (`Ok(durable (index, term))` or the error),
    /// with one wake-up for all their waiters, and runs the durable hook. On an error, the log
    /// is failed for good.
    fn complete(&mut self, ops: u64, result: Result<(u64, u64), LogError>) {
        let first = self.ops_completed + 1;
        self.ops_completed += ops;
        // The hook runs once the durable side shows the group (so `Log::durable_last` sees it)
        // and before its tickets complete; after a failure, once the failure is visible.
        if let Ok((index, term)) = result {
            {
                let mut d = self.shared.durable.lock().expect("durable lock");
                d.durable_index = index;
                d.durable_term = term;
            }
            self.run_durable_hook();
        }
        let failed_now = {
            let mut d = self.shared.durable.lock().expect("durable lock");
            let failed_now = match result {
                Ok(_) => false,
                Err(e) if self.failed.is_none() => {
                    let why = e.to_string();
                    tracing::error!(error = %why, "log write failed; the log is failed until reopened");
                    self.failed = Some(why.clone());
                    d.failed = Some(why);
                    d.failed_ops = Some((first, self.ops_completed, e));
                    true
                }
                Err(_) => true,
            };
            d.ops_done = self.ops_completed;
            if d.waiters > 0 {
                self.shared.durable_changed.notify_all();
            }
            failed_now
        };
        self.shared.set_busy(false);
        if failed_now {
            self.run_durable_hook();
        }
    }

    /// Writes the group (`bytes` in all, a durability marker vouching for `mark` first if any)
    /// durably and extends the index; returns the new durable `(index, term)`.
    fn write_group(
        &mut self,
        group: &[Op],
        bytes: usize,
        mark: Option<u64>,
    ) -> Result<(u64, u64), LogError> {
        debug_assert!(bytes <= self.group_bytes_max());
        if self.pos + align_up(bytes as u64) > self.header.segment_bytes {
            self.roll_over()?;
        }
        self.buf.clear();
        if let Some(durable) = mark {
            // Recovery refuses a marker that does not name the last index before it.
            debug_assert_eq!(
                durable + 1,
                self.shared.index.read().expect("index lock").next_index,
                "a marker vouches for exactly the durable log before it"
            );
            // After a roll-over too: the marker names the segment it is written in.
            let marker = Batch::durable_mark(durable, self.header.seq);
            self.buf.extend_from_slice(marker.as_bytes());
        }
        let mut locs = std::mem::take(&mut self.locs);
        locs.clear();
        for op in group {
            let batch = match op {
                Op::Append { batch, .. } => batch,
                Op::Truncate { marker, .. } => marker,
                Op::Restart { .. } => unreachable!("a restart is never part of a group"),
            };
            let h = batch.header();
            locs.push((h, self.pos + self.buf.len() as u64));
            self.buf.extend_from_slice(batch.as_bytes());
        }
        self.buf.pad_to_sector();
        let started = Instant::now();
        let gate = self.spare.as_ref().map(|s| &s.gate);
        gate.inspect(|g| g.log_busy.store(true, Ordering::Relaxed));
        let written = self.backend.write_durable(&self.file, &self.buf, self.pos);
        // An emulated slower disk: the commit completes no sooner than its real completion
        // and no sooner than the profile's latency after it was issued.
        if let Some(wait) =
            (started + self.params.emulated_fsync_delay).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        gate.inspect(|g| g.log_busy.store(false, Ordering::Relaxed));
        written.map_err(|failure| match failure {
            // Nothing of the group is durable or acknowledged: it is written again, whole, at
            // the same place once there is room (a torn first try is overwritten).
            WriteFailure::Write(e) if space::is_no_space(&e) => self.disk_full(),
            failure => LogError::io(
                format!("writing + fdatasync of segment {}", self.header.seq),
                failure.into_io(),
            ),
        })?;
        self.pos += self.buf.len() as u64;
        self.prepare_spare_if_due();
        let stats = &self.shared.stats;
        stats.fdatasyncs.fetch_add(1, Ordering::Relaxed);
        stats
            .batches
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        stats
            .bytes_written
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        stats
            .group_commit_us
            .record(started.elapsed().as_micros() as u64);
        stats.group_batches.record(group.len() as u64);
        let durable_index = {
            let mut index = self.shared.index.write().expect("index lock");
            let active = index
                .segments
                .back_mut()
                .expect("the active segment is indexed");
            debug_assert_eq!(active.seq, self.header.seq);
            for (h, _) in &locs {
                active.note_written(h.index, h.flags & FLAG_TRUNCATE_MARKER != 0);
            }
            for (h, pos) in locs.drain(..) {
                if h.flags & FLAG_TRUNCATE_MARKER != 0 {
                    index.truncate_suffix(h.index, h.base_offset, h.term);
                } else {
                    index.push(EntryLoc {
                        index: h.index,
                        term: h.term,
                        base_offset: h.base_offset,
                        record_count: h.record_count,
                        seg: self.header.seq,
                        pos,
                        len: h.total_bytes as u32,
                    });
                }
            }
            (index.next_index - 1, index.last_term)
        };
        self.locs = locs;
        Ok(durable_index)
    }

    /// Seals the current segment (all its groups are durable) and starts the next one.
    fn roll_over(&mut self) -> Result<(), LogError> {
        let start = {
            let index = self.shared.index.read().expect("index lock");
            (index.next_index, index.next_offset, index.last_term)
        };
        self.start_segment(start, false)
    }

    /// The prepared next segment, usable for a segment starting at `base_index`: a recycled body
    /// only if each of its stale batches has an index below every entry or marker the new life
    /// can hold (`base_index` and, before a restart, the first retained index: truncation markers
    /// never go below it). Otherwise it is deleted and another body made at once (the writer
    /// never waits for a zero-fill). `DiskFull` when there is no room for one.
    fn next_body(&mut self, base_index: u64, restart: bool) -> Result<Prepared, LogError> {
        let floor = if restart {
            base_index
        } else {
            let first = self.shared.index.read().expect("index lock").first_index;
            first.min(base_index)
        };
        let p = match self.take_spare() {
            Some(Ok(p)) if p.stale_index_max < floor => p,
            spare => {
                match spare {
                    Some(Ok(p)) => std::fs::remove_file(&p.path)
                        .map_err(|e| LogError::io("deleting an unusable recycled segment", e))?,
                    // Sized again below, with the room there is now.
                    Some(Err(e)) if space::is_no_space(&e) => {}
                    Some(Err(e)) => return Err(LogError::io("preparing the next segment", e)),
                    None => {}
                }
                let started = std::time::Instant::now();
                let p = self.prepare_now(floor)?;
                let stats = &self.shared.stats;
                stats.segment_prepare_waits.fetch_add(1, Ordering::Relaxed);
                stats
                    .segment_prepare_wait_us
                    .record(started.elapsed().as_micros() as u64);
                p
            }
        };
        if p.stale_index_max > 0 {
            self.shared
                .stats
                .segments_recycled
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(p)
    }

    /// A body for the next segment at once: a dropped segment set aside since the spare was
    /// started, if usable (its blocks are written: it needs no room), else a fresh one sized to
    /// the room left and only fallocated.
    fn prepare_now(&mut self, floor: u64) -> Result<Prepared, LogError> {
        let dir = &self.params.dir;
        let seq = self.header.seq + 1;
        let free = self.shared.take_free_segment();
        if let Some(f) = free {
            if f.stale_index_max < floor {
                return segment::recycle(dir, &f.path, seq, f.stale_index_max)
                    .map_err(|e| LogError::io("recycling a dropped segment", e));
            }
            std::fs::remove_file(&f.path)
                .map_err(|e| LogError::io("deleting an unusable recycled segment", e))?;
        }
        let stop_at_once = FillGate::default();
        stop_at_once.cancel.store(true, Ordering::Relaxed);
        let (wanted, min) = (self.params.segment_bytes, self.min_segment_bytes());
        space::segment_size(dir, wanted, min, self.params.reserve_bytes)
            .and_then(|bytes| {
                segment::prepare(dir, seq, bytes, self.params.preallocate, &stop_at_once)
            })
            .map_err(|e| {
                if space::is_no_space(&e) {
                    self.disk_full()
                } else {
                    LogError::io("preparing the next segment", e)
                }
            })
    }

    /// Starts a restart segment at the given position, then deletes every earlier segment;
    /// returns the new durable `(index, term)`. A crash before the deletes leaves obsolete
    /// segments that recovery skips and removes.
    fn restart(
        &mut self,
        next_index: u64,
        next_offset: u64,
        prev_term: u64,
    ) -> Result<(u64, u64), LogError> {
        self.start_segment((next_index, next_offset, prev_term), true)?;
        let obsolete: Vec<u64> = {
            let mut index = self.shared.index.write().expect("index lock");
            let segments = std::mem::take(&mut index.segments);
            let mut fresh = LogIndex::starting_at(next_index, next_offset, prev_term);
            let (obsolete, current): (Vec<_>, Vec<_>) =
                segments.into_iter().partition(|s| s.seq < self.header.seq);
            fresh.segments.extend(current);
            *index = fresh;
            obsolete.iter().map(|s| s.seq).collect()
        };
        crate::fault::crash_point("restart-before-delete");
        segment::remove_segments(&self.params.dir, &obsolete)
            .map_err(|e| LogError::io("deleting segments obsolete after a restart", e))?;
        Ok((next_index - 1, prev_term))
    }

    /// Seals the current segment and starts the next at log position `(index, offset, prev_term)`.
    fn start_segment(&mut self, start: (u64, u64, u64), restart: bool) -> Result<(), LogError> {
        let dir = self.params.dir.clone();
        if self.mark_ahead.take() == Some(self.pos) {
            // A marker written ahead ends the segment being sealed: synced, it is a valid
            // marker-only group there, never a torn write inside a sealed segment.
            self.file.sync_data().map_err(|e| {
                LogError::io(format!("fdatasync of segment {}", self.header.seq), e)
            })?;
        }
        let prepared = self.next_body(start.0, restart)?;
        let header = SegmentHeader {
            seq: self.header.seq + 1,
            base_index: start.0,
            base_offset: start.1,
            prev_term: start.2,
            segment_bytes: prepared.bytes,
            group_bytes_max: self.params.group_bytes_max as u64,
            restart,
            stale_index_max: prepared.stale_index_max,
        };
        let file =
            segment::install(&dir, &prepared.path, &header, self.backend.kind()).map_err(|e| {
                if space::is_no_space(&e) {
                    self.disk_full()
                } else {
                    LogError::io(format!("installing segment {}", header.seq), e)
                }
            })?;
        let path = segment::segment_path(&dir, header.seq);
        let read_file = File::open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        self.shared
            .index
            .write()
            .expect("index lock")
            .segments
            .push_back(SegmentRef::new(
                header.seq,
                Arc::new(read_file),
                header.stale_index_max,
            ));
        tracing::debug!(
            seq = header.seq,
            base_index = header.base_index,
            "rolled over to a new segment"
        );
        self.file = file;
        self.header = header;
        self.pos = segment::SEGMENT_HEADER_BYTES;
        self.prepare_spare();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::index::LogIndex;

    #[test]
    fn a_failed_write_fails_the_log_for_good_and_is_never_retried() {
        let dir = tempfile::Builder::new()
            .prefix("raftline-gc-test")
            .tempdir_in("/tmp")
            .unwrap();
        let header = SegmentHeader {
            seq: 1,
            base_index: 1,
            base_offset: 0,
            prev_term: 0,
            segment_bytes: 64 << 10,
            group_bytes_max: 8 << 10,
            restart: false,
            stale_index_max: 0,
        };
        let prepared = segment::prepare(
            dir.path(),
            1,
            header.segment_bytes,
            Preallocate::Sparse,
            &FillGate::default(),
        )
        .unwrap();
        segment::install(dir.path(), &prepared.path, &header, BackendKind::Buffered).unwrap();
        // A read-only descriptor makes the real write fail (EBADF): the same path an fdatasync
        // error takes.
        let read_only = File::open(segment::segment_path(dir.path(), 1)).unwrap();
        let shared = Arc::new(Shared::new(LogIndex::starting_at(1, 0, 0)));
        let params = WriterParams {
            dir: dir.path().to_path_buf(),
            segment_bytes: header.segment_bytes,
            reserve_bytes: 0,
            group_bytes_max: 8 << 10,
            preallocate: Preallocate::Sparse,
            emulated_fsync_delay: Duration::ZERO,
            durable_mark_idle: Duration::from_millis(10),
            durable_mark_before_ack: false,
            durable_hook: None,
        };
        let writer = Writer::new(
            params,
            Backend::Pwrite { direct: false },
            Arc::clone(&shared),
            read_only,
            header,
            4096,
        );
        let (tx, rx) = crossbeam_channel::bounded(4);
        let thread = std::thread::spawn(move || writer.run(rx));
        let outcome = |op: u64| {
            shared
                .wait_durable_until(None, |d| d.outcome(op).is_some())
                .outcome(op)
                .unwrap()
        };
        let send = |op: u64| {
            let mut batch = Batch::encode(&[]).unwrap();
            batch.stamp(0, 1, 1);
            tx.send(Op::Append { batch }).unwrap();
            outcome(op)
        };
        assert!(
            matches!(send(1), Err(LogError::Io { .. })),
            "the write error surfaces"
        );
        assert!(
            matches!(send(2), Err(LogError::Failed(_))),
            "later appends fail without another write"
        );
        assert!(
            matches!(outcome(1), Err(LogError::Io { .. })),
            "outcomes are kept"
        );
        drop(tx);
        thread.join().unwrap();
        assert!(
            matches!(outcome(3), Err(LogError::Failed(_))),
            "an op never completed by a failed, stopped writer fails"
        );
        assert!(shared.durable.lock().unwrap().failed.is_some());
        assert_eq!(shared.stats.fdatasyncs.load(Ordering::Relaxed), 0);
        assert_eq!(
            shared.index.read().unwrap().next_index,
            1,
            "nothing became durable"
        );
    }
}
