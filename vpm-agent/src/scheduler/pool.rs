//! VF pools: how many VFs each VM will hold on a PF, and the PF's VF count.
//!
//! A VM's *need* on a PF within a window is its forecast peak (upper bound,
//! in whole VFs: see [`vf_units`]) clamped to its class's `min_vfs..=max_vfs`,
//! and never below what it holds now. A pool is sized to the sum of its VMs'
//! needs over the plan horizon (plus VFs held by processes that are not VMs),
//! at least what its users held at their peaks over the last day and
//! `[plan] pool_per_vm` for each VM that may use it, capped by
//! `sriov_totalvfs`. A VM that takes part in hot-plug (see
//! `connect`) needs, on the hot-plug PF, every VF its class may attach
//! (`max_attached`): attached VFs are held, so once VMs have theirs the
//! pool can seldom be resized. From a non-zero count every change passes
//! through 0 and destroys every VF, so the count changes only while no VF of
//! the PF is held; otherwise the pool keeps its size (its spares stay).

use super::context::{Ctx, Proposal, Rank, num, secs, vfs, vm_label};
use super::forecasts::Peak;
use super::output::Deferred;
use super::state::PfState;
use crate::executor::Action;
use crate::policy::ClassRef;

/// How far above a whole number an upper bound must be to count one more
/// VF: an upper bound of 1.2 is 1 VF, 1.21 is 2. A gauge of whole VFs has
/// whole quantiles; fractions are the model's smoothing.
pub const VF_ROUNDING_SLACK: f64 = 0.2;

/// An upper bound in whole VFs: `ceil(upper − VF_ROUNDING_SLACK)`, at least 0.
pub fn vf_units(upper: f64) -> u32 {
    // `as` saturates: huge bounds become u32::MAX, NaN becomes 0.
    (upper - VF_ROUNDING_SLACK).ceil().max(0.0) as u32
}

/// One VM's VF demand on one PF within a window.
#[derive(Debug, Clone)]
pub(crate) struct VfDemand<'a> {
    pub(crate) vm: &'a str,
    pub(crate) class: ClassRef<'a>,
    /// VFs of the PF it holds now.
    pub(crate) held: u32,
    /// Its forecast peak, if it has a forecast for the PF.
    pub(crate) peak: Option<Peak>,
    /// The VFs it needs: the forecast in whole VFs, clamped to its class,
    /// at least `held`.
    pub(crate) need: u32,
    /// The VFs it is predicted to use: the forecast in whole VFs, capped by
    /// its class's `max_vfs` but not raised to `min_vfs`, at least `held`.
    /// `min_vfs` keeps VFs created; only predicted use keeps them awake.
    pub(crate) use_need: u32,
}

impl VfDemand<'_> {
    /// VFs it needs beyond those it holds.
    pub(crate) fn extra(&self) -> u32 {
        self.need.saturating_sub(self.held)
    }

    /// The predicted upper bound (0 without a forecast), for ordering.
    pub(crate) fn upper(&self) -> f64 {
        self.peak.map_or(0.0, |p| p.upper)
    }

    /// Why it needs what it needs: `VM web-1 (burstable) is predicted to use
    /// 2 VFs of 0000:01:00.0 within 300 s (upper bound 1.8) and holds 1`.
    pub(crate) fn describe(&self, pf: &PfState, window: f64) -> String {
        let who = vm_label(self.vm, self.class);
        let mut s = match self.peak {
            Some(p) => format!(
                "{who} is predicted to use {} of {} within {} (upper bound {})",
                vfs(vf_units(p.upper)),
                pf.bdf,
                secs(window),
                num(p.upper)
            ),
            None => format!("{who} has no VF forecast for {}", pf.bdf),
        };
        let forecast = self.peak.map_or(0, |p| vf_units(p.upper));
        let c = self.class.class;
        if forecast < c.min_vfs {
            s.push_str(&format!(
                "; its class keeps at least {} ready (min_vfs)",
                vfs(c.min_vfs)
            ));
        }
        if let Some(max) = c.max_vfs
            && forecast > max
        {
            s.push_str(&format!(
                "; its class allows at most {} (max_vfs)",
                vfs(max)
            ));
        }
        s.push_str(&format!(" and holds {}", self.held));
        s
    }
}

