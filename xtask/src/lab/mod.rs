//! `cargo xtask vm-test`: vpm's hardware actions proven on a real kernel.
//!
//! This machine's kernel (and most CI hosts') has no SR-IOV device, no VFIO and no
//! PCI power management to act on, so the lab boots Debian's stock kernel in QEMU
//! with an emulated SR-IOV NVMe controller behind an IOMMU, and runs the guest-side
//! tests (`tests/tests/lab_*.rs`, built with the `lab` feature of `vpm-tests`) inside it:
//!
//! 1. build the guest-side test binary and `vpm`;
//! 2. fetch the kernel package `linux-image-amd64` depends on (cached by version,
//!    see [`kernel`]) and keep the uncompressed kernel and the modules the guest loads;
//! 3. pack an initramfs: busybox (static), the modules, the C libraries the test
//!    binaries link against, and `/init` (`init.sh`);
//! 4. boot QEMU (TCG unless `--accel kvm`), share the workspace over 9p at the same
//!    path, run the tests, and exit with their status. A timeout, a kernel panic
//!    or a guest that stops without a result fails with the serial log's path.
//!
//! Everything lives under `target/lab/`; deleting it rebuilds it.

mod cpio;
mod firmware;
mod kernel;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};

pub use qemu::Accel;

use crate::util::{self, output};

/// Options of `cargo xtask vm-test`.
#[derive(clap::Args)]
pub struct Options {
    /// How QEMU runs the guest: `tcg` works everywhere; `kvm` needs a VMX/SVM host.
    #[arg(long, value_enum, default_value = "tcg")]
    pub accel: Accel,
    /// Limit for the whole guest run, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Run only these guest-side test targets (default: all of them).
    #[arg(long = "test", value_name = "TARGET")]
    pub tests: Vec<String>,
    /// Extra arguments for the guest-side test binary (a filter, `--nocapture`, …).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Modules the guest loads (with their dependencies): the SR-IOV NVMe PF's
/// driver, VFIO, 9p for the workspace, and the virtio devices the host-driver
/// checks are tested on.
const GUEST_MODULES: &[&str] = &[
    // kvm.ko alone (no VMX under TCG) registers the kvm tracepoints `vpm run` attaches to.
    "kvm",
    "nvme",
    "vfio",
    "vfio_iommu_type1",
    "vfio_pci",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "9pnet_virtio",
    "9p",
    "ext4",
    // ext4 asks the crypto API for crc32c at mount time, not through a module dependency.
    "crc32c_generic",
];

/// The guest-side test targets (`[[test]]`s of `vpm-tests` with `required-features = ["lab"]`).
const LAB_TESTS: &[&str] = &["lab_hal", "lab_telemetry", "lab_connect", "lab_loop"];

/// The inner QEMU the hot-plug tests run in the guest: the host's binary, the
/// TCG accelerator Debian builds as a module, and the option ROM it loads.
const INNER_QEMU: &str = "/usr/bin/qemu-system-x86_64";
const INNER_QEMU_FILES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so",
    "/usr/share/qemu/kvmvapic.bin",
];
/// Where the inner VMs' firmware ([`firmware`]) is in the guest.
pub const INNER_FIRMWARE: &str = "/usr/share/vpm-lab/firmware.bin";
/// Its busy variant (spins instead of halting).
pub const INNER_FIRMWARE_BUSY: &str = "/usr/share/vpm-lab/firmware-busy.bin";

pub fn run(opts: &Options) -> anyhow::Result<()> {
    crate::setup::run(&crate::setup::Options::default())?;
    if !util::is_root() {
        bail!(
            "the lab boots QEMU with a 9p share of the workspace: run `{}`",
            util::as_root("vm-test")
        );
    }
    let targets: Vec<&str> = if opts.tests.is_empty() {
        LAB_TESTS.to_vec()
    } else {
        for t in &opts.tests {
            if !LAB_TESTS.contains(&t.as_str()) {
                bail!(
                    "no lab test target `{t}`; there are: {}",
                    LAB_TESTS.join(", ")
                );
            }
        }
        opts.tests.iter().map(String::as_str).collect()
    };
    let exes = build_lab_tests(&targets)?;
    // Every target runs, even after a failure; the first failing status is kept.
    let mut script = String::from("export RUST_BACKTRACE=1 VPM_LAB=1\nstatus=0\n");
    for exe in &exes {
        script.push_str(&shell_quote(&exe.to_string_lossy()));
        script.push_str(" --test-threads=1");
        for arg in &opts.args {
            script.push(' ');
            script.push_str(&shell_quote(arg));
        }
        script.push_str(" || { rc=$?; [ $status -eq 0 ] && status=$rc; }\n");
    }
    script.push_str("exit $status\n");
    let bins: Vec<&Path> = exes.iter().map(PathBuf::as_path).collect();
    let status = run_in_guest(
        &bins,
        &script,
        opts.accel,
        Duration::from_secs(opts.timeout),
    )?;
    if status != 0 {
        bail!(
            "the guest-side tests failed (exit status {status}; serial log: target/lab/serial.log)"
        );
    }
    eprintln!("xtask: lab tests passed");
    Ok(())
}

