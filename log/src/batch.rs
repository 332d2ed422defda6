//! The batch: the unit producers send, the leader stamps and appends, followers persist and
//! consumers receive. Its bytes travel unchanged from network to disk to consumer.
//!
//! Layout (all integers little-endian), `BATCH_HEADER_BYTES` = 48:
//! ```text
//!  0 u32 magic "RLNB"      4 u32 crc32c of bytes [8, end)
//!  8 u16 version (1)       10 u16 flags (0 for data; 1 truncation marker; 2 leader no-op;
//!                                        4 configuration; 8 run; 16 Kafka;
//!                                        32 durability marker; 64 producer block)
//! 12 u32 record_count      16 u64 base_offset
//! 24 u64 term              32 u64 index
//! 40 u32 payload_bytes     44 u32 reserved (0)
//! 48 payload: rkyv archive of Vec<Record> (a run: its data batches back to back; a Kafka
//!    batch: a Kafka RecordBatch v2, verbatim)
//! ```
//! A native batch of an idempotent producer (`FLAG_PRODUCER`) starts its payload with a 16-byte
//! producer block, `u64 producer_id, i16 epoch, u16 0, i32 base_sequence`, before the archive
//! (which stays 16-aligned).
//! A Kafka batch's CRC covers only [8, 48) and the Kafka batch's bytes [0, 21): Kafka's own
//! CRC32C covers the rest, so the leader stamps it without a second pass over the records.

use std::ops::Range;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::kafka::{self, KafkaBatchError, KAFKA_BATCH_HEADER_BYTES, KAFKA_CRC_FROM};

/// Bytes of the fixed batch header that precedes the rkyv payload.
pub const BATCH_HEADER_BYTES: usize = 48;
/// Hard upper bound on a batch's total size, whatever the configuration says.
pub const BATCH_BYTES_LIMIT: usize = 64 << 20;

const MAGIC: u32 = u32::from_le_bytes(BATCH_MAGIC);
/// The bytes every batch starts with (recovery searches damaged ranges for them).
pub(crate) const BATCH_MAGIC: [u8; 4] = *b"RLNB";
const VERSION: u16 = 1;
/// Flag of a log-internal truncation marker (never a wire batch).
pub(crate) const FLAG_TRUNCATE_MARKER: u16 = 1;
/// Flag of a Raft leader's no-op entry: a zero-record batch whose kind must survive a restart.
pub const FLAG_NOOP: u16 = 2;
/// Flag of a Raft configuration entry: zero records, the payload is the core's own encoding of
/// the membership (opaque here), kept byte for byte.
pub const FLAG_CONFIG: u16 = 4;
/// Flag of a run: one Raft entry carrying two or more producers' data batches, back to back as
/// its payload, each stamped with its own offsets and the entry's term and index; the run's
/// `record_count` and `base_offset` cover them all. Never sent by a producer, never sent to a
/// consumer (the node streams the inner batches, exactly as their producers sent them).
pub const FLAG_RUN: u16 = 8;
/// Flag of a Kafka batch: a data batch whose payload is a Kafka RecordBatch v2 exactly as a
/// Kafka producer sent it, but for the base offset and partition leader epoch, which the
/// leader stamps (the envelope's offset and term) and Kafka's CRC does not cover. May be the
/// inner batch of a run.
pub const FLAG_KAFKA: u16 = 16;
/// Flag of a log-internal durability marker (never a wire batch, never an entry): zero records,
/// `index` = the last Raft index that was durable when its group was built, `base_offset` = the
/// sequence number of the segment it is written in (so that a recycled segment's markers of
/// earlier lives are told apart), term 0. The writer puts one at the head of a group once the
/// previous group's fdatasync has completed; recovery reads them to tell damage to synced
/// (possibly acknowledged) entries from a torn write (see FORMAT.md, "Durability markers").
pub(crate) const FLAG_DURABLE_MARK: u16 = 32;
/// Flag of a native data batch of an idempotent producer: its payload starts with the
/// [`PRODUCER_BLOCK_BYTES`] producer block (id, epoch, base sequence), then the records' archive.
/// A Kafka batch carries the same fields in its own header instead, so the two flags never
/// meet.
pub const FLAG_PRODUCER: u16 = 64;
/// Bytes of the producer block of a `FLAG_PRODUCER` batch (a multiple of 16: the archive after it
/// stays aligned).
pub const PRODUCER_BLOCK_BYTES: usize = 16;
/// The flags of log-internal batches, which take no Raft index or offset.
const FLAGS_LOG_INTERNAL: u16 = FLAG_TRUNCATE_MARKER | FLAG_DURABLE_MARK;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Record {
    /// Optional key (the latest value per key survives compaction).
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Vec<u8>,
    /// Producer timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Application headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than the header, or than the header says.
    #[error("batch truncated: have {have} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header requires.
        need: usize,
    },
    /// Magic, version, flags or reserved field is wrong.
    #[error("bad batch header: {0}")]
    BadHeader(&'static str),
    /// Bigger than the limit.
    #[error("batch of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the batch.
        bytes: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// Checksum mismatch.
    #[error("batch checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    Checksum {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the bytes.
        actual: u32,
    },
    /// The rkyv payload failed validation or disagrees with the header.
    #[error("bad batch payload: {0}")]
    BadPayload(String),
    /// The payload of a Kafka batch is not a Kafka batch raftline takes.
    #[error(transparent)]
    Kafka(#[from] KafkaBatchError),
}

/// An idempotent producer's identity and sequence on a data batch: the batch's records have
/// the sequence numbers `base_sequence`, `base_sequence + 1`, ... (Kafka's rule: after
/// `i32::MAX` comes 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    /// The producer id (at most `i64::MAX`, so that Kafka's signed ids and native ones share
    /// one space).
    pub producer_id: u64,
    /// The producer's epoch (>= 0).
    pub epoch: i16,
    /// Sequence number of the batch's first record (>= 0).
    pub base_sequence: i32,
}

impl ProducerSeq {
    fn block(&self) -> [u8; PRODUCER_BLOCK_BYTES] {
        let mut b = [0u8; PRODUCER_BLOCK_BYTES];
        b[0..8].copy_from_slice(&self.producer_id.to_le_bytes());
        b[8..10].copy_from_slice(&self.epoch.to_le_bytes());
        b[12..16].copy_from_slice(&self.base_sequence.to_le_bytes());
        b
    }

    fn from_block(b: &[u8]) -> Result<ProducerSeq, BatchError> {
        let seq = ProducerSeq {
            producer_id: u64_at(b, 0),
            epoch: i16::from_le_bytes([b[8], b[9]]),
            base_sequence: u32_at(b, 12) as i32,
        };
        if seq.producer_id > i64::MAX as u64
            || seq.epoch < 0
            || seq.base_sequence < 0
            || u16_at(b, 10) != 0
        {
            return Err(BatchError::BadHeader(
                "producer block: id above i64::MAX, a negative epoch or sequence, or reserved bits",
            ));
        }
        Ok(seq)
    }
}

/// CRC32C (Castagnoli) of `bytes`.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Number of records.
    pub record_count: u32,
    /// Raft term of the entry.
    pub term: u64,
    /// Raft index of the entry.
    pub index: u64,
    /// Header flags (0 for every wire batch).
    pub flags: u16,
    /// Total bytes of the batch (header + payload).
    pub total_bytes: usize,
    /// CRC stored in the header.
    pub crc: u32,
}

impl BatchHeader {
    /// True for a Raft leader's no-op entry (zero records, never sent by a producer).
    pub fn is_noop(&self) -> bool {
        self.flags & FLAG_NOOP != 0
    }

    /// True for a Raft configuration entry (zero records, opaque membership payload).
    pub fn is_config(&self) -> bool {
        self.flags & FLAG_CONFIG != 0
    }

    /// True for a run: the payload holds several data batches (see [`FLAG_RUN`]).
    pub fn is_run(&self) -> bool {
        self.flags & FLAG_RUN != 0
    }

    /// True for a Kafka batch (see [`FLAG_KAFKA`]).
    pub fn is_kafka(&self) -> bool {
        self.flags & FLAG_KAFKA != 0
    }

