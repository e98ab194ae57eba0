//! Per-VM activity over a window of ticks (pure): what `vpm top`, `vpm record`
//! and the API show. The JSON shape of [`WindowReport`] is documented in the
//! README and pinned by a test.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vpm_common::{Counter, EventKind, exit, pci};

use crate::host::HostSample;
use crate::store::long::Row;
use crate::telemetry::ProcessDelta;

/// Who a VM is, as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// VMM process id (tgid).
    pub pid: u32,
    /// Display-safe VM name.
    pub name: String,
    /// VM UUID when the VMM was given one.
    pub uuid: Option<String>,
    /// Which VMM runs it (`qemu`, `firecracker`, …).
    pub vmm: String,
}

/// Whether events of `kind` name a device (shown in `devices`): every kind but
/// the exits.
const fn names_device(kind: EventKind) -> bool {
    !matches!(kind, EventKind::UserspaceExit | EventKind::Exit)
}

/// Formats a device key: hex for ports and addresses, decimal for GSIs; a PCI
/// address for the VFIO/PCI kinds, with their detail after a `/` (`D3hot`,
/// `vf1`, `irq24`). An address the kernel side could not read is `unknown`.
pub fn device_key(kind: EventKind, device: u64) -> String {
    match kind {
        EventKind::Irq | EventKind::UserspaceExit | EventKind::Exit => device.to_string(),
        EventKind::Pio | EventKind::Mmio | EventKind::Msi => format!("{device:#x}"),
        EventKind::VfioRegionRead
        | EventKind::VfioRegionWrite
        | EventKind::VfioIoctl
        | EventKind::RpmSuspend
        | EventKind::RpmResume
        | EventKind::SriovNumvfsStore => pci_address(device),
        EventKind::PciPowerSet => {
            let state = pci::key_detail(device);
            match pci::PowerState::from_u32(state) {
                Some(s) => format!("{}/{}", pci_address(device), s.name()),
                None => format!("{}/state{state}", pci_address(device)),
            }
        }
        EventKind::VfAdd => format!("{}/vf{}", pci_address(device), pci::key_detail(device)),
        EventKind::VfioIntx | EventKind::VfioMsi => {
            format!("{}/irq{}", pci_address(device), pci::key_detail(device))
        }
    }
}

/// The PCI address in a VFIO/PCI device key, or `unknown`.
fn pci_address(device: u64) -> String {
    match pci::key_bdf(device) {
        pci::UNKNOWN_BDF => "unknown".to_owned(),
        bdf => pci::Bdf(bdf).to_string(),
    }
}

#[derive(Clone, Debug)]
struct VmAcc {
    info: VmInfo,
    devices: BTreeMap<(EventKind, u64), Counter>,
    exit_hist: [u64; exit::HIST_BUCKETS as usize],
    host_first: Option<(f64, HostSample)>,
    host_last: Option<(f64, HostSample)>,
}

/// Accumulates ticks into a window.
#[derive(Clone, Debug, Default)]
pub struct Window {
    start: Option<f64>,
    end: Option<f64>,
    vms: BTreeMap<u32, VmAcc>,
}

impl Window {
    /// An empty window that starts at `start` (unix seconds).
    pub fn starting_at(start: f64) -> Self {
        Self {
            start: Some(start),
            end: Some(start),
            vms: BTreeMap::new(),
        }
    }

    /// Extends the window to `at` (unix seconds) even if no VM was observed then.
    pub fn extend_to(&mut self, at: f64) {
        self.start.get_or_insert(at);
        self.end = Some(self.end.map_or(at, |e| e.max(at)));
    }

    /// Adds what VM `info` did in the tick that ended at `at` (unix seconds).
    pub fn observe(
        &mut self,
        at: f64,
        info: &VmInfo,
        delta: Option<&ProcessDelta>,
        host: Option<&HostSample>,
    ) {
        self.extend_to(at);
        let acc = self.vms.entry(info.pid).or_insert_with(|| VmAcc {
            info: info.clone(),
            devices: BTreeMap::new(),
            exit_hist: [0; exit::HIST_BUCKETS as usize],
            host_first: None,
            host_last: None,
        });
        acc.info = info.clone();
        if let Some(delta) = delta {
            for d in &delta.devices {
                let c = acc.devices.entry((d.kind, d.device)).or_default();
                c.count += d.delta.count;
                c.bytes += d.delta.bytes;
            }
            for (slot, add) in acc.exit_hist.iter_mut().zip(delta.exit_hist.iter()) {
                *slot += add;
            }
        }
        if let Some(host) = host {
            if acc.host_first.is_none() {
                acc.host_first = Some((at, host.clone()));
            }
            acc.host_last = Some((at, host.clone()));
        }
    }

