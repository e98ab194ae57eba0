//! Conformal prediction intervals from out-of-sample residuals.
//!
//! Residuals are signed, `r = actual − predicted`, from forecasts made
//! *before* their outcome was known: first the chosen model's backtest, then
//! every live forecast of the [`SeriesForecaster`](super::SeriesForecaster)
//! once its target arrives (a rolling window of the newest
//! [`ConformalBuffer::capacity`] residuals per horizon, so the interval
//! follows changes in the series' noise).
//!
//! Split-conformal quantile at level `q` over `n` residuals `r₍₁₎ ≤ … ≤ r₍ₙ₎`:
//! - upper (`q ≥ 0.5`): `r₍k₎` with `k = ⌈(n+1)·q⌉`; if `k > n` (too few
//!   residuals for that level) the largest residual is used;
//! - lower (`q < 0.5`): `r₍k₎` with `k = ⌊(n+1)·q⌋`, or the smallest if `k = 0`.
//!
//! For exchangeable residuals `P(y ≤ ŷ + r₍⌈(n+1)q⌉₎) ≥ q` and less than
//! `q + 1/(n+1)`; with the default window of 256 residuals an upper bound asked
//! for p95 is exceeded by 4.6–5 % of outcomes if the noise is stationary.
//!
//! The forecast interval is `lower = max(0, ŷ + r_lo)` and
//! `upper = max(ŷ + r_hi, lower)`: the central interval between the lower and
//! upper levels (defaults 0.05 and 0.95: a 90 % central interval whose upper
//! end is the p95 bound), clamped at 0 because usage is never negative. It
//! needs enough residuals for both levels to be ranks within them (19 for
//! p05 and p95, [`enough_for`]); with fewer the forecaster gives its wide
//! uncalibrated interval instead. It is calibrated, not centred: a model
//! that errs one way has its point forecast near, or even outside, one end.

use std::collections::VecDeque;

