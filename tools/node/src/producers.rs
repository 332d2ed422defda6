//! Idempotent producers: the dedup state, derived from the committed log.
//!
//! A batch of an idempotent producer carries its producer id, epoch and base sequence
//! (`raftline_log::ProducerSeq`: a native batch's producer block, a Kafka batch's header). Per
//! producer the node keeps its epoch and the sequence ranges of its last [`BATCHES_KEPT`]
//! batches with the offsets they got. The leader judges every batch before proposing it
//! ([`Producers::judge`]):
//!
//! - the next batch of the producer's sequence (or the first one, sequence 0, of a producer or
//!   of a newer epoch) is proposed;
//! - a batch with the exact sequence range of one of the last [`BATCHES_KEPT`] is a duplicate:
//!   it is answered with the original's offsets (once the original is committed), never stored
//!   again;
//! - any other sequence is a gap (`OutOfOrder`), an older epoch is stale (`StaleEpoch`), and a
//!   producer the table does not hold with a sequence other than 0 is `UnknownProducer` (it
//!   was evicted, or never existed).
//!
//! **Derived from the log.** The table ([`ProducerTable`]) is changed only by committed entries,
//! in log order, with one rule ([`ProducerTable::apply`]), so it is the same on every node at the
//! same index; it is written into every snapshot (a section of its own, see `state.rs`) and
//! rebuilt on restart from the snapshot plus the committed log after it. Entries a follower's
//! log replaces were never committed, so they never touched the table: nothing to roll back.
//!
//! **In flight.** The leader also judges against its own proposals not yet applied (the
//! overlay), so a resend that races its original (still uncommitted) is caught. Entries of
//! earlier terms in a new leader's log are not in its overlay: until it has applied every entry
//! of an earlier term (the barrier; its own no-op and configuration entries, such as the
//! incarnations it records, carry no batches), it answers idempotent batches `NotReady`
//! (retriable, not stored), which is short: its no-op commits with its first round trip. So
//! the leader's view is always exactly its log before the proposal, the view every node has
//! when that entry is applied: the proposal-time check and the apply agree.
//!
//! **Bound.** At most [`PRODUCERS_MAX`] producers, the same on every node (the table is part of
//! the replicated state, so the bound is a constant, not a flag). When a committed batch of a
//! producer not in the table would exceed it, the producer whose last batch has the lowest
//! offset (the least recently written) is evicted. A later batch of an evicted producer gets
//! `UnknownProducer` unless it starts a sequence at 0.
//!
//! **Producer ids** ([`ProducerIds`]) are handed out by any node without a round of
//! coordination (clients ask whichever broker they like, not the leader): `node_id << 48 |
//! block << 24 | n`. The node bits keep nodes apart; a node claims a block durably (the
//! `producer-ids` file in its data directory holds the next unclaimed block, written with
//! fsync, rename and a directory fsync) at every start and whenever it used up 2^24 ids, before
//! it hands out any id of it, so no id is handed out twice across restarts either. What this
//! relies on is what Raft itself relies on: a node's data directory is never lost and reused
//! under the same node id. Ids stay positive i64 (Kafka's type): node ids up to 2^15 - 1.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use raftline_log::batch::{entry_batches, parse_header, producer_of};
use raftline_log::{Batch, BatchError, ProducerSeq};
use raftline_replicator::{Index, Term};

/// Producers the table holds at most (the least recently written is evicted beyond it).
pub const PRODUCERS_MAX: usize = 10_000;
/// Batches remembered per producer: a resend of any of them is recognised (producers keep at
/// most this many unanswered: the protocol's constant, also Kafka's).
pub const BATCHES_KEPT: usize = raftline_netio::client_proto::PRODUCER_BATCHES_KEPT;

/// The sequence number after `count` records from `base` (Kafka's rule: after `i32::MAX` comes
/// 0).
fn seq_add(base: i32, count: u64) -> i32 {
    ((base as u64 + count) % (i32::MAX as u64 + 1)) as i32
}

/// One batch of a producer as judged and applied: its producer and sequence range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The producer.
    pub producer_id: u64,
    /// Its epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
}

