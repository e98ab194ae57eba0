//! Baselines: the rules operators use today, and the bar vpm must clear.
//!
//! - [`LastValue`]: `ŷ(o+h) = y(o)`. Hard to beat at short horizons; vpm's
//!   cold-start fallback.
//! - [`MovingAverage`]: mean of the last `w` points (default 12).
//! - [`Ewma`]: exponentially weighted mean, `s ← α·y + (1-α)·s` (default
//!   α = 0.3), computed over the last points whose weight is above 1e-6.
//! - [`SeasonalNaive`]: the value one period before the target (daily; weekly
//!   only with at least two weeks of history), `k = ceil(h/P)` periods back so
//!   the value is known at the origin.
//! - [`Vpa`]: the Kubernetes Vertical Pod Autoscaler recommender's rule, as we
//!   read it (see below).
//!
//! # Our reading of the VPA recommender
//!
//! The VPA recommender (kubernetes/autoscaler, `vertical-pod-autoscaler/pkg/
//! recommender`) keeps, per container and resource, an *exponential
//! histogram* of usage samples: bucket `k` starts at
//! `first·(ratio^k − 1)/(ratio − 1)` with `ratio = 1.05` (CPU: first bucket
//! 0.01 cores). Each sample is added with a weight that grows as
//! `2^((t_sample − t_ref)/half_life)`, half-life 24 h, which is the same as
//! decaying old samples by half per day. The *target* recommendation is the
//! histogram's 90th percentile; `Percentile` returns the *end* of the bucket
//! in which the cumulative weight reaches 90 % (so it rounds up by at most one
//! bucket, ≤ 5 %). The recommendation is then multiplied by `1 + 0.15`
//! (`safety-margin-fraction`). It is a level, the same for every horizon.
//!
//! What we do the same: exponential buckets with ratio 1.05 and the
//! end-of-bucket percentile, decay half-life 24 h, p90, ×1.15, history of up
//! to 8 days (the VPA's default history length). What differs and why:
//! - the first bucket is 1/1000 of the window's maximum rather than a fixed
//!   0.01 cores, because our series carry many units (cores, bytes/s, exits/s);
//!   1/1000 of the range matches the VPA's CPU resolution for typical usage;
//! - every sample weighs 1 (the VPA weighs CPU samples by the container's CPU
//!   request, which VMs do not have);
//! - memory in the VPA uses per-day peaks; we apply the CPU rule to every
//!   resource (peak-based rules are *more* conservative, so this favours the
//!   VPA on slack);
//! - no minimum recommendation and no confidence-interval scaling of the
//!   upper/lower bounds (those only affect the VPA's bounds, not its target).

use serde::{Deserialize, Serialize};

use super::models::{Model, ModelKind};
use super::{DAY_S, ForecastError, Result, Series, WEEK_S, period_steps};

fn need(kind: ModelKind, s: &Series<'_>, h: usize, needed: usize) -> Result<()> {
    if s.len() >= needed.max(1) {
        Ok(())
    } else {
        Err(ForecastError::NotEnoughHistory {
            model: kind.name(),
            needed: needed.max(1),
            have: s.len(),
            horizon: h,
        })
    }
}

/// `ŷ(o+h) = y(o)`.
#[derive(Clone, Debug, Default)]
pub struct LastValue;

impl Model for LastValue {
    fn kind(&self) -> ModelKind {
        ModelKind::LastValue
    }
    fn min_history(&self, _h: usize, _step_s: f64) -> usize {
        1
    }
    fn fit(&mut self, _s: &Series<'_>, _h: usize) -> Result<()> {
        Ok(())
    }
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        need(self.kind(), s, h, 1)?;
        Ok(s.last().unwrap_or(0.0))
    }
}

/// Mean of the last `window` points (fewer while the history is shorter).
#[derive(Clone, Debug)]
pub struct MovingAverage {
    /// Window in points.
    pub window: usize,
}

impl Model for MovingAverage {
    fn kind(&self) -> ModelKind {
        ModelKind::MovingAverage
    }
    fn min_history(&self, _h: usize, _step_s: f64) -> usize {
        1
    }
    fn fit(&mut self, _s: &Series<'_>, _h: usize) -> Result<()> {
        Ok(())
    }
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        need(self.kind(), s, h, 1)?;
        let w = self.window.clamp(1, s.len());
        Ok(s.values[s.len() - w..].iter().sum::<f64>() / w as f64)
    }
}

/// Exponentially weighted moving average with smoothing factor `alpha`.
#[derive(Clone, Debug)]
pub struct Ewma {
    /// Weight of the newest point, in (0, 1].
    pub alpha: f64,
}

