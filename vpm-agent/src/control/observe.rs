//! Assembling the scheduler's [`HostState`] from a [`PciBackend`] each tick,
//! with the times the scheduler's dwell rules need (since when a device is in
//! its power state, since when it is idle, when a pool last changed size),
//! remembered across ticks by a [`Tracker`].

use std::collections::{BTreeMap, BTreeSet};

use crate::hal::{Bdf, HalError, PciBackend, PciFunction, PowerControl, PowerState};
use crate::policy::{Candidate, Policy};
use crate::scheduler::state::{HeldPeak, POOL_MEMORY_S};
use crate::scheduler::{DeviceState, DeviceUse, HostState, PfState, VfCountChange, VmState};

#[derive(Debug, Clone)]
struct Seen {
    power: PowerState,
    control: Option<PowerControl>,
    power_since: Option<f64>,
    free: bool,
    idle_since: Option<f64>,
}

/// What vpm remembers of the devices between ticks.
#[derive(Debug, Default)]
pub struct Tracker {
    devices: BTreeMap<Bdf, Seen>,
    pools: BTreeMap<Bdf, (u32, Option<VfCountChange>)>,
    held: BTreeMap<(Bdf, String), HeldPeak>,
    /// PFs whose VFs were re-created since the last observation: their
    /// VFs' clocks start over (same addresses, new devices).
    recreated: BTreeSet<Bdf>,
}

impl Tracker {
    /// A tracker that has seen nothing (first observations count as "long ago").
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that vpm itself changed `pf`'s VF count at `at` (the next
    /// observation would see it too; this keeps the time exact).
    pub fn pool_changed(&mut self, pf: Bdf, from: u32, to: u32, at: f64) {
        self.pools
            .insert(pf, (to, Some(VfCountChange { at, from })));
        self.recreated.insert(pf);
    }

    /// The device `f` as the scheduler sees it; `born` is when it appeared,
    /// if known (a VF of a resize vpm saw), else its first sight counts as
    /// long ago. Its power clock restarts when the power state or
    /// `power/control` changes (a park can leave a device in D0: no PM
    /// capability, `disable_idle_d3`).
    fn device(
        &mut self,
        now: f64,
        f: &PciFunction,
        user: DeviceUse,
        born: Option<f64>,
    ) -> DeviceState {
        let power = f
            .power_state
            .clone()
            .unwrap_or_else(|| PowerState::Unknown("absent".into()));
        let free = !user.is_held();
        let seen = match self.devices.get(&f.bdf) {
            None => Seen {
                power: power.clone(),
                control: f.power_control,
                power_since: born,
                free,
                idle_since: None,
            },
            Some(prev) => Seen {
                power: power.clone(),
                control: f.power_control,
                power_since: if prev.power == power && prev.control == f.power_control {
                    prev.power_since
                } else {
                    Some(now)
                },
                free,
                idle_since: match (prev.free, free) {
                    (true, true) => prev.idle_since,
                    (false, true) => Some(now),
                    _ => None,
                },
            },
        };
        let state = DeviceState {
            bdf: f.bdf,
            vendor: f.vendor,
            device: f.device,
            driver: f.driver.clone(),
            user,
            power,
            control: f.power_control,
            power_since: seen.power_since,
            idle_since: seen.idle_since,
            wake_latency_s: None,
        };
        self.devices.insert(f.bdf, seen);
        state
    }

    /// The sum over this PF's users (VMs, other processes) of the most VFs
    /// each held at once within [`POOL_MEMORY_S`]: the peak the pool is sized
    /// for (users that overlapped once may overlap again).
    fn peak_held(&mut self, now: f64, pf: Bdf, vfs: &[DeviceState]) -> u32 {
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        for v in vfs.iter().filter(|v| v.user.is_held()) {
            let user = match &v.user {
                DeviceUse::Vm(n) => format!("vm:{n}"),
                DeviceUse::Process(p) => format!("process:{p}"),
                DeviceUse::Host(h) => format!("host:{h}"),
                DeviceUse::Free => continue,
            };
            *counts.entry(user).or_default() += 1;
        }
        for (user, n) in counts {
            self.held.entry((pf, user)).or_default().observe(now, n);
        }
        // Users whose peaks aged out are forgotten (bounded memory).
        self.held.retain(|_, p| p.peak(now, POOL_MEMORY_S) > 0);
        self.held
            .iter()
            .filter(|((b, _), _)| *b == pf)
            .map(|(_, p)| p.peak(now, POOL_MEMORY_S))
            .fold(0u32, u32::saturating_add)
    }

