//! Synthetic per-VM workload traces for tests and benchmarks.
//!
//! A [`TraceSpec`] lists VMs, each with resources (`cpu`, `mem_bytes`,
//! `net_rx_bytes_per_s`, `dev:mmio:…_per_s`, …) whose values follow a
//! [`Profile`]: daily and weekly cycles ([`Profile::Diurnal`]), random bursts
//! ([`Profile::Bursty`]), devices idle for hours and then busy
//! ([`Profile::IdleThenBusy`], [`Profile::OnOff`]), growth ([`Profile::Trend`]),
//! level changes ([`Profile::RegimeShift`]), and sums of these, times
//! multiplicative Gaussian noise. [`TraceSpec::fleet`] builds a realistic mix.
//!
//! Everything is deterministic for a seed (a SplitMix64 generator, no
//! dependency), and each series' randomness depends only on the seed, the VM
//! name and the resource name, so adding a VM leaves the others unchanged. The
//! start time is a parameter: nothing reads the clock. Values are finite and
//! `>= 0`. Rows come out in the long CSV format ([`crate::store::long`]) like
//! `vpm record` writes them: time-major, and `dev:*` rows only when the device
//! had events (value > 0).

use std::io::{self, Write};

use crate::store::long::{Row, Writer};

/// SplitMix64: a tiny, fast, well-mixed 64-bit generator (Steele, Lea, Flood 2014).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }
}

/// The shape of one resource over time (before noise).
#[derive(Clone, Debug, PartialEq)]
pub enum Profile {
    /// A daily cycle: `base + amplitude · (1 + cos(2π (hour − peak_hour) / 24)) / 2`
    /// (UTC hours), times `weekend_factor` on Saturdays and Sundays.
    Diurnal {
        /// Level at the daily trough.
        base: f64,
        /// Peak minus trough.
        amplitude: f64,
        /// Hour of the peak, 0–24 UTC.
        peak_hour: f64,
        /// Weekend multiplier (1.0: no weekly cycle).
        weekend_factor: f64,
    },
    /// `base`, plus bursts at `burst_level` (±30 % per burst) that start at random
    /// (Poisson, `bursts_per_hour`) and last an exponential time.
    Bursty {
        /// Level between bursts.
        base: f64,
        /// Typical height of a burst above `base`.
        burst_level: f64,
        /// Mean bursts per hour.
        bursts_per_hour: f64,
        /// Mean burst length, seconds.
        mean_burst_s: f64,
    },
    /// Exactly 0 for `idle_s` after the trace start, then `level`.
    IdleThenBusy {
        /// Idle time, seconds.
        idle_s: f64,
        /// Busy level.
        level: f64,
    },
    /// Alternating idle (exactly 0) and busy (`level`) periods of exponential length;
    /// starts idle.
    OnOff {
        /// Mean idle period, seconds.
        mean_off_s: f64,
        /// Mean busy period, seconds.
        mean_on_s: f64,
        /// Busy level.
        level: f64,
    },
    /// `start + per_day · days elapsed`, floored at 0.
    Trend {
        /// Level at the trace start.
        start: f64,
        /// Change per day.
        per_day: f64,
    },
    /// One of `levels` at a time, switching to another after an exponential dwell.
    RegimeShift {
        /// The levels (the first is the starting one).
        levels: Vec<f64>,
        /// Mean time in a regime, seconds.
        mean_dwell_s: f64,
    },
    /// A constant.
    Constant {
        /// The level.
        level: f64,
    },
    /// The sum of the parts.
    Sum(Vec<Profile>),
}

/// One resource of one VM.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSpec {
    /// Resource name, as in the long format (`cpu`, `dev:mmio:0xfebf1000_per_s`).
    pub resource: String,
    /// Shape.
    pub profile: Profile,
    /// Relative noise: each value is multiplied by `1 + noise · N(0, 1)` (then
    /// floored at 0).
    pub noise: f64,
}

/// One VM.
#[derive(Clone, Debug, PartialEq)]
pub struct VmSpec {
    /// VM name.
    pub name: String,
    /// VMM pid written in rows.
    pub pid: u32,
    /// Its resources.
    pub resources: Vec<ResourceSpec>,
}

