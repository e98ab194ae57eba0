//! Onsets of a level series: how likely is a VM's demand, in whole units
//! (VFs), to rise above its current level within a horizon?
//!
//! A regression forecast of an on/off series says little about *when* it
//! switches on: after a while at 0, its upper bound is 0 until the demand
//! appears, too late to have a device ready. [`OnsetModel`] answers the
//! question the scheduler asks instead, from two kinds of memory, both
//! bounded:
//!
//! - **Waits.** For each level, the last runs at that level: how long each
//!   lasted and whether it ended in a rise (and to which level) or a fall.
//!   Having spent `d` seconds (`k` points) at level `L`, the chance of a rise
//!   within `h` (the next points up to `h` seconds) is the share of past
//!   runs at `L` of at least `k` points that rose at one of those points (a
//!   discrete hazard; runs that fell count as at risk but not as rises).
//!   This learns regular on/off cycles and the base rate of random bursts.
//!   A run whose start is unknown (the first one seen, or one after a gap)
//!   is not recorded.
//! - **Days.** The highest level of each `bin_s` bin of the last `days`
//!   days. The chance of a rise is the share of past days whose level in
//!   the bins of the same window of the day (`[now, now + h)`, UTC) was above `L`, on
//!   days of the same kind (weekday or weekend) when there are enough of
//!   them, else on all. This learns daily shapes.
//!
//! The rise's chance is the larger of the two (each needs enough support:
//! `min_at_risk` runs, `min_days` days). [`OnsetModel::bound`] turns this
//! into an upper bound at a headroom level `q`: if a memory gives a rise at
//! least `1 − q` likely, the highest level such a memory saw the series rise
//! to; else the current level.
//!
//! Points must come in time order at the series' step; a point at or before
//! the last one is ignored (a duplicate), and a gap of more than one and a
//! half steps ends the current run without recording it (its length is
//! unknown).

use std::collections::{BTreeMap, VecDeque};

use super::{DAY_S, ForecastError, Result};

/// Marks a bin without data.
const NO_DATA: u8 = u8::MAX;

/// Memory sizes and support thresholds of an [`OnsetModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct OnsetConfig {
    /// Width of a day's bins, seconds (the daily profile's resolution).
    pub bin_s: f64,
    /// Days of profile kept.
    pub days: usize,
    /// Runs kept per level.
    pub runs_per_level: usize,
    /// Runs at risk needed before the wait memory speaks.
    pub min_at_risk: usize,
    /// Past days with data in the window needed before the daily profile speaks.
    pub min_days: usize,
}

impl Default for OnsetConfig {
    /// 5-minute bins over 8 days (a week and a day: the same weekday once),
    /// 64 runs per level, at least 5 runs at risk and 2 days.
    fn default() -> Self {
        Self {
            bin_s: 300.0,
            days: 8,
            runs_per_level: 64,
            min_at_risk: 5,
            min_days: 2,
        }
    }
}

/// One finished run at a level.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// How long it lasted, seconds.
    len_s: f64,
    /// The level it rose to, or `None` if it fell.
    rose_to: Option<u32>,
}

/// One day's profile: the highest level seen in each bin.
#[derive(Debug, Clone)]
struct Day {
    /// Days since the unix epoch (UTC).
    index: i64,
    bins: Vec<u8>,
}

/// The chance of a rise within a horizon, from one level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Onset {
    /// The current level.
    pub level: u32,
    /// Chance of a rise above `level` within the horizon, if either memory
    /// has enough support.
    pub chance: Option<f64>,
    /// The level a rise reaches (the highest seen in what counted; `level +
    /// 1` if nothing rose).
    pub to: u32,
}

/// The run the series is in.
#[derive(Debug, Clone, Copy)]
struct OpenRun {
    level: u32,
    /// Time of its first point.
    since: f64,
    /// Whether its start was seen (not the model's first point, nor the
    /// first after a gap): only then is its length known.
    whole: bool,
}

