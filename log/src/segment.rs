//! Segment files: `<seq:016>.seg`, a fixed size, preallocated, starting with a one-sector header.
//!
//! Header (little-endian, in the first 4 KiB sector; the rest of the sector is zero):
//! ```text
//!  0 u64 magic "RLNSEG01"   8 u32 version (1)    12 u32 crc32c of bytes [16, 72)
//! 16 u64 seq               24 u64 base_index    32 u64 base_offset
//! 40 u64 prev_term         48 u64 segment_bytes 56 u64 group_bytes_max
//! 64 u64 flags (bit 0: RESTART — the log restarts here; every earlier segment is obsolete)
//! 72 u64 stale_index_max (version 2; version 1 headers end at 72 and read as 0)
//! ```
//! `base_index`/`base_offset`/`prev_term` describe the log position where the segment begins,
//! so a segment can be read even after all earlier segments were dropped.
//!
//! A segment is either *fresh* (`stale_index_max` 0: its body read as zeros when installed) or
//! *recycled* from a segment dropped by prefix truncation: its body still holds the batches of
//! its previous life(s), all of them data batches (never truncation markers: segments holding
//! one are not recycled) with an index `<= stale_index_max`. Every entry and marker written in
//! the new life has a higher index (checked when installing, see `group_commit.rs`), so a data
//! batch with `index <= stale_index_max` in a recycled segment is stale, never log content.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::aligned_buf::{AlignedBuf, SECTOR_BYTES};
use crate::backend::{open_options, BackendKind};
use crate::batch::crc32c;
use crate::dir::sync_dir;

const MAGIC: u64 = u64::from_le_bytes(*b"RLNSEG01");
const VERSION: u32 = 2;
/// Version 1 headers (no `stale_index_max`) are still read.
const VERSION_1: u32 = 1;
const HEADER_USED_BYTES: usize = 80;
const HEADER_USED_BYTES_V1: usize = 72;
/// Bytes before the first batch of a segment.
pub const SEGMENT_HEADER_BYTES: u64 = SECTOR_BYTES as u64;
const PREP_SUFFIX: &str = "seg.prep";
const FREE_SUFFIX: &str = "seg.free";
/// Bytes per zero-fill write: one such write at most sits in the device queue (and in the
/// device cache a log commit's flush must write back) ahead of a group commit of the log; a
/// buffered fill would queue the whole segment at its sync.
const ZERO_FILL_CHUNK_BYTES: usize = 256 << 10;
/// Pace of a zero-fill: a 64 MiB segment in half a second at best, a fraction of the disk.
const ZERO_FILL_BYTES_PER_S: u64 = 128 << 20;
/// How long a zero-fill waits before looking again whether the log is idle.
const ZERO_FILL_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// Shared by a background zero-fill and the log writer.
#[derive(Debug, Default)]
pub struct FillGate {
    /// Set by the writer while a group commit is in flight: the fill does not start a chunk.
    pub log_busy: AtomicBool,
    /// Set when the writer needs the segment now: the fill stops after its current chunk.
    pub cancel: AtomicBool,
    /// Fill at full speed: nothing else writes (the log's first segment, made at open).
    pub unpaced: bool,
}

