//! Which VM a process is: VMM kind, name and UUID of a pid.
//!
//! Sources, per process (all under a `proc_root` parameter, usually `/proc`):
//! - **Binary**: the basename of the `exe` link when it can be read (it cannot
//!   be faked by the process; reading it needs the same user or root), else
//!   the basename of argv\[0\]. See [`cmdline::vmm_of_binary`].
//! - **Name**: QEMU and vpm-testvm `-name guest=NAME` / `-name NAME`;
//!   Firecracker `--id ID`; Cloud Hypervisor has no name option. Else the
//!   libvirt cgroup scope name (any binary, so libvirt's helpers for a VM —
//!   swtpm, virtiofsd — carry its name too). Else `pid-<tgid>`. Every name goes
//!   through [`sanitize_name`].
//! - **UUID**: QEMU and vpm-testvm `-uuid`; Cloud Hypervisor
//!   `--platform uuid=`/`system_uuid=`; validated, lowercase; invalid ones are
//!   ignored.
//! - **libvirt**: the process sits in a libvirt machine cgroup (see
//!   [`cgroup`]), or one of its arguments names a path under `/libvirt/qemu/`
//!   (libvirt's per-domain directories, for hosts without a machine cgroup).
//!
//! [`identify`] reads `cmdline`, `exe`, `status` (for the tgid) and `cgroup`;
//! the parsers it uses are pure and public so that other modules and tests
//! can reuse them.

pub mod cgroup;
pub mod cmdline;
pub mod sanitize;

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

pub use sanitize::{MAX_NAME_CHARS, sanitize_name};

/// A virtual machine monitor vpm recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vmm {
    /// QEMU (`qemu-system-*`, `qemu-kvm`, `kvm`).
    Qemu,
    /// Cloud Hypervisor.
    CloudHypervisor,
    /// Firecracker.
    Firecracker,
    /// vpm's own test VMM, `vpm-testvm` (QEMU-style `-name`/`-uuid`).
    VpmTestVm,
    /// Not a VMM vpm knows.
    Unknown,
}

impl Vmm {
    /// The name used in reports (`qemu`, `cloud-hypervisor`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Vmm::Qemu => "qemu",
            Vmm::CloudHypervisor => "cloud-hypervisor",
            Vmm::Firecracker => "firecracker",
            Vmm::VpmTestVm => "vpm-test-vm",
            Vmm::Unknown => "unknown",
        }
    }
}

/// Who a process is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VmIdentity {
    /// Thread-group id (the process id), even when [`identify`] was given a
    /// thread id.
    pub pid: u32,
    /// Display-safe name (see [`sanitize_name`]); `pid-<tgid>` when no source
    /// gave one.
    pub name: String,
    /// SMBIOS/VM UUID in lowercase `8-4-4-4-12` form, when given.
    pub uuid: Option<String>,
    /// The VMM, from the binary.
    pub vmm: Vmm,
    /// The VM is managed by libvirt: vpm leaves its monitor alone.
    pub libvirt: bool,
}

/// Errors from [`identify`] and [`scan_vmms`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The process does not exist (any more).
    #[error("process {pid} is gone")]
    Gone {
        /// The pid asked about.
        pid: u32,
    },
    /// A file under the process's directory could not be read.
    #[error("reading {} for process {pid}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The pid asked about.
        pid: u32,
        /// The I/O error, errno kept.
        #[source]
        source: io::Error,
    },
    /// The proc root itself could not be listed.
    #[error("listing processes in {}", path.display())]
    List {
        /// The proc root.
        path: PathBuf,
        /// The I/O error, errno kept.
        #[source]
        source: io::Error,
    },
}

/// What one look at a process's directory gives.
#[derive(Debug, Default)]
struct Raw {
    cmdline: Vec<u8>,
    exe: Option<Vec<u8>>,
}

/// `true` when an error reading under `/proc/<pid>` means the process is gone:
/// `ENOENT` (the directory went away) or `ESRCH` (it died while open).
pub(crate) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

fn read_raw(proc_root: &Path, pid: u32) -> Result<Raw, IdentityError> {
    let dir = proc_root.join(pid.to_string());
    let path = dir.join("cmdline");
    let cmdline = std::fs::read(&path).map_err(|source| {
        if is_gone(&source) {
            IdentityError::Gone { pid }
        } else {
            IdentityError::Read { path, pid, source }
        }
    })?;
    // Unreadable for another user's process: fall back to argv[0].
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .map(|p| p.as_os_str().as_bytes().to_vec());
    Ok(Raw { cmdline, exe })
}

