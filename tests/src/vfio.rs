//! Opening a PCI function through VFIO (the legacy container/group interface),
//! the way a VMM does: for the guest-side tests that need a device held open
//! (D3hot → D0 on open, VFIO telemetry, "in use by a VM" checks).
//!
//! ```no_run
//! # fn main() -> Result<(), vpm_tests::vfio::VfioError> {
//! let dev = vpm_tests::vfio::VfioDevice::open("0000:01:00.1")?; // bound to vfio-pci
//! let vendor = dev.read_config(0, 2)?;
//! let info = dev.device_info()?;
//! drop(dev); // closes device, group and container: the device may suspend again
//! # Ok(()) }
//! ```
//!
//! [`VfioDevice::open`] makes exactly [`OPEN_DEVICE_IOCTLS`] ioctl on the
//! device fd (the config region's info); every other method says what it does
//! on the device fd, so tests can predict the kernel's event counts.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// `_IO(VFIO_TYPE, VFIO_BASE + n)` (linux/vfio.h: `VFIO_TYPE` is `';'`,
/// `VFIO_BASE` 100); VFIO ioctls carry no size in their number.
const fn vfio_io(n: u64) -> u64 {
    ((b';' as u64) << 8) | (100 + n)
}

const VFIO_GET_API_VERSION: u64 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u64 = vfio_io(1);
const VFIO_SET_IOMMU: u64 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u64 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u64 = vfio_io(6);
const VFIO_DEVICE_GET_INFO: u64 = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: u64 = vfio_io(8);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: u64 = 1;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

/// Index of the PCI config space region (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION_INDEX: u32 = 7;
/// The same under its uAPI name.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = CONFIG_REGION_INDEX;

/// Ioctls [`VfioDevice::open`] makes on the device fd (one
/// `VFIO_DEVICE_GET_REGION_INFO`, for the config region).
pub const OPEN_DEVICE_IOCTLS: u64 = 1;

/// The VFIO container device.
pub const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// What went wrong, naming the thing it concerns and what to check.
#[derive(Debug)]
pub enum VfioError {
    /// The device has no IOMMU group.
    NoIommuGroup {
        /// The device.
        bdf: String,
        /// Reading its `iommu_group` link.
        source: io::Error,
    },
    /// A VFIO file could not be opened.
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The group is not viable: another device in it is bound to a host driver.
    NotViable {
        /// The group.
        group: u32,
    },
    /// The kernel speaks another VFIO API version.
    ApiVersion {
        /// What it reported.
        version: i32,
    },
    /// The container offers no type1 IOMMU.
    NoType1,
    /// An ioctl failed.
    Ioctl {
        /// The device, group or container.
        target: String,
        /// The ioctl.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Reading a region failed.
    Read {
        /// The device.
        bdf: String,
        /// Offset in the device fd.
        offset: u64,
        /// The error.
        source: io::Error,
    },
}

impl fmt::Display for VfioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfioError::NoIommuGroup { bdf, .. } => write!(
                f,
                "{bdf} has no IOMMU group: check the device exists and the kernel runs with an \
                 IOMMU (intel_iommu=on)"
            ),
            VfioError::Open { path, .. } => write!(
                f,
                "cannot open {}: bind the device to vfio-pci (driver_override + drivers_probe) \
                 and run as root",
                path.display()
            ),
            VfioError::NotViable { group } => write!(
                f,
                "IOMMU group {group} is not viable: bind every device in it to vfio-pci, or unbind it"
            ),
            VfioError::ApiVersion { version } => write!(
                f,
                "the kernel's VFIO API version is {version}, not {VFIO_API_VERSION}"
            ),
            VfioError::NoType1 => write!(
                f,
                "the VFIO container offers no type1 IOMMU: modprobe vfio_iommu_type1"
            ),
            VfioError::Ioctl { target, op, .. } => write!(f, "{target}: {op} failed"),
            VfioError::Read { bdf, offset, .. } => {
                write!(f, "{bdf}: reading the device fd at {offset:#x} failed")
            }
        }
    }
}