    /// True for a log-internal durability marker (see `FLAG_DURABLE_MARK`): never an entry,
    /// invisible to every reader of the log.
    pub fn is_durable_mark(&self) -> bool {
        self.flags & FLAG_DURABLE_MARK != 0
    }

    /// True for a batch carrying producers' records: native (flags 0 or `FLAG_PRODUCER`) or
    /// Kafka.
    pub fn is_data(&self) -> bool {
        self.flags & !(FLAG_KAFKA | FLAG_PRODUCER) == 0
    }

    /// Where the records start in the batch (after the producer block of a native batch that
    /// has one).
    fn records_from(&self) -> usize {
        if self.flags & FLAG_PRODUCER != 0 {
            BATCH_HEADER_BYTES + PRODUCER_BLOCK_BYTES
        } else {
            BATCH_HEADER_BYTES
        }
    }

    /// Offset one past the last record of this batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// Parses the fixed header of the batch starting at `bytes[0]` without checking the CRC.
pub fn parse_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated {
            have: bytes.len(),
            need: BATCH_HEADER_BYTES,
        });
    }
    if u32_at(bytes, 0) != MAGIC {
        return Err(BatchError::BadHeader("magic"));
    }
    if u16_at(bytes, 8) != VERSION {
        return Err(BatchError::BadHeader("version"));
    }
    let flags = u16_at(bytes, 10);
    let known =
        FLAGS_LOG_INTERNAL | FLAG_NOOP | FLAG_CONFIG | FLAG_RUN | FLAG_KAFKA | FLAG_PRODUCER;
    if flags & !known != 0 {
        return Err(BatchError::BadHeader("unknown flags"));
    }
    if flags & FLAG_PRODUCER != 0 && flags != FLAG_PRODUCER {
        return Err(BatchError::BadHeader(
            "a producer block belongs to a native data batch only",
        ));
    }
    if flags & FLAG_PRODUCER != 0 && (u32_at(bytes, 40) as usize) < PRODUCER_BLOCK_BYTES {
        return Err(BatchError::BadHeader(
            "payload shorter than its producer block",
        ));
    }
    if u32_at(bytes, 44) != 0 {
        return Err(BatchError::BadHeader("reserved field not zero"));
    }
    let total_bytes = BATCH_HEADER_BYTES + u32_at(bytes, 40) as usize;
    if total_bytes > BATCH_BYTES_LIMIT {
        return Err(BatchError::TooLarge {
            bytes: total_bytes,
            limit: BATCH_BYTES_LIMIT,
        });
    }
    Ok(BatchHeader {
        crc: u32_at(bytes, 4),
        flags,
        record_count: u32_at(bytes, 12),
        base_offset: u64_at(bytes, 16),
        term: u64_at(bytes, 24),
        index: u64_at(bytes, 32),
        total_bytes,
    })
}

/// Checks header and CRC of the batch at the start of `bytes` (no payload decoding); this is
/// what recovery and readers verify on every batch read from disk. A Kafka batch's two CRCs
/// (the envelope's and Kafka's) together cover every byte once.
pub fn check_frame(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(bytes)?;
    if bytes.len() < header.total_bytes {
        return Err(BatchError::Truncated {
            have: bytes.len(),
            need: header.total_bytes,
        });
    }
    let bytes = &bytes[..header.total_bytes];
    let actual = envelope_crc(header.flags, bytes)?;
    if actual != header.crc {
        return Err(BatchError::Checksum {
            expected: header.crc,
            actual,
        });
    }
    if header.is_kafka() {
        kafka::check_crc(&bytes[BATCH_HEADER_BYTES..])?;
    }
    Ok(header)
}

/// The envelope's CRC of a whole batch: of bytes [8, end), or for a Kafka batch of [8, 48)
/// and the Kafka header's bytes before Kafka's CRC starts.
fn envelope_crc(flags: u16, bytes: &[u8]) -> Result<u32, BatchError> {
    if flags & FLAG_KAFKA == 0 {
        return Ok(crc32c(&bytes[8..]));
    }
    let end = BATCH_HEADER_BYTES + KAFKA_CRC_FROM;
    if bytes.len() < BATCH_HEADER_BYTES + KAFKA_BATCH_HEADER_BYTES {
        return Err(KafkaBatchError::Truncated {
            have: bytes.len().saturating_sub(BATCH_HEADER_BYTES),
            need: KAFKA_BATCH_HEADER_BYTES,
        }
        .into());
    }
    Ok(crc32c(&bytes[8..end]))
}

/// Checks that a Kafka batch's header agrees with its envelope: its own length and magic and
/// refused attributes, and the record count, base offset and leader epoch the envelope holds.
fn check_kafka_header(header: &BatchHeader, bytes: &[u8]) -> Result<(), BatchError> {
    let k = kafka::parse_header(&bytes[BATCH_HEADER_BYTES..])?;
    let agrees = i64::from(k.record_count) == i64::from(header.record_count)
        && k.base_offset as u64 == header.base_offset
        && k.leader_epoch == leader_epoch(header.term);
    if !agrees || header.record_count == 0 {
        return Err(BatchError::BadHeader(
            "a Kafka batch's header disagrees with its envelope",
        ));
    }
    Ok(())
}

/// The Kafka partition leader epoch of a Raft term (Kafka's is an i32).
pub fn leader_epoch(term: u64) -> i32 {
    i32::try_from(term).unwrap_or(i32::MAX)
}

