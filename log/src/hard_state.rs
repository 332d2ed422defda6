//! Raft hard state (current term, voted-for), persisted atomically and durably.
//!
//! The file `hard_state` holds two slots, one per 4 KiB sector. Each save writes the slot not
//! holding the newest state, with a higher sequence number, then fdatasyncs. A crash tears at
//! most the slot being written; load takes the valid slot with the highest sequence, which is
//! either the new state (write completed) or the previous one (write torn): never a mix.
//!
//! Slot layout (little-endian): `0 u32 magic "RLHS"`, `4 u32 crc32c of [8, 40)`, `8 u64 seq`,
//! `16 u64 term`, `24 u64 voted_for`, `32 u64 has_vote (0/1)`. Version 2 (magic "RLH2", written
//! by every save since issue 14) adds `40 u64 repair_through + 1` (0: none) and its crc covers
//! [8, 48); a version-1 slot still loads, with no repair pending.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::aligned_buf::SECTOR_BYTES;
use crate::batch::crc32c;
use crate::dir::sync_dir;
use crate::error::LogError;

const MAGIC_V1: u32 = u32::from_le_bytes(*b"RLHS");
const SLOT_V1_BYTES: usize = 40;
const MAGIC: u32 = u32::from_le_bytes(*b"RLH2");
const SLOT_BYTES: usize = 48;
const FILE_NAME: &str = "hard_state";

/// The Raft state that must survive a crash before any message depending on it is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`, if any.
    pub voted_for: Option<u64>,
}

/// What [`HardStateStore::open`] found in the two slots. A slot that was never written reads
/// as zeros; any other slot that fails its checks is damaged: bit rot or a misdirected write,
/// or a save torn inside its sector (devices write a sector whole or not at all, but the
/// loader does not rely on it: it then loads the older state, which is what a torn save means).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsLoaded {
    /// Nothing damaged (including a store never saved to).
    Intact,
    /// The slot at this index (0 or 1) is damaged; the state came from the other one. The
    /// damaged slot may have held a newer term or vote than the one loaded.
    FellBack {
        /// The damaged slot.
        damaged: usize,
    },
    /// Both slots are damaged: the term, the vote and the repair marker are lost, and the
    /// store loaded the default state. Not a fresh node: its log may hold anything.
    Unreadable,
}

/// The durable home of the hard state, and of the log's repair marker: the log lost durable
/// entries through that index (a damaged tail cut at recovery) and the node has not yet
/// re-fetched them from a leader, so it must not vote or campaign (replicator/DRIVER.md,
/// "Suspect mode"). The marker outlives crashes until cleared.
pub struct HardStateStore {
    file: File,
    path: PathBuf,
    seq: u64,
    /// The last state saved or loaded, rewritten with a new marker.
    hs: HardState,
    repair_through: Option<u64>,
    loaded: SlotsLoaded,
}

fn encode(seq: u64, hs: HardState, repair_through: Option<u64>) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hs.term.to_le_bytes());
    b[24..32].copy_from_slice(&hs.voted_for.unwrap_or(0).to_le_bytes());
    b[32..40].copy_from_slice(&u64::from(hs.voted_for.is_some()).to_le_bytes());
    let repair = repair_through.map_or(0, |i| i.checked_add(1).expect("index below u64::MAX"));
    b[40..48].copy_from_slice(&repair.to_le_bytes());
    let crc = crc32c(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A slot: `(seq, hard state, repair marker)`, if valid (version 1 or 2).
fn decode(b: &[u8]) -> Option<(u64, HardState, Option<u64>)> {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let len = match u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) {
        MAGIC => SLOT_BYTES,
        MAGIC_V1 => SLOT_V1_BYTES,
        _ => return None,
    };
    if b.len() < len || u32::from_le_bytes(b[4..8].try_into().ok()?) != crc32c(&b[8..len]) {
        return None;
    }
    let repair_through = match len {
        SLOT_BYTES => u64_at(40).checked_sub(1),
        _ => None,
    };
    let voted_for = match u64_at(32) {
        0 => None,
        1 => Some(u64_at(24)),
        _ => return None,
    };
    Some((
        u64_at(8),
        HardState {
            term: u64_at(16),
            voted_for,
        },
        repair_through,
    ))
}

