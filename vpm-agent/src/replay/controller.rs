//! The policies a replay compares: [`Vpm`] (forecast + scheduler, as the
//! agent runs them), [`Reactive`] (act when demand appears) and [`Static`]
//! (everything always on). Each sees the host's state and each VM's demand at
//! a tick and returns the actions to take; the host carries them out.

use std::collections::BTreeMap;

use super::ReplayError;
use super::metrics::{MissCause, OnsetOutcome};
use crate::executor::Action;
use crate::forecast::adaptive::{AdaptiveHeadroom, ClassHeadroom};
use crate::forecast::onset::{OnsetConfig, OnsetModel};
use crate::forecast::{ForecasterConfig, SelectionBudget, SeriesForecaster};
use crate::hal::Bdf;
use crate::policy::Policy;
use crate::scheduler::{self, Deferred, Forecasts, HostState, PfState, Point, Readiness, Resource};

/// One action a policy takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The action.
    pub action: Action,
    /// Whether the plan says it cuts a dwell short on purpose.
    pub breaks_dwell: bool,
}

impl From<Action> for Decision {
    fn from(action: Action) -> Self {
        Self {
            action,
            breaks_dwell: false,
        }
    }
}

/// A policy under test.
pub trait Controller {
    /// Its name in reports (`vpm`, `reactive`, `static`).
    fn name(&self) -> &str;

    /// The actions to take at `now`, given the host and each VM's demand
    /// (VFs it uses, or asks for when none was free).
    fn decide(
        &mut self,
        now: f64,
        host: &HostState,
        demand: &[(String, u32)],
    ) -> Result<Vec<Decision>, ReplayError>;

    /// Why the `unit`-th VF `vm` started to use in this tick was not ready
    /// (it found `outcome`), judged from what the policy knew at its last
    /// decision.
    fn miss_cause(&self, _vm: &str, _unit: u32, _outcome: OnsetOutcome) -> MissCause {
        MissCause::NoForecast
    }

    /// Whether the policy's last forecast foresaw the `unit`-th VF `vm`
    /// started to use in this tick (`None`: it does not forecast).
    fn foresaw(&self, _vm: &str, _unit: u32) -> Option<bool> {
        None
    }
}

/// The PF `pf` in `host`.
pub(crate) fn find_pf(host: &HostState, pf: Bdf) -> Result<&PfState, ReplayError> {
    host.pfs
        .iter()
        .find(|p| p.bdf == pf)
        .ok_or(ReplayError::NotSriov { pf })
}

/// Reacts to demand as it appears: the first time a VM finds no VF it
/// creates every VF the PF supports (a VF count changes only while no VF is
/// held, so a pool sized to the first demand could seldom grow again; it never
/// shrinks), and it parks every free VF that is awake at once, so each use
/// ends in D3hot. It never wakes a VF: a VM opening a parked VF resumes it
/// (and waits for it).
#[derive(Debug, Clone)]
pub struct Reactive {
    pf: Bdf,
}

impl Reactive {
    /// For the PF `pf`.
    pub fn new(pf: Bdf) -> Self {
        Self { pf }
    }
}

impl Controller for Reactive {
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
        let wanted: u32 = demand.iter().map(|(_, n)| *n).sum();
        let held_n = pf.held_vfs().count();
        let held = u32::try_from(held_n).unwrap_or(u32::MAX);
        let free = u32::try_from(pf.vfs.len().saturating_sub(held_n)).unwrap_or(u32::MAX);
        let waiting = wanted.saturating_sub(held);
        if waiting > free && held == 0 && pf.num_vfs < pf.total_vfs {
            return Ok(vec![
                Action::SetVfs {
                    pf: pf.bdf,
                    count: pf.total_vfs,
                }
                .into(),
            ]);
        }
        Ok(pf
            .vfs
            .iter()
            .filter(|v| !v.user.is_held() && v.readiness() == Readiness::Awake)
            .map(|v| Action::Park { bdf: v.bdf }.into())
            .collect())
    }
}

/// Everything always on: the pool at `sriov_totalvfs` (created as soon as no
/// VF is held) and every VF kept in D0 (`power/control=on`).
#[derive(Debug, Clone)]
pub struct Static {
    pf: Bdf,
}

