//! The client protocol: requests a client sends on the client port and the node's responses.
//!
//! Every message is one frame whose type names the message; the payload has the shared
//! [`frame::encode_sectioned`] layout: raw batch bytes first (only `Append` and `Batches` carry
//! any), then an rkyv archive of the message without its batch bytes, then the archive length.
//! Batch bytes are the log crate's batch format (`raftline_log::Batch`), self-delimiting by their
//! header, and are never re-encoded: the decoder keeps them by truncating the frame's payload.
//!
//! Ids: a client draws request ids and subscription ids from one counter per connection, so an
//! `Error` names whichever request or subscription it answers; id 0 is the connection itself
//! (the node closes it after such an error).

use raftline_log::batch::{check_frame, BatchError};
use rkyv::rancor;
use rkyv::with::Skip;

use crate::cluster_id::ClusterId;
use crate::frame::{self, Frame, FrameHeader, FrameType, CLIENT_SENDER_ID};

/// When the node acknowledges an append.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum AckMode {
    /// Once the batch is committed: durable on a majority of voters (the leader's own write
    /// included). The only mode under which an acknowledged record survives any minority crash.
    #[default]
    Quorum,
    /// Once the batch is durable on the leader's disk (lost if the leader's disk is lost before
    /// replication, or if a new leader is elected without it).
    Leader,
    /// Once the leader has accepted the batch and assigned offsets, before any disk write.
    None,
}

impl AckMode {
    /// Every mode, strongest first.
    pub const ALL: [AckMode; 3] = [AckMode::Quorum, AckMode::Leader, AckMode::None];

    /// The mode's name on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Quorum => "quorum",
            AckMode::Leader => "leader",
            AckMode::None => "none",
        }
    }
}

impl std::fmt::Display for AckMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An acknowledgement mode name that is not `quorum`, `leader` or `none`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown acknowledgement mode {0:?}: use quorum (durable on a majority), leader or none")]
pub struct UnknownAckMode(pub String);

impl std::str::FromStr for AckMode {
    type Err = UnknownAckMode;

    fn from_str(text: &str) -> Result<AckMode, UnknownAckMode> {
        AckMode::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| UnknownAckMode(text.to_string()))
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum StartFrom {
    /// At this offset (the batch holding it is sent whole; the client skips records before it).
    Offset(u64),
    /// At the earliest offset the node retains.
    Earliest,
    /// At the next offset to be committed (only new records).
    Latest,
}

/// Where a resumed snapshot stream picks up: the same snapshot (by index), after the records a
/// consumer already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotResume {
    /// The snapshot's index.
    pub index: u64,
    /// Records of it already received (its records are in key order, the same on every node).
    pub position: u64,
}

/// Which snapshot a stream sends, and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotInfo {
    /// Index of the last log entry the snapshot covers (0: no snapshot, the log starts at 0).
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The cut: the log continues at this offset; the snapshot holds the state of every record
    /// below it.
    pub cut_offset: u64,
    /// Records (keys, tombstones included) in the snapshot.
    pub records: u64,
    /// The first record this stream sends (0: from the start; more: a resumed stream).
    pub position: u64,
}

/// One record of a snapshot: the latest record of its key below the cut.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotRecord {
    /// The key.
    pub key: Vec<u8>,
    /// The value; empty for a delete (a tombstone). A key absent from the snapshot is deleted
    /// as of the cut (or never existed).
    pub value: Vec<u8>,
    /// The original offset of the record.
    pub offset: u64,
    /// Its producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

impl SnapshotRecord {
    /// What the record costs of a snapshot stream's credit: its key and value, plus 16 bytes for
    /// its offset and timestamp (the node and the client count the same way).
    pub fn credit_bytes(&self) -> u64 {
        (self.key.len() + self.value.len() + 16) as u64
    }
}

/// What a client connection may do on a node started with an auth file (`--auth-file`): each
/// role includes the ones before it. A node without an auth file treats every connection as
/// `Admin`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum AccessRole {
    /// Reads: status, subscriptions (log and snapshot), credit.
    Read,
    /// Reads, and appends (and an idempotent producer's id).
    Produce,
    /// Everything: membership changes, leadership transfers, snapshots on demand.
    Admin,
}

impl AccessRole {
    /// Every role, weakest first.
    pub const ALL: [AccessRole; 3] = [AccessRole::Read, AccessRole::Produce, AccessRole::Admin];

