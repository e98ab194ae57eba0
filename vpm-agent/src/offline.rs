//! Forecasting and evaluation of a telemetry file (`vpm forecast`, `vpm eval`):
//! read the long CSV, resample every series onto one step through the
//! [`Store`], then forecast or evaluate each series.

use std::path::Path;

use serde::Serialize;

use crate::forecast::{
    EvalOptions, Forecast, ForecastError, ForecasterConfig, SeriesEval, SeriesForecaster, evaluate,
};
use crate::store::input::{self, InputError, ReadOptions, ReadSummary};
use crate::store::{RegularSeries, Store, StoreConfig, StoreError};

/// Errors of the offline commands.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The file could not be read or is malformed (names file, line, column).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The step could not be inferred.
    #[error("{file}: cannot infer the step (no series has two samples); give --step")]
    NoStep {
        /// The file.
        file: String,
    },
    /// The step is unusable.
    #[error("step {step_s} s is not usable: it must be a positive number of milliseconds")]
    BadStep {
        /// The step.
        step_s: f64,
    },
    /// The step is longer than the store's longest (one day).
    #[error(
        "{file}: a step of {step_s} s{} is longer than one day, the longest vpm resamples to; \
         give --step (e.g. --step 5m)",
        if *inferred { " (inferred: the median interval between a series' rows)" } else { "" }
    )]
    StepTooLong {
        /// The file.
        file: String,
        /// The step.
        step_s: f64,
        /// Whether it was inferred rather than given.
        inferred: bool,
    },
    /// The file spans more points per series than vpm keeps.
    #[error(
        "{file}: its rows span {span_s} s (from {first} to {last}), more than 1e8 steps of \
         {step_s} s per series; give a larger --step, or check for a stray timestamp far \
         from the others"
    )]
    TooManyPoints {
        /// The file.
        file: String,
        /// Seconds from the first row to the last.
        span_s: f64,
        /// The step.
        step_s: f64,
        /// The first row's time.
        first: f64,
        /// The last row's time.
        last: f64,
    },
    /// The series together span more steps than vpm lays out.
    #[error(
        "{file}: its {series} series together span {points:.3e} steps of {step_s} s, more \
         than vpm lays out ({max:.0e}); the longest, vm {vm:?} resource {resource:?}, runs \
         from {first} to {last}: check for a stray timestamp far from the others, or give a \
         larger --step"
    )]
    TooManyPointsTotal {
        /// The file.
        file: String,
        /// Series in the file.
        series: usize,
        /// Steps they span together.
        points: f64,
        /// The limit.
        max: f64,
        /// The step.
        step_s: f64,
        /// The longest series' VM.
        vm: String,
        /// Its resource.
        resource: String,
        /// Its first row's time.
        first: f64,
        /// Its last row's time.
        last: f64,
    },
    /// Resampling failed.
    #[error("resampling {file}")]
    Store {
        /// The file.
        file: String,
        /// The error.
        #[source]
        source: StoreError,
    },
    /// The forecaster refused a series or option.
    #[error("{vm}/{resource}")]
    Forecast {
        /// VM.
        vm: String,
        /// Resource.
        resource: String,
        /// The error.
        #[source]
        source: ForecastError,
    },
}

/// The longest step vpm resamples to (the store's limit), seconds.
const MAX_STEP_S: f64 = 86_400.0;

/// The most points per series a file may span (the store's limit).
const MAX_POINTS: f64 = 1e8;

/// The most steps all series together may span (each series is laid out
/// step by step over its own span, gaps included): about 0.5 GB.
const MAX_TOTAL_POINTS: f64 = 1e8;

/// What was loaded.
#[derive(Clone, Debug, Serialize)]
pub struct Loaded {
    /// The file.
    pub file: String,
    /// The model step used.
    pub step_s: f64,
    /// Whether the step was inferred (median sample interval) or given.
    pub step_inferred: bool,
    /// Rows read.
    pub rows: u64,
    /// Rows out of order within their series (sorted), exact duplicates
    /// dropped, negative values clamped.
    pub out_of_order_rows: u64,
    /// Exact duplicate rows dropped.
    pub duplicate_rows_dropped: u64,
    /// Negative values read as 0 (only with clamping on).
    pub negative_clamped: u64,
    /// Repeated header lines skipped (concatenated exports).
    pub headers_skipped: u64,
    /// The regular series, in (vm, resource) order.
    #[serde(skip)]
    pub series: Vec<RegularSeries>,
}

