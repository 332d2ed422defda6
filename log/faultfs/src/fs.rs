//! The passthrough filesystem: mirrors a backing directory, records what is not durable yet, and
//! injects the faults the control socket asks for.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::{fallocate, read_full_at, Dirty, Entry, NsKind, NsOp, Redo};
use crate::Stats;

/// The hidden directory (in the backing root, never shown on the mount) where unlinked and
/// replaced entries wait until their directory's fsync makes the removal durable.
pub const TRASH: &str = ".faultfs-trash";

/// Attributes and entries are never cached by the kernel: after a power cut the tree changes under
/// it, and every lookup must come here.
const TTL: Duration = Duration::ZERO;

#[derive(Debug)]
struct Node {
    /// Path relative to the backing root.
    rel: PathBuf,
    bino: u64,
    dir: bool,
}

#[derive(Debug)]
struct Handle {
    file: Option<File>,
    append: bool,
    entries: Vec<(OsString, FileType, u64)>,
}

#[derive(Debug, Default)]
struct Faults {
    fail_fsync: u64,
    enospc: bool,
    space: Option<u64>,
    delay_fsync: Duration,
    lie_fsync: bool,
}

struct Inner {
    root: PathBuf,
    nodes: HashMap<u64, Node>,
    by_bino: HashMap<u64, u64>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    dirty: HashMap<u64, Dirty>,
    dirty_seq: u64,
    ns: Vec<NsOp>,
    trash_seq: u64,
    faults: Faults,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Gate {
    frozen: bool,
    waiting: usize,
    shutdown: bool,
}

/// What a power cut did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// The torn-write seed, when the cut was torn.
    pub seed: Option<u64>,
    /// Files whose data was rolled back to their last fsync.
    pub files: u64,
    /// Namespace changes undone.
    pub undone: u64,
    /// Bytes of not-yet-synced writes a torn cut kept.
    pub kept: u64,
    /// Bytes of not-yet-synced writes that were pending before the cut.
    pub pending: u64,
}

/// The state shared by the FUSE workers and the control socket.
pub struct Shared {
    inner: Mutex<Inner>,
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    mountpoint: PathBuf,
}

