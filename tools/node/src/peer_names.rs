//! Peers known by name (`raftline-1.raftline-peers.prod.svc:7301`), from `--peers` or added at
//! run time (`raftline member add --peer-addr NAME:PORT`, a node joining with
//! `--advertise-peer-addr NAME:PORT`): the configuration stores the name as given, and a
//! machine or pod that is replaced keeps its name but gets a new address.
//!
//! The resolver thread looks up the names the configuration holds as soon as they appear in it,
//! again every [`RESOLVE_INTERVAL`] and whenever a named peer's connection went down, and hands
//! new or changed addresses to the raft thread, which dials them (`Net::add_peer`, which also
//! admits the peer's own connections). Resolving (a blocking lookup that can take seconds) never
//! runs on the raft thread.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use raftline_pinning::{Role, Waker};

/// How often peer names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);

/// Addresses resolved and not yet taken by the raft thread, at most (the resolver waits beyond).
const MOVES_QUEUED_MAX: usize = 64;

/// Resolves `address` now (blocking): its first address.
pub fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} resolves to no address"),
        )
    })
}

/// What the resolver follows, set by the raft thread.
#[derive(Default)]
struct Wanted {
    /// Peer id → `host:port`.
    names: BTreeMap<u64, String>,
    /// Peers whose name is new since the resolver last looked: their address is handed over
    /// even if it is the one known (the raft thread forgot the peer meanwhile).
    fresh: BTreeSet<u64>,
}

/// The raft thread's end of the resolver thread.
pub struct PeerNames {
    wanted: Arc<Mutex<Wanted>>,
    /// Tells the resolver to look the names up now (one poke pending is as good as many).
    poke: Sender<()>,
    /// Addresses that are new or changed: `(peer, address)`.
    resolved: Receiver<(u64, SocketAddr)>,
    /// The names last handed to the resolver.
    following: BTreeMap<u64, String>,
}

impl PeerNames {
    /// Starts the resolver thread; `known` holds the addresses the node dials already (the
    /// `--peers` resolved at start), which are not handed over again unless they change. The
    /// thread ends once this is dropped (the node stopped).
    pub fn start(known: BTreeMap<u64, SocketAddr>, waker: Waker) -> std::io::Result<PeerNames> {
        let wanted = Arc::new(Mutex::new(Wanted::default()));
        let (poke, poked) = crossbeam_channel::bounded(1);
        let (tx, resolved) = crossbeam_channel::bounded(MOVES_QUEUED_MAX);
        let shared = Arc::clone(&wanted);
        std::thread::Builder::new()
            .name(format!("{}-dns", Role::Control.thread_name()))
            .spawn(move || resolver(shared, poked, known, tx, waker))?;
        Ok(PeerNames {
            wanted,
            poke,
            resolved,
            following: BTreeMap::new(),
        })
    }

    /// Follows exactly `names` from now on (the configuration's members known by name); new
    /// ones are looked up at once.
    pub fn follow(&mut self, names: BTreeMap<u64, String>) {
        if names == self.following {
            return;
        }
        {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            let new = names
                .iter()
                .filter(|&(id, name)| self.following.get(id) != Some(name))
                .map(|(&id, _)| id);
            wanted.fresh.extend(new);
            wanted.names = names.clone();
        }
        self.following = names;
        self.refresh();
    }

    /// Asks for the names to be looked up now (a named peer's connection went down: it may have
    /// moved).
    pub fn refresh(&self) {
        // Full: a poke is pending already.
        let _ = self.poke.try_send(());
    }

    /// Whether `peer` is followed by name.
    pub fn follows(&self, peer: u64) -> bool {
        self.following.contains_key(&peer)
    }

    /// The addresses resolved since the last call that are new or changed.
    pub fn resolved(&self) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
        self.resolved.try_iter()
    }
}

/// The resolver thread: a round of lookups when poked, and every [`RESOLVE_INTERVAL`] while it
/// has names to follow.
fn resolver(
    wanted: Arc<Mutex<Wanted>>,
    poked: Receiver<()>,
    mut known: BTreeMap<u64, SocketAddr>,
    tx: Sender<(u64, SocketAddr)>,
    waker: Waker,
) {
    let mut names = BTreeMap::new();
    loop {
        let woke = match names.is_empty() {
            true => poked.recv().map_err(|_| RecvTimeoutError::Disconnected),
            false => poked.recv_timeout(RESOLVE_INTERVAL),
        };
        if woke == Err(RecvTimeoutError::Disconnected) {
            return;
        }
        let fresh = {
            let mut wanted = wanted.lock().unwrap_or_else(|e| e.into_inner());
            names = wanted.names.clone();
            std::mem::take(&mut wanted.fresh)
        };
        known.retain(|id, _| names.contains_key(id) && !fresh.contains(id));
        if !resolve_round(&names, &mut known, &tx, &waker) {
            return;
        }
    }
}

/// Resolves every name once and sends the addresses that are new or changed; false once nobody
/// listens.
fn resolve_round(
    names: &BTreeMap<u64, String>,
    known: &mut BTreeMap<u64, SocketAddr>,
    tx: &Sender<(u64, SocketAddr)>,
    waker: &Waker,
) -> bool {
    for (&id, name) in names {
        let resolved = match resolve(name) {
            Ok(addr) => addr,
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
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_changed_address_is_sent_once() {
        let names = BTreeMap::from([(2, "localhost:7302".to_string())]);
        let (tx, rx) = crossbeam_channel::bounded(4);
        let waker = Waker::new().unwrap();
        // Known at another address: the round reports where the name points now, once.
        let mut known = BTreeMap::from([(2, "127.0.0.9:1".parse().unwrap())]);
        assert!(resolve_round(&names, &mut known, &tx, &waker));
        let (id, addr) = rx.try_recv().unwrap();
        assert_eq!((id, addr.port()), (2, 7302));
        assert!(addr.ip().is_loopback());
        assert!(resolve_round(&names, &mut known, &tx, &waker));
        assert!(
            rx.try_recv().is_err(),
            "an unchanged address is not sent again"
        );
        drop(rx);
        known.clear();
        assert!(!resolve_round(&names, &mut known, &tx, &waker));
    }

    /// Waits (bounded) for the resolver to hand over an address.
    fn next_resolved(names: &PeerNames) -> (u64, SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(moved) = names.resolved().next() {
                return moved;
            }
            assert!(Instant::now() < deadline, "nothing resolved");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_name_that_joins_the_configuration_is_resolved_at_once_and_again_after_it_left() {
        let known = BTreeMap::from([(1, "127.0.0.1:7301".parse().unwrap())]);
        let mut names = PeerNames::start(known, Waker::new().unwrap()).unwrap();
        names.follow(BTreeMap::from([(3, "localhost:7303".to_string())]));
        assert!(names.follows(3) && !names.follows(1));
        // Within a lookup, not a resolve interval.
        let started = Instant::now();
        let (id, addr) = next_resolved(&names);
        assert_eq!((id, addr.port()), (3, 7303));
        assert!(started.elapsed() < RESOLVE_INTERVAL);
        // Removed, then added again: its address is handed over again.
        names.follow(BTreeMap::new());
        names.follow(BTreeMap::from([(3, "localhost:7303".to_string())]));
        assert_eq!(next_resolved(&names).0, 3);
    }
}
