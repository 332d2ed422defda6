//! raftline-faultfs: a FUSE passthrough filesystem that lies the way disks do, for tests.
//!
//! It mirrors a backing directory and remembers everything not yet made durable (file data since
//! the file's last fsync, names since their directory's last fsync), so that a **power cut**
//! command can roll it all back, optionally keeping a torn, sector-granular prefix of the
//! unsynced writes. Other faults: bit flips, failing / lying / slow fsyncs, ENOSPC, freezes.
//! See README.md.
//!
//! Tests use [`FaultFs`]: mount, run the code under test on the mount, kill it, cut the power,
//! restart it on the same mount, check what it recovered.

pub mod fs;
mod model;
pub mod server;

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

pub use fs::CutReport;
pub use model::SECTOR;

/// Errors of the test API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// FUSE cannot be used on this machine (no /dev/fuse, no permission, no fusermount3).
    #[error("FUSE is unavailable: {why}")]
    Unavailable { why: String },
    /// The mount itself failed.
    #[error("mounting {mountpoint} failed: {why}")]
    Mount { mountpoint: PathBuf, why: String },
    /// Talking to the control socket failed.
    #[error("control socket {socket}: {source}")]
    Control {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The filesystem refused a command.
    #[error("command {command:?} failed: {message}")]
    Command { command: String, message: String },
    /// A reply that does not parse.
    #[error("unexpected reply to {command:?}: {reply:?}")]
    Protocol { command: String, reply: String },
    /// Unmounting failed.
    #[error("unmounting {mountpoint}: {source}")]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Counts of the faults injected so far, and what is not durable right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub power_cuts: u64,
    pub torn_cuts: u64,
    pub flips: u64,
    /// fsync/fdatasync/fsyncdir calls that reached the filesystem.
    pub fsyncs: u64,
    /// Of those, failed with EIO by `fail-fsync`.
    pub fsync_failed: u64,
    /// Of those, reported success without making anything durable (`lie-fsync`).
    pub fsync_lied: u64,
    /// Of those, delayed by `delay-fsync`.
    pub fsync_delayed: u64,
    /// Operations refused with ENOSPC.
    pub enospc: u64,
    /// Operations that had to wait for an unfreeze.
    pub frozen_waits: u64,
    /// Operations blocked by a freeze right now.
    pub frozen_now: u64,
    /// Errors while rolling back at a power cut (should stay 0).
    pub rollback_errors: u64,
    /// Files with data written since their last fsync.
    pub dirty_files: u64,
    /// Bytes written since the files' last fsync (what a power cut would drop).
    pub dirty_bytes: u64,
    /// Creates/renames/unlinks/mkdirs/rmdirs whose directory was not fsynced since.
    pub pending_ns_ops: u64,
    /// fsyncs still to fail.
    pub fail_fsync_left: u64,
    /// The space budget left, if one is set.
    pub space_left: Option<u64>,
}

macro_rules! stats_fields {
    ($m:ident) => {
        $m!(
            power_cuts,
            torn_cuts,
            flips,
            fsyncs,
            fsync_failed,
            fsync_lied,
            fsync_delayed,
            enospc,
            frozen_waits,
            frozen_now,
            rollback_errors,
            dirty_files,
            dirty_bytes,
            pending_ns_ops,
            fail_fsync_left
        )
    };
}

impl Stats {
    /// `key=value` pairs separated by spaces.
    pub fn to_line(&self) -> String {
        let mut out = Vec::new();
        macro_rules! put {
            ($($f:ident),*) => { $( out.push(format!("{}={}", stringify!($f), self.$f)); )* };
        }
        stats_fields!(put);
        out.push(format!(
            "space_left={}",
            self.space_left
                .map_or("none".to_string(), |v| v.to_string())
        ));
        out.join(" ")
    }

