//! The device actions vpm takes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hal::Bdf;

/// One action on one PCI function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Action {
    /// The function acted on.
    pub fn target(&self) -> Bdf {
        match *self {
            Action::SetVfs { pf, .. } => pf,
            Action::Park { bdf } | Action::Wake { bdf } => bdf,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::SetVfs { pf, count } => write!(f, "set {pf} to {count} VFs"),
            Action::Park { bdf } => write!(f, "park {bdf} (vfio-pci, D3hot)"),
            Action::Wake { bdf } => write!(f, "wake {bdf} (D0)"),
        }
    }
}