/// A batch whose header, checksum and rkyv payload have been validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    /// Takes a Kafka producer's RecordBatch v2 (exactly one batch) after validating it
    /// (`kafka::validate`: header, CRC, attributes, every record, the count): one copy into the
    /// envelope, base offset and leader epoch set to the envelope's (0 until stamped).
    pub fn from_kafka(kafka_batch: &[u8]) -> Result<Batch, BatchError> {
        let k = kafka::validate(kafka_batch)?;
        let total = BATCH_HEADER_BYTES + kafka_batch.len();
        if total > BATCH_BYTES_LIMIT {
            return Err(BatchError::TooLarge {
                bytes: total,
                limit: BATCH_BYTES_LIMIT,
            });
        }
        let count = k.record_count as u32;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header_bytes(
            FLAG_KAFKA,
            count,
            0,
            0,
            0,
            kafka_batch.len() as u32,
        ));
        bytes.extend_from_slice(kafka_batch);
        kafka::stamp(&mut bytes[BATCH_HEADER_BYTES..], 0, 0);
        let mut batch = Batch { bytes };
        batch.reseal();
        Ok(batch)
    }

    /// Encodes records into a new batch with base_offset, term and index 0 (to be stamped).
    pub fn encode(records: &[Record]) -> Result<Batch, BatchError> {
        Batch::encode_as(records, None)
    }

    /// Encodes records into a new batch of an idempotent producer: the producer block carries
    /// `producer` (see [`FLAG_PRODUCER`]); base_offset, term and index 0 (to be stamped).
    pub fn encode_idempotent(
        records: &[Record],
        producer: ProducerSeq,
    ) -> Result<Batch, BatchError> {
        Batch::encode_as(records, Some(producer))
    }

    fn encode_as(records: &[Record], producer: Option<ProducerSeq>) -> Result<Batch, BatchError> {
        if producer
            .is_some_and(|p| p.producer_id > i64::MAX as u64 || p.epoch < 0 || p.base_sequence < 0)
        {
            return Err(BatchError::BadHeader(
                "producer id above i64::MAX, or a negative epoch or sequence",
            ));
        }
        let payload = rkyv::to_bytes::<rancor::Error>(&records.to_vec())
            .map_err(|e| BatchError::BadPayload(e.to_string()))?;
        let block = producer.map(|p| p.block());
        let block: &[u8] = block.as_ref().map_or(&[], |b| &b[..]);
        let payload_bytes = block.len() + payload.len();
        let total = BATCH_HEADER_BYTES + payload_bytes;
        if total > BATCH_BYTES_LIMIT {
            return Err(BatchError::TooLarge {
                bytes: total,
                limit: BATCH_BYTES_LIMIT,
            });
        }
        let count =
            u32::try_from(records.len()).map_err(|_| BatchError::BadHeader("record_count"))?;
        let flags = if producer.is_some() { FLAG_PRODUCER } else { 0 };
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header_bytes(flags, count, 0, 0, 0, payload_bytes as u32));
        bytes.extend_from_slice(block);
        bytes.extend_from_slice(&payload);
        let mut batch = Batch { bytes };
        batch.reseal();
        Ok(batch)
    }

    /// A log-internal truncation marker: entries from `index` on are void; the log continues at
    /// `index` with offset `next_offset` after an entry of term `prev_term`.
    pub(crate) fn truncate_marker(index: u64, next_offset: u64, prev_term: u64) -> Batch {
        let bytes =
            header_bytes(FLAG_TRUNCATE_MARKER, 0, next_offset, prev_term, index, 0).to_vec();
        let mut batch = Batch { bytes };
        batch.reseal();
        batch
    }

    /// A log-internal durability marker: every entry up to `durable_index` was durable when
    /// the group holding it was built; `segment_seq` is the segment it is written in.
    pub(crate) fn durable_mark(durable_index: u64, segment_seq: u64) -> Batch {
        let bytes = header_bytes(FLAG_DURABLE_MARK, 0, segment_seq, 0, durable_index, 0).to_vec();
        let mut batch = Batch { bytes };
        batch.reseal();
        batch
    }

    /// The batch of a Raft leader's no-op entry: zero records, flagged so the entry's kind
    /// survives a restart; offset, term and index 0 until stamped.
    pub fn noop() -> Batch {
        let mut batch = Batch {
            bytes: header_bytes(FLAG_NOOP, 0, 0, 0, 0, 0).to_vec(),
        };
        batch.reseal();
        batch
    }

    /// The batch of a Raft configuration entry: zero records, flagged config, carrying `payload`
    /// (the core's membership encoding) byte for byte; offset, term and index 0 until stamped.
    pub fn config(payload: &[u8]) -> Result<Batch, BatchError> {
        let total = BATCH_HEADER_BYTES + payload.len();
        if total > BATCH_BYTES_LIMIT {
            return Err(BatchError::TooLarge {
                bytes: total,
                limit: BATCH_BYTES_LIMIT,
            });
        }
        let mut bytes = header_bytes(FLAG_CONFIG, 0, 0, 0, 0, payload.len() as u32).to_vec();
        bytes.extend_from_slice(payload);
        let mut batch = Batch { bytes };
        batch.reseal();
        Ok(batch)
    }

    /// One Raft entry for several producers' batches: stamps `batches` at consecutive offsets
    /// from `base_offset` with the entry's `term` and `index`, then wraps them, byte for byte, in
    /// a run batch whose header covers them all. A run holds at least two batches (one batch is
    /// its own entry), each a data batch with at least one record.
    pub fn run(
        batches: &mut [Batch],
        base_offset: u64,
        term: u64,
        index: u64,
    ) -> Result<Batch, BatchError> {
        assert!(batches.len() >= 2, "a run holds at least two batches");
        let mut next_offset = base_offset;
        let mut payload_bytes = 0usize;
        for batch in batches.iter_mut() {
            let h = batch.header();
            assert!(
                h.is_data() && h.record_count > 0,
                "a run holds data batches with records"
            );
            batch.stamp(next_offset, term, index);
            next_offset += u64::from(h.record_count);
            payload_bytes += batch.bytes.len();
        }
        let total = BATCH_HEADER_BYTES + payload_bytes;
        if total > BATCH_BYTES_LIMIT {
            return Err(BatchError::TooLarge {
                bytes: total,
                limit: BATCH_BYTES_LIMIT,
            });
        }
        let records = u32::try_from(next_offset - base_offset)
            .map_err(|_| BatchError::BadHeader("record_count"))?;
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&header_bytes(
            FLAG_RUN,
            records,
            base_offset,
            term,
            index,
            payload_bytes as u32,
        ));
        for batch in batches.iter() {
            bytes.extend_from_slice(&batch.bytes);
        }
        let mut run = Batch { bytes };
        run.reseal();
        debug_assert!(entry_batches(&run.bytes).all(|b| b.is_ok()));
        Ok(run)
    }

    /// The bytes after the fixed header (the records' archive; a config entry's membership).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[BATCH_HEADER_BYTES..]
    }

    /// Validates bytes (header, CRC, rkyv payload, record count) and takes them as a batch; a
    /// Kafka batch is validated record by record (`kafka::validate`).
    pub fn decode(bytes: Vec<u8>) -> Result<Batch, BatchError> {
        let header = check_frame(&bytes)?;
        if header.total_bytes != bytes.len() {
            return Err(BatchError::BadHeader(
                "payload length disagrees with batch length",
            ));
        }
        if !header.is_data() {
            return Err(BatchError::BadHeader("flags set on a data batch"));
        }
        check_records(&header, &bytes)?;
        Ok(Batch { bytes })
    }

    /// Takes the bytes of a Raft entry whose records were validated where the entry entered
    /// this node (the leader `decode`d the producer's batch, a follower ran
    /// [`Batch::validate_entry_bytes`] on the wire entry): checks the header, the CRC and the
    /// length only, so records are not validated twice. Accepts data and no-op batches, never a
    /// log-internal marker.
    pub fn from_entry_bytes(bytes: Vec<u8>) -> Result<Batch, BatchError> {
        Batch::check_entry_bytes(&bytes)?;
        Ok(Batch { bytes })
    }

    /// What [`Batch::from_entry_bytes`] checks, without taking the bytes.
    pub fn check_entry_bytes(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let header = check_frame(bytes)?;
        if header.total_bytes != bytes.len() {
            return Err(BatchError::BadHeader(
                "payload length disagrees with batch length",
            ));
        }
        if header.flags & FLAGS_LOG_INTERNAL != 0 {
            return Err(BatchError::BadHeader(
                "a log-internal marker is not an entry",
            ));
        }
        if (header.is_noop() || header.is_config()) && header.record_count != 0 {
            return Err(BatchError::BadHeader(
                "a no-op or configuration batch holds no records",
            ));
        }
        if header.is_run() {
            for inner in entry_batches(bytes) {
                let (inner, range) = inner?;
                if inner.is_kafka() {
                    check_kafka_header(&inner, &bytes[range])?;
                }
            }
        } else if header.is_kafka() {
            check_kafka_header(&header, bytes)?;
        }
        Ok(header)
    }

    /// What a follower checks of a command entry from the wire before its core takes it: all
    /// that [`Batch::check_entry_bytes`] checks, then the records of each data batch (a run's
    /// inner batches with their own CRCs) exactly as [`Batch::decode`] checks a producer's. The
    /// envelope CRC only catches accidents: a peer that computes it can still send records no
    /// reader can decode, which, once committed, would stop every node applying them (and again
    /// at each restart). Refused here, they never reach the log.
    pub fn validate_entry_bytes(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let header = Batch::check_entry_bytes(bytes)?;
        if header.is_run() {
            for inner in entry_batches(bytes) {
                let (inner, range) = inner?;
                check_frame(&bytes[range.clone()])?;
                check_records(&inner, &bytes[range])?;
            }
        } else if header.is_data() {
            check_records(&header, bytes)?;
        }
        Ok(header)
    }

    /// Takes bytes read back from our own disk, already verified by `check_frame`.
    pub(crate) fn from_verified(bytes: Vec<u8>) -> Batch {
        debug_assert!(check_frame(&bytes).is_ok());
        Batch { bytes }
    }

    /// Writes base_offset, term and index into the header and recomputes the CRC; the records
    /// are not re-encoded. A Kafka batch also gets them as its base offset and leader epoch.
    pub fn stamp(&mut self, base_offset: u64, term: u64, index: u64) {
        let unchanged = self.bytes[16..24] == base_offset.to_le_bytes()
            && self.bytes[24..32] == term.to_le_bytes()
            && self.bytes[32..40] == index.to_le_bytes();
        if unchanged {
            // Every constructor leaves a valid CRC and only `stamp` changes the bytes, so the
            // stored CRC is still right: a re-stamp with the same values (the log after the
            // leader's node, every follower) skips a CRC pass over the whole batch.
            debug_assert!(check_frame(&self.bytes).is_ok());
            return;
        }
        self.bytes[16..24].copy_from_slice(&base_offset.to_le_bytes());
        self.bytes[24..32].copy_from_slice(&term.to_le_bytes());
        self.bytes[32..40].copy_from_slice(&index.to_le_bytes());
        if self.header().is_kafka() {
            kafka::stamp(
                &mut self.bytes[BATCH_HEADER_BYTES..],
                base_offset as i64,
                leader_epoch(term),
            );
        }
        self.reseal();
    }

    fn reseal(&mut self) {
        let flags = u16_at(&self.bytes, 10);
        let crc =
            envelope_crc(flags, &self.bytes).expect("a Batch of a Kafka batch holds its header");
        self.bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// The decoded fixed header.
    pub fn header(&self) -> BatchHeader {
        parse_header(&self.bytes).expect("a Batch always holds a valid header")
    }

    /// The exact bytes (wire = disk = consumer).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives the bytes back.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// Decodes the records (validated rkyv access, then deserialisation; a Kafka batch's
    /// records, decompressed, read as native ones: `kafka::to_native`).
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        if self.header().is_kafka() {
            let mut records = Vec::new();
            kafka::for_each_record(self.payload(), |r| records.push(kafka::to_native(&r)))?;
            return Ok(records);
        }
        self.with_archive(|archived| {
            rkyv::deserialize::<Vec<Record>, rancor::Error>(archived)
                .map_err(|e| BatchError::BadPayload(e.to_string()))
        })?
    }

    fn with_archive<T>(
        &self,
        f: impl FnOnce(&rkyv::vec::ArchivedVec<ArchivedRecord>) -> T,
    ) -> Result<T, BatchError> {
        with_archive(&self.bytes[self.header().records_from()..], f)
    }

    /// The idempotent producer's id, epoch and base sequence this data batch carries (`None`:
    /// not an idempotent producer's batch).
    pub fn producer(&self) -> Option<ProducerSeq> {
        producer_of(&self.header(), &self.bytes)
    }
}

