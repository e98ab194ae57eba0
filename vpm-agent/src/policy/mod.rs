//! vpm's policy file (TOML, default `/etc/vpm/policy.toml`).
//!
//! The policy says what vpm may manage and how: the device allow-list
//! (`[devices]`), the scheduler's horizon, action budget and latency/power
//! preference (`[plan]`), dwell times against flapping (`[dwell]`), QoS
//! classes (`[classes.NAME]`) and which VM is in which class (`[vms]`).
//! [`SAMPLE`] (`policy/sample.toml`) documents every key. Unknown keys are
//! errors (a typo must not turn a rule off silently), and every error names
//! the file, line and column: range checks point at the value, cross-field
//! checks (a rule naming an undefined class, `min_vfs` above `max_vfs`) at
//! the entry.
//!
//! No policy file means vpm observes and forecasts but manages nothing; callers
//! say so once at start ([`Policy::load`] returns `None`) and plan with
//! [`Policy::default`], whose empty allow-list lets no action through.
//!
//! ```toml
//! [devices]
//! # PCI functions vpm may act on: a BDF (`0000:01:00.0`) or a vendor:device id
//! # pair in hex (`1b36:0010`). The VFs of an allowed PF are allowed with it.
//! allow = ["0000:01:00.0"]
//!
//! [vms]
//! rules = [{ vm = "db-*", class = "guaranteed" }]
//! ```

mod devices;
mod hotplug;
mod qos;
mod raw;
mod settings;
mod vms;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use devices::{Candidate, DeviceMatch, Devices, Pf};
pub use hotplug::{GiveBack, HotplugSettings};
pub use qos::{ClassRef, Headroom, QosClass, builtin_classes};
pub use settings::{Dwell, MAX_HORIZON_S, PlanSettings, Preference};
pub use vms::{DEFAULT_CLASS, Glob, VmClasses, VmRule};

/// Where vpm looks for its policy unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/vpm/policy.toml";

/// A commented sample policy (shipped in the docs and parsed by a test).
pub const SAMPLE: &str = include_str!("sample.toml");

/// The parsed, validated policy file.
///
/// Deserializing one (from any serde format) runs the same checks as
/// [`Policy::parse`]; only `parse` can say on which line a cross-field
/// check failed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "raw::RawPolicy")]
pub struct Policy {
    /// The devices vpm may manage.
    pub devices: Devices,
    /// The scheduler's horizon, action budget and preference.
    pub plan: PlanSettings,
    /// Minimum times between changes.
    pub dwell: Dwell,
    /// Where the VMs' monitors are and which ports vpm may plug into.
    pub hotplug: HotplugSettings,
    /// QoS classes by name.
    pub classes: BTreeMap<String, QosClass>,
    /// Which VM is in which class.
    pub vms: VmClasses,
}

impl Default for Policy {
    /// No device allowed, default settings, the built-in classes
    /// ([`builtin_classes`]) and every VM in [`DEFAULT_CLASS`].
    fn default() -> Self {
        Self {
            devices: Devices::default(),
            plan: PlanSettings::default(),
            dwell: Dwell::default(),
            hotplug: HotplugSettings::default(),
            classes: builtin_classes().into_iter().collect(),
            vms: VmClasses::default(),
        }
    }
}

impl TryFrom<raw::RawPolicy> for Policy {
    type Error = String;

    fn try_from(raw: raw::RawPolicy) -> Result<Self, String> {
        raw.validate().map_err(|v| v.message)
    }
}

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file exists but cannot be read.
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        /// The policy file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A policy file named by the user (not the default path) does not exist.
    #[error(
        "no policy file at {path}: the file given does not exist; create it (its [devices] \
         allow list says which devices vpm may manage; vpm-agent/src/policy/sample.toml is a \
         commented sample), or leave the option out to use {DEFAULT_PATH} when it exists"
    )]
    Missing {
        /// The policy file.
        path: PathBuf,
    },
    /// The file is not a valid policy; `message` names the line and column.
    #[error("invalid policy file {path}: {message}")]
    Invalid {
        /// The policy file.
        path: PathBuf,
        /// The parser's message, with the line, column and offending text.
        message: String,
    },
}

