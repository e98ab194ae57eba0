//! A tiny, deterministic VMM on real `/dev/kvm`.
//!
//! One VM, one vCPU, [`GUEST_RAM_SIZE`] bytes of RAM at guest-physical 0 and a
//! real-mode program ([`GUEST_PROGRAM`], loaded at [`CODE_GPA`]) that does, per
//! repeat:
//!
//! 1. `count` one-byte `out` instructions to the workload port (each exactly one
//!    `KVM_EXIT_IO`),
//! 2. `count` one-byte writes to the MMIO address, which is unbacked
//!    guest-physical memory (each exactly one `KVM_EXIT_MMIO`),
//! 3. one `out` to [`DONE_PORT`], after which the VMM stops running the vCPU.
//!
//! Counts, ports and addresses live in registers that the VMM sets before each
//! run, so one program serves every workload. Before each run the VMM also makes
//! `msi` `KVM_SIGNAL_MSI` ioctls ([`MSI_ADDRESS`], [`MSI_DATA`]) and `irq`
//! `KVM_IRQ_LINE` ioctls on [`IRQ_GSI`], alternating level 1 and 0; these need
//! the in-kernel irqchip, which is created only when the workload asks for them.
//! The guest runs with interrupts disabled (IF=0), so injected interrupts stay
//! pending and never change what the guest executes.
//!
//! Any exit other than the expected ones is an error ([`VmmError::UnexpectedExit`]),
//! never silently skipped. The exit loop neither allocates nor logs.
use std::ffi::CString;
use std::fmt;
use std::num::ParseIntError;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::str::FromStr;
use std::time::{Duration, Instant};

use kvm_bindings::{
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_IO, KVM_EXIT_MMIO, kvm_msi, kvm_regs,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use serde::{Serialize, Serializer};

/// The `/dev/kvm` path [`run_workload`] uses.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// Port of the guest's single "done" `out` at the end of each repeat.
pub const DONE_PORT: u16 = 0x0501;

/// Guest RAM: `[0, GUEST_RAM_SIZE)` guest-physical. Everything above is unbacked.
pub const GUEST_RAM_SIZE: u64 = 0x1_0000;

/// Guest-physical address where [`GUEST_PROGRAM`] is loaded and starts.
pub const CODE_GPA: u64 = 0x1000;

/// Highest guest-physical byte a real-mode guest can address (`0xffff:0xffff`).
pub const REAL_MODE_LIMIT: u64 = 0x10_ffef;

/// `KVM_SIGNAL_MSI` address: the local APIC of CPU 0, fixed delivery.
pub const MSI_ADDRESS: u32 = 0xfee0_0000;

/// `KVM_SIGNAL_MSI` data: vector 0x30, edge-triggered.
pub const MSI_DATA: u32 = 0x30;

/// GSI that `KVM_IRQ_LINE` toggles (ISA IRQ 5 on the PIC and IOAPIC).
pub const IRQ_GSI: u32 = 5;

/// Ports the in-kernel irqchip emulates (master/slave PIC, ELCR): with an
/// irqchip an `out` to them never reaches userspace, so they cannot be counted.
pub const IRQCHIP_PORTS: [u16; 6] = [0x20, 0x21, 0xa0, 0xa1, 0x4d0, 0x4d1];

/// Byte the guest writes (in `al`) to the ports and the MMIO address.
const GUEST_DATA_BYTE: u64 = 0x5a;

/// The guest, 16-bit real mode, started at `0:CODE_GPA` with IF=0.
///
/// Inputs (set by the VMM before each run): `ecx` = port-write count,
/// `dx` = workload port, `ebx` = MMIO-write count, `ds:di` = MMIO address,
/// `si` = [`DONE_PORT`], `al` = the data byte. A count of 0 skips its loop.
pub const GUEST_PROGRAM: [u8; 28] = [
    // start:
    0x66, 0x85, 0xc9, //       test ecx, ecx
    0x74, 0x05, //             jz   mmio          (skip the 5-byte pio loop)
    // pio:
    0xee, //                   out  dx, al        -> KVM_EXIT_IO
    0x66, 0x49, //             dec  ecx
    0x75, 0xfb, //             jnz  pio           (-5)
    // mmio:
    0x66, 0x85, 0xdb, //       test ebx, ebx
    0x74, 0x06, //             jz   done          (skip the 6-byte mmio loop)
    // mmio_loop:
    0x88, 0x05, //             mov  [di], al      -> KVM_EXIT_MMIO (ds:di)
    0x66, 0x4b, //             dec  ebx
    0x75, 0xfa, //             jnz  mmio_loop     (-6)
    // done:
    0x89, 0xf2, //             mov  dx, si
    0xee, //                   out  dx, al        -> KVM_EXIT_IO on DONE_PORT
    // park: never reached, the VMM does not resume after the done exit.
    0xfa, //                   cli
    0xf4, //                   hlt
    0xeb, 0xfd, //             jmp  park+1        (-3)
];

/// Port writes: `count` one-byte `out`s to `port` per repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PioSpec {
    pub port: u16,
    pub count: u32,
}

