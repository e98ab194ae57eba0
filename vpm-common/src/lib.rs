//! Types shared by the kernel side (`vpm-ebpf`) and the user side (`vpm-agent`).
//!
//! Everything here is `#![no_std]`, `#[repr(C)]`, made of fixed-width integers
//! with explicit padding, and size-checked at compile time, because the same bytes
//! are written by eBPF programs and read by the agent through BPF maps.
#![no_std]

pub mod exit;
pub mod pci;

/// Names of the maps in the eBPF object (the agent looks them up by name).
pub mod maps {
    /// `PerCpuHashMap<CounterKey, Counter>`: per (VM process, kind, device) counts.
    pub const COUNTERS: &str = "VPM_COUNTERS";
    /// `PerCpuArray<u64>` indexed by [`crate::Stat`]: the programs' own health counters.
    pub const STATS: &str = "VPM_STATS";
    /// `LruHashMap<u32, u64>`: thread id → `kvm_exit` timestamp, waiting for its `kvm_entry`.
    pub const EXIT_START: &str = "VPM_EXIT_START";
    /// `PerCpuHashMap<HistKey, u64>`: exit-handling time histogram per VM process.
    pub const EXIT_HIST: &str = "VPM_EXIT_HIST";
    /// `PerCpuArray<CacheSlot>` indexed by [`crate::EventKind`]: each CPU's most
    /// recent key of each kind, counted without a hash lookup.
    pub const CACHE: &str = "VPM_CACHE";
    /// `Array<u64>` with one slot: the generation the agent bumps after it
    /// removes entries of exited processes; cache slots of older generations
    /// are not trusted on the hot path.
    pub const GENERATION: &str = "VPM_GENERATION";
    /// `Array<ProbeConfig>` with one slot: the offsets the VFIO/PCI programs
    /// need (see [`crate::ProbeConfig`]), written by the agent before it attaches them.
    pub const PROBE_CONFIG: &str = "VPM_PROBE_CONFIG";
}

/// Capacity of [`maps::COUNTERS`]. The agent prunes entries of exited processes
/// every tick, so this bounds the number of distinct (VM, kind, device) keys alive
/// at once, not the number ever seen.
pub const MAX_COUNTER_ENTRIES: u32 = 16_384;
/// Capacity of [`maps::EXIT_START`] (one slot per vCPU thread in an exit).
pub const MAX_EXIT_START_ENTRIES: u32 = 4_096;
/// Capacity of [`maps::EXIT_HIST`].
pub const MAX_HIST_ENTRIES: u32 = 4_096;

