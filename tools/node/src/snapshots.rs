//! Snapshot-and-truncate on one node: the state materialised from committed entries as they are
//! applied (on the raft thread, one batch decode per entry), a snapshot written in the background
//! every `every_bytes` of applied log (or every `interval`, or on request), the log prefix
//! dropped once it is durable, and a snapshot received from a leader written chunk by chunk and
//! installed.
//!
//! Why incremental materialisation on the raft thread: the state is needed anyway to answer the
//! next snapshot, applying one batch costs a decode of bytes the raft thread just handled, and
//! it keeps the state exactly at `applied` without a second reader of the log. Taking a snapshot
//! costs the raft thread O(1): the state is a persistent map, frozen by a pointer copy
//! ([`KeyState::frozen`]); the `snapshot-writer` thread serialises that frozen copy straight
//! into the file (1 MiB buffer) and fsyncs it while the raft thread keeps applying; the raft
//! thread only learns "snapshot at index i durable" ([`Snapshots::poll_written`]) and then
//! truncates. One write at a time.
//!
//! Memory during a snapshot: the frozen copy shares every key and value with the live state;
//! what the live state changes meanwhile copies the map nodes on its path (at most the map's
//! node structure once, about 1/8 of `KEY_OVERHEAD_BYTES` per key), and the values it replaces
//! stay alive until the writer is done. So at most: the state + its node structure + the values
//! overwritten during the write.
//!
//! The state's bound (`state_bytes_max`) is kept by the leader refusing appends that would add
//! keys once the state reached it ([`Snapshots::admits`]); every node materialises every committed
//! record and keeps snapshotting, so the log stays compacted.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::Receiver;
use raftline_log::batch::{entry_batches, for_each_keyed_in};
use raftline_log::fault::crash_point;
use raftline_log::snapshot::{list_snapshots, remove_snapshots_below, remove_temp_files};
use raftline_log::{
    install_snapshot_file, write_snapshot_streamed, Batch, Log, LogError, SnapshotReader,
};
use raftline_replicator::{Entry, EntryKind, Index, SnapshotChunk, SnapshotMeta};

use crate::producers::ProducerTable;
use crate::state::{KeyState, PayloadError, SnapshotPayload};
use crate::storage::ServedSnapshot;

/// Snapshot files kept on disk (the newest is served; the one before covers a reader that
/// started on it).
const SNAPSHOTS_KEPT: usize = 2;
/// Granularity of the positions remembered to honour `retain_bytes`.
const RETAIN_CHECKPOINT_BYTES: u64 = 64 << 10;
/// Name of a snapshot being received (never matches `snap-*.snap`).
const INCOMING_FILE: &str = "incoming.snap.tmp";
/// Default tombstone retention: ten million records of log after the delete (Kafka keeps
/// tombstones a day by default; an offset count keeps every node's snapshot at one index
/// identical, which resuming a stream on another node relies on).
pub const TOMBSTONE_RETAIN_OFFSETS_DEFAULT: u64 = 10_000_000;

/// How fast a snapshot file is written by default: with three nodes' 138 MB snapshots on one
/// disk, append p50 during snapshots went from 3.0–8.4 ms unlimited to the 0.6–0.8 ms it is
/// without a snapshot, p99 from 24–45 ms to 16–17 ms (bench/RESULTS.md); a 1 GiB state takes
/// 16 s to write.
pub const SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT: u64 = 64 << 20;

/// When to snapshot and how much log to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many bytes of log applied since the last one (0 = never).
    pub every_bytes: u64,
    /// Log bytes kept below the end after a compaction (consumers tail recent history).
    pub retain_bytes: u64,
    /// Largest materialised state: once it holds this much, the leader refuses appends that add
    /// keys (`StateFull`); overwrites and deletes of held keys still go in.
    pub state_bytes_max: usize,
    /// A tombstone (a delete) stays in the state, and so in snapshots, until the log's next
    /// offset is this far past it (`None`: forever).
    pub tombstone_retain_offsets: Option<u64>,
    /// Also snapshot when this long passed since the last one and anything was applied since
    /// (`None`: only by bytes or on request).
    pub interval: Option<std::time::Duration>,
    /// Bytes per second a snapshot file is written at most (`None`: as fast as the disk takes
    /// it), so the log's syncs on the same disk do not queue behind it.
    pub write_bytes_per_s: Option<u64>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_bytes: 256 << 20,
            retain_bytes: 64 << 20,
            state_bytes_max: 1 << 30,
            tombstone_retain_offsets: Some(TOMBSTONE_RETAIN_OFFSETS_DEFAULT),
            interval: None,
            write_bytes_per_s: Some(SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT),
        }
    }
}

