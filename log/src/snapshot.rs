//! Snapshot files: `snap-<index:020>-<term:020>.snap`, checksummed, installed atomically
//! (temp file + fsync + rename + directory fsync).
//!
//! Layout (little-endian): `0 u64 magic "RLNSNAP1"`, `8 u32 crc32c of [16, end)`, `12 u32 0`,
//! `16 u64 last_index`, `24 u64 last_term`, `32 u64 payload_bytes`, `40 payload`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::dir::sync_dir;
use crate::error::{CorruptionKind, LogError};
use crate::fault::crash_point;

const MAGIC: u64 = u64::from_le_bytes(*b"RLNSNAP1");
/// Bytes of a snapshot file before its payload.
pub const HEADER_BYTES: usize = 40;

/// A snapshot on disk, identified by the last log entry it includes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The file.
    pub path: PathBuf,
}

fn file_name(last_index: u64, last_term: u64) -> String {
    format!("snap-{last_index:020}-{last_term:020}.snap")
}

/// Writes a snapshot of `payload_bytes` whose payload `write_payload` streams (through a 1 MiB
/// buffer: the payload is never whole in memory), atomically and durably: temp file, fsync,
/// rename, directory fsync, at most `bytes_per_s` (`None`: as fast as the disk takes it; the
/// writer sleeps between writeback steps to keep to it, so the log's syncs on the same disk
/// find it less busy). A payload of another length than announced is refused (nothing is
/// renamed). Crash points: `snapshot-write-half` (half the payload in the temp file),
/// `snapshot-before-rename` (temp file complete and synced), `snapshot-before-dir-sync`.
pub fn write_snapshot_streamed(
    dir: &Path,
    last_index: u64,
    last_term: u64,
    payload_bytes: u64,
    bytes_per_s: Option<u64>,
    write_payload: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<SnapshotMeta, LogError> {
    let path = dir.join(file_name(last_index, last_term));
    let tmp = dir.join(format!("{}.tmp", file_name(last_index, last_term)));
    let io = |what: &str, e| LogError::io(format!("{what} snapshot {}", path.display()), e);
    let write = || -> Result<(), LogError> {
        let file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        let mut head = [0u8; HEADER_BYTES];
        head[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        head[16..24].copy_from_slice(&last_index.to_le_bytes());
        head[24..32].copy_from_slice(&last_term.to_le_bytes());
        head[32..40].copy_from_slice(&payload_bytes.to_le_bytes());
        let mut out = ChecksummedWriter {
            inner: BufWriter::with_capacity(WRITE_BUFFER_BYTES, &file),
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            written: 0,
            half: payload_bytes / 2,
            writeback: Writeback::new(&file, bytes_per_s),
        };
        out.inner.write_all(&head).map_err(|e| io("writing", e))?;
        out.crc.update(&head[16..]);
        write_payload(&mut out).map_err(|e| io("writing", e))?;
        if out.written != payload_bytes {
            let why = format!(
                "payload of {} bytes, {payload_bytes} announced",
                out.written
            );
            return Err(io("writing", std::io::Error::other(why)));
        }
        let crc = out.crc.finalize() as u32;
        out.inner.flush().map_err(|e| io("writing", e))?;
        drop(out);
        file.write_all_at(&crc.to_le_bytes(), 8)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("syncing", e))
    };
    if let Err(e) = write() {
        // A partial file would hold on to space a full disk lacks.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    crash_point("snapshot-before-rename");
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
    crash_point("snapshot-before-dir-sync");
    sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
    Ok(SnapshotMeta {
        last_index,
        last_term,
        path,
    })
}

/// Bytes buffered between the payload's writer and the file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Bytes of payload after which their writeback is started, and the step before waited for.
/// Without it a snapshot (hundreds of MB) sits dirty in the page cache until the final fsync,
/// which then queues all of it on the disk at once: the log's fdatasyncs wait behind it (append
/// p99 68.7 ms during 1M-key snapshots against 1.14 ms without, bench/RESULTS.md). Paced, at
/// most two steps are in flight, so a log sync waits behind at most that much (RocksDB's
/// `bytes_per_sync` does the same for its SST files).
const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// The payload's way to the file: checksummed and counted as it passes.
struct ChecksummedWriter<'a> {
    inner: BufWriter<&'a std::fs::File>,
    crc: crc_fast::Digest,
    written: u64,
    /// Payload bytes after which `snapshot-write-half` fires.
    half: u64,
    writeback: Writeback<'a>,
}

/// Paced writeback of a file being written front to back: `sync_file_range` starts the
/// writeback of each step and waits for the one before. It is pacing only, never durability
/// (the file is fsynced at the end); where the file system refuses it, pacing stops.
struct Writeback<'a> {
    file: &'a File,
    /// File bytes whose writeback has been started.
    started: u64,
    /// Start of the step started last (waited for when the next one starts).
    previous: u64,
    /// File bytes at the end of the last step (= `started` unless refused).
    stepped: u64,
    refused: bool,
    /// The write rate to keep to, and when writing began.
    rate: Option<(u64, std::time::Instant)>,
}

