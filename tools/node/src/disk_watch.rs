//! The node's watch over disks (issue 14, items 4 and 5), run every tick on the raft thread:
//! its own log's writes — a write outstanding past the stall bound, or a full disk — and what a
//! leader does about them; and, on a leader, how long each follower has gone without
//! acknowledging (a follower's stalled or full disk shows there: it stops acknowledging).
//!
//! A stalled node stops campaigning (the core's `set_write_stalled`); a stalled leader hands
//! leadership to a follower, and steps down if no transfer succeeds. A full disk is a mode, not a
//! stall: the node still campaigns (if every disk is full, someone must lead to say so), and a
//! full leader hands over only to a follower that holds its whole log (one with room).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftline_replicator::{Index, NodeId, Role};

use crate::replica::Replica;

/// How many stall bounds a stalled leader waits for a transfer to succeed before it steps down.
const STEP_DOWN_AFTER_BOUNDS: u32 = 3;

/// The watch's state between ticks.
pub struct DiskWatch {
    /// A log write outstanding this long means a stalled disk.
    bound: Duration,
    /// When the current stall was first seen (`None`: no stall).
    stalled_since: Option<Instant>,
    /// When a write was last seen outstanding past the bound: a stall ends only after a whole
    /// bound without one, so a disk whose every write is slower than the bound (but gets
    /// there) stays stalled instead of flapping.
    last_overdue: Option<Instant>,
    /// Whether the disk was full at the last tick (to log the change once).
    full: bool,
    /// Leader only: per follower, its match index at the last tick and since when it has had
    /// entries to acknowledge without acknowledging any.
    acks: BTreeMap<NodeId, (Index, Instant)>,
}

impl DiskWatch {
    /// A watch calling a disk stalled once a log write is outstanding for `bound`.
    pub fn new(bound: Duration) -> DiskWatch {
        DiskWatch {
            bound,
            stalled_since: None,
            last_overdue: None,
            full: false,
            acks: BTreeMap::new(),
        }
    }

    /// One tick: notices changes of the local disk's state, tells the core, moves leadership
    /// off a disk that cannot take writes, and ages the followers' acknowledgements.
    pub fn check(&mut self, replica: &mut Replica, now: Instant) {
        let full = replica.log().disk_full();
        let age = replica.log().write_age().unwrap_or_default();
        if full.is_none() && age >= self.bound {
            self.last_overdue = Some(now);
        }
        let stalled = full.is_none()
            && self
                .last_overdue
                .is_some_and(|at| now.duration_since(at) < self.bound);
        if full.is_some() != self.full {
            self.full = full.is_some();
            match &full {
                Some(f) => tracing::warn!(
                    path = %f.path.display(),
                    free_bytes = f.free_bytes,
                    "disk full: refusing appends, still serving reads and voting; resuming by itself once there is room"
                ),
                None => tracing::info!("disk has room again: accepting appends"),
            }
        }
        match (stalled, self.stalled_since) {
            (true, None) => {
                tracing::warn!(
                    outstanding_ms = age.as_millis() as u64,
                    bound_ms = self.bound.as_millis() as u64,
                    role = ?replica.raft().role(),
                    "log write outstanding past the stall bound: disk stalled; not campaigning, handing leadership over if leading"
                );
                self.stalled_since = Some(now);
            }
            (false, Some(since)) => {
                tracing::info!(
                    stalled_ms = now.duration_since(since).as_millis() as u64,
                    "log writes progress again"
                );
                self.stalled_since = None;
            }
            _ => {}
        }
        replica.set_write_stalled(stalled);
        if replica.raft().role() == Role::Leader && replica.raft().transfer_target().is_none() {
            if stalled {
                self.hand_over_stalled(replica, now);
            } else if full.is_some() {
                if let Some(to) = replica.hand_over_leadership(true) {
                    tracing::warn!(to, "disk full: handing leadership to a follower with room");
                }
            }
        }
        self.age_acks(replica, now);
    }

    /// A stalled leader: transfer to the most caught-up follower; once the stall outlasted
    /// several bounds (transfers failed: no follower could take over), step down.
    fn hand_over_stalled(&mut self, replica: &mut Replica, now: Instant) {
        let stalled_for = self
            .stalled_since
            .map_or(Duration::ZERO, |since| now.duration_since(since));
        if stalled_for >= self.bound * STEP_DOWN_AFTER_BOUNDS {
            tracing::warn!(
                stalled_ms = stalled_for.as_millis() as u64,
                "disk stalled and no follower took over: stepping down"
            );
            replica.step_down();
        } else if let Some(to) = replica.hand_over_leadership(false) {
            tracing::warn!(to, "disk stalled: handing leadership over");
        }
    }

    fn age_acks(&mut self, replica: &Replica, now: Instant) {
        let raft = replica.raft();
        if raft.role() != Role::Leader {
            self.acks.clear();
            return;
        }
        let last = raft.last_index();
        let me = raft.id();
        for &id in raft.config().voters.iter().filter(|&&id| id != me) {
            let Some(p) = raft.progress(id) else { continue };
            let entry = self.acks.entry(id).or_insert((p.match_index, now));
            if p.match_index >= last || p.match_index > entry.0 {
                *entry = (p.match_index, now);
            }
        }
    }

    /// Leader only: how long follower `id` has had entries to acknowledge without
    /// acknowledging any (zero while it is caught up).
    pub fn ack_age(&self, id: NodeId, now: Instant) -> Duration {
        self.acks
            .get(&id)
            .map_or(Duration::ZERO, |&(_, since)| now.duration_since(since))
    }
}
