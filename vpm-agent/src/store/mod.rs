//! Telemetry storage: vpm's long CSV format ([`long`] writes it, [`input`]
//! reads it) and the [`Store`], which turns samples into regular, bounded
//! series for the forecaster.
//!
//! # The store
//!
//! Samples (rows of the long format) come in each tick ([`Store::ingest_rows`]) or
//! in bulk from a file ([`Store::ingest_trace`]). Each (vm, resource) series is
//! resampled onto a regular **model step** (default 10 s) and kept in two tiers:
//!
//! | tier | resolution | kept for (default) | points per series | read with |
//! | --- | --- | --- | --- | --- |
//! | fine | the model step (10 s) | 1 day | 8,640 | [`Store::series`] |
//! | coarse | 5 min, mean and max of the fine steps | 8 days | 2,304 × 2 | [`Store::series_coarse`] |
//!
//! Points are stored as `f32`, so a series costs at most about 54 kB with the
//! defaults (measured: 53,762 bytes with its share of the indexes), however long
//! it runs ([`Store::memory_bytes`] estimates the
//! total). Both tiers and the limits below are set in [`StoreConfig`].
//!
//! ## Rules
//!
//! - **Steps.** Step `k` covers `[k·step, (k+1)·step)` in unix time; a sample stamped
//!   `t` belongs to step `floor(t / step)`. A step's value is the **mean** of its
//!   samples (rates and gauges alike). The resampling is a polars `group_by_dynamic`
//!   over the rows of all series at once, run when steps close.
//! - **Sparse resources.** vpm writes a `dev:*` row only in ticks where the device
//!   had events, so for resources starting with a prefix in
//!   [`StoreConfig::sparse_prefixes`] (default `dev:`) an absent row in a tick where
//!   the VM reported anything else means 0: the step value is the sum of the rows
//!   divided by the VM's number of distinct ticks in the step. Before its first row a
//!   sparse series does not exist.
//! - **Closing steps.** A step closes when a sample stamped at least
//!   [`StoreConfig::lateness_s`] (default one step) after its end has arrived
//!   (or at [`Store::advance`] / [`Store::finish`]). Samples may arrive in any order
//!   until their step closes; a sample for a closed step is **late**: dropped and
//!   counted ([`IngestReport::late`]).
//! - **Duplicates.** Rows of a series with the same timestamp all count toward
//!   the step's mean. (Files are read by [`input`], which drops exact duplicate rows
//!   and refuses conflicting ones before they get here.)
//! - **Gaps.** A step with no sample (the VM did not report) is missing. A run of
//!   at most [`StoreConfig::max_fill_steps`] (default 6, one minute) missing steps
//!   between two known steps is filled by linear interpolation; a longer gap
//!   **restarts** the series: [`Store::series`] returns only the points after the
//!   last long gap (older points stay stored, for the coarse tier, until retention
//!   drops them). The coarse tier takes the mean and max of the fine steps that hold
//!   data and fills its own gaps of at most [`StoreConfig::coarse_max_fill_steps`]
//!   (default 12, one hour) the same way, so a short outage does not cut the weekly
//!   history.
//! - **Bad samples.** A non-finite, negative or over-cap value, a timestamp outside
//!   `0 <= t < 1e11`, or an empty name is rejected and counted
//!   ([`IngestReport::rejected`]); nothing bad is stored.
//! - **Bounds.** At most [`StoreConfig::max_series`] series in all and
//!   [`StoreConfig::max_series_per_vm`] per VM (a guest touching many MMIO pages
//!   makes many `dev:mmio:*` series); rows of further series are counted in
//!   [`IngestReport::over_limit`] and dropped; at the total limit a series with
//!   nothing left at full resolution (its VM stopped reporting) gives its slot
//!   to a new one first. Series with nothing left inside the
//!   coarse retention are forgotten.

pub mod input;
pub mod long;
mod resample;
mod tier;

use std::collections::HashMap;

use resample::{Pending, StepAgg};
use tier::Tier;

/// How the store resamples and how much it keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// The model step, seconds (a whole number of milliseconds). Default 10.
    pub step_s: f64,
    /// How long the fine tier keeps points, seconds. Default 86,400 (one day).
    pub fine_retention_s: f64,
    /// The coarse tier's step, seconds; a multiple of `step_s`. Default 300.
    pub coarse_step_s: f64,
    /// How long the coarse tier keeps points, seconds. Default 691,200 (8 days).
    pub coarse_retention_s: f64,
    /// Longest run of missing fine steps filled by interpolation. Default 6.
    pub max_fill_steps: usize,
    /// Longest run of missing coarse points filled by interpolation. Default 12.
    pub coarse_max_fill_steps: usize,
    /// How long after a step's end it stays open for late samples, seconds.
    /// Default 10 (one step).
    pub lateness_s: f64,
    /// Resource name prefixes whose absent rows mean 0. Default `["dev:"]`.
    pub sparse_prefixes: Vec<String>,
    /// Largest accepted value. Default 1e15 (see [`input::DEFAULT_MAX_VALUE`]).
    pub max_value: f64,
    /// Most series kept. Default 4,096.
    pub max_series: usize,
    /// Most series kept per VM. Default 256.
    pub max_series_per_vm: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            step_s: 10.0,
            fine_retention_s: 86_400.0,
            coarse_step_s: 300.0,
            coarse_retention_s: 8.0 * 86_400.0,
            max_fill_steps: 6,
            coarse_max_fill_steps: 12,
            lateness_s: 10.0,
            sparse_prefixes: vec!["dev:".to_owned()],
            max_value: input::DEFAULT_MAX_VALUE,
            max_series: 4096,
            max_series_per_vm: 256,
        }
    }
}