    /// The role's name in auth files and messages.
    pub fn name(self) -> &'static str {
        match self {
            AccessRole::Read => "read",
            AccessRole::Produce => "produce",
            AccessRole::Admin => "admin",
        }
    }
}

impl std::fmt::Display for AccessRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not `read`, `produce` or `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use read, produce or admin")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for AccessRole {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<AccessRole, UnknownRole> {
        AccessRole::ALL
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| UnknownRole(text.to_string()))
    }
}

/// The role a node has in the Raft cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum NodeRole {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes before campaigning.
    PreCandidate,
    /// Campaigning for votes.
    Candidate,
    /// Leads the cluster: takes appends.
    Leader,
    /// Receives the log but does not vote.
    Learner,
}

/// Replication progress of one peer, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct PeerStatus {
    /// The peer's node id.
    pub node_id: u64,
    /// Highest index known to be durable on the peer and matching the leader's log.
    pub match_index: u64,
    /// Entries the peer is behind the leader's last index.
    pub lag_entries: u64,
    /// Whether the leader currently has a connection to the peer.
    pub connected: bool,
    /// Milliseconds the peer has had entries to acknowledge without acknowledging any (0 while
    /// it is caught up): a peer whose disk stalled or filled shows a growing age.
    pub ack_age_ms: u64,
}

/// A node's view of itself and the cluster, answered to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub node_id: u64,
    /// Its Raft role.
    pub role: NodeRole,
    /// Its current term.
    pub term: u64,
    /// The leader it knows of, if any.
    pub leader_id: Option<u64>,
    /// The leader's client address (where appends go), if known.
    pub leader_client_address: Option<String>,
    /// Highest log index known to be committed.
    pub commit_index: u64,
    /// Earliest offset still retained (older ones were compacted into a snapshot).
    pub log_start_offset: u64,
    /// One past the last offset in the node's log.
    pub log_end_offset: u64,
    /// Index of the first entry still in the log.
    pub log_first_index: u64,
    /// Index of the last entry in the log.
    pub log_last_index: u64,
    /// Per-peer replication progress (filled by a leader only).
    pub peers: Vec<PeerStatus>,
    /// The snapshot this node serves (covers the offsets below `log_start_offset`), if any.
    pub snapshot: Option<SnapshotStatus>,
    /// Bytes of the node's data directory on disk (log segments, snapshots, hard state), as of
    /// its last measurement (at most a second old).
    pub disk_bytes: u64,
    /// Keys in the node's materialised state (tombstones included).
    pub state_keys: u64,
    /// Bytes the materialised state accounts for.
    pub state_bytes: u64,
    /// Its bound (`--state-mib-max`): at it, appends adding keys are refused (`StateFull`).
    pub state_bytes_max: u64,
    /// Milliseconds the log write in progress has been outstanding (0: none): a stalled disk
    /// shows a growing age.
    pub log_write_age_ms: u64,
    /// The log's disk is full (appends refused until there is room).
    pub disk_full: Option<DiskFullStatus>,
    /// A log write has been outstanding past the node's stall bound: it does not campaign and
    /// hands leadership over if it leads.
    pub disk_stalled: bool,
}

/// A node's full disk, as `Status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DiskFullStatus {
    /// The log directory whose filesystem is full.
    pub path: String,
    /// Bytes free there when the node last tried.
    pub free_bytes: u64,
}

/// The snapshot a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotStatus {
    /// Index of the last entry it covers.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// Where the log continues after it: it holds the state of every record below.
    pub cut_offset: u64,
    /// Its file's size.
    pub bytes: u64,
    /// Milliseconds since its file was written (`None` if the filesystem keeps no times).
    pub age_ms: Option<u64>,
}

