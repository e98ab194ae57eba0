//! The [`Model`] trait, the model catalogue ([`ModelKind`]) and the fitted
//! models: simple exponential smoothing with a fitted factor ([`Ses`]), and
//! ridge regression and a small random forest (smartcore) on the
//! [`features`](super::features).
//!
//! # Direct multi-horizon forecasting
//!
//! A fitted model serves *one* horizon `h`: the agent keeps one model per
//! (series, horizon). We chose this over "horizon as a feature" because the
//! agent asks for a handful of horizons (10 s, 60 s, …), each model is then
//! simple (ridge stays linear in the features instead of needing
//! horizon×feature interactions), models for different horizons can be
//! different kinds (last value at 10 s, ridge at 60 s), and a horizon's
//! residuals calibrate exactly that horizon's interval.
//!
//! # Learned (feature) models
//!
//! Both predict the *change* `y(o+h) − y(o)` from the origin's features and add
//! it to the last value: this keeps trees (which cannot extrapolate levels)
//! useful after a level shift, and for ridge it only changes what is
//! regularised. Training rows are origins whose target is known; when more
//! than [`ModelConfig::train_rows`] exist, half are the newest origins and
//! half are spread evenly over the older history, so the training set follows
//! recent behaviour *and* spans the whole history (daily harmonics need days
//! of data) at a bounded cost.
//!
//! - Ridge: columns standardised on the training rows (constant columns are
//!   zeroed), centred target, penalty chosen per fit by generalised
//!   cross-validation from [`ModelConfig::ridge_alphas`] × rows, closed form
//!   through smartcore's symmetric eigendecomposition ([`ridge_gcv`]; the
//!   fixed-penalty path [`ridge_solve`] is checked against smartcore's
//!   `RidgeRegression`); cheap, refitted often.
//! - Forest: smartcore `RandomForestRegressor`, few shallow trees (default 8
//!   trees, depth 6, leaves of ≥ 5 rows, a third of the features per split,
//!   fixed seed), at most [`ModelConfig::forest_rows`] rows; refitted rarely.

use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linalg::traits::cholesky::CholeskyDecomposable;
use smartcore::linalg::traits::evd::EVDDecomposable;

use super::baselines::{Ewma, LastValue, MovingAverage, SeasonalNaive, Vpa, VpaConfig};
use super::features::{FeatureConfig, FeatureSpec};
use super::{ForecastError, Result, Series};

/// A forecasting model for one horizon.
///
/// `fit` and `predict` receive the series *as known at the origin*: its last
/// point is the origin, so neither can look ahead. A model fitted at one origin
/// may predict at later origins (a longer slice of the same series) without
/// refitting; that is how refit cadences work.
pub trait Model: Send {
    /// Which model this is.
    fn kind(&self) -> ModelKind;

    /// Stable short name (used in CSV exports and reports).
    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Points of history needed to fit and predict at horizon `h` steps.
    fn min_history(&self, h: usize, step_s: f64) -> usize;

    /// Fits on `s` for horizon `h` steps (a no-op for the baselines).
    fn fit(&mut self, s: &Series<'_>, h: usize) -> Result<()>;

    /// Forecasts the value at index `s.len() - 1 + h`.
    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64>;
}

/// The models vpm knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Last value.
    LastValue,
    /// Moving average of the last [`ModelConfig::moving_average_window`] points.
    MovingAverage,
    /// EWMA with [`ModelConfig::ewma_alpha`].
    Ewma,
    /// Simple exponential smoothing with its factor fitted per series and
    /// horizon (see [`Ses`]).
    Ses,
    /// Seasonal naive, period one day.
    SeasonalDaily,
    /// Seasonal naive, period one week (from two weeks of history).
    SeasonalWeekly,
    /// The VPA recommender rule (a provisioning level, not a point forecast).
    Vpa,
    /// Ridge regression on the features.
    Ridge,
    /// Random forest on the features.
    Forest,
    /// Seasonal naive on a period detected in the series (see
    /// [`SeasonalAuto`](super::periodic::SeasonalAuto)).
    SeasonalAuto,
    /// The mean of SES and ridge (see [`Combo`]).
    Combo,
}

