//! `vpm top`: the live per-VM view, or one batch report with `--once`.
//!
//! Below the per-VM table, a VFIO / PCI table (when there was any such
//! activity) has one line per VM and PCI device: VFIO region reads and writes,
//! device ioctls and interrupts per second, and the power and SR-IOV events as
//! counts over the window.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use comfy_table::{Cell, Table};

use super::output::new_table;
use vpm::api;
use vpm::monitor::Monitor;
use vpm::report::{Window, WindowReport};
use vpm_common::EventKind;

use super::output::{self, Output};
use super::{CollectArgs, duration, sleep_until, stop_flag, unix_now};

/// Arguments of `vpm top`.
#[derive(Args)]
pub struct TopArgs {
    #[command(flatten)]
    collect: CollectArgs,
    /// Print one report over `--duration` and exit, instead of the live view.
    #[arg(long)]
    once: bool,
    /// Window of a `--once` report.
    #[arg(long, default_value = "10s", value_parser = duration, requires = "once")]
    duration: Duration,
    /// Format of a `--once` report.
    #[arg(long, value_enum, default_value_t = Output::Table, requires = "once")]
    output: Output,
    /// Write a `--once` report to FILE instead of stdout.
    #[arg(short = 'o', long = "out", value_name = "FILE", requires = "once")]
    out: Option<PathBuf>,
    /// Socket of a running agent.
    #[arg(long, default_value = api::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Attach vpm's own eBPF programs even if an agent is running.
    #[arg(long)]
    standalone: bool,
}

/// Where the numbers come from.
enum Source {
    Agent(std::os::unix::net::UnixStream),
    Own(Box<Monitor>),
}

fn open_source(args: &TopArgs) -> anyhow::Result<Source> {
    if !args.standalone
        && let Ok(stream) = api::connect(&args.socket)
    {
        log::info!("using the agent at {}", args.socket.display());
        return Ok(Source::Agent(stream));
    }
    let monitor = Monitor::start(&args.collect.monitor_options())?;
    log::info!("{}", monitor.attach_summary());
    Ok(Source::Own(Box::new(monitor)))
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    let stop = stop_flag();
    // A bad --out fails now, not after the whole window.
    if let Some(out) = &args.out {
        vpm::export::check_writable(out)?;
    }
    let mut source = open_source(args)?;
    if args.once {
        let report = collect_window(&mut source, args, stop)?;
        let mut text = output::render(&report, args.output, unix_now())?;
        // From an agent: its forecasts too (JSON: a top-level `forecasts`).
        let forecasts = match &mut source {
            Source::Agent(stream) => match api::forecast(stream) {
                Ok(api::Response::Forecast { forecasts, .. }) => Some(forecasts),
                _ => None,
            },
            Source::Own(_) => None,
        };
        match args.output {
            Output::Table => {
                if let Some(t) = pci_table(&report) {
                    text.push_str(&format!("{t}\n"));
                }
                if let Some(t) = forecasts.as_deref().and_then(forecast_table) {
                    text.push_str(&format!("{t}\n"));
                }
            }
            Output::Json => {
                if let Some(f) = forecasts {
                    let mut v: serde_json::Value =
                        serde_json::from_str(&text).context("re-reading the JSON report")?;
                    v["forecasts"] = serde_json::to_value(f)?;
                    text = format!("{}\n", serde_json::to_string_pretty(&v)?);
                }
            }
            Output::Csv => {}
        }
        return output::emit(args.out.as_deref(), &text);
    }
    live(&mut source, args, stop)
}

