//! Demand traces: per VM, how many VFs of the PF it uses at each step.
//!
//! A [`DemandTrace`] is a regular grid (`start`, `step_s`) with one whole
//! number of VFs per VM and step: the `vfs:<pf>` gauge the scheduler plans
//! from ([`crate::scheduler::forecasts`]). Traces come from three places:
//!
//! - [`DemandTrace::generated`]: the trace generator's shapes
//!   ([`crate::lab::tracegen`]: diurnal, bursty, idle-then-busy, on/off),
//!   rounded to whole VFs;
//! - [`DemandTrace::from_long`] with [`Derive::Auto`]: a long CSV
//!   (`timestamp,vm,pid,resource,value`): its `vfs:*` series as they are
//!   (rounded), or else each VM's `dev:*` activity series, one VF per device
//!   whose activity reaches a threshold (the policy's `active_rate`);
//! - [`DemandTrace::from_long`] with [`Derive::Quantiles`]: one named resource
//!   per VM (e.g. the datacenter samples' `net_in`), one VF while the value is
//!   at or above the series' own quantile `q₁`, two at or above `q₂`, …
//!
//! Every derived level is then *debounced* ([`debounce`]): a level that lasts
//! less than a minimum time is merged into the one before it, since a VM does
//! not attach and detach a VF for a few seconds.

use std::collections::BTreeMap;

use super::ReplayError;
use crate::lab::tracegen::{self, Profile, ResourceSpec};
use crate::store::input::Trace;

/// One VM's demand.
#[derive(Debug, Clone, PartialEq)]
pub struct VmDemand {
    /// The VM's name (its QoS class follows from the policy's `[vms]` rules).
    pub vm: String,
    /// How the demand was made, for reports (`diurnal`, `net_in ≥ p75 / p95`).
    pub shape: String,
    /// VFs in use at each step.
    pub vfs: Vec<u32>,
}

impl VmDemand {
    /// Onsets from step `from` on: each step's increase over the step before.
    pub fn onsets_from(&self, from: usize) -> u64 {
        let mut prev = if from == 0 {
            0
        } else {
            self.vfs.get(from - 1).copied().unwrap_or(0)
        };
        let mut n = 0u64;
        for &v in self.vfs.iter().skip(from) {
            n += u64::from(v.saturating_sub(prev));
            prev = v;
        }
        n
    }

    /// The largest demand.
    pub fn peak(&self) -> u32 {
        self.vfs.iter().copied().max().unwrap_or(0)
    }

    /// Share of steps with some demand.
    pub fn busy_share(&self) -> f64 {
        if self.vfs.is_empty() {
            return 0.0;
        }
        self.vfs.iter().filter(|&&v| v > 0).count() as f64 / self.vfs.len() as f64
    }
}

/// VF demand of several VMs on one regular grid.
#[derive(Debug, Clone, PartialEq)]
pub struct DemandTrace {
    /// What it is, for reports.
    pub name: String,
    /// Unix seconds of the first step.
    pub start: f64,
    /// Seconds between steps.
    pub step_s: f64,
    /// The VMs.
    pub vms: Vec<VmDemand>,
}

/// How [`DemandTrace::from_long`] turns a long CSV into VF demand.
#[derive(Debug, Clone, PartialEq)]
pub enum Derive {
    /// `vfs:*` series if the file has any (a VM's several `vfs:*` series add
    /// up), else one VF per `dev:*` series of the VM whose value is at least
    /// `active_rate` (events per second).
    Auto {
        /// The activity from which a device counts as in use.
        active_rate: f64,
    },
    /// The series `resource` of every VM that has it: as many VFs as there
    /// are `quantiles` (of that series' own values) the value reaches.
    Quantiles {
        /// The resource (e.g. `net_in`).
        resource: String,
        /// Increasing quantile levels in (0, 1), e.g. `[0.75, 0.95]`.
        quantiles: Vec<f64>,
    },
}

