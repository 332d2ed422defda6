//! `raftline bench snapshot`: what snapshots of a large keyed state cost a local 3-node cluster.
//! Loads `--keys` distinct keys, then measures in one run: the snapshot's size and the time to
//! write it; append → ack latency during snapshots against the same probe without one; a
//! consumer streaming the snapshot and catching up; and a wiped follower rebuilding through
//! InstallSnapshot while the probe keeps appending.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftline_log::Record;
use raftline_netio::client::{
    admin, snapshot_now, status_of, Client, ClientConfig, StateEvent, StateMode, StateSubscription,
};
use raftline_netio::client_proto::{NodeRole, NodeStatus, StartFrom};
use serde::Serialize;

use crate::latency::{LatencyRecorder, LatencySummary};
use crate::local_cluster::{self, LocalCluster, RunDir, NODES};
use crate::machine_load::MachineLoad;

/// The long `--help` of `raftline bench snapshot`.
pub const LONG_ABOUT: &str = "Measure snapshots of a large keyed state on a local 3-node \
raftline cluster.\n\n\
Starts 3 nodes (data in a temporary directory under --dir, the size trigger off: snapshots are \
taken on request), loads --keys distinct keys with --value-bytes values (batches of 1,000 \
records, acks=quorum), then, in one run:\n\
1. baseline: a probe appends one small record at a time at --rate appends/s for --probe-s \
seconds; append -> ack latency p50/p99;\n\
2. during snapshots: the same probe while every node takes `snapshot now` back to back for \
--probe-s seconds (at least one round); latency counted only while a snapshot is being taken; \
each node's time from request to durable snapshot, and the snapshot file's size;\n\
3. a consumer streams the state from a follower (the snapshot, then the log to its end): \
time and records/s;\n\
4. a follower is killed and its data directory deleted, and it is replaced as the runbook \
replaces a dead node (tools/deploy/README.md) while the probe goes on: removed from the \
configuration, then a fresh node 4 joins (--join) and catches up as a learner: time from node \
4's start until it holds the log up to the leader's end at that start, through InstallSnapshot \
(every snapshot drops the log below it: the nodes run with --retain-mib 0; the report says if \
the leader could still send the whole log instead), and the probe's latency meanwhile. (A wiped \
voter restarted under its id is refused by the cluster: it lost its vote.)\n\n\
Timing figures are only meaningful on an idle machine: the report prints the load average at \
start and end. Exit status: 0 on success, 1 on error.";

/// Flags of `raftline bench snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotBenchArgs {
    /// Distinct keys loaded before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Bytes of each loaded value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Probe appends per second (one record each, acks=quorum).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds of probing without a snapshot, and at least as long with snapshots.
    #[arg(long, default_value_t = 10.0)]
    pub probe_s: f64,
    /// Directory for the local cluster's data (a temporary directory inside it is removed at
    /// the end).
    #[arg(long, default_value = "./data/bench-snapshot")]
    pub dir: PathBuf,
    /// An extra flag for every node's `raftline server` (repeatable).
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the run directory (the nodes' data and log files).
    #[arg(long)]
    pub keep_dir: bool,
    /// Accepted for scripts written when a wiped follower could also be restarted under its
    /// id: replacing it (remove, then a fresh node joins) is now the only way.
    #[arg(long, hide = true)]
    pub replace: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The local cluster's name.
const CLUSTER: &str = "raftline-bench-snapshot";
/// Records per loading batch.
const LOAD_BATCH_RECORDS: u64 = 1000;
/// Bound on any one wait (a snapshot, a stream, a rebuild).
const DEADLINE: Duration = Duration::from_secs(600);
/// How often a rebuilding follower is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// What the probe's samples count towards.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Phase {
    Ignored = 0,
    Baseline = 1,
    Snapshot = 2,
    Rebuild = 3,
}

