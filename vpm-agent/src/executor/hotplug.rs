//! Hot-plug actions (`Attach`, `Detach`): the hypervisor side behind a trait,
//! the VM-level safety rules (pure), and the steps around the hypervisor call.
//!
//! The device side (VF bound to vfio-pci, IOMMU group safe, not open by
//! anyone) is checked by [`guard`](super::guard) like every other action; the
//! rules here are about the VM: libvirt-managed VMs are left alone, the VM
//! needs a reachable QMP monitor, its class must opt in (`hotplug`), it may
//! hold at most `max_attached` hot-plugged VFs, and a class with
//! `detach = false` never has a VF taken back.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::action::{Action, VmRef};
use super::apply::{ApplyError, ApplyOptions, Step, wait_for};
use crate::hal::{Bdf, PciBackend, PowerControl, PowerState};
use crate::policy::Policy;

/// The qdev ids vpm gives the devices it plugs start with this.
pub const DEVICE_ID_PREFIX: &str = "vpm-";

/// A VF hot-plugged into a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// The device's qdev id in the VM.
    pub id: String,
    /// The host function.
    pub vf: Bdf,
    /// The port it sits on, when the VM's PCI topology shows it.
    pub port: Option<String>,
}

impl Attachment {
    /// Whether vpm plugged it (its qdev id is one vpm gives).
    pub fn by_vpm(&self) -> bool {
        self.id.starts_with(DEVICE_ID_PREFIX)
    }
}

/// What the hot-plug rules consider about a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmFacts {
    /// The VM.
    pub vm: VmRef,
    /// libvirt manages it (its monitor is libvirt's).
    pub libvirt: bool,
    /// Its QMP monitor socket, or why there is none vpm can use.
    pub monitor: Result<String, String>,
    /// Its hot-plugged VFIO devices (when the monitor answered).
    pub attached: Vec<Attachment>,
    /// For an attach: the port it would use (`Ok`), or why there is none
    /// (`Err`, naming the ports); `None` when not asked
    /// ([`Hotplug::free_port`]).
    pub port: Option<Result<String, String>>,
}

/// What a VM's hypervisor says of one VF: read when an attach or detach a
/// restart interrupted is reconciled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InVm {
    /// The qdev id under which the VM's monitor lists the VF (QOM), if it
    /// does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The port it sits on, when the topology shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Whether QEMU's PCI bus lists that device (QMP `query-pci`): it is
    /// realized, whether or not the guest has scanned it yet.
    pub on_bus: bool,
}

impl InVm {
    /// What the monitor's listing `a` of the VF (if any) says, with whether
    /// QEMU's PCI bus lists the device.
    pub fn listed(a: Option<Attachment>, on_bus: bool) -> Self {
        match a {
            Some(a) => Self {
                device: Some(a.id),
                port: a.port,
                on_bus,
            },
            None => Self {
                device: None,
                port: None,
                on_bus: false,
            },
        }
    }
}

