//! Directory entries made durable. Under POSIX a create, mkdir, rename or unlink is durable only
//! once the directory holding the name is fsynced; an fsync of the file itself does not make its
//! name durable (ext4 happens to be kinder, other filesystems and `raftline-faultfs` are not).

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// fsyncs a directory so that creates, renames and deletes in it are durable (ENOTDIR if `dir`
/// is not one).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)?
        .sync_all()
}

/// Creates `dir` and any missing ancestors durably, each one's parent fsynced after it is made,
/// then fsyncs the parent of `dir` and `dir` itself even if they already existed: a predecessor
/// that crashed between a create or rename and its directory fsync may have left names that are
/// visible but not durable, and whatever is opened next must not rely on them.
pub fn ensure_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => sync_dir(parent(d))?,
        }
    }
    if missing.is_empty() {
        sync_dir(parent(dir))?;
    }
    sync_dir(dir)
}

/// The directory holding `path` (`.` for a bare relative name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_missing_ancestors_and_accepts_an_existing_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("b");
        ensure_dir_durable(&dir).unwrap();
        assert!(dir.is_dir());
        ensure_dir_durable(&dir).unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            ensure_dir_durable(&file).is_err(),
            "a file is not a directory"
        );
    }
}
