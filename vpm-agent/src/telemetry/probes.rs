//! The VFIO/PCI attach points: what the running kernel offers, and attaching it.
//!
//! Each attach point ([`PCI_PROBES`]) is reached the cheapest way the kernel
//! allows:
//! - **tracepoints** (`rpm:rpm_suspend`, `rpm:rpm_resume`): a BTF tracepoint when
//!   BTF has it (`btf_trace_<name>`) and the device-name offset is known, else
//!   the classic tracepoint (the name read through its `format` file);
//! - **functions built into the kernel** (`pci_set_power_state`,
//!   `pci_iov_add_virtfn`, `sriov_numvfs_store`): fentry when BTF describes the
//!   function, else a kprobe. `pci_set_power_state` is traced at
//!   `__pci_set_power_state` where the kernel has it (6.9+, and stable kernels
//!   with the backport, such as Debian's 6.1): there the PCI core's own
//!   runtime suspend (the D3hot transition) calls `pci_set_power_state_locked`,
//!   and both wrappers call the inner function;
//! - **functions of the vfio-pci modules**: a kprobe. fentry on a module
//!   function needs the module's BTF object at load time
//!   (`attach_btf_obj_fd`); aya 0.14's `FEntry::load` only looks in the BTF it is
//!   given and never passes a module's, so these cannot be fentry here.
//!
//! What exists is read from the host first (tracepoint directories, BTF,
//! `available_filter_functions`, else `/proc/kallsyms`); a missing symbol is
//! reported as absent and a failed attach as failed, never fatal.

use std::collections::BTreeMap;
use std::path::Path;

use aya::{
    Ebpf,
    programs::{BtfTracePoint, FEntry, KProbe, ProgramError, TracePoint},
};
use vpm_common::{EventKind, OFFSET_UNKNOWN, ProbeConfig};

use super::btf::Btf;
use super::error_chain;

/// How an attach point is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// BTF tracepoint.
    TpBtf,
    /// Classic (perf) tracepoint.
    Tracepoint,
    /// fentry (BPF trampoline).
    Fentry,
    /// kprobe.
    Kprobe,
}

impl Mechanism {
    /// The name used in reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mechanism::TpBtf => "tp_btf",
            Mechanism::Tracepoint => "tracepoint",
            Mechanism::Fentry => "fentry",
            Mechanism::Kprobe => "kprobe",
        }
    }
}

/// Where an attach point lives.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A tracepoint `category:name`.
    Tracepoint {
        /// Category under `events/`.
        category: &'static str,
        /// The `tp_btf` program.
        btf_prog: &'static str,
        /// The classic tracepoint program.
        classic_prog: &'static str,
    },
    /// A function built into the kernel image.
    Builtin {
        /// The functions to trace, best first; the first the kernel has is used.
        /// All take the same leading arguments.
        symbols: &'static [&'static str],
        /// The fentry program.
        fentry_prog: &'static str,
        /// The kprobe program.
        kprobe_prog: &'static str,
    },
    /// A function of a loadable module.
    Module {
        /// The module that defines it (as `available_filter_functions` names it).
        module: &'static str,
        /// The kprobe program.
        kprobe_prog: &'static str,
    },
}

/// One VFIO/PCI attach point.
#[derive(Clone, Copy, Debug)]
pub struct PciProbe {
    /// Function or tracepoint name.
    pub name: &'static str,
    /// What it counts.
    pub kind: EventKind,
    /// Where it lives.
    pub target: Target,
}

const fn module(name: &'static str, kind: EventKind, kprobe_prog: &'static str) -> PciProbe {
    PciProbe {
        name,
        kind,
        target: Target::Module {
            module: "vfio_pci_core",
            kprobe_prog,
        },
    }
}

const fn builtin(
    name: &'static str,
    symbols: &'static [&'static str],
    kind: EventKind,
    fentry_prog: &'static str,
    kprobe_prog: &'static str,
) -> PciProbe {
    PciProbe {
        name,
        kind,
        target: Target::Builtin {
            symbols,
            fentry_prog,
            kprobe_prog,
        },
    }
}

const fn rpm(
    name: &'static str,
    kind: EventKind,
    btf_prog: &'static str,
    classic_prog: &'static str,
) -> PciProbe {
    PciProbe {
        name,
        kind,
        target: Target::Tracepoint {
            category: "rpm",
            btf_prog,
            classic_prog,
        },
    }
}

