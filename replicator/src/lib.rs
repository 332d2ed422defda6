//! raftline's Raft: a sans-I/O consensus core (messages and ticks in, actions out) and the
//! deterministic simulator that tests it under faults.

pub mod config;
pub mod message;
pub mod progress;
pub mod raft;
pub mod raft_log;
pub mod sim;

pub use config::{Config, ConfigError, Mutation};
pub use message::{
    AppendReject, Entry, EntryKind, HardState, Index, Message, MessageBody, NodeId, Term,
};
pub use raft::{ProposeError, Raft, Ready, Role, TransferError};