impl Static {
    /// For the PF `pf`.
    pub fn new(pf: Bdf) -> Self {
        Self { pf }
    }
}

impl Controller for Static {
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
        if pf.num_vfs < pf.total_vfs && pf.held_vfs().next().is_none() {
            return Ok(vec![
                Action::SetVfs {
                    pf: pf.bdf,
                    count: pf.total_vfs,
                }
                .into(),
            ]);
        }
        Ok(pf
            .vfs
            .iter()
            .filter(|v| v.control != Some(crate::hal::PowerControl::On))
            .map(|v| Action::Wake { bdf: v.bdf }.into())
            .collect())
    }
}

/// A what-if, not vpm: the reactive pool (every VF the PF supports, created
/// the first time a VM finds none) with `spares` free VFs kept awake for
/// whichever VM comes next, and every other free VF parked. It forecasts
/// nothing; it shows what a PF-level hot spare would give.
#[derive(Debug, Clone)]
pub struct Spare {
    pf: Bdf,
    spares: usize,
    dwell: crate::policy::Dwell,
    name: String,
}

impl Spare {
    /// For the PF `pf`, keeping `spares` free VFs awake; a VF is parked
    /// only after `dwell.awake_s` awake and woken only after `dwell.parked_s`
    /// parked (no flaps).
    pub fn new(pf: Bdf, spares: usize, dwell: crate::policy::Dwell) -> Self {
        Self {
            pf,
            spares,
            dwell,
            name: format!("spare-{spares}"),
        }
    }
}

impl Controller for Spare {
    fn name(&self) -> &str {
        &self.name
    }

    fn decide(
        &mut self,
        now: f64,
        host: &HostState,
        demand: &[(String, u32)],
    ) -> Result<Vec<Decision>, ReplayError> {
        let pf = find_pf(host, self.pf)?;
        let wanted: u32 = demand.iter().map(|(_, n)| *n).sum();
        if wanted > 0 && pf.num_vfs == 0 && pf.held_vfs().next().is_none() {
            return Ok(vec![
                Action::SetVfs {
                    pf: pf.bdf,
                    count: pf.total_vfs,
                }
                .into(),
            ]);
        }
        let since = |v: &&scheduler::DeviceState, dwell: f64| {
            v.power_since.is_none_or(|t| now - t >= dwell)
        };
        let mut awake: Vec<&scheduler::DeviceState> = pf
            .vfs
            .iter()
            .filter(|v| !v.user.is_held() && v.readiness() == Readiness::Awake)
            .collect();
        let mut asleep: Vec<&scheduler::DeviceState> = pf
            .vfs
            .iter()
            .filter(|v| !v.user.is_held() && v.readiness() == Readiness::Asleep)
            .collect();
        let mut out = Vec::new();
        if awake.len() < self.spares {
            // Longest parked first.
            asleep.sort_by(|a, b| {
                a.power_since
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&b.power_since.unwrap_or(f64::NEG_INFINITY))
            });
            for v in asleep
                .iter()
                .filter(|v| since(v, self.dwell.parked_s))
                .take(self.spares - awake.len())
            {
                out.push(Action::Wake { bdf: v.bdf }.into());
            }
        } else {
            // Park the ones awake longest beyond the spares.
            awake.sort_by(|a, b| {
                b.power_since
                    .unwrap_or(f64::NEG_INFINITY)
                    .total_cmp(&a.power_since.unwrap_or(f64::NEG_INFINITY))
            });
            for v in awake
                .iter()
                .skip(self.spares)
                .filter(|v| since(v, self.dwell.awake_s))
            {
                out.push(Action::Park { bdf: v.bdf }.into());
            }
        }
        Ok(out)
    }
}

/// What [`Vpm`] knew at its last plan, to explain misses.
#[derive(Debug, Clone)]
struct LastPlan {
    forecasts: Forecasts,
    deferred: Vec<Deferred>,
    held: BTreeMap<String, u32>,
    /// Whether the pool could not grow: below `sriov_totalvfs` with a VF held.
    frozen: bool,
    /// Each VM's demand then (VFs in use).
    demand: BTreeMap<String, u32>,
}