/// The generated trace's VMs: name, shape label, profile, noise, largest demand.
fn generated_vms(duration_s: f64) -> Vec<(&'static str, &'static str, Profile, f64, u32)> {
    vec![
        (
            "db-1",
            "diurnal (1 VF ~04:40–21:20, 2 ~08:00–18:00 UTC)",
            Profile::Diurnal {
                base: 0.0,
                amplitude: 2.4,
                peak_hour: 13.0,
                weekend_factor: 1.0,
            },
            0.05,
            2,
        ),
        (
            "db-2",
            "idle, then busy (0 VFs for the first 55 % of the trace, then 2)",
            Profile::IdleThenBusy {
                idle_s: 0.55 * duration_s,
                level: 2.0,
            },
            0.0,
            2,
        ),
        (
            "web-1",
            "bursty (0.6 bursts/h of 1–2 VFs, ~20 min each)",
            Profile::Bursty {
                base: 0.0,
                burst_level: 1.4,
                bursts_per_hour: 0.6,
                mean_burst_s: 1200.0,
            },
            0.0,
            2,
        ),
        (
            "web-2",
            "diurnal (1 VF ~03:20–16:40 UTC) plus bursts (0.3/h, ~15 min)",
            Profile::Sum(vec![
                Profile::Diurnal {
                    base: 0.0,
                    amplitude: 1.2,
                    peak_hour: 10.0,
                    weekend_factor: 1.0,
                },
                Profile::Bursty {
                    base: 0.0,
                    burst_level: 1.0,
                    bursts_per_hour: 0.3,
                    mean_burst_s: 900.0,
                },
            ]),
            0.05,
            2,
        ),
        (
            "batch-1",
            "on/off (2 VFs for ~1 h, then idle for ~2 h)",
            Profile::OnOff {
                mean_off_s: 7200.0,
                mean_on_s: 3600.0,
                level: 2.0,
            },
            0.0,
            2,
        ),
    ]
}

/// The shortest time a demand level lasts in generated traces (shorter runs
/// are merged into the level before).
pub const GENERATED_MIN_RUN_S: f64 = 300.0;

impl DemandTrace {
    /// Steps in the grid (the longest VM's).
    pub fn steps(&self) -> usize {
        self.vms.iter().map(|v| v.vfs.len()).max().unwrap_or(0)
    }

    /// Seconds covered.
    pub fn duration_s(&self) -> f64 {
        self.steps() as f64 * self.step_s
    }

    /// VMs named by the trace generator's shapes, rounded to whole VFs (each
    /// at most 2) and debounced to runs of at least [`GENERATED_MIN_RUN_S`]:
    ///
    /// - `db-1`: diurnal, 1 VF from about 04:40 to 21:20, 2 from 08:00 to 18:00 UTC;
    /// - `db-2`: idle for the first 55 % of the trace, then 2 VFs;
    /// - `web-1`: bursts of 1–2 VFs at random (0.6 per hour, ~20 min each);
    /// - `web-2`: a smaller diurnal cycle plus bursts;
    /// - `batch-1`: on/off, 2 VFs for ~1 h then idle for ~2 h, at random.
    ///
    /// Their peaks add up to 10 VFs. Deterministic for `seed`.
    pub fn generated(seed: u64, start: f64, duration_s: f64, step_s: f64) -> Self {
        let n = if step_s > 0.0 && duration_s > 0.0 {
            (duration_s / step_s).ceil() as usize
        } else {
            0
        };
        let min_run = min_run_steps(GENERATED_MIN_RUN_S, step_s);
        let vms = generated_vms(duration_s)
            .into_iter()
            .map(|(vm, shape, profile, noise, max)| {
                let resource = "vfs";
                let spec = ResourceSpec {
                    resource: resource.to_owned(),
                    profile,
                    noise,
                };
                let seed = tracegen::series_seed(seed, vm, resource);
                let values = tracegen::series(&spec, seed, start, step_s, n);
                let levels: Vec<u32> = values.iter().map(|&v| round_vfs(v).min(max)).collect();
                VmDemand {
                    vm: vm.to_owned(),
                    shape: shape.to_owned(),
                    vfs: debounce(&levels, min_run),
                }
            })
            .collect();
        Self {
            name: format!("generated (seed {seed})"),
            start,
            step_s,
            vms,
        }
    }

