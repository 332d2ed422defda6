//! raftline's benchmarks: the fsync disk profiler and the cluster load benchmark.

pub mod chart;
pub mod fsync;
pub mod labels;
pub mod latency;
pub mod machine_load;
pub mod stop;
