//! Recovery: rebuilds the in-memory index from the segment files, cuts a torn tail and reports
//! corruption precisely.
//!
//! Rules (see the torn-write scheme in ARCHITECTURE.md):
//! - Every group starts on a sector boundary and is padded with zeros to the next one; at most
//!   one group is in flight, and it is at most `group_bytes_max` bytes (stored in the segment
//!   header). So a crash can damage only the last `align_up(group_bytes_max)` bytes of the tail.
//! - Tail segment: the first position `p` that is neither a valid batch nor zero padding ends the
//!   log. If a valid batch starts at a sector boundary at or beyond `align_down(p) +
//!   align_up(group_bytes_max)`, acknowledged data follows the damage: corruption. Otherwise the
//!   tail was torn (never acknowledged) and is cut, and its bytes are zeroed on disk so that the
//!   next recovery finds a clean end.
//! - Sealed segments were complete before the next segment was created: anything after the last
//!   valid batch other than zeros is corruption.
//! - A recycled segment (`stale_index_max > 0`) still holds batches of its earlier lives behind
//!   this life's end: a data batch with `index <= stale_index_max` is stale, i.e. not a batch of
//!   this life, and the rules above read "zeros" as "no batch of this life". The torn window
//!   after the end of a recycled tail is zeroed at every open, since stale bytes and pieces of a
//!   torn group cannot be told apart there.
//! - Durability markers (`FLAG_DURABLE_MARK`, at the head of a group once the previous group was
//!   synced) take no index. When the tail is cut at `p`, a marker of this life at a sector
//!   boundary after `p` vouching for the first entry lost there proves that entry was durable
//!   (its group was synced before the marker's group was built): the cut is reported as a
//!   [`DurableLoss`], not taken for a torn write.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::aligned_buf::{align_up, SECTOR_BYTES};
use crate::batch::{check_frame, BatchError, BatchHeader, BATCH_MAGIC, FLAG_TRUNCATE_MARKER};
use crate::error::{CorruptionKind, LogError};
use crate::index::{EntryLoc, LogIndex, SegmentRef};
use crate::segment::{self, segment_path, SegmentHeader, SEGMENT_HEADER_BYTES};

/// Where the writer continues after recovery.
pub(crate) struct Recovered {
    pub index: LogIndex,
    /// Header of the tail segment.
    pub tail: SegmentHeader,
    /// First free (sector-aligned) position in the tail segment.
    pub tail_pos: u64,
    /// Bytes of a torn tail that were cut (0 if none).
    pub torn_bytes_cut: u64,
    /// Durable entries the cut removed, if a marker vouched for them (or damage was cut).
    pub durable_loss: Option<DurableLoss>,
    /// Damage before the torn window that was cut ([`OnDamage::Cut`]).
    pub damage_cut: Option<DamageCut>,
}

/// Entries recovery had to cut although a durability marker on disk says they were durable
/// (and so may have been acknowledged): a flipped bit or a lost write in a synced group, not a
/// torn write. The Raft side must not vote on this log until a leader has repaired it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableLoss {
    /// The first index the log lost (its last index is now `first_lost - 1`).
    pub first_lost: u64,
    /// The highest index a readable marker says was durable.
    pub durable_through: u64,
}

fn corrupt(segment: &Path, position: u64, kind: CorruptionKind) -> LogError {
    LogError::Corrupt {
        segment: segment.to_path_buf(),
        position,
        kind,
    }
}

/// Run by recovery when it found a [`DurableLoss`], before the cut that erases the evidence
/// (the markers go with the damaged bytes) is made: the owner persists what it must remember
/// (the node: its repair marker). An error fails the open, nothing cut.
#[derive(Clone)]
pub struct DurableLossHook(pub Arc<dyn Fn(DurableLoss) -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for DurableLossHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurableLossHook")
    }
}

