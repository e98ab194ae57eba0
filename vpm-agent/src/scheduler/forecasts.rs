//! The forecasts a plan is made from: per VM, a few resources, each with a
//! point forecast and a calibrated upper bound per horizon.
//!
//! The agent loop fills this from its pipeline's forecasts with
//! [`Forecasts::add`], which maps the store's resource names:
//!
//! | resource name | becomes | unit |
//! | --- | --- | --- |
//! | `vfs:<pf>` (e.g. `vfs:0000:01:00.0`) | [`VmForecasts::vfs`] | VFs of that PF the VM holds (gauge) |
//! | `dev:<kind>:<bdf>[/…]_per_s` | [`VmForecasts::devices`], kinds summed | events per second on the device |
//! | `cpu` | [`VmForecasts::cpu`] | cores |
//! | `mem_bytes` | [`VmForecasts::memory`] | bytes |
//!
//! `upper` should be the bound at the VM's class headroom level
//! ([`Policy::class_of`](crate::policy::Policy::class_of) →
//! [`Headroom::level`](crate::policy::Headroom::level), via
//! `SeriesForecaster::bounds_at`); the forecast's own `upper` (0.95) serves
//! when the loop has nothing better.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::forecast::Forecast;
use crate::hal::Bdf;

/// Prefix of the per-PF "VFs held" gauge's resource name.
pub const VFS_PREFIX: &str = "vfs:";
/// The CPU resource (cores).
pub const CPU: &str = "cpu";
/// The memory resource (bytes).
pub const MEMORY: &str = "mem_bytes";

/// One horizon's forecast of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds ahead of now.
    pub horizon_s: f64,
    /// Point forecast.
    pub predicted: f64,
    /// Calibrated upper bound (at the VM's class headroom level).
    pub upper: f64,
    /// For a level series (VFs): when the bound counts a rise that only the
    /// onset model foresees (see `forecast::onset`), the rise's chance
    /// within the horizon. Free VFs are interchangeable, so the scheduler
    /// pools such chances over a PF's VMs instead of waking a VF for each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<f64>,
}

impl From<&Forecast> for Point {
    fn from(f: &Forecast) -> Self {
        Self {
            horizon_s: f.horizon_s,
            predicted: f.predicted,
            upper: f.upper,
            rise: None,
        }
    }
}

/// A resource's forecasts over several horizons.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outlook {
    /// One point per horizon, any order.
    pub points: Vec<Point>,
}

/// The largest point forecast and upper bound within a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    /// Largest point forecast.
    pub predicted: f64,
    /// Largest upper bound (never below `predicted`).
    pub upper: f64,
    /// The longest horizon looked at, seconds.
    pub horizon_s: f64,
    /// When the largest upper bound comes only from points whose bound is
    /// a foreseen rise ([`Point::rise`]): the largest of their chances.
    pub rise: Option<f64>,
}

fn clean(x: f64) -> Option<f64> {
    x.is_finite().then_some(x.max(0.0))
}

impl Outlook {
    /// An outlook from `(horizon_s, predicted, upper)` triples.
    pub fn from_points(points: &[(f64, f64, f64)]) -> Self {
        Self {
            points: points
                .iter()
                .map(|&(horizon_s, predicted, upper)| Point {
                    horizon_s,
                    predicted,
                    upper,
                    rise: None,
                })
                .collect(),
        }
    }

