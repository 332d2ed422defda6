//! Mounting the filesystem and serving its control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use fuser::{Config, MountOption, Session, SessionACL};

use crate::fs::{Passthrough, Shared};

/// How the FUSE session is run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// FUSE worker threads (requests from several threads of a process are served concurrently).
    pub threads: usize,
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            threads: 4,
            allow_other: false,
        }
    }
}

/// The control socket's listener thread; stops when dropped.
pub struct Control {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves the line protocol on `socket`: one command per line, one reply line each
/// (`ok [DETAILS]` or `err MESSAGE`).
pub fn serve_control(shared: Arc<Shared>, socket: &Path) -> io::Result<Control> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    thread::Builder::new()
        .name("faultfs-ctl".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("faultfs-ctl-conn".into())
                    .spawn(move || {
                        let Ok(mut out) = conn.try_clone() else {
                            return;
                        };
                        for line in BufReader::new(conn).lines() {
                            let Ok(line) = line else { break };
                            if line.trim().is_empty() {
                                continue;
                            }
                            let reply = match shared.command(&line) {
                                Ok(s) if s.is_empty() => "ok".to_string(),
                                Ok(s) => format!("ok {s}"),
                                Err(e) => format!("err {}", e.replace('\n', " ")),
                            };
                            if writeln!(out, "{reply}").is_err() {
                                break;
                            }
                        }
                    });
            }
        })?;
    Ok(Control {
        path: socket.to_path_buf(),
        stop,
    })
}

fn config(opts: &ServeOptions) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName("raftline-faultfs".into()),
        MountOption::Subtype("raftline-faultfs".into()),
        MountOption::RW,
        MountOption::NoAtime,
    ];
    c.n_threads = Some(opts.threads.max(1));
    if opts.allow_other {
        c.acl = SessionACL::All;
    }
    c
}

/// Mounts `backing` at `mountpoint`; the session is live (the kernel's INIT answered) on return.
pub fn mount(
    backing: &Path,
    mountpoint: &Path,
    opts: &ServeOptions,
) -> io::Result<(Arc<Shared>, Session<Passthrough>)> {
    let shared = Arc::new(Shared::new(backing, mountpoint)?);
    let session = Session::new(Passthrough(shared.clone()), mountpoint, &config(opts))?;
    Ok((shared, session))
}
