//! One retention tier of one series: a bounded ring of regular points.
//!
//! Points are `f32` (half the memory of `f64`; 24 bits of mantissa are far
//! finer than any forecast's error) with `NaN` marking a step without data.
//! A run of at most `max_fill` missing points between two known points is
//! filled by linear interpolation when the later point arrives; longer runs
//! stay `NaN`, and readers see only the latest run of known points (the
//! series "restarts" after a long gap).

use std::collections::VecDeque;

/// A bounded ring of regular points indexed by step number.
#[derive(Clone, Debug)]
pub(crate) struct Tier {
    /// Step number of `values[0]`.
    start: i64,
    values: VecDeque<f32>,
    /// Most points kept.
    cap: usize,
    /// Longest run of missing points filled by interpolation.
    max_fill: usize,
}

/// Smallest allocation made when a ring grows (points).
const MIN_GROW: usize = 64;

impl Tier {
    pub(crate) fn new(cap: usize, max_fill: usize) -> Self {
        Self {
            start: 0,
            values: VecDeque::new(),
            cap: cap.max(1),
            max_fill,
        }
    }

    /// Step number one past the last point (`None` when empty).
    pub(crate) fn end(&self) -> Option<i64> {
        (!self.values.is_empty()).then(|| self.start + self.values.len() as i64)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Bytes held by the ring's buffer.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.values.capacity() * size_of::<f32>()
    }

    /// Appends point `idx` (`NaN` for "no data"). Points must come in increasing
    /// order; an index at or before the end is ignored and `false` returned.
    /// Missing points between the end and `idx` become `NaN`; a gap as long as
    /// the ring starts it afresh.
    pub(crate) fn push(&mut self, idx: i64, v: f32) -> bool {
        match self.end() {
            None => {
                self.start = idx;
            }
            Some(end) if idx < end => return false,
            Some(end) => {
                let gap = idx - end;
                if gap >= self.cap as i64 {
                    self.values.clear();
                    self.start = idx;
                } else {
                    for _ in 0..gap {
                        self.push_back(f32::NAN);
                    }
                }
            }
        }
        self.push_back(v);
        if v.is_finite() {
            self.fill_before_last();
        }
        true
    }

    /// Like [`Tier::push`], but a point for the last index replaces it.
    pub(crate) fn upsert(&mut self, idx: i64, v: f32) -> bool {
        if self.end() == Some(idx + 1) {
            if let Some(last) = self.values.back_mut() {
                *last = v;
            }
            if v.is_finite() {
                self.fill_before_last();
            }
            return true;
        }
        self.push(idx, v)
    }

    fn push_back(&mut self, v: f32) {
        if self.values.len() == self.values.capacity() && self.values.len() < self.cap {
            // Grow by doubling, but never past the cap: memory per series is bounded
            // by `cap` points, not by VecDeque's rounding.
            let want = (self.values.len() * 2).max(MIN_GROW).min(self.cap);
            self.values.reserve_exact(want - self.values.len());
        }
        if self.values.len() >= self.cap {
            self.values.pop_front();
            self.start += 1;
        }
        self.values.push_back(v);
    }

    /// Interpolates the run of `NaN`s just before the last point when it is
    /// short enough and has a known point before it.
    fn fill_before_last(&mut self) {
        let n = self.values.len();
        let Some(&last) = self.values.back() else {
            return;
        };
        let mut run = 0;
        while run < n.saturating_sub(1) {
            match self.values.get(n - 2 - run) {
                Some(v) if v.is_nan() => run += 1,
                _ => break,
            }
            if run > self.max_fill {
                return;
            }
        }
        if run == 0 || run + 1 >= n {
            return; // nothing missing, or no known point before the run
        }
        let Some(&before) = self.values.get(n - 2 - run) else {
            return;
        };
        let span = (run + 1) as f32;
        for k in 1..=run {
            if let Some(slot) = self.values.get_mut(n - 1 - run - 1 + k) {
                *slot = before + (last - before) * (k as f32 / span);
            }
        }
    }

