//! Who holds a VFIO device open: processes with a file descriptor on the
//! device's VFIO group (`/dev/vfio/<group>`) or on one of its VFIO device
//! cdevs (`/dev/vfio/devices/vfioN`, kernels with iommufd).
//!
//! Found by reading the `PROC/<pid>/fd/*` links. Seeing other users'
//! descriptors needs root (or `CAP_SYS_PTRACE`): without it those processes
//! are skipped, so an empty answer from an unprivileged caller does not
//! prove a device is free. A process in another mount namespace is matched
//! by the path it sees, which for VMMs in containers is usually the same
//! `/dev/vfio/...`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::error::{HalError, Result, clip};
use super::sysfs::is_vfio_cdev_name;

/// A process that has a VFIO device open.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// `PROC/<pid>/comm` (up to 15 bytes, set by the process itself, so not
    /// trusted for display without escaping); empty when unreadable.
    pub comm: String,
}

/// Processes under `proc_root` (usually `/proc`) holding VFIO group `group`
/// open, where device nodes live under `dev_root` (usually `/dev`): an fd
/// links to `DEV/vfio/<group>` (`DEV/vfio/noiommu-<group>` in VFIO's
/// no-IOMMU mode). Sorted by pid, each process once.
///
/// Processes that exit or deny access during the scan are skipped; only
/// failing to list `proc_root` is an error. Kernels with iommufd let a VMM
/// open a device through its cdev instead of its group: use
/// [`vfio_holders_with_cdevs`] to catch those too.
pub fn vfio_holders(proc_root: &Path, dev_root: &Path, group: u32) -> Result<Vec<Holder>> {
    vfio_holders_with_cdevs(proc_root, dev_root, group, &[])
}

/// [`vfio_holders`], also counting processes that hold one of the VFIO
/// device cdevs `cdevs` (names as
/// [`Sysfs::vfio_cdevs`](super::Sysfs::vfio_cdevs) returns them, opened as
/// `DEV/vfio/devices/<name>`). A name other than `vfio<N>` is refused
/// ([`HalError::InvalidName`]) before any path is built.
pub fn vfio_holders_with_cdevs(
    proc_root: &Path,
    dev_root: &Path,
    group: u32,
    cdevs: &[String],
) -> Result<Vec<Holder>> {
    // No-IOMMU mode (`enable_unsafe_noiommu_mode`, as DPDK uses on VFs)
    // names the group's node `noiommu-<group>`.
    let mut targets = vec![
        dev_root.join("vfio").join(group.to_string()),
        dev_root.join("vfio").join(format!("noiommu-{group}")),
    ];
    for name in cdevs {
        if !is_vfio_cdev_name(name) {
            return Err(HalError::InvalidName {
                what: "vfio cdev",
                input: clip(name),
                reason: "expected vfio<N>",
            });
        }
        targets.push(dev_root.join("vfio/devices").join(name));
    }
    holders_of(proc_root, &targets)
}

/// `true` when an fd link target names one of `targets` (component-wise,
/// so `/dev//vfio/12` matches `/dev/vfio/12`). A node deleted since it was
/// opened reads with a ` (deleted)` suffix and still matches.
fn is_target(link: &Path, targets: &[PathBuf]) -> bool {
    let link = match link.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(rest) => Path::new(OsStr::from_bytes(rest)),
        None => link,
    };
    targets.iter().any(|t| t == link)
}

