//! Frames: the unit of every byte exchanged on the peer and client ports.
//!
//! Layout (all integers little-endian), [`FRAME_HEADER_BYTES`] = 32:
//! ```text
//!  0 u32 magic "RLNF"           4 u8  protocol version (1)
//!  5 u8  frame type             6 u16 flags (0; any set bit is rejected)
//!  8 u64 cluster id            16 u64 sender node id (0 = a client)
//! 24 u32 payload length        28 u32 crc32c (Castagnoli) of bytes [0, 28) then the payload
//! 32 payload
//! ```
//! The decoder checks magic, version and the payload length against its limit from the header
//! alone, before it buffers any payload; the type and flags are judged after the CRC, so a
//! corrupted byte is reported as a CRC mismatch and an unknown type means the peer really sent
//! one (version skew). Magic is checked byte by byte as bytes arrive, so a stranger speaking
//! another protocol is refused after its first wrong byte.

use std::io::{self, Read};

use rkyv::util::AlignedVec;

use crate::cluster_id::ClusterId;

/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Default limit on a frame's payload: a 1 MiB batch fits many times over, and so does an
/// AppendEntries message of the default size.
pub const PAYLOAD_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// The frame magic, "RLNF" in little-endian byte order on the wire.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RLNF");
/// Sender id of every frame a client sends.
pub const CLIENT_SENDER_ID: u64 = 0;

const CRC_AT: usize = 28;
const META_LEN_BYTES: usize = 4;
/// Bytes read from a socket per `fill_from` call at least.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Room a decoder keeps between frames (more only while a larger frame is being received):
/// above a subscription's 1 MiB frames, so streaming never shrinks and regrows it.
const DECODER_RETAIN_BYTES: usize = 2 << 20;

/// What a frame carries; the number is the wire value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Peer: first frame on a peer connection, empty payload; announces the sender id at once.
    PeerHello = 0x01,
    /// Peer: one Raft message (see `peer_codec`).
    PeerMessage = 0x02,
    /// Either port, empty payload: keeps a quiet connection from hitting the receiver's idle
    /// timeout; the connection layer swallows it.
    Keepalive = 0x03,
    /// Client → node: append one batch.
    Append = 0x10,
    /// Client → node: start streaming committed batches from an offset.
    Subscribe = 0x11,
    /// Client → node: grant more streaming credit to a subscription.
    Credit = 0x12,
    /// Client → node: ask for the node's status.
    Status = 0x13,
    /// Client → node: stream the node's newest snapshot (the state the log's prefix describes).
    SubscribeSnapshot = 0x14,
    /// Client → node: take a snapshot now (admin).
    SnapshotNow = 0x15,
    /// Node → client: an append is acknowledged.
    Appended = 0x20,
    /// Node → client: a request failed (typed error).
    Error = 0x21,
    /// Node → client: committed batches of a subscription, back to back.
    Batches = 0x22,
    /// Node → client: the node's status.
    StatusReply = 0x23,
    /// Node → client: a subscription is registered, at this resolved start offset.
    Subscribed = 0x24,
    /// Node → client: a snapshot stream (re)starts: which snapshot, from which record (the
    /// reset marker: a consumer drops any state it built from another snapshot).
    SnapshotBegin = 0x25,
    /// Node → client: records of a snapshot stream, in key order.
    SnapshotRecords = 0x26,
    /// Node → client: a snapshot stream is complete; the log continues at its cut offset.
    SnapshotEnd = 0x27,
    /// Node → client: the snapshot asked for is durable.
    SnapshotTaken = 0x28,
    /// Client → node: hand this idempotent producer an id.
    InitProducer = 0x1C,
    /// Node → client: an idempotent producer's id and epoch.
    ProducerGranted = 0x30,
    /// Client → node (admin): the members, their addresses and replication progress.
    MemberList = 0x16,
    /// Client → node (admin): add a learner.
    MemberAdd = 0x17,
    /// Client → node (admin): make a caught-up learner a voter.
    MemberPromote = 0x18,
    /// Client → node (admin): remove a voter or learner.
    MemberRemove = 0x19,
    /// Client → node (admin): hand leadership to another voter.
    LeaderTransfer = 0x1A,
    /// Client → node (admin): a member's new peer and client addresses (it moved).
    MemberUpdate = 0x1B,
    /// Node → client: the members.
    MemberListReply = 0x29,
    /// Node → client: a configuration change committed.
    MembershipChanged = 0x2A,
    /// Node → client: leadership moved.
    LeaderTransferred = 0x2B,
    /// Client → node: present a token (the first request on a node with an auth file).
    Authenticate = 0x1E,
    /// Node → client: the token was accepted; the connection now holds this role.
    Authenticated = 0x32,
}

