//! `raftline bench cluster`: load a 3-node cluster with P pipelined producers and print what
//! it committed, how long each append took to be acknowledged, how the leader's group commit
//! behaved, and beside it the disk's own limits measured in the same run on the same directory.

use std::collections::VecDeque;
use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use raftline_bench::fsync::{
    measure_fdatasync, measure_sequential_bandwidth, resolve_io_path, BandwidthProbe, FileLayout,
    FsyncProbe, IoPath, LatencySummary, StopSignal,
};
use raftline_bench::latency::LatencyRecorder;
use raftline_log::Record;
use raftline_netio::client::{status_of_all, ClientConfig, Producer, Subscription};
use raftline_netio::client_proto::{AckMode, NodeRole, StartFrom};
use raftline_netio::cluster_id::ClusterId;
use serde::Serialize;

use crate::emulated_disk::{self, DiskProfile, EmulatedDisk};
use crate::local_cluster::{self, LocalCluster, RunDir};
use crate::produce::AckArg;

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
The local cluster and its data are removed at the end (nodes get SIGTERM, then SIGKILL after \
10 s). Records are acknowledged with --ack quorum (durable on a majority) unless told otherwise.";

/// Flags of `raftline bench cluster`.
#[derive(Args, Debug)]
pub struct ClusterBenchArgs {
    /// Producer connections (one thread each).
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
    #[arg(long, value_enum, default_value_t = AckArg::Quorum)]
    pub ack: AckArg,
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
    #[arg(long = "cluster-id", value_name = "NAME", default_value = crate::dev::DEV_CLUSTER)]
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
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// EMULATION: the local cluster's logs hold each fdatasync to this reference device's
    /// latency (`raftline server --emulate-disk`); marked in the report. See `bench profiles`.
    #[arg(long, value_enum, value_name = "hdd|sata|nvme")]
    pub emulate_disk: Option<DiskProfile>,
}

/// Longest a producer waits for one answer: far beyond any healthy commit, short enough that a
/// wedged cluster ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest scratch file of the 4 KiB fdatasync probe (prewritten first, so kept small).
const FSYNC_PROBE_FILE_BYTES: u64 = 64 << 20;
/// Largest scratch file of the bandwidth probe.
const BANDWIDTH_PROBE_FILE_BYTES: u64 = 2 << 30;

/// At a fixed rate, how often a producer waiting for its next send slot reads arrived answers
/// (the resolution of the latencies measured in that mode).
const RATE_POLL_INTERVAL: Duration = Duration::from_micros(250);

/// The run's phases, as the producer threads see them.
const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

/// What was run.
#[derive(Debug, Serialize)]
pub struct BenchSetup {
    /// "local" (3 child nodes started by the benchmark) or "bootstrap" (a running cluster).
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
}

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
    /// Measured wall time, seconds.
    pub elapsed_s: f64,
    /// Records acknowledged within the measured window.
    pub records: u64,
    /// Appends acknowledged within the measured window.
    pub appends: u64,
    /// Records the cluster refused (typed errors) within the window.
    pub records_refused: u64,
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
    /// The disk's own limits.
    pub disk: DiskFigures,
    /// value_mb_per_s / (disk sequential MB/s / 3 replicas): the share of the bandwidth each of
    /// the three copies could have that raftline's durable records use.
    pub durable_share_of_disk_per_replica: f64,
}

/// Counters the producer threads share with the progress bar.
struct Shared {
    phase: AtomicU8,
    acked_records: AtomicU64,
    /// Origin of the send times producers stamp into record values.
    epoch: Instant,
}

/// A value that starts with these bytes carries its append's send time (ns since
/// `Shared::epoch`, little-endian) in bytes 8..16.
const STAMP_MAGIC: &[u8; 8] = b"RLBENCH1";
/// Bytes of a send-time stamp at the start of a value.
const STAMP_BYTES: usize = 16;