fn errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn kind_of(ft: fs::FileType) -> FileType {
    FileType::from_std(ft).unwrap_or(FileType::RegularFile)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Inner {
    fn abs(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }

    fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        if parent == INodeNo::ROOT.0 && name == TRASH {
            return Err(Errno::EPERM);
        }
        Ok(self.node(parent)?.rel.join(name))
    }

    /// The fuse inode for a backing inode found at `rel`, allocated on first sight.
    fn ino_for(&mut self, rel: PathBuf, md: &fs::Metadata) -> u64 {
        let dir = md.is_dir();
        if rel.as_os_str().is_empty() {
            return INodeNo::ROOT.0;
        }
        if let Some(&ino) = self.by_bino.get(&md.ino()) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                if n.dir == dir {
                    n.rel = rel;
                    return ino;
                }
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                rel,
                bino: md.ino(),
                dir,
            },
        );
        self.by_bino.insert(md.ino(), ino);
        ino
    }

    fn attr(&self, ino: u64, md: &fs::Metadata) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: md.size(),
            blocks: md.blocks(),
            atime: system_time(md.atime(), md.atime_nsec()),
            mtime: system_time(md.mtime(), md.mtime_nsec()),
            ctime: system_time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind_of(md.file_type()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        }
    }

    /// Metadata of a node, checked to still be the same backing inode.
    fn stat(&self, ino: u64, fh: Option<FileHandle>) -> Result<fs::Metadata, Errno> {
        if let Some(file) = fh
            .and_then(|fh| self.handles.get(&fh.0))
            .and_then(|h| h.file.as_ref())
        {
            return file.metadata().map_err(|e| errno(&e));
        }
        let node = self.node(ino)?;
        let md = fs::symlink_metadata(self.abs(&node.rel)).map_err(|e| errno(&e))?;
        if ino != INodeNo::ROOT.0 && md.ino() != node.bino {
            return Err(Errno::ENOENT);
        }
        Ok(md)
    }

    /// Updates the table after `from` (relative) moved to `to`: it and everything below it.
    fn moved(&mut self, from: &Path, to: &Path) {
        for n in self.nodes.values_mut() {
            if let Ok(rest) = n.rel.strip_prefix(from) {
                n.rel = if rest.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    fn mv(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.abs(from), self.abs(to))?;
        self.moved(from, to);
        Ok(())
    }

    fn trash_name(&mut self) -> PathBuf {
        self.trash_seq += 1;
        Path::new(TRASH).join(format!("t{}", self.trash_seq))
    }

    fn dir_path(&self, bino: u64) -> Option<PathBuf> {
        if bino == self.root_bino() {
            return Some(PathBuf::new());
        }
        let ino = self.by_bino.get(&bino)?;
        Some(self.nodes.get(ino)?.rel.clone())
    }

    fn root_bino(&self) -> u64 {
        self.nodes[&INodeNo::ROOT.0].bino
    }

    fn entry_path(&self, e: &Entry) -> io::Result<PathBuf> {
        self.dir_path(e.parent)
            .map(|d| d.join(&e.name))
            .ok_or_else(|| io::Error::other(format!("directory of {:?} is gone", e.name)))
    }

    fn bino_of(&self, ino: u64) -> Result<u64, Errno> {
        Ok(self.node(ino)?.bino)
    }

    /// Space check for a change that grows the filesystem by `grow` bytes (0: a new name).
    fn allocate(&mut self, grow: u64, new_name: bool) -> Result<(), Errno> {
        if self.faults.enospc && (grow > 0 || new_name) {
            self.stats.enospc += 1;
            return Err(Errno::ENOSPC);
        }
        if let Some(left) = self.faults.space {
            if grow > left || (new_name && left == 0) {
                self.stats.enospc += 1;
                return Err(Errno::ENOSPC);
            }
            self.faults.space = Some(left - grow);
        }
        Ok(())
    }

    /// The dirty record of a backing inode, opened on first change.
    fn dirty(&mut self, bino: u64, file: &File) -> io::Result<&mut Dirty> {
        if !self.dirty.contains_key(&bino) {
            let size = file.metadata()?.size();
            self.dirty_seq += 1;
            self.dirty
                .insert(bino, Dirty::new(self.dirty_seq, file.try_clone()?, size));
        }
        Ok(self.dirty.get_mut(&bino).expect("inserted"))
    }

    fn record(&mut self, kind: NsKind, mut dirs: Vec<u64>) {
        dirs.dedup();
        self.ns.push(NsOp {
            kind,
            pending: dirs,
        });
    }

    /// A directory's fsync: its part of each pending change is durable; changes with nothing
    /// pending left are final (their trash is emptied).
    fn dir_synced(&mut self, dir: u64) {
        let mut left = Vec::with_capacity(self.ns.len());
        for mut op in std::mem::take(&mut self.ns) {
            op.pending.retain(|&d| d != dir);
            if op.pending.is_empty() {
                self.finalize(op.kind);
            } else {
                left.push(op);
            }
        }
        self.ns = left;
    }

    fn finalize(&mut self, kind: NsKind) {
        let trash = match kind {
            NsKind::Remove { trash, .. } => trash,
            NsKind::Rename {
                replaced: Some(trash),
                ..
            } => trash,
            _ => return,
        };
        let abs = self.abs(&trash);
        if let Ok(md) = fs::symlink_metadata(&abs) {
            self.dirty.remove(&md.ino());
            let _ = if md.is_dir() {
                fs::remove_dir_all(&abs)
            } else {
                fs::remove_file(&abs)
            };
        }
    }

    fn undo(&mut self, kind: &NsKind) -> io::Result<()> {
        match kind {
            NsKind::Create { at, bino } | NsKind::Mkdir { at, bino } => {
                let rel = self.entry_path(at)?;
                let abs = self.abs(&rel);
                let md = fs::symlink_metadata(&abs)?;
                if md.ino() != *bino {
                    return Err(io::Error::other(format!(
                        "{} is another file now",
                        rel.display()
                    )));
                }
                self.dirty.remove(bino);
                if md.is_dir() {
                    fs::remove_dir_all(&abs)
                } else {
                    fs::remove_file(&abs)
                }
            }
            NsKind::Remove { at, trash } => {
                let rel = self.entry_path(at)?;
                self.mv(trash, &rel)
            }
            NsKind::Rename { from, to, replaced } => {
                let to = self.entry_path(to)?;
                let from = self.entry_path(from)?;
                self.mv(&to, &from)?;
                if let Some(trash) = replaced {
                    self.mv(trash, &to)?;
                }
                Ok(())
            }
        }
    }

    fn power_cut(&mut self, seed: Option<u64>) -> CutReport {
        let mut report = CutReport {
            seed,
            ..CutReport::default()
        };
        let mut rng = seed.map(ChaCha8Rng::seed_from_u64);
        let mut dirty: Vec<Dirty> = self.dirty.drain().map(|(_, d)| d).collect();
        dirty.sort_by_key(|d| d.seq);
        for d in &dirty {
            report.files += 1;
            report.pending += d.redo_bytes;
            match d.roll_back(rng.as_mut()) {
                Ok(kept) => report.kept += kept,
                Err(e) => {
                    self.stats.rollback_errors += 1;
                    eprintln!("raftline-faultfs: rolling back file data: {e}");
                }
            }
        }
        let ops = std::mem::take(&mut self.ns);
        for op in ops.iter().rev() {
            report.undone += 1;
            if let Err(e) = self.undo(&op.kind) {
                self.stats.rollback_errors += 1;
                eprintln!("raftline-faultfs: undoing {:?}: {e}", op.kind);
            }
        }
        // Whatever is left in the trash was removed durably or belongs to nothing now.
        let trash = self.root.join(TRASH);
        let _ = fs::remove_dir_all(&trash);
        let _ = fs::create_dir(&trash);
        self.stats.power_cuts += 1;
        if seed.is_some() {
            self.stats.torn_cuts += 1;
        }
        self.refresh();
        report
    }

    /// Re-walks the backing tree so every known inode points at where it is now.
    fn refresh(&mut self) {
        let mut found: HashMap<u64, PathBuf> = HashMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let Ok(rd) = fs::read_dir(self.abs(&rel)) else {
                continue;
            };
            for e in rd.flatten() {
                if rel.as_os_str().is_empty() && e.file_name() == TRASH {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                let child = rel.join(e.file_name());
                if md.is_dir() {
                    stack.push(child.clone());
                }
                found.insert(md.ino(), child);
            }
        }
        for (ino, n) in self.nodes.iter_mut() {
            if *ino == INodeNo::ROOT.0 {
                continue;
            }
            match found.get(&n.bino) {
                Some(rel) => n.rel = rel.clone(),
                None => n.rel = PathBuf::from(TRASH).join("gone"),
            }
        }
    }

    fn flip(&mut self, rel: &Path, offset: u64, bit: u8) -> io::Result<()> {
        if bit > 7 {
            return Err(io::Error::other("bit must be 0..=7"));
        }
        let abs = self.abs(rel);
        let file = OpenOptions::new().read(true).write(true).open(&abs)?;
        let mut b = [0u8];
        if read_full_at(&file, &mut b, offset)? != 1 {
            return Err(io::Error::other(format!(
                "offset {offset} is past the end of {}",
                rel.display()
            )));
        }
        b[0] ^= 1 << bit;
        file.write_all_at(&b, offset)?;
        // Bit rot is durable: it is in the durable image too, and survives a cut.
        if let Some(d) = self.dirty.get_mut(&file.metadata()?.ino()) {
            if let Some((&s, v)) = d.saved.range_mut(..=offset).next_back() {
                if offset < s + v.len() as u64 {
                    v[(offset - s) as usize] ^= 1 << bit;
                }
            }
            for r in d.redo.iter_mut().rev() {
                if let Redo::Write { offset: o, data } = r {
                    if offset >= *o && offset < *o + data.len() as u64 {
                        data[(offset - *o) as usize] ^= 1 << bit;
                        break;
                    }
                }
            }
        }
        self.stats.flips += 1;
        Ok(())
    }

    fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.dirty_files = self.dirty.len() as u64;
        s.dirty_bytes = self.dirty.values().map(|d| d.redo_bytes).sum();
        s.pending_ns_ops = self.ns.len() as u64;
        s.fail_fsync_left = self.faults.fail_fsync;
        s.space_left = self.faults.space;
        s
    }
}

