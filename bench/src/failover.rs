//! `raftline bench failover`: under steady load, kill -9 the leader of a local 3-node cluster K
//! times and measure how long writes were unavailable each time, where that time went, and
//! whether every acknowledged record survived (read back from offset 0 at the end).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::stop::StopSignal;
use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use raftline_log::Record;
use raftline_netio::client::{status_of, ClientConfig, Producer, StatusClient, Subscription};
use raftline_netio::client_proto::{AckMode, NodeRole, NodeStatus, StartFrom};
use serde::Serialize;

use crate::local_cluster::{Launch, LocalCluster, Placement, RunDir, NODES};
use crate::netns::{NetnsArgs, NetnsFigures, NetnsRun};
use raftline_node::config::{
    ELECTION_TIMEOUT_MAX_MS_DEFAULT, ELECTION_TIMEOUT_MIN_MS_DEFAULT, HEARTBEAT_MS_DEFAULT,
};

/// The long `--help` of `raftline bench failover`.
pub const LONG_ABOUT: &str = "Measure leader fail-over of a 3-node raftline cluster.\n\n\
Starts a local 3-node cluster (default server settings) with its data in a temporary directory \
under --dir, runs P producers appending one record per append at a fixed total --rate with \
acks=quorum, then K times: finds the leader, kills it with SIGKILL, and measures (a) the time \
from the kill to the first commit by the new leader (its commit index passing every entry it \
held before it led, seen by polling Status on the survivors every millisecond) and (b) the \
client-visible write unavailability: the longest gap between successful acknowledgements each \
producer saw around the kill. Then the killed node is restarted on its data directory and the \
next trial waits until it has caught up. At the end the whole log is read back from offset 0 and \
every acknowledged record (each value carries its producer id and sequence number) is checked at \
its acknowledged offset: lost must be 0; duplicates are counted (0 with the idempotent \
producers the client uses by default: the leader stores a resent batch once).\n\n\
With --netns lan|wan|far-replica the nodes run in network namespaces with delayed links and the \
scenario's timing (see `raftline bench cluster --help`), and the target is 2x its election \
timeout.\n\n\
Exit status: 0 when the target holds (p50 unavailability <= 2x the default election timeout and \
<= 500 ms, nothing lost), 2 when it does not, 1 on error.";

