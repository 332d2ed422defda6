//! Bad input gets a typed error naming the problem. The tests run as root, so unwritability is
//! made real with an immutable directory (root cannot create files in one) and io_uring is refused
//! with a real seccomp filter on the test's own thread.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftline_bench::fsync::{measure_fdatasync, resolve_io_path, BenchError, FsyncProbe, IoPath};
use raftline_bench::stop::StopSignal;

fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under the target dir")
}

fn probe() -> FsyncProbe {
    FsyncProbe {
        file_bytes_max: 1 << 20,
        ..FsyncProbe::new(4096, Duration::from_millis(10), IoPath::DirectUring)
    }
}

#[test]
fn missing_directory_is_reported_as_missing() {
    let dir = ext4_tempdir();
    let missing = dir.path().join("no-such-dir");
    let err = measure_fdatasync(&missing, &probe(), &StopSignal::default()).unwrap_err();
    assert!(
        matches!(&err, BenchError::DirMissing(p) if p == &missing),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn a_file_is_not_a_directory() {
    let dir = ext4_tempdir();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = measure_fdatasync(&file, &probe(), &StopSignal::default()).unwrap_err();
    assert!(matches!(err, BenchError::NotADirectory(_)), "{err}");
}

/// Sets FS_IMMUTABLE_FL on a directory and clears it again on drop (also when the test fails).
struct ImmutableDir(PathBuf);

const FS_IMMUTABLE_FL: libc::c_long = 0x10;

fn set_immutable(path: &Path, on: bool) {
    let dir = fs::File::open(path).unwrap();
    let mut flags: libc::c_long = 0;
    // SAFETY: plain ioctls on an fd we own, with a valid out/in pointer.
    assert_eq!(
        unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) },
        0
    );
    flags = if on {
        flags | FS_IMMUTABLE_FL
    } else {
        flags & !FS_IMMUTABLE_FL
    };
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    assert_eq!(
        rc,
        0,
        "FS_IOC_SETFLAGS: {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for ImmutableDir {
    fn drop(&mut self) {
        set_immutable(&self.0, false);
    }
}

#[test]
fn immutable_directory_is_not_writable_even_for_root() {
    let dir = ext4_tempdir();
    let locked = dir.path().join("locked");
    fs::create_dir(&locked).unwrap();
    set_immutable(&locked, true);
    let _guard = ImmutableDir(locked.clone());
    for path in [IoPath::Buffered, IoPath::DirectUring] {
        let p = FsyncProbe { path, ..probe() };
        let err = measure_fdatasync(&locked, &p, &StopSignal::default()).unwrap_err();
        assert!(
            matches!(&err, BenchError::DirNotWritable { dir, .. } if dir == &locked),
            "{err}"
        );
    }
}

#[test]
fn more_than_the_free_space_is_refused_before_writing() {
    let dir = ext4_tempdir();
    let p = FsyncProbe {
        file_bytes_max: u64::MAX / 4,
        ..probe()
    };
    let err = measure_fdatasync(dir.path(), &p, &StopSignal::default()).unwrap_err();
    assert!(matches!(err, BenchError::NoSpace { .. }), "{err}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was written"
    );
}

#[test]
fn unaligned_or_oversized_writes_are_invalid() {
    let dir = ext4_tempdir();
    for write_bytes in [0, 1000, 4097, 128 << 20] {
        let p = FsyncProbe {
            write_bytes,
            ..probe()
        };
        let err = measure_fdatasync(dir.path(), &p, &StopSignal::default()).unwrap_err();
        assert!(
            matches!(err, BenchError::InvalidProbe(_)),
            "{write_bytes}: {err}"
        );
    }
}

/// Installs, on the calling thread only, a seccomp filter making io_uring_setup fail with EPERM
/// (what Docker's default profile does).
fn refuse_io_uring_on_this_thread() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SYS_IO_URING_SETUP: u32 = 425;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: SYS_IO_URING_SETUP,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid, live filter program; without TSYNC it affects this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _
            ),
            0
        );
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn io_uring_refused_by_seccomp_falls_back_to_o_direct_pwrite() {
    let dir = ext4_tempdir();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        refuse_io_uring_on_this_thread();
        let err = measure_fdatasync(&path, &probe(), &StopSignal::default()).unwrap_err();
        assert!(matches!(&err, BenchError::UringUnavailable { source } if source.raw_os_error() == Some(libc::EPERM)), "{err}");
        let (resolved, refusals) = resolve_io_path(&path, IoPath::DirectUring).unwrap();
        assert_eq!(resolved, IoPath::DirectPwrite);
        assert!(matches!(refusals.as_slice(), [BenchError::UringUnavailable { .. }]), "{refusals:?}");
        let m = measure_fdatasync(&path, &FsyncProbe { path: resolved, ..probe() }, &StopSignal::default()).unwrap();
        assert!(m.commits > 0);
    })
    .join()
    .expect("the filtered thread's assertions hold");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn forced_buffered_path_needs_no_o_direct() {
    let dir = ext4_tempdir();
    let (resolved, refusals) = resolve_io_path(dir.path(), IoPath::Buffered).unwrap();
    assert_eq!(resolved, IoPath::Buffered);
    assert!(refusals.is_empty());
}