    /// Drops points before step `idx`.
    pub(crate) fn trim_before(&mut self, idx: i64) {
        while !self.values.is_empty() && self.start < idx {
            self.values.pop_front();
            self.start += 1;
        }
        if self.values.is_empty() {
            self.values.shrink_to_fit();
        }
    }

    /// The latest run of known points: (step number of the first, values).
    pub(crate) fn latest_run(&self) -> Option<(i64, Vec<f64>)> {
        let last = self.values.iter().rposition(|v| v.is_finite())?;
        let first = self
            .values
            .iter()
            .take(last + 1)
            .rposition(|v| !v.is_finite())
            .map_or(0, |i| i + 1);
        let vals = self
            .values
            .range(first..=last)
            .map(|&v| f64::from(v))
            .collect();
        Some((self.start + first as i64, vals))
    }

    /// Every point with its step number (`NaN` where missing).
    #[cfg(test)]
    pub(crate) fn points(&self) -> (i64, Vec<f32>) {
        (self.start, self.values.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_gaps_are_interpolated_long_gaps_restart() {
        let mut t = Tier::new(100, 2);
        assert!(t.push(10, 1.0));
        assert!(t.push(13, 4.0)); // 2 missing: filled
        assert_eq!(t.points(), (10, vec![1.0, 2.0, 3.0, 4.0]));
        assert!(t.push(17, 8.0)); // 3 missing: kept as NaN
        let (start, pts) = t.points();
        assert_eq!(start, 10);
        assert_eq!(pts.len(), 8);
        assert!(pts[4..7].iter().all(|v| v.is_nan()));
        // Readers see the run after the long gap only.
        assert_eq!(t.latest_run(), Some((17, vec![8.0])));
        assert!(t.push(18, 9.0));
        assert_eq!(t.latest_run(), Some((17, vec![8.0, 9.0])));
    }

    #[test]
    fn late_points_are_refused() {
        let mut t = Tier::new(10, 2);
        assert!(t.push(5, 1.0));
        assert!(!t.push(5, 2.0));
        assert!(!t.push(4, 2.0));
        assert_eq!(t.points(), (5, vec![1.0]));
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut t = Tier::new(100, 2);
        for i in 0..1000 {
            t.push(i, i as f32);
        }
        assert_eq!(t.len(), 100);
        assert_eq!(t.end(), Some(1000));
        assert!(t.heap_bytes() <= 100 * 4, "{}", t.heap_bytes());
        // A gap longer than the ring restarts it.
        t.push(5000, 1.0);
        assert_eq!(t.points(), (5000, vec![1.0]));
        t.trim_before(6000);
        assert!(t.is_empty());
        assert_eq!(t.heap_bytes(), 0);
    }

    #[test]
    fn trailing_nan_does_not_hide_the_last_run() {
        let mut t = Tier::new(10, 1);
        t.push(0, 1.0);
        t.push(1, 2.0);
        t.push(2, f32::NAN);
        assert_eq!(t.latest_run(), Some((0, vec![1.0, 2.0])));
        t.push(3, 4.0); // one missing: filled
        assert_eq!(t.latest_run(), Some((0, vec![1.0, 2.0, 3.0, 4.0])));
    }

    #[test]
    fn upsert_replaces_the_last_point_only() {
        let mut t = Tier::new(10, 5);
        t.upsert(3, 1.0);
        t.upsert(3, 2.0);
        t.upsert(5, 4.0);
        assert_eq!(t.points(), (3, vec![2.0, 3.0, 4.0]));
        assert!(!t.upsert(3, 9.0), "older points are not rewritten");
    }

    #[test]
    fn leading_nan_is_never_filled() {
        let mut t = Tier::new(10, 5);
        t.push(0, f32::NAN);
        t.push(1, 3.0);
        let (_, pts) = t.points();
        assert!(pts[0].is_nan());
        assert_eq!(t.latest_run(), Some((1, vec![3.0])));
    }
}