/// The report (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct SnapshotReport {
    /// Distinct keys loaded.
    pub keys: u64,
    /// Bytes per loaded value.
    pub value_bytes: usize,
    /// Probe appends per second.
    pub probe_rate: f64,
    /// Flags given to every server.
    pub server_args: Vec<String>,
    /// Seconds the load took (not a headline figure: batches one at a time).
    pub load_s: f64,
    /// The leader's snapshot file, bytes.
    pub snapshot_bytes: u64,
    /// Rounds of `snapshot now` on every node.
    pub snapshot_rounds: usize,
    /// Request -> durable, per node and round, milliseconds (the leader first in each round).
    pub snapshot_write_ms: Vec<f64>,
    /// Append -> ack without a snapshot.
    pub append_baseline: LatencySummary,
    /// Append -> ack while snapshots were being taken.
    pub append_during_snapshot: LatencySummary,
    /// Snapshot records a consumer streamed from a follower.
    pub stream_records: u64,
    /// Open -> caught up at the log's end, seconds.
    pub stream_s: f64,
    /// Snapshot records per second of `stream_s`.
    pub stream_records_per_s: f64,
    /// How the killed follower was rebuilt: "replace" (removed; a fresh node joined).
    pub rebuild_mode: &'static str,
    /// The rebuilt node's id.
    pub rebuilt_node: u64,
    /// Rebuilt node: (re)start -> holds the log to the leader's end at its start, seconds.
    pub rebuild_s: f64,
    /// What the rebuilt node copied: the snapshot it holds (bytes, 0 without one)...
    pub rebuilt_snapshot_bytes: u64,
    /// ... and the offsets of log after it.
    pub rebuilt_log_records: u64,
    /// Whether it was sent the snapshot (InstallSnapshot); false when the leader could still send
    /// the whole log (a small `--keys`: its cache of recent entries covers it).
    pub rebuilt_by_install_snapshot: bool,
    /// Append -> ack while the follower rebuilt.
    pub append_during_rebuild: LatencySummary,
    /// The machine's load at start and end (figures from a busy machine are suspect).
    pub load_start: MachineLoad,
    /// See `load_start`.
    pub load_end: MachineLoad,
}

/// Runs `raftline bench snapshot`.
pub fn run(args: SnapshotBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.keys > 0, "--keys must be at least 1");
    anyhow::ensure!(args.value_bytes > 0, "--value-bytes must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be in (0, 100000] appends/s"
    );
    anyhow::ensure!(
        args.probe_s > 0.0 && args.probe_s <= 600.0,
        "--probe-s must be in (0, 600]"
    );
    let run_dir = RunDir::create(&args.dir)?;
    let result = run_in(&args, &run_dir);
    if args.keep_dir {
        eprintln!("kept {}", run_dir.keep().display());
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// A thread appending one small record at a time at a fixed rate, recording each append's
/// latency into the recorder of the phase it started in.
struct Probe {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<Vec<LatencyRecorder>>>,
}

impl Probe {
    fn start(config: ClientConfig, rate: f64) -> anyhow::Result<Probe> {
        let phase = Arc::new(AtomicU8::new(Phase::Ignored as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&phase), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let mut client = Client::connect(config)?;
                let mut recorders = vec![LatencyRecorder::new(); 4];
                let spacing = Duration::from_secs_f64(1.0 / rate);
                let mut next = Instant::now();
                let mut n = 0u64;
                while !s.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    next += spacing;
                    let phase = p.load(Ordering::Relaxed) as usize;
                    let record = Record {
                        key: Some(format!("probe-{}", n % 1000).into_bytes()),
                        value: n.to_le_bytes().to_vec(),
                        timestamp_ms: 0,
                        headers: vec![],
                    };
                    n += 1;
                    let started = Instant::now();
                    client.append(&[record]).context("probe append")?;
                    recorders[phase].record(started.elapsed());
                }
                Ok(recorders)
            })
            .context("starting the probe thread")?;
        Ok(Probe {
            phase,
            stop,
            thread,
        })
    }

    fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn finish(self) -> anyhow::Result<Vec<LatencyRecorder>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the probe thread panicked"),
        }
    }
}

