//! What the kernel says about the block device under a directory (sysfs), the evidence for the
//! honesty checks. Best effort: a fact that cannot be read is `None`, never an error.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Drivers of paravirtual disks: their flush reaches the hypervisor, which may or may not pass it on.
const PARAVIRTUAL_DRIVERS: [&str; 5] = [
    "virtio_blk",
    "virtio_scsi",
    "xen_blkfront",
    "vmw_pvscsi",
    "hv_storvsc",
];
/// Lower-case fragments of model strings that cloud and hypervisor disks report.
const VIRTUAL_MODEL_MARKERS: [&str; 7] = [
    "qemu",
    "virtual",
    "vbox",
    "vmware",
    "elastic block store",
    "persistentdisk",
    "msft",
];

/// Facts about the disk that holds a directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceFacts {
    /// st_dev of the directory, "MAJ:MIN".
    pub dev: String,
    /// The whole disk ("vda", "nvme0n1"); None when st_dev is no block device (tmpfs, overlayfs, btrfs).
    pub disk: Option<String>,
    /// The partition the filesystem sits on, if any.
    pub partition: Option<String>,
    /// queue/rotational of the disk.
    pub rotational: Option<bool>,
    /// queue/write_cache: "write back" (volatile cache, the kernel sends FLUSH on fdatasync) or
    /// "write through" (the kernel sends no FLUSH at all).
    pub write_cache: Option<String>,
    /// queue/fua: the device honours Force Unit Access writes.
    pub fua: Option<bool>,
    /// device/model (or device/vendor).
    pub model: Option<String>,
    /// The disk's driver (virtio_blk, nvme, sd, ...).
    pub driver: Option<String>,
    /// Evidence that the disk itself is virtual (paravirtual driver, hypervisor model string, loop/zram).
    pub virtual_disk_evidence: Vec<String>,
    /// Evidence that the machine is a virtual machine (CPU `hypervisor` flag).
    pub virtual_machine_evidence: Vec<String>,
}

impl DeviceFacts {
    /// True when the disk reports a volatile write cache ("write back").
    pub fn volatile_write_cache(&self) -> Option<bool> {
        self.write_cache
            .as_deref()
            .map(|w| w.trim() == "write back")
    }
}

/// Inspects the disk under `dir` through /sys and /proc/cpuinfo.
pub fn inspect(dir: &Path) -> DeviceFacts {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    match fs::metadata(dir) {
        Ok(meta) => inspect_dev(Path::new("/sys"), meta.dev(), &cpuinfo),
        Err(_) => DeviceFacts::default(),
    }
}