/// The idempotent producer's id, epoch and base sequence of the data batch that is exactly
/// `bytes` (with its parsed `header`), over bytes verified where they entered this node (the
/// producer block or Kafka header was validated there): a native batch's producer block, a
/// Kafka batch's producerId (-1: none), producerEpoch and baseSequence.
pub fn producer_of(header: &BatchHeader, bytes: &[u8]) -> Option<ProducerSeq> {
    if header.flags & FLAG_PRODUCER != 0 {
        return ProducerSeq::from_block(&bytes[BATCH_HEADER_BYTES..]).ok();
    }
    if !header.is_kafka() {
        return None;
    }
    let k = kafka::parse_header(&bytes[BATCH_HEADER_BYTES..]).ok()?;
    (k.producer_id >= 0).then_some(ProducerSeq {
        producer_id: k.producer_id as u64,
        epoch: k.producer_epoch,
        base_sequence: k.base_sequence,
    })
}

/// A keyed record as [`for_each_keyed_in`] visits it, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedRecord<'a> {
    /// Its offset (the batch's base offset + its place in the batch).
    pub offset: u64,
    /// Its key.
    pub key: &'a [u8],
    /// Its value (empty: a delete).
    pub value: &'a [u8],
    /// The producer's timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
}

/// Calls `visit` for every record that has a key, in order, reading the validated
/// archive in place (keyless records, most of a log, are never deserialised or copied), over the
/// bytes of a data batch that were verified where they entered this node and stayed in memory
/// since (a Raft entry: `Batch::decode` on the leader,
/// `Batch::validate_entry_bytes` on a follower, the CRC check of every log read): the header and
/// length are checked again and the archive is validated, but the CRC pass is not repeated and
/// the bytes are not copied into a `Batch`.
pub fn for_each_keyed_in(
    bytes: &[u8],
    mut visit: impl FnMut(KeyedRecord<'_>),
) -> Result<(), BatchError> {
    let header = parse_header(bytes)?;
    if header.total_bytes != bytes.len() {
        return Err(BatchError::BadHeader(
            "payload length disagrees with batch length",
        ));
    }
    if header.is_kafka() {
        // A null value is Kafka's tombstone: raftline's delete is an empty value.
        let mut place = 0u64;
        return Ok(kafka::for_each_record(&bytes[BATCH_HEADER_BYTES..], |r| {
            if let Some(key) = r.key {
                visit(KeyedRecord {
                    offset: header.base_offset + place,
                    key,
                    value: r.value.unwrap_or_default(),
                    timestamp_ms: u64::try_from(r.timestamp).unwrap_or(0),
                });
            }
            place += 1;
        })?);
    }
    with_archive(&bytes[header.records_from()..], |archived| {
        for (place, record) in (0u64..).zip(archived.iter()) {
            if let Some(key) = record.key.as_ref() {
                visit(KeyedRecord {
                    offset: header.base_offset + place,
                    key: key.as_slice(),
                    value: record.value.as_slice(),
                    timestamp_ms: record.timestamp_ms.to_native(),
                });
            }
        }
    })
}

/// Calls `visit` with the offset and producer timestamp (ms since the Unix epoch; a Kafka
/// timestamp before it reads as 0) of every record of a data batch, in order, over bytes
/// verified where they entered this node (like [`for_each_keyed_in`]).
pub fn for_each_timestamp_in(
    bytes: &[u8],
    mut visit: impl FnMut(u64, u64),
) -> Result<(), BatchError> {
    let header = data_batch_header(bytes)?;
    if header.is_kafka() {
        let mut offset = header.base_offset;
        return Ok(kafka::for_each_record(&bytes[BATCH_HEADER_BYTES..], |r| {
            visit(offset, u64::try_from(r.timestamp).unwrap_or(0));
            offset += 1;
        })?);
    }
    with_archive(&bytes[header.records_from()..], |archived| {
        for (offset, record) in (header.base_offset..).zip(archived.iter()) {
            visit(offset, record.timestamp_ms.to_native());
        }
    })
}

/// The largest record timestamp of a data batch (`None`: no records, or a Kafka batch whose
/// timestamps all precede the epoch). A Kafka batch's comes from its header (maxTimestamp,
/// checked against its records when the batch entered the cluster), so its records are not
/// decompressed; a native batch's records are walked.
pub fn max_timestamp_in(bytes: &[u8]) -> Result<Option<u64>, BatchError> {
    let header = data_batch_header(bytes)?;
    if header.is_kafka() {
        let k = kafka::parse_header(&bytes[BATCH_HEADER_BYTES..])?;
        return Ok(u64::try_from(k.max_timestamp).ok());
    }
    let mut max = None;
    for_each_timestamp_in(bytes, |_, ts| max = max.max(Some(ts)))?;
    Ok(max)
}

fn data_batch_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = parse_header(bytes)?;
    if header.total_bytes != bytes.len() || !header.is_data() {
        return Err(BatchError::BadHeader("not a whole data batch"));
    }
    Ok(header)
}

/// Appends a data batch's records to `out` as the Kafka RecordBatch v2 a Kafka consumer is
/// served, over bytes verified where they entered this node (like [`for_each_keyed_in`]): a
/// Kafka batch's payload verbatim, a native batch converted at its offset and term (the only
/// place the two formats meet on the read path; its cost is not measured yet).
pub fn append_kafka_record_batch(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), BatchError> {
    let header = data_batch_header(bytes)?;
    if header.is_kafka() {
        out.extend_from_slice(&bytes[BATCH_HEADER_BYTES..]);
        return Ok(());
    }
    let records = with_archive(&bytes[header.records_from()..], |archived| {
        rkyv::deserialize::<Vec<Record>, rancor::Error>(archived)
            .map_err(|e| BatchError::BadPayload(e.to_string()))
    })??;
    kafka::encode_records(
        out,
        header.base_offset as i64,
        leader_epoch(header.term),
        &records,
    );
    Ok(())
}