    /// Seconds covered so far.
    pub fn seconds(&self) -> f64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) if e > s => e - s,
            _ => 0.0,
        }
    }

    /// The report over the window.
    pub fn report(&self) -> WindowReport {
        let window_s = self.seconds();
        let per_s = |n: u64| {
            if window_s > 0.0 {
                n as f64 / window_s
            } else {
                0.0
            }
        };
        let vms = self
            .vms
            .values()
            .map(|acc| {
                let mut events = BTreeMap::new();
                let mut rates = BTreeMap::new();
                for kind in EventKind::ALL {
                    let total: u64 = acc
                        .devices
                        .iter()
                        .filter(|((k, _), _)| *k == kind)
                        .map(|(_, c)| c.count)
                        .sum();
                    events.insert(kind.name().to_owned(), total);
                    rates.insert(format!("{}_per_s", kind.name()), per_s(total));
                }
                let mut devices: Vec<DeviceReport> = acc
                    .devices
                    .iter()
                    .filter(|((k, _), _)| names_device(*k))
                    .map(|((kind, dev), c)| DeviceReport {
                        kind: kind.name().to_owned(),
                        key: device_key(*kind, *dev),
                        count: c.count,
                        bytes: c.bytes,
                        per_s: per_s(c.count),
                        pci: (kind.is_pci() && pci::key_bdf(*dev) != pci::UNKNOWN_BDF)
                            .then(|| pci::Bdf(pci::key_bdf(*dev)).to_string()),
                    })
                    .collect();
                devices.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
                let exit_time_hist = acc
                    .exit_hist
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(b, n)| HistBucket {
                        ge_ns: exit::bucket_floor_ns(b as u32),
                        count: *n,
                    })
                    .collect();
                VmReport {
                    vm: acc.info.name.clone(),
                    pid: acc.info.pid,
                    uuid: acc.info.uuid.clone(),
                    vmm: acc.info.vmm.clone(),
                    events,
                    rates,
                    devices,
                    host: host_rates(acc.host_first.as_ref(), acc.host_last.as_ref(), self.end),
                    exit_time_hist,
                }
            })
            .collect();
        WindowReport { window_s, vms }
    }
}

/// Rates between the first and last host samples of the window, and the
/// gauges (memory, taps) of the last one only if it was read at the window's
/// `end`: a VM whose sample could not be read in the latest tick (it exited)
/// has no current memory to show.
fn host_rates(
    first: Option<&(f64, HostSample)>,
    last: Option<&(f64, HostSample)>,
    end: Option<f64>,
) -> HostReport {
    let Some((t1, last)) = last else {
        return HostReport::default();
    };
    let current = end.is_none_or(|e| (e - t1).abs() < 1e-9);
    let mem_bytes = last.mem_bytes.filter(|_| current);
    let taps = if current {
        last.taps.clone()
    } else {
        Vec::new()
    };
    let Some((t0, first)) = first else {
        return HostReport {
            mem_bytes,
            taps,
            ..HostReport::default()
        };
    };
    let span = t1 - t0;
    let rate = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if span > 0.0 => Some(b.saturating_sub(a) as f64 / span),
        _ => None,
    };
    HostReport {
        cpu: rate(first.cpu_ns, last.cpu_ns).map(|ns_per_s| ns_per_s / 1e9),
        mem_bytes,
        net_rx_bytes_per_s: rate(first.net_rx_bytes, last.net_rx_bytes),
        net_tx_bytes_per_s: rate(first.net_tx_bytes, last.net_tx_bytes),
        disk_read_bytes_per_s: rate(first.disk_read_bytes, last.disk_read_bytes),
        disk_write_bytes_per_s: rate(first.disk_write_bytes, last.disk_write_bytes),
        taps,
    }
}