/// What one consumer thread measured.
struct ConsumerResult {
    records: u64,
    latency: LatencyRecorder,
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

/// What one producer thread measured.
struct ProducerResult {
    records: u64,
    appends: u64,
    refused: u64,
    latency: LatencyRecorder,
}

/// Runs `raftline bench cluster`.
pub fn run(args: ClusterBenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let report = in_run_dir(&args.dir, |dir, stop| run_in(&args, dir, stop))?;
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
    anyhow::ensure!(
        args.emulate_disk.is_none() || args.bootstrap.is_none(),
        "--emulate-disk configures the local cluster's servers; a --bootstrap cluster emulates \
         only if its servers were started with --emulate-disk"
    );
    anyhow::ensure!(args.producers > 0, "--producers must be at least 1");
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
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
    let (config, metrics_addr) = match &args.bootstrap {
        Some(bootstrap) => (
            ClientConfig::new(bootstrap.clone(), ClusterId::from_name(&args.cluster)),
            args.leader_metrics,
        ),
        None => {
            let base = local_cluster::free_base_port()?;
            let cluster = local.insert(LocalCluster::start_with_args(
                dir,
                base,
                crate::dev::DEV_CLUSTER,
                &emulated_disk::server_args(args.emulate_disk),
            )?);
            let leader = cluster.wait_for_leader()?;
            (
                local_cluster::client_config(base, crate::dev::DEV_CLUSTER),
                Some(local_cluster::node_addrs(base, leader).2),
            )
        }
    };
    let result = load(args, config, metrics_addr, disk, stop);
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
    result
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

fn ack_mode(ack: AckArg) -> AckMode {
    match ack {
        AckArg::Quorum => AckMode::Quorum,
        AckArg::Leader => AckMode::Leader,
        AckArg::None => AckMode::None,
    }
}

fn load(
    args: &ClusterBenchArgs,
    mut config: ClientConfig,
    metrics_addr: Option<SocketAddr>,
    disk: DiskFigures,
    stop: &StopSignal,
) -> anyhow::Result<ClusterBenchReport> {
    config.ack = ack_mode(args.ack);
    config.window_appends = args.window;
    config.batch_records_max = args.batch_records;
    // Batches are cut by record count only: never by bytes, never by lingering.
    config.batch_bytes_max = usize::MAX;
    config.linger = Duration::from_secs(24 * 3600);
    config.request_timeout = REQUEST_TIMEOUT;
    let leader_before = leader_id(&config);
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(PHASE_WARMUP),
        acked_records: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let per_producer_rate = args.rate.map(|r| r / args.producers as f64);
    let threads: Vec<JoinHandle<anyhow::Result<ProducerResult>>> = (0..args.producers)
        .map(|i| {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            let (batch_records, value_bytes) = (args.batch_records, args.value_bytes);
            std::thread::Builder::new()
                .name(format!("producer-{i}"))
                .spawn(move || {
                    produce(
                        config,
                        &shared,
                        batch_records,
                        value_bytes,
                        per_producer_rate,
                    )
                })
                .context("starting a producer thread")
        })
        .collect::<anyhow::Result<_>>()?;

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
    let metrics_before = metrics_addr.map(scrape_metrics).transpose()?;
    let measure_start = Instant::now();
    shared.phase.store(PHASE_MEASURE, Ordering::SeqCst);
    wait_phase(
        &bar,
        &shared,
        started,
        warmup + Duration::from_secs_f64(args.duration),
        stop,
        threads.as_slice(),
    );
    shared.phase.store(PHASE_STOP, Ordering::SeqCst);
    let elapsed_s = measure_start.elapsed().as_secs_f64();
    let metrics_after = metrics_addr.map(scrape_metrics).transpose()?;
    bar.finish_and_clear();

    let mut latency = LatencyRecorder::new();
    let (mut records, mut appends, mut refused) = (0, 0, 0);
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
                latency.merge(&r.latency);
            }
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a producer thread panicked".to_string()),
        }
    }
    if stop.is_raised() {
        bail!("interrupted");
    }
    if let Some(first) = failures.first() {
        bail!("{} producer(s) failed; first: {first}", failures.len());
    }
    let leader_after = leader_id(&config);
    let records_per_s = records as f64 / elapsed_s;
    let value_mb_per_s = records_per_s * args.value_bytes as f64 / 1e6;
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
            })
        }
        _ => None,
    };
    let per_replica = disk.sequential_mb_per_s / local_cluster::NODES as f64;
    Ok(ClusterBenchReport {
        setup: BenchSetup {
            cluster: if args.bootstrap.is_some() {
                "bootstrap"
            } else {
                "local"
            },
            producers: args.producers,
            window: args.window,
            batch_records: args.batch_records,
            value_bytes: args.value_bytes,
            ack: format!("{:?}", args.ack).to_lowercase(),
            rate_appends_per_s: args.rate,
            warmup_s: args.warmup,
            duration_s: args.duration,
            emulated_disk: args.emulate_disk.map(EmulatedDisk::from),
        },
        elapsed_s,
        records,
        appends,
        records_refused: refused,
        records_per_s,
        appends_per_s: appends as f64 / elapsed_s,
        value_mb_per_s,
        latency_us: latency.summary(),
        leader,
        leader_changed: leader_before != leader_after,
        consumers: (args.consumers > 0).then(|| ConsumerFigures {
            consumers: args.consumers,
            records: consumed_records,
            records_per_s: consumed_records as f64 / elapsed_s,
            produce_to_consume_us: consumed.summary(),
        }),
        durable_share_of_disk_per_replica: if per_replica > 0.0 {
            value_mb_per_s / per_replica
        } else {
            0.0
        },
        disk,
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
    threads: &[JoinHandle<anyhow::Result<ProducerResult>>],
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

/// One producer connection: appends of `batch_records` records until the phase says stop;
/// counts and times the appends acknowledged while measuring.
fn produce(
    config: ClientConfig,
    shared: &Shared,
    batch_records: usize,
    value_bytes: usize,
    rate: Option<f64>,
) -> anyhow::Result<ProducerResult> {
    let mut producer = Producer::new(config);
    let b = batch_records as u64;
    let mut value = vec![b'x'; value_bytes];
    let mut result = ProducerResult {
        records: 0,
        appends: 0,
        refused: 0,
        latency: LatencyRecorder::new(),
    };
    // (sequence number of the append's first record, when it was sent or meant to be sent)
    let mut in_flight: VecDeque<(u64, Instant, bool)> = VecDeque::new();
    let began = Instant::now();
    let mut appends_sent = 0u64;
    loop {
        let phase = shared.phase.load(Ordering::Relaxed);
        if phase == PHASE_STOP {
            break;
        }
        let intended = rate.map(|r| began + Duration::from_secs_f64(appends_sent as f64 / r));
        if let Some(at) = intended {
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                // Wait for the slot, handling answers that arrive meanwhile.
                std::thread::sleep(wait.min(RATE_POLL_INTERVAL));
                producer.poll()?;
                account(&mut producer, &mut in_flight, &mut result, shared, b);
                continue;
            }
        }
        if value_bytes >= STAMP_BYTES {
            let sent_ns = shared.epoch.elapsed().as_nanos() as u64;
            value[..8].copy_from_slice(STAMP_MAGIC);
            value[8..STAMP_BYTES].copy_from_slice(&sent_ns.to_le_bytes());
        }
        // Every append holds exactly `b` records, so append k starts at sequence number k * b.
        for _ in 0..b {
            // The last record of the append dispatches it (waiting while the window is full).
            producer.send(Record {
                key: None,
                value: value.clone(),
                timestamp_ms: 0,
                headers: Vec::new(),
            })?;
        }
        // Closed loop: the append left when `send` returned; at a fixed rate, latency counts
        // from when it should have left.
        let sent = intended.unwrap_or_else(Instant::now);
        in_flight.push_back((appends_sent * b, sent, phase == PHASE_MEASURE));
        appends_sent += 1;
        account(&mut producer, &mut in_flight, &mut result, shared, b);
    }
    // Leave nothing unanswered on the connection; these answers are not counted.
    producer.flush()?;
    Ok(result)
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

/// Takes the answers the producer received and counts those of appends sent while measuring.
fn account(
    producer: &mut Producer,
    in_flight: &mut VecDeque<(u64, Instant, bool)>,
    result: &mut ProducerResult,
    shared: &Shared,
    batch_records: u64,
) {
    let now = Instant::now();
    let measuring = shared.phase.load(Ordering::Relaxed) == PHASE_MEASURE;
    for ack in producer.take_acks() {
        // Acks come one per record; the append is done with its last record's.
        if (ack.seq + 1) % batch_records != 0 {
            continue;
        }
        let first = ack.seq + 1 - batch_records;
        let Some(at) = in_flight.iter().position(|(seq, _, _)| *seq == first) else {
            continue;
        };
        let (_, sent, sent_measuring) = in_flight.remove(at).expect("position is in range");
        shared
            .acked_records
            .fetch_add(batch_records, Ordering::Relaxed);
        if !(measuring && sent_measuring) {
            continue;
        }
        match ack.result {
            Ok(_) => {
                result.records += batch_records;
                result.appends += 1;
                result.latency.record(now.duration_since(sent));
            }
            Err(_) => result.refused += batch_records,
        }
    }
}

/// The leader counters the benchmark reads from /metrics.
struct MetricsSample {
    fdatasyncs: u64,
    log_bytes: u64,
}

/// GET /metrics (HTTP/1.0, the node's tiny responder) and read the two counters.
fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<MetricsSample> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the leader's metrics at {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: raftline\r\n\r\n")?;
    let mut body = String::new();
    stream
        .read_to_string(&mut body)
        .with_context(|| format!("reading metrics from {addr}"))?;
    let counter = |name: &str| -> anyhow::Result<u64> {
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .map(|v| v as u64)
            .with_context(|| format!("{name} missing from the metrics of {addr}"))
    };
    Ok(MetricsSample {
        fdatasyncs: counter("raftline_fdatasyncs_total")?,
        log_bytes: counter("raftline_log_bytes_written_total")?,
    })
}

fn render_text(r: &ClusterBenchReport) -> String {
    let s = &r.setup;
    let l = &r.latency_us;
    let mut out = s
        .emulated_disk
        .as_ref()
        .map_or(String::new(), |e| format!("{}\n", e.profile.banner()));
    out += &format!(
        "raftline bench cluster ({} cluster): P={} producers x W={} in flight x B={} records of V={} bytes, ack={}{}\n",
        s.cluster,
        s.producers,
        s.window,
        s.batch_records,
        s.value_bytes,
        s.ack,
        s.rate_appends_per_s
            .map_or(String::new(), |r| format!(", fixed rate {r:.0} appends/s"))
    );
    out += &format!(
        "committed   {:.0} records/s, {:.0} appends/s, {:.1} MB/s of values ({} records in {:.1} s{})\n",
        r.records_per_s,
        r.appends_per_s,
        r.value_mb_per_s,
        r.records,
        r.elapsed_s,
        if r.records_refused > 0 {
            format!(", {} refused", r.records_refused)
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
                "leader      node {}: {:.0} fdatasyncs/s, {:.1} records per fdatasync, log written {:.1} MB/s\n",
                leader.node_id,
                leader.fdatasyncs_per_s,
                leader.records_per_fdatasync,
                leader.log_mb_per_s
            );
        }
        None => out += "leader      (no metrics address: pass --leader-metrics)\n",
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
    let d = &r.disk;
    out += &format!(
        "disk        4 KiB write+fdatasync {:.0}/s (p50 {:.0} us, p99 {:.0} us, {}); O_DIRECT sequential {:.0} MB/s\n",
        d.fdatasync_4k_per_s,
        d.fdatasync_4k_commit_us.us_p50,
        d.fdatasync_4k_commit_us.us_p99,
        d.io_path.name(),
        d.sequential_mb_per_s
    );
    out += &format!(
        "share       {:.1} MB/s durable = {:.2}% of the disk's bandwidth / 3 replicas ({:.0} MB/s)\n",
        r.value_mb_per_s,
        r.durable_share_of_disk_per_replica * 100.0,
        d.sequential_mb_per_s / 3.0
    );
    out
}