/// A whole trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpec {
    /// Unix seconds of the first step.
    pub start: f64,
    /// Length, seconds.
    pub duration_s: f64,
    /// Step between rows, seconds.
    pub step_s: f64,
    /// Seed.
    pub seed: u64,
    /// The VMs.
    pub vms: Vec<VmSpec>,
}

/// Resources whose rows are written only when non-zero (as `vpm record` does).
fn is_sparse(resource: &str) -> bool {
    resource.starts_with("dev:")
}

/// FNV-1a, to turn names into seed material.
fn fnv(bytes: &[u8], mut h: u64) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The seed of one series: depends on the trace seed and the names only.
pub fn series_seed(seed: u64, vm: &str, resource: &str) -> u64 {
    let h = fnv(vm.as_bytes(), 0xCBF2_9CE4_8422_2325);
    let h = fnv(&[0xff], h);
    let h = fnv(resource.as_bytes(), h);
    Rng::new(seed ^ h).next_u64()
}

/// A profile with its running state.
#[derive(Clone, Debug)]
enum Gen {
    Diurnal {
        base: f64,
        amplitude: f64,
        peak_hour: f64,
        weekend_factor: f64,
    },
    Bursty {
        base: f64,
        burst_level: f64,
        p_start: f64,
        mean_burst_s: f64,
        remaining_s: f64,
        height: f64,
    },
    IdleThenBusy {
        idle_s: f64,
        level: f64,
    },
    OnOff {
        mean_off_s: f64,
        mean_on_s: f64,
        level: f64,
        on: bool,
        remaining_s: f64,
    },
    Trend {
        start: f64,
        per_day: f64,
    },
    Regime {
        levels: Vec<f64>,
        mean_dwell_s: f64,
        current: usize,
        remaining_s: f64,
    },
    Constant(f64),
    Sum(Vec<Gen>),
}

impl Gen {
    fn new(p: &Profile, step_s: f64, rng: &mut Rng) -> Self {
        match p {
            &Profile::Diurnal {
                base,
                amplitude,
                peak_hour,
                weekend_factor,
            } => Gen::Diurnal {
                base,
                amplitude,
                peak_hour,
                weekend_factor,
            },
            &Profile::Bursty {
                base,
                burst_level,
                bursts_per_hour,
                mean_burst_s,
            } => Gen::Bursty {
                base,
                burst_level,
                p_start: 1.0 - (-bursts_per_hour.max(0.0) * step_s / 3600.0).exp(),
                mean_burst_s,
                remaining_s: 0.0,
                height: 0.0,
            },
            &Profile::IdleThenBusy { idle_s, level } => Gen::IdleThenBusy { idle_s, level },
            &Profile::OnOff {
                mean_off_s,
                mean_on_s,
                level,
            } => Gen::OnOff {
                mean_off_s,
                mean_on_s,
                level,
                on: false,
                remaining_s: rng.exp(mean_off_s),
            },
            &Profile::Trend { start, per_day } => Gen::Trend { start, per_day },
            Profile::RegimeShift {
                levels,
                mean_dwell_s,
            } => Gen::Regime {
                levels: levels.clone(),
                mean_dwell_s: *mean_dwell_s,
                current: 0,
                remaining_s: rng.exp(*mean_dwell_s),
            },
            &Profile::Constant { level } => Gen::Constant(level),
            Profile::Sum(parts) => {
                Gen::Sum(parts.iter().map(|p| Gen::new(p, step_s, rng)).collect())
            }
        }
    }