    /// The peak over the points with a horizon within `window_s`; when none
    /// is, the point with the shortest horizon (the nearest look the
    /// forecaster offers). Points with a non-finite horizon or value are
    /// ignored and negative values count as 0; `None` if no point is usable.
    pub fn peak(&self, window_s: f64) -> Option<Peak> {
        // (horizon, predicted, upper, rise)
        let usable: Vec<(f64, f64, f64, Option<f64>)> = self
            .points
            .iter()
            .filter(|p| p.horizon_s.is_finite())
            .filter_map(|p| {
                let pred = clean(p.predicted)?;
                let up = clean(p.upper)?;
                let rise = p.rise.filter(|c| c.is_finite()).map(|c| c.clamp(0.0, 1.0));
                Some((p.horizon_s, pred, up.max(pred), rise))
            })
            .collect();
        let within: Vec<&(f64, f64, f64, Option<f64>)> =
            usable.iter().filter(|p| p.0 <= window_s).collect();
        let chosen: Vec<&(f64, f64, f64, Option<f64>)> = if within.is_empty() {
            usable
                .iter()
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .into_iter()
                .collect()
        } else {
            within
        };
        let mut peak = chosen.iter().fold(None, |acc: Option<Peak>, p| {
            Some(match acc {
                None => Peak {
                    horizon_s: p.0,
                    predicted: p.1,
                    upper: p.2,
                    rise: None,
                },
                Some(a) => Peak {
                    horizon_s: a.horizon_s.max(p.0),
                    predicted: a.predicted.max(p.1),
                    upper: a.upper.max(p.2),
                    rise: None,
                },
            })
        })?;
        // A rise stands for the peak only if no point without one reaches it.
        let certain = chosen
            .iter()
            .filter(|p| p.3.is_none())
            .map(|p| p.2)
            .fold(f64::NEG_INFINITY, f64::max);
        if certain < peak.upper {
            peak.rise = chosen
                .iter()
                .filter(|p| p.2 > certain)
                .filter_map(|p| p.3)
                .reduce(f64::max);
        }
        Some(peak)
    }

    /// Adds `other` horizon by horizon (points at a horizon only one side
    /// has are kept as they are).
    fn add(&mut self, other: &[Point]) {
        for p in other {
            match self
                .points
                .iter_mut()
                .find(|q| q.horizon_s.total_cmp(&p.horizon_s).is_eq())
            {
                Some(q) => {
                    q.predicted += p.predicted;
                    q.upper += p.upper;
                    // A sum is not one rise.
                    q.rise = None;
                }
                None => self.points.push(*p),
            }
        }
    }
}

/// One VM's forecasts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmForecasts {
    /// Per PF: how many of its VFs the VM will hold.
    pub vfs: BTreeMap<Bdf, Outlook>,
    /// Per device: its activity from this VM, events per second.
    pub devices: BTreeMap<Bdf, Outlook>,
    /// CPU, cores.
    pub cpu: Option<Outlook>,
    /// Memory, bytes.
    pub memory: Option<Outlook>,
    /// Every other resource, by its store name (what `[hotplug] demand`
    /// may name).
    pub other: BTreeMap<String, Outlook>,
}

impl VmForecasts {
    /// The outlook of the resource the store calls `name`.
    pub fn resource(&self, name: &str) -> Option<&Outlook> {
        match name {
            CPU => self.cpu.as_ref(),
            MEMORY => self.memory.as_ref(),
            _ => self.other.get(name),
        }
    }
}

/// Forecasts of every VM, by VM name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Forecasts {
    /// By VM name.
    pub vms: BTreeMap<String, VmForecasts>,
}

/// What a resource name means to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// VFs of this PF held (`vfs:<pf>`).
    Vfs(Bdf),
    /// Activity on this device (`dev:<kind>:<bdf>[/…]_per_s`).
    Device(Bdf),
    /// CPU (`cpu`).
    Cpu,
    /// Memory (`mem_bytes`).
    Memory,
}

impl Resource {
    /// Parses a store resource name; `None` for resources plans do not use.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            CPU => return Some(Resource::Cpu),
            MEMORY => return Some(Resource::Memory),
            _ => {}
        }
        if let Some(pf) = name.strip_prefix(VFS_PREFIX) {
            return pf.parse().ok().map(Resource::Vfs);
        }
        let rest = name.strip_prefix("dev:")?.strip_suffix("_per_s")?;
        let (_kind, key) = rest.split_once(':')?;
        let bdf = key.split('/').next()?;
        bdf.parse().ok().map(Resource::Device)
    }

    /// The store's name of this resource (for devices, the kind is not
    /// kept: `dev:*:<bdf>_per_s`).
    pub fn name(&self) -> String {
        match self {
            Resource::Vfs(pf) => format!("{VFS_PREFIX}{pf}"),
            Resource::Device(bdf) => format!("dev:*:{bdf}_per_s"),
            Resource::Cpu => CPU.to_owned(),
            Resource::Memory => MEMORY.to_owned(),
        }
    }
}

