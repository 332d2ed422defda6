//! raftline's storage engine: a segmented, checksummed, sector-aligned log with group commit,
//! crash recovery, snapshots and prefix truncation.

pub mod aligned_buf;
pub mod backend;
pub mod batch;
pub mod error;
mod group_commit;
mod index;
mod log;
mod recovery;
pub mod segment;

pub use backend::{BackendChoice, BackendKind};
pub use batch::{Batch, BatchError, BatchHeader, Record};
pub use error::{CorruptionKind, LogError};
pub use group_commit::WriterStats;
pub use log::{AppendTicket, Log, LogConfig};
pub use segment::Preallocate;