impl FrameType {
    /// Every frame type, for tests and tables.
    pub const ALL: [FrameType; 31] = [
        FrameType::PeerHello,
        FrameType::PeerMessage,
        FrameType::Keepalive,
        FrameType::Append,
        FrameType::Subscribe,
        FrameType::Credit,
        FrameType::Status,
        FrameType::SubscribeSnapshot,
        FrameType::SnapshotNow,
        FrameType::Appended,
        FrameType::Error,
        FrameType::Batches,
        FrameType::StatusReply,
        FrameType::Subscribed,
        FrameType::SnapshotBegin,
        FrameType::SnapshotRecords,
        FrameType::SnapshotEnd,
        FrameType::SnapshotTaken,
        FrameType::InitProducer,
        FrameType::ProducerGranted,
        FrameType::MemberList,
        FrameType::MemberAdd,
        FrameType::MemberPromote,
        FrameType::MemberRemove,
        FrameType::LeaderTransfer,
        FrameType::MemberUpdate,
        FrameType::MemberListReply,
        FrameType::MembershipChanged,
        FrameType::LeaderTransferred,
        FrameType::Authenticate,
        FrameType::Authenticated,
    ];

    /// The type with wire value `value`, if it exists.
    pub fn from_wire(value: u8) -> Option<FrameType> {
        FrameType::ALL.into_iter().find(|t| *t as u8 == value)
    }

    /// True for frames a node may send on the peer port (`Keepalive` included).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            FrameType::PeerHello | FrameType::PeerMessage | FrameType::Keepalive
        )
    }

    /// True for frames a client may send on the client port (`Keepalive` included).
    pub fn is_client_request(self) -> bool {
        matches!(
            self,
            FrameType::Append
                | FrameType::Subscribe
                | FrameType::Credit
                | FrameType::Status
                | FrameType::SubscribeSnapshot
                | FrameType::SnapshotNow
                | FrameType::InitProducer
                | FrameType::MemberList
                | FrameType::MemberAdd
                | FrameType::MemberPromote
                | FrameType::MemberRemove
                | FrameType::LeaderTransfer
                | FrameType::MemberUpdate
                | FrameType::Authenticate
                | FrameType::Keepalive
        )
    }
}

/// Why bytes are not a valid frame. After any of these the stream is out of sync and the
/// connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with "RLNF" (another protocol, or garbage).
    #[error("bad frame magic: not a raftline frame (byte {at} is {found:#04x})")]
    BadMagic {
        /// Position of the first wrong byte in the magic.
        at: usize,
        /// The byte found there.
        found: u8,
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {found} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// Version in the header.
        found: u8,
    },
    /// Checksum verified but the frame type is unknown to this build.
    #[error("unknown frame type {found:#04x}")]
    UnknownType {
        /// Type byte in the header.
        found: u8,
    },
    /// Checksum verified but reserved flag bits are set.
    #[error("unknown frame flags {found:#06x}")]
    UnknownFlags {
        /// Flags in the header.
        found: u16,
    },
    /// The header announces a payload above the limit (nothing of it was buffered).
    #[error("frame payload of {payload_bytes} bytes exceeds the limit of {limit} bytes")]
    Oversize {
        /// Payload length in the header (or of the payload being encoded).
        payload_bytes: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The CRC32C over header and payload does not match the stored one.
    #[error("frame checksum mismatch: stored {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        expected: u32,
        /// CRC computed over the bytes received.
        actual: u32,
    },
}

