//! Property tests of the frame decoder: round trips through arbitrary split points, every single
//! flipped bit rejected, garbage never panics. Replay a failure with PROPTEST_RNG_SEED=<seed>.

use proptest::prelude::*;
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::frame::{
    encode, Frame, FrameDecoder, FrameHeader, FrameType, FRAME_HEADER_BYTES, FRAME_MAGIC,
};

const LIMIT: u32 = 2048;

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(FrameType::ALL.to_vec()),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..=LIMIT as usize),
    )
        .prop_map(|(frame_type, cluster, sender_id, payload)| Frame {
            header: FrameHeader {
                frame_type,
                cluster_id: ClusterId(cluster),
                sender_id,
            },
            payload,
        })
}

fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        encode(&mut out, f.header, &[&f.payload]).unwrap();
    }
    out
}

/// Feeds `bytes` cut at `cuts` (positions, any order) and pulls frames after every piece; stops
/// at the first error.
fn feed_in_pieces(
    decoder: &mut FrameDecoder,
    bytes: &[u8],
    cuts: &[usize],
) -> Result<Vec<Frame>, raftline_netio::frame::FrameError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    let mut frames = Vec::new();
    for w in points.windows(2) {
        decoder.feed(&bytes[w[0]..w[1]]);
        while let Some(f) = decoder.next_frame()? {
            frames.push(f);
        }
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_round_trip_through_arbitrary_split_points(
        frames in prop::collection::vec(arb_frame(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let bytes = encode_all(&frames);
        let mut decoder = FrameDecoder::new(LIMIT);
        let decoded = feed_in_pieces(&mut decoder, &bytes, &cuts).unwrap();
        prop_assert_eq!(decoded, frames);
        prop_assert_eq!(decoder.buffered_bytes(), 0);
    }

    #[test]
    fn any_single_flipped_bit_is_rejected(frame in arb_frame(), bit in any::<usize>()) {
        let mut bytes = encode_all(std::slice::from_ref(&frame));
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        // A flip that grows the length field makes the decoder wait for more payload: give it
        // enough bytes to reach any length the limit allows, so it must decide.
        bytes.extend(std::iter::repeat_n(0u8, FRAME_HEADER_BYTES + LIMIT as usize));
        let mut decoder = FrameDecoder::new(LIMIT);
        decoder.feed(&bytes);
        let result = decoder.next_frame();
        prop_assert!(result.is_err(), "flip of bit {} accepted: {:?}", bit, result);
    }

    #[test]
    fn garbage_never_panics(
        garbage in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut decoder = FrameDecoder::new(LIMIT);
        let _ = feed_in_pieces(&mut decoder, &garbage, &cuts);
    }

    #[test]
    fn garbage_after_a_valid_magic_never_panics(
        garbage in prop::collection::vec(any::<u8>(), 0..4096),
        version_one in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut bytes = FRAME_MAGIC.to_le_bytes().to_vec();
        if version_one {
            bytes.push(1);
        }
        bytes.extend(garbage);
        let mut decoder = FrameDecoder::new(LIMIT);
        let _ = feed_in_pieces(&mut decoder, &bytes, &cuts);
    }
}