/// The hypervisor side of hot-plug: QMP for real VMs
/// ([`connect::QmpHotplug`](crate::connect::QmpHotplug)), a simulation for
/// the demo and replays.
pub trait Hotplug {
    /// The facts about `vm` ([`VmFacts::monitor`] is `Err` when it cannot
    /// be asked).
    fn vm_facts(&self, vm: &VmRef) -> VmFacts;
    /// Plugs `vf` into `vm` onto a free allowed port; returns the attachment
    /// once the hypervisor confirms it.
    fn attach(&self, vm: &VmRef, vf: Bdf) -> Result<Attachment, HotplugError>;
    /// Unplugs `vf` from `vm`; returns once the hypervisor confirms it is
    /// gone (QMP: `DEVICE_DELETED`).
    fn detach(&self, vm: &VmRef, vf: Bdf) -> Result<(), HotplugError>;
    /// The port an attach to `vm` would use now (`Ok`), or why there is
    /// none (`Err`, naming the ports), so a dry run can say it and a
    /// refusal comes before anything is woken. `None` when this hypervisor
    /// has no ports to ask about (the simulations) or could not be asked.
    fn free_port(&self, _vm: &VmRef) -> Option<Result<String, String>> {
        None
    }
    /// What `vm`'s hypervisor says of `vf` now; `Err` says why it could
    /// not be asked. By default from [`vm_facts`](Self::vm_facts), taking
    /// a listed device as on the bus; this relies on `vm_facts` returning
    /// `Ok` monitors only with their attachments read, so an implementation
    /// that reports a monitor it did not ask (as [`QmpHotplug`] does for
    /// libvirt's) overrides it.
    ///
    /// [`QmpHotplug`]: crate::connect::QmpHotplug
    fn in_vm(&self, vm: &VmRef, vf: Bdf) -> Result<InVm, String> {
        let facts = self.vm_facts(vm);
        facts.monitor?;
        let a = facts.attached.into_iter().find(|a| a.vf == vf);
        Ok(InVm::listed(a, true))
    }
}

/// A hypervisor-side failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HotplugError {
    /// What failed, naming the monitor.
    pub message: String,
    /// Whether the request may have taken effect anyway (no answer came).
    pub outcome_unknown: bool,
}

/// A rule a hot-plug action breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "refusal", rename_all = "kebab-case")]
pub enum VmRefusal {
    /// libvirt owns the VM's monitor.
    Libvirt {
        /// The VM.
        vm: VmRef,
    },
    /// No usable QMP monitor.
    NoMonitor {
        /// The VM.
        vm: VmRef,
        /// Why.
        why: String,
    },
    /// The VM's class does not opt in to hot-plug.
    NotOptedIn {
        /// The VM.
        vm: VmRef,
        /// Its class.
        class: String,
    },
    /// The VM holds as many VFs vpm plugged as its class allows.
    AtLimit {
        /// The VM.
        vm: VmRef,
        /// Its class.
        class: String,
        /// `max_attached`.
        max: u32,
        /// VFs vpm plugged into it.
        has: u32,
    },
    /// The VF was not plugged by vpm (the VM's command line, another tool):
    /// vpm takes back only what it attached.
    NotVpms {
        /// The VM.
        vm: VmRef,
        /// The VF.
        vf: Bdf,
        /// Its qdev id in the VM.
        id: String,
    },
    /// The VM's class never gives a VF back.
    NoDetach {
        /// The VM.
        vm: VmRef,
        /// Its class.
        class: String,
    },
    /// The VM has no free hot-plug port vpm may use.
    NoFreePort {
        /// The VM.
        vm: VmRef,
        /// Why, naming the VM and its ports as the hypervisor listed them.
        why: String,
    },
    /// The VF is already hot-plugged into the VM.
    AlreadyAttached {
        /// The VM.
        vm: VmRef,
        /// The VF.
        vf: Bdf,
    },
    /// The VF is not hot-plugged into the VM.
    NotAttached {
        /// The VM.
        vm: VmRef,
        /// The VF.
        vf: Bdf,
    },
}

