//! Property tests of the client protocol codec: every request and response round-trips through a
//! frame, batch bytes travel unchanged, malformed payloads are typed errors.
//! Replay a failure with PROPTEST_RNG_SEED=<seed>.

use proptest::prelude::*;
use raftline_log::{Batch, Record};
use raftline_netio::client_proto::{
    decode_request, decode_response, encode_batches, encode_request, encode_response,
    split_batches, AccessRole, AckMode, ClientError, ClientProtoError, Member, MemberStatus,
    NodeRole, NodeStatus, PeerStatus, Request, Response, SnapshotStatus, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{encode, Frame, FrameDecoder, FrameHeader, FrameType};

const CLUSTER: ClusterId = ClusterId(0xC0FFEE);

fn batch_bytes(values: &[Vec<u8>], base_offset: u64) -> Vec<u8> {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record {
            key: None,
            value: v.clone(),
            timestamp_ms: 1,
            headers: vec![],
        })
        .collect();
    let mut batch = Batch::encode(&records).unwrap();
    batch.stamp(base_offset, 1, 1);
    batch.into_bytes()
}

fn arb_batch() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
        any::<u32>(),
    )
        .prop_map(|(values, base)| batch_bytes(&values, u64::from(base)))
}

fn arb_ack() -> impl Strategy<Value = AckMode> {
    prop_oneof![
        Just(AckMode::Quorum),
        Just(AckMode::Leader),
        Just(AckMode::None)
    ]
}

fn arb_from() -> impl Strategy<Value = StartFrom> {
    prop_oneof![
        any::<u64>().prop_map(StartFrom::Offset),
        Just(StartFrom::Earliest),
        Just(StartFrom::Latest)
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u64>(), arb_ack(), arb_batch()).prop_map(|(request_id, ack, batch)| {
            Request::Append {
                request_id,
                ack,
                batch,
            }
        }),
        (any::<u64>(), arb_from(), any::<u64>()).prop_map(
            |(subscription_id, from, window_bytes)| Request::Subscribe {
                subscription_id,
                from,
                window_bytes
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(subscription_id, bytes)| Request::Credit {
            subscription_id,
            bytes
        }),
        any::<u64>().prop_map(|request_id| Request::Status { request_id }),
        any::<u64>().prop_map(|request_id| Request::MemberList { request_id }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<String>(),
            any::<String>(),
            any::<u64>()
        )
            .prop_map(
                |(request_id, id, peer_address, client_address, incarnation)| {
                    Request::MemberAdd {
                        request_id,
                        id,
                        peer_address,
                        client_address,
                        incarnation,
                    }
                }
            ),
        (any::<u64>(), any::<u64>())
            .prop_map(|(request_id, id)| Request::MemberPromote { request_id, id }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(request_id, id, force)| {
            Request::MemberRemove {
                request_id,
                id,
                force,
            }
        }),
        (any::<u64>(), any::<Option<u64>>())
            .prop_map(|(request_id, to)| Request::LeaderTransfer { request_id, to }),
        (any::<u64>(), any::<String>())
            .prop_map(|(request_id, token)| Request::Authenticate { request_id, token }),
        (any::<u64>(), any::<u64>(), any::<String>(), any::<String>()).prop_map(
            |(request_id, id, peer_address, client_address)| Request::MemberUpdate {
                request_id,
                id,
                peer_address,
                client_address,
            }
        ),
    ]
}

fn arb_access_role() -> impl Strategy<Value = AccessRole> {
    prop::sample::select(AccessRole::ALL.to_vec())
}

