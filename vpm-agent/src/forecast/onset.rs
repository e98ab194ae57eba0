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
//!   Having waited `d` seconds at level `L`, the chance of a rise within `h`
//!   is the share of past runs at `L` longer than `d` that rose within
//!   `(d, d + h]` (a discrete hazard; runs that fell count as at risk but
//!   not as rises). This learns regular on/off cycles and the base rate of
//!   random bursts.
//! - **Days.** The highest level of each `bin_s` bin of the last `days`
//!   days. The chance of a rise is the share of past days whose level in
//!   the same window of the day (`[now, now + h]`, UTC) was above `L`, on
//!   days of the same kind (weekday or weekend) when there are enough of
//!   them, else on all. This learns daily shapes.
//!
//! The rise's chance is the larger of the two (each needs enough support:
//! `min_at_risk` runs, `min_days` days); the level it rises to is the
//! highest seen in what counted. [`OnsetModel::bound`] turns this into an
//! upper bound at a headroom level `q`: the risen level if the chance is at
//! least `1 − q`, else the current level, the `q`-quantile of the level's
//! peak within the horizon.
//!
//! Points must come in time order at the series' step; a point at or before
//! the last one is ignored (a duplicate), and a gap of more than one and a
//! half steps ends the current run without recording it (its length is
//! unknown).

use std::collections::{BTreeMap, VecDeque};

use super::{ForecastError, Result};

const DAY_S: f64 = 86_400.0;
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

/// Learns when a level series rises (see the module docs).
#[derive(Debug, Clone)]
pub struct OnsetModel {
    cfg: OnsetConfig,
    step_s: f64,
    /// The current level and when its run began.
    run: Option<(u32, f64)>,
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
            Some((cur, _)) if cur == level => {}
            Some((cur, since)) => {
                let run = Run {
                    len_s: t - since,
                    rose_to: (level > cur).then_some(level),
                };
                let runs = self.runs.entry(cur).or_default();
                runs.push_back(run);
                while runs.len() > self.cfg.runs_per_level {
                    runs.pop_front();
                }
                self.run = Some((level, t));
            }
            None => self.run = Some((level, t)),
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

