//! Damage a node finds in its own storage at start, and how it gets back to a state it can
//! vouch for instead of refusing to start (issue 14; tools/node/README.md, "Repair instead of
//! refusal"). Each repair leaves the node in suspect mode until a leader has given back what it
//! may have lost (replicator/DRIVER.md, "Suspect mode"), except a snapshot the local log
//! replaces: the repair marker is persisted before anything the node held is given up.

use raftline_log::{HardState, HardStateStore, Log, LogError, SlotsLoaded};

/// What was repaired at start (the `kind` label of `raftline_log_repairs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Repair {
    /// A damaged log tail cut although durability markers vouched for it (item 1): the lost
    /// entries are re-fetched from the leader.
    LogTail,
    /// Damage before the tail (a sealed segment): the log was cut there and everything after
    /// it is re-fetched from the leader (or its snapshot).
    LogRange,
    /// A snapshot file failed its checksum and was dropped: an older snapshot or the log took
    /// its place, or the log was emptied and the leader sends its snapshot.
    Snapshot,
    /// One hard-state slot was damaged: the other one was loaded.
    HardStateSlot,
    /// Both hard-state slots were damaged: the term is learnt from the leader.
    HardState,
}

impl Repair {
    /// Every kind, in label order (each is exported, 0 included).
    pub const ALL: [Repair; 5] = [
        Repair::HardState,
        Repair::HardStateSlot,
        Repair::LogRange,
        Repair::LogTail,
        Repair::Snapshot,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Repair::LogTail => "log_tail",
            Repair::LogRange => "log_range",
            Repair::Snapshot => "snapshot",
            Repair::HardStateSlot => "hard_state_slot",
            Repair::HardState => "hard_state",
        }
    }
}

/// The repair marker a log that gave up everything through `last_index` needs: at least 1,
/// since a marker of 0 would read as "none pending" in the gauges.
fn marker_for(store: &HardStateStore, last_index: u64) -> u64 {
    store
        .repair_through()
        .map_or(last_index, |p| p.max(last_index))
        .max(1)
}

/// A damaged hard-state slot. The damaged slot may have held a newer term and vote than the
/// one loaded (or, with both damaged, nothing is known), so the node could vote twice in a
/// term: it starts at the higher of the loaded term and its log's last term, votes for nobody
/// until it follows a leader (suspect mode, the marker persisted here), and then records a
/// vote for that leader in that term (`Raft::ready`). Returns the repair, if any.
pub(crate) fn hard_state_damage(
    store: &mut HardStateStore,
    saved: &mut HardState,
    log: &Log,
) -> Result<Option<Repair>, LogError> {
    let repair = match store.loaded() {
        SlotsLoaded::Intact => return Ok(None),
        SlotsLoaded::FellBack { .. } => Repair::HardStateSlot,
        SlotsLoaded::Unreadable => Repair::HardState,
    };
    let last_index = log.last_index();
    let log_term = log.term_at(last_index).unwrap_or(0);
    let through = marker_for(store, last_index);
    store.set_repair_through(Some(through))?;
    if log_term > saved.term {
        *saved = HardState {
            term: log_term,
            voted_for: None,
        };
        store.save(*saved)?;
    }
    match store.loaded() {
        SlotsLoaded::FellBack { damaged } => tracing::warn!(
            damaged_slot = damaged, term = saved.term, vote = ?saved.voted_for,
            repair_through = through,
            "hard state slot {damaged} is damaged: using the other slot; not voting until the current leader is known (the damaged slot may have held a newer vote)"
        ),
        _ => tracing::error!(
            term = saved.term, repair_through = through,
            "both hard state slots are damaged: term and vote lost; starting at the log's last term {} and not voting until the current leader is known",
            saved.term
        ),
    }
    Ok(Some(repair))
}

/// Every snapshot the log could continue from was corrupt: the log from its first index has no
/// base state, so it is emptied and the node gets the leader's snapshot (or its whole log).
/// Entries it held through its last index may have been acknowledged by it: the marker is
/// persisted before the log goes.
pub(crate) fn empty_log_for_a_peer_snapshot(
    store: &mut HardStateStore,
    log: &Log,
) -> Result<(), LogError> {
    let through = marker_for(store, log.last_index());
    store.set_repair_through(Some(through))?;
    tracing::error!(
        first_index = log.first_index(),
        last_index = log.last_index(),
        repair_through = through,
        "no snapshot under the log's start survived: emptying the log to get the leader's snapshot; not voting until repaired"
    );
    log.restart_after_snapshot(0, 0, 0)?.wait()?;
    Ok(())
}