/// MMIO writes: `count` one-byte writes to guest-physical `gpa` per repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSpec {
    pub gpa: u64,
    pub count: u32,
}

/// What the test VM does. Counts are per repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub pio: Option<PioSpec>,
    pub mmio: Option<MmioSpec>,
    /// `KVM_SIGNAL_MSI` ioctls per repeat.
    pub msi: u32,
    /// `KVM_IRQ_LINE` ioctls per repeat, levels 1, 0, 1, … on [`IRQ_GSI`].
    pub irq: u32,
    /// Number of guest runs; at least 1.
    pub repeat: u32,
    /// Sleep between two repeats (not after the last).
    pub pause: Duration,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            pio: None,
            mmio: None,
            msi: 0,
            irq: 0,
            repeat: 1,
            pause: Duration::ZERO,
        }
    }
}

impl Workload {
    /// Whether the VM needs the in-kernel irqchip (MSI or IRQ-line ioctls).
    pub fn needs_irqchip(&self) -> bool {
        self.msi > 0 || self.irq > 0
    }

    /// Checks the workload without touching KVM.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.repeat == 0 {
            return Err(SpecError::ZeroRepeat);
        }
        if let Some(PioSpec { port, .. }) = self.pio {
            if port == DONE_PORT {
                return Err(SpecError::PortIsDonePort { port });
            }
            if self.needs_irqchip() && IRQCHIP_PORTS.contains(&port) {
                return Err(SpecError::PortInKernel { port });
            }
        }
        if let Some(MmioSpec { gpa, .. }) = self.mmio {
            if gpa < GUEST_RAM_SIZE {
                return Err(SpecError::MmioInRam {
                    gpa,
                    ram_end: GUEST_RAM_SIZE,
                });
            }
            if gpa > REAL_MODE_LIMIT {
                return Err(SpecError::MmioUnreachable {
                    gpa,
                    limit: REAL_MODE_LIMIT,
                });
            }
        }
        Ok(())
    }
}

/// A workload that cannot run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("repeat must be at least 1")]
    ZeroRepeat,
    #[error("pio port {port:#x} is the done port")]
    PortIsDonePort { port: u16 },
    #[error("pio port {port:#x} is emulated by the in-kernel irqchip and never exits to userspace")]
    PortInKernel { port: u16 },
    #[error("mmio address {gpa:#x} is guest ram (below {ram_end:#x})")]
    MmioInRam { gpa: u64, ram_end: u64 },
    #[error("mmio address {gpa:#x} is beyond real-mode reach (highest {limit:#x})")]
    MmioUnreachable { gpa: u64, limit: u64 },
}

/// A `PORT:COUNT` / `GPA:COUNT` argument that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseSpecError {
    #[error("`{value}`: expected {expected}")]
    Format {
        value: String,
        expected: &'static str,
    },
    #[error("invalid number `{value}`")]
    Number {
        value: String,
        #[source]
        source: ParseIntError,
    },
}

/// Parses a decimal number or a `0x`-prefixed hexadecimal one.
fn parse_number<T>(value: &str) -> Result<T, ParseSpecError>
where
    T: FromStr<Err = ParseIntError> + FromStrRadix,
{
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => T::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|source| ParseSpecError::Number {
        value: value.to_owned(),
        source,
    })
}

/// Integers [`parse_number`] can produce.
trait FromStrRadix: Sized {
    fn from_str_radix(src: &str, radix: u32) -> Result<Self, ParseIntError>;
}

macro_rules! from_str_radix {
    ($($t:ty),*) => {$(
        impl FromStrRadix for $t {
            fn from_str_radix(src: &str, radix: u32) -> Result<Self, ParseIntError> {
                <$t>::from_str_radix(src, radix)
            }
        }
    )*};
}
from_str_radix!(u16, u32, u64);

fn split_pair<'a>(
    value: &'a str,
    expected: &'static str,
) -> Result<(&'a str, &'a str), ParseSpecError> {
    value.split_once(':').ok_or_else(|| ParseSpecError::Format {
        value: value.to_owned(),
        expected,
    })
}

impl FromStr for PioSpec {
    type Err = ParseSpecError;

    /// `PORT:COUNT`, each decimal or `0x` hex: `0x3f8:1000`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (port, count) = split_pair(value, "PORT:COUNT")?;
        Ok(Self {
            port: parse_number(port)?,
            count: parse_number(count)?,
        })
    }
}

impl FromStr for MmioSpec {
    type Err = ParseSpecError;

    /// `GPA:COUNT`, each decimal or `0x` hex: `0x100000:500`.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (gpa, count) = split_pair(value, "GPA:COUNT")?;
        Ok(Self {
            gpa: parse_number(gpa)?,
            count: parse_number(count)?,
        })
    }
}

