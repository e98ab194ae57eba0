//! `cargo xtask setup`: check and install every prerequisite, idempotently.
//!
//! What vpm needs beyond the Rust toolchain:
//! - rustc 1.95 (its LLVM 22 must match bpf-linker's);
//! - the `rust-src` component (the eBPF build compiles `core` for the BPF target);
//! - LLVM 22 development packages and bpf-linker 0.13 built against them;
//! - `linux-perf` (the tests' independent oracle and the benchmark's baseline);
//! - `qemu-system-x86`, `busybox-static`, `xz-utils` for the lab guest (`cargo xtask vm-test`).
//!
//! Each step checks first and only installs what is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{self, is_root, output};

/// Options of `cargo xtask setup`.
#[derive(clap::Args, Default)]
pub struct Options {
    /// Only check; install nothing (fails naming what is missing).
    #[arg(long)]
    pub check: bool,
}

/// The rustc release whose LLVM matches bpf-linker's.
const RUSTC_RELEASE: &str = "1.95";
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "linux-perf",
    // The lab (`cargo xtask vm-test`): QEMU, the guest's busybox, xz for the kernel.
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
];

pub fn run(opts: &Options) -> anyhow::Result<()> {
    check_rustc()?;
    ensure_apt_packages(opts.check)?;
    ensure_rust_src(opts.check)?;
    ensure_bpf_linker(opts.check)?;
    eprintln!("xtask: setup complete: prerequisites present");
    Ok(())
}

fn check_rustc() -> anyhow::Result<()> {
    let vv = output(Command::new("rustc").arg("-vV")).context("cannot run `rustc -vV`")?;
    let release = vv
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .unwrap_or("?");
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .unwrap_or("?");
    if !release.starts_with(&format!("{RUSTC_RELEASE}."))
        || !llvm.starts_with(&format!("{LLVM_MAJOR}."))
    {
        bail!(
            "rustc {release} (LLVM {llvm}) found; vpm pins rustc {RUSTC_RELEASE} with LLVM {LLVM_MAJOR}, \
             the LLVM bpf-linker is built against. Install it with \
             `rustup toolchain install {RUSTC_RELEASE}.0` and run `rustup override set {RUSTC_RELEASE}.0` here"
        );
    }
    eprintln!("xtask: rustc {release} (LLVM {llvm}): ok");
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn ensure_apt_packages(check: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages {}: ok", APT_PACKAGES.join(" "));
        return Ok(());
    }
    let cmd = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    if check || !is_root() {
        bail!(
            "missing apt packages: {}; install them with `{cmd}` (as root)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing apt packages: {}", missing.join(" "));
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get update failed; run `{cmd}` by hand"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing apt packages failed; run `{cmd}` by hand"))
}

fn sysroot() -> anyhow::Result<PathBuf> {
    let s = output(Command::new("rustc").args(["--print", "sysroot"]))
        .context("cannot run `rustc --print sysroot`")?;
    Ok(PathBuf::from(s.trim()))
}

fn ensure_rust_src(check: bool) -> anyhow::Result<()> {
    let sysroot = sysroot()?;
    let src = sysroot.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        eprintln!("xtask: rust-src: ok");
        return Ok(());
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let cmd = format!("rustup component add rust-src --toolchain {toolchain}");
    if check {
        bail!(
            "rust-src missing from {}; install it with `{cmd}`",
            sysroot.display()
        );
    }
    eprintln!("xtask: installing rust-src");
    match util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        &toolchain,
    ])) {
        Ok(()) => return Ok(()),
        Err(e) => eprintln!("xtask: {e:#}"),
    }
    // Development and CI machines of this project carry an offline copy beside
    // the checkout (../shared/toolchain); a user's machine does not.
    let fallback = util::workspace_root().join("../shared/toolchain/rust-src-1.95.0.tar.xz");
    if fallback.is_file() {
        eprintln!("xtask: extracting rust-src from {}", fallback.display());
        let dest = sysroot.join("lib/rustlib");
        util::run(
            Command::new("tar")
                .arg("-xJf")
                .arg(&fallback)
                .arg("-C")
                .arg(&dest),
        )?;
        if src.is_dir() {
            return Ok(());
        }
        bail!("{} did not provide {}", fallback.display(), src.display());
    }
    bail!("cannot install rust-src; run `{cmd}` (it needs network access to static.rust-lang.org)")
}

fn bpf_linker_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
        .or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
            let p = home.join("bin/bpf-linker");
            p.is_file().then_some(p)
        })
}

fn ensure_bpf_linker(check: bool) -> anyhow::Result<()> {
    if let Some(path) = bpf_linker_path() {
        let version = output(Command::new(&path).arg("--version")).unwrap_or_default();
        if version.contains(BPF_LINKER_VERSION) {
            eprintln!(
                "xtask: bpf-linker {BPF_LINKER_VERSION} ({}): ok",
                path.display()
            );
            return Ok(());
        }
        eprintln!(
            "xtask: {} reports `{}`; reinstalling {BPF_LINKER_VERSION}",
            path.display(),
            version.trim()
        );
    }
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    let cmd = format!(
        "PATH={llvm_bin}:$PATH cargo install bpf-linker@{BPF_LINKER_VERSION} --locked --force \
         --no-default-features --features llvm-{LLVM_MAJOR}"
    );
    if check {
        bail!("bpf-linker {BPF_LINKER_VERSION} missing; install it with `{cmd}`");
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 3 minutes)"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut new_path = std::ffi::OsString::from(&llvm_bin);
    new_path.push(":");
    new_path.push(path);
    util::run(
        util::cargo()
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("PATH", new_path)
            .env_remove("RUSTC_BOOTSTRAP"),
    )
    .with_context(|| format!("building bpf-linker failed; run `{cmd}` by hand"))
}