/// Applies one valid batch (or marker) to the index, checking it continues the log.
fn apply(index: &mut LogIndex, h: &BatchHeader, seq: u64, pos: u64) -> Result<(), String> {
    if h.flags & FLAG_TRUNCATE_MARKER != 0 {
        if h.index > index.next_index || h.index < 1 {
            return Err(format!(
                "truncation marker at index {} beyond next index {}",
                h.index, index.next_index
            ));
        }
        index.truncate_suffix(h.index, h.base_offset, h.term);
        return Ok(());
    }
    if h.index != index.next_index {
        return Err(format!(
            "index {} where {} was expected",
            h.index, index.next_index
        ));
    }
    if h.base_offset != index.next_offset {
        return Err(format!(
            "base offset {} where {} was expected",
            h.base_offset, index.next_offset
        ));
    }
    if h.term < index.last_term {
        return Err(format!("term {} after term {}", h.term, index.last_term));
    }
    index.push(EntryLoc {
        index: h.index,
        term: h.term,
        base_offset: h.base_offset,
        record_count: h.record_count,
        seg: seq,
        pos,
        len: h.total_bytes as u32,
    });
    Ok(())
}

fn frame_error_kind(e: BatchError) -> CorruptionKind {
    match e {
        BatchError::Checksum { expected, actual } => CorruptionKind::Checksum { expected, actual },
        other => CorruptionKind::BadFrame(other.to_string()),
    }
}

/// The batch of this life at the start of `bytes` of segment `seq`: a valid frame that is not
/// stale (a data batch with `index <= stale_index_max`, or a durability marker naming another
/// segment, left from an earlier life of a recycled segment).
fn frame_of_this_life(
    bytes: &[u8],
    seq: u64,
    stale_index_max: u64,
) -> Result<BatchHeader, BatchError> {
    let h = check_frame(bytes)?;
    let stale = if h.is_durable_mark() {
        h.base_offset != seq
    } else {
        h.flags & FLAG_TRUNCATE_MARKER == 0 && h.index <= stale_index_max
    };
    if stale {
        return Err(BatchError::BadHeader("stale batch of a recycled segment"));
    }
    Ok(h)
}

/// True if a batch of this life starts at some sector boundary in `data[from..]`.
fn valid_batch_at_or_after(data: &[u8], from: usize, seq: u64, stale_index_max: u64) -> bool {
    (from..data.len())
        .step_by(SECTOR_BYTES)
        .any(|q| frame_of_this_life(&data[q..], seq, stale_index_max).is_ok())
}

/// Classifies a cut of the tail segment at `p`, where the log lost the entries from
/// `first_lost`: if a durability marker of this life at a sector boundary from `p` on (at `p`
/// itself only when it is out of sequence; before `torn_limit`: beyond it any batch is
/// corruption) vouches for `first_lost`, the cut removed durable entries. Markers only ever
/// start a group, so one after the damage was built after the damaged group was synced.
fn durable_loss(
    data: &[u8],
    p: usize,
    torn_limit: usize,
    seq: u64,
    first_lost: u64,
) -> Option<DurableLoss> {
    let from = align_up(p as u64) as usize;
    let durable_through = (from..torn_limit.min(data.len()))
        .step_by(SECTOR_BYTES)
        .filter_map(|q| frame_of_this_life(&data[q..], seq, 0).ok())
        .filter(|h| h.is_durable_mark())
        .map(|h| h.index)
        .max()?;
    (first_lost <= durable_through).then_some(DurableLoss {
        first_lost,
        durable_through,
    })
}

/// What recovery does with damage it cannot take for a torn write (anything wrong in a sealed
/// segment, or a valid batch of this life after the torn window of the tail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDamage {
    /// Refuse to open: `LogError::Corrupt` (an owner that cannot repair from peers).
    #[default]
    Refuse,
    /// Cut the log at the damage (the damaged segment's rest zeroed, every later segment
    /// deleted) and report it in [`Log::damage_cut`](crate::Log::damage_cut): the owner
    /// re-fetches the lost entries from a peer (the node: suspect mode, replicator/DRIVER.md).
    /// The durable loss hook runs before anything is cut.
    Cut,
}