    /// Parses [`Stats::to_line`]'s output; unknown keys are ignored.
    pub fn parse(line: &str) -> Option<Stats> {
        let mut s = Stats::default();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            macro_rules! get {
                ($($f:ident),*) => {
                    match k {
                        $( stringify!($f) => s.$f = v.parse().ok()?, )*
                        "space_left" => s.space_left = v.parse().ok(),
                        _ => {}
                    }
                };
            }
            stats_fields!(get);
        }
        Some(s)
    }
}

/// Sends one command line to a control socket and returns the reply's details (after `ok`).
pub fn control(socket: &Path, command: &str) -> Result<String> {
    control_timeout(socket, command, Duration::from_secs(120))
}

fn control_timeout(socket: &Path, command: &str, timeout: Duration) -> Result<String> {
    let ctl = |source| Error::Control {
        socket: socket.to_path_buf(),
        source,
    };
    let mut conn = UnixStream::connect(socket).map_err(ctl)?;
    conn.set_read_timeout(Some(timeout)).map_err(ctl)?;
    writeln!(conn, "{}", command.trim()).map_err(ctl)?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).map_err(ctl)?;
    let line = line.trim_end();
    if line == "ok" {
        Ok(String::new())
    } else if let Some(rest) = line.strip_prefix("ok ") {
        Ok(rest.to_string())
    } else if let Some(msg) = line.strip_prefix("err ") {
        Err(Error::Command {
            command: command.to_string(),
            message: msg.to_string(),
        })
    } else {
        Err(Error::Protocol {
            command: command.to_string(),
            reply: line.to_string(),
        })
    }
}

/// Whether FUSE can be mounted here at all.
pub fn check_available() -> Result<()> {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/fuse") {
        return Err(Error::Unavailable {
            why: format!("cannot open /dev/fuse: {e}"),
        });
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && which("fusermount3").is_none() && which("fusermount").is_none() {
        return Err(Error::Unavailable {
            why: "not root and no fusermount3 in PATH (Debian: apt-get install fuse3)".into(),
        });
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// How to mount. The default runs the FUSE session in the `raftline-faultfs` binary named by
/// `RAFTLINE_FAULTFS_BIN` when that is set, else in a background thread of this process.
#[derive(Debug, Clone)]
pub struct MountOptions {
    binary: Option<PathBuf>,
    threads: usize,
    socket: Option<PathBuf>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            binary: std::env::var_os("RAFTLINE_FAULTFS_BIN").map(PathBuf::from),
            threads: 4,
            socket: None,
        }
    }
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

impl MountOptions {
    pub fn new() -> MountOptions {
        MountOptions::default()
    }

    /// Serve from a child process running this `raftline-faultfs` binary (a test's panic or
    /// abort then cannot leave the kernel waiting on a dead thread of the test). In this crate's
    /// own tests: `env!("CARGO_BIN_EXE_raftline-faultfs")`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> MountOptions {
        self.binary = Some(path.into());
        self
    }

    /// Serve from a background thread of this process.
    pub fn in_process(mut self) -> MountOptions {
        self.binary = None;
        self
    }

    /// FUSE worker threads (default 4).
    pub fn threads(mut self, n: usize) -> MountOptions {
        self.threads = n.max(1);
        self
    }

    /// Where the control socket goes (default: a fresh path in the temp dir).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> MountOptions {
        self.socket = Some(path.into());
        self
    }

    /// Mounts `backing` at `mountpoint` (both existing directories).
    pub fn mount(self, backing: &Path, mountpoint: &Path) -> Result<FaultFs> {
        check_available()?;
        let mount_err = |why: String| Error::Mount {
            mountpoint: mountpoint.to_path_buf(),
            why,
        };
        if let Err(e) = std::fs::metadata(mountpoint) {
            // A mount left behind by a server that died: clear it and use the directory.
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                let _ = unmount(mountpoint);
            }
        }
        let mountpoint = std::fs::canonicalize(mountpoint).map_err(|e| mount_err(e.to_string()))?;
        let backing = std::fs::canonicalize(backing).map_err(|e| mount_err(e.to_string()))?;
        let socket = self.socket.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "raftline-faultfs-{}-{}.sock",
                std::process::id(),
                SOCKETS.fetch_add(1, Ordering::SeqCst)
            ))
        });
        let server = match &self.binary {
            Some(bin) => spawn_child(bin, &backing, &mountpoint, &socket, self.threads)?,
            None => {
                let opts = server::ServeOptions {
                    threads: self.threads,
                    ..Default::default()
                };
                let (shared, session) = server::mount(&backing, &mountpoint, &opts)
                    .map_err(|e| classify(&mountpoint, e.to_string()))?;
                let control = server::serve_control(shared.clone(), &socket)
                    .map_err(|e| mount_err(format!("control socket: {e}")))?;
                let session = session.spawn().map_err(|e| mount_err(e.to_string()))?;
                Server::Thread {
                    shared,
                    control: Some(control),
                    session: Some(session),
                }
            }
        };
        let fs = FaultFs {
            mountpoint,
            backing,
            socket,
            server,
        };
        fs.command("ping")?;
        Ok(fs)
    }
}