    /// Demand from a long CSV read by [`crate::store::input`], on a grid at
    /// the file's median row spacing, levels debounced to runs of at least
    /// `min_run_s`. A grid step takes the series' last sample within
    /// `(t − step, t]`, and 0 when there is none (`vpm record` writes `dev:*`
    /// rows only when the device had events).
    pub fn from_long(trace: &Trace, rule: &Derive, min_run_s: f64) -> Result<Self, ReplayError> {
        let bad = |reason: String| ReplayError::Trace {
            name: trace.file.clone(),
            reason,
        };
        let step = trace
            .median_interval_s()
            .filter(|s| s.is_finite() && *s > 0.0)
            .ok_or_else(|| bad("fewer than two rows per series: no step to replay at".into()))?;
        // (vm, shape, series and how each becomes VFs)
        type Pick<'a> = Vec<(&'a crate::store::input::SeriesSamples, Level)>;
        let mut picked: BTreeMap<String, (String, Pick<'_>)> = BTreeMap::new();
        match rule {
            Derive::Auto { active_rate } => {
                let vfs: Vec<_> = trace
                    .series
                    .iter()
                    .filter(|s| {
                        s.resource
                            .starts_with(crate::scheduler::forecasts::VFS_PREFIX)
                    })
                    .collect();
                if !vfs.is_empty() {
                    for s in vfs {
                        let e = picked
                            .entry(s.vm.clone())
                            .or_insert_with(|| ("`vfs:*` gauge".to_owned(), Vec::new()));
                        e.1.push((s, Level::Round));
                    }
                } else {
                    for s in trace
                        .series
                        .iter()
                        .filter(|s| s.resource.starts_with("dev:"))
                    {
                        let e = picked.entry(s.vm.clone()).or_insert_with(|| {
                            (
                                format!("1 VF per `dev:*` device with activity ≥ {active_rate}/s"),
                                Vec::new(),
                            )
                        });
                        e.1.push((s, Level::Thresholds(vec![*active_rate])));
                    }
                }
                if picked.is_empty() {
                    return Err(bad(
                        "no `vfs:*` or `dev:*` series: nothing says how many VFs a VM uses".into(),
                    ));
                }
            }
            Derive::Quantiles {
                resource,
                quantiles,
            } => {
                let ok = !quantiles.is_empty()
                    && quantiles.iter().all(|q| *q > 0.0 && *q < 1.0)
                    && quantiles.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    return Err(bad(format!(
                        "quantiles {quantiles:?}: need increasing levels strictly between 0 and 1"
                    )));
                }
                for s in trace.series.iter().filter(|s| &s.resource == resource) {
                    let thresholds: Vec<f64> =
                        quantiles.iter().map(|&q| quantile(&s.values, q)).collect();
                    let labels: Vec<String> = quantiles
                        .iter()
                        .map(|q| format!("p{}", (q * 100.0).round()))
                        .collect();
                    picked.insert(
                        s.vm.clone(),
                        (
                            format!("`{resource}` ≥ its {}", labels.join(" / ")),
                            vec![(s, Level::Thresholds(thresholds))],
                        ),
                    );
                }
                if picked.is_empty() {
                    return Err(bad(format!("no series of resource `{resource}`")));
                }
            }
        }
        let t0 = picked
            .values()
            .flat_map(|(_, p)| p.iter().filter_map(|(s, _)| s.timestamps.first().copied()))
            .fold(f64::INFINITY, f64::min);
        let t1 = picked
            .values()
            .flat_map(|(_, p)| p.iter().filter_map(|(s, _)| s.timestamps.last().copied()))
            .fold(f64::NEG_INFINITY, f64::max);
        if !(t0.is_finite() && t1.is_finite()) {
            return Err(bad("the chosen series have no rows".into()));
        }
        let n = ((t1 - t0) / step + 1e-9).floor() as usize + 1;
        let min_run = min_run_steps(min_run_s, step);
        let vms = picked
            .into_iter()
            .map(|(vm, (shape, series))| {
                let mut total = vec![0u32; n];
                for (s, level) in series {
                    let grid = on_grid(&s.timestamps, &s.values, t0, step, n);
                    for (t, v) in total.iter_mut().zip(grid) {
                        *t = t.saturating_add(level.of(v));
                    }
                }
                VmDemand {
                    vm,
                    shape,
                    vfs: debounce(&total, min_run),
                }
            })
            .collect();
        Ok(Self {
            name: trace.file.clone(),
            start: t0,
            step_s: step,
            vms,
        })
    }
}

/// How one series' value becomes VFs.
#[derive(Debug, Clone)]
enum Level {
    /// Rounded to whole VFs.
    Round,
    /// As many VFs as thresholds the value reaches.
    Thresholds(Vec<f64>),
}

impl Level {
    fn of(&self, v: f64) -> u32 {
        match self {
            Level::Round => round_vfs(v),
            Level::Thresholds(t) => levels(v, t),
        }
    }
}

/// A value rounded to whole VFs (negative and non-finite values are 0).
pub fn round_vfs(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        // `as` saturates for huge values.
        v.round() as u32
    } else {
        0
    }
}