impl StoreConfig {
    /// Whether `resource` is a sparse series (a [`sparse_prefixes`] match):
    /// absent in a tick where its VM reported means 0.
    ///
    /// [`sparse_prefixes`]: Self::sparse_prefixes
    pub fn is_sparse(&self, resource: &str) -> bool {
        self.sparse_prefixes
            .iter()
            .any(|p| resource.starts_with(p.as_str()))
    }

    /// The defaults with another model step: lateness one step, the coarse step the
    /// smallest multiple of `step_s` that is at least 5 minutes.
    pub fn with_step(step_s: f64) -> Self {
        let coarse = if step_s > 0.0 && step_s.is_finite() {
            (300.0 / step_s).ceil().max(1.0) * step_s
        } else {
            300.0
        };
        Self {
            step_s,
            coarse_step_s: coarse,
            lateness_s: step_s,
            ..Self::default()
        }
    }

    /// Checks the numbers; the store refuses a configuration that fails.
    pub fn validate(&self) -> Result<(), StoreError> {
        let bad = |field: &'static str, value: f64, reason: &'static str| {
            Err(StoreError::Config {
                field,
                value,
                reason,
            })
        };
        let whole_ms = |s: f64| (s * 1000.0 - (s * 1000.0).round()).abs() < 1e-6;
        if !(self.step_s.is_finite() && self.step_s >= 0.001 && whole_ms(self.step_s)) {
            return bad(
                "step_s",
                self.step_s,
                "must be a whole number of milliseconds, at least 0.001",
            );
        }
        if self.step_s > 86_400.0 {
            return bad("step_s", self.step_s, "must be at most one day");
        }
        let ratio = self.coarse_step_s / self.step_s;
        if !(self.coarse_step_s.is_finite() && ratio >= 1.0 && (ratio - ratio.round()).abs() < 1e-9)
        {
            return bad(
                "coarse_step_s",
                self.coarse_step_s,
                "must be a whole multiple of step_s",
            );
        }
        if !(self.fine_retention_s.is_finite() && self.fine_retention_s >= self.step_s) {
            return bad(
                "fine_retention_s",
                self.fine_retention_s,
                "must be at least one step",
            );
        }
        if !(self.coarse_retention_s.is_finite() && self.coarse_retention_s >= self.coarse_step_s) {
            return bad(
                "coarse_retention_s",
                self.coarse_retention_s,
                "must be at least one coarse step",
            );
        }
        // 100 million points (400 MB) per tier and series is surely a typo.
        if self.fine_retention_s / self.step_s > 1e8
            || self.coarse_retention_s / self.coarse_step_s > 1e8
        {
            return bad(
                "fine_retention_s",
                self.fine_retention_s,
                "keeps more than 1e8 points per series",
            );
        }
        if !(self.lateness_s.is_finite() && self.lateness_s >= 0.0) {
            return bad("lateness_s", self.lateness_s, "must be >= 0");
        }
        if !(self.max_value.is_finite() && self.max_value > 0.0) {
            return bad("max_value", self.max_value, "must be finite and > 0");
        }
        if self.max_series == 0 || self.max_series_per_vm == 0 {
            return bad("max_series", 0.0, "must be at least 1");
        }
        Ok(())
    }
}

/// A regular series for the forecaster: `values[i]` is the mean over
/// `[start + i·step_s, start + (i+1)·step_s)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RegularSeries {
    /// VM name.
    pub vm: String,
    /// Resource name.
    pub resource: String,
    /// Unix seconds at the start of `values[0]`'s step.
    pub start: f64,
    /// Step, seconds.
    pub step_s: f64,
    /// Values, finite and `>= 0`, without gaps.
    pub values: Vec<f64>,
}

impl RegularSeries {
    /// Unix seconds at the end of the last step.
    pub fn end(&self) -> f64 {
        self.start + self.step_s * self.values.len() as f64
    }
}

/// A series' name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// VM name.
    pub vm: String,
    /// Resource name.
    pub resource: String,
}

/// Which coarse statistic to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoarseAgg {
    /// Mean of the fine steps in each coarse step.
    Mean,
    /// Max of the fine steps in each coarse step.
    Max,
}

/// What one ingest call did with its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Rows taken.
    pub accepted: u64,
    /// Rows for steps already closed, dropped.
    pub late: u64,
    /// Rows with a bad value, timestamp or name, dropped.
    pub rejected: u64,
    /// Rows of series beyond the series limits, dropped.
    pub over_limit: u64,
}

impl IngestReport {
    fn add(&mut self, o: &IngestReport) {
        self.accepted += o.accepted;
        self.late += o.late;
        self.rejected += o.rejected;
        self.over_limit += o.over_limit;
    }
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A configuration value out of range.
    #[error("store configuration: {field} = {value}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What is wrong.
        reason: &'static str,
    },
    /// polars failed to resample (a bug: the input is checked first).
    #[error("resampling {rows} samples")]
    Resample {
        /// Samples in the batch (they are dropped).
        rows: usize,
        /// The polars error.
        #[source]
        source: polars::error::PolarsError,
    },
}

/// The open coarse bucket of a series.
#[derive(Clone, Copy, Debug)]
struct CoarseAcc {
    bucket: i64,
    sum: f64,
    n: u32,
    max: f32,
}

#[derive(Debug)]
struct SeriesState {
    vm: String,
    resource: String,
    vm_id: u32,
    sparse: bool,
    /// First step with a row (sparse series get zeros only from there on).
    first_step: Option<i64>,
    fine: Tier,
    mean: Tier,
    max: Tier,
    acc: Option<CoarseAcc>,
}

impl SeriesState {
    /// Appends fine step `idx` and feeds the coarse bucket; `false` if late.
    fn push_fine(&mut self, idx: i64, v: f64, ratio: i64) -> bool {
        let v = v as f32;
        if !self.fine.push(idx, v) {
            return false;
        }
        let bucket = idx.div_euclid(ratio);
        if let Some(acc) = self.acc
            && acc.bucket != bucket
        {
            self.emit_coarse();
        }
        let acc = self.acc.get_or_insert(CoarseAcc {
            bucket,
            sum: 0.0,
            n: 0,
            max: f32::NAN,
        });
        if v.is_finite() {
            acc.sum += f64::from(v);
            acc.n += 1;
            acc.max = if acc.max.is_nan() { v } else { acc.max.max(v) };
        }
        true
    }

