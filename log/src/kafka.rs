//! Kafka's RecordBatch v2 (magic 2), the bytes a Kafka producer sends and a Kafka consumer
//! receives: validation, record iteration (decompressing lz4 and zstd), and the conversion of
//! native records into one. A Kafka batch is kept verbatim inside raftline's own envelope
//! (`batch.rs`, `FLAG_KAFKA`); only its base offset and partition leader epoch are rewritten,
//! and Kafka's CRC32C does not cover them, so the producer's CRC stays valid.
//!
//! Layout (all integers big-endian), [`KAFKA_BATCH_HEADER_BYTES`] = 61:
//! ```text
//!  0 i64 baseOffset          8 i32 batchLength (bytes after this field)
//! 12 i32 partitionLeaderEpoch 16 i8 magic (2)   17 u32 crc32c of bytes [21, end)
//! 21 i16 attributes (bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control)
//! 23 i32 lastOffsetDelta    27 i64 baseTimestamp   35 i64 maxTimestamp
//! 43 i64 producerId         51 i16 producerEpoch   53 i32 baseSequence
//! 57 i32 recordsCount       61 records (compressed as a whole when attributes say so)
//! ```
//! Producer id, epoch and sequence are kept as sent: the node checks an idempotent producer's
//! batches by them (`batch::ProducerSeq`); a producer id other than -1 needs an epoch and a base
//! sequence >= 0.

use std::io::Read;

use crate::batch::{crc32c, Record, BATCH_BYTES_LIMIT};

/// Bytes of a RecordBatch v2 header.
pub const KAFKA_BATCH_HEADER_BYTES: usize = 61;
/// First byte Kafka's CRC covers: everything before it is rewritten by the leader or checked
/// against the byte length.
pub const KAFKA_CRC_FROM: usize = 21;
const MAGIC: i8 = 2;
const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Why bytes are not a Kafka batch raftline takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaBatchError {
    /// Fewer bytes than the header, or than batchLength says.
    #[error("Kafka batch truncated: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// batchLength disagrees with the bytes (trailing bytes, or a second batch).
    #[error("Kafka batchLength says {declared} bytes, the batch has {actual}")]
    Length {
        /// batchLength + 12.
        declared: i64,
        /// Bytes given.
        actual: usize,
    },
    /// Not magic 2 (message sets v0/v1 are not taken).
    #[error("Kafka batch magic {0}, only RecordBatch v2 (magic 2) is taken")]
    Magic(i8),
    /// CRC32C mismatch.
    #[error("Kafka batch CRC mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    Checksum {
        /// CRC in the header.
        expected: u32,
        /// CRC of the bytes.
        actual: u32,
    },
    /// The transactional bit (transactions are not supported).
    #[error("transactional Kafka batches are not supported")]
    Transactional,
    /// The control bit (control batches come only from a transaction coordinator).
    #[error("Kafka control batches are not accepted from producers")]
    Control,
    /// A compression codec raftline does not decode (gzip, snappy or unknown).
    #[error("Kafka compression {0} is not supported (none, lz4 and zstd are)")]
    UnsupportedCompression(&'static str),
    /// The compressed records do not decompress (or exceed the batch limit when they do).
    #[error("Kafka batch does not decompress: {0}")]
    Decompress(String),
    /// recordsCount, lastOffsetDelta and the records actually there disagree.
    #[error(
        "Kafka batch says {count} records with lastOffsetDelta {last_offset_delta}, holds {decoded}"
    )]
    RecordCount {
        /// recordsCount.
        count: i32,
        /// lastOffsetDelta.
        last_offset_delta: i32,
        /// Records decoded before the bytes ran out (or that the bytes hold).
        decoded: usize,
    },
    /// A producer id (not -1) with a negative producer epoch or base sequence.
    #[error("Kafka batch of producer {producer_id} has epoch {epoch} and base sequence {base_sequence}; both must be >= 0")]
    ProducerFields {
        /// producerId.
        producer_id: i64,
        /// producerEpoch.
        epoch: i16,
        /// baseSequence.
        base_sequence: i32,
    },
    /// maxTimestamp is not the largest of the records' timestamps (the time index steers by
    /// it).
    #[error("Kafka batch says maxTimestamp {declared}, its records' largest is {actual}")]
    MaxTimestamp {
        /// maxTimestamp.
        declared: i64,
        /// The largest record timestamp.
        actual: i64,
    },
    /// A record does not decode.
    #[error("bad Kafka record {index}: {why}")]
    BadRecord {
        /// Its position in the batch.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// A Kafka batch's compression codec (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed records.
    None,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard frame.
    Zstd,
}

