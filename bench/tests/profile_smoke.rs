//! A whole profile with tiny budgets on the ext4 disk: structural facts only, never timing thresholds.

use std::time::Duration;

use raftline_bench::fsync::predict::RECORD_BYTES;
use raftline_bench::fsync::profile::{
    run_profile, ProfileConfig, ProfileObserver, StepPlan, BATCH_SIZES,
};
use raftline_bench::fsync::{svg_plot, text_report, IoPath};
use raftline_bench::stop::StopSignal;

#[derive(Default)]
struct Recorder {
    plan: Vec<StepPlan>,
    started: Vec<usize>,
}

impl ProfileObserver for Recorder {
    fn planned(&mut self, steps: &[StepPlan]) {
        self.plan = steps.to_vec();
    }
    fn step_started(&mut self, index: usize) {
        self.started.push(index);
    }
    fn step_progress(&mut self, _elapsed: Duration) {}
}

fn run(
    fast_path: IoPath,
) -> (
    raftline_bench::fsync::profile::Profile,
    Recorder,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = ProfileConfig {
        dir: dir.path().to_path_buf(),
        step_duration: Duration::from_millis(30),
        file_bytes_max: 8 << 20,
        fast_path,
    };
    let mut recorder = Recorder::default();
    let profile =
        run_profile(&config, &StopSignal::default(), &mut recorder).expect("profile runs");
    (profile, recorder, dir)
}

#[test]
fn fast_path_profile_has_every_step_and_table() {
    let (p, recorder, dir) = run(IoPath::DirectUring);
    assert_eq!(p.fast_path, IoPath::DirectUring);
    assert_eq!(
        recorder.started,
        (0..recorder.plan.len()).collect::<Vec<_>>(),
        "every planned step ran in order"
    );
    assert_eq!(recorder.plan.len(), 9);
    assert_eq!(
        p.fast_4k_linked.as_ref().map(|m| m.path),
        Some(IoPath::DirectUringLinked)
    );
    assert!(p.fast_4k_prewritten.is_some());
    let sizes: Vec<usize> = p.curve.iter().map(|m| m.write_bytes).collect();
    assert_eq!(sizes, BATCH_SIZES.to_vec());
    for m in &p.curve {
        assert!(m.commits > 0, "{m:?}");
        assert!(
            m.commit.us_p50 <= m.commit.us_p99 && m.commit.us_p99 <= m.commit.us_max,
            "{m:?}"
        );
    }
    assert!(p.bandwidth.bytes_written > 0);
    assert_eq!(
        p.predictions
            .iter()
            .map(|x| x.record_bytes)
            .collect::<Vec<_>>(),
        RECORD_BYTES.to_vec()
    );
    assert_eq!(p.reference_predictions.len(), 3);
    assert_eq!(
        p.verdict.fit,
        p.verdict.fdatasync_us_p99 < p.verdict.fdatasync_us_p99_max
    );
    let text = text_report::render_text(&p);
    assert!(
        text.contains("reference, not measured") && text.contains("verdict:"),
        "{text}"
    );
    let svg = svg_plot::render_svg(&p);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2, "one curve per panel");
    assert!(serde_json::to_string(&p)
        .unwrap()
        .contains("\"fast_path\":\"direct-uring\""));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "scratch files removed"
    );
}

#[test]
fn forced_buffered_profile_skips_the_direct_steps() {
    let (p, recorder, _dir) = run(IoPath::Buffered);
    assert_eq!(p.fast_path, IoPath::Buffered);
    assert!(p.fast_4k_prewritten.is_none() && p.fast_4k_linked.is_none());
    assert_eq!(
        recorder.plan.len(),
        6,
        "buffered 4k, 4 larger sizes, bandwidth"
    );
    assert_eq!(p.curve[0].path, IoPath::Buffered);
    assert_eq!(p.bandwidth.path, IoPath::Buffered);
}