/// Totals and rates of every VM over a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowReport {
    /// Length of the window in seconds.
    pub window_s: f64,
    /// One entry per VM, by pid.
    pub vms: Vec<VmReport>,
}

/// One VM over a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmReport {
    /// VM name.
    pub vm: String,
    /// VMM process id.
    pub pid: u32,
    /// VM UUID, if known.
    pub uuid: Option<String>,
    /// VMM kind.
    pub vmm: String,
    /// Event totals by kind (`pio`, `mmio`, `msi`, `irq`, `userspace_exit`, `exit`,
    /// and the VFIO/PCI kinds `vfio_read`, `vfio_write`, `vfio_ioctl`,
    /// `vfio_intx`, `vfio_msi`, `pci_power`, `rpm_suspend`, `rpm_resume`,
    /// `sriov_numvfs`, `vf_add`).
    pub events: BTreeMap<String, u64>,
    /// The same as per-second rates (`pio_per_s`, …).
    pub rates: BTreeMap<String, f64>,
    /// Per device, busiest first.
    pub devices: Vec<DeviceReport>,
    /// Host-side metrics.
    pub host: HostReport,
    /// Exit-handling-time histogram (`kvm_exit` → `kvm_entry`), non-empty buckets only.
    pub exit_time_hist: Vec<HistBucket>,
}

/// One device of one VM over a window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceReport {
    /// `pio`, `mmio`, `msi`, `irq`, or a VFIO/PCI kind (`vfio_read`, …).
    pub kind: String,
    /// Port, MMIO page or MSI address in hex; GSI in decimal; for the VFIO/PCI
    /// kinds the PCI address (`unknown` if not read), with `/D3hot`, `/vf1`
    /// or `/irq24` after it for power, VF and interrupt events.
    pub key: String,
    /// Events.
    pub count: u64,
    /// Bytes moved (PIO and MMIO; VFIO region reads and writes).
    pub bytes: u64,
    /// Events per second.
    pub per_s: f64,
    /// The PCI address of a VFIO/PCI event's device, when known (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<String>,
}

/// One non-empty bucket of the exit-time histogram.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistBucket {
    /// Lower bound of the bucket in ns (the bucket holds `[ge_ns, 2·ge_ns)`).
    pub ge_ns: u64,
    /// Exits in it.
    pub count: u64,
}

/// Host-side metrics of one VM over a window; `null` where unknown.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HostReport {
    /// CPU used, in cores.
    pub cpu: Option<f64>,
    /// Memory at the end of the window.
    pub mem_bytes: Option<u64>,
    /// Bytes the VM received through its taps, per second.
    pub net_rx_bytes_per_s: Option<f64>,
    /// Bytes the VM sent through its taps, per second.
    pub net_tx_bytes_per_s: Option<f64>,
    /// Block bytes read, per second.
    pub disk_read_bytes_per_s: Option<f64>,
    /// Block bytes written, per second.
    pub disk_write_bytes_per_s: Option<f64>,
    /// The VM's tap devices.
    pub taps: Vec<String>,
}