/// The VMM a process runs, from its binary: the `exe` link's basename if
/// readable, else argv\[0\]'s.
pub fn vmm_of(exe: Option<&[u8]>, args: &[&[u8]]) -> Vmm {
    let binary = exe.or_else(|| args.first().copied()).unwrap_or_default();
    cmdline::vmm_of_binary(cmdline::basename(binary))
}

/// Parses the `Tgid:` line of `/proc/<pid>/status`.
pub fn parse_status_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Builds an identity from already-read inputs: the pure core of [`identify`].
///
/// `cmdline` is the raw `/proc/<pid>/cmdline`, `exe` the `exe` link target if
/// readable, `cgroup` the text of `/proc/<pid>/cgroup` if readable.
pub fn identity_from(
    tgid: u32,
    cmdline: &[u8],
    exe: Option<&[u8]>,
    cgroup: Option<&str>,
) -> VmIdentity {
    let args = cmdline::split_cmdline(cmdline);
    let vmm = vmm_of(exe, &args);
    let (arg_name, uuid) = match vmm {
        Vmm::Qemu | Vmm::VpmTestVm => (cmdline::qemu_name(&args), cmdline::qemu_uuid(&args)),
        Vmm::Firecracker => (cmdline::firecracker_id(&args), None),
        Vmm::CloudHypervisor => (None, cmdline::cloud_hypervisor_uuid(&args)),
        Vmm::Unknown => (None, None),
    };
    // A kernel thread (no command line: a vhost worker before Linux 6.4)
    // in a VM's cgroup is not the VM: it is named by its pid.
    let machine = cgroup.filter(|_| !cmdline.is_empty()).and_then(|text| {
        cgroup::parse_cgroup(text)
            .iter()
            .find_map(|l| cgroup::machine_cgroup(l.path).map(|m| m.name))
    });
    let libvirt_paths = vmm != Vmm::Unknown
        && args.iter().any(|a| {
            a.windows(b"/libvirt/qemu/".len())
                .any(|w| w == b"/libvirt/qemu/")
        });
    let libvirt = machine.is_some() || libvirt_paths;
    let name = arg_name
        .as_deref()
        .and_then(sanitize_name)
        .or_else(|| machine.as_deref().and_then(sanitize_name))
        .unwrap_or_else(|| format!("pid-{tgid}"));
    VmIdentity {
        pid: tgid,
        name,
        uuid,
        vmm,
        libvirt,
    }
}

/// Identifies the process `pid` (a process or thread id) under `proc_root`.
///
/// Always yields an identity for a live process, VMM or not (`vmm` says
/// which); only a vanished process ([`IdentityError::Gone`]) or an unreadable
/// `cmdline` fails. `exe`, `status` and `cgroup` are optional.
pub fn identify(proc_root: &Path, pid: u32) -> Result<VmIdentity, IdentityError> {
    let raw = read_raw(proc_root, pid)?;
    let dir = proc_root.join(pid.to_string());
    let tgid = std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| parse_status_tgid(&s))
        .unwrap_or(pid);
    let cgroup = std::fs::read(dir.join("cgroup"))
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(identity_from(
        tgid,
        &raw.cmdline,
        raw.exe.as_deref(),
        cgroup.as_deref(),
    ))
}