/// Damage before the torn window that recovery cut ([`OnDamage::Cut`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamageCut {
    /// The segment file holding the damage.
    pub segment: PathBuf,
    /// Byte position of the damage in it (0: its header).
    pub position: u64,
    /// What was wrong there.
    pub kind: CorruptionKind,
    /// The first index the log lost (its last index is now `first_lost - 1`).
    pub first_lost: u64,
    /// The highest index any readable batch or marker at or after the damage named
    /// (`first_lost - 1` if none): the log held entries through here.
    pub last_lost: u64,
    /// Later segments deleted with it.
    pub segments_removed: usize,
}

/// Damage found while scanning segment `seqs[at]`: at byte `position` (0: the header, in which
/// case the log ends with the previous segment).
struct Damage {
    at: usize,
    position: usize,
    kind: CorruptionKind,
}

/// Reads all segments `seqs` (ascending, non-empty) of `dir` and rebuilds the index.
/// `on_loss` runs before a cut of durable entries is made.
pub(crate) fn recover(
    dir: &Path,
    seqs: &[u64],
    on_loss: Option<&DurableLossHook>,
    on_damage: OnDamage,
) -> Result<Recovered, LogError> {
    assert!(!seqs.is_empty(), "recover needs at least one segment");
    let seqs = skip_before_restart(dir, seqs)?;
    let seqs = &seqs[..];
    let mut index: Option<LogIndex> = None;
    let mut torn_bytes_cut = 0;
    let mut loss = None;
    // The last segment scanned whole: its header and where its content ends.
    let mut tail: Option<(SegmentHeader, u64)> = None;
    let mut damage = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let is_tail = i + 1 == seqs.len();
        let file = File::open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        let data = std::fs::read(&path)
            .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
        let header = match check_segment_header(&data, seq, index.as_ref()) {
            Ok(header) => header,
            Err(kind) => {
                damage = Some(Damage {
                    at: i,
                    position: 0,
                    kind,
                });
                break;
            }
        };
        let idx = index.get_or_insert_with(|| {
            LogIndex::starting_at(header.base_index, header.base_offset, header.prev_term)
        });
        let stale = header.stale_index_max;
        let mut seg_ref = SegmentRef::new(seq, Arc::new(file), stale);
        let mut pos = SEGMENT_HEADER_BYTES as usize;
        let failure = loop {
            if pos >= data.len() {
                break None;
            }
            match frame_of_this_life(&data[pos..], seq, stale) {
                // Everything before a marker was durable when it was written: it names exactly
                // the last index before it. One naming a later index follows synced groups
                // that read as zeros (a lost write): the log ends there.
                Ok(h) if h.is_durable_mark() && h.index + 1 != idx.next_index => {
                    break Some((
                        pos,
                        BatchError::BadHeader("durability marker out of sequence"),
                    ));
                }
                Ok(h) if h.is_durable_mark() => pos += h.total_bytes,
                Ok(h) => {
                    if let Err(why) = apply(idx, &h, seq, pos as u64) {
                        damage = Some(Damage {
                            at: i,
                            position: pos,
                            kind: CorruptionKind::Sequence(why),
                        });
                        break None;
                    }
                    seg_ref.note_written(h.index, h.flags & FLAG_TRUNCATE_MARKER != 0);
                    pos += h.total_bytes;
                }
                Err(e) => {
                    let sector_end = (align_up(pos as u64) as usize).min(data.len());
                    if pos % SECTOR_BYTES != 0 && data[pos..sector_end].iter().all(|&b| b == 0) {
                        pos = sector_end;
                    } else {
                        break Some((pos, e));
                    }
                }
            }
        };
        idx.segments.push_back(seg_ref);
        if let Some(d) = &damage {
            tail = Some((header, align_up(d.position as u64)));
            break;
        }
        let Some((p, err)) = failure else {
            tail = Some((header, data.len() as u64));
            continue;
        };
        let torn_limit = p - p % SECTOR_BYTES + align_up(header.group_bytes_max) as usize;
        let damaged_at = |kind| Damage {
            at: i,
            position: p,
            kind,
        };
        if stale > 0 {
            // Recycled: no batch of this life may follow the end (a sealed segment's end is at a
            // sector boundary, after its last group's padding).
            let from = if is_tail { torn_limit } else { p };
            if valid_batch_at_or_after(&data, from, seq, stale)
                || (!is_tail && p % SECTOR_BYTES != 0)
            {
                damage = Some(damaged_at(frame_error_kind(err)));
                tail = Some((header, align_up(p as u64)));
                break;
            }
            if is_tail {
                loss = durable_loss(&data, p, torn_limit, seq, idx.next_index);
                report_loss(&path, p, loss, on_loss)?;
                torn_bytes_cut = cut_recycled_tail(&path, &data, p, torn_limit, stale, &err)?;
            }
            tail = Some((header, align_up(p as u64)));
            continue;
        }
        let rest_is_zero = data[p..].iter().all(|&b| b == 0);
        if rest_is_zero && p % SECTOR_BYTES == 0 {
            tail = Some((header, p as u64));
            continue;
        }
        if !is_tail || valid_batch_at_or_after(&data, torn_limit, seq, 0) {
            damage = Some(damaged_at(frame_error_kind(err)));
            tail = Some((header, align_up(p as u64)));
            break;
        }
        loss = durable_loss(&data, p, torn_limit, seq, idx.next_index);
        report_loss(&path, p, loss, on_loss)?;
        let last_nonzero = data
            .iter()
            .rposition(|&b| b != 0)
            .expect("rest is not zero");
        let zero_to = align_up(last_nonzero as u64 + 1) as usize;
        tracing::warn!(
            segment = %path.display(), position = p, bytes = zero_to - p, reason = %err,
            "cutting a torn or damaged tail"
        );
        zero_range(&path, &data, p, zero_to)?;
        torn_bytes_cut = (zero_to - p) as u64;
        tail = Some((header, align_up(p as u64)));
    }
    let mut damage_cut = None;
    if let Some(d) = damage {
        let path = segment_path(dir, seqs[d.at]);
        let (Some(idx), OnDamage::Cut) = (index.as_mut(), on_damage) else {
            return Err(corrupt(&path, d.position as u64, d.kind));
        };
        // The tail is the damaged segment, cut at the damage, or (header damage) the one before.
        let cut = cut_damage(dir, seqs, d, idx, on_loss)?;
        loss = (cut.last_lost >= cut.first_lost).then_some(DurableLoss {
            first_lost: cut.first_lost,
            durable_through: cut.last_lost,
        });
        damage_cut = Some(cut);
    }
    let (tail, tail_pos) = tail.expect("at least one segment");
    Ok(Recovered {
        index: index.expect("at least one segment"),
        tail,
        tail_pos,
        torn_bytes_cut,
        durable_loss: loss,
        damage_cut,
    })
}

