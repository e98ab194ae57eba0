//! Latency of vpm's device actions on a real kernel: VF creation and removal,
//! binding to vfio-pci, park (→ D3hot), wake (→ D0), a VM's VFIO open of a
//! parked VF, and hot-plugging a VF into a running QEMU and back (QMP). Runs
//! inside the lab guest (Debian's kernel in QEMU with an
//! emulated SR-IOV NVMe); `cargo xtask bench hal` boots it and writes the
//! `## hal` section of BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use vpm::executor::{self, Action, ApplyOptions, Roots};
use vpm::hal::{Bdf, PowerControl, PowerState, Sysfs};
use vpm::policy::Policy;
use vpm_tests::qemu::{LAB_FIRMWARE, Qemu};

/// Measures the latency of vpm's device actions in the lab guest.
#[derive(Parser)]
#[command(name = "bench-hal")]
struct Args {
    /// A short smoke pass (two cycles; checks, not figures).
    #[arg(long)]
    smoke: bool,
    /// Write the Markdown section to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// The commit measured (the guest has no git).
    #[arg(long, default_value = "unknown")]
    commit: String,
    /// The command that ran the bench, for the report.
    #[arg(long, default_value = "cargo xtask bench hal")]
    command: String,
    /// What runs the guest (QEMU accelerator, host CPU), for the report.
    #[arg(long, default_value = "QEMU")]
    host: String,
    /// When the bench ran (the guest's clock starts at boot).
    #[arg(long, default_value = "")]
    date: String,
}

const PF: &str = "0000:01:00.0";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The inner VM's QMP socket.
const QMP: &str = "/run/vpm-bench-qmp.sock";