impl fmt::Display for VmRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmRefusal::Libvirt { vm } => write!(
                f,
                "{vm} is managed by libvirt, which owns its monitor (a second QMP client \
                 would corrupt libvirt's view of the VM); use `virsh attach-device` / \
                 `virsh detach-device` for it"
            ),
            VmRefusal::NoMonitor { vm, why } => {
                write!(f, "{vm} has no QMP monitor vpm can use: {why}")
            }
            VmRefusal::NotOptedIn { vm, class } => write!(
                f,
                "{vm} is in class \"{class}\", which does not take hot-plugged devices; \
                 set hotplug = true in [classes.{class}] to allow it"
            ),
            VmRefusal::AtLimit {
                vm,
                class,
                max,
                has,
            } => write!(
                f,
                "{vm} already holds {has} VF(s) vpm hot-plugged; class \"{class}\" allows \
                 {max} (max_attached)"
            ),
            VmRefusal::NotVpms { vm, vf, id } => write!(
                f,
                "{vf} is in {vm} as device {id:?}, which vpm did not plug (its command line \
                 or another tool did); vpm takes back only the VFs it attached"
            ),
            VmRefusal::NoDetach { vm, class } => write!(
                f,
                "{vm} is in class \"{class}\", whose devices vpm never takes back \
                 (detach = false)"
            ),
            VmRefusal::NoFreePort { why, .. } => f.write_str(why),
            VmRefusal::AlreadyAttached { vm, vf } => {
                write!(f, "{vf} is already attached to {vm}")
            }
            VmRefusal::NotAttached { vm, vf } => {
                write!(f, "{vf} is not hot-plugged into {vm} (see `vpm vm list`)")
            }
        }
    }
}

/// Every VM-level rule `action` breaks (empty for non-hot-plug actions).
pub fn check(action: &Action, policy: Option<&Policy>, vm: &VmFacts) -> Vec<VmRefusal> {
    let mut out = Vec::new();
    let (attach, vf) = match action {
        Action::Attach { vf, .. } => (true, *vf),
        Action::Detach { vf, .. } => (false, *vf),
        _ => return out,
    };
    let who = vm.vm.clone();
    if vm.libvirt {
        out.push(VmRefusal::Libvirt { vm: who });
        return out;
    }
    if let Err(why) = &vm.monitor {
        out.push(VmRefusal::NoMonitor {
            vm: who,
            why: why.clone(),
        });
        return out;
    }
    let default = Policy::default();
    let class = policy.unwrap_or(&default).class_of(&vm.vm.name);
    let found = vm.attached.iter().find(|a| a.vf == vf);
    if attach {
        if !class.class.hotplug {
            out.push(VmRefusal::NotOptedIn {
                vm: who.clone(),
                class: class.name.to_owned(),
            });
        }
        // `max_attached` bounds what vpm plugs, not what the VM was started with.
        let by_vpm = vm.attached.iter().filter(|a| a.by_vpm()).count();
        // (A VF already in the VM needs no port: that refusal says it.)
        if let Some(Err(why)) = &vm.port
            && found.is_none()
        {
            out.push(VmRefusal::NoFreePort {
                vm: who.clone(),
                why: why.clone(),
            });
        }
        if found.is_some() {
            out.push(VmRefusal::AlreadyAttached { vm: who, vf });
        } else if by_vpm >= class.class.max_attached as usize {
            out.push(VmRefusal::AtLimit {
                vm: who,
                class: class.name.to_owned(),
                max: class.class.max_attached,
                has: u32::try_from(by_vpm).unwrap_or(u32::MAX),
            });
        }
    } else {
        if !class.class.detach {
            out.push(VmRefusal::NoDetach {
                vm: who.clone(),
                class: class.name.to_owned(),
            });
        }
        match found {
            None => out.push(VmRefusal::NotAttached { vm: who, vf }),
            Some(a) if !a.by_vpm() => out.push(VmRefusal::NotVpms {
                vm: who,
                vf,
                id: a.id.clone(),
            }),
            Some(_) => {}
        }
    }
    out
}

/// The steps of a hot-plug action, for a dry run.
pub fn steps(action: &Action, vm: &VmFacts) -> Vec<Step> {
    let monitor = vm.monitor.as_deref().unwrap_or("?");
    let planned = |what: String| Step {
        what,
        elapsed_ms: None,
    };
    match action {
        Action::Attach { vm: who, vf } => vec![
            planned(format!("{vf}: power/control=on → D0")),
            planned(match &vm.port {
                Some(Ok(port)) => {
                    format!("QMP {monitor}: device_add vfio-pci host={vf} onto port {port}")
                }
                _ => format!(
                    "QMP {monitor}: device_add vfio-pci host={vf} onto a free hot-plug port"
                ),
            }),
            planned(format!(
                "check that pid {} holds {vf} through VFIO",
                who.pid
            )),
        ],
        Action::Detach { vm: who, vf } => vec![
            planned(format!(
                "QMP {monitor}: device_del of {vf}, then wait for DEVICE_DELETED"
            )),
            planned(format!("check that pid {} no longer holds {vf}", who.pid)),
            planned(format!("{vf}: power/control=auto → D3hot (or D3cold)")),
        ],
        _ => Vec::new(),
    }
}

