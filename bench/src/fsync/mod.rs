//! Disk profiling for a Raft log: how fast small appends become durable, and how far batching can go.
//!
//! The two measurements here are the stable API other benchmarks call to print the disk's own
//! limits beside their figures: [`measure_fdatasync`] and [`measure_sequential_bandwidth`].

pub mod classify;
pub mod command;
pub mod device;
mod error;
pub mod honesty;
pub mod predict;
pub mod profile;
mod pwrite_path;
mod scratch;
pub mod svg_plot;
pub mod text_report;
mod uring_path;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::latency::LatencySummary;
pub use error::BenchError;
pub use scratch::{available_bytes, check_dir, FREE_SPACE_RESERVE_BYTES};

use raftline_log::aligned_buf::{AlignedBuf, SECTOR_BYTES};

use crate::latency::LatencyRecorder;
use crate::stop::StopSignal;
use scratch::ScratchFile;
use uring_path::UringPath;

/// Largest single write a probe may issue (64 MiB): bounds every buffer a measurement allocates.
pub const WRITE_BYTES_MAX: usize = 64 << 20;
/// Most writes a bandwidth probe keeps in flight.
pub const QUEUE_DEPTH_MAX: usize = 32;

/// How the measured writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoPath {
    /// pwrite through the page cache, then fdatasync (etcd's WAL, fio `--ioengine=sync`).
    Buffered,
    /// O_DIRECT pwrite from a sector-aligned buffer, then fdatasync (used where io_uring is refused).
    DirectPwrite,
    /// O_DIRECT write, wait, then fdatasync through io_uring (what fio `--ioengine=io_uring --fdatasync=1` does).
    DirectUring,
    /// O_DIRECT write with an fdatasync linked to it (IO_LINK), submitted together: raftline's log path.
    DirectUringLinked,
}

impl IoPath {
    /// True for the paths that open the file with O_DIRECT.
    pub fn is_direct(self) -> bool {
        !matches!(self, IoPath::Buffered)
    }

    /// True for the io_uring paths.
    pub fn uses_uring(self) -> bool {
        matches!(self, IoPath::DirectUring | IoPath::DirectUringLinked)
    }

    /// A short name for tables and `--io-path`.
    pub fn name(self) -> &'static str {
        match self {
            IoPath::Buffered => "buffered",
            IoPath::DirectPwrite => "direct-pwrite",
            IoPath::DirectUring => "direct-uring",
            IoPath::DirectUringLinked => "direct-uring-linked",
        }
    }
}

/// What the scratch file holds before the timed writes start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileLayout {
    /// A new file fallocate'd to `file_bytes_max` (unwritten extents, as fio and a fresh segment):
    /// on ext4 each fdatasync also commits the journal for the extent conversion.
    Fallocated,
    /// A file whose blocks were written and synced beforehand (a zero-filled or recycled segment):
    /// each fdatasync only needs the device flush.
    Prewritten,
}

/// One fdatasync measurement: sequential writes of `write_bytes`, each followed by fdatasync.
#[derive(Clone, Debug)]
pub struct FsyncProbe {
    /// Bytes per write (a multiple of `SECTOR_BYTES` on the O_DIRECT paths).
    pub write_bytes: usize,
    /// The step stops after this long...
    pub duration: Duration,
    /// ...or when the next write would pass this file size, whichever comes first.
    pub file_bytes_max: u64,
    /// How the writes reach the disk.
    pub path: IoPath,
    /// What the file holds before the timed writes.
    pub layout: FileLayout,
}

impl FsyncProbe {
    /// A probe on a fresh fallocate'd file of at most 1 GiB.
    pub fn new(write_bytes: usize, duration: Duration, path: IoPath) -> Self {
        FsyncProbe {
            write_bytes,
            duration,
            file_bytes_max: 1 << 30,
            path,
            layout: FileLayout::Fallocated,
        }
    }
}

