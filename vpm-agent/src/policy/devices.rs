//! The `[devices]` section: which PCI functions vpm may act on.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use crate::hal::Bdf;

/// The device allow-list.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Entries naming the functions vpm may manage.
    #[serde(default)]
    pub allow: Vec<DeviceMatch>,
}

/// One allow-list entry.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum DeviceMatch {
    /// One function by address.
    Address(Bdf),
    /// Every function with these vendor and device ids.
    Ids {
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
    },
}

impl fmt::Display for DeviceMatch {
    /// The spelling the policy file uses: `0000:01:00.0` or `1b36:0010`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(bdf) => write!(f, "{bdf}"),
            Self::Ids { vendor, device } => write!(f, "{vendor:04x}:{device:04x}"),
        }
    }
}

impl Serialize for DeviceMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl TryFrom<String> for DeviceMatch {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Ok(bdf) = s.parse::<Bdf>() {
            return Ok(Self::Address(bdf));
        }
        let ids = s.split_once(':').and_then(|(v, d)| {
            let hex = |x: &str| {
                (x.len() == 4 && x.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| u16::from_str_radix(x, 16).ok())
                    .flatten()
            };
            Some((hex(v)?, hex(d)?))
        });
        match ids {
            Some((vendor, device)) => Ok(Self::Ids { vendor, device }),
            None => Err(format!(
                "`{s}` is neither a PCI address (DDDD:BB:DD.F, e.g. 0000:01:00.0) nor a \
                 vendor:device id pair (e.g. 1b36:0010)"
            )),
        }
    }
}

/// What the allow-list needs to know of a function.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// The function's address.
    pub bdf: Bdf,
    /// Its vendor id.
    pub vendor: u16,
    /// Its device id.
    pub device: u16,
    /// Its physical function, when it is an SR-IOV VF.
    pub physfn: Option<Pf>,
}

/// A VF's physical function, as the allow-list matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pf {
    /// Its address.
    pub bdf: Bdf,
    /// Its vendor id.
    pub vendor: u16,
    /// Its device id.
    pub device: u16,
}

impl DeviceMatch {
    fn matches_self(&self, bdf: Bdf, vendor: u16, device: u16) -> bool {
        match *self {
            Self::Address(a) => a == bdf,
            Self::Ids {
                vendor: v,
                device: d,
            } => v == vendor && d == device,
        }
    }
}

impl Devices {
    /// Whether vpm may act on `c`: it is named (by address or ids), or it is
    /// a VF of a PF so named.
    pub fn allows(&self, c: &Candidate) -> bool {
        self.allow.iter().any(|m| {
            m.matches_self(c.bdf, c.vendor, c.device)
                || c.physfn
                    .is_some_and(|pf| m.matches_self(pf.bdf, pf.vendor, pf.device))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_strictly() {
        assert_eq!(
            DeviceMatch::try_from("0000:01:00.0".to_owned()),
            Ok(DeviceMatch::Address(bdf("0000:01:00.0")))
        );
        assert_eq!(
            DeviceMatch::try_from("1B36:0010".to_owned()),
            Ok(DeviceMatch::Ids {
                vendor: 0x1b36,
                device: 0x0010
            })
        );
        for bad in [
            "",
            "1b36",
            "1b36:10",
            "01:00.0",
            "../0000:01:00.0",
            "1b36:0010 ",
            "x:y",
        ] {
            assert!(DeviceMatch::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        for text in ["0000:01:00.0", "1b36:0010"] {
            let m = DeviceMatch::try_from(text.to_owned()).unwrap();
            assert_eq!(m.to_string(), text);
        }
    }

    #[test]
    fn vfs_follow_their_pf() {
        let devices = Devices {
            allow: vec![DeviceMatch::Address(bdf("0000:01:00.0"))],
        };
        let pf = Candidate {
            bdf: bdf("0000:01:00.0"),
            vendor: 0x1b36,
            device: 0x10,
            physfn: None,
        };
        let vf = Candidate {
            bdf: bdf("0000:01:00.1"),
            physfn: Some(Pf {
                bdf: pf.bdf,
                vendor: pf.vendor,
                device: pf.device,
            }),
            ..pf
        };
        let other = Candidate {
            bdf: bdf("0000:00:03.0"),
            vendor: 0x1af4,
            device: 0x1000,
            physfn: None,
        };
        assert!(devices.allows(&pf));
        assert!(devices.allows(&vf));
        assert!(!devices.allows(&other));
        assert!(!Devices::default().allows(&pf));
        let by_ids = Devices {
            allow: vec![DeviceMatch::Ids {
                vendor: 0x1af4,
                device: 0x1000,
            }],
        };
        assert!(by_ids.allows(&other));
        assert!(!by_ids.allows(&pf));
        // A PF named by its ids allows its VFs (whose own ids differ).
        let pf_ids = Devices {
            allow: vec![DeviceMatch::Ids {
                vendor: 0x1b36,
                device: 0x10,
            }],
        };
        let vf_own_ids = Candidate { device: 0x11, ..vf };
        assert!(pf_ids.allows(&pf) && pf_ids.allows(&vf_own_ids));
        assert!(!pf_ids.allows(&other));
    }
}