/// Carries out a hot-plug action that passed every rule.
pub fn apply(
    sys: &dyn PciBackend,
    hv: &dyn Hotplug,
    action: &Action,
    opts: &ApplyOptions,
) -> Result<Vec<Step>, ApplyError> {
    let mut done = Vec::new();
    match action {
        Action::Attach { vm, vf } => {
            let started = Instant::now();
            sys.set_power_control(*vf, PowerControl::On, opts.write_timeout)?;
            wait_for(sys, *vf, PowerState::D0, opts.settle_timeout)?;
            done.push(timed(format!("{vf}: power/control=on → D0"), started));
            let started = Instant::now();
            let plugged = match hv.attach(vm, *vf) {
                Ok(a) => a,
                Err(e) => {
                    // Refused outright: nothing was plugged; park the VF again.
                    // No answer: leave it awake, the journal says it is unknown.
                    if e.outcome_unknown {
                        // No answer: ask again on a fresh session. Plugged:
                        // wait until the VM's process holds the VF; monitor
                        // gone (the VM died): until its exit releases it.
                        // Either way the journal's read-back then shows
                        // where the VF really is.
                        let facts = hv.vm_facts(vm);
                        let plugged =
                            facts.monitor.is_ok() && facts.attached.iter().any(|a| a.vf == *vf);
                        let _ = wait_holder(
                            sys,
                            *vf,
                            vm.pid,
                            plugged,
                            opts.settle_timeout.min(Duration::from_secs(2)),
                        );
                    } else {
                        let _ = sys.set_power_control(*vf, PowerControl::Auto, opts.write_timeout);
                    }
                    return Err(ApplyError::Hotplug {
                        action: action.to_string(),
                        message: e.message,
                        outcome_unknown: e.outcome_unknown,
                    });
                }
            };
            done.push(timed(
                format!(
                    "device_add vfio-pci host={vf} id={} bus={}",
                    plugged.id,
                    plugged.port.as_deref().unwrap_or("?")
                ),
                started,
            ));
            let started = Instant::now();
            wait_holder(sys, *vf, vm.pid, true, opts.settle_timeout)?;
            done.push(timed(
                format!("pid {} holds {vf} through VFIO", vm.pid),
                started,
            ));
        }
        Action::Detach { vm, vf } => {
            let started = Instant::now();
            hv.detach(vm, *vf).map_err(|e| ApplyError::Hotplug {
                action: action.to_string(),
                message: e.message,
                outcome_unknown: e.outcome_unknown,
            })?;
            done.push(timed(
                format!("device_del {vf}: DEVICE_DELETED received"),
                started,
            ));
            let started = Instant::now();
            wait_holder(sys, *vf, vm.pid, false, opts.settle_timeout)?;
            done.push(timed(format!("pid {} closed {vf}", vm.pid), started));
            let started = Instant::now();
            sys.set_power_control(*vf, PowerControl::Auto, opts.write_timeout)?;
            let reached = wait_for(sys, *vf, PowerState::D3Hot, opts.settle_timeout)?;
            done.push(timed(
                format!("{vf}: power/control=auto → {reached}"),
                started,
            ));
        }
        _ => {}
    }
    Ok(done)
}

