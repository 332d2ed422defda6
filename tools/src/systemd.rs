//! systemd's readiness protocol (`Type=notify`): when `NOTIFY_SOCKET` is set, `raftline server`
//! sends `READY=1` once the node has joined its cluster (knows a leader) and `STOPPING=1` when it
//! starts draining, so `systemctl start` returns when the node can serve and dependent units
//! start after it. A datagram on a Unix socket; nothing happens without the variable.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The service manager's notification socket, if the process runs under one.
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace); `None` when unset.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())
            }
            None => SocketAddr::from_pathname(&path),
        };
        let made = addr.and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match made {
            Ok((socket, addr)) => Some(Notifier { socket, addr }),
            Err(e) => {
                tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET unusable; no readiness notification");
                None
            }
        }
    }

    /// Sends `state` (newline-separated `KEY=value` assignments, e.g. `READY=1`).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            tracing::warn!(error = %e, "notifying the service manager failed");
        }
    }
}
