//! The `PeerHello` payload: who is dialling, on which data directory, and what the dialler
//! knows of the node it dials.
//!
//! ```text
//! u64 LE  incarnation   the sender's data directory incarnation (0: not known)
//! u64 LE  recorded      the incarnation the sender's configuration records for the receiver
//!                       (0: none recorded)
//! u8      flags         bit 0: the sender is pristine (no log entry, no snapshot, term 0)
//! ```
//!
//! An empty payload (nodes before incarnations) reads as all zero. The receiver refuses a
//! pristine sender whose incarnation differs from the one its configuration records for it
//! (`CloseReason::Incarnation`), and a node whose directory is new learns from the hellos it
//! receives whether the cluster already knows its id under another directory
//! (tools/node/README.md "Incarnations").

/// Bytes of a hello payload.
pub const HELLO_BYTES: usize = 17;

const PRISTINE: u8 = 1;

/// What a `PeerHello` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerHello {
    /// The sender's data directory incarnation (0: not known).
    pub incarnation: u64,
    /// The incarnation the sender's configuration records for the receiver (0: none).
    pub recorded_for_you: u64,
    /// The sender has no log entry, no snapshot and term 0: it has never voted or acknowledged.
    pub pristine: bool,
}

impl PeerHello {
    /// The payload.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0; HELLO_BYTES];
        out[..8].copy_from_slice(&self.incarnation.to_le_bytes());
        out[8..16].copy_from_slice(&self.recorded_for_you.to_le_bytes());
        out[16] = if self.pristine { PRISTINE } else { 0 };
        out
    }

    /// Reads a payload: empty (an older node) or exactly [`HELLO_BYTES`] with known flags.
    pub fn decode(payload: &[u8]) -> Option<PeerHello> {
        match payload.len() {
            0 => Some(PeerHello::default()),
            HELLO_BYTES if payload[16] & !PRISTINE == 0 => Some(PeerHello {
                incarnation: u64::from_le_bytes(payload[..8].try_into().ok()?),
                recorded_for_you: u64::from_le_bytes(payload[8..16].try_into().ok()?),
                pristine: payload[16] & PRISTINE != 0,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_anything_else_is_refused() {
        let hello = PeerHello {
            incarnation: 0x0123_4567_89ab_cdef,
            recorded_for_you: 42,
            pristine: true,
        };
        assert_eq!(PeerHello::decode(&hello.encode()), Some(hello));
        assert_eq!(PeerHello::decode(&[]), Some(PeerHello::default()));
        let bytes = hello.encode();
        for len in 1..HELLO_BYTES {
            assert_eq!(PeerHello::decode(&bytes[..len]), None, "{len} bytes");
        }
        let mut unknown_flag = bytes;
        unknown_flag[16] = 2;
        assert_eq!(PeerHello::decode(&unknown_flag), None);
        assert_eq!(PeerHello::decode(&[0; HELLO_BYTES + 1]), None);
    }
}
