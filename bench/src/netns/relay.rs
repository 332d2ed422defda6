//! The delaying TCP relays of a [`super::Topology`]: one listener per ordered pair of nodes in
//! the hub namespace; each connection it accepts is joined to a new connection to the target,
//! and each direction is pumped by a reader thread (stamps every chunk with the time it is due:
//! read time + one-way delay, plus [`RETRANSMIT_DELAY`] when the chunk is "lost") and a writer
//! thread (writes each chunk once it is due, in order). A chunk is whatever one read returned
//! (at most [`CHUNK_BYTES`]).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How late a lost chunk arrives: Linux's minimum TCP retransmission timeout, what one lost
/// segment costs a connection that has nothing else in flight to trigger a fast retransmit.
pub const RETRANSMIT_DELAY: Duration = Duration::from_millis(200);
/// Largest chunk one read takes.
pub const CHUNK_BYTES: usize = 64 << 10;
/// How often an idle acceptor looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// One relayed link: connections to `listen` (on the hub) go on to `target`.
#[derive(Clone, Debug)]
pub struct Link {
    /// Where the relay listens (the hub's address).
    pub listen: SocketAddr,
    /// Where it forwards (a node's peer port).
    pub target: SocketAddr,
    /// Delay added in each direction.
    pub one_way: Duration,
    /// Probability that a chunk is delivered [`RETRANSMIT_DELAY`] late.
    pub loss: f64,
}

/// The running relays; stopped (every relayed connection shut down, every thread joined) on
/// drop.
pub struct Relays {
    stop: Arc<AtomicBool>,
    /// Every socket the relays hold, shut down at stop so blocked reads and writes return.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    /// One per link.
    acceptors: Vec<JoinHandle<()>>,
    /// Four per relayed connection (finished ones are joined at stop).
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relays {
    /// Binds every link's listener inside the namespace `hub` and starts accepting; `seed`
    /// seeds the loss draws (link k of the list draws from `seed + k`).
    pub fn start(hub: &File, links: Vec<Link>, seed: u64) -> anyhow::Result<Relays> {
        let mut relays = Relays {
            stop: Arc::new(AtomicBool::new(false)),
            sockets: Arc::new(Mutex::new(Vec::new())),
            acceptors: Vec::new(),
            pumps: Arc::new(Mutex::new(Vec::new())),
        };
        let listeners = {
            let _in_hub = super::enter(hub)?;
            links
                .iter()
                .map(|link| {
                    let listener = TcpListener::bind(link.listen)
                        .with_context(|| format!("binding the relay {}", link.listen))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        for (k, (link, listener)) in links.into_iter().zip(listeners).enumerate() {
            let rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(k as u64));
            let acceptor = Acceptor {
                link,
                listener,
                rng,
                stop: relays.stop.clone(),
                sockets: relays.sockets.clone(),
                pumps: relays.pumps.clone(),
                hub: hub.try_clone()?,
            };
            let handle = std::thread::Builder::new()
                .name("relay-accept".into())
                .spawn(move || acceptor.run())
                .context("starting a relay thread")?;
            relays.acceptors.push(handle);
        }
        Ok(relays)
    }

    /// Stops accepting, shuts every relayed connection down and joins every thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // First the acceptors (each notices the flag within ACCEPT_POLL): then no connection
        // is added while the others are torn down.
        for handle in self.acceptors.drain(..) {
            let _ = handle.join();
        }
        for socket in self.sockets.lock().expect("relay lock").drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        for handle in self.pumps.lock().expect("relay lock").drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One link's listener and what its connections need.
struct Acceptor {
    link: Link,
    listener: TcpListener,
    rng: ChaCha8Rng,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    pumps: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The hub namespace, for the outbound connections (made from this thread).
    hub: File,
}

impl Acceptor {
    fn run(mut self) {
        // Outbound connections start from the hub, where the bridge is.
        let _in_hub = match super::enter(&self.hub) {
            Ok(guard) => guard,
            Err(e) => {
                tracing::error!(error = %e, "relay cannot enter the hub namespace");
                return;
            }
        };
        while !self.stop.load(Ordering::SeqCst) {
            match self.listener.accept() {
                Ok((inbound, _)) => {
                    if let Err(e) = self.relay(inbound) {
                        tracing::debug!(error = %e, target = %self.link.target, "relay connection");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(ACCEPT_POLL);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay accept failed");
                    std::thread::sleep(ACCEPT_POLL);
                }
            }
        }
    }

    /// Joins `inbound` to a new connection to the target (a target that is down: `inbound` is
    /// closed at once, as a refused connection would be) and starts the four pump threads.
    fn relay(&mut self, inbound: TcpStream) -> anyhow::Result<()> {
        inbound.set_nonblocking(false)?;
        let outbound = TcpStream::connect_timeout(&self.link.target, Duration::from_secs(1))?;
        for s in [&inbound, &outbound] {
            s.set_nodelay(true)?;
        }
        {
            let mut sockets = self.sockets.lock().expect("relay lock");
            sockets.push(inbound.try_clone()?);
            sockets.push(outbound.try_clone()?);
        }
        let forward = (inbound.try_clone()?, outbound.try_clone()?);
        let backward = (outbound, inbound);
        let mut pumps = self.pumps.lock().expect("relay lock");
        for (from, to) in [forward, backward] {
            let (tx, rx) = crossbeam_channel::unbounded();
            let delay = Delay {
                one_way: self.link.one_way,
                loss: self.link.loss,
                rng: ChaCha8Rng::seed_from_u64(self.rng.gen()),
            };
            pumps.push(
                std::thread::Builder::new()
                    .name("relay-read".into())
                    .spawn(move || read_side(from, tx, delay))?,
            );
            pumps.push(
                std::thread::Builder::new()
                    .name("relay-write".into())
                    .spawn(move || write_side(rx, to))?,
            );
        }
        // Finished connections' threads are joined at stop; their sockets are closed then.
        Ok(())
    }
}

/// When the chunks of one direction are due.
struct Delay {
    one_way: Duration,
    loss: f64,
    rng: ChaCha8Rng,
}

/// Reads chunks and stamps each with the time it is due; `None` marks the end of the stream.
fn read_side(mut from: TcpStream, tx: Sender<Option<(Instant, Vec<u8>)>>, mut delay: Delay) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut last_due = Instant::now();
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut due = Instant::now() + delay.one_way;
                if delay.loss > 0.0 && delay.rng.gen_bool(delay.loss) {
                    due += RETRANSMIT_DELAY;
                }
                // In order: nothing overtakes a late chunk (TCP's head-of-line blocking).
                due = due.max(last_due);
                last_due = due;
                if tx.send(Some((due, buf[..n].to_vec()))).is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.send(None);
}

/// Writes each chunk once it is due; at the end of the stream half-closes `to`, on a write
/// error closes it both ways (the reading side then ends too).
fn write_side(rx: Receiver<Option<(Instant, Vec<u8>)>>, mut to: TcpStream) {
    while let Ok(Some((due, chunk))) = rx.recv() {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if to.write_all(&chunk).is_err() {
            let _ = to.shutdown(Shutdown::Both);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