impl ModelKind {
    /// Every model, simplest first (ties in selection go to the earlier one).
    pub const ALL: [ModelKind; 11] = [
        ModelKind::LastValue,
        ModelKind::MovingAverage,
        ModelKind::Ewma,
        ModelKind::Ses,
        ModelKind::SeasonalDaily,
        ModelKind::SeasonalWeekly,
        ModelKind::SeasonalAuto,
        ModelKind::Vpa,
        ModelKind::Ridge,
        ModelKind::Forest,
        ModelKind::Combo,
    ];

    /// The point forecasters vpm selects among by default (all but the VPA
    /// rule, which forecasts a provisioning level, not the value).
    pub const CANDIDATES: [ModelKind; 10] = [
        ModelKind::LastValue,
        ModelKind::MovingAverage,
        ModelKind::Ewma,
        ModelKind::Ses,
        ModelKind::SeasonalDaily,
        ModelKind::SeasonalWeekly,
        ModelKind::SeasonalAuto,
        ModelKind::Ridge,
        ModelKind::Forest,
        ModelKind::Combo,
    ];

    /// Stable short name.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::LastValue => "last_value",
            ModelKind::MovingAverage => "moving_average",
            ModelKind::Ewma => "ewma",
            ModelKind::Ses => "ses",
            ModelKind::SeasonalDaily => "seasonal_daily",
            ModelKind::SeasonalWeekly => "seasonal_weekly",
            ModelKind::Vpa => "vpa",
            ModelKind::Ridge => "ridge",
            ModelKind::Forest => "forest",
            ModelKind::SeasonalAuto => "seasonal_auto",
            ModelKind::Combo => "combo",
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// True for the models trained on features (ridge, forest, and the
    /// combination that includes ridge).
    pub fn is_learned(self) -> bool {
        matches!(
            self,
            ModelKind::Ridge | ModelKind::Forest | ModelKind::Combo
        )
    }

    /// True for the baselines (including the VPA rule): fixed rules with
    /// nothing fitted to the series.
    pub fn is_baseline(self) -> bool {
        !self.is_learned() && !matches!(self, ModelKind::Ses | ModelKind::SeasonalAuto)
    }

    /// A new, unfitted model of this kind.
    pub fn build(self, cfg: &ModelConfig) -> Box<dyn Model> {
        match self {
            ModelKind::LastValue => Box::new(LastValue),
            ModelKind::MovingAverage => Box::new(MovingAverage {
                window: cfg.moving_average_window,
            }),
            ModelKind::Ewma => Box::new(Ewma {
                alpha: cfg.ewma_alpha,
            }),
            ModelKind::Ses => Box::new(Ses::default()),
            ModelKind::SeasonalDaily => Box::new(SeasonalNaive::daily()),
            ModelKind::SeasonalWeekly => Box::new(SeasonalNaive::weekly()),
            ModelKind::Vpa => Box::new(Vpa {
                cfg: cfg.vpa.clone(),
            }),
            ModelKind::Ridge => Box::new(Ridge::new(cfg.clone())),
            ModelKind::Forest => Box::new(Forest::new(cfg.clone())),
            ModelKind::SeasonalAuto => Box::new(super::periodic::SeasonalAuto::default()),
            ModelKind::Combo => Box::new(Combo::new(cfg.clone())),
        }
    }