/// Every process under `proc_root` whose binary is a known VMM, identified,
/// sorted by pid.
///
/// Processes that vanish or cannot be read during the scan are skipped; only
/// failing to list `proc_root` is an error. Threads are not listed by
/// `/proc` itself, so each VM appears once.
pub fn scan_vmms(proc_root: &Path) -> Result<Vec<VmIdentity>, IdentityError> {
    let entries = std::fs::read_dir(proc_root).map_err(|source| IdentityError::List {
        path: proc_root.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Cheap test first: most processes are not VMMs.
        let Ok(raw) = read_raw(proc_root, pid) else {
            continue;
        };
        if vmm_of(raw.exe.as_deref(), &cmdline::split_cmdline(&raw.cmdline)) == Vmm::Unknown {
            continue;
        }
        match identify(proc_root, pid) {
            Ok(id) => out.push(id),
            Err(e) => log::debug!("skipping process {pid}: {e}"),
        }
    }
    out.sort_by_key(|id| id.pid);
    // A thread id that slipped in (a custom proc tree) names its process again.
    out.dedup_by_key(|id| id.pid);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const LIBVIRT_CGROUP: &str =
        "0::/machine.slice/machine-qemu\\x2d3\\x2dweb\\x2d01.scope/libvirt/emulator\n";

    fn proc_entry(root: &Path, pid: u32, cmdline: &[u8], exe: Option<&str>, cgroup: Option<&str>) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cmdline"), cmdline).unwrap();
        if let Some(exe) = exe {
            // Dangling is fine: only the link text is read.
            std::os::unix::fs::symlink(exe, dir.join("exe")).unwrap();
        }
        if let Some(cg) = cgroup {
            fs::write(dir.join("cgroup"), cg).unwrap();
        }
        fs::write(
            dir.join("status"),
            format!("Name:\tx\nTgid:\t{pid}\nPid:\t{pid}\n"),
        )
        .unwrap();
    }

    #[test]
    fn libvirt_qemu_prefers_cmdline_name() {
        let id = identity_from(
            10,
            b"/usr/bin/qemu-system-x86_64\0-name\0guest=web-01,debug-threads=on\0\
              -uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\0",
            None,
            Some(LIBVIRT_CGROUP),
        );
        assert_eq!(
            id,
            VmIdentity {
                pid: 10,
                name: "web-01".into(),
                uuid: Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809".into()),
                vmm: Vmm::Qemu,
                libvirt: true,
            }
        );
    }

    #[test]
    fn cgroup_name_when_cmdline_has_none() {
        let id = identity_from(11, b"qemu-kvm\0-m\x00512\0", None, Some(LIBVIRT_CGROUP));
        assert_eq!((id.name.as_str(), id.libvirt), ("web-01", true));
        // An empty guest= falls through to the cgroup too.
        let id = identity_from(11, b"qemu-kvm\0-name\0guest=\0", None, Some(LIBVIRT_CGROUP));
        assert_eq!(id.name, "web-01");
        // A kernel thread in the VM's cgroup (a vhost worker before Linux
        // 6.4: no command line) is not the VM.
        let id = identity_from(900, b"", None, Some(LIBVIRT_CGROUP));
        assert_eq!((id.name.as_str(), id.libvirt), ("pid-900", false));
    }

    #[test]
    fn fallbacks() {
        let id = identity_from(12, b"", None, None);
        assert_eq!(
            (id.name.as_str(), id.vmm, id.libvirt),
            ("pid-12", Vmm::Unknown, false)
        );
        let id = identity_from(
            13,
            b"qemu-system-x86_64\0-name\0",
            None,
            Some("0::/user.slice\n"),
        );
        assert_eq!(
            (id.name.as_str(), id.vmm, id.libvirt),
            ("pid-13", Vmm::Qemu, false)
        );
        let id = identity_from(14, b"qemu-system-x86_64\0-uuid\0garbage\0", None, None);
        assert_eq!((id.name.as_str(), id.uuid), ("pid-14", None));
        // A non-VMM does not get a name from its arguments.
        let id = identity_from(15, b"/bin/sleep\0-name\0x\0", None, None);
        assert_eq!(id.name, "pid-15");
    }

    #[test]
    fn exe_beats_argv0() {
        // argv[0] claims QEMU but the binary is not.
        let id = identity_from(
            20,
            b"qemu-system-x86_64\0-name\0fake\0",
            Some(b"/usr/bin/python3"),
            None,
        );
        assert_eq!((id.vmm, id.name.as_str()), (Vmm::Unknown, "pid-20"));
        // A QEMU that rewrote argv[0], and one whose binary was upgraded on disk.
        let id = identity_from(
            21,
            b"web\0-name\0web\0",
            Some(b"/usr/bin/qemu-system-x86_64 (deleted)"),
            None,
        );
        assert_eq!((id.vmm, id.name.as_str()), (Vmm::Qemu, "web"));
    }

    #[test]
    fn other_vmms() {
        let id = identity_from(
            30,
            b"/usr/bin/firecracker\0--id\0fc-1\0--api-sock\0/tmp/s\0",
            None,
            None,
        );
        assert_eq!((id.vmm, id.name.as_str()), (Vmm::Firecracker, "fc-1"));
        let id = identity_from(
            31,
            b"cloud-hypervisor\0--platform\0uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427\0",
            None,
            Some("0::/machine.slice/machine-ch\\x2d1\\x2dchvm.scope\n"),
        );
        assert_eq!(
            (id.vmm, id.name.as_str(), id.libvirt),
            (Vmm::CloudHypervisor, "chvm", true)
        );
        assert_eq!(
            id.uuid.as_deref(),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        let id = identity_from(32, b"cloud-hypervisor\0--api-socket\0/tmp/ch\0", None, None);
        assert_eq!(id.name, "pid-32");
        let id = identity_from(
            33,
            b"target/debug/vpm-testvm\0-name\0t1\0-uuid\0c7a5fdbd-cdaf-9455-926a-d65c16db1809\0",
            None,
            None,
        );
        assert_eq!((id.vmm, id.name.as_str()), (Vmm::VpmTestVm, "t1"));
        assert!(id.uuid.is_some());
    }

    #[test]
    fn libvirt_from_paths_without_cgroup() {
        let id = identity_from(
            40,
            b"qemu-system-x86_64\0-name\0guest=db\0-chardev\0socket,id=charmonitor,path=/var/lib/libvirt/qemu/domain-2-db/monitor.sock\0",
            None,
            Some("0::/\n"),
        );
        assert!(id.libvirt);
    }

    #[test]
    fn hostile_names_are_sanitized() {
        let id = identity_from(
            50,
            b"qemu-kvm\0-name\0guest=\x1b[2J\xff,,\"x\"\nevil\0",
            None,
            None,
        );
        assert_eq!(id.name, "\\x1b[2J\\xff,\"x\"\\x0aevil");
        let id = identity_from(
            51,
            b"qemu-kvm\0",
            None,
            Some("0::/machine.slice/machine-qemu\\x2d1\\x2da\\x1bb.scope\n"),
        );
        assert_eq!(id.name, "a\\x1bb");
        let id = identity_from(52, b"firecracker\0--id\0\r\n\0", None, None);
        assert_eq!(id.name, "pid-52");
    }

    #[test]
    fn identifies_this_process_from_the_real_proc() {
        let pid = std::process::id();
        let id = identify(Path::new("/proc"), pid).unwrap();
        assert_eq!((id.pid, id.vmm), (pid, Vmm::Unknown));
        assert_eq!(id.name, format!("pid-{pid}"));
        assert!(scan_vmms(Path::new("/proc")).is_ok());
    }

    #[test]
    fn tgid_from_status() {
        assert_eq!(
            parse_status_tgid("Name:\tqemu\nTgid:\t4242\nPid:\t4250\n"),
            Some(4242)
        );
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
    }

    #[test]
    fn identify_over_a_temp_proc_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        proc_entry(
            root,
            100,
            b"/usr/bin/qemu-system-x86_64\0-name\0guest=web-01\0",
            None,
            Some(LIBVIRT_CGROUP),
        );
        proc_entry(root, 101, b"/bin/bash\0", None, None);
        proc_entry(
            root,
            102,
            b"whatever\0",
            Some("/usr/libexec/qemu-kvm"),
            None,
        );
        proc_entry(root, 103, b"", None, None); // kernel thread
        proc_entry(root, 104, b"/usr/bin/firecracker\0--id\0fc\0", None, None);
        fs::create_dir_all(root.join("self")).unwrap();
        // A thread id whose status points at its process.
        proc_entry(
            root,
            105,
            b"/usr/bin/qemu-system-x86_64\0-name\0t\0",
            None,
            None,
        );
        fs::write(root.join("105/status"), "Tgid:\t100\n").unwrap();

        let id = identify(root, 100).unwrap();
        assert_eq!(
            (id.name.as_str(), id.vmm, id.libvirt),
            ("web-01", Vmm::Qemu, true)
        );
        assert_eq!(identify(root, 101).unwrap().vmm, Vmm::Unknown);
        assert_eq!(identify(root, 102).unwrap().vmm, Vmm::Qemu);
        assert_eq!(identify(root, 103).unwrap().name, "pid-103");
        assert_eq!(identify(root, 105).unwrap().pid, 100);
        assert!(matches!(
            identify(root, 999),
            Err(IdentityError::Gone { pid: 999 })
        ));

        let vms = scan_vmms(root).unwrap();
        let pids: Vec<u32> = vms.iter().map(|v| v.pid).collect();
        // 105 is a thread of 100: listed once.
        assert_eq!(pids, vec![100, 102, 104]);
        assert!(matches!(
            scan_vmms(&root.join("missing")),
            Err(IdentityError::List { .. })
        ));
    }
}
