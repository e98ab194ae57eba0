//! The simulated host a replay runs against: one SR-IOV PF in
//! [`SimPci`] (the kernel's SR-IOV and runtime-PM rules), the VMs that open
//! and close its VFs, and the times the scheduler's [`HostState`] needs
//! (since when each VF is in its power state, since when it is idle, the
//! last VF count change), which the agent takes from its journal.
//!
//! Policies act only through [`SimHost::apply`], which goes through the
//! agent's executor ([`executor::execute_on`]): the same safety rules, the same steps.
//!
//! Time is simulated: everything happens at the instants the replay gives.
//! The kernel operations are instant in [`SimPci`], so their latencies are
//! modelled here ([`Latencies`]): a VF is *ready* for a VM only once it is
//! in D0 and its wake (or its creation) has had time to complete.
//!
//! VMs act as a management stack does: a VM that needs one more VF takes a
//! free one, ready ones first; it binds the VF to vfio-pci if nobody has
//! (libvirt's `managed='yes'`) and opens it, which resumes a parked VF (the
//! VM then waits the wake latency). With no free VF the demand waits
//! (a shortfall) and is served, first come first served within class
//! priority, as soon as a VF is free. A VM that needs fewer VFs closes the
//! one it opened last; a VF under `power/control=auto` then suspends by
//! itself (runtime PM), one under `on` stays in D0.
//!
//! With [`HostConfig::hotplug`] the VMs are QEMU guests that cannot take a
//! VF themselves: a VF is theirs only once a policy attached it
//! ([`Action::Attach`], through the executor and a simulated hypervisor), and
//! an onset finds a VF *ready* only if one attached to the VM is idle and
//! awake (connected before the demand). Otherwise the demand waits until
//! one is attached. Ending a use leaves the VF attached; only a
//! [`Action::Detach`] gives it back (a detach of a VF in use puts that use
//! back to waiting).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::ReplayError;
use super::metrics::{OnsetOutcome, SlotState};
use crate::executor::{
    self, Action, ApplyOptions, Attachment, ExecuteError, Hotplug, HotplugError, VmFacts, VmRef,
};
use crate::hal::sim::SimPci;
use crate::hal::{Bdf, HolderInfo, PciBackend, PowerControl, PowerState};
use crate::policy::Policy;
use crate::scheduler::{
    AttachedVf, DeviceState, DeviceUse, HostState, PfState, VfCountChange, VmHotplug, VmState,
};

/// The driver VMs open VFs through.
const VFIO: &str = crate::executor::guard::VFIO_DRIVER;

/// How long the kernel operations take (instant in [`SimPci`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    /// D3hot → D0, seconds (a wake, or a VM opening a parked VF).
    pub wake_s: f64,
    /// Creating VFs (`sriov_numvfs` 0 → N), seconds.
    pub create_s: f64,
    /// Removing VFs (N → 0, and the first half of a resize), seconds.
    pub remove_s: f64,
    /// Hot-plugging a VF into a running VM (QMP `device_add`), seconds.
    pub attach_s: f64,
}

impl Default for Latencies {
    /// The lab's measurements on an emulated NVMe (BENCHMARKS.md, `## hal`,
    /// medians): opening a parked VF through VFIO 122 ms, creating 4 VFs
    /// 131 ms, removing 2 VFs 1039 ms, attaching a VF to a running QEMU
    /// (wake, `device_add`, holder seen) 429 ms.
    fn default() -> Self {
        Self {
            wake_s: 0.122,
            create_s: 0.131,
            remove_s: 1.039,
            attach_s: 0.429,
        }
    }
}

/// The simulated PF.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Its address (it must be allowed by the policy the host is given).
    pub pf: Bdf,
    /// Its `sriov_totalvfs`.
    pub total_vfs: u32,
    /// Operation latencies.
    pub latencies: Latencies,
    /// VMs get VFs only by hot-plug (see the module docs).
    pub hotplug: bool,
}

/// What the host keeps of one VF (the agent's journal keeps the same).
#[derive(Debug, Clone, PartialEq)]
struct VfTrack {
    power: Option<PowerState>,
    control: Option<PowerControl>,
    /// When its power state or control last changed.
    power_since: f64,
    /// When it was last held (`None`: never, since it was created).
    idle_since: Option<f64>,
    /// When it is (or was) done waking or being created.
    ready_at: f64,
}

