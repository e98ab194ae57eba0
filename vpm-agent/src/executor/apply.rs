//! Carrying out one action through the HAL, with the steps it takes and their timings.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::action::Action;
use super::facts::Facts;
use super::guard::VFIO_DRIVER;
use crate::hal::{HalError, PciBackend, PowerControl, PowerState};

/// Limits for [`apply`].
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Longest a single sysfs write may block (VF creation can take minutes on some drivers).
    pub write_timeout: Duration,
    /// Longest to wait for a power state after changing `power/control`.
    pub settle_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            write_timeout: crate::hal::DEFAULT_WRITE_TIMEOUT,
            settle_timeout: Duration::from_secs(10),
        }
    }
}

/// One step of an action, planned or done.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// What the step does, for people.
    pub what: String,
    /// How long it took (`None` in a dry run).
    pub elapsed_ms: Option<f64>,
}

impl Step {
    fn planned(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            elapsed_ms: None,
        }
    }
}

/// Why an allowed action failed while being carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A sysfs read or write failed.
    #[error(transparent)]
    Hal(#[from] HalError),
    /// The device did not reach the power state in time.
    #[error(
        "{bdf} did not reach {expected} within {after:?} (power_state is {seen}); \
         check power/runtime_status and power/control"
    )]
    NotReached {
        /// The device.
        bdf: crate::hal::Bdf,
        /// The state waited for.
        expected: PowerState,
        /// The state last seen.
        seen: String,
        /// How long vpm waited.
        after: Duration,
    },
    /// The hypervisor refused or did not confirm a hot-plug request.
    #[error("{message}{}", if *.outcome_unknown { " (no answer: the VF may or may not be attached; the journal records what the VFIO holders show)" } else { "" })]
    Hotplug {
        /// The action.
        action: String,
        /// What failed.
        message: String,
        /// Whether the request may have taken effect anyway.
        outcome_unknown: bool,
    },
    /// After a hot-plug change the VM's process did not (or still did) hold the VF.
    #[error(
        "pid {pid} {} {vf} through VFIO {after:?} after the hypervisor confirmed the change",
        if *.expected_held { "did not hold" } else { "still held" }
    )]
    Holder {
        /// The VF.
        vf: crate::hal::Bdf,
        /// The VM's process.
        pid: u32,
        /// Whether it was expected to hold it.
        expected_held: bool,
        /// How long vpm waited.
        after: Duration,
    },
    /// A hot-plug action reached an executor without a hypervisor connection.
    #[error("{action} needs a hypervisor connection (QMP); this executor has none")]
    NoHypervisor {
        /// The action.
        action: String,
    },
}

/// The steps `action` takes on a device in the state `facts` describe.
pub fn steps(action: &Action, facts: &Facts) -> Vec<Step> {
    let f = &facts.function;
    match *action {
        Action::SetVfs { pf, count } => {
            let current = f.sriov.as_ref().map_or(0, |s| s.num_vfs);
            let mut out = if current == count {
                vec![Step::planned(format!(
                    "{pf}: sriov_numvfs is already {count}: nothing to do"
                ))]
            } else if current != 0 && count != 0 {
                vec![
                    Step::planned(format!(
                        "{pf}: write 0 to sriov_numvfs (the kernel refuses {current} → {count} directly)"
                    )),
                    Step::planned(format!("{pf}: write {count} to sriov_numvfs")),
                ]
            } else {
                vec![Step::planned(format!(
                    "{pf}: write {count} to sriov_numvfs (now {current})"
                ))]
            };
            if count != current
                && count > 0
                && f.sriov.as_ref().is_some_and(|s| s.drivers_autoprobe)
            {
                out.insert(
                    0,
                    Step::planned(format!(
                        "{pf}: write 0 to sriov_drivers_autoprobe (new VFs stay off host \
                         drivers, for VMs through vfio-pci)"
                    )),
                );
            }
            out
        }
        Action::Park { bdf } => {
            let mut out = Vec::new();
            if f.driver.as_deref() != Some(VFIO_DRIVER) {
                out.push(Step::planned(format!(
                    "{bdf}: bind to {VFIO_DRIVER} (driver_override, unbind from {}, drivers_probe)",
                    f.driver.as_deref().unwrap_or("no driver")
                )));
            }
            out.push(Step::planned(format!(
                "{bdf}: write auto to power/control, wait for D3hot (or D3cold)"
            )));
            out
        }
        Action::Attach { .. } | Action::Detach { .. } => vec![Step::planned(format!(
            "{action}: through the VM's QMP monitor"
        ))],
        Action::Wake { bdf } => vec![Step::planned(format!(
            "{bdf}: write on to power/control, wait for D0"
        ))],
    }
}