    /// How many new points may pass before a fitted model of this kind is
    /// refitted (baselines have nothing to fit).
    pub fn refit_every(self, cfg: &ModelConfig) -> usize {
        match self {
            ModelKind::Ridge | ModelKind::Ses | ModelKind::SeasonalAuto | ModelKind::Combo => {
                cfg.ridge_refit_every.max(1)
            }
            ModelKind::Forest => cfg.forest_refit_every.max(1),
            _ => usize::MAX,
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parameters of every model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Moving-average window, points. Default 12.
    pub moving_average_window: usize,
    /// EWMA smoothing factor in (0, 1]. Default 0.3.
    pub ewma_alpha: f64,
    /// The VPA rule.
    pub vpa: VpaConfig,
    /// Features of the learned models.
    pub features: FeatureConfig,
    /// Candidate ridge penalties on standardised features, per training row
    /// (the penalty is `α × rows`, so its strength relative to the data does
    /// not change with the row count); each fit picks one by generalised
    /// cross-validation ([`ridge_gcv`]); one value fixes it. Default
    /// `[0.001, 0.01, 0.1, 1, 10]`.
    pub ridge_alphas: Vec<f64>,
    /// Most training rows for ridge. Default 384.
    pub train_rows: usize,
    /// Fewest training rows for any learned model. Default 48.
    pub min_train_rows: usize,
    /// Refit ridge and SES after this many new points. Default 6.
    pub ridge_refit_every: usize,
    /// Trees in the forest. Default 8.
    pub forest_trees: usize,
    /// Tree depth. Default 6.
    pub forest_max_depth: u16,
    /// Fewest rows in a leaf. Default 5.
    pub forest_min_leaf: usize,
    /// Most training rows for the forest. Default 256.
    pub forest_rows: usize,
    /// Refit the forest after this many new points. Default 60.
    pub forest_refit_every: usize,
    /// Seed of the forest's bootstrap and feature sampling. Default 7.
    pub forest_seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            moving_average_window: 12,
            ewma_alpha: 0.3,
            vpa: VpaConfig::default(),
            features: FeatureConfig::default(),
            ridge_alphas: vec![0.001, 0.01, 0.1, 1.0, 10.0],
            train_rows: 384,
            min_train_rows: 48,
            ridge_refit_every: 6,
            forest_trees: 8,
            forest_max_depth: 6,
            forest_min_leaf: 5,
            forest_rows: 256,
            forest_refit_every: 60,
            forest_seed: 7,
        }
    }
}

/// Training rows for a learned model.
struct TrainingSet {
    spec: FeatureSpec,
    x: Vec<f64>,
    y: Vec<f64>,
    rows: usize,
    /// Rows whose targets do not overlap: a row `g` steps after the previous
    /// one counts `min(1, g/h)`.
    independent: f64,
}

impl ModelConfig {
    fn feature_config(&self) -> FeatureConfig {
        let mut f = self.features.clone();
        f.seasonal_min_rows = f.seasonal_min_rows.max(self.min_train_rows);
        f
    }

    /// Points of history a learned model needs at horizon `h`.
    fn learned_min_history(&self, h: usize, step_s: f64) -> usize {
        let spec = FeatureSpec::new(&self.feature_config(), step_s, h, 0);
        spec.first_origin() + self.min_train_rows.max(2) + h
    }

    fn training_set(
        &self,
        kind: ModelKind,
        s: &Series<'_>,
        h: usize,
        max_rows: usize,
    ) -> Result<TrainingSet> {
        let n = s.len();
        let spec = FeatureSpec::new(&self.feature_config(), s.step_s, h, n);
        let first = spec.first_origin();
        let min_rows = self.min_train_rows.max(2);
        let short = || ForecastError::NotEnoughHistory {
            model: kind.name(),
            needed: first + min_rows + h,
            have: n,
            horizon: h,
        };
        // The last origin whose target (o + h) is known.
        let last = n.checked_sub(h + 1).ok_or_else(short)?;
        if last < first || last - first + 1 < min_rows {
            return Err(short());
        }
        let origins = training_origins(first, last, max_rows.max(min_rows));
        let mut x = Vec::with_capacity(origins.len() * spec.width());
        let used = spec.design(s, &origins, &mut x);
        let y: Vec<f64> = used
            .iter()
            .map(|&o| s.values[o + h] - s.values[o])
            .collect();
        let independent = 1.0
            + used
                .windows(2)
                .map(|w| ((w[1] - w[0]) as f64 / h as f64).min(1.0))
                .sum::<f64>();
        Ok(TrainingSet {
            independent,
            rows: used.len(),
            spec,
            x,
            y,
        })
    }
}

