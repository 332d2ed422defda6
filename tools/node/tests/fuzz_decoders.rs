//! Mutation fuzzing of every decoder a remote peer or client reaches: the frame decoder (fed in
//! random chunks), the peer codec, the client protocol, and the Kafka request header as the
//! node decodes it. Each starts from valid encodings and mutates them (bit flips, random bytes,
//! extreme integers, cuts, growth, spliced copies); every input must give a value or a typed
//! error, never a panic. Bounded by a count of cases, not by time (CI runs it in seconds).
//!
//! The seed is printed; replay a run with `RAFTLINE_FUZZ_SEED=<seed>`, run longer with
//! `RAFTLINE_FUZZ_CASES=<n>` (per decoder).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable, StrBytes};
use raftline_netio::client_proto::{decode_request, encode_request, AckMode, Request, StartFrom};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{Frame, FrameDecoder, FrameType};
use raftline_netio::peer_codec::{decode_message, encode_message};
use raftline_replicator::{Entry, EntryKind, Message, MessageBody};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CLUSTER: ClusterId = ClusterId(7);

/// The run's seed (printed) and cases per decoder.
fn run() -> (ChaCha8Rng, u64) {
    let seed = std::env::var("RAFTLINE_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("RAFTLINE_FUZZ_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let cases = std::env::var("RAFTLINE_FUZZ_CASES")
        .ok()
        .map_or(100_000, |s| {
            s.parse().expect("RAFTLINE_FUZZ_CASES is a number")
        });
    eprintln!("fuzz seed {seed} ({cases} cases; replay with RAFTLINE_FUZZ_SEED={seed})");
    (ChaCha8Rng::seed_from_u64(seed), cases)
}

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// One mutation of `input` (possibly several stacked).
fn mutate(rng: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + below(rng, 4) {
        let len = out.len();
        match below(rng, 7) {
            0 if len > 0 => out[below(rng, len)] ^= 1 << below(rng, 8),
            1 if len > 0 => out[below(rng, len)] = rng.next_u64() as u8,
            2 if len >= 8 => {
                let extremes = [0u64, 1, u32::MAX as u64, u64::MAX / 2 + 1, u64::MAX];
                let value = extremes[below(rng, extremes.len())].to_le_bytes();
                let (at, width) = (below(rng, len - 7), [1, 2, 4, 8][below(rng, 4)]);
                out[at..at + width].copy_from_slice(&value[..width]);
            }
            3 => out.truncate(below(rng, len + 1)),
            4 => out.extend((0..below(rng, 64)).map(|_| rng.next_u64() as u8)),
            5 if len > 0 => {
                let from = below(rng, len);
                let to = from + below(rng, len - from);
                let copy = out[from..=to.min(len - 1)].to_vec();
                let at = below(rng, len);
                out.splice(at..at, copy);
            }
            _ => out = (0..below(rng, 128)).map(|_| rng.next_u64() as u8).collect(),
        }
    }
    out
}

/// The frames of `bytes`, decoded as the Net does (each frame a value or a typed error).
fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut d = FrameDecoder::new(1 << 20);
    d.feed(bytes);
    let mut out = Vec::new();
    while let Ok(Some(frame)) = d.next_frame() {
        out.push(frame);
    }
    out
}

fn peer_messages() -> Vec<Vec<u8>> {
    let entry = |index, kind| Entry {
        term: 3,
        index,
        kind,
        payload: Arc::from(&b"batch bytes of an entry"[..]),
    };
    let bodies = [
        MessageBody::AppendEntries {
            prev_index: 4,
            prev_term: 2,
            entries: vec![entry(5, EntryKind::Command), entry(6, EntryKind::Noop)],
            commit: 4,
        },
        MessageBody::AppendEntriesResponse { result: Ok(6) },
        MessageBody::Heartbeat {
            commit: 4,
            read_seq: 9,
        },
        MessageBody::RequestVote {
            last_index: 6,
            last_term: 3,
            transfer: false,
        },
        MessageBody::PreVote {
            last_index: 6,
            last_term: 3,
        },
        MessageBody::TimeoutNow,
    ];
    bodies
        .into_iter()
        .map(|body| {
            let mut out = Vec::new();
            let msg = Message {
                from: 2,
                to: 1,
                term: 3,
                body,
            };
            encode_message(&mut out, CLUSTER, &msg).unwrap();
            out
        })
        .collect()
}