/// Why a snapshot could not be taken, loaded or installed (the node stops).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading, writing or installing a snapshot file, or restarting the log after one.
    #[error("snapshot file: {0}")]
    Log(#[from] LogError),
    /// A snapshot's payload does not decode.
    #[error("snapshot at index {index}: {source}")]
    Payload {
        /// Its index.
        index: Index,
        /// Why.
        source: PayloadError,
    },
    /// A committed entry is not a valid batch.
    #[error("applying entry {index}: {why}")]
    Apply {
        /// Its index.
        index: Index,
        /// Why.
        why: String,
    },
    /// The core handed out a chunk that does not continue the transfer (a core bug).
    #[error("snapshot chunk at offset {offset} for index {index} without a transfer from 0")]
    Chunk {
        /// The snapshot's index.
        index: Index,
        /// The chunk's offset.
        offset: u64,
    },
    /// The newest snapshot on disk (index 0: none) is older than the log's start: a snapshot
    /// file was lost (removed by hand, or its name was never made durable).
    #[error("newest snapshot ends at {index} (0: none) but the log starts at {first_index}")]
    Gap {
        /// The snapshot's index.
        index: Index,
        /// The log's first index.
        first_index: Index,
    },
    /// The writer thread died.
    #[error("snapshot writer thread stopped")]
    WriterLost,
    /// Every snapshot the log could continue from failed its checksum and was dropped: the
    /// log from `first_index` on has no base state here. The node empties its log and gets a
    /// snapshot (or the whole log) from the leader.
    #[error(
        "{dropped} corrupt snapshot file(s) dropped; the log starting at {first_index} has no base state left"
    )]
    BaseLost {
        /// Corrupt files dropped.
        dropped: usize,
        /// The log's first index.
        first_index: Index,
    },
}

/// A snapshot written by the background thread.
struct Written {
    meta: SnapshotMeta,
    file: raftline_log::SnapshotMeta,
    /// Where the log continues after it.
    cut_offset: u64,
}

/// One node's snapshots: the state, the trigger, the write in flight, a transfer being received.
pub struct Snapshots {
    dir: PathBuf,
    policy: SnapshotPolicy,
    state: KeyState,
    applied_bytes_since_snapshot: u64,
    applied_bytes_total: u64,
    /// `(index, applied bytes before it)`, one per `RETAIN_CHECKPOINT_BYTES`, oldest first; only
    /// those that may still become the compaction floor are kept.
    checkpoints: VecDeque<(Index, u64)>,
    writing: Option<Receiver<Result<Written, LogError>>>,
    incoming: Option<File>,
    /// Index of the newest durable snapshot.
    latest_index: Option<Index>,
    /// An operator asked for a snapshot; the next chance takes one.
    requested: bool,
    /// When the last snapshot write started (or the node did), for the interval trigger.
    last_started: std::time::Instant,
}

/// What a node restores at start.
pub struct Restored {
    /// The snapshots' keeper, holding the state of the newest snapshot.
    pub snapshots: Snapshots,
    /// The newest snapshot (served to followers), if any.
    pub served: Option<ServedSnapshot>,
    /// Offset where the log continues after the snapshot.
    pub next_offset: Option<u64>,
    /// The idempotent producers' table as of the snapshot (empty without one).
    pub producers: ProducerTable,
    /// Snapshot files that failed their checksum and were dropped (an older one, or the log,
    /// took their place).
    pub dropped_corrupt: usize,
}