/// The header fields of a Kafka batch that raftline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaBatchHeader {
    /// baseOffset.
    pub base_offset: i64,
    /// partitionLeaderEpoch.
    pub leader_epoch: i32,
    /// recordsCount.
    pub record_count: i32,
    /// lastOffsetDelta.
    pub last_offset_delta: i32,
    /// baseTimestamp.
    pub base_timestamp: i64,
    /// producerId (-1: not an idempotent producer's batch).
    pub producer_id: i64,
    /// producerEpoch.
    pub producer_epoch: i16,
    /// baseSequence: the producer's sequence number of the first record.
    pub base_sequence: i32,
    /// maxTimestamp: the largest record timestamp (`validate` checks it).
    pub max_timestamp: i64,
    /// Compression of the records.
    pub compression: Compression,
}

/// One record of a Kafka batch, borrowed from the batch (or its decompressed records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord<'a> {
    /// baseTimestamp + timestampDelta.
    pub timestamp: i64,
    /// The key (`None`: null).
    pub key: Option<&'a [u8]>,
    /// The value (`None`: null, a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in order, duplicates kept.
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the header of the Kafka batch that is exactly `bytes`: length, magic and attributes
/// (the refused bits and codecs), without the CRC.
pub fn parse_header(bytes: &[u8]) -> Result<KafkaBatchHeader, KafkaBatchError> {
    if bytes.len() < KAFKA_BATCH_HEADER_BYTES {
        return Err(KafkaBatchError::Truncated {
            have: bytes.len(),
            need: KAFKA_BATCH_HEADER_BYTES,
        });
    }
    let declared = i64::from(i32_at(bytes, 8)) + 12;
    if declared != bytes.len() as i64 {
        if declared > bytes.len() as i64 {
            return Err(KafkaBatchError::Truncated {
                have: bytes.len(),
                need: declared as usize,
            });
        }
        return Err(KafkaBatchError::Length {
            declared,
            actual: bytes.len(),
        });
    }
    let magic = bytes[16] as i8;
    if magic != MAGIC {
        return Err(KafkaBatchError::Magic(magic));
    }
    let attributes = i16_at(bytes, 21);
    if attributes & ATTR_CONTROL != 0 {
        return Err(KafkaBatchError::Control);
    }
    if attributes & ATTR_TRANSACTIONAL != 0 {
        return Err(KafkaBatchError::Transactional);
    }
    let compression = match attributes & ATTR_COMPRESSION_MASK {
        0 => Compression::None,
        1 => return Err(KafkaBatchError::UnsupportedCompression("gzip")),
        2 => return Err(KafkaBatchError::UnsupportedCompression("snappy")),
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => return Err(KafkaBatchError::UnsupportedCompression("unknown")),
    };
    let (producer_id, producer_epoch, base_sequence) =
        (i64_at(bytes, 43), i16_at(bytes, 51), i32_at(bytes, 53));
    if producer_id >= 0 && (producer_epoch < 0 || base_sequence < 0) {
        return Err(KafkaBatchError::ProducerFields {
            producer_id,
            epoch: producer_epoch,
            base_sequence,
        });
    }
    Ok(KafkaBatchHeader {
        base_offset: i64_at(bytes, 0),
        leader_epoch: i32_at(bytes, 12),
        last_offset_delta: i32_at(bytes, 23),
        base_timestamp: i64_at(bytes, 27),
        producer_id,
        producer_epoch,
        base_sequence,
        max_timestamp: i64_at(bytes, 35),
        record_count: i32_at(bytes, 57),
        compression,
    })
}

/// Checks Kafka's CRC32C over bytes [21, end) of a batch whose header parsed.
pub fn check_crc(bytes: &[u8]) -> Result<(), KafkaBatchError> {
    let expected = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes"));
    let actual = crc32c(&bytes[KAFKA_CRC_FROM..]);
    if actual != expected {
        return Err(KafkaBatchError::Checksum { expected, actual });
    }
    Ok(())
}

