//! The `[plan]` and `[dwell]` sections: the scheduler's timing knobs.
//!
//! Range checks run while the value is read, so an error points at the value
//! itself (line and column), not at its table.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest plan horizon accepted: one week.
pub const MAX_HORIZON_S: f64 = 7.0 * 86_400.0;

/// `[plan]`: how far ahead the scheduler looks and how much it may do per tick.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanSettings {
    /// How far ahead a plan looks, seconds: VF pools are sized for the peak
    /// predicted within it. Default 300.
    #[serde(deserialize_with = "horizon")]
    pub horizon_s: f64,
    /// At most this many actions per plan, highest priority first; the rest
    /// wait for a later tick. 0 makes vpm recommend only. Default 4.
    pub max_actions_per_tick: u32,
    /// Latency against power: how early devices are woken and how soon idle
    /// ones are parked. Default `balanced`.
    pub preference: Preference,
    /// Time to wake a device from D3hot, seconds, for devices whose own
    /// latency is not known. Default 1.
    #[serde(deserialize_with = "seconds")]
    pub wake_latency_s: f64,
    /// A device counts as in use when its predicted activity (events per
    /// second, all kinds together) reaches this. Default 1.
    #[serde(deserialize_with = "positive")]
    pub active_rate: f64,
    /// VFs a PF's pool keeps for each running VM that may use it (has a VF
    /// forecast for the PF), even while none is predicted to: a VF count
    /// changes only through 0, so a pool shared by VMs can grow only in the
    /// moments none of them holds a VF, and one sized to the demand of the
    /// moment is soon stuck below the next peak. Unused VFs are parked.
    /// 0 sizes pools to the forecast alone. Default 1.
    pub pool_per_vm: u32,
}

impl Default for PlanSettings {
    fn default() -> Self {
        Self {
            horizon_s: 300.0,
            max_actions_per_tick: 4,
            preference: Preference::BALANCED,
            wake_latency_s: 1.0,
            active_rate: 1.0,
            pool_per_vm: 1,
        }
    }
}

/// `[dwell]`: minimum times between changes, so plans do not flap (a flap
/// is a change reversed within its dwell time).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dwell {
    /// A device stays awake (D0) at least this long, seconds, before it is
    /// parked. Default 60.
    #[serde(deserialize_with = "seconds")]
    pub awake_s: f64,
    /// A device stays parked at least this long, seconds, before it is woken
    /// (only a class with `preempt_dwell` may cut it short). Default 60.
    #[serde(deserialize_with = "seconds")]
    pub parked_s: f64,
    /// A PF's VF count is not changed back within this many seconds of its
    /// last change; a shrink also waits this long after any change. Default 300.
    #[serde(deserialize_with = "seconds")]
    pub vf_count_s: f64,
}

impl Default for Dwell {
    fn default() -> Self {
        Self {
            awake_s: 60.0,
            parked_s: 60.0,
            vf_count_s: 300.0,
        }
    }
}

/// Latency against power, as a weight in `0..=1`: 0 (`latency`) wakes devices
/// a whole horizon ahead and waits a whole horizon of idleness before
/// parking; 1 (`power`) wakes them only their wake latency ahead and parks
/// them as soon as their dwell allows.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Preference(f64);

impl Preference {
    /// `latency`: weight 0.
    pub const LATENCY: Self = Self(0.0);
    /// `balanced`: weight 0.5.
    pub const BALANCED: Self = Self(0.5);
    /// `power`: weight 1.
    pub const POWER: Self = Self(1.0);

    /// A preference from a weight; `None` outside `0..=1` (or NaN).
    pub fn new(weight: f64) -> Option<Self> {
        (0.0..=1.0).contains(&weight).then_some(Self(weight))
    }

    /// The weight of power savings, `0..=1`.
    pub fn power_weight(self) -> f64 {
        self.0
    }

    /// The named preference this weight is, if it is one.
    fn name(self) -> Option<&'static str> {
        [
            (Self::LATENCY, "latency"),
            (Self::BALANCED, "balanced"),
            (Self::POWER, "power"),
        ]
        .into_iter()
        .find(|(p, _)| *p == self)
        .map(|(_, n)| n)
    }
}