/// One VM.
#[derive(Debug, Clone)]
struct VmSlot {
    pid: u32,
    priority: u32,
    /// VFs it holds (hot-plug: uses), in the order it opened them.
    held: Vec<Bdf>,
    /// Hot-plug: VFs attached to it, with when.
    attached: Vec<(Bdf, f64)>,
    /// Onset times of the demand no VF served yet, oldest first.
    pending: VecDeque<f64>,
}

/// One onset of a [`SimHost::demand`] step.
#[derive(Debug, Clone, PartialEq)]
pub struct Onset {
    /// The VM.
    pub vm: String,
    /// 1 for the first VF this step added to the VM's demand, 2 for the
    /// second, …
    pub unit: u32,
    /// What it found.
    pub outcome: OnsetOutcome,
}

/// What a [`SimHost::demand`] step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemandStep {
    /// The new onsets.
    pub onsets: Vec<Onset>,
    /// Onset times of shortfalls served in this step.
    pub served: Vec<f64>,
}

/// An action carried out by [`SimHost::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// For a VF count change, the count before it.
    pub from: Option<u32>,
    /// VFs that no longer exist after it.
    pub removed: Vec<Bdf>,
}

/// The simulated host.
pub struct SimHost {
    sim: SimPci,
    cfg: HostConfig,
    policy: Policy,
    opts: ApplyOptions,
    vms: BTreeMap<String, VmSlot>,
    vfs: BTreeMap<Bdf, VfTrack>,
    last_change: Option<VfCountChange>,
    held_peak: BTreeMap<String, crate::scheduler::state::HeldPeak>,
}

fn hal(e: crate::hal::HalError) -> ReplayError {
    ReplayError::Hal(Box::new(e))
}

