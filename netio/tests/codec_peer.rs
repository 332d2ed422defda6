//! Property tests of the peer codec: every Raft message round-trips through a frame; malformed
//! payloads are typed errors. Replay a failure with PROPTEST_RNG_SEED=<seed>.

use std::sync::Arc;

use proptest::prelude::*;
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{FrameDecoder, FrameType, PAYLOAD_BYTES_MAX_DEFAULT};
use raftline_netio::peer_codec::{decode_message, decode_payload, encode_message, PeerCodecError};
use raftline_replicator::message::{
    AppendReject, Entry, EntryKind, MemberAddress, Membership, Message, MessageBody, SnapshotMeta,
};

fn arb_entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::sample::select(vec![EntryKind::Command, EntryKind::Noop, EntryKind::Config]),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(term, index, kind, payload)| Entry {
            term,
            index,
            kind,
            payload: Arc::from(payload),
        })
}

fn arb_body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(last_index, last_term)| MessageBody::PreVote {
            last_index,
            last_term
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(last_index, last_term, transfer)| MessageBody::RequestVote {
                last_index,
                last_term,
                transfer
            }
        ),
        any::<bool>().prop_map(|granted| MessageBody::RequestVoteResponse { granted }),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(arb_entry(), 0..8),
            any::<u64>()
        )
            .prop_map(|(prev_index, prev_term, entries, commit)| {
                MessageBody::AppendEntries {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                }
            }),
        any::<u64>().prop_map(|i| MessageBody::AppendEntriesResponse { result: Ok(i) }),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(rejected_prev_index, hint_term, hint_index, log_lost)| {
                MessageBody::AppendEntriesResponse {
                    result: Err(AppendReject {
                        rejected_prev_index,
                        hint_term,
                        hint_index,
                        log_lost,
                    }),
                }
            }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(commit, read_seq)| MessageBody::Heartbeat { commit, read_seq }),
        any::<u64>().prop_map(|read_seq| MessageBody::HeartbeatResponse { read_seq }),
        Just(MessageBody::TimeoutNow),
        (
            (any::<u64>(), any::<u64>()),
            prop::collection::vec(any::<u64>(), 0..7),
            prop::collection::vec(any::<u64>(), 0..3),
            prop::collection::btree_map(
                any::<u64>(),
                ("[a-z0-9.:-]{0,24}", "[a-z0-9.:-]{0,24}", any::<u64>()).prop_map(
                    |(peer, client, incarnation)| MemberAddress {
                        peer,
                        client,
                        incarnation,
                    },
                ),
                0..3,
            ),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..600),
            any::<bool>(),
        )
            .prop_map(
                |((index, term), voters, learners, addresses, offset, data, done)| {
                    MessageBody::InstallSnapshot {
                        meta: SnapshotMeta {
                            index,
                            term,
                            membership: Membership {
                                voters,
                                learners,
                                addresses,
                            },
                        },
                        offset,
                        data: Arc::from(data),
                        done,
                    }
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(index, received)| {
            MessageBody::InstallSnapshotResponse { index, received }
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (1..u64::MAX, any::<u64>(), any::<u64>(), arb_body()).prop_map(|(from, to, term, body)| {
        Message {
            from,
            to,
            term,
            body,
        }
    })
}

fn payload_of(msg: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(&mut out, ClusterId(7), msg).unwrap();
    let mut d = FrameDecoder::new(PAYLOAD_BYTES_MAX_DEFAULT);
    d.feed(&out);
    d.next_frame().unwrap().unwrap().payload
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips_through_a_frame(msgs in prop::collection::vec(arb_message(), 1..4)) {
        let mut out = Vec::new();
        for m in &msgs {
            encode_message(&mut out, ClusterId(42), m).unwrap();
        }
        let mut d = FrameDecoder::new(PAYLOAD_BYTES_MAX_DEFAULT);
        d.feed(&out);
        for m in &msgs {
            let frame = d.next_frame().unwrap().unwrap();
            prop_assert_eq!(frame.header.frame_type, FrameType::PeerMessage);
            prop_assert_eq!(frame.header.cluster_id, ClusterId(42));
            prop_assert_eq!(frame.header.sender_id, m.from);
            prop_assert_eq!(&decode_message(&frame).unwrap(), m);
        }
        prop_assert_eq!(d.next_frame(), Ok(None));
    }

    #[test]
    fn entry_payloads_travel_as_raw_bytes_up_front(entries in prop::collection::vec(arb_entry(), 1..5)) {
        let msg = Message { from: 1, to: 2, term: 3, body: MessageBody::AppendEntries {
            prev_index: 0, prev_term: 0, entries: entries.clone(), commit: 0 } };
        let payload = payload_of(&msg);
        let raw: Vec<u8> = entries.iter().flat_map(|e| e.payload.iter().copied()).collect();
        prop_assert!(payload.starts_with(&raw));
    }

    #[test]
    fn corrupted_payloads_never_panic(msg in arb_message(), pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
        let mut payload = payload_of(&msg);
        let at = pos % payload.len();
        payload[at] = byte;
        let _ = decode_payload(&payload);
        let _ = decode_payload(&payload[..cut % (payload.len() + 1)]);
    }

    #[test]
    fn garbage_payloads_are_typed_errors(garbage in prop::collection::vec(any::<u8>(), 0..512)) {
        // Whatever the bytes, the result is a message or a typed error, never a panic.
        let _ = decode_payload(&garbage);
    }
}

fn append_with_payload() -> Message {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::AppendEntries {
            prev_index: 4,
            prev_term: 2,
            entries: vec![Entry {
                term: 3,
                index: 5,
                kind: EntryKind::Command,
                payload: Arc::from(&b"batch"[..]),
            }],
            commit: 4,
        },
    }
}

#[test]
fn a_missing_or_extra_blob_byte_is_malformed() {
    let payload = payload_of(&append_with_payload());
    assert_eq!(&payload[..5], b"batch");
    assert!(matches!(
        decode_payload(&payload[1..]),
        Err(PeerCodecError::Malformed(_))
    ));
    let longer = [&b"x"[..], &payload].concat();
    assert!(matches!(
        decode_payload(&longer),
        Err(PeerCodecError::Malformed(_))
    ));
}

#[test]
fn metadata_that_is_not_an_archive_is_rejected() {
    let mut payload = vec![0xFF; 16];
    payload.extend(16u32.to_le_bytes());
    assert!(matches!(
        decode_payload(&payload),
        Err(PeerCodecError::BadArchive(_))
    ));
}

#[test]
fn a_message_whose_from_is_not_the_frame_sender_is_refused() {
    let mut out = Vec::new();
    encode_message(&mut out, ClusterId(1), &append_with_payload()).unwrap();
    let mut d = FrameDecoder::new(PAYLOAD_BYTES_MAX_DEFAULT);
    d.feed(&out);
    let mut frame = d.next_frame().unwrap().unwrap();
    frame.header.sender_id = 9;
    assert_eq!(
        decode_message(&frame),
        Err(PeerCodecError::SenderMismatch { from: 1, sender: 9 })
    );
    frame.header.frame_type = FrameType::Append;
    assert_eq!(
        decode_message(&frame),
        Err(PeerCodecError::WrongFrameType(FrameType::Append))
    );
}
