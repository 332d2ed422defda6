//! Cluster membership: who votes, who only learns, how a configuration travels in a log entry,
//! and which configuration is in force at each point of the log.
//!
//! Single-server changes (Raft thesis §4.1): a configuration takes effect on a node as soon as
//! its entry is in the node's log (appended, not committed), and a leader proposes the next
//! change only once the previous one is committed, so any two consecutive configurations have
//! overlapping majorities.

use crate::message::{Index, Membership, NodeId};

/// One change a leader can propose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Add a non-voting learner that receives the log (how a new node catches up).
    AddLearner(NodeId),
    /// Make a caught-up learner a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or learner (a leader removing itself steps down once that commits).
    Remove(NodeId),
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
}

/// Bytes of a membership entry's header: magic and the two counts.
const HEADER_BYTES: usize = 12;
const MAGIC: u32 = 0x4d42_5352; // "RSBM"

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
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, MembershipError> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner(0) => return Err(MembershipError::ZeroId),
            MembershipChange::AddLearner(id) => {
                if self.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                next.learners.push(id);
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
            }
        }
        next.voters.sort_unstable();
        next.learners.sort_unstable();
        Ok(next)
    }

    /// The payload of a configuration entry: `"RSBM"`, voter count, learner count (u32 LE each),
    /// then the ids (u64 LE).
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(HEADER_BYTES + 8 * (self.voters.len() + self.learners.len()));
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&(self.voters.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.learners.len() as u32).to_le_bytes());
        for id in self.members() {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// Decodes a configuration entry's payload; `None` if it is not one.
    pub fn decode(bytes: &[u8]) -> Option<Membership> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
        };
        if word(0)? != MAGIC {
            return None;
        }
        let (voters, learners) = (word(4)? as usize, word(8)? as usize);
        let ids_bytes = bytes.len().checked_sub(HEADER_BYTES)?;
        if ids_bytes != 8 * voters.checked_add(learners)? {
            return None;
        }
        let ids: Vec<NodeId> = bytes[HEADER_BYTES..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some(Membership {
            voters: ids[..voters].to_vec(),
            learners: ids[voters..].to_vec(),
        })
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

    /// Entries up to `applied` are applied: fold their configurations into the base.
    pub fn applied_to(&mut self, applied: Index) {
        let folded = self
            .later
            .iter()
            .take_while(|&&(i, _)| i <= applied)
            .count();
        if let Some((_, m)) = self.later.drain(..folded).next_back() {
            self.base = m;
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
        }
    }

    #[test]
    fn a_configuration_entry_round_trips_and_garbage_is_refused() {
        let m = members(&[1, 2, 3], &[9]);
        assert_eq!(Membership::decode(&m.encode()), Some(m.clone()));
        let mut bad = m.encode();
        bad.pop();
        assert_eq!(Membership::decode(&bad), None);
        assert_eq!(Membership::decode(b"x"), None);
        assert_eq!(Membership::decode(&[]), None);
    }

    #[test]
    fn changes_are_checked_against_the_current_configuration() {
        let m = members(&[1, 2, 3], &[]);
        let with_learner = m.apply(MembershipChange::AddLearner(4)).unwrap();
        assert_eq!(with_learner, members(&[1, 2, 3], &[4]));
        assert_eq!(
            with_learner.apply(MembershipChange::PromoteLearner(4)),
            Ok(members(&[1, 2, 3, 4], &[]))
        );
        assert_eq!(
            m.apply(MembershipChange::PromoteLearner(2)),
            Err(MembershipError::NotALearner(2))
        );
        assert_eq!(
            m.apply(MembershipChange::AddLearner(2)),
            Err(MembershipError::AlreadyMember(2))
        );
        assert_eq!(
            members(&[1], &[]).apply(MembershipChange::Remove(1)),
            Err(MembershipError::LastVoter(1))
        );
        assert_eq!(
            m.apply(MembershipChange::Remove(2)),
            Ok(members(&[1, 3], &[]))
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
