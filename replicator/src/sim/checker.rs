//! The safety properties the simulator checks after every step, from the Raft paper's Figure 3
//! plus the durability promise: an acknowledged entry is never lost.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::message::{Entry, EntryKind, Index, Membership, NodeId, SnapshotMeta, Term};
use crate::raft::{Raft, Role};
use crate::sim::disk::SimDisk;
use crate::sim::state_machine::{apply_hash, SimStateMachine};
use crate::storage::Storage;

/// Which property a run broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Property {
    /// Two leaders in one term.
    ElectionSafety,
    /// Two logs hold an entry with the same index and term but differ before it or in it.
    LogMatching,
    /// A leader lacks an entry committed in an earlier term.
    LeaderCompleteness,
    /// Two nodes applied different entries at one index.
    StateMachineSafety,
    /// An entry was committed before a majority held it durably. A node whose damaged log lost
    /// it counts as holding it while its repair marker covers it: the leader counted an
    /// acknowledgement it really sent, and it neither votes nor campaigns until it holds every
    /// committed entry again (replicator/DRIVER.md, "Suspect mode").
    CommitDurability,
    /// An entry was committed while a node lacking it could still win an election: some
    /// future schedule would lose it (Raft's Figure 8).
    UnsafeCommit,
    /// An entry acknowledged to a client is missing from a leader's log.
    AckedEntryLost,
    /// A confirmed read would miss a write acknowledged before the read was issued.
    StaleRead,
    /// A disk dropped a committed entry it held durably (e.g. rolled back by a stale snapshot).
    DurableLoss,
    /// A snapshot's content differs from the committed entries it claims to cover.
    SnapshotContent,
    /// No leader committed within the bound after the faults stopped.
    Liveness,
    /// A node panicked (no peer message may make one; the simulator catches the panic).
    Panic,
    /// A node refused a message a correct peer sent (only forged ones may be refused).
    RefusedLegitimate,
    /// A leader counts a match a follower of its term acknowledged that the follower's disk no
    /// longer holds, and no repair marker says so: the follower lost entries it acknowledged
    /// and carries on voting (issue 14's silent cut of a damaged tail).
    AckedMatchLost,
    /// More events pending than any healthy run comes near: nodes answer each other's
    /// messages without end, and more such exchanges start all the time (a leader resending
    /// the same probe for every rejection, with every heartbeat response starting one more).
    MessageStorm,
}

/// A broken property, with enough context to replay and read the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The property.
    pub property: Property,
    /// What exactly was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.property, self.detail)
    }
}

/// Identity of an entry's content: its kind and, for commands, the client proposal id.
pub type Digest = (EntryKind, u64);

/// The content identity of `e`.
pub fn digest(e: &Entry) -> Digest {
    let mut id = [0u8; 8];
    let n = e.payload.len().min(8);
    id[..n].copy_from_slice(&e.payload[..n]);
    (e.kind, u64::from_le_bytes(id))
}

#[derive(Clone, Copy, Debug)]
struct Committed {
    term: Term,
    digest: Digest,
    /// Term of the node that first reported it committed.
    commit_term: Term,
}

/// History of the whole run, against which every step is checked.
#[derive(Debug, Default)]
pub struct Checker {
    leaders: BTreeMap<Term, NodeId>,
    /// `(index, term)` → content and the term of the entry before it, for Log Matching.
    entries: HashMap<(Index, Term), (Digest, Term)>,
    committed: BTreeMap<Index, Committed>,
    applied: BTreeMap<Index, (Term, Digest)>,
    /// Commit index already checked, per node (reset when the node restarts).
    seen_commit: HashMap<NodeId, Index>,
    /// Entries acknowledged to clients.
    acked: BTreeMap<Index, (Term, Digest)>,
    /// `prefix_hash[i]` = state-machine hash after applying entries `1..=i` (as far as the
    /// applied entries are contiguous from 1).
    prefix_hash: Vec<u64>,
}

fn violation(property: Property, detail: String) -> Result<(), Violation> {
    Err(Violation { property, detail })
}

impl Checker {
    /// Entries acknowledged to clients so far.
    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    /// Highest index acknowledged to a client so far (0 if none).
    pub fn acked_max(&self) -> Index {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }

    /// Highest index anyone has reported committed.
    pub fn committed_max(&self) -> Index {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }

    /// A node restarted: its volatile commit index starts again from zero.
    pub fn node_restarted(&mut self, node: NodeId) {
        self.seen_commit.remove(&node);
    }