impl SimHost {
    /// A host with the PF (no VFs yet, its driver bound) and `vms` running.
    /// `policy` is what the executor checks actions against (its allow-list)
    /// and where the VMs' classes come from.
    pub fn new(cfg: HostConfig, policy: Policy, vms: &[String]) -> Self {
        let sim = SimPci::new();
        sim.add_pf(cfg.pf, cfg.total_vfs, Some("nvme"));
        let vms = vms
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let slot = VmSlot {
                    pid: 10_000 + u32::try_from(i).unwrap_or(u32::MAX - 10_000),
                    priority: policy.class_of(name).class.priority,
                    held: Vec::new(),
                    attached: Vec::new(),
                    pending: VecDeque::new(),
                };
                (name.clone(), slot)
            })
            .collect();
        Self {
            sim,
            cfg,
            policy,
            opts: ApplyOptions {
                write_timeout: Duration::from_secs(30),
                settle_timeout: Duration::from_secs(1),
            },
            vms,
            vfs: BTreeMap::new(),
            last_change: None,
            held_peak: Default::default(),
        }
    }

    /// The PF.
    pub fn pf(&self) -> Bdf {
        self.cfg.pf
    }

    /// The VFs that exist, by address.
    fn vf_list(&self) -> Result<Vec<Bdf>, ReplayError> {
        let f = self.sim.function(self.cfg.pf).map_err(hal)?;
        Ok(f.virtfns.into_iter().map(|(_, b)| b).collect())
    }

    /// Re-reads every VF's power state and control; a change dates
    /// `power_since` at `now`.
    fn refresh(&mut self, now: f64) -> Result<(), ReplayError> {
        let list = self.vf_list()?;
        self.vfs.retain(|b, _| list.contains(b));
        for bdf in list {
            let f = self.sim.function(bdf).map_err(hal)?;
            let t = self.vfs.entry(bdf).or_insert_with(|| VfTrack {
                power: f.power_state.clone(),
                control: f.power_control,
                power_since: now,
                idle_since: None,
                ready_at: now,
            });
            if t.power != f.power_state || t.control != f.power_control {
                t.power = f.power_state.clone();
                t.control = f.power_control;
                t.power_since = now;
            }
        }
        Ok(())
    }

    /// The VM holding `bdf` open (hot-plug: the VM it is attached to).
    fn holder_of(&self, bdf: Bdf) -> Option<&str> {
        self.vms
            .iter()
            .find(|(_, s)| {
                if self.cfg.hotplug {
                    s.attached.iter().any(|(b, _)| *b == bdf)
                } else {
                    s.held.contains(&bdf)
                }
            })
            .map(|(n, _)| n.as_str())
    }

    /// Hot-plug: `vm` starts using one of its attached, unused VFs.
    fn use_attached(&mut self, now: f64, vm: &str) -> Option<OnsetOutcome> {
        let slot = self.vms.get(vm)?;
        let mut idle: Vec<Bdf> = slot
            .attached
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| !slot.held.contains(b))
            .collect();
        // Ready ones first.
        idle.sort_by_key(|b| {
            let t = self.vfs.get(b);
            let ready = t.is_some_and(|t| t.power == Some(PowerState::D0) && t.ready_at <= now);
            (!ready, *b)
        });
        let bdf = *idle.first()?;
        let t = self.vfs.get(&bdf);
        let outcome = match t {
            Some(t) if t.power == Some(PowerState::D0) && t.ready_at <= now => OnsetOutcome::Ready,
            Some(t) if t.power == Some(PowerState::D0) => OnsetOutcome::Woken {
                wait_s: t.ready_at - now,
            },
            _ => OnsetOutcome::Woken {
                wait_s: self.cfg.latencies.wake_s,
            },
        };
        if let Some(s) = self.vms.get_mut(vm) {
            s.held.push(bdf);
        }
        Some(outcome)
    }

    /// Free VFs, ready ones first (then by address), with whether each is ready.
    fn free_vfs(&self, now: f64) -> Vec<(Bdf, bool)> {
        let mut free: Vec<(Bdf, bool)> = self
            .vfs
            .iter()
            .filter(|(b, _)| self.holder_of(**b).is_none())
            .map(|(b, t)| (*b, t.power == Some(PowerState::D0) && t.ready_at <= now))
            .collect();
        free.sort_by_key(|&(b, ready)| (!ready, b));
        free
    }

    /// `vm` opens one free VF at `now`, if there is one (hot-plug: starts
    /// using an attached one).
    fn open_one(&mut self, now: f64, vm: &str) -> Result<Option<OnsetOutcome>, ReplayError> {
        if self.cfg.hotplug {
            return Ok(self.use_attached(now, vm));
        }
        let Some(&(bdf, ready)) = self.free_vfs(now).first() else {
            return Ok(None);
        };
        let Some(slot) = self.vms.get(vm) else {
            return Ok(None);
        };
        let pid = slot.pid;
        let f = self.sim.function(bdf).map_err(hal)?;
        if f.driver.as_deref() != Some(VFIO) {
            // The VM's management stack binds it (libvirt `managed='yes'`).
            self.sim
                .bind_driver(bdf, VFIO, self.opts.write_timeout)
                .map_err(hal)?;
        }
        let track = self.vfs.get(&bdf);
        let wait_s = if ready {
            0.0
        } else {
            match track {
                Some(t) if t.power == Some(PowerState::D0) => (t.ready_at - now).max(0.0),
                _ => self.cfg.latencies.wake_s,
            }
        };
        self.sim
            .open(
                bdf,
                HolderInfo {
                    pid,
                    comm: "qemu-system-x86".into(),
                    vm: Some(vm.to_owned()),
                },
            )
            .map_err(|e| ReplayError::Open {
                vm: vm.to_owned(),
                bdf,
                source: Box::new(e),
            })?;
        if let Some(t) = self.vfs.get_mut(&bdf) {
            t.ready_at = t.ready_at.max(now + wait_s);
        }
        if let Some(slot) = self.vms.get_mut(vm) {
            slot.held.push(bdf);
        }
        Ok(Some(if ready {
            OnsetOutcome::Ready
        } else {
            OnsetOutcome::Woken { wait_s }
        }))
    }

    /// Applies each VM's demand at `now` (VFs it should be using; VMs not
    /// listed keep theirs): releases first, then pending demand is served,
    /// then new onsets take VFs, in class priority order (then by name).
    pub fn demand(&mut self, now: f64, wants: &[(String, u32)]) -> Result<DemandStep, ReplayError> {
        let mut step = DemandStep::default();
        // Releases.
        for (vm, want) in wants {
            let Some(slot) = self.vms.get_mut(vm) else {
                return Err(ReplayError::UnknownVm { vm: vm.clone() });
            };
            let want = *want as usize;
            while slot.held.len() + slot.pending.len() > want && !slot.pending.is_empty() {
                slot.pending.pop_back();
            }
            let mut closed = Vec::new();
            while slot.held.len() > want {
                if let Some(b) = slot.held.pop() {
                    closed.push(b);
                }
            }
            let pid = slot.pid;
            for b in closed {
                // Hot-plug: the VF stays attached (held by the VM's QEMU).
                if !self.cfg.hotplug {
                    self.sim.close(b, pid);
                }
                if let Some(t) = self.vfs.get_mut(&b) {
                    t.idle_since = Some(now);
                }
            }
        }
        self.refresh(now)?;
        let mut order: Vec<(u32, String)> = self
            .vms
            .iter()
            .map(|(n, s)| (s.priority, n.clone()))
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        // Pending demand, served first.
        for (_, vm) in &order {
            while self.vms.get(vm).is_some_and(|s| !s.pending.is_empty()) {
                if self.open_one(now, vm)?.is_none() {
                    break;
                }
                if let Some(t) = self.vms.get_mut(vm).and_then(|s| s.pending.pop_front()) {
                    step.served.push(t);
                }
            }
        }
        // New onsets.
        let wants: BTreeMap<&str, u32> = wants.iter().map(|(v, n)| (v.as_str(), *n)).collect();
        for (_, vm) in &order {
            let Some(&want) = wants.get(vm.as_str()) else {
                continue;
            };
            let have = self
                .vms
                .get(vm)
                .map_or(0, |s| s.held.len() + s.pending.len());
            let new = (want as usize).saturating_sub(have);
            for unit in 1..=new {
                let outcome = match self.open_one(now, vm)? {
                    Some(o) => o,
                    None => {
                        if let Some(s) = self.vms.get_mut(vm) {
                            s.pending.push_back(now);
                        }
                        // Every VF the PF supports exists and is held (by
                        // other VMs: hot-plug counts VFs in use elsewhere).
                        let in_use: usize = self.vms.values().map(|s| s.held.len()).sum();
                        let full = u32::try_from(self.vfs.len())
                            .is_ok_and(|n| n >= self.cfg.total_vfs)
                            && (!self.cfg.hotplug || in_use >= self.vfs.len());
                        if full {
                            OnsetOutcome::AtCapacity
                        } else {
                            OnsetOutcome::Shortfall
                        }
                    }
                };
                step.onsets.push(Onset {
                    vm: vm.clone(),
                    unit: u32::try_from(unit).unwrap_or(u32::MAX),
                    outcome,
                });
            }
        }
        self.refresh(now)?;
        // The pool memory the agent keeps (see `PfState::peak_held`).
        for (vm, slot) in &self.vms {
            if !slot.held.is_empty() {
                let n = u32::try_from(slot.held.len()).unwrap_or(u32::MAX);
                self.held_peak
                    .entry(vm.clone())
                    .or_default()
                    .observe(now, n);
            }
        }
        Ok(step)
    }

    /// Demand no VF serves now, in VFs.
    pub fn pending(&self) -> u32 {
        let n: usize = self.vms.values().map(|s| s.pending.len()).sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// VFs `vm` holds.
    pub fn held_by(&self, vm: &str) -> u32 {
        self.vms
            .get(vm)
            .map_or(0, |s| u32::try_from(s.held.len()).unwrap_or(u32::MAX))
    }

    /// The host as the scheduler sees it at `now`.
    pub fn state(&self, now: f64) -> Result<HostState, ReplayError> {
        let pf = self.sim.function(self.cfg.pf).map_err(hal)?;
        let sriov = pf.sriov.ok_or(ReplayError::NotSriov { pf: self.cfg.pf })?;
        let mut vfs = Vec::new();
        for (_, bdf) in &pf.virtfns {
            let f = self.sim.function(*bdf).map_err(hal)?;
            let t = self.vfs.get(bdf);
            let user = match self.holder_of(*bdf) {
                Some(vm) => DeviceUse::Vm(vm.to_owned()),
                None => DeviceUse::Free,
            };
            let idle_since = if user.is_held() {
                Some(now)
            } else {
                t.and_then(|t| t.idle_since)
            };
            vfs.push(DeviceState {
                bdf: *bdf,
                vendor: f.vendor,
                device: f.device,
                driver: f.driver,
                user,
                power: f
                    .power_state
                    .unwrap_or(PowerState::Unknown("absent".into())),
                control: f.power_control,
                power_since: t.map(|t| t.power_since),
                idle_since,
                wake_latency_s: None,
            });
        }
        let peak_held = self
            .held_peak
            .values()
            .map(|p| p.peak(now, crate::scheduler::state::POOL_MEMORY_S))
            .fold(0u32, u32::saturating_add);
        Ok(HostState {
            pfs: vec![PfState {
                bdf: self.cfg.pf,
                vendor: pf.vendor,
                device: pf.device,
                total_vfs: sriov.total_vfs,
                num_vfs: sriov.num_vfs,
                last_change: self.last_change,
                peak_held,
                vfs,
            }],
            devices: Vec::new(),
            vms: self
                .vms
                .iter()
                .map(|(name, s)| VmState {
                    name: name.clone(),
                    pid: s.pid,
                    hotplug: self.cfg.hotplug.then(|| VmHotplug {
                        attached: s
                            .attached
                            .iter()
                            .map(|&(vf, since)| AttachedVf {
                                vf,
                                by_vpm: true,
                                since: Some(since),
                            })
                            .collect(),
                    }),
                })
                .collect(),
            // The replay's controllers act at once.
            reaction_s: 0.0,
        })
    }

    /// Carries out `action` at `now` through the agent's executor (its safety
    /// rules included), and records what the journal would.
    pub fn apply(&mut self, now: f64, action: Action) -> Result<ApplyOutcome, ExecuteError> {
        let before = self.vf_list().unwrap_or_default();
        let from = self
            .sim
            .function(self.cfg.pf)
            .ok()
            .and_then(|f| f.sriov)
            .map(|s| s.num_vfs);
        let was_awake = match action {
            Action::Wake { bdf } => self
                .vfs
                .get(&bdf)
                .is_some_and(|t| t.power == Some(PowerState::D0)),
            _ => false,
        };
        let was_attached = action.vm().map(|vm| {
            self.vms
                .get(&vm.name)
                .is_some_and(|s| s.attached.iter().any(|(b, _)| *b == action.target()))
        });
        {
            let hv = SimHypervisor { host: self };
            executor::execute_with(
                &self.sim,
                self.cfg.hotplug.then_some(&hv as &dyn Hotplug),
                Some(&self.policy),
                action.clone(),
                true,
                &self.opts,
                None,
            )?;
        }
        let lat = self.cfg.latencies;
        let mut out = ApplyOutcome {
            from: None,
            removed: Vec::new(),
        };
        match action {
            Action::SetVfs { count, .. } => {
                let from = from.unwrap_or(0);
                out.from = Some(from);
                if count != from {
                    self.last_change = Some(VfCountChange { at: now, from });
                    // Every VF of the PF is new (the count passes through 0).
                    out.removed = before;
                    self.vfs.clear();
                    let ready = now
                        + if from > 0 { lat.remove_s } else { 0.0 }
                        + if count > 0 { lat.create_s } else { 0.0 };
                    let _ = self.refresh(now); // as below
                    for t in self.vfs.values_mut() {
                        t.ready_at = ready;
                    }
                }
            }
            Action::Wake { bdf } => {
                if let Some(t) = self.vfs.get_mut(&bdf) {
                    t.power_since = now;
                    if !was_awake {
                        t.ready_at = now + lat.wake_s;
                    }
                }
            }
            Action::Park { bdf } => {
                if let Some(t) = self.vfs.get_mut(&bdf) {
                    t.power_since = now;
                }
            }
            Action::Attach { vm, vf } => {
                if was_attached == Some(false)
                    && let Some(s) = self.vms.get_mut(&vm.name)
                {
                    s.attached.push((vf, now));
                }
                // `attach_s` was measured from a parked VF: wake included.
                if let Some(t) = self.vfs.get_mut(&vf) {
                    t.ready_at = t.ready_at.max(now + lat.attach_s);
                }
            }
            Action::Detach { vm, vf } => {
                if let Some(s) = self.vms.get_mut(&vm.name) {
                    s.attached.retain(|(b, _)| *b != vf);
                    // A VF taken while in use: that use waits again.
                    if let Some(i) = s.held.iter().position(|b| *b == vf) {
                        s.held.remove(i);
                        s.pending.push_back(now);
                    }
                }
                if let Some(t) = self.vfs.get_mut(&vf) {
                    t.idle_since = Some(now);
                }
            }
        }
        // The action is done; a failed re-read (only if the simulated PF itself
        // vanished) leaves the tracks as they were, and the next step's
        // refresh reports it.
        let _ = self.refresh(now);
        Ok(out)
    }

    /// Where each existing VF stands now, and how many VF slots of the PF
    /// have no VF.
    pub fn slots(&self) -> (Vec<SlotState>, u32) {
        let slots: Vec<SlotState> = self
            .vfs
            .iter()
            .map(|(b, t)| {
                let in_use = self.vms.values().any(|s| s.held.contains(b));
                if in_use {
                    SlotState::Held
                } else if self.holder_of(*b).is_some() {
                    SlotState::AttachedIdle
                } else if t.power == Some(PowerState::D0) {
                    SlotState::IdleAwake
                } else {
                    SlotState::IdleParked
                }
            })
            .collect();
        let n = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        (slots, self.cfg.total_vfs.saturating_sub(n))
    }
}

