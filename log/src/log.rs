//! The log: the Raft-facing and consumer-facing API over segments, group commit and recovery.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::aligned_buf::SECTOR_BYTES;
use crate::backend::{open_options, Backend, BackendChoice, BackendKind};
use crate::batch::{check_frame, Batch, BatchHeader};
use crate::error::{CorruptionKind, LogError};
use crate::group_commit::{FreeSegment, Op, Shared, Writer, WriterParams, FREE_SEGMENTS_MAX};
use crate::index::LogIndex;
use crate::recovery::{recover, DamageCut, DurableLoss, DurableLossHook, OnDamage};
use crate::segment::{self, Preallocate, SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::space::{self, DiskFull};
use crate::writer_hook::WriterHook;

/// Where to read each planned entry: (segment file, segment number, position, length).
type ReadPlan = Vec<(Arc<std::fs::File>, u64, u64, u32)>;

/// Bytes past a consumer read the kernel is asked to fetch ahead: a tail from disk (the writes
/// were O_DIRECT, so they left nothing in the page cache) then reads at disk speed while the
/// reader sends, instead of waiting for each read's own I/O.
const READ_AHEAD_BYTES: i64 = 8 << 20;

/// Advises the kernel to start reading `file` from `pos` into the page cache (advice only:
/// failure changes nothing but speed, so it is ignored).
fn read_ahead(file: &std::fs::File, pos: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let pos = i64::try_from(pos).unwrap_or(i64::MAX);
        // SAFETY: plain syscall on a descriptor `file` keeps open; no memory is passed.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                pos,
                READ_AHEAD_BYTES,
                libc::POSIX_FADV_WILLNEED,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, pos);
}

/// Configuration of a log; every queue and buffer has an explicit limit.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// Write path selection.
    pub backend: BackendChoice,
    /// Fixed size of each segment file.
    pub segment_bytes: u64,
    /// Largest batch accepted.
    pub batch_bytes_max: usize,
    /// Largest group written with one fdatasync (bounds a torn tail).
    pub group_bytes_max: usize,
    /// Operations queued for the writer before appenders block (backpressure).
    pub queue_depth: usize,
    /// How new segments are preallocated.
    pub preallocate: Preallocate,
    /// Bytes a new segment must leave free on the disk, for the hard state's neighbours (a
    /// snapshot that lets the log drop its prefix, an operator's shell): when a whole segment
    /// does not fit, a smaller one is made from the room above this (FORMAT.md "Space and
    /// preallocation").
    pub reserve_bytes: u64,
    /// Benchmarks only: emulates a slower disk; each group commit completes no sooner than its
    /// real fdatasync and no sooner than this long after it was issued (DESIGN §3a: this
    /// machine's ~45 µs flush hides what batching buys on real disks).
    pub emulated_fsync_delay: Duration,
    /// How long the writer waits, idle after a group, before it writes a group holding only a
    /// durability marker, so that the last group is vouched for too (see FORMAT.md,
    /// "Durability markers"). Nobody waits for that group; an append arriving first carries the
    /// marker at the head of its own group instead.
    pub durable_mark_idle: Duration,
    /// Complete an append only once a *synced* durability marker vouches for its group (the
    /// next group's head, or a marker-only group synced at once when nothing is queued), so a
    /// power cut right after an acknowledgement cannot leave a rotted acknowledged group
    /// passing for a torn write (FORMAT.md, "Residual window"). Costs one more group commit of
    /// latency per acknowledgement; off by default (the marker then lags one group).
    pub durable_mark_before_ack: bool,
    /// Called by the writer thread after each durable group (and once when the log fails), so
    /// a single-threaded owner of the log can be woken to read [`Log::durable_last`] instead of
    /// blocking on tickets. On the writer's critical path: quick, never blocking (an eventfd).
    pub durable_hook: Option<WriterHook>,
    /// Called once on the writer thread before it writes anything (e.g. to pin it to a core).
    pub writer_start_hook: Option<WriterHook>,
    /// Called by recovery (on the opening thread) when it is about to cut entries a durability
    /// marker vouches for, before the cut erases that evidence: see [`Log::durable_loss`].
    pub durable_loss_hook: Option<DurableLossHook>,
    /// Damage recovery cannot take for a torn write (in a sealed segment, or followed by
    /// acknowledged groups): refuse to open (the default) or cut the log there and report it
    /// ([`Log::damage_cut`]), for an owner that re-fetches the lost entries from a peer.
    pub on_damage: OnDamage,
}

