//! Errors of the HAL: every variant names the file or device, keeps the errno
//! and says what to do about it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bdf::Bdf;

/// Result of HAL calls.
pub type Result<T> = std::result::Result<T, HalError>;

/// The errno of a failed sysfs call, kept because the kernel gives the same
/// attribute different errnos for different refusals (on `sriov_numvfs`,
/// `EBUSY` and `ERANGE` call for different fixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Errno {
    /// `EBUSY`.
    Busy,
    /// `ERANGE`.
    Range,
    /// `ENOENT`.
    NoEnt,
    /// `EINVAL`.
    Inval,
    /// `EPERM`.
    Perm,
    /// `EACCES`.
    Access,
    /// `ENODEV`.
    NoDev,
    /// Any other errno, by number.
    Other(i32),
    /// The error did not come from the OS (a short write, a lost writer
    /// thread), so it has no errno.
    Unknown,
}

impl Errno {
    /// The errno of an I/O error; [`Errno::Unknown`] when it carries none.
    pub fn from_io(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EBUSY) => Errno::Busy,
            Some(libc::ERANGE) => Errno::Range,
            Some(libc::ENOENT) => Errno::NoEnt,
            Some(libc::EINVAL) => Errno::Inval,
            Some(libc::EPERM) => Errno::Perm,
            Some(libc::EACCES) => Errno::Access,
            Some(libc::ENODEV) => Errno::NoDev,
            Some(n) => Errno::Other(n),
            None => Errno::Unknown,
        }
    }

    /// The symbolic name (`EBUSY`, …), if vpm knows it.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Errno::Busy => "EBUSY",
            Errno::Range => "ERANGE",
            Errno::NoEnt => "ENOENT",
            Errno::Inval => "EINVAL",
            Errno::Perm => "EPERM",
            Errno::Access => "EACCES",
            Errno::NoDev => "ENODEV",
            Errno::Other(libc::EIO) => "EIO",
            Errno::Other(libc::ENOMEM) => "ENOMEM",
            Errno::Other(libc::ENXIO) => "ENXIO",
            Errno::Other(libc::ENOSPC) => "ENOSPC",
            Errno::Other(libc::EROFS) => "EROFS",
            Errno::Other(libc::ENOTDIR) => "ENOTDIR",
            Errno::Other(libc::EISDIR) => "EISDIR",
            Errno::Other(libc::EAGAIN) => "EAGAIN",
            Errno::Other(libc::EOPNOTSUPP) => "EOPNOTSUPP",
            Errno::Other(libc::ENOSYS) => "ENOSYS",
            Errno::Other(libc::ETIMEDOUT) => "ETIMEDOUT",
            Errno::Other(_) | Errno::Unknown => return None,
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self) {
            (Some(name), _) => f.write_str(name),
            (None, Errno::Other(n)) => write!(f, "errno {n}"),
            (None, _) => f.write_str("no errno"),
        }
    }
}

/// What an errno means for the attribute `path` after the operation `op`,
/// and the fix; empty when there is nothing to add to the errno.
fn hint(op: &str, path: &Path, errno: &Errno) -> &'static str {
    let errno = *errno;
    let attr = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match (op, attr, errno) {
        ("write", "sriov_numvfs", Errno::Busy) => {
            ": VFs are already enabled and the kernel changes a non-zero count only \
             through 0; write 0 first"
        }
        ("write", "sriov_numvfs", Errno::Range) => {
            ": more VFs than sriov_totalvfs; ask for at most sriov_totalvfs"
        }
        ("write", "sriov_numvfs", Errno::NoEnt) => {
            ": the PF has no driver bound, or its driver cannot configure SR-IOV \
             (no sriov_configure); bind a driver that can. A PF bound to vfio-pci \
             needs the module loaded with enable_sriov=1 \
             (`modprobe vfio-pci enable_sriov=1`)"
        }
        ("write", "sriov_numvfs", Errno::Inval) => ": value not accepted; write a decimal count",
        ("write", "control", Errno::Inval) => ": value not accepted; write `on` or `auto`",
        ("write", "unbind", Errno::NoDev) => {
            ": the device is not bound to this driver any more; read `driver` again"
        }
        ("write", "drivers_probe", Errno::NoDev) => ": no such device on the PCI bus",
        ("write", _, Errno::Inval) => ": value not accepted by the kernel",
        ("write" | "open", _, Errno::Perm | Errno::Access) => {
            ": needs root (CAP_SYS_ADMIN) and a read-write /sys"
        }
        ("write" | "open", _, Errno::Other(libc::EROFS)) => {
            ": /sys is mounted read-only (a container?); run vpm on the host"
        }
        ("open", _, Errno::NoEnt) => {
            ": no such attribute: the device was removed, or this kernel or device lacks it"
        }
        ("read" | "readlink", _, Errno::NoEnt) => {
            ": no such attribute: the device was removed, or this kernel lacks it"
        }
        ("read" | "readlink" | "list", _, Errno::Perm | Errno::Access) => {
            ": permission denied; run vpm as root"
        }
        ("read", _, Errno::NoDev | Errno::Other(libc::EIO)) => {
            ": the device did not answer (removed, or in D3cold)"
        }
        ("list", _, Errno::NoEnt) => ": no such directory: wrong sysfs root, or no PCI bus",
        _ => "",
    }
}