fn run_in(args: &SnapshotBenchArgs, run_dir: &RunDir) -> anyhow::Result<SnapshotReport> {
    let load_start = MachineLoad::now();
    let base = local_cluster::free_base_port()?;
    // Snapshots only on request; each drops the log below it, so a wiped follower must be sent
    // the snapshot.
    let mut server_args: Vec<String> = ["--snapshot-every-mib", "0", "--retain-mib", "0"]
        .map(String::from)
        .to_vec();
    server_args.extend(args.server_args.iter().cloned());
    let mut cluster = LocalCluster::start_with_args(run_dir.path(), base, CLUSTER, &server_args)?;
    let leader = cluster.wait_for_leader()?;
    let mut config = local_cluster::client_config(base, CLUSTER);
    config.failover_timeout = Duration::from_secs(30);

    let loading = Instant::now();
    load(&config, args.keys, args.value_bytes)?;
    let load_s = loading.elapsed().as_secs_f64();
    eprintln!("loaded {} keys in {load_s:.1} s", args.keys);

    let probe = Probe::start(config.clone(), args.rate)?;
    probe.set(Phase::Baseline);
    std::thread::sleep(Duration::from_secs_f64(args.probe_s));
    probe.set(Phase::Ignored);

    // Every node snapshots at once (as the size trigger makes them do), the leader listed first.
    let order: Vec<u64> = std::iter::once(leader)
        .chain((1..=NODES).filter(|&id| id != leader))
        .collect();
    let mut snapshot_write_ms = Vec::new();
    let mut snapshot_rounds = 0;
    let mut during = Duration::ZERO;
    while snapshot_rounds == 0 || during.as_secs_f64() < args.probe_s {
        probe.set(Phase::Snapshot);
        let started = Instant::now();
        let threads: Vec<JoinHandle<anyhow::Result<f64>>> = order
            .iter()
            .map(|&id| {
                let (address, config) = (cluster.client_addr(id).to_string(), config.clone());
                std::thread::spawn(move || {
                    let asked = Instant::now();
                    snapshot_now(&address, &config, DEADLINE)
                        .with_context(|| format!("snapshot now on {address}"))?;
                    Ok(asked.elapsed().as_secs_f64() * 1000.0)
                })
            })
            .collect();
        for thread in threads {
            match thread.join() {
                Ok(ms) => snapshot_write_ms.push(ms?),
                Err(_) => bail!("a snapshot request thread panicked"),
            }
        }
        during += started.elapsed();
        probe.set(Phase::Ignored);
        snapshot_rounds += 1;
    }
    let leader_status = status_of(&cluster.client_addr(leader).to_string(), &config)?;
    let snapshot_bytes = leader_status.snapshot.map_or(0, |s| s.bytes);

    let follower = order[1];
    let (stream_records, stream_s) = stream_state(&cluster, follower, &config)?;

    probe.set(Phase::Rebuild);
    let rebuilt = replace(&mut cluster, order[2], leader, &config)?;
    let recorders = probe.finish()?;
    cluster.stop();
    Ok(SnapshotReport {
        keys: args.keys,
        value_bytes: args.value_bytes,
        probe_rate: args.rate,
        server_args: args.server_args.clone(),
        load_s,
        snapshot_bytes,
        snapshot_rounds,
        snapshot_write_ms,
        append_baseline: recorders[Phase::Baseline as usize].summary(),
        append_during_snapshot: recorders[Phase::Snapshot as usize].summary(),
        stream_records,
        stream_s,
        stream_records_per_s: stream_records as f64 / stream_s.max(f64::MIN_POSITIVE),
        rebuild_mode: "replace",
        rebuilt_node: rebuilt.node,
        rebuild_s: rebuilt.seconds,
        rebuilt_snapshot_bytes: rebuilt.status.snapshot.as_ref().map_or(0, |s| s.bytes),
        rebuilt_log_records: rebuilt.status.log_end_offset - rebuilt.status.log_start_offset,
        rebuilt_by_install_snapshot: rebuilt.status.snapshot.is_some(),
        append_during_rebuild: recorders[Phase::Rebuild as usize].summary(),
        load_start,
        load_end: MachineLoad::now(),
    })
}

/// Appends `keys` distinct keys with `value_bytes` values, a batch at a time.
fn load(config: &ClientConfig, keys: u64, value_bytes: usize) -> anyhow::Result<()> {
    let mut client = Client::connect(config.clone())?;
    let value = vec![b'v'; value_bytes];
    for first in (0..keys).step_by(LOAD_BATCH_RECORDS as usize) {
        let records: Vec<Record> = (first..keys.min(first + LOAD_BATCH_RECORDS))
            .map(|k| Record {
                key: Some(format!("key-{k:010}").into_bytes()),
                value: value.clone(),
                timestamp_ms: 0,
                headers: vec![],
            })
            .collect();
        client.append(&records).context("loading")?;
    }
    Ok(())
}

/// Streams the state from node `id` (its snapshot, then its log up to the end it had when the
/// stream opened); returns the snapshot records and the seconds it took.
fn stream_state(
    cluster: &LocalCluster,
    id: u64,
    config: &ClientConfig,
) -> anyhow::Result<(u64, f64)> {
    let address = cluster.client_addr(id).to_string();
    let end = status_of(&address, config)?.log_end_offset;
    let mut only_it = config.clone();
    only_it.bootstrap = vec![address];
    let started = Instant::now();
    let mut sub = StateSubscription::open(only_it, StartFrom::Earliest, StateMode::Always)?;
    let mut records = 0u64;
    loop {
        let event = sub
            .next_event(Some(DEADLINE))?
            .context("no event from the state subscription within the deadline")?;
        match event {
            StateEvent::Reset(_) => records = 0,
            StateEvent::SnapshotRecord(_) => records += 1,
            StateEvent::CaughtUp { offset } if offset >= end => break,
            StateEvent::CaughtUp { .. } => {}
            StateEvent::Record(r) if r.offset + 1 >= end => break,
            StateEvent::Record(_) => {}
        }
    }
    Ok((records, started.elapsed().as_secs_f64()))
}

