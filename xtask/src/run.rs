//! `cargo xtask run`: set up, build, and start `vpm run` as root.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, is_root};

/// Options of `cargo xtask run`.
#[derive(clap::Args)]
pub struct Options {
    /// Build in release mode (slower to build, lighter agent).
    #[arg(long)]
    pub release: bool,
    /// Start the built-in demo (real KVM guests with scripted device use, a
    /// simulated SR-IOV PF) even if the host has VMs or SR-IOV devices.
    #[arg(long, conflicts_with = "no_demo")]
    pub demo: bool,
    /// Never start the demo (by default it starts when the host has no VM and
    /// no SR-IOV device).
    #[arg(long)]
    pub no_demo: bool,
    /// Arguments passed to `vpm run` (after `--`), e.g. `-- --interval 2s`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // Before any build: how vpm will get root.
    if !is_root() && !util::on_path("sudo") {
        bail!(
            "vpm needs root (CAP_BPF, CAP_PERFMON) to load its eBPF programs and sudo is not \
             installed: run `cargo xtask run` as root, or install sudo (`apt-get install sudo`)"
        );
    }
    crate::setup::run(&crate::setup::Options::default())?;
    let mut build = util::cargo();
    // The same feature set as `cargo xtask test`, so the two share one build.
    build.args(["build", "--workspace", "--exclude", "vpm-ebpf", "--bins"]);
    if opts.release {
        build.arg("--release");
    }
    util::run(&mut build)?;
    let profile = if opts.release { "release" } else { "debug" };
    let vpm = util::workspace_root()
        .join("target")
        .join(profile)
        .join("vpm");
    let mut cmd = if is_root() {
        Command::new(&vpm)
    } else {
        eprintln!("xtask: vpm needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs; using sudo");
        let mut c = Command::new("sudo");
        c.arg(&vpm);
        c
    };
    cmd.arg("run").args(&opts.args);
    let passed = |flag: &str| {
        opts.args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    let demo = if passed("--demo") {
        // Already on vpm's command line.
        false
    } else if opts.demo {
        true
    } else if opts.no_demo {
        false
    } else if passed("--policy") || passed("--apply") {
        // The operator says what to manage: no demo in its place.
        eprintln!(
            "xtask: --policy/--apply given: not starting the built-in demo (it would ignore them)"
        );
        false
    } else {
        let (vms, sriov) = (running_vmms(), sriov_devices());
        let auto = vms == 0 && sriov == 0;
        if auto {
            eprintln!(
                "xtask: no VM and no SR-IOV device on this host: starting vpm's built-in demo \
                 (real KVM guests with scripted device use, a simulated SR-IOV PF; --no-demo \
                 prevents it)"
            );
        }
        auto
    };
    if demo {
        cmd.arg("--demo");
    }
    eprintln!("xtask: $ {}", util::display(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", vpm.display()))?;
    if !status.success() {
        bail!("vpm run exited with {status}");
    }
    Ok(())
}

/// VMM processes running (QEMU, cloud-hypervisor, firecracker, the test VMM).
fn running_vmms() -> usize {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
            let name = argv0.rsplit(|b| *b == b'/').next().unwrap_or_default();
            name.starts_with(b"qemu-system-")
                || [
                    &b"qemu-kvm"[..],
                    b"kvm",
                    b"cloud-hypervisor",
                    b"firecracker",
                    b"vpm-testvm",
                ]
                .contains(&name)
        })
        .count()
}

/// PCI functions with SR-IOV (a `sriov_totalvfs` attribute).
fn sriov_devices() -> usize {
    std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("sriov_totalvfs").exists())
                .count()
        })
        .unwrap_or(0)
}
