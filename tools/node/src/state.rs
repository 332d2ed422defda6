//! The state a node materialises from its committed log, the KRaft way: the latest record per
//! key. A record with a key and an empty value is a delete; it stays in the state as a tombstone
//! (empty value) so a reader of a snapshot sees the delete, until `tombstone_retain_offsets`
//! records follow it. Records without a key do not enter the state. Each key keeps the offset and timestamp of the record that set it, so a consumer
//! reading the state from a snapshot gets the records it would have seen last in the log. Also
//! the snapshot payload codec (the log crate's snapshot file wraps it in a checksummed header),
//! and [`PayloadHead`], which decodes a payload's records one at a time for streaming.
//!
//! Payload layout (little-endian): `u64 magic "RLSTATE2"`, `u64 next_offset` (where the log
//! continues after the snapshot), `u32 membership_bytes`, membership (`Membership::encode`),
//! `u64 key_count`, then per key in key order `u32 key_bytes, key, u64 offset, u64 timestamp_ms,
//! u32 value_bytes, value`, then the idempotent producers' table (`ProducerTable::encode`, its
//! own section, see `producers.rs`). Payloads of earlier formats still load: "RLSTATE2" has no
//! producers' section (an empty table), "RLSTATE1" neither, nor offset and timestamp (its
//! records carry the snapshot's `next_offset - 1` and timestamp 0).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;

use raftline_log::batch::{entry_batches, for_each_keyed_in, KeyedRecord};
use raftline_log::BatchError;
use raftline_replicator::message::Membership;

use crate::producers::ProducerTable;

const MAGIC_V1: u64 = u64::from_le_bytes(*b"RLSTATE1");
const MAGIC_V2: u64 = u64::from_le_bytes(*b"RLSTATE2");
const MAGIC: u64 = u64::from_le_bytes(*b"RLSTATE3");
/// Bytes a key costs beyond its key and value (map node, shared pointers, lengths, offset,
/// timestamp): an estimate for the bound.
const KEY_OVERHEAD_BYTES: usize = 64;
/// Payload bytes of one record beyond its key and value: key length, offset, timestamp, value
/// length.
const RECORD_FRAME_BYTES: u64 = 4 + 8 + 8 + 4;

/// The latest record of one key. Its value is shared: a snapshot being written and the live
/// state hold the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The value (empty: deleted, a tombstone).
    pub value: Arc<[u8]>,
    /// Offset of the record that set it.
    pub offset: u64,
    /// Its producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// The latest record per key, in a persistent (copy-on-write) ordered map: [`KeyState::frozen`]
/// is an O(1) copy a snapshot writer serialises on its own thread while this state keeps
/// changing. A change after a freeze copies only the map nodes on its path (keys and values are
/// shared pointers, never copied), so a snapshot in flight costs at most one more copy of the
/// map's nodes, never of the data.
#[derive(Debug, Clone)]
pub struct KeyState {
    values: imbl::OrdMap<Arc<[u8]>, Held>,
    /// Keys + values + per-key overhead: what the memory bound is checked against.
    bytes: usize,
    /// Payload bytes the records would take in a snapshot.
    records_bytes: u64,
    /// Tombstones in offset order (with their key), to expire them; an entry whose key was set
    /// again since is skipped when it comes up.
    tombstones: VecDeque<(u64, Arc<[u8]>)>,
    /// A tombstone at offset `o` leaves the state once `tombstone_retain_offsets` records follow
    /// it (the log's next offset is past `o + tombstone_retain_offsets`; `None`: kept forever).
    tombstone_retain_offsets: Option<u64>,
}

/// Two states are equal when they hold the same records (how each came to expire its
/// tombstones is no part of the state).
impl PartialEq for KeyState {
    fn eq(&self, other: &KeyState) -> bool {
        self.values == other.values
    }
}

impl Eq for KeyState {}

/// A state as of one index, for a snapshot writer on another thread.
#[derive(Debug, Clone)]
pub struct FrozenState {
    values: imbl::OrdMap<Arc<[u8]>, Held>,
    records_bytes: u64,
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
    /// The idempotent producers' dedup table as of the snapshot's index.
    pub producers: ProducerTable,
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
    /// An empty state whose tombstones expire `tombstone_retain_offsets` offsets after their
    /// delete (`None`: never).
    pub fn new(tombstone_retain_offsets: Option<u64>) -> KeyState {
        KeyState {
            values: imbl::OrdMap::new(),
            bytes: 0,
            records_bytes: 0,
            tombstones: VecDeque::new(),
            tombstone_retain_offsets,
        }
    }