/// Checks segment `seq`'s header: readable, naming this file, and continuing the log `index`
/// has read so far (none: the first segment).
fn check_segment_header(
    data: &[u8],
    seq: u64,
    index: Option<&LogIndex>,
) -> Result<SegmentHeader, CorruptionKind> {
    let header = SegmentHeader::decode(data).map_err(CorruptionKind::SegmentHeader)?;
    if header.seq != seq || header.segment_bytes != data.len() as u64 {
        return Err(CorruptionKind::SegmentHeader(format!(
            "header says seq {} of {} bytes, file is seq {seq} of {} bytes",
            header.seq,
            header.segment_bytes,
            data.len()
        )));
    }
    if let Some(idx) = index {
        if (header.base_index, header.base_offset, header.prev_term)
            != (idx.next_index, idx.next_offset, idx.last_term)
        {
            return Err(CorruptionKind::SegmentHeader(format!(
                "segment starts at index {} offset {} term {}, previous segment ends at index {} offset {} term {}",
                header.base_index, header.base_offset, header.prev_term, idx.next_index, idx.next_offset, idx.last_term
            )));
        }
    }
    Ok(header)
}

/// The highest index named by a batch or durability marker of this life starting anywhere in
/// `data[from..]` (truncation markers name where a cut starts, not what was held).
fn highest_index(data: &[u8], from: usize, seq: u64, stale_index_max: u64) -> Option<u64> {
    (from..data.len().saturating_sub(BATCH_MAGIC.len() - 1))
        .filter(|&q| data[q..q + BATCH_MAGIC.len()] == BATCH_MAGIC)
        .filter_map(|q| frame_of_this_life(&data[q..], seq, stale_index_max).ok())
        .filter(|h| h.flags & FLAG_TRUNCATE_MARKER == 0)
        .map(|h| h.index)
        .max()
}

