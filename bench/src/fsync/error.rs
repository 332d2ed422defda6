//! The errors a disk measurement reports, written for the operator who has to act on them.

use std::io;
use std::path::PathBuf;

/// Why a measurement could not run or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The directory to measure does not exist.
    #[error("directory {0} does not exist: create it, or pass --dir with a directory on the disk to profile")]
    DirMissing(PathBuf),
    /// The path to measure exists but is not a directory.
    #[error("{0} is not a directory: pass --dir with a directory on the disk to profile")]
    NotADirectory(PathBuf),
    /// Creating a scratch file in the directory failed.
    #[error("directory {dir} is not writable ({source}): pick a directory this user can create files in")]
    DirNotWritable {
        /// The directory that refused the scratch file.
        dir: PathBuf,
        /// The error the kernel returned.
        source: io::Error,
    },
    /// The filesystem refuses O_DIRECT (tmpfs on old kernels, some FUSE and network filesystems).
    #[error("the filesystem of {dir} refuses O_DIRECT ({source})")]
    DirectIoRefused {
        /// The directory whose filesystem refused.
        dir: PathBuf,
        /// The error the kernel returned.
        source: io::Error,
    },
    /// io_uring cannot be set up (old kernel, `kernel.io_uring_disabled`, or a seccomp filter).
    #[error("io_uring is unavailable ({source}): the kernel is too old, io_uring is disabled by sysctl kernel.io_uring_disabled, or a seccomp filter (containers) blocks it")]
    UringUnavailable {
        /// The error `io_uring_setup` returned.
        source: io::Error,
    },
    /// The filesystem has less free space than the measurement needs.
    #[error("not enough free space in {dir}: the measurement needs {} MiB (its largest file plus a reserve), {} MiB are available; lower --size or free some space", needed_bytes >> 20, available_bytes >> 20)]
    NoSpace {
        /// The directory measured.
        dir: PathBuf,
        /// Bytes the measurement needs, including a safety reserve.
        needed_bytes: u64,
        /// Bytes available to this user according to statvfs.
        available_bytes: u64,
    },
    /// The measurement parameters are inconsistent.
    #[error("invalid measurement parameters: {0}")]
    InvalidProbe(String),
    /// The stop signal was raised (Ctrl-C); scratch files have been removed.
    #[error("interrupted; scratch files removed")]
    Interrupted,
    /// A system call failed mid-measurement. An fdatasync error is never retried.
    #[error("{op} failed on {path}: {source}")]
    Io {
        /// The operation that failed (`write`, `fdatasync`, ...).
        op: &'static str,
        /// The file it failed on.
        path: PathBuf,
        /// The error the kernel returned.
        source: io::Error,
    },
}
