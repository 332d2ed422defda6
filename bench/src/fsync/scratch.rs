//! Scratch files: created only inside the measured directory, removed when dropped (also on
//! Ctrl-C, because every measurement loop polls the stop signal and unwinds through the drop).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::BenchError;

/// Free space kept untouched on top of what a measurement writes, so a profile never fills a disk.
pub const FREE_SPACE_RESERVE_BYTES: u64 = 256 << 20;

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

/// Checks that `dir` exists, is a directory and has `file_bytes` plus the reserve free.
pub fn check_dir(dir: &Path, file_bytes: u64) -> Result<(), BenchError> {
    match fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BenchError::DirMissing(dir.to_path_buf()))
        }
        Err(e) => {
            return Err(BenchError::DirNotWritable {
                dir: dir.to_path_buf(),
                source: e,
            })
        }
        Ok(m) if !m.is_dir() => return Err(BenchError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {}
    }
    let available_bytes = available_bytes(dir)?;
    let needed_bytes = file_bytes.saturating_add(FREE_SPACE_RESERVE_BYTES);
    if available_bytes < needed_bytes {
        return Err(BenchError::NoSpace {
            dir: dir.to_path_buf(),
            needed_bytes,
            available_bytes,
        });
    }
    Ok(())
}

/// Bytes an unprivileged user may still allocate on the filesystem of `dir` (statvfs f_bavail).
pub fn available_bytes(dir: &Path) -> Result<u64, BenchError> {
    let c_dir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| BenchError::InvalidProbe(format!("{} contains a NUL byte", dir.display())))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_dir is a valid C string and st a valid out-pointer.
    if unsafe { libc::statvfs(c_dir.as_ptr(), &mut st) } != 0 {
        return Err(BenchError::Io {
            op: "statvfs",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    // The field widths differ between targets; on 64-bit Linux both are u64.
    #[allow(clippy::useless_conversion)]
    let bytes = u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize));
    Ok(bytes)
}

/// A uniquely named file inside the measured directory, removed on drop.
pub(crate) struct ScratchFile {
    path: PathBuf,
    file: File,
}

impl ScratchFile {
    /// Creates a new file in `dir` (never overwriting an existing one), with O_DIRECT if `direct`.
    pub(crate) fn create(dir: &Path, direct: bool) -> Result<Self, BenchError> {
        let seq = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".raftline-bench-{}-{seq}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        match options.open(&path) {
            Ok(file) => Ok(ScratchFile { path, file }),
            Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                Err(BenchError::DirectIoRefused {
                    dir: dir.to_path_buf(),
                    source: e,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BenchError::DirMissing(dir.to_path_buf()))
            }
            Err(e) => Err(BenchError::DirNotWritable {
                dir: dir.to_path_buf(),
                source: e,
            }),
        }
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Reserves `len` bytes of unwritten extents (fallocate mode 0, as fio and a preallocated segment do).
    pub(crate) fn fallocate(&self, len: u64) -> Result<(), BenchError> {
        let len_off = libc::off_t::try_from(len)
            .map_err(|_| BenchError::InvalidProbe(format!("file size {len} does not fit off_t")))?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, 0, len_off) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Filesystems without fallocate just grow the file as it is written.
            Some(libc::EOPNOTSUPP) => Ok(()),
            Some(libc::ENOSPC) => {
                let dir = self
                    .path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                let available_bytes = available_bytes(&dir).unwrap_or(0);
                Err(BenchError::NoSpace {
                    dir,
                    needed_bytes: len,
                    available_bytes,
                })
            }
            _ => Err(self.io_error("fallocate", e)),
        }
    }

    /// Wraps a failed system call on this file.
    pub(crate) fn io_error(&self, op: &'static str, source: io::Error) -> BenchError {
        BenchError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        // Best effort: the file is ours, and there is nobody to report a failure to at this point.
        let _ = fs::remove_file(&self.path);
    }
}