/// Every VFIO/PCI attach point, in attach order.
pub const PCI_PROBES: [PciProbe; 10] = [
    module(
        "vfio_pci_core_read",
        EventKind::VfioRegionRead,
        "kp_vfio_pci_core_read",
    ),
    module(
        "vfio_pci_core_write",
        EventKind::VfioRegionWrite,
        "kp_vfio_pci_core_write",
    ),
    module(
        "vfio_pci_core_ioctl",
        EventKind::VfioIoctl,
        "kp_vfio_pci_core_ioctl",
    ),
    module(
        "vfio_intx_handler",
        EventKind::VfioIntx,
        "kp_vfio_intx_handler",
    ),
    module("vfio_msihandler", EventKind::VfioMsi, "kp_vfio_msihandler"),
    builtin(
        "pci_set_power_state",
        &["__pci_set_power_state", "pci_set_power_state"],
        EventKind::PciPowerSet,
        "fe_pci_set_power_state",
        "kp_pci_set_power_state",
    ),
    builtin(
        "pci_iov_add_virtfn",
        &["pci_iov_add_virtfn"],
        EventKind::VfAdd,
        "fe_pci_iov_add_virtfn",
        "kp_pci_iov_add_virtfn",
    ),
    builtin(
        "sriov_numvfs_store",
        &["sriov_numvfs_store"],
        EventKind::SriovNumvfsStore,
        "fe_sriov_numvfs_store",
        "kp_sriov_numvfs_store",
    ),
    rpm(
        "rpm_suspend",
        EventKind::RpmSuspend,
        "btf_rpm_suspend",
        "tp_rpm_suspend",
    ),
    rpm(
        "rpm_resume",
        EventKind::RpmResume,
        "btf_rpm_resume",
        "tp_rpm_resume",
    ),
];

/// What happened to one attach point.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ProbeState {
    /// Attached.
    Attached {
        /// How.
        mechanism: Mechanism,
        /// The function traced, when it is not the one the attach point is named after.
        #[serde(skip_serializing_if = "Option::is_none")]
        function: Option<&'static str>,
        /// Why not a cheaper mechanism, when there was one to try.
        #[serde(skip_serializing_if = "Option::is_none")]
        instead_of: Option<String>,
    },
    /// Not attached: the kernel does not have it (or its module is not loaded).
    Absent {
        /// What was looked for, where.
        why: String,
    },
    /// Not attached: every mechanism failed.
    Failed {
        /// The errors.
        why: String,
    },
}

/// One line of the VFIO/PCI attach report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeAttachment {
    /// Function or tracepoint name.
    pub probe: &'static str,
    /// The event kind it counts (its short name).
    pub kind: &'static str,
    /// What happened.
    #[serde(flatten)]
    pub state: ProbeState,
}

impl ProbeAttachment {
    /// Whether it is attached.
    pub fn attached(&self) -> bool {
        matches!(self.state, ProbeState::Attached { .. })
    }
}

/// Traceable kernel functions: name → module (`None`: built in).
#[derive(Clone, Debug, Default)]
pub struct Functions {
    /// The functions found among the ones asked for.
    pub found: BTreeMap<String, Option<String>>,
    /// Where the list came from (or that none could be read).
    pub source: String,
}

/// Looks for `wanted` in the text of `available_filter_functions`
/// (`name` or `name [module]` per line).
pub fn parse_filter_functions(text: &str, wanted: &[&str]) -> BTreeMap<String, Option<String>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            if !wanted.contains(&name) {
                return None;
            }
            let module = parts
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            Some((name.to_owned(), module))
        })
        .collect()
}

/// Looks for `wanted` text symbols (`t`/`T`) in the text of `/proc/kallsyms`
/// (`address type name [module]` per line).
pub fn parse_kallsyms(text: &str, wanted: &[&str]) -> BTreeMap<String, Option<String>> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let _address = parts.next()?;
            let ty = parts.next()?;
            if ty != "t" && ty != "T" {
                return None;
            }
            let name = parts.next()?;
            if !wanted.contains(&name) {
                return None;
            }
            let module = parts
                .next()
                .and_then(|m| m.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned);
            Some((name.to_owned(), module))
        })
        .collect()
}