/// A typed reason a request failed.
#[derive(
    Debug, Clone, PartialEq, Eq, thiserror::Error, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub enum ClientError {
    /// This node does not lead; the hint names the leader it knows of, if any.
    #[error("not the leader (leader: {})", leader_hint(*leader_id, leader_address.as_deref()))]
    NotLeader {
        /// The leader's node id, if known.
        leader_id: Option<u64>,
        /// The leader's client address, if known.
        leader_address: Option<String>,
    },
    /// The request was not completed in time; an append may or may not have been committed.
    #[error("timed out (the append may or may not have been committed)")]
    Timeout,
    /// The batch is larger than the node accepts.
    #[error("batch too large: the node accepts at most {limit_bytes} bytes")]
    TooLarge {
        /// The node's limit on a batch.
        limit_bytes: u64,
    },
    /// The node cannot serve the request now (no quorum, shutting down, storage failed...).
    #[error("unavailable: {why}")]
    Unavailable {
        /// Why, for the operator.
        why: String,
    },
    /// A subscription asked for an offset the node does not hold.
    #[error("offset {requested} out of range: the log holds [{earliest}, {end}){}",
        snapshot_index.map(|i| format!(", earlier offsets are in the snapshot at index {i}")).unwrap_or_default())]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// Earliest retained offset.
        earliest: u64,
        /// One past the last offset.
        end: u64,
        /// Index of the snapshot that covers offsets below `earliest`, if any.
        snapshot_index: Option<u64>,
    },
    /// The request's frame carried another cluster's id.
    #[error(
        "wrong cluster: this node belongs to cluster {:#018x}",
        node_cluster_id
    )]
    WrongCluster {
        /// The node's cluster id.
        node_cluster_id: u64,
    },
    /// Too many requests in flight; retry later.
    #[error("busy: too many requests in flight, retry later")]
    Busy,
    /// The request itself is invalid (e.g. a malformed batch).
    #[error("bad request: {why}")]
    BadRequest {
        /// What is wrong with it.
        why: String,
    },
    /// The batch adds a key while the materialised state holds `--state-mib-max`: overwrites
    /// and deletes of keys it holds are still taken. Not retriable until keys are deleted (and
    /// their tombstones expired) or the bound raised.
    #[error(
        "state full: the keyed state holds its bound of {state_bytes_max} bytes; only \
         overwrites and deletes of existing keys are taken"
    )]
    StateFull {
        /// The node's bound on its state.
        state_bytes_max: u64,
    },
    /// The leader's disk is full: the append was not taken. The node keeps serving reads and
    /// voting and accepts appends again by itself once there is room (a snapshot let it drop
    /// log segments, or an operator freed space).
    #[error("disk full on the leader: no room for the log in {path} ({free_bytes} bytes free); appends resume once space is freed")]
    DiskFull {
        /// The log directory whose filesystem is full.
        path: String,
        /// Bytes free there when the node last tried.
        free_bytes: u64,
    },
    /// An idempotent producer's batch does not continue its sequence (a batch before it is
    /// missing): not stored.
    #[error("producer {producer_id}: sequence {got} out of order (expected {})",
        if *expected < 0 { "0 in a new epoch".to_string() } else { expected.to_string() })]
    OutOfOrderSequence {
        /// The producer.
        producer_id: u64,
        /// The sequence the node expected (-1: a new epoch starts at 0).
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// An idempotent producer's batch carries an epoch older than the producer's current one
    /// (a newer incarnation fenced it): not stored.
    #[error("producer {producer_id}: epoch {got} is stale (current: {current})")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: u64,
        /// Its current epoch.
        current: i16,
        /// The batch's epoch.
        got: i16,
    },
    /// The node holds no state for this idempotent producer (evicted: the dedup table keeps
    /// the most recently written producers only) and the batch does not start a sequence:
    /// not stored; the producer needs a new id.
    #[error(
        "producer {producer_id} is unknown (evicted from the dedup table, or never registered)"
    )]
    UnknownProducer {
        /// The producer.
        producer_id: u64,
    },
    /// A membership change cannot be made right now (another change is not committed yet, a new
    /// leader has not committed in its term, leadership is being transferred); retry shortly.
    #[error("configuration change not possible now: {why}; retry shortly")]
    ChangeNotNow {
        /// Why, for the operator.
        why: String,
    },
    /// The learner has not caught up with the commit index: promoting it now would make a voter
    /// that cannot vote usefully.
    #[error(
        "learner {id} matches the log up to index {match_index}, the commit index is \
         {commit_index}: not promoted until it has caught up"
    )]
    LearnerBehind {
        /// The learner.
        id: u64,
        /// How far its log matches the leader's.
        match_index: u64,
        /// The leader's commit index.
        commit_index: u64,
    },
    /// The change would leave the new configuration without a quorum of reachable voters
    /// (refused unless forced).
    #[error("refused: {why}")]
    WouldLoseQuorum {
        /// Which voters are down and what the change would need.
        why: String,
    },
    /// The change does not apply to the configuration (already a member, not a learner, the
    /// last voter...); no retry helps.
    #[error("membership change refused: {why}")]
    MembershipRefused {
        /// Why.
        why: String,
    },
    /// The request needs a role this connection does not hold (the node has an auth file):
    /// authenticate with a token (or client certificate) that maps to `needed` or more.
    #[error("forbidden: this request needs the {needed} role; the connection {}",
        held.map(|r| format!("holds {r}")).unwrap_or_else(|| "has not authenticated (give a token)".into()))]
    Forbidden {
        /// The least role that may make the request.
        needed: AccessRole,
        /// The role the connection holds (`None`: it has not authenticated).
        held: Option<AccessRole>,
    },
    /// The token given in `Authenticate` matches no entry of the node's auth file. After a few
    /// on one connection the node closes it.
    #[error("bad credentials: the token matches no entry of the node's auth file")]
    BadCredentials,
}