/// How long the writer idles after a group before it syncs a marker-only group, by default
/// (FORMAT.md, "Durability markers").
pub const DURABLE_MARK_IDLE_DEFAULT: Duration = Duration::from_millis(10);

impl LogConfig {
    /// Defaults for production: 64 MiB segments, 1 MiB batches, 4 MiB groups, 4096 queued ops.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            backend: BackendChoice::Auto,
            segment_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            group_bytes_max: 4 << 20,
            queue_depth: 4096,
            preallocate: Preallocate::ZeroFill,
            reserve_bytes: 4 << 20,
            emulated_fsync_delay: Duration::ZERO,
            durable_mark_idle: DURABLE_MARK_IDLE_DEFAULT,
            durable_mark_before_ack: false,
            durable_hook: None,
            writer_start_hook: None,
            durable_loss_hook: None,
            on_damage: OnDamage::Refuse,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let sector = SECTOR_BYTES as u64;
        if self.segment_bytes % sector != 0 || self.segment_bytes < 2 * sector {
            return Err(format!(
                "segment_bytes {} must be a multiple of {sector} and >= 2 sectors",
                self.segment_bytes
            ));
        }
        if self.batch_bytes_max > self.group_bytes_max
            || self.batch_bytes_max > crate::batch::BATCH_BYTES_LIMIT
        {
            return Err("batch_bytes_max must be <= group_bytes_max and <= 64 MiB".into());
        }
        if crate::aligned_buf::align_up(self.group_bytes_max as u64)
            > self.segment_bytes - SEGMENT_HEADER_BYTES
        {
            return Err("group_bytes_max must fit in one segment after its header".into());
        }
        if self.queue_depth == 0 {
            return Err("queue_depth must be at least 1".into());
        }
        Ok(())
    }
}

/// Raft terms of accepted (queued or durable) entries, for the checks appenders need at once.
struct Sequencer {
    first_index: u64,
    prev_term: u64,
    next_offset: u64,
    /// (term, base_offset) of entries `first_index..`.
    entries: VecDeque<(u64, u64)>,
    /// Ops queued to the writer so far: the number of the last one (see `group_commit::Op`).
    ops_queued: u64,
}

impl Sequencer {
    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> Option<u64> {
        if index + 1 == self.first_index {
            return Some(self.prev_term);
        }
        let i = index.checked_sub(self.first_index)?;
        self.entries
            .get(usize::try_from(i).ok()?)
            .map(|&(term, _)| term)
    }
}

/// Where an accepted batch landed; `wait` returns once it is durable. Costs no allocation: it
/// names the op's number, and the writer publishes "ops up to n completed".
pub struct AppendTicket {
    /// Raft index of the entry.
    pub index: u64,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset one past its last record.
    pub next_offset: u64,
    op: u64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AppendTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTicket")
            .field("index", &self.index)
            .field("base_offset", &self.base_offset)
            .field("next_offset", &self.next_offset)
            .field("op", &self.op)
            .finish()
    }
}

impl AppendTicket {
    /// Blocks until the batch is durable, or the log failed.
    pub fn wait(&self) -> Result<(), LogError> {
        self.shared
            .wait_durable_until(None, |d| d.outcome(self.op).is_some())
            .outcome(self.op)
            .expect("the wait ends once the outcome is known")
    }

    /// The outcome if already known (`None` while the batch is queued or being written).
    pub fn try_outcome(&self) -> Option<Result<(), LogError>> {
        self.shared
            .durable
            .lock()
            .expect("durable lock")
            .outcome(self.op)
    }
}

/// A segmented, group-committing, crash-safe log.
pub struct Log {
    shared: Arc<Shared>,
    seq: Mutex<Sequencer>,
    tx: Option<Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    config: LogConfig,
    kind: BackendKind,
    torn_bytes_cut: u64,
    durable_loss: Option<DurableLoss>,
    damage_cut: Option<DamageCut>,
}

