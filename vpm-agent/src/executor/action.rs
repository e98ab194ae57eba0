//! The device actions vpm takes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hal::Bdf;

/// A VM as the journal names it: its name and its VMM process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VmRef {
    /// The VM's name.
    pub name: String,
    /// The VMM's process id.
    pub pid: u32,
}

impl fmt::Display for VmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VM {} (pid {})", self.name, self.pid)
    }
}

/// One action on one PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Set a physical function's number of SR-IOV virtual functions.
    SetVfs {
        /// The physical function.
        pf: Bdf,
        /// The VF count wanted.
        count: u32,
    },
    /// Park an idle device: bind it to vfio-pci (if it is not) and let runtime
    /// PM idle it into D3hot (`power/control=auto`).
    Park {
        /// The device.
        bdf: Bdf,
    },
    /// Wake a device to D0 before a VM opens it (`power/control=on`).
    Wake {
        /// The device.
        bdf: Bdf,
    },
    /// Hot-plug a VF into a running VM (QMP `device_add` of `vfio-pci`),
    /// waking it first.
    Attach {
        /// The VM.
        vm: VmRef,
        /// The VF.
        vf: Bdf,
    },
    /// Take a hot-plugged VF back from a VM (QMP `device_del`, complete on
    /// `DEVICE_DELETED`), and park it again.
    Detach {
        /// The VM.
        vm: VmRef,
        /// The VF.
        vf: Bdf,
    },
}

impl Action {
    /// The function acted on.
    pub fn target(&self) -> Bdf {
        match *self {
            Action::SetVfs { pf, .. } => pf,
            Action::Park { bdf } | Action::Wake { bdf } => bdf,
            Action::Attach { vf, .. } | Action::Detach { vf, .. } => vf,
        }
    }

    /// The VM a hot-plug action is for.
    pub fn vm(&self) -> Option<&VmRef> {
        match self {
            Action::Attach { vm, .. } | Action::Detach { vm, .. } => Some(vm),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SetVfs { pf, count } => write!(f, "set {pf} to {count} VFs"),
            Action::Park { bdf } => write!(f, "park {bdf} (vfio-pci, D3hot)"),
            Action::Wake { bdf } => write!(f, "wake {bdf} (D0)"),
            Action::Attach { vm, vf } => write!(f, "attach {vf} to {vm}"),
            Action::Detach { vm, vf } => write!(f, "detach {vf} from {vm}"),
        }
    }
}
