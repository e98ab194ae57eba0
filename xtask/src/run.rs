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
    /// Arguments passed to `vpm run` (after `--`), e.g. `-- --interval 2s`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
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
    eprintln!("xtask: $ {}", util::display(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", vpm.display()))?;
    if !status.success() {
        bail!("vpm run exited with {status}");
    }
    Ok(())
}