    /// Writes the open bucket's mean and max (replacing an earlier partial
    /// write of the same bucket) and closes it.
    fn emit_coarse(&mut self) {
        self.publish_coarse();
        self.acc = None;
    }

    /// Writes the open bucket's mean and max, keeping it open: a later write of
    /// the same bucket replaces them.
    fn publish_coarse(&mut self) {
        if let Some(acc) = self.acc {
            let mean = if acc.n > 0 {
                (acc.sum / f64::from(acc.n)) as f32
            } else {
                f32::NAN
            };
            self.mean.upsert(acc.bucket, mean);
            self.max.upsert(acc.bucket, acc.max);
        }
    }

    fn heap_bytes(&self) -> usize {
        self.vm.capacity()
            + self.resource.capacity()
            + self.fine.heap_bytes()
            + self.mean.heap_bytes()
            + self.max.heap_bytes()
    }
}

#[derive(Debug)]
struct VmEntry {
    id: u32,
    /// resource → series id
    series: HashMap<String, u32>,
}

/// Per-series regular, bounded history (see the module docs for the rules).
#[derive(Debug)]
pub struct Store {
    cfg: StoreConfig,
    step_ms: i64,
    /// Fine steps per coarse step.
    ratio: i64,
    fine_cap: usize,
    coarse_cap: usize,
    lateness_ms: i64,
    vms: HashMap<String, VmEntry>,
    series: HashMap<u32, SeriesState>,
    next_sid: u32,
    next_vm: u32,
    pending: Pending,
    /// Steps ending at or before this are closed (ms).
    frontier_ms: Option<i64>,
    newest_ms: Option<i64>,
    totals: IngestReport,
    /// A stale slot was looked for in this batch and none found: not again
    /// until the next batch (each look scans every series).
    no_stale_slot: bool,
}

