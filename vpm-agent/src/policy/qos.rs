//! QoS classes (`[classes.NAME]`): how much headroom a VM's forecast gets, how
//! many VFs it may have, and who goes first under contention.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

/// How far above the point forecast a class provisions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Headroom {
    /// Provision to this quantile of the forecast distribution, in `(0, 1)`.
    Quantile(f64),
    /// Provision so that about this share of outcomes exceeds the provision
    /// (a target under-provision rate, in `(0, 1)`; the class's adaptive
    /// headroom, `forecast::adaptive`, holds it in the agent's plans).
    UnderProvision(f64),
}

impl Headroom {
    /// The quantile level to provision to: the quantile itself, or
    /// `1 − rate` (the nominal level for a target under-provision rate).
    pub fn level(self) -> f64 {
        match self {
            Headroom::Quantile(q) => q,
            Headroom::UnderProvision(r) => 1.0 - r,
        }
    }
}

impl std::fmt::Display for Headroom {
    /// `quantile 0.95`, or `adaptive quantile for 5 % above` (for reasons).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Headroom::Quantile(q) => write!(f, "quantile {q}"),
            Headroom::UnderProvision(r) => {
                // (Rounded: 100 × 0.2 is 20.000000000000004.)
                let pct = (100.0 * r * 1e6).round() / 1e6;
                write!(f, "adaptive quantile for {pct} % above")
            }
        }
    }
}

/// One QoS class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QosClass {
    /// Higher goes first: under contention, and when a tick has more actions
    /// than it may take.
    pub priority: u32,
    /// Headroom over the point forecast.
    pub headroom: Headroom,
    /// VFs kept ready (created and awake) for each VM of the class, on each
    /// PF the VM uses.
    pub min_vfs: u32,
    /// At most this many VFs of one PF are provisioned for a VM of the class
    /// (`None`: no limit but the PF's).
    pub max_vfs: Option<u32>,
    /// Whether VMs of this class may receive hot-plugged VFs over QMP (opt-in).
    pub hotplug: bool,
    /// At most this many VFs vpm hot-plugs into one VM of the class (VFs on
    /// the VM's command line do not count).
    pub max_attached: u32,
    /// Whether vpm may take a hot-plugged VF back from a VM of this class
    /// (hot-unplug). Always `false` for the class named `guaranteed`
    /// ([`GUARANTEED`]): what it was given it keeps.
    pub detach: bool,
    /// Whether this class's predicted demand may cut a dwell short (wake a
    /// device parked less than `[dwell] parked_s` ago, regrow a VF pool
    /// shrunk less than `[dwell] vf_count_s` ago). Plans say so in the reason.
    pub preempt_dwell: bool,
}

impl QosClass {
    /// The class a VM falls in when the policy names none that exists (only
    /// reachable for a hand-built, unvalidated policy): lowest priority, the
    /// 0.95 quantile, no VFs reserved.
    pub const FALLBACK: QosClass = QosClass {
        priority: 0,
        headroom: Headroom::Quantile(0.95),
        min_vfs: 0,
        max_vfs: None,
        hotplug: false,
        max_attached: 0,
        detach: true,
        preempt_dwell: false,
    };

    /// Clamps a VF demand to the class's `min_vfs..=max_vfs`.
    pub fn clamp_vfs(&self, demand: u32) -> u32 {
        let d = demand.max(self.min_vfs);
        self.max_vfs.map_or(d, |m| d.min(m))
    }
}

/// The class vpm never takes a hot-plugged VF back from.
pub const GUARANTEED: &str = "guaranteed";

/// A VM's class with its name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassRef<'a> {
    /// The class name (`guaranteed`).
    pub name: &'a str,
    /// The class.
    pub class: &'a QosClass,
}

/// The classes a policy without `[classes]` has: `guaranteed` (priority 300,
/// quantile 0.99, may cut a dwell short), `burstable` (200, 0.95) and
/// `best-effort` (100, 0.80).
pub fn builtin_classes() -> Vec<(String, QosClass)> {
    let class = |priority, q, preempt_dwell: bool| QosClass {
        priority,
        headroom: Headroom::Quantile(q),
        min_vfs: 0,
        max_vfs: None,
        hotplug: false,
        max_attached: 1,
        // What a guaranteed VM was given, it keeps.
        detach: !preempt_dwell,
        preempt_dwell,
    };
    vec![
        ("guaranteed".to_owned(), class(300, 0.99, true)),
        ("burstable".to_owned(), class(200, 0.95, false)),
        ("best-effort".to_owned(), class(100, 0.80, false)),
    ]
}

/// A class as written in the file, before its cross-field checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClass {
    #[serde(default = "default_priority")]
    priority: u32,
    #[serde(default)]
    quantile: Option<Spanned<f64>>,
    #[serde(default)]
    under_provision: Option<Spanned<f64>>,
    #[serde(default)]
    min_vfs: Option<Spanned<u32>>,
    #[serde(default)]
    max_vfs: Option<u32>,
    #[serde(default)]
    hotplug: bool,
    #[serde(default = "default_max_attached")]
    max_attached: u32,
    #[serde(default)]
    detach: Option<Spanned<bool>>,
    #[serde(default)]
    preempt_dwell: bool,
}

fn default_max_attached() -> u32 {
    1
}

fn default_priority() -> u32 {
    100
}

fn open_unit(v: f64) -> bool {
    v > 0.0 && v < 1.0
}

/// A class that fails its checks: the message, and where in the file the
/// key at fault is (`None`: the class as a whole).
pub(crate) type ClassError = (Option<Range<usize>>, String);