/// vpm as the agent runs it: one [`SeriesForecaster`] per VM for its
/// `vfs:<pf>` gauge, fed each tick; forecasts at the agent's horizons with
/// the upper bound at the VM's class headroom level
/// ([`SeriesForecaster::bounds_at`], else the forecast's own bound), raised
/// to its [`OnsetModel`]'s bound at that level (as the agent's
/// `Pipeline::rebound`); then [`scheduler::plan`] with the policy.
pub struct Vpm {
    pf: Bdf,
    policy: Policy,
    step_s: f64,
    horizons_s: Vec<f64>,
    cfg: ForecasterConfig,
    selections_per_tick: usize,
    forecasters: BTreeMap<String, SeriesForecaster>,
    onsets: BTreeMap<String, OnsetModel>,
    onset_cfg: OnsetConfig,
    /// The headroom of classes with a target under-provision rate.
    headroom: AdaptiveHeadroom<String>,
    last: Option<LastPlan>,
    plans: u64,
    deferred: u64,
    /// Hot-plug: the demand is forecast as `[hotplug] demand` and served by
    /// attaching VFs.
    hotplug: bool,
}

impl Vpm {
    /// vpm for the PF `pf` with `policy`, forecasting series of step
    /// `step_s` at `horizons_s` with `cfg`, at most `selections_per_tick`
    /// model selections per tick over all VMs (as the agent's budget).
    pub fn new(
        pf: Bdf,
        policy: Policy,
        step_s: f64,
        horizons_s: Vec<f64>,
        cfg: ForecasterConfig,
        selections_per_tick: usize,
    ) -> Self {
        Self {
            pf,
            policy,
            step_s,
            horizons_s,
            cfg,
            selections_per_tick,
            forecasters: BTreeMap::new(),
            onsets: BTreeMap::new(),
            onset_cfg: OnsetConfig::default(),
            headroom: AdaptiveHeadroom::new(),
            last: None,
            plans: 0,
            deferred: 0,
            hotplug: false,
        }
    }

    /// vpm connecting VFs to VMs ([`HostConfig::hotplug`](super::HostConfig)):
    /// each VM's demand (VFs it uses) is forecast as the policy's `[hotplug]
    /// demand` resource (which must be set), so the plan attaches and
    /// detaches.
    pub fn hotplug(mut self) -> Self {
        self.hotplug = true;
        self
    }

    fn demand_resource(&self) -> Option<&str> {
        self.policy
            .hotplug
            .demand
            .as_deref()
            .filter(|_| self.hotplug)
    }

    /// Plans made, and deferred entries over them (for reports).
    pub fn counts(&self) -> (u64, u64) {
        (self.plans, self.deferred)
    }

    /// The adaptive headroom of the classes with a target under-provision
    /// rate, as the agent's `vpm plan` shows it.
    pub fn headroom(&self) -> Vec<ClassHeadroom> {
        self.headroom.report()
    }

    /// The resource name the forecasters forecast (`vfs:<pf>`).
    pub fn resource(&self) -> String {
        Resource::Vfs(self.pf).name()
    }
}

impl Controller for Vpm {
    fn name(&self) -> &str {
        "vpm"
    }

