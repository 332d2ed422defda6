//! The load generator of `raftline bench cluster`: a few threads (default one), each driving
//! its share of the P producer connections through one non-blocking
//! [`MultiProducer`](crate::cluster::load_generator::MultiProducer), so that 256 connections do not
//! become 256 threads competing with the nodes for the cores being measured.
//!
//! Latency is exact per append: from the instant its bytes were handed to the socket (closed
//! loop) or from its intended send time (`--rate`, coordinated-omission aware: a stall makes
//! every later append late and that lateness is counted) to the instant its answer was decoded.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::latency::LatencyRecorder;
use anyhow::Context;
use raftline_log::{Batch, Record};
use raftline_netio::client::ClientConfig;

use crate::cluster::load_generator::{AppendDone, MultiProducer};

/// The run's phases, as the generator threads see them.
pub const PHASE_WARMUP: u8 = 0;
/// Appends sent from now on are counted.
pub const PHASE_MEASURE: u8 = 1;
/// Stop sending; drain what is in flight.
pub const PHASE_STOP: u8 = 2;

/// A value that starts with these bytes carries its append's send time (ns since
/// `Shared::epoch`, little-endian) in bytes 8..16.
pub const STAMP_MAGIC: &[u8; 8] = b"RLBENCH1";
/// Bytes of a send-time stamp at the start of a value.
pub const STAMP_BYTES: usize = 16;

/// Longest wait for the answers still in flight when the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a generator thread sleeps in one poll (how fast it notices a phase change).
const POLL_INTERVAL_MAX: Duration = Duration::from_millis(20);

/// State the generator threads share with the thread that runs the phases.
pub struct Shared {
    /// One of `PHASE_*`.
    pub phase: AtomicU8,
    /// Records acknowledged so far (any phase), for the progress bar.
    pub acked_records: AtomicU64,
    /// When measuring started, in ns since `epoch` (`u64::MAX` before).
    pub measure_start_ns: AtomicU64,
    /// Origin of the send times stamped into record values.
    pub epoch: Instant,
}

