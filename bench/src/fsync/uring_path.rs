//! The fast path: O_DIRECT writes and fdatasync submitted through our own small io_uring loop.

use std::io;
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use raftline_log::aligned_buf::AlignedBuf;

use super::scratch::ScratchFile;
use super::BenchError;

/// Submission queue entries: one per write in flight plus the final fdatasync.
pub const URING_ENTRIES_MAX: u32 = 64;

/// An io_uring instance used by one measurement.
pub(crate) struct UringPath {
    ring: IoUring,
}

const FSYNC_TAG: u64 = u64::MAX;

impl UringPath {
    /// Sets up a ring; EPERM (seccomp, sysctl) and ENOSYS become `UringUnavailable`.
    pub(crate) fn new() -> Result<Self, BenchError> {
        let ring = IoUring::new(URING_ENTRIES_MAX)
            .map_err(|source| BenchError::UringUnavailable { source })?;
        Ok(UringPath { ring })
    }

    /// Writes `buf` at `offset`, waits for it, then fdatasyncs, as the log's group commit does when it
    /// needs the write's result before the sync; returns (write time, fdatasync time).
    pub(crate) fn write_then_fdatasync(
        &mut self,
        file: &ScratchFile,
        buf: &AlignedBuf,
        offset: u64,
    ) -> Result<(Duration, Duration), BenchError> {
        let t0 = Instant::now();
        self.push(write_entry(file, buf, offset, 0));
        let result = self.wait_one(file)?;
        check_write(file, buf, result.1)?;
        let t1 = Instant::now();
        self.fdatasync(file)?;
        Ok((t1 - t0, t1.elapsed()))
    }

    /// Submits the write and an fdatasync linked to it (IO_LINK) in one go, as the log's group commit
    /// does; returns (write time, time from the write's completion to the fdatasync's).
    pub(crate) fn write_linked_fdatasync(
        &mut self,
        file: &ScratchFile,
        buf: &AlignedBuf,
        offset: u64,
    ) -> Result<(Duration, Duration), BenchError> {
        let t0 = Instant::now();
        self.push(write_entry(file, buf, offset, 0).flags(squeue::Flags::IO_LINK));
        self.push(fsync_entry(file));
        // Both completions are reaped before any result is judged: a failed write cancels the fsync
        // (-ECANCELED), and the kernel owns the buffer until both are back.
        let first = self.wait_one(file)?;
        let t1 = Instant::now();
        let second = self.wait_one(file)?;
        let t2 = Instant::now();
        let (write, fsync) = if first.0 == FSYNC_TAG {
            (second, first)
        } else {
            (first, second)
        };
        assert_eq!(
            fsync.0, FSYNC_TAG,
            "the chain is one write and one fdatasync"
        );
        check_write(file, buf, write.1)?;
        if fsync.1 < 0 {
            return Err(file.io_error("fdatasync", io::Error::from_raw_os_error(-fsync.1)));
        }
        Ok((t1 - t0, t2 - t1))
    }

    /// Submits one fdatasync and waits for it. Never retried on failure.
    pub(crate) fn fdatasync(&mut self, file: &ScratchFile) -> Result<(), BenchError> {
        self.push(fsync_entry(file));
        let (tag, result) = self.wait_one(file)?;
        assert_eq!(tag, FSYNC_TAG, "only the fdatasync is in flight");
        if result < 0 {
            return Err(file.io_error("fdatasync", io::Error::from_raw_os_error(-result)));
        }
        Ok(())
    }

    /// Keeps up to `bufs.len()` sequential writes in flight from offset 0 while `more(next_offset)`
    /// says so; returns the bytes written once every write has completed. On an error it stops
    /// submitting and still waits for every write in flight (the kernel owns those buffers until then).
    pub(crate) fn stream_writes(
        &mut self,
        file: &ScratchFile,
        bufs: &[AlignedBuf],
        mut more: impl FnMut(u64) -> Result<bool, BenchError>,
    ) -> Result<u64, BenchError> {
        assert!(
            !bufs.is_empty() && bufs.len() < URING_ENTRIES_MAX as usize,
            "queue depth out of range"
        );
        let write_bytes = bufs[0].len() as u64;
        let mut next_offset = 0u64;
        let mut completed_bytes = 0u64;
        let mut in_flight = 0usize;
        let mut first_error = None;
        let mut submit = |this: &mut Self,
                          index: usize,
                          next_offset: &mut u64,
                          first_error: &mut Option<BenchError>| {
            if first_error.is_some() {
                return false;
            }
            match more(*next_offset) {
                Ok(true) => {
                    this.push(write_entry(file, &bufs[index], *next_offset, index as u64));
                    *next_offset += write_bytes;
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    *first_error = Some(e);
                    false
                }
            }
        };
        for index in 0..bufs.len() {
            if !submit(self, index, &mut next_offset, &mut first_error) {
                break;
            }
            in_flight += 1;
        }
        while in_flight > 0 {
            // If the ring itself fails, nothing more can be learned about the writes in flight.
            let (tag, result) = self.wait_one(file)?;
            in_flight -= 1;
            let index = usize::try_from(tag).expect("tag is a buffer index");
            match check_write(file, &bufs[index], result) {
                Ok(()) => completed_bytes += write_bytes,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
            if submit(self, index, &mut next_offset, &mut first_error) {
                in_flight += 1;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => {
                debug_assert_eq!(completed_bytes, next_offset);
                Ok(completed_bytes)
            }
        }
    }

    fn push(&mut self, entry: squeue::Entry) {
        // SAFETY: every buffer an entry points to outlives its completion: callers wait for all
        // completions before returning, and the buffers are borrowed for that whole call.
        unsafe { self.ring.submission().push(&entry) }
            .expect("the submission queue holds at most queue-depth + 1 entries");
    }

    /// Submits what is queued and waits for one completion: (user_data, result).
    fn wait_one(&mut self, file: &ScratchFile) -> Result<(u64, i32), BenchError> {
        loop {
            if let Some(cqe) = self.ring.completion().next() {
                return Ok((cqe.user_data(), cqe.result()));
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // A signal (Ctrl-C) interrupts the wait, not the I/O: wait again for the completion.
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(file.io_error("io_uring_enter", e)),
            }
        }
    }
}

fn write_entry(file: &ScratchFile, buf: &AlignedBuf, offset: u64, tag: u64) -> squeue::Entry {
    let len = u32::try_from(buf.len()).expect("write buffers are far below 4 GiB");
    opcode::Write::new(
        types::Fd(file.file().as_raw_fd()),
        buf.as_slice().as_ptr(),
        len,
    )
    .offset(offset)
    .build()
    .user_data(tag)
}

fn fsync_entry(file: &ScratchFile) -> squeue::Entry {
    opcode::Fsync::new(types::Fd(file.file().as_raw_fd()))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(FSYNC_TAG)
}

fn check_write(file: &ScratchFile, buf: &AlignedBuf, result: i32) -> Result<(), BenchError> {
    if result < 0 {
        return Err(file.io_error("write", io::Error::from_raw_os_error(-result)));
    }
    if result as usize != buf.len() {
        return Err(file.io_error(
            "write",
            io::Error::other(format!("short write: {result} of {} bytes", buf.len())),
        ));
    }
    Ok(())
}