/// What a counter counts. Values are stable: they are stored in BPF maps.
///
/// The KVM kinds (`Pio` … `Exit`) are counted in the VMM process that ran the
/// vCPU. The VFIO/PCI kinds (`VfioRegionRead` …) key their device by PCI address
/// (see [`pci`]); they are counted in the process that caused them, or under
/// [`KERNEL_TGID`] when a kernel thread or an interrupt did.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// `kvm:kvm_pio`: a port I/O exit. Device key: the port.
    Pio = 0,
    /// `kvm:kvm_mmio`: an MMIO access. Device key: the guest-physical page.
    Mmio = 1,
    /// `kvm:kvm_msi_set_irq`: an MSI delivered to the guest. Device key: the MSI address.
    Msi = 2,
    /// `kvm:kvm_set_irq`: a legacy (GSI) interrupt line set. Device key: the GSI.
    Irq = 3,
    /// `kvm:kvm_userspace_exit`: `KVM_RUN` returned to the VMM. Device key: the exit reason.
    UserspaceExit = 4,
    /// `kvm:kvm_exit`: a VM exit (VMX/SVM hosts). Device key: 0.
    Exit = 5,
    /// vfio-pci `read()` on a device fd (config space, BARs, ROM): `vfio_pci_core_read`.
    /// Device key: the device's address. Bytes: the length asked for.
    VfioRegionRead = 6,
    /// vfio-pci `write()` on a device fd: `vfio_pci_core_write`. As [`EventKind::VfioRegionRead`].
    VfioRegionWrite = 7,
    /// vfio-pci device ioctl (`VFIO_DEVICE_GET_INFO`, …): `vfio_pci_core_ioctl`.
    /// Device key: the device's address.
    VfioIoctl = 8,
    /// vfio-pci INTx interrupt handler (`vfio_intx_handler`). Device key: the
    /// IRQ number in the detail bits; the agent fills in the address.
    VfioIntx = 9,
    /// vfio-pci MSI/MSI-X interrupt handler (`vfio_msihandler`). As [`EventKind::VfioIntx`].
    VfioMsi = 10,
    /// `pci_set_power_state`. Device key: the address, the target
    /// [`pci::PowerState`] in the detail bits.
    PciPowerSet = 11,
    /// `rpm:rpm_suspend` on a PCI device (runtime PM suspend requested).
    /// Device key: the address.
    RpmSuspend = 12,
    /// `rpm:rpm_resume` on a PCI device (runtime PM resume requested).
    /// Device key: the address.
    RpmResume = 13,
    /// `sriov_numvfs_store`: a write to a PF's `sriov_numvfs`. Device key: the PF's address.
    SriovNumvfsStore = 14,
    /// `pci_iov_add_virtfn`: a VF being created. Device key: the PF's address,
    /// the VF index in the detail bits.
    VfAdd = 15,
}

impl EventKind {
    /// Every kind, in value order.
    pub const ALL: [EventKind; 16] = [
        EventKind::Pio,
        EventKind::Mmio,
        EventKind::Msi,
        EventKind::Irq,
        EventKind::UserspaceExit,
        EventKind::Exit,
        EventKind::VfioRegionRead,
        EventKind::VfioRegionWrite,
        EventKind::VfioIoctl,
        EventKind::VfioIntx,
        EventKind::VfioMsi,
        EventKind::PciPowerSet,
        EventKind::RpmSuspend,
        EventKind::RpmResume,
        EventKind::SriovNumvfsStore,
        EventKind::VfAdd,
    ];

    /// The kind stored as `value` in a map key, if it is one.
    pub const fn from_u32(value: u32) -> Option<EventKind> {
        match value {
            0 => Some(EventKind::Pio),
            1 => Some(EventKind::Mmio),
            2 => Some(EventKind::Msi),
            3 => Some(EventKind::Irq),
            4 => Some(EventKind::UserspaceExit),
            5 => Some(EventKind::Exit),
            6 => Some(EventKind::VfioRegionRead),
            7 => Some(EventKind::VfioRegionWrite),
            8 => Some(EventKind::VfioIoctl),
            9 => Some(EventKind::VfioIntx),
            10 => Some(EventKind::VfioMsi),
            11 => Some(EventKind::PciPowerSet),
            12 => Some(EventKind::RpmSuspend),
            13 => Some(EventKind::RpmResume),
            14 => Some(EventKind::SriovNumvfsStore),
            15 => Some(EventKind::VfAdd),
            _ => None,
        }
    }

    /// The short name used in CSV resources and JSON (`pio`, `mmio`, …).
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Pio => "pio",
            EventKind::Mmio => "mmio",
            EventKind::Msi => "msi",
            EventKind::Irq => "irq",
            EventKind::UserspaceExit => "userspace_exit",
            EventKind::Exit => "exit",
            EventKind::VfioRegionRead => "vfio_read",
            EventKind::VfioRegionWrite => "vfio_write",
            EventKind::VfioIoctl => "vfio_ioctl",
            EventKind::VfioIntx => "vfio_intx",
            EventKind::VfioMsi => "vfio_msi",
            EventKind::PciPowerSet => "pci_power",
            EventKind::RpmSuspend => "rpm_suspend",
            EventKind::RpmResume => "rpm_resume",
            EventKind::SriovNumvfsStore => "sriov_numvfs",
            EventKind::VfAdd => "vf_add",
        }
    }

    /// Whether this is a VFIO/PCI kind, keyed by PCI address (see [`pci`]).
    pub const fn is_pci(self) -> bool {
        self as u32 >= EventKind::VfioRegionRead as u32
    }

    /// Whether the kind runs in interrupt context (its process is meaningless:
    /// counted under [`KERNEL_TGID`], device key holds the IRQ number).
    pub const fn is_interrupt(self) -> bool {
        matches!(self, EventKind::VfioIntx | EventKind::VfioMsi)
    }
}

