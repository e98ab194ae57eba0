//! PCI addresses as device keys, shared by the eBPF programs (which parse the
//! kernel's device names) and the agent (which prints them).
//!
//! A PCI function's address (`DDDD:BB:DD.F`, the kernel's `dev_name()` of a PCI
//! device) is packed into a `u32` as `domain << 16 | bus << 8 | device << 3 |
//! function`. Counter keys of the VFIO/PCI event kinds hold it in the low 32
//! bits of [`crate::CounterKey::device`] and a kind-specific detail (power
//! state, VF index, IRQ number) in the high 32 bits; see [`device_key`].
//!
//! The parser reads fixed positions only (no loop, no variable index), so the
//! eBPF verifier accepts it on any kernel.

use core::fmt;

/// The packed address `0000:00:00.0`, used as "device not known" (that address
/// is the host bridge, which never shows up in VFIO/PCI events).
pub const UNKNOWN_BDF: u32 = 0;

/// Length of a PCI device name with a 4-digit domain: `0000:01:00.1`.
pub const BDF_NAME_LEN: usize = 12;

/// Packs a PCI address. `device` is masked to 5 bits and `function` to 3.
#[inline(always)]
pub const fn pack_bdf(domain: u16, bus: u8, device: u8, function: u8) -> u32 {
    ((domain as u32) << 16)
        | ((bus as u32) << 8)
        | (((device & 0x1f) as u32) << 3)
        | (function & 7) as u32
}

/// The parts of a packed address: (domain, bus, device, function).
#[inline(always)]
pub const fn unpack_bdf(bdf: u32) -> (u16, u8, u8, u8) {
    (
        (bdf >> 16) as u16,
        (bdf >> 8) as u8,
        ((bdf >> 3) & 0x1f) as u8,
        (bdf & 7) as u8,
    )
}

/// A counter's device key from a packed address and a kind-specific detail.
#[inline(always)]
pub const fn device_key(bdf: u32, detail: u32) -> u64 {
    ((detail as u64) << 32) | bdf as u64
}

/// The packed address in a device key ([`UNKNOWN_BDF`] when not known).
#[inline(always)]
pub const fn key_bdf(key: u64) -> u32 {
    key as u32
}

/// The kind-specific detail in a device key.
#[inline(always)]
pub const fn key_detail(key: u64) -> u32 {
    (key >> 32) as u32
}

#[inline(always)]
const fn hex(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u32),
        b'a'..=b'f' => Some((c - b'a' + 10) as u32),
        b'A'..=b'F' => Some((c - b'A' + 10) as u32),
        _ => None,
    }
}

/// Parses the first [`BDF_NAME_LEN`] bytes of `name` as `DDDD:BB:DD.F`. The
/// caller checks what follows.
#[inline(always)]
fn parse_fixed(name: &[u8; BDF_NAME_LEN]) -> Option<u32> {
    if name[4] != b':' || name[7] != b':' || name[10] != b'.' {
        return None;
    }
    let domain =
        (hex(name[0])? << 12) | (hex(name[1])? << 8) | (hex(name[2])? << 4) | hex(name[3])?;
    let bus = (hex(name[5])? << 4) | hex(name[6])?;
    let device = (hex(name[8])? << 4) | hex(name[9])?;
    let function = match name[11] {
        c @ b'0'..=b'7' => (c - b'0') as u32,
        _ => return None,
    };
    if device > 0x1f {
        return None;
    }
    Some((domain << 16) | (bus << 8) | (device << 3) | function)
}

/// Parses a NUL-terminated device name read from the kernel into a zeroed
/// 16-byte buffer: `Some` only for a PCI address `DDDD:BB:DD.F` followed by NUL.
///
/// Names of other devices (`card0`, `0000:00`, USB ports, …) and PCI domains
/// wider than 16 bits (5+ hex digits) give `None`.
#[inline(always)]
pub fn parse_bdf_name(buf: &[u8; 16]) -> Option<u32> {
    if buf[BDF_NAME_LEN] != 0 {
        return None;
    }
    let fixed = [
        buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8], buf[9], buf[10],
        buf[11],
    ];
    parse_fixed(&fixed)
}

/// Parses exactly `DDDD:BB:DD.F` (the user-side form of [`parse_bdf_name`]).
pub fn parse_bdf(s: &str) -> Option<u32> {
    let bytes: &[u8; BDF_NAME_LEN] = s.as_bytes().try_into().ok()?;
    parse_fixed(bytes)
}

