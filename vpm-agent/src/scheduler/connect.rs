//! Hot-plug: which VMs get a VF attached ahead of their demand, which give
//! one back, and which VF moves under contention.
//!
//! A VM takes part when its class opts in (`hotplug = true`), vpm can reach
//! its monitor ([`VmState::hotplug`] is known) and the policy names the
//! resource that drives it (`[hotplug] demand`). With `D` its forecast of
//! that resource, a VM *wants* `vf_units(D.upper / per_vf)` VFs, at most
//! `max_attached` more than the VFs it has that vpm did not plug (its
//! command line's serve its demand, but do not count against the cap):
//!
//! - **attach** when the want within the wake window exceeds what it has:
//!   a free VF of an allowed PF, bound to vfio-pci (the attach wakes it
//!   first); an unbound free VF is parked first (binding it; under the
//!   park rules: awake for `[dwell] awake_s`), and attached next tick;
//! - **detach** a VF vpm plugged when the want within the keep window
//!   (and at least `[hotplug] attached_s`) is below what it has, once the VF
//!   has been attached `attached_s`, and never from a class with
//!   `detach = false` (with `[hotplug] give_back = "contention"` a VF is not
//!   given back that way: it stays with the VM until a move takes it);
//! - **move** under contention: with no free VF, a VF goes from the VM with
//!   the weakest claim (lower priority, or equal priority and lower predicted
//!   demand), or from a VM predicted not to need it, to the stronger one:
//!   detached this tick, attached the next, so it is never attached to two
//!   VMs. A move out of a VM within its `attached_s` needs a receiving class
//!   with `preempt_dwell`.
//!
//! PFs being resized this tick are left alone, and so are VMs that share a
//! name (forecasts are per name): the plan says so instead.

use std::collections::BTreeSet;

use super::context::{Ctx, Proposal, Rank, num, secs, vfs, vm_label};
use super::forecasts::Peak;
use super::output::Deferred;
use super::pool::vf_units;
use super::state::{DeviceState, HostState, Readiness, VmState};
use crate::executor::guard::VFIO_DRIVER;
use crate::executor::{Action, VmRef};
use crate::hal::Bdf;
use crate::policy::{ClassRef, GiveBack};

/// One hot-plug VM's claim.
struct Claim<'a> {
    vm: &'a VmState,
    class: ClassRef<'a>,
    /// Peak of the demand resource within the wake window.
    near: Peak,
    /// Peak within the keep window.
    far: Peak,
    /// VFs wanted within the wake window.
    want: u32,
    /// VFs wanted within the keep window.
    keep: u32,
    /// VFs attached now (by vpm or not).
    have: u32,
}

impl Claim<'_> {
    fn strength(&self) -> (u32, f64) {
        (self.class.class.priority, self.near.upper)
    }

    fn label(&self) -> String {
        vm_label(&self.vm.name, self.class)
    }

    fn vm_ref(&self) -> VmRef {
        VmRef {
            name: self.vm.name.clone(),
            pid: self.vm.pid,
        }
    }
}

/// Whether vpm hot-plugs VFs into `vm`: the policy names the resource that
/// drives hot-plug, the VM's class opts in, vpm can reach its monitor, and
/// no other VM carries its name. Such a VM opens no free VF itself: what it
/// holds is what vpm attached.
pub(crate) fn takes_part(ctx: &Ctx<'_>, vm: &VmState) -> bool {
    ctx.policy.hotplug.demand.is_some()
        && ctx.class(&vm.name).class.hotplug
        && vm.hotplug.is_some()
        && !ctx.shared_names.contains(vm.name.as_str())
}

/// `vm`'s hot-plug want within `window`: the peak of its demand resource,
/// in VFs, capped by its class. `None` when it does not take part (its class
/// does not opt in, vpm cannot reach its monitor, or another VM carries its
/// name) or has no forecast of the resource.
pub(crate) fn wanted(ctx: &Ctx<'_>, vm: &VmState, window: f64) -> Option<(u32, Peak)> {
    let settings = &ctx.policy.hotplug;
    let resource = settings.demand.as_deref()?;
    if !takes_part(ctx, vm) {
        return None;
    }
    let class = ctx.class(&vm.name);
    let peak = ctx
        .vm_forecasts(&vm.name)?
        .resource(resource)?
        .peak(window)?;
    let not_vpms = vm
        .hotplug
        .as_ref()
        .map_or(0, |h| h.attached.iter().filter(|a| !a.by_vpm).count());
    let cap = class
        .class
        .max_attached
        .saturating_add(u32::try_from(not_vpms).unwrap_or(u32::MAX));
    let units = vf_units(peak.upper / settings.per_vf).min(cap);
    Some((units, peak))
}

