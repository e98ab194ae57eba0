//! CPU and memory recommendations, VPA-like: a request (the largest point
//! forecast within the horizon) and a limit (the largest upper bound at the
//! VM's class headroom), rounded up. Not acted on.

use super::context::{Ctx, num, secs};
use super::forecasts::Outlook;
use super::output::{Recommendation, Sizing};

/// CPU is rounded up to this many cores (10 millicores).
pub const CPU_STEP: f64 = 0.01;
/// Memory is rounded up to this many bytes (1 MiB).
pub const MEMORY_STEP: f64 = 1024.0 * 1024.0;

fn round_up(x: f64, step: f64) -> f64 {
    // The 1e-9 keeps 0.30000000000000004-style noise from adding a step.
    let n = ((x / step) - 1e-9).ceil().max(0.0);
    if step < 1.0 {
        // Divide by the whole number of steps per unit: 190 / 100 is 1.9
        // where 190 * 0.01 is 1.9000000000000001.
        n / (1.0 / step).round()
    } else {
        n * step
    }
}

fn sizing(outlook: Option<&Outlook>, window: f64, step: f64) -> Option<Sizing> {
    let peak = outlook?.peak(window)?;
    let request = round_up(peak.predicted, step);
    let limit = round_up(peak.upper, step).max(request);
    Some(Sizing { request, limit })
}

/// Recommendations for every running VM with a CPU or memory forecast, by name.
pub(crate) fn recommend(ctx: &Ctx<'_>) -> Vec<Recommendation> {
    let horizon = ctx.horizon();
    ctx.vms
        .iter()
        .filter_map(|&vm| {
            let f = ctx.vm_forecasts(vm)?;
            let cpu = sizing(f.cpu.as_ref(), horizon, CPU_STEP);
            let memory = sizing(f.memory.as_ref(), horizon, MEMORY_STEP);
            if cpu.is_none() && memory.is_none() {
                return None;
            }
            let class = ctx.class(vm);
            let mut parts = Vec::new();
            if let Some(c) = cpu {
                parts.push(format!(
                    "CPU request {} cores (largest point forecast), limit {} cores",
                    num(c.request),
                    num(c.limit)
                ));
            }
            if let Some(m) = memory {
                parts.push(format!(
                    "memory request {} MiB, limit {} MiB",
                    num(m.request / MEMORY_STEP),
                    num(m.limit / MEMORY_STEP)
                ));
            }
            let reason = format!(
                "{} within {}; limits at the upper bound of class {} ({})",
                parts.join("; "),
                secs(horizon),
                class.name,
                class.class.headroom
            );
            Some(Recommendation {
                vm: vm.to_owned(),
                class: class.name.to_owned(),
                cpu,
                memory,
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_and_limits_cover_requests() {
        assert_eq!(round_up(0.123, CPU_STEP), 0.13);
        assert_eq!(round_up(1.9, CPU_STEP), 1.9);
        assert!((round_up(0.3, CPU_STEP) - 0.3).abs() < 1e-12);
        assert_eq!(round_up(0.0, CPU_STEP), 0.0);
        assert_eq!(round_up(1.5 * MEMORY_STEP, MEMORY_STEP), 2.0 * MEMORY_STEP);
        let o = Outlook::from_points(&[(60.0, 1.2, 1.0), (300.0, 0.5, 2.04)]);
        let s = sizing(Some(&o), 300.0, CPU_STEP).unwrap();
        assert!((s.request - 1.2).abs() < 1e-9, "{s:?}");
        assert!((s.limit - 2.04).abs() < 1e-9, "{s:?}");
        let s = sizing(Some(&o), 60.0, CPU_STEP).unwrap();
        assert!(s.limit >= s.request, "an inverted bound is lifted: {s:?}");
        assert_eq!(sizing(None, 300.0, CPU_STEP), None);
    }
}
