//! The `[hotplug]` section: how vpm connects VFs to running VMs over QMP.
//!
//! Which VMs may receive devices, and how many, is per class (`hotplug`,
//! `max_attached`, `detach` in `[classes.NAME]`); this section says where the
//! monitors are and which ports vpm may plug into.

use serde::{Deserialize, Serialize};

/// `[hotplug]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotplugSettings {
    /// The qdev ids of the hot-plug ports vpm may plug into (`rp1`, ...);
    /// empty: any hot-plug port (`pcie-root-port`, `ioh3420`,
    /// `xio3130-downstream`) with nothing on it. Default empty.
    pub ports: Vec<String>,
    /// The QMP socket of VMs whose command line names none, with `{name}`
    /// standing for the VM's name (`/run/vpm/qmp/{name}.sock`; it must
    /// contain `{name}`, so VMs do not share one). Default none: such VMs
    /// are reported as having no monitor.
    #[serde(deserialize_with = "monitor_template")]
    pub monitor: Option<String>,
    /// Seconds to wait for each QMP answer (above 0, at most an hour).
    /// Default 10.
    #[serde(deserialize_with = "super::settings::timeout")]
    pub command_timeout_s: f64,
    /// Seconds to wait for `DEVICE_DELETED` after `device_del` (above 0, at
    /// most an hour); past it the VF is reported as still attached.
    /// Default 10.
    #[serde(deserialize_with = "super::settings::timeout")]
    pub unplug_timeout_s: f64,
    /// The resource whose forecast says how many VFs a VM wants hot-plugged
    /// (`cpu`, `net_rx_bytes_per_s`, ... any series vpm records). Default
    /// none: `vpm run` plans no hot-plug (`vpm vm` still works).
    pub demand: Option<String>,
    /// How much of `demand` one VF serves (above 0): a VM wants
    /// `ceil(upper bound / per_vf)` VFs (within 0.2 of a whole number rounds
    /// down), at most its class's `max_attached`. Default 1.
    #[serde(deserialize_with = "super::settings::positive")]
    pub per_vf: f64,
    /// A hot-plugged VF stays attached at least this long, seconds, before
    /// vpm takes it back (at least 0). Default 60.
    #[serde(deserialize_with = "super::settings::seconds")]
    pub attached_s: f64,
    /// When vpm takes back a VF it attached. Default `idle`.
    pub give_back: GiveBack,
}

/// A monitor path template: it names each VM's own socket (`{name}`).
fn monitor_template<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let t = String::deserialize(d)?;
    if t.contains("{name}") {
        Ok(Some(t))
    } else {
        Err(serde::de::Error::custom(format!(
            "monitor {t:?}: must contain {{name}} (the VM's name), so each VM gets its own \
             socket, e.g. \"/run/vpm/qmp/{{name}}.sock\""
        )))
    }
}

/// When vpm takes back a VF it attached (`[hotplug] give_back`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GiveBack {
    /// Once the VM is predicted not to need it (over the keep window and
    /// `attached_s`): saves the power an attached VF draws (the guest owns
    /// its power state) and frees it early.
    #[default]
    Idle,
    /// Only when another VM's claim needs it (a move) and the VM is predicted
    /// not to need it, or has the weaker claim: the VF stays with the VM that
    /// used it last, connected for its next burst even when that burst is
    /// not foreseen.
    Contention,
}

impl Default for HotplugSettings {
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            monitor: None,
            command_timeout_s: 10.0,
            unplug_timeout_s: 10.0,
            demand: None,
            per_vf: 1.0,
            attached_s: 60.0,
            give_back: GiveBack::Idle,
        }
    }
}

impl HotplugSettings {
    /// The monitor socket the policy gives for VM `name`, if any.
    pub fn monitor_for(&self, name: &str) -> Option<std::path::PathBuf> {
        self.monitor
            .as_ref()
            .map(|t| std::path::PathBuf::from(t.replace("{name}", name)))
    }

    /// Whether vpm may plug into the port with qdev id `port`.
    pub fn port_allowed(&self, port: &str) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_templates() {
        let h: HotplugSettings = toml::from_str("").unwrap();
        assert_eq!(h, HotplugSettings::default());
        assert!(h.port_allowed("anything"));
        assert_eq!(h.monitor_for("web-1"), None);
        let h: HotplugSettings =
            toml::from_str("ports = [\"rp1\"]\nmonitor = \"/run/q/{name}.sock\"\n").unwrap();
        assert!(h.port_allowed("rp1") && !h.port_allowed("rp2"));
        assert_eq!(
            h.monitor_for("web-1").unwrap(),
            std::path::Path::new("/run/q/web-1.sock")
        );
        assert!(toml::from_str::<HotplugSettings>("unplug_timeout_s = 0\n").is_err());
        assert!(toml::from_str::<HotplugSettings>("port = []\n").is_err());
        let h: HotplugSettings = toml::from_str("give_back = \"contention\"\n").unwrap();
        assert_eq!(h.give_back, GiveBack::Contention);
        assert!(toml::from_str::<HotplugSettings>("give_back = \"never\"\n").is_err());
        let e = toml::from_str::<HotplugSettings>("monitor = \"/run/a.sock\"\n").unwrap_err();
        assert!(e.to_string().contains("{name}"), "{e}");
        assert!(toml::from_str::<HotplugSettings>("monitor = \"\"\n").is_err());
        let e = toml::from_str::<HotplugSettings>("command_timeout_s = 1e20\n").unwrap_err();
        assert!(e.to_string().contains("at most 3600"), "{e}");
    }
}
