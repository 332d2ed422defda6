//! `raftline bench cluster`: load a 3-node cluster with P pipelined producers and print what
//! it committed, how long each append took to be acknowledged, how the leader's group commit
//! behaved, and beside it the disk's own limits measured in the same run on the same directory.

pub mod cpu;
pub mod figures;
pub mod load;
pub mod load_generator;
pub mod null_node;
pub mod sweep;
pub mod tail;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fsync::{
    measure_fdatasync, measure_sequential_bandwidth, resolve_io_path, BandwidthProbe, FileLayout,
    FsyncProbe, IoPath, LatencySummary,
};
use crate::latency::LatencyRecorder;
use crate::stop::StopSignal;
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use raftline_netio::client::{status_of_all, ClientConfig, Subscription};
use raftline_netio::client_proto::{AckMode, NodeRole, StartFrom};
use raftline_netio::cluster_id::ClusterId;
use serde::Serialize;

use crate::emulated_disk::{self, DiskProfile, EmulatedDisk};
use crate::local_cluster::{self, Launch, Placement, RunDir};
use crate::netns::{CommitFloor, NetnsArgs, NetnsFigures, NetnsRun};
use crate::node_metrics::NodeMetrics;
use cpu::{CpuFigures, Watched};
use figures::{ConsumerFigures, GeneratorFigures, LeaderFigures, LoadFigures};
use load::{
    LoadResult, LoadSpec, Shared, PHASE_MEASURE, PHASE_STOP, PHASE_WARMUP, STAMP_BYTES, STAMP_MAGIC,
};
use null_node::NullNodeProcess;
use sweep::SweepPoint;
use tail::TailFigures;

/// The long `--help` of `raftline bench cluster`.
pub const LONG_ABOUT: &str = "Measure a 3-node raftline cluster under load.\n\n\
Starts a local 3-node cluster of `raftline server` child processes on free loopback ports, with \
their data in a temporary directory under --dir (or targets a running cluster with \
--bootstrap), then runs P producer connections, each keeping a window of W appends of B records \
of V bytes in flight, for --duration seconds after a --warmup. Prints records/s and MB/s \
committed, the append->acknowledgement latency (p50/p90/p99/p99.9/max; with --rate measured \
from each append's intended send time, so a stalled cluster is not hidden by producers that \
stopped sending), the leader's fdatasyncs/s and records per fdatasync (from its /metrics), and \
beside them the disk's own 4 KiB fdatasync rate and O_DIRECT sequential bandwidth measured on \
the same directory, and raftline's durable MB/s as a share of that bandwidth / 3 replicas.\n\n\
The load generator is one thread (--load-threads) driving every connection without blocking, \
so it leaves the cores to the nodes; its own CPU, the CPU of every node thread and core, and the \
bytes the leader shipped to its followers are reported. --sweep measures a grid of P x W points \
(throughput vs latency; --svg draws it). --tail-log N is workload W4: fill the log with N \
records, then time one consumer reading them all from offset 0 (every offset checked).\n\n\
--netns lan|wan|far-replica runs the local cluster with each node in its own network namespace, \
peers linked through relays that add the scenario's one-way delay (root only; see \
bench/README.md): every pair's round trip is measured through the relays before the nodes start, \
and the report sets the append latency beside its floor, the leader's round trip to its nearest \
follower plus one fdatasync.\n\n\
The local cluster and its data are removed at the end (nodes get SIGTERM, then SIGKILL after \
10 s). Records are acknowledged with --ack quorum (durable on a majority) unless told otherwise.";

