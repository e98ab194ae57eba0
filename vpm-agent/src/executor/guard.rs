//! The safety rules, enforced before every action (pure: facts in, refusals out).
//!
//! They hold whatever a plan or an operator asks:
//! - only devices the policy's allow-list names are touched, and nothing at all
//!   without a policy file;
//! - a PF's `sriov_numvfs` never changes while any of its VFs is open through
//!   VFIO (from a non-zero count every change passes through 0 and destroys them);
//! - a PF with VFs enabled is never parked (rebinding it destroys its VFs);
//! - a device open through VFIO, or in use by the host (a mounted block device,
//!   an interface that is up), is never parked;
//! - a device is bound to vfio-pci (parked) only with the IOMMU on and with every
//!   other function of its IOMMU group bound to vfio-pci or to no driver.

use std::fmt;

use serde::Serialize;

use super::action::Action;
use super::facts::{Facts, GroupMember, HolderInfo, HostUse};
use crate::hal::Bdf;

/// The driver vpm parks devices with and hands them to VMs through.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refusal", rename_all = "kebab-case")]
pub enum Refusal {
    /// No policy file: vpm manages nothing.
    NoPolicy,
    /// The allow-list does not name the device.
    NotAllowed {
        /// The device.
        bdf: Bdf,
    },
    /// The device has no SR-IOV capability.
    NotSriov {
        /// The device.
        bdf: Bdf,
    },
    /// More VFs than the device supports.
    TooManyVfs {
        /// The PF.
        pf: Bdf,
        /// VFs asked for.
        requested: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },
    /// VFs of the PF are open through VFIO.
    VfsHeld {
        /// The PF.
        pf: Bdf,
        /// Its current VF count.
        current: u32,
        /// The held VFs and their holders.
        held: Vec<(Bdf, Vec<HolderInfo>)>,
    },
    /// The PF has VFs enabled; parking would unbind its driver and destroy them.
    VfsEnabled {
        /// The PF.
        pf: Bdf,
        /// Its current VF count.
        current: u32,
    },
    /// The device is open through VFIO.
    Held {
        /// The device.
        bdf: Bdf,
        /// Who holds it.
        holders: Vec<HolderInfo>,
    },
    /// The host uses the device.
    HostInUse {
        /// The device.
        bdf: Bdf,
        /// How.
        uses: Vec<HostUse>,
    },
    /// No IOMMU: VFIO cannot isolate the device.
    IommuOff,
    /// The device has no IOMMU group.
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
    },
    /// A VF to hand to a VM is not bound to vfio-pci.
    NotVfioBound {
        /// The device.
        bdf: Bdf,
        /// Its driver.
        driver: Option<String>,
    },
    /// What would be handed to a VM is not an SR-IOV VF.
    NotAVf {
        /// The function.
        bdf: Bdf,
    },
    /// A VF to hand to a VM is already open through VFIO.
    InUse {
        /// The device.
        bdf: Bdf,
        /// Who holds it.
        holders: Vec<HolderInfo>,
    },
    /// A VM-level hot-plug rule.
    Vm(super::hotplug::VmRefusal),
    /// Another function of the group is bound to a host driver.
    GroupUnsafe {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// The functions bound to host drivers.
        members: Vec<GroupMember>,
    },
    /// VFs of the PF are in use by the host itself (bound to a host driver).
    VfsInHostUse {
        /// The PF.
        pf: Bdf,
        /// Its current VF count.
        current: u32,
        /// The VFs in use, and how.
        used: Vec<(Bdf, Vec<HostUse>)>,
    },
    /// The device could not be read again right before acting.
    Unreadable {
        /// The device.
        bdf: Bdf,
        /// Why.
        message: String,
    },
}

