//! The writer thread: many appenders hand batches over a bounded channel; the writer packs
//! whatever has queued into one sector-aligned group, writes it and fdatasyncs once, then tells
//! every appender in the group. While one group's fdatasync is in flight, the next accumulates
//! in the channel.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use crate::aligned_buf::{align_up, AlignedBuf};
use crate::backend::Backend;
use crate::batch::{Batch, FLAG_TRUNCATE_MARKER};
use crate::error::LogError;
use crate::index::{EntryLoc, LogIndex, SegmentRef};
use crate::segment::{self, Preallocate, SegmentHeader};

/// Completion of one queued operation: `Ok` once it is durable.
pub(crate) type Done = Sender<Result<(), LogError>>;

/// Work for the writer, in log order.
pub(crate) enum Op {
    /// A stamped batch to persist.
    Append { batch: Batch, done: Option<Done> },
    /// A truncation marker to persist on its own.
    Truncate { marker: Batch, done: Done },
    /// Discard the whole log; it restarts at `next_index`/`next_offset` after `prev_term`.
    Restart {
        next_index: u64,
        next_offset: u64,
        prev_term: u64,
        done: Done,
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
    /// Microseconds per group commit (write + fdatasync).
    pub group_commit_us: crate::histogram::Pow2Histogram,
    /// Batches per group commit.
    pub group_batches: crate::histogram::Pow2Histogram,
}

/// "Durable up to index N", or the error that failed the log.
pub(crate) struct DurableState {
    pub durable_index: u64,
    pub failed: Option<String>,
}

/// State shared by the writer, appenders and readers.
pub(crate) struct Shared {
    pub index: RwLock<LogIndex>,
    pub durable: Mutex<DurableState>,
    pub durable_changed: Condvar,
    pub stats: WriterStats,
}

/// Static parameters of the writer.
pub(crate) struct WriterParams {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub group_bytes_max: usize,
    pub preallocate: Preallocate,
    pub emulated_fsync_delay: std::time::Duration,
    pub durable_hook: Option<crate::log::WriterHook>,
}

/// How much longer an emulated disk holds back a group whose real write + fdatasync returned
/// `since_issue` after it was issued: completion = max(real completion, issue + `delay`). The
/// hold is served on the writer thread after the real completion and before anything is
/// published, so emulation can only make a group durable later, never earlier, and groups stay
/// one at a time: appends arriving meanwhile queue and form the next group, as on a real device.
fn emulated_hold(
    delay: std::time::Duration,
    since_issue: std::time::Duration,
) -> std::time::Duration {
    delay.saturating_sub(since_issue)
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
    spare: Option<JoinHandle<std::io::Result<PathBuf>>>,
    failed: Option<String>,
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

    fn prepare_spare(&mut self) {
        let dir = self.params.dir.clone();
        let (seq, bytes, how) = (
            self.header.seq + 1,
            self.params.segment_bytes,
            self.params.preallocate,
        );
        self.spare = Some(std::thread::spawn(move || {
            segment::prepare(&dir, seq, bytes, how)
        }));
    }

    /// Runs until every sender is gone.
    pub fn run(mut self, rx: Receiver<Op>) {
        let mut carry: Option<Op> = None;
        let mut group: Vec<Op> = Vec::new();
        loop {
            let first = match carry.take() {
                Some(op) => op,
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            if let Op::Restart {
                next_index,
                next_offset,
                prev_term,
                done,
            } = first
            {
                let result = match &self.failed {
                    Some(why) => Err(LogError::Failed(why.clone())),
                    None => self.restart(next_index, next_offset, prev_term),
                };
                let _ = done.send(result);
                self.run_durable_hook();
                continue;
            }
            let group_max = self.group_bytes_max();
            let mut bytes = first.bytes();
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
            self.commit(&mut group, bytes);
        }
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
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

    /// Writes `group` (`bytes` of batches) as one write + fdatasync and completes its ops.
    fn commit(&mut self, group: &mut Vec<Op>, bytes: usize) {
        let result = match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => self.write_group(group, bytes),
        };
        if let Err(e) = &result {
            if self.failed.is_none() {
                let why = e.to_string();
                tracing::error!(error = %why, "log write failed; the log is failed until reopened");
                self.failed = Some(why.clone());
                let mut d = self.shared.durable.lock().expect("durable lock");
                d.failed = Some(why);
                self.shared.durable_changed.notify_all();
            }
        }
        self.run_durable_hook();
        for op in group.drain(..) {
            let done = match op {
                Op::Append { done, .. } => done,
                Op::Truncate { done, .. } | Op::Restart { done, .. } => Some(done),
            };
            if let Some(done) = done {
                let _ = done.send(result.clone());
            }
        }
    }

    fn write_group(&mut self, group: &[Op], bytes: usize) -> Result<(), LogError> {
        debug_assert!(bytes <= self.group_bytes_max());
        if self.pos + align_up(bytes as u64) > self.params.segment_bytes {
            self.roll_over()?;
        }
        self.buf.clear();
        let mut locs = Vec::with_capacity(group.len());
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
        let started = std::time::Instant::now();
        self.backend
            .write_durable(&self.file, &self.buf, self.pos)
            .map_err(|e| {
                LogError::io(
                    format!("writing + fdatasync of segment {}", self.header.seq),
                    e,
                )
            })?;
        let hold = emulated_hold(self.params.emulated_fsync_delay, started.elapsed());
        if !hold.is_zero() {
            std::thread::sleep(hold);
        }
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
            for (h, pos) in locs {
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
            index.next_index - 1
        };
        let mut d = self.shared.durable.lock().expect("durable lock");
        d.durable_index = durable_index;
        self.shared.durable_changed.notify_all();
        Ok(())
    }

    /// Seals the current segment (all its groups are durable) and starts the next one.
    fn roll_over(&mut self) -> Result<(), LogError> {
        let start = {
            let index = self.shared.index.read().expect("index lock");
            (index.next_index, index.next_offset, index.last_term)
        };
        self.start_segment(start, false)
    }

    /// Starts a restart segment at the given position, then deletes every earlier segment.
    /// A crash before the deletes leaves obsolete segments that recovery skips and removes.
    fn restart(
        &mut self,
        next_index: u64,
        next_offset: u64,
        prev_term: u64,
    ) -> Result<(), LogError> {
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
        segment::remove_segments(&self.params.dir, &obsolete)
            .map_err(|e| LogError::io("deleting segments obsolete after a restart", e))?;
        let mut d = self.shared.durable.lock().expect("durable lock");
        d.durable_index = next_index - 1;
        self.shared.durable_changed.notify_all();
        Ok(())
    }

    /// Seals the current segment and starts the next at log position `(index, offset, prev_term)`.
    fn start_segment(&mut self, start: (u64, u64, u64), restart: bool) -> Result<(), LogError> {
        let dir = self.params.dir.clone();
        let prepared = match self
            .spare
            .take()
            .map(|h| h.join().expect("segment preparation panicked"))
        {
            Some(Ok(path)) => path,
            Some(Err(e)) => return Err(LogError::io("preparing the next segment", e)),
            None => segment::prepare(
                &dir,
                self.header.seq + 1,
                self.params.segment_bytes,
                self.params.preallocate,
            )
            .map_err(|e| LogError::io("preparing the next segment", e))?,
        };
        let header = SegmentHeader {
            seq: self.header.seq + 1,
            base_index: start.0,
            base_offset: start.1,
            prev_term: start.2,
            segment_bytes: self.params.segment_bytes,
            group_bytes_max: self.params.group_bytes_max as u64,
            restart,
        };
        let file = segment::install(&dir, &prepared, &header, self.backend.kind())
            .map_err(|e| LogError::io(format!("installing segment {}", header.seq), e))?;
        let path = segment::segment_path(&dir, header.seq);
        let read_file = File::open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        self.shared
            .index
            .write()
            .expect("index lock")
            .segments
            .push_back(SegmentRef {
                seq: header.seq,
                file: Arc::new(read_file),
            });
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
    fn an_emulated_completion_is_the_later_of_the_real_one_and_issue_plus_delay() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        for (delay, real) in [
            (ms(10), ms(1)),
            (ms(10), ms(10)),
            (ms(10), ms(25)),
            (ms(0), ms(3)),
        ] {
            let completion = real + emulated_hold(delay, real);
            assert_eq!(
                completion,
                real.max(delay),
                "delay {delay:?}, real {real:?}"
            );
            assert!(
                completion >= real,
                "never durable before the real fdatasync"
            );
        }
    }

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
        };
        let prepared =
            segment::prepare(dir.path(), 1, header.segment_bytes, Preallocate::Sparse).unwrap();
        segment::install(dir.path(), &prepared, &header, BackendKind::Buffered).unwrap();
        // A read-only descriptor makes the real write fail (EBADF): the same path an fdatasync
        // error takes.
        let read_only = File::open(segment::segment_path(dir.path(), 1)).unwrap();
        let shared = Arc::new(Shared {
            index: RwLock::new(LogIndex::starting_at(1, 0, 0)),
            durable: Mutex::new(DurableState {
                durable_index: 0,
                failed: None,
            }),
            durable_changed: Condvar::new(),
            stats: WriterStats::default(),
        });
        let params = WriterParams {
            dir: dir.path().to_path_buf(),
            segment_bytes: header.segment_bytes,
            group_bytes_max: 8 << 10,
            preallocate: Preallocate::Sparse,
            emulated_fsync_delay: std::time::Duration::ZERO,
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
        let send = |index: u64| {
            let mut batch = Batch::encode(&[]).unwrap();
            batch.stamp(0, 1, index);
            let (done, result) = crossbeam_channel::bounded(1);
            tx.send(Op::Append {
                batch,
                done: Some(done),
            })
            .unwrap();
            result.recv().unwrap()
        };
        assert!(
            matches!(send(1), Err(LogError::Io { .. })),
            "the write error surfaces"
        );
        assert!(
            matches!(send(1), Err(LogError::Failed(_))),
            "later appends fail without another write"
        );
        drop(tx);
        thread.join().unwrap();
        assert!(shared.durable.lock().unwrap().failed.is_some());
        assert_eq!(shared.stats.fdatasyncs.load(Ordering::Relaxed), 0);
        assert_eq!(
            shared.index.read().unwrap().next_index,
            1,
            "nothing became durable"
        );
    }
}