impl Policy {
    /// Parses a policy from TOML text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let raw: raw::RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        raw.validate().map_err(|v| PolicyError::Invalid {
            path: path.to_owned(),
            message: raw::locate(text, &v),
        })
    }

    /// The class of the VM named `vm`: the first `[vms]` rule that matches,
    /// else `[vms] default`. A validated policy always has that class; a
    /// hand-built one that lacks it gets [`QosClass::FALLBACK`].
    pub fn class_of(&self, vm: &str) -> ClassRef<'_> {
        let name = self.vms.class_name(vm);
        ClassRef {
            name,
            class: self.classes.get(name).unwrap_or(&QosClass::FALLBACK),
        }
    }

    /// Loads the policy at `path`: `Ok(None)` when there is no file at the
    /// default path [`DEFAULT_PATH`] (vpm then manages nothing), an error
    /// when it exists but is unreadable or invalid, or when another path
    /// names no file (a typo must not silently turn management off).
    pub fn load(path: &Path) -> Result<Option<Self>, PolicyError> {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Self::parse(&text, path).map(Some),
                Err(e) => {
                    let bytes = e.as_bytes();
                    let at = e.utf8_error().valid_up_to();
                    let line = bytes[..at].iter().filter(|b| **b == b'\n').count() + 1;
                    let line_start = bytes[..at]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1);
                    let column = String::from_utf8_lossy(&bytes[line_start..at])
                        .chars()
                        .count()
                        + 1;
                    Err(PolicyError::Invalid {
                        path: path.to_owned(),
                        message: format!(
                            "policy error at line {line}, column {column}: byte {:#04x} is not \
                             UTF-8 text; save the file as UTF-8",
                            bytes.get(at).copied().unwrap_or(0)
                        ),
                    })
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path == Path::new(DEFAULT_PATH) {
                    Ok(None)
                } else {
                    Err(PolicyError::Missing {
                        path: path.to_owned(),
                    })
                }
            }
            Err(source) => Err(PolicyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse(text, Path::new("p.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn sample_parses() {
        let policy = Policy::parse(SAMPLE, Path::new("sample.toml")).unwrap();
        assert!(!policy.devices.allow.is_empty());
        assert_eq!(policy.plan, PlanSettings::default());
        assert_eq!(policy.dwell, Dwell::default());
        assert_eq!(policy.vms.rules.len(), 2);
        assert_eq!(policy.class_of("db-7").name, "guaranteed");
        assert_eq!(policy.class_of("web-1").name, "burstable");
        assert_eq!(policy.class_of("batch").name, "best-effort");
        let be = &policy.classes["best-effort"];
        assert_eq!(be.headroom, Headroom::UnderProvision(0.20));
        assert!(policy.classes["guaranteed"].preempt_dwell);
    }

    #[test]
    fn sample_documents_every_key() {
        for key in [
            "[devices]",
            "allow",
            "[plan]",
            "horizon_s",
            "max_actions_per_tick",
            "preference",
            "wake_latency_s",
            "active_rate",
            "pool_per_vm",
            "[dwell]",
            "awake_s",
            "parked_s",
            "vf_count_s",
            "[classes.",
            "priority",
            "quantile",
            "under_provision",
            "min_vfs",
            "max_vfs",
            "hotplug",
            "max_attached",
            "detach",
            "[hotplug]",
            "ports",
            "monitor",
            "command_timeout_s",
            "unplug_timeout_s",
            "demand",
            "per_vf",
            "attached_s",
            "give_back",
            "preempt_dwell",
            "[vms]",
            "rules",
            "vm = ",
            "class = ",
            "default",
        ] {
            assert!(SAMPLE.contains(key), "sample.toml does not document {key}");
        }
        // Every key the sample sets is known (the parser denies unknown ones),
        // and the sample's serialized policy reads back the same.
        let policy = parse(SAMPLE).unwrap();
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["plan"]["preference"], "balanced");
        assert_eq!(json["devices"]["allow"][0], "0000:01:00.0");
    }

    #[test]
    fn a_devices_only_policy_gets_the_defaults() {
        let policy = parse("[devices]\nallow = [\"1b36:0010\"]\n").unwrap();
        let default = Policy::default();
        assert_eq!(policy.plan, default.plan);
        assert_eq!(policy.classes, default.classes);
        assert_eq!(policy.vms, default.vms);
        assert_eq!(policy.class_of("anything").name, DEFAULT_CLASS);
        assert!(Policy::default().devices.allow.is_empty());
        assert_eq!(parse("").unwrap(), Policy::default());
    }

    #[test]
    fn classes_replace_the_builtin_set() {
        let policy = parse(
            "[classes.gold]\npriority = 9\nmin_vfs = 1\nmax_vfs = 2\n\
             [classes.tin]\n\n[vms]\nrules = [{ vm = \"g-?\", class = \"gold\" }]\n\
             default = \"tin\"\n",
        )
        .unwrap();
        assert_eq!(policy.classes.len(), 2);
        let gold = policy.class_of("g-1");
        assert_eq!((gold.name, gold.class.priority), ("gold", 9));
        assert_eq!(policy.class_of("g-12").name, "tin");
    }

    #[test]
    fn cross_field_errors_name_the_entry_and_its_line() {
        let err = parse(
            "[vms]\nrules = [\n  { vm = \"web-*\", class = \"burstable\" },\n  \
             { vm = \"db-*\", class = \"gold\" },\n]\n",
        )
        .unwrap_err();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("rule 2 (vm = \"db-*\")"), "{err}");
        assert!(err.contains("class \"gold\" is not defined"), "{err}");
        assert!(
            err.contains("\"best-effort\", \"burstable\", \"guaranteed\""),
            "{err}"
        );

        let err = parse("[vms]\ndefault = \"silver\"\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("[vms] default: class \"silver\""), "{err}");

        let err = parse("[classes.gold]\npriority = 1\n").unwrap_err();
        assert!(
            err.contains("set [vms] default to one of \"gold\""),
            "{err}"
        );

        // The key at fault, not the class's header.
        let err = parse("[classes.best-effort]\n\n[classes.gold]\nmin_vfs = 3\nmax_vfs = 2\n")
            .unwrap_err();
        assert!(err.contains("line 4"), "{err}");
        assert!(
            err.contains("class \"gold\": min_vfs 3 is above max_vfs 2"),
            "{err}"
        );

        let err = parse("[classes.best-effort]\nquantile = 1.2\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("quantile 1.2"), "{err}");

        let err = parse("[vms]\nrules = [{ vm = \"\", class = \"burstable\" }]\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("pattern is empty"), "{err}");

        let err = parse("[plan]\nhorizon_s = 300\npreference = \"speed\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");

        let err = parse("[classes.gold]\nprio = 1\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("prio"), "{err}");
    }

    #[test]
    fn deserializing_runs_the_same_checks() {
        let ok: Policy = toml::from_str("[plan]\nmax_actions_per_tick = 0\n").unwrap();
        assert_eq!(ok.plan.max_actions_per_tick, 0);
        let err = toml::from_str::<Policy>("[vms]\ndefault = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("class \"x\" is not defined"), "{err}");
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let err = Policy::parse(
            "[devices]\nallow = []\nalow = [\"x\"]\n",
            Path::new("p.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("p.toml"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("alow"), "{err}");
        let err = Policy::parse("[device]\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("device"), "{err}");
    }

    #[test]
    fn bad_entries_name_the_entry() {
        let err = Policy::parse("[devices]\nallow = [\"0000:01:00\"]\n", Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("0000:01:00"), "{err}");
    }

    #[test]
    fn a_non_utf8_byte_is_named_by_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, b"[devices]\nallow = []\n# caf\xe9\n").unwrap();
        let err = Policy::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 3, column 6") && err.contains("0xe9") && err.contains("UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn only_a_missing_default_file_means_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        let err = Policy::load(&dir.path().join("none.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("none.toml") && err.contains("does not exist"),
            "{err}"
        );
        if !Path::new(DEFAULT_PATH).exists() {
            assert_eq!(Policy::load(Path::new(DEFAULT_PATH)).unwrap(), None);
        }
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[devices]\nallow = [\"1b36:0010\"]\n").unwrap();
        let policy = Policy::load(&path).unwrap().unwrap();
        assert_eq!(policy.devices.allow.len(), 1);
    }
}
