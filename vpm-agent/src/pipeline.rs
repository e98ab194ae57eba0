//! The agent's forecasting loop: telemetry rows go into the [`Store`]; at each
//! export every series' new points feed its [`SeriesForecaster`], which
//! forecasts every horizon. Model re-selection is spread over exports by a
//! [`SelectionBudget`] and per-series phases, so the agent stays light; the
//! agent takes it out of its plans' way altogether
//! ([`Pipeline::forecast_now`], then [`Pipeline::select_one`] between plans).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::forecast::adaptive::{AdaptiveHeadroom, ClassHeadroom};
use crate::forecast::onset::{OnsetConfig, OnsetModel};
use crate::forecast::{
    Forecast, ForecastError, ForecasterConfig, SelectionBudget, SeriesForecaster,
};
use crate::policy::Headroom;
use crate::scheduler::{Resource, vf_units};
use crate::store::long::Row;
use crate::store::{SeriesKey, Store, StoreConfig, StoreError};

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Store settings (model step, retention).
    pub store: StoreConfig,
    /// Forecaster settings.
    pub forecaster: ForecasterConfig,
    /// Horizons, seconds.
    pub horizons_s: Vec<f64>,
    /// Model selections allowed per [`Pipeline::forecast`], over all series
    /// and horizons; `vpm run` allows as many calls of
    /// [`Pipeline::select_one`] (one selection each) after each plan or export.
    pub selections_per_export: usize,
    /// Level series besides `vfs:<pf>` (whose unit is one VF): resource
    /// name and how much of it one unit (VF) serves, e.g. the policy's
    /// `[hotplug] demand` and `per_vf`. Each level series also gets an
    /// [`OnsetModel`], whose bound [`Pipeline::rebound`] adds.
    pub levels: Vec<(String, f64)>,
    /// Settings of the onset models.
    pub onsets: OnsetConfig,
}

impl PipelineConfig {
    /// Defaults for the agent (sized in BENCHMARKS.md, forecast section): 10 s
    /// step; the store keeps 15 minutes at full resolution (enough to bridge
    /// exports) and 8 days at 5 minutes; each forecaster keeps 2 hours (720
    /// points) and 128 calibration residuals; horizons 1 and 5 minutes.
    pub fn agent_default() -> Self {
        let store = StoreConfig {
            fine_retention_s: 900.0,
            ..StoreConfig::with_step(10.0)
        };
        Self {
            forecaster: ForecasterConfig {
                history_cap: 720,
                calibration_window: 128,
                ..ForecasterConfig::default()
            },
            store,
            horizons_s: vec![60.0, 300.0],
            selections_per_export: 64,
            levels: Vec::new(),
            onsets: OnsetConfig::default(),
        }
    }