impl Shared {
    /// Takes over `root` (the backing directory) for a mount at `mountpoint`.
    pub fn new(root: &Path, mountpoint: &Path) -> io::Result<Shared> {
        let root = fs::canonicalize(root)?;
        let md = fs::metadata(&root)?;
        if !md.is_dir() {
            return Err(io::Error::other(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let trash = root.join(TRASH);
        let _ = fs::remove_dir_all(&trash);
        fs::create_dir(&trash)?;
        let mut nodes = HashMap::new();
        nodes.insert(
            INodeNo::ROOT.0,
            Node {
                rel: PathBuf::new(),
                bino: md.ino(),
                dir: true,
            },
        );
        Ok(Shared {
            inner: Mutex::new(Inner {
                root,
                nodes,
                by_bino: HashMap::new(),
                next_ino: 2,
                handles: HashMap::new(),
                next_fh: 1,
                dirty: HashMap::new(),
                dirty_seq: 0,
                ns: Vec::new(),
                trash_seq: 0,
                faults: Faults::default(),
                stats: Stats::default(),
            }),
            gate: Mutex::new(Gate::default()),
            gate_cv: Condvar::new(),
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks while the filesystem is frozen.
    fn pass(&self) {
        let mut g = self.lock_gate();
        if !g.frozen {
            return;
        }
        g.waiting += 1;
        self.lock().stats.frozen_waits += 1;
        self.gate_cv.notify_all();
        while g.frozen {
            g = self.gate_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.waiting -= 1;
    }

    /// Unfreezes for good: the mount is going away.
    pub fn shutdown(&self) {
        let mut g = self.lock_gate();
        g.shutdown = true;
        g.frozen = false;
        self.gate_cv.notify_all();
    }

    fn freeze(&self, on: bool) -> Result<(), String> {
        let mut g = self.lock_gate();
        if on && g.shutdown {
            return Err("shutting down".into());
        }
        g.frozen = on;
        self.gate_cv.notify_all();
        Ok(())
    }

    /// Waits until at least `n` operations are blocked by a freeze.
    fn wait_frozen(&self, n: usize, timeout: Duration) -> bool {
        let g = self.lock_gate();
        let (g, _) = self
            .gate_cv
            .wait_timeout_while(g, timeout, |g| g.waiting < n)
            .unwrap_or_else(|p| p.into_inner());
        g.waiting >= n
    }

    fn rel_for_ctl(&self, inner: &Inner, path: &str) -> Result<PathBuf, String> {
        let p = Path::new(path);
        let rel = if p.is_absolute() {
            p.strip_prefix(&self.mountpoint)
                .or_else(|_| p.strip_prefix(&inner.root))
                .map_err(|_| format!("{path} is neither under the mount nor the backing dir"))?
        } else {
            p
        };
        Ok(rel.to_path_buf())
    }

    /// Runs one control command line; the reply line (without "ok "/"err ").
    pub fn command(&self, line: &str) -> Result<String, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |s: Option<&&str>| -> Result<u64, String> {
            let s = s.ok_or("missing number")?;
            s.parse::<u64>().map_err(|_| format!("not a number: {s}"))
        };
        let on_off = |s: Option<&&str>| -> Result<bool, String> {
            match s.copied() {
                Some("on") | Some("1") | Some("true") => Ok(true),
                Some("off") | Some("0") | Some("false") => Ok(false),
                other => Err(format!("expected on|off, got {other:?}")),
            }
        };
        match words.first().copied() {
            Some("ping") => Ok("pong".into()),
            Some("power-cut") => {
                let mut torn = false;
                let mut seed = None;
                for w in &words[1..] {
                    match *w {
                        "torn" | "--torn" => torn = true,
                        s => seed = Some(s.parse::<u64>().map_err(|_| format!("bad seed {s}"))?),
                    }
                }
                let seed = if torn || seed.is_some() {
                    Some(seed.unwrap_or_else(random_seed))
                } else {
                    None
                };
                let r = self.lock().power_cut(seed);
                let seed = r.seed.map_or("none".to_string(), |s| s.to_string());
                eprintln!(
                    "raftline-faultfs: power cut: seed={seed} files={} undone={} kept={} pending={}",
                    r.files, r.undone, r.kept, r.pending
                );
                Ok(format!(
                    "seed={seed} files={} undone={} kept={} pending={}",
                    r.files, r.undone, r.kept, r.pending
                ))
            }
            Some("flip") => {
                // flip PATH OFFSET BIT (the path may contain spaces).
                let rest = line.trim().strip_prefix("flip").unwrap_or("").trim();
                let mut it = rest.rsplitn(3, char::is_whitespace);
                let bit = it
                    .next()
                    .and_then(|s| s.parse::<u8>().ok())
                    .ok_or("bad bit")?;
                let off = it
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or("bad offset")?;
                let path = it
                    .next()
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .ok_or("no path")?;
                let mut inner = self.lock();
                let rel = self.rel_for_ctl(&inner, path)?;
                inner.flip(&rel, off, bit).map_err(|e| e.to_string())?;
                Ok(String::new())
            }
            Some("fail-fsync") => {
                self.lock().faults.fail_fsync = num(words.get(1))?;
                Ok(String::new())
            }
            Some("enospc") => {
                self.lock().faults.enospc = on_off(words.get(1))?;
                Ok(String::new())
            }
            Some("space") => {
                let v = match words.get(1).copied() {
                    Some("off") => None,
                    _ => Some(num(words.get(1))?),
                };
                self.lock().faults.space = v;
                Ok(String::new())
            }
            Some("delay-fsync") => {
                self.lock().faults.delay_fsync = Duration::from_millis(num(words.get(1))?);
                Ok(String::new())
            }
            Some("lie-fsync") => {
                self.lock().faults.lie_fsync = on_off(words.get(1))?;
                Ok(String::new())
            }
            Some("freeze") => {
                self.freeze(on_off(words.get(1))?)?;
                Ok(String::new())
            }
            Some("wait-frozen") => {
                let n = num(words.get(1))? as usize;
                let ms = num(words.get(2)).unwrap_or(10_000);
                if self.wait_frozen(n, Duration::from_millis(ms)) {
                    Ok(String::new())
                } else {
                    Err(format!("fewer than {n} operations blocked after {ms} ms"))
                }
            }
            Some("stats") => {
                let s = self.lock().stats();
                let waiting = self.lock_gate().waiting as u64;
                Ok(Stats {
                    frozen_now: waiting,
                    ..s
                }
                .to_line())
            }
            Some(other) => Err(format!("unknown command {other}")),
            None => Err("empty command".into()),
        }
    }

    /// The fsync path shared by files and directories: the faults first, then durability.
    fn sync(&self, ino: u64, dir: bool) -> Result<(), Errno> {
        self.pass();
        let delay = self.lock().faults.delay_fsync;
        if !delay.is_zero() {
            self.lock().stats.fsync_delayed += 1;
            std::thread::sleep(delay);
        }
        let mut inner = self.lock();
        inner.stats.fsyncs += 1;
        if inner.faults.fail_fsync > 0 {
            inner.faults.fail_fsync -= 1;
            inner.stats.fsync_failed += 1;
            return Err(Errno::EIO);
        }
        if inner.faults.lie_fsync {
            inner.stats.fsync_lied += 1;
            return Ok(());
        }
        let bino = inner.bino_of(ino)?;
        if dir {
            inner.dir_synced(bino);
        } else {
            inner.dirty.remove(&bino);
        }
        Ok(())
    }
}

fn random_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)
}

/// The FUSE side: a thin adapter from requests to `Shared`.
pub struct Passthrough(pub std::sync::Arc<Shared>);

impl Passthrough {
    fn lookup_rel(&self, inner: &mut Inner, rel: PathBuf) -> Result<FileAttr, Errno> {
        let md = fs::symlink_metadata(inner.abs(&rel)).map_err(|e| errno(&e))?;
        let ino = inner.ino_for(rel, &md);
        Ok(inner.attr(ino, &md))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let mut inner = self.0.lock();
        let node = inner.node(ino)?;
        let abs = inner.abs(&node.rel);
        let bino = node.bino;
        if let Some(mode) = mode {
            fs::set_permissions(&abs, fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| errno(&e))?;
        }
        if uid.is_some() || gid.is_some() {
            let c = cstr(&abs).map_err(|e| errno(&e))?;
            // SAFETY: c is a valid NUL-terminated path.
            check(unsafe {
                libc::lchown(c.as_ptr(), uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))
            })
            .map_err(|e| errno(&e))?;
        }
        if let Some(size) = size {
            let file = match fh
                .and_then(|fh| inner.handles.get(&fh.0))
                .and_then(|h| h.file.as_ref())
            {
                Some(f) => f.try_clone(),
                None => OpenOptions::new().read(true).write(true).open(&abs),
            }
            .map_err(|e| errno(&e))?;
            let d = inner.dirty(bino, &file).map_err(|e| errno(&e))?;
            d.save(size, u64::MAX).map_err(|e| errno(&e))?;
            d.redo.push(Redo::SetLen(size));
            file.set_len(size).map_err(|e| errno(&e))?;
        }
        if atime.is_some() || mtime.is_some() {
            let ts = |t: Option<TimeOrNow>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(TimeOrNow::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(TimeOrNow::SpecificTime(t)) => {
                    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    libc::timespec {
                        tv_sec: d.as_secs() as i64,
                        tv_nsec: d.subsec_nanos() as i64,
                    }
                }
            };
            let times = [ts(atime), ts(mtime)];
            let c = cstr(&abs).map_err(|e| errno(&e))?;
            // SAFETY: valid path and a two-element timespec array.
            check(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
            .map_err(|e| errno(&e))?;
        }
        let md = inner.stat(ino, fh)?;
        Ok(inner.attr(ino, &md))
    }

    fn do_open(&self, ino: u64, flags: i32) -> Result<(u64, FopenFlags), Errno> {
        let mut inner = self.0.lock();
        let node = inner.node(ino)?;
        let abs = inner.abs(&node.rel);
        let bino = node.bino;
        let acc = flags & libc::O_ACCMODE;
        let write = acc != libc::O_RDONLY;
        let append = flags & libc::O_APPEND != 0;
        // O_DIRECT is honoured on the mount (FOPEN_DIRECT_IO: no kernel page cache); the backing
        // file is opened buffered, as the backing's own cache does not decide durability here.
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(flags & (libc::O_NOATIME | libc::O_NOFOLLOW))
            .open(&abs)
            .map_err(|e| errno(&e))?;
        if flags & libc::O_TRUNC != 0 && write {
            let d = inner.dirty(bino, &file).map_err(|e| errno(&e))?;
            d.save(0, u64::MAX).map_err(|e| errno(&e))?;
            d.redo.push(Redo::SetLen(0));
            file.set_len(0).map_err(|e| errno(&e))?;
        }
        let fh = inner.next_fh;
        inner.next_fh += 1;
        inner.handles.insert(
            fh,
            Handle {
                file: Some(file),
                append,
                entries: Vec::new(),
            },
        );
        Ok((fh, FopenFlags::FOPEN_DIRECT_IO))
    }

    fn do_create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let mut inner = self.0.lock();
        let rel = inner.child(parent, name)?;
        let abs = inner.abs(&rel);
        let parent_bino = inner.bino_of(parent)?;
        let exists = fs::symlink_metadata(&abs).is_ok();
        if exists && flags & libc::O_EXCL != 0 {
            return Err(Errno::EEXIST);
        }
        if !exists {
            inner.allocate(0, true)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .mode(mode & 0o7777)
            .open(&abs)
            .map_err(|e| errno(&e))?;
        let md = file.metadata().map_err(|e| errno(&e))?;
        if !exists {
            inner.record(
                NsKind::Create {
                    at: Entry {
                        parent: parent_bino,
                        name: name.to_owned(),
                    },
                    bino: md.ino(),
                },
                vec![parent_bino],
            );
        } else if flags & libc::O_TRUNC != 0 {
            let d = inner.dirty(md.ino(), &file).map_err(|e| errno(&e))?;
            d.save(0, u64::MAX).map_err(|e| errno(&e))?;
            d.redo.push(Redo::SetLen(0));
            file.set_len(0).map_err(|e| errno(&e))?;
        }
        let ino = inner.ino_for(rel, &md);
        let attr = inner.attr(ino, &md);
        let fh = inner.next_fh;
        inner.next_fh += 1;
        let append = flags & libc::O_APPEND != 0;
        inner.handles.insert(
            fh,
            Handle {
                file: Some(file),
                append,
                entries: Vec::new(),
            },
        );
        Ok((attr, fh))
    }

    fn do_mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr, Errno> {
        let mut inner = self.0.lock();
        let rel = inner.child(parent, name)?;
        let parent_bino = inner.bino_of(parent)?;
        inner.allocate(0, true)?;
        let abs = inner.abs(&rel);
        fs::create_dir(&abs).map_err(|e| errno(&e))?;
        let _ = fs::set_permissions(&abs, fs::Permissions::from_mode(mode & 0o7777));
        let md = fs::symlink_metadata(&abs).map_err(|e| errno(&e))?;
        inner.record(
            NsKind::Mkdir {
                at: Entry {
                    parent: parent_bino,
                    name: name.to_owned(),
                },
                bino: md.ino(),
            },
            vec![parent_bino],
        );
        let ino = inner.ino_for(rel, &md);
        Ok(inner.attr(ino, &md))
    }

    fn do_remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut inner = self.0.lock();
        let rel = inner.child(parent, name)?;
        let parent_bino = inner.bino_of(parent)?;
        let abs = inner.abs(&rel);
        let md = fs::symlink_metadata(&abs).map_err(|e| errno(&e))?;
        match (dir, md.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) => {
                if fs::read_dir(&abs).map_err(|e| errno(&e))?.next().is_some() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
            (false, false) => {}
        }
        let trash = inner.trash_name();
        inner.mv(&rel, &trash).map_err(|e| errno(&e))?;
        inner.record(
            NsKind::Remove {
                at: Entry {
                    parent: parent_bino,
                    name: name.to_owned(),
                },
                trash,
            },
            vec![parent_bino],
        );
        Ok(())
    }

    fn do_rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let mut inner = self.0.lock();
        let from = inner.child(parent, name)?;
        let to = inner.child(newparent, newname)?;
        let pb = inner.bino_of(parent)?;
        let npb = inner.bino_of(newparent)?;
        let from_md = fs::symlink_metadata(inner.abs(&from)).map_err(|e| errno(&e))?;
        let replaced = match fs::symlink_metadata(inner.abs(&to)) {
            Err(_) => None,
            Ok(_) if flags.contains(RenameFlags::RENAME_NOREPLACE) => return Err(Errno::EEXIST),
            Ok(md) if md.ino() == from_md.ino() => return Ok(()),
            Ok(md) => {
                if from_md.is_dir() != md.is_dir() {
                    return Err(if md.is_dir() {
                        Errno::EISDIR
                    } else {
                        Errno::ENOTDIR
                    });
                }
                let trash = inner.trash_name();
                if md.is_dir() {
                    if fs::read_dir(inner.abs(&to))
                        .map_err(|e| errno(&e))?
                        .next()
                        .is_some()
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    inner.mv(&to, &trash).map_err(|e| errno(&e))?;
                } else {
                    // A second name keeps the replaced file; the rename itself stays atomic.
                    fs::hard_link(inner.abs(&to), inner.abs(&trash)).map_err(|e| errno(&e))?;
                    if let Some(&ino) = inner.by_bino.get(&md.ino()) {
                        if let Some(n) = inner.nodes.get_mut(&ino) {
                            n.rel = trash.clone();
                        }
                    }
                }
                Some(trash)
            }
        };
        if let Err(e) = inner.mv(&from, &to) {
            if let Some(trash) = &replaced {
                let _ = if from_md.is_dir() {
                    inner.mv(trash, &to)
                } else {
                    fs::remove_file(inner.abs(trash))
                };
            }
            return Err(errno(&e));
        }
        inner.record(
            NsKind::Rename {
                from: Entry {
                    parent: pb,
                    name: name.to_owned(),
                },
                to: Entry {
                    parent: npb,
                    name: newname.to_owned(),
                },
                replaced,
            },
            vec![pb, npb],
        );
        Ok(())
    }

    fn do_write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut inner = self.0.lock();
        let h = inner.handles.get(&fh).ok_or(Errno::EBADF)?;
        let file = h
            .file
            .as_ref()
            .ok_or(Errno::EBADF)?
            .try_clone()
            .map_err(|e| errno(&e))?;
        let append = h.append;
        let md = file.metadata().map_err(|e| errno(&e))?;
        let size = md.size();
        let offset = if append { size } else { offset };
        let end = offset + data.len() as u64;
        inner.allocate(end.saturating_sub(size), false)?;
        let d = inner.dirty(md.ino(), &file).map_err(|e| errno(&e))?;
        d.save(offset, end).map_err(|e| errno(&e))?;
        d.redo.push(Redo::Write {
            offset,
            data: data.to_vec(),
        });
        d.redo_bytes += data.len() as u64;
        file.write_all_at(data, offset).map_err(|e| errno(&e))?;
        Ok(data.len() as u32)
    }

    fn do_fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let mut inner = self.0.lock();
        let h = inner.handles.get(&fh).ok_or(Errno::EBADF)?;
        let file = h
            .file
            .as_ref()
            .ok_or(Errno::EBADF)?
            .try_clone()
            .map_err(|e| errno(&e))?;
        let md = file.metadata().map_err(|e| errno(&e))?;
        let changes_data = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0;
        if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
            let grow = if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                len
            } else {
                (offset + len).saturating_sub(md.size())
            };
            inner.allocate(grow, false)?;
        }
        let d = inner.dirty(md.ino(), &file).map_err(|e| errno(&e))?;
        if changes_data {
            d.save(offset, offset + len).map_err(|e| errno(&e))?;
        }
        d.redo.push(Redo::Fallocate { mode, offset, len });
        fallocate(&file, mode, offset, len).map_err(|e| errno(&e))
    }

    fn do_opendir(&self, ino: u64) -> Result<u64, Errno> {
        let mut inner = self.0.lock();
        let node = inner.node(ino)?;
        let abs = inner.abs(&node.rel);
        let parent_ino = match node.rel.parent() {
            Some(p) if !p.as_os_str().is_empty() => fs::symlink_metadata(inner.abs(p))
                .ok()
                .and_then(|md| inner.by_bino.get(&md.ino()).copied())
                .unwrap_or(INodeNo::ROOT.0),
            _ => INodeNo::ROOT.0,
        };
        let mut entries = vec![
            (OsString::from("."), FileType::Directory, ino),
            (OsString::from(".."), FileType::Directory, parent_ino),
        ];
        for e in fs::read_dir(&abs).map_err(|e| errno(&e))?.flatten() {
            if ino == INodeNo::ROOT.0 && e.file_name() == TRASH {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            let child_ino = inner.by_bino.get(&md.ino()).copied().unwrap_or(md.ino());
            entries.push((e.file_name(), kind_of(md.file_type()), child_ino));
        }
        let fh = inner.next_fh;
        inner.next_fh += 1;
        inner.handles.insert(
            fh,
            Handle {
                file: None,
                append: false,
                entries,
            },
        );
        Ok(fh)
    }

    fn do_statfs(&self) -> Result<libc::statvfs, Errno> {
        let inner = self.0.lock();
        let c = cstr(&inner.root).map_err(|e| errno(&e))?;
        // SAFETY: statvfs fills a plain C struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::statvfs(c.as_ptr(), &mut st) }).map_err(|e| errno(&e))?;
        let bsize = st.f_frsize.max(1);
        if inner.faults.enospc {
            st.f_bfree = 0;
            st.f_bavail = 0;
        } else if let Some(left) = inner.faults.space {
            st.f_bfree = st.f_bfree.min(left / bsize);
            st.f_bavail = st.f_bavail.min(left / bsize);
        }
        Ok(st)
    }
}