fn leader_hint(id: Option<u64>, address: Option<&str>) -> String {
    match (id, address) {
        (Some(id), Some(a)) => format!("node {id} at {a}"),
        (Some(id), None) => format!("node {id}, address unknown"),
        (None, _) => "unknown".to_string(),
    }
}

/// Batches per idempotent producer whose resends a node recognises (the last ones it stored):
/// an idempotent producer keeps at most this many batches unanswered, so every batch it may
/// resend is among them (Kafka's `max.in.flight` limit for idempotence, and its window).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// A message from a client to a node.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Request {
    /// Append one batch (log crate format, offsets/term/index 0: the leader stamps them).
    Append {
        /// Echoed in the answer.
        request_id: u64,
        /// When to acknowledge.
        ack: AckMode,
        /// The batch bytes (travel raw, outside the archive).
        #[rkyv(with = Skip)]
        batch: Vec<u8>,
    },
    /// Stream committed batches from `from`, at most `window_bytes` ahead of granted credit.
    Subscribe {
        /// Names the subscription in `Batches` and `Error`.
        subscription_id: u64,
        /// Where to start.
        from: StartFrom,
        /// Initial credit: bytes of batches the node may send before more credit arrives.
        window_bytes: u64,
    },
    /// Grants a subscription more credit (bytes of batches the client has consumed).
    Credit {
        /// The subscription.
        subscription_id: u64,
        /// Additional bytes the node may send.
        bytes: u64,
    },
    /// Asks for the node's status.
    Status {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// Streams the node's newest snapshot: `SnapshotBegin`, `SnapshotRecords` under credit (the
    /// same byte credit as `Subscribe`, granted with `Credit`), `SnapshotEnd`; the consumer then
    /// subscribes to the log from the cut.
    SubscribeSnapshot {
        /// Names the stream in its frames and in `Credit`.
        subscription_id: u64,
        /// Initial credit: bytes of records the node may send before more credit arrives.
        window_bytes: u64,
        /// Resume this snapshot at this position if the node holds it (else it starts its own
        /// newest snapshot from record 0, with a new `SnapshotBegin`).
        resume: Option<SnapshotResume>,
    },
    /// Admin: take a snapshot of everything applied so far (answered once it is durable).
    SnapshotNow {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// An idempotent producer asks for its id (any node answers, `ProducerGranted`).
    InitProducer {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// Admin (leader): the members, their addresses and replication progress.
    MemberList {
        /// Echoed in the answer.
        request_id: u64,
    },
    /// Admin (leader): add node `id` as a learner at these addresses (answered once the
    /// configuration entry commits).
    MemberAdd {
        /// Echoed in the answer.
        request_id: u64,
        /// The new node's id.
        id: u64,
        /// Where peers reach it (`ip:port`).
        peer_address: String,
        /// Where clients reach it.
        client_address: String,
        /// Its data directory incarnation (a joining node's own; 0: recorded by the leader
        /// when the node first connects).
        incarnation: u64,
    },
    /// Admin (leader): make learner `id` a voter (refused until it has caught up).
    MemberPromote {
        /// Echoed in the answer.
        request_id: u64,
        /// The learner.
        id: u64,
    },
    /// Admin (leader): remove member `id`; `force` skips the reachable-quorum check.
    MemberRemove {
        /// Echoed in the answer.
        request_id: u64,
        /// The member.
        id: u64,
        /// Remove even if the remaining voters reachable now are not a quorum.
        force: bool,
    },
    /// Admin (leader): hand leadership to voter `to` (`None`: the most caught-up one); answered
    /// once this node sees the new leader.
    LeaderTransfer {
        /// Echoed in the answer.
        request_id: u64,
        /// The voter to lead next.
        to: Option<u64>,
    },
    /// Presents a token; answered `Authenticated` with the role it maps to (or `BadCredentials`).
    /// On a node with an auth file it must come first, unless the connection's client
    /// certificate already maps to a role; a later one replaces the connection's role.
    Authenticate {
        /// Echoed in the answer.
        request_id: u64,
        /// The secret token (the node keeps only its SHA-256 digest).
        token: String,
    },
    /// Admin (leader): member `id` is reached at new addresses (its machine moved, its data
    /// directory with it); its recorded incarnation stays.
    MemberUpdate {
        /// Echoed in the answer.
        request_id: u64,
        /// The member.
        id: u64,
        /// Where peers reach it now.
        peer_address: String,
        /// Where clients reach it now.
        client_address: String,
    },
}

/// A member of the cluster's configuration, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// Where peers reach it (empty if the configuration has no address for it).
    pub peer_address: String,
    /// Where clients reach it (empty if unknown).
    pub client_address: String,
    /// A voter (else a learner).
    pub voter: bool,
    /// Its data directory incarnation as the configuration records it (0: not recorded yet).
    pub incarnation: u64,
}

/// A member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct MemberStatus {
    /// Who and where.
    pub member: Member,
    /// Highest index durable on it and matching the leader's log (the leader: its own durable
    /// index).
    pub match_index: u64,
    /// Entries it is behind the leader's last index.
    pub lag_entries: u64,
    /// Milliseconds since the leader last heard from it (`None`: never, or it is the leader).
    pub last_contact_ms: Option<u64>,
    /// Whether the leader's connection to it is up (the leader itself: true).
    pub connected: bool,
}