    /// Applies every keyed record of a committed entry in order: its batch, or each batch of a
    /// run (its bytes verified where they entered this node: see
    /// `raftline_log::batch::for_each_keyed_in`); then expires the tombstones the log has moved
    /// past.
    pub fn apply(&mut self, entry_bytes: &[u8]) -> Result<(), BatchError> {
        let mut next_offset = None;
        for batch in entry_batches(entry_bytes) {
            let (header, range) = batch?;
            next_offset = Some(header.next_offset());
            for_each_keyed_in(&entry_bytes[range], |r: KeyedRecord<'_>| {
                let held = Held {
                    value: Arc::from(r.value),
                    offset: r.offset,
                    timestamp_ms: r.timestamp_ms,
                };
                self.set(Arc::from(r.key), held)
            })?;
        }
        if let Some(next_offset) = next_offset {
            self.expire_tombstones(next_offset);
        }
        Ok(())
    }

    fn set(&mut self, key: Arc<[u8]>, held: Held) {
        let (key_len, value_len) = (key.len(), held.value.len());
        if held.value.is_empty() {
            self.tombstones.push_back((held.offset, Arc::clone(&key)));
        }
        if let Some(old) = self.values.insert(key, held) {
            self.forget(key_len, old.value.len());
        }
        self.bytes += key_len + value_len + KEY_OVERHEAD_BYTES;
        self.records_bytes += RECORD_FRAME_BYTES + (key_len + value_len) as u64;
    }

    fn forget(&mut self, key_len: usize, value_len: usize) {
        self.bytes -= key_len + value_len + KEY_OVERHEAD_BYTES;
        self.records_bytes -= RECORD_FRAME_BYTES + (key_len + value_len) as u64;
    }

    /// Drops the tombstones older than the retention at a log whose next offset is
    /// `next_offset`. Deterministic (a function of the log alone), so every node's snapshot at
    /// one index holds the same records.
    fn expire_tombstones(&mut self, next_offset: u64) {
        let Some(retain) = self.tombstone_retain_offsets else {
            return;
        };
        while let Some((offset, _)) = self.tombstones.front() {
            if offset.saturating_add(retain) >= next_offset {
                break;
            }
            let (offset, key) = self.tombstones.pop_front().expect("front exists");
            let current = self
                .values
                .get(&key)
                .is_some_and(|h| h.offset == offset && h.value.is_empty());
            if current {
                self.values.remove(&key);
                self.forget(key.len(), 0);
            }
        }
    }

    /// The state as it is now, for a snapshot writer (O(1): the map is shared until changed).
    pub fn frozen(&self) -> FrozenState {
        FrozenState {
            values: self.values.clone(),
            records_bytes: self.records_bytes,
        }
    }

    /// Whether `key` is held (a live value or a tombstone).
    pub fn holds(&self, key: &[u8]) -> bool {
        self.values.contains_key(key)
    }

    /// The live value of `key` (`None` if never set or deleted).
    #[cfg(test)] // the node serves no key lookups; tests check the state
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.values
            .get(key)
            .map(|h| &h.value[..])
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
    /// Whether records carry their offset and timestamp (formats 2 and 3).
    with_origin: bool,
    /// Whether the producers' table follows the records (format 3).
    with_producers: bool,
}

/// One record of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadRecord {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty: a tombstone).
    pub value: Vec<u8>,
    /// Offset of the record that set it.
    pub offset: u64,
    /// Its producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
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

/// Bytes [`SnapshotPayload::read_from`] reads at a time.
pub const READ_PIECE_BYTES: usize = 1 << 20;

/// A stream read in pieces into a buffer that keeps only what is not decoded yet.
struct Pieces<'a> {
    input: &'a mut dyn Read,
    buf: Vec<u8>,
    /// Bytes of `buf` decoded.
    at: usize,
}