impl Default for Preference {
    fn default() -> Self {
        Self::BALANCED
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Preference {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_f64(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Preference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PreferenceVisitor)
    }
}

struct PreferenceVisitor;

const PREFERENCE_EXPECTED: &str =
    "\"latency\", \"balanced\", \"power\" or a number from 0 (latency) to 1 (power)";

impl serde::de::Visitor<'_> for PreferenceVisitor {
    type Value = Preference;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFERENCE_EXPECTED)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Preference, E> {
        match v {
            "latency" => Ok(Preference::LATENCY),
            "balanced" => Ok(Preference::BALANCED),
            "power" => Ok(Preference::POWER),
            other => Err(E::custom(format!(
                "preference \"{other}\": use {PREFERENCE_EXPECTED}"
            ))),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Preference, E> {
        Preference::new(v).ok_or_else(|| {
            E::custom(format!(
                "preference {v} is outside 0..=1: use {PREFERENCE_EXPECTED}"
            ))
        })
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Preference, E> {
        match v {
            0 => Ok(Preference::LATENCY),
            1 => Ok(Preference::POWER),
            _ => Err(E::custom(format!(
                "preference {v} is outside 0..=1: use {PREFERENCE_EXPECTED}"
            ))),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Preference, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

/// A finite number of seconds, at least 0.
pub(crate) fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v} s: must be a finite number of seconds, at least 0"
        )))
    }
}

/// A finite number above 0.
pub(crate) fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "{v}: must be a finite number above 0"
        )))
    }
}

/// The longest timeout a policy may set, seconds (an hour).
pub const MAX_TIMEOUT_S: f64 = 3600.0;

/// A timeout: above 0 and at most [`MAX_TIMEOUT_S`].
pub(crate) fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 && v <= MAX_TIMEOUT_S {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "timeout {v} s: must be above 0 and at most {MAX_TIMEOUT_S} s (an hour)"
        )))
    }
}

/// A horizon: above 0 and at most [`MAX_HORIZON_S`].
fn horizon<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v > 0.0 && v <= MAX_HORIZON_S {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "horizon {v} s: must be above 0 and at most {MAX_HORIZON_S} s (a week)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct P {
        p: Preference,
    }

    fn pref(v: &str) -> Result<Preference, String> {
        toml::from_str::<P>(&format!("p = {v}\n"))
            .map(|p| p.p)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn preferences_are_named_or_weights() {
        assert_eq!(pref("\"latency\""), Ok(Preference::LATENCY));
        assert_eq!(pref("\"balanced\""), Ok(Preference::BALANCED));
        assert_eq!(pref("\"power\""), Ok(Preference::POWER));
        assert_eq!(pref("0.25").map(Preference::power_weight), Ok(0.25));
        assert_eq!(pref("1"), Ok(Preference::POWER));
        for bad in ["\"fast\"", "1.5", "-0.1", "2", "nan"] {
            let err = pref(bad).unwrap_err();
            assert!(err.contains("line 1"), "{bad}: {err}");
            assert!(err.contains("latency"), "{bad}: {err}");
        }
        assert_eq!(Preference::POWER.to_string(), "power");
        assert_eq!(Preference::new(0.3).unwrap().to_string(), "0.3");
        assert_eq!(Preference::new(1.1), None);
        assert_eq!(Preference::new(f64::NAN), None);
    }

    #[test]
    fn out_of_range_values_point_at_the_value() {
        let err = toml::from_str::<PlanSettings>("horizon_s = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1, column 13"), "{err}");
        let err = toml::from_str::<Dwell>("awake_s = 1\nparked_s = -5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("-5"), "{err}");
        let err = toml::from_str::<PlanSettings>("active_rate = 0.0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("above 0"), "{err}");
        let ok = toml::from_str::<PlanSettings>("horizon_s = 60\nwake_latency_s = 0.5\n").unwrap();
        assert_eq!((ok.horizon_s, ok.wake_latency_s), (60.0, 0.5));
        assert_eq!(ok.max_actions_per_tick, 4);
    }
}
