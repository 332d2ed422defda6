//! io_uring backend: the write and the fdatasync go in as one linked chain, one syscall.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::WriteFailure;

const WRITE_TAG: u64 = 1;
const SYNC_TAG: u64 = 2;

/// An io_uring instance owned by the writer thread.
pub(crate) struct UringWriter {
    ring: IoUring,
}

impl UringWriter {
    /// Sets up a small ring; fails where io_uring is unavailable (old kernel, seccomp).
    pub fn new() -> io::Result<UringWriter> {
        Ok(UringWriter {
            ring: IoUring::new(4)?,
        })
    }

    /// Submits write(bytes @ pos) linked to fdatasync and waits for both.
    pub fn write_durable(
        &mut self,
        file: &File,
        bytes: &[u8],
        pos: u64,
    ) -> Result<(), WriteFailure> {
        let fd = types::Fd(file.as_raw_fd());
        let len = u32::try_from(bytes.len())
            .map_err(|_| WriteFailure::Write(io::Error::other("write larger than 4 GiB")))?;
        let write = opcode::Write::new(fd, bytes.as_ptr(), len)
            .offset(pos)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(WRITE_TAG);
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(SYNC_TAG);
        // SAFETY: `bytes` outlives the submission: we wait for both completions before returning.
        unsafe {
            let mut sq = self.ring.submission();
            let full = || WriteFailure::Sync(io::Error::other("submission queue full"));
            sq.push(&write).map_err(|_| full())?;
            sq.push(&sync).map_err(|_| full())?;
        }
        let mut done = 0;
        let mut first_error = None;
        while done < 2 {
            self.ring
                .submit_and_wait(2 - done)
                .map_err(WriteFailure::Sync)?;
            for cqe in self.ring.completion() {
                done += 1;
                let res = cqe.result();
                // A failed or short write breaks the link: the sync completes ECANCELED and
                // the write's error is the one reported (it comes first).
                let err = match cqe.user_data() {
                    WRITE_TAG if res < 0 => {
                        Some(WriteFailure::Write(io::Error::from_raw_os_error(-res)))
                    }
                    WRITE_TAG if res as u32 != len => Some(WriteFailure::Write(io::Error::other(
                        format!("short write: {res} of {len} bytes"),
                    ))),
                    SYNC_TAG if res < 0 => {
                        Some(WriteFailure::Sync(io::Error::from_raw_os_error(-res)))
                    }
                    _ => None,
                };
                if first_error.is_none() {
                    first_error = err;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
