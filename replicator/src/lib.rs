//! raftline's Raft: a sans-I/O consensus core (messages and ticks in, actions out) and the
//! deterministic simulator that tests it under faults.
//!
//! A driver feeds [`Raft`] (reading its durable log through the driver's [`Storage`]) with `tick`, `step`, `propose` and the durability acknowledgements
//! (`hard_state_durable`, `log_durable`), and carries out each [`Ready`]: persist the hard state
//! and entries, send the messages (the core holds back any whose safety needs durable state),
//! apply the committed entries. [`sim`] is such a driver over a simulated network and disks;
//! `examples/simulate.rs` runs it from the command line.

pub mod config;
pub mod membership;
pub mod message;
pub mod progress;
pub mod raft;
pub mod raft_log;
pub mod refusal;
pub mod sim;
pub mod storage;

pub use config::{Config, ConfigError, Mutation};
pub use membership::{MembershipChange, MembershipError};
pub use message::{
    AppendReject, Entry, EntryKind, HardState, Index, MemberAddress, Membership, Message,
    MessageBody, NodeId, SnapshotMeta, Term,
};
pub use progress::{Progress, ProgressState};
pub use raft::{
    InitError, ProposeError, Raft, ReadError, ReadState, Ready, Role, SnapshotChunk, TransferError,
};
pub use refusal::{Refusal, RefusalReason, TERM_JUMP_MAX, TERM_MAX};
pub use storage::{Storage, StorageError};
