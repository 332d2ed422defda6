//! raftline's benchmarks: the fsync disk profiler and the cluster load benchmark.

pub mod fsync;
pub mod labels;
pub mod latency;
