//! Raw samples → per-step aggregates, with polars.
//!
//! The store gathers raw rows as columns ([`Pending`]) and, once a step can no
//! longer receive rows, hands the closed part to [`aggregate`]: one group-by on
//! (series, step) gives each step's sum and row count, a second on (VM, step)
//! gives each step's number of distinct ticks (used for sparse series, whose
//! absent rows mean zero). Timestamps are integer milliseconds; step `k` is the
//! window `[k·step, (k+1)·step)` since the epoch.

use polars::prelude::*;

/// Raw samples waiting for their step to close, column by column.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending {
    pub(crate) sid: Vec<u32>,
    pub(crate) vm: Vec<u32>,
    pub(crate) t_ms: Vec<i64>,
    pub(crate) v: Vec<f64>,
}

impl Pending {
    pub(crate) fn push(&mut self, sid: u32, vm: u32, t_ms: i64, v: f64) {
        self.sid.push(sid);
        self.vm.push(vm);
        self.t_ms.push(t_ms);
        self.v.push(v);
    }

    pub(crate) fn len(&self) -> usize {
        self.t_ms.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.t_ms.is_empty()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.sid.capacity() * size_of::<u32>()
            + self.vm.capacity() * size_of::<u32>()
            + self.t_ms.capacity() * size_of::<i64>()
            + self.v.capacity() * size_of::<f64>()
    }

    /// Moves out the samples stamped before `until_ms`; the rest stay (in fresh,
    /// right-sized buffers, so a bulk load does not leave a large allocation behind).
    pub(crate) fn take_before(&mut self, until_ms: i64) -> Pending {
        let mut out = Pending::default();
        let mut keep = Pending::default();
        for i in 0..self.len() {
            let (Some(&sid), Some(&vm), Some(&t), Some(&v)) = (
                self.sid.get(i),
                self.vm.get(i),
                self.t_ms.get(i),
                self.v.get(i),
            ) else {
                continue;
            };
            if t < until_ms {
                out.push(sid, vm, t, v);
            } else {
                keep.push(sid, vm, t, v);
            }
        }
        *self = keep;
        out
    }
}

/// One series' rows within one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct StepAgg {
    pub(crate) sid: u32,
    /// Step number (`start_ms / step_ms`).
    pub(crate) step: i64,
    pub(crate) sum: f64,
    pub(crate) rows: u32,
}

/// One VM's distinct tick timestamps within one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct VmTicks {
    pub(crate) vm: u32,
    pub(crate) step: i64,
    pub(crate) ticks: u32,
}

/// Aggregates `p` onto steps of `step_ms` milliseconds.
pub(crate) fn aggregate(p: Pending, step_ms: i64) -> PolarsResult<(Vec<StepAgg>, Vec<VmTicks>)> {
    if p.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let height = p.len();
    // Step `k` is the window `[k·step, (k+1)·step)`; grouping on (series, k) is the
    // fixed-window case of `group_by_dynamic` without that feature's build cost.
    // The key is computed here (polars' floor_div needs yet another feature).
    let step: Vec<i64> = p.t_ms.iter().map(|t| t.div_euclid(step_ms)).collect();
    let df = DataFrame::new(
        height,
        vec![
            Column::new("sid".into(), p.sid),
            Column::new("vm".into(), p.vm),
            Column::new("step".into(), step),
            Column::new("t".into(), p.t_ms),
            Column::new("v".into(), p.v),
        ],
    )?;
    let steps = df
        .clone()
        .lazy()
        .group_by([col("sid"), col("step")])
        .agg([
            col("v").sum().alias("sum"),
            col("v").count().cast(DataType::UInt32).alias("rows"),
        ])
        .collect()?;
    let ticks = df
        .lazy()
        .group_by([col("vm"), col("step")])
        .agg([col("t").n_unique().cast(DataType::UInt32).alias("ticks")])
        .collect()?;

    let mut out = Vec::with_capacity(steps.height());
    let (sid, t, sum, rows) = (
        steps.column("sid")?.u32()?,
        steps.column("step")?.i64()?,
        steps.column("sum")?.f64()?,
        steps.column("rows")?.u32()?,
    );
    for (((sid, t), sum), rows) in sid.iter().zip(t.iter()).zip(sum.iter()).zip(rows.iter()) {
        if let (Some(sid), Some(t), Some(sum), Some(rows)) = (sid, t, sum, rows) {
            out.push(StepAgg {
                sid,
                step: t,
                sum,
                rows,
            });
        }
    }
    let mut vm_out = Vec::with_capacity(ticks.height());
    let (vm, t, n) = (
        ticks.column("vm")?.u32()?,
        ticks.column("step")?.i64()?,
        ticks.column("ticks")?.u32()?,
    );
    for ((vm, t), n) in vm.iter().zip(t.iter()).zip(n.iter()) {
        if let (Some(vm), Some(t), Some(ticks)) = (vm, t, n) {
            vm_out.push(VmTicks { vm, step: t, ticks });
        }
    }
    Ok((out, vm_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_hold_sums_counts_and_distinct_ticks() {
        let mut p = Pending::default();
        // Series 1 (vm 7): two rows in step 0, one in step 2; unsorted on purpose.
        p.push(1, 7, 25_000, 6.0);
        p.push(1, 7, 1_000, 1.0);
        p.push(1, 7, 9_999, 3.0);
        // Series 2 (vm 7): one row in step 1.
        p.push(2, 7, 10_000, 5.0);
        let (steps, ticks) = aggregate(p, 10_000).expect("aggregate");
        let mut steps = steps;
        steps.sort_by_key(|s| (s.sid, s.step));
        assert_eq!(
            steps,
            vec![
                StepAgg {
                    sid: 1,
                    step: 0,
                    sum: 4.0,
                    rows: 2
                },
                StepAgg {
                    sid: 1,
                    step: 2,
                    sum: 6.0,
                    rows: 1
                },
                StepAgg {
                    sid: 2,
                    step: 1,
                    sum: 5.0,
                    rows: 1
                },
            ]
        );
        let mut ticks = ticks;
        ticks.sort_by_key(|t| t.step);
        assert_eq!(
            ticks,
            vec![
                VmTicks {
                    vm: 7,
                    step: 0,
                    ticks: 2
                },
                VmTicks {
                    vm: 7,
                    step: 1,
                    ticks: 1
                },
                VmTicks {
                    vm: 7,
                    step: 2,
                    ticks: 1
                },
            ]
        );
    }

    #[test]
    fn take_before_splits_by_time() {
        let mut p = Pending::default();
        p.push(1, 1, 5, 1.0);
        p.push(1, 1, 15, 2.0);
        p.push(2, 1, 9, 3.0);
        let out = p.take_before(10);
        assert_eq!(out.t_ms, vec![5, 9]);
        assert_eq!(p.t_ms, vec![15]);
    }
}
