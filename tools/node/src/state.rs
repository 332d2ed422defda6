//! The state a node materialises from its committed log, the KRaft way: the latest value per
//! key. A record with a key and an empty value is a delete; it stays in the state as a tombstone
//! (empty value) so a reader of a snapshot sees the delete. Records without a key do not enter
//! the state. Also the snapshot payload codec (the log crate's snapshot file wraps it in a
//! checksummed header).
//!
//! Payload layout (little-endian): `u64 magic "RLSTATE1"`, `u64 next_offset` (where the log
//! continues after the snapshot), `u32 membership_bytes`, membership (`Membership::encode`),
//! `u64 key_count`, then per key in key order `u32 key_bytes, key, u32 value_bytes, value`.

use std::collections::BTreeMap;

use raftline_log::batch::{entry_batches, for_each_keyed_in};
use raftline_log::BatchError;
use raftline_replicator::message::Membership;

const MAGIC: u64 = u64::from_le_bytes(*b"RLSTATE1");
/// Bytes a key costs beyond its key and value (map node, lengths): an estimate for the bound.
const KEY_OVERHEAD_BYTES: usize = 64;

/// The latest value per key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyState {
    values: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Keys + values + per-key overhead: what the memory bound is checked against.
    bytes: usize,
}

/// What a snapshot payload holds besides the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPayload {
    /// Offset of the first record after the snapshot.
    pub next_offset: u64,
    /// Members as of the snapshot's index.
    pub membership: Membership,
    /// The state.
    pub state: KeyState,
}

/// A snapshot payload that does not decode (its file's checksum held: a writer bug).
#[derive(Debug, thiserror::Error)]
#[error("snapshot payload is malformed: {0}")]
pub struct PayloadError(&'static str);

impl KeyState {
    /// Applies every keyed record of a committed entry in order: its batch, or each batch of a
    /// run (its bytes verified where they entered this node: see
    /// `raftline_log::batch::for_each_keyed_in`).
    pub fn apply(&mut self, entry_bytes: &[u8]) -> Result<(), BatchError> {
        for batch in entry_batches(entry_bytes) {
            let (_, range) = batch?;
            for_each_keyed_in(&entry_bytes[range], |key, value| {
                self.set(key.to_vec(), value.to_vec())
            })?;
        }
        Ok(())
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let added = key.len() + value.len() + KEY_OVERHEAD_BYTES;
        let key_bytes = key.len();
        if let Some(old) = self.values.insert(key, value) {
            self.bytes -= key_bytes + old.len() + KEY_OVERHEAD_BYTES;
        }
        self.bytes += added;
    }

    /// The live value of `key` (`None` if never set or deleted).
    #[cfg(test)] // the node serves no key lookups; tests check the state
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values
            .get(key)
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }

    /// Whether `key` holds a tombstone.
    #[cfg(test)] // the node serves no key lookups; tests check the state
    pub fn is_deleted(&self, key: &[u8]) -> bool {
        self.values.get(key).is_some_and(Vec::is_empty)
    }

    /// Keys held, tombstones included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Memory the state accounts for (keys, values, an estimate of the per-key overhead).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl SnapshotPayload {
    /// Serialises the payload (one pass over the state).
    pub fn encode(next_offset: u64, membership: &Membership, state: &KeyState) -> Vec<u8> {
        let members = membership.encode();
        let mut out = Vec::with_capacity(28 + members.len() + state.bytes);
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&next_offset.to_le_bytes());
        out.extend_from_slice(&(members.len() as u32).to_le_bytes());
        out.extend_from_slice(&members);
        out.extend_from_slice(&(state.values.len() as u64).to_le_bytes());
        for (key, value) in &state.values {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Reads a payload written by [`SnapshotPayload::encode`].
    pub fn decode(bytes: &[u8]) -> Result<SnapshotPayload, PayloadError> {
        let mut at = 0;
        let mut take = |n: usize| -> Result<&[u8], PayloadError> {
            let s = bytes.get(at..at + n).ok_or(PayloadError("truncated"))?;
            at += n;
            Ok(s)
        };
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize;
        if u64_of(take(8)?) != MAGIC {
            return Err(PayloadError("bad magic"));
        }
        let next_offset = u64_of(take(8)?);
        let members_len = u32_of(take(4)?);
        let membership =
            Membership::decode(take(members_len)?).ok_or(PayloadError("bad membership"))?;
        let count = u64_of(take(8)?);
        let mut state = KeyState::default();
        for _ in 0..count {
            let key_len = u32_of(take(4)?);
            let key = take(key_len)?.to_vec();
            let value_len = u32_of(take(4)?);
            let value = take(value_len)?.to_vec();
            state.set(key, value);
        }
        if at != bytes.len() {
            return Err(PayloadError("trailing bytes"));
        }
        Ok(SnapshotPayload {
            next_offset,
            membership,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_log::{Batch, Record};

    fn record(key: Option<&str>, value: &str) -> Record {
        Record {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.as_bytes().to_vec(),
            timestamp_ms: 0,
            headers: vec![],
        }
    }

    #[test]
    fn the_latest_value_wins_a_tombstone_deletes_and_keyless_records_are_ignored() {
        let mut state = KeyState::default();
        let batch = Batch::encode(&[
            record(Some("a"), "1"),
            record(Some("b"), "2"),
            record(None, "no key"),
            record(Some("a"), "3"),
            record(Some("b"), ""),
        ])
        .unwrap();
        state.apply(batch.as_bytes()).unwrap();
        assert_eq!(state.get(b"a"), Some(&b"3"[..]));
        assert_eq!(state.get(b"b"), None);
        assert!(state.is_deleted(b"b"), "the tombstone is kept");
        assert_eq!(state.len(), 2);
        assert_eq!(state.bytes(), 1 + 1 + 1 + 2 * KEY_OVERHEAD_BYTES);
    }

    #[test]
    fn a_payload_round_trips_and_a_truncated_one_is_refused() {
        let mut state = KeyState::default();
        let batch = Batch::encode(&[record(Some("k"), "v"), record(Some("gone"), "")]).unwrap();
        state.apply(batch.as_bytes()).unwrap();
        let membership = Membership {
            voters: vec![1, 2, 3],
            learners: vec![4],
        };
        let bytes = SnapshotPayload::encode(42, &membership, &state);
        let back = SnapshotPayload::decode(&bytes).unwrap();
        assert_eq!(
            back,
            SnapshotPayload {
                next_offset: 42,
                membership,
                state
            }
        );
        for len in 0..bytes.len() {
            assert!(SnapshotPayload::decode(&bytes[..len]).is_err(), "len {len}");
        }
    }
}
