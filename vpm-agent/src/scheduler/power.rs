//! Waking and parking: devices predicted in use within their wake window
//! are woken ahead of use; devices free, idle, and predicted idle for longer
//! than they would have to stay parked are parked.
//!
//! Free VFs are interchangeable: a VM opens whichever is there, so a PF keeps
//! as many free VFs awake as its VMs are predicted to open (beyond what they
//! hold), highest priority first, with rises that are only likely sharing
//! pooled spares (see `spares`); a free VF a VM is predicted to use by
//! address (its activity forecast) is kept for that VM. Other devices, and
//! VFs a VM holds, follow their own activity forecasts.

use super::context::{Ctx, Proposal, Rank, num, secs, vm_label};
use super::forecasts::Peak;
use super::output::Deferred;
use super::pool::{VfDemand, demands, grant};
use super::spares;
use super::state::{DeviceState, DeviceUse, PfState, Readiness};
use crate::executor::Action;
use crate::hal::Bdf;
use crate::policy::ClassRef;

/// What the power rules want.
#[derive(Debug, Default)]
pub(crate) struct PowerOutcome {
    pub(crate) proposals: Vec<Proposal>,
    pub(crate) deferred: Vec<Deferred>,
}

/// Who wants a device awake, and how much.
#[derive(Debug, Clone, Copy)]
struct Want<'a> {
    vm: &'a str,
    class: ClassRef<'a>,
    /// What the reason says of the demand.
    upper: f64,
}

impl PowerOutcome {
    /// Wakes `dev` for `want` if its dwell allows (or the class may cut it
    /// short); else defers with the reason. `why` says what is predicted.
    fn wake(&mut self, ctx: &Ctx<'_>, dev: &DeviceState, want: Want<'_>, why: String) {
        let action = Action::Wake { bdf: dev.bdf };
        let state = match dev.readiness() {
            Readiness::Resting => format!(
                "{} is parked (D0 under {}, free to suspend)",
                dev.bdf,
                dev.driver.as_deref().unwrap_or("no driver")
            ),
            _ => format!("{} is in {}", dev.bdf, dev.power),
        };
        let base = format!(
            "{why}; {state}: wake it ahead of use ({})",
            lead_text(ctx, dev)
        );
        let dwell = ctx.policy.dwell.parked_s;
        let mut breaks_dwell = false;
        let mut reason = base.clone();
        if !ctx.settled(dev.power_since, dwell) {
            let ago = dev.power_age(ctx.now).unwrap_or(0.0);
            if want.class.class.preempt_dwell {
                breaks_dwell = true;
                reason = format!(
                    "{base}; it was parked {} ago, under [dwell] parked_s = {}, but {} \
                     may cut a dwell short (preempt_dwell)",
                    secs(ago),
                    secs(dwell),
                    want.class.name
                );
            } else {
                self.deferred.push(Deferred {
                    action: Some(action),
                    reason: format!(
                        "{base}; but it was parked {} ago, under [dwell] parked_s = {}, \
                         and {} may not cut a dwell short: it wakes when the dwell is over",
                        secs(ago),
                        secs(dwell),
                        want.class.name
                    ),
                    vm: Some(want.vm.to_owned()),
                    priority: want.class.class.priority,
                });
                return;
            }
        }
        self.proposals.push(Proposal {
            action,
            reason,
            vm: Some(want.vm.to_owned()),
            priority: want.class.class.priority,
            rank: Rank::Wake,
            demand: want.upper,
            breaks_dwell,
        });
    }

    /// Parks `dev` (free and awake) if its awake dwell and idle grace are
    /// over; `why` says why it is not needed. Silent while a dwell or the
    /// grace runs (the device is simply kept awake a while longer); deferred
    /// with the reason when the plan could not wake it in time for a use.
    fn park(&mut self, ctx: &Ctx<'_>, dev: &DeviceState, why: String) {
        if dev.user.is_held() || dev.readiness() != Readiness::Awake {
            return;
        }
        if !ctx.settled(dev.power_since, ctx.policy.dwell.awake_s) {
            return;
        }
        let grace = ctx.park_grace();
        if !ctx.settled(dev.idle_since, grace) {
            return;
        }
        let idle = dev
            .idle_since
            .map_or("idle since vpm started watching".to_owned(), |t| {
                format!("idle for {}", secs(ctx.now - t))
            });
        // A park is undone by a wake issued `lead` seconds before the use;
        // the plan sees uses only so far ahead, so past it a park would make
        // the next use wait for the device.
        let lead = ctx.wake_lead(Some(dev));
        if lead > ctx.sight_s {
            let sight = if ctx.sight_s < ctx.horizon() {
                format!(
                    "; its forecasts reach {} past the plan's time",
                    secs(ctx.sight_s)
                )
            } else {
                String::new()
            };
            self.deferred.push(Deferred {
                action: Some(Action::Park { bdf: dev.bdf }),
                reason: format!(
                    "{} is free and {idle}; {why}, but waking it takes {} ({}), more than \
                     the plan sees ahead ([plan] horizon_s = {}{sight}): it stays awake, as \
                     a park could not be undone before its next use; a longer horizon_s \
                     (and --horizons) or a less loaded host lets vpm park it",
                    dev.bdf,
                    secs(lead),
                    lead_text(ctx, dev),
                    secs(ctx.horizon())
                ),
                vm: None,
                priority: 0,
            });
            return;
        }
        self.proposals.push(Proposal {
            action: Action::Park { bdf: dev.bdf },
            reason: format!("{} is free and {idle}; {why}: park it", dev.bdf),
            vm: None,
            priority: 0,
            rank: Rank::Park,
            demand: 0.0,
            breaks_dwell: false,
        });
    }
}