fn collect_window(
    source: &mut Source,
    args: &TopArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<WindowReport> {
    match source {
        Source::Agent(stream) => {
            log::info!("collecting for {:?}", args.duration);
            sleep_until(Instant::now() + args.duration, stop);
            let report = api::report(stream, args.duration.as_secs_f64())?;
            if report.window_s < args.duration.as_secs_f64() * 0.9 {
                log::warn!(
                    "the agent's history covers {:.1} s of the {:?} asked: the report is over \
                     those (start the agent with a longer --history, or use --standalone)",
                    report.window_s,
                    args.duration
                );
            }
            Ok(report)
        }
        Source::Own(monitor) => {
            // A baseline tick first, so host counters have a start value.
            let base = monitor.tick(unix_now())?;
            let mut window = Window::starting_at(base.at);
            for vm in &base.vms {
                window.observe(base.at, &vm.info, None, vm.host.as_ref());
            }
            log::info!("collecting for {:?}", args.duration);
            let start = Instant::now();
            let deadline = start + args.duration;
            let mut n = 1u32;
            loop {
                let next = (start + args.collect.interval * n).min(deadline);
                sleep_until(next, stop);
                monitor.tick(unix_now())?.add_to(&mut window);
                if Instant::now() >= deadline || stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                n += 1;
            }
            Ok(window.report())
        }
    }
}

fn live(
    source: &mut Source,
    args: &TopArgs,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let interval = args.collect.interval;
    let start = Instant::now();
    let mut n = 1u32;
    let mut stdout = std::io::stdout();
    let mut history = vpm::history::History::new(interval.as_secs_f64() * 10.0);
    // A baseline, so the first frame has rates over a whole tick.
    if let Source::Own(monitor) = source {
        history.push(monitor.tick(unix_now())?);
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        sleep_until(start + interval * n, stop);
        n += 1;
        let report = match source {
            Source::Agent(stream) => api::report(stream, interval.as_secs_f64())?,
            Source::Own(monitor) => {
                history.push(monitor.tick(unix_now())?);
                history.last_tick().report()
            }
        };
        let pci = pci_table(&report).map_or_else(String::new, |t| format!("{t}\n"));
        // From an agent: its latest plan and what is hot-plugged where.
        let planned = match source {
            Source::Agent(stream) => agent_plan(stream),
            Source::Own(_) => String::new(),
        };
        // Clear and redraw, like top(1).
        write!(
            stdout,
            "\x1b[H\x1b[2J\x1b[3Jvpm top - {} VMs - rates over {:.1}s - Ctrl-C to quit\n{}\n{pci}{planned}",
            report.vms.len(),
            report.window_s,
            output::table(&report)
        )
        .and_then(|()| stdout.flush())
        .context("writing to the terminal")?;
    }
    Ok(())
}

/// The agent's forecasts of each VM's CPU, memory and VF use at its longest
/// horizon, and its latest plan: a one-line summary, the planned actions
/// and the hot-plugged VFs, as text (empty when the agent does not answer).
fn agent_plan(stream: &mut std::os::unix::net::UnixStream) -> String {
    let mut out = String::new();
    if let Ok(api::Response::Forecast { forecasts, .. }) = api::forecast(stream)
        && let Some(t) = forecast_table(&forecasts)
    {
        out.push_str(&format!("{t}\n"));
    }
    let Ok(api::Response::Plan { plan, host, .. }) = api::plan(stream) else {
        return out;
    };
    if let Ok(plan) = serde_json::from_value::<vpm::scheduler::Plan>(plan) {
        out.push_str(&format!(
            "plan: {} action(s), {} deferred, {} recommendation(s) (`vpm plan` for all)\n",
            plan.actions.len(),
            plan.deferred.len(),
            plan.recommendations.len()
        ));
        if let Some(t) = super::plan::actions_table(&plan, 5) {
            out.push_str(&format!("{t}\n"));
        }
    }
    if let Some(t) = super::plan::attachments(&host) {
        out.push_str(&format!("{t}\n"));
    }
    out
}

/// Whether the top view shows forecasts of `resource`: CPU, memory and the
/// VFs of each managed PF.
fn shown_forecast(resource: &str) -> bool {
    resource == "cpu" || resource == "mem_bytes" || resource.starts_with("vfs:")
}

/// Per VM, the forecasts of [`shown_forecast`] resources at the longest
/// horizon; `None` when there are none.
fn forecast_table(forecasts: &[api::ForecastEntry]) -> Option<Table> {
    let mut longest: BTreeMap<(&str, &str), &api::ForecastEntry> = BTreeMap::new();
    for f in forecasts.iter().filter(|f| shown_forecast(&f.resource)) {
        let e = longest.entry((&f.vm, &f.resource)).or_insert(f);
        if f.horizon_s > e.horizon_s {
            *e = f;
        }
    }
    if longest.is_empty() {
        return None;
    }
    let mut t = new_table(["FORECAST", "RESOURCE", "IN", "PREDICTED", "UPPER", "MODEL"]);
    for ((vm, resource), f) in longest {
        let value = |x: f64| match resource {
            "cpu" => format!("{:.1} %", x * 100.0),
            "mem_bytes" => output::bytes(Some(x)),
            _ => format!("{x:.2} VFs"),
        };
        t.add_row(vec![
            Cell::new(vm),
            Cell::new(resource),
            Cell::new(format!("{:.0} s", f.horizon_s)),
            Cell::new(value(f.predicted)),
            Cell::new(value(f.upper)),
            Cell::new(&f.model),
        ]);
    }
    Some(t)
}

/// One VM × PCI device line of the VFIO / PCI table.
#[derive(Debug, Default, PartialEq)]
struct PciLine {
    read_per_s: f64,
    write_per_s: f64,
    rw_bytes: u64,
    ioctl_per_s: f64,
    irq_per_s: f64,
    /// Power and SR-IOV events over the window, by label.
    events: BTreeMap<String, u64>,
}

/// The label of a power or SR-IOV event (`None` for the rate kinds).
fn event_label(kind: &str, key: &str) -> Option<String> {
    let detail = key.split_once('/').map(|(_, d)| d);
    Some(match kind {
        "rpm_suspend" => "suspend".to_owned(),
        "rpm_resume" => "resume".to_owned(),
        "pci_power" => format!("set {}", detail.unwrap_or("?")),
        "sriov_numvfs" => "numvfs write".to_owned(),
        "vf_add" => "VF added".to_owned(),
        _ => return None,
    })
}

/// Groups every VFIO/PCI device line of `report` by (VM, PCI address).
fn pci_lines(report: &WindowReport) -> BTreeMap<(String, u32, String), PciLine> {
    let mut lines: BTreeMap<(String, u32, String), PciLine> = BTreeMap::new();
    for vm in &report.vms {
        for d in &vm.devices {
            let is_pci = EventKind::ALL
                .iter()
                .any(|k| k.is_pci() && k.name() == d.kind);
            if !is_pci {
                continue;
            }
            let device = d.pci.clone().unwrap_or_else(|| "unknown".to_owned());
            let line = lines.entry((vm.vm.clone(), vm.pid, device)).or_default();
            match d.kind.as_str() {
                "vfio_read" => {
                    line.read_per_s += d.per_s;
                    line.rw_bytes += d.bytes;
                }
                "vfio_write" => {
                    line.write_per_s += d.per_s;
                    line.rw_bytes += d.bytes;
                }
                "vfio_ioctl" => line.ioctl_per_s += d.per_s,
                "vfio_intx" | "vfio_msi" => line.irq_per_s += d.per_s,
                kind => {
                    if let Some(label) = event_label(kind, &d.key) {
                        *line.events.entry(label).or_default() += d.count;
                    }
                }
            }
        }
    }
    lines
}

fn rate(v: f64) -> String {
    if v == 0.0 {
        "-".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The VFIO / PCI table of `vpm top`, if the window had any such activity.
fn pci_table(report: &WindowReport) -> Option<Table> {
    let lines = pci_lines(report);
    if lines.is_empty() {
        return None;
    }
    let mut t = new_table([
        "VM",
        "PID",
        "VFIO/PCI DEVICE",
        "READ/s",
        "WRITE/s",
        "R+W B/s",
        "IOCTL/s",
        "IRQ/s",
        "POWER / SR-IOV (events in window)",
    ]);
    for ((vm, pid, device), l) in &lines {
        let bytes_per_s = if report.window_s > 0.0 {
            l.rw_bytes as f64 / report.window_s
        } else {
            0.0
        };
        let events: Vec<String> = l.events.iter().map(|(k, n)| format!("{k} {n}")).collect();
        t.add_row([
            Cell::new(vm),
            Cell::new(pid),
            Cell::new(device),
            Cell::new(rate(l.read_per_s)),
            Cell::new(rate(l.write_per_s)),
            Cell::new(rate(bytes_per_s)),
            Cell::new(rate(l.ioctl_per_s)),
            Cell::new(rate(l.irq_per_s)),
            Cell::new(if events.is_empty() {
                "-".to_owned()
            } else {
                events.join(", ")
            }),
        ]);
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpm::report::{DeviceReport, HostReport, VmReport};

    fn line(kind: &str, key: &str, pci: Option<&str>, count: u64, bytes: u64) -> DeviceReport {
        DeviceReport {
            kind: kind.to_owned(),
            key: key.to_owned(),
            count,
            bytes,
            per_s: count as f64 / 2.0,
            pci: pci.map(str::to_owned),
        }
    }

    fn vm(name: &str, pid: u32, devices: Vec<DeviceReport>) -> VmReport {
        VmReport {
            vm: name.to_owned(),
            pid,
            uuid: None,
            vmm: "qemu".to_owned(),
            events: BTreeMap::new(),
            rates: BTreeMap::new(),
            devices,
            host: HostReport::default(),
            exit_time_hist: Vec::new(),
        }
    }

    const VF: &str = "0000:01:00.1";

    #[test]
    fn pci_lines_group_by_vm_and_device() {
        let report = WindowReport {
            window_s: 2.0,
            vms: vec![
                vm(
                    "web",
                    10,
                    vec![
                        line("pio", "0x3f8", None, 100, 100),
                        line("vfio_read", VF, Some(VF), 8, 32),
                        line("vfio_write", VF, Some(VF), 2, 8),
                        line("vfio_ioctl", VF, Some(VF), 4, 0),
                        line("vfio_msi", "0000:01:00.1/irq37", Some(VF), 6, 0),
                        line("rpm_resume", VF, Some(VF), 1, 0),
                        line("pci_power", "0000:01:00.1/D0", Some(VF), 1, 0),
                    ],
                ),
                vm(
                    "kernel",
                    0,
                    vec![
                        line("rpm_suspend", VF, Some(VF), 2, 0),
                        line("vfio_msi", "unknown/irq40", None, 1, 0),
                    ],
                ),
            ],
        };
        let lines = pci_lines(&report);
        assert_eq!(lines.len(), 3, "{lines:?}");
        let web = &lines[&("web".to_owned(), 10, VF.to_owned())];
        assert_eq!(web.read_per_s, 4.0);
        assert_eq!(web.write_per_s, 1.0);
        assert_eq!(web.rw_bytes, 40);
        assert_eq!(web.ioctl_per_s, 2.0);
        assert_eq!(web.irq_per_s, 3.0);
        assert_eq!(web.events["resume"], 1);
        assert_eq!(web.events["set D0"], 1);
        let kernel = &lines[&("kernel".to_owned(), 0, VF.to_owned())];
        assert_eq!(kernel.events["suspend"], 2);
        assert!(lines.contains_key(&("kernel".to_owned(), 0, "unknown".to_owned())));

        let text = pci_table(&report).expect("a table").to_string();
        assert!(text.contains("VFIO/PCI DEVICE"), "{text}");
        assert!(text.contains("resume 1, set D0 1"), "{text}");
        assert!(text.contains("20.0"), "bytes/s: {text}");
    }

    #[test]
    fn no_pci_activity_no_table() {
        let report = WindowReport {
            window_s: 1.0,
            vms: vec![vm("a", 1, vec![line("pio", "0x80", None, 1, 1)])],
        };
        assert!(pci_table(&report).is_none());
    }
}