/// Training origins in `first..=last`: all of them if at most `max_rows`,
/// else the newest `max_rows / 2` consecutive origins (recent behaviour at
/// full resolution) and the other half spread evenly over the older ones (the
/// span daily harmonics need). Ascending.
fn training_origins(first: usize, last: usize, max_rows: usize) -> Vec<usize> {
    let avail = last - first + 1;
    if avail <= max_rows {
        return (first..=last).collect();
    }
    let dense = max_rows / 2;
    let sparse = max_rows - dense;
    // Older range: first..=old_last, sampled at `sparse` evenly spaced points.
    let old_last = last - dense;
    let old_span = old_last - first;
    let mut v: Vec<usize> = (0..sparse)
        .map(|i| first + old_span * i / sparse.max(1))
        .collect();
    v.dedup();
    v.extend(old_last + 1..=last);
    v
}

/// The feature row at the origin of `s` (its last point).
fn origin_row(kind: ModelKind, spec: &FeatureSpec, s: &Series<'_>, h: usize) -> Result<Vec<f64>> {
    let mut row = Vec::with_capacity(spec.width());
    let n = s.len();
    if n == 0 || !spec.row(s.values, s.time_of(n - 1), &mut row) {
        return Err(ForecastError::NotEnoughHistory {
            model: kind.name(),
            needed: spec.first_origin() + 1,
            have: n,
            horizon: h,
        });
    }
    Ok(row)
}

/// `(XᵀX, Xᵀy, yᵀy)` for row-major `x` with `cols` columns, in one pass
/// (`rows·cols²/2` multiply-adds; zero entries skipped).
fn normal_equations(x: &[f64], y: &[f64], cols: usize) -> (Vec<f64>, Vec<f64>, f64) {
    let mut a = vec![0.0; cols * cols];
    let mut b = vec![0.0; cols];
    let mut yy = 0.0;
    for (row, &yr) in x.chunks_exact(cols.max(1)).zip(y) {
        yy += yr * yr;
        for (i, &xi) in row.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            b[i] += xi * yr;
            let ai = &mut a[i * cols..i * cols + i + 1];
            for (aij, &xj) in ai.iter_mut().zip(row) {
                *aij += xi * xj;
            }
        }
    }
    for i in 0..cols {
        for j in 0..i {
            a[j * cols + i] = a[i * cols + j];
        }
    }
    (a, b, yy)
}

/// Ridge coefficients `w = (XᵀX + αI)⁻¹ Xᵀy` for row-major `x` with `cols`
/// columns (no intercept: the caller centres), solved with smartcore's
/// Cholesky. smartcore's `RidgeRegression::fit` computes the same thing (a
/// test checks it), but its generic matrix product makes a fit about six
/// times slower, and ridge is refitted for every series.
pub fn ridge_solve(
    x: &[f64],
    y: &[f64],
    cols: usize,
    alpha: f64,
) -> Result<Vec<f64>, smartcore::error::Failed> {
    let (mut a, b, _) = normal_equations(x, y, cols);
    for i in 0..cols {
        a[i * cols + i] += alpha;
    }
    let am = DenseMatrix::new(cols, cols, a, false)?;
    let bm = DenseMatrix::new(cols, 1, b, false)?;
    let w = am.cholesky_solve_mut(bm)?;
    Ok((0..cols).map(|j| *w.get((j, 0))).collect())
}

