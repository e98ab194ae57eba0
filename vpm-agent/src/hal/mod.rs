//! The hardware abstraction layer: the PCI parts of Linux sysfs and PCI
//! configuration space, read and written through one door.
//!
//! # Rooted at a path
//!
//! Every access goes through a [`Sysfs`] that holds the sysfs root (`/sys` on
//! a host or in a QEMU guest, a temp directory in unit tests), so the same
//! code drives all three. [`vfio_holders`] takes its `/proc` and `/dev` roots
//! the same way. Paths are built only from a parsed [`Bdf`] (whose strict
//! parser refuses `/`, `..`, NUL, whitespace and short forms), validated
//! driver and cdev names, numbers, and attribute names fixed in this module.
//!
//! # Files
//!
//! - [`bdf`]: PCI addresses. [`error`]: [`HalError`] and [`Errno`].
//! - [`sysfs`](Sysfs::function): reads of `ROOT/bus/pci/devices/<bdf>/…`,
//!   IOMMU groups and config space; [`parse`] holds their pure text parsers
//!   and [`config`] the config-space parser.
//! - [`write`](Sysfs::set_sriov_numvfs): writes, each with a time limit and a
//!   read-back. [`holders`](vfio_holders): who has a VFIO device open.
//!
//! # Kernel rules the HAL follows
//!
//! - **SR-IOV**: writing `sriov_numvfs` its current value is a no-op; from a
//!   non-zero count to another non-zero count the kernel answers `EBUSY`, so
//!   [`Sysfs::set_sriov_numvfs`] resizes through 0. More than `sriov_totalvfs`
//!   is `ERANGE`; `ENOENT` means the PF has no driver bound, or its driver
//!   has no `sriov_configure`. Creating VFs can block for minutes in the PF
//!   driver: every write has a time limit, and on [`HalError::Timeout`] the
//!   kernel may still complete it.
//! - **Drivers**: `driver_override` makes only the named driver match a
//!   device (it reads `(null)` when unset; writing `\n` clears it).
//!   `drivers_probe` binds a driverless device, and reports success even
//!   when the matching driver's probe failed (vfio-pci without an IOMMU, for
//!   one), so a bind is confirmed only by reading the `driver` link back.
//!   Unbinding from vfio-pci blocks until the user (a VMM) closes the device.
//! - **Power**: read `power_state` before anything else that may touch the
//!   device: reading `config` runtime-resumes a suspended device (D3hot/D3cold
//!   → D0). `power/control` = `on` keeps a device awake; `auto` lets its
//!   driver suspend it when idle.
//! - **Config space**: `config` gives root the whole space (256 bytes, 4096
//!   for PCIe) and other users only the first 64 bytes.

pub mod backend;
pub mod bdf;
pub mod config;
pub mod error;
mod holders;
pub mod host_use;
pub mod parse;
mod power;
pub mod sim;
mod sysfs;
#[cfg(test)]
pub(crate) mod testtree;
mod write;

use std::path::{Path, PathBuf};

pub use backend::{HolderInfo, HostUse, PciBackend, Roots};
pub use bdf::Bdf;
pub use config::{Capability, ConfigSpace, ExtCapability, PmCapability, SriovCapability};
pub use error::{Errno, HalError, Result};
pub use holders::{Holder, vfio_holders, vfio_holders_with_cdevs};
pub use power::{PowerControl, PowerState, RuntimeStatus};
pub use sysfs::{PciFunction, SriovInfo};
pub use write::{DEFAULT_WRITE_TIMEOUT, NumVfsChange, numvfs_steps, validate_driver_name};

/// A sysfs tree: `/sys`, a guest's `/sys`, or a test tree with the same
/// layout. All reads and writes of PCI state go through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// A tree rooted at `root` (the directory that plays `/sys`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    /// The running system's `/sys`.
    pub fn host() -> Self {
        Sysfs::new("/sys")
    }

    /// The root this tree was made with.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/bus/pci/devices`: one entry (a link) per PCI function.
    pub fn devices_dir(&self) -> PathBuf {
        self.root.join("bus/pci/devices")
    }

    /// `ROOT/bus/pci/devices/<bdf>`.
    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.devices_dir().join(bdf.to_string())
    }

    /// `ROOT/bus/pci/devices/<bdf>/<attr>`. `attr` is a name fixed in the
    /// program (`sriov_numvfs`, `power/control`), never outside input.
    pub fn attr_path(&self, bdf: Bdf, attr: &'static str) -> PathBuf {
        self.device_dir(bdf).join(attr)
    }

    /// `ROOT/bus/pci/drivers_probe`.
    pub fn drivers_probe_path(&self) -> PathBuf {
        self.root.join("bus/pci/drivers_probe")
    }

    /// `ROOT/kernel/iommu_groups/<group>`.
    pub fn iommu_group_dir(&self, group: u32) -> PathBuf {
        self.root
            .join("kernel/iommu_groups")
            .join(group.to_string())
    }
}

impl Default for Sysfs {
    /// [`Sysfs::host`].
    fn default() -> Self {
        Sysfs::host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_come_from_the_root_and_a_parsed_bdf() {
        let s = Sysfs::new("/tmp/t");
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(s.root(), Path::new("/tmp/t"));
        assert_eq!(
            s.attr_path(bdf, "power/control"),
            Path::new("/tmp/t/bus/pci/devices/0000:01:00.0/power/control")
        );
        assert_eq!(
            s.drivers_probe_path(),
            Path::new("/tmp/t/bus/pci/drivers_probe")
        );
        assert_eq!(
            s.iommu_group_dir(7),
            Path::new("/tmp/t/kernel/iommu_groups/7")
        );
        assert_eq!(Sysfs::default(), Sysfs::host());
        assert_eq!(Sysfs::host().root(), Path::new("/sys"));
    }
}
