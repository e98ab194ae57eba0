//! Test-only builder of fake sysfs trees laid out like the kernel's: the
//! function directories live under `ROOT/devices/pci0000:00/` and
//! `ROOT/bus/pci/devices/<bdf>` are relative links to them, as in `/sys`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use super::{Bdf, Sysfs};

/// A temp tree and a [`Sysfs`] rooted at it.
pub(crate) struct Tree {
    /// The temp directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The tree's sysfs.
    pub sysfs: Sysfs,
}

impl Tree {
    /// An empty PCI bus with a `drivers_probe` file.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::new(dir.path());
        fs::create_dir_all(sysfs.devices_dir()).unwrap();
        fs::create_dir_all(dir.path().join("bus/pci/drivers")).unwrap();
        fs::create_dir_all(dir.path().join("devices/pci0000:00")).unwrap();
        fs::write(sysfs.drivers_probe_path(), "").unwrap();
        Tree { dir, sysfs }
    }

    fn real_dir(&self, bdf: Bdf) -> PathBuf {
        self.dir
            .path()
            .join("devices/pci0000:00")
            .join(bdf.to_string())
    }

    /// Adds a function with a QEMU NVMe's ids, D0, runtime PM `auto`/`active`,
    /// no driver and no override.
    pub fn add(&self, bdf: &str) -> Bdf {
        let bdf: Bdf = bdf.parse().unwrap();
        let real = self.real_dir(bdf);
        fs::create_dir_all(real.join("power")).unwrap();
        for (name, text) in [
            ("vendor", "0x1b36\n"),
            ("device", "0x0010\n"),
            ("class", "0x010802\n"),
            ("driver_override", "(null)\n"),
            ("numa_node", "-1\n"),
            ("power_state", "D0\n"),
            ("power/control", "auto\n"),
            ("power/runtime_status", "active\n"),
        ] {
            fs::write(real.join(name), text).unwrap();
        }
        symlink(
            format!("../../../devices/pci0000:00/{bdf}"),
            self.sysfs.device_dir(bdf),
        )
        .unwrap();
        bdf
    }

    /// Writes `text` to an attribute of `bdf`.
    pub fn write(&self, bdf: Bdf, attr: &str, text: &str) {
        fs::write(self.real_dir(bdf).join(attr), text).unwrap();
    }

    /// Reads an attribute of `bdf` as the HAL left it.
    pub fn read(&self, bdf: Bdf, attr: &str) -> String {
        fs::read_to_string(self.real_dir(bdf).join(attr)).unwrap()
    }

    /// Makes `bdf` an SR-IOV PF with `total` VFs, `num` enabled.
    pub fn sriov(&self, bdf: Bdf, total: u32, num: u32) {
        for (name, text) in [
            ("sriov_totalvfs", format!("{total}\n")),
            ("sriov_numvfs", format!("{num}\n")),
            ("sriov_offset", "1\n".to_owned()),
            ("sriov_stride", "1\n".to_owned()),
            ("sriov_drivers_autoprobe", "1\n".to_owned()),
            ("sriov_vf_device", "10\n".to_owned()),
        ] {
            self.write(bdf, name, &text);
        }
    }

    /// Binds `bdf` to `driver`: the `driver` link and the driver's directory
    /// with its `unbind` file.
    pub fn bind(&self, bdf: Bdf, driver: &str) {
        let drv = self.dir.path().join("bus/pci/drivers").join(driver);
        fs::create_dir_all(&drv).unwrap();
        fs::write(drv.join("unbind"), "").unwrap();
        let link = self.real_dir(bdf).join("driver");
        let _ = fs::remove_file(&link);
        symlink(format!("../../../bus/pci/drivers/{driver}"), link).unwrap();
    }

    /// The content of the `unbind` file of `driver`.
    pub fn unbind_file(&self, driver: &str) -> String {
        fs::read_to_string(
            self.dir
                .path()
                .join("bus/pci/drivers")
                .join(driver)
                .join("unbind"),
        )
        .unwrap()
    }

    /// A link `name` in `from`'s directory to `to`'s (`virtfnN`, `physfn`).
    pub fn link_to_device(&self, from: Bdf, name: &str, to: Bdf) {
        symlink(format!("../{to}"), self.real_dir(from).join(name)).unwrap();
    }

    /// Puts `bdf` in IOMMU group `group` (both directions of links).
    pub fn iommu_group(&self, bdf: Bdf, group: u32) {
        let devices = self.sysfs.iommu_group_dir(group).join("devices");
        fs::create_dir_all(&devices).unwrap();
        symlink(
            format!("../../../../devices/pci0000:00/{bdf}"),
            devices.join(bdf.to_string()),
        )
        .unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            self.real_dir(bdf).join("iommu_group"),
        )
        .unwrap();
    }
}
