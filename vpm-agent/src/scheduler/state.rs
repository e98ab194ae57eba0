//! The host as the scheduler sees it: a snapshot the agent loop assembles
//! each tick from the HAL, the holders scan and its own journal.
//!
//! Every time a rule needs (how long a device has been in its power state,
//! when a pool last changed size) is part of the snapshot, so the scheduler
//! keeps no hidden state between ticks and a plan is a function of its inputs.

use serde::Serialize;

use crate::hal::{Bdf, PowerControl, PowerState};
use crate::policy::Candidate;

/// The driver a parked device is bound to (it is handed to VMs through it).
pub const VFIO_DRIVER: &str = crate::executor::guard::VFIO_DRIVER;

/// How far back [`PfState::peak_held`] looks: a day, so daily peaks are kept.
pub const POOL_MEMORY_S: f64 = 86_400.0;

/// The most VFs held at once over a sliding window, fed once a tick (a
/// monotonic queue: O(1) amortized per sample, bounded by the samples in the
/// window).
#[derive(Debug, Clone, Default)]
pub struct HeldPeak {
    samples: std::collections::VecDeque<(f64, u32)>,
}

impl HeldPeak {
    /// Records that `held` VFs were held at `now` (samples older than
    /// [`POOL_MEMORY_S`] are dropped).
    pub fn observe(&mut self, now: f64, held: u32) {
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| now - t > POOL_MEMORY_S)
        {
            self.samples.pop_front();
        }
        while self.samples.back().is_some_and(|&(_, h)| h <= held) {
            self.samples.pop_back();
        }
        self.samples.push_back((now, held));
    }

    /// The most held at once within `window` seconds before `now` (at most
    /// [`POOL_MEMORY_S`]).
    pub fn peak(&self, now: f64, window: f64) -> u32 {
        self.samples
            .iter()
            .find(|&&(t, _)| now - t <= window)
            .map_or(0, |&(_, h)| h)
    }
}

/// Everything the scheduler considers about the host at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostState {
    /// SR-IOV physical functions vpm manages, with their VFs.
    pub pfs: Vec<PfState>,
    /// Other managed devices (neither a PF above nor one of its VFs): whole
    /// functions passed through to VMs, parked and woken as one.
    pub devices: Vec<DeviceState>,
    /// The running VMs.
    pub vms: Vec<VmState>,
    /// How long the agent takes from the data a plan is made from until it
    /// can plan, seconds (measured by the agent's loop: queued rows,
    /// forecasting on a loaded host; 0 when not measured): devices are woken
    /// that much earlier.
    pub reaction_s: f64,
}

/// A running VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmState {
    /// Its name, as `identity` reports it (matched against `[vms] rules`).
    pub name: String,
    /// Its VMM's process id (0: not known).
    pub pid: u32,
    /// Its hot-plug situation; `None` when it cannot take hot-plugged
    /// devices (not QEMU, no QMP monitor, managed by libvirt, or vpm did
    /// not ask because its class does not opt in).
    pub hotplug: Option<VmHotplug>,
}

impl VmState {
    /// A VM known by name only (no hot-plug).
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// What is hot-plugged into a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmHotplug {
    /// Its hot-plugged VFIO devices.
    pub attached: Vec<AttachedVf>,
}

/// A VF hot-plugged into a VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachedVf {
    /// The VF.
    pub vf: Bdf,
    /// Whether vpm plugged it (its qdev id is vpm's); vpm never takes back
    /// a device it did not plug.
    pub by_vpm: bool,
    /// Since when vpm knows it attached, unix seconds: when the agent attached
    /// it, else when the agent first saw it (after a restart, the restart),
    /// which delays a give-back rather than hastens it.
    pub since: Option<f64>,
}

/// An SR-IOV physical function and its virtual functions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PfState {
    /// The PF.
    pub bdf: Bdf,
    /// Its vendor id.
    pub vendor: u16,
    /// Its device id.
    pub device: u16,
    /// `sriov_totalvfs`: the most VFs it supports.
    pub total_vfs: u32,
    /// `sriov_numvfs`: the VFs enabled now.
    pub num_vfs: u32,
    /// The VFs present, with their state.
    pub vfs: Vec<DeviceState>,
    /// The last change of `num_vfs` (by anyone), when known.
    pub last_change: Option<VfCountChange>,
    /// The sum over its users (VMs, other processes) of the most VFs each held
    /// at once over the last [`POOL_MEMORY_S`] (0 when unknown). A pool is
    /// never resized below it: every VF count change passes through 0, so a
    /// pool sized for a quiet moment could not grow back while any of its
    /// VFs is held, and users that overlapped once may overlap again.
    pub peak_held: u32,
}

/// A change of a PF's VF count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct VfCountChange {
    /// When it happened, unix seconds.
    pub at: f64,
    /// The count before it (the count after is the current `num_vfs`).
    pub from: u32,
}

/// Who uses a device now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "by", rename_all = "kebab-case")]
pub enum DeviceUse {
    /// Nobody: no process holds it and the host does not use it.
    Free,
    /// The VM with this name holds it open through VFIO.
    Vm(String),
    /// A process that is not a known VM holds it open (`pid 42 (fio)`).
    Process(String),
    /// The host uses it through a driver (`interface eth0 is up`).
    Host(String),
}

impl DeviceUse {
    /// Whether anyone uses the device (it must then never be parked, nor its
    /// PF's VF count changed).
    pub fn is_held(&self) -> bool {
        !matches!(self, DeviceUse::Free)
    }