fn client_requests() -> Vec<Vec<u8>> {
    let requests = [
        Request::Append {
            request_id: 1,
            ack: AckMode::Quorum,
            batch: b"not really a batch".to_vec(),
        },
        Request::Subscribe {
            subscription_id: 2,
            from: StartFrom::Offset(10),
            window_bytes: 1 << 20,
        },
        Request::Credit {
            subscription_id: 2,
            bytes: 4096,
        },
        Request::Status { request_id: 3 },
        Request::SnapshotNow { request_id: 4 },
    ];
    requests
        .iter()
        .map(|r| {
            let mut out = Vec::new();
            encode_request(&mut out, CLUSTER, r).unwrap();
            out
        })
        .collect()
}

#[test]
fn the_frame_decoder_fed_mutated_streams_in_random_chunks_never_panics() {
    let (mut rng, cases) = run();
    let mut corpus = peer_messages();
    corpus.extend(client_requests());
    for _ in 0..cases {
        let a = &corpus[below(&mut rng, corpus.len())];
        let b = &corpus[below(&mut rng, corpus.len())];
        let stream = mutate(&mut rng, &[&a[..], &b[..]].concat());
        let mut d = FrameDecoder::new([64, 1 << 10, 1 << 20][below(&mut rng, 3)]);
        let mut at = 0;
        while at < stream.len() {
            let end = (at + 1 + below(&mut rng, 64)).min(stream.len());
            d.feed(&stream[at..end]);
            at = end;
            loop {
                match d.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    // A failed decoder stays failed; the Net closes the connection.
                    Err(e) => {
                        assert_eq!(d.next_frame(), Err(e));
                        break;
                    }
                }
            }
        }
    }
}

#[test]
fn the_peer_codec_decodes_mutated_messages_or_says_why() {
    let (mut rng, cases) = run();
    let corpus: Vec<Frame> = peer_messages().iter().flat_map(|m| frames(m)).collect();
    for _ in 0..cases {
        let pick = below(&mut rng, corpus.len());
        let mut frame = corpus[pick].clone();
        frame.payload = mutate(&mut rng, &frame.payload);
        let _ = decode_message(&frame);
    }
}

#[test]
fn the_client_protocol_decodes_mutated_requests_or_says_why() {
    let (mut rng, cases) = run();
    let corpus: Vec<Frame> = client_requests().iter().flat_map(|r| frames(r)).collect();
    let types = [
        FrameType::Append,
        FrameType::Subscribe,
        FrameType::Credit,
        FrameType::Status,
        FrameType::SubscribeSnapshot,
        FrameType::SnapshotNow,
    ];
    for _ in 0..cases {
        let pick = below(&mut rng, corpus.len());
        let mut frame = corpus[pick].clone();
        frame.payload = mutate(&mut rng, &frame.payload);
        if below(&mut rng, 4) == 0 {
            // A payload under another request type's header.
            frame.header.frame_type = types[below(&mut rng, types.len())];
        }
        let _ = decode_request(frame);
    }
}

#[test]
fn the_kafka_request_header_decodes_mutated_headers_or_says_why() {
    let (mut rng, cases) = run();
    let corpus: Vec<Vec<u8>> = [
        (ApiKey::ApiVersions, 3),
        (ApiKey::Metadata, 12),
        (ApiKey::Produce, 9),
        (ApiKey::Fetch, 12),
        (ApiKey::ListOffsets, 7),
    ]
    .into_iter()
    .map(|(key, version)| {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("fuzz")));
        let mut encoded = BytesMut::new();
        header
            .encode(&mut encoded, key.request_header_version(version))
            .unwrap();
        encoded.put_slice(b"\x00\x00\x00\x04body");
        encoded.to_vec()
    })
    .collect();
    for _ in 0..cases {
        let pick = below(&mut rng, corpus.len());
        let bytes = mutate(&mut rng, &corpus[pick]);
        let mut buf = Bytes::from(bytes);
        if buf.len() < 4 || ApiKey::try_from(i16::from_be_bytes([buf[0], buf[1]])).is_err() {
            continue; // the node refuses these before decoding the header
        }
        let _ = decode_request_header_from_buffer(&mut buf);
    }
}