    /// The value at unix time `t`, `elapsed` seconds after the trace start; then
    /// advances the state by one step.
    fn next(&mut self, t: f64, elapsed: f64, step_s: f64, rng: &mut Rng) -> f64 {
        match self {
            Gen::Diurnal {
                base,
                amplitude,
                peak_hour,
                weekend_factor,
            } => {
                let hour = t.rem_euclid(86_400.0) / 3600.0;
                let shape = 0.5 + 0.5 * (std::f64::consts::TAU * (hour - *peak_hour) / 24.0).cos();
                // 1970-01-01 was a Thursday; 0 = Sunday.
                let dow = ((t / 86_400.0).floor() as i64 + 4).rem_euclid(7);
                let week = if dow == 0 || dow == 6 {
                    *weekend_factor
                } else {
                    1.0
                };
                (*base + *amplitude * shape) * week
            }
            Gen::Bursty {
                base,
                burst_level,
                p_start,
                mean_burst_s,
                remaining_s,
                height,
            } => {
                if *remaining_s <= 0.0 && rng.uniform() < *p_start {
                    *remaining_s = rng.exp(*mean_burst_s).max(step_s);
                    *height = *burst_level * (1.0 + 0.3 * rng.normal()).max(0.1);
                }
                if *remaining_s > 0.0 {
                    *remaining_s -= step_s;
                    *base + *height
                } else {
                    *base
                }
            }
            Gen::IdleThenBusy { idle_s, level } => {
                if elapsed < *idle_s {
                    0.0
                } else {
                    *level
                }
            }
            Gen::OnOff {
                mean_off_s,
                mean_on_s,
                level,
                on,
                remaining_s,
            } => {
                while *remaining_s <= 0.0 {
                    *on = !*on;
                    *remaining_s += rng
                        .exp(if *on { *mean_on_s } else { *mean_off_s })
                        .max(step_s);
                }
                *remaining_s -= step_s;
                if *on { *level } else { 0.0 }
            }
            Gen::Trend { start, per_day } => (*start + *per_day * elapsed / 86_400.0).max(0.0),
            Gen::Regime {
                levels,
                mean_dwell_s,
                current,
                remaining_s,
            } => {
                if *remaining_s <= 0.0 && levels.len() > 1 {
                    // Another level, uniformly among the others.
                    let k = (rng.uniform() * (levels.len() - 1) as f64) as usize;
                    let next = if k >= *current { k + 1 } else { k };
                    *current = next.min(levels.len() - 1);
                    *remaining_s = rng.exp(*mean_dwell_s).max(step_s);
                }
                *remaining_s -= step_s;
                levels.get(*current).copied().unwrap_or(0.0)
            }
            Gen::Constant(level) => *level,
            Gen::Sum(parts) => parts
                .iter_mut()
                .map(|g| g.next(t, elapsed, step_s, rng))
                .sum(),
        }
    }
}

/// One series being generated.
#[derive(Clone, Debug)]
struct SeriesGen {
    gen_: Gen,
    rng: Rng,
    noise: f64,
}

impl SeriesGen {
    fn new(spec: &ResourceSpec, seed: u64, step_s: f64) -> Self {
        let mut rng = Rng::new(seed);
        Self {
            gen_: Gen::new(&spec.profile, step_s, &mut rng),
            rng,
            noise: spec.noise.max(0.0),
        }
    }

    fn next(&mut self, t: f64, elapsed: f64, step_s: f64) -> f64 {
        let v = self.gen_.next(t, elapsed, step_s, &mut self.rng);
        let noisy = v * (1.0 + self.noise * self.rng.normal());
        if noisy.is_finite() {
            noisy.max(0.0)
        } else {
            0.0
        }
    }
}

