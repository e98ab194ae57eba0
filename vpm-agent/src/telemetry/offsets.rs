//! The offsets the VFIO/PCI programs need ([`ProbeConfig`]), from kernel BTF and
//! tracepoint `format` files, never guessed.
//!
//! - `struct device` → `kobj.name`, `struct pci_dev` → `dev`, `struct
//!   task_struct` → `flags`: from `vmlinux` BTF.
//! - `struct vfio_device` → `dev`: from `vmlinux` BTF when VFIO is built in,
//!   else from the split BTF of the module that defines it
//!   (`/sys/kernel/btf/vfio_pci_core`, then `/sys/kernel/btf/vfio`).
//! - `rpm:rpm_suspend` / `rpm:rpm_resume` → the `__data_loc` `name` field: from
//!   `<tracefs>/events/rpm/<name>/format` (only the classic-tracepoint programs
//!   use it).
//!
//! [`parse_format_field`] is pure; [`compute`] reads the files.

use std::path::Path;
use std::sync::Arc;

use vpm_common::{OFFSET_UNKNOWN, ProbeConfig};

use super::btf::Btf;

/// Modules whose BTF may define `struct vfio_device`, in the order tried.
pub const VFIO_BTF_MODULES: [&str; 2] = ["vfio_pci_core", "vfio"];

/// One field of a tracepoint's `format` file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FormatField {
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// The field is `__data_loc` (a u32: offset | length << 16 of data in the record).
    pub data_loc: bool,
}

/// Finds field `name` in the text of a tracepoint's `format` file.
pub fn parse_format_field(format: &str, name: &str) -> Option<FormatField> {
    format.lines().find_map(|line| {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.trim().split(';') {
            let part = part.trim();
            if let Some(d) = part.strip_prefix("field:") {
                decl = Some(d.trim());
            } else if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse().ok();
            } else if let Some(s) = part.strip_prefix("size:") {
                size = s.trim().parse().ok();
            }
        }
        let decl = decl?;
        // The declaration ends in the field name, possibly with an array suffix.
        let last = decl.split_whitespace().last()?;
        let field_name = last.split('[').next()?;
        (field_name == name).then_some(FormatField {
            offset: offset?,
            size: size?,
            data_loc: decl.starts_with("__data_loc"),
        })
    })
}

/// Where one offset came from, or why it is unknown and what that costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetNote {
    /// Whether the offset was found.
    pub known: bool,
    /// One line for people.
    pub text: String,
}

impl std::fmt::Display for OffsetNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn known(text: String) -> OffsetNote {
    OffsetNote { known: true, text }
}

fn unknown(text: String) -> OffsetNote {
    OffsetNote { known: false, text }
}

/// What [`compute`] found: the configuration and a note per offset.
#[derive(Clone, Debug)]
pub struct Offsets {
    /// The offsets, [`OFFSET_UNKNOWN`] where not found.
    pub config: ProbeConfig,
    /// Where each offset came from, or why it is unknown.
    pub notes: Vec<OffsetNote>,
}

/// A byte offset that is a pointer member, or [`OFFSET_UNKNOWN`].
fn pointer_member(btf: &Btf, strukt: &str, path: &[&str]) -> Option<u32> {
    let m = btf.offset_of(strukt, path)?;
    if !btf.is_pointer(m.type_id) {
        return None;
    }
    m.byte_offset()
}

/// Computes the offsets. `vmlinux` is the kernel's BTF if it could be read;
/// `btf_dir` holds the module BTF files (`/sys/kernel/btf`); `tracefs` is the
/// tracefs mount point.
pub fn compute(vmlinux: Option<&Arc<Btf>>, btf_dir: &Path, tracefs: &Path) -> Offsets {
    let mut config = ProbeConfig::UNKNOWN;
    let mut notes = Vec::new();
    let no_vmlinux = "no vmlinux BTF";
    match vmlinux {
        Some(btf) => {
            config.device_name = note(
                &mut notes,
                "struct device.kobj.name",
                pointer_member(btf, "device", &["kobj", "name"]),
                "vmlinux BTF",
                "VFIO/PCI events count under the unknown device",
            );
            config.pci_dev_dev = note(
                &mut notes,
                "struct pci_dev.dev",
                btf.byte_offset_of("pci_dev", &["dev"]),
                "vmlinux BTF",
                "power and VF events count under the unknown device",
            );
            config.task_flags = note(
                &mut notes,
                "struct task_struct.flags",
                btf.byte_offset_of("task_struct", &["flags"]),
                "vmlinux BTF",
                "kernel-thread events count under the thread, not the kernel",
            );
        }
        None => notes.push(unknown(format!(
            "struct device, pci_dev and task_struct offsets unknown ({no_vmlinux}; the kernel \
             needs CONFIG_DEBUG_INFO_BTF): VFIO/PCI events count under the unknown device"
        ))),
    }
    let (vfio_dev, from) = vfio_device_dev(vmlinux, btf_dir);
    config.vfio_device_dev = note(
        &mut notes,
        "struct vfio_device.dev",
        vfio_dev,
        &from,
        "vfio-pci events count under the unknown device",
    );
    for (tracepoint, slot) in [
        ("rpm_suspend", &mut config.rpm_suspend_name),
        ("rpm_resume", &mut config.rpm_resume_name),
    ] {
        let path = tracefs.join("events/rpm").join(tracepoint).join("format");
        let field = std::fs::read_to_string(&path)
            .ok()
            .and_then(|f| parse_format_field(&f, "name"))
            .filter(|f| f.data_loc && f.size == 4);
        *slot = match field {
            Some(f) => f.offset,
            None => {
                notes.push(unknown(format!(
                    "rpm:{tracepoint} name field unknown ({} has no __data_loc name): its \
                     classic tracepoint cannot name devices",
                    path.display()
                )));
                OFFSET_UNKNOWN
            }
        };
    }
    Offsets { config, notes }
}

