//! The executor: carries out device actions through the [`hal`](crate::hal),
//! after the safety rules of [`guard`] (enforced here, whatever the caller asks).
//!
//! [`execute`] gathers the [`facts`] about the target, checks them, and then
//! either describes what it would do (dry run, the default everywhere) or does
//! it and reports each step's timing.

pub mod action;
pub mod apply;
pub mod facts;
pub mod guard;
pub mod hotplug;
pub mod journal;

use serde::Serialize;

pub use action::Action;
pub use action::VmRef;
pub use apply::{ApplyError, ApplyOptions, Step};
pub use facts::{Facts, Roots};
pub use guard::Refusal;
pub use hotplug::{Attachment, Hotplug, HotplugError, InVm, VmFacts};
pub use journal::{Journal, JournalError};

use crate::hal::{HalError, PciBackend};
use crate::policy::Policy;

/// What [`execute`] did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The action.
    pub action: Action,
    /// Whether it was carried out (`false`: dry run).
    pub applied: bool,
    /// The steps, planned (dry run) or done with their timings.
    pub steps: Vec<Step>,
}

/// Why [`execute`] did not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// Acting needs root.
    #[error(
        "{action} needs root: vpm writes sysfs and must see every process's open files to know who holds a device (run it with sudo, or without --apply for a dry run)"
    )]
    NotRoot {
        /// The action.
        action: Action,
    },
    /// The facts could not be read.
    #[error("reading the state of {bdf}: {source}")]
    Facts {
        /// The target.
        bdf: crate::hal::Bdf,
        /// The HAL error.
        #[source]
        source: HalError,
    },
    /// The safety rules refuse the action.
    #[error("refusing to {action}: {}", .refusals.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused {
        /// The action.
        action: Action,
        /// Every rule it breaks.
        refusals: Vec<Refusal>,
    },
    /// The journal could not record the intent: nothing was done.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The action was carried out (or failed) but its outcome could not be
    /// journaled: the next start reconciles it from the device.
    #[error("{action}: {outcome}, but its outcome could not be journaled: {source}")]
    Unjournaled {
        /// The action.
        action: Action,
        /// Whether it was carried out.
        carried_out: bool,
        /// What happened to it.
        outcome: String,
        /// Why the journal could not record it.
        #[source]
        source: Box<JournalError>,
    },
    /// Carrying it out failed.
    #[error("{action} failed: {source}")]
    Failed {
        /// The action.
        action: Action,
        /// What failed.
        #[source]
        source: ApplyError,
    },
}