/// Ridge with the penalty chosen from `alphas` by generalised
/// cross-validation, `GCV(α) = (RSS(α)/n) / (1 − df(α)/m)²`, where `m ≤ n`
/// is the number of *independent* rows (targets `h` steps ahead from
/// consecutive origins overlap, so they carry less than one row of
/// information each; plain GCV, `m = n`, then picks too small a penalty).
/// With the eigendecomposition `XᵀX = V·diag(d)·Vᵀ` (smartcore's symmetric
/// EVD) and `c = VᵀXᵀy`, every α costs O(cols): `w = V·(c/(d+α))`,
/// `df = Σ d/(d+α)`, `RSS = yᵀy − Σ c²·(d+2α)/(d+α)²`. Returns the
/// coefficients and the chosen α.
pub fn ridge_gcv(
    x: &[f64],
    y: &[f64],
    cols: usize,
    alphas: &[f64],
    independent: f64,
) -> Result<(Vec<f64>, f64), smartcore::error::Failed> {
    if let [alpha] = alphas {
        return Ok((ridge_solve(x, y, cols, *alpha)?, *alpha));
    }
    let n = y.len() as f64;
    let (a, b, yy) = normal_equations(x, y, cols);
    let evd = DenseMatrix::new(cols, cols, a, false)?.evd_mut(true)?;
    let v = &evd.V;
    let d: Vec<f64> = evd.d.iter().map(|d| d.max(0.0)).collect();
    let c: Vec<f64> = (0..cols)
        .map(|k| (0..cols).map(|i| *v.get((i, k)) * b[i]).sum())
        .collect();
    let mut best = (f64::INFINITY, alphas.first().copied().unwrap_or(1.0));
    for &alpha in alphas {
        let mut rss = yy;
        let mut df = 0.0;
        for (dk, ck) in d.iter().zip(&c) {
            let q = dk + alpha;
            rss -= ck * ck * (dk + 2.0 * alpha) / (q * q);
            df += dk / q;
        }
        let m = independent.clamp(1.0, n);
        let denom = 1.0 - df / m;
        if denom <= 1e-6 {
            continue;
        }
        let gcv = rss.max(0.0) / n / (denom * denom);
        if gcv < best.0 {
            best = (gcv, alpha);
        }
    }
    let alpha = best.1;
    let w = (0..cols)
        .map(|i| {
            (0..cols)
                .map(|k| *v.get((i, k)) * c[k] / (d[k] + alpha))
                .sum()
        })
        .collect();
    Ok((w, alpha))
}

struct RidgeFit {
    spec: FeatureSpec,
    mean: Vec<f64>,
    /// 1/std per column, 0 for constant columns.
    inv_std: Vec<f64>,
    coef: Vec<f64>,
    intercept: f64,
}

/// Ridge regression on standardised features (smartcore, Cholesky).
pub struct Ridge {
    cfg: ModelConfig,
    fit: Option<RidgeFit>,
}

impl Ridge {
    /// An unfitted ridge model.
    pub fn new(cfg: ModelConfig) -> Self {
        Self { cfg, fit: None }
    }
}

impl Model for Ridge {
    fn kind(&self) -> ModelKind {
        ModelKind::Ridge
    }

    fn min_history(&self, h: usize, step_s: f64) -> usize {
        self.cfg.learned_min_history(h, step_s)
    }

    fn fit(&mut self, s: &Series<'_>, h: usize) -> Result<()> {
        let ts = self
            .cfg
            .training_set(ModelKind::Ridge, s, h, self.cfg.train_rows)?;
        let (rows, cols) = (ts.rows, ts.spec.width());
        let mut mean = vec![0.0; cols];
        let mut inv_std = vec![0.0; cols];
        for r in ts.x.chunks_exact(cols) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v;
            }
        }
        for m in &mut mean {
            *m /= rows as f64;
        }
        for r in ts.x.chunks_exact(cols) {
            for ((q, v), m) in inv_std.iter_mut().zip(r).zip(&mean) {
                *q += (v - m) * (v - m);
            }
        }
        for (q, m) in inv_std.iter_mut().zip(&mean) {
            let sd = (*q / rows as f64).sqrt();
            *q = if sd > 1e-9 * (1.0 + m.abs()) {
                1.0 / sd
            } else {
                0.0
            };
        }
        let mut xs = ts.x;
        for r in xs.chunks_exact_mut(cols) {
            for ((v, m), q) in r.iter_mut().zip(&mean).zip(&inv_std) {
                *v = (*v - m) * q;
            }
        }
        let intercept = ts.y.iter().sum::<f64>() / rows as f64;
        let yc: Vec<f64> = ts.y.iter().map(|y| y - intercept).collect();
        let fail = |source| ForecastError::Fit {
            model: "ridge",
            rows,
            cols,
            source,
        };
        let alphas: Vec<f64> = self
            .cfg
            .ridge_alphas
            .iter()
            .map(|a| a.max(1e-9) * rows as f64)
            .collect();
        let (coef, _) = ridge_gcv(&xs, &yc, cols, &alphas, ts.independent).map_err(fail)?;
        if coef.iter().any(|c| !c.is_finite()) {
            // Cannot happen with alpha > 0 on finite data; refuse rather than
            // forecast NaN.
            return Err(fail(smartcore::error::Failed::fit(
                "non-finite coefficients",
            )));
        }
        self.fit = Some(RidgeFit {
            spec: ts.spec,
            mean,
            inv_std,
            coef,
            intercept,
        });
        Ok(())
    }

    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        let f = self
            .fit
            .as_ref()
            .filter(|f| f.spec.h == h)
            .ok_or(ForecastError::NotFitted {
                model: "ridge",
                horizon: h,
            })?;
        let row = origin_row(ModelKind::Ridge, &f.spec, s, h)?;
        let mut delta = f.intercept;
        for (((v, m), q), c) in row.iter().zip(&f.mean).zip(&f.inv_std).zip(&f.coef) {
            delta += (v - m) * q * c;
        }
        Ok((s.last().unwrap_or(0.0) + delta).max(0.0))
    }
}