/// Flags of `raftline bench failover`.
#[derive(Args, Debug)]
pub struct FailoverBenchArgs {
    /// Leader kills (trials).
    #[arg(short = 'K', long = "kills", default_value_t = 10)]
    pub kills: usize,
    /// Producer connections (one thread each).
    #[arg(short = 'P', long, default_value_t = 4)]
    pub producers: usize,
    /// Total appends per second over all producers (one record per append): small, so the
    /// cluster is far from saturated and the read-back stays quick.
    #[arg(long, value_name = "APPENDS_PER_S", default_value_t = 1000.0)]
    pub rate: f64,
    /// Appends each producer keeps in flight.
    #[arg(short = 'W', long, default_value_t = 8)]
    pub window: usize,
    /// Bytes of each record's value (at least 16: producer id and sequence number).
    #[arg(short = 'V', long, default_value_t = 64)]
    pub value_bytes: usize,
    /// Seconds of load before the first trial.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds of steady load before each kill (after the previous victim caught up).
    #[arg(long, default_value_t = 1.0)]
    pub steady: f64,
    /// Directory for the local cluster's data (a temporary directory inside it is removed at
    /// the end).
    #[arg(long, default_value = "./data/bench-failover")]
    pub dir: PathBuf,
    /// An extra flag for every node's `raftline server` (repeatable), e.g.
    /// `--server-arg=--election-timeout-min-ms=150`: to try other settings. The target is
    /// judged against the default settings; the report lists the flags given.
    #[arg(long = "server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the run directory (the nodes' data and log files) instead of removing it.
    #[arg(long)]
    pub keep_dir: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The cluster in network namespaces with delayed links, timing tuned for them (see
    /// `--netns`); the target is then judged against the scenario's election timeout.
    #[command(flatten)]
    pub netns: NetnsArgs,
}

/// The local cluster's name.
const CLUSTER: &str = "raftline-failover";
/// Pause between two Status polls of the survivors (the resolution of the server-side times).
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// How often a producer waiting for its next send slot reads arrived answers.
const PRODUCER_POLL_INTERVAL: Duration = Duration::from_micros(250);
/// Bound on a new leader committing after a kill (far beyond any healthy election).
const ELECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Bound on every producer being acknowledged again after a kill.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// Bound on a restarted node answering and catching up.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on reading the whole log back.
const READ_BACK_DEADLINE: Duration = Duration::from_secs(60);
/// Bytes of a value holding the producer id and the record's sequence number.
const TAG_BYTES: usize = 16;

/// What was run.
#[derive(Debug, Serialize)]
pub struct FailoverSetup {
    /// Leader kills asked for.
    pub kills: usize,
    /// Producer connections.
    pub producers: usize,
    /// Total appends per second (one record each).
    pub rate_appends_per_s: f64,
    /// Appends in flight per producer.
    pub window: usize,
    /// Bytes per record value.
    pub value_bytes: usize,
    /// Acknowledgement mode.
    pub ack: &'static str,
    /// Seconds of steady load before each kill.
    pub steady_s: f64,
    /// Flags given to every server (`--server-arg`); empty = default settings.
    pub server_args: Vec<String>,
    /// The servers' timing: the defaults (unless `server_args` changes it), or the --netns
    /// scenario's.
    pub heartbeat_ms: u64,
    /// Lower end of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper end of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// /proc/loadavg (1 min) when the run started and ended.
    pub load_average_start: f64,
    /// See `load_average_start`.
    pub load_average_end: f64,
}

/// One kill.
#[derive(Debug, Serialize)]
pub struct Trial {
    /// 1-based trial number.
    pub trial: usize,
    /// The leader killed.
    pub killed_node: u64,
    /// Its term.
    pub old_term: u64,
    /// The leader that took over.
    pub new_leader: u64,
    /// Its term.
    pub new_term: u64,
    /// Kill -> a survivor first seen campaigning (pre-candidate, candidate or a higher term):
    /// the failure detection (election timeout).
    pub detect_ms: f64,
    /// Kill -> the new leader first seen leading.
    pub elected_ms: f64,
    /// Kill -> the new leader first seen with a commit index past every entry it held before
    /// it led (its no-op, or later, committed).
    pub commit_ms: f64,
    /// Kill -> the first acknowledgement (any producer) of a record the new leader appended.
    pub first_ack_ms: f64,
    /// Kill -> every producer had such an acknowledgement (the slowest client's rediscovery).
    pub all_producers_back_ms: f64,
    /// The longest gap between two successful acknowledgements of one producer from
    /// `steady_s` before the kill until the killed node was restarted, worst producer.
    pub unavailability_ms: f64,
    /// The same per producer.
    pub unavailability_ms_per_producer: Vec<f64>,
    /// Restart of the killed node -> its commit index reached the leader's (as of its first
    /// answer after the restart).
    pub catch_up_ms: f64,
    /// The longest gap between successful acknowledgements (worst producer) while the killed
    /// node restarted and caught up.
    pub restart_gap_ms: f64,
}

/// p50 and max of one figure over the trials (nearest-rank p50).
#[derive(Debug, Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// Maximum.
    pub max: f64,
}

/// Figures over all trials.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Kill -> first survivor campaigning.
    pub detect_ms: Spread,
    /// Kill -> new leader seen.
    pub elected_ms: Spread,
    /// Kill -> first commit by the new leader.
    pub commit_ms: Spread,
    /// Kill -> first acknowledgement of a record the new leader appended.
    pub first_ack_ms: Spread,
    /// Kill -> every producer acknowledged by the new leader.
    pub all_producers_back_ms: Spread,
    /// Client-visible write unavailability (worst producer per trial).
    pub unavailability_ms: Spread,
    /// Restart -> caught up.
    pub catch_up_ms: Spread,
}

/// The read-back check.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// Records acknowledged to the producers (each with an offset).
    pub acknowledged: u64,
    /// Acknowledged records found at their acknowledged offset.
    pub found: u64,
    /// Acknowledged records missing from their acknowledged offset (must be 0).
    pub lost: u64,
    /// Extra copies of records in the log (at-least-once resends after a kill).
    pub duplicates: u64,
    /// Records in the log.
    pub log_records: u64,
    /// Records in the log never acknowledged (sent, answer lost with the leader, not resent).
    pub unacknowledged_in_log: u64,
    /// Records the cluster refused with a typed error.
    pub refused: u64,
}

/// Whether the failover target holds.
#[derive(Debug, Serialize)]
pub struct Target {
    /// min(2 x default election timeout (its lower end), 500 ms).
    pub unavailability_p50_limit_ms: f64,
    /// p50 unavailability within the limit.
    pub unavailability_holds: bool,
    /// No acknowledged record lost.
    pub nothing_lost: bool,
    /// Both.
    pub holds: bool,
}