impl HardStateStore {
    /// Opens (creating durably if missing) the store in `dir`; returns it with the saved state
    /// (the default — term 0, no vote — if nothing was ever saved).
    pub fn open(dir: &Path) -> Result<(HardStateStore, HardState), LogError> {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        if !existed {
            file.set_len(2 * SECTOR_BYTES as u64)
                .and_then(|()| file.sync_all())
                .and_then(|()| sync_dir(dir))
                .map_err(|e| LogError::io(format!("creating {}", path.display()), e))?;
        }
        let mut data = vec![0u8; 2 * SECTOR_BYTES];
        let n = file
            .read_at(&mut data, 0)
            .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
        data.truncate(n);
        let slots: Vec<_> = [0, SECTOR_BYTES]
            .iter()
            .map(|&at| {
                let bytes = data.get(at..(at + SLOT_BYTES).min(data.len()));
                let never_written = bytes.is_none_or(|b| b.iter().all(|&x| x == 0));
                (bytes.and_then(decode), never_written)
            })
            .collect();
        let damaged: Vec<usize> = (0..2)
            .filter(|&i| slots[i].0.is_none() && !slots[i].1)
            .collect();
        let best = slots
            .iter()
            .filter_map(|(slot, _)| *slot)
            .max_by_key(|&(seq, _, _)| seq);
        let loaded = match (damaged.as_slice(), best) {
            ([], _) => SlotsLoaded::Intact,
            (&[damaged], Some(_)) => SlotsLoaded::FellBack { damaged },
            _ => SlotsLoaded::Unreadable,
        };
        let (seq, hs, repair_through) = best.unwrap_or((0, HardState::default(), None));
        let store = HardStateStore {
            file,
            path,
            seq,
            hs,
            repair_through,
            loaded,
        };
        Ok((store, hs))
    }

    /// What the open found in the slots (damage, and whether the state came from a fallback).
    pub fn loaded(&self) -> SlotsLoaded {
        self.loaded
    }

    /// The persisted repair marker, if a repair is pending.
    pub fn repair_through(&self) -> Option<u64> {
        self.repair_through
    }

    /// Saves `hs` durably (keeping the repair marker); when this returns Ok, a crash cannot
    /// bring back an older state.
    pub fn save(&mut self, hs: HardState) -> Result<(), LogError> {
        self.write(hs, self.repair_through)
    }

    /// Durably sets (`Some`) or clears (`None`) the repair marker, keeping term and vote. Set
    /// it before the node acts on a log that lost durable entries; clear it once the core
    /// reports the log repaired.
    pub fn set_repair_through(&mut self, repair_through: Option<u64>) -> Result<(), LogError> {
        self.write(self.hs, repair_through)
    }