impl<'a> Writeback<'a> {
    fn new(file: &'a File, bytes_per_s: Option<u64>) -> Writeback<'a> {
        Writeback {
            file,
            started: 0,
            previous: 0,
            stepped: 0,
            refused: false,
            rate: bytes_per_s
                .filter(|&r| r > 0)
                .map(|r| (r, std::time::Instant::now())),
        }
    }

    /// `end` bytes of the file have been written (reached the kernel).
    fn written_through(&mut self, end: u64) {
        if end - self.stepped < WRITEBACK_STEP_BYTES {
            return;
        }
        self.stepped = end;
        if let Some(wait) = self.ahead_of_rate(end, std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        if self.refused {
            return;
        }
        let start = libc::SYNC_FILE_RANGE_WRITE;
        let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let fd = std::os::fd::AsRawFd::as_raw_fd(self.file);
        // SAFETY: plain syscalls on the descriptor of a file borrowed for this writer's life.
        let ok = unsafe {
            libc::sync_file_range(
                fd,
                self.started as i64,
                (end - self.started) as i64,
                start,
            ) == 0
                // A length of 0 would mean "to the end of the file": the first step has no
                // step before it to wait for.
                && (self.started == self.previous
                    || libc::sync_file_range(
                        fd,
                        self.previous as i64,
                        (self.started - self.previous) as i64,
                        wait,
                    ) == 0)
        };
        if !ok {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "sync_file_range refused: snapshot writeback is not paced"
            );
            self.refused = true;
            return;
        }
        self.previous = self.started;
        self.started = end;
    }

    /// How far ahead of the rate `end` bytes written by `now` are (`None`: not ahead).
    fn ahead_of_rate(&self, end: u64, now: std::time::Instant) -> Option<std::time::Duration> {
        let (rate, began) = self.rate?;
        let due = began + std::time::Duration::from_secs_f64(end as f64 / rate as f64);
        due.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

impl Write for ChecksummedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        let before = self.written;
        self.written += n as u64;
        if before < self.half && self.written >= self.half {
            self.inner.flush()?;
            crash_point("snapshot-write-half");
        }
        // What the buffer has passed on is in the kernel: everything but what it still holds.
        let in_kernel = HEADER_BYTES as u64 + self.written - self.inner.buffer().len() as u64;
        self.writeback.written_through(in_kernel);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Snapshots in `dir`, newest (highest last index) first; leftover temp files are ignored.
pub fn list_snapshots(dir: &Path) -> Result<Vec<SnapshotMeta>, LogError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_prefix("snap-"))
            .and_then(|n| n.strip_suffix(".snap"))
        else {
            continue;
        };
        let Some((index, term)) = stem.split_once('-') else {
            continue;
        };
        if let (Ok(last_index), Ok(last_term)) = (index.parse(), term.parse()) {
            out.push(SnapshotMeta {
                last_index,
                last_term,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|m| std::cmp::Reverse(m.last_index));
    Ok(out)
}

/// The newest snapshot in `dir`, if any.
pub fn latest_snapshot(dir: &Path) -> Result<Option<SnapshotMeta>, LogError> {
    Ok(list_snapshots(dir)?.into_iter().next())
}

/// Why a snapshot file's header cannot be trusted for the snapshot expected, if it cannot.
fn check_header(
    head: &[u8; HEADER_BYTES],
    file_len: u64,
    last_index: u64,
    last_term: u64,
) -> Result<(), CorruptionKind> {
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    if head[0..8] != MAGIC.to_le_bytes() || head[12..16] != [0; 4] {
        return Err(CorruptionKind::BadFrame("not a snapshot file".into()));
    }
    if (u64_at(16), u64_at(24)) != (last_index, last_term)
        || u64_at(32) != file_len - HEADER_BYTES as u64
    {
        return Err(CorruptionKind::BadFrame(
            "header disagrees with the snapshot expected or the file's length".into(),
        ));
    }
    Ok(())
}

/// Bytes a [`SnapshotReader`] reads from the file at a time.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// A snapshot's payload as a stream ([`std::io::Read`]), checksummed as it is read: a
/// consumer decodes it piece by piece (a snapshot is never whole in memory), then
/// [`SnapshotReader::finish`] says whether what it read can be trusted. Until `finish`
/// returned `Ok`, nothing decoded from it may be used.
pub struct SnapshotReader {
    input: std::io::BufReader<File>,
    path: PathBuf,
    /// Payload bytes not read yet.
    remaining: u64,
    crc: crc_fast::Digest,
    expected_crc: u32,
    /// The first read error: `finish` reports it.
    failed: Option<std::io::Error>,
}

impl SnapshotReader {
    /// Opens the snapshot `meta` names and checks its header (magic, index and term, length).
    pub fn open(meta: &SnapshotMeta) -> Result<SnapshotReader, LogError> {
        let path = &meta.path;
        let io = |e| LogError::io(format!("reading {}", path.display()), e);
        let corrupt = |kind| LogError::Corrupt {
            segment: path.clone(),
            position: 0,
            kind,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; HEADER_BYTES];
        if len < HEADER_BYTES as u64 || file.read_exact_at(&mut head, 0).is_err() {
            return Err(corrupt(CorruptionKind::BadFrame(
                "not a snapshot file".into(),
            )));
        }
        check_header(&head, len, meta.last_index, meta.last_term).map_err(corrupt)?;
        let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        crc.update(&head[16..]);
        let mut input = std::io::BufReader::with_capacity(READ_BUFFER_BYTES, file);
        std::io::Seek::seek(&mut input, std::io::SeekFrom::Start(HEADER_BYTES as u64))
            .map_err(io)?;
        Ok(SnapshotReader {
            input,
            path: path.clone(),
            remaining: len - HEADER_BYTES as u64,
            crc,
            expected_crc: u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")),
            failed: None,
        })
    }

    /// Bytes of the payload.
    pub fn payload_bytes(&self) -> u64 {
        self.remaining
    }

    /// Reads what the consumer left (if anything) and checks the checksum: `Ok` only if the
    /// whole payload was read and matches.
    pub fn finish(mut self) -> Result<(), LogError> {
        std::io::copy(&mut self, &mut std::io::sink()).ok();
        if let Some(e) = self.failed.take() {
            return Err(LogError::io(format!("reading {}", self.path.display()), e));
        }
        let actual = self.crc.finalize() as u32;
        if actual != self.expected_crc {
            return Err(LogError::Corrupt {
                segment: self.path,
                position: 0,
                kind: CorruptionKind::Checksum {
                    expected: self.expected_crc,
                    actual,
                },
            });
        }
        Ok(())
    }
}

impl std::io::Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(std::io::Error::new(e.kind(), e.to_string()));
        }
        let want = buf.len().min(self.remaining as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = match self.input.read(&mut buf[..want]) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the snapshot file ended before its payload",
            )),
            other => other,
        }
        .inspect_err(|e| self.failed = Some(std::io::Error::new(e.kind(), e.to_string())))?;
        self.crc.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Reads and verifies a snapshot; returns its payload (whole in memory: for small snapshots
/// and tests; a node decodes through a [`SnapshotReader`]).
pub fn read_snapshot(meta: &SnapshotMeta) -> Result<Vec<u8>, LogError> {
    let mut reader = SnapshotReader::open(meta)?;
    let mut payload = Vec::with_capacity(reader.payload_bytes() as usize);
    // A read error is kept by the reader and reported by `finish`.
    let _ = std::io::Read::read_to_end(&mut reader, &mut payload);
    reader.finish()?;
    Ok(payload)
}

/// Verifies an open snapshot file that is about to be served (to a follower, to a consumer):
/// its header names `last_index`/`last_term` and its length, and its checksum holds, read
/// 1 MiB at a time. Its bytes may have rotted since it was written or loaded; a failure is
/// `Corrupt` (`path` names it), and nothing of it may be served.
pub fn verify_snapshot_file(
    file: &File,
    path: &Path,
    last_index: u64,
    last_term: u64,
) -> Result<(), LogError> {
    let io = |e| LogError::io(format!("verifying {}", path.display()), e);
    let corrupt = |kind| LogError::Corrupt {
        segment: path.to_path_buf(),
        position: 0,
        kind,
    };
    let len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; HEADER_BYTES];
    if len < HEADER_BYTES as u64 || file.read_exact_at(&mut head, 0).is_err() {
        return Err(corrupt(CorruptionKind::BadFrame(
            "not a snapshot file".into(),
        )));
    }
    check_header(&head, len, last_index, last_term).map_err(corrupt)?;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&head[16..]);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut at = HEADER_BYTES as u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at).map_err(io)?;
        digest.update(&buf[..n]);
        at += n as u64;
    }
    let expected = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
    let actual = digest.finalize() as u32;
    if expected != actual {
        return Err(corrupt(CorruptionKind::Checksum { expected, actual }));
    }
    Ok(())
}

