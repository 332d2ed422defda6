//! Raft entries ↔ log batches: the core's [`Storage`] over `raftline_log::Log`, and the
//! conversions both ways. One Raft entry is one batch; a command's payload is the stamped batch
//! bytes (identical on every node), a leader's no-op is a zero-record batch flagged no-op, so the
//! entry's kind survives a restart.
//!
//! The newest snapshot (node/snapshots.rs writes it) is served as its whole file, header and
//! checksum included, so a follower writes the bytes verbatim and verifies them before installing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use raftline_log::{Batch, BatchError, BatchHeader, Log, LogError};
use raftline_replicator::{Entry, EntryKind, Index, SnapshotMeta, Storage, StorageError, Term};

/// The durable log as the Raft core reads it.
pub struct LogStorage {
    log: Arc<Log>,
    snapshot: Option<ServedSnapshot>,
}

/// A durable snapshot file offered to followers. The open handle keeps it readable even once a
/// newer snapshot replaced it and the file was deleted.
#[derive(Debug, Clone)]
pub struct ServedSnapshot {
    meta: SnapshotMeta,
    file: Arc<File>,
    /// Where it was opened (it may be gone since: the open handle keeps it readable).
    path: std::path::PathBuf,
    file_bytes: u64,
    /// Where the log continues after it.
    cut_offset: u64,
    /// When its file was written (its modification time).
    written_at: Option<std::time::SystemTime>,
}

impl ServedSnapshot {
    /// Opens the snapshot file at `path`, which holds `meta` and the state below `cut_offset`.
    pub fn open(
        meta: SnapshotMeta,
        path: &Path,
        cut_offset: u64,
    ) -> Result<ServedSnapshot, LogError> {
        let io = |e| LogError::io(format!("opening {}", path.display()), e);
        let file = File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        Ok(ServedSnapshot {
            meta,
            file: Arc::new(file),
            path: path.to_path_buf(),
            file_bytes: metadata.len(),
            cut_offset,
            written_at: metadata.modified().ok(),
        })
    }

    /// Where the log continues after it.
    pub fn cut_offset(&self) -> u64 {
        self.cut_offset
    }

    /// How long ago its file was written (`None` if the filesystem keeps no times).
    pub fn age(&self) -> Option<std::time::Duration> {
        self.written_at.and_then(|t| t.elapsed().ok())
    }

    /// What it covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The whole file's length (header and payload).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Checks the whole file against its checksum (it may have rotted since it was written or
    /// loaded): done before a transfer or a consumer's stream starts, so that none of a
    /// damaged file is served. The node stops on a failure; its restart drops the file.
    pub fn verify(&self) -> Result<(), LogError> {
        let (index, term) = (self.meta.index, self.meta.term);
        raftline_log::verify_snapshot_file(&self.file, &self.path, index, term)
    }

    /// Reads file bytes at `offset` into `buf` (fewer at the end of the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

impl LogStorage {
    /// Wraps a shared log (the node appends through its own handle) and the newest snapshot.
    pub fn new(log: Arc<Log>, snapshot: Option<ServedSnapshot>) -> LogStorage {
        LogStorage { log, snapshot }
    }

    /// The snapshot served now, if any.
    pub fn served(&self) -> Option<&ServedSnapshot> {
        self.snapshot.as_ref()
    }

