//! The interface the executor acts through: [`PciBackend`].
//!
//! The real backend is [`Roots`]: the kernel's `/sys`, `/proc` and `/dev` at
//! some root (the host's, the lab guest's, or a temp tree). The simulated one,
//! [`SimPci`](super::sim::SimPci), keeps the same rules in memory for the demo
//! and for tests that make the kernel fail on purpose.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{Bdf, NumVfsChange, PciFunction, PowerControl, PowerState, Result, Sysfs};

/// A process holding a device open through VFIO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HolderInfo {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// The VM it is, when vpm recognizes it as a VMM.
    pub vm: Option<String>,
}

/// A host use of a device that vpm must not disturb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum HostUse {
    /// A block device of the function (or a partition of it) is mounted.
    Mounted {
        /// The block device (`vda`, `nvme0n1p1`).
        block: String,
        /// Where it is mounted.
        mountpoint: String,
    },
    /// A block device of the function is a swap area.
    Swap {
        /// The block device.
        block: String,
    },
    /// Another block device is built on one of the function's (LVM, md,
    /// dm-crypt: it is listed in the device's `holders/`).
    Stacked {
        /// The block device.
        block: String,
        /// The device built on it (`dm-0`, `md127`).
        holder: String,
    },
    /// A network interface of the function is up.
    NetUp {
        /// The interface.
        ifname: String,
    },
}

/// What vpm reads and writes on a PCI system. Every write has a timeout and is
/// read back by the implementation; errors keep the kernel's errno.
pub trait PciBackend {
    /// Every PCI function, sorted.
    fn functions(&self) -> Result<Vec<Bdf>>;
    /// One function's state.
    fn function(&self, bdf: Bdf) -> Result<PciFunction>;
    /// The kernel's view of the function's power state.
    fn power_state(&self, bdf: Bdf) -> Result<Option<PowerState>>;
    /// Whether an IOMMU is on.
    fn iommu_enabled(&self) -> bool;
    /// The functions of an IOMMU group.
    fn iommu_group_devices(&self, group: u32) -> Result<Vec<Bdf>>;
    /// Processes holding `f` open through VFIO.
    fn holders(&self, f: &PciFunction) -> Result<Vec<HolderInfo>>;
    /// Host uses of the function (mounted block devices, interfaces up).
    fn host_use(&self, bdf: Bdf) -> Result<Vec<HostUse>>;
    /// Sets a PF's VF count (0 first when resizing), read back.
    fn set_sriov_numvfs(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<NumVfsChange>;
    /// Sets a PF's `sriov_drivers_autoprobe` (whether VFs created later get
    /// a host driver bound), read back.
    fn set_sriov_autoprobe(&self, pf: Bdf, on: bool) -> Result<()>;
    /// Binds the function to `driver` (override, unbind, probe), read back.
    fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> Result<()>;
    /// Writes `power/control`, read back.
    fn set_power_control(&self, bdf: Bdf, control: PowerControl, timeout: Duration) -> Result<()>;
}

/// Where the kernel's file systems are: the real [`PciBackend`].
#[derive(Debug, Clone)]
pub struct Roots {
    /// sysfs (`/sys`).
    pub sys: Sysfs,
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// devtmpfs (`/dev`).
    pub dev: PathBuf,
}

impl Roots {
    /// The running system's `/sys`, `/proc` and `/dev`.
    pub fn host() -> Self {
        Self {
            sys: Sysfs::host(),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl PciBackend for Roots {
    fn functions(&self) -> Result<Vec<Bdf>> {
        self.sys.functions()
    }

    fn function(&self, bdf: Bdf) -> Result<PciFunction> {
        self.sys.function(bdf)
    }

    fn power_state(&self, bdf: Bdf) -> Result<Option<PowerState>> {
        self.sys.power_state(bdf)
    }

    fn iommu_enabled(&self) -> bool {
        self.sys.iommu_enabled()
    }

    fn iommu_group_devices(&self, group: u32) -> Result<Vec<Bdf>> {
        self.sys.iommu_group_devices(group)
    }

    /// Holders of the device's VFIO group file and, on kernels with iommufd,
    /// of its VFIO cdevs, named as VMs when vpm recognizes their VMM.
    fn holders(&self, f: &PciFunction) -> Result<Vec<HolderInfo>> {
        let Some(group) = f.iommu_group else {
            return Ok(Vec::new());
        };
        let cdevs = self.sys.vfio_cdevs(f.bdf)?;
        let holders = super::vfio_holders_with_cdevs(&self.proc, &self.dev, group, &cdevs)?;
        Ok(holders
            .into_iter()
            .map(|h| {
                let vm = crate::identity::identify(&self.proc, h.pid)
                    .ok()
                    .filter(|id| id.vmm != crate::identity::Vmm::Unknown)
                    .map(|id| id.name);
                HolderInfo {
                    pid: h.pid,
                    comm: h.comm,
                    vm,
                }
            })
            .collect())
    }

    fn host_use(&self, bdf: Bdf) -> Result<Vec<HostUse>> {
        super::host_use::host_use(self.sys.root(), &self.sys.device_dir(bdf), &self.proc)
    }

    fn set_sriov_numvfs(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<NumVfsChange> {
        self.sys.set_sriov_numvfs(pf, n, timeout)
    }

    fn set_sriov_autoprobe(&self, pf: Bdf, on: bool) -> Result<()> {
        self.sys.set_sriov_drivers_autoprobe(pf, on)
    }

    fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> Result<()> {
        self.sys.bind_driver(bdf, driver, timeout)
    }

    fn set_power_control(&self, bdf: Bdf, control: PowerControl, timeout: Duration) -> Result<()> {
        self.sys.set_power_control(bdf, control, timeout)
    }
}

/// A shared backend (the demo's simulated PF is shared by the agent and the
/// demo's driver).
impl<T: PciBackend + ?Sized> PciBackend for std::sync::Arc<T> {
    fn functions(&self) -> Result<Vec<Bdf>> {
        (**self).functions()
    }
    fn function(&self, bdf: Bdf) -> Result<PciFunction> {
        (**self).function(bdf)
    }
    fn power_state(&self, bdf: Bdf) -> Result<Option<PowerState>> {
        (**self).power_state(bdf)
    }
    fn iommu_enabled(&self) -> bool {
        (**self).iommu_enabled()
    }
    fn iommu_group_devices(&self, group: u32) -> Result<Vec<Bdf>> {
        (**self).iommu_group_devices(group)
    }
    fn holders(&self, f: &PciFunction) -> Result<Vec<HolderInfo>> {
        (**self).holders(f)
    }
    fn host_use(&self, bdf: Bdf) -> Result<Vec<HostUse>> {
        (**self).host_use(bdf)
    }
    fn set_sriov_numvfs(&self, pf: Bdf, n: u32, timeout: Duration) -> Result<NumVfsChange> {
        (**self).set_sriov_numvfs(pf, n, timeout)
    }
    fn set_sriov_autoprobe(&self, pf: Bdf, on: bool) -> Result<()> {
        (**self).set_sriov_autoprobe(pf, on)
    }
    fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> Result<()> {
        (**self).bind_driver(bdf, driver, timeout)
    }
    fn set_power_control(&self, bdf: Bdf, control: PowerControl, timeout: Duration) -> Result<()> {
        (**self).set_power_control(bdf, control, timeout)
    }
}
