//! What every rule of one plan shares: the inputs, the policy's windows and
//! dwell checks, and the proposals the rules make.

use std::collections::{BTreeMap, BTreeSet};

use super::forecasts::{Forecasts, Peak, VmForecasts};
use super::state::{DeviceState, HostState, VmState};
use crate::executor::Action;
use crate::hal::Bdf;
use crate::policy::{Candidate, ClassRef, Policy};

/// The inputs of one plan and what follows from the policy.
pub(crate) struct Ctx<'a> {
    /// Unix seconds.
    pub(crate) now: f64,
    pub(crate) policy: &'a Policy,
    pub(crate) forecasts: &'a Forecasts,
    /// Running VMs, by name (sorted, no duplicates).
    pub(crate) vms: BTreeSet<&'a str>,
    /// Running VMs' states, by name (the first of duplicates).
    pub(crate) vm_states: BTreeMap<&'a str, &'a VmState>,
    /// The PF whose pool serves hot-plug demand: the allowed PF with the
    /// lowest address.
    pub(crate) hotplug_pf: Option<Bdf>,
    /// The agent's reaction time ([`HostState::reaction_s`]), seconds.
    pub(crate) reaction_s: f64,
    /// Names that more than one running VM carries (their forecasts are
    /// one, right for none of them).
    pub(crate) shared_names: BTreeSet<&'a str>,
    /// How far ahead the plan sees uses: the plan horizon, or less where the
    /// forecasts reach less far ([`Forecasts::reach`]; their data ends
    /// before the plan's time).
    pub(crate) sight_s: f64,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        now: f64,
        host: &'a HostState,
        forecasts: &'a Forecasts,
        policy: &'a Policy,
    ) -> Self {
        Self {
            now,
            policy,
            forecasts,
            vms: host.vms.iter().map(|v| v.name.as_str()).collect(),
            vm_states: host
                .vms
                .iter()
                .rev()
                .map(|v| (v.name.as_str(), v))
                .collect(),
            hotplug_pf: host
                .pfs
                .iter()
                .filter(|p| policy.devices.allows(&p.candidate()))
                .map(|p| p.bdf)
                .min(),
            shared_names: {
                let mut seen = BTreeSet::new();
                host.vms
                    .iter()
                    .map(|v| v.name.as_str())
                    .filter(|n| !seen.insert(*n))
                    .collect()
            },
            sight_s: forecasts.reach().map_or(policy.plan.horizon_s, |r| {
                r.clamp(0.0, policy.plan.horizon_s)
            }),
            reaction_s: if host.reaction_s.is_finite() && host.reaction_s > 0.0 {
                host.reaction_s
            } else {
                0.0
            },
        }
    }

    /// The plan horizon, seconds.
    pub(crate) fn horizon(&self) -> f64 {
        self.policy.plan.horizon_s
    }

    /// The class of `vm`.
    pub(crate) fn class(&self, vm: &str) -> ClassRef<'a> {
        self.policy.class_of(vm)
    }

    /// The forecasts of `vm` if it runs.
    pub(crate) fn vm_forecasts(&self, vm: &str) -> Option<&'a VmForecasts> {
        if self.vms.contains(vm) {
            self.forecasts.vm(vm)
        } else {
            None
        }
    }

    /// Whether the allow-list lets vpm act on `c`.
    pub(crate) fn allowed(&self, c: &Candidate) -> bool {
        self.policy.devices.allows(c)
    }

    /// The weight of power against latency, `0..=1`.
    fn power_weight(&self) -> f64 {
        self.policy.plan.preference.power_weight()
    }

    /// `dev`'s wake latency: its own when measured, else the policy's.
    pub(crate) fn wake_latency(&self, dev: &DeviceState) -> f64 {
        dev.wake_latency_s
            .filter(|l| l.is_finite() && *l >= 0.0)
            .unwrap_or(self.policy.plan.wake_latency_s)
    }

    /// How long from a plan until `dev` is awake: the agent's reaction time
    /// ([`HostState::reaction_s`]) and the device's wake latency (the
    /// policy's for a device not known yet, such as the VF an attach will
    /// pick).
    pub(crate) fn wake_lead(&self, dev: Option<&DeviceState>) -> f64 {
        self.reaction_s + dev.map_or(self.policy.plan.wake_latency_s, |d| self.wake_latency(d))
    }

    /// A device is woken when its use is predicted within this many seconds:
    /// `latency` (its [`wake_lead`](Self::wake_lead): wake latency and the
    /// agent's reaction time) plus `(1 − w)` of the horizon.
    pub(crate) fn wake_window(&self, latency: f64) -> f64 {
        latency + (1.0 - self.power_weight()) * self.horizon()
    }

    /// A device is kept awake (not parked) while its use is predicted within
    /// this many seconds: the wake window, and at least the time a parked
    /// device must stay parked plus its wake latency (a park that would have
    /// to be reversed within its dwell is a flap).
    pub(crate) fn keep_window(&self, latency: f64) -> f64 {
        self.wake_window(latency)
            .max(self.policy.dwell.parked_s + latency)
    }

    /// An idle device is parked only after being idle this long: `(1 − w)`
    /// of the horizon.
    pub(crate) fn park_grace(&self) -> f64 {
        (1.0 - self.power_weight()) * self.horizon()
    }

    /// Whether at least `dwell` seconds have passed since `since` (an unknown
    /// time counts as long ago).
    pub(crate) fn settled(&self, since: Option<f64>, dwell: f64) -> bool {
        since.is_none_or(|t| self.now - t >= dwell)
    }

    /// The peak of `vm`'s predicted activity on `bdf` within `window`, if it
    /// reaches the policy's `active_rate`.
    pub(crate) fn active(&self, vm: &str, bdf: Bdf, window: f64) -> Option<Peak> {
        self.vm_forecasts(vm)?
            .devices
            .get(&bdf)?
            .peak(window)
            .filter(|p| p.upper >= self.policy.plan.active_rate)
    }
}