    /// Serves `snapshot` from now on. Call before dropping the log prefix it covers: the core
    /// expects a snapshot covering `first_index() - 1` whenever the log was compacted.
    pub fn set_snapshot(&mut self, snapshot: ServedSnapshot) {
        assert!(
            self.snapshot
                .as_ref()
                .is_none_or(|s| s.meta.index <= snapshot.meta.index),
            "a served snapshot is never replaced by an older one"
        );
        self.snapshot = Some(snapshot);
    }
}

/// The Raft entry a durable batch holds.
pub fn entry_of(batch: Batch) -> Entry {
    let h = batch.header();
    let (kind, payload): (EntryKind, Arc<[u8]>) = if h.is_noop() {
        // The core creates no-ops with an empty payload; keep them equal after a restart.
        (EntryKind::Noop, Arc::from(&[][..]))
    } else if h.is_config() {
        (EntryKind::Config, Arc::from(batch.payload()))
    } else {
        (EntryKind::Command, Arc::from(batch.into_bytes()))
    };
    Entry {
        term: h.term,
        index: h.index,
        kind,
        payload,
    }
}

/// The batch to write for a Raft entry (a no-op or configuration entry becomes a flagged
/// zero-record batch, the latter carrying the core's bytes; a command's payload must be a batch
/// already stamped with the entry's term and index).
pub fn batch_of(entry: &Entry) -> Result<Batch, BatchError> {
    match entry.kind {
        EntryKind::Noop => Ok(Batch::noop()),
        EntryKind::Config => Batch::config(&entry.payload),
        EntryKind::Command => {
            let batch = Batch::from_entry_bytes(entry.payload.to_vec())?;
            check_stamp(entry, batch.header())?;
            Ok(batch)
        }
    }
}

/// A command entry from the wire, checked before the core takes it (its stamp, frame and every
/// record: `Batch::validate_entry_bytes`), without copying its bytes: the header of the batch it
/// holds.
pub fn command_header(entry: &Entry) -> Result<BatchHeader, BatchError> {
    debug_assert_eq!(entry.kind, EntryKind::Command);
    let header = Batch::validate_entry_bytes(&entry.payload)?;
    check_stamp(entry, header)?;
    Ok(header)
}

fn check_stamp(entry: &Entry, h: BatchHeader) -> Result<(), BatchError> {
    if (h.term, h.index) != (entry.term, entry.index) || h.is_noop() || h.is_config() {
        return Err(BatchError::BadHeader(
            "batch stamp or kind disagrees with its Raft entry",
        ));
    }
    Ok(())
}

fn storage_error(e: LogError) -> StorageError {
    match e {
        LogError::OutOfRange { index, first, .. } if index < first => StorageError::Compacted {
            index,
            first_index: first,
        },
        LogError::OutOfRange { index, last, .. } => StorageError::Unavailable {
            index,
            last_index: last,
        },
        e @ LogError::Corrupt { .. } => StorageError::Damaged(e.to_string()),
        other => StorageError::Failed(other.to_string()),
    }
}

impl Storage for LogStorage {
    fn snapshot_meta(&self) -> Option<SnapshotMeta> {
        self.snapshot.as_ref().map(|s| s.meta.clone())
    }

    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        bytes_max: u64,
    ) -> Result<(Arc<[u8]>, bool), StorageError> {
        let Some(s) = self.snapshot.as_ref().filter(|s| s.meta.index == index) else {
            return Err(StorageError::SnapshotUnavailable { index });
        };
        if offset == 0 {
            s.verify().map_err(storage_error)?;
        }
        let end = s.file_bytes.min(offset.saturating_add(bytes_max.max(1)));
        let len = usize::try_from(end.saturating_sub(offset)).unwrap_or(usize::MAX);
        let mut buf = vec![0; len];
        s.file.read_exact_at(&mut buf, offset).map_err(|e| {
            StorageError::Failed(format!("reading snapshot {index} at {offset}: {e}"))
        })?;
        Ok((Arc::from(buf), end == s.file_bytes))
    }

    fn first_index(&self) -> Index {
        self.log.first_index()
    }

    fn last_index(&self) -> Index {
        self.log.durable_index()
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.log.term_at(index).ok_or_else(|| {
            let first_index = self.log.first_index();
            if index + 1 < first_index {
                StorageError::Compacted { index, first_index }
            } else {
                StorageError::Unavailable {
                    index,
                    last_index: self.log.last_index(),
                }
            }
        })
    }

    fn entries(&self, from: Index, to: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError> {
        let bytes_max = usize::try_from(bytes_max).unwrap_or(usize::MAX);
        self.log
            .entries(from, to, bytes_max)
            .map(|batches| batches.into_iter().map(entry_of).collect())
            .map_err(storage_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_log::Record;

    fn stamped(batch: Batch, term: Term, index: Index) -> Batch {
        let mut batch = batch;
        batch.stamp(0, term, index);
        batch
    }

    #[test]
    fn every_entry_kind_survives_the_trip_through_a_batch() {
        let records = [Record {
            key: None,
            value: b"v".to_vec(),
            timestamp_ms: 1,
            headers: vec![],
        }];
        let command = stamped(Batch::encode(&records).unwrap(), 2, 5);
        let entries = [
            Entry {
                term: 2,
                index: 5,
                kind: EntryKind::Command,
                payload: Arc::from(command.into_bytes()),
            },
            Entry {
                term: 2,
                index: 6,
                kind: EntryKind::Noop,
                payload: Arc::from(&[][..]),
            },
            Entry {
                term: 2,
                index: 7,
                kind: EntryKind::Config,
                payload: Arc::from(&b"members"[..]),
            },
        ];
        for entry in entries {
            // The log stamps position, term and index when it appends; do the same here.
            let batch = stamped(batch_of(&entry).unwrap(), entry.term, entry.index);
            assert_eq!(entry_of(batch), entry);
        }
    }

    #[test]
    fn a_command_whose_bytes_claim_another_position_or_kind_is_refused() {
        let wrong_index = stamped(Batch::encode(&[]).unwrap(), 2, 9);
        let config_bytes = stamped(Batch::config(b"m").unwrap(), 2, 5);
        for bytes in [wrong_index.into_bytes(), config_bytes.into_bytes()] {
            let entry = Entry {
                term: 2,
                index: 5,
                kind: EntryKind::Command,
                payload: Arc::from(bytes),
            };
            assert!(batch_of(&entry).is_err());
        }
    }
}