    fn decide(
        &mut self,
        now: f64,
        host: &HostState,
        demand: &[(String, u32)],
    ) -> Result<Vec<Decision>, ReplayError> {
        let mut forecasts = Forecasts::default();
        let mut budget = SelectionBudget::new(self.selections_per_tick);
        for (vm, n) in demand {
            let f = match self.forecasters.get_mut(vm) {
                Some(f) => f,
                None => {
                    let f = SeriesForecaster::new(self.step_s, self.cfg.clone())
                        .map_err(|source| ReplayError::Forecast {
                            vm: vm.clone(),
                            source,
                        })?
                        .with_phase(phase_of(vm));
                    self.forecasters.entry(vm.clone()).or_insert(f)
                }
            };
            let err = |source| ReplayError::Forecast {
                vm: vm.clone(),
                source,
            };
            f.observe(&[f64::from(*n)]).map_err(err)?;
            // The outcome of the forecasts made for now.
            self.headroom.resolve(vm, now, f64::from(*n));
            let fc = f
                .forecast_with_budget(now, &self.horizons_s, &mut budget)
                .map_err(err)?;
            let onsets = match self.onsets.get_mut(vm) {
                Some(m) => m,
                None => {
                    let m = OnsetModel::new(self.step_s, self.onset_cfg.clone()).map_err(err)?;
                    self.onsets.entry(vm.clone()).or_insert(m)
                }
            };
            // The point covers the step that ends now.
            onsets.observe(now - self.step_s, *n).map_err(err)?;
            let class = self.policy.class_of(vm);
            let points: Vec<Point> = fc
                .iter()
                .map(|p| {
                    let (level, bound) =
                        self.headroom
                            .bound(f, vm, class.name, class.class.headroom, p);
                    let upper = bound.unwrap_or(p.upper);
                    let (upper, rise) = onsets.raise(
                        now,
                        p.horizon_s,
                        level,
                        upper.max(p.predicted),
                        1.0,
                        scheduler::vf_units,
                    );
                    Point {
                        horizon_s: p.horizon_s,
                        predicted: p.predicted,
                        upper,
                        rise,
                    }
                })
                .collect();
            match self.demand_resource() {
                Some(r) => forecasts.add_other(vm, r, &points),
                None => forecasts.add_points(vm, Resource::Vfs(self.pf), &points),
            }
        }
        let plan = scheduler::plan(now, host, &forecasts, &self.policy);
        self.plans += 1;
        self.deferred += plan.deferred.len() as u64;
        let pf_state = find_pf(host, self.pf).ok();
        let mut held: BTreeMap<String, u32> = BTreeMap::new();
        for v in pf_state.iter().flat_map(|pf| &pf.vfs) {
            if let Some(vm) = v.user.vm() {
                *held.entry(vm.to_owned()).or_insert(0) += 1;
            }
        }
        let frozen =
            pf_state.is_some_and(|pf| pf.num_vfs < pf.total_vfs && pf.held_vfs().next().is_some());
        let decisions = plan
            .actions
            .iter()
            .map(|a| Decision {
                action: a.action.clone(),
                breaks_dwell: a.breaks_dwell,
            })
            .collect();
        self.last = Some(LastPlan {
            forecasts,
            deferred: plan.deferred,
            held,
            frozen,
            demand: demand.iter().cloned().collect(),
        });
        Ok(decisions)
    }

    fn miss_cause(&self, vm: &str, unit: u32, outcome: OnsetOutcome) -> MissCause {
        let Some(last) = &self.last else {
            return MissCause::NoForecast;
        };
        // No free VF and a pool that could not grow: whatever the forecast,
        // this onset could not have found a VF.
        if outcome == OnsetOutcome::Shortfall && last.frozen {
            return MissCause::PoolFrozen;
        }
        if self.foresaw(vm, unit) != Some(true) {
            return MissCause::NotPredicted;
        }
        let mine = last.deferred.iter().filter(|d| d.vm.as_deref() == Some(vm));
        let mut cause = MissCause::Other;
        for d in mine {
            let c = match d.action {
                None => MissCause::Contention,
                Some(Action::SetVfs { .. }) => MissCause::PoolFrozen,
                Some(Action::Wake { .. } | Action::Park { .. }) => MissCause::WakeDeferred,
                // A hot-plug VM waiting for a VF another VM gives up.
                Some(Action::Attach { .. } | Action::Detach { .. }) => MissCause::Contention,
            };
            // The pool is the first obstacle, then contention, then wakes.
            let rank = |c: MissCause| match c {
                MissCause::PoolFrozen => 0,
                MissCause::Contention => 1,
                MissCause::WakeDeferred => 2,
                _ => 3,
            };
            if rank(c) < rank(cause) {
                cause = c;
            }
        }
        cause
    }