/// How many of `thresholds` `v` reaches (`v ≥ threshold`).
pub fn levels(v: f64, thresholds: &[f64]) -> u32 {
    let n = thresholds.iter().filter(|&&t| v >= t).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The `q` quantile of `values` (nearest rank on the sorted values; 0 when empty).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Steps in `min_run_s` at `step_s` (at least 1).
pub fn min_run_steps(min_run_s: f64, step_s: f64) -> usize {
    if step_s > 0.0 && min_run_s > 0.0 {
        ((min_run_s / step_s).ceil() as usize).max(1)
    } else {
        1
    }
}

/// `levels` with every run shorter than `min_run` steps replaced by the level
/// before it (a run at the very start stays). Runs are judged left to right
/// on the output, so a short blip never splits a long run in two.
pub fn debounce(levels: &[u32], min_run: usize) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(levels.len());
    let mut i = 0;
    while i < levels.len() {
        let v = levels[i];
        let mut j = i + 1;
        while j < levels.len() && levels[j] == v {
            j += 1;
        }
        let run = j - i;
        let keep = match out.last() {
            None => true,
            Some(_) => run >= min_run,
        };
        let fill = if keep {
            v
        } else {
            out.last().copied().unwrap_or(v)
        };
        out.extend(std::iter::repeat_n(fill, run));
        i = j;
    }
    out
}