/// Real-mode `segment:offset` (segment selector, not base) reaching `gpa`.
/// `gpa` must be at most [`REAL_MODE_LIMIT`] (checked by [`Workload::validate`]).
pub fn real_mode_address(gpa: u64) -> (u16, u16) {
    let segment = (gpa >> 4).min(0xffff);
    let offset = gpa - segment * 16;
    (
        u16::try_from(segment).unwrap_or(u16::MAX),
        u16::try_from(offset).unwrap_or(u16::MAX),
    )
}

/// What one workload actually did. Counts are totals over all repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Workload port, if any.
    pub pio_port: Option<u16>,
    /// `KVM_EXIT_IO` exits seen on `pio_port` (done exits not included).
    pub pio_exits: u64,
    /// MMIO address, if any.
    pub mmio_gpa: Option<u64>,
    /// `KVM_EXIT_MMIO` exits seen at `mmio_gpa`.
    pub mmio_exits: u64,
    pub done_port: u16,
    /// `KVM_EXIT_IO` exits on `done_port`: one per repeat.
    pub done_exits: u64,
    /// `KVM_SIGNAL_MSI` ioctls made.
    pub msi_ioctls: u64,
    /// Of those, the ones KVM reported as delivered (return value > 0).
    pub msi_delivered: u64,
    /// `KVM_IRQ_LINE` ioctls made.
    pub irq_ioctls: u64,
    /// Guest runs completed.
    pub repeats: u32,
    /// Wall time of the whole workload, pauses included.
    #[serde(rename = "elapsed_ns", serialize_with = "serialize_nanos")]
    pub elapsed: Duration,
}

fn serialize_nanos<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX))
}

/// A vCPU exit the workload did not call for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnexpectedExit {
    /// `KVM_EXIT_IO` on a port other than the workload's or the done port, or
    /// not a one-byte `out`.
    PortIo { port: u16, write: bool, len: usize },
    /// `KVM_EXIT_MMIO` elsewhere than the workload's address, or not a one-byte write.
    Mmio { gpa: u64, write: bool, len: usize },
    /// `KVM_EXIT_INTERNAL_ERROR`; suberror 1 is an emulation failure.
    InternalError { suberror: u32 },
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry { hardware_reason: u64 },
    /// Any other exit, by its `KVM_EXIT_*` number.
    Other { reason: u32 },
}

impl UnexpectedExit {
    /// The `KVM_EXIT_*` number.
    pub fn reason(&self) -> u32 {
        match self {
            Self::PortIo { .. } => KVM_EXIT_IO,
            Self::Mmio { .. } => KVM_EXIT_MMIO,
            Self::InternalError { .. } => KVM_EXIT_INTERNAL_ERROR,
            Self::FailEntry { .. } => kvm_bindings::KVM_EXIT_FAIL_ENTRY,
            Self::Other { reason } => *reason,
        }
    }
}

impl fmt::Display for UnexpectedExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = exit_reason_name(self.reason());
        match *self {
            Self::PortIo { port, write, len } => {
                let dir = if write { "out" } else { "in" };
                write!(f, "{name} ({dir} of {len} bytes on port {port:#x})")
            }
            Self::Mmio { gpa, write, len } => {
                let dir = if write { "write" } else { "read" };
                write!(f, "{name} ({dir} of {len} bytes at {gpa:#x})")
            }
            Self::InternalError { suberror } => write!(f, "{name} (suberror {suberror})"),
            Self::FailEntry { hardware_reason } => {
                write!(f, "{name} (hardware reason {hardware_reason:#x})")
            }
            Self::Other { reason } => write!(f, "{name} ({reason})"),
        }
    }
}