/// Flags of `raftline bench cluster`.
#[derive(Args, Debug, Clone)]
pub struct ClusterBenchArgs {
    /// Producer connections (all driven by the --load-threads generator threads).
    #[arg(short = 'P', long, default_value_t = 4)]
    pub producers: usize,
    /// Appends each producer keeps in flight.
    #[arg(short = 'W', long, default_value_t = 1)]
    pub window: usize,
    /// Records per append.
    #[arg(short = 'B', long, default_value_t = 1)]
    pub batch_records: usize,
    /// Bytes of each record's value.
    #[arg(short = 'V', long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// When the cluster acknowledges an append.
    #[arg(long, default_value_t = AckMode::Quorum, value_name = "quorum|leader|none")]
    pub ack: AckMode,
    /// Fixed total rate in appends per second over all producers (default: as fast as the
    /// windows allow); latency is then measured from each append's intended send time.
    #[arg(long, value_name = "APPENDS_PER_S")]
    pub rate: Option<f64>,
    /// Directory for the local cluster's data and the disk probes (a temporary directory inside
    /// it is removed at the end).
    #[arg(long, default_value = "./data/bench-cluster")]
    pub dir: PathBuf,
    /// Target a running cluster at these client addresses instead of starting one (the disk
    /// probes still run in --dir).
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub bootstrap: Option<Vec<String>>,
    /// With --bootstrap: the cluster's name (as given to its servers' --cluster-id).
    #[arg(long = "cluster-id", value_name = "NAME", default_value = crate::local_cluster::DEV_CLUSTER)]
    pub cluster: String,
    /// With --bootstrap: the leader's metrics address (host:port), for fdatasyncs/s and records
    /// per fdatasync; without it those figures are left out.
    #[arg(long, value_name = "HOST:PORT")]
    pub leader_metrics: Option<SocketAddr>,
    /// Seconds each disk probe runs (4 KiB fdatasync, then sequential bandwidth).
    #[arg(long, default_value_t = 1.0)]
    pub disk_probe_secs: f64,
    /// Consumers tailing the log from its start while the producers run (read records/s and
    /// produce->consume latency; the latency needs -V 16 or more).
    #[arg(short = 'C', long, default_value_t = 0)]
    pub consumers: usize,
    /// Workload W4 instead of a load: fill the log with N records (big batches), then time one
    /// consumer reading all of them from offset 0, checking every offset arrives once, in order.
    #[arg(long, value_name = "N")]
    pub tail_log: Option<u64>,
    /// Sweep a grid of P x W points (each a short run on the same cluster; -P and -W are then
    /// ignored): throughput vs latency as a table, in --json, and as a chart with --svg.
    #[arg(long)]
    pub sweep: bool,
    /// Producer counts of the sweep grid.
    #[arg(long, value_delimiter = ',', default_values_t = sweep::DEFAULT_PRODUCERS.to_vec())]
    pub sweep_producers: Vec<usize>,
    /// Windows of the sweep grid (one curve each).
    #[arg(long, value_delimiter = ',', default_values_t = sweep::DEFAULT_WINDOWS.to_vec())]
    pub sweep_windows: Vec<usize>,
    /// Measured seconds per sweep point (after 1 s of warm-up, or --warmup if shorter).
    #[arg(long, default_value_t = 3.0)]
    pub sweep_point_secs: f64,
    /// With --sweep: write the throughput-vs-latency chart to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Load generator threads; the P connections are split between them (each thread drives
    /// its connections through one epoll set).
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Load a NULL NODE instead of a cluster: one process that validates every append as a
    /// leader does and answers it at once (no Raft, no disk, no followers). Its figures are the
    /// ceiling of the client path on this machine (generator, loopback TCP, frames, event loop)
    /// that the cluster's are read against.
    #[arg(long)]
    pub null_node: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// EMULATION: the local cluster's logs hold each fdatasync to this reference device's
    /// latency (`raftline server --emulate-disk`); marked in the report. See `bench profiles`.
    #[arg(long, value_enum, value_name = "hdd|sata|nvme")]
    pub emulate_disk: Option<DiskProfile>,
    /// A flag added to every local server's command line (repeatable; e.g.
    /// `--server-arg=--durable-mark-before-ack`), to measure a server setting; named in the
    /// report.
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// The local cluster in network namespaces with delayed links (see `--netns`).
    #[command(flatten)]
    pub netns: NetnsArgs,
}

/// First line of a `--null-node` report.
const NULL_NODE_BANNER: &str =
    "NULL NODE: appends validated and answered at once, no Raft, no disk, \
no followers: the ceiling of the client path on this machine, not a cluster's figures\n";
/// Longest the generator waits for one answer: far beyond any healthy commit, short enough that
/// a wedged cluster ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest warm-up of one sweep point (the cluster is already warm from the previous point).
const SWEEP_WARMUP_S: f64 = 1.0;
/// Largest scratch file of the 4 KiB fdatasync probe (prewritten first, so kept small).
const FSYNC_PROBE_FILE_BYTES: u64 = 64 << 20;
/// Largest scratch file of the bandwidth probe.
const BANDWIDTH_PROBE_FILE_BYTES: u64 = 2 << 30;

/// What was run.
#[derive(Debug, Serialize)]
pub struct BenchSetup {
    /// "local" (3 child nodes started by the benchmark), "netns" (the same, each in its own
    /// network namespace), "bootstrap" (a running cluster) or "null-node" (`--null-node`: no
    /// cluster, the client path's ceiling).
    pub cluster: &'static str,
    /// Producer connections.
    pub producers: usize,
    /// Appends in flight per producer.
    pub window: usize,
    /// Records per append.
    pub batch_records: usize,
    /// Bytes per record value.
    pub value_bytes: usize,
    /// Acknowledgement mode.
    pub ack: String,
    /// Fixed total appends/s, if any.
    pub rate_appends_per_s: Option<f64>,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Measured seconds asked for.
    pub duration_s: f64,
    /// EMULATION in effect on the cluster's logs (null: the real disk).
    pub emulated_disk: Option<EmulatedDisk>,
    /// `--server-arg` flags every local server ran with.
    pub server_args: Vec<String>,
}

/// The disk's own limits, measured on the benchmark's directory.
#[derive(Clone, Debug, Serialize)]
pub struct DiskFigures {
    /// How the probes reached the disk.
    pub io_path: IoPath,
    /// 4 KiB write + fdatasync commits per second, one at a time.
    pub fdatasync_4k_per_s: f64,
    /// Latency of one 4 KiB write + fdatasync.
    pub fdatasync_4k_commit_us: LatencySummary,
    /// O_DIRECT sequential bandwidth (1 MiB writes, 8 in flight, one fdatasync at the end), MB/s.
    pub sequential_mb_per_s: f64,
}