/// Reads which of `wanted` the kernel can trace: `<tracefs>/available_filter_functions`,
/// else `<proc_root>/kallsyms`.
pub fn read_functions(tracefs: &Path, proc_root: &Path, wanted: &[&str]) -> Functions {
    let filter = tracefs.join("available_filter_functions");
    let filter_err = match std::fs::read_to_string(&filter) {
        Ok(text) => {
            return Functions {
                found: parse_filter_functions(&text, wanted),
                source: filter.display().to_string(),
            };
        }
        Err(e) => e,
    };
    let kallsyms = proc_root.join("kallsyms");
    match std::fs::read_to_string(&kallsyms) {
        Ok(text) => Functions {
            found: parse_kallsyms(&text, wanted),
            source: format!(
                "{} ({} unreadable: {filter_err})",
                kallsyms.display(),
                filter.display()
            ),
        },
        Err(e) => Functions {
            found: BTreeMap::new(),
            source: format!(
                "no function list ({}: {filter_err}; {}: {e})",
                filter.display(),
                kallsyms.display()
            ),
        },
    }
}

/// What the attach step needs to know about the kernel.
pub struct Kernel<'a> {
    /// aya's parse of vmlinux BTF (for loading fentry and tp_btf programs).
    pub aya_btf: Option<&'a aya::Btf>,
    /// vpm's parse of the same (for existence checks).
    pub btf: Option<&'a Btf>,
    /// Traceable functions.
    pub functions: &'a Functions,
    /// tracefs mount point.
    pub tracefs: &'a Path,
    /// The offsets written to the programs' configuration.
    pub config: &'a ProbeConfig,
}

/// Attaches every attach point of [`PCI_PROBES`] the kernel offers.
pub fn attach_all(ebpf: &mut Ebpf, kernel: &Kernel<'_>) -> Vec<ProbeAttachment> {
    PCI_PROBES
        .iter()
        .map(|probe| ProbeAttachment {
            probe: probe.name,
            kind: probe.kind.name(),
            state: attach_one(ebpf, probe, kernel),
        })
        .collect()
}

