//! Command-line interface: one file per subcommand.

mod devices;
mod eval;
mod forecast;
pub(crate) mod output;
mod pci;
mod plan;
mod record;
mod run;
mod top;
mod vm;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vpm::monitor::MonitorOptions;
use vpm::telemetry::LoadOptions;

/// vpm watches every KVM virtual machine's peripheral activity (port and MMIO
/// exits, interrupts, CPU, memory, network, disk), counted in the kernel by
/// eBPF, exactly and cheaply.
///
/// Needs root (or CAP_BPF + CAP_PERFMON) and a kernel with the kvm tracepoints.
#[derive(Parser)]
#[command(
    name = "vpm",
    version,
    about,
    long_about,
    propagate_version = true,
    after_help = "Examples:
  vpm top                                        live view (Ctrl-C quits)
  vpm top --once --duration 10s --output json    one report over 10 s
  vpm record --duration 60s -o samples.csv       per-tick samples, long CSV
  vpm run                                        the agent (socket + periodic CSV exports)
  vpm forecast -i samples.csv --horizon 60s -o forecast.csv
  vpm eval -i samples.csv --horizons 10s,60s --output json
  vpm devices                                    PCI inventory: SR-IOV, power, IOMMU, holders
  vpm pci set-vfs 0000:01:00.0 4                 dry run; add --apply to act
  vpm run --policy /etc/vpm/policy.toml --apply  the closed loop, acting
  vpm plan                                       the agent's current plan
  vpm vm list                                    QEMU VMs, monitors, hot-plugged VFs, ports
  vpm vm attach web-1 0000:3b:00.2               dry run; add --apply to hot-plug

The CSV and JSON formats are documented in the README."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Live per-VM view, refreshed every tick (like kvm_stat); `--once` for a batch report.
    ///
    /// Talks to a running `vpm run` agent when one listens on the socket,
    /// else attaches its own eBPF programs for as long as it runs.
    Top(top::TopArgs),
    /// Record per-VM samples in vpm's long CSV format (`timestamp,vm,pid,resource,value`).
    Record(record::RecordArgs),
    /// The agent: collect every tick, serve live inspection on a Unix socket,
    /// forecast, plan (and act, with --apply), and export telemetry, forecast,
    /// plan, action and recommendation CSV files periodically.
    Run(run::RunArgs),
    /// Forecast every series of a telemetry CSV file (forecast CSV out).
    Forecast(forecast::ForecastArgs),
    /// Rolling-origin evaluation of every model and baseline on a telemetry CSV file.
    ///
    /// Scores the last quarter of each series: WAPE, MAE, pinball loss of the
    /// upper bound, under-provision rate and slack, and which model vpm's own
    /// selection picked (judged out of sample, not the best in hindsight).
    Eval(eval::EvalArgs),
    /// PCI inventory (like `lspci -nn`): names, driver, SR-IOV VFs, power state,
    /// IOMMU group, and which VM (process) holds each function through VFIO.
    Devices(devices::DevicesArgs),
    /// Act on a PCI device (VFs, park in D3hot, wake to D0) with vpm's safety
    /// checks and the policy's allow-list; a dry run unless `--apply`.
    #[command(after_help = "Examples:
  vpm pci set-vfs 0000:3b:00.0 4               dry run: what it would write, and why
  vpm pci set-vfs 0000:3b:00.0 4 --apply       create 4 VFs (root)
  vpm pci park 0000:3b:00.2 --apply            bind to vfio-pci, let it sleep in D3hot
  vpm pci wake 0000:3b:00.2 --apply            back to D0")]
    Pci(pci::PciArgs),
    /// The running agent's current plan: device actions with their reasons,
    /// what was deferred and why, and per-VM CPU/memory recommendations.
    Plan(plan::PlanArgs),
    /// QEMU VMs, their QMP monitors and hot-plugged VFs; hot-plug a VF into
    /// a running VM or take it back (QMP device_add / device_del), with
    /// vpm's safety checks; a dry run unless `--apply`.
    #[command(after_help = "Examples:
  vpm vm list --output json
  vpm vm attach web-1 0000:3b:00.2             dry run: the port it would use
  vpm vm attach web-1 0000:3b:00.2 --apply     wake, device_add, check the VM holds it
  vpm vm detach web-1 0000:3b:00.2 --apply     device_del, wait for DEVICE_DELETED, park")]
    Vm(vm::VmArgs),
}

/// Where the kernel's file systems are (hidden: for tests and containers).
#[derive(Args, Clone)]
pub struct RootArgs {
    /// sysfs root.
    #[arg(long, default_value = "/sys", value_name = "DIR", hide = true)]
    pub sys_root: PathBuf,
    /// procfs root.
    #[arg(long, default_value = "/proc", value_name = "DIR", hide = true)]
    pub proc_root: PathBuf,
    /// devtmpfs root.
    #[arg(long, default_value = "/dev", value_name = "DIR", hide = true)]
    pub dev_root: PathBuf,
}