/// Installs a snapshot file received verbatim (e.g. from a Raft leader, in chunks) at `tmp`:
/// verifies it (checksum, header = the expected `last_index`/`last_term`, read 1 MiB at a
/// time), fsyncs it, renames it to its final name and fsyncs the directory. Returns the
/// installed snapshot (its payload is read through a [`SnapshotReader`]).
pub fn install_snapshot_file(
    dir: &Path,
    tmp: &Path,
    last_index: u64,
    last_term: u64,
) -> Result<SnapshotMeta, LogError> {
    let path = dir.join(file_name(last_index, last_term));
    let io = |what: &str, e| LogError::io(format!("{what} snapshot {}", path.display()), e);
    let file = std::fs::File::open(tmp).map_err(|e| io("opening the received", e))?;
    verify_snapshot_file(&file, tmp, last_index, last_term)?;
    file.sync_all().map_err(|e| io("syncing", e))?;
    crash_point("install-before-rename");
    std::fs::rename(tmp, &path).map_err(|e| io("renaming", e))?;
    sync_dir(dir).map_err(|e| io("syncing the directory of", e))?;
    Ok(SnapshotMeta {
        last_index,
        last_term,
        path,
    })
}

/// Deletes the temp files a crash left behind (a snapshot being written or received: never
/// trusted, and they would hold disk space forever), then fsyncs the directory. Returns how many.
pub fn remove_temp_files(dir: &Path) -> Result<usize, LogError> {
    let listing = |e| LogError::io(format!("listing {}", dir.display()), e);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let path = entry.map_err(listing)?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path)
                .map_err(|e| LogError::io(format!("deleting {}", path.display()), e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir).map_err(|e| LogError::io("syncing the snapshot directory", e))?;
    }
    Ok(removed)
}