/// Reads `path` and resamples every series onto `step_s` (or the median
/// sample interval when `None`), keeping the whole file.
pub fn load(path: &Path, step_s: Option<f64>, read: &ReadOptions) -> Result<Loaded, OfflineError> {
    let trace = input::read_path(path, read)?;
    let file = trace.file.clone();
    let (step_s, step_inferred) = match step_s {
        Some(s) => (s, false),
        None => {
            let median = trace
                .median_interval_s()
                .ok_or_else(|| OfflineError::NoStep { file: file.clone() })?;
            ((median * 1000.0).round() / 1000.0, true)
        }
    };
    if !(step_s.is_finite() && step_s >= 0.001) {
        return Err(OfflineError::BadStep { step_s });
    }
    if step_s > MAX_STEP_S {
        return Err(OfflineError::StepTooLong {
            file,
            step_s,
            inferred: step_inferred,
        });
    }
    // The file's span, first row to last over every series: the store keeps
    // data back from the newest sample, so a series that ends early is kept
    // only if the retention covers the whole file.
    let first = trace
        .series
        .iter()
        .filter_map(|s| s.timestamps.first().copied())
        .fold(f64::INFINITY, f64::min);
    let last = trace
        .series
        .iter()
        .filter_map(|s| s.timestamps.last().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    let span = if first <= last { last - first } else { 0.0 };
    if span / step_s > MAX_POINTS {
        return Err(OfflineError::TooManyPoints {
            file,
            span_s: span,
            step_s,
            first,
            last,
        });
    }
    // Each series is laid out over its own span, a sparse one (`dev:*`,
    // zero when absent) up to its VM's last row: a stray row far from the
    // rest costs its whole gap, in every series it stretches.
    let mut vm_last: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for s in &trace.series {
        if let Some(&b) = s.timestamps.last() {
            let e = vm_last.entry(s.vm.as_str()).or_insert(b);
            *e = e.max(b);
        }
    }
    let layout = StoreConfig::with_step(step_s);
    let spans = trace.series.iter().filter_map(|s| {
        let a = *s.timestamps.first()?;
        let own = *s.timestamps.last()?;
        let b = if layout.is_sparse(&s.resource) {
            vm_last.get(s.vm.as_str()).copied().unwrap_or(own)
        } else {
            own
        };
        Some((s, a, b))
    });
    let total: f64 = spans.clone().map(|(_, a, b)| (b - a) / step_s + 1.0).sum();
    if total > MAX_TOTAL_POINTS
        && let Some((s, a, b)) = spans.max_by(|x, y| (x.2 - x.1).total_cmp(&(y.2 - y.1)))
    {
        return Err(OfflineError::TooManyPointsTotal {
            file,
            series: trace.series.len(),
            points: total,
            max: MAX_TOTAL_POINTS,
            step_s,
            vm: s.vm.clone(),
            resource: s.resource.clone(),
            first: a,
            last: b,
        });
    }
    let cfg = StoreConfig {
        // An offline file is kept whole, however long it is.
        fine_retention_s: span + 2.0 * step_s,
        coarse_retention_s: span + 2.0 * StoreConfig::with_step(step_s).coarse_step_s,
        max_series: usize::MAX,
        max_series_per_vm: usize::MAX,
        max_value: read.max_value,
        ..StoreConfig::with_step(step_s)
    };
    let store_err = |source| OfflineError::Store {
        file: file.clone(),
        source,
    };
    let mut store = Store::new(cfg).map_err(store_err)?;
    store.ingest_trace(&trace).map_err(store_err)?;
    store.finish().map_err(store_err)?;
    let series: Vec<RegularSeries> = store
        .keys()
        .into_iter()
        .filter_map(|k| store.series(&k.vm, &k.resource))
        .collect();
    // A series with a gap longer than the store bridges restarts after it:
    // say how much of it the forecasts and evaluations use.
    let by_key: std::collections::HashMap<(&str, &str), &input::SeriesSamples> = trace
        .series
        .iter()
        .map(|t| ((t.vm.as_str(), t.resource.as_str()), t))
        .collect();
    for s in &series {
        let Some(rows) = by_key.get(&(s.vm.as_str(), s.resource.as_str())) else {
            continue;
        };
        let before = rows.timestamps.iter().filter(|t| **t < s.start).count();
        if before > 0 {
            log::warn!(
                "{file}: {}/{}: {before} of its {} rows come before a gap longer than the \
                 store bridges at a {step_s} s step; only the {} points from {} on are used \
                 (a larger --step bridges longer gaps)",
                s.vm,
                s.resource,
                rows.timestamps.len(),
                s.values.len(),
                s.start
            );
        }
    }
    let ReadSummary {
        rows,
        out_of_order_rows,
        duplicate_rows_dropped,
        negative_clamped,
        headers_skipped,
        ..
    } = trace.summary;
    Ok(Loaded {
        file,
        step_s,
        step_inferred,
        rows,
        out_of_order_rows,
        duplicate_rows_dropped,
        negative_clamped,
        headers_skipped,
        series,
    })
}

/// Forecasts of one series.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesForecasts {
    /// VM.
    pub vm: String,
    /// Resource.
    pub resource: String,
    /// End of the last step of the series (the forecast origin, unix seconds).
    pub origin: f64,
    /// One per horizon.
    pub forecasts: Vec<Forecast>,
}

