//! Device classification from measured fdatasync latency, checked against what the kernel says.

use serde::Serialize;

use super::device::DeviceFacts;

/// The kinds of disk an operator can put a raftline node on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskClass {
    /// A spinning disk: a flush waits for the platter (~10 ms).
    Hdd,
    /// A SATA flash disk without power-loss protection (~0.5–2 ms per flush).
    SataSsd,
    /// A consumer NVMe disk without power-loss protection (~0.1–0.5 ms per flush, or worse).
    NvmeConsumer,
    /// An NVMe disk with power-loss protection: its cache is durable, a flush is nearly free (~10–60 µs).
    NvmePlp,
    /// A virtual disk, no block device at all, or a latency no physical class explains.
    UnknownVirtualised,
}

impl DiskClass {
    /// A label for tables.
    pub fn label(self) -> &'static str {
        match self {
            DiskClass::Hdd => "HDD",
            DiskClass::SataSsd => "SATA SSD",
            DiskClass::NvmeConsumer => "NVMe (consumer)",
            DiskClass::NvmePlp => "NVMe with power-loss protection",
            DiskClass::UnknownVirtualised => "unknown / virtualised",
        }
    }
}

/// The range of fdatasync p50 latencies (µs, `min` inclusive, `max` exclusive) typical of one class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LatencyBand {
    /// The class this band indicates.
    pub class: DiskClass,
    /// Lowest p50 in the band, µs.
    pub fdatasync_us_p50_min: f64,
    /// First p50 above the band, µs.
    pub fdatasync_us_p50_max: f64,
}

/// Below this p50 no device makes a write durable (even a PLP drive needs a command round trip).
pub const FDATASYNC_US_P50_IMPLAUSIBLE: f64 = 5.0;

/// The bands, fastest first; together they cover [`FDATASYNC_US_P50_IMPLAUSIBLE`, ∞).
pub const LATENCY_BANDS: [LatencyBand; 4] = [
    LatencyBand {
        class: DiskClass::NvmePlp,
        fdatasync_us_p50_min: FDATASYNC_US_P50_IMPLAUSIBLE,
        fdatasync_us_p50_max: 80.0,
    },
    LatencyBand {
        class: DiskClass::NvmeConsumer,
        fdatasync_us_p50_min: 80.0,
        fdatasync_us_p50_max: 500.0,
    },
    LatencyBand {
        class: DiskClass::SataSsd,
        fdatasync_us_p50_min: 500.0,
        fdatasync_us_p50_max: 3_000.0,
    },
    LatencyBand {
        class: DiskClass::Hdd,
        fdatasync_us_p50_min: 3_000.0,
        fdatasync_us_p50_max: f64::INFINITY,
    },
];

/// The class a disk is put in, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Classification {
    /// The class reported to the operator.
    pub class: DiskClass,
    /// The class the latency alone points to (None below the plausible minimum).
    pub latency_class: Option<DiskClass>,
    /// The p50 fdatasync latency classified, µs.
    pub fdatasync_us_p50: f64,
    /// One sentence for the operator.
    pub reason: String,
}

/// The band `fdatasync_us_p50` falls into, if any.
pub fn latency_class(fdatasync_us_p50: f64) -> Option<DiskClass> {
    LATENCY_BANDS
        .iter()
        .find(|b| {
            fdatasync_us_p50 >= b.fdatasync_us_p50_min && fdatasync_us_p50 < b.fdatasync_us_p50_max
        })
        .map(|b| b.class)
}