/// A short note on why a read-back can differ, by attribute.
fn read_back_hint(path: &Path, wrote: &str) -> &'static str {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("driver") if wrote == "(none)" => {
            "; the driver refused to release the device (see dmesg)"
        }
        Some("driver") => {
            "; the driver is not loaded (modprobe it) or its probe failed (see dmesg)"
        }
        Some("sriov_numvfs") => {
            "; the PF driver enabled fewer VFs than asked or refused (see dmesg)"
        }
        _ => "; the kernel did not keep the change (see dmesg)",
    }
}

/// Errors of the HAL.
#[derive(Debug, thiserror::Error)]
pub enum HalError {
    /// A string is not a PCI address in `DDDD:BB:DD.F` form. Checked before
    /// any path is built from it.
    #[error("invalid PCI address {input:?}: {reason} (expected DDDD:BB:DD.F, e.g. 0000:01:00.0)")]
    InvalidBdf {
        /// The refused input (at most 64 characters of it).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A name that becomes a value or a path component (driver, VFIO cdev)
    /// has characters the HAL does not accept.
    #[error("invalid {what} name {input:?}: {reason}")]
    InvalidName {
        /// What the name names: `driver`, `vfio cdev`.
        what: &'static str,
        /// The refused input (at most 64 characters of it).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The PCI function does not exist under the sysfs root.
    #[error("{bdf}: no such PCI function ({} is missing; `lspci -D` lists the functions)", path.display())]
    NoDevice {
        /// The function asked about.
        bdf: Bdf,
        /// Its would-be directory.
        path: PathBuf,
    },
    /// A system call on a sysfs, procfs or devfs path failed.
    #[error("{op} {}: {errno}{}", path.display(), hint(.op, .path, .errno))]
    Io {
        /// `open`, `read`, `write`, `readlink`, `list` or `spawn` (starting
        /// the writer thread).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The errno, for callers that branch on it.
        errno: Errno,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A write to a sysfs attribute did not return within its time limit.
    /// The write is still in the kernel and may yet complete (VF creation can
    /// take minutes on some drivers): read the attribute before retrying.
    #[error(
        "writing {value:?} to {}: no answer after {after:?}; the kernel may still \
         complete the write, read the attribute again before retrying",
        path.display()
    )]
    Timeout {
        /// The attribute.
        path: PathBuf,
        /// The value being written.
        value: String,
        /// The time waited.
        after: Duration,
    },
    /// An earlier write to the attribute timed out and has still not
    /// returned: vpm does not stack a second write behind it.
    #[error(
        "{}: an earlier write ({value:?}) timed out and is still in the kernel; vpm writes \
         this attribute again only once it returns (read the attribute to see where it is)",
        path.display()
    )]
    StillWriting {
        /// The attribute.
        path: PathBuf,
        /// The value still being written.
        value: String,
    },
    /// The write succeeded but reading the attribute back shows another state.
    #[error("{}: wrote {wrote:?} but read back {read:?}{}", path.display(), read_back_hint(.path, .wrote))]
    ReadBack {
        /// The attribute read back.
        path: PathBuf,
        /// What was written (or, for a driver bind, the driver asked for).
        wrote: String,
        /// What was read (trimmed).
        read: String,
    },
    /// A sysfs file or link has content the HAL cannot parse.
    #[error("{}: cannot parse {content:?} as {what}", path.display())]
    Parse {
        /// The file or link.
        path: PathBuf,
        /// Its (trimmed) content, at most 64 characters of it.
        content: String,
        /// What was expected, e.g. `hex u16`.
        what: &'static str,
    },
    /// An SR-IOV action on a function that is not an SR-IOV PF.
    #[error("{bdf} is not an SR-IOV physical function (no sriov_totalvfs); pick its PF")]
    NotSriov {
        /// The function asked about.
        bdf: Bdf,
    },
    /// More VFs asked for than the PF supports; refused before writing.
    #[error(
        "{bdf}: {requested} VFs requested but sriov_totalvfs is {total}; ask for at most {total}"
    )]
    OutOfRange {
        /// The PF.
        bdf: Bdf,
        /// The count asked for.
        requested: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },
}