impl ProducerBatch {
    fn of(seq: ProducerSeq, record_count: u32) -> ProducerBatch {
        ProducerBatch {
            producer_id: seq.producer_id,
            epoch: seq.epoch,
            first_seq: seq.base_sequence,
            last_seq: seq_add(seq.base_sequence, u64::from(record_count.max(1)) - 1),
        }
    }

    /// The producer batch of a validated data batch (`None`: not an idempotent producer's).
    pub fn of_batch(batch: &Batch) -> Option<ProducerBatch> {
        Some(ProducerBatch::of(
            batch.producer()?,
            batch.header().record_count,
        ))
    }
}

/// Where a producer's batch was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// Index of its entry while it is in flight on this leader; 0 once committed (a batch of
    /// the table).
    pub index: Index,
    /// Term of its entry (0 with index 0).
    pub term: Term,
}

/// What the table knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    epoch: i16,
    /// Its last batches, oldest first, at most [`BATCHES_KEPT`], never empty.
    batches: VecDeque<Placed>,
}

impl Producer {
    /// The producer's current epoch.
    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The deterministic change a stored batch makes: a newer epoch starts over, an older one
    /// changes nothing (a correct leader never stores one), the same epoch remembers it.
    fn record(&mut self, epoch: i16, placed: Placed) {
        if epoch < self.epoch {
            return;
        }
        if epoch > self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
        if self.batches.len() == BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(placed);
    }

    fn last_offset(&self) -> u64 {
        self.batches.back().expect("never empty").last_offset
    }
}

/// The leader's judgement of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not an idempotent producer's batch, or its next one: propose it.
    Fresh,
    /// A resend of a batch stored at `Placed` (committed, or in flight on this leader).
    Duplicate(Placed),
    /// A resend of the batch at this position of the same proposal.
    SameAs(usize),
    /// The sequence does not continue the producer's: not stored.
    OutOfOrder {
        /// The producer.
        producer_id: u64,
        /// The sequence expected next (-1: a new epoch must start at 0).
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// The producer has moved to a newer epoch: this one is fenced.
    StaleEpoch {
        /// The producer.
        producer_id: u64,
        /// Its current epoch.
        current: i16,
        /// The batch's epoch.
        got: i16,
    },
    /// The table does not hold the producer (evicted, or never existed) and the batch does not
    /// start a sequence.
    UnknownProducer {
        /// The producer.
        producer_id: u64,
    },
    /// This leader has not applied the entries of earlier terms in its log yet; retry.
    NotReady,
}

/// How a batch relates to a producer's known state.
fn judge_one(known: Option<&Producer>, b: &ProducerBatch) -> Verdict {
    let Some(p) = known else {
        return if b.first_seq == 0 {
            Verdict::Fresh
        } else {
            Verdict::UnknownProducer {
                producer_id: b.producer_id,
            }
        };
    };
    if b.epoch < p.epoch {
        return Verdict::StaleEpoch {
            producer_id: b.producer_id,
            current: p.epoch,
            got: b.epoch,
        };
    }
    if b.epoch > p.epoch {
        return if b.first_seq == 0 {
            Verdict::Fresh
        } else {
            Verdict::OutOfOrder {
                producer_id: b.producer_id,
                expected: -1,
                got: b.first_seq,
            }
        };
    }
    if let Some(original) = p
        .batches
        .iter()
        .find(|o| (o.first_seq, o.last_seq) == (b.first_seq, b.last_seq))
    {
        return Verdict::Duplicate(*original);
    }
    let expected = seq_add(p.batches.back().expect("never empty").last_seq, 1);
    if b.first_seq == expected {
        Verdict::Fresh
    } else {
        Verdict::OutOfOrder {
            producer_id: b.producer_id,
            expected,
            got: b.first_seq,
        }
    }
}

/// The committed dedup state: what every node holds at the same applied index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<u64, Producer>,
    /// Producer by the offset of its last batch (unique): the eviction order.
    by_recency: BTreeMap<u64, u64>,
}

