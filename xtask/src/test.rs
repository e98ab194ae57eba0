//! `cargo xtask test`: set up, then run every test.
//!
//! 1. unit tests of every crate but the eBPF one (`cargo test --workspace --exclude vpm-ebpf --lib --bins`);
//! 2. the privileged integration tests in `tests/` (root, /dev/kvm, BPF), one
//!    at a time because they share the kernel's tracepoints;
//! 3. the lab: the hardware tests in a QEMU guest (`cargo xtask vm-test`);
//! 4. a smoke pass of every benchmark (`cargo xtask bench <name> --smoke`).
//!
//! A missing prerequisite fails loudly (not root: before any build).
//! `VPM_SKIP_PRIVILEGED=1` is the only way to skip steps 2–4, everything that
//! needs root or KVM (for a machine without them); it is said in the output.

use anyhow::bail;

use crate::util::{self, is_root};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Options {
    /// Extra arguments for the test binaries (a filter, `--nocapture`, …).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The integration tests that run on the host: every `tests/tests/*.rs` but the
/// lab's guest-side `lab_*` targets (they need the `lab` feature and run in
/// the QEMU guest; `--test '*'` would refuse them for the missing feature).
fn host_test_targets() -> anyhow::Result<Vec<String>> {
    let dir = util::workspace_root().join("tests/tests");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".rs")?.to_owned();
            (!stem.starts_with("lab_")).then_some(stem)
        })
        .collect();
    names.sort();
    Ok(names)
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let skip = std::env::var("VPM_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    // Before any build: a run that would fail at step 2 fails now.
    if !skip && !is_root() {
        bail!(
            "the privileged tests need root (BPF, /dev/kvm): run `{}`, or set \
             VPM_SKIP_PRIVILEGED=1 to run only the unit tests",
            util::as_root("test")
        );
    }
    crate::setup::run(&crate::setup::Options::default())?;
    let started = std::time::Instant::now();
    let mut unit = util::cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "vpm-ebpf",
        "--lib",
        "--bins",
        "--",
    ])
    .args(&opts.args);
    util::run(&mut unit)?;
    eprintln!("xtask: unit tests took {:.0?}", started.elapsed());

    if skip {
        eprintln!(
            "xtask: VPM_SKIP_PRIVILEGED=1: SKIPPING the privileged tests, the lab guest tests \
             and the benchmark smoke passes (they need root, /dev/kvm, BPF): only the unit \
             tests ran"
        );
        return Ok(());
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        bail!(
            "/dev/kvm not found: the privileged tests run real KVM guests; load kvm_intel or \
             kvm_amd, or set VPM_SKIP_PRIVILEGED=1 to run only the unit tests"
        );
    }
    let started = std::time::Instant::now();
    // The tests drive the `vpm` and `vpm-testvm` binaries.
    // `--workspace` everywhere: the same feature set as the unit-test build, so
    // nothing (polars above all) is compiled a second time.
    util::run(util::cargo().args(["build", "--workspace", "--exclude", "vpm-ebpf", "--bins"]))?;
    let mut privileged = util::cargo();
    privileged.args(["test", "--workspace", "--exclude", "vpm-ebpf"]);
    for name in host_test_targets()? {
        privileged.args(["--test", &name]);
    }
    privileged.args(["--", "--test-threads=1"]).args(&opts.args);
    util::run(&mut privileged)?;
    eprintln!("xtask: privileged tests took {:.0?}", started.elapsed());

    // The hardware actions (SR-IOV, VFIO, power states) on a real kernel in QEMU.
    let started = std::time::Instant::now();
    crate::lab::run(&crate::lab::Options {
        accel: crate::lab::Accel::Tcg,
        timeout: 900,
        tests: Vec::new(),
        args: Vec::new(),
    })?;
    eprintln!("xtask: lab guest tests took {:.0?}", started.elapsed());

    // A short smoke pass of every benchmark, so they keep working (figures are
    // not written: `cargo xtask bench <name>` does that).
    let started = std::time::Instant::now();
    for name in crate::bench::BENCHMARKS {
        crate::bench::run(&crate::bench::Options {
            name: (*name).to_owned(),
            smoke: true,
        })?;
    }
    eprintln!(
        "xtask: benchmark smoke passes took {:.0?}",
        started.elapsed()
    );
    Ok(())
}
