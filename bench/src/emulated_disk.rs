//! `--emulate-disk hdd|sata|nvme`: reference devices whose fdatasync latency a node's log imposes
//! on every group commit (on top of the real write + fdatasync on this disk), so that what group
//! commit buys on slower disks can be measured on the real code path. Always marked as
//! emulation wherever it shows.

use std::time::Duration;

use raftline_node::DiskEmulation;
use serde::{Deserialize, Serialize};

/// A reference device class (the latencies people quote for one 4 KiB write + fdatasync).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DiskProfile {
    /// 7,200 rpm hard disk: ~10 ms per flush.
    Hdd,
    /// SATA SSD without power-loss protection: ~1 ms per flush.
    Sata,
    /// Consumer NVMe SSD: ~0.2 ms per flush.
    Nvme,
}

impl DiskProfile {
    /// The flag value and metrics label.
    pub fn name(self) -> &'static str {
        match self {
            DiskProfile::Hdd => "hdd",
            DiskProfile::Sata => "sata",
            DiskProfile::Nvme => "nvme",
        }
    }

    /// Time from issuing a group's write + fdatasync to its completion, at least.
    pub fn fsync_latency(self) -> Duration {
        match self {
            DiskProfile::Hdd => Duration::from_millis(10),
            DiskProfile::Sata => Duration::from_millis(1),
            DiskProfile::Nvme => Duration::from_micros(200),
        }
    }

    /// The unbatched entries/s people quote for one Raft group on this class of disk.
    pub fn reference_entries_per_s(self) -> &'static str {
        match self {
            DiskProfile::Hdd => "~100",
            DiskProfile::Sata => "~500-2,000",
            DiskProfile::Nvme => "~2,000-10,000",
        }
    }

    /// What a node's log does to emulate this device.
    pub fn emulation(self) -> DiskEmulation {
        DiskEmulation {
            profile: self.name(),
            fsync_latency: self.fsync_latency(),
        }
    }

    /// One line saying what the emulation does, for start-up logs and report headers.
    pub fn banner(self) -> String {
        self.emulation().banner()
    }
}

/// The `raftline server` arguments that make a node emulate `profile` (none for the real disk).
pub fn server_args(profile: Option<DiskProfile>) -> Vec<String> {
    profile.map_or_else(Vec::new, |p| vec!["--emulate-disk".into(), p.name().into()])
}

impl std::fmt::Display for DiskProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The emulation as the benchmark's JSON records it.
#[derive(Clone, Debug, Serialize)]
pub struct EmulatedDisk {
    /// The profile's name.
    pub profile: DiskProfile,
    /// Least time from issuing a log write + fdatasync to its completion, microseconds.
    pub fsync_latency_us: u64,
}

impl From<DiskProfile> for EmulatedDisk {
    fn from(profile: DiskProfile) -> EmulatedDisk {
        EmulatedDisk {
            profile,
            fsync_latency_us: profile.fsync_latency().as_micros() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_ordered_slowest_first_and_name_their_latency() {
        let latencies: Vec<_> = [DiskProfile::Hdd, DiskProfile::Sata, DiskProfile::Nvme]
            .iter()
            .map(|p| p.fsync_latency())
            .collect();
        assert!(latencies.windows(2).all(|w| w[0] > w[1]), "{latencies:?}");
        assert!(DiskProfile::Hdd
            .banner()
            .contains("EMULATED DISK (hdd profile)"));
        assert!(DiskProfile::Hdd.banner().contains("10 ms"));
        assert!(DiskProfile::Nvme.banner().contains("200 us"));
    }
}
