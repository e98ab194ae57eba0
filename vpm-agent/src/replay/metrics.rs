//! What a replay scores, from the events of its timeline (pure: no host, no
//! policy, no clock): [`Tally`] takes onsets, device occupancy per interval,
//! unmet demand and applied actions, and [`Tally::finish`] gives [`Metrics`].
//!
//! - **Onset**: one more VF a VM starts to use. It *found the device ready*
//!   when a VF was free, awake (D0) and done waking or being created at that
//!   instant ([`OnsetOutcome::Ready`]); it *woke one* when the only free VFs
//!   were parked or still waking, so the VM waited ([`OnsetOutcome::Woken`]);
//!   it met a *shortfall* when no VF was free at all
//!   ([`OnsetOutcome::Shortfall`]: the VM waits until one is), and a
//!   shortfall *at capacity* when moreover every VF the PF supports existed
//!   and was held ([`OnsetOutcome::AtCapacity`]): no policy could have served
//!   it, so the ready share leaves those out ([`Metrics::ready_share`]).
//! - **Occupancy**: over each interval, every VF that exists is held by a VM,
//!   idle and awake, or idle and parked in D3hot ([`SlotState`]). The parked
//!   share is parked idle time over idle time.
//! - **Flap**: an applied action that reverses the previous change of the same
//!   thing within its dwell ([`Dwell`]): a wake less than `parked_s` after a
//!   park of the device, a park less than `awake_s` after a wake, a VF count
//!   change in the other direction less than `vf_count_s` after the last one.
//!   State changes the VMs cause (a parked VF resumes when a VM opens it) are
//!   not the policy's and are not flaps.
//!
//! Only what happens at or after `score_from` counts (the replay's warm-up is
//! left out), but the flap history runs from the start: a wake in the scored
//! window that reverses a park of the warm-up is a flap.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::executor::Action;
use crate::hal::Bdf;
use crate::policy::Dwell;

/// What a VM found when it started to use one more VF.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum OnsetOutcome {
    /// A free VF was awake and ready: no wait.
    Ready,
    /// A free VF existed but was parked or still waking: the VM waited this long.
    Woken {
        /// Seconds the VM waited for the VF to reach D0.
        wait_s: f64,
    },
    /// No VF was free, though the PF could have had more: the VM waits until
    /// one is.
    Shortfall,
    /// No VF was free and every VF the PF supports was held: no policy could
    /// have served it; the VM waits until one is.
    AtCapacity,
}

/// Why an onset did not find its device ready, as far as the policy can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MissCause {
    /// The policy does not forecast (reactive, static), or had not planned yet.
    NoForecast,
    /// The last forecast before the onset did not foresee it: the VM's upper
    /// bound within the plan horizon, in whole VFs, did not exceed what it held.
    NotPredicted,
    /// No free VF, and the pool could not grow: it was below `sriov_totalvfs`
    /// with a VF held (a VF count changes only while none is), or the plan
    /// deferred its growth (a held VF, the VF count dwell).
    PoolFrozen,
    /// Foreseen, but higher-priority or larger demand took the PF's VFs.
    Contention,
    /// Foreseen, but the wake was deferred (dwell, action budget).
    WakeDeferred,
    /// Foreseen and planned for, but the VF was not ready for this VM (another
    /// VM's onset took it first, or the plan kept it for later).
    Other,
}

impl MissCause {
    /// Every cause, in report order.
    pub const ALL: [MissCause; 6] = [
        MissCause::NoForecast,
        MissCause::NotPredicted,
        MissCause::PoolFrozen,
        MissCause::Contention,
        MissCause::WakeDeferred,
        MissCause::Other,
    ];

    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            MissCause::NoForecast => "no forecast (the policy does not predict)",
            MissCause::NotPredicted => {
                "not predicted (the VM's upper bound within the horizon, in whole VFs, did not \
                 exceed what it held)"
            }
            MissCause::PoolFrozen => {
                "no free VF, and the pool could not grow (below its maximum, with a VF held)"
            }
            MissCause::Contention => "predicted, but higher-priority demand took the VFs",
            MissCause::WakeDeferred => "predicted, but the wake was deferred (dwell or budget)",
            MissCause::Other => "predicted, but the VF was not ready for it",
        }
    }
}

/// Where one existing VF stands over an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// A VM holds it (hot-plug: uses it).
    Held,
    /// Hot-plug: attached to a VM that does not use it now.
    AttachedIdle,
    /// Free and in D0 (awake, or waking).
    IdleAwake,
    /// Free and parked in D3hot.
    IdleParked,
}