/// What waking `dev` takes: `wake latency 0.5 s[, plus 1 s the agent takes
/// to act]`.
fn lead_text(ctx: &Ctx<'_>, dev: &DeviceState) -> String {
    let reaction = if ctx.reaction_s > 0.0 {
        format!(", plus {} the agent takes to act", secs(ctx.reaction_s))
    } else {
        String::new()
    };
    format!("wake latency {}{reaction}", secs(ctx.wake_latency(dev)))
}

/// The running VM with the strongest predicted activity on `bdf` within
/// `window` (highest class priority, then largest upper bound, then name).
fn strongest<'a>(ctx: &Ctx<'a>, bdf: Bdf, window: f64) -> Option<(Want<'a>, Peak)> {
    let mut best: Option<(Want<'a>, Peak)> = None;
    for &vm in &ctx.vms {
        let Some(peak) = ctx.active(vm, bdf, window) else {
            continue;
        };
        let class = ctx.class(vm);
        let better = best.is_none_or(|(b, bp)| {
            (class.class.priority, peak.upper) > (b.class.class.priority, bp.upper)
        });
        if better {
            best = Some((
                Want {
                    vm,
                    class,
                    upper: peak.upper,
                },
                peak,
            ));
        }
    }
    best
}

fn activity_why(want: Want<'_>, bdf: Bdf, window: f64, active_rate: f64) -> String {
    format!(
        "{} is predicted to use {bdf} within {} (upper bound {} events/s; in use from {} \
         events/s)",
        vm_label(want.vm, want.class),
        secs(window),
        num(want.upper),
        num(active_rate)
    )
}

/// The power rules for one device that is not a free VF: a held VF, or a
/// managed device. `dev` must be allowed.
pub(crate) fn device(ctx: &Ctx<'_>, dev: &DeviceState, out: &mut PowerOutcome) {
    let readiness = dev.readiness();
    if readiness == Readiness::Unknown {
        return;
    }
    // Devices held by a process that is not a VM, or used by the host, are
    // left alone.
    if matches!(dev.user, DeviceUse::Process(_) | DeviceUse::Host(_)) {
        return;
    }
    let latency = ctx.wake_lead(Some(dev));
    let wake_w = ctx.wake_window(latency);
    let keep_w = ctx.keep_window(latency);
    let rate = ctx.policy.plan.active_rate;
    if let Some((want, _)) = strongest(ctx, dev.bdf, wake_w) {
        if readiness != Readiness::Awake {
            out.wake(ctx, dev, want, activity_why(want, dev.bdf, wake_w, rate));
        }
        return;
    }
    if dev.user.is_held() || strongest(ctx, dev.bdf, keep_w).is_some() {
        return;
    }
    out.park(
        ctx,
        dev,
        format!("no use of it is predicted within {}", secs(keep_w)),
    );
}

/// The power rules for the free VFs of `pf` (their count stays this tick).
pub(crate) fn free_vfs(ctx: &Ctx<'_>, pf: &PfState, out: &mut PowerOutcome) {
    let mut free: Vec<&DeviceState> = pf
        .vfs
        .iter()
        .filter(|v| !v.user.is_held())
        .filter(|v| v.readiness() != Readiness::Unknown)
        .filter(|v| ctx.allowed(&v.candidate(Some(pf))))
        .collect();
    free.sort_by_key(|v| v.bdf);
    free.dedup_by_key(|v| v.bdf);
    if free.is_empty() {
        return;
    }
    let latency = free
        .iter()
        .map(|v| ctx.wake_lead(Some(v)))
        .fold(0.0, f64::max);
    let wake_w = ctx.wake_window(latency);
    let keep_w = ctx.keep_window(latency);
    let rate = ctx.policy.plan.active_rate;

    // VFs a VM is predicted to use by address.
    let mut specific_wake: Vec<(&DeviceState, Want<'_>)> = Vec::new();
    let mut pool: Vec<&DeviceState> = Vec::new();
    for &vf in &free {
        if let Some((want, _)) = strongest(ctx, vf.bdf, wake_w) {
            specific_wake.push((vf, want));
        } else if strongest(ctx, vf.bdf, keep_w).is_none() {
            pool.push(vf);
        }
        // Else wanted later within the keep window: neither woken nor parked.
    }
    for &(vf, want) in &specific_wake {
        if vf.readiness() != Readiness::Awake {
            out.wake(ctx, vf, want, activity_why(want, vf.bdf, wake_w, rate));
        }
    }

    // Interchangeable VFs: how many each VM will open, highest priority first.
    let by_address = |vm: &str| {
        u32::try_from(specific_wake.iter().filter(|(_, w)| w.vm == vm).count()).unwrap_or(u32::MAX)
    };
    let pool_n = u32::try_from(pool.len()).unwrap_or(u32::MAX);
    let counted = |window: f64| -> (Vec<VfDemand<'_>>, Vec<u32>) {
        let mut ds = demands(ctx, pf, window);
        for d in &mut ds {
            // Awake for predicted use only: min_vfs keeps VFs created, not awake.
            d.need = d.use_need.saturating_sub(by_address(d.vm)).max(d.held);
        }
        // Rises that are only likely share pooled spares (highest priority
        // first), not one VF each; what pooling saves goes to the others.
        let first = grant(&ds, pool_n);
        let likely: Vec<(u32, f64, f64)> = ds
            .iter()
            .zip(&first)
            .filter_map(|(d, &g)| {
                let chance = d.peak.and_then(|p| p.rise)?;
                Some((g, chance, d.class.class.headroom.level()))
            })
            .collect();
        if likely.is_empty() {
            return (ds, first);
        }
        let claims: Vec<(u32, f64)> = likely.iter().map(|l| (l.0, l.1)).collect();
        let level = likely.iter().map(|l| l.2).fold(0.0, f64::max);
        let mut left = spares::pooled(&claims, level);
        for (d, &g) in ds.iter_mut().zip(&first) {
            if d.peak.and_then(|p| p.rise).is_some() {
                let take = g.min(left);
                left -= take;
                d.need = d.held.saturating_add(take);
            }
        }
        let g = grant(&ds, pool_n);
        (ds, g)
    };
    let (wake_demands, wake_grants) = counted(wake_w);
    let (_, keep_grants) = counted(keep_w);
    let wanted_awake: u32 = wake_grants.iter().sum();
    // VFs hot-plug VMs are predicted to be given within the keep window:
    // kept awake (not woken) for the attach, so it does not wake a VF
    // parked moments before.
    let attach_soon = if ctx.hotplug_pf == Some(pf.bdf) {
        super::connect::keep_shortfall(ctx)
    } else {
        0
    };
    let keep_awake = keep_grants
        .iter()
        .sum::<u32>()
        .saturating_add(attach_soon)
        .max(wanted_awake);

    // Already awake VFs serve the highest-priority demand first; the rest is
    // served by waking VFs, rested ones first, then those whose dwell is over.
    let awake: Vec<&DeviceState> = pool
        .iter()
        .copied()
        .filter(|v| v.readiness() == Readiness::Awake)
        .collect();
    let mut asleep: Vec<&DeviceState> = pool
        .iter()
        .copied()
        .filter(|v| v.readiness() != Readiness::Awake)
        .collect();
    asleep.sort_by_key(|v| {
        (
            v.readiness() != Readiness::Resting,
            !ctx.settled(v.power_since, ctx.policy.dwell.parked_s),
            v.bdf,
        )
    });
    let mut servings: Vec<&VfDemand<'_>> = Vec::new();
    for (d, &g) in wake_demands.iter().zip(&wake_grants) {
        servings.extend(std::iter::repeat_n(d, g as usize));
    }
    let free_awake = awake.len();
    for (d, vf) in servings.iter().skip(free_awake).zip(&asleep) {
        let want = Want {
            vm: d.vm,
            class: d.class,
            upper: d.upper(),
        };
        let likely = d.peak.and_then(|p| p.rise).map_or(String::new(), |c| {
            format!(
                " (a rise {:.0} % likely; {} keeps spares for the likely rises of its VMs \
                 together)",
                c * 100.0,
                pf.bdf
            )
        });
        let why = format!(
            "{}{likely}; {} has {} free {} awake",
            d.describe(pf, wake_w),
            pf.bdf,
            free_awake,
            if free_awake == 1 { "VF" } else { "VFs" }
        );
        out.wake(ctx, vf, want, why);
    }

    // Park awake VFs beyond what the keep window needs; keep the ones woken
    // most recently (they could not be parked yet anyway).
    let mut awake = awake;
    awake.sort_by_key(|v| (ctx.settled(v.power_since, ctx.policy.dwell.awake_s), v.bdf));
    let keep = keep_awake as usize;
    for vf in awake.iter().skip(keep) {
        out.park(
            ctx,
            vf,
            format!(
                "{} keeps {} free {} awake for the demand predicted within {}",
                pf.bdf,
                keep_awake,
                if keep_awake == 1 { "VF" } else { "VFs" },
                secs(keep_w)
            ),
        );
    }
}
