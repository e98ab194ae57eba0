//! Seeded synthetic series for tests (no dependency on a random crate).

use super::DAY_S;

/// The trace generator's SplitMix64 with this module's seeding and its own
/// normal and exponential draws (the streams the tests were written against).
#[derive(Clone, Debug)]
pub struct Rng(crate::lab::tracegen::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(crate::lab::tracegen::Rng::new(seed ^ 0x9E37_79B9_7F4A_7C15))
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Exponential with mean 1.
    pub fn exp(&mut self) -> f64 {
        -(1.0 - self.uniform()).ln()
    }
}

/// `level + amp·sin(daily phase) + AR(1)(phi, sigma)`, clamped at 0, at
/// `step_s` from `t0`.
#[allow(
    clippy::too_many_arguments,
    reason = "test data generator; the parameters are the model"
)]
pub fn ar1_daily(
    n: usize,
    step_s: f64,
    t0: f64,
    level: f64,
    amp: f64,
    phi: f64,
    sigma: f64,
    seed: u64,
) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut e = 0.0;
    (0..n)
        .map(|i| {
            e = phi * e + sigma * rng.normal();
            let t = t0 + i as f64 * step_s;
            let d = (std::f64::consts::TAU * t.rem_euclid(DAY_S) / DAY_S).sin();
            (level + amp * d + e).max(0.0)
        })
        .collect()
}