/// The "process" of events caused by the kernel itself: kernel threads
/// (runtime-PM workers) and interrupt handlers.
pub const KERNEL_TGID: u32 = 0;

/// Key of [`maps::COUNTERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterKey {
    /// Thread-group id (the VMM process) the event ran in.
    pub tgid: u32,
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Device key: port, guest-physical page, MSI address, GSI or exit reason.
    pub device: u64,
}
const _: () = assert!(core::mem::size_of::<CounterKey>() == 16);

/// Value of [`maps::COUNTERS`] (one per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Number of events.
    pub count: u64,
    /// Bytes moved by them (PIO: size × count, MMIO: length; 0 for other kinds).
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<Counter>() == 16);

/// One slot of [`maps::CACHE`]: the key most recently counted on this CPU for
/// one event kind, with its **cumulative** per-CPU totals.
///
/// A busy vCPU hits the same (VM, kind, device) key over and over; the slot
/// counts those hits with one array access instead of a hash lookup. On a miss
/// (another key, or a slot from an older [`maps::GENERATION`]) the program
/// writes the slot's totals back to [`maps::COUNTERS`] (only if the key is still
/// there: the agent deletes keys of exited VMs and then bumps the generation) and
/// loads the new key's totals from it, creating the entry first if needed, so
/// every trusted slot's key has an entry in [`maps::COUNTERS`] and its totals
/// are never below that entry's value for the same CPU.
///
/// A miss rewrites the slot between two increments of `seq` (odd while it is
/// being rewritten). The agent reads every slot, then the hash, then the slots
/// again, and uses a slot only if its `seq` is even and unchanged: then the key
/// and totals it read belong together. Per key and CPU it takes the larger of
/// slot and hash, so a key's total never goes backwards between two reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSlot {
    /// The cached key; `key.kind` is the [`EventKind`] + 1 (0: empty slot).
    pub key: CounterKey,
    /// Cumulative totals of `key` on this CPU.
    pub value: Counter,
    /// Rewrite counter: odd while a miss rewrites the slot.
    pub seq: u64,
    /// The [`maps::GENERATION`] the slot was loaded in.
    pub generation: u64,
}
const _: () = assert!(core::mem::size_of::<CacheSlot>() == 48);

impl CacheSlot {
    /// The cached key, if the slot holds one.
    pub const fn cached_key(&self) -> Option<CounterKey> {
        if self.key.kind == 0 {
            None
        } else {
            Some(CounterKey {
                tgid: self.key.tgid,
                kind: self.key.kind - 1,
                device: self.key.device,
            })
        }
    }
}

/// Number of [`EventKind`]s.
pub const KIND_COUNT: u32 = EventKind::ALL.len() as u32;

/// Slots per CPU in [`maps::CACHE`]: the KVM kinds (values below this), which
/// fire per vCPU exit and repeat their key. The VFIO/PCI kinds are rarer and
/// may nest (an interrupt handler inside a syscall on the same CPU), so they
/// go to [`maps::COUNTERS`] directly.
pub const CACHED_KIND_COUNT: u32 = EventKind::VfioRegionRead as u32;

/// A [`ProbeConfig`] offset that is not known (BTF or the format file lacks it).
pub const OFFSET_UNKNOWN: u32 = u32::MAX;