/// A message from a node to a client.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Response {
    /// The append is acknowledged per its ack mode; its records hold these offsets.
    Appended {
        /// The append's id.
        request_id: u64,
        /// Offset of the batch's first record.
        base_offset: u64,
        /// Offset of its last record (`base_offset - 1` for an empty batch).
        last_offset: u64,
    },
    /// A request or subscription failed.
    Error {
        /// The request or subscription id (0: the connection).
        request_id: u64,
        /// Why.
        error: ClientError,
    },
    /// Committed batches of a subscription, back to back, in offset order.
    Batches {
        /// The subscription.
        subscription_id: u64,
        /// The batch bytes (travel raw, outside the archive).
        #[rkyv(with = Skip)]
        batches: Vec<u8>,
    },
    /// The node's status.
    StatusReply {
        /// The status request's id.
        request_id: u64,
        /// The answer.
        status: NodeStatus,
    },
    /// A snapshot stream starts (the reset marker).
    SnapshotBegin {
        /// The stream.
        subscription_id: u64,
        /// Which snapshot, from where.
        info: SnapshotInfo,
    },
    /// Records of a snapshot stream, in key order, continuing from the last frame.
    SnapshotRecords {
        /// The stream.
        subscription_id: u64,
        /// The records.
        records: Vec<SnapshotRecord>,
    },
    /// The snapshot stream is complete: the state below `cut_offset` is what it sent.
    SnapshotEnd {
        /// The stream.
        subscription_id: u64,
        /// Where the log continues.
        cut_offset: u64,
    },
    /// The snapshot `SnapshotNow` asked for is durable (or one covering as much already was).
    SnapshotTaken {
        /// The request's id.
        request_id: u64,
        /// The snapshot's index.
        index: u64,
        /// Where the log continues after it.
        cut_offset: u64,
    },
    /// The members, answered to `MemberList` by the leader.
    MemberListReply {
        /// The request's id.
        request_id: u64,
        /// The leader (this node).
        leader_id: u64,
        /// The commit index.
        commit_index: u64,
        /// Index of a configuration change not committed yet, if any.
        change_pending: Option<u64>,
        /// Every member, voters first.
        members: Vec<MemberStatus>,
    },
    /// A configuration change committed at `index`; the configuration is now `members`.
    MembershipChanged {
        /// The request's id.
        request_id: u64,
        /// The configuration entry's index.
        index: u64,
        /// The members after the change.
        members: Vec<Member>,
    },
    /// Leadership moved to `leader_id`.
    LeaderTransferred {
        /// The request's id.
        request_id: u64,
        /// The new leader.
        leader_id: u64,
        /// Its client address, if known.
        leader_address: Option<String>,
    },
    /// A subscription is registered; sent before any of its batches.
    Subscribed {
        /// The subscription.
        subscription_id: u64,
        /// The resolved start: the log start (`Earliest`), the end of committed data
        /// (`Latest`) or the offset asked for.
        start_offset: u64,
        /// One past the last committed offset this node could stream at that moment (a
        /// non-following reader stops there).
        end_offset: u64,
    },
    /// An idempotent producer's id and epoch: its batches carry them and a sequence.
    ProducerGranted {
        /// The request's id.
        request_id: u64,
        /// The producer id.
        producer_id: u64,
        /// Its epoch.
        epoch: i16,
    },
    /// The token is accepted: the connection holds `role` from now on.
    Authenticated {
        /// The request's id.
        request_id: u64,
        /// What the connection may do (`Admin` on a node without an auth file).
        role: AccessRole,
    },
}

