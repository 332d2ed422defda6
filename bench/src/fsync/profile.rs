//! The full disk profile `raftline bench fsync` runs: every measurement, the classification, the
//! honesty checks, the predictions and the verdict, as one serialisable value.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::classify::{classify, Classification, LatencyBand, LATENCY_BANDS};
use super::device::{inspect, DeviceFacts};
use super::honesty::{honesty_warnings, HonestyWarning};
use super::predict::{
    predict, CurvePoint, Prediction, ReferenceProfile, RECORD_BYTES, REFERENCE_PROFILES,
};
use super::{
    check_dir, measure_fdatasync_observed, measure_sequential_bandwidth_observed, resolve_io_path,
    BandwidthMeasurement, BandwidthProbe, BenchError, FileLayout, FsyncMeasurement, FsyncProbe,
    IoPath,
};
use crate::labels::{grouped, size_label};
use crate::machine_load::MachineLoad;
use crate::stop::StopSignal;

/// Write sizes of the group-commit curve: 4 KiB to 1 MiB.
pub const BATCH_SIZES: [usize; 5] = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
/// The etcd rule: a disk whose p99 fdatasync is above this is unfit for a consensus log.
pub const FIT_FDATASYNC_US_P99_MAX: f64 = 10_000.0;
/// The prewritten 4 KiB step fills its file first; this bounds that fill.
pub const PREWRITTEN_FILE_BYTES_MAX: u64 = 256 << 20;
/// Bytes per write of the bandwidth step.
pub const BANDWIDTH_WRITE_BYTES: usize = 1 << 20;
/// Writes in flight in the bandwidth step ("a few", like a log flushing several segments' worth).
pub const BANDWIDTH_QUEUE_DEPTH: usize = 4;

/// What to profile and how long.
#[derive(Clone, Debug)]
pub struct ProfileConfig {
    /// The directory on the disk to profile; scratch files are created only here.
    pub dir: PathBuf,
    /// Upper bound on each step's duration.
    pub step_duration: Duration,
    /// Upper bound on each step's scratch file (one file exists at a time).
    pub file_bytes_max: u64,
    /// The fast path wanted; the profile steps down when the system refuses it.
    pub fast_path: IoPath,
}

/// One planned step, announced before the run so a progress display knows the total.
#[derive(Clone, Debug, PartialEq)]
pub struct StepPlan {
    /// What the step measures.
    pub label: String,
    /// Its time budget (it may end sooner at the size cap).
    pub duration: Duration,
}

/// Receives progress while a profile runs.
pub trait ProfileObserver {
    /// The run starts with these steps.
    fn planned(&mut self, steps: &[StepPlan]);
    /// Step `index` of the plan starts.
    fn step_started(&mut self, index: usize);
    /// Time spent in the current step so far.
    fn step_progress(&mut self, elapsed: Duration);
}

/// Whether the disk is fit for a raftline node, and what to expect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// True when p99 fdatasync is below [`FIT_FDATASYNC_US_P99_MAX`].
    pub fit: bool,
    /// The p99 judged, µs.
    pub fdatasync_us_p99: f64,
    /// The limit, µs.
    pub fdatasync_us_p99_max: f64,
    /// What an operator should expect, in one paragraph.
    pub summary: String,
}

/// The prediction table of one reference profile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferencePrediction {
    /// The modelled disk.
    pub profile: ReferenceProfile,
    /// One prediction per record size.
    pub predictions: Vec<Prediction>,
}