/// The result of one run (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct FailoverReport {
    /// What was run.
    pub setup: FailoverSetup,
    /// Mean time between two Status samples of one survivor while waiting for the new leader:
    /// the resolution of detect/elected/commit.
    pub status_sample_interval_us: f64,
    /// Expected time between two acknowledgements of one producer at the set rate: the
    /// resolution of the unavailability figures.
    pub ack_spacing_ms: f64,
    /// One row per kill.
    pub trials: Vec<Trial>,
    /// p50 / max over the trials.
    pub summary: Summary,
    /// The read-back.
    pub verification: Verification,
    /// The target.
    pub target: Target,
    /// With --netns: the namespaces' links, measured before the nodes started.
    pub netns: Option<NetnsFigures>,
}

/// Counters the producer threads share with the trial loop.
struct Shared {
    stop: AtomicBool,
    epoch: Instant,
    /// Per producer: ns since `epoch` of its latest successful acknowledgement (0 = none).
    last_ack_ns: Vec<AtomicU64>,
    acked: AtomicU64,
}

/// What one producer saw.
struct ProducerLog {
    /// (sequence number, offset) of every acknowledged record, in the order taken.
    acked: Vec<(u64, u64)>,
    /// When each of `acked` was taken.
    ack_times: Vec<Instant>,
    refused: u64,
}

/// The instants of one trial the acknowledgement gaps are judged against.
struct TrialTimes {
    steady_start: Instant,
    kill: Instant,
    restart: Instant,
    caught_up: Instant,
    /// Records at or past this offset were appended by the new leader; acknowledgements of
    /// earlier offsets taken after the kill were the old leader's, already on their way.
    new_leader_first_offset: u64,
}

