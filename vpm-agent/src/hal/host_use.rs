//! Host uses of a PCI function that vpm must not disturb: its block devices
//! that are mounted, used as swap or stacked under another block device
//! (LVM, md, dm-crypt: their `holders/`), and its network interfaces that
//! are up, found under the function's sysfs directory and `SYS/class/block`,
//! in `PROC/self/mountinfo` and in `PROC/swaps`.
//!
//! A function's block devices are those whose sysfs directory lies below
//! the function's (`…/virtio1/block/vda`, `…/nvme/nvme0/nvme0n1`, with their
//! partitions), and NVMe multipath heads (`SYS/class/block/nvme0n1` under
//! `/sys/devices/virtual/nvme-subsystem/…`) with a path below it in their
//! `multipath/`. A mount matches by device number, or by its source
//! `/dev/<name>` (btrfs shows an anonymous device number).

use std::path::{Path, PathBuf};

use super::backend::HostUse;
use super::{HalError, Result};

/// The host uses of the function whose sysfs directory is `device_dir`
/// (sysfs mounted at `sys_root`, procfs at `proc_root`); see the module docs.
pub fn host_use(sys_root: &Path, device_dir: &Path, proc_root: &Path) -> Result<Vec<HostUse>> {
    let mut blocks = Vec::new();
    let mut nets = Vec::new();
    walk(device_dir, 0, &mut blocks, &mut nets);
    class_blocks(&sys_root.join("class/block"), device_dir, &mut blocks);
    let mut uses = Vec::new();
    if !blocks.is_empty() {
        let path = proc_root.join("self/mountinfo");
        let mountinfo =
            std::fs::read_to_string(&path).map_err(|e| HalError::io("read", &path, e))?;
        // No swap file list (no swap support): no swap.
        let swaps = std::fs::read_to_string(proc_root.join("swaps")).unwrap_or_default();
        for (name, devno, dir) in &blocks {
            for mountpoint in mounts_of(&mountinfo, devno, name) {
                uses.push(HostUse::Mounted {
                    block: name.clone(),
                    mountpoint,
                });
            }
            if swaps_on(&swaps, name) {
                uses.push(HostUse::Swap {
                    block: name.clone(),
                });
            }
            for holder in subdirs_or_links(&dir.join("holders")) {
                uses.push(HostUse::Stacked {
                    block: name.clone(),
                    holder,
                });
            }
        }
    }
    for (ifname, dir) in nets {
        let flags = std::fs::read_to_string(dir.join("flags")).unwrap_or_default();
        let up = super::parse::hex_u32(&flags).is_some_and(|f| f & 0x1 != 0);
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
    blocks: &mut Vec<(String, String, PathBuf)>,
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
                    push_disk(&disk, &disk_name, blocks);
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

/// Adds the block devices of `class_dir` (`SYS/class/block`) whose device
/// lies below `device_dir`, or that are NVMe multipath heads with a path
/// below it, unless `blocks` has them already.
fn class_blocks(class_dir: &Path, device_dir: &Path, blocks: &mut Vec<(String, String, PathBuf)>) {
    let Ok(device) = std::fs::canonicalize(device_dir) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(class_dir) else {
        return;
    };
    let below = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(&device));
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let mine = below(&path)
            || std::fs::read_dir(path.join("multipath"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|m| below(&m.path()));
        if mine {
            found.push((name, path));
        }
    }
    found.sort();
    // A multipath head's partitions live below the head, not below the
    // function; a disk's own are listed in class/block too (pushed once).
    for (name, path) in found {
        push_disk(&path, &name, blocks);
    }
}

/// Adds the disk `name` at `dir` and its partitions (subdirectories named
/// after the disk), each unless `blocks` has it already.
fn push_disk(dir: &Path, name: &str, blocks: &mut Vec<(String, String, PathBuf)>) {
    push_block(dir, name, blocks);
    for part in subdirs(dir) {
        let part_name = part.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(p) = part_name.filter(|p| p.starts_with(name)) {
            push_block(&part, &p, blocks);
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

/// Adds the block device `name` at `dir`, unless `blocks` has it already.
fn push_block(dir: &Path, name: &str, blocks: &mut Vec<(String, String, PathBuf)>) {
    if blocks.iter().any(|(n, _, _)| n == name) {
        return;
    }
    if let Ok(dev) = std::fs::read_to_string(dir.join("dev")) {
        blocks.push((name.to_owned(), dev.trim().to_owned(), dir.to_path_buf()));
    }
}

/// The names in a `holders/` directory (symlinks to the holding devices).
fn subdirs_or_links(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Whether `PROC/swaps` (its text) lists the block device `name`.
pub fn swaps_on(swaps: &str, name: &str) -> bool {
    let dev = format!("/dev/{name}");
    swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .any(|f| f == dev)
}

/// Mount points in `mountinfo` (proc(5) format) of the block device `name`:
/// its device number is `devno` (`major:minor`), or its source is
/// `/dev/<name>` (btrfs mounts show an anonymous device number).
pub fn mounts_of(mountinfo: &str, devno: &str, name: &str) -> Vec<String> {
    let source = format!("/dev/{name}");
    mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let dev = fields.nth(2)?;
            let mountpoint = fields.nth(1)?;
            // After the optional fields: "- fstype source superopts".
            let mut tail = line.split(" - ").nth(1)?.split(' ');
            let from = tail.nth(1).map(unescape_octal);
            (dev == devno || from.as_deref() == Some(source.as_str()))
                .then(|| unescape_octal(mountpoint))
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
    fn mounts_match_by_device_number_or_source() {
        assert_eq!(mounts_of(MOUNTINFO, "254:0", "vda"), vec!["/mnt/data"]);
        assert_eq!(mounts_of(MOUNTINFO, "254:1", "vda1"), vec!["/mnt/my disk"]);
        assert!(mounts_of(MOUNTINFO, "8:0", "sda").is_empty());
        // btrfs: an anonymous device number, the real device as the source.
        let btrfs = "40 22 0:40 / /srv rw shared:1 - btrfs /dev/nvme0n1p1 rw,ssd\n";
        assert_eq!(mounts_of(btrfs, "259:1", "nvme0n1p1"), vec!["/srv"]);
        assert!(mounts_of(btrfs, "259:1", "nvme0n1").is_empty());
    }

    #[test]
    fn nvme_namespaces_and_multipath_heads_are_the_functions() {
        // The kernel's NVMe layout: namespaces right under the controller
        // (no `block/` directory), listed in class/block; with native
        // multipath the visible head lives under nvme-subsystem and names
        // its path in `multipath/`.
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let devices = sys.join("devices/pci0000:00");
        let pf = devices.join("0000:01:00.0");
        let other = devices.join("0000:02:00.0");
        let ns = pf.join("nvme/nvme0/nvme0n1");
        std::fs::create_dir_all(ns.join("nvme0n1p1")).unwrap();
        std::fs::write(ns.join("dev"), "259:0\n").unwrap();
        std::fs::write(ns.join("nvme0n1p1/dev"), "259:1\n").unwrap();
        let path = pf.join("nvme/nvme0/nvme1c0n1");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("dev"), "259:2\n").unwrap();
        let head = sys.join("devices/virtual/nvme-subsystem/nvme-subsys1/nvme1n1");
        std::fs::create_dir_all(head.join("multipath")).unwrap();
        std::fs::create_dir_all(head.join("nvme1n1p2")).unwrap();
        std::fs::write(head.join("dev"), "259:3\n").unwrap();
        std::fs::write(head.join("nvme1n1p2/dev"), "259:5\n").unwrap();
        std::os::unix::fs::symlink(&path, head.join("multipath/nvme1c0n1")).unwrap();
        let elsewhere = other.join("nvme/nvme2/nvme2n1");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("dev"), "259:4\n").unwrap();
        let class = sys.join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (name, target) in [
            ("nvme0n1", ns.clone()),
            ("nvme0n1p1", ns.join("nvme0n1p1")),
            ("nvme1c0n1", path.clone()),
            ("nvme1n1", head.clone()),
            ("nvme1n1p2", head.join("nvme1n1p2")),
            ("nvme2n1", elsewhere.clone()),
        ] {
            std::os::unix::fs::symlink(&target, class.join(name)).unwrap();
        }
        let bus = sys.join("bus/pci/devices");
        std::fs::create_dir_all(&bus).unwrap();
        std::os::unix::fs::symlink(&pf, bus.join("0000:01:00.0")).unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(
            proc.join("self/mountinfo"),
            "22 1 0:21 / / rw - rootfs rootfs rw\n\
             40 22 259:1 / /srv/data rw - ext4 /dev/nvme0n1p1 rw\n\
             41 22 259:3 / /srv/mp rw - xfs /dev/nvme1n1 rw\n\
             43 22 259:5 / /srv/mp2 rw - ext4 /dev/nvme1n1p2 rw\n\
             42 22 259:4 / /srv/other rw - xfs /dev/nvme2n1 rw\n",
        )
        .unwrap();
        let uses = host_use(&sys, &bus.join("0000:01:00.0"), &proc).unwrap();
        assert_eq!(
            uses,
            vec![
                HostUse::Mounted {
                    block: "nvme0n1p1".into(),
                    mountpoint: "/srv/data".into()
                },
                HostUse::Mounted {
                    block: "nvme1n1".into(),
                    mountpoint: "/srv/mp".into()
                },
                HostUse::Mounted {
                    block: "nvme1n1p2".into(),
                    mountpoint: "/srv/mp2".into()
                },
            ]
        );
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

        let uses = host_use(&dir.path().join("sys"), &dev, &proc).unwrap();
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

        // Unmounted, but swap on one partition and an LVM volume on another.
        let vdb = dev.join("virtio4/block/vdb");
        std::fs::create_dir_all(vdb.join("vdb1")).unwrap();
        std::fs::create_dir_all(vdb.join("vdb2/holders/dm-0")).unwrap();
        std::fs::write(vdb.join("dev"), "254:16\n").unwrap();
        std::fs::write(vdb.join("vdb1/dev"), "254:17\n").unwrap();
        std::fs::write(vdb.join("vdb2/dev"), "254:18\n").unwrap();
        std::fs::write(
            proc.join("swaps"),
            "Filename\tType\tSize\tUsed\tPriority\n/dev/vdb1  partition\t1048572\t0\t-2\n",
        )
        .unwrap();
        let uses = host_use(&dir.path().join("sys"), &dev.join("virtio4"), &proc).unwrap();
        assert_eq!(
            uses,
            vec![
                HostUse::Swap {
                    block: "vdb1".into()
                },
                HostUse::Stacked {
                    block: "vdb2".into(),
                    holder: "dm-0".into()
                },
            ]
        );
    }
}