/// A packed PCI address, displayed as `DDDD:BB:DD.F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf(pub u32);

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (domain, bus, device, function) = unpack_bdf(self.0);
        write!(f, "{domain:04x}:{bus:02x}:{device:02x}.{function}")
    }
}

/// A PCI power state as the kernel numbers them (`pci_power_t`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PowerState {
    /// Fully on.
    D0 = 0,
    /// Light sleep.
    D1 = 1,
    /// Deeper sleep.
    D2 = 2,
    /// Off, powered (config space still answers).
    D3Hot = 3,
    /// Off, unpowered.
    D3Cold = 4,
}

impl PowerState {
    /// The state numbered `value` (`PCI_D0` … `PCI_D3cold`), if it is one.
    pub const fn from_u32(value: u32) -> Option<PowerState> {
        match value {
            0 => Some(PowerState::D0),
            1 => Some(PowerState::D1),
            2 => Some(PowerState::D2),
            3 => Some(PowerState::D3Hot),
            4 => Some(PowerState::D3Cold),
            _ => None,
        }
    }

    /// The name sysfs's `power_state` uses (`D0`, `D3hot`, …).
    pub const fn name(self) -> &'static str {
        match self {
            PowerState::D0 => "D0",
            PowerState::D1 => "D1",
            PowerState::D2 => "D2",
            PowerState::D3Hot => "D3hot",
            PowerState::D3Cold => "D3cold",
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::format;
    use std::string::ToString;

    use super::*;

    fn name(s: &str) -> [u8; 16] {
        let mut buf = [0u8; 16];
        buf[..s.len()].copy_from_slice(s.as_bytes());
        buf
    }

    #[test]
    fn addresses_pack_as_documented() {
        assert_eq!(pack_bdf(0, 1, 0, 1), 0x0000_0101);
        assert_eq!(pack_bdf(0x1234, 0x3b, 0x1f, 7), 0x1234_3bff);
        assert_eq!(unpack_bdf(0x1234_3bff), (0x1234, 0x3b, 0x1f, 7));
        for (d, b, s, f) in [(0u16, 0u8, 0u8, 0u8), (0xffff, 0xff, 0x1f, 7), (1, 2, 3, 4)] {
            assert_eq!(unpack_bdf(pack_bdf(d, b, s, f)), (d, b, s, f));
        }
    }

    #[test]
    fn kernel_names_parse() {
        assert_eq!(
            parse_bdf_name(&name("0000:01:00.1")),
            Some(pack_bdf(0, 1, 0, 1))
        );
        assert_eq!(
            parse_bdf_name(&name("abcd:ef:1f.7")),
            Some(pack_bdf(0xabcd, 0xef, 0x1f, 7))
        );
        assert_eq!(parse_bdf("0000:3b:00.0"), Some(pack_bdf(0, 0x3b, 0, 0)));
        assert_eq!(parse_bdf("0000:3B:00.0"), Some(pack_bdf(0, 0x3b, 0, 0)));
    }

    #[test]
    fn other_names_do_not_parse() {
        for s in [
            "",
            "card0",
            "0000:01",
            "0000:01:00",
            "0000:01:00.8",
            "0000:01:20.0",
            "0000-01:00.0",
            "0000:01:00.1x",
            "10000:01:00.1",
            "pci0000:00",
            "0000:0g:00.0",
        ] {
            assert_eq!(parse_bdf_name(&name(s)), None, "{s:?}");
            assert_eq!(parse_bdf(s), None, "{s:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["0000:01:00.1", "abcd:ef:1f.7", "0000:00:00.0"] {
            let bdf = parse_bdf(s).expect("parses");
            assert_eq!(Bdf(bdf).to_string(), s);
        }
        assert_eq!(format!("{}", Bdf(pack_bdf(0, 0x3b, 2, 3))), "0000:3b:02.3");
    }

    #[test]
    fn keys_carry_address_and_detail() {
        let k = device_key(pack_bdf(0, 1, 0, 1), 3);
        assert_eq!(key_bdf(k), 0x101);
        assert_eq!(key_detail(k), 3);
        assert_eq!(device_key(UNKNOWN_BDF, 0), 0);
    }

    #[test]
    fn power_states_have_sysfs_names() {
        assert_eq!(PowerState::from_u32(3).map(PowerState::name), Some("D3hot"));
        assert_eq!(PowerState::from_u32(0).map(PowerState::name), Some("D0"));
        assert_eq!(PowerState::from_u32(5), None);
        for v in 0..5 {
            assert_eq!(PowerState::from_u32(v).map(|s| s as u32), Some(v));
        }
    }
}