/// `n` values of one resource at `step_s` from unix time `start`, with `seed`
/// (for benchmarks that want plain arrays).
pub fn series(spec: &ResourceSpec, seed: u64, start: f64, step_s: f64, n: usize) -> Vec<f64> {
    let mut g = SeriesGen::new(spec, seed, step_s);
    (0..n)
        .map(|i| {
            let elapsed = i as f64 * step_s;
            g.next(start + elapsed, elapsed, step_s)
        })
        .collect()
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

impl TraceSpec {
    /// A fleet of `vms` VMs with a realistic mix per VM (parameters drawn from
    /// `seed`): `cpu` (diurnal and weekly, with bursts), `mem_bytes` (trend plus
    /// regime shifts), `net_rx/tx_bytes_per_s` (diurnal with bursts),
    /// `disk_write_bytes_per_s` (bursty), `pio_per_s`, `mmio_per_s`, `msi_per_s`
    /// (diurnal), `dev:mmio:0xfebf1000_per_s` (on/off for hours),
    /// `dev:pio:0x3f8_per_s` (idle, then busy), and every third VM a
    /// `dev:mmio:0xfd000000_per_s` that shifts between regimes.
    pub fn fleet(vms: usize, seed: u64, start: f64, duration_s: f64, step_s: f64) -> Self {
        let mut rng = Rng::new(seed ^ 0xF1EE7);
        let vms = (0..vms)
            .map(|i| {
                let peak = rng.range(9.0, 16.0);
                let weekend = rng.range(0.3, 0.9);
                let diurnal = |rng: &mut Rng, base: f64, amp: f64| Profile::Diurnal {
                    base: base * rng.range(0.5, 1.5),
                    amplitude: amp * rng.range(0.5, 1.5),
                    peak_hour: peak + rng.range(-1.0, 1.0),
                    weekend_factor: weekend,
                };
                let bursty = |rng: &mut Rng, level: f64, per_h: f64, len_s: f64| Profile::Bursty {
                    base: 0.0,
                    burst_level: level * rng.range(0.5, 1.5),
                    bursts_per_hour: per_h * rng.range(0.5, 1.5),
                    mean_burst_s: len_s * rng.range(0.5, 1.5),
                };
                let mut resources = vec![
                    ResourceSpec {
                        resource: "cpu".into(),
                        profile: Profile::Sum(vec![
                            diurnal(&mut rng, 0.3, 2.0),
                            bursty(&mut rng, 1.0, 1.5, 180.0),
                        ]),
                        noise: 0.05,
                    },
                    ResourceSpec {
                        resource: "mem_bytes".into(),
                        profile: Profile::Sum(vec![
                            Profile::Trend {
                                start: rng.range(2.0, 8.0) * GIB,
                                per_day: rng.range(0.0, 100.0) * MIB,
                            },
                            Profile::RegimeShift {
                                levels: vec![0.0, 512.0 * MIB, 1.5 * GIB],
                                mean_dwell_s: rng.range(1.0, 3.0) * 86_400.0,
                            },
                        ]),
                        noise: 0.005,
                    },
                    ResourceSpec {
                        resource: "net_rx_bytes_per_s".into(),
                        profile: Profile::Sum(vec![
                            diurnal(&mut rng, 2e4, 1e6),
                            bursty(&mut rng, 5e6, 2.0, 60.0),
                        ]),
                        noise: 0.2,
                    },
                    ResourceSpec {
                        resource: "net_tx_bytes_per_s".into(),
                        profile: Profile::Sum(vec![
                            diurnal(&mut rng, 1e4, 3e5),
                            bursty(&mut rng, 2e6, 1.0, 60.0),
                        ]),
                        noise: 0.2,
                    },
                    ResourceSpec {
                        resource: "disk_write_bytes_per_s".into(),
                        profile: Profile::Sum(vec![
                            diurnal(&mut rng, 1e4, 2e5),
                            bursty(&mut rng, 2e7, 4.0, 30.0),
                        ]),
                        noise: 0.3,
                    },
                    ResourceSpec {
                        resource: "pio_per_s".into(),
                        profile: diurnal(&mut rng, 5.0, 40.0),
                        noise: 0.1,
                    },
                    ResourceSpec {
                        resource: "mmio_per_s".into(),
                        profile: Profile::Sum(vec![
                            diurnal(&mut rng, 100.0, 3000.0),
                            bursty(&mut rng, 5000.0, 2.0, 60.0),
                        ]),
                        noise: 0.1,
                    },
                    ResourceSpec {
                        resource: "msi_per_s".into(),
                        profile: diurnal(&mut rng, 50.0, 800.0),
                        noise: 0.15,
                    },
                    ResourceSpec {
                        resource: "dev:mmio:0xfebf1000_per_s".into(),
                        profile: Profile::OnOff {
                            mean_off_s: rng.range(2.0, 6.0) * 3600.0,
                            mean_on_s: rng.range(0.5, 2.0) * 3600.0,
                            level: rng.range(200.0, 2000.0),
                        },
                        noise: 0.2,
                    },
                    ResourceSpec {
                        resource: "dev:pio:0x3f8_per_s".into(),
                        profile: Profile::IdleThenBusy {
                            idle_s: duration_s * rng.range(0.3, 0.7),
                            level: rng.range(10.0, 100.0),
                        },
                        noise: 0.3,
                    },
                ];
                if i % 3 == 2 {
                    resources.push(ResourceSpec {
                        resource: "dev:mmio:0xfd000000_per_s".into(),
                        profile: Profile::RegimeShift {
                            levels: vec![0.0, rng.range(100.0, 500.0), rng.range(1000.0, 5000.0)],
                            mean_dwell_s: rng.range(4.0, 12.0) * 3600.0,
                        },
                        noise: 0.1,
                    });
                }
                VmSpec {
                    name: format!("vm{i:03}"),
                    pid: 10_000 + i as u32,
                    resources,
                }
            })
            .collect();
        Self {
            start,
            duration_s,
            step_s,
            seed,
            vms,
        }
    }

    /// Number of steps (rows per series, before sparse rows are left out).
    pub fn steps(&self) -> usize {
        if self.step_s > 0.0 && self.duration_s > 0.0 {
            (self.duration_s / self.step_s).ceil() as usize
        } else {
            0
        }
    }

    /// The values of resource `res` of VM `vm` (indexes into the spec) at every
    /// step, zeros included: the same numbers [`TraceSpec::rows`] writes.
    pub fn series_values(&self, vm: usize, res: usize) -> Option<Vec<f64>> {
        let v = self.vms.get(vm)?;
        let r = v.resources.get(res)?;
        let seed = series_seed(self.seed, &v.name, &r.resource);
        Some(series(r, seed, self.start, self.step_s, self.steps()))
    }

    /// Rows in the long format, time-major; `dev:*` rows only when non-zero.
    pub fn rows(&self) -> TraceRows<'_> {
        let gens = self
            .vms
            .iter()
            .map(|v| {
                v.resources
                    .iter()
                    .map(|r| {
                        SeriesGen::new(r, series_seed(self.seed, &v.name, &r.resource), self.step_s)
                    })
                    .collect()
            })
            .collect();
        TraceRows {
            spec: self,
            gens,
            step: 0,
            vm: 0,
            res: 0,
        }
    }

    /// Writes the trace as a long CSV (header included); returns the rows written.
    pub fn write_csv<W: Write>(&self, out: W) -> io::Result<u64> {
        let mut w = Writer::new(out)?;
        let mut n = 0;
        for row in self.rows() {
            w.write(&row)?;
            n += 1;
        }
        w.flush()?;
        Ok(n)
    }
}

