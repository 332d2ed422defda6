//! The state a node materialises from its committed log, the KRaft way: the latest record per
//! key. A record with a key and an empty value is a delete; it stays in the state as a tombstone
//! (empty value) so a reader of a snapshot sees the delete. Records without a key do not enter
//! the state. Each key keeps the offset and timestamp of the record that set it, so a consumer
//! reading the state from a snapshot gets the records it would have seen last in the log. Also
//! the snapshot payload codec (the log crate's snapshot file wraps it in a checksummed header),
//! and [`PayloadHead`], which decodes a payload's records one at a time for streaming.
//!
//! Payload layout (little-endian): `u64 magic "RLSTATE2"`, `u64 next_offset` (where the log
//! continues after the snapshot), `u32 membership_bytes`, membership (`Membership::encode`),
//! `u64 key_count`, then per key in key order `u32 key_bytes, key, u64 offset, u64 timestamp_ms,
//! u32 value_bytes, value`. Payloads of the first format ("RLSTATE1": no offset and timestamp)
//! still load; their records carry the snapshot's `next_offset - 1` and timestamp 0.

use std::collections::BTreeMap;

use raftline_log::batch::{entry_batches, for_each_keyed_in, KeyedRecord};
use raftline_log::BatchError;
use raftline_replicator::message::Membership;

const MAGIC_V1: u64 = u64::from_le_bytes(*b"RLSTATE1");
const MAGIC: u64 = u64::from_le_bytes(*b"RLSTATE2");
/// Bytes a key costs beyond its key and value (map node, lengths, offset, timestamp): an
/// estimate for the bound.
const KEY_OVERHEAD_BYTES: usize = 64;

/// The latest record of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The value (empty: deleted, a tombstone).
    pub value: Vec<u8>,
    /// Offset of the record that set it.
    pub offset: u64,
    /// Its producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The latest record per key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyState {
    values: BTreeMap<Vec<u8>, Held>,
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

impl PayloadError {
    /// The payload ends before the record or head it should hold.
    pub fn truncated() -> PayloadError {
        PayloadError("truncated")
    }
}

impl KeyState {
    /// Applies every keyed record of a committed entry in order: its batch, or each batch of a
    /// run (its bytes verified where they entered this node: see
    /// `raftline_log::batch::for_each_keyed_in`).
    pub fn apply(&mut self, entry_bytes: &[u8]) -> Result<(), BatchError> {
        for batch in entry_batches(entry_bytes) {
            let (_, range) = batch?;
            for_each_keyed_in(&entry_bytes[range], |r: KeyedRecord<'_>| {
                let held = Held {
                    value: r.value.to_vec(),
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                };
                self.set(r.key.to_vec(), held)
            })?;
        }
        Ok(())
    }

    fn set(&mut self, key: Vec<u8>, held: Held) {
        let added = key.len() + held.value.len() + KEY_OVERHEAD_BYTES;
        let key_bytes = key.len();
        if let Some(old) = self.values.insert(key, held) {
            self.bytes -= key_bytes + old.value.len() + KEY_OVERHEAD_BYTES;
        }
        self.bytes += added;
    }

    /// The live value of `key` (`None` if never set or deleted).
    #[cfg(test)] // the node serves no key lookups; tests check the state
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values
            .get(key)
            .map(|h| h.value.as_slice())
            .filter(|v| !v.is_empty())
    }

    /// Whether `key` holds a tombstone.
    #[cfg(test)] // the node serves no key lookups; tests check the state
    pub fn is_deleted(&self, key: &[u8]) -> bool {
        self.values.get(key).is_some_and(|h| h.value.is_empty())
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

/// The part of a payload before its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadHead {
    /// Offset of the first record after the snapshot.
    pub next_offset: u64,
    /// Members as of the snapshot's index.
    pub membership: Membership,
    /// Records (keys, tombstones included) that follow.
    pub record_count: u64,
    /// Payload bytes the head takes.
    pub head_bytes: usize,
    /// Whether records carry their offset and timestamp (format 2).
    with_origin: bool,
}

/// One record of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadRecord {
    /// The key.
    pub key: Vec<u8>,
    /// The latest record of the key.
    pub held: Held,
}

/// Little-endian reads over a byte slice that say "truncated" instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        let end = self.at.checked_add(n).ok_or(PayloadError("truncated"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(PayloadError("truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn u64(&mut self) -> Result<u64, PayloadError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<usize, PayloadError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }
}