fn classify(mountpoint: &Path, why: String) -> Error {
    let unavailable = [
        "Operation not permitted",
        "Permission denied",
        "No such device",
    ];
    if unavailable.iter().any(|s| why.contains(s)) {
        Error::Unavailable { why }
    } else {
        Error::Mount {
            mountpoint: mountpoint.to_path_buf(),
            why,
        }
    }
}

fn spawn_child(
    bin: &Path,
    backing: &Path,
    mountpoint: &Path,
    socket: &Path,
    threads: usize,
) -> Result<Server> {
    let mount_err = |why: String| Error::Mount {
        mountpoint: mountpoint.to_path_buf(),
        why,
    };
    let mut child = Command::new(bin)
        .arg("mount")
        .arg(backing)
        .arg(mountpoint)
        .arg("--ctl")
        .arg(socket)
        .arg("--threads")
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| mount_err(format!("starting {}: {e}", bin.display())))?;
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("piped");
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            eprint!("{text}");
            log2.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&text);
        }
    });
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    if !matches!(&ready, Ok(l) if l.trim() == "ready") {
        let _ = child.kill();
        let _ = child.wait();
        let why = log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trim()
            .to_string();
        let why = if why.is_empty() {
            format!("no ready line: {ready:?}")
        } else {
            why
        };
        return Err(classify(mountpoint, why));
    }
    Ok(Server::Child(child))
}

enum Server {
    Child(Child),
    Thread {
        shared: Arc<fs::Shared>,
        control: Option<server::Control>,
        session: Option<fuser::BackgroundSession>,
    },
}

/// A mounted fault-injecting filesystem. Unmounted (and its server stopped) on drop.
pub struct FaultFs {
    mountpoint: PathBuf,
    backing: PathBuf,
    socket: PathBuf,
    server: Server,
}