impl Filesystem for Passthrough {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.0.pass();
        let mut inner = self.0.lock();
        let r = inner.child(parent.0, name).map_err(|_| Errno::ENOENT);
        match r.and_then(|rel| self.lookup_rel(&mut inner, rel)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.0.pass();
        let inner = self.0.lock();
        match inner.stat(ino.0, fh) {
            Ok(md) => reply.attr(&TTL, &inner.attr(ino.0, &md)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.0.pass();
        match self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.0.pass();
        match self.do_mkdir(parent.0, name, mode & !umask) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.pass();
        match self.do_remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.0.pass();
        match self.do_remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.0.pass();
        match self.do_rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.0.pass();
        match self.do_open(ino.0, flags.0) {
            Ok((fh, f)) => reply.opened(FileHandle(fh), f),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.0.pass();
        match self.do_create(parent.0, name, mode & !umask, flags) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.0.pass();
        let file = {
            let inner = self.0.lock();
            inner
                .handles
                .get(&fh.0)
                .and_then(|h| h.file.as_ref())
                .map(File::try_clone)
        };
        match file {
            Some(Ok(file)) => {
                let mut buf = vec![0u8; size as usize];
                match read_full_at(&file, &mut buf, offset) {
                    Ok(n) => reply.data(&buf[..n]),
                    Err(e) => reply.error(errno(&e)),
                }
            }
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.0.pass();
        match self.do_write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.0.pass();
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.0.sync(ino.0, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.0.pass();
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.0.pass();
        let inner = self.0.lock();
        let Some(h) = inner.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (name, kind, ino)) in h.entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.0.sync(ino.0, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.0.pass();
        match self.do_statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.0.pass();
        match self.0.lock().stat(ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.0.pass();
        match self.do_fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
