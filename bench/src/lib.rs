//! `raftline-bench`: everything that measures raftline and the machine it runs on.
//!
//! - [`fsync`]: the disk profiler (`raftline bench fsync`): fdatasync percentiles, the
//!   group-commit curve, bandwidth, a verdict.
//! - [`cluster`]: `raftline bench cluster` against a local 3-node cluster (or `--bootstrap`):
//!   the load generator, CPU accounting, the sweep, the tail (W4) and the null node.
//! - [`failover`]: `raftline bench failover` (kill -9 the leader K times under load).
//! - [`kafka`]: `raftline bench kafka` (the Kafka path beside the native one, same cluster).
//! - [`profiles`]: `raftline bench profiles` (group commit on emulated HDD / SATA / NVMe).
//! - [`local_cluster`]: three `raftline server` child processes on loopback (or each in its own
//!   network namespace, [`netns`]: delayed links, partitions), shared by `raftline dev`, the
//!   benchmarks and the namespace tests; [`emulated_disk`]: the reference device profiles;
//!   [`dev_certs`]: the throwaway CA and node certificates their peer ports run TLS with.
//! - Helpers: [`chart`] (SVG), [`latency`] (hdrhistogram recorder), [`machine_load`], [`stop`]
//!   (Ctrl-C), [`labels`].
//!
//! The cluster benchmarks start nodes as `raftline server` child processes of the running
//! executable (`std::env::current_exe`): they are meant to be called from the `raftline` binary.

pub mod chart;
pub mod cluster;
pub mod dev_certs;
pub mod emulated_disk;
pub mod failover;
pub mod fsync;
pub mod kafka;
pub mod labels;
pub mod latency;
pub mod local_cluster;
pub mod machine_load;
pub mod netns;
pub mod profiles;
pub mod snapshot;
pub mod stop;
