//! The baselines of the hot-plug replay ([`HostConfig::hotplug`](super::HostConfig)):
//! attaching when demand appears, and attaching everything up front.
//! vpm itself is [`Vpm::hotplug`](super::Vpm::hotplug).

use std::collections::BTreeSet;

use super::ReplayError;
use super::controller::{Controller, Decision, find_pf};
use crate::executor::guard::VFIO_DRIVER;
use crate::executor::{Action, VmRef};
use crate::hal::Bdf;
use crate::policy::Policy;
use crate::scheduler::{DeviceState, HostState, PfState, Readiness, VmState};

fn vm_ref(vm: &VmState) -> VmRef {
    VmRef {
        name: vm.name.clone(),
        pid: vm.pid,
    }
}

fn attached(vm: &VmState) -> Vec<Bdf> {
    vm.hotplug
        .as_ref()
        .map(|h| h.attached.iter().map(|a| a.vf).collect())
        .unwrap_or_default()
}

/// The VMs, highest class priority first, then by name.
fn by_priority<'a>(host: &'a HostState, policy: &Policy) -> Vec<&'a VmState> {
    let mut vms: Vec<&VmState> = host.vms.iter().collect();
    vms.sort_by(|a, b| {
        let pa = policy.class_of(&a.name).class.priority;
        let pb = policy.class_of(&b.name).class.priority;
        pb.cmp(&pa).then_with(|| a.name.cmp(&b.name))
    });
    vms
}

/// The pool at `sriov_totalvfs` (created while nothing is held), and every
/// free VF bound to vfio-pci (a park), so it can be attached. `None` when
/// the pool is ready.
fn ready_pool(pf: &PfState, used: &mut BTreeSet<Bdf>) -> Option<Vec<Decision>> {
    if pf.num_vfs < pf.total_vfs && pf.held_vfs().next().is_none() {
        return Some(vec![
            Action::SetVfs {
                pf: pf.bdf,
                count: pf.total_vfs,
            }
            .into(),
        ]);
    }
    let binds: Vec<Decision> = pf
        .vfs
        .iter()
        .filter(|v| !v.user.is_held() && v.driver.as_deref() != Some(VFIO_DRIVER))
        .filter(|v| v.readiness() == Readiness::Awake)
        .map(|v| {
            used.insert(v.bdf);
            Action::Park { bdf: v.bdf }.into()
        })
        .collect();
    (!binds.is_empty()).then_some(binds)
}

fn free_bound(pf: &PfState) -> Vec<&DeviceState> {
    pf.vfs
        .iter()
        .filter(|v| !v.user.is_held() && v.driver.as_deref() == Some(VFIO_DRIVER))
        .collect()
}

/// Attaches when demand appears: a VM using more VFs than it has attached
/// gets free ones (higher class priority first); a VM using none gives all
/// back at once (unless its class has `detach = false`); free VFs are parked. The onset that triggers an attach
/// never finds its VF connected.
#[derive(Debug, Clone)]
pub struct ReactiveAttach {
    pf: Bdf,
    policy: Policy,
}

impl ReactiveAttach {
    /// For the PF `pf`; `policy` gives the classes (priority, `max_attached`).
    pub fn new(pf: Bdf, policy: Policy) -> Self {
        Self { pf, policy }
    }
}

impl Controller for ReactiveAttach {
    fn name(&self) -> &str {
        "reactive"
    }

    fn decide(
        &mut self,
        _now: f64,
        host: &HostState,
        demand: &[(String, u32)],
    ) -> Result<Vec<Decision>, ReplayError> {
        let pf = find_pf(host, self.pf)?;
        let mut used = BTreeSet::new();
        let mut out = ready_pool(pf, &mut used).unwrap_or_default();
        if out
            .iter()
            .any(|d| matches!(d.action, Action::SetVfs { .. }))
        {
            return Ok(out);
        }
        let mut free = free_bound(pf).into_iter().map(|v| v.bdf);
        for vm in by_priority(host, &self.policy) {
            let want = demand
                .iter()
                .find(|(n, _)| *n == vm.name)
                .map_or(0, |(_, n)| *n)
                .min(self.policy.class_of(&vm.name).class.max_attached);
            let have = attached(vm);
            // A class that never gives a VF back keeps it (`detach = false`).
            if want == 0 && self.policy.class_of(&vm.name).class.detach {
                for vf in have {
                    used.insert(vf);
                    out.push(Action::Detach { vm: vm_ref(vm), vf }.into());
                }
                continue;
            }
            for _ in have.len()..want as usize {
                let Some(vf) = free.find(|b| !used.contains(b)) else {
                    break;
                };
                used.insert(vf);
                out.push(Action::Attach { vm: vm_ref(vm), vf }.into());
            }
        }
        out.extend(
            pf.vfs
                .iter()
                .filter(|v| !v.user.is_held() && !used.contains(&v.bdf))
                .filter(|v| v.readiness() == Readiness::Awake)
                .map(|v| Action::Park { bdf: v.bdf }.into()),
        );
        Ok(out)
    }
}

/// Everything connected up front: every VM gets its class's `max_attached`
/// VFs as soon as there are free ones, one per VM at a time (higher
/// priority first in each round, so the VFs spread before any VM gets a
/// second), and keeps them.
#[derive(Debug, Clone)]
pub struct StaticAttach {
    pf: Bdf,
    policy: Policy,
}

impl StaticAttach {
    /// For the PF `pf`; `policy` gives the classes.
    pub fn new(pf: Bdf, policy: Policy) -> Self {
        Self { pf, policy }
    }
}

impl Controller for StaticAttach {
    fn name(&self) -> &str {
        "static"
    }

    fn decide(
        &mut self,
        _now: f64,
        host: &HostState,
        _demand: &[(String, u32)],
    ) -> Result<Vec<Decision>, ReplayError> {
        let pf = find_pf(host, self.pf)?;
        let mut used = BTreeSet::new();
        if let Some(d) = ready_pool(pf, &mut used) {
            return Ok(d);
        }
        let mut free = free_bound(pf).into_iter().map(|v| v.bdf);
        let mut out = Vec::new();
        let vms = by_priority(host, &self.policy);
        let max = |vm: &VmState| self.policy.class_of(&vm.name).class.max_attached as usize;
        let mut has: Vec<usize> = vms.iter().map(|vm| attached(vm).len()).collect();
        let most = vms.iter().map(|vm| max(vm)).max().unwrap_or(0);
        // Round by round: every VM's first VF before anyone's second.
        for round in 1..=most {
            for (vm, n) in vms.iter().zip(&mut has) {
                if *n >= round || round > max(vm) {
                    continue;
                }
                let Some(vf) = free.next() else {
                    return Ok(out);
                };
                *n += 1;
                out.push(Action::Attach { vm: vm_ref(vm), vf }.into());
            }
        }
        Ok(out)
    }
}
