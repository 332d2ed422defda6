//! How busy the machine was: on a few shared cores, scheduler delay after each fdatasync wake-up
//! shows up in every latency figure, so the profile records the load beside them.

use serde::Serialize;

/// Load above this many runnable tasks per core makes latency figures suspect.
pub const BUSY_LOAD_PER_CPU: f64 = 0.5;

/// The 1-minute load average and the number of cores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MachineLoad {
    /// /proc/loadavg first field (None where unreadable).
    pub load_avg_1m: Option<f64>,
    /// Cores this process may run on.
    pub cpus: usize,
}

impl MachineLoad {
    /// Reads the current load.
    pub fn now() -> Self {
        let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()));
        MachineLoad {
            load_avg_1m,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// True when other work likely competed for the cores during the run.
    pub fn busy(&self) -> bool {
        self.load_avg_1m
            .is_some_and(|l| l > BUSY_LOAD_PER_CPU * self.cpus as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_means_more_than_half_a_runnable_task_per_core() {
        let load = |l: f64, cpus| MachineLoad {
            load_avg_1m: Some(l),
            cpus,
        };
        assert!(!load(1.0, 2).busy());
        assert!(load(1.01, 2).busy());
        assert!(load(4.8, 2).busy());
        assert!(!MachineLoad {
            load_avg_1m: None,
            cpus: 2
        }
        .busy());
    }
}