impl Store {
    /// An empty store.
    pub fn new(cfg: StoreConfig) -> Result<Self, StoreError> {
        cfg.validate()?;
        let step_ms = (cfg.step_s * 1000.0).round() as i64;
        let ratio = (cfg.coarse_step_s / cfg.step_s).round() as i64;
        let fine_cap = (cfg.fine_retention_s / cfg.step_s).ceil() as usize;
        let coarse_cap = (cfg.coarse_retention_s / cfg.coarse_step_s).ceil() as usize;
        let lateness_ms = (cfg.lateness_s * 1000.0).round() as i64;
        Ok(Self {
            cfg,
            step_ms,
            ratio,
            fine_cap,
            coarse_cap,
            lateness_ms,
            vms: HashMap::new(),
            series: HashMap::new(),
            next_sid: 0,
            next_vm: 0,
            pending: Pending::default(),
            frontier_ms: None,
            newest_ms: None,
            totals: IngestReport::default(),
            no_stale_slot: false,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Totals of every ingest so far.
    pub fn totals(&self) -> IngestReport {
        self.totals
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// No series yet.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Unix seconds of the newest sample taken.
    pub fn newest(&self) -> Option<f64> {
        self.newest_ms.map(|ms| ms as f64 / 1000.0)
    }

    /// Ingests one tick's (or any batch of) rows, then closes the steps that the
    /// newest timestamp seen allows (see "Closing steps").
    pub fn ingest_rows(&mut self, rows: &[long::Row]) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        self.no_stale_slot = false;
        for r in rows {
            self.ingest_one(&r.vm, &r.resource, r.timestamp, r.value, &mut report);
        }
        self.totals.add(&report);
        if let Some(newest) = self.newest_ms {
            self.close_until(self.floor_step(newest - self.lateness_ms))?;
        }
        Ok(report)
    }

    /// Ingests a whole file read by [`input::read`] and closes every step
    /// ([`Store::finish`]).
    pub fn ingest_trace(&mut self, trace: &input::Trace) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        for s in &trace.series {
            for (&t, &v) in s.timestamps.iter().zip(&s.values) {
                self.ingest_one(&s.vm, &s.resource, t, v, &mut report);
            }
        }
        self.totals.add(&report);
        self.finish()?;
        Ok(report)
    }

    /// Closes the steps that ended `lateness_s` or more before `now` (unix
    /// seconds) and applies retention, even if no rows arrive (VMs gone).
    pub fn advance(&mut self, now: f64) -> Result<(), StoreError> {
        if !now.is_finite() {
            return Ok(());
        }
        let now_ms = (now * 1000.0).round() as i64;
        self.close_until(self.floor_step(now_ms - self.lateness_ms))
    }

    /// Closes everything, for the end of a file: the step holding the newest
    /// sample closes (later samples for it will be late), and each open coarse
    /// bucket is written as it stands (later fine steps in it update it).
    pub fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(newest) = self.newest_ms {
            self.close_until(self.floor_step(newest) + self.step_ms)?;
        }
        for s in self.series.values_mut() {
            s.publish_coarse();
        }
        Ok(())
    }

    /// The series' fine tier: its latest run of known steps (after the last long
    /// gap). `None` for an unknown series or one without a closed step yet.
    pub fn series(&self, vm: &str, resource: &str) -> Option<RegularSeries> {
        let s = self.state(vm, resource)?;
        let (first, values) = s.fine.latest_run()?;
        Some(RegularSeries {
            vm: s.vm.clone(),
            resource: s.resource.clone(),
            start: (first * self.step_ms) as f64 / 1000.0,
            step_s: self.cfg.step_s,
            values,
        })
    }

    /// The series' coarse tier (mean or max per coarse step), latest run.
    pub fn series_coarse(&self, vm: &str, resource: &str, agg: CoarseAgg) -> Option<RegularSeries> {
        let s = self.state(vm, resource)?;
        let tier = match agg {
            CoarseAgg::Mean => &s.mean,
            CoarseAgg::Max => &s.max,
        };
        let (first, values) = tier.latest_run()?;
        Some(RegularSeries {
            vm: s.vm.clone(),
            resource: s.resource.clone(),
            start: (first * self.step_ms * self.ratio) as f64 / 1000.0,
            step_s: self.cfg.coarse_step_s,
            values,
        })
    }

    /// Every series, sorted by (vm, resource).
    pub fn keys(&self) -> Vec<SeriesKey> {
        let mut keys: Vec<SeriesKey> = self
            .series
            .values()
            .map(|s| SeriesKey {
                vm: s.vm.clone(),
                resource: s.resource.clone(),
            })
            .collect();
        keys.sort();
        keys
    }

    /// Estimated bytes held: series buffers and names, indexes, and samples
    /// waiting for their step to close.
    pub fn memory_bytes(&self) -> usize {
        // Hash tables: one slot of key + value + a control byte per bucket.
        let series_slot = size_of::<(u32, SeriesState)>() + 1;
        let name_slot = size_of::<(String, u32)>() + 1;
        let vm_slot = size_of::<(String, VmEntry)>() + 1;
        let series: usize = self.series.values().map(SeriesState::heap_bytes).sum();
        let index: usize = self
            .vms
            .iter()
            .map(|(name, e)| {
                name.capacity()
                    + e.series.capacity() * name_slot
                    + e.series.keys().map(String::capacity).sum::<usize>()
            })
            .sum();
        size_of::<Self>()
            + self.series.capacity() * series_slot
            + series
            + self.vms.capacity() * vm_slot
            + index
            + self.pending.heap_bytes()
    }

    fn state(&self, vm: &str, resource: &str) -> Option<&SeriesState> {
        let sid = self.vms.get(vm)?.series.get(resource)?;
        self.series.get(sid)
    }

    fn floor_step(&self, ms: i64) -> i64 {
        ms.div_euclid(self.step_ms) * self.step_ms
    }

    fn ingest_one(&mut self, vm: &str, resource: &str, t: f64, v: f64, report: &mut IngestReport) {
        let ok_time = t.is_finite() && (0.0..input::MAX_TIMESTAMP_S).contains(&t);
        let ok_value = v.is_finite() && v >= 0.0;
        if !ok_time || !ok_value || v > self.cfg.max_value || vm.is_empty() || resource.is_empty() {
            report.rejected += 1;
            return;
        }
        let t_ms = (t * 1000.0).round() as i64;
        if self.frontier_ms.is_some_and(|f| t_ms < f) {
            report.late += 1;
            return;
        }
        let Some((sid, vm_id)) = self.series_id(vm, resource) else {
            report.over_limit += 1;
            return;
        };
        self.pending.push(sid, vm_id, t_ms, v.abs());
        self.newest_ms = Some(self.newest_ms.map_or(t_ms, |n| n.max(t_ms)));
        report.accepted += 1;
    }

    /// Finds or creates a series; `None` past the series limits.
    fn series_id(&mut self, vm: &str, resource: &str) -> Option<(u32, u32)> {
        if let Some(e) = self.vms.get(vm)
            && let Some(&sid) = e.series.get(resource)
        {
            return Some((sid, e.id));
        }
        // A VM at its own limit gets nothing, and frees nothing for it.
        if self
            .vms
            .get(vm)
            .is_some_and(|e| e.series.len() >= self.cfg.max_series_per_vm)
        {
            return None;
        }
        if self.series.len() >= self.cfg.max_series && !self.free_a_stale_slot() {
            return None;
        }
        if !self.vms.contains_key(vm) {
            let id = self.next_vm;
            self.next_vm = self.next_vm.wrapping_add(1);
            self.vms.insert(
                vm.to_owned(),
                VmEntry {
                    id,
                    series: HashMap::new(),
                },
            );
        }
        let entry = self.vms.get_mut(vm)?;
        if entry.series.len() >= self.cfg.max_series_per_vm {
            return None;
        }
        let sid = self.next_sid;
        self.next_sid = self.next_sid.wrapping_add(1);
        entry.series.insert(resource.to_owned(), sid);
        let sparse = self.cfg.is_sparse(resource);
        self.series.insert(
            sid,
            SeriesState {
                vm: vm.to_owned(),
                resource: resource.to_owned(),
                vm_id: entry.id,
                sparse,
                first_step: None,
                fine: Tier::new(self.fine_cap, self.cfg.max_fill_steps),
                mean: Tier::new(self.coarse_cap, self.cfg.coarse_max_fill_steps),
                max: Tier::new(self.coarse_cap, self.cfg.coarse_max_fill_steps),
                acc: None,
            },
        );
        Some((sid, entry.id))
    }

    /// Resamples the pending samples before `until_ms` (a step boundary) into the
    /// tiers, closes coarse buckets that are complete, and applies retention.
    fn close_until(&mut self, until_ms: i64) -> Result<(), StoreError> {
        if self.frontier_ms.is_some_and(|f| until_ms <= f) {
            return Ok(());
        }
        let batch = self.pending.take_before(until_ms);
        let rows = batch.len();
        let (steps, ticks) = resample::aggregate(batch, self.step_ms)
            .map_err(|source| StoreError::Resample { rows, source })?;

        // Group by series, in step order.
        let mut by_sid: HashMap<u32, Vec<StepAgg>> = HashMap::new();
        for s in steps {
            by_sid.entry(s.sid).or_default().push(s);
        }
        let mut vm_ticks: HashMap<u32, Vec<(i64, u32)>> = HashMap::new();
        for t in ticks {
            vm_ticks.entry(t.vm).or_default().push((t.step, t.ticks));
        }
        for v in vm_ticks.values_mut() {
            v.sort_unstable();
        }
        let ratio = self.ratio;
        for (sid, s) in self.series.iter_mut() {
            let mut aggs = by_sid.remove(sid).unwrap_or_default();
            aggs.sort_by_key(|a| a.step);
            if let Some(first) = aggs.first() {
                s.first_step.get_or_insert(first.step);
            }
            if s.sparse {
                // Every step the VM reported in, from the series' first row on: the
                // sum of the series' rows over the VM's ticks (0 without rows).
                let Some(first) = s.first_step else { continue };
                let Some(vt) = vm_ticks.get(&s.vm_id) else {
                    continue;
                };
                let mut a = aggs.iter().peekable();
                for &(step, n) in vt.iter().filter(|(step, _)| *step >= first) {
                    while a.peek().is_some_and(|x| x.step < step) {
                        a.next();
                    }
                    let sum = match a.peek() {
                        Some(x) if x.step == step => x.sum,
                        _ => 0.0,
                    };
                    s.push_fine(step, sum / f64::from(n.max(1)), ratio);
                }
            } else {
                for a in &aggs {
                    s.push_fine(a.step, a.sum / f64::from(a.rows.max(1)), ratio);
                }
            }
        }
        // Coarse buckets that ended by now are complete.
        let bucket_ms = self.step_ms * self.ratio;
        for s in self.series.values_mut() {
            if s.acc
                .is_some_and(|a| (a.bucket + 1) * bucket_ms <= until_ms)
            {
                s.emit_coarse();
            }
        }
        self.frontier_ms = Some(until_ms);
        self.evict(until_ms);
        Ok(())
    }

    /// Drops points older than each tier's retention, then series and VMs left empty.
    fn evict(&mut self, now_ms: i64) {
        let fine_min = (now_ms - (self.fine_cap as i64) * self.step_ms).div_euclid(self.step_ms);
        let bucket_ms = self.step_ms * self.ratio;
        let coarse_min = (now_ms - (self.coarse_cap as i64) * bucket_ms).div_euclid(bucket_ms);
        let mut gone = Vec::new();
        for (sid, s) in self.series.iter_mut() {
            s.fine.trim_before(fine_min);
            s.mean.trim_before(coarse_min);
            s.max.trim_before(coarse_min);
            if s.acc.is_some_and(|a| a.bucket < coarse_min) {
                s.acc = None;
            }
            if s.fine.is_empty() && s.mean.is_empty() && s.acc.is_none() && s.first_step.is_some() {
                gone.push(*sid);
            }
        }
        if !gone.is_empty() {
            // Series with samples still waiting for their step are kept, empty or not.
            let waiting: std::collections::HashSet<u32> =
                self.pending.sid.iter().copied().collect();
            gone.retain(|sid| !waiting.contains(sid));
        }
        for sid in gone {
            self.remove_series(sid);
        }
    }

    fn remove_series(&mut self, sid: u32) {
        let Some(s) = self.series.remove(&sid) else {
            return;
        };
        if let Some(e) = self.vms.get_mut(&s.vm) {
            e.series.remove(&s.resource);
            if e.series.is_empty() {
                self.vms.remove(&s.vm);
            }
        }
    }

    /// Frees the slot of one series of a VM that stopped reporting: none of
    /// its series has anything left at full resolution (longer ago than the
    /// fine retention; only 5-minute history is left) or waits to be stored.
    /// A live VM's quiet series (rates written only when non-zero) keep
    /// theirs. `false` when there is none (then not looked for again in this
    /// batch).
    fn free_a_stale_slot(&mut self) -> bool {
        if self.no_stale_slot {
            return false;
        }
        let waiting: std::collections::HashSet<u32> = self.pending.sid.iter().copied().collect();
        let live_vms: std::collections::HashSet<u32> = self
            .series
            .iter()
            .filter(|(sid, s)| {
                !s.fine.is_empty() || s.first_step.is_none() || waiting.contains(sid)
            })
            .map(|(_, s)| s.vm_id)
            .collect();
        let stale = self
            .series
            .iter()
            .filter(|(_, s)| !live_vms.contains(&s.vm_id))
            .map(|(sid, _)| *sid)
            .min();
        self.no_stale_slot = stale.is_none();
        match stale {
            Some(sid) => {
                self.remove_series(sid);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::tracegen::TraceSpec;
    use long::Row;

    /// A multiple of every step used here.
    const T0: f64 = 1_700_000_100.0;

    fn row(t: f64, vm: &str, resource: &str, value: f64) -> Row {
        Row {
            timestamp: t,
            vm: vm.into(),
            pid: 1,
            resource: resource.into(),
            value,
        }
    }

    fn store() -> Store {
        Store::new(StoreConfig::default()).expect("default config")
    }

    fn values(s: &Store, vm: &str, resource: &str) -> (f64, Vec<f64>) {
        let r = s.series(vm, resource).expect("series");
        (r.start, r.values)
    }

    #[test]
    fn steps_hold_the_mean_of_their_samples() {
        let mut s = store();
        // 1 s ticks, values 0..19: steps [T0, T0+10) and [T0+10, T0+20).
        let rows: Vec<Row> = (0..20)
            .map(|i| row(T0 + f64::from(i), "a", "cpu", f64::from(i)))
            .collect();
        s.ingest_rows(&rows).expect("ingest");
        assert!(s.series("a", "cpu").is_none(), "no step has closed yet");
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "cpu"), (T0, vec![4.5, 14.5]));
        let r = s.series("a", "cpu").expect("series");
        assert_eq!((r.step_s, r.end()), (10.0, T0 + 20.0));
    }

    #[test]
    fn steps_close_once_the_lateness_has_passed() {
        let mut s = store();
        s.ingest_rows(&[row(T0 + 5.0, "a", "cpu", 1.0)])
            .expect("ingest");
        s.ingest_rows(&[row(T0 + 19.0, "a", "cpu", 2.0)])
            .expect("ingest");
        assert!(
            s.series("a", "cpu").is_none(),
            "step 0 may still get late rows"
        );
        s.ingest_rows(&[row(T0 + 20.0, "a", "cpu", 3.0)])
            .expect("ingest");
        assert_eq!(values(&s, "a", "cpu"), (T0, vec![1.0]));
        // The clock alone closes steps too.
        s.advance(T0 + 40.0).expect("advance");
        assert_eq!(values(&s, "a", "cpu"), (T0, vec![1.0, 2.0, 3.0]));
    }

    #[test]
    fn out_of_order_rows_count_until_their_step_closes_then_are_late() {
        let mut s = store();
        let mut rows: Vec<Row> = (0..20)
            .map(|i| row(T0 + f64::from(i), "a", "cpu", f64::from(i)))
            .collect();
        rows.reverse();
        s.ingest_rows(&rows).expect("ingest");
        s.ingest_rows(&[row(T0 + 30.0, "a", "cpu", 0.0)])
            .expect("ingest");
        let report = s
            .ingest_rows(&[row(T0 + 3.0, "a", "cpu", 1000.0)])
            .expect("ingest");
        assert_eq!(report.late, 1);
        assert_eq!(report.accepted, 0);
        assert_eq!(values(&s, "a", "cpu"), (T0, vec![4.5, 14.5]));
        assert_eq!(s.totals().late, 1);
    }

    #[test]
    fn duplicate_rows_all_count_toward_the_mean() {
        let mut s = store();
        s.ingest_rows(&[
            row(T0, "a", "cpu", 1.0),
            row(T0, "a", "cpu", 1.0),
            row(T0 + 1.0, "a", "cpu", 4.0),
        ])
        .expect("ingest");
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "cpu").1, vec![2.0]);
    }

