//! The leader's view of one follower: how far it matches, what to send next, and how much is in
//! flight. Replication policy as plain data (etcd's `Progress` and `Inflights`).

use std::collections::VecDeque;

use crate::message::{Index, SnapshotMeta};

/// How the leader currently sends to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressState {
    /// Match unknown: one AppendEntries at a time until one succeeds.
    Probe,
    /// Match known: stream optimistically within the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted: stream it a snapshot in chunks.
    Snapshot,
}

/// A snapshot being streamed to one follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotTransfer {
    /// The snapshot being sent.
    pub meta: SnapshotMeta,
    /// Bytes sent so far (the next chunk starts here).
    pub sent: u64,
    /// Bytes the follower confirmed holding.
    pub acked: u64,
    /// The chunk marked `done` has been sent (rewinding clears it).
    pub all_sent: bool,
    /// Unacknowledged bytes allowed in flight (at least one chunk is always allowed).
    pub window_bytes: u64,
    /// The snapshot's size, once its last chunk was read: the follower cannot hold more.
    pub size: Option<u64>,
    /// `acked` when the previous heartbeat response came back: chunks are presumed lost only
    /// when a whole heartbeat round acknowledged nothing.
    pub acked_at_heartbeat: u64,
}

impl SnapshotTransfer {
    /// True when no further chunk may be sent now.
    pub fn is_paused(&self) -> bool {
        self.all_sent || (self.sent > self.acked && self.sent - self.acked >= self.window_bytes)
    }

    /// Applies the follower's report that it holds `received` bytes.
    pub fn acknowledge(&mut self, received: u64) {
        if received < self.acked {
            // The follower lost its partial copy (it restarted): start over from what it holds.
            self.acked = received;
            self.rewind();
        } else {
            self.acked = received;
            if self.sent < received {
                self.sent = received;
            }
        }
    }

    /// A heartbeat response came back: if nothing was acknowledged since the previous one, the
    /// chunks in flight are presumed lost and resent ([`SnapshotTransfer::rewind`]). Chunks are
    /// acknowledged as they arrive, so a transfer that is moving is left alone: rewinding it
    /// would send the whole window again on every heartbeat.
    pub fn heartbeat_answered(&mut self) {
        if self.acked == self.acked_at_heartbeat {
            self.rewind();
        }
        self.acked_at_heartbeat = self.acked;
    }

    /// Resends from the last acknowledged byte (chunks in flight are presumed lost); with
    /// everything acknowledged this re-sends the empty final chunk, which asks the follower
    /// whether it installed the snapshot.
    pub fn rewind(&mut self) {
        self.sent = self.acked;
        self.all_sent = false;
    }
}

/// A bounded window of AppendEntries in flight, by message count and entry bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Inflights {
    /// `(last index carried, entry bytes)` of each message in flight, oldest first.
    msgs: VecDeque<(Index, u64)>,
    bytes: u64,
    msgs_max: usize,
    bytes_max: u64,
}

impl Inflights {
    /// An empty window with the given limits.
    pub fn new(msgs_max: usize, bytes_max: u64) -> Self {
        Inflights {
            msgs: VecDeque::new(),
            bytes: 0,
            msgs_max,
            bytes_max,
        }
    }

    /// True when no further message may be sent.
    pub fn is_full(&self) -> bool {
        self.msgs.len() >= self.msgs_max || self.bytes >= self.bytes_max
    }