/// Polls the VF's VFIO holders until `pid` holds it (`held`) or not.
fn wait_holder(
    sys: &dyn PciBackend,
    vf: Bdf,
    pid: u32,
    held: bool,
    timeout: Duration,
) -> Result<(), ApplyError> {
    let started = Instant::now();
    loop {
        let f = sys.function(vf)?;
        let holds = sys.holders(&f)?.iter().any(|h| h.pid == pid);
        if holds == held {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(ApplyError::Holder {
                vf,
                pid,
                expected_held: held,
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn timed(what: String, started: Instant) -> Step {
    Step {
        what,
        elapsed_ms: Some(started.elapsed().as_secs_f64() * 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    fn facts(attached: Vec<Attachment>, port: Option<Result<String, String>>) -> VmFacts {
        VmFacts {
            vm: VmRef {
                name: "web-1".into(),
                pid: 42,
            },
            libvirt: false,
            monitor: Ok("/run/web-1.qmp".into()),
            attached,
            port,
        }
    }

    const NO_PORT: &str = "VM web-1 has no free hot-plug port (ports: rp1 in use)";

    /// Attaching `vf` to web-1 (pid 42).
    fn attach_of(vf: Bdf) -> Action {
        Action::Attach {
            vm: VmRef {
                name: "web-1".into(),
                pid: 42,
            },
            vf,
        }
    }

    fn policy() -> Policy {
        Policy::parse(
            "[devices]\nallow = [\"0000:01:00.0\"]\n[classes.hp]\nhotplug = true\n\
             [vms]\ndefault = \"hp\"\n",
            "t".as_ref(),
        )
        .unwrap()
    }

    #[test]
    fn an_attach_needs_a_free_port_and_the_dry_run_names_it() {
        let vf = bdf("0000:01:00.1");
        let attach = attach_of(vf);
        let p = policy();
        let none = facts(Vec::new(), Some(Err(NO_PORT.into())));
        let refusals = check(&attach, Some(&p), &none);
        assert!(
            matches!(refusals.as_slice(), [VmRefusal::NoFreePort { .. }]),
            "{refusals:?}"
        );
        assert!(refusals[0].to_string().contains("rp1 in use"));
        let free = facts(Vec::new(), Some(Ok("rp2".into())));
        assert!(check(&attach, Some(&p), &free).is_empty());
        let steps = steps(&attach, &free);
        assert!(steps[1].what.ends_with("onto port rp2"), "{steps:?}");
        // The VF already in the VM: that is the refusal, not the ports.
        let there = facts(
            vec![Attachment {
                id: crate::connect::device_id(vf),
                vf,
                port: Some("rp1".into()),
            }],
            Some(Err(NO_PORT.into())),
        );
        let refusals = check(&attach, Some(&p), &there);
        assert!(
            matches!(refusals.as_slice(), [VmRefusal::AlreadyAttached { .. }]),
            "{refusals:?}"
        );
        // Not asked (a simulated hypervisor): no refusal, no port named.
        let unknown = facts(Vec::new(), None);
        assert!(check(&attach, Some(&p), &unknown).is_empty());
        assert!(steps_of(&attach, &unknown).contains("onto a free hot-plug port"));
    }

    #[test]
    fn the_command_lines_vfs_do_not_count_against_max_attached() {
        let vf = bdf("0000:01:00.2");
        let attach = attach_of(vf);
        let own = Attachment {
            id: "hostdev0".into(),
            vf: bdf("0000:01:00.1"),
            port: None,
        };
        let p = policy();
        assert!(check(&attach, Some(&p), &facts(vec![own.clone()], None)).is_empty());
        let plugged = Attachment {
            id: crate::connect::device_id(bdf("0000:01:00.3")),
            ..own
        };
        let refusals = check(&attach, Some(&p), &facts(vec![plugged], None));
        assert!(
            matches!(
                refusals.as_slice(),
                [VmRefusal::AtLimit { max: 1, has: 1, .. }]
            ),
            "{refusals:?}"
        );
    }

    fn steps_of(action: &Action, vm: &VmFacts) -> String {
        steps(action, vm)
            .into_iter()
            .map(|s| s.what)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