/// Processes under `proc_root` with an fd linking to one of `targets`.
fn holders_of(proc_root: &Path, targets: &[PathBuf]) -> Result<Vec<Holder>> {
    let entries = fs::read_dir(proc_root).map_err(|e| HalError::io("list", proc_root, e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // Gone (ENOENT/ESRCH) or not ours to read (EACCES): skip.
        let Ok(fds) = fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .any(|link| is_target(&link, targets));
        if holds {
            let comm = fs::read(dir.join("comm"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .trim_end_matches('\n')
                        .to_owned()
                })
                .unwrap_or_default();
            out.push(Holder { pid, comm });
        }
    }
    out.sort_by_key(|h| h.pid);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake process with fds linking to `links`.
    fn proc_entry(root: &Path, pid: u32, comm: &str, links: &[&Path]) {
        let fd = root.join(pid.to_string()).join("fd");
        fs::create_dir_all(&fd).unwrap();
        fs::write(root.join(pid.to_string()).join("comm"), format!("{comm}\n")).unwrap();
        for (i, l) in links.iter().enumerate() {
            symlink(l, fd.join(i.to_string())).unwrap();
        }
    }

    #[test]
    fn finds_group_and_cdev_holders() {
        let tmp = tempfile::tempdir().unwrap();
        let proc_root = tmp.path().join("proc");
        let dev = tmp.path().join("dev");
        let g12 = dev.join("vfio/12");
        let g13 = dev.join("vfio/13");
        let cdev = dev.join("vfio/devices/vfio0");
        let deleted = PathBuf::from(format!("{} (deleted)", g12.display()));
        proc_entry(
            &proc_root,
            300,
            "qemu-system-x86",
            &[Path::new("/dev/null"), &dev.join("vfio/vfio"), &g12, &g12],
        );
        proc_entry(&proc_root, 200, "other-vm", &[&g13]);
        proc_entry(
            &proc_root,
            100,
            "iommufd-vmm",
            &[Path::new("anon_inode:[iommufd]"), &cdev],
        );
        proc_entry(&proc_root, 400, "old", &[&deleted]);
        proc_entry(&proc_root, 500, "idle", &[]);
        // A process that exited (no fd dir) and one whose fd "dir" cannot be
        // listed; a non-pid entry.
        fs::create_dir_all(proc_root.join("600")).unwrap();
        fs::create_dir_all(proc_root.join("700")).unwrap();
        fs::write(proc_root.join("700/fd"), "").unwrap();
        fs::create_dir_all(proc_root.join("self/fd")).unwrap();
        symlink(&g12, proc_root.join("self/fd/0")).unwrap();

        let got = vfio_holders(&proc_root, &dev, 12).unwrap();
        assert_eq!(
            got,
            vec![
                Holder {
                    pid: 300,
                    comm: "qemu-system-x86".into()
                },
                Holder {
                    pid: 400,
                    comm: "old".into()
                },
            ]
        );
        let got = vfio_holders_with_cdevs(&proc_root, &dev, 12, &["vfio0".to_owned()]).unwrap();
        let pids: Vec<u32> = got.iter().map(|h| h.pid).collect();
        assert_eq!(pids, [100, 300, 400]);
        assert!(vfio_holders(&proc_root, &dev, 14).unwrap().is_empty());
        let e = vfio_holders_with_cdevs(&proc_root, &dev, 12, &["../../x".to_owned()]).unwrap_err();
        assert!(matches!(
            e,
            HalError::InvalidName {
                what: "vfio cdev",
                ..
            }
        ));
        // VFIO's no-IOMMU mode: the group's node is noiommu-<group>.
        proc_entry(
            &proc_root,
            800,
            "dpdk-testpmd",
            &[&dev.join("vfio/noiommu-14")],
        );
        let got = vfio_holders(&proc_root, &dev, 14).unwrap();
        assert_eq!(got.iter().map(|h| h.pid).collect::<Vec<_>>(), [800]);
        let e = vfio_holders(&tmp.path().join("noproc"), &dev, 12).unwrap_err();
        assert!(matches!(e, HalError::Io { op: "list", .. }));
    }

    #[test]
    fn real_dev_paths_match_literally() {
        let tmp = tempfile::tempdir().unwrap();
        proc_entry(tmp.path(), 42, "qemu", &[Path::new("/dev/vfio/7")]);
        proc_entry(tmp.path(), 43, "qemu", &[Path::new("/dev//vfio/./7")]);
        let got = vfio_holders(tmp.path(), Path::new("/dev"), 7).unwrap();
        assert_eq!(got.iter().map(|h| h.pid).collect::<Vec<_>>(), [42, 43]);
        assert!(
            vfio_holders(tmp.path(), Path::new("/dev/"), 7)
                .unwrap()
                .len()
                == 2
        );
        assert!(
            vfio_holders(tmp.path(), Path::new("/dev"), 70)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn comm_missing_is_empty() {
        let tmp = tempfile::tempdir().unwrap();
        proc_entry(tmp.path(), 9, "x", &[Path::new("/dev/vfio/1")]);
        fs::remove_file(tmp.path().join("9/comm")).unwrap();
        let got = vfio_holders(tmp.path(), Path::new("/dev"), 1).unwrap();
        assert_eq!(
            got,
            vec![Holder {
                pid: 9,
                comm: String::new()
            }]
        );
    }

    #[test]
    fn scans_the_real_proc() {
        // This process holds a temp file open: the real /proc shows it.
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let path = tmp.path().canonicalize().unwrap();
        let got = holders_of(Path::new("/proc"), &[path]).unwrap();
        assert!(got.iter().any(|h| h.pid == std::process::id()), "{got:?}");
        // Nobody holds a group that cannot exist.
        let none = vfio_holders(Path::new("/proc"), Path::new("/dev"), u32::MAX).unwrap();
        assert!(none.is_empty());
    }
}
