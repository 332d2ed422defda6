//! raftline's segment path on the mount: O_DIRECT, 4 KiB-aligned writes linked to fdatasync
//! through io_uring, as log/src/backend/uring.rs submits them.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use io_uring::{opcode, squeue, types, IoUring};
use raftline_faultfs::MountOptions;

/// Submits write(bytes @ pos), linked to fdatasync when `sync`; the completions' results.
fn submit(ring: &mut IoUring, file: &File, bytes: &[u8], pos: u64, sync: bool) -> Vec<i32> {
    let fd = types::Fd(file.as_raw_fd());
    let mut write = opcode::Write::new(fd, bytes.as_ptr(), bytes.len() as u32)
        .offset(pos)
        .build()
        .user_data(1);
    if sync {
        write = write.flags(squeue::Flags::IO_LINK);
    }
    let fsync = opcode::Fsync::new(fd)
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(2);
    // SAFETY: `bytes` outlives the submission: we wait for every completion before returning.
    unsafe {
        let mut sq = ring.submission();
        sq.push(&write).unwrap();
        if sync {
            sq.push(&fsync).unwrap();
        }
    }
    let want = if sync { 2 } else { 1 };
    let mut results = vec![0; want];
    let mut done = 0;
    while done < want {
        ring.submit_and_wait(want - done).unwrap();
        for cqe in ring.completion() {
            results[cqe.user_data() as usize - 1] = cqe.result();
            done += 1;
        }
    }
    results
}

struct Aligned(Vec<u8>, usize);

impl Aligned {
    fn filled(byte: u8) -> Aligned {
        let mut v = vec![byte; 8192];
        let start = v.as_mut_ptr().align_offset(4096);
        Aligned(v, start)
    }
    fn page(&self) -> &[u8] {
        &self.0[self.1..self.1 + 4096]
    }
}

#[test]
fn io_uring_o_direct_write_linked_to_fdatasync_is_durable_an_unsynced_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let (backing, mnt) = (dir.path().join("b"), dir.path().join("m"));
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mnt).unwrap();
    let ffs = MountOptions::new()
        .binary(env!("CARGO_BIN_EXE_raftline-faultfs"))
        .mount(&backing, &mnt)
        .unwrap();
    let path = mnt.join("00000001.seg");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    File::open(&mnt).unwrap().sync_all().unwrap();
    let mut ring = IoUring::new(4).unwrap();
    let (a, b, c) = (
        Aligned::filled(0xaa),
        Aligned::filled(0xbb),
        Aligned::filled(0xcc),
    );
    assert_eq!(submit(&mut ring, &file, a.page(), 0, true), vec![4096, 0]);
    assert_eq!(submit(&mut ring, &file, b.page(), 4096, false), vec![4096]);
    // A failing fdatasync comes back as -EIO in its completion and makes nothing durable.
    ffs.fail_fsync(1).unwrap();
    assert_eq!(
        submit(&mut ring, &file, c.page(), 8192, true),
        vec![4096, -libc::EIO]
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), 3 * 4096);
    drop(file);
    let r = ffs.power_cut(None).unwrap();
    assert_eq!(r.pending, 2 * 4096);
    let back = fs::read(&path).unwrap();
    assert_eq!(
        back,
        a.page(),
        "only the write linked to a successful fdatasync survives"
    );
}