/// The result of [`measure_fdatasync`].
#[derive(Clone, Debug, Serialize)]
pub struct FsyncMeasurement {
    /// How the writes reached the disk.
    pub path: IoPath,
    /// What the file held before the timed writes.
    pub layout: FileLayout,
    /// Bytes per write.
    pub write_bytes: usize,
    /// Write + fdatasync pairs completed.
    pub commits: u64,
    /// Wall time of the timed loop, seconds.
    pub elapsed_s: f64,
    /// Latency of the fdatasync alone (what fio reports as `sync` latency); on the linked path, from the
    /// write's completion to the fdatasync's.
    pub fdatasync: LatencySummary,
    /// Latency of write + fdatasync: what one unbatched log append costs.
    pub commit: LatencySummary,
    /// Commits (= fdatasyncs) per second.
    pub commits_per_s: f64,
    /// Durable bytes per second.
    pub bytes_per_s: f64,
}

/// One sequential bandwidth measurement: O_DIRECT writes with several in flight, one fdatasync at the end.
#[derive(Clone, Debug)]
pub struct BandwidthProbe {
    /// Bytes per write (a multiple of `SECTOR_BYTES`).
    pub write_bytes: usize,
    /// Writes kept in flight (io_uring); the pwrite fallbacks always run at depth 1.
    pub queue_depth: usize,
    /// Writing stops after this long...
    pub duration: Duration,
    /// ...or at this file size, whichever comes first.
    pub file_bytes_max: u64,
    /// How the writes reach the disk.
    pub path: IoPath,
}

/// The result of [`measure_sequential_bandwidth`].
#[derive(Clone, Debug, Serialize)]
pub struct BandwidthMeasurement {
    /// How the writes reached the disk.
    pub path: IoPath,
    /// Bytes per write.
    pub write_bytes: usize,
    /// Writes in flight.
    pub queue_depth: usize,
    /// Bytes written and made durable.
    pub bytes_written: u64,
    /// Wall time including the final fdatasync, seconds.
    pub elapsed_s: f64,
    /// The final fdatasync alone, microseconds.
    pub end_fdatasync_us: f64,
    /// Durable bytes per second.
    pub bytes_per_s: f64,
}

/// Measures sequential writes each followed by fdatasync in a scratch file under `dir` (removed afterwards).
pub fn measure_fdatasync(
    dir: &Path,
    probe: &FsyncProbe,
    stop: &StopSignal,
) -> Result<FsyncMeasurement, BenchError> {
    measure_fdatasync_observed(dir, probe, stop, &mut |_| {})
}

/// Measures O_DIRECT sequential bandwidth, `queue_depth` writes in flight and one fdatasync at the end.
pub fn measure_sequential_bandwidth(
    dir: &Path,
    probe: &BandwidthProbe,
    stop: &StopSignal,
) -> Result<BandwidthMeasurement, BenchError> {
    measure_sequential_bandwidth_observed(dir, probe, stop, &mut |_| {})
}