/// Why a frame does not hold a valid client message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientProtoError {
    /// The frame type is not a message of this direction.
    #[error("frame type {0:?} is not a client protocol message in this direction")]
    WrongFrameType(FrameType),
    /// The frame's type and the archived message disagree, or a section is malformed.
    #[error("malformed client message: {0}")]
    Malformed(String),
    /// The archive failed validation.
    #[error("client message failed validation: {0}")]
    BadArchive(String),
    /// The message cannot be encoded (too large for a frame).
    #[error("client message cannot be encoded: {0}")]
    Encode(String),
}

impl Request {
    /// The frame type this request travels in.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Request::Append { .. } => FrameType::Append,
            Request::Subscribe { .. } => FrameType::Subscribe,
            Request::Credit { .. } => FrameType::Credit,
            Request::Status { .. } => FrameType::Status,
            Request::SubscribeSnapshot { .. } => FrameType::SubscribeSnapshot,
            Request::SnapshotNow { .. } => FrameType::SnapshotNow,
            Request::InitProducer { .. } => FrameType::InitProducer,
            Request::MemberList { .. } => FrameType::MemberList,
            Request::MemberAdd { .. } => FrameType::MemberAdd,
            Request::MemberPromote { .. } => FrameType::MemberPromote,
            Request::MemberRemove { .. } => FrameType::MemberRemove,
            Request::LeaderTransfer { .. } => FrameType::LeaderTransfer,
            Request::MemberUpdate { .. } => FrameType::MemberUpdate,
            Request::Authenticate { .. } => FrameType::Authenticate,
        }
    }

    /// The id an `Error` answering this request names: its request id, or for `Subscribe`,
    /// `SubscribeSnapshot` and `Credit` its subscription id.
    pub fn id(&self) -> u64 {
        match self {
            Request::Subscribe {
                subscription_id, ..
            }
            | Request::SubscribeSnapshot {
                subscription_id, ..
            }
            | Request::Credit {
                subscription_id, ..
            } => *subscription_id,
            Request::Append { request_id, .. }
            | Request::Status { request_id }
            | Request::SnapshotNow { request_id }
            | Request::InitProducer { request_id }
            | Request::MemberList { request_id }
            | Request::MemberAdd { request_id, .. }
            | Request::MemberPromote { request_id, .. }
            | Request::MemberRemove { request_id, .. }
            | Request::LeaderTransfer { request_id, .. }
            | Request::MemberUpdate { request_id, .. }
            | Request::Authenticate { request_id, .. } => *request_id,
        }
    }

    /// The least role that may make this request on a node with an auth file (`None`:
    /// `Authenticate`, which any connection may send).
    pub fn role_needed(&self) -> Option<AccessRole> {
        match self {
            Request::Authenticate { .. } => None,
            Request::Status { .. }
            | Request::Subscribe { .. }
            | Request::SubscribeSnapshot { .. }
            | Request::Credit { .. } => Some(AccessRole::Read),
            Request::Append { .. } | Request::InitProducer { .. } => Some(AccessRole::Produce),
            Request::SnapshotNow { .. }
            | Request::MemberList { .. }
            | Request::MemberAdd { .. }
            | Request::MemberPromote { .. }
            | Request::MemberRemove { .. }
            | Request::LeaderTransfer { .. }
            | Request::MemberUpdate { .. } => Some(AccessRole::Admin),
        }
    }
}

