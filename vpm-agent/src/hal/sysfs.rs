//! Reads of PCI sysfs: functions, their attributes, IOMMU groups and config
//! space. Every per-function reader first checks that the function exists,
//! so a missing optional attribute (`None`) is never a missing device.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Sysfs;
use super::bdf::Bdf;
use super::config::ConfigSpace;
use super::error::{HalError, Result, clip};
use super::parse;
use super::power::{PowerControl, PowerState, RuntimeStatus};

/// One PCI function as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PciFunction {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor id (`vendor`).
    pub vendor: u16,
    /// Device id (`device`).
    pub device: u16,
    /// Class code, 24 bits: base class, subclass, programming interface.
    pub class: u32,
    /// Subsystem vendor id, where the kernel shows one.
    pub subsystem_vendor: Option<u16>,
    /// Subsystem device id, where the kernel shows one.
    pub subsystem_device: Option<u16>,
    /// The bound driver (basename of the `driver` link).
    pub driver: Option<String>,
    /// `driver_override`; `None` when unset (`(null)`).
    pub driver_override: Option<String>,
    /// IOMMU group number (basename of the `iommu_group` link); `None`
    /// without an IOMMU.
    pub iommu_group: Option<u32>,
    /// NUMA node; `-1` when the platform does not say.
    pub numa_node: Option<i32>,
    /// SR-IOV state; present iff the function is a PF (`sriov_totalvfs`).
    pub sriov: Option<SriovInfo>,
    /// The PF's VFs from its `virtfnN` links: (N, VF address), by N.
    pub virtfns: Vec<(u32, Bdf)>,
    /// For a VF, its PF (the `physfn` link).
    pub physfn: Option<Bdf>,
    /// `power_state` (read first: it does not wake the device).
    pub power_state: Option<PowerState>,
    /// `power/control`.
    pub power_control: Option<PowerControl>,
    /// `power/runtime_status`.
    pub runtime_status: Option<RuntimeStatus>,
    /// `d3cold_allowed`.
    pub d3cold_allowed: Option<bool>,
}

/// The SR-IOV attributes of a physical function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SriovInfo {
    /// `sriov_totalvfs`: the most VFs the PF supports.
    pub total_vfs: u32,
    /// `sriov_numvfs`: VFs enabled now.
    pub num_vfs: u32,
    /// `sriov_offset`: routing-id offset of the first VF.
    pub offset: u32,
    /// `sriov_stride`: routing-id distance between VFs.
    pub stride: u32,
    /// `sriov_drivers_autoprobe`: new VFs get drivers bound automatically.
    pub drivers_autoprobe: bool,
    /// `sriov_vf_device`: the VFs' device id, where the kernel shows it.
    pub vf_device: Option<u16>,
}

/// Reads a whole attribute; a missing file is an error.
fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| HalError::io("read", path, e))
}

/// Reads an optional attribute: a missing file is `None`.
fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HalError::io("read", path, e)),
    }
}

/// Reads an optional link: a missing link is `None`.
fn readlink_opt(path: &Path) -> Result<Option<PathBuf>> {
    match fs::read_link(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HalError::io("readlink", path, e)),
    }
}

