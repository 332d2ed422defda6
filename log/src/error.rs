//! Errors of the log, written for the operator who has to act on them.

use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;

/// What exactly is wrong at a corrupt position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptionKind {
    /// A batch's stored CRC does not match its bytes.
    Checksum {
        /// CRC stored in the batch header.
        expected: u32,
        /// CRC computed over the bytes on disk.
        actual: u32,
    },
    /// Bytes that are neither a valid batch nor padding (e.g. a damaged header).
    BadFrame(String),
    /// A valid batch that does not continue the log (index/offset/term out of sequence).
    Sequence(String),
    /// The segment header is unreadable or does not continue the previous segment.
    SegmentHeader(String),
}

impl std::fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CorruptionKind::Checksum { expected, actual } => {
                write!(
                    f,
                    "checksum mismatch: stored {expected:#010x}, computed {actual:#010x}"
                )
            }
            CorruptionKind::BadFrame(why) => write!(f, "unreadable batch: {why}"),
            CorruptionKind::Sequence(why) => write!(f, "batch out of sequence: {why}"),
            CorruptionKind::SegmentHeader(why) => write!(f, "bad segment header: {why}"),
        }
    }
}

/// Errors of the log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// An I/O call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the log was doing.
        context: String,
        /// The OS error.
        source: Arc<std::io::Error>,
    },
    /// Acknowledged data on disk (a log segment or a snapshot file) fails validation; the log
    /// refuses to serve or extend it.
    #[error(
        "corrupt data in {} (the frame at byte {position}): {kind}; nothing of it may be served \
         until it is fetched again from a peer",
        segment.display()
    )]
    Corrupt {
        /// The segment (or snapshot) file.
        segment: PathBuf,
        /// Byte position inside the file.
        position: u64,
        /// What is wrong there.
        kind: CorruptionKind,
    },
    /// A write or fdatasync failed earlier; the log is failed for good (never retried).
    #[error("log failed after a write/fdatasync error ({0}); reopen it to recover from disk")]
    Failed(String),
    /// An append was not at the next index.
    #[error("append at index {got}, but the next index is {expected}")]
    IndexMismatch {
        /// The next index of the log.
        expected: u64,
        /// The index asked for.
        got: u64,
    },
    /// An append with a term lower than the last entry's (terms never decrease in a Raft log).
    #[error("append with term {term} after an entry of term {last_term}")]
    TermRegression {
        /// Term asked for.
        term: u64,
        /// Term of the last entry.
        last_term: u64,
    },
    /// Truncation would cut committed entries.
    #[error("refusing to truncate from index {from}: entries up to the commit index {commit} are committed")]
    TruncateCommitted {
        /// First index to cut.
        from: u64,
        /// The commit index the caller passed.
        commit: u64,
    },
    /// An index outside the log.
    #[error("index {index} is outside the log [{first}, {last}]")]
    OutOfRange {
        /// Index asked for.
        index: u64,
        /// First index held.
        first: u64,
        /// Last index held.
        last: u64,
    },
    /// A read below the earliest retained offset.
    #[error("offset {offset} is below the earliest retained offset {start_offset} (it is covered by a snapshot)")]
    BelowStart {
        /// Offset asked for.
        offset: u64,
        /// Earliest retained offset.
        start_offset: u64,
    },
    /// A batch larger than the configured maximum.
    #[error("batch of {bytes} bytes exceeds batch_bytes_max {limit}")]
    TooLarge {
        /// Size of the batch.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The batch bytes are invalid.
    #[error("invalid batch: {0}")]
    BadBatch(#[from] BatchError),
    /// The configuration breaks a limit (the message names it).
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The log is shutting down.
    #[error("log is closed")]
    Closed,
    /// No room on the log's disk for the next segment (or a write): appends wait until there
    /// is (see `Log::disk_full`); nothing is failed or lost.
    #[error(
        "disk full: no room for the log in {} ({free_bytes} bytes free); appends resume once \
         space is freed",
        dir.display()
    )]
    DiskFull {
        /// The log directory.
        dir: PathBuf,
        /// Bytes free on its filesystem.
        free_bytes: u64,
    },
}

impl LogError {
    /// Wraps an io::Error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> LogError {
        LogError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}
