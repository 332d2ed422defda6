//! Peers configured by name (`raftline-1.raftline-peers.prod.svc:7301`): a machine or pod that is
//! replaced keeps its name but gets a new address. A control-plane thread resolves the names
//! again every [`RESOLVE_INTERVAL`] and hands changed addresses to the raft thread, which dials
//! the new one from its next attempt (`Net::set_peer_addr`). Resolving (a blocking DNS lookup
//! that can take seconds) never runs on the raft thread.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use raftline_pinning::{Role, Waker};

/// How often peer names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// The names worth resolving again: those that are not already a socket address.
pub fn names_to_follow(names: &BTreeMap<u64, String>) -> BTreeMap<u64, String> {
    names
        .iter()
        .filter(|(_, name)| name.parse::<SocketAddr>().is_err())
        .map(|(&id, name)| (id, name.clone()))
        .collect()
}

/// Starts the resolver thread for `names` (peers known at `known`), if there is any name to
/// follow; returns the receiving end of the changes `(peer, new address)`. The thread ends when
/// the receiver is dropped (the node stopped).
pub fn follow(
    names: BTreeMap<u64, String>,
    mut known: BTreeMap<u64, SocketAddr>,
    waker: Waker,
) -> std::io::Result<Option<Receiver<(u64, SocketAddr)>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = crossbeam_channel::bounded(names.len());
    std::thread::Builder::new()
        .name(format!("{}-dns", Role::Control.thread_name()))
        .spawn(move || loop {
            std::thread::sleep(RESOLVE_INTERVAL);
            if !resolve_round(&names, &mut known, &tx, &waker) {
                return;
            }
        })?;
    Ok(Some(rx))
}

/// Resolves every name once and sends the addresses that changed; false once nobody listens.
fn resolve_round(
    names: &BTreeMap<u64, String>,
    known: &mut BTreeMap<u64, SocketAddr>,
    tx: &Sender<(u64, SocketAddr)>,
    waker: &Waker,
) -> bool {
    for (&id, name) in names {
        let resolved = match name.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => addr,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!(peer = id, name, error = %e, "peer name does not resolve now");
                continue;
            }
        };
        if known.get(&id) == Some(&resolved) {
            continue;
        }
        known.insert(id, resolved);
        if tx.send((id, resolved)).is_err() {
            return false;
        }
        waker.wake();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_are_followed_and_a_changed_address_is_sent_once() {
        let names = BTreeMap::from([
            (1, "127.0.0.1:7301".to_string()),
            (2, "localhost:7302".to_string()),
        ]);
        let followed = names_to_follow(&names);
        assert_eq!(followed.keys().collect::<Vec<_>>(), [&2]);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let waker = Waker::new().unwrap();
        // Known at another address: the round reports where the name points now, once.
        let mut known = BTreeMap::from([(2, "127.0.0.9:1".parse().unwrap())]);
        assert!(resolve_round(&followed, &mut known, &tx, &waker));
        let (id, addr) = rx.try_recv().unwrap();
        assert_eq!((id, addr.port()), (2, 7302));
        assert!(addr.ip().is_loopback());
        assert!(resolve_round(&followed, &mut known, &tx, &waker));
        assert!(
            rx.try_recv().is_err(),
            "an unchanged address is not sent again"
        );
        drop(rx);
        known.clear();
        assert!(!resolve_round(&followed, &mut known, &tx, &waker));
    }
}
