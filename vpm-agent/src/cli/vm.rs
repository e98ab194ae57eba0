//! `vpm vm`: the VMs, their QMP monitors and hot-plugged VFs; attach a VF to a
//! running VM or take it back, through the hypervisor (dry run unless `--apply`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use vpm::connect::{self, Monitor, QmpHotplug, VmEntry};
use vpm::executor::{Action, ApplyOptions, VmRef};
use vpm::hal::Bdf;
use vpm::identity::{self, Vmm};
use vpm::policy::Policy;

use super::ActArgs;
use super::output::emit;

/// Arguments of `vpm vm`.
#[derive(Args)]
pub struct VmArgs {
    #[command(subcommand)]
    command: VmCommand,
}

/// Arguments of `vpm vm list` (it only reads: no acting options).
#[derive(Args)]
struct ListArgs {
    /// The policy file: its [hotplug] monitor template finds monitors the
    /// VMs' command lines do not name (a missing default file is fine).
    #[arg(long, default_value = vpm::policy::DEFAULT_PATH, value_name = "FILE")]
    policy: std::path::PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    output: super::output::Format,
    #[command(flatten)]
    roots: super::RootArgs,
}

#[derive(Subcommand)]
enum VmCommand {
    /// QEMU VMs with their QMP monitor, hot-plugged VFs and free hot-plug ports.
    List(ListArgs),
    /// Hot-plug a VF into a running VM: wake it, `device_add vfio-pci` onto a
    /// free hot-plug port over QMP, and check the VM's process opened it.
    /// The VF must be bound to vfio-pci (`vpm pci park BDF`), its IOMMU group
    /// safe, open by no one, and the VM's class must set `hotplug = true`.
    Attach {
        /// The VM: its name or its VMM's pid.
        vm: String,
        /// The VF, DDDD:BB:DD.F.
        vf: Bdf,
        #[command(flatten)]
        act: ActArgs,
    },
    /// Take a hot-plugged VF back: `device_del` over QMP, wait for the
    /// `DEVICE_DELETED` event, check the VM's process closed it, park it.
    Detach {
        /// The VM: its name or its VMM's pid.
        vm: String,
        /// The VF, DDDD:BB:DD.F.
        vf: Bdf,
        #[command(flatten)]
        act: ActArgs,
    },
}

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    let (vm, vf, attach, act) = match &args.command {
        VmCommand::List(list_args) => {
            let settings = Policy::load(&list_args.policy)?
                .map(|p| p.hotplug)
                .unwrap_or_default();
            return list(list_args, &settings);
        }
        VmCommand::Attach { vm, vf, act } => (vm, *vf, true, act),
        VmCommand::Detach { vm, vf, act } => (vm, *vf, false, act),
    };
    let policy = Policy::load(&act.policy)?;
    let settings = policy
        .as_ref()
        .map(|p| p.hotplug.clone())
        .unwrap_or_default();
    let vm = resolve(&act.roots.proc_root, vm)?;
    let action = if attach {
        Action::Attach { vm, vf }
    } else {
        Action::Detach { vm, vf }
    };
    let hv = QmpHotplug::new(&act.roots.proc_root, settings);
    let opts = ApplyOptions {
        write_timeout: Duration::from_secs(10),
        settle_timeout: act.settle_timeout,
    };
    act.act(action, policy.as_ref(), Some(&hv), &opts)
}

/// The VM named `arg` (or whose VMM has pid `arg`).
fn resolve(proc_root: &std::path::Path, arg: &str) -> anyhow::Result<VmRef> {
    let vms = identity::scan_vmms(proc_root)?;
    let by_pid = arg.parse::<u32>().ok();
    // A pid names one process; it wins over a VM that took it as its name.
    let found: Vec<_> = match vms.iter().find(|v| Some(v.pid) == by_pid) {
        Some(v) => vec![v],
        None => vms.iter().filter(|v| v.name == arg).collect(),
    };
    match found.as_slice() {
        [one] if one.vmm == Vmm::Qemu => Ok(VmRef {
            name: one.name.clone(),
            pid: one.pid,
        }),
        [one] => bail!(
            "VM {} (pid {}) runs under {}; vpm hot-plugs over QMP, so only QEMU VMs",
            one.name,
            one.pid,
            one.vmm.as_str()
        ),
        [] => {
            let known: Vec<String> = vms
                .iter()
                .map(|v| format!("{} (pid {})", v.name, v.pid))
                .collect();
            bail!(
                "no VM named {arg:?}; running VMs: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        }
        many => bail!(
            "{} VMs are named {arg:?} (pids {}); give the pid instead",
            many.len(),
            many.iter()
                .map(|v| v.pid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn list(args: &ListArgs, settings: &vpm::policy::HotplugSettings) -> anyhow::Result<()> {
    let vms = connect::list_vms(&args.roots.proc_root, settings).context("listing the VMs")?;
    if args.output == super::output::Format::Json {
        let rows: Vec<serde_json::Value> = vms.iter().map(json_row).collect();
        return emit(None, &format!("{}\n", serde_json::to_string_pretty(&rows)?));
    }
    if vms.is_empty() {
        return emit(None, "no QEMU VMs running\n");
    }
    let mut t = super::output::new_table(["VM", "PID", "MONITOR", "HOT-PLUGGED VFs", "PORTS"]);
    for v in &vms {
        let monitor = match &v.monitor {
            Monitor::Unix { path, from } => format!("{} ({from})", path.display()),
            Monitor::Unusable { what } => format!("unusable: {what}"),
            Monitor::None => "none".into(),
        };
        let monitor = if v.identity.libvirt {
            format!("libvirt: {monitor}")
        } else {
            monitor
        };
        let attached = match &v.attached {
            Ok(a) if a.is_empty() => "-".into(),
            Ok(a) => a
                .iter()
                .map(|a| {
                    format!(
                        "{} ({} on {})",
                        a.vf,
                        a.id,
                        a.port.as_deref().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("? ({e})"),
        };
        t.add_row([
            v.identity.name.clone(),
            v.identity.pid.to_string(),
            monitor,
            attached,
            ports_text(&v.ports),
        ]);
    }
    emit(None, &format!("{t}\n"))
}

fn ports_text(p: &connect::Ports) -> String {
    let mut parts = Vec::new();
    for (label, list) in [
        ("free", &p.free),
        ("in use", &p.busy),
        ("hotplug=off", &p.no_hotplug),
        ("not in policy", &p.not_allowed),
    ] {
        if !list.is_empty() {
            parts.push(format!("{label}: {}", list.join(", ")));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("\n")
    }
}

fn json_row(v: &VmEntry) -> serde_json::Value {
    // Not asked (the error says why): attachments and ports are unknown,
    // `null`, not empty.
    let (attached, ports, error) = match &v.attached {
        Ok(a) => (
            serde_json::to_value(a).unwrap_or_default(),
            serde_json::to_value(&v.ports).unwrap_or_default(),
            None,
        ),
        Err(e) => (
            serde_json::Value::Null,
            serde_json::Value::Null,
            Some(e.clone()),
        ),
    };
    serde_json::json!({
        "vm": v.identity.name,
        "pid": v.identity.pid,
        "libvirt": v.identity.libvirt,
        "monitor": v.monitor,
        "attached": attached,
        "error": error,
        "ports": ports,
    })
}