    /// Checks entries a node just handed out for writing (Log Matching, by induction: an
    /// `(index, term)` always has the same content and the same predecessor term).
    pub fn entries_written(
        &mut self,
        raft: &Raft<SimDisk>,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        for e in entries {
            let prev_term = raft
                .term_at(e.index - 1)
                .expect("the log holds the predecessor");
            let seen = *self
                .entries
                .entry((e.index, e.term))
                .or_insert((digest(e), prev_term));
            if seen != (digest(e), prev_term) {
                return violation(
                    Property::LogMatching,
                    format!(
                        "n{} holds ({},t{}) = {:?} after t{}, another log holds {:?} after t{}",
                        raft.id(),
                        e.index,
                        e.term,
                        digest(e),
                        prev_term,
                        seen.0,
                        seen.1
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks a node's role and commit index after it handled an event.
    /// `rafts[k]`, `disks[k]` and `memberships[k]` are node `k + 1`'s core (`None` while down),
    /// disk and configuration (the last one it knew while down).
    pub fn observe(
        &mut self,
        node: usize,
        rafts: &[Option<&Raft<SimDisk>>],
        disks: &[&SimDisk],
        memberships: &[&Membership],
    ) -> Result<(), Violation> {
        let raft = rafts[node].expect("observing a node that is up");
        let quorum = raft.membership().quorum();
        let id = raft.id();
        if raft.role() == Role::Leader {
            let term = raft.term();
            match self.leaders.get(&term) {
                Some(&other) if other != id => {
                    return violation(
                        Property::ElectionSafety,
                        format!("n{other} and n{id} both lead term {term}"),
                    );
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.check_new_leader(raft)?;
                }
            }
            check_matches(raft, disks)?;
        }
        let from = self.seen_commit.get(&id).copied().unwrap_or(0) + 1;
        // Entries below the log's start are covered by its snapshot, checked by content.
        let from = from.max(raft.storage().first_index());
        for index in from..=raft.commit_index() {
            let e = raft.entry(index).expect("committed entries are in the log");
            let now = Committed {
                term: e.term,
                digest: digest(&e),
                commit_term: raft.term(),
            };
            let first = !self.committed.contains_key(&index);
            let known = *self.committed.entry(index).or_insert(now);
            if (known.term, known.digest) != (now.term, now.digest) {
                return violation(
                    Property::StateMachineSafety,
                    format!(
                        "n{id} commits ({index},t{}) but ({index},t{}) was committed",
                        e.term, known.term
                    ),
                );
            }
            if first && raft.role() == Role::Leader {
                let holders = raft
                    .membership()
                    .voters
                    .iter()
                    .filter(|&&v| {
                        let disk = disks[v as usize - 1];
                        disk.holds(index, e.term)
                            || disk.repair_through().is_some_and(|r| r >= index)
                    })
                    .count();
                if holders < quorum {
                    return violation(
                        Property::CommitDurability,
                        format!("n{id} committed ({index},t{}) durable on {holders} disks, quorum {quorum}", e.term),
                    );
                }
                if let Some(x) = electable_without(index, e.term, rafts, disks, memberships) {
                    return violation(
                        Property::UnsafeCommit,
                        format!("n{id} committed ({index},t{}) but n{x}, lacking it, can still be elected", e.term),
                    );
                }
            }
        }
        self.seen_commit
            .insert(id, raft.commit_index().max(from - 1));
        Ok(())
    }

    fn check_new_leader(&self, raft: &Raft<SimDisk>) -> Result<(), Violation> {
        for (&index, c) in &self.committed {
            if c.commit_term < raft.term() && !holds(raft, index, c.term) {
                return violation(
                    Property::LeaderCompleteness,
                    format!(
                        "n{} leads t{} without ({index},t{}) committed in t{}",
                        raft.id(),
                        raft.term(),
                        c.term,
                        c.commit_term
                    ),
                );
            }
        }
        for (&index, &(term, _)) in &self.acked {
            if !holds(raft, index, term) {
                return violation(
                    Property::AckedEntryLost,
                    format!(
                        "n{} leads t{} without acknowledged ({index},t{term})",
                        raft.id(),
                        raft.term()
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks entries a node applied (State Machine Safety).
    pub fn applied(&mut self, node: NodeId, entries: &[Entry]) -> Result<(), Violation> {
        if self.prefix_hash.is_empty() {
            self.prefix_hash.push(0);
        }
        for e in entries {
            if e.index == self.prefix_hash.len() as Index {
                let h = apply_hash(self.prefix_hash[e.index as usize - 1], e);
                self.prefix_hash.push(h);
            }
            let now = (e.term, digest(e));
            let known = *self.applied.entry(e.index).or_insert(now);
            if known != now {
                return violation(
                    Property::StateMachineSafety,
                    format!(
                        "n{node} applied ({},t{}) where another applied ({},t{})",
                        e.index, e.term, e.index, known.0
                    ),
                );
            }
        }
        Ok(())
    }

    /// Checks a snapshot a node took or installed against the entries it claims to cover.
    pub fn snapshot(
        &self,
        node: NodeId,
        meta: &SnapshotMeta,
        state: &SimStateMachine,
    ) -> Result<(), Violation> {
        let expected = self.prefix_hash.get(meta.index as usize).copied();
        let term = self.applied.get(&meta.index).map(|&(t, _)| t);
        if state.applied != meta.index || expected != Some(state.hash) || term != Some(meta.term) {
            return violation(
                Property::SnapshotContent,
                format!(
                    "n{node}'s snapshot at ({},t{}) holds state through {} with hash {:#x};                      the applied entries give hash {expected:x?} and term {term:?}",
                    meta.index, meta.term, state.applied, state.hash
                ),
            );
        }
        Ok(())
    }

    /// The term the entry at `index` was committed with, if known.
    pub fn committed_term(&self, index: Index) -> Option<Term> {
        self.committed.get(&index).map(|c| c.term)
    }

    /// Checks a durable change of `disk`: if it held committed entry `index` before, it still
    /// does (a disk may only drop committed entries into a snapshot that covers them).
    pub fn durable_change(
        &self,
        node: NodeId,
        index: Index,
        held_before: bool,
        disk: &SimDisk,
    ) -> Result<(), Violation> {
        let Some(term) = self.committed_term(index) else {
            return Ok(());
        };
        if held_before && !disk.holds(index, term) {
            return violation(
                Property::DurableLoss,
                format!(
                    "n{node}'s disk dropped committed ({index},t{term}); it now ends at {:?}",
                    disk.last()
                ),
            );
        }
        Ok(())
    }

    /// Records that a client got an acknowledgement for `e`.
    pub fn acknowledged(&mut self, e: &Entry) {
        self.acked.insert(e.index, (e.term, digest(e)));
    }

    /// Checks that `raft`'s log holds every acknowledged entry.
    pub fn holds_all_acked(&self, raft: &Raft<SimDisk>) -> Result<(), Violation> {
        for (&index, &(term, _)) in &self.acked {
            if !holds(raft, index, term) {
                return violation(
                    Property::AckedEntryLost,
                    format!("n{} lacks acknowledged ({index},t{term})", raft.id()),
                );
            }
        }
        Ok(())
    }
}

/// Checks that every follower still in leader `raft`'s term (by its durable hard state) durably
/// holds the match it acknowledged, or has a repair marker covering it. A follower of a newer
/// term may have replaced those entries legitimately; one of this term only gets entries from
/// this leader, which never takes back what it sent. Entries a disk lost unnoticed (the
/// residual window, [`SimDisk::lose_tail_silently`]) are exempt: the leader cannot know until
/// the follower rejects its appends, and the simulator only injects that loss where it cannot
/// matter for safety.
fn check_matches(raft: &Raft<SimDisk>, disks: &[&SimDisk]) -> Result<(), Violation> {
    for (k, disk) in disks.iter().enumerate() {
        let peer = k as NodeId + 1;
        let Some(pr) = raft.progress(peer) else {
            continue;
        };
        let m = pr.match_index;
        let Some(term) = raft.term_at(m).filter(|_| m > 0) else {
            continue;
        };
        if disk.hard_state().term != raft.term()
            || disk.holds(m, term)
            || disk.repair_through().is_some_and(|r| r >= m)
            || disk.silently_lost().is_some_and(|i| i >= m)
        {
            continue;
        }
        return violation(
            Property::AckedMatchLost,
            format!(
                "n{} counts n{peer} at match ({m},t{term}), which n{peer}'s disk no longer holds (it ends at {:?}) and no repair marker covers",
                raft.id(),
                disk.last()
            ),
        );
    }
    Ok(())
}

/// True when `raft` holds `(index, term)` in its log, or covers `index` by its snapshot.
fn holds(raft: &Raft<SimDisk>, index: Index, term: Term) -> bool {
    index < raft.storage().first_index() || raft.term_at(index) == Some(term)
}

/// A voter whose log lacks `(index, term)` yet is at least as up-to-date as the logs of a quorum
/// of its configuration (itself included), if any. Each node is judged by both its durable log
/// and, when up, its in-memory log; as a voter, by the weaker of the two (a crash may leave it
/// the durable one). A node whose disk holds a pending repair marker (its damaged log was cut)
/// neither campaigns nor votes.
fn electable_without(
    index: Index,
    term: Term,
    rafts: &[Option<&Raft<SimDisk>>],
    disks: &[&SimDisk],
    memberships: &[&Membership],
) -> Option<NodeId> {
    let versions: Vec<Vec<(Term, Index, bool)>> = rafts
        .iter()
        .zip(disks)
        .map(|(raft, disk)| {
            let (durable_index, durable_term) = disk.last();
            let mut v = vec![(durable_term, durable_index, disk.holds(index, term))];
            if let Some(r) = raft {
                v.push((
                    r.term_at(r.last_index()).expect("last entry"),
                    r.last_index(),
                    holds(r, index, term),
                ));
            }
            v
        })
        .collect();
    let weakest: Vec<(Term, Index)> = versions
        .iter()
        .map(|v| {
            v.iter()
                .map(|&(t, i, _)| (t, i))
                .min()
                .expect("one version at least")
        })
        .collect();
    let mute = |k: usize| disks[k].repair_through().is_some();
    for (x, vs) in versions.iter().enumerate() {
        let id = x as NodeId + 1;
        let config = memberships[x];
        if !config.is_voter(id) || mute(x) {
            continue;
        }
        for &(last_term, last_index, holds) in vs {
            if holds {
                continue;
            }
            let votes = 1 + config
                .voters
                .iter()
                .filter(|&&k| {
                    let k = k as usize - 1;
                    k != x && !mute(k) && weakest[k] <= (last_term, last_index)
                })
                .count();
            if votes >= config.quorum() {
                return Some(id);
            }
        }
    }
    None
}