/// Everything one run measured and concluded.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    /// The directory profiled.
    pub dir: PathBuf,
    /// The per-step duration budget, seconds.
    pub step_duration_s: f64,
    /// The per-step file size cap.
    pub file_bytes_max: u64,
    /// The fast path used after any fallback.
    pub fast_path: IoPath,
    /// Why the wanted fast path was refused, if it was.
    pub fallbacks: Vec<String>,
    /// What the kernel says about the disk.
    pub device: DeviceFacts,
    /// 4 KiB buffered write + fdatasync (the etcd disk check).
    pub buffered_4k: FsyncMeasurement,
    /// 4 KiB write + fdatasync on the fast path, fresh fallocate'd file: the figure classified.
    pub fast_4k: FsyncMeasurement,
    /// 4 KiB with the fdatasync linked to the write (IO_LINK), when the fast path is io_uring.
    pub fast_4k_linked: Option<FsyncMeasurement>,
    /// 4 KiB on the fast path into blocks written beforehand (a zero-filled or recycled segment).
    pub fast_4k_prewritten: Option<FsyncMeasurement>,
    /// Write + fdatasync per batch size on the fast path (the group-commit curve, 4 KiB first).
    pub curve: Vec<FsyncMeasurement>,
    /// Sequential bandwidth, several writes in flight, one fdatasync at the end.
    pub bandwidth: BandwidthMeasurement,
    /// The classification thresholds used.
    pub latency_bands: Vec<LatencyBand>,
    /// The disk's class.
    pub classification: Classification,
    /// Signs that flushes may not reach stable media.
    pub warnings: Vec<HonestyWarning>,
    /// Predictions from the measured curve, per record size.
    pub predictions: Vec<Prediction>,
    /// The same table for typical disks (reference, not measured).
    pub reference_predictions: Vec<ReferencePrediction>,
    /// Fit or not, and what to expect.
    pub verdict: Verdict,
    /// Machine load when the run started.
    pub load_start: MachineLoad,
    /// Machine load when the run ended.
    pub load_end: MachineLoad,
}

/// Runs every step of the profile in `config.dir`, removing each scratch file after its step.
pub fn run_profile(
    config: &ProfileConfig,
    stop: &StopSignal,
    observer: &mut dyn ProfileObserver,
) -> Result<Profile, BenchError> {
    let dir = config.dir.as_path();
    let load_start = MachineLoad::now();
    check_dir(dir, config.file_bytes_max)?;
    let (fast_path, refusals) = resolve_io_path(dir, config.fast_path)?;
    let fallbacks: Vec<String> = refusals.iter().map(ToString::to_string).collect();
    let direct = fast_path.is_direct();
    let d = config.step_duration;

    let mut plan = vec![StepPlan {
        label: "4 KiB buffered write + fdatasync".into(),
        duration: d,
    }];
    if fast_path != IoPath::Buffered {
        plan.push(StepPlan {
            label: format!("4 KiB {} write + fdatasync", fast_path.name()),
            duration: d,
        });
    }
    let linked = fast_path == IoPath::DirectUring;
    if linked {
        plan.push(StepPlan {
            label: "4 KiB direct-uring-linked write + fdatasync".into(),
            duration: d,
        });
    }
    if direct {
        plan.push(StepPlan {
            label: format!("4 KiB {} into prewritten blocks", fast_path.name()),
            duration: d,
        });
    }
    for &size in &BATCH_SIZES[1..] {
        plan.push(StepPlan {
            label: format!(
                "{} {} write + fdatasync",
                size_label(size),
                fast_path.name()
            ),
            duration: d,
        });
    }
    plan.push(StepPlan {
        label: format!("sequential bandwidth, {BANDWIDTH_QUEUE_DEPTH} in flight"),
        duration: d,
    });
    observer.planned(&plan);

    let mut step = 0usize;
    let mut fsync_step = |probe: FsyncProbe, observer: &mut dyn ProfileObserver| {
        observer.step_started(step);
        step += 1;
        measure_fdatasync_observed(dir, &probe, stop, &mut |e| observer.step_progress(e))
    };
    let probe =
        |write_bytes: usize, path: IoPath, layout: FileLayout, file_bytes_max: u64| FsyncProbe {
            write_bytes,
            duration: d,
            file_bytes_max,
            path,
            layout,
        };
    let buffered_4k = fsync_step(
        probe(
            4096,
            IoPath::Buffered,
            FileLayout::Fallocated,
            config.file_bytes_max,
        ),
        observer,
    )?;
    let fast_4k = if fast_path == IoPath::Buffered {
        buffered_4k.clone()
    } else {
        fsync_step(
            probe(
                4096,
                fast_path,
                FileLayout::Fallocated,
                config.file_bytes_max,
            ),
            observer,
        )?
    };
    let fast_4k_linked = if linked {
        let p = probe(
            4096,
            IoPath::DirectUringLinked,
            FileLayout::Fallocated,
            config.file_bytes_max,
        );
        Some(fsync_step(p, observer)?)
    } else {
        None
    };
    let fast_4k_prewritten = if direct {
        let size = config.file_bytes_max.min(PREWRITTEN_FILE_BYTES_MAX);
        Some(fsync_step(
            probe(4096, fast_path, FileLayout::Prewritten, size),
            observer,
        )?)
    } else {
        None
    };
    let mut curve = vec![fast_4k.clone()];
    for &size in &BATCH_SIZES[1..] {
        curve.push(fsync_step(
            probe(
                size,
                fast_path,
                FileLayout::Fallocated,
                config.file_bytes_max,
            ),
            observer,
        )?);
    }
    observer.step_started(step);
    let bandwidth_probe = BandwidthProbe {
        write_bytes: BANDWIDTH_WRITE_BYTES,
        queue_depth: BANDWIDTH_QUEUE_DEPTH,
        duration: d,
        file_bytes_max: config.file_bytes_max,
        path: fast_path,
    };
    let bandwidth = measure_sequential_bandwidth_observed(dir, &bandwidth_probe, stop, &mut |e| {
        observer.step_progress(e)
    })?;

    let device = inspect(dir);
    let classification = classify(fast_4k.fdatasync.us_p50, &device);
    let warnings = honesty_warnings(&fast_4k.fdatasync, &device, classification.class);
    let measured_curve: Vec<CurvePoint> = curve
        .iter()
        .map(|m| CurvePoint {
            batch_bytes: m.write_bytes,
            commits_per_s: m.commits_per_s,
            commit_us_p50: m.commit.us_p50,
        })
        .collect();
    let bandwidth_cap = bandwidth
        .bytes_per_s
        .max(curve.iter().map(|m| m.bytes_per_s).fold(0.0, f64::max));
    let predictions: Vec<Prediction> = RECORD_BYTES
        .iter()
        .map(|&r| predict(&measured_curve, bandwidth_cap, r))
        .collect();
    let reference_predictions = REFERENCE_PROFILES
        .iter()
        .map(|profile| ReferencePrediction {
            profile: *profile,
            predictions: RECORD_BYTES
                .iter()
                .map(|&r| {
                    predict(
                        &profile.curve(&BATCH_SIZES),
                        profile.bandwidth_bytes_per_s,
                        r,
                    )
                })
                .collect(),
        })
        .collect();
    let verdict = verdict(&fast_4k, &predictions, !warnings.is_empty());
    Ok(Profile {
        dir: config.dir.clone(),
        step_duration_s: d.as_secs_f64(),
        file_bytes_max: config.file_bytes_max,
        fast_path,
        fallbacks,
        device,
        buffered_4k,
        fast_4k,
        fast_4k_linked,
        fast_4k_prewritten,
        curve,
        bandwidth,
        latency_bands: LATENCY_BANDS.to_vec(),
        classification,
        warnings,
        predictions,
        reference_predictions,
        verdict,
        load_start,
        load_end: MachineLoad::now(),
    })
}