/// Simple exponential smoothing whose factor is fitted: the `α` from
/// [`Ses::GRID`] with the lowest mean absolute `h`-step error of the level
/// over the newest [`Ses::WINDOW`] points (the level at `o` forecasts
/// `y(o+h)`). A tuned EWMA: it lands between the last value (α = 1) and a
/// long average, where each series' noise puts the optimum. Fit cost is
/// `|GRID| × WINDOW` additions.
#[derive(Clone, Debug, Default)]
pub struct Ses {
    alpha: Option<(usize, f64)>,
}

impl Ses {
    /// Candidate smoothing factors, largest first (ties go to the faster one).
    pub const GRID: [f64; 8] = [1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05];
    /// Points used to fit `α`.
    pub const WINDOW: usize = 2016;
    /// Points before errors count (the level's warm-up).
    const WARM: usize = 8;

    /// The fitted factor, if fitted.
    pub fn alpha(&self) -> Option<f64> {
        self.alpha.map(|(_, a)| a)
    }
}

impl Model for Ses {
    fn kind(&self) -> ModelKind {
        ModelKind::Ses
    }

    fn min_history(&self, h: usize, _step_s: f64) -> usize {
        Self::WARM + h + 16
    }

    fn fit(&mut self, s: &Series<'_>, h: usize) -> Result<()> {
        let need = self.min_history(h, s.step_s);
        if s.len() < need {
            return Err(ForecastError::NotEnoughHistory {
                model: "ses",
                needed: need,
                have: s.len(),
                horizon: h,
            });
        }
        let y = &s.values[s.len().saturating_sub(Self::WINDOW)..];
        let mut best = (f64::INFINITY, 1.0);
        for a in Self::GRID {
            let mut level = y[0];
            let mut err = 0.0;
            for i in 1..y.len() - h {
                level += a * (y[i] - level);
                if i >= Self::WARM {
                    err += (y[i + h] - level).abs();
                }
            }
            if err < best.0 {
                best = (err, a);
            }
        }
        self.alpha = Some((h, best.1));
        Ok(())
    }

    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        let alpha = self
            .alpha
            .filter(|(fh, _)| *fh == h)
            .map(|(_, a)| a)
            .ok_or(ForecastError::NotFitted {
                model: "ses",
                horizon: h,
            })?;
        Ewma { alpha }.predict(s, h)
    }
}

/// A forecast combination: the mean of [`Ses`] and [`Ridge`]. The two err
/// differently (a smoothed level; a regression on lags, rolling statistics
/// and time of day), so their mean cancels part of each one's error — the
/// classic finding of the forecasting competitions that a simple average of
/// good models often beats each of them.
pub struct Combo {
    ses: Ses,
    ridge: Ridge,
}

impl Combo {
    /// An unfitted combination.
    pub fn new(cfg: ModelConfig) -> Self {
        Self {
            ses: Ses::default(),
            ridge: Ridge::new(cfg),
        }
    }
}

impl Model for Combo {
    fn kind(&self) -> ModelKind {
        ModelKind::Combo
    }

    fn min_history(&self, h: usize, step_s: f64) -> usize {
        self.ses
            .min_history(h, step_s)
            .max(self.ridge.min_history(h, step_s))
    }

    fn fit(&mut self, s: &Series<'_>, h: usize) -> Result<()> {
        self.ses.fit(s, h)?;
        self.ridge.fit(s, h)
    }

    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        Ok(0.5 * (self.ses.predict(s, h)? + self.ridge.predict(s, h)?))
    }
}