/// Deletes snapshots older than `keep_from_index`, then fsyncs the directory.
pub fn remove_snapshots_below(dir: &Path, keep_from_index: u64) -> Result<usize, LogError> {
    let old: Vec<_> = list_snapshots(dir)?
        .into_iter()
        .filter(|m| m.last_index < keep_from_index)
        .collect();
    for m in &old {
        std::fs::remove_file(&m.path)
            .map_err(|e| LogError::io(format!("deleting {}", m.path.display()), e))?;
        crash_point("prune-after-first-snapshot");
    }
    if !old.is_empty() {
        sync_dir(dir).map_err(|e| LogError::io("syncing the snapshot directory", e))?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_starts_each_step_and_waits_for_the_one_before() {
        let dir = scratch();
        let file = File::create(dir.path().join("paced")).unwrap();
        let mut paced = Writeback::new(&file, None);
        let chunk = vec![7u8; 1 << 20];
        for mib in 1..=20u64 {
            (&file).write_all(&chunk).unwrap();
            paced.written_through(mib << 20);
        }
        assert!(!paced.refused, "a regular file takes sync_file_range");
        assert_eq!(
            paced.started,
            16 << 20,
            "writeback started at each 8 MiB step"
        );
        assert_eq!(paced.previous, 8 << 20, "the step before was waited for");
    }

    #[test]
    fn a_file_that_refuses_sync_file_range_is_written_unpaced() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) fills the two descriptors, each owned once below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (read_end, write_end) = unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        };
        let mut paced = Writeback::new(&write_end, None);
        paced.written_through(WRITEBACK_STEP_BYTES);
        assert!(paced.refused, "a pipe refuses sync_file_range (ESPIPE)");
        paced.written_through(2 * WRITEBACK_STEP_BYTES);
        assert_eq!(paced.started, 0, "no pacing once refused");
        drop(read_end);
    }

    #[test]
    fn a_rate_limited_writer_is_held_to_its_rate_from_the_first_byte() {
        let dir = scratch();
        let file = File::create(dir.path().join("limited")).unwrap();
        let rate = 64 << 20;
        let paced = Writeback::new(&file, Some(rate));
        let (_, began) = paced.rate.unwrap();
        // 16 MiB at 64 MiB/s are due 250 ms after the start: written at once, 250 ms ahead.
        assert_eq!(
            paced.ahead_of_rate(16 << 20, began),
            Some(std::time::Duration::from_millis(250))
        );
        let later = began + std::time::Duration::from_millis(300);
        assert_eq!(
            paced.ahead_of_rate(16 << 20, later),
            None,
            "behind: no wait"
        );
        assert_eq!(
            Writeback::new(&file, None).ahead_of_rate(1 << 30, began),
            None
        );
        assert!(
            Writeback::new(&file, Some(0)).rate.is_none(),
            "0 is no limit"
        );
    }

    fn write_snapshot(
        dir: &Path,
        last_index: u64,
        last_term: u64,
        payload: &[u8],
    ) -> Result<SnapshotMeta, LogError> {
        write_snapshot_streamed(
            dir,
            last_index,
            last_term,
            payload.len() as u64,
            None,
            |w| w.write_all(payload),
        )
    }

    #[test]
    fn a_payload_of_another_length_than_announced_is_never_installed() {
        let dir = scratch();
        let short =
            write_snapshot_streamed(dir.path(), 3, 1, 10, None, |w| w.write_all(b"nine byte"));
        assert!(short.is_err());
        let long = write_snapshot_streamed(dir.path(), 3, 1, 2, None, |w| w.write_all(b"abc"));
        assert!(long.is_err());
        assert_eq!(latest_snapshot(dir.path()).unwrap(), None);
    }

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("raftline-snap-test")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn latest_snapshot_is_the_highest_index_and_reads_back() {
        let dir = scratch();
        assert_eq!(latest_snapshot(dir.path()).unwrap(), None);
        write_snapshot(dir.path(), 10, 1, b"ten").unwrap();
        write_snapshot(dir.path(), 30, 2, b"thirty").unwrap();
        write_snapshot(dir.path(), 20, 2, b"twenty").unwrap();
        std::fs::write(
            dir.path()
                .join("snap-00000000000000000099-00000000000000000009.snap.tmp"),
            b"partial",
        )
        .unwrap();
        let latest = latest_snapshot(dir.path()).unwrap().unwrap();
        assert_eq!((latest.last_index, latest.last_term), (30, 2));
        assert_eq!(remove_temp_files(dir.path()).unwrap(), 1);
        assert_eq!(latest_snapshot(dir.path()).unwrap(), Some(latest.clone()));
        assert_eq!(read_snapshot(&latest).unwrap(), b"thirty");
        assert_eq!(remove_snapshots_below(dir.path(), 30).unwrap(), 2);
        assert_eq!(list_snapshots(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_received_snapshot_file_is_installed_only_if_it_verifies() {
        let src = scratch();
        let dir = scratch();
        let meta = write_snapshot(src.path(), 7, 3, b"state").unwrap();
        let tmp = dir.path().join("incoming.snap.tmp");
        std::fs::copy(&meta.path, &tmp).unwrap();
        assert!(
            install_snapshot_file(dir.path(), &tmp, 7, 4).is_err(),
            "wrong term"
        );
        let mut bad = std::fs::read(&tmp).unwrap();
        *bad.last_mut().unwrap() ^= 1;
        std::fs::write(&tmp, &bad).unwrap();
        assert!(
            matches!(
                install_snapshot_file(dir.path(), &tmp, 7, 3),
                Err(LogError::Corrupt { .. })
            ),
            "a flipped bit"
        );
        assert_eq!(latest_snapshot(dir.path()).unwrap(), None);
        std::fs::copy(&meta.path, &tmp).unwrap();
        let installed = install_snapshot_file(dir.path(), &tmp, 7, 3).unwrap();
        assert_eq!(read_snapshot(&installed).unwrap(), b"state");
        assert_eq!(latest_snapshot(dir.path()).unwrap(), Some(installed));
        assert!(!tmp.exists());
    }

    #[test]
    fn any_bit_flip_in_a_snapshot_is_reported() {
        let dir = scratch();
        let meta = write_snapshot(dir.path(), 5, 1, b"state machine bytes").unwrap();
        let good = std::fs::read(&meta.path).unwrap();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&meta.path, &bad).unwrap();
            assert!(
                matches!(read_snapshot(&meta), Err(LogError::Corrupt { .. })),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn a_reader_streams_the_payload_and_only_finish_says_it_can_be_trusted() {
        use std::io::Read;
        let dir = scratch();
        // Over the reader's buffer, read in odd pieces.
        let payload: Vec<u8> = (0..(5 << 19)).map(|i| (i % 253) as u8).collect();
        let meta = write_snapshot(dir.path(), 9, 2, &payload).unwrap();
        let mut reader = SnapshotReader::open(&meta).unwrap();
        assert_eq!(reader.payload_bytes(), payload.len() as u64);
        let (mut read, mut piece) = (Vec::new(), vec![0u8; 7919]);
        loop {
            let n = reader.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            read.extend_from_slice(&piece[..n]);
        }
        assert_eq!(read, payload);
        reader.finish().unwrap();
        // A consumer that stops early: finish reads the rest and still checks it.
        let mut reader = SnapshotReader::open(&meta).unwrap();
        reader.read_exact(&mut piece).unwrap();
        reader.finish().unwrap();
        // A flipped payload bit reads fine and fails at finish.
        let good = std::fs::read(&meta.path).unwrap();
        let mut bad = good.clone();
        bad[HEADER_BYTES + (3 << 19)] ^= 4;
        std::fs::write(&meta.path, &bad).unwrap();
        let mut reader = SnapshotReader::open(&meta).unwrap();
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert!(matches!(reader.finish(), Err(LogError::Corrupt { .. })));
        // A file cut short is refused at open (the header names the length).
        std::fs::write(&meta.path, &good[..good.len() - 1]).unwrap();
        assert!(matches!(
            SnapshotReader::open(&meta),
            Err(LogError::Corrupt { .. })
        ));
    }

    #[test]
    fn an_open_snapshot_file_is_verified_before_it_is_served() {
        let dir = scratch();
        // Over 1 MiB: the check reads it in pieces.
        let payload: Vec<u8> = (0..(3 << 19)).map(|i| (i % 251) as u8).collect();
        let meta = write_snapshot(dir.path(), 9, 2, &payload).unwrap();
        let file = File::open(&meta.path).unwrap();
        verify_snapshot_file(&file, &meta.path, 9, 2).unwrap();
        assert!(
            verify_snapshot_file(&file, &meta.path, 9, 3).is_err(),
            "other term"
        );
        let good = std::fs::read(&meta.path).unwrap();
        for at in [9, 20, HEADER_BYTES + 5, good.len() - 1, (1 << 20) + 77] {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            std::fs::write(&meta.path, &bad).unwrap();
            assert!(
                matches!(
                    verify_snapshot_file(&file, &meta.path, 9, 2),
                    Err(LogError::Corrupt { .. })
                ),
                "byte {at}"
            );
        }
    }
}
