//! One tick of the whole host: read the eBPF maps, diff them, name each VM,
//! sample its host metrics, and drop the entries of VMs that exited.
//!
//! VFIO/PCI events the kernel caused itself (interrupts, runtime-PM workers)
//! are counted under [`KERNEL_TGID`]; each tick names their interrupts'
//! devices and moves the events on a device a VM holds through VFIO to that VM
//! (see [`telemetry::attribution`]). The rest are shown as the `kernel` row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::history::{Tick, VmTick};
use crate::host::{self, HostError};
use crate::identity::{self, VmIdentity};
use crate::report::VmInfo;
use crate::telemetry::{
    self, Attachment, LoadOptions, Snapshot, Telemetry, TelemetryError, attribution,
};
use vpm_common::KERNEL_TGID;

/// Where to read from.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// eBPF loading options.
    pub load: LoadOptions,
    /// procfs root.
    pub proc_root: PathBuf,
    /// sysfs root (the cgroup root is `<sys_root>/fs/cgroup`).
    pub sys_root: PathBuf,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        Self {
            load: LoadOptions::default(),
            proc_root: PathBuf::from(host::DEFAULT_PROC_ROOT),
            sys_root: PathBuf::from(host::DEFAULT_SYS_ROOT),
        }
    }
}

/// Errors of a tick.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The eBPF side failed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// The per-tick collector.
pub struct Monitor {
    telemetry: Telemetry,
    opts: MonitorOptions,
    prev: Snapshot,
    names: BTreeMap<u32, VmInfo>,
    clk_tck: u64,
    pruned_entries: u64,
    /// Processes found gone in the last tick, forgotten in the next.
    exited: Vec<u32>,
    /// IRQ → PCI address of vfio interrupts seen so far (kept for IRQs freed
    /// before the tick that reads their last events).
    irq_names: BTreeMap<u32, u32>,
    /// Events the programs dropped because the counter map was full, as last
    /// read (a rise is logged).
    dropped: u64,
}

/// How the kernel's own events are shown.
fn kernel_info() -> VmInfo {
    VmInfo {
        pid: KERNEL_TGID,
        name: "kernel".to_owned(),
        uuid: None,
        vmm: "kernel".to_owned(),
    }
}

fn info_of(id: &VmIdentity) -> VmInfo {
    VmInfo {
        pid: id.pid,
        name: id.name.clone(),
        uuid: id.uuid.clone(),
        vmm: id.vmm.as_str().to_owned(),
    }
}

impl Monitor {
    /// Loads and attaches the eBPF programs and takes the baseline snapshot.
    pub fn start(opts: &MonitorOptions) -> Result<Self, MonitorError> {
        let mut telemetry = Telemetry::load(&opts.load)?;
        let prev = telemetry.snapshot()?;
        Ok(Self {
            telemetry,
            opts: opts.clone(),
            prev,
            names: BTreeMap::new(),
            clk_tck: host::clock_ticks_per_second(),
            pruned_entries: 0,
            exited: Vec::new(),
            irq_names: BTreeMap::new(),
            dropped: 0,
        })
    }

    /// What was attached, and how.
    pub fn attachments(&self) -> &[Attachment] {
        self.telemetry.attachments()
    }

    /// What was attached of the VFIO/PCI attach points, and how.
    pub fn pci_attachments(&self) -> &[telemetry::ProbeAttachment] {
        self.telemetry.pci_attachments()
    }

    /// Lines saying what is attached and what is not: the KVM tracepoints,
    /// the VFIO/PCI attach points, and the device offsets that are unknown
    /// (their events count under the unknown device), if any.
    pub fn attach_summary(&self) -> String {
        let mut out = format!(
            "tracepoints: {}\nvfio/pci: {}",
            telemetry::render_report(self.attachments()),
            telemetry::probes::render_report(self.pci_attachments())
        );
        let unknown: Vec<&str> = self
            .telemetry
            .offset_notes()
            .iter()
            .filter(|n| !n.known)
            .map(|n| n.text.as_str())
            .collect();
        if !unknown.is_empty() {
            out.push_str("\nvfio/pci offsets: ");
            out.push_str(&unknown.join("; "));
        }
        out
    }

    /// The underlying telemetry (maps and stats).
    pub fn telemetry(&mut self) -> &mut Telemetry {
        &mut self.telemetry
    }

    /// Map entries removed so far because their process exited.
    pub fn pruned_entries(&self) -> u64 {
        self.pruned_entries
    }

    /// Per key, the highest cumulative counts read so far (the base of the next
    /// tick's differences).
    pub fn last_snapshot(&self) -> &Snapshot {
        &self.prev
    }

