//! `raftline bench cluster --tail-log N` (workload W4): fill the log with N records as fast as
//! the cluster takes them (big batches, several connections), then time ONE consumer reading
//! all of them from offset 0, checking that it got every offset exactly once, in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stop::StopSignal;
use anyhow::{bail, ensure, Context};
use raftline_log::{Batch, Record};
use raftline_netio::client::{ClientConfig, Subscription};

use crate::cluster::load_generator::{AppendDone, MultiProducer};
use raftline_netio::client_proto::StartFrom;
use serde::Serialize;

use crate::cluster::cpu::{self, CpuFigures, Watched};

/// Prefill connections and window: enough appends in flight to keep the group commit full.
const PREFILL_CONNECTIONS: usize = 4;
const PREFILL_WINDOW: usize = 8;
/// Prefill batches: at most this many records and about this many bytes each.
const PREFILL_BATCH_RECORDS_MAX: usize = 1000;
const PREFILL_BATCH_BYTES: usize = 512 << 10;
/// Bytes a record takes in a batch beyond its value (archive overhead, rounded up).
const RECORD_OVERHEAD_BYTES: usize = 64;
/// Bytes the node may stream ahead of the consumer: several of its 1 MiB frames, so the
/// consumer's credit never drains the pipe between two grants.
const READ_WINDOW_BYTES: u64 = 16 << 20;
/// Longest wait for the consumer's next batch before the run is declared stuck.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--tail-log` measured.
#[derive(Debug, Serialize)]
pub struct TailFigures {
    /// Records the log held when the consumer started (≥ N: a resend after a fail-over may
    /// store a batch twice).
    pub records_in_log: u64,
    /// Records per prefill append.
    pub prefill_batch_records: usize,
    /// Seconds the prefill took.
    pub prefill_s: f64,
    /// Records acknowledged per second while prefilling (P=4, W=8, big batches).
    pub prefill_records_per_s: f64,
    /// Records the consumer read (every offset from 0, once, in order: checked).
    pub records_read: u64,
    /// Batches the consumer read.
    pub batches_read: u64,
    /// Seconds from subscribing to the last record.
    pub read_s: f64,
    /// Records read per second.
    pub read_records_per_s: f64,
    /// Record values read, MB/s (10^6 bytes).
    pub read_value_mb_per_s: f64,
    /// CPU over the read (per core; per thread of each node and of this process).
    pub read_cpu: Option<CpuFigures>,
}

/// MiB of log the nodes must retain below its end so that `records` records of `value_bytes`
/// stay readable from offset 0 (twice the estimate, so a snapshot never cuts into them).
pub fn retain_mib(records: u64, value_bytes: usize) -> u64 {
    ((records * (value_bytes + RECORD_OVERHEAD_BYTES) as u64 * 2) >> 20) + 64
}

/// Prefills `records` records of `value_bytes` bytes, then reads them all back with one consumer.
pub fn run(
    config: &ClientConfig,
    records: u64,
    value_bytes: usize,
    watched: &[Watched],
    stop: &StopSignal,
) -> anyhow::Result<TailFigures> {
    let batch_records = (PREFILL_BATCH_BYTES / (value_bytes + RECORD_OVERHEAD_BYTES))
        .clamp(1, PREFILL_BATCH_RECORDS_MAX);
    let started = Instant::now();
    let end = prefill(config, records, batch_records, value_bytes, stop)?;
    let prefill_s = started.elapsed().as_secs_f64();

    let cpu_before = cpu::sample(watched);
    let read_started = Instant::now();
    let (records_read, batches_read) = read_all(config, end, stop)?;
    let read_s = read_started.elapsed().as_secs_f64();
    let cpu_after = cpu::sample(watched);
    let read_cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(cpu::between(&before, &after, watched)),
        _ => None,
    };
    Ok(TailFigures {
        records_in_log: end,
        prefill_batch_records: batch_records,
        prefill_s,
        prefill_records_per_s: end as f64 / prefill_s,
        records_read,
        batches_read,
        read_s,
        read_records_per_s: records_read as f64 / read_s,
        read_value_mb_per_s: (records_read * value_bytes as u64) as f64 / read_s / 1e6,
        read_cpu,
    })
}

/// Appends `records` records in batches of `batch_records`; returns one past the highest offset
/// acknowledged (the log's end: offsets start at 0 on a fresh cluster).
fn prefill(
    config: &ClientConfig,
    records: u64,
    batch_records: usize,
    value_bytes: usize,
    stop: &StopSignal,
) -> anyhow::Result<u64> {
    let mut config = config.clone();
    config.window_appends = PREFILL_WINDOW;
    let mut producer = MultiProducer::connect(config, PREFILL_CONNECTIONS)?;
    let record = Record {
        key: None,
        value: vec![b'x'; value_bytes],
        timestamp_ms: 0,
        headers: Vec::new(),
    };
    let full: Arc<[u8]> =
        Arc::from(Batch::encode(&vec![record.clone(); batch_records])?.into_bytes());
    let appends = records.div_ceil(batch_records as u64);
    let last_records = records - (appends - 1) * batch_records as u64;
    let last: Arc<[u8]> =
        Arc::from(Batch::encode(&vec![record; last_records as usize])?.into_bytes());
    let mut next = 0u64;
    let mut end = 0u64;
    let mut acked = 0u64;
    let mut done: Vec<AppendDone> = Vec::new();
    while acked < appends {
        if stop.is_raised() {
            bail!("interrupted");
        }
        for connection in 0..PREFILL_CONNECTIONS {
            while next < appends && producer.room(connection) > 0 {
                let batch = if next + 1 == appends { &last } else { &full };
                producer.submit(connection, Arc::clone(batch), next)?;
                next += 1;
            }
        }
        producer.poll(Duration::from_millis(20), &mut done)?;
        for append in done.drain(..) {
            let base = append
                .result
                .map_err(|e| anyhow::anyhow!("the cluster refused a prefill append: {e}"))?;
            let count = if append.tag + 1 == appends {
                last_records
            } else {
                batch_records as u64
            };
            end = end.max(base + count);
            acked += 1;
        }
    }
    Ok(end)
}

/// Reads offsets 0..end with one subscription; checks that batches arrive contiguous (every
/// offset once, in order). Returns (records, batches) read.
fn read_all(config: &ClientConfig, end: u64, stop: &StopSignal) -> anyhow::Result<(u64, u64)> {
    let mut config = config.clone();
    config.subscribe_window_bytes = READ_WINDOW_BYTES;
    let mut subscription =
        Subscription::open(config, StartFrom::Offset(0)).context("subscribing from offset 0")?;
    let (mut expected, mut batches) = (0u64, 0u64);
    while expected < end {
        if stop.is_raised() {
            bail!("interrupted");
        }
        let batch = subscription
            .next_batch(Some(READ_STALL_TIMEOUT))?
            .with_context(|| {
                format!("no batch within {READ_STALL_TIMEOUT:?} at offset {expected} of {end}")
            })?;
        ensure!(
            batch.first_offset() == expected,
            "the consumer got offset {} where {expected} was next",
            batch.first_offset()
        );
        expected = batch.next_offset();
        batches += 1;
    }
    ensure!(
        expected == end,
        "the consumer read to offset {expected}, past the log's end {end}"
    );
    Ok((expected, batches))
}
