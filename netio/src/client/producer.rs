//! The producer: client-side batching (records, bytes, linger) over the append pipeline, with
//! an offset (or the node's refusal) for every record.

use std::time::Instant;

use raftline_log::{Batch, ProducerSeq, Record};

use crate::client::pipeline::Pipeline;
use crate::client::{ClientConfig, Error};
use crate::client_proto::{ClientError, PRODUCER_BATCHES_KEPT};

/// Bytes a record is counted for beyond its key, value and headers when filling a batch.
const RECORD_OVERHEAD_BYTES: usize = 32;

/// The outcome for one record sent through a [`Producer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAck {
    /// The sequence number `send` returned for the record.
    pub seq: u64,
    /// The record's offset, or why the node refused its batch (not retried).
    pub result: Result<u64, ClientError>,
}

/// A pipelined producer: records are gathered into batches (`batch_records_max`,
/// `batch_bytes_max`, `linger`) and up to `window_appends` batches are in flight at once (at
/// most [`PRODUCER_BATCHES_KEPT`] when idempotent).
///
/// Idempotent by default (`ClientConfig::idempotent`): before its first batch the producer
/// takes an id from the cluster (`InitProducer`), and every batch carries it, its epoch and the
/// sequence number of its first record (the record sequence numbers `send` returns, counted
/// from the id's grant). After a leader failure, unanswered batches are resent to the new
/// leader with the same bytes; the leader stores a resent batch once and answers it with the
/// original offsets. A batch refused for its sequence or producer (`OutOfOrderSequence`,
/// `UnknownProducer`, `InvalidProducerEpoch`: not stored) makes the producer take a new id for
/// its next batches. With `idempotent` off: at-least-once (see the module documentation of
/// [`crate::client`]), a resent record may be committed twice. Lingering
/// is checked whenever `send` or `poll` is called (there is no background thread): call `poll`
/// periodically, or `flush`, to bound the latency of a lone record.
pub struct Producer {
    config: ClientConfig,
    pipeline: Pipeline,
    batch: Vec<Record>,
    batch_bytes: usize,
    batch_first_seq: u64,
    batch_started: Option<Instant>,
    next_seq: u64,
    /// The idempotent producer's id and epoch, and the record sequence number its sequence 0
    /// stands for (`None`: not taken yet, or to be taken again).
    identity: Option<(u64, i16, u64)>,
}

impl Producer {
    /// A producer that finds the leader on its first batch.
    pub fn new(config: ClientConfig) -> Producer {
        // An idempotent producer's resends are recognised among its last batches stored only.
        let window = match config.idempotent {
            true => config.window_appends.min(PRODUCER_BATCHES_KEPT),
            false => config.window_appends,
        };
        Producer {
            pipeline: Pipeline::new(config.clone(), window),
            config,
            batch: Vec::new(),
            batch_bytes: 0,
            batch_first_seq: 0,
            batch_started: None,
            next_seq: 0,
            identity: None,
        }
    }

    /// Adds a record to the current batch and returns its sequence number (0, 1, 2, ... per
    /// producer); sends the batch once it is full or has lingered. Blocks while the window is
    /// full. If this returns an error because the leader cannot be reached, the record was
    /// still accepted (its sequence number is the one after the previous record's): its batch
    /// stays queued and the next `send`/`flush` retries it. A batch that cannot be encoded at
    /// all (`Error::Batch`, e.g. a record over the batch size limit) is dropped.
    pub fn send(&mut self, record: Record) -> Result<u64, Error> {
        self.dispatch_if_lingered()?;
        if self.batch.is_empty() {
            self.batch_first_seq = self.next_seq;
            self.batch_started = Some(Instant::now());
        }
        self.batch_bytes += record_bytes(&record);
        self.batch.push(record);
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.batch.len() >= self.config.batch_records_max
            || self.batch_bytes >= self.config.batch_bytes_max
        {
            self.dispatch()?;
        }
        Ok(seq)
    }

    /// Sends a batch that has lingered long enough and handles answers already received.
    pub fn poll(&mut self) -> Result<(), Error> {
        self.dispatch_if_lingered()?;
        self.pipeline.poll()
    }

    /// Sends the current batch and waits until every record is answered.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.dispatch()?;
        self.pipeline.drain()
    }

    /// Records sent but not yet answered (in the current batch or in flight).
    pub fn unanswered(&self) -> usize {
        self.batch.len() + self.pipeline.unfinished()
    }

    /// Batches sent again by the producer itself so far (after `NotLeader`, `Busy`, a timeout
    /// or a lost connection): the retries behind the acknowledgements.
    pub fn resends(&self) -> u64 {
        self.pipeline.resends()
    }

    /// The outcomes answered since the last call, one per record, batches in answer order and
    /// records in sequence order within a batch.
    pub fn take_acks(&mut self) -> Vec<RecordAck> {
        let mut acks = Vec::new();
        for done in self.pipeline.take_completed() {
            if matches!(
                done.result,
                Err(ClientError::OutOfOrderSequence { .. }
                    | ClientError::UnknownProducer { .. }
                    | ClientError::InvalidProducerEpoch { .. })
            ) {
                // The node no longer continues this producer's sequence: start a new one.
                self.identity = None;
            }
            for i in 0..done.record_count {
                acks.push(RecordAck {
                    seq: done.tag + i,
                    result: done.result.clone().map(|base| base + i),
                });
            }
        }
        acks
    }

    fn dispatch_if_lingered(&mut self) -> Result<(), Error> {
        match self.batch_started {
            Some(t) if t.elapsed() >= self.config.linger => self.dispatch(),
            _ => Ok(()),
        }
    }

    fn dispatch(&mut self) -> Result<(), Error> {
        if self.batch.is_empty() {
            return Ok(());
        }
        if self.config.idempotent && self.identity.is_none() {
            // On failure the batch stays: the next `send`/`flush` asks again.
            let (producer_id, epoch) = self.pipeline.init_producer()?;
            self.identity = Some((producer_id, epoch, self.batch_first_seq));
        }
        let records = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.batch_started = None;
        let batch = match self.identity {
            Some((producer_id, epoch, origin)) => {
                let seq = ProducerSeq {
                    producer_id,
                    epoch,
                    // Kafka's rule: sequences run 0..=i32::MAX, then 0 again.
                    base_sequence: ((self.batch_first_seq - origin) % (1 << 31)) as i32,
                };
                Batch::encode_idempotent(&records, seq)?
            }
            None => Batch::encode(&records)?,
        };
        let bytes = batch.into_bytes();
        self.pipeline
            .submit(bytes, records.len() as u64, self.batch_first_seq)
    }
}

fn record_bytes(record: &Record) -> usize {
    RECORD_OVERHEAD_BYTES
        + record.value.len()
        + record.key.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}
