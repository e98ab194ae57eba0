//! The scheduler: host state + forecasts + policy → a plan. Pure: no I/O, no
//! clock (`now` is an argument), no state kept between calls; the same
//! inputs give the same plan, whatever the order of the input lists.
//!
//! # Inputs
//!
//! - [`HostState`]: the managed PFs with their VF count and each VF's state
//!   (who holds it, driver, power state and since when), other managed
//!   devices, and the running VMs by name.
//! - [`Forecasts`]: per VM, the VFs it will hold on each PF, its activity on
//!   each device, its CPU and memory, each as a point forecast and a
//!   calibrated upper bound per horizon.
//! - [`Policy`]: allow-list, QoS classes, dwell times, budget, preference.
//!
//! # Rules
//!
//! With `H` the plan horizon, `w` the preference's power weight (0 latency,
//! 1 power) and `lat` a device's wake latency plus the agent's reaction time
//! ([`HostState::reaction_s`]):
//!
//! 1. **Only allowed devices.** Actions target only functions the policy's
//!    `[devices] allow` names (or VFs of a named PF); with an empty allow-list
//!    (or [`Policy::default`], for no policy file) a plan holds
//!    recommendations only.
//! 2. **VF pools are sized ahead of demand.** A VM's need on a PF is its
//!    forecast peak within `H` (the upper bound in whole VFs,
//!    [`vf_units`]), clamped to its class's `min_vfs..=max_vfs`, at least
//!    what it holds. The pool's target is the sum of needs (plus VFs held by
//!    non-VM processes), capped by `sriov_totalvfs`.
//! 3. **A VF count changes only while no VF of the PF is held** (from a
//!    non-zero count every change passes through 0). With a held VF the
//!    pool keeps its size: it never shrinks under a held VF, and a needed
//!    growth is deferred with the holders named. A pool shrinks only with
//!    a forecast for it (vpm does not destroy VFs on no evidence) and only
//!    `[dwell] vf_count_s` after its last change; it regrows within that
//!    time of a shrink only for a class with `preempt_dwell`. A PF being
//!    resized gets no power actions on its VFs that tick.
//! 4. **Pre-wake.** A device is woken when its use is predicted within
//!    `lat + (1 − w)·H`: for a device or a held VF, a VM's predicted
//!    activity on it reaching `[plan] active_rate`; for free VFs, which
//!    are interchangeable, a PF keeps awake as many as its VMs are
//!    predicted to open beyond what they hold (and VFs a VM is predicted to
//!    use by address stay its own); a VM that takes VFs by hot-plug opens
//!    none itself (an attach wakes its VF), but free VFs it is predicted to
//!    be given within the keep window are not parked first.
//! 5. **Park.** A free device that is awake is parked once it has been
//!    awake `[dwell] awake_s`, idle `(1 − w)·H`, and no use is predicted
//!    within `max(lat + (1 − w)·H, [dwell] parked_s + lat)` (so the park
//!    would not have to be reversed within its dwell). Held devices, and
//!    devices used by the host or by non-VM processes, are never parked;
//!    nor is a device whose `lat` exceeds how far the plan sees (`H`, or
//!    less where the forecasts, counted from the plan's time, reach less
//!    far): it could not be woken before its next use, so that park is
//!    deferred with the reason.
//! 6. **No flapping.** A device parked (or otherwise changed) less than
//!    `[dwell] parked_s` ago is not woken unless the VM whose demand needs it
//!    is of a class with `preempt_dwell`; the action then has
//!    `breaks_dwell` set and its reason says so. Otherwise the wake is
//!    deferred with the reason.
//! 7. **Contention.** Higher class priority, then larger predicted upper
//!    bound, then VM name, goes first: for a pool's VFs (shortfalls are
//!    reported as deferred entries without an action) and for awake VFs.
//! 8. **Budget.** At most `[plan] max_actions_per_tick` actions, ordered by
//!    class priority, then kind (grow, wake, shrink, park), then predicted
//!    demand, then address; one action per device. The rest are deferred.
//! 9. **Recommendations.** Per VM with a CPU or memory forecast, a request
//!    (largest point forecast within `H`) and a limit (largest upper bound),
//!    rounded up; not acted on.
//!
//! The executor checks its safety rules again whatever a plan says.