impl Response {
    /// The frame type this response travels in.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Response::Appended { .. } => FrameType::Appended,
            Response::Error { .. } => FrameType::Error,
            Response::Batches { .. } => FrameType::Batches,
            Response::StatusReply { .. } => FrameType::StatusReply,
            Response::Subscribed { .. } => FrameType::Subscribed,
            Response::SnapshotBegin { .. } => FrameType::SnapshotBegin,
            Response::SnapshotRecords { .. } => FrameType::SnapshotRecords,
            Response::SnapshotEnd { .. } => FrameType::SnapshotEnd,
            Response::SnapshotTaken { .. } => FrameType::SnapshotTaken,
            Response::ProducerGranted { .. } => FrameType::ProducerGranted,
            Response::MemberListReply { .. } => FrameType::MemberListReply,
            Response::MembershipChanged { .. } => FrameType::MembershipChanged,
            Response::LeaderTransferred { .. } => FrameType::LeaderTransferred,
            Response::Authenticated { .. } => FrameType::Authenticated,
        }
    }
}

/// Appends a frame holding `request` (sender id 0, as from any client) to `out`.
pub fn encode_request(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    request: &Request,
) -> Result<(), ClientProtoError> {
    match request {
        Request::Append {
            request_id,
            ack,
            batch,
        } => encode_append(out, cluster_id, *request_id, *ack, batch),
        _ => encode_request_parts(out, cluster_id, request, &[]),
    }
}

/// Appends an `Append` frame for `batch` without the caller having to own the batch in a
/// `Request` (a client resending a batch keeps it borrowed).
pub fn encode_append(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    request_id: u64,
    ack: AckMode,
    batch: &[u8],
) -> Result<(), ClientProtoError> {
    let request = Request::Append {
        request_id,
        ack,
        batch: Vec::new(),
    };
    encode_request_parts(out, cluster_id, &request, batch)
}

fn encode_request_parts(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    request: &Request,
    blob: &[u8],
) -> Result<(), ClientProtoError> {
    let meta = rkyv::to_bytes::<rancor::Error>(request)
        .map_err(|e| ClientProtoError::Encode(e.to_string()))?;
    let header = FrameHeader {
        frame_type: request.frame_type(),
        cluster_id,
        sender_id: CLIENT_SENDER_ID,
    };
    frame::encode_sectioned(out, header, &[blob], &meta)
        .map_err(|e| ClientProtoError::Encode(e.to_string()))
}

/// Appends a frame holding `response` from node `node_id` to `out`.
pub fn encode_response(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    node_id: u64,
    response: &Response,
) -> Result<(), ClientProtoError> {
    let blob: &[u8] = match response {
        Response::Batches { batches, .. } => batches,
        _ => &[],
    };
    encode_response_parts(out, cluster_id, node_id, response, &[blob])
}

/// Appends a `Batches` frame whose batches are given as separate slices (e.g. straight from the
/// log), so the node never concatenates them first.
pub fn encode_batches(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    node_id: u64,
    subscription_id: u64,
    batches: &[&[u8]],
) -> Result<(), ClientProtoError> {
    let response = Response::Batches {
        subscription_id,
        batches: Vec::new(),
    };
    encode_response_parts(out, cluster_id, node_id, &response, batches)
}

fn encode_response_parts(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    node_id: u64,
    response: &Response,
    blobs: &[&[u8]],
) -> Result<(), ClientProtoError> {
    let meta = rkyv::to_bytes::<rancor::Error>(response)
        .map_err(|e| ClientProtoError::Encode(e.to_string()))?;
    let header = FrameHeader {
        frame_type: response.frame_type(),
        cluster_id,
        sender_id: node_id,
    };
    frame::encode_sectioned(out, header, blobs, &meta)
        .map_err(|e| ClientProtoError::Encode(e.to_string()))
}

