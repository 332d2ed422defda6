//! Peer messages the core refuses: bounds on what a peer may claim, and the report the driver
//! gets for every message dropped because it contradicts what this node knows.
//!
//! The core never trusts a peer's arithmetic. A message whose fields no correct peer could have
//! sent (a term far beyond ours, entries that are not consecutive, an acknowledgement of entries
//! this leader never had, a second leader in one term, ...) is dropped — which Raft tolerates, a
//! lost message is inside its fault model — and reported in [`crate::Ready::refused`], so the
//! driver can close that peer's connection and count it. Panics are kept for this node's own
//! invariants; no peer bytes reach one.
//!
//! What this cannot catch: a message that is wrong but plausible (a forged acknowledgement of
//! entries the leader did send, a forged vote grant, a forged AppendEntries from the node this
//! follower already follows). Those need the sender authenticated, which is the network layer's
//! job (`netio` admits only the cluster's nodes); the checks here bound the damage of a
//! corrupted or buggy peer and of a forger that does not know the cluster's state.

use std::fmt;

use crate::message::{Index, NodeId, Term};

/// The highest term the core accepts from a peer (`u64::MAX / 2`).
///
/// A real cluster raises its term by one per election (a pre-vote round does not raise it at
/// all): even an election every millisecond would take 292 million years to get here. A term
/// above it can only be forged or corrupt. Bounding it also bounds every `term + 1` the core
/// computes: no term arithmetic can wrap (the u64::MAX attack left every node stuck as
/// pre-candidate at term 18446744073709551615, with the term in the durable hard state).
pub const TERM_MAX: Term = u64::MAX / 2;

/// The largest step above our own term a peer's message may claim (2^32).
///
/// Terms move up by one per election, so a peer ahead of us by more than 2^32 elections (136
/// years of an election every second) is forged or corrupt. Without this, one forged message
/// within [`TERM_MAX`] would still burn half the term space and be written to every node's
/// durable hard state; with it, a forger needs 2^31 accepted messages to exhaust the terms.
/// Refusing a legitimate message here would be safe (message loss); it would only keep this
/// node from joining a cluster more than 2^32 terms ahead of its durable term.
pub const TERM_JUMP_MAX: Term = 1 << 32;

/// Refusals kept for the next [`crate::Ready`]; beyond this they are only counted in
/// [`crate::Raft::refused_total`] (a flood of forged messages must not grow memory).
pub const REFUSALS_PENDING_MAX: usize = 1024;

/// One peer message the core dropped because no correct peer could have sent it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Refusal {
    /// The sender the message claimed (the connection it arrived on is the driver's to know).
    pub from: NodeId,
    /// The term the message carried.
    pub term: Term,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Why a peer message was refused. Every reason means the sender is broken, corrupt or forging:
/// the simulator asserts that its fault-free and (non-forging) faulty runs never produce one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Addressed to another node.
    WrongRecipient { to: NodeId },
    /// Claims to come from node 0 (reserved) or from this node.
    InvalidSender,
    /// Term beyond [`TERM_MAX`] or more than [`TERM_JUMP_MAX`] above ours.
    TermOutOfRange { term: Term, ours: Term },
    /// Fields that contradict each other: entries not consecutive after `prev_index`, entry
    /// terms decreasing or above the message term, a log term above the message term, an index
    /// or offset that overflows.
    Malformed(&'static str),
    /// AppendEntries, Heartbeat, InstallSnapshot or TimeoutNow from a node that is not the
    /// leader this node knows for the term (`leader` is that one; this node itself when it
    /// leads; `None` for a TimeoutNow of a term newer than ours, which no leader sends).
    NotTheLeader { leader: Option<NodeId> },
    /// AppendEntries that would overwrite an entry this node knows committed.
    OverwritesCommitted { index: Index, commit: Index },
    /// Acknowledgement of entries beyond the leader's log.
    AckBeyondLog { index: Index, last_index: Index },
    /// Acknowledgement beyond anything this leader sent (or knew) that follower to hold.
    AckBeyondSent { index: Index, sent: Index },
    /// A rejection whose fields no follower computes: a rejected `prev_index` beyond the
    /// leader's log, a hint index beyond the rejected one, or a hint term above the term.
    BadRejectHint,
    /// Snapshot bytes acknowledged beyond the snapshot's end.
    SnapshotBeyondEnd { received: u64, size: u64 },
    /// Heartbeat response echoing a heartbeat round this leader never sent.
    ReadSeqFromFuture { read_seq: u64, ours: u64 },
}

impl RefusalReason {
    /// A short stable name for metrics labels and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RefusalReason::WrongRecipient { .. } => "wrong_recipient",
            RefusalReason::InvalidSender => "invalid_sender",
            RefusalReason::TermOutOfRange { .. } => "term_out_of_range",
            RefusalReason::Malformed(_) => "malformed",
            RefusalReason::NotTheLeader { .. } => "not_the_leader",
            RefusalReason::OverwritesCommitted { .. } => "overwrites_committed",
            RefusalReason::AckBeyondLog { .. } => "ack_beyond_log",
            RefusalReason::AckBeyondSent { .. } => "ack_beyond_sent",
            RefusalReason::BadRejectHint => "bad_reject_hint",
            RefusalReason::SnapshotBeyondEnd { .. } => "snapshot_beyond_end",
            RefusalReason::ReadSeqFromFuture { .. } => "read_seq_from_future",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::Malformed(what) => write!(f, "malformed: {what}"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "message from n{} (t{}) refused: {}",
            self.from, self.term, self.reason
        )
    }
}