impl ProducerTable {
    /// Producers held.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is held.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// What the table knows of `producer_id`.
    pub fn get(&self, producer_id: u64) -> Option<&Producer> {
        self.producers.get(&producer_id)
    }

    /// Records a committed batch (in log order): the one rule every node applies.
    pub fn apply(&mut self, b: &ProducerBatch, placed: Placed) {
        if let Some(p) = self.producers.get_mut(&b.producer_id) {
            let before = p.last_offset();
            p.record(b.epoch, placed);
            let after = p.last_offset();
            if after != before {
                self.by_recency.remove(&before);
                self.by_recency.insert(after, b.producer_id);
            }
            return;
        }
        if self.producers.len() >= PRODUCERS_MAX {
            let (_, evicted) = self.by_recency.pop_first().expect("a full table");
            self.producers.remove(&evicted);
        }
        let p = Producer {
            epoch: b.epoch,
            batches: VecDeque::from([placed]),
        };
        self.by_recency.insert(p.last_offset(), b.producer_id);
        self.producers.insert(b.producer_id, p);
    }

    /// Applies every idempotent producer's batch of a committed entry. The table's batches
    /// carry index 0: they are committed, and a node's table must not depend on which entries
    /// it applied one by one and which it restored from a snapshot.
    pub fn apply_entry(&mut self, bytes: &[u8]) -> Result<(), BatchError> {
        for_each_producer_batch(bytes, |b, base_offset, last_offset| {
            self.apply(&b, placed(&b, base_offset, last_offset, 0, 0))
        })
    }

    /// Appends the table's snapshot section: `u32 producers`, then per producer (in id order)
    /// `u64 id, i16 epoch, u8 batches`, and per batch (oldest first) `i32 first_seq,
    /// i32 last_seq, u64 base_offset, u64 last_offset`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        let mut ids: Vec<&u64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let p = &self.producers[id];
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&p.epoch.to_le_bytes());
            out.push(p.batches.len() as u8);
            for b in &p.batches {
                out.extend_from_slice(&b.first_seq.to_le_bytes());
                out.extend_from_slice(&b.last_seq.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
    }

    /// Reads a section written by [`ProducerTable::encode`] from the start of `bytes`; returns
    /// the table and the bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(ProducerTable, usize), &'static str> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], &'static str> {
            let s = bytes.get(at..at + n).ok_or("truncated producer table")?;
            at += n;
            Ok(s)
        };
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        if count > PRODUCERS_MAX {
            return Err("more producers than the bound");
        }
        let mut table = ProducerTable::default();
        for _ in 0..count {
            let id = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let epoch = i16::from_le_bytes(take(2)?.try_into().expect("2 bytes"));
            let n = take(1)?[0] as usize;
            if n == 0 || n > BATCHES_KEPT {
                return Err("a producer with no batch or more than kept");
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let b = take(24)?;
                let i32_at = |at: usize| i32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
                let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
                batches.push_back(Placed {
                    first_seq: i32_at(0),
                    last_seq: i32_at(4),
                    base_offset: u64_at(8),
                    last_offset: u64_at(16),
                    index: 0,
                    term: 0,
                });
            }
            let p = Producer { epoch, batches };
            if table.by_recency.insert(p.last_offset(), id).is_some()
                || table.producers.insert(id, p).is_some()
            {
                return Err("two producers with the same id or last offset");
            }
        }
        Ok((table, at))
    }
}

fn placed(
    b: &ProducerBatch,
    base_offset: u64,
    last_offset: u64,
    index: Index,
    term: Term,
) -> Placed {
    Placed {
        first_seq: b.first_seq,
        last_seq: b.last_seq,
        base_offset,
        last_offset,
        index,
        term,
    }
}

/// Calls `visit(batch, base_offset, last_offset)` for every idempotent producer's data batch of
/// an entry's bytes (verified where they entered this node), in order.
fn for_each_producer_batch(
    bytes: &[u8],
    mut visit: impl FnMut(ProducerBatch, u64, u64),
) -> Result<(), BatchError> {
    let outer = parse_header(bytes)?;
    if !outer.is_data() && !outer.is_run() {
        return Ok(()); // a no-op or configuration entry
    }
    for batch in entry_batches(bytes) {
        let (h, range) = batch?;
        if let Some(seq) = producer_of(&h, &bytes[range]) {
            let last_offset = h.next_offset() - 1;
            visit(
                ProducerBatch::of(seq, h.record_count),
                h.base_offset,
                last_offset,
            );
        }
    }
    Ok(())
}