/// How a new segment's blocks are made ready before the log writes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preallocate {
    /// fallocate, then write zeros over the file in the background while the log is idle and
    /// sync: later fdatasyncs into it need only a device flush. A fill the roll-over stops
    /// early leaves the rest fallocated (see `prepare`).
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
    /// 0 for a fresh segment; for a recycled one, every batch of its earlier lives has an index
    /// at most this (and is stale), every batch of this life a higher one.
    pub stale_index_max: u64,
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
            (72, self.stale_index_max),
        ] {
            h[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32c(&h[16..HEADER_USED_BYTES]);
        h[12..16].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes and verifies a header; the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, String> {
        if bytes.len() < HEADER_USED_BYTES_V1 {
            return Err(format!("header truncated at {} bytes", bytes.len()));
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if u64_at(0) != MAGIC {
            return Err("bad magic".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        let used = match version {
            VERSION if bytes.len() >= HEADER_USED_BYTES => HEADER_USED_BYTES,
            VERSION => return Err(format!("header truncated at {} bytes", bytes.len())),
            VERSION_1 => HEADER_USED_BYTES_V1,
            _ => return Err(format!("unsupported version {version}")),
        };
        let stored = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let actual = crc32c(&bytes[16..used]);
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
            stale_index_max: if used == HEADER_USED_BYTES {
                u64_at(72)
            } else {
                0
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

/// Sequence numbers of the segments in `dir`, ascending; removes abandoned preparations and
/// segments set aside for recycling (what they hold is not known after a restart).
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(PREP_SUFFIX) || name.ends_with(FREE_SUFFIX) {
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

/// Path under which a dropped segment waits to be recycled.
pub fn free_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.{FREE_SUFFIX}"))
}

/// A segment body ready to be installed: its path and the `stale_index_max` its header needs.
#[derive(Debug)]
pub struct Prepared {
    /// The body, under a temporary name.
    pub path: PathBuf,
    /// 0 for a fresh body; the highest index of any batch it still holds when recycled.
    pub stale_index_max: u64,
    /// Its size: the segment's `segment_bytes` (a recycled body keeps its own; a fresh one may
    /// be smaller than configured when the disk is short of room, see `space::segment_size`).
    pub bytes: u64,
}

/// Creates the body of segment `seq` under a temporary name: fixed size, reading as zeros.
/// `ZeroFill` first fallocates (the body is usable from then on), then overwrites it with zeros
/// in O_DIRECT chunks so that later fdatasyncs into it need only a device flush; the fill only
/// uses moments the log is not committing, and stops early (leaving the rest fallocated, still
/// reading as zeros) once `gate.cancel` is set. Runs off the commit path, ahead of need. So a
/// log committing small groups with idle gaps (latency-bound) gets zero-filled segments, and a
/// log writing flat out (throughput-bound, where a second write stream would halve its
/// bandwidth) gets fallocated ones, whose journal cost per commit its big groups amortise.
pub fn prepare(
    dir: &Path,
    seq: u64,
    segment_bytes: u64,
    how: Preallocate,
    gate: &FillGate,
) -> io::Result<Prepared> {
    let path = prep_path(dir, seq);
    let made = fill_body(&path, segment_bytes, how, gate);
    if made.is_err() {
        // A half-allocated body would hold on to the space the disk is short of.
        let _ = std::fs::remove_file(&path);
    }
    made?;
    Ok(Prepared {
        path,
        stale_index_max: 0,
        bytes: segment_bytes,
    })
}

/// Creates `path` with `segment_bytes` reading as zeros, preallocated as `how` says.
fn fill_body(path: &Path, segment_bytes: u64, how: Preallocate, gate: &FillGate) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    match how {
        Preallocate::ZeroFill => {
            fallocate_or_extend(&file, segment_bytes)?;
            zero_fill(path, segment_bytes, gate)?;
        }
        Preallocate::Fallocate => fallocate(&file, segment_bytes)?,
        Preallocate::Sparse => file.set_len(segment_bytes)?,
    }
    // A stopped fill is wanted now: installing the segment syncs what it must (size, header).
    // A finished one is synced here, off the commit path, so that the first commits into the
    // segment do not carry its journal commit.
    if !gate.cancel.load(Ordering::Relaxed) {
        file.sync_all()?;
    }
    Ok(())
}

fn fallocate(file: &File, bytes: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(file), 0, 0, bytes as i64) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fallocate where the filesystem supports it, else a sparse file of the size.
fn fallocate_or_extend(file: &File, bytes: u64) -> io::Result<()> {
    match fallocate(file, bytes) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => file.set_len(bytes),
        other => other,
    }
}

/// Overwrites `[0, bytes)` of `path` with zeros, one chunk at a time, until done or cancelled.
/// O_DIRECT where the filesystem allows it; otherwise buffered with a sync per chunk, so that
/// the device never holds more than one chunk of the fill ahead of a log commit. Runs at idle
/// `ZERO_FILL_BYTES_PER_S`, starting a chunk only while the log is idle. (Not at idle I/O
/// priority: the writer may have to wait for the chunk in flight, and an idle-class request is
/// starved by the other logs on the same disk: a priority inversion.)
fn zero_fill(path: &Path, bytes: u64, gate: &FillGate) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    let (file, is_direct) = match direct {
        Ok(f) => (f, true),
        Err(_) => (std::fs::OpenOptions::new().write(true).open(path)?, false),
    };
    let mut zeros = AlignedBuf::new(ZERO_FILL_CHUNK_BYTES);
    zeros.extend_from_slice(&vec![0u8; ZERO_FILL_CHUNK_BYTES]);
    let chunk_pace = std::time::Duration::from_secs_f64(
        ZERO_FILL_CHUNK_BYTES as f64 / ZERO_FILL_BYTES_PER_S as f64,
    );
    let mut pos = 0;
    let mut next_chunk_at = std::time::Instant::now();
    while pos < bytes && !gate.cancel.load(Ordering::Relaxed) {
        let wait =
            gate.log_busy.load(Ordering::Relaxed) || std::time::Instant::now() < next_chunk_at;
        if wait && !gate.unpaced {
            // Woken early by a cancel (the writer unparks this thread).
            std::thread::park_timeout(ZERO_FILL_POLL);
            continue;
        }
        next_chunk_at = std::time::Instant::now() + chunk_pace;
        let n = (bytes - pos).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros.as_slice()[..n], pos)?;
        if !is_direct {
            file.sync_data()?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Moves a dropped segment (a `.free` file) to the temporary name of segment `seq`; its body
/// keeps the old batches (all with index `<= stale_index_max`), already written blocks.
pub fn recycle(dir: &Path, free: &Path, seq: u64, stale_index_max: u64) -> io::Result<Prepared> {
    let path = prep_path(dir, seq);
    std::fs::rename(free, &path)?;
    let bytes = std::fs::metadata(&path)?.len();
    Ok(Prepared {
        path,
        stale_index_max,
        bytes,
    })
}

/// Turns a prepared body into segment `header.seq`: writes the header sector, syncs, renames,
/// syncs the directory. Returns the file opened for `kind`'s writes.
pub fn install(
    dir: &Path,
    prepared: &Path,
    header: &SegmentHeader,
    kind: BackendKind,
) -> io::Result<File> {
    debug_assert_eq!(prepared.extension().and_then(|e| e.to_str()), Some("prep"));
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
            stale_index_max: 7,
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

    #[test]
    fn version_1_headers_are_read_as_fresh_segments() {
        let h = SegmentHeader {
            seq: 3,
            base_index: 10,
            base_offset: 99,
            prev_term: 2,
            segment_bytes: 1 << 20,
            group_bytes_max: 1 << 16,
            restart: false,
            stale_index_max: 0,
        };
        let mut v1 = h.encode();
        v1[8..12].copy_from_slice(&VERSION_1.to_le_bytes());
        let crc = crc32c(&v1[16..HEADER_USED_BYTES_V1]);
        v1[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&v1[..HEADER_USED_BYTES_V1]), Ok(h));
        assert_eq!(
            SegmentHeader::decode(&v1),
            Ok(h),
            "bytes after a v1 header are ignored"
        );
    }

    #[test]
    fn a_cancelled_zero_fill_leaves_a_full_size_body_reading_as_zeros() {
        let dir = tempfile::Builder::new()
            .prefix("raftline-seg-test")
            .tempdir_in("/tmp")
            .unwrap();
        let bytes = 4 * ZERO_FILL_CHUNK_BYTES as u64;
        let cancelled = FillGate::default();
        cancelled.cancel.store(true, Ordering::Relaxed);
        let p = prepare(dir.path(), 2, bytes, Preallocate::ZeroFill, &cancelled).unwrap();
        assert_eq!(p.stale_index_max, 0);
        let data = std::fs::read(&p.path).unwrap();
        assert_eq!(data.len() as u64, bytes);
        assert!(data.iter().all(|&b| b == 0));
        let full = prepare(
            dir.path(),
            3,
            bytes,
            Preallocate::ZeroFill,
            &FillGate::default(),
        )
        .unwrap();
        assert_eq!(std::fs::metadata(&full.path).unwrap().len(), bytes);
    }
}