/// The result of one run (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct ClusterBenchReport {
    /// What was run.
    pub setup: BenchSetup,
    /// The measured load (absent in the sweep and tail modes).
    #[serde(flatten)]
    pub load: Option<LoadFigures>,
    /// With --tail-log: the prefill and the consumer's read.
    pub tail: Option<TailFigures>,
    /// With --sweep: one measured point per (P, W).
    pub sweep: Option<Vec<SweepPoint>>,
    /// The disk's own limits.
    pub disk: DiskFigures,
    /// With --netns: the namespaces' links, measured before the nodes started.
    pub netns: Option<NetnsFigures>,
    /// With --netns: round trip to the leader's nearest follower + one fdatasync, the floor the
    /// measured append latency is read against.
    pub commit_floor: Option<CommitFloor>,
    /// value_mb_per_s / (disk sequential MB/s / 3 replicas): the share of the bandwidth each of
    /// the three copies could have that raftline's durable records use.
    pub durable_share_of_disk_per_replica: Option<f64>,
}

/// The measured MB/s of values as a share of what each of the three replicas could write.
fn share_of_disk(value_mb_per_s: f64, disk: &DiskFigures) -> f64 {
    let per_replica = disk.sequential_mb_per_s / local_cluster::NODES as f64;
    if per_replica > 0.0 {
        value_mb_per_s / per_replica
    } else {
        0.0
    }
}

/// What one consumer thread measured.
struct ConsumerResult {
    records: u64,
    latency: LatencyRecorder,
}

