//! Self-tests on a real FUSE mount: each fault does what a disk would do, and nothing else.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use raftline_faultfs::{FaultFs, MountOptions, SECTOR};

/// A mount over a fresh backing dir; the mount goes first on drop, then the temp dir.
struct Env {
    fs: FaultFs,
    _dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env::with(MountOptions::new().binary(env!("CARGO_BIN_EXE_raftline-faultfs")))
    }

    fn with(opts: MountOptions) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("backing");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let fs = opts
            .mount(&backing, &mnt)
            .expect("FUSE must be available here (root, /dev/fuse)");
        Env { fs, _dir: dir }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.fs.mountpoint().join(rel)
    }
}

fn write_file(path: &Path, data: &[u8], sync: bool) {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    if sync {
        f.sync_data().unwrap();
    }
}

fn append(path: &Path, data: &[u8]) -> File {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

fn os_err(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let buf = vec![0u8; len + 4096];
        let start = buf.as_ptr().align_offset(4096);
        Aligned { buf, start, len }
    }
    fn get(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[test]
fn o_direct_aligned_write_fdatasync_read_back_and_survive_a_cut() {
    let env = Env::new();
    let path = env.p("seg");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("O_DIRECT open on the mount");
    sync_dir(env.fs.mountpoint());
    let mut w = Aligned::new(8192);
    for (i, b) in w.get().iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    f.write_all_at(&w.get()[..4096], 0).unwrap();
    f.write_all_at(&w.get()[4096..], 4096).unwrap();
    f.sync_data().unwrap();
    let mut r = Aligned::new(8192);
    f.read_exact_at(r.get(), 0).unwrap();
    assert_eq!(r.get(), w.get());
    drop(f);
    env.fs.power_cut(None).unwrap();
    let back = fs::read(&path).unwrap();
    assert_eq!(
        &back[..],
        w.get(),
        "fdatasynced O_DIRECT data survives a cut"
    );
}

#[test]
fn synced_writes_survive_a_cut_unsynced_ones_do_not() {
    let env = Env::new();
    let path = env.p("log");
    write_file(&path, b"durable-part", true);
    sync_dir(env.fs.mountpoint());
    // Overwrite inside the synced image and append past it, no fsync.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"XXXX", 2).unwrap();
    f.write_all_at(b"-and-lost-tail", 12).unwrap();
    drop(f);
    assert_eq!(fs::read(&path).unwrap(), b"duXXXXe-part-and-lost-tail");
    let st = env.fs.stats().unwrap();
    assert_eq!((st.dirty_files, st.dirty_bytes), (1, 18));
    let r = env.fs.power_cut(None).unwrap();
    assert_eq!((r.files, r.pending, r.kept), (1, 18, 0));
    assert_eq!(fs::read(&path).unwrap(), b"durable-part");
    assert_eq!(fs::metadata(&path).unwrap().len(), 12);

    // A truncate is undone too.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(3).unwrap();
    drop(f);
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"durable-part");
    assert_eq!(env.fs.stats().unwrap().rollback_errors, 0);
}

#[test]
fn a_create_needs_its_directory_fsynced() {
    let env = Env::new();
    // Created, file and directory fsynced: kept.
    write_file(&env.p("kept"), b"data", true);
    fs::create_dir(env.p("sub")).unwrap();
    sync_dir(env.fs.mountpoint());
    // ...but a file created after the fsync is not, though its data was fsynced.
    write_file(&env.p("late"), b"data", true);
    // A file in a subdir whose own fsync happened while the subdir's creation was durable.
    write_file(&env.p("sub/inner"), b"x", true);
    sync_dir(&env.p("sub"));
    let r = env.fs.power_cut(None).unwrap();
    assert_eq!(r.undone, 1, "only the late create is undone ({r:?})");
    assert!(env.p("kept").exists());
    assert_eq!(fs::read(env.p("kept")).unwrap(), b"data");
    assert!(!env.p("late").exists(), "created after the dir fsync: gone");
    assert_eq!(fs::read(env.p("sub/inner")).unwrap(), b"x");
}

#[test]
fn creates_and_mkdirs_without_a_dir_fsync_are_gone() {
    let env = Env::new();
    write_file(&env.p("f"), b"data", true);
    fs::create_dir(env.p("d")).unwrap();
    // d/g is durable inside d, but d itself never was: the whole subtree goes.
    write_file(&env.p("d/g"), b"data", true);
    sync_dir(&env.p("d"));
    let st = env.fs.stats().unwrap();
    assert_eq!(st.pending_ns_ops, 2, "create f and mkdir d pending: {st:?}");
    env.fs.power_cut(None).unwrap();
    let names: Vec<_> = fs::read_dir(env.fs.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(names.is_empty(), "nothing survives: {names:?}");
    assert!(!env.p("f").exists());
    assert!(!env.p("d").exists());
    // The filesystem keeps serving: create again.
    write_file(&env.p("f"), b"again", true);
    assert_eq!(fs::read(env.p("f")).unwrap(), b"again");
}

#[test]
fn rename_without_a_dir_fsync_is_undone_with_one_it_is_kept() {
    let env = Env::new();
    let dir = env.fs.mountpoint().to_path_buf();
    write_file(&env.p("state"), b"old", true);
    write_file(&env.p("state.tmp"), b"new", true);
    sync_dir(&dir);
    fs::rename(env.p("state.tmp"), env.p("state")).unwrap();
    assert_eq!(fs::read(env.p("state")).unwrap(), b"new");
    assert!(!env.p("state.tmp").exists());
    env.fs.power_cut(None).unwrap();
    assert_eq!(
        fs::read(env.p("state")).unwrap(),
        b"old",
        "the replaced file is back"
    );
    assert_eq!(
        fs::read(env.p("state.tmp")).unwrap(),
        b"new",
        "the source name is back"
    );

    // The atomic-replacement pattern done right survives.
    fs::rename(env.p("state.tmp"), env.p("state")).unwrap();
    sync_dir(&dir);
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(env.p("state")).unwrap(), b"new");
    assert!(!env.p("state.tmp").exists());

    // A rename into another directory needs both fsynced.
    fs::create_dir(env.p("d")).unwrap();
    sync_dir(&dir);
    fs::rename(env.p("state"), env.p("d/state")).unwrap();
    sync_dir(&env.p("d"));
    env.fs.power_cut(None).unwrap();
    assert!(
        env.p("state").exists() && !env.p("d/state").exists(),
        "only the target dir was fsynced"
    );
    assert_eq!(env.fs.stats().unwrap().rollback_errors, 0);
}

#[test]
fn unlink_without_a_dir_fsync_comes_back() {
    let env = Env::new();
    let dir = env.fs.mountpoint().to_path_buf();
    write_file(&env.p("a"), b"keep me", true);
    write_file(&env.p("b"), b"delete me", true);
    fs::create_dir(env.p("e")).unwrap();
    sync_dir(&dir);
    fs::remove_file(env.p("a")).unwrap();
    fs::remove_dir(env.p("e")).unwrap();
    assert!(!env.p("a").exists());
    // The trash is not visible on the mount.
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["b"]);
    assert!(File::open(env.p(".faultfs-trash")).is_err());
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(env.p("a")).unwrap(), b"keep me");
    assert!(env.p("e").is_dir());

    fs::remove_file(env.p("b")).unwrap();
    sync_dir(&dir);
    env.fs.power_cut(None).unwrap();
    assert!(!env.p("b").exists(), "an unlink with its dir fsynced stays");
    assert!(env.p("a").exists());
}