impl WindowReport {
    /// The report as long-format rows stamped `timestamp` (the README's resource list).
    pub fn long_rows(&self, timestamp: f64) -> Vec<Row> {
        let mut rows = Vec::new();
        for vm in &self.vms {
            let mut push = |resource: String, value: Option<f64>| {
                if let Some(value) = value {
                    rows.push(Row {
                        timestamp,
                        vm: vm.vm.clone(),
                        pid: vm.pid,
                        resource,
                        value,
                    });
                }
            };
            push("cpu".into(), vm.host.cpu);
            push("mem_bytes".into(), vm.host.mem_bytes.map(|b| b as f64));
            push("net_rx_bytes_per_s".into(), vm.host.net_rx_bytes_per_s);
            push("net_tx_bytes_per_s".into(), vm.host.net_tx_bytes_per_s);
            push(
                "disk_read_bytes_per_s".into(),
                vm.host.disk_read_bytes_per_s,
            );
            push(
                "disk_write_bytes_per_s".into(),
                vm.host.disk_write_bytes_per_s,
            );
            for kind in EventKind::ALL {
                let name = format!("{}_per_s", kind.name());
                let v = vm.rates.get(&name).copied();
                // VFIO/PCI kinds only where they happened: most VMs have none.
                if kind.is_pci() && v.unwrap_or(0.0) == 0.0 {
                    continue;
                }
                push(name, v);
            }
            for d in &vm.devices {
                push(format!("dev:{}:{}_per_s", d.kind, d.key), Some(d.per_s));
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::DeviceDelta;

    fn info(pid: u32) -> VmInfo {
        VmInfo {
            pid,
            name: format!("vm{pid}"),
            uuid: None,
            vmm: "qemu".into(),
        }
    }

    fn pio(port: u64, count: u64) -> DeviceDelta {
        DeviceDelta {
            kind: EventKind::Pio,
            device: port,
            delta: Counter {
                count,
                bytes: count,
            },
        }
    }

    #[test]
    fn ticks_add_up_to_totals_and_rates() {
        let mut w = Window::starting_at(100.0);
        let d1 = ProcessDelta {
            devices: vec![pio(0x3f8, 10)],
            ..Default::default()
        };
        let d2 = ProcessDelta {
            devices: vec![pio(0x3f8, 30), pio(0x70, 2)],
            ..Default::default()
        };
        w.observe(101.0, &info(1), Some(&d1), None);
        w.observe(102.0, &info(1), Some(&d2), None);
        let r = w.report();
        assert_eq!(r.window_s, 2.0);
        let vm = &r.vms[0];
        assert_eq!(vm.events["pio"], 42);
        assert_eq!(vm.rates["pio_per_s"], 21.0);
        assert_eq!(vm.devices[0].key, "0x3f8");
        assert_eq!(vm.devices[0].count, 40);
        assert_eq!(vm.devices[1].key, "0x70");
    }

    #[test]
    fn host_counters_become_rates_and_memory_stays_a_gauge() {
        let mut w = Window::starting_at(0.0);
        let s0 = HostSample {
            cpu_ns: Some(1_000_000_000),
            mem_bytes: Some(100),
            disk_read_bytes: Some(0),
            net_rx_bytes: Some(10),
            ..Default::default()
        };
        let s1 = HostSample {
            cpu_ns: Some(3_000_000_000),
            mem_bytes: Some(300),
            disk_read_bytes: Some(4000),
            net_rx_bytes: Some(10),
            ..Default::default()
        };
        w.observe(0.0, &info(1), None, Some(&s0));
        w.observe(4.0, &info(1), None, Some(&s1));
        let host = &w.report().vms[0].host;
        assert_eq!(host.cpu, Some(0.5));
        assert_eq!(host.mem_bytes, Some(300));
        assert_eq!(host.disk_read_bytes_per_s, Some(1000.0));
        assert_eq!(host.net_rx_bytes_per_s, Some(0.0));
        assert_eq!(host.disk_write_bytes_per_s, None);
        // The next tick could not read it (it exited): no memory is shown
        // from the older sample.
        w.observe(6.0, &info(1), None, None);
        let host = &w.report().vms[0].host;
        assert_eq!(host.mem_bytes, None);
        assert_eq!(host.cpu, Some(0.5), "rates between the samples it had");
    }

    #[test]
    fn long_rows_name_every_resource() {
        let mut w = Window::starting_at(0.0);
        let d = ProcessDelta {
            devices: vec![pio(0x3f8, 5)],
            ..Default::default()
        };
        w.observe(1.0, &info(9), Some(&d), None);
        let rows = w.report().long_rows(1.0);
        let names: Vec<&str> = rows.iter().map(|r| r.resource.as_str()).collect();
        for expected in [
            "pio_per_s",
            "mmio_per_s",
            "msi_per_s",
            "irq_per_s",
            "userspace_exit_per_s",
            "dev:pio:0x3f8_per_s",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        let dev = rows
            .iter()
            .find(|r| r.resource == "dev:pio:0x3f8_per_s")
            .expect("dev row");
        assert_eq!(dev.value, 5.0);
    }

    fn pci_event(kind: EventKind, device: u64, count: u64, bytes: u64) -> DeviceDelta {
        DeviceDelta {
            kind,
            device,
            delta: Counter { count, bytes },
        }
    }

    #[test]
    fn vfio_pci_events_become_device_lines_with_their_address() {
        let vf = pci::pack_bdf(0, 1, 0, 1);
        let mut w = Window::starting_at(0.0);
        let d = ProcessDelta {
            devices: vec![
                pci_event(EventKind::VfioRegionRead, pci::device_key(vf, 0), 7, 28),
                pci_event(EventKind::PciPowerSet, pci::device_key(vf, 3), 1, 0),
                pci_event(EventKind::VfioMsi, pci::device_key(vf, 37), 2, 0),
                pci_event(
                    EventKind::VfioMsi,
                    pci::device_key(pci::UNKNOWN_BDF, 40),
                    1,
                    0,
                ),
                pci_event(
                    EventKind::VfAdd,
                    pci::device_key(pci::pack_bdf(0, 1, 0, 0), 1),
                    1,
                    0,
                ),
            ],
            ..Default::default()
        };
        w.observe(1.0, &info(4), Some(&d), None);
        let r = w.report();
        let vm = &r.vms[0];
        assert_eq!(vm.events["vfio_read"], 7);
        assert_eq!(vm.events["vfio_msi"], 3);
        let keys: Vec<(&str, &str, Option<&str>)> = vm
            .devices
            .iter()
            .map(|d| (d.kind.as_str(), d.key.as_str(), d.pci.as_deref()))
            .collect();
        for expected in [
            ("vfio_read", "0000:01:00.1", Some("0000:01:00.1")),
            ("pci_power", "0000:01:00.1/D3hot", Some("0000:01:00.1")),
            ("vfio_msi", "0000:01:00.1/irq37", Some("0000:01:00.1")),
            ("vfio_msi", "unknown/irq40", None),
            ("vf_add", "0000:01:00.0/vf1", Some("0000:01:00.0")),
        ] {
            assert!(keys.contains(&expected), "{expected:?} not in {keys:?}");
        }
        assert_eq!(vm.devices[0].bytes, 28);
        // CSV: VFIO/PCI kinds only where they happened.
        let rows = r.long_rows(1.0);
        let names: Vec<&str> = rows.iter().map(|r| r.resource.as_str()).collect();
        assert!(names.contains(&"vfio_read_per_s"), "{names:?}");
        assert!(!names.contains(&"vfio_write_per_s"), "{names:?}");
        assert!(
            names.contains(&"dev:vfio_read:0000:01:00.1_per_s"),
            "{names:?}"
        );
        // JSON: `pci` only on lines that have one.
        let v = serde_json::to_value(&r).expect("json");
        let lines = v["vms"][0]["devices"].as_array().expect("devices");
        assert!(lines.iter().any(|l| l.get("pci").is_none()));
        assert!(lines.iter().any(|l| l["pci"] == "0000:01:00.1"));
    }

    #[test]
    fn kvm_only_rows_and_json_keep_their_shape() {
        let mut w = Window::starting_at(0.0);
        let d = ProcessDelta {
            devices: vec![pio(0x3f8, 1)],
            ..Default::default()
        };
        w.observe(1.0, &info(9), Some(&d), None);
        let r = w.report();
        assert!(
            r.long_rows(1.0)
                .iter()
                .all(|row| !row.resource.starts_with("vfio"))
        );
        let v = serde_json::to_value(&r).expect("json");
        assert!(v["vms"][0]["devices"][0].get("pci").is_none());
    }

    #[test]
    fn json_shape_is_stable() {
        let mut w = Window::starting_at(0.0);
        let d = ProcessDelta {
            devices: vec![pio(0x3f8, 2)],
            ..Default::default()
        };
        w.observe(2.0, &info(3), Some(&d), None);
        let v = serde_json::to_value(w.report()).expect("json");
        assert_eq!(v["window_s"], 2.0);
        let vm = &v["vms"][0];
        assert_eq!(vm["vm"], "vm3");
        assert_eq!(vm["pid"], 3);
        assert!(vm["uuid"].is_null());
        assert_eq!(vm["events"]["pio"], 2);
        assert_eq!(vm["events"]["userspace_exit"], 0);
        assert_eq!(vm["devices"][0]["kind"], "pio");
        assert_eq!(vm["devices"][0]["key"], "0x3f8");
        assert_eq!(vm["devices"][0]["count"], 2);
        assert_eq!(vm["devices"][0]["bytes"], 2);
        assert!(vm["host"]["cpu"].is_null());
    }
}