/// Learns when a level series rises (see the module docs).
#[derive(Debug, Clone)]
pub struct OnsetModel {
    cfg: OnsetConfig,
    step_s: f64,
    run: Option<OpenRun>,
    /// Time of the last point.
    last_t: Option<f64>,
    runs: BTreeMap<u32, VecDeque<Run>>,
    days: VecDeque<Day>,
}

fn day_index(t: f64) -> i64 {
    (t / DAY_S).floor() as i64
}

/// Monday = 0 … Sunday = 6 (1970-01-01 was a Thursday).
fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

fn is_weekend(day: i64) -> bool {
    weekday(day) >= 5
}

impl OnsetModel {
    /// A model for a series of step `step_s` seconds.
    pub fn new(step_s: f64, cfg: OnsetConfig) -> Result<Self> {
        if !(step_s.is_finite() && step_s > 0.0) {
            return Err(ForecastError::BadStep { step_s });
        }
        if !(cfg.bin_s.is_finite() && cfg.bin_s > 0.0 && cfg.bin_s <= DAY_S) {
            return Err(ForecastError::BadStep { step_s: cfg.bin_s });
        }
        Ok(Self {
            cfg,
            step_s,
            run: None,
            last_t: None,
            runs: BTreeMap::new(),
            days: VecDeque::new(),
        })
    }

    fn bins_per_day(&self) -> usize {
        (DAY_S / self.cfg.bin_s).ceil() as usize
    }

    /// Adds the point at time `t` (unix seconds, the start of its step) with
    /// `level` units.
    pub fn observe(&mut self, t: f64, level: u32) -> Result<()> {
        if !t.is_finite() {
            return Err(ForecastError::BadTime { t });
        }
        if self.last_t.is_some_and(|last| t <= last) {
            return Ok(());
        }
        if self.last_t.is_some_and(|last| t > last + 1.5 * self.step_s) {
            self.run = None;
        }
        self.last_t = Some(t);
        self.profile(t, level);
        match self.run {
            Some(r) if r.level == level => {}
            Some(r) => {
                if r.whole {
                    let runs = self.runs.entry(r.level).or_default();
                    runs.push_back(Run {
                        len_s: t - r.since,
                        rose_to: (level > r.level).then_some(level),
                    });
                    while runs.len() > self.cfg.runs_per_level {
                        runs.pop_front();
                    }
                }
                self.run = Some(OpenRun {
                    level,
                    since: t,
                    whole: true,
                });
            }
            None => {
                self.run = Some(OpenRun {
                    level,
                    since: t,
                    whole: false,
                })
            }
        }
        Ok(())
    }

    fn profile(&mut self, t: f64, level: u32) {
        let index = day_index(t);
        if self.days.back().is_none_or(|d| d.index < index) {
            self.days.push_back(Day {
                index,
                bins: vec![NO_DATA; self.bins_per_day()],
            });
            while self.days.len() > self.cfg.days + 1 {
                self.days.pop_front();
            }
        }
        let Some(day) = self.days.back_mut().filter(|d| d.index == index) else {
            return;
        };
        let bin = ((t - index as f64 * DAY_S) / self.cfg.bin_s) as usize;
        let v = u8::try_from(level).unwrap_or(NO_DATA - 1).min(NO_DATA - 1);
        if let Some(b) = day.bins.get_mut(bin) {
            *b = if *b == NO_DATA { v } else { (*b).max(v) };
        }
    }

    /// The highest level recorded in the bins that `[t0, t1)` touches, if
    /// any of them has data.
    fn max_level_in(&self, t0: f64, t1: f64) -> Option<u8> {
        let bin_s = self.cfg.bin_s;
        let first = (t0 / bin_s).floor() as i64;
        // The last bin with a point in the window (points start before t1).
        let last = ((t1 - 1e-6 * self.step_s) / bin_s)
            .floor()
            .max(first as f64) as i64;
        let mut best: Option<u8> = None;
        for i in first..=last {
            let t = i as f64 * bin_s;
            let index = day_index(t);
            let Some(day) = self.days.iter().find(|d| d.index == index) else {
                continue;
            };
            let bin = ((t - index as f64 * DAY_S) / bin_s) as usize;
            if let Some(&b) = day.bins.get(bin).filter(|&&b| b != NO_DATA) {
                best = Some(best.map_or(b, |x| x.max(b)));
            }
        }
        best
    }