fn arb_member() -> impl Strategy<Value = Member> {
    (
        any::<u64>(),
        any::<String>(),
        any::<String>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(
            |(id, peer_address, client_address, voter, incarnation)| Member {
                id,
                peer_address,
                client_address,
                voter,
                incarnation,
            },
        )
}

fn arb_error() -> impl Strategy<Value = ClientError> {
    prop_oneof![
        (any::<Option<u64>>(), any::<Option<String>>()).prop_map(|(leader_id, leader_address)| {
            ClientError::NotLeader {
                leader_id,
                leader_address,
            }
        }),
        Just(ClientError::Timeout),
        any::<u64>().prop_map(|limit_bytes| ClientError::TooLarge { limit_bytes }),
        any::<String>().prop_map(|why| ClientError::Unavailable { why }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>()
        )
            .prop_map(|(requested, earliest, end, snapshot_index)| {
                ClientError::OffsetOutOfRange {
                    requested,
                    earliest,
                    end,
                    snapshot_index,
                }
            }),
        any::<u64>().prop_map(|node_cluster_id| ClientError::WrongCluster { node_cluster_id }),
        Just(ClientError::Busy),
        any::<String>().prop_map(|why| ClientError::BadRequest { why }),
        any::<String>().prop_map(|why| ClientError::ChangeNotNow { why }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(id, match_index, commit_index)| {
            ClientError::LearnerBehind {
                id,
                match_index,
                commit_index,
            }
        }),
        any::<String>().prop_map(|why| ClientError::WouldLoseQuorum { why }),
        any::<String>().prop_map(|why| ClientError::MembershipRefused { why }),
        (arb_access_role(), prop::option::of(arb_access_role()))
            .prop_map(|(needed, held)| ClientError::Forbidden { needed, held }),
        Just(ClientError::BadCredentials),
    ]
}

fn arb_role() -> impl Strategy<Value = NodeRole> {
    prop_oneof![
        Just(NodeRole::Follower),
        Just(NodeRole::PreCandidate),
        Just(NodeRole::Candidate),
        Just(NodeRole::Leader),
        Just(NodeRole::Learner)
    ]
}

fn arb_status() -> impl Strategy<Value = NodeStatus> {
    (
        (any::<u64>(), arb_role(), any::<u64>(), any::<Option<u64>>()),
        (
            any::<Option<String>>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (any::<u64>(), any::<u64>()),
        prop::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
            )
                .prop_map(
                    |(node_id, match_index, lag_entries, connected, ack_age_ms)| PeerStatus {
                        node_id,
                        match_index,
                        lag_entries,
                        connected,
                        ack_age_ms,
                    },
                ),
            0..5,
        ),
    )
        .prop_map(
            |(
                (node_id, role, term, leader_id),
                (leader_client_address, commit_index, log_start_offset, log_end_offset),
                (log_first_index, log_last_index),
                peers,
            )| NodeStatus {
                node_id,
                role,
                term,
                leader_id,
                leader_client_address,
                commit_index,
                log_start_offset,
                log_end_offset,
                log_first_index,
                log_last_index,
                peers,
                // Derived from the drawn fields: both Option arms of each travel.
                snapshot: (term % 2 == 0).then_some(SnapshotStatus {
                    index: commit_index,
                    term,
                    cut_offset: log_start_offset,
                    bytes: log_end_offset,
                    age_ms: leader_id,
                }),
                disk_bytes: log_end_offset,
                state_keys: 0,
                state_bytes: 0,
                state_bytes_max: 1 << 30,
                log_write_age_ms: 0,
                disk_full: None,
                disk_stalled: false,
            },
        )
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(request_id, base_offset, last_offset)| Response::Appended {
                request_id,
                base_offset,
                last_offset
            }
        ),
        (any::<u64>(), arb_error())
            .prop_map(|(request_id, error)| Response::Error { request_id, error }),
        (any::<u64>(), prop::collection::vec(arb_batch(), 0..4)).prop_map(
            |(subscription_id, batches)| Response::Batches {
                subscription_id,
                batches: batches.concat()
            }
        ),
        (any::<u64>(), arb_status())
            .prop_map(|(request_id, status)| Response::StatusReply { request_id, status }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(subscription_id, start_offset, end_offset)| Response::Subscribed {
                subscription_id,
                start_offset,
                end_offset,
            }
        ),
        (
            (
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<Option<u64>>()
            ),
            prop::collection::vec(
                (
                    arb_member(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<Option<u64>>(),
                    any::<bool>()
                )
                    .prop_map(
                        |(member, match_index, lag_entries, last_contact_ms, connected)| {
                            MemberStatus {
                                member,
                                match_index,
                                lag_entries,
                                last_contact_ms,
                                connected,
                            }
                        }
                    ),
                0..5
            )
        )
            .prop_map(
                |((request_id, leader_id, commit_index, change_pending), members)| {
                    Response::MemberListReply {
                        request_id,
                        leader_id,
                        commit_index,
                        change_pending,
                        members,
                    }
                }
            ),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(arb_member(), 0..5)
        )
            .prop_map(|(request_id, index, members)| Response::MembershipChanged {
                request_id,
                index,
                members,
            }),
        (any::<u64>(), any::<u64>(), any::<Option<String>>()).prop_map(
            |(request_id, leader_id, leader_address)| Response::LeaderTransferred {
                request_id,
                leader_id,
                leader_address,
            }
        ),
        (any::<u64>(), arb_access_role())
            .prop_map(|(request_id, role)| Response::Authenticated { request_id, role }),
    ]
}