/// Cuts the log at damage `d` ([`OnDamage::Cut`]), `idx` holding what precedes it. Crash-safe
/// in any order of its steps, since the next open meets the same damage first and cuts again:
/// the owner's hook persists the loss first (before any evidence goes), then the later
/// segments are deleted, newest first (a crash leaves a shorter run of them), then the rest of
/// the damaged segment is zeroed durably.
fn cut_damage(
    dir: &Path,
    seqs: &[u64],
    d: Damage,
    idx: &LogIndex,
    on_loss: Option<&DurableLossHook>,
) -> Result<DamageCut, LogError> {
    let path = segment_path(dir, seqs[d.at]);
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| LogError::io(format!("reading {}", p.display()), e))
    };
    let first_lost = idx.next_index;
    let mut last_lost = first_lost - 1;
    for (k, &seq) in seqs[d.at..].iter().enumerate() {
        let data = read(&segment_path(dir, seq))?;
        let Ok(header) = SegmentHeader::decode(&data) else {
            continue;
        };
        let from = if k == 0 { d.position } else { 0 }.max(SEGMENT_HEADER_BYTES as usize);
        let highest = highest_index(&data, from, seq, header.stale_index_max);
        last_lost = last_lost.max(highest.unwrap_or(0));
    }
    let removed = if d.position == 0 {
        &seqs[d.at..]
    } else {
        &seqs[d.at + 1..]
    };
    tracing::error!(
        segment = %path.display(), position = d.position, reason = %d.kind, first_lost, last_lost,
        later_segments = removed.len(),
        "log damaged before its tail: cutting it at index {first_lost}; entries through {last_lost} are to be re-fetched from a peer"
    );
    let loss = (last_lost >= first_lost).then_some(DurableLoss {
        first_lost,
        durable_through: last_lost,
    });
    run_loss_hook(loss, on_loss)?;
    for &seq in removed.iter().rev() {
        segment::remove_segments(dir, &[seq])
            .map_err(|e| LogError::io("deleting segments after damage", e))?;
    }
    if d.position > 0 {
        let data = read(&path)?;
        if let Some(last_nonzero) = data[d.position..].iter().rposition(|&b| b != 0) {
            let zero_to = align_up((d.position + last_nonzero + 1) as u64) as usize;
            zero_range(&path, &data, d.position, zero_to)?;
        }
    }
    Ok(DamageCut {
        segment: path,
        position: d.position as u64,
        kind: d.kind,
        first_lost,
        last_lost,
        segments_removed: removed.len(),
    })
}