/// The data batches an entry's bytes hold, in order, each with its byte range in `bytes`: the
/// inner batches of a run, or the batch itself. A run's structure is checked as it is walked
/// (an error ends the walk): every inner batch is a data batch with records, the run's term and
/// index, and the next offset; together they fill the payload exactly, hold the run's record
/// count, and are at least two. Their CRCs are not recomputed: the run's CRC covers their bytes.
pub fn entry_batches(bytes: &[u8]) -> EntryBatches<'_> {
    EntryBatches {
        bytes,
        run: None,
        pos: 0,
        count: 0,
        records: 0,
        failed: false,
    }
}

/// Iterator of [`entry_batches`].
pub struct EntryBatches<'a> {
    bytes: &'a [u8],
    /// The run's header, once the walk is inside a run.
    run: Option<BatchHeader>,
    pos: usize,
    /// Inner batches and records walked so far.
    count: usize,
    records: u64,
    failed: bool,
}

impl EntryBatches<'_> {
    fn step(&mut self) -> Option<Result<(BatchHeader, Range<usize>), BatchError>> {
        let Some(run) = self.run else {
            let outer = match parse_header(self.bytes) {
                Ok(h) => h,
                Err(e) => return Some(Err(e)),
            };
            if outer.total_bytes != self.bytes.len() {
                return Some(Err(BatchError::BadHeader(
                    "payload length disagrees with batch length",
                )));
            }
            if !outer.is_run() {
                self.pos = self.bytes.len();
                return Some(Ok((outer, 0..self.bytes.len())));
            }
            self.run = Some(outer);
            self.pos = BATCH_HEADER_BYTES;
            return self.step();
        };
        let expected_offset = run.base_offset + self.records;
        if self.pos == self.bytes.len() {
            if self.count < 2 || expected_offset != run.next_offset() {
                return Some(Err(BatchError::BadHeader(
                    "a run's batches do not add up to the run",
                )));
            }
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let inner = match parse_header(rest) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if inner.total_bytes > rest.len() {
            return Some(Err(BatchError::Truncated {
                have: rest.len(),
                need: inner.total_bytes,
            }));
        }
        if !inner.is_data()
            || inner.record_count == 0
            || (inner.term, inner.index) != (run.term, run.index)
            || inner.base_offset != expected_offset
        {
            return Some(Err(BatchError::BadHeader(
                "a run's batch is not the run's next data batch",
            )));
        }
        let range = self.pos..self.pos + inner.total_bytes;
        self.pos = range.end;
        self.count += 1;
        self.records += u64::from(inner.record_count);
        Some(Ok((inner, range)))
    }
}

impl Iterator for EntryBatches<'_> {
    type Item = Result<(BatchHeader, Range<usize>), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || (self.run.is_none() && self.pos > 0) {
            return None;
        }
        let item = self.step();
        self.failed = matches!(item, Some(Err(_)));
        item
    }
}

/// Checks a data batch's records, whose frame was checked: a Kafka batch's header against its
/// envelope and every record (`kafka::validate`), a native batch's producer block and archive
/// (bytecheck) against the header's record count.
fn check_records(header: &BatchHeader, bytes: &[u8]) -> Result<(), BatchError> {
    debug_assert!(header.is_data() && header.total_bytes == bytes.len());
    if header.is_kafka() {
        check_kafka_header(header, bytes)?;
        kafka::validate(&bytes[BATCH_HEADER_BYTES..])?;
        return Ok(());
    }
    if header.flags & FLAG_PRODUCER != 0 {
        ProducerSeq::from_block(&bytes[BATCH_HEADER_BYTES..])?;
    }
    let count = with_archive(&bytes[header.records_from()..], |records| records.len())?;
    if count != header.record_count as usize {
        return Err(BatchError::BadPayload(format!(
            "header says {} records, payload holds {count}",
            header.record_count
        )));
    }
    Ok(())
}

/// Validates the records' archive (bytecheck) and hands it to `f`. rkyv needs the archive
/// 16-aligned: a payload that already is (a batch at the start of an allocation: the allocator
/// aligns to 16) is validated in place, any other is copied into an aligned buffer first.
fn with_archive<T>(
    payload: &[u8],
    f: impl FnOnce(&rkyv::vec::ArchivedVec<ArchivedRecord>) -> T,
) -> Result<T, BatchError> {
    const ALIGN: usize = 16;
    let access = |bytes: &[u8]| {
        rkyv::access::<rkyv::vec::ArchivedVec<ArchivedRecord>, rancor::BoxedError>(bytes)
            .map(f)
            .map_err(|e| BatchError::BadPayload(e.to_string()))
    };
    if payload.as_ptr() as usize % ALIGN == 0 {
        access(payload)
    } else {
        let mut aligned = AlignedVec::<ALIGN>::with_capacity(payload.len());
        aligned.extend_from_slice(payload);
        access(&aligned)
    }
}