impl Shared {
    /// Fresh shared state in the warm-up phase.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            phase: AtomicU8::new(PHASE_WARMUP),
            acked_records: AtomicU64::new(0),
            measure_start_ns: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        })
    }

    /// Enters the measured phase: appends sent (or intended) from now on count.
    pub fn start_measuring(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.measure_start_ns.store(now, Ordering::SeqCst);
        self.phase.store(PHASE_MEASURE, Ordering::SeqCst);
    }

    /// Ends the measured phase.
    pub fn stop(&self) {
        self.phase.store(PHASE_STOP, Ordering::SeqCst);
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct LoadSpec {
    /// Connections over all generator threads.
    pub connections: usize,
    /// Appends in flight per connection.
    pub window: usize,
    /// Records per append.
    pub batch_records: usize,
    /// Bytes per record value.
    pub value_bytes: usize,
    /// Fixed total appends/s (None: closed loop, as fast as the windows allow).
    pub rate: Option<f64>,
    /// Generator threads (connections are split between them).
    pub threads: usize,
    /// Stamp each append's values with its send time (for produce->consume latency); costs an
    /// encode per append, else one batch is encoded once and sent again and again.
    pub stamp_values: bool,
}

/// What one generator thread measured.
pub struct LoadResult {
    /// Records acknowledged (sent and acknowledged within the measured window).
    pub records: u64,
    /// Appends acknowledged likewise.
    pub appends: u64,
    /// Records the cluster refused with a typed error.
    pub refused: u64,
    /// Appends sent more than once (fail-over or Busy).
    pub resent: u64,
    /// Append -> acknowledgement latency.
    pub latency: LatencyRecorder,
}

/// Starts the generator threads (named `load-N`); each ends when the phase says stop.
pub fn spawn(
    config: &ClientConfig,
    spec: LoadSpec,
    shared: &Arc<Shared>,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<LoadResult>>>> {
    let threads = spec.threads.clamp(1, spec.connections);
    (0..threads)
        .map(|t| {
            // Connections split as evenly as possible; so is the rate.
            let connections =
                spec.connections / threads + usize::from(t < spec.connections % threads);
            let rate = spec
                .rate
                .map(|r| r * connections as f64 / spec.connections as f64);
            let (config, shared) = (config.clone(), Arc::clone(shared));
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || drive(config, spec, connections, rate, &shared))
                .context("starting a load generator thread")
        })
        .collect()
}

/// One generator thread: keeps every window full (or follows the rate) until told to stop,
/// then drains what is in flight (not counted).
fn drive(
    config: ClientConfig,
    spec: LoadSpec,
    connections: usize,
    rate: Option<f64>,
    shared: &Shared,
) -> anyhow::Result<LoadResult> {
    let mut producer = MultiProducer::connect(config, connections)?;
    let mut value = vec![b'x'; spec.value_bytes];
    let fixed_batch: Arc<[u8]> = encode(&value, spec.batch_records)?;
    let mut result = LoadResult {
        records: 0,
        appends: 0,
        refused: 0,
        resent: 0,
        latency: LatencyRecorder::new(),
    };
    // One entry per free window slot (the connection it belongs to).
    let mut free: Vec<usize> = (0..connections)
        .flat_map(|c| std::iter::repeat_n(c, spec.window))
        .collect();
    let mut done: Vec<AppendDone> = Vec::with_capacity(connections * spec.window);
    let began = Instant::now();
    let intended = |tag: u64| rate.map(|r| began + Duration::from_secs_f64(tag as f64 / r));
    let mut next_tag = 0u64;
    loop {
        if shared.phase.load(Ordering::Relaxed) == PHASE_STOP {
            break;
        }
        let now = Instant::now();
        while let Some(&connection) = free.last() {
            if intended(next_tag).is_some_and(|at| at > now) {
                break;
            }
            free.pop();
            let batch = if spec.stamp_values && spec.value_bytes >= STAMP_BYTES {
                value[..8].copy_from_slice(STAMP_MAGIC);
                let sent_ns = shared.ns(Instant::now());
                value[8..STAMP_BYTES].copy_from_slice(&sent_ns.to_le_bytes());
                encode(&value, spec.batch_records)?
            } else {
                Arc::clone(&fixed_batch)
            };
            producer.submit(connection, batch, next_tag)?;
            next_tag += 1;
        }
        let wait = match intended(next_tag) {
            Some(at) if !free.is_empty() => at
                .saturating_duration_since(Instant::now())
                .min(POLL_INTERVAL_MAX),
            _ => POLL_INTERVAL_MAX,
        };
        producer.poll(wait, &mut done)?;
        for append in done.drain(..) {
            free.push(append.connection);
            account(
                &append,
                intended(append.tag),
                spec.batch_records as u64,
                shared,
                &mut result,
            );
        }
    }
    // Leave nothing unanswered on the connections; these answers are not counted.
    producer.flush(DRAIN_TIMEOUT, &mut done)?;
    Ok(result)
}

/// Counts one finished append if it was sent (or intended) and answered within the window.
fn account(
    append: &AppendDone,
    intended: Option<Instant>,
    batch_records: u64,
    shared: &Shared,
    result: &mut LoadResult,
) {
    shared
        .acked_records
        .fetch_add(batch_records, Ordering::Relaxed);
    let from = intended.unwrap_or(append.sent_at);
    let measuring = shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
    if !measuring || shared.ns(from) < shared.measure_start_ns.load(Ordering::Relaxed) {
        return;
    }
    if append.attempts > 1 {
        result.resent += 1;
    }
    match append.result {
        Ok(_) => {
            result.records += batch_records;
            result.appends += 1;
            result
                .latency
                .record(append.answered_at.saturating_duration_since(from));
        }
        Err(_) => result.refused += batch_records,
    }
}

/// One batch of `records` copies of `value`.
fn encode(value: &[u8], records: usize) -> anyhow::Result<Arc<[u8]>> {
    let record = Record {
        key: None,
        value: value.to_vec(),
        timestamp_ms: 0,
        headers: Vec::new(),
    };
    let batch = Batch::encode(&vec![record; records]).context("encoding a batch")?;
    Ok(Arc::from(batch.into_bytes()))
}
