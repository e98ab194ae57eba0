//! Connecting VFs to running VMs through the hypervisor's own interface:
//! QMP hot-plug for QEMU ([`QmpHotplug`], the real [`Hotplug`]), where each
//! VM's monitor is ([`monitor`]), and what is plugged where ([`list_vms`]).
//!
//! vpm plugs a VF in with `device_add vfio-pci` onto a free hot-plug port and
//! takes it back only with `device_del` confirmed by `DEVICE_DELETED` — never
//! by unbinding it or changing the VF count under the VM. VMs managed by
//! libvirt are left alone: libvirt owns their monitor.

pub mod monitor;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::executor::{Attachment, Hotplug, HotplugError, InVm, VmFacts, VmRef};
use crate::hal::Bdf;
use crate::identity::{self, VmIdentity, Vmm, cmdline};
use crate::policy::HotplugSettings;
use crate::qmp::{Qmp, QmpError};
pub use monitor::Monitor;

/// The device types vpm plugs into (QEMU's PCIe hot-plug ports).
pub const PORT_TYPES: &[&str] = &["pcie-root-port", "ioh3420", "xio3130-downstream"];

/// The qdev id vpm gives the VF `vf` in a VM: `vpm-0000-01-00-1`.
pub fn device_id(vf: Bdf) -> String {
    format!(
        "{}{}",
        crate::executor::hotplug::DEVICE_ID_PREFIX,
        vf.to_string().replace([':', '.'], "-")
    )
}

/// A VM as `vpm vm list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct VmEntry {
    /// Who it is.
    #[serde(flatten)]
    pub identity: VmIdentity,
    /// Its QMP monitor.
    pub monitor: Monitor,
    /// Its hot-plugged VFIO devices, or why vpm could not ask.
    pub attached: Result<Vec<Attachment>, String>,
    /// Its hot-plug ports (when asked).
    pub ports: Ports,
}

/// The QMP side of hot-plug on this host (or any `/proc` root).
pub struct QmpHotplug {
    proc_root: PathBuf,
    settings: HotplugSettings,
}

impl QmpHotplug {
    /// Hot-plug over the monitors of the processes under `proc_root`, with
    /// the policy's `[hotplug]` settings.
    pub fn new(proc_root: impl Into<PathBuf>, settings: HotplugSettings) -> Self {
        Self {
            proc_root: proc_root.into(),
            settings,
        }
    }

    fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.settings.command_timeout_s)
    }

    /// The timeout of the read-only queries of [`Hotplug::vm_facts`], which
    /// the agent runs before every plan: a hung monitor must not stall the
    /// loop for long (at most 2 s, or the command timeout if shorter).
    fn query_timeout(&self) -> Duration {
        self.command_timeout().min(Duration::from_secs(2))
    }

    /// The monitor of the VM in process `pid` named `name`, and whether
    /// libvirt manages it (its cgroup is libvirt's machine scope, or its
    /// monitor socket lives in a libvirt directory).
    pub fn monitor_of(&self, pid: u32, name: &str) -> (Monitor, bool) {
        let raw =
            std::fs::read(self.proc_root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
        let args = cmdline::split_cmdline(&raw);
        let libvirt = identity::identify(&self.proc_root, pid).is_ok_and(|id| id.libvirt);
        let found = monitor::qmp_monitors(&args);
        let mon = match monitor::choose(found, self.settings.monitor_for(name)) {
            // A relative path is relative to QEMU's working directory.
            Monitor::Unix { path, from } if path.is_relative() => {
                match std::fs::read_link(self.proc_root.join(pid.to_string()).join("cwd")) {
                    Ok(cwd) => Monitor::Unix {
                        path: cwd.join(path),
                        from,
                    },
                    Err(e) => Monitor::Unusable {
                        what: format!(
                            "{} is relative to QEMU's working directory, which cannot be read \
                             ({e})",
                            path.display()
                        ),
                    },
                }
            }
            m => m,
        };
        let libvirt =
            libvirt || matches!(&mon, Monitor::Unix { path, .. } if monitor::in_libvirt_dir(path));
        (mon, libvirt)
    }

    fn socket(&self, vm: &VmRef) -> Result<PathBuf, HotplugError> {
        let (mon, libvirt) = self.monitor_of(vm.pid, &vm.name);
        if libvirt {
            return Err(HotplugError {
                message: format!("{vm} is managed by libvirt; vpm does not use its monitor"),
                outcome_unknown: false,
            });
        }
        match mon {
            Monitor::Unix { path, .. } => Ok(path),
            Monitor::Unusable { what } => Err(HotplugError {
                message: format!("{vm}: {what}"),
                outcome_unknown: false,
            }),
            Monitor::None => Err(HotplugError {
                message: format!("{vm} has no QMP monitor"),
                outcome_unknown: false,
            }),
        }
    }
}