/// Runs `raftline bench failover`.
pub fn run(args: FailoverBenchArgs) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    let run_dir = RunDir::create(&args.dir)?;
    let stop = StopSignal::default();
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.raise()).context("installing the Ctrl-C handler")?;
    }
    let result = run_in(&args, &run_dir, &stop);
    if args.keep_dir {
        eprintln!("kept {}", run_dir.keep().display());
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(if report.target.holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn validate(args: &FailoverBenchArgs) -> anyhow::Result<()> {
    args.netns.validate()?;
    anyhow::ensure!(
        args.netns.netns.is_none()
            || !args.server_args.iter().any(|a| {
                a.starts_with("--heartbeat-ms") || a.starts_with("--election-timeout")
            }),
        "--netns sets the scenario's heartbeat and election timeout (tools/node/README.md, WAN \
         settings); leave them out of --server-arg"
    );
    anyhow::ensure!(args.kills > 0, "--kills must be at least 1");
    anyhow::ensure!(args.producers > 0, "--producers must be at least 1");
    anyhow::ensure!(args.window > 0, "--window must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 1e6,
        "--rate must be in (0, 1000000] appends/s"
    );
    anyhow::ensure!(
        args.value_bytes >= TAG_BYTES,
        "--value-bytes must be at least {TAG_BYTES} (producer id and sequence number)"
    );
    anyhow::ensure!(
        (0.0..=60.0).contains(&args.warmup) && (0.0..=60.0).contains(&args.steady),
        "--warmup and --steady must be in [0, 60] seconds"
    );
    Ok(())
}

fn run_in(
    args: &FailoverBenchArgs,
    run_dir: &RunDir,
    stop: &StopSignal,
) -> anyhow::Result<FailoverReport> {
    let load_average_start = load_average();
    let mut server_args = args.server_args.clone();
    // Declared before the cluster: dropped after it (the namespaces outlive the nodes).
    let netns = match args.netns.netns {
        Some(scenario) => {
            server_args.extend(scenario.server_args());
            Some(NetnsRun::start(&args.netns, scenario, NODES)?)
        }
        None => None,
    };
    let placement = match &netns {
        Some(run) => Placement::Netns(run.topology.clone()),
        None => Placement::Loopback {
            base: crate::local_cluster::free_base_port()?,
        },
    };
    let mut cluster = Launch::new(run_dir.path(), placement, CLUSTER)
        .server_args(&server_args)
        .start()?;
    cluster.wait_for_leader()?;
    let mut config = cluster.client_config();
    config.ack = AckMode::Quorum;
    config.window_appends = args.window;
    config.batch_records_max = 1;

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        epoch: Instant::now(),
        last_ack_ns: (0..args.producers).map(|_| AtomicU64::new(0)).collect(),
        acked: AtomicU64::new(0),
    });
    let per_producer_rate = args.rate / args.producers as f64;
    let threads: Vec<JoinHandle<anyhow::Result<ProducerLog>>> = (0..args.producers)
        .map(|i| {
            let (config, shared) = (config.clone(), Arc::clone(&shared));
            let value_bytes = args.value_bytes;
            std::thread::Builder::new()
                .name(format!("producer-{i}"))
                .spawn(move || produce(i, config, &shared, per_producer_rate, value_bytes))
                .context("starting a producer thread")
        })
        .collect::<anyhow::Result<_>>()?;

    let bar = progress_bar(args.kills);
    let mut watch = Watch {
        stop,
        threads: &threads,
        bar: &bar,
        sample_intervals: (Duration::ZERO, 0),
    };
    let trials = run_trials(args, &mut cluster, &config, &shared, &mut watch);
    let sample_intervals = watch.sample_intervals;
    shared.stop.store(true, Ordering::SeqCst);
    bar.finish_and_clear();
    let mut logs = Vec::new();
    let mut failures = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok(log)) => logs.push(log),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a producer thread panicked".to_string()),
        }
    }
    if stop.is_raised() {
        bail!("interrupted");
    }
    let (times, mut trials) = trials?;
    if let Some(first) = failures.first() {
        bail!("{} producer(s) failed; first: {first}", failures.len());
    }
    let verification = verify(&cluster, &config, &logs)?;
    cluster.stop();

    for (trial, t) in trials.iter_mut().zip(&times) {
        let gaps: Vec<f64> = logs
            .iter()
            .map(|log| longest_gap_ms(&log.ack_times, t.steady_start, t.restart))
            .collect();
        trial.unavailability_ms = gaps.iter().copied().fold(0.0, f64::max);
        trial.unavailability_ms_per_producer = gaps;
        trial.restart_gap_ms = logs
            .iter()
            .map(|log| longest_gap_ms(&log.ack_times, t.restart, t.caught_up))
            .fold(0.0, f64::max);
        let back: Vec<Option<Instant>> = logs
            .iter()
            .map(|log| {
                let after_kill = log.ack_times.partition_point(|&a| a <= t.kill);
                (after_kill..log.acked.len())
                    .find(|&i| log.acked[i].1 >= t.new_leader_first_offset)
                    .map(|i| log.ack_times[i])
            })
            .collect();
        let since_kill = |a: Option<Instant>| a.map_or(f64::NAN, |a| ms(a - t.kill));
        trial.first_ack_ms = since_kill(back.iter().flatten().min().copied());
        trial.all_producers_back_ms = if back.iter().all(Option::is_some) {
            since_kill(back.iter().flatten().max().copied())
        } else {
            f64::NAN
        };
    }
    let spread = |f: fn(&Trial) -> f64| spread(trials.iter().map(f).collect());
    let summary = Summary {
        detect_ms: spread(|t| t.detect_ms),
        elected_ms: spread(|t| t.elected_ms),
        commit_ms: spread(|t| t.commit_ms),
        first_ack_ms: spread(|t| t.first_ack_ms),
        all_producers_back_ms: spread(|t| t.all_producers_back_ms),
        unavailability_ms: spread(|t| t.unavailability_ms),
        catch_up_ms: spread(|t| t.catch_up_ms),
    };
    let (heartbeat_ms, election_timeout_min_ms, election_timeout_max_ms) = match args.netns.netns {
        Some(scenario) => scenario.timing_ms(),
        None => (
            HEARTBEAT_MS_DEFAULT,
            ELECTION_TIMEOUT_MIN_MS_DEFAULT,
            ELECTION_TIMEOUT_MAX_MS_DEFAULT,
        ),
    };
    // On loopback the target is also capped at 500 ms; across a WAN the tuned timeout is it.
    let limit_ms = match args.netns.netns {
        Some(_) => 2 * election_timeout_min_ms,
        None => (2 * election_timeout_min_ms).min(500),
    } as f64;
    let unavailability_holds = summary.unavailability_ms.p50 <= limit_ms;
    let nothing_lost = verification.lost == 0;
    Ok(FailoverReport {
        setup: FailoverSetup {
            kills: args.kills,
            producers: args.producers,
            rate_appends_per_s: args.rate,
            window: args.window,
            value_bytes: args.value_bytes,
            ack: "quorum",
            steady_s: args.steady,
            server_args: args.server_args.clone(),
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            load_average_start,
            load_average_end: load_average(),
        },
        status_sample_interval_us: if sample_intervals.1 == 0 {
            0.0
        } else {
            sample_intervals.0.as_secs_f64() * 1e6 / sample_intervals.1 as f64
        },
        ack_spacing_ms: 1e3 / per_producer_rate,
        trials,
        summary,
        verification,
        target: Target {
            unavailability_p50_limit_ms: limit_ms,
            unavailability_holds,
            nothing_lost,
            holds: unavailability_holds && nothing_lost,
        },
        netns: netns.as_ref().map(|n| n.figures.clone()),
    })
}