/// The hypervisor side of hot-plug in the simulation: attaching makes the
/// VM's QEMU hold the VF (as `device_add` does), detaching closes it.
struct SimHypervisor<'a> {
    host: &'a SimHost,
}

impl Hotplug for SimHypervisor<'_> {
    fn vm_facts(&self, vm: &VmRef) -> VmFacts {
        let attached = self
            .host
            .vms
            .get(&vm.name)
            .map(|s| {
                s.attached
                    .iter()
                    .map(|&(vf, _)| Attachment {
                        id: crate::connect::device_id(vf),
                        vf,
                        port: Some("rp1".into()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        VmFacts {
            vm: vm.clone(),
            libvirt: false,
            monitor: Ok("simulated".into()),
            attached,
            port: None,
        }
    }

    fn attach(&self, vm: &VmRef, vf: Bdf) -> Result<Attachment, HotplugError> {
        self.host
            .sim
            .open(
                vf,
                HolderInfo {
                    pid: vm.pid,
                    comm: "qemu-system-x86".into(),
                    vm: Some(vm.name.clone()),
                },
            )
            .map_err(|e| HotplugError {
                message: e.to_string(),
                outcome_unknown: false,
            })?;
        Ok(Attachment {
            id: crate::connect::device_id(vf),
            vf,
            port: Some("rp1".into()),
        })
    }

    fn detach(&self, vm: &VmRef, vf: Bdf) -> Result<(), HotplugError> {
        self.host.sim.close(vf, vm.pid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Readiness;

    const PF: &str = "0000:01:00.0";

    fn host(vms: &[&str]) -> SimHost {
        let policy = Policy::parse(crate::policy::SAMPLE, "sample.toml".as_ref()).unwrap();
        let cfg = HostConfig {
            pf: PF.parse().unwrap(),
            total_vfs: 4,
            latencies: Latencies::default(),
            hotplug: false,
        };
        let names: Vec<String> = vms.iter().map(|s| (*s).to_owned()).collect();
        SimHost::new(cfg, policy, &names)
    }

    fn want(vm: &str, n: u32) -> Vec<(String, u32)> {
        vec![(vm.to_owned(), n)]
    }

    #[test]
    fn onsets_find_a_ready_vf_a_parked_one_or_none() {
        let mut h = host(&["db-1", "web-1"]);
        let pf: Bdf = PF.parse().unwrap();
        // No VF yet: a shortfall, served once VFs exist.
        let s = h.demand(0.0, &want("web-1", 1)).unwrap();
        assert_eq!(s.onsets[0].outcome, OnsetOutcome::Shortfall);
        assert_eq!(h.pending(), 1);
        let out = h.apply(0.0, Action::SetVfs { pf, count: 2 }).unwrap();
        assert_eq!(out.from, Some(0));
        let st = h.state(0.0).unwrap();
        assert_eq!(st.pfs[0].num_vfs, 2);
        assert_eq!(st.pfs[0].last_change.map(|c| c.from), Some(0));
        // Created VFs are in D0 (no driver) but not ready before the creation latency.
        let s = h.demand(0.1, &want("web-1", 1)).unwrap();
        assert!(s.onsets.is_empty() && s.served == vec![0.0]);
        assert_eq!(h.held_by("web-1"), 1);
        // Park the other VF; the next onset wakes it (the VM waits).
        let vf2: Bdf = "0000:01:00.2".parse().unwrap();
        h.apply(10.0, Action::Park { bdf: vf2 }).unwrap();
        let st = h.state(10.0).unwrap();
        let d = st.pfs[0].vfs.iter().find(|v| v.bdf == vf2).unwrap();
        assert_eq!(d.readiness(), Readiness::Asleep);
        assert_eq!(d.power_since, Some(10.0));
        assert_eq!(h.slots(), (vec![SlotState::Held, SlotState::IdleParked], 2));
        let s = h.demand(20.0, &want("db-1", 1)).unwrap();
        assert_eq!(
            s.onsets[0].outcome,
            OnsetOutcome::Woken {
                wait_s: Latencies::default().wake_s
            }
        );
        // db-1 releases it; under power/control=auto it suspends by itself.
        h.demand(30.0, &want("db-1", 0)).unwrap();
        let st = h.state(30.0).unwrap();
        let d = st.pfs[0].vfs.iter().find(|v| v.bdf == vf2).unwrap();
        assert_eq!(
            (d.power.clone(), d.idle_since),
            (PowerState::D3Hot, Some(30.0))
        );
        // A woken VF is ready after the wake latency.
        h.apply(40.0, Action::Wake { bdf: vf2 }).unwrap();
        let s = h.demand(40.05, &want("db-1", 1)).unwrap();
        assert!(matches!(s.onsets[0].outcome, OnsetOutcome::Woken { wait_s } if wait_s > 0.0));
        h.demand(50.0, &want("db-1", 0)).unwrap();
        let s = h.demand(60.0, &want("db-1", 1)).unwrap();
        assert_eq!(
            s.onsets[0].outcome,
            OnsetOutcome::Ready,
            "control=on kept it awake"
        );
    }

    #[test]
    fn the_executor_refuses_a_resize_under_a_held_vf() {
        let mut h = host(&["web-1"]);
        let pf: Bdf = PF.parse().unwrap();
        h.apply(0.0, Action::SetVfs { pf, count: 1 }).unwrap();
        h.demand(10.0, &want("web-1", 1)).unwrap();
        let err = h.apply(20.0, Action::SetVfs { pf, count: 3 }).unwrap_err();
        assert!(matches!(err, ExecuteError::Refused { .. }), "{err}");
        // Demand beyond the pool waits.
        let s = h.demand(30.0, &want("web-1", 3)).unwrap();
        assert_eq!(s.onsets.len(), 2);
        assert!(
            s.onsets
                .iter()
                .all(|o| o.outcome == OnsetOutcome::Shortfall)
        );
        assert_eq!(h.pending(), 2);
        h.demand(40.0, &want("web-1", 2)).unwrap();
        assert_eq!(h.pending(), 1, "lower demand drops waiting units first");
        // With every VF the PF supports held, a shortfall is at capacity.
        h.demand(50.0, &want("web-1", 0)).unwrap();
        h.apply(50.0, Action::SetVfs { pf, count: 4 }).unwrap();
        let s = h.demand(60.0, &want("web-1", 5)).unwrap();
        let outcomes: Vec<&OnsetOutcome> = s.onsets.iter().map(|o| &o.outcome).collect();
        assert_eq!(outcomes.len(), 5);
        assert_eq!(outcomes[4], &OnsetOutcome::AtCapacity, "{outcomes:?}");
        assert!(!outcomes[..4].contains(&&OnsetOutcome::AtCapacity));
        assert!(matches!(
            h.demand(50.0, &want("nobody", 1)),
            Err(ReplayError::UnknownVm { .. })
        ));
    }
}
