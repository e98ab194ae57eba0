//! Pooled spares: how many free VFs of a PF to keep awake for rises that
//! are only likely.
//!
//! Free VFs are interchangeable: whichever VM rises first opens one. When
//! several VMs may each rise (each chance from the onset model, see
//! [`Point::rise`](super::Point::rise)), keeping one awake VF per VM is more
//! than the chance that they rise *together* calls for. Treating the rises
//! as independent, the PF keeps the fewest spares `s` for which the chance
//! that their rises together want more than `s` VFs is below `1 − level`
//! (a chance of exactly `1 − level` counts, as it does for one VM).

/// The fewest spares for `claims` (`(VFs the rise takes, its chance)`,
/// independent) such that more than that many are wanted at once with a
/// chance below `1 − level`. Chances are clamped to `0..=1` (NaN
/// counts as certain); a `level` of 1 or more asks for every VF.
pub(crate) fn pooled(claims: &[(u32, f64)], level: f64) -> u32 {
    let total = claims
        .iter()
        .fold(0u32, |acc, &(k, _)| acc.saturating_add(k))
        .min(1 << 16);
    // dist[j]: the chance that the rises want j VFs together.
    let mut dist = vec![0.0f64; total as usize + 1];
    dist[0] = 1.0;
    let mut reach = 0usize;
    for &(k, p) in claims {
        let p = if p.is_nan() { 1.0 } else { p.clamp(0.0, 1.0) };
        let k = (k as usize).min(total as usize - reach);
        for j in (0..=reach).rev() {
            let d = dist[j];
            dist[j] = d * (1.0 - p);
            dist[j + k] += d * p;
        }
        reach += k;
    }
    let allowed = if level.is_nan() {
        0.0
    } else {
        (1.0 - level).max(0.0)
    };
    // A rise exactly 1 − level likely counts (as `OnsetModel::bound` counts
    // it): stop only below.
    let mut tail = 1.0;
    for (s, d) in dist.iter().enumerate() {
        tail -= d;
        if tail < allowed - 1e-12 {
            return u32::try_from(s).unwrap_or(total);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_likely_rise_keeps_what_it_takes() {
        assert_eq!(pooled(&[(1, 0.3)], 0.95), 1);
        assert_eq!(pooled(&[(2, 0.3)], 0.95), 2);
        assert_eq!(pooled(&[(2, 0.03)], 0.95), 0, "3 % < 5 %");
        assert_eq!(pooled(&[(1, 0.2)], 0.8), 1, "exactly 1 − level counts");
        assert_eq!(pooled(&[], 0.95), 0);
    }

    #[test]
    fn likely_rises_together_need_fewer_spares_than_one_each() {
        // Three VMs, each 20 % likely to take one VF: P(more than 1 at once)
        // = 1 − 0.8³ − 3·0.2·0.8² = 10.4 %; more than 2: 0.8 %.
        let three = [(1, 0.2), (1, 0.2), (1, 0.2)];
        assert_eq!(pooled(&three, 0.8), 1);
        assert_eq!(pooled(&three, 0.95), 2);
        assert_eq!(pooled(&three, 0.999), 3);
        // Certain rises add up.
        assert_eq!(pooled(&[(1, 1.0), (2, 1.0)], 0.5), 3);
        assert_eq!(pooled(&[(1, f64::NAN)], 0.5), 1, "NaN counts as certain");
        assert_eq!(pooled(&[(1, 0.5)], 1.0), 1);
        assert_eq!(pooled(&[(1, 0.5)], f64::NAN), 1);
    }

    #[test]
    fn huge_claims_stay_bounded() {
        assert_eq!(pooled(&[(u32::MAX, 1.0), (u32::MAX, 1.0)], 0.5), 1 << 16);
    }
}