/// A node rebuilt from its peers.
struct Rebuilt {
    node: u64,
    /// (Re)start -> caught up.
    seconds: f64,
    /// Its status once caught up. Its own snapshots are taken only on request: one it holds was
    /// installed (none when the leader still held, on disk or in its cache of recent entries,
    /// the whole log: a small `--keys`).
    status: NodeStatus,
}

/// Kills follower `id` and deletes its data directory, removes it from the configuration and
/// starts a fresh node that joins. Returns when the new node holds the log up to the leader's
/// end at its start.
fn replace(
    cluster: &mut LocalCluster,
    id: u64,
    leader: u64,
    config: &ClientConfig,
) -> anyhow::Result<Rebuilt> {
    cluster.kill(id)?;
    let dir = cluster.node_dir(id);
    std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    admin::remove(config, id, false).with_context(|| format!("removing node {id}"))?;
    let end = status_of(&cluster.client_addr(leader).to_string(), config)?.log_end_offset;
    let started = Instant::now();
    let (node, role) = (cluster.join(leader)?, NodeRole::Learner);
    let address = cluster.client_addr(node).to_string();
    loop {
        if let Ok(status) = status_of(&address, config) {
            if status.log_end_offset >= end && status.role == role {
                let seconds = started.elapsed().as_secs_f64();
                return Ok(Rebuilt {
                    node,
                    seconds,
                    status,
                });
            }
        }
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "node {node} did not rebuild within {DEADLINE:?}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn latency_line(name: &str, l: &LatencySummary) -> String {
    format!(
        "  {name:<24} p50 {:>9.0} us   p99 {:>9.0} us   max {:>9.0} us   ({} appends)\n",
        l.us_p50, l.us_p99, l.us_max, l.count
    )
}

/// The human-readable report.
pub fn render_text(r: &SnapshotReport) -> String {
    let mut out = format!(
        "raftline bench snapshot: {} keys x {} B values, probe {} appends/s\n",
        r.keys, r.value_bytes, r.probe_rate
    );
    if !r.server_args.is_empty() {
        out.push_str(&format!("server flags: {}\n", r.server_args.join(" ")));
    }
    let writes = &r.snapshot_write_ms;
    let max = writes.iter().copied().fold(0.0, f64::max);
    let min = writes.iter().copied().fold(f64::INFINITY, f64::min);
    out.push_str(&format!(
        "snapshot: {} bytes; written (request -> durable) in {min:.0}-{max:.0} ms over {} \
         rounds x {NODES} nodes\n",
        r.snapshot_bytes, r.snapshot_rounds
    ));
    out.push_str("append -> ack (acks=quorum):\n");
    out.push_str(&latency_line("without a snapshot", &r.append_baseline));
    out.push_str(&latency_line("during snapshots", &r.append_during_snapshot));
    out.push_str(&latency_line(
        "during the rebuild",
        &r.append_during_rebuild,
    ));
    out.push_str(&format!(
        "stream: {} snapshot records, caught up in {:.2} s ({:.0} records/s)\n",
        r.stream_records, r.stream_s, r.stream_records_per_s
    ));
    out.push_str(&format!(
        "wiped follower replaced (removed; node {} joined) in {:.2} s {}: {} snapshot bytes and \
         {} records of log copied\n",
        r.rebuilt_node,
        r.rebuild_s,
        if r.rebuilt_by_install_snapshot {
            "through InstallSnapshot"
        } else {
            "from the leader's log (NOT through InstallSnapshot: --keys too small)"
        },
        r.rebuilt_snapshot_bytes,
        r.rebuilt_log_records
    ));
    let load = |l: &MachineLoad| {
        l.load_avg_1m.map_or("unknown".to_string(), |v| {
            format!("{v:.2} on {} cores", l.cpus)
        })
    };
    out.push_str(&format!(
        "load average: {} at start, {} at end{}\n",
        load(&r.load_start),
        load(&r.load_end),
        if r.load_start.busy() || r.load_end.busy() {
            " — BUSY: timing figures are suspect"
        } else {
            ""
        }
    ));
    out
}