#[test]
fn a_torn_cut_keeps_a_sector_granular_prefix_only() {
    let env = Env::new();
    let path = env.p("seg");
    let base: Vec<u8> = (0..4096u32).map(|i| (i % 7) as u8).collect();
    write_file(&path, &base, true);
    sync_dir(env.fs.mountpoint());
    // Eight unsynced appends of 3000 bytes: write boundaries are not sector boundaries.
    let tail: Vec<u8> = (0..24_000u32).map(|i| (i % 253) as u8 + 1).collect();
    let boundaries: Vec<u64> = (0..=8u64).map(|i| 4096 + 3000 * i).collect();
    let mut ends = Vec::new();
    for seed in 0..16u64 {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for chunk in tail.chunks(3000) {
            f.write_all_at(chunk, f.metadata().unwrap().len()).unwrap();
        }
        drop(f);
        let r = env.fs.power_cut(Some(seed)).unwrap();
        assert_eq!(r.seed, Some(seed));
        let got = fs::read(&path).unwrap();
        let end = got.len() as u64;
        assert_eq!(r.kept, end - 4096, "seed {seed}");
        assert!(
            (4096..=4096 + 24_000).contains(&end),
            "seed {seed}: size {end}"
        );
        assert!(
            end % SECTOR == 0 || boundaries.contains(&end),
            "seed {seed}: a torn write ends on a sector boundary, not at {end}"
        );
        assert_eq!(
            &got[..4096],
            &base[..],
            "seed {seed}: the synced part is intact"
        );
        assert_eq!(
            &got[4096..],
            &tail[..(end - 4096) as usize],
            "seed {seed}: a prefix, in order"
        );
        ends.push(end);
        // Make the next round start from the same durable image.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
    }
    assert!(
        ends.iter().any(|e| !boundaries.contains(e)),
        "some cut tears a write: {ends:?}"
    );
    let mut distinct = ends.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 3, "seeds give different cuts: {ends:?}");

    // The same seed tears the same way.
    let mut again = Vec::new();
    for _ in 0..2 {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for chunk in tail.chunks(3000) {
            f.write_all_at(chunk, f.metadata().unwrap().len()).unwrap();
        }
        drop(f);
        env.fs.power_cut(Some(5)).unwrap();
        again.push(fs::metadata(&path).unwrap().len());
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
    }
    assert_eq!(again, vec![ends[5], ends[5]]);
}

