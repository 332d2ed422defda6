//! `raftline bench fsync`: command-line glue around `crate::fsync::profile`.

use std::fs;
use std::io::{self, IsTerminal};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::fsync::profile::{run_profile, ProfileConfig, ProfileObserver, StepPlan};
use crate::fsync::text_report::render_text;
use crate::fsync::{svg_plot, BenchError, IoPath};
use crate::stop::StopSignal;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

/// The directory used when --dir is not given; the only one this command creates, given or defaulted (and
/// removes again if it created it and left it empty).
const DEFAULT_DIR: &str = "./data";
/// Longest accepted --duration per step.
const STEP_DURATION_S_MAX: f64 = 600.0;

/// Exit status when the disk is measured but unfit (p99 fdatasync >= 10 ms).
const EXIT_UNFIT: u8 = 2;
/// Exit status after Ctrl-C (128 + SIGINT, the shell convention).
const EXIT_INTERRUPTED: u8 = 130;

/// The long `--help` text of `raftline bench fsync`.
pub const LONG_ABOUT: &str = "Profile a disk the way a Raft log uses it.\n\n\
Measures, in scratch files inside --dir (removed afterwards, also on Ctrl-C):\n  \
1. 4 KiB sequential writes each followed by fdatasync, buffered (the etcd disk check)\n  \
2. the same on raftline's fast path: O_DIRECT through io_uring (fresh file, with the fdatasync linked to\n     the write as the log submits it, and into prewritten blocks)\n  \
3. the group-commit curve: 4 KiB to 1 MiB writes, each followed by fdatasync\n  \
4. sequential O_DIRECT bandwidth with 4 writes in flight and one fdatasync at the end\n  \
5. honesty checks: flushes too fast for the device class, volatile write cache, rotational flag\n\n\
Then classifies the disk (HDD, SATA SSD, consumer NVMe, PLP NVMe, unknown/virtualised), predicts\n\
records/s for 256 B and 1 KiB records with and without group commit (beside reference HDD/SATA/NVMe\n\
profiles), and gives the verdict: fit when p99 fdatasync < 10 ms (the etcd rule).\n\n\
Exit status: 0 fit, 2 unfit, 1 error, 130 interrupted.";

#[derive(Args, Debug)]
pub struct FsyncArgs {
    /// Directory on the disk to profile [default: ./data]. Must exist, except ./data, which is created (and
    /// removed again if it was created here and is left empty).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Time budget per step in seconds (9 steps; the default run takes about 40 s).
    #[arg(long, default_value_t = 4.0)]
    duration: f64,
    /// Largest scratch file per step in MiB; a step ends early when its file is full. Needs this much free
    /// space plus a 256 MiB reserve.
    #[arg(long, default_value_t = 1024)]
    size: u64,
    /// The fast path to measure; falls back (with a warning) when the kernel or filesystem refuses it.
    #[arg(long, value_enum, default_value_t = PathArg::DirectUring)]
    io_path: PathArg,
    /// Print the profile as JSON on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the group-commit curve (fsyncs/s and MB/s vs write size, log scales) as an SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PathArg {
    /// Page-cache writes + fdatasync.
    Buffered,
    /// O_DIRECT pwrite + fdatasync.
    DirectPwrite,
    /// O_DIRECT write, then fdatasync, through io_uring (as fio does; also measures the linked variant).
    DirectUring,
    /// O_DIRECT write with a linked fdatasync through io_uring (raftline's log path).
    DirectUringLinked,
}

impl From<PathArg> for IoPath {
    fn from(p: PathArg) -> Self {
        match p {
            PathArg::Buffered => IoPath::Buffered,
            PathArg::DirectPwrite => IoPath::DirectPwrite,
            PathArg::DirectUring => IoPath::DirectUring,
            PathArg::DirectUringLinked => IoPath::DirectUringLinked,
        }
    }
}

/// Runs the profile and prints it; returns the exit status.
pub fn run(args: FsyncArgs) -> anyhow::Result<ExitCode> {
    if !(args.duration > 0.0 && args.duration <= STEP_DURATION_S_MAX) {
        bail!(
            "--duration must be between 0 and {STEP_DURATION_S_MAX} seconds, got {}",
            args.duration
        );
    }
    if args.size == 0 {
        bail!("--size must be at least 1 MiB");
    }
    // ./data, given or defaulted, is the node's own data directory: creating it is what the operator
    // expects. Any other missing directory is more likely a typo than a wish, so it is an error.
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let without_cur_dir = |p: &Path| {
        p.components()
            .filter(|c| *c != Component::CurDir)
            .collect::<PathBuf>()
    };
    let is_default = without_cur_dir(&dir) == without_cur_dir(Path::new(DEFAULT_DIR));
    let created_dir = is_default && !dir.exists();
    if created_dir {
        fs::create_dir(&dir)
            .with_context(|| format!("creating the default directory {}", dir.display()))?;
    }
    let result = profile_and_print(&args, &dir);
    if created_dir {
        // Only succeeds if empty: never removes anything this command did not create.
        let _ = fs::remove_dir(&dir);
    }
    result
}

fn profile_and_print(args: &FsyncArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let stop = StopSignal::default();
    let handler_stop = stop.clone();
    ctrlc::set_handler(move || handler_stop.raise()).context("installing the Ctrl-C handler")?;
    let config = ProfileConfig {
        dir: dir.to_path_buf(),
        step_duration: Duration::from_secs_f64(args.duration),
        file_bytes_max: args.size.saturating_mul(1 << 20),
        fast_path: args.io_path.into(),
    };
    let mut progress = ProgressDisplay::new();
    let outcome = run_profile(&config, &stop, &mut progress);
    progress.finish();
    let profile = match outcome {
        Ok(profile) => profile,
        Err(BenchError::Interrupted) => {
            eprintln!("interrupted: scratch files removed from {}", dir.display());
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&profile).context("encoding the profile as JSON")?
        );
    } else {
        print!("{}", render_text(&profile));
    }
    if let Some(path) = &args.svg {
        fs::write(path, svg_plot::render_svg(&profile))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the group-commit curve to {}", path.display());
    }
    Ok(if profile.verdict.fit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNFIT)
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal), in milliseconds of planned time.
struct ProgressDisplay {
    bar: ProgressBar,
    plan: Vec<StepPlan>,
    step_base_ms: u64,
}

impl ProgressDisplay {
    fn new() -> Self {
        let bar = if io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{bar:30}] {percent:>3}% step {msg}")
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        ProgressDisplay {
            bar,
            plan: Vec::new(),
            step_base_ms: 0,
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl ProfileObserver for ProgressDisplay {
    fn planned(&mut self, steps: &[StepPlan]) {
        self.plan = steps.to_vec();
        let total_ms: u64 = steps.iter().map(|s| s.duration.as_millis() as u64).sum();
        self.bar.set_length(total_ms);
        self.bar.enable_steady_tick(Duration::from_millis(120));
    }

    fn step_started(&mut self, index: usize) {
        self.step_base_ms = self.plan[..index]
            .iter()
            .map(|s| s.duration.as_millis() as u64)
            .sum();
        self.bar.set_position(self.step_base_ms);
        self.bar.set_message(format!(
            "{}/{}: {}",
            index + 1,
            self.plan.len(),
            self.plan[index].label
        ));
    }

    fn step_progress(&mut self, elapsed: Duration) {
        self.bar
            .set_position(self.step_base_ms + elapsed.as_millis() as u64);
    }
}