fn attach_one(ebpf: &mut Ebpf, probe: &PciProbe, kernel: &Kernel<'_>) -> ProbeState {
    match probe.target {
        Target::Tracepoint {
            category,
            btf_prog,
            classic_prog,
        } => attach_tracepoint(ebpf, probe, kernel, category, btf_prog, classic_prog),
        Target::Builtin {
            symbols,
            fentry_prog,
            kprobe_prog,
        } => attach_builtin(ebpf, probe, kernel, symbols, fentry_prog, kprobe_prog),
        Target::Module {
            module,
            kprobe_prog,
        } => {
            if !kernel.functions.found.contains_key(probe.name) {
                return ProbeState::Absent {
                    why: format!("module {module} not loaded, or not in this kernel"),
                };
            }
            match attach_kprobe(ebpf, kprobe_prog, probe.name) {
                Ok(()) => ProbeState::Attached {
                    mechanism: Mechanism::Kprobe,
                    function: None,
                    instead_of: Some(
                        "fentry: module function, aya 0.14 cannot load against module BTF"
                            .to_owned(),
                    ),
                },
                Err(e) => ProbeState::Failed {
                    why: format!("kprobe: {}", error_chain(&e)),
                },
            }
        }
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    probe: &PciProbe,
    kernel: &Kernel<'_>,
    category: &str,
    btf_prog: &str,
    classic_prog: &str,
) -> ProbeState {
    let dir = kernel
        .tracefs
        .join("events")
        .join(category)
        .join(probe.name);
    if !dir.is_dir() {
        return ProbeState::Absent {
            why: format!("no {}", dir.display()),
        };
    }
    let btf_err = match (kernel.aya_btf, kernel.btf) {
        (Some(aya_btf), Some(btf)) if btf.has_btf_tracepoint(probe.name) => {
            if kernel.config.device_name == OFFSET_UNKNOWN {
                "tp_btf: struct device.kobj.name offset unknown".to_owned()
            } else {
                match attach_tp_btf(ebpf, btf_prog, probe.name, aya_btf) {
                    Ok(()) => {
                        return ProbeState::Attached {
                            mechanism: Mechanism::TpBtf,
                            function: None,
                            instead_of: None,
                        };
                    }
                    Err(e) => format!("tp_btf: {}", error_chain(&e)),
                }
            }
        }
        (Some(_), Some(_)) => format!("tp_btf: no btf_trace_{} in BTF", probe.name),
        _ => "tp_btf: no kernel BTF".to_owned(),
    };
    let name_offset = match probe.kind {
        EventKind::RpmSuspend => kernel.config.rpm_suspend_name,
        _ => kernel.config.rpm_resume_name,
    };
    if name_offset == OFFSET_UNKNOWN {
        return ProbeState::Failed {
            why: format!("{btf_err}; tracepoint: no __data_loc name in its format file"),
        };
    }
    match attach_classic(ebpf, classic_prog, category, probe.name) {
        Ok(()) => ProbeState::Attached {
            mechanism: Mechanism::Tracepoint,
            function: None,
            instead_of: Some(btf_err),
        },
        Err(e) => ProbeState::Failed {
            why: format!("{btf_err}; tracepoint: {}", error_chain(&e)),
        },
    }
}

fn attach_builtin(
    ebpf: &mut Ebpf,
    probe: &PciProbe,
    kernel: &Kernel<'_>,
    symbols: &'static [&'static str],
    fentry_prog: &str,
    kprobe_prog: &str,
) -> ProbeState {
    let in_btf = |f: &str| kernel.btf.is_some_and(|b| b.has_func(f));
    let Some(function) = symbols
        .iter()
        .copied()
        .find(|f| in_btf(f) || kernel.functions.found.contains_key(*f))
    else {
        return ProbeState::Absent {
            why: "not in this kernel (or inlined)".to_owned(),
        };
    };
    let shown = (function != probe.name).then_some(function);
    let fentry_err = match kernel.aya_btf {
        Some(aya_btf) if in_btf(function) => {
            match attach_fentry(ebpf, fentry_prog, function, aya_btf) {
                Ok(()) => {
                    return ProbeState::Attached {
                        mechanism: Mechanism::Fentry,
                        function: shown,
                        instead_of: None,
                    };
                }
                Err(e) => format!("fentry: {}", error_chain(&e)),
            }
        }
        Some(_) => "fentry: not in BTF".to_owned(),
        None => "fentry: no kernel BTF".to_owned(),
    };
    match attach_kprobe(ebpf, kprobe_prog, function) {
        Ok(()) => ProbeState::Attached {
            mechanism: Mechanism::Kprobe,
            function: shown,
            instead_of: Some(fentry_err),
        },
        Err(e) => ProbeState::Failed {
            why: format!("{fentry_err}; kprobe: {}", error_chain(&e)),
        },
    }
}

fn attach_tp_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
    btf: &aya::Btf,
) -> Result<(), ProgramError> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load(tracepoint, btf)?;
    p.attach().map(drop)
}

fn attach_classic(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(), ProgramError> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load()?;
    p.attach(category, name).map(drop)
}

fn attach_fentry(
    ebpf: &mut Ebpf,
    prog: &str,
    function: &str,
    btf: &aya::Btf,
) -> Result<(), ProgramError> {
    let p: &mut FEntry = ebpf
        .program_mut(prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load(function, btf)?;
    p.attach().map(drop)
}

fn attach_kprobe(ebpf: &mut Ebpf, prog: &str, function: &str) -> Result<(), ProgramError> {
    let p: &mut KProbe = ebpf
        .program_mut(prog)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load()?;
    p.attach(function, 0).map(drop)
}

/// Names of every function an attach point may trace (for [`read_functions`]).
pub fn function_names() -> Vec<&'static str> {
    PCI_PROBES
        .iter()
        .flat_map(|p| match p.target {
            Target::Tracepoint { .. } => &[][..],
            Target::Builtin { symbols, .. } => symbols,
            Target::Module { .. } => std::slice::from_ref(&p.name),
        })
        .copied()
        .collect()
}

