//! vpm's closed loop on the device side, once a tick: observe the managed
//! devices ([`observe`]), plan from the forecasts ([`crate::scheduler`]), and
//! carry the plan out through the [`executor`] — journaled,
//! under the safety rules, as a dry run unless `apply`.
//!
//! The [`Controller`] runs on the agent's forecasting thread (it needs the
//! forecasts, and its sysfs writes must not block the async runtime).

pub mod csv;
pub mod observe;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

use serde::Serialize;

use crate::executor::journal::Interrupted;
use crate::executor::{
    self, Action, ApplyOptions, ExecuteError, Hotplug, Journal, JournalError, VmRef,
};
use crate::forecast::Forecast;
use crate::hal::{HalError, PciBackend};
use crate::pipeline::SeriesOutlook;
use crate::policy::Policy;
use crate::scheduler::{self, AttachedVf, Forecasts, HostState, Plan, VmHotplug};
use crate::store::long::Row;

pub use observe::Tracker;

/// What became of a planned action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Carried out and read back.
    Applied,
    /// Allowed, not carried out (the agent runs without `--apply`).
    DryRun,
    /// The safety rules refused it.
    Refused,
    /// It failed while being carried out.
    Failed,
}

impl Outcome {
    /// The CSV spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::DryRun => "dry-run",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One planned action and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct ActionRecord {
    /// Unix seconds.
    pub time: f64,
    /// The action.
    pub action: Action,
    /// The VM it serves.
    pub vm: Option<String>,
    /// The VM's class priority.
    pub priority: u32,
    /// Why the scheduler planned it.
    pub reason: String,
    /// What happened.
    pub outcome: Outcome,
    /// How long it took, when carried out.
    pub elapsed_ms: Option<f64>,
    /// The refusal or error, if any.
    pub message: Option<String>,
}

/// The closed loop's state.
pub struct Controller {
    backend: Box<dyn PciBackend + Send>,
    policy: Policy,
    managing: bool,
    apply: bool,
    opts: ApplyOptions,
    journal: Option<Journal>,
    tracker: Tracker,
    host: HostState,
    plan: Option<Plan>,
    plans: Vec<Plan>,
    records: Vec<ActionRecord>,
    /// The hypervisor side of hot-plug, when the agent connects VFs to VMs.
    hotplug: Option<Box<dyn Hotplug + Send>>,
    /// When each (VM, VF) attachment was first seen (or made).
    attached_since: BTreeMap<(String, crate::hal::Bdf), f64>,
    /// VMs whose monitor problem was already logged.
    warned: BTreeSet<String>,
    /// The latest reaction times ([`note_reaction`](Self::note_reaction)).
    reactions: VecDeque<f64>,
    /// Whether a reaction time past the horizon was logged.
    reaction_warned: bool,
    /// Whether a `[hotplug] demand` no series carries was logged.
    demand_warned: bool,
}

/// Most plans and action records kept between exports.
const MAX_PENDING: usize = 100_000;

/// Reaction times kept; the plan counts on the slowest of them.
const REACTIONS: usize = 32;

impl Controller {
    /// A controller acting on `backend` under `policy` (`None`: no policy file,
    /// so it manages nothing and only recommends), connecting VFs to VMs
    /// through `hotplug` when given (the policy's `[hotplug] demand` and
    /// classes with `hotplug = true` say which and when). With `apply`,
    /// actions are carried out and journaled in `state_dir`, and an action a
    /// crash interrupted is reconciled first (returned), hot-plug ones with
    /// what the VM's monitor says too.
    pub fn new(
        backend: Box<dyn PciBackend + Send>,
        policy: Option<Policy>,
        hotplug: Option<Box<dyn Hotplug + Send>>,
        apply: bool,
        state_dir: &Path,
        opts: ApplyOptions,
    ) -> Result<(Self, Vec<Interrupted>), JournalError> {
        let mut interrupted = Vec::new();
        let journal = if apply {
            let (mut j, entries) = Journal::open(state_dir)?;
            interrupted = j.reconcile(
                &entries,
                backend.as_ref(),
                hotplug.as_deref().map(|h| h as &dyn Hotplug),
                crate::units::unix_now(),
            )?;
            Some(j)
        } else {
            None
        };
        let managing = policy.is_some();
        Ok((
            Self {
                backend,
                policy: policy.unwrap_or_default(),
                managing,
                apply,
                opts,
                journal,
                tracker: Tracker::new(),
                host: HostState::default(),
                plan: None,
                plans: Vec::new(),
                records: Vec::new(),
                hotplug,
                attached_since: BTreeMap::new(),
                warned: BTreeSet::new(),
                reactions: VecDeque::new(),
                reaction_warned: false,
                demand_warned: false,
            },
            interrupted,
        ))
    }

