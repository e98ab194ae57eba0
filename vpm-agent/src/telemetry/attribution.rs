//! Attributing VFIO/PCI events the kernel cannot attribute itself.
//!
//! - **Interrupts.** vfio-pci's interrupt handlers run in interrupt context with
//!   no device in their arguments that is stable across kernels, so the programs
//!   key them by IRQ number. vfio names each IRQ action after the device
//!   (`vfio-msix[0](0000:01:00.1)`, `vfio-intx(0000:01:00.1)`), which
//!   `/sys/kernel/irq/<n>/actions` (else `/proc/interrupts`) shows.
//! - **Kernel-context events** (runtime-PM workers, interrupts) belong to the VM
//!   that holds the device: the VMM process with the device's VFIO group
//!   (`/dev/vfio/<group>`) or VFIO device (`/dev/vfio/devices/vfioN`) open.
//!
//! Parsers are pure; the readers take the sysfs and procfs roots.

use std::collections::BTreeMap;
use std::path::Path;

use vpm_common::pci::{UNKNOWN_BDF, device_key, key_bdf, key_detail, parse_bdf};
use vpm_common::{Counter, KERNEL_TGID};

use super::snapshot::{DeviceDelta, ProcessDelta};

/// IRQ numbers of interrupt events in `deltas` whose device is not known yet.
pub fn unresolved_irqs(deltas: &BTreeMap<u32, ProcessDelta>) -> Vec<u32> {
    let mut irqs: Vec<u32> = deltas
        .values()
        .flat_map(|p| &p.devices)
        .filter(|d| d.kind.is_interrupt() && key_bdf(d.device) == UNKNOWN_BDF)
        .map(|d| key_detail(d.device))
        .collect();
    irqs.sort_unstable();
    irqs.dedup();
    irqs
}

/// Fills in the PCI address of interrupt events whose IRQ is in `irq_bdf`.
pub fn name_irqs(deltas: &mut BTreeMap<u32, ProcessDelta>, irq_bdf: &BTreeMap<u32, u32>) {
    for p in deltas.values_mut() {
        for d in &mut p.devices {
            if d.kind.is_interrupt()
                && key_bdf(d.device) == UNKNOWN_BDF
                && let Some(bdf) = irq_bdf.get(&key_detail(d.device))
            {
                d.device = device_key(*bdf, key_detail(d.device));
            }
        }
        sort_and_merge(&mut p.devices);
    }
}

