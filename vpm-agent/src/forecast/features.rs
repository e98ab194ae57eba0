//! Features for the learned models, computed at a forecast origin.
//!
//! A feature row for horizon `h` at origin `o` (the last known index) describes
//! the target index `o + h` using only `values[..=o]`: [`FeatureSpec::row`]
//! takes that prefix and nothing else, so look-ahead is impossible by
//! construction (and a property test checks it through [`FeatureSpec::design`]).
//!
//! Columns, in order:
//! 1. lags `1..=L`: `values[o]`, `values[o-1]`, … (`L` = [`FeatureConfig::lags`]);
//! 2. for each window `w` in [`FeatureConfig::windows`]: mean, standard
//!    deviation (population) and maximum of `values[o-w+1..=o]`;
//! 3. time-of-day harmonics `sin`, `cos` of `2π·(t mod 86400)/86400` and
//!    day-of-week harmonics of `2π·((t/86400 + 3) mod 7)/7` (Monday 00:00 UTC
//!    is phase 0), both at the *target* time `t`, from absolute unix time, so
//!    they align with the wall clock (UTC; a fixed local offset only shifts the
//!    phase, which the models learn; DST shifts are not modelled). Time of day
//!    is used when the history covers a day, day of week when it covers two
//!    weeks (with less, the harmonics act as a spurious trend);
//! 4. seasonal lags: the value one day and one week before the target,
//!    `values[o + h - k·P]` with `k = ceil(h/P)` periods (so the value is known
//!    at the origin even for horizons longer than the period); each is used
//!    only when at least [`FeatureConfig::seasonal_min_rows`] origins of the
//!    history have it.

use serde::{Deserialize, Serialize};

use super::{DAY_S, Series, WEEK_S, period_steps};

/// Which features to compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// Number of lags (`values[o]` back to `values[o-lags+1]`). Default 6.
    pub lags: usize,
    /// Rolling windows in steps (mean, std, max of each). Default `[4, 12, 48]`.
    pub windows: Vec<usize>,
    /// Time-of-day and day-of-week harmonics. Default true.
    pub harmonics: bool,
    /// Daily and weekly seasonal lags. Default true.
    pub seasonal: bool,
    /// A seasonal lag is used only when this many origins have it. Default 96.
    pub seasonal_min_rows: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            lags: 6,
            windows: vec![4, 12, 48],
            harmonics: true,
            seasonal: true,
            seasonal_min_rows: 96,
        }
    }
}

/// The concrete feature layout for one series, step and horizon; fixed when a
/// model is fitted and reused for its predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    /// Horizon in steps.
    pub h: usize,
    /// Step in seconds.
    pub step_s: f64,
    /// Number of lags.
    pub lags: usize,
    /// Rolling windows in steps.
    pub windows: Vec<usize>,
    /// Time-of-day harmonics present.
    pub time_of_day: bool,
    /// Day-of-week harmonics present.
    pub day_of_week: bool,
    /// Distance in steps from the target back to the daily seasonal value.
    pub daily_lag: Option<usize>,
    /// Distance in steps from the target back to the weekly seasonal value.
    pub weekly_lag: Option<usize>,
}

/// Distance back from the target to the same phase `k` whole periods
/// earlier, with `k` the smallest count that lands at or before the origin.
fn seasonal_distance(period: usize, h: usize) -> usize {
    h.div_ceil(period).max(1) * period
}

impl FeatureSpec {
    /// The layout for a history of `n` points: harmonics and seasonal lags are
    /// switched on only when the history supports them (see the module docs).
    pub fn new(cfg: &FeatureConfig, step_s: f64, h: usize, n: usize) -> Self {
        let span_s = n as f64 * step_s;
        let seasonal = |period_s: f64| -> Option<usize> {
            if !cfg.seasonal {
                return None;
            }
            let d = seasonal_distance(period_steps(period_s, step_s)?, h);
            (n >= d.saturating_add(cfg.seasonal_min_rows.max(1))).then_some(d)
        };
        Self {
            h,
            step_s,
            lags: cfg.lags,
            windows: cfg.windows.iter().copied().filter(|&w| w > 0).collect(),
            time_of_day: cfg.harmonics && period_steps(DAY_S, step_s).is_some() && span_s >= DAY_S,
            day_of_week: cfg.harmonics
                && period_steps(WEEK_S, step_s).is_some()
                && span_s >= 2.0 * WEEK_S,
            daily_lag: seasonal(DAY_S),
            weekly_lag: seasonal(WEEK_S),
        }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.lags
            + 3 * self.windows.len()
            + 2 * usize::from(self.time_of_day)
            + 2 * usize::from(self.day_of_week)
            + usize::from(self.daily_lag.is_some())
            + usize::from(self.weekly_lag.is_some())
    }