/// Runs `raftline bench cluster`.
pub fn run(args: ClusterBenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let report = in_run_dir(&args.dir, |dir, stop| run_in(&args, dir, stop))?;
    if let (Some(points), Some(svg)) = (&report.sweep, &args.svg) {
        let subtitle = format!(
            "3 nodes, B={} x V={} B, ack={}, {} s/point; disk {:.0} MB/s, 4K fsync p50 {:.0} us",
            args.batch_records,
            args.value_bytes,
            report.setup.ack,
            args.sweep_point_secs,
            report.disk.sequential_mb_per_s,
            report.disk.fdatasync_4k_commit_us.us_p50
        );
        std::fs::write(svg, sweep::render_svg(points, &subtitle))
            .with_context(|| format!("writing {}", svg.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `f` in a fresh run directory under `dir` ([`RunDir`]: removed at the end, with the
/// directories this call created if left empty) with Ctrl-C raising the stop signal.
pub fn in_run_dir<T>(
    dir: &Path,
    f: impl FnOnce(&Path, &StopSignal) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let run_dir = RunDir::create(dir)?;
    let stop = StopSignal::default();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.raise()).context("installing the Ctrl-C handler")?;
    }
    f(run_dir.path(), &stop)
}

/// Checks the flags against each other.
pub fn validate(args: &ClusterBenchArgs) -> anyhow::Result<()> {
    args.netns.validate()?;
    anyhow::ensure!(
        args.netns.netns.is_none() || (args.bootstrap.is_none() && !args.null_node),
        "--netns places the local cluster in network namespaces: it takes no --bootstrap or \
         --null-node (run a --bootstrap benchmark inside a namespace with `ip netns exec`)"
    );
    anyhow::ensure!(
        args.emulate_disk.is_none() || args.bootstrap.is_none(),
        "--emulate-disk configures the local cluster's servers; a --bootstrap cluster emulates \
         only if its servers were started with --emulate-disk"
    );
    anyhow::ensure!(
        args.server_args.is_empty() || (args.bootstrap.is_none() && !args.null_node),
        "--server-arg configures the local cluster's servers: it takes no --bootstrap or \
         --null-node"
    );
    anyhow::ensure!(
        !args.null_node
            || (args.bootstrap.is_none()
                && args.emulate_disk.is_none()
                && args.tail_log.is_none()
                && args.consumers == 0),
        "--null-node replaces the cluster and keeps no log: it takes no --bootstrap, \
         --emulate-disk, --tail-log or --consumers"
    );
    anyhow::ensure!(args.producers > 0, "--producers must be at least 1");
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    anyhow::ensure!(args.load_threads > 0, "--load-threads must be at least 1");
    anyhow::ensure!(args.batch_records > 0, "--batch-records must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration <= 3600.0,
        "--duration must be in (0, 3600] seconds"
    );
    anyhow::ensure!(
        (0.0..=600.0).contains(&args.warmup),
        "--warmup must be in [0, 600] seconds"
    );
    anyhow::ensure!(
        args.disk_probe_secs > 0.0 && args.disk_probe_secs <= 60.0,
        "--disk-probe-secs must be in (0, 60]"
    );
    if args.sweep {
        anyhow::ensure!(
            !args.sweep_producers.is_empty()
                && !args.sweep_windows.is_empty()
                && args
                    .sweep_producers
                    .iter()
                    .chain(&args.sweep_windows)
                    .all(|&n| n > 0),
            "--sweep-producers and --sweep-windows must list numbers of at least 1"
        );
        anyhow::ensure!(
            args.sweep_point_secs > 0.0,
            "--sweep-point-secs must be positive"
        );
        let points = args.sweep_producers.len() * args.sweep_windows.len();
        let total = points as f64 * (args.sweep_point_secs + args.warmup.min(SWEEP_WARMUP_S));
        anyhow::ensure!(
            total <= sweep::SWEEP_SECS_MAX,
            "the sweep would take {total:.0} s ({points} points); at most {:.0} s: fewer points or a shorter --sweep-point-secs",
            sweep::SWEEP_SECS_MAX
        );
        anyhow::ensure!(
            args.tail_log.is_none(),
            "--sweep and --tail-log are separate runs"
        );
    }
    anyhow::ensure!(
        args.svg.is_none() || args.sweep,
        "--svg draws the sweep: add --sweep"
    );
    if let Some(records) = args.tail_log {
        anyhow::ensure!(records > 0, "--tail-log must be at least 1 record");
    }
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number"
        );
    }
    Ok(())
}

fn run_in(
    args: &ClusterBenchArgs,
    dir: &Path,
    stop: &StopSignal,
) -> anyhow::Result<ClusterBenchReport> {
    // The disk first, while nothing else writes to it.
    let disk = measure_disk(dir, args.disk_probe_secs, stop)?;
    run_with_disk(args, dir, disk, stop)
}

/// One run against a cluster (a local one in `dir`, or --bootstrap) beside `disk`, the disk's
/// limits measured beforehand.
pub fn run_with_disk(
    args: &ClusterBenchArgs,
    dir: &Path,
    disk: DiskFigures,
    stop: &StopSignal,
) -> anyhow::Result<ClusterBenchReport> {
    let mut local = None;
    let mut null_node = None;
    let mut netns = None;
    let mut commit_floor = None;
    let me = Watched {
        label: "bench (load generator, consumers)".to_string(),
        pid: std::process::id(),
    };
    let target = match &args.bootstrap {
        Some(bootstrap) => Target {
            config: ClientConfig::new(bootstrap.clone(), ClusterId::from_name(&args.cluster)),
            metrics_addr: args.leader_metrics,
            watched: vec![me],
        },
        None if args.null_node => {
            let address = local_cluster::node_addrs(local_cluster::free_base_port()?, 1).1;
            let node = null_node.insert(NullNodeProcess::start(
                dir,
                address,
                crate::local_cluster::DEV_CLUSTER,
            )?);
            Target {
                config: ClientConfig::new(
                    vec![address.to_string()],
                    ClusterId::from_name(crate::local_cluster::DEV_CLUSTER),
                ),
                metrics_addr: None,
                watched: vec![
                    Watched {
                        label: "NULL NODE".to_string(),
                        pid: node.pid(),
                    },
                    me,
                ],
            }
        }
        None => {
            let base = local_cluster::free_base_port()?;
            // W4 reads the whole log from offset 0: the nodes must not compact it meanwhile.
            let mut server_args: Vec<String> = match args.tail_log {
                Some(records) => vec![
                    "--retain-mib".to_string(),
                    tail::retain_mib(records, args.value_bytes).to_string(),
                ],
                None => Vec::new(),
            };
            server_args.extend(emulated_disk::server_args(args.emulate_disk));
            server_args.extend(args.server_args.iter().cloned());
            let placement = match args.netns.netns {
                Some(scenario) => {
                    let run: &NetnsRun = netns.insert(NetnsRun::start(
                        &args.netns,
                        scenario,
                        local_cluster::NODES,
                    )?);
                    server_args.extend(scenario.server_args());
                    Placement::Netns(run.topology.clone())
                }
                None => Placement::Loopback { base },
            };
            let cluster = local.insert(
                Launch::new(dir, placement, crate::local_cluster::DEV_CLUSTER)
                    .server_args(&server_args)
                    .start()?,
            );
            let leader = cluster.wait_for_leader()?;
            commit_floor = netns
                .as_ref()
                .and_then(|n| n.figures.floor(leader, &disk.fdatasync_4k_commit_us));
            let mut watched: Vec<Watched> = cluster
                .node_pids()
                .into_iter()
                .map(|(id, pid)| Watched {
                    label: if id == leader {
                        format!("node {id} (leader)")
                    } else {
                        format!("node {id}")
                    },
                    pid,
                })
                .collect();
            watched.push(me);
            Target {
                config: cluster.client_config(),
                metrics_addr: Some(cluster.metrics_addr(leader)),
                watched,
            }
        }
    };
    let result = match args.tail_log {
        Some(records) => {
            let config = load_config(&target.config, args.ack, 1, 1);
            tail::run(&config, records, args.value_bytes, &target.watched, stop).map(Mode::Tail)
        }
        None if args.sweep => sweep(args, &target, stop).map(Mode::Sweep),
        None => load(args, &target, stop).map(|l| Mode::Load(Box::new(l))),
    };
    drop(null_node);
    if let Some(mut cluster) = local {
        for outcome in cluster.stop() {
            if outcome.status.is_none() {
                eprintln!(
                    "node {} did not stop within the deadline; it was killed",
                    outcome.id
                );
            }
        }
    }
    // After the nodes: the namespaces go last.
    let netns = netns.map(|n| n.figures);
    let (mut load, mut tail, mut sweep) = (None, None, None);
    match result? {
        Mode::Load(figures) => load = Some(*figures),
        Mode::Tail(figures) => tail = Some(figures),
        Mode::Sweep(points) => sweep = Some(points),
    }
    Ok(ClusterBenchReport {
        setup: setup(args),
        durable_share_of_disk_per_replica: load
            .as_ref()
            .filter(|_| !args.null_node)
            .map(|l| share_of_disk(l.value_mb_per_s, &disk)),
        load,
        tail,
        sweep,
        disk,
        netns,
        commit_floor,
    })
}

/// Runs every point of the grid on the same cluster, one after the other.
fn sweep(
    args: &ClusterBenchArgs,
    target: &Target,
    stop: &StopSignal,
) -> anyhow::Result<Vec<SweepPoint>> {
    let mut points = Vec::new();
    for (producers, window) in sweep::grid(&args.sweep_producers, &args.sweep_windows) {
        let point_args = ClusterBenchArgs {
            producers,
            window,
            duration: args.sweep_point_secs,
            warmup: args.warmup.min(SWEEP_WARMUP_S),
            ..args.clone()
        };
        eprintln!("sweep: P={producers} W={window}");
        let figures = load(&point_args, target, stop)
            .with_context(|| format!("sweep point P={producers} W={window}"))?;
        points.push(SweepPoint {
            producers,
            window,
            figures,
        });
    }
    Ok(points)
}

/// What a run measured, by mode.
enum Mode {
    Load(Box<LoadFigures>),
    Tail(TailFigures),
    Sweep(Vec<SweepPoint>),
}

fn setup(args: &ClusterBenchArgs) -> BenchSetup {
    BenchSetup {
        cluster: if args.bootstrap.is_some() {
            "bootstrap"
        } else if args.null_node {
            "null-node"
        } else if args.netns.netns.is_some() {
            "netns"
        } else {
            "local"
        },
        producers: args.producers,
        window: args.window,
        batch_records: args.batch_records,
        value_bytes: args.value_bytes,
        ack: args.ack.to_string(),
        rate_appends_per_s: args.rate,
        warmup_s: args.warmup,
        duration_s: args.duration,
        emulated_disk: args.emulate_disk.map(EmulatedDisk::from),
        server_args: args.server_args.clone(),
    }
}

/// The disk's 4 KiB fdatasync rate and sequential bandwidth in `dir`, `secs` each.
pub fn measure_disk(dir: &Path, secs: f64, stop: &StopSignal) -> anyhow::Result<DiskFigures> {
    let duration = Duration::from_secs_f64(secs);
    let (path, refusals) = resolve_io_path(dir, IoPath::DirectUring)?;
    for refusal in refusals {
        eprintln!("disk probe: {refusal}; using a slower path");
    }
    let mut probe = FsyncProbe::new(4096, duration, path);
    // Like the log's segments, which are zero-filled before use.
    probe.layout = FileLayout::Prewritten;
    probe.file_bytes_max = FSYNC_PROBE_FILE_BYTES;
    let fsync = measure_fdatasync(dir, &probe, stop).context("4 KiB fdatasync probe")?;
    let bandwidth_path = if path.is_direct() {
        path
    } else {
        IoPath::Buffered
    };
    let bandwidth = measure_sequential_bandwidth(
        dir,
        &BandwidthProbe {
            write_bytes: 1 << 20,
            queue_depth: 8,
            duration,
            file_bytes_max: BANDWIDTH_PROBE_FILE_BYTES,
            path: bandwidth_path,
        },
        stop,
    )
    .context("sequential bandwidth probe")?;
    Ok(DiskFigures {
        io_path: path,
        fdatasync_4k_per_s: fsync.commits_per_s,
        fdatasync_4k_commit_us: fsync.commit,
        sequential_mb_per_s: bandwidth.bytes_per_s / 1e6,
    })
}

/// What the benchmark knows about the cluster it loads.
struct Target {
    config: ClientConfig,
    /// The leader's metrics endpoint, if known.
    metrics_addr: Option<SocketAddr>,
    /// Processes whose CPU is accounted (the local nodes and this process).
    watched: Vec<Watched>,
}

/// The client configuration of the load: exactly B records per append, never cut by bytes or
/// lingering.
fn load_config(
    args: &ClientConfig,
    ack: AckMode,
    window: usize,
    batch_records: usize,
) -> ClientConfig {
    let mut config = args.clone();
    config.ack = ack;
    config.window_appends = window;
    config.batch_records_max = batch_records;
    config.batch_bytes_max = usize::MAX;
    config.linger = Duration::from_secs(24 * 3600);
    config.request_timeout = REQUEST_TIMEOUT;
    config
}

/// One measured run of the load (and the consumers) on a running cluster.
fn load(
    args: &ClusterBenchArgs,
    target: &Target,
    stop: &StopSignal,
) -> anyhow::Result<LoadFigures> {
    let config = load_config(&target.config, args.ack, args.window, args.batch_records);
    let leader_before = leader_id(&config);
    let shared = Shared::new();
    let spec = LoadSpec {
        connections: args.producers,
        window: args.window,
        batch_records: args.batch_records,
        value_bytes: args.value_bytes,
        rate: args.rate,
        threads: args.load_threads,
        stamp_values: args.consumers > 0,
    };
    let threads = load::spawn(&config, spec, &shared)?;
    let consumers: Vec<JoinHandle<anyhow::Result<ConsumerResult>>> = (0..args.consumers)
        .map(|i| {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            std::thread::Builder::new()
                .name(format!("consumer-{i}"))
                .spawn(move || consume(config, &shared))
                .context("starting a consumer thread")
        })
        .collect::<anyhow::Result<_>>()?;
    let bar = progress_bar(args.warmup + args.duration);
    let started = Instant::now();
    let warmup = Duration::from_secs_f64(args.warmup);
    wait_phase(&bar, &shared, started, warmup, stop, threads.as_slice());
    let metrics_before = target.metrics_addr.map(scrape_metrics).transpose()?;
    let cpu_before = cpu::sample(&target.watched);
    let measure_start = Instant::now();
    shared.start_measuring();
    wait_phase(
        &bar,
        &shared,
        started,
        warmup + Duration::from_secs_f64(args.duration),
        stop,
        threads.as_slice(),
    );
    shared.stop();
    let elapsed_s = measure_start.elapsed().as_secs_f64();
    let cpu_after = cpu::sample(&target.watched);
    let metrics_after = target.metrics_addr.map(scrape_metrics).transpose()?;
    bar.finish_and_clear();

    let mut latency = LatencyRecorder::new();
    let (mut records, mut appends, mut refused, mut resent) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut consumed = LatencyRecorder::new();
    let mut consumed_records = 0;
    for consumer in consumers {
        match consumer.join() {
            Ok(Ok(r)) => {
                consumed_records += r.records;
                consumed.merge(&r.latency);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a consumer thread panicked".to_string()),
        }
    }
    for thread in threads {
        match thread.join() {
            Ok(Ok(r)) => {
                records += r.records;
                appends += r.appends;
                refused += r.refused;
                resent += r.resent;
                latency.merge(&r.latency);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a load generator thread panicked".to_string()),
        }
    }
    if stop.is_raised() {
        bail!("interrupted");
    }
    if let Some(first) = failures.first() {
        bail!("{} load thread(s) failed; first: {first}", failures.len());
    }
    let leader_after = leader_id(&config);
    let leader = match (metrics_before, metrics_after, leader_before) {
        (Some(before), Some(after), Some(node_id)) => {
            let fsyncs = after.fdatasyncs.saturating_sub(before.fdatasyncs);
            let bytes = after.log_bytes.saturating_sub(before.log_bytes);
            Some(LeaderFigures {
                node_id,
                fdatasyncs_per_s: fsyncs as f64 / elapsed_s,
                records_per_fdatasync: if fsyncs == 0 {
                    0.0
                } else {
                    records as f64 / fsyncs as f64
                },
                log_mb_per_s: bytes as f64 / elapsed_s / 1e6,
                shipped_to_followers_mb_per_s: match (before.peer_bytes, after.peer_bytes) {
                    (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / elapsed_s / 1e6),
                    _ => None,
                },
            })
        }
        _ => None,
    };
    let cpu = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) => Some(cpu::between(&before, &after, &target.watched)),
        _ => None,
    };
    let generator_cpu_percent = cpu.as_ref().and_then(|c| {
        let own = c.processes.iter().find(|p| p.pid == std::process::id())?;
        Some(
            own.threads
                .iter()
                .filter(|t| t.name.starts_with("load-"))
                .map(|t| t.cpu_percent)
                .sum(),
        )
    });
    let records_per_s = records as f64 / elapsed_s;
    Ok(LoadFigures {
        elapsed_s,
        records,
        appends,
        records_refused: refused,
        appends_resent: resent,
        records_per_s,
        appends_per_s: appends as f64 / elapsed_s,
        value_mb_per_s: records_per_s * args.value_bytes as f64 / 1e6,
        latency_us: latency.summary(),
        leader,
        leader_changed: leader_before != leader_after,
        consumers: (args.consumers > 0).then(|| ConsumerFigures {
            consumers: args.consumers,
            records: consumed_records,
            records_per_s: consumed_records as f64 / elapsed_s,
            produce_to_consume_us: consumed.summary(),
        }),
        generator: GeneratorFigures {
            threads: args.load_threads.clamp(1, args.producers),
            connections: args.producers,
            cpu_percent: generator_cpu_percent,
        },
        cpu,
    })
}

/// The id of the node that leads now, if one answers as leader.
fn leader_id(config: &ClientConfig) -> Option<u64> {
    status_of_all(config)
        .into_iter()
        .filter_map(|s| s.result.ok())
        .find(|s| s.role == NodeRole::Leader)
        .map(|s| s.node_id)
}

fn progress_bar(total_s: f64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new((total_s * 10.0) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed}/{duration} {msg}")
            .expect("static template is valid"),
    );
    bar
}

