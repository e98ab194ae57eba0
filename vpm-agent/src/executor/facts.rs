//! What the safety checks need to know of a device, read from the system.
//!
//! Everything here is read through a [`PciBackend`]: the kernel's files at some
//! root ([`Roots`]: the host, the lab guest, temp trees) or the simulated PCI system.

use serde::Serialize;

use crate::hal::{Bdf, HalError, PciBackend, PciFunction};
pub use crate::hal::{HolderInfo, HostUse, Roots};
use crate::policy::{Candidate, Policy};

/// Another function in the device's IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// Its address.
    pub bdf: Bdf,
    /// Its driver, if bound.
    pub driver: Option<String>,
}

/// A VF of a physical function and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VfFacts {
    /// The VF.
    pub bdf: Bdf,
    /// Processes holding it through VFIO.
    pub holders: Vec<HolderInfo>,
    /// Its host uses (bound to a host driver: mounted disks, interfaces up).
    pub host_use: Vec<HostUse>,
}

/// Everything the safety checks consider about one function.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// The function as sysfs shows it.
    pub function: PciFunction,
    /// Whether a policy file was loaded at all.
    pub policy_present: bool,
    /// Whether the policy's allow-list names the function (or its PF).
    pub allowed: bool,
    /// Whether an IOMMU is on (DMA remapping, needed for VFIO).
    pub iommu_enabled: bool,
    /// The other functions of its IOMMU group.
    pub group_members: Vec<GroupMember>,
    /// Processes holding it open through VFIO.
    pub holders: Vec<HolderInfo>,
    /// For a PF: its VFs and their holders.
    pub vfs: Vec<VfFacts>,
    /// Host uses of the function (mounted block devices, interfaces that are up).
    pub host_use: Vec<HostUse>,
}

/// Reads the facts about `bdf`.
pub fn gather(
    backend: &dyn PciBackend,
    policy: Option<&Policy>,
    bdf: Bdf,
) -> Result<Facts, HalError> {
    let function = backend.function(bdf)?;
    // A VF is allowed with its PF, which may be named by its ids.
    let physfn = match function.physfn {
        Some(pf) => {
            let f = backend.function(pf)?;
            Some(crate::policy::Pf {
                bdf: pf,
                vendor: f.vendor,
                device: f.device,
            })
        }
        None => None,
    };
    let allowed = policy.is_some_and(|p| {
        p.devices.allows(&Candidate {
            bdf,
            vendor: function.vendor,
            device: function.device,
            physfn,
        })
    });
    let mut group_members = Vec::new();
    if let Some(group) = function.iommu_group {
        for member in backend.iommu_group_devices(group)? {
            if member != bdf {
                group_members.push(GroupMember {
                    bdf: member,
                    driver: backend.function(member)?.driver,
                });
            }
        }
    }
    let holders = backend.holders(&function)?;
    let mut vfs = Vec::new();
    for (_, vf) in &function.virtfns {
        let f = backend.function(*vf)?;
        vfs.push(VfFacts {
            bdf: *vf,
            holders: backend.holders(&f)?,
            host_use: backend.host_use(*vf)?,
        });
    }
    let host_use = backend.host_use(bdf)?;
    Ok(Facts {
        policy_present: policy.is_some(),
        allowed,
        iommu_enabled: backend.iommu_enabled(),
        group_members,
        holders,
        vfs,
        host_use,
        function,
    })
}
