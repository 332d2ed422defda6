//! `raftline bench profiles`: what group commit buys on HDD, SATA and NVMe. For each device
//! profile (emulated with `--emulate-disk`, or this machine's real disk) it runs `bench cluster`
//! twice on a fresh local cluster: unbatched (one producer, one append of one record in flight)
//! and group-committed (many appends of one record in flight, so any batching is the log's group
//! commit, not the client's), and prints them side by side with the entries/s people quote for
//! such disks and this disk's own fdatasync rate, measured in the same run.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::machine_load::MachineLoad;
use anyhow::bail;
use clap::{Args, Parser, ValueEnum};
use serde::Serialize;

use crate::cluster::{self, ClusterBenchArgs, ClusterBenchReport, DiskFigures};
use crate::emulated_disk::{DiskProfile, EmulatedDisk};

/// The long `--help` of `raftline bench profiles`.
pub const LONG_ABOUT: &str = "What group commit buys on HDD, SATA and NVMe disks, measured on \
the real code path.\n\n\
This machine has one (fast, virtual) disk. For each --profiles entry the benchmark starts a \
local 3-node cluster whose logs EMULATE that device: every group commit's write + fdatasync \
completes no earlier than the profile's latency after it was issued (hdd 10 ms, sata 1 ms, nvme \
0.2 ms), on top of the real write, one flush at a time (`raftline server --emulate-disk`); \
`none` is this disk, unemulated. Each profile runs two `bench cluster` loads of one record per \
append (V bytes, acks=quorum):\n  \
unbatched        1 producer, 1 append in flight\n  \
group-committed  P producers x W appends in flight (the log groups what queues during a flush)\n\n\
Per profile it prints entries/s, records/s, append->ack p50/p99, the leader's fdatasyncs/s and \
records per fdatasync, and the gain group-committed / unbatched; beside them the unbatched \
entries/s people quote for one Raft group on such a disk (HDD ~100, SATA ~500-2,000, NVMe \
~2,000-10,000) and, for `none`, this disk's own 4 KiB write+fdatasync rate measured in the same \
run. Every point takes about --warmup + --duration seconds plus a cluster start and stop.";

/// A `--profiles` entry: an emulated device, or this disk as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// Emulated 7,200 rpm HDD (10 ms per flush).
    Hdd,
    /// Emulated SATA SSD (1 ms per flush).
    Sata,
    /// Emulated consumer NVMe (0.2 ms per flush).
    Nvme,
    /// This machine's disk, no emulation.
    None,
}

impl ProfileArg {
    fn disk(self) -> Option<DiskProfile> {
        match self {
            ProfileArg::Hdd => Some(DiskProfile::Hdd),
            ProfileArg::Sata => Some(DiskProfile::Sata),
            ProfileArg::Nvme => Some(DiskProfile::Nvme),
            ProfileArg::None => None,
        }
    }
}

/// Flags of `raftline bench profiles`.
#[derive(Args, Debug)]
pub struct ProfilesArgs {
    /// Profiles to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hdd,sata,nvme,none"
    )]
    pub profiles: Vec<ProfileArg>,
    /// Group-committed load: producer connections.
    #[arg(short = 'P', long, default_value_t = 32)]
    pub producers: usize,
    /// Group-committed load: appends each producer keeps in flight.
    #[arg(short = 'W', long, default_value_t = 8)]
    pub window: usize,
    /// Bytes of each record's value.
    #[arg(short = 'V', long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Measured seconds per point (two points per profile).
    #[arg(long, default_value_t = 4.0)]
    pub duration: f64,
    /// Seconds of load before each point's measurement.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds each disk probe runs (once, before the first point).
    #[arg(long, default_value_t = 1.0)]
    pub disk_probe_secs: f64,
    /// Directory for the clusters' data and the disk probe (a temporary directory inside it is
    /// removed at the end).
    #[arg(long, default_value = "./data/bench-profiles")]
    pub dir: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// One load on one profile.
#[derive(Debug, Serialize)]
pub struct PointFigures {
    /// Producer connections.
    pub producers: usize,
    /// Appends in flight per producer.
    pub window: usize,
    /// Appends (= Raft entries, one record each) acknowledged per second.
    pub entries_per_s: f64,
    /// Records acknowledged per second.
    pub records_per_s: f64,
    /// Append -> acknowledgement latency, median, microseconds.
    pub latency_us_p50: f64,
    /// Append -> acknowledgement latency, 99th percentile, microseconds.
    pub latency_us_p99: f64,
    /// The leader's group commits per second.
    pub fdatasyncs_per_s: f64,
    /// Records acknowledged per leader fdatasync.
    pub records_per_fdatasync: f64,
    /// An election happened during the point (its leader figures are then unreliable).
    pub leader_changed: bool,
}

