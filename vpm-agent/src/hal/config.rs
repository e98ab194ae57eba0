//! PCI configuration space, parsed from bytes: no I/O here.
//!
//! The bytes come from sysfs `config` ([`super::Sysfs::config`]), which
//! gives root the whole space (256 bytes, 4096 for PCIe) and everyone else
//! only the first 64 (128 for CardBus bridges). Every read is bounds-checked
//! and every list walk is guarded against loops, so short, truncated or
//! all-ones (device gone, D3cold) input gives `None` or an empty list, never
//! a panic.

use std::collections::HashSet;

use super::power::PowerState;

/// Offset of the status register.
const STATUS: usize = 0x06;
/// Status bit: the capability list exists.
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Offset of the header type.
const HEADER_TYPE: usize = 0x0e;
/// Capability pointer for type 0 and 1 headers.
const CAP_PTR: usize = 0x34;
/// Capability pointer for CardBus bridges (header type 2).
const CAP_PTR_CARDBUS: usize = 0x14;
/// Size of the standard header; capabilities live above it.
const STD_HEADER: usize = 0x40;
/// Start of PCIe extended configuration space.
const EXT_START: usize = 0x100;
/// Size of the full PCIe configuration space.
const EXT_SIZE: usize = 4096;
/// At most this many standard capabilities are walked (the kernel's TTL).
const MAX_CAPS: usize = 48;
/// At most this many extended capabilities fit (`(4096 - 256) / 8`).
const MAX_EXT_CAPS: usize = (EXT_SIZE - EXT_START) / 8;

/// Capability id of power management.
pub const CAP_ID_PM: u8 = 0x01;
/// Extended capability id of SR-IOV.
pub const EXT_CAP_ID_SRIOV: u16 = 0x0010;

/// A function's configuration space as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
}

/// One entry of the standard capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Capability {
    /// Capability id (`0x01` PM, `0x05` MSI, `0x10` PCIe, `0x11` MSI-X, …).
    pub id: u8,
    /// Offset of the capability in config space.
    pub offset: u16,
}

/// One entry of the PCIe extended capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExtCapability {
    /// Extended capability id (`0x0001` AER, `0x0010` SR-IOV, …).
    pub id: u16,
    /// Capability version (header bits 19:16).
    pub version: u8,
    /// Offset of the capability in config space.
    pub offset: u16,
}

/// The power management capability.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PmCapability {
    /// Offset of the capability.
    pub offset: u16,
    /// Power Management Capabilities register (at +2).
    pub pmc: u16,
    /// Power Management Control/Status register (at +4).
    pub pmcsr: u16,
    /// The current state, PMCSR bits 1:0.
    pub state: PowerState,
    /// PMCSR bit 3: the function keeps its state across D3hot → D0, so no
    /// reset is needed on the way back.
    pub no_soft_reset: bool,
}

/// The SR-IOV extended capability of a physical function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SriovCapability {
    /// Offset of the capability.
    pub offset: u16,
    /// SR-IOV Control (at +0x08); see [`SriovCapability::vf_enabled`].
    pub control: u16,
    /// InitialVFs (at +0x0c).
    pub initial_vfs: u16,
    /// TotalVFs (at +0x0e).
    pub total_vfs: u16,
    /// NumVFs (at +0x10).
    pub num_vfs: u16,
    /// First VF Offset, in routing-id units (at +0x14).
    pub first_vf_offset: u16,
    /// VF Stride (at +0x16).
    pub vf_stride: u16,
    /// VF Device ID (at +0x1a).
    pub vf_device_id: u16,
}

impl SriovCapability {
    /// Control bit 0, VF Enable.
    pub const fn vf_enabled(&self) -> bool {
        self.control & 1 != 0
    }
}