impl Log {
    /// Opens (creating if empty) the log in `config.dir`, recovering what is on disk.
    pub fn open(config: LogConfig) -> Result<Log, LogError> {
        config.validate().map_err(LogError::Config)?;
        let dir = config.dir.clone();
        crate::dir::ensure_dir_durable(&dir)
            .map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        let backend = Backend::open(config.backend, &dir)
            .map_err(|e| LogError::io("setting up the write backend", e))?;
        let kind = backend.kind();
        let mut seqs = segment::list_segments(&dir)
            .map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
        if seqs.is_empty() {
            let min =
                SEGMENT_HEADER_BYTES + crate::aligned_buf::align_up(config.group_bytes_max as u64);
            let prepared =
                space::segment_size(&dir, config.segment_bytes, min, config.reserve_bytes)
                    .and_then(|bytes| {
                        segment::prepare(
                            &dir,
                            1,
                            bytes,
                            config.preallocate,
                            &segment::FillGate {
                                unpaced: true,
                                ..Default::default()
                            },
                        )
                    })
                    .map_err(|e| match space::is_no_space(&e) {
                        true => LogError::DiskFull {
                            dir: dir.clone(),
                            free_bytes: space::free_bytes(&dir).unwrap_or(0),
                        },
                        false => LogError::io("preparing the first segment", e),
                    })?;
            let header = SegmentHeader {
                seq: 1,
                base_index: 1,
                base_offset: 0,
                prev_term: 0,
                segment_bytes: prepared.bytes,
                group_bytes_max: config.group_bytes_max as u64,
                restart: false,
                stale_index_max: 0,
            };
            segment::install(&dir, &prepared.path, &header, kind)
                .map_err(|e| LogError::io("installing the first segment", e))?;
            seqs.push(1);
        }
        let recovered = recover(
            &dir,
            &seqs,
            config.durable_loss_hook.as_ref(),
            config.on_damage,
        )?;
        let index = recovered.index;
        let tail_path = segment::segment_path(&dir, recovered.tail.seq);
        let tail_file = open_options(kind)
            .open(&tail_path)
            .map_err(|e| LogError::io(format!("opening {} for writing", tail_path.display()), e))?;
        let sequencer = Sequencer {
            first_index: index.first_index,
            prev_term: index.prev_term,
            next_offset: index.next_offset,
            entries: index
                .entries
                .iter()
                .map(|e| (e.term, e.base_offset))
                .collect(),
            ops_queued: 0,
        };
        let shared = Arc::new(Shared::new(index));
        let params = WriterParams {
            dir,
            segment_bytes: config.segment_bytes,
            reserve_bytes: config.reserve_bytes,
            group_bytes_max: config.group_bytes_max,
            preallocate: config.preallocate,
            emulated_fsync_delay: config.emulated_fsync_delay,
            durable_mark_idle: config.durable_mark_idle,
            durable_mark_before_ack: config.durable_mark_before_ack,
            durable_hook: config.durable_hook.clone(),
        };
        let writer = Writer::new(
            params,
            backend,
            Arc::clone(&shared),
            tail_file,
            recovered.tail,
            recovered.tail_pos,
        );
        let (tx, rx) = crossbeam_channel::bounded(config.queue_depth);
        let start_hook = config.writer_start_hook.clone();
        let handle = std::thread::Builder::new()
            .name("raftline-log-writer".into())
            .spawn(move || {
                if let Some(hook) = start_hook {
                    (hook.0)();
                }
                writer.run(rx)
            })
            .map_err(|e| LogError::io("spawning the log writer thread", e))?;
        Ok(Log {
            shared,
            seq: Mutex::new(sequencer),
            tx: Some(tx),
            writer: Some(handle),
            config,
            kind,
            torn_bytes_cut: recovered.torn_bytes_cut,
            durable_loss: recovered.durable_loss,
            damage_cut: recovered.damage_cut,
        })
    }

    /// The write path in use.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }

    /// Bytes of a torn tail cut by recovery when this log was opened.
    pub fn torn_bytes_cut(&self) -> u64 {
        self.torn_bytes_cut
    }

    /// Entries recovery cut at this open although a durability marker says they were durable
    /// (they may have been acknowledged); `None` after a clean open or a torn write's cut. The
    /// cut erases the evidence: an owner that must remember it across a crash persists it from
    /// [`LogConfig::durable_loss_hook`], which runs before the cut.
    pub fn durable_loss(&self) -> Option<DurableLoss> {
        self.durable_loss
    }