fn one_frame(bytes: &[u8]) -> Frame {
    let mut d = FrameDecoder::new(1 << 20);
    d.feed(bytes);
    let frame = d.next_frame().unwrap().unwrap();
    assert_eq!(d.next_frame(), Ok(None));
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_request_round_trips_through_a_frame(request in arb_request()) {
        let mut out = Vec::new();
        encode_request(&mut out, CLUSTER, &request).unwrap();
        let frame = one_frame(&out);
        prop_assert_eq!(frame.header.frame_type, request.frame_type());
        prop_assert_eq!(frame.header.sender_id, 0);
        prop_assert_eq!(frame.header.cluster_id, CLUSTER);
        prop_assert_eq!(decode_request(frame).unwrap(), request);
    }

    #[test]
    fn every_response_round_trips_through_a_frame(response in arb_response(), node in 1..u64::MAX) {
        let mut out = Vec::new();
        encode_response(&mut out, CLUSTER, node, &response).unwrap();
        let frame = one_frame(&out);
        prop_assert_eq!(frame.header.frame_type, response.frame_type());
        prop_assert_eq!(frame.header.sender_id, node);
        prop_assert_eq!(decode_response(frame).unwrap(), response);
    }

    #[test]
    fn batches_given_as_slices_arrive_back_to_back_and_split_again(
        batches in prop::collection::vec(arb_batch(), 0..5),
    ) {
        let slices: Vec<&[u8]> = batches.iter().map(|b| b.as_slice()).collect();
        let mut out = Vec::new();
        encode_batches(&mut out, CLUSTER, 3, 9, &slices).unwrap();
        let Response::Batches { subscription_id, batches: got } = decode_response(one_frame(&out)).unwrap() else {
            panic!("not a Batches response");
        };
        prop_assert_eq!(subscription_id, 9);
        let split: Vec<&[u8]> = split_batches(&got).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(split, slices);
    }

    #[test]
    fn corrupted_client_payloads_are_typed_errors(
        request in arb_request(), pos in any::<usize>(), byte in any::<u8>(),
    ) {
        let mut out = Vec::new();
        encode_request(&mut out, CLUSTER, &request).unwrap();
        let mut frame = one_frame(&out);
        let at = pos % frame.payload.len();
        frame.payload[at] = byte;
        // A changed batch byte is the node's to find (Batch::decode); anything else decodes to
        // the same kind of request or fails with a typed error, never a panic.
        let _ = decode_request(frame.clone());
        let _ = decode_response(Frame { header: FrameHeader { frame_type: FrameType::Batches, ..frame.header }, payload: frame.payload });
    }
}

#[test]
fn a_frame_whose_type_disagrees_with_its_message_is_malformed() {
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, &Request::Status { request_id: 1 }).unwrap();
    let mut frame = one_frame(&out);
    frame.header.frame_type = FrameType::Credit;
    assert!(matches!(
        decode_request(frame),
        Err(ClientProtoError::Malformed(_))
    ));
}