/// PCI addresses of the kernel's own VFIO/PCI events (runtime-PM workers,
/// interrupts) in `deltas`.
pub fn kernel_devices(deltas: &BTreeMap<u32, ProcessDelta>) -> Vec<u32> {
    let mut out: Vec<u32> = deltas
        .get(&KERNEL_TGID)
        .map(|p| {
            p.devices
                .iter()
                .filter(|d| d.kind.is_pci() && key_bdf(d.device) != UNKNOWN_BDF)
                .map(|d| key_bdf(d.device))
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out.dedup();
    out
}

/// Moves the kernel's own VFIO/PCI events on a device held by a VM
/// (`holders`: address → VMM pid) to that VM. The rest stay under
/// [`KERNEL_TGID`].
pub fn move_kernel_events(deltas: &mut BTreeMap<u32, ProcessDelta>, holders: &BTreeMap<u32, u32>) {
    let Some(kernel) = deltas.get_mut(&KERNEL_TGID) else {
        return;
    };
    let mut moved: Vec<(u32, DeviceDelta)> = Vec::new();
    kernel
        .devices
        .retain(|d| match holders.get(&key_bdf(d.device)) {
            Some(pid) if d.kind.is_pci() && key_bdf(d.device) != UNKNOWN_BDF => {
                moved.push((*pid, *d));
                false
            }
            _ => true,
        });
    if kernel.devices.is_empty() && kernel.exit_hist.iter().all(|n| *n == 0) {
        deltas.remove(&KERNEL_TGID);
    }
    for (pid, d) in moved {
        let p = deltas.entry(pid).or_default();
        p.devices.push(d);
        sort_and_merge(&mut p.devices);
    }
}

/// Sorts by (kind, device) and sums entries with the same key.
fn sort_and_merge(devices: &mut Vec<DeviceDelta>) {
    devices.sort_by_key(|d| (d.kind, d.device));
    devices.dedup_by(|later, kept| {
        if later.kind == kept.kind && later.device == kept.device {
            kept.delta = Counter {
                count: kept.delta.count + later.delta.count,
                bytes: kept.delta.bytes + later.delta.bytes,
            };
            true
        } else {
            false
        }
    });
}

/// The PCI address in a vfio IRQ action name: `vfio-msix[3](0000:01:00.1)`,
/// `vfio-msi[0](…)`, `vfio-intx(…)`. `None` for other drivers' actions.
pub fn parse_vfio_action(name: &str) -> Option<u32> {
    let rest = name.trim().strip_prefix("vfio-")?;
    let inner = rest.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    parse_bdf(&inner[open + 1..])
}

/// The PCI address behind an IRQ from its `actions` file (comma-separated
/// action names; a shared line may list several).
pub fn parse_irq_actions(actions: &str) -> Option<u32> {
    actions.split(',').find_map(parse_vfio_action)
}

/// IRQ → PCI address for every vfio action in the text of `/proc/interrupts`.
pub fn parse_proc_interrupts(text: &str) -> BTreeMap<u32, u32> {
    text.lines()
        .filter_map(|line| {
            let (irq, rest) = line.trim_start().split_once(':')?;
            let irq: u32 = irq.trim().parse().ok()?;
            // Action names come last, separated by ", "; names have no spaces.
            let bdf = rest
                .split([' ', ','])
                .filter(|t| !t.is_empty())
                .find_map(parse_vfio_action)?;
            Some((irq, bdf))
        })
        .collect()
}

/// Resolves `irqs` to PCI addresses through `<sys_root>/kernel/irq/<n>/actions`,
/// falling back to `<proc_root>/interrupts`. IRQs of other drivers (or freed
/// since) are left out.
pub fn resolve_irqs(
    sys_root: &Path,
    proc_root: &Path,
    irqs: impl IntoIterator<Item = u32>,
) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    let mut missing = Vec::new();
    for irq in irqs {
        let path = sys_root
            .join("kernel/irq")
            .join(irq.to_string())
            .join("actions");
        match std::fs::read_to_string(&path) {
            Ok(actions) => {
                if let Some(bdf) = parse_irq_actions(&actions) {
                    out.insert(irq, bdf);
                }
            }
            Err(_) => missing.push(irq),
        }
    }
    if !missing.is_empty()
        && let Ok(text) = std::fs::read_to_string(proc_root.join("interrupts"))
    {
        let all = parse_proc_interrupts(&text);
        for irq in missing {
            if let Some(bdf) = all.get(&irq) {
                out.insert(irq, *bdf);
            }
        }
    }
    out
}

/// A VFIO file a process holds open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VfioFile {
    /// `/dev/vfio/<group>`: an IOMMU group (legacy container interface).
    Group(u32),
    /// `/dev/vfio/devices/<name>`: one device (iommufd cdev interface).
    Device(String),
}

/// What an fd link target is, if it is a VFIO group or device file.
pub fn parse_vfio_link(target: &str) -> Option<VfioFile> {
    let rest = target.strip_prefix("/dev/vfio/")?;
    if let Some(name) = rest.strip_prefix("devices/") {
        return (!name.is_empty() && !name.contains('/'))
            .then(|| VfioFile::Device(name.to_owned()));
    }
    rest.parse().ok().map(VfioFile::Group)
}

/// The VFIO files process `pid` holds open (empty if its fds cannot be read).
pub fn vfio_files_of(proc_root: &Path, pid: u32) -> Vec<VfioFile> {
    let Ok(dir) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return Vec::new();
    };
    let mut files: Vec<VfioFile> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| parse_vfio_link(&t.to_string_lossy()))
        .collect();
    files.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    files.dedup();
    files
}