/// What the trial loop checks while it waits: Ctrl-C, producers that ended, the progress bar.
struct Watch<'a> {
    stop: &'a StopSignal,
    threads: &'a [JoinHandle<anyhow::Result<ProducerLog>>],
    bar: &'a ProgressBar,
    /// Sum and count of the intervals between two Status samples of one survivor.
    sample_intervals: (Duration, u32),
}

impl Watch<'_> {
    /// Fails when the run must end early (the producers' errors are reported after joining).
    fn check(&self) -> anyhow::Result<()> {
        if self.stop.is_raised() {
            bail!("interrupted");
        }
        if self.threads.iter().any(|t| t.is_finished()) {
            bail!("a producer stopped");
        }
        Ok(())
    }

    /// Keeps the load running for `d`.
    fn hold(&self, d: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.check()?;
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now().min(until)));
        }
        Ok(())
    }
}

fn run_trials(
    args: &FailoverBenchArgs,
    cluster: &mut LocalCluster,
    config: &ClientConfig,
    shared: &Shared,
    watch: &mut Watch,
) -> anyhow::Result<(Vec<TrialTimes>, Vec<Trial>)> {
    watch.bar.set_message("warm-up");
    watch.hold(Duration::from_secs_f64(args.warmup))?;
    let mut times = Vec::new();
    let mut trials = Vec::new();
    for k in 1..=args.kills {
        watch.bar.set_message(format!("trial {k}: steady load"));
        let steady_start = Instant::now();
        watch.hold(Duration::from_secs_f64(args.steady))?;
        let (trial, t) = run_trial(k, steady_start, cluster, config, shared, watch)?;
        watch.bar.inc(1);
        times.push(t);
        trials.push(trial);
    }
    Ok((times, trials))
}

/// A survivor's latest Status, as the trial loop tracks it.
struct Survivor {
    id: u64,
    link: StatusClient,
    /// Its last log index and end offset while not leading, sampled after the kill.
    before_leading: Option<(u64, u64)>,
    last_sample: Option<Instant>,
}