impl Snapshots {
    /// Loads the newest snapshot in `dir` (created if missing); if the log does not hold the
    /// snapshot's last entry (a crash between installing a received snapshot and restarting the
    /// log after it), restarts the log after the snapshot first.
    pub fn open(dir: &Path, policy: SnapshotPolicy, log: &Log) -> Result<Restored, SnapshotError> {
        raftline_log::dir::ensure_dir_durable(dir)
            .map_err(|e| LogError::io(format!("creating {}", dir.display()), e))?;
        let removed = remove_temp_files(dir)?;
        if removed > 0 {
            tracing::warn!(removed, "deleted snapshot files a crash left half-written");
        }
        let mut snapshots = Snapshots {
            dir: dir.to_path_buf(),
            policy,
            state: KeyState::new(policy.tombstone_retain_offsets),
            applied_bytes_since_snapshot: 0,
            applied_bytes_total: 0,
            checkpoints: VecDeque::new(),
            writing: None,
            incoming: None,
            latest_index: None,
            requested: false,
            last_started: std::time::Instant::now(),
        };
        let (verified, dropped_corrupt) = newest_verified(dir, &policy)?;
        let gap = |index| match dropped_corrupt {
            0 => SnapshotError::Gap {
                index,
                first_index: log.first_index(),
            },
            dropped => SnapshotError::BaseLost {
                dropped,
                first_index: log.first_index(),
            },
        };
        let Some((file, payload)) = verified else {
            // A log that starts past index 1 was compacted below a snapshot: without it the
            // state of every key written below the log start is gone.
            if log.first_index() > 1 {
                return Err(gap(0));
            }
            return Ok(Restored {
                snapshots,
                served: None,
                next_offset: None,
                producers: ProducerTable::default(),
                dropped_corrupt,
            });
        };
        let (index, term) = (file.last_index, file.last_term);
        let holds_last = log.term_at(index) == Some(term);
        if !holds_last && index + 1 < log.first_index() {
            return Err(gap(index));
        }
        if !holds_last {
            tracing::warn!(
                index,
                term,
                "log does not hold the snapshot's end: restarting it after the snapshot"
            );
            log.restart_after_snapshot(index, term, payload.next_offset)?
                .wait()?;
        }
        let meta = SnapshotMeta {
            index,
            term,
            membership: payload.membership,
        };
        let served = ServedSnapshot::open(meta, &file.path, payload.next_offset)?;
        snapshots.latest_index = Some(index);
        snapshots.state = payload.state;
        tracing::info!(
            index,
            term,
            keys = snapshots.keys(),
            "state restored from snapshot"
        );
        Ok(Restored {
            snapshots,
            served: Some(served),
            next_offset: Some(payload.next_offset),
            producers: payload.producers,
            dropped_corrupt,
        })
    }

    /// The materialised state.
    pub fn state(&self) -> &KeyState {
        &self.state
    }

    fn keys(&self) -> usize {
        self.state.len()
    }

    /// Whether the state reached `state_bytes_max` (appends adding keys are refused).
    pub fn full(&self) -> bool {
        self.state.bytes() >= self.policy.state_bytes_max
    }

    /// The bound on the state.
    pub fn state_bytes_max(&self) -> usize {
        self.policy.state_bytes_max
    }

    /// Whether a producer's batch may be proposed: always while the state is below its bound,
    /// then only if every keyed record's key is already held (an overwrite or a delete). The
    /// check is against the applied state, so entries in flight may add keys past the bound by at
    /// most the core's uncommitted-entries window.
    pub fn admits(&self, batch: &Batch) -> bool {
        if !self.full() {
            return true;
        }
        let bytes = batch.as_bytes();
        let mut admitted = true;
        for batch in entry_batches(bytes) {
            let Ok((_, range)) = batch else { return false };
            let visited = for_each_keyed_in(&bytes[range], |r| {
                admitted &= self.state.holds(r.key);
            });
            if visited.is_err() {
                return false;
            }
        }
        admitted
    }

    /// Whether a snapshot is being written.
    #[cfg(test)]
    pub fn writing(&self) -> bool {
        self.writing.is_some()
    }

    /// Index of the newest durable snapshot.
    pub fn latest_index(&self) -> Option<Index> {
        self.latest_index
    }