impl ConfigSpace {
    /// Wraps bytes read from a `config` file (any length).
    pub fn new(bytes: Vec<u8>) -> Self {
        ConfigSpace { bytes }
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes were read: 64 for non-root readers, 256 or 4096 for root.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// `true` when no bytes were read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The byte at `offset`.
    pub fn read_u8(&self, offset: usize) -> Option<u8> {
        self.bytes.get(offset).copied()
    }

    /// The little-endian `u16` at `offset`.
    pub fn read_u16(&self, offset: usize) -> Option<u16> {
        let b = self.bytes.get(offset..offset.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    /// The little-endian `u32` at `offset`.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let b = self.bytes.get(offset..offset.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Vendor id (0x00); `0xffff` means nothing answered.
    pub fn vendor_id(&self) -> Option<u16> {
        self.read_u16(0x00)
    }

    /// Device id (0x02).
    pub fn device_id(&self) -> Option<u16> {
        self.read_u16(0x02)
    }

    /// Status register (0x06).
    pub fn status(&self) -> Option<u16> {
        self.read_u16(STATUS)
    }

    /// Header type (0x0e) without the multi-function bit.
    pub fn header_type(&self) -> Option<u8> {
        self.read_u8(HEADER_TYPE).map(|h| h & 0x7f)
    }

    /// The standard capability list, in list order.
    ///
    /// Empty when the status register says there is none. The walk stops at
    /// a null pointer, a pointer into the header (below 0x40) or past the
    /// end, an id of `0xff` (all-ones read), a pointer seen before, or after
    /// 48 entries.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut out = Vec::new();
        if self.status().is_none_or(|s| s & STATUS_CAP_LIST == 0) {
            return out;
        }
        let ptr_at = if self.header_type() == Some(2) {
            CAP_PTR_CARDBUS
        } else {
            CAP_PTR
        };
        let Some(mut pos) = self.read_u8(ptr_at).map(|p| usize::from(p & 0xfc)) else {
            return out;
        };
        let mut seen = HashSet::new();
        while out.len() < MAX_CAPS && pos >= STD_HEADER && seen.insert(pos) {
            let (Some(id), Some(next)) = (self.read_u8(pos), self.read_u8(pos + 1)) else {
                break;
            };
            if id == 0xff {
                break;
            }
            // `pos` came from a u8: it fits u16.
            out.push(Capability {
                id,
                offset: pos as u16,
            });
            pos = usize::from(next & 0xfc);
        }
        out
    }

    /// The PCIe extended capability list, in list order.
    ///
    /// Empty unless the whole 4096-byte space was read (root only). The walk
    /// starts at 0x100 and stops at a zero or all-ones header, a next pointer
    /// below 0x100 (0 ends the list) or past the end, or a loop.
    pub fn extended_capabilities(&self) -> Vec<ExtCapability> {
        let mut out = Vec::new();
        if self.bytes.len() < EXT_SIZE {
            return out;
        }
        let mut pos = EXT_START;
        let mut seen = HashSet::new();
        while out.len() < MAX_EXT_CAPS && pos >= EXT_START && seen.insert(pos) {
            let Some(header) = self.read_u32(pos) else {
                break;
            };
            if header == 0 || header == u32::MAX {
                break;
            }
            // Masked fields: 16, 4 and 12 bits, and `pos` < 4096: no truncation.
            out.push(ExtCapability {
                id: (header & 0xffff) as u16,
                version: ((header >> 16) & 0xf) as u8,
                offset: pos as u16,
            });
            pos = ((header >> 20) & 0xffc) as usize;
        }
        out
    }

    /// The first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<Capability> {
        self.capabilities().into_iter().find(|c| c.id == id)
    }

    /// The first extended capability with `id`.
    pub fn find_extended_capability(&self, id: u16) -> Option<ExtCapability> {
        self.extended_capabilities()
            .into_iter()
            .find(|c| c.id == id)
    }

    /// The power management capability (id 0x01), if present and readable.
    pub fn pm(&self) -> Option<PmCapability> {
        let cap = self.find_capability(CAP_ID_PM)?;
        let at = usize::from(cap.offset);
        let pmc = self.read_u16(at + 2)?;
        let pmcsr = self.read_u16(at + 4)?;
        Some(PmCapability {
            offset: cap.offset,
            pmc,
            pmcsr,
            state: PowerState::from_pmcsr(pmcsr),
            no_soft_reset: pmcsr & (1 << 3) != 0,
        })
    }

    /// The SR-IOV capability (extended id 0x0010), if present and readable.
    pub fn sriov(&self) -> Option<SriovCapability> {
        let cap = self.find_extended_capability(EXT_CAP_ID_SRIOV)?;
        let at = usize::from(cap.offset);
        Some(SriovCapability {
            offset: cap.offset,
            control: self.read_u16(at + 0x08)?,
            initial_vfs: self.read_u16(at + 0x0c)?,
            total_vfs: self.read_u16(at + 0x0e)?,
            num_vfs: self.read_u16(at + 0x10)?,
            first_vf_offset: self.read_u16(at + 0x14)?,
            vf_stride: self.read_u16(at + 0x16)?,
            vf_device_id: self.read_u16(at + 0x1a)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A config space of `len` bytes with vendor/device ids set.
    fn space(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x0010u16.to_le_bytes());
        b
    }

    fn put16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Sets the capability-list status bit and the list head.
    fn cap_head(b: &mut [u8], first: u8) {
        put16(b, STATUS, STATUS_CAP_LIST);
        b[CAP_PTR] = first;
    }

    fn cap(b: &mut [u8], at: usize, id: u8, next: u8) {
        b[at] = id;
        b[at + 1] = next;
    }

    fn ext(b: &mut [u8], at: usize, id: u16, version: u8, next: u16) {
        put32(
            b,
            at,
            u32::from(id) | (u32::from(version) << 16) | (u32::from(next) << 20),
        );
    }

    fn ids(c: &ConfigSpace) -> Vec<(u8, u16)> {
        c.capabilities().iter().map(|c| (c.id, c.offset)).collect()
    }

    #[test]
    fn ids_and_lengths() {
        let c = ConfigSpace::new(space(64));
        assert_eq!((c.vendor_id(), c.device_id()), (Some(0x1b36), Some(0x0010)));
        assert_eq!(c.len(), 64);
        let empty = ConfigSpace::new(Vec::new());
        assert!(empty.is_empty());
        assert_eq!((empty.vendor_id(), empty.device_id()), (None, None));
        let one = ConfigSpace::new(vec![0x36]);
        assert_eq!(one.vendor_id(), None);
        assert_eq!(one.read_u8(0), Some(0x36));
        assert_eq!(one.read_u32(usize::MAX - 1), None);
    }

    #[test]
    fn walks_the_standard_list() {
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        cap(&mut b, 0x40, 0x01, 0x50); // PM
        cap(&mut b, 0x50, 0x05, 0x70); // MSI
        cap(&mut b, 0x70, 0x10, 0x00); // PCIe, end
        let c = ConfigSpace::new(b);
        assert_eq!(ids(&c), vec![(0x01, 0x40), (0x05, 0x50), (0x10, 0x70)]);
        assert_eq!(c.find_capability(0x05).map(|c| c.offset), Some(0x50));
        assert_eq!(c.find_capability(0x11), None);
    }

    #[test]
    fn masks_low_pointer_bits() {
        let mut b = space(256);
        cap_head(&mut b, 0x43);
        cap(&mut b, 0x40, 0x01, 0x51);
        cap(&mut b, 0x50, 0x11, 0x00);
        assert_eq!(ids(&ConfigSpace::new(b)), vec![(0x01, 0x40), (0x11, 0x50)]);
    }

    #[test]
    fn no_list_without_the_status_bit() {
        let mut b = space(256);
        b[CAP_PTR] = 0x40;
        cap(&mut b, 0x40, 0x01, 0x00);
        assert!(ConfigSpace::new(b).capabilities().is_empty());
    }

    #[test]
    fn stops_at_loops_header_pointers_and_bounds() {
        // A loop back to the first entry.
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        cap(&mut b, 0x40, 0x01, 0x50);
        cap(&mut b, 0x50, 0x05, 0x40);
        assert_eq!(ids(&ConfigSpace::new(b)), vec![(0x01, 0x40), (0x05, 0x50)]);
        // A self-loop.
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        cap(&mut b, 0x40, 0x01, 0x40);
        assert_eq!(ids(&ConfigSpace::new(b)), vec![(0x01, 0x40)]);
        // A pointer into the standard header.
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        cap(&mut b, 0x40, 0x01, 0x3c);
        assert_eq!(ids(&ConfigSpace::new(b)), vec![(0x01, 0x40)]);
        let mut b = space(256);
        cap_head(&mut b, 0x20);
        assert!(ConfigSpace::new(b).capabilities().is_empty());
        // Pointers past the end of a 64-byte (non-root) read.
        let mut b = space(64);
        cap_head(&mut b, 0x40);
        assert!(ConfigSpace::new(b).capabilities().is_empty());
        // The last entry's `next` byte is cut off.
        let mut b = space(0x81);
        cap_head(&mut b, 0x80);
        b[0x80] = 0x01;
        assert!(ConfigSpace::new(b).capabilities().is_empty());
        // An all-ones read (device gone).
        let b = vec![0xff; 256];
        assert!(ConfigSpace::new(b).capabilities().is_empty());
    }

    #[test]
    fn stops_after_48_entries() {
        // 48 distinct entries 0x40, 0x44, … chained, then more: the walk stops.
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        let mut at = 0x40usize;
        while at + 4 < 256 {
            cap(&mut b, at, 0x09, (at + 4) as u8);
            at += 4;
        }
        cap(&mut b, at, 0x09, 0x00);
        let c = ConfigSpace::new(b);
        assert_eq!(c.capabilities().len(), MAX_CAPS);
    }

    #[test]
    fn cardbus_uses_its_own_pointer() {
        let mut b = space(128);
        put16(&mut b, STATUS, STATUS_CAP_LIST);
        b[HEADER_TYPE] = 0x82; // multi-function CardBus bridge
        b[CAP_PTR_CARDBUS] = 0x80;
        b[CAP_PTR] = 0x40;
        let c = ConfigSpace::new(b);
        assert_eq!(c.header_type(), Some(2));
        // 0x80 is past a 128-byte read: nothing, and no panic.
        assert!(c.capabilities().is_empty());
        let mut b = space(256);
        put16(&mut b, STATUS, STATUS_CAP_LIST);
        b[HEADER_TYPE] = 0x02;
        b[CAP_PTR_CARDBUS] = 0x80;
        cap(&mut b, 0x80, 0x01, 0x00);
        assert_eq!(ids(&ConfigSpace::new(b)), vec![(0x01, 0x80)]);
    }

    #[test]
    fn pm_capability() {
        let mut b = space(256);
        cap_head(&mut b, 0x40);
        cap(&mut b, 0x40, 0x05, 0x60);
        cap(&mut b, 0x60, CAP_ID_PM, 0x00);
        put16(&mut b, 0x62, 0xc803); // PMC
        put16(&mut b, 0x64, 0x000b); // PMCSR: D3hot, No_Soft_Reset
        let pm = ConfigSpace::new(b.clone()).pm().unwrap();
        assert_eq!(
            pm,
            PmCapability {
                offset: 0x60,
                pmc: 0xc803,
                pmcsr: 0x000b,
                state: PowerState::D3Hot,
                no_soft_reset: true,
            }
        );
        put16(&mut b, 0x64, 0x0000);
        let pm = ConfigSpace::new(b.clone()).pm().unwrap();
        assert_eq!((pm.state, pm.no_soft_reset), (PowerState::D0, false));
        put16(&mut b, 0x64, 0x0002);
        assert_eq!(
            ConfigSpace::new(b.clone()).pm().unwrap().state,
            PowerState::D2
        );
        // PMCSR cut off by the end of the read.
        b.truncate(0x65);
        assert_eq!(ConfigSpace::new(b).pm(), None);
        assert_eq!(ConfigSpace::new(space(256)).pm(), None);
    }

    /// A 4096-byte space with AER at 0x100 and SR-IOV at 0x160.
    fn sriov_space() -> Vec<u8> {
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0001, 2, 0x160);
        ext(&mut b, 0x160, EXT_CAP_ID_SRIOV, 1, 0x000);
        let s = 0x160;
        put16(&mut b, s + 0x08, 0x0019); // VF Enable | VF MSE | ARI
        put16(&mut b, s + 0x0c, 4);
        put16(&mut b, s + 0x0e, 4);
        put16(&mut b, s + 0x10, 2);
        put16(&mut b, s + 0x14, 1);
        put16(&mut b, s + 0x16, 1);
        put16(&mut b, s + 0x1a, 0x0010);
        b
    }

    #[test]
    fn walks_the_extended_list() {
        let c = ConfigSpace::new(sriov_space());
        assert_eq!(
            c.extended_capabilities(),
            vec![
                ExtCapability {
                    id: 0x0001,
                    version: 2,
                    offset: 0x100
                },
                ExtCapability {
                    id: EXT_CAP_ID_SRIOV,
                    version: 1,
                    offset: 0x160
                },
            ]
        );
        // A non-root (or conventional PCI) read has no extended space.
        let mut short = sriov_space();
        short.truncate(256);
        assert!(ConfigSpace::new(short).extended_capabilities().is_empty());
    }

    #[test]
    fn extended_walk_stops() {
        // Zero header at 0x100: no list.
        assert!(
            ConfigSpace::new(space(EXT_SIZE))
                .extended_capabilities()
                .is_empty()
        );
        // All ones.
        assert!(
            ConfigSpace::new(vec![0xff; EXT_SIZE])
                .extended_capabilities()
                .is_empty()
        );
        // A loop 0x100 → 0x200 → 0x100.
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0001, 1, 0x200);
        ext(&mut b, 0x200, 0x000e, 1, 0x100);
        assert_eq!(ConfigSpace::new(b).extended_capabilities().len(), 2);
        // A next pointer into the standard space ends the list.
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0001, 1, 0x0fc);
        assert_eq!(ConfigSpace::new(b).extended_capabilities().len(), 1);
        // A next pointer at the very end: the header there is cut off.
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0001, 1, 0xffc);
        put32(&mut b, 0xffc, 0x0000_0002);
        let caps = ConfigSpace::new(b).extended_capabilities();
        assert_eq!(caps.len(), 2);
        assert_eq!(caps[1].offset, 0xffc);
        // A zero id with a next pointer is still an entry (the kernel walks on).
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0000, 0, 0x140);
        ext(&mut b, 0x140, EXT_CAP_ID_SRIOV, 1, 0);
        assert!(ConfigSpace::new(b).sriov().is_some());
    }

    #[test]
    fn sriov_capability() {
        let s = ConfigSpace::new(sriov_space()).sriov().unwrap();
        assert_eq!(
            s,
            SriovCapability {
                offset: 0x160,
                control: 0x0019,
                initial_vfs: 4,
                total_vfs: 4,
                num_vfs: 2,
                first_vf_offset: 1,
                vf_stride: 1,
                vf_device_id: 0x0010,
            }
        );
        assert!(s.vf_enabled());
        // Capability header right at the end: the fields are out of bounds.
        let mut b = space(EXT_SIZE);
        ext(&mut b, 0x100, 0x0001, 1, 0xff0);
        ext(&mut b, 0xff0, EXT_CAP_ID_SRIOV, 1, 0);
        let c = ConfigSpace::new(b);
        assert!(c.find_extended_capability(EXT_CAP_ID_SRIOV).is_some());
        assert_eq!(c.sriov(), None);
        assert_eq!(ConfigSpace::new(space(EXT_SIZE)).sriov(), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let c = ConfigSpace::new(bytes);
            let caps = c.capabilities();
            prop_assert!(caps.len() <= MAX_CAPS);
            prop_assert!(caps.iter().all(|c| c.offset >= 0x40));
            let _ = (c.pm(), c.sriov(), c.vendor_id(), c.device_id());
        }

        #[test]
        fn arbitrary_extended_space_never_panics(
            seed in proptest::collection::vec(any::<u8>(), 0..512),
            tail in any::<u8>(),
            status: u16,
        ) {
            // Full-size spaces with random content in the places walks look at.
            let mut b = vec![tail; EXT_SIZE];
            for (i, v) in seed.iter().enumerate() {
                b[(i * 8) % EXT_SIZE] = *v;
                b[(0x100 + i * 7) % EXT_SIZE] = v.wrapping_mul(31);
            }
            b[STATUS..STATUS + 2].copy_from_slice(&status.to_le_bytes());
            let c = ConfigSpace::new(b);
            let ext = c.extended_capabilities();
            prop_assert!(ext.len() <= MAX_EXT_CAPS);
            prop_assert!(ext.iter().all(|e| e.offset >= 0x100 && usize::from(e.offset) < EXT_SIZE));
            let _ = (c.capabilities(), c.pm(), c.sriov());
        }
    }
}
