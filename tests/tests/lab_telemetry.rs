//! Guest-side tests of vpm's VFIO / PCI telemetry (run by `cargo xtask vm-test`).
//!
//! In the lab guest (Debian's 6.1 kernel in QEMU, an emulated SR-IOV NVMe PF at
//! 0000:01:00.0 with 4 VFs, vfio-pci loaded, BTF present) this test creates VFs,
//! binds one to vfio-pci, opens it through VFIO from this very process, does a
//! known number of config-space reads and device ioctls, and checks that vpm's
//! counters for (this pid, kind, device) are exactly those numbers, and that the
//! runtime-PM resume (D3hot → D0) on open and the suspend after close were seen.
//! It leaves the devices as it found them (fds closed, `sriov_numvfs` 0),
//! because other lab targets run in the same boot.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "integration tests fail loudly"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vpm::monitor::{Monitor, MonitorOptions};
use vpm::report::Window;
use vpm::telemetry::{Mechanism, ProbeState, Snapshot, probes};
use vpm_common::pci::{PowerState, device_key, key_bdf, parse_bdf};
use vpm_common::{Counter, CounterKey, EventKind, KERNEL_TGID};
use vpm_tests::vfio::{CONFIG_REGION_INDEX, OPEN_DEVICE_IOCTLS, VfioDevice};
use vpm_tests::wait_until;

const PF: &str = "0000:01:00.0";
const VF: &str = "0000:01:00.1";
/// Config-space reads and extra device ioctls the test makes.
const READS: u64 = 7;
const READ_LEN: usize = 4;
const INFO_IOCTLS: u64 = 3;
const REGION_IOCTLS: u64 = 2;

fn in_lab() {
    assert_eq!(
        std::env::var("VPM_LAB").as_deref(),
        Ok("1"),
        "these tests change PCI devices: run them with `cargo xtask vm-test`"
    );
}

fn dev_path(bdf: &str) -> PathBuf {
    Path::new("/sys/bus/pci/devices").join(bdf)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// One value per write, no create/truncate (as `hal` does).
fn write(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn must_write(path: &Path, value: &str) {
    write(path, value).unwrap_or_else(|e| panic!("writing {value:?} to {}: {e}", path.display()));
}

fn power_state(bdf: &str) -> String {
    read(&dev_path(bdf).join("power_state"))
}

/// VFs of the PF created for the test; dropped (even on a failed assertion):
/// `sriov_numvfs` back to 0 and `sriov_drivers_autoprobe` restored.
struct Vfs {
    autoprobe: String,
}

impl Vfs {
    fn create(n: u32) -> Self {
        let pf = dev_path(PF);
        assert_eq!(read(&pf.join("sriov_numvfs")), "0", "{PF} already has VFs");
        let autoprobe = read(&pf.join("sriov_drivers_autoprobe"));
        let vfs = Self { autoprobe };
        must_write(&pf.join("sriov_drivers_autoprobe"), "0");
        must_write(&pf.join("sriov_numvfs"), &n.to_string());
        vfs
    }
}

impl Drop for Vfs {
    fn drop(&mut self) {
        let pf = dev_path(PF);
        if let Err(e) = write(&pf.join("sriov_numvfs"), "0") {
            eprintln!("cleanup: sriov_numvfs 0 on {PF}: {e}");
        }
        if let Err(e) = write(&pf.join("sriov_drivers_autoprobe"), &self.autoprobe) {
            eprintln!("cleanup: sriov_drivers_autoprobe on {PF}: {e}");
        }
    }
}

fn bind_to_vfio(bdf: &str) {
    must_write(&dev_path(bdf).join("driver_override"), "vfio-pci");
    must_write(Path::new("/sys/bus/pci/drivers_probe"), bdf);
    let driver = dev_path(bdf).join("driver");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_link(&driver)
            .is_ok_and(|t| t.ends_with("vfio-pci"))),
        "{bdf} did not bind to vfio-pci (is the IOMMU on?)"
    );
}

fn key(tgid: u32, kind: EventKind, bdf: &str, detail: u32) -> CounterKey {
    CounterKey {
        tgid,
        kind: kind as u32,
        device: device_key(parse_bdf(bdf).expect("address"), detail),
    }
}

fn get(snap: &Snapshot, k: CounterKey) -> Counter {
    snap.counters.get(&k).copied().unwrap_or_default()
}

/// `after - before` for one key.
fn delta(before: &Snapshot, after: &Snapshot, k: CounterKey) -> Counter {
    let (a, b) = (get(after, k), get(before, k));
    Counter {
        count: a.count - b.count,
        bytes: a.bytes - b.bytes,
    }
}

/// Events of `kind` on `bdf` (any process, any detail) from `before` to `after`.
fn device_delta(before: &Snapshot, after: &Snapshot, kind: EventKind, bdf: &str) -> u64 {
    let bdf = parse_bdf(bdf).expect("address");
    let sum = |s: &Snapshot| -> u64 {
        s.counters
            .iter()
            .filter(|(k, _)| k.kind == kind as u32 && key_bdf(k.device) == bdf)
            .map(|(_, c)| c.count)
            .sum()
    };
    sum(after) - sum(before)
}

