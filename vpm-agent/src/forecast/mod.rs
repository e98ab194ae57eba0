//! Forecasting engine: per-series demand forecasts with calibrated bounds.
//!
//! Everything here works on one *regular* series at a time: `values[i]` is the
//! value at `t0 + i * step_s` (unix seconds), finite and `>= 0` (the store
//! resamples and validates; this module still rejects bad values with a typed
//! error). Nothing reads the clock: times are arguments.
//!
//! - [`features`]: lags, rolling mean/std/max, time-of-day and day-of-week
//!   harmonics, seasonal lags, computed from data known at the forecast origin.
//! - [`baselines`] and [`models`]: the [`Model`] trait; baselines (last
//!   value, moving average, EWMA, seasonal naive daily and weekly, the VPA
//!   percentile rule); fitted models: simple exponential smoothing with a
//!   per-series factor (SES), ridge regression and a small random forest
//!   (smartcore) on the features. Forecasting is *direct*: one model per
//!   horizon (see [`models`]).
//! - [`backtest`]: rolling-origin backtests, WAPE and MAE.
//! - [`select`]: per series and horizon, the candidate with the lowest recent
//!   backtest error.
//! - [`conformal`]: split/rolling conformal intervals from out-of-sample
//!   residuals.
//! - [`forecaster`]: [`SeriesForecaster`], the stateful per-(vm, resource)
//!   object the agent keeps: `observe` new points, `forecast` horizons.
//! - [`onset`]: [`OnsetModel`](onset::OnsetModel), the chance that a level
//!   series (whole VFs) rises within a horizon, from its past runs and days:
//!   the scheduler's bound for VF demand that switches on and off.
//! - [`headroom`]: an online controller that picks the provisioning quantile
//!   per QoS class to hold a target under-provision rate.
//! - [`eval`]: rolling-origin evaluation of every model, the VPA rule and vpm's
//!   own selection over the last quarter of a series.
//!
//! Horizons are given in seconds and rounded *up* to a whole number of steps
//! (at least one step); forecasts report the rounded horizon.

pub mod adaptive;
pub mod backtest;
pub mod baselines;
pub mod conformal;
pub mod eval;
pub mod features;
pub mod forecaster;
pub mod headroom;
pub mod models;
pub mod onset;
pub mod periodic;
pub mod select;
#[cfg(test)]
pub(crate) mod synth;

pub use eval::{EvalOptions, HorizonEval, ModelEval, Role, SeriesEval, evaluate};
pub use forecaster::{Forecast, ForecasterConfig, SelectionBudget, SeriesForecaster};
pub use models::{Model, ModelConfig, ModelKind};

/// Errors of the forecasting engine.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// A value is NaN or infinite.
    #[error("value at index {index} is {value}: forecast input must be finite")]
    NonFinite {
        /// Index in the slice that was passed in.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A value is negative.
    #[error("value at index {index} is {value}: usage series must be >= 0")]
    Negative {
        /// Index in the slice that was passed in.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The step is not a positive, finite number of seconds.
    #[error("step {step_s} s: must be a positive, finite number of seconds")]
    BadStep {
        /// The step that was passed in.
        step_s: f64,
    },
    /// A horizon is not a positive, finite number of seconds.
    #[error("horizon {horizon_s} s: must be a positive, finite number of seconds")]
    BadHorizon {
        /// The horizon that was passed in.
        horizon_s: f64,
    },
    /// A timestamp is not finite.
    #[error("time {t}: must be a finite unix time in seconds")]
    BadTime {
        /// The time that was passed in.
        t: f64,
    },
    /// There is no data to forecast from.
    #[error("series is empty: observe at least one point before forecasting")]
    EmptySeries,
    /// A model needs more history than the series holds.
    #[error("{model}: needs {needed} points of history for a {horizon}-step horizon, has {have}")]
    NotEnoughHistory {
        /// Model name.
        model: &'static str,
        /// Points needed.
        needed: usize,
        /// Points available.
        have: usize,
        /// Horizon in steps.
        horizon: usize,
    },
    /// A model was asked to predict before it was fitted (or for another horizon).
    #[error("{model}: not fitted for a {horizon}-step horizon; call fit first")]
    NotFitted {
        /// Model name.
        model: &'static str,
        /// Horizon in steps that was asked for.
        horizon: usize,
    },
    /// smartcore failed to fit a model.
    #[error("{model}: fitting on {rows} rows x {cols} features failed")]
    Fit {
        /// Model name.
        model: &'static str,
        /// Training rows.
        rows: usize,
        /// Features per row.
        cols: usize,
        /// smartcore's error.
        #[source]
        source: smartcore::error::Failed,
    },
    /// smartcore failed to predict.
    #[error("{model}: prediction failed")]
    Predict {
        /// Model name.
        model: &'static str,
        /// smartcore's error.
        #[source]
        source: smartcore::error::Failed,
    },
    /// A configuration value is out of range.
    #[error("option {name} = {value}: {reason}")]
    BadOption {
        /// Option name.
        name: &'static str,
        /// The value, formatted.
        value: String,
        /// What is allowed.
        reason: &'static str,
    },
}

/// Result alias for this module.
pub type Result<T, E = ForecastError> = std::result::Result<T, E>;

/// A borrowed regular series: `values[i]` is the value at `t0 + i * step_s`.
///
/// Models receive a `Series` whose last point is the forecast origin, so they
/// cannot look ahead: data after the origin is simply not in the slice.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    /// The values, oldest first.
    pub values: &'a [f64],
    /// Seconds between consecutive values.
    pub step_s: f64,
    /// Unix time of `values[0]`.
    pub t0: f64,
}

