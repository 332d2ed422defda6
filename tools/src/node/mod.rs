//! The node driver: wires the log, the Raft core and the network together on the raft thread.
//!
//! - [`identity`]: the data directory's owner (cluster, node), checked at every start.
//! - [`storage`]: Raft entries ↔ log batches and the core's `Storage` over the log.
//! - [`replica`]: the core + log + hard state, driven without a network (testable in memory).

pub mod identity;
pub mod replica;
pub mod storage;

#[cfg(test)]
mod cluster_in_memory;
