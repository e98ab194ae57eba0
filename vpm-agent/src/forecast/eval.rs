//! Rolling-origin evaluation of every model, the VPA rule and vpm's own
//! selection over the last quarter of a series.
//!
//! For each horizon `h`, the *scored origins* are the origins `o` in the last
//! quarter (`o ≥ n − ⌊n/4⌋`) whose target `o + h` is in the series, at most
//! [`EvalOptions::max_origins`] of them (evenly strided). Each model runs as it
//! would in production: it sees only `values[..=o]` (capped at the
//! forecaster's `history_cap`), refits on its own cadence
//! ([`ModelKind::refit_every`] points), and its upper bound is the conformal
//! quantile of *its own* earlier out-of-sample residuals, only those whose
//! targets were known at `o`. To warm those up, models also forecast at
//! [`EvalOptions::calibration_lead`] origins before the quarter (not scored).
//!
//! Metrics over the scored origins, with `ŷ` the point forecast, `u` the
//! provision and `y` the outcome:
//! - `wape = Σ|y − ŷ| / Σ|y|` (0 if all are 0; `null` in JSON when only the
//!   actuals are 0), `mae = mean |y − ŷ|`;
//! - `pinball_upper`: mean pinball loss of `u` at the upper level `τ`
//!   (default 0.95): `τ·(y − u)` if `y ≥ u`, else `(1 − τ)·(u − y)`;
//! - the provisioning rule provisions `u` = the upper bound (for the VPA rule,
//!   `u` = its own recommendation, which is also its `ŷ`):
//!   `underprov_rate` = share of outcomes with `y > u`;
//!   `mean_slack` = mean of `max(u − y, 0)` over all scored outcomes
//!   (under-provisioned outcomes count 0); `relative_slack` = `Σ max(u − y, 0)
//!   / Σ y`, unit-free like WAPE.
//!
//! The pseudo-model `"vpm"` is a real [`SeriesForecaster`] with the given
//! config, fed the series point by point from the first origin: its
//! forecasts are whatever model its selection had picked at each origin, so it
//! is judged on the out-of-sample error of what it picked, not on the best
//! model in hindsight. Each model's `chosen_share` is the share of scored
//! origins at which vpm used it; `chosen` marks the one it used most.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::backtest::wape;
use super::conformal::ConformalBuffer;
use super::forecaster::{ForecasterConfig, SeriesForecaster};
use super::models::{Model, ModelKind};
use super::{ForecastError, Result, Series, horizon_steps};

/// How an evaluation runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalOptions {
    /// The forecaster under test (and the models' parameters, levels and
    /// history cap).
    pub forecaster: ForecasterConfig,
    /// Models scored individually. Default: all of [`ModelKind::ALL`].
    pub models: Vec<ModelKind>,
    /// Most scored origins per horizon. Default 500.
    pub max_origins: usize,
    /// Unscored origins before the quarter that warm up each model's
    /// conformal buffer. Default 64.
    pub calibration_lead: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            forecaster: ForecasterConfig::default(),
            models: ModelKind::ALL.to_vec(),
            max_origins: 500,
            calibration_lead: 64,
        }
    }
}

/// What a row of the evaluation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A baseline point forecaster.
    Baseline,
    /// The VPA recommender rule (provisions its own level).
    Provisioning,
    /// A model fitted to the series (SES, ridge, forest).
    Learned,
    /// vpm's per-series selection ("vpm").
    Selection,
}

/// Metrics of one model at one horizon.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEval {
    /// Model name ([`ModelKind::name`], or `"vpm"`).
    pub model: String,
    /// What the row is.
    pub role: Role,
    /// False when the model could not forecast at every scored origin (too
    /// little history); its metrics are then `None`.
    pub available: bool,
    /// WAPE of the point forecast.
    pub wape: Option<f64>,
    /// MAE of the point forecast.
    pub mae: Option<f64>,
    /// Mean pinball loss of the provision at the upper level.
    pub pinball_upper: Option<f64>,
    /// Share of outcomes above the provision.
    pub underprov_rate: Option<f64>,
    /// Mean of `max(provision − actual, 0)`.
    pub mean_slack: Option<f64>,
    /// `Σ max(provision − actual, 0) / Σ actual`.
    pub relative_slack: Option<f64>,
    /// Share of scored origins at which vpm's selection used this model.
    pub chosen_share: f64,
    /// vpm's selection used this model most often.
    pub chosen: bool,
}

