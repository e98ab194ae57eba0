//! Replay of VF demand traces through a policy against a simulated host:
//! how often the device was ready before the VM needed it, and at what cost.
//!
//! - [`demand`]: per VM, how many VFs of one PF it uses over time
//!   ([`DemandTrace`]), generated from the trace generator's shapes or derived
//!   from a long CSV.
//! - [`host`]: the simulated host ([`SimHost`]): one PF in the simulated PCI
//!   system ([`crate::hal::sim::SimPci`], the kernel's SR-IOV and runtime-PM
//!   rules), VMs that open and close its VFs, the latencies of waking and
//!   creating VFs, and the host state the scheduler plans from. Policies act
//!   only through the agent's executor.
//! - [`controller`]: the policies compared: [`Vpm`] (one forecaster per VM
//!   and [`crate::scheduler::plan`]), [`Reactive`], [`Static`].
//! - [`metrics`]: what is scored, from the timeline's events ([`Tally`]).
//! - [`replay()`]: the loop.
//!
//! `cargo xtask bench allocation` runs it (tests/src/bin/bench-allocation.rs)
//! and writes the `## allocation` section of BENCHMARKS.md.

pub mod attach;
pub mod controller;
pub mod demand;
pub mod host;
pub mod metrics;
mod run;

pub use attach::{ReactiveAttach, StaticAttach};
pub use controller::{Controller, Decision, Reactive, Spare, Static, Vpm};
pub use demand::{DemandTrace, Derive, VmDemand};
pub use host::{HostConfig, Latencies, SimHost};
pub use metrics::{Metrics, MissCause, OnsetOutcome, SlotState, Tally, VmOnsets};
pub use run::{ReplayConfig, ReplayOutcome, replay};

use crate::forecast::ForecastError;
use crate::hal::{Bdf, HalError};

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The simulated PCI system failed a read or a VM's bind.
    #[error("simulated PCI system")]
    Hal(#[source] Box<HalError>),
    /// A VM could not open a free VF (a bug of the simulation).
    #[error("VM {vm} could not open {bdf}")]
    Open {
        /// The VM.
        vm: String,
        /// The VF.
        bdf: Bdf,
        /// What the simulated kernel said.
        #[source]
        source: Box<HalError>,
    },
    /// Demand for a VM the host was not made with.
    #[error("demand for VM {vm}, which the simulated host does not run")]
    UnknownVm {
        /// The VM.
        vm: String,
    },
    /// The PF is missing or has no SR-IOV capability.
    #[error("{pf} is not an SR-IOV PF of the simulated host")]
    NotSriov {
        /// The PF.
        pf: Bdf,
    },
    /// The demand trace cannot be replayed.
    #[error("demand trace {name}: {reason}")]
    Trace {
        /// The trace (file name or label).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A forecaster refused its settings or its input.
    #[error("forecaster of VM {vm}")]
    Forecast {
        /// The VM.
        vm: String,
        /// The forecaster's error.
        #[source]
        source: ForecastError,
    },
}