/// Records where an offset came from (or why it is unknown) and returns it.
fn note(
    notes: &mut Vec<OffsetNote>,
    what: &str,
    value: Option<u32>,
    from: &str,
    cost: &str,
) -> u32 {
    match value {
        Some(v) => {
            notes.push(known(format!("{what} at {v} (from {from})")));
            v
        }
        None => {
            notes.push(unknown(format!("{what} unknown ({from}): {cost}")));
            OFFSET_UNKNOWN
        }
    }
}

/// `struct vfio_device.dev` from vmlinux BTF or a VFIO module's BTF, with
/// where it came from (or where it was looked for).
fn vfio_device_dev(vmlinux: Option<&Arc<Btf>>, btf_dir: &Path) -> (Option<u32>, String) {
    let Some(base) = vmlinux else {
        return (None, "no vmlinux BTF, so no module BTF either".to_owned());
    };
    if base.has_struct("vfio_device") {
        return (
            pointer_member(base, "vfio_device", &["dev"]),
            "vmlinux BTF".to_owned(),
        );
    }
    let mut tried = Vec::new();
    for module in VFIO_BTF_MODULES {
        let path = btf_dir.join(module);
        tried.push(path.display().to_string());
        match Btf::read(&path, Some(Arc::clone(base))) {
            Ok(btf) if btf.has_struct("vfio_device") => {
                return (
                    pointer_member(&btf, "vfio_device", &["dev"]),
                    format!("{} BTF", path.display()),
                );
            }
            Ok(_) => {}
            Err(e) => log::debug!("{}", super::error_chain(&e)),
        }
    }
    (
        None,
        format!(
            "no struct vfio_device in {} (vfio-pci not loaded?)",
            tried.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPM_FORMAT: &str = "name: rpm_suspend
ID: 574
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;
\tfield:int flags;\toffset:12;\tsize:4;\tsigned:1;
\tfield:char comm[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"%s flags-%x\", __get_str(name), REC->flags
";

    #[test]
    fn format_fields_are_found_by_name() {
        assert_eq!(
            parse_format_field(RPM_FORMAT, "name"),
            Some(FormatField {
                offset: 8,
                size: 4,
                data_loc: true
            })
        );
        assert_eq!(
            parse_format_field(RPM_FORMAT, "flags"),
            Some(FormatField {
                offset: 12,
                size: 4,
                data_loc: false
            })
        );
        assert_eq!(
            parse_format_field(RPM_FORMAT, "comm").map(|f| f.offset),
            Some(40)
        );
        assert_eq!(parse_format_field(RPM_FORMAT, "usage_count"), None);
        assert_eq!(parse_format_field(RPM_FORMAT, "common"), None);
        assert_eq!(parse_format_field("", "name"), None);
    }

    #[test]
    fn nothing_found_means_every_offset_unknown_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = compute(None, dir.path(), dir.path());
        assert_eq!(o.config, ProbeConfig::UNKNOWN);
        assert!(o.notes.iter().all(|n| !n.known));
        let text: Vec<String> = o.notes.iter().map(ToString::to_string).collect();
        let text = text.join("\n");
        assert!(text.contains("CONFIG_DEBUG_INFO_BTF"), "{text}");
        assert!(text.contains("rpm:rpm_resume"), "{text}");
    }

    #[test]
    fn the_rpm_format_file_gives_the_name_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        for tp in ["rpm_suspend", "rpm_resume"] {
            let d = dir.path().join("events/rpm").join(tp);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("format"), RPM_FORMAT).expect("write");
        }
        let o = compute(None, dir.path(), dir.path());
        assert_eq!(o.config.rpm_suspend_name, 8);
        assert_eq!(o.config.rpm_resume_name, 8);
    }

    /// On the running kernel: the built-in offsets come from its BTF.
    #[test]
    fn host_btf_gives_the_builtin_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let Ok(btf) = Btf::read(path, None) else {
            eprintln!("skipped: no readable {}", path.display());
            return;
        };
        let btf = Arc::new(btf);
        let o = compute(
            Some(&btf),
            Path::new("/sys/kernel/btf"),
            Path::new("/nonexistent"),
        );
        assert_ne!(o.config.device_name, OFFSET_UNKNOWN, "{:?}", o.notes);
        assert_ne!(o.config.task_flags, OFFSET_UNKNOWN, "{:?}", o.notes);
        if btf.has_struct("pci_dev") {
            assert_ne!(o.config.pci_dev_dev, OFFSET_UNKNOWN, "{:?}", o.notes);
        }
    }
}