/// Sleeps until `until` after `started`, updating the bar; returns early on Ctrl-C or when
/// every producer has ended (failed).
fn wait_phase(
    bar: &ProgressBar,
    shared: &Shared,
    started: Instant,
    until: Duration,
    stop: &StopSignal,
    threads: &[JoinHandle<anyhow::Result<LoadResult>>],
) {
    let mut last = (Instant::now(), shared.acked_records.load(Ordering::Relaxed));
    while started.elapsed() < until && !stop.is_raised() {
        if threads.iter().all(|t| t.is_finished()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100).min(until.saturating_sub(started.elapsed())));
        let acked = shared.acked_records.load(Ordering::Relaxed);
        let phase = if shared.phase.load(Ordering::Relaxed) == PHASE_WARMUP {
            "warm-up"
        } else {
            "measuring"
        };
        let rate = (acked - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), acked);
        bar.set_position((started.elapsed().as_secs_f64() * 10.0) as u64);
        bar.set_message(format!("{phase}: {rate:>10.0} records/s"));
    }
}

/// One consumer: tails the log from its start until the phase says stop; counts the records
/// delivered while measuring and, for stamped records sent while measuring, the time from send
/// to delivery.
fn consume(config: ClientConfig, shared: &Shared) -> anyhow::Result<ConsumerResult> {
    let mut subscription = Subscription::open(config, StartFrom::Earliest)?;
    let mut result = ConsumerResult {
        records: 0,
        latency: LatencyRecorder::new(),
    };
    let mut measure_start_ns = None;
    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if phase == PHASE_STOP {
            return Ok(result);
        }
        let Some(consumed) = subscription.next_record(Some(Duration::from_millis(100)))? else {
            continue;
        };
        if phase != PHASE_MEASURE {
            continue;
        }
        let now_ns = shared.epoch.elapsed().as_nanos() as u64;
        let window_start = *measure_start_ns.get_or_insert(now_ns);
        result.records += 1;
        let value = &consumed.record.value;
        if value.len() >= STAMP_BYTES && &value[..8] == STAMP_MAGIC {
            let sent_ns = u64::from_le_bytes(value[8..STAMP_BYTES].try_into().expect("8 bytes"));
            if sent_ns >= window_start {
                result
                    .latency
                    .record(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
            }
        }
    }
}

