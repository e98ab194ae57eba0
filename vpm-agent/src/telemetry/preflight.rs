//! Checks that must pass before vpm can load eBPF programs, each failing with
//! an error that names the fix: privileges, tracefs, BTF.
//!
//! Parsers are pure; the functions that read the host take their paths as
//! arguments so tests can point them elsewhere.

use std::path::{Path, PathBuf};

use super::TelemetryError;

/// `CAP_SYS_ADMIN` bit in the capability sets.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` bit (Linux ≥ 5.8).
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` bit (Linux ≥ 5.8).
const CAP_BPF: u32 = 39;

/// Default location of the kernel's BTF.
pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";
/// Where tracefs is normally mounted.
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";

/// Parses the `CapEff:` line of `/proc/<pid>/status` into a bit set.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Whether an effective capability set may load and attach tracing programs.
pub fn caps_allow_tracing(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Fails unless this process may load tracing eBPF programs.
pub fn check_privileges() -> Result<(), TelemetryError> {
    let path = Path::new("/proc/self/status");
    let status = std::fs::read_to_string(path).map_err(|source| TelemetryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cap_eff = parse_cap_eff(&status).unwrap_or(0);
    if caps_allow_tracing(cap_eff) {
        Ok(())
    } else {
        Err(TelemetryError::NotPermitted { cap_eff })
    }
}

/// Finds the kvm tracepoints in tracefs, mounting tracefs at its usual place
/// when it is absent and `may_mount` is set.
///
/// Returns the names of the events under `<tracefs>/events/kvm`.
pub fn kvm_events(tracefs: &Path, may_mount: bool) -> Result<Vec<String>, TelemetryError> {
    let events = tracefs.join("events");
    // Mounted but not readable (tracefs is mode 0700): mounting again would
    // not help; say who may read it.
    if let Err(e) = std::fs::metadata(&events)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(TelemetryError::TracefsDenied {
            path: tracefs.to_path_buf(),
        });
    }
    if !events.is_dir() && may_mount {
        mount_tracefs(tracefs)?;
    }
    if !events.is_dir() {
        return Err(TelemetryError::TracefsMissing {
            path: tracefs.to_path_buf(),
        });
    }
    let kvm = events.join("kvm");
    let entries = std::fs::read_dir(&kvm)
        .map_err(|_| TelemetryError::KvmTracepointsMissing { path: kvm.clone() })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(TelemetryError::KvmTracepointsMissing { path: kvm });
    }
    Ok(names)
}

fn mount_tracefs(target: &Path) -> Result<(), TelemetryError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let to_c = |s: &[u8]| {
        CString::new(s).map_err(|_| TelemetryError::TracefsMissing {
            path: target.to_path_buf(),
        })
    };
    let source = to_c(b"nodev")?;
    let fstype = to_c(b"tracefs")?;
    let dir = to_c(target.as_os_str().as_bytes())?;
    // SAFETY: all three pointers are valid NUL-terminated strings that outlive
    // the call; a null `data` is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        log::info!("mounted tracefs at {}", target.display());
        Ok(())
    } else {
        Err(TelemetryError::TracefsMount {
            path: target.to_path_buf(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Where vpm found (or did not find) the kernel's BTF.
#[derive(Debug, Clone)]
pub enum BtfSource {
    /// BTF was read from this file.
    Found(PathBuf),
    /// No BTF at this path: `tp_btf` programs cannot be used.
    Missing(PathBuf),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let status =
            "Name:\tvpm\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        let caps = parse_cap_eff(status);
        assert_eq!(caps, Some(0x1ff_ffff_ffff));
        assert!(caps_allow_tracing(0x1ff_ffff_ffff));
    }

    #[test]
    fn bpf_and_perfmon_suffice_without_sys_admin() {
        let bpf_perfmon = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        assert!(caps_allow_tracing(bpf_perfmon));
        assert!(!caps_allow_tracing(1u64 << CAP_BPF));
        assert!(!caps_allow_tracing(0));
        assert!(caps_allow_tracing(1u64 << CAP_SYS_ADMIN));
    }

    #[test]
    fn missing_cap_line_is_none() {
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn tracefs_without_events_is_an_error_naming_the_mount_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = kvm_events(dir.path(), false).expect_err("no events dir");
        let msg = err.to_string();
        assert!(msg.contains("mount -t tracefs nodev"), "{msg}");
    }

    #[test]
    fn kvm_events_are_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for ev in ["kvm_pio", "kvm_mmio"] {
            std::fs::create_dir_all(dir.path().join("events/kvm").join(ev)).expect("mkdir");
        }
        std::fs::write(dir.path().join("events/kvm/enable"), "0").expect("write");
        assert_eq!(
            kvm_events(dir.path(), false).expect("events"),
            vec!["kvm_mmio".to_owned(), "kvm_pio".to_owned()]
        );
    }

    #[test]
    fn no_kvm_dir_says_load_the_module() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("events/sched")).expect("mkdir");
        let msg = kvm_events(dir.path(), false)
            .expect_err("no kvm")
            .to_string();
        assert!(msg.contains("modprobe kvm"), "{msg}");
    }
}