/// Inspects device `st_dev` under the sysfs tree at `sys_root` (a parameter so tests can fake it).
pub fn inspect_dev(sys_root: &Path, st_dev: u64, cpuinfo: &str) -> DeviceFacts {
    let (major, minor) = (libc::major(st_dev), libc::minor(st_dev));
    let mut facts = DeviceFacts {
        dev: format!("{major}:{minor}"),
        ..DeviceFacts::default()
    };
    if cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"))
    {
        facts
            .virtual_machine_evidence
            .push("CPU flag `hypervisor` in /proc/cpuinfo".to_string());
    }
    let link = sys_root.join("dev/block").join(&facts.dev);
    let Ok(node) = fs::canonicalize(&link) else {
        return facts;
    };
    // A partition's sysfs node sits inside its disk's node and has a `partition` file.
    let disk_dir: PathBuf = if node.join("partition").exists() {
        facts.partition = file_name(&node);
        node.parent().map(Path::to_path_buf).unwrap_or(node.clone())
    } else {
        node.clone()
    };
    facts.disk = file_name(&disk_dir);
    let read = |rel: &str| {
        fs::read_to_string(disk_dir.join(rel))
            .ok()
            .map(|s| s.trim().to_string())
    };
    facts.rotational = read("queue/rotational").map(|v| v == "1");
    facts.write_cache = read("queue/write_cache");
    facts.fua = read("queue/fua").map(|v| v == "1");
    facts.model = read("device/model")
        .or_else(|| read("device/vendor"))
        .filter(|m| !m.is_empty());
    facts.driver = ["device/driver", "device/device/driver"]
        .iter()
        .find_map(|rel| fs::read_link(disk_dir.join(rel)).ok())
        .and_then(|target| file_name(&target));
    if let Some(driver) = facts
        .driver
        .as_deref()
        .filter(|d| PARAVIRTUAL_DRIVERS.contains(d))
    {
        facts
            .virtual_disk_evidence
            .push(format!("driver {driver} is paravirtual"));
    }
    if let Some(model) = facts.model.as_deref() {
        let lower = model.to_lowercase();
        if VIRTUAL_MODEL_MARKERS.iter().any(|m| lower.contains(m)) {
            facts
                .virtual_disk_evidence
                .push(format!("model \"{model}\" is a virtual disk"));
        }
    }
    if disk_dir.components().any(|c| c.as_os_str() == "virtual") {
        facts.virtual_disk_evidence.push(format!(
            "{} is a virtual block device (loop, zram, ...)",
            disk_dir.display()
        ));
    }
    facts
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Builds /sys/devices/pci0/virtio1/block/vda[/vda1] and /sys/dev/block links like the kernel's.
    fn fake_sysfs(root: &Path) {
        let disk = root.join("devices/pci0/virtio1/block/vda");
        fs::create_dir_all(disk.join("queue")).unwrap();
        fs::create_dir_all(disk.join("vda1")).unwrap();
        fs::create_dir_all(root.join("bus/virtio/drivers/virtio_blk")).unwrap();
        fs::write(disk.join("queue/rotational"), "1\n").unwrap();
        fs::write(disk.join("queue/write_cache"), "write back\n").unwrap();
        fs::write(disk.join("queue/fua"), "0\n").unwrap();
        fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        symlink(root.join("devices/pci0/virtio1"), disk.join("device")).unwrap();
        symlink(
            root.join("bus/virtio/drivers/virtio_blk"),
            root.join("devices/pci0/virtio1/driver"),
        )
        .unwrap();
        fs::create_dir_all(root.join("dev/block")).unwrap();
        symlink(
            "../../devices/pci0/virtio1/block/vda",
            root.join("dev/block/254:0"),
        )
        .unwrap();
        symlink(
            "../../devices/pci0/virtio1/block/vda/vda1",
            root.join("dev/block/254:1"),
        )
        .unwrap();
    }

    #[test]
    fn partition_is_followed_to_its_disk_queue() {
        let root = tempfile::tempdir().unwrap();
        fake_sysfs(root.path());
        let facts = inspect_dev(
            root.path(),
            libc::makedev(254, 1),
            "flags\t: fpu hypervisor sse\n",
        );
        assert_eq!(facts.dev, "254:1");
        assert_eq!(facts.disk.as_deref(), Some("vda"));
        assert_eq!(facts.partition.as_deref(), Some("vda1"));
        assert_eq!(facts.rotational, Some(true));
        assert_eq!(facts.volatile_write_cache(), Some(true));
        assert_eq!(facts.fua, Some(false));
        assert_eq!(facts.driver.as_deref(), Some("virtio_blk"));
        assert_eq!(
            facts.virtual_disk_evidence,
            vec!["driver virtio_blk is paravirtual".to_string()]
        );
        assert_eq!(facts.virtual_machine_evidence.len(), 1);
    }

    #[test]
    fn whole_disk_has_no_partition() {
        let root = tempfile::tempdir().unwrap();
        fake_sysfs(root.path());
        let facts = inspect_dev(root.path(), libc::makedev(254, 0), "flags\t: fpu sse\n");
        assert_eq!(facts.disk.as_deref(), Some("vda"));
        assert_eq!(facts.partition, None);
        assert!(facts.virtual_machine_evidence.is_empty());
    }

    #[test]
    fn anonymous_device_has_no_disk_facts() {
        let root = tempfile::tempdir().unwrap();
        fake_sysfs(root.path());
        let facts = inspect_dev(root.path(), libc::makedev(0, 42), "");
        assert_eq!(facts.dev, "0:42");
        assert_eq!(facts.disk, None);
        assert_eq!(facts.write_cache, None);
    }
}