impl Model for Ewma {
    fn kind(&self) -> ModelKind {
        ModelKind::Ewma
    }
    fn min_history(&self, _h: usize, _step_s: f64) -> usize {
        1
    }
    fn fit(&mut self, _s: &Series<'_>, _h: usize) -> Result<()> {
        Ok(())
    }
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        need(self.kind(), s, h, 1)?;
        let a = self.alpha.clamp(1e-6, 1.0);
        // Points older than this weigh < 1e-6: start the recursion there.
        let span = if a >= 1.0 {
            1
        } else {
            ((1e-6f64).ln() / (1.0 - a).ln()).ceil().clamp(1.0, 1e6) as usize
        };
        let tail = &s.values[s.len().saturating_sub(span)..];
        let mut level = tail[0];
        for &y in &tail[1..] {
            level = a * y + (1.0 - a) * level;
        }
        Ok(level)
    }
}

/// The value `k·P` steps before the target, `P` the period in steps and
/// `k = ceil(h/P)`.
#[derive(Clone, Debug)]
pub struct SeasonalNaive {
    /// [`ModelKind::SeasonalDaily`] or [`ModelKind::SeasonalWeekly`].
    pub kind: ModelKind,
    /// Period in seconds.
    pub period_s: f64,
    /// History the rule needs before it is used, in seconds (one day for
    /// daily, two weeks for weekly).
    pub min_history_s: f64,
}

impl SeasonalNaive {
    /// Same time yesterday; usable from one day of history.
    pub fn daily() -> Self {
        Self {
            kind: ModelKind::SeasonalDaily,
            period_s: DAY_S,
            min_history_s: DAY_S,
        }
    }

    /// Same time last week; usable from two weeks of history.
    pub fn weekly() -> Self {
        Self {
            kind: ModelKind::SeasonalWeekly,
            period_s: WEEK_S,
            min_history_s: 2.0 * WEEK_S,
        }
    }

    fn distance(&self, h: usize, step_s: f64) -> Option<usize> {
        let p = period_steps(self.period_s, step_s)?;
        Some(h.div_ceil(p).max(1) * p)
    }
}

impl Model for SeasonalNaive {
    fn kind(&self) -> ModelKind {
        self.kind
    }
    fn min_history(&self, h: usize, step_s: f64) -> usize {
        match self.distance(h, step_s) {
            Some(d) => (d - h + 1).max((self.min_history_s / step_s).ceil() as usize),
            None => usize::MAX,
        }
    }
    fn fit(&mut self, _s: &Series<'_>, _h: usize) -> Result<()> {
        Ok(())
    }
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        need(self.kind, s, h, self.min_history(h, s.step_s))?;
        let d = self.distance(h, s.step_s).unwrap_or(usize::MAX);
        // n - 1 + h - d >= 0 because n >= d - h + 1 (checked above).
        Ok(s.values[s.len() - 1 + h - d])
    }
}

/// Parameters of the VPA rule (see the module docs for our reading).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpaConfig {
    /// Half-life of sample weights, seconds. Default 86400 (24 h).
    pub half_life_s: f64,
    /// Target percentile. Default 0.9.
    pub percentile: f64,
    /// Safety margin fraction. Default 0.15.
    pub margin: f64,
    /// Ratio between consecutive bucket sizes. Default 1.05.
    pub bucket_ratio: f64,
    /// First bucket size as a fraction of the window's maximum. Default 1e-3.
    pub first_bucket_frac: f64,
    /// History used, seconds. Default 8 days.
    pub window_s: f64,
}

impl Default for VpaConfig {
    fn default() -> Self {
        Self {
            half_life_s: DAY_S,
            percentile: 0.9,
            margin: 0.15,
            bucket_ratio: 1.05,
            first_bucket_frac: 1e-3,
            window_s: 8.0 * DAY_S,
        }
    }
}

/// The VPA recommender's target rule: p90 of a decaying exponential histogram,
/// times 1.15. The same level for every horizon.
#[derive(Clone, Debug, Default)]
pub struct Vpa {
    /// Parameters.
    pub cfg: VpaConfig,
}