/// An action the host carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// When, unix seconds.
    pub at: f64,
    /// The action.
    pub action: Action,
    /// For [`Action::SetVfs`], the VF count before it.
    pub from: Option<u32>,
    /// Whether the plan said it cuts a dwell short (`preempt_dwell`).
    pub breaks_dwell: bool,
}

/// Onsets of one VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmOnsets {
    /// Onsets (VFs the VM started to use).
    pub onsets: u64,
    /// Those that found a VF ready.
    pub ready: u64,
    /// Those that woke a parked or waking VF.
    pub woken: u64,
    /// Those that found no free VF (the PF could have had more).
    pub shortfalls: u64,
    /// Those that found every VF of the PF held.
    pub at_capacity: u64,
    /// Those the policy's last forecast before them foresaw (policies that
    /// forecast only).
    pub foreseen: u64,
    /// Why the others were not ready (those at capacity left out).
    pub causes: BTreeMap<MissCause, u64>,
}

/// A replay's scores over its scored window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Seconds scored (the replay after its warm-up).
    pub scored_s: f64,
    /// Onsets.
    pub onsets: u64,
    /// Onsets that found a VF ready.
    pub ready: u64,
    /// Onsets that woke a parked or waking VF.
    pub woken: u64,
    /// Total wait of the woken onsets, seconds.
    pub woken_wait_s: f64,
    /// Onsets that found no free VF (the PF could have had more).
    pub shortfalls: u64,
    /// Onsets that found every VF the PF supports held (no policy could serve them).
    pub at_capacity: u64,
    /// Onsets the policy's last forecast before them foresaw.
    pub foreseen: u64,
    /// Shortfall onsets (at capacity or not) served later.
    pub shortfalls_served: u64,
    /// Total wait of the served shortfall onsets, seconds.
    pub shortfall_wait_s: f64,
    /// Longest wait of a served shortfall onset, seconds.
    pub shortfall_wait_max_s: f64,
    /// VF-seconds of demand no VF served.
    pub unmet_vf_s: f64,
    /// VF-seconds held by VMs.
    pub held_vf_s: f64,
    /// VF-seconds idle in D0.
    pub idle_awake_vf_s: f64,
    /// VF-seconds idle in D3hot.
    pub idle_parked_vf_s: f64,
    /// Hot-plug: VF-seconds attached to a VM that did not use them.
    pub attached_idle_vf_s: f64,
    /// Hot-plug: attaches applied.
    pub attaches: u64,
    /// Hot-plug: detaches applied.
    pub detaches: u64,
    /// VF-slot-seconds without a VF (below `sriov_totalvfs`).
    pub absent_vf_s: f64,
    /// Actions applied, by kind: VF count changes, wakes, parks (attaches and
    /// detaches below).
    pub set_vfs: u64,
    /// Wakes applied.
    pub wakes: u64,
    /// Parks applied.
    pub parks: u64,
    /// Actions the executor refused (its safety rules).
    pub refused: u64,
    /// Actions that failed while being carried out.
    pub failed: u64,
    /// Flaps (changes reversed within their dwell).
    pub flaps: u64,
    /// Of those, the ones the plan marked as cutting a dwell short on purpose
    /// (a class with `preempt_dwell`).
    pub flaps_preempt: u64,
    /// Onsets per VM.
    pub per_vm: BTreeMap<String, VmOnsets>,
}

impl Metrics {
    /// Onsets some policy could have served: those not at capacity.
    pub fn servable(&self) -> u64 {
        self.onsets - self.at_capacity
    }

    /// Share of the servable onsets that found a VF ready (`None` without
    /// any): onsets that found every VF of the PF held are left out.
    pub fn ready_share(&self) -> Option<f64> {
        ratio(self.ready as f64, self.servable() as f64)
    }

    /// Parked idle time over idle time (`None` without idle time).
    pub fn parked_share(&self) -> Option<f64> {
        ratio(
            self.idle_parked_vf_s,
            self.idle_parked_vf_s + self.idle_awake_vf_s,
        )
    }

    /// Actions applied.
    pub fn actions(&self) -> u64 {
        self.set_vfs + self.wakes + self.parks + self.attaches + self.detaches
    }

    /// Hot-plug: the share of attached VF-time the VM did not use (`None`
    /// without attached time).
    pub fn attached_idle_share(&self) -> Option<f64> {
        ratio(
            self.attached_idle_vf_s,
            self.attached_idle_vf_s + self.held_vf_s,
        )
    }