#[test]
fn flip_changes_exactly_one_bit_durably() {
    let env = Env::new();
    let path = env.p("data");
    let orig: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    write_file(&path, &orig, true);
    sync_dir(env.fs.mountpoint());
    env.fs.flip(Path::new("data"), 100, 3).unwrap();
    let got = fs::read(&path).unwrap();
    let diff: Vec<(usize, u8)> = got
        .iter()
        .zip(&orig)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a ^ b))
        .collect();
    assert_eq!(diff, vec![(100, 0x08)]);
    // Bit rot is durable, even under an unsynced overwrite of the same byte.
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8; 10], 95).unwrap();
    drop(f);
    env.fs.flip(&path, 500, 0).unwrap();
    env.fs.power_cut(None).unwrap();
    let got = fs::read(&path).unwrap();
    let diff: Vec<(usize, u8)> = got
        .iter()
        .zip(&orig)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (i, a ^ b))
        .collect();
    assert_eq!(diff, vec![(100, 0x08), (500, 0x01)]);
    assert_eq!(env.fs.stats().unwrap().flips, 2);
    assert!(
        env.fs.flip(Path::new("data"), 5000, 0).is_err(),
        "past the end"
    );
}

#[test]
fn fail_fsync_returns_eio_and_makes_nothing_durable() {
    let env = Env::new();
    let path = env.p("f");
    write_file(&path, b"base", true);
    sync_dir(env.fs.mountpoint());
    let f = append(&path, b"-more");
    env.fs.fail_fsync(2).unwrap();
    assert_eq!(os_err(&f.sync_data().unwrap_err()), libc::EIO);
    assert_eq!(
        os_err(
            &File::open(env.fs.mountpoint())
                .unwrap()
                .sync_all()
                .unwrap_err()
        ),
        libc::EIO
    );
    let st = env.fs.stats().unwrap();
    assert_eq!(
        (st.fsync_failed, st.fail_fsync_left, st.dirty_bytes),
        (2, 0, 5)
    );
    drop(f);
    env.fs.power_cut(None).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"base",
        "a failed fsync made nothing durable"
    );
    // The fault is used up: the next fsync works.
    let f = append(&path, b"-more");
    f.sync_data().unwrap();
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"base-more");
}

#[test]
fn enospc_refuses_growth_and_space_is_a_budget() {
    let env = Env::new();
    let path = env.p("f");
    write_file(&path, &[1u8; 4096], true);
    env.fs.enospc(true).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    assert_eq!(
        os_err(&f.write_all_at(b"x", 4096).unwrap_err()),
        libc::ENOSPC,
        "append"
    );
    f.write_all_at(b"in place", 0)
        .expect("an overwrite does not grow anything");
    assert_eq!(
        os_err(&File::create(env.p("new")).unwrap_err()),
        libc::ENOSPC,
        "create"
    );
    assert_eq!(
        os_err(&fs::create_dir(env.p("newdir")).unwrap_err()),
        libc::ENOSPC,
        "mkdir"
    );
    // SAFETY: fallocate on an open descriptor.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 1 << 20) };
    assert_eq!(
        (rc, io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOSPC)),
        "fallocate"
    );
    env.fs.enospc(false).unwrap();
    f.write_all_at(b"x", 4096).unwrap();

    env.fs.space(Some(10_000)).unwrap();
    f.write_all_at(&[2u8; 8192], 4097).unwrap();
    assert_eq!(
        os_err(&f.write_all_at(&[3u8; 4096], 4097 + 8192).unwrap_err()),
        libc::ENOSPC
    );
    assert_eq!(env.fs.stats().unwrap().space_left, Some(10_000 - 8192));
    env.fs.space(None).unwrap();
    f.write_all_at(&[3u8; 4096], 4097 + 8192).unwrap();
    assert_eq!(env.fs.stats().unwrap().enospc, 5);
}

#[test]
fn lie_fsync_says_ok_but_a_cut_loses_the_data() {
    let env = Env::new();
    let path = env.p("f");
    write_file(&path, b"base", true);
    sync_dir(env.fs.mountpoint());
    env.fs.lie_fsync(true).unwrap();
    let f = append(&path, b"-acknowledged");
    f.sync_data().expect("the lie: fsync reports success");
    drop(f);
    write_file(&env.p("g"), b"new file", true);
    sync_dir(env.fs.mountpoint());
    assert_eq!(env.fs.stats().unwrap().fsync_lied, 3);
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"base", "acknowledged but lost");
    assert!(!env.p("g").exists(), "its create was never durable either");
    env.fs.lie_fsync(false).unwrap();
    let f = append(&path, b"-real");
    f.sync_data().unwrap();
    env.fs.power_cut(None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"base-real");
}

