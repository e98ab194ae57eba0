//! vpm's policy file (TOML, default `/etc/vpm/policy.toml`).
//!
//! The policy says what vpm may manage. Today it holds the device allow-list
//! (`[devices]`); QoS classes, dwell times and the rest of the scheduler's knobs
//! join it with the closed loop. Unknown keys are errors (a typo must not turn
//! a rule off silently), and every error names the file, line and column.
//!
//! No policy file means vpm observes and forecasts but manages nothing; callers
//! say so once at start ([`Policy::load`] returns `None`).
//!
//! ```toml
//! [devices]
//! # PCI functions vpm may act on: a BDF (`0000:01:00.0`) or a vendor:device id
//! # pair in hex (`1b36:0010`). The VFs of an allowed PF are allowed with it.
//! allow = ["0000:01:00.0"]
//! ```

mod devices;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use devices::{Candidate, DeviceMatch, Devices};

/// Where vpm looks for its policy unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/vpm/policy.toml";

/// A commented sample policy (shipped in the docs and parsed by a test).
pub const SAMPLE: &str = include_str!("sample.toml");

/// The parsed policy file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The devices vpm may manage.
    #[serde(default)]
    pub devices: Devices,
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
        toml::from_str(text).map_err(|e| PolicyError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Loads the policy at `path`: `Ok(None)` when there is no such file (vpm
    /// then manages nothing), an error when it exists but is unreadable or invalid.
    pub fn load(path: &Path) -> Result<Option<Self>, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
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

    #[test]
    fn sample_parses() {
        let policy = Policy::parse(SAMPLE, Path::new("sample.toml")).unwrap();
        assert!(!policy.devices.allow.is_empty());
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
    fn missing_file_means_no_policy() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Policy::load(&dir.path().join("none.toml")).unwrap(), None);
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[devices]\nallow = [\"1b36:0010\"]\n").unwrap();
        let policy = Policy::load(&path).unwrap().unwrap();
        assert_eq!(policy.devices.allow.len(), 1);
    }
}
