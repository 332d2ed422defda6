//! Honesty checks: signs that an fdatasync may return before the data is on stable media.

use serde::Serialize;

use super::classify::DiskClass;
use super::device::DeviceFacts;
use super::LatencySummary;

/// Flash without power-loss protection cannot program a flush to NAND faster than this (p50, µs).
pub const NON_PLP_FLASH_FLUSH_US_MIN: f64 = 80.0;
/// A spinning disk cannot make a write durable faster than this (p50, µs).
pub const ROTATIONAL_FLUSH_US_MIN: f64 = 1_000.0;

/// One warning with the facts behind it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HonestyWarning {
    /// What may be wrong and what it means for durability.
    pub message: String,
    /// The measured and reported facts that raised it.
    pub evidence: Vec<String>,
}

/// Checks the measured fdatasync latency against what the kernel reports about the disk.
pub fn honesty_warnings(
    fdatasync: &LatencySummary,
    device: &DeviceFacts,
    class: DiskClass,
) -> Vec<HonestyWarning> {
    let mut warnings = Vec::new();
    let p50 = fdatasync.us_p50;
    let mut evidence = vec![format!(
        "fdatasync p50 {p50:.0} µs, p99 {:.0} µs",
        fdatasync.us_p99
    )];
    evidence.push(format!(
        "st_dev {} -> disk {}",
        device.dev,
        device.disk.as_deref().unwrap_or("(none)")
    ));
    if let Some(w) = &device.write_cache {
        evidence.push(format!("queue/write_cache = \"{w}\""));
    }
    if let Some(r) = device.rotational {
        evidence.push(format!("queue/rotational = {}", u8::from(r)));
    }
    if let Some(d) = &device.driver {
        evidence.push(format!("driver = {d}"));
    }
    if let Some(m) = &device.model {
        evidence.push(format!("model = {m}"));
    }
    evidence.extend(device.virtual_disk_evidence.iter().cloned());
    evidence.extend(device.virtual_machine_evidence.iter().cloned());

    if p50 < NON_PLP_FLASH_FLUSH_US_MIN && class != DiskClass::NvmePlp {
        warnings.push(HonestyWarning {
            message: format!(
                "fdatasync returns in {p50:.0} µs (p50), faster than flash without power-loss protection can make data durable (~{NON_PLP_FLASH_FLUSH_US_MIN:.0} µs): unless this disk has power-loss protection, flushes stop in a cache (hypervisor, controller, or a disk that ignores FLUSH) and may not reach stable media"
            ),
            evidence: evidence.clone(),
        });
    }
    if device.rotational == Some(true) && p50 < ROTATIONAL_FLUSH_US_MIN {
        warnings.push(HonestyWarning {
            message: format!(
                "the kernel reports a rotational disk, yet fdatasync returns in {p50:.0} µs (a platter needs ~{ROTATIONAL_FLUSH_US_MIN:.0} µs or more): a cache answers the flushes (virtual disks often report rotational=1)"
            ),
            evidence: evidence.clone(),
        });
    }
    if device.volatile_write_cache() == Some(false) && class != DiskClass::NvmePlp {
        warnings.push(HonestyWarning {
            message: "queue/write_cache is \"write through\": the kernel sends no FLUSH on fdatasync; that is safe only if the disk has no volatile cache (power-loss protection, or its cache disabled)".to_string(),
            evidence: evidence.clone(),
        });
    }
    if !device.virtual_disk_evidence.is_empty() {
        warnings.push(HonestyWarning {
            message: "virtual disk: what a flush means is the hypervisor's choice (e.g. QEMU cache=unsafe drops flushes); the figures are the host's, not a physical disk's".to_string(),
            evidence: evidence.clone(),
        });
    }
    if device.disk.is_none() {
        warnings.push(HonestyWarning {
            message: format!(
                "st_dev {} is no block device (tmpfs, overlayfs or btrfs): the device checks were skipped, and on tmpfs nothing is durable",
                device.dev
            ),
            evidence,
        });
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(us_p50: f64) -> LatencySummary {
        LatencySummary {
            count: 100,
            us_p50,
            us_p90: us_p50,
            us_p99: us_p50,
            us_p999: us_p50,
            us_max: us_p50,
            us_mean: us_p50,
        }
    }

    fn disk(rotational: bool, write_cache: &str) -> DeviceFacts {
        DeviceFacts {
            dev: "259:0".into(),
            disk: Some("nvme0n1".into()),
            rotational: Some(rotational),
            write_cache: Some(write_cache.into()),
            ..DeviceFacts::default()
        }
    }

    #[test]
    fn consumer_disk_at_plausible_latency_raises_nothing() {
        assert!(honesty_warnings(
            &latency(300.0),
            &disk(false, "write back"),
            DiskClass::NvmeConsumer
        )
        .is_empty());
        assert!(
            honesty_warnings(&latency(8_000.0), &disk(true, "write back"), DiskClass::Hdd)
                .is_empty()
        );
    }

    #[test]
    fn fast_flush_with_volatile_cache_warns_with_evidence() {
        let w = honesty_warnings(
            &latency(45.0),
            &disk(false, "write back"),
            DiskClass::UnknownVirtualised,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("45 µs"));
        assert!(
            w[0].evidence.iter().any(|e| e.contains("write back")),
            "{:?}",
            w[0].evidence
        );
    }

    #[test]
    fn plp_disk_at_plp_latency_raises_nothing() {
        assert!(honesty_warnings(
            &latency(30.0),
            &disk(false, "write through"),
            DiskClass::NvmePlp
        )
        .is_empty());
    }

    #[test]
    fn rotational_disk_flushing_in_microseconds_warns() {
        let w = honesty_warnings(
            &latency(300.0),
            &disk(true, "write back"),
            DiskClass::UnknownVirtualised,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("rotational"));
    }

    #[test]
    fn write_through_on_a_consumer_disk_warns() {
        let w = honesty_warnings(
            &latency(300.0),
            &disk(false, "write through"),
            DiskClass::NvmeConsumer,
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].message.contains("no FLUSH"));
    }

    #[test]
    fn missing_block_device_warns() {
        let device = DeviceFacts {
            dev: "0:42".into(),
            ..DeviceFacts::default()
        };
        let w = honesty_warnings(&latency(300.0), &device, DiskClass::NvmeConsumer);
        assert!(
            w.iter().any(|w| w.message.contains("no block device")),
            "{w:?}"
        );
    }
}