    /// Feeds one committed entry (in log order) to the state.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), SnapshotError> {
        let bytes = entry.payload.len() as u64;
        if self.applied_bytes_total / RETAIN_CHECKPOINT_BYTES
            != (self.applied_bytes_total + bytes) / RETAIN_CHECKPOINT_BYTES
            || self.checkpoints.is_empty()
        {
            self.checkpoints
                .push_back((entry.index, self.applied_bytes_total));
        }
        self.applied_bytes_total += bytes;
        self.applied_bytes_since_snapshot += bytes;
        let total = self.applied_bytes_total;
        let retain = self.policy.retain_bytes;
        while self
            .checkpoints
            .get(1)
            .is_some_and(|&(_, before)| total - before >= retain)
        {
            self.checkpoints.pop_front();
        }
        if entry.kind != EntryKind::Command {
            return Ok(());
        }
        let was_full = self.full();
        self.state
            .apply(&entry.payload)
            .map_err(|e| SnapshotError::Apply {
                index: entry.index,
                why: e.to_string(),
            })?;
        if self.full() != was_full {
            tracing::warn!(
                state_bytes = self.state.bytes(),
                state_bytes_max = self.policy.state_bytes_max,
                full = !was_full,
                "{}",
                if was_full {
                    "materialised state back below --state-mib-max: new keys are taken again"
                } else {
                    "materialised state reached --state-mib-max: appends adding keys are refused \
                     (StateFull); overwrites and deletes of held keys go on"
                }
            );
        }
        Ok(())
    }

    /// Asks for a snapshot at the next chance (an operator's `raftline snapshot now`).
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Starts writing a snapshot at `index` (= the applied index) if one is due (enough log
    /// applied since the last one, the interval passed, or an operator asked) and no write is
    /// in flight; `producers` is the dedup table at `index`.
    pub fn maybe_start(
        &mut self,
        index: Index,
        term: Option<u64>,
        membership: &raftline_replicator::message::Membership,
        next_offset: u64,
        producers: &ProducerTable,
    ) {
        let by_bytes = self.policy.every_bytes > 0
            && self.applied_bytes_since_snapshot >= self.policy.every_bytes;
        let by_time = self.applied_bytes_since_snapshot > 0
            && self
                .policy
                .interval
                .is_some_and(|every| self.last_started.elapsed() >= every);
        let due = (by_bytes || by_time || self.requested)
            && self.writing.is_none()
            && self.latest_index.is_none_or(|l| l < index);
        let (Some(term), true) = (term, due) else {
            return;
        };
        // O(1) here; the writer thread walks the frozen map.
        let frozen = self.state.frozen();
        let mut producers_bytes = Vec::new();
        producers.encode(&mut producers_bytes);
        let meta = SnapshotMeta {
            index,
            term,
            membership: membership.clone(),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let dir = self.dir.clone();
        let write_rate = self.policy.write_bytes_per_s;
        let spawned = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let members = &meta.membership;
                let payload_bytes =
                    SnapshotPayload::encoded_len(members, &frozen, &producers_bytes);
                let written =
                    write_snapshot_streamed(&dir, index, term, payload_bytes, write_rate, |out| {
                        SnapshotPayload::write(out, next_offset, members, &frozen, &producers_bytes)
                    });
                drop(frozen);
                let written = written.map(|file| Written {
                    meta,
                    file,
                    cut_offset: next_offset,
                });
                let _ = tx.send(written);
            });
        match spawned {
            Ok(_) => {
                self.applied_bytes_since_snapshot = 0;
                self.requested = false;
                self.last_started = std::time::Instant::now();
                self.writing = Some(rx);
                tracing::debug!(index, term, "snapshot started");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the snapshot writer; retrying later")
            }
        }
    }

    /// Waits until the background thread writing a snapshot, if any, has finished (its file
    /// complete and durable, or the attempt given up); what it wrote is not used here.
    pub fn wait_written(&mut self) {
        if let Some(rx) = self.writing.take() {
            let _ = rx.recv();
        }
    }

    /// A snapshot the background thread finished: the index below which the log may now be
    /// dropped (the retain floor honoured) and the snapshot to serve. `None` while none finished
    /// or if a newer one was installed meanwhile.
    pub fn poll_written(&mut self) -> Result<Option<(ServedSnapshot, Index)>, SnapshotError> {
        let Some(rx) = self.writing.as_ref() else {
            return Ok(None);
        };
        let written = match rx.try_recv() {
            Ok(Err(LogError::Io { context, source }))
                if raftline_log::space::is_no_space(&source) =>
            {
                // Disk full: no snapshot this time (the log is still whole); the next one is
                // tried once as much again is applied, or on request.
                self.writing = None;
                tracing::warn!(%context, error = %source, "disk full: snapshot not written");
                return Ok(None);
            }
            Ok(w) => w?,
            Err(crossbeam_channel::TryRecvError::Empty) => return Ok(None),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(SnapshotError::WriterLost)
            }
        };
        self.writing = None;
        let index = written.meta.index;
        if self.latest_index.is_some_and(|l| l >= index) {
            return Ok(None);
        }
        let served = ServedSnapshot::open(written.meta, &written.file.path, written.cut_offset)?;
        self.latest_index = Some(index);
        self.remove_old()?;
        let floor = if self.policy.retain_bytes == 0 {
            index + 1
        } else {
            let total = self.applied_bytes_total;
            match self.checkpoints.front() {
                Some(&(i, before)) if total - before >= self.policy.retain_bytes => i,
                _ => 0,
            }
        };
        tracing::info!(index, keys = self.keys(), "snapshot written");
        Ok(Some((served, floor.min(index + 1))))
    }

    fn remove_old(&self) -> Result<(), LogError> {
        let kept = list_snapshots(&self.dir)?;
        if let Some(oldest_kept) = kept.get(SNAPSHOTS_KEPT - 1) {
            remove_snapshots_below(&self.dir, oldest_kept.last_index)?;
        }
        Ok(())
    }

    /// Writes a chunk of a snapshot received from the leader; on the last one installs the file
    /// durably and returns its decoded payload (the caller then restarts the log after it).
    pub fn receive(
        &mut self,
        chunk: &SnapshotChunk,
    ) -> Result<Option<(ServedSnapshot, SnapshotPayload)>, SnapshotError> {
        let tmp = self.dir.join(INCOMING_FILE);
        let io = |e| LogError::io(format!("writing {}", tmp.display()), e);
        if chunk.offset == 0 {
            self.incoming = Some(File::create(&tmp).map_err(io)?);
        }
        let Some(file) = self.incoming.as_ref() else {
            return Err(SnapshotError::Chunk {
                index: chunk.meta.index,
                offset: chunk.offset,
            });
        };
        file.write_all_at(&chunk.data, chunk.offset).map_err(io)?;
        if !chunk.done {
            crash_point("install-partial");
            return Ok(None);
        }
        self.incoming = None;
        let (index, term) = (chunk.meta.index, chunk.meta.term);
        let file = install_snapshot_file(&self.dir, &tmp, index, term)?;
        let payload = load(&file, &self.policy)?;
        let served = ServedSnapshot::open(chunk.meta.clone(), &file.path, payload.next_offset)?;
        Ok(Some((served, payload)))
    }

    /// The received snapshot is installed and the log restarted after it: its state is ours.
    pub fn installed(&mut self, index: Index, state: KeyState) -> Result<(), SnapshotError> {
        self.state = state;
        self.latest_index = Some(index);
        self.applied_bytes_since_snapshot = 0;
        self.applied_bytes_total = 0;
        self.checkpoints.clear();
        self.remove_old()?;
        tracing::info!(
            index,
            keys = self.keys(),
            "snapshot from the leader installed"
        );
        Ok(())
    }
}