    /// One line for a hot-plug replay: `connected before 96.4% of onsets,
    /// attached but unused 30.0% of attached time, 4.2 attaches/h`.
    pub fn hotplug_line(&self) -> String {
        let pct =
            |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |x| format!("{:.1}%", x * 100.0));
        format!(
            "connected before {} of onsets, attached but unused {} of attached time, {} attaches/h",
            pct(self.ready_share()),
            pct(self.attached_idle_share()),
            ratio(self.attaches as f64, self.scored_s / 3600.0)
                .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.1}")),
        )
    }

    /// Actions applied per hour of the scored window.
    pub fn actions_per_hour(&self) -> Option<f64> {
        ratio(self.actions() as f64, self.scored_s / 3600.0)
    }

    /// The one-line summary: `ready 96.4% of onsets, parked 71.0% of idle
    /// time, 12.3 actions/h`.
    pub fn summary_line(&self) -> String {
        let pct =
            |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |x| format!("{:.1}%", x * 100.0));
        format!(
            "ready {} of onsets, parked {} of idle time, {} actions/h",
            pct(self.ready_share()),
            pct(self.parked_share()),
            self.actions_per_hour()
                .map_or_else(|| "n/a".to_owned(), |x| format!("{x:.1}")),
        )
    }

    /// The miss causes over every VM.
    pub fn causes(&self) -> BTreeMap<MissCause, u64> {
        let mut out = BTreeMap::new();
        for v in self.per_vm.values() {
            for (c, n) in &v.causes {
                *out.entry(*c).or_insert(0) += n;
            }
        }
        out
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The last policy change of a device's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    Wake,
    Park,
}

/// Accumulates a replay's events into [`Metrics`].
#[derive(Debug, Clone)]
pub struct Tally {
    dwell: Dwell,
    score_from: f64,
    m: Metrics,
    moves: BTreeMap<Bdf, (Move, f64)>,
    /// Per PF: when its count last changed and in which direction (+1 / −1).
    resizes: BTreeMap<Bdf, (f64, i8)>,
}

impl Tally {
    /// A tally that scores from `score_from` (unix seconds), judging flaps
    /// by `dwell`.
    pub fn new(dwell: Dwell, score_from: f64) -> Self {
        Self {
            dwell,
            score_from,
            m: Metrics::default(),
            moves: BTreeMap::new(),
            resizes: BTreeMap::new(),
        }
    }

    fn scored(&self, at: f64) -> bool {
        at >= self.score_from
    }

    /// Registers a VM that may have no onset (so it is listed).
    pub fn vm(&mut self, vm: &str) {
        self.m.per_vm.entry(vm.to_owned()).or_default();
    }

    /// `vm` started to use one more VF at `at` and found `outcome`; `cause`
    /// says why it was not ready (ignored for a ready onset), `foreseen`
    /// whether the policy's forecast saw it coming.
    pub fn onset(
        &mut self,
        at: f64,
        vm: &str,
        outcome: OnsetOutcome,
        cause: MissCause,
        foreseen: bool,
    ) {
        if !self.scored(at) {
            return;
        }
        let v = self.m.per_vm.entry(vm.to_owned()).or_default();
        v.onsets += 1;
        self.m.onsets += 1;
        if foreseen {
            v.foreseen += 1;
            self.m.foreseen += 1;
        }
        match outcome {
            OnsetOutcome::Ready => {
                v.ready += 1;
                self.m.ready += 1;
                return;
            }
            OnsetOutcome::Woken { wait_s } => {
                v.woken += 1;
                self.m.woken += 1;
                self.m.woken_wait_s += wait_s.max(0.0);
            }
            OnsetOutcome::Shortfall => {
                v.shortfalls += 1;
                self.m.shortfalls += 1;
            }
            OnsetOutcome::AtCapacity => {
                v.at_capacity += 1;
                self.m.at_capacity += 1;
                return;
            }
        }
        *v.causes.entry(cause).or_insert(0) += 1;
    }

    /// A shortfall onset of `onset_at` got its VF at `at`.
    pub fn served(&mut self, onset_at: f64, at: f64) {
        if !self.scored(onset_at) {
            return;
        }
        let wait = (at - onset_at).max(0.0);
        self.m.shortfalls_served += 1;
        self.m.shortfall_wait_s += wait;
        self.m.shortfall_wait_max_s = self.m.shortfall_wait_max_s.max(wait);
    }