    /// Reads everything once; `at` is the tick's end in unix seconds.
    pub fn tick(&mut self, at: f64) -> Result<Tick, MonitorError> {
        let snap = self.telemetry.snapshot()?;
        self.check_dropped();
        let mut deltas = telemetry::diff(&self.prev, &snap);

        // Every process with events this tick, every known VMM, every VM seen before.
        let mut vmm_pids = Vec::new();
        match identity::scan_vmms(&self.opts.proc_root) {
            Ok(vmms) => {
                for id in vmms {
                    vmm_pids.push(id.pid);
                    let info = self.unique(info_of(&id));
                    self.names.insert(id.pid, info);
                }
            }
            Err(e) => log::warn!("cannot list processes: {e}"),
        }
        self.attribute_kernel_events(&mut deltas, &vmm_pids);
        let mut pids: BTreeSet<u32> = deltas.keys().copied().collect();
        pids.extend(vmm_pids.iter().copied());
        pids.extend(self.names.keys().copied());

        let cgroup_root = self.opts.sys_root.join("fs/cgroup");
        let mut vms = Vec::with_capacity(pids.len());
        let mut gone = Vec::new();
        for pid in pids {
            if pid == KERNEL_TGID {
                // Not a process: no host metrics, never gone.
                if let Some(delta) = deltas.remove(&pid) {
                    vms.push(VmTick {
                        info: kernel_info(),
                        delta: Some(delta),
                        host: None,
                    });
                }
                continue;
            }
            let host = match host::sample_with_clock(
                &self.opts.proc_root,
                &self.opts.sys_root,
                &cgroup_root,
                pid,
                self.clk_tck,
            ) {
                Ok(s) => Some(s),
                Err(HostError::Gone { .. }) => {
                    gone.push(pid);
                    None
                }
                Err(e) => {
                    log::debug!("{e}");
                    None
                }
            };
            let info = match self.names.get(&pid) {
                Some(info) => info.clone(),
                None => match identity::identify(&self.opts.proc_root, pid) {
                    Ok(id) => {
                        let info = self.unique(info_of(&id));
                        self.names.insert(pid, info.clone());
                        info
                    }
                    Err(_) => VmInfo {
                        pid,
                        name: format!("pid-{pid}"),
                        uuid: None,
                        vmm: identity::Vmm::Unknown.as_str().to_owned(),
                    },
                },
            };
            let delta = deltas.remove(&pid);
            if delta.is_none() && host.is_none() {
                continue;
            }
            vms.push(VmTick { info, delta, host });
        }

        // Processes in the maps that no longer exist are forgotten one tick
        // later: this tick's snapshot, read after they exited, holds their last
        // events; the entries are freed after it so the maps stay bounded.
        let to_forget = std::mem::take(&mut self.exited);
        if !to_forget.is_empty() {
            let removed = self.telemetry.forget(&snap, &to_forget)?;
            self.pruned_entries += removed as u64;
        }
        self.exited = snap
            .tgids()
            .into_iter()
            .filter(|t| *t != KERNEL_TGID && !to_forget.contains(t))
            .filter(|t| gone.contains(t) || !self.opts.proc_root.join(t.to_string()).exists())
            .collect();
        self.prev.advance_to(&snap);
        for t in &to_forget {
            self.prev.forget(*t);
        }
        for t in gone.iter().chain(to_forget.iter()) {
            self.names.remove(t);
        }
        Ok(Tick { at, vms })
    }

    /// Logs when the programs dropped events since the last tick because the
    /// counter map was full (distinct keys past its size: a guest touching
    /// very many MMIO pages, thousands of VMs): those counts are missing.
    fn check_dropped(&mut self) {
        let Ok(stats) = self.telemetry.stats() else {
            return;
        };
        let now = stats[vpm_common::Stat::CounterMapFull as usize];
        if now > self.dropped {
            log::warn!(
                "{} events were not counted since the last tick: the counter map is full \
                 ({} keys of (process, kind, device)); the counts of new keys are missing \
                 until processes exit and their keys are freed",
                now - self.dropped,
                vpm_common::MAX_COUNTER_ENTRIES
            );
        }
        self.dropped = now;
    }

    /// `info` with a name no other process shows: while another known
    /// process shows its name (two VMs started with the same `-name`, names
    /// alike in their first 64 characters, the `kernel` row), it is shown as
    /// `NAME#PID`, so the CSV's series stay apart; once the other is gone
    /// (a restart, `-daemonize`'s parent), it is shown as `NAME` again. A
    /// process that exited stays known until the tick that writes its last
    /// rows, so a restarted VM's first tick is `NAME#PID`, not a second
    /// `NAME` row in the same tick.
    fn unique(&self, mut info: VmInfo) -> VmInfo {
        let taken = info.name == kernel_info().name
            || self
                .names
                .iter()
                .any(|(pid, other)| *pid != info.pid && other.name == info.name);
        if taken {
            info.name = format!("{}#{}", info.name, info.pid);
        }
        info
    }

    /// Names the devices of this tick's vfio interrupts and moves the kernel's
    /// own VFIO/PCI events on devices held by a VMM (`vmm_pids`) to that VMM.
    fn attribute_kernel_events(
        &mut self,
        deltas: &mut BTreeMap<u32, telemetry::ProcessDelta>,
        vmm_pids: &[u32],
    ) {
        let irqs = attribution::unresolved_irqs(deltas);
        if !irqs.is_empty() {
            let found = attribution::resolve_irqs(&self.opts.sys_root, &self.opts.proc_root, irqs);
            self.irq_names.extend(found);
            attribution::name_irqs(deltas, &self.irq_names);
        }
        if attribution::kernel_devices(deltas).is_empty() || vmm_pids.is_empty() {
            return;
        }
        let holders = attribution::vfio_holders(
            &self.opts.proc_root,
            &self.opts.sys_root,
            vmm_pids.iter().copied(),
        );
        attribution::move_kernel_events(deltas, &holders);
    }
}