fn mechanism(monitor: &mut Monitor, probe: &str) -> Option<Mechanism> {
    monitor
        .telemetry()
        .pci_attachments()
        .iter()
        .find(|a| a.probe == probe)
        .and_then(|a| match a.state {
            ProbeState::Attached { mechanism, .. } => Some(mechanism),
            _ => None,
        })
}

#[test]
fn telemetry_counts_vfio_and_sriov_events_exactly() {
    in_lab();
    let mut monitor = Monitor::start(&MonitorOptions::default()).expect("vpm attaches");
    eprintln!("{}", monitor.attach_summary());
    for note in monitor.telemetry().offset_notes() {
        eprintln!("offset: {note}");
    }
    // What the Debian 6.1 guest kernel offers, by the cheapest mechanism.
    for (probe, expected) in [
        ("vfio_pci_core_read", Mechanism::Kprobe),
        ("vfio_pci_core_write", Mechanism::Kprobe),
        ("vfio_pci_core_ioctl", Mechanism::Kprobe),
        ("vfio_intx_handler", Mechanism::Kprobe),
        ("vfio_msihandler", Mechanism::Kprobe),
        ("pci_set_power_state", Mechanism::Fentry),
        ("pci_iov_add_virtfn", Mechanism::Fentry),
        ("sriov_numvfs_store", Mechanism::Fentry),
        ("rpm_suspend", Mechanism::TpBtf),
        ("rpm_resume", Mechanism::TpBtf),
    ] {
        assert_eq!(
            mechanism(&mut monitor, probe),
            Some(expected),
            "{probe}: {}",
            probes::render_report(monitor.telemetry().pci_attachments())
        );
    }
    let pid = std::process::id();
    let start = monitor.telemetry().snapshot().expect("snapshot");

    // SR-IOV: one write of sriov_numvfs, two VFs added, all by this process.
    let vfs = Vfs::create(2);
    let created = monitor.telemetry().snapshot().expect("snapshot");
    let numvfs = delta(
        &start,
        &created,
        key(pid, EventKind::SriovNumvfsStore, PF, 0),
    );
    let vf0 = delta(&start, &created, key(pid, EventKind::VfAdd, PF, 0));
    let vf1 = delta(&start, &created, key(pid, EventKind::VfAdd, PF, 1));
    eprintln!(
        "sriov_numvfs writes {}, VFs added {} + {}",
        numvfs.count, vf0.count, vf1.count
    );
    assert_eq!(numvfs.count, 1, "sriov_numvfs_store on {PF} for pid {pid}");
    assert_eq!((vf0.count, vf1.count), (1, 1), "pci_iov_add_virtfn on {PF}");

    // A VF bound to vfio-pci idles into D3hot (runtime PM).
    bind_to_vfio(VF);
    assert!(
        wait_until(Duration::from_secs(15), || power_state(VF) == "D3hot"),
        "{VF} stayed {} after binding to vfio-pci",
        power_state(VF)
    );
    let before = monitor.telemetry().snapshot().expect("snapshot");

    // Open it the way a VMM does and do a known amount of work.
    let dev = VfioDevice::open(VF).expect("open the VF through VFIO");
    for i in 0..READS {
        let bytes = dev
            .read_config(i * READ_LEN as u64, READ_LEN)
            .expect("config read");
        assert_eq!(bytes.len(), READ_LEN);
        if i == 0 {
            // Vendor 0x1b36 (Red Hat, QEMU's NVMe), little-endian.
            assert_eq!(&bytes[..2], &[0x36, 0x1b], "vendor id of {VF}");
        }
    }
    for _ in 0..INFO_IOCTLS {
        let info = dev.device_info().expect("VFIO_DEVICE_GET_INFO");
        assert!(info.num_regions > CONFIG_REGION_INDEX, "{info:?}");
    }
    for _ in 0..REGION_IOCTLS {
        dev.region_info(CONFIG_REGION_INDEX)
            .expect("VFIO_DEVICE_GET_REGION_INFO");
    }
    let opened_state = power_state(VF);
    let after = monitor.telemetry().snapshot().expect("snapshot");

    let reads = delta(&before, &after, key(pid, EventKind::VfioRegionRead, VF, 0));
    let writes = delta(&before, &after, key(pid, EventKind::VfioRegionWrite, VF, 0));
    let ioctls = delta(&before, &after, key(pid, EventKind::VfioIoctl, VF, 0));
    let resumed_here = delta(&before, &after, key(pid, EventKind::RpmResume, VF, 0));
    let resumed = device_delta(&before, &after, EventKind::RpmResume, VF);
    let unknown: u64 = after
        .counters
        .iter()
        .filter(|(k, _)| {
            k.tgid == pid
                && EventKind::from_u32(k.kind).is_some_and(EventKind::is_pci)
                && key_bdf(k.device) == 0
        })
        .map(|(_, c)| c.count)
        .sum();
    eprintln!(
        "pid {pid} on {VF}: reads {} ({} bytes), writes {}, ioctls {}, rpm_resume {} (all \
         processes {resumed}), unknown-device events {unknown}, power_state {opened_state}",
        reads.count, reads.bytes, writes.count, ioctls.count, resumed_here.count
    );
    assert_eq!(reads.count, READS, "vfio_pci_core_read");
    assert_eq!(reads.bytes, READS * READ_LEN as u64, "bytes read");
    assert_eq!(writes.count, 0, "vfio_pci_core_write");
    assert_eq!(
        ioctls.count,
        OPEN_DEVICE_IOCTLS + INFO_IOCTLS + REGION_IOCTLS,
        "vfio_pci_core_ioctl"
    );
    assert_eq!(unknown, 0, "every event of this process named its device");
    assert_eq!(opened_state, "D0", "{VF} after open");
    assert!(resumed_here.count >= 1, "rpm_resume of {VF} by the opener");

    // `vpm top`'s report names the device for this process.
    let tick = monitor.tick(1.0).expect("tick");
    let mut window = Window::starting_at(0.0);
    tick.add_to(&mut window);
    let report = window.report();
    let me = report
        .vms
        .iter()
        .find(|v| v.pid == pid)
        .expect("this process in the report");
    let line = me
        .devices
        .iter()
        .find(|d| d.kind == "vfio_read")
        .expect("a vfio_read device line");
    assert_eq!(line.pci.as_deref(), Some(VF), "{line:?}");
    assert_eq!(line.count, READS);

    // Closed: the VF suspends again (D0 → D3hot), in a runtime-PM worker.
    drop(dev);
    assert!(
        wait_until(Duration::from_secs(15), || power_state(VF) == "D3hot"),
        "{VF} stayed {} after close",
        power_state(VF)
    );
    let closed = monitor.telemetry().snapshot().expect("snapshot");
    let suspended = device_delta(&after, &closed, EventKind::RpmSuspend, VF);
    let powered = device_delta(&before, &closed, EventKind::PciPowerSet, VF);
    // pci_set_power_state's target state is in the key: D0 by the opener,
    // D3hot by the runtime-PM worker (a kernel thread: counted as the kernel).
    let to_d0 = delta(
        &before,
        &closed,
        key(pid, EventKind::PciPowerSet, VF, PowerState::D0 as u32),
    );
    let to_d3 = delta(
        &after,
        &closed,
        key(
            KERNEL_TGID,
            EventKind::PciPowerSet,
            VF,
            PowerState::D3Hot as u32,
        ),
    );
    let kernel_suspends = delta(
        &after,
        &closed,
        key(KERNEL_TGID, EventKind::RpmSuspend, VF, 0),
    );
    eprintln!(
        "{VF} after close: rpm_suspend {suspended} (kernel threads {}), pci_set_power_state \
         {powered} (D0 by pid {pid}: {}, D3hot by kernel threads: {})",
        kernel_suspends.count, to_d0.count, to_d3.count
    );
    // Every counter of the VF, for the log: what the kernel did, by whom.
    for (k, c) in &closed.counters {
        let Some(kind) = EventKind::from_u32(k.kind) else {
            continue;
        };
        if kind.is_pci() && key_bdf(k.device) == parse_bdf(VF).expect("address") {
            eprintln!(
                "  {}: pid {} ({}), {} events ({} before the open)",
                vpm::report::device_key(kind, k.device),
                k.tgid,
                kind.name(),
                c.count,
                get(&before, *k).count
            );
        }
    }
    assert!(suspended >= 1, "rpm_suspend of {VF} after close");
    assert!(
        kernel_suspends.count >= 1,
        "the suspend ran in a runtime-PM worker"
    );
    assert!(to_d0.count >= 1, "pci_set_power_state(D0) of {VF} on open");
    assert!(
        to_d3.count >= 1,
        "pci_set_power_state(D3hot) of {VF} after close"
    );

    // The monitor shows the worker's events as the `kernel` row (no VM holds the VF).
    let tick = monitor.tick(2.0).expect("tick");
    let kernel = tick
        .vms
        .iter()
        .find(|v| v.info.pid == KERNEL_TGID)
        .expect("a kernel row");
    assert_eq!(kernel.info.name, "kernel");
    let kernel_delta = kernel.delta.as_ref().expect("kernel events");
    assert!(
        kernel_delta.total(EventKind::RpmSuspend).count >= 1,
        "{kernel_delta:?}"
    );

    drop(vfs);
    let end = monitor.telemetry().snapshot().expect("snapshot");
    assert_eq!(read(&dev_path(PF).join("sriov_numvfs")), "0");
    assert_eq!(
        delta(&start, &end, key(pid, EventKind::SriovNumvfsStore, PF, 0)).count,
        2,
        "the cleanup's write of sriov_numvfs counted too"
    );
}

#[test]
fn telemetry_vfio_open_names_the_fix() {
    in_lab();
    // The PF is bound to nvme, not vfio-pci: no group file to open.
    let err = VfioDevice::open(PF).expect_err("the PF is not a VFIO device");
    let msg = err.to_string();
    assert!(msg.contains("vfio-pci"), "{msg}");
}
