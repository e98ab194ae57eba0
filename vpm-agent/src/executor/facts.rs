//! What the safety checks need to know of a device, read from the system.
//!
//! Everything here is read through rooted paths ([`Roots`]), so the same code
//! runs against the host, the lab guest and temp trees in tests.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::hal::{self, Bdf, HalError, PciFunction, Sysfs};
use crate::policy::{Candidate, Policy};

/// Where the kernel's file systems are.
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs (`/sys`).
    pub sys: Sysfs,
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// devtmpfs (`/dev`).
    pub dev: PathBuf,
}

impl Roots {
    /// The running system's `/sys`, `/proc` and `/dev`.
    pub fn host() -> Self {
        Self {
            sys: Sysfs::host(),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// A process holding a device open through VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderInfo {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The VM it is, when vpm recognizes it as a VMM.
    pub vm: Option<String>,
}

/// Another function in the device's IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// Its address.
    pub bdf: Bdf,
    /// Its driver, if bound.
    pub driver: Option<String>,
}

/// A host use of a device that vpm must not disturb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HostUse {
    /// A block device of the function (or a partition of it) is mounted.
    Mounted {
        /// The block device (`vda`, `nvme0n1p1`).
        block: String,
        /// Where it is mounted.
        mountpoint: String,
    },
    /// A network interface of the function is up.
    NetUp {
        /// The interface.
        ifname: String,
    },
}

/// A VF of a physical function and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfFacts {
    /// The VF.
    pub bdf: Bdf,
    /// Processes holding it through VFIO.
    pub holders: Vec<HolderInfo>,
}

/// Everything the safety checks consider about one function.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// The function as sysfs shows it.
    pub function: PciFunction,
    /// Whether a policy file was loaded at all.
    pub policy_present: bool,
    /// Whether the policy's allow-list names the function (or its PF).
    pub allowed: bool,
    /// Whether an IOMMU is on (DMA remapping, needed for VFIO).
    pub iommu_enabled: bool,
    /// The other functions of its IOMMU group.
    pub group_members: Vec<GroupMember>,
    /// Processes holding it open through VFIO.
    pub holders: Vec<HolderInfo>,
    /// For a PF: its VFs and their holders.
    pub vfs: Vec<VfFacts>,
    /// Host uses of the function (mounted block devices, interfaces that are up).
    pub host_use: Vec<HostUse>,
}

/// Reads the facts about `bdf`.
pub fn gather(roots: &Roots, policy: Option<&Policy>, bdf: Bdf) -> Result<Facts, HalError> {
    let function = roots.sys.function(bdf)?;
    let allowed = policy.is_some_and(|p| {
        p.devices.allows(&Candidate {
            bdf,
            vendor: function.vendor,
            device: function.device,
            physfn: function.physfn,
        })
    });
    let mut group_members = Vec::new();
    if let Some(group) = function.iommu_group {
        for member in roots.sys.iommu_group_devices(group)? {
            if member != bdf {
                group_members.push(GroupMember {
                    bdf: member,
                    driver: roots.sys.driver(member)?,
                });
            }
        }
    }
    let holders = holders_of(roots, &function)?;
    let mut vfs = Vec::new();
    for (_, vf) in &function.virtfns {
        let f = roots.sys.function(*vf)?;
        vfs.push(VfFacts {
            bdf: *vf,
            holders: holders_of(roots, &f)?,
        });
    }
    let host_use = host_use(&roots.sys.device_dir(bdf), &roots.proc)?;
    Ok(Facts {
        policy_present: policy.is_some(),
        allowed,
        iommu_enabled: roots.sys.iommu_enabled(),
        group_members,
        holders,
        vfs,
        host_use,
        function,
    })
}

/// The processes holding `f`'s VFIO group, with their VM names.
pub fn holders_of(roots: &Roots, f: &PciFunction) -> Result<Vec<HolderInfo>, HalError> {
    let Some(group) = f.iommu_group else {
        return Ok(Vec::new());
    };
    // The group file and, on kernels with iommufd, the device's VFIO cdevs.
    let cdevs = roots.sys.vfio_cdevs(f.bdf)?;
    let holders = hal::vfio_holders_with_cdevs(&roots.proc, &roots.dev, group, &cdevs)?;
    Ok(holders
        .into_iter()
        .map(|h| {
            let vm = crate::identity::identify(&roots.proc, h.pid)
                .ok()
                .filter(|id| id.vmm != crate::identity::Vmm::Unknown)
                .map(|id| id.name);
            HolderInfo {
                pid: h.pid,
                comm: h.comm,
                vm,
            }
        })
        .collect())
}