    /// From the daily profile: (chance, highest level reached).
    fn by_day(&self, now: f64, level: u32, horizon_s: f64) -> Option<(f64, u32)> {
        let today = day_index(now);
        let weekend = is_weekend(today);
        // (same kind of day, rose, level reached)
        let seen: Vec<(bool, bool, u32)> = (1..=self.cfg.days)
            .filter_map(|lag| {
                let shift = lag as f64 * DAY_S;
                let max = self.max_level_in(now - shift, now - shift + horizon_s)?;
                let kind = is_weekend(day_index(now - shift)) == weekend;
                Some((kind, u32::from(max) > level, u32::from(max)))
            })
            .collect();
        let same: Vec<&(bool, bool, u32)> = seen.iter().filter(|s| s.0).collect();
        let pool: Vec<&(bool, bool, u32)> = if same.len() >= self.cfg.min_days {
            same
        } else {
            seen.iter().collect()
        };
        if pool.len() < self.cfg.min_days.max(1) {
            return None;
        }
        let rose = pool.iter().filter(|s| s.1).count();
        let to = pool.iter().filter(|s| s.1).map(|s| s.2).max();
        Some((
            rose as f64 / pool.len() as f64,
            to.unwrap_or(level.saturating_add(1)),
        ))
    }

    /// From the wait memory: (chance, highest level reached). `waited_s`
    /// spans the points seen at `level`: a past run as long ended at the
    /// next point. Half a step of slack absorbs rounding.
    fn by_wait(&self, waited_s: f64, level: u32, horizon_s: f64) -> Option<(f64, u32)> {
        let runs = self.runs.get(&level)?;
        let half = 0.5 * self.step_s;
        let at_risk: Vec<&Run> = runs.iter().filter(|r| r.len_s > waited_s - half).collect();
        if at_risk.len() < self.cfg.min_at_risk.max(1) {
            return None;
        }
        let rises: Vec<u32> = at_risk
            .iter()
            .filter(|r| r.len_s < waited_s + horizon_s - half)
            .filter_map(|r| r.rose_to)
            .collect();
        let to = rises
            .iter()
            .copied()
            .max()
            .unwrap_or(level.saturating_add(1));
        Some((rises.len() as f64 / at_risk.len() as f64, to))
    }

    /// The chance of a rise within `horizon_s` of `now` (the end of the last
    /// point), or `None` before the first point.
    /// Both memories' answers: the level, and per memory `(chance, level
    /// reached)` if it has enough support. `None` before the first point or
    /// for a horizon that is not a finite number of seconds ≥ 0.
    #[allow(clippy::type_complexity)]
    fn memories(
        &self,
        now: f64,
        horizon_s: f64,
    ) -> Option<(u32, Option<(f64, u32)>, Option<(f64, u32)>)> {
        if !(horizon_s.is_finite() && horizon_s >= 0.0 && now.is_finite()) {
            return None;
        }
        let run = self.run?;
        let waited = (now - run.since).max(0.0);
        let day = self.by_day(now, run.level, horizon_s);
        let wait = self.by_wait(waited, run.level, horizon_s);
        Some((run.level, day, wait))
    }

    /// The chance of a rise within `horizon_s` of `now` (the end of the last
    /// point), or `None` before the first point.
    pub fn onset(&self, now: f64, horizon_s: f64) -> Option<Onset> {
        let (level, day, wait) = self.memories(now, horizon_s)?;
        let chance = match (day, wait) {
            (None, None) => None,
            (a, b) => Some(a.map_or(0.0, |x| x.0).max(b.map_or(0.0, |x| x.0))),
        };
        let next = level.saturating_add(1);
        let rose = |x: Option<(f64, u32)>| x.filter(|x| x.0 > 0.0).map(|x| x.1);
        let to = rose(day).max(rose(wait)).unwrap_or(next).max(next);
        Some(Onset { level, chance, to })
    }