/// Applies a pure parser, turning `None` into [`HalError::Parse`].
fn parsed<T>(
    path: &Path,
    text: &str,
    what: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<T> {
    f(text).ok_or_else(|| HalError::Parse {
        path: path.to_path_buf(),
        content: clip(text.trim()),
        what,
    })
}

/// Reads and parses a required attribute.
fn read_req<T>(path: &Path, what: &'static str, f: impl FnOnce(&str) -> Option<T>) -> Result<T> {
    parsed(path, &read_text(path)?, what, f)
}

/// Reads and parses an optional attribute.
fn read_parsed_opt<T>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>> {
    read_opt(path)?
        .map(|text| parsed(path, &text, what, f))
        .transpose()
}

/// The basename of an optional link, parsed.
fn link_parsed<T>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>> {
    let Some(target) = readlink_opt(path)? else {
        return Ok(None);
    };
    let text = target.to_string_lossy();
    parsed(path, &text, what, |_| {
        parse::link_basename(&target).and_then(f)
    })
    .map(Some)
}

/// Names of the entries of `dir`.
fn list(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).map_err(|e| HalError::io("list", dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HalError::io("list", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

/// Entries of `dir` that are PCI addresses, sorted; others are skipped.
fn list_bdfs(dir: &Path) -> Result<Vec<Bdf>> {
    let mut out: Vec<Bdf> = list(dir)?.iter().filter_map(|n| n.parse().ok()).collect();
    out.sort();
    Ok(out)
}

/// `true` when `dir` exists and has at least one entry.
fn has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// `true` for a VFIO device cdev name, `vfio<N>`.
pub(crate) fn is_vfio_cdev_name(name: &str) -> bool {
    name.strip_prefix("vfio")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn read_driver(dir: &Path) -> Result<Option<String>> {
    link_parsed(&dir.join("driver"), "driver link", |n| Some(n.to_owned()))
}

fn read_power_state(dir: &Path) -> Result<Option<PowerState>> {
    Ok(read_opt(&dir.join("power_state"))?.map(|t| PowerState::parse(&t)))
}

fn read_sriov(dir: &Path) -> Result<Option<SriovInfo>> {
    let Some(total) = read_parsed_opt(&dir.join("sriov_totalvfs"), "decimal", parse::dec_u32)?
    else {
        return Ok(None);
    };
    Ok(Some(SriovInfo {
        total_vfs: total,
        num_vfs: read_req(&dir.join("sriov_numvfs"), "decimal", parse::dec_u32)?,
        offset: read_req(&dir.join("sriov_offset"), "decimal", parse::dec_u32)?,
        stride: read_req(&dir.join("sriov_stride"), "decimal", parse::dec_u32)?,
        drivers_autoprobe: read_req(&dir.join("sriov_drivers_autoprobe"), "0 or 1", parse::flag)?,
        vf_device: read_parsed_opt(&dir.join("sriov_vf_device"), "hex u16", parse::hex_u16)?,
    }))
}

fn read_virtfns(dir: &Path) -> Result<Vec<(u32, Bdf)>> {
    let mut out = Vec::new();
    for name in list(dir)? {
        let Some(n) = parse::virtfn_index(&name) else {
            continue;
        };
        let path = dir.join(&name);
        if let Some(vf) = link_parsed(&path, "PCI address", |b| b.parse().ok())? {
            out.push((n, vf));
        }
    }
    out.sort();
    Ok(out)
}

impl Sysfs {
    /// The function's directory, after checking that it exists.
    pub(crate) fn existing_device_dir(&self, bdf: Bdf) -> Result<PathBuf> {
        let dir = self.device_dir(bdf);
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(dir),
            Ok(_) => Err(HalError::NoDevice { bdf, path: dir }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(HalError::NoDevice { bdf, path: dir })
            }
            Err(e) => Err(HalError::io("stat", dir, e)),
        }
    }

    /// Every PCI function under `ROOT/bus/pci/devices`, sorted. Entries whose
    /// names are not PCI addresses are skipped.
    pub fn functions(&self) -> Result<Vec<Bdf>> {
        list_bdfs(&self.devices_dir())
    }

    /// Everything sysfs says about one function. Reads `power_state` first
    /// and never reads config space, so a suspended device stays asleep.
    ///
    /// `vendor`, `device` and `class` are required; attributes that older
    /// kernels or some devices lack are `None`.
    pub fn function(&self, bdf: Bdf) -> Result<PciFunction> {
        let dir = self.existing_device_dir(bdf)?;
        let power_state = read_power_state(&dir)?;
        let hex16 = |name: &str| read_req(&dir.join(name), "hex u16", parse::hex_u16);
        let opt_hex16 = |name: &str| read_parsed_opt(&dir.join(name), "hex u16", parse::hex_u16);
        Ok(PciFunction {
            bdf,
            vendor: hex16("vendor")?,
            device: hex16("device")?,
            class: read_req(&dir.join("class"), "hex class code", parse::hex_u32)?,
            subsystem_vendor: opt_hex16("subsystem_vendor")?,
            subsystem_device: opt_hex16("subsystem_device")?,
            driver: read_driver(&dir)?,
            driver_override: read_opt(&dir.join("driver_override"))?
                .and_then(|t| parse::driver_override(&t)),
            iommu_group: link_parsed(&dir.join("iommu_group"), "IOMMU group number", |n| {
                n.parse().ok()
            })?,
            numa_node: read_parsed_opt(&dir.join("numa_node"), "decimal", parse::dec_i32)?,
            sriov: read_sriov(&dir)?,
            virtfns: read_virtfns(&dir)?,
            physfn: link_parsed(&dir.join("physfn"), "PCI address", |b| b.parse().ok())?,
            power_state,
            power_control: read_parsed_opt(
                &dir.join("power/control"),
                "on or auto",
                PowerControl::parse,
            )?,
            runtime_status: read_parsed_opt(
                &dir.join("power/runtime_status"),
                "runtime PM status",
                RuntimeStatus::parse,
            )?,
            d3cold_allowed: read_parsed_opt(&dir.join("d3cold_allowed"), "0 or 1", parse::flag)?,
        })
    }

    /// The SR-IOV attributes of `pf`; `None` if it is not a PF.
    pub fn sriov(&self, pf: Bdf) -> Result<Option<SriovInfo>> {
        read_sriov(&self.existing_device_dir(pf)?)
    }

    /// `sriov_totalvfs`; [`HalError::NotSriov`] if `pf` is not a PF.
    pub fn sriov_totalvfs(&self, pf: Bdf) -> Result<u32> {
        let path = self.existing_device_dir(pf)?.join("sriov_totalvfs");
        read_parsed_opt(&path, "decimal", parse::dec_u32)?.ok_or(HalError::NotSriov { bdf: pf })
    }

    /// `sriov_numvfs`; [`HalError::NotSriov`] if `pf` is not a PF.
    pub fn sriov_numvfs(&self, pf: Bdf) -> Result<u32> {
        let path = self.existing_device_dir(pf)?.join("sriov_numvfs");
        read_parsed_opt(&path, "decimal", parse::dec_u32)?.ok_or(HalError::NotSriov { bdf: pf })
    }

    /// `sriov_drivers_autoprobe`; [`HalError::NotSriov`] if `pf` is not a PF.
    pub fn sriov_drivers_autoprobe(&self, pf: Bdf) -> Result<bool> {
        let path = self
            .existing_device_dir(pf)?
            .join("sriov_drivers_autoprobe");
        read_parsed_opt(&path, "0 or 1", parse::flag)?.ok_or(HalError::NotSriov { bdf: pf })
    }

    /// The PF's VFs from its `virtfnN` links, by N; empty for other functions.
    pub fn virtfns(&self, pf: Bdf) -> Result<Vec<(u32, Bdf)>> {
        read_virtfns(&self.existing_device_dir(pf)?)
    }

    /// A VF's PF (the `physfn` link); `None` for other functions.
    pub fn physfn(&self, vf: Bdf) -> Result<Option<Bdf>> {
        let path = self.existing_device_dir(vf)?.join("physfn");
        link_parsed(&path, "PCI address", |b| b.parse().ok())
    }

    /// The bound driver's name; `None` when no driver is bound.
    pub fn driver(&self, bdf: Bdf) -> Result<Option<String>> {
        read_driver(&self.existing_device_dir(bdf)?)
    }

    /// `driver_override`; `None` when unset. The attribute is required
    /// (every kernel since 3.16 has it).
    pub fn driver_override(&self, bdf: Bdf) -> Result<Option<String>> {
        let path = self.existing_device_dir(bdf)?.join("driver_override");
        Ok(parse::driver_override(&read_text(&path)?))
    }

    /// `power_state`; `None` on kernels without it. Reading it does not wake
    /// the device.
    pub fn power_state(&self, bdf: Bdf) -> Result<Option<PowerState>> {
        read_power_state(&self.existing_device_dir(bdf)?)
    }

    /// `power/runtime_status`; `None` without runtime PM.
    pub fn runtime_status(&self, bdf: Bdf) -> Result<Option<RuntimeStatus>> {
        let path = self.existing_device_dir(bdf)?.join("power/runtime_status");
        read_parsed_opt(&path, "runtime PM status", RuntimeStatus::parse)
    }

    /// `power/control`; `None` without runtime PM.
    pub fn power_control(&self, bdf: Bdf) -> Result<Option<PowerControl>> {
        let path = self.existing_device_dir(bdf)?.join("power/control");
        read_parsed_opt(&path, "on or auto", PowerControl::parse)
    }

    /// The IOMMU group number; `None` when the function has none (no IOMMU).
    pub fn iommu_group(&self, bdf: Bdf) -> Result<Option<u32>> {
        let path = self.existing_device_dir(bdf)?.join("iommu_group");
        link_parsed(&path, "IOMMU group number", |n| n.parse().ok())
    }

    /// The functions in IOMMU group `group`, sorted
    /// (`ROOT/kernel/iommu_groups/<group>/devices`). A missing group is an
    /// error.
    pub fn iommu_group_devices(&self, group: u32) -> Result<Vec<Bdf>> {
        list_bdfs(&self.iommu_group_dir(group).join("devices"))
    }

    /// Whether an IOMMU is active: `ROOT/class/iommu` has an entry, or
    /// `ROOT/kernel/iommu_groups` has a group that is not VFIO's no-IOMMU
    /// stand-in (named `vfio-noiommu`: `enable_unsafe_noiommu_mode` makes
    /// groups without an IOMMU). Unreadable directories count as empty.
    pub fn iommu_enabled(&self) -> bool {
        if has_entries(&self.root().join("class/iommu")) {
            return true;
        }
        let Ok(groups) = fs::read_dir(self.root().join("kernel/iommu_groups")) else {
            return false;
        };
        groups.flatten().any(|g| {
            fs::read_to_string(g.path().join("name")).map_or(true, |n| n.trim() != "vfio-noiommu")
        })
    }

    /// The VFIO device cdevs of a function bound to vfio-pci on kernels with
    /// VFIO cdev support (`vfio-dev/vfioN`, opened as `/dev/vfio/devices/vfioN`),
    /// sorted. Empty when there are none; other names are skipped.
    pub fn vfio_cdevs(&self, bdf: Bdf) -> Result<Vec<String>> {
        let dir = self.existing_device_dir(bdf)?.join("vfio-dev");
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut out: Vec<String> = list(&dir)?
            .into_iter()
            .filter(|n| is_vfio_cdev_name(n))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The function's configuration space (the `config` file).
    ///
    /// Root gets the whole space (256 bytes, 4096 for PCIe); other users get
    /// the first 64 bytes. Reading it runtime-resumes a suspended device: read
    /// [`Sysfs::power_state`] first when that matters.
    pub fn config(&self, bdf: Bdf) -> Result<ConfigSpace> {
        let path = self.existing_device_dir(bdf)?.join("config");
        fs::read(&path)
            .map(ConfigSpace::new)
            .map_err(|e| HalError::io("read", path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::Errno;
    use crate::hal::testtree::Tree;

    #[test]
    fn lists_functions_sorted_skipping_other_entries() {
        let t = Tree::new();
        t.add("0000:02:00.0");
        t.add("0000:01:00.0");
        t.add("0000:00:1f.3");
        std::fs::create_dir(t.sysfs.devices_dir().join("not-a-bdf")).unwrap();
        let got: Vec<String> = t
            .sysfs
            .functions()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["0000:00:1f.3", "0000:01:00.0", "0000:02:00.0"]);
        let missing = Sysfs::new(t.dir.path().join("nope"));
        let e = missing.functions().unwrap_err();
        assert_eq!(e.errno(), Some(Errno::NoEnt));
        assert!(e.to_string().contains("wrong sysfs root"), "{e}");
    }

    #[test]
    fn reads_a_full_sriov_pf() {
        let t = Tree::new();
        let pf = t.add("0000:01:00.0");
        t.sriov(pf, 4, 2);
        t.bind(pf, "nvme");
        let vf1 = t.add("0000:01:00.1");
        let vf2 = t.add("0000:01:00.2");
        t.link_to_device(pf, "virtfn1", vf2);
        t.link_to_device(pf, "virtfn0", vf1);
        t.link_to_device(vf1, "physfn", pf);
        t.write(pf, "subsystem_vendor", "0x1af4\n");
        t.write(pf, "subsystem_device", "0x1100\n");
        t.write(pf, "numa_node", "0\n");
        t.write(pf, "d3cold_allowed", "1\n");
        t.iommu_group(pf, 12);

        let f = t.sysfs.function(pf).unwrap();
        assert_eq!(
            f,
            PciFunction {
                bdf: pf,
                vendor: 0x1b36,
                device: 0x0010,
                class: 0x010802,
                subsystem_vendor: Some(0x1af4),
                subsystem_device: Some(0x1100),
                driver: Some("nvme".into()),
                driver_override: None,
                iommu_group: Some(12),
                numa_node: Some(0),
                sriov: Some(SriovInfo {
                    total_vfs: 4,
                    num_vfs: 2,
                    offset: 1,
                    stride: 1,
                    drivers_autoprobe: true,
                    vf_device: Some(0x0010),
                }),
                virtfns: vec![(0, vf1), (1, vf2)],
                physfn: None,
                power_state: Some(PowerState::D0),
                power_control: Some(PowerControl::Auto),
                runtime_status: Some(RuntimeStatus::Active),
                d3cold_allowed: Some(true),
            }
        );
        let v = t.sysfs.function(vf1).unwrap();
        assert_eq!((v.physfn, v.sriov, v.numa_node), (Some(pf), None, Some(-1)));
        assert_eq!(t.sysfs.physfn(vf1).unwrap(), Some(pf));
        assert_eq!(t.sysfs.virtfns(pf).unwrap(), vec![(0, vf1), (1, vf2)]);
        assert_eq!(t.sysfs.sriov_numvfs(pf).unwrap(), 2);
        assert_eq!(t.sysfs.sriov_totalvfs(pf).unwrap(), 4);
        assert!(t.sysfs.sriov_drivers_autoprobe(pf).unwrap());
        assert_eq!(t.sysfs.driver(pf).unwrap().as_deref(), Some("nvme"));
        assert_eq!(t.sysfs.driver(vf1).unwrap(), None);
        assert_eq!(t.sysfs.iommu_group(pf).unwrap(), Some(12));
        assert_eq!(t.sysfs.iommu_group(vf1).unwrap(), None);
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["bdf"], "0000:01:00.0");
        assert_eq!(json["virtfns"][1][1], "0000:01:00.2");
        assert_eq!(json["power_state"], "D0");
    }

    #[test]
    fn optional_attributes_missing_are_none() {
        let t = Tree::new();
        let b = t.add("0000:00:02.0");
        for attr in [
            "power_state",
            "power/control",
            "power/runtime_status",
            "driver_override",
            "numa_node",
        ] {
            std::fs::remove_file(t.sysfs.device_dir(b).join(attr)).unwrap();
        }
        let f = t.sysfs.function(b).unwrap();
        assert_eq!(
            (
                f.power_state,
                f.power_control,
                f.runtime_status,
                f.driver_override,
                f.numa_node,
                f.d3cold_allowed,
                f.subsystem_vendor,
            ),
            (None, None, None, None, None, None, None)
        );
        assert_eq!(t.sysfs.sriov(b).unwrap(), None);
        assert!(matches!(
            t.sysfs.sriov_numvfs(b),
            Err(HalError::NotSriov { bdf }) if bdf == b
        ));
        assert!(matches!(
            t.sysfs.sriov_totalvfs(b),
            Err(HalError::NotSriov { .. })
        ));
        // driver_override is required by its own reader.
        assert_eq!(
            t.sysfs.driver_override(b).unwrap_err().errno(),
            Some(Errno::NoEnt)
        );
    }

    #[test]
    fn required_attributes_and_devices() {
        let t = Tree::new();
        let b = t.add("0000:00:03.0");
        std::fs::remove_file(t.sysfs.attr_path(b, "class")).unwrap();
        let e = t.sysfs.function(b).unwrap_err();
        assert!(
            matches!(&e, HalError::Io { op: "read", errno: Errno::NoEnt, path, .. } if path.ends_with("class")),
            "{e:?}"
        );
        t.write(b, "class", "network\n");
        let e = t.sysfs.function(b).unwrap_err();
        assert!(
            matches!(&e, HalError::Parse { content, what: "hex class code", .. } if content == "network"),
            "{e:?}"
        );
        let gone: Bdf = "0000:09:00.0".parse().unwrap();
        let e = t.sysfs.function(gone).unwrap_err();
        assert!(matches!(e, HalError::NoDevice { bdf, .. } if bdf == gone));
        assert!(e.to_string().contains("lspci"));
        // Single-attribute readers say "no device", not "no driver".
        assert!(matches!(
            t.sysfs.driver(gone),
            Err(HalError::NoDevice { .. })
        ));
        assert!(matches!(
            t.sysfs.power_state(gone),
            Err(HalError::NoDevice { .. })
        ));
    }

    #[test]
    fn power_attributes() {
        let t = Tree::new();
        let b = t.add("0000:00:04.0");
        t.write(b, "power_state", "D3hot\n");
        t.write(b, "power/control", "on\n");
        t.write(b, "power/runtime_status", "suspended\n");
        assert_eq!(t.sysfs.power_state(b).unwrap(), Some(PowerState::D3Hot));
        assert_eq!(t.sysfs.power_control(b).unwrap(), Some(PowerControl::On));
        assert_eq!(
            t.sysfs.runtime_status(b).unwrap(),
            Some(RuntimeStatus::Suspended)
        );
        t.write(b, "power_state", "unknown\n");
        assert_eq!(
            t.sysfs.power_state(b).unwrap(),
            Some(PowerState::Unknown("unknown".into()))
        );
        t.write(b, "power/control", "sometimes\n");
        assert!(matches!(
            t.sysfs.power_control(b),
            Err(HalError::Parse {
                what: "on or auto",
                ..
            })
        ));
        t.write(b, "power/runtime_status", "dozing\n");
        assert!(matches!(
            t.sysfs.runtime_status(b),
            Err(HalError::Parse { .. })
        ));
    }

    #[test]
    fn driver_override_null_and_set() {
        let t = Tree::new();
        let b = t.add("0000:00:05.0");
        assert_eq!(t.sysfs.driver_override(b).unwrap(), None);
        t.write(b, "driver_override", "vfio-pci\n");
        assert_eq!(
            t.sysfs.driver_override(b).unwrap().as_deref(),
            Some("vfio-pci")
        );
        assert_eq!(
            t.sysfs.function(b).unwrap().driver_override.as_deref(),
            Some("vfio-pci")
        );
    }

    #[test]
    fn bad_links_are_parse_errors() {
        let t = Tree::new();
        let b = t.add("0000:00:06.0");
        let dev = t.sysfs.device_dir(b);
        std::os::unix::fs::symlink("../../../kernel/iommu_groups/x", dev.join("iommu_group"))
            .unwrap();
        assert!(matches!(
            t.sysfs.iommu_group(b),
            Err(HalError::Parse {
                what: "IOMMU group number",
                ..
            })
        ));
        std::os::unix::fs::symlink("../0000:00:06.0/..", dev.join("physfn")).unwrap();
        assert!(matches!(t.sysfs.physfn(b), Err(HalError::Parse { .. })));
        // A `driver` that is a file, not a link.
        std::fs::write(dev.join("driver"), "nvme").unwrap();
        assert_eq!(t.sysfs.driver(b).unwrap_err().errno(), Some(Errno::Inval));
    }

    #[test]
    fn iommu_groups() {
        let t = Tree::new();
        assert!(!t.sysfs.iommu_enabled());
        let a = t.add("0000:01:00.0");
        let b = t.add("0000:01:00.1");
        t.iommu_group(b, 3);
        t.iommu_group(a, 3);
        assert_eq!(t.sysfs.iommu_group_devices(3).unwrap(), vec![a, b]);
        assert!(t.sysfs.iommu_enabled());
        assert_eq!(
            t.sysfs.iommu_group_devices(4).unwrap_err().errno(),
            Some(Errno::NoEnt)
        );
        let t = Tree::new();
        std::fs::create_dir_all(t.dir.path().join("class/iommu/dmar0")).unwrap();
        assert!(t.sysfs.iommu_enabled());
        // VFIO's no-IOMMU mode makes groups of its own: no IOMMU for them.
        let t = Tree::new();
        let c = t.add("0000:01:00.2");
        t.iommu_group(c, 0);
        let name = t.dir.path().join("kernel/iommu_groups/0/name");
        std::fs::write(&name, "vfio-noiommu\n").unwrap();
        assert!(!t.sysfs.iommu_enabled());
        std::fs::write(&name, "other\n").unwrap();
        assert!(t.sysfs.iommu_enabled());
    }

    #[test]
    fn vfio_cdev_names() {
        let t = Tree::new();
        let b = t.add("0000:01:00.1");
        assert!(t.sysfs.vfio_cdevs(b).unwrap().is_empty());
        let dir = t.sysfs.device_dir(b).join("vfio-dev");
        for n in ["vfio3", "vfio10", "vfio", "vfiox", "other"] {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        assert_eq!(t.sysfs.vfio_cdevs(b).unwrap(), ["vfio10", "vfio3"]);
        assert!(is_vfio_cdev_name("vfio0"));
        assert!(!is_vfio_cdev_name("vfio0/../x"));
    }

    #[test]
    fn config_space_from_the_file() {
        let t = Tree::new();
        let b = t.add("0000:01:00.0");
        let mut bytes = vec![0u8; 64];
        bytes[0..4].copy_from_slice(&[0x36, 0x1b, 0x10, 0x00]);
        std::fs::write(t.sysfs.attr_path(b, "config"), &bytes).unwrap();
        let c = t.sysfs.config(b).unwrap();
        assert_eq!(
            (c.vendor_id(), c.device_id(), c.len()),
            (Some(0x1b36), Some(0x10), 64)
        );
        let other = t.add("0000:01:00.1");
        assert_eq!(
            t.sysfs.config(other).unwrap_err().errno(),
            Some(Errno::NoEnt)
        );
    }

    /// The real /sys of the machine running the tests: every function must
    /// read without error (whatever the kernel version and hardware).
    #[test]
    fn reads_the_real_sys() {
        let host = Sysfs::host();
        let Ok(all) = host.functions() else {
            return; // no PCI bus (some containers)
        };
        for bdf in all {
            let f = host.function(bdf).unwrap();
            assert_eq!(f.bdf, bdf);
            // Config space of awake devices only (reading it wakes the rest).
            if f.power_state == Some(PowerState::D0) {
                let c = host.config(bdf).unwrap();
                assert_eq!(c.vendor_id(), Some(f.vendor));
                let _ = (c.capabilities(), c.extended_capabilities(), c.pm());
            }
        }
        let _ = host.iommu_enabled();
    }
}
