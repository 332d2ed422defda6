//! CPU accounting over a benchmark's measured window, from /proc: per core (/proc/stat) and per
//! thread of each process of interest (/proc/PID/task/TID/stat), as deltas between two samples.
//! Linux only; elsewhere (or if /proc is unreadable) the figures are simply absent.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// One process to account for.
#[derive(Debug, Clone)]
pub struct Watched {
    /// What to call it in the report ("node 1", "load generator").
    pub label: String,
    /// Its pid.
    pub pid: u32,
}

/// Cumulative counters at one instant.
pub struct CpuSample {
    at: Instant,
    /// Per core: (busy jiffies, total jiffies).
    cores: Vec<(u64, u64)>,
    /// Per watched process: thread name -> (threads of that name, user+system jiffies).
    processes: Vec<BTreeMap<String, (usize, u64)>>,
}

/// One core over the window.
#[derive(Debug, Serialize)]
pub struct CoreCpu {
    /// The core's number.
    pub core: usize,
    /// Share of the window it was not idle (user, system, irq, softirq, steal; not iowait), %.
    pub busy_percent: f64,
}

/// The threads of one name in one process over the window.
#[derive(Debug, Serialize)]
pub struct ThreadCpu {
    /// The thread name (comm).
    pub name: String,
    /// How many threads have that name.
    pub threads: usize,
    /// CPU used, % of one core.
    pub cpu_percent: f64,
}

/// One watched process over the window.
#[derive(Debug, Serialize)]
pub struct ProcessCpu {
    /// Its label.
    pub label: String,
    /// Its pid.
    pub pid: u32,
    /// CPU used by all its threads, % of one core.
    pub cpu_percent: f64,
    /// Per thread name, busiest first.
    pub threads: Vec<ThreadCpu>,
}

/// CPU use over the measured window.
#[derive(Debug, Serialize)]
pub struct CpuFigures {
    /// Per core.
    pub cores: Vec<CoreCpu>,
    /// Per watched process.
    pub processes: Vec<ProcessCpu>,
}

/// Jiffies per second (sysconf(_SC_CLK_TCK)).
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system, all threads) process `pid` has used so far; `None` once it is
/// gone (or where /proc is unreadable).
pub fn process_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let jiffies = user_system_jiffies(&stat)?;
    Some(jiffies as f64 / ticks_per_s())
}

/// CPU seconds (user + system) of this process's threads (`RUSAGE_SELF`) or of the children it
/// has waited for (`RUSAGE_CHILDREN`: a child's every thread, once it was reaped).
pub fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(usage.ru_utime) + s(usage.ru_stime)
}

/// utime + stime of a /proc/…/stat line: "pid (comm) state …" — comm may hold spaces and
/// parentheses, so fields count from the last ')': state(0) … utime(11) stime(12).
fn user_system_jiffies(stat: &str) -> Option<u64> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let at = |i: usize| fields.get(i).and_then(|x| x.parse::<u64>().ok());
    Some(at(11)? + at(12)?)
}

/// Reads the counters now; `None` if /proc/stat is unreadable.
pub fn sample(watched: &[Watched]) -> Option<CpuSample> {
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect();
    let processes = watched.iter().map(|w| threads_of(w.pid)).collect();
    Some(CpuSample {
        at,
        cores,
        processes,
    })
}

/// Thread name -> (count, user+system jiffies) of one process (empty if it is gone).
fn threads_of(pid: u32) -> BTreeMap<String, (usize, u64)> {
    let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let entry = by_name.entry(name).or_default();
        entry.0 += 1;
        entry.1 += user_system_jiffies(&stat).unwrap_or(0);
    }
    by_name
}

/// The figures between two samples of the same `watched` list.
pub fn between(before: &CpuSample, after: &CpuSample, watched: &[Watched]) -> CpuFigures {
    let window_s = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let hz = ticks_per_s();
    let cores = before
        .cores
        .iter()
        .zip(&after.cores)
        .enumerate()
        .map(|(core, (b, a))| {
            let total = a.1.saturating_sub(b.1);
            let busy = a.0.saturating_sub(b.0);
            CoreCpu {
                core,
                busy_percent: if total == 0 {
                    0.0
                } else {
                    busy as f64 * 100.0 / total as f64
                },
            }
        })
        .collect();
    let processes = watched
        .iter()
        .zip(before.processes.iter().zip(&after.processes))
        .map(|(w, (b, a))| {
            let mut threads: Vec<ThreadCpu> = a
                .iter()
                .map(|(name, (count, jiffies))| {
                    // Threads that ended within the window are missing from `after`: their
                    // time is lost, a small undercount for short-lived threads only.
                    let was = b.get(name).map_or(0, |(_, j)| *j);
                    ThreadCpu {
                        name: name.clone(),
                        threads: *count,
                        cpu_percent: jiffies.saturating_sub(was) as f64 / hz / window_s * 100.0,
                    }
                })
                .collect();
            threads.sort_by(|x, y| y.cpu_percent.total_cmp(&x.cpu_percent));
            ProcessCpu {
                label: w.label.clone(),
                pid: w.pid,
                cpu_percent: threads.iter().map(|t| t.cpu_percent).sum(),
                threads,
            }
        })
        .collect();
    CpuFigures { cores, processes }
}