    /// Damage before the torn window that recovery cut at this open ([`OnDamage::Cut`]): the
    /// log now ends at `first_lost - 1`, and [`Log::durable_loss`] names the entries it held
    /// beyond (through `last_lost`) when there were any.
    pub fn damage_cut(&self) -> Option<&DamageCut> {
        self.damage_cut.as_ref()
    }

    /// Writer counters (fdatasyncs, batches, bytes).
    pub fn stats(&self) -> &crate::group_commit::WriterStats {
        &self.shared.stats
    }

    /// The disk-full mode: `Some` while the writer holds a group it has no room for (appends
    /// are still accepted and queue behind it; an owner that serves producers refuses them
    /// instead). Cleared by itself once there is room.
    pub fn disk_full(&self) -> Option<DiskFull> {
        self.shared
            .durable
            .lock()
            .expect("durable lock")
            .full
            .clone()
    }

    /// How long the group the writer is now writing (or holding for want of room) has been
    /// outstanding; `None` while it waits for work. A disk that stalls shows here as an age
    /// that keeps growing.
    pub fn write_age(&self) -> Option<Duration> {
        self.shared.write_age()
    }

    fn check_failed(&self) -> Result<(), LogError> {
        self.shared
            .durable
            .lock()
            .expect("durable lock")
            .check_failed()
    }

