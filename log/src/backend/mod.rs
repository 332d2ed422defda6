//! How a group reaches the disk: one write of sector-aligned bytes followed by fdatasync.
//! Three backends share this contract; `open` picks the fastest the system allows.

mod pwrite;
mod uring;

use std::fs::File;
use std::io;
use std::path::Path;

use crate::aligned_buf::AlignedBuf;

/// Which write path to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring with O_DIRECT: write and fdatasync submitted as one linked chain.
    UringDirect,
    /// pwrite + fdatasync with O_DIRECT (io_uring unavailable, e.g. seccomp).
    PwriteDirect,
    /// Buffered pwrite + fdatasync (the filesystem refuses O_DIRECT, e.g. tmpfs).
    Buffered,
}

/// Backend selection in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Try io_uring+O_DIRECT, then pwrite+O_DIRECT, then buffered; warn once on each fallback.
    Auto,
    /// Use exactly this backend; fail if it cannot be set up.
    Force(BackendKind),
}

impl BackendKind {
    /// Whether files must be opened with O_DIRECT.
    pub fn is_direct(self) -> bool {
        self != BackendKind::Buffered
    }
}

/// A writer of sector-aligned groups.
pub(crate) enum Backend {
    Uring(Box<uring::UringWriter>),
    Pwrite { direct: bool },
}

impl Backend {
    /// Sets up the backend `choice` asks for, probing O_DIRECT support in `dir`.
    pub fn open(choice: BackendChoice, dir: &Path) -> io::Result<Backend> {
        match choice {
            BackendChoice::Force(BackendKind::UringDirect) => {
                probe_direct(dir)?;
                Ok(Backend::Uring(Box::new(uring::UringWriter::new()?)))
            }
            BackendChoice::Force(BackendKind::PwriteDirect) => {
                probe_direct(dir)?;
                Ok(Backend::Pwrite { direct: true })
            }
            BackendChoice::Force(BackendKind::Buffered) => Ok(Backend::Pwrite { direct: false }),
            BackendChoice::Auto => {
                if let Err(e) = probe_direct(dir) {
                    tracing::warn!(
                        dir = %dir.display(), error = %e,
                        "filesystem refuses O_DIRECT; falling back to buffered writes + fdatasync"
                    );
                    return Ok(Backend::Pwrite { direct: false });
                }
                match uring::UringWriter::new() {
                    Ok(w) => Ok(Backend::Uring(Box::new(w))),
                    Err(e) => {
                        tracing::warn!(
                            error = %e,
                            "io_uring unavailable; falling back to pwrite + fdatasync with O_DIRECT"
                        );
                        Ok(Backend::Pwrite { direct: true })
                    }
                }
            }
        }
    }

    /// The kind of this backend.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Uring(_) => BackendKind::UringDirect,
            Backend::Pwrite { direct: true } => BackendKind::PwriteDirect,
            Backend::Pwrite { direct: false } => BackendKind::Buffered,
        }
    }

    /// Writes `buf` (whole sectors) at `pos` (sector-aligned) and makes it durable. A failed
    /// sync (or a failure of the ring itself) means the file's durable state is unknown: the
    /// caller must treat the segment as failed and never retry the sync. A failed write means
    /// nothing was made durable; its range may be written again.
    pub fn write_durable(
        &mut self,
        file: &File,
        buf: &AlignedBuf,
        pos: u64,
    ) -> Result<(), WriteFailure> {
        debug_assert_eq!(buf.len() % crate::aligned_buf::SECTOR_BYTES, 0);
        debug_assert_eq!(pos % crate::aligned_buf::SECTOR_BYTES as u64, 0);
        match self {
            Backend::Uring(w) => w.write_durable(file, buf.as_slice(), pos),
            Backend::Pwrite { .. } => pwrite::write_durable(file, buf.as_slice(), pos),
        }
    }
}

/// Opens a file for segment writing with the flags `kind` needs.
pub(crate) fn open_options(kind: BackendKind) -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.read(true).write(true);
    if kind.is_direct() {
        o.custom_flags(libc::O_DIRECT);
    }
    o
}

/// Checks that `dir`'s filesystem accepts O_DIRECT opens: on a segment already there if any (a
/// log reopened on a full disk must not need room for a probe file), else on a new probe file.
fn probe_direct(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let segment = crate::segment::list_segments(dir)?.first().copied();
    if let Some(seq) = segment {
        return std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(crate::segment::segment_path(dir, seq))
            .map(drop);
    }
    let probe = dir.join(".o_direct_probe");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    result.map(drop)
}

/// Which half of a write + fdatasync failed.
#[derive(Debug)]
pub enum WriteFailure {
    /// The write: nothing of it is durable and no sync ran (a full disk, say).
    Write(io::Error),
    /// The fdatasync, or the submission itself: the file's durable state is unknown.
    Sync(io::Error),
}

impl WriteFailure {
    /// The OS error, whichever half failed.
    pub fn into_io(self) -> io::Error {
        match self {
            WriteFailure::Write(e) | WriteFailure::Sync(e) => e,
        }
    }
}