/// Tells whether `dir` accepts O_DIRECT and io_uring by writing one sector; returns the fastest path that works
/// at or below `wanted`, with the reason for every step down.
pub fn resolve_io_path(
    dir: &Path,
    wanted: IoPath,
) -> Result<(IoPath, Vec<BenchError>), BenchError> {
    let mut refusals = Vec::new();
    let mut path = wanted;
    if path.uses_uring() {
        match UringPath::new() {
            Ok(_) => {}
            Err(e @ BenchError::UringUnavailable { .. }) => {
                refusals.push(e);
                path = IoPath::DirectPwrite;
            }
            Err(e) => return Err(e),
        }
    }
    if path.is_direct() {
        let probe_result = ScratchFile::create(dir, true).and_then(|file| {
            let buf = patterned_buf(SECTOR_BYTES, 1);
            pwrite_path::write_full(&file, &buf, 0).map_err(|e| match e {
                BenchError::Io { source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
                    BenchError::DirectIoRefused {
                        dir: dir.to_path_buf(),
                        source,
                    }
                }
                other => other,
            })
        });
        match probe_result {
            Ok(()) => {}
            Err(e @ BenchError::DirectIoRefused { .. }) => {
                refusals.push(e);
                path = IoPath::Buffered;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((path, refusals))
}

/// [`measure_fdatasync`] calling `progress(elapsed)` after every commit.
pub fn measure_fdatasync_observed(
    dir: &Path,
    probe: &FsyncProbe,
    stop: &StopSignal,
    progress: &mut dyn FnMut(Duration),
) -> Result<FsyncMeasurement, BenchError> {
    validate_write_bytes(probe.write_bytes, probe.path)?;
    if probe.file_bytes_max < probe.write_bytes as u64 {
        return Err(BenchError::InvalidProbe(format!(
            "file size limit {} B is below one write of {} B",
            probe.file_bytes_max, probe.write_bytes
        )));
    }
    check_dir(dir, probe.file_bytes_max)?;
    let file = ScratchFile::create(dir, probe.path.is_direct())?;
    let buf = patterned_buf(probe.write_bytes, probe.write_bytes as u64);
    let mut uring = match probe.path {
        IoPath::DirectUring | IoPath::DirectUringLinked => Some(UringPath::new()?),
        IoPath::Buffered | IoPath::DirectPwrite => None,
    };
    prepare_layout(&file, probe, uring.as_mut(), stop)?;

    let mut fdatasync = LatencyRecorder::new();
    let mut commit = LatencyRecorder::new();
    let write_bytes = probe.write_bytes as u64;
    let mut offset = 0u64;
    let start = Instant::now();
    loop {
        if stop.is_raised() {
            return Err(BenchError::Interrupted);
        }
        if start.elapsed() >= probe.duration || offset + write_bytes > probe.file_bytes_max {
            break;
        }
        let (write_time, fdatasync_time) = match uring.as_mut() {
            Some(ring) if probe.path == IoPath::DirectUringLinked => {
                ring.write_linked_fdatasync(&file, &buf, offset)?
            }
            Some(ring) => ring.write_then_fdatasync(&file, &buf, offset)?,
            None => pwrite_path::write_then_fdatasync(&file, &buf, offset)?,
        };
        fdatasync.record(fdatasync_time);
        commit.record(write_time + fdatasync_time);
        offset += write_bytes;
        progress(start.elapsed());
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let commits = offset / write_bytes;
    Ok(FsyncMeasurement {
        path: probe.path,
        layout: probe.layout,
        write_bytes: probe.write_bytes,
        commits,
        elapsed_s,
        fdatasync: fdatasync.summary(),
        commit: commit.summary(),
        commits_per_s: commits as f64 / elapsed_s,
        bytes_per_s: offset as f64 / elapsed_s,
    })
}

/// [`measure_sequential_bandwidth`] calling `progress(elapsed)` as writes are submitted.
pub fn measure_sequential_bandwidth_observed(
    dir: &Path,
    probe: &BandwidthProbe,
    stop: &StopSignal,
    progress: &mut dyn FnMut(Duration),
) -> Result<BandwidthMeasurement, BenchError> {
    validate_write_bytes(probe.write_bytes, probe.path)?;
    if probe.queue_depth == 0 || probe.queue_depth > QUEUE_DEPTH_MAX {
        return Err(BenchError::InvalidProbe(format!(
            "queue depth {} is outside 1..={QUEUE_DEPTH_MAX}",
            probe.queue_depth
        )));
    }
    check_dir(dir, probe.file_bytes_max)?;
    let file = ScratchFile::create(dir, probe.path.is_direct())?;
    // Like fio and the fdatasync steps: extents reserved up front, not allocated by the timed writes.
    file.fallocate(probe.file_bytes_max)?;
    let write_bytes = probe.write_bytes as u64;
    let start = Instant::now();
    let mut more = |next_offset: u64| {
        if stop.is_raised() {
            return Err(BenchError::Interrupted);
        }
        let elapsed = start.elapsed();
        progress(elapsed);
        Ok(elapsed < probe.duration && next_offset + write_bytes <= probe.file_bytes_max)
    };
    let (queue_depth, bytes_written, end_fdatasync) = match probe.path {
        IoPath::DirectUring | IoPath::DirectUringLinked => {
            let mut ring = UringPath::new()?;
            let bufs: Vec<AlignedBuf> = (0..probe.queue_depth)
                .map(|i| patterned_buf(probe.write_bytes, i as u64 + 7))
                .collect();
            let bytes_written = ring.stream_writes(&file, &bufs, &mut more)?;
            let t = Instant::now();
            ring.fdatasync(&file)?;
            (probe.queue_depth, bytes_written, t.elapsed())
        }
        IoPath::Buffered | IoPath::DirectPwrite => {
            let buf = patterned_buf(probe.write_bytes, 7);
            let mut offset = 0u64;
            while more(offset)? {
                pwrite_path::write_full(&file, &buf, offset)?;
                offset += write_bytes;
            }
            let t = Instant::now();
            file.file()
                .sync_data()
                .map_err(|e| file.io_error("fdatasync", e))?;
            (1, offset, t.elapsed())
        }
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(BandwidthMeasurement {
        path: probe.path,
        write_bytes: probe.write_bytes,
        queue_depth,
        bytes_written,
        elapsed_s,
        end_fdatasync_us: end_fdatasync.as_secs_f64() * 1e6,
        bytes_per_s: bytes_written as f64 / elapsed_s,
    })
}

/// A buffer of `len` bytes (a non-zero multiple of `SECTOR_BYTES`) filled with a pseudo-random
/// pattern from `seed`, so that no device can compress or deduplicate what is measured.
fn patterned_buf(len: usize, seed: u64) -> AlignedBuf {
    assert!(
        len > 0 && len % SECTOR_BYTES == 0,
        "buffer length {len} must be a non-zero multiple of {SECTOR_BYTES}"
    );
    let mut buf = AlignedBuf::new(len);
    let mut sector = [0u8; SECTOR_BYTES];
    let mut state = seed | 1;
    while buf.len() < len {
        for chunk in sector.chunks_exact_mut(8) {
            // xorshift64: cheap, incompressible enough for a disk.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        buf.extend_from_slice(&sector);
    }
    buf
}

fn validate_write_bytes(write_bytes: usize, path: IoPath) -> Result<(), BenchError> {
    if write_bytes == 0 || write_bytes > WRITE_BYTES_MAX || write_bytes % SECTOR_BYTES != 0 {
        return Err(BenchError::InvalidProbe(format!(
            "write size {write_bytes} B must be a multiple of {SECTOR_BYTES} B between {SECTOR_BYTES} B and {WRITE_BYTES_MAX} B ({} path)",
            path.name()
        )));
    }
    Ok(())
}

/// Puts the scratch file in the state `probe.layout` asks for, outside the timed loop.
fn prepare_layout(
    file: &ScratchFile,
    probe: &FsyncProbe,
    uring: Option<&mut UringPath>,
    stop: &StopSignal,
) -> Result<(), BenchError> {
    file.fallocate(probe.file_bytes_max)?;
    if probe.layout == FileLayout::Fallocated {
        return Ok(());
    }
    // Whole MiBs, then sectors: every block the timed loop may write is written here first.
    let mut offset = 0u64;
    for chunk_bytes in [1 << 20, SECTOR_BYTES] {
        let fill = patterned_buf(chunk_bytes, 3);
        while offset + chunk_bytes as u64 <= probe.file_bytes_max {
            if stop.is_raised() {
                return Err(BenchError::Interrupted);
            }
            pwrite_path::write_full(file, &fill, offset)?;
            offset += chunk_bytes as u64;
        }
    }
    match uring {
        Some(ring) => ring.fdatasync(file),
        None => file
            .file()
            .sync_data()
            .map_err(|e| file.io_error("fdatasync", e)),
    }
}
