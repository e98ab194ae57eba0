//! Pure parsers for the text of PCI sysfs attributes and links. The
//! [`Sysfs`](super::Sysfs) readers open the files; these only look at
//! strings, so every format is unit-tested without a tree.

use std::path::Path;

/// The value without the newline the kernel's `show` functions add (and any
/// other surrounding whitespace).
fn value(text: &str) -> &str {
    text.trim()
}

/// A hex number as sysfs prints it: `0x1b36\n` (`vendor`, `device`,
/// `class`), or without the `0x` (`sriov_vf_device` prints `%x`).
pub fn hex_u32(text: &str) -> Option<u32> {
    let v = value(text);
    let digits = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// [`hex_u32`] that must fit 16 bits (vendor and device ids).
pub fn hex_u16(text: &str) -> Option<u16> {
    hex_u32(text).and_then(|n| u16::try_from(n).ok())
}

/// A decimal count such as `4\n` (`sriov_totalvfs`, `sriov_offset`, …).
pub fn dec_u32(text: &str) -> Option<u32> {
    let v = value(text);
    // `u32::from_str` accepts a leading `+`; sysfs never prints one.
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A signed decimal such as `numa_node`'s `-1\n`.
pub fn dec_i32(text: &str) -> Option<i32> {
    let v = value(text);
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// A `0`/`1` flag (`d3cold_allowed`, `sriov_drivers_autoprobe`).
pub fn flag(text: &str) -> Option<bool> {
    match value(text) {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// `driver_override`: the kernel prints `(null)` when unset. An empty file
/// (what a temp tree holds after the HAL wrote the clearing `\n`) is unset
/// too.
pub fn driver_override(text: &str) -> Option<String> {
    match value(text) {
        "" | "(null)" => None,
        v => Some(v.to_owned()),
    }
}

/// The last component of a sysfs link target (`../../../bus/pci/drivers/nvme`
/// → `nvme`), if it is valid UTF-8.
pub fn link_basename(target: &Path) -> Option<&str> {
    target.file_name().and_then(|n| n.to_str())
}

/// The VF index of a `virtfnN` link name.
pub fn virtfn_index(name: &str) -> Option<u32> {
    name.strip_prefix("virtfn").and_then(dec_u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        assert_eq!(hex_u16("0x1b36\n"), Some(0x1b36));
        assert_eq!(hex_u16("0X1B36"), Some(0x1b36));
        assert_eq!(hex_u16("10\n"), Some(0x10));
        assert_eq!(hex_u16("0x10000"), None);
        assert_eq!(hex_u32("0x010802\n"), Some(0x010802));
        for bad in ["", "\n", "0x", "0x-1", "0x+1", "zz", "0x1 2", "0x1b36\n0x1"] {
            assert_eq!(hex_u32(bad), None, "{bad:?}");
        }
        assert_eq!(hex_u32("0x1ffffffff"), None);
    }

    #[test]
    fn decimal() {
        assert_eq!(dec_u32("4\n"), Some(4));
        assert_eq!(dec_u32("0"), Some(0));
        for bad in ["", "+4", "-1", "4 VFs", "0x4", "99999999999"] {
            assert_eq!(dec_u32(bad), None, "{bad:?}");
        }
        assert_eq!(dec_i32("-1\n"), Some(-1));
        assert_eq!(dec_i32("1\n"), Some(1));
        for bad in ["", "-", "+1", "--1", "1-"] {
            assert_eq!(dec_i32(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flags_and_override() {
        assert_eq!(flag("1\n"), Some(true));
        assert_eq!(flag("0\n"), Some(false));
        assert_eq!(flag("2"), None);
        assert_eq!(flag("Y"), None);
        assert_eq!(driver_override("(null)\n"), None);
        assert_eq!(driver_override("\n"), None);
        assert_eq!(driver_override("vfio-pci\n").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn links() {
        assert_eq!(
            link_basename(Path::new("../../../bus/pci/drivers/nvme")),
            Some("nvme")
        );
        assert_eq!(
            link_basename(Path::new("../../../kernel/iommu_groups/12")),
            Some("12")
        );
        assert_eq!(link_basename(Path::new("/")), None);
        assert_eq!(link_basename(Path::new("..")), None);
        assert_eq!(virtfn_index("virtfn0"), Some(0));
        assert_eq!(virtfn_index("virtfn17"), Some(17));
        assert_eq!(virtfn_index("virtfn"), None);
        assert_eq!(virtfn_index("virtfnx"), None);
        assert_eq!(virtfn_index("physfn"), None);
    }
}