/// A one-line human report: `rpm_suspend: tp_btf; vfio_pci_core_read: absent (…)`.
pub fn render_report(attachments: &[ProbeAttachment]) -> String {
    attachments
        .iter()
        .map(|a| {
            let how = match &a.state {
                ProbeState::Attached {
                    mechanism,
                    function: Some(f),
                    ..
                } => format!("{} on {f}", mechanism.as_str()),
                ProbeState::Attached { mechanism, .. } => mechanism.as_str().to_owned(),
                ProbeState::Absent { why } => format!("not available ({why})"),
                ProbeState::Failed { why } => format!("failed ({why})"),
            };
            format!("{}: {how}", a.probe)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: [&str; 3] = [
        "vfio_pci_core_read",
        "pci_set_power_state",
        "sriov_numvfs_store",
    ];

    #[test]
    fn filter_functions_give_names_and_modules() {
        let text = "pci_set_power_state\nvfio_pci_core_read [vfio_pci_core]\n\
                    vfio_pci_core_read_x [vfio_pci_core]\nother\n";
        let f = parse_filter_functions(text, &WANTED);
        assert_eq!(f.len(), 2);
        assert_eq!(f["pci_set_power_state"], None);
        assert_eq!(f["vfio_pci_core_read"].as_deref(), Some("vfio_pci_core"));
    }

    #[test]
    fn kallsyms_text_symbols_are_found() {
        let text = "ffffffff81c50d50 T pci_set_power_state\n\
                    ffffffff81c60000 t sriov_numvfs_store\n\
                    ffffffff82000000 d vfio_pci_core_read\n\
                    ffffffffc0a01230 t vfio_pci_core_read\t[vfio_pci_core]\n";
        let f = parse_kallsyms(text, &WANTED);
        assert_eq!(f.len(), 3, "{f:?}");
        assert_eq!(f["vfio_pci_core_read"].as_deref(), Some("vfio_pci_core"));
        assert_eq!(f["sriov_numvfs_store"], None);
    }

    #[test]
    fn function_lists_fall_back_to_kallsyms() {
        let tracefs = tempfile::tempdir().expect("tempdir");
        let proc = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            proc.path().join("kallsyms"),
            "ffffffff81c50d50 T pci_set_power_state\n",
        )
        .expect("write");
        let f = read_functions(tracefs.path(), proc.path(), &WANTED);
        assert!(f.found.contains_key("pci_set_power_state"));
        assert!(f.source.contains("kallsyms"), "{}", f.source);
        std::fs::write(
            tracefs.path().join("available_filter_functions"),
            "vfio_pci_core_read [vfio_pci_core]\n",
        )
        .expect("write");
        let f = read_functions(tracefs.path(), proc.path(), &WANTED);
        assert_eq!(f.found.len(), 1);
        assert!(
            f.source.ends_with("available_filter_functions"),
            "{}",
            f.source
        );
    }

    #[test]
    fn every_probe_has_its_programs_and_a_vfio_pci_kind() {
        for p in PCI_PROBES {
            assert!(p.kind.is_pci(), "{}", p.name);
        }
        let names = function_names();
        assert_eq!(names.len(), 9);
        assert!(names.contains(&"__pci_set_power_state"));
        assert!(names.contains(&"vfio_pci_core_read"));
        assert!(!names.contains(&"rpm_suspend"));
    }

    #[test]
    fn report_lines_say_what_is_missing() {
        let a = [
            ProbeAttachment {
                probe: "rpm_suspend",
                kind: "rpm_suspend",
                state: ProbeState::Attached {
                    mechanism: Mechanism::TpBtf,
                    function: None,
                    instead_of: None,
                },
            },
            ProbeAttachment {
                probe: "pci_set_power_state",
                kind: "pci_power",
                state: ProbeState::Attached {
                    mechanism: Mechanism::Fentry,
                    function: Some("__pci_set_power_state"),
                    instead_of: None,
                },
            },
            ProbeAttachment {
                probe: "vfio_pci_core_read",
                kind: "vfio_read",
                state: ProbeState::Absent {
                    why: "module vfio_pci_core not loaded".into(),
                },
            },
        ];
        let r = render_report(&a);
        assert_eq!(
            r,
            "rpm_suspend: tp_btf; pci_set_power_state: fentry on __pci_set_power_state; \
             vfio_pci_core_read: not available (module vfio_pci_core not loaded)"
        );
        let j = serde_json::to_value(&a[2]).expect("json");
        assert_eq!(j["state"], "absent");
        assert_eq!(j["kind"], "vfio_read");
        let j = serde_json::to_value(&a[0]).expect("json");
        assert_eq!(j["mechanism"], "tp_btf");
        assert!(j.get("instead_of").is_none() && j.get("function").is_none());
        let j = serde_json::to_value(&a[1]).expect("json");
        assert_eq!(j["function"], "__pci_set_power_state");
    }
}