    /// The host as the scheduler sees it: the PFs and devices the policy
    /// allows (and PFs with an allowed VF), who uses them, and the running
    /// `vms`.
    pub fn observe(
        &mut self,
        now: f64,
        backend: &dyn PciBackend,
        policy: &Policy,
        vms: &[String],
    ) -> Result<HostState, HalError> {
        let mut host = HostState {
            vms: vms
                .iter()
                .map(|name| VmState::named(name.clone()))
                .collect(),
            ..HostState::default()
        };
        for bdf in backend.functions()? {
            let f = match backend.function(bdf) {
                Ok(f) => f,
                // Gone between the listing and the read (a VF being removed).
                Err(HalError::NoDevice { .. }) => continue,
                Err(e) => return Err(e),
            };
            // VFs are seen through their PF (skipped below).
            let candidate = Candidate {
                bdf,
                vendor: f.vendor,
                device: f.device,
                physfn: None,
            };
            // A PF counts when it or one of its VFs is allowed (a policy may
            // hand vpm single VFs of a PF it must not resize).
            let vf_allowed = || {
                f.virtfns.iter().any(|(_, vf)| {
                    backend.function(*vf).is_ok_and(|v| {
                        policy.devices.allows(&Candidate {
                            bdf: *vf,
                            vendor: v.vendor,
                            device: v.device,
                            physfn: Some(crate::policy::Pf {
                                bdf,
                                vendor: f.vendor,
                                device: f.device,
                            }),
                        })
                    })
                })
            };
            if f.physfn.is_some() || !(policy.devices.allows(&candidate) || vf_allowed()) {
                continue;
            }
            match &f.sriov {
                Some(sriov) => {
                    let (last_change, count_changed) = match self.pools.get(&bdf) {
                        Some((n, change)) if *n == sriov.num_vfs => (*change, false),
                        Some((n, _)) => (Some(VfCountChange { at: now, from: *n }), true),
                        None => (None, false),
                    };
                    // Every count change goes through 0: the VFs now are new
                    // devices, even at addresses seen before. (`|`: the mark
                    // vpm left is cleared either way.)
                    if self.recreated.remove(&bdf) | count_changed {
                        for (_, vf) in &f.virtfns {
                            self.devices.remove(vf);
                        }
                    }
                    // VFs first seen after a resize vpm saw were born then
                    // (their awake dwell counts from it).
                    let born = last_change.map(|c| c.at);
                    let mut vfs = Vec::new();
                    for (_, vf) in &f.virtfns {
                        let Ok(vf_f) = backend.function(*vf) else {
                            continue;
                        };
                        let user = user_of(backend, &vf_f)?;
                        vfs.push(self.device(now, &vf_f, user, born));
                    }
                    self.pools.insert(bdf, (sriov.num_vfs, last_change));
                    let peak_held = self.peak_held(now, bdf, &vfs);
                    host.pfs.push(PfState {
                        bdf,
                        vendor: f.vendor,
                        device: f.device,
                        total_vfs: sriov.total_vfs,
                        num_vfs: sriov.num_vfs,
                        vfs,
                        last_change,
                        peak_held,
                    });
                }
                None => {
                    let user = user_of(backend, &f)?;
                    let state = self.device(now, &f, user, None);
                    host.devices.push(state);
                }
            }
        }
        Ok(host)
    }
}

/// Who uses `f`: a VM (or another process) through VFIO, the host, or nobody.
fn user_of(backend: &dyn PciBackend, f: &PciFunction) -> Result<DeviceUse, HalError> {
    if let Some(h) = backend.holders(f)?.into_iter().next() {
        return Ok(match h.vm {
            Some(vm) => DeviceUse::Vm(vm),
            None => DeviceUse::Process(format!("{} (pid {})", h.comm, h.pid)),
        });
    }
    let uses = backend.host_use(f.bdf)?;
    if let Some(u) = uses.first() {
        return Ok(DeviceUse::Host(format!("{u:?}")));
    }
    Ok(DeviceUse::Free)
}