/// `horizons_s` without those that round up to the same whole number of
/// steps as an earlier one (`5s,10s` at a 10 s step is one horizon), in the
/// given order; a horizon the forecaster refuses is kept, for it to say why.
pub fn distinct_horizons(horizons_s: &[f64], step_s: f64) -> Vec<f64> {
    let mut seen = std::collections::BTreeSet::new();
    horizons_s
        .iter()
        .copied()
        .filter(|h| match crate::forecast::horizon_steps(*h, step_s) {
            Ok(steps) => seen.insert(steps),
            Err(_) => true,
        })
        .collect()
}

/// Forecasts every series at every horizon from its last point (horizons
/// that round to the same number of steps once).
pub fn forecast_all(
    series: &[RegularSeries],
    horizons_s: &[f64],
    cfg: &ForecasterConfig,
) -> Result<Vec<SeriesForecasts>, OfflineError> {
    series
        .iter()
        .map(|s| {
            let err = |source| OfflineError::Forecast {
                vm: s.vm.clone(),
                resource: s.resource.clone(),
                source,
            };
            let mut f = SeriesForecaster::new(s.step_s, cfg.clone()).map_err(err)?;
            f.observe(&s.values).map_err(err)?;
            let origin = s.end();
            let horizons = distinct_horizons(horizons_s, s.step_s);
            let forecasts = f.forecast(origin, &horizons).map_err(err)?;
            Ok(SeriesForecasts {
                vm: s.vm.clone(),
                resource: s.resource.clone(),
                origin,
                forecasts,
            })
        })
        .collect()
}

/// The evaluation of one series, or why it was skipped.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesEvalEntry {
    /// VM.
    pub vm: String,
    /// Resource.
    pub resource: String,
    /// The evaluation (absent when skipped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<SeriesEval>,
    /// Why the series was not evaluated (too short, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Summary of one horizon over all evaluated series.
#[derive(Clone, Debug, Serialize)]
pub struct HorizonSummary {
    /// Horizon, seconds.
    pub horizon_s: f64,
    /// Series evaluated at this horizon.
    pub series: usize,
    /// Share of them where vpm's selection's WAPE is at or below the best baseline's.
    pub vpm_at_or_below_best_baseline: Option<f64>,
    /// Mean under-provision rate of vpm's upper bound.
    pub vpm_underprov_rate: Option<f64>,
    /// Mean under-provision rate of the VPA rule.
    pub vpa_underprov_rate: Option<f64>,
    /// Mean relative slack of vpm's upper bound.
    pub vpm_relative_slack: Option<f64>,
    /// Mean relative slack of the VPA rule.
    pub vpa_relative_slack: Option<f64>,
}

/// `vpm eval`'s result.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// What was read.
    pub input: Loaded,
    /// Level of the upper bound.
    pub upper_level: f64,
    /// Per horizon, over all series.
    pub summary: Vec<HorizonSummary>,
    /// Per series.
    pub series: Vec<SeriesEvalEntry>,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, sum) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| sum / n as f64)
}