impl PayloadHead {
    /// Decodes the head at the start of `bytes` (`Ok(None)`: `bytes` is too short to hold it).
    pub fn decode(bytes: &[u8]) -> Result<Option<PayloadHead>, PayloadError> {
        let mut r = Reader { bytes, at: 0 };
        let head = (|| {
            let with_origin = match r.u64()? {
                MAGIC => true,
                MAGIC_V1 => false,
                _ => return Err(PayloadError("bad magic")),
            };
            let next_offset = r.u64()?;
            let members_len = r.u32()?;
            let membership =
                Membership::decode(r.take(members_len)?).ok_or(PayloadError("bad membership"))?;
            let record_count = r.u64()?;
            Ok(PayloadHead {
                next_offset,
                membership,
                record_count,
                head_bytes: r.at,
                with_origin,
            })
        })();
        match head {
            Err(PayloadError("truncated")) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Decodes the record at the start of `bytes`: the record and the bytes it took
    /// (`Ok(None)`: `bytes` is too short to hold it).
    pub fn decode_record(
        &self,
        bytes: &[u8],
    ) -> Result<Option<(PayloadRecord, usize)>, PayloadError> {
        let mut r = Reader { bytes, at: 0 };
        let record = (|| {
            let key_len = r.u32()?;
            let key = r.take(key_len)?.to_vec();
            let (offset, timestamp_ms) = if self.with_origin {
                (r.u64()?, r.u64()?)
            } else {
                (self.next_offset.saturating_sub(1), 0)
            };
            let value_len = r.u32()?;
            let value = r.take(value_len)?.to_vec();
            Ok(PayloadRecord {
                key,
                held: Held {
                    value,
                    offset,
                    timestamp_ms,
                },
            })
        })();
        match record {
            Ok(record) => Ok(Some((record, r.at))),
            Err(PayloadError("truncated")) => Ok(None),
            Err(e) => Err(e),
        }
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
        for (key, held) in &state.values {
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&held.offset.to_le_bytes());
            out.extend_from_slice(&held.timestamp_ms.to_le_bytes());
            out.extend_from_slice(&(held.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&held.value);
        }
        out
    }

    /// Reads a payload written by [`SnapshotPayload::encode`] (or by the first format).
    pub fn decode(bytes: &[u8]) -> Result<SnapshotPayload, PayloadError> {
        let head = PayloadHead::decode(bytes)?.ok_or(PayloadError("truncated"))?;
        let mut at = head.head_bytes;
        let mut state = KeyState::default();
        for _ in 0..head.record_count {
            let (record, used) = head
                .decode_record(&bytes[at..])?
                .ok_or(PayloadError("truncated"))?;
            at += used;
            state.set(record.key, record.held);
        }
        if at != bytes.len() {
            return Err(PayloadError("trailing bytes"));
        }
        Ok(SnapshotPayload {
            next_offset: head.next_offset,
            membership: head.membership,
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
            addresses: [(
                4,
                raftline_replicator::MemberAddress {
                    peer: "10.0.0.4:7301".into(),
                    client: "10.0.0.4:7300".into(),
                },
            )]
            .into(),
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

    #[test]
    fn each_key_keeps_the_offset_and_timestamp_of_its_latest_record_through_a_payload() {
        let mut state = KeyState::default();
        let mut batch = Batch::encode(&[
            Record {
                timestamp_ms: 7,
                ..record(Some("a"), "1")
            },
            record(None, "x"),
            Record {
                timestamp_ms: 9,
                ..record(Some("a"), "2")
            },
        ])
        .unwrap();
        batch.stamp(100, 1, 1);
        state.apply(batch.as_bytes()).unwrap();
        let membership = Membership {
            voters: vec![1],
            learners: vec![],
            ..Default::default()
        };
        let bytes = SnapshotPayload::encode(103, &membership, &state);
        let head = PayloadHead::decode(&bytes).unwrap().unwrap();
        assert_eq!((head.next_offset, head.record_count), (103, 1));
        let (first, used) = head
            .decode_record(&bytes[head.head_bytes..])
            .unwrap()
            .unwrap();
        assert_eq!(head.head_bytes + used, bytes.len());
        assert_eq!(
            first,
            PayloadRecord {
                key: b"a".to_vec(),
                held: Held {
                    value: b"2".to_vec(),
                    offset: 102,
                    timestamp_ms: 9
                }
            }
        );
        assert_eq!(
            head.decode_record(&bytes[head.head_bytes..bytes.len() - 1])
                .unwrap(),
            None,
            "a record cut short is not yet there"
        );
    }

    #[test]
    fn a_payload_of_the_first_format_still_loads() {
        let members = Membership {
            voters: vec![1],
            learners: vec![],
            ..Default::default()
        };
        let encoded = members.encode();
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"RLSTATE1");
        v1.extend_from_slice(&50u64.to_le_bytes());
        v1.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        v1.extend_from_slice(&encoded);
        v1.extend_from_slice(&1u64.to_le_bytes());
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(b"k");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(b"v");
        let back = SnapshotPayload::decode(&v1).unwrap();
        assert_eq!(back.next_offset, 50);
        assert_eq!(back.state.get(b"k"), Some(&b"v"[..]));
        assert_eq!(back.state.values[&b"k".to_vec()].offset, 49);
    }
}