    /// Appends `batch` as the entry at `index` (or at the next index if `None`) with `term`: stamps
    /// base offset, term and index into its header and queues it for the next group commit.
    /// Blocks while the writer's queue is full.
    pub fn append(
        &self,
        index: Option<u64>,
        term: u64,
        mut batch: Batch,
    ) -> Result<AppendTicket, LogError> {
        let bytes = batch.as_bytes().len();
        if bytes > self.config.batch_bytes_max {
            return Err(LogError::TooLarge {
                bytes,
                limit: self.config.batch_bytes_max,
            });
        }
        self.check_failed()?;
        let mut seq = self.seq.lock().expect("sequencer lock");
        let next_index = seq.next_index();
        if let Some(index) = index {
            if index != next_index {
                return Err(LogError::IndexMismatch {
                    expected: next_index,
                    got: index,
                });
            }
        }
        let last_term = seq
            .term_at(next_index - 1)
            .expect("term of the last entry is known");
        if term < last_term {
            return Err(LogError::TermRegression { term, last_term });
        }
        let base_offset = seq.next_offset;
        batch.stamp(base_offset, term, next_index);
        let record_count = u64::from(batch.header().record_count);
        let tx = self.tx.as_ref().expect("sender lives until drop");
        tx.send(Op::Append { batch })
            .map_err(|_| LogError::Closed)?;
        seq.ops_queued += 1;
        seq.entries.push_back((term, base_offset));
        seq.next_offset = base_offset + record_count;
        Ok(AppendTicket {
            index: next_index,
            base_offset,
            next_offset: seq.next_offset,
            op: seq.ops_queued,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Removes entries from `from_index` on (a follower's conflicting, never-committed suffix).
    /// `commit_index` is the caller's commit index: cutting at or below it is refused. The cut is
    /// durable once the returned ticket completes.
    pub fn truncate_suffix(
        &self,
        from_index: u64,
        commit_index: u64,
    ) -> Result<AppendTicket, LogError> {
        if from_index <= commit_index {
            return Err(LogError::TruncateCommitted {
                from: from_index,
                commit: commit_index,
            });
        }
        self.check_failed()?;
        let mut seq = self.seq.lock().expect("sequencer lock");
        let last = seq.next_index() - 1;
        if from_index < seq.first_index || from_index > last + 1 {
            return Err(LogError::OutOfRange {
                index: from_index,
                first: seq.first_index,
                last,
            });
        }
        let keep = (from_index - seq.first_index) as usize;
        let next_offset = seq
            .entries
            .get(keep)
            .map_or(seq.next_offset, |&(_, off)| off);
        let prev_term = seq
            .term_at(from_index - 1)
            .expect("term before a retained entry is known");
        let marker = Batch::truncate_marker(from_index, next_offset, prev_term);
        let tx = self.tx.as_ref().expect("sender lives until drop");
        tx.send(Op::Truncate { marker })
            .map_err(|_| LogError::Closed)?;
        seq.ops_queued += 1;
        seq.entries.truncate(keep);
        seq.next_offset = next_offset;
        Ok(AppendTicket {
            index: from_index,
            base_offset: next_offset,
            next_offset,
            op: seq.ops_queued,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Term of the entry at `index` (accepted or durable), including the entry just before the
    /// first retained one; `None` outside.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.seq.lock().expect("sequencer lock").term_at(index)
    }

    /// Offset the first record after entry `index` has (accepted or durable): where an entry
    /// at `index + 1` starts. Known from the entry just before the first retained one to the
    /// last accepted one; `None` outside.
    pub fn offset_after(&self, index: u64) -> Option<u64> {
        let seq = self.seq.lock().expect("sequencer lock");
        let i = (index + 1).checked_sub(seq.first_index)?;
        match usize::try_from(i).ok()? {
            i if i == seq.entries.len() => Some(seq.next_offset),
            i => seq.entries.get(i).map(|&(_, base_offset)| base_offset),
        }
    }

    /// Index of the first retained entry (`last_index() + 1` when empty).
    pub fn first_index(&self) -> u64 {
        self.seq.lock().expect("sequencer lock").first_index
    }

    /// Index of the last accepted entry (0 if none ever).
    pub fn last_index(&self) -> u64 {
        self.seq.lock().expect("sequencer lock").next_index() - 1
    }

    /// Offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.seq.lock().expect("sequencer lock").next_offset
    }

    /// Every entry up to this index is durable.
    pub fn durable_index(&self) -> u64 {
        self.shared
            .durable
            .lock()
            .expect("durable lock")
            .durable_index
    }

    /// The last durable entry as `(index, term)`, read from the durable side of the log (not the
    /// accepted one): a suffix accepted for truncation does not change it until the cut is on
    /// disk, nor a group written but held for its marker (`durable_mark_before_ack`), so a Raft
    /// driver reports exactly what the writer vouches for. `Err` once failed.
    pub fn durable_last(&self) -> Result<(u64, u64), LogError> {
        let d = self.shared.durable.lock().expect("durable lock");
        d.check_failed()?;
        Ok((d.durable_index, d.durable_term))
    }

    /// Waits until the durable index reaches `index` or `timeout` passes; returns the durable index.
    pub fn wait_durable(&self, index: u64, timeout: Duration) -> Result<u64, LogError> {
        let guard = self.shared.wait_durable_until(Some(timeout), |d| {
            d.durable_index >= index || d.failed.is_some() || d.closed
        });
        guard.check_failed()?;
        Ok(guard.durable_index)
    }

    /// Earliest retained record offset.
    pub fn start_offset(&self) -> u64 {
        self.shared.index.read().expect("index lock").start_offset
    }

    /// Durable entries `from..=to` (Raft indexes), at most `bytes_max` bytes (but at least one
    /// entry); each batch is verified against its checksum on the way out.
    pub fn entries(&self, from: u64, to: u64, bytes_max: usize) -> Result<Vec<Batch>, LogError> {
        let plan = {
            let index = self.shared.index.read().expect("index lock");
            let last = index.next_index - 1;
            if from < index.first_index || to > last {
                let bad = if from < index.first_index { from } else { to };
                return Err(LogError::OutOfRange {
                    index: bad,
                    first: index.first_index,
                    last,
                });
            }
            self.plan_reads(&index, (from - index.first_index) as usize, to, bytes_max)
        };
        self.read_planned(plan)
    }

    /// Durable batches from the one holding record `offset`, none with a Raft index above
    /// `upto_index` (the commit index), at most `bytes_max` bytes (but at least one batch).
    pub fn read_from_offset(
        &self,
        offset: u64,
        upto_index: u64,
        bytes_max: usize,
    ) -> Result<Vec<Batch>, LogError> {
        let plan = self.plan_from_offset(offset, upto_index, bytes_max)?;
        self.read_planned(plan)
    }

    /// Like [`Log::read_from_offset`], but into the caller's reused `buf` (adjacent batches of a
    /// segment in one read, no fresh buffer per batch): returns each batch's header and byte
    /// range in `buf`, every batch verified against its checksum. `buf` only grows, to the
    /// largest read (`bytes_max`, or one batch when that batch alone is larger).
    pub fn read_from_offset_into(
        &self,
        offset: u64,
        upto_index: u64,
        bytes_max: usize,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<(BatchHeader, Range<usize>)>, LogError> {
        let plan = self.plan_from_offset(offset, upto_index, bytes_max)?;
        let total: usize = plan.iter().map(|&(_, _, _, len)| len as usize).sum();
        if buf.len() < total {
            // Grows (and zeroes) only past the high-water mark; later reads reuse it as is.
            buf.resize(total, 0);
        }
        let mut at = 0usize;
        let mut first = 0usize;
        while first < plan.len() {
            let (file, seg, pos, _) = &plan[first];
            let mut run_bytes = 0u64;
            let mut end = first;
            while end < plan.len() && plan[end].1 == *seg && plan[end].2 == pos + run_bytes {
                run_bytes += u64::from(plan[end].3);
                end += 1;
            }
            let run = &mut buf[at..at + run_bytes as usize];
            file.read_exact_at(run, *pos).map_err(|e| {
                let path = segment::segment_path(&self.config.dir, *seg);
                LogError::io(format!("reading {}", path.display()), e)
            })?;
            at += run_bytes as usize;
            first = end;
            if first == plan.len() {
                read_ahead(file, pos + run_bytes);
            }
        }
        debug_assert_eq!(at, total, "the runs cover the plan exactly");
        let mut batches = Vec::with_capacity(plan.len());
        let mut at = 0usize;
        for &(_, seg, pos, len) in &plan {
            let range = at..at + len as usize;
            let header = self.verify_batch(&buf[range.clone()], seg, pos)?;
            batches.push((header, range));
            at += len as usize;
        }
        Ok(batches)
    }

    fn plan_from_offset(
        &self,
        offset: u64,
        upto_index: u64,
        bytes_max: usize,
    ) -> Result<ReadPlan, LogError> {
        let index = self.shared.index.read().expect("index lock");
        if offset < index.start_offset {
            return Err(LogError::BelowStart {
                offset,
                start_offset: index.start_offset,
            });
        }
        Ok(self.plan_reads(
            &index,
            index.position_of_offset(offset),
            upto_index,
            bytes_max,
        ))
    }

    /// Locations of the entries from position `start` of the index, none above `upto_index`,
    /// at most `bytes_max` bytes but at least one entry.
    fn plan_reads(
        &self,
        index: &LogIndex,
        start: usize,
        upto_index: u64,
        bytes_max: usize,
    ) -> ReadPlan {
        let mut plan = Vec::new();
        let mut total = 0usize;
        for e in index.entries.range(start.min(index.entries.len())..) {
            if e.index > upto_index || (!plan.is_empty() && total + e.len as usize > bytes_max) {
                break;
            }
            total += e.len as usize;
            plan.push((index.segment_file(e.seg), e.seg, e.pos, e.len));
        }
        plan
    }

    /// Reads planned locations outside the index lock, verifying each batch's checksum.
    fn read_planned(&self, plan: ReadPlan) -> Result<Vec<Batch>, LogError> {
        plan.into_iter()
            .map(|(file, seg, pos, len)| self.read_batch(&file, seg, pos, len))
            .collect()
    }

    fn read_batch(
        &self,
        file: &std::fs::File,
        seg: u64,
        pos: u64,
        len: u32,
    ) -> Result<Batch, LogError> {
        let path = segment::segment_path(&self.config.dir, seg);
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, pos)
            .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
        self.verify_batch(&bytes, seg, pos)?;
        Ok(Batch::from_verified(bytes))
    }

    /// Checks one batch read from segment `seg` at `pos`; a mismatch is `Corrupt`, never data.
    fn verify_batch(&self, bytes: &[u8], seg: u64, pos: u64) -> Result<BatchHeader, LogError> {
        check_frame(bytes).map_err(|e| LogError::Corrupt {
            segment: segment::segment_path(&self.config.dir, seg),
            position: pos,
            kind: match e {
                crate::batch::BatchError::Checksum { expected, actual } => {
                    CorruptionKind::Checksum { expected, actual }
                }
                other => CorruptionKind::BadFrame(other.to_string()),
            },
        })
    }

    /// Discards the whole log and restarts it after a snapshot that ends at `last_index` with
    /// `last_term` (a follower installing a snapshot beyond its log): the next entry is
    /// `last_index + 1` at record offset `next_offset`. Durable when the ticket completes.
    pub fn restart_after_snapshot(
        &self,
        last_index: u64,
        last_term: u64,
        next_offset: u64,
    ) -> Result<AppendTicket, LogError> {
        self.check_failed()?;
        let mut seq = self.seq.lock().expect("sequencer lock");
        let op = Op::Restart {
            next_index: last_index + 1,
            next_offset,
            prev_term: last_term,
        };
        let tx = self.tx.as_ref().expect("sender lives until drop");
        tx.send(op).map_err(|_| LogError::Closed)?;
        *seq = Sequencer {
            first_index: last_index + 1,
            prev_term: last_term,
            next_offset,
            entries: VecDeque::new(),
            ops_queued: seq.ops_queued + 1,
        };
        Ok(AppendTicket {
            index: last_index + 1,
            base_offset: next_offset,
            next_offset,
            op: seq.ops_queued,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Drops whole segments whose entries all lie below `index` (never the segment being
    /// written): up to `FREE_SEGMENTS_MAX` of them are set aside to be recycled by later
    /// roll-overs, the others deleted; then fsyncs the directory. Returns how many were dropped.
    pub fn truncate_prefix(&self, index: u64) -> Result<usize, LogError> {
        let mut seq = self.seq.lock().expect("sequencer lock");
        let dropped = {
            let mut log_index = self.shared.index.write().expect("index lock");
            if index > log_index.next_index {
                return Err(LogError::OutOfRange {
                    index,
                    first: log_index.first_index,
                    last: log_index.next_index - 1,
                });
            }
            let active = log_index.segments.back().map_or(0, |s| s.seq);
            let dropped = log_index.drop_segments_below(index, active);
            sync_sequencer_front(&mut seq, &log_index);
            dropped
        };
        let count = dropped.len();
        self.set_aside_or_delete(dropped)
            .map_err(|e| LogError::io("dropping segments below the prefix", e))?;
        Ok(count)
    }

    /// Renames dropped segments to `.free` files for recycling while the pool has room, deletes
    /// the rest, then fsyncs the directory. Never recycled: a segment holding a truncation
    /// marker (a stale marker could not be told from a new one) or one a reader still holds
    /// open (it would read the new life's bytes).
    fn set_aside_or_delete(&self, dropped: Vec<crate::index::SegmentRef>) -> std::io::Result<()> {
        if dropped.is_empty() {
            return Ok(());
        }
        let dir = &self.config.dir;
        // Only this function adds to the pool and it runs under the sequencer lock, so the room
        // seen here can only grow until the pushes below.
        let room = FREE_SEGMENTS_MAX
            - self
                .shared
                .free_segments
                .lock()
                .expect("free segments lock")
                .len();
        let mut set_aside = Vec::new();
        for seg in dropped {
            let path = segment::segment_path(dir, seg.seq);
            let recyclable = !seg.has_marker && Arc::strong_count(&seg.file) == 1;
            if recyclable && set_aside.len() < room {
                let to = segment::free_path(dir, seg.seq);
                std::fs::rename(&path, &to)?;
                set_aside.push(FreeSegment {
                    path: to,
                    stale_index_max: seg.index_max,
                });
            } else {
                std::fs::remove_file(&path)?;
            }
            crate::fault::crash_point("truncate-after-first-segment");
        }
        crate::dir::sync_dir(dir)?;
        // Handed to the writer only once the `.free` names are durable: the writer renames the
        // file again and rewrites its header, and a crash must never find the new header under
        // the old `<seq>.seg` name (that would read as a corrupt segment); a `.free` or `.prep`
        // file is simply deleted at open.
        self.shared
            .free_segments
            .lock()
            .expect("free segments lock")
            .extend(set_aside);
        Ok(())
    }
}

/// Moves the sequencer's first index up to the durable index's after a prefix drop.
fn sync_sequencer_front(seq: &mut Sequencer, index: &LogIndex) {
    while seq.first_index < index.first_index {
        let (term, _) = seq
            .entries
            .pop_front()
            .expect("dropped entries were accepted");
        seq.first_index += 1;
        seq.prev_term = term;
    }
    debug_assert_eq!(seq.prev_term, index.prev_term);
}

impl Drop for Log {
    fn drop(&mut self) {
        // A writer held by a full disk gives up its group instead of keeping the close waiting.
        self.shared
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
