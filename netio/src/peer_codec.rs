//! The peer codec: every Raft message in one `PeerMessage` frame.
//!
//! Payload layout ([`frame::encode_sectioned`]):
//! ```text
//! blobs: the entries' payloads (batch bytes) back to back, in entry order
//! meta:  rkyv archive of `WireMessage` (from, to, term, body; entries as term, index, kind and
//!        payload length only)
//! u32    meta length
//! ```
//! Entry payloads are never re-encoded: they travel as raw bytes beside the metadata, which says
//! how long each is. Decoding validates the archive with bytecheck (checked
//! `rkyv::access`) before it is used and requires the blob lengths to add up to exactly the bytes
//! that follow, so any malformed payload is a typed [`PeerCodecError`].
//!
//! One frame type for all Raft messages (not one per message): the connection layer routes
//! frames by port alone, the message set grows (snapshots, configuration changes) without new
//! frame types, and a variant this build does not know fails archive validation as a typed error.
//! Compatibility rule: new `WireBody` variants are appended at the end (the discriminant is the
//! variant's position).

use std::sync::Arc;

use raftline_replicator::message::{
    AppendReject, Entry, EntryKind, Membership, Message, MessageBody, SnapshotMeta,
};
use rkyv::rancor;

use crate::cluster_id::ClusterId;
use crate::frame::{self, Frame, FrameError, FrameHeader, FrameType};

/// Why a frame does not hold a valid Raft message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCodecError {
    /// The frame is not a `PeerMessage`.
    #[error("expected a peer message frame, got {0:?}")]
    WrongFrameType(FrameType),
    /// The message's `from` differs from the frame's sender id.
    #[error("message from node {from} arrived in a frame sent by node {sender}")]
    SenderMismatch {
        /// `from` inside the message.
        from: u64,
        /// Sender id in the frame header.
        sender: u64,
    },
    /// The payload is shorter than its own length fields say, or longer.
    #[error("peer message payload malformed: {0}")]
    Malformed(String),
    /// The metadata archive failed validation.
    #[error("peer message metadata failed validation: {0}")]
    BadArchive(String),
    /// Encoding failed (an entry or the whole message is too large for a frame).
    #[error("peer message cannot be encoded: {0}")]
    Encode(String),
}

