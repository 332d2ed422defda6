//! Cluster membership: who votes, who only learns, how a configuration travels in a log entry,
//! and which configuration is in force at each point of the log.
//!
//! Single-server changes (Raft thesis §4.1): a configuration takes effect on a node as soon as
//! its entry is in the node's log (appended, not committed), and a leader proposes the next
//! change only once the previous one is committed, so any two consecutive configurations have
//! overlapping majorities.

use std::collections::BTreeMap;

use crate::message::{Index, MemberAddress, Membership, NodeId};

/// One change a leader can propose.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Add a non-voting learner that receives the log (how a new node catches up), reached at
    /// the given addresses.
    AddLearner(NodeId, MemberAddress),
    /// Make a caught-up learner a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or learner (a leader removing itself steps down once that commits).
    Remove(NodeId),
    /// Replace a member's addresses (it moved), or record its incarnation: voters and learners
    /// stay as they are. A recorded incarnation cannot be changed (remove the node and add it
    /// again: the new data directory must not inherit the old one's vote).
    UpdateAddress(NodeId, MemberAddress),
}

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// Only the leader changes the configuration; `leader` is its best guess of who is.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// Leadership is being handed to `to`; retry with the new leader.
    #[error("leadership is being transferred to node {to}")]
    Transferring { to: NodeId },
    /// One change at a time: the previous one is not committed yet.
    #[error("configuration change at index {index} is not committed yet")]
    ChangePending { index: Index },
    /// A new leader must commit an entry of its term before changing the configuration
    /// (otherwise an uncommitted change of an earlier leader could be overridden unsafely).
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    NotYetCommittedInTerm,
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// Only learners can be promoted.
    #[error("node {0} is not a learner")]
    NotALearner(NodeId),
    /// The learner has not caught up with the commit index yet.
    #[error("learner {id} matches up to {match_index}, the commit index is {commit}")]
    LearnerBehind {
        id: NodeId,
        match_index: Index,
        commit: Index,
    },
    /// The last voter cannot be removed.
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
    /// The member's recorded incarnation differs from the one given.
    #[error(
        "node {id} is recorded with incarnation {recorded:016x}, not {given:016x}: a member's \
         data directory cannot be exchanged in place (remove it, then add it again)"
    )]
    IncarnationRecorded {
        id: NodeId,
        recorded: u64,
        given: u64,
    },
}

/// Bytes of a membership entry's header: magic and the counts (two in the first version,
/// three since the address book).
const HEADER_BYTES_V1: usize = 12;
const HEADER_BYTES: usize = 16;
/// The first version: ids only; the second: the address book without incarnations. Both are
/// still decoded (logs and snapshots written before them), incarnations as 0 (not recorded).
const MAGIC_V1: u32 = 0x4d42_5352; // "RSBM"
const MAGIC_V2: u32 = 0x3242_5352; // "RSB2"
const MAGIC: u32 = 0x3342_5352; // "RSB3"
/// Longest address the encoding holds (a `u16` length).
pub const ADDRESS_BYTES_MAX: usize = u16::MAX as usize;

impl Membership {
    /// The votes needed for a quorum (0 when there are no voters: nothing can be decided).
    pub fn quorum(&self) -> usize {
        if self.voters.is_empty() {
            usize::MAX
        } else {
            self.voters.len() / 2 + 1
        }
    }

    /// True when `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// True when `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }

    /// The configuration after `change`, checked against this one.
    pub fn apply(&self, change: &MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match *change {
            MembershipChange::AddLearner(0, _) => return Err(MembershipError::ZeroId),
            MembershipChange::AddLearner(id, ref address) => {
                if self.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.learners.push(id);
                next.addresses.insert(id, address.clone());
            }
            MembershipChange::PromoteLearner(id) => {
                if !self.learners.contains(&id) {
                    return Err(MembershipError::NotALearner(id));
                }
                next.learners.retain(|&l| l != id);
                next.voters.push(id);
            }
            MembershipChange::Remove(id) => {
                if !self.contains(id) {
                    return Err(MembershipError::NotAMember(id));
                }
                if self.voters == [id] {
                    return Err(MembershipError::LastVoter(id));
                }
                next.voters.retain(|&v| v != id);
                next.learners.retain(|&l| l != id);
                next.addresses.remove(&id);
            }
            MembershipChange::UpdateAddress(id, ref address) => {
                if !self.contains(id) {
                    return Err(MembershipError::NotAMember(id));
                }
                let recorded = self.addresses.get(&id).map_or(0, |a| a.incarnation);
                if recorded != 0 && address.incarnation != recorded {
                    return Err(MembershipError::IncarnationRecorded {
                        id,
                        recorded,
                        given: address.incarnation,
                    });
                }
                next.addresses.insert(id, address.clone());
            }
        }
        next.voters.sort_unstable();
        next.learners.sort_unstable();
        Ok(next)
    }