/// A snapshot file that passed its checksum, with its decoded payload.
type Verified = (raftline_log::SnapshotMeta, SnapshotPayload);

/// The newest snapshot file in `dir` that passes its checksum, decoded, and how many newer ones
/// failed it: those are deleted (never served, never loaded; the log or a peer has what they
/// held), each said in an error line.
fn newest_verified(
    dir: &Path,
    policy: &SnapshotPolicy,
) -> Result<(Option<Verified>, usize), SnapshotError> {
    let mut dropped = 0;
    for file in list_snapshots(dir)? {
        match load(&file, policy) {
            Ok(payload) => return Ok((Some((file, payload)), dropped)),
            Err(SnapshotError::Log(e @ LogError::Corrupt { .. })) => {
                tracing::error!(
                    file = %file.path.display(), index = file.last_index, error = %e,
                    "snapshot file corrupt: dropping it"
                );
                std::fs::remove_file(&file.path)
                    .and_then(|()| raftline_log::dir::sync_dir(dir))
                    .map_err(|e| LogError::io(format!("deleting {}", file.path.display()), e))?;
                dropped += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((None, dropped))
}

/// Decodes snapshot `file` as it is read (never whole in memory); the file's checksum is the
/// first verdict (a rotted file is `Corrupt` whatever the decoding made of it), the payload's
/// format the second.
fn load(
    file: &raftline_log::SnapshotMeta,
    policy: &SnapshotPolicy,
) -> Result<SnapshotPayload, SnapshotError> {
    let mut reader = SnapshotReader::open(file)?;
    let decoded = SnapshotPayload::read_from(&mut reader, policy.tombstone_retain_offsets);
    reader.finish()?;
    decoded.map_err(|source| SnapshotError::Payload {
        index: file.last_index,
        source,
    })
}
