//! The figures one measured window of load produces (what `bench cluster`, its sweep and its
//! report share).

use serde::Serialize;

use crate::cluster::cpu::CpuFigures;
use crate::latency::LatencySummary;

/// The leader's own counters over the measured window.
#[derive(Debug, Serialize)]
pub struct LeaderFigures {
    /// The leader's node id.
    pub node_id: u64,
    /// Group commits (write + fdatasync) per second.
    pub fdatasyncs_per_s: f64,
    /// Records acknowledged in the window per leader fdatasync.
    pub records_per_fdatasync: f64,
    /// Bytes the leader wrote to its log per second, padding included, in MB/s.
    pub log_mb_per_s: f64,
    /// Bytes of peer frames the leader sent (AppendEntries to the followers, heartbeats), MB/s
    /// (absent if the node does not export the counter).
    pub shipped_to_followers_mb_per_s: Option<f64>,
}

/// The figures of one measured window of load.
#[derive(Debug, Serialize)]
pub struct LoadFigures {
    /// Measured wall time, seconds.
    pub elapsed_s: f64,
    /// Records acknowledged within the measured window.
    pub records: u64,
    /// Appends acknowledged within the measured window.
    pub appends: u64,
    /// Records the cluster refused (typed errors) within the window.
    pub records_refused: u64,
    /// Appends of the window that had to be sent more than once (fail-over, Busy).
    pub appends_resent: u64,
    /// Records acknowledged per second.
    pub records_per_s: f64,
    /// Appends acknowledged per second.
    pub appends_per_s: f64,
    /// Record values acknowledged, MB/s (10^6 bytes).
    pub value_mb_per_s: f64,
    /// Append -> acknowledgement latency of the appends acknowledged in the window.
    pub latency_us: LatencySummary,
    /// From the leader's /metrics (absent with --bootstrap and no --leader-metrics).
    pub leader: Option<LeaderFigures>,
    /// The same leader before and after the window (a change means an election disturbed the run).
    pub leader_changed: bool,
    /// With --consumers: what the consumers read.
    pub consumers: Option<ConsumerFigures>,
    /// The load generator itself.
    pub generator: GeneratorFigures,
    /// CPU per core and per thread of each node and of this process over the window (Linux).
    pub cpu: Option<CpuFigures>,
}

/// The load generator's shape and cost.
#[derive(Debug, Serialize)]
pub struct GeneratorFigures {
    /// Generator threads (each drives its connections through one epoll set).
    pub threads: usize,
    /// Producer connections over all threads.
    pub connections: usize,
    /// CPU the generator threads used over the window, % of one core.
    pub cpu_percent: Option<f64>,
}

/// Read-side figures of `--consumers`.
#[derive(Debug, Serialize)]
pub struct ConsumerFigures {
    /// Consumers tailing from the log's start.
    pub consumers: usize,
    /// Records delivered within the measured window, over all consumers.
    pub records: u64,
    /// Records delivered per second, over all consumers.
    pub records_per_s: f64,
    /// From the producer's send of an append to a consumer's delivery of its records (records
    /// sent within the measured window; empty when values are shorter than 16 bytes).
    pub produce_to_consume_us: LatencySummary,
}