    /// The payload of a configuration entry (and a snapshot's configuration): `"RSB3"`, voter,
    /// learner and address counts (u32 LE each), the ids (u64 LE), then per address its node id
    /// (u64 LE), the peer and client address (u16 LE length, UTF-8 bytes each) and the
    /// incarnation (u64 LE).
    /// Addresses longer than [`ADDRESS_BYTES_MAX`] are cut (a driver refuses them first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_BYTES + 8 * (self.voters.len() + self.learners.len()));
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.voters.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.learners.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.addresses.len() as u32).to_le_bytes());
        for id in self.members() {
            out.extend_from_slice(&id.to_le_bytes());
        }
        for (id, address) in &self.addresses {
            out.extend_from_slice(&id.to_le_bytes());
            for text in [&address.peer, &address.client] {
                let bytes = &text.as_bytes()[..text.len().min(ADDRESS_BYTES_MAX)];
                out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            out.extend_from_slice(&address.incarnation.to_le_bytes());
        }
        out
    }

    /// Decodes a configuration entry's payload (either version); `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Membership> {
        let mut r = Reader { bytes, at: 0 };
        let magic = r.u32()?;
        let (voters, learners) = (r.u32()? as usize, r.u32()? as usize);
        let addresses = match magic {
            MAGIC_V1 => 0,
            MAGIC_V2 | MAGIC => r.u32()? as usize,
            _ => return None,
        };
        debug_assert_eq!(
            r.at,
            if magic == MAGIC_V1 {
                HEADER_BYTES_V1
            } else {
                HEADER_BYTES
            }
        );
        // Every id takes 8 bytes: refuse counts the payload cannot hold before allocating.
        if voters.checked_add(learners)?.checked_add(addresses)? > bytes.len() / 8 {
            return None;
        }
        let mut ids = Vec::with_capacity(voters + learners);
        for _ in 0..voters + learners {
            ids.push(r.u64()?);
        }
        let mut book = BTreeMap::new();
        for _ in 0..addresses {
            let id = r.u64()?;
            let peer = r.text()?;
            let client = r.text()?;
            let incarnation = if magic == MAGIC { r.u64()? } else { 0 };
            book.insert(
                id,
                MemberAddress {
                    peer,
                    client,
                    incarnation,
                },
            );
        }
        if r.at != bytes.len() {
            return None;
        }
        Some(Membership {
            voters: ids[..voters].to_vec(),
            learners: ids[voters..].to_vec(),
            addresses: book,
        })
    }
}

/// Reads a configuration payload front to back; `None` past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn text(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The configurations in force along the log: the one as of the applied index (`base`) and
/// those of later configuration entries (few: a leader proposes one change at a time).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfigHistory {
    base: Membership,
    /// `(index, configuration)` of configuration entries after the applied index, in order.
    later: Vec<(Index, Membership)>,
}

impl ConfigHistory {
    /// A history starting from `base`.
    pub fn new(base: Membership) -> Self {
        ConfigHistory {
            base,
            later: Vec::new(),
        }
    }

    /// The configuration in force: that of the last configuration entry in the log.
    pub fn current(&self) -> &Membership {
        self.later.last().map_or(&self.base, |(_, m)| m)
    }

    /// Index of the last configuration entry after the applied index, if any.
    pub fn last_index(&self) -> Option<Index> {
        self.later.last().map(|&(i, _)| i)
    }

    /// The configuration as of the applied index.
    pub fn applied(&self) -> &Membership {
        &self.base
    }

    /// A configuration entry was appended at `index`.
    pub fn appended(&mut self, index: Index, membership: Membership) {
        debug_assert!(self.later.last().is_none_or(|&(i, _)| i < index));
        self.later.push((index, membership));
    }

    /// The log was cut from `from` on: configurations of removed entries no longer apply.
    pub fn truncated(&mut self, from: Index) {
        self.later.retain(|&(i, _)| i < from);
    }

    /// Entries up to `applied` are applied: fold their configurations into the base. True when
    /// the base changed.
    pub fn applied_to(&mut self, applied: Index) -> bool {
        let folded = self
            .later
            .iter()
            .take_while(|&&(i, _)| i <= applied)
            .count();
        match self.later.drain(..folded).next_back() {
            Some((_, m)) => {
                self.base = m;
                true
            }
            None => false,
        }
    }

