//! Shared by the core's scenario tests: a core over a simulated disk, entries, and carrying out
//! a `Ready` with instant durability.
#![allow(dead_code)] // each test crate uses its own part

use std::sync::Arc;

use raftline_replicator::sim::disk::SimDisk;
use raftline_replicator::{Entry, EntryKind, Message, Raft, Ready};

/// A core over a simulated disk.
pub type Node = Raft<SimDisk>;

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Command,
        payload: Arc::from(&b"x"[..]),
    }
}

/// Writes everything in `rd` to the node's disk, makes it durable at once and returns its
/// messages.
pub fn persist_all(raft: &mut Node, rd: Ready) -> Vec<Message> {
    if let Some(hs) = rd.hard_state {
        raft.storage_mut().write_hard_state(hs);
    }
    if !rd.entries.is_empty() {
        raft.storage_mut().write_entries(rd.entries.clone());
    }
    if raft.storage_mut().start_fsync() {
        raft.storage_mut().complete_fsync();
    }
    if let Some(hs) = rd.hard_state {
        raft.hard_state_durable(hs);
    }
    if let Some(last) = rd.entries.last() {
        raft.log_durable(last.index, last.term);
    }
    let mut msgs = rd.messages;
    let released = raft.ready();
    assert_eq!(
        released.hard_state, None,
        "nothing new to persist after an acknowledgement"
    );
    msgs.extend(released.messages);
    msgs
}
