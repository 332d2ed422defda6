//! log-bench: N appenders drive raftline's log (group commit on this disk) and the disk's own
//! fdatasync limits are measured beside it, in the same run, on the same directory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use raftline_bench::fsync::{self, FileLayout, FsyncMeasurement, FsyncProbe, IoPath};
use raftline_bench::stop::StopSignal;
use raftline_log::{BackendChoice, BackendKind, Batch, Log, LogConfig, Preallocate, Record};

/// Benchmark raftline's log: N concurrent appenders, each with up to W batches of B records of
/// V bytes in flight, for T seconds; prints durable throughput, records per fdatasync and
/// append→durable latency, beside the disk's own 4 KiB fdatasync rate and 1 MiB-per-fdatasync
/// O_DIRECT bandwidth measured in the same run on the same directory.
#[derive(Parser, Debug)]
#[command(name = "log-bench", version)]
struct Args {
    /// Directory on the disk to measure (a fresh subdirectory is created and removed).
    #[arg(long)]
    dir: PathBuf,
    /// Concurrent appenders (threads) N.
    #[arg(long, short = 'n', default_value_t = 4)]
    appenders: usize,
    /// Records per batch B.
    #[arg(long, short = 'b', default_value_t = 100)]
    batch_records: usize,
    /// Bytes per record value V.
    #[arg(long, short = 'v', default_value_t = 256)]
    value_bytes: usize,
    /// Batches each appender keeps in flight W.
    #[arg(long, short = 'w', default_value_t = 16)]
    in_flight: usize,
    /// Seconds of appending T.
    #[arg(long, short = 't', default_value_t = 5.0)]
    seconds: f64,
    /// Extra microseconds added after every fdatasync of the log, to emulate a slower disk
    /// (this machine's flush is far faster than real SSDs/HDDs; the disk limits stay unemulated).
    #[arg(long, default_value_t = 0)]
    fsync_delay_us: u64,
    /// Seconds of unmeasured appending first (threads started, first groups formed).
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Write backend (auto falls back as the log does).
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// How new segments are preallocated.
    #[arg(long, value_enum, default_value_t = PreallocArg::Zero)]
    preallocate: PreallocArg,
    /// Largest group (bytes per write + fdatasync), KiB.
    #[arg(long, default_value_t = 4096)]
    group_kib: usize,
    /// Segment size, MiB.
    #[arg(long, default_value_t = 64)]
    segment_mib: u64,
    /// Seconds per disk-limit measurement (three are made).
    #[arg(long, default_value_t = 2.0)]
    limit_seconds: f64,
    /// Skip the disk-limit measurements.
    #[arg(long)]
    skip_limits: bool,
    /// Drop the log prefix so that about this many MiB stay retained (as a node's snapshots do,
    /// every `snapshot_every_mib`): dropped segments are recycled. 0 = never drop.
    #[arg(long, default_value_t = 0)]
    keep_mib: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    Uring,
    Pwrite,
    Buffered,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PreallocArg {
    Zero,
    Fallocate,
    Sparse,
}

struct AppenderResult {
    latency_ns: Histogram<u64>,
    batches: u64,
}

fn appender(
    log: &Log,
    template: &Batch,
    in_flight: usize,
    until: Instant,
) -> anyhow::Result<AppenderResult> {
    let mut latency_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut pending = VecDeque::with_capacity(in_flight);
    let mut batches = 0;
    let mut finish =
        |pending: &mut VecDeque<(Instant, raftline_log::AppendTicket)>| -> anyhow::Result<()> {
            let (start, ticket) = pending.pop_front().expect("non-empty");
            ticket.wait()?;
            latency_ns.saturating_record(start.elapsed().as_nanos() as u64);
            batches += 1;
            Ok(())
        };
    while Instant::now() < until {
        if pending.len() == in_flight {
            finish(&mut pending)?;
        }
        pending.push_back((Instant::now(), log.append(None, 1, template.clone())?));
    }
    while !pending.is_empty() {
        finish(&mut pending)?;
    }
    Ok(AppenderResult {
        latency_ns,
        batches,
    })
}

fn limit(
    dir: &std::path::Path,
    write_bytes: usize,
    layout: FileLayout,
    seconds: f64,
) -> anyhow::Result<FsyncMeasurement> {
    let (path, _) = fsync::resolve_io_path(dir, IoPath::DirectUring)?;
    let mut probe = FsyncProbe::new(write_bytes, Duration::from_secs_f64(seconds), path);
    probe.layout = layout;
    probe.file_bytes_max = 1 << 30;
    Ok(fsync::measure_fdatasync(
        dir,
        &probe,
        &StopSignal::default(),
    )?)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.appenders > 0 && args.in_flight > 0 && args.batch_records > 0,
        "N, W and B must be at least 1"
    );
    let dir = args.dir.join(format!("log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let records: Vec<Record> = (0..args.batch_records)
        .map(|i| Record {
            key: None,
            value: vec![(i % 251) as u8; args.value_bytes],
            timestamp_ms: 0,
            headers: vec![],
        })
        .collect();
    let template = Batch::encode(&records)?;
    let batch_bytes = template.as_bytes().len();
    let mut config = LogConfig::new(&dir);
    config.backend = match args.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Uring => BackendChoice::Force(BackendKind::UringDirect),
        BackendArg::Pwrite => BackendChoice::Force(BackendKind::PwriteDirect),
        BackendArg::Buffered => BackendChoice::Force(BackendKind::Buffered),
    };
    config.preallocate = match args.preallocate {
        PreallocArg::Zero => Preallocate::ZeroFill,
        PreallocArg::Fallocate => Preallocate::Fallocate,
        PreallocArg::Sparse => Preallocate::Sparse,
    };
    config.group_bytes_max = args.group_kib << 10;
    config.segment_bytes = args.segment_mib << 20;
    config.batch_bytes_max = batch_bytes.max(1 << 20).min(config.group_bytes_max);
    config.emulated_fsync_delay = Duration::from_micros(args.fsync_delay_us);
    config.queue_depth = (args.appenders * args.in_flight).max(1);

    let result = run(&args, &dir, config, &template);
    let _ = std::fs::remove_dir_all(&dir);
    let (log_report, figures) = result?;
    println!("{log_report}");
    if !args.skip_limits {
        std::fs::create_dir_all(&dir)?;
        let s = args.limit_seconds;
        let r = (|| -> anyhow::Result<_> {
            Ok((
                limit(&dir, 4096, FileLayout::Prewritten, s)?,
                limit(&dir, 4096, FileLayout::Fallocated, s)?,
                limit(&dir, 1 << 20, FileLayout::Prewritten, s)?,
            ))
        })();
        let _ = std::fs::remove_dir_all(&dir);
        let (small_pre, small_fresh, big) = r?;
        println!(
            "disk limits, same directory ({} path, {s} s each):",
            small_pre.path.name()
        );
        for (what, m) in [
            ("4 KiB write+fdatasync, prewritten blocks", &small_pre),
            ("4 KiB write+fdatasync, fallocated blocks", &small_fresh),
        ] {
            println!(
                "  {what:42} {:>9.0} fdatasync/s  commit p50 {:>7.1} us  p99 {:>7.1} us  p99.9 {:>7.1} us",
                m.commits_per_s, m.commit.us_p50, m.commit.us_p99, m.commit.us_p999
            );
        }
        println!(
            "  1 MiB O_DIRECT write+fdatasync, prewritten {:>9.1} MB/s  ({:.0} fdatasync/s)",
            big.bytes_per_s / 1e6,
            big.commits_per_s
        );
        println!(
            "ratios: durable MB/s / 1 MiB-per-fdatasync MB/s = {:.2};  records/s / disk 4 KiB fdatasync/s = {:.1};  \
             append->durable p99 / disk 4 KiB commit p99 = {:.2}",
            figures.durable_bytes_per_s / big.bytes_per_s,
            figures.records_per_s / small_pre.commits_per_s,
            figures.latency_us_p99 / small_pre.commit.us_p99
        );
    }
    Ok(())
}

/// Runs the appenders for `seconds`; returns their merged latency histogram and batch count.
fn drive(
    log: &Arc<Log>,
    args: &Args,
    template: &Batch,
    seconds: f64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let keep_entries = (args.keep_mib << 20) / template.as_bytes().len() as u64;
    let compactor = (args.keep_mib > 0).then(|| {
        let log = Arc::clone(log);
        std::thread::spawn(move || -> anyhow::Result<()> {
            while Instant::now() < until {
                let floor = log.durable_index().saturating_sub(keep_entries);
                if floor > log.first_index() {
                    log.truncate_prefix(floor)?;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        })
    });
    let handles: Vec<_> = (0..args.appenders)
        .map(|_| {
            let (log, template) = (Arc::clone(log), template.clone());
            let in_flight = args.in_flight;
            std::thread::spawn(move || appender(&log, &template, in_flight, until))
        })
        .collect();
    let mut latency_ns = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut batches = 0;
    for h in handles {
        let r = h.join().expect("appender panicked")?;
        latency_ns.add(&r.latency_ns)?;
        batches += r.batches;
    }
    if let Some(c) = compactor {
        c.join().expect("compactor panicked")?;
    }
    Ok((latency_ns, batches))
}

/// The log's figures the disk limits are compared with.
struct LogFigures {
    durable_bytes_per_s: f64,
    records_per_s: f64,
    latency_us_p99: f64,
}

fn run(
    args: &Args,
    dir: &std::path::Path,
    config: LogConfig,
    template: &Batch,
) -> anyhow::Result<(String, LogFigures)> {
    let log = Arc::new(Log::open(config.clone())?);
    if args.warmup_seconds > 0.0 {
        drive(&log, args, template, args.warmup_seconds)?;
    }
    let stats = log.stats();
    let fdatasyncs_before = stats.fdatasyncs.load(Ordering::Relaxed);
    let prepare_waits_before = stats.segment_prepare_waits.load(Ordering::Relaxed);
    let recycled_before = stats.segments_recycled.load(Ordering::Relaxed);
    let bytes_written_before = stats.bytes_written.load(Ordering::Relaxed);
    let started = Instant::now();
    let (latency_ns, batches) = drive(&log, args, template, args.seconds)?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let fdatasyncs = stats.fdatasyncs.load(Ordering::Relaxed) - fdatasyncs_before;
    let bytes_written = stats.bytes_written.load(Ordering::Relaxed) - bytes_written_before;
    let prepare_waits = stats.segment_prepare_waits.load(Ordering::Relaxed) - prepare_waits_before;
    let recycled = stats.segments_recycled.load(Ordering::Relaxed) - recycled_before;
    let (wait_buckets, _, _) = stats.segment_prepare_wait_us.cumulative();
    let wait_us_max_bound = wait_buckets.last().map_or(0, |&(bound, _)| bound);
    let records = batches * args.batch_records as u64;
    let batch_bytes = template.as_bytes().len() as u64;
    let us = |q: f64| latency_ns.value_at_quantile(q) as f64 / 1e3;
    let report = format!(
        "log-bench on {dir} ({backend:?}, preallocate {prealloc:?}, group_bytes_max {group} KiB, emulated fsync delay {delay} us)\n\
         workload: N={n} appenders, W={w} in flight each, B={b} records of V={v} bytes ({batch_bytes} bytes/batch), {elapsed_s:.1} s\n\
         records/s          {rps:>12.0}\n\
         durable MB/s       {mbps:>12.1}   (batch bytes; {written:.1} MB/s written incl. sector padding)\n\
         fdatasyncs         {fdatasyncs:>12}   ({fps:.0}/s)\n\
         records/fdatasync  {rpf:>12.1}\n\
         append->durable    p50 {p50:.1} us  p90 {p90:.1} us  p99 {p99:.1} us  p99.9 {p999:.1} us  max {max:.1} us\n\
         segments           {recycled} recycled, {prepare_waits} roll-overs waited for preparation (whole run: longest wait <= {wait_us_max_bound} us)",
        dir = dir.display(),
        backend = log.backend(),
        prealloc = config.preallocate,
        group = config.group_bytes_max >> 10,
        delay = args.fsync_delay_us,
        n = args.appenders,
        w = args.in_flight,
        b = args.batch_records,
        v = args.value_bytes,
        rps = records as f64 / elapsed_s,
        mbps = (batches * batch_bytes) as f64 / elapsed_s / 1e6,
        written = bytes_written as f64 / elapsed_s / 1e6,
        fps = fdatasyncs as f64 / elapsed_s,
        rpf = records as f64 / fdatasyncs.max(1) as f64,
        p50 = us(0.5),
        p90 = us(0.9),
        p99 = us(0.99),
        p999 = us(0.999),
        max = latency_ns.max() as f64 / 1e3,
    );
    let figures = LogFigures {
        durable_bytes_per_s: (batches * batch_bytes) as f64 / elapsed_s,
        records_per_s: records as f64 / elapsed_s,
        latency_us_p99: us(0.99),
    };
    Ok((report, figures))
}
