//! Opening a PCI function through VFIO (the legacy container/group interface),
//! as a VMM does: the lab tests use it to hold a VF open and to drive the
//! vfio-pci paths vpm's telemetry counts.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::FileExt as _;

use anyhow::{Context as _, bail};

// linux/vfio.h: _IO(VFIO_TYPE = ';', VFIO_BASE + n) with VFIO_BASE = 100.
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
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
/// The PCI config space region of a vfio-pci device.
pub const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;

/// `struct vfio_group_status`.
#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

/// `struct vfio_device_info` (the fields every kernel has).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct DeviceInfo {
    argsz: u32,
    /// `VFIO_DEVICE_FLAGS_*` (bit 1: PCI).
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ types.
    pub num_irqs: u32,
}

/// `struct vfio_region_info`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct RegionInfo {
    argsz: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// The region index.
    pub index: u32,
    cap_offset: u32,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// A PCI function opened through VFIO: container, group and device fds, held
/// until dropped (the process then holds `/dev/vfio/<group>`).
pub struct VfioDevice {
    _container: File,
    _group: File,
    device: File,
    /// The function's IOMMU group.
    pub group: u32,
}

fn ioctl(fd: &impl std::os::fd::AsRawFd, req: u64, arg: u64, what: &str) -> anyhow::Result<i32> {
    // SAFETY: `req` is a VFIO ioctl whose argument is either a plain integer or
    // a pointer (passed as `arg`) to a live, correctly sized #[repr(C)] struct
    // owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_owned());
    }
    Ok(rc)
}

impl VfioDevice {
    /// Opens `bdf` (bound to vfio-pci) through its IOMMU group.
    pub fn open(bdf: &str) -> anyhow::Result<Self> {
        let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))
            .with_context(|| format!("{bdf} has no IOMMU group"))?;
        let group: u32 = link
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad iommu_group link {}", link.display()))?;
        let rw = |p: &str| OpenOptions::new().read(true).write(true).open(p);
        let container = rw("/dev/vfio/vfio").context("opening /dev/vfio/vfio")?;
        if ioctl(&container, VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")? != VFIO_API_VERSION {
            bail!("unexpected VFIO API version");
        }
        if ioctl(
            &container,
            VFIO_CHECK_EXTENSION,
            VFIO_TYPE1_IOMMU,
            "VFIO_CHECK_EXTENSION",
        )? == 0
        {
            bail!("the VFIO container lacks the type1 IOMMU");
        }
        let group_path = format!("/dev/vfio/{group}");
        let group_file = rw(&group_path).with_context(|| format!("opening {group_path}"))?;
        let mut status = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            ..GroupStatus::default()
        };
        ioctl(
            &group_file,
            VFIO_GROUP_GET_STATUS,
            &raw mut status as u64,
            "VFIO_GROUP_GET_STATUS",
        )?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            bail!("VFIO group {group} is not viable (a device of it is bound to a host driver)");
        }
        let container_fd = container.as_raw_fd();
        ioctl(
            &group_file,
            VFIO_GROUP_SET_CONTAINER,
            &raw const container_fd as u64,
            "VFIO_GROUP_SET_CONTAINER",
        )?;
        ioctl(
            &container,
            VFIO_SET_IOMMU,
            VFIO_TYPE1_IOMMU,
            "VFIO_SET_IOMMU",
        )?;
        let name = std::ffi::CString::new(bdf).context("BDF with NUL")?;
        let fd = ioctl(
            &group_file,
            VFIO_GROUP_GET_DEVICE_FD,
            name.as_ptr() as u64,
            "VFIO_GROUP_GET_DEVICE_FD",
        )?;
        // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
        let device = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Self {
            _container: container,
            _group: group_file,
            device,
            group,
        })
    }

    /// `VFIO_DEVICE_GET_INFO` (one ioctl).
    pub fn device_info(&self) -> anyhow::Result<DeviceInfo> {
        let mut info = DeviceInfo {
            argsz: size_of::<DeviceInfo>() as u32,
            ..DeviceInfo::default()
        };
        ioctl(
            &self.device,
            VFIO_DEVICE_GET_INFO,
            &raw mut info as u64,
            "VFIO_DEVICE_GET_INFO",
        )?;
        Ok(info)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for `index` (one ioctl).
    pub fn region_info(&self, index: u32) -> anyhow::Result<RegionInfo> {
        let mut info = RegionInfo {
            argsz: size_of::<RegionInfo>() as u32,
            index,
            ..RegionInfo::default()
        };
        ioctl(
            &self.device,
            VFIO_DEVICE_GET_REGION_INFO,
            &raw mut info as u64,
            "VFIO_DEVICE_GET_REGION_INFO",
        )?;
        Ok(info)
    }

    /// Reads `len` bytes of config space at `offset` (one region read through
    /// vfio-pci; the config region's offset comes from `region_info`).
    pub fn read_config(
        &self,
        config: &RegionInfo,
        offset: u64,
        len: usize,
    ) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0; len];
        let n = self
            .device
            .read_at(&mut buf, config.offset + offset)
            .context("reading the config region")?;
        buf.truncate(n);
        Ok(buf)
    }
}