    /// The log was replaced by a snapshot with configuration `base`.
    pub fn restored(&mut self, base: Membership) {
        self.base = base;
        self.later.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(voters: &[NodeId], learners: &[NodeId]) -> Membership {
        Membership {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            addresses: BTreeMap::new(),
        }
    }

    fn address(n: u64) -> MemberAddress {
        MemberAddress {
            peer: format!("10.0.0.{n}:7301"),
            client: format!("10.0.0.{n}:7300"),
            incarnation: 0x1000 + n,
        }
    }

    #[test]
    fn a_configuration_entry_round_trips_and_garbage_is_refused() {
        let mut m = members(&[1, 2, 3], &[9]);
        m.addresses = [(1, address(1)), (9, address(9))].into();
        assert_eq!(Membership::decode(&m.encode()), Some(m.clone()));
        let full = m.encode();
        for cut in 0..full.len() {
            assert_eq!(Membership::decode(&full[..cut]), None, "cut at {cut}");
        }
        let mut long = full.clone();
        long.push(0);
        assert_eq!(Membership::decode(&long), None);
        let mut huge_count = full;
        huge_count[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Membership::decode(&huge_count), None);
        assert_eq!(Membership::decode(b"x"), None);
        assert_eq!(Membership::decode(&[]), None);
    }

    #[test]
    fn a_first_version_entry_without_addresses_still_decodes() {
        let mut v1 = Vec::new();
        for word in [MAGIC_V1, 2, 1] {
            v1.extend_from_slice(&word.to_le_bytes());
        }
        for id in [1u64, 2, 7] {
            v1.extend_from_slice(&id.to_le_bytes());
        }
        assert_eq!(Membership::decode(&v1), Some(members(&[1, 2], &[7])));
    }

    #[test]
    fn changes_are_checked_against_the_current_configuration() {
        let m = members(&[1, 2, 3], &[]);
        let with_learner = m
            .apply(&MembershipChange::AddLearner(4, address(4)))
            .unwrap();
        let mut expected = members(&[1, 2, 3], &[4]);
        expected.addresses.insert(4, address(4));
        assert_eq!(with_learner, expected);
        let promoted = with_learner
            .apply(&MembershipChange::PromoteLearner(4))
            .unwrap();
        assert_eq!(promoted.voters, [1, 2, 3, 4]);
        assert_eq!(
            promoted.addresses[&4],
            address(4),
            "promotion keeps the address"
        );
        assert_eq!(
            promoted.apply(&MembershipChange::Remove(4)),
            Ok(members(&[1, 2, 3], &[])),
            "a removed member's address goes with it"
        );
        assert_eq!(
            m.apply(&MembershipChange::PromoteLearner(2)),
            Err(MembershipError::NotALearner(2))
        );
        assert_eq!(
            m.apply(&MembershipChange::AddLearner(2, address(2))),
            Err(MembershipError::AlreadyMember(2))
        );
        assert_eq!(
            members(&[1], &[]).apply(&MembershipChange::Remove(1)),
            Err(MembershipError::LastVoter(1))
        );
        assert_eq!(
            m.apply(&MembershipChange::Remove(2)),
            Ok(members(&[1, 3], &[]))
        );
    }

    #[test]
    fn a_second_version_entry_decodes_with_no_incarnation_recorded() {
        let mut v2 = Vec::new();
        for word in [MAGIC_V2, 1, 0, 1] {
            v2.extend_from_slice(&word.to_le_bytes());
        }
        v2.extend_from_slice(&1u64.to_le_bytes());
        v2.extend_from_slice(&1u64.to_le_bytes());
        for text in ["10.0.0.1:7301", "10.0.0.1:7300"] {
            v2.extend_from_slice(&(text.len() as u16).to_le_bytes());
            v2.extend_from_slice(text.as_bytes());
        }
        let mut expected = members(&[1], &[]);
        expected.addresses.insert(
            1,
            MemberAddress {
                incarnation: 0,
                ..address(1)
            },
        );
        assert_eq!(Membership::decode(&v2), Some(expected));
    }

    #[test]
    fn an_address_update_records_an_incarnation_once_and_never_changes_it() {
        let mut m = members(&[1, 2, 3], &[]);
        let unrecorded = MemberAddress {
            incarnation: 0,
            ..address(2)
        };
        m.addresses.insert(2, unrecorded);
        let recorded = m
            .apply(&MembershipChange::UpdateAddress(2, address(2)))
            .unwrap();
        assert_eq!(recorded.voters, m.voters, "voters stay as they were");
        assert_eq!(recorded.addresses[&2], address(2));
        let moved = MemberAddress {
            peer: "10.9.9.9:7301".into(),
            ..address(2)
        };
        assert_eq!(
            recorded
                .apply(&MembershipChange::UpdateAddress(2, moved.clone()))
                .unwrap()
                .addresses[&2],
            moved,
            "a member moves with its incarnation"
        );
        let other_disk = MemberAddress {
            incarnation: 77,
            ..address(2)
        };
        assert_eq!(
            recorded.apply(&MembershipChange::UpdateAddress(2, other_disk)),
            Err(MembershipError::IncarnationRecorded {
                id: 2,
                recorded: address(2).incarnation,
                given: 77
            })
        );
        assert_eq!(
            recorded.apply(&MembershipChange::UpdateAddress(8, address(8))),
            Err(MembershipError::NotAMember(8))
        );
    }

    #[test]
    fn history_follows_appends_truncations_and_applies() {
        let mut h = ConfigHistory::new(members(&[1, 2, 3], &[]));
        h.appended(5, members(&[1, 2, 3], &[4]));
        h.appended(9, members(&[1, 2, 3, 4], &[]));
        assert_eq!(h.current(), &members(&[1, 2, 3, 4], &[]));
        h.truncated(9);
        assert_eq!(
            h.current(),
            &members(&[1, 2, 3], &[4]),
            "an entry cut from the log no longer applies"
        );
        h.applied_to(7);
        assert_eq!(h.applied(), &members(&[1, 2, 3], &[4]));
        assert_eq!(h.last_index(), None);
    }
}