/// One horizon's evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HorizonEval {
    /// Horizon in seconds (rounded up to whole steps).
    pub horizon_s: f64,
    /// Scored origins.
    pub origins: usize,
    /// Points between scored origins.
    pub origin_stride: usize,
    /// One row per model, then the VPA rule, then `"vpm"` last.
    pub models: Vec<ModelEval>,
    /// The baseline with the lowest WAPE (VPA rule excluded: it forecasts a
    /// provision, not the value).
    pub best_baseline: Option<String>,
    /// vpm's WAPE is at or below the best baseline's.
    pub vpm_beats_best_baseline: Option<bool>,
}

/// The evaluation of one series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesEval {
    /// Points in the series.
    pub points: usize,
    /// Step, seconds.
    pub step_s: f64,
    /// Unix time of the first scored origin.
    pub eval_from_t: f64,
    /// Level of the upper bound (pinball quantile).
    pub upper_level: f64,
    /// Per horizon.
    pub horizons: Vec<HorizonEval>,
}

#[derive(Default)]
struct Acc {
    n: usize,
    abs_err: f64,
    abs_actual: f64,
    pinball: f64,
    under: usize,
    slack: f64,
}

impl Acc {
    fn add(&mut self, predicted: f64, provision: f64, actual: f64, tau: f64) {
        self.n += 1;
        self.abs_err += (actual - predicted).abs();
        self.abs_actual += actual.abs();
        self.pinball += if actual >= provision {
            tau * (actual - provision)
        } else {
            (1.0 - tau) * (provision - actual)
        };
        self.under += usize::from(actual > provision);
        self.slack += (provision - actual).max(0.0);
    }

    fn finish(&self, model: String, role: Role, available: bool) -> ModelEval {
        let ok = available && self.n > 0;
        let n = self.n.max(1) as f64;
        let some = |x: f64| ok.then_some(x);
        ModelEval {
            model,
            role,
            available: ok,
            wape: some(wape(self.abs_err, self.abs_actual)),
            mae: some(self.abs_err / n),
            pinball_upper: some(self.pinball / n),
            underprov_rate: some(self.under as f64 / n),
            mean_slack: some(self.slack / n),
            relative_slack: some(wape(self.slack, self.abs_actual)),
            chosen_share: 0.0,
            chosen: false,
        }
    }
}

/// Evaluates `values` (step `step_s`, first point at unix time `t0`) at each
/// horizon (seconds, rounded up to whole steps). Errors on invalid input or
/// when the last quarter holds no origin with a known target.
pub fn evaluate(
    values: &[f64],
    step_s: f64,
    t0: f64,
    horizons_s: &[f64],
    opts: &EvalOptions,
) -> Result<SeriesEval> {
    let s = Series::new(values, step_s, t0)?;
    opts.forecaster.validate()?;
    let n = s.len();
    let start = n - n / 4;
    let mut horizons = Vec::with_capacity(horizons_s.len());
    for &hs in horizons_s {
        let h = horizon_steps(hs, step_s)?;
        horizons.push(evaluate_horizon(&s, h, start, opts)?);
    }
    Ok(SeriesEval {
        points: n,
        step_s,
        eval_from_t: s.time_of(start),
        upper_level: opts.forecaster.upper_level,
        horizons,
    })
}

/// The origins an evaluation uses between the first scored origin `start` and
/// the last `last`: up to `opts.max_origins` scored ones at a fixed stride,
/// preceded by up to `opts.calibration_lead` unscored ones at the same stride.
/// Returns (origins, how many lead ones come first, stride).
pub fn origin_plan(start: usize, last: usize, opts: &EvalOptions) -> (Vec<usize>, usize, usize) {
    let count = last.saturating_sub(start) + 1;
    let stride = count.div_ceil(opts.max_origins.max(1));
    let mut origins: Vec<usize> = (1..=opts.calibration_lead)
        .rev()
        .filter_map(|k| start.checked_sub(k * stride))
        .collect();
    let lead = origins.len();
    origins.extend((start..=last).step_by(stride));
    (origins, lead, stride)
}