/// Name of a `KVM_EXIT_*` number.
pub fn exit_reason_name(reason: u32) -> &'static str {
    use kvm_bindings as b;
    match reason {
        b::KVM_EXIT_UNKNOWN => "KVM_EXIT_UNKNOWN",
        b::KVM_EXIT_EXCEPTION => "KVM_EXIT_EXCEPTION",
        b::KVM_EXIT_IO => "KVM_EXIT_IO",
        b::KVM_EXIT_HYPERCALL => "KVM_EXIT_HYPERCALL",
        b::KVM_EXIT_DEBUG => "KVM_EXIT_DEBUG",
        b::KVM_EXIT_HLT => "KVM_EXIT_HLT",
        b::KVM_EXIT_MMIO => "KVM_EXIT_MMIO",
        b::KVM_EXIT_IRQ_WINDOW_OPEN => "KVM_EXIT_IRQ_WINDOW_OPEN",
        b::KVM_EXIT_SHUTDOWN => "KVM_EXIT_SHUTDOWN",
        b::KVM_EXIT_FAIL_ENTRY => "KVM_EXIT_FAIL_ENTRY",
        b::KVM_EXIT_INTR => "KVM_EXIT_INTR",
        b::KVM_EXIT_SET_TPR => "KVM_EXIT_SET_TPR",
        b::KVM_EXIT_TPR_ACCESS => "KVM_EXIT_TPR_ACCESS",
        b::KVM_EXIT_NMI => "KVM_EXIT_NMI",
        b::KVM_EXIT_INTERNAL_ERROR => "KVM_EXIT_INTERNAL_ERROR",
        b::KVM_EXIT_SYSTEM_EVENT => "KVM_EXIT_SYSTEM_EVENT",
        b::KVM_EXIT_IOAPIC_EOI => "KVM_EXIT_IOAPIC_EOI",
        b::KVM_EXIT_HYPERV => "KVM_EXIT_HYPERV",
        b::KVM_EXIT_X86_RDMSR => "KVM_EXIT_X86_RDMSR",
        b::KVM_EXIT_X86_WRMSR => "KVM_EXIT_X86_WRMSR",
        b::KVM_EXIT_DIRTY_RING_FULL => "KVM_EXIT_DIRTY_RING_FULL",
        b::KVM_EXIT_X86_BUS_LOCK => "KVM_EXIT_X86_BUS_LOCK",
        b::KVM_EXIT_NOTIFY => "KVM_EXIT_NOTIFY",
        b::KVM_EXIT_MEMORY_FAULT => "KVM_EXIT_MEMORY_FAULT",
        _ => "KVM_EXIT_?",
    }
}