impl Forecasts {
    /// Adds the forecasts of `vm`'s series `resource`. Device activity of
    /// several kinds adds up per horizon. Returns whether the resource is one
    /// of the kinds above; others are kept by name in
    /// [`VmForecasts::other`] (for `[hotplug] demand`).
    pub fn add(&mut self, vm: &str, resource: &str, forecasts: &[Forecast]) -> bool {
        self.add_with_rises(vm, resource, forecasts, &[])
    }

    /// [`Forecasts::add`], with each forecast's [`Point::rise`] (`rises[i]`
    /// for `forecasts[i]`; missing entries are `None`).
    pub fn add_with_rises(
        &mut self,
        vm: &str,
        resource: &str,
        forecasts: &[Forecast],
        rises: &[Option<f64>],
    ) -> bool {
        let points: Vec<Point> = forecasts
            .iter()
            .enumerate()
            .map(|(i, f)| Point {
                rise: rises.get(i).copied().flatten(),
                ..Point::from(f)
            })
            .collect();
        let Some(r) = Resource::parse(resource) else {
            self.add_other(vm, resource, &points);
            return false;
        };
        self.add_points(vm, r, &points);
        true
    }

    /// Adds points for `vm`'s resource `r` (summed with what is there).
    pub fn add_points(&mut self, vm: &str, r: Resource, points: &[Point]) {
        let entry = self.vms.entry(vm.to_owned()).or_default();
        let outlook = match r {
            Resource::Vfs(pf) => entry.vfs.entry(pf).or_default(),
            Resource::Device(bdf) => entry.devices.entry(bdf).or_default(),
            Resource::Cpu => entry.cpu.get_or_insert_with(Outlook::default),
            Resource::Memory => entry.memory.get_or_insert_with(Outlook::default),
        };
        outlook.add(points);
    }

    /// Adds points for `vm`'s resource named `name` in
    /// [`VmForecasts::other`] (summed with what is there).
    pub fn add_other(&mut self, vm: &str, name: &str, points: &[Point]) {
        self.vms
            .entry(vm.to_owned())
            .or_default()
            .other
            .entry(name.to_owned())
            .or_default()
            .add(points);
    }

    /// `vm`'s forecasts, if any.
    pub fn vm(&self, vm: &str) -> Option<&VmForecasts> {
        self.vms.get(vm)
    }

