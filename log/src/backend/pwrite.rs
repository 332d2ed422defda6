//! Portable backend: pwrite then fdatasync (with or without O_DIRECT, by how the file was opened).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Writes all of `bytes` at `pos`, then fdatasyncs.
pub(super) fn write_durable(file: &File, bytes: &[u8], pos: u64) -> io::Result<()> {
    file.write_all_at(bytes, pos)?;
    file.sync_data()
}