/// Rolling-origin evaluation of every series (see [`evaluate`]; horizons
/// that round to the same number of steps once).
pub fn evaluate_all(loaded: Loaded, horizons_s: &[f64], opts: &EvalOptions) -> EvalReport {
    let horizons_s = &distinct_horizons(horizons_s, loaded.step_s)[..];
    let series: Vec<SeriesEvalEntry> = loaded
        .series
        .iter()
        .map(
            |s| match evaluate(&s.values, s.step_s, s.start, horizons_s, opts) {
                Ok(eval) => SeriesEvalEntry {
                    vm: s.vm.clone(),
                    resource: s.resource.clone(),
                    eval: Some(eval),
                    skipped: None,
                },
                Err(e) => SeriesEvalEntry {
                    vm: s.vm.clone(),
                    resource: s.resource.clone(),
                    eval: None,
                    skipped: Some(crate::telemetry::error_chain(&e)),
                },
            },
        )
        .collect();
    let mut summary = Vec::new();
    let horizons: Vec<f64> = series
        .iter()
        .filter_map(|e| e.eval.as_ref())
        .flat_map(|e| e.horizons.iter().map(|h| h.horizon_s))
        .fold(Vec::new(), |mut acc, h| {
            if !acc.contains(&h) {
                acc.push(h);
            }
            acc
        });
    for h in horizons {
        let rows: Vec<&crate::forecast::HorizonEval> = series
            .iter()
            .filter_map(|e| e.eval.as_ref())
            .filter_map(|e| e.horizons.iter().find(|x| x.horizon_s == h))
            .collect();
        let model = |he: &crate::forecast::HorizonEval, name: &str| {
            he.models.iter().find(|m| m.model == name).cloned()
        };
        summary.push(HorizonSummary {
            horizon_s: h,
            series: rows.len(),
            vpm_at_or_below_best_baseline: mean(
                rows.iter()
                    .filter_map(|r| r.vpm_beats_best_baseline)
                    .map(|b| if b { 1.0 } else { 0.0 }),
            ),
            vpm_underprov_rate: mean(rows.iter().filter_map(|r| model(r, "vpm")?.underprov_rate)),
            vpa_underprov_rate: mean(rows.iter().filter_map(|r| model(r, "vpa")?.underprov_rate)),
            vpm_relative_slack: mean(rows.iter().filter_map(|r| model(r, "vpm")?.relative_slack)),
            vpa_relative_slack: mean(rows.iter().filter_map(|r| model(r, "vpa")?.relative_slack)),
        });
    }
    EvalReport {
        upper_level: opts.forecaster.upper_level,
        input: loaded,
        summary,
        series,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::tracegen::TraceSpec;

    fn write_trace(dir: &Path, hours: f64) -> std::path::PathBuf {
        let spec = TraceSpec::fleet(2, 7, 1_700_000_000.0, hours * 3600.0, 10.0);
        let path = dir.join("t.csv");
        let mut f = std::fs::File::create(&path).expect("create");
        spec.write_csv(&mut f).expect("write");
        path
    }

    #[test]
    fn the_step_is_inferred_and_every_series_forecast() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_trace(dir.path(), 3.0);
        let loaded = load(&path, None, &ReadOptions::default()).expect("load");
        assert_eq!(loaded.step_s, 10.0);
        assert!(loaded.step_inferred);
        assert!(loaded.series.len() >= 10);
        let out = forecast_all(&loaded.series, &[10.0, 60.0], &ForecasterConfig::default())
            .expect("forecast");
        assert_eq!(out.len(), loaded.series.len());
        for s in &out {
            assert_eq!(s.forecasts.len(), 2);
            for f in &s.forecasts {
                assert!(f.predicted.is_finite() && f.predicted >= 0.0);
                assert!(f.lower <= f.upper);
                assert_eq!(f.target_time, s.origin + f.horizon_s);
            }
        }
    }

    #[test]
    fn evaluation_reports_every_series_and_a_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_trace(dir.path(), 6.0);
        let loaded = load(&path, Some(60.0), &ReadOptions::default()).expect("load");
        assert_eq!(loaded.step_s, 60.0);
        let n = loaded.series.len();
        let report = evaluate_all(loaded, &[60.0], &EvalOptions::default());
        assert_eq!(report.series.len(), n);
        assert!(report.series.iter().any(|s| s.eval.is_some()));
        assert_eq!(report.summary.len(), 1);
        assert!(report.summary[0].series > 0);
    }

    #[test]
    fn a_bad_file_names_file_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.csv");
        std::fs::write(
            &path,
            "timestamp,vm,pid,resource,value\n1,a,1,cpu,0.5\n2,a,1,cpu,NaN\n",
        )
        .expect("write");
        let err = load(&path, None, &ReadOptions::default()).expect_err("NaN");
        let msg = err.to_string();
        assert!(
            msg.contains("bad.csv:3") && msg.contains("column 5"),
            "{msg}"
        );
    }

    fn rows(vm: &str, from: f64, n: usize, step: f64) -> String {
        (0..n)
            .map(|i| format!("{},{vm},1,cpu,{}\n", from + i as f64 * step, 1 + i % 3))
            .collect()
    }

    #[test]
    fn series_that_end_or_start_apart_are_all_kept_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("apart.csv");
        // a: 200 rows; b: 200 rows starting after a ended; c: a stray early row.
        let text = format!(
            "timestamp,vm,pid,resource,value\n{}{}{}{}",
            rows("a", 1_700_000_000.0, 200, 10.0),
            rows("b", 1_700_010_000.0, 200, 10.0),
            rows("c", 1_700_000_000.0, 200, 10.0),
            rows("c", 1_699_999_000.0, 1, 10.0),
        );
        std::fs::write(&path, text).expect("write");
        let loaded = load(&path, None, &ReadOptions::default()).expect("load");
        let points: Vec<(&str, usize)> = loaded
            .series
            .iter()
            .map(|s| (s.vm.as_str(), s.values.len()))
            .collect();
        // c's stray row is before a long gap: the series restarts after it.
        assert_eq!(points, vec![("a", 200), ("b", 200), ("c", 200)]);
    }

    #[test]
    fn data_that_breaks_the_store_limits_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("far.csv");
        // Two rows three years apart: the inferred step is over a day.
        std::fs::write(
            &path,
            "timestamp,vm,pid,resource,value\n1600000000,a,1,cpu,1\n1700000000,a,1,cpu,1\n",
        )
        .expect("write");
        let msg = load(&path, None, &ReadOptions::default())
            .expect_err("step")
            .to_string();
        assert!(
            msg.contains("far.csv") && msg.contains("inferred") && msg.contains("--step"),
            "{msg}"
        );
        // A stray timestamp far from the rest at a fine step.
        std::fs::write(
            &path,
            format!(
                "timestamp,vm,pid,resource,value\n{}0,b,1,cpu,1\n",
                rows("a", 1_700_000_000.0, 10, 10.0)
            ),
        )
        .expect("write");
        let msg = load(&path, Some(0.01), &ReadOptions::default())
            .expect_err("span")
            .to_string();
        assert!(
            msg.contains("far.csv") && msg.contains("stray timestamp") && msg.contains("--step"),
            "{msg}"
        );
        // Under the per-series limit, but 30 series each with a row 40 days
        // on: together far past what vpm lays out (it needed gigabytes).
        let mut text = String::from("timestamp,vm,pid,resource,value\n");
        for v in 0..30 {
            for i in 0..20 {
                text.push_str(&format!("{},vm{v},1,cpu,1\n", 1_700_000_000 + i));
            }
            text.push_str(&format!("{},vm{v},1,cpu,1\n", 1_700_000_000 + 40 * 86_400));
        }
        std::fs::write(&path, text).expect("write");
        let msg = load(&path, Some(1.0), &ReadOptions::default())
            .expect_err("total")
            .to_string();
        assert!(
            msg.contains("30 series together") && msg.contains("stray timestamp"),
            "{msg}"
        );
        // Sparse dev:* series are laid out up to their VM's last row: one
        // stray cpu row stretches all of them.
        let mut text = String::from("timestamp,vm,pid,resource,value\n");
        for d in 0..40 {
            for i in 0..20 {
                text.push_str(&format!(
                    "{},a,1,dev:pio:{d:#x}_per_s,1\n",
                    1_700_000_000 + i
                ));
            }
        }
        text.push_str(&format!("{},a,1,cpu,1\n", 1_700_000_000 + 40 * 86_400));
        std::fs::write(&path, text).expect("write");
        let msg = load(&path, Some(1.0), &ReadOptions::default())
            .expect_err("sparse total")
            .to_string();
        assert!(msg.contains("41 series together"), "{msg}");
    }

    #[test]
    fn horizons_that_round_to_the_same_step_count_once() {
        assert_eq!(
            distinct_horizons(&[5.0, 10.0, 60.0, 55.0], 10.0),
            vec![5.0, 60.0]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_trace(dir.path(), 1.0);
        let loaded = load(&path, None, &ReadOptions::default()).expect("load");
        let out = forecast_all(
            &loaded.series[..1],
            &[5.0, 10.0],
            &ForecasterConfig::default(),
        )
        .expect("forecast");
        assert_eq!(out[0].forecasts.len(), 1);
    }
}
