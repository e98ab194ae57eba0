//! `vpm pci`: the operator's device actions, with vpm's safety checks; dry run
//! unless `--apply`.

use std::time::Duration;

use clap::{Args, Subcommand};
use vpm::executor::{Action, ApplyOptions, Report};
use vpm::hal::Bdf;
use vpm::policy::Policy;

use super::ActArgs;

/// Arguments of `vpm pci`.
#[derive(Args)]
pub struct PciArgs {
    #[command(subcommand)]
    command: PciCommand,
    /// Longest a sysfs write may block (VF creation can take minutes on some drivers).
    #[arg(long, global = true, default_value = "120s", value_parser = super::duration)]
    write_timeout: Duration,
    #[command(flatten)]
    act: ActArgs,
}

#[derive(Subcommand)]
enum PciCommand {
    /// Set a PF's number of SR-IOV VFs (a resize goes through 0; refused while
    /// any of its VFs is open through VFIO).
    SetVfs {
        /// The physical function, DDDD:BB:DD.F.
        bdf: Bdf,
        /// The VF count wanted (0 removes them all).
        count: u32,
    },
    /// Park an idle device: bind it to vfio-pci and let it idle into D3hot
    /// (refused while it is open, used by the host, or its IOMMU group is unsafe).
    Park {
        /// The device, DDDD:BB:DD.F.
        bdf: Bdf,
    },
    /// Wake a device to D0 (`power/control=on`) ahead of use.
    Wake {
        /// The device, DDDD:BB:DD.F.
        bdf: Bdf,
    },
}

pub fn run(args: &PciArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.act.policy)?;
    // Without a policy file the guard refuses every action and says why.
    let action = match args.command {
        PciCommand::SetVfs { bdf, count } => Action::SetVfs { pf: bdf, count },
        PciCommand::Park { bdf } => Action::Park { bdf },
        PciCommand::Wake { bdf } => Action::Wake { bdf },
    };
    let opts = ApplyOptions {
        write_timeout: args.write_timeout,
        settle_timeout: args.act.settle_timeout,
    };
    args.act.act(action, policy.as_ref(), None, &opts)
}

/// Opens the journal in `state_dir` and resolves actions a crash interrupted
/// (said on stderr; nothing is re-applied), hot-plug ones with what the VM's
/// monitor says through `hotplug` too.
pub(super) fn open_journal(
    state_dir: &std::path::Path,
    roots: &vpm::executor::Roots,
    hotplug: Option<&dyn vpm::executor::Hotplug>,
) -> anyhow::Result<vpm::executor::Journal> {
    let (mut j, entries) = vpm::executor::Journal::open(state_dir)?;
    for i in j.reconcile(&entries, roots, hotplug, vpm::units::unix_now())? {
        eprintln!(
            "vpm: journal: `{}` was interrupted by a restart; it {}",
            i.intent.action, i.note
        );
    }
    Ok(j)
}

/// Prints what an action did or would do.
pub(super) fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    if json {
        return super::output::emit(
            None,
            &format!("{}\n", serde_json::to_string_pretty(report)?),
        );
    }
    let mut text = if report.applied {
        format!("done: {}\n", report.action)
    } else {
        format!("dry run (add --apply to act): would {}\n", report.action)
    };
    for step in &report.steps {
        let _ = match step.elapsed_ms {
            Some(ms) => writeln!(text, "  {} ({ms:.1} ms)", step.what),
            None => writeln!(text, "  {}", step.what),
        };
    }
    super::output::emit(None, &text)
}