    /// Foreseen when the VM's forecast in the last plan (its upper bound
    /// within the plan horizon in whole VFs, capped by its class's `max_vfs`;
    /// `min_vfs` is a reservation, not a forecast) reached what it held then
    /// plus `unit`.
    fn foresaw(&self, vm: &str, unit: u32) -> Option<bool> {
        let last = self.last.as_ref()?;
        if let Some(r) = self.demand_resource() {
            // Hot-plug: the demand forecast in VFs (as the plan counts it)
            // reached what the VM used then plus `unit`.
            let class = self.policy.class_of(vm).class;
            let units = last
                .forecasts
                .vm(vm)
                .and_then(|f| f.resource(r))
                .and_then(|o| o.peak(self.policy.plan.horizon_s))
                .map_or(0, |p| {
                    scheduler::vf_units(p.upper / self.policy.hotplug.per_vf)
                        .min(class.max_attached)
                });
            let used = last.demand.get(vm).copied().unwrap_or(0);
            return Some(units >= used.saturating_add(unit));
        }
        let held = last.held.get(vm).copied().unwrap_or(0);
        let peak = last
            .forecasts
            .vm(vm)
            .and_then(|f| f.vfs.get(&self.pf))
            .and_then(|o| o.peak(self.policy.plan.horizon_s));
        let forecast = peak.map_or(0, |p| scheduler::vf_units(p.upper));
        let class = self.policy.class_of(vm).class;
        let predicted = class.max_vfs.map_or(forecast, |m| forecast.min(m));
        Some(predicted >= held.saturating_add(unit))
    }
}

