//! The agent's recent ticks, bounded by age, and windows over them.

use std::collections::VecDeque;

use crate::host::HostSample;
use crate::report::{VmInfo, Window};
use crate::telemetry::ProcessDelta;

/// What one VM did in one tick.
#[derive(Clone, Debug)]
pub struct VmTick {
    /// Who.
    pub info: VmInfo,
    /// Its events in the tick (`None`: none at all).
    pub delta: Option<ProcessDelta>,
    /// Host-side counters at the end of the tick (`None`: not readable).
    pub host: Option<HostSample>,
}

/// One tick of the whole host.
#[derive(Clone, Debug)]
pub struct Tick {
    /// Unix seconds at the end of the tick.
    pub at: f64,
    /// Every VM seen.
    pub vms: Vec<VmTick>,
}

impl Tick {
    /// Adds this tick to `window`.
    pub fn add_to(&self, window: &mut Window) {
        window.extend_to(self.at);
        for vm in &self.vms {
            window.observe(self.at, &vm.info, vm.delta.as_ref(), vm.host.as_ref());
        }
    }
}

/// Recent ticks, oldest first, no older than `max_age_s` behind the newest,
/// except the one before the newest, always kept: it is the baseline of the
/// newest tick's rates (after a stall longer than `max_age_s` the newest
/// tick's window would otherwise cover nothing and show its events as 0).
#[derive(Debug)]
pub struct History {
    ticks: VecDeque<Tick>,
    max_age_s: f64,
}

impl History {
    /// An empty history keeping `max_age_s` seconds.
    pub fn new(max_age_s: f64) -> Self {
        Self {
            ticks: VecDeque::new(),
            max_age_s,
        }
    }

    /// Appends a tick and drops the ones that aged out.
    pub fn push(&mut self, tick: Tick) {
        let newest = tick.at;
        self.ticks.push_back(tick);
        while self.ticks.len() > 2
            && self
                .ticks
                .front()
                .is_some_and(|t| newest - t.at > self.max_age_s)
        {
            self.ticks.pop_front();
        }
    }

    /// Number of ticks kept.
    pub fn len(&self) -> usize {
        self.ticks.len()
    }

    /// Whether no tick is kept.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// The window of the newest tick alone, with the tick before it (if any) as
    /// the baseline of the host counters: what one row of `vpm record` shows.
    pub fn last_tick(&self) -> Window {
        let n = self.ticks.len();
        match (
            n.checked_sub(2).and_then(|i| self.ticks.get(i)),
            self.ticks.back(),
        ) {
            (Some(base), Some(newest)) => self.window(newest.at - base.at),
            (None, Some(newest)) => {
                let mut w = Window::default();
                newest.add_to(&mut w);
                w
            }
            _ => Window::default(),
        }
    }

    /// The window over the last `seconds` before the newest tick. The tick just
    /// before the window supplies the host counters' baseline. When the
    /// history is shorter, the window starts at its oldest tick (whose events
    /// came before it): its `window_s` says how much it covers.
    pub fn window(&self, seconds: f64) -> Window {
        let Some(newest) = self.ticks.back() else {
            return Window::default();
        };
        let from = newest.at - seconds;
        let first_inside = self
            .ticks
            .iter()
            .position(|t| t.at > from + 1e-9)
            .unwrap_or(self.ticks.len())
            .max(1);
        let mut window = match first_inside.checked_sub(1).and_then(|i| self.ticks.get(i)) {
            Some(base) => {
                let mut w = Window::starting_at(base.at);
                for vm in &base.vms {
                    w.observe(base.at, &vm.info, None, vm.host.as_ref());
                }
                w
            }
            // No tick at all (unreachable: there is a newest one).
            None => Window::starting_at(newest.at),
        };
        for tick in self.ticks.iter().skip(first_inside) {
            tick.add_to(&mut window);
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::DeviceDelta;
    use vpm_common::{Counter, EventKind};

    fn tick(at: f64, pio: u64) -> Tick {
        Tick {
            at,
            vms: vec![VmTick {
                info: VmInfo {
                    pid: 1,
                    name: "a".into(),
                    uuid: None,
                    vmm: "qemu".into(),
                },
                delta: Some(ProcessDelta {
                    devices: vec![DeviceDelta {
                        kind: EventKind::Pio,
                        device: 0x80,
                        delta: Counter {
                            count: pio,
                            bytes: pio,
                        },
                    }],
                    ..Default::default()
                }),
                host: None,
            }],
        }
    }

    #[test]
    fn old_ticks_age_out() {
        let mut h = History::new(10.0);
        for i in 0..30u32 {
            h.push(tick(f64::from(i), 1));
        }
        assert_eq!(h.len(), 11);
        // A stall longer than the history: the tick before the newest stays,
        // so the newest tick's rates are over the real gap, not 0.
        h.push(tick(100.0, 62));
        assert_eq!(h.len(), 2);
        let r = h.last_tick().report();
        assert_eq!(r.window_s, 71.0);
        assert_eq!(r.vms[0].events["pio"], 62);
        assert!((r.vms[0].rates["pio_per_s"] - 62.0 / 71.0).abs() < 1e-9);
    }

    #[test]
    fn last_tick_uses_the_previous_tick_as_host_baseline() {
        let mut h = History::new(100.0);
        for (at, cpu_s) in [(1.0, 10u64), (2.0, 11), (3.0, 13)] {
            let mut t = tick(at, 5);
            t.vms[0].host = Some(HostSample {
                cpu_ns: Some(cpu_s * 1_000_000_000),
                ..Default::default()
            });
            h.push(t);
        }
        let r = h.last_tick().report();
        assert_eq!(r.window_s, 1.0);
        assert_eq!(r.vms[0].events["pio"], 5);
        assert_eq!(r.vms[0].host.cpu, Some(2.0));
    }

    #[test]
    fn window_counts_only_ticks_inside_it() {
        let mut h = History::new(100.0);
        for i in 1..=10u32 {
            h.push(tick(f64::from(i), u64::from(i)));
        }
        // Last 3 s: ticks at 8, 9, 10 (baseline 7, whose events are outside).
        let r = h.window(3.0).report();
        assert_eq!(r.window_s, 3.0);
        assert_eq!(r.vms[0].events["pio"], 8 + 9 + 10);
        // Longer than the history: from the oldest tick, and says so.
        let r = h.window(60.0).report();
        assert_eq!(r.window_s, 9.0);
        assert_eq!(r.vms[0].events["pio"], (2..=10).sum::<u64>());
    }
}