/// An error before the request itself (connecting, querying): nothing was
/// asked of the VM, so its state is known to be unchanged.
fn qmp_err(e: QmpError) -> HotplugError {
    HotplugError {
        outcome_unknown: false,
        message: e.to_string(),
    }
}

/// An error of the request itself (`device_add`, `device_del`): without an
/// answer, it may have taken effect.
fn request_err(e: QmpError) -> HotplugError {
    HotplugError {
        outcome_unknown: e.outcome_unknown(),
        message: e.to_string(),
    }
}

impl Hotplug for QmpHotplug {
    fn vm_facts(&self, vm: &VmRef) -> VmFacts {
        let (mon, libvirt) = self.monitor_of(vm.pid, &vm.name);
        let mut facts = VmFacts {
            vm: vm.clone(),
            libvirt,
            monitor: Err("none on its command line or in the policy (start it with \
                 `-qmp unix:PATH,server=on,wait=off`, or set [hotplug] monitor)"
                .into()),
            attached: Vec::new(),
            port: None,
        };
        match mon {
            Monitor::Unix { path, .. } if !libvirt => {
                let timeout = self.query_timeout();
                match block(|| async {
                    let mut q = Qmp::connect_to(&path, timeout, vm.pid)
                        .await
                        .map_err(qmp_err)?;
                    attachments(&mut q).await.map_err(qmp_err)
                })
                .and_then(|r| r)
                {
                    Ok(a) => {
                        facts.monitor = Ok(path.display().to_string());
                        facts.attached = a;
                    }
                    Err(e) => facts.monitor = Err(e.to_string()),
                }
            }
            Monitor::Unix { path, .. } => facts.monitor = Ok(path.display().to_string()),
            Monitor::Unusable { what } => facts.monitor = Err(what),
            Monitor::None => {}
        }
        facts
    }

    fn attach(&self, vm: &VmRef, vf: Bdf) -> Result<Attachment, HotplugError> {
        let path = self.socket(vm)?;
        let timeout = self.command_timeout();
        block(|| async {
            let mut q = Qmp::connect_to(&path, timeout, vm.pid)
                .await
                .map_err(qmp_err)?;
            let ports = ports(&mut q, &self.settings).await.map_err(qmp_err)?;
            let Some(port) = ports.free.first().cloned() else {
                return Err(HotplugError {
                    message: no_port_message(vm, &ports),
                    outcome_unknown: false,
                });
            };
            let id = device_id(vf);
            q.device_add_vfio(&id, &vf.to_string(), &port)
                .await
                .map_err(request_err)?;
            Ok(Attachment {
                id,
                vf,
                port: Some(port),
            })
        })?
    }

    fn free_port(&self, vm: &VmRef) -> Option<Result<String, String>> {
        let path = self.socket(vm).ok()?;
        let timeout = self.query_timeout();
        let ports = block(|| async {
            let mut q = Qmp::connect_to(&path, timeout, vm.pid).await?;
            ports(&mut q, &self.settings).await
        })
        .ok()?
        .ok()?;
        Some(match ports.free.first() {
            Some(p) => Ok(p.clone()),
            None => Err(no_port_message(vm, &ports)),
        })
    }