/// The dedup state of a node: the committed table and, on the leader, its proposals in flight.
#[derive(Debug, Default)]
pub struct Producers {
    table: ProducerTable,
    /// The term the overlay belongs to (0: none).
    term: Term,
    /// The last index before this leader's first proposal of `term`: idempotent batches wait
    /// until it is applied.
    barrier: Index,
    /// Producers with batches proposed here and not yet applied: their state as if those
    /// batches were applied, with the index of the last one.
    overlay: HashMap<u64, (Producer, Index)>,
}

impl Producers {
    /// Starts from a snapshot's table (or an empty one).
    pub fn new(table: ProducerTable) -> Producers {
        Producers {
            table,
            ..Producers::default()
        }
    }

    /// The committed table (what a snapshot at the applied index holds).
    pub fn table(&self) -> &ProducerTable {
        &self.table
    }

    /// Replaces the table by an installed snapshot's (a follower: no overlay).
    pub fn install(&mut self, table: ProducerTable) {
        *self = Producers::new(table);
    }

    /// Forgets the overlay: this node no longer leads (its proposals not applied may be cut).
    pub fn stop_leading(&mut self) {
        self.term = 0;
        self.overlay.clear();
    }

    /// Judges a proposal's batches in order, for the leader of `term` whose log holds entries of
    /// earlier terms up to `earlier_terms_end()` (asked only before its first proposal of the
    /// term) and is applied up to `applied`: each against the table, this leader's proposals in
    /// flight and the batches before it in `batches`.
    pub fn judge(
        &self,
        batches: &[Batch],
        term: Term,
        earlier_terms_end: impl FnOnce() -> Index,
        applied: Index,
    ) -> Vec<Verdict> {
        // Before this leader's first proposal of the term, its log after the earlier terms'
        // entries holds only its own no-op and configuration entries (no batches): those of the
        // earlier terms are what must be applied first.
        let barrier = if self.term == term {
            self.barrier
        } else {
            earlier_terms_end()
        };
        let mut proposing: HashMap<u64, Producer> = HashMap::new();
        let mut verdicts = Vec::with_capacity(batches.len());
        for (place, batch) in batches.iter().enumerate() {
            let Some(b) = ProducerBatch::of_batch(batch) else {
                verdicts.push(Verdict::Fresh);
                continue;
            };
            if applied < barrier {
                verdicts.push(Verdict::NotReady);
                continue;
            }
            let known = proposing
                .get(&b.producer_id)
                .or_else(|| self.overlay.get(&b.producer_id).map(|(p, _)| p))
                .or_else(|| self.table.get(b.producer_id));
            let verdict = match judge_one(known, &b) {
                // A duplicate of a batch of this very proposal: its stand-in names its place.
                Verdict::Duplicate(p) if p.index == Index::MAX => {
                    Verdict::SameAs(p.base_offset as usize)
                }
                v => v,
            };
            if verdict == Verdict::Fresh {
                // Stand-in placement (index MAX, base_offset = its place) until proposed.
                let stand_in = placed(&b, place as u64, place as u64, Index::MAX, 0);
                let mut p = known.cloned().unwrap_or(Producer {
                    epoch: b.epoch,
                    batches: VecDeque::new(),
                });
                p.record(b.epoch, stand_in);
                proposing.insert(b.producer_id, p);
            }
            verdicts.push(verdict);
        }
        verdicts
    }

