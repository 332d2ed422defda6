//! Free space: how large a new segment may be, and what the log reports while its disk is full
//! (FORMAT.md "Space and preallocation").

use std::io;
use std::path::{Path, PathBuf};

use crate::aligned_buf::SECTOR_BYTES;

/// The log's disk has no room for the next segment: appends wait (they are neither lost nor
/// failed) until space returns. Reported by [`crate::Log::disk_full`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFull {
    /// The log directory whose filesystem is full.
    pub path: PathBuf,
    /// Bytes free there for an unprivileged writer at the last attempt.
    pub free_bytes: u64,
}

/// Whether `e` says the filesystem has no room (ENOSPC, or EDQUOT: a quota is a full disk too).
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

/// Bytes free on `dir`'s filesystem for an unprivileged writer (`statvfs` `f_bavail`).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a path with a NUL byte"))?;
    // SAFETY: statvfs fills a plain C struct from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize.max(1) as u64))
}

/// How large a new segment in `dir` may be: `wanted` if that leaves `reserve` bytes free, else
/// the free space above `reserve` (whole sectors), if that is at least `min` (one group after
/// the header); otherwise ENOSPC. Segments are sized lazily like this so that a node with
/// little room left (or just freed) keeps writing instead of failing to allocate a full one.
pub fn segment_size(dir: &Path, wanted: u64, min: u64, reserve: u64) -> io::Result<u64> {
    let free = free_bytes(dir)?;
    let room = free.saturating_sub(reserve) / SECTOR_BYTES as u64 * SECTOR_BYTES as u64;
    match room.min(wanted) {
        size if size >= min => Ok(size),
        _ => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
    }
}