    #[test]
    fn bad_samples_are_rejected_not_stored() {
        let mut s = store();
        let report = s
            .ingest_rows(&[
                row(T0, "a", "cpu", f64::NAN),
                row(T0, "a", "cpu", f64::INFINITY),
                row(T0, "a", "cpu", -1.0),
                row(T0, "a", "cpu", 2e15),
                row(f64::NAN, "a", "cpu", 1.0),
                row(-1.0, "a", "cpu", 1.0),
                row(1e12, "a", "cpu", 1.0),
                row(T0, "", "cpu", 1.0),
                row(T0, "a", "", 1.0),
                row(T0, "a", "cpu", 3.0),
            ])
            .expect("ingest");
        assert_eq!(
            report,
            IngestReport {
                accepted: 1,
                late: 0,
                rejected: 9,
                over_limit: 0
            }
        );
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "cpu").1, vec![3.0]);
        assert_eq!(s.keys().len(), 1);
    }

    #[test]
    fn sparse_device_rows_mean_zero_when_the_vm_reported() {
        let mut s = store();
        let mut rows = Vec::new();
        for i in 0..30 {
            let t = T0 + f64::from(i);
            rows.push(row(t, "a", "cpu", 1.0));
            // Device busy in 3 ticks of the first step, then idle for two steps.
            if i < 3 {
                rows.push(row(t, "a", "dev:pio:0x3f8_per_s", 10.0));
            }
        }
        s.ingest_rows(&rows).expect("ingest");
        s.finish().expect("finish");
        assert_eq!(
            values(&s, "a", "dev:pio:0x3f8_per_s"),
            (T0, vec![3.0, 0.0, 0.0])
        );
        assert_eq!(values(&s, "a", "cpu").1, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn sparse_series_have_gaps_when_the_vm_is_silent() {
        let mut s = store();
        let mut rows = vec![row(T0, "a", "cpu", 1.0), row(T0, "a", "dev:x_per_s", 4.0)];
        // The VM is silent for 20 steps (a long gap), then reports without device rows.
        rows.push(row(T0 + 210.0, "a", "cpu", 1.0));
        s.ingest_rows(&rows).expect("ingest");
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "dev:x_per_s"), (T0 + 210.0, vec![0.0]));
    }

    #[test]
    fn short_gaps_are_interpolated_long_gaps_restart_the_series() {
        let mut s = store();
        let mut rows = vec![row(T0, "a", "cpu", 1.0), row(T0 + 10.0, "a", "cpu", 2.0)];
        // Steps 2..=4 missing (3 <= max_fill_steps 6): interpolated.
        rows.push(row(T0 + 50.0, "a", "cpu", 6.0));
        s.ingest_rows(&rows).expect("ingest");
        s.finish().expect("finish");
        assert_eq!(
            values(&s, "a", "cpu"),
            (T0, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        );
        // 10 missing steps: the series restarts after the gap.
        s.ingest_rows(&[
            row(T0 + 160.0, "a", "cpu", 7.0),
            row(T0 + 170.0, "a", "cpu", 8.0),
        ])
        .expect("ingest");
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "cpu"), (T0 + 160.0, vec![7.0, 8.0]));
        // The coarse tier bridges it: one 5-minute point, the mean of the known steps.
        let c = s
            .series_coarse("a", "cpu", CoarseAgg::Mean)
            .expect("coarse");
        assert_eq!(c.start, T0);
        assert_eq!(c.step_s, 300.0);
        assert_eq!(c.values.len(), 1);
        assert!(
            (c.values[0] - (1.0 + 2.0 + 6.0 + 7.0 + 8.0) / 5.0).abs() < 1e-6,
            "{:?}",
            c.values
        );
    }

    #[test]
    fn coarse_tier_holds_mean_and_max_of_fine_steps() {
        let mut s = store();
        // One hour of 10 s steps: a ramp 0..359.
        let rows: Vec<Row> = (0..360)
            .map(|i| row(T0 + 10.0 * f64::from(i), "a", "cpu", f64::from(i)))
            .collect();
        s.ingest_rows(&rows).expect("ingest");
        s.finish().expect("finish");
        let mean = s.series_coarse("a", "cpu", CoarseAgg::Mean).expect("mean");
        let max = s.series_coarse("a", "cpu", CoarseAgg::Max).expect("max");
        assert_eq!(mean.values.len(), 12);
        assert_eq!(mean.start, T0);
        // Bucket k holds fine steps 30k..30k+29.
        for k in 0..12 {
            let lo = 30.0 * k as f64;
            assert_eq!(mean.values[k], lo + 14.5);
            assert_eq!(max.values[k], lo + 29.0);
        }
    }

    #[test]
    fn coarse_buckets_close_with_the_fine_steps() {
        let mut s = store();
        let rows: Vec<Row> = (0..31)
            .map(|i| row(T0 + 10.0 * f64::from(i), "a", "cpu", 1.0))
            .collect();
        s.ingest_rows(&rows).expect("ingest");
        assert!(
            s.series_coarse("a", "cpu", CoarseAgg::Mean).is_none(),
            "bucket 0 not complete yet"
        );
        s.ingest_rows(&[row(T0 + 320.0, "a", "cpu", 1.0)])
            .expect("ingest");
        assert_eq!(
            s.series_coarse("a", "cpu", CoarseAgg::Mean)
                .expect("coarse")
                .values,
            vec![1.0]
        );
    }

    #[test]
    fn memory_plateaus_over_ten_days_of_10s_samples() {
        let mut s = store();
        let vms = ["web01", "db01"];
        let resources = ["cpu", "mem_bytes"];
        let mut per_day = Vec::new();
        let mut rows = Vec::with_capacity(360 * 4);
        for hour in 0..240 {
            rows.clear();
            for k in 0..360 {
                let t = T0 + 3600.0 * f64::from(hour) + 10.0 * f64::from(k);
                for vm in vms {
                    for r in resources {
                        rows.push(row(t, vm, r, 1.0 + (t / 3600.0).sin().abs()));
                    }
                }
            }
            s.ingest_rows(&rows).expect("ingest");
            if hour % 24 == 23 {
                per_day.push(s.memory_bytes());
            }
        }
        let series = vms.len() * resources.len();
        println!("store memory after each day, {series} series: {per_day:?}");
        let fine = s.series("web01", "cpu").expect("fine");
        let coarse = s
            .series_coarse("web01", "cpu", CoarseAgg::Max)
            .expect("coarse");
        assert_eq!(fine.values.len(), 8640, "one day at 10 s");
        assert_eq!(coarse.values.len(), 2304, "eight days at 5 min");
        // Flat once the coarse tier is full (day 8 on), and bounded by its tiers.
        let last = per_day[per_day.len() - 1];
        assert!(per_day[8] == last && per_day[7] <= last, "{per_day:?}");
        let bound = series * (8640 + 2 * 2304) * 4 + 64 * 1024;
        assert!(last <= bound, "{last} > {bound}");
        println!(
            "per series: {} bytes; total {last} bytes (bound {bound})",
            last / series
        );
    }

    #[test]
    fn silent_vms_are_forgotten_after_the_coarse_retention() {
        let cfg = StoreConfig {
            step_s: 1.0,
            fine_retention_s: 10.0,
            coarse_step_s: 5.0,
            coarse_retention_s: 20.0,
            lateness_s: 1.0,
            ..StoreConfig::default()
        };
        let mut s = Store::new(cfg).expect("config");
        s.ingest_rows(&[
            row(T0, "gone", "cpu", 1.0),
            row(T0 + 1.0, "gone", "cpu", 1.0),
        ])
        .expect("ingest");
        s.advance(T0 + 5.0).expect("advance");
        assert_eq!(s.len(), 1);
        assert!(s.memory_bytes() > 0);
        s.advance(T0 + 15.0).expect("advance");
        assert!(s.series("gone", "cpu").is_none(), "fine tier expired");
        assert!(
            s.series_coarse("gone", "cpu", CoarseAgg::Mean).is_some(),
            "coarse still held"
        );
        s.advance(T0 + 40.0).expect("advance");
        assert!(s.is_empty());
        assert!(s.keys().is_empty());
    }

    #[test]
    fn a_series_back_from_silence_keeps_its_waiting_samples() {
        let cfg = StoreConfig {
            step_s: 1.0,
            fine_retention_s: 10.0,
            coarse_step_s: 5.0,
            coarse_retention_s: 20.0,
            lateness_s: 1.0,
            ..StoreConfig::default()
        };
        let mut s = Store::new(cfg).expect("config");
        s.ingest_rows(&[row(T0, "a", "cpu", 1.0)]).expect("ingest");
        s.advance(T0 + 5.0).expect("advance");
        // Everything old expires in the same call that leaves the new sample pending.
        s.ingest_rows(&[row(T0 + 100.0, "a", "cpu", 2.0)])
            .expect("ingest");
        s.finish().expect("finish");
        assert_eq!(values(&s, "a", "cpu"), (T0 + 100.0, vec![2.0]));
    }

    #[test]
    fn series_limits_bound_hostile_device_counts() {
        let cfg = StoreConfig {
            max_series_per_vm: 3,
            max_series: 4,
            ..StoreConfig::default()
        };
        let mut s = Store::new(cfg).expect("config");
        let rows: Vec<Row> = (0..10)
            .map(|p| row(T0, "evil", &format!("dev:mmio:{p:#x}_per_s"), 1.0))
            .collect();
        let r = s.ingest_rows(&rows).expect("ingest");
        assert_eq!((r.accepted, r.over_limit), (3, 7));
        let r = s
            .ingest_rows(&[row(T0, "ok", "cpu", 1.0), row(T0, "ok2", "cpu", 1.0)])
            .expect("ingest");
        assert_eq!((r.accepted, r.over_limit), (1, 1));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn a_stopped_vms_series_give_their_slots_to_live_ones() {
        // At the limit, once "old" has nothing left at full resolution (it
        // stopped reporting), a new VM's series takes its slot instead of
        // being dropped; while "old" is still recent, it is dropped. "live"
        // keeps its quiet series (no row since the start) because the VM
        // still reports.
        let cfg = StoreConfig {
            fine_retention_s: 60.0,
            max_series: 3,
            ..StoreConfig::with_step(10.0)
        };
        let mut s = Store::new(cfg).expect("config");
        s.ingest_rows(&[
            row(T0, "old", "cpu", 1.0),
            row(T0, "live", "cpu", 1.0),
            row(T0, "live", "vfio_msi_per_s", 3.0),
        ])
        .expect("ingest");
        s.advance(T0 + 20.0).expect("advance");
        let r = s
            .ingest_rows(&[row(T0 + 20.0, "new", "cpu", 1.0)])
            .expect("ingest");
        assert_eq!((r.accepted, r.over_limit), (0, 1), "old is still recent");
        for i in 3..20 {
            let t = T0 + 10.0 * f64::from(i);
            s.ingest_rows(&[row(t, "live", "cpu", 1.0)])
                .expect("ingest");
            s.advance(t + 10.0).expect("advance");
        }
        let t = T0 + 200.0;
        let r = s.ingest_rows(&[row(t, "new", "cpu", 1.0)]).expect("ingest");
        assert_eq!((r.accepted, r.over_limit), (1, 0));
        let mut keys: Vec<(String, String)> =
            s.keys().into_iter().map(|k| (k.vm, k.resource)).collect();
        keys.sort();
        let want = [("live", "cpu"), ("live", "vfio_msi_per_s"), ("new", "cpu")];
        assert_eq!(
            keys,
            want.map(|(v, r)| (v.to_owned(), r.to_owned())).to_vec()
        );
        // Nothing stale left: a further VM's series is dropped.
        let r = s
            .ingest_rows(&[row(t, "newer", "cpu", 1.0)])
            .expect("ingest");
        assert_eq!((r.accepted, r.over_limit), (0, 1));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let e = |cfg: StoreConfig| Store::new(cfg).expect_err("bad").to_string();
        let m = e(StoreConfig {
            step_s: 0.0,
            ..StoreConfig::default()
        });
        assert!(m.starts_with("store configuration: step_s = 0:"), "{m}");
        let m = e(StoreConfig {
            coarse_step_s: 301.0,
            ..StoreConfig::default()
        });
        assert!(
            m.contains("coarse_step_s = 301: must be a whole multiple of step_s"),
            "{m}"
        );
        e(StoreConfig {
            step_s: 0.0005,
            ..StoreConfig::default()
        });
        e(StoreConfig {
            step_s: f64::NAN,
            ..StoreConfig::default()
        });
        e(StoreConfig {
            fine_retention_s: 1.0,
            ..StoreConfig::default()
        });
        e(StoreConfig {
            lateness_s: -1.0,
            ..StoreConfig::default()
        });
        assert_eq!(StoreConfig::with_step(60.0).coarse_step_s, 300.0);
        assert_eq!(StoreConfig::with_step(7.0).coarse_step_s, 301.0);
        assert_eq!(StoreConfig::with_step(600.0).coarse_step_s, 600.0);
        for step in [1.0, 7.0, 60.0, 300.0, 600.0] {
            StoreConfig::with_step(step)
                .validate()
                .expect("with_step is valid");
        }
    }

    #[test]
    fn generated_fleet_round_trips_through_the_store() {
        // 10 s rows into a 10 s store: the store's series are the generator's values,
        // zeros of the sparse device series included.
        let spec = TraceSpec::fleet(2, 5, T0, 12.0 * 3600.0, 10.0);
        let rows: Vec<Row> = spec.rows().collect();
        let mut s = store();
        for chunk in rows.chunks(500) {
            s.ingest_rows(chunk).expect("ingest");
        }
        s.finish().expect("finish");
        for (vi, vm) in spec.vms.iter().enumerate() {
            for (ri, r) in vm.resources.iter().enumerate() {
                let want = spec.series_values(vi, ri).expect("values");
                // A sparse series starts at its first non-zero value.
                let skip = if r.resource.starts_with("dev:") {
                    let Some(first) = want.iter().position(|&v| v > 0.0) else {
                        assert!(s.series(&vm.name, &r.resource).is_none());
                        continue;
                    };
                    first
                } else {
                    0
                };
                let got = s.series(&vm.name, &r.resource).expect("series");
                assert_eq!(
                    got.start,
                    T0 + 10.0 * skip as f64,
                    "{} {}",
                    vm.name,
                    r.resource
                );
                assert_eq!(
                    got.values.len(),
                    want.len() - skip,
                    "{} {}",
                    vm.name,
                    r.resource
                );
                for (a, b) in got.values.iter().zip(&want[skip..]) {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.max(1.0),
                        "{} {}: {a} vs {b}",
                        vm.name,
                        r.resource
                    );
                }
            }
        }
    }

    #[test]
    fn shared_datacenter_samples_load_at_their_own_step() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/datacenter_synthetic_days.csv");
        if !path.exists() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        let opts = input::ReadOptions {
            negative: input::NegativeValues::ClampToZero,
            ..input::ReadOptions::default()
        };
        let trace = input::read_path(&path, &opts).expect("read");
        let step = trace.median_interval_s().expect("step");
        let mut s = Store::new(StoreConfig::with_step(step)).expect("config");
        let r = s.ingest_trace(&trace).expect("ingest");
        assert_eq!(r.accepted, 20_736);
        assert_eq!(s.len(), 72);
        for k in s.keys() {
            let series = s.series(&k.vm, &k.resource).expect("series");
            assert_eq!(series.values.len(), 288, "{k:?}");
            // 1700000000 is 200 s into a 5-minute step.
            assert_eq!(series.start, 1_699_999_800.0);
        }
    }
}
