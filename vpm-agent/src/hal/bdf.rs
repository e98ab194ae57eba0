//! PCI addresses (`DDDD:BB:DD.F`), parsed strictly: a [`Bdf`] is the only
//! thing the HAL puts in a sysfs path, so a parsed one can never name
//! anything but a PCI function directory.

use std::fmt;
use std::str::FromStr;

use super::error::{HalError, clip};

/// A PCI function address: domain, bus, device, function.
///
/// Ordered as the kernel lists functions (domain, then bus, device,
/// function). Serialized as its string form, `0000:01:00.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, at most `0x1f`.
    pub device: u8,
    /// Function number, at most 7.
    pub function: u8,
}

impl Bdf {
    /// Largest device number.
    pub const MAX_DEVICE: u8 = 0x1f;
    /// Largest function number.
    pub const MAX_FUNCTION: u8 = 7;

    /// A checked address: `None` if `device > 0x1f` or `function > 7`.
    pub const fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        if device > Self::MAX_DEVICE || function > Self::MAX_FUNCTION {
            return None;
        }
        Some(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Parses `digits` (all hex digits, checked by the caller) as a number.
fn hex_field(digits: &[u8]) -> u32 {
    digits.iter().fold(0, |acc, &b| {
        // The caller checked `is_ascii_hexdigit`, so `to_digit` is `Some`.
        (acc << 4) | char::from(b).to_digit(16).unwrap_or(0)
    })
}

fn refuse(input: &str, reason: &'static str) -> HalError {
    HalError::InvalidBdf {
        input: clip(input),
        reason,
    }
}

impl FromStr for Bdf {
    type Err = HalError;

    /// Accepts exactly `DDDD:BB:DD.F` in hex of either case, device at most
    /// `1f`, function at most 7. No short forms (`01:00.0`), no surrounding
    /// whitespace or newline.
    fn from_str(s: &str) -> Result<Self, HalError> {
        let b = s.as_bytes();
        if b.len() != 12 {
            return Err(refuse(s, "must be exactly 12 characters"));
        }
        if b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(refuse(s, "separators must be ':' ':' '.'"));
        }
        let (domain, bus, device, function) = (&b[0..4], &b[5..7], &b[8..10], &b[11..12]);
        if ![domain, bus, device, function]
            .iter()
            .all(|f| f.iter().all(u8::is_ascii_hexdigit))
        {
            return Err(refuse(s, "fields must be hex digits"));
        }
        // Widths are 4, 2, 2 and 1 hex digits: the casts below cannot truncate.
        let (domain, bus, device, function) = (
            hex_field(domain) as u16,
            hex_field(bus) as u8,
            hex_field(device) as u8,
            hex_field(function) as u8,
        );
        if device > Bdf::MAX_DEVICE {
            return Err(refuse(s, "device number above 1f"));
        }
        if function > Bdf::MAX_FUNCTION {
            return Err(refuse(s, "function number above 7"));
        }
        Ok(Bdf {
            domain,
            bus,
            device,
            function,
        })
    }
}

impl serde::Serialize for Bdf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Bdf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reason(s: &str) -> &'static str {
        match s.parse::<Bdf>() {
            Err(HalError::InvalidBdf { reason, .. }) => reason,
            other => panic!("{s:?} parsed: {other:?}"),
        }
    }

    #[test]
    fn accepts_canonical_and_upper_case() {
        let b: Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 1, 0, 0).unwrap());
        assert_eq!(b.to_string(), "0000:01:00.0");
        let b: Bdf = "ABCD:EF:1F.7".parse().unwrap();
        assert_eq!(
            (b.domain, b.bus, b.device, b.function),
            (0xabcd, 0xef, 0x1f, 7)
        );
        assert_eq!(b.to_string(), "abcd:ef:1f.7");
        assert_eq!(
            "ffff:ff:1f.7".parse::<Bdf>().unwrap().to_string(),
            "ffff:ff:1f.7"
        );
    }

    #[test]
    fn refuses_everything_else() {
        let length = "must be exactly 12 characters";
        let seps = "separators must be ':' ':' '.'";
        let hex = "fields must be hex digits";
        for (input, want) in [
            ("", length),
            ("01:00.0", length),
            ("0:01:00.0", length),
            ("0000:01:00.0\n", length),
            (" 0000:01:00.0", length),
            ("0000:01:00.00", length),
            ("0000:01:00.0/..", length),
            ("0000:01:00:0", seps),
            ("0000.01:00.0", seps),
            ("0000:01.00.0", seps),
            ("../../../etc", seps),
            ("0000:01:00./", hex),
            ("0000:01:0/.0", hex),
            ("0000:01:00.\0", hex),
            ("0000:01: 0.0", hex),
            ("0000:01:00.g", hex),
            ("000x:01:00.0", hex),
            ("+000:01:00.0", hex),
            ("0000:01:20.0", "device number above 1f"),
            ("0000:01:ff.0", "device number above 1f"),
            ("0000:01:00.8", "function number above 7"),
            ("0000:01:00.f", "function number above 7"),
        ] {
            assert_eq!(reason(input), want, "{input:?}");
        }
        // Multi-byte characters cannot make the length check pass by bytes
        // and then split a character.
        assert_eq!(reason("0000:01:00.é"), length);
        assert_eq!(reason("00é0:01:00.0"), length);
        assert_eq!(reason("0é0:01:00.0"), hex);
        assert_eq!(Bdf::new(0, 0, 0x20, 0), None);
        assert_eq!(Bdf::new(0, 0, 0, 8), None);
    }

    #[test]
    fn error_echoes_input_safely() {
        let e = "0000:01:00.0\n".parse::<Bdf>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid PCI address \"0000:01:00.0\\n\": must be exactly 12 characters \
             (expected DDDD:BB:DD.F, e.g. 0000:01:00.0)"
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let b: Bdf = "0000:3B:00.1".parse().unwrap();
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"0000:3b:00.1\"");
        let back: Bdf = serde_json::from_str("\"0000:3b:00.1\"").unwrap();
        assert_eq!(back, b);
        assert!(serde_json::from_str::<Bdf>("\"0000:3b:00.1/x\"").is_err());
        assert!(serde_json::from_str::<Bdf>("17").is_err());
    }

    #[test]
    fn orders_like_the_kernel() {
        let mut v: Vec<Bdf> = [
            "0001:00:00.0",
            "0000:02:00.0",
            "0000:01:00.1",
            "0000:01:00.0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "0000:01:00.0",
                "0000:01:00.1",
                "0000:02:00.0",
                "0001:00:00.0"
            ]
        );
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(domain: u16, bus: u8, device in 0u8..=0x1f, function in 0u8..=7) {
            let b = Bdf::new(domain, bus, device, function).unwrap();
            let s = b.to_string();
            prop_assert_eq!(s.len(), 12);
            prop_assert_eq!(s.parse::<Bdf>().unwrap(), b);
            prop_assert_eq!(s.to_uppercase().parse::<Bdf>().unwrap(), b);
        }

        #[test]
        fn slash_or_nul_is_always_refused(pre in ".{0,12}", bad in "[/\\x00]", post in ".{0,12}") {
            let s = format!("{pre}{bad}{post}");
            let refused = matches!(s.parse::<Bdf>(), Err(HalError::InvalidBdf { .. }));
            prop_assert!(refused);
        }

        #[test]
        fn anything_parsed_displays_back_the_same(s in "[0-9a-fA-F:./ \\n]{10,14}") {
            if let Ok(b) = s.parse::<Bdf>() {
                prop_assert_eq!(b.to_string(), s.to_lowercase());
            }
        }
    }
}
