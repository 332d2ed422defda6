//! The simulated state machine: a running hash of every applied entry, so two nodes (and a
//! snapshot and the log it replaces) can be compared by content in O(1).

use crate::message::{Entry, EntryKind, Index, Term};

/// What a node has applied: through `applied`, summarised by `hash`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SimStateMachine {
    /// Last index applied (or restored from a snapshot).
    pub applied: Index,
    /// Running hash of the applied entries' contents, in order.
    pub hash: u64,
}

/// Bytes of a snapshot's header: applied index, term, hash.
const HEADER_BYTES: usize = 24;

/// The running hash after applying `e` to a state with hash `hash`.
pub fn apply_hash(hash: u64, e: &Entry) -> u64 {
    let mut id = [0u8; 8];
    let n = e.payload.len().min(8);
    id[..n].copy_from_slice(&e.payload[..n]);
    let kind = match e.kind {
        EntryKind::Command => 1,
        EntryKind::Noop => 2,
        EntryKind::Config => 3,
    };
    (hash.rotate_left(7) ^ u64::from_le_bytes(id) ^ (e.index << 8) ^ kind)
        .wrapping_mul(0x0000_0100_0000_01b3)
}

impl SimStateMachine {
    /// Applies the next entry.
    pub fn apply(&mut self, e: &Entry) {
        assert_eq!(e.index, self.applied + 1, "entries are applied in order");
        self.applied = e.index;
        self.hash = apply_hash(self.hash, e);
    }

    /// The snapshot bytes of this state (whose last entry has `term`), padded with
    /// `padding_bytes` so snapshots travel in several chunks.
    pub fn snapshot_bytes(&self, term: Term, padding_bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + padding_bytes);
        out.extend_from_slice(&self.applied.to_le_bytes());
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&self.hash.to_le_bytes());
        out.extend((0..padding_bytes).map(|i| i as u8));
        out
    }

    /// The state a snapshot's bytes hold, and the term of its last entry.
    pub fn from_snapshot(bytes: &[u8]) -> (SimStateMachine, Term) {
        assert!(bytes.len() >= HEADER_BYTES, "snapshot too short");
        let word =
            |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let state = SimStateMachine {
            applied: word(0),
            hash: word(2),
        };
        (state, word(1))
    }
}