/// Mounted block devices and up interfaces found under the device's sysfs
/// directory (`…/virtio1/block/vda`, `…/nvme/nvme0/nvme0n1`, `…/net/eth0`).
pub fn host_use(device_dir: &Path, proc_root: &Path) -> Result<Vec<HostUse>, HalError> {
    let mut blocks = Vec::new();
    let mut nets = Vec::new();
    walk(device_dir, 0, &mut blocks, &mut nets);
    let mut uses = Vec::new();
    if !blocks.is_empty() {
        let path = proc_root.join("self/mountinfo");
        let mountinfo =
            std::fs::read_to_string(&path).map_err(|e| HalError::io("read", &path, e))?;
        for (name, devno) in &blocks {
            for mountpoint in mounts_of(&mountinfo, devno) {
                uses.push(HostUse::Mounted {
                    block: name.clone(),
                    mountpoint,
                });
            }
        }
    }
    for (ifname, dir) in nets {
        let flags = std::fs::read_to_string(dir.join("flags")).unwrap_or_default();
        let up = hal::parse::hex_u32(&flags).is_some_and(|f| f & 0x1 != 0);
        if up {
            uses.push(HostUse::NetUp { ifname });
        }
    }
    Ok(uses)
}

/// Collects `(name, "major:minor")` of block devices (and their partitions) and
/// `(ifname, dir)` of network interfaces below `dir`, not following symlinks.
fn walk(
    dir: &Path,
    depth: u32,
    blocks: &mut Vec<(String, String)>,
    nets: &mut Vec<(String, PathBuf)>,
) {
    const MAX_DEPTH: u32 = 4;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(ft) = entry.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.as_str() {
            "block" => {
                for disk in subdirs(&path) {
                    let disk_name = disk.file_name().map(|n| n.to_string_lossy().into_owned());
                    let Some(disk_name) = disk_name else { continue };
                    push_block(&disk, &disk_name, blocks);
                    // Partitions are subdirectories named after the disk.
                    for part in subdirs(&disk) {
                        let part_name = part.file_name().map(|n| n.to_string_lossy().into_owned());
                        if let Some(p) = part_name.filter(|p| p.starts_with(&disk_name)) {
                            push_block(&part, &p, blocks);
                        }
                    }
                }
            }
            "net" => {
                for iface in subdirs(&path) {
                    if let Some(n) = iface.file_name().map(|n| n.to_string_lossy().into_owned()) {
                        nets.push((n, iface));
                    }
                }
            }
            _ if depth < MAX_DEPTH => walk(&path, depth + 1, blocks, nets),
            _ => {}
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn push_block(dir: &Path, name: &str, blocks: &mut Vec<(String, String)>) {
    if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
        blocks.push((name.to_owned(), dev.trim().to_owned()));
    }
}

/// Mount points in `mountinfo` (proc(5) format) whose device is `devno` (`major:minor`).
pub fn mounts_of(mountinfo: &str, devno: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let mountpoint = fields.nth(1)?;
            (dev == devno).then(|| unescape_octal(mountpoint))
        })
        .collect()
}

/// Undoes mountinfo's `\040`-style escapes.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime - rootfs rootfs rw
35 22 254:0 / /mnt/data rw,relatime - ext2 /dev/vda rw
36 22 254:1 / /mnt/my\\040disk rw,relatime - ext4 /dev/vda1 rw
";

    #[test]
    fn mounts_match_by_device_number() {
        assert_eq!(mounts_of(MOUNTINFO, "254:0"), vec!["/mnt/data"]);
        assert_eq!(mounts_of(MOUNTINFO, "254:1"), vec!["/mnt/my disk"]);
        assert!(mounts_of(MOUNTINFO, "8:0").is_empty());
    }

    #[test]
    fn host_use_finds_mounted_disks_and_up_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("sys/bus/pci/devices/0000:00:03.1");
        let vda = dev.join("virtio1/block/vda");
        std::fs::create_dir_all(vda.join("vda1")).unwrap();
        std::fs::write(vda.join("dev"), "254:0\n").unwrap();
        std::fs::write(vda.join("vda1/dev"), "254:1\n").unwrap();
        let eth = dev.join("virtio2/net/eth0");
        std::fs::create_dir_all(&eth).unwrap();
        std::fs::write(eth.join("flags"), "0x1003\n").unwrap();
        let down = dev.join("virtio3/net/eth1");
        std::fs::create_dir_all(&down).unwrap();
        std::fs::write(down.join("flags"), "0x1002\n").unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(proc.join("self/mountinfo"), MOUNTINFO).unwrap();

        let uses = host_use(&dev, &proc).unwrap();
        assert_eq!(
            uses,
            vec![
                HostUse::Mounted {
                    block: "vda".into(),
                    mountpoint: "/mnt/data".into()
                },
                HostUse::Mounted {
                    block: "vda1".into(),
                    mountpoint: "/mnt/my disk".into()
                },
                HostUse::NetUp {
                    ifname: "eth0".into()
                },
            ]
        );
    }
}