fn host_uses_text(uses: &[HostUse]) -> String {
    uses.iter()
        .map(|u| match u {
            HostUse::Mounted { block, mountpoint } => {
                format!("{block} is mounted on {mountpoint}")
            }
            HostUse::Swap { block } => format!("{block} is a swap area"),
            HostUse::Stacked { block, holder } => {
                format!("{holder} is built on {block} (LVM, md or dm)")
            }
            HostUse::NetUp { ifname } => format!("interface {ifname} is up"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn holders_text(holders: &[HolderInfo]) -> String {
    holders
        .iter()
        .map(|h| match &h.vm {
            Some(vm) => format!("VM {vm} (pid {} {})", h.pid, h.comm),
            None => format!("pid {} ({})", h.pid, h.comm),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoPolicy => write!(
                f,
                "no policy file: vpm manages no device; list the devices it may act on under \
                 [devices] allow in the policy file (see `vpm devices` for addresses)"
            ),
            Refusal::NotAllowed { bdf } => write!(
                f,
                "{bdf} is not in the policy's [devices] allow list; add \"{bdf}\" there to let vpm manage it"
            ),
            Refusal::NotSriov { bdf } => {
                write!(f, "{bdf} has no SR-IOV capability (no sriov_totalvfs)")
            }
            Refusal::TooManyVfs {
                pf,
                requested,
                total,
            } => {
                write!(f, "{pf} supports at most {total} VFs; {requested} asked")
            }
            Refusal::VfsHeld { pf, current, held } => {
                write!(f, "{pf}: sriov_numvfs is {current} and ")?;
                let list: Vec<String> = held
                    .iter()
                    .map(|(vf, h)| format!("{vf} is held by {}", holders_text(h)))
                    .collect();
                write!(
                    f,
                    "{}; refusing to change the VF count (every change passes through 0 and \
                     would destroy them): detach the VFs from their VMs first",
                    list.join("; ")
                )
            }
            Refusal::VfsEnabled { pf, current } => write!(
                f,
                "{pf} has {current} VFs enabled; parking rebinds its driver and would destroy \
                 them: set its VFs to 0 first"
            ),
            Refusal::Held { bdf, holders } => write!(
                f,
                "{bdf} is open through VFIO by {}; refusing to park a device in use",
                holders_text(holders)
            ),
            Refusal::HostInUse { bdf, uses } => write!(
                f,
                "{bdf} is in use by the host ({}); stop that use first (unmount, swapoff, \
                 remove the volume or array built on it, take the interface down)",
                host_uses_text(uses)
            ),
            Refusal::VfsInHostUse { pf, current, used } => {
                let list: Vec<String> = used
                    .iter()
                    .map(|(vf, u)| format!("{vf}: {}", host_uses_text(u)))
                    .collect();
                write!(
                    f,
                    "{pf}: sriov_numvfs is {current} and the host uses its VFs ({}); refusing \
                     to change the VF count (every change passes through 0 and would destroy \
                     them): stop those uses first",
                    list.join("; ")
                )
            }
            Refusal::NotVfioBound { bdf, driver } => write!(
                f,
                "{bdf} is bound to {}, not {VFIO_DRIVER}; park it first (`vpm pci park {bdf} --apply` binds it to {VFIO_DRIVER})",
                driver.as_deref().unwrap_or("no driver")
            ),
            Refusal::InUse { bdf, holders } => write!(
                f,
                "{bdf} is already open through VFIO by {}; a VF goes to one VM at a time",
                holders_text(holders)
            ),
            Refusal::Vm(r) => write!(f, "{r}"),
            Refusal::IommuOff => write!(
                f,
                "no IOMMU is enabled, so VFIO cannot isolate devices: enable VT-d/AMD-Vi in \
                 the firmware and boot with intel_iommu=on (or amd_iommu=on)"
            ),
            Refusal::NoIommuGroup { bdf } => {
                write!(f, "{bdf} has no IOMMU group; VFIO cannot take it")
            }
            Refusal::NotAVf { bdf } => write!(
                f,
                "{bdf} is not an SR-IOV VF (it has no physfn); vpm hands only VFs to VMs"
            ),
            Refusal::Unreadable { bdf, message } => write!(
                f,
                "{bdf} could not be read again right before acting ({message}); nothing done, \
                 the next plan sees it afresh"
            ),
            Refusal::GroupUnsafe {
                bdf,
                group,
                members,
            } => {
                let list: Vec<String> = members
                    .iter()
                    .map(|m| format!("{} ({})", m.bdf, m.driver.as_deref().unwrap_or("no driver")))
                    .collect();
                write!(
                    f,
                    "{bdf} shares IOMMU group {group} with {}, bound to a host driver; every \
                     function of the group must be bound to {VFIO_DRIVER} or to none",
                    list.join(", ")
                )
            }
        }
    }
}

/// Every rule `action` breaks, given the facts about its target (empty: allowed).
pub fn check(action: &Action, facts: &Facts) -> Vec<Refusal> {
    let mut out = Vec::new();
    let bdf = facts.function.bdf;
    if !facts.policy_present {
        out.push(Refusal::NoPolicy);
    } else if !facts.allowed {
        out.push(Refusal::NotAllowed { bdf });
    }
    match action {
        &Action::SetVfs { count, .. } => match &facts.function.sriov {
            None => out.push(Refusal::NotSriov { bdf }),
            Some(sriov) => {
                if count > sriov.total_vfs {
                    out.push(Refusal::TooManyVfs {
                        pf: bdf,
                        requested: count,
                        total: sriov.total_vfs,
                    });
                }
                // Only a change destroys VFs (setting the same count is a
                // no-op).
                if count != sriov.num_vfs {
                    let held: Vec<(Bdf, Vec<HolderInfo>)> = facts
                        .vfs
                        .iter()
                        .filter(|vf| !vf.holders.is_empty())
                        .map(|vf| (vf.bdf, vf.holders.clone()))
                        .collect();
                    if !held.is_empty() {
                        out.push(Refusal::VfsHeld {
                            pf: bdf,
                            current: sriov.num_vfs,
                            held,
                        });
                    }
                    let used: Vec<(Bdf, Vec<HostUse>)> = facts
                        .vfs
                        .iter()
                        .filter(|vf| !vf.host_use.is_empty())
                        .map(|vf| (vf.bdf, vf.host_use.clone()))
                        .collect();
                    if !used.is_empty() {
                        out.push(Refusal::VfsInHostUse {
                            pf: bdf,
                            current: sriov.num_vfs,
                            used,
                        });
                    }
                }
            }
        },
        Action::Park { .. } => {
            if let Some(sriov) = &facts.function.sriov
                && sriov.num_vfs > 0
            {
                out.push(Refusal::VfsEnabled {
                    pf: bdf,
                    current: sriov.num_vfs,
                });
            }
            if !facts.holders.is_empty() {
                out.push(Refusal::Held {
                    bdf,
                    holders: facts.holders.clone(),
                });
            }
            out.extend(vfio_ready(facts));
        }
        Action::Wake { .. } => {}
        Action::Attach { .. } => {
            if facts.function.physfn.is_none() {
                out.push(Refusal::NotAVf { bdf });
            }
            if facts.function.driver.as_deref() != Some(VFIO_DRIVER) {
                out.push(Refusal::NotVfioBound {
                    bdf,
                    driver: facts.function.driver.clone(),
                });
            }
            if !facts.holders.is_empty() {
                out.push(Refusal::InUse {
                    bdf,
                    holders: facts.holders.clone(),
                });
            }
            out.extend(vfio_ready(facts));
        }
        // Taking a VF back is the hypervisor's hot-unplug; the VM-level
        // rules (class, attachment) are in `hotplug::check`.
        Action::Detach { .. } => {}
    }
    out
}

/// The rules for binding a device to vfio-pci (parking it, handing it to a VM).
pub fn vfio_ready(facts: &Facts) -> Vec<Refusal> {
    let mut out = Vec::new();
    let bdf = facts.function.bdf;
    if !facts.host_use.is_empty() {
        out.push(Refusal::HostInUse {
            bdf,
            uses: facts.host_use.clone(),
        });
    }
    if !facts.iommu_enabled {
        out.push(Refusal::IommuOff);
    }
    match facts.function.iommu_group {
        None => out.push(Refusal::NoIommuGroup { bdf }),
        Some(group) => {
            let members: Vec<GroupMember> = facts
                .group_members
                .iter()
                .filter(|m| m.driver.as_deref().is_some_and(|d| d != VFIO_DRIVER))
                .cloned()
                .collect();
            if !members.is_empty() {
                out.push(Refusal::GroupUnsafe {
                    bdf,
                    group,
                    members,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::facts::{self, Roots};
    use crate::hal::testtree::Tree;
    use crate::policy::Policy;

    struct Lab {
        tree: Tree,
        roots: Roots,
        pf: Bdf,
        vf: Bdf,
    }

    /// A PF with 2 VFs (each alone in an IOMMU group), no process holding anything.
    fn lab() -> Lab {
        let tree = Tree::new();
        let pf = tree.add("0000:01:00.0");
        let vf = tree.add("0000:01:00.1");
        let vf2 = tree.add("0000:01:00.2");
        tree.sriov(pf, 4, 2);
        tree.bind(pf, "nvme");
        tree.link_to_device(pf, "virtfn0", vf);
        tree.link_to_device(pf, "virtfn1", vf2);
        tree.link_to_device(vf, "physfn", pf);
        tree.link_to_device(vf2, "physfn", pf);
        tree.iommu_group(pf, 1);
        tree.iommu_group(vf, 2);
        tree.iommu_group(vf2, 3);
        let proc = tree.dir.path().join("proc");
        std::fs::create_dir_all(proc.join("self")).unwrap();
        std::fs::write(proc.join("self/mountinfo"), "").unwrap();
        std::fs::create_dir_all(tree.dir.path().join("class/iommu/dmar0")).unwrap();
        let roots = Roots {
            sys: tree.sysfs.clone(),
            proc,
            dev: tree.dir.path().join("dev"),
        };
        Lab {
            tree,
            roots,
            pf,
            vf,
        }
    }

    fn allow(entries: &str) -> Policy {
        Policy::parse(
            &format!("[devices]\nallow = [{entries}]\n"),
            std::path::Path::new("t"),
        )
        .unwrap()
    }

    fn me() -> HolderInfo {
        HolderInfo {
            pid: 4242,
            comm: "qemu-system-x86".into(),
            vm: Some("web-1".into()),
        }
    }

    #[test]
    fn allowed_actions_pass_on_a_clean_device() {
        let l = lab();
        let p = allow("\"0000:01:00.0\"");
        for action in [
            Action::SetVfs { pf: l.pf, count: 4 },
            Action::SetVfs { pf: l.pf, count: 0 },
        ] {
            let f = facts::gather(&l.roots, Some(&p), l.pf).unwrap();
            assert_eq!(check(&action, &f), vec![], "{action}");
        }
        let f = facts::gather(&l.roots, Some(&p), l.vf).unwrap();
        assert!(f.allowed, "a VF of an allowed PF is allowed");
        assert_eq!(check(&Action::Park { bdf: l.vf }, &f), vec![]);
        assert_eq!(check(&Action::Wake { bdf: l.vf }, &f), vec![]);
    }

    #[test]
    fn policy_gates_everything() {
        let l = lab();
        let f = facts::gather(&l.roots, None, l.vf).unwrap();
        assert_eq!(
            check(&Action::Wake { bdf: l.vf }, &f),
            vec![Refusal::NoPolicy]
        );
        let f = facts::gather(&l.roots, Some(&allow("\"0000:02:00.0\"")), l.vf).unwrap();
        assert_eq!(
            check(&Action::Wake { bdf: l.vf }, &f),
            vec![Refusal::NotAllowed { bdf: l.vf }]
        );
        let f = facts::gather(&l.roots, Some(&allow("\"1b36:0010\"")), l.vf).unwrap();
        assert_eq!(check(&Action::Wake { bdf: l.vf }, &f), vec![]);
    }

    #[test]
    fn held_vfs_freeze_the_vf_count_but_not_a_no_op() {
        let l = lab();
        let p = allow("\"0000:01:00.0\"");
        let mut f = facts::gather(&l.roots, Some(&p), l.pf).unwrap();
        f.vfs[0].holders.push(me());
        for count in [0, 1, 4] {
            let r = check(&Action::SetVfs { pf: l.pf, count }, &f);
            assert!(
                matches!(&r[..], [Refusal::VfsHeld { current: 2, held, .. }] if held[0].0 == l.vf),
                "{r:?}"
            );
            let text = r[0].to_string();
            assert!(
                text.contains("0000:01:00.1 is held by VM web-1 (pid 4242"),
                "{text}"
            );
        }
        assert_eq!(check(&Action::SetVfs { pf: l.pf, count: 2 }, &f), vec![]);
        let r = check(&Action::SetVfs { pf: l.pf, count: 5 }, &f);
        assert!(
            r.iter().any(|r| matches!(
                r,
                Refusal::TooManyVfs {
                    requested: 5,
                    total: 4,
                    ..
                }
            )),
            "{r:?}"
        );
    }

    #[test]
    fn only_a_vf_bound_to_vfio_pci_is_handed_to_a_vm() {
        let l = lab();
        let p = allow("\"0000:01:00.0\"");
        let vm = crate::executor::VmRef {
            name: "vm-a".into(),
            pid: 7,
        };
        l.tree.bind(l.vf, VFIO_DRIVER);
        let f = facts::gather(&l.roots, Some(&p), l.vf).unwrap();
        let attach = |vf| Action::Attach { vm: vm.clone(), vf };
        assert_eq!(check(&attach(l.vf), &f), vec![]);
        // The PF itself is no VF (and bound to its own driver).
        let f = facts::gather(&l.roots, Some(&p), l.pf).unwrap();
        let r = check(&attach(l.pf), &f);
        assert!(
            r.iter().any(|r| matches!(r, Refusal::NotAVf { .. })),
            "{r:?}"
        );
        assert!(
            r.iter().any(|r| matches!(r, Refusal::NotVfioBound { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn vfs_the_host_uses_freeze_the_vf_count() {
        let l = lab();
        let p = allow("\"0000:01:00.0\"");
        let mut f = facts::gather(&l.roots, Some(&p), l.pf).unwrap();
        f.vfs[0].host_use.push(facts::HostUse::NetUp {
            ifname: "enp1s0v0".into(),
        });
        let r = check(&Action::SetVfs { pf: l.pf, count: 0 }, &f);
        assert!(
            matches!(&r[..], [Refusal::VfsInHostUse { current: 2, used, .. }] if used[0].0 == l.vf),
            "{r:?}"
        );
        let text = r[0].to_string();
        assert!(
            text.contains("0000:01:00.1: interface enp1s0v0 is up"),
            "{text}"
        );
        assert_eq!(check(&Action::SetVfs { pf: l.pf, count: 2 }, &f), vec![]);
    }

    #[test]
    fn parking_refuses_open_used_or_unsafe_devices() {
        let l = lab();
        let p = allow("\"0000:01:00.0\"");
        let base = facts::gather(&l.roots, Some(&p), l.vf).unwrap();

        let mut f = base.clone();
        f.holders.push(me());
        assert!(matches!(
            &check(&Action::Park { bdf: l.vf }, &f)[..],
            [Refusal::Held { .. }]
        ));

        let mut f = base.clone();
        f.host_use.push(facts::HostUse::NetUp {
            ifname: "eth0".into(),
        });
        assert!(matches!(
            &check(&Action::Park { bdf: l.vf }, &f)[..],
            [Refusal::HostInUse { .. }]
        ));

        let mut f = base.clone();
        f.iommu_enabled = false;
        assert_eq!(
            check(&Action::Park { bdf: l.vf }, &f),
            vec![Refusal::IommuOff]
        );

        let mut f = base.clone();
        f.group_members.push(GroupMember {
            bdf: l.pf,
            driver: Some("nvme".into()),
        });
        f.group_members.push(GroupMember {
            bdf: "0000:01:00.3".parse().unwrap(),
            driver: None,
        });
        f.group_members.push(GroupMember {
            bdf: "0000:01:00.4".parse().unwrap(),
            driver: Some(VFIO_DRIVER.into()),
        });
        let r = check(&Action::Park { bdf: l.vf }, &f);
        assert!(
            matches!(&r[..], [Refusal::GroupUnsafe { members, .. }] if members.len() == 1 && members[0].bdf == l.pf),
            "{r:?}"
        );

        let mut f = base;
        f.function.iommu_group = None;
        assert_eq!(
            check(&Action::Park { bdf: l.vf }, &f),
            vec![Refusal::NoIommuGroup { bdf: l.vf }]
        );

        // A PF with VFs enabled is never parked (rebinding it destroys them).
        let f = facts::gather(&l.roots, Some(&p), l.pf).unwrap();
        let r = check(&Action::Park { bdf: l.pf }, &f);
        assert!(
            r.contains(&Refusal::VfsEnabled {
                pf: l.pf,
                current: 2
            }),
            "{r:?}"
        );
        drop(l.tree);
    }
}