/// Checks `action` against the safety rules and carries it out when `apply`
/// (else only says what it would do). With a journal, an applied action is
/// journaled before (intent) and after (read-back or failure).
pub fn execute(
    backend: &dyn PciBackend,
    policy: Option<&Policy>,
    action: Action,
    apply: bool,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Result<Report, ExecuteError> {
    check_privileges(&action, apply)?;
    execute_with(backend, None, policy, action, apply, opts, journal)
}

/// [`execute`] without the privilege check, for backends that need none (the
/// simulated PCI system of the demo and tests).
pub fn execute_on(
    backend: &dyn PciBackend,
    policy: Option<&Policy>,
    action: Action,
    apply: bool,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Result<Report, ExecuteError> {
    execute_with(backend, None, policy, action, apply, opts, journal)
}

/// [`execute_on`] with a hypervisor connection for hot-plug actions
/// (`Attach`, `Detach`); without one they fail with
/// [`ApplyError::NoHypervisor`]. No privilege check: callers acting on the
/// real host call [`check_privileges`] first.
pub fn execute_with(
    backend: &dyn PciBackend,
    hypervisor: Option<&dyn Hotplug>,
    policy: Option<&Policy>,
    action: Action,
    apply: bool,
    opts: &ApplyOptions,
    journal: Option<&mut Journal>,
) -> Result<Report, ExecuteError> {
    let bdf = action.target();
    let facts = facts::gather(backend, policy, bdf)
        .map_err(|source| ExecuteError::Facts { bdf, source })?;
    let mut refusals = guard::check(&action, &facts);
    let vm_facts = match (action.vm(), hypervisor) {
        (Some(vm), Some(hv)) => {
            let mut vm_facts = hv.vm_facts(vm);
            if matches!(action, Action::Attach { .. }) && vm_facts.monitor.is_ok() {
                vm_facts.port = hv.free_port(vm);
            }
            refusals.extend(
                hotplug::check(&action, policy, &vm_facts)
                    .into_iter()
                    .map(Refusal::Vm),
            );
            Some(vm_facts)
        }
        _ => None,
    };
    if !refusals.is_empty() {
        return Err(ExecuteError::Refused { action, refusals });
    }
    if !apply {
        let steps = match &vm_facts {
            Some(v) => hotplug::steps(&action, v),
            None => apply::steps(&action, &facts),
        };
        return Ok(Report {
            action,
            applied: false,
            steps,
        });
    }
    let run = |action: &Action| match hypervisor {
        Some(hv) if action.vm().is_some() => hotplug::apply(backend, hv, action, opts),
        _ => apply::apply(backend, action, &facts, opts),
    };
    let Some(journal) = journal else {
        if let Err(refusals) = recheck(backend, policy, &action) {
            return Err(ExecuteError::Refused { action, refusals });
        }
        return match run(&action) {
            Ok(steps) => Ok(Report {
                action,
                applied: true,
                steps,
            }),
            Err(source) => Err(ExecuteError::Failed { action, source }),
        };
    };
    let seq = journal.intent(crate::units::unix_now(), action.clone())?;
    failpoint("after-intent");
    if let Err(refusals) = recheck(backend, policy, &action) {
        let note = format!(
            "refused at the last check before acting, nothing done: {}",
            refusals
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        );
        journal.append(&journal::Entry {
            seq,
            time: crate::units::unix_now(),
            phase: journal::Phase::Failed,
            action: action.clone(),
            state: journal::DeviceState::read(backend, bdf).ok(),
            note: Some(note),
        })?;
        return Err(ExecuteError::Refused { action, refusals });
    }
    let result = run(&action);
    failpoint("after-apply");
    let state = journal::DeviceState::read(backend, bdf).ok();
    let (phase, note) = match &result {
        Ok(_) => (journal::Phase::Done, None),
        Err(e) => (
            journal::Phase::Failed,
            Some(failure_note(&action, e, state.as_ref())),
        ),
    };
    let appended = journal.append(&journal::Entry {
        seq,
        time: crate::units::unix_now(),
        phase,
        action: action.clone(),
        state,
        note,
    });
    if let Err(source) = appended {
        let outcome = match &result {
            Ok(_) => "it was carried out".to_owned(),
            Err(e) => format!("it failed ({e})"),
        };
        return Err(ExecuteError::Unjournaled {
            action,
            carried_out: result.is_ok(),
            outcome,
            source: Box::new(source),
        });
    }
    match result {
        Ok(steps) => Ok(Report {
            action,
            applied: true,
            steps,
        }),
        Err(source) => Err(ExecuteError::Failed { action, source }),
    }
}

/// The device rules checked again right before a VF-count change or a park
/// (the first check, the intent's `fsync` and the plan's other actions take
/// time, in which a process may open a VF or a device come into use).
fn recheck(
    backend: &dyn PciBackend,
    policy: Option<&Policy>,
    action: &Action,
) -> Result<(), Vec<Refusal>> {
    if !matches!(action, Action::SetVfs { .. } | Action::Park { .. }) {
        return Ok(());
    }
    let refusals = match facts::gather(backend, policy, action.target()) {
        Ok(facts) => guard::check(action, &facts),
        // Unreadable now: leave it for the next plan.
        Err(e) => vec![Refusal::Unreadable {
            bdf: action.target(),
            message: e.to_string(),
        }],
    };
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

/// The journal's note for a failed action: the error, and for a hot-plug
/// action where the VF is now (who holds it, its power state), so the
/// journal says exactly what state it was left in.
fn failure_note(action: &Action, e: &ApplyError, state: Option<&journal::DeviceState>) -> String {
    let Some(vm) = action.vm() else {
        return e.to_string();
    };
    let vf = action.target();
    let Some(state) = state else {
        return format!("{e}; {vf} could not be read back");
    };
    let held = state.holder_text(vm, vf);
    format!(
        "{e}; {held}; power_state {}, power/control {}",
        state.power_state.as_deref().unwrap_or("?"),
        state.power_control.as_deref().unwrap_or("?")
    )
}

/// Crash-test hook: `VPM_FAILPOINT=after-intent` (or `after-apply`) aborts the
/// process at that point of a journaled action, as a crash or `kill -9` would.
/// The lab's crash test uses it to prove that a restart reconciles the journal.
fn failpoint(name: &str) {
    if std::env::var_os("VPM_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("vpm: VPM_FAILPOINT={name}: aborting");
        std::process::abort();
    }
}

/// Acting (`apply`) needs root: holders in other users' processes are invisible
/// otherwise, so the safety rules could not be trusted.
pub fn check_privileges(action: &Action, apply: bool) -> Result<(), ExecuteError> {
    if apply && !effective_root() {
        return Err(ExecuteError::NotRoot {
            action: action.clone(),
        });
    }
    Ok(())
}

/// Whether the process runs as root (holders in other users' processes are
/// invisible otherwise, so the safety checks could not be trusted).
pub fn effective_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::journal::Phase;
    use super::*;
    use crate::hal::sim::{SimFault, SimOp, SimPci};
    use crate::hal::{Bdf, HolderInfo};

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn setup() -> (SimPci, Policy, ApplyOptions, Bdf) {
        let sim = SimPci::new();
        let pf = bdf("0000:01:00.0");
        sim.add_pf(pf, 4, Some("nvme"));
        let policy =
            Policy::parse("[devices]\nallow = [\"0000:01:00.0\"]\n", "t".as_ref()).unwrap();
        let opts = ApplyOptions {
            write_timeout: Duration::from_secs(1),
            settle_timeout: Duration::from_millis(50),
        };
        (sim, policy, opts, pf)
    }

    fn run(
        sim: &SimPci,
        policy: &Policy,
        opts: &ApplyOptions,
        journal: &mut Journal,
        action: Action,
    ) -> Result<Report, ExecuteError> {
        execute_on(sim, Some(policy), action, true, opts, Some(journal))
    }

    /// The simulated host, where a VMM opens `vf` once the executor has
    /// asked for holders more than `after` times (its first check done).
    struct OpensLate<'a> {
        sim: &'a SimPci,
        vf: Bdf,
        after: usize,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl crate::hal::PciBackend for OpensLate<'_> {
        fn functions(&self) -> crate::hal::Result<Vec<Bdf>> {
            self.sim.functions()
        }
        fn function(&self, bdf: Bdf) -> crate::hal::Result<crate::hal::PciFunction> {
            self.sim.function(bdf)
        }
        fn power_state(&self, bdf: Bdf) -> crate::hal::Result<Option<crate::hal::PowerState>> {
            self.sim.power_state(bdf)
        }
        fn iommu_enabled(&self) -> bool {
            self.sim.iommu_enabled()
        }
        fn iommu_group_devices(&self, group: u32) -> crate::hal::Result<Vec<Bdf>> {
            self.sim.iommu_group_devices(group)
        }
        fn holders(&self, f: &crate::hal::PciFunction) -> crate::hal::Result<Vec<HolderInfo>> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == self.after {
                self.sim
                    .open(
                        self.vf,
                        HolderInfo {
                            pid: 42,
                            comm: "qemu".into(),
                            vm: Some("late".into()),
                        },
                    )
                    .unwrap();
            }
            self.sim.holders(f)
        }
        fn host_use(&self, bdf: Bdf) -> crate::hal::Result<Vec<crate::hal::HostUse>> {
            self.sim.host_use(bdf)
        }
        fn set_sriov_numvfs(
            &self,
            pf: Bdf,
            n: u32,
            timeout: Duration,
        ) -> crate::hal::Result<crate::hal::NumVfsChange> {
            self.sim.set_sriov_numvfs(pf, n, timeout)
        }
        fn set_sriov_autoprobe(&self, pf: Bdf, on: bool) -> crate::hal::Result<()> {
            self.sim.set_sriov_autoprobe(pf, on)
        }
        fn bind_driver(&self, bdf: Bdf, driver: &str, timeout: Duration) -> crate::hal::Result<()> {
            self.sim.bind_driver(bdf, driver, timeout)
        }
        fn set_power_control(
            &self,
            bdf: Bdf,
            control: crate::hal::PowerControl,
            timeout: Duration,
        ) -> crate::hal::Result<()> {
            self.sim.set_power_control(bdf, control, timeout)
        }
    }

    #[test]
    fn vfs_are_created_off_host_drivers() {
        // The kernel binds new VFs to the host driver by default (an NVMe
        // namespace, a NIC interface up would then block parks): vpm turns
        // the PF's autoprobe off first, and says so in the plan's steps.
        let (sim, policy, opts, pf) = setup();
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let report = run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 2 },
        )
        .unwrap();
        assert!(
            report.steps[0].what.contains("sriov_drivers_autoprobe"),
            "{:?}",
            report.steps
        );
        assert_eq!(
            sim.writes(),
            vec![
                "0000:01:00.0 sriov_drivers_autoprobe=0".to_owned(),
                "0000:01:00.0 sriov_numvfs=2".to_owned()
            ]
        );
        let vf = sim.function(bdf("0000:01:00.1")).unwrap();
        assert_eq!(vf.driver, None);
        // Off already: not written again.
        run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 0 },
        )
        .unwrap();
        run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 1 },
        )
        .unwrap();
        let autoprobe_writes = sim
            .writes()
            .iter()
            .filter(|w| w.contains("autoprobe"))
            .count();
        assert_eq!(autoprobe_writes, 1);
    }

    #[test]
    fn a_park_that_reaches_d3cold_is_done() {
        // Runtime suspend picks D3cold where the platform can cut the power:
        // deeper than D3hot, still parked.
        let (sim, policy, opts, pf) = setup();
        sim.set_sriov_numvfs(pf, 1, Duration::from_secs(1)).unwrap();
        sim.suspend_to_d3cold(true);
        let vf = bdf("0000:01:00.1");
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let report = run(&sim, &policy, &opts, &mut j, Action::Park { bdf: vf }).unwrap();
        assert_eq!(
            sim.power_state(vf).unwrap(),
            Some(crate::hal::PowerState::D3Cold)
        );
        // The report says the state reached.
        let last = report.steps.last().unwrap();
        assert!(last.what.ends_with("→ D3cold"), "{last:?}");
    }

    #[test]
    fn a_vf_opened_after_the_first_check_stops_the_count_change() {
        let (sim, policy, opts, pf) = setup();
        sim.set_sriov_numvfs(pf, 2, Duration::from_secs(1)).unwrap();
        let vf = bdf("0000:01:00.1");
        sim.bind_driver(vf, "vfio-pci", Duration::from_secs(1))
            .unwrap();
        // How many holder reads one check makes.
        let counting = OpensLate {
            sim: &sim,
            vf,
            after: usize::MAX,
            calls: 0.into(),
        };
        let action = Action::SetVfs { pf, count: 0 };
        execute_on(&counting, Some(&policy), action.clone(), false, &opts, None).unwrap();
        let per_check = counting.calls.into_inner();
        assert!(per_check > 0);
        let late = OpensLate {
            sim: &sim,
            vf,
            after: per_check,
            calls: 0.into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        let err = execute_on(&late, Some(&policy), action, true, &opts, Some(&mut j)).unwrap_err();
        assert!(matches!(err, ExecuteError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("held by VM late"), "{err}");
        assert_eq!(
            sim.function(pf).unwrap().sriov.unwrap().num_vfs,
            2,
            "VFs kept"
        );
        drop(j);
        let entries = journal::read(dir.path()).unwrap();
        let last = entries.last().unwrap();
        assert_eq!(last.phase, Phase::Failed);
        assert!(
            last.note
                .as_deref()
                .is_some_and(|n| n.contains("refused at the last check before acting")),
            "{last:?}"
        );
    }

    #[test]
    fn ebusy_mid_plan_fails_that_action_only_and_is_journaled() {
        let (sim, policy, opts, pf) = setup();
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 2 },
        )
        .unwrap();
        sim.inject(SimOp::SetNumVfs, Some(pf), SimFault::Errno(libc::EBUSY));
        let err = run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 4 },
        )
        .unwrap_err();
        assert!(err.to_string().contains("EBUSY"), "{err}");
        // The plan goes on: the next action works.
        let vf = bdf("0000:01:00.1");
        run(&sim, &policy, &opts, &mut j, Action::Park { bdf: vf }).unwrap();
        drop(j);
        let entries = journal::read(dir.path()).unwrap();
        let phases: Vec<Phase> = entries.iter().map(|e| e.phase).collect();
        assert_eq!(
            phases,
            vec![
                Phase::Intent,
                Phase::Done,
                Phase::Intent,
                Phase::Failed,
                Phase::Intent,
                Phase::Done
            ]
        );
        // The failed entry says what the PF was left with: the EBUSY hit the
        // first write (0), so it kept its 2 VFs.
        assert_eq!(entries[3].state.as_ref().unwrap().num_vfs, Some(2));
        assert!(entries[3].note.as_ref().unwrap().contains("EBUSY"));
        assert!(journal::interrupted(&entries).is_empty());
    }

    #[test]
    fn vanished_device_and_timeouts_fail_cleanly() {
        let (sim, policy, opts, pf) = setup();
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 2 },
        )
        .unwrap();
        let vf = bdf("0000:01:00.1");
        sim.inject(SimOp::Bind, Some(vf), SimFault::Vanish);
        let err = run(&sim, &policy, &opts, &mut j, Action::Park { bdf: vf }).unwrap_err();
        assert!(matches!(err, ExecuteError::Failed { .. }), "{err}");
        // Gone now: the next attempt cannot even read its facts.
        assert!(matches!(
            run(&sim, &policy, &opts, &mut j, Action::Wake { bdf: vf }),
            Err(ExecuteError::Facts { .. })
        ));
        let vf2 = bdf("0000:01:00.2");
        sim.inject(SimOp::PowerControl, None, SimFault::Timeout);
        let err = run(&sim, &policy, &opts, &mut j, Action::Wake { bdf: vf2 }).unwrap_err();
        assert!(err.to_string().contains("no answer after 1s"), "{err}");
    }

    #[test]
    fn a_held_vf_is_never_destroyed_whatever_is_asked() {
        let (sim, policy, opts, pf) = setup();
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        run(
            &sim,
            &policy,
            &opts,
            &mut j,
            Action::SetVfs { pf, count: 2 },
        )
        .unwrap();
        let vf = bdf("0000:01:00.1");
        run(&sim, &policy, &opts, &mut j, Action::Park { bdf: vf }).unwrap();
        sim.open(
            vf,
            HolderInfo {
                pid: 9,
                comm: "qemu".into(),
                vm: Some("db".into()),
            },
        )
        .unwrap();
        let before = sim.writes().len();
        for action in [
            Action::SetVfs { pf, count: 0 },
            Action::SetVfs { pf, count: 4 },
            Action::Park { bdf: vf },
        ] {
            let err = run(&sim, &policy, &opts, &mut j, action.clone()).unwrap_err();
            assert!(
                matches!(err, ExecuteError::Refused { .. }),
                "{action}: {err}"
            );
        }
        assert_eq!(sim.writes().len(), before, "nothing written");
        assert_eq!(sim.function(pf).unwrap().sriov.unwrap().num_vfs, 2);
    }
}