    /// Records a message carrying entries up to `last_index`.
    pub fn add(&mut self, last_index: Index, bytes: u64) {
        assert!(!self.is_full(), "sending into a full in-flight window");
        debug_assert!(self.msgs.back().is_none_or(|&(last, _)| last < last_index));
        self.msgs.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all acknowledged by `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.msgs.front() {
            if last > index {
                break;
            }
            self.msgs.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message (a heartbeat response proves the follower is alive but an
    /// acknowledgement was probably lost).
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.msgs.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// Forgets everything in flight.
    pub fn clear(&mut self) {
        self.msgs.clear();
        self.bytes = 0;
    }
}

/// Replication state of one follower, kept by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Progress {
    /// Highest index known to be durable and matching on the follower.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// Probe or replicate.
    pub state: ProgressState,
    /// In probe state: a probe is outstanding, wait for its answer or a heartbeat response.
    pub probe_sent: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Messages in flight in replicate state.
    pub inflights: Inflights,
    /// The snapshot being streamed, in snapshot state.
    pub snapshot: Option<SnapshotTransfer>,
    /// The highest index this follower can legitimately acknowledge: the leader's last index
    /// when the progress was created (everything committed before is in it, Leader
    /// Completeness, so the follower's commit index is at most that), raised by every entry and
    /// snapshot sent. An acknowledgement beyond it is refused.
    pub sent_max: Index,
}

impl Progress {
    /// A follower of a new leader whose log ends at `last_index`.
    pub fn new(last_index: Index, inflight_msgs_max: usize, inflight_bytes_max: u64) -> Self {
        Progress {
            match_index: 0,
            next_index: last_index + 1,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            inflights: Inflights::new(inflight_msgs_max, inflight_bytes_max),
            snapshot: None,
            sent_max: last_index,
        }
    }

    /// True when the leader must not send entries now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => self
                .snapshot
                .as_ref()
                .is_none_or(SnapshotTransfer::is_paused),
        }
    }

    /// Applies a success acknowledging `index`; true if the match advanced.
    pub fn acknowledge(&mut self, index: Index) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.saturating_add(1));
        self.inflights.free_to(index);
        advanced
    }

    /// Switches to streaming from the match.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.inflights.clear();
        self.snapshot = None;
    }

    /// Switches to streaming snapshot `meta`, `window_bytes` unacknowledged at a time.
    pub fn become_snapshot(&mut self, meta: SnapshotMeta, window_bytes: u64) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflights.clear();
        self.sent_max = self.sent_max.max(meta.index);
        self.snapshot = Some(SnapshotTransfer {
            meta,
            sent: 0,
            acked: 0,
            all_sent: false,
            window_bytes,
            size: None,
            acked_at_heartbeat: 0,
        });
    }

    /// Switches to probing from `next_index` (at least match + 1).
    pub fn become_probe(&mut self, next_index: Index) {
        self.state = ProgressState::Probe;
        self.next_index = next_index.max(self.match_index + 1);
        self.probe_sent = false;
        self.inflights.clear();
        self.snapshot = None;
    }

    /// The follower lost the entries from `next_index` on (a damaged tail cut at its restart)
    /// although it had acknowledged them: its match goes back and probing starts there. Commit
    /// never goes back with it (what was committed stays committed); only what this follower is
    /// counted for from now on shrinks. A snapshot transfer under way is abandoned too: its
    /// end was chosen from the match that no longer holds. False if the match is already below
    /// `next_index`.
    pub fn lost_log(&mut self, next_index: Index) -> bool {
        if next_index > self.match_index {
            return false;
        }
        self.match_index = next_index.saturating_sub(1);
        self.become_probe(next_index);
        true
    }

    /// Applies a rejection of a message sent with `rejected_prev`; false if it is stale.
    ///
    /// A rejection that answers what is being sent now and yet points at or below the match
    /// means the follower no longer holds entries it acknowledged (it lost them without
    /// knowing, replicator/DRIVER.md "Residual window"): the match goes back as in
    /// [`Progress::lost_log`]. Clamping the probe at match + 1 instead would resend the same
    /// probe for ever. A reordered rejection from before the follower caught up can be taken
    /// for such a loss; that only costs a probe round (the follower, holding the entries,
    /// acknowledges them again). Rejections alone never loop: one acted on in Replicate
    /// switches to Probe, and each one acted on in Probe lowers `match + next`. `detect_loss`
    /// is false only under [`crate::Mutation::IgnoreLostMatch`].
    pub fn reject(&mut self, rejected_prev: Index, hinted_next: Index, detect_loss: bool) -> bool {
        let current = match self.state {
            ProgressState::Replicate => rejected_prev > self.match_index,
            ProgressState::Probe => rejected_prev.checked_add(1) == Some(self.next_index),
            // Entries are not being sent; the installed snapshot's acknowledgement moves on.
            ProgressState::Snapshot => false,
        };
        if !current {
            return false;
        }
        let next = hinted_next.min(rejected_prev);
        if next <= self.match_index && detect_loss {
            return self.lost_log(next);
        }
        match self.state {
            ProgressState::Replicate => self.become_probe(self.match_index + 1),
            _ => self.become_probe(next),
        }
        true
    }
}