/// Timings of one transition, in milliseconds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e3);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(f64::NAN)
    }
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let out = f()?;
    Ok((out, started.elapsed()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var("VPM_LAB").as_deref() != Ok("1") {
        bail!(
            "bench-hal changes PCI devices: run it with `cargo xtask bench hal` (it boots the lab guest)"
        );
    }
    let cycles = if args.smoke { 2 } else { 20 };
    let sys = Sysfs::host();
    let pf: Bdf = PF.parse()?;
    let roots = Roots::host();
    let policy = Policy::parse(
        &format!(
            "[devices]\nallow = [\"{PF}\"]\n[classes.bench]\nhotplug = true\n\
             [vms]\ndefault = \"bench\"\n"
        ),
        "bench".as_ref(),
    )?;
    let opts = ApplyOptions::default();
    let _ = std::fs::remove_file(QMP);
    let vm = Qemu::builder("bench-vm")
        .args(["-monitor", "none"])
        .bios(LAB_FIRMWARE)
        .args(["-device", "pcie-root-port,id=rp1,chassis=1,slot=1,addr=0x2"])
        .native_hotplug()
        .qmp(Path::new(QMP))
        .start()?;
    let hv = vpm::connect::QmpHotplug::new("/proc", policy.hotplug.clone());
    let act = |action| {
        executor::execute_with(&roots, Some(&hv), Some(&policy), action, true, &opts, None)
    };
    let bench_vm = vpm::executor::VmRef {
        name: "bench-vm".into(),
        pid: vm.pid(),
    };

    let names = [
        "create 4 VFs (sriov_numvfs 0 → 4)",
        "resize 4 → 2 VFs (through 0)",
        "remove 2 VFs (sriov_numvfs 2 → 0)",
        "bind a VF to vfio-pci",
        "park: power/control=auto → D3hot",
        "wake: power/control=on → D0",
        "VFIO open of a parked VF (D3hot → D0)",
        "attach to a running VM (wake, QMP device_add, holder seen)",
        "detach (QMP device_del until DEVICE_DELETED, holder gone, park)",
    ];
    let mut samples: Vec<Samples> = names.iter().map(|_| Samples::default()).collect();

    sys.set_sriov_numvfs(pf, 0, TIMEOUT)?;
    sys.set_sriov_drivers_autoprobe(pf, false)?;
    for cycle in 0..cycles {
        let (_, d) = timed(|| Ok(act(Action::SetVfs { pf, count: 4 })?))?;
        samples[0].push(d);
        let vf = sys
            .virtfns(pf)?
            .first()
            .map(|(_, b)| *b)
            .context("no VF after creating 4")?;

        let (_, d) = timed(|| Ok(sys.bind_driver(vf, "vfio-pci", TIMEOUT)?))?;
        samples[3].push(d);

        // Wake first: a VF bound to vfio-pci idles into D3hot by itself.
        let (_, d) = timed(|| Ok(act(Action::Wake { bdf: vf })?))?;
        samples[5].push(d);
        let (_, d) = timed(|| Ok(act(Action::Park { bdf: vf })?))?;
        samples[4].push(d);
        if sys.power_state(vf)? != Some(PowerState::D3Hot) {
            bail!("cycle {cycle}: {vf} not in D3hot after park");
        }

        let (device, d) = timed(|| {
            let device = vpm_tests::vfio::VfioDevice::open(&vf.to_string())?;
            // Opening resumes the device; wait until the kernel says D0.
            executor::apply::wait_for(&roots, vf, PowerState::D0, TIMEOUT)?;
            Ok(device)
        })?;
        samples[6].push(d);
        drop(device);
        sys.set_power_control(vf, PowerControl::Auto, TIMEOUT)?;

        let (_, d) = timed(|| {
            Ok(act(Action::Attach {
                vm: bench_vm.clone(),
                vf,
            })?)
        })?;
        samples[7].push(d);
        let (_, d) = timed(|| {
            Ok(act(Action::Detach {
                vm: bench_vm.clone(),
                vf,
            })?)
        })?;
        samples[8].push(d);

        let (_, d) = timed(|| Ok(act(Action::SetVfs { pf, count: 2 })?))?;
        samples[1].push(d);
        let (_, d) = timed(|| Ok(act(Action::SetVfs { pf, count: 0 })?))?;
        samples[2].push(d);
        eprintln!("bench-hal: cycle {}/{cycles} done", cycle + 1);
    }

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut md = String::new();
    let _ = writeln!(md, "## hal\n");
    let _ = writeln!(
        md,
        "Command `{}` · commit `{}` · {} · guest kernel {} ({}) · {cycles} cycles\n",
        args.command,
        args.commit,
        args.date,
        kernel.trim(),
        args.host
    );
    if args.smoke {
        let _ = writeln!(
            md,
            "**Smoke pass**: two cycles; it checks that every step runs, its figures are not measurements.\n"
        );
    }
    let _ = writeln!(
        md,
        "Each action goes through vpm's executor as `vpm pci … --apply` does (facts gathered, \
         safety rules checked, sysfs written and read back, the power state polled every 5 ms \
         until the kernel reports it) on PF {PF} (QEMU's emulated NVMe, 1b36:0010) in the lab \
         guest. Emulated hardware under TCG: the figures show the kernel's and vpm's path, \
         not a real NIC's firmware (real VF creation can take seconds).\n"
    );
    let _ = writeln!(md, "| transition | median ms | p95 ms | min ms | max ms |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (name, s) in names.iter().zip(&samples) {
        let _ = writeln!(
            md,
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            s.quantile(0.5),
            s.quantile(0.95),
            s.quantile(0.0),
            s.quantile(1.0)
        );
    }
    let _ = writeln!(
        md,
        "\nRemoving VFs costs most: each VF is unbound and deleted in turn (a resize \
         is a removal plus a creation). Parking is fast because vfio-pci lets runtime PM \
         suspend an idle VF at once; a VFIO open resumes it before the open returns. \
         Attach and detach go through `vpm vm attach|detach`'s path (executor, QMP client) \
         against a QEMU run inside the guest (TCG, 64 MiB, the lab's firmware, one \
         `pcie-root-port` with native hot-plug): most of an attach is QEMU realizing the \
         `vfio-pci` device; a detach waits for `DEVICE_DELETED`, then parks the VF."
    );
    match &args.markdown {
        Some(path) => {
            std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{md}"),
    }
    Ok(())
}