/// The window within which predicted demand gets a VF attached.
pub(crate) fn attach_window(ctx: &Ctx<'_>) -> f64 {
    ctx.wake_window(ctx.wake_lead(None))
}

fn keep_window(ctx: &Ctx<'_>) -> f64 {
    ctx.keep_window(ctx.wake_lead(None))
        .max(ctx.policy.hotplug.attached_s)
}

/// VFs attached to `vm` now (by vpm or not).
fn attached(vm: &VmState) -> u32 {
    vm.hotplug
        .as_ref()
        .map_or(0, |h| u32::try_from(h.attached.len()).unwrap_or(u32::MAX))
}

/// How many more VFs the hot-plug VMs are predicted to want attached
/// within the keep window than they have.
pub(crate) fn keep_shortfall(ctx: &Ctx<'_>) -> u32 {
    let window = keep_window(ctx);
    ctx.vm_states
        .values()
        .filter_map(|vm| {
            let (keep, _) = wanted(ctx, vm, window)?;
            Some(keep.saturating_sub(attached(vm)))
        })
        .fold(0u32, u32::saturating_add)
}

/// Hot-plug proposals and what had to wait.
pub(crate) fn plan(
    ctx: &Ctx<'_>,
    host: &HostState,
    resizing: &BTreeSet<Bdf>,
    out: &mut Vec<Proposal>,
    deferred: &mut Vec<Deferred>,
) {
    let Some(resource) = ctx.policy.hotplug.demand.as_deref() else {
        return;
    };
    let any_vf = host
        .pfs
        .iter()
        .any(|p| p.vfs.iter().any(|v| ctx.allowed(&v.candidate(Some(p)))));
    if ctx.hotplug_pf.is_none() && !any_vf {
        // No PF or VF vpm may act on: nothing to attach, nothing to report.
        return;
    }
    let per_vf = ctx.policy.hotplug.per_vf;
    // vpm acts only on what the allow-list allows: a VF it attached before
    // the list changed stays where it is.
    let may_detach = |vf: Bdf| {
        host.pfs.iter().any(|pf| {
            pf.vfs
                .iter()
                .any(|v| v.bdf == vf && ctx.allowed(&v.candidate(Some(pf))))
        })
    };
    let dwell = ctx.policy.hotplug.attached_s;
    let (near_w, far_w) = (attach_window(ctx), keep_window(ctx));
    // Forecasts are per VM name: VMs that share a name share one forecast,
    // which is right for none of them, so vpm plugs nothing into them and
    // takes nothing from them, and says so.
    let mut vms: Vec<&VmState> = host.vms.iter().collect();
    vms.sort_by(|a, b| a.name.cmp(&b.name).then(a.pid.cmp(&b.pid)));
    for &name in &ctx.shared_names {
        let class = ctx.class(name);
        if !class.class.hotplug {
            continue;
        }
        let pids: Vec<u32> = vms
            .iter()
            .filter(|v| v.name == name)
            .map(|v| v.pid)
            .collect();
        deferred.push(Deferred {
            action: None,
            reason: format!(
                "{} is the name of {} VMs (pids {pids:?}): vpm forecasts per VM name, so it \
                 plugs no VF into them and takes none from them; give each VM its own name \
                 (QEMU -name)",
                vm_label(name, class),
                pids.len()
            ),
            vm: Some(name.to_owned()),
            priority: class.class.priority,
        });
    }
    vms.retain(|v| !ctx.shared_names.contains(v.name.as_str()));
    let mut claims: Vec<Claim<'_>> = vms
        .into_iter()
        .filter_map(|vm| {
            let (want, near) = wanted(ctx, vm, near_w)?;
            let (keep, far) = wanted(ctx, vm, far_w)?;
            let have = attached(vm);
            Some(Claim {
                vm,
                class: ctx.class(&vm.name),
                near,
                far,
                want,
                keep,
                have,
            })
        })
        .collect();
    // Strongest claim first: priority, then predicted demand, then name.
    claims.sort_by(|a, b| {
        b.class
            .class
            .priority
            .cmp(&a.class.class.priority)
            .then(b.near.upper.total_cmp(&a.near.upper))
            .then(a.vm.name.cmp(&b.vm.name))
    });
    let predicted = |c: &Claim<'_>, window: f64, peak: Peak, n: u32| {
        format!(
            "{} is predicted to want {} hot-plugged within {} ({resource} upper bound {}, \
             {} per VF)",
            c.label(),
            vfs(n),
            secs(window),
            num(peak.upper),
            num(per_vf)
        )
    };

    // VFs taken by a proposal this tick (one action per VF).
    let mut used: BTreeSet<Bdf> = BTreeSet::new();

    // Give back what will not be wanted (`give_back = "idle"`; with
    // "contention" only a move below takes a VF back).
    let give_back_idle = ctx.policy.hotplug.give_back == GiveBack::Idle;
    for c in &claims {
        let Some(hp) = &c.vm.hotplug else { continue };
        if !give_back_idle || c.keep >= c.have || c.want >= c.have || !c.class.class.detach {
            continue;
        }
        let surplus = c.have - c.keep.max(c.want);
        let mut mine: Vec<_> = hp
            .attached
            .iter()
            .filter(|a| a.by_vpm && ctx.settled(a.since, dwell) && may_detach(a.vf))
            .collect();
        mine.sort_by_key(|a| std::cmp::Reverse(a.vf));
        for a in mine.into_iter().take(surplus as usize) {
            used.insert(a.vf);
            out.push(Proposal {
                action: Action::Detach {
                    vm: c.vm_ref(),
                    vf: a.vf,
                },
                reason: format!(
                    "{}, and has {} attached; {} has been attached at least {} \
                     ([hotplug] attached_s)",
                    predicted(c, far_w, c.far, c.keep),
                    c.have,
                    a.vf,
                    secs(dwell)
                ),
                vm: None,
                priority: 0,
                rank: Rank::Detach,
                demand: 0.0,
                breaks_dwell: false,
            });
        }
    }

    // Free VFs, ready ones first: bound to vfio-pci and awake, then bound
    // and asleep, then unbound (parked first, which binds them).
    let mut free: Vec<(u8, &DeviceState)> = Vec::new();
    let mut pfs: Vec<_> = host.pfs.iter().collect();
    pfs.sort_by_key(|p| p.bdf);
    for pf in pfs {
        if resizing.contains(&pf.bdf) {
            continue;
        }
        for vf in &pf.vfs {
            if vf.user.is_held()
                || !ctx.allowed(&vf.candidate(Some(pf)))
                || vf.readiness() == Readiness::Unknown
            {
                continue;
            }
            let order = match (vf.driver.as_deref() == Some(VFIO_DRIVER), vf.readiness()) {
                (true, Readiness::Awake) => 0,
                (true, _) => 1,
                // Binding is a park, under the park's rules: awake, and
                // awake for at least [dwell] awake_s.
                (false, Readiness::Awake)
                    if ctx.settled(vf.power_since, ctx.policy.dwell.awake_s) =>
                {
                    2
                }
                (false, _) => continue,
            };
            free.push((order, vf));
        }
    }
    // Among asleep ones, those parked longer than [dwell] parked_s first:
    // the attach wakes its VF.
    free.sort_by_key(|(o, vf)| {
        (
            *o,
            !ctx.settled(vf.power_since, ctx.policy.dwell.parked_s),
            vf.bdf,
        )
    });
    let parked_s = ctx.policy.dwell.parked_s;
    // A bound VF asleep for less than [dwell] parked_s: the attach's wake
    // would cut its dwell short.
    let dwell_cut = |o: u8, vf: &DeviceState| o == 1 && !ctx.settled(vf.power_since, parked_s);

    for i in 0..claims.len() {
        let c = &claims[i];
        if c.want <= c.have {
            continue;
        }
        for _ in c.have..c.want {
            let why = format!(
                "{}, and has {} attached",
                predicted(c, near_w, c.near, c.want),
                c.have
            );
            let preempt = c.class.class.preempt_dwell;
            let pick = free
                .iter()
                .find(|(o, v)| !used.contains(&v.bdf) && (preempt || !dwell_cut(*o, v)));
            if let Some(&(o, vf)) = pick {
                used.insert(vf.bdf);
                let bound = vf.driver.as_deref() == Some(VFIO_DRIVER);
                let cut = dwell_cut(o, vf);
                out.push(Proposal {
                    action: if bound {
                        Action::Attach {
                            vm: c.vm_ref(),
                            vf: vf.bdf,
                        }
                    } else {
                        Action::Park { bdf: vf.bdf }
                    },
                    reason: if bound && cut {
                        format!(
                            "{why}: attach {} (woken first, parked less than {} ago: class {} \
                             has preempt_dwell)",
                            vf.bdf,
                            secs(parked_s),
                            c.class.name
                        )
                    } else if bound {
                        format!("{why}: attach {} (woken first)", vf.bdf)
                    } else {
                        format!(
                            "{why}: bind {} to {VFIO_DRIVER} (park) so it can be attached next",
                            vf.bdf
                        )
                    },
                    vm: Some(c.vm.name.clone()),
                    priority: c.class.class.priority,
                    rank: Rank::Attach,
                    demand: c.near.upper,
                    breaks_dwell: cut,
                });
                continue;
            }
            // Free VFs that only their park's dwell keeps: they wait, no VF
            // is taken from another VM for them.
            if let Some((_, vf)) = free.iter().find(|(_, v)| !used.contains(&v.bdf)) {
                deferred.push(Deferred {
                    action: Some(Action::Attach {
                        vm: c.vm_ref(),
                        vf: vf.bdf,
                    }),
                    reason: format!(
                        "{why}: {} was parked less than {} ago ([dwell] parked_s); attached once \
                         its dwell is over",
                        vf.bdf,
                        secs(parked_s)
                    ),
                    vm: Some(c.vm.name.clone()),
                    priority: c.class.class.priority,
                });
                continue;
            }
            // No free VF: the weakest claim that may give one up.
            let donor = claims
                .iter()
                .filter(|d| d.vm.name != c.vm.name && d.class.class.detach)
                .filter(|d| {
                    let (dp, du) = d.strength();
                    let (rp, ru) = c.strength();
                    // A weaker claim, or a VM predicted not to need what it
                    // has (kept by `give_back = "contention"`).
                    dp < rp || (dp == rp && du < ru) || (d.keep < d.have && d.want < d.have)
                })
                .filter_map(|d| {
                    let hp = d.vm.hotplug.as_ref()?;
                    let vf = hp
                        .attached
                        .iter()
                        .filter(|a| a.by_vpm && !used.contains(&a.vf) && may_detach(a.vf))
                        .find(|a| ctx.settled(a.since, dwell) || c.class.class.preempt_dwell)?;
                    Some((d, vf))
                })
                .min_by(|(a, _), (b, _)| {
                    let (ap, au) = a.strength();
                    let (bp, bu) = b.strength();
                    ap.cmp(&bp)
                        .then(au.total_cmp(&bu))
                        .then(a.vm.name.cmp(&b.vm.name))
                });
            match donor {
                Some((d, a)) => {
                    used.insert(a.vf);
                    let dwell_cut = !ctx.settled(a.since, dwell);
                    let reason = format!(
                        "{why}; no free VF: move {} from {} (predicted {resource} upper bound {}) \
                         to it{}: detached now, attached once free",
                        a.vf,
                        d.label(),
                        num(d.near.upper),
                        if dwell_cut {
                            format!(
                                ", within its {} attached_s (class {} has preempt_dwell)",
                                secs(dwell),
                                c.class.name
                            )
                        } else {
                            String::new()
                        }
                    );
                    out.push(Proposal {
                        action: Action::Detach {
                            vm: d.vm_ref(),
                            vf: a.vf,
                        },
                        reason: reason.clone(),
                        vm: Some(c.vm.name.clone()),
                        priority: c.class.class.priority,
                        rank: Rank::Move,
                        demand: c.near.upper,
                        breaks_dwell: dwell_cut,
                    });
                    deferred.push(Deferred {
                        action: Some(Action::Attach {
                            vm: c.vm_ref(),
                            vf: a.vf,
                        }),
                        reason: format!(
                            "waits for {} to be detached from {}: {reason}",
                            a.vf,
                            d.label()
                        ),
                        vm: Some(c.vm.name.clone()),
                        priority: c.class.class.priority,
                    });
                }
                None => deferred.push(Deferred {
                    action: None,
                    reason: format!(
                        "{why}: no free VF bound to {VFIO_DRIVER} on an allowed PF, and no VM \
                         with a weaker claim holds one vpm may take back"
                    ),
                    vm: Some(c.vm.name.clone()),
                    priority: c.class.class.priority,
                }),
            }
        }
    }
}
