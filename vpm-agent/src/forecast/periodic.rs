//! Seasonal naive with a period found in the series itself.
//!
//! Device demand often repeats on periods that are not a day or a week: a
//! batch job every 15 minutes, a backup every hour, a test rig every 40 s.
//! [`SeasonalAuto`] finds the strongest such period in the recent history (the
//! lag with the highest autocorrelation, if it is high enough and repeats at
//! least three times in the window) and forecasts the value one period before
//! the target, like [`SeasonalNaive`](super::baselines::SeasonalNaive) does for
//! days and weeks. Without a clear period it forecasts the last value.
//!
//! An on/off pattern then gets an exact forecast of its next onset, so the
//! calibrated upper bound is tight in the off phases: devices can be parked
//! between uses and woken just before the next one.

use super::models::{Model, ModelKind};
use super::{ForecastError, Result, Series};

/// Points of recent history searched for a period.
pub const WINDOW: usize = 1024;
/// Longest period searched, in points.
pub const MAX_PERIOD: usize = 360;
/// Least autocorrelation that counts as a period.
pub const MIN_ACF: f64 = 0.6;
/// Fewest points before a period is searched for.
pub const MIN_HISTORY: usize = 24;

/// Seasonal naive on a detected period (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct SeasonalAuto {
    /// The period found at the last fit, in points.
    pub period: Option<usize>,
}

/// The strongest period of `values` (its last [`WINDOW`] points), if any: the
/// smallest lag whose autocorrelation is a local maximum, at least
/// [`MIN_ACF`], and within 0.05 of the best such lag (so a multiple of the
/// period does not win by noise), with at least three periods in the window.
pub fn detect_period(values: &[f64]) -> Option<usize> {
    let w = &values[values.len().saturating_sub(WINDOW)..];
    let n = w.len();
    if n < MIN_HISTORY {
        return None;
    }
    let mean = w.iter().sum::<f64>() / n as f64;
    let dev: Vec<f64> = w.iter().map(|v| v - mean).collect();
    let var: f64 = dev.iter().map(|d| d * d).sum();
    if var <= f64::EPSILON * n as f64 {
        return None;
    }
    let max_lag = (n / 3).min(MAX_PERIOD);
    if max_lag < 2 {
        return None;
    }
    let acf: Vec<f64> = (0..=max_lag + 1)
        .map(|lag| {
            if lag >= n {
                return 0.0;
            }
            dev[lag..]
                .iter()
                .zip(&dev[..n - lag])
                .map(|(a, b)| a * b)
                .sum::<f64>()
                / var
        })
        .collect();
    let peaks: Vec<(usize, f64)> = (2..=max_lag)
        .filter(|&l| acf[l] >= MIN_ACF && acf[l] >= acf[l - 1] && acf[l] >= acf[l + 1])
        .map(|l| (l, acf[l]))
        .collect();
    let best = peaks.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    peaks.iter().find(|p| p.1 >= best - 0.05).map(|p| p.0)
}

fn distance(period: usize, h: usize) -> usize {
    h.div_ceil(period).max(1) * period
}

impl Model for SeasonalAuto {
    fn kind(&self) -> ModelKind {
        ModelKind::SeasonalAuto
    }

    fn min_history(&self, _h: usize, _step_s: f64) -> usize {
        MIN_HISTORY
    }

    fn fit(&mut self, s: &Series<'_>, _h: usize) -> Result<()> {
        self.period = detect_period(s.values);
        Ok(())
    }

    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        let n = s.len();
        if n == 0 {
            return Err(ForecastError::NotEnoughHistory {
                model: self.name(),
                needed: 1,
                have: 0,
                horizon: h,
            });
        }
        match self.period {
            Some(p) if n + h > distance(p, h) => Ok(s.values[n - 1 + h - distance(p, h)]),
            _ => Ok(s.values[n - 1]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_off(on: usize, off: usize, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| if i % (on + off) < on { 1.0 } else { 0.0 })
            .collect()
    }

    #[test]
    fn finds_on_off_periods_and_forecasts_the_next_onset() {
        let v = on_off(8, 12, 200);
        assert_eq!(detect_period(&v), Some(20));
        let mut m = SeasonalAuto::default();
        let s = Series::new(&v, 1.0, 0.0).unwrap();
        m.fit(&s, 5).unwrap();
        // The series ends at index 199 (phase 19: off); index 204 is phase 4: on.
        assert_eq!(m.predict(&s, 5).unwrap(), 1.0);
        assert_eq!(m.predict(&s, 1).unwrap(), 1.0, "phase 0 of the next period");
        assert_eq!(m.predict(&s, 9).unwrap(), 0.0);
        // Longer than a period: still the same phase.
        assert_eq!(m.predict(&s, 25).unwrap(), 1.0);
    }

    #[test]
    fn no_period_in_noise_or_constants_falls_back_to_last_value() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<f64> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1000) as f64
            })
            .collect();
        assert_eq!(detect_period(&noise), None);
        assert_eq!(detect_period(&[3.0; 100]), None);
        assert_eq!(detect_period(&on_off(1, 1, 10)), None, "too short");
        let mut m = SeasonalAuto::default();
        let s = Series::new(&noise, 1.0, 0.0).unwrap();
        m.fit(&s, 3).unwrap();
        assert_eq!(m.predict(&s, 3).unwrap(), *noise.last().unwrap());
    }

    #[test]
    fn prefers_the_period_to_its_multiples() {
        let v: Vec<f64> = (0..600)
            .map(|i| ((i % 30) as f64 * std::f64::consts::TAU / 30.0).sin() + 2.0)
            .collect();
        assert_eq!(detect_period(&v), Some(30));
    }
}

#[cfg(test)]
mod forecaster_tests {
    use crate::forecast::forecaster::{ForecasterConfig, SeriesForecaster};
    use crate::forecast::models::ModelKind;

    /// An on/off device user (8 steps on, 12 off): the forecaster picks the
    /// detected period, and its calibrated upper bound 5 steps ahead is high
    /// just before an onset and low in the middle of an off phase — what lets
    /// the scheduler park between uses and wake ahead of the next.
    #[test]
    fn the_forecaster_learns_on_off_use() {
        let mut f = SeriesForecaster::new(1.0, ForecasterConfig::default()).unwrap();
        let value = |i: usize| if i % 20 < 8 { 1.0 } else { 0.0 };
        let mut before_onset = Vec::new();
        let mut mid_off = Vec::new();
        for i in 0..600 {
            f.observe(&[value(i)]).unwrap();
            let fc = f.forecast(i as f64, &[5.0]).unwrap();
            if i < 400 {
                continue;
            }
            let Some(fc) = fc.first() else { continue };
            match i % 20 {
                // The target (i + 5) is in the next on phase.
                15..=19 => before_onset.push(fc.upper),
                // The target is still off.
                8..=10 => mid_off.push(fc.upper),
                _ => {}
            }
        }
        assert_eq!(f.chosen(5.0), Some(ModelKind::SeasonalAuto));
        assert!(before_onset.iter().all(|&u| u >= 0.99), "{before_onset:?}");
        assert!(mid_off.iter().all(|&u| u < 0.5), "{mid_off:?}");
    }
}