fn header_bytes(
    flags: u16,
    record_count: u32,
    base_offset: u64,
    term: u64,
    index: u64,
    payload_bytes: u32,
) -> [u8; BATCH_HEADER_BYTES] {
    let mut h = [0u8; BATCH_HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    h[12..16].copy_from_slice(&record_count.to_le_bytes());
    h[16..24].copy_from_slice(&base_offset.to_le_bytes());
    h[24..32].copy_from_slice(&term.to_le_bytes());
    h[32..40].copy_from_slice(&index.to_le_bytes());
    h[40..44].copy_from_slice(&payload_bytes.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_records() -> Vec<Record> {
        vec![
            Record {
                key: Some(b"k1".to_vec()),
                value: b"hello".to_vec(),
                timestamp_ms: 7,
                headers: vec![],
            },
            Record {
                key: None,
                value: vec![0xAB; 300],
                timestamp_ms: u64::MAX,
                headers: vec![("h".into(), b"v".to_vec()), ("empty".into(), vec![])],
            },
        ]
    }

    #[test]
    fn keyed_records_are_visited_in_order_and_keyless_ones_skipped() {
        let batch = Batch::encode(&sample_records()).unwrap();
        let mut seen = Vec::new();
        for_each_keyed_in(batch.as_bytes(), |r| {
            seen.push((r.key.to_vec(), r.value.to_vec()))
        })
        .unwrap();
        assert_eq!(seen, vec![(b"k1".to_vec(), b"hello".to_vec())]);
    }

    fn batch_of_records(n: usize) -> Batch {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                key: None,
                value: vec![i as u8; 10 + i],
                timestamp_ms: i as u64,
                headers: vec![],
            })
            .collect();
        Batch::encode(&records).unwrap()
    }

    #[test]
    fn a_run_stamps_each_batch_at_its_offsets_and_covers_them_all() {
        let mut batches = vec![
            batch_of_records(1),
            batch_of_records(2),
            batch_of_records(3),
        ];
        let run = Batch::run(&mut batches, 10, 2, 7).unwrap();
        let h = run.header();
        assert!(h.is_run());
        assert_eq!(
            (h.base_offset, h.record_count, h.term, h.index),
            (10, 6, 2, 7)
        );
        let inner: Vec<(BatchHeader, Range<usize>)> = entry_batches(run.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let offsets: Vec<(u64, u32)> = inner
            .iter()
            .map(|(h, _)| (h.base_offset, h.record_count))
            .collect();
        assert_eq!(offsets, vec![(10, 1), (11, 2), (13, 3)]);
        for ((h, range), stamped) in inner.iter().zip(&batches) {
            // Each inner batch is its producer's batch as stamped, a valid batch on its own.
            let bytes = &run.as_bytes()[range.clone()];
            assert_eq!(bytes, stamped.as_bytes());
            assert_eq!((h.term, h.index), (2, 7));
            Batch::decode(bytes.to_vec()).unwrap();
        }
        Batch::from_entry_bytes(run.as_bytes().to_vec()).unwrap();
        assert!(
            Batch::decode(run.as_bytes().to_vec()).is_err(),
            "a producer may not send a run"
        );
        let plain = batch_of_records(2);
        let whole: Vec<_> = entry_batches(plain.as_bytes()).collect();
        assert_eq!(whole.len(), 1);
        assert_eq!(whole[0].as_ref().unwrap().1, 0..plain.as_bytes().len());
    }

    #[test]
    fn a_run_whose_batches_do_not_continue_it_is_refused() {
        // Flips `mask` into the byte at `at` of a valid run, reseals its CRC, offers it.
        let run = |at: usize, mask: u8| {
            let mut batches = vec![batch_of_records(1), batch_of_records(2)];
            let mut run = Batch::run(&mut batches, 10, 2, 7).unwrap();
            run.bytes[at] ^= mask;
            run.reseal();
            Batch::from_entry_bytes(run.bytes)
        };
        let second = BATCH_HEADER_BYTES + batch_of_records(1).as_bytes().len();
        let cases = [
            ("offset gap", second + 16, 1),
            ("other index", second + 32, 1),
            ("other term", BATCH_HEADER_BYTES + 24, 1),
            ("count disagrees", 12, 1),
            ("flagged inner batch", second + 10, FLAG_NOOP as u8),
        ];
        for (what, at, mask) in cases {
            assert!(run(at, mask).is_err(), "{what} accepted");
        }
        assert!(run(0, 0).is_ok());
        // A run of one batch is not a run.
        let mut one = batch_of_records(1);
        one.stamp(10, 2, 7);
        let mut bytes = header_bytes(FLAG_RUN, 1, 10, 2, 7, one.bytes.len() as u32).to_vec();
        bytes.extend_from_slice(&one.bytes);
        let mut lone = Batch { bytes };
        lone.reseal();
        assert!(Batch::from_entry_bytes(lone.bytes).is_err());
    }

    #[test]
    fn keyed_records_read_the_same_from_aligned_and_unaligned_bytes() {
        let batch = Batch::encode(&sample_records()).unwrap();
        let bytes = batch.as_bytes();
        // Offsets 0..16 into a 16-aligned buffer: the in-place path and the copying path.
        let mut buf = AlignedVec::<16>::with_capacity(bytes.len() + 16);
        for shift in 0..16 {
            buf.clear();
            buf.extend_from_slice(&vec![0; shift]);
            buf.extend_from_slice(bytes);
            let mut seen = Vec::new();
            for_each_keyed_in(&buf[shift..], |r| {
                seen.push((r.key.to_vec(), r.value.to_vec()))
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![(b"k1".to_vec(), b"hello".to_vec())],
                "shift {shift}"
            );
            // The archive is still validated on either path: a wild root pointer (the last
            // bytes of an rkyv archive) is refused.
            let end = buf.len();
            buf[end - 4..].fill(0x7F);
            assert!(
                matches!(
                    for_each_keyed_in(&buf[shift..], |_| {}),
                    Err(BatchError::BadPayload(_))
                ),
                "shift {shift}"
            );
        }
    }

    #[test]
    fn encoded_batch_decodes_to_the_same_records() {
        let batch = Batch::encode(&sample_records()).unwrap();
        let again = Batch::decode(batch.as_bytes().to_vec()).unwrap();
        assert_eq!(again.records().unwrap(), sample_records());
        assert_eq!(again.header().record_count, 2);
    }

    #[test]
    fn stamping_changes_header_fields_and_keeps_records_and_validity() {
        let mut batch = Batch::encode(&sample_records()).unwrap();
        let payload_before = batch.as_bytes()[BATCH_HEADER_BYTES..].to_vec();
        batch.stamp(1000, 3, 42);
        let decoded = Batch::decode(batch.as_bytes().to_vec()).unwrap();
        let h = decoded.header();
        assert_eq!(
            (h.base_offset, h.term, h.index, h.next_offset()),
            (1000, 3, 42, 1002)
        );
        assert_eq!(
            &decoded.as_bytes()[BATCH_HEADER_BYTES..],
            &payload_before[..]
        );
        assert_eq!(decoded.records().unwrap(), sample_records());
    }

    #[test]
    fn every_single_bit_flip_fails_validation() {
        let mut batch = Batch::encode(&sample_records()).unwrap();
        batch.stamp(5, 6, 7);
        let good = batch.into_bytes();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                Batch::decode(bad).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn truncated_and_oversized_inputs_are_typed_errors() {
        let good = Batch::encode(&sample_records()).unwrap().into_bytes();
        assert!(matches!(
            Batch::decode(good[..10].to_vec()),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            Batch::decode(good[..good.len() - 1].to_vec()),
            Err(BatchError::Truncated { .. })
        ));
        let mut huge = good.clone();
        huge[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Batch::decode(huge),
            Err(BatchError::TooLarge { .. })
        ));
    }

    #[test]
    fn payload_that_is_not_a_record_archive_is_rejected_despite_a_valid_crc() {
        let mut bytes = header_bytes(0, 1, 0, 0, 0, 16).to_vec();
        bytes.extend_from_slice(&[0xFF; 16]);
        let crc = crc32c(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Batch::decode(bytes),
            Err(BatchError::BadPayload(_))
        ));
    }

    #[test]
    fn record_count_must_match_the_payload() {
        let mut batch = Batch::encode(&sample_records()).unwrap().into_bytes();
        batch[12..16].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32c(&batch[8..]);
        batch[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            Batch::decode(batch),
            Err(BatchError::BadPayload(_))
        ));
    }

    #[test]
    fn noop_batch_is_flagged_survives_stamping_and_is_refused_as_a_data_batch() {
        let mut noop = Batch::noop();
        noop.stamp(10, 2, 5);
        let h = check_frame(noop.as_bytes()).unwrap();
        assert!(h.is_noop());
        assert_eq!(
            (h.record_count, h.base_offset, h.term, h.index),
            (0, 10, 2, 5)
        );
        assert!(!Batch::encode(&[]).unwrap().header().is_noop());
        assert!(matches!(
            Batch::decode(noop.into_bytes()),
            Err(BatchError::BadHeader(_))
        ));
    }

    #[test]
    fn config_batch_keeps_its_payload_and_flag_through_stamping() {
        let mut config = Batch::config(b"members 1,2,3").unwrap();
        config.stamp(7, 3, 9);
        let again = Batch::from_entry_bytes(config.into_bytes()).unwrap();
        let h = again.header();
        assert!(h.is_config() && !h.is_noop());
        assert_eq!((h.record_count, h.base_offset, h.index), (0, 7, 9));
        assert_eq!(again.payload(), b"members 1,2,3");
        assert!(
            Batch::decode(again.into_bytes()).is_err(),
            "never a data batch"
        );
    }

    #[test]
    fn entry_bytes_are_checked_by_header_crc_and_length() {
        let mut batch = Batch::encode(&sample_records()).unwrap();
        batch.stamp(3, 1, 2);
        let good = batch.into_bytes();
        assert!(Batch::from_entry_bytes(good.clone()).is_ok());
        let mut flipped = good.clone();
        flipped[60] ^= 1;
        assert!(matches!(
            Batch::from_entry_bytes(flipped),
            Err(BatchError::Checksum { .. })
        ));
        let mut longer = good;
        longer.push(0);
        assert!(Batch::from_entry_bytes(longer).is_err());
        let marker = Batch::truncate_marker(4, 0, 1).into_bytes();
        assert!(Batch::from_entry_bytes(marker).is_err());
    }

    /// `bytes` with their envelope CRC recomputed, as any peer can.
    fn resealed(bytes: Vec<u8>) -> Vec<u8> {
        let mut batch = Batch { bytes };
        batch.reseal();
        batch.bytes
    }

    #[test]
    fn a_wire_entry_with_a_valid_crc_is_still_refused_for_records_no_reader_could_decode() {
        let mut batch = Batch::encode(&sample_records()).unwrap();
        batch.stamp(3, 1, 2);
        let good = batch.into_bytes();
        assert_eq!(Batch::validate_entry_bytes(&good).unwrap().base_offset, 3);

        let mut garbage = good.clone();
        garbage[BATCH_HEADER_BYTES..].fill(0xFF);
        let garbage = resealed(garbage);
        assert!(
            Batch::check_entry_bytes(&garbage).is_ok(),
            "the envelope is fine"
        );
        assert!(matches!(
            Batch::validate_entry_bytes(&garbage),
            Err(BatchError::BadPayload(_))
        ));

        let mut lying = good;
        lying[12..16].copy_from_slice(&3u32.to_le_bytes());
        let lying = resealed(lying);
        assert!(Batch::check_entry_bytes(&lying).is_ok());
        let refused = Batch::validate_entry_bytes(&lying).unwrap_err();
        assert!(
            refused.to_string().contains("header says 3 records"),
            "{refused}"
        );

        // A run's inner batch keeps its own CRC (consumers receive it as it is).
        let mut batches = vec![batch_of_records(2), batch_of_records(3)];
        let run = Batch::run(&mut batches, 10, 1, 4).unwrap().into_bytes();
        assert_eq!(Batch::validate_entry_bytes(&run).unwrap().record_count, 5);
        let mut bad_inner = run.clone();
        bad_inner[BATCH_HEADER_BYTES + 4] ^= 1;
        let bad_inner = resealed(bad_inner);
        assert!(Batch::check_entry_bytes(&bad_inner).is_ok());
        assert!(matches!(
            Batch::validate_entry_bytes(&bad_inner),
            Err(BatchError::Checksum { .. })
        ));
        let mut bad_records = run;
        let second = BATCH_HEADER_BYTES + batches[0].as_bytes().len();
        bad_records[second + BATCH_HEADER_BYTES..].fill(0xFF);
        let inner_crc = crc32c(&bad_records[second + 8..]);
        bad_records[second + 4..second + 8].copy_from_slice(&inner_crc.to_le_bytes());
        let bad_records = resealed(bad_records);
        assert!(matches!(
            Batch::validate_entry_bytes(&bad_records),
            Err(BatchError::BadPayload(_))
        ));

        // A Kafka batch is checked record by record.
        let mut kafka = Batch::from_kafka(&kafka_batch(&kafka_records())).unwrap();
        kafka.stamp(20, 1, 5);
        assert_eq!(
            Batch::validate_entry_bytes(kafka.as_bytes())
                .unwrap()
                .record_count,
            2
        );
    }

    /// The sample records with timestamps Kafka can carry (an i64).
    fn kafka_records() -> Vec<Record> {
        let mut records = sample_records();
        for r in &mut records {
            r.timestamp_ms = r.timestamp_ms.min(i64::MAX as u64);
        }
        records
    }

    fn kafka_batch(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        // A producer's base offset and epoch are whatever it sent: the leader overwrites them.
        kafka::encode_records(&mut out, 77, 5, records);
        out
    }

    #[test]
    fn a_kafka_batch_is_stamped_in_place_and_keeps_the_producers_crc() {
        let sent = kafka_batch(&kafka_records());
        let mut batch = Batch::from_kafka(&sent).unwrap();
        batch.stamp(1000, 3, 42);
        let h = check_frame(batch.as_bytes()).unwrap();
        assert!(h.is_kafka() && h.is_data());
        assert_eq!((h.base_offset, h.record_count, h.term), (1000, 2, 3));
        let payload = batch.payload();
        // Only the base offset and the leader epoch differ from what the producer sent.
        assert_eq!(&payload[8..12], &sent[8..12]);
        assert_eq!(&payload[16..], &sent[16..]);
        let k = kafka::parse_header(payload).unwrap();
        assert_eq!((k.base_offset, k.leader_epoch), (1000, 3));
        let again = Batch::decode(batch.as_bytes().to_vec()).unwrap();
        assert_eq!(again.records().unwrap(), kafka_records());
        Batch::from_entry_bytes(batch.as_bytes().to_vec()).unwrap();
        let mut served = Vec::new();
        append_kafka_record_batch(batch.as_bytes(), &mut served).unwrap();
        assert_eq!(served, payload, "a Kafka consumer gets the bytes verbatim");
    }

    #[test]
    fn every_single_bit_flip_of_a_stored_kafka_batch_fails_validation() {
        let mut batch = Batch::from_kafka(&kafka_batch(&kafka_records())).unwrap();
        batch.stamp(5, 6, 7);
        let good = batch.into_bytes();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check_frame(&bad).is_err(),
                "flip of bit {bit} passed the CRCs"
            );
            assert!(
                Batch::decode(bad).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn a_kafka_batch_whose_header_disagrees_with_its_envelope_is_refused() {
        let mut batch = Batch::from_kafka(&kafka_batch(&kafka_records())).unwrap();
        batch.stamp(5, 6, 7);
        // The leader epoch of the Kafka header is not the term (resealed: a writer's bug, not a
        // flipped bit).
        let mut bytes = batch.into_bytes();
        bytes[BATCH_HEADER_BYTES + 15] ^= 1;
        let mut forged = Batch { bytes };
        forged.reseal();
        assert!(Batch::from_entry_bytes(forged.bytes.clone()).is_err());
        assert!(Batch::decode(forged.bytes).is_err());
    }

    #[test]
    fn kafka_batches_in_a_run_are_walked_applied_and_served() {
        let tombstone = Record {
            key: Some(b"k1".to_vec()),
            value: vec![],
            timestamp_ms: 8,
            headers: vec![],
        };
        let mut batches = vec![
            Batch::encode(&kafka_records()).unwrap(),
            Batch::from_kafka(&kafka_batch(std::slice::from_ref(&tombstone))).unwrap(),
        ];
        let run = Batch::run(&mut batches, 10, 2, 7).unwrap();
        Batch::from_entry_bytes(run.as_bytes().to_vec()).unwrap();
        let mut keyed = Vec::new();
        let mut served = Vec::new();
        for inner in entry_batches(run.as_bytes()) {
            let (_, range) = inner.unwrap();
            let bytes = &run.as_bytes()[range];
            for_each_keyed_in(bytes, |r| keyed.push((r.key.to_vec(), r.value.to_vec()))).unwrap();
            append_kafka_record_batch(bytes, &mut served).unwrap();
        }
        assert_eq!(
            keyed,
            vec![
                (b"k1".to_vec(), b"hello".to_vec()),
                (b"k1".to_vec(), vec![])
            ],
            "the Kafka null value is the delete"
        );
        // Two Kafka batches back to back, at the run's offsets, with the term as leader epoch.
        let first = kafka::parse_header(&served[..served.len() - batches[1].payload().len()]);
        let first = first.unwrap();
        assert_eq!(
            (first.base_offset, first.leader_epoch, first.record_count),
            (10, 2, 2)
        );
        let second = &served[served.len() - batches[1].payload().len()..];
        assert_eq!(kafka::parse_header(second).unwrap().base_offset, 12);
        let mut from_native = Vec::new();
        kafka::for_each_record(&served[..served.len() - second.len()], |r| {
            from_native.push(kafka::to_native(&r))
        })
        .unwrap();
        assert_eq!(from_native, kafka_records());
    }

    #[test]
    fn compressed_kafka_batches_are_read_and_applied() {
        for codec in [kafka::Compression::Lz4, kafka::Compression::Zstd] {
            let sent = kafka::tests::compressed(&kafka_batch(&kafka_records()), codec);
            let batch = Batch::from_kafka(&sent).unwrap();
            assert_eq!(batch.records().unwrap(), kafka_records(), "{codec:?}");
            let mut keyed = Vec::new();
            for_each_keyed_in(batch.as_bytes(), |r| keyed.push(r.key.to_vec())).unwrap();
            assert_eq!(keyed, vec![b"k1".to_vec()], "{codec:?}");
        }
    }

    const PRODUCER: ProducerSeq = ProducerSeq {
        producer_id: (7 << 32) | 3,
        epoch: 2,
        base_sequence: 40,
    };

    #[test]
    fn an_idempotent_batch_carries_its_producer_through_stamps_runs_and_reads() {
        let batch = Batch::encode_idempotent(&sample_records(), PRODUCER).unwrap();
        let mut batch = Batch::decode(batch.into_bytes()).unwrap();
        assert_eq!(batch.producer(), Some(PRODUCER));
        assert_eq!(batch.records().unwrap(), sample_records());
        assert_eq!(Batch::encode(&sample_records()).unwrap().producer(), None);
        batch.stamp(10, 2, 5);
        assert_eq!(batch.producer(), Some(PRODUCER), "stamping keeps it");
        let mut both = [batch, Batch::encode(&sample_records()).unwrap()];
        let run = Batch::run(&mut both, 10, 2, 5).unwrap();
        let run = Batch::from_entry_bytes(run.into_bytes()).unwrap();
        let inner: Vec<_> = entry_batches(run.as_bytes())
            .map(|b| {
                let (h, range) = b.unwrap();
                producer_of(&h, &run.as_bytes()[range])
            })
            .collect();
        assert_eq!(inner, vec![Some(PRODUCER), None]);
        let (_, first) = entry_batches(run.as_bytes()).next().unwrap().unwrap();
        let first = &run.as_bytes()[first];
        let mut keyed = Vec::new();
        for_each_keyed_in(first, |r| keyed.push((r.offset, r.key.to_vec()))).unwrap();
        assert_eq!(keyed, vec![(10, b"k1".to_vec())]);
        let mut served = Vec::new();
        append_kafka_record_batch(first, &mut served).unwrap();
        let k = kafka::validate(&served).unwrap();
        assert_eq!((k.base_offset, k.record_count), (10, 2));
        let mut timestamps = Vec::new();
        for_each_timestamp_in(first, |offset, ts| timestamps.push((offset, ts))).unwrap();
        assert_eq!(timestamps, vec![(10, 7), (11, u64::MAX)]);
        assert_eq!(max_timestamp_in(first).unwrap(), Some(u64::MAX));
    }

    #[test]
    fn a_bad_producer_block_is_refused() {
        let negative = ProducerSeq {
            epoch: -1,
            ..PRODUCER
        };
        assert!(Batch::encode_idempotent(&sample_records(), negative).is_err());
        let good = Batch::encode_idempotent(&sample_records(), PRODUCER).unwrap();
        let resealed = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.as_bytes().to_vec();
            edit(&mut bytes);
            let mut batch = Batch { bytes };
            batch.reseal();
            Batch::decode(batch.into_bytes())
        };
        type Edit<'a> = &'a dyn Fn(&mut Vec<u8>);
        let cases: [(&str, Edit); 4] = [
            ("negative epoch", &|b| {
                b[56..58].copy_from_slice(&(-3i16).to_le_bytes())
            }),
            ("negative sequence", &|b| {
                b[60..64].copy_from_slice(&(-1i32).to_le_bytes())
            }),
            ("reserved bits", &|b| b[58] = 1),
            ("with the Kafka flag", &|b| {
                b[10..12].copy_from_slice(&(FLAG_PRODUCER | FLAG_KAFKA).to_le_bytes())
            }),
        ];
        for (what, edit) in cases {
            assert!(
                matches!(resealed(edit), Err(BatchError::BadHeader(_))),
                "{what}"
            );
        }
        assert!(resealed(&|_| ()).is_ok());
    }

    /// A Kafka batch as an idempotent producer sends it: producer fields set, Kafka's CRC
    /// recomputed.
    fn kafka_batch_of(producer_id: i64, epoch: i16, base_sequence: i32) -> Vec<u8> {
        let mut bytes = kafka_batch(&kafka_records());
        bytes[43..51].copy_from_slice(&producer_id.to_be_bytes());
        bytes[51..53].copy_from_slice(&epoch.to_be_bytes());
        bytes[53..57].copy_from_slice(&base_sequence.to_be_bytes());
        let crc = crc32c(&bytes[KAFKA_CRC_FROM..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn a_kafka_batch_names_its_producer_and_a_negative_epoch_or_sequence_is_refused() {
        let batch = Batch::from_kafka(&kafka_batch_of(99, 1, 7)).unwrap();
        let expected = ProducerSeq {
            producer_id: 99,
            epoch: 1,
            base_sequence: 7,
        };
        assert_eq!(batch.producer(), Some(expected));
        assert_eq!(
            Batch::from_kafka(&kafka_batch_of(-1, -1, -1))
                .unwrap()
                .producer(),
            None
        );
        for (epoch, seq) in [(-1, 0), (0, -1)] {
            assert!(matches!(
                Batch::from_kafka(&kafka_batch_of(99, epoch, seq)),
                Err(BatchError::Kafka(KafkaBatchError::ProducerFields { .. }))
            ));
        }
    }

    #[test]
    fn record_timestamps_and_their_largest_read_the_same_from_native_and_kafka_batches() {
        let mut records = kafka_records();
        records[0].timestamp_ms = 1_700_000_000_009;
        records[1].timestamp_ms = 1_700_000_000_002;
        let mut native = Batch::encode(&records).unwrap();
        native.stamp(40, 1, 3);
        let mut kafka_sent = Batch::from_kafka(&kafka_batch(&records)).unwrap();
        kafka_sent.stamp(40, 1, 3);
        let zstd = kafka::tests::compressed(&kafka_batch(&records), kafka::Compression::Zstd);
        let mut compressed = Batch::from_kafka(&zstd).unwrap();
        compressed.stamp(40, 1, 3);
        for batch in [&native, &kafka_sent, &compressed] {
            let mut seen = Vec::new();
            for_each_timestamp_in(batch.as_bytes(), |offset, ts| seen.push((offset, ts))).unwrap();
            assert_eq!(seen, vec![(40, 1_700_000_000_009), (41, 1_700_000_000_002)]);
            assert_eq!(
                max_timestamp_in(batch.as_bytes()).unwrap(),
                Some(1_700_000_000_009)
            );
        }
        assert_eq!(
            max_timestamp_in(Batch::encode(&[]).unwrap().as_bytes()).unwrap(),
            None
        );
        assert!(max_timestamp_in(Batch::noop().as_bytes()).is_err());
    }

    #[test]
    fn empty_batch_is_valid() {
        let batch = Batch::encode(&[]).unwrap();
        assert_eq!(
            Batch::decode(batch.into_bytes())
                .unwrap()
                .records()
                .unwrap(),
            vec![]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn record() -> impl Strategy<Value = Record> {
            (
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                proptest::collection::vec(any::<u8>(), 0..200),
                0..=i64::MAX as u64,
                proptest::collection::vec(
                    (".{0,8}", proptest::collection::vec(any::<u8>(), 0..10)),
                    0..4,
                ),
            )
                .prop_map(|(key, value, timestamp_ms, headers)| Record {
                    key,
                    value,
                    timestamp_ms,
                    headers,
                })
        }

        proptest! {
            #[test]
            fn arbitrary_records_round_trip_through_kafka_both_ways(
                records in proptest::collection::vec(record(), 1..20),
                base in 0..u64::MAX / 2,
                term in 0..u64::MAX,
            ) {
                // Kafka producer -> envelope -> native reader.
                let mut batch = Batch::from_kafka(&kafka_batch(&records)).unwrap();
                batch.stamp(base, term, 1);
                let stored = Batch::decode(batch.as_bytes().to_vec()).unwrap();
                prop_assert_eq!(stored.records().unwrap(), records.clone());
                // Native producer -> Kafka consumer.
                let mut native = Batch::encode(&records).unwrap();
                native.stamp(base, term, 1);
                let mut served = Vec::new();
                append_kafka_record_batch(native.as_bytes(), &mut served).unwrap();
                let k = kafka::validate(&served).unwrap();
                prop_assert_eq!((k.base_offset as u64, k.leader_epoch), (base, leader_epoch(term)));
                let mut back = Vec::new();
                kafka::for_each_record(&served, |r| back.push(kafka::to_native(&r))).unwrap();
                prop_assert_eq!(back, records);
            }

            #[test]
            fn a_bit_flip_in_a_producers_kafka_batch_is_refused(
                records in proptest::collection::vec(record(), 1..5),
                at in any::<proptest::sample::Index>(),
                bit in 0..8u8,
            ) {
                let good = kafka_batch(&records);
                // Bytes 0..8 and 12..16 (base offset, epoch) are the leader's to overwrite.
                let covered: Vec<usize> = (8..12).chain(16..good.len()).collect();
                let mut bad = good.clone();
                bad[*at.get(&covered)] ^= 1 << bit;
                prop_assert!(Batch::from_kafka(&bad).is_err());
            }
        }
    }
}