/// A stable phase for a VM's forecaster (FNV-1a of its name), so VMs do
/// not all reselect their models at the same tick.
fn phase_of(vm: &str) -> u64 {
    vm.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{PowerControl, PowerState};
    use crate::scheduler::{DeviceState, DeviceUse, VmState};

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn vf(i: u8, power: PowerState, control: PowerControl, user: DeviceUse) -> DeviceState {
        DeviceState {
            bdf: Bdf::new(0, 1, 0, i).unwrap(),
            vendor: 0x1b36,
            device: 0x10,
            driver: Some("vfio-pci".into()),
            user,
            power,
            control: Some(control),
            power_since: None,
            idle_since: None,
            wake_latency_s: None,
        }
    }

    fn host(num: u32, vfs: Vec<DeviceState>) -> HostState {
        HostState {
            pfs: vec![PfState {
                bdf: bdf("0000:01:00.0"),
                vendor: 0x1b36,
                device: 0x10,
                total_vfs: 4,
                num_vfs: num,
                vfs,
                last_change: None,
                peak_held: 0,
            }],
            devices: Vec::new(),
            vms: vec![VmState::named("a")],
            reaction_s: 0.0,
        }
    }

    fn actions(d: Vec<Decision>) -> Vec<Action> {
        d.into_iter().map(|d| d.action).collect()
    }

    #[test]
    fn reactive_grows_on_demand_and_parks_what_is_free() {
        let pf = bdf("0000:01:00.0");
        let mut r = Reactive::new(pf);
        let want = vec![("a".to_owned(), 2)];
        let got = actions(r.decide(0.0, &host(0, vec![]), &want).unwrap());
        assert_eq!(
            got,
            vec![Action::SetVfs { pf, count: 4 }],
            "all it may need, at once"
        );
        let held = DeviceUse::Vm("a".into());
        let h = host(
            2,
            vec![
                vf(1, PowerState::D0, PowerControl::Auto, held.clone()),
                vf(2, PowerState::D0, PowerControl::On, DeviceUse::Free),
            ],
        );
        let got = actions(r.decide(10.0, &h, &[("a".to_owned(), 1)]).unwrap());
        assert_eq!(
            got,
            vec![Action::Park {
                bdf: bdf("0000:01:00.2")
            }]
        );
        // Under a held VF the pool cannot grow: it waits.
        let h = host(1, vec![vf(1, PowerState::D0, PowerControl::Auto, held)]);
        assert!(
            r.decide(20.0, &h, &[("a".to_owned(), 3)])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn static_fills_the_pool_and_keeps_every_vf_on() {
        let pf = bdf("0000:01:00.0");
        let mut s = Static::new(pf);
        let got = actions(s.decide(0.0, &host(0, vec![]), &[]).unwrap());
        assert_eq!(got, vec![Action::SetVfs { pf, count: 4 }]);
        let h = host(
            4,
            vec![
                vf(1, PowerState::D0, PowerControl::On, DeviceUse::Free),
                vf(2, PowerState::D3Hot, PowerControl::Auto, DeviceUse::Free),
            ],
        );
        let got = actions(s.decide(0.0, &h, &[]).unwrap());
        assert_eq!(
            got,
            vec![Action::Wake {
                bdf: bdf("0000:01:00.2")
            }]
        );
    }

    #[test]
    fn spare_keeps_that_many_free_vfs_awake_without_flapping() {
        let pf = bdf("0000:01:00.0");
        let dwell = crate::policy::Dwell::default();
        let mut s = Spare::new(pf, 1, dwell);
        assert_eq!(s.name(), "spare-1");
        let want = vec![("a".to_owned(), 1)];
        let got = actions(s.decide(0.0, &host(0, vec![]), &want).unwrap());
        assert_eq!(got, vec![Action::SetVfs { pf, count: 4 }]);
        let parked = |i, since| {
            let mut v = vf(i, PowerState::D3Hot, PowerControl::Auto, DeviceUse::Free);
            v.power_since = Some(since);
            v
        };
        let awake = |i, since| {
            let mut v = vf(i, PowerState::D0, PowerControl::On, DeviceUse::Free);
            v.power_since = Some(since);
            v
        };
        // No spare awake: wake the one parked longest, if its dwell is over.
        let h = host(
            4,
            vec![parked(1, 950.0), parked(2, 900.0), parked(3, 990.0)],
        );
        let got = actions(s.decide(1000.0, &h, &[]).unwrap());
        assert_eq!(
            got,
            vec![Action::Wake {
                bdf: bdf("0000:01:00.2")
            }]
        );
        let h = host(4, vec![parked(1, 990.0)]);
        assert!(
            s.decide(1000.0, &h, &[]).unwrap().is_empty(),
            "parked 10 s ago"
        );
        // Two awake: park the one awake longest once its dwell is over.
        let h = host(4, vec![awake(1, 500.0), awake(2, 990.0)]);
        let got = actions(s.decide(1000.0, &h, &[]).unwrap());
        assert_eq!(
            got,
            vec![Action::Park {
                bdf: bdf("0000:01:00.1")
            }]
        );
    }

    #[test]
    fn vpm_explains_a_miss_from_its_last_plan() {
        let pf = bdf("0000:01:00.0");
        let policy = Policy::parse(crate::policy::SAMPLE, "sample.toml".as_ref()).unwrap();
        let mut v = Vpm::new(
            pf,
            policy,
            10.0,
            vec![60.0, 300.0],
            ForecasterConfig::default(),
            8,
        );
        assert_eq!(
            v.miss_cause("a", 1, OnsetOutcome::Shortfall),
            MissCause::NoForecast
        );
        assert_eq!(v.foresaw("a", 1), None);
        let h = host(0, vec![]);
        for i in 0..30 {
            v.decide(f64::from(i) * 10.0, &h, &[("a".to_owned(), 0)])
                .unwrap();
        }
        assert_eq!(
            v.miss_cause("a", 1, OnsetOutcome::Shortfall),
            MissCause::NotPredicted
        );
        assert_eq!(v.foresaw("a", 1), Some(false));
        // A shortfall under a held VF of a pool below its maximum: frozen.
        let held = DeviceUse::Vm("a".into());
        let h = host(1, vec![vf(1, PowerState::D0, PowerControl::Auto, held)]);
        v.decide(300.0, &h, &[("a".to_owned(), 1)]).unwrap();
        assert_eq!(
            v.miss_cause("a", 1, OnsetOutcome::Shortfall),
            MissCause::PoolFrozen
        );
        // A parked VF woken by the VM: the forecast and the plan decide.
        let woken = v.miss_cause("a", 1, OnsetOutcome::Woken { wait_s: 0.1 });
        if v.foresaw("a", 1) == Some(true) {
            assert_eq!(woken, MissCause::PoolFrozen, "the plan deferred the growth");
        } else {
            assert_eq!(woken, MissCause::NotPredicted);
        }
        assert_eq!(v.counts().0, 31);
        assert_eq!(v.resource(), "vfs:0000:01:00.0");
        // "a" is best-effort, whose sample class sets under_provision = 0.20:
        // its forecasts were scored as their targets came (by the tick at
        // 300 s: the 60 s forecasts of the ticks 0 … 240 s, the 300 s one of
        // the tick at 0 s).
        let r = v.headroom();
        let got: Vec<(&str, f64, f64, u64)> = r
            .iter()
            .map(|c| (c.class.as_str(), c.horizon_s, c.target, c.stats.outcomes))
            .collect();
        assert_eq!(
            got,
            vec![
                ("best-effort", 60.0, 0.2, 25),
                ("best-effort", 300.0, 0.2, 1)
            ]
        );
    }
}