impl PointFigures {
    fn from_report(r: &ClusterBenchReport) -> anyhow::Result<PointFigures> {
        let Some(l) = &r.load else {
            bail!("the run measured no load");
        };
        let Some(leader) = &l.leader else {
            bail!("the leader's metrics were not read");
        };
        Ok(PointFigures {
            producers: r.setup.producers,
            window: r.setup.window,
            entries_per_s: l.appends_per_s,
            records_per_s: l.records_per_s,
            latency_us_p50: l.latency_us.us_p50,
            latency_us_p99: l.latency_us.us_p99,
            fdatasyncs_per_s: leader.fdatasyncs_per_s,
            records_per_fdatasync: leader.records_per_fdatasync,
            leader_changed: l.leader_changed,
        })
    }
}

/// Both loads on one profile.
#[derive(Debug, Serialize)]
pub struct ProfileRow {
    /// "hdd", "sata", "nvme" (EMULATED) or "none" (this disk).
    pub profile: String,
    /// The emulation in effect (null for "none").
    pub emulated_disk: Option<EmulatedDisk>,
    /// Unbatched entries/s people quote for such a disk; for "none", this disk's 4 KiB
    /// write+fdatasync rate measured in this run.
    pub reference_unbatched_entries_per_s: String,
    /// One producer, one append in flight.
    pub unbatched: PointFigures,
    /// Many appends of one record in flight.
    pub group_committed: PointFigures,
    /// group_committed.entries_per_s / unbatched.entries_per_s.
    pub group_commit_gain: f64,
}

/// The result of `raftline bench profiles` (`--json` prints exactly this).
#[derive(Debug, Serialize)]
pub struct ProfilesReport {
    /// Says that the hdd/sata/nvme rows are emulated.
    pub emulation: String,
    /// Bytes of each record's value.
    pub value_bytes: usize,
    /// Measured seconds per point.
    pub duration_s: f64,
    /// Warm-up seconds per point.
    pub warmup_s: f64,
    /// Machine load when the run started.
    pub load_at_start: MachineLoad,
    /// Machine load when the run ended.
    pub load_at_end: MachineLoad,
    /// This machine's disk, measured before the first point on the same directory.
    pub disk: DiskFigures,
    /// One row per profile, in the order asked for.
    pub profiles: Vec<ProfileRow>,
}

/// `bench cluster`'s flags with its own defaults, for flags this benchmark does not set.
#[derive(Parser)]
struct ClusterDefaults {
    #[command(flatten)]
    args: ClusterBenchArgs,
}

