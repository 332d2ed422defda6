//! A producer thread for fault tests: appends tagged batches without pause to whichever node
//! takes them and records every acknowledgement in a [`Ledger`] for [`super::acks::check`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::acks::Ledger;
use super::{append_window_within, tagged_batch, Outcome, DEADLINE};

/// Records per appended batch.
pub const RECORDS: u64 = 10;
/// Appends in one round of the producer (pipelined, up to `WINDOW` in flight).
const CHUNK: usize = 8;
const WINDOW: usize = 4;

/// A producer thread appending tagged batches (fresh tags only, never a resend) to whichever
/// node accepts them, recording every acknowledgement.
pub struct Producer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
    thread: JoinHandle<()>,
}

impl Producer {
    /// Starts producing to `clients`, waiting up to [`DEADLINE`] for a node's answer.
    pub fn start(clients: Vec<SocketAddr>) -> Producer {
        Producer::start_within(clients, DEADLINE, 0)
    }

    /// Starts producing to `clients` with tags from `first_tag` on (a second producer of a test
    /// keeps clear of the first one's), moving on to the next node once one has not answered
    /// for `timeout` (a node whose disk froze answers nothing).
    pub fn start_within(clients: Vec<SocketAddr>, timeout: Duration, first_tag: u64) -> Producer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let thread = {
            let (stop, acked, ledger) = (stop.clone(), acked.clone(), ledger.clone());
            std::thread::spawn(move || {
                let mut next_tag = first_tag;
                let mut at = 0;
                while !stop.load(Ordering::Relaxed) {
                    let tags: Vec<u64> = (next_tag..next_tag + CHUNK as u64).collect();
                    next_tag += CHUNK as u64;
                    let outcomes =
                        append_window_within(clients[at], &tags, WINDOW, timeout, |tag| {
                            tagged_batch(tag, RECORDS)
                        });
                    let mut any = false;
                    for (tag, outcome) in outcomes {
                        if let Outcome::Acked { base, last } = outcome {
                            ledger.lock().unwrap().insert(tag, (base, last));
                            acked.fetch_add(1, Ordering::Relaxed);
                            any = true;
                        }
                    }
                    if !any {
                        // Not the leader, down, or no quorum: try the next node, after a pause
                        // so a leaderless cluster is not hammered.
                        at = (at + 1) % clients.len();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Producer {
            stop,
            acked,
            ledger,
            thread,
        }
    }

    /// Appends acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `n` more appends than now are acknowledged; `Err` after the deadline.
    pub fn await_more(&self, n: u64) -> Result<(), String> {
        let want = self.acked() + n;
        let deadline = Instant::now() + DEADLINE;
        while self.acked() < want {
            if Instant::now() > deadline {
                return Err(format!(
                    "unavailable: {} appends acknowledged, {want} awaited",
                    self.acked()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Stops producing; every acknowledgement it got.
    pub fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("producer thread");
        Arc::try_unwrap(self.ledger).unwrap().into_inner().unwrap()
    }
}