/// Conformal quantile of `residuals` at `level` in (0, 1) (see the module
/// docs); `None` when there are no residuals.
pub fn conformal_quantile(residuals: &[f64], level: f64) -> Option<f64> {
    if residuals.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = residuals.iter().copied().filter(|r| !r.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(quantile_sorted(&sorted, level))
}

fn quantile_sorted(sorted: &[f64], level: f64) -> f64 {
    let n = sorted.len();
    let level = level.clamp(0.0, 1.0);
    let k = if level >= 0.5 {
        ((n + 1) as f64 * level).ceil() as usize
    } else {
        ((n + 1) as f64 * level).floor() as usize
    };
    sorted[k.clamp(1, n) - 1]
}

/// Whether `n` residuals place the conformal quantile at `level` within
/// them: `⌈(n+1)·q⌉ ≤ n` for an upper level, `⌊(n+1)·q⌋ ≥ 1` for a lower one
/// (19 residuals for p95 or p05).
pub fn enough_for(n: usize, level: f64) -> bool {
    let x = (n + 1) as f64 * level.clamp(0.0, 1.0);
    if level >= 0.5 {
        x.ceil() <= n as f64
    } else {
        x.floor() >= 1.0
    }
}

/// A rolling window of signed residuals for one series and horizon.
#[derive(Clone, Debug, Default)]
pub struct ConformalBuffer {
    cap: usize,
    res: VecDeque<f64>,
    /// Sorted copy, rebuilt lazily.
    sorted: Vec<f64>,
    dirty: bool,
}

impl ConformalBuffer {
    /// An empty buffer holding at most `capacity` residuals (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            cap: capacity.max(1),
            res: VecDeque::new(),
            sorted: Vec::new(),
            dirty: false,
        }
    }

    /// Most residuals kept.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Residuals held.
    pub fn len(&self) -> usize {
        self.res.len()
    }

    /// True when there are no residuals.
    pub fn is_empty(&self) -> bool {
        self.res.is_empty()
    }

    /// Adds a residual, dropping the oldest when full; NaN is ignored.
    pub fn push(&mut self, residual: f64) {
        if residual.is_nan() {
            return;
        }
        if self.res.len() == self.cap {
            self.res.pop_front();
        }
        self.res.push_back(residual);
        self.dirty = true;
    }

    /// Replaces the content with `residuals` (the newest `capacity` of them).
    pub fn reset(&mut self, residuals: impl IntoIterator<Item = f64>) {
        self.res.clear();
        for r in residuals {
            self.push(r);
        }
        self.dirty = true;
    }

    /// The conformal quantile at `level`; `None` when empty.
    pub fn quantile(&mut self, level: f64) -> Option<f64> {
        if self.res.is_empty() {
            return None;
        }
        if self.dirty {
            self.sorted.clear();
            self.sorted.extend(self.res.iter().copied());
            self.sorted.sort_by(f64::total_cmp);
            self.dirty = false;
        }
        Some(quantile_sorted(&self.sorted, level))
    }

    /// `(lower, upper)` around `predicted` at the two levels, clamped at 0
    /// (see the module docs); `None` when there are too few residuals for
    /// either level to be a rank within them ([`enough_for`]): an interval
    /// from a handful of residuals would be far narrower than it claims.
    pub fn interval(&mut self, predicted: f64, lower: f64, upper: f64) -> Option<(f64, f64)> {
        if !enough_for(self.res.len(), lower) || !enough_for(self.res.len(), upper) {
            return None;
        }
        let lo = (predicted + self.quantile(lower)?).max(0.0);
        let hi = (predicted + self.quantile(upper)?).max(lo);
        Some((lo, hi))
    }

    /// Mean absolute residual; `None` when empty.
    pub fn mean_abs(&self) -> Option<f64> {
        (!self.res.is_empty())
            .then(|| self.res.iter().map(|r| r.abs()).sum::<f64>() / self.res.len() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::synth::Rng;

    #[test]
    fn an_interval_needs_enough_residuals_for_both_levels() {
        assert!(!enough_for(18, 0.95) && enough_for(19, 0.95));
        assert!(!enough_for(18, 0.05) && enough_for(19, 0.05));
        let mut b = ConformalBuffer::new(64);
        b.reset([0.1]);
        assert_eq!(b.interval(1.0, 0.05, 0.95), None, "one residual");
        b.reset((1..=19).map(f64::from));
        assert_eq!(b.interval(1.0, 0.05, 0.95), Some((2.0, 20.0)));
    }

    #[test]
    fn quantile_ranks() {
        let r: Vec<f64> = (1..=19).map(f64::from).collect();
        // n = 19: k = ceil(20 * 0.95) = 19 → 19; k = floor(20 * 0.05) = 1 → 1.
        assert_eq!(conformal_quantile(&r, 0.95), Some(19.0));
        assert_eq!(conformal_quantile(&r, 0.05), Some(1.0));
        assert_eq!(conformal_quantile(&r, 0.5), Some(10.0));
        // Too few residuals for the level: the largest.
        assert_eq!(conformal_quantile(&[3.0, 1.0], 0.99), Some(3.0));
        assert_eq!(conformal_quantile(&[], 0.9), None);
    }

    #[test]
    fn buffer_rolls_and_clamps() {
        let mut b = ConformalBuffer::new(3);
        assert_eq!(b.interval(1.0, 0.05, 0.95), None);
        for r in [-10.0, 1.0, 2.0, 3.0] {
            b.push(r);
        }
        assert_eq!(b.len(), 3);
        // -10 rolled out of [1, 2, 3]: lower rank floor(4·0.05) = 0 → the
        // smallest (1), upper rank ceil(4·0.95) = 4 > 3 → the largest (3);
        // too few for an interval at those levels.
        assert_eq!(b.quantile(0.05), Some(1.0));
        assert_eq!(b.quantile(0.95), Some(3.0));
        assert_eq!(b.interval(1.0, 0.05, 0.95), None);
        assert_eq!(b.interval(1.0, 0.25, 0.75), Some((2.0, 4.0)));
        b.reset([-5.0, -4.0]);
        assert_eq!(b.mean_abs(), Some(4.5));
        let mut b = ConformalBuffer::new(32);
        b.reset((0..19).map(|i| -5.0 - f64::from(i)));
        assert_eq!(
            b.interval(1.0, 0.05, 0.95),
            Some((0.0, 0.0)),
            "clamped at 0"
        );
    }

    /// Exchangeable residuals: the p95 upper bound from 256 calibration
    /// residuals is exceeded by ~5 % of fresh outcomes.
    #[test]
    fn split_conformal_coverage_on_iid_noise() {
        let mut rng = Rng::new(11);
        let mut b = ConformalBuffer::new(256);
        let mut above = 0;
        let trials = 20_000;
        for _ in 0..256 {
            b.push(rng.normal() * 3.0 + rng.exp());
        }
        for _ in 0..trials {
            let r = rng.normal() * 3.0 + rng.exp();
            let q = b.quantile(0.95).unwrap();
            above += usize::from(r > q);
            b.push(r);
        }
        let rate = above as f64 / trials as f64;
        assert!((0.04..=0.06).contains(&rate), "exceedance {rate}");
    }
}