/// The `vfs:<pf>` gauges of a tick: for every VM in `vms` and every managed
/// PF, how many of its VFs the VM holds (0 included, so the series are dense).
pub fn vf_usage(host: &HostState, vms: &[(String, u32)]) -> Vec<(String, u32, String, f64)> {
    let mut out = Vec::new();
    for pf in &host.pfs {
        let resource = crate::scheduler::Resource::Vfs(pf.bdf).name();
        for (vm, pid) in vms {
            let held = pf
                .vfs
                .iter()
                .filter(|d| d.user.vm() == Some(vm.as_str()))
                .count();
            out.push((vm.clone(), *pid, resource.clone(), held as f64));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hal::sim::SimPci;
    use crate::hal::{HolderInfo, PowerControl};

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn times_are_tracked_across_ticks() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        sim.add_pf(bdf("0000:02:00.0"), 4, Some("nvme")); // not allowed
        let policy =
            Policy::parse("[devices]\nallow = [\"0000:01:00.0\"]\n", "t".as_ref()).unwrap();
        let vms = vec!["web".to_owned()];
        let mut t = Tracker::new();
        let h = t.observe(100.0, &sim, &policy, &vms).unwrap();
        assert_eq!(h.pfs.len(), 1, "only the allowed PF");
        assert_eq!(h.pfs[0].last_change, None, "first sight: long ago");

        sim.set_sriov_numvfs(pf, 2, Duration::from_secs(1)).unwrap();
        let vf = bdf("0000:01:00.1");
        sim.bind_driver(vf, "vfio-pci", Duration::from_secs(1))
            .unwrap();
        let h = t.observe(110.0, &sim, &policy, &vms).unwrap();
        assert_eq!(
            h.pfs[0].last_change,
            Some(VfCountChange { at: 110.0, from: 0 })
        );
        // Created by the resize seen at 110: their clock starts then.
        let d = &h.pfs[0].vfs[0];
        assert_eq!(
            (d.power.clone(), d.power_since, d.idle_since),
            (PowerState::D3Hot, Some(110.0), None)
        );

        sim.open(
            vf,
            HolderInfo {
                pid: 5,
                comm: "qemu".into(),
                vm: Some("web".into()),
            },
        )
        .unwrap();
        let h = t.observe(120.0, &sim, &policy, &vms).unwrap();
        let d = &h.pfs[0].vfs[0];
        assert_eq!(d.user, DeviceUse::Vm("web".into()));
        assert_eq!(
            (d.power.clone(), d.power_since, d.idle_since),
            (PowerState::D0, Some(120.0), None)
        );
        assert_eq!(
            h.pfs[0].last_change,
            Some(VfCountChange { at: 110.0, from: 0 }),
            "kept"
        );
        let usage = vf_usage(&h, &[("web".into(), 5), ("db".into(), 6)]);
        assert_eq!(usage[0], ("web".into(), 5, "vfs:0000:01:00.0".into(), 1.0));
        assert_eq!(usage[1].3, 0.0);

        sim.close(vf, 5);
        sim.set_power_control(vf, PowerControl::Auto, Duration::from_secs(1))
            .unwrap();
        let h = t.observe(130.0, &sim, &policy, &vms).unwrap();
        let d = &h.pfs[0].vfs[0];
        assert_eq!((d.power_since, d.idle_since), (Some(130.0), Some(130.0)));

        // Regrown (2 → 0 → 2 by vpm at 135): the same addresses, new VFs,
        // whose clocks start at the resize.
        t.pool_changed(pf, 2, 0, 134.0);
        sim.set_sriov_numvfs(pf, 0, Duration::from_secs(1)).unwrap();
        sim.set_sriov_numvfs(pf, 2, Duration::from_secs(1)).unwrap();
        t.pool_changed(pf, 0, 2, 135.0);
        let h = t.observe(136.0, &sim, &policy, &vms).unwrap();
        for d in &h.pfs[0].vfs {
            assert_eq!((d.power_since, d.idle_since), (Some(135.0), None), "{d:?}");
        }

        // A control change that leaves the power state (D0 here: no
        // vfio-pci) restarts the clock too.
        let other = bdf("0000:01:00.2");
        let before = t.observe(140.0, &sim, &policy, &vms).unwrap();
        let since = |h: &HostState| {
            h.pfs[0]
                .vfs
                .iter()
                .find(|v| v.bdf == other)
                .unwrap()
                .power_since
        };
        assert_eq!(since(&before), Some(135.0));
        sim.set_power_control(other, PowerControl::On, Duration::from_secs(1))
            .unwrap();
        let after = t.observe(150.0, &sim, &policy, &vms).unwrap();
        let d = after.pfs[0].vfs.iter().find(|v| v.bdf == other).unwrap();
        assert_eq!(
            (d.power.clone(), d.power_since),
            (PowerState::D0, Some(150.0))
        );
    }
}