fn evaluate_horizon(
    s: &Series<'_>,
    h: usize,
    start: usize,
    opts: &EvalOptions,
) -> Result<HorizonEval> {
    let n = s.len();
    let fc = &opts.forecaster;
    let Some(last) = n.checked_sub(h + 1).filter(|&l| l >= start && start > 0) else {
        return Err(ForecastError::NotEnoughHistory {
            model: "eval",
            needed: 4 * (h + 1),
            have: n,
            horizon: h,
        });
    };
    let (origins, lead, stride) = origin_plan(start, last, opts);
    let tau = fc.upper_level;
    let cap = fc.history_cap;

    let mut rows = Vec::new();
    for &kind in &opts.models {
        let mut model = kind.build(&fc.models);
        let (acc, ok) = run_model(model.as_mut(), s, h, &origins, lead, cap, opts);
        let role = match kind {
            ModelKind::Vpa => Role::Provisioning,
            k if k.is_baseline() => Role::Baseline,
            _ => Role::Learned,
        };
        rows.push((kind, acc.finish(kind.name().to_string(), role, ok)));
    }

    // vpm: a real forecaster fed point by point.
    let mut f = SeriesForecaster::new(s.step_s, fc.clone())?;
    let first = origins.first().copied().unwrap_or(start);
    f.observe(&s.values[..=first])?;
    let mut fed = first;
    let mut acc = Acc::default();
    let mut picks: Vec<(ModelKind, usize)> = Vec::new();
    let hs = h as f64 * s.step_s;
    for (i, &o) in origins.iter().enumerate() {
        if o > fed {
            f.observe(&s.values[fed + 1..=o])?;
            fed = o;
        }
        let out = f.forecast(s.time_of(o), &[hs])?;
        let Some(fcst) = out.first() else { continue };
        if i >= lead {
            acc.add(fcst.predicted, fcst.upper, s.values[o + h], tau);
            match picks.iter_mut().find(|(k, _)| *k == fcst.model) {
                Some((_, c)) => *c += 1,
                None => picks.push((fcst.model, 1)),
            }
        }
    }
    let mut vpm = acc.finish("vpm".to_string(), Role::Selection, true);
    vpm.chosen_share = 1.0;
    let most = picks.iter().max_by_key(|(_, c)| *c).map(|(k, _)| *k);
    let total = (origins.len() - lead).max(1) as f64;
    for (kind, row) in &mut rows {
        row.chosen_share = picks
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0.0, |(_, c)| *c as f64 / total);
        row.chosen = most == Some(*kind);
    }

    let best_baseline = rows
        .iter()
        .filter(|(k, r)| k.is_baseline() && *k != ModelKind::Vpa && r.wape.is_some())
        .min_by(|a, b| {
            let (wa, wb) = (
                a.1.wape.unwrap_or(f64::INFINITY),
                b.1.wape.unwrap_or(f64::INFINITY),
            );
            wa.total_cmp(&wb)
        })
        .map(|(_, r)| (r.model.clone(), r.wape));
    let vpm_beats_best_baseline = match (&best_baseline, vpm.wape) {
        (Some((_, Some(b))), Some(v)) => Some(v <= *b + 1e-12),
        _ => None,
    };
    let mut models: Vec<ModelEval> = rows.into_iter().map(|(_, r)| r).collect();
    models.push(vpm);
    Ok(HorizonEval {
        horizon_s: hs,
        origins: origins.len() - lead,
        origin_stride: stride,
        models,
        best_baseline: best_baseline.map(|(m, _)| m),
        vpm_beats_best_baseline,
    })
}

