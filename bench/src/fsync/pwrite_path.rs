//! The portable path: pwrite(2) then fdatasync(2), buffered or O_DIRECT.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use raftline_log::aligned_buf::AlignedBuf;

use super::scratch::ScratchFile;
use super::BenchError;

/// Writes `buf` at `offset`, then fdatasyncs; returns (write time, fdatasync time).
pub(crate) fn write_then_fdatasync(
    file: &ScratchFile,
    buf: &AlignedBuf,
    offset: u64,
) -> Result<(Duration, Duration), BenchError> {
    let t0 = Instant::now();
    write_full(file, buf, offset)?;
    let t1 = Instant::now();
    // An fdatasync error is final: the page cache may have dropped the pages it failed to write.
    file.file()
        .sync_data()
        .map_err(|e| file.io_error("fdatasync", e))?;
    Ok((t1 - t0, t1.elapsed()))
}

/// One positional write that must cover the whole buffer (a short write is an error, not retried:
/// on O_DIRECT the remainder would be misaligned).
pub(crate) fn write_full(
    file: &ScratchFile,
    buf: &AlignedBuf,
    offset: u64,
) -> Result<(), BenchError> {
    let written = file
        .file()
        .write_at(buf.as_slice(), offset)
        .map_err(|e| file.io_error("write", e))?;
    if written != buf.len() {
        return Err(file.io_error(
            "write",
            std::io::Error::other(format!("short write: {written} of {} bytes", buf.len())),
        ));
    }
    Ok(())
}
