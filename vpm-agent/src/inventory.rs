//! The PCI inventory behind `vpm devices`: every function with its names (from the
//! pci-ids database), driver, SR-IOV state, power state, IOMMU group and holders.

use serde::Serialize;

use crate::hal::{HalError, HolderInfo, PciBackend, PciFunction};

/// One PCI function as `vpm devices` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    /// What sysfs says of the function.
    #[serde(flatten)]
    pub function: PciFunction,
    /// Vendor name, when the pci-ids database knows it.
    pub vendor_name: Option<String>,
    /// Device name, when the pci-ids database knows it.
    pub device_name: Option<String>,
    /// Class (subclass) name, when known.
    pub class_name: Option<String>,
    /// Processes (VMs) holding the function through VFIO.
    pub holders: Vec<HolderInfo>,
}

/// Names of `vendor:device` and of the class code (`0xCCSSPP`) from pci-ids.
pub fn names(
    vendor: u16,
    device: u16,
    class: u32,
) -> (Option<String>, Option<String>, Option<String>) {
    let dev = pci_ids::Device::from_vid_pid(vendor, device);
    let vendor_name = dev.map(|d| d.vendor().name().to_owned()).or_else(|| {
        pci_ids::Vendors::iter()
            .find(|v| v.id() == vendor)
            .map(|v| v.name().to_owned())
    });
    let device_name = dev.map(|d| d.name().to_owned());
    let (cid, sid) = (((class >> 16) & 0xff) as u8, ((class >> 8) & 0xff) as u8);
    let class_name = pci_ids::Subclass::from_cid_sid(cid, sid).map(|s| s.name().to_owned());
    (vendor_name, device_name, class_name)
}

/// Every PCI function of `backend`, with names and holders.
pub fn list(backend: &dyn PciBackend) -> Result<Vec<DeviceRow>, HalError> {
    let mut rows = Vec::new();
    for bdf in backend.functions()? {
        let function = backend.function(bdf)?;
        let (vendor_name, device_name, class_name) =
            names(function.vendor, function.device, function.class);
        let holders = backend.holders(&function)?;
        rows.push(DeviceRow {
            function,
            vendor_name,
            device_name,
            class_name,
            holders,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn qemu_nvme_has_names() {
        let (vendor, device, class) = names(0x1b36, 0x0010, 0x010802);
        assert_eq!(vendor.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(device.as_deref(), Some("QEMU NVM Express Controller"));
        assert_eq!(class.as_deref(), Some("Non-Volatile memory controller"));
        let (vendor, device, _) = names(0x1b36, 0xfff0, 0x010802);
        assert_eq!(vendor.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(device, None);
    }
}
