//! What the core reads from the driver's durable log: the entries it no longer keeps in memory.
//!
//! The core keeps only the entries that are not durable yet plus a bounded cache of recent
//! ones (see [`crate::raft_log`]); everything older it reads through [`Storage`], which the
//! driver implements over its log (the node over `raftline_log::Log`, the simulator over
//! [`crate::sim::disk::SimDisk`]). Reads are synchronous and never see writes the core has not
//! been told are durable: the core only asks for indexes up to its durable index.

use std::sync::Arc;

use crate::message::{Entry, Index, SnapshotMeta, Term};

/// Why a storage read could not be served.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum StorageError {
    /// The index lies below the log's start: a snapshot covers it.
    #[error("index {index} is compacted (the log starts at {first_index})")]
    Compacted {
        /// Index asked for.
        index: Index,
        /// First index the storage still holds.
        first_index: Index,
    },
    /// The index lies beyond the durable log (a broken driver contract: the core only reads
    /// what it was told is durable).
    #[error("index {index} is beyond the durable log (last {last_index})")]
    Unavailable {
        /// Index asked for.
        index: Index,
        /// Last index the storage holds.
        last_index: Index,
    },
    /// The snapshot asked for is not (or no longer) the one stored: a newer one replaced it.
    #[error("snapshot at index {index} is not available")]
    SnapshotUnavailable {
        /// Index of the snapshot asked for.
        index: Index,
    },
    /// The read failed (an I/O error): the node must stop serving.
    #[error("storage failed: {0}")]
    Failed(String),
    /// The stored bytes failed their checksum: nothing of them was used. The driver may
    /// repair its storage (the node reopens it, cutting the damage, and a leader resends it)
    /// and start a new core on it; this core serves nothing more.
    #[error("storage damaged: {0}")]
    Damaged(String),
}

/// Read access to the durable log. Implementations answer from durable data only.
///
/// Index `first_index() - 1` is the end of the snapshot the log continues (0 when nothing was
/// compacted): its term must be readable, its entry not.
pub trait Storage {
    /// First index whose entry can be read; entries before it are compacted into a snapshot.
    fn first_index(&self) -> Index;
    /// Last durable index (`first_index() - 1` when the log holds no entry). Read at start-up.
    fn last_index(&self) -> Index;
    /// Term of the entry at `index`, for `first_index() - 1 <= index <= last_index()`
    /// (index 0 has term 0 while nothing is compacted).
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// Entries `from..=to`, in order, stopping before the total of [`Entry::size_bytes`] would
    /// exceed `bytes_max` — but at least one entry. Requires `first_index() <= from <= to`.
    fn entries(&self, from: Index, to: Index, bytes_max: u64) -> Result<Vec<Entry>, StorageError>;
    /// Configuration entries ([`crate::EntryKind::Config`]) at `from..=last_index()`, in order;
    /// read once at start-up. The default scans the entries; a log that indexes its
    /// configuration batches can answer directly.
    fn config_entries(&self, from: Index) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        let mut out = Vec::new();
        let mut next = from.max(self.first_index());
        while next <= last {
            let chunk = self.entries(next, last, 1 << 20)?;
            next = chunk.last().map_or(last + 1, |e| e.index + 1);
            out.extend(
                chunk
                    .into_iter()
                    .filter(|e| e.kind == crate::message::EntryKind::Config),
            );
        }
        Ok(out)
    }
    /// The latest durable snapshot, if any. Whenever entries were compacted there is one, and it
    /// covers at least up to `first_index() - 1`.
    fn snapshot_meta(&self) -> Option<SnapshotMeta>;
    /// Bytes `[offset, offset + bytes_max)` of the snapshot ending at `index` (fewer at its
    /// end), and whether they reach its end. `offset` equal to the snapshot's size gives no bytes
    /// and `true`. [`StorageError::SnapshotUnavailable`] once that snapshot was replaced.
    fn snapshot_chunk(
        &self,
        index: Index,
        offset: u64,
        bytes_max: u64,
    ) -> Result<(Arc<[u8]>, bool), StorageError>;
}
