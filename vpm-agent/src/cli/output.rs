//! Rendering of window reports: table, JSON, CSV.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use clap::ValueEnum;
use comfy_table::{Cell, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use vpm::report::{VmReport, WindowReport};
use vpm::store::long;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A human table.
    Table,
    /// The JSON shape documented in the README.
    Json,
    /// vpm's long CSV format, one row per VM × resource.
    Csv,
}

/// Output formats of the commands that print a report rather than samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human tables.
    Table,
    /// JSON (each command's shape is in the README).
    Json,
}

/// The EXIT/s column: every VM exit (`kvm_exit`) where that tracepoint
/// fires (bare-metal VMX/SVM hosts), which includes the exits that go to
/// userspace; else the exits to userspace alone (nested KVM, where
/// `kvm_exit` does not fire).
fn exits_per_s(vm: &VmReport) -> f64 {
    let all = rate(vm, "exit_per_s");
    if all > 0.0 {
        all
    } else {
        rate(vm, "userspace_exit_per_s")
    }
}

/// Writing to stdout failed (`main` ends quietly when its reader is gone).
#[derive(Debug, thiserror::Error)]
#[error("writing to stdout")]
pub struct StdoutError(#[source] pub std::io::Error);

/// Writes `text` to `out` (a file, written atomically) or stdout.
pub fn emit(out: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match out {
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| StdoutError(e).into())
        }
        Some(path) => write_atomic(path, text.as_bytes()),
    }
}

/// Writes `bytes` to `path` atomically (temporary file + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(vpm::export::write_atomic(path, bytes)?)
}

/// Renders `report` in `format`; `timestamp` stamps CSV rows.
pub fn render(report: &WindowReport, format: Output, timestamp: f64) -> anyhow::Result<String> {
    Ok(match format {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(report).context("encoding JSON")?;
            s.push('\n');
            s
        }
        Output::Csv => {
            let mut w = long::Writer::new(Vec::new()).context("encoding CSV")?;
            for row in report.long_rows(timestamp) {
                w.write(&row).context("encoding CSV")?;
            }
            String::from_utf8_lossy(&w.into_inner()).into_owned()
        }
        Output::Table => format!("{}\n", table(report)),
    })
}

fn si(v: f64) -> String {
    let (v, unit) = match v.abs() {
        x if x >= 1e9 => (v / 1e9, "G"),
        x if x >= 1e6 => (v / 1e6, "M"),
        x if x >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    if unit.is_empty() && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{unit}")
    }
}

pub(crate) fn bytes(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |b| format!("{}B", si(b)))
}

fn rate(vm: &VmReport, key: &str) -> f64 {
    vm.rates.get(key).copied().unwrap_or(0.0)
}

/// An empty table in vpm's style with `header`.
pub fn new_table<S: ToString>(header: impl IntoIterator<Item = S>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(
            header
                .into_iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        );
    t
}

/// The `vpm top` table.
pub fn table(report: &WindowReport) -> Table {
    let mut t = new_table([
        "VM",
        "PID",
        "CPU%",
        "MEM",
        "NET rx/s",
        "NET tx/s",
        "DISK r/s",
        "DISK w/s",
        "PIO/s",
        "MMIO/s",
        "IRQ/s",
        "EXIT/s",
        "TOP DEVICES (per s)",
    ]);
    for vm in &report.vms {
        let top: Vec<String> = vm
            .devices
            .iter()
            .take(3)
            .map(|d| format!("{}:{} {}", d.kind, d.key, si(d.per_s)))
            .collect();
        t.add_row([
            Cell::new(&vm.vm),
            Cell::new(vm.pid),
            Cell::new(
                vm.host
                    .cpu
                    .map_or_else(|| "-".into(), |c| format!("{:.1}", c * 100.0)),
            ),
            Cell::new(bytes(vm.host.mem_bytes.map(|m| m as f64))),
            Cell::new(bytes(vm.host.net_rx_bytes_per_s)),
            Cell::new(bytes(vm.host.net_tx_bytes_per_s)),
            Cell::new(bytes(vm.host.disk_read_bytes_per_s)),
            Cell::new(bytes(vm.host.disk_write_bytes_per_s)),
            Cell::new(si(rate(vm, "pio_per_s"))),
            Cell::new(si(rate(vm, "mmio_per_s"))),
            Cell::new(si(rate(vm, "msi_per_s") + rate(vm, "irq_per_s"))),
            Cell::new(si(exits_per_s(vm))),
            Cell::new(top.join(", ")),
        ]);
    }
    t
}
