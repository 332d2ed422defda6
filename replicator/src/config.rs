//! Static parameters of one node. Every time is in ticks; every queue has a limit here.

use std::collections::BTreeMap;

use crate::message::{MemberAddress, NodeId};

/// Deliberate protocol bugs the simulator must be able to find. Only tests set anything but
/// `None`; production pays one comparison where each is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// The correct protocol.
    #[default]
    None,
    /// (a) Commit an entry of an earlier term by counting its replicas (breaks Raft §5.4.2).
    CommitPreviousTerm,
    /// (b) Grant votes without the log up-to-date check.
    SkipUpToDateCheck,
    /// (c) Send a vote grant before the vote is durable.
    VoteBeforePersist,
    /// (d) Let a follower acknowledge entries before they are durable.
    AckBeforeDurable,
    /// (e) Install a snapshot even when the log already holds its last entry (a duplicate, or
    /// a leader whose view of this follower lagged): rolls back entries after it that this node
    /// may have acknowledged — committed entries lost from its disk.
    InstallStaleSnapshot,
    /// (f) A leader renews its read lease with every heartbeat it sends, without waiting for a
    /// quorum to acknowledge one: a leader cut off from the others keeps serving reads.
    LeaseWithoutQuorum,
    /// (g) Trust every peer message: the checks of [`crate::refusal`] are off (terms beyond
    /// `TERM_MAX`, acknowledgements beyond the log, a second leader's AppendEntries, a
    /// TimeoutNow from anyone, ...), as before issue 13.
    TrustPeers,
    /// (h) A node whose damaged log tail lost durable entries at recovery carries on as if the
    /// cut were a torn write (as before issue 14): the simulator's driver never calls
    /// [`crate::Raft::set_repair_through`], so the node votes and campaigns with a log that no
    /// longer holds what it acknowledged.
    CutAndCarryOn,
    /// (i) Nobody acts on a match a follower lost without knowing it (as before session 7):
    /// the leader clamps its probe at match + 1 whatever the rejection hints, and the follower
    /// takes a heartbeat commit beyond its log for one within it. The follower gets the same
    /// probe again for every rejection and is never repaired by that leader.
    IgnoreLostMatch,
}

/// Configuration of one Raft node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The voters a new cluster starts with (bootstrap), including `id`; empty for a node that
    /// joins an existing cluster (it learns the configuration from the leader once added). Once
    /// the log or a snapshot holds a configuration, that one is in force.
    pub voters: Vec<NodeId>,
    /// The bootstrap voters' addresses (opaque to the core: carried in the configuration so
    /// that configuration entries and snapshots hold the whole address book).
    pub addresses: BTreeMap<NodeId, MemberAddress>,
    /// Lower bound (inclusive) of the randomized election timeout.
    pub election_ticks_min: u32,
    /// Upper bound (exclusive) of the randomized election timeout.
    pub election_ticks_max: u32,
    /// Leader heartbeat interval.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before bumping the term (thesis §9.6).
    pub pre_vote: bool,
    /// Leader steps down without contact from a majority within `election_ticks_min`; followers
    /// that heard from a leader that recently ignore vote requests.
    pub check_quorum: bool,
    /// Append messages in flight per follower.
    pub inflight_msgs_max: usize,
    /// Entry bytes in flight per follower.
    pub inflight_bytes_max: u64,
    /// Entry bytes per AppendEntries (a message carries at least one entry).
    pub msg_bytes_max: u64,
    /// Largest payload a proposal may carry.
    pub entry_bytes_max: u64,
    /// Entries the leader holds beyond its commit index before refusing proposals.
    pub uncommitted_entries_max: u64,
    /// Messages waiting for local durability before they may be sent; the oldest is dropped
    /// beyond this (a lost message is within Raft's fault model).
    pub gated_msgs_max: usize,
    /// ReadIndex requests awaiting leadership confirmation before new ones are refused.
    pub reads_pending_max: usize,
    /// Serve `read_index` from a leader lease when one holds (no heartbeat round). Off by
    /// default. Safe only under bounded clock drift: see [`Config::lease_ticks`]. Requires
    /// `check_quorum` (followers' leader stickiness is what the lease relies on).
    pub lease_read: bool,
    /// Assumed bound on how much faster any node's clock (tick rate) runs than another's, per
    /// mille; shortens the lease accordingly.
    pub clock_drift_per_mille: u32,
    /// Durable entry bytes kept in memory after they became durable (recent entries serve
    /// followers slightly behind and the apply path without a storage read). 0 disables it.
    pub log_cache_bytes_max: u64,
    /// Entry bytes not durable yet (held only in memory) before the leader refuses proposals.
    pub unstable_bytes_max: u64,
    /// Committed entry bytes one `Ready` hands out (at least one entry); the rest follow in the
    /// next `Ready`, so catching up a long log never loads it whole.
    pub committed_bytes_max: u64,
    /// Coalesce a leader's AppendEntries per driver round: a proposal or a commit advance marks
    /// the followers, and the next `ready()` sends each of them one message with everything new
    /// (and the commit index) instead of one message per proposal and per acknowledgement.
    /// Same messages' content, fewer of them; off by default.
    pub batch_appends: bool,
    /// Test-only fault injection; see [`Mutation`].
    pub mutation: Mutation,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The node must be one of the voters (or there are none: joining), ids non-zero and
    /// distinct.
    #[error(
        "voters {voters:?} must be distinct, non-zero and include node {id} (or be empty to join)"
    )]
    Voters { id: NodeId, voters: Vec<NodeId> },
    /// Timeouts out of order.
    #[error("need 0 < heartbeat_ticks ({heartbeat}) < election_ticks_min ({min}) < election_ticks_max ({max})")]
    Timeouts { heartbeat: u32, min: u32, max: u32 },
    /// Lease reads rely on followers' leader stickiness, which only check-quorum provides, and
    /// need a lease of at least one tick.
    #[error("lease_read needs check_quorum and election_ticks_min ({min}) long enough for a lease of one tick at {drift_per_mille}‰ clock drift")]
    Lease { min: u32, drift_per_mille: u32 },
    /// A limit of zero would stall replication.
    #[error("limit {0} must be positive")]
    ZeroLimit(&'static str),
}