/// The leader counters the benchmark reads from /metrics.
struct MetricsSample {
    fdatasyncs: u64,
    log_bytes: u64,
    /// Absent on nodes that do not export it.
    peer_bytes: Option<u64>,
}

/// The leader counters the benchmark reads, from one scrape of its /metrics.
fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<MetricsSample> {
    let metrics = NodeMetrics::scrape(addr)?;
    let counter = |name: &str| metrics.value(name).map(|v| v as u64);
    Ok(MetricsSample {
        fdatasyncs: counter("raftline_fdatasyncs_total")?,
        log_bytes: counter("raftline_log_bytes_written_total")?,
        peer_bytes: counter("raftline_peer_bytes_sent_total").ok(),
    })
}

fn render_text(r: &ClusterBenchReport) -> String {
    let s = &r.setup;
    let mut out = if let Some(points) = &r.sweep {
        let list = |f: fn(&SweepPoint) -> usize| {
            let mut v: Vec<usize> = points.iter().map(f).collect();
            v.sort_unstable();
            v.dedup();
            v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        };
        format!(
            "raftline bench cluster ({} cluster): sweep over P={} x W={}, B={} records of V={} bytes, ack={}\n",
            s.cluster,
            list(|p| p.producers),
            list(|p| p.window),
            s.batch_records,
            s.value_bytes,
            s.ack
        )
    } else if let Some(t) = &r.tail {
        format!(
            "raftline bench cluster ({} cluster): --tail-log {} records of V={} bytes, ack={}\n",
            s.cluster, t.records_in_log, s.value_bytes, s.ack
        )
    } else {
        format!(
        "raftline bench cluster ({} cluster): P={} producers x W={} in flight x B={} records of V={} bytes, ack={}{}\n",
        s.cluster,
        s.producers,
        s.window,
        s.batch_records,
        s.value_bytes,
        s.ack,
        s.rate_appends_per_s
            .map_or(String::new(), |r| format!(", fixed rate {r:.0} appends/s"))
        )
    };
    if !s.server_args.is_empty() {
        out += &format!("server flags: {}\n", s.server_args.join(" "));
    }
    if let Some(emulated) = &s.emulated_disk {
        out.insert_str(0, &format!("{}\n", emulated.profile.banner()));
    }
    if s.cluster == "null-node" {
        out.insert_str(0, NULL_NODE_BANNER);
    }
    if let Some(load) = &r.load {
        out += &render_load(load);
    }
    if let Some(tail) = &r.tail {
        out += &render_tail(tail);
    }
    if let Some(points) = &r.sweep {
        out += &sweep::render_table(points);
    }
    let d = &r.disk;
    out += &format!(
        "disk        4 KiB write+fdatasync {:.0}/s (p50 {:.0} us, p99 {:.0} us, {}); O_DIRECT sequential {:.0} MB/s\n",
        d.fdatasync_4k_per_s,
        d.fdatasync_4k_commit_us.us_p50,
        d.fdatasync_4k_commit_us.us_p99,
        d.io_path.name(),
        d.sequential_mb_per_s
    );
    if let Some(netns) = &r.netns {
        out += &netns.render();
    }
    if let Some(f) = &r.commit_floor {
        out += &format!(
            "floor       leader {}: round trip to node {} + 4 KiB fdatasync = p50 {:.2} ms (p99s summed {:.2} ms){}\n",
            f.leader,
            f.nearest_follower,
            f.us_p50 / 1e3,
            f.us_p99_sum / 1e3,
            r.load.as_ref().map_or(String::new(), |l| format!(
                "; appends acknowledged p50 {:.2} ms, p99 {:.2} ms",
                l.latency_us.us_p50 / 1e3,
                l.latency_us.us_p99 / 1e3
            ))
        );
    }
    if let (Some(load), Some(share)) = (&r.load, r.durable_share_of_disk_per_replica) {
        out += &format!(
            "share       {:.1} MB/s durable = {:.2}% of the disk's bandwidth / 3 replicas ({:.0} MB/s)\n",
            load.value_mb_per_s,
            share * 100.0,
            d.sequential_mb_per_s / 3.0
        );
    }
    out
}