type ForestModel = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// A small random forest on the features (smartcore).
pub struct Forest {
    cfg: ModelConfig,
    fit: Option<(FeatureSpec, ForestModel)>,
}

impl Forest {
    /// An unfitted forest.
    pub fn new(cfg: ModelConfig) -> Self {
        Self { cfg, fit: None }
    }
}

impl Model for Forest {
    fn kind(&self) -> ModelKind {
        ModelKind::Forest
    }

    fn min_history(&self, h: usize, step_s: f64) -> usize {
        self.cfg.learned_min_history(h, step_s)
    }

    fn fit(&mut self, s: &Series<'_>, h: usize) -> Result<()> {
        let ts = self
            .cfg
            .training_set(ModelKind::Forest, s, h, self.cfg.forest_rows)?;
        let (rows, cols) = (ts.rows, ts.spec.width());
        let fail = |source| ForecastError::Fit {
            model: "forest",
            rows,
            cols,
            source,
        };
        let xm = DenseMatrix::new(rows, cols, ts.x, false).map_err(fail)?;
        let params = RandomForestRegressorParameters {
            max_depth: Some(self.cfg.forest_max_depth.max(1)),
            min_samples_leaf: self.cfg.forest_min_leaf.max(1),
            min_samples_split: 2 * self.cfg.forest_min_leaf.max(1),
            n_trees: self.cfg.forest_trees.max(1),
            m: Some((cols / 3).max(1)),
            keep_samples: false,
            seed: self.cfg.forest_seed,
        };
        let model = ForestModel::fit(&xm, &ts.y, params).map_err(fail)?;
        self.fit = Some((ts.spec, model));
        Ok(())
    }