    /// Over `[at, at + dt)` the existing VFs stood as `slots` and `absent`
    /// VF slots of the PFs had no VF.
    pub fn occupancy(&mut self, at: f64, dt: f64, slots: &[SlotState], absent: u32) {
        if !self.scored(at) || dt.is_nan() || dt <= 0.0 {
            return;
        }
        for s in slots {
            match s {
                SlotState::Held => self.m.held_vf_s += dt,
                SlotState::AttachedIdle => self.m.attached_idle_vf_s += dt,
                SlotState::IdleAwake => self.m.idle_awake_vf_s += dt,
                SlotState::IdleParked => self.m.idle_parked_vf_s += dt,
            }
        }
        self.m.absent_vf_s += f64::from(absent) * dt;
        self.m.scored_s += dt;
    }

    /// Over `[at, at + dt)`, `units` VFs of demand were not served.
    pub fn unmet(&mut self, at: f64, dt: f64, units: u32) {
        if self.scored(at) && dt > 0.0 {
            self.m.unmet_vf_s += f64::from(units) * dt;
        }
    }

    /// An action was refused by the executor's safety rules at `at`.
    pub fn refused(&mut self, at: f64) {
        if self.scored(at) {
            self.m.refused += 1;
        }
    }

    /// An action failed while being carried out at `at`.
    pub fn failed(&mut self, at: f64) {
        if self.scored(at) {
            self.m.failed += 1;
        }
    }

    /// The device `bdf` is gone (its PF was resized): its history ends.
    pub fn forget(&mut self, bdf: Bdf) {
        self.moves.remove(&bdf);
    }

    /// An applied action; returns whether it is a flap.
    pub fn action(&mut self, a: Applied) -> bool {
        let a = &a;
        let scored = self.scored(a.at);
        let flap = match &a.action {
            &Action::Wake { bdf } => {
                let flap = matches!(self.moves.get(&bdf),
                    Some(&(Move::Park, t)) if a.at - t < self.dwell.parked_s);
                self.moves.insert(bdf, (Move::Wake, a.at));
                if scored {
                    self.m.wakes += 1;
                }
                flap
            }
            &Action::Park { bdf } => {
                let flap = matches!(self.moves.get(&bdf),
                    Some(&(Move::Wake, t)) if a.at - t < self.dwell.awake_s);
                self.moves.insert(bdf, (Move::Park, a.at));
                if scored {
                    self.m.parks += 1;
                }
                flap
            }
            &Action::SetVfs { pf, count } => {
                let dir: i8 = match a.from {
                    Some(from) if count > from => 1,
                    Some(from) if count < from => -1,
                    _ => 0,
                };
                let flap = dir != 0
                    && matches!(self.resizes.get(&pf),
                        Some(&(t, d)) if d == -dir && a.at - t < self.dwell.vf_count_s);
                if dir != 0 {
                    self.resizes.insert(pf, (a.at, dir));
                }
                if scored {
                    self.m.set_vfs += 1;
                }
                flap
            }
            Action::Attach { .. } => {
                if scored {
                    self.m.attaches += 1;
                }
                false
            }
            Action::Detach { .. } => {
                if scored {
                    self.m.detaches += 1;
                }
                false
            }
        };
        if flap && scored {
            self.m.flaps += 1;
            if a.breaks_dwell {
                self.m.flaps_preempt += 1;
            }
        }
        flap && scored
    }

