//! `vpm devices`: the PCI inventory, as readable as `lspci -nn`.

use clap::Args;
use vpm::inventory::DeviceRow;

use super::RootArgs;
use super::output::Format;

/// Arguments of `vpm devices`.
#[derive(Args)]
pub struct DevicesArgs {
    /// Output format: a table, or a JSON array with one object per function
    /// (fields in the README).
    #[arg(long, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub roots: RootArgs,
}

pub fn run(args: &DevicesArgs) -> anyhow::Result<()> {
    let rows = vpm::inventory::list(&args.roots.roots())?;
    let text = match args.output {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&rows)?),
        Format::Table => table(&rows),
    };
    super::output::emit(None, &text)
}

fn table(rows: &[DeviceRow]) -> String {
    let mut t = super::output::new_table([
        "BDF", "DEVICE", "DRIVER", "SR-IOV", "POWER", "IOMMU", "HELD BY",
    ]);
    for r in rows {
        let f = &r.function;
        let device = format!(
            "{} [{:04x}]: {} {} [{:04x}:{:04x}]",
            r.class_name.as_deref().unwrap_or("Class"),
            f.class >> 8,
            r.vendor_name.as_deref().unwrap_or("vendor"),
            r.device_name.as_deref().unwrap_or("device"),
            f.vendor,
            f.device
        );
        let sriov = match (&f.sriov, f.physfn) {
            (Some(s), _) => format!("{}/{} VFs", s.num_vfs, s.total_vfs),
            (None, Some(pf)) => format!("VF of {pf}"),
            (None, None) => String::new(),
        };
        let power = [
            f.power_state.as_ref().map(ToString::to_string),
            f.runtime_status.as_ref().map(ToString::to_string),
            f.power_control.as_ref().map(|c| format!("control={c}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let holders = r
            .holders
            .iter()
            .map(|h| match &h.vm {
                Some(vm) => format!("{vm} ({})", h.pid),
                None => format!("{} ({})", h.comm, h.pid),
            })
            .collect::<Vec<_>>()
            .join(", ");
        t.add_row([
            f.bdf.to_string(),
            device,
            f.driver.clone().unwrap_or_default(),
            sriov,
            power,
            f.iommu_group.map(|g| g.to_string()).unwrap_or_default(),
            holders,
        ]);
    }
    format!("{t}\n")
}