impl Vpa {
    /// The recommendation for a history (the whole slice is "the past").
    pub fn recommend(&self, s: &Series<'_>) -> f64 {
        let c = &self.cfg;
        let n = s.len();
        if n == 0 {
            return 0.0;
        }
        let keep = ((c.window_s / s.step_s).ceil() as usize).clamp(1, n);
        let win = &s.values[n - keep..];
        let max = win.iter().copied().fold(0.0, f64::max);
        if max <= 0.0 {
            return 0.0;
        }
        let first = max * c.first_bucket_frac.max(1e-12);
        let ratio = c.bucket_ratio.max(1.0 + 1e-6);
        let ln_ratio = ratio.ln();
        let bucket = |v: f64| -> usize {
            if v < first {
                0
            } else {
                ((v * (ratio - 1.0) / first + 1.0).ln() / ln_ratio).floor() as usize
            }
        };
        let start = |k: usize| first * (ratio.powi(k as i32) - 1.0) / (ratio - 1.0);
        let buckets = bucket(max) + 1;
        let mut weights = vec![0.0; buckets];
        let decay = std::f64::consts::LN_2 * s.step_s / c.half_life_s.max(1e-9);
        let mut total = 0.0;
        for (i, &v) in win.iter().enumerate() {
            // Age in steps of the sample relative to the newest one.
            let w = (-decay * (keep - 1 - i) as f64).exp();
            weights[bucket(v).min(buckets - 1)] += w;
            total += w;
        }
        let threshold = c.percentile.clamp(0.0, 1.0) * total;
        let mut acc = 0.0;
        let mut k = 0;
        for (i, w) in weights.iter().enumerate() {
            acc += w;
            k = i;
            if acc >= threshold {
                break;
            }
        }
        // The end of the bucket (the VPA's histogram has no last-bucket cap
        // in our range: the maximum's bucket is never the unbounded one).
        start(k + 1) * (1.0 + c.margin)
    }
}

impl Model for Vpa {
    fn kind(&self) -> ModelKind {
        ModelKind::Vpa
    }
    fn min_history(&self, _h: usize, _step_s: f64) -> usize {
        1
    }
    fn fit(&mut self, _s: &Series<'_>, _h: usize) -> Result<()> {
        Ok(())
    }
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        need(self.kind(), s, h, 1)?;
        Ok(self.recommend(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(v: &[f64], step: f64) -> Series<'_> {
        Series {
            values: v,
            step_s: step,
            t0: 0.0,
        }
    }

    #[test]
    fn simple_baselines() {
        let v = [1.0, 2.0, 3.0, 4.0];
        let s = series(&v, 10.0);
        assert_eq!(LastValue.predict(&s, 3).unwrap(), 4.0);
        assert_eq!(MovingAverage { window: 2 }.predict(&s, 1).unwrap(), 3.5);
        assert_eq!(MovingAverage { window: 99 }.predict(&s, 1).unwrap(), 2.5);
        let e = Ewma { alpha: 0.5 }.predict(&s, 1).unwrap();
        // 1 → 1.5 → 2.25 → 3.125
        assert!((e - 3.125).abs() < 1e-12);
        assert!(LastValue.predict(&series(&[], 10.0), 1).is_err());
    }

    #[test]
    fn seasonal_naive_reads_one_period_back() {
        // Hourly steps: a day is 24 steps.
        let v: Vec<f64> = (0..48).map(f64::from).collect();
        let s = series(&v, 3600.0);
        let m = SeasonalNaive::daily();
        // target 47 + 1 = 48, one day back: 24.
        assert_eq!(m.predict(&s, 1).unwrap(), 24.0);
        // target 47 + 30: two days back = index 29.
        assert_eq!(m.predict(&s, 30).unwrap(), 29.0);
        assert!(m.predict(&s.prefix(10), 1).is_err());
        // Weekly needs two weeks.
        let w = SeasonalNaive::weekly();
        assert_eq!(w.min_history(1, 3600.0), 336);
    }

    #[test]
    fn vpa_is_p90_with_margin() {
        // 1000 points of 1..=100 repeated: p90 = 90, rounded up to a bucket
        // end (≤ 5 % up), then × 1.15; decay over 1000 × 10 s is negligible.
        let v: Vec<f64> = (0..1000).map(|i| f64::from(i % 100 + 1)).collect();
        let r = Vpa::default().recommend(&series(&v, 10.0));
        assert!((90.0 * 1.15..=90.0 * 1.05 * 1.15 + 0.2).contains(&r), "{r}");
        // Old samples decay: 2 days of 10, then 1 hour of 100 at 5-minute
        // steps; the recent hour holds about 4 % of the weight, under 10 %.
        let mut v = vec![10.0; 576];
        v.extend(std::iter::repeat_n(100.0, 12));
        let r = Vpa::default().recommend(&series(&v, 300.0));
        assert!(r < 12.5, "{r}");
        assert_eq!(Vpa::default().recommend(&series(&[0.0; 5], 10.0)), 0.0);
    }
}