    /// The highest level recorded in `[t0, t1]`, if any bin there has data.
    fn max_level_in(&self, t0: f64, t1: f64) -> Option<u8> {
        let mut best: Option<u8> = None;
        let mut t = t0;
        while t <= t1 + self.cfg.bin_s * 1e-9 {
            let index = day_index(t);
            if let Some(day) = self.days.iter().find(|d| d.index == index) {
                let bin = ((t - index as f64 * DAY_S) / self.cfg.bin_s) as usize;
                if let Some(&b) = day.bins.get(bin).filter(|&&b| b != NO_DATA) {
                    best = Some(best.map_or(b, |x| x.max(b)));
                }
            }
            t += self.cfg.bin_s;
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
        Some((rose as f64 / pool.len() as f64, to.unwrap_or(level + 1)))
    }

    /// From the wait memory: (chance, highest level reached).
    fn by_wait(&self, waited_s: f64, level: u32, horizon_s: f64) -> Option<(f64, u32)> {
        let runs = self.runs.get(&level)?;
        let at_risk: Vec<&Run> = runs.iter().filter(|r| r.len_s > waited_s).collect();
        if at_risk.len() < self.cfg.min_at_risk.max(1) {
            return None;
        }
        let rises: Vec<u32> = at_risk
            .iter()
            .filter(|r| r.len_s <= waited_s + horizon_s)
            .filter_map(|r| r.rose_to)
            .collect();
        let to = rises.iter().copied().max().unwrap_or(level + 1);
        Some((rises.len() as f64 / at_risk.len() as f64, to))
    }

    /// The chance of a rise within `horizon_s` of `now` (the end of the last
    /// point), or `None` before the first point.
    pub fn onset(&self, now: f64, horizon_s: f64) -> Option<Onset> {
        let (level, since) = self.run?;
        let waited = (now - since).max(0.0);
        let day = self.by_day(now, level, horizon_s);
        let wait = self.by_wait(waited, level, horizon_s);
        let chance = match (day, wait) {
            (None, None) => None,
            (a, b) => Some(a.map_or(0.0, |x| x.0).max(b.map_or(0.0, |x| x.0))),
        };
        let rose = |x: Option<(f64, u32)>| x.filter(|x| x.0 > 0.0).map(|x| x.1);
        let to = rose(day)
            .max(rose(wait))
            .unwrap_or(level + 1)
            .max(level + 1);
        Some(Onset { level, chance, to })
    }

    /// The level's peak within `horizon_s` of `now` at headroom level `q`
    /// (e.g. 0.95): the risen level if a rise is at least `1 − q` likely,
    /// else the current level; `None` before the first point or while
    /// neither memory has enough support.
    pub fn bound(&self, now: f64, horizon_s: f64, q: f64) -> Option<u32> {
        let o = self.onset(now, horizon_s)?;
        let chance = o.chance?;
        Some(if chance >= 1.0 - q { o.to } else { o.level })
    }

    /// Raises a regression forecast's upper bound `upper` (in the series'
    /// units, `unit` per level; `levels` turns a value into whole levels, as
    /// the scheduler counts them) to this model's [`bound`](Self::bound) at
    /// `q`. Returns the new bound and, when the foreseen rise alone puts it
    /// above the levels `upper` counts, the rise's chance.
    pub fn raise(
        &self,
        now: f64,
        horizon_s: f64,
        q: f64,
        upper: f64,
        unit: f64,
        levels: impl Fn(f64) -> u32,
    ) -> (f64, Option<f64>) {
        let Some(o) = self.onset(now, horizon_s) else {
            return (upper, None);
        };
        let Some(chance) = o.chance else {
            return (upper, None);
        };
        let bound = if chance >= 1.0 - q { o.to } else { o.level };
        let raised = upper.max(f64::from(bound) * unit);
        let rise = (bound > o.level && bound > levels(upper / unit)).then_some(chance);
        (raised, rise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-23 00:00 UTC.
    const MONDAY: f64 = 1_795_392_000.0;

    fn feed(m: &mut OnsetModel, t0: f64, step: f64, levels: impl IntoIterator<Item = u32>) -> f64 {
        let mut t = t0;
        for l in levels {
            m.observe(t, l).expect("observe");
            t += step;
        }
        t
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
        let mut m = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        let cycle: Vec<u32> = std::iter::repeat_n(0, 20)
            .chain(std::iter::repeat_n(2, 10))
            .collect();
        let mut t = MONDAY;
        for _ in 0..8 {
            t = feed(&mut m, t, 60.0, cycle.iter().copied());
        }
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
        // Runs at 0 that rose after 10, 20, …, 100 min; half the horizon of
        // each is within reach of a 10-minute wait.
        let mut m = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        let mut t = MONDAY;
        for k in 1..=10u32 {
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 10 * k as usize));
            t = feed(&mut m, t, 60.0, [1, 1]);
        }
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 5));
        // Waited 5 min: 10 runs at risk, the 10-min one rises within 5 more.
        let o = m.onset(t, 300.0).expect("onset");
        assert_eq!(o.chance, Some(0.1));
        assert_eq!(m.bound(t, 300.0, 0.95), Some(1), "10 % ≥ 5 %");
        assert_eq!(m.bound(t, 300.0, 0.8), Some(0), "10 % < 20 %");
    }

    #[test]
    fn a_daily_shape_is_learnt_from_past_days() {
        // Level 1 from 08:00 to 18:00 UTC on weekdays, at 5-minute steps.
        let cfg = OnsetConfig {
            min_at_risk: 1000, // days only
            ..OnsetConfig::default()
        };
        let mut m = OnsetModel::new(300.0, cfg).expect("model");
        let day: Vec<u32> = (0..288)
            .map(|i| u32::from((96..216).contains(&i)))
            .collect();
        let mut t = MONDAY;
        for _ in 0..3 {
            t = feed(&mut m, t, 300.0, day.iter().copied());
        }
        // Thursday 07:40: quiet now and within 5 minutes on the days before.
        t = feed(&mut m, t, 300.0, day[..92].iter().copied());
        let o = m.onset(t, 300.0).expect("onset");
        assert_eq!((o.level, o.chance), (0, Some(0.0)), "{o:?}");
        // 07:55: busy at 08:00 on the days before.
        t = feed(&mut m, t, 300.0, day[92..95].iter().copied());
        let o = m.onset(t, 300.0).expect("onset");
        assert_eq!((o.level, o.chance, o.to), (0, Some(1.0), 1), "{o:?}");
        // At 03:00 nothing rose on any past day.
        assert_eq!(
            m.bound(MONDAY + 3.0 * DAY_S + 3.0 * 3600.0, 300.0, 0.99),
            Some(0)
        );
    }

    #[test]
    fn a_raised_bound_says_when_only_the_rise_put_it_there() {
        let mut m = OnsetModel::new(60.0, OnsetConfig::default()).expect("model");
        let mut t = MONDAY;
        for _ in 0..8 {
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 20));
            t = feed(&mut m, t, 60.0, std::iter::repeat_n(2, 10));
        }
        t = feed(&mut m, t, 60.0, std::iter::repeat_n(0, 17));
        let whole = |x: f64| x.ceil() as u32;
        // A regression bound of 0.1 counts no unit: the rise to 2 stands alone.
        assert_eq!(m.raise(t, 300.0, 0.95, 0.1, 1.0, whole), (2.0, Some(1.0)));
        // One of 2.5 already counts 3: the rise adds nothing.
        assert_eq!(m.raise(t, 300.0, 0.95, 2.5, 1.0, whole), (2.5, None));
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
        assert_eq!(
            m.runs.get(&0).map_or(0, VecDeque::len),
            1,
            "the 0 → 1 run only"
        );
        assert!(m.observe(f64::NAN, 0).is_err());
        assert!(OnsetModel::new(0.0, OnsetConfig::default()).is_err());
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