/// Errors of the test VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid workload")]
    InvalidWorkload(#[source] SpecError),
    #[error("{} not found: load kvm_intel or kvm_amd, or run on a host with virtualization", path.display())]
    KvmNotFound {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{}: permission denied: run as root or join the group that owns it (usually kvm)", path.display())]
    KvmPermissionDenied {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot open {}", path.display())]
    KvmOpen {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("this kvm has no in-kernel irqchip for msi/irq injection ({capability} not supported)")]
    IrqchipUnsupported { capability: &'static str },
    #[error("this kvm has no in-kernel irqchip for msi/irq injection ({ioctl} failed)")]
    IrqchipFailed {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the workload injects msi/irq but the vm was created without an irqchip")]
    IrqchipMissing,
    #[error("cannot map {size} bytes of guest memory")]
    Mmap {
        size: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{ioctl} failed")]
    Ioctl {
        ioctl: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("unexpected exit {exit} at rip {}", DisplayRip(*.rip))]
    UnexpectedExit {
        exit: UnexpectedExit,
        rip: Option<u64>,
    },
}

struct DisplayRip(Option<u64>);

impl fmt::Display for DisplayRip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(rip) => write!(f, "{rip:#x}"),
            None => f.write_str("unknown"),
        }
    }
}

fn ioctl_error(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Ioctl { ioctl, source }
}

/// Anonymous, private, read-write memory backing guest RAM; unmapped on drop.
struct GuestRam {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `GuestRam` exclusively owns its mapping; nothing in it is tied to the
// creating thread, and all access goes through `&mut self` or the kernel.
unsafe impl Send for GuestRam {}

impl GuestRam {
    fn new(len: usize) -> Result<Self, VmmError> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choosing touches no existing memory; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VmmError::Mmap {
                size: len,
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| VmmError::Mmap {
            size: len,
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
        })?;
        Ok(Self { ptr, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live read-write mapping of `len` bytes owned by
        // `self`, and `&mut self` rules out any other reference into it. The
        // guest only touches it while a `&mut TestVm` is inside `KVM_RUN`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `new`, and no
        // reference into it outlives `self` (TestVm drops its VM fds first).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One VM with one vCPU running [`GUEST_PROGRAM`]; reusable for many workloads.
pub struct TestVm {
    // Field order is drop order: the vCPU and VM fds go before the memory
    // that their memslot points into.
    vcpu: VcpuFd,
    vm: VmFd,
    #[expect(
        dead_code,
        reason = "never read, only kept alive: the memslot points into it"
    )]
    ram: GuestRam,
    irqchip: bool,
}

impl fmt::Debug for TestVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestVm")
            .field("irqchip", &self.irqchip)
            .finish_non_exhaustive()
    }
}

impl TestVm {
    /// Opens `kvm_path`, creates the VM (with the in-kernel irqchip if
    /// `irqchip`), its RAM and its vCPU, and loads [`GUEST_PROGRAM`].
    pub fn new(kvm_path: &Path, irqchip: bool) -> Result<Self, VmmError> {
        Self::with_program(kvm_path, irqchip, &GUEST_PROGRAM)
    }

    /// Whether the VM has the in-kernel irqchip.
    pub fn has_irqchip(&self) -> bool {
        self.irqchip
    }

    fn with_program(kvm_path: &Path, irqchip: bool, program: &[u8]) -> Result<Self, VmmError> {
        let kvm = open_kvm(kvm_path)?;
        if irqchip {
            if !kvm.check_extension(Cap::Irqchip) {
                return Err(VmmError::IrqchipUnsupported {
                    capability: "KVM_CAP_IRQCHIP",
                });
            }
            if !kvm.check_extension(Cap::SignalMsi) {
                return Err(VmmError::IrqchipUnsupported {
                    capability: "KVM_CAP_SIGNAL_MSI",
                });
            }
        }
        let vm = kvm.create_vm().map_err(ioctl_error("KVM_CREATE_VM"))?;

        let ram_len = usize::try_from(GUEST_RAM_SIZE).unwrap_or(usize::MAX);
        let mut ram = GuestRam::new(ram_len)?;
        let code = usize::try_from(CODE_GPA).unwrap_or(usize::MAX);
        let slot = ram
            .as_mut_slice()
            .get_mut(code..code.saturating_add(program.len()))
            .ok_or(VmmError::Mmap {
                size: ram_len,
                source: std::io::Error::from_raw_os_error(libc::E2BIG),
            })?;
        slot.copy_from_slice(program);

        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: GUEST_RAM_SIZE,
            userspace_addr: ram.ptr.as_ptr() as u64,
        };
        // SAFETY: `userspace_addr` is a live mapping of exactly `memory_size`
        // bytes owned by the returned `TestVm`, which drops `vm` (and so the
        // memslot) before unmapping it; slot 0 is the VM's only region.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl_error("KVM_SET_USER_MEMORY_REGION"))?;

        if irqchip {
            vm.create_irq_chip()
                .map_err(|source| VmmError::IrqchipFailed {
                    ioctl: "KVM_CREATE_IRQCHIP",
                    source,
                })?;
        }
        let vcpu = vm.create_vcpu(0).map_err(ioctl_error("KVM_CREATE_VCPU"))?;
        if irqchip {
            enable_lapic(&vcpu)?;
        }
        Ok(Self {
            vcpu,
            vm,
            ram,
            irqchip,
        })
    }

    /// Runs `workload` to completion and reports what happened.
    pub fn run(&mut self, workload: &Workload) -> Result<Report, VmmError> {
        workload.validate().map_err(VmmError::InvalidWorkload)?;
        if workload.needs_irqchip() && !self.irqchip {
            return Err(VmmError::IrqchipMissing);
        }
        let started = Instant::now();
        let pio_port = workload.pio.map(|p| p.port);
        let mmio_gpa = workload.mmio.map(|m| m.gpa);
        let (ds, di) = real_mode_address(mmio_gpa.unwrap_or(0));

        let mut sregs = self
            .vcpu
            .get_sregs()
            .map_err(ioctl_error("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.selector = ds;
        sregs.ds.base = u64::from(ds) * 16;
        sregs.ds.limit = 0xffff;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(ioctl_error("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: CODE_GPA,
            rflags: 0x2, // reserved bit 1 only: IF=0
            rax: GUEST_DATA_BYTE,
            rcx: u64::from(workload.pio.map_or(0, |p| p.count)),
            rdx: u64::from(pio_port.unwrap_or(0)),
            rbx: u64::from(workload.mmio.map_or(0, |m| m.count)),
            rsi: u64::from(DONE_PORT),
            rdi: u64::from(di),
            ..Default::default()
        };
        let msi = kvm_msi {
            address_lo: MSI_ADDRESS,
            address_hi: 0,
            data: MSI_DATA,
            ..Default::default()
        };

        let mut report = Report {
            pio_port,
            pio_exits: 0,
            mmio_gpa,
            mmio_exits: 0,
            done_port: DONE_PORT,
            done_exits: 0,
            msi_ioctls: 0,
            msi_delivered: 0,
            irq_ioctls: 0,
            repeats: 0,
            elapsed: Duration::ZERO,
        };
        for repeat in 0..workload.repeat {
            if repeat > 0 && !workload.pause.is_zero() {
                std::thread::sleep(workload.pause);
            }
            for _ in 0..workload.msi {
                let delivered = self
                    .vm
                    .signal_msi(msi)
                    .map_err(ioctl_error("KVM_SIGNAL_MSI"))?;
                report.msi_ioctls += 1;
                if delivered > 0 {
                    report.msi_delivered += 1;
                }
            }
            for i in 0..workload.irq {
                self.vm
                    .set_irq_line(IRQ_GSI, i % 2 == 0)
                    .map_err(ioctl_error("KVM_IRQ_LINE"))?;
                report.irq_ioctls += 1;
            }
            self.vcpu
                .set_regs(&regs)
                .map_err(ioctl_error("KVM_SET_REGS"))?;
            self.run_guest(pio_port, mmio_gpa, &mut report)?;
            report.repeats += 1;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Runs the vCPU until the done exit, counting workload exits.
    /// The hot path: no allocation, no logging.
    fn run_guest(
        &mut self,
        pio_port: Option<u16>,
        mmio_gpa: Option<u64>,
        report: &mut Report,
    ) -> Result<(), VmmError> {
        loop {
            let exit = match self.vcpu.run() {
                Ok(exit) => exit,
                // A signal interrupted KVM_RUN before any exit: just resume.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
                Err(source) => {
                    return Err(VmmError::Ioctl {
                        ioctl: "KVM_RUN",
                        source,
                    });
                }
            };
            let unexpected = match exit {
                VcpuExit::IoOut(port, data) if data.len() == 1 => {
                    if port == DONE_PORT {
                        report.done_exits += 1;
                        return Ok(());
                    }
                    if Some(port) == pio_port {
                        report.pio_exits += 1;
                        continue;
                    }
                    UnexpectedExit::PortIo {
                        port,
                        write: true,
                        len: 1,
                    }
                }
                VcpuExit::MmioWrite(gpa, data) if data.len() == 1 && Some(gpa) == mmio_gpa => {
                    report.mmio_exits += 1;
                    continue;
                }
                VcpuExit::IoOut(port, data) => UnexpectedExit::PortIo {
                    port,
                    write: true,
                    len: data.len(),
                },
                VcpuExit::IoIn(port, data) => UnexpectedExit::PortIo {
                    port,
                    write: false,
                    len: data.len(),
                },
                VcpuExit::MmioWrite(gpa, data) => UnexpectedExit::Mmio {
                    gpa,
                    write: true,
                    len: data.len(),
                },
                VcpuExit::MmioRead(gpa, data) => UnexpectedExit::Mmio {
                    gpa,
                    write: false,
                    len: data.len(),
                },
                VcpuExit::FailEntry(hardware_reason, _cpu) => {
                    UnexpectedExit::FailEntry { hardware_reason }
                }
                VcpuExit::InternalError => UnexpectedExit::InternalError { suberror: 0 },
                _ => UnexpectedExit::Other { reason: 0 },
            };
            return Err(self.unexpected_exit(unexpected));
        }
    }

    /// Completes an [`UnexpectedExit`] from `kvm_run` and the registers. Error
    /// path only.
    fn unexpected_exit(&mut self, exit: UnexpectedExit) -> VmmError {
        let run = self.vcpu.get_kvm_run();
        let reason = run.exit_reason;
        let exit = match exit {
            UnexpectedExit::InternalError { .. } => UnexpectedExit::InternalError {
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR (that is how
                // we got here), so `internal` is the union member KVM filled in.
                suberror: unsafe { run.__bindgen_anon_1.internal.suberror },
            },
            UnexpectedExit::Other { .. } => UnexpectedExit::Other { reason },
            known => known,
        };
        let rip = self.vcpu.get_regs().ok().map(|regs| regs.rip);
        VmmError::UnexpectedExit { exit, rip }
    }
}

/// Software-enables the vCPU's local APIC (after reset only its hardware
/// enable is set), so that KVM accepts the MSIs instead of dropping them. They
/// stay pending: the guest runs with IF=0.
fn enable_lapic(vcpu: &VcpuFd) -> Result<(), VmmError> {
    /// Spurious-interrupt vector register: offset, APIC-enable bit, vector 0xff.
    const APIC_SVR: usize = 0xf0;
    const SVR_ENABLED: u32 = 0x1ff;
    let mut lapic = vcpu.get_lapic().map_err(ioctl_error("KVM_GET_LAPIC"))?;
    for (i, byte) in SVR_ENABLED.to_le_bytes().into_iter().enumerate() {
        // c_char is i8 on x86-64: a bit-for-bit reinterpretation.
        lapic.regs[APIC_SVR + i] = byte as std::os::raw::c_char;
    }
    vcpu.set_lapic(&lapic).map_err(ioctl_error("KVM_SET_LAPIC"))
}

fn open_kvm(path: &Path) -> Result<Kvm, VmmError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| VmmError::KvmOpen {
        path: path.to_owned(),
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    Kvm::new_with_path(&c_path).map_err(|source| {
        let path = path.to_owned();
        match source.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => VmmError::KvmNotFound { path, source },
            libc::EACCES | libc::EPERM => VmmError::KvmPermissionDenied { path, source },
            _ => VmmError::KvmOpen { path, source },
        }
    })
}

/// Creates a VM on [`DEFAULT_KVM_PATH`] (with an irqchip only if the workload
/// injects interrupts) and runs `workload` on it.
pub fn run_workload(workload: &Workload) -> Result<Report, VmmError> {
    workload.validate().map_err(VmmError::InvalidWorkload)?;
    TestVm::new(Path::new(DEFAULT_KVM_PATH), workload.needs_irqchip())?.run(workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_and_mmio_specs() {
        assert_eq!(
            "0x3f8:1000".parse::<PioSpec>(),
            Ok(PioSpec {
                port: 0x3f8,
                count: 1000
            })
        );
        assert_eq!(
            "1016:0".parse::<PioSpec>(),
            Ok(PioSpec {
                port: 1016,
                count: 0
            })
        );
        assert_eq!(
            "0x100000:500".parse::<MmioSpec>(),
            Ok(MmioSpec {
                gpa: 0x10_0000,
                count: 500
            })
        );
        assert_eq!(
            "0X10:0x10".parse::<MmioSpec>(),
            Ok(MmioSpec { gpa: 16, count: 16 })
        );
    }

    #[test]
    fn rejects_bad_specs() {
        assert!(matches!(
            "0x3f8".parse::<PioSpec>(),
            Err(ParseSpecError::Format {
                expected: "PORT:COUNT",
                ..
            })
        ));
        assert!(matches!(
            "0x10000:1".parse::<PioSpec>(),
            Err(ParseSpecError::Number { value, .. }) if value == "0x10000"
        ));
        assert!(matches!(
            "0x3f8:-1".parse::<PioSpec>(),
            Err(ParseSpecError::Number { .. })
        ));
        assert!(matches!(
            "zz:1".parse::<MmioSpec>(),
            Err(ParseSpecError::Number { .. })
        ));
        assert!(matches!(
            "0x100000:4294967296".parse::<MmioSpec>(),
            Err(ParseSpecError::Number { .. })
        ));
    }

    fn with_pio(port: u16) -> Workload {
        Workload {
            pio: Some(PioSpec { port, count: 1 }),
            ..Workload::default()
        }
    }

    fn with_mmio(gpa: u64) -> Workload {
        Workload {
            mmio: Some(MmioSpec { gpa, count: 1 }),
            ..Workload::default()
        }
    }

    #[test]
    fn validates_workloads() {
        assert_eq!(Workload::default().validate(), Ok(()));
        assert_eq!(
            Workload {
                repeat: 0,
                ..Workload::default()
            }
            .validate(),
            Err(SpecError::ZeroRepeat)
        );
        assert_eq!(
            with_pio(DONE_PORT).validate(),
            Err(SpecError::PortIsDonePort { port: DONE_PORT })
        );
        assert_eq!(with_pio(0x3f8).validate(), Ok(()));
        // PIC ports exit to userspace only without an in-kernel irqchip.
        assert_eq!(with_pio(0x20).validate(), Ok(()));
        let pic_with_irqchip = Workload {
            msi: 1,
            ..with_pio(0x20)
        };
        assert_eq!(
            pic_with_irqchip.validate(),
            Err(SpecError::PortInKernel { port: 0x20 })
        );
        assert_eq!(
            with_mmio(GUEST_RAM_SIZE - 1).validate(),
            Err(SpecError::MmioInRam {
                gpa: GUEST_RAM_SIZE - 1,
                ram_end: GUEST_RAM_SIZE
            })
        );
        assert_eq!(with_mmio(GUEST_RAM_SIZE).validate(), Ok(()));
        assert_eq!(with_mmio(REAL_MODE_LIMIT).validate(), Ok(()));
        assert_eq!(
            with_mmio(REAL_MODE_LIMIT + 1).validate(),
            Err(SpecError::MmioUnreachable {
                gpa: REAL_MODE_LIMIT + 1,
                limit: REAL_MODE_LIMIT
            })
        );
        assert_eq!(
            with_mmio(0xfee0_0000).validate(),
            Err(SpecError::MmioUnreachable {
                gpa: 0xfee0_0000,
                limit: REAL_MODE_LIMIT
            })
        );
    }

    #[test]
    fn real_mode_addresses_reach_their_target() {
        for gpa in [
            0,
            0xf,
            0x1_0000,
            0x1_2345,
            0xf_fff0,
            0x10_0000,
            0x10_ffe0,
            REAL_MODE_LIMIT,
        ] {
            let (segment, offset) = real_mode_address(gpa);
            assert_eq!(u64::from(segment) * 16 + u64::from(offset), gpa, "{gpa:#x}");
        }
    }

    #[test]
    fn program_fits_in_ram_below_mmio() {
        assert!(CODE_GPA + GUEST_PROGRAM.len() as u64 <= GUEST_RAM_SIZE);
    }

    #[test]
    fn report_serializes_with_stable_names() {
        let report = Report {
            pio_port: Some(0x3f8),
            pio_exits: 2,
            mmio_gpa: None,
            mmio_exits: 0,
            done_port: DONE_PORT,
            done_exits: 1,
            msi_ioctls: 3,
            msi_delivered: 3,
            irq_ioctls: 4,
            repeats: 1,
            elapsed: Duration::from_micros(5),
        };
        let json = serde_json::to_string(&report).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"pio_port":1016,"pio_exits":2,"mmio_gpa":null,"mmio_exits":0,"done_port":1281,"done_exits":1,"msi_ioctls":3,"msi_delivered":3,"irq_ioctls":4,"repeats":1,"elapsed_ns":5000}"#
        );
    }

    #[test]
    fn unexpected_exits_display_reason() {
        let err = VmmError::UnexpectedExit {
            exit: UnexpectedExit::Other {
                reason: kvm_bindings::KVM_EXIT_SHUTDOWN,
            },
            rip: Some(0x1000),
        };
        assert_eq!(
            err.to_string(),
            "unexpected exit KVM_EXIT_SHUTDOWN (8) at rip 0x1000"
        );
    }

    #[test]
    fn missing_kvm_names_the_fix() {
        let err = TestVm::new(Path::new("/nonexistent/kvm"), false).map(|_| ());
        match err {
            Err(e @ VmmError::KvmNotFound { .. }) => {
                assert!(e.to_string().contains("load kvm_intel or kvm_amd"), "{e}")
            }
            other => panic!("expected KvmNotFound, got {other:?}"),
        }
    }

    // The tests below drive real KVM. A missing /dev/kvm fails them: skipping is
    // only by the explicit opt-out `VPM_SKIP_PRIVILEGED=1` (see `cargo xtask test`).

    fn kvm_vm(irqchip: bool) -> Option<TestVm> {
        kvm_vm_with(irqchip, &GUEST_PROGRAM)
    }

    fn kvm_vm_with(irqchip: bool, program: &[u8]) -> Option<TestVm> {
        if std::env::var("VPM_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
            eprintln!("skipped: VPM_SKIP_PRIVILEGED=1");
            return None;
        }
        match TestVm::with_program(Path::new(DEFAULT_KVM_PATH), irqchip, program) {
            Ok(vm) => Some(vm),
            Err(e) => panic!(
                "creating the test vm: {e:?} (set VPM_SKIP_PRIVILEGED=1 to skip tests that need /dev/kvm)"
            ),
        }
    }

    #[test]
    fn kvm_counts_port_and_mmio_exits_exactly() {
        let Some(mut vm) = kvm_vm(false) else { return };
        let workload = Workload {
            pio: Some(PioSpec {
                port: 0x3f8,
                count: 1000,
            }),
            mmio: Some(MmioSpec {
                gpa: 0x10_0000,
                count: 500,
            }),
            repeat: 2,
            pause: Duration::from_millis(1),
            ..Workload::default()
        };
        let report = vm.run(&workload).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(report.pio_port, Some(0x3f8));
        assert_eq!(report.pio_exits, 2000);
        assert_eq!(report.mmio_gpa, Some(0x10_0000));
        assert_eq!(report.mmio_exits, 1000);
        assert_eq!(report.done_exits, 2);
        assert_eq!(report.repeats, 2);
        assert_eq!((report.msi_ioctls, report.irq_ioctls), (0, 0));

        // The same VM runs another workload; zero counts mean zero exits, and
        // an MMIO address that needs a non-zero offset works too.
        let report = vm
            .run(&Workload {
                pio: Some(PioSpec {
                    port: 0x80,
                    count: 0,
                }),
                mmio: Some(MmioSpec {
                    gpa: REAL_MODE_LIMIT,
                    count: 3,
                }),
                ..Workload::default()
            })
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (report.pio_exits, report.mmio_exits, report.done_exits),
            (0, 3, 1)
        );
    }

    #[test]
    fn kvm_injects_msi_and_irq() {
        let Some(mut vm) = kvm_vm(true) else { return };
        let report = vm
            .run(&Workload {
                pio: Some(PioSpec {
                    port: 0x3f8,
                    count: 5,
                }),
                msi: 10,
                irq: 10,
                repeat: 2,
                ..Workload::default()
            })
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(report.msi_ioctls, 20);
        assert_eq!(report.msi_delivered, 20);
        assert_eq!(report.irq_ioctls, 20);
        assert_eq!((report.pio_exits, report.done_exits), (10, 2));
    }

    #[test]
    fn kvm_refuses_injection_without_irqchip() {
        let Some(mut vm) = kvm_vm(false) else { return };
        let err = vm.run(&Workload {
            msi: 1,
            ..Workload::default()
        });
        assert!(matches!(err, Err(VmmError::IrqchipMissing)), "{err:?}");
    }

    #[test]
    fn kvm_reports_unexpected_exits_with_rip() {
        // hlt: without an irqchip, KVM_EXIT_HLT.
        let Some(mut vm) = kvm_vm_with(false, &[0xf4]) else {
            return;
        };
        let err = vm.run(&Workload::default());
        assert!(
            matches!(
                err,
                Err(VmmError::UnexpectedExit {
                    exit: UnexpectedExit::Other {
                        reason: kvm_bindings::KVM_EXIT_HLT
                    },
                    rip: Some(rip)
                }) if rip == CODE_GPA + 1
            ),
            "{err:?}"
        );
        // in al, dx (dx = 0): a port read.
        let Some(mut vm) = kvm_vm_with(false, &[0xec]) else {
            return;
        };
        let err = vm.run(&Workload::default());
        assert!(
            matches!(
                err,
                Err(VmmError::UnexpectedExit {
                    exit: UnexpectedExit::PortIo {
                        port: 0,
                        write: false,
                        len: 1
                    },
                    ..
                })
            ),
            "{err:?}"
        );
    }
}