/// Samples `(timestamps, values)` on the grid `t0 + i·step` (`n` steps): each
/// step takes the last sample within `(t − step, t]`, else 0.
fn on_grid(timestamps: &[f64], values: &[f64], t0: f64, step: f64, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    for (&t, &v) in timestamps.iter().zip(values) {
        let i = ((t - t0) / step - 1e-9).ceil().max(0.0);
        if let Some(slot) = out.get_mut(i as usize) {
            *slot = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::input::{self, ReadOptions};

    const MONDAY: f64 = 1_795_392_000.0;

    #[test]
    fn debounce_merges_short_runs_into_the_level_before() {
        assert_eq!(debounce(&[0, 0, 1, 0, 0, 0], 2), vec![0; 6]);
        assert_eq!(
            debounce(&[0, 0, 1, 1, 1, 2, 1, 1, 0], 2),
            vec![0, 0, 1, 1, 1, 1, 1, 1, 1],
            "a blip does not split a run, and a short last run joins the one before"
        );
        assert_eq!(debounce(&[2, 0, 0], 3), vec![2, 2, 2]);
        assert_eq!(
            debounce(&[2, 0, 0, 0], 3),
            vec![2, 0, 0, 0],
            "the first run stays"
        );
        assert_eq!(debounce(&[1, 1, 1, 0, 0, 0], 3), vec![1, 1, 1, 0, 0, 0]);
        assert_eq!(debounce(&[1, 0, 1, 0], 1), vec![1, 0, 1, 0]);
        assert!(debounce(&[], 5).is_empty());
    }

    #[test]
    fn levels_quantiles_and_rounding() {
        assert_eq!(levels(5.0, &[1.0, 5.0, 9.0]), 2);
        assert_eq!(levels(0.5, &[1.0]), 0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.75), 75.0);
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(
            [0.4, 0.5, 1.49, 2.6, -1.0, f64::NAN].map(round_vfs),
            [0, 1, 1, 3, 0, 0]
        );
        assert_eq!(min_run_steps(300.0, 10.0), 30);
        assert_eq!(min_run_steps(0.0, 10.0), 1);
    }

    #[test]
    fn onsets_count_increases() {
        let d = VmDemand {
            vm: "a".into(),
            shape: String::new(),
            vfs: vec![0, 1, 1, 0, 2, 1, 2],
        };
        assert_eq!(d.onsets_from(0), 4);
        assert_eq!(d.onsets_from(4), 3, "counted from the step before");
        assert_eq!(d.peak(), 2);
        assert!((d.busy_share() - 5.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn generated_traces_have_every_shape_and_are_deterministic() {
        let a = DemandTrace::generated(1, MONDAY, 2.0 * 86_400.0, 10.0);
        let b = DemandTrace::generated(1, MONDAY, 2.0 * 86_400.0, 10.0);
        assert_eq!(a, b);
        assert_eq!(a.steps(), 17_280);
        assert_eq!(a.vms.len(), 5);
        for v in &a.vms {
            assert!(v.peak() <= 2, "{}", v.vm);
            assert!(v.onsets_from(0) >= 1, "{} has no onset", v.vm);
        }
        let db2 = &a.vms[1];
        assert_eq!(db2.vm, "db-2");
        assert_eq!(db2.onsets_from(0), 2, "idle then busy: one jump of 2 VFs");
        let bursty = &a.vms[2];
        assert!(bursty.onsets_from(0) > 10, "{}", bursty.onsets_from(0));
        // Runs last at least 5 minutes (30 steps), after the first one.
        for v in &a.vms {
            let mut run = 0usize;
            let mut first = true;
            for w in v.vfs.windows(2) {
                run += 1;
                if w[0] != w[1] {
                    assert!(first || run >= 30, "{}: run of {run} steps", v.vm);
                    first = false;
                    run = 0;
                }
            }
        }
    }

    #[test]
    fn long_csvs_become_demand_by_gauge_activity_or_quantiles() {
        let csv = "timestamp,vm,pid,resource,value\n\
                   100,a,1,vfs:0000:01:00.0,0\n\
                   110,a,1,vfs:0000:01:00.0,1.2\n\
                   120,a,1,vfs:0000:01:00.0,2\n\
                   130,a,1,vfs:0000:01:00.0,0\n\
                   120,b,2,dev:mmio:0000:02:00.0_per_s,5\n";
        let t = input::read(csv.as_bytes(), "t.csv", &ReadOptions::default()).unwrap();
        let d = DemandTrace::from_long(&t, &Derive::Auto { active_rate: 1.0 }, 0.0).unwrap();
        assert_eq!((d.start, d.step_s, d.steps()), (100.0, 10.0, 4));
        assert_eq!(d.vms.len(), 1, "vfs:* series win over dev:*");
        assert_eq!(d.vms[0].vfs, vec![0, 1, 2, 0]);

        let csv = "timestamp,vm,pid,resource,value\n\
                   100,b,2,dev:mmio:0000:02:00.0_per_s,5\n\
                   110,b,2,dev:mmio:0000:02:00.0_per_s,0.5\n\
                   110,b,2,dev:pio:0000:03:00.0_per_s,3\n\
                   120,b,2,dev:mmio:0000:02:00.0_per_s,0.2\n\
                   120,b,2,dev:pio:0000:03:00.0_per_s,0.1\n\
                   130,b,2,dev:mmio:0000:02:00.0_per_s,7\n\
                   130,b,2,dev:pio:0000:03:00.0_per_s,9\n\
                   140,b,2,dev:mmio:0000:02:00.0_per_s,3\n";
        let t = input::read(csv.as_bytes(), "t.csv", &ReadOptions::default()).unwrap();
        let d = DemandTrace::from_long(&t, &Derive::Auto { active_rate: 1.0 }, 0.0).unwrap();
        assert_eq!(
            d.vms[0].vfs,
            vec![1, 1, 0, 2, 1],
            "a missing row is an idle device"
        );

        let mut csv = "timestamp,vm,pid,resource,value\n".to_owned();
        for i in 0..20 {
            csv.push_str(&format!("{},c,3,net_in,{}\n", 1000 + 300 * i, i + 1));
            csv.push_str(&format!("{},c,3,cpu,1\n", 1000 + 300 * i));
        }
        let t = input::read(csv.as_bytes(), "t.csv", &ReadOptions::default()).unwrap();
        let rule = Derive::Quantiles {
            resource: "net_in".into(),
            quantiles: vec![0.75, 0.95],
        };
        let d = DemandTrace::from_long(&t, &rule, 0.0).unwrap();
        let mut want = vec![0u32; 14];
        want.extend([1, 1, 1, 1, 2, 2]);
        assert_eq!(d.vms[0].vfs, want);
        assert!(d.vms[0].shape.contains("p75 / p95"), "{}", d.vms[0].shape);
        let d = DemandTrace::from_long(&t, &rule, 900.0).unwrap();
        assert_eq!(d.vms[0].vfs[19], 1, "a 10-minute run of 2 VFs is merged");

        let err = DemandTrace::from_long(&t, &Derive::Auto { active_rate: 1.0 }, 0.0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.csv") && err.contains("no `vfs:*` or `dev:*`"),
            "{err}"
        );
        let bad = Derive::Quantiles {
            resource: "net_in".into(),
            quantiles: vec![0.9, 0.5],
        };
        assert!(DemandTrace::from_long(&t, &bad, 0.0).is_err());
    }
}