    /// Records a proposal the leader of `term` accepted at `index`: each proposed batch's
    /// producer batch (if any) and its first and last offset, in order.
    pub fn proposed(
        &mut self,
        batches: &[Option<ProducerBatch>],
        stored: &[(u64, u64)],
        term: Term,
        index: Index,
    ) {
        if self.term != term {
            self.term = term;
            self.barrier = index - 1;
            self.overlay.clear();
        }
        for (b, &(base_offset, last_offset)) in batches.iter().zip(stored) {
            let Some(b) = b else {
                continue;
            };
            let p = placed(b, base_offset, last_offset, index, term);
            let (producer, at) = self.overlay.entry(b.producer_id).or_insert_with(|| {
                let known = self.table.get(b.producer_id).cloned();
                (
                    known.unwrap_or(Producer {
                        epoch: b.epoch,
                        batches: VecDeque::new(),
                    }),
                    index,
                )
            });
            producer.record(b.epoch, p);
            *at = index;
        }
    }

    /// Applies a committed entry at `index` (in log order) and forgets in-flight state it
    /// settles.
    pub fn apply_entry(&mut self, index: Index, bytes: &[u8]) -> Result<(), BatchError> {
        self.table.apply_entry(bytes)?;
        if !self.overlay.is_empty() {
            self.overlay.retain(|_, (_, last)| *last > index);
        }
        Ok(())
    }
}

/// Name of the file in the data directory that holds the next block of producer ids.
const IDS_FILE: &str = "producer-ids";
/// Ids per block (the low 24 bits).
const IDS_PER_BLOCK: u64 = 1 << 24;
/// Blocks a node can claim (the middle 24 bits).
const BLOCKS_MAX: u64 = 1 << 24;
/// Node ids that fit the upper bits (15, so that every id is a positive i64).
const NODE_IDS_MAX: u64 = 1 << 15;

/// Producer ids this node hands out: `node_id << 48 | block << 24 | n` (see the module's
/// comment): the node bits keep nodes apart, and each block is claimed durably (the
/// `producer-ids` file holds the next unclaimed one) before any id of it is handed out, so a
/// restarted node never hands out an id again.
#[derive(Debug)]
pub struct ProducerIds {
    dir: PathBuf,
    node_id: u64,
    /// The block this process claimed (none before its first grant), and the next id's low
    /// bits in it.
    block: Option<u64>,
    next: u64,
}

/// Why no producer id can be handed out.
#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    /// The node id does not fit the id's upper bits.
    #[error("node id {0} is too high to hand out producer ids (at most {max})", max = NODE_IDS_MAX - 1)]
    NodeIdTooHigh(u64),
    /// Every block was claimed (2^24 restarts or 2^48 ids of this node).
    #[error("this node claimed every block of producer ids")]
    Exhausted,
    /// Claiming a block (the durable write of the `producer-ids` file) failed.
    #[error("claiming a block of producer ids: {0}")]
    Claim(#[from] std::io::Error),
}

impl ProducerIds {
    /// Ids of node `node_id`, its claims recorded in `data_dir`. No I/O: the first grant claims
    /// the first block, so a node starts even on a disk with no room left.
    pub fn new(data_dir: &Path, node_id: u64) -> ProducerIds {
        ProducerIds {
            dir: data_dir.to_path_buf(),
            node_id,
            block: None,
            next: 0,
        }
    }