/// Decodes the request in a verified frame, keeping an `Append`'s batch bytes in the frame's own
/// buffer (no copy). The batch itself is the node's to validate (`Batch::decode`).
pub fn decode_request(frame: Frame) -> Result<Request, ClientProtoError> {
    let frame_type = frame.header.frame_type;
    if !matches!(
        frame_type,
        FrameType::Append
            | FrameType::Subscribe
            | FrameType::Credit
            | FrameType::Status
            | FrameType::SubscribeSnapshot
            | FrameType::SnapshotNow
            | FrameType::InitProducer
            | FrameType::MemberList
            | FrameType::MemberAdd
            | FrameType::MemberPromote
            | FrameType::MemberRemove
            | FrameType::LeaderTransfer
            | FrameType::MemberUpdate
            | FrameType::Authenticate
    ) {
        return Err(ClientProtoError::WrongFrameType(frame_type));
    }
    let (mut request, blob) = decode_sections::<Request>(frame.payload, |archived| {
        rkyv::deserialize::<Request, rancor::BoxedError>(archived)
    })?;
    check_type(frame_type, request.frame_type())?;
    match &mut request {
        Request::Append { batch, .. } => *batch = blob,
        _ => check_no_blob(&blob)?,
    }
    Ok(request)
}

/// Decodes the response in a verified frame; a `Batches` frame's bytes are checked to be whole
/// batches back to back (header and CRC of each), kept in the frame's buffer.
pub fn decode_response(frame: Frame) -> Result<Response, ClientProtoError> {
    let frame_type = frame.header.frame_type;
    if !matches!(
        frame_type,
        FrameType::Appended
            | FrameType::Error
            | FrameType::Batches
            | FrameType::StatusReply
            | FrameType::Subscribed
            | FrameType::SnapshotBegin
            | FrameType::SnapshotRecords
            | FrameType::SnapshotEnd
            | FrameType::SnapshotTaken
            | FrameType::ProducerGranted
            | FrameType::MemberListReply
            | FrameType::MembershipChanged
            | FrameType::LeaderTransferred
            | FrameType::Authenticated
    ) {
        return Err(ClientProtoError::WrongFrameType(frame_type));
    }
    let (mut response, blob) = decode_sections::<Response>(frame.payload, |archived| {
        rkyv::deserialize::<Response, rancor::BoxedError>(archived)
    })?;
    check_type(frame_type, response.frame_type())?;
    match &mut response {
        Response::Batches { batches, .. } => {
            for batch in split_batches(&blob) {
                batch.map_err(|e| ClientProtoError::Malformed(format!("batches frame: {e}")))?;
            }
            *batches = blob;
        }
        _ => check_no_blob(&blob)?,
    }
    Ok(response)
}

fn decode_sections<T: rkyv::Archive>(
    mut payload: Vec<u8>,
    deserialize: impl FnOnce(&T::Archived) -> Result<T, rancor::BoxedError>,
) -> Result<(T, Vec<u8>), ClientProtoError>
where
    T::Archived:
        for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rancor::BoxedError>>,
{
    let (blobs_len, meta) =
        frame::split_sectioned(&payload).map_err(ClientProtoError::Malformed)?;
    let archived = rkyv::access::<T::Archived, rancor::BoxedError>(&meta)
        .map_err(|e| ClientProtoError::BadArchive(e.to_string()))?;
    let value = deserialize(archived).map_err(|e| ClientProtoError::BadArchive(e.to_string()))?;
    payload.truncate(blobs_len);
    Ok((value, payload))
}

fn check_type(frame_type: FrameType, message_type: FrameType) -> Result<(), ClientProtoError> {
    if frame_type == message_type {
        Ok(())
    } else {
        Err(ClientProtoError::Malformed(format!(
            "{frame_type:?} frame holds a {message_type:?} message"
        )))
    }
}

fn check_no_blob(blob: &[u8]) -> Result<(), ClientProtoError> {
    if blob.is_empty() {
        Ok(())
    } else {
        Err(ClientProtoError::Malformed(format!(
            "{} unexpected raw bytes",
            blob.len()
        )))
    }
}

/// Splits batches stored back to back into one slice per batch, checking each batch's header and
/// CRC; stops after the first error.
pub fn split_batches(bytes: &[u8]) -> impl Iterator<Item = Result<&[u8], BatchError>> {
    let mut rest = bytes;
    let mut failed = false;
    std::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        match check_frame(rest) {
            Ok(header) => {
                let (batch, tail) = rest.split_at(header.total_bytes);
                rest = tail;
                Some(Ok(batch))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}
