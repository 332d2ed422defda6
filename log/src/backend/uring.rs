//! io_uring backend: the write and the fdatasync go in as one linked chain, one syscall.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, squeue, types, IoUring};

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
    pub fn write_durable(&mut self, file: &File, bytes: &[u8], pos: u64) -> io::Result<()> {
        let fd = types::Fd(file.as_raw_fd());
        let len =
            u32::try_from(bytes.len()).map_err(|_| io::Error::other("write larger than 4 GiB"))?;
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
            sq.push(&write)
                .map_err(|_| io::Error::other("submission queue full"))?;
            sq.push(&sync)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        let mut done = 0;
        let mut first_error = None;
        while done < 2 {
            self.ring.submit_and_wait(2 - done)?;
            for cqe in self.ring.completion() {
                done += 1;
                let res = cqe.result();
                let err = match cqe.user_data() {
                    WRITE_TAG if res < 0 => Some(io::Error::from_raw_os_error(-res)),
                    WRITE_TAG if res as u32 != len => Some(io::Error::other(format!(
                        "short write: {res} of {len} bytes"
                    ))),
                    SYNC_TAG if res < 0 => Some(io::Error::from_raw_os_error(-res)),
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