    fn write(&mut self, hs: HardState, repair_through: Option<u64>) -> Result<(), LogError> {
        let seq = self.seq + 1;
        let slot = (seq % 2) * SECTOR_BYTES as u64;
        self.file
            .write_all_at(&encode(seq, hs, repair_through), slot)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| {
                LogError::io(format!("saving hard state to {}", self.path.display()), e)
            })?;
        self.seq = seq;
        self.hs = hs;
        self.repair_through = repair_through;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("raftline-hs-test")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn saved_state_is_loaded_after_reopen() {
        let dir = scratch();
        let (mut store, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(hs, HardState::default());
        for term in 1..=5 {
            store
                .save(HardState {
                    term,
                    voted_for: Some(term * 10),
                })
                .unwrap();
        }
        store
            .save(HardState {
                term: 6,
                voted_for: None,
            })
            .unwrap();
        let (_, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(
            hs,
            HardState {
                term: 6,
                voted_for: None
            }
        );
    }

    #[test]
    fn repair_marker_survives_saves_and_reopens_until_cleared() {
        let dir = scratch();
        let (mut store, _) = HardStateStore::open(dir.path()).unwrap();
        let hs = HardState {
            term: 3,
            voted_for: Some(1),
        };
        store.save(hs).unwrap();
        store.set_repair_through(Some(41)).unwrap();
        store
            .save(HardState {
                term: 4,
                voted_for: None,
            })
            .unwrap();
        let (mut store, loaded) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(loaded.term, 4);
        assert_eq!(store.repair_through(), Some(41), "a later save keeps it");
        store.set_repair_through(Some(0)).unwrap();
        let (mut store, loaded) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(store.repair_through(), Some(0), "index 0 is not 'none'");
        assert_eq!(loaded.term, 4, "the marker keeps term and vote");
        store.set_repair_through(None).unwrap();
        let (store, _) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(store.repair_through(), None);
    }

    #[test]
    fn a_version_1_file_still_loads_with_no_repair_pending() {
        let dir = scratch();
        // Two version-1 slots as the format before issue 14 wrote them (seq 1 and 2).
        let v1 = |seq: u64, term: u64, vote: Option<u64>| {
            let mut b = [0u8; SLOT_V1_BYTES];
            b[0..4].copy_from_slice(&MAGIC_V1.to_le_bytes());
            b[8..16].copy_from_slice(&seq.to_le_bytes());
            b[16..24].copy_from_slice(&term.to_le_bytes());
            b[24..32].copy_from_slice(&vote.unwrap_or(0).to_le_bytes());
            b[32..40].copy_from_slice(&u64::from(vote.is_some()).to_le_bytes());
            let crc = crc32c(&b[8..]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let mut file = vec![0u8; 2 * SECTOR_BYTES];
        file[SECTOR_BYTES..SECTOR_BYTES + SLOT_V1_BYTES].copy_from_slice(&v1(1, 5, None));
        file[..SLOT_V1_BYTES].copy_from_slice(&v1(2, 6, Some(3)));
        std::fs::write(dir.path().join(FILE_NAME), &file).unwrap();
        let (mut store, hs) = HardStateStore::open(dir.path()).unwrap();
        let expect = HardState {
            term: 6,
            voted_for: Some(3),
        };
        assert_eq!(hs, expect);
        assert_eq!(store.repair_through(), None);
        // The next save (version 2, seq 3) wins over the old slots.
        store.set_repair_through(Some(9)).unwrap();
        let (store, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!((hs, store.repair_through()), (expect, Some(9)));
    }

    #[test]
    fn a_write_torn_at_any_byte_yields_the_old_or_the_new_state() {
        let dir = scratch();
        let old = HardState {
            term: 7,
            voted_for: Some(2),
        };
        let new = HardState {
            term: 8,
            voted_for: Some(3),
        };
        let (mut store, _) = HardStateStore::open(dir.path()).unwrap();
        store
            .save(HardState {
                term: 6,
                voted_for: None,
            })
            .unwrap();
        store.save(old).unwrap();
        let path = dir.path().join(FILE_NAME);
        let before = std::fs::read(&path).unwrap();
        store.save(new).unwrap();
        let after = std::fs::read(&path).unwrap();
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert!(!changed.is_empty());
        // Apply any prefix of the changed bytes (a torn write) and also garbage in the new slot.
        for cut in 0..=changed.len() {
            let mut torn = before.clone();
            for &i in &changed[..cut] {
                torn[i] = after[i];
            }
            std::fs::write(&path, &torn).unwrap();
            let (_, hs) = HardStateStore::open(dir.path()).unwrap();
            let expect = if cut == changed.len() { new } else { old };
            assert_eq!(
                hs,
                expect,
                "torn after {cut} of {} changed bytes",
                changed.len()
            );
        }
    }

    fn damage_slot(dir: &Path, slot: usize) {
        let path = dir.join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[slot * SECTOR_BYTES + 20] ^= 0x04;
        std::fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn a_damaged_slot_falls_back_to_the_other_and_says_so() {
        let dir = scratch();
        let (store, _) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(store.loaded(), SlotsLoaded::Intact, "a fresh store");
        let (mut store, _) = HardStateStore::open(dir.path()).unwrap();
        let first = HardState {
            term: 3,
            voted_for: Some(1),
        };
        store.save(first).unwrap();
        let (store, _) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(
            store.loaded(),
            SlotsLoaded::Intact,
            "one slot never written"
        );
        let (mut store, _) = HardStateStore::open(dir.path()).unwrap();
        let second = HardState {
            term: 4,
            voted_for: Some(2),
        };
        store.save(second).unwrap();
        // seq 1 went to slot 1, seq 2 to slot 0: damage the newest.
        damage_slot(dir.path(), 0);
        let (mut store, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(store.loaded(), SlotsLoaded::FellBack { damaged: 0 });
        assert_eq!(hs, first, "the other slot's state");
        // The next save goes over the damaged slot: the store is whole again.
        store.save(second).unwrap();
        let (store, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!((store.loaded(), hs), (SlotsLoaded::Intact, second));
    }

    #[test]
    fn both_slots_damaged_is_unreadable_not_a_fresh_store() {
        let dir = scratch();
        let (mut store, _) = HardStateStore::open(dir.path()).unwrap();
        for term in [5, 6] {
            store
                .save(HardState {
                    term,
                    voted_for: Some(3),
                })
                .unwrap();
        }
        store.set_repair_through(Some(40)).unwrap();
        damage_slot(dir.path(), 0);
        damage_slot(dir.path(), 1);
        let (store, hs) = HardStateStore::open(dir.path()).unwrap();
        assert_eq!(store.loaded(), SlotsLoaded::Unreadable);
        assert_eq!((hs, store.repair_through()), (HardState::default(), None));
    }
}
