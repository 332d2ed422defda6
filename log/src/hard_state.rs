//! Raft hard state (current term, voted-for), persisted atomically and durably.
//!
//! The file `hard_state` holds two slots, one per 4 KiB sector. Each save writes the slot not
//! holding the newest state, with a higher sequence number, then fdatasyncs. A crash tears at
//! most the slot being written; load takes the valid slot with the highest sequence, which is
//! either the new state (write completed) or the previous one (write torn): never a mix.
//!
//! Slot layout (little-endian): `0 u32 magic "RLHS"`, `4 u32 crc32c of [8, 40)`, `8 u64 seq`,
//! `16 u64 term`, `24 u64 voted_for`, `32 u64 has_vote (0/1)`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::aligned_buf::SECTOR_BYTES;
use crate::batch::crc32c;
use crate::dir::sync_dir;
use crate::error::LogError;

const MAGIC: u32 = u32::from_le_bytes(*b"RLHS");
const SLOT_BYTES: usize = 40;
const FILE_NAME: &str = "hard_state";

/// The Raft state that must survive a crash before any message depending on it is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term`, if any.
    pub voted_for: Option<u64>,
}

/// The durable home of the hard state.
pub struct HardStateStore {
    file: File,
    path: PathBuf,
    seq: u64,
}

fn encode(seq: u64, hs: HardState) -> [u8; SLOT_BYTES] {
    let mut b = [0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&hs.term.to_le_bytes());
    b[24..32].copy_from_slice(&hs.voted_for.unwrap_or(0).to_le_bytes());
    b[32..40].copy_from_slice(&u64::from(hs.voted_for.is_some()).to_le_bytes());
    let crc = crc32c(&b[8..]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u64, HardState)> {
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    if b.len() < SLOT_BYTES || u32::from_le_bytes(b[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    if u32::from_le_bytes(b[4..8].try_into().ok()?) != crc32c(&b[8..SLOT_BYTES]) {
        return None;
    }
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
        let best = [0, SECTOR_BYTES]
            .iter()
            .filter_map(|&at| data.get(at..at + SLOT_BYTES).and_then(decode))
            .max_by_key(|&(seq, _)| seq);
        let (seq, hs) = best.unwrap_or((0, HardState::default()));
        Ok((HardStateStore { file, path, seq }, hs))
    }

    /// Saves `hs` durably; when this returns Ok, a crash cannot bring back an older state.
    pub fn save(&mut self, hs: HardState) -> Result<(), LogError> {
        let seq = self.seq + 1;
        let slot = (seq % 2) * SECTOR_BYTES as u64;
        self.file
            .write_all_at(&encode(seq, hs), slot)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| {
                LogError::io(format!("saving hard state to {}", self.path.display()), e)
            })?;
        self.seq = seq;
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
}