fn render_load(r: &LoadFigures) -> String {
    let l = &r.latency_us;
    let mut out = format!(
        "committed   {:.0} records/s, {:.0} appends/s, {:.1} MB/s of values ({} records in {:.1} s{}{})\n",
        r.records_per_s,
        r.appends_per_s,
        r.value_mb_per_s,
        r.records,
        r.elapsed_s,
        if r.records_refused > 0 {
            format!(", {} refused", r.records_refused)
        } else {
            String::new()
        },
        if r.appends_resent > 0 {
            format!(", {} appends resent", r.appends_resent)
        } else {
            String::new()
        }
    );
    out += &format!(
        "latency     append->ack p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms\n",
        l.us_p50 / 1e3,
        l.us_p90 / 1e3,
        l.us_p99 / 1e3,
        l.us_p999 / 1e3,
        l.us_max / 1e3
    );
    match &r.leader {
        Some(leader) => {
            out += &format!(
                "leader      node {}: {:.0} fdatasyncs/s, {:.1} records per fdatasync, log written {:.1} MB/s{}\n",
                leader.node_id,
                leader.fdatasyncs_per_s,
                leader.records_per_fdatasync,
                leader.log_mb_per_s,
                leader
                    .shipped_to_followers_mb_per_s
                    .map_or(String::new(), |m| format!(", shipped to followers {m:.1} MB/s"))
            );
        }
        None => out += "leader      (no leader metrics; with --bootstrap: pass --leader-metrics)\n",
    }
    if let Some(c) = &r.consumers {
        let l = &c.produce_to_consume_us;
        out += &format!(
            "consumers   {} tailing from offset 0: {:.0} records/s read; produce->consume p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n",
            c.consumers,
            c.records_per_s,
            l.us_p50 / 1e3,
            l.us_p99 / 1e3,
            l.us_max / 1e3
        );
    }
    if r.leader_changed {
        out += "warning     the leader changed during the run: an election disturbed it\n";
    }
    let g = &r.generator;
    out += &format!(
        "generator   {} thread(s) driving {} connections{}\n",
        g.threads,
        g.connections,
        g.cpu_percent
            .map_or(String::new(), |c| format!(", used {c:.0}% of a core"))
    );
    if let Some(cpu) = &r.cpu {
        out += &render_cpu(cpu);
    }
    out
}