/// The demands on `pf` within `window` of the running VMs that use it (hold
/// one of its VFs or have a forecast for it), highest class priority first,
/// then larger predicted upper bound, then name.
pub(crate) fn demands<'a>(ctx: &Ctx<'a>, pf: &PfState, window: f64) -> Vec<VfDemand<'a>> {
    let mut out: Vec<VfDemand<'a>> = ctx
        .vms
        .iter()
        .filter_map(|&vm| {
            let held = u32::try_from(pf.vfs.iter().filter(|v| v.user.vm() == Some(vm)).count())
                .unwrap_or(u32::MAX);
            let peak = ctx
                .vm_forecasts(vm)
                .and_then(|f| f.vfs.get(&pf.bdf))
                .and_then(|o| o.peak(window));
            // A VM vpm hot-plugs into opens no VF itself (its `vfs:` series
            // counts what vpm attached to it; an attach wakes its VF first).
            let state = ctx.vm_states.get(vm).copied();
            let takes_hotplug = state.is_some_and(|s| super::connect::takes_part(ctx, s));
            // Hot-plug demand is served from one PF's pool (`Ctx::hotplug_pf`),
            // sized for all a VM may be given (`max_attached`): VFs attached
            // to VMs are held, so the pool can seldom change once in use.
            let hotplug = state
                .filter(|_| takes_hotplug && ctx.hotplug_pf == Some(pf.bdf))
                .and_then(|s| super::connect::wanted(ctx, s, window))
                .map_or(0, |_| ctx.class(vm).class.max_attached);
            if held == 0 && peak.is_none() && hotplug == 0 {
                return None;
            }
            let class = ctx.class(vm);
            let forecast = peak.map_or(0, |p| vf_units(p.upper)).max(hotplug);
            let need = class.class.clamp_vfs(forecast).max(held);
            // What the VM will open itself.
            let own = if takes_hotplug { 0 } else { forecast };
            let use_need = class.class.max_vfs.map_or(own, |m| own.min(m)).max(held);
            Some(VfDemand {
                vm,
                class,
                held,
                peak,
                need,
                use_need,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        b.class
            .class
            .priority
            .cmp(&a.class.class.priority)
            .then(b.upper().total_cmp(&a.upper()))
            .then(a.vm.cmp(b.vm))
    });
    out
}

/// VFs of `pf` held by processes that are not VMs, or used by the host.
fn held_by_others(pf: &PfState) -> u32 {
    let n = pf.held_vfs().filter(|v| v.user.vm().is_none()).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Hands `available` VFs to `demands` in their order (each gets up to its
/// extra need); returns each VM's grant, in the same order.
pub(crate) fn grant(demands: &[VfDemand<'_>], mut available: u32) -> Vec<u32> {
    demands
        .iter()
        .map(|d| {
            let g = d.extra().min(available);
            available -= g;
            g
        })
        .collect()
}

/// What the pool rule wants for one PF.
#[derive(Debug, Default)]
pub(crate) struct PoolOutcome {
    pub(crate) proposals: Vec<Proposal>,
    pub(crate) deferred: Vec<Deferred>,
}

impl PoolOutcome {
    /// Whether a VF count change is proposed (the PF's VFs are then left
    /// alone this tick: the change destroys them).
    pub(crate) fn resizes(&self) -> bool {
        self.proposals
            .iter()
            .any(|p| matches!(p.action, Action::SetVfs { .. }))
    }
}

/// The pool rule for `pf` (which the allow-list must allow).
pub(crate) fn size_pool(ctx: &Ctx<'_>, pf: &PfState) -> PoolOutcome {
    let mut out = PoolOutcome::default();
    let horizon = ctx.horizon();
    let demands = demands(ctx, pf, horizon);
    let others = held_by_others(pf);
    let total_need = demands
        .iter()
        .fold(u64::from(others), |acc, d| acc + u64::from(d.need));
    let forecast_target =
        u32::try_from(total_need.min(u64::from(pf.total_vfs))).unwrap_or(pf.total_vfs);
    // Size for the peak: never below what its users held at their peaks
    // lately, nor below `pool_per_vm` for each VM that may use it (a pool can
    // only grow while none of its VFs is held).
    let floor = pf.peak_held.min(pf.total_vfs);
    let users = u32::try_from(demands.len()).unwrap_or(u32::MAX);
    let per_vm = users
        .saturating_mul(ctx.policy.plan.pool_per_vm)
        .min(pf.total_vfs);
    let target = forecast_target.max(floor).max(per_vm);
    let peak_note = if floor > forecast_target.max(per_vm) {
        format!(
            "; it keeps the {} its users held at their peaks within the last {} (it can \
             grow only while no VF is held)",
            vfs(floor),
            secs(super::state::POOL_MEMORY_S)
        )
    } else if per_vm > forecast_target {
        format!(
            "; it keeps {} for each of the {users} VMs that may use it ([plan] pool_per_vm; \
             it can grow only while no VF is held)",
            vfs(ctx.policy.plan.pool_per_vm)
        )
    } else {
        String::new()
    };
    let cur = pf.num_vfs;

    // Contention: more demand than the PF has VFs. Higher priority and
    // larger predicted demand are served first; the others are told.
    if total_need > u64::from(pf.total_vfs) {
        let held_total = demands
            .iter()
            .fold(others, |acc, d| acc.saturating_add(d.held));
        let grants = grant(&demands, pf.total_vfs.saturating_sub(held_total));
        for (d, g) in demands.iter().zip(grants) {
            if g < d.extra() {
                out.deferred.push(Deferred {
                    action: None,
                    reason: format!(
                        "{}; {} supports {} and higher-priority or larger demand takes \
                         the rest: {} short",
                        d.describe(pf, horizon),
                        pf.bdf,
                        vfs(pf.total_vfs),
                        vfs(d.extra() - g)
                    ),
                    vm: Some(d.vm.to_owned()),
                    priority: d.class.class.priority,
                });
            }
        }
    }

    if target == cur {
        return out;
    }
    let mut held_vfs: Vec<_> = pf.held_vfs().collect();
    held_vfs.sort_by_key(|v| v.bdf);
    let held: Vec<String> = held_vfs
        .iter()
        .map(|v| match &v.user {
            super::state::DeviceUse::Vm(n) => format!("{} by VM {n}", v.bdf),
            super::state::DeviceUse::Process(p) | super::state::DeviceUse::Host(p) => {
                format!("{} by {p}", v.bdf)
            }
            super::state::DeviceUse::Free => v.bdf.to_string(),
        })
        .collect();
    let action = Action::SetVfs {
        pf: pf.bdf,
        count: target,
    };
    let young = !ctx.settled(pf.last_change.map(|c| c.at), ctx.policy.dwell.vf_count_s);
    let last = pf.last_change.map_or(String::new(), |c| {
        format!(
            "it changed from {} to {} {} ago",
            c.from,
            cur,
            secs(ctx.now - c.at)
        )
    });
    let free = pf.vfs.iter().filter(|v| !v.user.is_held()).count();

    if target > cur {
        let drivers: Vec<&VfDemand<'_>> = demands.iter().filter(|d| d.extra() > 0).collect();
        let top = drivers.first().copied();
        let why = top.map_or_else(
            || format!("{} needs more VFs", pf.bdf),
            |d| d.describe(pf, horizon),
        );
        let vm = top.map(|d| d.vm.to_owned());
        let priority = top.map_or(0, |d| d.class.class.priority);
        let demand = top.map_or(0.0, VfDemand::upper);
        let plan = format!(
            "{why}; the pool has {} ({free} free) for a predicted peak of {}{peak_note}",
            vfs(cur),
            vfs(target)
        );
        if !held.is_empty() {
            out.deferred.push(Deferred {
                action: Some(action),
                reason: format!(
                    "{plan}, but {} held ({}); a VF count changes only through 0, so {} \
                     keeps {} until they are released",
                    if held.len() == 1 {
                        "a VF is"
                    } else {
                        "VFs are"
                    },
                    held.join(", "),
                    pf.bdf,
                    vfs(cur)
                ),
                vm,
                priority,
            });
            return out;
        }
        let reverses = young && pf.last_change.is_some_and(|c| c.from > cur);
        let preempt = drivers.iter().find(|d| d.class.class.preempt_dwell);
        if reverses {
            let Some(p) = preempt else {
                out.deferred.push(Deferred {
                    action: Some(action),
                    reason: format!(
                        "{plan}, but {last}, under [dwell] vf_count_s = {}: regrowing now \
                         would flap",
                        secs(ctx.policy.dwell.vf_count_s)
                    ),
                    vm,
                    priority,
                });
                return out;
            };
            out.proposals.push(Proposal {
                action,
                reason: format!(
                    "{plan}: set it to {target} ahead of demand; {last}, under [dwell] \
                     vf_count_s = {}, but {} may cut a dwell short (preempt_dwell)",
                    secs(ctx.policy.dwell.vf_count_s),
                    vm_label(p.vm, p.class)
                ),
                vm: Some(p.vm.to_owned()),
                priority: p.class.class.priority,
                rank: Rank::Grow,
                demand: p.upper(),
                breaks_dwell: true,
            });
            return out;
        }
        out.proposals.push(Proposal {
            action,
            reason: format!(
                "{plan}: set it to {target} ahead of demand (no VF is held, so the count \
                 can change)"
            ),
            vm,
            priority,
            rank: Rank::Grow,
            demand,
            breaks_dwell: false,
        });
        return out;
    }

    // target < cur: shrink only with evidence, nothing held, and the dwell over.
    let evidence = demands.iter().any(|d| d.peak.is_some());
    if !evidence || !held.is_empty() {
        return out;
    }
    let peaks: Vec<String> = demands
        .iter()
        .map(|d| format!("{} {}", d.vm, d.need))
        .collect();
    let why = format!(
        "no VF of {} is held and the predicted peak within {} is {} ({})",
        pf.bdf,
        secs(horizon),
        vfs(target),
        peaks.join(", ")
    );
    if young {
        out.deferred.push(Deferred {
            action: Some(action),
            reason: format!(
                "{why}, but {last}, under [dwell] vf_count_s = {}: the pool keeps {} for now",
                secs(ctx.policy.dwell.vf_count_s),
                vfs(cur)
            ),
            vm: None,
            priority: 0,
        });
        return out;
    }
    out.proposals.push(Proposal {
        action,
        reason: format!("{why}{peak_note}: shrink the pool from {cur} to {target}"),
        vm: None,
        priority: 0,
        rank: Rank::Shrink,
        demand: 0.0,
        breaks_dwell: false,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bounds_round_to_whole_vfs_with_slack() {
        assert_eq!(
            [0.0, 0.05, 0.2, 0.21, 1.0, 1.2, 1.21, 1.8, 2.0].map(vf_units),
            [0, 0, 0, 1, 1, 1, 2, 2, 2]
        );
        assert_eq!(vf_units(f64::NAN), 0);
        assert_eq!(vf_units(-3.0), 0);
        assert_eq!(vf_units(1e300), u32::MAX);
    }
}