    /// The level's peak within `horizon_s` of `now` at headroom level `q`
    /// (e.g. 0.95): if a memory gives a rise at least `1 − q` likely, the
    /// highest level such a memory saw the series rise to, else the current
    /// level; `None` before the first point or while neither memory has
    /// enough support.
    pub fn bound(&self, now: f64, horizon_s: f64, q: f64) -> Option<u32> {
        self.decide(now, horizon_s, q).map(|d| d.0)
    }

    /// `(bound, chance, level)`: see [`bound`](Self::bound).
    fn decide(&self, now: f64, horizon_s: f64, q: f64) -> Option<(u32, f64, u32)> {
        let (level, day, wait) = self.memories(now, horizon_s)?;
        let chance = [day, wait]
            .into_iter()
            .flatten()
            .map(|m| m.0)
            .reduce(f64::max)?;
        let next = level.saturating_add(1);
        let bound = [day, wait]
            .into_iter()
            .flatten()
            .filter(|m| m.0 >= 1.0 - q)
            .map(|m| m.1.max(next))
            .max()
            .unwrap_or(level);
        Some((bound, chance, level))
    }

    /// Raises a regression forecast's upper bound `upper` (in the series'
    /// units, `unit` per level; `levels` turns a value into whole levels, as
    /// the scheduler counts them) to this model's [`bound`](Self::bound) at
    /// `q`. Returns the new bound and, when it is a rise and `upper` counts
    /// no rise of its own (no more levels than the current one), the rise's
    /// chance: then the rise is only likely. When `upper` already counts a
    /// rise, the whole bound is treated as certain.
    pub fn raise(
        &self,
        now: f64,
        horizon_s: f64,
        q: f64,
        upper: f64,
        unit: f64,
        levels: impl Fn(f64) -> u32,
    ) -> (f64, Option<f64>) {
        let Some((bound, chance, level)) = self.decide(now, horizon_s, q) else {
            return (upper, None);
        };
        let raised = upper.max(f64::from(bound) * unit);
        let rise = (bound > level && levels(upper / unit) <= level).then_some(chance);
        (raised, rise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-23 00:00 UTC.
    const MONDAY: f64 = 1_795_392_000.0;

    /// A model that learns from past days only (the wait memory never has
    /// enough runs at risk).
    fn days_only(step_s: f64) -> OnsetModel {
        let cfg = OnsetConfig {
            min_at_risk: 1000,
            ..OnsetConfig::default()
        };
        OnsetModel::new(step_s, cfg).expect("model")
    }

    fn feed(m: &mut OnsetModel, t0: f64, step: f64, levels: impl IntoIterator<Item = u32>) -> f64 {
        let mut t = t0;
        for l in levels {
            m.observe(t, l).expect("observe");
            t += step;
        }
        t
    }

    /// A model at 60 s steps fed 8 cycles of 20 points at 0 then 10 at
    /// `high`, and the time after them.
    fn on_off(high: u32) -> (OnsetModel, f64) {
        let mut m = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        let mut t = MONDAY;
        for _ in 0..8 {
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 20));
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(high, 10));
        }
        (m, t)
    }

    #[test]
    fn weekdays_from_the_epoch() {
        assert_eq!(weekday(day_index(MONDAY)), 0);
        assert!(is_weekend(day_index(MONDAY + 5.0 * DAY_S)));
        assert!(!is_weekend(day_index(MONDAY + 7.0 * DAY_S)));
    }

    #[test]
    fn a_regular_cycle_is_foreseen_just_before_it_rises() {
        // 20 min at 0, then 10 min at 2, at 60 s steps, repeated.
        let (mut m, mut t) = on_off(2);
        // Now 5 min into a run at 0 (the series ended on a run at 2: start one).
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 5));
        let early = m.onset(t, 300.0).expect("onset");
        assert_eq!(early.level, 0);
        assert_eq!(early.chance, Some(0.0), "{early:?}");
        assert_eq!(m.bound(t, 300.0, 0.95), Some(0));
        // 17 min in: the rise comes within 5 min.
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 12));
        let late = m.onset(t, 300.0).expect("onset");
        assert_eq!(late.chance, Some(1.0), "{late:?}");
        assert_eq!(late.to, 2);
        assert_eq!(m.bound(t, 300.0, 0.95), Some(2));
        // From level 2 the series only falls.
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(2, 3));
        assert_eq!(m.bound(t, 300.0, 0.99), Some(2));
    }

    #[test]
    fn random_bursts_give_their_base_rate() {
        // Runs at 0 that rose after 10, 20, …, 100 min (each after a run at
        // 1, so their starts are seen).
        let mut m = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        let mut t = feed(&mut m, MONDAY, 60.0, [1]);
        for k in 1..=10u32 {
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 10 * k as usize));
            t = feed(&mut m, t, 60.0, [1, 1]);
        }
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 6));
        // 6 points at 0: 10 runs at risk; the 10-point one rose within the
        // next 5 points.
        let o = m.onset(t, 300.0).expect("onset");
        assert_eq!(o.chance, Some(0.1));
        assert_eq!(m.bound(t, 300.0, 0.95), Some(1), "10 % ≥ 5 %");
        assert_eq!(m.bound(t, 300.0, 0.8), Some(0), "10 % < 20 %");
    }

    #[test]
    fn a_daily_shape_is_learnt_from_past_days() {
        // Level 1 from 08:00 to 18:00 UTC on weekdays, at 5-minute steps.
        let mut m = days_only(300.0);
        let day: Vec<u32> = (0..288)
            .map(|i| u32::from((96..216).contains(&i)))
            .collect();
        let mut t = MONDAY;
        for _ in 0..3 {
            t = feed(&mut m, t, 300.0, day.iter().copied());
        }
        // Thursday 07:40: quiet now and over the next two points (07:40,
        // 07:45) on the days before.
        t = feed(&mut m, t, 300.0, day[..92].iter().copied());
        let o = m.onset(t, 600.0).expect("onset");
        assert_eq!((o.level, o.chance), (0, Some(0.0)), "{o:?}");
        // 07:55: the next two points are 07:55 and 08:00, busy on the days before.
        t = feed(&mut m, t, 300.0, day[92..95].iter().copied());
        let o = m.onset(t, 600.0).expect("onset");
        assert_eq!((o.level, o.chance, o.to), (0, Some(1.0), 1), "{o:?}");
        // The next point alone (07:55) was quiet.
        assert_eq!(m.onset(t, 300.0).and_then(|o| o.chance), Some(0.0));
        // At 03:00 nothing rose on any past day.
        assert_eq!(
            m.bound(MONDAY + 3.0 * DAY_S + 3.0 * 3600.0, 300.0, 0.99),
            Some(0)
        );
    }

    #[test]
    fn a_raised_bound_says_when_only_the_rise_put_it_there() {
        let (mut m, t) = on_off(2);
        let t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 17));
        // Whole levels as the scheduler counts them (0.2 of slack).
        let whole = |x: f64| (x - 0.2).ceil().max(0.0) as u32;
        // A regression bound of 0.1 counts no unit: the rise to 2 stands alone.
        assert_eq!(m.raise(t, 300.0, 0.95, 0.1, 1.0, whole), (2.0, Some(1.0)));
        // One of 2.5 already counts 3: the rise adds nothing.
        assert_eq!(m.raise(t, 300.0, 0.95, 2.5, 1.0, whole), (2.5, None));
        // One of 1.0 counts a rise of its own: the bound is certain.
        assert_eq!(m.raise(t, 300.0, 0.95, 1.0, 1.0, whole), (2.0, None));
        // Units of 10 per level.
        assert_eq!(m.raise(t, 300.0, 0.95, 1.0, 10.0, whole), (20.0, Some(1.0)));
        // Without support the bound is left as it is.
        let empty = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        assert_eq!(empty.raise(t, 300.0, 0.95, 0.4, 1.0, whole), (0.4, None));
    }

    #[test]
    fn no_support_no_bound_and_gaps_end_runs() {
        let mut m = OnsetModel::new(10.0, OnsetConfig::default()).expect("model");
        assert!(m.onset(MONDAY, 60.0).is_none());
        feed(&mut m, MONDAY, 10.0, [0, 0, 1, 0]);
        assert_eq!(
            m.bound(MONDAY + 40.0, 60.0, 0.95),
            None,
            "one run is not support"
        );
        // A duplicate is ignored; a gap drops the open run.
        m.observe(MONDAY + 30.0, 5).expect("duplicate");
        assert_eq!(m.onset(MONDAY + 40.0, 60.0).map(|o| o.level), Some(0));
        m.observe(MONDAY + 100.0, 1).expect("after a gap");
        // Neither run at 0 has a known length: the first began with the
        // model, the second was cut by the gap. The run at 1 is whole.
        assert_eq!(m.runs.get(&0).map_or(0, VecDeque::len), 0);
        assert_eq!(m.runs.get(&1).map_or(0, VecDeque::len), 1);
        assert!(m.onset(MONDAY + 110.0, f64::INFINITY).is_none());
        assert!(m.observe(f64::NAN, 0).is_err());
        assert!(OnsetModel::new(0.0, OnsetConfig::default()).is_err());
    }

    #[test]
    fn a_rise_at_the_next_point_is_counted_and_not_one_early() {
        // 20 points at 0, then 10 at 1, at 60 s steps, 8 times.
        let (mut m, t) = on_off(1);
        let mut t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 19));
        // After 19 points the 20th is still at 0.
        assert_eq!(m.onset(t, 60.0).and_then(|o| o.chance), Some(0.0));
        t = feed(&mut m, t, 60.0, [0]);
        // After 20 the next one rises.
        assert_eq!(m.onset(t, 60.0).and_then(|o| o.chance), Some(1.0));
        assert_eq!(m.bound(t, 60.0, 0.95), Some(1));
    }

    #[test]
    fn a_short_horizon_across_a_bin_edge_sees_the_next_bin() {
        // 10 s steps; level 1 from 08:00 on the past days; now 07:59:10.
        let mut m = days_only(10.0);
        let eight = 8.0 * 3600.0;
        let mut t = MONDAY;
        for _ in 0..2 {
            let day = (0..8640).map(|i| u32::from(f64::from(i) * 10.0 >= eight));
            t = feed(&mut m, t, 10.0, day);
        }
        t = feed(&mut m, t, 10.0, std::iter::repeat_n(0, 2875));
        assert_eq!(t, MONDAY + 2.0 * DAY_S + eight - 50.0);
        assert_eq!(m.onset(t, 60.0).and_then(|o| o.chance), Some(1.0));
        assert_eq!(m.onset(t, 30.0).and_then(|o| o.chance), Some(0.0));
    }

    #[test]
    fn huge_levels_do_not_overflow() {
        let mut m = OnsetModel::new(10.0, OnsetConfig::default()).expect("model");
        feed(&mut m, MONDAY, 10.0, [u32::MAX; 4]);
        let o = m.onset(MONDAY + 40.0, 60.0).expect("onset");
        assert_eq!(o.to, u32::MAX);
    }

    #[test]
    fn memory_is_bounded() {
        let mut m = OnsetModel::new(10.0, OnsetConfig::default()).expect("model");
        let mut t = MONDAY;
        for i in 0..200_000u32 {
            m.observe(t, i % 3).expect("observe");
            t += 10.0;
        }
        assert!(m.days.len() <= 9);
        assert!(m.runs.values().all(|r| r.len() <= 64));
    }
}
