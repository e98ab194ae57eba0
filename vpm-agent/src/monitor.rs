//! One tick of the whole host: read the eBPF maps, diff them, name each VM,
//! sample its host metrics, and drop the entries of VMs that exited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::history::{Tick, VmTick};
use crate::host::{self, HostError};
use crate::identity::{self, VmIdentity};
use crate::report::VmInfo;
use crate::telemetry::{self, Attachment, LoadOptions, Snapshot, Telemetry, TelemetryError};

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
        })
    }

    /// What was attached, and how.
    pub fn attachments(&self) -> &[Attachment] {
        self.telemetry.attachments()
    }

    /// One line saying what is attached and what is not.
    pub fn attach_summary(&self) -> String {
        format!(
            "tracepoints: {}",
            telemetry::render_report(self.attachments())
        )
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
        let mut deltas = telemetry::diff(&self.prev, &snap);

        // Every process with events this tick, every known VMM, every VM seen before.
        let mut pids: BTreeSet<u32> = deltas.keys().copied().collect();
        match identity::scan_vmms(&self.opts.proc_root) {
            Ok(vmms) => {
                for id in vmms {
                    pids.insert(id.pid);
                    self.names.insert(id.pid, info_of(&id));
                }
            }
            Err(e) => log::warn!("cannot list processes: {e}"),
        }
        pids.extend(self.names.keys().copied());

        let cgroup_root = self.opts.sys_root.join("fs/cgroup");
        let mut vms = Vec::with_capacity(pids.len());
        let mut gone = Vec::new();
        for pid in pids {
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
                        let info = info_of(&id);
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
            .filter(|t| !to_forget.contains(t))
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
}