/// Lets the owner persist a loss before the cut that erases its evidence.
fn run_loss_hook(
    loss: Option<DurableLoss>,
    on_loss: Option<&DurableLossHook>,
) -> Result<(), LogError> {
    match (loss, on_loss) {
        (Some(l), Some(hook)) => (hook.0)(l).map_err(|why| {
            LogError::io(
                "persisting a durable loss before cutting it",
                std::io::Error::other(why),
            )
        }),
        _ => Ok(()),
    }
}

/// Says loudly that a cut is about to remove durable entries (the torn-tail warning follows)
/// and lets the owner persist it first.
fn report_loss(
    path: &Path,
    p: usize,
    loss: Option<DurableLoss>,
    on_loss: Option<&DurableLossHook>,
) -> Result<(), LogError> {
    let Some(l) = loss else {
        return Ok(());
    };
    tracing::error!(
        segment = %path.display(), position = p, first_lost = l.first_lost,
        durable_through = l.durable_through,
        "log tail damaged inside synced groups: entries from index {} lost, durable through {}",
        l.first_lost, l.durable_through
    );
    run_loss_hook(loss, on_loss)
}

/// Zeroes the window after the end `p` of a recycled tail in which a torn last group could have
/// left pieces of itself among the stale bytes; returns the torn bytes cut (0 if the end is a
/// clean one: a zero sector or a stale batch at a sector boundary).
fn cut_recycled_tail(
    path: &PathBuf,
    data: &[u8],
    p: usize,
    torn_limit: usize,
    stale_index_max: u64,
    err: &BatchError,
) -> Result<u64, LogError> {
    let to = torn_limit.min(data.len());
    let at_p = &data[p..(p + SECTOR_BYTES).min(data.len())];
    let clean = p % SECTOR_BYTES == 0
        && (at_p.iter().all(|&b| b == 0)
            || check_frame(&data[p..]).is_ok_and(|h| h.index <= stale_index_max));
    if data[p..to].iter().any(|&b| b != 0) {
        zero_range(path, data, p, to)?;
    }
    if clean {
        return Ok(0);
    }
    tracing::warn!(
        segment = %path.display(), position = p, bytes = to - p, reason = %err,
        "cutting a torn or damaged tail of a recycled segment"
    );
    Ok((to - p) as u64)
}

/// Drops (and deletes) the segments before the last restart segment: a crash after a restart
/// segment was installed may have left them behind.
fn skip_before_restart(dir: &Path, seqs: &[u64]) -> Result<Vec<u64>, LogError> {
    let mut restart_at = 0;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let mut first_sector = vec![0u8; SECTOR_BYTES];
        let file = File::open(&path)
            .map_err(|e| LogError::io(format!("opening {}", path.display()), e))?;
        let n = file
            .read_at(&mut first_sector, 0)
            .map_err(|e| LogError::io(format!("reading {}", path.display()), e))?;
        if SegmentHeader::decode(&first_sector[..n]).is_ok_and(|h| h.restart) {
            restart_at = i;
        }
    }
    segment::remove_segments(dir, &seqs[..restart_at])
        .map_err(|e| LogError::io("deleting segments obsolete after a restart", e))?;
    Ok(seqs[restart_at..].to_vec())
}

/// Durably overwrites `[from, to)` of the segment with zeros, keeping the bytes before `from` in
/// its first sector (they belong to the torn, never-acknowledged group).
fn zero_range(path: &PathBuf, data: &[u8], from: usize, to: usize) -> Result<(), LogError> {
    let start = from - from % SECTOR_BYTES;
    let mut bytes = data[start..from].to_vec();
    bytes.resize(to - start, 0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| {
            LogError::io(
                format!("opening {} to cut its torn tail", path.display()),
                e,
            )
        })?;
    file.write_all_at(&bytes, start as u64)
        .and_then(|()| file.sync_data())
        .map_err(|e| LogError::io(format!("zeroing the torn tail of {}", path.display()), e))
}