fn run_trial(
    k: usize,
    steady_start: Instant,
    cluster: &mut LocalCluster,
    config: &ClientConfig,
    shared: &Shared,
    watch: &mut Watch,
) -> anyhow::Result<(Trial, TrialTimes)> {
    let leader = current_leader(cluster, config)?;
    let mut survivors: Vec<Survivor> = (1..=NODES)
        .filter(|&id| id != leader.node_id)
        .map(|id| {
            Ok(Survivor {
                id,
                link: StatusClient::open(&cluster.client_addr(id).to_string(), config)?,
                before_leading: None,
                last_sample: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    watch
        .bar
        .set_message(format!("trial {k}: killed node {}", leader.node_id));
    let kill = cluster.kill(leader.node_id)?;

    let (mut detect, mut elected, mut committed) = (None, None, None);
    let deadline = kill + ELECTION_DEADLINE;
    while committed.is_none() {
        watch.check()?;
        if Instant::now() >= deadline {
            bail!(
                "trial {k}: no new leader committed within {ELECTION_DEADLINE:?} of killing node {}",
                leader.node_id
            );
        }
        for s in survivors.iter_mut() {
            let status = s.link.ask()?;
            let at = Instant::now();
            if let Some(prev) = s.last_sample.replace(at) {
                watch.sample_intervals.0 += at - prev;
                watch.sample_intervals.1 += 1;
            }
            let campaigning = status.term > leader.term
                || matches!(status.role, NodeRole::PreCandidate | NodeRole::Candidate);
            if campaigning && detect.is_none() {
                detect = Some(at);
            }
            if status.role == NodeRole::Leader && status.term > leader.term {
                elected.get_or_insert((at, s.id, status.term));
                // Past every entry it held as a follower = an entry of its own term committed
                // (Raft commits nothing of an earlier term on its own).
                if let Some((last_index, end_offset)) = s.before_leading {
                    if status.commit_index > last_index {
                        committed = Some((at, end_offset));
                        break;
                    }
                }
            } else {
                s.before_leading = Some((status.log_last_index, status.log_end_offset));
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let (committed, new_leader_first_offset) = committed.expect("loop ends on it");
    let (elected_at, new_leader, new_term) = elected.expect("committed implies elected");
    let detect = detect.unwrap_or(elected_at);
    drop(survivors);

    watch
        .bar
        .set_message(format!("trial {k}: waiting for every producer's next ack"));
    let kill_ns = kill.duration_since(shared.epoch).as_nanos() as u64;
    let deadline = Instant::now() + RECOVERY_DEADLINE;
    while shared
        .last_ack_ns
        .iter()
        .any(|t| t.load(Ordering::Relaxed) <= kill_ns)
    {
        watch.check()?;
        if Instant::now() >= deadline {
            bail!("trial {k}: a producer saw no acknowledgement within {RECOVERY_DEADLINE:?} of the kill");
        }
        std::thread::sleep(POLL_INTERVAL);
    }

    watch
        .bar
        .set_message(format!("trial {k}: restarting node {}", leader.node_id));
    let restart = Instant::now();
    cluster.restart(leader.node_id)?;
    wait_caught_up(cluster, config, leader.node_id, new_leader, watch)?;
    let caught_up = Instant::now();
    let trial = Trial {
        trial: k,
        killed_node: leader.node_id,
        old_term: leader.term,
        new_leader,
        new_term,
        detect_ms: ms(detect - kill),
        elected_ms: ms(elected_at - kill),
        commit_ms: ms(committed - kill),
        first_ack_ms: f64::NAN,
        all_producers_back_ms: f64::NAN,
        unavailability_ms: f64::NAN,
        unavailability_ms_per_producer: Vec::new(),
        catch_up_ms: ms(caught_up - restart),
        restart_gap_ms: f64::NAN,
    };
    Ok((
        trial,
        TrialTimes {
            steady_start,
            kill,
            restart,
            caught_up,
            new_leader_first_offset,
        },
    ))
}

/// The status of the node that leads now (every running node is asked).
fn current_leader(cluster: &LocalCluster, config: &ClientConfig) -> anyhow::Result<NodeStatus> {
    let deadline = Instant::now() + ELECTION_DEADLINE;
    loop {
        let leader = (1..=NODES)
            .filter(|&id| cluster.is_running(id))
            .filter_map(|id| status_of(&cluster.client_addr(id).to_string(), config).ok())
            .find(|s| s.role == NodeRole::Leader);
        if let Some(leader) = leader {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            bail!("no leader within {ELECTION_DEADLINE:?}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until the restarted node `id` answers and its commit index reaches the leader's
/// commit index as of that first answer.
fn wait_caught_up(
    cluster: &LocalCluster,
    config: &ClientConfig,
    id: u64,
    leader: u64,
    watch: &Watch,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    let mut target = None;
    loop {
        watch.check()?;
        if Instant::now() >= deadline {
            bail!("node {id} did not catch up within {CATCH_UP_DEADLINE:?} of its restart");
        }
        if let Ok(status) = status_of(&cluster.client_addr(id).to_string(), config) {
            if target.is_none() {
                let leading = status_of(&cluster.client_addr(leader).to_string(), config)?;
                target = Some(leading.commit_index);
            }
            if target.is_some_and(|t| status.commit_index >= t) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One producer: appends of one record at its share of the rate until told to stop, then
/// flushes; records every acknowledgement.
fn produce(
    id: usize,
    config: ClientConfig,
    shared: &Shared,
    rate: f64,
    value_bytes: usize,
) -> anyhow::Result<ProducerLog> {
    let mut producer = Producer::new(config);
    let mut log = ProducerLog {
        acked: Vec::new(),
        ack_times: Vec::new(),
        refused: 0,
    };
    let mut value = vec![b'x'; value_bytes];
    value[..8].copy_from_slice(&(id as u64).to_le_bytes());
    let began = Instant::now();
    let mut sent = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let intended = began + Duration::from_secs_f64(sent as f64 / rate);
        if let Some(wait) = intended.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(PRODUCER_POLL_INTERVAL));
            producer.poll()?;
            account(id, &mut producer, &mut log, shared);
            continue;
        }
        value[8..TAG_BYTES].copy_from_slice(&sent.to_le_bytes());
        let seq = producer.send(Record {
            key: None,
            value: value.clone(),
            timestamp_ms: 0,
            headers: Vec::new(),
        })?;
        assert_eq!(seq, sent, "one record per send, numbered from 0");
        sent += 1;
        account(id, &mut producer, &mut log, shared);
    }
    producer.flush()?;
    account(id, &mut producer, &mut log, shared);
    Ok(log)
}

fn account(id: usize, producer: &mut Producer, log: &mut ProducerLog, shared: &Shared) {
    let now = Instant::now();
    for ack in producer.take_acks() {
        match ack.result {
            Ok(offset) => {
                log.acked.push((ack.seq, offset));
                log.ack_times.push(now);
                shared.last_ack_ns[id].store(
                    now.duration_since(shared.epoch).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                shared.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => log.refused += 1,
        }
    }
}

/// Reads the whole log from offset 0 on the leader and checks every acknowledged record at its
/// offset.
fn verify(
    cluster: &LocalCluster,
    config: &ClientConfig,
    logs: &[ProducerLog],
) -> anyhow::Result<Verification> {
    let leader = current_leader(cluster, config)?;
    let mut read_config = config.clone();
    let leader_addr = cluster.client_addr(leader.node_id).to_string();
    read_config.bootstrap.retain(|a| *a != leader_addr);
    read_config.bootstrap.insert(0, leader_addr);
    let mut subscription = Subscription::open(read_config, StartFrom::Offset(0))
        .context("reading the log back from offset 0")?;
    let end = leader.log_end_offset;
    // offset -> (producer, sequence) of every record in the log.
    let mut in_log: HashMap<u64, (u64, u64)> = HashMap::new();
    let deadline = Instant::now() + READ_BACK_DEADLINE;
    while subscription.next_offset().unwrap_or(0) < end {
        if Instant::now() >= deadline {
            bail!("reading the log back did not reach offset {end} within {READ_BACK_DEADLINE:?}");
        }
        let Some(r) = subscription.next_record(Some(Duration::from_millis(200)))? else {
            continue;
        };
        let v = &r.record.value;
        anyhow::ensure!(
            v.len() >= TAG_BYTES,
            "offset {} holds a record this benchmark did not write",
            r.offset
        );
        let producer = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(v[8..TAG_BYTES].try_into().expect("8 bytes"));
        in_log.insert(r.offset, (producer, seq));
    }
    let mut copies: HashMap<(u64, u64), u64> = HashMap::new();
    for tag in in_log.values() {
        *copies.entry(*tag).or_default() += 1;
    }
    let (mut acknowledged, mut found, mut acked_tags) = (0, 0, 0);
    for (p, log) in logs.iter().enumerate() {
        for &(seq, offset) in &log.acked {
            acknowledged += 1;
            if in_log.get(&offset) == Some(&(p as u64, seq)) {
                found += 1;
            }
            if copies.contains_key(&(p as u64, seq)) {
                acked_tags += 1;
            }
        }
    }
    Ok(Verification {
        acknowledged,
        found,
        lost: acknowledged - found,
        duplicates: copies.values().map(|c| c - 1).sum(),
        log_records: in_log.len() as u64,
        unacknowledged_in_log: copies.len() as u64 - acked_tags,
        refused: logs.iter().map(|l| l.refused).sum(),
    })
}

/// The longest gap between consecutive instants of `times` (sorted) within `[from, to]`,
/// counting the gaps to the last instant before `from` and the first after `to` when they
/// straddle the window's ends.
fn longest_gap_ms(times: &[Instant], from: Instant, to: Instant) -> f64 {
    let first = times.partition_point(|&t| t < from).saturating_sub(1);
    let last = (times.partition_point(|&t| t <= to) + 1).min(times.len());
    times[first..last]
        .windows(2)
        .map(|w| ms(w[1] - w[0]))
        .fold(0.0, f64::max)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    let p50 = values
        .get(values.len().div_ceil(2).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    Spread {
        p50,
        max: values.last().copied().unwrap_or(f64::NAN),
    }
}

/// The 1-minute load average (NaN where /proc/loadavg is missing).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn progress_bar(kills: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(kills as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} kills {elapsed} {msg}")
            .expect("static template is valid"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn render_text(r: &FailoverReport) -> String {
    let s = &r.setup;
    let settings = if s.server_args.is_empty() {
        "default server settings".to_string()
    } else {
        format!(
            "server flags {} on top of the defaults",
            s.server_args.join(" ")
        )
    };
    let mut out = format!(
        "raftline bench failover (local 3-node cluster, {settings}; heartbeat {} ms, \
         election timeout {}-{} ms): K={} kills, P={} producers at {:.0} appends/s total \
         (1 record of {} bytes each), W={}, ack=quorum; load average {:.2} -> {:.2}\n",
        s.heartbeat_ms,
        s.election_timeout_min_ms,
        s.election_timeout_max_ms,
        s.kills,
        s.producers,
        s.rate_appends_per_s,
        s.value_bytes,
        s.window,
        s.load_average_start,
        s.load_average_end
    );
    if let Some(netns) = &r.netns {
        out += &netns.render();
    }
    out += &format!(
        "resolution: status sampled every {:.2} ms per survivor; one producer's acks {:.1} ms apart\n",
        r.status_sample_interval_us / 1e3,
        r.ack_spacing_ms
    );
    out += "trial  killed  new  detect_ms  elected_ms  commit_ms  first_ack_ms  all_back_ms  unavailable_ms  catch_up_ms\n";
    for t in &r.trials {
        out += &format!(
            "{:>5}  {:>6}  {:>3}  {:>9.1}  {:>10.1}  {:>9.1}  {:>12.1}  {:>11.1}  {:>14.1}  {:>11.1}\n",
            t.trial,
            t.killed_node,
            t.new_leader,
            t.detect_ms,
            t.elected_ms,
            t.commit_ms,
            t.first_ack_ms,
            t.all_producers_back_ms,
            t.unavailability_ms,
            t.catch_up_ms
        );
    }
    let m = &r.summary;
    for (name, pick) in [("p50", true), ("max", false)] {
        let v = |s: &Spread| if pick { s.p50 } else { s.max };
        out += &format!(
            "{name:>5}                {:>9.1}  {:>10.1}  {:>9.1}  {:>12.1}  {:>11.1}  {:>14.1}  {:>11.1}\n",
            v(&m.detect_ms),
            v(&m.elected_ms),
            v(&m.commit_ms),
            v(&m.first_ack_ms),
            v(&m.all_producers_back_ms),
            v(&m.unavailability_ms),
            v(&m.catch_up_ms)
        );
    }
    out += &format!(
        "where the p50 goes: detection (election timeout) {:.1} ms, pre-vote + vote {:.1} ms, \
         new leader's first commit {:.1} ms, first client acknowledged {:.1} ms later, the \
         slowest client {:.1} ms later still\n",
        m.detect_ms.p50,
        m.elected_ms.p50 - m.detect_ms.p50,
        m.commit_ms.p50 - m.elected_ms.p50,
        m.first_ack_ms.p50 - m.commit_ms.p50,
        m.all_producers_back_ms.p50 - m.first_ack_ms.p50
    );
    let v = &r.verification;
    out += &format!(
        "read back from offset 0: {} acknowledged, {} found, {} lost, {} duplicates, {} records in the log ({} never acknowledged), {} refused\n",
        v.acknowledged, v.found, v.lost, v.duplicates, v.log_records, v.unacknowledged_in_log, v.refused
    );
    let t = &r.target;
    out += &format!(
        "target: p50 unavailability {:.1} ms <= {:.0} ms (2x the {} ms election timeout{}): {}; nothing lost: {} => {}\n",
        m.unavailability_ms.p50,
        t.unavailability_p50_limit_ms,
        s.election_timeout_min_ms,
        if r.netns.is_some() { "" } else { ", and 500 ms" },
        if t.unavailability_holds { "yes" } else { "NO" },
        if t.nothing_lost { "yes" } else { "NO" },
        if t.holds { "target holds" } else { "target MISSED" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_gap_counts_the_gaps_straddling_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let times = [at(0), at(10), at(20), at(300), at(310), at(900)];
        assert_eq!(longest_gap_ms(&times, at(5), at(305)), 280.0);
        // The gap after the window's end counts: the window closed inside it.
        assert_eq!(longest_gap_ms(&times, at(305), at(400)), 590.0);
        assert_eq!(longest_gap_ms(&times, at(11), at(19)), 10.0);
        assert_eq!(longest_gap_ms(&[], at(0), at(1)), 0.0);
    }

    #[test]
    fn spread_takes_the_nearest_rank_median_and_the_maximum() {
        let s = spread(vec![5.0, 1.0, 3.0, 4.0]);
        assert_eq!((s.p50, s.max), (3.0, 5.0));
        let s = spread(vec![2.0]);
        assert_eq!((s.p50, s.max), (2.0, 2.0));
    }
}