    /// The scores.
    pub fn finish(self) -> Metrics {
        self.m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: f64 = 1_000_000.0;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn dwell() -> Dwell {
        Dwell {
            awake_s: 60.0,
            parked_s: 60.0,
            vf_count_s: 300.0,
        }
    }

    fn applied(at: f64, action: Action) -> Applied {
        Applied {
            at,
            action,
            from: None,
            breaks_dwell: false,
        }
    }

    #[test]
    fn an_onset_is_ready_or_not_and_misses_keep_their_cause() {
        let mut t = Tally::new(dwell(), T);
        t.vm("idle-vm");
        t.onset(
            T - 10.0,
            "a",
            OnsetOutcome::Shortfall,
            MissCause::Other,
            false,
        );
        t.onset(T, "a", OnsetOutcome::Ready, MissCause::NotPredicted, true);
        t.onset(
            T + 10.0,
            "a",
            OnsetOutcome::Woken { wait_s: 0.125 },
            MissCause::NotPredicted,
            false,
        );
        t.onset(
            T + 20.0,
            "b",
            OnsetOutcome::Shortfall,
            MissCause::PoolFrozen,
            false,
        );
        t.onset(
            T + 30.0,
            "b",
            OnsetOutcome::AtCapacity,
            MissCause::NotPredicted,
            false,
        );
        t.served(T + 20.0, T + 80.0);
        t.served(T - 10.0, T + 80.0);
        let m = t.finish();
        assert_eq!((m.onsets, m.ready, m.woken, m.shortfalls), (4, 1, 1, 1));
        assert_eq!((m.at_capacity, m.servable()), (1, 3));
        assert_eq!(m.ready_share(), Some(1.0 / 3.0), "at capacity: left out");
        assert_eq!(m.per_vm["b"].at_capacity, 1);
        assert_eq!((m.foreseen, m.per_vm["a"].foreseen), (1, 1));
        assert_eq!(m.woken_wait_s, 0.125);
        assert_eq!((m.shortfalls_served, m.shortfall_wait_s), (1, 60.0));
        assert_eq!(m.per_vm["a"].causes[&MissCause::NotPredicted], 1);
        assert_eq!(m.per_vm["b"].causes[&MissCause::PoolFrozen], 1);
        assert_eq!(m.per_vm["idle-vm"], VmOnsets::default());
        assert_eq!(m.causes().values().sum::<u64>(), 2);
        assert_eq!(Metrics::default().ready_share(), None);
    }

    #[test]
    fn parked_share_is_parked_idle_time_over_idle_time() {
        let mut t = Tally::new(dwell(), T);
        use SlotState::*;
        // Warm-up: not scored.
        t.occupancy(T - 60.0, 60.0, &[IdleAwake, IdleAwake], 0);
        t.occupancy(T, 60.0, &[Held, IdleAwake, IdleParked], 1);
        t.occupancy(T + 60.0, 60.0, &[Held, IdleParked, IdleParked], 1);
        t.unmet(T + 60.0, 60.0, 2);
        let m = t.finish();
        assert_eq!(m.scored_s, 120.0);
        assert_eq!(m.held_vf_s, 120.0);
        assert_eq!(m.idle_awake_vf_s, 60.0);
        assert_eq!(m.idle_parked_vf_s, 180.0);
        assert_eq!(m.absent_vf_s, 120.0);
        assert_eq!(m.unmet_vf_s, 120.0);
        assert_eq!(m.parked_share(), Some(0.75));
        assert!(
            m.summary_line().contains("parked 75.0% of idle time"),
            "{}",
            m.summary_line()
        );
    }

    #[test]
    fn a_change_reversed_within_its_dwell_is_a_flap() {
        let vf = bdf("0000:01:00.1");
        let other = bdf("0000:01:00.2");
        let pf = bdf("0000:01:00.0");
        let mut t = Tally::new(dwell(), T);
        // Park in the warm-up, wake 30 s later in the scored window: a flap.
        assert!(!t.action(applied(T - 20.0, Action::Park { bdf: vf })));
        assert!(t.action(applied(T + 10.0, Action::Wake { bdf: vf })));
        // Parked 120 s after the wake: not a flap; woken 100 s later: not either.
        assert!(!t.action(applied(T + 130.0, Action::Park { bdf: vf })));
        assert!(!t.action(applied(T + 230.0, Action::Wake { bdf: vf })));
        // Parked 10 s after a wake, on purpose or not: flaps.
        assert!(t.action(applied(T + 240.0, Action::Park { bdf: vf })));
        // Another device's history is its own.
        assert!(!t.action(applied(T + 245.0, Action::Wake { bdf: other })));
        // A forgotten device (its PF was resized) starts afresh.
        t.forget(vf);
        assert!(!t.action(applied(T + 250.0, Action::Wake { bdf: vf })));
        let grow = |at, from, count| Applied {
            at,
            action: Action::SetVfs { pf, count },
            from: Some(from),
            breaks_dwell: true,
        };
        assert!(!t.action(grow(T + 300.0, 0, 4)));
        assert!(!t.action(grow(T + 400.0, 4, 6)), "same direction");
        assert!(
            t.action(grow(T + 500.0, 6, 2)),
            "shrunk 100 s after growing"
        );
        assert!(!t.action(grow(T + 900.0, 2, 4)), "regrown after the dwell");
        let m = t.finish();
        assert_eq!((m.flaps, m.flaps_preempt), (3, 1));
        assert_eq!((m.wakes, m.parks, m.set_vfs), (4, 2, 4));
        assert_eq!(m.actions(), 10);
    }

    #[test]
    fn actions_per_hour_use_the_scored_time() {
        let mut t = Tally::new(dwell(), T);
        t.occupancy(T, 1800.0, &[], 0);
        t.action(applied(
            T,
            Action::Park {
                bdf: bdf("0000:01:00.1"),
            },
        ));
        t.action(applied(
            T - 1.0,
            Action::Park {
                bdf: bdf("0000:01:00.2"),
            },
        ));
        let m = t.finish();
        assert_eq!(m.actions(), 1);
        assert_eq!(m.actions_per_hour(), Some(2.0));
    }
}