impl std::error::Error for VfioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VfioError::NoIommuGroup { source, .. }
            | VfioError::Open { source, .. }
            | VfioError::Ioctl { source, .. }
            | VfioError::Read { source, .. } => Some(source),
            VfioError::NotViable { .. } | VfioError::ApiVersion { .. } | VfioError::NoType1 => None,
        }
    }
}

/// `struct vfio_group_status`.
#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_device_info` (the fields every kernel has, no capability chain).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Size of this struct, for the kernel.
    pub argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*` (`VFIO_DEVICE_FLAGS_PCI` is 2).
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ types.
    pub num_irqs: u32,
}

/// `struct vfio_region_info` (no capability chain).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size of this struct, for the kernel.
    pub argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Capability chain offset (unused here).
    pub cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// A PCI function opened through VFIO: container, group and device fds, held
/// (the process then holds `/dev/vfio/<group>`) until dropped, device first.
#[derive(Debug)]
pub struct VfioDevice {
    // Field order is drop order: the device fd closes before its group and
    // container, which are only held open.
    device: File,
    _group: OwnedFd,
    _container: OwnedFd,
    bdf: String,
    group_id: u32,
    config: RegionInfo,
}

/// The IOMMU group of the PCI function `bdf`, from `<sys_root>/bus/pci/devices`.
pub fn iommu_group(sys_root: &Path, bdf: &str) -> Result<u32, VfioError> {
    let link = sys_root
        .join("bus/pci/devices")
        .join(bdf)
        .join("iommu_group");
    let target = std::fs::read_link(&link).map_err(|source| VfioError::NoIommuGroup {
        bdf: bdf.to_owned(),
        source,
    })?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| VfioError::NoIommuGroup {
            bdf: bdf.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} -> {}", link.display(), target.display()),
            ),
        })
}

fn open_rw(path: &Path) -> Result<OwnedFd, VfioError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| VfioError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// `ioctl(fd, request, arg)`, the errno kept on failure.
fn ioctl(fd: &impl AsRawFd, request: u64, arg: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: every caller passes a VFIO ioctl number with the argument its
    // uAPI defines: an integer, or a pointer to a live, correctly sized
    // `repr(C)` struct or NUL-terminated string that outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::c_ulong, arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl VfioDevice {
    /// Opens `bdf` (bound to vfio-pci) through `/sys` and `/dev/vfio`.
    pub fn open(bdf: &str) -> Result<Self, VfioError> {
        Self::open_with(Path::new("/sys"), Path::new(CONTAINER_PATH), bdf)
    }

    /// Opens `bdf` with an explicit sysfs root and container path: the
    /// container, the device's group (joined to the container), a type1 IOMMU,
    /// the device fd, and the config region's info (one device ioctl).
    pub fn open_with(sys_root: &Path, container_path: &Path, bdf: &str) -> Result<Self, VfioError> {
        let group_id = iommu_group(sys_root, bdf)?;
        let container = open_rw(container_path)?;
        let group_path = container_path
            .parent()
            .unwrap_or(Path::new("/dev/vfio"))
            .join(group_id.to_string());
        let group = open_rw(&group_path)?;
        let container_name = container_path.display().to_string();
        let group_name = format!("IOMMU group {group_id}");
        let fail = |target: &str, op: &'static str| {
            let target = target.to_owned();
            move |source| VfioError::Ioctl { target, op, source }
        };

        let version = ioctl(&container, VFIO_GET_API_VERSION, 0)
            .map_err(fail(&container_name, "VFIO_GET_API_VERSION"))?;
        if version != VFIO_API_VERSION {
            return Err(VfioError::ApiVersion { version });
        }
        let mut status = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        ioctl(
            &group,
            VFIO_GROUP_GET_STATUS,
            &raw mut status as libc::c_ulong,
        )
        .map_err(fail(&group_name, "VFIO_GROUP_GET_STATUS"))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable { group: group_id });
        }
        let container_fd: libc::c_int = container.as_raw_fd();
        ioctl(
            &group,
            VFIO_GROUP_SET_CONTAINER,
            &raw const container_fd as libc::c_ulong,
        )
        .map_err(fail(&group_name, "VFIO_GROUP_SET_CONTAINER"))?;
        let iommu = [VFIO_TYPE1V2_IOMMU, VFIO_TYPE1_IOMMU]
            .into_iter()
            .find(|t| {
                ioctl(&container, VFIO_CHECK_EXTENSION, *t as libc::c_ulong).is_ok_and(|r| r > 0)
            })
            .ok_or(VfioError::NoType1)?;
        ioctl(&container, VFIO_SET_IOMMU, iommu as libc::c_ulong)
            .map_err(fail(&container_name, "VFIO_SET_IOMMU"))?;
        let name = CString::new(bdf).map_err(|_| VfioError::NoIommuGroup {
            bdf: bdf.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in the address"),
        })?;
        let fd = ioctl(
            &group,
            VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr() as libc::c_ulong,
        )
        .map_err(fail(&group_name, "VFIO_GROUP_GET_DEVICE_FD"))?;
        // SAFETY: the ioctl succeeded, so `fd` is a new file descriptor that
        // nothing else owns.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut dev = Self {
            device,
            _group: group,
            _container: container,
            bdf: bdf.to_owned(),
            group_id,
            config: RegionInfo::default(),
        };
        dev.config = dev.region_info(CONFIG_REGION_INDEX)?;
        Ok(dev)
    }

    /// The device's PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The device's IOMMU group (`/dev/vfio/<group>` is held open).
    pub fn group(&self) -> u32 {
        self.group_id
    }

    /// The config region's info, as read by [`VfioDevice::open`].
    pub fn config_region(&self) -> RegionInfo {
        self.config
    }

    /// `VFIO_DEVICE_GET_INFO`: one ioctl on the device fd.
    pub fn device_info(&self) -> Result<DeviceInfo, VfioError> {
        let mut info = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        ioctl(
            &self.device,
            VFIO_DEVICE_GET_INFO,
            &raw mut info as libc::c_ulong,
        )
        .map_err(|source| VfioError::Ioctl {
            target: self.bdf.clone(),
            op: "VFIO_DEVICE_GET_INFO",
            source,
        })?;
        Ok(info)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`: one ioctl on the device fd.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, VfioError> {
        let mut info = RegionInfo {
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        ioctl(
            &self.device,
            VFIO_DEVICE_GET_REGION_INFO,
            &raw mut info as libc::c_ulong,
        )
        .map_err(|source| VfioError::Ioctl {
            target: self.bdf.clone(),
            op: "VFIO_DEVICE_GET_REGION_INFO",
            source,
        })?;
        Ok(info)
    }

    /// Reads `len` bytes of PCI config space at `offset`: one `pread` on the
    /// device fd (one region read in vfio-pci).
    pub fn read_config(&self, offset: u64, len: usize) -> Result<Vec<u8>, VfioError> {
        let mut buf = vec![0u8; len];
        let at = self.config.offset + offset;
        let n = self
            .device
            .read_at(&mut buf, at)
            .map_err(|source| VfioError::Read {
                bdf: self.bdf.clone(),
                offset: at,
                source,
            })?;
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_vfio_h() {
        // From the kernel headers: VFIO_GET_API_VERSION 0x3b64,
        // VFIO_GROUP_GET_DEVICE_FD 0x3b6a, VFIO_DEVICE_GET_REGION_INFO 0x3b6c.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(size_of::<RegionInfo>(), 32);
        assert_eq!(size_of::<DeviceInfo>(), 16);
    }

    #[test]
    fn a_missing_device_names_it_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = VfioDevice::open_with(dir.path(), &dir.path().join("vfio"), "0000:09:00.0")
            .expect_err("no such device");
        let msg = err.to_string();
        assert!(
            msg.contains("0000:09:00.0") && msg.contains("IOMMU"),
            "{msg}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