#[test]
fn freeze_blocks_a_write_until_unfreeze() {
    let env = Env::new();
    let path = env.p("f");
    write_file(&path, b"", true);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    env.fs.freeze(true).unwrap();
    let (tx, rx) = mpsc::channel();
    let writer = std::thread::spawn(move || {
        let r = f.write_all_at(b"after the thaw", 0);
        tx.send(r.map_err(|e| e.to_string())).unwrap();
    });
    assert!(
        env.fs.wait_frozen(1, Duration::from_secs(20)).unwrap(),
        "the write reached the freeze"
    );
    assert_eq!(
        rx.try_recv(),
        Err(mpsc::TryRecvError::Empty),
        "still blocked while frozen"
    );
    assert_eq!(env.fs.stats().unwrap().frozen_now, 1);
    env.fs.freeze(false).unwrap();
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the write finishes after unfreeze");
    assert_eq!(r, Ok(()));
    writer.join().unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"after the thaw");
}

#[test]
fn delay_fsync_slows_each_fsync() {
    let env = Env::new();
    let f = File::create(env.p("f")).unwrap();
    env.fs.delay_fsync(Duration::from_millis(150)).unwrap();
    let t = Instant::now();
    f.sync_data().unwrap();
    f.sync_data().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    env.fs.delay_fsync(Duration::ZERO).unwrap();
    assert_eq!(env.fs.stats().unwrap().fsync_delayed, 2);
}

#[test]
fn concurrent_writers_and_fsyncs_from_many_threads() {
    let env = Env::new();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let path = env.p(&format!("t{t}"));
            std::thread::spawn(move || {
                let mut f = File::create(&path).unwrap();
                for i in 0..50u32 {
                    f.write_all(&[t as u8; 512]).unwrap();
                    if i % 5 == 4 {
                        f.sync_data().unwrap();
                    }
                }
                let mut back = Vec::new();
                File::open(&path).unwrap().read_to_end(&mut back).unwrap();
                assert_eq!(back.len(), 50 * 512);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    sync_dir(env.fs.mountpoint());
    env.fs.power_cut(None).unwrap();
    for t in 0..6 {
        assert_eq!(
            fs::metadata(env.p(&format!("t{t}"))).unwrap().len(),
            50 * 512
        );
    }
}

#[test]
fn in_process_mount_and_the_ctl_subcommand() {
    let env = Env::with(MountOptions::new().in_process());
    write_file(&env.p("f"), b"x", false);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftline-faultfs"))
        .arg("ctl")
        .arg(env.fs.socket())
        .args(["power-cut", "--torn", "42"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8(out.stdout).unwrap();
    assert!(reply.starts_with("ok seed=42 "), "{reply}");
    assert!(!env.p("f").exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raftline-faultfs"))
        .arg("ctl")
        .arg(env.fs.socket())
        .arg("no-such-command")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = env.fs.command("fail-fsync many").unwrap_err();
    assert!(
        matches!(err, raftline_faultfs::Error::Command { .. }),
        "{err}"
    );
    assert_eq!(env.fs.stats().unwrap().torn_cuts, 1);
}

#[test]
fn unmount_leaves_the_backing_dir_with_the_data() {
    let env = Env::new();
    write_file(&env.p("f"), b"data", true);
    let backing = env.fs.backing().to_path_buf();
    let Env { fs: mount, _dir } = env;
    mount.unmount().unwrap();
    assert_eq!(fs::read(backing.join("f")).unwrap(), b"data");
    assert_eq!(
        fs::read_dir(_dir.path().join("mnt")).unwrap().count(),
        0,
        "nothing mounted there now"
    );
}

#[test]
fn a_mount_left_by_a_killed_server_is_cleared_and_reused() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_raftline-faultfs"))
        .arg("mount")
        .arg(&backing)
        .arg(&mnt)
        .arg("--ctl")
        .arg(dir.path().join("ctl.sock"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child.kill().unwrap();
    child.wait().unwrap();
    let stale = fs::metadata(&mnt).unwrap_err();
    assert_eq!(
        os_err(&stale),
        libc::ENOTCONN,
        "the dead server's mount is still there"
    );
    let env = Env {
        fs: MountOptions::new()
            .binary(env!("CARGO_BIN_EXE_raftline-faultfs"))
            .mount(&backing, &mnt)
            .unwrap(),
        _dir: dir,
    };
    write_file(&env.p("f"), b"ok", true);
    assert_eq!(fs::read(env.p("f")).unwrap(), b"ok");
}