/// Where the VFIO/PCI programs find a device's name, in bytes. The agent
/// computes each offset from kernel BTF (vmlinux and module BTF) or from a
/// tracepoint's `format` file and writes this to [`maps::PROBE_CONFIG`] before
/// attaching anything; [`OFFSET_UNKNOWN`] where it could not. The programs
/// never guess: an unknown offset gives an unknown device
/// ([`pci::UNKNOWN_BDF`]), the event is still counted for its process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// `struct vfio_device`: the `struct device *dev` member (the PCI function).
    pub vfio_device_dev: u32,
    /// `struct device`: `kobj.name` (a `const char *`, the device's name).
    pub device_name: u32,
    /// `struct pci_dev`: the embedded `struct device dev`.
    pub pci_dev_dev: u32,
    /// `struct task_struct`: `flags` (for `PF_KTHREAD`).
    pub task_flags: u32,
    /// `rpm:rpm_suspend` record: the `__data_loc char[] name` field.
    pub rpm_suspend_name: u32,
    /// `rpm:rpm_resume` record: the `__data_loc char[] name` field.
    pub rpm_resume_name: u32,
}
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 24);

impl ProbeConfig {
    /// Every offset unknown.
    pub const UNKNOWN: ProbeConfig = ProbeConfig {
        vfio_device_dev: OFFSET_UNKNOWN,
        device_name: OFFSET_UNKNOWN,
        pci_dev_dev: OFFSET_UNKNOWN,
        task_flags: OFFSET_UNKNOWN,
        rpm_suspend_name: OFFSET_UNKNOWN,
        rpm_resume_name: OFFSET_UNKNOWN,
    };
}

/// `PF_KTHREAD` in `task_struct.flags`: the task is a kernel thread (a
/// stable value of the kernel's ABI to tracing tools since 2.6).
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Index into [`maps::STATS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A counter could not be inserted because [`maps::COUNTERS`] was full.
    CounterMapFull = 0,
    /// A `kvm_entry` came without a recorded `kvm_exit` on its thread.
    UnpairedEntry = 1,
    /// A histogram bucket could not be inserted because [`maps::EXIT_HIST`] was full.
    HistMapFull = 2,
}
/// Number of [`Stat`] slots.
pub const STAT_COUNT: u32 = 3;

/// Key of [`maps::EXIT_HIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistKey {
    /// Thread-group id of the VMM process.
    pub tgid: u32,
    /// Bucket index from [`exit::bucket_of`].
    pub bucket: u32,
}
const _: () = assert!(core::mem::size_of::<HistKey>() == 8);

/// `kvm_mmio`'s `type` for a read that has to go to userspace; the same access is
/// traced again as a read when it completes, so it is not counted.
pub const KVM_TRACE_MMIO_READ_UNSATISFIED: u32 = 0;

/// Guest-physical page size used as the MMIO device key.
pub const MMIO_PAGE_MASK: u64 = !0xfff;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `repr(C)`, only `u32`/`u64` fields, no padding (size asserted above);
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CounterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HistKey {}
    // SAFETY: as above (two 16-byte `repr(C)` structs and two `u64`, no padding).
    unsafe impl aya::Pod for super::CacheSlot {}
    // SAFETY: `repr(C)`, six `u32` fields, no padding (size asserted above).
    unsafe impl aya::Pod for super::ProbeConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_u32() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(EventKind::ALL.len() as u32), None);
        for (i, kind) in EventKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "ALL is in value order");
        }
    }

    #[test]
    fn names_are_unique_and_kvm_kinds_are_the_cached_ones() {
        for a in EventKind::ALL {
            for b in EventKind::ALL {
                assert!(a == b || a.name() != b.name(), "{a:?} {b:?}");
            }
            assert_eq!(!a.is_pci(), (a as u32) < CACHED_KIND_COUNT, "{a:?}");
        }
        assert!(EventKind::VfioMsi.is_interrupt() && !EventKind::RpmResume.is_interrupt());
    }
}