/// Judges fitness by the etcd rule on the fast path's p99 fdatasync.
pub fn verdict(
    fast_4k: &FsyncMeasurement,
    predictions: &[Prediction],
    has_warnings: bool,
) -> Verdict {
    let p99 = fast_4k.fdatasync.us_p99;
    let fit = p99 < FIT_FDATASYNC_US_P99_MAX;
    let mut summary = if fit {
        format!("fit for a raftline node: p99 fdatasync {p99:.0} µs is under the {FIT_FDATASYNC_US_P99_MAX:.0} µs (10 ms) etcd rule.")
    } else {
        format!("NOT fit for a raftline node: p99 fdatasync {p99:.0} µs exceeds the {FIT_FDATASYNC_US_P99_MAX:.0} µs (10 ms) etcd rule; expect election timeouts and leader churn under load.")
    };
    if let Some(p) = predictions.iter().max_by_key(|p| p.record_bytes) {
        let rec = p
            .rows
            .iter()
            .find(|r| r.batch_bytes == p.recommended_batch_bytes);
        summary.push_str(&format!(
            " Expect ~{} entries/s unbatched; with group commit of {} batches ~{} records/s of {} B at ~{:.0} µs per commit.",
            grouped(p.unbatched_entries_per_s),
            size_label(p.recommended_batch_bytes),
            grouped(rec.map_or(0.0, |r| r.records_per_s)),
            p.record_bytes,
            rec.map_or(0.0, |r| r.commit_us_p50),
        ));
    }
    if has_warnings {
        summary
            .push_str(" But see the warnings: these flushes are not proven to reach stable media.");
    }
    Verdict {
        fit,
        fdatasync_us_p99: p99,
        fdatasync_us_p99_max: FIT_FDATASYNC_US_P99_MAX,
        summary,
    }
}
