//! One `measure_fdatasync` run as JSON: the step `raftline bench fsync` runs, alone, so that
//! `bench/fio-compare.sh` can put fio right before and right after it.
//!
//!   cargo run --release -p raftline-bench --example fdatasync_probe -- DIR buffered|direct-pwrite|direct-uring|direct-uring-linked SECONDS FILE_MIB

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use raftline_bench::fsync::{measure_fdatasync, FsyncProbe, IoPath};
use raftline_bench::stop::StopSignal;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, path, seconds, file_mib] = args.as_slice() else {
        eprintln!(
            "usage: fdatasync_probe DIR buffered|direct-pwrite|direct-uring|direct-uring-linked SECONDS FILE_MIB"
        );
        return ExitCode::from(64);
    };
    let path = match path.as_str() {
        "buffered" => IoPath::Buffered,
        "direct-pwrite" => IoPath::DirectPwrite,
        "direct-uring" => IoPath::DirectUring,
        "direct-uring-linked" => IoPath::DirectUringLinked,
        other => {
            eprintln!("unknown path {other}");
            return ExitCode::from(64);
        }
    };
    let (Ok(seconds), Ok(file_mib)) = (seconds.parse::<f64>(), file_mib.parse::<u64>()) else {
        eprintln!("SECONDS and FILE_MIB must be numbers");
        return ExitCode::from(64);
    };
    let probe = FsyncProbe {
        file_bytes_max: file_mib << 20,
        ..FsyncProbe::new(4096, Duration::from_secs_f64(seconds), path)
    };
    match measure_fdatasync(&PathBuf::from(dir), &probe, &StopSignal::default()) {
        Ok(m) => {
            println!(
                "{}",
                serde_json::to_string(&m).expect("a measurement encodes as JSON")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