    /// Logs once when VMs have forecasts but none of the resource `[hotplug]
    /// demand` names (a typo would otherwise turn hot-plug off silently).
    fn check_demand(&mut self, outlook: &[SeriesOutlook]) {
        let Some(demand) = &self.policy.hotplug.demand else {
            return;
        };
        if self.demand_warned
            || outlook.is_empty()
            || outlook.iter().any(|o| &o.key.resource == demand)
        {
            return;
        }
        self.demand_warned = true;
        let mut names: Vec<&str> = outlook.iter().map(|o| o.key.resource.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.truncate(12);
        log::warn!(
            "[hotplug] demand = {demand:?}: no VM has a series of that name, so hot-plug plans \
             nothing; the series vpm records include {}",
            names.join(", ")
        );
    }

    /// Asks the hypervisor what is hot-plugged into each VM that takes part
    /// in hot-plug, into the host state.
    fn refresh_hotplug(&mut self, now: f64) {
        let Some(hv) = &self.hotplug else { return };
        if self.policy.hotplug.demand.is_none() {
            return;
        }
        let mut seen = BTreeSet::new();
        for vm in &mut self.host.vms {
            if vm.pid == 0 || !self.policy.class_of(&vm.name).class.hotplug {
                continue;
            }
            let facts = hv.vm_facts(&VmRef {
                name: vm.name.clone(),
                pid: vm.pid,
            });
            let usable = match (&facts.monitor, facts.libvirt) {
                (_, true) => Err("managed by libvirt; vpm leaves its monitor alone".to_owned()),
                (Err(e), false) => Err(e.clone()),
                (Ok(_), false) => Ok(()),
            };
            if let Err(why) = usable {
                if self.warned.insert(vm.name.clone()) {
                    log::warn!(
                        "hot-plug: VM {} (pid {}) is left out: {why}",
                        vm.name,
                        vm.pid
                    );
                }
                continue;
            }
            // Usable again: a later problem is logged again.
            if self.warned.remove(&vm.name) {
                log::info!(
                    "hot-plug: VM {} (pid {}) is reachable again",
                    vm.name,
                    vm.pid
                );
            }
            let attached = facts
                .attached
                .iter()
                .map(|a| {
                    let key = (vm.name.clone(), a.vf);
                    let since = *self.attached_since.entry(key.clone()).or_insert(now);
                    seen.insert(key);
                    AttachedVf {
                        vf: a.vf,
                        by_vpm: a.by_vpm(),
                        since: Some(since),
                    }
                })
                .collect();
            vm.hotplug = Some(VmHotplug { attached });
        }
        self.attached_since.retain(|k, _| seen.contains(k));
    }

    /// The class of `vm` and its headroom: how far above the forecasts the
    /// upper bounds of its forecasts are taken.
    pub fn headroom(&self, vm: &str) -> (&str, crate::policy::Headroom) {
        let c = self.policy.class_of(vm);
        (c.name, c.class.headroom)
    }

    /// Level series the forecasts should learn onsets of, besides the
    /// `vfs:<pf>` gauges: the policy's `[hotplug] demand` and how much of
    /// it one VF serves (`per_vf`), if set.
    pub fn level_series(&self) -> Vec<(String, f64)> {
        let h = &self.policy.hotplug;
        h.demand.iter().map(|d| (d.clone(), h.per_vf)).collect()
    }

    /// Whether a policy file says what to manage.
    pub fn managing(&self) -> bool {
        self.managing
    }

    /// Whether it acts on its backend (`vpm run --apply`, or the demo on its
    /// simulated devices) rather than only planning.
    pub fn applies(&self) -> bool {
        self.apply
    }

    /// Reads the managed devices and returns this tick's `vfs:<pf>` rows for
    /// the running `vms` (name, pid).
    pub fn observe(&mut self, now: f64, vms: &[(String, u32)]) -> Result<Vec<Row>, HalError> {
        let names: Vec<String> = vms.iter().map(|(n, _)| n.clone()).collect();
        self.host = self
            .tracker
            .observe(now, self.backend.as_ref(), &self.policy, &names)?;
        for vm in &mut self.host.vms {
            if let Some((_, pid)) = vms.iter().find(|(n, _)| *n == vm.name) {
                vm.pid = *pid;
            }
        }
        Ok(observe::vf_usage(&self.host, vms)
            .into_iter()
            .map(|(vm, pid, resource, value)| Row {
                timestamp: now,
                vm,
                pid,
                resource,
                value,
            })
            .collect())
    }

    /// Records how long the agent took from the data of a plan (`now` of
    /// [`step`](Self::step)) until it could plan: forecasting under load, a
    /// slow host. Plans wake devices earlier by the slowest of the latest
    /// 32 ([`HostState::reaction_s`]), at most the plan horizon (a slower
    /// agent is said in the log), so a wake that waits for them still comes
    /// before the use. Negative or non-finite values are ignored.
    pub fn note_reaction(&mut self, seconds: f64) {
        if seconds.is_finite() && seconds >= 0.0 {
            if self.reactions.len() == REACTIONS {
                self.reactions.pop_front();
            }
            self.reactions.push_back(seconds);
        }
    }

    /// Plans from `outlook` and carries the plan out (or records the dry run).
    pub fn step(&mut self, now: f64, outlook: &[SeriesOutlook]) -> &Plan {
        let mut forecasts = Forecasts::default();
        for o in outlook {
            let (ahead, rises) = from_now(now, &o.forecasts, &o.rises);
            forecasts.add_with_rises(&o.key.vm, &o.key.resource, &ahead, &rises);
        }
        self.refresh_hotplug(now);
        self.check_demand(outlook);
        let slowest = self.reactions.iter().copied().fold(0.0, f64::max);
        let cap = self.policy.plan.horizon_s;
        if slowest > cap && !self.reaction_warned {
            self.reaction_warned = true;
            log::warn!(
                "vpm took {slowest:.1} s from its data to a plan, more than the plan horizon \
                 ({cap} s, [plan] horizon_s): devices are woken at most {cap} s early, and \
                 those that take longer to wake than the plan sees ahead are no longer parked; \
                 a host this loaded needs a longer horizon or fewer series"
            );
        }
        self.host.reaction_s = slowest.min(cap);
        let plan = scheduler::plan(now, &self.host, &forecasts, &self.policy);
        for planned in &plan.actions {
            let before = self.pool_size(&planned.action);
            let result = executor::execute_with(
                self.backend.as_ref(),
                self.hotplug.as_deref().map(|h| h as &dyn Hotplug),
                Some(&self.policy),
                planned.action.clone(),
                self.apply,
                &self.opts,
                self.journal.as_mut(),
            );
            // Carried out (even if its outcome could not be journaled): the
            // pool's and the attachment's clocks start now.
            let carried_out = match &result {
                Ok(report) => report.applied,
                Err(ExecuteError::Unjournaled { carried_out, .. }) => *carried_out,
                Err(_) => false,
            };
            if carried_out {
                if let (&Action::SetVfs { pf, count }, Some(from)) = (&planned.action, before) {
                    self.tracker.pool_changed(pf, from, count, now);
                }
                if let Action::Attach { vm, vf } = &planned.action {
                    self.attached_since.insert((vm.name.clone(), *vf), now);
                }
            }
            let (outcome, elapsed_ms, message) = match result {
                Ok(report) if report.applied => {
                    let ms = report
                        .steps
                        .iter()
                        .filter_map(|s| s.elapsed_ms)
                        .sum::<f64>();
                    (Outcome::Applied, Some(ms), None)
                }
                Err(
                    e @ ExecuteError::Unjournaled {
                        carried_out: true, ..
                    },
                ) => (Outcome::Applied, None, Some(e.to_string())),
                Ok(_) => (Outcome::DryRun, None, None),
                Err(e @ ExecuteError::Refused { .. }) => {
                    (Outcome::Refused, None, Some(e.to_string()))
                }
                Err(e) => (Outcome::Failed, None, Some(e.to_string())),
            };
            if outcome == Outcome::Failed || outcome == Outcome::Refused {
                log::warn!("{}: {}", planned.action, message.as_deref().unwrap_or(""));
            } else {
                log::info!(
                    "{} {}: {}",
                    outcome.as_str(),
                    planned.action,
                    planned.reason
                );
            }
            if self.records.len() < MAX_PENDING {
                self.records.push(ActionRecord {
                    time: now,
                    action: planned.action.clone(),
                    vm: planned.vm.clone(),
                    priority: planned.priority,
                    reason: planned.reason.clone(),
                    outcome,
                    elapsed_ms,
                    message,
                });
            }
        }
        if self.plans.len() < MAX_PENDING && (!plan.actions.is_empty() || !plan.deferred.is_empty())
        {
            self.plans.push(plan.clone());
        }
        self.plan.insert(plan)
    }

    fn pool_size(&self, action: &Action) -> Option<u32> {
        match *action {
            Action::SetVfs { pf, .. } => self
                .host
                .pfs
                .iter()
                .find(|p| p.bdf == pf)
                .map(|p| p.num_vfs),
            _ => None,
        }
    }

    /// The latest plan.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// The latest host state.
    pub fn host(&self) -> &HostState {
        &self.host
    }

    /// Plans with actions and action records since the last call.
    pub fn take(&mut self) -> (Vec<Plan>, Vec<ActionRecord>) {
        (
            std::mem::take(&mut self.plans),
            std::mem::take(&mut self.records),
        )
    }

    /// Puts back what [`take`](Self::take) gave when it could not be
    /// exported, ahead of what came since (at most the usual bound), so the
    /// next export writes it.
    pub fn put_back(&mut self, mut plans: Vec<Plan>, mut records: Vec<ActionRecord>) {
        plans.append(&mut self.plans);
        plans.truncate(MAX_PENDING);
        self.plans = plans;
        records.append(&mut self.records);
        records.truncate(MAX_PENDING);
        self.records = records;
    }
}

/// `forecasts` (and their `rises`, by index) with each horizon counted from
/// `now` (the plan's time) to its target, not from the end of its data: the
/// store closes a step only once it is over, so the data ends up to a step
/// or two before `now`, and a forecast reaches that much less far ahead of
/// the plan. Of the targets already past, the latest stands for now
/// (horizon 0) and the others are dropped: points of equal horizon add up,
/// which is for different series, not for one.
fn from_now(
    now: f64,
    forecasts: &[Forecast],
    rises: &[Option<f64>],
) -> (Vec<Forecast>, Vec<Option<f64>>) {
    let latest_past = forecasts
        .iter()
        .map(|f| f.target_time)
        .filter(|&t| t <= now)
        .fold(f64::NEG_INFINITY, f64::max);
    forecasts
        .iter()
        .enumerate()
        // (NaN targets stay, with their own horizon.)
        .filter(|(_, f)| f.target_time.partial_cmp(&latest_past) != Some(std::cmp::Ordering::Less))
        .map(|(i, f)| {
            let ahead = f.target_time - now;
            let horizon_s = if ahead.is_finite() {
                ahead.clamp(0.0, f.horizon_s.max(0.0))
            } else {
                f.horizon_s
            };
            (
                Forecast {
                    horizon_s,
                    ..f.clone()
                },
                rises.get(i).copied().flatten(),
            )
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Forecast;
    use crate::forecast::models::ModelKind;
    use crate::hal::sim::SimPci;
    use crate::hal::{Bdf, HolderInfo, PowerState};
    use crate::store::SeriesKey;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    /// Forecasts from data that ends at 1000 s.
    fn outlook(vm: &str, resource: &str, value: f64) -> SeriesOutlook {
        SeriesOutlook {
            key: SeriesKey {
                vm: vm.into(),
                resource: resource.into(),
            },
            forecasts: [60.0, 300.0]
                .iter()
                .map(|&h| Forecast {
                    horizon_s: h,
                    target_time: 1000.0 + h,
                    predicted: value,
                    lower: value,
                    upper: value,
                    model: ModelKind::LastValue,
                    backtest_wape: None,
                })
                .collect(),
            rises: Vec::new(),
        }
    }

    fn controller(sim: SimPci, apply: bool, dir: &Path) -> Controller {
        let policy =
            Policy::parse("[devices]\nallow = [\"0000:01:00.0\"]\n", "t".as_ref()).unwrap();
        let opts = ApplyOptions {
            write_timeout: std::time::Duration::from_secs(1),
            settle_timeout: std::time::Duration::from_millis(50),
        };
        Controller::new(Box::new(sim), Some(policy), None, apply, dir, opts)
            .unwrap()
            .0
    }

    #[test]
    fn a_hotplug_demand_no_series_carries_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy::parse(
            "[devices]\nallow = [\"0000:01:00.0\"]\n[hotplug]\ndemand = \"cpuu\"\n",
            "t".as_ref(),
        )
        .unwrap();
        let (mut c, _) = Controller::new(
            Box::new(SimPci::new()),
            Some(policy),
            None,
            false,
            dir.path(),
            ApplyOptions::default(),
        )
        .unwrap();
        c.step(1000.0, &[]);
        assert!(!c.demand_warned, "no series yet: nothing to say");
        c.step(1000.0, &[outlook("web", "cpu", 1.0)]);
        assert!(c.demand_warned);
    }

    #[test]
    fn predicted_demand_creates_and_wakes_vfs_ahead_of_use() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(sim, true, dir.path());
        let vms = [("web".to_owned(), 11)];
        let rows = c.observe(1000.0, &vms).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].resource.as_str(), rows[0].value),
            ("vfs:0000:01:00.0", 0.0)
        );
        // web is predicted to use 2 VFs: the pool grows before it asks.
        let plan = c
            .step(1000.0, &[outlook("web", "vfs:0000:01:00.0", 2.0)])
            .clone();
        assert!(
            plan.actions
                .iter()
                .any(|a| a.action == Action::SetVfs { pf, count: 2 }),
            "{plan:#?}"
        );
        let (_, records) = c.take();
        assert!(
            records.iter().all(|r| r.outcome == Outcome::Applied),
            "{records:#?}"
        );
        c.observe(1010.0, &vms).unwrap();
        assert_eq!(c.host().pfs[0].num_vfs, 2);
        let csv = csv::actions(&records);
        assert!(csv.starts_with(csv::ACTIONS_HEADER));
        assert!(csv.contains(",set-vfs,0000:01:00.0,2,web,"), "{csv}");

        // An export that failed puts its records back, ahead of newer ones.
        let mut newer = records.clone();
        for r in &mut newer {
            r.time += 10.0;
        }
        c.put_back(Vec::new(), newer.clone());
        c.put_back(Vec::new(), records.clone());
        let (_, again) = c.take();
        let key = |r: &[ActionRecord]| format!("{r:?}");
        assert_eq!(key(&again), key(&[records, newer].concat()));
    }

    #[test]
    fn plans_count_forecast_horizons_from_their_own_time() {
        let o = outlook("web", "vfs:0000:01:00.0", 1.0);
        let rises = [Some(0.1), Some(0.2)];
        let h = |now: f64| -> (Vec<f64>, Vec<Option<f64>>) {
            let (f, r) = from_now(now, &o.forecasts, &rises);
            (f.iter().map(|f| f.horizon_s).collect(), r)
        };
        assert_eq!(h(1000.0), (vec![60.0, 300.0], rises.to_vec()));
        // The data ended 10 s before the plan: its 60 s forecast targets a
        // time 50 s ahead.
        assert_eq!(h(1010.0).0, vec![50.0, 290.0]);
        // A target already past counts as now; a plan before the data's end
        // (a clock step) keeps the forecasts' own horizons.
        assert_eq!(h(1100.0).0, vec![0.0, 200.0]);
        assert_eq!(h(900.0).0, vec![60.0, 300.0]);
        // Both past: only the later stands for now (with its rise), so the
        // series does not add up with itself.
        assert_eq!(h(1400.0), (vec![0.0], vec![Some(0.2)]));
        let mut f = Forecasts::default();
        let (ahead, r) = from_now(1400.0, &o.forecasts, &rises);
        f.add_with_rises("web", "vfs:0000:01:00.0", &ahead, &r);
        let pf = "0000:01:00.0".parse().expect("bdf");
        let peak = f
            .vm("web")
            .and_then(|v| v.vfs.get(&pf))
            .and_then(|o| o.peak(0.0));
        assert_eq!(peak.map(|p| p.upper), Some(1.0));
        // Not a number: the forecast's own horizon.
        assert_eq!(h(f64::NAN).0, vec![60.0, 300.0]);
        let (g, _) = from_now(1010.0, &o.forecasts, &[]);
        assert_eq!((g[0].target_time, g[0].predicted), (1060.0, 1.0));
    }

    #[test]
    fn plans_count_on_the_slowest_of_the_latest_reaction_times() {
        let sim = SimPci::new();
        sim.add_pf(bdf("0000:01:00.0"), 4, Some("nvme"));
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(sim, false, dir.path());
        let vms = [("web".to_owned(), 11)];
        c.observe(1000.0, &vms).unwrap();
        c.step(1000.0, &[]);
        assert_eq!(c.host().reaction_s, 0.0, "none measured");
        c.note_reaction(2.5);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            c.note_reaction(bad);
        }
        c.note_reaction(0.1);
        c.step(1001.0, &[]);
        assert_eq!(c.host().reaction_s, 2.5);
        // The slow one ages out after 32 more.
        for _ in 0..32 {
            c.note_reaction(0.2);
        }
        c.observe(1002.0, &vms).unwrap();
        c.step(1002.0, &[]);
        assert_eq!(c.host().reaction_s, 0.2);
        // At most the plan horizon: waking earlier than it plans for is moot.
        c.note_reaction(1.0e6);
        c.step(1003.0, &[]);
        assert_eq!(c.host().reaction_s, c.policy.plan.horizon_s);
    }

    #[test]
    fn without_apply_nothing_changes_and_without_policy_nothing_is_planned() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(sim, false, dir.path());
        let vms = [("web".to_owned(), 11)];
        c.observe(1000.0, &vms).unwrap();
        c.step(1000.0, &[outlook("web", "vfs:0000:01:00.0", 2.0)]);
        let (plans, records) = c.take();
        assert_eq!(plans.len(), 1);
        assert!(!records.is_empty() && records.iter().all(|r| r.outcome == Outcome::DryRun));
        c.observe(1010.0, &vms).unwrap();
        assert_eq!(c.host().pfs[0].num_vfs, 0, "a dry run changes nothing");
        assert!(
            !dir.path()
                .join(crate::executor::journal::FILE_NAME)
                .exists()
        );

        let sim = SimPci::new();
        sim.add_pf(pf, 4, Some("nvme"));
        let opts = ApplyOptions::default();
        let (mut c, _) =
            Controller::new(Box::new(sim), None, None, true, dir.path(), opts).unwrap();
        assert!(!c.managing());
        c.observe(1000.0, &vms).unwrap();
        assert!(
            c.step(1000.0, &[outlook("web", "vfs:0000:01:00.0", 2.0)])
                .actions
                .is_empty()
        );
    }

    #[test]
    fn a_held_vf_is_safe_even_if_the_plan_asks() {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        sim.set_sriov_numvfs(pf, 1, std::time::Duration::from_secs(1))
            .unwrap();
        let vf = bdf("0000:01:00.1");
        sim.bind_driver(vf, "vfio-pci", std::time::Duration::from_secs(1))
            .unwrap();
        sim.open(
            vf,
            HolderInfo {
                pid: 11,
                comm: "qemu".into(),
                vm: Some("web".into()),
            },
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = controller(sim, true, dir.path());
        let vms = [("web".to_owned(), 11), ("db".to_owned(), 12)];
        c.observe(1000.0, &vms).unwrap();
        // db wants 3 more: growing would pass through 0 and destroy web's VF.
        c.step(
            1000.0,
            &[
                outlook("web", "vfs:0000:01:00.0", 1.0),
                outlook("db", "vfs:0000:01:00.0", 3.0),
            ],
        );
        c.observe(1010.0, &vms).unwrap();
        let pfs = &c.host().pfs[0];
        assert_eq!(pfs.num_vfs, 1);
        assert_eq!(pfs.vfs[0].power, PowerState::D0);
        let plan = c.plan().unwrap();
        assert!(
            plan.actions
                .iter()
                .all(|a| !matches!(a.action, Action::SetVfs { .. })),
            "{plan:#?}"
        );
        assert!(
            plan.deferred.iter().any(|d| d.reason.contains("held")),
            "{plan:#?}"
        );
    }
}