    fn predict(&self, s: &Series<'_>, h: usize) -> Result<f64> {
        let (spec, model) =
            self.fit
                .as_ref()
                .filter(|(spec, _)| spec.h == h)
                .ok_or(ForecastError::NotFitted {
                    model: "forest",
                    horizon: h,
                })?;
        let row = origin_row(ModelKind::Forest, spec, s, h)?;
        let cols = row.len();
        let fail = |source| ForecastError::Predict {
            model: "forest",
            source,
        };
        let xm = DenseMatrix::new(1, cols, row, false).map_err(fail)?;
        let out = model.predict(&xm).map_err(fail)?;
        let delta = out.first().copied().unwrap_or(0.0);
        Ok((s.last().unwrap_or(0.0) + delta).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit_predict(kind: ModelKind, v: &[f64], step: f64, h: usize) -> f64 {
        let cfg = ModelConfig::default();
        let mut m = kind.build(&cfg);
        let s = Series {
            values: v,
            step_s: step,
            t0: 1.7e9,
        };
        m.fit(&s, h).unwrap();
        m.predict(&s, h).unwrap()
    }

    #[test]
    fn names_round_trip() {
        for k in ModelKind::ALL {
            assert_eq!(ModelKind::from_name(k.name()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.name()));
        }
    }

    #[test]
    fn ridge_learns_a_trend_and_a_cycle() {
        // A linear trend plus a 20-step sine: ridge on lags extrapolates it.
        let f = |i: usize| 100.0 + 0.5 * i as f64 + 10.0 * (i as f64 * 0.314_159).sin();
        let v: Vec<f64> = (0..400).map(f).collect();
        let p = fit_predict(ModelKind::Ridge, &v, 10.0, 3);
        let truth = f(399 + 3);
        assert!((p - truth).abs() < 1.5, "ridge {p} vs {truth}");
    }

    #[test]
    fn learned_models_handle_constant_series() {
        let v = vec![5.0; 300];
        for k in [ModelKind::Ridge, ModelKind::Forest] {
            let p = fit_predict(k, &v, 10.0, 2);
            assert!((p - 5.0).abs() < 1e-9, "{k}: {p}");
        }
        let z = vec![0.0; 300];
        assert_eq!(fit_predict(ModelKind::Ridge, &z, 10.0, 1), 0.0);
    }

    #[test]
    fn learned_models_need_history_and_a_fit() {
        let cfg = ModelConfig::default();
        let v = vec![1.0; 20];
        let s = Series {
            values: &v,
            step_s: 10.0,
            t0: 0.0,
        };
        let mut r = ModelKind::Ridge.build(&cfg);
        assert!(matches!(
            r.predict(&s, 1),
            Err(ForecastError::NotFitted { .. })
        ));
        let e = r.fit(&s, 1).unwrap_err();
        assert!(matches!(e, ForecastError::NotEnoughHistory { .. }), "{e}");
        assert!(r.min_history(1, 10.0) > 20);
    }

    #[test]
    fn ses_fits_its_factor() {
        // A random walk wants α = 1; white noise around a level wants a
        // small α.
        let mut rng = crate::forecast::synth::Rng::new(1);
        let mut x = 100.0;
        let walk: Vec<f64> = (0..600)
            .map(|_| {
                x += rng.normal() * 3.0;
                x
            })
            .collect();
        let noise: Vec<f64> = (0..600).map(|_| 100.0 + rng.normal() * 3.0).collect();
        for (v, lo, hi) in [(&walk, 0.5, 1.0), (&noise, 0.0, 0.15)] {
            let s = Series {
                values: v,
                step_s: 10.0,
                t0: 0.0,
            };
            let mut m = Ses::default();
            m.fit(&s, 1).unwrap();
            let a = m.alpha().unwrap();
            assert!((lo..=hi).contains(&a), "alpha {a}");
            assert!(m.predict(&s, 2).is_err());
        }
    }

    #[test]
    fn ridge_solve_matches_smartcore_ridge_regression() {
        use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters};
        let mut rng = crate::forecast::synth::Rng::new(2);
        let (rows, cols) = (120, 7);
        let x: Vec<f64> = (0..rows * cols).map(|_| rng.normal()).collect();
        let y: Vec<f64> = (0..rows)
            .map(|i| x[i * cols] * 2.0 - x[i * cols + 3] + rng.normal())
            .collect();
        let ours = ridge_solve(&x, &y, cols, 5.0).unwrap();
        let xm = DenseMatrix::new(rows, cols, x.clone(), false).unwrap();
        let params = RidgeRegressionParameters::default()
            .with_alpha(5.0)
            .with_normalize(false);
        let theirs: RidgeRegression<f64, f64, DenseMatrix<f64>, Vec<f64>> =
            RidgeRegression::fit(&xm, &y, params).unwrap();
        for (j, w) in ours.iter().enumerate() {
            assert!((w - theirs.coefficients().get((j, 0))).abs() < 1e-9);
        }
        // The eigendecomposition path gives the same coefficients for a
        // given penalty, and GCV prefers a small penalty on a clean signal.
        let (gcv, alpha) = ridge_gcv(&x, &y, cols, &[5.0, 5.0 + 1e-12], 120.0).unwrap();
        assert!((alpha - 5.0).abs() < 1e-9);
        for (a, b) in gcv.iter().zip(&ours) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
        let (_, alpha) = ridge_gcv(&x, &y, cols, &[0.1, 1e4], 120.0).unwrap();
        assert_eq!(alpha, 0.1);
        // Too few independent rows for the small penalty's degrees of
        // freedom: the large one wins.
        let (_, alpha) = ridge_gcv(&x, &y, cols, &[0.1, 1e4], 7.5).unwrap();
        assert_eq!(alpha, 1e4);
    }

    #[test]
    fn training_origins_are_dense_then_sparse() {
        assert_eq!(training_origins(5, 9, 10), vec![5, 6, 7, 8, 9]);
        let v = training_origins(0, 999, 100);
        assert_eq!(v.len(), 100);
        assert_eq!(v[0], 0);
        assert_eq!(&v[50..], &(950..=999).collect::<Vec<_>>()[..]);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn forest_tracks_a_step_pattern() {
        // Alternating blocks of 10 steps at 0 and 50: the forest learns when
        // the block flips from the window features.
        let f = |i: usize| {
            if (i / 10).is_multiple_of(2) {
                0.0
            } else {
                50.0
            }
        };
        let v: Vec<f64> = (0..400).map(f).collect();
        let p = fit_predict(ModelKind::Forest, &v, 10.0, 1);
        assert!((p - f(400)).abs() < 15.0, "forest {p}");
    }
}