/// Kinds of action, in the order they go first at equal priority: pools grow,
/// VFs move to and are attached to VMs, devices are woken (all serve
/// demand), then pools shrink, devices are parked and VFs given back (all
/// save resources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    Grow,
    Move,
    Attach,
    Wake,
    Shrink,
    Park,
    Detach,
}

/// An action a rule wants, before the budget picks.
#[derive(Debug, Clone)]
pub(crate) struct Proposal {
    pub(crate) action: Action,
    pub(crate) reason: String,
    pub(crate) vm: Option<String>,
    pub(crate) priority: u32,
    pub(crate) rank: Rank,
    /// The predicted demand behind it (larger goes first at equal priority).
    pub(crate) demand: f64,
    pub(crate) breaks_dwell: bool,
}

/// A VM with its class, for reasons: `VM web-1 (burstable)`.
pub(crate) fn vm_label(vm: &str, class: ClassRef<'_>) -> String {
    format!("VM {vm} ({})", class.name)
}

/// A number for a reason: up to two decimals below 10, whole above.
pub(crate) fn num(x: f64) -> String {
    if x.abs() < 10.0 {
        let s = format!("{x:.2}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() || s == "-" || s == "-0" {
            "0".to_owned()
        } else {
            s.to_owned()
        }
    } else {
        format!("{x:.0}")
    }
}

/// Seconds for a reason: `61 s`, `0.5 s`.
pub(crate) fn secs(x: f64) -> String {
    format!("{} s", num(x))
}

/// `1 VF`, `2 VFs`.
pub(crate) fn vfs(n: u32) -> String {
    if n == 1 {
        "1 VF".to_owned()
    } else {
        format!("{n} VFs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1.8), "1.8");
        assert_eq!(num(1.25), "1.25");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(35.2), "35");
        assert_eq!(num(0.001), "0");
        assert_eq!(num(-0.001), "0");
        assert_eq!(secs(300.0), "300 s");
        assert_eq!(secs(0.5), "0.5 s");
        assert_eq!((vfs(1), vfs(3)), ("1 VF".to_owned(), "3 VFs".to_owned()));
    }
}