    fn detach(&self, vm: &VmRef, vf: Bdf) -> Result<(), HotplugError> {
        let path = self.socket(vm)?;
        let timeout = self.command_timeout();
        let wait = Duration::from_secs_f64(self.settings.unplug_timeout_s);
        block(|| async {
            let mut q = Qmp::connect_to(&path, timeout, vm.pid)
                .await
                .map_err(qmp_err)?;
            let found = attachments(&mut q).await.map_err(qmp_err)?;
            let Some(a) = found.into_iter().find(|a| a.vf == vf) else {
                return Err(HotplugError {
                    message: format!("{vf} is not hot-plugged into {vm}"),
                    outcome_unknown: false,
                });
            };
            if !a.by_vpm() {
                return Err(HotplugError {
                    message: format!(
                        "{vf} is in {vm} as device {:?}, which vpm did not plug; vpm takes back \
                         only the VFs it attached",
                        a.id
                    ),
                    outcome_unknown: false,
                });
            }
            q.device_del(&a.id, wait).await.map_err(|e| match e {
                // The answer came, the event did not: the device is still
                // there and QEMU keeps the request pending. (No answer to
                // `device_del` itself is an unknown outcome, below.)
                QmpError::Timeout { ref during, .. }
                    if during.starts_with(crate::qmp::client::AWAITING_DELETED) =>
                {
                    HotplugError {
                        message: format!(
                            "{e}: QEMU sent no DEVICE_DELETED for {} ({vf}), so the guest has not \
                         released it and it stays attached (a guest without a hot-plug driver, \
                         or ACPI hot-plug waiting for the guest's OS); QEMU keeps the unplug \
                         request pending, and if the guest releases the VF later vpm parks it \
                         like any free VF",
                            a.id
                        ),
                        outcome_unknown: false,
                    }
                }
                e => request_err(e),
            })
        })?
    }

    fn in_vm(&self, vm: &VmRef, vf: Bdf) -> Result<InVm, String> {
        let path = self.socket(vm).map_err(|e| e.to_string())?;
        let timeout = self.query_timeout();
        block(|| async {
            let mut q = Qmp::connect_to(&path, timeout, vm.pid)
                .await
                .map_err(qmp_err)?;
            in_vm(&mut q, vf).await.map_err(qmp_err)
        })
        .and_then(|r| r)
        .map_err(|e| e.to_string())
    }
}

/// What the VM behind `q` says of `vf`: the device its QOM tree has for it
/// and whether QEMU's PCI bus (`query-pci`) lists that device.
pub async fn in_vm(q: &mut Qmp, vf: Bdf) -> Result<InVm, QmpError> {
    let Some(a) = attachments(q).await?.into_iter().find(|a| a.vf == vf) else {
        return Ok(InVm::listed(None, false));
    };
    let on_bus = q.query_pci().await?.iter().any(|d| d.qdev_id == a.id);
    Ok(InVm::listed(Some(a), on_bus))
}

/// The VFIO devices plugged into the VM behind `q` (`/machine/peripheral`
/// and `/machine/peripheral-anon`), with the port each sits on.
pub async fn attachments(q: &mut Qmp) -> Result<Vec<Attachment>, QmpError> {
    let mut out = Vec::new();
    for parent in ["/machine/peripheral", "/machine/peripheral-anon"] {
        let children = match q.qom_list(parent).await {
            Ok(c) => c,
            // `peripheral-anon` exists only once an anonymous device does.
            Err(QmpError::Command { .. }) => continue,
            Err(e) => return Err(e),
        };
        for c in children {
            if c.child_type() != Some("vfio-pci") {
                continue;
            }
            let path = format!("{parent}/{}", c.name);
            let host = q.qom_get(&path, "host").await?;
            let Some(vf) = host.as_str().and_then(parse_host) else {
                continue;
            };
            let port = port_of(q, &path).await?;
            out.push(Attachment {
                id: c.name,
                vf,
                port,
            });
        }
    }
    Ok(out)
}