/// PCI addresses of the devices a VFIO file gives access to.
pub fn devices_of(sys_root: &Path, file: &VfioFile) -> Vec<u32> {
    match file {
        VfioFile::Group(group) => {
            let dir = sys_root
                .join("kernel/iommu_groups")
                .join(group.to_string())
                .join("devices");
            std::fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .filter_map(|e| parse_bdf(&e.file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default()
        }
        VfioFile::Device(name) => {
            std::fs::read_link(sys_root.join("class/vfio-dev").join(name).join("device"))
                .ok()
                .and_then(|t| t.file_name().and_then(|n| parse_bdf(&n.to_string_lossy())))
                .into_iter()
                .collect()
        }
    }
}

/// PCI address → the process (among `pids`) holding it through VFIO.
pub fn vfio_holders(
    proc_root: &Path,
    sys_root: &Path,
    pids: impl IntoIterator<Item = u32>,
) -> BTreeMap<u32, u32> {
    let mut out = BTreeMap::new();
    for pid in pids {
        for file in vfio_files_of(proc_root, pid) {
            for bdf in devices_of(sys_root, &file) {
                out.insert(bdf, pid);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpm_common::EventKind;
    use vpm_common::pci::pack_bdf;

    const VF: u32 = pack_bdf(0, 1, 0, 1);

    fn dd(kind: EventKind, device: u64, count: u64) -> DeviceDelta {
        DeviceDelta {
            kind,
            device,
            delta: Counter { count, bytes: 0 },
        }
    }

    fn process(devices: Vec<DeviceDelta>) -> ProcessDelta {
        ProcessDelta {
            devices,
            ..ProcessDelta::default()
        }
    }

    #[test]
    fn interrupts_get_their_device_and_kernel_events_go_to_the_holder() {
        let other = pack_bdf(0, 2, 0, 0);
        let mut deltas = BTreeMap::new();
        deltas.insert(
            KERNEL_TGID,
            process(vec![
                dd(EventKind::VfioMsi, device_key(UNKNOWN_BDF, 37), 5),
                dd(EventKind::VfioMsi, device_key(UNKNOWN_BDF, 99), 1),
                dd(EventKind::RpmSuspend, device_key(VF, 0), 1),
                dd(EventKind::RpmSuspend, device_key(other, 0), 1),
            ]),
        );
        // The VMM resumed the VF itself too.
        deltas.insert(
            500,
            process(vec![dd(EventKind::RpmSuspend, device_key(VF, 0), 2)]),
        );
        assert_eq!(unresolved_irqs(&deltas), vec![37, 99]);
        name_irqs(&mut deltas, &BTreeMap::from([(37, VF)]));
        assert_eq!(unresolved_irqs(&deltas), vec![99]);
        assert_eq!(kernel_devices(&deltas), vec![VF, other]);

        move_kernel_events(&mut deltas, &BTreeMap::from([(VF, 500)]));
        let vm = &deltas[&500];
        assert_eq!(vm.devices.len(), 2, "{:?}", vm.devices);
        assert_eq!(vm.devices[0], dd(EventKind::VfioMsi, device_key(VF, 37), 5));
        assert_eq!(
            vm.devices[1],
            dd(EventKind::RpmSuspend, device_key(VF, 0), 3)
        );
        // Unheld or unnamed devices stay with the kernel.
        let kernel = &deltas[&KERNEL_TGID];
        assert_eq!(kernel.devices.len(), 2);
        assert!(kernel.devices.iter().all(|d| key_bdf(d.device) != VF));
    }

    #[test]
    fn an_emptied_kernel_entry_is_removed() {
        let mut deltas = BTreeMap::new();
        deltas.insert(
            KERNEL_TGID,
            process(vec![dd(EventKind::RpmResume, device_key(VF, 0), 1)]),
        );
        move_kernel_events(&mut deltas, &BTreeMap::from([(VF, 7)]));
        assert!(!deltas.contains_key(&KERNEL_TGID));
        assert_eq!(deltas[&7].total(EventKind::RpmResume).count, 1);
    }

    #[test]
    fn vfio_action_names_give_the_device() {
        assert_eq!(parse_vfio_action("vfio-msix[0](0000:01:00.1)"), Some(VF));
        assert_eq!(parse_vfio_action("vfio-msix[12](0000:01:00.1)"), Some(VF));
        assert_eq!(parse_vfio_action("vfio-msi[0](0000:01:00.1)"), Some(VF));
        assert_eq!(parse_vfio_action("vfio-intx(0000:01:00.1)\n"), Some(VF));
        for other in [
            "nvme0q1",
            "vfio-msix[0]",
            "vfio-intx(card0)",
            "xhci_hcd",
            "",
            "vfio-intx(0000:01:00.1",
        ] {
            assert_eq!(parse_vfio_action(other), None, "{other:?}");
        }
        assert_eq!(
            parse_irq_actions("ahci[0000:00:1f.2],vfio-intx(0000:01:00.1)\n"),
            Some(VF)
        );
        assert_eq!(parse_irq_actions("nvme0q0\n"), None);
    }

    #[test]
    fn proc_interrupts_lines_are_mapped() {
        let text = "           CPU0       CPU1
  0:         42          0   IO-APIC   2-edge      timer
 24:          0          0  IR-PCI-MSIX-0000:01:00.0    0-edge      nvme0q0
 37:          5          1  IR-PCI-MSIX-0000:01:00.1    0-edge      vfio-msix[0](0000:01:00.1)
 38:          0          0  IR-PCI-MSIX-0000:01:00.1    1-edge      vfio-msix[1](0000:01:00.1)
 11:          3          0   IO-APIC  11-fasteoi   uhci_hcd:usb1, vfio-intx(0000:00:05.0)
NMI:          0          0   Non-maskable interrupts
";
        let m = parse_proc_interrupts(text);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(m[&37], VF);
        assert_eq!(m[&38], VF);
        assert_eq!(m[&11], pack_bdf(0, 0, 5, 0));
    }

    #[test]
    fn irqs_resolve_from_sysfs_then_proc() {
        let sys = tempfile::tempdir().expect("tempdir");
        let proc = tempfile::tempdir().expect("tempdir");
        let irq = |n: u32, actions: &str| {
            let d = sys.path().join("kernel/irq").join(n.to_string());
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("actions"), actions).expect("write");
        };
        irq(30, "vfio-msix[0](0000:01:00.1)\n");
        irq(31, "nvme0q1\n");
        std::fs::write(
            proc.path().join("interrupts"),
            " 40:  1  2  IR-PCI-MSI  0-edge  vfio-msi[0](0000:02:00.0)\n",
        )
        .expect("write");
        let m = resolve_irqs(sys.path(), proc.path(), [30, 31, 40, 41]);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[&30], VF);
        assert_eq!(m[&40], pack_bdf(0, 2, 0, 0));
    }

    #[test]
    fn vfio_fd_links_are_recognized() {
        assert_eq!(parse_vfio_link("/dev/vfio/12"), Some(VfioFile::Group(12)));
        assert_eq!(
            parse_vfio_link("/dev/vfio/devices/vfio0"),
            Some(VfioFile::Device("vfio0".into()))
        );
        for other in [
            "/dev/vfio/vfio",
            "/dev/kvm",
            "anon_inode:[vfio-device]",
            "/dev/vfio/devices/",
        ] {
            assert_eq!(parse_vfio_link(other), None, "{other}");
        }
    }

    #[test]
    fn holders_come_from_open_group_files() {
        let sys = tempfile::tempdir().expect("tempdir");
        let proc = tempfile::tempdir().expect("tempdir");
        let group = sys.path().join("kernel/iommu_groups/7/devices");
        std::fs::create_dir_all(group.join("0000:01:00.1")).expect("mkdir");
        let fd = proc.path().join("100/fd");
        std::fs::create_dir_all(&fd).expect("mkdir");
        std::os::unix::fs::symlink("/dev/vfio/vfio", fd.join("3")).expect("symlink");
        std::os::unix::fs::symlink("/dev/vfio/7", fd.join("4")).expect("symlink");
        std::fs::create_dir_all(proc.path().join("200/fd")).expect("mkdir");
        let holders = vfio_holders(proc.path(), sys.path(), [100, 200, 300]);
        assert_eq!(holders.len(), 1);
        assert_eq!(holders[&VF], 100);
    }
}
