//! `raftline dev --demo`, the first command a newcomer runs: three child nodes come up, the demo
//! producer's records reach the tailer, and SIGINT stops everything cleanly.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// A `--base-port` whose twelve ports (BASE+1..3, +101..103, +201..203, Kafka's +251..253) are
/// free, below the ephemeral port range.
fn free_base_port() -> u16 {
    let mut base = 21_000 + (std::process::id() * 307 % 8_000) as u16;
    loop {
        let free = [0u16, 100, 200, 250]
            .iter()
            .flat_map(|o| (1..=3).map(move |n| base + o + n))
            .all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
        base += 300;
        assert!(base < 32_000, "no free port range");
    }
}

/// Stops `raftline dev` (and through it its nodes) if the test fails half-way.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + DEADLINE;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn dev_demo_brings_up_three_nodes_streams_records_and_stops_cleanly_on_sigint() {
    let data = tempfile::Builder::new()
        .prefix("raftline-dev-test")
        .tempdir_in("/tmp")
        .unwrap();
    let base = free_base_port();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_raftline"))
        .args(["dev", "--demo", "--base-port", &base.to_string()])
        .arg("--data")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let mut dev = StopOnDrop(dev);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut next_line = |what: &str, want: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("never saw {what}; output so far:\n{}", seen.join("\n")),
            }
        }
    };
    next_line("the cluster up", &|l| l.contains("is up: 3 nodes"));
    next_line("records reaching the tailer", &|l| {
        l.starts_with("demo:") && !l.contains("(0 in total)") && l.contains("seen by the tailer")
    });
    unsafe { libc::kill(dev.0.id() as i32, libc::SIGINT) };
    let summary = next_line("the demo summary", &|l| l.starts_with("demo summary"));
    assert!(!summary.contains(": 0 records seen"), "{summary}");
    for id in 1..=3 {
        let stopped = next_line("a node stopping", &|l| l.contains("stopped ("));
        assert!(
            stopped.ends_with("(exit status: 0)"),
            "node {id}: {stopped}"
        );
    }
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = dev.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "dev exits 0 after Ctrl-C: {status}");
    for id in 1..=3 {
        assert!(data.path().join(format!("node-{id}/identity")).exists());
    }
}