    /// Column names, in order (for reports and debugging).
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = (1..=self.lags).map(|j| format!("lag{j}")).collect();
        for w in &self.windows {
            v.extend([format!("mean{w}"), format!("std{w}"), format!("max{w}")]);
        }
        if self.time_of_day {
            v.extend(["tod_sin".into(), "tod_cos".into()]);
        }
        if self.day_of_week {
            v.extend(["dow_sin".into(), "dow_cos".into()]);
        }
        if self.daily_lag.is_some() {
            v.push("same_time_yesterday".into());
        }
        if self.weekly_lag.is_some() {
            v.push("same_time_last_week".into());
        }
        v
    }

    /// The earliest origin index at which every column is defined.
    pub fn first_origin(&self) -> usize {
        let mut first = self.lags.saturating_sub(1);
        for &w in &self.windows {
            first = first.max(w - 1);
        }
        for d in [self.daily_lag, self.weekly_lag].into_iter().flatten() {
            first = first.max(d - self.h);
        }
        first
    }

    /// Appends the row for origin `hist.len() - 1` to `out`, where `hist` is
    /// the series up to and including the origin and `t_origin` the unix time
    /// of its last point. Returns false (and appends nothing) when the history
    /// is too short for this layout.
    pub fn row(&self, hist: &[f64], t_origin: f64, out: &mut Vec<f64>) -> bool {
        let n = hist.len();
        if n == 0 || n - 1 < self.first_origin() {
            return false;
        }
        let o = n - 1;
        out.extend((0..self.lags).map(|j| hist[o - j]));
        for &w in &self.windows {
            let win = &hist[n - w..];
            let mean = win.iter().sum::<f64>() / w as f64;
            let var = win.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / w as f64;
            let max = win.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            out.extend([mean, var.sqrt(), max]);
        }
        let target_t = t_origin + self.h as f64 * self.step_s;
        if self.time_of_day {
            let phase = std::f64::consts::TAU * target_t.rem_euclid(DAY_S) / DAY_S;
            out.extend([phase.sin(), phase.cos()]);
        }
        if self.day_of_week {
            let phase = std::f64::consts::TAU * (target_t / DAY_S + 3.0).rem_euclid(7.0) / 7.0;
            out.extend([phase.sin(), phase.cos()]);
        }
        for d in [self.daily_lag, self.weekly_lag].into_iter().flatten() {
            // o + h - d <= o because d >= h; >= 0 because o >= first_origin.
            out.push(hist[o + self.h - d]);
        }
        true
    }

    /// Row-major design matrix for `origins` of `s`: row `i` is
    /// [`row`](Self::row) of `s.values[..=origins[i]]`. Origins that are too
    /// early or past the end are skipped; returns the origins used.
    pub fn design(&self, s: &Series<'_>, origins: &[usize], out: &mut Vec<f64>) -> Vec<usize> {
        let mut used = Vec::with_capacity(origins.len());
        for &o in origins {
            if o < s.len() && self.row(&s.values[..=o], s.time_of(o), out) {
                used.push(o);
            }
        }
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2024-01-01 00:00:00 UTC, a Monday.
    const MONDAY: f64 = 1_704_067_200.0;

    #[test]
    fn lags_and_windows_on_a_ramp() {
        let cfg = FeatureConfig {
            lags: 3,
            windows: vec![4],
            harmonics: false,
            seasonal: false,
            seasonal_min_rows: 1,
        };
        let spec = FeatureSpec::new(&cfg, 10.0, 1, 100);
        assert_eq!(spec.width(), 6);
        assert_eq!(spec.first_origin(), 3);
        let hist: Vec<f64> = (0..10).map(f64::from).collect();
        let mut row = Vec::new();
        assert!(spec.row(&hist, 0.0, &mut row));
        // lags 9, 8, 7; window 6..=9: mean 7.5, std sqrt(1.25), max 9.
        assert_eq!(&row[..3], &[9.0, 8.0, 7.0]);
        assert!((row[3] - 7.5).abs() < 1e-12);
        assert!((row[4] - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(row[5], 9.0);
        assert!(!spec.row(&hist[..3], 0.0, &mut row));
        assert_eq!(spec.names().len(), spec.width());
    }

    #[test]
    fn harmonics_follow_the_wall_clock() {
        let cfg = FeatureConfig {
            lags: 1,
            windows: vec![],
            harmonics: true,
            seasonal: false,
            seasonal_min_rows: 1,
        };
        // 5-minute steps, 3 weeks of history: both harmonics on.
        let spec = FeatureSpec::new(&cfg, 300.0, 1, 3 * 2016);
        assert!(spec.time_of_day && spec.day_of_week);
        let mut row = Vec::new();
        // Origin 5 minutes before Monday midnight: the target is Monday 00:00.
        assert!(spec.row(&[1.0], MONDAY - 300.0, &mut row));
        assert!(row[1].abs() < 1e-9 && (row[2] - 1.0).abs() < 1e-9);
        assert!(row[3].abs() < 1e-9 && (row[4] - 1.0).abs() < 1e-9);
        // Target Tuesday 06:00: a quarter day, one seventh of a week.
        row.clear();
        assert!(spec.row(&[1.0], MONDAY + DAY_S + 6.0 * 3600.0 - 300.0, &mut row));
        assert!((row[1] - 1.0).abs() < 1e-9 && row[2].abs() < 1e-9);
        let w = std::f64::consts::TAU / 7.0 * (1.25);
        assert!((row[3] - w.sin()).abs() < 1e-9 && (row[4] - w.cos()).abs() < 1e-9);
        // One day of 10-second history: no harmonics yet at 12 hours.
        let spec = FeatureSpec::new(&cfg, 10.0, 1, 4320);
        assert!(!spec.time_of_day && !spec.day_of_week);
    }

    #[test]
    fn seasonal_lags_need_history() {
        let cfg = FeatureConfig::default();
        // 5-minute steps: a day is 288 steps, a week 2016.
        let short = FeatureSpec::new(&cfg, 300.0, 1, 288 + 50);
        assert_eq!(short.daily_lag, None);
        let day = FeatureSpec::new(&cfg, 300.0, 1, 288 + 96);
        assert_eq!(day.daily_lag, Some(288));
        assert_eq!(day.weekly_lag, None);
        // A horizon longer than a day reaches two days back.
        let long = FeatureSpec::new(&cfg, 300.0, 300, 3 * 288);
        assert_eq!(long.daily_lag, Some(576));
        // The seasonal column is the value one period before the target.
        let hist: Vec<f64> = (0..(288 + 96)).map(f64::from).collect();
        let mut row = Vec::new();
        assert!(day.row(&hist, 0.0, &mut row));
        let o = hist.len() - 1;
        assert_eq!(*row.last().unwrap(), (o + 1 - 288) as f64);
    }

    proptest! {
        /// Features at origin o for horizon h do not change when anything
        /// after o changes: they use only data known at the origin.
        #[test]
        fn no_look_ahead(
            values in proptest::collection::vec(0.0f64..100.0, 60..400),
            h in 1usize..30,
            origin_frac in 0.0f64..1.0,
            noise in proptest::collection::vec(0.0f64..50.0, 1..50),
        ) {
            let cfg = FeatureConfig { seasonal_min_rows: 8, ..FeatureConfig::default() };
            // A step of 1 hour so that day (24) and week (168) lags appear.
            let step = 3600.0;
            let spec = FeatureSpec::new(&cfg, step, h, values.len());
            let o = (origin_frac * (values.len() - 1) as f64) as usize;
            let s = Series { values: &values, step_s: step, t0: 1.7e9 };
            let mut a = Vec::new();
            let used_a = spec.design(&s, &[o], &mut a);
            let mut changed = values.clone();
            for (i, v) in changed.iter_mut().enumerate().skip(o + 1) {
                *v += noise[i % noise.len()] + 1.0;
            }
            let s2 = Series { values: &changed, step_s: step, t0: 1.7e9 };
            let mut b = Vec::new();
            let used_b = spec.design(&s2, &[o], &mut b);
            prop_assert_eq!(used_a, used_b);
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                prop_assert!(x.to_bits() == y.to_bits());
            }
            // And a row from the prefix alone is the same row.
            let mut c = Vec::new();
            spec.row(&values[..=o], s.time_of(o), &mut c);
            prop_assert_eq!(a, c);
        }
    }
}