fn render_tail(t: &TailFigures) -> String {
    let mut out = format!(
        "prefill     {} records in batches of {} (P=4, W=8): {:.0} records/s ({:.1} s)\n",
        t.records_in_log, t.prefill_batch_records, t.prefill_records_per_s, t.prefill_s
    );
    out += &format!(
        "tail        one consumer from offset 0: {} records in {} batches, every offset once and in order; {:.0} records/s, {:.1} MB/s of values ({:.2} s)\n",
        t.records_read, t.batches_read, t.read_records_per_s, t.read_value_mb_per_s, t.read_s
    );
    if let Some(cpu) = &t.read_cpu {
        out += &render_cpu(cpu);
        // Independent of how busy the machine was: what each record cost each process.
        let costs: Vec<String> = cpu
            .processes
            .iter()
            .filter(|p| p.cpu_percent >= 2.0)
            .map(|p| {
                let us = p.cpu_percent / 100.0 * t.read_s / t.records_read.max(1) as f64 * 1e6;
                format!("{} {us:.3} us", p.label)
            })
            .collect();
        out += &format!("            CPU per record read: {}\n", costs.join(", "));
    }
    out
}

/// Per core, then per process with its busiest threads.
fn render_cpu(cpu: &CpuFigures) -> String {
    let cores: Vec<String> = cpu
        .cores
        .iter()
        .map(|c| format!("cpu{} {:.0}%", c.core, c.busy_percent))
        .collect();
    let mut out = format!("cpu         cores busy: {}\n", cores.join(", "));
    for p in &cpu.processes {
        let threads: Vec<String> = p
            .threads
            .iter()
            .filter(|t| t.cpu_percent >= 0.5)
            .map(|t| {
                if t.threads > 1 {
                    format!("{} x{} {:.0}%", t.name, t.threads, t.cpu_percent)
                } else {
                    format!("{} {:.0}%", t.name, t.cpu_percent)
                }
            })
            .collect();
        out += &format!(
            "            {} [pid {}]: {:.0}% of a core ({})\n",
            p.label,
            p.pid,
            p.cpu_percent,
            threads.join(", ")
        );
    }
    out
}