/// The qdev id of the port the device at QOM `path` sits on: its
/// `parent_bus` is `/machine/peripheral/PORT/BUS`.
async fn port_of(q: &mut Qmp, path: &str) -> Result<Option<String>, QmpError> {
    let bus = q.qom_get(path, "parent_bus").await?;
    Ok(bus.as_str().and_then(|b| {
        let parts: Vec<&str> = b.trim_end_matches('/').rsplit('/').collect();
        (parts.len() >= 3 && parts[2] == "peripheral").then(|| parts[1].to_owned())
    }))
}

/// A VM's hot-plug ports, as vpm sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ports {
    /// Empty, hot-plug capable and allowed by the policy: usable.
    pub free: Vec<String>,
    /// Something sits on them.
    pub busy: Vec<String>,
    /// Started with `hotplug=off`.
    pub no_hotplug: Vec<String>,
    /// Not in the policy's `[hotplug] ports`.
    pub not_allowed: Vec<String>,
}

/// The hot-plug ports of the VM behind `q`, in the order the VM lists them.
pub async fn ports(q: &mut Qmp, settings: &HotplugSettings) -> Result<Ports, QmpError> {
    let mut taken = Vec::new();
    let children = q.qom_list("/machine/peripheral").await?;
    // Devices without an id (`peripheral-anon`) take ports too.
    let anon = match q.qom_list("/machine/peripheral-anon").await {
        Ok(a) => a,
        Err(QmpError::Command { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    for (parent, c) in children
        .iter()
        .map(|c| ("/machine/peripheral", c))
        .chain(anon.iter().map(|c| ("/machine/peripheral-anon", c)))
    {
        if c.child_type().is_some_and(|t| !PORT_TYPES.contains(&t))
            && let Some(port) = port_of(q, &format!("{parent}/{}", c.name)).await?
        {
            taken.push(port);
        }
    }
    let mut out = Ports::default();
    for c in children {
        if !c.child_type().is_some_and(|t| PORT_TYPES.contains(&t)) {
            continue;
        }
        let hotplug = q
            .qom_get(&format!("/machine/peripheral/{}", c.name), "hotplug")
            .await
            .ok()
            .and_then(|v| v.as_bool());
        if !settings.port_allowed(&c.name) {
            out.not_allowed.push(c.name);
        } else if hotplug == Some(false) {
            out.no_hotplug.push(c.name);
        } else if taken.contains(&c.name) {
            out.busy.push(c.name);
        } else {
            out.free.push(c.name);
        }
    }
    Ok(out)
}

/// Why a VM has no port to plug into, and what to do.
fn no_port_message(vm: &VmRef, p: &Ports) -> String {
    let mut why = Vec::new();
    if !p.no_hotplug.is_empty() {
        why.push(format!(
            "{} without hot-plug (hotplug=off)",
            p.no_hotplug.join(", ")
        ));
    }
    if !p.busy.is_empty() {
        why.push(format!("{} in use", p.busy.join(", ")));
    }
    if !p.not_allowed.is_empty() {
        why.push(format!(
            "{} not in the policy's [hotplug] ports",
            p.not_allowed.join(", ")
        ));
    }
    let fix = if p.free.is_empty() && p.busy.is_empty() && p.no_hotplug.is_empty() {
        if p.not_allowed.is_empty() {
            "start it with a hot-plug port: `-device pcie-root-port,id=rp1,chassis=1,slot=1`"
        } else {
            "add one of its ports to [hotplug] ports, or start it with one more"
        }
    } else {
        "start it with one more `-device pcie-root-port,id=rpN,chassis=N,slot=N` (hot-plug is \
         on by default)"
    };
    format!(
        "{vm} has no free hot-plug port{}; {fix}",
        if why.is_empty() {
            String::new()
        } else {
            format!(" (ports: {})", why.join("; "))
        }
    )
}

/// A `vfio-pci` `host` property as a BDF (QEMU accepts it without the domain).
fn parse_host(s: &str) -> Option<Bdf> {
    s.parse().ok().or_else(|| format!("0000:{s}").parse().ok())
}

/// Every QEMU VM under `proc_root` with its monitor and, where vpm may ask
/// it, its hot-plugged VFs and free ports.
pub fn list_vms(
    proc_root: &Path,
    settings: &HotplugSettings,
) -> Result<Vec<VmEntry>, identity::IdentityError> {
    let hv = QmpHotplug::new(proc_root, settings.clone());
    let timeout = hv.command_timeout();
    let mut out = Vec::new();
    for id in identity::scan_vmms(proc_root)? {
        if id.vmm != Vmm::Qemu {
            continue;
        }
        let (monitor, libvirt) = hv.monitor_of(id.pid, &id.name);
        let (attached, free) = match (&monitor, libvirt) {
            (_, true) => (
                Err("managed by libvirt: vpm leaves its monitor alone".into()),
                Ports::default(),
            ),
            (Monitor::Unix { path, .. }, false) => {
                match block(|| async {
                    let mut q = Qmp::connect_to(path, timeout, id.pid)
                        .await
                        .map_err(qmp_err)?;
                    let a = attachments(&mut q).await.map_err(qmp_err)?;
                    let f = ports(&mut q, settings).await.map_err(qmp_err)?;
                    Ok((a, f))
                })
                .and_then(|r| r)
                {
                    Ok((a, f)) => (Ok(a), f),
                    Err(e) => (Err(e.to_string()), Ports::default()),
                }
            }
            (Monitor::Unusable { what }, false) => (Err(what.clone()), Ports::default()),
            (Monitor::None, false) => (Err("no QMP monitor".into()), Ports::default()),
        };
        // libvirt's by its monitor's directory too, not only its cgroup.
        let mut identity = id;
        identity.libvirt = libvirt;
        out.push(VmEntry {
            identity,
            monitor,
            attached,
            ports: free,
        });
    }
    Ok(out)
}

/// Runs a future to completion on its own thread and runtime, so callers in
/// and out of a tokio runtime can both use the QMP client synchronously.
/// Fails only when no runtime can be built (the process is out of file
/// descriptors).
fn block<T, F>(make: impl FnOnce() -> F + Send) -> Result<T, HotplugError>
where
    T: Send,
    F: Future<Output = T>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| HotplugError {
                    message: format!("cannot start a runtime for QMP: {e}"),
                    outcome_unknown: false,
                })?;
            Ok(rt.block_on(make()))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_and_hosts() {
        let vf: Bdf = "0000:01:00.1".parse().unwrap();
        assert_eq!(device_id(vf), "vpm-0000-01-00-1");
        assert_eq!(parse_host("0000:01:00.1"), Some(vf));
        assert_eq!(parse_host("01:00.1"), Some(vf));
        assert_eq!(parse_host("nonsense"), None);
    }

    #[test]
    fn a_monitor_in_libvirts_directory_is_libvirts() {
        // Its cgroup says nothing (no file here); its socket's place does.
        let dir = tempfile::tempdir().unwrap();
        let cmdline = |pid: u32, sock: &str| {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            let args = [
                "qemu-system-x86_64",
                "-name",
                "guest=w",
                "-qmp",
                &format!("unix:{sock},server=on,wait=off"),
            ];
            std::fs::write(p.join("cmdline"), args.join("\0") + "\0").unwrap();
        };
        cmdline(10, "/var/lib/libvirt/qemu/domain-1-w/monitor.sock");
        cmdline(11, "/run/vpm/w.qmp");
        let hv = QmpHotplug::new(dir.path(), HotplugSettings::default());
        let (mon, libvirt) = hv.monitor_of(10, "w");
        assert!(matches!(mon, Monitor::Unix { .. }) && libvirt, "{mon:?}");
        let (_, libvirt) = hv.monitor_of(11, "w");
        assert!(!libvirt);
    }
}
