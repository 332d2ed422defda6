//! What a power cut would lose: per-file undo/redo logs of writes since the file's last fsync, and
//! the namespace operations since their directories' last fsync.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The granularity a torn write keeps: a disk writes whole 512-byte sectors or none.
pub const SECTOR: u64 = 512;

/// One change to a file's data since its last fsync, kept so a torn cut can replay a prefix.
#[derive(Debug)]
pub enum Redo {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Fallocate { mode: i32, offset: u64, len: u64 },
}

/// A file whose data changed since its last fsync/fdatasync.
#[derive(Debug)]
pub struct Dirty {
    /// When this file first became dirty (orders files for a seeded torn cut).
    pub seq: u64,
    /// A descriptor of the backing file: rollback goes through it wherever the name went.
    pub file: File,
    /// The size at the last fsync.
    pub synced_size: u64,
    /// The durable bytes overwritten since: non-overlapping, only inside `[0, synced_size)`, each
    /// saved once (the first time it was overwritten), so appends cost nothing here.
    pub saved: BTreeMap<u64, Vec<u8>>,
    /// Every change since the last fsync, in order.
    pub redo: Vec<Redo>,
    /// Bytes written since the last fsync (what a cut may lose).
    pub redo_bytes: u64,
}

impl Dirty {
    pub fn new(seq: u64, file: File, synced_size: u64) -> Dirty {
        Dirty {
            seq,
            file,
            synced_size,
            saved: BTreeMap::new(),
            redo: Vec::new(),
            redo_bytes: 0,
        }
    }

    /// Saves the durable bytes in `[start, end)` that are about to change and were not saved yet.
    pub fn save(&mut self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.synced_size);
        if start >= end {
            return Ok(());
        }
        let mut gaps = Vec::new();
        let mut cur = start;
        for (&s, v) in self.saved.range(..end) {
            let e = s + v.len() as u64;
            if e <= cur {
                continue;
            }
            if s > cur {
                gaps.push((cur, s));
            }
            cur = cur.max(e);
            if cur >= end {
                break;
            }
        }
        if cur < end {
            gaps.push((cur, end));
        }
        for (s, e) in gaps {
            let mut buf = vec![0u8; (e - s) as usize];
            let n = read_full_at(&self.file, &mut buf, s)?;
            // A file the durable size says is longer than it is (a hole at the end): zeros.
            buf[n..].fill(0);
            self.saved.insert(s, buf);
        }
        Ok(())
    }

    /// Puts the durable image back, then (torn) replays a prefix of the changes, cut at a sector
    /// boundary inside the first change not kept whole. Returns the bytes of writes kept.
    pub fn roll_back(&self, torn: Option<&mut ChaCha8Rng>) -> io::Result<u64> {
        for (&off, bytes) in &self.saved {
            self.file.write_all_at(bytes, off)?;
        }
        self.file.set_len(self.synced_size)?;
        let Some(rng) = torn else { return Ok(0) };
        let n = self.redo.len();
        let whole = rng.gen_range(0..=n);
        let mut kept = 0u64;
        for (i, change) in self.redo.iter().enumerate().take((whole + 1).min(n)) {
            match change {
                Redo::Write { offset, data } => {
                    let len = if i < whole {
                        data.len() as u64
                    } else {
                        torn_len(*offset, data.len() as u64, rng)
                    };
                    self.file.write_all_at(&data[..len as usize], *offset)?;
                    kept += len;
                }
                // A metadata change is all or nothing.
                Redo::SetLen(size) if i < whole => self.file.set_len(*size)?,
                Redo::Fallocate { mode, offset, len } if i < whole => {
                    fallocate(&self.file, *mode, *offset, *len)?
                }
                _ => {}
            }
        }
        Ok(kept)
    }
}

/// How much of a write `[offset, offset + len)` a torn cut keeps: up to a sector boundary strictly
/// inside it, or none of it, chosen uniformly.
fn torn_len(offset: u64, len: u64, rng: &mut ChaCha8Rng) -> u64 {
    let end = offset + len;
    let first = (offset / SECTOR + 1) * SECTOR;
    let mut cuts = vec![offset];
    let mut b = first;
    while b < end {
        cuts.push(b);
        b += SECTOR;
    }
    cuts[rng.gen_range(0..cuts.len())] - offset
}

pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory entry named by its parent directory's backing inode, so it still resolves after
/// the parent itself was renamed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub parent: u64,
    pub name: std::ffi::OsString,
}

/// A namespace change not yet durable.
#[derive(Debug)]
pub enum NsKind {
    /// Undo: remove the file.
    Create { at: Entry, bino: u64 },
    /// Undo: remove the directory and whatever was put in it.
    Mkdir { at: Entry, bino: u64 },
    /// unlink/rmdir, done as a move to the trash. Undo: move it back. Durable: delete it.
    Remove { at: Entry, trash: PathBuf },
    /// Undo: move back; put the replaced entry (kept in the trash) back. Durable: delete that.
    Rename {
        from: Entry,
        to: Entry,
        replaced: Option<PathBuf>,
    },
}

#[derive(Debug)]
pub struct NsOp {
    pub kind: NsKind,
    /// The directories (backing inodes) that still need an fsync for this change to be durable.
    pub pending: Vec<u64>,
}