    /// How much of `resource` one unit (VF) serves, if it is a level series.
    fn unit_of(&self, resource: &str) -> Option<f64> {
        if let Some(Resource::Vfs(_)) = Resource::parse(resource) {
            return Some(1.0);
        }
        self.levels
            .iter()
            .find(|(name, unit)| name == resource && unit.is_finite() && *unit > 0.0)
            .map(|(_, unit)| *unit)
    }
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The store refused its configuration or failed to resample.
    #[error("telemetry store")]
    Store(#[from] StoreError),
    /// The forecaster refused its configuration.
    #[error("forecaster configuration")]
    Config(#[source] ForecastError),
}

struct Tracked {
    forecaster: SeriesForecaster,
    /// For level series: when they rise, and the size of their unit.
    onsets: Option<(OnsetModel, f64)>,
    /// End (unix s) of the last point fed to the forecaster.
    fed_until: f64,
}

/// Forecasts of one series at one export.
#[derive(Clone, Debug)]
pub struct SeriesOutlook {
    /// The series.
    pub key: SeriesKey,
    /// Its forecasts, one per horizon.
    pub forecasts: Vec<Forecast>,
    /// Set by [`Pipeline::rebound`] for level series: per forecast, the
    /// chance of the rise its bound counts when only the onset model
    /// foresees it ([`Point::rise`](crate::scheduler::Point::rise)); empty
    /// before.
    pub rises: Vec<Option<f64>>,
}

/// The loop.
pub struct Pipeline {
    cfg: PipelineConfig,
    store: Store,
    tracked: HashMap<SeriesKey, Tracked>,
    /// The series [`Pipeline::select_one`] served last.
    last_selected: Option<SeriesKey>,
    /// The headroom of classes with a target under-provision rate.
    headroom: AdaptiveHeadroom<SeriesKey>,
    /// When rows over the series limits were last logged (unix seconds).
    limit_logged: Option<f64>,
}

fn phase_of(key: &SeriesKey) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Pipeline {
    /// A new, empty loop.
    pub fn new(cfg: PipelineConfig) -> Result<Self, PipelineError> {
        cfg.forecaster.validate().map_err(PipelineError::Config)?;
        let store = Store::new(cfg.store.clone())?;
        Ok(Self {
            cfg,
            store,
            tracked: HashMap::new(),
            last_selected: None,
            headroom: AdaptiveHeadroom::new(),
            limit_logged: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The store (for inspection and memory accounting).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Series with a forecaster.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Adds a tick's rows and closes the steps that ended before `now`.
    pub fn ingest(&mut self, rows: &[Row], now: f64) -> Result<(), PipelineError> {
        let report = self.store.ingest_rows(rows)?;
        if report.rejected > 0 {
            log::debug!("store: {} rows rejected", report.rejected);
        }
        // Series dropped for the limits go unforecast: said at most once a
        // minute.
        if report.over_limit > 0 && self.limit_logged.is_none_or(|t| now - t >= 60.0) {
            self.limit_logged = Some(now);
            log::warn!(
                "store: {} rows dropped: past the limit of {} series ({} per VM), their series \
                 are not kept or forecast",
                report.over_limit,
                self.cfg.store.max_series,
                self.cfg.store.max_series_per_vm
            );
        }
        self.store.advance(now)?;
        Ok(())
    }

    /// Feeds every series' new points to its forecaster and forecasts all
    /// horizons from the end of its data, running at most
    /// `selections_per_export` model selections on the way. Series the
    /// forecaster refuses are logged and skipped; forecasters of series the
    /// store forgot are dropped.
    pub fn forecast(&mut self) -> Vec<SeriesOutlook> {
        let mut budget = SelectionBudget::new(self.cfg.selections_per_export);
        self.forecast_with(&mut budget)
    }

    /// As [`forecast`](Self::forecast), with the models in place: no
    /// selection runs (a new series forecasts with the last value until its
    /// first one). The agent forecasts this way for its plans, so they do not
    /// wait for selections, and runs those between plans with
    /// [`select_one`](Self::select_one).
    pub fn forecast_now(&mut self) -> Vec<SeriesOutlook> {
        self.forecast_with(&mut SelectionBudget::new(0))
    }

    /// Runs one model selection that is due (by schedule or drift, as in
    /// [`forecast`](Self::forecast)) on the data the series has been fed, and
    /// refits the chosen model; `false` when none is due. Series take turns
    /// in key order (one keeps its turn until none of its horizons is due).
    pub fn select_one(&mut self) -> bool {
        let mut due: Vec<SeriesKey> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.forecaster.selection_due())
            .map(|(k, _)| k.clone())
            .collect();
        due.sort();
        // From the series after the last one served, wrapping around.
        let start = due
            .iter()
            .position(|k| self.last_selected.as_ref().is_none_or(|l| k > l))
            .unwrap_or(0);
        due.rotate_left(start);
        for key in due {
            let Some(t) = self.tracked.get_mut(&key) else {
                continue;
            };
            let ran = t
                .forecaster
                .select_due(t.fed_until, &mut SelectionBudget::new(1));
            // A series whose selection cannot run gives up its turn.
            if ran == 0 || !t.forecaster.selection_due() {
                self.last_selected = Some(key);
            }
            if ran > 0 {
                return true;
            }
        }
        false
    }

    fn forecast_with(&mut self, budget: &mut SelectionBudget) -> Vec<SeriesOutlook> {
        let keys = self.store.keys();
        let live: std::collections::HashSet<&SeriesKey> = keys.iter().collect();
        self.tracked.retain(|k, _| live.contains(k));
        self.headroom.retain(|k| live.contains(k));
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(series) = self.store.series(&key.vm, &key.resource) else {
                continue;
            };
            let step = series.step_s;
            // A series that restarted after a long gap starts a new forecaster.
            let restart = self
                .tracked
                .get(&key)
                .is_none_or(|t| series.start > t.fed_until + step * 0.5);
            if restart {
                // The onset model outlives a gap (it drops the run the gap
                // cut) and keeps its days of profile.
                let kept = self.tracked.remove(&key).and_then(|t| t.onsets);
                let onsets = kept.or_else(|| {
                    self.cfg.unit_of(&key.resource).and_then(|unit| {
                        OnsetModel::new(step, self.cfg.onsets.clone())
                            .ok()
                            .map(|m| (m, unit))
                    })
                });
                match SeriesForecaster::new(step, self.cfg.forecaster.clone()) {
                    Ok(f) => {
                        self.tracked.insert(
                            key.clone(),
                            Tracked {
                                forecaster: f.with_phase(phase_of(&key)),
                                onsets,
                                fed_until: series.start,
                            },
                        );
                    }
                    Err(e) => {
                        log::warn!("{}/{}: {e}", key.vm, key.resource);
                        continue;
                    }
                }
            }
            let Some(t) = self.tracked.get_mut(&key) else {
                continue;
            };
            let first_new = ((t.fed_until - series.start) / step).round().max(0.0) as usize;
            if first_new < series.values.len() {
                for (i, v) in series.values.iter().enumerate().skip(first_new) {
                    let at = series.start + i as f64 * step;
                    // The outcome of forecasts made for the step's end.
                    self.headroom.resolve(&key, at + step, *v);
                    if let Some((m, unit)) = &mut t.onsets {
                        // Bad values are refused by the forecaster just below.
                        let _ = m.observe(at, vf_units(v / *unit));
                    }
                }
                if let Err(e) = t.forecaster.observe(&series.values[first_new..]) {
                    log::warn!("{}/{}: {e}", key.vm, key.resource);
                    self.tracked.remove(&key);
                    continue;
                }
                t.fed_until = series.end();
            }
            match t
                .forecaster
                .forecast_with_budget(t.fed_until, &self.cfg.horizons_s, budget)
            {
                Ok(forecasts) => out.push(SeriesOutlook {
                    key,
                    forecasts,
                    rises: Vec::new(),
                }),
                Err(e) => log::debug!("{}/{}: no forecast yet: {e}", key.vm, key.resource),
            }
        }
        out
    }

    /// Moves each forecast's upper bound in `outlook` (made by
    /// [`Pipeline::forecast`] at the forecasters' own level) to the
    /// calibrated bound at the headroom of the VM's class, `class_of(vm)`,
    /// where the forecaster has residuals for it (else it stays). A fixed
    /// quantile is that level; a target under-provision rate is held by the
    /// class's adaptive headroom ([`AdaptiveHeadroom`]), which picks the
    /// level and learns from each forecast's outcome. Never below the point
    /// forecast. For a level series, never below its onset model's bound at
    /// that level either ([`OnsetModel::bound`]: a rise at least
    /// `1 − level` likely within the horizon counts).
    pub fn rebound<'p>(
        &mut self,
        outlook: &mut [SeriesOutlook],
        class_of: impl Fn(&str) -> (&'p str, Headroom),
    ) {
        for o in outlook {
            let Some(t) = self.tracked.get_mut(&o.key) else {
                continue;
            };
            let (class, headroom) = class_of(&o.key.vm);
            o.rises = vec![None; o.forecasts.len()];
            for (i, f) in o.forecasts.iter_mut().enumerate() {
                let (level, bound) =
                    self.headroom
                        .bound(&mut t.forecaster, &o.key, class, headroom, f);
                if let Some(u) = bound {
                    f.upper = u.max(f.predicted);
                }
                if let Some((m, unit)) = &t.onsets {
                    let (upper, rise) =
                        m.raise(t.fed_until, f.horizon_s, level, f.upper, *unit, vf_units);
                    f.upper = upper;
                    o.rises[i] = rise;
                }
            }
        }
    }

    /// The adaptive headroom of each class with a target under-provision
    /// rate, per horizon: the level it plays and the rate it has held.
    pub fn headroom(&self) -> Vec<ClassHeadroom> {
        self.headroom.report()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::ModelKind;
    use crate::lab::tracegen::TraceSpec;

    #[test]
    fn ticks_in_exports_out_and_forecasters_follow_the_series() {
        let start = 1_700_000_000.0;
        let spec = TraceSpec::fleet(2, 3, start, 1800.0, 1.0);
        let rows: Vec<Row> = spec.rows().collect();
        let mut cfg = PipelineConfig::agent_default();
        cfg.horizons_s = vec![60.0];
        let mut p = Pipeline::new(cfg).expect("pipeline");
        // Feed one simulated second at a time, export every 5 minutes.
        let mut i = 0;
        let mut exports = 0;
        for second in 0..1800 {
            let now = start + f64::from(second) + 1.0;
            let end = rows[i..]
                .iter()
                .position(|r| r.timestamp >= now)
                .map_or(rows.len(), |p| i + p);
            p.ingest(&rows[i..end], now).expect("ingest");
            i = end;
            if second % 300 == 299 {
                let out = p.forecast();
                exports += 1;
                assert!(!out.is_empty(), "export {exports} had no forecasts");
                for o in &out {
                    assert_eq!(o.forecasts.len(), 1);
                    let f = &o.forecasts[0];
                    assert!(f.predicted.is_finite() && f.upper >= f.predicted.min(f.upper));
                    // Forecasts start at the end of the data the store closed.
                    assert!(
                        f.target_time <= now + 60.0 + 10.0,
                        "{} vs {now}",
                        f.target_time
                    );
                }
            }
        }
        assert_eq!(exports, 6);
        assert_eq!(p.tracked(), p.store().keys().len());
    }

    #[test]
    fn plans_forecast_with_the_models_in_place_and_selections_run_after() {
        let start = 1_700_000_000.0;
        let spec = TraceSpec::fleet(2, 3, start, 3600.0, 1.0);
        let rows: Vec<Row> = spec.rows().collect();
        let mut cfg = PipelineConfig::agent_default();
        cfg.horizons_s = vec![60.0, 300.0];
        let mut p = Pipeline::new(cfg).expect("pipeline");
        p.ingest(&rows, start + 3600.0).expect("ingest");
        // No selection yet: every series forecasts with the last value.
        let before = p.forecast_now();
        assert!(!before.is_empty());
        for f in before.iter().flat_map(|o| &o.forecasts) {
            assert_eq!((f.model, f.backtest_wape), (ModelKind::LastValue, None));
        }
        // One selection per call, a series' horizons in turn, each once,
        // then nothing is due.
        let mut served = Vec::new();
        while p.select_one() {
            let key = p.last_selected.clone();
            served.push(key);
            assert!(served.len() <= 2 * p.tracked(), "a selection ran twice");
        }
        assert_eq!(served.len(), 2 * p.tracked());
        // A series keeps its turn for its second horizon (the last served
        // is still the one before it), then the turn passes in key order.
        let mut done: Vec<&SeriesKey> = served.iter().flatten().collect();
        done.dedup();
        assert_eq!(done.len(), p.tracked(), "{served:?}");
        assert!(done.windows(2).all(|w| w[0] < w[1]), "{done:?}");
        let after = p.forecast_now();
        assert_eq!(after.len(), before.len());
        for f in after.iter().flat_map(|o| &o.forecasts) {
            assert!(f.backtest_wape.is_some(), "{f:?} was not selected");
        }
        assert!(
            after
                .iter()
                .flat_map(|o| &o.forecasts)
                .any(|f| f.model != ModelKind::LastValue),
            "every selection kept the last value"
        );
    }

    #[test]
    fn rebound_moves_upper_bounds_to_each_vms_level() {
        let start = 1_700_000_000.0;
        let spec = TraceSpec::fleet(2, 3, start, 3600.0, 1.0);
        let rows: Vec<Row> = spec.rows().collect();
        let mut cfg = PipelineConfig::agent_default();
        cfg.horizons_s = vec![60.0];
        let mut p = Pipeline::new(cfg).expect("pipeline");
        p.ingest(&rows, start + 3600.0).expect("ingest");
        let base = p.forecast();
        assert!(!base.is_empty());
        let mut lo = base.clone();
        p.rebound(&mut lo, |_| ("c", Headroom::Quantile(0.5)));
        let mut hi = base.clone();
        p.rebound(&mut hi, |_| ("c", Headroom::Quantile(0.99)));
        let mut moved = 0;
        for ((b, l), h) in base.iter().zip(&lo).zip(&hi) {
            for ((fb, fl), fh) in b.forecasts.iter().zip(&l.forecasts).zip(&h.forecasts) {
                assert_eq!(fb.predicted, fl.predicted);
                assert!(
                    fl.upper >= fl.predicted && fl.upper <= fh.upper,
                    "{fl:?} {fh:?}"
                );
                if fl.upper < fb.upper || fh.upper > fb.upper {
                    moved += 1;
                }
            }
        }
        assert!(moved > 0, "no bound moved");
    }

    #[test]
    fn a_target_rate_is_learned_from_live_outcomes() {
        // One noisy series, planned at every point as the agent does (and
        // twice, as plans between points do): each forecast is scored once,
        // when its target's point arrives, and the bound is the chosen arm's.
        let start = 1_700_000_000.0;
        let mut rng = crate::forecast::synth::Rng::new(3);
        let mut cfg = PipelineConfig::agent_default();
        cfg.horizons_s = vec![10.0, 60.0];
        let mut p = Pipeline::new(cfg).expect("pipeline");
        let class = |_: &str| ("burstable", Headroom::UnderProvision(0.05));
        let n = 600;
        // (horizon, target time) of every forecast made.
        let mut targets = std::collections::BTreeSet::new();
        for i in 0..n {
            let row = Row {
                timestamp: start + 10.0 * (i as f64 + 1.0),
                vm: "a".into(),
                pid: 1,
                resource: "net_rx_bytes_per_s".into(),
                value: 1000.0 + 100.0 * rng.normal(),
            };
            p.ingest(&[row], start + 10.0 * (i as f64 + 1.5))
                .expect("ingest");
            for _ in 0..2 {
                let mut out = p.forecast_now();
                for f in out.iter().flat_map(|o| &o.forecasts) {
                    targets.insert((f.horizon_s as u64, f.target_time as u64));
                }
                p.rebound(&mut out, class);
                for f in out.iter().flat_map(|o| &o.forecasts) {
                    assert!(f.upper >= f.predicted, "{f:?}");
                }
            }
        }
        let r = p.headroom();
        let horizons: Vec<f64> = r.iter().map(|c| c.horizon_s).collect();
        assert_eq!(horizons, vec![10.0, 60.0]);
        let fed = p.tracked.values().map(|t| t.fed_until as u64).max();
        for c in &r {
            assert_eq!((c.class.as_str(), c.target), ("burstable", 0.05));
            // Each forecast whose target's point is in, once.
            let expected = targets
                .iter()
                .filter(|(h, t)| *h == c.horizon_s as u64 && Some(*t) <= fed)
                .count() as u64;
            assert!(expected > 500, "{expected}");
            assert_eq!(c.stats.outcomes, expected, "{c:?}");
            assert!(c.stats.under_rate() < 0.15, "{c:?}");
        }
        // A fixed quantile learns nothing.
        let mut q = Pipeline::new(PipelineConfig::agent_default()).expect("pipeline");
        q.ingest(&[], start).expect("ingest");
        let mut out = q.forecast_now();
        q.rebound(&mut out, |_| ("c", Headroom::Quantile(0.9)));
        assert!(q.headroom().is_empty());
    }

    #[test]
    fn level_series_are_bounded_by_their_onsets() {
        // One VF for 10 minutes after every 20 minutes at 0, at 10 s steps:
        // after 17 minutes at 0 the onset model foresees the VF, and the
        // bound counts it. The same shape as CPU gets no onset model.
        let start = 1_700_000_000.0;
        let cycle: Vec<f64> = std::iter::repeat_n(0.0, 120)
            .chain(std::iter::repeat_n(1.0, 60))
            .collect();
        let values: Vec<f64> = cycle
            .iter()
            .cycle()
            .take(cycle.len() * 8)
            .chain(std::iter::repeat_n(&0.0, 102))
            .copied()
            .collect();
        let row = |i: usize, resource: &str| Row {
            timestamp: start + 10.0 * (i as f64 + 1.0),
            vm: "a".into(),
            pid: 1,
            resource: resource.into(),
            value: values[i],
        };
        let mut p = Pipeline::new(PipelineConfig::agent_default()).expect("pipeline");
        // Planned every 5 minutes (as the agent may be; the store keeps only
        // 15 minutes at full resolution).
        let mut out = Vec::new();
        for first in (0..values.len()).step_by(30) {
            let last = (first + 30).min(values.len());
            let tick: Vec<Row> = (first..last)
                .flat_map(|i| ["vfs:0000:01:00.0", "cpu"].map(|r| row(i, r)))
                .collect();
            p.ingest(&tick, start + 10.0 * (last as f64 + 1.0))
                .expect("ingest");
            out = p.forecast();
        }
        p.rebound(&mut out, |_| ("c", Headroom::Quantile(0.95)));
        let upper = |resource: &str| {
            out.iter()
                .find(|o| o.key.resource == resource)
                .and_then(|o| o.forecasts.iter().find(|f| f.horizon_s >= 300.0))
                .map(|f| f.upper)
                .expect("a 300 s forecast")
        };
        assert!(
            upper("vfs:0000:01:00.0") >= 1.0,
            "{}",
            upper("vfs:0000:01:00.0")
        );
        let onset = |resource: &str| {
            p.tracked
                .iter()
                .find(|(k, _)| k.resource == resource)
                .and_then(|(_, t)| {
                    let (m, _) = t.onsets.as_ref()?;
                    m.bound(t.fed_until, 300.0, 0.95)
                })
        };
        assert_eq!(onset("vfs:0000:01:00.0"), Some(1));
        assert_eq!(onset("cpu"), None, "cpu is not a level series");
        // The rebound marks the VF bound as a likely rise (with its chance)
        // where the regression bound counts no VF of its own.
        let vfs = out
            .iter()
            .find(|o| o.key.resource == "vfs:0000:01:00.0")
            .expect("vfs outlook");
        assert_eq!(vfs.rises.len(), vfs.forecasts.len());
        let (f, r) = vfs
            .forecasts
            .iter()
            .zip(&vfs.rises)
            .find(|(f, _)| f.horizon_s >= 300.0)
            .expect("a 300 s forecast");
        let t = p
            .tracked
            .iter_mut()
            .find(|(k, _)| k.resource == "vfs:0000:01:00.0")
            .map(|(_, t)| t)
            .expect("tracked");
        let regression = t
            .forecaster
            .bounds_at(f.horizon_s, &[0.95])
            .and_then(|b| b.first().copied())
            .unwrap_or(f.upper);
        assert_eq!(
            r.is_some(),
            vf_units(regression) == 0,
            "{f:?} {r:?} {regression}"
        );
        assert!(
            out.iter()
                .filter(|o| o.key.resource == "cpu")
                .all(|o| o.rises.iter().all(Option::is_none))
        );
    }
}