    /// How far ahead the VF and device forecasts see: their longest finite
    /// horizon, seconds; `None` without any.
    pub fn reach(&self) -> Option<f64> {
        self.vms
            .values()
            .flat_map(|v| v.vfs.values().chain(v.devices.values()))
            .flat_map(|o| &o.points)
            .map(|p| p.horizon_s)
            .filter(|h| h.is_finite())
            .reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn a_peak_is_a_rise_only_if_no_certain_point_reaches_it() {
        let pt = |h: f64, upper: f64, rise: Option<f64>| Point {
            horizon_s: h,
            predicted: 0.0,
            upper,
            rise,
        };
        let o = |points: Vec<Point>| Outlook { points };
        let peak = |o: &Outlook, w: f64| o.peak(w).expect("peak");
        let rising = o(vec![pt(60.0, 1.0, Some(0.3)), pt(300.0, 2.0, Some(0.6))]);
        assert_eq!(peak(&rising, 60.0).rise, Some(0.3));
        assert_eq!(peak(&rising, 300.0).rise, Some(0.6));
        // A regression bound as high as the rise makes the peak certain.
        let certain = o(vec![pt(60.0, 1.0, Some(0.3)), pt(300.0, 1.0, None)]);
        assert_eq!(peak(&certain, 300.0).rise, None);
        // One below it does not.
        let below = o(vec![pt(60.0, 1.0, Some(0.3)), pt(300.0, 0.5, None)]);
        assert_eq!(peak(&below, 300.0).rise, Some(0.3));
        // Chances are clamped; a NaN one is dropped.
        assert_eq!(
            peak(&o(vec![pt(60.0, 1.0, Some(7.0))]), 60.0).rise,
            Some(1.0)
        );
        assert_eq!(
            peak(&o(vec![pt(60.0, 1.0, Some(f64::NAN))]), 60.0).rise,
            None
        );
    }

    #[test]
    fn resource_names_map_to_what_plans_use() {
        assert_eq!(
            Resource::parse("vfs:0000:01:00.0"),
            Some(Resource::Vfs(bdf("0000:01:00.0")))
        );
        assert_eq!(
            Resource::parse("dev:vfio_read:0000:01:00.1_per_s"),
            Some(Resource::Device(bdf("0000:01:00.1")))
        );
        assert_eq!(
            Resource::parse("dev:vfio_msi:0000:01:00.1/irq37_per_s"),
            Some(Resource::Device(bdf("0000:01:00.1")))
        );
        assert_eq!(Resource::parse("cpu"), Some(Resource::Cpu));
        assert_eq!(Resource::parse("mem_bytes"), Some(Resource::Memory));
        for other in [
            "dev:mmio:0xfebf1000_per_s",
            "dev:vfio_msi:unknown/irq40_per_s",
            "vfs:nonsense",
            "net_rx_bytes_per_s",
            "pio_per_s",
        ] {
            assert_eq!(Resource::parse(other), None, "{other}");
        }
        assert_eq!(
            Resource::Vfs(bdf("0000:01:00.0")).name(),
            "vfs:0000:01:00.0"
        );
    }

    #[test]
    fn peaks_look_within_the_window_or_at_the_nearest_horizon() {
        let o = Outlook::from_points(&[(60.0, 1.0, 1.5), (300.0, 2.0, 2.8)]);
        let p = o.peak(100.0).unwrap();
        assert_eq!((p.predicted, p.upper, p.horizon_s), (1.0, 1.5, 60.0));
        let p = o.peak(300.0).unwrap();
        assert_eq!((p.predicted, p.upper, p.horizon_s), (2.0, 2.8, 300.0));
        let p = o.peak(5.0).unwrap();
        assert_eq!(p.horizon_s, 60.0, "the nearest horizon stands in");
        let bad = Outlook::from_points(&[(60.0, f64::NAN, 1.0), (f64::NAN, 1.0, 1.0)]);
        assert_eq!(bad.peak(300.0), None);
        let inverted = Outlook::from_points(&[(60.0, 2.0, 1.0), (120.0, -1.0, -1.0)]);
        let p = inverted.peak(300.0).unwrap();
        assert_eq!((p.predicted, p.upper), (2.0, 2.0));
        assert_eq!(Outlook::default().peak(60.0), None);
    }

    #[test]
    fn device_kinds_add_up_per_horizon() {
        let mut f = Forecasts::default();
        let fc = |h: f64, pred: f64, upper: f64| Forecast {
            horizon_s: h,
            target_time: 1000.0 + h,
            predicted: pred,
            lower: 0.0,
            upper,
            model: crate::forecast::ModelKind::LastValue,
            backtest_wape: None,
        };
        assert!(f.add(
            "vm1",
            "dev:vfio_read:0000:01:00.1_per_s",
            &[fc(60.0, 1.0, 2.0)]
        ));
        assert!(f.add(
            "vm1",
            "dev:vfio_msi:0000:01:00.1/irq3_per_s",
            &[fc(60.0, 0.5, 1.0), fc(300.0, 0.1, 0.2)]
        ));
        assert!(!f.add("vm1", "net_rx_bytes_per_s", &[fc(60.0, 1.0, 1.0)]));
        let o = &f.vm("vm1").unwrap().devices[&bdf("0000:01:00.1")];
        let p60 = o.points.iter().find(|p| p.horizon_s == 60.0).unwrap();
        assert_eq!((p60.predicted, p60.upper), (1.5, 3.0));
        assert_eq!(o.points.len(), 2);
        assert!(f.add("vm1", "cpu", &[fc(60.0, 0.5, 0.9)]));
        assert!(f.vm("vm1").unwrap().cpu.is_some());
    }
}
