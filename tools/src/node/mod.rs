//! The node driver: wires the log, the Raft core and the network together on the raft thread.
//!
//! - [`identity`]: the data directory's owner (cluster, node), checked at every start.
//! - [`storage`]: Raft entries ↔ log batches and the core's `Storage` over the log.
//! - [`replica`]: the core + log + hard state, driven without a network (testable in memory).
//! - [`sessions`]: client appends awaiting acknowledgement, subscriptions streaming under credit.
//! - [`state`]: the key → latest value state materialised from the log, its snapshot payload.
//! - [`snapshots`]: taking snapshots, compacting the log, installing a leader's snapshot.
//! - [`raft_thread`]: the raft thread's event loop over the `Net`.
//! - [`metrics`]: the Prometheus endpoint's data and renderer.

pub mod identity;
pub mod metrics;
pub mod raft_thread;
pub mod replica;
pub mod sessions;
pub mod snapshots;
pub mod state;
pub mod storage;

#[cfg(test)]
mod cluster_in_memory;
