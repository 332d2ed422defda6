//! Segment files: `<seq:016>.seg`, a fixed size, preallocated, starting with a one-sector header.
//!
//! Header (little-endian, in the first 4 KiB sector; the rest of the sector is zero):
//! ```text
//!  0 u64 magic "RLNSEG01"   8 u32 version (1)    12 u32 crc32c of bytes [16, 72)
//! 16 u64 seq               24 u64 base_index    32 u64 base_offset
//! 40 u64 prev_term         48 u64 segment_bytes 56 u64 group_bytes_max
//! 64 u64 flags (bit 0: RESTART — the log restarts here; every earlier segment is obsolete)
//! ```
//! `base_index`/`base_offset`/`prev_term` describe the log position where the segment begins,
//! so a segment can be read even after all earlier segments were dropped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::aligned_buf::{AlignedBuf, SECTOR_BYTES};
use crate::backend::{open_options, BackendKind};
use crate::batch::crc32c;

const MAGIC: u64 = u64::from_le_bytes(*b"RLNSEG01");
const VERSION: u32 = 1;
const HEADER_USED_BYTES: usize = 72;
/// Bytes before the first batch of a segment.
pub const SEGMENT_HEADER_BYTES: u64 = SECTOR_BYTES as u64;
const PREP_SUFFIX: &str = "seg.prep";

/// How a new segment's blocks are made ready before the log writes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocate {
    /// Write zeros over the whole file and sync: later fdatasyncs need only a device flush.
    ZeroFill,
    /// fallocate the extents: the file size is fixed, but each first write into an unwritten
    /// extent still costs a journal commit.
    Fallocate,
    /// Sparse file of the final size: every write allocates blocks.
    Sparse,
}

/// The decoded header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number, also the file name.
    pub seq: u64,
    /// Log index expected at the segment's first batch.
    pub base_index: u64,
    /// Record offset expected at the segment's first batch.
    pub base_offset: u64,
    /// Term of the entry at `base_index - 1` (0 if none).
    pub prev_term: u64,
    /// Fixed size of the file.
    pub segment_bytes: u64,
    /// Largest group (one write + fdatasync) the writer puts in this segment: the bound on how
    /// much of the tail a torn write can damage.
    pub group_bytes_max: u64,
    /// The log restarts at this segment (after a snapshot install past the log's end): every
    /// earlier segment is obsolete.
    pub restart: bool,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; HEADER_USED_BYTES] {
        let mut h = [0u8; HEADER_USED_BYTES];
        h[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        for (at, v) in [
            (16, self.seq),
            (24, self.base_index),
            (32, self.base_offset),
            (40, self.prev_term),
            (48, self.segment_bytes),
            (56, self.group_bytes_max),
            (64, u64::from(self.restart)),
        ] {
            h[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c(&h[16..HEADER_USED_BYTES]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and verifies a header; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < HEADER_USED_BYTES {
            return Err(format!("header truncated at {} bytes", bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if u64_at(0) != MAGIC {
            return Err("bad magic".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(format!("unsupported version {version}"));
        }
        let stored = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let actual = crc32c(&bytes[16..HEADER_USED_BYTES]);
        if stored != actual {
            return Err(format!(
                "header checksum: stored {stored:#010x}, computed {actual:#010x}"
            ));
        }
        Ok(SegmentHeader {
            seq: u64_at(16),
            base_index: u64_at(24),
            base_offset: u64_at(32),
            prev_term: u64_at(40),
            segment_bytes: u64_at(48),
            group_bytes_max: u64_at(56),
            restart: match u64_at(64) {
                0 => false,
                1 => true,
                other => return Err(format!("unknown segment flags {other:#x}")),
            },
        })
    }
}

/// Path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.seg"))
}

fn prep_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.{PREP_SUFFIX}"))
}

/// Sequence numbers of the segments in `dir`, ascending; removes abandoned preparations.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(PREP_SUFFIX) {
            std::fs::remove_file(entry.path())?;
        } else if let Some(seq) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// fsyncs a directory so that creates, renames and deletes in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Deletes segments `seqs` of `dir`, then fsyncs the directory (if any was deleted).
pub fn remove_segments(dir: &Path, seqs: &[u64]) -> io::Result<()> {
    for &seq in seqs {
        std::fs::remove_file(segment_path(dir, seq))?;
    }
    if !seqs.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates the zero-filled (or fallocated / sparse) body of segment `seq` under a temporary name.
/// Runs off the commit path, ahead of need.
pub fn prepare(dir: &Path, seq: u64, segment_bytes: u64, how: Preallocate) -> io::Result<PathBuf> {
    let path = prep_path(dir, seq);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    match how {
        Preallocate::ZeroFill => {
            let zeros = vec![0u8; 1 << 20];
            let mut pos = 0;
            while pos < segment_bytes {
                let n = (segment_bytes - pos).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
        }
        Preallocate::Fallocate => {
            // SAFETY: plain syscall on an fd we own.
            let rc = unsafe {
                libc::fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    0,
                    segment_bytes as i64,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Preallocate::Sparse => file.set_len(segment_bytes)?,
    }
    file.sync_all()?;
    Ok(path)
}

/// Turns a prepared body into segment `header.seq`: writes the header sector, syncs, renames,
/// syncs the directory. Returns the file opened for `kind`'s writes.
pub fn install(
    dir: &Path,
    prepared: &Path,
    header: &SegmentHeader,
    kind: BackendKind,
) -> io::Result<File> {
    let file = open_options(kind).open(prepared)?;
    let mut sector = AlignedBuf::new(SECTOR_BYTES);
    sector.extend_from_slice(&header.encode());
    sector.pad_to_sector();
    file.write_all_at(sector.as_slice(), 0)?;
    file.sync_data()?;
    std::fs::rename(prepared, segment_path(dir, header.seq))?;
    sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrips_and_rejects_any_bit_flip() {
        let h = SegmentHeader {
            seq: 3,
            base_index: 10,
            base_offset: 99,
            prev_term: 2,
            segment_bytes: 1 << 20,
            group_bytes_max: 1 << 16,
            restart: true,
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::decode(&bad).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }
}