/// Classifies a disk from its p50 fdatasync latency, overruled by evidence of a virtual disk or a
/// latency the kernel's description of the disk cannot explain.
pub fn classify(fdatasync_us_p50: f64, device: &DeviceFacts) -> Classification {
    let by_latency = latency_class(fdatasync_us_p50);
    let looks_like = by_latency.map_or("no physical disk", DiskClass::label);
    let (class, reason) = if device.disk.is_none() {
        (
            DiskClass::UnknownVirtualised,
            format!(
                "st_dev {} is no block device (tmpfs, overlayfs, btrfs); its p50 fdatasync of {fdatasync_us_p50:.0} µs looks like {looks_like}",
                device.dev
            ),
        )
    } else if !device.virtual_disk_evidence.is_empty() {
        (
            DiskClass::UnknownVirtualised,
            format!(
                "virtual disk ({}); its p50 fdatasync of {fdatasync_us_p50:.0} µs looks like {looks_like}, but the host decides what a flush means",
                device.virtual_disk_evidence.join("; ")
            ),
        )
    } else if let Some(class) = by_latency {
        if device.rotational == Some(true) && class != DiskClass::Hdd {
            (
                DiskClass::UnknownVirtualised,
                format!("the kernel reports a rotational disk, yet p50 fdatasync is {fdatasync_us_p50:.0} µs, like {looks_like}: a cache answers the flushes"),
            )
        } else {
            (
                class,
                format!(
                    "p50 fdatasync {fdatasync_us_p50:.0} µs is in the {} band",
                    class.label()
                ),
            )
        }
    } else {
        (
            DiskClass::UnknownVirtualised,
            format!("p50 fdatasync {fdatasync_us_p50:.1} µs is below {FDATASYNC_US_P50_IMPLAUSIBLE} µs, faster than any disk can make data durable"),
        )
    };
    Classification {
        class,
        latency_class: by_latency,
        fdatasync_us_p50,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn physical(rotational: bool) -> DeviceFacts {
        DeviceFacts {
            disk: Some("sda".into()),
            rotational: Some(rotational),
            ..DeviceFacts::default()
        }
    }

    #[test]
    fn latency_bands_classify_at_and_around_every_threshold() {
        let cases = [
            (4.9, None),
            (5.0, Some(DiskClass::NvmePlp)),
            (45.0, Some(DiskClass::NvmePlp)),
            (79.9, Some(DiskClass::NvmePlp)),
            (80.0, Some(DiskClass::NvmeConsumer)),
            (499.0, Some(DiskClass::NvmeConsumer)),
            (500.0, Some(DiskClass::SataSsd)),
            (2_999.0, Some(DiskClass::SataSsd)),
            (3_000.0, Some(DiskClass::Hdd)),
            (12_000.0, Some(DiskClass::Hdd)),
        ];
        for (us, expected) in cases {
            assert_eq!(latency_class(us), expected, "p50 {us} µs");
        }
    }

    #[test]
    fn bands_are_contiguous_and_ordered() {
        for pair in LATENCY_BANDS.windows(2) {
            assert_eq!(pair[0].fdatasync_us_p50_max, pair[1].fdatasync_us_p50_min);
        }
    }

    #[test]
    fn physical_disks_get_their_latency_class() {
        let cases = [
            (30.0, false, DiskClass::NvmePlp),
            (200.0, false, DiskClass::NvmeConsumer),
            (1_000.0, false, DiskClass::SataSsd),
            (9_000.0, true, DiskClass::Hdd),
        ];
        for (us, rotational, expected) in cases {
            assert_eq!(
                classify(us, &physical(rotational)).class,
                expected,
                "p50 {us} µs"
            );
        }
    }

    #[test]
    fn virtual_disk_evidence_overrules_latency() {
        let device = DeviceFacts {
            virtual_disk_evidence: vec!["driver virtio_blk is paravirtual".into()],
            ..physical(true)
        };
        let c = classify(45.0, &device);
        assert_eq!(c.class, DiskClass::UnknownVirtualised);
        assert_eq!(c.latency_class, Some(DiskClass::NvmePlp));
        assert!(c.reason.contains("virtio_blk"), "{}", c.reason);
    }

    #[test]
    fn fast_flush_on_a_rotational_disk_is_unknown() {
        assert_eq!(
            classify(300.0, &physical(true)).class,
            DiskClass::UnknownVirtualised
        );
    }

    #[test]
    fn directory_without_a_block_device_is_unknown() {
        let tmpfs = DeviceFacts {
            dev: "0:27".into(),
            ..DeviceFacts::default()
        };
        let c = classify(26.0, &tmpfs);
        assert_eq!(c.class, DiskClass::UnknownVirtualised);
        assert!(c.reason.contains("no block device"), "{}", c.reason);
    }

    #[test]
    fn implausibly_fast_flush_is_unknown() {
        let c = classify(2.0, &physical(false));
        assert_eq!(c.class, DiskClass::UnknownVirtualised);
        assert_eq!(c.latency_class, None);
    }
}
