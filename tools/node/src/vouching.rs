//! A bootstrap voter on a pristine data directory waits to be vouched for before it takes part.
//!
//! A node with no log entry, no snapshot and term 0 has, by its own durable state, never voted
//! or acknowledged anything: at a cluster's first start that is the truth, but a voter whose disk
//! was wiped looks the same and has forgotten the votes and acknowledgements the others counted
//! (a wiped voter helping elect a leader without committed entries loses acknowledged records).
//! The data directory's incarnation tells them apart: the cluster records each member's
//! (`MemberAddress::incarnation`), and every hello says what its sender records for the node it
//! dials (`PeerHello::recorded_for_you`). So until vouched, the node neither ticks its core nor
//! steps peer messages; it only listens to hellos:
//!
//! - a hello recording **another** incarnation for this id refuses it for good: this directory
//!   is not the one the cluster knows (the runbook: `member remove`, then `--join`);
//! - hellos from a **quorum** of the other voters, none recording another incarnation, vouch
//!   for it: if the cluster ever committed the entry recording this id's incarnation, a quorum
//!   holds it, and any quorum of the others intersects that one (the recording is among the
//!   first entries a leader commits, tools/node/README.md "Incarnations");
//! - hellos from one fewer, all from **pristine** nodes, vouch for it too: with this node they
//!   are a quorum that never held an entry, so nothing was ever committed (or more than a
//!   minority lost their disks). A first start needs only a quorum of the nodes.
//!
//! What stays open is the window before a member's incarnation is recorded: a voter wiped in
//! its first seconds (before the leader's recording committed) is not recognised.

use std::collections::{BTreeMap, BTreeSet};

use raftline_netio::net::PeerHello;
use raftline_replicator::NodeId;

/// What the hellos heard so far decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough heard yet.
    Waiting,
    /// The node may take part.
    Vouched,
    /// Peer `by` records incarnation `recorded` for this id: the directory is not the member's.
    Refused {
        /// Who said so.
        by: NodeId,
        /// What it records.
        recorded: u64,
    },
}

/// The hellos a pristine bootstrap voter has heard.
#[derive(Debug)]
pub struct Vouching {
    incarnation: u64,
    others: BTreeSet<NodeId>,
    quorum: usize,
    /// Who said hello without recording another incarnation, and whether it was pristine.
    heard: BTreeMap<NodeId, bool>,
}

impl Vouching {
    /// A node of `incarnation` among bootstrap `voters` (itself included).
    pub fn new(node_id: NodeId, incarnation: u64, voters: &BTreeSet<NodeId>) -> Vouching {
        let others: BTreeSet<NodeId> = voters.iter().copied().filter(|&v| v != node_id).collect();
        Vouching {
            incarnation,
            quorum: voters.len() / 2 + 1,
            others,
            heard: BTreeMap::new(),
        }
    }

    /// The verdict before any hello (a single voter has nobody to ask).
    pub fn verdict(&self) -> Verdict {
        let pristine = self.heard.values().filter(|&&p| p).count();
        let needed = self.quorum.min(self.others.len());
        if self.heard.len() >= needed || pristine + 1 >= self.quorum {
            Verdict::Vouched
        } else {
            Verdict::Waiting
        }
    }

    /// Peer `from` said `hello`.
    pub fn hear(&mut self, from: NodeId, hello: &PeerHello) -> Verdict {
        let recorded = hello.recorded_for_you;
        if recorded != 0 && recorded != self.incarnation {
            return Verdict::Refused { by: from, recorded };
        }
        if self.others.contains(&from) {
            // A later hello (a reconnect) replaces the earlier: pristine is what it says now.
            self.heard.insert(from, hello.pristine);
        }
        self.verdict()
    }

    /// The other voters not heard from yet (for the waiting message).
    pub fn missing(&self) -> Vec<NodeId> {
        self.others
            .iter()
            .copied()
            .filter(|id| !self.heard.contains_key(id))
            .collect()
    }

    /// Hellos from how many others vouch (`quorum` of them, or one fewer if all pristine).
    pub fn quorum(&self) -> usize {
        self.quorum.min(self.others.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINE: u64 = 0xaaaa;

    fn hello(recorded_for_you: u64, pristine: bool) -> PeerHello {
        PeerHello {
            incarnation: 7,
            recorded_for_you,
            pristine,
        }
    }

    fn of(voters: &[NodeId]) -> Vouching {
        Vouching::new(1, MINE, &voters.iter().copied().collect())
    }

    #[test]
    fn a_single_voter_is_vouched_at_once() {
        assert_eq!(of(&[1]).verdict(), Verdict::Vouched);
    }

    #[test]
    fn a_first_start_needs_only_a_quorum_of_pristine_nodes() {
        let mut v = of(&[1, 2, 3]);
        assert_eq!(v.verdict(), Verdict::Waiting);
        assert_eq!(v.hear(2, &hello(0, true)), Verdict::Vouched);
        let mut five = of(&[1, 2, 3, 4, 5]);
        assert_eq!(five.hear(2, &hello(0, true)), Verdict::Waiting);
        assert_eq!(five.hear(3, &hello(0, true)), Verdict::Vouched);
    }

    #[test]
    fn nodes_with_a_log_must_be_a_quorum_of_the_others() {
        let mut v = of(&[1, 2, 3]);
        assert_eq!(
            v.hear(2, &hello(0, false)),
            Verdict::Waiting,
            "one node that has a log may lack the entry recording this id"
        );
        assert_eq!(v.missing(), [3]);
        assert_eq!(v.hear(3, &hello(0, false)), Verdict::Vouched);
        let mut five = of(&[1, 2, 3, 4, 5]);
        five.hear(2, &hello(0, false));
        assert_eq!(five.hear(3, &hello(0, true)), Verdict::Waiting);
        assert_eq!(five.hear(4, &hello(MINE, false)), Verdict::Vouched);
    }

    #[test]
    fn another_incarnation_recorded_for_this_id_refuses_it() {
        let mut v = of(&[1, 2, 3]);
        v.hear(2, &hello(0, false));
        assert_eq!(
            v.hear(3, &hello(0xbbbb, false)),
            Verdict::Refused {
                by: 3,
                recorded: 0xbbbb
            }
        );
    }

    #[test]
    fn hellos_from_non_voters_and_repeats_do_not_count_twice() {
        let mut v = of(&[1, 2, 3]);
        assert_eq!(v.hear(9, &hello(0, true)), Verdict::Waiting);
        assert_eq!(v.hear(2, &hello(0, false)), Verdict::Waiting);
        assert_eq!(v.hear(2, &hello(0, false)), Verdict::Waiting);
    }
}