/// Runs `raftline bench profiles`.
pub fn run(args: ProfilesArgs) -> anyhow::Result<ExitCode> {
    let report = measure(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn point_args(
    args: &ProfilesArgs,
    profile: Option<DiskProfile>,
    (producers, window): (usize, usize),
) -> anyhow::Result<ClusterBenchArgs> {
    let mut a = ClusterDefaults::try_parse_from(["bench-cluster"])?.args;
    a.producers = producers;
    a.window = window;
    a.batch_records = 1;
    a.value_bytes = args.value_bytes;
    a.duration = args.duration;
    a.warmup = args.warmup;
    a.disk_probe_secs = args.disk_probe_secs;
    a.emulate_disk = profile;
    cluster::validate(&a)?;
    Ok(a)
}

fn measure(args: &ProfilesArgs) -> anyhow::Result<ProfilesReport> {
    anyhow::ensure!(!args.profiles.is_empty(), "--profiles lists no profile");
    let unbatched = (1, 1);
    let grouped = (args.producers, args.window);
    // Every point's flags are checked before anything runs.
    for profile in &args.profiles {
        for load in [unbatched, grouped] {
            point_args(args, profile.disk(), load)?;
        }
    }
    let load_at_start = MachineLoad::now();
    let (disk, profiles) = cluster::in_run_dir(&args.dir, |dir, stop| {
        let disk = cluster::measure_disk(dir, args.disk_probe_secs, stop)?;
        let mut rows = Vec::new();
        for &profile in &args.profiles {
            let point = |load, what: &str| -> anyhow::Result<PointFigures> {
                if stop.is_raised() {
                    bail!("interrupted");
                }
                eprintln!("profile {}: {what}...", profile_name(profile));
                let report = cluster::run_with_disk(
                    &point_args(args, profile.disk(), load)?,
                    dir,
                    disk.clone(),
                    stop,
                )?;
                PointFigures::from_report(&report)
            };
            let unbatched = point(unbatched, "unbatched")?;
            let group_committed = point(grouped, "group-committed")?;
            rows.push(ProfileRow {
                profile: profile_name(profile).to_string(),
                emulated_disk: profile.disk().map(EmulatedDisk::from),
                reference_unbatched_entries_per_s: match profile.disk() {
                    Some(p) => p.reference_entries_per_s().to_string(),
                    None => format!(
                        "{:.0} (4 KiB fdatasync/s measured)",
                        disk.fdatasync_4k_per_s
                    ),
                },
                group_commit_gain: ratio(group_committed.entries_per_s, unbatched.entries_per_s),
                unbatched,
                group_committed,
            });
        }
        Ok((disk, rows))
    })?;
    Ok(ProfilesReport {
        emulation: emulation_note(&args.profiles),
        value_bytes: args.value_bytes,
        duration_s: args.duration,
        warmup_s: args.warmup,
        load_at_start,
        load_at_end: MachineLoad::now(),
        disk,
        profiles,
    })
}

fn profile_name(profile: ProfileArg) -> &'static str {
    profile.disk().map_or("none", DiskProfile::name)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn emulation_note(profiles: &[ProfileArg]) -> String {
    let emulated: Vec<_> = profiles.iter().filter_map(|p| p.disk()).collect();
    if emulated.is_empty() {
        return "none: every row is this machine's disk".to_string();
    }
    let names: Vec<_> = emulated.iter().map(|p| p.name()).collect();
    format!(
        "EMULATED DISKS ({}): each log fdatasync completes no earlier than the profile's latency \
         after it was issued, on top of this disk's real write; \"none\" is this disk, unemulated",
        names.join(", ")
    )
}

fn load_text(load: &MachineLoad) -> String {
    load.load_avg_1m
        .map_or("unknown".to_string(), |l| format!("{l:.2}"))
}

fn render_text(r: &ProfilesReport) -> String {
    let mut out = format!("raftline bench profiles: {}\n", r.emulation);
    if let Some(row) = r.profiles.first() {
        let (u, g) = (&row.unbatched, &row.group_committed);
        out += &format!(
            "loads: unbatched = P={} x W={}; group-committed = P={} x W={} ({} appends in flight); \
             one record of V={} bytes per append, acks=quorum, 3 nodes on loopback; {} s after {} s \
             warm-up per point; load average {} at start, {} at end on {} cores\n",
            u.producers,
            u.window,
            g.producers,
            g.window,
            g.producers * g.window,
            r.value_bytes,
            r.duration_s,
            r.warmup_s,
            load_text(&r.load_at_start),
            load_text(&r.load_at_end),
            r.load_at_start.cpus
        );
    }
    let d = &r.disk;
    out += &format!(
        "this disk (real, same run): 4 KiB write+fdatasync {:.0}/s (p50 {:.0} us, p99 {:.0} us); \
         O_DIRECT sequential {:.0} MB/s\n\n",
        d.fdatasync_4k_per_s,
        d.fdatasync_4k_commit_us.us_p50,
        d.fdatasync_4k_commit_us.us_p99,
        d.sequential_mb_per_s
    );
    out += &format!(
        "{:<7} {:>8} | {:>32} | {:>36} | {:>7} | {:>17} | {:>17} | {}\n",
        "profile",
        "flush",
        "unbatched entries/s",
        "group-committed entries/s",
        "gain",
        "unb. p50/p99 ms",
        "grp. p50/p99 ms",
        "reference unbatched entries/s"
    );
    for row in &r.profiles {
        let (u, g) = (&row.unbatched, &row.group_committed);
        let flush = row.emulated_disk.as_ref().map_or("real".to_string(), |e| {
            format!("{:.1} ms", e.fsync_latency_us as f64 / 1e3)
        });
        out += &format!(
            "{:<7} {:>8} | {:>32} | {:>36} | {:>6.1}x | {:>17} | {:>17} | {}\n",
            row.profile,
            flush,
            format!(
                "{:.0} ({:.0} fsync/s, {:.1} rec/fsync)",
                u.entries_per_s, u.fdatasyncs_per_s, u.records_per_fdatasync
            ),
            format!(
                "{:.0} ({:.0} fsync/s, {:.1} rec/fsync)",
                g.entries_per_s, g.fdatasyncs_per_s, g.records_per_fdatasync
            ),
            row.group_commit_gain,
            format!(
                "{:.3} / {:.3}",
                u.latency_us_p50 / 1e3,
                u.latency_us_p99 / 1e3
            ),
            format!(
                "{:.3} / {:.3}",
                g.latency_us_p50 / 1e3,
                g.latency_us_p99 / 1e3
            ),
            row.reference_unbatched_entries_per_s
        );
        if u.leader_changed || g.leader_changed {
            out += "        warning: the leader changed during this profile's run: an election disturbed it\n";
        }
    }
    out += "(entries/s counts producer appends of one record each, so entries/s = records/s; the leader proposes each event-loop round's appends as one Raft entry, so the log holds fewer entries; rec/fsync = records acknowledged per leader fdatasync)\n";
    out
}