impl RawClass {
    /// Checks the class `name`; the error names it and points at the key.
    pub(crate) fn validate(self, name: &str) -> Result<QosClass, ClassError> {
        let at = |v: &Spanned<f64>| Some(v.span());
        let headroom = match (&self.quantile, &self.under_provision) {
            (Some(_), Some(r)) => {
                return Err((
                    at(r),
                    format!(
                        "class \"{name}\": set either quantile or under_provision, not both \
                         (quantile = q provisions to that fixed quantile; under_provision = r \
                         moves the quantile so that about r of outcomes end above)"
                    ),
                ));
            }
            (Some(q), None) if !open_unit(*q.get_ref()) => {
                return Err((
                    at(q),
                    format!(
                        "class \"{name}\": quantile {} must lie strictly between 0 and 1 \
                         (e.g. 0.95)",
                        q.get_ref()
                    ),
                ));
            }
            (None, Some(r)) if !open_unit(*r.get_ref()) => {
                return Err((
                    at(r),
                    format!(
                        "class \"{name}\": under_provision {} must lie strictly between 0 \
                         and 1 (e.g. 0.05 for 5 % of outcomes above the provision)",
                        r.get_ref()
                    ),
                ));
            }
            (Some(q), None) => Headroom::Quantile(*q.get_ref()),
            (None, Some(r)) => Headroom::UnderProvision(*r.get_ref()),
            (None, None) => Headroom::Quantile(0.95),
        };
        // What a guaranteed VM was given, it keeps: whatever the file says.
        let detach = match (name == GUARANTEED, &self.detach) {
            (true, Some(d)) if *d.get_ref() => {
                return Err((
                    Some(d.span()),
                    format!(
                        "class \"{name}\": detach = true is not allowed: vpm never takes a \
                         hot-plugged VF back from a guaranteed VM (remove the key, or name the \
                         class otherwise)"
                    ),
                ));
            }
            (true, _) => false,
            (false, d) => d.as_ref().is_none_or(|d| *d.get_ref()),
        };
        let min_vfs = self.min_vfs.as_ref().map_or(0, |m| *m.get_ref());
        if let Some(max) = self.max_vfs
            && min_vfs > max
        {
            return Err((
                self.min_vfs.as_ref().map(Spanned::span),
                format!("class \"{name}\": min_vfs {min_vfs} is above max_vfs {max}"),
            ));
        }
        Ok(QosClass {
            priority: self.priority,
            headroom,
            min_vfs,
            max_vfs: self.max_vfs,
            hotplug: self.hotplug,
            max_attached: self.max_attached,
            detach,
            preempt_dwell: self.preempt_dwell,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawClass {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn headroom_is_a_quantile_or_a_rate() {
        let c = raw("quantile = 0.99\n").validate("g").unwrap();
        assert_eq!(c.headroom, Headroom::Quantile(0.99));
        let c = raw("under_provision = 0.05\n").validate("b").unwrap();
        assert_eq!(c.headroom.to_string(), "adaptive quantile for 5 % above");
        let q = raw("under_provision = 0.2\n").validate("b").unwrap();
        assert_eq!(q.headroom.to_string(), "adaptive quantile for 20 % above");
        assert!((c.headroom.level() - 0.95).abs() < 1e-12);
        let c = raw("").validate("d").unwrap();
        assert_eq!(c.headroom.level(), 0.95);
        assert_eq!((c.priority, c.min_vfs, c.max_vfs), (100, 0, None));
        assert!(!c.hotplug && !c.preempt_dwell);
    }

    #[test]
    fn bad_classes_are_named() {
        for (text, want) in [
            ("quantile = 1.0\n", "quantile 1"),
            ("quantile = 0\n", "quantile 0"),
            ("under_provision = 1.5\n", "under_provision 1.5"),
            ("quantile = 0.9\nunder_provision = 0.1\n", "not both"),
            ("min_vfs = 3\nmax_vfs = 2\n", "min_vfs 3 is above max_vfs 2"),
        ] {
            let (at, err) = raw(text).validate("gold").unwrap_err();
            assert!(err.contains("class \"gold\""), "{err}");
            assert!(err.contains(want), "{err}");
            // It points at the key at fault.
            let at = at.expect("a key");
            let key = text[at.start..].lines().next().unwrap_or("");
            assert!(!key.is_empty(), "{text:?} {at:?}");
        }
    }

    #[test]
    fn a_guaranteed_class_never_gives_back() {
        // Defined in a file (the built-in classes are then gone): no detach,
        // whether the key is left out or set false; true is refused.
        assert!(!raw("").validate("guaranteed").unwrap().detach);
        assert!(
            !raw("detach = false\n")
                .validate("guaranteed")
                .unwrap()
                .detach
        );
        let (_, err) = raw("detach = true\n").validate("guaranteed").unwrap_err();
        assert!(err.contains("detach = true is not allowed"), "{err}");
        assert!(raw("").validate("gold").unwrap().detach);
        assert!(!raw("detach = false\n").validate("gold").unwrap().detach);
        let (_, builtin) = &builtin_classes()[0];
        assert!(!builtin.detach);
    }

    #[test]
    fn vf_demand_is_clamped_to_the_class() {
        let c = raw("min_vfs = 1\nmax_vfs = 3\n").validate("c").unwrap();
        assert_eq!([0, 1, 2, 5].map(|d| c.clamp_vfs(d)), [1, 1, 2, 3]);
        assert_eq!(QosClass::FALLBACK.clamp_vfs(7), 7);
        let names: Vec<String> = builtin_classes().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["guaranteed", "burstable", "best-effort"]);
    }
}