    /// The VM holding it, if a VM does.
    pub fn vm(&self) -> Option<&str> {
        match self {
            DeviceUse::Vm(name) => Some(name),
            _ => None,
        }
    }
}

/// One PCI function: a VF (in [`PfState::vfs`]) or another managed device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceState {
    /// Its address.
    pub bdf: Bdf,
    /// Its vendor id.
    pub vendor: u16,
    /// Its device id.
    pub device: u16,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// Who uses it.
    pub user: DeviceUse,
    /// Its power state (sysfs `power_state`).
    pub power: PowerState,
    /// Its `power/control`, when readable.
    pub control: Option<PowerControl>,
    /// When its power state or `power/control` last changed, unix seconds
    /// (whichever is later, as the agent's tick saw it), or when a VF vpm
    /// saw created appeared. `None`: not known, treated as long ago (the
    /// dwell is over).
    pub power_since: Option<f64>,
    /// When it was last in use (held, or active), unix seconds. `None`: not
    /// in use since vpm started watching, treated as idle long enough.
    pub idle_since: Option<f64>,
    /// Its measured D3hot → D0 wake latency, seconds, if known (else the
    /// policy's `[plan] wake_latency_s`).
    pub wake_latency_s: Option<f64>,
}

/// A device's power situation, as the wake and park rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// In D0 and kept there (`power/control` is not `auto` under vfio-pci, or
    /// the device is held): ready now.
    Awake,
    /// In D0 but handed to runtime PM under vfio-pci (parked and not yet
    /// suspended): a wake keeps it up, a park is already done.
    Resting,
    /// In D1, D2, D3hot or D3cold.
    Asleep,
    /// A power state vpm cannot judge (`unknown`, `error`): left alone.
    Unknown,
}

#[cfg(test)]
mod held_peak_tests {
    use super::HeldPeak;

    #[test]
    fn peak_slides_with_the_window() {
        let mut p = HeldPeak::default();
        p.observe(0.0, 3);
        p.observe(10.0, 1);
        p.observe(20.0, 2);
        assert_eq!(p.peak(20.0, 100.0), 3);
        assert_eq!(p.peak(105.0, 100.0), 2, "the 3 at t=0 left the window");
        assert_eq!(p.peak(500.0, 100.0), 0);
    }
}

impl DeviceState {
    /// The allow-list's view of the device (`pf`: its PF, for a VF).
    pub fn candidate(&self, pf: Option<&PfState>) -> Candidate {
        Candidate {
            bdf: self.bdf,
            vendor: self.vendor,
            device: self.device,
            physfn: pf.map(|p| crate::policy::Pf {
                bdf: p.bdf,
                vendor: p.vendor,
                device: p.device,
            }),
        }
    }

    /// Where the device stands for the power rules.
    pub fn readiness(&self) -> Readiness {
        match self.power {
            PowerState::D0 => {
                let parked = !self.user.is_held()
                    && self.control == Some(PowerControl::Auto)
                    && self.driver.as_deref() == Some(VFIO_DRIVER);
                if parked {
                    Readiness::Resting
                } else {
                    Readiness::Awake
                }
            }
            PowerState::D1 | PowerState::D2 | PowerState::D3Hot | PowerState::D3Cold => {
                Readiness::Asleep
            }
            PowerState::Unknown(_) => Readiness::Unknown,
        }
    }

    /// Seconds in the current power state at `now` (`None`: not known).
    pub fn power_age(&self, now: f64) -> Option<f64> {
        self.power_since.map(|t| now - t)
    }
}

impl PfState {
    /// The allow-list's view of the PF.
    pub fn candidate(&self) -> Candidate {
        Candidate {
            bdf: self.bdf,
            vendor: self.vendor,
            device: self.device,
            physfn: None,
        }
    }

    /// The VFs someone uses.
    pub fn held_vfs(&self) -> impl Iterator<Item = &DeviceState> {
        self.vfs.iter().filter(|v| v.user.is_held())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(power: PowerState, control: Option<PowerControl>, user: DeviceUse) -> DeviceState {
        DeviceState {
            bdf: "0000:01:00.1".parse().unwrap(),
            vendor: 0x1b36,
            device: 0x10,
            driver: Some(VFIO_DRIVER.into()),
            user,
            power,
            control,
            power_since: Some(100.0),
            idle_since: None,
            wake_latency_s: None,
        }
    }

    #[test]
    fn readiness_follows_power_state_control_and_use() {
        use PowerControl::{Auto, On};
        let free = DeviceUse::Free;
        let held = DeviceUse::Vm("web-1".into());
        assert_eq!(
            dev(PowerState::D0, Some(On), free.clone()).readiness(),
            Readiness::Awake
        );
        assert_eq!(
            dev(PowerState::D0, Some(Auto), free.clone()).readiness(),
            Readiness::Resting
        );
        assert_eq!(
            dev(PowerState::D0, Some(Auto), held).readiness(),
            Readiness::Awake
        );
        assert_eq!(
            dev(PowerState::D3Hot, Some(Auto), free.clone()).readiness(),
            Readiness::Asleep
        );
        assert_eq!(
            dev(PowerState::Unknown("error".into()), None, free.clone()).readiness(),
            Readiness::Unknown
        );
        let mut nvme = dev(PowerState::D0, Some(Auto), free);
        nvme.driver = Some("nvme".into());
        assert_eq!(nvme.readiness(), Readiness::Awake);
        assert_eq!(nvme.power_age(160.0), Some(60.0));
    }
}