/// Builds `vpm` and the guest-side test binaries; returns their paths.
fn build_lab_tests(targets: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    // The workspace feature set, as `cargo xtask test` uses, so nothing is rebuilt.
    util::run(util::cargo().args(["build", "--workspace", "--exclude", "vpm-ebpf", "--bins"]))?;
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "vpm-ebpf",
        "--features",
        "vpm-tests/lab",
    ])
    .args(["--no-run", "--message-format=json-render-diagnostics"]);
    for name in targets {
        cmd.args(["--test", name]);
    }
    eprintln!("xtask: $ {}", util::display(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("building the lab tests failed");
    }
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    targets
        .iter()
        .map(|name| {
            messages
                .iter()
                .filter(|m| m["target"]["name"] == *name && m["target"]["kind"][0] == "test")
                .find_map(|m| m["executable"].as_str().map(PathBuf::from))
                .with_context(|| format!("cargo built no executable for the lab test `{name}`"))
        })
        .collect()
}

/// Boots the lab guest, runs `script` (sh, in the workspace root) there and returns
/// its exit status. `binaries` are the host programs the script runs: the C
/// libraries they need go into the initramfs.
pub fn run_in_guest(
    binaries: &[&Path],
    script: &str,
    accel: Accel,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let root = util::workspace_root();
    let lab = root.join("target/lab");
    std::fs::create_dir_all(&lab).with_context(|| format!("creating {}", lab.display()))?;
    let kernel = kernel::prepare(&lab.join("cache"), GUEST_MODULES)?;

    // `vpm` itself runs in the guest too (`vpm devices`, `vpm pci`).
    let vpm = root.join("target/debug/vpm");
    let mut all: Vec<&Path> = binaries.to_vec();
    if vpm.is_file() {
        all.push(&vpm);
    }
    let initrd = lab.join("initrd.cpio");
    let archive = initramfs(&kernel, &all, &root, script)?;
    std::fs::write(&initrd, archive).with_context(|| format!("writing {}", initrd.display()))?;

    // A fresh scratch disk each boot (sparse).
    let disk = lab.join("disk.img");
    let file =
        std::fs::File::create(&disk).with_context(|| format!("creating {}", disk.display()))?;
    file.set_len(64 << 20)?;
    drop(file);

    let boot = qemu::Boot {
        vmlinux: &kernel.vmlinux,
        initrd: &initrd,
        share: &root,
        disk: &disk,
        accel,
        timeout,
        log: lab.join("serial.log"),
    };
    eprintln!("xtask: booting the lab guest (kernel {})", kernel.release);
    let qemu::Outcome::Exited(status) = qemu::run(&boot)?;
    Ok(status)
}

/// The initramfs: busybox, `/init`, the run script, modules and libraries.
fn initramfs(
    kernel: &kernel::Kernel,
    binaries: &[&Path],
    workspace: &Path,
    script: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut a = cpio::Archive::default();
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox missing: apt-get install busybox-static");
    }
    a.copy("/bin/busybox", busybox)?;
    a.file("/init", 0o755, include_bytes!("init.sh"))?;
    a.file(
        "/etc/vpm-lab/modules",
        0o644,
        GUEST_MODULES.join("\n").as_bytes(),
    )?;
    a.file(
        "/etc/vpm-lab/workspace",
        0o644,
        workspace.to_string_lossy().as_bytes(),
    )?;
    a.file("/etc/vpm-lab/run.sh", 0o755, script.as_bytes())?;
    add_tree(&mut a, &kernel.modules_root, "")?;
    // The inner QEMU for the hot-plug tests (lab_connect), with its firmware.
    let qemu = Path::new(INNER_QEMU);
    if !qemu.is_file() {
        bail!("{INNER_QEMU} missing: apt-get install qemu-system-x86");
    }
    a.copy(INNER_QEMU, qemu)?;
    for f in INNER_QEMU_FILES {
        a.copy(f, Path::new(f))?;
    }
    a.file(INNER_FIRMWARE, 0o644, &firmware::image())?;
    a.file(INNER_FIRMWARE_BUSY, 0o644, &firmware::image_busy())?;
    let mut with_libs: Vec<&Path> = binaries.to_vec();
    with_libs.push(qemu);
    with_libs.push(Path::new(INNER_QEMU_FILES[0]));
    for bin in &with_libs {
        for lib in shared_libraries(bin)? {
            let name = lib.to_string_lossy().into_owned();
            if !a.contains(&name) {
                a.copy(&name, &lib)?;
            }
        }
    }
    Ok(a.finish())
}

/// Adds the host tree `dir` to the archive under `prefix`.
fn add_tree(a: &mut cpio::Archive, dir: &Path, prefix: &str) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            a.dir(&name)?;
            add_tree(a, &path, &name)?;
        } else {
            a.copy(&name, &path)?;
        }
    }
    Ok(())
}

/// The shared libraries `bin` loads (its `ldd` list, with the dynamic loader).
fn shared_libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let list = output(Command::new("ldd").arg(bin))
        .with_context(|| format!("`ldd {}` failed", bin.display()))?;
    Ok(list
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `s` quoted for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
