//! PCI power-management states as sysfs and config space spell them.

use std::fmt;

/// A PCI device power state: sysfs `power_state`, or PMCSR bits 1:0.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Light sleep (optional state).
    D1,
    /// Deeper sleep (optional state).
    D2,
    /// Off with config space still reachable.
    D3Hot,
    /// Powered off; config space reads return all ones.
    D3Cold,
    /// Anything else the kernel prints (`unknown`, `error`, or a future name).
    Unknown(String),
}

impl PowerState {
    /// Parses sysfs `power_state` (`D0`, `D3hot`, … ; surrounding whitespace
    /// ignored). Never fails: unrecognized text is kept in
    /// [`PowerState::Unknown`].
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "D0" => PowerState::D0,
            "D1" => PowerState::D1,
            "D2" => PowerState::D2,
            "D3hot" => PowerState::D3Hot,
            "D3cold" => PowerState::D3Cold,
            other => PowerState::Unknown(other.to_owned()),
        }
    }

    /// The state in PMCSR bits 1:0 (`PowerState` field of the PM capability).
    pub const fn from_pmcsr(pmcsr: u16) -> Self {
        match pmcsr & 0b11 {
            0 => PowerState::D0,
            1 => PowerState::D1,
            2 => PowerState::D2,
            _ => PowerState::D3Hot,
        }
    }

    /// `true` for D3hot and D3cold.
    pub const fn is_d3(&self) -> bool {
        matches!(self, PowerState::D3Hot | PowerState::D3Cold)
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::D0 => "D0",
            PowerState::D1 => "D1",
            PowerState::D2 => "D2",
            PowerState::D3Hot => "D3hot",
            PowerState::D3Cold => "D3cold",
            PowerState::Unknown(s) => s,
        })
    }
}

impl serde::Serialize for PowerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Runtime power management policy, sysfs `power/control`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerControl {
    /// `on`: runtime PM off, the device stays powered.
    On,
    /// `auto`: the driver may runtime-suspend the device when idle.
    Auto,
}

impl PowerControl {
    /// The sysfs spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            PowerControl::On => "on",
            PowerControl::Auto => "auto",
        }
    }

    /// Parses `power/control` (whitespace ignored); `None` if neither value.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "on" => Some(PowerControl::On),
            "auto" => Some(PowerControl::Auto),
            _ => None,
        }
    }
}

impl fmt::Display for PowerControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Runtime PM status, sysfs `power/runtime_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeStatus {
    /// Powered and usable.
    Active,
    /// Runtime-suspended (for PCI usually D3hot or D3cold).
    Suspended,
    /// Being suspended.
    Suspending,
    /// Being resumed.
    Resuming,
    /// A runtime PM callback failed; runtime PM is stuck until reset.
    Error,
    /// Runtime PM is disabled for the device.
    Unsupported,
}

impl RuntimeStatus {
    /// The sysfs spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            RuntimeStatus::Active => "active",
            RuntimeStatus::Suspended => "suspended",
            RuntimeStatus::Suspending => "suspending",
            RuntimeStatus::Resuming => "resuming",
            RuntimeStatus::Error => "error",
            RuntimeStatus::Unsupported => "unsupported",
        }
    }

    /// Parses `power/runtime_status` (whitespace ignored); `None` if unknown.
    pub fn parse(text: &str) -> Option<Self> {
        [
            RuntimeStatus::Active,
            RuntimeStatus::Suspended,
            RuntimeStatus::Suspending,
            RuntimeStatus::Resuming,
            RuntimeStatus::Error,
            RuntimeStatus::Unsupported,
        ]
        .into_iter()
        .find(|s| s.as_str() == text.trim())
    }
}

impl fmt::Display for RuntimeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_state_text() {
        for (text, want) in [
            ("D0\n", PowerState::D0),
            ("D1", PowerState::D1),
            ("D2\n", PowerState::D2),
            ("D3hot\n", PowerState::D3Hot),
            ("D3cold\n", PowerState::D3Cold),
            ("unknown\n", PowerState::Unknown("unknown".into())),
            ("error\n", PowerState::Unknown("error".into())),
            ("d3hot", PowerState::Unknown("d3hot".into())),
        ] {
            let got = PowerState::parse(text);
            assert_eq!(got, want, "{text:?}");
            assert_eq!(got.to_string(), text.trim());
        }
        assert!(PowerState::D3Cold.is_d3() && !PowerState::D0.is_d3());
        assert_eq!(
            serde_json::to_string(&PowerState::D3Hot).unwrap(),
            "\"D3hot\""
        );
    }

    #[test]
    fn power_state_from_pmcsr() {
        assert_eq!(PowerState::from_pmcsr(0x0008), PowerState::D0);
        assert_eq!(PowerState::from_pmcsr(0x0001), PowerState::D1);
        assert_eq!(PowerState::from_pmcsr(0x0002), PowerState::D2);
        assert_eq!(PowerState::from_pmcsr(0xfffb), PowerState::D3Hot);
    }

    #[test]
    fn control_and_runtime_status() {
        assert_eq!(PowerControl::parse("on\n"), Some(PowerControl::On));
        assert_eq!(PowerControl::parse("auto"), Some(PowerControl::Auto));
        assert_eq!(PowerControl::parse("off"), None);
        assert_eq!(PowerControl::Auto.to_string(), "auto");
        for s in [
            "active",
            "suspended",
            "suspending",
            "resuming",
            "error",
            "unsupported",
        ] {
            let got = RuntimeStatus::parse(&format!("{s}\n")).unwrap();
            assert_eq!(got.as_str(), s);
            assert_eq!(serde_json::to_string(&got).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(RuntimeStatus::parse("asleep"), None);
    }
}
