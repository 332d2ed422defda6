//! The values the core exchanges with its driver: log entries, hard state and peer messages.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Identifies a node in the cluster; never 0 on the wire (0 is reserved for "none").
pub type NodeId = u64;
/// A Raft term; terms only increase on a node.
pub type Term = u64;
/// A log index; the first entry has index 1, index 0 is the empty prefix.
pub type Index = u64;

/// Bytes an entry costs beyond its payload when counting message and window sizes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 32;

/// What an entry carries: the core treats command payloads as opaque bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client command (later: one batch of records from the `log` crate).
    Command,
    /// The empty entry a new leader appends so it can commit entries of earlier terms.
    Noop,
    /// A new cluster configuration (payload: [`Membership::encode`]); in force on a node as
    /// soon as it is in its log.
    Config,
}

/// One log entry: opaque payload bytes stamped with the term and index they were appended at.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: Index,
    /// Command or leader no-op.
    pub kind: EntryKind,
    /// Opaque to the core; shared so messages and the log do not copy it.
    pub payload: Arc<[u8]>,
}

impl Entry {
    /// Size counted against message and in-flight byte limits.
    pub fn size_bytes(&self) -> u64 {
        self.payload.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "({},t{},{:?},{}B)",
            self.index,
            self.term,
            self.kind,
            self.payload.len()
        )
    }
}

/// The state that must be durable before any message that depends on it leaves the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: Term,
    /// Candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
}

/// The cluster's members at some point of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Nodes that vote and count toward quorums.
    pub voters: Vec<NodeId>,
    /// Nodes that receive the log but never vote.
    pub learners: Vec<NodeId>,
    /// Where each member is reached. Opaque to the core, which only carries it along in
    /// configuration entries and snapshots so that every node (a restarted or a new one
    /// included) learns the address book from the log instead of from its flags.
    pub addresses: BTreeMap<NodeId, MemberAddress>,
}

/// A member's addresses as its operator gave them (`host:port`, not checked by the core).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberAddress {
    /// Where peers connect to it (Raft messages).
    pub peer: String,
    /// Where clients connect to it (appends, subscriptions, admin requests).
    pub client: String,
    /// The member's data directory incarnation (a random number its identity file holds), 0
    /// while not recorded. Once recorded it never changes while the node is a member: a node
    /// under this id on another data directory (its disk was wiped or replaced) lost its vote
    /// and log, and peers refuse its connections (tools/node/README.md "Incarnations").
    pub incarnation: u64,
}

/// Where a snapshot ends: the last entry it covers, and the membership at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot covers.
    pub index: Index,
    /// Term of that entry.
    pub term: Term,
    /// Members as of `index`.
    pub membership: Membership,
}

/// Why a follower refused an AppendEntries, with a hint to skip a whole term at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AppendReject {
    /// The `prev_index` of the refused message (lets the leader drop stale rejections).
    pub rejected_prev_index: Index,
    /// The follower's term at `min(prev_index, last_index)`, or `None` when its log is shorter.
    pub hint_term: Option<Term>,
    /// The first index of `hint_term` in the follower's log, or its last index + 1.
    pub hint_index: Index,
    /// The follower lost durable entries it may have acknowledged (its log tail was damaged and
    /// cut at restart, see [`crate::Raft::set_repair_through`], or a heartbeat's commit lies
    /// beyond its log): its log may now be shorter than the match the leader recorded, so the
    /// leader lowers that match to the hint instead of taking the rejection for a stale one.
    pub log_lost: bool,
}

/// The payload of a peer message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageBody {
    /// Would you vote for me in `term` (the message term) if I started an election? (thesis §9.6)
    PreVote { last_index: Index, last_term: Term },
    /// Answer to `PreVote`; a grant carries the proposed term.
    PreVoteResponse { granted: bool },
    /// Vote for me in this term; `transfer` marks a campaign the leader asked for (TimeoutNow),
    /// which voters honour even while they still hear from that leader.
    RequestVote {
        last_index: Index,
        last_term: Term,
        transfer: bool,
    },
    /// Answer to `RequestVote`; a grant leaves the node only once the vote is durable.
    RequestVoteResponse { granted: bool },
    /// Replicate `entries` after `(prev_index, prev_term)`; `commit` is the leader's commit index.
    AppendEntries {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// Success carries the highest index the follower holds durably matching the leader.
    AppendEntriesResponse { result: Result<Index, AppendReject> },
    /// Leader liveness and commit index, never more than the follower is known to match.
    /// `read_seq` is the leader's latest ReadIndex request at sending time.
    Heartbeat { commit: Index, read_seq: u64 },
    /// Answer to `Heartbeat`, echoing its `read_seq` (confirms leadership for those reads).
    HeartbeatResponse { read_seq: u64 },
    /// Leadership transfer: the leader tells an up-to-date follower to campaign now.
    TimeoutNow,
    /// One chunk of the snapshot `meta` for a follower that needs entries the leader compacted:
    /// bytes `[offset, offset + data.len())`; `done` marks the last chunk.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Arc<[u8]>,
        done: bool,
    },
    /// The follower holds the first `received` bytes of snapshot `index` (flow control and
    /// retransmission; the installed snapshot is acknowledged with an AppendEntriesResponse).
    InstallSnapshotResponse { index: Index, received: u64 },
}

/// A message between two nodes of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// Sender's term (for `PreVote`, the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}->n{} t{} ", self.from, self.to, self.term)?;
        match &self.body {
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                write!(
                    f,
                    "Append prev=({prev_index},t{prev_term}) commit={commit} entries="
                )?;
                match (entries.first(), entries.last()) {
                    (Some(a), Some(b)) => write!(f, "[{}..={}]", a.index, b.index),
                    _ => write!(f, "[]"),
                }
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => write!(
                f,
                "InstallSnapshot ({},t{}) bytes {offset}+{}{}",
                meta.index,
                meta.term,
                data.len(),
                if *done { " done" } else { "" }
            ),
            body => write!(f, "{body:?}"),
        }
    }
}