impl Config {
    /// Defaults sized for a 3–7 node cluster ticking every few milliseconds.
    pub fn new(id: NodeId, voters: Vec<NodeId>) -> Self {
        Config {
            id,
            voters,
            addresses: BTreeMap::new(),
            election_ticks_min: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 64,
            inflight_bytes_max: 8 << 20,
            msg_bytes_max: 1 << 20,
            entry_bytes_max: 1 << 20,
            uncommitted_entries_max: 4096,
            gated_msgs_max: 4096,
            reads_pending_max: 1024,
            lease_read: false,
            clock_drift_per_mille: 100,
            log_cache_bytes_max: 16 << 20,
            unstable_bytes_max: 64 << 20,
            committed_bytes_max: 4 << 20,
            batch_appends: false,
            mutation: Mutation::None,
        }
    }

    /// Checks the configuration; the core refuses to start with an invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let joining = sorted.is_empty() && self.id != 0;
        if !joining
            && (sorted.len() != self.voters.len()
                || sorted.contains(&0)
                || !sorted.contains(&self.id))
        {
            return Err(ConfigError::Voters {
                id: self.id,
                voters: self.voters.clone(),
            });
        }
        if !(0 < self.heartbeat_ticks
            && self.heartbeat_ticks < self.election_ticks_min
            && self.election_ticks_min < self.election_ticks_max)
        {
            return Err(ConfigError::Timeouts {
                heartbeat: self.heartbeat_ticks,
                min: self.election_ticks_min,
                max: self.election_ticks_max,
            });
        }
        if self.lease_read && (!self.check_quorum || self.lease_ticks() == 0) {
            return Err(ConfigError::Lease {
                min: self.election_ticks_min,
                drift_per_mille: self.clock_drift_per_mille,
            });
        }
        for (name, value) in [
            ("inflight_msgs_max", self.inflight_msgs_max as u64),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("msg_bytes_max", self.msg_bytes_max),
            ("entry_bytes_max", self.entry_bytes_max),
            ("uncommitted_entries_max", self.uncommitted_entries_max),
            ("gated_msgs_max", self.gated_msgs_max as u64),
            ("reads_pending_max", self.reads_pending_max as u64),
            ("unstable_bytes_max", self.unstable_bytes_max),
            ("committed_bytes_max", self.committed_bytes_max),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        Ok(())
    }

    /// How many of its own ticks a leader may serve reads from a lease after sending a heartbeat
    /// round that a quorum acknowledged.
    ///
    /// The safety argument: a follower that received that heartbeat at real time `r` (after it
    /// was sent) refuses every vote and pre-vote (except a leader-requested transfer, after which
    /// the leader serves no lease reads) for `election_ticks_min` of ITS ticks, i.e. at least
    /// `election_ticks_min - 1` full tick periods after `r`; a node that restarts refuses for as
    /// long (it may have acknowledged just before crashing). No other leader can be elected
    /// without one of those followers' votes, so none exists until that much time has passed on
    /// a quorum's clocks. If no clock runs more than `clock_drift_per_mille` faster than the
    /// leader's, `(election_ticks_min - 1) / (1 + drift)` leader ticks are safe; one more tick is
    /// kept back for the leader's own tick granularity.
    pub fn lease_ticks(&self) -> u64 {
        let min = u64::from(self.election_ticks_min.saturating_sub(2));
        min * 1000 / (1000 + u64::from(self.clock_drift_per_mille))
    }
}