/// Carries out `action` (already checked by the guard) and returns the steps done.
pub fn apply(
    sys: &dyn PciBackend,
    action: &Action,
    facts: &Facts,
    opts: &ApplyOptions,
) -> Result<Vec<Step>, ApplyError> {
    let mut done = Vec::new();
    let planned = steps(action, facts);
    match *action {
        Action::SetVfs { pf, count } => {
            let started = Instant::now();
            let current = facts.function.sriov.as_ref().map_or(0, |s| s.num_vfs);
            if count != current
                && count > 0
                && facts
                    .function
                    .sriov
                    .as_ref()
                    .is_some_and(|s| s.drivers_autoprobe)
            {
                sys.set_sriov_autoprobe(pf, false)?;
            }
            let change = sys.set_sriov_numvfs(pf, count, opts.write_timeout)?;
            let what = planned
                .iter()
                .map(|s| s.what.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let _ = change;
            done.push(timed(what, started));
        }
        Action::Park { bdf } => {
            if facts.function.driver.as_deref() != Some(VFIO_DRIVER) {
                let started = Instant::now();
                sys.bind_driver(bdf, VFIO_DRIVER, opts.write_timeout)?;
                done.push(timed(planned[0].what.clone(), started));
            }
            let started = Instant::now();
            sys.set_power_control(bdf, PowerControl::Auto, opts.write_timeout)?;
            let reached = wait_for(sys, bdf, PowerState::D3Hot, opts.settle_timeout)?;
            done.push(timed(
                format!("{bdf}: power/control=auto → {reached}"),
                started,
            ));
        }
        Action::Wake { bdf } => {
            let started = Instant::now();
            sys.set_power_control(bdf, PowerControl::On, opts.write_timeout)?;
            wait_for(sys, bdf, PowerState::D0, opts.settle_timeout)?;
            done.push(timed(format!("{bdf}: power/control=on → D0"), started));
        }
        Action::Attach { .. } | Action::Detach { .. } => {
            return Err(ApplyError::NoHypervisor {
                action: action.to_string(),
            });
        }
    }
    Ok(done)
}

fn timed(what: String, started: Instant) -> Step {
    Step {
        what,
        elapsed_ms: Some(started.elapsed().as_secs_f64() * 1e3),
    }
}

/// Polls `power_state` until it reads `expected`, and returns the state
/// read: D3hot is reached by D3cold too (runtime suspend picks D3cold where
/// the platform can cut the power).
pub fn wait_for(
    sys: &dyn PciBackend,
    bdf: crate::hal::Bdf,
    expected: PowerState,
    timeout: Duration,
) -> Result<PowerState, ApplyError> {
    let started = Instant::now();
    loop {
        let seen = sys.power_state(bdf)?;
        let reached = match (&expected, seen.as_ref()) {
            (PowerState::D3Hot, Some(s)) => s.is_d3(),
            (e, Some(s)) => s == e,
            (_, None) => false,
        };
        if reached && let Some(s) = seen {
            return Ok(s);
        }
        if started.elapsed() >= timeout {
            return Err(ApplyError::NotReached {
                bdf,
                expected,
                seen: seen.map_or_else(|| "absent".to_owned(), |s| s.to_string()),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