impl From<FrameError> for PeerCodecError {
    fn from(e: FrameError) -> Self {
        PeerCodecError::Encode(e.to_string())
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireMessage {
    from: u64,
    to: u64,
    term: u64,
    body: WireBody,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
enum WireBody {
    PreVote {
        last_index: u64,
        last_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    RequestVote {
        last_index: u64,
        last_term: u64,
        transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    AppendEntries {
        prev_index: u64,
        prev_term: u64,
        commit: u64,
        entries: Vec<WireEntry>,
    },
    AppendAccepted {
        match_index: u64,
    },
    AppendRejected {
        rejected_prev_index: u64,
        hint_term: Option<u64>,
        hint_index: u64,
        log_lost: bool,
    },
    Heartbeat {
        commit: u64,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    TimeoutNow,
    /// The chunk's bytes travel raw as the only blob.
    InstallSnapshot {
        index: u64,
        term: u64,
        /// The snapshot's configuration, address book included (`Membership::encode`).
        membership: Vec<u8>,
        offset: u64,
        data_bytes: u32,
        done: bool,
    },
    InstallSnapshotResponse {
        index: u64,
        received: u64,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
struct WireEntry {
    term: u64,
    index: u64,
    kind: WireEntryKind,
    payload_bytes: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
enum WireEntryKind {
    Command,
    Noop,
    Config,
}

/// Splits a message into its metadata and the blobs that travel raw behind it.
fn to_wire(msg: &Message) -> Result<(WireMessage, Vec<&[u8]>), PeerCodecError> {
    let mut blobs: Vec<&[u8]> = Vec::new();
    let body = match &msg.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => WireBody::PreVote {
            last_index: *last_index,
            last_term: *last_term,
        },
        MessageBody::PreVoteResponse { granted } => WireBody::PreVoteResponse { granted: *granted },
        MessageBody::RequestVote {
            last_index,
            last_term,
            transfer,
        } => WireBody::RequestVote {
            last_index: *last_index,
            last_term: *last_term,
            transfer: *transfer,
        },
        MessageBody::RequestVoteResponse { granted } => {
            WireBody::RequestVoteResponse { granted: *granted }
        }
        MessageBody::AppendEntries {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let mut wire_entries = Vec::with_capacity(entries.len());
            for e in entries {
                let payload_bytes = u32::try_from(e.payload.len()).map_err(|_| {
                    PeerCodecError::Encode(format!("entry {} payload over 4 GiB", e.index))
                })?;
                wire_entries.push(WireEntry {
                    term: e.term,
                    index: e.index,
                    kind: match e.kind {
                        EntryKind::Command => WireEntryKind::Command,
                        EntryKind::Noop => WireEntryKind::Noop,
                        EntryKind::Config => WireEntryKind::Config,
                    },
                    payload_bytes,
                });
                blobs.push(&e.payload);
            }
            WireBody::AppendEntries {
                prev_index: *prev_index,
                prev_term: *prev_term,
                commit: *commit,
                entries: wire_entries,
            }
        }
        MessageBody::AppendEntriesResponse { result } => match result {
            Ok(match_index) => WireBody::AppendAccepted {
                match_index: *match_index,
            },
            Err(r) => WireBody::AppendRejected {
                rejected_prev_index: r.rejected_prev_index,
                hint_term: r.hint_term,
                hint_index: r.hint_index,
                log_lost: r.log_lost,
            },
        },
        MessageBody::Heartbeat { commit, read_seq } => WireBody::Heartbeat {
            commit: *commit,
            read_seq: *read_seq,
        },
        MessageBody::HeartbeatResponse { read_seq } => WireBody::HeartbeatResponse {
            read_seq: *read_seq,
        },
        MessageBody::TimeoutNow => WireBody::TimeoutNow,
        MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } => {
            let data_bytes = u32::try_from(data.len()).map_err(|_| {
                PeerCodecError::Encode(format!("snapshot chunk of {} bytes", data.len()))
            })?;
            blobs.push(data);
            WireBody::InstallSnapshot {
                index: meta.index,
                term: meta.term,
                membership: meta.membership.encode(),
                offset: *offset,
                data_bytes,
                done: *done,
            }
        }
        MessageBody::InstallSnapshotResponse { index, received } => {
            WireBody::InstallSnapshotResponse {
                index: *index,
                received: *received,
            }
        }
    };
    let wire = WireMessage {
        from: msg.from,
        to: msg.to,
        term: msg.term,
        body,
    };
    Ok((wire, blobs))
}

/// Rebuilds a message from validated metadata and the blob section behind it.
fn from_wire(wire: WireMessage, blobs: &[u8]) -> Result<Message, PeerCodecError> {
    let mut rest = blobs;
    let body = match wire.body {
        WireBody::PreVote {
            last_index,
            last_term,
        } => MessageBody::PreVote {
            last_index,
            last_term,
        },
        WireBody::PreVoteResponse { granted } => MessageBody::PreVoteResponse { granted },
        WireBody::RequestVote {
            last_index,
            last_term,
            transfer,
        } => MessageBody::RequestVote {
            last_index,
            last_term,
            transfer,
        },
        WireBody::RequestVoteResponse { granted } => MessageBody::RequestVoteResponse { granted },
        WireBody::AppendEntries {
            prev_index,
            prev_term,
            commit,
            entries,
        } => {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let payload =
                    take_blob(&mut rest, e.payload_bytes, || format!("entry {}", e.index))?;
                out.push(Entry {
                    term: e.term,
                    index: e.index,
                    kind: match e.kind {
                        WireEntryKind::Command => EntryKind::Command,
                        WireEntryKind::Noop => EntryKind::Noop,
                        WireEntryKind::Config => EntryKind::Config,
                    },
                    payload: Arc::from(payload),
                });
            }
            MessageBody::AppendEntries {
                prev_index,
                prev_term,
                entries: out,
                commit,
            }
        }
        WireBody::AppendAccepted { match_index } => MessageBody::AppendEntriesResponse {
            result: Ok(match_index),
        },
        WireBody::AppendRejected {
            rejected_prev_index,
            hint_term,
            hint_index,
            log_lost,
        } => MessageBody::AppendEntriesResponse {
            result: Err(AppendReject {
                rejected_prev_index,
                hint_term,
                hint_index,
                log_lost,
            }),
        },
        WireBody::Heartbeat { commit, read_seq } => MessageBody::Heartbeat { commit, read_seq },
        WireBody::HeartbeatResponse { read_seq } => MessageBody::HeartbeatResponse { read_seq },
        WireBody::TimeoutNow => MessageBody::TimeoutNow,
        WireBody::InstallSnapshot {
            index,
            term,
            membership,
            offset,
            data_bytes,
            done,
        } => {
            let membership = Membership::decode(&membership).ok_or_else(|| {
                PeerCodecError::Malformed("snapshot configuration does not decode".into())
            })?;
            let data = take_blob(&mut rest, data_bytes, || "snapshot chunk".to_string())?;
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    membership,
                },
                offset,
                data: Arc::from(data),
                done,
            }
        }
        WireBody::InstallSnapshotResponse { index, received } => {
            MessageBody::InstallSnapshotResponse { index, received }
        }
    };
    if !rest.is_empty() {
        return Err(PeerCodecError::Malformed(format!(
            "{} bytes after the last blob",
            rest.len()
        )));
    }
    Ok(Message {
        from: wire.from,
        to: wire.to,
        term: wire.term,
        body,
    })
}

/// Takes the next `len` bytes off the blob section; `what` names the owner for the error.
fn take_blob<'a>(
    rest: &mut &'a [u8],
    len: u32,
    what: impl FnOnce() -> String,
) -> Result<&'a [u8], PeerCodecError> {
    let len = len as usize;
    if len > rest.len() {
        return Err(PeerCodecError::Malformed(format!(
            "{} claims {len} bytes, {} left",
            what(),
            rest.len()
        )));
    }
    let (blob, tail) = rest.split_at(len);
    *rest = tail;
    Ok(blob)
}

/// Appends one `PeerMessage` frame holding `msg` to `out` (sender id = `msg.from`).
/// On error `out` is unchanged.
pub fn encode_message(
    out: &mut Vec<u8>,
    cluster_id: ClusterId,
    msg: &Message,
) -> Result<(), PeerCodecError> {
    let (wire, blobs) = to_wire(msg)?;
    let meta = rkyv::to_bytes::<rancor::Error>(&wire)
        .map_err(|e| PeerCodecError::Encode(e.to_string()))?;
    let header = FrameHeader {
        frame_type: FrameType::PeerMessage,
        cluster_id,
        sender_id: msg.from,
    };
    frame::encode_sectioned(out, header, &blobs, &meta)?;
    Ok(())
}

/// Decodes the Raft message in a verified frame; checks the frame type and that the message's
/// `from` is the frame's sender. (The cluster id and whether the sender is a configured peer are
/// the connection layer's checks.)
pub fn decode_message(frame: &Frame) -> Result<Message, PeerCodecError> {
    if frame.header.frame_type != FrameType::PeerMessage {
        return Err(PeerCodecError::WrongFrameType(frame.header.frame_type));
    }
    let msg = decode_payload(&frame.payload)?;
    if msg.from != frame.header.sender_id {
        return Err(PeerCodecError::SenderMismatch {
            from: msg.from,
            sender: frame.header.sender_id,
        });
    }
    Ok(msg)
}

/// Decodes a `PeerMessage` payload.
pub fn decode_payload(payload: &[u8]) -> Result<Message, PeerCodecError> {
    let (blobs_len, meta) = frame::split_sectioned(payload).map_err(PeerCodecError::Malformed)?;
    let archived = rkyv::access::<ArchivedWireMessage, rancor::BoxedError>(&meta)
        .map_err(|e| PeerCodecError::BadArchive(e.to_string()))?;
    let wire = rkyv::deserialize::<WireMessage, rancor::BoxedError>(archived)
        .map_err(|e| PeerCodecError::BadArchive(e.to_string()))?;
    from_wire(wire, &payload[..blobs_len])
}
