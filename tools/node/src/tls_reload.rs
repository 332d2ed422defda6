//! Peer certificates that reload without a restart: a control-plane thread looks at the peer
//! port's three PEM files every [`RELOAD_INTERVAL`] (their modification times and sizes: no
//! reading while nothing changed) and, when one changed, loads all three and hands the new
//! configuration to the raft thread, whose new connections use it (`Net::set_peer_tls`;
//! established ones keep theirs). Files that do not load (half written, a key that does not fit
//! the certificate) keep the old configuration, with a warning, and are tried again once they
//! change. No file is read on the raft thread.

use std::time::Duration;

use crossbeam_channel::Receiver;
use raftline_netio::net::{FilesStamp, PeerTls, PeerTlsFiles};
use raftline_pinning::{Role, Waker};

/// How often the files are looked at.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Starts the thread watching `files`, last loaded as `loaded` stamped them (the stamp taken
/// before that load); returns the receiving end of the configurations it reloads. The thread
/// ends when the receiver is dropped (the node stopped).
pub fn watch(
    files: PeerTlsFiles,
    mut loaded: FilesStamp,
    waker: Waker,
) -> std::io::Result<Receiver<PeerTls>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name(format!("{}-tls", Role::Control.thread_name()))
        .spawn(move || loop {
            std::thread::sleep(RELOAD_INTERVAL);
            let now = files.stamp();
            if now == loaded {
                continue;
            }
            // The stamp is taken before the load: a file written meanwhile changes it again.
            loaded = now;
            match files.load() {
                Ok(tls) => {
                    if tx.send(tls).is_err() {
                        return;
                    }
                    waker.wake();
                    tracing::info!(cert = %files.cert.display(), "peer TLS certificates reloaded");
                }
                Err(e) => tracing::warn!(
                    "peer TLS files changed but do not load ({e}); the previous certificates \
                     stay in use"
                ),
            }
        })?;
    Ok(rx)
}
