//! The cluster identity carried in every frame header.

use std::fmt;

/// Identifies one cluster; frames carrying another cluster's id are rejected on both ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub u64);

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl ClusterId {
    /// The id of the cluster called `name`: 64-bit FNV-1a over the name's UTF-8 bytes.
    ///
    /// The function is part of the protocol and never changes: every node and client derives the
    /// same id from the same name on every platform (`"raftline-dev"` is
    /// `0x89e1_94ca_0f33_55ba`; a test pins it). FNV-1a is not cryptographic; the id guards against talking to the wrong
    /// cluster by mistake, not against an attacker.
    pub fn from_name(name: &str) -> ClusterId {
        let mut hash = FNV_OFFSET_BASIS;
        for byte in name.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
        ClusterId(hash)
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_vectors_hold() {
        // Published FNV-1a 64 test vectors: the empty string and "a".
        assert_eq!(ClusterId::from_name("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(ClusterId::from_name("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(ClusterId::from_name("foobar").0, 0x8594_4171_f739_67e8);
        assert_eq!(
            ClusterId::from_name("raftline-dev").0,
            0x89e1_94ca_0f33_55ba
        );
    }

    #[test]
    fn different_names_give_different_ids() {
        assert_ne!(
            ClusterId::from_name("prod"),
            ClusterId::from_name("staging")
        );
    }

    #[test]
    fn display_is_fixed_width_hex() {
        assert_eq!(ClusterId(0x2a).to_string(), "0x000000000000002a");
    }
}
