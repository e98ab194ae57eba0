//! The lab guest's kernel: Debian's current `linux-image-amd64` kernel, fetched with
//! apt and cached by package version (and the list of modules kept).
//!
//! The package is resolved at build time (`apt-cache depends linux-image-amd64`),
//! never pinned, because Debian renames it with every kernel ABI bump. From it the
//! cache keeps only what a boot needs: the uncompressed kernel (booting the ELF
//! skips the decompressor, about 4 s under TCG) and the closure of the modules
//! the guest loads, with a `modules.dep` made by busybox's depmod.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::util::{self, output};

/// A kernel ready to boot.
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The uncompressed kernel image.
    pub vmlinux: PathBuf,
    /// A tree holding `lib/modules/<release>/…` with just the needed modules.
    pub modules_root: PathBuf,
}

/// Resolves, downloads (once per version) and prepares the kernel with `modules`.
pub fn prepare(cache: &Path, modules: &[&str]) -> anyhow::Result<Kernel> {
    let package = resolve_package()?;
    let version = candidate_version(&package)?;
    // Keyed by the module list too: a new module means a new closure.
    let dir = cache.join(format!(
        "{package}_{version}_{:08x}",
        fnv1a(&modules.join(","))
    ));
    let ready = dir.join("ready");
    if let Ok(release) = std::fs::read_to_string(&ready) {
        eprintln!("xtask: lab kernel {package} {version}: cached");
        return Ok(kernel_in(&dir, release.trim()));
    }
    eprintln!("xtask: lab kernel: fetching {package} {version}");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    util::run(
        Command::new("apt-get")
            .args(["download", &format!("{package}={version}")])
            .current_dir(&work),
    )
    .with_context(|| {
        format!("downloading {package}; run `apt-get update` and check the network")
    })?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let root = work.join("root");
    util::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;

    let release = only_entry(&root.join("lib/modules"))?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    extract_vmlinux(&vmlinuz, &dir.join("vmlinux"))?;
    copy_module_closure(&root, &release, modules, &dir.join("modules"))?;

    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    std::fs::write(&ready, &release)?;
    Ok(kernel_in(&dir, &release))
}

fn kernel_in(dir: &Path, release: &str) -> Kernel {
    Kernel {
        release: release.to_owned(),
        vmlinux: dir.join("vmlinux"),
        modules_root: dir.join("modules"),
    }
}

fn resolve_package() -> anyhow::Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).context(
        "`apt-cache depends linux-image-amd64` failed: the lab needs Debian's apt \
             (run `apt-get update` first)",
    )?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
        .map(str::to_owned)
        .context("linux-image-amd64 names no kernel image package (run `apt-get update`)")
}

fn candidate_version(package: &str) -> anyhow::Result<String> {
    let policy = output(Command::new("apt-cache").args(["policy", package]))
        .with_context(|| format!("`apt-cache policy {package}` failed"))?;
    policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .find(|v| *v != "(none)")
        .map(str::to_owned)
        .with_context(|| format!("no candidate version of {package} (run `apt-get update`)"))
}

fn only_entry(dir: &Path) -> anyhow::Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.len() != 1 {
        bail!(
            "expected one kernel release in {}, found {names:?}",
            dir.display()
        );
    }
    Ok(names.remove(0))
}

/// Decompresses the kernel inside `vmlinuz`: the xz stream after the boot stub.
fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
    let image = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let start = image
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .with_context(|| format!("no xz stream in {} (not an xz kernel?)", vmlinuz.display()))?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("cannot run `xz` (apt-get install xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz has no stdin")?;
    // xz stops reading after the stream; a broken pipe on the tail is expected.
    let _ = stdin.write_all(&image[start..]);
    drop(stdin);
    let status = xz.wait()?;
    let elf = std::fs::read(out)
        .map(|b| b.starts_with(b"\x7fELF"))
        .unwrap_or(false);
    if !elf {
        bail!(
            "`xz -dc` of {} gave no ELF kernel ({status})",
            vmlinuz.display()
        );
    }
    Ok(())
}

/// FNV-1a, 32 bits: a stable short key for the module list.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The module name as modprobe sees it (`vfio-pci.ko` → `vfio_pci`).
fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Copies `wanted` and everything they depend on into `dest/lib/modules/<release>`.
fn copy_module_closure(
    root: &Path,
    release: &str,
    wanted: &[&str],
    dest: &Path,
) -> anyhow::Result<()> {
    let src = root.join("lib/modules").join(release);
    util::run(
        Command::new("busybox")
            .args(["depmod", "-b"])
            .arg(root)
            .arg(release),
    )
    .context("busybox depmod failed (apt-get install busybox-static)")?;
    let dep = std::fs::read_to_string(src.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(src.join("modules.builtin")).unwrap_or_default();
    let builtin: BTreeSet<String> = builtin.lines().map(module_name).collect();
    // name → (path, dependency paths)
    let mut table: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        table.insert(
            module_name(path),
            (
                path.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ),
        );
    }
    let mut files = BTreeSet::new();
    for want in wanted {
        let name = module_name(want);
        if builtin.contains(&name) {
            continue;
        }
        let (path, deps) = table
            .get(&name)
            .with_context(|| format!("kernel {release} has no module `{want}`"))?;
        files.insert(path.clone());
        files.extend(deps.iter().cloned());
    }
    let out = dest.join("lib/modules").join(release);
    for rel in &files {
        let to = out.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src.join(rel), &to).with_context(|| format!("copying module {rel}"))?;
    }
    for meta in [
        "modules.builtin",
        "modules.order",
        "modules.builtin.modinfo",
    ] {
        if src.join(meta).is_file() {
            std::fs::copy(src.join(meta), out.join(meta))?;
        }
    }
    util::run(
        Command::new("busybox")
            .args(["depmod", "-b"])
            .arg(dest)
            .arg(release),
    )?;
    eprintln!("xtask: lab kernel {release}: {} module files", files.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::module_name;

    #[test]
    fn module_names_follow_modprobe() {
        assert_eq!(
            module_name("kernel/drivers/vfio/pci/vfio-pci.ko"),
            "vfio_pci"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("nvme"), "nvme");
    }
}