impl HalError {
    /// An [`HalError::Io`] with the errno taken from `source`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        HalError::Io {
            op,
            path: path.into(),
            errno: Errno::from_io(&source),
            source,
        }
    }

    /// The errno, for I/O errors.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            HalError::Io { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// At most `MAX` characters of `s`, for echoing untrusted input in errors.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    s.chars().take(MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn os(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    #[test]
    fn errno_from_io() {
        let cases = [
            (libc::EBUSY, Errno::Busy),
            (libc::ERANGE, Errno::Range),
            (libc::ENOENT, Errno::NoEnt),
            (libc::EINVAL, Errno::Inval),
            (libc::EPERM, Errno::Perm),
            (libc::EACCES, Errno::Access),
            (libc::ENODEV, Errno::NoDev),
            (libc::EIO, Errno::Other(libc::EIO)),
        ];
        for (n, want) in cases {
            assert_eq!(Errno::from_io(&os(n)), want);
        }
        assert_eq!(Errno::from_io(&io::Error::other("x")), Errno::Unknown);
        assert_eq!(Errno::Busy.to_string(), "EBUSY");
        assert_eq!(Errno::Other(libc::EIO).to_string(), "EIO");
        assert_eq!(Errno::Other(4242).to_string(), "errno 4242");
        assert_eq!(Errno::Unknown.to_string(), "no errno");
    }

    #[test]
    fn io_messages_name_path_errno_and_fix() {
        let p = Path::new("/sys/bus/pci/devices/0000:01:00.0/sriov_numvfs");
        let e = HalError::io("write", p, os(libc::EBUSY));
        assert_eq!(e.errno(), Some(Errno::Busy));
        let msg = e.to_string();
        assert!(msg.starts_with("write /sys/bus/pci/devices/0000:01:00.0/sriov_numvfs: EBUSY"));
        assert!(msg.contains("write 0 first"), "{msg}");
        assert!(e.source().is_some());
        let msg = HalError::io("write", p, os(libc::ERANGE)).to_string();
        assert!(msg.contains("sriov_totalvfs"), "{msg}");
        let msg = HalError::io("write", p, os(libc::ENOENT)).to_string();
        assert!(msg.contains("no driver bound"), "{msg}");
        let msg = HalError::io("write", p, os(libc::EINVAL)).to_string();
        assert!(msg.contains("decimal"), "{msg}");
        // Opening a missing attribute is not "no driver".
        let msg = HalError::io("open", p, os(libc::ENOENT)).to_string();
        assert!(msg.contains("no such attribute"), "{msg}");
        let msg = HalError::io("open", p, os(libc::EACCES)).to_string();
        assert!(msg.contains("root"), "{msg}");
        // No hint: the errno alone.
        let msg = HalError::io("read", p, os(libc::ENOMEM)).to_string();
        assert!(msg.ends_with("sriov_numvfs: ENOMEM"), "{msg}");
    }

    #[test]
    fn other_messages() {
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        let e = HalError::OutOfRange {
            bdf,
            requested: 9,
            total: 4,
        };
        assert_eq!(
            e.to_string(),
            "0000:01:00.0: 9 VFs requested but sriov_totalvfs is 4; ask for at most 4"
        );
        let e = HalError::ReadBack {
            path: "/s/driver".into(),
            wrote: "vfio-pci".into(),
            read: "(none)".into(),
        };
        assert!(e.to_string().contains("modprobe"), "{e}");
        let e = HalError::Timeout {
            path: "/s/sriov_numvfs".into(),
            value: "4".into(),
            after: Duration::from_secs(2),
        };
        assert!(e.to_string().contains("may still complete"), "{e}");
        assert!(
            HalError::NotSriov { bdf }
                .to_string()
                .contains("sriov_totalvfs")
        );
    }

    #[test]
    fn clip_limits_echoed_input() {
        assert_eq!(clip(&"x".repeat(1000)).len(), 64);
        assert_eq!(clip("short"), "short");
    }
}