impl Pieces<'_> {
    fn unread(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    /// Drops the decoded bytes.
    fn compact(&mut self) {
        self.buf.drain(..self.at);
        self.at = 0;
    }

    /// Reads another piece (at least what is unread again, so a record longer than a piece
    /// still fits); `truncated` at the end of the stream.
    fn more(&mut self) -> Result<(), PayloadError> {
        self.compact();
        let want = READ_PIECE_BYTES.max(self.buf.len());
        let read = (&mut *self.input)
            .take(want as u64)
            .read_to_end(&mut self.buf)
            .map_err(|_| PayloadError("unreadable"))?;
        if read == 0 {
            return Err(PayloadError("truncated"));
        }
        Ok(())
    }
}

impl PayloadHead {
    /// Decodes the head at the start of `bytes` (`Ok(None)`: `bytes` is too short to hold it).
    pub fn decode(bytes: &[u8]) -> Result<Option<PayloadHead>, PayloadError> {
        let mut r = Reader { bytes, at: 0 };
        let head = (|| {
            let (with_origin, with_producers) = match r.u64()? {
                MAGIC => (true, true),
                MAGIC_V2 => (true, false),
                MAGIC_V1 => (false, false),
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
                with_producers,
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
                value,
                offset,
                timestamp_ms,
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
    /// Bytes [`SnapshotPayload::write`] writes for `state` and the producers' table encoded as
    /// `producers` ([`ProducerTable::encode`]).
    pub fn encoded_len(membership: &Membership, state: &FrozenState, producers: &[u8]) -> u64 {
        8 + 8
            + 4
            + membership.encode().len() as u64
            + 8
            + state.records_bytes
            + producers.len() as u64
    }

    /// Serialises the payload to `out` (one pass over the state, in key order, then the
    /// producers' table as `producers` holds it encoded). Runs on the snapshot writer's
    /// thread: `state` is a frozen copy.
    pub fn write(
        out: &mut dyn Write,
        next_offset: u64,
        membership: &Membership,
        state: &FrozenState,
        producers: &[u8],
    ) -> std::io::Result<()> {
        let members = membership.encode();
        out.write_all(&MAGIC.to_le_bytes())?;
        out.write_all(&next_offset.to_le_bytes())?;
        out.write_all(&(members.len() as u32).to_le_bytes())?;
        out.write_all(&members)?;
        out.write_all(&(state.values.len() as u64).to_le_bytes())?;
        for (key, held) in &state.values {
            out.write_all(&(key.len() as u32).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&held.offset.to_le_bytes())?;
            out.write_all(&held.timestamp_ms.to_le_bytes())?;
            out.write_all(&(held.value.len() as u32).to_le_bytes())?;
            out.write_all(&held.value)?;
        }
        out.write_all(producers)
    }

    /// Reads a payload written by [`SnapshotPayload::write`] (or by the first format) into a
    /// state whose tombstones expire after `tombstone_retain_offsets`.
    pub fn decode(
        bytes: &[u8],
        tombstone_retain_offsets: Option<u64>,
    ) -> Result<SnapshotPayload, PayloadError> {
        SnapshotPayload::read_from(&mut &bytes[..], tombstone_retain_offsets)
    }

    /// [`SnapshotPayload::decode`] from a stream read to its end, [`READ_PIECE_BYTES`] at a
    /// time: the payload is never whole in memory, only the state it decodes to (a snapshot
    /// file is read through a checksumming `SnapshotReader`, whose verdict comes after this).
    /// A read error is `unreadable` (the reader says why).
    pub fn read_from(
        input: &mut dyn Read,
        tombstone_retain_offsets: Option<u64>,
    ) -> Result<SnapshotPayload, PayloadError> {
        let mut pieces = Pieces {
            input,
            buf: Vec::with_capacity(READ_PIECE_BYTES),
            at: 0,
        };
        let head = loop {
            if let Some(head) = PayloadHead::decode(pieces.unread())? {
                break head;
            }
            pieces.more()?;
        };
        pieces.at = head.head_bytes;
        let mut state = KeyState::new(tombstone_retain_offsets);
        for _ in 0..head.record_count {
            let (record, used) = loop {
                if let Some(decoded) = head.decode_record(pieces.unread())? {
                    break decoded;
                }
                pieces.more()?;
            };
            pieces.at += used;
            let held = Held {
                value: Arc::from(record.value),
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
            };
            state.set(Arc::from(record.key), held);
        }
        // The producers' table (small) and nothing else: the rest, whole.
        pieces.compact();
        pieces
            .input
            .read_to_end(&mut pieces.buf)
            .map_err(|_| PayloadError("unreadable"))?;
        let rest = pieces.unread();
        let mut used = 0;
        let mut producers = ProducerTable::default();
        if head.with_producers {
            let (table, n) = ProducerTable::decode(rest).map_err(PayloadError)?;
            producers = table;
            used = n;
        }
        if used != rest.len() {
            return Err(PayloadError("trailing bytes"));
        }
        // Records come in key order; tombstones expire in offset order.
        state.tombstones.make_contiguous().sort_unstable();
        Ok(SnapshotPayload {
            next_offset: head.next_offset,
            membership: head.membership,
            state,
            producers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_log::{Batch, Record};

    fn encode(
        next_offset: u64,
        membership: &Membership,
        state: &KeyState,
        producers: &ProducerTable,
    ) -> Vec<u8> {
        let frozen = state.frozen();
        let mut table = Vec::new();
        producers.encode(&mut table);
        let mut out = Vec::new();
        SnapshotPayload::write(&mut out, next_offset, membership, &frozen, &table).unwrap();
        assert_eq!(
            out.len() as u64,
            SnapshotPayload::encoded_len(membership, &frozen, &table),
            "the announced length is the written length"
        );
        out
    }

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
        let mut state = KeyState::new(None);
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
        let mut state = KeyState::new(None);
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
                    incarnation: 0x44,
                },
            )]
            .into(),
        };
        let mut producers = ProducerTable::default();
        let b = crate::producers::ProducerBatch {
            producer_id: 7,
            epoch: 1,
            first_seq: 0,
            last_seq: 1,
        };
        let placed = crate::producers::Placed {
            first_seq: 0,
            last_seq: 1,
            base_offset: 40,
            last_offset: 41,
            index: 0,
            term: 0,
        };
        producers.apply(&b, placed);
        let bytes = encode(42, &membership, &state, &producers);
        let back = SnapshotPayload::decode(&bytes, None).unwrap();
        assert_eq!(
            back,
            SnapshotPayload {
                next_offset: 42,
                membership: membership.clone(),
                state: state.clone(),
                producers,
            }
        );
        for len in 0..bytes.len() {
            assert!(
                SnapshotPayload::decode(&bytes[..len], None).is_err(),
                "len {len}"
            );
        }
        // The second format: no producers' section, an empty table.
        let mut v2 = encode(42, &membership, &state, &ProducerTable::default());
        v2[..8].copy_from_slice(b"RLSTATE2");
        v2.truncate(v2.len() - 4);
        let back = SnapshotPayload::decode(&v2, None).unwrap();
        assert_eq!((back.state, back.producers.len()), (state, 0));
    }

    /// A stream that hands out at most `step` bytes per read (as a file or socket may).
    struct Dribble<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.step).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_payload_is_decoded_from_a_stream_across_pieces_and_records_longer_than_one() {
        let mut state = KeyState::new(None);
        let mut records: Vec<Record> = (0..3000)
            .map(|i| record(Some(&format!("key-{i:05}")), &"v".repeat(i % 700 + 1)))
            .collect();
        // One value longer than two read pieces, between small records.
        let long = "x".repeat(2 * READ_PIECE_BYTES + 12_345);
        records.insert(1500, record(Some("long"), &long));
        state
            .apply(Batch::encode(&records).unwrap().as_bytes())
            .unwrap();
        let membership = Membership {
            voters: vec![1, 2, 3],
            ..Membership::default()
        };
        let bytes = encode(9000, &membership, &state, &ProducerTable::default());
        assert!(bytes.len() > 3 * READ_PIECE_BYTES);
        for step in [1 << 16, 4093] {
            let mut input = Dribble {
                bytes: &bytes,
                step,
            };
            let back = SnapshotPayload::read_from(&mut input, None).unwrap();
            assert_eq!(back.state, state, "step {step}");
            assert_eq!(back.state.get(b"long"), Some(long.as_bytes()));
            assert_eq!(back.next_offset, 9000);
        }
        // Cut anywhere (inside the long value, at a piece boundary, in the table): truncated.
        for cut in [100, READ_PIECE_BYTES, bytes.len() / 2, bytes.len() - 1] {
            let mut input = Dribble {
                bytes: &bytes[..cut],
                step: 1 << 16,
            };
            assert!(
                SnapshotPayload::read_from(&mut input, None).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn each_key_keeps_the_offset_and_timestamp_of_its_latest_record_through_a_payload() {
        let mut state = KeyState::new(None);
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
        let bytes = encode(103, &membership, &state, &ProducerTable::default());
        let head = PayloadHead::decode(&bytes).unwrap().unwrap();
        assert_eq!((head.next_offset, head.record_count), (103, 1));
        let (first, used) = head
            .decode_record(&bytes[head.head_bytes..])
            .unwrap()
            .unwrap();
        // Then the producers' section: an empty table is its count alone.
        assert_eq!(head.head_bytes + used + 4, bytes.len());
        assert_eq!(
            first,
            PayloadRecord {
                key: b"a".to_vec(),
                value: b"2".to_vec(),
                offset: 102,
                timestamp_ms: 9
            }
        );
        assert_eq!(
            head.decode_record(&bytes[head.head_bytes..head.head_bytes + used - 1])
                .unwrap(),
            None,
            "a record cut short is not yet there"
        );
    }

    fn stamped(records: &[Record], base_offset: u64) -> Batch {
        let mut batch = Batch::encode(records).unwrap();
        batch.stamp(base_offset, 1, 1);
        batch
    }

    #[test]
    fn a_frozen_state_keeps_its_records_while_the_live_one_changes() {
        let mut live = KeyState::new(None);
        let first: Vec<Record> = (0..500)
            .map(|i| record(Some(&format!("k{i}")), &format!("v{i}")))
            .collect();
        live.apply(stamped(&first, 0).as_bytes()).unwrap();
        let at_freeze = live.clone();
        let frozen = live.frozen();
        // Overwrites, deletes and new keys after the freeze, all over the map's nodes.
        let later: Vec<Record> = (0..500)
            .map(|i| match i % 3 {
                0 => record(Some(&format!("k{i}")), "changed"),
                1 => record(Some(&format!("k{i}")), ""),
                _ => record(Some(&format!("new{i}")), "added"),
            })
            .collect();
        live.apply(stamped(&later, 500).as_bytes()).unwrap();
        let members = Membership {
            voters: vec![1],
            learners: vec![],
            addresses: Default::default(),
        };
        let mut table = Vec::new();
        ProducerTable::default().encode(&mut table);
        let mut bytes = Vec::new();
        SnapshotPayload::write(&mut bytes, 500, &members, &frozen, &table).unwrap();
        assert_eq!(
            bytes.len() as u64,
            SnapshotPayload::encoded_len(&members, &frozen, &table)
        );
        let back = SnapshotPayload::decode(&bytes, None).unwrap();
        assert_eq!(
            back.state, at_freeze,
            "the frozen copy is the state at the freeze"
        );
        assert_ne!(back.state, live);
        assert_eq!(live.get(b"k0"), Some(&b"changed"[..]));
        assert!(live.is_deleted(b"k1"));
    }

    #[test]
    fn a_tombstone_leaves_the_state_once_the_log_is_its_retention_past_it() {
        let mut state = KeyState::new(Some(10));
        let deletes = [record(Some("gone"), ""), record(Some("back"), "")];
        state.apply(stamped(&deletes, 0).as_bytes()).unwrap();
        // "back" is set again: its tombstone entry is stale when it expires.
        state
            .apply(stamped(&[record(Some("back"), "again")], 5).as_bytes())
            .unwrap();
        state
            .apply(stamped(&[record(Some("x"), "1")], 9).as_bytes())
            .unwrap();
        assert!(state.is_deleted(b"gone"), "9 records after it: kept");
        state
            .apply(stamped(&[record(Some("y"), "1")], 10).as_bytes())
            .unwrap();
        assert!(!state.holds(b"gone"), "10 records after it: expired");
        assert_eq!(
            state.get(b"back"),
            Some(&b"again"[..]),
            "a newer record stays"
        );
        assert_eq!(state.len(), 3);
        assert_eq!(
            state.bytes(),
            ["back", "again", "x", "1", "y", "1"].concat().len() + 3 * KEY_OVERHEAD_BYTES
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
        let back = SnapshotPayload::decode(&v1, None).unwrap();
        assert_eq!(back.next_offset, 50);
        assert_eq!(back.state.get(b"k"), Some(&b"v"[..]));
        assert_eq!(back.state.values[&b"k"[..]].offset, 49);
    }
}
