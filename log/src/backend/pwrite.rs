//! Portable backend: pwrite then fdatasync (with or without O_DIRECT, by how the file was opened).

use super::WriteFailure;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Writes all of `bytes` at `pos`, then fdatasyncs.
pub(super) fn write_durable(file: &File, bytes: &[u8], pos: u64) -> Result<(), WriteFailure> {
    file.write_all_at(bytes, pos).map_err(WriteFailure::Write)?;
    file.sync_data().map_err(WriteFailure::Sync)
}