/// The options of the commands that act on devices (`vpm pci`, `vpm vm`).
#[derive(Args)]
pub struct ActArgs {
    /// Carry the action out (without it vpm only says what it would do).
    #[arg(long, global = true)]
    pub apply: bool,
    /// The policy file: its [devices] allow list says what vpm may touch
    /// (and, for `vpm vm`, [hotplug] and the classes that take hot-plugged VFs).
    #[arg(long, global = true, default_value = vpm::policy::DEFAULT_PATH, value_name = "FILE")]
    pub policy: PathBuf,
    /// Output format of the report.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: output::Format,
    /// vpm's state directory: the journal of applied actions lives there.
    #[arg(long, global = true, default_value = vpm::executor::journal::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Longest to wait for the power state (and, for `vpm vm`, for the VM's
    /// process to open or close the VF).
    #[arg(long, global = true, default_value = "10s", value_parser = duration)]
    pub settle_timeout: Duration,
    #[command(flatten)]
    pub roots: RootArgs,
}

impl ActArgs {
    /// Checks, journals (with `--apply`) and carries out or describes
    /// `action` through `hotplug` (for VM actions), then prints the report.
    pub fn act(
        &self,
        action: vpm::executor::Action,
        policy: Option<&vpm::policy::Policy>,
        hotplug: Option<&dyn vpm::executor::Hotplug>,
        opts: &vpm::executor::ApplyOptions,
    ) -> anyhow::Result<()> {
        let roots = self.roots.roots();
        vpm::executor::check_privileges(&action, self.apply)?;
        // Acting is journaled; an action a crash interrupted is resolved first.
        let mut journal = if self.apply {
            Some(pci::open_journal(&self.state_dir, &roots, hotplug)?)
        } else {
            None
        };
        let report = vpm::executor::execute_with(
            &roots,
            hotplug,
            policy,
            action,
            self.apply,
            opts,
            journal.as_mut(),
        )?;
        pci::print(&report, self.output == output::Format::Json)
    }
}

impl RootArgs {
    fn roots(&self) -> vpm::executor::Roots {
        vpm::executor::Roots {
            sys: vpm::hal::Sysfs::new(&self.sys_root),
            proc: self.proc_root.clone(),
            dev: self.dev_root.clone(),
        }
    }
}

/// A telemetry file to read.
#[derive(Args, Clone)]
pub struct InputArgs {
    /// Telemetry CSV in vpm's long format (`timestamp,vm,pid,resource,value`;
    /// timestamps in unix seconds or RFC 3339).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// Model step; default: the median interval between a series' samples.
    #[arg(long, value_parser = duration)]
    pub step: Option<Duration>,
    /// Read negative values as 0 instead of refusing the file.
    #[arg(long)]
    pub clamp_negative: bool,
}

impl InputArgs {
    fn load(&self) -> anyhow::Result<vpm::offline::Loaded> {
        use vpm::store::input::{NegativeValues, ReadOptions};
        let read = ReadOptions {
            negative: if self.clamp_negative {
                NegativeValues::ClampToZero
            } else {
                NegativeValues::Reject
            },
            ..ReadOptions::default()
        };
        Ok(vpm::offline::load(
            &self.input,
            self.step.map(|d| d.as_secs_f64()),
            &read,
        )?)
    }
}

/// A comma-separated list of durations (`10s,60s`).
#[derive(Clone, Debug)]
pub struct Durations(pub Vec<Duration>);

impl Durations {
    /// In seconds.
    pub fn seconds(&self) -> Vec<f64> {
        self.0.iter().map(Duration::as_secs_f64).collect()
    }
}

fn durations(s: &str) -> Result<Durations, String> {
    s.split(',')
        .map(|p| duration(p.trim()))
        .collect::<Result<_, _>>()
        .map(Durations)
}

/// Where the kernel interfaces are and how often to read them.
#[derive(Args, Clone)]
pub struct CollectArgs {
    /// Tick: how often the counters are read (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub interval: Duration,
    /// tracefs mount point (vpm mounts tracefs at the default path if it is missing).
    #[arg(long, default_value = vpm::telemetry::DEFAULT_TRACEFS, value_name = "DIR")]
    pub tracefs: PathBuf,
    /// Kernel BTF; without it vpm falls back from BTF to raw tracepoints.
    #[arg(long, default_value = vpm::telemetry::DEFAULT_BTF, value_name = "FILE")]
    pub btf: PathBuf,
    /// procfs root (for tests and containers).
    #[arg(long, default_value = "/proc", value_name = "DIR", hide = true)]
    pub proc_root: PathBuf,
    /// sysfs root (for tests and containers).
    #[arg(long, default_value = "/sys", value_name = "DIR", hide = true)]
    pub sys_root: PathBuf,
}

impl CollectArgs {
    fn monitor_options(&self) -> MonitorOptions {
        MonitorOptions {
            load: LoadOptions {
                mount_tracefs: self.tracefs
                    == std::path::Path::new(vpm::telemetry::DEFAULT_TRACEFS),
                tracefs: self.tracefs.clone(),
                btf: self.btf.clone(),
            },
            proc_root: self.proc_root.clone(),
            sys_root: self.sys_root.clone(),
        }
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = vpm::units::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Top(args) => top::run(&args),
        Command::Record(args) => record::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Forecast(args) => forecast::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Devices(args) => devices::run(&args),
        Command::Pci(args) => pci::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Vm(args) => vm::run(&args),
    }
}

/// Current wall-clock time in unix seconds.
pub fn unix_now() -> f64 {
    vpm::units::unix_now()
}

/// Sleeps until `deadline`, returning early when `stop` is set.
pub fn sleep_until(deadline: std::time::Instant, stop: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        let now = std::time::Instant::now();
        if now >= deadline {
            return;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

/// A flag set by SIGINT/SIGTERM.
pub fn stop_flag() -> &'static std::sync::atomic::AtomicBool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::Relaxed);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    &STOP
}