/// Runs one model over the origins; the first `lead` only calibrate.
fn run_model(
    model: &mut dyn Model,
    s: &Series<'_>,
    h: usize,
    origins: &[usize],
    lead: usize,
    cap: usize,
    opts: &EvalOptions,
) -> (Acc, bool) {
    let fc = &opts.forecaster;
    let kind = model.kind();
    let refit_every = kind.refit_every(&fc.models);
    let mut calib = ConformalBuffer::new(fc.calibration_window);
    let mut pending: VecDeque<(usize, f64)> = VecDeque::new();
    let mut fitted_at: Option<usize> = None;
    let mut acc = Acc::default();
    let mut ok = true;
    for (i, &o) in origins.iter().enumerate() {
        while let Some(&(target, pred)) = pending.front() {
            if target > o {
                break;
            }
            pending.pop_front();
            calib.push(s.values[target] - pred);
        }
        let scored = i >= lead;
        let hist = s.window((o + 1).saturating_sub(cap), o + 1);
        if model.min_history(h, s.step_s) > hist.len() {
            ok &= !scored;
            fitted_at = None;
            continue;
        }
        if fitted_at.is_none_or(|t| o - t >= refit_every) {
            if model.fit(&hist, h).is_err() {
                ok &= !scored;
                fitted_at = None;
                continue;
            }
            fitted_at = Some(o);
        }
        let Ok(pred) = model.predict(&hist, h) else {
            ok &= !scored;
            continue;
        };
        pending.push_back((o + h, pred));
        if scored {
            let provision = if kind == ModelKind::Vpa {
                pred
            } else {
                calib
                    .interval(pred, fc.lower_level, fc.upper_level)
                    .map_or(pred, |(_, u)| u)
            };
            acc.add(pred, provision, s.values[o + h], fc.upper_level);
        }
    }
    (acc, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::synth::ar1_daily;

    const T0: f64 = 1_704_067_200.0;

    #[test]
    fn evaluates_every_model_and_vpm() {
        // Two days at 5 minutes: daily cycle + AR(1) noise.
        let v = ar1_daily(576, 300.0, T0, 100.0, 50.0, 0.7, 4.0, 21);
        let e = evaluate(&v, 300.0, T0, &[300.0, 3600.0], &EvalOptions::default()).unwrap();
        assert_eq!(e.points, 576);
        assert_eq!(e.horizons.len(), 2);
        for hz in &e.horizons {
            assert_eq!(hz.models.len(), ModelKind::ALL.len() + 1);
            let vpm = hz.models.last().unwrap();
            assert_eq!(vpm.model, "vpm");
            let w = vpm.wape.unwrap();
            assert!(w.is_finite() && w > 0.0);
            let share: f64 = hz.models[..hz.models.len() - 1]
                .iter()
                .map(|m| m.chosen_share)
                .sum();
            assert!((share - 1.0).abs() < 1e-9, "shares {share}");
            assert_eq!(hz.models.iter().filter(|m| m.chosen).count(), 1);
            // Weekly seasonality cannot run on two days.
            let weekly = hz
                .models
                .iter()
                .find(|m| m.model == "seasonal_weekly")
                .unwrap();
            assert!(!weekly.available && weekly.wape.is_none());
            let vpa = hz.models.iter().find(|m| m.model == "vpa").unwrap();
            assert!(vpa.underprov_rate.is_some());
            assert!(hz.best_baseline.is_some());
        }
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"vpm\"") && json.contains("\"chosen\":true"));
    }

    #[test]
    fn too_short_or_bad_input_is_an_error() {
        let o = EvalOptions::default();
        assert!(evaluate(&[1.0, 2.0, 3.0], 10.0, T0, &[10.0], &o).is_err());
        assert!(evaluate(&[1.0, f64::NAN, 3.0, 4.0], 10.0, T0, &[10.0], &o).is_err());
        assert!(evaluate(&[], 10.0, T0, &[10.0], &o).is_err());
        // All zeros: WAPE 0, nothing under-provisioned.
        let z = vec![0.0; 200];
        let e = evaluate(&z, 10.0, T0, &[10.0], &o).unwrap();
        let vpm = e.horizons[0].models.last().unwrap();
        assert_eq!(vpm.wape, Some(0.0));
        assert_eq!(vpm.underprov_rate, Some(0.0));
    }
}