impl FaultFs {
    /// Mounts `backing` at `mountpoint` with the default [`MountOptions`].
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<FaultFs> {
        MountOptions::default().mount(backing, mountpoint)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The control socket, for `raftline-faultfs ctl SOCKET ...`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a raw command line; returns the reply's details.
    pub fn command(&self, line: &str) -> Result<String> {
        control(&self.socket, line)
    }

    /// Rolls every change not yet durable back to the durable image. The processes using the
    /// mount must be dead already. `torn: Some(seed)` keeps a random (seeded), sector-granular
    /// prefix of each file's unsynced writes, as a torn write would.
    pub fn power_cut(&self, torn: Option<u64>) -> Result<CutReport> {
        let cmd = match torn {
            Some(seed) => format!("power-cut torn {seed}"),
            None => "power-cut".to_string(),
        };
        let reply = self.command(&cmd)?;
        let bad = || Error::Protocol {
            command: cmd.clone(),
            reply: reply.clone(),
        };
        let mut r = CutReport::default();
        for kv in reply.split_whitespace() {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            let n = || v.parse::<u64>().map_err(|_| bad());
            match k {
                "seed" => r.seed = v.parse().ok(),
                "files" => r.files = n()?,
                "undone" => r.undone = n()?,
                "kept" => r.kept = n()?,
                "pending" => r.pending = n()?,
                _ => {}
            }
        }
        Ok(r)
    }

    /// Flips bit `bit` (0 = least significant) of the byte at `offset` of `path` (relative to
    /// the mount root, or absolute under the mountpoint), durably.
    pub fn flip(&self, path: &Path, offset: u64, bit: u8) -> Result<()> {
        let p = path.strip_prefix(&self.mountpoint).unwrap_or(path);
        let p = String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned();
        self.command(&format!("flip {p} {offset} {bit}")).map(drop)
    }

    /// The next `n` fsync/fdatasync/fsyncdir calls fail with EIO and make nothing durable.
    pub fn fail_fsync(&self, n: u64) -> Result<()> {
        self.command(&format!("fail-fsync {n}")).map(drop)
    }

    /// While on, writes that grow a file, creates, mkdirs and growing fallocates get ENOSPC.
    pub fn enospc(&self, on: bool) -> Result<()> {
        self.command(&format!("enospc {}", on_off(on))).map(drop)
    }

    /// A budget of bytes the files may still grow by (`None`: no budget).
    pub fn space(&self, bytes: Option<u64>) -> Result<()> {
        let v = bytes.map_or("off".to_string(), |b| b.to_string());
        self.command(&format!("space {v}")).map(drop)
    }

    /// Each fsync first waits this long (zero: no delay).
    pub fn delay_fsync(&self, delay: Duration) -> Result<()> {
        self.command(&format!("delay-fsync {}", delay.as_millis()))
            .map(drop)
    }

    /// While frozen, every operation on the mount blocks until unfrozen.
    pub fn freeze(&self, on: bool) -> Result<()> {
        self.command(&format!("freeze {}", on_off(on))).map(drop)
    }

    /// Waits until at least `n` operations are blocked by a freeze; false on timeout.
    pub fn wait_frozen(&self, n: usize, timeout: Duration) -> Result<bool> {
        let cmd = format!("wait-frozen {n} {}", timeout.as_millis());
        match control_timeout(&self.socket, &cmd, timeout + Duration::from_secs(30)) {
            Ok(_) => Ok(true),
            Err(Error::Command { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// While on, fsync reports success and makes nothing durable.
    pub fn lie_fsync(&self, on: bool) -> Result<()> {
        self.command(&format!("lie-fsync {}", on_off(on))).map(drop)
    }

    pub fn stats(&self) -> Result<Stats> {
        let reply = self.command("stats")?;
        Stats::parse(&reply).ok_or(Error::Protocol {
            command: "stats".into(),
            reply,
        })
    }

    /// Unmounts and stops the server.
    pub fn unmount(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        match &mut self.server {
            Server::Child(child) => {
                // Killing the server first aborts any request still waiting on it.
                let _ = child.kill();
                let _ = child.wait();
            }
            Server::Thread {
                shared, control, ..
            } => {
                shared.shutdown();
                control.take();
            }
        }
        let r = unmount(&self.mountpoint);
        if let Server::Thread { session, .. } = &mut self.server {
            // Its own unmount finds nothing left to do; the thread ends with the connection.
            session.take();
        }
        let _ = std::fs::remove_file(&self.socket);
        r.map_err(|source| Error::Unmount {
            mountpoint: self.mountpoint.clone(),
            source,
        })
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("raftline-faultfs: {e}");
        }
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Lazily unmounts `mountpoint` (umount2 MNT_DETACH as root, else `fusermount3 -u -z`);
/// not mounted is not an error.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
        }
    }
}