#[test]
fn responses_are_not_requests_and_peer_frames_are_neither() {
    let mut out = Vec::new();
    encode_response(
        &mut out,
        CLUSTER,
        1,
        &Response::Appended {
            request_id: 1,
            base_offset: 0,
            last_offset: 0,
        },
    )
    .unwrap();
    let frame = one_frame(&out);
    assert_eq!(
        decode_request(frame.clone()),
        Err(ClientProtoError::WrongFrameType(FrameType::Appended))
    );
    let mut out = Vec::new();
    let header = FrameHeader {
        frame_type: FrameType::Keepalive,
        cluster_id: CLUSTER,
        sender_id: 0,
    };
    encode(&mut out, header, &[]).unwrap();
    assert_eq!(
        decode_request(one_frame(&out)),
        Err(ClientProtoError::WrongFrameType(FrameType::Keepalive))
    );
}

#[test]
fn a_batches_frame_with_a_torn_batch_is_malformed() {
    let batch = batch_bytes(&[b"v".to_vec()], 0);
    let mut out = Vec::new();
    encode_batches(&mut out, CLUSTER, 1, 1, &[&batch[..batch.len() - 1]]).unwrap();
    assert!(matches!(
        decode_response(one_frame(&out)),
        Err(ClientProtoError::Malformed(_))
    ));
}

#[test]
fn raw_bytes_on_a_message_that_has_none_are_malformed() {
    let mut out = Vec::new();
    encode_request(&mut out, CLUSTER, &Request::Status { request_id: 1 }).unwrap();
    let mut frame = one_frame(&out);
    frame.payload.insert(0, 0);
    assert!(matches!(
        decode_request(frame),
        Err(ClientProtoError::Malformed(_))
    ));
}

#[test]
fn error_messages_tell_the_operator_what_happened() {
    let e = ClientError::NotLeader {
        leader_id: Some(2),
        leader_address: Some("127.0.0.1:7002".into()),
    };
    assert_eq!(
        e.to_string(),
        "not the leader (leader: node 2 at 127.0.0.1:7002)"
    );
    let e = ClientError::OffsetOutOfRange {
        requested: 3,
        earliest: 10,
        end: 20,
        snapshot_index: Some(4),
    };
    assert_eq!(
        e.to_string(),
        "offset 3 out of range: the log holds [10, 20), earlier offsets are in the snapshot at index 4"
    );
    let e = ClientError::Forbidden {
        needed: AccessRole::Produce,
        held: Some(AccessRole::Read),
    };
    assert_eq!(
        e.to_string(),
        "forbidden: this request needs the produce role; the connection holds read"
    );
}

#[test]
fn every_request_needs_a_role_except_authenticate() {
    let needed = |r: Request| r.role_needed();
    assert_eq!(
        needed(Request::Authenticate {
            request_id: 1,
            token: "t".into()
        }),
        None
    );
    assert_eq!(
        needed(Request::Status { request_id: 1 }),
        Some(AccessRole::Read)
    );
    assert_eq!(
        needed(Request::Credit {
            subscription_id: 1,
            bytes: 1
        }),
        Some(AccessRole::Read)
    );
    assert_eq!(
        needed(Request::InitProducer { request_id: 1 }),
        Some(AccessRole::Produce)
    );
    assert_eq!(
        needed(Request::SnapshotNow { request_id: 1 }),
        Some(AccessRole::Admin)
    );
    assert_eq!(
        needed(Request::LeaderTransfer {
            request_id: 1,
            to: None
        }),
        Some(AccessRole::Admin)
    );
    assert!(AccessRole::Read < AccessRole::Produce && AccessRole::Produce < AccessRole::Admin);
    for role in AccessRole::ALL {
        assert_eq!(role.name().parse::<AccessRole>(), Ok(role));
    }
}