/// Iterator over a trace's rows ([`TraceSpec::rows`]).
pub struct TraceRows<'a> {
    spec: &'a TraceSpec,
    gens: Vec<Vec<SeriesGen>>,
    step: usize,
    vm: usize,
    res: usize,
}

impl Iterator for TraceRows<'_> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let steps = self.spec.steps();
        loop {
            if self.step >= steps {
                return None;
            }
            let Some(vm) = self.spec.vms.get(self.vm) else {
                self.vm = 0;
                self.res = 0;
                self.step += 1;
                continue;
            };
            let (Some(r), Some(g)) = (
                vm.resources.get(self.res),
                self.gens.get_mut(self.vm).and_then(|g| g.get_mut(self.res)),
            ) else {
                self.vm += 1;
                self.res = 0;
                continue;
            };
            self.res += 1;
            let elapsed = self.step as f64 * self.spec.step_s;
            let t = self.spec.start + elapsed;
            let value = g.next(t, elapsed, self.spec.step_s);
            if is_sparse(&r.resource) && value <= 0.0 {
                continue;
            }
            return Some(Row {
                // Millisecond precision, like the writer.
                timestamp: (t * 1000.0).round() / 1000.0,
                vm: vm.name.clone(),
                pid: vm.pid,
                resource: r.resource.clone(),
                value,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::input;

    const DAY: f64 = 86_400.0;
    /// Monday 2026-11-23 00:00:00 UTC.
    const MONDAY: f64 = 1_795_392_000.0;

    fn spec(profile: Profile, noise: f64) -> ResourceSpec {
        ResourceSpec {
            resource: "cpu".into(),
            profile,
            noise,
        }
    }

    fn autocorr(x: &[f64], lag: usize) -> f64 {
        let n = x.len();
        let mean = x.iter().sum::<f64>() / n as f64;
        let var: f64 = x.iter().map(|v| (v - mean).powi(2)).sum();
        let cov: f64 = (0..n - lag)
            .map(|i| (x[i] - mean) * (x[i + lag] - mean))
            .sum();
        // Per overlapping pair, so a perfect period scores 1 at any lag.
        (cov / (n - lag) as f64) / (var / n as f64)
    }

    fn mean(x: &[f64]) -> f64 {
        x.iter().sum::<f64>() / x.len() as f64
    }

    #[test]
    fn monday_constant_is_a_monday() {
        assert_eq!(input::parse_rfc3339("2026-11-23T00:00:00Z"), Some(MONDAY));
        let dow = ((MONDAY / DAY).floor() as i64 + 4).rem_euclid(7);
        assert_eq!(dow, 1);
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a: Vec<Row> = TraceSpec::fleet(3, 7, MONDAY, 6.0 * 3600.0, 10.0)
            .rows()
            .collect();
        let b: Vec<Row> = TraceSpec::fleet(3, 7, MONDAY, 6.0 * 3600.0, 10.0)
            .rows()
            .collect();
        let c: Vec<Row> = TraceSpec::fleet(3, 8, MONDAY, 6.0 * 3600.0, 10.0)
            .rows()
            .collect();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn a_vm_series_does_not_depend_on_the_other_vms() {
        let small = TraceSpec::fleet(2, 7, MONDAY, 3600.0, 10.0);
        let mut big = small.clone();
        big.vms.push(big.vms[0].clone());
        big.vms[2].name = "other".into();
        assert_eq!(small.series_values(1, 0), big.series_values(1, 0));
        assert_ne!(big.series_values(0, 0), big.series_values(2, 0));
    }

    #[test]
    fn diurnal_has_a_24_hour_component() {
        let s = spec(
            Profile::Diurnal {
                base: 0.5,
                amplitude: 2.0,
                peak_hour: 14.0,
                weekend_factor: 1.0,
            },
            0.05,
        );
        let x = series(&s, 1, MONDAY, 300.0, 4 * 288);
        assert!(autocorr(&x, 288) > 0.8, "lag 1 day: {}", autocorr(&x, 288));
        assert!(autocorr(&x, 144) < -0.5, "lag 12 h: {}", autocorr(&x, 144));
        // The peak is at 14:00 UTC.
        let day = &x[..288];
        let peak = day
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as f64 * 300.0 / 3600.0)
            .unwrap_or(f64::NAN);
        assert!((peak - 14.0).abs() < 1.5, "peak at {peak} h");
    }

    #[test]
    fn weekends_are_quieter_when_asked() {
        let s = spec(
            Profile::Diurnal {
                base: 1.0,
                amplitude: 2.0,
                peak_hour: 12.0,
                weekend_factor: 0.3,
            },
            0.05,
        );
        let x = series(&s, 1, MONDAY, 300.0, 14 * 288);
        let weekday = mean(&x[..5 * 288]);
        let weekend = mean(&x[5 * 288..7 * 288]);
        assert!(
            weekend < 0.4 * weekday,
            "weekday {weekday}, weekend {weekend}"
        );
        // And the week repeats.
        assert!(autocorr(&x, 7 * 288) > 0.8);
    }

    #[test]
    fn idle_then_busy_is_exactly_zero_then_busy() {
        let s = spec(
            Profile::IdleThenBusy {
                idle_s: 6.0 * 3600.0,
                level: 50.0,
            },
            0.3,
        );
        let x = series(&s, 3, MONDAY, 10.0, 2 * 2160);
        assert!(x[..2160].iter().all(|&v| v == 0.0));
        let busy = mean(&x[2160..]);
        assert!((busy - 50.0).abs() < 5.0, "busy mean {busy}");
        assert!(x[2160..].iter().filter(|&&v| v > 0.0).count() > 2000);
    }

    #[test]
    fn on_off_is_idle_for_long_stretches() {
        let s = spec(
            Profile::OnOff {
                mean_off_s: 4.0 * 3600.0,
                mean_on_s: 3600.0,
                level: 100.0,
            },
            0.0,
        );
        let x = series(&s, 5, MONDAY, 60.0, 20 * 1440);
        let on = x.iter().filter(|&&v| v > 0.0).count() as f64 / x.len() as f64;
        assert!((0.1..0.35).contains(&on), "on fraction {on}");
        // Longest idle stretch is hours long.
        let mut longest = 0;
        let mut run = 0;
        for &v in &x {
            run = if v == 0.0 { run + 1 } else { 0 };
            longest = longest.max(run);
        }
        assert!(longest >= 4 * 60, "longest idle {longest} min");
    }

    #[test]
    fn bursts_are_rare_and_tall() {
        let s = spec(
            Profile::Bursty {
                base: 1.0,
                burst_level: 20.0,
                bursts_per_hour: 2.0,
                mean_burst_s: 60.0,
            },
            0.05,
        );
        let mut x = series(&s, 9, MONDAY, 10.0, 8640);
        x.sort_by(f64::total_cmp);
        let median = x[x.len() / 2];
        let p99 = x[x.len() * 99 / 100];
        assert!(median < 1.3 && p99 > 10.0, "median {median}, p99 {p99}");
    }

    #[test]
    fn trends_grow_and_regimes_shift() {
        let t = series(
            &spec(
                Profile::Trend {
                    start: 100.0,
                    per_day: 50.0,
                },
                0.01,
            ),
            1,
            MONDAY,
            300.0,
            4 * 288,
        );
        let growth = mean(&t[3 * 288..]) - mean(&t[..288]);
        assert!((growth - 150.0).abs() < 10.0, "growth {growth}");

        let r = series(
            &spec(
                Profile::RegimeShift {
                    levels: vec![1.0, 5.0, 20.0],
                    mean_dwell_s: 6.0 * 3600.0,
                },
                0.0,
            ),
            2,
            MONDAY,
            300.0,
            10 * 288,
        );
        let mut levels: Vec<f64> = r.clone();
        levels.dedup();
        assert!(
            levels.len() >= 5,
            "only {} regime changes",
            levels.len() - 1
        );
        assert!(r.iter().all(|v| [1.0, 5.0, 20.0].contains(v)));
    }

    #[test]
    fn fleet_values_are_finite_and_non_negative() {
        let f = TraceSpec::fleet(6, 11, MONDAY, 2.0 * DAY, 60.0);
        let mut n = 0;
        let mut resources = std::collections::BTreeSet::new();
        for row in f.rows() {
            assert!(row.value.is_finite() && row.value >= 0.0, "{row:?}");
            if row.resource.starts_with("dev:") {
                assert!(row.value > 0.0, "sparse rows only when busy: {row:?}");
            }
            resources.insert(row.resource);
            n += 1;
        }
        assert!(n > 6 * 10 * 2880 / 2, "{n} rows");
        for r in [
            "cpu",
            "mem_bytes",
            "net_rx_bytes_per_s",
            "pio_per_s",
            "dev:mmio:0xfebf1000_per_s",
        ] {
            assert!(resources.contains(r), "{r} missing");
        }
    }

    #[test]
    fn csv_reads_back_through_the_store_reader() {
        let f = TraceSpec::fleet(2, 3, MONDAY, 3.0 * 3600.0, 10.0);
        let mut buf = Vec::new();
        let written = f.write_csv(&mut buf).expect("write");
        let trace =
            input::read(buf.as_slice(), "gen.csv", &input::ReadOptions::default()).expect("read");
        assert_eq!(trace.summary.rows, written);
        assert_eq!(trace.summary.duplicate_rows_dropped, 0);
        assert_eq!(trace.summary.out_of_order_rows, 0);
        // Dense series come back whole and equal (to the writer's 6 decimals).
        let cpu = trace.get("vm001", "cpu").expect("cpu");
        let want = f.series_values(1, 0).expect("values");
        assert_eq!(cpu.values.len(), want.len());
        for (a, b) in cpu.values.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * b.max(1.0), "{a} vs {b}");
        }
        assert_eq!(cpu.timestamps[1] - cpu.timestamps[0], 10.0);
        assert_eq!(cpu.timestamps[0], MONDAY);
    }
}