mod budget;
mod connect;
mod context;
pub mod forecasts;
pub mod output;
mod pool;
mod power;
mod recommend;
mod spares;
pub mod state;

#[cfg(test)]
mod props;
#[cfg(test)]
mod scenarios;

use std::collections::BTreeSet;

pub use forecasts::{Forecasts, Outlook, Peak, Point, Resource, VmForecasts};
pub use output::{Deferred, Plan, PlannedAction, Recommendation, Sizing};
pub use pool::{VF_ROUNDING_SLACK, vf_units};
pub use recommend::{CPU_STEP, MEMORY_STEP};
pub use state::{
    AttachedVf, DeviceState, DeviceUse, HostState, PfState, Readiness, VfCountChange, VmHotplug,
    VmState,
};

use crate::hal::Bdf;
use crate::policy::Policy;
use context::Ctx;

/// Makes the plan for `now` (unix seconds) from the host's state, the
/// forecasts and the policy. See the module docs for the rules.
pub fn plan(now: f64, host: &HostState, forecasts: &Forecasts, policy: &Policy) -> Plan {
    let ctx = Ctx::new(now, host, forecasts, policy);
    let mut proposals = Vec::new();
    let mut deferred = Vec::new();
    let mut power_out = power::PowerOutcome::default();

    let mut pfs: Vec<&PfState> = host.pfs.iter().collect();
    pfs.sort_by_key(|p| p.bdf);
    pfs.dedup_by_key(|p| p.bdf);
    let pf_bdfs: BTreeSet<Bdf> = pfs.iter().map(|p| p.bdf).collect();
    let vf_bdfs: BTreeSet<Bdf> = pfs
        .iter()
        .flat_map(|p| p.vfs.iter().map(|v| v.bdf))
        .collect();

    let mut resizing = BTreeSet::new();
    for pf in &pfs {
        if ctx.allowed(&pf.candidate()) {
            let pool = pool::size_pool(&ctx, pf);
            let resizes = pool.resizes();
            proposals.extend(pool.proposals);
            deferred.extend(pool.deferred);
            if resizes {
                resizing.insert(pf.bdf);
                continue;
            }
        }
        power::free_vfs(&ctx, pf, &mut power_out);
        let mut held: Vec<&DeviceState> = pf
            .held_vfs()
            .filter(|v| ctx.allowed(&v.candidate(Some(pf))))
            .collect();
        held.sort_by_key(|v| v.bdf);
        for vf in held {
            power::device(&ctx, vf, &mut power_out);
        }
    }

    let mut devices: Vec<&DeviceState> = host
        .devices
        .iter()
        .filter(|d| !pf_bdfs.contains(&d.bdf) && !vf_bdfs.contains(&d.bdf))
        .filter(|d| ctx.allowed(&d.candidate(None)))
        .collect();
    devices.sort_by_key(|d| d.bdf);
    devices.dedup_by_key(|d| d.bdf);
    for dev in devices {
        power::device(&ctx, dev, &mut power_out);
    }

    proposals.extend(power_out.proposals);
    deferred.extend(power_out.deferred);
    connect::plan(&ctx, host, &resizing, &mut proposals, &mut deferred);
    let (actions, over_budget) = budget::select(proposals, policy.plan.max_actions_per_tick);
    // Stable: within a priority, rule order (PFs by address, then devices).
    deferred.sort_by_key(|d| std::cmp::Reverse(d.priority));
    deferred.extend(over_budget);

    Plan {
        generated_at: now,
        horizon_s: policy.plan.horizon_s,
        actions,
        deferred,
        recommendations: recommend::recommend(&ctx),
    }
}
