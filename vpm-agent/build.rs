//! Builds `vpm-ebpf` for the BPF target and leaves the object in `OUT_DIR/vpm`,
//! where `telemetry` embeds it.
//!
//! The eBPF build needs `-Z build-std=core`. Rather than a nightly toolchain, it
//! uses the pinned stable one with `RUSTC_BOOTSTRAP=1` set for that nested build
//! only: setting it for the whole workspace would rebuild every crate whenever it
//! toggles. `cargo xtask setup` installs what this needs (rust-src, bpf-linker).
use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../vpm-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .context("the vpm-ebpf path is not UTF-8")?
        .to_owned();
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    if which_bpf_linker().is_none() && std::env::var_os("AYA_BUILD_SKIP").is_none() {
        bail!(
            "bpf-linker not found on PATH; run `cargo xtask setup` (it installs LLVM 22 and \
             bpf-linker 0.13 built for it)"
        );
    }
    // SAFETY: build scripts are single-threaded; the variable only reaches the
    // nested eBPF build that aya-build spawns.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "vpm-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context(
        "building the eBPF programs (vpm-ebpf) failed; `cargo xtask setup` installs what it needs",
    )
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bpf-linker"))
        .find(|candidate| candidate.is_file())
}