/// The routing fields of a frame: what it is, which cluster, who sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload holds.
    pub frame_type: FrameType,
    /// Cluster the sender belongs to.
    pub cluster_id: ClusterId,
    /// Sender's node id, [`CLIENT_SENDER_ID`] for a client.
    pub sender_id: u64,
}

/// One whole, verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Routing fields from the header.
    pub header: FrameHeader,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Appends one frame to `out`: the header, then the payload given as consecutive `parts` (so a
/// metadata section and raw batch bytes are framed without first being copied together).
/// Fails only if the payload does not fit the u32 length field; on failure `out` is unchanged.
pub fn encode(out: &mut Vec<u8>, header: FrameHeader, parts: &[&[u8]]) -> Result<(), FrameError> {
    let payload_bytes: usize = parts.iter().map(|p| p.len()).sum();
    let payload_len = u32::try_from(payload_bytes).map_err(|_| FrameError::Oversize {
        payload_bytes: payload_bytes as u64,
        limit: u64::from(u32::MAX),
    })?;
    let start = out.len();
    out.reserve(FRAME_HEADER_BYTES + payload_bytes);
    out.extend_from_slice(&FRAME_MAGIC.to_le_bytes());
    out.push(PROTOCOL_VERSION);
    out.push(header.frame_type as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&header.cluster_id.0.to_le_bytes());
    out.extend_from_slice(&header.sender_id.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    digest.update(&out[start..start + CRC_AT]);
    for part in parts {
        digest.update(part);
    }
    out.extend_from_slice(&(digest.finalize() as u32).to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    debug_assert_eq!(out.len() - start, FRAME_HEADER_BYTES + payload_bytes);
    Ok(())
}

/// Appends a frame whose payload is in the layout the message codecs share:
/// ```text
/// blobs (raw bytes, e.g. batches, back to back) | meta (rkyv archive) | u32 meta length
/// ```
/// The raw bytes come first so a receiver owning the payload keeps them by truncating it:
/// batch bytes are never copied out of the frame or re-encoded.
pub fn encode_sectioned(
    out: &mut Vec<u8>,
    header: FrameHeader,
    blobs: &[&[u8]],
    meta: &[u8],
) -> Result<(), FrameError> {
    let meta_len = u32::try_from(meta.len()).map_err(|_| FrameError::Oversize {
        payload_bytes: meta.len() as u64,
        limit: u64::from(u32::MAX),
    })?;
    let meta_len = meta_len.to_le_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(blobs.len() + 2);
    parts.extend_from_slice(blobs);
    parts.push(meta);
    parts.push(&meta_len);
    encode(out, header, &parts)
}

/// Splits a payload of the [`encode_sectioned`] layout: returns the length of the blob section
/// (it starts at byte 0) and the metadata copied into an aligned buffer, ready for checked
/// `rkyv::access` (rkyv needs alignment; a frame payload has none, and the metadata is small).
pub fn split_sectioned(payload: &[u8]) -> Result<(usize, AlignedVec<16>), String> {
    let Some(body_len) = payload.len().checked_sub(META_LEN_BYTES) else {
        return Err(format!(
            "payload of {} bytes, need at least {META_LEN_BYTES}",
            payload.len()
        ));
    };
    let meta_len = u32_at(payload, body_len) as usize;
    let Some(blobs_len) = body_len.checked_sub(meta_len) else {
        return Err(format!(
            "metadata of {meta_len} bytes announced, {body_len} present"
        ));
    };
    let mut meta = AlignedVec::<16>::with_capacity(meta_len);
    meta.extend_from_slice(&payload[blobs_len..body_len]);
    Ok((blobs_len, meta))
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// Feed bytes as they arrive ([`FrameDecoder::feed`] or [`FrameDecoder::fill_from`]), then pull
/// every complete frame with [`FrameDecoder::next_frame`] until it returns `Ok(None)`. Memory
/// bound: if the caller pulls after every feed, the buffer never holds more than one frame
/// (header + `payload_bytes_max`) plus the last piece fed. The first error is sticky: the stream
/// is out of sync and every later call returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Received bytes are `buf[start..end]`; `buf[end..]` is initialised spare room that
    /// `fill_from` reads into, so a read does not zero its chunk again each time (a 64 KiB
    /// memset per small read was a third of a load generator's CPU).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    payload_bytes_max: u32,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing payloads above `payload_bytes_max`.
    pub fn new(payload_bytes_max: u32) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            payload_bytes_max,
            failed: None,
        }
    }

    /// Appends bytes received from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Reads once from `reader` straight into the buffer; returns the bytes read (0 = end of
    /// stream). For blocking sockets (the client).
    pub fn fill_from(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        self.compact();
        self.reserve(READ_CHUNK_BYTES);
        let result = reader.read(&mut self.buf[self.end..]);
        self.end += *result.as_ref().unwrap_or(&0);
        result
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Memory the decoder holds (its buffer's capacity).
    pub fn held_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// After a large frame, gives its room back: a connection that once sent a frame near the
    /// limit must not pin that much memory for as long as it stays open.
    fn release_large(&mut self) {
        let pending = self.end - self.start;
        if self.buf.len() <= DECODER_RETAIN_BYTES || pending > DECODER_RETAIN_BYTES / 2 {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.start = 0;
        self.end = pending;
        self.buf.truncate(DECODER_RETAIN_BYTES);
        self.buf.shrink_to_fit();
    }

    /// Makes room for `bytes` more after `end`; new room is zeroed once and then reused.
    fn reserve(&mut self, bytes: usize) {
        if self.buf.len() < self.end + bytes {
            self.buf.resize(self.end + bytes, 0);
        }
    }

    /// The next whole verified frame, `Ok(None)` if more bytes are needed, or why the stream is
    /// invalid.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.parse() {
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
            Ok(Some(frame)) => {
                self.release_large();
                Ok(Some(frame))
            }
            ok => ok,
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        let magic = FRAME_MAGIC.to_le_bytes();
        for (at, (&found, &want)) in avail.iter().zip(magic.iter()).enumerate() {
            if found != want {
                return Err(FrameError::BadMagic { at, found });
            }
        }
        if avail.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let version = avail[4];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        let payload_len = u32_at(avail, 24);
        if payload_len > self.payload_bytes_max {
            return Err(FrameError::Oversize {
                payload_bytes: u64::from(payload_len),
                limit: u64::from(self.payload_bytes_max),
            });
        }
        let total = FRAME_HEADER_BYTES + payload_len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let expected = u32_at(avail, CRC_AT);
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        digest.update(&avail[..CRC_AT]);
        digest.update(&avail[FRAME_HEADER_BYTES..total]);
        let actual = digest.finalize() as u32;
        if actual != expected {
            return Err(FrameError::CrcMismatch { expected, actual });
        }
        let frame_type =
            FrameType::from_wire(avail[5]).ok_or(FrameError::UnknownType { found: avail[5] })?;
        let flags = u16::from_le_bytes([avail[6], avail[7]]);
        if flags != 0 {
            return Err(FrameError::UnknownFlags { found: flags });
        }
        let frame = Frame {
            header: FrameHeader {
                frame_type,
                cluster_id: ClusterId(u64_at(avail, 8)),
                sender_id: u64_at(avail, 16),
            },
            payload: avail[FRAME_HEADER_BYTES..total].to_vec(),
        };
        self.start += total;
        Ok(Some(frame))
    }

    /// Drops consumed bytes: all of them when everything was consumed, else by moving the rest
    /// to the front once the consumed part outweighs it (amortised O(1) per byte).
    fn compact(&mut self) {
        let pending = self.end - self.start;
        if self.start > 0 && self.start >= pending {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(frame_type: FrameType) -> FrameHeader {
        FrameHeader {
            frame_type,
            cluster_id: ClusterId(0xC1),
            sender_id: 2,
        }
    }

    fn one_frame(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, header(frame_type), &[payload]).unwrap();
        out
    }

    /// Rewrites the CRC so a deliberately altered header passes the checksum.
    fn reseal(bytes: &mut [u8]) {
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        digest.update(&bytes[..CRC_AT]);
        digest.update(&bytes[FRAME_HEADER_BYTES..]);
        let crc = digest.finalize() as u32;
        bytes[CRC_AT..FRAME_HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    }

    fn decode_all(bytes: &[u8], limit: u32) -> Result<Option<Frame>, FrameError> {
        let mut d = FrameDecoder::new(limit);
        d.feed(bytes);
        d.next_frame()
    }

    #[test]
    fn a_large_frame_leaves_no_large_buffer_behind() {
        let big = one_frame(FrameType::Append, &vec![7u8; 4 << 20]);
        let small = one_frame(FrameType::Status, b"s");
        let mut d = FrameDecoder::new(8 << 20);
        d.feed(&big);
        assert!(d.held_bytes() >= big.len());
        d.feed(&small[..10]);
        assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), 4 << 20);
        assert!(
            d.held_bytes() <= DECODER_RETAIN_BYTES,
            "held {} after the frame",
            d.held_bytes()
        );
        // The bytes after it were kept.
        d.feed(&small[10..]);
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"s");
    }

    #[test]
    fn header_layout_is_the_documented_one() {
        let bytes = one_frame(FrameType::Batches, b"xyz");
        assert_eq!(&bytes[0..4], b"RLNF");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 0x22);
        assert_eq!(&bytes[6..8], &[0, 0]);
        assert_eq!(u64_at(&bytes, 8), 0xC1);
        assert_eq!(u64_at(&bytes, 16), 2);
        assert_eq!(u32_at(&bytes, 24), 3);
        let crc = crc_fast::checksum(
            crc_fast::CrcAlgorithm::Crc32Iscsi,
            &[&bytes[..28], &bytes[32..]].concat(),
        ) as u32;
        assert_eq!(u32_at(&bytes, 28), crc);
        assert_eq!(&bytes[32..], b"xyz");
    }

    #[test]
    fn payload_parts_are_concatenated() {
        let mut out = Vec::new();
        encode(&mut out, header(FrameType::Append), &[b"ab", b"", b"cd"]).unwrap();
        let frame = decode_all(&out, 100).unwrap().unwrap();
        assert_eq!(frame.payload, b"abcd");
        assert_eq!(frame.header, header(FrameType::Append));
    }

    #[test]
    fn wrong_first_byte_is_refused_before_the_header_is_complete() {
        assert_eq!(
            decode_all(b"G", 100),
            Err(FrameError::BadMagic { at: 0, found: b'G' })
        );
        assert_eq!(
            decode_all(b"RLX", 100),
            Err(FrameError::BadMagic { at: 2, found: b'X' })
        );
        assert_eq!(decode_all(b"RLN", 100), Ok(None));
    }

    #[test]
    fn other_version_is_unsupported() {
        let mut bytes = one_frame(FrameType::Status, b"");
        bytes[4] = 2;
        assert_eq!(
            decode_all(&bytes, 100),
            Err(FrameError::UnsupportedVersion { found: 2 })
        );
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let bytes = one_frame(FrameType::Append, &[7; 101]);
        assert_eq!(
            decode_all(&bytes[..FRAME_HEADER_BYTES], 100),
            Err(FrameError::Oversize {
                payload_bytes: 101,
                limit: 100
            })
        );
        assert!(decode_all(&bytes, 101).unwrap().is_some());
    }

    #[test]
    fn unknown_type_and_flags_are_typed_errors_after_a_valid_crc() {
        let mut bytes = one_frame(FrameType::Status, b"p");
        bytes[5] = 0x7f;
        reseal(&mut bytes);
        assert_eq!(
            decode_all(&bytes, 100),
            Err(FrameError::UnknownType { found: 0x7f })
        );
        let mut bytes = one_frame(FrameType::Status, b"p");
        bytes[6] = 1;
        reseal(&mut bytes);
        assert_eq!(
            decode_all(&bytes, 100),
            Err(FrameError::UnknownFlags { found: 1 })
        );
    }

    #[test]
    fn corrupted_payload_is_a_crc_mismatch() {
        let mut bytes = one_frame(FrameType::Append, b"payload");
        bytes[33] ^= 0x10;
        assert!(matches!(
            decode_all(&bytes, 100),
            Err(FrameError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = FrameDecoder::new(100);
        d.feed(b"nope");
        let first = d.next_frame().unwrap_err();
        d.feed(&one_frame(FrameType::Status, b""));
        assert_eq!(d.next_frame().unwrap_err(), first);
    }

    #[test]
    fn several_frames_in_one_feed_come_out_in_order() {
        let mut bytes = one_frame(FrameType::Status, b"1");
        bytes.extend(one_frame(FrameType::Credit, b"22"));
        let mut d = FrameDecoder::new(100);
        d.feed(&bytes);
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"1");
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"22");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered_bytes(), 0);
    }

    #[test]
    fn fill_from_reads_frames_from_a_reader() {
        let bytes = one_frame(FrameType::Appended, b"abc");
        let mut reader = &bytes[..];
        let mut d = FrameDecoder::new(100);
        assert_eq!(d.fill_from(&mut reader).unwrap(), bytes.len());
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"abc");
        assert_eq!(d.fill_from(&mut reader).unwrap(), 0);
        assert_eq!(d.buffered_bytes(), 0);
    }

    /// Hands out its bytes a few at a time, like a socket under load.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn frames_split_across_many_reads_come_out_whole_and_in_order() {
        let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) * 3]).collect();
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend(one_frame(FrameType::Append, p));
        }
        for chunk in [1, 7, 33, 1000] {
            let mut reader = Trickle {
                bytes: &stream,
                chunk,
            };
            let mut d = FrameDecoder::new(1000);
            let mut got = Vec::new();
            while d.fill_from(&mut reader).unwrap() > 0 {
                while let Some(frame) = d.next_frame().unwrap() {
                    got.push(frame.payload);
                }
            }
            assert_eq!(got, payloads, "chunk {chunk}");
            assert_eq!(d.buffered_bytes(), 0);
        }
    }

    #[test]
    fn sectioned_payload_splits_into_blobs_and_aligned_meta() {
        let mut out = Vec::new();
        encode_sectioned(
            &mut out,
            header(FrameType::Batches),
            &[b"ab", b"c"],
            b"META",
        )
        .unwrap();
        let frame = decode_all(&out, 100).unwrap().unwrap();
        assert_eq!(&frame.payload[..], b"abcMETA\x04\0\0\0");
        let (blobs_len, meta) = split_sectioned(&frame.payload).unwrap();
        assert_eq!(&frame.payload[..blobs_len], b"abc");
        assert_eq!(&meta[..], b"META");
        assert_eq!(meta.as_ptr() as usize % 16, 0);
        assert!(split_sectioned(b"\x09\0\0").is_err());
        assert!(split_sectioned(b"ab\x03\0\0\0").is_err());
    }

    #[test]
    fn frame_types_round_trip_through_their_wire_values() {
        for t in FrameType::ALL {
            assert_eq!(FrameType::from_wire(t as u8), Some(t));
        }
        assert_eq!(FrameType::from_wire(0), None);
    }
}
