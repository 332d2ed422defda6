//! raftline's storage engine: a segmented, checksummed, sector-aligned log with group commit,
//! crash recovery, snapshots and prefix truncation.

pub mod aligned_buf;
pub mod backend;
pub mod batch;
pub mod dir;
pub mod error;
pub mod fault;
mod group_commit;
pub mod hard_state;
pub mod histogram;
mod index;
pub mod kafka;
mod log;
mod recovery;
pub mod segment;
pub mod snapshot;
pub mod space;
mod writer_hook;

pub use backend::{BackendChoice, BackendKind};
pub use batch::{Batch, BatchError, BatchHeader, ProducerSeq, Record};
pub use error::{CorruptionKind, LogError};
pub use group_commit::WriterStats;
pub use hard_state::{HardState, HardStateStore, SlotsLoaded};
pub use histogram::{Pow2Histogram, WalFsyncHistogram};
pub use log::{AppendTicket, Log, LogConfig, DURABLE_MARK_IDLE_DEFAULT};
pub use recovery::{DamageCut, DurableLoss, DurableLossHook, OnDamage};
pub use segment::Preallocate;
pub use snapshot::{
    install_snapshot_file, latest_snapshot, read_snapshot, verify_snapshot_file,
    write_snapshot_streamed, SnapshotMeta, SnapshotReader,
};
pub use space::DiskFull;
pub use writer_hook::WriterHook;