/// Everything the leader checks of a producer's batch: header, CRC, and every record decoded
/// (decompressed first), their number equal to recordsCount and lastOffsetDelta + 1, each at
/// its offset delta. At least one record, and maxTimestamp their largest timestamp.
pub fn validate(bytes: &[u8]) -> Result<KafkaBatchHeader, KafkaBatchError> {
    let header = parse_header(bytes)?;
    check_crc(bytes)?;
    let mut decoded = 0usize;
    let mut max_timestamp = i64::MIN;
    for_each_record(bytes, |r| {
        decoded += 1;
        max_timestamp = max_timestamp.max(r.timestamp);
    })?;
    if decoded == 0 {
        return Err(KafkaBatchError::RecordCount {
            count: header.record_count,
            last_offset_delta: header.last_offset_delta,
            decoded,
        });
    }
    if max_timestamp != header.max_timestamp {
        return Err(KafkaBatchError::MaxTimestamp {
            declared: header.max_timestamp,
            actual: max_timestamp,
        });
    }
    Ok(header)
}

/// Rewrites the base offset and partition leader epoch, the two fields the leader assigns;
/// Kafka's CRC does not cover them.
pub fn stamp(bytes: &mut [u8], base_offset: i64, leader_epoch: i32) {
    bytes[0..8].copy_from_slice(&base_offset.to_be_bytes());
    bytes[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Calls `visit` for every record of the batch (header parsed, CRC not checked here), in
/// order, checking that the records are exactly recordsCount = lastOffsetDelta + 1, each at its
/// offset delta, filling the records section with nothing left over.
pub fn for_each_record(
    bytes: &[u8],
    mut visit: impl FnMut(KafkaRecord<'_>),
) -> Result<(), KafkaBatchError> {
    let header = parse_header(bytes)?;
    let section = &bytes[KAFKA_BATCH_HEADER_BYTES..];
    let decompressed;
    let mut records = match header.compression {
        Compression::None => section,
        codec => {
            decompressed = decompress(codec, section)?;
            &decompressed[..]
        }
    };
    let count_error = |decoded| KafkaBatchError::RecordCount {
        count: header.record_count,
        last_offset_delta: header.last_offset_delta,
        decoded,
    };
    if header.record_count < 0
        || i64::from(header.last_offset_delta) + 1 != header.record_count as i64
    {
        return Err(count_error(0));
    }
    for index in 0..header.record_count as usize {
        if records.is_empty() {
            return Err(count_error(index));
        }
        let record = read_record(&mut records, &header, index)?;
        visit(record);
    }
    if !records.is_empty() {
        return Err(count_error(header.record_count as usize + 1));
    }
    Ok(())
}

fn decompress(codec: Compression, section: &[u8]) -> Result<Vec<u8>, KafkaBatchError> {
    let limit = BATCH_BYTES_LIMIT as u64;
    let mut out = Vec::new();
    let read = match codec {
        Compression::Lz4 => lz4_flex::frame::FrameDecoder::new(section)
            .take(limit + 1)
            .read_to_end(&mut out),
        Compression::Zstd => {
            let mut source = section;
            let decoder = ruzstd::StreamingDecoder::new(&mut source)
                .map_err(|e| KafkaBatchError::Decompress(e.to_string()))?;
            decoder.take(limit + 1).read_to_end(&mut out)
        }
        Compression::None => unreachable!("only compressed records are decompressed"),
    };
    read.map_err(|e| KafkaBatchError::Decompress(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(KafkaBatchError::Decompress(format!(
            "more than {limit} bytes decompressed"
        )));
    }
    Ok(out)
}

/// A zigzag varint of at most 10 bytes. The one-byte case first: a small record's lengths,
/// deltas and counts are one byte each, and every node walks every record of a Kafka batch
/// (the leader to validate it, each node to apply it).
#[inline]
fn read_varlong(buf: &mut &[u8]) -> Option<i64> {
    let unzigzag = |v: u64| ((v >> 1) as i64) ^ -((v & 1) as i64);
    let (&first, rest) = buf.split_first()?;
    if first & 0x80 == 0 {
        *buf = rest;
        return Some(unzigzag(u64::from(first)));
    }
    let mut value = u64::from(first & 0x7F);
    for (i, &byte) in rest.iter().enumerate().take(9) {
        value |= u64::from(byte & 0x7F) << (7 * (i + 1));
        if byte & 0x80 == 0 {
            *buf = &rest[i + 1..];
            return Some(unzigzag(value));
        }
    }
    None
}

#[inline]
fn read_varint(buf: &mut &[u8]) -> Option<i32> {
    read_varlong(buf).and_then(|v| i32::try_from(v).ok())
}

/// A length-prefixed byte string: -1 is null, other negatives are invalid.
fn read_bytes<'a>(buf: &mut &'a [u8]) -> Result<Option<&'a [u8]>, &'static str> {
    let len = read_varint(buf).ok_or("bad length varint")?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    if len > buf.len() {
        return Err("length beyond the record");
    }
    let (bytes, rest) = buf.split_at(len);
    *buf = rest;
    Ok(Some(bytes))
}

fn read_record<'a>(
    records: &mut &'a [u8],
    header: &KafkaBatchHeader,
    index: usize,
) -> Result<KafkaRecord<'a>, KafkaBatchError> {
    let bad = |why| KafkaBatchError::BadRecord { index, why };
    let len = read_varint(records).ok_or(bad("bad length varint"))?;
    let len = usize::try_from(len).map_err(|_| bad("negative record length"))?;
    if len > records.len() {
        return Err(bad("record length beyond the batch"));
    }
    let (mut r, rest) = records.split_at(len);
    *records = rest;
    let (_attributes, after) = r.split_first().ok_or(bad("no attributes"))?;
    r = after;
    let timestamp_delta = read_varlong(&mut r).ok_or(bad("bad timestamp delta"))?;
    let offset_delta = read_varint(&mut r).ok_or(bad("bad offset delta"))?;
    if offset_delta as i64 != index as i64 {
        return Err(bad("offset delta is not the record's position"));
    }
    let key = read_bytes(&mut r).map_err(bad)?;
    let value = read_bytes(&mut r).map_err(bad)?;
    let header_count = read_varint(&mut r).ok_or(bad("bad header count"))?;
    let header_count = usize::try_from(header_count).map_err(|_| bad("negative header count"))?;
    // Each header takes at least two bytes: a count beyond that is a lie, not an allocation.
    if header_count > r.len() / 2 {
        return Err(bad("header count beyond the record"));
    }
    // No allocation (nor its checks) for the common record without headers.
    let mut headers = if header_count == 0 {
        Vec::new()
    } else {
        Vec::with_capacity(header_count)
    };
    for _ in 0..header_count {
        let key = read_bytes(&mut r)
            .map_err(bad)?
            .ok_or(bad("null header key"))?;
        let value = read_bytes(&mut r).map_err(bad)?;
        headers.push((key, value));
    }
    if !r.is_empty() {
        return Err(bad("bytes left over in the record"));
    }
    Ok(KafkaRecord {
        timestamp: header.base_timestamp.wrapping_add(timestamp_delta),
        key,
        value,
        headers,
    })
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Appends native records to `out` as one uncompressed RecordBatch v2 at `base_offset` and
/// `leader_epoch` (what a Kafka consumer is served for a native batch). A keyed record with an
/// empty value (raftline's delete) becomes a null value (Kafka's tombstone); timestamps beyond
/// i64 are clamped. No producer id (-1): the batch was not written by a Kafka producer.
pub fn encode_records(out: &mut Vec<u8>, base_offset: i64, leader_epoch: i32, records: &[Record]) {
    let start = out.len();
    let ts = |r: &Record| i64::try_from(r.timestamp_ms).unwrap_or(i64::MAX);
    let base_timestamp = records.first().map_or(-1, ts);
    let max_timestamp = records.iter().map(ts).max().unwrap_or(-1);
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // batchLength, below
    out.extend_from_slice(&leader_epoch.to_be_bytes());
    out.push(MAGIC as u8);
    out.extend_from_slice(&[0; 4]); // crc, below
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&(records.len() as i32 - 1).to_be_bytes());
    out.extend_from_slice(&base_timestamp.to_be_bytes());
    out.extend_from_slice(&max_timestamp.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());
    let mut record = Vec::new();
    for (i, r) in records.iter().enumerate() {
        record.clear();
        record.push(0);
        put_varlong(&mut record, ts(r).wrapping_sub(base_timestamp));
        put_varlong(&mut record, i as i64);
        put_bytes(&mut record, r.key.as_deref());
        let tombstone = r.key.is_some() && r.value.is_empty();
        put_bytes(&mut record, (!tombstone).then_some(&r.value[..]));
        put_varlong(&mut record, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_bytes(&mut record, Some(k.as_bytes()));
            put_bytes(&mut record, Some(v));
        }
        put_varlong(out, record.len() as i64);
        out.extend_from_slice(&record);
    }
    let batch = &mut out[start..];
    let batch_length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c(&batch[KAFKA_CRC_FROM..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// The native form of a Kafka record: a null value reads as empty (raftline's delete), a
/// timestamp before the epoch (Kafka's -1: none) as 0, header keys as UTF-8 (lossy).
pub fn to_native(record: &KafkaRecord<'_>) -> Record {
    Record {
        key: record.key.map(<[u8]>::to_vec),
        value: record.value.map(<[u8]>::to_vec).unwrap_or_default(),
        timestamp_ms: u64::try_from(record.timestamp).unwrap_or(0),
        headers: record
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    v.map(<[u8]>::to_vec).unwrap_or_default(),
                )
            })
            .collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Re-encodes a batch's records section with `codec` (sets the attribute, fixes length and
    /// CRC): what a compressing producer sends.
    pub(crate) fn compressed(batch: &[u8], codec: Compression) -> Vec<u8> {
        let records = &batch[KAFKA_BATCH_HEADER_BYTES..];
        let section = match codec {
            Compression::None => records.to_vec(),
            Compression::Lz4 => {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                std::io::Write::write_all(&mut enc, records).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd_raw_frame(records),
        };
        let mut out = batch[..KAFKA_BATCH_HEADER_BYTES].to_vec();
        out.extend_from_slice(&section);
        let attr: i16 = match codec {
            Compression::None => 0,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        };
        out[21..23].copy_from_slice(&attr.to_be_bytes());
        reseal(&mut out);
        out
    }

    /// A zstd frame of raw (stored) blocks: valid zstd that any decoder takes, built by hand
    /// because the pure-Rust decoder has no encoder (real zstd from librdkafka is covered by the
    /// kcat end-to-end test).
    fn zstd_raw_frame(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x28, 0xB5, 0x2F, 0xFD];
        out.push(0xA0); // single segment, 4-byte content size, no checksum
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let chunks: Vec<&[u8]> = data.chunks(1 << 17).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = u32::from(i + 1 == chunks.len());
            let header = last | ((chunk.len() as u32) << 3); // block type 0: raw
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Fixes batchLength and the CRC after a test edited the bytes.
    pub(crate) fn reseal(batch: &mut [u8]) {
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c(&batch[KAFKA_CRC_FROM..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    pub(crate) fn sample() -> Vec<Record> {
        vec![
            Record {
                key: Some(b"k".to_vec()),
                value: b"v1".to_vec(),
                timestamp_ms: 1_700_000_000_000,
                headers: vec![("h".into(), b"a".to_vec()), ("h".into(), b"b".to_vec())],
            },
            Record {
                key: None,
                value: vec![7; 500],
                timestamp_ms: 1_700_000_000_005,
                headers: vec![],
            },
        ]
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Record>, KafkaBatchError> {
        validate(bytes)?;
        let mut out = Vec::new();
        for_each_record(bytes, |r| out.push(to_native(&r)))?;
        Ok(out)
    }

    #[test]
    fn varints_of_every_width_read_back_and_broken_ones_are_refused() {
        let values = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, i64::from(i32::MAX)];
        let values = values.into_iter().chain([
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
            1 << 35,
            -(1 << 49),
        ]);
        for v in values {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            buf.push(0xAB); // the next field's byte stays unread
            let mut rest = &buf[..];
            assert_eq!(read_varlong(&mut rest), Some(v), "{v} from {buf:02x?}");
            assert_eq!(rest, &[0xAB], "{v}: exactly its bytes are taken");
            let mut truncated = &buf[..buf.len() - 2];
            assert_eq!(read_varlong(&mut truncated), None, "{v} truncated");
        }
        let mut eleven = &[0x80u8; 11][..];
        assert_eq!(read_varlong(&mut eleven), None, "more than 10 bytes");
        let mut wide = Vec::new();
        put_varlong(&mut wide, i64::from(i32::MAX) + 1);
        assert_eq!(read_varint(&mut &wide[..]), None, "beyond i32");
    }

    #[test]
    fn encoded_records_decode_the_same_plain_and_compressed() {
        let mut batch = Vec::new();
        encode_records(&mut batch, 5, 3, &sample());
        let h = parse_header(&batch).unwrap();
        assert_eq!((h.base_offset, h.leader_epoch, h.record_count), (5, 3, 2));
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            assert_eq!(
                decode(&compressed(&batch, codec)).unwrap(),
                sample(),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn duplicate_header_keys_and_null_values_survive() {
        let mut batch = Vec::new();
        let tombstone = Record {
            key: Some(b"gone".to_vec()),
            value: vec![],
            timestamp_ms: 9,
            headers: vec![],
        };
        encode_records(&mut batch, 0, 0, &[tombstone]);
        let mut seen = Vec::new();
        for_each_record(&batch, |r| {
            seen.push((r.key.map(<[u8]>::to_vec), r.value.is_none()))
        })
        .unwrap();
        assert_eq!(seen, vec![(Some(b"gone".to_vec()), true)]);
        let mut batch = Vec::new();
        encode_records(&mut batch, 0, 0, &sample());
        let mut headers = Vec::new();
        for_each_record(&batch, |r| headers.push(r.headers.len())).unwrap();
        assert_eq!(headers, vec![2, 0]);
    }

    #[test]
    fn refused_attributes_and_codecs_are_named() {
        let mut batch = Vec::new();
        encode_records(&mut batch, 0, 0, &sample());
        let with_attr = |attr: i16| {
            let mut b = batch.clone();
            b[21..23].copy_from_slice(&attr.to_be_bytes());
            reseal(&mut b);
            validate(&b)
        };
        assert_eq!(with_attr(0x10), Err(KafkaBatchError::Transactional));
        assert_eq!(with_attr(0x20), Err(KafkaBatchError::Control));
        assert_eq!(
            with_attr(1),
            Err(KafkaBatchError::UnsupportedCompression("gzip"))
        );
        assert_eq!(
            with_attr(2),
            Err(KafkaBatchError::UnsupportedCompression("snappy"))
        );
        assert_eq!(
            with_attr(5),
            Err(KafkaBatchError::UnsupportedCompression("unknown"))
        );
        let mut v1 = batch.clone();
        v1[16] = 1;
        assert_eq!(validate(&v1), Err(KafkaBatchError::Magic(1)));
    }

    #[test]
    fn a_lying_record_count_is_refused() {
        let mut batch = Vec::new();
        encode_records(&mut batch, 0, 0, &sample());
        for (count, last_delta) in [(3i32, 2i32), (1, 0), (2, 0), (0, -1)] {
            let mut b = batch.clone();
            b[57..61].copy_from_slice(&count.to_be_bytes());
            b[23..27].copy_from_slice(&last_delta.to_be_bytes());
            reseal(&mut b);
            assert!(
                matches!(validate(&b), Err(KafkaBatchError::RecordCount { .. })),
                "count {count} accepted"
            );
        }
    }

    #[test]
    fn a_max_timestamp_that_is_not_the_records_largest_is_refused() {
        let mut batch = Vec::new();
        encode_records(&mut batch, 0, 0, &sample());
        let largest = parse_header(&batch).unwrap().max_timestamp;
        for declared in [largest - 1, largest + 1, -1] {
            let mut b = batch.clone();
            b[35..43].copy_from_slice(&declared.to_be_bytes());
            reseal(&mut b);
            assert_eq!(
                validate(&b),
                Err(KafkaBatchError::MaxTimestamp {
                    declared,
                    actual: largest
                })
            );
        }
        assert!(validate(&batch).is_ok());
    }

    #[test]
    fn a_second_batch_or_trailing_bytes_are_refused() {
        let mut batch = Vec::new();
        encode_records(&mut batch, 0, 0, &sample());
        let mut two = batch.clone();
        two.extend_from_slice(&batch);
        assert!(matches!(
            validate(&two),
            Err(KafkaBatchError::Length { .. })
        ));
        assert!(matches!(
            validate(&batch[..batch.len() - 1]),
            Err(KafkaBatchError::Truncated { .. })
        ));
    }
}
