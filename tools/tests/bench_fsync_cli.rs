//! `raftline bench fsync` as an operator runs it: errors, exit status, Ctrl-C clean-up.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn raftline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftline"))
}

fn ext4_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn missing_dir_is_a_clear_error() {
    let dir = ext4_tempdir();
    let missing = dir.path().join("absent");
    let out = raftline()
        .args(["bench", "fsync", "--dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("absent"),
        "{stderr}"
    );
    assert!(!missing.exists(), "an explicit --dir is never created");
}

#[test]
fn default_data_dir_is_created_and_removed_again() {
    let cwd = ext4_tempdir();
    let out = raftline()
        .args(["bench", "fsync", "--duration", "0.02", "--size", "8"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("data"));
    assert_eq!(
        fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "./data created for the run and removed"
    );
}

#[test]
fn bad_duration_is_refused() {
    let dir = ext4_tempdir();
    let out = raftline()
        .args(["bench", "fsync", "--duration", "0", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--duration"));
}

#[test]
fn json_run_reports_a_profile_and_leaves_the_dir_empty() {
    let dir = ext4_tempdir();
    let out = raftline()
        .args([
            "bench",
            "fsync",
            "--json",
            "--duration",
            "0.02",
            "--size",
            "8",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(2),
        "fit or unfit, not an error: {out:?}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["curve"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["verdict"]["fit"].as_bool(), Some(code == Some(0)));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

fn wait_for_scratch_file(dir: &Path) {
    // Awaits the event (a scratch file appears); the deadline only turns a hang into a failure.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fs::read_dir(dir).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "no scratch file appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn ctrl_c_removes_scratch_files_and_exits_130() {
    let dir = ext4_tempdir();
    let child = raftline()
        .args([
            "bench",
            "fsync",
            "--duration",
            "60",
            "--size",
            "64",
            "--dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_scratch_file(dir.path());
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signals the child we spawned, by its pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch files removed"
    );
}

#[test]
fn help_explains_the_steps_and_the_exit_status() {
    let out = raftline()
        .args(["bench", "fsync", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("group-commit curve") && help.contains("etcd rule"),
        "{help}"
    );
    assert!(
        help.contains("Exit status: 0 fit, 2 unfit, 1 error, 130 interrupted"),
        "{help}"
    );
}