impl<'a> Series<'a> {
    /// Checks the step, the start time and every value (finite, `>= 0`).
    pub fn new(values: &'a [f64], step_s: f64, t0: f64) -> Result<Self> {
        check_step(step_s)?;
        if !t0.is_finite() {
            return Err(ForecastError::BadTime { t: t0 });
        }
        check_values(values)?;
        Ok(Self { values, step_s, t0 })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Unix time of index `i` (which may lie past the end, for targets).
    pub fn time_of(&self, i: usize) -> f64 {
        self.t0 + i as f64 * self.step_s
    }

    /// The first `len` points (the series as known at origin `len - 1`).
    pub fn prefix(&self, len: usize) -> Series<'a> {
        Series {
            values: &self.values[..len.min(self.values.len())],
            step_s: self.step_s,
            t0: self.t0,
        }
    }

    /// The points `start..end`, with `t0` moved to `start`.
    pub fn window(&self, start: usize, end: usize) -> Series<'a> {
        let end = end.min(self.values.len());
        let start = start.min(end);
        Series {
            values: &self.values[start..end],
            step_s: self.step_s,
            t0: self.time_of(start),
        }
    }

    /// The last value, if any.
    pub fn last(&self) -> Option<f64> {
        self.values.last().copied()
    }
}

/// Checks that every value is finite and `>= 0`; the error names the index.
pub fn check_values(values: &[f64]) -> Result<()> {
    for (index, &value) in values.iter().enumerate() {
        if !value.is_finite() {
            return Err(ForecastError::NonFinite { index, value });
        }
        if value < 0.0 {
            return Err(ForecastError::Negative { index, value });
        }
    }
    Ok(())
}

/// Checks that a step is a positive, finite number of seconds.
pub fn check_step(step_s: f64) -> Result<()> {
    if step_s.is_finite() && step_s > 0.0 {
        Ok(())
    } else {
        Err(ForecastError::BadStep { step_s })
    }
}

/// A horizon in seconds as a whole number of steps: rounded *up*, at least 1.
///
/// A relative tolerance of 1e-9 keeps `60.000000001 / 10` at 6 steps.
pub fn horizon_steps(horizon_s: f64, step_s: f64) -> Result<usize> {
    check_step(step_s)?;
    if !(horizon_s.is_finite() && horizon_s > 0.0) {
        return Err(ForecastError::BadHorizon { horizon_s });
    }
    let steps = (horizon_s / step_s - 1e-9).ceil().max(1.0);
    if steps > 1e9 {
        return Err(ForecastError::BadHorizon { horizon_s });
    }
    Ok(steps as usize)
}

/// Number of steps in a period (a day, a week), if the period holds at least
/// two steps; rounded to the nearest step.
pub fn period_steps(period_s: f64, step_s: f64) -> Option<usize> {
    let p = (period_s / step_s).round();
    (2.0..1e9).contains(&p).then_some(p as usize)
}

/// Seconds in a day.
pub const DAY_S: f64 = 86_400.0;
/// Seconds in a week.
pub const WEEK_S: f64 = 7.0 * DAY_S;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_round_up() {
        assert_eq!(horizon_steps(10.0, 10.0).unwrap(), 1);
        assert_eq!(horizon_steps(60.0, 10.0).unwrap(), 6);
        assert_eq!(horizon_steps(61.0, 10.0).unwrap(), 7);
        assert_eq!(horizon_steps(1.0, 10.0).unwrap(), 1);
        assert_eq!(horizon_steps(0.3 * 3.0, 0.3).unwrap(), 3);
        assert!(horizon_steps(0.0, 10.0).is_err());
        assert!(horizon_steps(f64::NAN, 10.0).is_err());
        assert!(horizon_steps(10.0, 0.0).is_err());
    }

    #[test]
    fn values_are_checked() {
        assert!(check_values(&[0.0, 1.0]).is_ok());
        let e = check_values(&[0.0, f64::NAN]).unwrap_err();
        assert!(matches!(e, ForecastError::NonFinite { index: 1, .. }));
        let e = check_values(&[-1.0]).unwrap_err();
        assert!(e.to_string().contains("index 0"));
        assert!(Series::new(&[1.0], f64::INFINITY, 0.0).is_err());
    }
}