    /// Reads the next unclaimed block and durably records the one after it.
    fn claim(&self) -> Result<u64, ProducerIdError> {
        let path = self.dir.join(IDS_FILE);
        let block = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .strip_prefix("next_block = ")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{} is malformed: {text:?}", path.display()),
                    )
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e.into()),
        };
        if block >= BLOCKS_MAX {
            return Err(ProducerIdError::Exhausted);
        }
        let tmp = self.dir.join(format!("{IDS_FILE}.tmp"));
        let written = std::fs::File::create(&tmp).and_then(|mut file| {
            writeln!(file, "next_block = {}", block + 1)?;
            file.sync_all()
        });
        if let Err(e) = written {
            // A partial file would hold on to space a full disk lacks.
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        std::fs::rename(&tmp, &path)?;
        raftline_log::dir::sync_dir(&self.dir)?;
        Ok(block)
    }

    /// The directory the claims are recorded in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new producer id.
    pub fn grant(&mut self) -> Result<u64, ProducerIdError> {
        if self.node_id >= NODE_IDS_MAX {
            return Err(ProducerIdError::NodeIdTooHigh(self.node_id));
        }
        let block = match self.block {
            Some(block) if self.next < IDS_PER_BLOCK => block,
            _ => {
                let block = self.claim()?;
                self.block = Some(block);
                self.next = 0;
                block
            }
        };
        let id = self.node_id << 48 | block << 24 | self.next;
        self.next += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftline_log::Record;

    fn batch(producer_id: u64, epoch: i16, base_sequence: i32, records: usize) -> Batch {
        let records: Vec<Record> = (0..records)
            .map(|i| Record {
                key: None,
                value: vec![i as u8],
                timestamp_ms: 0,
                headers: vec![],
            })
            .collect();
        let seq = ProducerSeq {
            producer_id,
            epoch,
            base_sequence,
        };
        Batch::encode_idempotent(&records, seq).unwrap()
    }

    /// Proposes `batches` as one entry at `index` (one record each... as many as they hold) at
    /// `offset`, and returns each one's offsets.
    fn propose(
        p: &mut Producers,
        batches: &[Batch],
        term: Term,
        index: Index,
        offset: u64,
    ) -> Vec<(u64, u64)> {
        let mut at = offset;
        let stored: Vec<(u64, u64)> = batches
            .iter()
            .map(|b| {
                let n = u64::from(b.header().record_count);
                at += n;
                (at - n, at - 1)
            })
            .collect();
        let of: Vec<_> = batches.iter().map(ProducerBatch::of_batch).collect();
        p.proposed(&of, &stored, term, index);
        stored
    }

    /// The committed entry's bytes for `batches` stamped at `offset`.
    fn entry(batches: &[Batch], offset: u64, term: Term, index: Index) -> Vec<u8> {
        let mut batches = batches.to_vec();
        if batches.len() == 1 {
            batches[0].stamp(offset, term, index);
            return batches[0].as_bytes().to_vec();
        }
        Batch::run(&mut batches, offset, term, index)
            .unwrap()
            .into_bytes()
    }

    #[test]
    fn next_duplicate_gap_stale_epoch_and_unknown_are_told_apart() {
        let mut p = Producers::default();
        let first = [batch(9, 0, 0, 3)];
        assert_eq!(p.judge(&first, 1, || 0, 0), vec![Verdict::Fresh]);
        p.apply_entry(1, &entry(&first, 0, 1, 1)).unwrap();
        let judge = |p: &Producers, b: Batch| p.judge(&[b], 1, || 1, 1)[0];
        assert_eq!(judge(&p, batch(9, 0, 3, 2)), Verdict::Fresh);
        assert_eq!(
            judge(&p, batch(9, 0, 0, 3)),
            Verdict::Duplicate(Placed {
                first_seq: 0,
                last_seq: 2,
                base_offset: 0,
                last_offset: 2,
                index: 0,
                term: 0
            })
        );
        assert_eq!(
            judge(&p, batch(9, 0, 4, 1)),
            Verdict::OutOfOrder {
                producer_id: 9,
                expected: 3,
                got: 4
            }
        );
        assert!(
            matches!(judge(&p, batch(9, 0, 0, 2)), Verdict::OutOfOrder { .. }),
            "same start, other end"
        );
        assert_eq!(
            judge(&p, batch(9, 1, 0, 1)),
            Verdict::Fresh,
            "a new epoch starts at 0"
        );
        assert!(matches!(
            judge(&p, batch(9, 1, 3, 1)),
            Verdict::OutOfOrder { expected: -1, .. }
        ));
        assert_eq!(
            judge(&p, batch(8, 0, 0, 1)),
            Verdict::Fresh,
            "a new producer starts at 0"
        );
        assert_eq!(
            judge(&p, batch(8, 0, 5, 1)),
            Verdict::UnknownProducer { producer_id: 8 }
        );
        assert_eq!(judge(&p, Batch::encode(&[]).unwrap()), Verdict::Fresh);
        // The new epoch is stored: the old one is fenced.
        p.apply_entry(2, &entry(&[batch(9, 1, 0, 1)], 3, 1, 2))
            .unwrap();
        assert_eq!(
            p.judge(&[batch(9, 0, 3, 1)], 1, || 2, 2)[0],
            Verdict::StaleEpoch {
                producer_id: 9,
                current: 1,
                got: 0
            }
        );
    }

    #[test]
    fn only_the_last_five_batches_are_recognised_and_sequences_wrap() {
        let mut t = ProducerTable::default();
        for i in 0..7 {
            let b = batch(1, 0, i * 2, 2);
            t.apply_entry(&entry(&[b], i as u64 * 2, 1, i as u64 + 1))
                .unwrap();
        }
        let p = Producers::new(t);
        let judge = |b| p.judge(&[b], 1, || 7, 7)[0];
        assert!(
            matches!(judge(batch(1, 0, 2, 2)), Verdict::OutOfOrder { .. }),
            "6th from last"
        );
        assert!(
            matches!(judge(batch(1, 0, 4, 2)), Verdict::Duplicate(_)),
            "5th from last"
        );
        assert!(matches!(judge(batch(1, 0, 12, 2)), Verdict::Duplicate(_)));
        assert_eq!(judge(batch(1, 0, 14, 2)), Verdict::Fresh);
        // After i32::MAX comes 0.
        let b = ProducerBatch::of(
            ProducerSeq {
                producer_id: 2,
                epoch: 0,
                base_sequence: i32::MAX - 1,
            },
            3,
        );
        assert_eq!(b.last_seq, 0);
        assert_eq!(seq_add(i32::MAX, 1), 0);
    }

    #[test]
    fn a_resend_racing_its_uncommitted_original_is_a_duplicate_of_it() {
        let mut p = Producers::default();
        let original = [batch(5, 0, 0, 2)];
        // Becomes leader of term 3 at index 10 (all applied): the original is proposed at 11.
        assert_eq!(p.judge(&original, 3, || 10, 10), vec![Verdict::Fresh]);
        propose(&mut p, &original, 3, 11, 100);
        let placed = Placed {
            first_seq: 0,
            last_seq: 1,
            base_offset: 100,
            last_offset: 101,
            index: 11,
            term: 3,
        };
        assert_eq!(
            p.judge(&original, 3, || 11, 10),
            vec![Verdict::Duplicate(placed)]
        );
        // The next batch continues the in-flight one; a resend in the same proposal is SameAs.
        let next = batch(5, 0, 2, 1);
        assert_eq!(
            p.judge(
                &[next.clone(), batch(6, 0, 0, 1), next.clone()],
                3,
                || 11,
                10
            ),
            vec![Verdict::Fresh, Verdict::Fresh, Verdict::SameAs(0)]
        );
        // Once the original commits, the overlay is gone and the table answers the same.
        p.apply_entry(11, &entry(&original, 100, 3, 11)).unwrap();
        assert!(p.overlay.is_empty());
        let committed = Placed {
            index: 0,
            term: 0,
            ..placed
        };
        assert_eq!(
            p.judge(&original, 3, || 11, 11),
            vec![Verdict::Duplicate(committed)]
        );
        // A lost leadership forgets the overlay.
        propose(&mut p, std::slice::from_ref(&next), 3, 12, 102);
        p.stop_leading();
        assert!(p.overlay.is_empty());
    }

    #[test]
    fn a_new_leader_waits_until_the_entries_of_earlier_terms_are_applied() {
        let mut p = Producers::default();
        let b = [batch(5, 0, 0, 1)];
        // Earlier terms' entries end at 20 (the no-op and this term's configuration entries
        // follow), applied 15.
        assert_eq!(p.judge(&b, 4, || 20, 15), vec![Verdict::NotReady]);
        assert_eq!(
            p.judge(&[Batch::encode(&[]).unwrap()], 4, || 20, 15),
            vec![Verdict::Fresh]
        );
        // A plain batch proposed at 21 fixes the barrier at 20.
        p.proposed(&[None], &[(0, 0)], 4, 21);
        assert_eq!(p.judge(&b, 4, || 21, 19), vec![Verdict::NotReady]);
        assert_eq!(p.judge(&b, 4, || 21, 20), vec![Verdict::Fresh]);
        // Once fixed, the log is not walked again (the walk is for the term's first proposal).
        let unasked = || panic!("the earlier terms' end is asked after the term's first proposal");
        assert_eq!(p.judge(&b, 4, unasked, 20), vec![Verdict::Fresh]);
    }

    #[test]
    fn the_least_recently_written_producer_is_evicted_beyond_the_bound() {
        let mut t = ProducerTable::default();
        for id in 0..PRODUCERS_MAX as u64 {
            let b = ProducerBatch {
                producer_id: id,
                epoch: 0,
                first_seq: 0,
                last_seq: 0,
            };
            t.apply(&b, placed(&b, id, id, id + 1, 1));
        }
        // Producer 0 writes again: producer 1 is now the least recently written.
        let again = ProducerBatch {
            producer_id: 0,
            epoch: 0,
            first_seq: 1,
            last_seq: 1,
        };
        let at = PRODUCERS_MAX as u64;
        t.apply(&again, placed(&again, at, at, at + 1, 1));
        let newcomer = ProducerBatch {
            producer_id: 1 << 40,
            ..again
        };
        t.apply(&newcomer, placed(&newcomer, at + 1, at + 1, at + 2, 1));
        assert_eq!(t.len(), PRODUCERS_MAX);
        assert!(t.get(1).is_none(), "evicted");
        assert!(t.get(0).is_some() && t.get(2).is_some() && t.get(1 << 40).is_some());
        let p = Producers::new(t);
        assert_eq!(
            p.judge(&[batch(1, 0, 1, 1)], 1, || at + 2, at + 2),
            vec![Verdict::UnknownProducer { producer_id: 1 }]
        );
    }

    #[test]
    fn the_table_round_trips_through_its_snapshot_section_and_refuses_bad_bytes() {
        let mut t = ProducerTable::default();
        for (i, b) in [batch(3, 0, 0, 2), batch(4, 2, 0, 1), batch(3, 0, 2, 1)]
            .iter()
            .enumerate()
        {
            let i = i as u64;
            t.apply_entry(&entry(std::slice::from_ref(b), i * 10, 1, i + 1))
                .unwrap();
        }
        let mut bytes = vec![0xEE];
        t.encode(&mut bytes);
        let (back, used) = ProducerTable::decode(&bytes[1..]).unwrap();
        assert_eq!(used, bytes.len() - 1);
        assert_eq!(back, t);
        for len in 0..bytes.len() - 1 {
            assert!(
                ProducerTable::decode(&bytes[1..1 + len]).is_err(),
                "len {len}"
            );
        }
    }

    #[test]
    fn producer_ids_are_unique_across_nodes_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _restart in 0..3 {
            let mut ids = ProducerIds::new(dir.path(), 3);
            for _ in 0..5 {
                let id = ids.grant().unwrap();
                assert!(id <= i64::MAX as u64 && id >> 48 == 3);
                assert!(seen.insert(id), "id {id:#x} handed out twice");
            }
        }
        let mut other = ProducerIds::new(dir.path(), 4);
        assert!(
            seen.insert(other.grant().unwrap()),
            "another node's ids differ"
        );
        // A used-up block claims the next one before any id of it is handed out.
        let mut ids = ProducerIds::new(dir.path(), 3);
        ids.grant().unwrap();
        ids.next = IDS_PER_BLOCK;
        let id = ids.grant().unwrap();
        assert!(seen.insert(id));
        let next = std::fs::read_to_string(dir.path().join(IDS_FILE)).unwrap();
        assert_eq!(
            next.trim(),
            format!("next_block = {}", (id >> 24 & 0xff_ffff) + 1)
        );
        let mut high = ProducerIds::new(dir.path(), NODE_IDS_MAX);
        assert!(matches!(
            high.grant(),
            Err(ProducerIdError::NodeIdTooHigh(_))
        ));
        std::fs::write(dir.path().join(IDS_FILE), "next_block = 16777216\n").unwrap();
        assert!(matches!(
            ProducerIds::new(dir.path(), 3).grant(),
            Err(ProducerIdError::Exhausted)
        ));
    }
}
